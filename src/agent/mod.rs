//! The core: registering, reading and stopping apps. It decides how an app is stopped and what its
//! record says afterwards, and knows neither HTTP nor bollard.
//!
//! Stops of one app exclude each other; stops of different apps run in parallel ([`stopping`]). A
//! watcher keeps records true when containers change behind the agent's back ([`watch`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::auth::Principal;
use crate::metrics::{RawStats, final_metrics, last_exit, running_metrics};
use crate::policy::{Action, Denial, authorize, may_manage_records};
use crate::record::{AppId, AppRecord, RecordError, Registration, WorkerNode};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};
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
    /// The agent stopped it, and it has not run since.
    #[error("the agent already stopped it")]
    ByTheAgent,
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
    /// The latest stats reading of each running app.
    readings: Mutex<sampling::Readings>,
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
                readings: Mutex::default(),
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
                self.follow_stats(record.container_id());
                let fresh = self.fresh_reading(record.container_id());
                let stats = match fresh {
                    Some(s) => Ok(s),
                    None => runtime.stats(record.container_id()).await,
                };
                let stats = match stats {
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
        // The stream's last reading of the run that just ended, if the agent followed it.
        let reading = state
            .as_ref()
            .and_then(|st| self.take_last_reading(record.container_id(), st.started_at));
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
                    reading.as_ref(),
                    stored.metrics.as_ref(),
                    now,
                );
                Some(Observation {
                    metrics,
                    last_exit: exit,
                    last_stop: None,
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
                self.follow_stats(record.container_id());
                let now = Utc::now();
                let metrics = running_metrics(&state, &RawStats::default(), now);
                let observed = self
                    .inner
                    .store
                    .observe(&record.id, record.container_id(), now, move |_| {
                        Some(Observation::metrics(metrics))
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
}

mod sampling;
mod stopping;
mod watch;

#[cfg(test)]
mod tests;
