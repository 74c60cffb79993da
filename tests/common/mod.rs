//! Test harness: the real agent binary on a free loopback port, a workload image built from a static
//! binary compiled here, and labelled containers that are removed when a test ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod guard;
pub mod held;
pub mod pki;
pub mod receiver;
pub mod team;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// How long a test waits for the agent to do what it should do at once, on a slow, shared machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The label every test container carries; tests remove only containers they created.
pub const TEST_LABEL: &str = "node-agent-test";
pub const NODE_ID: &str = "node-test-0001";
pub const NODE_NAME: &str = "TESTNODE";

static DOCKER: OnceCell<Docker> = OnceCell::const_new();
static IMAGE: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The engine's socket: `DOCKER_HOST` when it names a Unix socket (the extra engines of
/// `tests/engines.sh`), else the machine's own engine.
pub fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// The local Docker engine. Fails the test with a clear message when none answers.
pub async fn docker() -> Docker {
    DOCKER
        .get_or_init(|| async {
            let docker = Docker::connect_with_local_defaults()
                .map(|d| d.with_timeout(Duration::from_secs(60)))
                .unwrap_or_else(|e| panic!("these tests need a Docker engine at {} (DOCKER_HOST picks another); `bash .ci/run` starts one: {e}", engine_socket().display()));
            docker.negotiate_version().await.unwrap_or_else(|e| panic!(
                "no Docker engine answers at {}; these tests drive the real engine. Start one (`bash .ci/run` does): {e}", engine_socket().display()
            ))
        })
        .await
        .clone()
}

/// Whether the engine under test is Podman's Docker-compatible service.
pub async fn engine_is_podman() -> bool {
    docker()
        .await
        .version()
        .await
        .expect("the engine's version")
        .components
        .iter()
        .flatten()
        .any(|c| c.name.contains("Podman"))
}

/// What a stop records of a restart policy it set aside: the policy's name on Docker; nothing on
/// Podman, which keeps the policy (it never restarts a container stopped through its API, and its
/// Docker API cannot change one).
pub async fn set_aside(policy: &str) -> Value {
    if engine_is_podman().await {
        Value::Null
    } else {
        Value::from(policy)
    }
}

/// The restart policy a container stopped by the agent has: `no` on Docker, its own on Podman.
pub async fn policy_while_stopped(
    policy: bollard::models::RestartPolicyNameEnum,
) -> bollard::models::RestartPolicyNameEnum {
    if engine_is_podman().await {
        policy
    } else {
        bollard::models::RestartPolicyNameEnum::NO
    }
}

/// The workload image, built once per test binary: `tests/workload/workload.c` compiled with
/// `gcc -static` and imported as a one-file image.
pub async fn workload_image() -> String {
    IMAGE
        .get_or_init(|| async {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workload/workload.c");
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("workload"));
            std::fs::create_dir_all(&out_dir).unwrap();
            let bin = out_dir.join("workload");
            let status = Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .expect("gcc is needed to build the test workload (apt-get install gcc libc6-dev)");
            assert!(status.success(), "gcc -static failed on {}", src.display());
            let bytes = std::fs::read(&bin).unwrap();
            let tag = hex::encode(&Sha256::digest(&bytes)[..6]);
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            tar.append_data(&mut header, "workload", bytes.as_slice())
                .unwrap();
            let archive = tar.into_inner().unwrap();
            let docker = docker().await;
            // Fully qualified, and the tag given inside `repo`: Podman's import keeps only that
            // form, and Docker takes it too.
            let image = format!("localhost/node-agent-test-workload:{tag}");
            // The tag is the binary's hash: an image with it already holds this very workload.
            if docker.inspect_image(&image).await.is_ok() {
                let _ = std::fs::remove_dir_all(&out_dir);
                return image;
            }
            let options = CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(image.clone()),
                ..Default::default()
            };
            let mut progress = docker.create_image(
                Some(options),
                Some(bollard::body_full(archive.into())),
                None,
            );
            while let Some(step) = progress.next().await {
                step.expect("docker import of the workload image failed");
            }
            let _ = std::fs::remove_dir_all(&out_dir);
            image
        })
        .await
        .clone()
}

/// A labelled test container running the workload; removed (force) when dropped.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
}

impl Workload {
    /// Starts a container running `workload MODE [ALLOC_MB]`.
    pub async fn start(mode: &str) -> Workload {
        Self::start_with(mode, |_| {}).await
    }

    pub async fn start_with(mode: &str, tweak: impl FnOnce(&mut ContainerCreateBody)) -> Workload {
        let docker = docker().await;
        let name = unique("na-test");
        let mut body = ContainerCreateBody {
            image: Some(workload_image().await),
            cmd: Some(vec!["/workload".into(), mode.into(), "4".into()]),
            labels: Some([(TEST_LABEL.to_owned(), "1".to_owned())].into()),
            // Docker's own default, given explicitly: Podman records a container created through
            // its Docker API without one as `StopTimeout: 0`, and would kill it at once.
            stop_timeout: Some(10),
            host_config: Some(HostConfig {
                memory: Some(64 * 1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        };
        tweak(&mut body);
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("create test container");
        let w = Workload { name };
        docker
            .start_container(&w.name, None::<StartContainerOptions>)
            .await
            .expect("start test container");
        w.wait_ready().await;
        w
    }

    /// Waits until the workload has installed its signal handlers (it prints "ready").
    async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.logs().await.contains("ready") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("workload {} never said ready", self.name);
    }

    /// Waits until the workload has logged `needle`, failing after `within`.
    pub async fn wait_logs(&self, needle: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.logs().await.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "workload {} did not log {needle:?} within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn logs(&self) -> String {
        let docker = docker().await;
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = docker.logs(&self.name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    pub async fn inspect(&self) -> Option<bollard::models::ContainerInspectResponse> {
        docker()
            .await
            .inspect_container(&self.name, None::<InspectContainerOptions>)
            .await
            .ok()
    }

    pub async fn running(&self) -> bool {
        self.inspect()
            .await
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    pub async fn exit_code(&self) -> Option<i64> {
        self.inspect()
            .await
            .and_then(|c| c.state)
            .and_then(|s| s.exit_code)
    }

    /// `docker stop`, as a person would, behind the agent's back.
    pub async fn stop_by_hand(&self) {
        docker()
            .await
            .stop_container(
                &self.name,
                None::<bollard::query_parameters::StopContainerOptions>,
            )
            .await
            .expect("docker stop");
    }

    /// `docker start`, as a person would, behind the agent's back.
    pub async fn start_by_hand(&self) {
        docker()
            .await
            .start_container(&self.name, None::<StartContainerOptions>)
            .await
            .expect("docker start");
    }

    /// Removes the container now.
    pub async fn remove(&self) {
        let _ = docker()
            .await
            .remove_container(
                &self.name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Drop cannot await: remove the container from a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(d) = Docker::connect_with_local_defaults() {
                    let _ = d
                        .remove_container(
                            &name,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

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
}

/// The bearer token an agent under test sends with its reports.
pub const REPORT_TOKEN: &str = "report-token-for-tests";

/// Polls `found` until it finds something, failing after [`PATIENCE`] with `failure`'s words.
fn patiently<T>(mut found: impl FnMut() -> Option<T>, failure: impl FnOnce() -> String) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(it) = found() {
            return it;
        }
        if start.elapsed() >= PATIENCE {
            panic!("{} (waited {PATIENCE:?})", failure());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

pub const OPERATOR_TOKEN_NAME: &str = "test-operator";

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
        let mut http = String::new();
        if let Some(n) = options.max_connections {
            http.push_str(&format!("max_connections = {n}\n"));
        }
        if let Some(t) = options.header_timeout_secs {
            http.push_str(&format!("header_timeout_secs = {t}\n"));
        }
        http.push_str(&options.http_extra);
        let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
        let mut config = format!(
            "[node]\nid = \"{NODE_ID}\"\nname = \"{NODE_NAME}\"\n\n[http]\nlisten = \"{listen}\"\n{http}\n[store]\npath = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n{}",
            dir.path().join("state/node-agent.db").display(),
            dir.path().join("tokens.toml").display(),
            options.auth_extra,
        );
        if let Some(host) = &options.docker_host {
            config.push_str(&format!("\n[docker]\nhost = \"{host}\"\n"));
        }
        let mut stop = String::new();
        if let Some(t) = options.default_timeout {
            stop.push_str(&format!("default_timeout_secs = {t}\n"));
        }
        if let Some(t) = options.shutdown_drain_secs {
            stop.push_str(&format!("shutdown_drain_secs = {t}\n"));
        }
        if !stop.is_empty() {
            config.push_str(&format!("\n[stop]\n{stop}"));
        }
        if let Some(url) = &options.report_url {
            let token = dir.path().join("report-token");
            write_private(&token, &format!("{REPORT_TOKEN}\n"));
            config.push_str(&format!(
                "\n[report]\nurl = \"{url}\"\ntoken_file = \"{}\"\n",
                token.display()
            ));
            if let Some(secs) = options.report_resync_secs {
                config.push_str(&format!("resync_secs = {secs}\n"));
            }
            if let Some(ca) = &options.report_ca_file {
                config.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
            }
            if let Some((cert, key)) = &options.report_identity {
                config.push_str(&format!(
                    "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                    cert.display(),
                    key.display()
                ));
            }
        }
        config.push('\n');
        config.push_str(&options.extra_config);
        std::fs::write(dir.path().join("node-agent.toml"), config).unwrap();
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept before it is echoed: the echo may block on a slow terminal or pipe.
                log.lock().unwrap().push(line.clone());
                eprintln!("[agent] {line}");
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

/// Writes a tokens file: (name, token, role, user_id).
pub fn write_tokens(path: &Path, tokens: &[(&str, &str, &str, Option<&str>)]) {
    let mut text = String::new();
    for (name, token, role, user) in tokens {
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            hex::encode(Sha256::digest(token.as_bytes()))
        ));
        if let Some(u) = user {
            text.push_str(&format!("user_id = \"{u}\"\n"));
        }
    }
    write_private(path, &text);
}

/// Writes `text` to a file only its owner may read (mode 0600).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// An HTTP client for one agent, authenticated as its operator.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// A status code and the JSON body (Null when the body is empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request to the agent failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text:?}"))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Registers app `id` for container `container`.
    pub async fn register(&self, id: &str, container: &str) -> Answer {
        self.register_body(id, app_body(id, container)).await
    }

    /// A running workload container (`workload MODE`) registered as a fresh app.
    pub async fn running_app(&self, mode: &str) -> (Workload, String) {
        let w = Workload::start(mode).await;
        let id = app_id();
        self.register(&id, &w.name).await;
        (w, id)
    }

    pub async fn register_body(&self, id: &str, body: Value) -> Answer {
        let a = self
            .send(
                self.authed(reqwest::Method::PUT, &format!("/v1/apps/{id}"))
                    .json(&body),
            )
            .await;
        assert!(matches!(a.status, 200 | 201), "register {id}: {a:?}");
        a
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.authed(reqwest::Method::GET, path)).await
    }

    /// `POST /v1/apps/{id}/stop` exactly as the CamposCloud SDK sends it: JSON content type, no body.
    pub async fn stop(&self, id: &str) -> Answer {
        self.stop_query(id, "").await
    }

    pub async fn stop_query(&self, id: &str, query: &str) -> Answer {
        self.operate(id, "stop", query).await
    }

    pub async fn stop_body(&self, id: &str, body: Value) -> Answer {
        self.send(
            self.authed(reqwest::Method::POST, &format!("/v1/apps/{id}/stop"))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/apps/{id}/start` exactly as the CamposCloud SDK sends it: JSON content type, no body.
    pub async fn start(&self, id: &str) -> Answer {
        self.operate(id, "start", "").await
    }

    /// `POST /v1/apps/{id}/restart` exactly as the CamposCloud SDK sends it.
    pub async fn restart(&self, id: &str) -> Answer {
        self.operate(id, "restart", "").await
    }

    /// `DELETE /v1/apps/{id}`.
    pub async fn delete(&self, id: &str) -> Answer {
        self.send(self.authed(reqwest::Method::DELETE, &format!("/v1/apps/{id}")))
            .await
    }

    /// The `/metrics` text, read as the operator.
    pub async fn metrics_text(&self) -> String {
        self.authed(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `POST /api/apps/{id}/{verb}/` as ~okeanos clients send it (`verb` is stop or start), with
    /// this node's instance id and the `Token` scheme.
    pub async fn okeanos(&self, id: &str, verb: &str) -> Answer {
        self.send(
            self.http
                .post(self.url(&format!(
                    "/api/apps/{id}/{verb}/?lambda_instance_id={NODE_ID}"
                )))
                .header("Authorization", format!("Token {}", self.token)),
        )
        .await
    }

    /// `POST /v1/apps/{id}/{verb}{query}` as the SDK sends it (`verb` is stop, start or restart).
    pub async fn operate(&self, id: &str, verb: &str, query: &str) -> Answer {
        self.send(
            self.authed(
                reqwest::Method::POST,
                &format!("/v1/apps/{id}/{verb}{query}"),
            )
            .header("Content-Type", "application/json"),
        )
        .await
    }
}

/// A registration body in the CamposCloud record shape.
pub fn app_body(id: &str, container: &str) -> Value {
    json!({
        "_id": id,
        "containerId": container,
        "teamId": null,
        "restartRequired": false,
        "userId": "60c72b2f9b1e8d001c8e4f3a",
        "name": format!("app {id}"),
        "allocatedMemoryMB": 64,
        "allocatedVCpu": 1,
        "containerImage": "node-agent-test-workload",
        "exposedViaWeb": false,
        "internalPort": 3000,
        "assignedSubdomain": null,
        "startupCommand": "/workload",
        "installDependenciesCmd": null,
        "runtimeEnvironment": "static",
        "autoRestartEnabled": false,
        "status": "active",
        "createdAt": "2025-07-19T00:02:54.455Z",
        "githubDeploys": [],
        "externalPort": null,
        "repository": null,
        "environmentVariables": [{"key": "API_PORT", "value": "3005", "_id": "e1"}],
    })
}

/// The record of `id` as stored, from the list, which does not look at the container.
pub async fn stored(client: &Client, id: &str) -> Value {
    let list = client.get("/v1/apps?limit=500").await;
    assert_eq!(list.status, 200, "{list:?}");
    list.body["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {list:?}"))
}

/// A fresh app id.
pub fn app_id() -> String {
    unique("app")
}

/// A Unix-socket stand-in for the engine's socket, which a test can close, reopen, or make hang,
/// without touching the real daemon: it forwards to [`engine_socket`].
#[derive(Debug)]
pub struct EngineProxy {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// What the proxy does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the real engine.
    Forward,
    /// Accept, then never answer: an engine that hangs.
    Hang,
}

impl EngineProxy {
    /// A proxy that is not listening yet.
    pub fn closed() -> EngineProxy {
        let dir = tempfile::tempdir().unwrap();
        EngineProxy {
            path: dir.path().join("engine.sock"),
            _dir: dir,
            tasks: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Starts listening.
    pub fn open(&self, mode: ProxyMode) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    match mode {
                        ProxyMode::Forward => {
                            if let Ok(mut engine) =
                                tokio::net::UnixStream::connect(engine_socket()).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                            }
                        }
                        ProxyMode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(client);
                        }
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Stops listening and cuts every connection, as an engine that went away.
    pub fn close(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sends raw bytes to `base` (http://host:port) and reads the answer until the server closes;
/// returns the status and the body.
pub async fn raw_http(base: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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

/// The operator token of [`write_config`]'s tokens file.
pub const STANDALONE_TOKEN: &str = "standalone-operator-token";

/// A configuration file in `dir` listening on `listen`, with a tokens file of its own (one operator,
/// [`STANDALONE_TOKEN`]), more `[http]` lines and more sections; for runs outside [`AgentProcess`].
pub fn write_config(dir: &Path, listen: &str, http_extra: &str, extra: &str) -> PathBuf {
    let tokens = dir.join("tokens.toml");
    write_tokens(
        &tokens,
        &[(OPERATOR_TOKEN_NAME, STANDALONE_TOKEN, "operator", None)],
    );
    let config = format!(
        "[node]\nid = \"{NODE_ID}\"\nname = \"{NODE_NAME}\"\n\n[http]\nlisten = \"{listen}\"\n{http_extra}\n\
         [store]\npath = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n\n{extra}",
        dir.join("state/node-agent.db").display(),
        tokens.display(),
    );
    let path = dir.join("node-agent.toml");
    std::fs::write(&path, config).unwrap();
    path
}
