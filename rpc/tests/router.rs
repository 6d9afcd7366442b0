//! The RPC router driven through `oneshot`, without sockets, against a fake node. The
//! first test is the JSON-RPC 2.0 specification's examples section as a table (with our
//! methods standing in for the specification's `subtract`, `sum` and friends).

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::{post, router};
use grapevine_ledger::{Hash, Keypair};
use grapevine_rpc::jsonrpc::codes;
use grapevine_rpc::{RejectReason, RpcConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn addr() -> String {
    Keypair::from_seed(&[1; 32]).address().to_string()
}

#[tokio::test]
async fn specification_examples() {
    let a = addr();
    let table: Vec<(&str, String, Option<Value>)> = vec![
        (
            "call with positional parameters",
            json!({"jsonrpc": "2.0", "method": "getBalance", "params": [a], "id": 1}).to_string(),
            Some(json!({"jsonrpc": "2.0", "result": "18446744073709551615", "id": 1})),
        ),
        (
            "call with named parameters",
            json!({"jsonrpc": "2.0", "method": "getBalance", "params": {"address": a}, "id": 3}).to_string(),
            Some(json!({"jsonrpc": "2.0", "result": "18446744073709551615", "id": 3})),
        ),
        (
            "a notification",
            r#"{"jsonrpc": "2.0", "method": "getBlockHeight", "params": []}"#.into(),
            None,
        ),
        (
            "a notification of a method that does not exist",
            r#"{"jsonrpc": "2.0", "method": "foobar"}"#.into(),
            None,
        ),
        (
            "call of non-existent method",
            r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#.into(),
            Some(json!({"jsonrpc": "2.0", "error": {"code": codes::METHOD_NOT_FOUND, "message": "Method not found: foobar"}, "id": "1"})),
        ),
        (
            "call with invalid JSON",
            r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#.into(),
            Some(json!({"jsonrpc": "2.0", "error": {"code": codes::PARSE_ERROR}, "id": null})),
        ),
        (
            "call with invalid Request object",
            r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#.into(),
            Some(json!({"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null})),
        ),
        (
            "batch call with invalid JSON",
            r#"[{"jsonrpc": "2.0", "method": "getBlockHeight", "id": "1"},{"jsonrpc": "2.0", "method"]"#.into(),
            Some(json!({"jsonrpc": "2.0", "error": {"code": codes::PARSE_ERROR}, "id": null})),
        ),
        (
            "call with an empty array",
            "[]".into(),
            Some(json!({"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null})),
        ),
        (
            "call with an invalid batch, but not empty",
            "[1]".into(),
            Some(json!([{"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null}])),
        ),
        (
            "call with invalid batch",
            "[1,2,3]".into(),
            Some(json!([
                {"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null}
            ])),
        ),
        (
            "call batch",
            json!([
                {"jsonrpc": "2.0", "method": "getBalance", "params": [a], "id": "1"},
                {"jsonrpc": "2.0", "method": "getBlockHeight", "params": []},
                {"jsonrpc": "2.0", "method": "getBlockHeight", "id": "2"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
                {"jsonrpc": "2.0", "method": "getStatus", "id": "9"}
            ])
            .to_string(),
            Some(json!([
                {"jsonrpc": "2.0", "result": "18446744073709551615", "id": "1"},
                {"jsonrpc": "2.0", "result": "7", "id": "2"},
                {"jsonrpc": "2.0", "error": {"code": codes::INVALID_REQUEST}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": codes::METHOD_NOT_FOUND}, "id": "5"},
                {"jsonrpc": "2.0", "result": {"chainId": 1}, "id": "9"}
            ])),
        ),
        (
            "call batch (all notifications)",
            r#"[{"jsonrpc": "2.0", "method": "getBlockHeight", "params": [1,2,4]},{"jsonrpc": "2.0", "method": "getStatus"}]"#.into(),
            None,
        ),
    ];
    for (name, req, expected) in table {
        let (status, got) = post(router(RpcConfig::default()), req).await;
        match expected {
            None => {
                assert_eq!(got, None, "{name}: a notification gets no response");
                assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
            }
            Some(exp) => {
                let got = got.unwrap_or_else(|| panic!("{name}: expected a response"));
                assert!(
                    subset(&exp, &got),
                    "{name}:\nexpected (subset) {exp}\n got {got}"
                );
            }
        }
    }
}

/// Whether every field of `exp` appears with the same value in `got` (arrays must have
/// the same length; objects may have more fields).
fn subset(exp: &Value, got: &Value) -> bool {
    match (exp, got) {
        (Value::Object(e), Value::Object(g)) => e
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| subset(v, gv))),
        (Value::Array(e), Value::Array(g)) => {
            e.len() == g.len() && e.iter().zip(g).all(|(a, b)| subset(a, b))
        }
        _ => exp == got,
    }
}

#[tokio::test]
async fn bad_params_get_invalid_params() {
    let cases = [
        json!({"jsonrpc": "2.0", "method": "getBalance", "params": ["not an address"], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getBalance", "params": [], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getBalance", "params": {"adress": addr()}, "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getBalance", "params": [addr(), 1], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getTransaction", "params": ["zz"], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "sendTransaction", "params": ["xyz"], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "sendTransaction", "params": [12], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getBlock", "params": [-1], "id": 1}),
        json!({"jsonrpc": "2.0", "method": "getBlock", "params": ["soon"], "id": 1}),
    ];
    for c in cases {
        let (_, got) = post(router(RpcConfig::default()), c.to_string()).await;
        let got = got.unwrap();
        assert_eq!(got["error"]["code"], codes::INVALID_PARAMS, "{c} -> {got}");
        assert!(got["error"]["message"].as_str().unwrap().len() > 10);
    }
}

#[tokio::test]
async fn application_errors_keep_their_codes_and_missing_blocks_are_reported() {
    let req = json!({"jsonrpc": "2.0", "method": "sendTransaction", "params": ["00ff"], "id": 4});
    let (_, got) = post(router(RpcConfig::default()), req.to_string()).await;
    let got = got.unwrap();
    assert_eq!(got["error"]["code"], RejectReason::Malformed.code());
    assert_eq!(
        got["error"]["data"]["reason"],
        RejectReason::Malformed.name()
    );
    assert_eq!(got["id"], 4);
    let req = json!({"jsonrpc": "2.0", "method": "getBlock", "params": [99], "id": 5});
    let (_, got) = post(router(RpcConfig::default()), req.to_string()).await;
    assert_eq!(got.unwrap()["error"]["code"], codes::BLOCK_NOT_FOUND);
}

/// A batch of plain sendTransaction calls is answered without building a JSON tree;
/// the answers are those of the general path (here taken through named parameters).
#[tokio::test]
async fn send_batches_answer_the_same_on_both_paths() {
    let calls = [
        ("01", json!(1)),
        ("00ff", json!("b")),
        ("0x02", json!(-3)),
        ("zz", json!(4)),
    ];
    let batch = |named: bool, upto: usize| {
        Value::Array(
            calls[..upto]
                .iter()
                .map(|(tx, id)| {
                    let params = if named { json!({"transaction": tx}) } else { json!([tx]) };
                    json!({"jsonrpc": "2.0", "method": "sendTransaction", "params": params, "id": id})
                })
                .collect(),
        )
        .to_string()
    };
    let post_raw = |body: String| async move {
        let req = Request::post("/")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = router(RpcConfig::default()).oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let fast = post_raw(batch(false, 3)).await;
    // The general path serializes objects with sorted keys; the plain path writes
    // "jsonrpc" first, which shows it was taken.
    assert!(
        fast.starts_with(br#"[{"jsonrpc":"2.0","result":"#),
        "{fast:?}"
    );
    let fast: Value = serde_json::from_slice(&fast).unwrap();
    let general: Value = serde_json::from_slice(&post_raw(batch(true, 3)).await).unwrap();
    assert_eq!(fast, general);
    assert_eq!(fast[0]["result"], Hash([1; 32]).to_string());
    assert_eq!(fast[0]["id"], 1);
    assert_eq!(fast[1]["error"]["data"]["reason"], "malformed");
    assert_eq!(fast[1]["id"], "b");
    assert_eq!(fast[2]["result"], Hash([2; 32]).to_string());
    assert_eq!(fast[2]["id"], -3);
    // A call whose transaction is not hex: the whole batch takes the general path,
    // which answers that call with invalid params and the others as before.
    let mixed: Value = serde_json::from_slice(&post_raw(batch(false, 4)).await).unwrap();
    assert_eq!(
        mixed.as_array().unwrap()[..3],
        general.as_array().unwrap()[..]
    );
    assert_eq!(mixed[3]["error"]["code"], codes::INVALID_PARAMS);
    assert_eq!(mixed[3]["id"], 4);
    // An id JSON cannot hold is a parse error on either path, before any admission.
    let huge = batch(false, 2).replacen("\"id\":1", "\"id\":1e400", 1);
    let got: Value = serde_json::from_slice(&post_raw(huge).await).unwrap();
    assert_eq!(got["error"]["code"], codes::PARSE_ERROR, "{got}");
}

#[tokio::test]
async fn oversized_bodies_and_batches_are_refused() {
    let cfg = RpcConfig {
        max_body_bytes: 1000,
        ..RpcConfig::default()
    };
    let (status, _) = post(router(cfg), vec![b' '; 2000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let one = json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": 1});
    let batch = Value::Array(vec![one; 1001]);
    let (_, got) = post(router(RpcConfig::default()), batch.to_string()).await;
    let got = got.unwrap();
    assert_eq!(got["error"]["code"], codes::INVALID_REQUEST);
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1000")
    );
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let r = router(RpcConfig {
        rate_limit_per_ip: 1,
        rate_limit_burst: 2,
        ..RpcConfig::default()
    });
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut statuses = vec![];
    for _ in 0..4 {
        let mut req = Request::post("/")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"jsonrpc":"2.0","method":"getBlockHeight","id":1}"#,
            ))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(client));
        let resp = r.clone().oneshot(req).await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
        }
        statuses.push(resp.status());
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn health_reports_the_reason_with_503() {
    let resp = router(RpcConfig::default())
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reason"], "catching up: 10 blocks behind");
}
