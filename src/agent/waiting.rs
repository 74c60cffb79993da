//! Waiting for an app's record to reach a state (`GET /v1/apps/{appId}/wait`): woken by the
//! store's commit of each change, never by polling the engine or the store.

use std::time::Duration;

use super::{Agent, AgentError};
use crate::auth::Principal;
use crate::policy::Action;
use crate::quota::Place;
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
    /// A place for one more wait of `principal`: a user token holds at most
    /// `[auth] max_waits_per_token`, so that one tenant's waits cannot take every connection;
    /// operators have no cap (their waits are counted all the same).
    fn wait_place(&self, principal: &Principal) -> Result<Place<String>, AgentError> {
        let waits = &self.inner.waits;
        waits
            .take(&principal.name, !principal.is_operator())
            .ok_or_else(|| AgentError::TooManyWaits {
                token: principal.name.clone(),
                cap: waits.cap(),
            })
    }

    /// Waits under way at this moment, of every token.
    pub fn waits_in_progress(&self) -> usize {
        self.inner.waits.total()
    }

    /// The record of `id` once `wanted` holds, or [`AgentError::WaitTimeout`] with the record as it
    /// stands after `timeout`. The caller must be allowed to read the app, at every wake: one whose
    /// access a re-registration took away, like one whose record was deleted, is told the app is
    /// not there, and never sees the new record.
    pub async fn wait(
        &self,
        principal: &Principal,
        id: &AppId,
        wanted: WaitFor,
        timeout: Duration,
    ) -> Result<AppRecord, AgentError> {
        // Subscribed before the first read, so that no change in between is missed.
        let mut changes = self.inner.store.watch(id);
        let record = self.authorized(principal, id, Action::Read, "read").await?;
        if wanted.holds(&record) {
            return Ok(record);
        }
        let _place = self.wait_place(principal)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.authorized(principal, id, Action::Read, "read").await?;
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
