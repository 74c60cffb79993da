//! The agent's own life: SIGTERM lets stops under way finish, and SIGHUP reloads tokens without
//! dropping connections. (`kill -9` is `tests/kill9.rs`'s.)

use std::time::{Duration, Instant};

use crate::support::{AgentProcess, NODE_ID, write_tokens};
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
