//! Running the real binary as a service: systemd notification (ready, watchdog, reloading,
//! stopping) on a socket the test holds, `token list`, and tokens files other users may read or
//! that give one hash twice, refused at start-up and at SIGHUP; the store private whatever the
//! umask.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{AgentOptions, AgentProcess, OPERATOR_TOKEN_NAME, PATIENCE, run_to_exit};
use sha2::{Digest, Sha256};

/// An engine address where nothing listens: nothing here needs the engine, and the agent serves
/// without it.
const NO_ENGINE: &str = "unix:///nonexistent/node-agent-service-test/engine.sock";

const USER_ID: &str = "60c72b2f9b1e8d001c8e4f3a";

fn options() -> AgentOptions {
    AgentOptions {
        docker_host: Some(NO_ENGINE.into()),
        ..Default::default()
    }
}

/// `GET base+path` over plain TCP, with a bearer token if given; returns the status.
fn status_of(base: &str, path: &str, token: Option<&str>) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The datagrams the agent sends to `NOTIFY_SOCKET`, as a service manager would receive them: a
/// thread reads them as they come, so the socket's queue never fills whatever the test is doing.
struct Notifications {
    received: std::sync::mpsc::Receiver<String>,
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// Tells the reading thread to end.
    closed: Arc<AtomicBool>,
    /// Every message taken from `received` so far, in order.
    seen: Vec<String>,
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

impl Notifications {
    fn bind() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, received) = std::sync::mpsc::channel();
        let done = closed.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("reading notifications: {e}"),
                }
            }
        });
        Notifications {
            received,
            path,
            _dir: dir,
            closed,
            seen: Vec::new(),
        }
    }

    /// The next message; fails the test if none arrives before `deadline`.
    fn next_before(&mut self, deadline: Instant, waiting_for: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.received.recv_timeout(left) {
            Ok(msg) => {
                self.seen.push(msg.clone());
                msg
            }
            Err(_) => panic!(
                "no {waiting_for} within {PATIENCE:?}; the last messages: {:?}",
                self.recent()
            ),
        }
    }

    /// The last few messages received, for failure reports (watchdog pings come ten a second).
    fn recent(&self) -> &[String] {
        &self.seen[self.seen.len().saturating_sub(20)..]
    }

    /// The next message, if one arrives within [`PATIENCE`].
    fn next(&mut self) -> String {
        self.next_before(Instant::now() + PATIENCE, "notification")
    }

    /// Reads until a message carrying the line `state` (e.g. `READY=1`) arrives, within
    /// [`PATIENCE`] (other messages, such as watchdog pings, do not extend the wait); returns it
    /// and the messages that came before it.
    fn until(&mut self, state: &str) -> (String, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let mut before = Vec::new();
        loop {
            let msg = self.next_before(deadline, state);
            if carries(&msg, state) {
                return (msg, before);
            }
            assert!(
                Instant::now() < deadline,
                "no {state} within {PATIENCE:?}; the last messages: {:?}",
                self.recent()
            );
            before.push(msg);
        }
    }
}

/// Whether a notification message has the line `state`.
fn carries(msg: &str, state: &str) -> bool {
    msg.lines().any(|l| l == state)
}

#[test]
fn the_service_manager_hears_ready_watchdog_reloading_and_stopping() {
    let mut notes = Notifications::bind();
    let mut agent = AgentProcess::start_with(AgentOptions {
        env: vec![
            (
                "NOTIFY_SOCKET".into(),
                notes.path.to_str().unwrap().to_owned(),
            ),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..options()
    });

    // Ready first, with a status, once it serves.
    let first = notes.next();
    assert!(carries(&first, "READY=1"), "first message: {first:?}");
    assert!(
        first
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.len() > 7),
        "{first:?}"
    );
    assert_eq!(status_of(&agent.base, "/healthz", None), 200);

    // The watchdog, every 100 ms (half of 200 ms) while the store answers.
    let log = agent.wait_logged(&["systemd watchdog enabled"], 1);
    assert!(log[0].contains("interval_ms=200"), "{log:?}");
    for _ in 0..2 {
        let (_, before) = notes.until("WATCHDOG=1");
        assert!(
            before.is_empty(),
            "only watchdog pings while idle: {before:?}"
        );
    }

    // SIGHUP: reloading, then ready again, and the tokens were read again in between.
    agent.signal("-HUP");
    let (reloading, before) = notes.until("RELOADING=1");
    assert!(
        before.iter().all(|m| carries(m, "WATCHDOG=1")),
        "nothing but watchdog pings before RELOADING=1: {before:?}"
    );
    assert!(reloading.contains("STATUS="), "{reloading:?}");
    let (ready, before) = notes.until("READY=1");
    assert!(
        before.iter().all(|m| carries(m, "WATCHDOG=1")),
        "nothing but watchdog pings between RELOADING=1 and READY=1: {before:?}"
    );
    assert!(ready.contains("STATUS="), "{ready:?}");
    agent.wait_logged(&["tokens reloaded"], 1);
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&agent.token)), 200);

    // SIGTERM: stopping, then a clean exit.
    agent.signal("-TERM");
    assert_eq!(agent.wait_exit(), Some(0));
    let (stopping, before) = notes.until("STOPPING=1");
    assert!(
        before.iter().all(|m| carries(m, "WATCHDOG=1")),
        "nothing but watchdog pings before STOPPING=1: {before:?}"
    );
    assert!(stopping.contains("STATUS="), "{stopping:?}");
    assert!(
        !notes
            .seen
            .iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("READY=1")),
        "reloading and ready are separate messages: {:?}",
        notes.seen
    );
    assert!(
        agent.logged(&["could not notify"]).is_empty(),
        "{}",
        agent.log_text()
    );
}

/// A configuration in `dir` whose tokens file holds an operator and a user token; returns the
/// configuration's path, the tokens file's, and the two tokens.
fn config_with_tokens(dir: &Path) -> (PathBuf, PathBuf, [String; 2]) {
    let tokens = dir.join("tokens.toml");
    let operator = format!("operator-secret-{}", std::process::id());
    let user = format!("user-secret-{}", std::process::id());
    support::write_tokens(
        &tokens,
        &[
            (OPERATOR_TOKEN_NAME, &operator, "operator", None),
            ("keven", &user, "user", Some(USER_ID)),
        ],
    );
    let config = dir.join("node-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"n1\"\nname = \"ODIN\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [store]\npath = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n\n[docker]\nhost = \"{NO_ENGINE}\"\n",
            dir.join("state/node-agent.db").display(),
            tokens.display(),
        ),
    )
    .unwrap();
    (config, tokens, [operator, user])
}

/// Whether `text` holds a run of 64 hex digits (a SHA-256 hash).
fn holds_a_hash(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .any(|run| run.len() >= 64)
}

#[test]
fn token_list_shows_names_roles_and_users_never_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tokens, secrets) = config_with_tokens(dir.path());
    let config = config.to_str().unwrap();

    let (code, stdout, stderr) = run_to_exit(&["token", "list", "--config", config]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two tokens: {stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "ROLE", "USER_ID"], "{stdout}");
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        row(OPERATOR_TOKEN_NAME),
        [OPERATOR_TOKEN_NAME, "operator", "-"]
    );
    assert_eq!(row("keven"), ["keven", "user", USER_ID]);
    for secret in &secrets {
        let hash = hex::encode(Sha256::digest(secret.as_bytes()));
        assert!(
            !stdout.contains(&hash) && !stderr.contains(&hash),
            "{stdout}{stderr}"
        );
        assert!(!stdout.contains(secret.as_str()), "{stdout}");
    }
    assert!(!holds_a_hash(&stdout), "{stdout}");
    assert!(
        !stderr.contains("warning"),
        "a private file: no warning: {stderr}"
    );

    // Listing still works on a file others may read, and says the agent will not take it.
    chmod(&tokens, 0o644);
    let (code, stdout, stderr) = run_to_exit(&["token", "list", "--config", config]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("keven"), "{stdout}");
    assert!(!holds_a_hash(&stdout), "{stdout}");
    assert!(
        stderr.contains("warning") && stderr.contains("other users"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&tokens.display().to_string()),
        "the warning names the file: {stderr}"
    );
}

#[test]
fn a_tokens_file_other_users_may_read_is_refused_at_start() {
    let mut agent = AgentProcess::start_with(options());
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&agent.token)), 200);
    assert_eq!(agent.terminate(), Some(0));
    let config = agent.config_path();
    let config = config.to_str().unwrap();
    let tokens = agent.tokens_path();

    chmod(&tokens, 0o644);
    let (code, stdout, stderr) = run_to_exit(&["--config", config]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&tokens.display().to_string()),
        "the error names the file: {stderr}"
    );
    assert!(
        stderr.contains("0644") && stderr.contains("other users"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("listening"),
        "refused before listening: {stderr}"
    );
    let (code, stdout, stderr) = run_to_exit(&["check-config", "--config", config]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&tokens.display().to_string()) && stderr.contains("other users"),
        "{stderr}"
    );
    assert_eq!(
        mode_of(&tokens),
        0o644,
        "the agent does not change the mode"
    );

    // Its group may write it: refused too, whoever is in the group could grant any role.
    chmod(&tokens, 0o660);
    let (code, stdout, stderr) = run_to_exit(&["--config", config]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(stderr.contains("0660"), "{stderr}");

    // Owner and group may read: fine.
    chmod(&tokens, 0o640);
    let (code, stdout, stderr) = run_to_exit(&["check-config", "--config", config]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    agent.restart();
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&agent.token)), 200);
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn sighup_keeps_the_tokens_in_force_when_the_file_is_exposed() {
    let mut agent = AgentProcess::start_with(options());
    let tokens = agent.tokens_path();
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&agent.token)), 200);

    // A new token is added while the file is readable by all: the reload refuses the file whole.
    let late = format!("late-operator-secret-{}", std::process::id());
    chmod(&tokens, 0o644);
    support::write_tokens(
        &tokens,
        &[
            (OPERATOR_TOKEN_NAME, &agent.token, "operator", None),
            ("late-operator", &late, "operator", None),
        ],
    );
    assert_eq!(mode_of(&tokens), 0o644);
    agent.signal("-HUP");
    let refused = agent.wait_logged(&["tokens file not reloaded"], 1);
    assert!(
        refused[0].contains("0644") && refused[0].contains("other users"),
        "the log says why: {refused:?}"
    );
    assert!(
        refused[0].contains(&tokens.display().to_string()),
        "{refused:?}"
    );
    assert_eq!(
        status_of(&agent.base, "/v1/apps", Some(&agent.token)),
        200,
        "the old tokens stay in force"
    );
    assert_eq!(
        status_of(&agent.base, "/v1/apps", Some(&late)),
        401,
        "the exposed file was not read"
    );
    assert!(agent.logged(&["tokens reloaded"]).is_empty());

    // Made private again: the next SIGHUP takes the new token.
    chmod(&tokens, 0o600);
    agent.signal("-HUP");
    let reloaded = agent.wait_logged(&["tokens reloaded"], 1);
    assert!(reloaded[0].contains("tokens=2"), "{reloaded:?}");
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&late)), 200);
    assert_eq!(status_of(&agent.base, "/v1/apps", Some(&agent.token)), 200);
    assert_eq!(status_of(&agent.base, "/v1/apps", None), 401);

    assert_eq!(agent.terminate(), Some(0));
}

/// Runs the agent with `config` and standard output into a file, and `JOURNAL_STREAM` naming that
/// file (as systemd names the journal's stream) or another; returns the exit code, standard output
/// and standard error.
fn run_with_journal_stream(config: &Path, names_stdout: bool) -> (Option<i32>, String, String) {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let out = std::fs::File::create(&out_path).unwrap();
    let meta = out.metadata().unwrap();
    let stream = if names_stdout {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--config", config.to_str().unwrap()])
        .env("JOURNAL_STREAM", &stream)
        .env_remove("NOTIFY_SOCKET")
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        // It showed a token: it made the tokens file and serves. Stop it, by its pid.
        if holds_a_hash(&std::fs::read_to_string(&out_path).unwrap_or_default()) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            break child.wait().unwrap().code();
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("node-agent neither exited nor showed a token within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, std::fs::read_to_string(&out_path).unwrap(), stderr)
}

#[test]
fn when_stdout_is_the_journal_a_missing_tokens_file_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tokens, _) = config_with_tokens(dir.path());
    std::fs::remove_file(&tokens).unwrap();

    let (code, stdout, stderr) = run_with_journal_stream(&config, true);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&tokens.display().to_string()) && stderr.contains("journal"),
        "the error names the file and why: {stderr}"
    );
    assert!(
        !holds_a_hash(&stdout) && !holds_a_hash(&stderr),
        "no token shown: {stdout}{stderr}"
    );
    assert!(!tokens.exists(), "no tokens file was created");

    // The journal takes only standard error here: the token goes to standard output, once.
    let (code, stdout, stderr) = run_with_journal_stream(&config, false);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(tokens.exists(), "{stderr}");
    assert!(holds_a_hash(&stdout), "the token is shown: {stdout}");
}

#[test]
fn two_entries_with_one_hash_are_refused_at_start_and_at_sighup_naming_both() {
    let mut agent = AgentProcess::start_with(options());
    let tokens = agent.tokens_path();
    let user = format!("user-token-{}", std::process::id());
    // Another entry with the operator's hash, as a user: which one the token names is not for the
    // agent to pick.
    support::write_tokens(
        &tokens,
        &[
            (OPERATOR_TOKEN_NAME, &agent.token, "operator", None),
            ("keven", &user, "user", Some(USER_ID)),
            ("keven-again", &agent.token, "user", Some(USER_ID)),
        ],
    );
    agent.signal("-HUP");
    let refused = agent.wait_logged(&["tokens file not reloaded"], 1);
    assert!(
        refused[0].contains("keven-again") && refused[0].contains(OPERATOR_TOKEN_NAME),
        "the log names both entries: {refused:?}"
    );
    assert!(refused[0].contains("same `sha256`"), "{refused:?}");
    assert!(agent.logged(&["tokens reloaded"]).is_empty());
    assert_eq!(
        status_of(&agent.base, "/v1/apps", Some(&agent.token)),
        200,
        "the old tokens stay in force"
    );
    assert_eq!(
        status_of(&agent.base, "/v1/apps", Some(&user)),
        401,
        "the refused file was not taken in part"
    );
    assert_eq!(agent.terminate(), Some(0));

    let config = agent.config_path();
    let config = config.to_str().unwrap();
    for args in [
        vec!["--config", config],
        vec!["check-config", "--config", config],
    ] {
        let (code, stdout, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(78), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("token #3 (\"keven-again\")")
                && stderr.contains(&format!("token #1 (\"{OPERATOR_TOKEN_NAME}\")"))
                && stderr.contains(&tokens.display().to_string()),
            "{args:?}: the error names the file and both entries: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[test]
fn the_store_is_private_to_the_agent_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        "127.0.0.1:0",
        "",
        &format!("[docker]\nhost = \"{NO_ENGINE}\"\n"),
    );
    // Through a shell, which sets the umask the agent inherits: 000 would leave every file it
    // creates readable and writable by all.
    let mut agent = std::process::Command::new("sh")
        .args([
            "-c",
            "umask 000 && exec \"$0\" --config \"$1\"",
            env!("CARGO_BIN_EXE_node-agent"),
            config.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[agent] {line}");
            let _ = tx.send(line);
        }
    });
    rx.iter()
        .find(|line| line.contains("listening"))
        .expect("the agent listens");
    let state = dir.path().join("state");
    let modes: Vec<(String, u32)> = ["node-agent.db", "node-agent.db-wal", "node-agent.db-shm"]
        .iter()
        .map(|name| (name.to_string(), mode_of(&state.join(name))))
        .collect();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(agent.wait().unwrap().code(), Some(0));
    for (name, mode) in modes {
        assert_eq!(mode, 0o600, "{name} has mode {mode:04o}");
    }
}
