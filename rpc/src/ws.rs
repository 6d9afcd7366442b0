//! WebSocket subscriptions at `/ws`.
//!
//! Clients send JSON-RPC requests as text frames. `subscribeHeads` and
//! `subscribeTransaction(hash)` answer with a subscription id; notifications follow as
//! `{"jsonrpc":"2.0","method":"subscription","params":{"subscription":ID,"result":…}}`.
//! `unsubscribe(subscription)` ends one. A transaction subscription first sends the
//! current state, then each change, and ends by itself once the transaction is final,
//! rejected, evicted or expired. Every other method works as over HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use grapevine_ledger::Hash;
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::{HeadEvent, NodeApi, TxInfo, TxState};
use crate::jsonrpc::{self, codes};
use crate::server::AppState;

/// Error code when a connection asks for more than [`MAX_TX_SUBSCRIPTIONS`].
pub const TOO_MANY_SUBSCRIPTIONS: i64 = -32022;

/// Most transaction subscriptions one connection may hold.
pub const MAX_TX_SUBSCRIPTIONS: usize = 1024;

/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

pub(crate) async fn handler<A: NodeApi>(
    State(state): State<Arc<AppState<A>>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session(state, socket))
}

fn is_terminal(s: &TxState) -> bool {
    !matches!(
        s,
        TxState::Pending | TxState::Queued { .. } | TxState::Unknown
    )
}

struct Session<A: ?Sized> {
    state: Arc<AppState<A>>,
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
        tokio::task::spawn_blocking(move || api.transaction(&hash).ok())
            .await
            .ok()
            .flatten()
    }

    /// Handles one text frame; returns the frames to send back.
    async fn on_text(&mut self, text: &str) -> Vec<String> {
        let Ok(Value::Object(req)) = serde_json::from_str::<Value>(text) else {
            // Not a subscription call: answer as HTTP would (parse errors, batches).
            let st = self.state.clone();
            let body = text.as_bytes().to_vec();
            let out = tokio::task::spawn_blocking(move || {
                jsonrpc::handle_body(&*st.api, &body, &|m| st.metrics.count(m))
            })
            .await
            .ok()
            .flatten();
            return out.map(|v| v.to_string()).into_iter().collect();
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
                if self.tx_subs.len() >= MAX_TX_SUBSCRIPTIONS {
                    return vec![reply(
                        id,
                        Err((
                            TOO_MANY_SUBSCRIPTIONS,
                            format!(
                                "at most {MAX_TX_SUBSCRIPTIONS} transaction subscriptions per connection"
                            ),
                        )),
                    )];
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
            _ => {
                let st = self.state.clone();
                let v = Value::Object(req);
                let out = tokio::task::spawn_blocking(move || {
                    jsonrpc::handle_one(&*st.api, v, &|m| st.metrics.count(m))
                })
                .await
                .ok()
                .flatten();
                out.map(|v| v.to_string()).into_iter().collect()
            }
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

async fn session<A: NodeApi>(state: Arc<AppState<A>>, mut socket: WebSocket) {
    let mut s = Session {
        state,
        heads: None,
        txs: None,
        tx_subs: HashMap::new(),
        next_id: 0,
    };
    loop {
        let frames: Vec<String> = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => s.on_text(t.as_str()).await,
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
