//! Reading what the agent answers: the final sample of a record, its times, an answer's
//! generation, and the documented error body.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Answer;

/// The sample a record carries (the final one once the app is stopped).
pub fn metrics(record: &Value) -> &Value {
    &record["currentResourceMetrics"]
}

/// A time the record writes: RFC 3339, UTC, with a `Z`.
pub fn time(v: &Value) -> DateTime<Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a time string: {v}"));
    assert!(s.ends_with('Z'), "UTC: {s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {s}"))
        .with_timezone(&Utc)
}

/// The generation an answer carries.
pub fn generation(a: &Answer) -> u64 {
    a.body["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation in {a:?}"))
}

/// Asserts that `a` is the documented error: `status`, the same in the body, `code`, and a
/// message that says why.
pub fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.body["status"], status, "{a:?}");
    assert_eq!(a.body["error"], code, "{a:?}");
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error says why: {a:?}"
    );
}
