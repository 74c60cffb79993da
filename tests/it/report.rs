//! Reports to the control plane, on the real agent and engine, with a receiver started here: every
//! change arrives, in generation order per app, from every source; a receiver that fails, is down,
//! refuses or hangs loses nothing and holds nothing up; `kill -9` loses nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::config::path_str;
use crate::support::pki::{Ca, Files, server_requiring_clients_of};
use crate::support::receiver::{Mode, Receiver};
use crate::support::record::generation;
use crate::support::{AgentOptions, AgentProcess, Client, REPORT_TOKEN, Workload};
use serde_json::Value;

/// An agent that reports to `receiver`.
fn reporting_agent(receiver: &Receiver, resync_secs: Option<u64>) -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        report_url: Some(receiver.url()),
        report_resync_secs: resync_secs,
        ..Default::default()
    })
}

/// The record in a change; `Null` for a deletion.
fn record(change: &Value) -> &Value {
    &change["record"]
}

/// Waits until the agent's `/metrics` says `series` is at least `at_least`.
async fn wait_metric(client: &Client, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let v = client.metric(series).await;
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The records the agent holds: (id, generation).
async fn stored_generations(client: &Client) -> Vec<(String, u64)> {
    let list = client.get("/v1/apps?limit=500").await;
    list.body["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["_id"].as_str().unwrap().to_owned(),
                r["generation"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until the receiver's latest acknowledged change of every record the agent holds is that
/// record, at its generation.
async fn wait_converged(receiver: &Receiver, client: &Client) {
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let held = stored_generations(client).await;
        let behind: Vec<_> = held
            .iter()
            .filter(|(id, g)| receiver.latest(id).map(|(got, _)| got) != Some(*g))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver lags on {behind:?}; it has {:?}",
            receiver
                .acknowledged()
                .iter()
                .map(|(a, g, _)| (a.clone(), *g))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A registration is committed with what the engine says of its container: the control plane
/// never hears of a running app as offline, not even for one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_reported_with_what_the_engine_says() {
    let receiver = Receiver::start().await;
    let agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let w = Workload::start("exit").await;
    let (a, b) = (support::app_id(), support::app_id());
    let ga = client.register(&a, &w.name).await;
    let gb = client.register(&b, &w.name).await;
    for answer in [&ga, &gb] {
        assert_eq!(answer.status, 201, "{answer:?}");
        assert_eq!(
            answer.body["currentResourceMetrics"]["online"], true,
            "{answer:?}"
        );
    }
    // One commit per registration: nothing was committed before the engine was asked.
    assert_eq!(generation(&gb), generation(&ga) + 1, "{ga:?} {gb:?}");
    wait_converged(&receiver, &client).await;
    for id in [&a, &b] {
        for (app, _, change) in receiver.acknowledged() {
            if &app == id {
                assert_eq!(
                    record(&change)["currentResourceMetrics"]["online"],
                    true,
                    "{change}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_every_source_arrive_in_generation_order() {
    let receiver = Receiver::start().await;
    let agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let w = Workload::start("exit").await;
    let id = support::app_id();

    // Registration.
    let g = generation(&client.register(&id, &w.name).await);
    let c = receiver.wait_change(&id, |got, _| got >= g).await;
    assert_eq!(record(&c)["containerId"], w.name.as_str(), "{c}");
    assert_eq!(record(&c)["_id"], id.as_str());
    let first = &receiver.reports()[0];
    assert_eq!(
        first.authorization.as_deref(),
        Some(format!("Bearer {REPORT_TOKEN}").as_str())
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.body["nodeId"], support::NODE_ID);
    assert_eq!(first.body["nodeName"], support::NODE_NAME);

    // A stop through /v1.
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    let g = generation(&stopped);
    let c = receiver.wait_change(&id, |got, _| got >= g).await;
    assert_eq!(record(&c)["currentResourceMetrics"]["online"], false, "{c}");
    assert_eq!(record(&c)["lastStop"]["outcome"], "stopped", "{c}");

    // A start.
    let started = client.start(&id).await;
    assert_eq!(started.status, 200, "{started:?}");
    let g = generation(&started);
    let c = receiver.wait_change(&id, |got, _| got >= g).await;
    assert_eq!(record(&c)["currentResourceMetrics"]["online"], true, "{c}");

    // A stop through ~okeanos, which answers before it is done: its end is reported by itself.
    assert_eq!(client.okeanos(&id, "stop").await.status, 202);
    let c = receiver
        .wait_change(&id, |got, c| {
            got > g && record(c)["lastStop"]["outcome"] == "stopped"
        })
        .await;
    assert_eq!(record(&c)["currentResourceMetrics"]["online"], false, "{c}");

    // A container killed behind the agent's back, seen through the engine's events.
    let started = client.start(&id).await;
    assert_eq!(started.status, 200, "{started:?}");
    let g = generation(&started);
    support::docker()
        .await
        .kill_container(
            &w.name,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let c = receiver
        .wait_change(&id, |got, c| {
            got > g && record(c)["currentResourceMetrics"]["online"] == false
        })
        .await;
    assert_eq!(record(&c)["lastExit"]["signal"], "SIGKILL", "{c}");

    // A deletion, as a tombstone.
    let deleted = client.delete(&id).await;
    assert_eq!(deleted.status, 204);
    let c = receiver.wait_change(&id, |_, c| c["deleted"] == true).await;
    assert!(c.get("record").is_none(), "{c}");

    receiver.assert_in_order();
    let all: Vec<u64> = receiver.acknowledged().iter().map(|(_, g, _)| *g).collect();
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_or_is_down_for_a_while_gets_everything_in_order() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Answer(503));
    let agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let mut apps = Vec::new();
    for _ in 0..4 {
        apps.push(client.running_app("exit").await);
    }
    assert_eq!(client.stop(&apps[0].1).await.status, 200);
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"retried\"}",
        2.0,
    )
    .await;

    // Down: connections refused.
    receiver.down();
    assert_eq!(client.stop(&apps[1].1).await.status, 200);
    assert_eq!(client.start(&apps[0].1).await.status, 200);
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"unreachable\"}",
        1.0,
    )
    .await;
    // Reads, readiness and the node report do not depend on the control plane.
    let ready = client.send(client.http.get(client.url("/readyz"))).await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(client.metric("node_agent_report_pending_changes").await >= 4.0);
    assert!(
        client
            .metric("node_agent_report_oldest_pending_age_seconds")
            .await
            > 0.0
    );
    let node = client.get("/v1/node").await;
    let report = &node.body["report"];
    assert_eq!(report["enabled"], true, "{node:?}");
    assert_eq!(
        report["host"],
        receiver.addr.to_string().as_str(),
        "{node:?}"
    );
    assert!(report["pending"].as_u64() >= Some(4), "{node:?}");
    assert!(report["lastError"].as_str().is_some(), "{node:?}");
    assert!(report["lastSuccessAt"].is_null(), "{node:?}");
    assert!(receiver.acknowledged().is_empty());

    // Back: everything arrives, and nothing older than what came before.
    receiver.up().await;
    receiver.set_mode(Mode::Accept);
    wait_converged(&receiver, &client).await;
    receiver.assert_in_order();
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"acknowledged\"}",
        1.0,
    )
    .await;
    let deadline = Instant::now() + support::PATIENCE;
    while client.metric("node_agent_report_pending_changes").await > 0.0 {
        assert!(Instant::now() < deadline, "changes stay pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = client.get("/v1/node").await;
    assert!(
        node.body["report"]["lastSuccessAt"].as_str().is_some(),
        "{node:?}"
    );
    assert_eq!(node.body["report"]["pending"], 0, "{node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_delays_a_stop() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Hang);
    let agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    // A report held for less than a few seconds: its sender waits up to 10 s for an answer.
    let held = receiver
        .wait(|| {
            receiver
                .held_since()
                .filter(|t| t.elapsed() < Duration::from_secs(3))
        })
        .await;
    let still_held = |at: Instant| {
        receiver
            .holds()
            .iter()
            .any(|h| h.opened == held && h.closed.is_none_or(|c| c > at))
    };

    // The stop answers while the report that went before it is still held.
    let stopped = client.stop(&id).await;
    let answered = Instant::now();
    assert_eq!(stopped.status, 200, "{stopped:?}");
    // A wait released by the stop, and a start, are not held either.
    let waited = client
        .get(&format!("/v1/apps/{id}/wait?online=false&timeout=5"))
        .await;
    assert_eq!(waited.status, 200, "{waited:?}");
    assert_eq!(client.start(&id).await.status, 200);
    let started = Instant::now();
    assert!(
        still_held(answered),
        "the report was no longer held when the stop answered"
    );
    assert!(
        still_held(started),
        "the report was no longer held when the start answered"
    );
    assert!(receiver.acknowledged().is_empty());

    // Once the receiver answers again, the latest state arrives.
    receiver.set_mode(Mode::Accept);
    wait_converged(&receiver, &client).await;
    receiver.assert_in_order();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_not_acknowledged_before_kill_9_are_sent_after_the_restart() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Answer(500));
    let mut agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let (_w1, a) = client.running_app("exit").await;
    let (_w2, b) = client.running_app("exit").await;
    let stopped = client.stop(&a).await;
    assert_eq!(stopped.status, 200);
    let deleted = client.delete(&b).await;
    assert_eq!(deleted.status, 204);
    receiver
        .wait(|| (receiver.reports().len() >= 2).then_some(()))
        .await;
    assert!(receiver.acknowledged().is_empty());

    agent.kill9();
    receiver.set_mode(Mode::Accept);
    agent.restart();
    let client = agent.client();
    let c = receiver
        .wait_change(&a, |g, _| g >= generation(&stopped))
        .await;
    assert_eq!(record(&c)["lastStop"]["outcome"], "stopped", "{c}");
    // The deletion too: its tombstone outlived the crash.
    receiver.wait_change(&b, |_, c| c["deleted"] == true).await;
    wait_converged(&receiver, &client).await;
    receiver.assert_in_order();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_report_does_not_block_later_changes_and_resync_converges() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Answer(400));
    let agent = reporting_agent(&receiver, Some(3));
    let client = agent.client();
    let w = Workload::start("exit").await;
    let a = support::app_id();
    let ga = generation(&client.register(&a, &w.name).await);
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"rejected\"}",
        1.0,
    )
    .await;
    assert!(
        client
            .metric("node_agent_reported_changes_total{outcome=\"rejected\"}")
            .await
            >= 1.0
    );
    assert!(
        agent
            .logged(&["report rejected"])
            .iter()
            .any(|l| l.contains("400")),
        "{}",
        agent.log_text()
    );

    // Later changes go on as usual.
    receiver.set_mode(Mode::Accept);
    let (_w2, b) = client.running_app("exit").await;
    receiver.wait_change(&b, |_, _| true).await;
    // The dropped state comes again with the next resync, unchanged.
    let c = receiver.wait_change(&a, |g, _| g == ga).await;
    assert_eq!(record(&c)["containerId"], w.name.as_str());
    // And every resync sends every record again.
    let seen = receiver
        .acknowledged()
        .iter()
        .filter(|(id, _, _)| *id == b)
        .count();
    receiver
        .wait(|| {
            (receiver
                .acknowledged()
                .iter()
                .filter(|(id, _, _)| *id == b)
                .count()
                > seen)
                .then_some(())
        })
        .await;
    receiver.assert_in_order();
}

/// A `[report]` section for `url` with the files given, beside `REPORT_TOKEN` in `token`.
fn report_section(url: &str, token: &Path, extra: &str) -> String {
    format!(
        "[report]\nurl = \"{url}\"\ntoken_file = \"{}\"\n{extra}",
        token.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_go_over_tls_to_the_control_planes_ca_with_a_client_certificate() {
    let cp = Ca::new("control plane CA");
    let nodes = Ca::new("nodes CA");
    let files = Files::new();
    let receiver = Receiver::start_tls(server_requiring_clients_of(
        &cp.server("control plane"),
        &nodes,
    ))
    .await;
    let ca_file = files.write("cp-ca.pem", &cp.pem);
    let (cert, key) = files.pair("node", &nodes.client("node"));
    let token = files.path("report-token");
    support::write_private(&token, &format!("{REPORT_TOKEN}\n"));
    let with = |extra: &str| {
        AgentProcess::start_with(AgentOptions {
            extra_config: report_section(&receiver.url(), &token, extra),
            ..Default::default()
        })
    };

    let agent = with(&format!(
        "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        ca_file.display(),
        cert.display(),
        key.display()
    ));
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    let c = receiver.wait_change(&id, |_, _| true).await;
    assert_eq!(record(&c)["_id"], id.as_str());
    wait_converged(&receiver, &client).await;

    // Without a client certificate the control plane refuses the handshake: retried, never lost.
    let anonymous = with(&format!("ca_file = \"{}\"\n", ca_file.display()));
    let client = anonymous.client();
    let (_w2, other) = client.running_app("exit").await;
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"unreachable\"}",
        1.0,
    )
    .await;
    assert!(receiver.refused_handshakes() >= 1);
    assert!(receiver.latest(&other).is_none());
    // Nor does a node that does not trust the control plane's certificate send anything.
    let distrustful = with(&format!(
        "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        files.write("wrong-ca.pem", &nodes.pem).display(),
        cert.display(),
        key.display()
    ));
    let client = distrustful.client();
    let (_w3, third) = client.running_app("exit").await;
    wait_metric(
        &client,
        "node_agent_reports_total{outcome=\"unreachable\"}",
        1.0,
    )
    .await;
    let node = client.get("/v1/node").await;
    assert!(
        node.body["report"]["lastError"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("certificate")),
        "{node:?}"
    );
    assert!(receiver.latest(&third).is_none());
}

#[test]
fn unusable_report_settings_stop_start_up_and_fail_check_config_with_exit_78() {
    let files = Files::new();
    let token = files.path("report-token");
    support::write_private(&token, "tok\n");
    let exposed = files.write("exposed-token", "tok\n");
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let empty = files.path("empty-token");
    support::write_private(&empty, "\n");
    let garbage = files.write("garbage.pem", "not a certificate\n");
    let missing = files.path("missing");
    let url = "https://127.0.0.1:9/reports";
    // A client key other users may read: whoever reads it may pose as this node.
    let (client_cert, client_key) = files.pair("client", &Ca::new("nodes").client("node"));
    std::fs::set_permissions(&client_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exposed_key = format!("report client key {} has mode 0644", client_key.display());
    for (what, section, named) in [
        (
            "missing token file",
            report_section(url, &missing, ""),
            path_str(&missing),
        ),
        (
            "token file others may read",
            report_section(url, &exposed, ""),
            "0644",
        ),
        (
            "empty token",
            report_section(url, &empty, ""),
            path_str(&empty),
        ),
        (
            "garbage CA file",
            report_section(
                url,
                &token,
                &format!("ca_file = \"{}\"\n", garbage.display()),
            ),
            path_str(&garbage),
        ),
        (
            "client key others may read",
            report_section(
                url,
                &token,
                &format!(
                    "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                    client_cert.display(),
                    client_key.display()
                ),
            ),
            exposed_key.as_str(),
        ),
        (
            "plain HTTP off loopback",
            report_section("http://192.0.2.1/r", &token, ""),
            "allow_insecure_http",
        ),
        (
            "no token file",
            "[report]\nurl = \"https://cp/r\"\n".to_owned(),
            "report.token_file",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = support::write_config(dir.path(), "127.0.0.1:0", "", &section);
        let config = path_str(&config);
        let (code, _, stderr) = support::run_to_exit(&["check-config", "--config", config]);
        assert_eq!(code, Some(78), "check-config, {what}: {stderr}");
        assert!(stderr.contains(named), "check-config, {what}: {stderr}");
        assert!(
            !stderr.contains("tok\n"),
            "{what}: the token is quoted: {stderr}"
        );
        let (code, _, stderr) = support::run_to_exit(&["--config", config]);
        assert_eq!(code, Some(78), "{what}: {stderr}");
        assert!(stderr.contains(named), "{what}: {stderr}");
        assert!(!stderr.contains("listening"), "{what}: {stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cp");
    let ca_file = files.write("ca.pem", &ca.pem);
    let section = report_section(
        url,
        &token,
        &format!("ca_file = \"{}\"\n", ca_file.display()),
    );
    let config = support::write_config(dir.path(), "127.0.0.1:0", "", &section);
    let (code, stdout, stderr) =
        support::run_to_exit(&["check-config", "--config", path_str(&config)]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// The minimal receiver docs/reporting.md shows, as written there, with this test's token and a free port.
struct DocumentedReceiver {
    child: std::process::Child,
    port: u16,
    printed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DocumentedReceiver {
    fn start() -> DocumentedReceiver {
        use std::io::BufRead;
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reporting.md"))
                .unwrap();
        let after = readme
            .split("A minimal receiver")
            .nth(1)
            .expect("docs/reporting.md shows a minimal receiver");
        let script = after
            .split("```python\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("a python block");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = script
            .replace(
                "\"the line in [report] token_file\"",
                &format!("\"{REPORT_TOKEN}\""),
            )
            .replace("(\"127.0.0.1\", 8080)", &format!("(\"127.0.0.1\", {port})"));
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the documented receiver");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = printed.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        DocumentedReceiver {
            child,
            port,
            printed,
        }
    }
}

impl Drop for DocumentedReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_minimal_receiver_takes_the_reports() {
    let receiver = DocumentedReceiver::start();
    let agent = AgentProcess::start_with(AgentOptions {
        report_url: Some(format!(
            "http://127.0.0.1:{}/v1/nodes/{}/reports",
            receiver.port,
            support::NODE_ID
        )),
        ..Default::default()
    });
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200);
    let wanted = format!(
        "{} {id} {} offline",
        support::NODE_NAME,
        generation(&stopped)
    );
    let deadline = Instant::now() + support::PATIENCE;
    while !receiver.printed.lock().unwrap().contains(&wanted) {
        assert!(
            Instant::now() < deadline,
            "the documented receiver did not print {wanted:?}: {:?}",
            receiver.printed.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client
            .metric("node_agent_reports_total{outcome=\"rejected\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_report_token_and_keeps_it_when_the_file_is_unusable() {
    let receiver = Receiver::start().await;
    let agent = reporting_agent(&receiver, None);
    let client = agent.client();
    let token_file = agent.dir.path().join("report-token");
    let (_w, id) = client.running_app("exit").await;
    receiver.wait_change(&id, |_, _| true).await;

    support::write_private(&token_file, "second-token\n");
    agent.signal("-HUP");
    agent.wait_logged(&["report token reloaded"], 1);
    let g = generation(&client.stop(&id).await);
    let report = report_carrying(&receiver, &id, g).await;
    assert_eq!(report.authorization.as_deref(), Some("Bearer second-token"));

    // A file others may read is refused, and the token in force stays.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    agent.signal("-HUP");
    agent.wait_logged(&["report token not reloaded", "0644"], 1);
    let g = generation(&client.start(&id).await);
    let report = report_carrying(&receiver, &id, g).await;
    assert_eq!(report.authorization.as_deref(), Some("Bearer second-token"));
}

/// The first acknowledged report that carried `app` at generation `g` or later.
async fn report_carrying(receiver: &Receiver, app: &str, g: u64) -> support::receiver::Report {
    receiver
        .wait(|| {
            receiver.reports().into_iter().find(|r| {
                r.acknowledged() && r.changes().iter().any(|(a, got, _)| a == app && *got >= g)
            })
        })
        .await
}
