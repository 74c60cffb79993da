//! Extractors: the authenticated caller, the app id from the path, bounded bodies and strict queries.
//! Each refuses with a `/v1` JSON error.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::http::request::Parts;
use http_body_util::BodyExt;

use super::refusals::{self, Refusal, clip};
use super::server::Transport;
use super::{ApiContext, ApiError, MAX_BODY_BYTES};
use crate::auth::{Access, Principal};
use crate::record::AppId;

/// An authenticated caller: adding it to a handler's arguments makes the route require a token.
#[derive(Debug)]
pub struct Caller(pub Principal);

/// The token in an `Authorization` header: `Bearer <token>` or `Token <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or("an Authorization header (Bearer or Token) is required")?;
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not readable text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the Authorization header must be `Bearer <token>` or `Token <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("token") {
        return Err("the Authorization scheme must be Bearer or Token");
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("the Authorization header carries no well-formed token");
    }
    Ok(token)
}

/// The name under which root on the Unix socket acts, in logs.
pub const ROOT_ON_SOCKET: &str = "root (unix socket)";

/// Who is calling: the token's principal; or, with no `Authorization` header, root on the Unix
/// socket when the configuration trusts it. A token, when given, always decides.
pub fn identify(parts: &Parts, ctx: &ApiContext) -> Result<Principal, &'static str> {
    let trusted_root = ctx.trust_root_on_socket
        && parts.extensions.get::<Transport>() == Some(&Transport::Unix { uid: Some(0) });
    if trusted_root && !parts.headers.contains_key(AUTHORIZATION) {
        return Ok(Principal {
            name: ROOT_ON_SOCKET.to_owned(),
            access: Access::Operator,
        });
    }
    let token = bearer_token(&parts.headers)?;
    ctx.tokens
        .authenticate(token)
        .ok_or("the token is not known to this node")
}

/// Logs a request refused for its token. Each at debug, and summed up at info at most once per
/// interval: anyone who reaches the port can send them, and a flood of them must not flood the
/// journal. The token itself is never logged, and the path is clipped.
pub fn log_unauthorized(parts: &Parts, why: &str) {
    let (method, path) = (&parts.method, parts.uri.path());
    tracing::debug!(%method, path = %clip(path), outcome = why, "request refused: unauthorized");
    refusals::note(Refusal::Unauthorized, || format!("{method} {path}: {why}"));
}

impl FromRequestParts<ApiContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        identify(parts, ctx).map(Caller).map_err(|why| {
            log_unauthorized(parts, why);
            ApiError::unauthorized(why)
        })
    }
}

/// The `{appId}` path segment, checked against the id grammar.
#[derive(Debug)]
pub struct AppIdPath(pub AppId);

impl<S: Send + Sync> FromRequestParts<S> for AppIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("malformed app id: {}", e.body_text())))?;
        AppId::parse(&raw)
            .map(AppIdPath)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// How much of an oversized body is read and discarded before answering 413, so that a client still
/// writing it receives the answer instead of a reset connection. Larger bodies are cut off at once.
const DRAIN_LIMIT: u64 = 16 * MAX_BODY_BYTES as u64;

/// Time a client has to send a whole body; a slower one is refused.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within {} seconds", BODY_TIMEOUT.as_secs())]
    TooSlow,
    #[error("the request body is over the limit of {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("could not read the request body: {0}")]
    Unreadable(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooLarge => ApiError::payload_too_large(e.to_string()),
            BodyError::TooSlow => ApiError::request_timeout(e.to_string()),
            BodyError::Unreadable(_) => ApiError::bad_request(e.to_string()),
        }
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`].
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    tokio::time::timeout(BODY_TIMEOUT, read_bounded(headers, body))
        .await
        .unwrap_or(Err(BodyError::TooSlow))
}

async fn read_bounded(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= MAX_BODY_BYTES as u64 {
            kept.extend_from_slice(&data);
        }
    }
    if total > MAX_BODY_BYTES as u64 {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(kept))
}

/// Parses a query string into pairs, refusing parameters outside `allowed` and repeated ones.
pub fn query_pairs(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}; this route takes {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::bad_request(format!(
                "query parameter {key:?} is given twice"
            )));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).expect("header"));
        h
    }

    #[test]
    fn both_schemes_are_accepted() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("Token abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Ok("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc", "Bearer a b"] {
            assert!(bearer_token(&headers(bad)).is_err(), "{bad:?}");
        }
        assert!(bearer_token(&HeaderMap::new()).is_err());
    }

    #[test]
    fn queries_are_strict() {
        assert_eq!(
            query_pairs(Some("timeout=5&signal=TERM"), &["timeout", "signal"])
                .expect("ok")
                .len(),
            2
        );
        assert!(query_pairs(Some("timeout=5&timeout=6"), &["timeout"]).is_err());
        assert!(query_pairs(Some("force=1"), &["timeout"]).is_err());
        assert!(query_pairs(None, &[]).expect("ok").is_empty());
    }
}
