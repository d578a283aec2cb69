//! Storage throughput benchmark: prints MiB/s of uploads and downloads of one large file and of
//! many small files, through `file://` and the S3 server named by `SHOAL_TEST_S3_ENDPOINT`
//! (with `SHOAL_TEST_S3_KEY`/`SHOAL_TEST_S3_SECRET`), beside `cp` of the same bytes.
//!
//!     cargo run --release -p shoal-storage --bin storage_bench -- [--large-mib 256]
//!         [--small-files 1000] [--small-kib 16]
//!
//! Caches stay warm (nothing is dropped), but every timed step starts after `sync`, so no step
//! pays for the dirty pages of the one before; `cp` is timed the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use shoal_storage::{Resolver, StorageConfig, Transfers};

/// Sizes of one run; every field has a flag.
#[derive(Debug, Clone, Copy)]
struct BenchSizes {
    large_mib: u64,
    small_files: u64,
    small_kib: u64,
}

const MIB: u64 = 1024 * 1024;
/// Bench inputs stay small enough for a laptop's temp dir.
const LARGE_MIB_MAX: u64 = 16 * 1024;
const SMALL_FILES_MAX: u64 = 100_000;

/// One measured transfer of a known number of bytes.
struct Measured {
    bytes: u64,
    elapsed: Duration,
}

impl Measured {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes = parse_args()?;
    let root = std::env::temp_dir().join(format!("shoal-storage-bench-{}", std::process::id()));
    let result = run(&root, sizes).await;
    if let Err(error) = std::fs::remove_dir_all(&root) {
        eprintln!("could not remove {}: {error}", root.display());
    }
    result
}

fn parse_args() -> anyhow::Result<BenchSizes> {
    let mut sizes = BenchSizes {
        large_mib: 256,
        small_files: 1_000,
        small_kib: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} takes a whole number"))?;
        match flag.as_str() {
            "--large-mib" => sizes.large_mib = value.clamp(1, LARGE_MIB_MAX),
            "--small-files" => sizes.small_files = value.clamp(1, SMALL_FILES_MAX),
            "--small-kib" => sizes.small_kib = value.clamp(1, 1024),
            _ => bail!("unknown flag {flag} (use --large-mib, --small-files, --small-kib)"),
        }
    }
    Ok(sizes)
}

async fn run(root: &Path, sizes: BenchSizes) -> anyhow::Result<()> {
    let work = root.join("work");
    let remote = root.join("remote");
    std::fs::create_dir_all(work.join("src/small"))?;
    std::fs::create_dir_all(&remote)?;
    write_inputs(&work.join("src"), sizes)?;
    let large_bytes = sizes.large_mib * MIB;
    let small_bytes = sizes.small_files * sizes.small_kib * 1024;

    let cp_large = time_cp(
        &work.join("src/large.bin"),
        &root.join("cp/large.bin"),
        large_bytes,
    )?;
    let cp_small = time_cp(&work.join("src/small"), &root.join("cp/small"), small_bytes)?;
    println!(
        "inputs: one file of {} MiB; {} files of {} KiB",
        sizes.large_mib, sizes.small_files, sizes.small_kib
    );
    println!(
        "{:<6} {:<22} {:>10} {:>9} {:>10} {:>9} {:>7}",
        "store", "case", "MiB", "seconds", "MiB/s", "cp MiB/s", "ratio"
    );

    let file_base = format!("file://{}", remote.display());
    let file_config = StorageConfig {
        allowed_local_roots: vec![remote.clone()],
        s3_endpoint: "http://127.0.0.1:9".into(),
        s3_access_key_id: Some("unused".into()),
        s3_secret_access_key: Some("unused".into()),
        ..StorageConfig::default()
    };
    let baselines = (&cp_large, &cp_small);
    bench_backend("file", file_config, &file_base, &work, baselines).await?;

    match s3_from_env() {
        Some((config, endpoint)) => {
            let bucket = create_bucket(&endpoint).await?;
            bench_backend("s3", config, &format!("s3://{bucket}"), &work, baselines).await?;
        }
        None => println!("s3     skipped: set SHOAL_TEST_S3_ENDPOINT, _KEY and _SECRET"),
    }
    Ok(())
}

/// Writes the large file and the small files with cheap pseudo-random bytes.
fn write_inputs(src: &Path, sizes: BenchSizes) -> anyhow::Result<()> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; MIB as usize];
    let mut fill = |block: &mut [u8]| {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
    };
    let mut large = std::io::BufWriter::new(std::fs::File::create(src.join("large.bin"))?);
    for _ in 0..sizes.large_mib {
        fill(&mut block);
        std::io::Write::write_all(&mut large, &block)?;
    }
    std::io::Write::flush(&mut large)?;
    let small_len = usize::try_from(sizes.small_kib * 1024)?;
    for index in 0..sizes.small_files {
        fill(&mut block);
        let dir = src.join(format!("small/d{:02}", index % 16));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{index:06}.bin")), &block[..small_len])?;
    }
    Ok(())
}

/// Flushes dirty pages so the next timed step starts from the same state as the others.
fn settle() -> anyhow::Result<()> {
    let status = std::process::Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

fn time_cp(src: &Path, dest: &Path, bytes: u64) -> anyhow::Result<Measured> {
    std::fs::create_dir_all(dest.parent().context("cp destination has a parent")?)?;
    settle()?;
    let started = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dest)
        .status()?;
    if !status.success() {
        bail!("cp {} {} failed: {status}", src.display(), dest.display());
    }
    Ok(Measured {
        bytes,
        elapsed: started.elapsed(),
    })
}

async fn bench_backend(
    store: &str,
    config: StorageConfig,
    base_url: &str,
    work: &Path,
    (cp_large, cp_small): (&Measured, &Measured),
) -> anyhow::Result<()> {
    let resolver = Arc::new(Resolver::new(config, work)?);
    let transfers = Transfers::new(resolver, Transfers::node_semaphore())?;
    let large_url = format!("{base_url}/bench/large.bin");
    let small_url = format!("{base_url}/bench/small");
    let out = |name: &str| -> PathBuf { work.join(format!("{store}-{name}")) };

    settle()?;
    let started = Instant::now();
    let bytes = transfers
        .upload_file(&work.join("src/large.bin"), &large_url)
        .await?
        .size_bytes;
    report(
        store,
        "upload one large",
        &measured(bytes, started),
        cp_large,
    );
    settle()?;
    let started = Instant::now();
    let bytes = transfers
        .download_file(&large_url, &out("large.bin"))
        .await?;
    report(
        store,
        "download one large",
        &measured(bytes, started),
        cp_large,
    );

    settle()?;
    let started = Instant::now();
    let uploaded = transfers
        .upload_dir(&work.join("src/small"), &small_url)
        .await?;
    let bytes = uploaded.iter().map(|file| file.size_bytes).sum();
    report(
        store,
        "upload many small",
        &measured(bytes, started),
        cp_small,
    );
    settle()?;
    let started = Instant::now();
    let summary = transfers.download_dir(&small_url, &out("small")).await?;
    report(
        store,
        "download many small",
        &measured(summary.bytes, started),
        cp_small,
    );
    Ok(())
}

fn measured(bytes: u64, started: Instant) -> Measured {
    Measured {
        bytes,
        elapsed: started.elapsed(),
    }
}

fn report(store: &str, case: &str, run: &Measured, cp: &Measured) {
    println!(
        "{:<6} {:<22} {:>10.1} {:>9.3} {:>10.1} {:>9.1} {:>7.2}",
        store,
        case,
        run.bytes as f64 / MIB as f64,
        run.elapsed.as_secs_f64(),
        run.mib_per_s(),
        cp.mib_per_s(),
        run.mib_per_s() / cp.mib_per_s()
    );
}

fn s3_from_env() -> Option<(StorageConfig, String)> {
    let endpoint = std::env::var("SHOAL_TEST_S3_ENDPOINT").ok()?;
    let config = StorageConfig {
        s3_endpoint: endpoint.clone(),
        s3_region: "us-east-1".into(),
        s3_allow_http: endpoint.starts_with("http://"),
        s3_access_key_id: Some(std::env::var("SHOAL_TEST_S3_KEY").ok()?),
        s3_secret_access_key: Some(std::env::var("SHOAL_TEST_S3_SECRET").ok()?),
        ..StorageConfig::default()
    };
    Some((config, endpoint))
}

async fn create_bucket(endpoint: &str) -> anyhow::Result<String> {
    #[allow(clippy::disallowed_methods)] // a benchmark tool, never simulated
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let bucket = format!("shoal-bench-{}", nanos % 1_000_000_000_000);
    let response = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket} at {endpoint}"))?;
    if !response.status().is_success() {
        bail!(
            "creating bucket {bucket} at {endpoint}: {}",
            response.status()
        );
    }
    Ok(bucket)
}
