//! The start of an app, by both routes, and the restart (the stop, then the start, under one
//! guard): the intent written before the engine is touched, the restart policy the last stop set
//! aside given back, the boot check, and the record of the new run. Admission and the task it runs
//! in are the operation core's ([`super::operation`]).
//!
//! Every path out of a start whose intent was written records how it ended.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::operation::OpGuard;
use super::stopping::{Intent, OpFrom};
use super::{Agent, AgentError, AlreadyRunning, AlreadyStopped};
use crate::agent::figures::{final_metrics, last_exit, running_metrics};
use crate::auth::Principal;
use crate::lifecycle::Operation;
use crate::record::{AppId, AppRecord, LastOp, StartOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::stats::RawStats;
use crate::stop::StopRequest;
use crate::store::Observation;
use crate::telemetry::Route;

impl Agent {
    /// Starts the app's container and answers with the updated record once the engine says it runs
    /// (or that it exited at once). The work runs in a task of its own, as a stop's does.
    pub(crate) async fn start(
        &self,
        principal: &Principal,
        id: &AppId,
        route: Route,
    ) -> Result<AppRecord, AgentError> {
        let (record, guard) = self
            .admit(principal, id, Operation::Start)
            .await
            .inspect_err(|e| self.refused(Operation::Start, route, principal, id, e))?;
        let task = self.launch_start(principal, record, guard, OpFrom::asked(route, None));
        Agent::answer(Operation::Start, task).await
    }

    /// Checks that the app's container exists and is not running, then starts it in the background
    /// and returns as soon as the start's intent is written; the outcome lands in the record
    /// (`lastStart`, the metrics, the exit).
    pub(crate) async fn start_in_background(
        &self,
        principal: &Principal,
        id: &AppId,
        route: Route,
    ) -> Result<(), AgentError> {
        let (record, state, guard) = self
            .admit_for_background(principal, id, Operation::Start, route)
            .await?;
        let from = OpFrom::asked(route, Some(state));
        self.launch_in_background(id, || self.launch_start(principal, record, guard, from))
            .await;
        Ok(())
    }

    /// Stops the app's container exactly as a stop does, then starts it, under one guard; a stopped
    /// app is just started.
    pub(crate) async fn restart(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
        route: Route,
    ) -> Result<AppRecord, AgentError> {
        let admitted = self
            .admit_asked(principal, id, Operation::Restart, &req)
            .await;
        let (record, guard) =
            admitted.inspect_err(|e| self.refused(Operation::Restart, route, principal, id, e))?;
        let app = record.id.clone();
        let task = self.launch(
            Operation::Restart,
            route,
            principal,
            app,
            guard,
            move |agent, caller, requested_at| async move {
                agent.run_restart(&caller, requested_at, record, req).await
            },
        );
        Agent::answer(Operation::Restart, task).await
    }

    pub(super) fn launch_start(
        &self,
        caller: &Principal,
        record: AppRecord,
        guard: OpGuard,
        from: OpFrom,
    ) -> JoinHandle<Result<AppRecord, AgentError>> {
        let OpFrom {
            known,
            route,
            reason,
        } = from;
        self.launch(
            Operation::Start,
            route,
            caller,
            record.id.clone(),
            guard,
            move |agent, caller, requested_at| async move {
                let intent = Intent::new(&caller, requested_at, reason);
                agent.start_closed(&intent, record, known).await
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
            let intent = Intent {
                restart: true,
                ..Intent::new(caller, requested_at, None)
            };
            match self.run_stop(&intent, record, req, Some(state)).await {
                Ok(record) => record,
                Err(e) => {
                    self.close_failed::<crate::record::StopOutcome>(&id, &e)
                        .await;
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
                            self.close_failed::<StartOutcome>(&id, &missing).await;
                            return Err(self.refreshed(missing).await);
                        }
                        // The stop failed, or the container was started again while it ran:
                        // nothing is started.
                        other => {
                            self.close_failed::<StartOutcome>(&id, &other).await;
                            return Err(self.refreshed(other).await);
                        }
                    }
                }
            }
        } else {
            record
        };
        let intent = Intent::new(caller, requested_at, None);
        self.start_closed(&intent, record, None).await
    }

    /// Runs a start; if it fails after writing its intent, the intent is closed with how it ended.
    async fn start_closed(
        &self,
        intent: &Intent,
        record: AppRecord,
        known: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let id = record.id.clone();
        let outcome = self.run_start(intent, record, known).await;
        if let Err(e) = &outcome {
            self.close_failed::<StartOutcome>(&id, e).await;
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
        match self.settle_seen(record, Some(state)).await {
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
        match self.settle_seen(record, None).await {
            Ok(record) => AgentError::ContainerMissing {
                id,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    async fn run_start(
        &self,
        intent: &Intent,
        record: AppRecord,
        known: Option<ContainerState>,
    ) -> Result<AppRecord, AgentError> {
        let runtime = self.runtime();
        let container = record.container_id().to_owned();
        let (record, state) = match known {
            Some(state) => (record, state),
            None => self.stopped_state(record).await?,
        };
        let record = self.write_start_intent(record, intent).await?;
        // The policy the last stop set to `no`, unless someone has given the container one since.
        let give_back = record
            .restart_policy_set_aside()
            .filter(|_| !state.may_restart_itself())
            .map(str::to_owned);
        let asked = Instant::now();
        match runtime.start(&container).await {
            Ok(()) => {}
            Err(RuntimeError::NotFound(_)) => return Err(self.container_missing(record).await),
            Err(e) => return Err(AgentError::from_runtime(e)),
        }
        let start_call = asked.elapsed();
        // The boot check ([`super::boot`]), and the policy given back beside it.
        let restore = async {
            match &give_back {
                Some(policy) => Some(runtime.set_restart_policy(&container, policy).await),
                None => None,
            }
        };
        let (state, restored) = super::boot::check(runtime, &container, start_call, restore).await;
        let state = match state {
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
            self.sampler().follow(&container, s);
        }
        let outcome = if running {
            StartOutcome::Started
        } else {
            StartOutcome::Exited
        };
        let start = LastOp {
            restored_restart_policy: restored,
            ..intent.last_op().closed(outcome, Utc::now(), error)
        };
        self.record_start_final(record, state, start).await
    }

    /// Writes the start's intent before the engine is touched, keeping the stored figures.
    async fn write_start_intent(
        &self,
        record: AppRecord,
        intent: &Intent,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let intent = intent.last_op();
        self.write_intent(record, now, move |stored| Observation {
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
        .await
    }

    /// The start's final record, of the new run: running, without figures until a reading comes;
    /// or exited at once, with how (`None`: the container is gone, as an auto-removing one may
    /// be).
    async fn record_start_final(
        &self,
        record: AppRecord,
        state: Option<ContainerState>,
        start: LastOp<StartOutcome>,
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
            restart_count: state.as_ref().map(|s| s.restart_count),
            ..Observation::default()
        };
        Ok(self
            .record_final(record, now, move |_| observation.clone())
            .await?)
    }
}
