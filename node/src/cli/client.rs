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

    /// POSTs `body` as it is, with `content_type`.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<T, CliError> {
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(request).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
            Err(CliError::failed(message))
        }
    }
}
