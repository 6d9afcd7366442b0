//! The Grapevine peer-to-peer network: authenticated, encrypted links between nodes,
//! peer discovery, validated gossip of transactions, blocks and consensus messages, and
//! peer scoring.
//!
//! # Layout
//! Empty for now: the gossip-network issue builds this crate (frame codec, Noise
//! handshake, peer set, gossip). It depends only on `grapevine-ledger` for message types.
