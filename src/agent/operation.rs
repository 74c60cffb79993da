//! The operation core shared by stop, start and restart: admission (authorization, then the app's
//! guard), the task an admitted operation runs in, and how its end is counted, logged and followed
//! up. Each operation's engine calls live beside it (`stopping`, `starting`).
//!
//! One guard per app covers all three operations: while one is under way, another is refused with
//! the one under way named, and observations from reads and events do not write over it. Guards of
//! different apps are independent, so apps never wait on each other.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Agent, AgentError, Look, Settler};
use crate::auth::Principal;
use crate::lifecycle::Operation;
use crate::policy::Action;
use crate::record::{AppId, AppRecord, OpOutcome, ResourceMetrics, StartOutcome, StopOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::store::{Observation, StoreError};
use crate::telemetry::Route;

/// An operation under way on one app.
#[derive(Debug)]
pub(super) struct UnderWay {
    pub op: Operation,
    /// An observation (a read, an engine event, reconciliation) was held back while it ran; the
    /// container is looked at again once it ends.
    pub missed: bool,
    /// What the engine reported of the container meanwhile: told apart from the operation's own
    /// doing, and written to the history, once the operation has ended.
    pub reported: Vec<super::watch::Reported>,
    /// When the container is killed if it has not exited: set by a stop once its grace is known,
    /// brought forward by an operator who asks for an earlier kill. The sender goes with the mark,
    /// so its receivers also learn that the operation has ended.
    kill_at: watch::Sender<Option<Instant>>,
    /// Set once the operation's intent is in the store; the sender goes with the mark.
    intent: watch::Sender<bool>,
}

/// The operations under way, by app: a cheap-clone handle on the one guard per app.
#[derive(Debug, Clone, Default)]
pub(super) struct Operations {
    under_way: Arc<Mutex<HashMap<AppId, UnderWay>>>,
    /// What the engine reported during an operation whose guard went without being released
    /// (refused after it was taken): told by the watcher at its next beat.
    orphans: Arc<Mutex<Orphans>>,
}

/// What the engine reported during operations whose guard went without being released, by app.
type Orphans = Vec<(AppId, Vec<super::watch::Reported>)>;

/// Marks an operation on one app as under way; dropping it ends the mark.
#[derive(Debug)]
pub(super) struct OpGuard {
    operations: Operations,
    id: AppId,
    /// Whether the mark is still this guard's to end.
    held: bool,
}

impl OpGuard {
    /// Ends the mark; `Some` with what the engine reported meanwhile when an observation was held
    /// back.
    fn release(mut self) -> Option<Vec<super::watch::Reported>> {
        self.held = false;
        self.operations.remove_guard(&self.id)
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if self.held
            && let Some(reported) = self
                .operations
                .remove_guard(&self.id)
                .filter(|r| !r.is_empty())
        {
            self.operations
                .orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.id.clone(), reported));
        }
    }
}

impl Operations {
    /// The operations under way, by app; held for a few statements, never across an `.await`.
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, UnderWay>> {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations of `kind` under way at this moment.
    pub(super) fn count(&self, kind: Operation) -> usize {
        self.lock().values().filter(|u| u.op == kind).count()
    }

    /// Marks `op` on `id` as under way, unless one is already: then refused, naming it.
    fn begin(&self, id: &AppId, op: Operation, record: &AppRecord) -> Result<OpGuard, AgentError> {
        let mut ops = self.lock();
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
                reported: Vec::new(),
                kill_at: watch::channel(None).0,
                intent: watch::channel(false).0,
            },
        );
        Ok(OpGuard {
            operations: self.clone(),
            id: id.clone(),
            held: true,
        })
    }

    fn remove_guard(&self, id: &AppId) -> Option<Vec<super::watch::Reported>> {
        self.lock()
            .remove(id)
            .filter(|u| u.missed)
            .map(|u| u.reported)
    }

    /// What the engine reported during operations whose guard went without being released.
    pub(super) fn take_orphans(&self) -> Orphans {
        std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The engine's time of the oldest report held for an operation under way, if any.
    pub(super) fn oldest_held(&self) -> Option<DateTime<Utc>> {
        let ops = self.lock();
        let orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        ops.values()
            .flat_map(|u| &u.reported)
            .chain(orphans.iter().flat_map(|(_, r)| r))
            .map(|r| r.at)
            .min()
    }

    /// Keeps what the engine reported of `id`'s container while an operation on it is under way,
    /// for when it ends; false when none is.
    pub(super) fn hold_report(&self, id: &AppId, reported: &super::watch::Reported) -> bool {
        let mut ops = self.lock();
        match ops.get_mut(id) {
            Some(u) => {
                u.missed = true;
                u.reported.push(reported.clone());
                true
            }
            None => false,
        }
    }

    /// Notes that the stop under way on `id` kills its container `grace` seconds from now, so that
    /// a later ask can tell whether its own kill would come earlier.
    pub(super) fn note_kill_deadline(&self, id: &AppId, grace: u32) {
        let at = Instant::now() + Duration::from_secs(grace.into());
        let ops = self.lock();
        if let Some(u) = ops.get(id) {
            u.kill_at.send_replace(Some(at));
        }
    }

    /// Notes that the intent of the operation under way on `id` is in the store.
    fn note_intent_written(&self, id: &AppId) {
        if let Some(u) = self.lock().get(id) {
            u.intent.send_replace(true);
        }
    }

    /// A receiver that turns true once the intent of the operation under way on `id` is written,
    /// and whose sender goes when the operation ends; `None` when none is under way.
    fn intent_written(&self, id: &AppId) -> Option<watch::Receiver<bool>> {
        self.lock().get(id).map(|u| u.intent.subscribe())
    }

    /// Whether an operation on `id` is under way; if so, and `hold_back` is set, notes that an
    /// observation was held back, so that the container is looked at again when it ends.
    pub(super) fn under_way(&self, id: &AppId, hold_back: bool) -> bool {
        let mut ops = self.lock();
        match ops.get_mut(id) {
            Some(u) => {
                u.missed |= hold_back;
                true
            }
            None => false,
        }
    }
}

/// How an operation of this kind that failed after writing its intent is closed.
pub(super) trait ClosedBy: OpOutcome {
    /// The operation this outcome closes.
    const OPERATION: Operation;
    /// The outcome `err` closes it with, and the error its record keeps.
    fn closed_by(err: &AgentError) -> (Self, Option<String>);
}

impl ClosedBy for StopOutcome {
    const OPERATION: Operation = Operation::Stop;
    fn closed_by(err: &AgentError) -> (Self, Option<String>) {
        match err {
            // Found stopped on the way: nothing failed.
            AgentError::AlreadyStopped { .. } => (StopOutcome::AlreadyStopped, None),
            other => (StopOutcome::Failed, Some(other.to_string())),
        }
    }
}

impl ClosedBy for StartOutcome {
    const OPERATION: Operation = Operation::Start;
    fn closed_by(err: &AgentError) -> (Self, Option<String>) {
        let error = match err {
            AgentError::ContainerMissing { .. } => "its container no longer exists".to_owned(),
            other => other.to_string(),
        };
        (StartOutcome::Failed, Some(error))
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
        self.inner.operations.under_way(id, false)
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
            let ops = self.inner.operations.lock();
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
            let ops = self.inner.operations.lock();
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
            self.inner.operation_tasks.spawn(async move {
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
        if op != Operation::Stop {
            self.may_start_on_node(&record)?;
        }
        let record = self.close_dead_intents(record).await;
        let guard = self.inner.operations.begin(id, op, &record)?;
        let record = self.record_of(id).await?;
        Ok((record, guard))
    }

    /// Admits `op` asked for with `req`: the caller may ask for it ([`Agent::may_ask_for`]), then
    /// [`Agent::admit`].
    pub(super) async fn admit_asked(
        &self,
        principal: &Principal,
        id: &AppId,
        op: Operation,
        req: &crate::stop::StopRequest,
    ) -> Result<(AppRecord, OpGuard), AgentError> {
        self.may_ask_for(principal, req)?;
        self.admit(principal, id, op).await
    }

    /// Admits `op` on `id` for the background (the ~okeanos routes): admission, then the container
    /// must be in the state the operation needs (running for a stop, not running for a start), all
    /// before the 202. Refusals are counted and logged here.
    pub(super) async fn admit_for_background(
        &self,
        principal: &Principal,
        id: &AppId,
        op: Operation,
        route: Route,
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
            .inspect_err(|e| self.refused(op, route, principal, id, e))?;
        tracing::info!(app = %id, token = %principal.name, "{}", op.accepted());
        Ok(admitted)
    }

    /// Runs the admitted background operation `launched` starts, and returns once its intent is
    /// in the store (or it has ended first): a read right after the 202 shows it under way.
    pub(super) async fn launch_in_background(
        &self,
        id: &AppId,
        launched: impl FnOnce() -> JoinHandle<Result<AppRecord, AgentError>>,
    ) {
        let written = self.inner.operations.intent_written(id);
        drop(launched());
        if let Some(mut written) = written {
            // An error means the operation ended (its guard went) before writing one.
            let _ = written.wait_for(|w| *w).await;
        }
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
            if let Some(reported) = guard.release() {
                // Off the answer's path: the engine's own event of this very operation is the
                // usual reason, and it rarely changes anything.
                let again = agent.clone();
                let app = app.clone();
                agent
                    .inner
                    .operation_tasks
                    .spawn(async move { again.look_again(&app, reported).await });
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
            .operation_tasks
            .spawn(tracing::Instrument::instrument(task, span))
    }

    /// Looks at the container of `id` again, for an observation held back while an operation ran.
    pub(super) async fn look_again(&self, id: &AppId, reported: Vec<super::watch::Reported>) {
        let Ok(record) = self.record_of(id).await else {
            return;
        };
        let told = super::watch::history_of(&record, &reported);
        let looked = self
            .look_settle_and_tell(record, super::Settler::Read, super::Look::Patient, told)
            .await;
        if let Err(e) = looked {
            tracing::warn!(app = %id, error = %e, "could not look at the container again; left for the watcher");
        }
    }

    /// Writes an operation's intent (what `observed` makes of the stored record) before the engine
    /// is touched: should the agent die during the operation, its next start finds the intent and
    /// makes the record true. A record deleted or re-registered meanwhile is answered as it was.
    pub(super) async fn write_intent(
        &self,
        record: AppRecord,
        now: DateTime<Utc>,
        observed: impl FnOnce(&AppRecord) -> Observation + Send + 'static,
    ) -> Result<AppRecord, AgentError> {
        let written = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                Some(observed(stored))
            })
            .await?;
        self.inner.operations.note_intent_written(&record.id);
        Ok(written.unwrap_or(record))
    }

    /// An operation of kind `O` that ended in `err` after writing its intent records how it ended,
    /// and the record is made true: the engine may have acted before the error (a stop that
    /// worked, then an inspect that failed; a start that started), so the container is looked at
    /// again. If it runs, it gets back the restart policy the last stop set aside. The one close of
    /// a failed stop and a failed start.
    pub(super) async fn close_failed<O: ClosedBy>(&self, id: &AppId, err: &AgentError) {
        let Ok(Some(record)) = self.inner.store.get(id).await else {
            return;
        };
        let Some(requested_at) = O::last_of(&record)
            .filter(|op| op.under_way())
            .map(|op| op.requested_at)
        else {
            return;
        };
        let policy = record.restart_policy_set_aside().map(str::to_owned);
        // The engine away or the store failing: the record keeps what it said; the watcher's next
        // pass makes it true.
        let record = match self
            .look_and_settle(record.clone(), Settler::Op, Look::Patient)
            .await
        {
            Ok(settled) => {
                if settled.running() {
                    self.give_back_restart_policy(&settled.record, policy.as_deref())
                        .await;
                }
                settled.record
            }
            Err(_) => record,
        };
        let (outcome, error) = O::closed_by(err);
        if let Err(e) = self.close_op(&record, requested_at, outcome, error).await {
            tracing::error!(app = %id, error = %e, "could not record how the {} ended", O::OPERATION.verb());
        }
    }

    /// Writes how an operation ended: what `observed` makes of the figures kept (the stored ones).
    /// The one fallback of every operation: a record deleted or re-registered while it ran is
    /// answered with what was observed, made of the answer's own figures.
    pub(super) async fn record_final(
        &self,
        mut record: AppRecord,
        now: DateTime<Utc>,
        observed: impl Fn(Option<&ResourceMetrics>) -> Observation + Send + Sync + Clone + 'static,
    ) -> Result<AppRecord, StoreError> {
        let written = {
            let observed = observed.clone();
            self.inner
                .store
                .observe(&record.id, record.container_id(), now, move |stored| {
                    Some(observed(stored.metrics.as_ref()))
                })
                .await?
        };
        Ok(written.unwrap_or_else(|| {
            observed(record.metrics.as_ref()).apply_to(&mut record);
            record.updated_at = now;
            record
        }))
    }
}
