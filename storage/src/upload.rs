//! Outputs: one file, a directory tree, or a TES wildcard output (`path` with glob characters
//! plus `path_prefix`), each uploaded file reported as (url, path, size).
//!
//! Small files go up in one PUT; larger ones in parts (`WriteMultipart`), read from disk one part
//! at a time so memory stays near `PART_UPLOADS_MAX × part size` per file. Local destinations are
//! written to a temporary name and renamed, so a reader never sees half a file.

use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use std::io::Read;

use crate::error::StorageError;
use crate::fs::blocking;
use crate::limits::{
    ATTEMPT_TRANSFERS_MAX, DIRECTORY_OBJECTS_MAX, GLOB_OUTPUT_FILES_MAX, PART_BYTES,
    PART_UPLOADS_MAX, PARTS_MAX, SINGLE_PUT_BYTES_MAX,
};
use crate::local::{LocalRoots, normalize_absolute};
use crate::resolve::{Access, Backend, Location};
use crate::retry::with_retries;
use crate::transfers::{Transfers, join_relative, join_url};
use crate::walk::{LocalFile, walk_files};

/// One uploaded file, as TES reports outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// Where the file went.
    pub url: String,
    /// The local path it came from (as found in the walked tree, not a symlink's target).
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// A local file and the relative key it goes to below the destination URL.
struct Planned {
    file: LocalFile,
    dest_rel: String,
}

impl Transfers {
    /// Uploads the file `src` (inside the work dir) to `url`.
    pub async fn upload_file(&self, src: &Path, url: &str) -> Result<UploadedFile, StorageError> {
        let source = self.work_path(src).await?;
        let location = self.resolver.resolve(url, Access::Write).await?;
        let _permits = self.permits().await;
        let size_bytes = with_retries(url, || put_file(&location, url, &source, "", self)).await?;
        Ok(UploadedFile {
            url: url.to_owned(),
            path: src.to_path_buf(),
            size_bytes,
        })
    }

    /// Uploads every file below `src` to `url`, keeping relative paths. An empty directory
    /// uploads nothing.
    pub async fn upload_dir(
        &self,
        src: &Path,
        url: &str,
    ) -> Result<Vec<UploadedFile>, StorageError> {
        let dir = self.work_path(src).await?;
        let location = self.resolver.resolve(url, Access::Write).await?;
        let files = self
            .walk_outputs(dir.clone(), url, DIRECTORY_OBJECTS_MAX, |_| true)
            .await?;
        let planned = files
            .into_iter()
            .map(|file| Planned {
                dest_rel: file.rel.clone(),
                file: LocalFile {
                    path: src.join(&file.rel),
                    ..file
                },
            })
            .collect();
        self.upload_planned(&location, planned).await
    }

    /// A TES wildcard output: every file matching the glob `pattern` goes to `url` + its path
    /// with `path_prefix` stripped. Matching no file uploads nothing.
    pub async fn upload_glob(
        &self,
        pattern: &Path,
        path_prefix: &Path,
        url: &str,
    ) -> Result<Vec<UploadedFile>, StorageError> {
        let glob = OutputGlob::new(pattern, path_prefix)?;
        let walk_dir = self.work_path(&glob.base_dir).await?;
        let location = self.resolver.resolve(url, Access::Write).await?;
        let base_dir = glob.base_dir.clone();
        let files = self
            .walk_outputs(walk_dir, url, GLOB_OUTPUT_FILES_MAX, move |file| {
                glob.matcher.is_match(glob.base_dir.join(&file.rel))
            })
            .await?;
        let mut planned = Vec::with_capacity(files.len());
        for file in files {
            let path = join_relative(&base_dir, &file.rel, url)?;
            let dest_rel = prefix_stripped(&path, path_prefix)?;
            planned.push(Planned {
                file: LocalFile { path, ..file },
                dest_rel,
            });
        }
        self.upload_planned(&location, planned).await
    }

    /// Walks `dir` on a blocking thread, keeping files `keep` accepts, at most `limit`.
    async fn walk_outputs(
        &self,
        dir: PathBuf,
        url: &str,
        limit: usize,
        keep: impl Fn(&LocalFile) -> bool + Send + 'static,
    ) -> Result<Vec<LocalFile>, StorageError> {
        let roots: LocalRoots = self.work_roots.clone();
        let url = url.to_owned();
        let join_path = dir.clone();
        shoal_runtime::blocking(move || {
            let mut files = Vec::new();
            let mut outcome = Ok(());
            walk_files(&dir, &roots, |item| match item {
                Ok(file) if !keep(&file) => std::ops::ControlFlow::Continue(()),
                Ok(_) if files.len() >= limit => {
                    outcome = Err(StorageError::TooManyObjects {
                        url: url.clone(),
                        limit,
                    });
                    std::ops::ControlFlow::Break(())
                }
                Ok(file) => {
                    files.push(file);
                    std::ops::ControlFlow::Continue(())
                }
                Err(error) => {
                    outcome = Err(error);
                    std::ops::ControlFlow::Break(())
                }
            });
            outcome.map(|()| files)
        })
        .await
        .map_err(|source| StorageError::Join {
            path: join_path,
            source,
        })?
    }

    async fn upload_planned(
        &self,
        location: &Location,
        planned: Vec<Planned>,
    ) -> Result<Vec<UploadedFile>, StorageError> {
        futures::stream::iter(planned)
            .map(|planned| async move {
                let url = join_url(&location.url, &planned.dest_rel);
                let _permits = self.permits().await;
                let put = || {
                    put_file(
                        location,
                        &url,
                        &planned.file.source,
                        &planned.dest_rel,
                        self,
                    )
                };
                let size_bytes = with_retries(&url, put).await?;
                Ok(UploadedFile {
                    url,
                    path: planned.file.path,
                    size_bytes,
                })
            })
            .buffer_unordered(ATTEMPT_TRANSFERS_MAX)
            .try_collect()
            .await
    }
}

/// Uploads one local file to `location` + `rel` (empty `rel`: the location itself).
async fn put_file(
    location: &Location,
    url: &str,
    source: &Path,
    rel: &str,
    transfers: &Transfers,
) -> Result<u64, StorageError> {
    match &location.backend {
        Backend::Local { path } => {
            let dest = if rel.is_empty() {
                path.clone()
            } else {
                join_relative(path, rel, url)?
            };
            copy_to_local(transfers, url, source, &dest).await
        }
        Backend::Remote { .. } => {
            let object = rel
                .split('/')
                .filter(|part| !part.is_empty())
                .fold(location.path.clone(), |object, part| object.join(part));
            put_object(location, url, source, &object).await
        }
    }
}

/// Copies into a local destination through a temporary name, re-checking the roots at the
/// final path so an existing symlink below the destination cannot redirect the write.
async fn copy_to_local(
    transfers: &Transfers,
    url: &str,
    source: &Path,
    dest: &Path,
) -> Result<u64, StorageError> {
    let roots = transfers.resolver.local_roots().clone();
    let (url, source, dest) = (url.to_owned(), source.to_path_buf(), dest.to_path_buf());
    let join_path = dest.clone();
    shoal_runtime::blocking(move || {
        let Some(dest) = roots.resolve_inside(&url, &dest)? else {
            return Err(StorageError::OutsideAllowedRoots { url, path: dest });
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|error| StorageError::io(parent, error))?;
        }
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let partial = dest.with_file_name(format!(".{name}.shoal-partial"));
        let bytes =
            std::fs::copy(&source, &partial).map_err(|error| StorageError::io(&source, error))?;
        std::fs::rename(&partial, &dest).map_err(|error| StorageError::io(&dest, error))?;
        Ok(bytes)
    })
    .await
    .map_err(|source| StorageError::Join {
        path: join_path,
        source,
    })?
}

/// Uploads a local file to an object store, in one PUT or in parts depending on its size.
async fn put_object(
    location: &Location,
    url: &str,
    source: &Path,
    object: &ObjectPath,
) -> Result<u64, StorageError> {
    let path = source.to_path_buf();
    let size_bytes = blocking(move || std::fs::metadata(path))
        .await
        .map_err(|error| StorageError::io(source, error))?
        .len();
    if size_bytes <= SINGLE_PUT_BYTES_MAX {
        let path = source.to_path_buf();
        let bytes = blocking(move || std::fs::read(path))
            .await
            .map_err(|error| StorageError::io(source, error))?;
        let size_bytes = bytes.len() as u64;
        location
            .store
            .put(object, PutPayload::from(bytes))
            .await
            .map_err(|error| StorageError::from_store(url, error))?;
        return Ok(size_bytes);
    }
    let upload = location
        .store
        .put_multipart(object)
        .await
        .map_err(|error| StorageError::from_store(url, error))?;
    let part_bytes = part_bytes_for(size_bytes);
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
    match feed_parts(&mut writer, url, source, part_bytes).await {
        Ok(sent_bytes) => {
            writer
                .finish()
                .await
                .map_err(|error| StorageError::from_store(url, error))?;
            Ok(sent_bytes)
        }
        Err(error) => {
            if let Err(abort_error) = writer.abort().await {
                tracing::warn!(%url, %abort_error, "aborting a failed multipart upload failed");
            }
            Err(error)
        }
    }
}

/// Reads `source` one part at a time into `writer`, waiting while `PART_UPLOADS_MAX` parts
/// are in flight.
async fn feed_parts(
    writer: &mut WriteMultipart,
    url: &str,
    source: &Path,
    part_bytes: usize,
) -> Result<u64, StorageError> {
    let path = source.to_path_buf();
    let mut file = blocking(move || std::fs::File::open(path))
        .await
        .map_err(|error| StorageError::io(source, error))?;
    let mut sent_bytes = 0u64;
    loop {
        let (returned, part) = blocking(move || {
            let mut part = Vec::with_capacity(part_bytes);
            (&mut file).take(part_bytes as u64).read_to_end(&mut part)?;
            Ok((file, part))
        })
        .await
        .map_err(|error| StorageError::io(source, error))?;
        file = returned;
        if part.is_empty() {
            return Ok(sent_bytes);
        }
        sent_bytes += part.len() as u64;
        writer
            .wait_for_capacity(PART_UPLOADS_MAX)
            .await
            .map_err(|error| StorageError::from_store(url, error))?;
        writer.put(bytes::Bytes::from(part));
    }
}

/// Part size for a file: `PART_BYTES`, or larger so the file fits in `PARTS_MAX` parts
/// (rounded up to a whole MiB).
pub(crate) fn part_bytes_for(size_bytes: u64) -> usize {
    const MIB: u64 = 1024 * 1024;
    let needed = size_bytes.div_ceil(PARTS_MAX).div_ceil(MIB) * MIB;
    usize::try_from(needed).map_or(usize::MAX, |needed| needed.max(PART_BYTES))
}

/// A compiled TES wildcard output.
struct OutputGlob {
    matcher: globset::GlobMatcher,
    /// The longest leading directory of the pattern without glob characters: where to walk.
    base_dir: PathBuf,
}

impl OutputGlob {
    fn new(pattern: &Path, path_prefix: &Path) -> Result<Self, StorageError> {
        let text = pattern.to_str().ok_or_else(|| StorageError::NonUtf8Path {
            path: pattern.to_path_buf(),
        })?;
        let invalid = |reason: &str| StorageError::InvalidGlob {
            glob: text.to_owned(),
            reason: reason.to_owned(),
        };
        let normal = normalize_absolute(pattern)
            .ok_or_else(|| invalid("must be absolute and free of `..`"))?;
        if normalize_absolute(path_prefix).is_none() {
            return Err(invalid("path_prefix must be absolute and free of `..`"));
        }
        let matcher = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|error| invalid(&error.to_string()))?
            .compile_matcher();
        let base_dir = normal
            .components()
            .take_while(|part| {
                !part
                    .as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
            })
            .collect();
        Ok(Self { matcher, base_dir })
    }
}

/// `path` with `path_prefix` removed, as a `/`-separated key (TES 1.1 `path_prefix`).
fn prefix_stripped(path: &Path, path_prefix: &Path) -> Result<String, StorageError> {
    let refuse = || StorageError::PathPrefix {
        path: path.to_path_buf(),
        path_prefix: path_prefix.to_path_buf(),
    };
    let rel = path.strip_prefix(path_prefix).map_err(|_| refuse())?;
    let parts: Option<Vec<&str>> = rel
        .components()
        .map(|part| part.as_os_str().to_str())
        .collect();
    let key = parts.ok_or_else(refuse)?.join("/");
    if key.is_empty() {
        return Err(refuse());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_only_for_huge_files() {
        assert_eq!(part_bytes_for(200 * 1024 * 1024), PART_BYTES);
        let huge = 200 * 1024 * 1024 * 1024u64;
        let part = part_bytes_for(huge) as u64;
        assert!(part * PARTS_MAX >= huge);
        assert_eq!(part % (1024 * 1024), 0);
    }

    #[test]
    fn output_glob_walks_from_its_literal_base() -> Result<(), StorageError> {
        let glob = OutputGlob::new(Path::new("/w/out/*/x*.txt"), Path::new("/w/out"))?;
        assert_eq!(glob.base_dir, PathBuf::from("/w/out"));
        assert!(glob.matcher.is_match("/w/out/a/x1.txt"));
        assert!(!glob.matcher.is_match("/w/out/a/b/x1.txt"));
        assert!(OutputGlob::new(Path::new("out/*.txt"), Path::new("/w")).is_err());
        Ok(())
    }

    #[test]
    fn path_prefix_is_stripped_or_refused() {
        let key = prefix_stripped(Path::new("/w/out/a/b.txt"), Path::new("/w/out/"));
        assert_eq!(key.ok(), Some("a/b.txt".to_owned()));
        assert!(prefix_stripped(Path::new("/w/other/b.txt"), Path::new("/w/out")).is_err());
    }
}
