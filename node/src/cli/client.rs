//! The HTTP client the CLI commands use: JSON in and out, errors mapped to exit statuses.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CliError;
use crate::api::ErrorView;

/// How long one API call may take before the CLI gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client, CliError> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(CliError::input(format!(
                "--server {server:?} is not an http(s) URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CliError::failed(format!("cannot build HTTP client: {e}")))?;
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// Submits `value` as JSON (see [`Client::submit`]).
    pub async fn submit_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        value: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| CliError::failed(format!("cannot encode the request: {e}")))?;
        self.submit(path, body, "application/json").await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a submission `body` with an `Idempotency-Key`, sending it again while the
    /// cluster answers 503 (no leader) or 504 (maybe applied), or cannot be reached, for up
    /// to `SUBMIT_RETRY_WINDOW`: the key makes every resend answer the first one's job.
    pub async fn submit<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<T, CliError> {
        let key = idempotency_key();
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let request = self
                .http
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header("idempotency-key", &key)
                .body(body.clone());
            match self.send(request).await {
                Err(error) if error.retryable && started.elapsed() < SUBMIT_RETRY_WINDOW => {
                    eprintln!("{}; sending it again", error.message);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                answer => return answer,
            }
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                CliError::unreachable(format!("cannot reach {}: {e}", self.base))
            } else {
                CliError::failed(format!("request to {} failed: {e}", self.base))
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            CliError::unreachable(format!("reading the answer from {}: {e}", self.base))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CliError::failed(format!("unexpected answer from {}: {e}", self.base))
            });
        }
        let message = serde_json::from_slice::<ErrorView>(&bytes)
            .map(|view| view.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        let message = format!("{status}: {message}");
        if status.is_client_error() {
            Err(CliError::input(message))
        } else {
            let retryable = matches!(status.as_u16(), 503 | 504);
            Err(CliError {
                retryable,
                ..CliError::failed(message)
            })
        }
    }
}

/// How long a submission is sent again while the cluster has no answer.
const SUBMIT_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// A fresh idempotency key: this process, this instant, this call.
fn idempotency_key() -> String {
    use sha2::Digest;
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = format!(
        "{}:{:?}:{}",
        std::process::id(),
        std::time::SystemTime::now(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sha2::Sha256::digest(seed.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
