//! Whether the engine answered lately. While it is away, reads are answered from the store at
//! once and marked `engineUnavailable`, and one probe at a time looks for its return, so that
//! reads are fresh again by themselves once it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;

use super::Agent;
use crate::record::EngineUnavailable;
use crate::runtime::probe;

/// The engine's health as the agent last saw it: a cheap-clone handle, shared by the core, its
/// probe and the watcher.
#[derive(Debug, Clone, Default)]
pub struct EngineHealth {
    /// Since when the engine has not answered, while it does not.
    away: Arc<Mutex<Option<EngineUnavailable>>>,
    /// Whether a probe for the engine's return is under way.
    probing: Arc<AtomicBool>,
}

impl EngineHealth {
    fn away_mut(&self) -> std::sync::MutexGuard<'_, Option<EngineUnavailable>> {
        self.away.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when, and why, the engine has not answered; `None` while it answers.
    pub fn away(&self) -> Option<EngineUnavailable> {
        self.away_mut().clone()
    }

    /// An engine call found the engine unreachable, for the reason `detail` gives.
    pub fn failed(&self, detail: &str) {
        let message = crate::runtime::RuntimeError::Unavailable(detail.to_owned()).to_string();
        let mut away = self.away_mut();
        match away.as_mut() {
            Some(known) => known.message = message,
            None => {
                tracing::warn!(error = %message, "the engine does not answer; reads come from the store");
                *away = Some(EngineUnavailable {
                    since: Utc::now(),
                    message,
                });
            }
        }
    }

    /// The engine answered a call.
    pub fn answered(&self) {
        if self.away_mut().take().is_some() {
            tracing::info!("the engine answers again; reads are fresh");
        }
    }
}

impl Agent {
    /// Since when, and why, the engine has not answered; `None` while it answers.
    pub fn engine_away(&self) -> Option<EngineUnavailable> {
        self.inner.engine.away()
    }

    /// An engine call found the engine unreachable, for the reason `detail` gives.
    pub(super) fn engine_failed(&self, detail: &str) {
        self.inner.engine.failed(detail);
    }

    /// The engine answered a call.
    pub(super) fn engine_answered(&self) {
        self.inner.engine.answered();
    }

    /// Pings the engine in the background, unless a ping is already under way, and records
    /// whether it answered. The probe holds only the engine and its health, not the agent.
    pub(super) fn probe_engine(&self) {
        let health = self.inner.engine.clone();
        if health.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let runtime = self.inner.runtime.clone();
        self.background().spawn(async move {
            match probe(runtime.ping()).await {
                Err(crate::runtime::RuntimeError::Unavailable(detail)) => health.failed(&detail),
                // Any answer, an error included, says the engine is there.
                Ok(()) | Err(_) => health.answered(),
            }
            health.probing.store(false, Ordering::Release);
        });
    }
}
