//! Each app's event history on the real agent and engine: every step of the agent's operations
//! and every exit and start the engine reports is an event, read newest first in pages, visible
//! to those who may read the app, kept to `[history] per_app` once delivered, and delivered to the
//! control plane with each change, every one of them: a crash loop's exits all arrive across an
//! outage of the control plane and a `kill -9` of the agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::models::{HostConfig, RestartPolicy, RestartPolicyNameEnum};
use serde_json::Value;

use crate::support::receiver::{Mode, Receiver};
use crate::support::team::{OWNER, STRANGER, agent_with_users, as_user, team_app};
use crate::support::{
    AgentOptions, AgentProcess, Answer, Client, OPERATOR_TOKEN_NAME, PATIENCE, Workload, app_id,
    engine_is_podman,
};

async fn events(client: &Client, id: &str, query: &str) -> Answer {
    client.get(&format!("/v1/apps/{id}/events{query}")).await
}

/// The app's events, oldest first, once `done` holds of them (failing after [`PATIENCE`]).
async fn wait_events(client: &Client, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let a = events(client, id, "?limit=100").await;
        assert_eq!(a.status, 200, "{a:?}");
        let mut list = a.body["events"].as_array().cloned().unwrap_or_default();
        list.reverse();
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "the history never got there: {:#?}",
            types(&list)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test]
async fn every_step_of_an_apps_life_is_an_event_in_order_with_who_and_why() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    assert_eq!(client.stop(&id).await.status, 200);
    assert_eq!(client.start(&id).await.status, 200);
    assert_eq!(client.restart(&id).await.status, 200);
    let list = wait_events(&client, &id, |e| e.len() >= 9).await;
    assert_eq!(
        types(&list),
        [
            "registered",
            "stop_requested",
            "stopped",
            "start_requested",
            "started",
            "stop_requested",
            "start_requested",
            "stopped",
            "started",
        ]
    );
    let mut last = 0;
    for e in &list {
        let g = e["generation"].as_u64().unwrap();
        assert!(g > last, "generations go up: {list:#?}");
        last = g;
        assert_eq!(e["by"], OPERATOR_TOKEN_NAME, "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let stopped = &list[2];
    assert_eq!(stopped["details"]["outcome"], "stopped");
    assert_eq!(stopped["details"]["exit"]["exitCode"], 0, "{stopped}");
    assert_eq!(stopped["details"]["finalSample"]["online"], false);
    assert!(
        stopped["details"]["finalSample"]["memoryUsageBytes"].is_u64(),
        "{stopped}"
    );
    assert_eq!(list[0]["details"]["created"], true);
    // The record is at least as new as its last event: a change and its events are one commit
    // (a later look at the container, with no event of its own, may take a newer one).
    let record = client.get(&format!("/v1/apps/{id}")).await;
    assert!(
        record.body["generation"].as_u64().unwrap() >= last,
        "{record:?}"
    );
    assert_eq!(record.body["restartCount"], 0, "{record:?}");

    // Behind the agent's back: an exit on its own (SIGUSR1 ends the workload with 64 + 10), then a
    // start by hand.
    w.kill_by_hand("SIGUSR1").await;
    let list = wait_events(&client, &id, |e| !of_type(e, "exited").is_empty()).await;
    let exited = of_type(&list, "exited")[0];
    assert_eq!(exited["by"], "engine");
    assert_eq!(exited["details"]["exit"]["exitCode"], 74, "{exited}");
    assert_eq!(exited["details"]["exit"]["oomKilled"], false);
    w.start_by_hand().await;
    let list = wait_events(&client, &id, |e| {
        !of_type(e, "started_by_engine").is_empty()
    })
    .await;
    // Podman writes a `die` when it has cleaned up after the container, which may come after the
    // next start's event: the two are both there, in the order the engine told them.
    let mut behind: Vec<&str> = types(&list)[9..].to_vec();
    behind.sort();
    assert_eq!(behind, ["exited", "started_by_engine"], "{list:#?}");
    // The agent's own stops and starts made neither.
    assert_eq!(of_type(&list, "exited").len(), 1);

    assert_eq!(client.delete(&id).await.status, 204);
    let gone = events(&client, &id, "").await;
    assert_eq!(gone.status, 404, "{gone:?}");
    assert_eq!(gone.body["error"], "app_not_found", "{gone:?}");
}

#[tokio::test]
async fn a_crash_at_boot_is_a_failed_start_and_an_oom_kill_says_so() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // `once`: the first run is normal, every later start exits at once with 3.
    let (_w, id) = client.running_app("once").await;
    assert_eq!(client.stop(&id).await.status, 200);
    let a = client.start(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    // The run exits at once with 3: inside the start's boot check, a failed start with its exit;
    // just after it, a start, then an exit on its own. Never both, never neither.
    let crashed_in_start = a.body["lastStart"]["outcome"] == "exited";
    let list = wait_events(&client, &id, |e| {
        !of_type(e, "start_failed").is_empty() || !of_type(e, "exited").is_empty()
    })
    .await;
    let (failed, exited) = (of_type(&list, "start_failed"), of_type(&list, "exited"));
    if crashed_in_start {
        assert_eq!(failed[0]["details"]["outcome"], "exited", "{list:#?}");
        assert_eq!(failed[0]["details"]["exit"]["exitCode"], 3, "{list:#?}");
        assert!(
            exited.is_empty(),
            "the crash belonged to the start: {list:#?}"
        );
    } else {
        assert_eq!(exited[0]["details"]["exit"]["exitCode"], 3, "{list:#?}");
        assert!(failed.is_empty(), "{list:#?}");
        assert_eq!(of_type(&list, "started").len(), 1, "{list:#?}");
    }

    // A container the engine cannot start (its program does not exist): a failed start with why.
    let broken = Workload::create_with("exit", |body| {
        body.cmd = Some(vec!["/no-such-program".into()]);
    })
    .await;
    let id = app_id();
    client.register(&id, &broken.name).await;
    let a = client.start(&id).await;
    assert!(a.status >= 500, "the engine's refusal: {a:?}");
    let r = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(r.body["lastStart"]["outcome"], "failed", "{r:?}");
    let list = wait_events(&client, &id, |e| !of_type(e, "start_failed").is_empty()).await;
    let failed = of_type(&list, "start_failed")[0];
    assert_eq!(failed["details"]["outcome"], "failed", "{failed}");
    assert!(failed["details"]["error"].is_string(), "{failed}");
    assert_eq!(
        types(&list),
        ["registered", "start_requested", "start_failed"]
    );

    // 8 MiB of memory, and the workload allocates without end after 300 ms.
    let w = Workload::start_with("grow=300", |body| {
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        host.memory = Some(8 * 1024 * 1024);
        host.memory_swap = Some(8 * 1024 * 1024);
    })
    .await;
    let id = app_id();
    client.register(&id, &w.name).await;
    let list = wait_events(&client, &id, |e| !of_type(e, "exited").is_empty()).await;
    let exited = of_type(&list, "exited")[0];
    assert_eq!(exited["details"]["exit"]["exitCode"], 137, "{exited}");
    // Podman 4.3 with runc on this host's cgroup v1 does not tell an OOM kill from a SIGKILL.
    if !engine_is_podman().await {
        assert_eq!(exited["details"]["exit"]["oomKilled"], true, "{exited}");
    }
}

#[tokio::test]
async fn pages_go_newest_first_and_bad_limits_are_refused() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    for _ in 0..12 {
        assert_eq!(client.restart(&id).await.status, 200);
    }
    // 1 + 12 × 4 events.
    let all = wait_events(&client, &id, |e| e.len() >= 49).await;
    assert_eq!(all.len(), 49);
    let first = events(&client, &id, "").await;
    assert_eq!(first.status, 200);
    let page = first.body["events"].as_array().unwrap();
    assert_eq!(page.len(), 20, "the default page");
    assert_eq!(first.body["hasMore"], true);
    assert_eq!(page[0], all[48], "newest first");
    // Walk back with `before`: every event once, in order.
    let mut seen = Vec::new();
    let mut before = None::<u64>;
    loop {
        let q = match before {
            Some(g) => format!("?limit=7&before={g}"),
            None => "?limit=7".into(),
        };
        let a = events(&client, &id, &q).await;
        assert_eq!(a.status, 200, "{a:?}");
        let page = a.body["events"].as_array().unwrap().clone();
        assert!(page.len() <= 7);
        before = page.last().map(|e| e["generation"].as_u64().unwrap());
        seen.extend(page);
        if a.body["hasMore"] == false {
            break;
        }
    }
    seen.reverse();
    assert_eq!(seen, all);
    let max = events(&client, &id, "?limit=100").await;
    assert_eq!(max.body["events"].as_array().unwrap().len(), 49);
    assert_eq!(max.body["hasMore"], false);
    for bad in [
        "?limit=0",
        "?limit=101",
        "?limit=x",
        "?before=0",
        "?before=-3",
        "?after=3",
    ] {
        let a = events(&client, &id, bad).await;
        assert_eq!(a.status, 400, "{bad}: {a:?}");
        assert_eq!(a.body["error"], "bad_request", "{bad}: {a:?}");
        assert!(a.body["message"].is_string(), "{a:?}");
    }
    let none = events(&client, "never-registered", "").await;
    assert_eq!(none.status, 404, "{none:?}");
}

#[tokio::test]
async fn only_those_who_may_read_the_app_see_its_history() {
    let agent = agent_with_users();
    let client = agent.client();
    let (_w, id) = team_app(&client, Value::Null).await;
    let owner = events(&as_user(&client, OWNER), &id, "").await;
    assert_eq!(owner.status, 200, "{owner:?}");
    assert_eq!(
        types(owner.body["events"].as_array().unwrap()),
        ["registered"]
    );
    let stranger = events(&as_user(&client, STRANGER), &id, "").await;
    assert_eq!(
        stranger.status, 404,
        "hidden as on GET /v1/apps/{{id}}: {stranger:?}"
    );
    let mut nobody = client.clone();
    nobody.token = "not-a-token".into();
    let a = events(&nobody, &id, "").await;
    assert_eq!(a.status, 401, "{a:?}");
}

#[tokio::test]
async fn a_delivered_history_keeps_its_last_per_app_events_and_every_one_was_reported() {
    let receiver = Receiver::start().await;
    let agent = AgentProcess::start_with(AgentOptions {
        report_url: Some(receiver.url()),
        extra_config: "[history]\nper_app = 5\n".into(),
        ..Default::default()
    });
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    for _ in 0..3 {
        assert_eq!(client.restart(&id).await.status, 200);
    }
    // 13 events, all delivered; once acknowledged, the app keeps its last 5.
    let delivered = |r: &Receiver| {
        let mut by_generation = BTreeMap::new();
        for (app, _, change) in r.acknowledged() {
            if app == id {
                for e in change["events"].as_array().cloned().unwrap_or_default() {
                    by_generation.insert(e["generation"].as_u64().unwrap(), e);
                }
            }
        }
        by_generation
    };
    receiver
        .wait(|| (delivered(&receiver).len() >= 13).then_some(()))
        .await;
    let delivered = delivered(&receiver);
    assert_eq!(delivered.len(), 13, "{delivered:#?}");
    let kept = wait_events(&client, &id, |e| e.len() <= 5).await;
    let newest: Vec<&Value> = delivered.values().rev().take(5).rev().collect();
    assert_eq!(kept.iter().collect::<Vec<_>>(), newest);
    // Each change carried its app's events up to its own generation, in order.
    for (app, g, change) in receiver.acknowledged() {
        let mut last = 0;
        for e in change["events"].as_array().cloned().unwrap_or_default() {
            let eg = e["generation"].as_u64().unwrap();
            assert!(eg > last && eg <= g, "{app}: {change:#}");
            last = eg;
        }
    }
    // A deletion's event goes with its tombstone.
    assert_eq!(client.delete(&id).await.status, 204);
    let gone = receiver.wait_change(&id, |_, c| c["deleted"] == true).await;
    assert_eq!(gone["events"][0]["type"], "deleted", "{gone:#}");
    assert_eq!(
        gone["events"][0]["generation"], gone["generation"],
        "{gone:#}"
    );
    receiver.assert_in_order();
}

#[tokio::test]
async fn every_exit_of_a_crash_loop_reaches_the_control_plane_across_an_outage_and_a_kill_9() {
    let receiver = Receiver::start().await;
    let mut agent = AgentProcess::start_with(AgentOptions {
        report_url: Some(receiver.url()),
        ..Default::default()
    });
    let client = agent.client();
    // Six crashes under `always` (the engine's backoff: 100 ms, doubling), then it runs.
    const CRASHES: i64 = 6;
    let w = Workload::create_with(&format!("crash={CRASHES}"), |body| {
        body.host_config
            .get_or_insert_with(HostConfig::default)
            .restart_policy = Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        });
    })
    .await;
    let id = app_id();
    client.register(&id, &w.name).await;
    // The control plane is down for the whole loop.
    receiver.set_mode(Mode::Answer(503));
    w.start_by_hand().await;
    // The agent dies in the middle of the loop, once it has seen an exit, and comes back later.
    wait_events(&client, &id, |e| !of_type(e, "exited").is_empty()).await;
    agent.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.restart();
    let client = agent.client();
    w.wait_logs("ready", PATIENCE).await;
    receiver.set_mode(Mode::Accept);
    let restarts = || async {
        w.inspect()
            .await
            .and_then(|c| c.restart_count)
            .unwrap_or_default()
    };
    assert_eq!(
        restarts().await,
        CRASHES,
        "the engine restarted it after each crash"
    );
    // Every exit the engine counted reaches the control plane, each with its code.
    let exits = || {
        let mut codes = BTreeMap::new();
        for (app, _, change) in receiver.acknowledged() {
            if app == id {
                for e in change["events"].as_array().cloned().unwrap_or_default() {
                    if e["type"] == "exited" {
                        codes.insert(
                            e["generation"].as_u64().unwrap(),
                            e["details"]["exit"]["exitCode"].as_i64().unwrap(),
                        );
                    }
                }
            }
        }
        codes
    };
    receiver
        .wait(|| (exits().len() as i64 >= CRASHES).then_some(()))
        .await;
    let mut codes: Vec<i64> = exits().into_values().collect();
    codes.sort();
    assert_eq!(
        codes,
        (11..=10 + CRASHES).collect::<Vec<_>>(),
        "each exit once"
    );
    // And the record says how many times the engine restarted it.
    let record = receiver
        .wait_change(&id, |_, c| c["record"]["restartCount"] == CRASHES)
        .await;
    assert_eq!(record["record"]["currentResourceMetrics"]["online"], true);
    let starts = of_type(
        &wait_events(&client, &id, |e| {
            of_type(e, "started_by_engine").len() as i64 > CRASHES
        })
        .await,
        "started_by_engine",
    )
    .len() as i64;
    assert_eq!(
        starts,
        CRASHES + 1,
        "the start by hand, then one per restart"
    );
    receiver.assert_in_order();
}
