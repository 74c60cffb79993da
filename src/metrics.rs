//! Resource metrics as `docker stats` computes them: CPU %, memory without the page cache, network
//! bytes summed over interfaces, and uptime from the container's start to now or to its exit.

use chrono::{DateTime, Utc};

use crate::record::{LastExit, ResourceMetrics};
use crate::runtime::ContainerState;

/// One stats reading of a running container, with the previous CPU reading the engine kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawStats {
    /// When the engine read the counters.
    pub read_at: Option<DateTime<Utc>>,
    pub cpu_total: u64,
    pub precpu_total: u64,
    pub system_total: u64,
    pub presystem_total: u64,
    /// CPUs the container may use (`online_cpus`, else the per-CPU list's length).
    pub online_cpus: u32,
    pub memory_usage: u64,
    /// `total_inactive_file` (cgroup v1), else `inactive_file` (cgroup v2).
    pub memory_reclaimable: Option<u64>,
    pub memory_limit: u64,
    pub network_rx: u64,
    pub network_tx: u64,
    /// Where the counters were read.
    pub source: SampleSource,
}

/// Where a sample's figures were read, recorded with them (`sampleSource`) and counted.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SampleSource {
    /// The container's cgroup files and its network namespace's counters, read by the agent at
    /// the moment of the sample.
    Cgroup,
    /// The engine's stats: its stream's latest reading, or a stats call.
    #[default]
    Engine,
}

impl SampleSource {
    pub fn label(self) -> &'static str {
        match self {
            SampleSource::Cgroup => "cgroup",
            SampleSource::Engine => "engine",
        }
    }
}

impl RawStats {
    /// Whether the reading holds counters at all; a container that is not running gives an empty one.
    pub fn is_empty(&self) -> bool {
        self.cpu_total == 0 && self.memory_usage == 0 && self.memory_limit == 0
    }

    /// CPU % over the interval between two readings, scaled by the online CPUs, as `docker stats`
    /// computes it. `None` without an interval: no previous reading, no system time between the
    /// two, or a container counter that went back (a new cgroup, not a later reading of the same).
    pub fn cpu_percent(&self) -> Option<f64> {
        if self.presystem_total == 0
            || self.system_total <= self.presystem_total
            || self.cpu_total < self.precpu_total
        {
            return None;
        }
        let cpu_delta = self.cpu_total - self.precpu_total;
        let system_delta = self.system_total - self.presystem_total;
        let pct =
            cpu_delta as f64 / system_delta as f64 * f64::from(self.online_cpus.max(1)) * 100.0;
        Some((pct * 100.0).round() / 100.0)
    }

    /// Memory in use without reclaimable page cache.
    pub fn memory_used(&self) -> u64 {
        match self.memory_reclaimable {
            Some(r) if r < self.memory_usage => self.memory_usage - r,
            _ => self.memory_usage,
        }
    }
}

/// What a sample is for, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplePurpose {
    /// The final sample of a stop.
    Final,
    /// The fresh figures of a read.
    Read,
}

impl SamplePurpose {
    pub fn label(self) -> &'static str {
        match self {
            SamplePurpose::Final => "final",
            SamplePurpose::Read => "read",
        }
    }
}

fn whole_seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    u64::try_from((to - from).num_seconds()).unwrap_or(0)
}

/// Metrics of a running container from a fresh reading.
pub fn running_metrics(
    state: &ContainerState,
    stats: &RawStats,
    now: DateTime<Utc>,
) -> ResourceMetrics {
    let mut m = ResourceMetrics {
        timestamp: stats.read_at.unwrap_or(now),
        online: true,
        uptime: state.started_at.map(|s| whole_seconds(s, now)),
        started_at: state.started_at,
        ..Default::default()
    };
    if !stats.is_empty() {
        fill_sample(&mut m, stats);
    }
    m
}

fn fill_sample(m: &mut ResourceMetrics, stats: &RawStats) {
    m.cpu_usage_percent = stats.cpu_percent();
    m.memory_usage_bytes = Some(stats.memory_used());
    m.memory_limit_bytes = Some(stats.memory_limit);
    m.network_rx_bytes = Some(stats.network_rx);
    m.network_tx_bytes = Some(stats.network_tx);
    m.sample_source = Some(stats.source);
}

/// Final metrics of a container that has exited: the last reading taken before it stopped (if any),
/// `online: false`, and uptime from start to exit. Without a reading, the previous sample's values
/// are kept so that nothing already known is lost.
pub fn final_metrics(
    state: &ContainerState,
    last_reading: Option<&RawStats>,
    previous: Option<&ResourceMetrics>,
    now: DateTime<Utc>,
) -> ResourceMetrics {
    let mut m = match (last_reading, previous) {
        (Some(stats), _) if !stats.is_empty() => {
            let mut m = ResourceMetrics {
                timestamp: stats.read_at.unwrap_or(now),
                ..Default::default()
            };
            fill_sample(&mut m, stats);
            m
        }
        (_, Some(prev)) => prev.clone(),
        _ => ResourceMetrics {
            timestamp: now,
            ..Default::default()
        },
    };
    m.online = false;
    m.started_at = state.started_at.or(m.started_at);
    m.uptime = match (state.started_at, state.finished_at) {
        (Some(s), Some(f)) if f >= s => Some(whole_seconds(s, f)),
        _ => m.uptime,
    };
    m
}

/// How the container's last run ended, from its inspected state.
pub fn last_exit(state: &ContainerState) -> Option<LastExit> {
    let exit_code = state.exit_code?;
    let signal = (129..=128 + 64)
        .contains(&exit_code)
        .then(|| signal_name(exit_code - 128));
    Some(LastExit {
        exit_code,
        killed: exit_code == 128 + 9,
        signal,
        oom_killed: state.oom_killed,
        finished_at: state.finished_at,
    })
}

fn signal_name(n: i64) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("SIG{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn cpu_percent_as_docker_stats() {
        let s = RawStats {
            cpu_total: 2_000_000,
            precpu_total: 1_000_000,
            system_total: 20_000_000,
            presystem_total: 10_000_000,
            online_cpus: 2,
            ..Default::default()
        };
        assert_eq!(s.cpu_percent(), Some(20.0));
        let first = RawStats {
            presystem_total: 0,
            precpu_total: 0,
            ..s.clone()
        };
        assert_eq!(
            first.cpu_percent(),
            None,
            "no previous reading, no interval"
        );
        let idle = RawStats {
            cpu_total: 1_000_000,
            ..s.clone()
        };
        assert_eq!(idle.cpu_percent(), Some(0.0), "an idle interval is 0 %");
        let reset = RawStats {
            cpu_total: 10,
            ..s.clone()
        };
        assert_eq!(
            reset.cpu_percent(),
            None,
            "a counter that went back has no interval"
        );
        let still = RawStats {
            system_total: 10_000_000,
            ..s
        };
        assert_eq!(still.cpu_percent(), None, "no system time between the two");
    }

    #[test]
    fn memory_excludes_reclaimable_cache() {
        let s = RawStats {
            memory_usage: 100,
            memory_reclaimable: Some(30),
            ..Default::default()
        };
        assert_eq!(s.memory_used(), 70);
        let odd = RawStats {
            memory_reclaimable: Some(300),
            ..s
        };
        assert_eq!(odd.memory_used(), 100);
    }

    #[test]
    fn final_metrics_use_the_reading_and_exit_times() {
        let state = ContainerState {
            started_at: Some(t("2025-01-01T00:00:00Z")),
            finished_at: Some(t("2025-01-01T00:01:40.900Z")),
            exit_code: Some(137),
            ..Default::default()
        };
        let reading = RawStats {
            read_at: Some(t("2025-01-01T00:01:39Z")),
            memory_usage: 10,
            memory_limit: 20,
            network_rx: 3,
            network_tx: 4,
            cpu_total: 1,
            ..Default::default()
        };
        let m = final_metrics(&state, Some(&reading), None, Utc::now());
        assert!(!m.online);
        assert_eq!(m.uptime, Some(100));
        assert_eq!(m.timestamp, t("2025-01-01T00:01:39Z"));
        assert_eq!(m.memory_usage_bytes, Some(10));
        assert_eq!(m.network_rx_bytes, Some(3));
        let exit = last_exit(&state).expect("exit");
        assert!(exit.killed);
        assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
    }

    #[test]
    fn final_metrics_keep_the_previous_sample_without_a_reading() {
        let state = ContainerState::default();
        let prev = ResourceMetrics {
            timestamp: t("2025-01-01T00:00:00Z"),
            online: true,
            memory_usage_bytes: Some(5),
            ..Default::default()
        };
        let m = final_metrics(&state, None, Some(&prev), Utc::now());
        assert!(!m.online);
        assert_eq!(m.memory_usage_bytes, Some(5));
    }

    #[test]
    fn exit_codes() {
        let exit = |code| {
            last_exit(&ContainerState {
                exit_code: Some(code),
                ..Default::default()
            })
            .expect("exit")
        };
        assert_eq!(exit(0).signal, None);
        assert_eq!(exit(143).signal.as_deref(), Some("SIGTERM"));
        assert!(!exit(143).killed);
        assert_eq!(exit(74).signal, None);
    }
}
