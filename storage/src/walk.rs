//! Walking a local directory without leaving the allowed roots.
//!
//! Symlinks are never followed blindly: a symlink to a file inside the allowed roots is read
//! as that file; a symlink to anything outside, to a directory, or dangling is skipped with a
//! warning. So a task cannot smuggle `/etc` into its outputs, and loops cannot occur.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::local::LocalRoots;

/// One regular file found below a walked directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalFile {
    /// The path as it appears in the walked tree.
    pub path: PathBuf,
    /// What to read: `path` itself, or the target of a symlink inside the roots.
    pub source: PathBuf,
    /// `path` relative to the walked directory, `/`-separated.
    pub rel: String,
    pub size_bytes: u64,
    /// Modification time (ns) and size: changes whenever the file does.
    pub version: String,
}

/// Walks `dir` in name order (blocking) and hands each file to `on_file` until it breaks. A
/// missing `dir` is an empty walk; `dir` being a file yields nothing either.
pub(crate) fn walk_files(
    dir: &Path,
    roots: &LocalRoots,
    mut on_file: impl FnMut(Result<LocalFile, StorageError>) -> ControlFlow<()>,
) {
    if !dir.is_dir() {
        return;
    }
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name();
    for entry in walker {
        let item = match entry {
            Ok(entry) => local_file(dir, &entry, roots),
            Err(error) => {
                let path = error.path().unwrap_or(dir).to_path_buf();
                Err(StorageError::io(path, error.into()))
            }
        };
        let flow = match item {
            Ok(Some(file)) => on_file(Ok(file)),
            Ok(None) => ControlFlow::Continue(()),
            Err(error) => {
                let _ = on_file(Err(error));
                ControlFlow::Break(())
            }
        };
        if flow.is_break() {
            return;
        }
    }
}

fn local_file(
    dir: &Path,
    entry: &walkdir::DirEntry,
    roots: &LocalRoots,
) -> Result<Option<LocalFile>, StorageError> {
    let path = entry.path();
    let file_type = entry.file_type();
    if file_type.is_dir() {
        return Ok(None);
    }
    let source = if file_type.is_symlink() {
        match symlink_target_inside(path, roots) {
            Some(target) => target,
            None => {
                tracing::warn!(path = %path.display(), "skipping symlink that leaves the allowed roots, is dangling or names a directory");
                return Ok(None);
            }
        }
    } else if file_type.is_file() {
        path.to_path_buf()
    } else {
        tracing::warn!(path = %path.display(), "skipping special file");
        return Ok(None);
    };
    let metadata = std::fs::metadata(&source).map_err(|error| StorageError::io(&source, error))?;
    let rel = relative_slash_path(dir, path)?;
    let modified_ns = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    Ok(Some(LocalFile {
        path: path.to_path_buf(),
        source,
        rel,
        size_bytes: metadata.len(),
        version: format!("{modified_ns:x}-{:x}", metadata.len()),
    }))
}

fn symlink_target_inside(link: &Path, roots: &LocalRoots) -> Option<PathBuf> {
    let target = std::fs::canonicalize(link).ok()?;
    (roots.contains(&target) && target.is_file()).then_some(target)
}

/// `path` below `dir` as a `/`-separated string; refuses non-UTF-8 names.
pub(crate) fn relative_slash_path(dir: &Path, path: &Path) -> Result<String, StorageError> {
    let rel = path
        .strip_prefix(dir)
        .map_err(|_| StorageError::NonUtf8Path {
            path: path.to_path_buf(),
        })?;
    let mut parts = Vec::new();
    for component in rel.components() {
        let part = component
            .as_os_str()
            .to_str()
            .ok_or_else(|| StorageError::NonUtf8Path {
                path: path.to_path_buf(),
            })?;
        parts.push(part);
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &Path, roots: &LocalRoots) -> Vec<String> {
        let mut rels = Vec::new();
        walk_files(dir, roots, |file| {
            rels.push(file.expect("walk ok").rel);
            ControlFlow::Continue(())
        });
        rels
    }

    #[test]
    fn walk_lists_files_in_order_and_skips_escaping_symlinks()
    -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        let dir = root.path().join("d");
        std::fs::create_dir_all(dir.join("sub/deeper"))?;
        std::fs::write(dir.join("b.txt"), b"b")?;
        std::fs::write(dir.join("sub/a.txt"), b"a")?;
        std::fs::write(dir.join("sub/deeper/c.txt"), b"c")?;
        std::fs::write(outside.path().join("secret"), b"s")?;
        std::fs::write(root.path().join("inside-target"), b"i")?;
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.join("leak"))?;
        std::os::unix::fs::symlink(outside.path(), dir.join("leakdir"))?;
        std::os::unix::fs::symlink(root.path().join("inside-target"), dir.join("ok-link"))?;
        let roots = LocalRoots::new([root.path().to_path_buf()])?;
        assert_eq!(
            walk(&dir, &roots),
            vec!["b.txt", "ok-link", "sub/a.txt", "sub/deeper/c.txt"]
        );
        assert!(walk(&root.path().join("missing"), &roots).is_empty());
        Ok(())
    }
}
