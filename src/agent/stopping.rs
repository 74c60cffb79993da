//! The stop of an app, shared by both routes: admission (authorization, then the app's guard), the
//! intent written before the engine is touched, the engine calls, and the final record.
//!
//! A stop runs in a task of its own, tracked for shutdown, so a client that disconnects does not
//! cancel it half-way. Every path out of a stop whose intent was written records how it ended.

use chrono::{DateTime, SubsecRound, Utc};
use tokio::task::JoinHandle;

use super::{Agent, AgentError, AlreadyStopped, Inner, Settler, Sighting};
use crate::auth::Principal;
use crate::metrics::{RawStats, final_metrics, last_exit, running_metrics};
use crate::policy::Action;
use crate::record::{AppId, AppRecord, LastStop, StopOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::stop::{StopRequest, effective_grace, halt};
use crate::store::{Observation, StoreError};
use crate::telemetry::StopRoute;

/// How much earlier than the stop call an exit may be stamped and still count as caused by it: the
/// engine's times are truncated to milliseconds.
const EXIT_CLOCK_SLACK: chrono::Duration = chrono::Duration::milliseconds(5);

/// Marks a stop of one app as under way; dropping it ends the mark.
#[derive(Debug)]
pub(super) struct StopGuard {
    agent: std::sync::Arc<Inner>,
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

fn log_refusal(principal: &Principal, id: &AppId, err: &AgentError) {
    tracing::info!(app = %id, token = %principal.name, outcome = %err, "stop refused");
}

fn outcome_of<T>(result: &Result<T, AgentError>) -> &'static str {
    match result {
        Ok(_) => crate::telemetry::STOPPED,
        Err(e) => e.stop_outcome(),
    }
}

impl Agent {
    pub(super) fn stop_under_way(&self, id: &AppId) -> bool {
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
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
    /// way. The record is read again under the guard, since a stop that just ended may have
    /// rewritten it.
    async fn admit(
        &self,
        principal: &Principal,
        id: &AppId,
    ) -> Result<(AppRecord, StopGuard), AgentError> {
        self.authorized(principal, id, Action::Stop).await?;
        let guard = self.begin_stop(id)?;
        let record = self.record_of(id).await?;
        Ok((record, guard))
    }

    /// Stops the app's container and answers with the updated record. The work runs in a task of its
    /// own: dropping this future (a client that hangs up) does not cancel the stop.
    pub async fn stop(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        let (record, guard) = self.admit(principal, id).await.inspect_err(|e| {
            log_refusal(principal, id, e);
            self.telemetry().stop_ended(StopRoute::V1, e.stop_outcome());
        })?;
        self.launch(principal, record, guard, req, None, StopRoute::V1)
            .await
            .map_err(|e| AgentError::Internal(format!("the stop task failed: {e}")))?
    }

    /// Checks that the app's container exists and runs, then stops it in the background and returns
    /// at once; the outcome lands in the record (`lastStop`, the metrics and the exit).
    pub async fn stop_in_background(
        &self,
        principal: &Principal,
        id: &AppId,
        req: StopRequest,
    ) -> Result<(), AgentError> {
        let admitted = async {
            let (record, guard) = self.admit(principal, id).await?;
            let (record, state) = self.running_state(record).await?;
            Ok::<_, AgentError>((record, state, guard))
        };
        let (record, state, guard) = admitted.await.inspect_err(|e| {
            log_refusal(principal, id, e);
            self.telemetry()
                .stop_ended(StopRoute::Okeanos, e.stop_outcome());
        })?;
        tracing::info!(app = %id, token = %principal.name, "stop accepted");
        drop(self.launch(
            principal,
            record,
            guard,
            req,
            Some(state),
            StopRoute::Okeanos,
        ));
        Ok(())
    }

    /// Runs a stop in a task of the agent's tracker. `known` is the container's state if the caller
    /// just inspected it.
    fn launch(
        &self,
        caller: &Principal,
        record: AppRecord,
        guard: StopGuard,
        req: StopRequest,
        known: Option<ContainerState>,
        route: StopRoute,
    ) -> JoinHandle<Result<AppRecord, AgentError>> {
        let agent = self.clone();
        let caller = caller.name.clone();
        // The task keeps the request's span, so its log lines carry the request id.
        let span = tracing::Span::current();
        let task = async move {
            let app = record.id.clone();
            // At the store's precision, so that the intent can be recognised when read back.
            let requested_at = Utc::now().trunc_subsecs(3);
            let outcome = agent
                .run_stop(&caller, requested_at, record, req, known)
                .await;
            let elapsed_ms = (Utc::now() - requested_at).num_milliseconds();
            if let Err(e) = &outcome {
                agent.close_intent(&app, e).await;
            }
            // The record is settled: the stop is counted (before its guard goes, so that a scrape
            // never misses it), the app is free for the next request, and only then is the stop
            // logged, so that a reader of the log may rely on all three.
            let telemetry = agent.telemetry();
            telemetry.stop_ended(route, outcome_of(&outcome));
            telemetry.stop_took(route, elapsed_ms.max(0) as f64 / 1000.0);
            drop(guard);
            match &outcome {
                Ok(_) => tracing::info!(%app, token = %caller, elapsed_ms, "stopped"),
                Err(e) => {
                    tracing::info!(%app, token = %caller, elapsed_ms, outcome = %e, "stop not done")
                }
            }
            outcome
        };
        self.inner
            .stops
            .spawn(tracing::Instrument::instrument(task, span))
    }

    /// The container's state if it runs; otherwise the record is settled and the answer says how the
    /// container came to be stopped. Called with the app's guard held.
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
            Some(_) if record.stopped_by_agent() => AlreadyStopped::ByTheAgent,
            Some(_) => AlreadyStopped::Unnoticed,
        };
        let sighting = Sighting {
            at: Utc::now(),
            state: state.cloned(),
        };
        match self.record_sighting(record, sighting, Settler::Stop).await {
            Ok(record) => AgentError::AlreadyStopped {
                id,
                how,
                record: Box::new(record),
            },
            Err(e) => e,
        }
    }

    /// A stop that ended in `err` after writing its intent records how it ended, and the record is
    /// made true: the engine may have acted before the error (a stop that worked, then an inspect
    /// that failed), so the container is looked at again. If it still runs, the restart policy the
    /// stop took away is given back.
    async fn close_intent(&self, id: &AppId, err: &AgentError) {
        let Ok(Some(record)) = self.inner.store.get(id).await else {
            return;
        };
        let Some(pending) = record
            .last_stop
            .clone()
            .filter(|s| s.outcome == StopOutcome::Stopping)
        else {
            return;
        };
        let (outcome, error) = match err {
            AgentError::AlreadyStopped { .. } => (StopOutcome::AlreadyStopped, None),
            other => (StopOutcome::Failed, Some(other.to_string())),
        };
        let record = match self.sight(&record).await {
            Ok(sighting) => {
                if sighting.state.as_ref().is_some_and(|s| s.running) {
                    self.give_back_restart_policy(&record, &pending).await;
                }
                match self
                    .record_sighting(record.clone(), sighting, Settler::Stop)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(app = %id, error = %e, "could not record the container's state");
                        record
                    }
                }
            }
            // The engine is away: the record keeps what it said; the watcher's next pass makes it
            // true once the engine is back.
            Err(_) => record,
        };
        if let Err(e) = self.close_stop(&record, &pending, outcome, error).await {
            tracing::error!(app = %id, error = %e, "could not record how the stop ended");
        }
    }

    async fn run_stop(
        &self,
        caller: &str,
        requested_at: DateTime<Utc>,
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
        // The final sample must be taken before the stop: a stopped container has no stats. The
        // stream's latest reading is at most about a second old; without one, the engine is asked,
        // which waits for its collector.
        let sampled = match self.fresh_reading(&container) {
            Some(fresh) => Ok(fresh),
            None => runtime.stats(&container).await,
        };
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
        let record = self
            .write_intent(record, &state, reading.as_ref(), caller, requested_at)
            .await?;
        if state.may_restart_itself() {
            // A stopped app must stay stopped: no restart policy may bring it back, not even when
            // the engine itself restarts. A person may still start it by hand. Without that
            // guarantee the stop does not go ahead.
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
        let grace = effective_grace(&req, self.inner.default_timeout, &state);
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
            return Err(AgentError::Engine(format!(
                "container {container} was running again right after the stop"
            )));
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
            .record_final(record, final_state, reading, outcome, now)
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

    /// Writes the stop's intent, with the final sample, before the engine is touched: should the
    /// agent die during the stop, its next start finds the intent and makes the record true.
    async fn write_intent(
        &self,
        record: AppRecord,
        state: &ContainerState,
        reading: Option<&RawStats>,
        caller: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let observation = Observation {
            metrics: running_metrics(state, reading.unwrap_or(&RawStats::default()), now),
            last_exit: None,
            last_stop: Some(LastStop {
                outcome: StopOutcome::Stopping,
                by: caller.to_owned(),
                requested_at,
                finished_at: None,
                error: None,
                previous_restart_policy: state
                    .may_restart_itself()
                    .then(|| state.restart_policy.clone())
                    .flatten(),
            }),
        };
        let written = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |_| {
                Some(observation)
            })
            .await?;
        Ok(written.unwrap_or(record))
    }

    async fn record_final(
        &self,
        mut record: AppRecord,
        state: ContainerState,
        reading: Option<RawStats>,
        outcome: StopOutcome,
        now: DateTime<Utc>,
    ) -> Result<AppRecord, StoreError> {
        let exit = last_exit(&state);
        let stop = record.last_stop.clone().map(|s| LastStop {
            outcome,
            finished_at: Some(now),
            ..s
        });
        let observed = {
            let (exit, stop, state, reading) =
                (exit.clone(), stop.clone(), state.clone(), reading.clone());
            move |stored: &AppRecord| {
                Some(Observation {
                    metrics: final_metrics(&state, reading.as_ref(), stored.metrics.as_ref(), now),
                    last_exit: exit,
                    last_stop: stop,
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
            record.last_stop = stop;
            record.updated_at = now;
            record
        }))
    }
}
