//! Keeping records true when the world changes behind the agent's back: reconciling every record
//! against the engine (closing the intents of stops and starts the agent died in), and following
//! the engine's event stream (reconnecting by itself).
//!
//! Events say only that something happened; the order the engine reports them in is not
//! guaranteed, so every event is answered by inspecting the container as it is now.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::{Agent, AgentError, Settler};
use crate::record::{AppRecord, LastStop, StartOutcome, StopOutcome};
use crate::runtime::{ContainerEvent, RuntimeError};
use crate::store::Observation;

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
            .clone()
            .filter(|s| s.outcome == StopOutcome::Stopping);
        let pending_start = record.start_pending();
        let sighting = match self.sight(&record).await {
            Ok(sighting) => sighting,
            Err(e @ RuntimeError::Unavailable(_)) => return Err(AgentError::from_runtime(e)),
            Err(e) if pending_stop.is_some() || pending_start => {
                tracing::warn!(app = %record.id, error = %e, "container not inspected; the intents of an agent that died closed all the same");
                return self
                    .close_intents(record, pending_stop, pending_start)
                    .await;
            }
            Err(e) => return Err(AgentError::from_runtime(e)),
        };
        let record = self
            .record_sighting(record, sighting, Settler::Read)
            .await?;
        if pending_stop.is_none() && !pending_start {
            return Ok(record);
        }
        let running = record.online();
        let what = if pending_start { "a start" } else { "a stop" };
        tracing::warn!(app = %record.id, online = running, "{what} was under way when the agent last ended; record made true");
        if running {
            let policy = record.restart_policy_set_aside().map(str::to_owned);
            self.give_back_restart_policy(&record, policy.as_deref())
                .await;
        }
        self.close_intents(record, pending_stop, pending_start)
            .await
    }

    /// Closes the stop intent `pending_stop` and, if `pending_start`, the start intent of
    /// `record` as interrupted.
    async fn close_intents(
        &self,
        mut record: AppRecord,
        pending_stop: Option<LastStop>,
        pending_start: bool,
    ) -> Result<AppRecord, AgentError> {
        if let Some(pending) = pending_stop {
            record = self
                .close_stop(&record, &pending, StopOutcome::Interrupted, None)
                .await?;
        }
        if pending_start {
            record = self
                .close_start(&record, StartOutcome::Interrupted, None)
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

    /// Closes the stop intent `pending` of `record` with `outcome`, unless another stop has begun
    /// since (its intent has another request time) or one is under way.
    pub(super) async fn close_stop(
        &self,
        record: &AppRecord,
        pending: &LastStop,
        outcome: StopOutcome,
        error: Option<String>,
    ) -> Result<AppRecord, AgentError> {
        let now = Utc::now();
        let requested_at = pending.requested_at;
        let inner = self.inner.clone();
        let closed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let stop = stored.last_stop.clone()?;
                let ours =
                    stop.outcome == StopOutcome::Stopping && stop.requested_at == requested_at;
                let live = inner.under_way(&stored.id, false);
                if !ours || (live && outcome == StopOutcome::Interrupted) {
                    return None;
                }
                Some(Observation {
                    metrics: stored.metrics.clone().unwrap_or_default(),
                    last_stop: Some(LastStop {
                        outcome,
                        finished_at: Some(now),
                        error,
                        ..stop
                    }),
                    ..Observation::default()
                })
            })
            .await?;
        Ok(closed.unwrap_or_else(|| record.clone()))
    }

    /// Follows the engine's events until the agent ends, reconnecting with backoff; each
    /// (re)connection reconciles every record first, then asks for the events since just before
    /// that, so that nothing happening in between is missed.
    pub fn spawn_watcher(&self) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move { agent.watch().await })
    }

    async fn watch(self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let since = Utc::now() - chrono::Duration::seconds(1);
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
        // Podman reads its events from a file it polls, about a second late: beside them, one
        // list of the running containers every SWEEP_EVERY finds what changed before they come.
        let podman = self.runtime().engine().await.is_ok_and(|e| e.podman);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(&event).await,
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

    /// A container started or died: the records that name it are made true by inspecting it.
    async fn on_event(&self, event: &ContainerEvent) {
        let records = match self.inner.store.list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read records for an engine event");
                return;
            }
        };
        for record in records
            .into_iter()
            .filter(|r| event.concerns(r.container_id()))
        {
            let seen = match event.kind {
                crate::runtime::EventKind::Started => "an engine event (start)",
                crate::runtime::EventKind::Died => "an engine event (die)",
            };
            self.observe_container(record, seen).await;
        }
    }

    /// Makes `record` say what its container is now, after `seen` told that it changed.
    async fn observe_container(&self, record: AppRecord, seen: &str) {
        let id = record.id.clone();
        let outcome = match self.sight(&record).await {
            Ok(sighting) => self.record_sighting(record, sighting, Settler::Read).await,
            Err(e) => Err(AgentError::from_runtime(e)),
        };
        match outcome {
            Ok(r) => tracing::info!(app = %id, seen, online = r.online(), "container changed"),
            Err(e) => tracing::warn!(app = %id, error = %e, seen, "could not follow a change"),
        }
    }
}
