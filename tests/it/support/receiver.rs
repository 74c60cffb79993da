//! A control plane's report receiver for tests: an HTTP server on loopback that records every report
//! it is sent, and can be told to fail, refuse, hang, or be down (its port closed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200: acknowledged.
    Accept,
    /// This status (a 5xx, 408 or 429 is retried; another 4xx drops the batch).
    Answer(u16),
    /// Never answer.
    Hang,
}

/// One report as the receiver took it.
#[derive(Debug, Clone)]
pub struct Report {
    /// What the receiver answered; 0 for a request it held without answering.
    pub status: u16,
    pub at: Instant,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Report {
    pub fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The changes of this report: (appId, generation, the change).
    pub fn changes(&self) -> Vec<(String, u64, Value)> {
        self.body["changes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                (
                    c["appId"].as_str().unwrap_or_default().to_owned(),
                    c["generation"].as_u64().unwrap_or_default(),
                    c,
                )
            })
            .collect()
    }
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    reports: Mutex<Vec<Report>>,
    /// Requests held without an answer: when each came, and when its connection went.
    holds: Mutex<Vec<Hold>>,
    refused_handshakes: Mutex<usize>,
}

/// A request held without an answer.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub opened: Instant,
    pub closed: Option<Instant>,
}

/// The receiver; its server stops when it is dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Receiver {
    /// A receiver that acknowledges every report, on a free loopback port.
    pub async fn start() -> Receiver {
        Self::start_with("127.0.0.1:0", None).await
    }

    /// A receiver that speaks HTTPS with `tls`.
    pub async fn start_tls(tls: rustls::ServerConfig) -> Receiver {
        Self::start_tls_at("127.0.0.1:0", tls).await
    }

    /// A receiver that speaks HTTPS with `tls` on `addr` (in the calling thread's network
    /// namespace).
    pub async fn start_tls_at(addr: &str, tls: rustls::ServerConfig) -> Receiver {
        Self::start_with(addr, Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn start_with(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                mode: Mutex::new(Mode::Accept),
                reports: Mutex::default(),
                holds: Mutex::default(),
                refused_handshakes: Mutex::default(),
            }),
            tasks: Arc::default(),
            tls,
        };
        receiver.serve(listener);
        receiver
    }

    /// The URL to give the agent as `[report] url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://{}/v1/nodes/{}/reports",
            self.addr,
            super::NODE_ID
        )
    }

    /// TLS handshakes that failed (a client without an acceptable certificate, say).
    pub fn refused_handshakes(&self) -> usize {
        *self.shared.refused_handshakes.lock().unwrap()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Closes the port and every connection: a control plane that is down.
    pub fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = self.shared.clone();
        let tasks = self.tasks.clone();
        let tls = self.tls.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (shared, tls) = (shared.clone(), tls.clone());
                let conn = tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, shared).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve_connection(stream, shared).await,
                            Err(_) => *shared.refused_handshakes.lock().unwrap() += 1,
                        },
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Every report taken so far, in arrival order.
    pub fn reports(&self) -> Vec<Report> {
        self.shared.reports.lock().unwrap().clone()
    }

    /// Every request held without an answer so far.
    pub fn holds(&self) -> Vec<Hold> {
        self.shared.holds.lock().unwrap().clone()
    }

    /// When the latest request still held came, if one is.
    pub fn held_since(&self) -> Option<Instant> {
        self.holds()
            .iter()
            .rev()
            .find(|h| h.closed.is_none())
            .map(|h| h.opened)
    }

    /// Every change acknowledged so far, in arrival order: (appId, generation, change).
    pub fn acknowledged(&self) -> Vec<(String, u64, Value)> {
        self.reports()
            .iter()
            .filter(|r| r.acknowledged())
            .flat_map(Report::changes)
            .collect()
    }

    /// The latest acknowledged change of `app`.
    pub fn latest(&self, app: &str) -> Option<(u64, Value)> {
        self.acknowledged()
            .into_iter()
            .filter(|(id, _, _)| id == app)
            .map(|(_, g, c)| (g, c))
            .next_back()
    }

    /// The latest change of `app` in a report that came by `by` and was acknowledged.
    pub fn latest_by(&self, app: &str, by: Instant) -> Option<Value> {
        self.reports()
            .iter()
            .filter(|r| r.acknowledged() && r.at <= by)
            .flat_map(Report::changes)
            .filter(|(id, _, _)| id == app)
            .map(|(_, _, c)| c)
            .next_back()
    }

    /// Waits until an acknowledged change of `app` satisfies `wanted`, failing after
    /// [`super::PATIENCE`]; returns it.
    pub async fn wait_change(&self, app: &str, wanted: impl Fn(u64, &Value) -> bool) -> Value {
        self.wait(|| {
            self.acknowledged()
                .into_iter()
                .find(|(id, g, c)| id == app && wanted(*g, c))
                .map(|(_, _, c)| c)
        })
        .await
    }

    /// Polls `found` until it finds something, failing after [`super::PATIENCE`].
    pub async fn wait<T>(&self, mut found: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + super::PATIENCE;
        loop {
            if let Some(it) = found() {
                return it;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get what was awaited; it has: {:#?}",
                self.reports()
                    .iter()
                    .map(|r| (
                        r.status,
                        r.changes()
                            .into_iter()
                            .map(|(a, g, _)| (a, g))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that the generations acknowledged for each app never went down.
    pub fn assert_in_order(&self) {
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        for (app, g, _) in self.acknowledged() {
            let before = last.insert(app.clone(), g).unwrap_or(0);
            assert!(
                g >= before,
                "app {app}: generation {g} arrived after {before}"
            );
        }
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url())
            .finish()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Notes when a held request's connection goes.
struct HeldOpen(Arc<Shared>, usize);

impl Drop for HeldOpen {
    fn drop(&mut self) {
        self.0.holds.lock().unwrap()[self.1].closed = Some(Instant::now());
    }
}

async fn answer(
    shared: &Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mode = *shared.mode.lock().unwrap();
    let status = match mode {
        Mode::Accept => 200,
        Mode::Answer(s) => s,
        Mode::Hang => 0,
    };
    shared.reports.lock().unwrap().push(Report {
        status,
        at: Instant::now(),
        authorization,
        content_type,
        body,
    });
    if mode == Mode::Hang {
        let index = {
            let mut holds = shared.holds.lock().unwrap();
            holds.push(Hold {
                opened: Instant::now(),
                closed: None,
            });
            holds.len() - 1
        };
        let _open = HeldOpen(shared.clone(), index);
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}
