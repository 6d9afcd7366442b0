//! A Byzantine validator, end to end: it does not stop the others, and what they hold
//! for it stays bounded.
//!
//! A 4-validator testnet runs three honest `grapevine run` validators; the test plays
//! the fourth with its real key (`tests/src/adversary.rs`), linked as a peer to each of
//! the others, and sends as fast as the links take them:
//!
//! - 10,000 signed proposals for random rounds it leads (up to twice the engine's
//!   window ahead) at random heights (up to twice the height window), each certified by
//!   the genesis QC (a real certificate, so the signature and certificate checks pass;
//!   the engine drops them as extending a block older than the final one);
//! - 100,000 signed votes for random block hashes in the current rounds.
//!
//! It shows that the honest validators keep finalizing blocks during and after the
//! flood; that their kept proposals stay within the documented bound (and hold none of
//! the flood: nothing of it checks); that their memory stays under 1 GiB; that the
//! equivocating votes are counted as evidence; and that a validator restarted after the
//! flood starts and finalizes again. Bounded (about a minute), only 127.0.0.1; prints
//! what it measured.

use std::time::{Duration, Instant};

use grapevine_ledger::Hash;
use grapevine_tests::adversary::{Byzantine, Chain, flood};
use grapevine_tests::{NodeProcess, eventually, generate_testnet, get_within, p2p_address};

const PROPOSALS: usize = 10_000;
const VOTES: usize = 100_000;
/// The engine's windows (consensus/src/engine.rs: MAX_ROUNDS_AHEAD, MAX_HEIGHTS_AHEAD).
const WINDOW: u64 = 1_000;
/// node/src/driver/kept.rs: MAX_KEPT_BYTES.
const MAX_KEPT_BYTES: f64 = 512.0 * 1024.0 * 1024.0;
/// Resident memory an honest validator stays under (it holds a few MiB of chain here;
/// RocksDB's caches and the flood's bounded buffers are the rest).
const MAX_RSS_BYTES: u64 = 1 << 30;
/// The flood's time limit.
const FLOOD_LIMIT: Duration = Duration::from_secs(90);

/// A metric's value from a node's `/metrics` (summed over its label sets), if present.
fn metric(node: &NodeProcess, name: &str) -> Option<f64> {
    let (_, text) = get_within(&format!("{}/metrics", node.rpc), Duration::from_secs(5))?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The node's resident memory in bytes (Linux).
fn rss(node: &NodeProcess) -> u64 {
    let pid = node.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_byzantine_validator_flooding_proposals_and_votes_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet(&out, 4, 0, 2);
    // validator0 is the adversary: its node never runs.
    let mut honest: Vec<Option<NodeProcess>> = names[1..]
        .iter()
        .map(|n| Some(NodeProcess::run(&out.join(n))))
        .collect();
    fn all(honest: &[Option<NodeProcess>]) -> Vec<&NodeProcess> {
        honest.iter().flatten().collect()
    }
    assert!(
        eventually(Duration::from_secs(90), || all(&honest)
            .iter()
            .all(|n| n.height() >= 3)),
        "three of four validators finalize blocks"
    );
    let first = all(&honest)[0];
    let chain = Chain::of(first);
    let genesis_block: Hash = first.block(0)["hash"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .expect("block 0 has a hash");
    let head = first.block(first.height());
    let round: u64 = head["header"]["round"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("a block's round");
    let before: Vec<u64> = all(&honest).iter().map(|n| n.height()).collect();

    // One link per honest validator, each sending the whole flood.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let deadline = started + FLOOD_LIMIT;
    let reports = runtime.block_on(async {
        let mut tasks = Vec::new();
        for (i, name) in names[1..].iter().enumerate() {
            let addr = p2p_address(&out, name);
            let mut byz = Byzantine::from_testnet(&out, &names[0], 1 + i as u64);
            let height = before[i];
            let mut sent = 0usize;
            let messages = std::iter::from_fn(move || {
                sent += 1;
                if sent <= PROPOSALS {
                    Some(byz.random_proposal(genesis_block, round, 2 * WINDOW, height + 2 * WINDOW))
                } else if sent <= PROPOSALS + VOTES {
                    // The current round and the next few: all within the window.
                    let r = round + (sent % 8) as u64;
                    Some(byz.random_vote(r))
                } else {
                    None
                }
            });
            tasks.push(tokio::spawn(flood(addr, chain, messages, deadline)));
        }
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await.expect("flood task"));
        }
        reports
    });
    let flood_time = started.elapsed();
    let during: Vec<u64> = all(&honest).iter().map(|n| n.height()).collect();
    let kept: Vec<f64> = all(&honest)
        .iter()
        .map(|n| metric(n, "grapevine_consensus_kept_proposal_bytes").unwrap_or(-1.0))
        .collect();
    let equivocations: Vec<f64> = all(&honest)
        .iter()
        .map(|n| metric(n, "grapevine_consensus_equivocations_total").unwrap_or(0.0))
        .collect();
    let memory: Vec<u64> = all(&honest).iter().map(|n| rss(n)).collect();
    println!(
        "flood: {:.1} s; per link {:?}; heights before {before:?}, after {during:?}; kept \
         proposal bytes {kept:?}; equivocations counted {equivocations:?}; RSS MiB {:?}",
        flood_time.as_secs_f64(),
        reports,
        memory.iter().map(|m| m >> 20).collect::<Vec<_>>()
    );
    for r in &reports {
        assert!(
            r.sent as usize >= PROPOSALS,
            "the flood reached the node (at least every proposal was written): {r:?}"
        );
    }
    assert!(
        during.iter().zip(&before).all(|(a, b)| *a >= b + 3),
        "every honest validator finalized during the flood: {before:?} -> {during:?}"
    );
    assert!(
        kept.iter().all(|k| (0.0..=MAX_KEPT_BYTES).contains(k)),
        "kept proposals within their bound: {kept:?}"
    );
    assert!(
        kept.iter().all(|k| *k < 1024.0 * 1024.0),
        "none of the flood was kept (it never checks): {kept:?}"
    );
    assert!(
        memory.iter().all(|m| *m > 0 && *m < MAX_RSS_BYTES),
        "memory under 1 GiB: {memory:?}"
    );
    assert!(
        equivocations.iter().any(|e| *e > 0.0),
        "the conflicting votes were recorded as evidence: {equivocations:?}"
    );

    // A validator restarted after the flood starts and finalizes again.
    let n = honest[0].take().unwrap();
    assert!(n.stop(), "stops cleanly");
    honest[0] = Some(NodeProcess::run(&out.join(&names[1])));
    let target = all(&honest).iter().map(|n| n.height()).max().unwrap_or(0) + 3;
    assert!(
        eventually(Duration::from_secs(90), || all(&honest)
            .iter()
            .all(|n| n.height() >= target)),
        "all three finalize after the restart"
    );
    for n in honest.into_iter().flatten() {
        assert!(n.stop(), "a node stops cleanly on SIGTERM");
    }
}
