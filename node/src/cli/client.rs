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
        Err(error_answer(status, &bytes))
    }

    /// GETs `path` page by page, with the query `pairs` and each answer's page token: every
    /// page with `all`, else the first. The items, and whether more follow.
    pub async fn pages<P: DeserializeOwned, T>(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
        all: bool,
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<(Vec<T>, bool), CliError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.extend_pairs(pairs);
            if let Some(token) = &token {
                query.append_pair("page_token", token);
            }
            let (page, next) = split(self.get(&format!("{path}?{}", query.finish())).await?);
            items.extend(page);
            token = next.filter(|t| !t.is_empty());
            if !all || token.is_none() {
                return Ok((items, token.is_some()));
            }
        }
    }

    /// Opens the server-sent event stream at `path` (no overall timeout: it lasts as long as
    /// what it reports on).
    pub async fn events(&self, path: &str) -> Result<EventStream, CliError> {
        let request = self
            .http
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(EVENT_STREAM_TIMEOUT);
        let response = self.open(request).await?;
        Ok(EventStream {
            response,
            buffer: Vec::new(),
        })
    }
}

impl Client {
    /// Sends `request` with the token and answers the response whose body the caller
    /// reads as it arrives; an unsuccessful answer is its error.
    async fn open(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| CliError::unreachable(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(error_answer(status, &bytes));
        }
        Ok(response)
    }

    /// GETs `path` into `out` chunk by chunk; the bytes written. No overall timeout (a
    /// download lasts as long as it is large), but a stall longer than `DOWNLOAD_STALL_MAX`
    /// fails it.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (impl std::io::Write + ?Sized),
    ) -> Result<u64, CliError> {
        let request = self.http.get(self.url(path)).timeout(DOWNLOAD_TIMEOUT);
        let mut response = self.open(request).await?;
        let mut written = 0_u64;
        loop {
            let chunk = tokio::time::timeout(DOWNLOAD_STALL_MAX, response.chunk())
                .await
                .map_err(|_| {
                    CliError::failed(format!(
                        "{} sent nothing for {DOWNLOAD_STALL_MAX:?}",
                        self.base
                    ))
                })?
                .map_err(|e| CliError::failed(format!("reading from {}: {e}", self.base)))?;
            let Some(chunk) = chunk else {
                return Ok(written);
            };
            out.write_all(&chunk)
                .map_err(|e| CliError::failed(format!("cannot write: {e}")))?;
            written += chunk.len() as u64;
        }
    }
}

/// Longest a download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest a download may wait for its next bytes.
const DOWNLOAD_STALL_MAX: Duration = Duration::from_secs(120);

/// The error an unsuccessful answer stands for: 4xx is the caller's input (exit 2), 503 and
/// 504 may succeed when sent again.
fn error_answer(status: reqwest::StatusCode, bytes: &[u8]) -> CliError {
    let message = serde_json::from_slice::<ErrorView>(bytes)
        .map(|view| view.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).trim().to_string());
    let message = format!("{status}: {message}");
    if status.is_client_error() {
        CliError::input(message)
    } else {
        let retryable = matches!(status.as_u16(), 503 | 504);
        CliError {
            retryable,
            ..CliError::failed(message)
        }
    }
}

/// Longest an event stream may stay open.
const EVENT_STREAM_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest event the CLI accepts.
const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A server-sent event stream being read.
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event's name and data; `None` when the server ended the stream. Comments
    /// (keep-alives) and events without data are skipped.
    pub async fn next(&mut self) -> Result<Option<(String, String)>, CliError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.buffer.len() > EVENT_BYTES_MAX {
                return Err(CliError::failed(format!(
                    "an event larger than {EVENT_BYTES_MAX} bytes"
                )));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(CliError::unreachable(format!(
                        "the event stream broke: {e}"
                    )));
                }
            }
        }
    }
}

/// One event block's name (default `message`) and data lines joined by newlines.
fn parse_event(block: &str) -> Option<(String, String)> {
    let mut name = "message".to_string();
    let mut data: Option<String> = None;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    data.map(|data| (name, data))
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

#[cfg(test)]
mod tests {
    use super::parse_event;

    #[test]
    fn event_blocks_parse_and_comments_are_skipped() {
        assert_eq!(
            parse_event("event: job\ndata: {\"a\":1}\n\n"),
            Some(("job".into(), "{\"a\":1}".into()))
        );
        assert_eq!(
            parse_event("data: one\ndata: two\n"),
            Some(("message".into(), "one\ntwo".into()))
        );
        assert_eq!(parse_event(": keep-alive\n\n"), None);
    }
}
