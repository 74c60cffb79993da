//! A scripted container engine for unit tests: containers that exit on chosen signals, an engine that
//! can be down or remote, calls that fail or hang on demand, and a log of every container call made.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::Notify;

use super::{
    ContainerEvent, ContainerRuntime, ContainerState, EngineInfo, EventKind, EventStream, RawStats,
    RunningContainer, RuntimeError, StatsStream,
};

#[derive(Debug, Default)]
struct FakeContainer {
    state: ContainerState,
    /// Signals on which the workload exits cleanly (code 0).
    exits_on: HashSet<String>,
    stats: RawStats,
    /// The exit code with which the workload dies as soon as it is started (a crash at boot).
    boot_exit: Option<i64>,
}

#[derive(Debug, Default)]
struct Script {
    containers: HashMap<String, FakeContainer>,
    engine_down: bool,
    calls: Vec<String>,
    /// Errors to return from the next call of an operation, by operation name.
    faults: HashMap<&'static str, VecDeque<RuntimeError>>,
    /// Errors to return from the next call of an operation after it has done its work.
    faults_after: HashMap<&'static str, VecDeque<RuntimeError>>,
    /// Operations that block until [`FakeRuntime::release`] is called.
    gated: HashSet<&'static str>,
    /// Containers removed right after the next call of an operation.
    vanish_after: HashMap<&'static str, String>,
    /// Containers whose workload exits on its own right after the next call of an operation.
    exit_after: HashMap<&'static str, String>,
    /// Containers someone starts again right after the next call of an operation.
    start_after: HashMap<&'static str, String>,
    /// Whether stats streams send readings: how far the engine's clock is behind, and how late
    /// every reading after the first arrives.
    stream_readings: Option<(chrono::Duration, chrono::Duration)>,
    /// `DockerRootDir`.
    root_dir: Option<String>,
    /// Whether the engine is on another host.
    remote: bool,
    /// Whether it says it is Podman; its events then never come (the extreme of late).
    podman: bool,
}

/// Now, at the millisecond precision the real runtime gives engine times.
fn engine_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// The fake engine.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    script: Arc<Mutex<Script>>,
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
    stop_takes_signal: bool,
    gate: Arc<Notify>,
    entered: Arc<Notify>,
}

impl FakeRuntime {
    /// A fake engine; `stop_takes_signal` says whether it speaks API 1.42 or later.
    pub fn new(stop_takes_signal: bool) -> FakeRuntime {
        FakeRuntime {
            script: Arc::new(Mutex::new(Script {
                root_dir: Some("/var/lib/docker".to_owned()),
                ..Script::default()
            })),
            events: tokio::sync::broadcast::channel(64).0,
            stop_takes_signal,
            gate: Arc::new(Notify::new()),
            entered: Arc::new(Notify::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.script.lock().expect("fake lock"))
    }

    /// Adds a running container that exits cleanly on `exits_on` and ignores other signals.
    pub fn add_running(&self, name: &str, exits_on: &[&str]) {
        self.with(|s| {
            s.containers.insert(
                name.to_owned(),
                FakeContainer {
                    state: ContainerState {
                        id: format!("{name}-id"),
                        running: true,
                        started_at: Some(engine_now() - chrono::Duration::seconds(42)),
                        ..Default::default()
                    },
                    exits_on: exits_on.iter().map(|s| (*s).to_owned()).collect(),
                    stats: RawStats {
                        read_at: Some(Utc::now()),
                        cpu_total: 2_000,
                        precpu_total: 1_000,
                        system_total: 20_000,
                        presystem_total: 10_000,
                        online_cpus: 2,
                        memory_usage: 4096,
                        memory_limit: 8192,
                        network_rx: 11,
                        network_tx: 22,
                        ..Default::default()
                    },
                    boot_exit: None,
                },
            );
        });
    }

    /// Stats streams send a reading every 20 ms while their container runs.
    pub fn stream_readings(&self) {
        let zero = chrono::Duration::zero();
        self.with(|s| s.stream_readings = Some((zero, zero)));
    }

    /// Stats streams send a reading every 20 ms: the first on time, every later one read `lag`
    /// before it arrives, as a stream that has fallen behind on a busy host.
    pub fn stream_readings_late(&self, lag: chrono::Duration) {
        self.with(|s| s.stream_readings = Some((chrono::Duration::zero(), lag)));
    }

    /// Stats streams send a reading every 20 ms, on time, from an engine whose clock is `skew`
    /// behind this host's (as a remote engine's may be).
    pub fn stream_readings_skewed(&self, skew: chrono::Duration) {
        self.with(|s| s.stream_readings = Some((skew, chrono::Duration::zero())));
    }

    /// Gives a container the full id and main process the engine would report, as a file set
    /// recorded on a host names them.
    pub fn set_process(&self, name: &str, id: &str, pid: u32) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                c.state.id = id.to_owned();
                c.state.pid = pid;
            }
        });
    }

    /// Sets a container's restart policy.
    pub fn set_restart_policy(&self, name: &str, policy: &str) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                c.state.restart_policy = Some(policy.to_owned());
            }
        });
    }

    /// How many event streams are open now.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Its workload exits by itself with `code`, as a crash or an OOM kill would, and the engine
    /// says so on its event stream.
    pub fn crash(&self, name: &str, code: i64, oom: bool) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                Self::exit(c, code);
                c.state.oom_killed = oom;
            }
        });
        self.emit(name, EventKind::Died);
    }

    /// From now on the container's workload dies with `code` as soon as it is started.
    pub fn crash_at_boot(&self, name: &str, code: i64) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                c.boot_exit = Some(code);
            }
        });
    }

    /// Someone starts the container by hand.
    pub fn start_by_hand(&self, name: &str) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                c.state.running = true;
                c.state.started_at = Some(engine_now());
            }
        });
        self.emit(name, EventKind::Started);
    }

    /// From now on the engine says it is Podman, and sends no events at all.
    pub fn set_podman(&self) {
        self.with(|s| s.podman = true);
    }

    fn emit(&self, name: &str, kind: EventKind) {
        if self.with(|s| s.podman) {
            return;
        }
        let _ = self.events.send(ContainerEvent {
            id: format!("{name}-id"),
            name: Some(name.to_owned()),
            kind,
            at: Some(Utc::now()),
            exit_code: None,
        });
    }

    pub fn state(&self, name: &str) -> ContainerState {
        self.with(|s| {
            s.containers
                .get(name)
                .map(|c| c.state.clone())
                .unwrap_or_default()
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// The calls made on behalf of requests: all but the agent's background stats following,
    /// which starts whenever it sees a container run, and so at no fixed point.
    pub fn request_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| !c.starts_with("stats_stream"))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    pub fn set_engine_down(&self, down: bool) {
        self.with(|s| s.engine_down = down);
    }

    /// The next call of `op` fails with `err`.
    pub fn fail_next(&self, op: &'static str, err: RuntimeError) {
        self.with(|s| s.faults.entry(op).or_default().push_back(err));
    }

    /// The next call of `op` does its work, then fails with `err` (the engine acted, the answer
    /// was lost).
    pub fn fail_after(&self, op: &'static str, err: RuntimeError) {
        self.with(|s| s.faults_after.entry(op).or_default().push_back(err));
    }

    fn fault_after(&self, op: &'static str) -> Result<(), RuntimeError> {
        match self.with(|s| s.faults_after.get_mut(op).and_then(VecDeque::pop_front)) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The engine says it keeps its data in `dir`.
    pub fn set_root_dir(&self, dir: Option<String>) {
        self.with(|s| s.root_dir = dir);
    }

    /// The engine is on another host (reached over TCP) when `remote`.
    pub fn set_remote(&self, remote: bool) {
        self.with(|s| s.remote = remote);
    }

    /// Calls of `op` block until [`FakeRuntime::release`]. The engine-wide calls are `engine`,
    /// `ping` and `info` (the root directory); the others are named as in [`FakeRuntime::calls`].
    pub fn gate(&self, op: &'static str) {
        self.with(|s| s.gated.insert(op));
    }

    /// Waits until a gated call has been entered.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    /// Lets gated calls go on.
    pub fn release(&self) {
        self.with(|s| s.gated.clear());
        self.gate.notify_waiters();
    }

    /// The container is removed (as by `docker rm -f`) right after the next call of `op`.
    pub fn vanish_after(&self, op: &'static str, name: &str) {
        self.with(|s| s.vanish_after.insert(op, name.to_owned()));
    }

    /// Logs a container call, then lets it through as [`FakeRuntime::pass`] does.
    async fn enter(&self, op: &'static str, call: String) -> Result<(), RuntimeError> {
        self.with(|s| s.calls.push(call));
        self.pass(op).await
    }

    /// Blocks while `op` is gated, then fails if the engine is down or a fault of `op` is
    /// scripted. Engine-wide calls go through here unlogged, as the tests' call logs list only
    /// what was done to containers.
    async fn pass(&self, op: &'static str) -> Result<(), RuntimeError> {
        if self.with(|s| s.gated.contains(op)) {
            let released = self.gate.notified();
            self.entered.notify_one();
            released.await;
        }
        self.with(|s| {
            if s.engine_down {
                return Err(RuntimeError::Unavailable("fake engine is down".into()));
            }
            if let Some(err) = s.faults.get_mut(op).and_then(VecDeque::pop_front) {
                return Err(err);
            }
            Ok(())
        })
    }

    /// The container's workload exits by itself (code 1) right after the next call of `op`.
    pub fn exit_after(&self, op: &'static str, name: &str) {
        self.with(|s| s.exit_after.insert(op, name.to_owned()));
    }

    /// Someone starts the container again (as by `docker start`) right after the next call of
    /// `op`.
    pub fn start_after(&self, op: &'static str, name: &str) {
        self.with(|s| s.start_after.insert(op, name.to_owned()));
    }

    fn leave(&self, op: &'static str) {
        if let Some(name) = self.with(|s| s.start_after.remove(op)) {
            self.start_by_hand(&name);
        }
        self.with(|s| {
            if let Some(name) = s.vanish_after.remove(op) {
                s.containers.remove(&name);
            }
            if let Some(c) = s
                .exit_after
                .remove(op)
                .and_then(|n| s.containers.get_mut(&n))
            {
                Self::exit(c, 1);
                // Stamped a little in the past, as the engine would have seen it.
                c.state.finished_at = Some(engine_now() - chrono::Duration::milliseconds(100));
            }
        });
    }

    fn exit(c: &mut FakeContainer, code: i64) {
        c.state.running = false;
        c.state.exit_code = Some(code);
        c.state.finished_at = Some(engine_now());
    }

    fn with_container<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut FakeContainer) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        self.with(|s| match s.containers.get_mut(name) {
            Some(c) => f(c),
            None => Err(RuntimeError::NotFound(name.to_owned())),
        })
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn engine(&self) -> Result<EngineInfo, RuntimeError> {
        self.pass("engine").await?;
        // The signal-capable engine is newer than the client, as engines often are: its own API
        // version and the negotiated one differ.
        let (api_version, negotiated_api_version) = if self.stop_takes_signal {
            ("1.47", "1.43")
        } else {
            ("1.41", "1.41")
        };
        Ok(EngineInfo {
            version: "fake".into(),
            api_version: api_version.into(),
            negotiated_api_version: negotiated_api_version.into(),
            stop_takes_signal: self.stop_takes_signal,
            podman: self.with(|s| s.podman),
        })
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.pass("ping").await
    }

    async fn root_dir(&self) -> Result<Option<String>, RuntimeError> {
        self.pass("info").await?;
        Ok(self.with(|s| s.root_dir.clone()))
    }

    fn is_local(&self) -> bool {
        !self.with(|s| s.remote)
    }

    async fn inspect(&self, container: &str) -> Result<ContainerState, RuntimeError> {
        self.enter("inspect", format!("inspect {container}"))
            .await?;
        let r = self.with_container(container, |c| Ok(c.state.clone()));
        self.leave("inspect");
        r
    }

    async fn stats(&self, container: &str) -> Result<RawStats, RuntimeError> {
        self.enter("stats", format!("stats {container}")).await?;
        let r = self.with_container(container, |c| {
            Ok(if c.state.running {
                c.stats.clone()
            } else {
                RawStats::default()
            })
        });
        self.leave("stats");
        r
    }

    async fn stats_stream(&self, container: &str) -> Result<StatsStream, RuntimeError> {
        self.enter("stats_stream", format!("stats_stream {container}"))
            .await?;
        let Some((skew, lag)) = self.with(|s| s.stream_readings) else {
            // Unless asked for, the stream sends nothing: stops then take their sample with a
            // stats call, at a fixed point that tests can script.
            return Ok(Box::pin(futures_util::stream::pending()));
        };
        let (fake, name) = (self.clone(), container.to_owned());
        // A reading every 20 ms while the container runs, with a real CPU interval.
        Ok(Box::pin(futures_util::stream::unfold(true, move |first| {
            let (fake, name) = (fake.clone(), name.clone());
            let late = if first { chrono::Duration::zero() } else { lag };
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let reading = fake.with(|s| {
                    s.containers
                        .get(&name)
                        .filter(|c| c.state.running)
                        .map(|c| RawStats {
                            read_at: Some(Utc::now() - skew - late),
                            ..c.stats.clone()
                        })
                })?;
                Some((Ok(reading), false))
            }
        })))
    }

    async fn stop(
        &self,
        container: &str,
        signal: Option<&str>,
        grace: u32,
    ) -> Result<(), RuntimeError> {
        self.enter(
            "stop",
            format!("stop {container} {} t={grace}", signal.unwrap_or("-")),
        )
        .await?;
        let signal = signal.unwrap_or("SIGTERM");
        let r = self.with_container(container, |c| {
            if c.state.running {
                let code = if grace > 0 && c.exits_on.contains(signal) {
                    0
                } else {
                    137
                };
                Self::exit(c, code);
            }
            Ok(())
        });
        self.leave("stop");
        r.and_then(|()| self.fault_after("stop"))
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        self.enter("start", format!("start {container}")).await?;
        let r = self.with_container(container, |c| {
            if !c.state.running {
                c.state.running = true;
                c.state.started_at = Some(engine_now());
                c.state.finished_at = None;
                c.state.exit_code = None;
                c.state.oom_killed = false;
                if let Some(code) = c.boot_exit {
                    Self::exit(c, code);
                }
            }
            Ok(())
        });
        self.leave("start");
        if r.is_ok() {
            self.emit(container, EventKind::Started);
        }
        r.and_then(|()| self.fault_after("start"))
    }

    async fn kill(&self, container: &str, signal: &str) -> Result<(), RuntimeError> {
        self.enter("kill", format!("kill {container} {signal}"))
            .await?;
        let r = self.with_container(container, |c| {
            if !c.state.running {
                return Err(RuntimeError::NotRunning(container.to_owned()));
            }
            if signal == "SIGKILL" {
                Self::exit(c, 137);
            } else if c.exits_on.contains(signal) {
                Self::exit(c, 0);
            }
            Ok(())
        });
        self.leave("kill");
        r
    }

    async fn set_restart_policy(&self, container: &str, policy: &str) -> Result<(), RuntimeError> {
        self.enter("update", format!("update {container} restart={policy}"))
            .await?;
        let r = self.with_container(container, |c| {
            c.state.restart_policy = Some(policy.to_owned());
            Ok(())
        });
        self.leave("update");
        r
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, RuntimeError> {
        self.engine().await?;
        let script = self.script.lock().unwrap_or_else(|p| p.into_inner());
        Ok(script
            .containers
            .iter()
            .filter(|(_, c)| c.state.running)
            .map(|(name, c)| RunningContainer {
                id: c.state.id.clone(),
                names: vec![name.clone()],
            })
            .collect())
    }

    async fn events(&self, _since: Option<DateTime<Utc>>) -> Result<EventStream, RuntimeError> {
        self.engine().await?;
        let rx = self.events.subscribe();
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => return Some((Ok(e), rx)),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )))
    }

    async fn wait_exit(&self, container: &str, limit: Duration) -> Result<bool, RuntimeError> {
        self.enter("wait", format!("wait {container} {}s", limit.as_secs()))
            .await?;
        let r = self.with_container(container, |c| Ok(!c.state.running));
        self.leave("wait");
        r
    }
}
