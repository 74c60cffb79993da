//! The start of an app, by both routes, and the restart (the stop, then the start, under one
//! guard): the intent written before the engine is touched, the restart policy the last stop set
//! aside given back, the boot check, and the record of the new run. Admission and the task it runs
//! in are the operation core's ([`super::operation`]).
//!
//! Every path out of a start whose intent was written records how it ended.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::operation::OpGuard;
use super::stopping::StopIntent;
use super::{Agent, AgentError, AlreadyRunning, AlreadyStopped, Settler, Sighting};
use crate::auth::Principal;
use crate::metrics::{RawStats, final_metrics, last_exit, running_metrics};
use crate::operation::Operation;
use crate::record::{AppId, AppRecord, LastStart, StartOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::stop::StopRequest;
use crate::store::Observation;
use crate::telemetry::Route;

/// How long a container must go on running after the engine has started it before the start
/// reports it as running. The engine answers a start as soon as the process exists; a process that
/// dies at once (a bad command line, a missing file, a crash at boot) is gone within this window,
/// and the engine's record of its exit lags by a few milliseconds.
const BOOT_CHECK: Duration = Duration::from_millis(20);

impl Agent {
    /// Starts the app's container and answers with the updated record once the engine says it runs
    /// (or that it exited at once). The work runs in a task of its own, as a stop's does.
    pub async fn start(&self, principal: &Principal, id: &AppId) -> Result<AppRecord, AgentError> {
        let (record, guard) = self
            .admit(principal, id, Operation::Start)
            .await
            .inspect_err(|e| self.refused(Operation::Start, Route::V1, principal, id, e))?;
        let task = self.launch_start(principal, record, guard, None, Route::V1);
        Agent::answer(Operation::Start, task).await
    }

    /// Checks that the app's container exists and is not running, then starts it in the background
    /// and returns at once; the outcome lands in the record (`lastStart`, the metrics, the exit).
    pub async fn start_in_background(
        &self,
        principal: &Principal,
        id: &AppId,
    ) -> Result<(), AgentError> {
        let (record, state, guard) = self
            .admit_for_background(principal, id, Operation::Start)
            .await?;
        drop(self.launch_start(principal, record, guard, Some(state), Route::Okeanos));
        Ok(())
    }

    /// Stops the app's container exactly as a stop does, then starts it, under one guard; a stopped
    /// app is just started.
    pub async fn restart(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        let admitted = match self.may_ask_for(principal, &req) {
            Ok(()) => self.admit(principal, id, Operation::Restart).await,
            Err(e) => Err(e),
        };
        let (record, guard) = admitted
            .inspect_err(|e| self.refused(Operation::Restart, Route::V1, principal, id, e))?;
        let app = record.id.clone();
        let task = self.launch(
            Operation::Restart,
            Route::V1,
            principal,
            app,
            guard,
            move |agent, caller, requested_at| async move {
                agent.run_restart(&caller, requested_at, record, req).await
            },
        );
        Agent::answer(Operation::Restart, task).await
    }

    fn launch_start(
        &self,
        caller: &Principal,
        record: AppRecord,
        guard: OpGuard,
        known: Option<ContainerState>,
        route: Route,
    ) -> JoinHandle<Result<AppRecord, AgentError>> {
        self.launch(
            Operation::Start,
            route,
            caller,
            record.id.clone(),
            guard,
            move |agent, caller, requested_at| async move {
                agent
                    .start_closed(&caller, requested_at, record, known)
                    .await
            },
        )
    }

    async fn run_restart(
        &self,
        caller: &str,
        requested_at: DateTime<Utc>,
        record: AppRecord,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        let id = record.id.clone();
        let state = match self.runtime().inspect(record.container_id()).await {
            Ok(state) => state,
            Err(RuntimeError::NotFound(_)) => return Err(self.container_missing(record).await),
            Err(e) => return Err(AgentError::from_runtime(e)),
        };
        let record = if state.running {
            let intent = StopIntent::new(caller, requested_at, true);
            match self.run_stop(&intent, record, req, Some(state)).await {
                Ok(record) => record,
                Err(e) => {
                    self.close_intent(&id, &e).await;
                    match e {
                        // It exited by itself meanwhile: a restart of a stopped app starts it.
                        AgentError::AlreadyStopped {
                            how: AlreadyStopped::ByTheAgent | AlreadyStopped::Unnoticed,
                            record,
                            ..
                        } => *record,
                        AgentError::AlreadyStopped { record, .. } => {
                            let missing = AgentError::ContainerMissing {
                                id: id.clone(),
                                record,
                            };
                            self.close_start_intent(&id, &missing).await;
                            return Err(self.refreshed(missing).await);
                        }
                        // The stop failed, or the container was started again while it ran:
                        // nothing is started.
                        other => {
                            self.close_start_intent(&id, &other).await;
                            return Err(self.refreshed(other).await);
                        }
                    }
                }
            }
        } else {
            record
        };
        self.start_closed(caller, requested_at, record, None).await
    }

    /// Runs a start; if it fails after writing its intent, the intent is closed with how it ended.
    async fn start_closed(
        &self,
        caller: &str,
        requested_at: DateTime<Utc>,
        record: AppRecord,
        known: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let id = record.id.clone();
        let outcome = self.run_start(caller, requested_at, record, known).await;
        if let Err(e) = &outcome {
            self.close_start_intent(&id, e).await;
        }
        outcome
    }

    /// A refusal carrying the record as it is stored now.
    async fn refreshed(&self, err: AgentError) -> AgentError {
        match err {
            AgentError::ContainerMissing { id, record } => {
                let record = match self.inner.store.get(&id).await {
                    Ok(Some(r)) => Box::new(r),
                    _ => record,
                };
                AgentError::ContainerMissing { id, record }
            }
            AgentError::StopOvertaken { id, record } => {
                let record = match self.inner.store.get(&id).await {
                    Ok(Some(r)) => Box::new(r),
                    _ => record,
                };
                AgentError::StopOvertaken { id, record }
            }
            other => other,
        }
    }

    /// The container's state if it exists and does not run; otherwise the record is settled and
    /// the answer says why the start cannot go ahead. Called with the app's guard held.
    pub(super) async fn stopped_state(
        &self,
        record: AppRecord,
    ) -> Result<(AppRecord, ContainerState), AgentError> {
        match self.runtime().inspect(record.container_id()).await {
            Ok(state) if !state.running => Ok((record, state)),
            Ok(state) => Err(self.already_running(record, state).await),
            Err(RuntimeError::NotFound(_)) => Err(self.container_missing(record).await),
            Err(e) => Err(AgentError::from_runtime(e)),
        }
    }

    /// Settles the record of a container found running, and says so.
    async fn already_running(&self, record: AppRecord, state: ContainerState) -> AgentError {
        let id = record.id.clone();
        let how = if record.online() {
            AlreadyRunning::Known
        } else {
            AlreadyRunning::Unnoticed
        };
        let sighting = Sighting {
            at: Utc::now(),
            state: Some(state),
        };
        match self.record_sighting(record, sighting, Settler::Op).await {
            Ok(record) => AgentError::AlreadyRunning {
                id,
                how,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    /// Settles the record of a container that no longer exists, and says so.
    async fn container_missing(&self, record: AppRecord) -> AgentError {
        let id = record.id.clone();
        let sighting = Sighting {
            at: Utc::now(),
            state: None,
        };
        match self.record_sighting(record, sighting, Settler::Op).await {
            Ok(record) => AgentError::ContainerMissing {
                id,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    async fn run_start(
        &self,
        caller: &str,
        requested_at: DateTime<Utc>,
        record: AppRecord,
        known: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let runtime = self.runtime();
        let container = record.container_id().to_owned();
        let (record, state) = match known {
            Some(state) => (record, state),
            None => self.stopped_state(record).await?,
        };
        let record = self
            .write_start_intent(record, caller, requested_at)
            .await?;
        // The policy the last stop set to `no`, unless someone has given the container one since.
        let give_back = record
            .restart_policy_set_aside()
            .filter(|_| !state.may_restart_itself())
            .map(str::to_owned);
        match runtime.start(&container).await {
            Ok(()) => {}
            Err(RuntimeError::NotFound(_)) => return Err(self.container_missing(record).await),
            Err(e) => return Err(AgentError::from_runtime(e)),
        }
        // The boot check, and the policy given back beside it. The wait's own failure is not the
        // start's: the inspect below says how the container is.
        let restore = async {
            match &give_back {
                Some(policy) => Some(runtime.set_restart_policy(&container, policy).await),
                None => None,
            }
        };
        let (_exited, restored) = tokio::join!(runtime.wait_exit(&container, BOOT_CHECK), restore);
        let state = match runtime.inspect(&container).await {
            Ok(s) => Some(s),
            Err(RuntimeError::NotFound(_)) => None,
            Err(e) => return Err(AgentError::from_runtime(e)),
        };
        let (restored, error) = match (give_back, restored) {
            (Some(policy), Some(Ok(()))) => {
                tracing::info!(app = %record.id, %policy, "restart policy given back");
                (Some(policy), None)
            }
            (Some(policy), Some(Err(e))) => {
                tracing::warn!(app = %record.id, %policy, error = %e, "could not give the restart policy back");
                let error = format!(
                    "started, but the restart policy {policy:?} that the last stop set aside could not be given back: {e}"
                );
                (None, Some(error))
            }
            _ => (None, None),
        };
        let running = state.as_ref().is_some_and(|s| s.running);
        if let Some(s) = state.as_ref().filter(|s| s.running) {
            self.follow(&container, s);
        }
        let start = LastStart {
            outcome: if running {
                StartOutcome::Started
            } else {
                StartOutcome::Exited
            },
            by: caller.to_owned(),
            requested_at,
            finished_at: Some(Utc::now()),
            error,
            restored_restart_policy: restored,
        };
        self.record_start(record, state, start).await
    }

    /// Writes the start's intent before the engine is touched: should the agent die during the
    /// start, its next start finds the intent and makes the record true.
    async fn write_start_intent(
        &self,
        record: AppRecord,
        caller: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let intent = LastStart {
            outcome: StartOutcome::Starting,
            by: caller.to_owned(),
            requested_at,
            finished_at: None,
            error: None,
            restored_restart_policy: None,
        };
        let written = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                Some(Observation {
                    metrics: stored
                        .metrics
                        .clone()
                        .unwrap_or(crate::record::ResourceMetrics {
                            timestamp: now,
                            ..Default::default()
                        }),
                    last_start: Some(intent),
                    ..Observation::default()
                })
            })
            .await?;
        Ok(written.unwrap_or(record))
    }

    /// The record of the new run: running, without figures until a reading comes; or exited at
    /// once, with how (`None`: the container is gone, as an auto-removing one may be).
    async fn record_start(
        &self,
        mut record: AppRecord,
        state: Option<ContainerState>,
        start: LastStart,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let (metrics, exit) = match &state {
            Some(s) if s.running => (running_metrics(s, &RawStats::default(), now), None),
            other => {
                let gone = ContainerState::default();
                let s = other.as_ref().unwrap_or(&gone);
                // The figures of the run before do not belong to this one.
                (final_metrics(s, None, None, now), last_exit(s))
            }
        };
        let observation = Observation {
            metrics,
            last_exit: exit,
            last_stop: None,
            last_start: Some(start),
        };
        let written = {
            let observation = observation.clone();
            self.inner
                .store
                .observe(&record.id, record.container_id(), now, move |_| {
                    Some(observation)
                })
                .await?
        };
        // The record was deleted or re-registered during the start: answer with what was observed.
        Ok(written.unwrap_or_else(|| {
            record.metrics = Some(observation.metrics);
            record.last_exit = observation.last_exit.or(record.last_exit.take());
            record.last_start = observation.last_start;
            record.updated_at = now;
            record
        }))
    }

    /// A start that ended in `err` after writing its intent records how it ended, and the record is
    /// made true: the engine may have started the container before the error, so it is looked at
    /// again, and if it runs it gets back the restart policy the last stop set aside.
    pub(super) async fn close_start_intent(&self, id: &AppId, err: &AgentError) {
        let Ok(Some(record)) = self.inner.store.get(id).await else {
            return;
        };
        if !record.start_pending() {
            return;
        }
        let record = match self.sight(&record).await {
            Ok(sighting) => {
                let running = sighting.state.as_ref().is_some_and(|s| s.running);
                let record = match self
                    .record_sighting(record.clone(), sighting, Settler::Op)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(app = %id, error = %e, "could not record the container's state");
                        record
                    }
                };
                if running {
                    let policy = record.restart_policy_set_aside().map(str::to_owned);
                    self.give_back_restart_policy(&record, policy.as_deref())
                        .await;
                }
                record
            }
            // The engine is away: the record keeps what it said; the watcher's next pass makes it
            // true once the engine is back.
            Err(_) => record,
        };
        let error = match err {
            AgentError::ContainerMissing { .. } => "its container no longer exists".to_owned(),
            other => other.to_string(),
        };
        if let Err(e) = self
            .close_start(&record, StartOutcome::Failed, Some(error))
            .await
        {
            tracing::error!(app = %id, error = %e, "could not record how the start ended");
        }
    }

    /// Closes the start intent of `record` with `outcome`, unless another start has begun since
    /// (its intent has another request time) or, for `interrupted`, an operation is under way.
    pub(super) async fn close_start(
        &self,
        record: &AppRecord,
        outcome: StartOutcome,
        error: Option<String>,
    ) -> Result<AppRecord, AgentError> {
        let Some(pending) = record
            .last_start
            .clone()
            .filter(|s| s.outcome == StartOutcome::Starting)
        else {
            return Ok(record.clone());
        };
        let now = Utc::now();
        let inner = self.inner.clone();
        let closed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let start = stored.last_start.clone()?;
                let ours = start.outcome == StartOutcome::Starting
                    && start.requested_at == pending.requested_at;
                if !ours
                    || (outcome == StartOutcome::Interrupted && inner.under_way(&stored.id, false))
                {
                    return None;
                }
                Some(Observation {
                    metrics: stored.metrics.clone().unwrap_or_default(),
                    last_start: Some(LastStart {
                        outcome,
                        finished_at: Some(now),
                        error,
                        ..start
                    }),
                    ..Observation::default()
                })
            })
            .await?;
        Ok(closed.unwrap_or_else(|| record.clone()))
    }
}
