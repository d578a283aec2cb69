//! Storage scenarios run against every backend: `file://` always, and the S3 server that
//! scripts/test.sh starts (`SHOAL_TEST_S3_*`; outside CI the S3 half says why it is skipped).
//!
//! Each scenario is written once in `scenarios.rs`; the macro below gives it one test per
//! backend, named `<backend>::<scenario>`.

// Tests run on tokio and the system clock directly; only the crate is simulated.
#![allow(clippy::disallowed_methods)]

mod fixture;
mod scenarios;

macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    let fixture = crate::fixture::Fixture::file().await?;
                    crate::scenarios::$scenario(&fixture).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    let Some(fixture) = crate::fixture::Fixture::s3().await? else {
                        return Ok(());
                    };
                    crate::scenarios::$scenario(&fixture).await
                }
            )*
        }
    };
}

on_every_backend!(
    single_file_round_trips,
    directory_round_trips_with_its_layout,
    wildcard_outputs_strip_the_path_prefix,
    large_file_goes_up_in_parts_and_comes_back_intact,
    empty_directory_round_trips_empty,
    missing_object_is_a_clear_error,
    url_outside_the_allowed_roots_is_refused,
    parent_segments_are_refused,
    symlinks_leaving_the_work_dir_are_not_uploaded,
    globs_expand_like_pachyderm,
    ten_thousand_objects_expand_to_ten_thousand_datums,
);

/// `http(s)://` is a read-only store: an object of the S3 server read by plain URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_urls_download_but_refuse_uploads() -> anyhow::Result<()> {
    let Some(fixture) = fixture::Fixture::s3().await? else {
        return Ok(());
    };
    let endpoint = std::env::var("SHOAL_TEST_S3_ENDPOINT")?;
    let bucket = fixture.base_url.trim_start_matches("s3://");
    let url = format!("{}/{bucket}/web/page.txt", endpoint.trim_end_matches('/'));
    // A public object, so an anonymous GET (what an HTTP store sends) is allowed.
    let put = reqwest::Client::new()
        .put(&url)
        .header("x-amz-acl", "public-read")
        .body("over http")
        .send()
        .await?;
    anyhow::ensure!(put.status().is_success(), "seeding {url}: {}", put.status());
    let dest = fixture.work_path("in/page.txt");
    let bytes = fixture.transfers.download_file(&url, &dest).await?;
    anyhow::ensure!(bytes == 9 && std::fs::read(&dest)? == b"over http");
    let refused = fixture.transfers.upload_file(&dest, &url).await;
    anyhow::ensure!(matches!(
        refused,
        Err(shoal_storage::StorageError::ReadOnly { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn inline_content_is_written_and_capped() -> anyhow::Result<()> {
    let fixture = fixture::Fixture::file().await?;
    let dest = fixture.work_path("inputs/script.sh");
    let written = fixture.transfers.write_content("echo hi\n", &dest).await?;
    anyhow::ensure!(written == 8 && std::fs::read(&dest)? == b"echo hi\n");
    let too_big = "x".repeat(shoal_storage::limits::CONTENT_BYTES_MAX + 1);
    let refused = fixture
        .transfers
        .write_content(&too_big, &fixture.work_path("big"))
        .await;
    let error = refused.err().ok_or_else(|| anyhow::anyhow!("must fail"))?;
    anyhow::ensure!(matches!(
        error,
        shoal_storage::StorageError::ContentTooLarge { .. }
    ));
    anyhow::ensure!(!fixture.work_path("big").exists());
    Ok(())
}
