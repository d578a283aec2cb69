//! A simulated disk for redb: what was written since the last `sync_data` is lost when the
//! machine crashes, and kept when only the process dies (the page cache survives a kill -9).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Contents {
    /// What survives a machine crash.
    durable: Vec<u8>,
    durable_len: u64,
    /// Writes since the last sync, by offset (later writes overwrite earlier ones).
    pending: BTreeMap<u64, Vec<u8>>,
    /// Length as the process sees it.
    len: u64,
    /// Bumped by every crash: handles of an older life fail every call.
    life: u64,
}

impl Contents {
    fn apply_pending(&mut self) {
        self.durable.resize(self.len as usize, 0);
        for (offset, data) in std::mem::take(&mut self.pending) {
            let start = offset as usize;
            let end = (start + data.len()).min(self.durable.len());
            if start < end {
                self.durable[start..end].copy_from_slice(&data[..end - start]);
            }
        }
        self.durable_len = self.len;
    }
}

/// One file of a simulated node; survives its node's crashes.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    contents: Arc<Mutex<Contents>>,
}

fn lock(contents: &Mutex<Contents>) -> std::sync::MutexGuard<'_, Contents> {
    contents.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimDisk {
    /// A backend for the database of the node's current life.
    pub fn backend(&self) -> DiskBackend {
        DiskBackend {
            contents: self.contents.clone(),
            life: lock(&self.contents).life,
        }
    }

    /// The node crashed: with `machine`, what was not synced is lost; either way, handles of
    /// the life that ended fail from now on.
    pub fn crash(&self, machine: bool) {
        let mut contents = lock(&self.contents);
        contents.life += 1;
        if machine {
            contents.pending.clear();
            contents.len = contents.durable_len;
        } else {
            contents.apply_pending();
        }
    }
}

/// redb's view of a [`SimDisk`] for one life of its node.
#[derive(Debug)]
pub struct DiskBackend {
    contents: Arc<Mutex<Contents>>,
    life: u64,
}

impl DiskBackend {
    fn current(&self) -> io::Result<std::sync::MutexGuard<'_, Contents>> {
        let contents = lock(&self.contents);
        if contents.life != self.life {
            return Err(io::Error::other("the node crashed"));
        }
        Ok(contents)
    }
}

impl redb::StorageBackend for DiskBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.current()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let contents = self.current()?;
        let end = offset + out.len() as u64;
        if end > contents.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.fill(0);
        let durable = contents.durable.len() as u64;
        if offset < durable {
            let upto = end.min(durable);
            out[..(upto - offset) as usize]
                .copy_from_slice(&contents.durable[offset as usize..upto as usize]);
        }
        // Pending writes never overlap (see `write`): each byte's newest value is in one.
        for (&at, data) in contents.pending.range(..end) {
            let data_end = at + data.len() as u64;
            if data_end <= offset {
                continue;
            }
            let from = offset.max(at);
            let to = end.min(data_end);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut contents = self.current()?;
        if len < contents.len {
            // Pending writes beyond the new end go, one across it is cut; the durable bytes
            // stay until the next sync (a machine crash before it restores them).
            let beyond: Vec<u64> = contents.pending.range(len..).map(|(at, _)| *at).collect();
            for at in beyond {
                contents.pending.remove(&at);
            }
            if let Some((&at, data)) = contents.pending.range_mut(..len).next_back()
                && at + data.len() as u64 > len
            {
                data.truncate((len - at) as usize);
            }
        }
        if len > contents.len && (contents.durable.len() as u64) > contents.len {
            // Growing again: bytes beyond the old length read as zeros.
            let from = contents.len;
            let zeros = vec![0; (contents.durable.len() as u64 - from) as usize];
            contents.pending.insert(from, zeros);
        }
        contents.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.current()?.apply_pending();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut contents = self.current()?;
        let end = offset + data.len() as u64;
        if end > contents.len {
            return Err(io::Error::other("write past the end"));
        }
        // Overlapping pending writes: fold this one into the map so reads stay simple (each
        // byte's newest value lives in exactly one pending write).
        let overlapping: Vec<u64> = contents
            .pending
            .range(..end)
            .filter(|(at, d)| **at + d.len() as u64 > offset)
            .map(|(at, _)| *at)
            .collect();
        let mut start = offset;
        let mut merged_end = end;
        for at in &overlapping {
            let d_end = at + contents.pending[at].len() as u64;
            start = start.min(*at);
            merged_end = merged_end.max(d_end);
        }
        let mut merged = vec![0_u8; (merged_end - start) as usize];
        for at in overlapping {
            if let Some(old) = contents.pending.remove(&at) {
                let from = (at - start) as usize;
                merged[from..from + old.len()].copy_from_slice(&old);
            }
        }
        let from = (offset - start) as usize;
        merged[from..from + data.len()].copy_from_slice(data);
        contents.pending.insert(start, merged);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::StorageBackend;

    use super::*;

    #[test]
    fn unsynced_writes_die_with_the_machine_and_survive_the_process() -> io::Result<()> {
        let disk = SimDisk::default();
        let backend = disk.backend();
        backend.set_len(8)?;
        backend.write(0, b"abcd")?;
        backend.sync_data()?;
        backend.write(2, b"XYZW")?;
        let mut out = [0_u8; 8];
        backend.read(0, &mut out)?;
        assert_eq!(&out, b"abXYZW\0\0");
        disk.crash(true);
        assert!(backend.len().is_err(), "an old life's handle fails");
        let backend = disk.backend();
        backend.read(0, &mut out)?;
        assert_eq!(&out, b"abcd\0\0\0\0");
        backend.write(6, b"ef")?;
        disk.crash(false);
        let backend = disk.backend();
        backend.read(0, &mut out)?;
        assert_eq!(&out, b"abcd\0\0ef");
        Ok(())
    }
}
