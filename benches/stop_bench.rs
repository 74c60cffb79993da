//! The agent beside the raw Docker Engine API, in one run, on like containers, alternating which
//! goes first: one stop, a fleet of concurrent stops, rejections under load (`wrk`, against a bare
//! axum server answering the same route), resident memory, and start-up time. Prints medians,
//! p90s and ratios. Run with `cargo bench --bench stop-bench` (needs a Docker engine, gcc and wrk).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::query_parameters::StopContainerOptions;
use common::{AgentOptions, AgentProcess, Client, Workload, app_id};
use futures_util::future::join_all;
use serde_json::Value;

const PAIRS: usize = 20;
const FLEET: usize = 40;
const FLEET_ROUNDS: usize = 3;
const MEMORY_APPS: usize = 100;
const STARTS: usize = 7;
/// wrk runs per server and answer, alternating which server goes first.
const REJECT_RUNS: usize = 5;
/// `MALLOC_ARENA_MAX` as `systemd/node-agent.service` sets it.
const UNIT_ARENAS: &str = "2";
/// Environment variable under which this binary serves as the bare axum server instead.
const BARE: &str = "STOP_BENCH_BARE_LISTEN";

fn main() {
    if let Ok(addr) = std::env::var(BARE) {
        bare_server(&addr);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// The bare server: the agent's `GET /v1/apps/{appId}` route with nothing behind it.
fn bare_server(addr: &str) {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        async fn app(headers: HeaderMap) -> axum::response::Response {
            if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some("Bearer good") {
                let body = serde_json::json!({"status": 404, "error": "app_not_found", "message": "no app"});
                (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
            } else {
                let body = serde_json::json!({"status": 401, "error": "unauthorized", "message": "bad token"});
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], axum::Json(body)).into_response()
            }
        }
        let router = axum::Router::new().route("/v1/apps/{app_id}", axum::routing::get(app));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(listener, router).await.unwrap();
    });
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn stats(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&xs, 0.5), percentile(&xs, 0.9))
}

fn row(what: &str, agent: Vec<f64>, raw: Vec<f64>, unit: &str, target: &str) {
    let (a50, a90) = stats(agent);
    let (r50, r90) = stats(raw);
    println!(
        "| {what} | {a50:.1} {unit} | {a90:.1} {unit} | {r50:.1} {unit} | {r90:.1} {unit} | {:.3} | {target} |",
        a50 / r50
    );
}

async fn raw_stop(name: &str) -> f64 {
    let docker = common::docker().await;
    let started = Instant::now();
    docker
        .stop_container(
            name,
            Some(StopContainerOptions {
                t: Some(10),
                signal: None,
            }),
        )
        .await
        .unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

async fn agent_stop(client: &Client, id: &str) -> (f64, Value) {
    let started = Instant::now();
    let a = client.stop(id).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(a.status, 200, "{a:?}");
    (ms, a.body)
}

/// Seconds from the final sample to the stop's request: how old the sample was when the stop began.
fn sample_age(record: &Value) -> f64 {
    let t = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let sampled = t(&record["currentResourceMetrics"]["timestamp"]);
    let requested = t(&record["lastStop"]["requestedAt"]);
    (requested - sampled).num_milliseconds() as f64 / 1000.0
}

/// Whether a phase runs: all by default, or those named in `STOP_BENCH_PHASES` (comma-separated:
/// one, fleet, reject, memory, start).
fn phase(name: &str) -> bool {
    std::env::var("STOP_BENCH_PHASES").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
}

async fn workloads(n: usize) -> Vec<Workload> {
    let mut out = Vec::new();
    for chunk in 0..n.div_ceil(10) {
        let batch = (chunk * 10..n.min(chunk * 10 + 10)).map(|_| Workload::start("exit"));
        out.extend(join_all(batch).await);
    }
    out
}

async fn register_all(client: &Client, ws: &[Workload]) -> Vec<String> {
    let mut ids = Vec::new();
    for w in ws {
        let id = app_id();
        client.register(&id, &w.name).await;
        ids.push(id);
    }
    ids
}

fn wrk(url: &str, token: &str) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            "-d4s",
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output()
        .expect("wrk is needed for the rejection figures (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wrk figure in {text}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn bench() {
    println!(
        "node-agent stop-bench: agent beside the raw Docker Engine API, alternating, medians of runs\n"
    );
    // The agent runs as the shipped systemd unit runs it: info logs, and glibc's allocator held to
    // two arenas (`Environment=MALLOC_ARENA_MAX=2`).
    let agent = AgentProcess::start_with(AgentOptions {
        log_filter: Some("info".into()),
        env: vec![("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into())],
        ..Default::default()
    });
    let client = agent.client();
    common::workload_image().await;

    println!("| measure | agent p50 | agent p90 | raw p50 | raw p90 | ratio (p50) | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");

    let mut ages = Vec::new();
    // One stop: like containers that exit at once on SIGTERM.
    if phase("one") {
        let ws = workloads(2 * PAIRS).await;
        let (agent_ws, raw_ws) = ws.split_at(PAIRS);
        let ids = register_all(&client, agent_ws).await;
        // Apps run a while before they are stopped: let the agent's readings arrive.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (mut a_ms, mut r_ms) = (Vec::new(), Vec::new());
        for i in 0..PAIRS {
            if i % 2 == 0 {
                let (ms, rec) = agent_stop(&client, &ids[i]).await;
                a_ms.push(ms);
                ages.push(sample_age(&rec));
                r_ms.push(raw_stop(&raw_ws[i].name).await);
            } else {
                r_ms.push(raw_stop(&raw_ws[i].name).await);
                let (ms, rec) = agent_stop(&client, &ids[i]).await;
                a_ms.push(ms);
                ages.push(sample_age(&rec));
            }
        }
        row(
            &format!("one stop ({PAIRS} pairs)"),
            a_ms,
            r_ms,
            "ms",
            "≤ 1.10",
        );
        drop(ws);
    }

    // A fleet: concurrent stops, agent against raw, alternating which goes first.
    if phase("fleet") {
        let (mut a_wall, mut r_wall) = (Vec::new(), Vec::new());
        for round in 0..FLEET_ROUNDS {
            let ws = workloads(2 * FLEET).await;
            let (left, right) = ws.split_at(FLEET);
            let ids = register_all(&client, left).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let run_agent = || async {
                let started = Instant::now();
                let answers = join_all(ids.iter().map(|id| client.stop(id))).await;
                let wall = started.elapsed().as_secs_f64() * 1000.0;
                assert!(answers.iter().all(|a| a.status == 200));
                (
                    wall,
                    answers
                        .iter()
                        .map(|a| sample_age(&a.body))
                        .collect::<Vec<_>>(),
                )
            };
            let run_raw = || async {
                let started = Instant::now();
                join_all(right.iter().map(|w| raw_stop(&w.name))).await;
                started.elapsed().as_secs_f64() * 1000.0
            };
            let (wall, fleet_ages) = if round % 2 == 0 {
                let agent_run = run_agent().await;
                r_wall.push(run_raw().await);
                agent_run
            } else {
                r_wall.push(run_raw().await);
                run_agent().await
            };
            a_wall.push(wall);
            ages.extend(fleet_ages);
        }
        row(
            &format!("fleet of {FLEET}, wall ({FLEET_ROUNDS} rounds)"),
            a_wall,
            r_wall,
            "ms",
            "≤ 1.25",
        );
    }
    if !ages.is_empty() {
        let (age50, age90) = stats(ages.clone());
        let max_age = ages.iter().cloned().fold(0.0, f64::max);
        println!(
            "| final sample age at the stop | {age50:.2} s | {age90:.2} s | | | max {max_age:.2} s | ≤ ~1 s |"
        );
    }

    // Rejections: 401 and 404 answers against a bare axum server answering the same route.
    if phase("reject") {
        let bare_port = free_port();
        let mut bare = Command::new(std::env::current_exe().unwrap())
            .env(BARE, format!("127.0.0.1:{bare_port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bare_url = format!("http://127.0.0.1:{bare_port}/v1/apps/some-app");
        let agent_url = format!("{}/v1/apps/some-app", agent.base);
        for (what, bare_token, agent_token) in [
            ("401 rejection", "bad", "bad"),
            ("404 rejection", "good", agent.token.as_str()),
        ] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in 0..REJECT_RUNS {
                if i % 2 == 0 {
                    b.push(wrk(&bare_url, bare_token));
                    a.push(wrk(&agent_url, agent_token));
                } else {
                    a.push(wrk(&agent_url, agent_token));
                    b.push(wrk(&bare_url, bare_token));
                }
            }
            row(
                &format!("{what}, throughput"),
                a,
                b,
                "req/s",
                "≥ 0.70 (vs bare axum)",
            );
        }
        let _ = bare.kill();
        let _ = bare.wait();
    }

    // Memory with MEMORY_APPS registered, running apps after thousands of requests: the records
    // of the phases above are forgotten first.
    if !(phase("memory") || phase("start")) {
        return;
    }
    let listed = client.get("/v1/apps?limit=500").await.body;
    for app in listed["applications"].as_array().unwrap() {
        let id = app["_id"].as_str().unwrap();
        let gone = client
            .send(client.authed(reqwest::Method::DELETE, &format!("/v1/apps/{id}")))
            .await;
        assert_eq!(gone.status, 204);
    }
    let ws = workloads(MEMORY_APPS).await;
    let ids = register_all(&client, &ws).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2000 {
        let path = if i % 10 == 0 {
            "/v1/apps?limit=100".to_owned()
        } else {
            format!("/v1/apps/{}", ids[i % ids.len()])
        };
        assert_eq!(client.get(&path).await.status, 200);
    }
    let rss = rss_kib(agent.pid());
    println!(
        "| resident memory, {MEMORY_APPS} running apps | {:.1} MiB | | | | | ≤ 20 MiB |",
        rss as f64 / 1024.0
    );

    // Start-up to ready with those records.
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    drop(agent);
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            config.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env("MALLOC_ARENA_MAX", UNIT_ARENAS)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                && r.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        starts.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let (s50, s90) = stats(starts);
    println!(
        "| start-up to ready, {MEMORY_APPS} records | {s50:.1} ms | {s90:.1} ms | | | | < 100 ms |"
    );
    drop(ws);
}
