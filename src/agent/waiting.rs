//! Waiting for an app's record to reach a state (`GET /v1/apps/{appId}/wait`): woken by the
//! store's commit of each change, never by polling the engine or the store.

use std::sync::Arc;
use std::time::Duration;

use super::{Agent, AgentError, Inner};
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

/// One of the waits a token holds; dropping it gives the place back.
struct WaitSlot {
    inner: Arc<Inner>,
    token: String,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut waits = self.inner.waits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = waits.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                waits.remove(&self.token);
            }
        }
    }
}

impl Agent {
    /// A place for one more wait of `principal`: a user token holds at most
    /// `[auth] max_waits_per_token`, so that one tenant's waits cannot take every connection;
    /// operators have no cap (their waits are counted all the same).
    fn wait_slot(&self, principal: &Principal) -> Result<WaitSlot, AgentError> {
        let cap = self.inner.limits.max_waits_per_token;
        let mut waits = self.inner.waits.lock().unwrap_or_else(|p| p.into_inner());
        let held = waits.entry(principal.name.clone()).or_insert(0);
        if *held >= cap && !principal.is_operator() {
            return Err(AgentError::TooManyWaits {
                token: principal.name.clone(),
                cap,
            });
        }
        *held += 1;
        Ok(WaitSlot {
            inner: self.inner.clone(),
            token: principal.name.clone(),
        })
    }

    /// Waits under way at this moment, of every token.
    pub fn waits_in_progress(&self) -> usize {
        let waits = self.inner.waits.lock().unwrap_or_else(|p| p.into_inner());
        waits.values().sum()
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
        let _slot = self.wait_slot(principal)?;
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
