//! The `grapevine` binary: the node, its commands, consensus and the wiring between
//! the libraries (`grapevine_ledger`, `grapevine_net`, `grapevine_rpc`).
//!
//! # Layout
//! - [`cli`]: the command line; [`commands`]: one module per subcommand (`dev`, `run`,
//!   `testnet`, `rebuild`, the wallet, the benchmarks).
//! - [`node`]: the node's state shared by every task: ledger, mempool, admission,
//!   commit and publish, the RPC adapter, metrics.
//! - [`mempool`]: pending and queued transactions by sender and nonce;
//!   [`recent`]: outcomes of transactions that left it (rejected, evicted, expired).
//! - [`consensus`]: the pure parts of BFT consensus (engine, messages, block sync's
//!   state machine, simulator); [`driver`]: the task that runs them against the
//!   network and the ledger, and serves block sync.
//! - [`producer`]: block production of a dev chain; [`runtime`]: the tokio runtime,
//!   the tasks of a dev or networked node, and shutdown.
//! - [`keyfile`]: key files on disk.
//!
//! A transaction's path: `sendTransaction` (grapevine_rpc) -> [`node`]'s admission ->
//! [`mempool`] -> gossip through grapevine_net -> a leader's block
//! (`driver::build`) -> votes -> [`node::Node::commit_block`] (one synced RocksDB
//! batch) -> head and transaction events. docs/ARCHITECTURE.md tells it at length.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
use grapevine_consensus as consensus;
mod driver;
mod keyfile;
mod mempool;
mod node;
mod producer;
mod recent;
mod runtime;
#[cfg(test)]
mod test_support;

fn main() -> ExitCode {
    if let Some(missing) = missing_cpu_features() {
        eprintln!(
            "error: this build of grapevine needs CPU features this machine lacks: {missing}. \
             Build it for this CPU: RUSTFLAGS='--cfg curve25519_dalek_backend=\"avx512\"' \
             cargo build --release (see .cargo/config.toml)"
        );
        return ExitCode::FAILURE;
    }
    let args = cli::Cli::parse();
    if args.runs_a_node() {
        cli::limit_malloc_arenas();
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, not a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The x86-64 features `.cargo/config.toml` builds for (x86-64-v2 and PCLMULQDQ) that
/// this CPU lacks: a message instead of an illegal-instruction crash somewhere later.
/// Read from CPUID itself: `is_x86_feature_detected!` answers `true` at compile time
/// for every feature the build enables. Best effort: code that runs before `main`
/// (RocksDB's static constructors) could still trap first.
#[cfg(target_arch = "x86_64")]
fn missing_cpu_features() -> Option<String> {
    let (leaf1, ext1) = (raw_cpuid::cpuid!(1).ecx, raw_cpuid::cpuid!(0x8000_0001).ecx);
    let missing = missing_of(leaf1, ext1);
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The features the build assumes that CPUID's ECX of leaf 1 (`leaf1`) and of leaf
/// 0x8000_0001 (`ext1`) do not report.
#[cfg(target_arch = "x86_64")]
fn missing_of(leaf1: u32, ext1: u32) -> Vec<&'static str> {
    const LEAF1: [(u32, &str); 7] = [
        (0, "sse3"),
        (1, "pclmulqdq"),
        (9, "ssse3"),
        (13, "cmpxchg16b"),
        (19, "sse4.1"),
        (20, "sse4.2"),
        (23, "popcnt"),
    ];
    let mut missing: Vec<&str> = LEAF1
        .iter()
        .filter(|(bit, _)| leaf1 & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if ext1 & 1 == 0 {
        missing.push("lahf_lm");
    }
    missing
}

#[cfg(not(target_arch = "x86_64"))]
fn missing_cpu_features() -> Option<String> {
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn cpu_features_are_read_from_the_cpuid_bits() {
        assert_eq!(missing_of(u32::MAX, 1), Vec::<&str>::new());
        assert_eq!(missing_of(!(1 << 20), 1), vec!["sse4.2"]);
        assert_eq!(
            missing_of(0, 0),
            vec![
                "sse3",
                "pclmulqdq",
                "ssse3",
                "cmpxchg16b",
                "sse4.1",
                "sse4.2",
                "popcnt",
                "lahf_lm"
            ]
        );
        // The machine that runs the tests runs the build, so it has them all.
        assert_eq!(missing_cpu_features(), None);
    }
}
