//! The `node-agent` command line: serve, check a configuration, or issue a token.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node_agent::auth::{Role, TokenBook, entry_toml, list_tokens, new_token};
use node_agent::config::{Config, LogConfig, LogFormat};

#[cfg(test)]
mod cli_docs;

/// Exit code for a configuration that cannot be used (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Stops application containers on this node, on request"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/node-agent/node-agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and exit 0, or 78 naming the bad key or value.
    CheckConfig,
    /// Manage tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a fresh random token once, and the tokens-file entry holding its hash.
    New {
        /// The token's name, of its own in the tokens file (`token list` and the logs show it).
        #[arg(long)]
        name: String,
        /// What the token may do: operator (every app, and the node) or user (the apps that
        /// --user-id owns or may act on through a team).
        #[arg(long, value_enum)]
        role: Role,
        /// The user this token acts for (role user only).
        #[arg(long)]
        user_id: Option<String>,
    },
    /// Show the names and roles in the configuration's tokens file (never the hashes).
    List,
}

/// Logs go to standard error (journald takes them from there), as text or as JSON lines; `RUST_LOG`,
/// when set, overrides the configured level.
///
/// Plain directives (`info`, `info,node_agent=debug`) filter by target and level alone. Only a
/// directive that names spans or fields (`[request{id=…}]=debug`) needs `EnvFilter`, which looks
/// up every span each time a request's future is polled: on a busy node that costs more than the
/// rest of a refused request's handling.
fn init_logging(log: &LogConfig) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Filter = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    type Filtered = tracing_subscriber::layer::Layered<Filter, tracing_subscriber::Registry>;

    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.is_empty() && EnvFilter::try_new(d).is_ok())
        .or_else(|| Some(log.level.clone()).filter(|d| EnvFilter::try_new(d).is_ok()))
        .unwrap_or_else(|| "info".to_owned());
    let filter: Filter = match plain_directives(&directives) {
        Some(targets) => Box::new(targets),
        None => Box::new(EnvFilter::new(&directives)),
    };
    let output: Box<dyn Layer<Filtered> + Send + Sync> = match log.format {
        // Escaped fields, so that text from outside cannot break a line (JSON escapes by itself).
        LogFormat::Human => Box::new(
            tracing_subscriber::fmt::layer()
                .fmt_fields(node_agent::logging::EscapedFields::new())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        ),
        // `spans` lists every span a line sits in, outermost (the request, with its id) first, so
        // the id stays on the line whatever spans are opened inside the request.
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
}

/// `directives` as a filter by target and level, unless they name spans or fields. Read as
/// `EnvFilter` reads them: blanks around a directive and empty directives are ignored.
fn plain_directives(directives: &str) -> Option<tracing_subscriber::filter::Targets> {
    if directives.contains(['[', '{']) {
        return None;
    }
    let parts: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if parts.is_empty() {
        return None;
    }
    parts.join(",").parse().ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            command:
                TokenCommand::New {
                    name,
                    role,
                    user_id,
                },
        }) => token_new(&name, role, user_id),
        Some(Command::Token {
            command: TokenCommand::List,
        }) => token_list(&cli.config),
        Some(Command::CheckConfig) => check_config(&cli.config),
        None => serve(&cli.config),
    }
}

/// Whether logind would give the shutdown drain its budget, asked on the system bus.
fn shutdown_note(config: &node_agent::config::ShutdownConfig) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(node_agent::logind::check_budget_once(config))
}

/// Validates the configuration, the tokens file it names (when it exists), its TLS files, and the
/// report token and TLS files; and says whether logind would cut the node shutdown's drain short.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let tokens = &config.auth.tokens_file;
            if tokens.exists() {
                TokenBook::load(tokens).map_err(|e| e.to_string())?;
            }
            node_agent::load_tls(&config).map_err(|e| e.to_string())?;
            node_agent::report::Reporting::load(&config.report).map_err(|e| e.to_string())?;
            Ok(config.shutdown)
        });
    match checked {
        Ok(shutdown) => {
            println!("{}: valid", path.display());
            // Not a fault of the file: said, and the exit stays 0.
            if shutdown.inhibit {
                match shutdown_note(&shutdown) {
                    Ok(note) => println!("{note}"),
                    Err(warning) => eprintln!("warning: {warning}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn token_list(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let file = &config.auth.tokens_file;
    let tokens = match list_tokens(file) {
        Ok((tokens, refusal)) => {
            if let Some(e) = refusal {
                eprintln!("warning: {e}; the agent will not start with it");
            }
            tokens
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let width = tokens
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:width$}  {:8}  USER_ID", "NAME", "ROLE");
    for t in tokens {
        let role = match t.role {
            Role::Operator => "operator",
            Role::User => "user",
        };
        println!(
            "{:width$}  {role:8}  {}",
            t.name,
            t.user_id.as_deref().unwrap_or("-")
        );
    }
    ExitCode::SUCCESS
}

fn token_new(name: &str, role: Role, user_id: Option<String>) -> ExitCode {
    match (role, &user_id) {
        (Role::User, None) => {
            eprintln!("a user token needs --user-id");
            return ExitCode::from(2);
        }
        (Role::Operator, Some(_)) => {
            eprintln!("an operator token takes no --user-id");
            return ExitCode::from(2);
        }
        _ => {}
    }
    match new_token(name, role, user_id) {
        Ok((token, entry)) => {
            println!("{token}");
            println!();
            println!("# Add this entry to the tokens file, then reload the agent (SIGHUP):");
            print!("{}", entry_toml(&entry));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard one, as most daemons do: the agent keeps four
/// cgroup files open for each running container it follows, besides its connections. A limit it
/// cannot raise is left as it is (containers beyond it are sampled through the engine).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("node-agent: cannot raise the open files limit: {e}");
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    raise_open_files_limit();
    // Blocking work is the store's writes, which take one connection in turn: a few threads serve
    // them, and fewer threads keep fewer allocator arenas resident.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("node-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signals first: a SIGHUP or SIGTERM during start-up must not kill the process.
    let signals = {
        let _entered = runtime.enter();
        node_agent::signals::install()
    };
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("node-agent: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            init_logging(&LogConfig::default());
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config.log);
    let (shutdown, reloads) = signals.split();
    match runtime.block_on(node_agent::run(config, shutdown, reloads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format_chain(&e), "node-agent stopped");
            ExitCode::from(e.exit_code())
        }
    }
}

/// An error and its sources on one line, for the journal.
fn format_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plain_directives;
    use tracing::Level;

    #[test]
    fn plain_directives_filter_by_target_and_level_and_span_directives_do_not() {
        let targets = plain_directives("info,node_agent=debug").expect("plain");
        assert!(targets.would_enable("node_agent::http::trace", &Level::DEBUG));
        assert!(!targets.would_enable("node_agent::http::trace", &Level::TRACE));
        assert!(targets.would_enable("hyper::proto", &Level::INFO));
        assert!(!targets.would_enable("hyper::proto", &Level::DEBUG));
        let targets = plain_directives("warn").expect("plain");
        assert!(!targets.would_enable("node_agent", &Level::INFO));
        let targets = plain_directives(" info , node_agent=debug,").expect("plain");
        assert!(targets.would_enable("node_agent::agent", &Level::DEBUG));
        assert!(targets.would_enable("hyper::proto", &Level::INFO));
        assert!(!targets.would_enable("hyper::proto", &Level::DEBUG));
        assert!(plain_directives("").is_none(), "left to EnvFilter");
        assert!(plain_directives("info,[request]=debug").is_none());
        assert!(plain_directives("info,[request{id=abc}]=trace").is_none());
    }
}
