//! `grapevine bench --rpc URL[,URL…] --accounts FILE`: a load generator over JSON-RPC.
//!
//! It creates and funds sender accounts from the given funded accounts, signs every
//! transfer before the clock starts, submits them in JSON-RPC batches over several
//! connections spread across the nodes (each sender always to the same node, so its
//! nonces arrive in order), at a target rate or as fast as the nodes take them, and
//! follows finality by reading each new block. It reports submitted, accepted,
//! finalized, refusals by reason, the sustained finalized rate and finality latency
//! (submission to the first sight of the block holding it) percentiles. Transfers a
//! node refuses as `busy` (its admission backpressure) are sent again after 20 ms, as a
//! client should, and their latency counts from the first attempt.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use grapevine_ledger::tx::SIGNED_TX_LEN;
use grapevine_ledger::{Address, Hash, Keypair, SignedTx, Transaction};
use grapevine_rpc::client::Client;
use serde_json::{Value, json};

/// Most requests in one JSON-RPC batch (the server's limit).
const MAX_BATCH: usize = grapevine_rpc::jsonrpc::MAX_BATCH;
/// How long finality is followed after the load ends.
const DRAIN: Duration = Duration::from_secs(30);
/// Pause before sending again what a node refused as `busy`.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// Flags of `grapevine bench` (the RPC load generator).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes' JSON-RPC URLs, comma-separated; senders are spread over them.
    #[arg(long, value_delimiter = ',')]
    rpc: Vec<String>,
    /// Funded accounts to fund the senders from (a testnet's accounts.json or a dev
    /// node's dev-accounts.json).
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// Transfers submitted per second (0: as fast as the nodes take them). Transfers
    /// refused as `busy` are sent again after 20 ms.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Sender accounts to create and fund (each may have 1,000 transfers pooled). Each
    /// connection sends the transfers of its share of them, interleaved, so a JSON-RPC
    /// batch mixes min(batch, senders / connections) senders: fewer distinct senders
    /// make the nodes' signature checks cheaper (docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 200)]
    senders: usize,
    /// Parallel submission connections, spread over the nodes. Each waits for the
    /// answer to its batch before sending the next; when answers are slow, fewer
    /// transfers go out than `--rate` asks for, and the report says so.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Transfers per JSON-RPC batch (1 to 1000). Larger batches cost the nodes less per
    /// transfer: a node checks a batch's signatures together, and its peers check them
    /// together again when it relays them (docs/PERFORMANCE.md, "grapevine bench --rpc").
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also print one JSON object with the results as the last line.
    #[arg(long)]
    json: bool,
}

fn client(url: &str) -> Client {
    Client::new(url, Duration::from_secs(30))
}

fn call(client: &Client, method: &str, params: Value) -> anyhow::Result<Value> {
    client
        .call(method, params)
        .with_context(|| format!("{method} on {}", client.url()))
}

fn u64_of(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// One answer of a JSON-RPC batch: the fields the load generator reads.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    id: Value,
    error: Option<Value>,
}

/// Submits `txs` as one JSON-RPC batch; returns per transfer `None` (accepted) or the
/// refusal's reason.
fn submit(client: &Client, txs: &[SignedTx]) -> Vec<Option<String>> {
    use std::fmt::Write;
    // Written out, and the answers read into a struct, rather than built and parsed
    // as JSON trees: the load generator shares the cores with the nodes it measures,
    // and the trees would be most of its CPU.
    let mut body = String::with_capacity(txs.len() * (2 * SIGNED_TX_LEN + 80) + 2);
    body.push('[');
    for (i, t) in txs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"jsonrpc":"2.0","id":{i},"method":"sendTransaction","params":["{}"]}}"#,
            hex::encode(t.to_bytes())
        );
    }
    body.push(']');
    let Ok((_, answer)) = client.post_bytes(body.as_bytes()) else {
        return vec![Some("unreachable".into()); txs.len()];
    };
    let mut out = vec![Some("noAnswer".to_string()); txs.len()];
    let answers: Vec<Answer> = serde_json::from_slice(&answer).unwrap_or_default();
    for a in answers {
        let Some(i) = a.id.as_u64().map(|i| i as usize).filter(|i| *i < txs.len()) else {
            continue;
        };
        out[i] = a.error.map(|e| {
            e["data"]["reason"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("code {}", e["code"]))
        });
    }
    out
}

fn load_funders(path: &PathBuf) -> anyhow::Result<Vec<Keypair>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    v.as_array()
        .context("the accounts file is a JSON list")?
        .iter()
        .map(|a| {
            let s = a["secretKey"]
                .as_str()
                .context("an account without secretKey")?;
            Keypair::from_secret_hex(s).map_err(|e| anyhow::anyhow!("bad secretKey: {e}"))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates `n` senders and funds each from the funders; waits until all are funded.
fn fund_senders(
    client: &Client,
    chain_id: u32,
    funders: &[Keypair],
    n: usize,
    each: u64,
) -> anyhow::Result<Vec<Keypair>> {
    let senders: Vec<Keypair> = (0..n)
        .map(|_| Keypair::generate().context("the operating system's random source failed"))
        .collect::<anyhow::Result<_>>()?;
    let mut nonces = Vec::new();
    for f in funders {
        let acct = call(client, "getAccount", json!([f.address().to_string()]))?;
        nonces.push(u64_of(&acct["pendingNonce"]));
    }
    let mut txs = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let fi = i % funders.len();
        let t = Transaction {
            chain_id,
            from: funders[fi].address(),
            to: s.address(),
            amount: each,
            fee: 1,
            nonce: nonces[fi],
        }
        .sign(&funders[fi]);
        nonces[fi] += 1;
        txs.push(t);
    }
    for chunk in txs.chunks(MAX_BATCH) {
        for (t, r) in chunk.iter().zip(submit(client, chunk)) {
            if let Some(why) = r {
                bail!("funding transfer {} refused: {why}", t.hash());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for t in &txs {
        loop {
            let st = call(client, "getTransaction", json!([t.hash().to_string()]))?;
            if st["status"] == "finalized" {
                break;
            }
            if Instant::now() > deadline {
                bail!("funding the senders did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(senders)
}

/// Runs the load and prints the report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.rpc.is_empty(), "give the nodes with --rpc URL[,URL…]");
    let accounts = args
        .accounts
        .as_ref()
        .context("give funded accounts with --accounts FILE (accounts.json)")?;
    anyhow::ensure!(
        (1..=MAX_BATCH).contains(&args.batch),
        "--batch must be 1 to {MAX_BATCH}"
    );
    anyhow::ensure!(
        args.senders > 0 && args.connections > 0,
        "--senders and --connections must be positive"
    );
    let first = &args.rpc[0];
    let first_client = client(first);
    let status = call(&first_client, "getStatus", json!([]))?;
    let chain_id = u32::try_from(status["chainId"].as_u64().unwrap_or(0))?;
    let funders = load_funders(accounts)?;
    anyhow::ensure!(!funders.is_empty(), "the accounts file lists no accounts");

    let total = if args.rate > 0 {
        args.rate * args.duration
    } else {
        // As fast as taken: more than a node finalizes in that time.
        (60_000 * args.duration).min(3_000_000)
    };
    let per_sender = total.div_ceil(args.senders as u64);
    eprintln!(
        "bench: funding {} senders on chain {chain_id} from {} accounts",
        args.senders,
        funders.len()
    );
    let senders = fund_senders(
        &first_client,
        chain_id,
        &funders,
        args.senders,
        per_sender * 10 + 1_000,
    )?;

    eprintln!("bench: signing {total} transfers");
    let sink = Address([0x5a; 32]);
    let conns = args.connections;
    // Connection c sends the transfers of the senders s with s % conns == c, in
    // nonce order, to node c % nodes.
    let mut lanes: Vec<Vec<SignedTx>> = vec![Vec::new(); conns];
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<Vec<(usize, Vec<SignedTx>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let senders = &senders;
                s.spawn(move || {
                    (0..senders.len())
                        .filter(|i| i % threads == t)
                        .map(|i| {
                            let k = &senders[i];
                            let txs = (0..per_sender)
                                .map(|n| {
                                    Transaction {
                                        chain_id,
                                        from: k.address(),
                                        to: sink,
                                        amount: 1,
                                        fee: 1,
                                        nonce: n,
                                    }
                                    .sign(k)
                                })
                                .collect();
                            (i, txs)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut by_sender: Vec<Vec<SignedTx>> = vec![Vec::new(); senders.len()];
    for (i, txs) in chunks.into_iter().flatten() {
        by_sender[i] = txs;
    }
    // Interleave each lane's senders by nonce so every sender advances together.
    for (c, lane) in lanes.iter_mut().enumerate() {
        let mine: Vec<&Vec<SignedTx>> = by_sender
            .iter()
            .enumerate()
            .filter(|(i, _)| i % conns == c)
            .map(|(_, t)| t)
            .collect();
        for n in 0..per_sender as usize {
            for txs in &mine {
                if let Some(t) = txs.get(n) {
                    lane.push(*t);
                }
            }
        }
    }

    let sent_at: Arc<Mutex<HashMap<Hash, Instant>>> = Arc::default();
    let submitted = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let busy_retries = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let behind = AtomicBool::new(false);
    let start_height = u64_of(&call(&first_client, "getStatus", json!([]))?["height"]);

    // Finality: read each new block from the first node.
    let follower = {
        let (sent_at, done, first) = (sent_at.clone(), done.clone(), first.clone());
        std::thread::spawn(move || -> (Vec<(Instant, f64)>, u64) {
            let node = client(&first);
            let mut next = start_height + 1;
            let mut lat = Vec::new();
            let mut stop_at: Option<Instant> = None;
            loop {
                let h = call(&node, "getStatus", json!([]))
                    .map(|s| u64_of(&s["height"]))
                    .unwrap_or(0);
                while next <= h {
                    let Ok(b) = call(&node, "getBlock", json!([next.to_string(), false])) else {
                        break;
                    };
                    let now = Instant::now();
                    let map = sent_at.lock().unwrap_or_else(|p| p.into_inner());
                    for th in b["txHashes"].as_array().into_iter().flatten() {
                        if let Some(at) = th
                            .as_str()
                            .and_then(|s| s.parse::<Hash>().ok())
                            .and_then(|h| map.get(&h))
                        {
                            lat.push((now, now.duration_since(*at).as_secs_f64() * 1000.0));
                        }
                    }
                    drop(map);
                    next += 1;
                }
                if done.load(Ordering::Relaxed) {
                    let pending = sent_at.lock().map(|m| m.len()).unwrap_or(0);
                    let until = *stop_at.get_or_insert_with(|| Instant::now() + DRAIN);
                    if lat.len() >= pending || Instant::now() > until {
                        return (lat, next - 1);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    eprintln!(
        "bench: submitting for {} s {} over {conns} connections to {} node(s)",
        args.duration,
        if args.rate > 0 {
            format!("at {} tx/s", args.rate)
        } else {
            "as fast as accepted".into()
        },
        args.rpc.len()
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    std::thread::scope(|s| {
        for (c, lane) in lanes.iter().enumerate() {
            let url = args.rpc[c % args.rpc.len()].clone();
            let (sent_at, submitted, accepted, refused, busy_retries, behind) = (
                &sent_at,
                &submitted,
                &accepted,
                &refused,
                &busy_retries,
                &behind,
            );
            let per_conn_rate = args.rate as f64 / conns as f64;
            let batch = args.batch;
            s.spawn(move || {
                let node = client(&url);
                for (k, chunk) in lane.chunks(batch).enumerate() {
                    let now = Instant::now();
                    if now >= end {
                        // Transfers still due before the end were held back by slow
                        // answers (a lane that ran out of transfers is not behind).
                        if per_conn_rate > 0.0
                            && (k * batch) as f64 / per_conn_rate < args.duration as f64
                        {
                            behind.store(true, Ordering::Relaxed);
                        }
                        break;
                    }
                    if per_conn_rate > 0.0 {
                        let due =
                            start + Duration::from_secs_f64((k * batch) as f64 / per_conn_rate);
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    let t0 = Instant::now();
                    {
                        let mut m = sent_at.lock().unwrap_or_else(|p| p.into_inner());
                        for t in chunk {
                            m.insert(t.hash(), t0);
                        }
                    }
                    submitted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    // A `busy` refusal is the node's backpressure: like a real client,
                    // send the same transactions again shortly (their latency still
                    // counts from the first attempt) rather than skip their nonces.
                    let mut todo = chunk.to_vec();
                    while !todo.is_empty() {
                        let results = submit(&node, &todo);
                        let mut again = Vec::new();
                        let mut m = sent_at.lock().unwrap_or_else(|p| p.into_inner());
                        let mut r = refused.lock().unwrap_or_else(|p| p.into_inner());
                        for (t, res) in todo.iter().zip(results) {
                            match res {
                                None => {
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(why) if why == "busy" && Instant::now() < end => {
                                    again.push(*t);
                                }
                                Some(why) => {
                                    m.remove(&t.hash());
                                    *r.entry(why).or_default() += 1;
                                }
                            }
                        }
                        drop((m, r));
                        if !again.is_empty() {
                            busy_retries.fetch_add(again.len() as u64, Ordering::Relaxed);
                            std::thread::sleep(BUSY_RETRY);
                        }
                        todo = again;
                    }
                }
            });
        }
    });
    let load_secs = start
        .elapsed()
        .as_secs_f64()
        .min(args.duration as f64)
        .max(0.001);
    done.store(true, Ordering::Relaxed);
    let (lat, end_height) = follower
        .join()
        .map_err(|_| anyhow::anyhow!("the follower panicked"))?;

    let finalized = lat.len() as u64;
    let in_window = lat
        .iter()
        .filter(|(at, _)| at.duration_since(start).as_secs_f64() <= load_secs)
        .count() as f64;
    let tps = in_window / load_secs;
    let mut ms: Vec<f64> = lat.iter().map(|(_, l)| *l).collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p90, p99) = (
        percentile(&ms, 0.50),
        percentile(&ms, 0.90),
        percentile(&ms, 0.99),
    );
    let max = ms.last().copied().unwrap_or(0.0);
    let refused = refused.lock().map(|r| r.clone()).unwrap_or_default();
    let (submitted, accepted) = (
        submitted.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
    );
    let busy_retries = busy_retries.load(Ordering::Relaxed);
    let sent_per_s = submitted as f64 / load_secs;
    println!("submitted   {submitted}");
    println!("accepted    {accepted}");
    if busy_retries > 0 {
        println!("resent      {busy_retries} (refused as busy, sent again)");
    }
    println!(
        "finalized   {finalized} (blocks {}..={end_height})",
        start_height + 1
    );
    for (why, n) in &refused {
        println!("refused     {n} {why}");
    }
    println!("finalized/s {tps:.0} over the {load_secs:.1} s of load");
    if behind.load(Ordering::Relaxed) && sent_per_s < 0.95 * args.rate as f64 {
        // The connections wait for answers: slow ones hold back what is sent.
        println!(
            "fell behind: sent {sent_per_s:.0}/s of the {}/s asked for (try more --connections)",
            args.rate
        );
    }
    println!(
        "latency ms  p50 {p50:.0}  p90 {p90:.0}  p99 {p99:.0}  max {max:.0}  (submission to final)"
    );
    if args.json {
        let j = json!({
            "submitted": submitted,
            "accepted": accepted,
            "finalized": finalized,
            "rejected": refused,
            "busyRetries": busy_retries,
            "tps": (tps * 10.0).round() / 10.0,
            "latency_ms": {"p50": p50.round(), "p90": p90.round(), "p99": p99.round(), "max": max.round()},
            "duration_s": (load_secs * 10.0).round() / 10.0,
            "rate": args.rate,
            "sentPerS": sent_per_s.round(),
            "fellBehind": behind.load(Ordering::Relaxed),
            "nodes": args.rpc.len(),
        });
        println!("{j}");
    }
    Ok(())
}
