//! Wallet commands against any node's JSON-RPC: balance, transfer, sign, tx, block,
//! status.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use grapevine_ledger::{Address, Transaction};
use serde_json::{Value, json};

use grapevine_rpc::client::Client;

use crate::keyfile;

/// The RPC endpoint flag shared by the wallet commands.
#[derive(Debug, clap::Args)]
pub struct Rpc {
    /// The node's JSON-RPC URL.
    #[arg(long, env = "GRAPEVINE_RPC", default_value = "http://127.0.0.1:7545")]
    rpc: String,
}

/// Calls `method` and returns its result, or the node's error as one line.
fn call(rpc: &Rpc, method: &str, params: Value) -> anyhow::Result<Value> {
    Ok(Client::new(&rpc.rpc, Duration::from_secs(30)).call(method, params)?)
}

/// Prints a line; a closed stdout (`grapevine tx … | head`) is not an error.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn print_json(v: &Value) {
    out(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn parse_u64(v: &Value, what: &str) -> anyhow::Result<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .ok_or_else(|| anyhow::anyhow!("the node sent a malformed {what}"))
}

/// `grapevine balance ADDR`.
pub fn balance(rpc: &Rpc, address: &Address) -> anyhow::Result<()> {
    let b = call(rpc, "getBalance", json!([address.to_string()]))?;
    out(&parse_u64(&b, "balance")?.to_string());
    Ok(())
}

/// `grapevine status`, `grapevine tx HASH`, `grapevine block [HEIGHT]`: print the
/// result.
pub fn show(rpc: &Rpc, method: &str, params: Value) -> anyhow::Result<()> {
    print_json(&call(rpc, method, params)?);
    Ok(())
}

/// `grapevine health`: prints the node's `/health` answer; an error (exit status 1)
/// unless it is 200.
pub fn health(url: &str) -> anyhow::Result<()> {
    let (status, body) = Client::new(url, Duration::from_secs(5)).get("/health")?;
    let body = body.trim();
    if status != 200 {
        bail!("{url} is not healthy (HTTP {status}): {body}");
    }
    println!("{body}");
    Ok(())
}

/// Flags of `grapevine transfer`.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    #[command(flatten)]
    rpc: Rpc,
    /// The sender's key file.
    #[arg(long)]
    key: PathBuf,
    /// The recipient's address.
    #[arg(long)]
    to: Address,
    /// Amount to send.
    #[arg(long)]
    amount: u64,
    /// Fee for the block proposer.
    #[arg(long, default_value_t = 1)]
    fee: u64,
    /// Nonce (default: the account's pendingNonce from the node).
    #[arg(long)]
    nonce: Option<u64>,
    /// Wait until the transaction is final and print its receipt.
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// `grapevine transfer`.
pub fn transfer(a: &TransferArgs) -> anyhow::Result<()> {
    let key = keyfile::read(&a.key)?;
    let status = call(&a.rpc, "getStatus", json!([]))?;
    let chain_id = status
        .get("chainId")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| anyhow::anyhow!("the node sent no chain id"))?;
    let nonce = match a.nonce {
        Some(n) => n,
        None => {
            let acct = call(&a.rpc, "getAccount", json!([key.address().to_string()]))?;
            parse_u64(&acct["pendingNonce"], "pendingNonce")?
        }
    };
    let signed = Transaction {
        chain_id,
        from: key.address(),
        to: a.to,
        amount: a.amount,
        fee: a.fee,
        nonce,
    }
    .sign(&key);
    let hash = call(
        &a.rpc,
        "sendTransaction",
        json!([hex::encode(signed.to_bytes())]),
    )?;
    let hash = hash.as_str().unwrap_or_default().to_string();
    out(&hash);
    if !a.wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let info = call(&a.rpc, "getTransaction", json!([hash]))?;
        match info["status"].as_str().unwrap_or("") {
            "finalized" => {
                print_json(&info);
                if info["receipt"]["status"] == "success" {
                    return Ok(());
                }
                bail!(
                    "transaction failed: {}",
                    info["receipt"]["reason"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                );
            }
            s @ ("rejected" | "evicted" | "expired") => {
                bail!(
                    "transaction {s}: {}",
                    info["reason"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                );
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("transaction {hash} not final after {} s", a.timeout);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flags of `grapevine sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The sender's key file.
    #[arg(long)]
    key: PathBuf,
    /// The recipient's address.
    #[arg(long)]
    to: Address,
    /// Amount to send.
    #[arg(long)]
    amount: u64,
    /// Fee for the block proposer.
    #[arg(long)]
    fee: u64,
    /// The sender's nonce.
    #[arg(long)]
    nonce: u64,
    /// The chain id.
    #[arg(long)]
    chain_id: u32,
}

/// `grapevine sign`: prints the signed transaction's hex, offline.
pub fn sign(a: &SignArgs) -> anyhow::Result<()> {
    let key = keyfile::read(&a.key)?;
    let signed = Transaction {
        chain_id: a.chain_id,
        from: key.address(),
        to: a.to,
        amount: a.amount,
        fee: a.fee,
        nonce: a.nonce,
    }
    .sign(&key);
    out(&hex::encode(signed.to_bytes()));
    Ok(())
}
