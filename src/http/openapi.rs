//! `GET /openapi.json`: the API document, assembled from the code. The routes' own
//! `#[utoipa::path]` annotations give the paths, parameters and answers; the JSON shapes live beside
//! the handlers they describe (`v1::schema`, `okeanos::schema`, `ops::schema`). This module only
//! puts them together, adds what is common to every route, and serves the result.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::okeanos::schema::LodErrorDoc;
use super::ops::schema::OpsErrors;
use super::v1::schema::{
    ApiErrorDoc, AppListDoc, AppRecordDoc, EmptyBodyDoc, RegistrationDoc, StopBodyDoc,
};
use crate::agent::{DrainSummary, NodeReport};
use crate::record::{NodeReason, StartOutcome, StopOutcome};

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
        super::v1::app_events,
        super::v1::node::drain_node,
        super::v1::node::end_drain,
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
        NodeReason,
        DrainSummary,
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
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
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
    use crate::http::v1::schema::APP_ID_PATTERN;
    use crate::http::{ApiContext, router, routes};
    use crate::record::{DOCUMENTED, WorkerNode};
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
                crate::background::Background::new(),
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
