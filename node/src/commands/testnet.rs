//! `grapevine testnet`: writes the homes of a local multi-node network.
//!
//! Layout of `--out DIR`:
//! - `genesis.json`: the chain (shared; a copy is in every home).
//! - `accounts.json`: funded accounts, in the format of `dev-accounts.json`.
//! - `keys/account-N.json`: each account's key file, for `grapevine transfer --key`.
//! - `validatorN/`, `fullN/`: node homes for `grapevine run --home`.
//! - `nodes.tsv`: one line per node: name, RPC address, P2P address, home.
//! - with `--fault-proxy`, `proxies.tsv`: one route per line, `FROM>TO LISTEN TARGET`:
//!   node FROM reaches validator TO only through LISTEN, which `gv-proxy` forwards to
//!   TO's peer port (and can cut, for partition tests). Peer exchange is off, so no
//!   link bypasses the proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::{Genesis, Keypair};

use super::dev::DevAccount;
use super::run::{Config, P2pSection, RpcSection};
use crate::keyfile;

/// Flags of `grapevine testnet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of validators (1 to 100).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    validators: u32,
    /// Number of non-validating full nodes that follow the chain.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    full_nodes: u32,
    /// Directory to write into; must not hold a testnet already.
    #[arg(long)]
    out: PathBuf,
    /// First port: node i listens for RPC on base + 2i and for peers on base + 2i + 1,
    /// all on 127.0.0.1.
    #[arg(long, default_value_t = 27_000)]
    base_port: u16,
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

/// Writes the testnet and prints where its pieces are.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let out = &args.out;
    anyhow::ensure!(
        !out.join("genesis.json").exists(),
        "{} already holds a testnet; remove it first (rm -rf {})",
        out.display(),
        out.display()
    );
    let nodes = args.validators + args.full_nodes;
    let routes = if args.fault_proxy {
        nodes * args.validators
    } else {
        0
    };
    let last_port = u32::from(args.base_port) + 2 * nodes + routes;
    anyhow::ensure!(
        last_port <= u32::from(u16::MAX),
        "--base-port {} leaves no room for {nodes} nodes (two ports each)",
        args.base_port
    );
    std::fs::create_dir_all(out.join("keys"))
        .with_context(|| format!("cannot create {}", out.display()))?;

    let validator_keys: Vec<Keypair> = (0..args.validators)
        .map(|_| random_key())
        .collect::<anyhow::Result<_>>()?;
    let account_keys: Vec<Keypair> = (0..args.accounts)
        .map(|_| random_key())
        .collect::<anyhow::Result<_>>()?;
    let port = |i: u32, which: u32| -> SocketAddr {
        // Checked above: fits in u16.
        let p = u16::try_from(u32::from(args.base_port) + 2 * i + which).unwrap_or(u16::MAX);
        SocketAddr::from(([127, 0, 0, 1], p))
    };
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
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                public_key: k.address(),
                network_address: Some(port(i as u32, 1).to_string()),
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

    let validator_p2p: Vec<SocketAddr> = (0..args.validators).map(|i| port(i, 1)).collect();
    let name_of = |i: u32| {
        if i < args.validators {
            format!("validator{i}")
        } else {
            format!("full{}", i - args.validators)
        }
    };
    // Route from node i to validator j listens on base + 2 x nodes + i x validators + j.
    let route_port = |i: u32, j: u32| {
        let p = u32::from(args.base_port) + 2 * nodes + i * args.validators + j;
        SocketAddr::from(([127, 0, 0, 1], u16::try_from(p).unwrap_or(u16::MAX)))
    };
    let mut proxies = String::new();
    let mut table = String::new();
    for i in 0..nodes {
        let is_validator = i < args.validators;
        let name = name_of(i);
        let home = out.join(&name);
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        write(&home.join("genesis.json"), &genesis_json)?;
        keyfile::write(&home.join("node-key.json"), &random_key()?)?;
        if is_validator {
            keyfile::write(
                &home.join("validator-key.json"),
                &validator_keys[i as usize],
            )?;
        }
        let (rpc, p2p) = (port(i, 0), port(i, 1));
        let cfg = Config::for_home(
            is_validator,
            RpcSection {
                listen: rpc,
                // Local benchmarks drive many requests from one address.
                rate_limit: 0,
                ..RpcSection::default()
            },
            if args.fault_proxy {
                let mut bootstrap = Vec::new();
                for j in (0..args.validators).filter(|j| *j != i) {
                    let listen = route_port(i, j);
                    proxies.push_str(&format!(
                        "{}>{}\t{listen}\t{}\n",
                        name_of(i),
                        name_of(j),
                        validator_p2p[j as usize]
                    ));
                    bootstrap.push(listen.into());
                }
                P2pSection {
                    listen: p2p,
                    bootstrap,
                    peer_exchange: false,
                    ..P2pSection::default()
                }
            } else {
                P2pSection {
                    listen: p2p,
                    bootstrap: validator_p2p
                        .iter()
                        .copied()
                        .filter(|a| *a != p2p)
                        .map(Into::into)
                        .collect(),
                    ..P2pSection::default()
                }
            },
        );
        write(&home.join("config.toml"), &cfg.to_toml()?)?;
        let abs = std::path::absolute(&home).unwrap_or(home);
        table.push_str(&format!("{name}\t{rpc}\t{p2p}\t{}\n", abs.display()));
    }
    if args.fault_proxy {
        write(&out.join("proxies.tsv"), &proxies)?;
    }
    // Written last: its presence marks a complete testnet.
    write(&out.join("nodes.tsv"), &table)?;
    write(&out.join("genesis.json"), &genesis_json)?;

    println!(
        "Testnet written to {} ({} validators, {} full nodes, chain id {})",
        out.display(),
        args.validators,
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
