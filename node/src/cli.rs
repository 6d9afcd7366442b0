//! Command-line interface: the subcommands and their flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use grapevine_ledger::{Address, Hash};
use serde_json::json;

use crate::commands::{bench_ledger, bench_rpc, dev, init, rebuild, run, testnet, wallet};
use crate::keyfile;

/// Grapevine: a validating node for a gossip ledger.
///
/// Start a local chain with `grapevine dev`, then use the wallet commands against it.
/// For a network of validators: `grapevine testnet` writes the node homes and
/// `grapevine run --home DIR` runs one node (scripts/testnet.sh does both).
#[derive(Debug, Parser)]
#[command(name = "grapevine", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-validator dev chain with funded accounts (like anvil).
    Dev(dev::Args),
    /// Run a networked validator or full node from its home directory (config.toml).
    Run(run::Args),
    /// Set a damaged data directory aside so the node syncs its chain from peers again
    /// (keeps a validator's consensus safety state).
    Rebuild(rebuild::Args),
    /// Write the homes of a local network: genesis, funded accounts, and per node its
    /// config, node key and validator key.
    Testnet(testnet::Args),
    /// Write one node's home (keys and config) for a network across hosts; with the
    /// network's genesis (--genesis FILE, or --genesis-from URL --genesis-hash HASH) it
    /// joins in two commands: init, then run.
    Init(init::Args),
    /// Print the node id of the node in DIR (its node key's address: what peers
    /// pin it by).
    ShowNodeId {
        /// The node's home directory (config.toml).
        #[arg(long, env = "GRAPEVINE_HOME")]
        home: PathBuf,
    },
    /// Print the validator address of the node in DIR (what the genesis lists).
    ShowValidator {
        /// The node's home directory (config.toml).
        #[arg(long, env = "GRAPEVINE_HOME")]
        home: PathBuf,
    },
    /// Generate an account key pair and write it as a key file (JSON, mode 0600).
    Keygen {
        /// Where to write the key file. Refuses to overwrite an existing file. Without
        /// it the key is printed to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print an account's balance.
    Balance {
        #[command(flatten)]
        rpc: wallet::Rpc,
        /// The account's address (gv…).
        address: Address,
    },
    /// Sign and send a transfer; prints its hash (and its receipt with --wait).
    Transfer(wallet::TransferArgs),
    /// Sign a transfer offline and print its hex encoding (for sendTransaction).
    Sign(wallet::SignArgs),
    /// Show a transaction's lifecycle state.
    Tx {
        #[command(flatten)]
        rpc: wallet::Rpc,
        /// The transaction hash.
        hash: Hash,
    },
    /// Show a block (default: the latest).
    Block {
        #[command(flatten)]
        rpc: wallet::Rpc,
        /// Height or block hash.
        block: Option<String>,
        /// Include the full transactions.
        #[arg(long)]
        full: bool,
    },
    /// Show the node's status.
    Status {
        #[command(flatten)]
        rpc: wallet::Rpc,
    },
    /// Ask a node whether it is healthy (GET /health): exits 0 and prints the answer
    /// if it is, 1 if it answers otherwise or not at all (for container health
    /// checks and scripts).
    Health {
        /// The node's JSON-RPC URL (`grapevine run` listens on port 8545 by default).
        #[arg(long, env = "GRAPEVINE_RPC", default_value = "http://127.0.0.1:8545")]
        rpc: String,
    },
    /// Benchmarks (throughput and latency; never pass/fail). With --rpc: a load of
    /// signed transfers against running nodes; `bench ledger`: signatures and block
    /// application in this process.
    Bench(BenchArgs),
}

/// `grapevine bench`: the RPC load generator, or a named benchmark.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchCommand>,
    #[command(flatten)]
    load: bench_rpc::Args,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// ed25519 sign/verify rates per core and block-apply throughput on a RocksDB ledger
    /// at several account counts: for unseen transactions (every signature checked) and
    /// for known ones (signature verdicts remembered from the mempool).
    Ledger(bench_ledger::Args),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRAPEVINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

impl Cli {
    /// Whether the command runs a node (`run`, `dev`): a long-lived, many-threaded
    /// process, as opposed to a wallet command or a benchmark.
    pub fn runs_a_node(&self) -> bool {
        matches!(self.command, Command::Dev(_) | Command::Run(_))
    }
}

/// Glibc's malloc reads `MALLOC_ARENA_MAX` once, when the process starts.
const ARENA_ENV: &str = "MALLOC_ARENA_MAX";

/// Caps glibc's malloc arenas at the number of cores (at least 2) by starting this
/// program again, in place (same process id, arguments and environment), with
/// `MALLOC_ARENA_MAX` set; does nothing when it is already set (by the operator, or by
/// this), or off glibc. glibc's default, 8 arenas per core, gives each of a node's many
/// threads (async workers, the blocking pool, RocksDB's) an arena of its own, each
/// keeping memory its thread freed: under a flood of transfers the validators of a
/// 4-validator testnet peak at 420-432 MB with the default and at 321-334 MB with 2
/// arenas, at the same throughput (docs/PERFORMANCE.md, "Machine notes"). Setting it in
/// process would need `mallopt`, unsafe code, which the workspace forbids. Returns
/// only when the restart could not happen, and the node then runs with the default.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(ARENA_ENV).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(ARENA_ENV, cores.to_string())
            .exec();
        eprintln!(
            "warning: could not restart with {ARENA_ENV} set ({err}); running with glibc's default arenas"
        );
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => {
            init_logging();
            dev::run(&args)
        }
        Command::Run(args) => {
            init_logging();
            run::run(&args)
        }
        Command::Testnet(args) => testnet::run(&args),
        Command::Init(args) => init::run(&args),
        Command::Rebuild(args) => rebuild::run(&args),
        Command::Keygen { out } => keyfile::keygen(out.as_deref()),
        Command::ShowNodeId { home } => run::show_key(&home, run::KeyKind::Node),
        Command::ShowValidator { home } => run::show_key(&home, run::KeyKind::Validator),
        Command::Balance { rpc, address } => wallet::balance(&rpc, &address),
        Command::Transfer(args) => wallet::transfer(&args),
        Command::Sign(args) => wallet::sign(&args),
        Command::Tx { rpc, hash } => {
            wallet::show(&rpc, "getTransaction", json!([hash.to_string()]))
        }
        Command::Block { rpc, block, full } => {
            let which = block.unwrap_or_else(|| "latest".into());
            wallet::show(&rpc, "getBlock", json!([which, full]))
        }
        Command::Status { rpc } => wallet::show(&rpc, "getStatus", json!([])),
        Command::Health { rpc } => wallet::health(&rpc),
        Command::Bench(BenchArgs {
            what: Some(BenchCommand::Ledger(args)),
            ..
        }) => bench_ledger::run(&args),
        Command::Bench(BenchArgs { what: None, load }) => bench_rpc::run(&load),
    }
}
