//! The node's shutdown through a fake systemd-logind on a private bus: the delay lock held, every
//! app stopped and its final record at the control plane before the lock is released (even with
//! apps that ignore SIGTERM and a control plane that hangs), a cancelled shutdown, logind's cap
//! below the budget, no bus at all, and the boot after the power-off.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::logind::FakeLogind;
use crate::support::receiver::{Mode, Receiver};
use crate::support::{AgentOptions, AgentProcess, Client, Workload};

const GRACE: u64 = 3;
const REPORT: u64 = 2;

fn options(logind: &FakeLogind, receiver: &Receiver) -> AgentOptions {
    AgentOptions {
        report_url: Some(receiver.url()),
        env: vec![("DBUS_SYSTEM_BUS_ADDRESS".to_owned(), logind.address.clone())],
        shutdown: Some(format!(
            "inhibit = true\ngrace_secs = {GRACE}\nreport_secs = {REPORT}\n"
        )),
        ..Default::default()
    }
}

async fn node(client: &Client) -> Value {
    let a = client.get("/v1/node").await;
    assert_eq!(a.status, 200, "{a:?}");
    a.body
}

async fn record(client: &Client, id: &str) -> Value {
    client.get(&format!("/v1/apps/{id}")).await.body
}

/// Waits until `/v1/node` says the lock is held.
async fn wait_lock_reported(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node(client).await["shutdown"]["lockHeld"] != true {
        assert!(Instant::now() < deadline, "{:#}", node(client).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the fake sees the lock released; when.
async fn wait_released(logind: &FakeLogind, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if let Some(released) = logind.locks().iter().filter_map(|l| l.released).max()
            && logind.held().is_empty()
        {
            return released;
        }
        assert!(
            Instant::now() < deadline,
            "the lock was not released within {within:?}: {:?}",
            logind.locks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// No child of the agent could hold the lock: the agent's descriptors of the lock's pipe are
/// close-on-exec (`/proc/<pid>/fdinfo`).
fn assert_lock_not_inherited(pid: u32, lock: &str) {
    const O_CLOEXEC: u32 = 0o2000000;
    let mut copies = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.display().to_string() != lock {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        assert!(
            flags & O_CLOEXEC != 0,
            "the lock (fd {fd}, {lock}) would be inherited by the agent's children: {info}"
        );
        copies += 1;
    }
    assert_eq!(
        copies, 1,
        "the agent holds {copies} descriptors of the lock {lock}"
    );
}

/// Announces the node's shutdown, and waits until the lock is released, within the budget (and a
/// margin for a loaded machine); when.
async fn shut_down(logind: &FakeLogind) -> Instant {
    let began = Instant::now();
    logind.prepare_for_shutdown(true).await;
    let released = wait_released(logind, Duration::from_secs(GRACE + REPORT + 10)).await;
    let took = released - began;
    assert!(
        took <= Duration::from_secs(GRACE + REPORT + 3),
        "the lock was held {took:?}, past the budget of {} s",
        GRACE + REPORT
    );
    released
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutdown_drains_reports_and_only_then_lets_go_and_the_boot_brings_back_its_apps() {
    let logind = FakeLogind::start(Duration::from_secs(60)).await;
    let receiver = Receiver::start().await;
    let mut agent = AgentProcess::start_with(options(&logind, &receiver));
    let client = agent.client();
    let modes = ["exit", "exit", "exit", "ignore", "ignore"];
    let made = modes.iter().map(|m| client.running_app(m));
    let apps: Vec<(Workload, String)> = futures_util::future::join_all(made).await;
    // One app a user stopped before the shutdown: it stays stopped after the boot.
    let (user_stopped, user_stopped_id) = client.running_app("exit").await;
    assert_eq!(client.stop(&user_stopped_id).await.status, 200);

    logind.wait_held(1, Duration::from_secs(30)).await;
    let lock = &logind.locks()[0];
    assert_eq!(
        (lock.what.as_str(), lock.mode.as_str()),
        ("shutdown", "delay")
    );
    wait_lock_reported(&client).await;
    assert_lock_not_inherited(agent.pid(), &lock.pipe);
    let shutdown = &node(&client).await["shutdown"];
    assert_eq!(shutdown["budgetSecs"], GRACE + REPORT, "{shutdown:#}");
    assert_eq!(shutdown["cutShort"], false, "{shutdown:#}");

    let released = shut_down(&logind).await;
    // Every app was down, and its final record acknowledged by the control plane, before the
    // lock was released.
    for (w, id) in &apps {
        assert!(!w.running().await, "{id} still runs");
        let last = receiver
            .latest_by(id, released)
            .unwrap_or_else(|| panic!("{id}: nothing reported before the release"));
        let r = &last["record"];
        assert_eq!(
            r["currentResourceMetrics"]["online"], false,
            "{id}: {last:#}"
        );
        assert_eq!(r["lastStop"]["reason"], "node-shutdown", "{id}: {last:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{id}: {last:#}");
        // The control plane had the shutdown's events too before the power went.
        let delivered: Vec<Value> = receiver
            .reports()
            .iter()
            .filter(|r| r.acknowledged() && r.at <= released)
            .flat_map(|r| r.changes())
            .filter(|(app, _, _)| app == id)
            .flat_map(|(_, _, c)| c["events"].as_array().cloned().unwrap_or_default())
            .collect();
        let kinds: Vec<&str> = delivered
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        let asked = kinds.iter().position(|k| *k == "node_shutdown");
        let ended = kinds.iter().rposition(|k| *k == "stopped");
        assert!(
            matches!((asked, ended), (Some(a), Some(e)) if a < e),
            "{id}: {kinds:?}"
        );
    }
    let n = node(&client).await;
    assert_eq!(n["drain"]["reason"], "node-shutdown", "{n:#}");
    assert_eq!(n["drain"]["apps"]["killedAtDeadline"], 2, "{n:#}");
    assert_eq!(n["shutdown"]["lockHeld"], false, "{n:#}");
    assert_eq!(n["shutdown"]["last"]["stopped"], 5, "{n:#}");
    assert_eq!(n["shutdown"]["last"]["killedAtDeadline"], 2, "{n:#}");
    let last = n["shutdown"]["last"].clone();
    let metrics = client.metrics_text().await;
    assert!(
        metrics.contains("node_agent_shutdown_apps{outcome=\"stopped\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("node_agent_shutdown_lock_held 0"),
        "{metrics}"
    );

    // The power goes: the agent dies as it is, and the boot starts it again.
    agent.kill9();
    logind.rebooted();
    agent.restart();
    let client = agent.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (w, id) in &apps {
        while !w.running().await {
            assert!(
                Instant::now() < deadline,
                "{id} was not started again at boot"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut r = record(&client, id).await;
        while r["lastStart"]["outcome"] != "started" {
            assert!(Instant::now() < deadline, "{id}: {r:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = record(&client, id).await;
        }
        assert_eq!(r["lastStart"]["reason"], "node-boot", "{r:#}");
        assert_eq!(r["currentResourceMetrics"]["online"], true, "{r:#}");
        let h = client.get(&format!("/v1/apps/{id}/events?limit=2")).await;
        let h = h.body["events"].as_array().unwrap();
        assert_eq!(h[1]["type"], "resumed", "{id}: {h:#?}");
        assert_eq!(h[1]["details"]["reason"], "node-boot", "{id}: {h:#?}");
        assert_eq!(h[0]["type"], "started", "{id}: {h:#?}");
    }
    assert!(
        !user_stopped.running().await,
        "the app a user stopped came back at boot"
    );
    let n = node(&client).await;
    assert_eq!(n["drain"]["state"], "ended", "{n:#}");
    assert_eq!(n["drain"]["endedBy"], "node-boot", "{n:#}");
    // How the shutdown went is still there after the boot.
    assert_eq!(n["shutdown"]["last"], last, "{n:#}");
    let metrics = client.metrics_text().await;
    assert!(
        metrics.contains("node_agent_shutdown_apps{outcome=\"stopped\"} 5")
            && metrics.contains("node_agent_shutdown_apps{outcome=\"killed_at_deadline\"} 2"),
        "{metrics}"
    );
    let began = chrono::DateTime::parse_from_rfc3339(last["beganAt"].as_str().unwrap()).unwrap();
    let shown = client
        .metric("node_agent_shutdown_last_timestamp_seconds")
        .await;
    assert!(
        (shown - began.timestamp_millis() as f64 / 1000.0).abs() < 0.001,
        "{shown} against {began}"
    );
    // Starts are allowed again; nothing was started twice.
    let restarts: Vec<i64> = futures_util::future::join_all(
        apps.iter()
            .map(|(w, _)| async { w.inspect().await.unwrap().restart_count.unwrap_or(0) }),
    )
    .await;
    assert!(restarts.iter().all(|c| *c == 0), "{restarts:?}");
    logind.wait_held(1, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_goes_within_the_budget_when_the_control_plane_hangs_and_a_cancel_takes_it_again()
{
    // logind's cap below the budget: said, and the drain still runs.
    let logind = FakeLogind::start(Duration::from_secs(2)).await;
    let receiver = Receiver::start().await;
    let agent = AgentProcess::start_with(options(&logind, &receiver));
    let client = agent.client();
    let (ignoring, id) = client.running_app("ignore").await;
    logind.wait_held(1, Duration::from_secs(30)).await;
    wait_lock_reported(&client).await;
    let n = node(&client).await;
    assert_eq!(n["shutdown"]["cutShort"], true, "{n:#}");
    assert_eq!(n["shutdown"]["delayMaxSecs"], 2.0, "{n:#}");
    assert!(
        client
            .metrics_text()
            .await
            .contains("node_agent_shutdown_budget_cut_short 1")
    );
    assert!(
        !agent
            .logged(&["logind will cut the shutdown drain short"])
            .is_empty()
    );
    // check-config says so too, and still passes the file.
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["check-config", "--config"])
        .arg(agent.config_path())
        .env("DBUS_SYSTEM_BUS_ADDRESS", &logind.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("will cut the shutdown drain short"),
        "{stderr}"
    );

    receiver.set_mode(Mode::Hang);
    shut_down(&logind).await;
    assert!(!ignoring.running().await);

    // The shutdown is cancelled: the lock is taken again, and the node stays drained.
    logind.prepare_for_shutdown(false).await;
    logind.wait_held(1, Duration::from_secs(30)).await;
    assert_eq!(logind.locks().len(), 2);
    let n = node(&client).await;
    assert_eq!(n["drain"]["state"], "drained", "{n:#}");
    let a = client.start(&id).await;
    assert_eq!(
        (a.status, &a.body["error"]),
        (409, &Value::from("node_draining")),
        "{a:?}"
    );
    receiver.set_mode(Mode::Accept);
}

#[tokio::test]
async fn without_a_system_bus_the_agent_serves_and_says_why_it_holds_no_lock() {
    let agent = AgentProcess::start_with(AgentOptions {
        env: vec![(
            "DBUS_SYSTEM_BUS_ADDRESS".to_owned(),
            "unix:path=/nonexistent/system_bus_socket".to_owned(),
        )],
        shutdown: Some("inhibit = true\n".to_owned()),
        ..Default::default()
    });
    let client = agent.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shutdown = node(&client).await["shutdown"].clone();
        if shutdown["lockError"].is_string() {
            assert_eq!(shutdown["lockHeld"], false, "{shutdown:#}");
            assert_eq!(shutdown["inhibit"], true, "{shutdown:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{shutdown:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.get("/healthz").await.status, 200);
}
