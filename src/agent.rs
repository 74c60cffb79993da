//! The core: registering, reading and stopping apps. It decides how an app is stopped and what its
//! record says afterwards, and knows neither HTTP nor bollard.
//!
//! Stops of one app exclude each other; stops of different apps run in parallel. A stop runs in its
//! own task, so a client that disconnects does not cancel it half-way.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::auth::Principal;
use crate::metrics::{RawStats, final_metrics, last_exit, running_metrics};
use crate::policy::{Action, Denial, authorize, may_manage_records};
use crate::record::{AppId, AppRecord, RecordError, Registration, WorkerNode};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};
use crate::stop::{StopRequest, effective_grace, halt};
use crate::store::{Observation, Registered, Store, StoreError};

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
    #[error("a stop of app {0:?} is already under way")]
    StopInProgress(AppId),
    #[error("{0}")]
    DockerUnavailable(String),
    #[error("{0}")]
    Engine(String),
    #[error("the record store failed")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
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
    /// The record already said the app is offline: the agent stopped it, or saw it stop.
    #[error("its container is not running, as its record says")]
    AsRecorded,
    /// The record said online, but the container had exited (on its own, or stopped by hand).
    #[error("its container is not running: it exited without the agent")]
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
    default_timeout: Option<u32>,
    stopping: Mutex<HashSet<AppId>>,
    /// Every stop task, so that shutdown can let them finish.
    stops: TaskTracker,
}

/// Marks a stop of one app as under way; dropping it ends the mark.
#[derive(Debug)]
struct StopGuard {
    agent: Arc<Inner>,
    id: AppId,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.agent
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// How much earlier than the stop call an exit may be stamped and still count as caused by it: the
/// engine's times are truncated to milliseconds.
const EXIT_CLOCK_SLACK: chrono::Duration = chrono::Duration::milliseconds(5);

fn log_refusal(principal: &Principal, id: &AppId, err: &AgentError) {
    tracing::info!(app = %id, token = %principal.name, outcome = %err, "stop refused");
}

/// Who settles a record: a read, or the stop that holds the app's guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settler {
    Read,
    Stop,
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
        default_timeout: Option<u32>,
    ) -> Agent {
        Agent {
            inner: Arc::new(Inner {
                runtime,
                store,
                node,
                default_timeout,
                stopping: Mutex::new(HashSet::new()),
                stops: TaskTracker::new(),
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

    /// Waits until every stop under way, in the foreground or the background, has finished.
    pub async fn drain_stops(&self) {
        self.inner.stops.close();
        self.inner.stops.wait().await;
    }

    /// The record of `id` if `principal` may do `action` on it.
    async fn authorized(
        &self,
        principal: &Principal,
        id: &AppId,
        action: Action,
    ) -> Result<AppRecord, AgentError> {
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| AgentError::NotFound(id.clone()))?;
        match authorize(principal, &record, action) {
            Ok(()) => Ok(record),
            Err(Denial::Hidden) => Err(AgentError::NotFound(id.clone())),
            Err(Denial::Forbidden) => Err(AgentError::Forbidden(format!(
                "token {:?} may not {} app {id:?}",
                principal.name,
                match action {
                    Action::Read => "read",
                    Action::Stop => "stop",
                    Action::Register => "register",
                    Action::Delete => "delete",
                }
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
        let (record, how) = self
            .inner
            .store
            .register(id, registration, Utc::now())
            .await?;
        let record = self.observe_registered(record).await?;
        Ok(RegisterOutcome {
            record,
            created: how == Registered::Created,
        })
    }

    /// Forgets an app record; its container is left alone.
    pub async fn delete(&self, principal: &Principal, id: &AppId) -> Result<(), AgentError> {
        self.may_manage_records(principal, "delete")?;
        if self.inner.store.delete(id).await? {
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

    /// The record of `id`, with metrics fresh from the engine while its container runs.
    pub async fn get(&self, principal: &Principal, id: &AppId) -> Result<AppRecord, AgentError> {
        let mut record = self.authorized(principal, id, Action::Read).await?;
        let runtime = self.runtime();
        match runtime.inspect(record.container_id()).await {
            Ok(state) if state.running => {
                let stats = match runtime.stats(record.container_id()).await {
                    Ok(s) => s,
                    Err(RuntimeError::Unavailable(m)) => {
                        return Err(AgentError::DockerUnavailable(m));
                    }
                    Err(e) => {
                        tracing::warn!(app = %id, error = %e, "stats failed; answering without a sample");
                        RawStats::default()
                    }
                };
                record.metrics = Some(running_metrics(&state, &stats, Utc::now()));
                Ok(record)
            }
            Ok(state) => {
                self.settle_exited(record, Some(&state), Settler::Read)
                    .await
            }
            Err(RuntimeError::NotFound(_)) => self.settle_exited(record, None, Settler::Read).await,
            Err(e) => Err(AgentError::from_runtime(e)),
        }
    }

    fn stop_under_way(&self, id: &AppId) -> bool {
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Makes the record of a container that is not running (`None`: gone) say so, keeping its last
    /// sample. Writes only when the stored record says otherwise; a read never writes while a stop of
    /// the app is under way, since the stop writes the final word.
    async fn settle_exited(
        &self,
        record: AppRecord,
        state: Option<&ContainerState>,
        settler: Settler,
    ) -> Result<AppRecord, AgentError> {
        if settler == Settler::Read && self.stop_under_way(&record.id) {
            return Ok(record);
        }
        let now = Utc::now();
        let state = state.cloned();
        let settled = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let exit = state.as_ref().and_then(last_exit);
                let already_true = stored.metrics.as_ref().is_some_and(|m| !m.online)
                    && (exit.is_none() || exit == stored.last_exit);
                if already_true {
                    return None;
                }
                let gone = ContainerState::default();
                let metrics = final_metrics(
                    state.as_ref().unwrap_or(&gone),
                    None,
                    stored.metrics.as_ref(),
                    now,
                );
                Some(Observation {
                    metrics,
                    last_exit: exit,
                })
            })
            .await?;
        Ok(settled.unwrap_or(record))
    }

    /// Looks at the container of a just-registered record, so that the record says at once whether
    /// it runs. An unreachable engine leaves the record as registered.
    async fn observe_registered(&self, record: AppRecord) -> Result<AppRecord, AgentError> {
        match self.runtime().inspect(record.container_id()).await {
            Ok(state) if state.running => {
                let now = Utc::now();
                let metrics = running_metrics(&state, &RawStats::default(), now);
                let observed = self
                    .inner
                    .store
                    .observe(&record.id, record.container_id(), now, move |_| {
                        Some(Observation {
                            metrics,
                            last_exit: None,
                        })
                    })
                    .await?;
                Ok(observed.unwrap_or(record))
            }
            Ok(state) => {
                self.settle_exited(record, Some(&state), Settler::Read)
                    .await
            }
            Err(RuntimeError::NotFound(_)) => self.settle_exited(record, None, Settler::Read).await,
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "registered without looking at the container");
                Ok(record)
            }
        }
    }

    fn begin_stop(&self, id: &AppId) -> Result<StopGuard, AgentError> {
        let mut stopping = self
            .inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !stopping.insert(id.clone()) {
            return Err(AgentError::StopInProgress(id.clone()));
        }
        Ok(StopGuard {
            agent: self.inner.clone(),
            id: id.clone(),
        })
    }

    /// Admits a stop of `id` by `principal`: the caller may stop it, and no other stop of it is under
    /// way. The returned guard marks the stop as under way until dropped.
    async fn admit(
        &self,
        principal: &Principal,
        id: &AppId,
    ) -> Result<(AppRecord, StopGuard), AgentError> {
        self.authorized(principal, id, Action::Stop).await?;
        let guard = self.begin_stop(id)?;
        // Read again under the guard: a stop that ended meanwhile may have rewritten the record.
        let record = self.current(id).await?;
        Ok((record, guard))
    }

    async fn current(&self, id: &AppId) -> Result<AppRecord, AgentError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| AgentError::NotFound(id.clone()))
    }

    /// Runs a stop in a task of its own, tracked for shutdown. `known` is the container's state if
    /// the caller just inspected it.
    fn launch(
        &self,
        caller: &Principal,
        record: AppRecord,
        guard: StopGuard,
        req: StopRequest,
        known: Option<ContainerState>,
    ) -> JoinHandle<Result<AppRecord, AgentError>> {
        let agent = self.clone();
        let caller = caller.name.clone();
        self.inner.stops.spawn(async move {
            let _guard = guard;
            let app = record.id.clone();
            let started = std::time::Instant::now();
            let outcome = agent.run_stop(record, req, known).await;
            let elapsed_ms = started.elapsed().as_millis();
            match &outcome {
                Ok(_) => tracing::info!(%app, token = %caller, elapsed_ms, "stopped"),
                Err(e) => {
                    tracing::info!(%app, token = %caller, elapsed_ms, outcome = %e, "stop not done")
                }
            }
            outcome
        })
    }

    /// Stops the app's container and answers with the updated record. The work runs in a task of its
    /// own: dropping this future (a client that hangs up) does not cancel the stop.
    pub async fn stop(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        let (record, guard) = self
            .admit(principal, id)
            .await
            .inspect_err(|e| log_refusal(principal, id, e))?;
        self.launch(principal, record, guard, req, None)
            .await
            .map_err(|e| AgentError::Internal(format!("the stop task failed: {e}")))?
    }

    /// Checks that the app's container exists and runs, then stops it in the background and returns
    /// at once; the outcome lands in the record. The checks and their order are the ~okeanos route's.
    pub async fn stop_in_background(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<(), AgentError> {
        let admitted = async {
            let record = self.authorized(principal, id, Action::Stop).await?;
            let state = self.running_state(record).await?;
            let guard = self.begin_stop(id)?;
            Ok::<_, AgentError>((state, guard))
        };
        let ((record, state), guard) = admitted
            .await
            .inspect_err(|e| log_refusal(principal, id, e))?;
        tracing::info!(app = %id, token = %principal.name, "stop accepted");
        drop(self.launch(principal, record, guard, req, Some(state)));
        Ok(())
    }

    /// The container's state if it runs; otherwise the record is settled and the answer says how the
    /// container came to be stopped.
    async fn running_state(
        &self,
        record: AppRecord,
    ) -> Result<(AppRecord, ContainerState), AgentError> {
        match self.runtime().inspect(record.container_id()).await {
            Ok(state) if state.running => Ok((record, state)),
            Ok(state) => Err(self.already_stopped(record, Some(&state)).await),
            Err(RuntimeError::NotFound(_)) => Err(self.already_stopped(record, None).await),
            Err(e) => Err(AgentError::from_runtime(e)),
        }
    }

    /// Settles the record of a container found not running (`None`: gone), and says so.
    async fn already_stopped(
        &self,
        record: AppRecord,
        state: Option<&ContainerState>,
    ) -> AgentError {
        let id = record.id.clone();
        let how = match state {
            None => AlreadyStopped::Gone,
            Some(_) if record.metrics.as_ref().is_some_and(|m| !m.online) => {
                AlreadyStopped::AsRecorded
            }
            Some(_) => AlreadyStopped::Unnoticed,
        };
        match self.settle_exited(record, state, Settler::Stop).await {
            Ok(record) => AgentError::AlreadyStopped {
                id,
                how,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    async fn run_stop(
        &self,
        record: AppRecord,
        req: StopRequest,
        known: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let runtime = self.runtime();
        let container = record.container_id().to_owned();
        let (record, state) = match known {
            Some(state) => (record, state),
            None => self.running_state(record).await?,
        };
        // The final sample must be taken before the stop: a stopped container has no stats.
        let reading = match runtime.stats(&container).await {
            Ok(s) if !s.is_empty() => Some(s),
            Ok(_) => None,
            Err(RuntimeError::NotFound(_)) => return Err(self.already_stopped(record, None).await),
            Err(RuntimeError::Unavailable(m)) => return Err(AgentError::DockerUnavailable(m)),
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "final sample failed; stopping without one");
                None
            }
        };
        let grace = effective_grace(&req, self.inner.default_timeout, &state);
        let mut gone_midway = false;
        let halt_started = Utc::now();
        match halt(runtime, &container, &req, grace).await {
            Ok(path) => tracing::debug!(app = %record.id, ?path, grace, "container halted"),
            // It exited between the inspect and the signal: on its own, not by this stop.
            Err(RuntimeError::NotRunning(_)) => {
                let state = runtime.inspect(&container).await.ok();
                return Err(self.already_stopped(record, state.as_ref()).await);
            }
            // Removed while stopping (an auto-removing container, or `docker rm -f`): it is down.
            Err(RuntimeError::NotFound(_)) => gone_midway = true,
            Err(e) => return Err(AgentError::from_runtime(e)),
        }
        let final_state = if gone_midway {
            None
        } else {
            match runtime.inspect(&container).await {
                Ok(s) => Some(s),
                Err(RuntimeError::NotFound(_)) => None,
                Err(e) => return Err(AgentError::from_runtime(e)),
            }
        };
        let now = Utc::now();
        let final_state = final_state.unwrap_or_else(|| ContainerState {
            started_at: state.started_at,
            finished_at: Some(now),
            ..ContainerState::default()
        });
        if final_state.running {
            return Err(AgentError::Engine(format!(
                "container {container} was running again right after the stop (its restart policy may have restarted it)"
            )));
        }
        let exited_before = final_state
            .finished_at
            .is_some_and(|f| f < halt_started - EXIT_CLOCK_SLACK);
        let record = self.record_final(record, final_state, reading, now).await?;
        if exited_before {
            // The engine answers a stop of an exited container as a success: it exited on its own
            // while the final sample was taken, and this stop did nothing.
            return Err(AgentError::AlreadyStopped {
                id: record.id.clone(),
                how: AlreadyStopped::Unnoticed,
                record: Box::new(record),
            });
        }
        Ok(record)
    }

    async fn record_final(
        &self,
        mut record: AppRecord,
        state: ContainerState,
        reading: Option<RawStats>,
        now: DateTime<Utc>,
    ) -> Result<AppRecord, StoreError> {
        let exit = last_exit(&state);
        let observed = {
            let exit = exit.clone();
            let state = state.clone();
            let reading = reading.clone();
            move |stored: &AppRecord| {
                Some(Observation {
                    metrics: final_metrics(&state, reading.as_ref(), stored.metrics.as_ref(), now),
                    last_exit: exit,
                })
            }
        };
        let stored = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, observed)
            .await?;
        // The record was deleted or re-registered during the stop: answer with what was observed.
        Ok(stored.unwrap_or_else(|| {
            record.metrics = Some(final_metrics(
                &state,
                reading.as_ref(),
                record.metrics.as_ref(),
                now,
            ));
            record.last_exit = exit.or(record.last_exit.take());
            record.updated_at = now;
            record
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Access;
    use crate::runtime::fake::FakeRuntime;
    use crate::stop::Signal;
    use serde_json::json;

    struct Fixture {
        agent: Agent,
        fake: FakeRuntime,
        _dir: tempfile::TempDir,
    }

    fn operator() -> Principal {
        Principal {
            name: "op".into(),
            access: Access::Operator,
        }
    }

    async fn fixture(stop_takes_signal: bool, apps: &[(&str, Value)]) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("store");
        let fake = FakeRuntime::new(stop_takes_signal);
        let node = WorkerNode {
            id: "n".into(),
            node_name: "N".into(),
        };
        let agent = Agent::new(Arc::new(fake.clone()), store, node, None);
        for (id, body) in apps {
            let id = AppId::parse(id).expect("id");
            fake.add_running(
                body["containerId"].as_str().expect("container"),
                &["SIGTERM"],
            );
            agent
                .register(&operator(), &id, body.clone())
                .await
                .expect("register");
        }
        fake.clear_calls();
        Fixture {
            agent,
            fake,
            _dir: dir,
        }
    }

    fn id(s: &str) -> AppId {
        AppId::parse(s).expect("id")
    }

    impl Fixture {
        async fn stop_as(
            &self,
            who: &Principal,
            app: &str,
            req: StopRequest,
        ) -> Result<AppRecord, AgentError> {
            self.agent.stop(who, &id(app), req).await
        }

        /// A default stop of `app` by an operator.
        async fn stop(&self, app: &str) -> Result<AppRecord, AgentError> {
            self.stop_as(&operator(), app, StopRequest::default()).await
        }

        async fn stored(&self, app: &str) -> Option<AppRecord> {
            self.agent.store().get(&id(app)).await.expect("get")
        }
    }

    #[tokio::test]
    async fn a_stop_records_final_metrics_and_exit() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        let r = f.stop("a").await.expect("stopped");
        let m = r.metrics.expect("metrics");
        assert!(!m.online);
        assert_eq!(m.uptime, Some(42));
        assert_eq!(m.cpu_usage_percent, Some(20.0));
        assert_eq!(m.network_tx_bytes, Some(22));
        assert_eq!(r.last_exit.expect("exit").exit_code, 0);
        assert_eq!(
            f.fake.calls(),
            ["inspect ca", "stats ca", "stop ca - t=10", "inspect ca"]
        );
    }

    #[tokio::test]
    async fn an_unreachable_engine_leaves_the_record_untouched() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        let before = f.stored("a").await;
        f.fake.set_engine_down(true);
        let err = f.stop("a").await;
        assert!(
            matches!(err, Err(AgentError::DockerUnavailable(_))),
            "{err:?}"
        );
        assert_eq!(f.stored("a").await, before);
        f.fake.set_engine_down(false);
        assert!(f.stop("a").await.is_ok(), "works again");
    }

    #[tokio::test]
    async fn the_engine_dying_mid_stop_is_503_and_the_record_untouched() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        let before = f.stored("a").await;
        f.fake
            .fail_next("stop", RuntimeError::Unavailable("connection reset".into()));
        let err = f.stop("a").await;
        assert!(
            matches!(err, Err(AgentError::DockerUnavailable(_))),
            "{err:?}"
        );
        assert_eq!(f.stored("a").await, before);
    }

    #[tokio::test]
    async fn a_container_vanishing_before_the_stop_call_ends_stopped() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        f.fake.vanish_after("stats", "ca");
        let r = f.stop("a").await.expect("down");
        let m = r.metrics.expect("metrics");
        assert!(!m.online);
        assert_eq!(
            m.memory_usage_bytes,
            Some(4096),
            "the sample taken before it vanished is kept"
        );
    }

    #[tokio::test]
    async fn a_container_vanishing_between_inspect_and_stats_is_already_stopped() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        f.fake.vanish_after("inspect", "ca");
        let err = f.stop("a").await;
        match err {
            Err(AgentError::AlreadyStopped { record, .. }) => assert!(!record.online()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn exiting_on_its_own_while_sampled_is_already_stopped_not_stopped() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        f.fake.exit_after("stats", "ca");
        match f.stop("a").await {
            Err(AgentError::AlreadyStopped { how, record, .. }) => {
                assert_eq!(how, AlreadyStopped::Unnoticed);
                assert_eq!(record.last_exit.expect("exit").exit_code, 1);
                let m = record.metrics.expect("metrics");
                assert!(!m.online);
                assert_eq!(m.memory_usage_bytes, Some(4096), "the sample is kept");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            f.stored("a")
                .await
                .expect("record")
                .last_exit
                .expect("exit")
                .exit_code,
            1
        );
    }

    #[tokio::test]
    async fn a_stale_copy_never_overwrites_the_final_record() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        let stale = f.stored("a").await.expect("record");
        let stopped = f.stop("a").await.expect("stopped");
        // A read that looked before the stop settles afterwards: the stored final word stands.
        let state = f.fake.state("ca");
        let settled = f
            .agent
            .settle_exited(stale, Some(&state), Settler::Read)
            .await
            .expect("settled");
        assert_eq!(settled, stopped);
        assert_eq!(f.stored("a").await, Some(stopped));
    }

    #[tokio::test]
    async fn registration_looks_at_the_container() {
        let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
        assert!(
            f.stored("a").await.expect("record").online(),
            "seen running"
        );
        let out = f
            .agent
            .register(&operator(), &id("b"), json!({"containerId": "nowhere"}))
            .await
            .expect("registered");
        assert!(!out.record.online(), "gone: offline");
        f.fake.set_engine_down(true);
        let out = f
            .agent
            .register(&operator(), &id("c"), json!({"containerId": "cc"}))
            .await
            .expect("registered without the engine");
        assert!(out.record.metrics.is_none(), "not seen");
    }

    #[tokio::test]
    async fn exiting_before_the_signal_is_already_stopped() {
        let f = fixture(false, &[("a", json!({"containerId": "ca"}))]).await;
        f.fake
            .fail_next("kill", RuntimeError::NotRunning("ca".into()));
        let req = StopRequest {
            signal: Some(Signal::Usr1),
            timeout: Some(1),
        };
        let err = f.stop_as(&operator(), "a", req).await;
        assert!(
            matches!(err, Err(AgentError::AlreadyStopped { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_hanging_stop_excludes_only_its_own_app_and_survives_its_caller() {
        let f = fixture(
            true,
            &[
                ("a", json!({"containerId": "ca"})),
                ("b", json!({"containerId": "cb"})),
            ],
        )
        .await;
        f.fake.gate("stop");
        let agent = f.agent.clone();
        let first = tokio::spawn(async move {
            agent
                .stop(&operator(), &id("a"), StopRequest::default())
                .await
        });
        f.fake.entered().await;
        let second = f.stop("a").await;
        assert!(
            matches!(second, Err(AgentError::StopInProgress(_))),
            "{second:?}"
        );
        // The caller of the first stop goes away; the stop itself goes on.
        first.abort();
        // Another app is not held up by the hanging stop.
        let agent = f.agent.clone();
        let other = tokio::spawn(async move {
            agent
                .stop(&operator(), &id("b"), StopRequest::default())
                .await
        });
        f.fake.entered().await;
        f.fake.release();
        assert!(other.await.expect("join").is_ok());
        for _ in 0..100 {
            let r = f
                .agent
                .store()
                .get(&id("a"))
                .await
                .expect("get")
                .expect("record");
            if r.metrics.as_ref().is_some_and(|m| !m.online) {
                assert!(!f.fake.state("ca").running);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the abandoned stop never completed");
    }

    #[tokio::test]
    async fn refused_callers_never_reach_the_engine() {
        let team = json!({"owner": "lead", "members": [{"user": "viewer", "permissions": {"canChangeStatusApplication": false}}]});
        let f = fixture(
            true,
            &[(
                "a",
                json!({"containerId": "ca", "userId": "owner", "teamId": team}),
            )],
        )
        .await;
        let user = |u: &str| Principal {
            name: u.into(),
            access: Access::User { user_id: u.into() },
        };
        let err = f
            .stop_as(&user("stranger"), "a", StopRequest::default())
            .await;
        assert!(matches!(err, Err(AgentError::NotFound(_))), "{err:?}");
        let err = f
            .stop_as(&user("viewer"), "a", StopRequest::default())
            .await;
        assert!(matches!(err, Err(AgentError::Forbidden(_))), "{err:?}");
        let err = f
            .agent
            .register(&user("owner"), &id("a"), json!({"containerId": "x"}))
            .await;
        assert!(matches!(err, Err(AgentError::Forbidden(_))), "{err:?}");
        assert!(f.fake.calls().is_empty(), "{:?}", f.fake.calls());
        assert!(
            f.stop_as(&user("owner"), "a", StopRequest::default())
                .await
                .is_ok()
        );
    }
}
