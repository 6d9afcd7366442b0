//! Network partitions at process level: 4 `grapevine run` validators whose every link
//! goes through `gv-proxy` routes on 127.0.0.1 (`grapevine testnet --fault-proxy`),
//! cut and healed by the test.
//!
//! 2|2: no side finalizes, and no fork (the same block at every height). Healed, finality
//! resumes. 3|1: the majority keeps finalizing (a transfer becomes final), the minority
//! does not; healed, the minority catches up and every node agrees.

use std::time::Duration;

use grapevine_ledger::{Keypair, Transaction};
use grapevine_tests::{
    FaultProxy, NodeProcess, account_keys, eventually, generate_testnet_with, set_consensus_option,
};
use serde_json::json;

fn heights(nodes: &[NodeProcess]) -> Vec<u64> {
    nodes.iter().map(NodeProcess::height).collect()
}

/// The same block at every height every node has (up to the lowest head).
fn assert_no_fork(nodes: &[NodeProcess]) {
    let top = nodes.iter().map(NodeProcess::height).min().unwrap();
    for h in (1..=top).rev().take(40) {
        let first = nodes[0].block(h)["hash"].clone();
        for n in nodes {
            assert_eq!(n.block(h)["hash"], first, "a fork at height {h}");
        }
    }
}

#[test]
fn partitions_halt_or_keep_finality_by_quorum_and_heal_without_forks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet_with(&out, 4, 0, 4, &["--fault-proxy"]);
    set_consensus_option(&out, &names, "idle_block_ms", 100);
    set_consensus_option(&out, &names, "base_timeout_ms", 1000);
    set_consensus_option(&out, &names, "max_timeout_ms", 4000);
    let proxy = FaultProxy::start(&out);
    let nodes: Vec<NodeProcess> = names
        .iter()
        .map(|n| NodeProcess::run(&out.join(n)))
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || heights(&nodes)
            .iter()
            .all(|h| *h >= 3)),
        "the network finalizes through the proxy"
    );

    // 2|2: neither side has a quorum.
    proxy.partition(&[&["validator0", "validator1"], &["validator2", "validator3"]]);
    std::thread::sleep(Duration::from_secs(3)); // blocks certified just before the cut land
    let before = heights(&nodes);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(heights(&nodes), before, "no side of a 2|2 split finalizes");
    assert_no_fork(&nodes);

    proxy.heal();
    assert!(
        eventually(Duration::from_secs(90), || heights(&nodes)
            .iter()
            .zip(&before)
            .all(|(h, b)| *h > b + 2)),
        "finality resumes after healing: {:?} -> {:?}",
        before,
        heights(&nodes)
    );
    assert_no_fork(&nodes);

    // 3|1: the majority goes on, the minority waits, then catches up.
    proxy.partition(&[&["validator0", "validator1", "validator2"], &["validator3"]]);
    std::thread::sleep(Duration::from_secs(3));
    let minority_before = nodes[3].height();
    let k = &account_keys(&out)[0];
    let t = Transaction {
        chain_id: 4242,
        from: k.address(),
        to: Keypair::from_seed(&[5; 32]).address(),
        amount: 9,
        fee: 1,
        nonce: 0,
    }
    .sign(k);
    let hash = t.hash().to_string();
    let r = nodes[0].call("sendTransaction", json!([hex::encode(t.to_bytes())]));
    assert!(r.get("error").is_none(), "{r}");
    let final_on =
        |n: &NodeProcess| n.result("getTransaction", json!([hash]))["status"] == "finalized";
    assert!(
        eventually(Duration::from_secs(60), || nodes[..3].iter().all(final_on)),
        "the majority finalizes a transfer"
    );
    let majority_height = nodes[0].height();
    assert!(majority_height > minority_before + 2);
    assert!(
        nodes[3].height() <= minority_before + 1,
        "the cut-off validator finalizes nothing new on its own"
    );
    assert!(!final_on(&nodes[3]));

    proxy.heal();
    assert!(
        eventually(Duration::from_secs(90), || nodes[3].height()
            >= majority_height
            && final_on(&nodes[3])),
        "the minority catches up after healing"
    );
    assert_no_fork(&nodes);
    for n in nodes {
        assert!(n.stop(), "a node stops cleanly");
    }
    drop(proxy);
}
