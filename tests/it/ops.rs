//! What an operator sees of a running agent, against the real engine: `GET /v1/node`, `GET /metrics`
//! after real stops, starts and restarts, request ids in answers and logs, and JSON logs.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::support::{AgentOptions, AgentProcess, EngineProxy, NODE_ID, NODE_NAME, docker};
use serde_json::Value;

/// GETs `path` with `token` (none: no header); returns the status, the content type and the text.
async fn fetch(agent: &AgentProcess, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(agent.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, resp.text().await.unwrap())
}

async fn node(agent: &AgentProcess) -> Value {
    let (status, _, text) = fetch(agent, "/v1/node", Some(&agent.token)).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_report_names_the_host_the_engine_and_the_apps() {
    let agent = AgentProcess::start_with(AgentOptions {
        user_tokens: vec![("keven".into(), "user-token-1".into(), "u1".into())],
        ..Default::default()
    });
    let client = agent.client();
    let (_w, _id) = client.running_app("exit").await;

    // The record comes online once the agent has seen the container.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = node(&agent).await;
        if report["apps"]["online"] == 1 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["_id"], NODE_ID);
    assert_eq!(report["nodeName"], NODE_NAME);
    assert!(
        report["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{report}"
    );
    assert!(report["cpus"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["load"]["one"].as_f64().is_some(), "{report}");
    assert!(
        report["memory"]["totalBytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["apps"]["registered"], 1, "{report}");
    assert_eq!(report["apps"]["online"], 1, "{report}");
    assert_eq!(report["agent"]["version"], env!("CARGO_PKG_VERSION"));
    // The host's uptime and the agent's are named apart.
    assert!(report["agent"]["uptimeSeconds"].as_u64().is_some());
    assert!(report["hostUptimeSeconds"].as_u64().is_some(), "{report}");
    assert!(report.get("uptimeSeconds").is_none(), "{report}");

    // The engine, as the engine itself says.
    let version = docker().await.version().await.unwrap();
    let info = docker().await.info().await.unwrap();
    assert_eq!(report["docker"]["reachable"], true, "{report}");
    assert_eq!(
        report["docker"]["version"].as_str(),
        version.version.as_deref()
    );
    assert_eq!(
        report["docker"]["apiVersion"].as_str(),
        version.api_version.as_deref(),
        "the engine's own API version, not the one negotiated: {report}"
    );
    let api = |key: &str| -> (u32, u32) {
        let v = report["docker"][key].as_str().unwrap();
        let (major, minor) = v.split_once('.').unwrap();
        (major.parse().unwrap(), minor.parse().unwrap())
    };
    assert!(api("negotiatedApiVersion") <= api("apiVersion"), "{report}");
    let root_dir = info.docker_root_dir.unwrap();
    assert_eq!(report["docker"]["rootDir"], root_dir.as_str());

    // The engine is local: its root directory is measured where it is, as statvfs says.
    let disk = &report["dockerDisk"];
    assert_eq!(disk["path"], root_dir.as_str(), "{report}");
    let measured = rustix::fs::statvfs(root_dir.as_str()).unwrap();
    assert_eq!(
        disk["totalBytes"].as_u64(),
        Some(measured.f_blocks * measured.f_frsize),
        "{report}"
    );
    assert!(disk["availableBytes"].as_u64().is_some(), "{report}");
    let mount_point = disk["mountPoint"].as_str().unwrap();
    assert!(root_dir.starts_with(mount_point), "{report}");
    let device = |path: &str| std::fs::metadata(path).unwrap().dev();
    assert_eq!(device(mount_point), device(&root_dir), "{report}");

    // Only operators read the node.
    let (status, _, text) = fetch(&agent, "/v1/node", Some("user-token-1")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("forbidden"), "{text}");
    let (status, _, _) = fetch(&agent, "/v1/node", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_report_says_when_the_engine_is_away() {
    let proxy = EngineProxy::closed();
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(proxy.url()),
        ..Default::default()
    });
    let report = node(&agent).await;
    assert_eq!(report["docker"]["reachable"], false, "{report}");
    assert!(
        report["docker"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{report}"
    );
    for key in ["version", "apiVersion", "negotiatedApiVersion", "rootDir"] {
        assert!(report["docker"][key].is_null(), "{key}: {report}");
    }
    assert!(report["dockerDisk"].is_null(), "{report}");
    assert!(report["memory"]["totalBytes"].as_u64().unwrap() > 0);
    assert!(report["hostUptimeSeconds"].as_u64().is_some(), "{report}");
    let (status, _, text) = fetch(&agent, "/metrics", Some(&agent.token)).await;
    assert_eq!(status, 200);
    assert!(text.contains("node_agent_engine_up 0"), "{text}");
}

/// The `/metrics` text, with the operator's token.
async fn metrics(agent: &AgentProcess) -> String {
    let (status, content_type, text) = fetch(agent, "/metrics", Some(&agent.token)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    text
}

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_stops_starts_and_restarts_by_route_and_outcome_answers_and_records() {
    let agent = AgentProcess::start_with(AgentOptions {
        user_tokens: vec![("keven".into(), "user-token-2".into(), "u1".into())],
        ..Default::default()
    });
    let client = agent.client();
    // Every series is there from the start, at 0.
    let text = metrics(&agent).await;
    for route in ["v1", "okeanos"] {
        for outcome in [
            "stopped",
            "already_stopped",
            "in_progress",
            "refused",
            "engine_unavailable",
            "failed",
        ] {
            assert_has(
                &text,
                &format!("node_agent_stops_total{{route=\"{route}\",outcome=\"{outcome}\"}} 0"),
            );
        }
    }
    let (_w1, id1) = client.running_app("exit").await;
    let (_w2, id2) = client.running_app("exit").await;

    // Refused before the core sees them: a bad token, a bad timeout, a bad id on /v1; a bad token,
    // no instance id, another instance on ~okeanos.
    let v1_refusals = [
        client
            .http
            .post(client.url(&format!("/v1/apps/{id1}/stop")))
            .bearer_auth("not-a-token"),
        client
            .http
            .post(client.url(&format!("/v1/apps/{id1}/stop?timeout=-1")))
            .bearer_auth(&agent.token),
        client
            .http
            .post(client.url("/v1/apps/bad%20id/stop"))
            .bearer_auth(&agent.token),
    ];
    for request in v1_refusals {
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_client_error(), "{answer:?}");
    }
    let lod = format!("/api/apps/{id2}/stop/");
    let okeanos_refusals = [
        client
            .http
            .post(client.url(&lod))
            .bearer_auth("not-a-token")
            .form(&[("lambda_instance_id", NODE_ID)]),
        client.http.post(client.url(&lod)).bearer_auth(&agent.token),
        client
            .http
            .post(client.url(&lod))
            .bearer_auth(&agent.token)
            .form(&[("lambda_instance_id", "another-node")]),
    ];
    for request in okeanos_refusals {
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_client_error(), "{answer:?}");
    }
    let text = metrics(&agent).await;
    for route in ["v1", "okeanos"] {
        assert_has(
            &text,
            &format!("node_agent_stops_total{{route=\"{route}\",outcome=\"refused\"}} 3"),
        );
    }

    let stopped = client.stop(&id1).await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    let again = client.stop(&id1).await;
    assert_eq!(again.status, 409, "{again:?}");
    let accepted = client
        .http
        .post(client.url(&format!("/api/apps/{id2}/stop/")))
        .bearer_auth(&agent.token)
        .form(&[("lambda_instance_id", NODE_ID)])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = client.get(&format!("/v1/apps/{id2}")).await;
        if record.body["lastStop"]["outcome"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stop is logged once it is counted too.
    agent.wait_logged(&[": stopped ", &format!("app={id2}")], 1);

    let text = metrics(&agent).await;
    assert_has(
        &text,
        "node_agent_stops_total{route=\"v1\",outcome=\"stopped\"} 1",
    );
    assert_has(
        &text,
        "node_agent_stops_total{route=\"v1\",outcome=\"already_stopped\"} 1",
    );
    assert_has(
        &text,
        "node_agent_stops_total{route=\"okeanos\",outcome=\"stopped\"} 1",
    );
    // Both v1 stops were admitted and timed; the second found the container stopped.
    assert_has(
        &text,
        "node_agent_stop_duration_seconds_count{route=\"v1\"} 2",
    );
    assert_has(
        &text,
        "node_agent_stop_duration_seconds_count{route=\"okeanos\"} 1",
    );
    assert_has(&text, "node_agent_final_sample_age_seconds_count 2");
    assert_has(&text, "node_agent_http_requests_total{code=\"202\"} 1");
    assert_has(&text, "node_agent_http_requests_total{code=\"409\"} 1");
    assert_has(&text, "node_agent_engine_up 1");
    assert_has(&text, "node_agent_records{state=\"offline\"} 2");
    assert_has(&text, "node_agent_records{state=\"online\"} 0");
    assert_has(&text, "node_agent_stops_in_progress 0");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Starts and restarts are counted beside the stops, each series there from the start at 0.
    for (route, outcome) in [
        ("v1", "started"),
        ("v1", "already_running"),
        ("v1", "refused"),
    ] {
        assert_has(
            &text,
            &format!("node_agent_starts_total{{route=\"{route}\",outcome=\"{outcome}\"}} 0"),
        );
    }
    for outcome in [
        "started",
        "exited",
        "already_running",
        "container_missing",
        "in_progress",
        "refused",
        "engine_unavailable",
        "failed",
    ] {
        assert_has(
            &text,
            &format!("node_agent_starts_total{{route=\"okeanos\",outcome=\"{outcome}\"}} 0"),
        );
    }
    for outcome in [
        "started",
        "exited",
        "container_missing",
        "in_progress",
        "refused",
        "engine_unavailable",
        "failed",
    ] {
        assert_has(
            &text,
            &format!("node_agent_restarts_total{{route=\"v1\",outcome=\"{outcome}\"}} 0"),
        );
    }
    assert!(
        !text.contains("node_agent_restarts_total{route=\"okeanos\""),
        "no restart comes through ~okeanos:\n{text}"
    );
    // A start through /v1, then one of a container that runs; a refused one, with a bad token.
    let started = client.start(&id1).await;
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(
        started.body["lastStart"]["outcome"], "started",
        "{started:?}"
    );
    let again = client.start(&id1).await;
    assert_eq!(again.status, 409, "{again:?}");
    let refused = client
        .http
        .post(client.url(&format!("/v1/apps/{id1}/start")))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A restart of the app that runs now.
    let restarted = client.operate(&id1, "restart", "?timeout=1").await;
    assert_eq!(restarted.status, 200, "{restarted:?}");
    assert_eq!(restarted.body["lastStart"]["outcome"], "started");
    // A start through ~okeanos, in the background, and one refused before the core (no instance).
    let lod = format!("/api/apps/{id2}/start/");
    let refused = client
        .http
        .post(client.url(&lod))
        .bearer_auth(&agent.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let accepted = client
        .http
        .post(client.url(&lod))
        .bearer_auth(&agent.token)
        .form(&[("lambda_instance_id", NODE_ID)])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    // Logged once it is counted (and the record written before either).
    agent.wait_logged(&[": started ", &format!("app={id2}")], 1);
    let record = client.get(&format!("/v1/apps/{id2}")).await;
    assert_eq!(record.body["lastStart"]["outcome"], "started", "{record:?}");

    let text = metrics(&agent).await;
    for (line, value) in [
        (
            "node_agent_starts_total{route=\"v1\",outcome=\"started\"}",
            1,
        ),
        (
            "node_agent_starts_total{route=\"v1\",outcome=\"already_running\"}",
            1,
        ),
        (
            "node_agent_starts_total{route=\"v1\",outcome=\"refused\"}",
            1,
        ),
        (
            "node_agent_starts_total{route=\"okeanos\",outcome=\"started\"}",
            1,
        ),
        (
            "node_agent_starts_total{route=\"okeanos\",outcome=\"refused\"}",
            1,
        ),
        (
            "node_agent_starts_total{route=\"okeanos\",outcome=\"already_running\"}",
            0,
        ),
        (
            "node_agent_restarts_total{route=\"v1\",outcome=\"started\"}",
            1,
        ),
        (
            "node_agent_restarts_total{route=\"v1\",outcome=\"failed\"}",
            0,
        ),
        // Both /v1 starts were admitted and timed; the ~okeanos one too; the refusals were not.
        ("node_agent_start_duration_seconds_count{route=\"v1\"}", 2),
        (
            "node_agent_start_duration_seconds_count{route=\"okeanos\"}",
            1,
        ),
        ("node_agent_restart_duration_seconds_count{route=\"v1\"}", 1),
        // A restart is counted as a restart, not as a stop beside it.
        (
            "node_agent_stops_total{route=\"v1\",outcome=\"stopped\"}",
            1,
        ),
        ("node_agent_stop_duration_seconds_count{route=\"v1\"}", 2),
        ("node_agent_http_requests_total{code=\"202\"}", 2),
        ("node_agent_http_requests_total{code=\"409\"}", 2),
        ("node_agent_records{state=\"online\"}", 2),
        ("node_agent_records{state=\"offline\"}", 0),
    ] {
        assert_has(&text, &format!("{line} {value}"));
    }
    // The restart took its one-second grace at most, and was timed in seconds.
    let restart_sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("node_agent_restart_duration_seconds_sum{route=\"v1\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no restart duration sum in:\n{text}"));
    assert!(restart_sum > 0.0 && restart_sum < 60.0, "{restart_sum}");

    // The figures are the operator's unless configured open.
    let (status, _, _) = fetch(&agent, "/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = fetch(&agent, "/metrics", Some("user-token-2")).await;
    assert_eq!(status, 403);

    let open = AgentProcess::start_with(AgentOptions {
        http_extra: "metrics_open = true\n".into(),
        ..Default::default()
    });
    let (status, _, text) = fetch(&open, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("node_agent_engine_up"), "{text}");
    // Opening the metrics opens nothing else.
    let (status, _, _) = fetch(&open, "/v1/node", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_the_log_lines_of_its_stop_do_too() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;

    let given = "cp-7f3a.42";
    let answer = client
        .send(
            client
                .authed(reqwest::Method::POST, &format!("/v1/apps/{id}/stop"))
                .header("x-request-id", given),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.headers["x-request-id"], given);
    agent.wait_logged(&["stopped", given], 1);

    // Without one, or with one unfit for logs, the agent makes its own.
    for header in [None, Some("has space"), Some("\"quoted\"")] {
        let mut req = client.http.get(client.url("/healthz"));
        if let Some(h) = header {
            req = req.header("x-request-id", h);
        }
        let answer = client.send(req).await;
        let made = answer.headers["x-request-id"].to_str().unwrap();
        assert_eq!(made.len(), 16, "{made}");
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    }
    // Refusals carry one too.
    let refused = client.send(client.http.get(client.url("/v1/apps"))).await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_request_span() {
    let mut agent = AgentProcess::start_with(AgentOptions {
        extra_config: "[log]\nformat = \"json\"\n".into(),
        ..Default::default()
    });
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    let answer = client
        .send(
            client
                .authed(reqwest::Method::POST, &format!("/v1/apps/{id}/stop"))
                .header("x-request-id", "json-log-1"),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(agent.terminate(), Some(0));

    let lines: Vec<Value> = agent
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let stopped = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stopped")
        .unwrap_or_else(|| panic!("no stopped line in {lines:?}"));
    assert_eq!(stopped["span"]["id"], "json-log-1", "{stopped}");
    assert_eq!(stopped["spans"][0]["id"], "json-log-1", "{stopped}");
    assert_eq!(stopped["fields"]["app"], id.as_str(), "{stopped}");
    assert_eq!(stopped["level"], "INFO");
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "listening"),
        "{lines:?}"
    );
}
