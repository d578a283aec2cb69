//! Storage scenarios run against every backend: `file://` always, and the S3 and FTP servers
//! that scripts/test.sh starts (`SHOAL_TEST_S3_*`, `SHOAL_TEST_FTP_URL`; outside CI a backend
//! without its server says why it is skipped).
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
        mod ftp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    let Some(fixture) = crate::fixture::Fixture::ftp().await? else {
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

/// `ftp://` beyond the shared scenarios: credentials from the config when the URL names
/// none, a wrong password said plainly (and not retried), server-side work of publishing
/// (copy, delete below a prefix), and an aborted upload that leaves nothing behind.
mod ftp_only {
    use std::sync::Arc;

    use anyhow::{Context, ensure};
    use futures::TryStreamExt;
    use object_store::{ObjectStoreExt, PutPayload};
    use shoal_storage::{Access, Resolver, StorageConfig, StorageError, Transfers};

    use crate::fixture::{Fixture, ftp_server};

    /// The server's URL split into (`ftp://host:port`, user, password).
    fn parts(server: &str) -> anyhow::Result<(String, String, String)> {
        let url = url::Url::parse(server)?;
        let origin = format!(
            "ftp://{}:{}",
            url.host_str().context("host")?,
            url.port().unwrap_or(21)
        );
        let password = url.password().unwrap_or_default().to_owned();
        Ok((origin, url.username().to_owned(), password))
    }

    fn transfers(config: StorageConfig, work: &std::path::Path) -> anyhow::Result<Transfers> {
        let resolver = Arc::new(Resolver::new(config, work)?);
        Ok(Transfers::new(resolver, Transfers::node_semaphore())?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credentials_come_from_the_config_and_a_wrong_password_is_said_plainly()
    -> anyhow::Result<()> {
        let Some(server) = ftp_server()? else {
            return Ok(());
        };
        let (origin, user, password) = parts(&server)?;
        let work = tempfile::tempdir()?;
        let source = work.path().join("a.txt");
        std::fs::write(&source, b"by config")?;

        let config = StorageConfig {
            ftp_user: Some(user.clone()),
            ftp_password: Some(password),
            ..StorageConfig::default()
        };
        let by_config = transfers(config, work.path())?;
        let url = format!("{origin}/config-{}/a.txt", std::process::id());
        by_config.upload_file(&source, &url).await?;
        let back = work.path().join("back.txt");
        by_config.download_file(&url, &back).await?;
        ensure!(std::fs::read(&back)? == b"by config");

        // A small file goes up in one put, a large one in parts: both say why they failed.
        let large = work.path().join("large.bin");
        let large_bytes = shoal_storage::limits::SINGLE_PUT_BYTES_MAX as usize + 1024;
        std::fs::write(&large, vec![1u8; large_bytes])?;
        let anonymous = transfers(StorageConfig::default(), work.path())?;
        for file in [&source, &large] {
            let wrong = format!("ftp://{user}:not-the-password@{}/x.txt", &origin[6..]);
            let refused = anonymous.upload_file(file, &wrong).await;
            let error = refused.err().context("a wrong password must fail")?;
            ensure!(
                matches!(
                    &error,
                    StorageError::Store {
                        source: object_store::Error::Unauthenticated { .. },
                        ..
                    }
                ),
                "{}: {error:?}",
                file.display()
            );
            ensure!(
                error.to_string().contains("530"),
                "the error names the refusal: {error}"
            );
            ensure!(!error.is_transient(), "a refused login is not retried");
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_with_brackets_spaces_and_hashes_list_and_download() -> anyhow::Result<()> {
        let Some(fixture) = Fixture::ftp().await? else {
            return Ok(());
        };
        let base = fixture
            .transfers
            .resolver()
            .resolve(&fixture.url("odd"), Access::Write)
            .await?;
        let names = ["sample[1].fq", "a b#c.txt", "sub dir/x~y.txt"];
        for name in names {
            // Seeded by raw path parts (a URL would percent-encode these names).
            let mut path = base.path.clone();
            for part in name.split('/') {
                path = path.join(object_store::path::PathPart::parse(part)?);
            }
            base.store
                .put(&path, PutPayload::from(name.as_bytes().to_vec()))
                .await?;
        }
        let dest = fixture.work_path("odd");
        fixture
            .transfers
            .download_dir(&fixture.url("odd"), &dest)
            .await?;
        let got = crate::fixture::read_tree(&dest)?;
        let mut want: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|name| (name.to_string(), name.as_bytes().to_vec()))
            .collect();
        want.sort();
        ensure!(got == want, "{got:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_copies_at_once_all_finish() -> anyhow::Result<()> {
        let Some(fixture) = Fixture::ftp().await? else {
            return Ok(());
        };
        fixture.put("src.txt", b"copied".to_vec()).await?;
        let resolver = fixture.transfers.resolver();
        let from = fixture.url("src.txt");
        let copies = (0..12).map(|i| {
            let to = fixture.url(&format!("copies/{i}.txt"));
            let from = from.clone();
            async move { resolver.copy_object(&from, &to).await }
        });
        let all = futures::future::join_all(copies);
        let results = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .context("12 copies at once must not wait on each other forever")?;
        for result in results {
            result?;
        }
        let sizes = resolver
            .object_sizes_below(&fixture.url("copies"), 100)
            .await?
            .context("a listing")?;
        ensure!(
            sizes.len() == 12 && sizes.values().all(|s| *s == 6),
            "{sizes:?}"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishing_copies_and_deletes_on_the_server() -> anyhow::Result<()> {
        let Some(fixture) = Fixture::ftp().await? else {
            return Ok(());
        };
        let resolver = fixture.transfers.resolver();
        fixture.put("staged/x/a.txt", b"a".to_vec()).await?;
        fixture.put("staged/x/sub/b.txt", b"bb".to_vec()).await?;
        resolver
            .copy_object(&fixture.url("staged/x/a.txt"), &fixture.url("out/a.txt"))
            .await?;
        let dest = fixture.work_path("a.txt");
        fixture
            .transfers
            .download_file(&fixture.url("out/a.txt"), &dest)
            .await?;
        ensure!(std::fs::read(&dest)? == b"a");
        let deleted = resolver.delete_below(&fixture.url("staged")).await?;
        ensure!(deleted == 2, "deleted {deleted}");
        let left = resolver
            .object_sizes_below(&fixture.url("staged"), 10)
            .await?;
        ensure!(left.as_ref().is_some_and(|l| l.is_empty()), "{left:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_upload_leaves_nothing_behind() -> anyhow::Result<()> {
        let Some(fixture) = Fixture::ftp().await? else {
            return Ok(());
        };
        let location = fixture
            .transfers
            .resolver()
            .resolve(&fixture.url("dir/big.bin"), Access::Write)
            .await?;
        let mut upload = location.store.put_multipart(&location.path).await?;
        upload
            .put_part(PutPayload::from(vec![7u8; 1024 * 1024]))
            .await?;
        upload.abort().await?;
        let listed: Vec<_> = location
            .store
            .list(Some(&object_store::path::Path::from(
                fixture.base_url.rsplit('/').next().unwrap_or_default(),
            )))
            .try_collect()
            .await?;
        ensure!(listed.is_empty(), "left behind: {listed:?}");
        ensure!(matches!(
            location.store.head(&location.path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        Ok(())
    }
}
