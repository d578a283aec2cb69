//! The HTTP API every node serves (axum): operations endpoints and shoal's own `/v1` API.
//!
//! Layers, outermost first: CORS (only when `http.tokens` is set: any origin, so browser
//! clients work, preflights answered before auth; without tokens, a request a browser sends
//! from another site's page is refused, so no web page can drive an unauthenticated node),
//! body-size limit (413 beyond `http.body_bytes_max`), request metrics, bearer-token
//! auth when `http.tokens` is set (health probes, `/openapi.json`, the dashboard's page, script
//! and styles, and `/metrics` stay open; `/metrics` asks for `http.metrics_token` when one is set), then the
//! routes. Auth tells the handlers who calls ([`Caller`]).

mod cluster;
mod error;
pub mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shoal_raft::Cluster;

pub use error::ApiError;

use crate::config::TokenConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Cluster,
    pub tokens: Arc<Vec<TokenConfig>>,
    /// The node listens on loopback only: without tokens, it then answers only requests
    /// addressed to a loopback name (no DNS rebinding).
    pub loopback_only: bool,
    /// `/metrics`: the registry, and the bearer token it asks for (open when `None`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub metrics_token: Option<Arc<str>>,
    /// Backups this node may stream at once (each holds a redb read open while it runs).
    pub backups: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The state of a node serving `cluster`, with its metrics and no metrics token.
    pub fn new(cluster: Cluster, tokens: Vec<TokenConfig>, loopback_only: bool) -> AppState {
        AppState {
            metrics: Arc::new(crate::metrics::Metrics::new(cluster.clone())),
            cluster,
            tokens: Arc::new(tokens),
            loopback_only,
            metrics_token: None,
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

/// Who sent a request, as its bearer token says. Without tokens configured every caller is
/// an anonymous administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Recorded as the owner of what the caller submits.
    pub name: String,
    /// Sees everyone's tasks and may manage the cluster.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see and cancel what `owner` submitted.
    pub fn sees(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }

    /// Refuses callers who are not administrators (403).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} is not an administrator's", self.name),
            ))
        }
    }
}

/// Longest `Idempotency-Key` a submission may carry.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// The submission's `Idempotency-Key` header, with a hash of the request it came with:
/// resending the same request with the same key answers the job the first one made.
pub fn idempotency(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Option<shoal_raft::job::IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            !key.is_empty()
                && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX
                && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key: 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
            ))
        })?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let request_hash = u64::from_be_bytes(
        digest[..8]
            .try_into()
            .map_err(|_| ApiError::internal("a sha-256 digest has 8 bytes"))?,
    );
    Ok(Some(shoal_raft::job::IdempotencyKey {
        key: key.to_string(),
        request_hash,
    }))
}

/// The answer to a submission whose idempotency key was used for another request.
pub fn key_reused(job_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("Idempotency-Key was used for a different request, which made {job_id}"),
    )
}

/// Where the TES API is served: its own base path, and `/v1` (used by the TES compliance
/// suite and some clients).
const TES_PREFIXES: [&str; 2] = ["/ga4gh/tes/v1", "/v1"];

pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    let cors = !state.tokens.is_empty();
    let mut router = Router::new();
    for prefix in TES_PREFIXES {
        router = router
            .route(
                &format!("{prefix}/tasks"),
                get(crate::tes::list).post(crate::tes::create),
            )
            .route(
                &format!("{prefix}/service-info"),
                get(crate::tes::service_info),
            )
            .route(
                &format!("{prefix}/tasks/{{target}}"),
                get(crate::tes::get).post(crate::tes::action),
            );
    }
    let router = router
        .route("/", get(crate::dashboard::page))
        .route("/dashboard.js", get(crate::dashboard::script))
        .route("/dashboard.css", get(crate::dashboard::styles))
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::serve))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/backup", get(cluster::backup))
        .route(
            "/v1/jobs",
            get(crate::pipeline::list).post(crate::pipeline::create),
        )
        .route(
            "/v1/jobs/{target}",
            get(crate::pipeline::get).post(crate::pipeline::action),
        )
        .route("/v1/jobs/{target}/datums", get(crate::pipeline::datums))
        .route(
            "/v1/jobs/{target}/events",
            get(crate::pipeline::events::events),
        )
        .route("/v1/datums/{id}", get(crate::pipeline::datum))
        .route("/v1/datums/{id}/logs", get(crate::pipeline::datum_logs))
        .route(
            "/v1/cluster/nodes/{target}",
            axum::routing::post(cluster::node_action).delete(cluster::remove),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_bytes_max));
    let router = if cors {
        router.layer(tower_http::cors::CorsLayer::permissive())
    } else {
        router
    };
    router.with_state(state)
}

/// Without tokens, whether a request may be answered: no browser page of another site sent
/// it (`Origin`, `Sec-Fetch-Site`), and, on a loopback-only node, it is addressed to a
/// loopback name, so a page that rebinds its own name to 127.0.0.1 gets nothing.
fn from_this_machine(request: &Request, loopback_only: bool) -> bool {
    let headers = request.headers();
    // A header that is not text counts as foreign.
    let text = |name| {
        headers
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap_or("\u{0}"))
    };
    if text(header::ORIGIN).is_some_and(|origin| !is_loopback_origin(origin)) {
        return false;
    }
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return false;
    }
    if loopback_only
        && let Some(host) = text(header::HOST)
        && !is_loopback_origin(&format!("http://{}", host.to_ascii_lowercase()))
    {
        return false;
    }
    true
}

/// Whether `origin` (a browser's `Origin` header) is a page served from this machine.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => rest.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
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

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/metrics"
        && let Some(token) = &state.metrics_token
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        return match given {
            Some(given) if same_token(given.as_bytes(), token.as_bytes()) => {
                next.run(request).await
            }
            Some(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid metrics token").into_response()
            }
            None => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: /metrics asks for http.metrics_token",
            )
            .into_response(),
        };
    }
    // The dashboard holds no data: it asks for a token and sends it with every request.
    let open = matches!(
        path,
        "/" | "/dashboard.js"
            | "/dashboard.css"
            | "/healthz"
            | "/readyz"
            | "/openapi.json"
            | "/metrics"
    );
    if state.tokens.is_empty() && !from_this_machine(&request, state.loopback_only) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "this node has no http.tokens: it answers only requests to a loopback address \
             that no other site's web page sent",
        )
        .into_response();
    }
    if state.tokens.is_empty() || open {
        request.extensions_mut().insert(Caller {
            name: String::new(),
            admin: state.tokens.is_empty(),
        });
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let known = given.and_then(|given| {
        state.tokens.iter().fold(None, |found, t| match found {
            None if same_token(given, t.token().as_bytes()) => Some(t),
            found => found,
        })
    });
    match (given, known) {
        (_, Some(token)) => {
            request.extensions_mut().insert(Caller {
                name: token.name().to_string(),
                admin: token.is_admin(),
            });
            next.run(request).await
        }
        (Some(_), None) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token").into_response()
        }
        (None, _) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_pages_from_this_machine_count_as_loopback_origins() {
        for origin in [
            "http://127.0.0.1:8000",
            "http://localhost:3000",
            "https://[::1]:9",
            "http://127.0.0.2",
        ] {
            assert!(super::is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "https://example.org",
            "http://10.0.0.1:8000",
            "null",
            "http://localhost.evil.org",
        ] {
            assert!(!super::is_loopback_origin(origin), "{origin}");
        }
    }
}
