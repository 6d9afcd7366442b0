//! The Grapevine peer-to-peer network: encrypted, authenticated links between nodes,
//! peer discovery, validated gossip of transactions, flooding of consensus messages,
//! backpressure and peer scoring.
//!
//! # Layout
//! - [`frame`]: length-prefixed frames, decoded by a pure function over bytes.
//! - [`message`]: the messages peers exchange and the signed [`message::Hello`].
//! - [`secure`]: the Noise handshake (`snow`), hello checks and encrypted links.
//! - [`addrbook`]: known addresses, reconnect backoff, persistence.
//! - [`network`]: the actor that runs it all, and its [`NetworkHandle`].
//!
//! The protocol is documented in `docs/NETWORK.md`.

pub mod addrbook;
pub mod frame;
pub mod message;
pub mod network;
pub mod secure;

pub use network::{
    Inbox, NetConfig, NetEvent, NetStats, NetworkHandle, Offence, PeerSummary, TxValidator,
    Verdict, start,
};
