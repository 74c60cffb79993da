//! The man pages (`docs/man/*.1`) and shell completions (`completions/`) generated from the command
//! line's clap definition, and the test that keeps the committed copies equal to what it generates.
//!
//! They are committed rather than built (the Debian package ships them as they are, and the binary
//! carries no generator): when the command line changes, the test fails and says how to write them
//! again, `NODE_AGENT_BLESS=1 cargo test --bin node-agent cli_docs`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, EXIT_CONFIG};

/// The name the completions complete, and the man pages' title.
const BIN: &str = "node-agent";

/// Where the man pages go, from the crate's root.
const MAN_DIR: &str = "docs/man";

/// Where the completions go, from the crate's root.
const COMPLETIONS_DIR: &str = "completions";

/// The DESCRIPTION of `node-agent.1`, in roff: `--help` keeps the one line of `about`, which the
/// pages of the subcommands use.
const MAN_DESCRIPTION: &str = r#".SH DESCRIPTION
Without a command, \fBnode\-agent\fR serves: it answers the control plane's and the operators'
calls (the /v1 API, and the /api/apps routes of ~okeanos), stops and starts the node's application
containers through the Docker Engine API, keeps each app's record in its own store, and reports
every change to the control plane. Under systemd it runs as \fInode\-agent.service\fR: SIGHUP
reloads the tokens and TLS files, and SIGTERM ends the agent, never the apps.
.PP
\fBcheck\-config\fR checks a configuration; \fBtoken new\fR issues a token and \fBtoken list\fR
shows who holds one.
"#;

/// The sections of `node-agent.1` that the clap definition does not hold, in roff; `{exit_config}`
/// is [`EXIT_CONFIG`].
const MAN_TAIL: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success: the agent was stopped by SIGTERM or SIGINT, or the command did what it was asked.
.TP
\fB1\fR
Any other failure; the log or standard error says what.
.TP
\fB2\fR
A command line that cannot be used.
.TP
\fB{exit_config}\fR
A configuration, tokens file, TLS file or report token that cannot be used (sysexits' EX_CONFIG):
the message names the key or the file. systemd does not restart the service on it.
.SH ENVIRONMENT
.TP
\fBNODE_AGENT__\fISECTION\fB__\fIKEY\fR
Overrides a key of the configuration file, for example
\fBNODE_AGENT__HTTP__LISTEN=127.0.0.1:9000\fR.
.TP
\fBRUST_LOG\fR
Overrides \fB[log] level\fR.
.SH FILES
.TP
\fI/etc/node\-agent/node\-agent.toml\fR
The configuration; every key is documented in
\fI/usr/share/doc/node\-agent/node\-agent.toml.example\fR.
.TP
\fI/etc/node\-agent/tokens.toml\fR
The tokens file (\fB[auth] tokens_file\fR): names, roles and SHA\-256 hashes, never the tokens.
.TP
\fI/var/lib/node\-agent/\fR
The store of the app records, and the changes not yet acknowledged by the control plane.
.TP
\fI/usr/share/node\-agent/alerts/\fR
Prometheus alert rules for the agent, and their unit tests.
.SH "SEE ALSO"
\fBnode\-agent\-check\-config\fR(1), \fBnode\-agent\-token\fR(1), \fBsystemctl\fR(1),
\fBsystemd\-inhibit\fR(1), and the documentation in \fI/usr/share/doc/node\-agent/\fR
(\fIdocs/operations.md\fR: installing, running, draining and alerting; \fIdocs/api.md\fR: the HTTP
API).
"#;

/// Every generated file, by its path from the crate's root: a man page per command and subcommand
/// (as `clap_mangen::generate_to` names them), and the bash, zsh and fish completions.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let source = format!("{BIN} {}", command.get_version().unwrap_or_default());
    man_pages(&command, &source, &mut files);
    for (shell, name) in [
        (Shell::Bash, "node-agent.bash"),
        (Shell::Zsh, "node-agent.zsh"),
        (Shell::Fish, "node-agent.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
        if shell == Shell::Bash {
            out = bash_with_hyphen_fixed(&out);
        }
        files.push((Path::new(COMPLETIONS_DIR).join(name), out));
    }
    files
}

/// The bash completion as clap_complete writes it, with its states named one way: for a command
/// whose name has a hyphen, its loop names the state of `node-agent token` `node__agent__subcmd__token`
/// but its `case` arms `node__subcmd__agent__subcmd__token`, so nothing after a subcommand ever
/// completes (clap-rs/clap#6421). Once clap_complete names them alike, this changes nothing.
fn bash_with_hyphen_fixed(script: &[u8]) -> Vec<u8> {
    let script = String::from_utf8_lossy(script);
    let arms = BIN.replace('-', "__subcmd__");
    let states = BIN.replace('-', "__");
    script
        .lines()
        .map(|line| {
            let arm = line.trim_start();
            if arm.starts_with(&arms) && arm.ends_with(')') {
                format!("{}\n", line.replacen(&arms, &states, 1))
            } else {
                format!("{line}\n")
            }
        })
        .collect::<String>()
        .into_bytes()
}

/// The man page of `command` and of each of its subcommands; each names `source` (the agent and
/// its version) in its title line. The top one has [`MAN_DESCRIPTION`] and [`MAN_TAIL`] besides
/// clap's sections.
fn man_pages(command: &clap::Command, source: &str, files: &mut Vec<(PathBuf, Vec<u8>)>) {
    let page = clap_mangen::Man::new(command.clone()).source(source);
    let mut out = Vec::new();
    if command.get_name() == BIN {
        let tail = MAN_TAIL.replace("{exit_config}", &EXIT_CONFIG.to_string());
        (|| {
            page.render_title(&mut out)?;
            page.render_name_section(&mut out)?;
            page.render_synopsis_section(&mut out)?;
            out.extend_from_slice(MAN_DESCRIPTION.as_bytes());
            page.render_options_section(&mut out)?;
            page.render_subcommands_section(&mut out)?;
            page.render_version_section(&mut out)?;
            out.extend_from_slice(tail.as_bytes());
            std::io::Result::Ok(())
        })()
        .expect("rendered into memory");
    } else {
        page.render(&mut out).expect("rendered into memory");
    }
    files.push((Path::new(MAN_DIR).join(page.get_filename()), out));
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, source, files);
    }
}

/// The files under `dir` (from the crate's root) whose names end in one of `suffixes`.
fn committed(root: &Path, dir: &str, suffixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| Path::new(dir).join(e.file_name()))
        .filter(|p| {
            let name = p.to_string_lossy();
            suffixes.iter().any(|s| name.ends_with(s))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn the_committed_man_pages_and_completions_are_those_the_command_line_makes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var("NODE_AGENT_BLESS").is_ok_and(|v| v == "1");
    let files = generated();
    let mut differ = Vec::new();
    for (path, contents) in &files {
        let full = root.join(path);
        if std::fs::read(&full).ok().as_deref() == Some(contents.as_slice()) {
            continue;
        }
        if bless {
            std::fs::create_dir_all(full.parent().expect("a parent")).expect("the directory");
            std::fs::write(&full, contents).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
            eprintln!("wrote {}", path.display());
        } else {
            differ.push(path.display().to_string());
        }
    }
    // A page of a subcommand that is gone, or a completion of a shell no longer made.
    let mut stray = Vec::new();
    for path in committed(root, MAN_DIR, &[".1"])
        .into_iter()
        .chain(committed(root, COMPLETIONS_DIR, &[""]))
    {
        if files.iter().any(|(p, _)| *p == path) {
            continue;
        }
        if bless {
            std::fs::remove_file(root.join(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("removed {}", path.display());
        } else {
            stray.push(path.display().to_string());
        }
    }
    assert!(
        differ.is_empty() && stray.is_empty(),
        "the man pages and shell completions are generated from the command line's clap \
         definition (src/main.rs), and the committed ones are not what it makes now: {} differ \
         or are missing{}. Write them again with\n\n    NODE_AGENT_BLESS=1 cargo test --bin \
         node-agent cli_docs\n\nthen review and commit the changes.",
        if differ.is_empty() {
            "none".to_owned()
        } else {
            differ.join(", ")
        },
        if stray.is_empty() {
            String::new()
        } else {
            format!("; {} are no longer generated", stray.join(", "))
        }
    );
}

#[test]
fn the_man_page_names_every_command_and_the_completions_complete_them() {
    let files = generated();
    let text = |name: &str| -> String {
        let (_, contents) = files
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} is not generated"));
        String::from_utf8(contents.clone()).expect("UTF-8")
    };
    let man = text("node-agent.1");
    assert!(man.contains(".TH node-agent 1"), "{man}");
    for word in [
        "check\\-config",
        "token",
        "\\-\\-config",
        "EXIT STATUS",
        "78",
        "SIGHUP",
    ] {
        assert!(
            man.contains(word),
            "{word} missing from node-agent.1:\n{man}"
        );
    }
    assert!(text("node-agent-token-new.1").contains("\\-\\-user\\-id"));
    // Completed as bash completes them: the subcommands, then a subcommand's own options and
    // values.
    let bash = text("node-agent.bash");
    assert_eq!(
        bash_completes(&bash, &["token", ""]),
        ["-h", "--config", "--help", "new", "list", "help"]
    );
    assert_eq!(
        bash_completes(&bash, &["token", "new", "--role", ""]),
        ["operator", "user"]
    );
    assert!(bash_completes(&bash, &["check-config", "--"]).contains(&"--config".to_owned()));
    for shell in ["node-agent.bash", "node-agent.zsh", "node-agent.fish"] {
        let script = text(shell);
        for word in ["check-config", "token", "user-id", "operator"] {
            assert!(script.contains(word), "{word} missing from {shell}");
        }
    }
}

/// What the bash completion `script` offers after `node-agent` and `words`, the last of which is
/// the word being completed.
fn bash_completes(script: &str, words: &[&str]) -> Vec<String> {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), script).expect("the script written");
    let function = format!("_{}", BIN.replace('-', "__"));
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            r#"source "$0"; COMP_WORDS=({BIN} "$@"); COMP_CWORD=$#; {function} {BIN} "${{@: -1}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#
        ))
        .arg(file.path())
        .args(words)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
