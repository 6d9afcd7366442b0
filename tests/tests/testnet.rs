//! A local network end to end: `grapevine testnet` writes 4 validator homes and a full
//! node's, and each runs as its own `grapevine run` process on 127.0.0.1.
//!
//! Checked: transfers sent to different nodes all finalize; every node has the same
//! block hash and state root at the same height; of two conflicting transfers (same
//! sender and nonce) sent at once to two nodes exactly one is final everywhere and the
//! other is reported with a reason; with one validator killed the rest keep finalizing;
//! with two killed nothing new is finalized, and finality resumes when one returns.

use std::time::Duration;

use grapevine_ledger::{Address, Keypair, SignedTx, Transaction};
use grapevine_tests::{
    NodeProcess, account_keys, eventually, generate_testnet, grapevine_ok, run_at_most,
};
use serde_json::{Value, json};

const CHAIN: u32 = 4242;
const VALIDATORS: usize = 4;
const NODES: usize = 5;

fn signed(k: &Keypair, to: Address, amount: u64, nonce: u64) -> SignedTx {
    Transaction {
        chain_id: CHAIN,
        from: k.address(),
        to,
        amount,
        fee: 1,
        nonce,
    }
    .sign(k)
}

fn send(node: &NodeProcess, t: &SignedTx) -> Value {
    node.call("sendTransaction", json!([hex::encode(t.to_bytes())]))
}

fn tx_status(node: &NodeProcess, hash: &str) -> Value {
    node.result("getTransaction", json!([hash]))
}

/// Waits until `hash` is final on every node in `nodes`; returns its block hash.
fn final_everywhere(nodes: &[&NodeProcess], hash: &str, limit: Duration) -> String {
    let mut block = String::new();
    let ok = eventually(limit, || {
        nodes.iter().all(|n| {
            let s = tx_status(n, hash);
            if s["status"] == "finalized" {
                block = s["blockHash"].as_str().unwrap_or_default().to_string();
                true
            } else {
                false
            }
        })
    });
    assert!(
        ok,
        "transaction {hash} did not become final on every node within {limit:?}"
    );
    block
}

/// Every node's block at the highest height they all have: same hash and state root.
fn assert_agreement(nodes: &[&NodeProcess]) {
    let h = nodes.iter().map(|n| n.height()).min().unwrap();
    assert!(h > 0);
    let blocks: Vec<Value> = nodes
        .iter()
        .map(|n| n.result("getBlock", json!([h.to_string(), false])))
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(
            b["hash"], blocks[0]["hash"],
            "node {i} has another block at height {h}"
        );
        assert_eq!(
            b["header"]["stateRoot"], blocks[0]["header"]["stateRoot"],
            "node {i} has another state root at height {h}"
        );
        assert!(
            b["certificate"].as_str().is_some_and(|c| !c.is_empty()),
            "block {h} on node {i} carries its finality certificate"
        );
    }
}

#[test]
fn four_validators_and_a_full_node_agree_and_survive_one_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet(&out, VALIDATORS as u16, 1, 8);
    // Each validator's address, as `show-validator` reads it, is the genesis's; a full
    // node has none; node ids are distinct.
    let genesis: Value =
        serde_json::from_slice(&std::fs::read(out.join("genesis.json")).unwrap()).unwrap();
    let mut ids = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let home = out.join(name);
        let home = home.to_str().unwrap();
        let id = grapevine_ok(["show-node-id", "--home", home]);
        assert!(ids.insert(id.trim().to_string()), "distinct node ids");
        if i < VALIDATORS {
            let shown = grapevine_ok(["show-validator", "--home", home]);
            assert_eq!(shown.trim(), genesis["validators"][i]["publicKey"]);
        } else {
            let (exited, out) =
                run_at_most(["show-validator", "--home", home], Duration::from_secs(10));
            assert!(
                exited && !out.status.success(),
                "a full node has no validator key"
            );
        }
    }
    let mut nodes: Vec<Option<NodeProcess>> = names
        .iter()
        .map(|n| Some(NodeProcess::run(&out.join(n))))
        .collect();
    let keys = account_keys(&out);

    // The chain finalizes blocks on its own.
    let all: Vec<&NodeProcess> = nodes.iter().flatten().collect();
    assert!(
        eventually(Duration::from_secs(60), || all
            .iter()
            .all(|n| n.height() >= 2)),
        "every node reaches height 2"
    );

    // Transfers sent to different nodes (the full node too) all finalize everywhere.
    let sink = Keypair::from_seed(&[9; 32]).address();
    let mut hashes = Vec::new();
    for (i, node) in all.iter().enumerate() {
        let t = signed(&keys[i], sink, 100 + i as u64, 0);
        let r = send(node, &t);
        assert!(r.get("error").is_none(), "node {i} accepts a transfer: {r}");
        hashes.push(t.hash().to_string());
    }
    for h in &hashes {
        final_everywhere(&all, h, Duration::from_secs(30));
    }
    let total: u64 = (0..NODES as u64).map(|i| 100 + i).sum();
    for n in &all {
        let b: u64 = n
            .result("getBalance", json!([sink.to_string()]))
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            b, total,
            "the recipient's balance is the same on every node"
        );
    }
    assert_agreement(&all);

    // Two conflicting transfers, same sender and nonce, sent at once to two nodes.
    let k = &keys[5];
    let (x, y) = (
        Keypair::from_seed(&[10; 32]).address(),
        Keypair::from_seed(&[11; 32]).address(),
    );
    let (t1, t2) = (signed(k, x, 7, 0), signed(k, y, 8, 0));
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| send(all[0], &t1));
        let b = s.spawn(|| send(all[2], &t2));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (h1, h2) = (t1.hash().to_string(), t2.hash().to_string());
    let winner_final = |n: &NodeProcess, h: &str| {
        let s = tx_status(n, h);
        s["status"] == "finalized" && s["receipt"]["status"] == "success"
    };
    assert!(
        eventually(Duration::from_secs(30), || all
            .iter()
            .all(|n| winner_final(n, &h1) || winner_final(n, &h2))),
        "one of two conflicting transfers becomes final everywhere ({r1}, {r2})"
    );
    let (win, lose, lose_node, lose_reply) = if winner_final(all[0], &h1) {
        (&h1, &h2, all[2], &r2)
    } else {
        (&h2, &h1, all[0], &r1)
    };
    for n in &all {
        assert!(
            winner_final(n, win),
            "the same transfer is final on every node"
        );
        assert!(
            !winner_final(n, lose),
            "both conflicting transfers succeeded"
        );
    }
    // The loser was refused at submission with a reason, or is reported with one.
    let refused_with_reason = lose_reply
        .get("error")
        .is_some_and(|e| e["data"]["reason"].is_string() || e["message"].is_string());
    let reported = eventually(Duration::from_secs(30), || {
        let s = tx_status(lose_node, lose);
        match s["status"].as_str() {
            Some("evicted" | "rejected" | "expired") => s["reason"]["message"].is_string(),
            Some("finalized") => s["receipt"]["status"] == "failed",
            _ => false,
        }
    });
    assert!(
        refused_with_reason || reported,
        "the losing transfer is reported with a reason: reply {lose_reply}, status {}",
        tx_status(lose_node, lose)
    );
    drop(all);

    // One validator killed: the other three keep finalizing.
    nodes[3].take().unwrap().kill();
    let all: Vec<&NodeProcess> = nodes.iter().flatten().collect();
    let t = signed(&keys[6], sink, 1, 0);
    assert!(send(all[1], &t).get("error").is_none());
    final_everywhere(&all, &t.hash().to_string(), Duration::from_secs(60));
    assert_agreement(&all);
    drop(all);

    // Two killed: nothing new is final anywhere...
    nodes[2].take().unwrap().kill();
    let all: Vec<&NodeProcess> = nodes.iter().flatten().collect();
    // Votes already in flight may still complete a block: let them land.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = all.iter().map(|n| n.height()).collect();
    let t = signed(&keys[7], sink, 1, 0);
    assert!(send(all[0], &t).get("error").is_none());
    std::thread::sleep(Duration::from_secs(8));
    let after: Vec<u64> = all.iter().map(|n| n.height()).collect();
    assert_eq!(
        before, after,
        "no node finalizes with two of four validators down"
    );
    assert_ne!(
        tx_status(all[0], &t.hash().to_string())["status"],
        "finalized"
    );
    drop(all);

    // A validator past height 0 whose safety state file is gone refuses to start,
    // naming the file and the flag, rather than start as if it never signed.
    let home2 = out.join("validator2");
    let safety = home2.join("consensus-safety.bin");
    let saved = std::fs::read(&safety).expect("a validator that voted has a safety file");
    std::fs::remove_file(&safety).unwrap();
    let (exited, output) = run_at_most(
        ["run", "--home", home2.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited && !output.status.success(),
        "refuses to start: {stderr}"
    );
    assert!(
        stderr.contains("consensus-safety.bin") && stderr.contains("--allow-missing-safety-state"),
        "names the file and the flag: {stderr}"
    );
    std::fs::write(&safety, saved).unwrap();

    // ...until one returns (same home: its safety state and ledger survive).
    nodes[2] = Some(NodeProcess::run(&home2));
    let all: Vec<&NodeProcess> = nodes.iter().flatten().collect();
    final_everywhere(&all, &t.hash().to_string(), Duration::from_secs(90));
    assert!(all.iter().zip(&before).all(|(n, b)| n.height() > *b));
    assert_agreement(&all);
    drop(all);

    for n in nodes.into_iter().flatten() {
        assert!(n.stop(), "a node stops cleanly on SIGTERM");
    }
}
