//! The agent beside the raw Docker Engine API, in one run, on like containers, alternating which
//! goes first: one stop, a fleet of concurrent stops, one start, one restart, a fleet of
//! concurrent starts, stops with reporting on and with the control plane hanging, the delivery of
//! changes to the control plane, the node's drain and its shutdown, the event history (the store's
//! growth per 1,000 events, and an exit behind the agent's back on its way to the control plane
//! beside the engine's own `die` event), rejections under load (`wrk`, against a bare axum server
//! answering the same route), resident memory, and start-up time. Prints medians, p90s and ratios.
//! Run with `cargo bench --bench agent-bench` (needs a Docker engine, gcc and wrk).

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' harness; the benchmark uses a part of it.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, StartContainerOptions, StopContainerOptions,
};
use common::receiver::{Mode, Receiver, Report};
use common::{AgentOptions, AgentProcess, Client, Workload, app_id};
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::Value;

const PAIRS: usize = 20;
/// Pairs of the stops of young apps, and of the stops right after the agent's own start.
const YOUNG_PAIRS: usize = 12;
/// How long after its start a young app is stopped.
const YOUNG: Duration = Duration::from_millis(300);
/// How long after the last registration the fleet of young apps is stopped.
const FLEET_YOUNG: Duration = Duration::from_secs(1);
/// Running apps whose cost to the engine and to the agent is measured.
const COST_APPS: usize = 100;
/// Each window of the cost phase, with and without the agent, twice each.
const COST_WINDOW: Duration = Duration::from_secs(15);
/// Running idle apps whose following alone is measured (the `idle200` phase).
const IDLE_APPS: usize = 200;
/// The windows of the idle phase, each measuring every agent and the engine at once: long enough
/// for `/proc/<pid>/stat`'s 10 ms ticks to give 0.05 % of a core.
const IDLE_WINDOWS: usize = 5;
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// Environment variable naming another build of the agent to follow the same idle apps beside
/// this one, over the same windows: the figure before a change, measured side by side with it.
const BASELINE: &str = "AGENT_BENCH_BASELINE";
/// Apps restarted through the agent to fill their event histories (the `events` phase), and the
/// restarts of each: a restart is four events (`stop_requested`, `start_requested`, `stopped`,
/// `started`), so 10 × 25 restarts make 1,000.
const HISTORY_APPS: usize = 10;
const HISTORY_RESTARTS: usize = 25;
/// `[history] per_app` of the `events` phase: the most a configuration may keep, so that no event
/// the control plane has acknowledged is pruned and the store's growth is every event's.
const HISTORY_KEPT: u64 = 100_000;
/// Exits behind the agent's back timed to their `exited` event at the control plane (the
/// `exit-event` phase).
const EXIT_ROUNDS: usize = 40;
/// Pause before each timed exit: the report of the start before it is acknowledged, and the
/// sender's least interval from one report to the next (200 ms) is long past.
const EXIT_SETTLE: Duration = Duration::from_secs(1);
/// Running apps drained at once (the `drain100` phase), and its rounds.
const DRAIN_APPS: usize = 100;
const DRAIN_ROUNDS: usize = 3;
const FLEET: usize = 40;
const FLEET_ROUNDS: usize = 3;
/// Rounds of the fleet of starts (its containers serve every round, so rounds are cheap).
const FLEET_START_ROUNDS: usize = 5;
const MEMORY_APPS: usize = 100;
/// Changes whose delivery to the control plane is timed.
const DELIVERED: usize = 1000;
const STARTS: usize = 7;
/// The grace period of every stop, raw (`t=`) and the agent's (`timeout=`): the workload exits at
/// once on SIGTERM, so it is never reached.
const STOP_TIMEOUT: i32 = 10;
/// Pause after each timed start or restart of the one-at-a-time phases, so that the engine events
/// and stats streams a start sets off do not land in the next measurement, whichever side it is.
const SETTLE: Duration = Duration::from_millis(300);
/// wrk runs per server and answer, alternating which server goes first.
const REJECT_RUNS: usize = 5;
/// `MALLOC_ARENA_MAX` as `systemd/node-agent.service` sets it.
const UNIT_ARENAS: &str = "2";
/// Environment variable under which this binary serves as the bare axum server instead.
const BARE: &str = "AGENT_BENCH_BARE_LISTEN";

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
                t: Some(STOP_TIMEOUT),
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

async fn raw_start(name: &str) -> f64 {
    let docker = common::docker().await;
    let started = Instant::now();
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await
        .unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

/// A restart done by hand on the raw API: stop (same grace period as the agent's), then start.
async fn raw_restart(name: &str) -> f64 {
    let started = Instant::now();
    raw_stop(name).await;
    raw_start(name).await;
    started.elapsed().as_secs_f64() * 1000.0
}

async fn raw_inspect(name: &str) -> f64 {
    let docker = common::docker().await;
    let started = Instant::now();
    docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

/// `POST /v1/apps/{id}/{verb}{query}` (start or restart), which must answer 200 with the app
/// running.
async fn agent_run(client: &Client, id: &str, verb: &str, query: &str) -> f64 {
    let started = Instant::now();
    let a = client.operate(id, verb, query).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(a.status, 200, "{verb} {id}: {a:?}");
    assert_eq!(
        a.body["currentResourceMetrics"]["online"], true,
        "{verb} {id}: {a:?}"
    );
    ms
}

/// The `elapsed_ms` of the agent's own log line `message` about app `id` (the operation's task,
/// from its request time to its record written: no HTTP, no admission).
fn logged_ms(agent: &AgentProcess, id: &str, message: &str) -> Option<f64> {
    let (what, app) = (format!(": {message} "), format!("app={id} "));
    agent
        .logged(&[&what, &app, "elapsed_ms="])
        .iter()
        .rev()
        .find_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// Wall-clock nanoseconds, the clock the engine stamps its events with (same host).
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One timed operation on one container: when it was asked for and when it was answered.
#[derive(Debug)]
struct Op {
    container: String,
    asked: i64,
    answered: i64,
}

/// Runs `f`, timing it both ways: milliseconds for the figures, wall-clock instants to set beside
/// the engine's events.
async fn timed<F: std::future::Future<Output = f64>>(
    ops: &mut Vec<Op>,
    container: &str,
    f: F,
) -> f64 {
    let asked = now_ns();
    let ms = f.await;
    ops.push(Op {
        container: container.to_owned(),
        asked,
        answered: now_ns(),
    });
    ms
}

/// One event of the engine's stream: (container name, action, the engine's wall-clock ns, the
/// wall-clock ns it arrived here).
type EngineEvent = (String, String, i64, i64);

/// The engine's own account of the bench's containers, from its event stream. It cuts an
/// operation's time where the engine acted, so that the agent's extra time can be placed before,
/// between or after the engine's work; and it is the raw side of an exit's way to the control
/// plane.
#[derive(Debug)]
struct Timeline {
    events: Arc<Mutex<Vec<EngineEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    async fn follow() -> Timeline {
        let docker = common::docker().await;
        let filters = [
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![common::TEST_LABEL.to_owned()]),
        ]
        .into_iter()
        .collect();
        let mut stream = docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(e)) = stream.next().await {
                let name = e
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|mut a| a.remove("name"));
                if let (Some(name), Some(action), Some(t)) = (name, e.action, e.time_nano) {
                    sink.lock().unwrap().push((name, action, t, now_ns()));
                }
            }
        });
        // The subscription is made once the stream is first polled.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Timeline { events, task }
    }

    /// The first `action` of `container` at or after `since`.
    fn first(&self, container: &str, action: &str, since: i64) -> Option<i64> {
        self.first_arrived(container, action, since).map(|(t, _)| t)
    }

    /// The first `action` of `container` at or after `since`: the engine's time and when it
    /// arrived on this stream.
    fn first_arrived(&self, container: &str, action: &str, since: i64) -> Option<(i64, i64)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, a, t, _)| c == container && a == action && *t >= since)
            .map(|(_, _, t, arrived)| (*t, *arrived))
            .min()
    }

    /// Each operation cut at the engine's `actions`, in order: one list of milliseconds per segment
    /// (asked → first action → … → answered). Operations missing an event are left out.
    fn cut(&self, ops: &[Op], actions: &[&str]) -> Vec<Vec<f64>> {
        let mut segments = vec![Vec::new(); actions.len() + 1];
        for op in ops {
            let mut points = vec![op.asked];
            for action in actions {
                match self.first(&op.container, action, *points.last().unwrap()) {
                    Some(t) => points.push(t),
                    None => break,
                }
            }
            if points.len() != actions.len() + 1 {
                continue;
            }
            points.push(op.answered.max(*points.last().unwrap()));
            for (i, w) in points.windows(2).enumerate() {
                segments[i].push((w[1] - w[0]) as f64 / 1e6);
            }
        }
        segments
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The rows of a paired phase: the medians side by side, the median of the per-pair ratios, and
/// the agent's own time from its log lines (`done` is the line's message: `started`, `restarted`).
fn paired_rows(
    agent: &AgentProcess,
    ids: &[String],
    done: &str,
    label: &str,
    a_ms: Vec<f64>,
    r_ms: Vec<f64>,
) {
    let own: Vec<f64> = ids
        .iter()
        .filter_map(|id| logged_ms(agent, id, done))
        .collect();
    let pairs = (a_ms.clone(), r_ms.clone());
    row(label, a_ms, r_ms, "ms", "≤ 1.10");
    pair_ratio_row(&pairs.0, &pairs.1);
    if own.len() == ids.len() {
        let what = format!("… of which the agent's task (its log's elapsed_ms, `{done}`)");
        row(&what, own, pairs.1, "ms", "");
    }
}

/// The median of the ratios within pairs (agent over raw, pair by pair): the two of a pair ran
/// seconds apart, so it is less moved by the machine's slow and fast spells than the ratio of
/// the medians is.
fn pair_ratio_row(agent: &[f64], raw: &[f64]) {
    let ratios: Vec<f64> = agent.iter().zip(raw).map(|(a, r)| a / r).collect();
    let (m50, m90) = stats(ratios);
    println!("| … median of the per-pair ratios | | | | | {m50:.3} (p90 {m90:.3}) | |");
}

/// The medians of one segment of the agent's operations and the raw ones, and their difference.
fn segment_row(what: &str, agent: Vec<f64>, raw: Vec<f64>) {
    if agent.is_empty() || raw.is_empty() {
        println!("| … {what} | (no engine events) | | | | | |");
        return;
    }
    let (a50, a90) = stats(agent);
    let (r50, r90) = stats(raw);
    println!(
        "| … {what} | {a50:.1} ms | {a90:.1} ms | {r50:.1} ms | {r90:.1} ms | Δ {:+.1} ms | |",
        a50 - r50
    );
}

/// Segment rows for the operations of both sides cut at `actions`; `names` has one more entry.
fn segment_rows(timeline: &Timeline, agent: &[Op], raw: &[Op], actions: &[&str], names: &[&str]) {
    let a = timeline.cut(agent, actions);
    let r = timeline.cut(raw, actions);
    for ((name, a), r) in names.iter().zip(a).zip(r) {
        segment_row(name, a, r);
    }
}

/// Stops the agent's apps through the agent and the raw containers on the raw API, all at once,
/// then lets the engine's events and the agent's reactions to them settle. An app already stopped
/// (a start of the round before that failed) is left as it is.
async fn stop_all(client: &Client, ids: &[String], raw: &[Workload]) {
    let answers = join_all(ids.iter().map(|id| client.stop(id))).await;
    for a in &answers {
        assert!(
            a.status == 200 || a.body["error"] == "already_stopped",
            "stop: {} {}",
            a.status,
            a.body
        );
    }
    join_all(raw.iter().map(|w| raw_stop(&w.name))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Stops each of `ids` through the agent and the container beside it in `raw` straight through the
/// engine, one pair at a time, alternating which goes first. Returns the agent's times, the raw
/// times (ms), and the ages of the agent's final samples (s).
async fn paired_stops(
    client: &Client,
    ids: &[String],
    raw: &[Workload],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut times = Times::default();
    for (i, (id, w)) in ids.iter().zip(raw).enumerate() {
        times.stop_pair(i, client, id, &w.name).await;
    }
    (times.agent, times.raw, times.ages)
}

/// The times of pairs of stops, agent and raw (ms), and the ages of the agent's final samples (s).
#[derive(Default)]
struct Times {
    agent: Vec<f64>,
    raw: Vec<f64>,
    ages: Vec<f64>,
}

impl Times {
    /// Pair `i`: app `id` stopped through the agent and container `raw` through the engine, the
    /// raw stop first in odd pairs.
    async fn stop_pair(&mut self, i: usize, client: &Client, id: &str, raw: &str) {
        if !i.is_multiple_of(2) {
            self.raw.push(raw_stop(raw).await);
        }
        let (ms, rec) = agent_stop(client, id).await;
        self.agent.push(ms);
        self.ages.push(sample_age(&rec));
        if i.is_multiple_of(2) {
            self.raw.push(raw_stop(raw).await);
        }
    }
}

/// Rounds of a fleet: `FLEET` apps registered beside as many raw containers, stopped all at once
/// `settle` after the last registration, agent and raw alternating which goes first. Returns the
/// wall times (ms) of the agent's and the raw rounds, and adds the final samples' ages to `ages`.
async fn fleet_rounds(
    client: &Client,
    settle: Duration,
    ages: &mut Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let (mut a_wall, mut r_wall) = (Vec::new(), Vec::new());
    for round in 0..FLEET_ROUNDS {
        let ws = workloads(2 * FLEET).await;
        let (left, right) = ws.split_at(FLEET);
        let ids = register_all(client, left).await;
        tokio::time::sleep(settle).await;
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
        let (wall, fleet_ages) = if round.is_multiple_of(2) {
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
    (a_wall, r_wall)
}

/// The agent as the shipped unit runs it, reporting to `receiver`.
fn reporting_agent(receiver: &Receiver) -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        log_filter: Some("info".into()),
        env: vec![("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into())],
        report_url: Some(receiver.url()),
        ..Default::default()
    })
}

/// Reports: stops beside the raw engine with reporting on, and with the control plane hanging;
/// then how long changes take from their commit to the control plane's acknowledgement.
async fn report_phase() {
    for (label, mode) in [
        ("reporting on", Mode::Accept),
        ("control plane hanging", Mode::Hang),
    ] {
        let receiver = Receiver::start().await;
        receiver.set_mode(mode);
        let agent = reporting_agent(&receiver);
        let client = agent.client();
        let ws = workloads(2 * PAIRS).await;
        let (agent_ws, raw_ws) = ws.split_at(PAIRS);
        let ids = register_all(&client, agent_ws).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (a_ms, r_ms, _) = paired_stops(&client, &ids, raw_ws).await;
        row(
            &format!("one stop, {label} ({PAIRS} pairs)"),
            a_ms,
            r_ms,
            "ms",
            "≤ 1.10",
        );
        let node = client.get("/v1/node").await;
        if mode == Mode::Hang {
            assert!(receiver.acknowledged().is_empty());
            assert!(node.body["report"]["pending"].as_u64() >= Some(PAIRS as u64));
        }
    }

    // Changes from registrations of apps whose containers do not exist: each is a commit and an
    // observation, without engine work to speak of.
    let receiver = Receiver::start().await;
    let agent = reporting_agent(&receiver);
    let client = agent.client();
    let started = Instant::now();
    let answered: Vec<(String, u64, Instant)> = futures_util::stream::iter(0..DELIVERED)
        .map(|i| {
            let client = client.clone();
            async move {
                let id = format!("delivered-{i}");
                let a = client.register(&id, &format!("absent-{i}")).await;
                (id, a.body["generation"].as_u64().unwrap(), Instant::now())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let generated = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrivals = loop {
        // For each app, every acknowledged (generation, arrival), in arrival order.
        let mut arrivals: std::collections::HashMap<String, Vec<(u64, Instant)>> =
            Default::default();
        for r in receiver.reports().iter().filter(|r| r.acknowledged()) {
            for (id, g, _) in r.changes() {
                arrivals.entry(id).or_default().push((g, r.at));
            }
        }
        let all_in = answered.iter().all(|(id, g, _)| {
            arrivals
                .get(id)
                .is_some_and(|seen| seen.iter().any(|(got, _)| got >= g))
        });
        if all_in {
            break arrivals;
        }
        assert!(Instant::now() < deadline, "changes were not all delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let latencies: Vec<f64> = answered
        .iter()
        .map(|(id, g, at)| {
            let (_, arrived) = arrivals[id].iter().find(|(got, _)| got >= g).unwrap();
            arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0
        })
        .collect();
    let reports = receiver.reports().len();
    let (d50, d90) = stats(latencies);
    println!(
        "| {DELIVERED} changes ({:.0}/s, {reports} reports): change to acknowledgement | {d50:.1} ms | {d90:.1} ms | | | | ≤ 1000 ms (p50) |",
        DELIVERED as f64 / generated.as_secs_f64()
    );
}

/// CPU time (user + system) of `pid` so far, in seconds; `/proc/<pid>/stat` counts in USER_HZ.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// The engine's processes: its daemon (from the pid file beside its socket, else
/// `/var/run/docker.pid`), everything the daemon runs (its containerd), and the containerd shims
/// (which read the cgroups for the engine's stats).
fn engine_pids() -> Vec<u32> {
    let socket = common::engine_socket();
    let pid_file = socket
        .parent()
        .map(|d| d.join("dockerd.pid"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "/var/run/docker.pid".into());
    let daemon: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("the engine's pid file {}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap();
    let mut parents = std::collections::HashMap::new();
    let mut shims = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("containerd-shim") {
            shims.push(pid);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| {
        while let Some(&ppid) = parents.get(&pid) {
            if ppid == daemon {
                return true;
            }
            if ppid <= 1 {
                return false;
            }
            pid = ppid;
        }
        false
    };
    let mut pids: Vec<u32> = parents.keys().copied().filter(|&p| descends(p)).collect();
    pids.push(daemon);
    pids.extend(shims);
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

/// The cost of following running apps: the engine's CPU over windows with and without an agent
/// following `COST_APPS` running apps, alternating, and the agent's own CPU.
async fn cost_phase() {
    let ws = workloads(COST_APPS).await;
    let mut agent: Option<AgentProcess> = None;
    let (mut without, mut with, mut own) = (Vec::new(), Vec::new(), Vec::new());
    for window in 0..4_usize {
        let following = !window.is_multiple_of(2);
        if following {
            let a = AgentProcess::start_with(AgentOptions {
                log_filter: Some("info".into()),
                env: vec![("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into())],
                ..Default::default()
            });
            register_all(&a.client(), &ws).await;
            agent = Some(a);
        } else if let Some(mut a) = agent.take() {
            a.terminate();
        }
        // Let registrations, first readings and the end of the last window settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pids = engine_pids();
        let engine_before = cpu_of(&pids);
        let agent_before = agent.as_ref().map(|a| cpu_secs(a.pid()));
        tokio::time::sleep(COST_WINDOW).await;
        let secs = COST_WINDOW.as_secs_f64();
        let engine = (cpu_of(&pids) - engine_before) / secs * 100.0;
        if following {
            with.push(engine);
            let a = agent.as_ref().unwrap();
            own.push((cpu_secs(a.pid()) - agent_before.unwrap()) / secs * 100.0);
        } else {
            without.push(engine);
        }
    }
    drop(agent);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let added = mean(&with) - mean(&without);
    println!(
        "| engine CPU, {COST_APPS} running apps ({}×{} s windows each) | {:.2} % with the agent | | {:.2} % without | | added {added:.2} % of a core | ≤ 0.5 % |",
        with.len(),
        COST_WINDOW.as_secs(),
        mean(&with),
        mean(&without),
    );
    println!(
        "| the agent's own CPU, {COST_APPS} running apps | {:.2} % of a core | | | | | ≤ 1 % |",
        mean(&own)
    );
    drop(ws);
}

/// The agent's CPU while it follows `IDLE_APPS` running idle apps and does nothing else (no
/// request, no operation, no report): the ticker that reads their figures, the engine's event
/// stream and the timers. Measured from `/proc/<pid>/stat` over `IDLE_WINDOWS` windows; the
/// engine's own CPU over the same windows is shown beside it (the agent reads the host's files and
/// asks nothing of the engine meanwhile). With `AGENT_BENCH_BASELINE` set to another build of the
/// agent, that build follows the same apps at the same time, from its own store, and each window
/// measures both: the ratio within windows is the figure to compare on a noisy machine.
async fn idle_phase() {
    let ws = workloads(IDLE_APPS).await;
    let unit = || AgentOptions {
        log_filter: Some("info".into()),
        env: vec![("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into())],
        ..Default::default()
    };
    let agent = AgentProcess::start_with(unit());
    register_all(&agent.client(), &ws).await;
    // The other build runs on the store of an agent of this build that registered the same apps:
    // at its start it finds them running and follows them.
    let mut baseline = None;
    if let Ok(bin) = std::env::var(BASELINE) {
        let mut registrar = AgentProcess::start_with(unit());
        register_all(&registrar.client(), &ws).await;
        registrar.terminate();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(registrar.config_path())
            .env("RUST_LOG", "warn")
            .env("MALLOC_ARENA_MAX", UNIT_ARENAS)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BASELINE}={bin}: {e}"));
        baseline = Some((registrar, child));
    }
    // Registrations, first readings and the other build's start settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = engine_pids();
    let (mut own, mut other, mut engine) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..IDLE_WINDOWS {
        let before = (
            cpu_secs(agent.pid()),
            baseline.as_ref().map(|(_, c)| cpu_secs(c.id())),
            cpu_of(&pids),
        );
        tokio::time::sleep(IDLE_WINDOW).await;
        let secs = IDLE_WINDOW.as_secs_f64();
        own.push((cpu_secs(agent.pid()) - before.0) / secs * 100.0);
        if let (Some((_, c)), Some(b)) = (&baseline, before.1) {
            other.push((cpu_secs(c.id()) - b) / secs * 100.0);
        }
        engine.push((cpu_of(&pids) - before.2) / secs * 100.0);
    }
    let per_app = |pct: f64| pct / 100.0 * 1e6 / IDLE_APPS as f64;
    let windows = format!("{IDLE_WINDOWS}×{} s windows", IDLE_WINDOW.as_secs());
    let ratios: Vec<f64> = other.iter().zip(&own).map(|(b, a)| a / b).collect();
    let (a50, a90) = stats(own);
    let (e50, e90) = stats(engine);
    println!(
        "| the agent's CPU following {IDLE_APPS} idle apps, nothing else ({windows}; beside it: the engine's CPU meanwhile) | {a50:.2} % of a core | {a90:.2} % | {e50:.2} % | {e90:.2} % | {:.1} µs per app per second | ≤ 0.5 % |",
        per_app(a50)
    );
    if !other.is_empty() {
        let (b50, b90) = stats(other);
        let (r50, r90) = stats(ratios);
        println!(
            "| … the build in {BASELINE}, same apps, same windows | {b50:.2} % of a core | {b90:.2} % | | | {:.1} µs per app per second; this build / that one, median of the windows: {r50:.3} (p90 {r90:.3}) | |",
            per_app(b50)
        );
    }
    if let Some((_registrar, mut child)) = baseline.take() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    drop(agent);
    drop(ws);
}

/// Seconds from the final sample to the stop's request: how old the sample was when the stop began.
fn sample_age(record: &Value) -> f64 {
    let t = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let sampled = t(&record["currentResourceMetrics"]["timestamp"]);
    let requested = t(&record["lastStop"]["requestedAt"]);
    (requested - sampled).num_milliseconds() as f64 / 1000.0
}

/// The drain of `DRAIN_APPS` running apps (`POST /v1/node/drain`) beside as many like containers
/// stopped at once on the raw API, alternating which goes first; then the node's shutdown, from
/// `PrepareForShutdown(true)` (a fake logind on a private bus) to the lock's release, beside the
/// raw stops again. Each on an agent of its own, which holds no other app.
async fn drain_phase() {
    let logind = common::logind::FakeLogind::start(Duration::from_secs(600)).await;
    let agent = AgentProcess::start_with(AgentOptions {
        log_filter: Some("info".into()),
        env: vec![
            ("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into()),
            ("DBUS_SYSTEM_BUS_ADDRESS".into(), logind.address.clone()),
        ],
        shutdown: Some("inhibit = true\ngrace_secs = 60\nreport_secs = 5\n".into()),
        ..Default::default()
    });
    let client = agent.client();
    let (mut a_drain, mut r_drain, mut a_down, mut r_down) = (vec![], vec![], vec![], vec![]);
    for round in 0..DRAIN_ROUNDS {
        for shutdown in [false, true] {
            let ws = workloads(2 * DRAIN_APPS).await;
            let (left, right) = ws.split_at(DRAIN_APPS);
            let ids = register_all(&client, left).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let run_agent = || async {
                let started = Instant::now();
                if shutdown {
                    logind.wait_held(1, Duration::from_secs(30)).await;
                    logind.prepare_for_shutdown(true).await;
                    logind.wait_held(0, Duration::from_secs(120)).await;
                } else {
                    let a = client
                        .send(client.authed(
                            reqwest::Method::POST,
                            &format!("/v1/node/drain?timeout={STOP_TIMEOUT}"),
                        ))
                        .await;
                    assert_eq!(a.status, 200, "{a:?}");
                    assert_eq!(a.body["apps"]["stopped"], DRAIN_APPS, "{a:?}");
                }
                started.elapsed().as_secs_f64() * 1000.0
            };
            let run_raw = || async {
                let started = Instant::now();
                join_all(right.iter().map(|w| raw_stop(&w.name))).await;
                started.elapsed().as_secs_f64() * 1000.0
            };
            let (agent_ms, raw_ms) = if round.is_multiple_of(2) {
                let a = run_agent().await;
                (a, run_raw().await)
            } else {
                let r = run_raw().await;
                (run_agent().await, r)
            };
            if shutdown {
                // The shutdown is called off: the lock is taken again, and the drain ended.
                logind.prepare_for_shutdown(false).await;
                a_down.push(agent_ms);
                r_down.push(raw_ms);
            } else {
                a_drain.push(agent_ms);
                r_drain.push(raw_ms);
            }
            let ended = client
                .send(client.authed(reqwest::Method::DELETE, "/v1/node/drain"))
                .await;
            assert_eq!(ended.status, 200, "{ended:?}");
            // The next round's drain meets only its own apps.
            join_all(ids.iter().map(|id| client.delete(id))).await;
        }
    }
    row(
        &format!("drain of {DRAIN_APPS} apps, wall ({DRAIN_ROUNDS} rounds)"),
        a_drain,
        r_drain,
        "ms",
        "≤ 1.25",
    );
    row(
        &format!("node shutdown of {DRAIN_APPS} apps: PrepareForShutdown to the lock's release"),
        a_down,
        r_down,
        "ms",
        "reported",
    );
}

/// An agent of a given build, this one's or the one `AGENT_BENCH_BASELINE` names, run by the bench
/// itself from a directory of its own (configuration, tokens, store, log) on a port of its own, as
/// the shipped unit runs it (info logs, `MALLOC_ARENA_MAX=2`): two builds run the same way, side
/// by side. The configuration is this build's harness's, so `options` must hold only what the
/// other build knows.
#[derive(Debug)]
struct BuildAgent {
    bin: String,
    dir: tempfile::TempDir,
    port: u16,
    token: String,
    child: Option<std::process::Child>,
}

impl BuildAgent {
    /// `bin` on a configuration written from `options` (its `listen` a free loopback port), once
    /// it answers `/readyz`.
    async fn start(bin: &str, options: AgentOptions) -> BuildAgent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let options = AgentOptions {
            listen: Some(format!("127.0.0.1:{port}")),
            ..options
        };
        std::fs::write(
            dir.path().join("node-agent.toml"),
            common::config::agent_config(dir.path(), &options),
        )
        .unwrap();
        let token = common::unique("operator-token");
        common::write_tokens(
            &dir.path().join("tokens.toml"),
            &[(common::OPERATOR_TOKEN_NAME, &token, "operator", None)],
        );
        let mut agent = BuildAgent {
            bin: bin.to_owned(),
            dir,
            port,
            token,
            child: None,
        };
        agent.spawn().await;
        agent
    }

    /// Starts the process (again, on the same store) and waits until it is ready.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "stop the agent before starting it");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.dir.path().join("node-agent.toml"))
            .env("RUST_LOG", "info")
            .env("MALLOC_ARENA_MAX", UNIT_ARENAS)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin));
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            if let Ok(r) = client.http.get(client.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready in time; its log: {}",
                self.bin,
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{}", self.port),
            token: self.token.clone(),
        }
    }

    /// SIGTERM, by pid, and the exit waited for: the agent checkpoints its store as it goes.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("state/node-agent.db")
    }
}

impl Drop for BuildAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One stop per round of each of three like apps, in an order that turns each round: this build's
/// agent, the other build's, and the raw engine. Returns the times (ms) of each side in that
/// order, and the ages of this build's final samples (s).
async fn stop_triples(
    this: (&Client, &[String]),
    other: (&Client, &[String]),
    raw: &[Workload],
) -> ([Vec<f64>; 3], Vec<f64>) {
    let mut ms: [Vec<f64>; 3] = Default::default();
    let mut ages = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let (t, rec) = agent_stop(this.0, &this.1[i]).await;
                    ms[0].push(t);
                    ages.push(sample_age(&rec));
                }
                1 => ms[1].push(agent_stop(other.0, &other.1[i]).await.0),
                _ => ms[2].push(raw_stop(&w.name).await),
            }
        }
    }
    (ms, ages)
}

/// Options that a build from before `[shutdown]` also knows: that section left out.
fn before_shutdown() -> AgentOptions {
    AgentOptions {
        shutdown: Some(String::new()),
        ..AgentOptions::default()
    }
}

/// The `one` phase with `AGENT_BENCH_BASELINE`: this build and that one, each run by the bench the
/// same way, and the raw engine, one stop each per round on like apps. Returns this build's final
/// samples' ages (s).
async fn one_with_baseline(bin: &str) -> Vec<f64> {
    let this = BuildAgent::start(env!("CARGO_BIN_EXE_node-agent"), AgentOptions::default()).await;
    let other = BuildAgent::start(bin, before_shutdown()).await;
    let (this_client, other_client) = (this.client(), other.client());
    let ws = workloads(3 * PAIRS).await;
    let (this_ws, rest) = ws.split_at(PAIRS);
    let (other_ws, raw_ws) = rest.split_at(PAIRS);
    let this_ids = register_all(&this_client, this_ws).await;
    let other_ids = register_all(&other_client, other_ws).await;
    // Apps run a while before they are stopped: let the agents' readings arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ([a_ms, o_ms, r_ms], ages) = stop_triples(
        (&this_client, &this_ids),
        (&other_client, &other_ids),
        raw_ws,
    )
    .await;
    let between: Vec<f64> = a_ms.iter().zip(&o_ms).map(|(a, o)| a / o).collect();
    row(
        &format!("one stop ({PAIRS} rounds of three: this build, the build in {BASELINE}, raw)"),
        a_ms.clone(),
        r_ms.clone(),
        "ms",
        "≤ 1.10",
    );
    pair_ratio_row(&a_ms, &r_ms);
    row(
        &format!("… the build in {BASELINE}, same rounds"),
        o_ms.clone(),
        r_ms.clone(),
        "ms",
        "",
    );
    pair_ratio_row(&o_ms, &r_ms);
    let (m50, m90) = stats(between);
    println!(
        "| … this build / that one, median of the rounds' ratios | | | | | {m50:.3} (p90 {m90:.3}) | |"
    );
    drop(ws);
    ages
}

/// The size of an agent's store once the agent has stopped: its SIGTERM checkpoints the WAL into
/// the database and truncates it.
#[derive(Debug, Clone)]
struct StoreSize {
    /// Bytes of the database file and its WAL.
    files: u64,
    /// Bytes of the pages in use: the page count less the free pages, times the page size.
    used: u64,
    /// Bytes of the pages of each table with all its indexes (SQLite's `dbstat`), by table.
    tables: std::collections::BTreeMap<String, u64>,
    /// Events kept.
    events: u64,
    /// The node's generation counter: every change and every event takes one.
    generation: u64,
}

impl StoreSize {
    /// Reads the store at `db`, opened immutable (no lock, no WAL, nothing written).
    fn of(db: &std::path::Path) -> StoreSize {
        use rusqlite::OpenFlags;
        let bytes = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len());
        let path = db.to_str().unwrap();
        let files = bytes(path) + bytes(&format!("{path}-wal"));
        let c = rusqlite::Connection::open_with_flags(
            format!("file:{path}?immutable=1"),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let one = |sql: &str| -> u64 {
            let v: i64 = c.query_row(sql, [], |r| r.get(0)).unwrap();
            v as u64
        };
        let used =
            (one("PRAGMA page_count") - one("PRAGMA freelist_count")) * one("PRAGMA page_size");
        let tables = c
            .prepare(
                "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat AS d
                 JOIN sqlite_master AS m ON m.name = d.name GROUP BY m.tbl_name",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // The build before the history has no events table.
        let kept = one("SELECT count(*) FROM sqlite_master WHERE name = 'events'") > 0;
        StoreSize {
            files,
            used,
            tables,
            events: if kept {
                one("SELECT count(*) FROM events")
            } else {
                0
            },
            generation: one("SELECT value FROM counters WHERE name = 'generation'"),
        }
    }

    /// The bytes of `table` with its indexes; 0 for a table this store does not have.
    fn table(&self, table: &str) -> u64 {
        self.tables.get(table).copied().unwrap_or(0)
    }
}

/// Waits until the control plane has acknowledged every change the agent committed, the same
/// generation two looks a second apart (the engine's late events about the agent's own work
/// settled too).
async fn all_acknowledged(client: &Client) {
    let deadline = Instant::now() + common::PATIENCE;
    let mut last = None;
    loop {
        let node = client.get("/v1/node").await.body;
        let report = &node["report"];
        let generation = report["generation"].as_u64();
        if report["acknowledgedGeneration"].as_u64() >= generation {
            if last.is_some() && last == generation {
                return;
            }
            last = generation;
        } else {
            last = None;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane did not get every change: {report}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One build's store before and after `HISTORY_RESTARTS` restarts through it of each of
/// `HISTORY_APPS` running apps, with a receiver acknowledging every report: the apps registered
/// and acknowledged, the agent stopped and its store measured, started again on it, the restarts
/// (the apps at once, each app's one after the other), every change acknowledged, the agent
/// stopped and its store measured again.
async fn history_growth(bin: &str, extra_config: &str) -> (StoreSize, StoreSize) {
    let receiver = Receiver::start().await;
    let mut agent = BuildAgent::start(
        bin,
        AgentOptions {
            report_url: Some(receiver.url()),
            extra_config: extra_config.to_owned(),
            ..Default::default()
        },
    )
    .await;
    let ws = workloads(HISTORY_APPS).await;
    let ids = register_all(&agent.client(), &ws).await;
    all_acknowledged(&agent.client()).await;
    agent.terminate();
    let before = StoreSize::of(&agent.store());
    agent.spawn().await;
    let client = agent.client();
    join_all(ids.iter().map(|id| {
        let client = client.clone();
        async move {
            for _ in 0..HISTORY_RESTARTS {
                let a = client.restart(id).await;
                assert_eq!(a.status, 200, "restart {id}: {a:?}");
            }
        }
    }))
    .await;
    all_acknowledged(&client).await;
    agent.terminate();
    let after = StoreSize::of(&agent.store());
    drop(ws);
    (before, after)
}

/// The store's growth from the event history (the `events` phase): `history_growth` of this build,
/// every event kept (`[history] per_app` at `HISTORY_KEPT`), per 1,000 events; with
/// `AGENT_BENCH_BASELINE`, the same restarts on that build (before the history), the growth of
/// the same changes without events.
async fn history_phase() {
    let kib = |bytes: i64| bytes as f64 / 1024.0;
    let grown = |a: u64, b: u64| b as i64 - a as i64;
    let (before, after) = history_growth(
        env!("CARGO_BIN_EXE_node-agent"),
        &format!("[history]\nper_app = {HISTORY_KEPT}\n"),
    )
    .await;
    let events = grown(before.events, after.events);
    let per_1000 = |bytes: i64| kib(bytes) * 1000.0 / events as f64;
    let restarts = HISTORY_APPS * HISTORY_RESTARTS;
    println!(
        "| store growth per 1,000 events ({events} events of {restarts} restarts of {HISTORY_APPS} apps, every one kept; {} generations): database + WAL after SIGTERM's checkpoint | {:.1} KiB | | | | pages in use {:.1} KiB; the events table and its indexes {:.1} KiB ({:.0} bytes per event) | reported |",
        grown(before.generation, after.generation),
        per_1000(grown(before.files, after.files)),
        per_1000(grown(before.used, after.used)),
        per_1000(grown(before.table("events"), after.table("events"))),
        grown(before.table("events"), after.table("events")) as f64 / events as f64,
    );
    // What else grew, table by table (each with its indexes).
    let others: Vec<String> = after
        .tables
        .keys()
        .filter(|t| *t != "events")
        .map(|t| (t, grown(before.table(t), after.table(t))))
        .filter(|(_, bytes)| *bytes != 0)
        .map(|(t, bytes)| format!("`{t}` {:+.1} KiB", per_1000(bytes)))
        .collect();
    if !others.is_empty() {
        println!(
            "| … the other tables that grew, per 1,000 events | {} | | | | | |",
            others.join(", ")
        );
    }
    println!(
        "| … the store before and after (files; pages in use) | {:.1} → {:.1} KiB | | | | {:.1} → {:.1} KiB; {} → {} events kept | |",
        kib(before.files as i64),
        kib(after.files as i64),
        kib(before.used as i64),
        kib(after.used as i64),
        before.events,
        after.events,
    );
    if let Ok(bin) = std::env::var(BASELINE) {
        let (b0, b1) = history_growth(&bin, "").await;
        println!(
            "| … the build in {BASELINE}, the same {restarts} restarts ({} generations, no events) | {:+.1} KiB in all | | | | pages in use {:+.1} KiB; {:.1} → {:.1} KiB | |",
            grown(b0.generation, b1.generation),
            kib(grown(b0.files, b1.files)),
            kib(grown(b0.used, b1.used)),
            kib(b0.files as i64),
            kib(b1.files as i64),
        );
    }
}

/// Polls `found` until it finds something, failing after the harness's patience.
async fn until<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        if let Some(it) = found() {
            return it;
        }
        assert!(Instant::now() < deadline, "never came: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The first acknowledged report among `reports` whose change of `app` carries an event of `kind`
/// with a generation above `floor`, and that event.
fn arrived_event(reports: &[Report], app: &str, kind: &str, floor: u64) -> Option<(Report, Value)> {
    reports.iter().filter(|r| r.acknowledged()).find_map(|r| {
        r.changes()
            .into_iter()
            .filter(|(id, _, _)| id == app)
            .find_map(|(_, _, change)| {
                change["events"]
                    .as_array()?
                    .iter()
                    .find(|e| e["type"] == kind && e["generation"].as_u64() > Some(floor))
                    .cloned()
            })
            .map(|e| (r.clone(), e))
    })
}

/// An exit behind the agent's back on its way to the control plane (the `exit-event` phase): a
/// running app's container is sent SIGUSR1 on the raw API (the workload exits at once with 74), and
/// the time taken from the engine's own time of its `die`, and from the kill's answer, to the
/// arrival at the receiver of the first report whose change of the app carries its `exited` event;
/// beside it, the arrival of the engine's `die` on an `/events` stream the bench holds open
/// itself. Between rounds the container is started again by hand, its `started_by_engine` event
/// awaited at the receiver and the workload's handlers in place.
async fn exit_phase() {
    let receiver = Receiver::start().await;
    let agent = reporting_agent(&receiver);
    let client = agent.client();
    let w = Workload::start("exit").await;
    let id = app_id();
    client.register(&id, &w.name).await;
    let timeline = Timeline::follow().await;
    // The receiver stamps reports with instants; the engine and this side with wall-clock time.
    let (origin, origin_ns) = (Instant::now(), now_ns());
    let wall = |at: Instant| origin_ns + at.saturating_duration_since(origin).as_nanos() as i64;
    let ms = |from: i64, to: i64| (to - from) as f64 / 1e6;
    let (mut from_die, mut from_kill, mut sent, mut raw_die, mut raw_kill) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut dies, mut raw_look) = (Vec::new(), Vec::new());
    let mut floor = 0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..EXIT_ROUNDS {
        tokio::time::sleep(EXIT_SETTLE).await;
        let seen = receiver.reports().len();
        let asked = now_ns();
        w.kill_by_hand("SIGUSR1").await;
        let killed = now_ns();
        let (die, die_arrived) = until("the engine's die on the bench's stream", || {
            timeline.first_arrived(&w.name, "die", asked)
        })
        .await;
        // What anything that looks at the container after its `die` waits for: the engine's answer.
        raw_inspect(&w.name).await;
        raw_look.push(ms(die, now_ns()));
        let (report, exited) = receiver
            .wait(|| arrived_event(&receiver.reports()[seen..], &id, "exited", floor))
            .await;
        assert_eq!(exited["details"]["exit"]["exitCode"], 74, "{exited}");
        let arrived = wall(report.at);
        dies.push(die);
        from_die.push(ms(die, arrived));
        from_kill.push(ms(killed, arrived));
        raw_die.push(ms(die, die_arrived));
        raw_kill.push(ms(killed, die_arrived));
        if let Some(t) = report.body["sentAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt())
        {
            sent.push(ms(die, t));
        }
        floor = exited["generation"].as_u64().unwrap();
        let seen = receiver.reports().len();
        w.start_by_hand().await;
        let (_, started) = receiver
            .wait(|| arrived_event(&receiver.reports()[seen..], &id, "started_by_engine", floor))
            .await;
        floor = started["generation"].as_u64().unwrap();
        // The workload ignores SIGUSR1 (as PID 1) until its handlers are in: it says "ready".
        let deadline = Instant::now() + common::PATIENCE;
        while w.logs().await.matches("ready").count() < round + 2 {
            assert!(Instant::now() < deadline, "{} never said ready", w.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let delta = |a: &[f64], r: &[f64]| stats(a.to_vec()).0 - stats(r.to_vec()).0;
    let (a50, a90) = stats(from_die.clone());
    let (r50, r90) = stats(raw_die.clone());
    println!(
        "| an exit behind the agent's back ({EXIT_ROUNDS} rounds): the engine's `die` → its `exited` event at the control plane (raw: → the `die` on the bench's own `/events` stream) | {a50:.1} ms | {a90:.1} ms | {r50:.1} ms | {r90:.1} ms | Δ {:+.1} ms | reported |",
        delta(&from_die, &raw_die)
    );
    let (a50, a90) = stats(from_kill.clone());
    let (r50, r90) = stats(raw_kill.clone());
    println!(
        "| … from the kill's answer (raw: the kill's answer → the `die` on the bench's stream) | {a50:.1} ms | {a90:.1} ms | {r50:.1} ms | {r90:.1} ms | Δ {:+.1} ms | |",
        delta(&from_kill, &raw_kill)
    );
    // The agent's line of each change the watcher committed for a `die`, one per round.
    let committed: Vec<i64> = agent
        .logged(&["container changed", &format!("app={id} "), "(die)"])
        .iter()
        .filter_map(|l| {
            let t = chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok()?;
            t.timestamp_nanos_opt()
        })
        .collect();
    let (l50, l90) = stats(raw_look);
    if committed.len() == EXIT_ROUNDS {
        let watched: Vec<f64> = dies
            .iter()
            .zip(&committed)
            .map(|(d, c)| ms(*d, *c))
            .collect();
        let (w50, w90) = stats(watched);
        println!(
            "| … the engine's `die` → the agent's log line of the change (its watcher, the look at the container, the record and the `exited` event committed; raw: an inspect of the container asked as soon as the `die` arrived on the bench's stream, answered) | {w50:.1} ms | {w90:.1} ms | {l50:.1} ms | {l90:.1} ms | Δ {:+.1} ms | |",
            w50 - l50
        );
    } else {
        println!(
            "| … raw: the engine's `die` → an inspect of the container, asked as soon as the `die` arrived on the bench's stream, answered | | | {l50:.1} ms | {l90:.1} ms | | |"
        );
    }
    if sent.len() == EXIT_ROUNDS {
        let (s50, s90) = stats(sent);
        println!(
            "| … the engine's `die` → the report's `sentAt` (the agent's part: its watcher, the look, the commit, the sender) | {s50:.1} ms | {s90:.1} ms | | | | |"
        );
    }
}

/// Whether a phase runs: all by default, or those named in `AGENT_BENCH_PHASES` (comma-separated:
/// one, fleet, young, after-start, fleet-young, cost, idle200, drain100, one-start, one-restart,
/// fleet-start, report, events, exit-event, reject, memory, start; `start` is the agent's own
/// start-up time, `one-start` the start of an app). `AGENT_BENCH_BASELINE` adds another build to
/// `one`, `idle200` and `events`.
fn phase(name: &str) -> bool {
    std::env::var("AGENT_BENCH_PHASES").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
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
        "node-agent agent-bench: agent beside the raw Docker Engine API, alternating, medians of runs\n"
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
    // One stop: like containers that exit at once on SIGTERM; with `AGENT_BENCH_BASELINE`, that
    // build's stops in the same rounds.
    let baseline = std::env::var(BASELINE).ok();
    if let (true, Some(bin)) = (phase("one"), &baseline) {
        ages.extend(one_with_baseline(bin).await);
    } else if phase("one") {
        let ws = workloads(2 * PAIRS).await;
        let (agent_ws, raw_ws) = ws.split_at(PAIRS);
        let ids = register_all(&client, agent_ws).await;
        // Apps run a while before they are stopped: let the agent's readings arrive.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (a_ms, r_ms, one_ages) = paired_stops(&client, &ids, raw_ws).await;
        ages.extend(one_ages);
        let pairs = (a_ms.clone(), r_ms.clone());
        row(
            &format!("one stop ({PAIRS} pairs)"),
            a_ms,
            r_ms,
            "ms",
            "≤ 1.10",
        );
        pair_ratio_row(&pairs.0, &pairs.1);
        drop(ws);
    }

    // A fleet: concurrent stops, agent against raw, alternating which goes first.
    if phase("fleet") {
        let (a_wall, r_wall) = fleet_rounds(&client, Duration::from_secs(3), &mut ages).await;
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

    let mut young_ages = Vec::new();
    // Young apps: registered as soon as their container has started, stopped 0.3 s later.
    if phase("young") {
        let mut times = Times::default();
        for i in 0..YOUNG_PAIRS {
            let (mine, raw) = futures_util::join!(Workload::start("exit"), Workload::start("exit"));
            let id = app_id();
            client.register(&id, &mine.name).await;
            tokio::time::sleep(YOUNG).await;
            times.stop_pair(i, &client, &id, &raw.name).await;
        }
        young_ages.extend(times.ages);
        row(
            &format!("stop 0.3 s after registration and start ({YOUNG_PAIRS} pairs)"),
            times.agent,
            times.raw,
            "ms",
            "≤ 1.10",
        );
    }

    // Stops right after the agent's own start: an agent with one running app is restarted, and
    // the app stopped as soon as the agent listens.
    if phase("after-start") {
        let mut fresh = AgentProcess::start_with(AgentOptions {
            log_filter: Some("info".into()),
            env: vec![("MALLOC_ARENA_MAX".into(), UNIT_ARENAS.into())],
            ..Default::default()
        });
        let mut times = Times::default();
        for i in 0..YOUNG_PAIRS {
            let (mine, raw) = futures_util::join!(Workload::start("exit"), Workload::start("exit"));
            let id = app_id();
            fresh.client().register(&id, &mine.name).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            fresh.terminate();
            fresh.restart();
            times.stop_pair(i, &fresh.client(), &id, &raw.name).await;
        }
        young_ages.extend(times.ages);
        row(
            &format!("stop right after the agent's own start ({YOUNG_PAIRS} pairs)"),
            times.agent,
            times.raw,
            "ms",
            "≤ 1.10",
        );
    }

    // A fleet of young apps: 40 registered as they start, all stopped at once 1 s later.
    if phase("fleet-young") {
        let (a_wall, r_wall) = fleet_rounds(&client, FLEET_YOUNG, &mut young_ages).await;
        row(
            &format!("fleet of {FLEET} stopped 1 s after start, wall ({FLEET_ROUNDS} rounds)"),
            a_wall,
            r_wall,
            "ms",
            "≤ 1.25",
        );
    }
    if !young_ages.is_empty() {
        let ms: Vec<f64> = young_ages.iter().map(|s| s * 1000.0).collect();
        let (age50, age90) = stats(ms.clone());
        let max_age = ms.iter().cloned().fold(f64::MIN, f64::max);
        println!(
            "| final sample age at the stop, young apps (request − sample; < 0: read after the request came) | {age50:.1} ms | {age90:.1} ms | | | max {max_age:.1} ms | ≤ 50 ms |"
        );
    }

    if phase("cost") {
        cost_phase().await;
    }

    if phase("idle200") {
        idle_phase().await;
    }

    if phase("drain100") {
        drain_phase().await;
    }

    // One start: stopped containers (each run once and stopped, the agent's by the agent), started
    // through the agent and on the raw API, alternating which goes first.
    if phase("one-start") {
        let ws = workloads(2 * PAIRS).await;
        let (agent_ws, raw_ws) = ws.split_at(PAIRS);
        let ids = register_all(&client, agent_ws).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop_all(&client, &ids, raw_ws).await;
        // Where a start's time may go: the engine's inspect of a stopped container (the agent
        // inspects before the start, and again after its boot check).
        let mut inspect_stopped = Vec::new();
        for w in raw_ws.iter().chain(agent_ws) {
            inspect_stopped.push(raw_inspect(&w.name).await);
        }
        let timeline = Timeline::follow().await;
        let (mut a_ops, mut r_ops) = (Vec::new(), Vec::new());
        let (mut a_ms, mut r_ms) = (Vec::new(), Vec::new());
        for i in 0..PAIRS {
            let (a, r) = (&agent_ws[i].name, &raw_ws[i].name);
            let agent_first = i.is_multiple_of(2);
            if agent_first {
                let run = agent_run(&client, &ids[i], "start", "");
                a_ms.push(timed(&mut a_ops, a, run).await);
                tokio::time::sleep(SETTLE).await;
            }
            r_ms.push(timed(&mut r_ops, r, raw_start(r)).await);
            if !agent_first {
                tokio::time::sleep(SETTLE).await;
                let run = agent_run(&client, &ids[i], "start", "");
                a_ms.push(timed(&mut a_ops, a, run).await);
            }
            tokio::time::sleep(SETTLE).await;
        }
        let mut inspect_running = Vec::new();
        for w in raw_ws.iter().chain(agent_ws) {
            inspect_running.push(raw_inspect(&w.name).await);
        }
        paired_rows(
            &agent,
            &ids,
            "started",
            &format!("one start ({PAIRS} pairs)"),
            a_ms,
            r_ms,
        );
        let (s50, s90) = stats(inspect_stopped);
        let (g50, g90) = stats(inspect_running);
        println!(
            "| … raw inspect, stopped / running ({} each) | | | {s50:.1} / {g50:.1} ms | {s90:.1} / {g90:.1} ms | | |",
            2 * PAIRS
        );
        segment_rows(
            &timeline,
            &a_ops,
            &r_ops,
            &["start"],
            &[
                "asked → engine's start event",
                "engine's start event → answered",
            ],
        );
        drop(ws);
    }

    // One restart: running containers (with the agent's readings in), restarted through the agent
    // and by a raw stop then a raw start, with the same grace period, alternating.
    if phase("one-restart") {
        let ws = workloads(2 * PAIRS).await;
        let (agent_ws, raw_ws) = ws.split_at(PAIRS);
        let ids = register_all(&client, agent_ws).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let query = format!("?timeout={STOP_TIMEOUT}");
        let timeline = Timeline::follow().await;
        let (mut a_ops, mut r_ops) = (Vec::new(), Vec::new());
        let (mut a_ms, mut r_ms) = (Vec::new(), Vec::new());
        for i in 0..PAIRS {
            let (a, r) = (&agent_ws[i].name, &raw_ws[i].name);
            let agent_first = i.is_multiple_of(2);
            if agent_first {
                let run = agent_run(&client, &ids[i], "restart", &query);
                a_ms.push(timed(&mut a_ops, a, run).await);
                tokio::time::sleep(SETTLE).await;
            }
            r_ms.push(timed(&mut r_ops, r, raw_restart(r)).await);
            if !agent_first {
                tokio::time::sleep(SETTLE).await;
                let run = agent_run(&client, &ids[i], "restart", &query);
                a_ms.push(timed(&mut a_ops, a, run).await);
            }
            tokio::time::sleep(SETTLE).await;
        }
        paired_rows(
            &agent,
            &ids,
            "restarted",
            &format!("one restart, timeout={STOP_TIMEOUT} ({PAIRS} pairs)"),
            a_ms,
            r_ms,
        );
        segment_rows(
            &timeline,
            &a_ops,
            &r_ops,
            &["kill", "die", "start"],
            &[
                "asked → engine's kill event (SIGTERM sent)",
                "kill → die event (the container exits)",
                "die → engine's start event",
                "engine's start event → answered",
            ],
        );
        drop(ws);
    }

    // A fleet of starts: FLEET stopped apps started at once through the agent, FLEET stopped
    // containers started at once on the raw API, alternating which batch goes first. The same
    // containers serve every round: each is stopped again (the agent's by the agent) in between.
    if phase("fleet-start") {
        let ws = workloads(2 * FLEET).await;
        let (left, right) = ws.split_at(FLEET);
        let ids = register_all(&client, left).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (mut a_wall, mut r_wall) = (Vec::new(), Vec::new());
        // Starts the agent did not answer as done and running: counted and shown, not fatal, so
        // that one engine call timing out on a loaded machine does not lose the run.
        let mut failed = Vec::new();
        for round in 0..FLEET_START_ROUNDS {
            stop_all(&client, &ids, right).await;
            let run_agent = || async {
                let started = Instant::now();
                let answers = join_all(ids.iter().map(|id| async {
                    let asked = Instant::now();
                    let a = client.start(id).await;
                    (a, asked.elapsed().as_secs_f64())
                }))
                .await;
                let wall = started.elapsed().as_secs_f64() * 1000.0;
                let failed: Vec<String> = answers
                    .iter()
                    .filter(|(a, _)| {
                        a.status != 200 || a.body["currentResourceMetrics"]["online"] != true
                    })
                    .map(|(a, secs)| {
                        let why = a.body["message"].as_str().unwrap_or("not running");
                        format!("round {round}: {} after {secs:.1} s ({why})", a.status)
                    })
                    .collect();
                (wall, failed)
            };
            let run_raw = || async {
                let started = Instant::now();
                join_all(right.iter().map(|w| raw_start(&w.name))).await;
                started.elapsed().as_secs_f64() * 1000.0
            };
            let (wall, round_failed) = if round.is_multiple_of(2) {
                let agent_run = run_agent().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                r_wall.push(run_raw().await);
                agent_run
            } else {
                r_wall.push(run_raw().await);
                tokio::time::sleep(Duration::from_secs(1)).await;
                run_agent().await
            };
            a_wall.push(wall);
            failed.extend(round_failed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        row(
            &format!("{FLEET} concurrent starts, wall ({FLEET_START_ROUNDS} rounds)"),
            a_wall,
            r_wall,
            "ms",
            "≤ 1.25",
        );
        if !failed.is_empty() {
            println!(
                "| … agent starts not answered as running: {} of {} ({}) | | | | | | |",
                failed.len(),
                FLEET * FLEET_START_ROUNDS,
                failed.join("; ")
            );
        }
        drop(ws);
    }

    if phase("report") {
        report_phase().await;
    }

    if phase("events") {
        history_phase().await;
    }

    if phase("exit-event") {
        exit_phase().await;
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
                if i.is_multiple_of(2) {
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
        let gone = client.delete(id).await;
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
