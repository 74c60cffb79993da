//! The wire to the control plane: the HTTPS client (rustls, the configured CA or the system's
//! roots, an optional client certificate), one POST of a report, and what its answer means.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};

use super::ReportError;
use crate::pem::{
    CLIENT_KEY_FILE, RootsError, TlsError, read_certificates, read_key, read_roots, rustls_message,
};
use crate::telemetry::ReportOutcome;

/// How long a report may take, from connecting to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// How much of a refusal's body is logged, and how much of any answer is read.
const LOGGED_BODY: usize = 512;
const ANSWER_READ_LIMIT: usize = 64 * 1024;

/// What the files of `[report]` say: the report token and the TLS settings.
#[derive(Clone)]
pub struct Credentials {
    /// The bearer token, as a header value (marked sensitive, so it is never printed).
    token: Arc<RwLock<HeaderValue>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { token: <hidden> }")
    }
}

impl Credentials {
    /// Credentials sending `header` (from [`read_token`]).
    pub fn new(header: HeaderValue) -> Credentials {
        Credentials {
            token: Arc::new(RwLock::new(header)),
        }
    }

    /// Puts a new token in force.
    pub fn replace(&self, header: HeaderValue) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = header;
    }

    fn header(&self) -> HeaderValue {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `Bearer <token>` as a sensitive header value; the error never quotes the token.
fn bearer(token: &str) -> Result<HeaderValue, String> {
    if token.is_empty() {
        return Err("its first line is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("its first line has characters a token cannot hold (spaces or controls, or beyond ASCII)".into());
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "its first line cannot be sent in a header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads the token from the first line of `path`, refusing the file like the tokens file; returns
/// the header that carries it.
pub fn read_token(path: &Path) -> Result<HeaderValue, ReportError> {
    let text = crate::auth::read_private_file(path, "report token file")?;
    let token = text.lines().next().unwrap_or("").trim();
    bearer(token).map_err(|message| ReportError::BadToken {
        path: path.to_owned(),
        message,
    })
}

/// The rustls client configuration: the CA file's certificates, else the system's roots; and the
/// client certificate, when one is configured.
pub fn client_tls(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, ReportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match ca_file {
        Some(path) => read_roots("report CA", path).map_err(|e| match e {
            RootsError::File(e) => ReportError::Tls(e),
            RootsError::Unusable(message) => ReportError::BadCa {
                path: path.to_owned(),
                message,
            },
        })?,
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(ReportError::NoRoots);
            }
            roots
        }
    };
    let builder = versions(provider)?.with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = read_certificates("report client certificate", cert)?;
            if chain.is_empty() {
                return Err(ReportError::Tls(TlsError::NoCertificate {
                    path: cert.to_owned(),
                }));
            }
            let key_der = read_key(CLIENT_KEY_FILE, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                ReportError::Tls(TlsError::Rejected {
                    message: format!(
                        "report client certificate {} with key {}: {}",
                        cert.display(),
                        key.display(),
                        rustls_message(&e)
                    ),
                })
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The configuration of a plain `http://` sender, which never makes a TLS connection.
pub fn no_tls() -> Result<ClientConfig, ReportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(versions(provider)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// A client configuration with the ring provider (named, so that nothing depends on a process-wide
/// default) and its safe TLS versions.
fn versions(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, ReportError> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            ReportError::Tls(TlsError::Rejected {
                message: rustls_message(&e),
            })
        })
}

/// The HTTP client of the report sender: one pool of kept-alive connections to the control plane.
#[derive(Clone)]
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: hyper::Uri,
    credentials: Credentials,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("uri", &self.uri).finish()
    }
}

/// How one POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// A 2xx: the batch is acknowledged.
    Acknowledged,
    /// A 4xx other than 408 and 429: the control plane will never take this batch.
    Rejected(String),
    /// Worth sending again: the outcome, why, and how long the control plane asked to wait.
    Transient {
        outcome: ReportOutcome,
        error: String,
        retry_after: Option<Duration>,
    },
}

impl Transport {
    /// A client for `uri`; plain `http://` is used only where the configuration allowed it
    /// (loopback, or said so).
    pub fn new(uri: hyper::Uri, tls: ClientConfig, credentials: Credentials) -> Transport {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1)
            .build(connector);
        Transport {
            client,
            uri,
            credentials,
        }
    }

    /// POSTs `body` and says what the answer means; never takes longer than [`REQUEST_TIMEOUT`].
    pub async fn post(&self, body: Vec<u8>) -> Answered {
        let request = hyper::Request::post(self.uri.clone())
            .header(AUTHORIZATION, self.credentials.header())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("node-agent/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Answered::Rejected(format!("the report could not be built: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, Utc::now()));
            // Only the start of an answer is ever logged: more is not read.
            let body = http_body_util::Limited::new(response.into_body(), ANSWER_READ_LIMIT)
                .collect()
                .await;
            let text = match body {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => String::new(),
            };
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, text))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => Answered::Transient {
                outcome: ReportOutcome::TimedOut,
                error: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                retry_after: None,
            },
            Ok(Err(e)) => Answered::Transient {
                outcome: ReportOutcome::Unreachable,
                error: chain(&e),
                retry_after: None,
            },
            Ok(Ok((status, retry_after, text))) => classify(status, retry_after, &text),
        }
    }
}

/// What an answer with `status` means for the batch.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Answered {
    let said = || {
        let excerpt: String = body.chars().take(LOGGED_BODY).collect();
        let excerpt = excerpt.trim();
        if excerpt.is_empty() {
            format!("the control plane answered {status}")
        } else {
            format!("the control plane answered {status}: {excerpt}")
        }
    };
    if status.is_success() {
        Answered::Acknowledged
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Answered::Transient {
            outcome: ReportOutcome::Retried,
            error: said(),
            retry_after,
        }
    } else if status.is_client_error() {
        Answered::Rejected(said())
    } else {
        // 1xx or 3xx: the URL is not a report receiver (redirects are not followed, so that the
        // token never goes anywhere else). Retried, in case it is a moment's misconfiguration.
        Answered::Transient {
            outcome: ReportOutcome::Retried,
            error: said(),
            retry_after,
        }
    }
}

/// `Retry-After` as a delay from `now`: whole seconds, or an HTTP date; capped at
/// [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// An error and its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        assert_eq!(classify(StatusCode::OK, None, ""), Answered::Acknowledged);
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None, ""),
            Answered::Acknowledged
        );
        for transient in [500, 502, 503, 408, 429] {
            let status = StatusCode::from_u16(transient).unwrap();
            let answered = classify(status, Some(Duration::from_secs(3)), "busy");
            assert!(
                matches!(
                    &answered,
                    Answered::Transient { outcome: ReportOutcome::Retried, retry_after: Some(d), error }
                        if *d == Duration::from_secs(3) && error.contains("busy")
                ),
                "{transient}: {answered:?}"
            );
        }
        for dropped in [400, 401, 403, 404, 409, 413, 422] {
            let status = StatusCode::from_u16(dropped).unwrap();
            assert!(
                matches!(classify(status, None, "no"), Answered::Rejected(e) if e.contains(&dropped.to_string())),
                "{dropped}"
            );
        }
        let long = "x".repeat(10_000);
        let Answered::Rejected(e) = classify(StatusCode::BAD_REQUEST, None, &long) else {
            panic!("400 is a rejection");
        };
        assert!(e.len() < 700, "{}", e.len());
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T19:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 19:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 18:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-3", now), None);
    }

    #[test]
    fn tokens_are_checked_and_never_quoted() {
        assert!(bearer("abc.DEF-123_~").is_ok());
        for bad in ["", "two words", "tab\there", "é"] {
            let e = bearer(bad).expect_err(bad);
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let c = Credentials::new(bearer("s3cret").unwrap());
        assert!(c.header().is_sensitive());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
