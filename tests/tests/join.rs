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
    // Ports of its own (the defaults are the well-known ones).
    let base = free_base_port(2);
    // Another port than it listens on, so that only the advertised address has it.
    let external = format!("localhost:{}", base + 7);
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
        "--external-address",
        &external,
    ]);
    assert!(printed.contains("a full node"), "{printed}");
    let node_id = grapevine_ok(["show-node-id", "--home", home.to_str().unwrap()]);
    assert!(printed.contains(node_id.trim()), "{printed}");
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(
        cfg.contains(&format!("external_address = \"{external}\"")),
        "{cfg}"
    );
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
    // The validator records the address the joiner advertises, resolved by the joiner.
    let port = format!(":{}", base + 7);
    assert!(
        eventually(Duration::from_secs(30), || validator
            .result("getPeers", json!([]))
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["listenAddress"]
                .as_str()
                .is_some_and(|a| a.ends_with(&port))))),
        "the validator records the joiner's external address (port {port})"
    );
    let healthy = grapevine_ok(["health", "--rpc", &joined.rpc]);
    assert!(healthy.contains("ok"), "{healthy}");
    let rpc = joined.rpc.clone();
    assert!(joined.stop() && validator.stop(), "both stop cleanly");
    let (exited, output) = run_at_most(["health", "--rpc", &rpc], Duration::from_secs(30));
    assert!(
        exited && !output.status.success(),
        "a stopped node is not healthy"
    );
}

/// `grapevine testnet --hosts`: one home per host, each advertising its name, linked to
/// the other validators by name and pinned to their node ids, and published in the
/// genesis by name.
#[test]
fn testnet_for_hosts_names_every_peer_and_pins_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let hosts = [
        "validator0",
        "validator1",
        "validator2",
        "validator3",
        "full0",
    ];
    grapevine_ok([
        "testnet",
        "--hosts",
        &hosts.join(","),
        "--full-nodes",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let home = |h: &str| out.join(h);
    let id = |h: &str| {
        grapevine_ok(["show-node-id", "--home", home(h).to_str().unwrap()])
            .trim()
            .to_string()
    };
    let genesis: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("genesis.json")).unwrap()).unwrap();
    let published: Vec<&str> = genesis["validators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["networkAddress"].as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        [
            "validator0:26656",
            "validator1:26656",
            "validator2:26656",
            "validator3:26656"
        ]
    );
    for (i, h) in hosts.iter().enumerate() {
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(home(h).join("config.toml")).unwrap()).unwrap();
        assert_eq!(cfg["p2p"]["listen"].as_str(), Some("0.0.0.0:26656"));
        assert_eq!(cfg["rpc"]["listen"].as_str(), Some("0.0.0.0:8545"));
        assert_eq!(
            cfg["p2p"]["external_address"].as_str(),
            Some(format!("{h}:26656").as_str())
        );
        assert!(
            cfg["rpc"]["allowed_hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str() == Some(h)),
            "its RPC answers to its host name"
        );
        let bootstrap: Vec<&str> = cfg["p2p"]["bootstrap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let want: Vec<String> = hosts[..4]
            .iter()
            .filter(|o| *o != h)
            .map(|o| format!("{}@{o}:26656", id(o)))
            .collect();
        assert_eq!(bootstrap, want, "{h}");
        assert_eq!(home(h).join("validator-key.json").exists(), i < 4);
    }
    let table = std::fs::read_to_string(out.join("nodes.tsv")).unwrap();
    assert!(
        table.starts_with("validator0\tvalidator0:8545\tvalidator0:26656\t"),
        "{table}"
    );

    // Names must be host names, one per node.
    let (exited, output) = run_at_most(
        [
            "testnet",
            "--hosts",
            "a,a",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert!(exited && !output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("named twice"));
    let (exited, output) = run_at_most(
        [
            "testnet",
            "--hosts",
            "a,..",
            "--out",
            dir.path().join("y").to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert!(exited && !output.status.success(), "a name that is a path");
}
