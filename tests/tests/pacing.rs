//! `consensus.min_block_interval_ms` on 4 `grapevine run` validators: with empty blocks
//! due every 100 ms (`idle_block_ms`) and a minimum interval of 400 ms, every block's
//! timestamp is at least 400 ms after its parent's, around a transfer as well (whose
//! block and descendants are otherwise proposed at once), and the transfer still
//! finalizes.

use std::time::Duration;

use grapevine_ledger::{Keypair, Transaction};
use grapevine_tests::{
    NodeProcess, account_keys, eventually, generate_testnet, set_consensus_option,
};
use serde_json::json;

const MIN_INTERVAL_MS: u64 = 400;

fn timestamp_ms(node: &NodeProcess, height: u64) -> u64 {
    node.block(height)["header"]["timestampMs"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("timestampMs is a decimal string")
}

#[test]
fn blocks_are_spaced_by_the_minimum_interval() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet(&out, 4, 0, 4);
    set_consensus_option(&out, &names, "idle_block_ms", 100);
    set_consensus_option(&out, &names, "min_block_interval_ms", MIN_INTERVAL_MS);
    let nodes: Vec<NodeProcess> = names
        .iter()
        .map(|n| NodeProcess::run(&out.join(n)))
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || nodes[0].height() >= 2),
        "the chain finalizes"
    );

    let k = &account_keys(&out)[0];
    let t = Transaction {
        chain_id: 4242,
        from: k.address(),
        to: Keypair::from_seed(&[7; 32]).address(),
        amount: 10,
        fee: 1,
        nonce: 0,
    }
    .sign(k);
    let r = nodes[0].call("sendTransaction", json!([hex::encode(t.to_bytes())]));
    assert!(r.get("error").is_none(), "the transfer is accepted: {r}");
    let hash = t.hash().to_string();
    let mut at = 0;
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = nodes[0].result("getTransaction", json!([hash]));
            at = s["height"]
                .as_str()
                .and_then(|h| h.parse().ok())
                .unwrap_or(0);
            s["status"] == "finalized"
        }),
        "the transfer finalizes"
    );
    let top = at + 3;
    assert!(
        eventually(Duration::from_secs(30), || nodes[0].height() >= top),
        "blocks after the transfer's finalize"
    );

    // Height 1's parent is genesis, whose time is the chain's start.
    let stamps: Vec<u64> = (1..=top).map(|h| timestamp_ms(&nodes[0], h)).collect();
    for (i, w) in stamps.windows(2).enumerate() {
        assert!(
            w[1] >= w[0] + MIN_INTERVAL_MS,
            "block {} comes {} ms after its parent, under the {MIN_INTERVAL_MS} ms minimum: {stamps:?}",
            i + 2,
            w[1].saturating_sub(w[0])
        );
    }
}
