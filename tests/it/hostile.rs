//! Hostile input and clients: odd ids never cause a 5xx or reach a path, every 4xx carries a JSON
//! body, and clients that never finish their headers cannot starve others.

use std::time::{Duration, Instant};

use crate::support::{AgentOptions, AgentProcess, NODE_ID, raw_http};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn odd_ids_are_400_or_404_with_a_json_body() {
    let agent = AgentProcess::start();
    let token = agent.token.clone();
    let long = "a".repeat(10_000);
    let ids = [
        "..",
        "../..",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "%2E%2E%2F",
        "%00",
        "a%00b",
        "%252e%252e",
        "%ff%fe",
        "%",
        "%zz",
        "%20",
        long.as_str(),
    ];
    for id in ids {
        for (method, path, extra) in [
            ("POST", format!("/v1/apps/{id}/stop"), String::new()),
            ("GET", format!("/v1/apps/{id}"), String::new()),
            (
                "PUT",
                format!("/v1/apps/{id}"),
                "{\"containerId\": \"c\"}".to_owned(),
            ),
            ("DELETE", format!("/v1/apps/{id}"), String::new()),
            (
                "POST",
                format!("/api/apps/{id}/stop/"),
                format!("lambda_instance_id={NODE_ID}"),
            ),
        ] {
            let auth = if path.starts_with("/api") {
                "Token"
            } else {
                "Bearer"
            };
            let content_type = if path.starts_with("/api") {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: {auth} {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{extra}",
                extra.len()
            );
            let (status, body) = raw_http(&agent.base, request.as_bytes()).await;
            let shown = &path[..path.len().min(60)];
            assert!(
                status == 400 || status == 404,
                "{method} {shown}: {status} {body}"
            );
            let parsed: Result<Value, _> = serde_json::from_str(&body);
            assert!(parsed.is_ok(), "{method} {shown}: not JSON: {body:?}");
        }
    }
    // A space in the request line is not HTTP at all: the HTTP parser refuses it (400, no body,
    // before any route is reached), and the agent serves on.
    let (status, _) = raw_http(
        &agent.base,
        b"POST /v1/apps/a b/stop HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    // The agent serves on.
    let (status, _) = raw_http(
        &agent.base,
        b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_finish_their_headers_cannot_starve_others() {
    let agent = AgentProcess::start_with(AgentOptions {
        max_connections: Some(4),
        header_timeout_secs: Some(1),
        ..Default::default()
    });
    // Take every connection slot, each with a request whose headers never end.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(agent.base.trim_start_matches("http://"))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A well-behaved client still gets its answer, once the slow ones are cut off.
    let started = Instant::now();
    let (status, body) = raw_http(
        &agent.base,
        b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // No Content-Length: the limit holds on the bytes actually sent.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let a = client
        .send(
            client
                .authed(reqwest::Method::PUT, "/v1/apps/some-app")
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.body["error"], "payload_too_large");
}
