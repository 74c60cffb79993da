//! The engine under test: its socket (`DOCKER_HOST` or the machine's own), one client per test
//! binary that fails with a clear message when no engine answers, and what differs on Podman.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use serde_json::Value;
use tokio::sync::OnceCell;

static DOCKER: OnceCell<Docker> = OnceCell::const_new();

/// The engine's socket: `DOCKER_HOST` when it names a Unix socket (the extra engines of
/// `tests/engines.sh`), else the machine's own engine.
pub fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// The local Docker engine. Fails the test with a clear message when none answers.
pub async fn docker() -> Docker {
    DOCKER
        .get_or_init(|| async {
            let docker = Docker::connect_with_local_defaults()
                .map(|d| d.with_timeout(Duration::from_secs(60)))
                .unwrap_or_else(|e| panic!("these tests need a Docker engine at {} (DOCKER_HOST picks another); `bash .ci/run` starts one: {e}", engine_socket().display()));
            docker.negotiate_version().await.unwrap_or_else(|e| panic!(
                "no Docker engine answers at {}; these tests drive the real engine. Start one (`bash .ci/run` does): {e}", engine_socket().display()
            ))
        })
        .await
        .clone()
}

/// Whether the engine under test is Podman's Docker-compatible service.
pub async fn engine_is_podman() -> bool {
    docker()
        .await
        .version()
        .await
        .expect("the engine's version")
        .components
        .iter()
        .flatten()
        .any(|c| c.name.contains("Podman"))
}

/// What a stop records of a restart policy it set aside: the policy's name on Docker; nothing on
/// Podman, which keeps the policy (it never restarts a container stopped through its API, and its
/// Docker API cannot change one).
pub async fn set_aside(policy: &str) -> Value {
    if engine_is_podman().await {
        Value::Null
    } else {
        Value::from(policy)
    }
}

/// The restart policy a container stopped by the agent has: `no` on Docker, its own on Podman.
pub async fn policy_while_stopped(
    policy: bollard::models::RestartPolicyNameEnum,
) -> bollard::models::RestartPolicyNameEnum {
    if engine_is_podman().await {
        policy
    } else {
        bollard::models::RestartPolicyNameEnum::NO
    }
}
