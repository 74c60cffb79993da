//! Unix signals: SIGTERM and SIGINT end the agent gracefully; SIGHUP reloads the tokens file. Both
//! are listened for from the first instant of `main`, so that no signal sent during start-up is
//! missed or kills the process.

use std::future::Future;
use std::path::PathBuf;

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::auth::{TokenBook, Tokens};

/// The agent's signal handlers, installed.
pub struct Installed {
    shutdown: Signals,
    reload: Signals,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Installed { SIGTERM, SIGINT, SIGHUP }")
    }
}

/// Installs the handlers now; needs a tokio runtime.
pub fn install() -> std::io::Result<Installed> {
    Ok(Installed {
        shutdown: Signals::new([SIGTERM, SIGINT])?,
        reload: Signals::new([SIGHUP])?,
    })
}

impl Installed {
    /// Resolves at the first SIGTERM or SIGINT; and a stream of SIGHUPs.
    pub fn split(
        self,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Stream<Item = ()> + Send + Unpin + 'static,
    ) {
        let mut shutdown = self.shutdown;
        let wait = async move {
            if let Some(signal) = shutdown.next().await {
                tracing::info!(signal, "shutdown requested");
            }
        };
        (wait, self.reload.map(|_| ()))
    }
}

/// Reloads the tokens file at every item of `reloads`. A file that does not parse leaves the tokens
/// in force, and the log says why.
pub fn spawn_reload(
    path: PathBuf,
    tokens: Tokens,
    mut reloads: impl Stream<Item = ()> + Send + Unpin + 'static,
) {
    tokio::spawn(async move {
        while reloads.next().await.is_some() {
            match TokenBook::load(&path) {
                Ok(book) => {
                    tracing::info!(path = %path.display(), tokens = book.len(), "tokens reloaded");
                    tokens.replace(book);
                }
                Err(e) => {
                    tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay in force");
                }
            }
        }
    });
}
