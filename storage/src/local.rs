//! Local path safety: the allow-list of local roots, lexical normalisation, symlink-aware
//! containment checks, and the pure helper for container-side paths.
//!
//! Every check here runs before a transfer opens a file. Symlinks are resolved on the part of a
//! path that exists; a dangling symlink counts as an escape because writing through it would
//! create a file wherever it points.

use std::path::{Component, Path, PathBuf};

use crate::error::StorageError;

/// Whether a URL or path string holds a `..` segment, also percent-encoded (`%2e%2e`).
///
/// Checked on the raw string because URL parsers resolve dot segments silently.
pub fn has_parent_segment(raw: &str) -> bool {
    raw.split(['/', '\\', '?', '#']).any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == ".."
    })
}

/// The lexical normal form of an absolute path: `.` and repeated separators dropped. `None` if
/// the path is relative or holds `..`.
pub fn normalize_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Directories local transfers may touch, symlinks resolved once at start.
#[derive(Debug, Clone)]
pub struct LocalRoots {
    /// Canonical where the directory existed at start, else lexically normalised.
    roots: Vec<PathBuf>,
}

impl LocalRoots {
    /// Builds the allow-list; every root must be absolute and free of `..`.
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Result<Self, StorageError> {
        let mut canonical = Vec::new();
        for root in roots {
            let url = root.display().to_string();
            let normal =
                normalize_absolute(&root).ok_or_else(|| StorageError::RelativeLocalPath {
                    url,
                    path: root.clone(),
                })?;
            canonical.push(std::fs::canonicalize(&normal).unwrap_or(normal));
        }
        Ok(Self { roots: canonical })
    }

    /// The roots, canonical where they exist.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Resolves `path` (absolute, no `..`) through the symlinks of its existing part and
    /// returns where it really points, or `None` if that is outside every root. Blocking: call
    /// from `spawn_blocking`.
    pub fn resolve_inside(&self, url: &str, path: &Path) -> Result<Option<PathBuf>, StorageError> {
        let normal = normalize_absolute(path).ok_or_else(|| {
            if path.is_absolute() {
                StorageError::ParentSegment {
                    url: url.to_owned(),
                }
            } else {
                StorageError::RelativeLocalPath {
                    url: url.to_owned(),
                    path: path.to_owned(),
                }
            }
        })?;
        let resolved = match resolve_existing_prefix(&normal) {
            Ok(resolved) => resolved,
            Err(PrefixError::DanglingSymlink) => return Ok(None),
            Err(PrefixError::Io(source)) => return Err(StorageError::io(normal, source)),
        };
        Ok(self.contains(&resolved).then_some(resolved))
    }

    /// Whether an already resolved path lies inside (or is) one of the roots.
    pub fn contains(&self, resolved: &Path) -> bool {
        self.roots.iter().any(|root| resolved.starts_with(root))
    }
}

enum PrefixError {
    DanglingSymlink,
    Io(std::io::Error),
}

/// How often a path that appears between two looks (another upload creating the same
/// directory) is looked at again before giving up.
const APPEARING_RETRIES: u32 = 3;

/// Canonicalises the longest existing ancestor of `path` and appends the rest unchanged.
///
/// Uploads into one directory run concurrently, so a directory missing when canonicalised may
/// exist a moment later: that is looked at again, and only a symlink whose target is still
/// missing counts as dangling.
fn resolve_existing_prefix(path: &Path) -> Result<PathBuf, PrefixError> {
    let mut existing = path.to_path_buf();
    let mut tail = Vec::new();
    let mut retries = 0;
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut resolved) => {
                resolved.extend(tail.iter().rev());
                return Ok(resolved);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Ok(meta) = std::fs::symlink_metadata(&existing) {
                    if retries >= APPEARING_RETRIES {
                        return Err(if meta.file_type().is_symlink() {
                            PrefixError::DanglingSymlink
                        } else {
                            PrefixError::Io(error)
                        });
                    }
                    retries += 1;
                    continue;
                }
                let Some(name) = existing.file_name().map(|name| name.to_owned()) else {
                    return Err(PrefixError::Io(error));
                };
                tail.push(name);
                existing.pop();
            }
            Err(error) => return Err(PrefixError::Io(error)),
        }
    }
}

/// Checks a task's container-side `path` against the container directory `mount` it must stay
/// in, and returns the part below the mount (empty when `path` is the mount). Pure: no IO.
///
/// Both must be absolute; neither may hold `..`; `.` and repeated `/` are ignored.
pub fn container_path_below_mount(path: &str, mount: &str) -> Result<PathBuf, StorageError> {
    let refuse = |reason| StorageError::ContainerPath {
        path: path.to_owned(),
        mount: mount.to_owned(),
        reason,
    };
    if !path.starts_with('/') || !mount.starts_with('/') {
        return Err(refuse("both must be absolute"));
    }
    if has_parent_segment(path) || has_parent_segment(mount) {
        return Err(refuse("`..` is not allowed"));
    }
    let segments = |raw: &str| -> Vec<String> {
        raw.split('/')
            .filter(|segment| !segment.is_empty() && *segment != ".")
            .map(str::to_owned)
            .collect()
    };
    let path_segments = segments(path);
    let mount_segments = segments(mount);
    if !path_segments.starts_with(&mount_segments) {
        return Err(refuse("the path leaves its mount"));
    }
    Ok(path_segments[mount_segments.len()..].iter().collect())
}

/// Maps a container path inside `mount` to the host path below `host_dir`, the directory bound
/// at `mount`. Pure: no IO.
pub fn host_path_for(path: &str, mount: &str, host_dir: &Path) -> Result<PathBuf, StorageError> {
    let below = container_path_below_mount(path, mount)?;
    Ok(host_dir.join(below))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_segments_are_found_in_every_spelling() {
        assert!(has_parent_segment("s3://b/a/../c"));
        assert!(has_parent_segment("file:///a/%2E%2e/etc"));
        assert!(has_parent_segment("/a/.."));
        assert!(!has_parent_segment("s3://b/a..b/c"));
        assert!(!has_parent_segment("/a/./b"));
    }

    #[test]
    fn normalize_absolute_drops_dots_and_refuses_parents() {
        assert_eq!(
            normalize_absolute(Path::new("/a/./b//c")),
            Some(PathBuf::from("/a/b/c"))
        );
        assert_eq!(normalize_absolute(Path::new("/a/../b")), None);
        assert_eq!(normalize_absolute(Path::new("a/b")), None);
    }

    #[test]
    fn container_paths_must_stay_inside_their_mount() {
        assert_eq!(
            container_path_below_mount("/pfs/out/a/b.txt", "/pfs/out").ok(),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(
            container_path_below_mount("/pfs/out/", "/pfs/out").ok(),
            Some(PathBuf::new())
        );
        assert_eq!(
            container_path_below_mount("//pfs/./out/x", "/pfs/out/").ok(),
            Some(PathBuf::from("x"))
        );
        assert!(container_path_below_mount("/pfs/outside", "/pfs/out").is_err());
        assert!(container_path_below_mount("/pfs/out/../etc", "/pfs/out").is_err());
        assert!(container_path_below_mount("pfs/out/x", "/pfs/out").is_err());
        assert!(container_path_below_mount("/etc/passwd", "/").is_ok());
    }

    #[test]
    fn host_path_for_joins_below_the_host_dir() {
        let host = host_path_for("/data/in/x.txt", "/data", Path::new("/work/a1/data"));
        assert_eq!(host.ok(), Some(PathBuf::from("/work/a1/data/in/x.txt")));
    }

    #[test]
    fn symlink_escapes_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), b"x")?;
        std::os::unix::fs::symlink(outside.path(), root.path().join("link"))?;
        std::os::unix::fs::symlink("/nonexistent/target", root.path().join("dangling"))?;
        let roots = LocalRoots::new([root.path().to_path_buf()])?;
        let inside = roots.resolve_inside("u", &root.path().join("new/file"))?;
        assert!(inside.is_some());
        assert!(
            roots
                .resolve_inside("u", &root.path().join("link/secret"))?
                .is_none()
        );
        assert!(
            roots
                .resolve_inside("u", &root.path().join("dangling"))?
                .is_none()
        );
        assert!(
            roots
                .resolve_inside("u", &outside.path().join("secret"))?
                .is_none()
        );
        assert!(
            roots
                .resolve_inside("u", &root.path().join("a/../b"))
                .is_err()
        );
        Ok(())
    }

    /// Uploads into one new directory run at once: one creates the directory while another
    /// resolves a file in it. Seen between two looks, the fresh directory is not a dangling
    /// symlink, so the upload stays inside its root.
    #[test]
    fn a_directory_created_concurrently_is_not_an_escape() -> Result<(), Box<dyn std::error::Error>>
    {
        let root = tempfile::tempdir()?;
        let roots = LocalRoots::new([root.path().to_path_buf()])?;
        for round in 0..200 {
            let dir = root.path().join(format!("round{round}/sub"));
            let results: Vec<_> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|worker| {
                        let (dir, roots) = (&dir, &roots);
                        scope.spawn(move || {
                            if worker % 2 == 0 {
                                std::fs::create_dir_all(dir).ok();
                            }
                            roots
                                .resolve_inside("u", &dir.join(format!("f{worker}")))
                                .map(|resolved| resolved.is_some())
                                .unwrap_or(false)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or(false))
                    .collect()
            });
            assert!(
                results.iter().all(|inside| *inside),
                "round {round}: {results:?}"
            );
        }
        Ok(())
    }
}
