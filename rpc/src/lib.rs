//! The Grapevine JSON-RPC 2.0 server (axum): balances, accounts, transaction submission
//! and status, blocks, node status, WebSocket subscriptions, `/health` and `/metrics`.
//!
//! # Layout
//! Empty for now: the dev-node issue builds this crate. It reaches the node through a
//! trait that `grapevine-node` implements, so handlers are testable without a network.
