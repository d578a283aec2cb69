//! Observers of a test cluster for the metrics and dashboard tests and `tasks_bench`: a real
//! Prometheus scraping every node, and headless Chromium (over WebDriver, with fantoccini)
//! showing the dashboard. Both listen on loopback only; Chromium is pointed at a proxy that
//! is not there (loopback is never proxied), so the browser sends nothing beyond this machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{TestCluster, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A child process killed and reaped when dropped, with its temporary directory.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `host:port` of an `http://` URL.
pub fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Starts Prometheus scraping every node of `cluster` each second, with `token` as bearer
/// token when given.
pub fn start_prometheus(cluster: &TestCluster, token: Option<&str>) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("shoal-prom-").tempdir()?;
    let targets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("'{}'", host_port(&n.http_url())))
        .collect();
    let authorization = token
        .map(|token| format!("    authorization:\n      credentials: '{token}'\n"))
        .unwrap_or_default();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: shoal\n{authorization}\
         \x20   static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("start prometheus")?;
    Ok(Server {
        child,
        port,
        log,
        dir,
    })
}

/// An instant query's answer: (instance, value) per series.
pub async fn query(
    http: &reqwest::Client,
    prometheus: &Server,
    expr: &str,
) -> Result<Vec<(String, f64)>> {
    let answer: Value = http
        .get(format!(
            "{}/api/v1/query?query={}",
            prometheus.url(),
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let series = answer["data"]["result"]
        .as_array()
        .with_context(|| format!("{expr}: {answer}"))?;
    series
        .iter()
        .map(|s| {
            let instance = s["metric"]["instance"].as_str().unwrap_or("").to_string();
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("{expr}: {s}"))?;
            Ok((instance, value))
        })
        .collect()
}

/// Starts chromedriver on a free port of localhost (its default: it listens on loopback
/// only unless told to allow other addresses).
pub fn start_chromedriver() -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("shoal-chrome-").tempdir()?;
    let port = free_port();
    let log = dir.path().join("chromedriver.log");
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start chromedriver")?;
    Ok(Server {
        child,
        port,
        log,
        dir,
    })
}

/// A headless Chromium session through `driver`.
pub async fn browser(driver: &Server) -> Result<fantoccini::Client> {
    let profile = driver.dir.path().join("profile");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                // Nothing leaves this machine: every non-loopback request goes to a proxy
                // that is not there, and the browser's own background services are off.
                "--proxy-server=http://127.0.0.1:9", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
                "--disable-client-side-phishing-detection", "--metrics-recording-only",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
            ],
        }),
    );
    let url = driver.url();
    let started = wait_for("chromedriver to answer", WAIT, async || {
        reqwest::get(format!("{url}/status"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    started.with_context(|| driver.log())?;
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .with_context(|| format!("open a Chromium session\n{}", driver.log()))?;
    Ok(client)
}

/// The page's answer to `script` (a function body returning a value).
pub async fn eval(page: &fantoccini::Client, script: &str) -> Result<Value> {
    Ok(page.execute(script, Vec::new()).await?)
}

/// Waits until `script` returns `true` in the page.
pub async fn wait_page(page: &fantoccini::Client, what: &str, script: &str) -> Result<()> {
    let found = wait_for(what, WAIT, async || {
        (eval(page, script).await.ok()? == Value::Bool(true)).then_some(())
    })
    .await;
    if found.is_err() {
        let body = eval(page, "return document.body.innerText")
            .await
            .unwrap_or_default();
        bail!(
            "timed out waiting for {what}; the page shows:\n{}",
            body.as_str().unwrap_or("")
        );
    }
    Ok(())
}
