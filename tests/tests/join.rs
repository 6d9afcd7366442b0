//! Joining a running network in two commands: `grapevine init` with the genesis fetched
//! from a node of the network (`getGenesis`) and checked against its hash, then
//! `grapevine run`. A genesis whose hash does not match is refused, naming both.

use std::time::Duration;

use grapevine_tests::{
    NodeProcess, eventually, free_base_port, generate_testnet, grapevine_ok, p2p_address,
    run_at_most,
};
use serde_json::json;

#[test]
fn a_full_node_joins_with_init_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let names = generate_testnet(&out, 1, 0, 1);
    let validator = NodeProcess::run(&out.join(&names[0]));
    assert!(eventually(Duration::from_secs(60), || validator.height() >= 2));
    let hash = validator.result("getStatus", json!([]))["genesisHash"]
        .as_str()
        .unwrap()
        .to_string();
    let served = validator.result("getGenesis", json!([]));
    assert_eq!(served["hash"], hash.as_str());

    // The wrong hash: refused, both hashes named, nothing written.
    let wrong = "00".repeat(32);
    let bad_home = dir.path().join("bad");
    let (exited, output) = run_at_most(
        [
            "init",
            "--home",
            bad_home.to_str().unwrap(),
            "--genesis-from",
            &validator.rpc,
            "--genesis-hash",
            &wrong,
        ],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited && !output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&hash) && stderr.contains(&wrong),
        "{stderr}"
    );
    assert!(!bad_home.join("config.toml").exists());

    // The right one: a full node (its validator key is not in the genesis).
    let home = dir.path().join("joiner");
    let bootstrap = p2p_address(&out, &names[0]).to_string();
    let printed = grapevine_ok([
        "init",
        "--home",
        home.to_str().unwrap(),
        "--genesis-from",
        &validator.rpc,
        "--genesis-hash",
        &hash,
        "--bootstrap",
        &bootstrap,
    ]);
    assert!(printed.contains("a full node"), "{printed}");
    let node_id = grapevine_ok(["show-node-id", "--home", home.to_str().unwrap()]);
    assert!(printed.contains(node_id.trim()), "{printed}");
    // Ports of its own (the defaults are the well-known ones).
    let base = free_base_port(2);
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let cfg = cfg
        .replace("127.0.0.1:8545", &format!("127.0.0.1:{base}"))
        .replace("0.0.0.0:26656", &format!("127.0.0.1:{}", base + 1));
    std::fs::write(home.join("config.toml"), cfg).unwrap();

    let joined = NodeProcess::run(&home);
    assert!(
        eventually(Duration::from_secs(60), || joined.height() + 1
            >= validator.height()
            && joined.height() >= 2),
        "the new node follows the chain"
    );
    assert_eq!(
        joined.result("getStatus", json!([]))["genesisHash"],
        hash.as_str()
    );
    assert!(joined.stop() && validator.stop(), "both stop cleanly");
}
