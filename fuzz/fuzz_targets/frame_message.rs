//! Frame and message decoding, down to every payload nested in a message: any bytes
//! give frames or a clean error, any frame payload a message or a clean error, and the
//! payloads the node decodes further (consensus and sync messages, peer addresses)
//! decode or fail cleanly with the limits the node uses. Never a panic, never an
//! unbounded buffer.
//!
//! The nested decoders are fuzzed directly (and verified) by `consensus_decode`; here
//! they are reached the way a peer reaches them, through the frame and the message.
#![no_main]

use std::net::SocketAddr;

use bytes::BytesMut;
use grapevine_consensus::sync::SyncMsg;
use grapevine_consensus::types::ConsensusMsg;
use grapevine_ledger::codec;
use grapevine_net::frame;
use grapevine_net::message::{MAX_FRAME, Message};
use grapevine_net::network::MAX_CONSENSUS_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode(&mut buf, MAX_FRAME) {
        if let Ok(m) = Message::decode(&f) {
            // What decodes re-encodes to the same bytes (the encoding is canonical).
            assert_eq!(m.encode(), f.to_vec());
            nested(&m);
        }
    }
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode(), data);
        nested(&m);
    }
});

/// What the network actor and the node do with a message's contents before any state
/// is involved (net/src/network/actor.rs, node/src/driver/{mod,serve}.rs).
fn nested(m: &Message) {
    match m {
        Message::Peers(list) => {
            // The actor parses each address and refuses port 0.
            for s in list {
                let _ = s.parse::<SocketAddr>().map(|a| a.port() != 0);
            }
        }
        Message::Consensus(payload) => {
            // The actor drops larger ones; the driver decodes with the same limit.
            if payload.len() <= MAX_CONSENSUS_BYTES {
                if let Ok(c) = codec::decode::<ConsensusMsg>(payload, MAX_CONSENSUS_BYTES as u64)
                {
                    assert_eq!(&codec::encode(&c), payload);
                }
            }
        }
        Message::Sync(payload) => {
            // No size check in the actor: the sync server's decode limit is the only one.
            if let Ok(s) = codec::decode::<SyncMsg>(payload, MAX_CONSENSUS_BYTES as u64) {
                assert_eq!(&codec::encode(&s), payload);
            }
        }
        Message::Hello(_)
        | Message::Ping(_)
        | Message::Pong(_)
        | Message::GetPeers
        | Message::TxAnnounce(_)
        | Message::TxRequest(_)
        | Message::Txs(_)
        | Message::ConsensusHave(_)
        | Message::ConsensusWant(_) => {}
    }
}
