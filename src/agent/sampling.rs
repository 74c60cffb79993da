//! The figures of every running app, at the moment they are asked for. Where the engine runs on
//! this host, the agent reads each container's cgroup and network counters itself
//! ([`crate::cgroup`]): a sample takes microseconds and costs the engine nothing. One ticker reads
//! every such container once a second, for the start of the next CPU interval and for the last
//! figures of a container that ends on its own. Where the host's files cannot serve (a remote
//! engine, a process the agent cannot see, a layout it does not recognise, a file it may not
//! read), the agent follows the engine's own one-a-second stats stream instead, and asks the engine
//! when that has no fresh reading.
//!
//! The ticker's cost grows with the apps, so a tick reads of each container only what moves when
//! it does anything: its CPU time and memory usage, two small cgroup files, and a look that its
//! process lives ([`crate::cgroup::HostFiles::pulse`]). The files whose text the kernel formats
//! at some length (`memory.stat`, `net/dev`) and the memory limit are read again only when that
//! pulse has moved since they were last read, or after [`SETTLED_REFRESH`]. The figures stay as
//! fresh as they were when every tick read every file:
//! - a sample asked for (a read, a stop's final sample) reads every file at that moment, as it
//!   always did ([`Sampler::sample_now`]); the start of its CPU interval is still a tick's point, and
//!   every tick still reads the CPU time;
//! - a container that ends on its own leaves the last tick's figures, as before: its CPU time and
//!   memory usage read at that tick, and the rest read at that tick too whenever the container
//!   used any CPU or memory since they were read. A container whose CPU time has not moved by one
//!   nanosecond, nor its memory usage by one byte, has not run: its page cache and its own traffic
//!   are as they were (only the kernel moves them then, by reclaim or by packets the container
//!   never wakes for, which [`SETTLED_REFRESH`] bounds).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use crate::background::Background;
use crate::cgroup::{CpuPoint, HostFiles, Located, Pulse, ReadError, Reading, Unusable};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};
use crate::stats::{RawStats, SamplePurpose};
use crate::telemetry::Telemetry;

/// A stream's reading older than this is not fresh enough for a final sample; the engine sends one
/// a second.
const FRESH: Duration = Duration::from_millis(1500);
/// How often the ticker reads every container followed on the host.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// The CPU interval a sample prefers at least, when the ticker's readings allow it; `docker stats`
/// measures over about a second.
const PREFERRED_INTERVAL: Duration = Duration::from_millis(500);
/// Below this, `/proc/stat`'s 10 ms ticks would be too coarse a measure of the host's CPU time
/// over the interval: it is taken from the wall clock instead ([`crate::cgroup::SystemCpu::over`]).
const TICKS_SUFFICE: Duration = Duration::from_millis(100);
/// The shortest CPU interval a sample measures over. Only a container first seen at the very
/// moment of its sample waits for it.
const SHORTEST: Duration = Duration::from_millis(10);
/// CPU points kept of each container: enough for an interval of half a second to a second and a
/// half between ticks.
const POINTS: usize = 3;
/// How long a tick may go on taking a container's memory limit, reclaimable page cache and network
/// counters from an earlier reading while its CPU time and memory usage have not moved.
const SETTLED_REFRESH: Duration = Duration::from_secs(10);
/// How long a container whose cgroup has gone keeps its last figures for the record that has not
/// noticed yet.
const ENDED_KEPT: Duration = Duration::from_secs(60);

/// How a container stands with the host's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnHost {
    /// Its figures are read there.
    Followed,
    /// Its cgroup or process is gone: it has ended.
    Ended,
    /// They cannot be read there; the engine's stats serve.
    Refused,
}

/// The readings of each followed container, by the `containerId` its record names.
#[derive(Debug, Default)]
pub(super) struct Readings {
    /// Containers read on the host.
    host: HashMap<String, Tracked>,
    /// Containers whose figures the host's files could not give, with the process (the run) they
    /// were refused for; a new run is tried again.
    refused: HashMap<String, u32>,
    /// Containers whose engine stream is followed.
    latest: HashMap<String, Latest>,
    /// Whether the ticker runs.
    ticking: bool,
}

#[derive(Debug)]
struct Tracked {
    located: Located,
    /// CPU points of this run, oldest first, with when they were read.
    points: VecDeque<(Instant, CpuPoint)>,
    /// The latest figures, for a container that ends on its own.
    last: RawStats,
    /// The latest reading of every file, and when it was taken: what a tick that reads only the
    /// pulse brings up to date.
    full: (Instant, Reading),
    /// Whether its pulse moved between the last two readings of every file: a container that
    /// runs is read whole at once, without a look at its pulse first.
    busy: bool,
    /// When a read found its cgroup gone.
    ended: Option<Instant>,
}

impl Tracked {
    /// The start of a CPU interval ending `now`: the newest point at least
    /// [`PREFERRED_INTERVAL`] old, else the oldest there is.
    fn interval_start(&self, now: Instant) -> Option<(Instant, CpuPoint)> {
        self.points
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= PREFERRED_INTERVAL)
            .or_else(|| self.points.front())
            .copied()
    }

    /// What a tick reads of it: the pulse alone when that has not moved since the last full
    /// reading and that is recent, else everything (see the module's documentation).
    fn wants(&self, now: Instant) -> Want {
        let (at, full) = &self.full;
        if !self.busy && now.saturating_duration_since(*at) < SETTLED_REFRESH {
            Want::Pulse(full.pulse())
        } else {
            Want::Full
        }
    }

    /// Takes a reading of every file.
    fn note_full(&mut self, at: Instant, reading: Reading) {
        self.note(at, &reading);
        self.busy = reading.pulse() != self.full.1.pulse();
        self.full = (at, reading);
    }

    fn note(&mut self, at: Instant, reading: &Reading) {
        let before = self.points.back().map(|(_, p)| *p);
        self.last = reading.to_raw(before);
        self.points.push_back((at, reading.cpu_point()));
        while self.points.len() > POINTS {
            self.points.pop_front();
        }
    }
}

/// What a tick reads of a container.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Its pulse; everything if that differs from this one.
    Pulse(Pulse),
    /// Everything.
    Full,
}

/// What a tick read of a container.
#[derive(Debug)]
enum Read {
    /// Its pulse, unmoved, with when it was read and the host's CPU time just before.
    Pulse(DateTime<Utc>, crate::cgroup::SystemCpu, Pulse),
    Full(Reading),
}

#[derive(Debug)]
struct Latest {
    stats: RawStats,
    at: Instant,
    /// How much later than the stream's most prompt reading this one came, judged by the engine's
    /// `read` time against this host's clock at arrival. The engine's clock may differ from this
    /// host's by a constant (a remote engine): only the excess over the stream's best counts.
    late: Duration,
    /// The least (arrival − `read`) seen on this stream, the two clocks' offset plus the least
    /// delivery time.
    best_offset: Option<chrono::Duration>,
    /// Whether the engine's stream for it is open.
    streaming: bool,
}

impl Latest {
    /// Takes a reading that has just arrived.
    fn note(&mut self, stats: RawStats) {
        self.late = Duration::ZERO;
        if let Some(read) = stats.read_at {
            let offset = chrono::Utc::now() - read;
            let best = self.best_offset.map_or(offset, |best| best.min(offset));
            self.best_offset = Some(best);
            self.late = (offset - best).to_std().unwrap_or(Duration::ZERO);
        }
        self.stats = stats;
        self.at = Instant::now();
    }
}

/// The sampler: a cheap-clone handle on the readings of every followed container, with what it
/// reads them through (the host's files, the engine) and where its ticker and streams run.
#[derive(Clone)]
pub struct Sampler {
    readings: Arc<Mutex<Readings>>,
    /// This host's files, where the engine runs on this host: samples read there.
    host: Option<Arc<HostFiles>>,
    runtime: Arc<dyn ContainerRuntime>,
    telemetry: Arc<Telemetry>,
    background: Background,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (on_host, streams) = self.followed();
        f.debug_struct("Sampler")
            .field("on_host", &on_host)
            .field("streams", &streams)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    pub(super) fn new(
        host: Option<HostFiles>,
        runtime: Arc<dyn ContainerRuntime>,
        telemetry: Arc<Telemetry>,
        background: Background,
    ) -> Sampler {
        Sampler {
            readings: Arc::default(),
            host: host.map(Arc::new),
            runtime,
            telemetry,
            background,
        }
    }

    fn readings(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.readings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn host_files(&self) -> Option<&Arc<HostFiles>> {
        self.host.as_ref()
    }

    /// Starts following the figures of a running container, unless already followed for this run:
    /// on the host when its files serve, else through the engine's stream.
    pub(super) fn follow(&self, container: &str, state: &ContainerState) {
        if self.follow_on_host(container, state) == OnHost::Refused {
            self.follow_stream(container);
        }
    }

    /// Follows the container on the host's files, unless already followed for this run.
    fn follow_on_host(&self, container: &str, state: &ContainerState) -> OnHost {
        let Some(host) = self.host_files().cloned() else {
            return OnHost::Refused;
        };
        {
            let readings = self.readings();
            if readings
                .host
                .get(container)
                .is_some_and(|t| t.located.pid == state.pid && t.ended.is_none())
            {
                return OnHost::Followed;
            }
            if readings.refused.get(container) == Some(&state.pid) {
                return OnHost::Refused;
            }
        }
        let first = host
            .locate(state.pid, &state.id, state.host_network)
            .and_then(|located| {
                let reading = host.read(&located, host.system()?)?;
                Ok((located, reading))
            });
        let now = Instant::now();
        let mut readings = self.readings();
        match first {
            Ok((located, reading)) => {
                tracing::debug!(%container, pid = state.pid, cgroup = located.version.label(), "figures read from the host's files");
                let mut tracked = Tracked {
                    located,
                    points: VecDeque::new(),
                    last: RawStats::default(),
                    full: (now, reading.clone()),
                    busy: false,
                    ended: None,
                };
                tracked.note(now, &reading);
                readings.host.insert(container.to_owned(), tracked);
                readings.refused.remove(container);
                if !readings.ticking {
                    readings.ticking = true;
                    self.start_ticker();
                }
                OnHost::Followed
            }
            // It ended since the engine said it runs: nothing to follow.
            Err(Unusable::Read(ReadError::Gone)) => OnHost::Ended,
            Err(e) => {
                drop(readings);
                self.refuse(container, state.pid, &e);
                OnHost::Refused
            }
        }
    }

    /// Gives up reading `container`'s run `pid` on the host, for `why`: its samples come from the
    /// engine's stats from now on (the caller follows its stream). Logged and counted once a run.
    fn refuse(&self, container: &str, pid: u32, why: &dyn std::fmt::Display) {
        tracing::warn!(%container, pid, reason = %why, "figures come from the engine's stats: the host's files cannot give them");
        self.telemetry.sample_fallback();
        let mut readings = self.readings();
        readings.host.remove(container);
        readings.refused.insert(container.to_owned(), pid);
    }

    /// Reads every container followed on the host once a [`TICK`], off the async threads, for as
    /// long as the agent lives.
    fn start_ticker(&self) {
        // It holds the readings weakly: a sampler no one holds any more is not read.
        let weak: Weak<Mutex<Readings>> = Arc::downgrade(&self.readings);
        let mut rest = self.clone();
        rest.readings = Arc::default();
        self.background.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(readings) = weak.upgrade() else {
                    return;
                };
                Sampler {
                    readings,
                    ..rest.clone()
                }
                .read_all()
                .await;
            }
        });
    }

    async fn read_all(&self) {
        let Some(host) = self.host_files().cloned() else {
            return;
        };
        let now = Instant::now();
        let followed: Vec<(String, Located, Want)> = {
            let mut readings = self.readings();
            readings
                .host
                .retain(|_, t| t.ended.is_none_or(|at| at.elapsed() < ENDED_KEPT));
            readings
                .host
                .iter()
                .filter(|(_, t)| t.ended.is_none())
                .map(|(c, t)| (c.clone(), t.located.clone(), t.wants(now)))
                .collect()
        };
        if followed.is_empty() {
            return;
        }
        let read = tokio::task::spawn_blocking(move || {
            // Without the host's CPU time there is no reading this tick; the next may have it.
            let system = match host.system() {
                Ok(system) => system,
                Err(e) => {
                    tracing::warn!(error = %e, "the host's CPU time could not be read; no readings this second");
                    return Vec::new();
                }
            };
            followed
                .into_iter()
                .map(|(container, located, want)| {
                    let at = Utc::now();
                    let read = match want {
                        Want::Pulse(before) => match host.pulse(&located) {
                            Ok(pulse) if pulse == before => Ok(Read::Pulse(at, system, pulse)),
                            Ok(_) => host.read(&located, system).map(Read::Full),
                            Err(e) => Err(e),
                        },
                        Want::Full => host.read(&located, system).map(Read::Full),
                    };
                    (container, located.pid, Instant::now(), read)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(read) = read else { return };
        let mut refused = Vec::new();
        {
            let mut readings = self.readings();
            for (container, pid, at, reading) in read {
                let Some(t) = readings.host.get_mut(&container) else {
                    continue;
                };
                if t.located.pid != pid {
                    continue;
                }
                match reading {
                    Ok(Read::Full(reading)) => t.note_full(at, reading),
                    Ok(Read::Pulse(read_at, system, pulse)) => {
                        let reading = t.full.1.advanced(read_at, system, pulse);
                        t.note(at, &reading);
                        t.busy = false;
                    }
                    Err(ReadError::Gone) => t.ended = Some(at),
                    Err(e) => refused.push((container, pid, e)),
                }
            }
        }
        for (container, pid, e) in refused {
            self.refuse(&container, pid, &e);
            self.follow_stream(&container);
        }
    }

    /// A sample of the container's figures from the host, now, with CPU % since the start of a
    /// recent interval. `None` when it is not followed on the host.
    async fn sample_on_host(&self, container: &str) -> Option<Result<RawStats, ReadError>> {
        let host = self.host_files()?.clone();
        let located = {
            let readings = self.readings();
            let t = readings.host.get(container)?;
            t.ended.is_none().then(|| t.located.clone())?
        };
        let read = || host.system().and_then(|system| host.read(&located, system));
        let mut reading = match read() {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let start = self
            .readings()
            .host
            .get(container)
            .filter(|t| t.located.pid == located.pid)?
            .interval_start(Instant::now());
        let mut before = start.map(|(_, point)| point);
        if let Some((from, point)) = start {
            let mut interval = from.elapsed();
            if interval < SHORTEST {
                tokio::time::sleep(SHORTEST - interval).await;
                reading = match read() {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                };
                interval = from.elapsed();
            }
            if interval < TICKS_SUFFICE {
                let system_ns = reading
                    .system
                    .total_ns
                    .saturating_sub(reading.system.over(interval));
                before = Some(CpuPoint {
                    cpu_ns: point.cpu_ns,
                    system_ns,
                });
            }
        }
        let stats = reading.to_raw(before);
        if let Some(t) = self
            .readings()
            .host
            .get_mut(container)
            .filter(|t| t.located.pid == located.pid)
        {
            t.last = stats.clone();
            t.full = (Instant::now(), reading);
        }
        Some(Ok(stats))
    }

    /// A reading of the running `container` for a sample now: from the host's files when they
    /// serve; else the engine stream's when it is fresh, else the engine's `stats` answer. An
    /// engine answer without a previous CPU reading (Podman's, which streams one reading in five
    /// seconds; a one-shot answer) is measured against the stream's last reading of the same run,
    /// so that its CPU % covers a real interval of the container's own usage.
    pub(super) async fn sample_now(
        &self,
        container: &str,
        state: &ContainerState,
        purpose: SamplePurpose,
    ) -> Result<RawStats, RuntimeError> {
        self.follow(container, state);
        match self.sample_on_host(container).await {
            Some(Ok(stats)) => {
                self.telemetry.sampled(stats.source, purpose);
                return Ok(stats);
            }
            // It has stopped: as the engine, no figures of a container that does not run.
            Some(Err(ReadError::Gone)) => return Ok(RawStats::default()),
            Some(Err(e)) => {
                self.refuse(container, state.pid, &e);
                self.follow_stream(container);
            }
            None => {}
        }
        let stats = self.sample_from_engine(container).await?;
        if !stats.is_empty() {
            self.telemetry.sampled(stats.source, purpose);
        }
        Ok(stats)
    }

    async fn sample_from_engine(&self, container: &str) -> Result<RawStats, RuntimeError> {
        if let Some(fresh) = self.fresh_reading(container) {
            return Ok(fresh);
        }
        let mut stats = self.runtime.stats(container).await?;
        if stats.presystem_total == 0 && !stats.is_empty() {
            let before = self
                .readings()
                .latest
                .get(container)
                .map(|l| l.stats.clone())
                .filter(|b| {
                    b.system_total > 0
                        && b.system_total < stats.system_total
                        && b.cpu_total <= stats.cpu_total
                });
            if let Some(before) = before {
                stats.precpu_total = before.cpu_total;
                stats.presystem_total = before.system_total;
            }
        }
        Ok(stats)
    }

    /// Starts following a running container's stats stream, unless already followed. The stream
    /// ends with the container; seeing it run again starts it anew.
    fn follow_stream(&self, container: &str) {
        {
            let mut readings = self.readings();
            let entry = readings
                .latest
                .entry(container.to_owned())
                .or_insert(Latest {
                    stats: RawStats::default(),
                    at: Instant::now(),
                    late: Duration::ZERO,
                    best_offset: None,
                    streaming: false,
                });
            if entry.streaming {
                return;
            }
            entry.streaming = true;
        }
        let sampler = self.clone();
        let container = container.to_owned();
        self.background.spawn(async move {
            match sampler.runtime.stats_stream(&container).await {
                Ok(mut stream) => {
                    while let Some(Ok(stats)) = stream.next().await {
                        if stats.is_empty() {
                            break;
                        }
                        if let Some(l) = sampler.readings().latest.get_mut(&container) {
                            l.note(stats);
                        }
                    }
                }
                Err(e) => tracing::debug!(%container, error = %e, "no stats stream"),
            }
            if let Some(l) = sampler.readings().latest.get_mut(&container) {
                l.streaming = false;
            }
        });
    }

    /// A stream reading taken less than [`FRESH`] ago over a real CPU interval, if the stream has
    /// one. Its age counts from its arrival plus how late it came: a stream that falls behind on a
    /// busy host delivers readings the engine took well before.
    pub(super) fn fresh_reading(&self, container: &str) -> Option<RawStats> {
        let readings = self.readings();
        let l = readings.latest.get(container)?;
        (l.at.elapsed() + l.late < FRESH && !l.stats.is_empty() && l.stats.presystem_total > 0)
            .then(|| l.stats.clone())
    }

    /// Whether the stream of `container` has delivered a reading, fresh or not.
    #[cfg(test)]
    pub(super) fn has_reading(&self, container: &str) -> bool {
        self.readings()
            .latest
            .get(container)
            .is_some_and(|l| !l.stats.is_empty())
    }

    /// The latest figures the ticks have of `container` on the host's files.
    #[cfg(test)]
    pub(super) fn last_on_host(&self, container: &str) -> Option<RawStats> {
        self.readings().host.get(container).map(|t| t.last.clone())
    }

    /// Whether `container` is followed on the host's files.
    #[cfg(test)]
    pub(super) fn followed_on_host(&self, container: &str) -> bool {
        self.readings()
            .host
            .get(container)
            .is_some_and(|t| t.ended.is_none())
    }

    /// The last reading of a container that has stopped, taken at or after `since` (its last
    /// start), and forgets it: a reading is someone's final sample only once. Its follower may not
    /// have noticed the end yet; no later reading of that run can come.
    pub(super) fn take_last_reading(
        &self,
        container: &str,
        since: Option<DateTime<Utc>>,
    ) -> Option<RawStats> {
        let mut readings = self.readings();
        readings.refused.remove(container);
        let host = readings.host.remove(container).map(|t| t.last);
        let stream = readings.latest.remove(container).map(|l| l.stats);
        let of_this_run = |s: &RawStats| match (s.read_at, since) {
            (Some(read), Some(start)) => read >= start,
            _ => false,
        };
        host.into_iter()
            .chain(stream)
            .find(|s| !s.is_empty() && of_this_run(s))
    }

    /// Forgets everything followed of a container that is gone (removed, or its record's container
    /// no longer exists).
    pub(super) fn forget(&self, container: &str) {
        let mut readings = self.readings();
        readings.host.remove(container);
        readings.latest.remove(container);
        readings.refused.remove(container);
    }

    /// How many containers are followed now: (on the host's files, through the engine's stream).
    pub fn followed(&self) -> (usize, usize) {
        let readings = self.readings();
        (
            readings.host.values().filter(|t| t.ended.is_none()).count(),
            readings.latest.values().filter(|l| l.streaming).count(),
        )
    }
}
