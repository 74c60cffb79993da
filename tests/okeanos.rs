//! The ~okeanos Lambda on Demand route against the real agent and engine: the document's own curl
//! line, the ordered checks, every encoding of `lambda_instance_id`, and the stop in the background.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{AgentProcess, Answer, Client, NODE_ID};
use reqwest::Method;
use serde_json::{Value, json};

const ACCEPTED: &str = "Your request to stop the specified application has been accepted";

fn stop_path(id: &str) -> String {
    format!("/api/apps/{id}/stop/")
}

fn assert_lod_error(a: &Answer, status: u16, detail: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(
        a.body,
        json!({"errors": [{"status": status, "detail": detail}]}),
        "{a:?}"
    );
}

fn assert_accepted(a: &Answer) {
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(
        a.body,
        json!({"status": {"short-description": ACCEPTED, "code": 202}})
    );
}

/// A form-encoded LoD request with a `Token` header.
async fn lod_stop(client: &Client, token: &str, id: &str, instance: Option<&str>) -> Answer {
    let mut req = client
        .http
        .post(client.url(&stop_path(id)))
        .header("Authorization", format!("Token {token}"));
    if let Some(instance) = instance {
        req = req.form(&[("lambda_instance_id", instance)]);
    }
    client.send(req).await
}

/// Polls the record until it says the container is offline.
async fn wait_offline(client: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = client.get(&format!("/v1/apps/{id}")).await;
        if a.body["currentResourceMetrics"]["online"] == false && a.body["lastExit"].is_object() {
            return a.body;
        }
        assert!(Instant::now() < deadline, "the stop never landed: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_documents_curl_line_works_verbatim() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Token {}", client.token),
            "-F",
            &format!("lambda_instance_id={NODE_ID}"),
            &format!("{}/api/apps/{id}/stop/", agent.base),
        ])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "202", "{text}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["status"]["short-description"], ACCEPTED);
    assert_eq!(body["status"]["code"], 202);
    let record = wait_offline(&client, &id).await;
    assert_eq!(record["lastExit"]["exitCode"], 0);
    assert!(
        record["currentResourceMetrics"]["memoryUsageBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(!w.running().await);
}

#[tokio::test]
async fn every_encoding_of_the_instance_id() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let token = client.token.clone();
    let post = |id: &str| {
        client
            .http
            .post(client.url(&stop_path(id)))
            .header("Authorization", format!("Token {token}"))
    };
    // Url-encoded form.
    let (w1, id1) = client.running_app("exit").await;
    assert_accepted(
        &client
            .send(post(&id1).form(&[("lambda_instance_id", NODE_ID)]))
            .await,
    );
    // JSON.
    let (w2, id2) = client.running_app("exit").await;
    assert_accepted(
        &client
            .send(post(&id2).json(&json!({"lambda_instance_id": NODE_ID})))
            .await,
    );
    // Query, and without the trailing slash.
    let (w3, id3) = client.running_app("exit").await;
    let url = client.url(&format!(
        "/api/apps/{id3}/stop?lambda_instance_id={NODE_ID}"
    ));
    let a = client
        .send(
            client
                .http
                .post(url)
                .header("Authorization", format!("Token {token}")),
        )
        .await;
    assert_accepted(&a);
    // Multipart is the curl line's own (see the_documents_curl_line_works_verbatim).
    for (w, id) in [(&w1, &id1), (&w2, &id2), (&w3, &id3)] {
        wait_offline(&client, id).await;
        assert!(!w.running().await);
    }
}

#[tokio::test]
async fn the_checks_run_in_the_lod_order() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let token = client.token.clone();
    let (w, id) = client.running_app("ignore").await;

    // 1. The token comes first, before anything else is looked at.
    let a = lod_stop(&client, "wrong-token", "no-such-app", None).await;
    assert_lod_error(
        &a,
        401,
        "Unauthorized. Request failed because user provided an invalid token.",
    );
    let a = client
        .send(client.http.post(client.url(&stop_path(&id))))
        .await;
    assert_eq!(a.status, 401);
    // 2. The instance id must be given.
    let a = lod_stop(&client, &token, "no-such-app", None).await;
    assert_lod_error(&a, 400, "No lambda instance id provided.");
    // 3. It must be this node.
    let a = lod_stop(&client, &token, "no-such-app", Some("another-node")).await;
    assert_lod_error(&a, 404, "The specified lambda instance doesn't exist.");
    // 4. The application must be registered.
    let a = lod_stop(&client, &token, "no-such-app", Some(NODE_ID)).await;
    assert_lod_error(&a, 404, "The specified application doesn't exist.");
    let a = lod_stop(&client, &token, "bad%20id", Some(NODE_ID)).await;
    assert_lod_error(&a, 404, "The specified application doesn't exist.");
    assert!(w.running().await, "no refusal touched the container");

    // 7. A stop under way: the first is accepted, the second refused while it runs.
    assert_accepted(&lod_stop(&client, &token, &id, Some(NODE_ID)).await);
    let a = lod_stop(&client, &token, &id, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "A stop of the specified application on the specified lambda instance is already in progress.",
    );
    wait_offline(&client, &id).await;
    // Logged once the app is free again.
    agent.wait_logged(&[": stopped ", &format!("app={id}")], 1);

    // 6. Already stopped by the agent.
    let a = lod_stop(&client, &token, &id, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "The specified application on the specified lambda instance has already been stopped.",
    );

    // 7. Not running although the record says online: the job slot is free.
    let (w2, id2) = client.running_app("exit").await;
    assert_eq!(
        client.get(&format!("/v1/apps/{id2}")).await.body["currentResourceMetrics"]["online"],
        true
    );
    w2.stop_by_hand().await;
    let a = lod_stop(&client, &token, &id2, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "The job slot of the specified application on the specified lambda instance is free: the application is not running.",
    );

    // 5. Its container must exist on this node.
    let (w3, id3) = client.running_app("exit").await;
    w3.remove().await;
    let a = lod_stop(&client, &token, &id3, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        404,
        "The specified application is not deployed on the specified lambda instance.",
    );

    // 5. comes before 6.: stopped by the agent, then removed, it is not deployed any more.
    w.remove().await;
    let a = lod_stop(&client, &token, &id, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        404,
        "The specified application is not deployed on the specified lambda instance.",
    );

    // Unknown methods on the route answer in the same shape.
    let a = client
        .send(
            client
                .http
                .get(client.url(&stop_path(&id2)))
                .header("Authorization", format!("Token {token}")),
        )
        .await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.body["errors"][0]["status"], 405, "{a:?}");

    // Bodies over 1 MiB and unknown media types are refused in the same shape.
    let a = client
        .send(
            client
                .authed(Method::POST, &stop_path(&id2))
                .header("Authorization", format!("Token {token}"))
                .header("Content-Type", "application/json")
                .body(vec![b' '; 1024 * 1024 + 1]),
        )
        .await;
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.body["errors"][0]["detail"].is_string());
    let a = client
        .send(
            client
                .http
                .post(client.url(&stop_path(&id2)))
                .header("Authorization", format!("Token {token}"))
                .header("Content-Type", "text/plain")
                .body("lambda_instance_id=x"),
        )
        .await;
    assert_eq!(a.status, 415, "{a:?}");
}

#[tokio::test]
async fn the_202_comes_back_before_a_slow_container_finishes() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("slow=6000").await;
    let started = Instant::now();
    let a = lod_stop(&client, &client.token, &id, Some(NODE_ID)).await;
    let answered = started.elapsed();
    assert_accepted(&a);
    // Well inside the six seconds the container takes, with room for a busy machine.
    assert!(
        answered < Duration::from_secs(4),
        "answered after {answered:?}, not at once"
    );
    assert!(
        w.running().await,
        "still cleaning up when the 202 came back"
    );
    let record = wait_offline(&client, &id).await;
    assert!(started.elapsed() >= Duration::from_secs(6));
    assert_eq!(record["lastStop"]["outcome"], "stopped", "{record:#}");
    assert_eq!(record["lastExit"]["exitCode"], 0, "graceful, not killed");
    assert_eq!(record["lastExit"]["killed"], false);
    assert!(!w.running().await);
    assert!(w.logs().await.contains("signal 15"));
}

#[tokio::test]
async fn both_routes_share_one_exclusion_per_app() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // Slow enough that the ~okeanos request surely lands while the /v1 stop waits, yet inside
    // the default ten-second grace period.
    let (w, id) = client.running_app("slow=6000").await;
    let v1 = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.stop(&id).await })
    };
    // Wait until the /v1 stop has begun: the container received its SIGTERM.
    w.wait_logs("signal 15", Duration::from_secs(10)).await;
    let a = lod_stop(&client, &client.token, &id, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "A stop of the specified application on the specified lambda instance is already in progress.",
    );
    let done = v1.await.unwrap();
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["lastStop"]["outcome"], "stopped");
    assert_eq!(done.body["lastStop"]["by"], common::OPERATOR_TOKEN_NAME);
}
