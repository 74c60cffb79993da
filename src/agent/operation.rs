//! The operation core shared by stop, start and restart: admission (authorization, then the app's
//! guard), the task an admitted operation runs in, and how its end is counted, logged and followed
//! up. Each operation's engine calls live beside it (`stopping`, `starting`).
//!
//! One guard per app covers all three operations: while one is under way, another is refused with
//! the one under way named, and observations from reads and events do not write over it. Guards of
//! different apps are independent, so apps never wait on each other.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Agent, AgentError, Inner};
use crate::auth::Principal;
use crate::operation::Operation;
use crate::policy::Action;
use crate::record::{AppId, AppRecord};
use crate::runtime::{ContainerState, RuntimeError};
use crate::telemetry::Route;

/// An operation under way on one app.
#[derive(Debug)]
pub(super) struct UnderWay {
    pub op: Operation,
    /// An observation (a read, an engine event, reconciliation) was held back while it ran; the
    /// container is looked at again once it ends.
    pub missed: bool,
    /// When the container is killed if it has not exited: set by a stop once its grace is known,
    /// brought forward by an operator who asks for an earlier kill. The sender goes with the mark,
    /// so its receivers also learn that the operation has ended.
    kill_at: watch::Sender<Option<Instant>>,
}

/// Marks an operation on one app as under way; dropping it ends the mark.
#[derive(Debug)]
pub(super) struct OpGuard {
    agent: std::sync::Arc<Inner>,
    id: AppId,
    /// Whether the mark is still this guard's to end.
    held: bool,
}

impl OpGuard {
    /// Ends the mark; true when an observation was held back meanwhile.
    fn release(mut self) -> bool {
        self.held = false;
        self.agent.remove_guard(&self.id)
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if self.held {
            self.agent.remove_guard(&self.id);
        }
    }
}

impl Inner {
    /// The operations under way, by app; held for a few statements, never across an `.await`.
    pub(super) fn under_way_ops(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, UnderWay>> {
        self.operations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_guard(&self, id: &AppId) -> bool {
        self.under_way_ops().remove(id).is_some_and(|u| u.missed)
    }

    /// Notes that the stop under way on `id` kills its container `grace` seconds from now, so that
    /// a later ask can tell whether its own kill would come earlier.
    pub(super) fn note_kill_deadline(&self, id: &AppId, grace: u32) {
        let at = Instant::now() + Duration::from_secs(grace.into());
        let ops = self.under_way_ops();
        if let Some(u) = ops.get(id) {
            u.kill_at.send_replace(Some(at));
        }
    }

    /// Whether an operation on `id` is under way; if so, and `hold_back` is set, notes that an
    /// observation was held back, so that the container is looked at again when it ends.
    pub(super) fn under_way(&self, id: &AppId, hold_back: bool) -> bool {
        let mut ops = self.under_way_ops();
        match ops.get_mut(id) {
            Some(u) => {
                u.missed |= hold_back;
                true
            }
            None => false,
        }
    }
}

fn outcome_of(op: Operation, result: &Result<AppRecord, AgentError>) -> &'static str {
    match result {
        Ok(record) => AgentError::success_outcome(op, record),
        Err(e) => e.outcome(op),
    }
}

impl Agent {
    /// Whether any operation on `id` is under way.
    pub(super) fn operation_under_way(&self, id: &AppId) -> bool {
        self.inner.under_way(id, false)
    }

    fn begin(&self, id: &AppId, op: Operation, record: &AppRecord) -> Result<OpGuard, AgentError> {
        let mut ops = self.inner.under_way_ops();
        if let Some(u) = ops.get(id) {
            return Err(AgentError::InProgress {
                id: id.clone(),
                under_way: u.op,
                record: Box::new(record.clone()),
            });
        }
        ops.insert(
            id.clone(),
            UnderWay {
                op,
                missed: false,
                kill_at: watch::channel(None).0,
            },
        );
        Ok(OpGuard {
            agent: self.inner.clone(),
            id: id.clone(),
            held: true,
        })
    }

    /// Whether `principal` may ask for `req`: a user token's stop `timeout` is capped
    /// (`[auth] user_max_stop_timeout_secs`), so that a tenant cannot hold an app's guard, and its
    /// own answer, for an hour. Operators may ask for the whole range.
    pub(super) fn may_ask_for(
        &self,
        principal: &Principal,
        req: &crate::stop::StopRequest,
    ) -> Result<(), AgentError> {
        let cap = self.inner.limits.user_max_stop_timeout;
        match req.timeout {
            Some(asked) if asked > cap && !principal.is_operator() => {
                Err(AgentError::TimeoutOverCap { asked, cap })
            }
            _ => Ok(()),
        }
    }

    /// Brings the kill of the stop under way on `id` forward to `timeout` seconds from now, if that
    /// is earlier than its own. `None` when no stop is under way, or its kill comes no later
    /// anyway; else a receiver whose sender goes when the stop has ended.
    pub(super) async fn hasten_kill(
        &self,
        id: &AppId,
        container: &str,
        timeout: u32,
    ) -> Option<watch::Receiver<Option<Instant>>> {
        let mut kill_at = {
            let ops = self.inner.under_way_ops();
            ops.get(id)
                .filter(|u| u.op == Operation::Stop)?
                .kill_at
                .subscribe()
        };
        // A stop knows its deadline once it has looked at the container, a moment after admission.
        let own = loop {
            if let Some(at) = *kill_at.borrow_and_update() {
                break at;
            }
            kill_at.changed().await.ok()?;
        };
        let at = Instant::now() + Duration::from_secs(timeout.into());
        if at >= own {
            return None;
        }
        let sooner = {
            let ops = self.inner.under_way_ops();
            // Unless the stop has ended meanwhile, or another ask brought its kill forward further.
            ops.get(id)
                .filter(|_| kill_at.has_changed().is_ok())
                .is_some_and(|u| {
                    u.kill_at.send_if_modified(|k| match k {
                        Some(current) if *current > at => {
                            *k = Some(at);
                            true
                        }
                        _ => false,
                    })
                })
        };
        if sooner {
            let (agent, app, container, ended) = (
                self.clone(),
                id.clone(),
                container.to_owned(),
                kill_at.clone(),
            );
            self.inner.tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                // Only the stop this was asked of: once it has ended, its sender is gone.
                if ended.has_changed().is_err() {
                    return;
                }
                match agent.runtime().kill(&container, "SIGKILL").await {
                    Ok(()) => {
                        tracing::info!(%app, "killed at the earlier deadline an operator asked for")
                    }
                    Err(RuntimeError::NotRunning(_) | RuntimeError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(%app, error = %e, "could not kill at the earlier deadline")
                    }
                }
            });
        }
        Some(kill_at)
    }

    /// Admits `op` on `id` by `principal`: the caller may change whether the app runs, and no other
    /// operation on it is under way. The record is read again under the guard, since an operation
    /// that just ended may have rewritten it.
    pub(super) async fn admit(
        &self,
        principal: &Principal,
        id: &AppId,
        op: Operation,
    ) -> Result<(AppRecord, OpGuard), AgentError> {
        let record = self
            .authorized(principal, id, Action::ChangeStatus, op.verb())
            .await?;
        let record = self.close_dead_intents(record).await;
        let guard = self.begin(id, op, &record)?;
        let record = self.record_of(id).await?;
        Ok((record, guard))
    }

    /// Admits `op` on `id` for the background (the ~okeanos routes): admission, then the container
    /// must be in the state the operation needs (running for a stop, not running for a start), all
    /// before the 202. Refusals are counted and logged here.
    pub(super) async fn admit_for_background(
        &self,
        principal: &Principal,
        id: &AppId,
        op: Operation,
    ) -> Result<(AppRecord, ContainerState, OpGuard), AgentError> {
        let admitted = async {
            let (record, guard) = self.admit(principal, id, op).await?;
            let (record, state) = match op {
                Operation::Stop => self.running_state(record).await?,
                Operation::Start | Operation::Restart => self.stopped_state(record).await?,
            };
            Ok::<_, AgentError>((record, state, guard))
        };
        let admitted = admitted
            .await
            .inspect_err(|e| self.refused(op, Route::Okeanos, principal, id, e))?;
        tracing::info!(app = %id, token = %principal.name, "{}", op.accepted());
        Ok(admitted)
    }

    /// The answer of an operation's task, once it has ended.
    pub(super) async fn answer(
        op: Operation,
        task: JoinHandle<Result<AppRecord, AgentError>>,
    ) -> Result<AppRecord, AgentError> {
        task.await
            .map_err(|e| AgentError::Internal(format!("the {} task failed: {e}", op.verb())))?
    }

    /// Counts and logs a refusal of `op` that came before its task.
    pub(super) fn refused(
        &self,
        op: Operation,
        route: Route,
        principal: &Principal,
        id: &AppId,
        err: &AgentError,
    ) {
        self.telemetry().ended(op, route, err.outcome(op));
        tracing::info!(app = %id, token = %principal.name, outcome = %err, "{}", op.refused());
    }

    /// Runs an admitted operation in a task of the agent's tracker, so that dropping the request
    /// (a client that hangs up) never cancels it half-way, and shutdown waits for it. `work` is
    /// given the request time, at the store's precision, so that intents can be recognised when
    /// read back.
    pub(super) fn launch<F, W>(
        &self,
        op: Operation,
        route: Route,
        caller: &Principal,
        app: AppId,
        guard: OpGuard,
        work: W,
    ) -> JoinHandle<Result<AppRecord, AgentError>>
    where
        W: FnOnce(Agent, String, DateTime<Utc>) -> F,
        F: Future<Output = Result<AppRecord, AgentError>> + Send + 'static,
    {
        let agent = self.clone();
        let caller = caller.name.clone();
        let requested_at = Utc::now().trunc_subsecs(3);
        let work = work(agent.clone(), caller.clone(), requested_at);
        // The task keeps the request's span, so its log lines carry the request id.
        let span = tracing::Span::current();
        let task = async move {
            let outcome = work.await;
            let elapsed_ms = (Utc::now() - requested_at).num_milliseconds();
            // The record is settled: the operation is counted (before its guard goes, so that a
            // scrape never misses it), the app is free for the next request, and only then is it
            // logged, so that a reader of the log may rely on all three.
            let telemetry = agent.telemetry();
            telemetry.ended(op, route, outcome_of(op, &outcome));
            telemetry.took(op, route, elapsed_ms.max(0) as f64 / 1000.0);
            if guard.release() {
                // Off the answer's path: the engine's own event of this very operation is the
                // usual reason, and it rarely changes anything.
                let again = agent.clone();
                let app = app.clone();
                agent
                    .inner
                    .tasks
                    .spawn(async move { again.look_again(&app).await });
            }
            match &outcome {
                Ok(r) => {
                    tracing::info!(%app, token = %caller, elapsed_ms, online = r.online(), "{}", op.done())
                }
                Err(e) => {
                    tracing::info!(%app, token = %caller, elapsed_ms, outcome = %e, "{}", op.not_done())
                }
            }
            outcome
        };
        self.inner
            .tasks
            .spawn(tracing::Instrument::instrument(task, span))
    }

    /// Looks at the container of `id` again, for an observation held back while an operation ran.
    async fn look_again(&self, id: &AppId) {
        let Ok(record) = self.record_of(id).await else {
            return;
        };
        let outcome = match self.sight(&record).await {
            Ok(sighting) => {
                self.record_sighting(record, sighting, super::Settler::Read)
                    .await
            }
            Err(e) => Err(AgentError::from_runtime(e)),
        };
        if let Err(e) = outcome {
            tracing::warn!(app = %id, error = %e, "could not look at the container again; left for the watcher");
        }
    }
}
