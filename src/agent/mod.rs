//! The core: registering, reading, stopping, starting and restarting apps. It decides how an app is
//! stopped or started and what its record says afterwards, and knows neither HTTP nor bollard.
//!
//! Operations on one app exclude each other; those on different apps run in parallel
//! ([`operation`], with the engine calls in [`stopping`] and [`starting`]). A watcher keeps records
//! true when containers change behind the agent's back ([`watch`]).

use std::sync::{Arc, Mutex};

use chrono::{SubsecRound, Utc};
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::agent::figures::{final_metrics, last_exit, running_metrics};
use crate::auth::Principal;
use crate::background::Background;
use crate::events::NewEvent;
use crate::lifecycle::Operation;
use crate::policy::{Action, Denial, authorize, may_manage_records};
use crate::record::{AppId, AppRecord, RecordError, Registration, ResourceMetrics, WorkerNode};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};
use crate::stats::RawStats;
use crate::store::{Observation, Registered, Store, StoreError};
use crate::telemetry::Telemetry;

/// Why the core refused or failed a call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(#[from] RecordError),
    #[error("no app {0:?} on this node")]
    NotFound(AppId),
    #[error("{0}")]
    Forbidden(String),
    #[error("app {id:?} is already stopped: {how}")]
    AlreadyStopped {
        id: AppId,
        how: AlreadyStopped,
        record: Box<AppRecord>,
    },
    #[error("a {} of app {id:?} is already under way", under_way.verb())]
    InProgress {
        id: AppId,
        under_way: Operation,
        record: Box<AppRecord>,
    },
    #[error("app {id:?} is already running{}", match how { AlreadyRunning::Known => "", AlreadyRunning::Unnoticed => " (started without the agent)" })]
    AlreadyRunning {
        id: AppId,
        how: AlreadyRunning,
        record: Box<AppRecord>,
    },
    #[error("the container of app {id:?} no longer exists on this node")]
    ContainerMissing { id: AppId, record: Box<AppRecord> },
    #[error(
        "the node is {state}: app {id:?} may not be started until an operator ends the drain (DELETE /v1/node/drain)"
    )]
    NodeDraining {
        id: AppId,
        state: &'static str,
        record: Box<AppRecord>,
    },
    #[error("the node is not drained: there is no drain to end")]
    NotDraining,
    #[error("the container of app {id:?} was started again by someone else while the stop ran")]
    StopOvertaken { id: AppId, record: Box<AppRecord> },
    #[error("app {id:?} did not reach the state asked for in time")]
    WaitTimeout { id: AppId, record: Box<AppRecord> },
    #[error("{0}")]
    DockerUnavailable(String),
    #[error("{0}")]
    Engine(String),
    #[error("a user token may ask for a stop `timeout` of at most {cap} s, not {asked} s")]
    TimeoutOverCap { asked: u32, cap: u32 },
    #[error(
        "token {token:?} already holds {cap} waits, the most one user token may; retry once one has ended"
    )]
    TooManyWaits { token: String, cap: usize },
    #[error("the record store failed")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The outcome label of `op` ended in this error, for the agent's metrics.
    pub fn outcome(&self, op: Operation) -> &'static str {
        use crate::telemetry::{
            ALREADY_RUNNING, ALREADY_STOPPED, CONTAINER_MISSING, ENGINE_UNAVAILABLE, FAILED,
            IN_PROGRESS, NODE_DRAINING, REFUSED, STOPPED,
        };
        match self {
            AgentError::AlreadyStopped { .. } if op == Operation::Stop => ALREADY_STOPPED,
            AgentError::AlreadyStopped { .. } => CONTAINER_MISSING,
            AgentError::AlreadyRunning { .. } => ALREADY_RUNNING,
            AgentError::ContainerMissing { .. } => CONTAINER_MISSING,
            AgentError::InProgress { .. } => IN_PROGRESS,
            // The stop did its work; a restart's start never came, since the container already ran.
            AgentError::StopOvertaken { .. } if op == Operation::Stop => STOPPED,
            AgentError::StopOvertaken { .. } => FAILED,
            AgentError::BadRequest(_)
            | AgentError::NotFound(_)
            | AgentError::Forbidden(_)
            | AgentError::TimeoutOverCap { .. }
            | AgentError::TooManyWaits { .. }
            | AgentError::WaitTimeout { .. } => REFUSED,
            AgentError::NodeDraining { .. } => NODE_DRAINING,
            AgentError::NotDraining => REFUSED,
            AgentError::DockerUnavailable(_) => ENGINE_UNAVAILABLE,
            AgentError::Engine(_) | AgentError::Store(_) | AgentError::Internal(_) => FAILED,
        }
    }

    /// The outcome label of `op` that succeeded with `record`: a start whose container exited at
    /// once is counted apart.
    pub(super) fn success_outcome(op: Operation, record: &AppRecord) -> &'static str {
        use crate::telemetry::{EXITED, STARTED, STOPPED};
        match op {
            Operation::Stop => STOPPED,
            Operation::Start | Operation::Restart if record.online() => STARTED,
            Operation::Start | Operation::Restart => EXITED,
        }
    }

    fn from_runtime(err: RuntimeError) -> AgentError {
        match err {
            RuntimeError::Unavailable(m) => AgentError::DockerUnavailable(m),
            other => AgentError::Engine(other.to_string()),
        }
    }
}

/// How a container that a stop found not running came to be so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlreadyStopped {
    /// The container no longer exists on this node.
    #[error("its container no longer exists")]
    Gone,
    /// The agent stopped it, and it has not run since.
    #[error("the agent already stopped it")]
    ByTheAgent,
    /// The record said online, but the container had exited (on its own, or stopped by hand).
    #[error("its container is not running: it exited without the agent")]
    Unnoticed,
}

/// How a container that a start found running came to be so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlreadyRunning {
    /// The record says it runs (the agent started it, or saw it start).
    Known,
    /// The record said offline, but the container runs: started without the agent.
    Unnoticed,
}

/// The agent's shared state: a cheap-clone handle.
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: Arc<dyn ContainerRuntime>,
    store: Store,
    node: WorkerNode,
    limits: Limits,
    /// The waits each token holds at this moment, by token name.
    waits: Arc<crate::quota::Quota<String>>,
    /// The operation under way on each app, if any.
    operations: operation::Operations,
    /// Every operation's task, so that shutdown can let them finish.
    operation_tasks: TaskTracker,
    /// The agent's long-lived tasks: the watcher, the sampler's, the engine probe.
    background: Background,
    /// The figures of each running app.
    sampler: sampling::Sampler,
    telemetry: Arc<Telemetry>,
    /// Whether the engine answered lately.
    engine: EngineHealth,
    /// The node's drain, if it was ever drained.
    drain: drain::NodeDrain,
    /// The node's shutdown: logind's lock, the last shutdown.
    shutdown: Mutex<node::ShutdownReport>,
}

/// What the core allows callers, and assumes where a request is silent: from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `[stop] default_timeout_secs`: a stop's grace when the request gives none (else the
    /// container's own).
    pub default_timeout: Option<u32>,
    /// `[auth] user_max_stop_timeout_secs`: the longest stop `timeout` a user token may ask for.
    pub user_max_stop_timeout: u32,
    /// `[auth] max_waits_per_token`: the waits one user token may hold at once.
    pub max_waits_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let auth = crate::config::AuthConfig::default();
        Limits {
            default_timeout: None,
            user_max_stop_timeout: auth.user_max_stop_timeout_secs,
            max_waits_per_token: auth.max_waits_per_token,
        }
    }
}

impl Limits {
    pub fn of(config: &crate::config::Config) -> Limits {
        Limits {
            default_timeout: config.stop.default_timeout_secs,
            user_max_stop_timeout: config.auth.user_max_stop_timeout_secs,
            max_waits_per_token: config.auth.max_waits_per_token,
        }
    }
}

/// Who settles a record: a read, or the operation that holds the app's guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settler {
    Read,
    Op,
}

/// The outcome of registering an app.
#[derive(Debug)]
pub struct RegisterOutcome {
    pub record: AppRecord,
    pub created: bool,
}

impl Agent {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        node: WorkerNode,
        limits: Limits,
        background: Background,
    ) -> Agent {
        let host = crate::cgroup::HostFiles::of_this_host(runtime.is_local());
        Agent::with_host_files(runtime, store, node, limits, background, host)
    }

    /// An agent that reads containers' figures from `host` (the host's files, or a recorded set),
    /// or only from the engine without.
    pub fn with_host_files(
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        node: WorkerNode,
        limits: Limits,
        background: Background,
        host: Option<crate::cgroup::HostFiles>,
    ) -> Agent {
        let telemetry = Arc::new(Telemetry::new());
        let sampler =
            sampling::Sampler::new(host, runtime.clone(), telemetry.clone(), background.clone());
        Agent {
            inner: Arc::new(Inner {
                sampler,
                runtime,
                store,
                node,
                limits,
                waits: crate::quota::Quota::new(limits.max_waits_per_token),
                operations: operation::Operations::default(),
                operation_tasks: TaskTracker::new(),
                background,
                telemetry,
                engine: EngineHealth::default(),
                drain: drain::NodeDrain::default(),
                shutdown: Mutex::default(),
            }),
        }
    }

    pub fn node(&self) -> &WorkerNode {
        &self.inner.node
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn runtime(&self) -> &dyn ContainerRuntime {
        self.inner.runtime.as_ref()
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// What the report sender reads, and nothing more of the agent.
    pub fn report_sources(&self) -> crate::report::ReportSources {
        crate::report::ReportSources {
            store: self.inner.store.clone(),
            telemetry: self.inner.telemetry.clone(),
            node: self.inner.node.clone(),
        }
    }

    /// The node's shutdown, as `/v1/node` reports it.
    pub fn shutdown_report(&self) -> node::ShutdownReport {
        self.inner
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes what the agent reports of the node's shutdown.
    pub fn set_shutdown(&self, f: impl FnOnce(&mut node::ShutdownReport)) {
        f(&mut self
            .inner
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner()));
    }

    /// The figures of every running app.
    pub fn sampler(&self) -> &sampling::Sampler {
        &self.inner.sampler
    }

    /// The agent's background work, on which its long-lived tasks run.
    pub fn background(&self) -> &Background {
        &self.inner.background
    }

    /// Operations of `kind` under way at this moment.
    pub fn under_way_of_kind(&self, kind: Operation) -> usize {
        self.inner.operations.count(kind)
    }

    /// Waits until every operation under way, in the foreground or the background, has finished.
    pub async fn finish_operations(&self) {
        self.inner.operation_tasks.close();
        self.inner.operation_tasks.wait().await;
    }

    /// The record of `id`, as stored.
    pub(super) async fn record_of(&self, id: &AppId) -> Result<AppRecord, AgentError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| AgentError::NotFound(id.clone()))
    }

    /// The record of `id` if `principal` may do `action` on it; `verb` names it in a refusal.
    async fn authorized(
        &self,
        principal: &Principal,
        id: &AppId,
        action: Action,
        verb: &str,
    ) -> Result<AppRecord, AgentError> {
        let record = self.record_of(id).await?;
        match authorize(principal, &record, action) {
            Ok(()) => Ok(record),
            Err(Denial::Hidden) => Err(AgentError::NotFound(id.clone())),
            Err(Denial::Forbidden) => Err(AgentError::Forbidden(format!(
                "token {:?} may not {verb} app {id:?}",
                principal.name,
            ))),
        }
    }

    /// Whether `principal` may register or delete records (`verb` names which, for the answer).
    pub fn may_manage_records(&self, principal: &Principal, verb: &str) -> Result<(), AgentError> {
        if may_manage_records(principal) {
            Ok(())
        } else {
            Err(AgentError::Forbidden(format!(
                "token {:?} may not {verb} apps; only operators may",
                principal.name
            )))
        }
    }

    /// Registers or replaces an app record.
    pub async fn register(
        &self,
        principal: &Principal,
        id: &AppId,
        body: Value,
    ) -> Result<RegisterOutcome, AgentError> {
        self.may_manage_records(principal, "register")?;
        let registration = Registration::parse(id, body, &self.inner.node)?;
        // Look first, then commit: the record committed (and reported) at registration already
        // says what the engine says, never a guess that the next change corrects.
        let settle = self
            .look_before_registering(id, registration.container_id())
            .await
            .map(|sighting| self.settlement(registration.container_id(), sighting, Settler::Read));
        let (record, how) = self
            .inner
            .store
            .register(
                id,
                registration,
                Utc::now(),
                &principal.name,
                move |record| settle.and_then(|settle| settle(record)),
            )
            .await?;
        Ok(RegisterOutcome {
            record,
            created: how == Registered::Created,
        })
    }

    /// Forgets an app record; its container is left alone.
    pub async fn delete(&self, principal: &Principal, id: &AppId) -> Result<(), AgentError> {
        self.may_manage_records(principal, "delete")?;
        if self.inner.store.delete(id, &principal.name).await? {
            Ok(())
        } else {
            Err(AgentError::NotFound(id.clone()))
        }
    }

    /// The records `principal` may see, as stored.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<AppRecord>, AgentError> {
        let all = self.inner.store.list().await?;
        Ok(all
            .into_iter()
            .filter(|r| authorize(principal, r, Action::Read).is_ok())
            .collect())
    }

    /// The record of `id`, with metrics fresh from the engine while its container runs. While the
    /// engine is away, the record as stored, at once ([`Agent::engine_away`] says so).
    pub async fn get(&self, principal: &Principal, id: &AppId) -> Result<AppRecord, AgentError> {
        let record = self.authorized(principal, id, Action::Read, "read").await?;
        if self.engine_away().is_some() {
            self.probe_engine();
            return Ok(record);
        }
        // The engine calls make a future of kilobytes; boxed, so that refusals, the common
        // cheap answer, do not carry it.
        match Box::pin(self.with_fresh_figures(id, record)).await {
            Err(AgentError::DockerUnavailable(message)) => {
                self.engine_failed(&message);
                self.record_of(id).await
            }
            Ok(fresh) => {
                self.engine_answered();
                Ok(fresh)
            }
            Err(e) => Err(e),
        }
    }

    /// `id`'s events for `principal`, who must be allowed to read the app: newest first, up to
    /// `limit` older than generation `before`, and whether there are more.
    pub async fn events(
        &self,
        principal: &Principal,
        id: &AppId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<crate::events::AppEvent>, bool), AgentError> {
        self.authorized(principal, id, Action::Read, "read").await?;
        Ok(self.inner.store.events(id, limit, before).await?)
    }

    /// `record` as the engine shows its container now, with fresh figures while it runs. The
    /// inspect is a probe: an engine that hangs is away after [`crate::runtime::PROBE_LIMIT`].
    async fn with_fresh_figures(
        &self,
        id: &AppId,
        record: AppRecord,
    ) -> Result<AppRecord, AgentError> {
        let Settled { mut record, state } = self
            .look_and_settle(record, Settler::Read, Look::Probe)
            .await?;
        if let Some(state) = state.filter(|s| s.running) {
            let container = record.container_id().to_owned();
            let stats = self
                .sampler()
                .sample_now(&container, &state, crate::stats::SamplePurpose::Read)
                .await;
            let stats = match stats {
                Ok(s) => s,
                Err(RuntimeError::Unavailable(m)) => return Err(AgentError::DockerUnavailable(m)),
                Err(e) => {
                    tracing::warn!(app = %id, error = %e, "stats failed; answering without a sample");
                    RawStats::default()
                }
            };
            record.metrics = Some(running_metrics(&state, &stats, Utc::now()));
        }
        Ok(record)
    }

    /// The one way every path looks at a container and settles its record: inspects the container
    /// of `record` (within the probe's limit for [`Look::Probe`]), then makes the stored record say
    /// what it saw ([`Agent::record_sighting`]). An engine that could not be asked leaves the record
    /// alone ([`AgentError::DockerUnavailable`] or [`AgentError::Engine`]); a store that fails is
    /// logged here, and its error returned.
    pub(super) async fn look_and_settle(
        &self,
        record: AppRecord,
        settler: Settler,
        look: Look,
    ) -> Result<Settled, AgentError> {
        self.look_settle_and_tell(record, settler, look, Vec::new())
            .await
    }

    /// [`Agent::look_and_settle`], writing `told` (what the engine reported, for the app's history)
    /// in the same transaction as what the look finds.
    pub(super) async fn look_settle_and_tell(
        &self,
        record: AppRecord,
        settler: Settler,
        look: Look,
        told: Vec<NewEvent>,
    ) -> Result<Settled, AgentError> {
        let sighting = match look {
            Look::Probe => crate::runtime::probe(self.sight(&record)).await,
            Look::Patient => self.sight(&record).await,
        };
        let sighting = match sighting {
            Ok(s) => s,
            Err(e) => {
                // What the engine reported stays a fact of the history, looked at or not.
                if !told.is_empty() {
                    let written = self
                        .inner
                        .store
                        .observe(
                            &record.id,
                            record.container_id(),
                            Utc::now(),
                            move |stored| {
                                Some(Observation {
                                    metrics: stored.metrics.clone().unwrap_or_default(),
                                    events: told,
                                    for_events_only: true,
                                    ..Observation::default()
                                })
                            },
                        )
                        .await;
                    if let Err(e) = written {
                        tracing::error!(app = %record.id, error = %e, "could not write the engine's events to the history");
                    }
                }
                return Err(AgentError::from_runtime(e));
            }
        };
        let state = sighting.state.clone();
        match self
            .record_sighting(record.clone(), sighting, settler, told)
            .await
        {
            Ok(record) => Ok(Settled { record, state }),
            Err(e) => {
                tracing::error!(app = %record.id, error = %e, "could not record the container's state");
                Err(e)
            }
        }
    }

    /// Inspects the container of `record`, noting when it looked.
    pub(super) async fn sight(&self, record: &AppRecord) -> Result<Sighting, RuntimeError> {
        self.sight_container(record.container_id()).await
    }

    /// Inspects `container`, noting when it looked.
    async fn sight_container(&self, container: &str) -> Result<Sighting, RuntimeError> {
        let at = Utc::now().trunc_subsecs(3);
        match self.runtime().inspect(container).await {
            Ok(state) => Ok(Sighting {
                at,
                state: Some(state),
            }),
            Err(RuntimeError::NotFound(_)) => Ok(Sighting { at, state: None }),
            Err(e) => Err(e),
        }
    }

    /// Makes the stored record say what `sighting` saw: running, with the figures of this run kept;
    /// or not running (`None`: gone), with its exit and its last sample. Writes only what changes.
    /// For [`Settler::Read`] (reads, events, reconciliation, registration) the decision is taken in
    /// the store transaction: it never writes over an operation under way (which then looks again
    /// once it ends), nor over anything written after the sighting.
    pub(super) async fn record_sighting(
        &self,
        record: AppRecord,
        sighting: Sighting,
        settler: Settler,
        told: Vec<NewEvent>,
    ) -> Result<AppRecord, AgentError> {
        let told = watch::oom_from_state(told, sighting.state.as_ref());
        let settle = self.settlement(record.container_id(), sighting, settler);
        // What the engine reported is written whatever the look decides: with its observation,
        // or alone, the record's figures as they stand.
        let settle = move |stored: &AppRecord| {
            let observation = settle(stored);
            if told.is_empty() {
                return observation;
            }
            let mut observation = observation.unwrap_or_else(|| Observation {
                metrics: stored.metrics.clone().unwrap_or_default(),
                for_events_only: true,
                ..Observation::default()
            });
            observation.events = told;
            Some(observation)
        };
        let observed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), Utc::now(), settle)
            .await?;
        Ok(observed.unwrap_or(record))
    }

    /// Settles `record` on what its operation has just seen of the container (`None`: gone), when
    /// the operation's own inspect is the look: [`Agent::record_sighting`] for an operation.
    pub(super) async fn settle_seen(
        &self,
        record: AppRecord,
        state: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let sighting = Sighting {
            at: Utc::now(),
            state,
        };
        self.record_sighting(record, sighting, Settler::Op, Vec::new())
            .await
    }

    /// What `sighting` of `container` makes a stored record say, decided from the record as stored
    /// (see [`Agent::record_sighting`]); following the container while it runs, and taking the
    /// stream's last reading of a run that just ended, on the way.
    fn settlement(
        &self,
        container: &str,
        sighting: Sighting,
        settler: Settler,
    ) -> impl FnOnce(&AppRecord) -> Option<Observation> + Send + 'static {
        let Sighting { at, state } = sighting;
        if let Some(s) = state.as_ref().filter(|s| s.running) {
            self.sampler().follow(container, s);
        }
        // The stream's last reading of the run that just ended, if the agent followed it.
        let reading = match &state {
            Some(s) if !s.running => self.sampler().take_last_reading(container, s.started_at),
            Some(_) => None,
            None => {
                self.sampler().forget(container);
                None
            }
        };
        let operations = self.inner.operations.clone();
        move |stored: &AppRecord| {
            if settler == Settler::Read
                && (operations.under_way(&stored.id, true) || stored.updated_at > at)
            {
                return None;
            }
            let now = Utc::now();
            match &state {
                Some(state) if state.running => running_observation(stored, state, now),
                _ => exited_observation(stored, state.as_ref(), reading.as_ref(), now),
            }
        }
    }

    /// Looks at `container` for a registration of `id`, within the probe's limit. `None` when the
    /// engine could not be asked: the record is then committed unseen, and says so.
    async fn look_before_registering(&self, id: &AppId, container: &str) -> Option<Sighting> {
        if let Some(away) = self.engine_away() {
            self.probe_engine();
            tracing::warn!(app = %id, error = %away.message, "registered without looking at the container");
            return None;
        }
        match crate::runtime::probe(self.sight_container(container)).await {
            Ok(sighting) => {
                self.engine_answered();
                Some(sighting)
            }
            Err(e) => {
                if let RuntimeError::Unavailable(detail) = &e {
                    self.engine_failed(detail);
                }
                tracing::warn!(app = %id, error = %e, "registered without looking at the container");
                None
            }
        }
    }
}

/// How long a look at a container may wait for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// A read answered to a client: an engine that hangs is away after
    /// [`crate::runtime::PROBE_LIMIT`].
    Probe,
    /// Background work and operations: as long as the engine's own call timeout.
    Patient,
}

/// A record settled on what its container is: the record as it now stands, and the container's
/// state as seen (`None`: it no longer exists).
#[derive(Debug)]
pub(super) struct Settled {
    pub record: AppRecord,
    pub state: Option<ContainerState>,
}

impl Settled {
    /// Whether the container was seen running.
    pub fn running(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.running)
    }
}

/// What the agent saw of a container, and when it looked.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    /// Just before the inspect, at the store's precision.
    pub at: chrono::DateTime<Utc>,
    /// `None`: the container does not exist.
    pub state: Option<ContainerState>,
}

/// A running container: online, uptime and start from its state, and the figures of this same run
/// kept (a new run starts without figures). `None` when the record already says so.
fn running_observation(
    stored: &AppRecord,
    state: &ContainerState,
    now: chrono::DateTime<Utc>,
) -> Option<Observation> {
    let fresh = running_metrics(state, &RawStats::default(), now);
    let kept = stored
        .metrics
        .as_ref()
        .filter(|m| m.started_at == fresh.started_at);
    if kept.is_some_and(|m| m.online) && stored.restart_count == Some(state.restart_count) {
        return None;
    }
    let metrics = match kept {
        Some(m) => ResourceMetrics {
            cpu_usage_percent: m.cpu_usage_percent,
            memory_usage_bytes: m.memory_usage_bytes,
            memory_limit_bytes: m.memory_limit_bytes,
            network_rx_bytes: m.network_rx_bytes,
            network_tx_bytes: m.network_tx_bytes,
            ..fresh
        },
        None => fresh,
    };
    Some(Observation {
        restart_count: Some(state.restart_count),
        ..Observation::metrics(metrics)
    })
}

/// A container that is not running (`None`: gone): offline, with its exit, and its last sample (the
/// stream's last reading of this run, else the stored figures). `None` when the record already says
/// so.
fn exited_observation(
    stored: &AppRecord,
    state: Option<&ContainerState>,
    reading: Option<&RawStats>,
    now: chrono::DateTime<Utc>,
) -> Option<Observation> {
    let exit = state.and_then(last_exit);
    let restart_count = state.map(|s| s.restart_count);
    let already_true = stored.metrics.as_ref().is_some_and(|m| !m.online)
        && (exit.is_none() || exit == stored.last_exit)
        && (restart_count.is_none() || restart_count == stored.restart_count);
    if already_true {
        return None;
    }
    let gone = ContainerState::default();
    let metrics = final_metrics(
        state.unwrap_or(&gone),
        reading,
        stored.metrics.as_ref(),
        now,
    );
    Some(Observation {
        metrics,
        last_exit: exit,
        restart_count,
        ..Observation::default()
    })
}

mod away;
mod boot;
mod dispatch;
mod drain;
pub use dispatch::{Dispatched, Mode, OpRequest};
pub use drain::{
    DEFAULT_DEADLINE_SECS, DrainApps, DrainFailure, DrainRequest, DrainState, DrainSummary,
    MAX_DEADLINE_SECS,
};
mod figures;
pub use away::EngineHealth;
pub use sampling::Sampler;
mod node;
pub use node::{LastShutdown, NodeReport, ShutdownReport};
mod operation;
mod sampling;
mod starting;
mod stopping;
mod waiting;
pub use waiting::WaitFor;
mod watch;

#[cfg(test)]
mod tests;
