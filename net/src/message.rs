//! Messages between peers and their encoding (through the ledger's codec, so decoding
//! is size-limited and strict).

use std::net::SocketAddr;

use grapevine_ledger::codec::{self, CodecError};
use grapevine_ledger::{Address, Hash, Keypair, Signature, SignedTx};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks; peers must match it, as no other version
/// can share a chain with it: version 5's hello has no advertised address and it cannot
/// decode `TxPush`; version 4
/// cannot decode `SyncMsg::Proposal`, the answer
/// to a block request sent to the requester alone; version 3 sends block sync as a
/// consensus message, not as
/// [`Message::Sync`], which nodes serve from a queue of its own and never relay;
/// version 2 cannot decode `ConsensusHave` / `ConsensusWant`; version 1 refuses some
/// transactions and blocks that are valid under ZIP-215 (docs/PROTOCOL.md).
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest frame (one encoded message) accepted: 16 MiB, room for the largest block.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Most addresses in one `Peers` message.
pub const MAX_PEERS_PER_MESSAGE: usize = 64;

/// Most hashes in one announcement or request, and transactions in one `Txs`.
pub const MAX_ITEMS_PER_MESSAGE: usize = 4096;

/// Domain tag of the hello signature.
pub const HELLO_TAG: &[u8] = b"grapevine/hello/v1";

/// The first message on every link, proving the sender's node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The sender's chain id.
    pub chain_id: u32,
    /// The sender's genesis hash.
    pub genesis_hash: Hash,
    /// The sender's node key (ed25519), its identity on the network.
    pub node_key: Address,
    /// The port the sender accepts connections on (0: none).
    pub listen_port: u16,
    /// The address the sender asks to be dialed at (`[p2p] external_address`,
    /// resolved by the sender), for when the address it is seen from plus
    /// `listen_port` does not reach it (NAT, containers, proxies). `None`: that one.
    pub external: Option<SocketAddr>,
    /// Signature by `node_key` over [`Hello::signing_bytes`] with this link's Noise
    /// handshake hash, so it cannot be replayed on another link.
    pub signature: Signature,
}

impl Hello {
    /// Builds and signs a hello for the link whose handshake hash is `handshake_hash`.
    pub fn new(
        key: &Keypair,
        chain_id: u32,
        genesis_hash: Hash,
        listen_port: u16,
        external: Option<SocketAddr>,
        handshake_hash: &[u8],
    ) -> Hello {
        let mut h = Hello {
            version: PROTOCOL_VERSION,
            chain_id,
            genesis_hash,
            node_key: key.address(),
            listen_port,
            external,
            signature: Signature([0; 64]),
        };
        h.signature = key.sign(&h.signing_bytes(handshake_hash));
        h
    }

    /// `HELLO_TAG || handshake_hash || version || chain_id || genesis_hash || node_key ||
    /// listen_port || external` (the fields in the codec's encoding: integers
    /// little-endian).
    pub fn signing_bytes(&self, handshake_hash: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_TAG.len() + handshake_hash.len() + 96);
        out.extend_from_slice(HELLO_TAG);
        out.extend_from_slice(handshake_hash);
        out.extend_from_slice(&codec::encode(&(
            self.version,
            self.chain_id,
            self.genesis_hash,
            self.node_key,
            self.listen_port,
            self.external,
        )));
        out
    }

    /// Whether the signature proves `node_key` on the link with this handshake hash.
    pub fn verify(&self, handshake_hash: &[u8]) -> bool {
        grapevine_ledger::crypto::verify(
            &self.node_key,
            &self.signing_bytes(handshake_hash),
            &self.signature,
        )
    }
}

/// Everything peers say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Identity and chain; first on every link.
    Hello(Hello),
    /// Latency probe; answered with `Pong` of the same value.
    Ping(u64),
    /// Answer to `Ping`.
    Pong(u64),
    /// Asks for addresses of other peers.
    GetPeers,
    /// Addresses (`ip:port`) of peers the sender knows to be good.
    Peers(Vec<String>),
    /// Hashes of transactions the sender has validated and can serve.
    TxAnnounce(Vec<Hash>),
    /// Asks for the bodies of announced transactions.
    TxRequest(Vec<Hash>),
    /// Transaction bodies, in answer to `TxRequest`.
    Txs(Vec<SignedTx>),
    /// A consensus message, flooded to every peer (opaque to the network). Encoded as
    /// one byte string (the same bytes as a sequence of bytes, in one copy instead of
    /// one call per byte: proposals carry whole blocks).
    Consensus(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender has checked the consensus message with this hash (SHA-256 of its
    /// bytes) and sends it on request: how a large one is relayed.
    ConsensusHave(Hash),
    /// Asks for the consensus message announced by `ConsensusHave` with this hash.
    ConsensusWant(Hash),
    /// A block sync message between two peers (status, requests, answers; opaque to
    /// the network, never relayed). Encoded like `Consensus`.
    Sync(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bodies of transactions submitted to the sender itself (over RPC), pushed to
    /// each of its peers unasked: no peer can have them yet, so an announcement would
    /// only add the round trip of a request. Relayed transactions are announced.
    TxPush(Vec<SignedTx>),
}

/// Why a received message is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Not a valid encoding.
    #[error("undecodable message: {0}")]
    Codec(#[from] CodecError),
    /// More items than a message may carry.
    #[error("message carries {count} items, the limit is {max}")]
    TooManyItems {
        /// Items carried.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl Message {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes one message of at most [`MAX_FRAME`] bytes and checks its item limits.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        let m: Message = codec::decode(bytes, MAX_FRAME as u64)?;
        let (count, max) = match &m {
            Message::Peers(p) => (p.len(), MAX_PEERS_PER_MESSAGE),
            Message::TxAnnounce(h) | Message::TxRequest(h) => (h.len(), MAX_ITEMS_PER_MESSAGE),
            Message::Txs(t) | Message::TxPush(t) => (t.len(), MAX_ITEMS_PER_MESSAGE),
            _ => (0, 0),
        };
        if count > max {
            return Err(MessageError::TooManyItems { count, max });
        }
        Ok(m)
    }

    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::GetPeers => "getPeers",
            Message::Peers(_) => "peers",
            Message::TxAnnounce(_) => "txAnnounce",
            Message::TxRequest(_) => "txRequest",
            Message::Txs(_) => "txs",
            Message::Consensus(_) => "consensus",
            Message::ConsensusHave(_) => "consensusHave",
            Message::ConsensusWant(_) => "consensusWant",
            Message::Sync(_) => "sync",
            Message::TxPush(_) => "txPush",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_signature_is_bound_to_the_link() {
        let k = Keypair::from_seed(&[3; 32]);
        let h = Hello::new(
            &k,
            1,
            Hash([2; 32]),
            7000,
            Some("192.0.2.7:26656".parse().unwrap()),
            b"link one",
        );
        assert!(h.verify(b"link one"));
        assert!(!h.verify(b"link two"), "replayed on another link");
        let mut forged = h.clone();
        forged.chain_id = 2;
        assert!(!forged.verify(b"link one"));
        let mut moved = h.clone();
        moved.external = Some("192.0.2.8:26656".parse().unwrap());
        assert!(
            !moved.verify(b"link one"),
            "the advertised address is signed"
        );
        let m = Message::Hello(h);
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn consensus_payload_bytes_are_those_of_a_byte_sequence() {
        // The wire format of docs/NETWORK.md: variant index (u32le 8), length (u64le),
        // the bytes. serde_bytes must not change it.
        let payload: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let enc = Message::Consensus(payload.clone()).encode();
        let mut want = 8u32.to_le_bytes().to_vec();
        want.extend_from_slice(&codec::encode(&payload));
        assert_eq!(enc, want);
        assert_eq!(Message::decode(&enc), Ok(Message::Consensus(payload)));
    }

    #[test]
    fn consensus_announcements_are_a_variant_index_and_a_hash() {
        // docs/NETWORK.md: ConsensusHave is variant 9, ConsensusWant 10, then 32 bytes.
        let h = Hash([5; 32]);
        for (m, index) in [
            (Message::ConsensusHave(h), 9u32),
            (Message::ConsensusWant(h), 10),
        ] {
            let enc = m.encode();
            let mut want = index.to_le_bytes().to_vec();
            want.extend_from_slice(&h.0);
            assert_eq!(enc, want);
            assert_eq!(Message::decode(&enc), Ok(m));
        }
    }

    #[test]
    fn sync_payload_is_variant_eleven_then_a_byte_string() {
        // docs/NETWORK.md: Sync is variant 11, encoded as Consensus is.
        let payload = vec![1u8, 2, 3];
        let enc = Message::Sync(payload.clone()).encode();
        let mut want = 11u32.to_le_bytes().to_vec();
        want.extend_from_slice(&codec::encode(&payload));
        assert_eq!(enc, want);
        assert_eq!(Message::decode(&enc), Ok(Message::Sync(payload)));
    }

    #[test]
    fn limits_and_garbage() {
        let too_many = Message::TxAnnounce(vec![Hash::ZERO; MAX_ITEMS_PER_MESSAGE + 1]);
        assert!(matches!(
            Message::decode(&too_many.encode()),
            Err(MessageError::TooManyItems { .. })
        ));
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let _ = Message::decode(&bytes);
        }
        let mut enc = Message::Ping(5).encode();
        enc.push(0);
        assert!(Message::decode(&enc).is_err(), "trailing bytes");
    }
}
