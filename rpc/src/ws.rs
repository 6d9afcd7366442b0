//! WebSocket subscriptions at `/ws`.
//!
//! Clients send JSON-RPC requests as text frames. `subscribeHeads` and
//! `subscribeTransaction(hash)` answer with a subscription id; notifications follow as
//! `{"jsonrpc":"2.0","method":"subscription","params":{"subscription":ID,"result":…}}`.
//! `unsubscribe(subscription)` ends one. A transaction subscription first sends the
//! current state, then each change, and ends by itself once the transaction is final,
//! rejected, evicted or expired. Every other method works as over HTTP, under the same
//! limits: each call takes a rate-limit token, its calls into the node a permit of the
//! concurrency cap HTTP shares, and at most the request timeout. A call over a limit gets an error object and the
//! connection stays open: the client waits and retries, and the node's cost per refusal
//! is one small frame. Connections are capped in total and per client, and checked
//! for their `Origin`, before the upgrade.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use grapevine_ledger::Hash;
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::{HeadEvent, NodeApi, TxInfo, TxState};
use crate::guard::{self, SlotRefusal, WsSlot};
use crate::jsonrpc::{self, codes};
use crate::server::{AppState, Limit, client_ip};

/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

fn refusal(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

pub(crate) async fn handler<A: NodeApi>(
    State(state): State<Arc<AppState<A>>>,
    headers: HeaderMap,
    conn: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !guard::origin_allowed(&headers, &state.allowed_origins) {
        state.metrics.refuse(Limit::Origin);
        return refusal(
            StatusCode::FORBIDDEN,
            "this node does not take WebSocket connections from pages of that origin \
             (see [rpc] cors_allowed_origins)"
                .into(),
        );
    }
    let ip = client_ip(conn);
    let slot = match state.ws_slots.take(ip) {
        Ok(slot) => slot,
        Err(SlotRefusal::Total(n)) => {
            state.metrics.refuse(Limit::WsConnections);
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this node holds its most WebSocket connections ({n}); retry later"),
            );
        }
        Err(SlotRefusal::PerClient(n)) => {
            state.metrics.refuse(Limit::WsPerIp);
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                format!("at most {n} WebSocket connections per client"),
            );
        }
    };
    match ws {
        Ok(ws) => ws
            .max_message_size(MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| session(state, socket, ip, slot)),
        Err(rejection) => rejection.into_response(),
    }
}

fn is_terminal(s: &TxState) -> bool {
    !matches!(
        s,
        TxState::Pending | TxState::Queued { .. } | TxState::Unknown
    )
}

struct Session<A: ?Sized> {
    state: Arc<AppState<A>>,
    ip: Option<IpAddr>,
    heads: Option<(String, broadcast::Receiver<HeadEvent>)>,
    txs: Option<broadcast::Receiver<TxInfo>>,
    tx_subs: HashMap<String, Hash>,
    next_id: u64,
}

fn notification(sub: &str, result: impl serde::Serialize) -> String {
    json!({"jsonrpc": "2.0", "method": "subscription", "params": {"subscription": sub, "result": result}})
        .to_string()
}

fn reply(id: Value, result: Result<Value, (i64, String)>) -> String {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
        }
    }
    .to_string()
}

async fn recv_head(
    h: &mut Option<(String, broadcast::Receiver<HeadEvent>)>,
) -> Result<HeadEvent, RecvError> {
    match h {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_tx(t: &mut Option<broadcast::Receiver<TxInfo>>) -> Result<TxInfo, RecvError> {
    match t {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<A: NodeApi> Session<A> {
    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    async fn current(&self, hash: Hash) -> Option<TxInfo> {
        let api = self.state.api.clone();
        self.state
            .blocking(move || api.transaction(&hash).ok())
            .await
            .flatten()
    }

    /// Answers as HTTP would (parse errors, batches, every method but subscriptions).
    async fn as_http(&self, text: &str) -> Vec<String> {
        let st = self.state.clone();
        let body = text.as_bytes().to_vec();
        let out = self
            .state
            .blocking(move || {
                jsonrpc::handle_body_bytes(&*st.api, &body, &st.limits, &|o| st.metrics.observe(o))
            })
            .await
            .flatten();
        // The dispatcher writes JSON, which is UTF-8.
        out.and_then(|v| String::from_utf8(v).ok())
            .into_iter()
            .collect()
    }

    fn subscriptions(&self) -> usize {
        usize::from(self.heads.is_some()) + self.tx_subs.len()
    }

    fn too_many_subscriptions(&self, id: Value) -> Vec<String> {
        self.state.metrics.refuse(Limit::Subscriptions);
        vec![reply(
            id,
            Err((
                codes::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {} subscriptions per connection; unsubscribe from one first",
                    self.state.max_subscriptions
                ),
            )),
        )]
    }

    /// Handles one text frame under the limits every call has (rate, time; its calls
    /// into the node wait for the concurrency permits HTTP uses); returns the frames to
    /// send back.
    async fn on_frame(&mut self, text: &str) -> Vec<String> {
        let calls = jsonrpc::call_cost(text.as_bytes(), self.state.limits.max_batch_calls);
        if let Err(r) = self.state.charge(self.ip, calls) {
            return vec![reply(
                request_id(text),
                Err((codes::RATE_LIMITED, r.message(calls))),
            )];
        }
        let limit = self.state.request_timeout;
        match tokio::time::timeout(limit, self.on_text(text)).await {
            Ok(frames) => frames,
            Err(_) => {
                self.state.metrics.refuse(Limit::WsTimeout);
                vec![reply(
                    request_id(text),
                    Err((
                        codes::TIMED_OUT,
                        format!("the call took longer than {} s", limit.as_secs_f64()),
                    )),
                )]
            }
        }
    }

    /// Handles one text frame; returns the frames to send back.
    async fn on_text(&mut self, text: &str) -> Vec<String> {
        let Ok(Value::Object(req)) = serde_json::from_str::<Value>(text) else {
            return self.as_http(text).await;
        };
        let well_formed = req.get("jsonrpc") == Some(&Value::String("2.0".into()))
            && matches!(
                req.get("id"),
                Some(Value::String(_) | Value::Number(_) | Value::Null)
            );
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let method = if well_formed {
            req.get("method").and_then(Value::as_str).unwrap_or("")
        } else {
            // Invalid requests and notifications take the HTTP path, which answers them
            // as the specification says (an error, or nothing).
            ""
        };
        let first_param = |name: &str| match req.get("params") {
            Some(Value::Array(a)) => a.first().cloned(),
            Some(Value::Object(o)) => o.get(name).cloned(),
            _ => None,
        };
        match method {
            "subscribeHeads" => {
                if self.heads.is_none() && self.subscriptions() >= self.state.max_subscriptions {
                    return self.too_many_subscriptions(id);
                }
                let sub = self.new_id("h");
                self.heads = Some((sub.clone(), self.state.api.subscribe_heads()));
                vec![reply(id, Ok(Value::String(sub)))]
            }
            "subscribeTransaction" => {
                let hash = first_param("hash")
                    .and_then(|v| v.as_str().and_then(|s| s.parse::<Hash>().ok()));
                let Some(hash) = hash else {
                    return vec![reply(
                        id,
                        Err((
                            codes::INVALID_PARAMS,
                            "parameter \"hash\" must be a transaction hash".into(),
                        )),
                    )];
                };
                if self.subscriptions() >= self.state.max_subscriptions {
                    return self.too_many_subscriptions(id);
                }
                if self.txs.is_none() {
                    self.txs = Some(self.state.api.subscribe_transactions());
                }
                let sub = self.new_id("t");
                let mut out = vec![reply(id, Ok(Value::String(sub.clone())))];
                // Subscribed before reading the current state, so no change is missed.
                match self.current(hash).await {
                    Some(info) => {
                        let done = is_terminal(&info.state);
                        out.push(notification(&sub, &info));
                        if !done {
                            self.tx_subs.insert(sub, hash);
                        }
                    }
                    None => {
                        self.tx_subs.insert(sub, hash);
                    }
                }
                out
            }
            "unsubscribe" => {
                let sub = first_param("subscription")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let removed = if self.heads.as_ref().is_some_and(|(s, _)| *s == sub) {
                    self.heads = None;
                    true
                } else {
                    self.tx_subs.remove(&sub).is_some()
                };
                vec![reply(id, Ok(Value::Bool(removed)))]
            }
            _ => self.as_http(text).await,
        }
    }

    /// Frames for a transaction event, removing subscriptions that ended.
    fn on_tx(&mut self, info: &TxInfo) -> Vec<String> {
        let subs: Vec<String> = self
            .tx_subs
            .iter()
            .filter(|(_, h)| **h == info.hash)
            .map(|(s, _)| s.clone())
            .collect();
        let done = is_terminal(&info.state);
        subs.into_iter()
            .map(|s| {
                if done {
                    self.tx_subs.remove(&s);
                }
                notification(&s, info)
            })
            .collect()
    }
}

/// The id of a frame that is one request object, for an error answered without
/// reading the rest; null otherwise.
fn request_id(text: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(default)]
        id: Value,
    }
    serde_json::from_str::<Id>(text)
        .map(|r| r.id)
        .unwrap_or(Value::Null)
}

async fn session<A: NodeApi>(
    state: Arc<AppState<A>>,
    mut socket: WebSocket,
    ip: Option<IpAddr>,
    _slot: WsSlot,
) {
    let mut s = Session {
        state,
        ip,
        heads: None,
        txs: None,
        tx_subs: HashMap::new(),
        next_id: 0,
    };
    loop {
        let frames: Vec<String> = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => s.on_frame(t.as_str()).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
            ev = recv_head(&mut s.heads) => match ev {
                Ok(head) => s.heads.as_ref().map(|(sub, _)| notification(sub, &head)).into_iter().collect(),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            ev = recv_tx(&mut s.txs) => match ev {
                Ok(info) => s.on_tx(&info),
                Err(RecvError::Lagged(_)) => {
                    // Missed events: send each subscribed transaction's current state.
                    let hashes: Vec<Hash> = s.tx_subs.values().copied().collect();
                    let mut out = Vec::new();
                    for h in hashes {
                        if let Some(info) = s.current(h).await {
                            out.extend(s.on_tx(&info));
                        }
                    }
                    out
                }
                Err(RecvError::Closed) => break,
            },
        };
        for f in frames {
            if socket.send(Message::Text(f.into())).await.is_err() {
                return;
            }
        }
    }
}
