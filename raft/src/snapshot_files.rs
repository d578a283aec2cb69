//! The snapshot files under `data_dir/snapshots/` and the rules that keep them consistent
//! with the snapshot metadata in `state.redb`.
//!
//! A snapshot is written to a temporary file, fsynced, renamed to `<snapshot id>.snap` and the
//! directory fsynced, all before its metadata is committed — so committed metadata always names
//! a complete file. Publishing and reading "metadata + file" happen under one lock, because
//! openraft builds snapshots in a task of its own while the state machine may install or
//! serve one. Only a snapshot newer than the current one is published.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A snapshot record longer than this is corruption, not data.
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
const SUFFIX: &str = ".snap";

/// The snapshot directory; cheap to clone, clones share the lock.
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl SnapshotFiles {
    pub fn open(dir: &Path) -> io::Result<SnapshotFiles> {
        fs::create_dir_all(dir)?;
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// Held while metadata and file are read or changed together.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The file of the snapshot with id `snapshot_id`.
    pub fn path_of(&self, snapshot_id: &str) -> PathBuf {
        self.dir.join(format!("{snapshot_id}{SUFFIX}"))
    }

    /// A fresh temporary file name, e.g. for `kind` = "building".
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        let unique = crate::runtime::random_u64();
        self.dir.join(format!("{kind}-{unique:016x}.tmp"))
    }

    /// Renames a complete, fsynced temporary file to the snapshot's name and makes the rename
    /// durable. Call with the lock held.
    pub fn promote(&self, temp: &Path, snapshot_id: &str) -> io::Result<PathBuf> {
        let path = self.path_of(snapshot_id);
        fs::rename(temp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Removes every file but the current snapshot's (and temporaries of work in progress
    /// when `keep_temporaries`). Call with the lock held.
    pub fn remove_all_but(&self, current: Option<&str>, keep_temporaries: bool) {
        let keep = current.map(|id| format!("{id}{SUFFIX}"));
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let temporary = name.ends_with(".tmp");
            if Some(&name) == keep.as_ref() || (temporary && keep_temporaries) {
                continue;
            }
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl SnapshotFiles {
    /// Removes temporary files whose name starts with `kind` (e.g. "receiving").
    pub fn remove_temporaries(&self, kind: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(kind) && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes one row as two length-prefixed parts.
pub fn write_record(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    for part in [key, value] {
        let len = u32::try_from(part.len()).map_err(io::Error::other)?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads one length-prefixed part; `None` at a clean end of file.
fn read_part(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0_u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > RECORD_BYTES_MAX {
        return Err(io::Error::other(format!(
            "snapshot record of {len} bytes is too long"
        )));
    }
    let mut part = vec![0_u8; len];
    input.read_exact(&mut part)?;
    Ok(Some(part))
}

/// Reads one row; `None` at a clean end of file.
pub fn read_record(input: &mut impl Read) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let Some(key) = read_part(input)? else {
        return Ok(None);
    };
    let value =
        read_part(input)?.ok_or_else(|| io::Error::other("snapshot ends inside a record"))?;
    Ok(Some((key, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let mut bytes = Vec::new();
        write_record(&mut bytes, b"k1", b"value one").expect("write");
        write_record(&mut bytes, b"", b"").expect("write");
        let mut input = bytes.as_slice();
        assert_eq!(
            read_record(&mut input).expect("read"),
            Some((b"k1".to_vec(), b"value one".to_vec()))
        );
        assert_eq!(
            read_record(&mut input).expect("read"),
            Some((Vec::new(), Vec::new()))
        );
        assert_eq!(read_record(&mut input).expect("read"), None);

        let mut one = Vec::new();
        write_record(&mut one, b"key", b"value").expect("write");
        let mut cut = &one[..one.len() - 3];
        assert!(
            read_record(&mut cut).is_err(),
            "a record cut short is an error"
        );
    }

    #[test]
    fn only_the_current_snapshot_survives_cleanup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        for name in ["1-5-1.snap", "1-9-2.snap", "building-3.tmp"] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        files.remove_all_but(Some("1-9-2"), true);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into())
            .collect();
        left.sort();
        assert_eq!(left, ["1-9-2.snap", "building-3.tmp"]);
        files.remove_all_but(Some("1-9-2"), false);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
