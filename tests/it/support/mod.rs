//! The harness the integration tests share, a module per concern: the engine, the workload, the
//! agent process, its configuration, the HTTP client, and stand-ins for the engine (a fault proxy,
//! a guard, a held engine), for the control plane (a report receiver, certificates) and for
//! systemd-logind (on a private bus), and the marking of failed tests.
//!
//! Everything a test reaches often is re-exported here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod client;
pub mod config;
pub mod engine;
pub mod failure;
pub mod guard;
pub mod held;
pub mod logind;
pub mod pki;
pub mod proxy;
pub mod receiver;
pub mod record;
pub mod team;
pub mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use agent::{AgentOptions, AgentProcess, run_to_exit, run_to_exit_as};
pub use client::{Answer, Client, app_body, raw_http, stored};
pub use config::{OPERATOR_TOKEN_NAME, REPORT_TOKEN, write_config, write_private, write_tokens};
pub use engine::{docker, engine_is_podman, engine_socket, policy_while_stopped, set_aside};
pub use proxy::{EngineProxy, ProxyMode};
// `workload_image` for the benchmark, which builds its image before it times anything.
#[allow(unused_imports)]
pub use workload::{Workload, workload_image};

/// How long a test waits for the agent to do what it should do at once, on a slow, shared machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The label every test container carries; tests remove only containers they created.
pub const TEST_LABEL: &str = "node-agent-test";
pub const NODE_ID: &str = "node-test-0001";
pub const NODE_NAME: &str = "TESTNODE";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other in this run has: `prefix`, the process and a counter.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh app id.
pub fn app_id() -> String {
    unique("app")
}

/// Polls `found` until it finds something, failing after [`PATIENCE`] with `failure`'s words.
fn patiently<T>(mut found: impl FnMut() -> Option<T>, failure: impl FnOnce() -> String) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(it) = found() {
            return it;
        }
        if start.elapsed() >= PATIENCE {
            panic!("{} (waited {PATIENCE:?})", failure());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
