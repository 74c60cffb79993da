//! Unix signals: SIGTERM and SIGINT end the agent gracefully; SIGHUP reloads the tokens file.

use std::path::PathBuf;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::auth::{TokenBook, Tokens};

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_requested() {
    match Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            if let Some(signal) = signals.next().await {
                tracing::info!(signal, "shutdown requested");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; only a kill will stop the agent");
            std::future::pending::<()>().await;
        }
    }
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
