//! `grapevine run`: a networked validator or full node from a home directory.
//!
//! Home layout (docs/OPERATIONS.md):
//! - `config.toml`: the settings below; relative paths in it are relative to the home.
//! - `genesis.json`: the chain, shared by every node.
//! - `node-key.json`: the node's network identity (peers know it by this key).
//! - `validator-key.json`: a validator's signing key (absent on a full node).
//! - `consensus-safety.bin`: a validator's safety state (last round signed in, highest
//!   QC), outside `data/` so that rebuilding the data never loses it.
//! - `data/`: the RocksDB ledger; `peers.json`: the address book.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use grapevine_ledger::{Genesis, Ledger, RocksStore};
use serde::{Deserialize, Serialize};

use crate::consensus::engine::Timing;
use crate::consensus::types::ValidatorSet;
use crate::driver;
use crate::mempool::MempoolConfig;
use crate::node::Node;
use crate::{keyfile, runtime};

/// Flags of `grapevine run`. Each overrides the home's config.toml.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's home directory, holding config.toml (see `grapevine testnet` for a
    /// generated one, docs/OPERATIONS.md for writing one by hand).
    #[arg(long, env = "GRAPEVINE_HOME")]
    home: PathBuf,
    /// Address the JSON-RPC server listens on (overrides `[rpc] listen`).
    #[arg(long, env = "GRAPEVINE_RPC_ADDR")]
    rpc_addr: Option<SocketAddr>,
    /// Address peers connect to (overrides `[p2p] listen`).
    #[arg(long, env = "GRAPEVINE_P2P_ADDR")]
    p2p_addr: Option<SocketAddr>,
    /// More peers to keep linked, comma-separated host:port or NODEID@host:port (names
    /// resolved at every dial; added to `[p2p] bootstrap`).
    #[arg(long, env = "GRAPEVINE_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<grapevine_net::PeerAddr>,
    /// Start a validator whose chain is past height 0 although its consensus safety
    /// state file (`safety_state` in config.toml) is missing. Without the file the node
    /// does not know what it signed, and could sign two conflicting messages in one
    /// round. Only for a key that never signed on this chain, or when the file is lost
    /// for good and the risk is accepted.
    #[arg(long)]
    allow_missing_safety_state: bool,
}

/// config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the genesis file.
    #[serde(default = "default_genesis")]
    pub genesis: PathBuf,
    /// Path of the node key file.
    #[serde(default = "default_node_key")]
    pub node_key: PathBuf,
    /// Path of the validator key file; absent on a full node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_key: Option<PathBuf>,
    /// Directory of the ledger database.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A validator's consensus safety state (kept outside `data_dir` on purpose).
    #[serde(default = "default_safety_state")]
    pub safety_state: PathBuf,
    /// JSON-RPC server.
    #[serde(default)]
    pub rpc: RpcSection,
    /// Peer-to-peer network.
    #[serde(default)]
    pub p2p: P2pSection,
    /// Consensus.
    #[serde(default)]
    pub consensus: ConsensusSection,
    /// Mempool.
    #[serde(default)]
    pub mempool: MempoolSection,
}

fn default_genesis() -> PathBuf {
    "genesis.json".into()
}
fn default_node_key() -> PathBuf {
    "node-key.json".into()
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
pub(crate) fn default_safety_state() -> PathBuf {
    "consensus-safety.bin".into()
}

/// `[rpc]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Listen address (keep it on 127.0.0.1 unless a proxy guards it).
    pub listen: SocketAddr,
    /// Requests per second per client IP (0: unlimited).
    pub rate_limit: u32,
    /// `/health` reports not ready when no block has become final for this long (0:
    /// never). Validators propose empty blocks when idle, so a stall means the chain
    /// has halted or this node cannot follow it.
    pub health_max_stall_ms: u64,
    /// Largest request body in bytes (HTTP 413 past it).
    pub max_body_bytes: usize,
    /// Most calls in one batch.
    pub max_batch_calls: usize,
    /// Largest response in bytes; calls past it get an error instead.
    pub max_response_bytes: usize,
    /// WebSocket connections at once, in total...
    pub max_ws_connections: usize,
    /// ...and per client (IPv4 address or IPv6 /64).
    pub max_ws_per_ip: usize,
    /// Subscriptions per WebSocket connection.
    pub max_subscriptions_per_connection: usize,
    /// Web origins allowed to call the node from a browser (CORS, and `Origin` on
    /// `/ws`); empty: none but the node's own pages; `"*"`: any.
    pub cors_allowed_origins: Vec<String>,
    /// Host names JSON-RPC calls and `/ws` may be addressed to (the `Host` header,
    /// port aside; guards against DNS rebinding); `"*"`: any. The listen address's IP
    /// is added when it is a specific one.
    pub allowed_hosts: Vec<String>,
}

impl Default for RpcSection {
    fn default() -> Self {
        let d = grapevine_rpc::RpcConfig::default();
        RpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
            rate_limit: 2_000,
            health_max_stall_ms: 20_000,
            max_body_bytes: d.max_body_bytes,
            max_batch_calls: d.max_batch_calls,
            max_response_bytes: d.max_response_bytes,
            max_ws_connections: d.max_ws_connections,
            max_ws_per_ip: d.max_ws_per_ip,
            max_subscriptions_per_connection: d.max_subscriptions_per_connection,
            cors_allowed_origins: d.cors_allowed_origins,
            allowed_hosts: d.allowed_hosts,
        }
    }
}

/// `[p2p]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// Listen address for peers.
    pub listen: SocketAddr,
    /// Peers to keep linked (dialed at start and whenever their link is down):
    /// `host:port` or `NODEID@host:port` (the peer must prove that node id); names
    /// are resolved at every dial.
    pub bootstrap: Vec<grapevine_net::PeerAddr>,
    /// The `host:port` peers are asked to dial this node at (for NAT, containers, a
    /// proxy in front of it); a name is resolved by this node at start and every
    /// minute. Unset: peers use the address they see it from, with `listen`'s port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_address: Option<grapevine_net::PeerAddr>,
    /// Outbound links to keep.
    pub target_outbound: usize,
    /// Most inbound links.
    pub max_inbound: usize,
    /// Most links from one IP address.
    pub max_per_ip: usize,
    /// Most inbound links from one network group (IPv4 /16, IPv6 /48; loopback and
    /// private addresses are exempt).
    pub max_inbound_per_group: usize,
    /// Messages per second one peer may send before the node stops reading from it
    /// (and, if it persists, bans it).
    pub recv_msgs_per_sec: u32,
    /// Bytes per second one peer may send, likewise.
    pub recv_bytes_per_sec: u64,
    /// Learn peers from peers. Off, the node dials only `bootstrap` (a sentry setup,
    /// or a testnet whose links all go through a fault-injecting proxy).
    pub peer_exchange: bool,
}

impl Default for P2pSection {
    fn default() -> Self {
        P2pSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 26656)),
            bootstrap: Vec::new(),
            external_address: None,
            target_outbound: grapevine_net::network::DEFAULT_TARGET_OUTBOUND,
            max_inbound: grapevine_net::network::DEFAULT_MAX_INBOUND,
            max_per_ip: grapevine_net::network::DEFAULT_MAX_PER_IP,
            max_inbound_per_group: grapevine_net::network::DEFAULT_MAX_INBOUND_PER_GROUP,
            recv_msgs_per_sec: grapevine_net::network::DEFAULT_RECV_MSGS_PER_SEC,
            recv_bytes_per_sec: grapevine_net::network::DEFAULT_RECV_BYTES_PER_SEC,
            peer_exchange: true,
        }
    }
}

/// `[consensus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusSection {
    /// First round timeout in milliseconds (doubles on consecutive timeouts).
    pub base_timeout_ms: u64,
    /// Largest round timeout in milliseconds.
    pub max_timeout_ms: u64,
    /// How long a leader with no transactions waits before proposing an empty block.
    pub idle_block_ms: u64,
    /// Most transactions in a proposed block (1 to 50,000).
    pub max_block_txs: usize,
    /// Least milliseconds from a block's timestamp to the proposal of its child (0: as
    /// soon as there is something to include). Larger: less CPU per transaction, more
    /// latency.
    pub min_block_interval_ms: u64,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        ConsensusSection {
            base_timeout_ms: 2_000,
            max_timeout_ms: 10_000,
            idle_block_ms: 500,
            max_block_txs: 10_000,
            min_block_interval_ms: 40,
        }
    }
}

/// `[mempool]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolSection {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most pooled transactions per sender.
    pub max_per_sender: usize,
    /// Seconds a transaction may wait for a block before it is dropped.
    pub ttl_secs: u64,
    /// Admission backpressure, the finality a transaction admitted under overload should
    /// get: while the pool holds more than half this many milliseconds of the recent
    /// finalized throughput (and at least 20,000 transactions; the other half is for
    /// inclusion and finality), new transactions are refused as `busy`. 0 turns it off.
    pub max_backlog_ms: u64,
    /// The least fee admitted (0 admits free transactions).
    pub min_fee: u64,
}

impl Default for MempoolSection {
    fn default() -> Self {
        let d = MempoolConfig::default();
        MempoolSection {
            max_txs: d.max_txs,
            max_per_sender: d.max_per_sender,
            ttl_secs: d.ttl.as_secs(),
            max_backlog_ms: u64::try_from(d.max_backlog.as_millis()).unwrap_or(u64::MAX),
            min_fee: d.min_fee,
        }
    }
}

impl Config {
    /// Reads and checks `home/config.toml`.
    pub fn load(home: &Path) -> anyhow::Result<Config> {
        let path = home.join("config.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        let c = &cfg.consensus;
        anyhow::ensure!(
            (1..=grapevine_ledger::block::MAX_BLOCK_TXS).contains(&c.max_block_txs),
            "{}: consensus.max_block_txs must be 1 to {}",
            path.display(),
            grapevine_ledger::block::MAX_BLOCK_TXS
        );
        anyhow::ensure!(
            c.base_timeout_ms >= 100 && c.max_timeout_ms >= c.base_timeout_ms,
            "{}: consensus.base_timeout_ms must be at least 100 and at most max_timeout_ms",
            path.display()
        );
        anyhow::ensure!(
            c.idle_block_ms < c.base_timeout_ms,
            "{}: consensus.idle_block_ms must be below base_timeout_ms, or idle rounds time out",
            path.display()
        );
        anyhow::ensure!(
            c.min_block_interval_ms < c.base_timeout_ms,
            "{}: consensus.min_block_interval_ms must be below base_timeout_ms, or rounds time out",
            path.display()
        );
        anyhow::ensure!(
            cfg.p2p
                .external_address
                .as_ref()
                .is_none_or(|a| a.id.is_none()),
            "{}: p2p.external_address is host:port, without a node id",
            path.display()
        );
        Ok(cfg)
    }

    /// The file's text, with a header comment.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(format!(
            "# Grapevine node configuration (docs/OPERATIONS.md). Relative paths are\n\
             # relative to this file's directory.\n\n{}",
            toml::to_string(self)?
        ))
    }

    /// The configuration of a home laid out as `grapevine testnet` and `grapevine init`
    /// write it (genesis.json, node-key.json, validator-key.json when `validator`,
    /// data/, consensus-safety.bin), with these RPC and peer sections and default
    /// consensus and mempool settings.
    pub fn for_home(validator: bool, rpc: RpcSection, p2p: P2pSection) -> Config {
        Config {
            genesis: default_genesis(),
            node_key: default_node_key(),
            validator_key: validator.then(|| "validator-key.json".into()),
            data_dir: default_data_dir(),
            safety_state: default_safety_state(),
            rpc,
            p2p,
            consensus: ConsensusSection::default(),
            mempool: MempoolSection::default(),
        }
    }
}

/// `p` relative to `home` unless absolute.
/// Which of a node's keys [`show_key`] prints.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// The node key (its address is the node id).
    Node,
    /// The validator key.
    Validator,
}

/// `grapevine show-node-id` / `show-validator`: prints the address of the node's key
/// of `kind`, read through `home/config.toml`.
pub fn show_key(home: &Path, kind: KeyKind) -> anyhow::Result<()> {
    let cfg = Config::load(home)?;
    let path = match kind {
        KeyKind::Node => cfg.node_key,
        KeyKind::Validator => cfg.validator_key.with_context(|| {
            format!(
                "{} names no validator_key: this is a full node",
                home.join("config.toml").display()
            )
        })?,
    };
    println!("{}", keyfile::read(&resolve(home, &path))?.address());
    Ok(())
}

pub(crate) fn resolve(home: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        home.join(p)
    }
}

/// The genesis validators' `networkAddress`es to keep linked besides `bootstrap`: all
/// but this node's own (`me`) and those `bootstrap` names already (same host and
/// port). One that does not parse is logged and skipped: a genesis is shared, and one
/// validator's typo must not stop another's node.
fn genesis_peers(
    genesis: &Genesis,
    me: Option<grapevine_ledger::Address>,
    bootstrap: &[grapevine_net::PeerAddr],
) -> Vec<grapevine_net::PeerAddr> {
    let mut out: Vec<grapevine_net::PeerAddr> = Vec::new();
    for v in &genesis.validators {
        let Some(text) = &v.network_address else {
            continue;
        };
        if Some(v.public_key) == me {
            continue;
        }
        match text.parse::<grapevine_net::PeerAddr>() {
            Ok(a) => {
                let known = |b: &grapevine_net::PeerAddr| b.host == a.host && b.port == a.port;
                if !bootstrap.iter().any(known) && !out.iter().any(known) {
                    out.push(a);
                }
            }
            Err(e) => {
                tracing::warn!(validator = %v.public_key, error = %e, "genesis networkAddress skipped")
            }
        }
    }
    out
}

/// Runs `grapevine run` until Ctrl-C or SIGTERM.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let home = &args.home;
    let mut cfg = Config::load(home)?;
    if let Some(a) = args.rpc_addr {
        cfg.rpc.listen = a;
    }
    if let Some(a) = args.p2p_addr {
        cfg.p2p.listen = a;
    }
    cfg.p2p.bootstrap.extend(args.bootstrap.iter().cloned());

    let genesis = Genesis::load(&resolve(home, &cfg.genesis))?;
    let node_key = keyfile::read(&resolve(home, &cfg.node_key))?;
    let validator_key = match &cfg.validator_key {
        Some(p) => Some(keyfile::read(&resolve(home, p))?),
        None => None,
    };
    let set = ValidatorSet::new(genesis.validator_keys(), genesis.chain_id);
    if let Some(k) = &validator_key {
        anyhow::ensure!(
            set.index_of(&k.address()).is_some(),
            "validator key {} is not one of the genesis validators; remove validator_key \
             from config.toml to run a full node",
            k.address()
        );
    }
    let data_dir = resolve(home, &cfg.data_dir);
    let opened =
        RocksStore::open(&data_dir).and_then(|store| Ledger::open(Box::new(store), &genesis));
    let ledger = match opened {
        Ok(l) => Arc::new(l),
        Err(e @ grapevine_ledger::StoreError::GenesisMismatch { .. }) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "{e}\nThe node's data cannot be used. To set it aside and sync the chain from \
                 peers again: grapevine rebuild --home {}",
                home.display()
            ));
        }
    };
    let pool = MempoolConfig {
        max_txs: cfg.mempool.max_txs,
        max_per_sender: cfg.mempool.max_per_sender,
        ttl: Duration::from_secs(cfg.mempool.ttl_secs),
        max_backlog: Duration::from_millis(cfg.mempool.max_backlog_ms),
        min_fee: cfg.mempool.min_fee,
        ..MempoolConfig::default()
    };
    let proposer = validator_key
        .as_ref()
        .map(grapevine_ledger::Keypair::address)
        .unwrap_or_default();
    let (node, rpc_metrics) = Node::new(ledger.clone(), pool, proposer, genesis.validator_keys());
    node.set_genesis(genesis.clone());
    node.set_health_max_stall(
        (cfg.rpc.health_max_stall_ms > 0)
            .then(|| Duration::from_millis(cfg.rpc.health_max_stall_ms)),
    );
    let rpc_cfg = grapevine_rpc::RpcConfig {
        rate_limit_per_ip: cfg.rpc.rate_limit,
        rate_limit_burst: cfg.rpc.rate_limit.saturating_mul(2),
        max_body_bytes: cfg.rpc.max_body_bytes,
        max_batch_calls: cfg.rpc.max_batch_calls,
        max_response_bytes: cfg.rpc.max_response_bytes,
        max_ws_connections: cfg.rpc.max_ws_connections,
        max_ws_per_ip: cfg.rpc.max_ws_per_ip,
        max_subscriptions_per_connection: cfg.rpc.max_subscriptions_per_connection,
        cors_allowed_origins: cfg.rpc.cors_allowed_origins.clone(),
        allowed_hosts: runtime::allowed_hosts(cfg.rpc.allowed_hosts.clone(), cfg.rpc.listen),
        ..grapevine_rpc::RpcConfig::default()
    };
    let mut net =
        grapevine_net::NetConfig::new(cfg.p2p.listen, node_key, genesis.chain_id, genesis.hash());
    net.bootstrap = cfg.p2p.bootstrap.clone();
    if cfg.p2p.peer_exchange {
        net.bootstrap.extend(genesis_peers(
            &genesis,
            validator_key
                .as_ref()
                .map(grapevine_ledger::Keypair::address),
            &cfg.p2p.bootstrap,
        ));
    }
    net.external_address = cfg.p2p.external_address.clone();
    net.target_outbound = cfg.p2p.target_outbound;
    net.max_inbound = cfg.p2p.max_inbound;
    net.max_per_ip = cfg.p2p.max_per_ip;
    net.max_inbound_per_group = cfg.p2p.max_inbound_per_group;
    net.recv_msgs_per_sec = cfg.p2p.recv_msgs_per_sec;
    net.recv_bytes_per_sec = cfg.p2p.recv_bytes_per_sec;
    net.peer_exchange = cfg.p2p.peer_exchange;
    net.address_book = Some(home.join("peers.json"));
    let role = if validator_key.is_some() {
        "validator"
    } else {
        "full node"
    };
    let safety_file = validator_key
        .as_ref()
        .map(|_| driver::safety_file::SafetyFile::new(resolve(home, &cfg.safety_state)));
    let consensus = driver::Setup {
        set,
        validator_key,
        safety_file,
        config: driver::Config {
            timing: Timing {
                base_timeout_ms: cfg.consensus.base_timeout_ms,
                max_timeout_ms: cfg.consensus.max_timeout_ms,
            },
            max_block_txs: cfg.consensus.max_block_txs,
            idle_block: Duration::from_millis(cfg.consensus.idle_block_ms),
            min_block_interval: Duration::from_millis(cfg.consensus.min_block_interval_ms),
        },
        kept: Default::default(),
        allow_missing_safety_state: args.allow_missing_safety_state,
    };
    let head = ledger.head();
    runtime::run_networked(
        node,
        cfg.rpc.listen,
        rpc_cfg,
        rpc_metrics,
        runtime::Networked { net, consensus },
        |rpc, p2p| {
            println!("Grapevine {role}");
            println!("  chain id:   {}", genesis.chain_id);
            println!("  genesis:    {}", genesis.hash());
            println!("  home:       {}", home.display());
            println!("  head:       height {} ({})", head.height, head.hash());
            println!("  RPC:        http://{rpc}");
            println!("  P2P:        {p2p}");
        },
    )?;
    ledger.flush()?;
    tracing::info!(height = ledger.head().height, "stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine_ledger::Keypair;
    use grapevine_ledger::genesis::GenesisValidator;

    #[test]
    fn genesis_peers_skip_this_node_known_peers_and_bad_entries() {
        let key = |s: u8| Keypair::from_seed(&[s; 32]).address();
        let v = |s: u8, a: Option<&str>| GenesisValidator {
            public_key: key(s),
            network_address: a.map(String::from),
        };
        let genesis = Genesis {
            chain_id: 1,
            genesis_time_ms: 0,
            accounts: Vec::new(),
            validators: vec![
                v(1, Some("validator1:26656")),
                v(2, Some("validator2:26656")),
                v(3, Some("validator3:26656")),
                v(4, None),
                v(5, Some("not an address")),
                v(6, Some("10.0.0.6:26656")),
            ],
        };
        let pinned: grapevine_net::PeerAddr =
            format!("{}@validator2:26656", key(9)).parse().unwrap();
        let got = genesis_peers(&genesis, Some(key(1)), &[pinned]);
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["validator3:26656", "10.0.0.6:26656"]);
        assert_eq!(genesis_peers(&genesis, None, &[]).len(), 4);
    }
}
