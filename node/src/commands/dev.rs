//! `grapevine dev`: a single-validator chain with funded dev accounts, like anvil.
//!
//! Home layout (created on first run, reused after):
//! - `genesis.json`: chain id 1337, the dev accounts' balances, the dev validator.
//! - `dev-accounts.json`: `[{"address", "publicKey", "secretKey", "balance"}]`.
//! - `keys/dev-N.json`: each dev account's key file, for `grapevine transfer --key`.
//! - `validator-key.json`: the block producer's key file.
//! - `data/`: the RocksDB ledger (absent with `--ephemeral`, which keeps it in memory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use grapevine_ledger::crypto::sha256;
use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::{Genesis, Keypair, Ledger, MemoryStore, RocksStore, Store};
use serde::{Deserialize, Serialize};

use crate::mempool::MempoolConfig;
use crate::node::Node;
use crate::{keyfile, runtime};

/// The dev chain's id.
pub const DEV_CHAIN_ID: u32 = 1337;

/// Each dev account's initial balance.
pub const DEV_BALANCE: u64 = 1_000_000_000_000_000;

/// Flags of `grapevine dev`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's home directory (created on first run, reused after).
    #[arg(long, env = "GRAPEVINE_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    /// Address the JSON-RPC server listens on (port 0 picks a free port).
    #[arg(long, env = "GRAPEVINE_RPC_ADDR", default_value = "127.0.0.1:7545")]
    rpc_addr: SocketAddr,
    /// Number of funded dev accounts in a new home (at most 10,000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    accounts: u32,
    /// Keep the chain in memory and in a temporary home removed at exit.
    #[arg(long)]
    ephemeral: bool,
    /// Least time between two blocks, in milliseconds. Blocks are produced only while
    /// transactions are pending.
    #[arg(long, env = "GRAPEVINE_BLOCK_INTERVAL_MS", default_value_t = 100)]
    block_interval_ms: u64,
    /// Most transactions in one block (1 to 50,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    max_block_txs: u32,
    /// RPC requests per second allowed per client IP (0: unlimited).
    #[arg(long, env = "GRAPEVINE_RPC_RATE_LIMIT", default_value_t = 2_000)]
    rpc_rate_limit: u32,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".grapevine")
        .join("dev")
}

/// One entry of `dev-accounts.json` (and of a testnet's `accounts.json`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DevAccount {
    address: String,
    public_key: String,
    secret_key: String,
    #[serde(with = "grapevine_ledger::json_u64")]
    balance: u64,
}

impl DevAccount {
    /// The entry of account `k` funded with `balance`.
    pub(crate) fn new(k: &Keypair, balance: u64) -> Self {
        DevAccount {
            address: k.address().to_string(),
            public_key: k.address().public_key_hex(),
            secret_key: k.secret_hex().to_string(),
            balance,
        }
    }
}

/// The `i`-th dev account: a fixed, public key (like anvil's), never for real funds.
fn dev_key(i: u32) -> Keypair {
    Keypair::from_seed(&sha256(&[b"grapevine/dev-account/", &i.to_le_bytes()]).0)
}

fn write_new(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates a dev home in `home` (which must not hold a genesis yet).
fn create_home(home: &Path, accounts: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create home directory {}", home.display()))?;
    // Left by a first run that stopped before writing genesis.json: that key never
    // signed a block, so a fresh one replaces it.
    for stale in ["validator-key.json", "dev-accounts.json"] {
        let p = home.join(stale);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    let validator = Keypair::generate().context("the operating system's random source failed")?;
    let keys: Vec<Keypair> = (0..accounts).map(dev_key).collect();
    let genesis = Genesis {
        chain_id: DEV_CHAIN_ID,
        genesis_time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        accounts: keys
            .iter()
            .map(|k| GenesisAccount {
                address: k.address(),
                balance: DEV_BALANCE,
            })
            .collect(),
        validators: vec![GenesisValidator {
            public_key: validator.address(),
            network_address: None,
        }],
    };
    genesis.validate()?;
    let dev: Vec<DevAccount> = keys
        .iter()
        .map(|k| DevAccount::new(k, DEV_BALANCE))
        .collect();
    keyfile::write(&home.join("validator-key.json"), &validator)?;
    // One key file per dev account, ready for `grapevine transfer --key`.
    let keys_dir = home.join("keys");
    if keys_dir.exists() {
        std::fs::remove_dir_all(&keys_dir)
            .with_context(|| format!("cannot clear {}", keys_dir.display()))?;
    }
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("cannot create {}", keys_dir.display()))?;
    for (i, k) in keys.iter().enumerate() {
        keyfile::write(&keys_dir.join(format!("dev-{i}.json")), k)?;
    }
    write_new(
        &home.join("dev-accounts.json"),
        &(serde_json::to_string_pretty(&dev)? + "\n"),
    )?;
    // Written last: its presence marks a complete home.
    write_new(&home.join("genesis.json"), &(genesis.to_json() + "\n"))
}

fn print_banner(home: &Path, genesis: &Genesis, ledger: &Ledger, rpc: SocketAddr) {
    let accounts: Vec<DevAccount> = std::fs::read(home.join("dev-accounts.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let head = ledger.head();
    println!("Grapevine dev chain");
    println!("  chain id:   {}", genesis.chain_id);
    println!("  genesis:    {}", genesis.hash());
    println!("  home:       {}", home.display());
    println!("  head:       height {} ({})", head.height, head.hash());
    println!("  RPC:        http://{rpc}");
    println!("  WebSocket:  ws://{rpc}/ws");
    println!();
    println!("Dev accounts (public test keys: never use them for real funds)");
    for (i, a) in accounts.iter().take(10).enumerate() {
        println!("  ({i}) {}  balance {}", a.address, a.balance);
        println!("      secret key {}", a.secret_key);
    }
    if accounts.len() > 10 {
        println!(
            "  … and {} more in {}",
            accounts.len() - 10,
            home.join("dev-accounts.json").display()
        );
    }
    println!();
    println!(
        "Try: grapevine transfer --rpc http://{rpc} --key <key file> --to <address> --amount 100 --wait"
    );
}

/// A dev chain whose data cannot be used: say how to start over.
fn damaged(home: &Path, e: grapevine_ledger::StoreError) -> anyhow::Error {
    anyhow::anyhow!(
        "{e}\nA dev chain's data can simply be started over: remove {} (or pass another \
         --home, or --ephemeral)",
        home.display()
    )
}

/// Runs `grapevine dev` until Ctrl-C or SIGTERM.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let temp;
    let home = if args.ephemeral {
        temp = tempfile::Builder::new()
            .prefix("grapevine-dev-")
            .tempdir()
            .context("cannot create a temporary home")?;
        temp.path().to_path_buf()
    } else {
        args.home.clone()
    };
    if !home.join("genesis.json").exists() {
        create_home(&home, args.accounts)?;
    }
    let genesis = Genesis::load(&home.join("genesis.json"))?;
    let validator = keyfile::read(&home.join("validator-key.json"))?;
    anyhow::ensure!(
        genesis.validators.len() == 1 && genesis.validators[0].public_key == validator.address(),
        "{} is not a dev home: its genesis needs exactly one validator, this node's key",
        home.display()
    );
    let store: Box<dyn Store> = if args.ephemeral {
        Box::new(MemoryStore::new())
    } else {
        Box::new(RocksStore::open(&home.join("data")).map_err(|e| damaged(&home, e))?)
    };
    let ledger = Arc::new(Ledger::open(store, &genesis).map_err(|e| damaged(&home, e))?);
    let (node, rpc_metrics) = Node::new(
        ledger.clone(),
        MempoolConfig::default(),
        validator.address(),
        genesis.validator_keys(),
    );
    node.set_genesis(genesis.clone());
    let rpc_cfg = grapevine_rpc::RpcConfig {
        rate_limit_per_ip: args.rpc_rate_limit,
        rate_limit_burst: args.rpc_rate_limit.saturating_mul(2),
        allowed_hosts: runtime::allowed_hosts(
            grapevine_rpc::RpcConfig::default().allowed_hosts,
            args.rpc_addr,
        ),
        ..grapevine_rpc::RpcConfig::default()
    };
    let producer = crate::producer::Config {
        interval: Duration::from_millis(args.block_interval_ms),
        max_block_txs: args.max_block_txs as usize,
    };
    runtime::run_node(
        node,
        args.rpc_addr,
        rpc_cfg,
        rpc_metrics,
        producer,
        |addr| print_banner(&home, &genesis, &ledger, addr),
    )?;
    ledger.flush()?;
    tracing::info!(height = ledger.head().height, "stopped cleanly");
    Ok(())
}
