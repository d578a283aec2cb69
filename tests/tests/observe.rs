//! Seeing the cluster as an operator does: a real Prometheus (Debian's `prometheus`) scrapes
//! three nodes' `/metrics`, and headless Chromium (Debian's `chromium` + `chromium-driver`,
//! driven over WebDriver by fantoccini) uses the dashboard at `/`.
//!
//! Both listen on loopback only (see `shoal_tests::observe`). Screenshots
//! of each dashboard page are saved under `target/dashboard-screenshots/`.
//! Without the programs the tests fail when `CI` is set and are skipped with a message
//! otherwise (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_node::config::TokenConfig;
use shoal_tests::observe::{
    Server, browser, query, start_chromedriver, start_prometheus, wait_page,
};
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const ADMIN_TOKEN: &str = "observe-admin-token-0123456789";
const USER_TOKEN: &str = "observe-user-token-0123456789";
const METRICS_TOKEN: &str = "observe-metrics-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// Whether `program` can run here; without it the test fails in CI and is skipped elsewhere.
fn available(program: &str) -> Result<bool> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            bail!("{program} is not installed (scripts/test.sh installs it)");
        }
        eprintln!("skipped: {program} is not installed (scripts/test.sh installs it)");
    }
    Ok(found)
}

fn options() -> ClusterOptions {
    ClusterOptions {
        tokens: vec![
            TokenConfig::Admin(ADMIN_TOKEN.to_string()),
            TokenConfig::User {
                token: USER_TOKEN.to_string(),
                name: "ana".to_string(),
                admin: false,
            },
        ],
        client_token: Some(ADMIN_TOKEN.to_string()),
        configure: Some(std::sync::Arc::new(|config| {
            config.http.metrics_token = METRICS_TOKEN.to_string();
        })),
        ..ClusterOptions::default()
    }
}

// --- Prometheus ------------------------------------------------------------------------------

/// Waits until `expr` answers `series` series (3: one per node; 1: an aggregate), each equal
/// to `expected`.
async fn wait_series(
    http: &reqwest::Client,
    prometheus: &Server,
    series: usize,
    expr: &str,
    expected: f64,
) -> Result<()> {
    let mut last = Vec::new();
    let found = wait_for(expr, WAIT, async || {
        last = query(http, prometheus, expr).await.ok()?;
        (last.len() == series && last.iter().all(|(_, v)| *v == expected)).then_some(())
    })
    .await;
    found.with_context(|| format!("{expr}: last answer {last:?}, wanted {series} × {expected}"))
}

/// Every family `/metrics` must show, each with its HELP line.
const FAMILIES: &[&str] = &[
    "shoal_raft_term",
    "shoal_raft_is_leader",
    "shoal_raft_commit_index",
    "shoal_raft_applied_index",
    "shoal_raft_last_log_index",
    "shoal_raft_snapshot_index",
    "shoal_raft_leader_changes",
    "shoal_raft_entries_appended",
    "shoal_raft_entries_applied",
    "shoal_raft_apply_duration_seconds",
    "shoal_raft_log_flush_duration_seconds",
    "shoal_raft_snapshots_built",
    "shoal_raft_snapshots_installed",
    "shoal_raft_forwarded_operations",
    "shoal_raft_forward_duration_seconds",
    "shoal_cluster_members",
    "shoal_jobs",
    "shoal_datums",
    "shoal_claims_granted",
    "shoal_steals",
    "shoal_lease_expiries",
    "shoal_stale_reports",
    "shoal_worker_slots",
    "shoal_worker_running",
    "shoal_worker_attempts_started",
    "shoal_worker_attempts_ended",
    "shoal_worker_queue_wait_duration_seconds",
    "shoal_worker_run_duration_seconds",
    "shoal_worker_downloaded_bytes",
    "shoal_worker_uploaded_bytes",
    "shoal_worker_image_pull_duration_seconds",
    "shoal_http_requests",
    "shoal_http_request_duration_seconds",
];

#[tokio::test]
async fn prometheus_scrapes_every_node_and_the_counters_move_and_agree() -> Result<()> {
    if !available("prometheus")? {
        return Ok(());
    }
    let cluster = TestCluster::formed(3, options()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    phase("a real Prometheus scrapes the three nodes");
    let prometheus = start_prometheus(&cluster, Some(METRICS_TOKEN))?;
    let up = wait_series(&http, &prometheus, 3, "up{job=\"shoal\"}", 1.0).await;
    up.with_context(|| prometheus.log())?;
    wait_series(&http, &prometheus, 1, "sum(shoal_raft_is_leader)", 1.0).await?;
    wait_series(
        &http,
        &prometheus,
        3,
        "shoal_cluster_members{role=\"voter\"}",
        3.0,
    )
    .await?;

    phase("tasks run; the counters move on every node and agree where the log decides them");
    let before = query(&http, &prometheus, "sum(shoal_http_requests_total{route=\"/ga4gh/tes/v1/tasks\",method=\"POST\",status=\"200\"})").await?;
    ensure!(
        before.is_empty() || before[0].1 == 0.0,
        "tasks before any: {before:?}"
    );
    const TASKS: usize = 6;
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let task = json!({ "executors": [{ "image": "busybox", "command": ["true"] }] });
        ids.push(cluster.submit_task(i % 3, &task).await?);
    }
    for id in &ids {
        let task = cluster.wait_task(0, id, WAIT).await?;
        ensure!(task["state"] == "COMPLETE", "task {id} ended: {task}");
    }
    for (kind, listed) in [("task", TASKS), ("all", TASKS), ("pipeline", 0)] {
        let list: Value = cluster.get(0, &format!("/v1/jobs?kind={kind}")).await?;
        let jobs = list["jobs"].as_array().map_or(0, Vec::len);
        ensure!(
            jobs == listed,
            "/v1/jobs?kind={kind} lists {jobs}, wanted {listed}"
        );
    }
    let bad = reqwest::Client::new()
        .get(format!(
            "{}/v1/jobs?kind=everything",
            cluster.nodes[0].http_url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    let status = bad.status();
    let body = bad.text().await?;
    ensure!(
        status == 400 && body.contains("kind"),
        "kind=everything: {status} {body}"
    );
    let done = TASKS as f64;
    wait_series(&http, &prometheus, 3, "shoal_datums{state=\"done\"}", done).await?;
    wait_series(
        &http,
        &prometheus,
        3,
        "shoal_jobs{kind=\"task\",state=\"done\"}",
        done,
    )
    .await?;
    wait_series(
        &http,
        &prometheus,
        1,
        "sum(shoal_worker_attempts_ended_total{outcome=\"succeeded\"})",
        done,
    )
    .await?;
    wait_series(
        &http,
        &prometheus,
        1,
        "sum(shoal_worker_run_duration_seconds_count{executor=\"process\",outcome=\"succeeded\"})",
        done,
    )
    .await?;
    wait_series(
        &http,
        &prometheus,
         1,
        "sum(shoal_http_requests_total{route=\"/ga4gh/tes/v1/tasks\",method=\"POST\",status=\"200\"})",
        done,
    )
    .await?;
    // Every node applied the same entries since it started: the log's decisions agree.
    let granted = query(&http, &prometheus, "shoal_claims_granted_total").await?;
    ensure!(
        granted.len() == 3
            && granted
                .iter()
                .all(|(_, v)| *v >= done && *v == granted[0].1),
        "claims granted per node: {granted:?}"
    );
    // Entries were applied and flushed everywhere; two of every three submissions went to
    // a follower, which forwarded them.
    for expr in [
        "min(shoal_raft_entries_applied_total)",
        "sum(shoal_raft_log_flush_duration_seconds_count)",
        "sum(shoal_raft_forwarded_operations_total)",
    ] {
        let answer = query(&http, &prometheus, expr).await?;
        ensure!(
            answer.first().is_some_and(|(_, v)| *v > 0.0),
            "{expr}: {answer:?}"
        );
    }

    phase("/metrics asks for the metrics token, and shows every family with its help");
    let metrics_url = format!("{}/metrics", cluster.nodes[0].http_url());
    let refused = http.get(&metrics_url).send().await?.status();
    ensure!(refused == 401, "/metrics without the token: {refused}");
    let wrong = http
        .get(&metrics_url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    ensure!(
        wrong.status() == 401,
        "/metrics with an API token: {}",
        wrong.status()
    );
    let text = http
        .get(&metrics_url)
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    for family in FAMILIES {
        ensure!(
            text.contains(&format!("# HELP {family} ")),
            "/metrics has no HELP for {family}:\n{text}"
        );
    }
    phase(
        "every query of deploy/grafana/shoal.json is PromQL Prometheus takes, over series the nodes show",
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/shoal.json");
    let grafana: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let exprs: Vec<&str> = grafana["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .collect();
    ensure!(
        exprs.len() >= 10,
        "the Grafana dashboard has {} queries",
        exprs.len()
    );
    for expr in exprs {
        query(&http, &prometheus, expr)
            .await
            .with_context(|| format!("Grafana query {expr}"))?;
        for name in expr.split("shoal_").skip(1) {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let series = format!("\nshoal_{name}");
            ensure!(
                text.contains(&format!("{series}{{")) || text.contains(&format!("{series} ")),
                "the Grafana query {expr} uses shoal_{name}, which /metrics does not show"
            );
        }
    }
    Ok(())
}

// --- the dashboard in headless Chromium ------------------------------------------------------

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

async fn screenshot(page: &fantoccini::Client, name: &str) -> Result<()> {
    let png = page.screenshot().await?;
    ensure!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

/// Clicks the element `selector` finds, as a user does. The page redraws itself, so an
/// element found may be replaced before the click lands: find and click again until a click
/// lands on one that is there.
async fn click(page: &fantoccini::Client, selector: &str) -> Result<()> {
    use fantoccini::Locator;
    wait_for(&format!("a click on {selector}"), WAIT, async || {
        page.find(Locator::Css(selector))
            .await
            .ok()?
            .click()
            .await
            .ok()
    })
    .await
}

async fn use_token(page: &fantoccini::Client, token: &str) -> Result<()> {
    use fantoccini::Locator;
    click(page, "#token-button").await?;
    page.find(Locator::Css("#token-input"))
        .await?
        .send_keys(token)
        .await?;
    click(page, "#token-save").await?;
    Ok(())
}

#[tokio::test]
async fn the_dashboard_shows_the_cluster_and_follows_a_task_in_a_real_browser() -> Result<()> {
    if !available("chromedriver")? {
        return Ok(());
    }
    let options = ClusterOptions {
        configure: None,
        ..options()
    };
    let cluster = TestCluster::formed(3, options).await?;

    phase("without a metrics token /metrics is open like /healthz; the page is open, the API not");
    let http = reqwest::Client::new();
    let url = cluster.nodes[0].http_url();
    for (path, status) in [
        ("/metrics", 200),
        ("/", 200),
        ("/dashboard.js", 200),
        ("/dashboard.css", 200),
        ("/v1/cluster", 401),
    ] {
        let answer = http.get(format!("{url}{path}")).send().await?.status();
        ensure!(
            answer == status,
            "GET {path} without a token: {answer}, wanted {status}"
        );
    }
    let page = http.get(format!("{url}/")).send().await?;
    let policy = page.headers().get("content-security-policy").cloned();
    ensure!(
        policy.is_some_and(|p| p.to_str().is_ok_and(|p| p.contains("script-src 'self'"))),
        "the page's content security policy"
    );

    let driver = start_chromedriver()?;
    let page = browser(&driver).await?;
    let result = drive(&cluster, &page).await;
    let _ = page.close().await;
    result
}

async fn drive(cluster: &TestCluster, page: &fantoccini::Client) -> Result<()> {
    use fantoccini::Locator;
    let home = format!("{}/", cluster.nodes[0].http_url());

    phase("the page asks for a token, then lists the members");
    page.goto(&home).await?;
    wait_page(
        page,
        "the token form",
        "return document.getElementById('login').classList.contains('shown')",
    )
    .await?;
    screenshot(page, "1-token").await?;
    use_token(page, ADMIN_TOKEN).await?;
    wait_page(
        page,
        "three members",
        "return document.querySelectorAll('#members tbody tr').length === 3",
    )
    .await?;
    for name in ["n1", "n2", "n3"] {
        let row = page
            .find(Locator::Css(&format!("#members tr[data-node='{name}']")))
            .await;
        row.with_context(|| format!("member {name} listed"))?;
    }
    wait_page(
        page,
        "a leader",
        "return document.getElementById('leader').textContent !== 'none'",
    )
    .await?;
    screenshot(page, "2-cluster").await?;

    phase(
        "a submitted task appears without a reload, shows its output while it runs, and completes",
    );
    let marker = "hello-from-the-dashboard-test";
    let task = json!({
        "name": "dashboard-demo",
        "executors": [{ "image": "busybox", "command": ["sh", "-c", format!("echo {marker}; sleep 8")] }]
    });
    let id = cluster.submit_task(1, &task).await?;
    wait_page(
        page,
        "the task in the list",
        &format!("return document.querySelector(\"#jobs tr[data-id='{id}']\") !== null"),
    )
    .await?;
    screenshot(page, "3-tasks").await?;
    click(page, &format!("#jobs tr[data-id='{id}'] a")).await?;
    wait_page(page, "the task's running output", &format!(
        "const s = document.getElementById('task-state'); \
         const out = [...document.querySelectorAll('pre.stdout')].map(p => p.textContent).join(''); \
         return s !== null && s.textContent === 'RUNNING' && out.includes('{marker}')"
    ))
    .await?;
    screenshot(page, "4-task-running").await?;
    let url = page.current_url().await?;
    ensure!(
        url.fragment() == Some(&*format!("/tasks/{id}")),
        "the task page's URL: {url}"
    );
    wait_page(page, "the task to complete", "const s = document.getElementById('task-state'); return s !== null && s.textContent === 'COMPLETE'").await?;
    screenshot(page, "5-task-complete").await?;

    phase("a pipeline job's page follows it to done; a datum's page shows what it printed");
    let input = cluster.files_dir().join("in");
    std::fs::create_dir_all(&input)?;
    for name in ["a", "b", "c"] {
        std::fs::write(input.join(name), name)?;
    }
    let job = json!({
        "pipeline": { "name": "dashboard-pipeline" },
        "transform": { "image": "busybox", "cmd": ["sh", "-c", "sleep 2; echo datum-says-$(ls /pfs/in)"] },
        "input": { "atom": { "repo": "in", "URI": format!("file://{}/", input.display()), "glob": "/*" } },
        "egress": { "URI": format!("file://{}/out/", cluster.files_dir().display()) },
    });
    let created = cluster.submit_job(2, &job).await?;
    let job_id = created["id"].as_str().context("job id")?.to_string();
    click(page, "header a").await?;
    click(page, &format!("#jobs tr[data-id='{job_id}'] a")).await?;
    wait_page(
        page,
        "the job's datums",
        "return document.querySelectorAll('#datums tbody tr').length === 3",
    )
    .await?;
    wait_page(
        page,
        "the job done without a reload",
        "const s = document.getElementById('job-state'); return s !== null && s.textContent === 'done'",
    )
    .await?;
    screenshot(page, "6-job").await?;
    click(page, "#datums tbody tr a").await?;
    wait_page(
        page,
        "the datum's output",
        "return [...document.querySelectorAll('pre.stdout')].some(p => p.textContent.includes('datum-says-'))",
    )
    .await?;
    screenshot(page, "7-datum").await?;

    phase("an administrator drains and undrains a node from the page");
    click(page, "header a").await?;
    let n3 = "#members tr[data-node='n3']";
    wait_page(
        page,
        "n3's drain button",
        &format!("return document.querySelector(\"{n3} button.drain\") !== null"),
    )
    .await?;
    click(page, &format!("{n3} button.drain")).await?;
    wait_page(
        page,
        "n3 draining",
        &format!("return document.querySelector(\"{n3} .draining\").textContent === 'draining'"),
    )
    .await?;
    let view: Value = cluster.get(0, "/v1/cluster").await?;
    let drained = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["name"] == "n3" && m["draining"] == true);
    ensure!(drained, "the cluster does not show n3 draining: {view}");
    screenshot(page, "8-drained").await?;
    click(page, &format!("{n3} button.undrain")).await?;
    wait_page(
        page,
        "n3 undrained",
        &format!("return document.querySelector(\"{n3} .draining\").textContent === ''"),
    )
    .await?;

    phase("a user's token sees the page but may not drain");
    use_token(page, USER_TOKEN).await?;
    wait_page(
        page,
        "the members for a user",
        "return document.querySelectorAll('#members tbody tr').length === 3",
    )
    .await?;
    click(page, "#members tr[data-node='n2'] button.drain").await?;
    wait_page(
        page,
        "the refusal",
        "return document.getElementById('message').textContent.includes('not an administrator')",
    )
    .await?;
    screenshot(page, "9-refused").await?;
    let view: Value = cluster.get(0, "/v1/cluster").await?;
    let drained = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["draining"] == true);
    ensure!(!drained, "a user's drain changed the cluster: {view}");

    phase("on a phone-width screen the page fits without scrolling sideways");
    page.set_window_size(390, 844).await?;
    wait_page(
        page,
        "the page at phone width",
        "return document.documentElement.scrollWidth <= window.innerWidth + 1",
    )
    .await?;
    screenshot(page, "10-phone").await?;
    Ok(())
}
