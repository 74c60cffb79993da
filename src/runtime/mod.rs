//! The container runtime as the core sees it: a small trait over the engine's calls, so that the
//! stop logic can run against the real engine ([`docker::DockerRuntime`]) or a scripted fake.

pub mod docker;
#[cfg(test)]
pub mod fake;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::stats::RawStats;

/// A container's state, as inspected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerState {
    /// The container's full id.
    pub id: String,
    pub running: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The container's own stop timeout (`Config.StopTimeout`), if set.
    pub stop_timeout: Option<u32>,
    /// Its restart policy as the docker CLI writes it (`no`, `always`, `unless-stopped`,
    /// `on-failure`, or `on-failure:N` with a maximum retry count), if any.
    pub restart_policy: Option<String>,
    /// Its main process in the engine's pid namespace while it runs, else 0.
    pub pid: u32,
    /// Whether it shares the host's network namespace (`NetworkMode: host`).
    pub host_network: bool,
    /// How many times its restart policy restarted it (`RestartCount`).
    pub restart_count: u64,
}

impl ContainerState {
    /// Whether the engine may start the container again by itself.
    pub fn may_restart_itself(&self) -> bool {
        self.restart_policy
            .as_deref()
            .is_some_and(|p| !p.is_empty() && p != "no")
    }
}

/// A change in a container's life that the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container's full id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: Option<String>,
    pub kind: EventKind,
    /// When it happened, by the engine's clock (to the nanosecond where the engine says).
    pub at: Option<DateTime<Utc>>,
    /// A `die`'s exit code.
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It started (or was restarted).
    Started,
    /// Its main process ended, whatever the cause.
    Died,
    /// The kernel's OOM killer killed a process of it (its `die` follows).
    Oom,
}

impl ContainerEvent {
    /// Whether a record's `containerId` (a name, a full id or an id prefix) names this container.
    pub fn concerns(&self, container_ref: &str) -> bool {
        names(&self.id, self.name.as_deref(), container_ref)
    }
}

/// A container that runs, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    pub id: String,
    pub names: Vec<String>,
}

impl RunningContainer {
    /// Whether a record's `containerId` names this container.
    pub fn concerns(&self, container_ref: &str) -> bool {
        self.names.iter().any(|n| n == container_ref) || names(&self.id, None, container_ref)
    }
}

/// Whether `container_ref` (a name, a full id or an id prefix of 12 or more) names the container
/// with `id` and `name`.
fn names(id: &str, name: Option<&str>, container_ref: &str) -> bool {
    !container_ref.is_empty()
        && (name == Some(container_ref)
            || (container_ref.len() >= 12 && id.starts_with(container_ref)))
}

/// A container's stats readings as the engine collects them, one a second; it ends when the
/// container stops.
pub type StatsStream = futures_util::stream::BoxStream<'static, Result<RawStats, RuntimeError>>;

/// The engine's event stream; it ends or fails when the engine goes away.
pub type EventStream =
    futures_util::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>>;

/// The engine's identity and what its API can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub version: String,
    /// The newest API version the engine speaks (`ApiVersion` of `GET /version`).
    pub api_version: String,
    /// The API version the agent speaks with it: the engine's, capped at the newest the client
    /// knows.
    pub negotiated_api_version: String,
    /// Whether `POST /containers/{id}/stop` takes a `signal` (API 1.42 and later).
    pub stop_takes_signal: bool,
    /// Podman's Docker-compatible service rather than Docker itself: it cannot change a
    /// container's restart policy, and its events come late (it polls a file for them).
    pub podman: bool,
}

/// How long a probe of the engine (readiness, the node report, the metrics' engine gauge) waits
/// for it: a probe must answer within its caller's own timeout, and the engine's call timeout and
/// reconnection together take longer.
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Runs `call`, an engine probe, for at most [`PROBE_LIMIT`]; an engine that has not answered by
/// then is unavailable, and the error says for how long it was waited for.
pub async fn probe<T>(
    call: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(PROBE_LIMIT, call)
        .await
        .unwrap_or_else(|_| {
            Err(RuntimeError::Unavailable(format!(
                "no answer within {}s",
                PROBE_LIMIT.as_secs()
            )))
        })
}

/// Why a runtime call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine did not answer (socket missing, refused, timed out).
    #[error("the Docker engine is unreachable: {0}")]
    Unavailable(String),
    /// No such container.
    #[error("no such container: {0}")]
    NotFound(String),
    /// The container is not running (a kill of a stopped container).
    #[error("container is not running: {0}")]
    NotRunning(String),
    /// The engine answered with an error.
    #[error("the Docker engine refused the call: {0}")]
    Engine(String),
    /// The engine has no such call (Podman 4 cannot change a restart policy).
    #[error("{0}")]
    Unsupported(String),
}

/// The calls the agent makes on the container engine.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// The engine's version; fails when it is unreachable.
    async fn engine(&self) -> Result<EngineInfo, RuntimeError>;
    /// Whether the engine answers now.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// The directory where the engine keeps images and containers (`DockerRootDir`).
    async fn root_dir(&self) -> Result<Option<String>, RuntimeError>;
    /// Whether the engine runs on this host, so that the paths it names are this host's paths; a
    /// remote engine's root directory is on a disk the agent cannot see.
    fn is_local(&self) -> bool;
    /// The container's state.
    async fn inspect(&self, container: &str) -> Result<ContainerState, RuntimeError>;
    /// A stats reading with a real CPU interval. Waits for the engine's collector: one to two
    /// seconds.
    async fn stats(&self, container: &str) -> Result<RawStats, RuntimeError>;
    /// The engine's own stream of readings of a running container.
    async fn stats_stream(&self, container: &str) -> Result<StatsStream, RuntimeError>;
    /// The engine's own stop: `signal` (the container's stop signal when `None`; only on engines whose
    /// stop takes one), `grace` seconds, then SIGKILL. Returns once the container is not running.
    async fn stop(
        &self,
        container: &str,
        signal: Option<&str>,
        grace: u32,
    ) -> Result<(), RuntimeError>;
    /// The engine's start. Returns once the engine has started the container's process, which may
    /// already have exited; a container that runs already is left as it is.
    async fn start(&self, container: &str) -> Result<(), RuntimeError>;
    /// Sends `signal` to the container's main process.
    async fn kill(&self, container: &str, signal: &str) -> Result<(), RuntimeError>;
    /// Waits until the container is not running, at most `limit`; true when it exited.
    async fn wait_exit(&self, container: &str, limit: Duration) -> Result<bool, RuntimeError>;
    /// Sets the container's restart policy (`no` keeps the engine from ever starting it again by
    /// itself, not even when the engine restarts).
    async fn set_restart_policy(&self, container: &str, policy: &str) -> Result<(), RuntimeError>;
    /// Container start and die events since `since` (replayed by the engine), then as they come.
    async fn events(&self, since: Option<DateTime<Utc>>) -> Result<EventStream, RuntimeError>;
    /// The containers that run now, in one call.
    async fn running(&self) -> Result<Vec<RunningContainer>, RuntimeError>;
}
