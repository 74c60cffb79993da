//! How a container is stopped: the request (`timeout`, `signal`), and the procedure that turns it into
//! engine calls — the signal, the grace period, then a kill — on any engine API version.

use std::time::Duration;

use crate::config::MAX_STOP_TIMEOUT_SECS;
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};

/// Grace period when neither the request, the configuration nor the container sets one (Docker's own).
pub const DOCKER_DEFAULT_GRACE_SECS: u32 = 10;

/// A signal a stop may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
    Kill,
}

const SIGNALS: [(Signal, &str); 7] = [
    (Signal::Term, "SIGTERM"),
    (Signal::Int, "SIGINT"),
    (Signal::Quit, "SIGQUIT"),
    (Signal::Hup, "SIGHUP"),
    (Signal::Usr1, "SIGUSR1"),
    (Signal::Usr2, "SIGUSR2"),
    (Signal::Kill, "SIGKILL"),
];

/// Why stop parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopInputError {
    #[error(
        "`signal` must be one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL (the SIG prefix is optional), not {0:?}"
    )]
    BadSignal(String),
    #[error("`timeout` must be whole seconds from 0 to {MAX_STOP_TIMEOUT_SECS}, not {0:?}")]
    BadTimeout(String),
}

impl Signal {
    /// Parses `SIGTERM`, `TERM`, `sigterm`…
    pub fn parse(raw: &str) -> Result<Signal, StopInputError> {
        let upper = raw.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .find(|(_, full)| &full[3..] == name)
            .map(|(s, _)| *s)
            .ok_or_else(|| StopInputError::BadSignal(raw.to_owned()))
    }

    /// The signal's name with its `SIG` prefix, as the engine takes it.
    pub fn name(self) -> &'static str {
        SIGNALS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("SIGTERM", |(_, n)| n)
    }
}

/// Parses a timeout given as text (a query parameter).
pub fn parse_timeout(raw: &str) -> Result<u32, StopInputError> {
    raw.parse::<u32>()
        .ok()
        .filter(|t| *t <= MAX_STOP_TIMEOUT_SECS && !raw.starts_with('+'))
        .ok_or_else(|| StopInputError::BadTimeout(raw.to_owned()))
}

/// Checks a timeout given as a number (a JSON body).
pub fn check_timeout(t: i64) -> Result<u32, StopInputError> {
    u32::try_from(t)
        .ok()
        .filter(|t| *t <= MAX_STOP_TIMEOUT_SECS)
        .ok_or_else(|| StopInputError::BadTimeout(t.to_string()))
}

/// What the caller asked of a stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopRequest {
    /// Grace period in seconds; 0 kills at once.
    pub timeout: Option<u32>,
    /// Signal to send first; `None` is the container's own stop signal.
    pub signal: Option<Signal>,
}

/// How the engine was driven, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPath {
    /// The engine's stop call, with the signal when one was asked for.
    EngineStop,
    /// An engine whose stop takes no signal: kill with the signal, wait the grace, then stop with `t=0`.
    SignalThenStop { exited_in_grace: bool },
    /// SIGKILL asked for, or no grace: a kill.
    Kill,
}

/// The grace period in force: the request's, else the configured default, else the container's own.
pub fn effective_grace(req: &StopRequest, configured: Option<u32>, state: &ContainerState) -> u32 {
    req.timeout
        .or(configured)
        .or(state.stop_timeout)
        .unwrap_or(DOCKER_DEFAULT_GRACE_SECS)
}

/// Stops `container` as asked. Returns once the container is not running.
pub async fn halt(
    runtime: &dyn ContainerRuntime,
    container: &str,
    req: &StopRequest,
    grace: u32,
) -> Result<StopPath, RuntimeError> {
    let engine = runtime.engine().await?;
    match req.signal {
        Some(Signal::Kill) => {
            runtime.kill(container, Signal::Kill.name()).await?;
            // The kill is asynchronous in the engine; the stop must answer once the container is down.
            let limit = Duration::from_secs(u64::from(DOCKER_DEFAULT_GRACE_SECS));
            match runtime.wait_exit(container, limit).await {
                Ok(_) | Err(RuntimeError::NotFound(_)) => Ok(StopPath::Kill),
                Err(e) => Err(e),
            }
        }
        Some(signal) if !engine.stop_takes_signal => {
            runtime.kill(container, signal.name()).await?;
            // Once signalled, an auto-removing container may vanish as soon as it exits: that is
            // this stop's doing, not a container gone before it.
            let limit = Duration::from_secs(u64::from(grace));
            let exited_in_grace = match runtime.wait_exit(container, limit).await {
                Err(RuntimeError::NotFound(_)) => true,
                other => other?,
            };
            // `t=0` kills whatever is left, and marks the container as stopped by hand for the engine.
            match runtime.stop(container, None, 0).await {
                Err(RuntimeError::NotFound(_)) if exited_in_grace => {}
                other => other?,
            }
            Ok(StopPath::SignalThenStop { exited_in_grace })
        }
        signal => {
            runtime
                .stop(container, signal.map(Signal::name), grace)
                .await?;
            Ok(StopPath::EngineStop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(Signal::parse("SIGUSR1"), Ok(Signal::Usr1));
        assert_eq!(Signal::parse("usr1"), Ok(Signal::Usr1));
        assert_eq!(Signal::parse("Kill"), Ok(Signal::Kill));
        for bad in ["", "SIG", "9", "SIGSEGV", "SIGSIGTERM", "TERM "] {
            if bad == "TERM " {
                assert_eq!(Signal::parse(bad), Ok(Signal::Term));
                continue;
            }
            assert!(Signal::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Signal::Hup.name(), "SIGHUP");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("0"), Ok(0));
        assert_eq!(parse_timeout("3600"), Ok(3600));
        for bad in ["", "-1", "3601", "1.5", "ten", "+5", "99999999999"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_timeout(5), Ok(5));
        assert!(check_timeout(-1).is_err());
        assert!(check_timeout(3601).is_err());
    }

    #[test]
    fn grace_comes_from_request_then_config_then_container() {
        let state = ContainerState {
            stop_timeout: Some(30),
            ..Default::default()
        };
        let req = StopRequest::default();
        assert_eq!(
            effective_grace(
                &StopRequest {
                    timeout: Some(2),
                    ..req
                },
                Some(5),
                &state
            ),
            2
        );
        assert_eq!(effective_grace(&req, Some(5), &state), 5);
        assert_eq!(effective_grace(&req, None, &state), 30);
        assert_eq!(effective_grace(&req, None, &ContainerState::default()), 10);
    }

    #[tokio::test]
    async fn old_engines_get_kill_wait_then_stop() {
        let fake = FakeRuntime::new(false);
        fake.add_running("c", &["SIGUSR1"]);
        let req = StopRequest {
            timeout: Some(3),
            signal: Some(Signal::Usr1),
        };
        let path = halt(&fake, "c", &req, 3).await.expect("stopped");
        assert_eq!(
            path,
            StopPath::SignalThenStop {
                exited_in_grace: true
            }
        );
        assert_eq!(
            fake.calls(),
            ["kill c SIGUSR1", "wait c 3s", "stop c - t=0"]
        );
    }

    #[tokio::test]
    async fn old_engines_kill_what_ignores_the_signal() {
        let fake = FakeRuntime::new(false);
        fake.add_running("c", &[]);
        let req = StopRequest {
            timeout: Some(1),
            signal: Some(Signal::Hup),
        };
        let path = halt(&fake, "c", &req, 1).await.expect("stopped");
        assert_eq!(
            path,
            StopPath::SignalThenStop {
                exited_in_grace: false
            }
        );
        assert_eq!(fake.state("c").exit_code, Some(137));
    }

    #[tokio::test]
    async fn new_engines_stop_with_the_signal() {
        let fake = FakeRuntime::new(true);
        fake.add_running("c", &["SIGINT"]);
        let req = StopRequest {
            timeout: None,
            signal: Some(Signal::Int),
        };
        halt(&fake, "c", &req, 10).await.expect("stopped");
        assert_eq!(fake.calls(), ["stop c SIGINT t=10"]);
        assert_eq!(fake.state("c").exit_code, Some(0));
    }

    #[tokio::test]
    async fn sigkill_is_a_kill() {
        let fake = FakeRuntime::new(true);
        fake.add_running("c", &["SIGTERM"]);
        let req = StopRequest {
            timeout: Some(5),
            signal: Some(Signal::Kill),
        };
        assert_eq!(halt(&fake, "c", &req, 5).await, Ok(StopPath::Kill));
        assert_eq!(fake.state("c").exit_code, Some(137));
    }
}
