//! What happened in one simulated run: every event and every message delivered, folded into
//! a hash (two runs of one seed must give the same hash, bit for bit), and kept as lines
//! when asked for (`shoal-sim --seed N --trace`).

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

struct Inner {
    origin: tokio::time::Instant,
    hasher: Sha256,
    lines: Option<Vec<String>>,
    messages: u64,
}

/// Cheap to clone; every clone records into the same trace.
#[derive(Clone)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Trace {
    /// A trace starting now (simulated time); `keep_lines` keeps every line for printing.
    pub fn new(keep_lines: bool) -> Trace {
        let inner = Inner {
            origin: tokio::time::Instant::now(),
            hasher: Sha256::new(),
            lines: keep_lines.then(Vec::new),
            messages: 0,
        };
        Trace {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds of simulated time since the run began.
    pub fn now_ms(&self) -> u64 {
        self.lock().origin.elapsed().as_millis() as u64
    }

    /// Records an event.
    pub fn event(&self, line: impl AsRef<str>) {
        let mut inner = self.lock();
        let at = inner.origin.elapsed().as_millis();
        let line = format!("{at:>7} {}", line.as_ref());
        inner.hasher.update(line.as_bytes());
        inner.hasher.update(b"\n");
        if let Some(lines) = inner.lines.as_mut() {
            lines.push(line);
        }
    }

    /// Records a message delivered from node `from` to node `to`.
    pub fn message(&self, from: usize, to: usize, kind: &str) {
        let mut inner = self.lock();
        let at = inner.origin.elapsed().as_micros() as u64;
        inner.messages += 1;
        inner.hasher.update(at.to_be_bytes());
        inner.hasher.update([from as u8, to as u8]);
        inner.hasher.update(kind.as_bytes());
        if let Some(lines) = inner.lines.as_mut() {
            lines.push(format!("{:>7} n{from} -> n{to} {kind}", at / 1000));
        }
    }

    pub fn messages(&self) -> u64 {
        self.lock().messages
    }

    /// The hash of everything recorded so far, in hex.
    pub fn hash(&self) -> String {
        let digest = self.lock().hasher.clone().finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The recorded lines (empty unless kept).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone().unwrap_or_default()
    }
}
