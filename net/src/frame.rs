//! Length-prefixed frames: a u32 big-endian length, then that many bytes.
//!
//! Decoding is a pure function over a byte buffer: an incomplete frame is `Ok(None)`
//! (read more), a frame longer than the limit is an error (the peer is dropped).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Takes one complete frame's payload off the front of `buf`, or `Ok(None)` if `buf`
/// does not hold a whole frame yet (nothing is consumed then).
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < HEADER_LEN + len {
        // Reserve once for the rest, bounded by the limit just checked.
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Appends `payload` as one frame to `out`. `payload` must not exceed `u32::MAX` bytes
/// (callers enforce far smaller limits).
pub fn encode(payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + payload.len());
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_input() {
        let mut out = BytesMut::new();
        encode(b"hello", &mut out);
        encode(b"", &mut out);
        let all = out.clone();
        for cut in 0..all.len() {
            let mut partial = BytesMut::from(&all[..cut]);
            let first = decode(&mut partial, 100).unwrap();
            if cut < 9 {
                assert_eq!(first, None, "cut {cut}");
                assert_eq!(partial.len(), cut, "nothing consumed");
            } else {
                assert_eq!(first.as_deref(), Some(&b"hello"[..]));
            }
        }
        let mut buf = all;
        assert_eq!(
            decode(&mut buf, 100).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(decode(&mut buf, 100).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(decode(&mut buf, 100).unwrap(), None);
    }

    #[test]
    fn oversize_is_an_error_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0, 0, 1, 0][..]);
        assert_eq!(
            decode(&mut buf, 255),
            Err(FrameError::TooLarge { len: 256, max: 255 })
        );
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut huge, 1 << 20).is_err());
    }
}
