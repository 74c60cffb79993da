//! The core: registering, reading and stopping apps. It decides how an app is stopped and what its
//! record says afterwards, and knows neither HTTP nor bollard.
//!
//! Stops of one app exclude each other; stops of different apps run in parallel. A stop runs in its
//! own task, so a client that disconnects does not cancel it half-way.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::auth::Principal;
use crate::metrics::{RawStats, final_metrics, last_exit, running_metrics};
use crate::policy::{Action, Denial, authorize, may_manage_records};
use crate::record::{AppId, AppRecord, RecordError, Registration, WorkerNode};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};
use crate::stop::{StopRequest, effective_grace, halt};
use crate::store::{Registered, Store, StoreError};

/// Why the core refused or failed a call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(#[from] RecordError),
    #[error("no app {0:?} on this node")]
    NotFound(AppId),
    #[error("{0}")]
    Forbidden(String),
    #[error("app {id:?} is already stopped: {reason}")]
    AlreadyStopped {
        id: AppId,
        reason: String,
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
    /// sample. Writes only when the record said otherwise; a read never writes while a stop of the app
    /// is under way, since the stop writes the final word.
    async fn settle_exited(
        &self,
        record: AppRecord,
        state: Option<&ContainerState>,
        settler: Settler,
    ) -> Result<AppRecord, AgentError> {
        let exit = state.and_then(last_exit);
        let already_true = record.metrics.as_ref().is_some_and(|m| !m.online)
            && (exit.is_none() || exit == record.last_exit);
        if already_true || (settler == Settler::Read && self.stop_under_way(&record.id)) {
            return Ok(record);
        }
        let now = Utc::now();
        let gone = ContainerState::default();
        let metrics = final_metrics(state.unwrap_or(&gone), None, record.metrics.as_ref(), now);
        let updated = self
            .inner
            .store
            .observe(&record.id, record.container_id(), metrics, exit, now)
            .await?;
        Ok(updated.unwrap_or(record))
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

    /// Stops the app's container and answers with the updated record. The work runs in a task of its
    /// own: dropping this future (a client that hangs up) does not cancel the stop.
    pub async fn stop(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        let admitted = match self.authorized(principal, id, Action::Stop).await {
            Ok(record) => self.begin_stop(id).map(|guard| (record, guard)),
            Err(e) => Err(e),
        };
        let (record, guard) = admitted.inspect_err(|e| {
            tracing::info!(app = %id, token = %principal.name, outcome = %e, "stop refused");
        })?;
        let agent = self.clone();
        let caller = principal.name.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let app = record.id.clone();
            let started = std::time::Instant::now();
            let outcome = agent.run_stop(record, req).await;
            let elapsed_ms = started.elapsed().as_millis();
            match &outcome {
                Ok(_) => tracing::info!(%app, token = %caller, elapsed_ms, "stopped"),
                Err(e) => {
                    tracing::info!(%app, token = %caller, elapsed_ms, outcome = %e, "stop not done")
                }
            }
            outcome
        });
        task.await
            .map_err(|e| AgentError::Internal(format!("the stop task failed: {e}")))?
    }

    async fn already_stopped(
        &self,
        record: AppRecord,
        state: Option<&ContainerState>,
        reason: &str,
    ) -> Result<AppRecord, AgentError> {
        let id = record.id.clone();
        let record = self.settle_exited(record, state, Settler::Stop).await?;
        Err(AgentError::AlreadyStopped {
            id,
            reason: reason.to_owned(),
            record: Box::new(record),
        })
    }

    async fn run_stop(&self, record: AppRecord, req: StopRequest) -> Result<AppRecord, AgentError> {
        let runtime = self.runtime();
        let container = record.container_id().to_owned();
        let state = match runtime.inspect(&container).await {
            Ok(s) => s,
            Err(RuntimeError::NotFound(_)) => {
                return self
                    .already_stopped(record, None, "its container no longer exists")
                    .await;
            }
            Err(e) => return Err(AgentError::from_runtime(e)),
        };
        if !state.running {
            return self
                .already_stopped(record, Some(&state), "its container is not running")
                .await;
        }
        // The final sample must be taken before the stop: a stopped container has no stats.
        let reading = match runtime.stats(&container).await {
            Ok(s) if !s.is_empty() => Some(s),
            Ok(_) => None,
            Err(RuntimeError::NotFound(_)) => {
                return self
                    .already_stopped(record, None, "its container was removed")
                    .await;
            }
            Err(RuntimeError::Unavailable(m)) => return Err(AgentError::DockerUnavailable(m)),
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "final sample failed; stopping without one");
                None
            }
        };
        let grace = effective_grace(&req, self.inner.default_timeout, &state);
        let mut gone_midway = false;
        match halt(runtime, &container, &req, grace).await {
            Ok(path) => tracing::debug!(app = %record.id, ?path, grace, "container halted"),
            // It exited between the inspect and the signal: on its own, not by this stop.
            Err(RuntimeError::NotRunning(_)) => {
                let state = runtime.inspect(&container).await.ok();
                return self
                    .already_stopped(
                        record,
                        state.as_ref(),
                        "its container exited before the signal",
                    )
                    .await;
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
        Ok(self
            .record_final(record, &final_state, reading.as_ref(), now)
            .await?)
    }

    async fn record_final(
        &self,
        mut record: AppRecord,
        state: &ContainerState,
        reading: Option<&RawStats>,
        now: DateTime<Utc>,
    ) -> Result<AppRecord, StoreError> {
        let metrics = final_metrics(state, reading, record.metrics.as_ref(), now);
        let exit = last_exit(state);
        let stored = self
            .inner
            .store
            .observe(
                &record.id,
                record.container_id(),
                metrics.clone(),
                exit.clone(),
                now,
            )
            .await?;
        // The record was deleted or re-registered during the stop: answer with what was observed.
        Ok(stored.unwrap_or_else(|| {
            record.metrics = Some(metrics);
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
            agent
                .register(&operator(), &id, body.clone())
                .await
                .expect("register");
            fake.add_running(
                body["containerId"].as_str().expect("container"),
                &["SIGTERM"],
            );
        }
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
