//! The server's limits, each shown refusing what passes it: per-call rate limiting of
//! batches and WebSocket frames, batch and response sizes, WebSocket connection and
//! subscription caps, the shared concurrency cap and timeout, the `Content-Type` and
//! `Origin` checks, and CORS. HTTP tests drive the router with `oneshot`; WebSocket
//! tests serve it on 127.0.0.1:0 and talk to it with a blocking client.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::{Fake, post, router, router_over};
use grapevine_ledger::Hash;
use grapevine_rpc::jsonrpc::codes;
use grapevine_rpc::{RpcConfig, serve};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

fn calls(method: &str, n: usize) -> String {
    Value::Array(
        (0..n)
            .map(|i| json!({"jsonrpc": "2.0", "method": method, "id": i}))
            .collect(),
    )
    .to_string()
}

/// POSTs `body` as JSON from `client`; returns the status, the Retry-After header if
/// any, and the body as JSON if it is.
async fn post_from(
    router: &axum::Router,
    client: &str,
    body: String,
) -> (StatusCode, Option<String>, Option<Value>) {
    let client: SocketAddr = client.parse().unwrap();
    let mut req = Request::post("/")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(client));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, retry, serde_json::from_slice(&bytes).ok())
}

#[tokio::test]
async fn a_batch_costs_one_rate_limit_token_per_call() {
    let r = router(RpcConfig {
        rate_limit_per_ip: 1,
        rate_limit_burst: 5,
        ..RpcConfig::default()
    });
    let me = "10.1.1.1:1000";
    // Ten calls can never fit a burst of five: refused at once, and no wait would help.
    let (status, retry, body) = post_from(&r, me, calls("getBlockHeight", 10)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry, None);
    assert!(body.unwrap()["error"].as_str().unwrap().contains("split"));
    // Four calls fit; four more do not, until a token per call has come back.
    let (status, _, body) = post_from(&r, me, calls("getBlockHeight", 4)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap().as_array().unwrap().len(), 4);
    let (status, retry, _) = post_from(&r, me, calls("getBlockHeight", 4)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // Another client has its own bucket; a single call costs one.
    let one = json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": 1}).to_string();
    let (status, _, _) = post_from(&r, "10.1.1.2:1000", one.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post_from(&r, me, one).await;
    assert_eq!(status, StatusCode::OK, "the fifth token is still there");
}

#[tokio::test]
async fn a_batch_over_max_batch_calls_is_refused_whole() {
    let cfg = RpcConfig {
        max_batch_calls: 3,
        ..RpcConfig::default()
    };
    let (_, got) = post(router(cfg.clone()), calls("getBlockHeight", 4)).await;
    let got = got.unwrap();
    assert_eq!(got["error"]["code"], codes::INVALID_REQUEST, "{got}");
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 3")
    );
    // The plain sendTransaction path too.
    let sends = Value::Array(
        (0..4)
            .map(|i| json!({"jsonrpc": "2.0", "method": "sendTransaction", "params": ["01"], "id": i}))
            .collect(),
    );
    let (_, got) = post(router(cfg.clone()), sends.to_string()).await;
    assert_eq!(got.unwrap()["error"]["code"], codes::INVALID_REQUEST);
    let (_, got) = post(router(cfg), calls("getBlockHeight", 3)).await;
    assert_eq!(got.unwrap().as_array().unwrap().len(), 3);
}

/// A node whose blocks and mempool hold `bulk` hashes (67 bytes of JSON each), under a
/// 64 KiB response limit.
fn bulky(bulk: usize) -> (axum::Router, usize) {
    let limit = 64 * 1024;
    let r = router_over(
        Arc::new(Fake::new(bulk, Duration::ZERO)),
        RpcConfig {
            max_response_bytes: limit,
            ..RpcConfig::default()
        },
    );
    (r, limit)
}

async fn post_raw(router: axum::Router, body: String) -> Vec<u8> {
    let req = Request::post("/")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[tokio::test]
async fn responses_stop_at_max_response_bytes() {
    let (r, _) = bulky(10_000);
    let one = json!({"jsonrpc": "2.0", "method": "getMempool", "params": [true], "id": 7});
    let bytes = post_raw(r.clone(), one.to_string()).await;
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    let got: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(got["error"]["code"], codes::RESPONSE_TOO_LARGE, "{got}");
    assert_eq!(got["id"], 7);
    // Small answers still come: the limit is on bytes, not on methods.
    let small = json!({"jsonrpc": "2.0", "method": "getMempool", "params": [false], "id": 8});
    let got: Value = serde_json::from_slice(&post_raw(r, small.to_string()).await).unwrap();
    assert_eq!(got["result"]["pending"], 10_000);
}

#[tokio::test]
async fn a_batch_is_answered_up_to_max_response_bytes_and_refused_past_it() {
    // Blocks of 300 hashes, about 20 KB each: three fit in 64 KiB.
    let (r, limit) = bulky(300);
    let mut batch = vec![json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": "h"})];
    batch.extend((0..100).map(
        |i| json!({"jsonrpc": "2.0", "method": "getBlock", "params": [i % 8, true], "id": i}),
    ));
    let bytes = post_raw(r, Value::Array(batch).to_string()).await;
    // Results up to the limit, then one small error object per call.
    assert!(bytes.len() < limit + 100 * 300, "{} bytes", bytes.len());
    let got: Value = serde_json::from_slice(&bytes).unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 101);
    assert_eq!(got[0]["result"], "7");
    for (i, g) in got[1..4].iter().enumerate() {
        assert_eq!(g["result"]["txHashes"].as_array().unwrap().len(), 300);
        assert_eq!(g["id"], i);
    }
    let message = |g: &Value| g["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(got[4]["error"]["code"], codes::RESPONSE_TOO_LARGE);
    assert!(message(&got[4]).starts_with("response too large"));
    for (i, g) in got.iter().enumerate().skip(5) {
        assert_eq!(g["error"]["code"], codes::RESPONSE_TOO_LARGE, "{g}");
        assert!(message(g).starts_with("not run"), "{g}");
        assert_eq!(g["id"], i - 1);
    }
}

#[tokio::test]
async fn post_requires_a_json_content_type() {
    let body = json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": 1}).to_string();
    for (content_type, want) in [
        (Some("text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            Some("application/x-www-form-urlencoded"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (Some("application/json; charset=utf-8"), StatusCode::OK),
    ] {
        let mut req = Request::post("/");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let resp = router(RpcConfig::default())
            .oneshot(req.body(Body::from(body.clone())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{content_type:?}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("a JSON body");
        if want != StatusCode::OK {
            assert!(v["error"].as_str().unwrap().contains("application/json"));
        }
    }
}

/// Calls addressed to a host name the node does not answer to (a DNS-rebinding page
/// whose domain now resolves to 127.0.0.1) are refused; loopback names are not.
#[tokio::test]
async fn calls_to_an_unknown_host_name_are_refused() {
    let body = json!({"jsonrpc": "2.0", "method": "getBlockHeight", "id": 1}).to_string();
    for (host, want) in [
        ("evil.example:8545", StatusCode::FORBIDDEN),
        ("127.0.0.1:8545", StatusCode::OK),
        ("localhost:8545", StatusCode::OK),
    ] {
        let req = Request::post("/")
            .header("content-type", "application/json")
            .header("host", host)
            .body(Body::from(body.clone()))
            .unwrap();
        let resp = router(RpcConfig::default()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), want, "{host}");
    }
    let cfg = RpcConfig {
        allowed_hosts: vec!["evil.example".into()],
        ..RpcConfig::default()
    };
    let req = Request::post("/")
        .header("content-type", "application/json")
        .header("host", "evil.example")
        .body(Body::from(body))
        .unwrap();
    let resp = router(cfg).oneshot(req).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a configured name is answered"
    );
}

/// A refused POST still costs its sender a token: a flood of them is rate limited.
#[tokio::test]
async fn refused_content_types_count_against_the_rate_limit() {
    let r = router(RpcConfig {
        rate_limit_per_ip: 1,
        rate_limit_burst: 1,
        ..RpcConfig::default()
    });
    let mut statuses = vec![];
    for _ in 0..2 {
        let mut req = Request::post("/")
            .header("content-type", "text/plain")
            .body(Body::from("{}"))
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo("10.1.1.1:1000".parse::<SocketAddr>().unwrap()));
        statuses.push(r.clone().oneshot(req).await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

async fn preflight(cfg: RpcConfig, origin: &str) -> Option<String> {
    let req = Request::options("/")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let resp = router(cfg).oneshot(req).await.unwrap();
    resp.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn cors_answers_only_configured_origins() {
    let wallet = "https://wallet.example";
    assert_eq!(preflight(RpcConfig::default(), wallet).await, None);
    let cfg = RpcConfig {
        cors_allowed_origins: vec![wallet.into()],
        ..RpcConfig::default()
    };
    assert_eq!(
        preflight(cfg.clone(), wallet).await.as_deref(),
        Some(wallet)
    );
    assert_eq!(preflight(cfg, "https://evil.example").await, None);
    let any = RpcConfig {
        cors_allowed_origins: vec!["*".into()],
        ..RpcConfig::default()
    };
    assert_eq!(
        preflight(any, "https://evil.example").await.as_deref(),
        Some("*")
    );
}

/// Serves a router over `fake` with `cfg` on 127.0.0.1:0 until the test's runtime ends.
async fn serve_on_loopback(fake: Arc<Fake>, cfg: RpcConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router_over(fake, cfg),
        std::future::pending(),
    ));
    addr
}

type Ws = WebSocket<TcpStream>;

/// Opens `/ws` at `server` over a connection from `from`'s address (another loopback
/// address stands for another client), with `origin` if given; the HTTP status of a
/// refused handshake is the error.
async fn ws_open(server: SocketAddr, from: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{server}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio::task::spawn_blocking(move || match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    })
    .await
    .unwrap()
}

/// Sends `req` and returns the answer with its id, skipping notifications.
async fn ws_call(ws: Ws, req: Value) -> (Ws, Value) {
    tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        ws.send(Message::Text(req.to_string().into())).unwrap();
        loop {
            let Message::Text(t) = ws.read().expect("an answer within 10 s") else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v.get("method") != Some(&json!("subscription")) {
                return (ws, v);
            }
        }
    })
    .await
    .unwrap()
}

fn fake() -> Arc<Fake> {
    Arc::new(Fake::new(0, Duration::ZERO))
}

#[tokio::test]
async fn websocket_connections_are_capped_per_client_and_in_total() {
    let server = serve_on_loopback(
        fake(),
        RpcConfig {
            max_ws_per_ip: 2,
            max_ws_connections: 3,
            ..RpcConfig::default()
        },
    )
    .await;
    let a1 = ws_open(server, "127.0.0.1", None).await.unwrap();
    let _a2 = ws_open(server, "127.0.0.1", None).await.unwrap();
    assert_eq!(ws_open(server, "127.0.0.1", None).await.err(), Some(429));
    let _b1 = ws_open(server, "127.0.0.2", None).await.unwrap();
    assert_eq!(ws_open(server, "127.0.0.3", None).await.err(), Some(503));
    // A closed connection frees its slot (once the server has seen the close).
    drop(a1);
    let mut reopened = None;
    for _ in 0..200 {
        if let Ok(ws) = ws_open(server, "127.0.0.1", None).await {
            reopened = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reopened.is_some(), "the slot was never freed");
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let server = serve_on_loopback(
        fake(),
        RpcConfig {
            max_subscriptions_per_connection: 2,
            ..RpcConfig::default()
        },
    )
    .await;
    let ws = ws_open(server, "127.0.0.1", None).await.unwrap();
    let sub_tx = |id: u64, b: u8| {
        json!({"jsonrpc": "2.0", "id": id, "method": "subscribeTransaction",
               "params": [Hash([b; 32]).to_string()]})
    };
    let (ws, heads) = ws_call(
        ws,
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribeHeads"}),
    )
    .await;
    assert!(heads["result"].is_string(), "{heads}");
    let (ws, first) = ws_call(ws, sub_tx(2, 1)).await;
    assert!(first["result"].is_string(), "{first}");
    let (ws, over) = ws_call(ws, sub_tx(3, 2)).await;
    assert_eq!(
        over["error"]["code"],
        codes::TOO_MANY_SUBSCRIPTIONS,
        "{over}"
    );
    let (ws, gone) = ws_call(
        ws,
        json!({"jsonrpc": "2.0", "id": 4, "method": "unsubscribe", "params": [first["result"]]}),
    )
    .await;
    assert_eq!(gone["result"], true);
    let (_ws, again) = ws_call(ws, sub_tx(5, 2)).await;
    assert!(again["result"].is_string(), "{again}");
}

#[tokio::test]
async fn websocket_calls_take_rate_limit_tokens() {
    let server = serve_on_loopback(
        fake(),
        RpcConfig {
            rate_limit_per_ip: 1,
            rate_limit_burst: 4,
            ..RpcConfig::default()
        },
    )
    .await;
    // The handshake takes one token; a batch of three calls takes the rest.
    let ws = ws_open(server, "127.0.0.1", None).await.unwrap();
    let height = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "getBlockHeight"});
    let (ws, got) = ws_call(ws, Value::Array((1..=3).map(height).collect())).await;
    assert_eq!(got.as_array().map(Vec::len), Some(3), "{got}");
    let (ws, got) = ws_call(ws, height(4)).await;
    assert_eq!(got["error"]["code"], codes::RATE_LIMITED, "{got}");
    assert_eq!(got["id"], 4);
    // A batch bigger than the burst is refused as one, and the connection stays open.
    let batch = Value::Array((10..15).map(height).collect());
    let (_ws, got) = ws_call(ws, batch).await;
    assert_eq!(got["error"]["code"], codes::RATE_LIMITED, "{got}");
}

#[tokio::test]
async fn websocket_calls_share_the_concurrency_cap_with_http() {
    let slow = Arc::new(Fake::new(0, Duration::from_millis(300)));
    let server = serve_on_loopback(
        slow.clone(),
        RpcConfig {
            max_concurrency: 1,
            ..RpcConfig::default()
        },
    )
    .await;
    let ws = ws_open(server, "127.0.0.1", None).await.unwrap();
    // An HTTP call holds the one permit; a WebSocket call waits for it.
    let url = format!("http://{server}");
    let http = tokio::task::spawn_blocking(move || {
        let peers = json!({"jsonrpc": "2.0", "id": 1, "method": "getPeers"});
        grapevine_rpc::client::Client::new(&url, Duration::from_secs(10))
            .post(&peers.to_string())
            .unwrap()
            .0
    });
    while slow.slow_begun.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_ws, got) = ws_call(
        ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "getBlockHeight"}),
    )
    .await;
    assert_eq!(got["result"], "7", "{got}");
    assert_eq!(
        slow.slow_ended.load(Ordering::SeqCst),
        1,
        "the WebSocket call ran while the HTTP call held the only permit"
    );
    assert_eq!(http.await.unwrap(), 200);
}

#[tokio::test]
async fn websocket_calls_have_the_request_timeout() {
    let server = serve_on_loopback(
        Arc::new(Fake::new(0, Duration::from_millis(300))),
        RpcConfig {
            request_timeout: Duration::from_millis(50),
            ..RpcConfig::default()
        },
    )
    .await;
    let ws = ws_open(server, "127.0.0.1", None).await.unwrap();
    let (ws, got) = ws_call(ws, json!({"jsonrpc": "2.0", "id": 1, "method": "getPeers"})).await;
    assert_eq!(got["error"]["code"], codes::TIMED_OUT, "{got}");
    assert_eq!(got["id"], 1);
    let (_ws, got) = ws_call(
        ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "getBlockHeight"}),
    )
    .await;
    assert_eq!(got["result"], "7", "the connection stays usable: {got}");
}

/// A timed-out request's call into the node runs on, and keeps its place under the
/// concurrency cap until it ends: timeouts cannot pile up work past the cap.
#[tokio::test]
async fn a_timed_out_call_keeps_its_place_until_it_ends() {
    let slow = Arc::new(Fake::new(0, Duration::from_millis(1500)));
    let server = serve_on_loopback(
        slow.clone(),
        RpcConfig {
            max_concurrency: 1,
            request_timeout: Duration::from_millis(100),
            ..RpcConfig::default()
        },
    )
    .await;
    let url = format!("http://{server}");
    let status = tokio::task::spawn_blocking(move || {
        let peers = json!({"jsonrpc": "2.0", "id": 1, "method": "getPeers"});
        let client = grapevine_rpc::client::Client::new(&url, Duration::from_secs(10));
        [(); 2].map(|()| client.post(&peers.to_string()).unwrap().0)
    })
    .await
    .unwrap();
    assert_eq!(status, [408, 408]);
    assert_eq!(
        slow.slow_begun.load(Ordering::SeqCst),
        1,
        "the second call began while the first one's work still ran"
    );
}

#[tokio::test]
async fn websocket_handshakes_are_checked_for_their_origin() {
    let wallet = "https://wallet.example";
    let server = serve_on_loopback(
        fake(),
        RpcConfig {
            cors_allowed_origins: vec![wallet.into()],
            ..RpcConfig::default()
        },
    )
    .await;
    assert_eq!(
        ws_open(server, "127.0.0.1", Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    assert!(ws_open(server, "127.0.0.1", Some(wallet)).await.is_ok());
    let own = format!("http://{server}");
    assert!(ws_open(server, "127.0.0.1", Some(&own)).await.is_ok());
    assert!(ws_open(server, "127.0.0.1", None).await.is_ok());
    let default = serve_on_loopback(fake(), RpcConfig::default()).await;
    assert_eq!(
        ws_open(default, "127.0.0.1", Some(wallet)).await.err(),
        Some(403)
    );
}
