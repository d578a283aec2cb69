//! The storage scenarios, each written once and run against every backend by `main.rs`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use shoal_storage::{AtomInput, EntryKind, StorageError, expand_atom};

use crate::fixture::{Fixture, read_tree};

pub async fn single_file_round_trips(f: &Fixture) -> anyhow::Result<()> {
    let src = f.work_path("out/result.txt");
    std::fs::create_dir_all(src.parent().context("parent")?)?;
    std::fs::write(&src, b"hello shoal\n")?;
    let url = f.url("single/result.txt");
    let uploaded = f.transfers.upload_file(&src, &url).await?;
    ensure!(uploaded.url == url && uploaded.path == src && uploaded.size_bytes == 12);

    let dest = f.work_path("in/deep/copy.txt");
    let bytes = f.transfers.download_file(&url, &dest).await?;
    ensure!(bytes == 12);
    ensure!(std::fs::read(&dest)? == b"hello shoal\n");
    Ok(())
}

pub async fn directory_round_trips_with_its_layout(f: &Fixture) -> anyhow::Result<()> {
    let out = f.work_path("out");
    std::fs::create_dir_all(out.join("sub/deep"))?;
    std::fs::write(out.join("a.txt"), b"a")?;
    std::fs::write(out.join("sub/b.txt"), b"bb")?;
    std::fs::write(out.join("sub/deep/c.txt"), b"ccc")?;
    let mut uploaded = f.transfers.upload_dir(&out, &f.url("tree/")).await?;
    uploaded.sort_by(|a, b| a.url.cmp(&b.url));
    let urls: Vec<_> = uploaded.iter().map(|u| u.url.clone()).collect();
    let expected =
        ["a.txt", "sub/b.txt", "sub/deep/c.txt"].map(|rel| f.url(&format!("tree/{rel}")));
    ensure!(urls == expected, "uploaded {urls:?}");
    ensure!(uploaded.iter().map(|u| u.size_bytes).collect::<Vec<_>>() == [1, 2, 3]);
    ensure!(uploaded[1].path == out.join("sub/b.txt"));

    let dest = f.work_path("in/tree");
    let summary = f.transfers.download_dir(&f.url("tree"), &dest).await?;
    ensure!(summary.files == 3 && summary.bytes == 6, "{summary:?}");
    ensure!(read_tree(&dest)? == read_tree(&out)?);
    Ok(())
}

pub async fn wildcard_outputs_strip_the_path_prefix(f: &Fixture) -> anyhow::Result<()> {
    let out = f.work_path("data/out");
    std::fs::create_dir_all(out.join("sub"))?;
    for name in ["x1.txt", "x2.txt", "y.log", "sub/x3.txt"] {
        std::fs::write(out.join(name), name.as_bytes())?;
    }
    let pattern = out.join("x*.txt");
    let prefix = f.work_path("data");
    let mut uploaded = f
        .transfers
        .upload_glob(&pattern, &prefix, &f.url("globbed"))
        .await?;
    uploaded.sort_by(|a, b| a.url.cmp(&b.url));
    let urls: Vec<_> = uploaded.iter().map(|u| u.url.clone()).collect();
    ensure!(
        urls == [f.url("globbed/out/x1.txt"), f.url("globbed/out/x2.txt")],
        "{urls:?}"
    );
    ensure!(uploaded[0].path == out.join("x1.txt") && uploaded[0].size_bytes == 6);

    let dest = f.work_path("check");
    f.transfers.download_dir(&f.url("globbed"), &dest).await?;
    let names: Vec<_> = read_tree(&dest)?.into_iter().map(|(rel, _)| rel).collect();
    ensure!(names == ["out/x1.txt", "out/x2.txt"], "{names:?}");

    let none = f
        .transfers
        .upload_glob(&out.join("*.csv"), &out, &f.url("none"))
        .await?;
    ensure!(none.is_empty());
    Ok(())
}

const LARGE_FILE_BYTES: u64 = 200 * 1024 * 1024;
const HASH_BUFFER_BYTES: usize = 1024 * 1024;

pub async fn large_file_goes_up_in_parts_and_comes_back_intact(f: &Fixture) -> anyhow::Result<()> {
    let src = f.work_path("big/source.bin");
    let written_hash = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || write_pseudo_random(&src, LARGE_FILE_BYTES)).await??
    };
    let url = f.url("big/object.bin");
    let uploaded = f.transfers.upload_file(&src, &url).await?;
    ensure!(uploaded.size_bytes == LARGE_FILE_BYTES, "{uploaded:?}");
    std::fs::remove_file(&src)?;

    let dest = f.work_path("big/download.bin");
    let bytes = f.transfers.download_file(&url, &dest).await?;
    ensure!(bytes == LARGE_FILE_BYTES);
    ensure!(std::fs::metadata(&dest)?.len() == LARGE_FILE_BYTES);
    let read_hash = tokio::task::spawn_blocking(move || hash_file(&dest)).await??;
    ensure!(
        read_hash == written_hash,
        "downloaded bytes differ from uploaded bytes"
    );
    Ok(())
}

/// Writes `size_bytes` of xorshift output one buffer at a time, returning its SHA-256.
fn write_pseudo_random(path: &Path, size_bytes: u64) -> anyhow::Result<Vec<u8>> {
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut left = size_bytes;
    while left > 0 {
        for word in buffer.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let take = usize::try_from(left.min(HASH_BUFFER_BYTES as u64))?;
        file.write_all(&buffer[..take])?;
        hasher.update(&buffer[..take]);
        left -= take as u64;
    }
    file.flush()?;
    Ok(hasher.finalize().to_vec())
}

fn hash_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().to_vec());
        }
        hasher.update(&buffer[..read]);
    }
}

pub async fn empty_directory_round_trips_empty(f: &Fixture) -> anyhow::Result<()> {
    let out = f.work_path("empty-out");
    std::fs::create_dir_all(&out)?;
    let uploaded = f.transfers.upload_dir(&out, &f.url("empty")).await?;
    ensure!(uploaded.is_empty(), "{uploaded:?}");
    let dest = f.work_path("empty-in");
    let summary = f.transfers.download_dir(&f.url("empty"), &dest).await?;
    ensure!(summary.files == 0 && summary.bytes == 0);
    ensure!(dest.is_dir() && std::fs::read_dir(&dest)?.next().is_none());
    Ok(())
}

pub async fn missing_object_is_a_clear_error(f: &Fixture) -> anyhow::Result<()> {
    let url = f.url("no/such/object.txt");
    let dest = f.work_path("in/missing.txt");
    let error = f
        .transfers
        .download_file(&url, &dest)
        .await
        .err()
        .context("must fail")?;
    ensure!(matches!(error, StorageError::NotFound { .. }), "{error:?}");
    ensure!(
        error.to_string() == format!("object not found: {url}"),
        "{error}"
    );
    ensure!(!dest.exists());
    Ok(())
}

pub async fn url_outside_the_allowed_roots_is_refused(f: &Fixture) -> anyhow::Result<()> {
    let secret = f.outside.join("secret.txt");
    let url = format!("file://{}", secret.display());
    let dest = f.work_path("in/secret.txt");
    let error = f
        .transfers
        .download_file(&url, &dest)
        .await
        .err()
        .context("must fail")?;
    ensure!(
        matches!(error, StorageError::OutsideAllowedRoots { .. }),
        "{error:?}"
    );
    ensure!(error.to_string().contains(&url), "{error}");
    ensure!(!dest.exists() && !dest.parent().context("parent")?.exists());

    let src = f.work_path("leak.txt");
    std::fs::write(&src, b"leak")?;
    let target = format!("file://{}", f.outside.join("written.txt").display());
    let refused = f.transfers.upload_file(&src, &target).await;
    ensure!(matches!(
        refused,
        Err(StorageError::OutsideAllowedRoots { .. })
    ));
    ensure!(!f.outside.join("written.txt").exists());

    let not_in_work = f.transfers.upload_file(&secret, &f.url("stolen.txt")).await;
    ensure!(
        matches!(not_in_work, Err(StorageError::OutsideWorkDir { .. })),
        "{not_in_work:?}"
    );
    Ok(())
}

pub async fn parent_segments_are_refused(f: &Fixture) -> anyhow::Result<()> {
    f.put("inside/file.txt", b"x".to_vec()).await?;
    let url = f.url("inside/../inside/file.txt");
    let dest = f.work_path("in/dots.txt");
    let error = f
        .transfers
        .download_file(&url, &dest)
        .await
        .err()
        .context("must fail")?;
    ensure!(
        matches!(error, StorageError::ParentSegment { .. }),
        "{error:?}"
    );
    ensure!(error.to_string().contains(&url), "{error}");
    ensure!(!dest.exists());

    let escaping_dest = f.work_path("in/../../escaped.txt");
    let refused = f
        .transfers
        .download_file(&f.url("inside/file.txt"), &escaping_dest)
        .await;
    ensure!(
        matches!(refused, Err(StorageError::ParentSegment { .. })),
        "{refused:?}"
    );
    Ok(())
}

pub async fn symlinks_leaving_the_work_dir_are_not_uploaded(f: &Fixture) -> anyhow::Result<()> {
    let out = f.work_path("linked");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("real.txt"), b"real")?;
    std::os::unix::fs::symlink(f.outside.join("secret.txt"), out.join("leak.txt"))?;
    std::os::unix::fs::symlink(&f.outside, out.join("leakdir"))?;
    std::os::unix::fs::symlink(out.join("real.txt"), out.join("alias.txt"))?;
    let mut uploaded = f.transfers.upload_dir(&out, &f.url("linked")).await?;
    uploaded.sort_by(|a, b| a.url.cmp(&b.url));
    let urls: Vec<_> = uploaded.iter().map(|u| u.url.clone()).collect();
    ensure!(
        urls == [f.url("linked/alias.txt"), f.url("linked/real.txt")],
        "{urls:?}"
    );
    Ok(())
}

pub async fn globs_expand_like_pachyderm(f: &Fixture) -> anyhow::Result<()> {
    for rel in [
        "books/d1/x.txt",
        "books/d1/y.txt",
        "books/d2/z.txt",
        "books/top.txt",
    ] {
        f.put(rel, rel.as_bytes().to_vec()).await?;
    }
    let uri = f.url("books");
    let expand = |glob: &'static str| {
        let atom = AtomInput {
            index: 0,
            name: "books".into(),
            uri: uri.clone(),
            glob: glob.into(),
        };
        async move {
            let chunks = expand_atom(f.transfers.resolver(), &atom, 100).await?;
            let chunks: Vec<_> = chunks.try_collect().await?;
            anyhow::Ok(chunks.into_iter().flatten().collect::<Vec<_>>())
        }
    };
    let paths = |datums: &[shoal_storage::Datum]| -> Vec<String> {
        datums.iter().map(|d| d.inputs[0].path.clone()).collect()
    };
    ensure!(expand("/").await?.len() == 1);
    let top = expand("/*").await?;
    ensure!(paths(&top) == ["d1", "d2", "top.txt"], "{:?}", paths(&top));
    ensure!(paths(&expand("/*/*").await?) == ["d1/x.txt", "d1/y.txt", "d2/z.txt"]);
    ensure!(paths(&expand("/d*").await?) == ["d1", "d2"]);

    let d1 = &top[0].inputs[0];
    ensure!(d1.kind == EntryKind::Directory && d1.url == f.url("books/d1"));
    let dest = f.work_path("pfs/books").join(&d1.path);
    f.transfers.download(&d1.url, &dest, d1.kind).await?;
    let names: Vec<_> = read_tree(&f.work_path("pfs/books"))?
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    ensure!(names == ["d1/x.txt", "d1/y.txt"], "{names:?}");
    Ok(())
}

const MANY_OBJECTS: usize = 10_000;
const SEED_CONCURRENCY: usize = 16;
const CHUNK_DATUMS: usize = 1_000;

pub async fn ten_thousand_objects_expand_to_ten_thousand_datums(f: &Fixture) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    futures::stream::iter(0..MANY_OBJECTS)
        .map(|index| f.put_numbered(index))
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    eprintln!("seeded {MANY_OBJECTS} objects in {:?}", started.elapsed());

    let atom = AtomInput {
        index: 0,
        name: "many".into(),
        uri: f.url("many"),
        glob: "/*".into(),
    };
    let mut chunks = expand_atom(f.transfers.resolver(), &atom, CHUNK_DATUMS).await?;
    let (mut datums, mut largest_chunk, mut previous) = (0usize, 0usize, String::new());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        largest_chunk = largest_chunk.max(chunk.len());
        for datum in chunk {
            let input = &datum.inputs[0];
            ensure!(
                input.kind == EntryKind::File && input.path > previous,
                "{input:?}"
            );
            previous = input.path.clone();
            datums += 1;
        }
    }
    eprintln!("expanded {datums} datums after {:?}", started.elapsed());
    ensure!(datums == MANY_OBJECTS, "{datums} datums");
    ensure!(largest_chunk == CHUNK_DATUMS);
    Ok(())
}

impl Fixture {
    async fn put_numbered(&self, index: usize) -> anyhow::Result<()> {
        self.put(
            &format!("many/{index:05}.txt"),
            index.to_string().into_bytes(),
        )
        .await
    }
}
