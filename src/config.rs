//! The daemon's configuration: the TOML file, its `NODE_AGENT__SECTION__KEY` overrides, and validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Prefix of the environment variables that override the configuration file.
pub const ENV_PREFIX: &str = "NODE_AGENT";

/// `[node] id` and `name` as the package ships them: a node left with them would report as every
/// other node left so, so they are refused.
pub const PLACEHOLDER_NODE_ID: &str = "unset-node-id";
pub const PLACEHOLDER_NODE_NAME: &str = "unset-node-name";

/// Longest grace period a stop may ask for, in seconds.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

/// Why a configuration could not be used. Every variant names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("configuration {path}: key `{key}`: {message}")]
    BadValue {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The whole configuration of one agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this node is, as the control plane knows it.
    pub node: NodeConfig,
    /// The HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// How to reach the Docker engine.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Where the app records live.
    #[serde(default)]
    pub store: StoreConfig,
    /// Defaults for stops.
    #[serde(default)]
    pub stop: StopConfig,
    /// Who may call the agent.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS for the TCP listener; absent means plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How the agent logs.
    #[serde(default)]
    pub log: LogConfig,
    /// Where the agent pushes every change of a record; absent `url` means no reports.
    #[serde(default)]
    pub report: ReportConfig,
    /// The node's own shutdown, as systemd-logind announces it.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Each app's event history.
    #[serde(default)]
    pub history: HistoryConfig,
}

/// Each app's event history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per app once the control plane has acknowledged them (every event is
    /// delivered first).
    #[serde(default = "default_events_per_app")]
    pub per_app: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            per_app: default_events_per_app(),
        }
    }
}

fn default_events_per_app() -> u64 {
    crate::store::DEFAULT_EVENTS_PER_APP as u64
}

/// The most events a configuration may keep per app.
pub const MAX_EVENTS_PER_APP: u64 = 100_000;

/// The node's shutdown: a logind delay lock, the drain it triggers, and the resume at boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Hold a systemd-logind delay lock, and drain the node when it shuts down.
    #[serde(default = "yes")]
    pub inhibit: bool,
    /// The deadline of the shutdown's drain: every container still running then is killed.
    #[serde(default = "default_shutdown_grace_secs")]
    pub grace_secs: u64,
    /// After the drain, how long the final records may take to reach the control plane before
    /// the lock is released.
    #[serde(default = "default_shutdown_report_secs")]
    pub report_secs: u64,
    /// At the next start, start again the apps the node's shutdown stopped.
    #[serde(default = "yes")]
    pub resume_on_boot: bool,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            inhibit: true,
            grace_secs: default_shutdown_grace_secs(),
            report_secs: default_shutdown_report_secs(),
            resume_on_boot: true,
        }
    }
}

impl ShutdownConfig {
    /// How long the lock holds the shutdown back at most: the drain, then the reports.
    pub fn budget_secs(&self) -> u64 {
        self.grace_secs + self.report_secs
    }
}

/// The longest shutdown drain and report time, in seconds.
pub const MAX_SHUTDOWN_SECS: u64 = 3600;

fn yes() -> bool {
    true
}

fn default_shutdown_grace_secs() -> u64 {
    30
}

fn default_shutdown_report_secs() -> u64 {
    5
}

/// Reports to the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// `https://…` (or `http://` on loopback) where each batch of changes is POSTed; unset means
    /// no reports.
    pub url: Option<String>,
    /// A file whose first line is the bearer token sent with each report; required with `url`,
    /// and refused like the tokens file when other users may read it.
    pub token_file: Option<PathBuf>,
    /// PEM certificates of the CAs the control plane's certificate must chain to; unset means the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain presented to the control plane (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Every record is sent again this often (and at start-up), so that a control plane that lost
    /// its state converges.
    #[serde(default = "default_resync_secs")]
    pub resync_secs: u64,
    /// Report over plain `http://` to a host that is not loopback. The token then crosses the
    /// network in clear, so the agent refuses that unless this says so.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            resync_secs: default_resync_secs(),
            allow_insecure_http: false,
        }
    }
}

fn default_resync_secs() -> u64 {
    300
}

/// Longest resync period, in seconds: a day.
pub const MAX_RESYNC_SECS: u64 = 86_400;

/// This node's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `workerNodeId._id` in every record, and the lambda instance id of the ~okeanos route.
    pub id: String,
    /// `workerNodeId.nodeName` in every record.
    pub name: String,
}

/// The listeners: TCP (plain or TLS), and an optional Unix socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on; port 0 picks a free port (logged at start-up).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Connections served at once (on each listener); further clients wait until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one address may hold at once on the TCP listener (loopback addresses too, each
    /// its own peer); one more is answered 429 and closed at once. Above `max_connections` it is
    /// `max_connections`; kept well below it, no one address can take the slots the others need.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Seconds a client has to send a request's headers (and finish a TLS handshake) before its
    /// connection is closed; also how long a kept-alive connection is kept idle after an answer.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds a write of an answer may make no progress (a client that does not read what it
    /// asked for) before the connection is closed.
    #[serde(default = "default_write_timeout_secs")]
    pub write_timeout_secs: u64,
    /// Serve plain HTTP on a non-loopback address. Tokens then cross the network in clear, so
    /// the agent refuses to start that way unless this says so.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A Unix socket to serve on as well (mode 0660), for administrators on the node.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// On the Unix socket, a caller whose peer credentials say uid 0 acts as operator without a token.
    #[serde(default)]
    pub trust_root_on_socket: bool,
    /// `GET /metrics` answers without a token (for a scraper on a trusted network).
    #[serde(default)]
    pub metrics_open: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            header_timeout_secs: default_header_timeout_secs(),
            write_timeout_secs: default_write_timeout_secs(),
            allow_insecure_http: false,
            unix_socket: None,
            trust_root_on_socket: false,
            metrics_open: false,
        }
    }
}

/// TLS for the TCP listener. The files are read again on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by this CA (PEM), as well as a token.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (one line per event) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
    /// The level or `tracing` filter, e.g. `info` or `node_agent=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

fn default_max_connections() -> usize {
    512
}

fn default_max_connections_per_peer() -> usize {
    128
}

fn default_header_timeout_secs() -> u64 {
    10
}

fn default_write_timeout_secs() -> u64 {
    30
}

fn default_listen() -> String {
    "127.0.0.1:8475".to_owned()
}

/// The Docker engine's address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///path/to/docker.sock`; unset means `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// Reach the engine over plain `tcp://` on a host that is not loopback. That is the engine's
    /// unauthenticated API, root on its host, open to the network, so the agent refuses it unless
    /// this says so.
    #[serde(default)]
    pub allow_insecure_tcp: bool,
}

/// The embedded SQLite store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Path of the database file; its directory is created if missing.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/node-agent/node-agent.db")
}

/// Stop defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopConfig {
    /// Grace period when a request gives none; unset means the container's own stop timeout.
    pub default_timeout_secs: Option<u32>,
    /// At shutdown, how long requests and stops under way may take to finish; keep it below the
    /// service manager's own stop timeout (systemd's `TimeoutStopSec`).
    #[serde(default = "default_shutdown_drain_secs")]
    pub shutdown_drain_secs: u64,
}

impl Default for StopConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: None,
            shutdown_drain_secs: default_shutdown_drain_secs(),
        }
    }
}

fn default_shutdown_drain_secs() -> u64 {
    60
}

/// Authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens file: names, roles and SHA-256 hashes of the accepted tokens.
    #[serde(default = "default_tokens_file")]
    pub tokens_file: PathBuf,
    /// The longest stop `timeout` a user token may ask for, in seconds (0–3600); longer is a 400.
    /// A user's stop cannot hold an app's guard, and a caller's answer, for an hour. Operators
    /// may ask for up to 3600.
    #[serde(default = "default_user_max_stop_timeout_secs")]
    pub user_max_stop_timeout_secs: u32,
    /// Concurrent `GET …/wait` calls one user token may hold (at least 1); more are refused with
    /// 429, so that one tenant's waits cannot take the agent's connections. Operators have no cap.
    #[serde(default = "default_max_waits_per_token")]
    pub max_waits_per_token: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: default_tokens_file(),
            user_max_stop_timeout_secs: default_user_max_stop_timeout_secs(),
            max_waits_per_token: default_max_waits_per_token(),
        }
    }
}

fn default_user_max_stop_timeout_secs() -> u32 {
    60
}

fn default_max_waits_per_token() -> usize {
    32
}

fn default_tokens_file() -> PathBuf {
    PathBuf::from("/etc/node-agent/tokens.toml")
}

impl ReportConfig {
    /// The report URL, once validated: its scheme, host and port.
    pub fn endpoint(&self) -> Result<Option<ReportEndpoint>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: expected https://… or http://…")),
        };
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(format!("{url:?} names no host"));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Some(ReportEndpoint { uri, https, host }))
    }

    fn validate(
        &self,
        bad: impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if !(1..=MAX_RESYNC_SECS).contains(&self.resync_secs) {
            return Err(bad(
                "report.resync_secs",
                format!("{} is not from 1 to {MAX_RESYNC_SECS}", self.resync_secs),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(bad(
                "report.client_cert_file",
                "client_cert_file and client_key_file go together: set both or neither".into(),
            ));
        }
        let Some(endpoint) = self.endpoint().map_err(|m| bad("report.url", m))? else {
            return Ok(());
        };
        if self.token_file.is_none() {
            return Err(bad(
                "report.token_file",
                "is required when report.url is set: a file holding the bearer token".into(),
            ));
        }
        if !endpoint.https && !endpoint.is_loopback() && !self.allow_insecure_http {
            return Err(bad(
                "report.url",
                format!(
                    "{} is plain HTTP to a host that is not loopback, which would carry the \
                     report token in clear: use https://, or set report.allow_insecure_http = \
                     true to accept that",
                    endpoint.uri
                ),
            ));
        }
        if !endpoint.https && (self.ca_file.is_some() || self.client_cert_file.is_some()) {
            return Err(bad(
                "report.url",
                format!(
                    "{} is plain HTTP, but report.ca_file or report.client_cert_file is set: \
                     use https://",
                    endpoint.uri
                ),
            ));
        }
        Ok(())
    }
}

/// Where reports go.
#[derive(Debug, Clone)]
pub struct ReportEndpoint {
    pub uri: hyper::Uri,
    pub https: bool,
    /// The host, without the brackets of an IPv6 address.
    pub host: String,
}

impl ReportEndpoint {
    /// Whether the host is a loopback address, or `localhost`.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// Whether `host` (without the brackets of an IPv6 address) is a loopback address, or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `tcp://host:port` engine address names a loopback host.
fn is_loopback_address(address: &str) -> bool {
    let rest = address.strip_prefix("tcp://").unwrap_or(address);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    is_loopback_host(host)
}

/// The validated listener address, and where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port`, plain HTTP.
    Http(String),
}

impl Config {
    /// Reads `path`, applies environment overrides and validates every value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests use this).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        let invalid = |e: config::ConfigError| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(invalid)?;
        let config: Config = raw.try_deserialize().map_err(invalid)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::BadValue {
            path: path.to_owned(),
            key,
            message,
        };
        if self.node.id.trim().is_empty() {
            return Err(bad("node.id", "must not be empty".into()));
        }
        for (key, value, least) in [
            ("shutdown.grace_secs", self.shutdown.grace_secs, 1),
            ("shutdown.report_secs", self.shutdown.report_secs, 0),
        ] {
            if !(least..=MAX_SHUTDOWN_SECS).contains(&value) {
                return Err(bad(
                    key,
                    format!("{value} is not from {least} to {MAX_SHUTDOWN_SECS}"),
                ));
            }
        }
        if !(1..=MAX_EVENTS_PER_APP).contains(&self.history.per_app) {
            return Err(bad(
                "history.per_app",
                format!(
                    "{} is not from 1 to {MAX_EVENTS_PER_APP}",
                    self.history.per_app
                ),
            ));
        }
        if self.node.name.trim().is_empty() {
            return Err(bad("node.name", "must not be empty".into()));
        }
        for (key, value, placeholder, what) in [
            (
                "node.id",
                &self.node.id,
                PLACEHOLDER_NODE_ID,
                "this node's id (workerNodeId._id)",
            ),
            (
                "node.name",
                &self.node.name,
                PLACEHOLDER_NODE_NAME,
                "this node's name (workerNodeId.nodeName)",
            ),
        ] {
            if value.trim() == placeholder {
                return Err(bad(
                    key,
                    format!(
                        "is still the package's placeholder {placeholder:?}: set it to {what} as \
                         the control plane knows it, or every node left so would report as one"
                    ),
                ));
            }
        }
        let listen = self.listen_addr().map_err(|e| {
            bad(
                "http.listen",
                format!("{:?} is not an address:port ({e})", self.http.listen),
            )
        })?;
        if !listen.ip().is_loopback() && self.tls.is_none() && !self.http.allow_insecure_http {
            return Err(bad(
                "http.listen",
                format!(
                    "{listen} is not a loopback address, and plain HTTP would carry tokens over \
                     the network in clear: configure [tls] cert_file and key_file, or set \
                     http.allow_insecure_http = true to accept that"
                ),
            ));
        }
        if let Some(socket) = &self.http.unix_socket
            && !socket.is_absolute()
        {
            return Err(bad(
                "http.unix_socket",
                format!("{} is not an absolute path", socket.display()),
            ));
        }
        if self.http.trust_root_on_socket && self.http.unix_socket.is_none() {
            return Err(bad(
                "http.trust_root_on_socket",
                "is set, but no http.unix_socket is configured".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            bad(
                "log.level",
                format!("{:?} is not a filter: {e}", self.log.level),
            )
        })?;
        if let DockerEndpoint::Http(address) =
            self.docker_endpoint().map_err(|m| bad("docker.host", m))?
            && !self.docker.allow_insecure_tcp
            && !is_loopback_address(&address)
        {
            return Err(bad(
                "docker.host",
                format!(
                    "{address} is the engine's API in plain TCP to a host that is not loopback: \
                     unauthenticated, and root on that host, for anyone on the network; use the \
                     engine's Unix socket, or set docker.allow_insecure_tcp = true to accept that"
                ),
            ));
        }
        if let Some(t) = self.stop.default_timeout_secs
            && t > MAX_STOP_TIMEOUT_SECS
        {
            return Err(bad(
                "stop.default_timeout_secs",
                format!("{t} is above the limit of {MAX_STOP_TIMEOUT_SECS} seconds"),
            ));
        }
        if self.http.max_connections == 0 {
            return Err(bad("http.max_connections", "must be at least 1".into()));
        }
        if self.http.max_connections_per_peer == 0 {
            return Err(bad(
                "http.max_connections_per_peer",
                "must be at least 1".into(),
            ));
        }
        if !(1..=300).contains(&self.http.header_timeout_secs) {
            return Err(bad(
                "http.header_timeout_secs",
                format!("{} is not from 1 to 300", self.http.header_timeout_secs),
            ));
        }
        if !(1..=300).contains(&self.http.write_timeout_secs) {
            return Err(bad(
                "http.write_timeout_secs",
                format!("{} is not from 1 to 300", self.http.write_timeout_secs),
            ));
        }
        if self.stop.shutdown_drain_secs > u64::from(MAX_STOP_TIMEOUT_SECS) {
            return Err(bad(
                "stop.shutdown_drain_secs",
                format!(
                    "{} is above {MAX_STOP_TIMEOUT_SECS}",
                    self.stop.shutdown_drain_secs
                ),
            ));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(bad("store.path", "must not be empty".into()));
        }
        if self.auth.tokens_file.as_os_str().is_empty() {
            return Err(bad("auth.tokens_file", "must not be empty".into()));
        }
        if self.auth.user_max_stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
            return Err(bad(
                "auth.user_max_stop_timeout_secs",
                format!(
                    "{} is not from 0 to {MAX_STOP_TIMEOUT_SECS}",
                    self.auth.user_max_stop_timeout_secs
                ),
            ));
        }
        if self.auth.max_waits_per_token == 0 {
            return Err(bad("auth.max_waits_per_token", "must be at least 1".into()));
        }
        self.report.validate(bad)
    }

    /// The TCP address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.http.listen.parse()
    }

    /// Where the Docker engine is: `[docker] host`, else `DOCKER_HOST`, else the local socket.
    pub fn docker_endpoint(&self) -> Result<DockerEndpoint, String> {
        let host = match &self.docker.host {
            Some(h) => h.clone(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned()),
        };
        parse_docker_host(&host)
    }
}

fn parse_docker_host(host: &str) -> Result<DockerEndpoint, String> {
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!("{host:?}: a unix socket path must be absolute"));
        }
        return Ok(DockerEndpoint::Unix(PathBuf::from(path)));
    }
    for scheme in ["tcp://", "http://"] {
        if let Some(rest) = host.strip_prefix(scheme) {
            if rest.is_empty() {
                return Err(format!("{host:?}: no address after {scheme}"));
            }
            return Ok(DockerEndpoint::Http(format!("tcp://{rest}")));
        }
    }
    Err(format!(
        "{host:?}: expected unix:///path, tcp://host:port or http://host:port"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(contents.as_bytes()).expect("write");
        f
    }

    const MINIMAL: &str = "[node]\nid = \"n1\"\nname = \"ODIN\"\n";

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node-agent.toml");
        let config = Config::load_with_env(&path, []).expect("shipped config is valid");
        assert_eq!(config.node.name, "ODIN");
        assert!(config.listen_addr().expect("addr").ip().is_loopback());
    }

    #[test]
    fn defaults_fill_optional_sections() {
        let f = write(MINIMAL);
        let config = Config::load_with_env(f.path(), []).expect("valid");
        assert_eq!(config.http.listen, "127.0.0.1:8475");
        assert_eq!(config.stop.default_timeout_secs, None);
        assert_eq!(config.history.per_app, 200);
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = write(&format!(
            "{MINIMAL}[http]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n"
        ));
        let err = Config::load_with_env(f.path(), []).expect_err("unknown key");
        assert!(err.to_string().contains("listne"), "{err}");
        let f = write(&format!("{MINIMAL}[surprise]\nx = 1\n"));
        let err = Config::load_with_env(f.path(), []).expect_err("unknown section");
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = write(MINIMAL);
        let env = [
            (
                "NODE_AGENT__HTTP__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            (
                "NODE_AGENT__STOP__DEFAULT_TIMEOUT_SECS".to_owned(),
                "7".to_owned(),
            ),
            ("NODE_AGENT__NODE__ID".to_owned(), "600".to_owned()),
        ];
        let config = Config::load_with_env(f.path(), env).expect("valid");
        assert_eq!(config.http.listen, "127.0.0.1:9999");
        assert_eq!(config.stop.default_timeout_secs, Some(7));
        assert_eq!(config.node.id, "600");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
            (
                "[stop]\ndefault_timeout_secs = 4000\n",
                "stop.default_timeout_secs",
            ),
            ("[docker]\nhost = \"ftp://x\"\n", "docker.host"),
            (
                "[http]\nmax_connections_per_peer = 0\n",
                "http.max_connections_per_peer",
            ),
            (
                "[http]\nwrite_timeout_secs = 0\n",
                "http.write_timeout_secs",
            ),
            ("[history]\nper_app = 0\n", "history.per_app"),
            ("[history]\nper_app = 100001\n", "history.per_app"),
        ] {
            let f = write(&format!("{MINIMAL}{extra}"));
            let err = Config::load_with_env(f.path(), []).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let f = write("[node]\nname = \"x\"\n");
        let err = Config::load_with_env(f.path(), []).expect_err("missing id");
        assert!(err.to_string().contains("id"), "{err}");
    }

    #[test]
    fn plain_http_off_loopback_is_refused_unless_allowed_or_tls() {
        let off = "[http]\nlisten = \"0.0.0.0:8475\"\n";
        let f = write(&format!("{MINIMAL}{off}"));
        let err = Config::load_with_env(f.path(), []).expect_err("plain HTTP off loopback");
        let text = err.to_string();
        assert!(
            text.contains("http.listen") && text.contains("in clear"),
            "{text}"
        );
        assert!(text.contains("allow_insecure_http"), "{text}");

        let f = write(&format!("{MINIMAL}{off}allow_insecure_http = true\n"));
        Config::load_with_env(f.path(), []).expect("allowed explicitly");

        let tls = "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let f = write(&format!("{MINIMAL}{off}{tls}"));
        let config = Config::load_with_env(f.path(), []).expect("TLS off loopback");
        assert!(config.tls.is_some());

        let f = write(&format!("{MINIMAL}[http]\nlisten = \"[::1]:0\"\n"));
        Config::load_with_env(f.path(), []).expect("IPv6 loopback is fine");
    }

    #[test]
    fn socket_and_log_settings() {
        let f = write(&format!("{MINIMAL}[http]\ntrust_root_on_socket = true\n"));
        let err = Config::load_with_env(f.path(), []).expect_err("trust without a socket");
        assert!(err.to_string().contains("trust_root_on_socket"), "{err}");

        let f = write(&format!(
            "{MINIMAL}[http]\nunix_socket = \"relative.sock\"\n"
        ));
        let err = Config::load_with_env(f.path(), []).expect_err("relative socket");
        assert!(err.to_string().contains("http.unix_socket"), "{err}");

        let f = write(&format!("{MINIMAL}[log]\nformat = \"json\"\n"));
        let config = Config::load_with_env(f.path(), []).expect("json logs");
        assert_eq!(config.log.format, LogFormat::Json);
        let f = write(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"));
        let err = Config::load_with_env(f.path(), []).expect_err("unknown format");
        assert!(err.to_string().contains("xml"), "{err}");
        let f = write(&format!("{MINIMAL}[log]\nlevel = \"info,[\"\n"));
        let err = Config::load_with_env(f.path(), []).expect_err("bad filter");
        assert!(err.to_string().contains("log.level"), "{err}");
    }

    #[test]
    fn report_settings() {
        let f = write(MINIMAL);
        let config = Config::load_with_env(f.path(), []).expect("no reports");
        assert!(config.report.url.is_none());
        assert_eq!(config.report.resync_secs, 300);

        let ok =
            "[report]\nurl = \"https://cp.example/v1/nodes/n1/reports\"\ntoken_file = \"/t\"\n";
        let f = write(&format!("{MINIMAL}{ok}"));
        let config = Config::load_with_env(f.path(), []).expect("https");
        let endpoint = config.report.endpoint().expect("url").expect("set");
        assert!(endpoint.https && !endpoint.is_loopback());

        for (report, key, words) in [
            (
                "url = \"https://cp.example/r\"\n",
                "report.token_file",
                "required",
            ),
            (
                "url = \"ftp://cp/r\"\ntoken_file = \"/t\"\n",
                "report.url",
                "expected",
            ),
            (
                "url = \"not a url\"\ntoken_file = \"/t\"\n",
                "report.url",
                "not a URL",
            ),
            (
                "url = \"http://cp.example/r\"\ntoken_file = \"/t\"\n",
                "report.url",
                "in clear",
            ),
            (
                "url = \"http://127.0.0.1:9/r\"\ntoken_file = \"/t\"\nca_file = \"/ca\"\n",
                "report.url",
                "plain HTTP",
            ),
            ("resync_secs = 0\n", "report.resync_secs", "not from 1"),
            (
                "client_cert_file = \"/c\"\n",
                "report.client_cert_file",
                "together",
            ),
            ("urll = \"x\"\n", "urll", ""),
        ] {
            let f = write(&format!("{MINIMAL}[report]\n{report}"));
            let err = Config::load_with_env(f.path(), [])
                .expect_err(key)
                .to_string();
            assert!(err.contains(key) && err.contains(words), "{report}: {err}");
        }
        for allowed in [
            "url = \"http://127.0.0.1:9/r\"\ntoken_file = \"/t\"\n",
            "url = \"http://[::1]:9/r\"\ntoken_file = \"/t\"\n",
            "url = \"http://localhost:9/r\"\ntoken_file = \"/t\"\n",
            "url = \"http://cp.example/r\"\ntoken_file = \"/t\"\nallow_insecure_http = true\n",
        ] {
            let f = write(&format!("{MINIMAL}[report]\n{allowed}"));
            Config::load_with_env(f.path(), []).expect(allowed);
        }
    }

    #[test]
    fn docker_hosts() {
        assert_eq!(
            parse_docker_host("unix:///run/d.sock"),
            Ok(DockerEndpoint::Unix("/run/d.sock".into()))
        );
        assert_eq!(
            parse_docker_host("tcp://127.0.0.1:2375"),
            Ok(DockerEndpoint::Http("tcp://127.0.0.1:2375".into()))
        );
        assert!(parse_docker_host("unix://relative").is_err());
    }

    #[test]
    fn plain_tcp_engines_off_loopback_are_refused_unless_allowed() {
        for host in [
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
            "tcp://[::1]:2375",
            "http://127.0.0.2:2375",
            "unix:///var/run/docker.sock",
        ] {
            let f = write(&format!("{MINIMAL}[docker]\nhost = \"{host}\"\n"));
            Config::load_with_env(f.path(), []).expect(host);
        }
        for host in [
            "tcp://10.0.0.5:2375",
            "tcp://docker.example:2375",
            "http://[2001:db8::1]:2375",
            "tcp://0.0.0.0:2375",
            "tcp://127.0.0.1.example:2375",
        ] {
            let f = write(&format!("{MINIMAL}[docker]\nhost = \"{host}\"\n"));
            let err = Config::load_with_env(f.path(), [])
                .expect_err(host)
                .to_string();
            assert!(
                err.contains("docker.host") && err.contains("docker.allow_insecure_tcp"),
                "{host}: {err}"
            );
            let f = write(&format!(
                "{MINIMAL}[docker]\nhost = \"{host}\"\nallow_insecure_tcp = true\n"
            ));
            Config::load_with_env(f.path(), []).expect(host);
        }
        // DOCKER_HOST is held to the same rule when the file names no engine.
        let f = write(MINIMAL);
        let env = [(
            "NODE_AGENT__DOCKER__HOST".to_owned(),
            "tcp://192.0.2.7:2375".to_owned(),
        )];
        let err = Config::load_with_env(f.path(), env).expect_err("env override");
        assert!(err.to_string().contains("docker.host"), "{err}");
    }

    #[test]
    fn the_packages_placeholder_ids_are_refused_naming_the_key() {
        for (node, key) in [
            ("id = \"unset-node-id\"\nname = \"ODIN\"\n", "node.id"),
            ("id = \"n1\"\nname = \"unset-node-name\"\n", "node.name"),
        ] {
            let f = write(&format!("[node]\n{node}"));
            let err = Config::load_with_env(f.path(), [])
                .expect_err(key)
                .to_string();
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains("placeholder"),
                "{err}"
            );
        }
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/node-agent.toml");
        let err = Config::load_with_env(&shipped, [])
            .expect_err("the package's configuration, until the node is set")
            .to_string();
        assert!(err.contains("node.id"), "{err}");
        let env = [
            (
                "NODE_AGENT__NODE__ID".to_owned(),
                "60c72b2f9b1e8d001c8e4f3c".to_owned(),
            ),
            ("NODE_AGENT__NODE__NAME".to_owned(), "ODIN".to_owned()),
        ];
        Config::load_with_env(&shipped, env).expect("the package's configuration, once set");
    }
}
