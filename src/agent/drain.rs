//! The node's drain: every app's container stopped at once through the one stop lifecycle, a
//! deadline for the whole after which whatever still runs is killed, starts and restarts refused
//! while the node is draining or drained, the drain kept in the store across restarts of the agent,
//! and its end (with the apps it stopped started again, when asked).
//!
//! The apps a drain stopped are read off their records, not kept apart: a record whose `lastStop`
//! is a drain's stop that ended `stopped`, with no start asked since, is one that nobody touched.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::node::LastShutdown;
use super::stopping::OpFrom;
use super::{Agent, AgentError};
use crate::auth::{Access, Principal};
use crate::lifecycle::Operation;
use crate::record::{AppId, AppRecord, NodeReason, StopOutcome, rfc3339_millis};
use crate::stop::{Signal, StopRequest};
use crate::telemetry::{DrainFigures, Route};

/// The key of the drain in the store's node table.
const STORE_KEY: &str = "drain";
/// The key of the last shutdown's figures in the store's node state.
const LAST_SHUTDOWN_KEY: &str = "last_shutdown";
/// A drain's deadline when the request gives none, and the longest it may ask for, in seconds.
pub const DEFAULT_DEADLINE_SECS: u32 = 3600;
pub const MAX_DEADLINE_SECS: u32 = 86_400;
/// How often a drain looks again at an app whose operation under way keeps it from stopping it.
const BUSY_POLL: Duration = Duration::from_millis(50);

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Its stops are under way.
    Draining,
    /// Every app it could stop is down; starts stay refused until an operator ends it.
    Drained,
    /// An operator ended it: starts are allowed again.
    Ended,
}

impl DrainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Draining => "draining",
            DrainState::Drained => "drained",
            DrainState::Ended => "ended",
        }
    }
}

/// An app a drain could not stop, or could not start again at its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainFailure {
    pub app_id: String,
    pub error: String,
}

/// What a drain did to the node's apps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainApps {
    /// Apps whose container the drain stopped.
    pub stopped: usize,
    /// Apps whose container was not running (or no longer existed) when the drain came to it.
    pub already_stopped: usize,
    /// Of the stopped, those killed at the drain's deadline, whatever their grace.
    pub killed_at_deadline: usize,
    /// Apps the drain could not stop, with why.
    pub failed: Vec<DrainFailure>,
    /// Once an operator ended the drain with `start=true`: the apps started again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_again: Option<usize>,
    /// The apps that could not be started again, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_failed: Vec<DrainFailure>,
}

/// A drain, as `POST /v1/node/drain` answers it and `GET /v1/node` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSummary {
    pub state: DrainState,
    /// `drain` when an operator asked for it, `node-shutdown` when the node's shutdown did.
    pub reason: NodeReason,
    /// The token name that asked for it.
    pub by: String,
    #[serde(with = "rfc3339_millis")]
    pub started_at: DateTime<Utc>,
    /// When every stop had ended; null while draining.
    #[serde(with = "rfc3339_millis::option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from `startedAt` after which every container still running is killed.
    pub deadline: u32,
    pub apps: DrainApps,
    /// The token name that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    #[serde(
        with = "rfc3339_millis::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ended_at: Option<DateTime<Utc>>,
}

/// What a drain was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRequest {
    /// Each app's stop: `timeout` and `signal`, as for a stop.
    pub stop: StopRequest,
    /// Seconds after which every container still running is killed.
    pub deadline: u32,
}

impl Default for DrainRequest {
    fn default() -> Self {
        DrainRequest {
            stop: StopRequest::default(),
            deadline: DEFAULT_DEADLINE_SECS,
        }
    }
}

/// The drain as the store keeps it: its summary, and what its stops were asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    summary: DrainSummary,
    /// The start of the first of the drains that followed each other without an end: the apps
    /// stopped since then are the ones an end with `start=true` brings back.
    since: DateTime<Utc>,
    timeout: Option<u32>,
    signal: Option<String>,
    /// A shutdown's drain whose shutdown was cancelled: it lasts until an operator ends it.
    #[serde(default)]
    cancelled: bool,
}

impl Kept {
    fn request(&self) -> DrainRequest {
        DrainRequest {
            stop: StopRequest {
                timeout: self.timeout,
                signal: self.signal.as_deref().and_then(|s| Signal::parse(s).ok()),
            },
            deadline: self.summary.deadline,
        }
    }
}

/// The node's drain: a handle the agent's state holds.
#[derive(Debug)]
pub(super) struct NodeDrain {
    kept: Mutex<Option<Kept>>,
    /// Bumped at every change of the drain, for those who wait for it.
    changed: watch::Sender<u64>,
    /// Cancels the drain under way (an operator ended it).
    cancel: Mutex<CancellationToken>,
    /// One change of the drain at a time (a drain's begin, its end).
    turn: tokio::sync::Mutex<()>,
    /// The start of a node shutdown's drain that this start of the agent ended: the apps it
    /// stopped are started again once the records are reconciled.
    resume: Mutex<Option<DateTime<Utc>>>,
}

impl Default for NodeDrain {
    fn default() -> Self {
        NodeDrain {
            kept: Mutex::new(None),
            changed: watch::channel(0).0,
            cancel: Mutex::new(CancellationToken::new()),
            turn: tokio::sync::Mutex::new(()),
            resume: Mutex::new(None),
        }
    }
}

impl NodeDrain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn summary(&self) -> Option<DrainSummary> {
        self.lock().as_ref().map(|k| k.summary.clone())
    }

    fn state(&self) -> Option<DrainState> {
        self.lock().as_ref().map(|k| k.summary.state)
    }

    /// Changes the drain in memory with `f`, and tells those who wait.
    fn update(&self, f: impl FnOnce(&mut Kept)) -> Option<Kept> {
        let kept = {
            let mut guard = self.lock();
            guard.as_mut().map(|k| {
                f(k);
                k.clone()
            })
        };
        self.changed.send_modify(|n| *n += 1);
        kept
    }
}

/// How one app's part of a drain ended.
enum AppDrained {
    Stopped {
        killed_at_deadline: bool,
    },
    AlreadyStopped,
    Failed(String),
    /// Deleted meanwhile, or the drain was ended before it came to it.
    Skipped,
}

impl Agent {
    /// Takes up the drain kept in the store, and the last shutdown's figures: called once at
    /// start, before the agent serves, so that a drained node refuses starts from its first
    /// request. A drain that was under way when the agent stopped goes on.
    pub async fn take_up_drain(&self) -> Result<(), crate::store::StoreError> {
        if let Some(last) = self
            .read_kept::<LastShutdown>(LAST_SHUTDOWN_KEY, "the last shutdown's figures")
            .await?
        {
            self.set_shutdown(|r| r.last = Some(last));
        }
        let Some(mut kept) = self
            .read_kept::<Kept>(STORE_KEY, "the drain (the node is not drained)")
            .await?
        else {
            return Ok(());
        };
        let state = kept.summary.state;
        tracing::info!(state = state.as_str(), reason = kept.summary.reason.as_str(), by = %kept.summary.by, started_at = %kept.summary.started_at, "the node's drain, as kept");
        // A shutdown's drain ends by itself at the next start; its apps come back once the
        // records are reconciled (`resume_after_shutdown`). A cancelled shutdown's drain lasts.
        if kept.summary.reason == NodeReason::NodeShutdown
            && state != DrainState::Ended
            && !kept.cancelled
        {
            kept.summary.state = DrainState::Ended;
            kept.summary.ended_by = Some(BOOT.to_owned());
            kept.summary.ended_at = Some(Utc::now().trunc_subsecs(3));
            kept.summary
                .finished_at
                .get_or_insert(kept.summary.started_at);
            self.keep_drain(&kept).await?;
            *self
                .inner
                .drain
                .resume
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(kept.since);
            tracing::info!(
                "the node's shutdown drained it: the drain ends, and the apps it stopped are started again once the records are reconciled"
            );
            *self.inner.drain.lock() = Some(kept);
            return Ok(());
        }
        *self.inner.drain.lock() = Some(kept);
        if state == DrainState::Draining {
            tracing::info!("the drain was under way when the agent stopped: it goes on");
            self.spawn_drain_pass();
        }
        Ok(())
    }

    /// The node's drain, if it was ever drained.
    pub fn drain_summary(&self) -> Option<DrainSummary> {
        self.inner.drain.summary()
    }

    /// The drain's figures for `/metrics`.
    pub fn drain_figures(&self) -> DrainFigures {
        match self.inner.drain.summary() {
            None => DrainFigures::default(),
            Some(s) => DrainFigures {
                state: s.state.as_str(),
                stopped: s.apps.stopped,
                already_stopped: s.apps.already_stopped,
                killed_at_deadline: s.apps.killed_at_deadline,
                failed: s.apps.failed.len(),
                duration_secs: s
                    .finished_at
                    .map(|f| (f - s.started_at).num_milliseconds().max(0) as f64 / 1000.0),
            },
        }
    }

    /// Refuses the start or restart of `record` while the node is draining or drained.
    pub(super) fn may_start_on_node(&self, record: &AppRecord) -> Result<(), AgentError> {
        match self.inner.drain.state() {
            Some(state @ (DrainState::Draining | DrainState::Drained)) => {
                Err(AgentError::NodeDraining {
                    id: record.id.clone(),
                    state: state.as_str(),
                    record: Box::new(record.clone()),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether `principal` may drain the node, or end its drain: operators only.
    pub fn may_drain(&self, principal: &Principal) -> Result<(), AgentError> {
        if principal.is_operator() {
            Ok(())
        } else {
            Err(AgentError::Forbidden(format!(
                "token {:?} may not drain the node or end its drain; only operators may",
                principal.name
            )))
        }
    }

    /// Drains the node: marks it draining (durably, before anything is stopped) and stops every
    /// app's container at once, each through the one stop lifecycle. A drain under way is joined.
    /// With `wait`, answers once the drain has finished; the flag says whether it has.
    pub async fn drain(
        &self,
        principal: &Principal,
        req: DrainRequest,
        reason: NodeReason,
        wait: bool,
    ) -> Result<(DrainSummary, bool), AgentError> {
        self.may_drain(principal)?;
        let mut changed = self.inner.drain.changed.subscribe();
        {
            let _turn = self.inner.drain.turn.lock().await;
            let previous = self.inner.drain.lock().clone();
            match previous.as_ref().map(|k| k.summary.state) {
                Some(DrainState::Draining) => {
                    tracing::info!(token = %principal.name, "drain asked while one is under way: joined");
                }
                state => {
                    let now = Utc::now().trunc_subsecs(3);
                    // A drained node drained again: the apps the earlier drain stopped are still
                    // the ones its end brings back, and an operator's drain stays the operator's
                    // (a shutdown does not end it at the next start).
                    let (since, reason) = match (state, previous) {
                        (Some(DrainState::Drained), Some(k)) => {
                            let reason = match k.summary.reason {
                                NodeReason::Drain => NodeReason::Drain,
                                _ => reason,
                            };
                            (k.since, reason)
                        }
                        _ => (now, reason),
                    };
                    let kept = Kept {
                        summary: DrainSummary {
                            state: DrainState::Draining,
                            reason,
                            by: principal.name.clone(),
                            started_at: now,
                            finished_at: None,
                            deadline: req.deadline,
                            apps: DrainApps::default(),
                            ended_by: None,
                            ended_at: None,
                        },
                        since,
                        timeout: req.stop.timeout,
                        signal: req.stop.signal.map(|s| s.name().to_owned()),
                        cancelled: false,
                    };
                    self.keep_drain(&kept).await?;
                    *self.inner.drain.lock() = Some(kept);
                    *self
                        .inner
                        .drain
                        .cancel
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = CancellationToken::new();
                    self.inner.drain.changed.send_modify(|n| *n += 1);
                    tracing::info!(
                        token = %principal.name,
                        reason = reason.as_str(),
                        deadline_secs = req.deadline,
                        timeout = ?req.stop.timeout,
                        signal = ?req.stop.signal.map(Signal::name),
                        "drain begun: every app is stopped, and starts are refused until the drain is ended"
                    );
                    self.spawn_drain_pass();
                }
            }
        }
        if wait {
            while self.inner.drain.state() == Some(DrainState::Draining) {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        }
        let summary = self
            .drain_summary()
            .ok_or_else(|| AgentError::Internal("the drain vanished".to_owned()))?;
        let done = summary.state != DrainState::Draining;
        Ok((summary, done))
    }

    /// Ends the drain: starts are allowed again; with `start`, the apps the drain stopped and that
    /// nobody touched since are started again. A drain under way is cancelled first: the stops it
    /// began finish, the ones it had not begun never will, and nothing is killed at its deadline.
    pub async fn end_drain(
        &self,
        principal: &Principal,
        start: bool,
    ) -> Result<DrainSummary, AgentError> {
        self.may_drain(principal)?;
        let _turn = self.inner.drain.turn.lock().await;
        let mut changed = self.inner.drain.changed.subscribe();
        let Some(kept) = self.inner.drain.lock().clone() else {
            return Err(AgentError::NotDraining);
        };
        match kept.summary.state {
            DrainState::Ended => return Ok(kept.summary),
            DrainState::Draining => {
                self.inner
                    .drain
                    .cancel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .cancel();
                while self.inner.drain.state() == Some(DrainState::Draining) {
                    if changed.changed().await.is_err() {
                        break;
                    }
                }
            }
            DrainState::Drained => {}
        }
        let now = Utc::now().trunc_subsecs(3);
        let kept = self
            .inner
            .drain
            .update(|k| {
                k.summary.state = DrainState::Ended;
                k.summary.ended_by = Some(principal.name.clone());
                k.summary.ended_at = Some(now);
            })
            .ok_or_else(|| AgentError::Internal("the drain vanished".to_owned()))?;
        self.keep_drain(&kept).await?;
        tracing::info!(token = %principal.name, start, "drain ended: starts are allowed again");
        if !start {
            return Ok(kept.summary);
        }
        let (started, failed) = self.start_drained(principal, kept.since, None).await?;
        tracing::info!(
            started,
            failed = failed.len(),
            "the apps the drain stopped were started again"
        );
        let kept = self
            .inner
            .drain
            .update(|k| {
                k.summary.apps.started_again = Some(started);
                k.summary.apps.start_failed = failed;
            })
            .ok_or_else(|| AgentError::Internal("the drain vanished".to_owned()))?;
        self.keep_drain(&kept).await?;
        Ok(kept.summary)
    }

    /// Starts again the apps stopped by a drain since `since` that nobody touched after: their
    /// `lastStop` is still that stop, no start was asked since, and the container is not running.
    async fn start_drained(
        &self,
        principal: &Principal,
        since: DateTime<Utc>,
        reason: Option<NodeReason>,
    ) -> Result<(usize, Vec<DrainFailure>), AgentError> {
        let untouched = |r: &AppRecord| {
            r.last_stop.as_ref().is_some_and(|s| {
                matches!(s.reason, Some(NodeReason::Drain | NodeReason::NodeShutdown))
                    && s.outcome == StopOutcome::Stopped
                    && s.requested_at >= since
                    && r.last_start
                        .as_ref()
                        .is_none_or(|st| st.requested_at < s.requested_at)
            }) && !r.online()
        };
        let chosen: Vec<AppId> = self
            .inner
            .store
            .list()
            .await?
            .into_iter()
            .filter(untouched)
            .map(|r| r.id)
            .collect();
        let starts = chosen.into_iter().map(|id| async move {
            let started = async {
                let (record, guard) = self.admit(principal, &id, Operation::Start).await?;
                let from = OpFrom {
                    reason,
                    ..OpFrom::asked(Route::Node, None)
                };
                let task = self.launch_start(principal, record, guard, from);
                Agent::answer(Operation::Start, task).await
            }
            .await;
            (id, started)
        });
        let mut started = 0;
        let mut failed = Vec::new();
        for (id, outcome) in futures_util::future::join_all(starts).await {
            match outcome {
                Ok(_) => started += 1,
                Err(e) => failed.push(DrainFailure {
                    app_id: id.to_string(),
                    error: e.to_string(),
                }),
            }
        }
        Ok((started, failed))
    }

    /// The document kept under `key` in the store's node state; `None` when there is none, or
    /// when it cannot be read (logged, `what` naming it).
    async fn read_kept<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        what: &str,
    ) -> Result<Option<T>, crate::store::StoreError> {
        let Some(text) = self.inner.store.node_state(key).await? else {
            return Ok(None);
        };
        match serde_json::from_str(&text) {
            Ok(kept) => Ok(Some(kept)),
            Err(e) => {
                tracing::error!(error = %e, "{what}: kept in the store, but cannot be read");
                Ok(None)
            }
        }
    }

    /// Keeps `value` under `key` in the store's node state, durably.
    async fn keep<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), crate::store::StoreError> {
        // Structs of strings, numbers and times: their JSON cannot fail.
        let text = serde_json::to_string(value).unwrap_or_default();
        self.inner.store.set_node_state(key, text).await
    }

    /// Keeps the drain in the store, durably.
    async fn keep_drain(&self, kept: &Kept) -> Result<(), crate::store::StoreError> {
        self.keep(STORE_KEY, kept).await
    }

    /// Runs the drain under way in the background: it ends with the agent (a drain asked before
    /// goes on at the next start), or when an operator ends it.
    fn spawn_drain_pass(&self) {
        let cancel = self
            .inner
            .drain
            .cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.background().spawn(self.clone().drain_pass(cancel));
    }

    /// Stops every app at once, kills what still runs at the deadline, and records the outcome.
    async fn drain_pass(self, cancel: CancellationToken) {
        let Some(kept) = self.inner.drain.lock().clone() else {
            return;
        };
        let summary = &kept.summary;
        let principal = Principal {
            name: summary.by.clone(),
            access: Access::Operator,
        };
        let left =
            summary.started_at + chrono::Duration::seconds(summary.deadline.into()) - Utc::now();
        let deadline = Instant::now() + left.to_std().unwrap_or_default();
        let records = match self.inner.store.list().await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "the drain cannot list the apps; it goes on at the next start");
                return;
            }
        };
        let req = kept.request();
        let reason = summary.reason;
        let stops = records.into_iter().map(|r| {
            let (agent, principal, cancel) = (self.clone(), principal.clone(), cancel.clone());
            async move {
                let outcome = agent
                    .drain_one(&principal, &r.id, req.stop, reason, deadline, &cancel)
                    .await;
                agent.count_drained(&r.id, &outcome);
                outcome
            }
        });
        let all = futures_util::future::join_all(stops);
        tokio::pin!(all);
        let killed = tokio::select! {
            _ = &mut all => 0,
            () = tokio::time::sleep_until(deadline), if !cancel.is_cancelled() => {
                let killed = self.kill_at_deadline().await;
                all.await;
                killed
            }
            () = cancel.cancelled() => {
                all.await;
                0
            }
        };
        let now = Utc::now().trunc_subsecs(3);
        let Some(kept) = self.inner.drain.update(|k| {
            k.summary.apps.killed_at_deadline += killed;
            k.summary.state = DrainState::Drained;
            k.summary.finished_at = Some(now);
        }) else {
            return;
        };
        if let Err(e) = self.keep_drain(&kept).await {
            tracing::error!(error = %e, "could not keep the drain's end; it is taken up again at the next start");
        }
        let s = &kept.summary;
        tracing::info!(
            reason = s.reason.as_str(),
            took_ms = (now - s.started_at).num_milliseconds(),
            stopped = s.apps.stopped,
            already_stopped = s.apps.already_stopped,
            killed_at_deadline = s.apps.killed_at_deadline,
            failed = s.apps.failed.len(),
            "node drained"
        );
    }

    /// Counts how one app's part of the drain ended, in the summary as it goes.
    fn count_drained(&self, id: &AppId, outcome: &AppDrained) {
        self.inner.drain.update(|k| {
            let apps = &mut k.summary.apps;
            match outcome {
                AppDrained::Stopped { killed_at_deadline } => {
                    apps.stopped += 1;
                    apps.killed_at_deadline += usize::from(*killed_at_deadline);
                }
                AppDrained::AlreadyStopped => apps.already_stopped += 1,
                AppDrained::Failed(error) => apps.failed.push(DrainFailure {
                    app_id: id.to_string(),
                    error: error.clone(),
                }),
                AppDrained::Skipped => {}
            }
        });
    }

    /// Stops one app for the drain: waits for an operation under way on it to end first, and, once
    /// the deadline has passed, kills at once.
    async fn drain_one(
        &self,
        principal: &Principal,
        id: &AppId,
        stop: StopRequest,
        reason: NodeReason,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> AppDrained {
        loop {
            if cancel.is_cancelled() {
                return AppDrained::Skipped;
            }
            let late = Instant::now() >= deadline;
            let stop = if late {
                StopRequest {
                    timeout: Some(0),
                    ..stop
                }
            } else {
                stop
            };
            match self.admit(principal, id, Operation::Stop).await {
                Ok((record, guard)) => {
                    let from = OpFrom {
                        known: None,
                        route: Route::Node,
                        reason: Some(reason),
                    };
                    let task = self.launch_stop(principal, record, guard, stop, from);
                    return match Agent::answer(Operation::Stop, task).await {
                        Ok(_) => AppDrained::Stopped {
                            killed_at_deadline: late,
                        },
                        Err(AgentError::AlreadyStopped { .. }) => AppDrained::AlreadyStopped,
                        Err(e) => AppDrained::Failed(e.to_string()),
                    };
                }
                // Another operation holds the app: once it ends, the drain looks again (a stop
                // under way is killed at the deadline like the drain's own).
                Err(AgentError::InProgress { .. }) => {
                    tokio::select! {
                        () = tokio::time::sleep(BUSY_POLL) => {}
                        () = cancel.cancelled() => return AppDrained::Skipped,
                    }
                }
                Err(AgentError::NotFound(_)) => return AppDrained::Skipped,
                Err(e) => return AppDrained::Failed(e.to_string()),
            }
        }
    }

    /// Brings the kill of every stop under way forward to now; the count of those it killed.
    async fn kill_at_deadline(&self) -> usize {
        let stopping: Vec<AppId> = self
            .inner
            .operations
            .lock()
            .iter()
            .filter(|(_, u)| u.op == Operation::Stop)
            .map(|(id, _)| id.clone())
            .collect();
        tracing::warn!(
            apps = stopping.len(),
            "the drain's deadline has passed: every container still running is killed"
        );
        let mut killed = 0;
        for id in stopping {
            let Ok(record) = self.record_of(&id).await else {
                continue;
            };
            if self
                .hasten_kill(&id, record.container_id(), 0)
                .await
                .is_some()
            {
                killed += 1;
            }
        }
        killed
    }
}

/// The name the node's own shutdown and boot act under, in `lastStop.by` and `lastStart.by`.
const SHUTDOWN: &str = "node-shutdown";
const BOOT: &str = "node-boot";

impl Agent {
    /// The node is shutting down: drains it with `grace` seconds as the deadline (an operator's
    /// drain under way is joined), then gives the final records up to `report` to reach the
    /// control plane. Returns how it went; the caller releases the lock after.
    pub async fn shutdown_drain(&self, grace: u32, report: Duration) -> LastShutdown {
        let began = Utc::now();
        let principal = Principal {
            name: SHUTDOWN.to_owned(),
            access: Access::Operator,
        };
        let req = DrainRequest {
            stop: StopRequest::default(),
            deadline: grace.max(1),
        };
        let summary = match self
            .drain(&principal, req, NodeReason::NodeShutdown, true)
            .await
        {
            Ok((summary, _)) => Some(summary),
            Err(e) => {
                tracing::error!(error = %e, "the node's shutdown could not drain it");
                None
            }
        };
        let drained = Utc::now();
        let reported = Instant::now();
        let until = reported + report;
        let reporting = self.reporting();
        while reporting && self.inner.store.outbox().pending > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unreported = if reporting {
            self.inner.store.outbox().pending
        } else {
            0
        };
        let last = LastShutdown {
            began_at: began,
            drain_secs: (drained - began).num_milliseconds().max(0) as f64 / 1000.0,
            report_secs: reported.elapsed().as_secs_f64(),
            unreported,
            stopped: summary.as_ref().map_or(0, |s| s.apps.stopped),
            killed_at_deadline: summary.as_ref().map_or(0, |s| s.apps.killed_at_deadline),
        };
        tracing::info!(
            drain_secs = last.drain_secs,
            report_secs = last.report_secs,
            stopped = last.stopped,
            killed_at_deadline = last.killed_at_deadline,
            unreported,
            "the node's shutdown drained it; the lock goes"
        );
        self.set_shutdown(|r| r.last = Some(last.clone()));
        // Kept before the lock goes, so that the boot after the power-off still shows them.
        if let Err(e) = self.keep(LAST_SHUTDOWN_KEY, &last).await {
            tracing::error!(error = %e, "could not keep the shutdown's figures");
        }
        last
    }

    /// The shutdown was cancelled: its drain lasts until an operator ends it.
    pub async fn shutdown_cancelled(&self) {
        let kept = self.inner.drain.update(|k| {
            if k.summary.reason == NodeReason::NodeShutdown {
                k.cancelled = true;
            }
        });
        if let Some(kept) = kept {
            if let Err(e) = self.keep_drain(&kept).await {
                tracing::error!(error = %e, "could not keep that the shutdown was cancelled");
            }
        }
        tracing::warn!(
            "the node's shutdown was cancelled: the node stays drained until an operator ends the drain (DELETE /v1/node/drain?start=true)"
        );
    }

    /// Whether this start of the agent ended a shutdown's drain whose apps are to come back.
    pub fn resume_pending(&self) -> bool {
        self.inner
            .drain
            .resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Starts again the apps the node's shutdown stopped, once the records are reconciled with
    /// the engine (a container its restart policy already started is recorded, not started twice),
    /// each recording `lastStart.reason: "node-boot"`.
    pub async fn resume_after_shutdown(&self) {
        let since = self
            .inner
            .drain
            .resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(since) = since else {
            return;
        };
        if let Err(e) = self.reconcile_all().await {
            tracing::warn!(error = %e, "records not reconciled before the resume; the start of each app looks at its container");
        }
        let principal = Principal {
            name: BOOT.to_owned(),
            access: Access::Operator,
        };
        match self
            .start_drained(&principal, since, Some(NodeReason::NodeBoot))
            .await
        {
            Ok((started, failed)) => {
                for f in &failed {
                    tracing::warn!(app = %f.app_id, error = %f.error, "not started again at boot");
                }
                tracing::info!(
                    started,
                    failed = failed.len(),
                    "the apps the node's shutdown stopped were started again"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "the apps the node's shutdown stopped could not be listed")
            }
        }
    }

    /// Whether reports go to a control plane.
    fn reporting(&self) -> bool {
        self.telemetry()
            .report_status(&self.inner.store.outbox())
            .enabled
    }
}
