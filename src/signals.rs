//! Unix signals: SIGTERM and SIGINT end the agent gracefully; SIGHUP reloads the tokens file, the
//! TLS certificate and key, and the report token. Both are listened for from the first instant of `main`, so that no signal
//! sent during start-up is missed or kills the process.

use std::future::Future;
use std::path::PathBuf;

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::auth::{TokenBook, Tokens};
use crate::http::tls::Tls;
use crate::notify;
use crate::report::Reporting;

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

/// What a SIGHUP reloads: the tokens file, the TLS certificate and key, and the report token.
#[derive(Debug, Clone)]
pub struct Reloadable {
    pub tokens_file: PathBuf,
    pub tokens: Tokens,
    pub tls: Option<Tls>,
    pub reporting: Option<Reporting>,
}

impl Reloadable {
    /// Reads the files again. A file that cannot be used leaves what it configures in force, and the
    /// log says why; connections are not dropped either way.
    fn reload(&self) {
        match TokenBook::load(&self.tokens_file) {
            Ok(book) => {
                // In force before it is said to be: whoever reads the line may rely on it.
                let count = book.len();
                self.tokens.replace(book);
                tracing::info!(path = %self.tokens_file.display(), tokens = count, "tokens reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay in force");
            }
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS files not reloaded; the previous certificate stays in force"
                ),
            }
        }
        if let Some(reporting) = &self.reporting {
            match reporting.reload_token() {
                Ok(()) => tracing::info!("report token reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "report token not reloaded; the previous token stays in force"
                ),
            }
        }
    }
}

/// Reloads at every item of `reloads`, telling the service manager while it does, in `background`
/// until that is shut down.
pub fn spawn_reload(
    reloadable: Reloadable,
    mut reloads: impl Stream<Item = ()> + Send + Unpin + 'static,
    background: &crate::background::Background,
) {
    background.spawn(async move {
        while reloads.next().await.is_some() {
            notify::reloading();
            let r = reloadable.clone();
            // The files are small, but reading them blocks: keep it off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || r.reload()).await {
                tracing::error!(error = %e, "the reload failed");
            }
            notify::ready("serving");
        }
    });
}
