//! Chaos: a steady load of transfers on 4 `grapevine run` validators (links through
//! `gv-proxy`) while validators are killed and restarted, paused and resumed, and the
//! network is partitioned and healed, at random from a printed seed.
//!
//! At the end (everything healed and running): every transfer any node reported final
//! is final on every node, all nodes have the same block and state root at the same
//! height, and total supply is unchanged. Prints a summary: transfers final, faults
//! injected, the longest time without a new final block.
//!
//! `GRAPEVINE_CHAOS_SECS` (default 40) sets how long faults are injected;
//! `GRAPEVINE_CHAOS_SEED` replays a seed. `scripts/chaos.sh DURATION` runs it long.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use grapevine_ledger::seeded::SeededRng;
use grapevine_ledger::{Address, Keypair, SignedTx, Transaction};
use grapevine_tests::{
    FaultProxy, NodeProcess, account_keys, eventually, generate_testnet_with, set_consensus_option,
};
use serde_json::{Value, json};

const CHAIN: u32 = 4242;
const VALIDATORS: usize = 4;
const SENDERS: usize = 6;

/// One sender: a transfer at a time; re-sent (same bytes) until some node says final.
struct Sender {
    key: Keypair,
    nonce: u64,
    current: Option<(SignedTx, Instant)>,
}

fn status_of(n: &NodeProcess, hash: &str) -> Option<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getTransaction", "params": [hash]});
    let (code, v) = grapevine_tests::try_post_json(&n.rpc, &body.to_string())?;
    (code == 200).then(|| v?.get("result").cloned()).flatten()
}

fn balance(n: &NodeProcess, a: &Address) -> u64 {
    n.result("getBalance", json!([a.to_string()]))
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[derive(Default, Debug)]
struct Faults {
    kills: u32,
    pauses: u32,
    partitions: u32,
}

#[test]
fn a_loaded_network_survives_random_faults_and_converges() {
    let secs: u64 = std::env::var("GRAPEVINE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("GRAPEVINE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!(
        "chaos: seed {seed} (GRAPEVINE_CHAOS_SEED={seed} replays the fault schedule), {secs} s of faults"
    );
    let mut rng = SeededRng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet_with(
        &out,
        VALIDATORS as u16,
        0,
        SENDERS as u16,
        &["--fault-proxy"],
    );
    set_consensus_option(&out, &names, "idle_block_ms", 200);
    set_consensus_option(&out, &names, "base_timeout_ms", 1000);
    set_consensus_option(&out, &names, "max_timeout_ms", 4000);
    let genesis: Value =
        serde_json::from_slice(&std::fs::read(out.join("genesis.json")).unwrap()).unwrap();
    let supply: u128 = genesis["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["balance"].as_str().unwrap().parse::<u128>().unwrap())
        .sum();
    let validator_addrs: Vec<Address> = genesis["validators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["publicKey"].as_str().unwrap().parse().unwrap())
        .collect();

    let proxy = FaultProxy::start(&out);
    let mut nodes: Vec<Option<NodeProcess>> = names
        .iter()
        .map(|n| Some(NodeProcess::run(&out.join(n))))
        .collect();
    assert!(eventually(Duration::from_secs(60), || nodes
        .iter()
        .flatten()
        .all(|n| n.height() >= 2)));

    let sink = Keypair::from_seed(&[77; 32]).address();
    let mut senders: Vec<Sender> = account_keys(&out)
        .into_iter()
        .map(|key| Sender {
            key,
            nonce: 0,
            current: None,
        })
        .collect();
    let mut finals: Vec<String> = Vec::new();
    let mut faults = Faults::default();
    let mut paused: Option<usize> = None;
    let mut down: Option<(usize, Instant)> = None;
    let mut partitioned_until: Option<Instant> = None;
    let mut next_fault = Instant::now() + Duration::from_secs(2);
    let kind_offset = rng.below(3) as u32;
    let mut best_height = 0u64;
    let mut best_at = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(secs);

    while Instant::now() < end {
        let now = Instant::now();
        // Load: each sender's transfer, to a random running node, until final.
        for s in &mut senders {
            let live: Vec<usize> = (0..VALIDATORS)
                .filter(|i| nodes[*i].is_some() && paused != Some(*i))
                .collect();
            let node = nodes[live[rng.below(live.len() as u64) as usize]]
                .as_ref()
                .unwrap();
            match &s.current {
                None => {
                    let t = Transaction {
                        chain_id: CHAIN,
                        from: s.key.address(),
                        to: sink,
                        amount: 1 + rng.below(5),
                        fee: 1,
                        nonce: s.nonce,
                    }
                    .sign(&s.key);
                    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                                      "params": [hex::encode(t.to_bytes())]});
                    let _ = grapevine_tests::try_post_json(&node.rpc, &body.to_string());
                    s.current = Some((t, now));
                }
                Some((t, sent)) => {
                    let h = t.hash().to_string();
                    let st = status_of(node, &h);
                    if st.as_ref().is_some_and(|v| v["status"] == "finalized") {
                        finals.push(h);
                        s.nonce += 1;
                        s.current = None;
                    } else if now.duration_since(*sent) > Duration::from_secs(3) {
                        // Lost with a killed node, or never gossiped: send it again.
                        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                                          "params": [hex::encode(t.to_bytes())]});
                        let _ = grapevine_tests::try_post_json(&node.rpc, &body.to_string());
                        s.current = Some((*t, now));
                    }
                }
            }
        }
        // Liveness: the longest time the highest final height did not move.
        let top = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.is_some() && paused != Some(*i))
            .filter_map(|(_, n)| {
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getStatus"});
                let (_, v) = grapevine_tests::try_post_json(&n.as_ref()?.rpc, &body.to_string())?;
                v?["result"]["height"].as_str()?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        if top > best_height {
            longest_stall = longest_stall.max(now.duration_since(best_at));
            best_height = top;
            best_at = now;
        }
        // Faults: one at a time, each undone before the next.
        if let Some((i, since)) = down
            && now.duration_since(since) > Duration::from_secs(2 + rng.below(4))
        {
            nodes[i] = Some(NodeProcess::run(&out.join(&names[i])));
            down = None;
        }
        if partitioned_until.is_some_and(|t| now >= t) {
            proxy.heal();
            partitioned_until = None;
        }
        if now >= next_fault && down.is_none() && partitioned_until.is_none() {
            if let Some(i) = paused.take() {
                nodes[i].as_ref().unwrap().signal("CONT");
            } else {
                let victim = rng.below(VALIDATORS as u64) as usize;
                // Kinds take turns from a random start, so even a short run has each.
                let kind = (kind_offset + faults.kills + faults.pauses + faults.partitions) % 3;
                match kind {
                    0 => {
                        nodes[victim].take().unwrap().kill();
                        down = Some((victim, now));
                        faults.kills += 1;
                    }
                    1 => {
                        nodes[victim].as_ref().unwrap().signal("STOP");
                        paused = Some(victim);
                        faults.pauses += 1;
                    }
                    _ => {
                        let mut order: Vec<&str> = names.iter().map(String::as_str).collect();
                        for k in (1..order.len()).rev() {
                            order.swap(k, rng.below(k as u64 + 1) as usize);
                        }
                        let cut = 1 + rng.below(2) as usize; // 1|3 or 2|2
                        proxy.partition(&[&order[..cut], &order[cut..]]);
                        partitioned_until = Some(now + Duration::from_secs(2 + rng.below(4)));
                        faults.partitions += 1;
                    }
                }
            }
            next_fault = now + Duration::from_secs(2 + rng.below(3));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Undo everything, then the network must converge.
    proxy.heal();
    if let Some(i) = paused.take() {
        nodes[i].as_ref().unwrap().signal("CONT");
    }
    if let Some((i, _)) = down.take() {
        nodes[i] = Some(NodeProcess::run(&out.join(&names[i])));
    }
    let nodes: Vec<NodeProcess> = nodes.into_iter().map(Option::unwrap).collect();
    let target = nodes.iter().map(NodeProcess::height).max().unwrap();
    assert!(
        eventually(Duration::from_secs(120), || nodes
            .iter()
            .all(|n| n.height() > target)),
        "every node finalizes past the height reached under faults ({target})"
    );
    let unique: HashSet<&String> = finals.iter().collect();
    for h in &unique {
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(
                n.result("getTransaction", json!([h]))["status"],
                "finalized",
                "transfer {h}, reported final, is final on node {i} (seed {seed})"
            );
        }
    }
    let h = nodes.iter().map(NodeProcess::height).min().unwrap();
    let blocks: Vec<Value> = nodes.iter().map(|n| n.block(h)).collect();
    for b in &blocks {
        assert_eq!(
            b["hash"], blocks[0]["hash"],
            "same block at {h} (seed {seed})"
        );
        assert_eq!(b["header"]["stateRoot"], blocks[0]["header"]["stateRoot"]);
    }
    // Supply: genesis accounts, the sink and the proposers (fees) hold it all.
    let mut holders: BTreeMap<Address, ()> = BTreeMap::new();
    for s in &senders {
        holders.insert(s.key.address(), ());
    }
    holders.insert(sink, ());
    for v in &validator_addrs {
        holders.insert(*v, ());
    }
    let n0 = &nodes[0];
    // Read at one height: wait until node 0 is idle between blocks is not needed, the
    // balances are read from its ledger one by one; retry until two reads agree.
    let total = || -> u128 {
        holders
            .keys()
            .map(|a| u128::from(balance(n0, a)))
            .sum::<u128>()
    };
    assert!(
        eventually(Duration::from_secs(10), || total() == supply),
        "total supply unchanged (seed {seed})"
    );
    println!(
        "chaos summary: seed {seed}; {} transfers final on every node; faults: {} kills, {} pauses, {} partitions; longest time without a new final block {:.1} s; final height {h}",
        unique.len(),
        faults.kills,
        faults.pauses,
        faults.partitions,
        longest_stall.as_secs_f64()
    );
    assert!(!unique.is_empty(), "transfers became final under faults");
    for n in nodes {
        n.stop();
    }
    drop(proxy);
}
