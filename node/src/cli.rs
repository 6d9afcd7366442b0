//! Command-line interface: the subcommands and their flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{bench_ledger, keyfile};

/// Grapevine: a validating node for a gossip ledger.
///
/// Implemented so far: key generation and the ledger benchmark. The node itself
/// (`dev`, `run`, `testnet`) and the wallet commands arrive with the issues that build
/// them; see README.md.
#[derive(Debug, Parser)]
#[command(name = "grapevine", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an account key pair and write it as a key file (JSON, mode 0600).
    Keygen {
        /// Where to write the key file. Refuses to overwrite an existing file. Without
        /// it the key is printed to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmarks (throughput and latency; never pass/fail).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// ed25519 sign/verify rates per core and block-apply throughput (signature checks
    /// included) on a RocksDB ledger at several account counts.
    Ledger(bench_ledger::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => keyfile::keygen(out.as_deref()),
        Command::Bench {
            what: BenchCommand::Ledger(args),
        } => bench_ledger::run(&args),
    }
}
