//! The world changing behind the agent's back: containers that die on their own or are stopped and
//! started by a person, followed through the engine's events; and a stopped app that stays stopped
//! whatever its restart policy.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::{AgentProcess, Client, Workload, app_body, app_id, stored};
use bollard::models::{HostConfig, RestartPolicy, RestartPolicyNameEnum};
use serde_json::Value;

async fn wait_listed(
    client: &Client,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = stored(client, id).await;
        if check(&record) {
            return record;
        }
        assert!(Instant::now() < deadline, "{what} never showed: {record:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_container_killed_by_the_oom_killer_updates_its_record() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // Allocates without end 5 s after start, under a 64 MiB limit: registered while it runs.
    let (_w, id) = client.running_app("grow=5000").await;
    assert_eq!(
        stored(&client, &id).await["currentResourceMetrics"]["online"],
        true
    );
    let record = wait_listed(&client, &id, "the OOM kill", |r| r["lastExit"].is_object()).await;
    assert_eq!(record["currentResourceMetrics"]["online"], false);
    // Podman 4.3 with runc on this host's cgroup v1 does not tell an OOM kill from a SIGKILL.
    if !support::engine_is_podman().await {
        assert_eq!(record["lastExit"]["oomKilled"], true, "{record:#}");
    }
    assert_eq!(record["lastExit"]["exitCode"], 137);
    assert!(record["currentResourceMetrics"]["uptime"].is_u64());
}

#[tokio::test]
async fn a_persons_docker_stop_and_docker_start_are_followed() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    // The agent follows the engine's one-a-second readings from registration on; this leaves
    // the stream several beats, on a busy machine too, to deliver one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.stop_by_hand().await;
    let record = wait_listed(&client, &id, "the stop", |r| {
        r["currentResourceMetrics"]["online"] == false && r["lastExit"].is_object()
    })
    .await;
    assert_eq!(record["lastExit"]["exitCode"], 0);
    assert!(record.get("lastStop").is_none(), "not a stop by the agent");
    let figures = &record["currentResourceMetrics"];
    assert!(
        figures["memoryUsageBytes"].as_u64().unwrap() > 0,
        "its last sampled figures: {record:#}"
    );
    assert_eq!(figures["memoryLimitBytes"].as_u64(), Some(64 * 1024 * 1024));
    w.start_by_hand().await;
    let record = wait_listed(&client, &id, "the start", |r| {
        r["currentResourceMetrics"]["online"] == true
    })
    .await;
    assert!(w.running().await);
    assert!(
        record["currentResourceMetrics"]
            .get("memoryUsageBytes")
            .is_none(),
        "a new run starts without the last run's figures: {record:#}"
    );
}

#[tokio::test]
async fn a_stopped_app_stays_stopped_whatever_its_restart_policy() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let w = Workload::start_with("ignore", |body| {
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        host.restart_policy = Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        });
    })
    .await;
    let id = app_id();
    client.register_body(&id, app_body(&id, &w.name)).await;
    // A custom signal: on this engine it is sent with a kill, which a restart policy would answer
    // by starting the container again.
    let a = client.stop_query(&id, "?signal=SIGUSR1&timeout=5").await;
    assert_eq!(a.status, 200, "{a:?}");
    let podman = support::engine_is_podman().await;
    if podman {
        // Podman answers the workload's exit on the signal by restarting it, as its policy says;
        // the stop's `t=0` then kills that run.
        assert!(
            matches!(a.body["lastExit"]["exitCode"].as_i64(), Some(74 | 137)),
            "{a:?}"
        );
    } else {
        assert_eq!(a.body["lastExit"]["exitCode"], 64 + 10);
    }
    let policy = |c: bollard::models::ContainerInspectResponse| {
        c.host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name)
    };
    // Docker restarts an `always` container when the daemon starts, so the agent sets its policy
    // aside; Podman never restarts a container stopped through its API, and cannot change a
    // policy: there it stays.
    let expected = if podman {
        RestartPolicyNameEnum::ALWAYS
    } else {
        RestartPolicyNameEnum::NO
    };
    assert_eq!(policy(w.inspect().await.unwrap()), Some(expected));
    assert_eq!(
        a.body["lastStop"].get("previousRestartPolicy").is_some(),
        !podman,
        "{a:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!w.running().await, "the engine did not bring it back");
    assert_eq!(
        stored(&client, &id).await["currentResourceMetrics"]["online"],
        false
    );

    // A person starting it by hand is respected: the record follows, and the agent leaves it be.
    w.start_by_hand().await;
    wait_listed(&client, &id, "the start by hand", |r| {
        r["currentResourceMetrics"]["online"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(w.running().await, "not fought");
}

/// Milliseconds until the listed record of `id` says `online`, polled every 10 ms.
async fn until_listed_online(client: &Client, id: &str, online: bool) -> f64 {
    let started = Instant::now();
    wait_listed_every(client, id, Duration::from_millis(10), |r| {
        r["currentResourceMetrics"]["online"] == online
    })
    .await;
    started.elapsed().as_secs_f64() * 1000.0
}

async fn wait_listed_every(
    client: &Client,
    id: &str,
    every: Duration,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = stored(client, id).await;
        if check(&record) {
            return;
        }
        assert!(Instant::now() < deadline, "never so: {record:#}");
        tokio::time::sleep(every).await;
    }
}

/// On every engine, however late its events come (Podman's are about a second late), a record
/// tells the truth within half a second of a stop or a start made behind the agent's back: the
/// median of five of each.
#[tokio::test]
async fn records_are_true_within_half_a_second_of_a_change_behind_the_agents_back() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    let (mut stops, mut starts) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        w.stop_by_hand().await;
        stops.push(until_listed_online(&client, &id, false).await);
        w.start_by_hand().await;
        starts.push(until_listed_online(&client, &id, true).await);
    }
    for (what, mut took) in [("stop", stops), ("start", starts)] {
        took.sort_by(f64::total_cmp);
        let median = took[took.len() / 2];
        eprintln!("a {what} by hand showed in the record after {took:.0?} ms (median {median:.0})");
        assert!(median <= 500.0, "a {what} by hand showed after {took:?} ms");
    }
}
