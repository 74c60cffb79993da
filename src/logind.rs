//! The node's shutdown as systemd-logind announces it: the delay lock the agent holds (its file
//! descriptor never inherited by a child), `PrepareForShutdown(true)` turned into a drain of the
//! node and a last push of the records before the lock is released, the lock taken again when a
//! shutdown is cancelled, the check of logind's cap against the budget, and the resume at boot
//! of what the last shutdown stopped.

use std::os::fd::OwnedFd;
use std::time::Duration;

use futures_util::StreamExt;

use crate::agent::Agent;
use crate::background::Background;
use crate::config::ShutdownConfig;

/// How long the agent waits for the system bus and logind to answer, at start.
const BUS_LIMIT: Duration = Duration::from_secs(5);

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_blocking = false
)]
trait Manager {
    /// Takes an inhibitor lock; it holds until every copy of the descriptor is closed.
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::Result<zbus::zvariant::OwnedFd>;

    /// `true`: the node is about to shut down; `false`: that shutdown was cancelled.
    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;

    /// How long logind waits for delay locks, in microseconds.
    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> zbus::Result<u64>;

    /// Whether a shutdown is being prepared (for a process that starts during one).
    #[zbus(property)]
    fn preparing_for_shutdown(&self) -> zbus::Result<bool>;
}

/// Follows the node's shutdown on the agent's background: takes the lock (with `inhibit`), and
/// starts again what the last shutdown stopped (with `resume_on_boot`), unless logind says a
/// shutdown is being prepared.
pub fn spawn(agent: Agent, config: ShutdownConfig, background: &Background) {
    agent.set_shutdown(|r| {
        r.inhibit = config.inhibit;
        r.budget_secs = config.budget_secs();
        r.lock_error = (!config.inhibit).then(|| "[shutdown] inhibit is false".to_owned());
    });
    let resume = agent.resume_pending();
    let resumes = resume && config.resume_on_boot;
    if !config.inhibit && !resumes {
        return;
    }
    background.spawn(follow(agent, config, resume));
}

async fn follow(agent: Agent, config: ShutdownConfig, resume: bool) {
    let manager = match reach_logind().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "the node's shutdown is not followed: the engine will stop the apps itself");
            agent.set_shutdown(|r| r.lock_error = Some(e));
            None
        }
    };
    if resume && config.resume_on_boot {
        let preparing = match &manager {
            Some(m) => m.preparing_for_shutdown().await.unwrap_or(false),
            None => false,
        };
        if preparing {
            tracing::warn!(
                "logind says the node is shutting down: the apps its last shutdown stopped are not started again now"
            );
        } else {
            let resuming = agent.clone();
            agent
                .background()
                .spawn(async move { resuming.resume_after_shutdown().await });
        }
    }
    let Some(manager) = manager.filter(|_| config.inhibit) else {
        return;
    };
    check_budget(&agent, &manager, &config).await;
    // Subscribed before the lock is taken: a shutdown announced in between is not missed.
    let mut announced = match manager.receive_prepare_for_shutdown().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow logind's PrepareForShutdown");
            agent.set_shutdown(|r| r.lock_error = Some(format!("cannot follow logind: {e}")));
            return;
        }
    };
    let mut lock = take_lock(&agent, &manager).await;
    while let Some(signal) = announced.next().await {
        let Ok(args) = signal.args() else {
            continue;
        };
        if args.start {
            tracing::warn!(
                grace_secs = config.grace_secs,
                report_secs = config.report_secs,
                "the node is shutting down: every app is stopped, and the final records pushed, before the lock goes"
            );
            let grace = u32::try_from(config.grace_secs).unwrap_or(u32::MAX);
            agent
                .shutdown_drain(grace, Duration::from_secs(config.report_secs))
                .await;
            drop(lock.take());
            agent.set_shutdown(|r| {
                r.lock_held = false;
                r.lock_error = Some("released for the node's shutdown".to_owned());
            });
        } else {
            agent.shutdown_cancelled().await;
            if lock.is_none() {
                lock = take_lock(&agent, &manager).await;
            }
        }
    }
    tracing::warn!("logind's signals ended: the node's shutdown is no longer followed");
    agent.set_shutdown(|r| r.lock_error = Some("logind went away".to_owned()));
}

/// A proxy of logind's manager on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` points elsewhere),
/// within [`BUS_LIMIT`]; or why there is none.
async fn reach_logind() -> Result<ManagerProxy<'static>, String> {
    let reach = async {
        let connection = zbus::Connection::system().await?;
        ManagerProxy::new(&connection).await
    };
    match tokio::time::timeout(BUS_LIMIT, reach).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(format!("no systemd-logind on the system bus: {e}")),
        Err(_) => Err(format!(
            "the system bus did not answer within {BUS_LIMIT:?}"
        )),
    }
}

/// logind's cap on delay locks (`InhibitDelayMaxUSec`) in seconds, and whether it would cut the
/// budget (`grace_secs` + `report_secs`) short.
async fn read_cap(
    manager: &ManagerProxy<'_>,
    config: &ShutdownConfig,
) -> Result<(f64, bool), String> {
    let usec = manager
        .inhibit_delay_max_usec()
        .await
        .map_err(|e| format!("cannot read logind's InhibitDelayMaxUSec: {e}"))?;
    let cut_short = config.budget_secs().saturating_mul(1_000_000) > usec;
    Ok((usec as f64 / 1e6, cut_short))
}

/// Takes logind's delay lock on shutdown, close-on-exec, and says so.
async fn take_lock(agent: &Agent, manager: &ManagerProxy<'_>) -> Option<OwnedFd> {
    let taken = manager
        .inhibit(
            "shutdown",
            "node-agent",
            "Stopping every app and reporting its final record",
            "delay",
        )
        .await;
    match taken {
        Ok(fd) => {
            let fd = OwnedFd::from(fd);
            // zbus receives descriptors without close-on-exec: a child would hold the lock.
            if let Err(e) = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC) {
                tracing::warn!(error = %e, "could not mark the lock close-on-exec");
            }
            tracing::info!("holding logind's delay lock on shutdown");
            agent.set_shutdown(|r| {
                r.lock_held = true;
                r.lock_error = None;
            });
            Some(fd)
        }
        Err(e) => {
            tracing::error!(error = %e, "logind refused the delay lock: at shutdown the engine will stop the apps itself (without polkit, logind gives delay locks to root only; see docs/operations.md)");
            agent.set_shutdown(|r| {
                r.lock_held = false;
                r.lock_error = Some(format!("logind refused the lock: {e}"));
            });
            None
        }
    }
}

/// Compares the budget with logind's cap, and says loudly when logind would cut it short.
async fn check_budget(agent: &Agent, manager: &ManagerProxy<'_>, config: &ShutdownConfig) {
    let (cap, cut_short) = match read_cap(manager, config).await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(error = %e, "logind's cap on the shutdown lock is not known");
            return;
        }
    };
    agent.set_shutdown(|r| {
        r.delay_max_secs = Some(cap);
        r.cut_short = cut_short;
    });
    if cut_short {
        tracing::error!(
            budget_secs = config.budget_secs(),
            inhibit_delay_max_secs = cap,
            "logind will cut the shutdown drain short: raise InhibitDelayMaxSec in a logind.conf.d drop-in (the package's is /usr/lib/systemd/logind.conf.d/zz-node-agent.conf), or lower [shutdown] grace_secs and report_secs"
        );
    } else {
        tracing::info!(
            budget_secs = config.budget_secs(),
            inhibit_delay_max_secs = cap,
            "logind waits long enough for the shutdown drain"
        );
    }
}

/// What `check-config` says of the shutdown lock: `Ok` when logind waits long enough for the
/// budget, `Err` with why not (or why it could not be asked).
pub async fn check_budget_once(config: &ShutdownConfig) -> Result<String, String> {
    let budget = config.budget_secs();
    let (cap, cut_short) = read_cap(&reach_logind().await?, config).await?;
    if cut_short {
        Err(format!(
            "logind waits at most {cap} s for the shutdown lock (InhibitDelayMaxUSec), less than \
             [shutdown] grace_secs + report_secs = {budget} s: it will cut the shutdown drain short"
        ))
    } else {
        Ok(format!(
            "logind waits up to {cap} s for the shutdown lock, enough for {budget} s"
        ))
    }
}
