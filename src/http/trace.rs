//! Every request's span and id: the id is the client's `x-request-id` when it is a sane token, else
//! a fresh one; it is echoed in the answer's `x-request-id`, and every log line written while the
//! request is served (a stop's background work included) carries it. Answers are counted by status.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::ApiContext;
use super::refusals::clip;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-given request id kept; a longer or odd one is replaced.
const MAX_ID_LEN: usize = 128;

/// A client's request id, if it is short and made of plain token characters (so that it cannot
/// forge log lines or headers).
fn client_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b));
    sane.then(|| value.to_owned())
}

/// 16 hex digits: this process's random prefix, then a counter. Unique across a fleet's logs (the
/// prefix) and within one agent's (the counter), without a system call per request.
fn fresh_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // Without randomness, the start time still tells this agent's ids from its last run's.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or_default();
            bytes = nanos.to_be_bytes();
        }
        u32::from_be_bytes(bytes)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}{n:08x}")
}

/// The middleware: span, id, answer count, and one debug line per request (a warning for a 5xx)
/// naming its method and path.
///
/// The span holds the id alone: the logger formats a span's fields when the span is made, for
/// every request, logged or not, and the id is what ties a request's lines together. Lines that
/// need the route name it themselves.
pub async fn track(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let id = client_id(&request).unwrap_or_else(fresh_id);
    let span = tracing::info_span!("request", id = %id);
    // Both share the request's buffers: no copy of the path on the way in.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    ctx.agent.telemetry().http_answered(status);
    let elapsed_ms = started.elapsed().as_millis();
    span.in_scope(|| {
        // The path is the client's: clipped, so that no request makes a line of any size.
        if status >= 500 {
            tracing::warn!(%method, path = %clip(uri.path()), status, elapsed_ms, "answered");
        } else {
            tracing::debug!(%method, path = %clip(uri.path()), status, elapsed_ms, "answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn with_id(id: &str) -> Request {
        Request::get("/")
            .header(REQUEST_ID, id)
            .body(Body::empty())
            .expect("request")
    }

    #[test]
    fn sane_client_ids_are_kept_and_odd_ones_replaced() {
        assert_eq!(
            client_id(&with_id("abc-123_x.y")).as_deref(),
            Some("abc-123_x.y")
        );
        assert_eq!(client_id(&with_id("a b")), None);
        assert_eq!(client_id(&with_id("x\"y")), None);
        assert_eq!(client_id(&with_id(&"a".repeat(129))), None);
        assert_eq!(
            client_id(&Request::get("/").body(Body::empty()).expect("request")),
            None
        );
        let id = fresh_id();
        assert_eq!(id.len(), 16);
        let next = fresh_id();
        let (a, b) = (
            u64::from_str_radix(&id, 16).expect("hex"),
            u64::from_str_radix(&next, 16).expect("hex"),
        );
        assert_eq!(a >> 32, b >> 32, "one prefix per process");
        assert!(b > a, "then a counter: {id} {next}");
        assert_eq!(format!("{a:016x}"), id, "lower-case, zero-padded");
    }
}
