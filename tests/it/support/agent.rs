//! The agent process: the real binary on a free loopback port from a private directory (its
//! configuration, tokens and store), its log and standard output, signals, `kill -9` and restarts;
//! and runs of the binary to its exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::config::{OPERATOR_TOKEN_NAME, agent_config, write_tokens};
use super::{Client, PATIENCE, engine_socket, patiently, unique};

/// Options for an agent under test.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `[docker] host`; unset uses the local engine.
    pub docker_host: Option<String>,
    /// `[stop] default_timeout_secs`.
    pub default_timeout: Option<u32>,
    /// Do not write a tokens file: the agent must create one.
    pub no_tokens_file: bool,
    /// User tokens to add to the tokens file: (name, token, user_id).
    pub user_tokens: Vec<(String, String, String)>,
    /// `[http] max_connections` and `[http] header_timeout_secs`.
    pub max_connections: Option<usize>,
    pub header_timeout_secs: Option<u64>,
    /// `[stop] shutdown_drain_secs`.
    pub shutdown_drain_secs: Option<u64>,
    /// `RUST_LOG` for the agent; unset is `info,node_agent=debug`.
    pub log_filter: Option<String>,
    /// More environment for the agent's process.
    pub env: Vec<(String, String)>,
    /// More `[http]` lines, e.g. `unix_socket = "..."`.
    pub http_extra: String,
    /// More sections, appended to the configuration as written.
    pub extra_config: String,
    /// More `[auth]` lines, e.g. `max_waits_per_token = 2`.
    pub auth_extra: String,
    /// `[report] url`, with a token file holding [`REPORT_TOKEN`] written beside the configuration.
    pub report_url: Option<String>,
    /// `[report] resync_secs`.
    pub report_resync_secs: Option<u64>,
    /// `[report] ca_file`, and `client_cert_file` with `client_key_file`.
    pub report_ca_file: Option<PathBuf>,
    pub report_identity: Option<(PathBuf, PathBuf)>,
    /// Run the agent as this user and group (through util-linux's `setpriv`), with the engine
    /// socket's group as its only other group, as the systemd unit runs it; its directory is
    /// given to that user.
    pub run_as: Option<u32>,
    /// `[http] listen`; unset is a free loopback port.
    pub listen: Option<String>,
    /// Run the agent in this network namespace (`/run/netns/NAME`), entered with `nsenter`; only
    /// its network is its own, so it still reaches the engine's Unix socket.
    pub netns: Option<String>,
    /// The `[shutdown]` section's lines; unset is `inhibit = false`, so that no test agent asks a
    /// system bus for a lock unless the test means it to; empty leaves the section out (for a
    /// build from before it).
    pub shutdown: Option<String>,
}

/// The real agent binary, serving on a free loopback port from a private directory.
#[derive(Debug)]
pub struct AgentProcess {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub token: String,
    /// What the running process has printed on standard output, a line each.
    stdout: Arc<Mutex<Vec<String>>>,
    log_filter: String,
    env: Vec<(String, String)>,
    /// Every line the agent has logged so far.
    log: Arc<Mutex<Vec<String>>>,
    child: Option<Child>,
    run_as: Option<u32>,
    netns: Option<String>,
}

impl AgentProcess {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("node-agent.toml")
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }

    /// Starts an agent with an operator token of its own.
    pub fn start() -> AgentProcess {
        Self::start_with(AgentOptions::default())
    }

    pub fn start_with(options: AgentOptions) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node-agent.toml"),
            agent_config(dir.path(), &options),
        )
        .unwrap();
        let token = if options.no_tokens_file {
            String::new()
        } else {
            let token = unique("operator-token");
            let mut entries = vec![(OPERATOR_TOKEN_NAME, token.as_str(), "operator", None)];
            for (name, user_token, user_id) in &options.user_tokens {
                entries.push((name, user_token, "user", Some(user_id.as_str())));
            }
            write_tokens(&dir.path().join("tokens.toml"), &entries);
            token
        };
        let mut agent = AgentProcess {
            env: options.env.clone(),
            log_filter: options
                .log_filter
                .clone()
                .unwrap_or_else(|| "info,node_agent=debug".to_owned()),
            dir,
            base: String::new(),
            token,
            stdout: Arc::default(),
            log: Arc::default(),
            child: None,
            run_as: options.run_as,
            netns: options.netns.clone(),
        };
        if let Some(uid) = options.run_as {
            chown_tree(agent.dir.path(), uid);
        }
        agent.spawn();
        agent
    }

    /// Starts the binary and waits for its "listening" line.
    fn spawn(&mut self) {
        let mut command = match (self.run_as, &self.netns) {
            (None, Some(netns)) => {
                let mut command = Command::new("nsenter");
                outside_systemd(&mut command);
                command.args([
                    format!("--net=/run/netns/{netns}"),
                    "--".to_owned(),
                    env!("CARGO_BIN_EXE_node-agent").to_owned(),
                ]);
                command
            }
            (None, None) => agent_command(),
            (Some(uid), _) => {
                use std::os::unix::fs::MetadataExt;
                let socket_group = std::fs::metadata(engine_socket())
                    .expect("the engine's socket")
                    .gid();
                let mut command = Command::new("setpriv");
                outside_systemd(&mut command);
                command.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    format!("--groups={socket_group}"),
                    env!("CARGO_BIN_EXE_node-agent").to_owned(),
                ]);
                command
            }
        };
        let mut child = command
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", &self.log_filter)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node-agent");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let log = self.log.clone();
        // The test this agent belongs to: once it has failed, the echo stops, so that the failure's
        // message stays near the end of what the test printed (its cleanup makes the agent log the
        // removal of every container it made).
        let test = super::failure::current_test();
        std::thread::spawn(move || {
            let mut echoing = true;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept before it is echoed: the echo may block on a slow terminal or pipe.
                log.lock().unwrap().push(line.clone());
                if echoing && super::failure::has_failed(&test) {
                    echoing = false;
                    eprintln!(
                        "[agent] (the test has failed: this agent's later lines are not shown)"
                    );
                }
                if echoing {
                    eprintln!("[agent] {line}");
                }
                if line.contains("listening") {
                    // Human logs say addr=…; JSON logs say "addr":"…".
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                    } else if let Some(addr) = line.split("\"addr\":\"").nth(1) {
                        let _ = tx.send(addr.split('"').next().unwrap_or("").to_owned());
                    }
                }
            }
        });
        // A new process: what the previous one printed is not its.
        let printed = Arc::new(Mutex::new(Vec::new()));
        self.stdout = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("node-agent did not start listening within 30 s");
        self.base = format!("http://{addr}");
        self.child = Some(child);
    }

    /// What the running process has printed on standard output so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Waits until the running process has printed a line on standard output that satisfies
    /// `wanted` (failing after [`PATIENCE`]); returns it.
    pub fn wait_stdout(&self, wanted: impl Fn(&str) -> bool) -> String {
        patiently(
            || {
                self.stdout
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| wanted(l))
                    .cloned()
            },
            || format!("no such line on standard output: {:?}", self.stdout()),
        )
    }

    /// The lines logged so far that contain every one of `needles`.
    pub fn logged(&self, needles: &[&str]) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    /// Waits until the agent has logged at least `count` lines containing every one of `needles`
    /// (failing after [`PATIENCE`]); returns them.
    pub fn wait_logged(&self, needles: &[&str], count: usize) -> Vec<String> {
        patiently(
            || Some(self.logged(needles)).filter(|lines| lines.len() >= count),
            || {
                format!(
                    "fewer than {count} log lines with {needles:?}; the log:\n{}",
                    self.log_text()
                )
            },
        )
    }

    /// Everything logged so far, as one text.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`-HUP`, `-TERM`…) to the agent, by its pid.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Waits (up to 30 s) for the agent to exit after a signal; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        for _ in 0..600 {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("node-agent did not exit within 30 s");
    }

    /// SIGKILL: the agent dies at once.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the agent again on the same directory (store and tokens).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: self.base.clone(),
            token: self.token.clone(),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Gives `dir` and everything in it to user and group `uid`.
fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap_or_else(|e| {
        panic!(
            "chown {}: {e} (running the agent as another user needs root)",
            dir.display()
        )
    });
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            chown_tree(&path, uid);
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        }
    }
}

/// Removes what systemd tells a service it starts, should the tests themselves run under systemd;
/// a test that plays the service manager sets these itself, after this.
fn outside_systemd(command: &mut Command) {
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        command.env_remove(var);
    }
}

/// The agent binary, to be run as if outside systemd.
fn agent_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    outside_systemd(&mut command);
    command
}

/// Runs the agent binary with `args` until it exits, outside systemd (killing it and failing after
/// [`PATIENCE`]); returns the exit code, standard output and standard error.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = agent_command();
    command.args(args);
    run_command_to_exit(command, args)
}

/// [`run_to_exit`] as user and group `uid`, with no other groups, through util-linux's `setpriv`.
pub fn run_to_exit_as(uid: u32, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new("setpriv");
    outside_systemd(&mut command);
    command
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            env!("CARGO_BIN_EXE_node-agent"),
        ])
        .args(args);
    run_command_to_exit(command, args)
}

fn run_command_to_exit(mut command: Command, args: &[&str]) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = command
        .env("RUST_LOG", "info,node_agent=debug")
        .env_remove("NODE_AGENT__HTTP__LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node-agent {args:?} ({e}); running it as another user needs util-linux's setpriv"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node-agent {args:?} did not exit within {PATIENCE:?}; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}
