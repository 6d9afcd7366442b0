//! `grapevine bench ledger`: the signature-verification ceiling and block-apply
//! throughput, measured on one core. Reports numbers; never passes or fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use grapevine_ledger::crypto::{sha256, verify, verify_batch, verify_batch_reference};
use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::state::{build_block, validate_block};
use grapevine_ledger::{
    Address, Genesis, Keypair, Ledger, RocksStore, SignedTx, StateView, Transaction,
};
use serde::Serialize;

/// Flags of `grapevine bench ledger`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account counts to measure block application at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    accounts: Vec<u64>,
    /// Transactions per block.
    #[arg(long, default_value_t = 5000)]
    block_txs: usize,
    /// Blocks applied per account count.
    #[arg(long, default_value_t = 10)]
    blocks: usize,
    /// Seconds spent on each signature measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Directory for the temporary RocksDB databases (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object (and nothing else) on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SigReport {
    /// Whether this CPU has AVX-512 IFMA (with VL), where curve25519-dalek's IFMA
    /// backend does the multiscalar multiplication of batch checks (the workspace
    /// compiles it in: `.cargo/config.toml`); otherwise AVX2.
    avx512_ifma: bool,
    sign_per_s: f64,
    verify_per_s: f64,
    batch64_verify_per_s: f64,
    batch256_verify_per_s: f64,
    /// The node's own batch check ([`verify_batch`], signers' keys remembered) by batch
    /// size, 200 signers taking turns as in `grapevine bench --rpc`: microseconds per
    /// signature.
    node_batch_us_per_sig: Vec<BatchCost>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchCost {
    batch: usize,
    us_per_sig: f64,
}

/// Batch sizes [`SigReport::node_batch_us_per_sig`] is measured at.
const NODE_BATCHES: [usize; 7] = [64, 100, 128, 192, 256, 512, 1024];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyReport {
    accounts: u64,
    blocks: usize,
    txs: usize,
    /// Validate (signatures, execution, roots) and commit (synced WriteBatch) a block
    /// of transactions this node has not seen: every signature is checked.
    tx_per_s: f64,
    ms_per_block_p50: f64,
    ms_per_block_max: f64,
    /// The same for a block whose transactions passed this node's mempool: their
    /// signature verdicts are remembered, so this is execution, roots and storage.
    known_tx_per_s: f64,
    known_ms_per_block_p50: f64,
    /// Time to create the ledger's genesis state.
    setup_s: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    cores_used: u32,
    ed25519: SigReport,
    apply: Vec<ApplyReport>,
}

/// Runs `f` repeatedly for about `secs`, returning operations per second, where each
/// call performs `per_call` operations.
fn rate(secs: f64, per_call: usize, mut f: impl FnMut(usize)) -> f64 {
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < deadline {
        f(calls);
        calls += 1;
    }
    (calls * per_call) as f64 / start.elapsed().as_secs_f64()
}

fn sig_bench(secs: f64) -> SigReport {
    let keys: Vec<Keypair> = (0..256u32)
        .map(|i| Keypair::from_seed(&sha256(&[&i.to_le_bytes()]).0))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..256u32).map(|i| vec![i as u8; 107]).collect();
    let sigs: Vec<_> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();

    let sign_per_s = rate(secs, 1, |i| {
        std::hint::black_box(keys[i % 256].sign(&msgs[i % 256]));
    });
    let verify_per_s = rate(secs, 1, |i| {
        assert!(verify(&addrs[i % 256], &msgs[i % 256], &sigs[i % 256]));
    });
    let batch = |n: usize| {
        rate(secs, n, |_| {
            assert!(verify_batch_reference(&refs[..n], &addrs[..n], &sigs[..n]));
        })
    };
    let batch64_verify_per_s = batch(64);
    let batch256_verify_per_s = batch(256);

    let largest = NODE_BATCHES[NODE_BATCHES.len() - 1];
    let signers = &keys[..200];
    let msgs: Vec<Vec<u8>> = (0..largest as u32)
        .map(|i| sha256(&[b"bench message", &i.to_le_bytes()]).0.repeat(3))
        .collect();
    let addrs: Vec<Address> = (0..largest)
        .map(|i| signers[i % signers.len()].address())
        .collect();
    let sigs: Vec<_> = (0..largest)
        .map(|i| signers[i % signers.len()].sign(&msgs[i]))
        .collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let node_batch_us_per_sig = NODE_BATCHES
        .iter()
        .map(|&n| {
            let per_s = rate(secs / 4.0, n, |_| {
                assert!(verify_batch(&refs[..n], &addrs[..n], &sigs[..n]));
            });
            BatchCost {
                batch: n,
                us_per_sig: 1e6 / per_s,
            }
        })
        .collect();
    SigReport {
        avx512_ifma: has_avx512_ifma(),
        sign_per_s,
        verify_per_s,
        batch64_verify_per_s,
        batch256_verify_per_s,
        node_batch_us_per_sig,
    }
}

/// Address of the `i`-th filler account: not a usable key, just a distinct place to
/// send funds, so that large account sets cost no key generation.
fn filler(i: u64) -> Address {
    Address(sha256(&[b"bench filler", &i.to_le_bytes()]).0)
}

fn apply_bench(args: &Args, accounts: u64) -> anyhow::Result<ApplyReport> {
    const SENDERS: usize = 2000;
    let senders: Vec<Keypair> = (0..SENDERS as u32)
        .map(|i| Keypair::from_seed(&sha256(&[b"bench sender", &i.to_le_bytes()]).0))
        .collect();
    let proposer = Keypair::from_seed(&[7; 32]).address();
    let fillers = accounts.saturating_sub(SENDERS as u64);
    let genesis = Genesis {
        chain_id: 1,
        genesis_time_ms: 0,
        accounts: senders
            .iter()
            .map(|k| GenesisAccount {
                address: k.address(),
                balance: 1_000_000_000,
            })
            .chain((0..fillers).map(|i| GenesisAccount {
                address: filler(i),
                balance: 1,
            }))
            .collect(),
        validators: vec![GenesisValidator {
            public_key: proposer,
            network_address: None,
        }],
    };
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("cannot create a temporary directory")?;
    let setup = Instant::now();
    let ledger = Ledger::open(Box::new(RocksStore::open(dir.path())?), &genesis)?;
    let setup_s = setup.elapsed().as_secs_f64();

    // Pre-sign every block's transactions: signing is the client's cost, not ours.
    let mut nonces = vec![0u64; SENDERS];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let blocks: Vec<Vec<SignedTx>> = (0..args.blocks)
        .map(|_| {
            (0..args.block_txs)
                .map(|_| {
                    let s = (next() % SENDERS as u64) as usize;
                    let to = filler(next() % fillers.max(1));
                    nonces[s] += 1;
                    Transaction {
                        chain_id: 1,
                        from: senders[s].address(),
                        to,
                        amount: 1,
                        fee: 1,
                        nonce: nonces[s] - 1,
                    }
                    .sign(&senders[s])
                })
                .collect()
        })
        .collect();

    let mut per_block = Vec::with_capacity(blocks.len());
    let mut per_known_block = Vec::with_capacity(blocks.len());
    for (i, txs) in blocks.into_iter().enumerate() {
        let head = ledger.head();
        // The proposer's side builds the block; the measured side is what every node
        // does with a block it receives: validate it fully, then commit. Validation
        // writes nothing, so it runs twice: for unseen transactions, then for known.
        let (block, _) = build_block(&ledger, 1, &head, proposer, i as u64, 0, txs)?;
        grapevine_ledger::tx::forget_verified();
        let t = Instant::now();
        validate_block(&ledger, 1, &head, &block)?;
        let unseen = t.elapsed();
        let t = Instant::now();
        let exec = validate_block(&ledger, 1, &head, &block)?;
        let known = t.elapsed();
        let t = Instant::now();
        ledger.commit(&block, &[], &exec)?;
        let commit = t.elapsed();
        per_block.push(unseen + commit);
        per_known_block.push(known + commit);
    }
    let applied: Duration = per_block.iter().sum();
    let applied_known: Duration = per_known_block.iter().sum();
    per_block.sort();
    per_known_block.sort();
    let txs = args.blocks * args.block_txs;
    // Sanity: every transaction applied.
    let sender0 = ledger.account(&senders[0].address())?.unwrap_or_default();
    anyhow::ensure!(
        sender0.nonce == nonces[0],
        "benchmark transactions failed to apply"
    );
    Ok(ApplyReport {
        accounts,
        blocks: args.blocks,
        txs,
        tx_per_s: txs as f64 / applied.as_secs_f64(),
        ms_per_block_p50: per_block
            .get(per_block.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        ms_per_block_max: per_block.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        known_tx_per_s: txs as f64 / applied_known.as_secs_f64(),
        known_ms_per_block_p50: per_known_block
            .get(per_known_block.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        setup_s,
    })
}

/// Whether the CPU has what curve25519-dalek's IFMA backend needs (AVX-512 IFMA and VL).
fn has_avx512_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let ed25519 = sig_bench(args.seconds);
    if !args.json {
        println!(
            "ed25519 on one core ({}):",
            if ed25519.avx512_ifma {
                "the CPU has AVX-512 IFMA"
            } else {
                "no AVX-512 IFMA on this CPU"
            }
        );
        println!("  sign            {:>10.0} /s", ed25519.sign_per_s);
        println!("  verify          {:>10.0} /s", ed25519.verify_per_s);
        println!(
            "  batch verify 64 {:>10.0} /s",
            ed25519.batch64_verify_per_s
        );
        println!(
            "  batch verify 256{:>10.0} /s",
            ed25519.batch256_verify_per_s
        );
        let costs: Vec<String> = ed25519
            .node_batch_us_per_sig
            .iter()
            .map(|c| format!("{}: {:.1}", c.batch, c.us_per_sig))
            .collect();
        println!(
            "  node's batch check, 200 signers, us/signature by batch size: {}",
            costs.join(", ")
        );
        println!(
            "block apply (validate + synced commit, one core; transactions unseen / known from the mempool):"
        );
    }
    let mut apply = Vec::new();
    for &n in &args.accounts {
        let r = apply_bench(args, n)?;
        if !args.json {
            println!(
                "  {:>9} accounts: {:>8.0} tx/s unseen, {:>8.0} tx/s known  (block of {} txs: p50 {:.1} / {:.1} ms; setup {:.1} s)",
                r.accounts,
                r.tx_per_s,
                r.known_tx_per_s,
                args.block_txs,
                r.ms_per_block_p50,
                r.known_ms_per_block_p50,
                r.setup_s
            );
        }
        apply.push(r);
    }
    if args.json {
        let report = Report {
            cores_used: 1,
            ed25519,
            apply,
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
