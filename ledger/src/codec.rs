//! The one place that turns values into bytes and back.
//!
//! Every wire and disk encoding in Grapevine goes through [`encode`] and [`decode`]. The
//! format is bincode 1.3.3 with fixed-width little-endian integers (documented byte for
//! byte in `docs/PROTOCOL.md`). Decoding is bounded by an explicit size limit, rejects
//! trailing bytes and never panics, whatever the input. Swapping the serializer means
//! changing this file, and the serde of the fixed-size byte types in `crypto.rs`, which
//! pass their bytes as little-endian u64 words (the same bytes here, one call per word).

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest value [`decode`] accepts when the caller has no tighter bound: 16 MiB.
pub const DEFAULT_LIMIT: u64 = 16 * 1024 * 1024;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input is longer than the limit the caller allowed.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit that applied.
        limit: u64,
    },
    /// The bytes do not form a value of the expected type (truncated, bad tag, bad value).
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// A complete value was decoded but bytes remain after it.
    #[error("trailing bytes after a complete value")]
    TrailingBytes,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes `value` canonically. Equal values always encode to equal bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Infallible for our types: they contain no maps with non-string keys, no
    // unsized sequences, and encoding has no size limit.
    options()
        .serialize(value)
        .expect("bincode serialization of plain data types cannot fail without a limit")
}

/// Number of bytes [`encode`] produces for `value`, without allocating.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    options()
        .serialized_size(value)
        .expect("bincode size computation of plain data types cannot fail without a limit")
}

/// Decodes exactly one `T` from `bytes`, which must not exceed `limit` bytes and must not
/// hold anything after the value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    if bytes.len() as u64 > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    options()
        .with_limit(limit)
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| match *e {
            bincode::ErrorKind::Custom(ref m) if m.contains("bytes remaining") => {
                CodecError::TrailingBytes
            }
            other => CodecError::Malformed(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u64,
        b: [u8; 4],
        c: Vec<u16>,
    }

    #[test]
    fn integers_are_fixed_width_little_endian() {
        assert_eq!(encode(&0x0102_0304_0506_0708u64), [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(encode(&7u32), [7, 0, 0, 0]);
    }

    #[test]
    fn round_trip() {
        let s = Sample {
            a: 9,
            b: [1, 2, 3, 4],
            c: vec![5, 6],
        };
        let bytes = encode(&s);
        assert_eq!(bytes.len() as u64, encoded_len(&s));
        assert_eq!(decode::<Sample>(&bytes, 1024), Ok(s));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&5u64);
        bytes.push(0);
        assert_eq!(decode::<u64>(&bytes, 64), Err(CodecError::TrailingBytes));
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let bytes = vec![0u8; 100];
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 50),
            Err(CodecError::TooLarge { len: 100, .. })
        ));
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        let bytes = encode(&u64::MAX);
        assert!(matches!(
            decode::<Vec<u64>>(&bytes, 1024),
            Err(CodecError::Malformed(_))
        ));
    }
}
