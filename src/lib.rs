//! `node-agent`: a per-node daemon that stops application containers through the Docker Engine API,
//! records their final resource metrics, and keeps each app's record.
//!
//! A tour of the crate, from the outside in:
//!
//! - [`http`] parses requests and renders answers (the only module that knows status codes);
//! - [`agent`] is the core: it decides how an app is read, registered and stopped;
//! - [`stop`] turns a stop request into engine calls; [`metrics`] computes `docker stats` figures;
//! - [`policy`] says who may do what to which app; [`auth`] knows tokens and principals;
//! - [`runtime`] is the container engine behind a trait, with the bollard implementation;
//!   [`cgroup`] reads a running container's figures from the host's own files;
//! - [`store`] keeps records in SQLite, and is the outbox of [`report`], which pushes every change
//!   to the control plane; [`record`] is the record's shape;
//! - [`config`] reads the configuration; [`signals`] turns Unix signals into shutdown and reload;
//! - [`telemetry`] keeps the agent's own figures for `/metrics`; [`host`] reads the host's for
//!   `/v1/node`; [`notify`] tells systemd that the agent is ready, reloading, stopping or alive.

pub mod agent;
pub mod auth;
pub mod cgroup;
pub mod config;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod operation;
pub mod pem;
pub mod policy;
pub mod quota;
pub mod record;
pub mod report;
pub mod runtime;
pub mod signals;
pub mod stop;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, Limits};
use crate::auth::{TokenBook, Tokens, TokensError};
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
    pub fn open(config: &Config) -> Result<Services, RunError> {
        let reporting = Reporting::load(&config.report)?;
        let store = Store::open(&config.store.path)?;
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
        let agent = Agent::new(runtime, store, node, Limits::of(config));
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
/// `reloads`), then lets in-flight requests and stops finish and flushes the store.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: impl futures_util::Stream<Item = ()> + Send + Unpin + 'static,
) -> Result<(), RunError> {
    let services = Services::open(&config)?;
    // Records are reconciled with the engine, and followed through its events, in the background:
    // the agent serves at once, with or without the engine. Started before the listeners are
    // bound, so that the engine's connection and the first readings of the running apps are
    // under way by the time the first request comes.
    let watcher = services.agent.spawn_watcher();
    let (listeners, tls) = match bind_listeners(&config).await {
        Ok(bound) => bound,
        Err(e) => {
            watcher.abort();
            return Err(e);
        }
    };

    // Changes are pushed to the control plane by a task of their own, which nothing waits on.
    let reporter_stop = CancellationToken::new();
    let reporter = services
        .reporting
        .clone()
        .map(|r| r.spawn(services.agent.clone(), reporter_stop.clone()));
    signals::spawn_reload(
        signals::Reloadable {
            tokens_file: config.auth.tokens_file.clone(),
            tokens: services.tokens.clone(),
            tls,
            reporting: services.reporting.clone(),
        },
        reloads,
    );

    let ctx = http::ApiContext {
        agent: services.agent.clone(),
        tokens: services.tokens.clone(),
        trust_root_on_socket: config.http.trust_root_on_socket,
        metrics_open: config.http.metrics_open,
    };
    let router = http::router(ctx);
    let stopping = CancellationToken::new();
    let limits = http::server::ServerLimits {
        max_connections: config.http.max_connections,
        max_connections_per_peer: config
            .http
            .max_connections_per_peer
            .min(config.http.max_connections),
        header_timeout: Duration::from_secs(config.http.header_timeout_secs),
        write_timeout: Duration::from_secs(config.http.write_timeout_secs),
    };
    let mut serving: tokio::task::JoinSet<()> = listeners
        .into_iter()
        .map(|listener| http::server::serve(listener, router.clone(), limits, stopping.clone()))
        .collect();
    notify::ready("serving");
    let watchdog = notify::spawn_watchdog(services.agent.store().clone());
    tokio::select! {
        ended = serving.join_next() => {
            // A server ends by itself only when it cannot go on.
            if let Some(Err(e)) = ended {
                return Err(RunError::Serve(std::io::Error::other(e)));
            }
            return Err(RunError::Serve(std::io::Error::other("the HTTP server stopped")));
        }
        () = shutdown => stopping.cancel(),
    }
    notify::stopping();
    // From here, requests in flight and stops under way (background ones included) share one
    // bounded drain.
    let drain = Duration::from_secs(config.stop.shutdown_drain_secs);
    let deadline = tokio::time::Instant::now() + drain;
    tracing::info!(
        limit_secs = drain.as_secs(),
        "no new connections; finishing requests and stops under way"
    );
    let all_served = async { while serving.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_served).await.is_err() {
        tracing::warn!("requests still open at the drain limit; closing them");
        serving.abort_all();
    }
    if tokio::time::timeout_at(deadline, services.agent.drain_stops())
        .await
        .is_err()
    {
        tracing::warn!("stops still under way at the drain limit; exiting");
    }
    watcher.abort();
    // What is not acknowledged stays in the store, and is sent after the next start.
    reporter_stop.cancel();
    if let Some(r) = reporter {
        let _ = r.await;
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("flushing the store");
    services.agent.store().checkpoint().await?;
    tracing::info!("stopped");
    Ok(())
}
