//! The agent's own life: SIGTERM lets stops under way finish, SIGHUP reloads tokens without dropping
//! connections, and `kill -9` at any instant of a stop loses nothing and leaves no record untrue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{AgentProcess, Client, NODE_ID, Workload, write_tokens};
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
/// offline app has its exit (unless its container is gone), and no stop is left under way.
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
        // A stop that began (its intent was written) kept its final sample.
        let began = matches!(
            record["lastStop"]["outcome"].as_str(),
            Some("stopped" | "interrupted" | "already_stopped")
        );
        if began && !record["currentResourceMetrics"]["memoryUsageBytes"].is_u64() {
            return Err(format!("{id}: its final sample was lost: {record}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_stops_loses_nothing() {
    const ROUNDS: u64 = 14;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 loop seed {seed}");
    let mut rng = seed;
    let mut next = move |bound: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % bound
    };
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
        let client = agent.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match all_true(&client, &apps).await {
                Ok(()) => break,
                Err(why) if Instant::now() > deadline => {
                    panic!("round {round} (killed after {wait} ms, seed {seed}): {why}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    // Every record still reads whole, in the documented shape.
    let client = agent.client();
    for (id, _) in &apps {
        let r: Value = client.get(&format!("/v1/apps/{id}")).await.body;
        assert_eq!(r["_id"], id.as_str());
        assert!(
            r["currentResourceMetrics"]["timestamp"].is_string(),
            "{r:#}"
        );
        assert_eq!(r["environmentVariables"][0]["key"], "API_PORT");
    }
}
