//! The TES API as clients see it: validation errors, views, listing with filters and pages,
//! tokens and who sees what, CORS, and the OpenAPI document against the live routes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_node::config::TokenConfig;
use shoal_tests::{ClusterOptions, TestCluster, phase};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn single() -> ClusterOptions {
    ClusterOptions {
        bootstrap_expect: 1,
        ..Default::default()
    }
}

fn shell(script: &str) -> Value {
    json!({ "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] })
}

#[tokio::test]
async fn invalid_tasks_get_400_naming_the_field_and_change_nothing() -> Result<()> {
    let cluster = TestCluster::formed(1, single()).await?;
    let executor = json!({ "image": "busybox", "command": ["true"] });
    let with = |extra: Value| {
        let mut task = json!({ "executors": [executor.clone()] });
        for (key, value) in extra.as_object().expect("object") {
            task[key] = value.clone();
        }
        task
    };
    let cases: Vec<(&str, Value)> = vec![
        ("executors", json!({ "executors": [] })),
        (
            "executors[0].image",
            json!({ "executors": [{ "image": "", "command": ["true"] }] }),
        ),
        (
            "executors[0].command",
            json!({ "executors": [{ "image": "x", "command": [] }] }),
        ),
        (
            "executors[0].workdir",
            json!({ "executors": [{ "image": "x", "command": ["true"], "workdir": "rel" }] }),
        ),
        (
            "executors[0].stdout",
            json!({ "executors": [{ "image": "x", "command": ["true"], "stdout": "/a/../b" }] }),
        ),
        (
            "inputs[0].path",
            with(json!({ "inputs": [{ "url": "file:///x", "path": "relative" }] })),
        ),
        (
            "inputs[0].url",
            with(json!({ "inputs": [{ "path": "/in" }] })),
        ),
        (
            "inputs[0].content",
            with(json!({ "inputs": [{ "path": "/in", "content": "x".repeat(200_000) }] })),
        ),
        (
            "outputs[0].url",
            with(json!({ "outputs": [{ "path": "/out", "url": "" }] })),
        ),
        (
            "inputs[0].url: scheme \"sftp\" is not supported",
            with(json!({ "inputs": [{ "path": "/in", "url": "sftp://host/x" }] })),
        ),
        (
            "outputs[0].url: https is read only",
            with(json!({ "outputs": [{ "path": "/out", "url": "https://example.org/o" }] })),
        ),
        (
            "outputs[0].path_prefix",
            with(json!({ "outputs": [{ "path": "/out/*.txt", "url": "file:///o" }] })),
        ),
        ("volumes[0]", with(json!({ "volumes": ["data"] }))),
        (
            "resources.cpu_cores",
            with(json!({ "resources": { "cpu_cores": -1 } })),
        ),
        (
            "resources.ram_gb",
            with(json!({ "resources": { "ram_gb": -2.0 } })),
        ),
        (
            "resources.backend_parameters",
            with(json!({ "resources": {
            "backend_parameters": { "made_up": "1" }, "backend_parameters_strict": true } })),
        ),
        ("tags", with(json!({ "tags": { "k": "v".repeat(5000) } }))),
        ("name", with(json!({ "name": "n".repeat(5000) }))),
        ("unknown field", with(json!({ "colour": "blue" }))),
        (
            "invalid type",
            json!({ "executors": [{ "image": "x", "command": "true" }] }),
        ),
    ];
    for (field, body) in &cases {
        let (status, answer) = cluster.post_json(0, "/ga4gh/tes/v1/tasks", body).await?;
        let message = answer["error"].as_str().unwrap_or("");
        ensure!(
            status == 400 && message.contains(field),
            "{field}: {status} {answer}"
        );
    }

    phase("an unknown backend parameter without strict is accepted and not stored");
    let lenient = with(json!({ "resources": { "backend_parameters": { "made_up": "1" } } }));
    let id = cluster.submit_task(0, &lenient).await?;
    let task = cluster.task(0, &id, "FULL").await?;
    ensure!(
        task["resources"].get("backend_parameters").is_none(),
        "{task}"
    );

    phase("bad views and list parameters are 400 naming the parameter; unknown ids 404");
    for (path, field) in [
        (format!("/ga4gh/tes/v1/tasks/{id}?view=ALL"), "view"),
        ("/ga4gh/tes/v1/tasks?state=DONE".to_string(), "state"),
        ("/ga4gh/tes/v1/tasks?page_size=-3".to_string(), "page_size"),
        (
            "/ga4gh/tes/v1/tasks?page_token=nonsense".to_string(),
            "page_token",
        ),
        ("/ga4gh/tes/v1/tasks?tag_value=v".to_string(), "tag_value"),
    ] {
        let (status, _, answer) = cluster.request(0, Method::GET, &path, None, None).await?;
        let message = answer["error"].as_str().unwrap_or("");
        ensure!(
            status == 400 && message.starts_with(field),
            "{path}: {status} {answer}"
        );
    }
    for (method, path) in [
        (Method::GET, "/ga4gh/tes/v1/tasks/NOSUCHTASK"),
        (Method::POST, "/ga4gh/tes/v1/tasks/NOSUCHTASK:cancel"),
        (Method::GET, "/v1/tasks/NOSUCHTASK"),
    ] {
        let (status, _, answer) = cluster.request(0, method, path, None, None).await?;
        ensure!(
            status == 404 && answer["error"].is_string(),
            "{path}: {status}"
        );
    }

    phase("only the one valid task exists");
    let list: Value = cluster.get(0, "/ga4gh/tes/v1/tasks").await?;
    ensure!(
        list == json!({ "tasks": [{ "id": id, "state": list["tasks"][0]["state"] }] }),
        "{list}"
    );
    Ok(())
}

#[tokio::test]
async fn views_show_what_the_specification_says_and_nothing_more() -> Result<()> {
    let cluster = TestCluster::formed(1, single()).await?;
    let task = json!({
        "name": "viewed",
        "description": "views",
        "inputs": [{ "path": "/in/data", "content": "secret input" }],
        "executors": [{ "image": "busybox", "command": ["sh", "-c", "cat /in/data; echo err >&2"] }],
        "tags": { "kind": "view" },
    });
    let id = cluster.submit_task(0, &task).await?;
    cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    let keys = |value: &Value| -> BTreeSet<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };

    phase("MINIMAL (also the default): id and state only");
    for view in ["MINIMAL", ""] {
        let path = format!("/ga4gh/tes/v1/tasks/{id}?view={view}");
        let path = path.trim_end_matches("?view=");
        let minimal: Value = cluster.get(0, path).await?;
        ensure!(
            keys(&minimal) == ["id", "state"].map(String::from).into(),
            "{minimal}"
        );
    }

    phase("BASIC: everything but stdout, stderr, input content and system logs");
    let basic = cluster.task(0, &id, "BASIC").await?;
    ensure!(
        basic["state"] == "COMPLETE" && basic["name"] == "viewed",
        "{basic}"
    );
    ensure!(basic["inputs"][0].get("content").is_none(), "{basic}");
    let log = &basic["logs"][0];
    ensure!(log.get("system_logs").is_none(), "{basic}");
    ensure!(
        log["logs"][0].get("stdout").is_none() && log["logs"][0].get("stderr").is_none(),
        "{basic}"
    );
    ensure!(log["logs"][0]["exit_code"] == 0, "{basic}");
    ensure!(
        basic["creation_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{basic}"
    );

    phase("FULL: everything");
    let full = cluster.task(0, &id, "FULL").await?;
    ensure!(full["inputs"][0]["content"] == "secret input", "{full}");
    ensure!(
        full["logs"][0]["logs"][0]["stdout"] == "secret input",
        "{full}"
    );
    ensure!(full["logs"][0]["logs"][0]["stderr"] == "err\n", "{full}");
    ensure!(full["logs"][0]["system_logs"].is_array(), "{full}");

    phase("list answers in the same views");
    for (view, expected) in [
        ("MINIMAL", keys(&json!({"id": 0, "state": 0}))),
        ("BASIC", keys(&basic)),
        ("FULL", keys(&full)),
    ] {
        let list: Value = cluster
            .get(0, &format!("/ga4gh/tes/v1/tasks?view={view}"))
            .await?;
        ensure!(keys(&list["tasks"][0]) == expected, "{view}: {list}");
    }
    ensure!(
        cluster
            .get::<Value>(0, "/ga4gh/tes/v1/tasks?view=BASIC")
            .await?["tasks"][0]
            == basic,
        "list BASIC differs from get BASIC"
    );
    Ok(())
}

async fn ids_of(cluster: &TestCluster, query: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let separator = if query.is_empty() { "" } else { "&" };
        let list: Value = cluster
            .get(
                0,
                &format!("/ga4gh/tes/v1/tasks?{query}{separator}page_token={token}"),
            )
            .await?;
        for task in list["tasks"].as_array().into_iter().flatten() {
            ids.push(task["id"].as_str().unwrap_or("").to_string());
        }
        match list["next_page_token"].as_str() {
            Some(next) => token = next.to_string(),
            None => return Ok(ids),
        }
    }
}

#[tokio::test]
async fn lists_filter_by_name_state_and_tags_newest_first_and_pages_survive_inserts() -> Result<()>
{
    let cluster = TestCluster::formed(1, single()).await?;
    phase("tasks with names, tags and states");
    let mut submitted = Vec::new();
    for i in 0..30 {
        let mut task = shell("true");
        task["name"] = json!(if i % 2 == 0 {
            format!("even-{i}")
        } else {
            format!("odd-{i}")
        });
        let mut tags = json!({ "batch": "b1" });
        if i % 3 == 0 {
            tags["three"] = json!("yes");
        }
        if i % 5 == 0 {
            tags["five"] = json!("");
        }
        task["tags"] = tags;
        submitted.push(cluster.submit_task(0, &task).await?);
    }
    let failing = cluster.submit_task(0, &shell("exit 1")).await?;
    for id in submitted.iter().chain([&failing]) {
        cluster.wait_task(0, id, TASK_TIMEOUT).await?;
    }
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    phase("no filter: all, newest first, through pages of 7");
    let all = ids_of(&cluster, "page_size=7").await?;
    let mut expected = vec![failing.clone()];
    expected.extend(newest_first.clone());
    ensure!(all == expected, "{all:?}");

    phase("each filter, and all of them combined");
    let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..30)
            .rev()
            .filter(|&i| keep(i))
            .map(|i| submitted[i].clone())
            .collect()
    };
    ensure!(ids_of(&cluster, "name_prefix=even-").await? == pick(&|i| i % 2 == 0));
    ensure!(ids_of(&cluster, "state=EXECUTOR_ERROR").await? == vec![failing.clone()]);
    ensure!(ids_of(&cluster, "state=COMPLETE&page_size=4").await? == newest_first);
    ensure!(ids_of(&cluster, "tag_key=three&tag_value=yes").await? == pick(&|i| i % 3 == 0));
    ensure!(
        ids_of(&cluster, "tag_key=three&tag_value=ye")
            .await?
            .is_empty(),
        "no prefix match"
    );
    ensure!(
        ids_of(&cluster, "tag_key=five").await? == pick(&|i| i % 5 == 0),
        "key only"
    );
    ensure!(ids_of(&cluster, "tag_key=five&tag_value=").await? == pick(&|i| i % 5 == 0));
    ensure!(
        ids_of(
            &cluster,
            "tag_key=batch&tag_value=b1&tag_key=three&tag_value=yes&tag_key=five"
        )
        .await?
            == pick(&|i| i % 15 == 0)
    );
    ensure!(
        ids_of(
            &cluster,
            "name_prefix=even-&state=COMPLETE&tag_key=three&page_size=1"
        )
        .await?
            == pick(&|i| i % 6 == 0)
    );
    ensure!(ids_of(&cluster, "tag_key=nope").await?.is_empty());

    phase("page sizes: default 256, cut at 2047");
    let first: Value = cluster.get(0, "/ga4gh/tes/v1/tasks?page_size=5000").await?;
    ensure!(
        first["tasks"].as_array().map(Vec::len) == Some(31)
            && first.get("next_page_token").is_none()
    );

    phase("tasks submitted while a client pages through do not shift its pages");
    let page: Value = cluster.get(0, "/ga4gh/tes/v1/tasks?page_size=10").await?;
    let token = page["next_page_token"].as_str().unwrap_or("").to_string();
    for _ in 0..5 {
        cluster.submit_task(0, &shell("true")).await?;
    }
    let next: Value = cluster
        .get(
            0,
            &format!("/ga4gh/tes/v1/tasks?page_size=10&page_token={token}"),
        )
        .await?;
    let next_ids: Vec<&str> = next["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    ensure!(
        next_ids
            == expected[10..20]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        "{next_ids:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tokens_decide_who_may_call_and_who_sees_which_tasks() -> Result<()> {
    let (admin, alice, bob) = (
        "admin-token-0123456789",
        "alice-token-0123456789",
        "bob-token-0123456789a",
    );
    let user = |token: &str, name: &str| TokenConfig::User {
        token: token.to_string(),
        name: name.to_string(),
        admin: false,
    };
    let options = ClusterOptions {
        tokens: vec![
            TokenConfig::Admin(admin.to_string()),
            user(alice, "alice"),
            user(bob, "bob"),
        ],
        client_token: Some(admin.to_string()),
        ..single()
    };
    let cluster = TestCluster::formed(1, options).await?;
    let tasks = "/ga4gh/tes/v1/tasks";

    phase("no token or a wrong one: 401; probes and the OpenAPI document stay open");
    for token in [None, Some("not-a-known-token-at-all")] {
        let (status, _, _) = cluster.request(0, Method::GET, tasks, token, None).await?;
        ensure!(status == 401, "{token:?}: {status}");
    }
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let (status, _, _) = cluster.request(0, Method::GET, open, None, None).await?;
        ensure!(status == 200, "{open}: {status}");
    }

    phase("alice's task: alice and the administrator see it, bob does not");
    let (status, _, created) = cluster
        .request(0, Method::POST, tasks, Some(alice), Some(&shell("true")))
        .await?;
    ensure!(status == 200, "{status} {created}");
    let id = created["id"].as_str().unwrap_or("").to_string();
    let path = format!("{tasks}/{id}");
    for (token, visible) in [(alice, true), (admin, true), (bob, false)] {
        let (status, _, _) = cluster
            .request(0, Method::GET, &path, Some(token), None)
            .await?;
        ensure!(
            status == if visible { 200 } else { 404 },
            "{token}: get {status}"
        );
        let (_, _, list) = cluster
            .request(0, Method::GET, tasks, Some(token), None)
            .await?;
        let listed = list["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == id.as_str()));
        ensure!(listed == visible, "{token}: list {list}");
    }
    let (status, _, _) = cluster
        .request(0, Method::POST, &format!("{path}:cancel"), Some(bob), None)
        .await?;
    ensure!(status == 404, "bob canceled alice's task: {status}");

    phase("cluster management needs an administrator: 403 for a user");
    let drain = format!("/v1/cluster/nodes/{}:drain", cluster.nodes[0].name);
    let (status, _, _) = cluster
        .request(0, Method::POST, &drain, Some(bob), None)
        .await?;
    ensure!(status == 403, "bob drained a node: {status}");
    let undrain = format!("/v1/cluster/nodes/{}:undrain", cluster.nodes[0].name);
    let (status, _, _) = cluster
        .request(0, Method::POST, &undrain, Some(admin), None)
        .await?;
    ensure!(status == 200, "admin undrain: {status}");
    let backup = "/v1/cluster/backup";
    let (status, _, _) = cluster
        .request(0, Method::GET, backup, Some(bob), None)
        .await?;
    ensure!(
        status == 403,
        "bob took a backup of everyone's tasks: {status}"
    );

    phase("CORS: a browser's preflight is answered without a token");
    let preflight = reqwest::Client::new()
        .request(
            Method::OPTIONS,
            format!("{}{tasks}", cluster.nodes[0].http_url()),
        )
        .header("Origin", "https://example.org")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await?;
    ensure!(preflight.status().is_success(), "{}", preflight.status());
    ensure!(
        preflight
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        preflight.headers()
    );
    let (_, headers, _) = cluster
        .request(0, Method::GET, tasks, Some(alice), None)
        .await?;
    ensure!(
        headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
    Ok(())
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_is_served() -> Result<()> {
    let cluster = TestCluster::formed(1, single()).await?;
    let doc: Value = cluster.get(0, "/openapi.json").await?;
    ensure!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            let concrete = path
                .replace("{id}", "NOSUCHTASK")
                .replace("{target}", "no-such-node");
            let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
            let (status, _, body) = cluster
                .request(0, method.clone(), &concrete, None, Some(&json!({})))
                .await?;
            // A route the router lacks answers 404 or 405 with no JSON body; the handlers
            // answer 404 as JSON.
            let unrouted = status == 405 || (status == 404 && !body["error"].is_string());
            ensure!(!unrouted, "{method} {path}: not served ({status})");
            checked += 1;
        }
    }
    ensure!(checked >= 17, "only {checked} operations described");

    phase("without tokens, another site's web page cannot drive the node");
    let url = format!("{}/ga4gh/tes/v1/tasks", cluster.nodes[0].http_url());
    let from = |origin: &str| {
        reqwest::Client::new()
            .post(&url)
            .header("Origin", origin)
            .header("Content-Type", "text/plain")
            .body(shell("true").to_string())
            .send()
    };
    ensure!(
        from("https://example.org").await?.status() == 403,
        "a cross-site POST went through"
    );
    ensure!(
        from("http://127.0.0.1:3000").await?.status() == 200,
        "a local page was refused"
    );
    let rebound = reqwest::Client::new()
        .get(&url)
        .header("Host", "attacker.example:8000")
        .send()
        .await?;
    ensure!(
        rebound.status() == 403,
        "a request addressed to another name (DNS rebinding) was answered: {}",
        rebound.status()
    );

    phase("service-info says it is TES 1.1 and lists the storage schemes");
    for prefix in ["/ga4gh/tes/v1", "/v1"] {
        let info: Value = cluster.get(0, &format!("{prefix}/service-info")).await?;
        ensure!(
            info["type"] == json!({"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}),
            "{info}"
        );
        ensure!(
            info["storage"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "s3")),
            "{info}"
        );
        ensure!(info["tesResources_backend_parameters"].is_array(), "{info}");
        ensure!(
            info["organization"]["url"].is_string() && info["id"].is_string(),
            "{info}"
        );
    }
    Ok(())
}

/// Runs the `shoal` CLI against node 0; returns the exit code, stdout and stderr.
fn shoal(
    cluster: &TestCluster,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["--server", &cluster.nodes[0].http_url(), "--output", "json"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn the_task_commands_create_get_list_wait_show_logs_and_cancel() -> Result<()> {
    let cluster = TestCluster::formed(1, single()).await?;

    phase("create from standard input, wait, get, logs");
    let mut task = shell("echo out; echo err >&2");
    task["name"] = json!("cli-task");
    task["tags"] = json!({ "via": "cli" });
    let (code, out, err) = shoal(&cluster, &["task", "create", "-"], Some(&task.to_string()))?;
    ensure!(code == 0, "create: {code} {err}");
    let id = serde_json::from_str::<Value>(&out)?["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (code, out, err) = shoal(&cluster, &["task", "wait", &id], None)?;
    ensure!(
        code == 0 && out.contains("COMPLETE"),
        "wait: {code} {out} {err}"
    );
    let (code, out, _) = shoal(&cluster, &["task", "get", &id, "--view", "basic"], None)?;
    let got: Value = serde_json::from_str(&out)?;
    ensure!(
        code == 0 && got["name"] == "cli-task" && got["state"] == "COMPLETE",
        "{out}"
    );
    let (code, out, err) = shoal(&cluster, &["task", "logs", &id], None)?;
    ensure!(
        code == 0 && out == "out\n" && err.contains("err\n"),
        "logs: {out:?} {err:?}"
    );

    phase("list with filters");
    let other = cluster.submit_task(0, &shell("exit 2")).await?;
    cluster.wait_task(0, &other, TASK_TIMEOUT).await?;
    let listed = |args: &[&str]| -> Result<Vec<String>> {
        let mut all = vec!["task", "list", "--all"];
        all.extend(args);
        let (code, out, err) = shoal(&cluster, &all, None)?;
        ensure!(code == 0, "list {args:?}: {err}");
        Ok(serde_json::from_str::<Vec<Value>>(&out)?
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect())
    };
    ensure!(listed(&[])? == vec![other.clone(), id.clone()]);
    ensure!(listed(&["--tag", "via=cli"])? == vec![id.clone()]);
    ensure!(listed(&["--tag", "via"])? == vec![id.clone()]);
    ensure!(listed(&["--state", "executor_error"])? == vec![other.clone()]);
    ensure!(listed(&["--name-prefix", "cli-"])? == vec![id.clone()]);

    phase("wait on a failed task exits 1; an unknown task exits 2");
    let (code, _, _) = shoal(&cluster, &["task", "wait", &other], None)?;
    ensure!(code == 1, "wait on a failed task: {code}");
    let (code, _, err) = shoal(&cluster, &["task", "get", "NOSUCHTASK"], None)?;
    ensure!(code == 2 && err.contains("not found"), "{code} {err}");

    phase("cancel a running task");
    let running = cluster.submit_task(0, &shell("sleep 300")).await?;
    let this = &cluster;
    shoal_tests::wait_for("the task to run", TASK_TIMEOUT, async || {
        (this.task(0, &running, "MINIMAL").await.ok()?["state"] == "RUNNING").then_some(())
    })
    .await?;
    let (code, _, err) = shoal(&cluster, &["task", "cancel", &running], None)?;
    ensure!(code == 0, "cancel: {err}");
    let ended = cluster
        .wait_task(0, &running, Duration::from_secs(10))
        .await?;
    ensure!(ended["state"] == "CANCELED", "{ended}");
    Ok(())
}
