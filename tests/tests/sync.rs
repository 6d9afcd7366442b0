//! Block sync end to end, with real `grapevine run` processes: 4 validators finalize
//! 2,000+ transfers; a fifth node started from scratch well past the blocks that
//! consensus keeps in memory reaches the head with the same state root; a validator
//! killed for a while under load restarts, catches up, and every node agrees; a node
//! with damaged data refuses to start with an error naming the damage and the fix, and
//! after `grapevine rebuild` syncs back; a validator whose data is deleted syncs back
//! and signs again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grapevine_ledger::{Keypair, SignedTx, Transaction};
use grapevine_tests::{
    NodeProcess, account_keys, eventually, generate_testnet, set_consensus_option,
};
use serde_json::{Value, json};

const CHAIN: u32 = 4242;

fn signed(k: &Keypair, to: grapevine_ledger::Address, nonce: u64) -> SignedTx {
    Transaction {
        chain_id: CHAIN,
        from: k.address(),
        to,
        amount: 1,
        fee: 1,
        nonce,
    }
    .sign(k)
}

/// Sends `txs` in JSON-RPC batches of 100; returns their hashes (all must be accepted).
fn send_all(node: &NodeProcess, txs: &[SignedTx]) -> Vec<String> {
    let mut hashes = Vec::new();
    for chunk in txs.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
                       "params": [hex::encode(t.to_bytes())]})
            })
            .collect();
        let (status, body) =
            grapevine_tests::post_json(&node.rpc, &Value::Array(batch).to_string());
        assert_eq!(status, 200);
        for r in body.expect("a batch answer").as_array().expect("an array") {
            assert!(r.get("error").is_none(), "a transfer is refused: {r}");
            hashes.push(r["result"].as_str().unwrap().to_string());
        }
    }
    hashes
}

fn is_final(node: &NodeProcess, hash: &str) -> bool {
    node.result("getTransaction", json!([hash]))["status"] == "finalized"
}

/// Every node in `nodes` has the same block (hash and state root) at the lowest of
/// their heights.
fn assert_agreement(nodes: &[&NodeProcess]) {
    let h = nodes.iter().map(|n| n.height()).min().unwrap();
    let first = nodes[0].block(h);
    for n in nodes {
        let b = n.block(h);
        assert_eq!(b["hash"], first["hash"], "same block at height {h}");
        assert_eq!(b["header"]["stateRoot"], first["header"]["stateRoot"]);
    }
}

#[test]
fn a_new_node_and_a_restarted_validator_catch_up_by_block_sync() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet(&out, 4, 1, 12);
    // Faster idle blocks, so the chain soon outgrows the 64 blocks consensus keeps.
    set_consensus_option(&out, &names, "idle_block_ms", 100);
    set_consensus_option(&out, &names, "base_timeout_ms", 1000);
    let mut validators: Vec<Option<NodeProcess>> = names[..4]
        .iter()
        .map(|n| Some(NodeProcess::run(&out.join(n))))
        .collect();
    let keys = account_keys(&out);
    let sink = Keypair::from_seed(&[42; 32]).address();

    // 2,000+ transfers, spread over the validators.
    let mut hashes = Vec::new();
    for (i, v) in validators.iter().flatten().enumerate() {
        let txs: Vec<SignedTx> = (0..520).map(|n| signed(&keys[i], sink, n)).collect();
        hashes.extend(send_all(v, &txs));
    }
    assert!(hashes.len() >= 2_000);
    let v0 = validators[0].as_ref().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || is_final(
            v0,
            hashes.last().unwrap()
        ) && hashes
            .iter()
            .step_by(97)
            .all(|h| is_final(v0, h))),
        "the transfers become final"
    );
    let start = v0.height();
    assert!(
        eventually(Duration::from_secs(60), || v0.height()
            >= start.max(70) + 10),
        "the chain grows past what consensus keeps in memory"
    );

    // A node from scratch reaches the head through block sync.
    let full = NodeProcess::run(&out.join("full0"));
    let status = full.result("getSyncStatus", json!([]));
    for k in [
        "syncing",
        "currentHeight",
        "targetHeight",
        "blocksPerSecond",
        "etaSeconds",
    ] {
        assert!(status.get(k).is_some(), "getSyncStatus has {k}: {status}");
    }
    assert!(
        eventually(Duration::from_secs(90), || full.height() + 1 >= v0.height()),
        "the new node reaches the head"
    );
    assert!(
        hashes.iter().step_by(53).all(|h| is_final(&full, h)),
        "every transfer is final on the new node"
    );
    let all: Vec<&NodeProcess> = validators.iter().flatten().chain([&full]).collect();
    assert_agreement(&all);
    let sink_balance = |n: &NodeProcess| n.result("getBalance", json!([sink.to_string()]));
    assert_eq!(sink_balance(&full), sink_balance(v0));
    drop(all);

    // A validator killed for a while under load restarts and catches up.
    let load_on = AtomicBool::new(true);
    let doomed = validators[3].take().unwrap();
    let during = std::thread::scope(|s| {
        let loader = s.spawn(|| {
            let v1 = validators[1].as_ref().unwrap();
            let mut sent = Vec::new();
            let mut n = 0;
            while load_on.load(Ordering::Relaxed) {
                let txs: Vec<SignedTx> = (n..n + 20).map(|k| signed(&keys[8], sink, k)).collect();
                sent.extend(send_all(v1, &txs));
                n += 20;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        });
        std::thread::sleep(Duration::from_secs(1));
        doomed.kill();
        let v0 = validators[0].as_ref().unwrap();
        let killed_at = v0.height();
        let grew = eventually(Duration::from_secs(60), || v0.height() >= killed_at + 10);
        load_on.store(false, Ordering::Relaxed);
        let sent = loader.join().unwrap();
        assert!(grew, "the other three keep finalizing");
        sent
    });
    let back = NodeProcess::run(&out.join("validator3"));
    let v0 = validators[0].as_ref().unwrap();
    assert!(
        eventually(Duration::from_secs(90), || back.height() + 1 >= v0.height()),
        "the restarted validator catches up"
    );
    assert!(
        eventually(Duration::from_secs(60), || during
            .iter()
            .all(|h| is_final(&back, h))),
        "every transfer acknowledged while it was down is final on it"
    );
    validators[3] = Some(back);
    let all: Vec<&NodeProcess> = validators.iter().flatten().chain([&full]).collect();
    assert_agreement(&all);
    // It rejoins consensus: the chain keeps finalizing with all four.
    let h = all[0].height();
    assert!(eventually(Duration::from_secs(30), || all
        .iter()
        .all(|n| n.height() > h + 3)));
    drop(all);

    // Damaged data: the node refuses to start, naming the problem and the fix...
    assert!(full.stop());
    let data = out.join("full0").join("data");
    let mut truncated = 0;
    for f in std::fs::read_dir(&data).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "sst") {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(f.path())
                .unwrap();
            file.set_len(file.metadata().unwrap().len() / 2).unwrap();
            truncated += 1;
        }
    }
    assert!(truncated > 0, "the stopped node left table files to damage");
    let refused = run_to_exit(&["run", "--home"], &out.join("full0"));
    assert!(
        !refused.status.success(),
        "a node with damaged data does not start"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Corruption")
            && err.contains("grapevine rebuild")
            && !err.contains("panicked"),
        "the error names the damage and the fix: {err}"
    );
    // ...and `grapevine rebuild` sets it aside; the node syncs back from its peers.
    let rebuilt = run_to_exit(&["rebuild", "--home"], &out.join("full0"));
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let full = NodeProcess::run(&out.join("full0"));
    let v0 = validators[0].as_ref().unwrap();
    assert!(
        eventually(Duration::from_secs(90), || full.height() + 1 >= v0.height()),
        "the rebuilt node reaches the head again"
    );

    // A validator whose data is lost entirely syncs back and signs again; its safety
    // state file (outside the data directory) is untouched.
    let safety = out.join("validator2").join("consensus-safety.bin");
    let before = std::fs::read(&safety).expect("a validator that voted has a safety file");
    validators[2].take().unwrap().kill();
    std::fs::remove_dir_all(out.join("validator2").join("data")).unwrap();
    validators[2] = Some(NodeProcess::run(&out.join("validator2")));
    let all: Vec<&NodeProcess> = validators.iter().flatten().chain([&full]).collect();
    assert!(
        eventually(Duration::from_secs(90), || all[2].height() + 1
            >= all[0].height()),
        "the validator without data catches up"
    );
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read(&safety).unwrap()
            != before),
        "it takes part in consensus again (its safety state moves on)"
    );
    assert_agreement(&all);
    drop(all);

    for n in validators.into_iter().flatten().chain([full]) {
        assert!(n.stop(), "a node stops cleanly");
    }
}

/// Runs `grapevine ARGS HOME` to its end (at most 60 s).
fn run_to_exit(args: &[&str], home: &std::path::Path) -> std::process::Output {
    let all = args.iter().copied().chain([home.to_str().unwrap()]);
    let (exited, out) = grapevine_tests::run_at_most(all, Duration::from_secs(60));
    assert!(exited, "grapevine {args:?} did not exit within 60 s");
    out
}
