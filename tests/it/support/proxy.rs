//! The fault proxy: a Unix-socket stand-in for the engine's socket that a test can close, reopen
//! or make hang, without touching the real daemon.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine_socket;

/// A Unix-socket stand-in for the engine's socket, which a test can close, reopen, or make hang,
/// without touching the real daemon: it forwards to [`engine_socket`].
#[derive(Debug)]
pub struct EngineProxy {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// What the proxy does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the real engine.
    Forward,
    /// Accept, then never answer: an engine that hangs.
    Hang,
}

impl EngineProxy {
    /// A proxy that is not listening yet.
    pub fn closed() -> EngineProxy {
        let dir = tempfile::tempdir().unwrap();
        EngineProxy {
            path: dir.path().join("engine.sock"),
            _dir: dir,
            tasks: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Starts listening.
    pub fn open(&self, mode: ProxyMode) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    match mode {
                        ProxyMode::Forward => {
                            if let Ok(mut engine) =
                                tokio::net::UnixStream::connect(engine_socket()).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                            }
                        }
                        ProxyMode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(client);
                        }
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Stops listening and cuts every connection, as an engine that went away.
    pub fn close(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.close();
    }
}
