//! Checks the test vectors in docs/PROTOCOL.md against the implementation, reading them
//! from the document itself so the two cannot drift apart.
//!
//! `GRAPEVINE_PRINT_VECTORS=1 cargo test --release -p grapevine-ledger --test
//! protocol_vectors -- --nocapture` prints the vectors as the code computes them.

use std::collections::BTreeMap;

use grapevine_ledger::{Genesis, Keypair, SignedTx, Transaction, codec};

/// The fenced `text` blocks of PROTOCOL.md that start with `kind:`, as key/value maps.
fn vectors() -> Vec<BTreeMap<String, String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md is readable");
    let mut out = Vec::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in doc.lines() {
        match (line.trim(), current.as_mut()) {
            ("```text", None) => current = Some(BTreeMap::new()),
            ("```", Some(_)) => {
                let block = current.take().expect("inside a block");
                if block.contains_key("kind") {
                    out.push(block);
                }
            }
            (l, Some(block)) => {
                if let Some((k, v)) = l.split_once(':') {
                    block.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            _ => {}
        }
    }
    out
}

fn tx_vector(v: &BTreeMap<String, String>) -> (Keypair, SignedTx) {
    let kp = Keypair::from_secret_hex(&v["secretKey"]).unwrap();
    let tx = Transaction {
        chain_id: v["chainId"].parse().unwrap(),
        from: kp.address(),
        to: v["to"].parse().unwrap(),
        amount: v["amount"].parse().unwrap(),
        fee: v["fee"].parse().unwrap(),
        nonce: v["nonce"].parse().unwrap(),
    };
    let signed = tx.sign(&kp);
    (kp, signed)
}

#[test]
fn transaction_vectors_match_the_document() {
    let all = vectors();
    let txs: Vec<_> = all.iter().filter(|v| v["kind"] == "transaction").collect();
    assert!(
        txs.len() >= 3,
        "PROTOCOL.md must hold at least 3 transaction vectors"
    );
    for v in txs {
        let (kp, signed) = tx_vector(v);
        let print = std::env::var("GRAPEVINE_PRINT_VECTORS").is_ok();
        if print {
            println!("publicKey:    {}", kp.address().public_key_hex());
            println!("address:      {}", kp.address());
            println!("signingBytes: {}", hex::encode(signed.tx().signing_bytes()));
            println!("signature:    {}", signed.signature());
            println!("encoded:      {}", hex::encode(signed.to_bytes()));
            println!("txHash:       {}\n", signed.hash());
            continue;
        }
        assert_eq!(v["publicKey"], kp.address().public_key_hex());
        assert_eq!(v["address"], kp.address().to_string());
        assert_eq!(v["signingBytes"], hex::encode(signed.tx().signing_bytes()));
        assert_eq!(v["signature"], signed.signature().to_string());
        assert_eq!(v["encoded"], hex::encode(signed.to_bytes()));
        assert_eq!(v["txHash"], signed.hash().to_string());
        // And the other way round: the document's bytes decode and verify.
        let decoded = SignedTx::from_bytes(&hex::decode(&v["encoded"]).unwrap()).unwrap();
        assert!(decoded.verify());
        assert_eq!(decoded, signed);
    }
}

#[test]
fn genesis_and_header_vector_matches_the_document() {
    let all = vectors();
    let v = all
        .iter()
        .find(|v| v["kind"] == "genesis")
        .expect("PROTOCOL.md holds a genesis vector");
    let g = Genesis::from_json(v["genesis"].as_bytes()).unwrap();
    let state_root = g.initial_state().root();
    let header = g.block_header(state_root);
    if std::env::var("GRAPEVINE_PRINT_VECTORS").is_ok() {
        println!("genesisHash:  {}", g.hash());
        println!("stateRoot:    {state_root}");
        println!("block0Header: {}", hex::encode(codec::encode(&header)));
        println!("block0Hash:   {}", header.hash());
        return;
    }
    assert_eq!(v["genesisHash"], g.hash().to_string());
    assert_eq!(v["stateRoot"], state_root.to_string());
    assert_eq!(v["block0Header"], hex::encode(codec::encode(&header)));
    assert_eq!(v["block0Hash"], header.hash().to_string());
}
