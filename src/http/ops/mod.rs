//! Operational routes (`/healthz`, `/readyz`, `/v1/node`, `/metrics`) and the answers to unknown
//! routes and methods.

pub mod schema;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::{Caller, identify};
use super::okeanos::LodError;
use super::{ApiContext, ApiError};
use crate::agent::NodeReport;
use crate::auth::Principal;
use crate::lifecycle::Operation;
use crate::runtime::probe;
use crate::telemetry::Present;
use schema::{Health, OpsErrors, Readiness, Unready};

/// `GET /healthz`: 200 while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process serves", body = Health)),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store and the Docker engine answer, else 503 naming which does not.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The store and the engine answer", body = Readiness),
        (status = 503, description = "The store or the engine does not answer; each is named", body = Unready),
    ),
)]
pub async fn readyz(State(ctx): State<ApiContext>) -> Response {
    let (store, engine) = tokio::join!(ctx.agent.store().ping(), probe(ctx.agent.runtime().ping()));
    let store = store.err().map(|e| e.to_string());
    let engine = engine.err().map(|e| e.to_string());
    let state = |failure: &Option<String>| failure.clone().unwrap_or_else(|| "ok".to_owned());
    if store.is_none() && engine.is_none() {
        return Json(json!({"status": "ready", "store": "ok", "docker": "ok"})).into_response();
    }
    let failing: Vec<String> = [("store", &store), ("docker", &engine)]
        .into_iter()
        .filter_map(|(name, f)| f.as_ref().map(|e| format!("{name}: {e}")))
        .collect();
    // The /v1 error shape, with each dependency named beside it.
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": 503,
            "error": "not_ready",
            "message": format!("not ready: {}", failing.join("; ")),
            "store": state(&store),
            "docker": state(&engine),
        })),
    )
        .into_response()
}

/// Only operators read the node as a whole: users see their own apps, not the host.
fn operator_only(caller: &Principal, what: &str) -> Result<(), ApiError> {
    if caller.is_operator() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "only an operator token may read {what}"
        )))
    }
}

/// `GET /v1/node`: this node, its host's figures, the engine, the apps and the agent.
#[utoipa::path(
    get,
    path = "/v1/node",
    operation_id = "node",
    tag = "operations",
    description = "This node (operators only). When the engine is away, `docker.reachable` is false and `docker.error` says why.",
    responses((status = 200, description = "The node", body = NodeReport), OpsErrors),
)]
pub async fn node(
    State(ctx): State<ApiContext>,
    Caller(caller): Caller,
) -> Result<Json<NodeReport>, ApiError> {
    operator_only(&caller, "the node's figures")?;
    Ok(Json(ctx.agent.node_report().await))
}

/// `GET /metrics`: the agent's figures in Prometheus' text format. Open to any caller when
/// `http.metrics_open` says so; otherwise operators only.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    description = "The agent's figures (OpenMetrics text): stops by route and outcome, stop durations, \
        final-sample ages, HTTP answers by status, engine reachability, records. Operators only, \
        unless `[http] metrics_open` opens it to any caller.",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The figures", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        OpsErrors,
    ),
)]
pub async fn metrics(
    State(ctx): State<ApiContext>,
    request: Request,
) -> Result<Response, ApiError> {
    if !ctx.metrics_open {
        let (parts, _) = request.into_parts();
        let caller = identify(&parts, &ctx).map_err(ApiError::unauthorized)?;
        operator_only(&caller, "the metrics")?;
    }
    let engine_up = probe(ctx.agent.runtime().ping()).await.is_ok();
    let (registered, online) = ctx.agent.store().counts();
    let report = ctx
        .agent
        .telemetry()
        .report_status(&ctx.agent.store().outbox());
    let (followed_on_host, followed_streams) = ctx.agent.sampler().followed();
    let text = ctx.agent.telemetry().render(&Present {
        engine_up,
        followed_on_host,
        followed_streams,
        online,
        offline: registered - online,
        stops_in_progress: ctx.agent.under_way_of_kind(Operation::Stop),
        waits_in_progress: ctx.agent.waits_in_progress(),
        report_pending: report.pending,
        report_oldest_age_secs: report.oldest_pending_age_seconds.unwrap_or(0.0),
        drain: ctx.agent.drain_figures(),
        shutdown: ctx.agent.shutdown_figures(),
        events_written: ctx.agent.store().events_written(),
        events_dropped: ctx.agent.store().events_dropped(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Unknown routes answer in the shape of the API family their path belongs to.
pub async fn no_route(method: Method, uri: Uri) -> Response {
    let message = format!("no route {method} {}", uri.path());
    if is_okeanos(&uri) {
        LodError::new(StatusCode::NOT_FOUND, message).into_response()
    } else {
        ApiError::no_route(message).into_response()
    }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{method} is not allowed on {}", uri.path());
    if is_okeanos(&uri) {
        LodError::new(StatusCode::METHOD_NOT_ALLOWED, message).into_response()
    } else {
        ApiError::method_not_allowed(message).into_response()
    }
}

fn is_okeanos(uri: &Uri) -> bool {
    uri.path().starts_with("/api/")
}

/// A handler that panicked answers 500 and the agent serves on; the panic is logged.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %what, "a request handler panicked; the agent serves on");
    ApiError::internal("the agent hit an internal fault while answering; its log has the cause")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    use crate::agent::{Agent, Limits};
    use crate::auth::{TokenBook, Tokens};
    use crate::record::WorkerNode;
    use crate::runtime::PROBE_LIMIT;
    use crate::runtime::fake::FakeRuntime;
    use crate::store::Store;

    async fn body_of(answer: Response) -> Vec<u8> {
        axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .expect("body")
            .to_vec()
    }

    #[tokio::test]
    async fn readiness_and_the_engine_gauge_answer_within_the_probe_limit_when_the_engine_hangs() {
        let dir = tempfile::tempdir().expect("dir");
        let fake = FakeRuntime::new(true);
        let node = WorkerNode {
            id: "n".into(),
            node_name: "N".into(),
        };
        let store = Store::open(&dir.path().join("a.db")).expect("store");
        let ctx = ApiContext {
            agent: Agent::new(
                Arc::new(fake.clone()),
                store,
                node,
                Limits::default(),
                crate::background::Background::new(),
            ),
            tokens: Tokens::new(TokenBook::default()),
            trust_root_on_socket: false,
            metrics_open: true,
        };
        fake.gate("ping");
        let started = Instant::now();
        let request = axum::http::Request::get("/metrics")
            .body(Body::empty())
            .expect("request");
        let both = async { tokio::join!(readyz(State(ctx.clone())), metrics(State(ctx), request)) };
        let (ready, metrics) = tokio::time::timeout(PROBE_LIMIT + Duration::from_secs(2), both)
            .await
            .expect("answers soon after the probe limit");
        assert!(started.elapsed() >= PROBE_LIMIT, "{:?}", started.elapsed());

        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready: Value = serde_json::from_slice(&body_of(ready).await).expect("JSON");
        let hung = "the Docker engine is unreachable: no answer within 2s";
        assert_eq!(ready["store"], "ok", "{ready}");
        assert_eq!(ready["docker"], hung, "{ready}");
        assert_eq!(
            ready["message"],
            format!("not ready: docker: {hung}"),
            "{ready}"
        );

        let metrics = metrics.expect("metrics");
        let text = String::from_utf8(body_of(metrics).await).expect("text");
        assert!(
            text.lines().any(|l| l == "node_agent_engine_up 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_serves_on() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "fine" }))
            .layer(CatchPanicLayer::custom(panicked));
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(Body::empty())
                .expect("request")
        };
        let answer = app.clone().oneshot(get("/boom")).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: Value = serde_json::from_slice(&body_of(answer).await).expect("JSON");
        assert_eq!(body["error"], "internal_error");
        let answer = app.oneshot(get("/fine")).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::OK);
    }
}
