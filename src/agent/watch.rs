//! Keeping records true when the world changes behind the agent's back: reconciling every record
//! against the engine, and following the engine's event stream (reconnecting by itself).
//!
//! Events say only that something happened; the order the engine reports them in is not
//! guaranteed, so every event is answered by inspecting the container as it is now.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;

use super::{Agent, AgentError, Settler};
use crate::metrics::{RawStats, running_metrics};
use crate::record::{AppRecord, LastStop, ResourceMetrics, StopOutcome};
use crate::runtime::{ContainerState, RuntimeError};
use crate::store::Observation;

/// Longest wait between two attempts to reach the engine's event stream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Agent {
    /// Makes every record true against the engine: at start-up, and whenever the event stream
    /// (re)connects, since events may have been missed. Fails when the engine is unreachable.
    pub async fn reconcile_all(&self) -> Result<usize, AgentError> {
        let mut changed = 0;
        for record in self.inner.store.list().await? {
            if self.stop_under_way(&record.id) {
                continue;
            }
            let before = record.clone();
            let after = self.reconcile(record).await?;
            if after != before {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Brings one record in line with its container, and closes the intent of a stop that never
    /// ended (the agent died during it) as interrupted.
    async fn reconcile(&self, record: AppRecord) -> Result<AppRecord, AgentError> {
        let state = match self.runtime().inspect(record.container_id()).await {
            Ok(state) => Some(state),
            Err(RuntimeError::NotFound(_)) => None,
            Err(RuntimeError::Unavailable(m)) => return Err(AgentError::DockerUnavailable(m)),
            Err(e) => {
                tracing::warn!(app = %record.id, error = %e, "cannot inspect; record left as it is");
                return Ok(record);
            }
        };
        let interrupted = record.stop_pending();
        let record = match &state {
            Some(s) if s.running => self.mark_running(record, s).await?,
            _ => {
                self.settle_exited(record, state.as_ref(), Settler::Stop)
                    .await?
            }
        };
        if !interrupted {
            return Ok(record);
        }
        tracing::warn!(app = %record.id, online = record.online(), "a stop was under way when the agent last stopped; record made true");
        let now = Utc::now();
        let closed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let stop = stored
                    .last_stop
                    .clone()
                    .filter(|s| s.outcome == StopOutcome::Stopping)?;
                Some(Observation {
                    metrics: stored.metrics.clone().unwrap_or_default(),
                    last_exit: None,
                    last_stop: Some(LastStop {
                        outcome: StopOutcome::Interrupted,
                        finished_at: Some(now),
                        ..stop
                    }),
                })
            })
            .await?;
        Ok(closed.unwrap_or(record))
    }

    /// Records that the container runs, keeping the last sampled figures.
    async fn mark_running(
        &self,
        record: AppRecord,
        state: &ContainerState,
    ) -> Result<AppRecord, AgentError> {
        self.follow_stats(record.container_id());
        let now = Utc::now();
        let state = state.clone();
        let observed = self
            .inner
            .store
            .observe(&record.id, record.container_id(), now, move |stored| {
                let fresh = running_metrics(&state, &RawStats::default(), now);
                let same = stored
                    .metrics
                    .as_ref()
                    .is_some_and(|m| m.online && m.started_at == fresh.started_at);
                if same {
                    return None;
                }
                let kept = stored.metrics.clone().unwrap_or_default();
                Some(Observation::metrics(ResourceMetrics {
                    cpu_usage_percent: kept.cpu_usage_percent,
                    memory_usage_bytes: kept.memory_usage_bytes,
                    memory_limit_bytes: kept.memory_limit_bytes,
                    network_rx_bytes: kept.network_rx_bytes,
                    network_tx_bytes: kept.network_tx_bytes,
                    ..fresh
                }))
            })
            .await?;
        Ok(observed.unwrap_or(record))
    }

    /// Follows the engine's events until the agent ends, reconnecting with backoff; each
    /// (re)connection reconciles every record first.
    pub fn spawn_watcher(&self) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move { agent.watch().await })
    }

    async fn watch(self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.runtime().events().await {
                Ok(mut events) => {
                    match self.reconcile_all().await {
                        Ok(changed) => {
                            tracing::info!(changed, "records reconciled with the engine")
                        }
                        Err(e) => tracing::warn!(error = %e, "reconciliation incomplete"),
                    }
                    backoff = Duration::from_secs(1);
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(event) => self.on_event(&event).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "event stream failed");
                                break;
                            }
                        }
                    }
                    tracing::warn!("event stream ended; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "no event stream yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A container started or died: the records that name it are made true by inspecting it.
    async fn on_event(&self, event: &crate::runtime::ContainerEvent) {
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
            // A stop under way writes the final word itself.
            if self.stop_under_way(&record.id) {
                continue;
            }
            let id = record.id.clone();
            let outcome = match self.runtime().inspect(record.container_id()).await {
                Ok(state) if state.running => self.mark_running(record, &state).await,
                Ok(state) => {
                    self.settle_exited(record, Some(&state), Settler::Read)
                        .await
                }
                Err(RuntimeError::NotFound(_)) => {
                    self.settle_exited(record, None, Settler::Read).await
                }
                Err(e) => Err(AgentError::from_runtime(e)),
            };
            match outcome {
                Ok(r) => {
                    tracing::info!(app = %id, kind = ?event.kind, online = r.online(), "container changed outside the agent")
                }
                Err(e) => tracing::warn!(app = %id, error = %e, "could not follow an engine event"),
            }
        }
    }
}
