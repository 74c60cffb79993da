//! The CamposCloud-compatible `/v1` routes: register, read, list and forget apps; stop, start and
//! restart them; drain the node (`node`).

pub mod node;
pub mod schema;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::extract::{AppIdPath, Caller, query_pairs, read_body};
use super::refusals::clip;
use super::{ApiContext, ApiError};
use schema::{
    AppIdParam, AppListDoc, AppRecordDoc, EmptyBodyDoc, EventPageDoc, RegistrationDoc, SignalName,
    StopBodyDoc, V1Errors,
};
use std::time::Duration;

use crate::agent::{AgentError, Dispatched, Mode, OpRequest, WaitFor};
use crate::lifecycle::Operation;
use crate::record::{AppRecord, as_integer};
use crate::stop::{Signal, StopRequest, check_timeout, parse_timeout};
use crate::telemetry::Route;

/// Items per page of `GET /v1/apps` when the caller gives no `limit`, and the most it may ask.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 500;
/// The highest page number a caller may ask for (the document's int32); pages past the last are
/// empty.
const MAX_PAGE: usize = i32::MAX as usize;

/// A record as answered: marked `engineUnavailable` while the engine does not answer, since its
/// figures are then the last the agent knew.
fn record_json(ctx: &ApiContext, record: &AppRecord) -> Value {
    record.to_json_marked(ctx.agent.node(), ctx.agent.engine_away().as_ref())
}

/// `PUT /v1/apps/{appId}`: 201 created or 200 replaced, with the stored record.
#[utoipa::path(
    put,
    path = "/v1/apps/{appId}",
    operation_id = "put_app",
    tag = "v1",
    description = "Registers or replaces the record of an app this node hosts (operators only).",
    params(AppIdParam),
    request_body(content = RegistrationDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = AppRecordDoc),
        (status = 200, description = "Replaced", body = AppRecordDoc),
        V1Errors,
    ),
)]
pub async fn put_app(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    AppIdPath(id): AppIdPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let node = ctx.agent.node();
    // Refuse a caller who may not register before reading what it sent.
    ctx.agent
        .may_manage_records(&caller, "register")
        .map_err(|e| ApiError::from_agent(e, node))?;
    let bytes = read_body(&headers, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let outcome = ctx
        .agent
        .register(&caller, &id, value)
        .await
        .map_err(|e| ApiError::from_agent(e, node))?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(app = %id, token = %caller.name, created = outcome.created, "registered");
    Ok((status, Json(record_json(&ctx, &outcome.record))).into_response())
}

/// `GET /v1/apps/{appId}`: the record, with fresh metrics while the container runs.
#[utoipa::path(
    get,
    path = "/v1/apps/{appId}",
    operation_id = "get_app",
    tag = "v1",
    description = "The app's record, with `currentResourceMetrics` fresh from Docker while the container runs.",
    params(AppIdParam),
    responses((status = 200, description = "The record", body = AppRecordDoc), V1Errors),
)]
pub async fn get_app(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    AppIdPath(id): AppIdPath,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    query_pairs(query.as_deref(), &[])?;
    let record = ctx
        .agent
        .get(&caller, &id)
        .await
        .map_err(|e| ApiError::from_agent(e, ctx.agent.node()))?;
    Ok(Json(record_json(&ctx, &record)))
}

/// Events per page of `GET /v1/apps/{appId}/events` when the caller gives no `limit`, and the
/// most it may ask.
const DEFAULT_EVENTS: usize = 20;
const MAX_EVENTS: usize = 100;

/// `GET /v1/apps/{appId}/events`: the app's history, newest first.
#[utoipa::path(
    get,
    path = "/v1/apps/{appId}/events",
    operation_id = "app_events",
    tag = "v1",
    description = "The app's events, newest first: `limit` of them (default 20, at most 100),         only those older than generation `before` when given. `hasMore` says whether older ones         are kept; ask again with `before` set to the last one's generation. Each app keeps its         last `[history] per_app` events once the control plane has them.",
    params(
        AppIdParam,
        ("limit" = Option<u32>, Query, description = "Events to answer at most (default 20)", minimum = 1, maximum = 100),
        ("before" = Option<u64>, Query, description = "Only events with a lower generation", minimum = 1),
    ),
    responses((status = 200, description = "A page of the app's events", body = EventPageDoc), V1Errors),
)]
pub async fn app_events(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    AppIdPath(id): AppIdPath,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(query.as_deref(), &["limit", "before"])?;
    let limit = page_param(&pairs, "limit", DEFAULT_EVENTS, MAX_EVENTS)?;
    let before = match pairs.iter().find(|(k, _)| k == "before") {
        None => None,
        Some((_, v)) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|g| (1..=i64::MAX as u64).contains(g))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`before` must be a generation (an integer from 1 to {}), not {v:?}",
                        i64::MAX
                    ))
                })?,
        ),
    };
    let (events, has_more) = ctx
        .agent
        .events(&caller, &id, limit, before)
        .await
        .map_err(|e| ApiError::from_agent(e, ctx.agent.node()))?;
    Ok(Json(json!({"events": events, "hasMore": has_more})))
}

/// `DELETE /v1/apps/{appId}`: 204; the container is left alone.
#[utoipa::path(
    delete,
    path = "/v1/apps/{appId}",
    operation_id = "delete_app",
    tag = "v1",
    description = "Forgets the app's record (operators only); the container is left alone.",
    params(AppIdParam),
    responses((status = 204, description = "Forgotten"), V1Errors),
)]
pub async fn delete_app(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    AppIdPath(id): AppIdPath,
) -> Result<StatusCode, ApiError> {
    ctx.agent
        .delete(&caller, &id)
        .await
        .map_err(|e| ApiError::from_agent(e, ctx.agent.node()))?;
    tracing::info!(app = %id, token = %caller.name, "deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn page_param(
    pairs: &[(String, String)],
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{key}` must be an integer from 1 to {max}, not {v:?}"
                ))
            }),
    }
}

/// `GET /v1/apps`: the caller's records in the SDK's list shape, `?page=` and `?limit=` paging them.
#[utoipa::path(
    get,
    path = "/v1/apps",
    operation_id = "list_apps",
    tag = "v1",
    description = "The records the caller may read, one page at a time.",
    params(
        ("page" = Option<u32>, Query, description = "Page number, from 1", minimum = 1, maximum = 2147483647),
        ("limit" = Option<u32>, Query, description = "Records per page (default 50)", minimum = 1, maximum = 500),
    ),
    responses((status = 200, description = "One page of records", body = AppListDoc), V1Errors),
)]
pub async fn list_apps(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(query.as_deref(), &["page", "limit"])?;
    let page = page_param(&pairs, "page", 1, MAX_PAGE)?;
    let limit = page_param(&pairs, "limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let records = ctx
        .agent
        .list(&caller)
        .await
        .map_err(|e| ApiError::from_agent(e, ctx.agent.node()))?;
    Ok(Json(list_page(&ctx, &records, page, limit)))
}

fn list_page(ctx: &ApiContext, records: &[AppRecord], page: usize, limit: usize) -> Value {
    let total_items = records.len();
    let total_pages = total_items.div_ceil(limit);
    // RAM allocated to the caller's apps that are online, in MB.
    let used_mb: i64 = records
        .iter()
        .filter(|r| r.online())
        .filter_map(|r| {
            r.registered
                .get("allocatedMemoryMB")
                .and_then(Value::as_i64)
        })
        .sum();
    let applications: Vec<Value> = records
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|r| record_json(ctx, r))
        .collect();
    json!({
        "applications": applications,
        "totalUsedRAM": format!("{used_mb}MB"),
        "pagination": {
            "totalItems": total_items,
            "totalPages": total_pages,
            "currentPage": page,
            "itemsPerPage": limit,
            "hasNextPage": page < total_pages,
            "hasPrevPage": page > 1,
        },
    })
}

/// Reads `timeout` and `signal` from the query and from an optional JSON body; giving one in both is
/// refused rather than silently preferring one.
fn stop_request(query: Option<&str>, body: &[u8]) -> Result<StopRequest, ApiError> {
    stop_fields(
        query_pairs(query, &["timeout", "signal"])?,
        body_object(body, "`timeout` and `signal`")?,
    )
}

/// The JSON object of an optional body (empty, or `null`: no keys); `takes` names the keys the
/// route takes, for a refusal.
fn body_object(body: &[u8], takes: &str) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::bad_request(format!(
            "the body must be a JSON object with optional {takes}"
        ))),
    }
}

/// A stop's `timeout` and `signal`, from the query's `pairs` and the body's `fields`.
fn stop_fields(
    pairs: Vec<(String, String)>,
    fields: Map<String, Value>,
) -> Result<StopRequest, ApiError> {
    let bad = |e: crate::stop::StopInputError| ApiError::bad_request(e.to_string());
    let mut req = StopRequest::default();
    for (key, value) in pairs {
        match key.as_str() {
            "timeout" => req.timeout = Some(parse_timeout(&value).map_err(bad)?),
            _ => req.signal = Some(Signal::parse(&value).map_err(bad)?),
        }
    }
    for (key, value) in fields {
        match key.as_str() {
            "timeout" if req.timeout.is_some() => {
                return Err(ApiError::bad_request(
                    "`timeout` is given both in the query and in the body",
                ));
            }
            "signal" if req.signal.is_some() => {
                return Err(ApiError::bad_request(
                    "`signal` is given both in the query and in the body",
                ));
            }
            "timeout" => {
                let t = as_integer(&value).and_then(|t| t.as_i64()).ok_or_else(|| {
                    bad(crate::stop::StopInputError::BadTimeout(value.to_string()))
                })?;
                req.timeout = Some(check_timeout(t).map_err(bad)?);
            }
            "signal" => {
                let s = value.as_str().ok_or_else(|| {
                    bad(crate::stop::StopInputError::BadSignal(value.to_string()))
                })?;
                req.signal = Some(Signal::parse(s).map_err(bad)?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown body key {other:?}; a stop takes `timeout` and `signal`"
                )));
            }
        }
    }
    Ok(req)
}

/// Longest wait a caller may ask for, and the default, in seconds.
const MAX_WAIT_SECS: u64 = 300;
const DEFAULT_WAIT_SECS: u64 = 60;

/// The parameters of a wait: at least one of `online` and `generation`, and `timeout`.
fn wait_request(query: Option<&str>) -> Result<(WaitFor, Duration), ApiError> {
    let mut wanted = WaitFor::default();
    let mut timeout = DEFAULT_WAIT_SECS;
    for (key, value) in query_pairs(query, &["online", "generation", "timeout"])? {
        match key.as_str() {
            "online" => {
                wanted.online = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "`online` must be true or false, not {value:?}"
                        )));
                    }
                });
            }
            "generation" => {
                wanted.generation = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| !value.starts_with('+'))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "`generation` must be a whole number, not {value:?}"
                            ))
                        })?,
                );
            }
            _ => {
                timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=MAX_WAIT_SECS).contains(t) && !value.starts_with('+'))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`timeout` must be whole seconds from 1 to {MAX_WAIT_SECS}, not {value:?}"
                        ))
                    })?;
            }
        }
    }
    if wanted.online.is_none() && wanted.generation.is_none() {
        return Err(ApiError::bad_request(
            "a wait needs `online`, `generation`, or both",
        ));
    }
    Ok((wanted, Duration::from_secs(timeout)))
}

/// `GET /v1/apps/{appId}/wait`: the record once it is in the state asked for.
#[utoipa::path(
    get,
    path = "/v1/apps/{appId}/wait",
    operation_id = "wait_app",
    tag = "v1",
    description = "Answers with the record as soon as every condition given holds \
        (`currentResourceMetrics.online` equals `online`; `generation` at least `generation`), \
        else 408 `wait_timeout` with the current record once `timeout` has passed. Woken by the \
        change itself; it never polls the engine.",
    params(
        AppIdParam,
        ("online" = Option<bool>, Query, description = "The `online` to wait for"),
        ("generation" = Option<u64>, Query, description = "The least generation to wait for", minimum = 0),
        ("timeout" = Option<u32>, Query, description = "Seconds to wait at most (default 60)", minimum = 1, maximum = 300),
    ),
    responses(
        (status = 200, description = "The record, in the state asked for", body = AppRecordDoc),
        V1Errors,
    ),
)]
pub async fn wait_app(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
    AppIdPath(id): AppIdPath,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (wanted, timeout) = wait_request(query.as_deref())?;
    let record = ctx
        .agent
        .wait(&caller, &id, wanted, timeout)
        .await
        .map_err(|e| ApiError::from_agent(e, ctx.agent.node()))?;
    Ok(Json(record_json(&ctx, &record)))
}

/// Reads the parameters of `op`: a stop's and a restart's `timeout` and `signal`; a start takes
/// none, and an empty body, `{}` or `null` (what the SDK sends) is all it accepts.
fn op_request(op: Operation, query: Option<&str>, body: &[u8]) -> Result<StopRequest, ApiError> {
    if op != Operation::Start {
        return stop_request(query, body);
    }
    query_pairs(query, &[])?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StopRequest::default());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(StopRequest::default()),
        Value::Object(fields) if fields.is_empty() => Ok(StopRequest::default()),
        Value::Object(fields) => Err(ApiError::bad_request(format!(
            "unknown body key {:?}; a start takes no parameters",
            fields.keys().next().map(String::as_str).unwrap_or_default()
        ))),
        _ => Err(ApiError::bad_request(
            "the body of a start must be empty, {} or null",
        )),
    }
}

/// The shared body of the three operation handlers: parses the request, then hands it to the
/// core's one entry point, which counts and logs every refusal.
async fn operate(
    op: Operation,
    ctx: ApiContext,
    caller: Result<Caller, ApiError>,
    app: Result<AppIdPath, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let agent = &ctx.agent;
    let (parts, body) = request.into_parts();
    let path = clip(parts.uri.path());
    let Caller(caller) = caller.inspect_err(|e| {
        agent.refused_unparsed(op, Route::V1, None, &path, &format!("{e:?}"));
    })?;
    let parsed = async {
        let AppIdPath(id) = app?;
        let bytes = read_body(&parts.headers, body).await?;
        Ok::<_, ApiError>((id, op_request(op, parts.uri.query(), &bytes)?))
    };
    let (id, params) = parsed.await.inspect_err(|e| {
        let why = format!("{e:?}");
        agent.refused_unparsed(op, Route::V1, Some(&caller.name), &path, &clip(&why));
    })?;
    let request = OpRequest {
        principal: caller,
        app: id,
        action: op,
        params,
        mode: Mode::Wait,
        route: Route::V1,
    };
    match agent.dispatch(request).await {
        Ok(Dispatched::Done(record)) => Ok(Json(record_json(&ctx, &record))),
        Ok(Dispatched::Accepted) => Err(ApiError::from_agent(
            AgentError::Internal(format!("the {} was not waited for", op.verb())),
            agent.node(),
        )),
        Err(e) => Err(ApiError::from_agent(e, agent.node())),
    }
}

/// `POST /v1/apps/{appId}/stop`: stops the container and answers with the updated record.
#[utoipa::path(
    post,
    path = "/v1/apps/{appId}/stop",
    operation_id = "stop_app",
    tag = "v1",
    description = "Sends the signal, waits up to the timeout, then kills; answers when the container \
        has stopped, with the record holding the sample taken just before the stop. `timeout` and \
        `signal` come from the query or the JSON body; one given in both is refused (400).",
    params(
        AppIdParam,
        ("timeout" = Option<u32>, Query, description = "Seconds between the signal and the kill (0 kills at once)", minimum = 0, maximum = 3600),
        ("signal" = Option<SignalName>, Query, description = "The stop signal"),
    ),
    request_body(content = Option<StopBodyDoc>, content_type = "application/json", description = "Optional; an empty body is valid"),
    responses((status = 200, description = "Stopped; the updated record", body = AppRecordDoc), V1Errors),
)]
pub async fn stop_app(
    State(ctx): State<ApiContext>,
    caller: Result<Caller, ApiError>,
    app: Result<AppIdPath, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    operate(Operation::Stop, ctx, caller, app, request).await
}

/// `POST /v1/apps/{appId}/start`: starts the container and answers with the updated record.
#[utoipa::path(
    post,
    path = "/v1/apps/{appId}/start",
    operation_id = "start_app",
    tag = "v1",
    description = "Gives the container back the restart policy the last stop set aside, starts it, \
        and answers once the engine says it runs, without waiting for a stats sample (figures \
        without a reading are left out). A container that exits at once is answered as offline, \
        with `lastStart.outcome` `exited` and its `lastExit`. Takes no parameters; an empty body \
        is valid.",
    params(AppIdParam),
    request_body(content = Option<EmptyBodyDoc>, content_type = "application/json", description = "Optional; empty, {} or null"),
    responses((status = 200, description = "Started (or exited at once); the updated record", body = AppRecordDoc), V1Errors),
)]
pub async fn start_app(
    State(ctx): State<ApiContext>,
    caller: Result<Caller, ApiError>,
    app: Result<AppIdPath, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    operate(Operation::Start, ctx, caller, app, request).await
}

/// `POST /v1/apps/{appId}/restart`: stops the container as `/stop` does, then starts it.
#[utoipa::path(
    post,
    path = "/v1/apps/{appId}/restart",
    operation_id = "restart_app",
    tag = "v1",
    description = "Stops the container exactly as `/stop` does (same `timeout` and `signal`, the old \
        run's final sample and exit), then starts it as `/start` does, as one operation. A stopped \
        app is just started. If the stop fails nothing is started; if the start fails the record \
        says stopped, with the error in `lastStart`.",
    params(
        AppIdParam,
        ("timeout" = Option<u32>, Query, description = "Seconds between the signal and the kill (0 kills at once)", minimum = 0, maximum = 3600),
        ("signal" = Option<SignalName>, Query, description = "The stop signal"),
    ),
    request_body(content = Option<StopBodyDoc>, content_type = "application/json", description = "Optional; an empty body is valid"),
    responses((status = 200, description = "Restarted; the updated record of the new run", body = AppRecordDoc), V1Errors),
)]
pub async fn restart_app(
    State(ctx): State<ApiContext>,
    caller: Result<Caller, ApiError>,
    app: Result<AppIdPath, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    operate(Operation::Restart, ctx, caller, app, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_parameters_from_query_and_body() {
        assert_eq!(
            stop_request(None, b"").expect("empty"),
            StopRequest::default()
        );
        assert_eq!(
            stop_request(None, b"  \n").expect("blank"),
            StopRequest::default()
        );
        assert_eq!(
            stop_request(None, b"{}").expect("object"),
            StopRequest::default()
        );
        assert_eq!(
            stop_request(None, b"null").expect("null"),
            StopRequest::default()
        );
        let q = stop_request(Some("timeout=3&signal=USR1"), b"").expect("query");
        assert_eq!(
            q,
            StopRequest {
                timeout: Some(3),
                signal: Some(Signal::Usr1)
            }
        );
        let b = stop_request(None, br#"{"timeout": 0, "signal": "SIGKILL"}"#).expect("body");
        assert_eq!(
            b,
            StopRequest {
                timeout: Some(0),
                signal: Some(Signal::Kill)
            }
        );
        // JSON does not tell 5 from 5.0.
        let whole = stop_request(None, br#"{"timeout": 5.0}"#).expect("5.0");
        assert_eq!(whole.timeout, Some(5));
        let mixed = stop_request(Some("timeout=3"), br#"{"signal": "INT"}"#).expect("mixed");
        assert_eq!(
            mixed,
            StopRequest {
                timeout: Some(3),
                signal: Some(Signal::Int)
            }
        );
    }

    #[test]
    fn a_start_takes_no_parameters() {
        for body in [&b""[..], b" ", b"{}", b"null"] {
            assert_eq!(
                op_request(Operation::Start, None, body).expect("empty"),
                StopRequest::default()
            );
        }
        for (query, body) in [
            (Some("timeout=1"), &b""[..]),
            (None, br#"{"signal": "TERM"}"#),
            (None, b"[]"),
            (None, b"{"),
        ] {
            assert!(
                op_request(Operation::Start, query, body).is_err(),
                "{query:?}"
            );
        }
        assert_eq!(
            op_request(Operation::Restart, Some("timeout=1"), b"")
                .expect("restart")
                .timeout,
            Some(1)
        );
    }

    #[test]
    fn malformed_stop_parameters() {
        for (query, body) in [
            (Some("timeout=-1"), &b""[..]),
            (Some("timeout=abc"), b""),
            (Some("timeout=3601"), b""),
            (Some("signal=SIGSEGV"), b""),
            (Some("force=true"), b""),
            (None, br#"{"timeout": "5"}"#),
            (None, br#"{"timeout": 1.5}"#),
            (None, br#"{"signal": 9}"#),
            (None, br#"{"grace": 1}"#),
            (None, b"[1]"),
            (None, b"{"),
            (Some("timeout=1"), br#"{"timeout": 1}"#),
        ] {
            assert!(
                stop_request(query, body).is_err(),
                "{query:?} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
