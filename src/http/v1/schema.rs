//! The JSON shapes of the `/v1` routes as the API document describes them: app ids, registrations
//! and records (drawn from the registration checks), lists, stop bodies and errors.

use serde::Serialize;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

use crate::record::{
    DOCUMENTED, EngineUnavailable, LastExit, LastStart, LastStop, ResourceMetrics, Shape,
    WorkerNode,
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
             `currentResourceMetrics`, `lastExit`, `lastStop`, `lastStart`, `restartCount`, `updatedAt`, `generation`) are
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
            .property(
                "restartCount",
                typed(&[Type::Integer]).minimum(Some(0)).description(Some(
                    "How many times the engine's restart policy restarted the container                      (its `RestartCount`), as last seen; absent before the container was seen",
                )),
            )
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

/// `GET /v1/apps/{appId}/events`: one page of an app's events, newest first.
#[allow(dead_code)] // described in the document, never built: the handler answers a JSON value
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPageDoc {
    pub events: Vec<crate::events::AppEvent>,
    /// Whether older events are kept beyond this page.
    pub has_more: bool,
}

/// `GET /v1/apps`: one page of the caller's records.
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
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

/// The optional JSON body of `POST /v1/node/drain` (the query may carry the same keys instead;
/// one key in both is refused). An empty body is valid; other keys are refused.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainBodyDoc {
    /// Each app's seconds between the signal and the kill (0 kills at once).
    #[schema(minimum = 0, maximum = 3600, nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// Each app's stop signal, with or without the `SIG` prefix.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalName>,
    /// Seconds after which every container still running is killed (default 3600).
    #[schema(minimum = 1, maximum = 86400, nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u32>,
}

/// A stop signal's name.
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
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
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
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
#[allow(dead_code)] // described in the document, never built: the handlers answer JSON values
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
