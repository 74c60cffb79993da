//! The Unix socket listener of the real binary: its file and mode, tokens on it, root trusted on it
//! only when configured (and only there), and its file's life across exits, kills and restarts.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{
    AgentOptions, AgentProcess, PATIENCE, run_to_exit, run_to_exit_as, write_config,
};

/// An engine address where nothing listens: these tests are about the listener, not the engine, and
/// the agent serves (registering without looking at the container) while the engine is away.
const NO_ENGINE: &str = "unix:///nonexistent/node-agent-socket-test/engine.sock";
const NO_ENGINE_SECTION: &str =
    "[docker]\nhost = \"unix:///nonexistent/node-agent-socket-test/engine.sock\"\n";

/// The uid `setpriv` runs the non-root client as (nobody).
const NOBODY: u32 = 65534;

/// How a request reaches the agent.
#[derive(Debug, Clone, Copy)]
enum Via<'a> {
    /// The Unix socket, as root (the test's own uid).
    Socket(&'a Path),
    /// The Unix socket, as another uid (gid 0, so that the root:root 0660 socket may be opened).
    SocketAs(&'a Path, u32),
    /// The TCP listener, `http://addr:port`.
    Tcp(&'a str),
}

/// Sends one request with curl; returns the status and the body.
fn request(
    via: Via<'_>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = match via {
        Via::SocketAs(_, uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                "--regid=0",
                "--clear-groups",
                "curl",
            ]);
            c
        }
        _ => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", method]);
    let url = match via {
        Via::Socket(socket) | Via::SocketAs(socket, _) => {
            cmd.arg("--unix-socket").arg(socket);
            format!("http://localhost{path}")
        }
        Via::Tcp(base) => format!("{base}{path}"),
    };
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(&url);
    let out = cmd.output().unwrap_or_else(|e| match via {
        Via::SocketAs(..) => panic!(
            "could not run setpriv ({e}); these tests need util-linux's setpriv to call the \
             socket as another user (apt-get install util-linux)"
        ),
        _ => panic!("could not run curl ({e}); these tests need curl (apt-get install curl)"),
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {method} {url} via {via:?} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status from curl: {stdout:?}"));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no status from curl: {stdout:?}")),
        body.to_owned(),
    )
}

fn get(via: Via<'_>, path: &str, token: Option<&str>) -> (u16, String) {
    request(via, "GET", path, token, None)
}

/// A private directory for the socket; the socket goes in `run/` below it, which the agent creates.
/// (The agent's own directory does not exist before the agent starts, so it cannot be named in the
/// configuration the harness writes.) The directory may be traversed by anyone, so that a non-root
/// client can reach the socket; the socket's own mode decides who may connect.
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("run/node-agent.sock");
    (dir, socket)
}

fn socket_options(socket: &Path, trust_root: bool) -> AgentOptions {
    let mut http_extra = format!("unix_socket = \"{}\"\n", socket.display());
    if trust_root {
        http_extra.push_str("trust_root_on_socket = true\n");
    }
    AgentOptions {
        docker_host: Some(NO_ENGINE.into()),
        http_extra,
        ..Default::default()
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Waits until the agent accepts connections on `socket`. The agent logs `listening` (which the
/// harness waits for) when its TCP listener is bound; the socket is bound just after.
fn wait_for_socket(socket: &Path) {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if is_socket(socket) && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the agent did not serve on {} within {PATIENCE:?}",
        socket.display()
    );
}

#[test]
fn the_socket_is_0660_and_asks_for_a_token_unless_root_is_trusted() {
    let (_dir, socket) = socket_dir();
    let mut agent = AgentProcess::start_with(socket_options(&socket, false));
    wait_for_socket(&socket);

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o660, "socket mode is {:04o}", mode & 0o7777);
    let log = agent.wait_logged(&["serving on the Unix socket too"], 1);
    assert!(log[0].contains("trust_root=false"), "{log:?}");

    let via = Via::Socket(&socket);
    let (status, body) = get(via, "/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok"), "{body}");
    let (status, body) = get(via, "/v1/apps", None);
    assert_eq!(
        status, 401,
        "root without a token, trust off (the default): {body}"
    );
    let (status, body) = get(via, "/v1/apps", Some(&agent.token));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"applications\""),
        "the list of apps: {body}"
    );

    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn root_on_the_socket_acts_as_operator_when_trusted_and_only_there() {
    let (_dir, socket) = socket_dir();
    let mut agent = AgentProcess::start_with(socket_options(&socket, true));
    wait_for_socket(&socket);
    agent.wait_logged(&["serving on the Unix socket too", "trust_root=true"], 1);
    // The client as nobody must be able to reach the socket through the directory the agent made.
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let root = Via::Socket(&socket);

    // Root, no token: an operator.
    let (status, body) = get(root, "/v1/apps", None);
    assert_eq!(status, 200, "{body}");
    let id = support::app_id();
    let container = format!("na-socket-test-{}", std::process::id());
    let (status, body) = request(
        root,
        "PUT",
        &format!("/v1/apps/{id}"),
        None,
        Some(&format!("{{\"containerId\": \"{container}\"}}")),
    );
    assert_eq!(
        status, 201,
        "root registers an app, as operators may: {body}"
    );
    assert!(body.contains(&container), "{body}");
    // The registration names root on the socket as who did it.
    agent.wait_logged(
        &[
            " registered ",
            &format!("app={id} "),
            "token=root (unix socket)",
            "created=true",
        ],
        1,
    );

    // A token, when given, decides: a wrong one is refused even for root.
    let (status, body) = get(root, "/v1/apps", Some("not-a-token-of-this-node"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = request(
        root,
        "PUT",
        &format!("/v1/apps/{id}-2"),
        Some("not-a-token-of-this-node"),
        Some(&format!("{{\"containerId\": \"{container}\"}}")),
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(root, "/v1/apps", Some(&agent.token));
    assert_eq!(status, 200, "{body}");

    // Another user on the socket: no trust; a token still works.
    let nobody = Via::SocketAs(&socket, NOBODY);
    let (status, body) = get(nobody, "/healthz", None);
    assert_eq!(status, 200, "nobody reaches the socket: {body}");
    let (status, body) = get(nobody, "/v1/apps", None);
    assert_eq!(status, 401, "a non-root peer without a token: {body}");
    let (status, body) = request(
        nobody,
        "PUT",
        &format!("/v1/apps/{id}-3"),
        None,
        Some(&format!("{{\"containerId\": \"{container}\"}}")),
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(nobody, "/v1/apps", Some(&agent.token));
    assert_eq!(status, 200, "{body}");

    // The TCP listener, even from root on this host: no trust.
    let tcp = Via::Tcp(&agent.base);
    let (status, body) = get(tcp, "/v1/apps", None);
    assert_eq!(status, 401, "trust applies only to the socket: {body}");
    let (status, body) = request(
        tcp,
        "PUT",
        &format!("/v1/apps/{id}-4"),
        None,
        Some(&format!("{{\"containerId\": \"{container}\"}}")),
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(tcp, "/v1/apps", Some(&agent.token));
    assert_eq!(status, 200, "{body}");

    // Only the one registration by root happened.
    let (status, body) = get(root, "/v1/apps", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "{body}");
    for refused in ["-2", "-3", "-4"] {
        assert!(!body.contains(&format!("{id}{refused}")), "{body}");
    }

    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn the_socket_file_goes_at_exit_and_a_stale_one_is_replaced() {
    let (_dir, socket) = socket_dir();
    let mut agent = AgentProcess::start_with(socket_options(&socket, false));
    wait_for_socket(&socket);
    assert_eq!(get(Via::Socket(&socket), "/healthz", None).0, 200);

    assert_eq!(agent.terminate(), Some(0));
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "the socket file is removed at a graceful exit"
    );

    agent.restart();
    wait_for_socket(&socket);
    assert_eq!(get(Via::Socket(&socket), "/healthz", None).0, 200);

    agent.kill9();
    assert!(
        is_socket(&socket),
        "a killed agent leaves its socket file behind"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "nobody serves on the stale socket"
    );

    agent.restart();
    wait_for_socket(&socket);
    let (status, body) = get(Via::Socket(&socket), "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(Via::Socket(&socket), "/v1/apps", Some(&agent.token));
    assert_eq!(status, 200, "{body}");
    // One line per start: three starts, each served the socket.
    agent.wait_logged(&["serving on the Unix socket too"], 3);

    assert_eq!(agent.terminate(), Some(0));
    assert!(std::fs::symlink_metadata(&socket).is_err());
}

#[test]
fn a_file_that_is_not_a_socket_stops_start_up_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/node-agent.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let contents = "precious data, not a socket\n";
    std::fs::write(&socket, contents).unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        &format!("unix_socket = \"{}\"\n", socket.display()),
        NO_ENGINE_SECTION,
    );

    // A configuration fault: exit 78, which the unit does not restart; nothing was listening.
    let (code, _, stderr) = run_to_exit(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(78), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()),
        "the error names the path: {stderr}"
    );
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_file(), "still a regular file");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), contents);
}

#[test]
fn a_socket_another_agent_serves_is_not_taken_over() {
    let (_dir, socket) = socket_dir();
    let mut first = AgentProcess::start_with(socket_options(&socket, false));
    wait_for_socket(&socket);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        &format!("unix_socket = \"{}\"\n", socket.display()),
        NO_ENGINE_SECTION,
    );
    // Another agent may be on its way out: exit 1, which the unit retries.
    let (code, _, stderr) = run_to_exit(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()),
        "the error names the path: {stderr}"
    );
    assert!(stderr.contains("another process serves"), "{stderr}");

    // The first agent still serves on its socket, which the second left in place.
    assert!(is_socket(&socket));
    let (status, body) = get(Via::Socket(&socket), "/v1/apps", Some(&first.token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.terminate(), Some(0));
    assert!(std::fs::symlink_metadata(&socket).is_err());
}

#[test]
fn trusting_root_without_a_socket_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        "trust_root_on_socket = true\n",
        NO_ENGINE_SECTION,
    );
    let config = config.to_str().unwrap();

    let (code, _, stderr) = run_to_exit(&["--config", config]);
    assert_eq!(code, Some(78), "stderr:\n{stderr}");
    assert!(stderr.contains("http.trust_root_on_socket"), "{stderr}");
    assert!(
        !stderr.contains("listening"),
        "refused before listening: {stderr}"
    );

    let (code, stdout, stderr) = run_to_exit(&["check-config", "--config", config]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(stderr.contains("http.trust_root_on_socket"), "{stderr}");
}

#[test]
fn a_live_socket_the_agent_may_not_connect_to_is_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    // A directory everyone may write, holding root's own live socket, mode 0600: the agent, run as
    // nobody, cannot connect to it, which does not make it stale.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("theirs.sock");
    let theirs = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        &format!("unix_socket = \"{}\"\n", socket.display()),
        NO_ENGINE_SECTION,
    );
    // The tokens file is the agent user's own, as it must be.
    std::os::unix::fs::chown(dir.path().join("tokens.toml"), Some(NOBODY), Some(NOBODY))
        .expect("chown the tokens file to nobody: this test needs to run as root");

    let (code, _, stderr) = run_to_exit_as(NOBODY, &["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(78), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("may not be stale"),
        "the error names the path and why: {stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    // Root's socket is still there, and still serves.
    assert!(is_socket(&socket));
    let _client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    theirs.accept().unwrap();
}

#[test]
fn a_socket_file_that_replaced_the_agents_own_is_left_at_exit() {
    let (_dir, socket) = socket_dir();
    let mut agent = AgentProcess::start_with(socket_options(&socket, false));
    wait_for_socket(&socket);
    // Someone else takes the path while the agent serves.
    std::fs::remove_file(&socket).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    assert_eq!(agent.terminate(), Some(0));
    assert!(is_socket(&socket), "the agent removed a socket not its own");
    let _client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    theirs.accept().unwrap();
}

#[test]
fn the_socket_is_0660_whatever_the_umask() {
    for umask in ["000", "077", "027"] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/node-agent.sock");
        let config = write_config(
            dir.path(),
            "127.0.0.1:0",
            &format!("unix_socket = \"{}\"\n", socket.display()),
            NO_ENGINE_SECTION,
        );
        // `exec` keeps the pid: the child is the agent itself.
        let mut agent = Command::new("sh")
            .args([
                "-c",
                &format!("umask {umask} && exec \"$0\" --config \"$1\""),
            ])
            .arg(env!("CARGO_BIN_EXE_node-agent"))
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_socket(&socket);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
        let killed = Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status();
        let exited = agent.wait().unwrap();
        assert_eq!(mode, 0o660, "umask {umask}: socket mode {mode:04o}");
        assert!(
            killed.unwrap().success() && exited.code() == Some(0),
            "{exited:?}"
        );
    }
}
