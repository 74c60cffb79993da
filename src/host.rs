//! The host's own figures for `GET /v1/node`, read with `sysinfo`: hostname, CPUs, load, memory and
//! the disk that holds the Docker root directory.

use std::path::Path;

use serde::Serialize;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, System};

/// What the host says of itself at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostFigures {
    pub hostname: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    pub load: Option<LoadAverage>,
    pub memory: MemoryFigures,
    /// Seconds since the host booted.
    pub uptime_seconds: Option<u64>,
}

/// The run queue, averaged over one, five and fifteen minutes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFigures {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

/// The filesystem holding a path.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskFigures {
    /// The path asked about.
    pub path: String,
    /// Where its filesystem is mounted.
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Reads the host's figures. Blocking: it reads `/proc`.
pub fn read() -> HostFigures {
    let Ok(mut system) = System::new() else {
        return read_nothing();
    };
    system.refresh_cpu_list(CpuRefreshKind::nothing());
    system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    HostFigures {
        hostname: System::host_name().ok(),
        cpus: system.cpus().len(),
        load: System::load_average().ok().map(|l| LoadAverage {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        }),
        memory: MemoryFigures {
            total_bytes: system.total_memory(),
            available_bytes: system.available_memory(),
            used_bytes: system.used_memory(),
        },
        uptime_seconds: System::uptime().ok(),
    }
}

/// Figures that say nothing, for when the host could not be read.
pub fn read_nothing() -> HostFigures {
    HostFigures {
        hostname: None,
        cpus: 0,
        load: None,
        memory: MemoryFigures {
            total_bytes: 0,
            available_bytes: 0,
            used_bytes: 0,
        },
        uptime_seconds: None,
    }
}

/// The filesystem holding `path`: the mounted disk whose mount point is the longest prefix of it.
/// Blocking: it reads the mount table and asks the kernel for each filesystem's figures.
pub fn disk_of(path: &Path) -> Option<DiskFigures> {
    let disks = Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| DiskFigures {
            path: path.display().to_string(),
            mount_point: d.mount_point().display().to_string(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_cpus_memory_and_a_root_filesystem() {
        let figures = read();
        assert!(figures.cpus >= 1, "{figures:?}");
        assert!(figures.memory.total_bytes > 0, "{figures:?}");
        assert!(
            figures.memory.available_bytes <= figures.memory.total_bytes,
            "{figures:?}"
        );
        assert!(figures.load.is_some(), "{figures:?}");
        let disk = disk_of(Path::new("/")).expect("the root filesystem is mounted");
        assert_eq!(disk.mount_point, "/");
        assert!(disk.total_bytes > 0, "{disk:?}");
    }
}
