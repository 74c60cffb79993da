//! The agent's long-lived background work (the engine's watcher, the report sender, the reloads,
//! the watchdog, the sampler's ticker and stats streams, the engine probe): one shutdown signal
//! and one task tracker, made once in [`crate::run`] and handed to everything that spawns such a
//! task, so that every exit of `run` ends them all the same way.
//!
//! Operations on apps are not background work: they are never cancelled halfway, and shutdown
//! waits for them first ([`crate::agent::Agent::finish_operations`]).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cheap-clone handle on the background tasks of one agent.
#[derive(Debug, Clone, Default)]
pub struct Background {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    /// Runs `task` until it ends by itself or the background is shut down, whichever comes first;
    /// a task is dropped at its next await once shutdown is signalled.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = task => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// Signals shutdown, and waits until every background task has ended. Tasks spawned later end
    /// at once.
    pub async fn shut_down(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Background tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutting_down_ends_every_task_even_those_that_never_end_by_themselves() {
        let background = Background::new();
        background.spawn(std::future::pending());
        background.spawn(async { tokio::time::sleep(std::time::Duration::from_secs(3600)).await });
        assert_eq!(background.running(), 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), background.shut_down())
            .await
            .expect("every task ended");
        assert_eq!(background.running(), 0);
    }
}
