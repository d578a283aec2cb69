//! A bounded buffer keeping the last bytes of an output stream.

/// Keeps at most the last `max` bytes written to it (amortised: trims when twice as full).
pub struct Tail {
    bytes: Vec<u8>,
    max: usize,
}

impl Tail {
    pub fn new(max: usize) -> Tail {
        Tail {
            bytes: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.max.saturating_mul(2).max(4096) {
            let cut = self.bytes.len() - self.max;
            self.bytes.drain(..cut);
        }
    }

    /// The kept bytes as text (invalid UTF-8 replaced).
    pub fn into_string(self) -> String {
        self.text()
    }

    /// The kept bytes so far as text.
    pub fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(self.max);
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Tail;

    #[test]
    fn only_the_last_bytes_are_kept() {
        let mut tail = Tail::new(10);
        for _ in 0..1000 {
            tail.push(b"0123456789abcdef");
        }
        tail.push(b"\nhello\n");
        let text = tail.into_string();
        assert_eq!(text.len(), 10);
        assert!(text.ends_with("\nhello\n"), "{text:?}");
    }
}
