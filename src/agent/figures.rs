//! The record's figures built from what the engine says of a container: the running metrics of a
//! fresh reading, the final metrics of an exited run (uptime from start to exit) and its last exit.

use chrono::{DateTime, Utc};

use crate::record::{LastExit, ResourceMetrics};
use crate::runtime::ContainerState;
use crate::stats::RawStats;

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

pub(super) fn signal_name(n: i64) -> String {
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
