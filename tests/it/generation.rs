//! Generations and waits on the real agent and engine: every change to a record takes a newer
//! generation, every answer shows it, the counter survives `kill -9` and outlives a deleted record,
//! and a wait is released by the change itself.

use crate::support;
use crate::support::record::generation;
use crate::support::{AgentProcess, Answer, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_takes_a_newer_generation_that_survives_kill_9() {
    let mut agent = AgentProcess::start();
    let client = agent.client();
    let w = Workload::start("exit").await;
    let id = support::app_id();
    let mut seen = vec![generation(&client.register(&id, &w.name).await)];
    let read = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(read.status, 200);
    // A read that finds nothing new changes nothing, and takes no generation.
    assert_eq!(generation(&read), seen[0]);
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    seen.push(generation(&stopped));
    // A refusal carries the record, generation and all.
    let again = client.stop(&id).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["app"]["generation"].as_u64(), Some(seen[1]));
    let started = client.start(&id).await;
    assert_eq!(started.status, 200, "{started:?}");
    seen.push(generation(&started));
    let list = client.get("/v1/apps?limit=500").await;
    let listed = list.body["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["_id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(listed["generation"].as_u64() >= Some(seen[2]), "{listed}");

    agent.kill9();
    agent.restart();
    let client = agent.client();
    let after = client.get(&format!("/v1/apps/{id}")).await;
    assert!(generation(&after) >= seen[2], "{after:?}");
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    seen.push(generation(&stopped));
    // Deleted, then registered again: newer than anything the app had before.
    assert_eq!(client.delete(&id).await.status, 204);
    seen.push(generation(&client.register(&id, &w.name).await));
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
}

/// `GET /v1/apps/{id}/wait{query}`.
async fn wait(client: &support::Client, id: &str, query: &str) -> Answer {
    client.get(&format!("/v1/apps/{id}/wait{query}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_released_by_the_change_itself() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    // Already so: at once.
    let now = wait(&client, &id, "?online=true").await;
    assert_eq!(now.status, 200, "{now:?}");
    // Released by a background stop (~okeanos, 202).
    let waiter = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { wait(&client, &id, "?online=false&timeout=30").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let accepted = client.okeanos(&id, "stop").await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let released = waiter.await.unwrap();
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(released.body["currentResourceMetrics"]["online"], false);
    assert_eq!(
        released.body["lastStop"]["outcome"], "stopped",
        "{released:?}"
    );
    // Released by a start, and by a generation newer than the one seen.
    let seen = generation(&released);
    let waiters: Vec<_> = [
        "?online=true".to_owned(),
        format!("?generation={}", seen + 1),
    ]
    .into_iter()
    .map(|q| {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { wait(&client, &id, &q).await })
    })
    .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(client.start(&id).await.status, 200);
    for w in waiters {
        let a = w.await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        assert!(generation(&a) > seen);
    }
    // Out of time: 408 with the record as it stands.
    let late = wait(&client, &id, "?online=false&timeout=1").await;
    assert_eq!(late.status, 408, "{late:?}");
    assert_eq!(late.body["error"], "wait_timeout");
    assert_eq!(late.body["app"]["currentResourceMetrics"]["online"], true);
    // Bad parameters.
    for q in [
        "",
        "?timeout=5",
        "?online=maybe",
        "?online=true&timeout=0",
        "?online=true&timeout=301",
        "?generation=-1",
        "?online=true&until=x",
    ] {
        let a = wait(&client, &id, q).await;
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert_eq!(a.body["error"], "bad_request");
    }
    assert_eq!(
        wait(&client, "no-such-app", "?online=true").await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_waiters_are_released_by_one_stop() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move { wait(&client, &id, "?online=false&timeout=60").await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    for w in waiters {
        let a = w.await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["currentResourceMetrics"]["online"], false);
    }
}
