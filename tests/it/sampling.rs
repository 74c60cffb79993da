//! Final samples and fresh figures read from the host's own files, end to end: the real agent over
//! HTTP, real containers on the real engine, the engine's own `stats` as the reference.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::record::{metrics, time};
use crate::support::{AgentOptions, AgentProcess, Workload, app_id, docker};
use bollard::models::HostConfig;
use bollard::query_parameters::StatsOptions;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::Value;

/// How far the mean of the agent's CPU % readings may be from the engine's figure for the same
/// seconds: the agent's readings end at its own ticks, up to a second before the engine's window
/// ends, on a shared two-CPU machine.
const CPU_TOLERANCE_POINTS: f64 = 15.0;
/// How many of the agent's once-a-second CPU readings are set against the engine's figure.
const CPU_READINGS: usize = 5;
/// How far the agent's memory figure may be from the engine's, read a moment apart.
const MEMORY_TOLERANCE_BYTES: u64 = 2 * 1024 * 1024;

/// Asserts that `record`'s final figures were read from the host's files once the stop was asked
/// (`asked`), with a CPU % and memory; returns them.
fn assert_fresh_final_figures(record: &Value, asked: DateTime<Utc>) -> &Value {
    let m = metrics(record);
    assert_eq!(m["sampleSource"], "cgroup", "{m}");
    assert!(
        time(&m["timestamp"]) >= asked - chrono::Duration::milliseconds(1),
        "sampled at the stop, not before it was asked: {m}"
    );
    assert!(m["cpuUsagePercent"].is_number(), "{m}");
    assert!(m["memoryUsageBytes"].as_u64().unwrap() > 0, "{m}");
    m
}

/// One `stats` answer of the engine for `container`.
async fn engine_stats(container: &str) -> bollard::models::ContainerStatsResponse {
    let options = StatsOptions {
        stream: false,
        one_shot: false,
    };
    docker()
        .await
        .stats(container, Some(options))
        .next()
        .await
        .expect("a stats answer")
        .expect("stats")
}

/// The engine's own figures of `container`: (CPU % between two of its answers a second apart,
/// memory without inactive file pages). Two answers, because Podman's carry no previous reading.
async fn engine_figures(container: &str) -> (f64, u64) {
    let first = engine_stats(container).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = engine_stats(container).await;
    let cpu_pct = engine_cpu_between(&first, &s).await;
    let memory = s.memory_stats.unwrap();
    let stats = memory.stats.unwrap_or_default();
    let inactive = stats
        .get("total_inactive_file")
        .or_else(|| stats.get("inactive_file"))
        .copied()
        .unwrap_or(0);
    (cpu_pct, memory.usage.unwrap() - inactive)
}

/// The CPU % the engine's answers `first` and `last` give for the time between them. Podman's
/// `system_cpu_usage` does not count the host's CPU time as Docker's does (it advances by about
/// one CPU-second a second, whatever the CPUs), so on Podman the container's CPU time is set
/// against the time between the two answers' `read`.
async fn engine_cpu_between(
    first: &bollard::models::ContainerStatsResponse,
    last: &bollard::models::ContainerStatsResponse,
) -> f64 {
    let (before, now) = (
        first.cpu_stats.clone().unwrap(),
        last.cpu_stats.clone().unwrap(),
    );
    let total =
        |c: &bollard::models::ContainerCpuStats| c.cpu_usage.as_ref().unwrap().total_usage.unwrap();
    let cpu_delta = (total(&now) - total(&before)) as f64;
    if support::engine_is_podman().await {
        let read = |r: &bollard::models::ContainerStatsResponse| {
            DateTime::parse_from_rfc3339(r.read.as_deref().unwrap()).unwrap()
        };
        let wall = (read(last) - read(first)).num_nanoseconds().unwrap() as f64;
        cpu_delta / wall * 100.0
    } else {
        let cpus = now.online_cpus.unwrap_or_else(|| {
            let percpu = now.cpu_usage.as_ref().and_then(|u| u.percpu_usage.as_ref());
            u32::try_from(percpu.map_or(1, Vec::len)).unwrap()
        });
        cpu_delta / (now.system_cpu_usage.unwrap() - before.system_cpu_usage.unwrap()) as f64
            * f64::from(cpus)
            * 100.0
    }
}

#[tokio::test]
async fn a_stop_three_tenths_of_a_second_after_the_start_has_fresh_final_figures() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let started = Instant::now();
    let w = Workload::start("exit").await;
    let id = app_id();
    assert_eq!(client.register(&id, &w.name).await.status, 201);
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(started.elapsed())).await;
    let asked = Utc::now();
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    let m = assert_fresh_final_figures(&a.body, asked);
    assert!(
        time(&m["timestamp"]) <= time(&a.body["lastExit"]["finishedAt"]),
        "sampled before the container ended: {:#}",
        a.body
    );
    assert_eq!(m["memoryLimitBytes"], 64 * 1024 * 1024, "{m}");
    assert!(m["networkRxBytes"].is_u64(), "{m}");
    let text = client.metrics_text().await;
    assert!(
        text.contains("node_agent_samples_total{source=\"cgroup\",purpose=\"final\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("node_agent_samples_total{source=\"engine\",purpose=\"final\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stop_right_after_the_agents_own_start_has_fresh_final_figures() {
    let mut agent = AgentProcess::start();
    let client = agent.client();
    let (_w, id) = client.running_app("exit").await;
    agent.terminate();
    agent.restart();
    let client = agent.client();
    let asked = Utc::now();
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_fresh_final_figures(&a.body, asked);
}

#[tokio::test]
async fn cpu_and_memory_agree_with_the_engines_own_stats() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // One CPU kept busy; 64 MiB allocated and touched, under a limit well above it.
    let spin = Workload::start_with("spin", |b| {
        b.cmd = Some(vec!["/workload".into(), "spin".into(), "4".into()]);
    })
    .await;
    let big = Workload::start_with("exit", |b| {
        b.cmd = Some(vec!["/workload".into(), "exit".into(), "64".into()]);
        b.host_config = Some(HostConfig {
            memory: Some(256 * 1024 * 1024),
            ..Default::default()
        });
    })
    .await;
    let (spin_id, big_id) = (app_id(), app_id());
    assert_eq!(client.register(&spin_id, &spin.name).await.status, 201);
    assert_eq!(client.register(&big_id, &big.name).await.status, 201);
    // Long enough for the agent's once-a-second readings to give a full interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The agent's once-a-second readings across a few seconds, against the engine's figure for
    // the same seconds: a container's share of two shared CPUs changes from one second to the
    // next, so only readings of (nearly) the same time may be compared.
    let first = engine_stats(&spin.name).await;
    let mut readings = Vec::new();
    for _ in 0..CPU_READINGS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let read = client.get(&format!("/v1/apps/{spin_id}")).await;
        let m = metrics(&read.body);
        assert_eq!(m["sampleSource"], "cgroup", "{m}");
        readings.push(m["cpuUsagePercent"].as_f64().expect("a CPU %"));
    }
    let last = engine_stats(&spin.name).await;
    let engine_cpu = engine_cpu_between(&first, &last).await;
    let agent_cpu = readings.iter().sum::<f64>() / readings.len() as f64;
    eprintln!(
        "CPU %, agent's readings {readings:?} (mean {agent_cpu:.1}) against the engine's {engine_cpu:.1}"
    );
    assert!(
        (agent_cpu - engine_cpu).abs() <= CPU_TOLERANCE_POINTS,
        "agent {agent_cpu:.1} % (mean of {readings:?}) against the engine's {engine_cpu:.1} %"
    );
    assert!(agent_cpu > 50.0, "one CPU spinning: {agent_cpu}");

    let read = client.get(&format!("/v1/apps/{big_id}")).await;
    let m = metrics(&read.body);
    assert_eq!(m["sampleSource"], "cgroup", "{m}");
    let agent_memory = m["memoryUsageBytes"].as_u64().unwrap();
    let (_, engine_memory) = engine_figures(&big.name).await;
    eprintln!("memory, agent against engine: {agent_memory} {engine_memory}");
    assert!(
        agent_memory.abs_diff(engine_memory) <= MEMORY_TOLERANCE_BYTES,
        "agent {agent_memory} against the engine's {engine_memory}"
    );
    assert!(agent_memory >= 64 * 1024 * 1024, "{agent_memory}");
    assert_eq!(m["memoryLimitBytes"], 256 * 1024 * 1024, "{m}");
    // The final sample of a stop agrees too.
    let a = client.stop(&big_id).await;
    let final_memory = metrics(&a.body)["memoryUsageBytes"].as_u64().unwrap();
    assert!(
        final_memory.abs_diff(engine_memory) <= MEMORY_TOLERANCE_BYTES,
        "final {final_memory} against the engine's {engine_memory}"
    );
}

/// The memory cgroup directory of `container`'s main process, on cgroup v1 or v2.
async fn memory_cgroup(container: &str) -> PathBuf {
    let pid = docker()
        .await
        .inspect_container(container, None)
        .await
        .unwrap()
        .state
        .unwrap()
        .pid
        .unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = |wanted: &dyn Fn(&str) -> bool| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            wanted(controllers).then(|| path.to_owned())
        })
    };
    if let Some(path) = line(&|c| c.split(',').any(|c| c == "memory")) {
        PathBuf::from(format!("/sys/fs/cgroup/memory{path}"))
    } else {
        let path = line(&|c| c.is_empty()).expect("a cgroup v2 line");
        PathBuf::from(format!("/sys/fs/cgroup{path}"))
    }
}

#[tokio::test]
async fn an_unreadable_cgroup_gives_way_to_the_engines_stats() {
    // The agent as the unit runs it: an unprivileged user in the engine socket's group.
    const NOBODY: u32 = 65534;
    let agent = AgentProcess::start_with(AgentOptions {
        run_as: Some(NOBODY),
        ..Default::default()
    });
    let client = agent.client();
    let (_readable, readable_id) = client.running_app("exit").await;
    let hidden = Workload::start("exit").await;
    let stat = memory_cgroup(&hidden.name).await.join("memory.stat");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stat, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", stat.display()));
    let hidden_id = app_id();
    assert_eq!(client.register(&hidden_id, &hidden.name).await.status, 201);

    let a = client.stop(&hidden_id).await;
    assert_eq!(a.status, 200, "{a:?}");
    let m = metrics(&a.body);
    assert_eq!(m["sampleSource"], "engine", "{m}");
    assert!(m["memoryUsageBytes"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["memoryLimitBytes"], 64 * 1024 * 1024, "{m}");
    assert!(m["cpuUsagePercent"].is_number(), "{m}");
    let why = agent.wait_logged(&["figures come from the engine's stats", "memory.stat"], 1);
    assert!(why[0].contains("Permission denied"), "{why:?}");

    // Another container on the same agent, readable, is read on the host.
    let b = client.stop(&readable_id).await;
    assert_eq!(b.status, 200, "{b:?}");
    assert_eq!(metrics(&b.body)["sampleSource"], "cgroup", "{:#}", b.body);
    let text = client.metrics_text().await;
    assert!(
        text.contains("node_agent_sample_fallbacks_total 1"),
        "{text}"
    );
    assert!(
        text.contains("node_agent_samples_total{source=\"engine\",purpose=\"final\"} 1"),
        "{text}"
    );
}
