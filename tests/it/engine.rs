//! An engine that is unreachable or slow: the agent starts and serves without it, fails fast with 503
//! while it is gone, leaves records untouched, and works again by itself once it is back. The engine
//! is reached through a Unix-socket proxy that the tests close and reopen; the real daemon is never
//! touched.

use std::time::{Duration, Instant};

use crate::support::{
    AgentOptions, AgentProcess, EngineProxy, ProxyMode, Workload, app_id, stored,
};
use serde_json::Value;

fn through(proxy: &EngineProxy) -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        docker_host: Some(proxy.url()),
        ..Default::default()
    })
}

/// A record without its `engineUnavailable` mark.
fn unmarked(mut record: Value) -> Value {
    if let Some(map) = record.as_object_mut() {
        map.remove("engineUnavailable");
    }
    record
}

/// Polls `check` every 100 ms until it holds, at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_without_the_engine_and_recovers_by_itself() {
    let proxy = EngineProxy::closed();
    let agent = through(&proxy);
    let client = agent.client();
    let w = Workload::start("exit").await;
    let id = app_id();

    // Up and answering, though the engine is not there.
    let health = client.send(client.http.get(client.url("/healthz"))).await;
    assert_eq!(health.status, 200);
    let ready = client.send(client.http.get(client.url("/readyz"))).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body["message"].as_str().unwrap().contains("docker"));
    // Each dependency is named: the store answers, the engine does not.
    assert_eq!(ready.body["error"], "not_ready", "{ready:?}");
    assert_eq!(ready.body["store"], "ok", "{ready:?}");
    assert!(
        ready.body["docker"]
            .as_str()
            .is_some_and(|d| d.contains("unreachable")),
        "{ready:?}"
    );
    let registered = client.register(&id, &w.name).await.body;

    // Calls that need the engine fail fast, and leave the record as it was.
    let started = Instant::now();
    let a = client.stop(&id).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.body["error"], "docker_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Reads answer from the store, and say that the engine could not be asked.
    let read = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert!(
        read.body["engineUnavailable"]["since"].is_string(),
        "{read:?}"
    );
    assert_eq!(unmarked(read.body), unmarked(registered.clone()));
    assert_eq!(unmarked(stored(&client, &id).await), unmarked(registered));
    assert!(w.running().await);

    // The engine comes back: readiness, reconciliation and stops return by themselves.
    proxy.open(ProxyMode::Forward);
    eventually(Duration::from_secs(10), "readiness", || async {
        client
            .send(client.http.get(client.url("/readyz")))
            .await
            .status
            == 200
    })
    .await;
    eventually(Duration::from_secs(40), "reconciliation", || async {
        stored(&client, &id).await["currentResourceMetrics"]["online"] == true
    })
    .await;
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!w.running().await);

    // It goes away again, mid-life: 503 again, and back again after.
    let (w2, id2) = client.running_app("exit").await;
    proxy.close();
    let before = unmarked(stored(&client, &id2).await);
    let a = client.stop(&id2).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(unmarked(stored(&client, &id2).await), before, "untouched");
    assert!(w2.running().await);
    proxy.open(ProxyMode::Forward);
    eventually(
        Duration::from_secs(10),
        "the stop working again",
        || async { client.stop(&id2).await.status == 200 },
    )
    .await;
    assert!(!w2.running().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_hangs_fails_fast_not_after_two_minutes() {
    let proxy = EngineProxy::closed();
    proxy.open(ProxyMode::Hang);
    let agent = through(&proxy);
    let client = agent.client();

    // Readiness and the node report wait 2 s for the engine, then say it gave no answer.
    let hung = "the Docker engine is unreachable: no answer within 2s";
    let started = Instant::now();
    let ready = client.send(client.http.get(client.url("/readyz"))).await;
    let took = started.elapsed();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.body["store"], "ok", "{ready:?}");
    assert_eq!(ready.body["docker"], hung, "{ready:?}");
    assert!(took < Duration::from_secs(4), "readiness after {took:?}");
    let started = Instant::now();
    let node = client.get("/v1/node").await;
    let took = started.elapsed();
    assert_eq!(node.status, 200, "{node:?}");
    assert_eq!(node.body["docker"]["reachable"], false, "{node:?}");
    assert_eq!(node.body["docker"]["error"], hung, "{node:?}");
    assert!(node.body["dockerDisk"].is_null(), "{node:?}");
    assert!(
        took < Duration::from_secs(4),
        "the node report after {took:?}"
    );

    // A stop waits for the engine's call timeout, not for bollard's two minutes.
    let id = app_id();
    client.register(&id, "some-container").await;
    let started = Instant::now();
    let a = client.stop(&id).await;
    let took = started.elapsed();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.body["error"], "docker_unavailable");
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stay_readable_while_the_engine_is_away_and_fresh_once_it_is_back() {
    let proxy = EngineProxy::closed();
    proxy.open(ProxyMode::Forward);
    let agent = through(&proxy);
    let client = agent.client();
    let (w, id) = client.running_app("spin").await;
    let path = format!("/v1/apps/{id}");
    eventually(
        Duration::from_secs(20),
        "a fresh read with figures",
        || async {
            let read = client.get(&path).await;
            read.status == 200 && read.body["currentResourceMetrics"]["cpuUsagePercent"].is_number()
        },
    )
    .await;
    let fresh = client.get(&path).await;
    assert!(fresh.body.get("engineUnavailable").is_none(), "{fresh:?}");
    let known = stored(&client, &id).await;

    for mode in ["closed", "hanging"] {
        proxy.close();
        if mode == "hanging" {
            proxy.open(ProxyMode::Hang);
        }
        // At once, from the store: the last figures the agent knew, and when the engine went away.
        for _ in 0..2 {
            let started = Instant::now();
            let read = client.get(&path).await;
            let took = started.elapsed();
            assert_eq!(read.status, 200, "{mode}: {read:?}");
            assert!(took < Duration::from_secs(3), "{mode}: read after {took:?}");
            let away = &read.body["engineUnavailable"];
            assert!(
                away["since"].is_string() && away["message"].is_string(),
                "{mode}: {read:?}"
            );
            assert_eq!(
                unmarked(read.body.clone()),
                unmarked(known.clone()),
                "{mode}"
            );
            assert_eq!(
                read.body["currentResourceMetrics"]["online"], true,
                "{mode}"
            );
        }
        let listed_now = stored(&client, &id).await;
        assert!(
            listed_now["engineUnavailable"].is_object(),
            "{mode}: {listed_now}"
        );
        // Readiness, stops and starts still say the engine is away.
        let ready = client.send(client.http.get(client.url("/readyz"))).await;
        assert_eq!(ready.status, 503, "{mode}");
        if mode == "closed" {
            let a = client.stop(&id).await;
            assert_eq!(
                (a.status, a.body["error"].as_str()),
                (503, Some("docker_unavailable")),
                "{a:?}"
            );
            let a = client.start(&id).await;
            assert_eq!(
                (a.status, a.body["error"].as_str()),
                (503, Some("docker_unavailable")),
                "{a:?}"
            );
        }
        // Back: reads are fresh again by themselves.
        proxy.close();
        proxy.open(ProxyMode::Forward);
        eventually(Duration::from_secs(20), "fresh reads", || async {
            let read = client.get(&path).await;
            read.status == 200 && read.body.get("engineUnavailable").is_none()
        })
        .await;
        let read = client.get(&path).await;
        assert!(
            read.body["currentResourceMetrics"]["uptime"].as_u64()
                >= known["currentResourceMetrics"]["uptime"].as_u64()
        );
    }
    assert!(w.running().await);
}
