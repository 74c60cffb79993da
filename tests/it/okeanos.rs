//! The ~okeanos Lambda on Demand routes against the real agent and engine: the document's own curl
//! line, the ordered checks, every encoding of `lambda_instance_id`, and the stop and the start in
//! the background.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::held::HeldEngine;
use crate::support::team::{CANNOT, STRANGER, token_name, token_of};
use crate::support::{
    AgentOptions, AgentProcess, Answer, Client, NODE_ID, OPERATOR_TOKEN_NAME, stored,
};
use reqwest::Method;
use serde_json::{Value, json};

const ACCEPTED: &str = "Your request to stop the specified application has been accepted";
const START_ACCEPTED: &str = "Your request to start the specified application has been accepted";

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
    // The stop is still under way. Asked of the record, not of the engine's `Running`: Podman
    // shows a container as not running from the stop's beginning (docs/engines.md).
    let now = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(
        now.body["lastStop"]["outcome"], "stopping",
        "still cleaning up when the 202 came back: {now:?}"
    );
    assert!(now.body["lastExit"].is_null(), "{now:?}");
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
    assert_eq!(done.body["lastStop"]["by"], support::OPERATOR_TOKEN_NAME);
}

// The start: `POST /api/apps/{id}/start/`.

/// The document's curl line, as the LoD document writes it for the stop.
const DOCUMENT_CURL: &str = r#"curl -X POST -H "Authorization: Token tJ3b3f32f23ceuqdoS_TH7m0d6yxmlWL1r2ralKcttY" -F "lambda_instance_id=9ac8e7ab-57f9-48a6-af18-ef8a749b1e8c" 'http://<hostname>/api/apps/7186be3f-22ca-4e59-8e5f-fc381e92a67c/stop/'"#;

fn start_path(id: &str) -> String {
    format!("/api/apps/{id}/start/")
}

fn assert_start_accepted(a: &Answer) {
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(
        a.body,
        json!({"status": {"short-description": START_ACCEPTED, "code": 202}})
    );
}

/// A form-encoded LoD start with a `Token` header.
async fn lod_start(client: &Client, token: &str, id: &str, instance: Option<&str>) -> Answer {
    let mut req = client
        .http
        .post(client.url(&start_path(id)))
        .header("Authorization", format!("Token {token}"));
    if let Some(instance) = instance {
        req = req.form(&[("lambda_instance_id", instance)]);
    }
    client.send(req).await
}

/// A running app that the agent then stopped: ready to be started.
async fn stopped_app(client: &Client, mode: &str) -> (support::Workload, String) {
    let (w, id) = client.running_app(mode).await;
    let stopped = client.stop(&id).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert!(!w.running().await);
    (w, id)
}

/// Polls the record until the start has landed: online, and `lastStart` says started.
async fn wait_started(client: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = client.get(&format!("/v1/apps/{id}")).await;
        if a.body["currentResourceMetrics"]["online"] == true
            && a.body["lastStart"]["outcome"] == "started"
        {
            return a.body;
        }
        assert!(Instant::now() < deadline, "the start never landed: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_documents_curl_line_starts_verbatim() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = stopped_app(&client, "exit").await;
    // The document's line, word for word, with this agent's token, instance, host and app, and
    // `/start/` in place of `/stop/`.
    let line = DOCUMENT_CURL
        .replace("tJ3b3f32f23ceuqdoS_TH7m0d6yxmlWL1r2ralKcttY", &client.token)
        .replace("9ac8e7ab-57f9-48a6-af18-ef8a749b1e8c", NODE_ID)
        .replace("http://<hostname>", &agent.base)
        .replace("7186be3f-22ca-4e59-8e5f-fc381e92a67c", &id)
        .replace("/stop/", "/start/");
    assert!(line.starts_with("curl -X POST -H \"Authorization: Token "));
    let out = Command::new("sh")
        .args(["-c", &line])
        .output()
        .expect("sh and curl are needed for this test (apt-get install curl)");
    assert!(out.status.success(), "{line}: {out:?}");
    let body: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{line} printed no JSON ({e}): {out:?}"));
    assert_eq!(
        body,
        json!({"status": {"short-description": START_ACCEPTED, "code": 202}})
    );
    let record = wait_started(&client, &id).await;
    assert_eq!(record["lastStart"]["by"], OPERATOR_TOKEN_NAME, "{record:#}");
    assert!(record["lastStart"]["finishedAt"].is_string(), "{record:#}");
    assert!(w.running().await);
    // The workload really ran again: after the stop's signal, it said ready anew.
    w.wait_logs("signal 15\nready", Duration::from_secs(10))
        .await;
}

/// A multipart form with one field, as `curl -F` sends it.
fn multipart(field: &str, value: &str) -> (String, Vec<u8>) {
    let boundary = "------------------------node-agent-test-7f3a";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_of_the_instance_id_starts() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let token = client.token.clone();
    let mut started = Vec::new();
    for form in ["multipart", "urlencoded", "json", "query"] {
        for slash in [true, false] {
            let (w, id) = stopped_app(&client, "exit").await;
            let path = if slash {
                format!("/api/apps/{id}/start/")
            } else {
                format!("/api/apps/{id}/start")
            };
            let path = if form == "query" {
                format!("{path}?lambda_instance_id={NODE_ID}")
            } else {
                path
            };
            let req = client
                .http
                .post(client.url(&path))
                .header("Authorization", format!("Token {token}"));
            let req = match form {
                "multipart" => {
                    let (content_type, body) = multipart("lambda_instance_id", NODE_ID);
                    req.header("Content-Type", content_type).body(body)
                }
                "urlencoded" => req.form(&[("lambda_instance_id", NODE_ID)]),
                "json" => req.json(&json!({"lambda_instance_id": NODE_ID})),
                _ => req,
            };
            let a = client.send(req).await;
            assert_eq!(a.status, 202, "{form}, slash {slash}: {a:?}");
            assert_start_accepted(&a);
            started.push((form, slash, w, id));
        }
    }
    // Each start lands in the record in the background.
    for (form, slash, w, id) in &started {
        let record = wait_started(&client, id).await;
        assert_eq!(record["lastStart"]["by"], OPERATOR_TOKEN_NAME, "{record:#}");
        assert_eq!(record["lastStop"]["outcome"], "stopped", "{record:#}");
        assert!(w.running().await, "{form}, slash {slash}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_checks_run_in_the_lod_order() {
    let engine = HeldEngine::silent();
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(engine.url()),
        user_tokens: [CANNOT, STRANGER]
            .iter()
            .map(|u| (token_name(u), token_of(u), u.to_string()))
            .collect(),
        ..Default::default()
    });
    let client = agent.client();
    let token = client.token.clone();
    // Stopped by the agent: a start of it would be accepted, so every refusal below is its check's.
    let (w, id) = stopped_app(&client, "exit").await;

    // 1. The token comes first, before anything else is looked at.
    let a = lod_start(&client, "wrong-token", "no-such-app", None).await;
    assert_lod_error(
        &a,
        401,
        "Unauthorized. Request failed because user provided an invalid token.",
    );
    let a = client
        .send(
            client
                .http
                .post(client.url(&start_path(&id)))
                .form(&[("lambda_instance_id", NODE_ID)]),
        )
        .await;
    assert_lod_error(
        &a,
        401,
        "Unauthorized. Request failed because user provided an invalid token.",
    );
    // 2. The instance id must be given.
    let a = lod_start(&client, &token, "no-such-app", None).await;
    assert_lod_error(&a, 400, "No lambda instance id provided.");
    let a = lod_start(&client, &token, &id, Some(" ")).await;
    assert_lod_error(&a, 400, "No lambda instance id provided.");
    // 3. It must be this node.
    let a = lod_start(&client, &token, "no-such-app", Some("another-node")).await;
    assert_lod_error(&a, 404, "The specified lambda instance doesn't exist.");
    let a = lod_start(&client, &token, &id, Some("another-node")).await;
    assert_lod_error(&a, 404, "The specified lambda instance doesn't exist.");
    // 4. The application must be registered, and visible to the caller.
    let a = lod_start(&client, &token, "no-such-app", Some(NODE_ID)).await;
    assert_lod_error(&a, 404, "The specified application doesn't exist.");
    let a = lod_start(&client, &token, "bad%20id", Some(NODE_ID)).await;
    assert_lod_error(&a, 404, "The specified application doesn't exist.");
    let a = lod_start(&client, &token_of(STRANGER), &id, Some(NODE_ID)).await;
    assert_lod_error(&a, 404, "The specified application doesn't exist.");
    // The caller's permission: a member of the app's team without it.
    let (wt, idt) = {
        let w = support::Workload::start("exit").await;
        let idt = support::app_id();
        let mut body = support::app_body(&idt, &w.name);
        body["userId"] = json!("user-owner");
        body["teamId"] = json!({
            "_id": "team-1", "name": "My Team", "owner": "user-lead",
            "members": [{"user": CANNOT, "permissions": {"canChangeStatusApplication": false, "canCreateApplication": true}, "_id": "m-1"}],
            "invites": [], "createdAt": "2025-07-18T23:49:19.701Z", "updatedAt": "2025-07-19T17:57:05.069Z",
        });
        client.register_body(&idt, body).await;
        assert_eq!(client.stop(&idt).await.status, 200);
        (w, idt)
    };
    let a = lod_start(&client, &token_of(CANNOT), &idt, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        403,
        "You do not have permission to perform this action.",
    );
    assert!(!w.running().await, "no refusal started the container");
    assert!(!wt.running().await, "no refusal started the container");
    assert_eq!(stored(&client, &id).await["lastStart"], Value::Null);
    assert_eq!(stored(&client, &idt).await["lastStart"], Value::Null);

    // 5. Its container must exist on this node: one the agent stopped, and one the record says
    // runs (5. comes before 6.).
    let (w5, id5) = stopped_app(&client, "exit").await;
    w5.remove().await;
    let a = lod_start(&client, &token, &id5, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        404,
        "The specified application is not deployed on the specified lambda instance.",
    );
    let (w5b, id5b) = client.running_app("exit").await;
    w5b.remove().await;
    // On Podman the agent lists the running containers five times a second (its events come
    // late), and may already know; either way the answer is the same.
    if !support::engine_is_podman().await {
        assert_eq!(
            stored(&client, &id5b).await["currentResourceMetrics"]["online"],
            true
        );
    }
    let a = lod_start(&client, &token, &id5b, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        404,
        "The specified application is not deployed on the specified lambda instance.",
    );

    // 6. Already running, as the record says: registered running, then started by the agent.
    let (w6, id6) = client.running_app("exit").await;
    let a = lod_start(&client, &token, &id6, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "The specified application on the specified lambda instance has already been started.",
    );
    assert!(w6.running().await);
    assert_start_accepted(&lod_start(&client, &token, &id, Some(NODE_ID)).await);
    wait_started(&client, &id).await;
    let a = lod_start(&client, &token, &id, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "The specified application on the specified lambda instance has already been started.",
    );

    // 7. Running though the record says offline: started by hand behind the agent's back. The
    // stand-in engine delivers no events, so the record says offline until the start looks.
    // On Podman the agent also lists the running containers five times a second (its events come
    // late), so it may know of the start already: then the answer is check 6's.
    let (w7, id7) = stopped_app(&client, "exit").await;
    w7.start_by_hand().await;
    assert!(w7.running().await);
    let occupied = "The job slot of the specified application on the specified lambda instance is occupied: the application is already running.";
    let podman = support::engine_is_podman().await;
    if !podman {
        assert_eq!(
            stored(&client, &id7).await["currentResourceMetrics"]["online"],
            false
        );
    }
    let a = lod_start(&client, &token, &id7, Some(NODE_ID)).await;
    if podman {
        let detail = a.body["errors"][0]["detail"].as_str().unwrap_or_default();
        assert!(
            a.status == 409
                && (detail == occupied
                    || detail
                        == "The specified application on the specified lambda instance has already been started."),
            "{a:?}"
        );
    } else {
        assert_lod_error(&a, 409, occupied);
    }
    // The refusal made the record true: it runs, and the agent knows it now.
    let record = stored(&client, &id7).await;
    assert_eq!(
        record["currentResourceMetrics"]["online"], true,
        "{record:#}"
    );
    assert_eq!(record["lastStart"], Value::Null, "{record:#}");
    let a = lod_start(&client, &token, &id7, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "The specified application on the specified lambda instance has already been started.",
    );
    assert!(w7.running().await);

    // 7. Another operation under way. A stop, until its container has finished cleaning up:
    let (w8, id8) = client.running_app("slow=3000").await;
    let stop = {
        let (client, id) = (client.clone(), id8.clone());
        tokio::spawn(async move { client.stop(&id).await })
    };
    w8.wait_logs("signal 15", Duration::from_secs(10)).await;
    let a = lod_start(&client, &token, &id8, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "A stop of the specified application on the specified lambda instance is already in progress.",
    );
    assert_eq!(stop.await.unwrap().status, 200);
    // A start, held at the engine:
    let hold = engine.hold_starts().await;
    let seen = engine.starts();
    assert_start_accepted(&lod_start(&client, &token, &id8, Some(NODE_ID)).await);
    engine.wait_starts(seen + 1).await;
    let a = lod_start(&client, &token, &id8, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "A start of the specified application on the specified lambda instance is already in progress.",
    );
    assert_eq!(
        stored(&client, &id8).await["lastStart"]["outcome"],
        "starting"
    );
    drop(hold);
    wait_started(&client, &id8).await;
    // A restart through /v1, its start held at the engine:
    let hold = engine.hold_starts().await;
    let seen = engine.starts();
    let restart = {
        let (client, id) = (client.clone(), id8.clone());
        tokio::spawn(async move { client.operate(&id, "restart", "?timeout=5").await })
    };
    engine.wait_starts(seen + 1).await;
    let a = lod_start(&client, &token, &id8, Some(NODE_ID)).await;
    assert_lod_error(
        &a,
        409,
        "A restart of the specified application on the specified lambda instance is already in progress.",
    );
    drop(hold);
    let restarted = restart.await.unwrap();
    assert_eq!(restarted.status, 200, "{restarted:?}");
    assert_eq!(restarted.body["lastStart"]["outcome"], "started");
    assert_eq!(restarted.body["lastStop"]["outcome"], "stopped");
    assert!(w8.running().await);

    // Unknown methods on the route answer in the same shape.
    let a = client
        .send(
            client
                .http
                .get(client.url(&start_path(&id)))
                .header("Authorization", format!("Token {token}")),
        )
        .await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.body["errors"][0]["status"], 405, "{a:?}");
}
