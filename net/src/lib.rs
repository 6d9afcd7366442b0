//! The Grapevine peer-to-peer network: encrypted, authenticated links between nodes,
//! peer discovery, validated gossip of transactions, flooding of consensus messages,
//! backpressure and peer scoring.
//!
//! # Layout
//! - [`frame`]: length-prefixed frames, decoded by a pure function over bytes.
//! - [`message`]: the messages peers exchange and the signed [`message::Hello`].
//! - [`secure`]: the Noise handshake (`snow`), hello checks and encrypted links.
//! - [`addrbook`]: known addresses, reconnect backoff, persistence.
//! - [`netgroup`]: the network group of an address (IPv4 /16, IPv6 /48), which
//!   limits on links and addresses count by.
//! - [`network`]: the network itself: [`start`], its [`NetworkHandle`] and [`Inbox`].
//!   Inside, one actor task owns all state and does all IO (`network/actor.rs`),
//!   wiring together the link tasks (`link.rs`), the peer set with its limits, scores
//!   and bans (`peers.rs`), and two state machines without sockets or tasks that take
//!   the time and their inputs and return what to send: transaction gossip
//!   (`gossip.rs`) and consensus relay (`relay.rs`).
//!
//! The protocol is documented in `docs/NETWORK.md`.

pub mod addrbook;
pub mod frame;
pub mod message;
pub mod netgroup;
pub mod network;
pub mod peeraddr;
pub mod secure;

pub use network::{
    Inbox, NetConfig, NetEvent, NetStats, NetworkHandle, Offence, PeerSummary, TxValidator,
    Verdict, start,
};
pub use peeraddr::PeerAddr;
