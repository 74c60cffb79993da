//! Waiting for an app's record to reach a state (`GET /v1/apps/{appId}/wait`): woken by the
//! store's commit of each change, never by polling the engine or the store.

use std::time::Duration;

use super::{Agent, AgentError};
use crate::auth::Principal;
use crate::policy::Action;
use crate::record::{AppId, AppRecord};

/// What a waiter waits for: every condition given must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitFor {
    /// `currentResourceMetrics.online` equals this.
    pub online: Option<bool>,
    /// The record's generation is at least this.
    pub generation: Option<u64>,
}

impl WaitFor {
    fn holds(&self, record: &AppRecord) -> bool {
        self.online.is_none_or(|o| record.online() == o)
            && self.generation.is_none_or(|g| record.generation >= g)
    }
}

impl Agent {
    /// The record of `id` once `wanted` holds, or [`AgentError::WaitTimeout`] with the record as it
    /// stands after `timeout`. The caller must be allowed to read the app; a record deleted during
    /// the wait ends it as absent.
    pub async fn wait(
        &self,
        principal: &Principal,
        id: &AppId,
        wanted: WaitFor,
        timeout: Duration,
    ) -> Result<AppRecord, AgentError> {
        // Subscribed before the first read, so that no change in between is missed.
        let mut changes = self.inner.store.watch(id);
        self.authorized(principal, id, Action::Read, "read").await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.record_of(id).await?;
            if wanted.holds(&record) {
                return Ok(record);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(AgentError::WaitTimeout {
                    id: id.clone(),
                    record: Box::new(record),
                });
            }
        }
    }
}
