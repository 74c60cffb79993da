//! `GET /openapi.json`: the API described from the code. The routes' own `#[utoipa::path]`
//! annotations give the paths, parameters and answers; the types here describe the JSON shapes that
//! the handlers build as values (records keep every registered key, so they are open objects).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use crate::agent::NodeReport;
use crate::record::{
    DOCUMENTED, EngineUnavailable, LastExit, LastStart, LastStop, ResourceMetrics, Shape,
    StartOutcome, StopOutcome, WorkerNode,
};

/// App ids: `[A-Za-z0-9._-]{1,128}`, except `.` and `..` (URL dot-segments, which clients
/// rewrite), written without look-ahead so that every generator of test data reads it.
pub const APP_ID_PATTERN: &str = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$";

/// Docker container names and ids, as a registration's `containerId` is checked.
const CONTAINER_REF_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$";

/// The `{appId}` path parameter of the `/v1` app routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppIdParam {
    /// The app id: `[A-Za-z0-9._-]{1,128}`, not `.` or `..`. (utoipa takes only a literal
    /// pattern here; `tests::app_ids_are_described_by_one_pattern` holds it to [`APP_ID_PATTERN`].)
    #[param(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
    )]
    #[allow(dead_code)]
    #[param(rename = "appId")]
    app_id: String,
}

fn typed(types: &[Type]) -> ObjectBuilder {
    match types {
        [one] => ObjectBuilder::new().schema_type(one.clone()),
        many => ObjectBuilder::new().schema_type(SchemaType::from_iter(many.iter().cloned())),
    }
}

/// An integer that fits an i64 or a u64 (JSON numbers beyond are refused), or one of `types`.
fn integer(types: &[Type]) -> ObjectBuilder {
    typed(types).minimum(Some(i64::MIN)).maximum(Some(u64::MAX))
}

/// What a registration's documented key must be, as [`Shape::accepts`] checks it.
fn shape_schema(shape: Shape) -> RefOr<Schema> {
    let any = || {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .build(),
        ))
    };
    let schema: Schema = match shape {
        Shape::Str => typed(&[Type::String]).into(),
        Shape::NullableStr => typed(&[Type::String, Type::Null]).into(),
        Shape::Int => integer(&[Type::Integer]).into(),
        Shape::NullableInt => integer(&[Type::Integer, Type::Null]).into(),
        Shape::Bool => typed(&[Type::Boolean]).into(),
        Shape::Array => ArrayBuilder::new().items(any()).into(),
        Shape::NullableObject => typed(&[Type::Object, Type::Null]).into(),
        Shape::DateTime => typed(&[Type::String])
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into(),
        Shape::Status => typed(&[Type::String])
            .enum_values(Some(["active", "creating", "suspended"]))
            .into(),
        Shape::Team => {
            let member = typed(&[Type::Object])
                .property("user", typed(&[Type::String]))
                .required("user")
                .property("permissions", typed(&[Type::Object]));
            let team = typed(&[Type::Object])
                .property("owner", typed(&[Type::String]))
                .property("members", ArrayBuilder::new().items(member));
            OneOfBuilder::new()
                .item(typed(&[Type::Null]))
                .item(typed(&[Type::String]))
                .item(team)
                .into()
        }
    };
    RefOr::T(schema)
}

/// An object holding every documented key of a registration (`containerId` required and checked),
/// each with its type, and open to any other key.
fn documented_keys(description: &str) -> ObjectBuilder {
    let mut object = typed(&[Type::Object])
        .description(Some(description))
        .property(
            "containerId",
            typed(&[Type::String])
                .pattern(Some(CONTAINER_REF_PATTERN))
                .description(Some("A Docker container name or id on this node")),
        )
        .required("containerId");
    for (key, shape) in DOCUMENTED.iter().filter(|(k, _)| *k != "containerId") {
        object = object.property(*key, shape_schema(*shape));
    }
    object
}

/// A registration: the record in the CamposCloud shape, drawn from the checks a registration
/// passes ([`DOCUMENTED`]), so the two cannot drift apart.
#[derive(Debug)]
pub struct RegistrationDoc;

impl PartialSchema for RegistrationDoc {
    fn schema() -> RefOr<Schema> {
        documented_keys(
            "The app's record in the CamposCloud shape. `containerId` is required; an `_id`, if \
             given, must equal the path's app id; the keys the agent owns (`workerNodeId`, \
             `currentResourceMetrics`, `lastExit`, `lastStop`, `lastStart`, `updatedAt`, `generation`) are
             ignored; every \
             other key is kept as given, and the documented ones must have their documented types.",
        )
        .into()
    }
}

impl ToSchema for RegistrationDoc {}

/// An app record as the agent answers it: every key the control plane registered, in its order
/// (the documented ones with their types), and the keys the agent owns.
#[derive(Debug)]
pub struct AppRecordDoc;

impl PartialSchema for AppRecordDoc {
    fn schema() -> RefOr<Schema> {
        let owned = [
            ("workerNodeId", WorkerNode::name(), true),
            ("currentResourceMetrics", ResourceMetrics::name(), true),
            ("lastExit", LastExit::name(), false),
            ("lastStop", LastStop::name(), false),
            ("lastStart", LastStart::name(), false),
            ("engineUnavailable", EngineUnavailable::name(), false),
        ];
        let mut object = documented_keys(
            "An app record: the keys the control plane registered, as given and in order, and \
             the keys the agent owns. `currentResourceMetrics` is the container's last sample; \
             after a stop, the one taken just before it.",
        )
        .property("_id", typed(&[Type::String]).pattern(Some(APP_ID_PATTERN)))
        .required("_id");
        for (key, schema, required) in owned {
            object = object.property(key, Ref::from_schema_name(schema));
            if required {
                object = object.required(key);
            }
        }
        object
            .property("updatedAt", shape_schema(Shape::DateTime))
            .required("updatedAt")
            .property(
                "generation",
                typed(&[Type::Integer]).description(Some(
                    "From the node's one counter, which only goes up, drawn anew in the \
                     transaction of every change to the record: the higher, the newer",
                )),
            )
            .required("generation")
            .into()
    }
}

impl ToSchema for AppRecordDoc {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into_owned(), T::schema()));
            T::schemas(schemas);
        }
        add::<WorkerNode>(schemas);
        add::<ResourceMetrics>(schemas);
        add::<LastExit>(schemas);
        add::<EngineUnavailable>(schemas);
        add::<LastStop>(schemas);
        add::<LastStart>(schemas);
    }
}

/// `GET /v1/apps`: one page of the caller's records.
#[derive(Debug, ToSchema)]
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
/// instead; one key in both is refused). An empty body is valid; other keys are refused.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBodyDoc {
    /// Seconds between the signal and the kill (0 kills at once).
    #[schema(minimum = 0, maximum = 3600, nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// The stop signal, with or without the `SIG` prefix.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, ToSchema)]
pub struct ApiErrorDoc {
    /// The HTTP status, repeated.
    pub status: u16,
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `app_not_found`, `not_found`,
    /// `already_stopped`, `already_running`, `container_missing`, `stop_in_progress`,
    /// `start_in_progress`, `restart_in_progress`, `stop_overtaken`, `request_timeout`,
    /// `payload_too_large`,
    /// `docker_unavailable`, `docker_error`, `store_error`, `internal_error`, `not_ready`…
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// On the 409 of a stop, start or restart: the record as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRecordDoc>,
}

/// A start's optional body: nothing, `{}` or `null`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBodyDoc {}

/// The errors of the authenticated `/v1` routes.
#[derive(Debug, IntoResponses)]
pub enum V1Errors {
    /// A malformed app id, query or body, or a stop `timeout` over a user token's cap.
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
    /// The body did not arrive in time, or a wait ran out of time (`wait_timeout`, with the record
    /// under `app`).
    #[response(status = 408)]
    RequestTimeout(ApiErrorDoc),
    /// A stop of a container that is not running, a start of one that runs, a container that no
    /// longer exists, another stop, start or restart of the app under way, or a container started
    /// again by someone else while the stop (or a restart's stop) ran (`stop_overtaken`).
    #[response(status = 409)]
    Conflict(ApiErrorDoc),
    /// The body is over 1 MiB.
    #[response(status = 413)]
    PayloadTooLarge(ApiErrorDoc),
    /// Too many concurrent waits of this user token (`too_many_requests`, with `Retry-After`).
    #[response(status = 429)]
    TooManyRequests(ApiErrorDoc),
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

/// The errors of the ~okeanos stop and start routes, with the LoD texts.
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
        super::v1::start_app,
        super::v1::restart_app,
        super::v1::wait_app,
        super::okeanos::stop_app,
        super::okeanos::start_app,
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
        EmptyBodyDoc,
        ApiErrorDoc,
        LodErrorDoc,
        NodeReport,
        StopOutcome,
        StartOutcome,
    )),
    modifiers(&Security, &OkeanosRoute, &ResponseHeaders),
    security(("bearer" = [])),
    tags(
        (name = "v1", description = "CamposCloud-compatible app records, stops, starts and restarts"),
        (name = "okeanos", description = "~okeanos Lambda on Demand stop and start"),
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

/// Headers every answer carries: `x-request-id` on all of them, and `WWW-Authenticate` on a 401.
struct ResponseHeaders;

impl Modify for ResponseHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        let string = || typed(&[Type::String]).build();
        let request_id = HeaderBuilder::new()
            .schema(string())
            .description(Some(
                "The request's id: the client's own when it is a short token, else a fresh one; \
                 every log line of the request carries it",
            ))
            .build();
        let challenge = HeaderBuilder::new()
            .schema(string())
            .description(Some("The scheme to authenticate with"))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response
                        .headers
                        .insert(super::trace::REQUEST_ID.to_owned(), request_id.clone());
                    if status == "401" {
                        response
                            .headers
                            .insert("www-authenticate".to_owned(), challenge.clone());
                    }
                }
            }
        }
    }
}

/// The ~okeanos routes: their body is optional (the instance id may come in the query), and they
/// answer with and without the trailing slash, so the document has both paths, each with an
/// operation id of its own.
struct OkeanosRoute;

impl Modify for OkeanosRoute {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for verb in ["stop", "start"] {
            let with = format!("/api/apps/{{id}}/{verb}/");
            let Some(item) = openapi.paths.paths.get_mut(&with) else {
                continue;
            };
            if let Some(body) = item.post.as_mut().and_then(|op| op.request_body.as_mut()) {
                body.required = Some(utoipa::openapi::Required::False);
            }
            let mut without = item.clone();
            if let Some(op) = without.post.as_mut() {
                op.operation_id = Some(format!("okeanos_{verb}_app_without_slash"));
            }
            openapi
                .paths
                .paths
                .insert(with.trim_end_matches('/').to_owned(), without);
        }
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
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

    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use crate::agent::{Agent, Limits};
    use crate::auth::{TokenBook, Tokens};
    use crate::http::{ApiContext, router, routes};
    use crate::runtime::fake::FakeRuntime;
    use crate::store::Store;

    /// A path with its parameters' names left out: `/v1/apps/{}`.
    fn shape(path: &str) -> String {
        let mut out = String::new();
        let mut in_name = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_name = true;
                    out.push_str("{}");
                }
                '}' => in_name = false,
                c if !in_name => out.push(c),
                _ => {}
            }
        }
        out
    }

    #[tokio::test]
    async fn the_document_describes_exactly_the_routes_and_methods_served() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("path item")
                    .keys()
                    .map(move |method| (shape(path), method.to_uppercase()))
            })
            .collect();

        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("store");
        let node = WorkerNode {
            id: "n".into(),
            node_name: "N".into(),
        };
        let ctx = ApiContext {
            agent: Agent::new(
                Arc::new(FakeRuntime::new(true)),
                store,
                node,
                Limits::default(),
            ),
            tokens: Tokens::new(TokenBook::default()),
            trust_root_on_socket: false,
            metrics_open: false,
        };
        let app = router(ctx);
        // What the router serves: every method that does not answer 405 on each of its paths. (A
        // path the router lacks would answer its fallback's 404 to every method, and differ too.)
        let mut served = BTreeSet::new();
        for (path, _) in routes() {
            let concrete = shape(path).replace("{}", "x");
            for method in [
                Method::GET,
                Method::PUT,
                Method::POST,
                Method::DELETE,
                Method::PATCH,
            ] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&concrete)
                    .body(Body::empty())
                    .expect("request");
                let answer = app.clone().oneshot(request).await.expect("answer");
                if answer.status() != StatusCode::METHOD_NOT_ALLOWED {
                    served.insert((shape(path), method.as_str().to_owned()));
                }
            }
        }
        assert_eq!(
            documented, served,
            "documented (left) and served (right) differ"
        );
    }

    #[test]
    fn every_operation_has_its_own_id_and_the_errors_it_can_answer() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("item") {
                let id = operation["operationId"].as_str().expect("operation id");
                assert!(ids.insert(id.to_owned()), "{id} twice ({method} {path})");
                let responses = operation["responses"].as_object().expect("responses");
                for answer in responses.values() {
                    assert!(
                        answer["headers"]["x-request-id"].is_object(),
                        "{method} {path}: x-request-id"
                    );
                }
                if let Some(unauthorized) = responses.get("401") {
                    assert!(unauthorized["headers"]["www-authenticate"].is_object());
                }
            }
        }
        let paths = &doc["paths"];
        let stop = &paths["/v1/apps/{appId}/stop"]["post"]["responses"];
        for status in [
            "200", "400", "401", "403", "404", "408", "409", "413", "503",
        ] {
            assert!(stop.get(status).is_some(), "the v1 stop answers {status}");
        }
        for path in ["/api/apps/{id}/stop/", "/api/apps/{id}/stop"] {
            let op = &paths[path]["post"];
            for status in [
                "202", "400", "401", "403", "404", "409", "413", "415", "503",
            ] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{path} answers {status}"
                );
            }
            assert_eq!(
                op["requestBody"]["required"], false,
                "{path}: body optional"
            );
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn app_ids_are_described_by_one_pattern() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        let param = &doc["paths"]["/v1/apps/{appId}"]["get"]["parameters"][0];
        assert_eq!(param["name"], "appId");
        assert_eq!(param["schema"]["pattern"], APP_ID_PATTERN);
        let record = &doc["components"]["schemas"]["AppRecordDoc"];
        assert_eq!(record["properties"]["_id"]["pattern"], APP_ID_PATTERN);
    }

    #[test]
    fn the_registration_schema_follows_the_registration_checks() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("JSON");
        let registration = &doc["components"]["schemas"]["RegistrationDoc"];
        assert_eq!(registration["required"], serde_json::json!(["containerId"]));
        for (key, _) in DOCUMENTED {
            assert!(
                registration["properties"][key].is_object(),
                "registration schema lacks {key}"
            );
        }
        assert_eq!(
            registration["properties"]["allocatedMemoryMB"]["type"],
            "integer"
        );
        let record = &doc["components"]["schemas"]["AppRecordDoc"];
        for key in [
            "_id",
            "containerId",
            "workerNodeId",
            "currentResourceMetrics",
            "updatedAt",
        ] {
            assert!(
                record["required"]
                    .as_array()
                    .expect("required")
                    .iter()
                    .any(|k| k == key),
                "record requires {key}"
            );
        }
        for schema in ["WorkerNode", "ResourceMetrics", "LastExit", "LastStop"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }
}
