//! BFT consensus among the genesis validators: two-chain HotStuff with timeout
//! certificates (docs/CONSENSUS.md).
//!
//! # Layout
//! - [`types`]: messages, certificates, the validator set, each with its verification.
//! - [`engine`]: the sans-IO state machine.
//! - `sim` (tests): a seeded, deterministic simulator running many engines over a
//!   faulty virtual network, checking agreement, validity, no double-signing and
//!   liveness on every run.

pub mod driver;
pub mod engine;
pub mod safety_file;
pub mod sync;
pub mod types;

#[cfg(test)]
mod sim;
