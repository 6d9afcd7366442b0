//! BFT consensus among the genesis validators: two-chain HotStuff with timeout
//! certificates (docs/CONSENSUS.md). Only pure code lives here: no sockets, files,
//! database or async runtime (`tests/pure.rs` keeps it so); the node's driver
//! (`node/src/driver`) runs it, and the test harness and fuzz targets use its messages
//! without building the database.
//!
//! # Layout
//! - [`types`]: messages, certificates, the validator set, each with its verification.
//! - [`engine`]: the sans-IO state machine.
//! - [`leader`]: leader election by reputation over the recent final chain.
//! - [`sync`]: the block sync state machine (which ranges to ask of whom, which
//!   answers to believe) and its messages.
//! - `sim` (tests): a seeded, deterministic simulator running many engines over a
//!   faulty virtual network, checking agreement, validity, no double-signing and
//!   liveness on every run.

pub mod engine;
pub mod leader;
pub mod sync;
pub mod types;

#[cfg(test)]
mod byzantine;
#[cfg(test)]
mod sim;
