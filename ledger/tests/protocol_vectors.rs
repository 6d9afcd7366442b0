//! Checks the test vectors in docs/PROTOCOL.md against the implementation, reading them
//! from the document itself so the two cannot drift apart.
//!
//! `GRAPEVINE_PRINT_VECTORS=1 cargo test --release -p grapevine-ledger --test
//! protocol_vectors -- --nocapture` prints the vectors as the code computes them.

use std::collections::BTreeMap;

use grapevine_ledger::state::{BlockError, execute};
use grapevine_ledger::{
    Address, Genesis, Keypair, Ledger, MemoryStore, Receipt, SignedTx, Transaction, codec,
};

/// The fenced `text` blocks of PROTOCOL.md that start with `kind:`, as key/value maps.
fn vectors() -> Vec<BTreeMap<String, String>> {
    // Read when the test runs (cargo sets it), not built in: a binary built in another
    // clone of the repository may be reused from a shared target directory.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let doc = std::fs::read_to_string(std::path::Path::new(&crate_dir).join("../docs/PROTOCOL.md"))
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

/// `secretKey to amount fee nonce` (one line of an execution vector), signed.
fn tx_line(line: &str, chain_id: u32) -> SignedTx {
    let f: Vec<&str> = line.split_whitespace().collect();
    let kp = Keypair::from_secret_hex(f[0]).unwrap();
    Transaction {
        chain_id,
        from: kp.address(),
        to: f[1].parse().unwrap(),
        amount: f[2].parse().unwrap(),
        fee: f[3].parse().unwrap(),
        nonce: f[4].parse().unwrap(),
    }
    .sign(&kp)
}

#[test]
fn execution_vectors_match_the_document() {
    let all = vectors();
    let runs: Vec<_> = all.iter().filter(|v| v["kind"] == "execution").collect();
    assert!(!runs.is_empty(), "PROTOCOL.md holds an execution vector");
    for v in runs {
        let g = Genesis::from_json(v["genesis"].as_bytes()).unwrap();
        let ledger = Ledger::open(Box::new(MemoryStore::new()), &g).unwrap();
        let proposer: Address = v["proposer"].parse().unwrap();
        let txs: Vec<SignedTx> = v
            .iter()
            .filter(|(k, _)| k.starts_with("tx"))
            .map(|(_, line)| tx_line(line, g.chain_id))
            .collect();
        let result = execute(&ledger, g.chain_id, &proposer, &txs);
        if let Some(index) = v.get("unpayable") {
            let index: usize = index.parse().unwrap();
            assert!(
                matches!(result, Err(BlockError::Unpayable { index: i, .. }) if i == index),
                "{result:?}"
            );
            continue;
        }
        let exec = result.unwrap();
        let receipts: Vec<&str> = exec
            .receipts
            .iter()
            .map(|r| match r {
                Receipt::Success => "success",
                Receipt::Failed { .. } => "failed",
            })
            .collect();
        let accounts: Vec<String> = exec
            .accounts
            .iter()
            .map(|(a, acct)| format!("{a}={}/{}", acct.balance, acct.nonce))
            .collect();
        if std::env::var("GRAPEVINE_PRINT_VECTORS").is_ok() {
            println!("receipts:     {}", receipts.join(","));
            println!("stateRoot:    {}", exec.state_root());
            for a in &accounts {
                println!("account:      {a}");
            }
            continue;
        }
        assert_eq!(v["receipts"], receipts.join(","));
        assert_eq!(v["stateRoot"], exec.state_root().to_string());
        for line in v
            .iter()
            .filter(|(k, _)| k.starts_with("account"))
            .map(|(_, l)| l)
        {
            let (addr, rest) = line.split_once('=').unwrap();
            let (balance, nonce) = rest.split_once('/').unwrap();
            let (_, acct) = exec
                .accounts
                .iter()
                .find(|(a, _)| a.to_string() == addr)
                .expect("a touched account");
            assert_eq!(acct.balance.to_string(), balance, "{addr}");
            assert_eq!(acct.nonce.to_string(), nonce, "{addr}");
        }
    }
}
