//! The stop, end to end: the real agent over HTTP, stopping real containers on the real engine.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::record::metrics;
use crate::support::{AgentProcess, NODE_ID, NODE_NAME, Workload, app_id};
use serde_json::{Value, json};

/// The documented shape of a stopped record, with the final sample's figures.
fn assert_stopped_record(record: &Value, id: &str, container: &str) {
    assert_eq!(record["_id"], id);
    assert_eq!(record["containerId"], container);
    assert_eq!(
        record["status"], "active",
        "status keeps its documented value"
    );
    assert_eq!(
        record["workerNodeId"],
        json!({"_id": NODE_ID, "nodeName": NODE_NAME})
    );
    let m = metrics(record);
    assert_eq!(m["online"], false, "{record:#}");
    for key in ["timestamp", "startedAt"] {
        let t = m[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {m}"));
        chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339");
        assert!(t.ends_with('Z'), "UTC: {t}");
    }
    assert!(m["uptime"].is_u64(), "{m}");
    assert!(m["cpuUsagePercent"].is_number(), "{m}");
    assert!(m["memoryUsageBytes"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(
        m["memoryLimitBytes"].as_u64(),
        Some(64 * 1024 * 1024),
        "{m}"
    );
    assert!(m["networkRxBytes"].is_u64(), "{m}");
    assert!(m["networkTxBytes"].is_u64(), "{m}");
    assert!(record["lastExit"]["finishedAt"].is_string(), "{record:#}");
    assert!(record["updatedAt"].is_string());
    // Every registered key is kept as given.
    assert_eq!(record["environmentVariables"][0]["key"], "API_PORT");
    assert_eq!(record["assignedSubdomain"], Value::Null);
}

#[tokio::test]
async fn a_container_that_exits_on_sigterm_is_stopped_with_final_metrics() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;

    let before = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(before.status, 200);
    assert_eq!(metrics(&before.body)["online"], true, "{:#}", before.body);

    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_stopped_record(&a.body, &id, &w.name);
    assert_eq!(a.body["lastExit"]["exitCode"], 0);
    assert_eq!(a.body["lastExit"]["killed"], false);
    assert!(!w.running().await, "the container really stopped");
    assert!(
        w.logs().await.contains("signal 15"),
        "SIGTERM reached the workload"
    );

    // The final metrics were sampled before the stop, and the record keeps them.
    let sampled =
        chrono::DateTime::parse_from_rfc3339(metrics(&a.body)["timestamp"].as_str().unwrap())
            .unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(a.body["lastExit"]["finishedAt"].as_str().unwrap())
            .unwrap();
    assert!(
        sampled <= finished,
        "sampled {sampled} before the exit at {finished}"
    );
    let after = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, a.body, "GET answers the stored final record");
}

#[tokio::test]
async fn a_container_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("ignore").await;

    let started = Instant::now();
    let a = client.stop_query(&id, "?timeout=2").await;
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        took >= Duration::from_secs(2),
        "the grace period was waited ({took:?})"
    );
    assert_stopped_record(&a.body, &id, &w.name);
    assert_eq!(a.body["lastExit"]["exitCode"], 137);
    assert_eq!(a.body["lastExit"]["killed"], true);
    assert_eq!(a.body["lastExit"]["signal"], "SIGKILL");
    assert!(!w.running().await);
    assert!(
        w.logs().await.contains("signal 15"),
        "SIGTERM was sent first"
    );
}

#[tokio::test]
async fn a_custom_signal_reaches_the_workload() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // From the query, with the SIG prefix.
    let (w, id) = client.running_app("ignore").await;
    let a = client.stop_query(&id, "?signal=SIGUSR1&timeout=5").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["lastExit"]["exitCode"],
        64 + 10,
        "the workload saw SIGUSR1"
    );
    assert!(w.logs().await.contains("signal 10"));
    assert!(!w.running().await);

    // From a JSON body, without the prefix.
    let (w2, id2) = client.running_app("ignore").await;
    let a = client
        .stop_body(&id2, json!({"signal": "HUP", "timeout": 5}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["lastExit"]["exitCode"],
        64 + 1,
        "the workload saw SIGHUP"
    );
    assert!(w2.logs().await.contains("signal 1\n"));

    // The signal went the way this engine takes it: on the stop call itself from API 1.42 on,
    // else by a kill, a wait and a stop with `t=0`.
    let node = client.get("/v1/node").await;
    let api = node.body["docker"]["negotiatedApiVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let minor: u32 = api.split('.').nth(1).unwrap().parse().unwrap();
    let expected = if minor >= 42 {
        "path=EngineStop"
    } else {
        "path=SignalThenStop"
    };
    let halted = agent.logged(&["container halted"]);
    assert_eq!(halted.len(), 2, "{halted:?}");
    assert!(
        halted.iter().all(|l| l.contains(expected)),
        "API {api}: expected {expected} in {halted:?}"
    );
}

#[tokio::test]
async fn sigkill_and_zero_timeout_kill_at_once() {
    let agent = AgentProcess::start();
    let client = agent.client();
    for query in ["?signal=KILL", "?timeout=0"] {
        let (w, id) = client.running_app("ignore").await;
        let started = Instant::now();
        let a = client.stop_query(&id, query).await;
        assert_eq!(a.status, 200, "{query}: {a:?}");
        assert_eq!(a.body["lastExit"]["exitCode"], 137, "{query}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{query}: no grace period was waited"
        );
        assert!(!w.running().await);
    }
}

#[tokio::test]
async fn a_slow_graceful_exit_is_waited_for() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("slow=1500").await;
    let started = Instant::now();
    let a = client.stop_query(&id, "?timeout=20").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the clean-up was waited for"
    );
    assert_eq!(
        a.body["lastExit"]["exitCode"], 0,
        "it exited by itself, not killed"
    );
    assert_eq!(a.body["lastExit"]["killed"], false);
}

#[tokio::test]
async fn the_configured_default_timeout_applies() {
    let agent = AgentProcess::start_with(support::AgentOptions {
        default_timeout: Some(1),
        ..Default::default()
    });
    let client = agent.client();
    let (_w, id) = client.running_app("ignore").await;
    let started = Instant::now();
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(9),
        "1 s grace, not Docker's 10 s: {took:?}"
    );
    assert_eq!(a.body["lastExit"]["killed"], true);
}

#[tokio::test]
async fn concurrent_stops_of_one_app_exactly_one_succeeds() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("slow=1000").await;
    let answers = futures_util::future::join_all((0..6).map(|_| client.stop(&id))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 1, "{answers:#?}");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 409, "{a:?}");
        let code = a.body["error"].as_str().unwrap();
        assert!(
            code == "stop_in_progress" || code == "already_stopped",
            "{a:?}"
        );
    }
    assert!(
        answers
            .iter()
            .any(|a| a.body["error"] == "stop_in_progress"),
        "{answers:#?}"
    );
}

#[tokio::test]
async fn twenty_apps_stopped_at_once() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // Each takes 2 s to shut down: twenty stops one after another would take 40 s or more.
    let workloads =
        futures_util::future::join_all((0..20).map(|_| Workload::start("slow=2000"))).await;
    let mut ids = Vec::new();
    for w in &workloads {
        let id = app_id();
        client.register(&id, &w.name).await;
        ids.push(id);
    }
    let started = Instant::now();
    let answers = futures_util::future::join_all(ids.iter().map(|id| client.stop(id))).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the stops ran side by side, not one after another ({took:?} for 20 × 2 s)"
    );
    for (a, (id, w)) in answers.iter().zip(ids.iter().zip(&workloads)) {
        assert_eq!(a.status, 200, "{id}: {a:?}");
        assert_stopped_record(&a.body, id, &w.name);
    }
    for w in &workloads {
        assert!(!w.running().await, "{} still runs", w.name);
    }
}

#[tokio::test]
async fn already_stopped_answers_409_with_the_current_record() {
    let agent = AgentProcess::start();
    let client = agent.client();

    // Stopped by the agent: a second stop is 409.
    let (_w, id) = client.running_app("exit").await;
    assert_eq!(client.stop(&id).await.status, 200);
    let again = client.stop(&id).await;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.body["error"], "already_stopped");
    assert_eq!(again.body["status"], 409);
    assert_eq!(again.body["app"]["_id"], id.as_str());
    assert_eq!(again.body["app"]["currentResourceMetrics"]["online"], false);

    // Stopped behind the agent's back: 409, and the record now says so, with the exit.
    let (w, id) = client.running_app("exit").await;
    assert_eq!(
        metrics(&client.get(&format!("/v1/apps/{id}")).await.body)["online"],
        true
    );
    w.stop_by_hand().await;
    let a = client.stop(&id).await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["error"], "already_stopped");
    assert_eq!(a.body["app"]["currentResourceMetrics"]["online"], false);
    assert_eq!(a.body["app"]["lastExit"]["exitCode"], 0);
    assert!(a.body["message"].as_str().unwrap().contains("not running"));

    // Gone altogether: 409 as well.
    let (w, id) = client.running_app("exit").await;
    w.remove().await;
    let a = client.stop(&id).await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["error"], "already_stopped");
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("no longer exists")
    );
    assert_eq!(a.body["app"]["currentResourceMetrics"]["online"], false);
}

#[tokio::test]
async fn the_stop_is_not_cancelled_when_the_client_hangs_up() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("slow=3000").await;
    // A client that hangs up once the stop has begun (the container got its SIGTERM), well
    // before the workload finishes its clean-up.
    let request = tokio::spawn(
        client
            .http
            .post(client.url(&format!("/v1/apps/{id}/stop")))
            .bearer_auth(&client.token)
            .send(),
    );
    w.wait_logs("signal 15", Duration::from_secs(20)).await;
    request.abort();
    assert!(
        request.await.is_err_and(|e| e.is_cancelled()),
        "the client hung up before the answer"
    );
    // The stop goes on and lands in the record.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = client.get(&format!("/v1/apps/{id}")).await;
        if metrics(&a.body)["online"] == false && a.body["lastExit"].is_object() {
            assert_eq!(a.body["lastExit"]["exitCode"], 0, "{a:?}");
            assert!(
                metrics(&a.body)["memoryUsageBytes"].as_u64().unwrap() > 0,
                "the final sample survives reads made during the stop: {a:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the stop never completed: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!w.running().await);
    assert!(w.logs().await.contains("signal 15"));
}

#[tokio::test]
async fn a_grace_period_longer_than_the_engine_call_timeout_is_waited_for() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("ignore").await;
    // Engine calls time out after 10 s; a stop's own timeout covers its grace period.
    let started = Instant::now();
    let a = client.stop_query(&id, "?timeout=12").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(started.elapsed() >= Duration::from_secs(12));
    assert_eq!(a.body["lastExit"]["killed"], true);
    assert!(!w.running().await);
}

#[tokio::test]
async fn final_metrics_are_fresh_and_cpu_is_measured_over_a_real_interval() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // Keeps one CPU busy: a CPU % of 0 could only come from a missing interval.
    let (_w, id) = client.running_app("spin").await;
    // The agent follows the engine's one-a-second readings from registration on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    let m = metrics(&a.body);
    let cpu = m["cpuUsagePercent"].as_f64().unwrap();
    assert!(
        cpu > 10.0,
        "a busy CPU measured over a real interval: {cpu}"
    );
    let t = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let age = t(&a.body["lastStop"]["requestedAt"]) - t(&m["timestamp"]);
    assert!(
        age <= chrono::Duration::milliseconds(1600),
        "sampled at most about a second before the stop: {age}"
    );
}

/// An operator may bring the kill of a stop under way forward: the second stop joins the first,
/// the container is killed at the earlier deadline, and both answer with the stopped record. A
/// later deadline, and every other operation, is refused as under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_brings_the_kill_of_a_stop_under_way_forward() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("ignore").await;
    let started = Instant::now();
    let first = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { client.stop_query(&id, "?timeout=60").await })
    };
    // Once the first stop holds the app (its intent is written), a later kill, a restart and a
    // start are refused as under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&format!("/v1/apps/{id}")).await.body["lastStop"]["outcome"] != "stopping" {
        assert!(
            Instant::now() < deadline,
            "the first stop never got under way"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let later = client.stop_query(&id, "?timeout=120").await;
    assert_eq!(later.status, 409, "{later:?}");
    assert_eq!(later.body["error"], "stop_in_progress", "{later:?}");
    for verb in ["restart", "start"] {
        let a = client.operate(&id, verb, "").await;
        assert_eq!(a.status, 409, "{verb}: {a:?}");
        assert_eq!(a.body["error"], "stop_in_progress", "{verb}: {a:?}");
    }
    let sooner = client.stop_query(&id, "?timeout=1").await;
    assert_eq!(sooner.status, 200, "{sooner:?}");
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "killed at the earlier deadline, not the first stop's 60 s: {:?}",
        started.elapsed()
    );
    assert_eq!(metrics(&sooner.body)["online"], false, "{sooner:?}");
    assert_eq!(sooner.body["lastExit"]["killed"], true, "{sooner:?}");
    assert_eq!(sooner.body["lastStop"]["outcome"], "stopped", "{sooner:?}");
    for key in ["lastStop", "lastExit"] {
        assert_eq!(
            sooner.body[key], first.body[key],
            "both answer the one stop's {key}"
        );
    }
    assert!(!w.running().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_started_again_during_the_stop_is_409_stop_overtaken_with_the_record() {
    let engine = support::held::HeldEngine::start();
    let agent = AgentProcess::start_with(support::AgentOptions {
        docker_host: Some(engine.url()),
        ..Default::default()
    });
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    // The engine stops the container, but its answer is held back until someone has started the
    // container again by hand: the agent then finds it running.
    let hold = engine.hold_stop_answers().await;
    let stop = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { client.stop_query(&id, "?timeout=5").await })
    };
    let docker = support::docker().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Podman refuses a start while it is still stopping the container: tried again.
        let started = !w.running().await
            && docker
                .start_container(
                    &w.name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .is_ok();
        if started {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container was never stopped and started again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(hold);
    let a = stop.await.unwrap();
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["error"], "stop_overtaken", "{a:?}");
    let app = &a.body["app"];
    assert_eq!(app["currentResourceMetrics"]["online"], true, "{app:#}");
    assert_eq!(app["lastStop"]["outcome"], "stopped", "{app:#}");
    assert!(w.running().await);
    // Nothing is left under way: the next stop goes ahead.
    let again = client.stop_query(&id, "?timeout=5").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(!w.running().await);
}
