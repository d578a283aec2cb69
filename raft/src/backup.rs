//! Backups of the replicated state (`shoal cluster backup`) and restoring one as the start of
//! a new cluster (`shoal node --restore`).
//!
//! A backup file is:
//! - the magic line `shoal backup\n`, the backup layout version (u32, big-endian) and the
//!   format version it was written in ([`codec::write_version`], one byte);
//! - a header record (key `header`): the cluster id, the log id the state was read at, when,
//!   and by which shoal version;
//! - every state row as a record (key, value), in key order, as a snapshot holds them;
//! - a trailer record with an empty key (no row has one): the row count (u64, big-endian)
//!   and the SHA-256 of every byte before the trailer.
//!
//! The trailer makes a truncated or corrupted file an error, never a smaller state. Records
//! are the snapshot files' (two length-prefixed parts).
//!
//! Restoring reads and checks the whole file, then writes the state into a fresh data dir's
//! `state.redb` as the state of a new cluster ([`State::restore_as`]), marked as a restore in
//! progress; the node then forms a cluster of itself alone, snapshots and purges its log, and
//! only then lets other nodes join, so they receive the restored rows in that snapshot
//! (`Cluster::start_with`).

use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::snapshot_files::{read_record, write_record};
use crate::state::{Restored, State};

/// The first bytes of every backup file.
pub const MAGIC: &[u8] = b"shoal backup\n";
/// The layout of the file around the rows (changes when this module's layout does).
pub const BACKUP_VERSION: u32 = 1;
const HEADER_KEY: &[u8] = b"header";
/// Bytes of the trailer's value: the row count and a SHA-256.
const TRAILER_BYTES: usize = 8 + 32;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub cluster_id: Option<String>,
    /// The last log entry the state holds: (term, index).
    pub last_log: Option<(u64, u64)>,
    pub created_ms: u64,
    /// The shoal version that wrote it.
    pub shoal_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot read the state: {0}")]
    Store(String),
    #[error("not a shoal backup: {0}")]
    Invalid(String),
    #[error(
        "the backup was written in format {found}; this shoal reads formats {} to {}",
        codec::FORMAT_VERSION_MIN,
        codec::max_version()
    )]
    Format { found: u8 },
}

/// Counts and hashes every byte written through it.
struct Hashing<W> {
    out: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a backup record by record.
pub struct BackupWriter<W: Write> {
    out: Hashing<W>,
    rows: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the magic, the versions and `header`.
    pub fn start(out: W, header: &BackupHeader) -> Result<BackupWriter<W>, BackupError> {
        let mut out = Hashing {
            out,
            hasher: Sha256::new(),
            bytes: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&BACKUP_VERSION.to_be_bytes())?;
        out.write_all(&[codec::write_version()])?;
        let header = codec::encode(header).map_err(|e| BackupError::Invalid(e.to_string()))?;
        write_record(&mut out, HEADER_KEY, &header)?;
        Ok(BackupWriter { out, rows: 0 })
    }

    /// Writes one state row as stored.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        if key.is_empty() {
            return Err(BackupError::Invalid("a state row with an empty key".into()));
        }
        write_record(&mut self.out, key, value)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the trailer and flushes; returns the output, the rows and the bytes written.
    pub fn finish(self) -> Result<(W, u64, u64), BackupError> {
        let Hashing {
            mut out,
            hasher,
            bytes,
        } = self.out;
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&self.rows.to_be_bytes());
        trailer.extend_from_slice(&hasher.finalize());
        let mut end = Vec::with_capacity(8 + TRAILER_BYTES);
        write_record(&mut end, &[], &trailer)?;
        out.write_all(&end)?;
        out.flush()?;
        Ok((out, self.rows, bytes + end.len() as u64))
    }
}

/// A backup read whole and checked.
#[derive(Debug)]
pub struct Backup {
    pub header: BackupHeader,
    pub state: State,
    pub rows: u64,
}

/// Counts and hashes every byte read through it.
struct Reading<R> {
    input: R,
    hasher: Sha256,
}

impl<R: Read> Read for Reading<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.input.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// A record as read: key and value.
type Record = (Vec<u8>, Vec<u8>);

/// The next record; `None` at a clean end of the input.
fn next_record(input: &mut impl Read) -> Result<Option<Record>, BackupError> {
    read_record(input).map_err(|e| {
        BackupError::Invalid(format!(
            "a record is cut short or damaged (truncated?): {e}"
        ))
    })
}

/// Reads a backup, checking its versions, every row and its trailer; the input must end
/// right after the trailer.
pub fn read_backup(input: impl Read) -> Result<Backup, BackupError> {
    let mut input = Reading {
        input,
        hasher: Sha256::new(),
    };
    let invalid = |what: &str| BackupError::Invalid(what.to_string());
    let mut magic = vec![0_u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| invalid("the file is shorter than the magic line"))?;
    if magic != MAGIC {
        return Err(invalid("it does not start with \"shoal backup\""));
    }
    let mut versions = [0_u8; 5];
    input
        .read_exact(&mut versions)
        .map_err(|_| invalid("the file ends inside its versions"))?;
    let backup_version = u32::from_be_bytes([versions[0], versions[1], versions[2], versions[3]]);
    if backup_version != BACKUP_VERSION {
        return Err(BackupError::Invalid(format!(
            "backup layout version {backup_version}; this shoal reads version {BACKUP_VERSION}"
        )));
    }
    if !codec::reads(versions[4]) {
        return Err(BackupError::Format { found: versions[4] });
    }
    let header = match next_record(&mut input)? {
        Some((key, value)) if key == HEADER_KEY => codec::decode::<BackupHeader>(&value)
            .map_err(|e| BackupError::Invalid(format!("its header: {e}")))?,
        _ => return Err(invalid("its header is missing")),
    };
    let mut state = State::default();
    let mut rows = 0_u64;
    loop {
        // The hash covers everything before the trailer record.
        let hashed = input.hasher.clone().finalize();
        let Some((key, value)) = next_record(&mut input)? else {
            return Err(invalid("it ends before its trailer (truncated)"));
        };
        if key.is_empty() {
            if value.len() != TRAILER_BYTES {
                return Err(invalid("its trailer has the wrong length"));
            }
            let (count, digest) = value.split_at(8);
            let count = u64::from_be_bytes(count.try_into().map_err(|_| invalid("trailer"))?);
            if count != rows {
                return Err(BackupError::Invalid(format!(
                    "its trailer counts {count} rows, the file holds {rows}"
                )));
            }
            if digest != hashed.as_slice() {
                return Err(invalid("its checksum does not match (corrupted)"));
            }
            break;
        }
        state
            .load_row(&key, &value)
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        rows += 1;
    }
    if input.read(&mut [0_u8; 1])? != 0 {
        return Err(invalid("it has bytes after its trailer"));
    }
    state.rebuild_indexes();
    Ok(Backup {
        header,
        state,
        rows,
    })
}

/// What restoring a backup did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub header: BackupHeader,
    pub new_cluster_id: String,
    pub jobs: usize,
    pub datums: usize,
    pub restored: Restored,
}

/// Writes the backup at `backup_path` into `data_dir` as the state of a new cluster whose
/// first node is the data dir's own (`node.key`, made when missing). The data dir must hold
/// no node state yet; nothing is written unless the whole backup reads back correctly.
pub fn restore(data_dir: &Path, backup_path: &Path) -> Result<RestoreSummary, String> {
    for store in ["raft-log.redb", "state.redb"] {
        let path = data_dir.join(store);
        if path.exists() {
            return Err(format!(
                "{} exists: restore into an empty data dir (a restore already under way \
                 goes on when the node starts without --restore)",
                path.display()
            ));
        }
    }
    let file = std::fs::File::open(backup_path)
        .map_err(|e| format!("cannot open {}: {e}", backup_path.display()))?;
    let Backup {
        header, mut state, ..
    } = read_backup(io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", backup_path.display()))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let keypair = crate::cluster::load_or_create_keypair(&data_dir.join("node.key"))
        .map_err(|e| e.to_string())?;
    let node_id = crate::types::node_id_of(&keypair.public().to_peer_id());
    let new_cluster_id = crate::cluster::new_cluster_id(node_id);
    let restored = state.restore_as(new_cluster_id.clone(), node_id);
    crate::state_store::write_restored(&data_dir.join("state.redb"), &state)?;
    Ok(RestoreSummary {
        header,
        new_cluster_id,
        jobs: state.jobs.len(),
        datums: state.datums.len(),
        restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, NodeInfo, Proposal};

    fn sample_state() -> State {
        let mut state = State::default();
        let commands = [
            Command::InitCluster {
                cluster_id: "c1".into(),
            },
            Command::RegisterNode {
                node_id: 7,
                info: NodeInfo {
                    name: "n7".into(),
                    peer_id: "p7".into(),
                    http_url: String::new(),
                    p2p_addrs: Vec::new(),
                    slots: 1,
                    executor: "process".into(),
                    capacity: crate::job::Capacity {
                        cpu_millis: 1000,
                        ram_bytes: 1 << 30,
                    },
                },
            },
        ];
        for (index, command) in commands.into_iter().enumerate() {
            state.apply(
                index as u64 + 1,
                &Proposal {
                    time_ms: 5,
                    command,
                },
            );
        }
        state.take_dirty();
        state
    }

    fn backup_of(state: &State) -> Vec<u8> {
        let header = BackupHeader {
            cluster_id: state.cluster_id.clone(),
            last_log: Some((1, 2)),
            created_ms: 9,
            shoal_version: "test".into(),
        };
        let mut writer = BackupWriter::start(Vec::new(), &header).expect("start");
        for key in state.row_keys() {
            let value = state.row(key).expect("encodes").expect("exists");
            writer.row(&key.to_bytes(), &value).expect("row");
        }
        let (bytes, rows, written) = writer.finish().expect("finish");
        assert_eq!(rows, 3, "cluster id, node, clock");
        assert_eq!(written, bytes.len() as u64);
        bytes
    }

    fn refusal(bytes: &[u8]) -> String {
        read_backup(bytes)
            .expect_err("a damaged backup is refused")
            .to_string()
    }

    #[test]
    fn a_backup_reads_back_as_the_same_state() {
        let state = sample_state();
        let backup = read_backup(backup_of(&state).as_slice()).expect("reads");
        assert_eq!(backup.state, state);
        assert_eq!(backup.rows, 3);
        assert_eq!(backup.header.cluster_id.as_deref(), Some("c1"));
        assert_eq!(backup.header.last_log, Some((1, 2)));
    }

    #[test]
    fn a_truncated_corrupted_or_foreign_backup_is_refused_saying_why() {
        let bytes = backup_of(&sample_state());
        for cut in [0, 5, MAGIC.len() + 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_backup(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for cut in [bytes.len() - 8 - TRAILER_BYTES, bytes.len() - 1] {
            assert!(refusal(&bytes[..cut]).contains("truncated"), "cut at {cut}");
        }

        let mut flipped = bytes.clone();
        let middle = bytes.len() - 50;
        flipped[middle] ^= 0x01;
        assert!(read_backup(flipped.as_slice()).is_err());

        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refusal(&longer).contains("after its trailer"));

        assert!(refusal(b"PK\x03\x04 a zip file, say").contains("shoal backup"));

        let mut other_format = bytes.clone();
        other_format[MAGIC.len() + 4] = codec::FORMAT_VERSION + 1;
        assert!(refusal(&other_format).contains("written in format"));
    }
}
