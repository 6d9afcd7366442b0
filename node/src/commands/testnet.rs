//! `grapevine testnet`: writes the homes of a local multi-node network.
//!
//! Layout of `--out DIR`:
//! - `genesis.json`: the chain (shared; a copy is in every home).
//! - `accounts.json`: funded accounts, in the format of `dev-accounts.json`.
//! - `keys/account-N.json`: each account's key file, for `grapevine transfer --key`.
//! - `validatorN/`, `fullN/`: node homes for `grapevine run --home`; with `--hosts`,
//!   one home per host, named after it.
//! - `nodes.tsv`: one line per node: name, RPC address, P2P address, home.
//!
//! With `--hosts NAME,...` the nodes are meant for separate hosts (containers, VMs):
//! each listens on all interfaces on the same ports, advertises `NAME:PORT`
//! (`external_address`), and keeps links to the other validators by name, pinned to
//! their node ids (`NODEID@NAME:PORT`).
//! - with `--fault-proxy`, `proxies.tsv`: one route per line, `FROM>TO LISTEN TARGET`:
//!   node FROM reaches validator TO only through LISTEN, which `gv-proxy` forwards to
//!   TO's peer port (and can cut, for partition tests). Peer exchange is off, so no
//!   link bypasses the proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::{Genesis, Keypair};
use grapevine_net::PeerAddr;

use super::dev::DevAccount;
use super::run::{Config, P2pSection, RpcSection};
use crate::keyfile;

/// Flags of `grapevine testnet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of validators (1 to 100; default 4, or with --hosts the names left
    /// after --full-nodes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    validators: Option<u32>,
    /// Number of non-validating full nodes that follow the chain.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    full_nodes: u32,
    /// Directory to write into; must not hold a testnet already.
    #[arg(long)]
    out: PathBuf,
    /// First port: node i listens for RPC on base + 2i and for peers on base + 2i + 1,
    /// all on 127.0.0.1 (not with --hosts).
    #[arg(long, default_value_t = 27_000)]
    base_port: u16,
    /// One node per host, comma-separated names (DNS names, compose services): the
    /// validators first, then --full-nodes full nodes. Each home is named after its
    /// host, listens on all interfaces on --p2p-port and --rpc-port, advertises
    /// NAME:P2P_PORT, and links to the validators by NODEID@NAME:P2P_PORT.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["fault_proxy", "base_port"])]
    hosts: Vec<String>,
    /// Peer port of every host (with --hosts).
    #[arg(long, default_value_t = 26_656, requires = "hosts")]
    p2p_port: u16,
    /// JSON-RPC port of every host (with --hosts).
    #[arg(long, default_value_t = 8_545, requires = "hosts")]
    rpc_port: u16,
    /// Number of funded accounts (1 to 10,000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    accounts: u32,
    /// The chain id.
    #[arg(long, default_value_t = 4242)]
    chain_id: u32,
    /// Balance of each funded account.
    #[arg(long, default_value_t = 1_000_000_000_000_000)]
    balance: u64,
    /// Route every link between nodes through `gv-proxy` routes (written to
    /// proxies.tsv, on the ports after the nodes'), so links can be cut to test
    /// partitions (`scripts/testnet.sh partition`).
    #[arg(long)]
    fault_proxy: bool,
}

/// Writes `contents` to `path`, naming the path on failure.
pub(super) fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// A fresh key from the operating system's random source.
pub(super) fn random_key() -> anyhow::Result<Keypair> {
    Keypair::generate().context("the operating system's random source failed")
}

/// Where one node of the testnet listens and how the others reach it.
struct Place {
    name: String,
    rpc: SocketAddr,
    p2p: SocketAddr,
    /// How others reach its peer port (and what the genesis publishes).
    reach: PeerAddr,
    /// How clients reach its RPC, for nodes.tsv and the printout.
    rpc_at: String,
    /// With --hosts: its host name, advertised and accepted as an RPC `Host`.
    host: Option<String>,
}

/// The nodes' places: loopback ports from `--base-port`, or one host each.
fn places(args: &Args, validators: u32, nodes: u32) -> anyhow::Result<Vec<Place>> {
    if !args.hosts.is_empty() {
        let mut seen = std::collections::HashSet::new();
        return args
            .hosts
            .iter()
            .map(|h| {
                let reach: PeerAddr = format!("{h}:{}", args.p2p_port)
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--hosts: {h:?} is not a host name"))?;
                // Labels of letters, digits and hyphens: a name is also a directory.
                let label = |l: &str| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                anyhow::ensure!(
                    h.split('.').all(label) && seen.insert(h.clone()),
                    "--hosts: {h:?} is not a host name, or named twice"
                );
                Ok(Place {
                    name: h.clone(),
                    rpc: SocketAddr::from(([0, 0, 0, 0], args.rpc_port)),
                    p2p: SocketAddr::from(([0, 0, 0, 0], args.p2p_port)),
                    reach,
                    rpc_at: format!("{h}:{}", args.rpc_port),
                    host: Some(h.clone()),
                })
            })
            .collect();
    }
    let routes = if args.fault_proxy {
        nodes * validators
    } else {
        0
    };
    let last_port = u32::from(args.base_port) + 2 * nodes + routes;
    anyhow::ensure!(
        last_port <= u32::from(u16::MAX),
        "--base-port {} leaves no room for {nodes} nodes (two ports each)",
        args.base_port
    );
    let port = |i: u32, which: u32| -> SocketAddr {
        // Checked above: fits in u16.
        let p = u16::try_from(u32::from(args.base_port) + 2 * i + which).unwrap_or(u16::MAX);
        SocketAddr::from(([127, 0, 0, 1], p))
    };
    Ok((0..nodes)
        .map(|i| Place {
            name: if i < validators {
                format!("validator{i}")
            } else {
                format!("full{}", i - validators)
            },
            rpc: port(i, 0),
            p2p: port(i, 1),
            reach: port(i, 1).into(),
            rpc_at: port(i, 0).to_string(),
            host: None,
        })
        .collect())
}

/// Writes the testnet and prints where its pieces are.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let out = &args.out;
    anyhow::ensure!(
        !out.join("genesis.json").exists(),
        "{} already holds a testnet; remove it first (rm -rf {})",
        out.display(),
        out.display()
    );
    let validators = match (args.validators, args.hosts.len()) {
        (Some(v), 0) => v,
        (None, 0) => 4,
        (v, hosts) => {
            let hosts = u32::try_from(hosts).unwrap_or(u32::MAX);
            let v = v.unwrap_or(hosts.saturating_sub(args.full_nodes));
            anyhow::ensure!(
                v >= 1 && v + args.full_nodes == hosts,
                "--hosts names {hosts} hosts; it needs one per validator and full node \
                 ({v} + {})",
                args.full_nodes
            );
            v
        }
    };
    let nodes = validators + args.full_nodes;
    let places = places(args, validators, nodes)?;
    std::fs::create_dir_all(out.join("keys"))
        .with_context(|| format!("cannot create {}", out.display()))?;

    let validator_keys: Vec<Keypair> = (0..validators)
        .map(|_| random_key())
        .collect::<anyhow::Result<_>>()?;
    let node_keys: Vec<Keypair> = (0..nodes)
        .map(|_| random_key())
        .collect::<anyhow::Result<_>>()?;
    let account_keys: Vec<Keypair> = (0..args.accounts)
        .map(|_| random_key())
        .collect::<anyhow::Result<_>>()?;
    let genesis = Genesis {
        chain_id: args.chain_id,
        genesis_time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        accounts: account_keys
            .iter()
            .map(|k| GenesisAccount {
                address: k.address(),
                balance: args.balance,
            })
            .collect(),
        validators: validator_keys
            .iter()
            .zip(&places)
            .map(|(k, p)| GenesisValidator {
                public_key: k.address(),
                network_address: Some(p.reach.to_string()),
            })
            .collect(),
    };
    genesis.validate()?;
    let genesis_json = genesis.to_json() + "\n";

    let accounts: Vec<DevAccount> = account_keys
        .iter()
        .map(|k| DevAccount::new(k, args.balance))
        .collect();
    for (i, k) in account_keys.iter().enumerate() {
        keyfile::write(&out.join("keys").join(format!("account-{i}.json")), k)?;
    }
    write(
        &out.join("accounts.json"),
        &(serde_json::to_string_pretty(&accounts)? + "\n"),
    )?;

    // Route from node i to validator j listens on base + 2 x nodes + i x validators + j.
    let route_port = |i: u32, j: u32| {
        let p = u32::from(args.base_port) + 2 * nodes + i * validators + j;
        SocketAddr::from(([127, 0, 0, 1], u16::try_from(p).unwrap_or(u16::MAX)))
    };
    let mut proxies = String::new();
    let mut table = String::new();
    for (i, place) in (0..nodes).zip(&places) {
        let is_validator = i < validators;
        let home = out.join(&place.name);
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        write(&home.join("genesis.json"), &genesis_json)?;
        keyfile::write(&home.join("node-key.json"), &node_keys[i as usize])?;
        if is_validator {
            keyfile::write(
                &home.join("validator-key.json"),
                &validator_keys[i as usize],
            )?;
        }
        let others = (0..validators).filter(|j| *j != i);
        let p2p = if args.fault_proxy {
            let mut bootstrap = Vec::new();
            for j in others {
                let listen = route_port(i, j);
                proxies.push_str(&format!(
                    "{}>{}\t{listen}\t{}\n",
                    place.name, places[j as usize].name, places[j as usize].p2p
                ));
                bootstrap.push(listen.into());
            }
            P2pSection {
                listen: place.p2p,
                bootstrap,
                peer_exchange: false,
                ..P2pSection::default()
            }
        } else {
            P2pSection {
                listen: place.p2p,
                // Pinned where the peer is named: a name is only as good as the DNS
                // that answers for it.
                bootstrap: others
                    .map(|j| {
                        let mut a = places[j as usize].reach.clone();
                        if place.host.is_some() {
                            a.id = Some(node_keys[j as usize].address());
                        }
                        a
                    })
                    .collect(),
                external_address: place.host.is_some().then(|| place.reach.clone()),
                ..P2pSection::default()
            }
        };
        let mut rpc = RpcSection {
            listen: place.rpc,
            ..RpcSection::default()
        };
        rpc.allowed_hosts.extend(place.host.clone());
        // Local benchmarks drive many requests from one address; homes for hosts keep
        // the default, as they may be deployed as they are.
        if place.host.is_none() {
            rpc.rate_limit = 0;
        }
        let cfg = Config::for_home(is_validator, rpc, p2p);
        write(&home.join("config.toml"), &cfg.to_toml()?)?;
        let abs = std::path::absolute(&home).unwrap_or(home);
        table.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            place.name,
            place.rpc_at,
            place.reach,
            abs.display()
        ));
    }
    if args.fault_proxy {
        write(&out.join("proxies.tsv"), &proxies)?;
    }
    // Written last: its presence marks a complete testnet.
    write(&out.join("nodes.tsv"), &table)?;
    write(&out.join("genesis.json"), &genesis_json)?;

    println!(
        "Testnet written to {} ({validators} validators, {} full nodes, chain id {})",
        out.display(),
        args.full_nodes,
        args.chain_id
    );
    for line in table.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [name, rpc, p2p, home] = f[..] {
            println!("  {name:<12} rpc http://{rpc}  p2p {p2p}  grapevine run --home {home}");
        }
    }
    println!(
        "  accounts:    {} ({} funded, keys in {})",
        out.join("accounts.json").display(),
        args.accounts,
        out.join("keys").display()
    );
    Ok(())
}
