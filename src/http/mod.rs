//! The HTTP layer: routes, extractors and answers. It parses requests, calls one method of the core,
//! and turns the result into a response; it holds no domain state of its own.

mod error;
mod extract;
pub(crate) mod okeanos;
pub mod openapi;
mod ops;
mod refusals;
pub mod server;
pub mod tls;
mod trace;
mod v1;

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::agent::Agent;
use crate::auth::Tokens;

pub use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler is given.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub agent: Agent,
    pub tokens: Tokens,
    /// On the Unix socket, a peer with uid 0 acts as operator without a token.
    pub trust_root_on_socket: bool,
    /// `GET /metrics` answers without a token.
    pub metrics_open: bool,
}

/// Every route: its path in axum's syntax and its handlers. The API document describes exactly
/// these paths and methods (`openapi::tests`).
fn routes() -> [(&'static str, MethodRouter<ApiContext>); 17] {
    [
        ("/v1/apps", get(v1::list_apps)),
        (
            "/v1/apps/{app_id}",
            get(v1::get_app).put(v1::put_app).delete(v1::delete_app),
        ),
        ("/v1/apps/{app_id}/stop", post(v1::stop_app)),
        ("/v1/apps/{app_id}/start", post(v1::start_app)),
        ("/v1/apps/{app_id}/restart", post(v1::restart_app)),
        ("/v1/apps/{app_id}/wait", get(v1::wait_app)),
        ("/v1/apps/{app_id}/events", get(v1::app_events)),
        (
            "/v1/node/drain",
            post(v1::node::drain_node).delete(v1::node::end_drain),
        ),
        ("/api/apps/{app_id}/stop/", post(okeanos::stop_app)),
        ("/api/apps/{app_id}/stop", post(okeanos::stop_app)),
        ("/api/apps/{app_id}/start/", post(okeanos::start_app)),
        ("/api/apps/{app_id}/start", post(okeanos::start_app)),
        ("/healthz", get(ops::healthz)),
        ("/readyz", get(ops::readyz)),
        ("/v1/node", get(ops::node)),
        ("/metrics", get(ops::metrics)),
        ("/openapi.json", get(openapi::document)),
    ]
}

/// The agent's routes.
pub fn router(ctx: ApiContext) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
        .fallback(ops::no_route)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(CatchPanicLayer::custom(ops::panicked))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            trace::track,
        ))
        .with_state(ctx)
}
