//! Operational routes (`/healthz`, `/readyz`) and the answers to unknown routes and methods.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, Uri};
use serde_json::{Value, json};

use super::{ApiContext, ApiError};

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store and the Docker engine answer, else 503 naming which does not.
pub async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Value>, ApiError> {
    let (store, engine) = tokio::join!(ctx.agent.store().ping(), ctx.agent.runtime().ping());
    let mut failing = Vec::new();
    if let Err(e) = &store {
        failing.push(format!("store: {e}"));
    }
    if let Err(e) = &engine {
        failing.push(format!("docker: {e}"));
    }
    if failing.is_empty() {
        Ok(Json(
            json!({"status": "ready", "store": "ok", "docker": "ok"}),
        ))
    } else {
        Err(ApiError::not_ready(format!(
            "not ready: {}",
            failing.join("; ")
        )))
    }
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(format!("no route {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
}
