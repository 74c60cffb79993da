//! The `/v1` API over HTTP against the real agent: records, errors, tokens and durability.

use std::time::Duration;

use crate::support;
use crate::support::record::assert_error;
use crate::support::{AgentOptions, AgentProcess, Workload, app_body, app_id};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn records_are_registered_read_listed_and_forgotten() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let w = Workload::start("exit").await;
    let id = app_id();

    let created = client.register(&id, &w.name).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["_id"], id.as_str());
    assert_eq!(created.body["workerNodeId"]["_id"], support::NODE_ID);
    let mut body = app_body(&id, &w.name);
    body["name"] = json!("renamed");
    body["customKey"] = json!({"kept": [1, 2]});
    // Keys the agent owns are replaced, whatever the body says.
    body["currentResourceMetrics"] = json!({"online": "bogus"});
    let replaced = client.register_body(&id, body).await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.body["name"], "renamed");
    assert_eq!(replaced.body["customKey"], json!({"kept": [1, 2]}));
    assert_eq!(
        replaced.body["currentResourceMetrics"]["online"], true,
        "{replaced:?}"
    );
    assert_eq!(
        created.body["currentResourceMetrics"]["online"], true,
        "seen at registration"
    );

    // A running app reads with fresh metrics.
    let got = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(got.status, 200);
    let m = &got.body["currentResourceMetrics"];
    assert_eq!(m["online"], true, "{m}");
    assert!(m["memoryUsageBytes"].as_u64().unwrap() > 0, "{m}");
    assert!(m["uptime"].is_u64() && m["startedAt"].is_string(), "{m}");

    // The SDK's list shape.
    let other = app_id();
    client.register(&other, &w.name).await;
    let list = client.get("/v1/apps?limit=1&page=2").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.body["applications"].as_array().unwrap().len(), 1);
    assert!(list.body["totalUsedRAM"].is_string());
    assert_eq!(
        list.body["pagination"],
        json!({"totalItems": 2, "totalPages": 2, "currentPage": 2, "itemsPerPage": 1, "hasNextPage": false, "hasPrevPage": true})
    );
    let all = client.get("/v1/apps").await;
    let ids: Vec<&str> = all.body["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&other.as_str()));

    // DELETE forgets the record and leaves the container alone.
    let del = client
        .send(client.authed(Method::DELETE, &format!("/v1/apps/{id}")))
        .await;
    assert_eq!(del.status, 204);
    assert_error(
        &client.get(&format!("/v1/apps/{id}")).await,
        404,
        "app_not_found",
    );
    assert_error(
        &client
            .send(client.authed(Method::DELETE, &format!("/v1/apps/{id}")))
            .await,
        404,
        "app_not_found",
    );
    assert!(w.running().await, "DELETE never touches the container");
}

#[tokio::test]
async fn every_error_row_of_the_contract() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;

    // 400: malformed ids, timeouts, signals and bodies.
    let long = "x".repeat(129);
    for path in [
        format!("/v1/apps/{long}/stop"),
        "/v1/apps/bad%20id/stop".to_owned(),
        "/v1/apps/a%2Fb/stop".to_owned(),
        "/v1/apps/%00/stop".to_owned(),
        "/v1/apps/caf%C3%A9/stop".to_owned(),
    ] {
        let a = client.send(client.authed(Method::POST, &path)).await;
        assert_error(&a, 400, "bad_request");
    }
    for query in [
        "?timeout=-1",
        "?timeout=3601",
        "?timeout=abc",
        "?signal=SIGSEGV",
        "?signal=",
        "?force=1",
    ] {
        assert_error(&client.stop_query(&id, query).await, 400, "bad_request");
    }
    for body in [
        json!({"timeout": "5"}),
        json!({"signal": 15}),
        json!({"grace": 3}),
        json!([1]),
    ] {
        assert_error(&client.stop_body(&id, body).await, 400, "bad_request");
    }
    let not_json = client
        .send(
            client
                .authed(Method::POST, &format!("/v1/apps/{id}/stop"))
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_error(&not_json, 400, "bad_request");
    for body in [
        json!({"name": "no container"}),
        json!({"containerId": "c", "_id": "other"}),
        json!({"containerId": "c", "status": "stopped"}),
    ] {
        let a = client
            .send(client.authed(Method::PUT, "/v1/apps/some-app").json(&body))
            .await;
        assert_error(&a, 400, "bad_request");
    }
    assert!(
        w.running().await,
        "no refused request touched the container"
    );

    // 401: missing, malformed and unknown tokens, on every /v1 route, with WWW-Authenticate.
    for (method, path) in [
        (Method::POST, format!("/v1/apps/{id}/stop")),
        (Method::GET, format!("/v1/apps/{id}")),
        (Method::PUT, format!("/v1/apps/{id}")),
        (Method::DELETE, format!("/v1/apps/{id}")),
        (Method::GET, "/v1/apps".to_owned()),
    ] {
        for auth in [
            None,
            Some("Bearer"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer wrong-token"),
            Some("Token wrong-token"),
        ] {
            let mut req = client.http.request(method.clone(), client.url(&path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let a = client.send(req).await;
            assert_error(&a, 401, "unauthorized");
            assert_eq!(
                a.headers["www-authenticate"], "Bearer",
                "{method} {path} {auth:?}"
            );
        }
    }
    assert!(w.running().await);

    // 404: an app this node does not know.
    assert_error(&client.stop("no-such-app").await, 404, "app_not_found");
    assert_error(
        &client.get("/v1/apps/no-such-app").await,
        404,
        "app_not_found",
    );
    assert_error(&client.stop("...").await, 404, "app_not_found");

    // 413: a body over 1 MiB.
    let big = vec![b' '; 1024 * 1024 + 1];
    let a = client
        .send(
            client
                .authed(Method::POST, &format!("/v1/apps/{id}/stop"))
                .header("Content-Type", "application/json")
                .body(big.clone()),
        )
        .await;
    assert_error(&a, 413, "payload_too_large");
    let a = client
        .send(
            client
                .authed(Method::PUT, &format!("/v1/apps/{id}"))
                .body(big),
        )
        .await;
    assert_error(&a, 413, "payload_too_large");
    assert!(w.running().await);

    // Unknown routes and methods answer JSON too.
    assert_eq!(client.get("/v1/nothing").await.status, 404);
    assert_eq!(
        client
            .send(client.authed(Method::GET, &format!("/v1/apps/{id}/stop")))
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn the_sdk_request_and_both_token_schemes_work() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    // Exactly what @camposcloud/sdk sends: Bearer, JSON content type, no body at all.
    let resp = client
        .http
        .post(client.url(&format!("/v1/apps/{id}/stop")))
        .header("Authorization", format!("Bearer {}", client.token))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["currentResourceMetrics"]["online"], false);

    // The ~okeanos scheme is accepted on /v1 too.
    let a = client
        .send(
            client
                .http
                .get(client.url(&format!("/v1/apps/{id}")))
                .header("Authorization", format!("Token {}", client.token)),
        )
        .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn an_unreachable_engine_is_503_reads_come_from_the_store_and_records_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-engine.sock");
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(format!("unix://{}", socket.display())),
        ..Default::default()
    });
    let client = agent.client();
    let id = app_id();
    // Registration needs no engine.
    let reg = client.register(&id, "some-container").await;
    assert_eq!(reg.status, 201);
    assert_eq!(
        reg.body["currentResourceMetrics"]["online"], false,
        "not known to run"
    );
    // The record says that it was not seen, rather than passing `false` off as what the engine said.
    assert!(
        reg.body["engineUnavailable"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "{reg:?}"
    );
    let started = std::time::Instant::now();
    let a = client.stop(&id).await;
    assert_error(&a, 503, "docker_unavailable");
    assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
    // A read answers from the store, saying that the engine could not be asked.
    let read = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert!(
        read.body["engineUnavailable"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "{read:?}"
    );
    let unmarked = |mut v: Value| {
        v.as_object_mut().unwrap().remove("engineUnavailable");
        v
    };
    let list = client.get("/v1/apps").await;
    assert_eq!(list.status, 200);
    assert_eq!(
        unmarked(list.body["applications"][0].clone()),
        unmarked(reg.body.clone()),
        "the record is untouched"
    );
    assert_eq!(unmarked(read.body), unmarked(reg.body));
    let health = client.send(client.http.get(client.url("/healthz"))).await;
    assert_eq!(health.status, 200);
    let ready = client.send(client.http.get(client.url("/readyz"))).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body["message"].as_str().unwrap().contains("docker"),
        "{ready:?}"
    );
}

#[tokio::test]
async fn records_survive_restarts_and_kill_9() {
    let mut agent = AgentProcess::start();
    let client = agent.client();
    let (_w, stopped) = client.running_app("exit").await;
    let answer = client.stop(&stopped).await;
    assert_eq!(answer.status, 200);
    let kept = app_id();
    let kept_body = client.register(&kept, "elsewhere").await.body;

    // A clean stop exits 0 and keeps everything.
    assert_eq!(agent.terminate(), Some(0));
    agent.restart();
    let client = agent.client();
    assert_eq!(
        client.get(&format!("/v1/apps/{stopped}")).await.body,
        answer.body
    );

    // kill -9 right after an answered write loses nothing.
    let late = app_id();
    let late_body = client.register(&late, "elsewhere-too").await.body;
    agent.kill9();
    agent.restart();
    let client = agent.client();
    assert_eq!(
        client.get(&format!("/v1/apps/{stopped}")).await.body,
        answer.body
    );
    let list = client.get("/v1/apps").await.body;
    let apps = list["applications"].as_array().unwrap();
    assert!(apps.contains(&kept_body), "{list:#}");
    assert!(apps.contains(&late_body), "{list:#}");
}

#[tokio::test]
async fn first_start_creates_a_private_tokens_file_and_shows_the_token_once() {
    use std::os::unix::fs::PermissionsExt;
    let mut agent = AgentProcess::start_with(AgentOptions {
        no_tokens_file: true,
        ..Default::default()
    });
    let token = agent.wait_stdout(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(agent.tokens_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(agent.tokens_path()).unwrap();
    assert!(!text.contains(&token), "the file holds only the hash");
    let mut client = agent.client();
    client.token = token.clone();
    assert_eq!(client.get("/v1/apps").await.status, 200);

    // A second start reuses the file and prints no token.
    assert_eq!(agent.terminate(), Some(0));
    agent.restart();
    // A created file is logged before "listening", which `restart` waited for: once, at the
    // first start.
    assert_eq!(agent.logged(&["created a tokens file"]).len(), 1);
    assert!(!agent.stdout().contains(&token));
    let mut client = agent.client();
    client.token = token;
    assert_eq!(client.get("/v1/apps").await.status, 200);
}

#[tokio::test]
async fn users_may_not_register_or_delete_and_never_touch_what_they_cannot_see() {
    let agent = AgentProcess::start_with(AgentOptions {
        user_tokens: vec![(
            "keven".into(),
            "user-token-keven".into(),
            "someone-else".into(),
        )],
        ..Default::default()
    });
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    let mut user = client.clone();
    user.token = "user-token-keven".into();

    let put = user
        .send(
            user.authed(Method::PUT, &format!("/v1/apps/{id}"))
                .json(&app_body(&id, &w.name)),
        )
        .await;
    assert_error(&put, 403, "forbidden");
    let del = user
        .send(user.authed(Method::DELETE, &format!("/v1/apps/{id}")))
        .await;
    assert_error(&del, 403, "forbidden");
    // Not this user's app: as if absent.
    assert_error(&user.stop(&id).await, 404, "app_not_found");
    assert_error(
        &user.get(&format!("/v1/apps/{id}")).await,
        404,
        "app_not_found",
    );
    assert_eq!(user.get("/v1/apps").await.body["applications"], json!([]));
    assert!(w.running().await, "the container was not touched");
    assert_eq!(
        client.get(&format!("/v1/apps/{id}")).await.status,
        200,
        "the record is still there"
    );
}
