//! The one place that turns replicated and stored values into bytes and back.
//!
//! Everything shoal persists (log entries, vote, state rows, snapshot records) and everything
//! it sends between nodes goes through [`encode`] and [`decode`]: serde + bincode 2 with a
//! leading format byte, so a change of format is made here and nowhere else.
//!
//! Versions (ARCHITECTURE.md, "How a cluster is upgraded"): a build reads every format from
//! [`FORMAT_VERSION_MIN`] to [`FORMAT_VERSION`], and writes the format the cluster runs
//! ([`write_version`]), which the replicated state holds and which moves up only once every
//! member reads the newer one. Formats from one to the next only add enum variants at the
//! end (new commands, requests, rows), never change a type's shape, so a newer build decodes
//! an older record as it is, and an older build decodes a newer one as long as it uses none
//! of what was added; the format byte tells an older build plainly when that is not so.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The newest format this build reads and writes. Format 5 added `Command::SetFormat`
/// (and the `format` row) and `Request::Formats`; format 6 lets a `ClaimBatch` end a
/// `Command::Batch` (`Command::may_end_batch`), a change of meaning, not of shape.
pub const FORMAT_VERSION: u8 = 6;
/// The oldest format this build reads, and writes while its cluster runs it.
pub const FORMAT_VERSION_MIN: u8 = 4;

/// Test-only: lowers the newest format this build claims, so a test can run this binary as
/// the previous version (`SHOAL_TEST_FORMAT_VERSION_MAX=4`).
const MAX_OVERRIDE_ENV: &str = "SHOAL_TEST_FORMAT_VERSION_MAX";

/// The format records are written in: the cluster's (see [`set_write_version`]).
static WRITE_VERSION: AtomicU8 = AtomicU8::new(FORMAT_VERSION_MIN);

/// The newest format this process reads and writes: [`FORMAT_VERSION`], unless lowered
/// for a test.
pub fn max_version() -> u8 {
    static MAX: OnceLock<u8> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(MAX_OVERRIDE_ENV)
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|v| (FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(v))
            .unwrap_or(FORMAT_VERSION)
    })
}

/// The format [`encode`] writes now.
pub fn write_version() -> u8 {
    WRITE_VERSION.load(Ordering::Relaxed)
}

/// Sets the format [`encode`] writes: the one the cluster runs, as this node's applied
/// state says (kept within what this process reads).
pub fn set_write_version(version: u8) {
    let version = version.clamp(FORMAT_VERSION_MIN, max_version());
    WRITE_VERSION.store(version, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("empty record")]
    Empty,
    #[error(
        "record has format version {found}, this build reads versions {FORMAT_VERSION_MIN} \
         to {}",
        max_version()
    )]
    Version { found: u8 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Room a new record starts with: most rows and entries fit, so encoding does not grow the
/// buffer step by step.
const RECORD_BYTES_INITIAL: usize = 512;

/// Encodes `value` with the format byte in front, in the format the cluster runs.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(write_version(), value)
}

/// Encodes `value` marked as format `version`: for a value whose shape is the same in every
/// format read (what a node of an older build must understand, e.g. `Hello`).
pub fn encode_as<T: Serialize + ?Sized>(version: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(RECORD_BYTES_INITIAL);
    encode_into(version, value, &mut bytes)?;
    Ok(bytes)
}

/// Appends what [`encode_as`] would produce to `bytes` (e.g. behind a frame's length);
/// returns how many bytes it appended.
pub fn encode_into<T: Serialize + ?Sized>(
    version: u8,
    value: &T,
    bytes: &mut Vec<u8>,
) -> Result<usize, CodecError> {
    let start = bytes.len();
    bytes.push(version);
    bincode::serde::encode_into_std_write(value, bytes, config())?;
    Ok(bytes.len() - start)
}

/// How many bytes [`encode`] would produce for `value`, without keeping them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    Ok(1 + bincode::serde::encode_into_std_write(value, &mut std::io::sink(), config())?)
}

/// Whether this process reads records of format `version`.
pub fn reads(version: u8) -> bool {
    (FORMAT_VERSION_MIN..=max_version()).contains(&version)
}

/// Decodes a record written by [`encode`], refusing formats this build does not read.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if !reads(version) {
        return Err(CodecError::Version { found: version });
    }
    let (value, _) = bincode::serde::decode_from_slice(body, config())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_value_and_rejects_other_versions() {
        let bytes = encode(&("datum", 7_u64)).expect("encode");
        assert_eq!(encoded_len(&("datum", 7_u64)).expect("length"), bytes.len());
        let back: (String, u64) = decode(&bytes).expect("decode");
        assert_eq!(back, ("datum".to_string(), 7));

        for other in [FORMAT_VERSION_MIN - 1, FORMAT_VERSION + 1] {
            let mut other_format = bytes.clone();
            other_format[0] = other;
            assert!(matches!(
                decode::<(String, u64)>(&other_format),
                Err(CodecError::Version { .. })
            ));
        }
        let mut older = bytes.clone();
        older[0] = FORMAT_VERSION_MIN;
        assert_eq!(
            decode::<(String, u64)>(&older).expect("an older format reads"),
            ("datum".to_string(), 7)
        );
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
