//! One stats reading of a container and its arithmetic as `docker stats` does it: CPU % over an
//! interval, memory without the page cache; where a reading came from and what it was for. Depends
//! on nothing else of the crate.

use chrono::{DateTime, Utc};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
