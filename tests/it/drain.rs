//! The node's drain through the real agent and engine: every app stopped at once with its final
//! record, the deadline's kill, starts refused while drained (kept across a restart of the agent),
//! and the end that brings back exactly the apps the drain stopped.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::team::{USERS, agent_with_users, as_user};
use crate::support::{
    AgentProcess, Answer, Client, NODE_ID, OPERATOR_TOKEN_NAME, PATIENCE, Workload, app_id,
};

async fn drain(client: &Client, query: &str) -> Answer {
    client
        .send(client.authed(reqwest::Method::POST, &format!("/v1/node/drain{query}")))
        .await
}

async fn end_drain(client: &Client, query: &str) -> Answer {
    client
        .send(client.authed(reqwest::Method::DELETE, &format!("/v1/node/drain{query}")))
        .await
}

async fn record(client: &Client, id: &str) -> Value {
    let a = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(a.status, 200, "{a:?}");
    a.body
}

fn online(record: &Value) -> bool {
    record["currentResourceMetrics"]["online"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_every_app_kills_at_the_deadline_and_brings_back_exactly_its_own() {
    let mut agent = AgentProcess::start();
    let client = agent.client();
    // Fourteen that exit on SIGTERM, four that ignore it, one stopped before the drain, one whose
    // container is gone, one that a person starts again by hand after the drain.
    let modes = [["exit"; 15].as_slice(), ["ignore"; 4].as_slice()].concat();
    let made = modes.iter().map(|mode| client.running_app(mode));
    let apps: Vec<(Workload, String)> = futures_util::future::join_all(made).await;
    let (stopped_before, gone) = (Workload::start("exit").await, Workload::start("exit").await);
    let (stopped_id, gone_id) = (app_id(), app_id());
    client.register(&stopped_id, &stopped_before.name).await;
    client.register(&gone_id, &gone.name).await;
    assert_eq!(client.stop(&stopped_id).await.status, 200);
    gone.remove().await;

    // Each app's grace is 30 s; the deadline of 3 s kills the four that ignore SIGTERM.
    let began = Instant::now();
    let a = drain(&client, "?timeout=30&deadline=3").await;
    let took = began.elapsed();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        took < Duration::from_secs(25),
        "the deadline did not cut the grace short: {took:?}"
    );
    let summary = &a.body;
    assert_eq!(summary["state"], "drained", "{summary:#}");
    assert_eq!(summary["reason"], "drain", "{summary:#}");
    assert_eq!(summary["by"], OPERATOR_TOKEN_NAME, "{summary:#}");
    assert_eq!(summary["deadline"], 3, "{summary:#}");
    assert!(summary["finishedAt"].is_string(), "{summary:#}");
    assert_eq!(summary["apps"]["stopped"], 19, "{summary:#}");
    assert_eq!(summary["apps"]["alreadyStopped"], 2, "{summary:#}");
    assert_eq!(summary["apps"]["killedAtDeadline"], 4, "{summary:#}");
    assert_eq!(
        summary["apps"]["failed"],
        serde_json::json!([]),
        "{summary:#}"
    );

    // Every app is down with its final record, stopped by the drain.
    for (w, id) in &apps {
        assert!(!w.running().await, "{id} still runs");
        let r = record(&client, id).await;
        assert!(!online(&r), "{r:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
        assert_eq!(r["lastStop"]["reason"], "drain", "{r:#}");
        assert_eq!(r["lastStop"]["by"], OPERATOR_TOKEN_NAME, "{r:#}");
        assert!(
            r["currentResourceMetrics"]["memoryUsageBytes"].is_u64(),
            "{r:#}"
        );
        assert!(r["lastExit"].is_object(), "{r:#}");
        // Its history: the drain asked, the stop ended, in that order, both naming the drain.
        let h = client.get(&format!("/v1/apps/{id}/events?limit=2")).await;
        let h = h.body["events"].as_array().unwrap();
        assert_eq!(h[1]["type"], "drained", "{h:#?}");
        assert_eq!(h[0]["type"], "stopped", "{h:#?}");
        for e in h {
            assert_eq!(e["details"]["reason"], "drain", "{e:#}");
            assert_eq!(e["by"], OPERATOR_TOKEN_NAME, "{e:#}");
        }
    }
    // The app stopped before keeps its own stop.
    let r = record(&client, &stopped_id).await;
    assert!(r["lastStop"]["reason"].is_null(), "{r:#}");

    // The node says so, in its report and its figures.
    let node = client.get("/v1/node").await;
    assert_eq!(node.body["drain"]["state"], "drained", "{node:?}");
    let metrics = client.metrics_text().await;
    for line in [
        "node_agent_drain_state{state=\"drained\"} 1",
        "node_agent_drain_apps{outcome=\"stopped\"} 19",
        "node_agent_drain_apps{outcome=\"killed_at_deadline\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }

    // Starts and restarts are refused on both routes; stops and reads go on.
    let (w0, id0) = &apps[0];
    for verb in ["start", "restart"] {
        let a = client.operate(id0, verb, "").await;
        assert_eq!(a.status, 409, "{verb}: {a:?}");
        assert_eq!(a.body["error"], "node_draining", "{verb}: {a:?}");
        assert_eq!(a.body["app"]["_id"], id0.as_str(), "{verb}: {a:?}");
    }
    let a = client.okeanos(id0, "start").await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(
        a.body["errors"][0]["detail"],
        "The specified lambda instance is draining: no application can be started on it.",
        "{a:?}"
    );
    assert_eq!(client.stop(id0).await.status, 409);
    // Registrations, stops and deletions go on: an app registered on the drained node is stopped
    // and deleted as anywhere.
    let (late, late_id) = client.running_app("exit").await;
    let a = client.stop(&late_id).await;
    assert_eq!(a.status, 200, "a stop on a drained node: {a:?}");
    assert_eq!(a.body["lastStop"]["reason"], Value::Null, "{a:?}");
    assert!(!late.running().await);
    let a = client.delete(&late_id).await;
    assert!(
        (200..300).contains(&a.status),
        "a deletion on a drained node: {a:?}"
    );

    // The drained state outlives a restart of the agent.
    assert_eq!(agent.terminate(), Some(0));
    agent.restart();
    let client = agent.client();
    assert_eq!(
        client.get("/v1/node").await.body["drain"]["state"],
        "drained"
    );
    assert_eq!(client.start(id0).await.body["error"], "node_draining");
    assert!(!w0.running().await);

    // A person starts one by hand: the end does not start it twice.
    let (by_hand, by_hand_id) = &apps[1];
    by_hand.start_by_hand().await;
    let started_at = by_hand.inspect().await.unwrap().state.unwrap().started_at;
    let since = Instant::now();
    while !online(&record(&client, by_hand_id).await) {
        assert!(
            since.elapsed() < PATIENCE,
            "the start by hand was never seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = end_drain(&client, "?start=true").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["state"], "ended", "{a:?}");
    assert_eq!(a.body["endedBy"], OPERATOR_TOKEN_NAME, "{a:?}");
    assert_eq!(a.body["apps"]["startedAgain"], 18, "{a:?}");
    for (w, id) in &apps {
        assert!(w.running().await, "{id} was not started again");
        let r = record(&client, id).await;
        assert!(online(&r), "{r:#}");
    }
    let again = by_hand.inspect().await.unwrap().state.unwrap().started_at;
    assert_eq!(
        again, started_at,
        "the app started by hand was started twice"
    );
    assert!(
        !stopped_before.running().await,
        "the app stopped before the drain came back"
    );
    // Starts are allowed again; ending again answers the same summary.
    assert_eq!(client.restart(id0).await.status, 200);
    let a = end_drain(&client, "").await;
    assert_eq!((a.status, &a.body["state"]), (200, &Value::from("ended")));
    assert_eq!(client.get("/v1/node").await.body["drain"]["state"], "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_at_once_when_asked_and_a_second_joins_it() {
    let mut agent = agent_with_users();
    let client = agent.client();
    let (w, id) = client.running_app("ignore").await;
    let (w2, id2) = client.running_app("exit").await;

    // A plain stop of the agent drains nothing.
    assert_eq!(agent.terminate(), Some(0));
    agent.restart();
    let client = agent.client();
    assert!(w.running().await && w2.running().await);
    assert!(client.get("/v1/node").await.body["drain"].is_null());
    assert_eq!(end_drain(&client, "").await.body["error"], "not_draining");

    // Only operators drain, and bad parameters are refused before anything is stopped.
    let user = as_user(&client, USERS[0]);
    assert_eq!(drain(&user, "").await.status, 403);
    assert_eq!(end_drain(&user, "").await.status, 403);
    for query in ["?deadline=0", "?wait=soon", "?timeout=x", "?grace=1"] {
        let a = drain(&client, query).await;
        assert_eq!(
            (a.status, &a.body["error"]),
            (400, &Value::from("bad_request")),
            "{query}"
        );
    }
    assert!(w.running().await);

    let a = drain(&client, "?wait=false&timeout=2").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["state"], "draining", "{a:?}");
    assert!(a.body["finishedAt"].is_null(), "{a:?}");
    let started = a.body["startedAt"].clone();
    // A second drain joins the first, and answers once it has finished.
    let b = drain(&client, "").await;
    assert_eq!(b.status, 200, "{b:?}");
    assert_eq!(b.body["startedAt"], started, "{b:?}");
    assert_eq!(b.body["state"], "drained", "{b:?}");
    assert_eq!(b.body["apps"]["stopped"], 2, "{b:?}");
    assert!(!w.running().await && !w2.running().await);
    assert_eq!(
        client.okeanos(&id, "start").await.status,
        409,
        "started on instance {NODE_ID} while drained"
    );

    // An end without `start` starts nothing, and lets starts in.
    let a = end_drain(&client, "").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body["apps"]["startedAgain"].is_null(), "{a:?}");
    assert!(!w.running().await);
    assert_eq!(client.start(&id2).await.status, 200);
}
