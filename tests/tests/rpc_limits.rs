//! The RPC limits of a real node (`grapevine dev`), as a hostile client or web page
//! meets them: batches past the limit, calls faster than the rate, WebSocket
//! connection floods, and requests a browser would send on behalf of another site
//! (a form post, a foreign `Origin`, a rebound host name). Each refusal comes with
//! its documented status, and the node keeps answering honest calls. The router-level
//! tests (rpc/tests/limits.rs) cover the rest (response sizes, timeouts, CORS).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use grapevine_tests::NodeProcess;
use serde_json::json;

/// Sends one raw HTTP/1.1 request and returns the status code and the body.
fn raw(rpc: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let addr = rpc.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("the node listens");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn call(id: u64) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": id})
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn a_real_node_refuses_what_its_rpc_limits_forbid_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("h"), &["--rpc-rate-limit", "600"]);
    let rpc = node.rpc.clone();

    // A batch past max_batch_calls (1,000) is refused whole.
    let big: Vec<_> = (0..1_001).map(call).collect();
    let (status, body) = raw(
        &rpc,
        "POST",
        "/",
        &[JSON],
        &serde_json::to_string(&big).unwrap(),
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    std::thread::sleep(Duration::from_secs(3));

    // A batch costs one token per call (burst 1,200 at 600/s): 900 calls pass, the
    // next 900 right after do not.
    let batch: Vec<_> = (0..900).map(call).collect();
    let batch = serde_json::to_string(&batch).unwrap();
    let (first, _) = raw(&rpc, "POST", "/", &[JSON], &batch);
    let (second, _) = raw(&rpc, "POST", "/", &[JSON], &batch);
    assert_eq!((first, second), (200, 429), "calls are charged one by one");
    std::thread::sleep(Duration::from_secs(3));

    // What a web page can make a browser send is refused.
    let one = call(1).to_string();
    let (status, _) = raw(&rpc, "POST", "/", &[("Content-Type", "text/plain")], &one);
    assert_eq!(status, 415, "a form-like POST");
    let (status, _) = raw(
        &rpc,
        "POST",
        "/",
        &[JSON, ("Host", "rebound.example:8545")],
        &one,
    );
    assert_eq!(status, 403, "a rebound host name");
    let ws_get = |extra: &[(&str, &str)]| {
        let mut h = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        h.extend_from_slice(extra);
        raw(&rpc, "GET", "/ws", &h, "").0
    };
    assert_eq!(ws_get(&[("Origin", "https://evil.example")]), 403);

    // WebSocket connections past the per-client cap (8) are refused before the upgrade.
    let ws_url = format!("{}/ws", rpc.replace("http://", "ws://"));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match tungstenite::connect(&ws_url) {
            Ok((ws, _)) => open.push(ws),
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429);
                refused += 1;
            }
            Err(e) => panic!("unexpected WebSocket error: {e}"),
        }
    }
    assert_eq!((open.len(), refused), (8, 4));
    drop(open);

    // Honest calls are still answered.
    std::thread::sleep(Duration::from_secs(1));
    let (status, body) = raw(&rpc, "POST", "/", &[JSON], &one);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\""), "{body}");
    assert!(node.stop(), "the node stops cleanly");
}
