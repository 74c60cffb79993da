//! An engine guard: a Unix-socket proxy to the real Docker engine that forwards engine-wide calls,
//! and calls about the containers a test allows, and answers 404 for every other container. An agent
//! pointed at it can be fed arbitrary records (a fuzzer's) without ever reaching a container that the
//! test did not create.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug)]
pub struct EngineGuard {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    allowed: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::AbortHandle,
}

impl EngineGuard {
    /// Starts the guard; no container is allowed yet.
    pub fn start() -> EngineGuard {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guarded-engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let allowed: Arc<Mutex<HashSet<String>>> = Arc::default();
        let shared = allowed.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let allowed = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let allowed = allowed.clone();
                        async move { Ok::<_, Infallible>(answer(req, &allowed).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EngineGuard {
            path,
            _dir: dir,
            allowed,
            task: task.abort_handle(),
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Lets calls about this container (by name or full id) through.
    pub fn allow(&self, container: &str) {
        self.allowed.lock().unwrap().insert(container.to_owned());
    }
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The container a request is about, if any: `/v1.41/containers/{ref}/...` or `/containers/{ref}`.
fn container_of(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    let mut first = parts.next()?;
    if first.starts_with('v') && first[1..].starts_with(|c: char| c.is_ascii_digit()) {
        first = parts.next()?;
    }
    (first == "containers").then(|| parts.next()).flatten()
}

fn refuse(container: &str) -> Response<Body> {
    let body = format!("{{\"message\":\"No such container: {container}\"}}");
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap()
}

async fn answer(req: Request<Incoming>, allowed: &Mutex<HashSet<String>>) -> Response<Body> {
    if let Some(container) = container_of(req.uri().path()) {
        let container = container.to_owned();
        if !allowed.lock().unwrap().contains(&container) {
            return refuse(&container);
        }
    }
    let Ok(engine) = tokio::net::UnixStream::connect(super::engine_socket()).await else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap();
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(engine))
        .await
        .unwrap();
    tokio::spawn(connection);
    match sender.send_request(req).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap(),
    }
}
