//! The agent behind an allow-list proxy of the engine's socket, as docs/security.md
//! shows: registrations, reads, stops, starts and restarts work through a proxy that forwards only
//! the engine endpoints docs/security.md lists, and answers 403 to everything else. Should the agent
//! need an endpoint that is not on the list, this test fails naming it, so that the list (and the
//! document) stays true.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{AgentOptions, AgentProcess, Workload, app_id, engine_socket};
use bollard::models::{RestartPolicy, RestartPolicyNameEnum};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The engine endpoints the agent uses, as method and path; `{id}` is a container's id or name.
/// Every path may carry the API version bollard negotiates (`/v1.41/…`). docs/security.md's "The engine's
/// socket" lists the same, each as `METHOD path`.
const ALLOWED: [(&str, &str); 12] = [
    ("GET", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/events"),
    ("GET", "/containers/json"),
    ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/stats"),
    ("POST", "/containers/{id}/stop"),
    ("POST", "/containers/{id}/kill"),
    ("POST", "/containers/{id}/wait"),
    ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/update"),
];

/// The path without the API version prefix (`/v1.41`), if it has one.
fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let numeric = version.split_once('.').is_some_and(|(major, minor)| {
        [major, minor]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if numeric { &rest[end..] } else { path }
}

/// The allow-list entry a request matches, if any.
fn allowed(method: &str, path: &str) -> Option<(&'static str, &'static str)> {
    let path = unversioned(path);
    let segments: Vec<&str> = path.split('/').collect();
    ALLOWED.into_iter().find(|(m, pattern)| {
        let wanted: Vec<&str> = pattern.split('/').collect();
        *m == method
            && wanted.len() == segments.len()
            && wanted.iter().zip(&segments).all(|(w, s)| {
                if *w == "{id}" {
                    // A container's id or name: no other path may pass for one.
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                } else {
                    w == s
                }
            })
    })
}

type Body = BoxBody<Bytes, hyper::Error>;

/// What the proxy saw: the entries of the list that were used, and every request it refused.
#[derive(Debug, Default)]
struct Seen {
    used: Vec<(&'static str, &'static str)>,
    refused: Vec<String>,
}

/// A Unix-socket HTTP/1.1 proxy in front of the engine's socket that forwards the requests
/// [`ALLOWED`] lets through, each on a connection of its own, and answers 403 to the others.
struct AllowListProxy {
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

impl AllowListProxy {
    fn open() -> AllowListProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine-allowlist.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let accept = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let seen = seen.clone();
                            async move { Ok::<_, hyper::Error>(answer(req, &seen).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(client), service)
                            .await;
                    });
                }
            })
        };
        AllowListProxy {
            path,
            seen,
            _dir: dir,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Fails, naming them, if the agent called endpoints that are not on the list during `step`.
    fn assert_nothing_refused(&self, step: &str) {
        let refused = self.seen.lock().unwrap().refused.clone();
        assert!(
            refused.is_empty(),
            "{step}: the agent called engine endpoints that are not on the allow-list (add them to \
             ALLOWED and to docs/security.md, or stop calling them): {refused:?}"
        );
    }
}

impl Drop for AllowListProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards an allowed request to the engine and streams its answer back (events and stats are
/// long answers); refuses any other with 403.
async fn answer(req: Request<Incoming>, seen: &Mutex<Seen>) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let Some(entry) = allowed(&method, &path) else {
        seen.lock()
            .unwrap()
            .refused
            .push(format!("{method} {path}"));
        return plain(
            StatusCode::FORBIDDEN,
            format!("{{\"message\":\"{method} {path} is not on the allow-list\"}}"),
        );
    };
    {
        let mut seen = seen.lock().unwrap();
        if !seen.used.contains(&entry) {
            seen.used.push(entry);
        }
    }
    let engine = match tokio::net::UnixStream::connect(engine_socket()).await {
        Ok(engine) => engine,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("engine: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(engine)).await
    {
        Ok(pair) => pair,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("engine: {e}")),
    };
    tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(e) => plain(StatusCode::BAD_GATEWAY, format!("engine: {e}")),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

#[test]
fn the_list_matches_what_it_should_and_nothing_else() {
    for (method, path) in [
        ("GET", "/v1.41/_ping"),
        ("GET", "/version"),
        ("GET", "/v1.47/containers/na-test-1.x_y/json"),
        ("POST", "/v1.52/containers/0123abcd/stop"),
        ("POST", "/v1.41/containers/abc/update"),
    ] {
        assert!(allowed(method, path).is_some(), "{method} {path}");
    }
    for (method, path) in [
        ("POST", "/v1.41/containers/create"),
        ("DELETE", "/v1.41/containers/abc"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("GET", "/v1.41/containers/abc/archive"),
        ("GET", "/v1.41/images/json"),
        ("POST", "/v1.41/containers/../images/stop"),
        ("GET", "/vx/_ping"),
        ("GET", "/v1.41/containers/abc/json/extra"),
        ("POST", "/v1.41/containers//start"),
    ] {
        assert!(allowed(method, path).is_none(), "{method} {path}");
    }
}

#[test]
fn the_security_document_lists_every_endpoint_on_the_list() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    for (method, path) in ALLOWED {
        let listed = format!("`{method} {path}`");
        assert!(
            readme.contains(&listed),
            "docs/security.md does not list {listed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_starts_and_reads_work_through_an_allow_list_proxy_of_the_socket() {
    let proxy = AllowListProxy::open();
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(proxy.url()),
        ..Default::default()
    });
    let client = agent.client();

    // A restart policy, so that the stop sets it aside and the start gives it back (an update
    // each).
    let w = Workload::start_with("exit", |body| {
        body.host_config.as_mut().unwrap().restart_policy = Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        });
    })
    .await;
    let id = app_id();
    let registered = client.register(&id, &w.name).await;
    proxy.assert_nothing_refused("the registration");
    assert_eq!(
        registered.body["currentResourceMetrics"]["online"], true,
        "{registered:?}"
    );
    let read = client.get(&format!("/v1/apps/{id}")).await;
    let ready = client.get("/readyz").await;
    proxy.assert_nothing_refused("the read");
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(ready.status, 200, "{ready:?}");

    let stopped = client.stop_query(&id, "?timeout=5&signal=SIGINT").await;
    proxy.assert_nothing_refused("the stop");
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(stopped.body["currentResourceMetrics"]["online"], false);
    assert!(!w.running().await, "the container is down");

    let started = client.start(&id).await;
    proxy.assert_nothing_refused("the start");
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(started.body["currentResourceMetrics"]["online"], true);
    assert!(w.running().await, "the container runs again");

    let restarted = client.restart(&id).await;
    proxy.assert_nothing_refused("the restart");
    assert_eq!(restarted.status, 200, "{restarted:?}");
    let stopped = client.stop_query(&id, "?timeout=0").await;
    let list = client.get("/v1/apps").await;
    proxy.assert_nothing_refused("the kill and the list");
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(list.status, 200, "{list:?}");

    // The proxy refuses what is not on the list.
    let (status, body) = refused_directly(&proxy).await;
    assert_eq!(status, 403, "{body}");

    let seen = proxy.seen.lock().unwrap();
    for needed in [
        ("POST", "/containers/{id}/stop"),
        ("POST", "/containers/{id}/start"),
        ("POST", "/containers/{id}/update"),
        ("GET", "/containers/{id}/json"),
        ("GET", "/version"),
    ] {
        assert!(
            seen.used.contains(&needed),
            "{needed:?} did not go through the proxy: {:?}",
            seen.used
        );
    }
    eprintln!("endpoints the agent used: {:?}", seen.used);
    let errors = agent.logged(&["docker_error"]);
    assert!(errors.is_empty(), "{errors:?}");
}

/// `GET /v1.41/images/json` straight to the proxy: not on the list.
async fn refused_directly(proxy: &AllowListProxy) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/v1.41/images/json")
        .header("host", "docker")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the proxy answers")
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
