//! The pipeline CLI (`shoal job …`, `shoal datum …`) run as a user runs it, against three
//! real nodes and the S3 server `scripts/test.sh` starts: table and JSON output, exit
//! statuses, progress while waiting — plain lines without a terminal, progress bars on a
//! pseudo-terminal (`script` gives the command one) — and the event stream behind it.
//! Without an S3 server (outside CI) the test says so and passes.

use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_tests::s3::{S3Server, TestBucket};
use shoal_tests::{ClusterOptions, TestCluster, phase};

/// Runs `shoal ARGS…` against `server`; its output.
fn shoal(server: &str, args: &[&str]) -> Result<Output> {
    std::process::Command::new(shoal_tests::shoal_bin())
        .args(args)
        .env("SHOAL_SERVER", server)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run shoal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A spec running `script` over every object below `in/`, publishing below `egress/`.
fn spec(name: &str, script: &str, bucket: &TestBucket, egress: &str) -> Value {
    json!({
        "pipeline": { "name": name },
        "transform": { "image": "busybox", "cmd": ["sh", "-c", script] },
        "input": { "atom": { "repo": "in", "URI": bucket.url("in/"), "glob": "/*" } },
        "egress": { "URI": bucket.url(&format!("{egress}/")) },
    })
}

fn json_of(output: &Output) -> Result<Value> {
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", text(&output.stdout)))
}

#[tokio::test]
async fn the_job_and_datum_commands_run_wait_describe_retry_and_cancel() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    for name in ["good-1", "bad-1", "good-2", "good-3"] {
        bucket
            .put(&format!("in/{name}"), name.as_bytes().to_vec())
            .await?;
    }
    let cluster = TestCluster::formed(
        3,
        ClusterOptions {
            s3: Some(s3.clone()),
            ..Default::default()
        },
    )
    .await?;
    let server = cluster.nodes[1].http_url();
    let dir = tempfile::tempdir()?;
    let spec_file = dir.path().join("words.yaml");
    std::fs::write(
        &spec_file,
        format!(
            "pipeline:\n  name: words\ndatum_tries: 1\ntransform:\n  image: busybox\n  cmd: [sh, -c, \
             'f=$(ls /pfs/in); sleep 1; case $f in bad*) echo no way >&2; exit 3;; esac; \
             cp /pfs/in/$f /pfs/out/$f']\ninput:\n  atom:\n    repo: in\n    URI: {}\n    \
             glob: /*\negress:\n  URI: {}\n",
            bucket.url("in/"),
            bucket.url("out/")
        ),
    )?;
    let spec_path = spec_file.to_string_lossy().into_owned();

    phase("job run --wait without a terminal prints a line per change and exits 1 on error");
    let out = shoal(
        &server,
        &["job", "run", &spec_path, "--wait", "--output", "table"],
    )?;
    let stdout = text(&out.stdout);
    ensure!(out.status.code() == Some(1), "{out:?}");
    let id = stdout.lines().next().unwrap_or_default().trim().to_string();
    ensure!(!id.is_empty(), "{stdout}");
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with(&format!("{id} (words): ")))
        .collect();
    ensure!(
        progress.len() >= 2
            && progress
                .last()
                .is_some_and(|l| l.contains("error; 3/4 done")),
        "{stdout}"
    );
    ensure!(text(&out.stderr).contains("ended error"), "{out:?}");

    phase("job list and describe, as a table and as JSON");
    let out = shoal(&server, &["job", "list", "--output", "table"])?;
    let listed = text(&out.stdout);
    ensure!(
        out.status.success() && listed.contains("NAME") && listed.contains(&id),
        "{listed}"
    );
    let out = shoal(
        &server,
        &["job", "list", "--name", "words", "--output", "json"],
    )?;
    let jobs = json_of(&out)?;
    ensure!(jobs.as_array().map_or(0, Vec::len) == 1, "{jobs}");
    let out = shoal(&server, &["job", "describe", "words", "--output", "json"])?;
    let job = json_of(&out)?;
    ensure!(
        job["id"] == id.as_str() && job["counts"]["done"] == 3 && job["counts"]["failed"] == 1,
        "{job}"
    );
    let out = shoal(&server, &["job", "describe", &id, "--output", "table"])?;
    ensure!(text(&out.stdout).contains("exit code 3"), "{out:?}");

    phase("datum list, describe and logs show the failed datum's attempt and output");
    let out = shoal(
        &server,
        &[
            "datum", "list", &id, "--state", "failed", "--output", "json",
        ],
    )?;
    let failed = json_of(&out)?;
    let datum = failed[0]["id"].as_str().unwrap_or_default().to_string();
    ensure!(failed.as_array().map_or(0, Vec::len) == 1, "{failed}");
    let out = shoal(
        &server,
        &["datum", "list", &id, "--all", "--output", "table"],
    )?;
    ensure!(
        text(&out.stdout).lines().count() == 5 && text(&out.stdout).contains("bad-1"),
        "{out:?}"
    );
    let out = shoal(&server, &["datum", "describe", &datum, "--output", "table"])?;
    let described = text(&out.stdout);
    ensure!(
        out.status.success()
            && described.contains("exit code 3")
            && described.contains("no way")
            && described.contains("in/bad-1"),
        "{described}"
    );
    let out = shoal(&server, &["datum", "logs", &datum, "--job", &id])?;
    ensure!(text(&out.stdout).contains("no way"), "{out:?}");

    phase("retry runs the failed datum again; job wait follows it and exits 1 again");
    let out = shoal(&server, &["job", "retry", &id, "--output", "json"])?;
    ensure!(out.status.success(), "{out:?}");
    let out = shoal(&server, &["job", "wait", &id, "--output", "json"])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let ended = json_of(&out)?;
    ensure!(ended[0]["state"] == "error", "{ended}");
    let out = shoal(&server, &["datum", "describe", &datum, "--output", "json"])?;
    ensure!(
        json_of(&out)?["attempts"].as_array().map_or(0, Vec::len) == 2,
        "{out:?}"
    );

    phase("on a terminal, job wait draws a progress bar that ends full");
    let slow = spec("slow", "sleep 2; true", &bucket, "slow");
    let created = cluster.submit_job(0, &slow).await?;
    let slow_id = created["id"].as_str().unwrap_or_default().to_string();
    let command = format!(
        "{} job wait {slow_id} --output table",
        shoal_tests::shoal_bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("SHOAL_SERVER", &server)
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .context("run script (util-linux)")?;
    let screen = text(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        screen.contains("[==") && screen.contains("4/4") && screen.contains("slow"),
        "{screen}"
    );

    phase("cancel stops a running job; waiting on it exits 1");
    let sleepy = spec("sleepy", "sleep 60", &bucket, "sleepy");
    let created = cluster.submit_job(2, &sleepy).await?;
    let sleepy_id = created["id"].as_str().unwrap_or_default().to_string();
    let out = shoal(&server, &["job", "cancel", &sleepy_id, "--output", "table"])?;
    ensure!(out.status.success(), "{out:?}");
    let out = shoal(&server, &["job", "wait", &sleepy_id, "--output", "table"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out.stdout).contains("canceled"),
        "{out:?}"
    );

    phase("a bad spec exits 2 naming the field; an unknown job exits 2");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"pipeline":{"name":"x"},"transfrom":{"image":"busybox"}}"#,
    )?;
    let out = shoal(&server, &["job", "run", &bad.to_string_lossy()])?;
    ensure!(
        out.status.code() == Some(2) && text(&out.stderr).contains("transfrom"),
        "{out:?}"
    );
    let out = shoal(&server, &["job", "wait", "no-such-job"])?;
    ensure!(out.status.code() == Some(2), "{out:?}");
    Ok(())
}

/// The event stream a waiting client reads: a finished job's stream is its final view and
/// then the end.
#[tokio::test]
async fn a_finished_jobs_event_stream_is_one_event_then_the_end() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    bucket.put("in/one", b"1".to_vec()).await?;
    let cluster = TestCluster::formed(
        3,
        ClusterOptions {
            s3: Some(s3.clone()),
            ..Default::default()
        },
    )
    .await?;
    let one = spec("one", "true", &bucket, "out");
    let created = cluster.submit_job(0, &one).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    cluster
        .wait_job(1, &id, std::time::Duration::from_secs(60))
        .await?;
    let url = format!("{}/v1/jobs/{id}/events", cluster.nodes[2].http_url());
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await?;
    ensure!(
        response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        response.headers()
    );
    let body = response.text().await?;
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|block| block.contains("data:"))
        .collect();
    ensure!(events.len() == 1, "{body}");
    ensure!(
        events[0].starts_with("event: job") && events[0].contains("\"state\":\"done\""),
        "{body}"
    );
    let missing = reqwest::get(format!(
        "{}/v1/jobs/no-such-job/events",
        cluster.nodes[0].http_url()
    ))
    .await?;
    ensure!(missing.status() == 404, "{}", missing.status());
    Ok(())
}
