//! Keeping records true when the world changes behind the agent's back: reconciling every record
//! against the engine (closing the intents of stops and starts the agent died in), and following
//! the engine's event stream (reconnecting by itself).
//!
//! Events say only that something happened; the order the engine reports them in is not
//! guaranteed, so every event is answered by inspecting the container as it is now. Each `die`
//! and `start` is also a fact of the app's history: unless it was the doing of the agent's own
//! operation, it is written as `exited` or `started_by_engine` with the look it caused, keyed by
//! the container and the engine's time, and asked for again since the last one written whenever
//! the stream (re)connects, so an exit while the agent was down is not lost.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::json;

use super::{Agent, AgentError, Look, Settler};
use crate::events::{BY_ENGINE, EventType, NewEvent};
use crate::record::{AppRecord, OpOutcome, StartOutcome, StopOutcome};
use crate::runtime::{ContainerEvent, EventKind};
use crate::store::Observation;

/// How far back the events are asked for again when the stream (re)connects: the engine keeps
/// only its latest ones, and an agent down for longer has its records reconciled all the same.
const REPLAY_AT_MOST: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How often the watcher notes how far it has taken in the engine's events (and tells what
/// operations refused after taking their guard held back).
const BEAT: Duration = Duration::from_secs(5);

/// How far behind the present the noted point stays: an engine's events may come late (Podman's
/// by a second or more), and one asked for again is kept once.
const BEAT_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// How long the look after a SIGKILL's `die` waits for an OOM kill to be marked on the container.
const OOM_AFTER_DIE: Duration = Duration::from_millis(150);

/// How long an `oom` waits for the `die` it explains.
const OOM_BEFORE_DIE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// A `die` or `start` the engine reported of a container, for the history of the apps that name
/// it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reported {
    pub container: String,
    pub kind: EventKind,
    /// The engine's time of it; the time it arrived when the engine gave none.
    pub at: DateTime<Utc>,
    /// Whether the engine gave its time (then it has a key, and is kept once).
    pub timed: bool,
    pub exit_code: Option<i64>,
    /// An `oom` of the container came just before this `die`.
    pub oom: bool,
}

/// `told`, with the exits that the container's state says the OOM killer ended marked so: an
/// engine may send no `oom` event (Podman), or send it after the `die`. Only an exit of the run
/// the state shows ended (its code, and its end within two seconds of the event).
pub(super) fn oom_from_state(
    mut told: Vec<NewEvent>,
    state: Option<&crate::runtime::ContainerState>,
) -> Vec<NewEvent> {
    let Some(s) = state.filter(|s| !s.running && s.oom_killed) else {
        return told;
    };
    for e in told.iter_mut().filter(|e| e.kind == EventType::Exited) {
        let exit = &mut e.details["exit"];
        let same_run = exit["exitCode"].as_i64() == s.exit_code
            && s.finished_at
                .is_some_and(|f| (f - e.at).abs() < chrono::TimeDelta::seconds(2));
        if same_run {
            exit["oomKilled"] = json!(true);
        }
    }
    told
}

/// The history events of what the engine reported of `record`'s container: each `die` an
/// `exited`, each `start` a `started_by_engine`. The store keeps only those that are facts of the
/// app's own history: not those inside one of the agent's own operations, which says it with its
/// own events (`store::not_on_its_own`, the one place that tells them apart).
pub(super) fn history_of(record: &AppRecord, reported: &[Reported]) -> Vec<NewEvent> {
    reported
        .iter()
        .filter_map(|r| {
            let (kind, details) = match r.kind {
                EventKind::Died => {
                    let code = r.exit_code;
                    let signal = code
                        .filter(|c| (129..=128 + 64).contains(c))
                        .map(|c| super::figures::signal_name(c - 128));
                    (
                        EventType::Exited,
                        json!({
                            "containerId": r.container,
                            "exit": {
                                "exitCode": code,
                                "signal": signal,
                                "oomKilled": r.oom,
                                "killed": code == Some(128 + 9),
                            },
                            "restartCount": record.restart_count,
                        }),
                    )
                }
                EventKind::Started => (
                    EventType::StartedByEngine,
                    json!({
                        "containerId": r.container,
                        "restartPolicy": record.last_stop.as_ref().and_then(|s| s.previous_restart_policy.clone()),
                    }),
                ),
                EventKind::Oom => return None,
            };
            let mut event = NewEvent::new(kind, r.at, BY_ENGINE, details);
            event.key = r.timed.then(|| {
                format!(
                    "{}:{}:{}",
                    kind.as_str(),
                    r.container,
                    r.at.timestamp_nanos_opt().unwrap_or_default()
                )
            });
            Some(event)
        })
        .collect()
}

/// Longest wait between two attempts to reach the engine.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often the running containers are listed on an engine whose events come late (Podman), so
/// that a record is true within half a second of a change behind the agent's back.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

impl Agent {
    /// Makes every record true against the engine: at start-up, and whenever the event stream
    /// (re)connects, since events may have been missed. A record whose container cannot be
    /// inspected is left for the next pass; an unreachable engine ends the pass.
    pub async fn reconcile_all(&self) -> Result<usize, AgentError> {
        let mut changed = 0;
        for record in self.inner.store.list().await? {
            if self.operation_under_way(&record.id) {
                continue;
            }
            let before = record.clone();
            match self.reconcile(record).await {
                Ok(after) if after != before => changed += 1,
                Ok(_) => {}
                Err(e @ AgentError::DockerUnavailable(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(app = %before.id, error = %e, "not reconciled; left for the next pass")
                }
            }
        }
        Ok(changed)
    }

    /// Closes, before an operation is admitted on `record`, the intents an agent that died left in
    /// it, as the reconciliation does: the reconciliation leaves alone an app whose operation is
    /// under way, and that operation closes only its own intents, so a start admitted first would
    /// leave a dead stop's intent open for good (and a stop a dead start's). With an operation of
    /// this agent under way, the record is left as it is: that operation was admitted after this
    /// same step.
    pub(super) async fn close_dead_intents(&self, record: AppRecord) -> AppRecord {
        if !(record.stop_pending() || record.start_pending())
            || self.operation_under_way(&record.id)
        {
            return record;
        }
        match self.reconcile(record.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "intents of an agent that died not closed; left for the next pass");
                record
            }
        }
    }

    /// Brings one record in line with its container, and closes the intent of a stop or a start
    /// that never ended (the agent died during it) as interrupted. A container found running gets
    /// back the restart policy a stop set aside: either the stop did not happen, or the start did.
    /// An engine that answers, but not about this container, still lets the intents be closed:
    /// they need nothing from it, and were they left open the app would wait for the next pass,
    /// which comes only when the event stream reconnects.
    async fn reconcile(&self, record: AppRecord) -> Result<AppRecord, AgentError> {
        let pending_stop = record
            .last_stop
            .as_ref()
            .filter(|s| s.under_way())
            .map(|s| s.requested_at);
        let pending_start = record
            .last_start
            .as_ref()
            .filter(|s| s.under_way())
            .map(|s| s.requested_at);
        let record = match self
            .look_and_settle(record.clone(), Settler::Read, Look::Patient)
            .await
        {
            Ok(settled) => settled.record,
            Err(e @ AgentError::Engine(_)) if pending_stop.is_some() || pending_start.is_some() => {
                tracing::warn!(app = %record.id, error = %e, "container not inspected; the intents of an agent that died closed all the same");
                return self
                    .close_intents(record, pending_stop, pending_start)
                    .await;
            }
            Err(e) => return Err(e),
        };
        if pending_stop.is_none() && pending_start.is_none() {
            return Ok(record);
        }
        let running = record.online();
        let what = if pending_start.is_some() {
            "a start"
        } else {
            "a stop"
        };
        tracing::warn!(app = %record.id, online = running, "{what} was under way when the agent last ended; record made true");
        if running {
            let policy = record.restart_policy_set_aside().map(str::to_owned);
            self.give_back_restart_policy(&record, policy.as_deref())
                .await;
        }
        self.close_intents(record, pending_stop, pending_start)
            .await
    }

    /// Closes as interrupted the intents of `record` of a stop and a start asked for at
    /// `pending_stop` and `pending_start`.
    async fn close_intents(
        &self,
        mut record: AppRecord,
        pending_stop: Option<DateTime<Utc>>,
        pending_start: Option<DateTime<Utc>>,
    ) -> Result<AppRecord, AgentError> {
        if let Some(requested_at) = pending_stop {
            record = self
                .close_op(&record, requested_at, StopOutcome::Interrupted, None)
                .await?;
        }
        if let Some(requested_at) = pending_start {
            record = self
                .close_op(&record, requested_at, StartOutcome::Interrupted, None)
                .await?;
        }
        Ok(record)
    }

    /// Gives a container the restart policy a stop took away from it: the stop did not happen, or
    /// a start brought the container back, so nothing calls for `no` any more.
    pub(super) async fn give_back_restart_policy(&self, record: &AppRecord, policy: Option<&str>) {
        let Some(policy) = policy else {
            return;
        };
        if let Err(e) = self
            .runtime()
            .set_restart_policy(record.container_id(), policy)
            .await
        {
            tracing::warn!(app = %record.id, error = %e, "could not restore the restart policy");
        }
    }

    /// Closes the intent of an operation of `record`, asked for at `requested_at`, with
    /// `outcome`: the one close of a stop and a start, whichever way they end. Unless another
    /// operation of that kind has begun since (its intent has another request time) or, for
    /// `interrupted`, an operation is under way.
    pub(super) async fn close_op<O: OpOutcome>(
        &self,
        record: &AppRecord,
        requested_at: DateTime<Utc>,
        outcome: O,
        error: Option<String>,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let operations = self.inner.operations.clone();
        let closed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let op = O::last_of(stored)?.clone();
                let ours = op.under_way() && op.requested_at == requested_at;
                if !ours || (outcome == O::INTERRUPTED && operations.under_way(&stored.id, false)) {
                    return None;
                }
                let mut observation = Observation {
                    metrics: stored.metrics.clone().unwrap_or_default(),
                    ..Observation::default()
                };
                *O::slot(&mut observation.last_stop, &mut observation.last_start) =
                    Some(op.closed(outcome, now, error));
                Some(observation)
            })
            .await?;
        Ok(closed.unwrap_or_else(|| record.clone()))
    }

    /// Follows the engine's events until the agent ends, reconnecting with backoff; each
    /// (re)connection reconciles every record first, then asks for the events since just before
    /// that, so that nothing happening in between is missed.
    /// It runs in the agent's background, until that is shut down.
    pub fn spawn_watcher(&self) {
        self.background().spawn(self.clone().watch());
    }

    async fn watch(self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let now = Utc::now();
            // Since the last engine event written to a history (an exit while the agent was
            // down), within the engine's memory; and at least the last second.
            let written = self.inner.store.engine_events_seen().await.ok().flatten();
            let since = written
                .map_or(now, |t| t.max(now - REPLAY_AT_MOST))
                .min(now - chrono::Duration::seconds(1));
            match self.follow_events(since).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    tracing::warn!("event stream ended; reconnecting");
                }
                Err(AgentError::DockerUnavailable(message)) => {
                    self.engine_failed(&message);
                    tracing::debug!(error = %message, "engine not followed yet");
                }
                Err(e) => tracing::debug!(error = %e, "engine not followed yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow_events(&self, since: DateTime<Utc>) -> Result<(), AgentError> {
        let changed = self.reconcile_all().await?;
        self.engine_answered();
        tracing::info!(changed, "records reconciled with the engine");
        let mut events = self
            .runtime()
            .events(Some(since))
            .await
            .map_err(AgentError::from_runtime)?;
        // Everything since `since` is asked for: should the agent die before its next beat, the
        // next start asks from there again.
        if let Err(e) = self.inner.store.set_engine_events_seen(since).await {
            tracing::warn!(error = %e, "how far the engine's events were taken in is not kept");
        }
        // Podman reads its events from a file it polls, about a second late: beside them, one
        // list of the running containers every SWEEP_EVERY finds what changed before they come.
        let podman = self.runtime().engine().await.is_ok_and(|e| e.podman);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The `oom` of each container not yet followed by its `die`.
        let mut ooms: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Whether events came since the last beat: with none, there is nothing to note.
        let mut received = false;
        loop {
            tokio::select! {
                _ = beat.tick() => self.beat(std::mem::take(&mut received)).await,
                event = events.next() => match event {
                    Some(Ok(event)) if event.kind == EventKind::Oom => {
                        received = true;
                        ooms.retain(|_, t| Utc::now() - *t < OOM_BEFORE_DIE);
                        ooms.insert(event.id.clone(), event.at.unwrap_or_else(Utc::now));
                    }
                    Some(Ok(event)) => {
                        received = true;
                        let oom = event.kind == EventKind::Died && ooms.remove(&event.id).is_some();
                        self.on_event(&event, oom).await
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "event stream failed");
                        break;
                    }
                    None => break,
                },
                _ = sweep.tick(), if podman => self.sweep().await,
            }
        }
        Ok(())
    }

    /// Notes how far the engine's events have been taken in (never past one held for an operation
    /// under way), so that the next (re)connection, after a `kill -9` too, asks for what came
    /// since; and tells what operations refused after taking their guard held back.
    async fn beat(&self, received: bool) {
        for (id, reported) in self.inner.operations.take_orphans() {
            self.look_again(&id, reported).await;
        }
        if !received {
            return;
        }
        let mut upto = Utc::now() - BEAT_MARGIN;
        if let Some(held) = self.inner.operations.oldest_held() {
            upto = upto.min(held);
        }
        if let Err(e) = self.inner.store.set_engine_events_seen(upto).await {
            tracing::warn!(error = %e, "how far the engine's events were taken in is not kept");
        }
    }

    /// Makes true every record whose container runs where the record says offline, or the other
    /// way round, by one list of the running containers.
    async fn sweep(&self) {
        let running = match self.runtime().running().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "running containers not listed");
                return;
            }
        };
        let records = match self.inner.store.list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read records for a sweep");
                return;
            }
        };
        for record in records {
            let runs = running.iter().any(|c| c.concerns(record.container_id()));
            if runs != record.online() && !self.operation_under_way(&record.id) {
                self.observe_container(record, "swept").await;
            }
        }
    }

    /// A container started or died: the records that name it are made true by inspecting it, and
    /// the event is written to their history unless an operation of the agent's caused it (one
    /// under way keeps it, to be told apart once it ends).
    async fn on_event(&self, event: &ContainerEvent, oom: bool) {
        let reported = Reported {
            container: event.id.clone(),
            kind: event.kind,
            at: event.at.unwrap_or_else(Utc::now),
            timed: event.at.is_some(),
            exit_code: event.exit_code,
            oom,
        };
        let records = match self.inner.store.list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read records for an engine event");
                return;
            }
        };
        let concerned: Vec<AppRecord> = records
            .into_iter()
            .filter(|r| event.concerns(r.container_id()))
            .collect();
        // A SIGKILL with no `oom` before it, not the agent's own: Docker may tell the OOM kill just
        // after the `die`, and mark the container's state with it a moment later; the look waits
        // for that moment.
        if event.kind == EventKind::Died
            && event.exit_code == Some(128 + 9)
            && !oom
            && concerned.iter().any(|r| !self.operation_under_way(&r.id))
        {
            tokio::time::sleep(OOM_AFTER_DIE).await;
        }
        for record in concerned {
            let seen = match event.kind {
                EventKind::Started => "an engine event (start)",
                EventKind::Died => "an engine event (die)",
                EventKind::Oom => "an engine event (oom)",
            };
            let told = if self.inner.operations.hold_report(&record.id, &reported) {
                Vec::new()
            } else {
                history_of(&record, std::slice::from_ref(&reported))
            };
            self.observe_and_tell(record, seen, told).await;
        }
    }

    /// Makes `record` say what its container is now, after `seen` told that it changed.
    async fn observe_container(&self, record: AppRecord, seen: &str) {
        self.observe_and_tell(record, seen, Vec::new()).await
    }

    /// [`Agent::observe_container`], writing `told` to the app's history with what it finds.
    async fn observe_and_tell(&self, record: AppRecord, seen: &str, told: Vec<NewEvent>) {
        let id = record.id.clone();
        match self
            .look_settle_and_tell(record, Settler::Read, Look::Patient, told)
            .await
        {
            Ok(settled) => {
                tracing::info!(app = %id, seen, online = settled.record.online(), "container changed")
            }
            Err(e) => tracing::warn!(app = %id, error = %e, seen, "could not follow a change"),
        }
    }
}
