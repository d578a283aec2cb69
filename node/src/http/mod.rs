//! The HTTP API every node serves (axum): operations endpoints and shoal's own `/v1` API.
//!
//! Layers, outermost first: body-size limit (413 beyond `http.body_bytes_max`), bearer-token
//! auth when `http.tokens` is set (health probes stay open), then the routes.

mod cluster;
mod error;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shoal_raft::Cluster;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Cluster,
    pub tokens: Arc<Vec<String>>,
}

/// Where the TES API is served: its own base path, and `/v1` (used by the TES compliance
/// suite and some clients).
const TES_PREFIXES: [&str; 2] = ["/ga4gh/tes/v1", "/v1"];

pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    let mut router = Router::new();
    for prefix in TES_PREFIXES {
        router = router
            .route(
                &format!("{prefix}/tasks"),
                axum::routing::post(crate::tes::create),
            )
            .route(
                &format!("{prefix}/tasks/{{target}}"),
                get(crate::tes::get).post(crate::tes::action),
            );
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(cluster::status))
        .route(
            "/v1/cluster/nodes/{target}",
            axum::routing::post(cluster::node_action).delete(cluster::remove),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.cluster.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no cluster leader known\n",
        )
            .into_response()
    }
}

/// Compares without an early exit, so timing does not tell how much of a token matched.
fn same_token(given: &[u8], known: &[u8]) -> bool {
    given.len() == known.len()
        && given
            .iter()
            .zip(known)
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let open = matches!(request.uri().path(), "/healthz" | "/readyz");
    if state.tokens.is_empty() || open {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::as_bytes);
    match given {
        Some(given) if state.tokens.iter().any(|t| same_token(given, t.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response(),
    }
}
