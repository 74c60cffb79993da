//! A running container's figures read from this host's own files, the way the engine reads them:
//! its cgroup (v1 or v2, under the cgroupfs or the systemd driver), the counters of its network
//! namespace, and the host's CPU time. A reading takes microseconds, where the engine's stats call
//! waits for its one-second collector.
//!
//! Everything here refuses rather than guesses: a file that cannot be read or parsed is an error,
//! never a zero, so that a wrong final sample is never taken for a missing one. The `/proc` files
//! are parsed with `procfs-core`; the cgroup files, a number or a list of keyed numbers each, by
//! [`parse`].

mod parse;
#[cfg(test)]
pub(crate) mod recorded;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use procfs_core::{ExplicitSystemInfo, FromRead, FromReadSI};

use crate::stats::{RawStats, SampleSource};

/// `/proc/stat` counts in USER_HZ, 100 on every architecture Linux runs Docker on (the engine
/// assumes the same).
const USER_HZ: u64 = 100;
const NANOS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// The host's files, seen from `root` (`/` in the daemon; a recorded file set in tests).
#[derive(Debug, Clone)]
pub struct HostFiles {
    root: PathBuf,
    /// `MemTotal`: the limit the engine reports for a container without one of its own.
    machine_memory: u64,
}

/// Where one container's figures are read, found once per run of the container. Its cgroup files
/// are opened once and read again from the start each time (a cgroup file gives its current
/// value at every read from offset 0): no path is looked up per reading. Clones share the files.
#[derive(Debug, Clone)]
pub struct Located {
    /// The container's main process, whose `/proc` entry names its cgroup and network namespace.
    pub pid: u32,
    pub version: CgroupVersion,
    files: Arc<CgroupFiles>,
    /// `/proc/<pid>`, opened once: whose `net/dev` is opened at each full reading, and through
    /// which a [`HostFiles::pulse`] tells whether the process still lives. The directory stays the
    /// container's process's: once that has ended, a reading fails rather than find a new process
    /// under a reused pid. `net/dev` itself is not kept open: that would keep the container's
    /// network namespace alive after the container.
    proc: Arc<ProcDir>,
    /// On the host's network: its counters are the host's, and none are read (the engine reports
    /// none for it either).
    host_network: bool,
}

/// A process's `/proc` directory, held open.
#[derive(Debug)]
struct ProcDir {
    path: PathBuf,
    dir: rustix::fd::OwnedFd,
}

impl ProcDir {
    fn open(path: PathBuf) -> Result<ProcDir, ReadError> {
        use rustix::fs::{Mode, OFlags};
        let dir = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ReadError::io(&path, e.into()))?;
        Ok(ProcDir { path, dir })
    }

    /// Whether this very process still lives: one lookup in its directory, which fails once the
    /// process has ended and been reaped ([`ReadError::Gone`]).
    fn alive(&self) -> Result<(), ReadError> {
        use rustix::fs::{AtFlags, statat};
        statat(&self.dir, c"cgroup", AtFlags::SYMLINK_NOFOLLOW)
            .map(drop)
            .map_err(|e| ReadError::io(&self.path, e.into()))
    }

    /// `net/dev` of this very process, read now.
    fn net_dev(&self) -> Result<Vec<u8>, ReadError> {
        use rustix::fs::{Mode, OFlags};
        use std::io::Read;
        let path = self.path.join("net/dev");
        let fd = rustix::fs::openat(
            &self.dir,
            "net/dev",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ReadError::io(&path, e.into()))?;
        let mut bytes = Vec::with_capacity(1024);
        std::fs::File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(|e| ReadError::io(&path, e))?;
        Ok(bytes)
    }
}

impl Located {
    /// The file the container's CPU time is read from.
    pub fn cpu_path(&self) -> &Path {
        &self.files.cpu.path
    }
}

/// The open cgroup files of one container.
#[derive(Debug)]
struct CgroupFiles {
    cpu: CgroupFile,
    cpu_v2: bool,
    usage: CgroupFile,
    limit: CgroupFile,
    stat: CgroupFile,
    /// The key of `stat` that counts inactive file pages.
    inactive_key: &'static str,
}

#[derive(Debug)]
struct CgroupFile {
    path: PathBuf,
    file: std::fs::File,
}

impl CgroupFile {
    fn open(path: PathBuf) -> Result<CgroupFile, ReadError> {
        let file = std::fs::File::open(&path).map_err(|e| ReadError::io(&path, e))?;
        Ok(CgroupFile { path, file })
    }

    /// The file's text now, read from its start in one read: a cgroup file is generated whole at
    /// each read from offset 0, and two readers of the same file (the ticker and a sample) must
    /// not splice one reading's tail onto another's head. Only a file larger than the buffer,
    /// which no cgroup file this reads is, takes more reads.
    fn read(&self) -> Result<String, ReadError> {
        use std::os::unix::fs::FileExt;
        let mut text = vec![0u8; 16 * 1024];
        let mut len = 0;
        loop {
            let n = self
                .file
                .read_at(&mut text[len..], len as u64)
                .map_err(|e| ReadError::io(&self.path, e))?;
            len += n;
            if n == 0 || len < text.len() {
                break;
            }
            text.resize(text.len() * 2, 0);
        }
        text.truncate(len);
        String::from_utf8(text).map_err(|_| ReadError::malformed(&self.path, "not UTF-8"))
    }

    /// As [`CgroupFile::read`], for the small files read at every tick (one number, or the few
    /// lines of `cpu.stat`): read into the stack, without an allocation; a text that fills the
    /// buffer is read again the long way.
    fn with_small<T>(
        &self,
        f: impl FnOnce(&Path, &str) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 512];
        let n = self
            .file
            .read_at(&mut buf, 0)
            .map_err(|e| ReadError::io(&self.path, e))?;
        if n == buf.len() {
            return f(&self.path, &self.read()?);
        }
        let text = std::str::from_utf8(&buf[..n])
            .map_err(|_| ReadError::malformed(&self.path, "not UTF-8"))?;
        f(&self.path, text)
    }
}

impl CgroupFiles {
    /// The cgroup's CPU time, nanoseconds.
    fn cpu_ns(&self) -> Result<u64, ReadError> {
        if self.cpu_v2 {
            self.cpu.with_small(|path, text| {
                Ok(parse::keyed(path, text, "usage_usec")?
                    .ok_or_else(|| ReadError::malformed(path, "no usage_usec"))?
                    .saturating_mul(1000))
            })
        } else {
            self.cpu.with_small(parse::number)
        }
    }

    fn memory_usage(&self) -> Result<u64, ReadError> {
        self.usage.with_small(parse::number)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn label(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// The host's CPU time, as the engine computes its `system_cpu_usage`: the first seven fields of
/// `/proc/stat`'s `cpu` line (user to softirq; not steal), in nanoseconds, and the online CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SystemCpu {
    pub total_ns: u64,
    pub online_cpus: u32,
    /// Time the hypervisor took from this host's CPUs (the eighth field), which the engine's sum
    /// leaves out.
    pub steal_ns: u64,
}

impl SystemCpu {
    /// The host's CPU time over `wall`, in the engine's meaning, without `/proc/stat`'s 10 ms
    /// ticks: the wall time on every online CPU, less the share the hypervisor has stolen since
    /// boot. For intervals too short for the ticks to count them well.
    pub fn over(&self, wall: std::time::Duration) -> u64 {
        let all = self.total_ns.saturating_add(self.steal_ns);
        let share = if all == 0 {
            1.0
        } else {
            self.total_ns as f64 / all as f64
        };
        (wall.as_nanos() as f64 * f64::from(self.online_cpus) * share) as u64
    }
}

/// One reading of a container's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub at: DateTime<Utc>,
    /// The cgroup's CPU time, nanoseconds.
    pub cpu_ns: u64,
    pub system: SystemCpu,
    pub memory_usage: u64,
    /// `total_inactive_file` (v1) or `inactive_file` (v2): page cache the kernel may reclaim.
    pub memory_inactive_file: Option<u64>,
    pub memory_limit: u64,
    pub network_rx: u64,
    pub network_tx: u64,
}

/// The two figures of a container that move whenever it does anything, read at every tick: its
/// CPU time and its memory usage ([`HostFiles::pulse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    pub cpu_ns: u64,
    pub memory_usage: u64,
}

/// The CPU counters of a reading, the start of the next interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPoint {
    pub cpu_ns: u64,
    pub system_ns: u64,
}

impl Reading {
    /// The figures this reading's [`Pulse`] gives.
    pub fn pulse(&self) -> Pulse {
        Pulse {
            cpu_ns: self.cpu_ns,
            memory_usage: self.memory_usage,
        }
    }

    /// This reading brought up to `pulse`, read at `at` after `system`: the CPU time, the memory
    /// usage and the host's CPU time are `pulse`'s and `system`'s, the rest (the memory limit, the
    /// reclaimable page cache, the network counters) this reading's.
    pub fn advanced(&self, at: DateTime<Utc>, system: SystemCpu, pulse: Pulse) -> Reading {
        Reading {
            at,
            cpu_ns: pulse.cpu_ns,
            system,
            memory_usage: pulse.memory_usage,
            ..self.clone()
        }
    }

    pub fn cpu_point(&self) -> CpuPoint {
        CpuPoint {
            cpu_ns: self.cpu_ns,
            system_ns: self.system.total_ns,
        }
    }

    /// The reading as the engine's stats answer would give it, with CPU % over the interval since
    /// `before` (none without one: one reading alone has no interval).
    pub fn to_raw(&self, before: Option<CpuPoint>) -> RawStats {
        let before = before.unwrap_or(CpuPoint {
            cpu_ns: 0,
            system_ns: 0,
        });
        RawStats {
            read_at: Some(self.at),
            cpu_total: self.cpu_ns,
            precpu_total: before.cpu_ns,
            system_total: self.system.total_ns,
            presystem_total: before.system_ns,
            online_cpus: self.system.online_cpus,
            memory_usage: self.memory_usage,
            memory_reclaimable: self.memory_inactive_file,
            memory_limit: self.memory_limit,
            network_rx: self.network_rx,
            network_tx: self.network_tx,
            source: SampleSource::Cgroup,
        }
    }
}

/// Why a container's figures cannot be read from the host's files; its samples then come from the
/// engine.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("the engine gave no process id")]
    NoPid,
    #[error(
        "process {pid} is not visible in /proc (ProtectProc=invisible, or another pid namespace)"
    )]
    Hidden { pid: u32 },
    #[error("process {pid}'s cgroup {path:?} does not name the container")]
    NotTheContainer { pid: u32, path: String },
    #[error("no {controller} controller in process {pid}'s cgroups")]
    NoController { pid: u32, controller: &'static str },
    #[error("no mount of the {what} hierarchy holds {path:?}")]
    NotMounted { what: String, path: String },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cgroup or the process is gone: the container has stopped.
    #[error("the container's cgroup or process is gone")]
    Gone,
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {why}")]
    Malformed { path: PathBuf, why: String },
}

impl ReadError {
    fn io(path: &Path, source: io::Error) -> ReadError {
        // ENOENT: the cgroup directory or /proc/<pid> was removed; ENODEV: a cgroup file read
        // while its cgroup is removed; ESRCH: the process ended while its entry was read.
        let gone = source.kind() == io::ErrorKind::NotFound
            || matches!(
                source.raw_os_error(),
                Some(code) if code == rustix::io::Errno::NODEV.raw_os_error()
                    || code == rustix::io::Errno::SRCH.raw_os_error()
            );
        if gone {
            ReadError::Gone
        } else {
            ReadError::Unreadable {
                path: path.to_owned(),
                source,
            }
        }
    }

    fn malformed(path: &Path, why: impl std::fmt::Display) -> ReadError {
        ReadError::Malformed {
            path: path.to_owned(),
            why: why.to_string(),
        }
    }
}

impl HostFiles {
    /// This host's files, when the engine runs on this host: a remote engine's containers are not
    /// here. `None` when `/proc/meminfo` cannot be read (no `/proc`, as in some sandboxes).
    pub fn of_this_host(engine_is_local: bool) -> Option<HostFiles> {
        if !engine_is_local {
            return None;
        }
        match HostFiles::at("/") {
            Ok(files) => Some(files),
            Err(e) => {
                tracing::info!(error = %e, "samples come from the engine: the host's files cannot be read");
                None
            }
        }
    }

    /// The host's files under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Result<HostFiles, ReadError> {
        let root = root.into();
        let path = root.join("proc/meminfo");
        let meminfo = procfs_core::Meminfo::from_read(read_bytes(&path)?.as_slice())
            .map_err(|e| ReadError::malformed(&path, e))?;
        Ok(HostFiles {
            root,
            machine_memory: meminfo.mem_total,
        })
    }

    fn path(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let relative = absolute
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(absolute.as_ref());
        self.root.join(relative)
    }

    /// Finds where the figures of `container_id` (the full id), whose main process is `pid`, are
    /// read, and checks that they can be: the process's cgroup must name the container, so that a
    /// pid from another pid namespace, or one reused, is never read as the container's.
    pub fn locate(
        &self,
        pid: u32,
        container_id: &str,
        host_network: bool,
    ) -> Result<Located, Unusable> {
        if pid == 0 {
            return Err(Unusable::NoPid);
        }
        if container_id.len() < 12 {
            return Err(Unusable::NotTheContainer {
                pid,
                path: format!("(an id of {} characters)", container_id.len()),
            });
        }
        let path = self.path(format!("/proc/{pid}/cgroup"));
        let cgroups = match read_bytes(&path) {
            Ok(bytes) => procfs_core::ProcessCGroups::from_read(bytes.as_slice())
                .map_err(|e| ReadError::malformed(&path, e))?,
            // Ended, where this host's /proc shows every process; else hidden from the agent.
            Err(ReadError::Gone) if self.path("/proc/1").exists() => {
                return Err(ReadError::Gone.into());
            }
            Err(ReadError::Gone) => return Err(Unusable::Hidden { pid }),
            Err(e) => return Err(e.into()),
        };
        let mountinfo = self.path("/proc/self/mountinfo");
        let mounts =
            procfs_core::process::MountInfos::from_read(read_bytes(&mountinfo)?.as_slice())
                .map_err(|e| ReadError::malformed(&mountinfo, e))?;
        let find = |controller: &'static str| -> Result<(CgroupVersion, PathBuf), Unusable> {
            let (version, cgroup) = cgroups
                .0
                .iter()
                .find(|c| c.controllers.iter().any(|n| n == controller))
                .map(|c| (CgroupVersion::V1, c))
                .or_else(|| {
                    cgroups
                        .0
                        .iter()
                        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
                        .map(|c| (CgroupVersion::V2, c))
                })
                .ok_or(Unusable::NoController { pid, controller })?;
            // The container's own cgroup: the one named by its id. Its main process may sit in a
            // cgroup below it (`init`, `container`), which is not the whole container.
            let Some(at) = cgroup.pathname.find(container_id) else {
                return Err(Unusable::NotTheContainer {
                    pid,
                    path: cgroup.pathname.clone(),
                });
            };
            let end = cgroup.pathname[at..]
                .find('/')
                .map_or(cgroup.pathname.len(), |slash| at + slash);
            let own = &cgroup.pathname[..end];
            let dir = self.mounted(&mounts, version, controller, own)?;
            Ok((version, dir))
        };
        let (cpu_version, cpu_dir) = find("cpuacct")?;
        let (memory_version, memory_dir) = find("memory")?;
        let cpu_v2 = cpu_version == CgroupVersion::V2;
        let cpu = cpu_dir.join(if cpu_v2 { "cpu.stat" } else { "cpuacct.usage" });
        let (usage, limit, inactive_key) = match memory_version {
            CgroupVersion::V1 => (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "total_inactive_file",
            ),
            CgroupVersion::V2 => ("memory.current", "memory.max", "inactive_file"),
        };
        let proc_dir = self.path(format!("/proc/{pid}"));
        // A file missing while the process lives is a layout this does not know (a controller
        // not delegated, say), not an ended container.
        let open = |path: PathBuf| match CgroupFile::open(path.clone()) {
            Err(ReadError::Gone) if proc_dir.exists() => Err(Unusable::NotMounted {
                what: "a cgroup file".to_owned(),
                path: path.display().to_string(),
            }),
            other => other.map_err(Unusable::from),
        };
        let files = CgroupFiles {
            cpu: open(cpu)?,
            cpu_v2,
            usage: open(memory_dir.join(usage))?,
            limit: open(memory_dir.join(limit))?,
            stat: open(memory_dir.join("memory.stat"))?,
            inactive_key,
        };
        let proc = Arc::new(ProcDir::open(proc_dir)?);
        Ok(Located {
            pid,
            version: memory_version,
            files: Arc::new(files),
            proc,
            host_network,
        })
    }

    /// The directory of cgroup `pathname` in this host's mount of its hierarchy: a v1 hierarchy
    /// that carries `controller`, or the v2 one. A cgroup outside the mount's root (another cgroup
    /// namespace's) is not visible.
    fn mounted(
        &self,
        mounts: &procfs_core::process::MountInfos,
        version: CgroupVersion,
        controller: &str,
        pathname: &str,
    ) -> Result<PathBuf, Unusable> {
        let what = match version {
            CgroupVersion::V1 => format!("cgroup v1 {controller}"),
            CgroupVersion::V2 => "cgroup v2".to_owned(),
        };
        let not_mounted = || Unusable::NotMounted {
            what: what.clone(),
            path: pathname.to_owned(),
        };
        let relative = Path::new(pathname);
        if relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(not_mounted());
        }
        mounts
            .0
            .iter()
            .filter(|m| match version {
                CgroupVersion::V1 => {
                    m.fs_type == "cgroup" && m.super_options.contains_key(controller)
                }
                CgroupVersion::V2 => m.fs_type == "cgroup2",
            })
            .find_map(|m| {
                let inside = relative.strip_prefix(&m.root).ok()?;
                Some(self.path(&m.mount_point).join(inside))
            })
            .ok_or_else(not_mounted)
    }

    /// The host's CPU time now.
    pub fn system(&self) -> Result<SystemCpu, ReadError> {
        let path = self.path("/proc/stat");
        let info = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: USER_HZ,
            page_size: 4096,
            is_little_endian: cfg!(target_endian = "little"),
        };
        let stats = procfs_core::KernelStats::from_read(read_bytes(&path)?.as_slice(), &info)
            .map_err(|e| ReadError::malformed(&path, e))?;
        let t = &stats.total;
        let ticks = [
            Some(t.user),
            Some(t.nice),
            Some(t.system),
            Some(t.idle),
            t.iowait,
            t.irq,
            t.softirq,
        ]
        .into_iter()
        .map(|v| v.ok_or_else(|| ReadError::malformed(&path, "a cpu line of fewer than 7 fields")))
        .sum::<Result<u64, ReadError>>()?;
        Ok(SystemCpu {
            total_ns: ticks.saturating_mul(NANOS_PER_TICK),
            online_cpus: u32::try_from(stats.cpu_time.len()).unwrap_or(u32::MAX),
            steal_ns: t.steal.unwrap_or(0).saturating_mul(NANOS_PER_TICK),
        })
    }

    /// Reads the container's counters now, with `system` read just before. The network counters
    /// are read first, while the process is sure to be the container's; a cgroup that is gone
    /// then means the container has stopped, and no reading of it is made.
    pub fn read(&self, located: &Located, system: SystemCpu) -> Result<Reading, ReadError> {
        let at = Utc::now();
        let (network_rx, network_tx) = match (!located.host_network).then_some(&located.proc) {
            Some(proc_dir) => {
                let bytes = proc_dir.net_dev()?;
                let devices = procfs_core::net::InterfaceDeviceStatus::from_read(bytes.as_slice())
                    .map_err(|e| ReadError::malformed(&proc_dir.path.join("net/dev"), e))?;
                // As the engine: the container's own interfaces, not its loopback.
                devices
                    .0
                    .values()
                    .filter(|d| d.name != "lo")
                    .fold((0u64, 0u64), |(rx, tx), d| {
                        (
                            rx.saturating_add(d.recv_bytes),
                            tx.saturating_add(d.sent_bytes),
                        )
                    })
            }
            None => (0, 0),
        };
        let f = &located.files;
        let cpu_ns = f.cpu_ns()?;
        let memory_usage = f.memory_usage()?;
        let own_limit = parse::limit(&f.limit.path, &f.limit.read()?)?;
        let memory_inactive_file = parse::keyed(&f.stat.path, &f.stat.read()?, f.inactive_key)?;
        Ok(Reading {
            at,
            cpu_ns,
            system,
            memory_usage,
            memory_inactive_file,
            // As the engine: no limit of its own, or one above the host's memory, is the host's.
            memory_limit: if self.machine_memory > 0 {
                own_limit.min(self.machine_memory)
            } else {
                own_limit
            },
            network_rx,
            network_tx,
        })
    }
}

impl HostFiles {
    /// The container's [`Pulse`] now: its CPU time and memory usage, two small cgroup files, then
    /// a look at whether its process still lives. [`ReadError::Gone`] once the process has ended
    /// (its cgroup may outlive it a moment, with the figures of no process), as a full reading.
    pub fn pulse(&self, located: &Located) -> Result<Pulse, ReadError> {
        let pulse = Pulse {
            cpu_ns: located.files.cpu_ns()?,
            memory_usage: located.files.memory_usage()?,
        };
        located.proc.alive()?;
        Ok(pulse)
    }
}

/// A file's bytes, with errors of the read itself (a process that ends while its entry is read)
/// told apart as those of the open: the `/proc` files are read whole, then parsed.
fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|e| ReadError::io(path, e))
}
