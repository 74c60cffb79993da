//! `node-agent`: a per-node daemon that stops application containers through the Docker Engine API,
//! records their final resource metrics, and keeps each app's record.
//!
//! A tour of the crate, from the outside in:
//!
//! - [`http`] parses requests and renders answers (the only module that knows status codes);
//! - [`agent`] is the core: it decides how an app is read, registered and stopped;
//! - [`lifecycle`] names the operations on an app (stop, start, restart); [`stop`] turns a stop
//!   request into engine calls; [`stats`] is `docker stats` arithmetic;
//! - [`policy`] says who may do what to which app; [`auth`] knows tokens and principals;
//! - [`runtime`] is the container engine behind a trait, with the bollard implementation;
//!   [`cgroup`] reads a running container's figures from the host's own files;
//! - [`store`] keeps records in SQLite, and is the outbox of [`report`], which pushes every change
//!   to the control plane; [`record`] is the record's shape;
//! - [`config`] reads the configuration; [`signals`] turns Unix signals into shutdown and reload;
//! - [`telemetry`] keeps the agent's own figures for `/metrics`; [`host`] reads the host's for
//!   `/v1/node`; [`notify`] tells systemd that the agent is ready, reloading, stopping or alive;
//!   [`background`] owns the long-lived tasks, which every exit of [`run`] ends.

pub mod agent;
pub mod auth;
pub mod background;
pub mod cgroup;
pub mod config;
pub mod events;
pub mod host;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod logind;
pub mod notify;
pub mod pem;
pub mod policy;
pub mod quota;
pub mod record;
pub mod report;
pub mod runtime;
pub mod signals;
pub mod stats;
pub mod stop;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, Limits};
use crate::auth::{TokenBook, Tokens, TokensError};
use crate::background::Background;
use crate::config::Config;
use crate::http::tls::{Tls, TlsError, TlsFiles};
use crate::record::WorkerNode;
use crate::report::{ReportError, Reporting};
use crate::runtime::ContainerRuntime;
use crate::runtime::docker::DockerRuntime;
use crate::store::{Store, StoreError};

/// Why the agent could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        err: std::io::Error,
    },
    #[error("cannot serve on the Unix socket {path}")]
    Socket {
        path: std::path::PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

impl RunError {
    /// The process exit code: 78 for bad configuration (including the tokens file and the TLS
    /// files), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            // A tokens file that cannot be created (a read-only /etc under systemd) needs a person
            // too: restarting will not help.
            RunError::Config(_)
            | RunError::Tls(_)
            | RunError::Report(_)
            | RunError::Tokens(
                TokensError::Invalid { .. }
                | TokensError::Exposed { .. }
                | TokensError::Owner { .. }
                | TokensError::NotCreatedUnderJournal { .. }
                | TokensError::Create { .. },
            ) => 78,
            // A path that is not a socket, or one the agent may not use, is the configuration's
            // fault; a socket that another process serves may free itself, so a restart may help.
            RunError::Socket { err, .. }
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                78
            }
            _ => 1,
        }
    }
}

/// Loads the tokens file, creating it with one fresh operator token when it does not exist; that
/// token is printed once on standard output. Where standard output is systemd's journal, the file
/// is not created: the journal would keep the token.
pub fn load_or_create_tokens(config: &Config) -> Result<TokenBook, TokensError> {
    let path = &config.auth.tokens_file;
    if !path.exists() {
        if stdout_is_the_journal() {
            return Err(TokensError::NotCreatedUnderJournal {
                path: path.to_owned(),
            });
        }
        let token = auth::create_tokens_file(path)?;
        println!(
            "Created {} with one operator token. It is shown once; keep it:\n{token}",
            path.display()
        );
        tracing::warn!(path = %path.display(), "created a tokens file with a fresh operator token");
    }
    TokenBook::load(path)
}

/// Whether standard output goes to systemd's journal: systemd names the journal's stream in
/// `JOURNAL_STREAM` as `device:inode` (systemd.exec(5)).
fn stdout_is_the_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.split_once(':') else {
        return false;
    };
    rustix::fs::fstat(std::io::stdout())
        .is_ok_and(|stat| device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino))
}

/// Everything the agent holds while it serves.
#[derive(Debug)]
pub struct Services {
    pub agent: Agent,
    pub tokens: Tokens,
    /// The report sender's settings, when `[report] url` is set.
    pub reporting: Option<Reporting>,
}

impl Services {
    /// Opens the store and the tokens, and reads the report settings; the engine is connected
    /// lazily, and the control plane only once the sender runs.
    pub fn open(config: &Config, background: &Background) -> Result<Services, RunError> {
        let reporting = Reporting::load(&config.report)?;
        let store = Store::open(&config.store.path)?.keeping_events(
            usize::try_from(config.history.per_app).unwrap_or(usize::MAX),
            config.report.url.is_some(),
        );
        let tokens = Tokens::new(load_or_create_tokens(config)?);
        let endpoint =
            config
                .docker_endpoint()
                .map_err(|message| config::ConfigError::BadValue {
                    path: "<loaded>".into(),
                    key: "docker.host",
                    message,
                })?;
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::new(endpoint));
        let node = WorkerNode {
            id: config.node.id.clone(),
            node_name: config.node.name.clone(),
        };
        let agent = Agent::new(runtime, store, node, Limits::of(config), background.clone());
        Ok(Services {
            agent,
            tokens,
            reporting,
        })
    }
}

/// Reads the TLS files the configuration names, if it names any.
pub fn load_tls(config: &Config) -> Result<Option<Tls>, TlsError> {
    config
        .tls
        .as_ref()
        .map(|t| {
            Tls::load(TlsFiles {
                cert: t.cert_file.clone(),
                key: t.key_file.clone(),
                client_ca: t.client_ca_file.clone(),
            })
        })
        .transpose()
}

/// Binds the listeners the configuration asks for: TCP (plain or TLS), and the Unix socket if one
/// is configured. The TLS files are read here, so a bad certificate stops start-up.
async fn bind_listeners(
    config: &Config,
) -> Result<(Vec<http::server::Listener>, Option<Tls>), RunError> {
    let tls = load_tls(config)?;
    let addr = config.http.listen.clone();
    let tcp = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|err| RunError::Listen {
            addr: addr.clone(),
            err,
        })?;
    let bound = tcp
        .local_addr()
        .map_err(|err| RunError::Listen { addr, err })?;
    let socket =
        match &config.http.unix_socket {
            Some(path) => Some(http::server::UnixSocket::bind(path).await.map_err(|err| {
                RunError::Socket {
                    path: path.clone(),
                    err,
                }
            })?),
            None => None,
        };
    // Logged once every listener is bound: a watcher of the log may connect at once.
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %bound,
        %scheme,
        client_certificates = tls.as_ref().is_some_and(Tls::verifies_clients),
        node = %config.node.id,
        "listening"
    );
    let mut listeners = vec![http::server::Listener::Tcp(tcp, tls.clone())];
    if let Some(socket) = socket {
        tracing::info!(
            socket = %socket.path().display(),
            trust_root = config.http.trust_root_on_socket,
            "serving on the Unix socket too"
        );
        listeners.push(http::server::Listener::Unix(socket));
    }
    Ok((listeners, tls))
}

/// Runs the agent until `shutdown` resolves (reloading tokens and TLS files at each item of
/// `reloads`), then lets in-flight requests and operations finish and flushes the store.
///
/// Every way out once the services are open, a drain that cannot be taken up, a server that ends
/// by itself and a listener that cannot be bound included, goes through one close: operations
/// under way finish (bounded), the background is shut down, and the store is checkpointed.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: impl futures_util::Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), RunError> {
    let background = Background::new();
    let services = Services::open(&config, &background)?;
    // A drained node refuses starts from its first request; a drain under way goes on. Nothing
    // runs yet, but the store is open: a failure here goes through the same close.
    if let Err(e) = services.agent.take_up_drain().await {
        close(&services.agent, &background, tokio::time::Instant::now()).await?;
        return Err(e.into());
    }
    // Records are reconciled with the engine, and followed through its events, in the background:
    // the agent serves at once, with or without the engine. Started before the listeners are
    // bound, so that the engine's connection and the first readings of the running apps are
    // under way by the time the first request comes.
    services.agent.spawn_watcher();
    // The node's shutdown, as logind announces it: the delay lock, and the resume of what the
    // last shutdown stopped.
    logind::spawn(services.agent.clone(), config.shutdown.clone(), &background);
    let drain = Duration::from_secs(config.stop.shutdown_drain_secs);
    let served = match bind_listeners(&config).await {
        Ok((listeners, tls)) => {
            // Changes are pushed to the control plane by a task of their own, which nothing waits
            // on.
            if let Some(reporting) = services.reporting.clone() {
                reporting.spawn(services.agent.report_sources(), &background);
            }
            signals::spawn_reload(
                signals::Reloadable {
                    tokens_file: config.auth.tokens_file.clone(),
                    tokens: services.tokens.clone(),
                    tls,
                    reporting: services.reporting.clone(),
                },
                reloads,
                &background,
            );
            let ctx = http::ApiContext {
                agent: services.agent.clone(),
                tokens: services.tokens.clone(),
                trust_root_on_socket: config.http.trust_root_on_socket,
                metrics_open: config.http.metrics_open,
            };
            let limits = http::server::ServerLimits {
                max_connections: config.http.max_connections,
                max_connections_per_peer: config
                    .http
                    .max_connections_per_peer
                    .min(config.http.max_connections),
                header_timeout: Duration::from_secs(config.http.header_timeout_secs),
                write_timeout: Duration::from_secs(config.http.write_timeout_secs),
            };
            let router = http::router(ctx);
            let stopping = CancellationToken::new();
            let serving = listeners
                .into_iter()
                .map(|listener| {
                    http::server::serve(listener, router.clone(), limits, stopping.clone())
                })
                .collect();
            notify::ready("serving");
            notify::spawn_watchdog(services.agent.store().clone(), &background);
            serve_until(serving, stopping, shutdown, drain).await
        }
        Err(e) => Served {
            deadline: tokio::time::Instant::now() + drain,
            outcome: Err(e),
        },
    };
    let closed = close(&services.agent, &background, served.deadline).await;
    served.outcome.and(closed)
}

/// How serving ended: why, and until when operations under way may still finish.
struct Served {
    deadline: tokio::time::Instant,
    outcome: Result<(), RunError>,
}

/// Waits for `shutdown`, or for a server to end by itself (it does only when it cannot go on);
/// then stops every server and lets the requests in flight finish, up to `drain`. Requests and
/// operations share that one bounded drain.
async fn serve_until(
    mut serving: tokio::task::JoinSet<()>,
    stopping: CancellationToken,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Served {
    let outcome = tokio::select! {
        ended = serving.join_next() => {
            let cause = match ended {
                Some(Err(e)) => std::io::Error::other(e),
                _ => std::io::Error::other("the HTTP server stopped"),
            };
            tracing::error!(error = %cause, "a server ended by itself; stopping");
            Err(RunError::Serve(cause))
        }
        () = shutdown => Ok(()),
    };
    stopping.cancel();
    notify::stopping();
    let deadline = tokio::time::Instant::now() + drain;
    tracing::info!(
        limit_secs = drain.as_secs(),
        "no new connections; finishing requests and operations under way"
    );
    let all_served = async { while serving.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_served).await.is_err() {
        tracing::warn!("requests still open at the drain limit; closing them");
        serving.abort_all();
    }
    Served { deadline, outcome }
}

/// The one close of every exit of [`run`]: operations under way finish (until `deadline`), the
/// background is shut down (what the report sender has not had acknowledged stays in the store,
/// and is sent after the next start), and the store is checkpointed.
async fn close(
    agent: &Agent,
    background: &Background,
    deadline: tokio::time::Instant,
) -> Result<(), RunError> {
    if tokio::time::timeout_at(deadline, agent.finish_operations())
        .await
        .is_err()
    {
        tracing::warn!("operations still under way at the drain limit; exiting");
    }
    background.shut_down().await;
    tracing::info!("flushing the store");
    agent.store().checkpoint().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Access, Principal};
    use crate::record::AppId;
    use crate::runtime::fake::FakeRuntime;
    use crate::stop::StopRequest;
    use crate::telemetry::Route;

    #[tokio::test]
    async fn a_server_ending_by_itself_still_leaves_a_clean_store() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("a.db");
        let fake = FakeRuntime::new(true);
        fake.add_running("ca", &["SIGTERM"]);
        let background = Background::new();
        let node = WorkerNode {
            id: "n".into(),
            node_name: "N".into(),
        };
        let agent = Agent::new(
            Arc::new(fake.clone()),
            Store::open(&db).expect("store"),
            node,
            Limits::default(),
            background.clone(),
        );
        let operator = Principal {
            name: "op".into(),
            access: Access::Operator,
        };
        let app = AppId::parse("a").expect("id");
        agent
            .register(&operator, &app, serde_json::json!({"containerId": "ca"}))
            .await
            .expect("register");
        agent.spawn_watcher();
        // A stop under way when the server gives up; the engine lets it end a little later.
        fake.gate("stop");
        agent
            .stop_in_background(&operator, &app, StopRequest::default(), Route::Okeanos)
            .await
            .expect("accepted");
        fake.entered().await;
        let engine = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            engine.release();
        });

        let mut serving = tokio::task::JoinSet::new();
        serving.spawn(async {});
        let served = serve_until(
            serving,
            CancellationToken::new(),
            std::future::pending(),
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(served.outcome, Err(RunError::Serve(_))));
        close(&agent, &background, served.deadline)
            .await
            .expect("closed");

        assert_eq!(background.running(), 0, "the background is shut down");
        let record = agent.store().get(&app).await.expect("get").expect("record");
        assert!(!record.online(), "the stop under way finished");
        let wal = std::fs::metadata(dir.path().join("a.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the store is checkpointed");
    }
}
