//! `grapevine dev` end to end: the CLI wallet against a real dev node process, the
//! transaction lifecycle, bad input over RPC, WebSocket subscriptions, and restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use grapevine_ledger::{Address, Keypair, SignedTx, Transaction};
use grapevine_rpc::RejectReason;
use grapevine_tests::{NodeProcess, grapevine_bin, post_json};
use serde_json::{Value, json};

const CHAIN: u32 = 1337;

/// The dev accounts' keys, from the home's dev-accounts.json.
fn dev_keys(home: &Path) -> Vec<Keypair> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(home.join("dev-accounts.json")).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            for k in ["address", "publicKey", "secretKey", "balance"] {
                assert!(a.get(k).is_some(), "dev-accounts.json entries have {k}");
            }
            Keypair::from_secret_hex(a["secretKey"].as_str().unwrap()).unwrap()
        })
        .collect()
}

fn signed(k: &Keypair, to: Address, amount: u64, fee: u64, nonce: u64) -> SignedTx {
    Transaction {
        chain_id: CHAIN,
        from: k.address(),
        to,
        amount,
        fee,
        nonce,
    }
    .sign(k)
}

fn send(node: &NodeProcess, t: &SignedTx) -> Value {
    node.call("sendTransaction", json!([hex::encode(t.to_bytes())]))
}

fn balance(node: &NodeProcess, a: &Address) -> u64 {
    node.result("getBalance", json!([a.to_string()]))
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn wait_status(node: &NodeProcess, hash: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = node.result("getTransaction", json!([hash]));
        if info["status"] == want {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{hash} never became {want}: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Announces a 2 MiB body and reads the status line: the node must refuse by the
/// headers alone. (Sending the body too races with the node closing the connection.)
fn announce_huge_body(rpc: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = rpc.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cli(node: &NodeProcess, args: &[&str]) -> std::process::Output {
    Command::new(grapevine_bin())
        .args(args)
        .args(["--rpc", &node.rpc])
        .output()
        .unwrap()
}

#[test]
fn wallet_lifecycle_bad_input_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node = NodeProcess::start(&home, &["--accounts", "3", "--block-interval-ms", "20"]);
    let keys = dev_keys(&home);
    assert_eq!(keys.len(), 3);
    let (alice, bob) = (&keys[0], &keys[1]);
    let start_balance = balance(&node, &alice.address());
    assert!(start_balance > 1_000_000);
    let status = node.result("getStatus", json!([]));
    assert_eq!(status["chainId"], CHAIN);

    // A transfer with the CLI, waiting for finality.
    // The key file the dev home writes for account 0.
    let key_file = home.join("keys").join("dev-0.json");
    let out = cli(
        &node,
        &[
            "transfer",
            "--key",
            key_file.to_str().unwrap(),
            "--to",
            &bob.address().to_string(),
            "--amount",
            "100",
            "--fee",
            "1",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hash = stdout.lines().next().unwrap().trim().to_string();
    assert!(stdout.contains("\"success\""), "{stdout}");
    assert_eq!(balance(&node, &alice.address()), start_balance - 101);
    assert_eq!(balance(&node, &bob.address()), start_balance + 100);
    let acct = node.result(
        "getAccount",
        json!({"address": alice.address().to_string()}),
    );
    assert_eq!(acct["nonce"], "1");
    let info = node.result("getTransaction", json!([hash]));
    assert_eq!(info["status"], "finalized");
    assert_eq!(info["receipt"]["status"], "success");
    assert_eq!(info["transaction"]["amount"], "100");
    let out = cli(&node, &["balance", &bob.address().to_string()]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        (start_balance + 100).to_string()
    );

    // Queued behind a gap, replaced by a higher fee, promoted when the gap closes.
    let later = signed(alice, bob.address(), 5, 10, 2);
    assert!(send(&node, &later).get("result").is_some());
    let q = wait_status(&node, &later.hash().to_string(), "queued");
    assert_eq!(q["waitingForNonce"], "1");
    let cheap = signed(alice, bob.address(), 6, 10, 2);
    let refused = send(&node, &cheap);
    assert_eq!(
        refused["error"]["code"],
        RejectReason::Underpriced.code(),
        "{refused}"
    );
    let pricier = signed(alice, bob.address(), 5, 11, 2);
    assert!(send(&node, &pricier).get("result").is_some());
    let replaced = node.result("getTransaction", json!([later.hash().to_string()]));
    assert_eq!(replaced["status"], "evicted");
    assert_eq!(replaced["reason"]["code"], "replaced");
    let gap = signed(alice, bob.address(), 5, 1, 1);
    assert!(send(&node, &gap).get("result").is_some());
    wait_status(&node, &pricier.hash().to_string(), "finalized");
    wait_status(&node, &gap.hash().to_string(), "finalized");

    // Refusals, each with its code, remembered as rejected where the hash is known.
    let bad_sig = signed(alice, bob.address(), 1, 1, 3).altered(|_, sig| sig.0[10] ^= 1);
    let r = send(&node, &bad_sig);
    assert_eq!(r["error"]["code"], RejectReason::BadSignature.code(), "{r}");
    let rejected = node.result("getTransaction", json!([bad_sig.hash().to_string()]));
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"]["code"], "badSignature");
    let other_chain = Transaction {
        chain_id: CHAIN + 1,
        from: alice.address(),
        to: bob.address(),
        amount: 1,
        fee: 1,
        nonce: 3,
    }
    .sign(alice);
    assert_eq!(
        send(&node, &other_chain)["error"]["code"],
        RejectReason::WrongChain.code()
    );
    assert_eq!(
        send(&node, &gap)["error"]["code"],
        RejectReason::AlreadyFinal.code(),
        "replayed final tx"
    );
    let replay_nonce = signed(alice, bob.address(), 7, 1, 0);
    assert_eq!(
        send(&node, &replay_nonce)["error"]["code"],
        RejectReason::NonceTooLow.code()
    );
    let overflow = signed(alice, bob.address(), u64::MAX, 1, 3);
    assert_eq!(
        send(&node, &overflow)["error"]["code"],
        RejectReason::InsufficientBalance.code()
    );
    let r = node.call("sendTransaction", json!(["not hex"]));
    assert_eq!(r["error"]["code"], -32602);
    let r = node.call("sendTransaction", json!(["00ff"]));
    assert_eq!(r["error"]["code"], RejectReason::Malformed.code());
    let (_, r) = post_json(&node.rpc, "{\"jsonrpc\": \"2.0\", \"method\"");
    assert_eq!(r.unwrap()["error"]["code"], -32700);
    let (_, r) = post_json(
        &node.rpc,
        r#"{"jsonrpc":"2.0","method":"getBalance","params":[5],"id":1}"#,
    );
    assert_eq!(r.unwrap()["error"]["code"], -32602);
    let huge = format!(
        "[{}]",
        vec![r#"{"jsonrpc":"2.0","method":"getBlockHeight","id":1}"#; 1001].join(",")
    );
    let (_, r) = post_json(&node.rpc, &huge);
    assert_eq!(r.unwrap()["error"]["code"], -32600);
    assert_eq!(announce_huge_body(&node.rpc), 413);
    let unknown = node.result("getTransaction", json!([format!("{:064x}", 7)]));
    assert_eq!(unknown["status"], "unknown");

    // The CLI exits non-zero with the reason on a refusal.
    let out = cli(
        &node,
        &[
            "transfer",
            "--key",
            key_file.to_str().unwrap(),
            "--to",
            &bob.address().to_string(),
            "--amount",
            &u64::MAX.to_string(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: insufficient balance"), "{err}");

    // Still serving after all that.
    let height = node.result("getStatus", json!([]))["height"].clone();
    let alice_balance = balance(&node, &alice.address());
    let block = node.result("getBlock", json!(["latest", true]));
    assert_eq!(block["header"]["height"], height);

    // Restart: clean shutdown, same head and balances after.
    assert!(node.stop(), "SIGTERM gives a clean exit");
    let node = NodeProcess::start(&home, &[]);
    assert_eq!(node.result("getStatus", json!([]))["height"], height);
    assert_eq!(balance(&node, &alice.address()), alice_balance);
    let info = node.result("getTransaction", json!([hash]));
    assert_eq!(info["status"], "finalized");
}

#[test]
fn websocket_follows_a_transaction_to_finality_and_streams_heads() {
    let dir = tempfile::tempdir().unwrap();
    // --ephemeral makes its home under TMPDIR: kept inside this test's directory, so a
    // failed run leaves nothing behind, and the clean stop below must remove it.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let node = NodeProcess::start_with_env(
        &dir.path().join("h"),
        &["--ephemeral", "--accounts", "2"],
        &[("TMPDIR", Some(tmp.to_str().unwrap()))],
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        1,
        "the ephemeral home is under TMPDIR"
    );
    let keys = {
        // --ephemeral keeps its home in a temporary directory: derive the keys instead.
        let status = node.result("getStatus", json!([]));
        assert_eq!(status["chainId"], CHAIN);
        (0..2u32)
            .map(|i| {
                let seed = grapevine_ledger::crypto::sha256(&[
                    b"grapevine/dev-account/",
                    &i.to_le_bytes(),
                ]);
                Keypair::from_seed(&seed.0)
            })
            .collect::<Vec<_>>()
    };
    let ws_url = node.rpc.replacen("http://", "ws://", 1) + "/ws";
    let (mut ws, _) = tungstenite::connect(&ws_url).unwrap();
    // Never block forever on a silent socket: a missing notification fails the test.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let t = signed(&keys[0], keys[1].address(), 9, 1, 0);
    let hash = t.hash().to_string();
    for req in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribeTransaction", "params": [hash]}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "subscribeHeads"}),
    ] {
        ws.send(tungstenite::Message::Text(req.to_string().into()))
            .unwrap();
    }
    let mut statuses = vec![];
    let mut heads = 0;
    let mut confirmed = 0;
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (heads == 0 || statuses.last().map(String::as_str) != Some("finalized"))
        && Instant::now() < deadline
    {
        let msg = ws.read().expect("a WebSocket message within 10 s");
        let tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        if v.get("result").is_some() && v.get("id").is_some() {
            confirmed += 1;
        }
        if v["method"] == "subscription" {
            let r = &v["params"]["result"];
            if r.get("header").is_some() {
                heads += 1;
            } else {
                assert_eq!(r["hash"], hash.as_str());
                statuses.push(r["status"].as_str().unwrap().to_string());
            }
        }
        // Send the transaction only once both subscriptions are in place, so its block
        // cannot be committed before the head subscription exists.
        if confirmed == 2 && !sent {
            assert!(send(&node, &t).get("result").is_some());
            sent = true;
        }
    }
    assert!(heads >= 1, "a head notification arrived");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("finalized"),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| s == "unknown" || s == "pending" || s == "finalized"),
        "{statuses:?}"
    );
    assert!(node.stop(), "SIGTERM gives a clean exit");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(
        left.is_empty(),
        "a clean stop removes the ephemeral home: {left:?}"
    );
}

#[test]
fn health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // On disk, so the database's memory is reported too.
    let node = NodeProcess::start(&dir.path().join("h"), &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&format!("{}/health", node.rpc)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("ok"));
    node.result("getStatus", json!([]));
    let mut m = agent.get(&format!("{}/metrics", node.rpc)).call().unwrap();
    let text = m.body_mut().read_to_string().unwrap();
    for name in [
        "grapevine_height",
        "grapevine_mempool_pending",
        "grapevine_rpc_requests",
        "grapevine_peers",
        "grapevine_db_memory_bytes{part=\"account_cache\"}",
        "grapevine_db_memory_bytes{part=\"memtables\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

/// A node caps glibc's malloc arenas (docs/PERFORMANCE.md, "Machine notes") by starting
/// itself again in place with `MALLOC_ARENA_MAX` set, at the number of cores (at least
/// 2); a value the operator set is kept. The variable is read from the environment of
/// the process started, so a node that did not restart in place (same process id)
/// fails this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_node_caps_its_malloc_arenas_unless_the_operator_chose() {
    fn arena_env(node: &NodeProcess) -> Option<String> {
        let pid = node.pid().expect("running");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("readable environ");
        environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("MALLOC_ARENA_MAX=").map(String::from))
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));

    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with_env(dir.path(), &[], &[("MALLOC_ARENA_MAX", None)]);
    assert_eq!(arena_env(&node), Some(cores.to_string()));
    // It serves as usual after restarting itself.
    assert!(!node.result("getBlockHeight", json!([])).is_null());
    assert!(node.stop(), "a clean stop after the restart in place");

    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with_env(dir.path(), &[], &[("MALLOC_ARENA_MAX", Some("3"))]);
    assert_eq!(arena_env(&node).as_deref(), Some("3"));
    assert!(node.stop());
}
