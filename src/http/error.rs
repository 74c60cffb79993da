//! Errors as `/v1` answers them: `{"status", "error", "message"}` (and `"app"` on the 409 of a stop,
//! start or restart). The
//! one place where a core error becomes a status code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::agent::AgentError;
use crate::lifecycle::Operation;
use crate::record::{AppRecord, WorkerNode};

/// An error answer of the `/v1` family.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    app: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            app: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn no_route(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The answer carries the app's record, as every 409 of an operation does.
    fn with_app(self, record: &AppRecord, node: &WorkerNode) -> ApiError {
        ApiError {
            app: Some(record.to_json(node)),
            ..self
        }
    }

    /// Maps a core error; `node` renders the record a 409 carries.
    pub fn from_agent(err: AgentError, node: &WorkerNode) -> ApiError {
        let message = err.to_string();
        match err {
            AgentError::BadRequest(_) | AgentError::TimeoutOverCap { .. } => {
                Self::bad_request(message)
            }
            AgentError::TooManyWaits { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            }
            AgentError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "app_not_found", message),
            AgentError::Forbidden(_) => Self::forbidden(message),
            AgentError::AlreadyStopped { record, .. } => {
                Self::new(StatusCode::CONFLICT, "already_stopped", message).with_app(&record, node)
            }
            AgentError::InProgress {
                under_way, record, ..
            } => {
                let code = match under_way {
                    Operation::Stop => "stop_in_progress",
                    Operation::Start => "start_in_progress",
                    Operation::Restart => "restart_in_progress",
                };
                Self::new(StatusCode::CONFLICT, code, message).with_app(&record, node)
            }
            AgentError::AlreadyRunning { record, .. } => {
                Self::new(StatusCode::CONFLICT, "already_running", message).with_app(&record, node)
            }
            AgentError::WaitTimeout { record, .. } => {
                Self::new(StatusCode::REQUEST_TIMEOUT, "wait_timeout", message)
                    .with_app(&record, node)
            }
            AgentError::ContainerMissing { record, .. } => {
                Self::new(StatusCode::CONFLICT, "container_missing", message)
                    .with_app(&record, node)
            }
            AgentError::StopOvertaken { record, .. } => {
                Self::new(StatusCode::CONFLICT, "stop_overtaken", message).with_app(&record, node)
            }
            AgentError::NodeDraining { record, .. } => {
                Self::new(StatusCode::CONFLICT, "node_draining", message).with_app(&record, node)
            }
            AgentError::NotDraining => Self::new(StatusCode::CONFLICT, "not_draining", message),
            AgentError::DockerUnavailable(cause) => {
                tracing::warn!(%cause, "Docker engine unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "docker_unavailable",
                    format!("the Docker engine is unreachable: {cause}"),
                )
            }
            AgentError::Engine(cause) => {
                tracing::error!(%cause, "Docker engine error");
                Self::new(StatusCode::BAD_GATEWAY, "docker_error", cause)
            }
            AgentError::Store(err) => {
                tracing::error!(error = ?err, "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the record store failed; the agent's log has the cause",
                )
            }
            AgentError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", cause)
            }
        }
    }
}

/// The JSON body of an error answer, serialized straight from the error: a flood of refusals runs
/// through here, and building a JSON tree first cost each one allocations of its own.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'a Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: self.status.as_u16(),
            error: self.code,
            message: &self.message,
            app: self.app.as_ref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // Too many waits of one token: each one that ends frees a place, so a second is soon
            // enough to try again.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
