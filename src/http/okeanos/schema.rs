//! The JSON shapes of the ~okeanos routes as the API document describes them: the form, the 202
//! and the LoD errors.

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// An ~okeanos error: `{"errors": [{"status", "detail"}]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LodErrorDoc {
    pub errors: Vec<LodErrorItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LodErrorItem {
    pub status: u16,
    pub detail: String,
}

/// The errors of the ~okeanos stop and start routes, with the LoD texts.
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
#[derive(Debug, IntoResponses)]
pub enum LodErrors {
    /// No `lambda_instance_id`, or a body that cannot be read.
    #[response(status = 400)]
    BadRequest(LodErrorDoc),
    /// No token, or one this node does not know.
    #[response(status = 401)]
    Unauthorized(LodErrorDoc),
    /// The caller may not stop or start this app.
    #[response(status = 403)]
    Forbidden(LodErrorDoc),
    /// No such instance, application, or deployment on this instance.
    #[response(status = 404)]
    NotFound(LodErrorDoc),
    /// The body did not arrive in time.
    #[response(status = 408)]
    RequestTimeout(LodErrorDoc),
    /// Already stopped (or started), its job slot free (or occupied), or another stop or start
    /// under way.
    #[response(status = 409)]
    Conflict(LodErrorDoc),
    /// The body is over 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(LodErrorDoc),
    /// A body that is neither a multipart form, a url-encoded form nor JSON.
    #[response(status = 415)]
    UnsupportedMediaType(LodErrorDoc),
    /// The agent's store failed, or an internal fault.
    #[response(status = 500)]
    Internal(LodErrorDoc),
    /// The engine refused the call.
    #[response(status = 502)]
    BadGateway(LodErrorDoc),
    /// The engine is unreachable.
    #[response(status = 503)]
    Unavailable(LodErrorDoc),
}

/// The ~okeanos 202.
#[derive(Debug, Serialize, ToSchema)]
pub struct LodAccepted {
    pub status: LodAcceptedStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LodAcceptedStatus {
    #[serde(rename = "short-description")]
    pub short_description: String,
    pub code: u16,
}

/// The ~okeanos stop's and start's form: multipart (`curl -F`), url-encoded, or JSON (an object).
#[derive(Debug, Serialize, ToSchema)]
pub struct LodStopForm {
    /// Must be this node's `node.id`; required here or in the query.
    #[schema(nullable = false, pattern = r"\S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_instance_id: Option<String>,
}
