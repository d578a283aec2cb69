//! The one place that turns replicated and stored values into bytes and back.
//!
//! Everything shoal persists (log entries, vote, state rows, snapshot records) and everything
//! it sends between nodes goes through [`encode`] and [`decode`]: serde + bincode 2 with a
//! leading format byte, so a change of format is made here and nowhere else.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bumped whenever a persisted or replicated type changes shape incompatibly.
pub const FORMAT_VERSION: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("empty record")]
    Empty,
    #[error("record has format version {found}, this build reads {FORMAT_VERSION}")]
    Version { found: u8 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Room a new record starts with: most rows and entries fit, so encoding does not grow the
/// buffer step by step.
const RECORD_BYTES_INITIAL: usize = 512;

/// Encodes `value` with the format byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(RECORD_BYTES_INITIAL);
    bytes.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut bytes, config())?;
    Ok(bytes)
}

/// How many bytes [`encode`] would produce for `value`, without keeping them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    Ok(1 + bincode::serde::encode_into_std_write(value, &mut std::io::sink(), config())?)
}

/// Decodes a record written by [`encode`], refusing other format versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
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

        let mut future = bytes.clone();
        future[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            decode::<(String, u64)>(&future),
            Err(CodecError::Version { .. })
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
