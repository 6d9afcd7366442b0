//! Frame and message decoding: any bytes give frames or a clean error, and any frame
//! payload gives a message or a clean error. Never a panic, never an unbounded buffer.
#![no_main]

use bytes::BytesMut;
use grapevine_net::frame;
use grapevine_net::message::{MAX_FRAME, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode(&mut buf, MAX_FRAME) {
        if let Ok(m) = Message::decode(&f) {
            // What decodes re-encodes to the same bytes (the encoding is canonical).
            assert_eq!(m.encode(), f.to_vec());
        }
    }
    let _ = Message::decode(data);
});
