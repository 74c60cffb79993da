//! The real thing, end to end: the Debian package installed on a node with a real systemd and a
//! real systemd-logind (an unprivileged container of a debootstrap root, `tests/systemd-node.sh`),
//! the real unit started with `systemctl`, and `systemctl poweroff`: the drop-in raised logind's
//! cap, the service user holds the delay lock, the poweroff drains with every final record at a
//! control plane on the host's loopback, the node powers off once the lock is released, and the
//! next boot brings the apps back.
//!
//! Runs under `CI=true` or `NODE_AGENT_SYSTEMD_TESTS=1` (it makes a Debian root the first time,
//! a few minutes, kept under `target/systemd-node/`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::package::{build, run};
use crate::support::receiver::Receiver;
use crate::support::{Client, REPORT_TOKEN, TEST_LABEL, Workload, app_id, unique};

const TOKEN: &str = "e2e-operator-token-5f0c0a6b2f8e4d1c";
const NODE_ID: &str = "60c72b2f9b1e8d001c8e4f3c";
const GRACE: u64 = 4;
const REPORT: u64 = 3;

fn allowed() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NODE_AGENT_SYSTEMD_TESTS").is_ok_and(|v| v == "1")
}

/// Runs `program`, fails unless it succeeds, and returns its standard output alone.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node: a container running systemd as PID 1, removed (by name) when dropped.
struct Node {
    name: String,
}

impl Node {
    fn boot(image: &str) -> Node {
        let name = unique("na-node");
        ok(
            "docker",
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                &format!("{TEST_LABEL}=1"),
                "-e",
                "container=docker",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "--tmpfs",
                "/tmp",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:ro",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "--network",
                "host",
                image,
                "/lib/systemd/systemd",
            ],
        );
        let node = Node { name };
        node.wait_booted();
        node
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend(args);
        ok("docker", &all)
    }

    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = run(
                "docker",
                &["exec", &self.name, "systemctl", "is-system-running"],
            );
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(Instant::now() < deadline, "the node did not boot: {state}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn running(&self) -> bool {
        ok(
            "docker",
            &["inspect", "-f", "{{.State.Running}}", &self.name],
        )
        .trim()
            == "true"
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.name]);
    }
}

async fn wait_for<T>(what: &str, within: Duration, mut found: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(it) = found().await {
            return it;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_poweroff_drains_reports_and_the_boot_brings_the_apps_back() {
    if !allowed() {
        eprintln!(
            "NOT RUN: the node test boots systemd in a container and installs the package there; \
             set CI=true or NODE_AGENT_SYSTEMD_TESTS=1 to run it"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd-node.sh");
    let image = ok("bash", &[script, "image"]).trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let deb = build(dir.path(), "0.1.0-1");
    let receiver = Receiver::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    let node = Node::boot(&image);
    // The engine's socket belongs to the host's docker group: the node's has its id.
    let gid = ok("stat", &["-c", "%g", "/var/run/docker.sock"]);
    node.exec(&["groupadd", "-g", gid.trim(), "docker"]);
    ok(
        "docker",
        &[
            "cp",
            deb.to_str().unwrap(),
            &format!("{}:/root/node-agent.deb", node.name),
        ],
    );
    node.exec(&["dpkg", "-i", "/root/node-agent.deb"]);
    // The drop-in raised logind's cap (the package told logind to read it again).
    let cap = node.exec(&[
        "busctl",
        "get-property",
        "org.freedesktop.login1",
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "InhibitDelayMaxUSec",
    ]);
    assert_eq!(cap.trim(), "t 45000000", "logind's cap");

    // The node's configuration, as an operator sets it.
    let config = "/etc/node-agent/node-agent.toml";
    node.exec(&[
        "sed",
        "-i",
        &format!(
            "s/\"unset-node-id\"/\"{NODE_ID}\"/; s/\"unset-node-name\"/\"E2E\"/; \
             s/^listen = .*/listen = \"127.0.0.1:{port}\"/; s/^grace_secs = .*/grace_secs = {GRACE}/; \
             s/^report_secs = .*/report_secs = {REPORT}/"
        ),
        config,
    ]);
    node.exec(&[
        "sh",
        "-c",
        &format!(
            "printf '\\n[report]\\nurl = \"{}\"\\ntoken_file = \"/etc/node-agent/report-token\"\\n' >> {config} && \
             printf '%s\\n' '{REPORT_TOKEN}' > /etc/node-agent/report-token && \
             printf '[[token]]\\nname = \"e2e\"\\nsha256 = \"%s\"\\nrole = \"operator\"\\n' \
               $(printf %s '{TOKEN}' | sha256sum | cut -d' ' -f1) > /etc/node-agent/tokens.toml && \
             chown root:node-agent /etc/node-agent/report-token /etc/node-agent/tokens.toml && \
             chmod 640 /etc/node-agent/report-token /etc/node-agent/tokens.toml && \
             systemctl enable --now node-agent",
            receiver.url()
        ),
    ]);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
        token: TOKEN.to_owned(),
    };
    wait_for("the agent serving", Duration::from_secs(60), async || {
        client
            .http
            .get(client.url("/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    // The service user holds the delay lock.
    wait_for("the lock held", Duration::from_secs(30), async || {
        let list = node.exec(&["systemd-inhibit", "--list", "--no-pager"]);
        list.lines()
            .any(|l| l.contains("node-agent") && l.contains("shutdown") && l.contains("delay"))
            .then_some(())
    })
    .await;
    let shutdown = client.get("/v1/node").await.body["shutdown"].clone();
    assert_eq!(shutdown["lockHeld"], true, "{shutdown:#}");
    assert_eq!(shutdown["cutShort"], false, "{shutdown:#}");

    // Apps on the host's engine, one ignoring SIGTERM.
    let mut apps: Vec<(Workload, String)> = Vec::new();
    for mode in ["exit", "exit", "ignore"] {
        let w = Workload::start(mode).await;
        let id = app_id();
        client.register(&id, &w.name).await;
        apps.push((w, id));
    }

    // The poweroff: the node goes once the lock is released.
    let began = Instant::now();
    node.exec(&["systemctl", "poweroff"]);
    wait_for(
        "the node powered off",
        Duration::from_secs(90),
        async || (!node.running()).then_some(()),
    )
    .await;
    let off = Instant::now();
    eprintln!("poweroff took {:?}", off - began);
    for (w, id) in &apps {
        assert!(!w.running().await, "{id} still runs after the poweroff");
        let last = receiver
            .latest_by(id, off)
            .unwrap_or_else(|| panic!("{id}: nothing reported before the power went"));
        let r = &last["record"];
        assert_eq!(
            r["currentResourceMetrics"]["online"], false,
            "{id}: {last:#}"
        );
        assert_eq!(r["lastStop"]["reason"], "node-shutdown", "{id}: {last:#}");
    }

    // The boot: the apps come back, started by the agent.
    ok("docker", &["start", &node.name]);
    for (w, id) in &apps {
        wait_for(
            &format!("{id} started again at boot"),
            Duration::from_secs(90),
            async || {
                let r = client
                    .http
                    .get(client.url(&format!("/v1/apps/{id}")))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()?;
                (r["lastStart"]["reason"] == "node-boot" && r["lastStart"]["outcome"] == "started")
                    .then_some(())
            },
        )
        .await;
        assert!(w.running().await, "{id}");
    }
    // How the shutdown went was kept through the power-off, and the lock is held again.
    let shutdown = client.get("/v1/node").await.body["shutdown"].clone();
    assert_eq!(shutdown["last"]["stopped"], 3, "{shutdown:#}");
    wait_for(
        "the lock held again after the boot",
        Duration::from_secs(30),
        async || (client.get("/v1/node").await.body["shutdown"]["lockHeld"] == true).then_some(()),
    )
    .await;
}
