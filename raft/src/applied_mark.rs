//! `applied.mark`: the id of the last entry this node has applied, made durable with one
//! small write and `fdatasync` after every applied batch, so that state-machine applies need
//! no redb commit of their own (ARCHITECTURE.md, "Cheap applies and the applied mark").
//!
//! Two slots in separate sectors take turns, each with a sequence number and a checksum: a
//! write torn by a power loss spoils at most the slot it was writing, and the other still
//! holds the mark before it.

use std::io;

use openraft::CommittedLeaderId;

use crate::types::LogId;

/// Bytes of one slot's record: magic, sequence, term, leader node, index, checksum.
const RECORD_BYTES: usize = 48;
/// Where each slot starts: one sector apart, so a torn write spoils only its own.
const SLOT_OFFSETS: [u64; 2] = [0, 512];
const MAGIC: &[u8; 8] = b"SHOALMK1";
/// The file's length: both slots.
const FILE_BYTES: u64 = 1024;

/// The mark file of one node's life, on a storage backend (a file, or the simulation's
/// disk).
#[derive(Debug)]
pub struct AppliedMark {
    backend: Box<dyn redb::StorageBackend>,
    /// The sequence number of the newest record written or found.
    seq: u64,
}

/// FNV-1a, 64 bits: enough to tell a torn or never-written slot from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn encode(seq: u64, applied: &LogId) -> [u8; RECORD_BYTES] {
    let mut record = [0_u8; RECORD_BYTES];
    record[..8].copy_from_slice(MAGIC);
    let fields = [
        seq,
        applied.leader_id.term,
        applied.leader_id.node_id,
        applied.index,
    ];
    for (at, field) in fields.iter().enumerate() {
        record[8 + at * 8..16 + at * 8].copy_from_slice(&field.to_le_bytes());
    }
    let sum = checksum(&record[..40]);
    record[40..].copy_from_slice(&sum.to_le_bytes());
    record
}

/// `(seq, applied)` when `record` is whole.
fn decode(record: &[u8; RECORD_BYTES]) -> Option<(u64, LogId)> {
    let field = |at: usize| {
        let mut bytes = [0_u8; 8];
        bytes.copy_from_slice(&record[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    if &record[..8] != MAGIC || field(40) != checksum(&record[..40]) {
        return None;
    }
    let applied = LogId::new(CommittedLeaderId::new(field(16), field(24)), field(32));
    Some((field(8), applied))
}

impl AppliedMark {
    /// Opens the mark on `backend` and reads it: the newest whole record's log id, if any.
    pub fn open(backend: impl redb::StorageBackend) -> io::Result<(AppliedMark, Option<LogId>)> {
        let len = backend.len()?;
        let mut newest: Option<(u64, LogId)> = None;
        for offset in SLOT_OFFSETS {
            if offset + RECORD_BYTES as u64 > len {
                continue;
            }
            let mut record = [0_u8; RECORD_BYTES];
            backend.read(offset, &mut record)?;
            if let Some(found) = decode(&record)
                && newest.is_none_or(|(seq, _)| found.0 > seq)
            {
                newest = Some(found);
            }
        }
        if len < FILE_BYTES {
            backend.set_len(FILE_BYTES)?;
        }
        let mark = AppliedMark {
            backend: Box::new(backend),
            seq: newest.map_or(0, |(seq, _)| seq),
        };
        Ok((mark, newest.map(|(_, applied)| applied)))
    }

    /// Durably records `applied` as the last applied entry, in the slot not holding the
    /// newest record.
    pub fn write(&mut self, applied: &LogId) -> io::Result<()> {
        let seq = self.seq + 1;
        let offset = SLOT_OFFSETS[(seq % 2) as usize];
        self.backend.write(offset, &encode(seq, applied))?;
        self.backend.sync_data()?;
        self.seq = seq;
        Ok(())
    }

    /// Forgets every mark (the log it spoke of is gone): both slots zeroed, durably.
    pub fn clear(&mut self) -> io::Result<()> {
        for offset in SLOT_OFFSETS {
            self.backend.write(offset, &[0; RECORD_BYTES])?;
        }
        self.backend.sync_data()?;
        self.seq = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 7), index)
    }

    #[test]
    fn the_newest_whole_record_is_read_back_and_a_torn_one_is_passed_over() -> io::Result<()> {
        let backend = std::sync::Arc::new(InMemoryBackend::new());
        let shared = Shared(backend.clone());
        let (mut mark, found) = AppliedMark::open(shared.clone())?;
        assert_eq!(found, None);
        mark.write(&id(1, 5))?;
        mark.write(&id(2, 9))?;
        assert_eq!(AppliedMark::open(shared.clone())?.1, Some(id(2, 9)));
        // The next write, torn: the slot it went to holds half a record.
        let (mut mark, _) = AppliedMark::open(shared.clone())?;
        mark.write(&id(2, 12))?;
        backend.write(SLOT_OFFSETS[1] + 20, &[0xff; 4])?;
        assert_eq!(AppliedMark::open(shared.clone())?.1, Some(id(2, 9)));
        let (mut mark, _) = AppliedMark::open(shared.clone())?;
        mark.clear()?;
        assert_eq!(AppliedMark::open(shared)?.1, None);
        Ok(())
    }

    /// An in-memory backend the test can look at while a mark holds it.
    #[derive(Debug, Clone)]
    struct Shared(std::sync::Arc<InMemoryBackend>);

    impl StorageBackend for Shared {
        fn len(&self) -> Result<u64, io::Error> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.0.write(offset, data)
        }
    }
}
