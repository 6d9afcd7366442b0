//! The Grapevine JSON-RPC 2.0 server (axum): balances, accounts, transaction submission
//! and status, blocks, node status, WebSocket subscriptions, `/health` and `/metrics`.
//!
//! The server reaches the node only through the [`NodeApi`] trait, which `grapevine-node`
//! implements, so every handler is testable without a network (see the tests, which
//! drive [`app`] with `oneshot`).
//!
//! # Layout
//! - [`api`]: [`NodeApi`], the JSON response shapes, [`ApiError`] and [`RejectReason`].
//! - [`client`]: a blocking client of the same protocol (wallet, load generator, tests).
//! - [`jsonrpc`]: request parsing, batches, notifications, the method table, error
//!   codes, and the per-body limits (calls per batch, bytes per response).
//! - [`server`]: the router with its limits, `/health`, `/metrics`, graceful [`serve`].
//! - `guard`: admission shared by HTTP and WebSocket: the per-client rate limiter,
//!   WebSocket connection slots, the `Origin` and `Content-Type` checks.
//! - `ws`: WebSocket subscriptions.
//! - [`explorer`]: the block explorer page served at `/explorer` (assets in `rpc/explorer/`).
//!
//! Methods and error codes are documented in `docs/RPC.md`.

pub mod api;
pub mod client;
pub mod explorer;
mod guard;
pub mod jsonrpc;
pub mod server;
mod ws;

pub use api::{ApiError, NodeApi, RejectReason};
pub use server::{RpcConfig, RpcMetrics, app, serve};
