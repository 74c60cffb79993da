//! `GET /openapi.json`: the API described from the code. The routes' own `#[utoipa::path]`
//! annotations give the paths, parameters and answers; the types here describe the JSON shapes that
//! the handlers build as values (records keep every registered key, so they are open objects).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::agent::NodeReport;
use crate::record::{LastExit, LastStop, ResourceMetrics, StopOutcome, WorkerNode};

/// An app record as the agent answers it: every key the control plane registered, in its order,
/// and the keys the agent owns (`workerNodeId`, `currentResourceMetrics`, `lastExit`, `lastStop`,
/// `updatedAt`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRecordDoc {
    /// The app id (`[A-Za-z0-9._-]{1,128}`).
    #[serde(rename = "_id")]
    pub id: String,
    /// The container's name or id on this node.
    pub container_id: String,
    pub worker_node_id: WorkerNode,
    /// The container's last sample; after a stop, the one taken just before it.
    pub current_resource_metrics: ResourceMetrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<LastStop>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
}

/// The documented values of `status`; a stopped app is `online: false`, not a new status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppStatus {
    Active,
    Creating,
    Suspended,
}

/// A registration: the record in the CamposCloud shape. `containerId` is required; `_id`, if given,
/// must equal the path's app id; keys the agent owns are ignored; other keys are kept as given,
/// and the documented ones must have their documented types.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationDoc {
    #[serde(rename = "_id", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A Docker container name or id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,254}`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")]
    pub container_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_memory_mb: Option<i64>,
}

/// `GET /v1/apps`: one page of the caller's records.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppListDoc {
    pub applications: Vec<AppRecordDoc>,
    /// RAM allocated to the listed apps that are online: `"<n>MB"`.
    #[serde(rename = "totalUsedRAM")]
    pub total_used_ram: String,
    pub pagination: PaginationDoc,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginationDoc {
    pub total_items: u64,
    pub total_pages: u64,
    pub current_page: u64,
    pub items_per_page: u64,
    pub has_next_page: bool,
    pub has_prev_page: bool,
}

/// The optional JSON body of `POST /v1/apps/{appId}/stop` (the query may carry the same keys
/// instead; one key in both is refused). An empty body is valid.
#[derive(Debug, Serialize, ToSchema)]
pub struct StopBodyDoc {
    /// Seconds between the signal and the kill (0 kills at once).
    #[schema(minimum = 0, maximum = 3600)]
    pub timeout: Option<u32>,
    /// The stop signal, with or without the `SIG` prefix.
    pub signal: Option<SignalName>,
}

/// A stop signal's name.
#[derive(Debug, Serialize, ToSchema)]
pub enum SignalName {
    #[serde(rename = "SIGTERM")]
    SigTerm,
    #[serde(rename = "TERM")]
    Term,
    #[serde(rename = "SIGINT")]
    SigInt,
    #[serde(rename = "INT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    SigQuit,
    #[serde(rename = "QUIT")]
    Quit,
    #[serde(rename = "SIGHUP")]
    SigHup,
    #[serde(rename = "HUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    SigUsr1,
    #[serde(rename = "USR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    SigUsr2,
    #[serde(rename = "USR2")]
    Usr2,
    #[serde(rename = "SIGKILL")]
    SigKill,
    #[serde(rename = "KILL")]
    Kill,
}

/// A `/v1` error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiErrorDoc {
    /// The HTTP status, repeated.
    pub status: u16,
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `app_not_found`, `not_found`,
    /// `already_stopped`, `stop_in_progress`, `request_timeout`, `payload_too_large`,
    /// `docker_unavailable`, `docker_error`, `store_error`, `internal_error`, `not_ready`…
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// On a stop's 409: the record as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRecordDoc>,
}

/// The errors of the authenticated `/v1` routes.
#[derive(Debug, IntoResponses)]
pub enum V1Errors {
    /// A malformed app id, query or body.
    #[response(status = 400)]
    BadRequest(ApiErrorDoc),
    /// No token, or one this node does not know.
    #[response(status = 401)]
    Unauthorized(ApiErrorDoc),
    /// The caller may not do this.
    #[response(status = 403)]
    Forbidden(ApiErrorDoc),
    /// No such app (or none the caller may see).
    #[response(status = 404)]
    NotFound(ApiErrorDoc),
    /// The body did not arrive in time.
    #[response(status = 408)]
    RequestTimeout(ApiErrorDoc),
    /// The app's container is not running, or a stop of it is under way.
    #[response(status = 409)]
    Conflict(ApiErrorDoc),
    /// The body is over 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(ApiErrorDoc),
    /// The agent's store failed, or an internal fault.
    #[response(status = 500)]
    Internal(ApiErrorDoc),
    /// The engine refused the call.
    #[response(status = 502)]
    BadGateway(ApiErrorDoc),
    /// The engine is unreachable.
    #[response(status = 503)]
    Unavailable(ApiErrorDoc),
}

/// Errors of the operational routes that need a token.
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

/// The errors of the ~okeanos stop route, with the LoD texts.
#[derive(Debug, IntoResponses)]
pub enum LodErrors {
    /// No `lambda_instance_id`, or a body that cannot be read.
    #[response(status = 400)]
    BadRequest(LodErrorDoc),
    /// No token, or one this node does not know.
    #[response(status = 401)]
    Unauthorized(LodErrorDoc),
    /// The caller may not stop this app.
    #[response(status = 403)]
    Forbidden(LodErrorDoc),
    /// No such instance, application, or deployment on this instance.
    #[response(status = 404)]
    NotFound(LodErrorDoc),
    /// The body did not arrive in time.
    #[response(status = 408)]
    RequestTimeout(LodErrorDoc),
    /// Already stopped, not running, or a stop under way.
    #[response(status = 409)]
    Conflict(LodErrorDoc),
    /// The body is over 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(LodErrorDoc),
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

/// The ~okeanos stop's form: multipart (`curl -F`), url-encoded, or JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct LodStopForm {
    /// Must be this node's `node.id`.
    pub lambda_instance_id: Option<String>,
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

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "node-agent",
        description = "Stops application containers on this node, on request, and keeps their records. \
            Every route but /healthz, /readyz (and /metrics when configured open) takes \
            `Authorization: Bearer <token>` or `Authorization: Token <token>`.",
    ),
    paths(
        super::v1::list_apps,
        super::v1::get_app,
        super::v1::put_app,
        super::v1::delete_app,
        super::v1::stop_app,
        super::okeanos::stop_app,
        super::ops::node,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        document,
    ),
    components(schemas(
        AppRecordDoc,
        RegistrationDoc,
        AppListDoc,
        StopBodyDoc,
        ApiErrorDoc,
        LodErrorDoc,
        NodeReport,
        StopOutcome,
    )),
    modifiers(&Security, &OkeanosWithoutSlash),
    security(("bearer" = [])),
    tags(
        (name = "v1", description = "CamposCloud-compatible app records and stops"),
        (name = "okeanos", description = "~okeanos Lambda on Demand stop"),
        (name = "operations", description = "Health, readiness, the node, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// Both the `Bearer` and the `Token` scheme carry the token; the document names the standard one.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The ~okeanos route answers with and without its trailing slash; the document says both.
struct OkeanosWithoutSlash;

impl Modify for OkeanosWithoutSlash {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let with = "/api/apps/{id}/stop/";
        if let Some(item) = openapi.paths.paths.get(with).cloned() {
            openapi
                .paths
                .paths
                .insert(with.trim_end_matches('/').to_owned(), item);
        }
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document of this agent", content_type = "application/json", body = Object),
        OpsErrors,
    ),
)]
pub async fn document(_caller: super::extract::Caller) -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| {
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| {
            format!("{{\"error\": \"the document could not be rendered: {e}\"}}")
        })
    });
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/v1/apps", "get"),
            ("/v1/apps/{appId}", "get"),
            ("/v1/apps/{appId}", "put"),
            ("/v1/apps/{appId}", "delete"),
            ("/v1/apps/{appId}/stop", "post"),
            ("/api/apps/{id}/stop/", "post"),
            ("/api/apps/{id}/stop", "post"),
            ("/v1/node", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path}"
            );
        }
        let stop = &paths["/v1/apps/{appId}/stop"]["post"]["responses"];
        for status in ["200", "400", "401", "403", "404", "409", "503"] {
            assert!(stop.get(status).is_some(), "stop answers {status}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["AppRecordDoc"].is_object());
    }
}
