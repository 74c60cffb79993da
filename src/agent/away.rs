//! Whether the engine answered lately. While it is away, reads are answered from the store at
//! once and marked `engineUnavailable`, and one probe at a time looks for its return, so that
//! reads are fresh again by themselves once it is back.

use std::sync::atomic::Ordering;

use chrono::Utc;

use super::Agent;
use crate::record::EngineUnavailable;
use crate::runtime::probe;

impl Agent {
    /// Since when, and why, the engine has not answered; `None` while it answers.
    pub fn engine_away(&self) -> Option<EngineUnavailable> {
        self.inner
            .engine_away
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An engine call found the engine unreachable, for the reason `detail` gives.
    pub(super) fn engine_failed(&self, detail: &str) {
        let message = crate::runtime::RuntimeError::Unavailable(detail.to_owned()).to_string();
        let message = message.as_str();
        let mut away = self
            .inner
            .engine_away
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match away.as_mut() {
            Some(known) => known.message = message.to_owned(),
            None => {
                tracing::warn!(error = %message, "the engine does not answer; reads come from the store");
                *away = Some(EngineUnavailable {
                    since: Utc::now(),
                    message: message.to_owned(),
                });
            }
        }
    }

    /// The engine answered a call.
    pub(super) fn engine_answered(&self) {
        let mut away = self
            .inner
            .engine_away
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if away.take().is_some() {
            tracing::info!("the engine answers again; reads are fresh");
        }
    }

    /// Pings the engine in the background, unless a ping is already under way, and records
    /// whether it answered.
    pub(super) fn probe_engine(&self) {
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            match probe(agent.runtime().ping()).await {
                Err(crate::runtime::RuntimeError::Unavailable(detail)) => {
                    agent.engine_failed(&detail)
                }
                // Any answer, an error included, says the engine is there.
                Ok(()) | Err(_) => agent.engine_answered(),
            }
            agent.inner.probing.store(false, Ordering::Release);
        });
    }
}
