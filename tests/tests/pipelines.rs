//! Pipeline jobs (Falconeri/Pachyderm specs) through three real nodes, reading inputs from and
//! publishing outputs to a real S3 server (moto, started by `scripts/test.sh`). Each test is a
//! story in phases; each phase logs what it proves. Without an S3 server (outside CI) the
//! tests say so and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use shoal_tests::s3::{S3Server, TestBucket};
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// Three process-executor nodes that read and write the S3 server.
fn options(s3: &S3Server) -> ClusterOptions {
    ClusterOptions {
        s3: Some(s3.clone()),
        ..Default::default()
    }
}

/// A pipeline spec running `script` with `sh -c` over `input`, publishing to `egress`.
fn spec(name: &str, input: Value, script: &str, egress: &str) -> Value {
    json!({
        "pipeline": { "name": name },
        "transform": { "image": "busybox", "cmd": ["sh", "-c", script] },
        "input": input,
        "egress": { "URI": egress },
    })
}

fn atom(repo: &str, uri: &str, glob: &str) -> Value {
    json!({ "atom": { "repo": repo, "URI": uri, "glob": glob } })
}

/// The `/pfs/...` paths of each datum's inputs, sorted by datum.
fn input_paths(datums: &[Value]) -> Vec<String> {
    let mut paths: Vec<String> = datums
        .iter()
        .map(|datum| {
            let inputs: Vec<&str> = datum["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|input| input["path"].as_str())
                .collect();
            inputs.join("+")
        })
        .collect();
    paths.sort();
    paths
}

/// Output keys below `prefix` in the bucket, without the staging area.
async fn outputs(bucket: &TestBucket, prefix: &str) -> Result<Vec<String>> {
    Ok(bucket
        .list(prefix)
        .await?
        .into_iter()
        .filter(|key| !key.contains(".shoal-staging"))
        .collect())
}

async fn staging_left(bucket: &TestBucket, prefix: &str) -> Result<Vec<String>> {
    bucket.list(&format!("{prefix}/.shoal-staging")).await
}

#[tokio::test]
async fn globs_cross_and_union_make_the_datums_pachyderm_would_and_outputs_are_published()
-> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    for key in [
        "books/a.txt",
        "books/d1/x",
        "books/d1/y/z",
        "books/d2/x",
        "books/d20/q",
        "books/top",
        "letters/a",
        "letters/b",
        "numbers/1",
        "numbers/2",
        "numbers/3",
    ] {
        bucket.put(key, key.as_bytes().to_vec()).await?;
    }
    let cluster = TestCluster::formed(3, options(&s3)).await?;

    phase("each glob gives one datum per matching entry at its depth");
    let table: [(&str, &[&str]); 6] = [
        ("/", &["/pfs/books"]),
        (
            "/*",
            &[
                "/pfs/books/a.txt",
                "/pfs/books/d1",
                "/pfs/books/d2",
                "/pfs/books/d20",
                "/pfs/books/top",
            ],
        ),
        (
            "/*/*",
            &[
                "/pfs/books/d1/x",
                "/pfs/books/d1/y",
                "/pfs/books/d2/x",
                "/pfs/books/d20/q",
            ],
        ),
        ("/d2*", &["/pfs/books/d2", "/pfs/books/d20"]),
        ("/d1/*", &["/pfs/books/d1/x", "/pfs/books/d1/y"]),
        ("/nothing*", &[]),
    ];
    let mut jobs = Vec::new();
    for (i, (glob, _)) in table.iter().enumerate() {
        let input = atom("books", &bucket.url("books/"), glob);
        let created = cluster
            .submit_job(
                i % 3,
                &spec(&format!("glob-{i}"), input, "true", &bucket.url("out/")),
            )
            .await?;
        ensure!(created["ignored"] == json!([]), "{created}");
        jobs.push(created["id"].as_str().unwrap_or_default().to_string());
    }
    for ((glob, expected), id) in table.iter().zip(&jobs) {
        let job = cluster.wait_job(0, id, JOB_TIMEOUT).await?;
        ensure!(job["state"] == "done", "{glob}: {job}");
        let datums = cluster.datums(1, id, None).await?;
        let paths = input_paths(&datums);
        ensure!(paths == *expected, "{glob}: {paths:?}");
        ensure!(
            job["counts"]["done"] == expected.len(),
            "{glob}: {}",
            job["counts"]
        );
    }

    phase("the same inputs give the same datum ids in a second job");
    let again = cluster
        .submit_job(
            2,
            &spec(
                "glob-again",
                atom("books", &bucket.url("books/"), "/*"),
                "true",
                &bucket.url("out/"),
            ),
        )
        .await?;
    let again_id = again["id"].as_str().unwrap_or_default();
    cluster.wait_job(0, again_id, JOB_TIMEOUT).await?;
    let ids = |datums: Vec<Value>| -> BTreeSet<String> {
        datums
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect()
    };
    let first = ids(cluster.datums(0, &jobs[1], None).await?);
    ensure!(first.len() == 5, "{first:?}");
    ensure!(first == ids(cluster.datums(0, again_id, None).await?));

    phase("cross: every pair, inputs side by side in /pfs, outputs published to the egress");
    let cross = json!({ "cross": [
        atom("letters", &bucket.url("letters/"), "/*"),
        atom("numbers", &bucket.url("numbers/"), "/*"),
    ]});
    let script =
        "cat /pfs/letters/* /pfs/numbers/* > /pfs/out/$(ls /pfs/letters)$(ls /pfs/numbers)";
    let created = cluster
        .submit_job(0, &spec("cross", cross, script, &bucket.url("crossed/")))
        .await?;
    let id = created["id"].as_str().unwrap_or_default();
    let job = cluster.wait_job(1, id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "done" && job["counts"]["done"] == 6,
        "{job}"
    );
    let published = outputs(&bucket, "crossed").await?;
    let expected: Vec<String> = ["a1", "a2", "a3", "b1", "b2", "b3"]
        .iter()
        .map(|name| format!("crossed/{name}"))
        .collect();
    ensure!(published == expected, "{published:?}");
    ensure!(bucket.get("crossed/b3").await? == b"letters/bnumbers/3".to_vec());
    ensure!(staging_left(&bucket, "crossed").await?.is_empty());
    let datum = &cluster.datums(2, id, None).await?[0];
    let described: Value = cluster
        .get(
            2,
            &format!("/v1/datums/{}", datum["id"].as_str().unwrap_or_default()),
        )
        .await?;
    let attempt = &described["attempts"][0];
    ensure!(
        attempt["outcome"] == "succeeded"
            && attempt["outputs"][0]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&bucket.url("crossed/"))),
        "{described}"
    );

    phase("union (submitted as YAML): one list after the other");
    let yaml = format!(
        "pipeline: {{name: union}}\ntransform: {{image: busybox, cmd: [\"true\"]}}\n\
         input:\n  union:\n    - atom: {{repo: letters, URI: \"{}\", glob: \"/*\"}}\n    \
         - pfs: {{repo: numbers, URI: \"{}\", glob: \"/*\"}}\negress: {{URI: \"{}\"}}\n",
        bucket.url("letters/"),
        bucket.url("numbers/"),
        bucket.url("unioned/"),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/jobs", cluster.nodes[1].http_url()))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    let created: Value = response.json().await?;
    let id = created["id"].as_str().unwrap_or_default();
    cluster.wait_job(1, id, JOB_TIMEOUT).await?;
    let paths = input_paths(&cluster.datums(0, id, None).await?);
    ensure!(
        paths
            == [
                "/pfs/letters/a",
                "/pfs/letters/b",
                "/pfs/numbers/1",
                "/pfs/numbers/2",
                "/pfs/numbers/3"
            ],
        "{paths:?}"
    );

    phase("a bad spec is refused naming the field, and nothing is created");
    let listed: Value = cluster.get(0, "/v1/jobs?page_size=1000").await?;
    let before = listed["jobs"].as_array().map_or(0, Vec::len);
    let mut bad = spec(
        "bad",
        atom("books", &bucket.url("books/"), "*"),
        "true",
        &bucket.url("out/"),
    );
    let (status, body) = cluster.post_json(0, "/v1/jobs", &bad).await?;
    ensure!(
        status == 400
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("input.atom.glob")),
        "{status} {body}"
    );
    bad["transform"]["colour"] = json!("red");
    let (status, body) = cluster.post_json(0, "/v1/jobs", &bad).await?;
    ensure!(
        status == 400
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("transform.colour")),
        "{status} {body}"
    );
    let listed: Value = cluster.get(0, "/v1/jobs?page_size=1000").await?;
    ensure!(listed["jobs"].as_array().map_or(0, Vec::len) == before);
    Ok(())
}

#[tokio::test]
async fn ten_thousand_objects_become_ten_thousand_datums_that_all_finish() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    phase("10,000 objects seeded");
    futures::stream::iter(0..10_000)
        .map(|i| bucket.put(format!("many/{i:05}").leak(), Vec::new()))
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    let cluster = TestCluster::formed(
        3,
        ClusterOptions {
            executor: "noop".to_string(),
            slots: 64,
            ..options(&s3)
        },
    )
    .await?;

    phase("one job over them: 10,000 datums, each once, all done");
    let created = cluster
        .submit_job(
            0,
            &spec(
                "many",
                atom("many", &bucket.url("many/"), "/*"),
                "true",
                &bucket.url("out/"),
            ),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default();
    let job = cluster.wait_job(1, id, Duration::from_secs(180)).await?;
    ensure!(
        job["state"] == "done"
            && job["counts"]["done"] == 10_000
            && job["counts"]["total"] == 10_000,
        "{job}"
    );
    let datums = cluster.datums(2, id, None).await?;
    let ids: BTreeSet<&str> = datums.iter().filter_map(|d| d["id"].as_str()).collect();
    ensure!(ids.len() == 10_000, "{} distinct ids", ids.len());
    let twice: Vec<&Value> = datums
        .iter()
        .filter(|d| d["attempts"].as_array().is_none_or(|a| a.len() != 1))
        .collect();
    ensure!(
        twice.is_empty(),
        "{} datums ran more than once, e.g. {}",
        twice.len(),
        twice[0]
    );
    Ok(())
}

/// Where a job is submitted, asking to reprocess everything or not.
fn jobs_path(reprocess: bool) -> &'static str {
    if reprocess {
        "/v1/jobs?reprocess=true"
    } else {
        "/v1/jobs"
    }
}

#[tokio::test]
async fn a_rerun_runs_only_changed_failed_and_unpublished_datums_unless_told_to_reprocess()
-> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    let key = |i: usize| format!("in/f{i:04}");
    futures::stream::iter(0..1_000)
        .map(|i| bucket.put(key(i).leak(), format!("v1 {i}").into_bytes()))
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    let cluster = TestCluster::formed(
        3,
        ClusterOptions {
            slots: 16,
            ..options(&s3)
        },
    )
    .await?;
    let script = "f=$(ls /pfs/in); case $f in f0007) exit 3;; esac; cp /pfs/in/$f /pfs/out/$f";
    let mut job_spec = spec(
        "incremental",
        atom("in", &bucket.url("in/"), "/*"),
        script,
        &bucket.url("out/"),
    );
    job_spec["datum_tries"] = json!(1);
    let run = async |spec: &Value, reprocess: bool| -> Result<Value> {
        let path = jobs_path(reprocess);
        let (status, created) = cluster.post_json(0, path, spec).await?;
        ensure!(status == 200, "{status} {created}");
        let id = created["id"].as_str().unwrap_or_default();
        cluster.wait_job(1, id, Duration::from_secs(300)).await
    };
    let counts = |job: &Value| {
        let c = &job["counts"];
        (c["done"].clone(), c["failed"].clone(), c["skipped"].clone())
    };

    phase("the first run does every datum: 999 done, one fails");
    let first = run(&job_spec, false).await?;
    ensure!(
        counts(&first) == (json!(999), json!(1), json!(0)),
        "{first}"
    );

    phase(
        "10 inputs change and one output is deleted: the re-run runs those 11 and the failed one",
    );
    let changed: Vec<usize> = (0..10).map(|i| 100 + i * 37).collect();
    for &i in &changed {
        bucket.put(&key(i), format!("v2 {i}").into_bytes()).await?;
    }
    bucket.delete("out/f0500").await?;
    let second = run(&job_spec, false).await?;
    ensure!(
        counts(&second) == (json!(11), json!(1), json!(988)),
        "{second}"
    );
    let second_id = second["id"].as_str().unwrap_or_default();
    let mut ran: Vec<String> = cluster
        .datums(2, second_id, Some("done"))
        .await?
        .iter()
        .filter_map(|d| d["inputs"][0]["path"].as_str().map(str::to_string))
        .collect();
    ran.sort();
    let mut expected: Vec<String> = changed
        .iter()
        .chain(&[500])
        .map(|i| format!("/pfs/in/f{i:04}"))
        .collect();
    expected.sort();
    ensure!(ran == expected, "ran {ran:?}");
    ensure!(bucket.get(&format!("out/f{:04}", changed[0])).await? == b"v2 100");
    ensure!(bucket.get("out/f0500").await? == b"v1 500");
    let skipped = cluster.datums(0, second_id, Some("skipped")).await?;
    ensure!(
        skipped.len() == 988
            && skipped.iter().all(|d| {
                d["attempts"].as_array().is_some_and(Vec::is_empty)
                    && d["reused_from"]["job"] == first["id"]
            }),
        "{:?}",
        skipped.first()
    );

    phase("an unchanged re-run skips all but the failed datum, reusing across two jobs");
    let third = run(&job_spec, false).await?;
    ensure!(
        counts(&third) == (json!(0), json!(1), json!(999)),
        "{third}"
    );

    // Running everything again proves nothing more than seeing it listed with nothing
    // skipped: each job is canceled once its input is listed.
    let listed = async |spec: &Value, reprocess: bool| -> Result<Value> {
        let path = jobs_path(reprocess);
        let (status, created) = cluster.post_json(2, path, spec).await?;
        ensure!(status == 200, "{status} {created}");
        let id = created["id"].as_str().unwrap_or_default().to_string();
        let this = &cluster;
        let job = wait_for("the input listed", Duration::from_secs(60), async || {
            let job: Value = this.get(0, &format!("/v1/jobs/{id}")).await.ok()?;
            (job["listing"] == false).then_some(job)
        })
        .await?;
        cluster.post(1, &format!("/v1/jobs/{id}:cancel")).await?;
        cluster.wait_job(1, &id, Duration::from_secs(60)).await?;
        Ok(job)
    };
    phase("reprocess runs everything again");
    let fourth = listed(&job_spec, true).await?;
    ensure!(
        fourth["counts"]["skipped"] == 0 && fourth["counts"]["total"] == 1_000,
        "{fourth}"
    );

    phase("a changed transform runs everything again");
    job_spec["transform"]["env"] = json!({ "VERSION": "2" });
    let fifth = listed(&job_spec, false).await?;
    ensure!(
        fifth["counts"]["skipped"] == 0 && fifth["counts"]["total"] == 1_000,
        "{fifth}"
    );
    Ok(())
}

#[tokio::test]
async fn failing_datums_spend_their_tries_and_end_the_job_error_while_the_rest_finish() -> Result<()>
{
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    for name in ["good-1", "bad-1", "good-2", "bad-2", "good-3"] {
        bucket
            .put(&format!("in/{name}"), name.as_bytes().to_vec())
            .await?;
    }
    let cluster = TestCluster::formed(3, options(&s3)).await?;
    let script = "f=$(ls /pfs/in); case $f in bad*) echo no >&2; exit 3;; esac; \
                  cp /pfs/in/$f /pfs/out/$f";
    let mut job_spec = spec(
        "tries",
        atom("in", &bucket.url("in/"), "/*"),
        script,
        &bucket.url("out/"),
    );
    job_spec["datum_tries"] = json!(2);
    let created = cluster.submit_job(0, &job_spec).await?;
    let id = created["id"].as_str().unwrap_or_default();

    phase("the job ends error; the good datums are done and published");
    let job = cluster.wait_job(1, id, JOB_TIMEOUT).await?;
    ensure!(job["state"] == "error", "{job}");
    ensure!(
        job["counts"]["done"] == 3 && job["counts"]["failed"] == 2,
        "{job}"
    );
    ensure!(
        outputs(&bucket, "out").await? == ["out/good-1", "out/good-2", "out/good-3"],
        "{:?}",
        outputs(&bucket, "out").await?
    );
    let errors = job["first_errors"].as_array().cloned().unwrap_or_default();
    ensure!(
        errors.len() == 2 && errors.iter().all(|e| e["message"] == "exit code 3"),
        "{job}"
    );

    phase("each failed datum ran its two tries, with exit code and stderr kept");
    for datum in cluster.datums(2, id, Some("failed")).await? {
        let attempts = datum["attempts"].as_array().cloned().unwrap_or_default();
        ensure!(attempts.len() == 2, "{datum}");
        ensure!(attempts.iter().all(|a| a["exit_code"] == 3), "{datum}");
        let described: Value = cluster
            .get(
                0,
                &format!("/v1/datums/{}", datum["id"].as_str().unwrap_or_default()),
            )
            .await?;
        ensure!(
            described["attempts"][1]["executors"][0]["stderr"] == "no\n",
            "{described}"
        );
        let logs: Value = cluster
            .get(
                1,
                &format!(
                    "/v1/datums/{}/logs",
                    datum["id"].as_str().unwrap_or_default()
                ),
            )
            .await?;
        ensure!(
            logs["attempts"][0]["executors"][0]["stderr"] == "no\n",
            "{logs}"
        );
    }

    phase("retry gives the failed datums fresh tries (they fail again)");
    let (status, body) = cluster.post(0, &format!("/v1/jobs/{id}:retry")).await?;
    ensure!(status == 200, "{status} {body}");
    let job = cluster.wait_job(0, id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "error" && job["counts"]["failed"] == 2,
        "{job}"
    );
    for datum in cluster.datums(0, id, Some("failed")).await? {
        ensure!(
            datum["attempts"].as_array().map_or(0, Vec::len) == 4,
            "{datum}"
        );
    }
    ensure!(staging_left(&bucket, "out").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn timeouts_kill_a_slow_datum_and_end_a_slow_job_and_cancel_stops_the_rest() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    for i in 0..4 {
        bucket.put(&format!("in/{i}"), vec![b'x']).await?;
    }
    let cluster = TestCluster::formed(3, options(&s3)).await?;
    let input = || atom("in", &bucket.url("in/"), "/*");

    phase("datum_timeout kills an attempt and counts a try");
    let mut slow = spec("datum-timeout", input(), "sleep 60", &bucket.url("a/"));
    slow["datum_timeout"] = json!("1s");
    slow["datum_tries"] = json!(2);
    let id = cluster.submit_job(0, &slow).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let job = cluster.wait_job(0, &id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "error" && job["counts"]["failed"] == 4,
        "{job}"
    );
    for datum in cluster.datums(0, &id, None).await? {
        let attempts = datum["attempts"].as_array().cloned().unwrap_or_default();
        ensure!(
            attempts.len() == 2 && attempts.iter().all(|a| a["outcome"] == "timed_out"),
            "{datum}"
        );
    }
    ensure!(
        job["first_errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("datum_timeout of 1s")),
        "{job}"
    );

    phase("job_timeout cancels what is left and ends the job error");
    let mut long = spec("job-timeout", input(), "sleep 60", &bucket.url("b/"));
    long["job_timeout"] = json!("2s");
    long["parallelism_spec"] = json!({ "constant": 1 });
    let started = std::time::Instant::now();
    let id = cluster.submit_job(1, &long).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let job = cluster.wait_job(2, &id, JOB_TIMEOUT).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    ensure!(job["state"] == "error", "{job}");
    ensure!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("job_timeout of 2s")),
        "{job}"
    );
    ensure!(job["counts"]["canceled"] == 4, "{job}");

    phase("cancel: running attempts are killed, waiting datums dropped, job canceled");
    let mut many = spec("cancel", input(), "sleep 60", &bucket.url("c/"));
    many["parallelism_spec"] = json!({ "constant": 2 });
    let id = cluster.submit_job(2, &many).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let this = &cluster;
    wait_for("two datums to run", JOB_TIMEOUT, async || {
        let job = this.job(0, &id).await.ok()?;
        (job["counts"]["running"] == 2).then_some(())
    })
    .await?;
    let (status, body) = cluster.post(0, &format!("/v1/jobs/{id}:cancel")).await?;
    ensure!(status == 200, "{status} {body}");
    let job = cluster.wait_job(1, &id, Duration::from_secs(30)).await?;
    ensure!(
        job["state"] == "canceled" && job["counts"]["canceled"] == 4,
        "{job}"
    );
    let (status, _) = cluster.post(0, "/v1/jobs/no-such-job:cancel").await?;
    ensure!(status == 404, "{status}");
    Ok(())
}

#[tokio::test]
async fn falconeris_example_spec_runs_unchanged_but_for_its_image_command_and_buckets() -> Result<()>
{
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let Ok(image) = std::env::var("SHOAL_TEST_IMAGE") else {
        eprintln!("SHOAL_TEST_IMAGE is not set (no Docker engine): skipping");
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    let books: BTreeMap<&str, &str> = [
        ("moby.txt", "call me ishmael"),
        ("emma.txt", "emma woodhouse handsome clever and rich"),
        ("kafka.txt", "one morning"),
    ]
    .into_iter()
    .collect();
    for (name, text) in &books {
        bucket
            .put(&format!("books/{name}"), text.as_bytes().to_vec())
            .await?;
    }
    let cluster = TestCluster::formed(
        3,
        ClusterOptions {
            executor: "docker".to_string(),
            docker_network: "none".to_string(),
            ..options(&s3)
        },
    )
    .await?;

    phase("Falconeri's example, its Kubernetes fields reported as ignored");
    let mut example: Value = serde_json::from_str(FALCONERI_EXAMPLE)?;
    example["transform"]["image"] = json!(image);
    example["transform"]["cmd"] = json!([
        "sh",
        "-c",
        "for f in /pfs/books/*; do wc -w < $f > /pfs/out/$(basename $f .txt).count; done"
    ]);
    example["input"]["atom"]["URI"] = json!(bucket.url("books/"));
    example["egress"]["URI"] = json!(bucket.url("words/"));
    let created = cluster.submit_job(1, &example).await?;
    ensure!(
        created["ignored"]
            == json!([
                "node_selector",
                "transform.secrets",
                "transform.service_account"
            ]),
        "{created}"
    );
    ensure!(created["name"] == "book_words", "{created}");
    let id = created["id"].as_str().unwrap_or_default();
    let job = cluster.wait_job(0, id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "done" && job["counts"]["done"] == 3,
        "{job}"
    );
    ensure!(
        job["spec"]["transform"]["secrets"].is_array(),
        "the spec is kept as sent"
    );

    phase("one word count per book under the egress URI");
    for (name, text) in &books {
        let key = format!("words/{}.count", name.trim_end_matches(".txt"));
        let count = String::from_utf8(bucket.get(&key).await?)?;
        ensure!(
            count.trim() == text.split_whitespace().count().to_string(),
            "{key}: {count:?}"
        );
    }
    ensure!(staging_left(&bucket, "words").await?.is_empty());
    Ok(())
}

/// Falconeri's example spec (`falconeri_common/src/example_pipeline_spec.json`), verbatim.
const FALCONERI_EXAMPLE: &str = r#"{
  "pipeline": {
    "name": "book_words"
  },
  "transform": {
    "cmd": [
      "python3",
      "/extract_words.py"
    ],
    "image": "somerepo/my_python_nlp",
    "env": {
      "VARNAME": "value"
    },
    "secrets": [
      {
        "name": "ssl",
        "mount_path": "/ssl"
      },
      {
        "name": "s3",
        "key": "AWS_ACCESS_KEY_ID",
        "env_var": "AWS_ACCESS_KEY_ID"
      }
    ],
    "service_account": "example-service"
  },
  "parallelism_spec": {
    "constant": 10
  },
  "resource_requests": {
    "memory": "500Mi",
    "cpu": 1.2
  },
  "datum_tries": 3,
  "job_timeout": "5m",
  "node_selector": {
    "node_type": "falconeri_worker"
  },
  "input": {
    "atom": {
      "URI": "gs://example-bucket/books/",
      "repo": "books",
      "glob": "/*"
    }
  },
  "egress": {
    "URI": "gs://example-bucket/words/"
  }
}"#;

#[tokio::test]
async fn a_listing_failure_ends_the_job_error_and_a_shared_output_name_fails_the_second_datum()
-> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    for name in ["a", "b", "c"] {
        bucket
            .put(&format!("in/{name}"), name.as_bytes().to_vec())
            .await?;
    }
    let cluster = TestCluster::formed(3, options(&s3)).await?;

    phase("an input in a bucket that does not exist: the job ends error with the storage error");
    let missing = spec(
        "missing",
        atom("in", "s3://no-such-bucket-anywhere/in/", "/*"),
        "true",
        &bucket.url("out/"),
    );
    let id = cluster.submit_job(0, &missing).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let job = cluster.wait_job(1, &id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "error" && job["counts"]["total"] == 0,
        "{job}"
    );
    ensure!(
        job["error"].as_str().is_some_and(
            |e| e.contains("listing the input failed") && e.contains("no-such-bucket-anywhere")
        ),
        "{job}"
    );

    phase("three datums write the same output name: one publishes it, the others fail naming it");
    let mut clash = spec(
        "clash",
        atom("in", &bucket.url("in/"), "/*"),
        "cp /pfs/in/* /pfs/out/same",
        &bucket.url("clash/"),
    );
    clash["datum_tries"] = json!(3);
    clash["parallelism_spec"] = json!({ "constant": 1 });
    let id = cluster.submit_job(2, &clash).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let job = cluster.wait_job(0, &id, JOB_TIMEOUT).await?;
    ensure!(job["state"] == "error", "{job}");
    ensure!(
        job["counts"]["done"] == 1 && job["counts"]["failed"] == 2,
        "{job}"
    );
    for error in job["first_errors"].as_array().into_iter().flatten() {
        ensure!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"same\"")),
            "{job}"
        );
    }
    let failed = cluster.datums(0, &id, Some("failed")).await?;
    ensure!(
        failed
            .iter()
            .all(|d| d["attempts"].as_array().map_or(0, Vec::len) == 1),
        "a conflict is not retried: {failed:?}"
    );
    let done = cluster.datums(0, &id, Some("done")).await?;
    let winner = done[0]["inputs"][0]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let published = String::from_utf8(bucket.get("clash/same").await?)?;
    ensure!(
        winner.ends_with(&published),
        "clash/same holds {published:?}, written by {winner}"
    );
    ensure!(outputs(&bucket, "clash").await? == ["clash/same"]);
    ensure!(staging_left(&bucket, "clash").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_user_sees_and_cancels_only_its_own_jobs() -> Result<()> {
    use shoal_node::config::TokenConfig;
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
        bootstrap_expect: 1,
        tokens: vec![
            TokenConfig::Admin(admin.to_string()),
            user(alice, "alice"),
            user(bob, "bob"),
        ],
        client_token: Some(admin.to_string()),
        ..Default::default()
    };
    let cluster = TestCluster::formed(1, options).await?;
    // A local input the nodes may read (no S3 needed).
    let input = cluster.files_dir().join("in");
    std::fs::create_dir_all(&input)?;
    std::fs::write(input.join("x"), b"x")?;
    let job = spec(
        "alices",
        atom("in", &format!("file://{}/", input.display()), "/*"),
        "sleep 30",
        &format!("file://{}/out/", cluster.files_dir().display()),
    );

    phase("alice's job: alice and the administrator see it, bob gets 404 and cannot cancel it");
    let post = reqwest::Method::POST;
    let (status, _, created) = cluster
        .request(0, post.clone(), "/v1/jobs", Some(alice), Some(&job))
        .await?;
    ensure!(status == 200, "{status} {created}");
    let id = created["id"].as_str().unwrap_or_default();
    for (token, visible) in [(alice, true), (admin, true), (bob, false)] {
        let get = reqwest::Method::GET;
        let (status, _, _) = cluster
            .request(0, get.clone(), &format!("/v1/jobs/{id}"), Some(token), None)
            .await?;
        ensure!(
            status == if visible { 200 } else { 404 },
            "{token}: {status}"
        );
        let (_, _, list) = cluster
            .request(0, get, "/v1/jobs", Some(token), None)
            .await?;
        let listed = list["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["id"] == id));
        ensure!(listed == visible, "{token}: {list}");
    }
    let cancel = format!("/v1/jobs/{id}:cancel");
    let (status, _, _) = cluster
        .request(0, post.clone(), &cancel, Some(bob), None)
        .await?;
    ensure!(status == 404, "bob canceled alice's job: {status}");
    let (status, _, body) = cluster.request(0, post, &cancel, Some(alice), None).await?;
    ensure!(status == 200, "{status} {body}");
    let job = cluster.wait_job(0, id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "canceled" && job["owner"] == "alice",
        "{job}"
    );
    Ok(())
}
