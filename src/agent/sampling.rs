//! The latest stats reading of every running app, kept from the engine's own one-a-second stream,
//! so that a stop takes its final sample without waiting for the engine's collector (which costs
//! one to two seconds a call) and a read answers fresh figures at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::Agent;
use crate::metrics::RawStats;

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
    /// Whether the engine's stream for it is open.
    streaming: bool,
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
                            l.stats = stats;
                            l.at = Instant::now();
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
    /// Both its arrival and the engine's own `read` time must be that recent: a stream that lags
    /// under load delivers readings late, and the record shows the engine's time.
    pub(super) fn fresh_reading(&self, container: &str) -> Option<RawStats> {
        let readings = self.readings();
        let l = readings.latest.get(container)?;
        let read_recently = l.stats.read_at.is_some_and(|read| {
            chrono::Utc::now()
                .signed_duration_since(read)
                .to_std()
                .map_or(true, |age| age < FRESH)
        });
        (l.at.elapsed() < FRESH
            && read_recently
            && !l.stats.is_empty()
            && l.stats.presystem_total > 0)
            .then(|| l.stats.clone())
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
