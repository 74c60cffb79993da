//! Unix signals: SIGTERM and SIGINT end the agent gracefully; SIGHUP reloads the tokens file.

use std::future::Future;
use std::path::PathBuf;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::auth::{TokenBook, Tokens};

/// Listens for SIGTERM and SIGINT from now on; the future resolves at the first of them. Called
/// before the agent starts serving, so that no signal is missed in between.
pub fn shutdown_requested() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    Ok(async move {
        if let Some(signal) = signals.next().await {
            tracing::info!(signal, "shutdown requested");
        }
    })
}

/// Reloads the tokens file on every SIGHUP. A file that does not parse leaves the tokens in force.
pub fn spawn_reload(path: PathBuf, tokens: Tokens) {
    let mut signals = match Signals::new([SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; tokens will not reload");
            return;
        }
    };
    tokio::spawn(async move {
        while signals.next().await.is_some() {
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
