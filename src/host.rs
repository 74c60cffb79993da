//! The host's own figures for `GET /v1/node`: hostname, CPUs, load and memory read with `sysinfo`,
//! and the filesystem holding a path (the Docker root directory) measured with `statvfs`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};

/// What the host says of itself at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostFigures {
    pub hostname: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    pub load: Option<LoadAverage>,
    pub memory: MemoryFigures,
    /// Seconds since the host booted; named apart from `agent.uptimeSeconds` beside it in the
    /// node report.
    pub host_uptime_seconds: Option<u64>,
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
    /// Where its filesystem is mounted, in the agent's view of the mounts; null when no mount
    /// point above the path is on the path's device.
    pub mount_point: Option<String>,
    pub total_bytes: u64,
    /// What an unprivileged writer may still use (the root-reserved blocks left out).
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
        host_uptime_seconds: System::uptime().ok(),
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
        host_uptime_seconds: None,
    }
}

/// The filesystem holding `path`, measured at the path itself, or `None` when the path cannot be
/// seen from here: a parent's filesystem would be a guess. Blocking: it asks the kernel and reads
/// the mount table.
pub fn disk_of(path: &Path) -> Option<DiskFigures> {
    let measured = rustix::fs::statvfs(path)
        .map_err(std::io::Error::from)
        .and_then(|figures| Ok((figures, std::fs::metadata(path)?.dev())));
    let (figures, device) = match measured {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "the path cannot be measured");
            return None;
        }
    };
    Some(DiskFigures {
        path: path.display().to_string(),
        mount_point: mount_point_of(path, device).map(|m| m.display().to_string()),
        total_bytes: figures.f_blocks.saturating_mul(figures.f_frsize),
        available_bytes: figures.f_bavail.saturating_mul(figures.f_frsize),
    })
}

/// Where the filesystem holding `path` is mounted: the longest mount point in the agent's mount
/// table at or above the path, and only if that mount point is on `device`, the path's own device,
/// so that a table which does not match what the path is on gives no answer rather than a wrong
/// one. A bind mount counts: it is where the agent sees the filesystem mounted.
fn mount_point_of(path: &Path, device: u64) -> Option<PathBuf> {
    let path = std::fs::canonicalize(path).ok()?;
    let table = std::fs::read("/proc/self/mountinfo").ok()?;
    mount_points(&table)
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .filter(|m| std::fs::metadata(m).is_ok_and(|md| md.dev() == device))
}

/// The mount points listed in a `/proc/self/mountinfo` table: the fifth field of each line.
fn mount_points(table: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape_octal)
}

/// Undoes the kernel's escapes in a mount table field: a space, tab, newline or backslash in a
/// path is written as `\` and three octal digits.
fn unescape_octal(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = tail
            .get(..3)
            .filter(|digits| first == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                u8::try_from(digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'))).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = &tail[3..];
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
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
        assert!(figures.host_uptime_seconds.is_some(), "{figures:?}");
        let disk = disk_of(Path::new("/")).expect("the root filesystem is mounted");
        assert_eq!(disk.mount_point.as_deref(), Some("/"));
        assert!(disk.total_bytes > 0, "{disk:?}");
        assert!(disk.available_bytes <= disk.total_bytes, "{disk:?}");
    }

    #[test]
    fn a_path_is_measured_on_its_own_filesystem_whatever_its_type() {
        // sysinfo's list of disks leaves procfs out, as it does tmpfs and nfs; the path's own
        // filesystem is measured all the same, not the root's.
        let disk = disk_of(Path::new("/proc/self")).expect("/proc is mounted");
        assert_eq!(disk.path, "/proc/self");
        assert_eq!(disk.mount_point.as_deref(), Some("/proc"), "{disk:?}");
        assert_eq!(disk.total_bytes, 0, "{disk:?}");
    }

    #[test]
    fn a_path_that_cannot_be_seen_is_not_measured() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(disk_of(&dir.path().join("absent")), None);
    }

    #[test]
    fn mount_points_are_read_with_their_escapes_undone() {
        let table = b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
            42 27 0:51 / /mnt/with\\040space\\134and\\011tab rw - tmpfs tmpfs rw\n\
            43 27 0:52 / /mnt/plain\\ rw - tmpfs tmpfs rw\n";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/"),
                PathBuf::from("/mnt/with space\\and\ttab"),
                PathBuf::from("/mnt/plain\\"),
            ]
        );
    }
}
