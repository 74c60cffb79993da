//! The latest stats reading of every running app, kept from the engine's own one-a-second stream,
//! so that a stop takes its final sample without waiting for the engine's collector (which costs
//! one to two seconds a call) and a read answers fresh figures at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::Agent;
use crate::metrics::RawStats;
use crate::runtime::RuntimeError;

/// A reading older than this is not fresh enough for a final sample; the engine sends one a second.
const FRESH: Duration = Duration::from_millis(1500);

/// The latest reading of each followed container, by the `containerId` its record names.
#[derive(Debug, Default)]
pub(super) struct Readings {
    latest: HashMap<String, Latest>,
}

#[derive(Debug)]
struct Latest {
    stats: RawStats,
    at: Instant,
    /// How much later than the stream's most prompt reading this one came, judged by the engine's
    /// `read` time against this host's clock at arrival. The engine's clock may differ from this
    /// host's by a constant (a remote engine): only the excess over the stream's best counts.
    late: Duration,
    /// The least (arrival − `read`) seen on this stream, the two clocks' offset plus the least
    /// delivery time.
    best_offset: Option<chrono::Duration>,
    /// Whether the engine's stream for it is open.
    streaming: bool,
}

impl Latest {
    /// Takes a reading that has just arrived.
    fn note(&mut self, stats: RawStats) {
        self.late = Duration::ZERO;
        if let Some(read) = stats.read_at {
            let offset = chrono::Utc::now() - read;
            let best = self.best_offset.map_or(offset, |best| best.min(offset));
            self.best_offset = Some(best);
            self.late = (offset - best).to_std().unwrap_or(Duration::ZERO);
        }
        self.stats = stats;
        self.at = Instant::now();
    }
}

impl Agent {
    fn readings(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.inner
            .readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following a running container's stats stream, unless already followed. The stream
    /// ends with the container; seeing it run again starts it anew.
    pub(super) fn follow_stats(&self, container: &str) {
        {
            let mut readings = self.readings();
            let entry = readings
                .latest
                .entry(container.to_owned())
                .or_insert(Latest {
                    stats: RawStats::default(),
                    at: Instant::now(),
                    late: Duration::ZERO,
                    best_offset: None,
                    streaming: false,
                });
            if entry.streaming {
                return;
            }
            entry.streaming = true;
        }
        let agent = self.clone();
        let container = container.to_owned();
        tokio::spawn(async move {
            match agent.runtime().stats_stream(&container).await {
                Ok(mut stream) => {
                    while let Some(Ok(stats)) = stream.next().await {
                        if stats.is_empty() {
                            break;
                        }
                        if let Some(l) = agent.readings().latest.get_mut(&container) {
                            l.note(stats);
                        }
                    }
                }
                Err(e) => tracing::debug!(%container, error = %e, "no stats stream"),
            }
            if let Some(l) = agent.readings().latest.get_mut(&container) {
                l.streaming = false;
            }
        });
    }

    /// A reading taken less than [`FRESH`] ago over a real CPU interval, if the stream has one.
    /// Its age counts from its arrival plus how late it came: a stream that falls behind on a busy
    /// host delivers readings the engine took well before.
    pub(super) fn fresh_reading(&self, container: &str) -> Option<RawStats> {
        let readings = self.readings();
        let l = readings.latest.get(container)?;
        (l.at.elapsed() + l.late < FRESH && !l.stats.is_empty() && l.stats.presystem_total > 0)
            .then(|| l.stats.clone())
    }

    /// A reading of `container` for a sample now: the stream's when it is fresh, else the engine's
    /// `stats` answer. An answer without a previous CPU reading (Podman's, which streams one
    /// reading in five seconds; a one-shot answer) is measured against the stream's last reading
    /// of the same run, so that its CPU % covers a real interval of the container's own usage.
    pub(super) async fn sample_now(&self, container: &str) -> Result<RawStats, RuntimeError> {
        if let Some(fresh) = self.fresh_reading(container) {
            return Ok(fresh);
        }
        let mut stats = self.runtime().stats(container).await?;
        if stats.presystem_total == 0 && !stats.is_empty() {
            let before = self
                .readings()
                .latest
                .get(container)
                .map(|l| l.stats.clone())
                .filter(|b| {
                    b.system_total > 0
                        && b.system_total < stats.system_total
                        && b.cpu_total <= stats.cpu_total
                });
            if let Some(before) = before {
                stats.precpu_total = before.cpu_total;
                stats.presystem_total = before.system_total;
            }
        }
        Ok(stats)
    }

    /// Whether the stream of `container` has delivered a reading, fresh or not.
    #[cfg(test)]
    pub(super) fn has_reading(&self, container: &str) -> bool {
        self.readings()
            .latest
            .get(container)
            .is_some_and(|l| !l.stats.is_empty())
    }

    /// The last reading of a container that has stopped, taken at or after `since` (its last
    /// start), and forgets it: a reading is someone's final sample only once. Its stream may not
    /// have noticed the end yet; no later reading of that run can come.
    pub(super) fn take_last_reading(
        &self,
        container: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<RawStats> {
        let mut readings = self.readings();
        let l = readings.latest.get(container)?;
        if l.stats.is_empty() {
            return None;
        }
        let of_this_run = match (l.stats.read_at, since) {
            (Some(read), Some(start)) => read >= start,
            _ => false,
        };
        let stats = readings.latest.remove(container).map(|l| l.stats);
        stats.filter(|_| of_this_run)
    }

    /// How many containers are followed now.
    pub fn followed(&self) -> usize {
        self.readings()
            .latest
            .values()
            .filter(|l| l.streaming)
            .count()
    }
}
