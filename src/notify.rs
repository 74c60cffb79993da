//! Telling the service manager how the agent is (`sd_notify`): ready once it listens, reloading
//! around a SIGHUP, stopping at shutdown, and alive (the watchdog) while its store answers. Outside
//! systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::store::Store;

/// Longest time a store ping may take before the watchdog counts the agent as stuck for that beat.
const STORE_PING_LIMIT: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// One watchdog ping, sent without waiting: should the service manager's queue be full, this beat
/// is lost and the next one tries again, rather than a runtime worker blocking until it drains.
fn ping_watchdog() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        socket.send_to_addr(b"WATCHDOG=1\n", &addr).map(drop)
    })();
    match sent {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::debug!("the service manager's queue is full; this watchdog beat is skipped")
        }
        Err(e) => tracing::warn!(error = %e, "could not notify the service manager"),
    }
}

/// The agent listens and serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) begins; [`ready`] ends it.
pub fn reloading() {
    send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
}

/// Shutdown has begun: requests and stops under way are finishing.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("finishing requests and stops under way"),
    ]);
}

/// When the service manager asks for a watchdog (`WatchdogSec=`), pings it at half the interval for
/// as long as the agent is healthy: its runtime schedules this task, and its store answers. The
/// engine is not part of it: the agent is meant to serve, and say 503, while the engine is away,
/// and restarting the agent would not bring the engine back. It runs in `background`, until that is
/// shut down.
pub fn spawn_watchdog(store: Store, background: &crate::background::Background) {
    // systemd never asks for a zero interval; should one come, there is no watchdog to feed.
    let Some(interval) = sd_notify::watchdog_enabled().filter(|i| !i.is_zero()) else {
        return;
    };
    let beat = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(
        interval_ms = interval.as_millis(),
        "systemd watchdog enabled"
    );
    background.spawn(async move {
        let mut ticks = tokio::time::interval(beat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(STORE_PING_LIMIT, store.ping()).await {
                Ok(Ok(())) => ping_watchdog(),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the store does not answer; the watchdog is not fed")
                }
                Err(_) => tracing::error!(
                    limit_secs = STORE_PING_LIMIT.as_secs(),
                    "the store did not answer in time; the watchdog is not fed"
                ),
            }
        }
    });
}
