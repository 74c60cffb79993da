//! The agent's own life: SIGTERM lets stops under way finish, SIGHUP reloads tokens without dropping
//! connections, and `kill -9` at any instant of a stop, a start or a restart loses nothing and
//! leaves no record untrue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::held::HeldEngine;
use common::{AgentOptions, AgentProcess, Client, NODE_ID, Workload, stored, write_tokens};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_stops_under_way_finish_then_exits_0() {
    let mut agent = AgentProcess::start();
    let client = agent.client();
    let (w1, id1) = client.running_app("slow=2000").await;
    let (w2, id2) = client.running_app("slow=2000").await;
    // One stop waits for its answer; the other was accepted with 202 and runs in the background.
    let waiting = {
        let (client, id) = (client.clone(), id1.clone());
        tokio::spawn(async move { client.stop(&id).await })
    };
    let a = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/apps/{id2}/stop/")))
                .header("Authorization", format!("Token {}", client.token))
                .form(&[("lambda_instance_id", NODE_ID)]),
        )
        .await;
    assert_eq!(a.status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(w1.logs().await.contains("signal 15") && w2.logs().await.contains("signal 15")) {
        assert!(Instant::now() < deadline, "the stops never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.signal("-TERM");
    let answered = waiting.await.unwrap();
    assert_eq!(
        answered.status, 200,
        "the stop under way finished: {answered:?}"
    );
    assert_eq!(agent.wait_exit(), Some(0));
    assert!(!w1.running().await && !w2.running().await);

    agent.restart();
    let client = agent.client();
    for id in [&id1, &id2] {
        let r = client.get(&format!("/v1/apps/{id}")).await.body;
        assert_eq!(r["currentResourceMetrics"]["online"], false, "{r:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
        assert_eq!(r["lastExit"]["exitCode"], 0);
    }
}

/// One HTTP/1.1 request on an open connection; returns the status.
async fn request_on(stream: &mut tokio::net::TcpStream, token: &str) -> u16 {
    let req =
        format!("GET /v1/apps HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    // Read the head, then exactly the body its Content-Length gives.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the connection was dropped");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn sighup_reloads_tokens_and_keeps_connections() {
    let agent = AgentProcess::start();
    let old = agent.token.clone();
    let mut stream = tokio::net::TcpStream::connect(agent.base.trim_start_matches("http://"))
        .await
        .unwrap();
    assert_eq!(request_on(&mut stream, &old).await, 200);

    // A new tokens file, without the old token.
    write_tokens(
        &agent.tokens_path(),
        &[("rotated", "the-new-token", "operator", None)],
    );
    agent.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while request_on(&mut stream, "the-new-token").await != 200 {
        assert!(Instant::now() < deadline, "the new token never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        request_on(&mut stream, &old).await,
        401,
        "the old token is gone"
    );

    // A broken file keeps the tokens in force, and the log says why.
    std::fs::write(agent.tokens_path(), "this is [not valid").unwrap();
    agent.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.logged(&["not reloaded"]).is_empty() {
        assert!(Instant::now() < deadline, "the refusal was never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        request_on(&mut stream, "the-new-token").await,
        200,
        "same connection, same tokens"
    );
}

/// Whether every record is true against the engine: its container's state matches `online`, an
/// offline app has its exit (unless its container is gone), and no stop or start is left under way.
async fn all_true(client: &Client, containers: &[(String, String)]) -> Result<(), String> {
    let list = client.get("/v1/apps?limit=500").await;
    if list.status != 200 {
        return Err(format!("list answered {}", list.status));
    }
    let records = list.body["applications"].as_array().unwrap().clone();
    if records.len() != containers.len() {
        return Err(format!(
            "{} records for {} apps",
            records.len(),
            containers.len()
        ));
    }
    let docker = common::docker().await;
    for (id, container) in containers {
        let record = records
            .iter()
            .find(|r| r["_id"] == id.as_str())
            .ok_or(format!("{id} lost"))?;
        if record["lastStop"]["outcome"] == "stopping" {
            return Err(format!("{id}: a stop is still recorded as under way"));
        }
        let start = &record["lastStart"];
        match start["outcome"].as_str() {
            _ if start.is_null() => {}
            Some("starting") => {
                return Err(format!("{id}: a start is still recorded as under way"));
            }
            Some("started" | "exited" | "failed" | "interrupted") => {}
            other => return Err(format!("{id}: a start ended as {other:?}: {record}")),
        }
        let running = docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        let online = record["currentResourceMetrics"]["online"].as_bool();
        if online != Some(running) {
            return Err(format!(
                "{id}: online {online:?} but running {running}: {record}"
            ));
        }
        if !running && !record["lastExit"].is_object() {
            return Err(format!("{id}: offline without its exit: {record}"));
        }
        // A stop that began (its intent was written) kept its final sample, unless a start came
        // after it (a restart's start has the stop's request time): a new run's figures are its own.
        let began = matches!(
            record["lastStop"]["outcome"].as_str(),
            Some("stopped" | "interrupted" | "already_stopped")
        );
        let started_since = start["requestedAt"]
            .as_str()
            .is_some_and(|s| Some(s) >= record["lastStop"]["requestedAt"].as_str());
        if began && !started_since && !record["currentResourceMetrics"]["memoryUsageBytes"].is_u64()
        {
            return Err(format!("{id}: its final sample was lost: {record}"));
        }
    }
    Ok(())
}

/// A seed, printed so that a failing run can be told apart, and a small generator of numbers below
/// a bound drawn from it.
fn random_source() -> (u64, impl FnMut(u64) -> u64) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 loop seed {seed}");
    let mut rng = seed;
    let next = move |bound: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % bound
    };
    (seed, next)
}

/// The kill -9 loops drive the engine hard, with dozens of containers each: side by side on a small
/// machine, the engine's answers slow down past the agent's call timeout (a 503 that is no fault of
/// the agent's), so they take turns.
static ENGINE_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (up to 20 s) until [`all_true`] holds, failing with `what` and the last reason.
async fn wait_all_true(client: &Client, apps: &[(String, String)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match all_true(client, apps).await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_stops_loses_nothing() {
    const ROUNDS: u64 = 14;
    let _turn = ENGINE_HEAVY.lock().await;
    let (seed, mut next) = random_source();
    let mut agent = AgentProcess::start();
    let mut workloads: Vec<Workload> = Vec::new();
    let mut apps: Vec<(String, String)> = Vec::new();
    for round in 0..ROUNDS {
        let client = agent.client();
        let mut ids = Vec::new();
        for mode in ["ignore", "slow=400", "exit"] {
            let (w, id) = client.running_app(mode).await;
            apps.push((id.clone(), w.name.clone()));
            ids.push(id);
            workloads.push(w);
        }
        for id in &ids {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move {
                let _ = client
                    .send(client.authed(
                        reqwest::Method::POST,
                        &format!("/v1/apps/{id}/stop?timeout=1"),
                    ))
                    .await;
            });
        }
        let wait = next(3000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.kill9();
        agent.restart();
        let what = format!("round {round} (killed after {wait} ms, seed {seed})");
        wait_all_true(&agent.client(), &apps, &what).await;
    }
    // Every record still reads whole, in the documented shape.
    let client = agent.client();
    for (id, _) in &apps {
        read_whole(&client, id).await;
    }
}

/// The record of `id`, which must read whole, in the documented shape.
async fn read_whole(client: &Client, id: &str) -> Value {
    let r: Value = client.get(&format!("/v1/apps/{id}")).await.body;
    assert_eq!(r["_id"], id);
    assert!(
        r["currentResourceMetrics"]["timestamp"].is_string(),
        "{r:#}"
    );
    assert_eq!(r["environmentVariables"][0]["key"], "API_PORT");
    r
}

/// `POST path` in the background, through /v1 as the SDK sends it or through ~okeanos with this
/// node's instance id; whatever comes back is ignored, since the agent may die under it.
fn fire(client: &Client, path: String, okeanos: bool) {
    let client = client.clone();
    tokio::spawn(async move {
        let req = client.http.post(client.url(&path));
        let req = if okeanos {
            req.header("Authorization", format!("Token {}", client.token))
                .form(&[("lambda_instance_id", NODE_ID)])
        } else {
            req.bearer_auth(&client.token)
                .header("Content-Type", "application/json")
        };
        let _ = req.send().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_starts_and_restarts_loses_nothing() {
    const ROUNDS: u64 = 6;
    let _turn = ENGINE_HEAVY.lock().await;
    let (seed, mut next) = random_source();
    let mut agent = AgentProcess::start();
    let mut workloads: Vec<Workload> = Vec::new();
    let mut apps: Vec<(String, String)> = Vec::new();
    let mut fired = [0usize; 4];
    for round in 0..ROUNDS {
        let client = agent.client();
        // Each round brings two running apps, and two that the agent stopped: `once` exits at
        // every start after its first run, as a container that crashes at boot.
        for mode in ["ignore", "slow=400", "exit", "once"] {
            let (w, id) = client.running_app(mode).await;
            apps.push((id, w.name.clone()));
            workloads.push(w);
        }
        let stops = apps[apps.len() - 2..].iter().map(|(id, _)| {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move { client.stop_query(&id, "?timeout=1").await })
        });
        for stop in futures_util::future::join_all(stops).await {
            let stop = stop.unwrap();
            assert_eq!(stop.status, 200, "{stop:?}");
        }
        // Every app of this round and of the rounds before gets a stop, a start or a restart
        // (some are left alone): a stopped app is started through either route, a running one
        // restarted or stopped, with a one-second grace so that kills land in every phase.
        for (w, (id, _)) in workloads.iter().zip(&apps) {
            if next(4) == 0 {
                continue;
            }
            let (kind, path, okeanos) = if w.running().await {
                match next(3) {
                    0 => (0, format!("/v1/apps/{id}/stop?timeout=1"), false),
                    _ => (1, format!("/v1/apps/{id}/restart?timeout=1"), false),
                }
            } else {
                match next(2) {
                    0 => (2, format!("/v1/apps/{id}/start"), false),
                    _ => (3, format!("/api/apps/{id}/start/"), true),
                }
            };
            fired[kind] += 1;
            fire(&client, path, okeanos);
        }
        let wait = next(2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.kill9();
        agent.restart();
        let what = format!("round {round} (killed after {wait} ms, seed {seed})");
        wait_all_true(&agent.client(), &apps, &what).await;
    }
    // Every record still reads whole, in the documented shape; the starts ended one way or another.
    let client = agent.client();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (id, _) in &apps {
        let r = read_whole(&client, id).await;
        if let Some(outcome) = r["lastStart"]["outcome"].as_str() {
            assert!(r["lastStart"]["finishedAt"].is_string(), "{r:#}");
            *outcomes.entry(outcome.to_owned()).or_default() += 1;
        }
    }
    eprintln!(
        "fired {} stops, {} restarts, {} /v1 starts, {} ~okeanos starts; last starts: {outcomes:?}",
        fired[0], fired[1], fired[2], fired[3]
    );
    assert!(!outcomes.is_empty(), "no start ever began (seed {seed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_start_or_a_restart_closes_it_as_interrupted() {
    let engine = HeldEngine::start();
    let mut agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(engine.url()),
        ..Default::default()
    });
    let client = agent.client();
    // Two apps the agent stopped, whose starts (one through each route) the engine holds back, and
    // one running app whose restart is in its stop half: its container ignores SIGTERM, and the
    // grace period outlasts the test.
    let (w1, id1) = client.running_app("exit").await;
    let (w2, id2) = client.running_app("exit").await;
    let (w3, id3) = client.running_app("ignore").await;
    for id in [&id1, &id2] {
        let stopped = client.stop_query(id, "?timeout=1").await;
        assert_eq!(stopped.status, 200, "{stopped:?}");
    }
    let hold = engine.hold_starts().await;
    fire(&client, format!("/v1/apps/{id1}/start"), false);
    fire(&client, format!("/api/apps/{id2}/start/"), true);
    fire(
        &client,
        format!("/v1/apps/{id3}/restart?timeout=120"),
        false,
    );
    engine.wait_starts(2).await;
    w3.wait_logs("signal 15", Duration::from_secs(30)).await;
    for id in [&id1, &id2] {
        assert_eq!(
            stored(&client, id).await["lastStart"]["outcome"],
            "starting"
        );
    }
    let intent = stored(&client, &id3).await;
    assert_eq!(intent["lastStop"]["outcome"], "stopping", "{intent:#}");
    assert_eq!(intent["lastStart"]["outcome"], "starting", "{intent:#}");

    agent.kill9();
    agent.restart();
    let client = agent.client();
    let apps: Vec<(String, String)> = [(&id1, &w1), (&id2, &w2), (&id3, &w3)]
        .iter()
        .map(|(id, w)| (id.to_string(), w.name.clone()))
        .collect();
    wait_all_true(&client, &apps, "after kill -9 during starts and a restart").await;
    // The starts never reached the engine: the apps are offline, as their stops left them.
    for (id, w) in [(&id1, &w1), (&id2, &w2)] {
        let r = stored(&client, id).await;
        assert_eq!(r["lastStart"]["outcome"], "interrupted", "{r:#}");
        assert!(r["lastStart"]["finishedAt"].is_string(), "{r:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
        assert_eq!(r["currentResourceMetrics"]["online"], false, "{r:#}");
        assert!(r["lastExit"].is_object(), "{r:#}");
        assert!(!w.running().await);
    }
    // The restart died in its stop: both halves are closed, and the container still runs.
    let r = stored(&client, &id3).await;
    assert_eq!(r["lastStop"]["outcome"], "interrupted", "{r:#}");
    assert_eq!(r["lastStart"]["outcome"], "interrupted", "{r:#}");
    assert_eq!(r["lastStart"]["requestedAt"], r["lastStop"]["requestedAt"]);
    assert_eq!(r["currentResourceMetrics"]["online"], true, "{r:#}");
    assert!(w3.running().await);
    // The held starts of the dead agent must not reach the containers once let through.
    for w in [&w1, &w2, &w3] {
        w.remove().await;
    }
    drop(hold);
}
