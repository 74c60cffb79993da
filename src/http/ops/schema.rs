//! The JSON shapes of the operational routes as the API document describes them: health,
//! readiness, and the errors of the routes that need a token.

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::http::v1::schema::ApiErrorDoc;

/// Errors of the operational routes that need a token.
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
#[derive(Debug, IntoResponses)]
pub enum OpsErrors {
    /// No token, or one this node does not know.
    #[response(status = 401)]
    Unauthorized(ApiErrorDoc),
    /// Not an operator.
    #[response(status = 403)]
    Forbidden(ApiErrorDoc),
    /// An internal fault.
    #[response(status = 500)]
    Internal(ApiErrorDoc),
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// `ok`.
    pub store: String,
    /// `ok`.
    pub docker: String,
}

/// `GET /readyz` when not ready: the `/v1` error shape, with each dependency named beside it.
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
#[derive(Debug, ToSchema)]
pub struct Unready {
    /// 503.
    pub status: u16,
    /// `not_ready`.
    pub error: String,
    /// What does not answer, and why.
    pub message: String,
    /// `ok`, or why the store does not answer.
    pub store: String,
    /// `ok`, or why the engine does not answer.
    pub docker: String,
}
