//! A stand-in for the engine's socket: it forwards every call to the real engine, but can hold
//! container starts back, or the answers of container stops, until a test lets them through, and,
//! when made silent, never delivers an engine event, so that only the agent's own calls and reads
//! change a record.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;

/// The stand-in; the agent is pointed at it with `AgentOptions::docker_host = Some(url())`.
#[derive(Debug)]
pub struct HeldEngine {
    path: PathBuf,
    _dir: tempfile::TempDir,
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Held while the answers of container stops are to be held back.
    stop_gate: Arc<tokio::sync::RwLock<()>>,
    /// Container starts that reached the stand-in.
    starts: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl HeldEngine {
    /// A stand-in that passes the engine's events through.
    pub fn start() -> HeldEngine {
        Self::serve(false)
    }

    /// A stand-in whose event stream never says anything: what a record says at a given moment is
    /// the test's to decide.
    pub fn silent() -> HeldEngine {
        Self::serve(true)
    }

    fn serve(silent: bool) -> HeldEngine {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held-engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let gate: Arc<tokio::sync::RwLock<()>> = Arc::default();
        let stop_gate: Arc<tokio::sync::RwLock<()>> = Arc::default();
        let starts: Arc<AtomicUsize> = Arc::default();
        let gates = (gate.clone(), stop_gate.clone());
        let shared_starts = starts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (gates, starts) = (gates.clone(), shared_starts.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (gates, starts) = (gates.clone(), starts.clone());
                        async move {
                            Ok::<_, Infallible>(
                                pass(req, &gates.0, &gates.1, &starts, silent).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HeldEngine {
            path,
            _dir: dir,
            gate,
            stop_gate,
            starts,
            task: task.abort_handle(),
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Holds every container start until the returned guard is dropped.
    pub async fn hold_starts(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Holds the answer of every container stop (the stop itself goes through) until the returned
    /// guard is dropped.
    pub async fn hold_stop_answers(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.stop_gate.clone().write_owned().await
    }

    /// Container starts that have reached the stand-in.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// Waits until `n` container starts have reached the stand-in.
    pub async fn wait_starts(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.starts() < n {
            assert!(Instant::now() < deadline, "{n} starts never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for HeldEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bad_gateway() -> hyper::Response<ProxyBody> {
    hyper::Response::builder()
        .status(502)
        .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        .unwrap()
}

async fn pass(
    req: hyper::Request<Incoming>,
    gate: &tokio::sync::RwLock<()>,
    stop_gate: &tokio::sync::RwLock<()>,
    starts: &AtomicUsize,
    silent: bool,
) -> hyper::Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    if silent && path.ends_with("/events") {
        let silence = futures_util::stream::pending::<Result<Frame<Bytes>, hyper::Error>>();
        return hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(silence).boxed())
            .unwrap();
    }
    if req.method() == hyper::Method::POST && path.ends_with("/start") {
        starts.fetch_add(1, Ordering::SeqCst);
        drop(gate.read().await);
    }
    let Ok(engine) = tokio::net::UnixStream::connect(super::engine_socket()).await else {
        return bad_gateway();
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(engine)).await
    else {
        return bad_gateway();
    };
    tokio::spawn(connection);
    let stop = req.method() == hyper::Method::POST && path.ends_with("/stop");
    match sender.send_request(req).await {
        Ok(response) => {
            if stop {
                drop(stop_gate.read().await);
            }
            response.map(BodyExt::boxed)
        }
        Err(_) => bad_gateway(),
    }
}
