//! The stop of an app, shared by both routes and by the restart: the intent written before the
//! engine is touched, the final sample, the engine calls, and the final record. Admission and the
//! task it runs in are the operation core's ([`super::operation`]).
//!
//! Every path out of a stop whose intent was written records how it ended.

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::operation::OpGuard;
use super::{Agent, AgentError, AlreadyStopped};
use crate::agent::figures::{final_metrics, last_exit, running_metrics};
use crate::auth::Principal;
use crate::lifecycle::Operation;
use crate::record::{AppId, AppRecord, LastOp, NodeReason, StopOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::stats::RawStats;
use crate::stop::{StopRequest, effective_grace, halt};
use crate::store::{Observation, StoreError};
use crate::telemetry::Route;

/// How much earlier than the stop call an exit may be stamped and still count as caused by it: the
/// engine's times are truncated to milliseconds.
const EXIT_CLOCK_SLACK: chrono::Duration = chrono::Duration::milliseconds(5);

/// Who asked for an operation, when, and why the node did when it did; a restart's stop also
/// records its start as intended, so that an agent dying between the two halves leaves an intent
/// that says the start never came.
#[derive(Debug, Clone)]
pub(super) struct Intent {
    pub by: String,
    pub requested_at: DateTime<Utc>,
    pub restart: bool,
    /// Why the node stops or starts the app (a drain, a shutdown, a boot); `None` for a caller's
    /// own ask.
    pub reason: Option<NodeReason>,
}

impl Intent {
    pub fn new(by: &str, requested_at: DateTime<Utc>, reason: Option<NodeReason>) -> Intent {
        Intent {
            by: by.to_owned(),
            requested_at,
            restart: false,
            reason,
        }
    }

    /// This operation's last-operation entry, under way.
    pub fn last_op<O: crate::record::OpOutcome>(&self) -> LastOp<O> {
        LastOp {
            reason: self.reason,
            ..LastOp::intent(&self.by, self.requested_at)
        }
    }
}

/// Where an operation comes from: the route that asked, the container's state if the asker just
/// inspected it, and why the node stops or starts the app when it does.
#[derive(Debug, Clone)]
pub(super) struct OpFrom {
    pub known: Option<ContainerState>,
    pub route: Route,
    pub reason: Option<NodeReason>,
}

impl OpFrom {
    /// A caller's own operation, through `route`.
    pub fn asked(route: Route, known: Option<ContainerState>) -> OpFrom {
        OpFrom {
            known,
            route,
            reason: None,
        }
    }
}

impl Agent {
    /// Stops the app's container and answers with the updated record. The work runs in a task of its
    /// own: dropping this future (a client that hangs up) does not cancel the stop.
    pub(crate) async fn stop(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
        route: Route,
    ) -> Result<AppRecord, AgentError> {
        let admitted = self.admit_asked(principal, id, Operation::Stop, &req).await;
        let (record, guard) = match (admitted, req.timeout) {
            (Ok(admitted), _) => admitted,
            // An operator may bring the kill of a stop under way forward, and have its outcome.
            (
                Err(AgentError::InProgress {
                    under_way: Operation::Stop,
                    record,
                    ..
                }),
                Some(timeout),
            ) if principal.is_operator() => {
                return self.join_stop(principal, id, record, timeout, route).await;
            }
            (Err(e), _) => {
                self.refused(Operation::Stop, route, principal, id, &e);
                return Err(e);
            }
        };
        let from = OpFrom::asked(route, None);
        let task = self.launch_stop(principal, record, guard, req, from);
        Agent::answer(Operation::Stop, task).await
    }

    /// Joins the stop under way on `id`, killing at `timeout` seconds from now if that is sooner
    /// than it would, and answers with the record once it has ended. A stop whose kill comes sooner
    /// anyway is refused as under way, like any other second operation.
    async fn join_stop(
        &self,
        principal: &Principal,
        id: &AppId,
        record: Box<AppRecord>,
        timeout: u32,
        route: Route,
    ) -> Result<AppRecord, AgentError> {
        let Some(mut ended) = self.hasten_kill(id, record.container_id(), timeout).await else {
            let e = AgentError::InProgress {
                id: id.clone(),
                under_way: Operation::Stop,
                record,
            };
            self.refused(Operation::Stop, route, principal, id, &e);
            return Err(e);
        };
        tracing::info!(app = %id, token = %principal.name, timeout, "stop under way: kill brought forward");
        // Its sender goes with the stop's guard, once the stop's record is written.
        while ended.changed().await.is_ok() {}
        let record = self.record_of(id).await?;
        if !record.online() {
            return Ok(record);
        }
        // The stop failed, or someone started the container again while it ran.
        match record.last_stop.as_ref().and_then(|s| s.error.clone()) {
            Some(error) => Err(AgentError::Engine(format!(
                "the stop under way ended with the container still running: {error}"
            ))),
            None => Err(AgentError::StopOvertaken {
                id: id.clone(),
                record: Box::new(record),
            }),
        }
    }

    /// Checks that the app's container exists and runs, then stops it in the background and returns
    /// as soon as the stop's intent is written (after the final sample, a few milliseconds); the
    /// outcome lands in the record (`lastStop`, the metrics and the exit).
    pub(crate) async fn stop_in_background(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
        route: Route,
    ) -> Result<(), AgentError> {
        self.may_ask_for(principal, &req)
            .inspect_err(|e| self.refused(Operation::Stop, route, principal, id, e))?;
        let (record, state, guard) = self
            .admit_for_background(principal, id, Operation::Stop, route)
            .await?;
        let from = OpFrom::asked(route, Some(state));
        self.launch_in_background(id, || self.launch_stop(principal, record, guard, req, from))
            .await;
        Ok(())
    }

    /// Runs a stop in a task of the agent's tracker.
    pub(super) fn launch_stop(
        &self,
        caller: &Principal,
        record: AppRecord,
        guard: OpGuard,
        req: StopRequest,
        from: OpFrom,
    ) -> JoinHandle<Result<AppRecord, AgentError>> {
        let OpFrom {
            known,
            route,
            reason,
        } = from;
        let app = record.id.clone();
        self.launch(
            Operation::Stop,
            route,
            caller,
            app.clone(),
            guard,
            move |agent, caller, requested_at| async move {
                let intent = Intent::new(&caller, requested_at, reason);
                let outcome = agent.run_stop(&intent, record, req, known).await;
                if let Err(e) = &outcome {
                    agent.close_failed::<StopOutcome>(&app, e).await;
                }
                outcome
            },
        )
    }

    /// The container's state if it runs; otherwise the record is settled and the answer says how the
    /// container came to be stopped. Called with the app's guard held.
    pub(super) async fn running_state(
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
    pub(super) async fn already_stopped(
        &self,
        record: AppRecord,
        state: Option<&ContainerState>,
    ) -> AgentError {
        let id = record.id.clone();
        let how = match state {
            None => AlreadyStopped::Gone,
            Some(_) if record.stopped_by_agent() => AlreadyStopped::ByTheAgent,
            Some(_) => AlreadyStopped::Unnoticed,
        };
        match self.settle_seen(record, state.cloned()).await {
            Ok(record) => AgentError::AlreadyStopped {
                id,
                how,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    pub(super) async fn run_stop(
        &self,
        intent: &Intent,
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
        // The final sample must be taken before the stop: a stopped container has no figures. It
        // is read from the host's files at this moment; where they cannot serve, it is the engine
        // stream's latest reading (at most about a second old) or the engine's stats answer.
        let sampled = self
            .sampler()
            .sample_now(&container, &state, crate::stats::SamplePurpose::Final)
            .await;
        let reading = match sampled {
            Ok(s) if !s.is_empty() => {
                if let Some(read_at) = s.read_at {
                    let age = (Utc::now() - read_at).num_milliseconds() as f64 / 1000.0;
                    self.telemetry().final_sample_age(age);
                }
                Some(s)
            }
            Ok(_) => None,
            Err(RuntimeError::NotFound(_)) => return Err(self.already_stopped(record, None).await),
            Err(RuntimeError::Unavailable(m)) => return Err(AgentError::DockerUnavailable(m)),
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "final sample failed; stopping without one");
                None
            }
        };
        // A stopped app must stay stopped: no restart policy may bring it back, not even when the
        // engine itself restarts. A person may still start it by hand. Docker restarts a container
        // with policy `always` when the daemon starts, so its policy is set aside first. Podman
        // never restarts a container stopped through its API, and its Docker API cannot change a
        // policy: there the policy stays.
        let podman = runtime.engine().await.is_ok_and(|e| e.podman);
        let set_aside = state.may_restart_itself() && !podman;
        if state.may_restart_itself() && podman {
            tracing::info!(app = %record.id, policy = state.restart_policy.as_deref().unwrap_or_default(), "Podman keeps the restart policy of a container it stopped");
        }
        let record = self
            .write_stop_intent(record, &state, reading.as_ref(), intent, set_aside)
            .await?;
        if set_aside {
            // Without that guarantee the stop does not go ahead.
            match runtime.set_restart_policy(&container, "no").await {
                Ok(()) => tracing::info!(
                    app = %record.id,
                    previous = state.restart_policy.as_deref().unwrap_or_default(),
                    "restart policy set to no"
                ),
                Err(RuntimeError::NotFound(_)) => {
                    return Err(self.already_stopped(record, None).await);
                }
                Err(e) => return Err(AgentError::from_runtime(e)),
            }
        }
        let grace = effective_grace(&req, self.inner.limits.default_timeout, &state);
        self.inner.operations.note_kill_deadline(&record.id, grace);
        let halt_started = Utc::now();
        match halt(runtime, &container, &req, grace).await {
            Ok(path) => tracing::debug!(app = %record.id, ?path, grace, "container halted"),
            // It exited between the inspect and the signal: on its own, not by this stop.
            Err(RuntimeError::NotRunning(_)) => {
                let state = match runtime.inspect(&container).await {
                    Ok(s) => Some(s),
                    Err(RuntimeError::NotFound(_)) => None,
                    Err(e) => return Err(AgentError::from_runtime(e)),
                };
                return Err(self.already_stopped(record, state.as_ref()).await);
            }
            // Removed before the engine could act on it: not this stop's doing.
            Err(RuntimeError::NotFound(_)) => return Err(self.already_stopped(record, None).await),
            // Podman's stop fails when the container was started again before it could clean up
            // after the run it stopped: a newer run than that one means the stop was overtaken.
            Err(e @ RuntimeError::Engine(_)) => {
                return Err(match runtime.inspect(&container).await {
                    Ok(now) if now.running && now.started_at > state.started_at => {
                        self.overtaken(record, now).await
                    }
                    _ => AgentError::from_runtime(e),
                });
            }
            Err(e) => return Err(AgentError::from_runtime(e)),
        }
        // An auto-removing container may be gone as soon as it has stopped.
        let final_state = match runtime.inspect(&container).await {
            Ok(s) => Some(s),
            Err(RuntimeError::NotFound(_)) => None,
            Err(e) => return Err(AgentError::from_runtime(e)),
        };
        let now = Utc::now();
        let final_state = final_state.unwrap_or_else(|| ContainerState {
            started_at: state.started_at,
            finished_at: Some(now),
            ..ContainerState::default()
        });
        if final_state.running {
            return Err(self.overtaken(record, final_state).await);
        }
        // The engine answers a stop of an exited container as a success: if it exited before the
        // stop call, it did so on its own while the final sample was taken, and this stop did nothing.
        let exited_before = final_state
            .finished_at
            .is_some_and(|f| f < halt_started - EXIT_CLOCK_SLACK);
        let outcome = if exited_before {
            StopOutcome::AlreadyStopped
        } else {
            StopOutcome::Stopped
        };
        let record = self
            .record_stop_final(record, final_state, reading, outcome, now)
            .await?;
        if exited_before {
            return Err(AgentError::AlreadyStopped {
                id: record.id.clone(),
                how: AlreadyStopped::Unnoticed,
                record: Box::new(record),
            });
        }
        Ok(record)
    }

    /// The container runs again right after the stop: someone (a person, or the engine's own
    /// restart) started it while the stop ran. Nothing failed, so the stop is closed as done, the
    /// record says the container runs, and the restart policy the stop set aside is given back,
    /// since nothing calls for `no` any more. The answer carries the record as it now stands.
    async fn overtaken(&self, record: AppRecord, state: ContainerState) -> AgentError {
        let id = record.id.clone();
        let pending = record
            .last_stop
            .clone()
            .filter(|s| s.outcome == StopOutcome::Stopping);
        let policy = pending
            .as_ref()
            .and_then(|s| s.previous_restart_policy.clone());
        self.give_back_restart_policy(&record, policy.as_deref())
            .await;
        let mut record = match self.settle_seen(record, Some(state)).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Some(pending) = pending {
            match self
                .close_op(&record, pending.requested_at, StopOutcome::Stopped, None)
                .await
            {
                Ok(r) => record = r,
                Err(e) => return e,
            }
        }
        tracing::info!(app = %id, "the container was started again while the stop ran");
        AgentError::StopOvertaken {
            id,
            record: Box::new(record),
        }
    }

    /// Writes the stop's intent, with the final sample, before the engine is touched (and, for a
    /// restart, the start's intent with it).
    async fn write_stop_intent(
        &self,
        record: AppRecord,
        state: &ContainerState,
        reading: Option<&RawStats>,
        intent: &Intent,
        set_aside: bool,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let observation = Observation {
            metrics: running_metrics(state, reading.unwrap_or(&RawStats::default()), now),
            last_exit: None,
            last_stop: Some(LastOp {
                previous_restart_policy: set_aside.then(|| state.restart_policy.clone()).flatten(),
                ..intent.last_op()
            }),
            last_start: intent.restart.then(|| intent.last_op()),
            restart_count: Some(state.restart_count),
            ..Observation::default()
        };
        self.write_intent(record, now, move |_| observation).await
    }

    /// The stop's final record: the container's exit, its last sample, and the stop closed with
    /// `outcome`.
    async fn record_stop_final(
        &self,
        record: AppRecord,
        state: ContainerState,
        reading: Option<RawStats>,
        outcome: StopOutcome,
        now: DateTime<Utc>,
    ) -> Result<AppRecord, StoreError> {
        let exit = last_exit(&state);
        let restart_count = Some(state.restart_count);
        let stop = record.last_stop.clone().map(|s| {
            let error = s.error.clone();
            s.closed(outcome, now, error)
        });
        self.record_final(record, now, move |kept| Observation {
            metrics: final_metrics(&state, reading.as_ref(), kept, now),
            last_exit: exit.clone(),
            last_stop: stop.clone(),
            last_start: None,
            restart_count,
            ..Observation::default()
        })
        .await
    }
}
