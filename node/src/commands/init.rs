//! `grapevine init`: one node's home, for a network whose nodes run on separate hosts.
//! It writes a node key, a validator key and a config; with the network's genesis
//! (a file, or fetched from a running node and checked against a hash the operator
//! got from a source they trust) the node can join at once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use grapevine_ledger::{Genesis, Hash};
use grapevine_rpc::client::Client;
use serde_json::json;

use super::run::{Config, P2pSection, RpcSection};
use super::testnet::{random_key, write};
use crate::keyfile;

/// Flags of `grapevine init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The home directory to write (created; one that holds a config.toml is refused).
    #[arg(long, env = "GRAPEVINE_HOME")]
    home: PathBuf,
    /// The network's genesis file, copied into the home.
    #[arg(long, conflicts_with = "genesis_from")]
    genesis: Option<PathBuf>,
    /// The RPC URL of a running node of the network to fetch the genesis from
    /// (`getGenesis`); needs --genesis-hash.
    #[arg(long, requires = "genesis_hash")]
    genesis_from: Option<String>,
    /// The genesis hash the fetched genesis must have (from a source you trust, such
    /// as the network's operators).
    #[arg(long, requires = "genesis_from")]
    genesis_hash: Option<Hash>,
    /// Peers to keep linked, comma-separated host:port or NODEID@host:port (`[p2p]
    /// bootstrap`).
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<grapevine_net::PeerAddr>,
    /// The host:port other nodes are to dial this one at (`[p2p] external_address`),
    /// when the address it is seen from does not reach it (NAT, containers).
    #[arg(long)]
    external_address: Option<grapevine_net::PeerAddr>,
}

/// The genesis a node fetched from `url` (`getGenesis`), if its hash is `want`.
fn fetch_genesis(url: &str, want: &Hash) -> anyhow::Result<Genesis> {
    let result = Client::new(url, Duration::from_secs(10))
        .call("getGenesis", json!([]))
        .with_context(|| format!("cannot fetch the genesis from {url}"))?;
    let text = serde_json::to_vec(&result["genesis"])?;
    let g = Genesis::from_json(&text)
        .with_context(|| format!("{url} answered getGenesis with an invalid genesis"))?;
    let got = g.hash();
    anyhow::ensure!(
        got == *want,
        "the genesis from {url} has hash {got}, not the expected {want}: refusing it"
    );
    Ok(g)
}

/// Runs `grapevine init`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let home = &args.home;
    anyhow::ensure!(
        args.external_address
            .as_ref()
            .is_none_or(|a| a.id.is_none()),
        "--external-address is host:port, without a node id"
    );
    anyhow::ensure!(
        !home.join("config.toml").exists(),
        "{} already holds a node (config.toml); choose another --home",
        home.display()
    );
    let genesis = match (&args.genesis, &args.genesis_from, &args.genesis_hash) {
        (Some(path), _, _) => Some(Genesis::load(path)?),
        (None, Some(url), Some(hash)) => Some(fetch_genesis(url, hash)?),
        _ => None,
    };
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let node_key = random_key()?;
    let validator_key = random_key()?;
    keyfile::write(&home.join("node-key.json"), &node_key)?;
    keyfile::write(&home.join("validator-key.json"), &validator_key)?;
    // A node joins as a validator only if the genesis names its key; without a genesis
    // yet, its key is meant to go into the one being assembled.
    let validates = genesis
        .as_ref()
        .is_none_or(|g| g.validator_keys().contains(&validator_key.address()));
    if let Some(g) = &genesis {
        write(&home.join("genesis.json"), &g.to_json())?;
    }
    let cfg = Config::for_home(
        validates,
        RpcSection::default(),
        P2pSection {
            bootstrap: args.bootstrap.clone(),
            external_address: args.external_address.clone(),
            ..P2pSection::default()
        },
    );
    write(&home.join("config.toml"), &cfg.to_toml()?)?;
    println!("node id:    {}", node_key.address());
    println!("validator:  {}", validator_key.address());
    match &genesis {
        Some(g) if validates => println!("genesis:    {} (a validator of it)", g.hash()),
        Some(g) => println!(
            "genesis:    {} (a full node: its validator key is not in the genesis)",
            g.hash()
        ),
        None => println!(
            "genesis:    none yet; put {}/genesis.json in place (its validators list the \
             validator addresses above) before `grapevine run`",
            home.display()
        ),
    }
    println!("start it:   grapevine run --home {}", home.display());
    Ok(())
}
