//! The ~okeanos Lambda on Demand routes: `POST /api/apps/{application-id}/stop/` and `/start/`,
//! which check in the LoD server's order, answer 202 at once and act in the background. Errors are
//! `{"errors": [{"status", "detail"}]}` with the LoD texts.

pub mod schema;

use std::convert::Infallible;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiContext;
use super::extract::{BodyError, identify, log_unauthorized, read_body};
use super::refusals::clip;
use crate::agent::{AgentError, AlreadyRunning, AlreadyStopped, Mode, OpRequest};
use crate::lifecycle::Operation;
use crate::record::AppId;
use crate::stop::StopRequest;
use crate::telemetry::Route;
use schema::{LodAccepted, LodErrors, LodStopForm};

const STOP_ACCEPTED: &str = "Your request to stop the specified application has been accepted";
const START_ACCEPTED: &str = "Your request to start the specified application has been accepted";
const UNAUTHORIZED: &str = "Unauthorized. Request failed because user provided an invalid token.";
const NO_INSTANCE_ID: &str = "No lambda instance id provided.";
const NO_INSTANCE: &str = "The specified lambda instance doesn't exist.";
const NO_APPLICATION: &str = "The specified application doesn't exist.";
const NOT_DEPLOYED: &str =
    "The specified application is not deployed on the specified lambda instance.";
const ALREADY_STOPPED: &str =
    "The specified application on the specified lambda instance has already been stopped.";
const SLOT_FREE: &str = "The job slot of the specified application on the specified lambda instance is free: the application is not running.";
const ALREADY_STARTED: &str =
    "The specified application on the specified lambda instance has already been started.";
const SLOT_OCCUPIED: &str = "The job slot of the specified application on the specified lambda instance is occupied: the application is already running.";
const FORBIDDEN: &str = "You do not have permission to perform this action.";
const DRAINING: &str =
    "The specified lambda instance is draining: no application can be started on it.";

/// The form field, JSON key or query parameter naming the lambda instance.
const INSTANCE_FIELD: &str = "lambda_instance_id";

/// An error answer of the ~okeanos route.
#[derive(Debug)]
pub struct LodError {
    status: StatusCode,
    detail: String,
}

impl LodError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> LodError {
        LodError {
            status,
            detail: detail.into(),
        }
    }

    /// Maps a core error of `op`: the one place where these routes turn one into a status and a
    /// LoD text.
    fn from_agent(err: AgentError, op: Operation) -> LodError {
        let verb = op.verb();
        match err {
            AgentError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, NO_APPLICATION),
            AgentError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, FORBIDDEN),
            AgentError::AlreadyStopped { how, .. } => match how {
                AlreadyStopped::Gone => Self::new(StatusCode::NOT_FOUND, NOT_DEPLOYED),
                AlreadyStopped::ByTheAgent => Self::new(StatusCode::CONFLICT, ALREADY_STOPPED),
                AlreadyStopped::Unnoticed => Self::new(StatusCode::CONFLICT, SLOT_FREE),
            },
            AgentError::AlreadyRunning { how, .. } => match how {
                AlreadyRunning::Known => Self::new(StatusCode::CONFLICT, ALREADY_STARTED),
                AlreadyRunning::Unnoticed => Self::new(StatusCode::CONFLICT, SLOT_OCCUPIED),
            },
            AgentError::ContainerMissing { .. } => Self::new(StatusCode::NOT_FOUND, NOT_DEPLOYED),
            AgentError::NodeDraining { .. } => Self::new(StatusCode::CONFLICT, DRAINING),
            // These routes never end a drain; should one, the caller is told why.
            e @ AgentError::NotDraining => Self::new(StatusCode::CONFLICT, e.to_string()),
            // Only a stop in the background meets this, after its 202: its end is logged and
            // recorded; should one answer with it, the caller is told plainly.
            AgentError::StopOvertaken { .. } => Self::new(
                StatusCode::CONFLICT,
                "The specified application on the specified lambda instance was started again while it was being stopped.",
            ),
            // These routes never wait; should one, the caller is told plainly.
            AgentError::WaitTimeout { .. } => {
                Self::new(StatusCode::REQUEST_TIMEOUT, "The wait ran out of time.")
            }
            AgentError::InProgress { under_way, .. } => Self::new(
                StatusCode::CONFLICT,
                format!(
                    "A {} of the specified application on the specified lambda instance is already in progress.",
                    under_way.verb()
                ),
            ),
            AgentError::BadRequest(e) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            // These routes take no timeout and never wait; should they, the caller is told why.
            e @ AgentError::TimeoutOverCap { .. } => {
                Self::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            e @ AgentError::TooManyWaits { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
            AgentError::DockerUnavailable(cause) => {
                tracing::warn!(%cause, "Docker engine unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("The Docker engine of the lambda instance is unreachable: {cause}"),
                )
            }
            AgentError::Engine(cause) => {
                tracing::error!(%cause, "Docker engine error");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    format!("The Docker engine refused the {verb}: {cause}"),
                )
            }
            AgentError::Store(err) => {
                tracing::error!(error = ?err, "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The lambda instance's record store failed; its log has the cause.",
                )
            }
            AgentError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, cause)
            }
        }
    }
}

impl From<BodyError> for LodError {
    fn from(e: BodyError) -> LodError {
        match e {
            BodyError::TooLarge => Self::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            BodyError::TooSlow => Self::new(StatusCode::REQUEST_TIMEOUT, e.to_string()),
            BodyError::Unreadable(_) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

impl IntoResponse for LodError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"status": self.status.as_u16(), "detail": self.detail}]});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
        }
        response
    }
}

/// `lambda_instance_id` from the body, by its content type: a multipart form (`curl -F`), a
/// url-encoded form, or JSON. `None` when the body does not carry it.
async fn instance_from_body(headers: &HeaderMap, body: Bytes) -> Result<Option<String>, LodError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let malformed = |what: &str, e: &dyn std::fmt::Display| {
        LodError::new(
            StatusCode::BAD_REQUEST,
            format!("Malformed {what} body: {e}"),
        )
    };
    match essence.as_str() {
        "multipart/form-data" => {
            let boundary =
                multer::parse_boundary(content_type).map_err(|e| malformed("multipart", &e))?;
            let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
            let mut form = multer::Multipart::new(stream, boundary);
            while let Some(field) = form
                .next_field()
                .await
                .map_err(|e| malformed("multipart", &e))?
            {
                if field.name() == Some(INSTANCE_FIELD) {
                    let text = field.text().await.map_err(|e| malformed("multipart", &e))?;
                    return Ok(Some(text));
                }
            }
            Ok(None)
        }
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).map_err(|e| malformed("form", &e))?;
            Ok(pairs
                .into_iter()
                .find(|(k, _)| k == INSTANCE_FIELD)
                .map(|(_, v)| v))
        }
        "application/json" => {
            let value: Value = serde_json::from_slice(&body).map_err(|e| malformed("JSON", &e))?;
            if !value.is_object() {
                return Err(LodError::new(
                    StatusCode::BAD_REQUEST,
                    "Malformed JSON body: it must be an object.",
                ));
            }
            match value.get(INSTANCE_FIELD) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(LodError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`{INSTANCE_FIELD}` must be a string."),
                )),
            }
        }
        _ => Err(LodError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported media type \"{content_type}\" in request."),
        )),
    }
}

/// `lambda_instance_id` from the query string.
fn instance_from_query(query: Option<&str>) -> Result<Option<String>, LodError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
            LodError::new(
                StatusCode::BAD_REQUEST,
                format!("Malformed query string: {e}"),
            )
        })?;
    Ok(pairs
        .into_iter()
        .find(|(k, _)| k == INSTANCE_FIELD)
        .map(|(_, v)| v))
}

/// `POST /api/apps/{application-id}/stop/`.
#[utoipa::path(
    post,
    path = "/api/apps/{id}/stop/",
    operation_id = "okeanos_stop_app",
    tag = "okeanos",
    description = "Checks in the LoD order, answers 202 at once, and stops in the background; the \
        outcome shows in `GET /v1/apps/{id}`. The trailing slash is optional. `lambda_instance_id` \
        is required, in the body or in the query; given in both, the two must agree (else 400).",
    params(
        ("id" = String, Path, description = "The application id"),
        ("lambda_instance_id" = Option<String>, Query, description = "This node's id, if not in the body", pattern = r"\S"),
    ),
    request_body(
        description = "`lambda_instance_id`, as a multipart or url-encoded form field or a JSON key",
        content(
            (LodStopForm = "multipart/form-data"),
            (LodStopForm = "application/x-www-form-urlencoded"),
            (LodStopForm = "application/json"),
        ),
    ),
    responses((status = 202, description = "Accepted", body = LodAccepted), LodErrors),
)]
pub async fn stop_app(
    State(ctx): State<ApiContext>,
    app: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, LodError> {
    act(OkeanosAction::Stop, ctx, app, request).await
}

/// `POST /api/apps/{application-id}/start/`.
#[utoipa::path(
    post,
    path = "/api/apps/{id}/start/",
    operation_id = "okeanos_start_app",
    tag = "okeanos",
    description = "Checks in the LoD order, answers 202 at once, and starts in the background; the \
        outcome shows in `GET /v1/apps/{id}` (`lastStart`). The trailing slash is optional. \
        `lambda_instance_id` is required, in the body or in the query; given in both, the two must \
        agree (else 400).",
    params(
        ("id" = String, Path, description = "The application id"),
        ("lambda_instance_id" = Option<String>, Query, description = "This node's id, if not in the body", pattern = r"\S"),
    ),
    request_body(
        description = "`lambda_instance_id`, as a multipart or url-encoded form field or a JSON key",
        content(
            (LodStopForm = "multipart/form-data"),
            (LodStopForm = "application/x-www-form-urlencoded"),
            (LodStopForm = "application/json"),
        ),
    ),
    responses((status = 202, description = "Accepted", body = LodAccepted), LodErrors),
)]
pub async fn start_app(
    State(ctx): State<ApiContext>,
    app: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, LodError> {
    act(OkeanosAction::Start, ctx, app, request).await
}

/// The two operations the ~okeanos routes offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OkeanosAction {
    Stop,
    Start,
}

/// Both routes: the checks in the LoD order, then the core's background stop or start.
async fn act(
    action: OkeanosAction,
    ctx: ApiContext,
    app: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, LodError> {
    let op = match action {
        OkeanosAction::Stop => Operation::Stop,
        OkeanosAction::Start => Operation::Start,
    };
    let (parts, body) = request.into_parts();
    let uri = &parts.uri;
    let headers = &parts.headers;
    let query = parts.uri.query();
    // 1. The token.
    let path = clip(uri.path());
    let principal = identify(&parts, &ctx).map_err(|why| {
        ctx.agent
            .refused_unparsed(op, Route::Okeanos, None, &path, UNAUTHORIZED);
        log_unauthorized(&parts, why);
        LodError::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    })?;
    // Refusals met while parsing are handed to the core, which counts and logs them as its own.
    let checked = async {
        // 2. The lambda instance id, from the body or the query (both must agree).
        let bytes = read_body(headers, body).await?;
        let from_body = instance_from_body(headers, bytes).await?;
        let from_query = instance_from_query(query)?;
        let instance = match (from_body, from_query) {
            (Some(b), Some(q)) if b != q => {
                return Err(LodError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`{INSTANCE_FIELD}` is given twice, with different values."),
                ));
            }
            (Some(v), _) | (None, Some(v)) if !v.trim().is_empty() => v,
            _ => return Err(LodError::new(StatusCode::BAD_REQUEST, NO_INSTANCE_ID)),
        };
        // 3. This node is the instance.
        if instance.trim() != ctx.agent.node().id {
            return Err(LodError::new(StatusCode::NOT_FOUND, NO_INSTANCE));
        }
        // 4. A malformed application id names no application.
        let id = app
            .ok()
            .and_then(|Path(raw)| AppId::parse(&raw).ok())
            .ok_or_else(|| LodError::new(StatusCode::NOT_FOUND, NO_APPLICATION))?;
        Ok::<_, LodError>(id)
    };
    let id = checked.await.inspect_err(|e| {
        let token = Some(principal.name.as_str());
        ctx.agent
            .refused_unparsed(op, Route::Okeanos, token, &path, &clip(&e.detail));
    })?;
    // 4. to 7. The application, the caller's right to act on it, its container, and its state.
    let request = OpRequest {
        principal,
        app: id,
        action: op,
        params: StopRequest::default(),
        mode: Mode::Background,
        route: Route::Okeanos,
    };
    ctx.agent
        .dispatch(request)
        .await
        .map_err(|e| LodError::from_agent(e, op))?;
    let accepted = match action {
        OkeanosAction::Stop => STOP_ACCEPTED,
        OkeanosAction::Start => START_ACCEPTED,
    };
    let body = json!({"status": {"short-description": accepted, "code": 202}});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        h
    }

    #[tokio::test]
    async fn instance_id_in_every_encoding() {
        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"lambda_instance_id\"\r\n\r\nn1\r\n--XyZ--\r\n";
        let cases = [
            ("multipart/form-data; boundary=XyZ", multipart),
            (
                "application/x-www-form-urlencoded",
                "other=1&lambda_instance_id=n1",
            ),
            ("application/json", r#"{"lambda_instance_id": "n1"}"#),
            (
                "application/json; charset=utf-8",
                r#"{"lambda_instance_id": "n1", "x": 2}"#,
            ),
        ];
        for (ct, body) in cases {
            let got = instance_from_body(&headers(ct), Bytes::from(body))
                .await
                .expect(ct);
            assert_eq!(got.as_deref(), Some("n1"), "{ct}");
        }
        assert_eq!(
            instance_from_query(Some("lambda_instance_id=n1"))
                .expect("q")
                .as_deref(),
            Some("n1")
        );
        assert_eq!(
            instance_from_body(&headers("application/json"), Bytes::new())
                .await
                .expect("empty"),
            None
        );
        assert_eq!(
            instance_from_body(&headers("application/json"), Bytes::from("{}"))
                .await
                .expect("{}"),
            None
        );
    }

    #[tokio::test]
    async fn malformed_bodies_are_4xx() {
        for (ct, body, status) in [
            ("application/json", "{", 400),
            ("application/json", r#"{"lambda_instance_id": 5}"#, 400),
            ("multipart/form-data", "x", 400),
            ("text/plain", "lambda_instance_id=n1", 415),
        ] {
            let err = instance_from_body(&headers(ct), Bytes::from(body))
                .await
                .expect_err(ct);
            assert_eq!(err.status.as_u16(), status, "{ct} {body}");
        }
    }
}
