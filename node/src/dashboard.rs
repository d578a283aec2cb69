//! `GET /`: the web dashboard — one HTML page, its script (`/dashboard.js`) and its styles
//! (`/dashboard.css`), compiled into the binary (no CDN, no network at run time, no JavaScript
//! build step).
//!
//! The page holds no data: its script reads the node's own API with the bearer token the
//! user gives it (kept in the tab's session storage) and redraws itself every 1.5 s; a job's
//! page follows the job's change feed (`/v1/jobs/{id}/events`). Pages are addressed by the
//! URL's fragment: `#/` (cluster, members, tasks and jobs), `#/tasks/{id}`, `#/jobs/{id}`,
//! `#/datums/{id}?job={job}`. Its content security policy lets it run only its own script and
//! styles, and talk only to this node.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLES: &str = include_str!("dashboard.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard.css`.
pub async fn styles() -> Response {
    asset("text/css; charset=utf-8", STYLES)
}
