//! `POST /v1/node/drain` and `DELETE /v1/node/drain`: an operator drains the node before
//! maintenance, and ends the drain after it.

use super::schema::{DrainBodyDoc, SignalName, V1Errors};
use super::{body_object, stop_fields};
use crate::agent::{DrainRequest, DrainSummary, MAX_DEADLINE_SECS};
use crate::http::extract::{Caller, query_pairs, read_body};
use crate::http::{ApiContext, ApiError};
use crate::record::{NodeReason, as_integer};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A drain's parameters: each app's `timeout` and `signal` and the whole's `deadline`, from the
/// query or the JSON body (one given in both is refused), and `wait` from the query.
fn drain_request(query: Option<&str>, body: &[u8]) -> Result<(DrainRequest, bool), ApiError> {
    let takes = "`timeout`, `signal` and `deadline`";
    let mut pairs = query_pairs(query, &["timeout", "signal", "deadline", "wait"])?;
    let mut fields = body_object(body, takes)?;
    if let Some(other) = fields
        .keys()
        .find(|k| !["timeout", "signal", "deadline"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown body key {other:?}; a drain takes {takes}"
        )));
    }
    let mut take = |key: &str| {
        let at = pairs.iter().position(|(k, _)| k == key)?;
        Some(pairs.remove(at).1)
    };
    let wait = match take("wait").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`wait` must be true or false, not {other:?}"
            )));
        }
    };
    let bad_deadline = |raw: &str| {
        ApiError::bad_request(format!(
            "`deadline` must be whole seconds from 1 to {MAX_DEADLINE_SECS}, not {raw}"
        ))
    };
    let deadline = match (take("deadline"), fields.remove("deadline")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "`deadline` is given both in the query and in the body",
            ));
        }
        (Some(raw), None) => Some(raw.parse::<i64>().map_err(|_| bad_deadline(&raw))?),
        (None, Some(value)) => Some(
            as_integer(&value)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| bad_deadline(&value.to_string()))?,
        ),
        (None, None) => None,
    };
    let deadline = match deadline {
        None => DrainRequest::default().deadline,
        Some(d) => u32::try_from(d)
            .ok()
            .filter(|d| (1..=MAX_DEADLINE_SECS).contains(d))
            .ok_or_else(|| bad_deadline(&d.to_string()))?,
    };
    let stop = stop_fields(pairs, fields)?;
    Ok((DrainRequest { stop, deadline }, wait))
}

/// `POST /v1/node/drain`: stops every app on the node and refuses starts until the drain is ended.
#[utoipa::path(
    post,
    path = "/v1/node/drain",
    operation_id = "drain_node",
    tag = "v1",
    description = "Operators only. Marks the node draining (kept across restarts of the agent) and \
        stops every app's container at once, each as `/stop` does with the `timeout` and `signal` \
        given, recording `lastStop.reason: \"drain\"`. When `deadline` seconds have passed, every \
        container still running is killed. While the node is draining or drained, starts and \
        restarts answer 409 `node_draining`. A drain asked while one runs joins it. Answers 200 \
        with the summary once every stop has ended, or 202 at once with `wait=false`.",
    params(
        ("timeout" = Option<u32>, Query, description = "Each app's seconds between the signal and the kill (0 kills at once)", minimum = 0, maximum = 3600),
        ("signal" = Option<SignalName>, Query, description = "Each app's stop signal"),
        ("deadline" = Option<u32>, Query, description = "Seconds after which every container still running is killed (default 3600)", minimum = 1, maximum = 86400),
        ("wait" = Option<bool>, Query, description = "false: answer 202 at once (default true)"),
    ),
    request_body(content = Option<DrainBodyDoc>, content_type = "application/json", description = "Optional; an empty body is valid"),
    responses(
        (status = 200, description = "Drained: the summary", body = DrainSummary),
        (status = 202, description = "Draining (`wait=false`): the summary so far", body = DrainSummary),
        V1Errors,
    ),
)]
pub async fn drain_node(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let agent = &ctx.agent;
    let refused = |e| ApiError::from_agent(e, agent.node());
    agent.may_drain(&caller).map_err(refused)?;
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body).await?;
    let (req, wait) = drain_request(parts.uri.query(), &bytes)?;
    let (summary, done) = agent
        .drain(&caller, req, NodeReason::Drain, wait)
        .await
        .map_err(refused)?;
    let status = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(summary)).into_response())
}

/// `DELETE /v1/node/drain`: ends the drain; with `start=true`, starts again what it stopped.
#[utoipa::path(
    delete,
    path = "/v1/node/drain",
    operation_id = "end_drain",
    tag = "v1",
    description = "Operators only. Ends the node's drain: starts and restarts are allowed again. A \
        drain under way is cancelled first (its stops under way finish; nothing is killed at its \
        deadline). With `start=true`, the apps the drain stopped that nobody has stopped or started \
        since are started again; the summary counts them in `apps.startedAgain`. Ending a drain \
        that has ended answers its summary; with no drain at all, 409 `not_draining`.",
    params(
        ("start" = Option<bool>, Query, description = "true: start again the apps the drain stopped (default false)"),
    ),
    responses((status = 200, description = "Ended: the summary", body = DrainSummary), V1Errors),
)]
pub async fn end_drain(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    request: Request,
) -> Result<Json<DrainSummary>, ApiError> {
    let agent = &ctx.agent;
    let refused = |e| ApiError::from_agent(e, agent.node());
    agent.may_drain(&caller).map_err(refused)?;
    let start = match query_pairs(request.uri().query(), &["start"])?
        .first()
        .map(|(_, v)| v.as_str())
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`start` must be true or false, not {other:?}"
            )));
        }
    };
    let summary = agent.end_drain(&caller, start).await.map_err(refused)?;
    Ok(Json(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str, body: &str) -> Result<(DrainRequest, bool), String> {
        let query = (!query.is_empty()).then_some(query);
        drain_request(query, body.as_bytes()).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn drain_parameters_from_query_and_body() {
        let (req, wait) = parsed("", "").expect("defaults");
        assert_eq!(req, DrainRequest::default());
        assert!(wait);
        let (req, wait) = parsed("timeout=5&signal=INT&deadline=60&wait=false", "").expect("query");
        assert_eq!(req.stop.timeout, Some(5));
        assert_eq!(req.stop.signal.map(|s| s.name()), Some("SIGINT"));
        assert_eq!(req.deadline, 60);
        assert!(!wait);
        let (req, _) = parsed("", r#"{"timeout": 2, "deadline": 30}"#).expect("body");
        assert_eq!((req.stop.timeout, req.deadline), (Some(2), 30));
    }

    #[test]
    fn malformed_drain_parameters() {
        for (query, body) in [
            ("deadline=0", ""),
            ("deadline=86401", ""),
            ("deadline=soon", ""),
            ("wait=maybe", ""),
            ("deadline=5", r#"{"deadline": 5}"#),
            ("", r#"{"deadline": -1}"#),
            ("", r#"{"grace": 1}"#),
            ("start=true", ""),
            ("timeout=3601", ""),
            ("", "[1]"),
        ] {
            let e = parsed(query, body).expect_err(&format!("{query:?} {body:?}"));
            assert!(e.contains("bad_request"), "{query:?} {body:?}: {e}");
        }
    }
}
