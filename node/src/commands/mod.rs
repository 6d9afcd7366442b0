//! The subcommands of `grapevine`, one module each ([`crate::cli`] parses the command
//! line and calls them).
//!
//! # Layout
//! - [`dev`]: a single-validator dev chain with funded accounts.
//! - [`run`]: a node of a network (validator or full node) from its home directory, and
//!   the `config.toml` format.
//! - [`testnet`]: writes the homes of a local network.
//! - [`init`]: writes one node's home, for networks across hosts.
//! - [`rebuild`]: re-executes a node's chain into a fresh database.
//! - [`wallet`]: `keygen`'s key files aside, the commands against a node's RPC
//!   (`balance`, `transfer`, `sign`, `tx`, `block`, `status`).
//! - [`bench_rpc`]: the load generator (`bench --rpc`).
//! - [`bench_ledger`]: the ledger's signature and apply benchmarks (`bench ledger`).

pub mod bench_ledger;
pub mod bench_rpc;
pub mod dev;
pub mod init;
pub mod rebuild;
pub mod run;
pub mod testnet;
pub mod wallet;
