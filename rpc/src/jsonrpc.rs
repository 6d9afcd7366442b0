//! JSON-RPC 2.0 request handling: single requests, batches, notifications, and the
//! method table. Pure over bytes and a [`NodeApi`], so it is tested without sockets.

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::api::{ApiError, NodeApi};
use grapevine_ledger::{Address, Hash};

/// Largest page of `getAccountTransactions`.
pub const MAX_PAGE: u64 = 100;

/// Most requests in one batch (geth's default limit); a larger batch is refused whole
/// with -32600. The request body limit bounds a batch's bytes as well.
pub const MAX_BATCH: usize = 1000;

/// The standard error codes.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Wrong parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// A fault inside the node.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No block with that height or hash.
    pub const BLOCK_NOT_FOUND: i64 = -32030;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// A message a person can act on.
    pub message: String,
    /// Structured detail.
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        let mut o = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            o["data"] = d.clone();
        }
        o
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Rejected {
                reason,
                ref message,
                hash,
            } => RpcError {
                code: reason.code(),
                message: message.clone(),
                data: Some(json!({"reason": reason.name(), "hash": hash})),
            },
            ApiError::BlockNotFound(_) => RpcError::new(codes::BLOCK_NOT_FOUND, e.to_string()),
            ApiError::Internal => RpcError::new(codes::INTERNAL_ERROR, e.to_string()),
        }
    }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": e.to_json(), "id": id})
}

/// [`handle_body`], with the response serialized: `None` when nothing is to be sent
/// back. A batch made only of plain `sendTransaction` calls (the load of a busy node)
/// takes a path that builds no JSON tree; its answers are the same.
pub fn handle_body_bytes<A: NodeApi + ?Sized>(
    api: &A,
    body: &[u8],
    observe: &dyn Fn(&str),
) -> Option<Vec<u8>> {
    if let Some(out) = send_batch(api, body, observe) {
        return Some(out);
    }
    handle_body(api, body, observe).map(|v| serde_json::to_vec(&v).unwrap_or_default())
}

/// One plain `sendTransaction` call of a batch, borrowed from the body: one positional
/// parameter, and strings without escapes. Any other shape does not match, and the
/// batch takes the general path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SendCall<'a> {
    jsonrpc: &'a str,
    #[serde(borrow)]
    id: &'a RawValue,
    method: &'a str,
    params: [&'a str; 1],
}

/// The response to a batch of two or more plain `sendTransaction` calls, each with a
/// string or number id; `None` for any other body (including one with a malformed
/// transaction), which [`handle_body`] then answers.
fn send_batch<A: NodeApi + ?Sized>(
    api: &A,
    body: &[u8],
    observe: &dyn Fn(&str),
) -> Option<Vec<u8>> {
    let calls: Vec<SendCall<'_>> = serde_json::from_slice(body).ok()?;
    if !(2..=MAX_BATCH).contains(&calls.len()) {
        return None;
    }
    // An id that the general path would not read as a JSON value (a number out of
    // range) must not get this far: nothing falls back once transactions are admitted.
    let plain = calls.iter().all(|c| {
        c.jsonrpc == "2.0"
            && c.method == "sendTransaction"
            && match c.id.get().as_bytes().first() {
                Some(b'"') => true,
                Some(b'-' | b'0'..=b'9') => serde_json::from_str::<Value>(c.id.get()).is_ok(),
                _ => false,
            }
    });
    if !plain {
        return None;
    }
    let txs: Vec<Vec<u8>> = calls
        .iter()
        .map(|c| decode_transaction(c.params[0]).ok())
        .collect::<Option<_>>()?;
    let results = api.send_transactions(&txs);
    let mut out = Vec::with_capacity(calls.len() * 128);
    out.push(b'[');
    for (i, (call, result)) in calls.iter().zip(results).enumerate() {
        observe("sendTransaction");
        if i > 0 {
            out.push(b',');
        }
        match result {
            Ok(hash) => {
                out.extend_from_slice(br#"{"jsonrpc":"2.0","result":""#);
                out.extend_from_slice(hash.to_string().as_bytes());
                out.extend_from_slice(br#"","id":"#);
                out.extend_from_slice(call.id.get().as_bytes());
                out.push(b'}');
            }
            Err(e) => {
                let id: Value = serde_json::from_str(call.id.get()).unwrap_or(Value::Null);
                // Cannot fail: a JSON value written into memory.
                let _ = serde_json::to_writer(&mut out, &error_response(id, &RpcError::from(e)));
            }
        }
    }
    out.push(b']');
    Some(out)
}

/// Handles a request body. Returns `None` when nothing is to be sent back (only
/// notifications), else the response (an object, or an array for a batch). `observe` is
/// told the method name of each well-formed call.
pub fn handle_body<A: NodeApi + ?Sized>(
    api: &A,
    body: &[u8],
    observe: &dyn Fn(&str),
) -> Option<Value> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_response(
                Value::Null,
                &RpcError::new(codes::PARSE_ERROR, format!("Parse error: {e}")),
            ));
        }
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(codes::INVALID_REQUEST, "Invalid Request: empty batch"),
                ));
            }
            if items.len() > MAX_BATCH {
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(
                        codes::INVALID_REQUEST,
                        format!(
                            "Invalid Request: batch of {} requests exceeds the limit of {MAX_BATCH}",
                            items.len()
                        ),
                    ),
                ));
            }
            let requests: Vec<Result<Request, Value>> = items.into_iter().map(parse).collect();
            // The batch's well-formed sendTransaction calls are admitted together.
            let (at, txs): (Vec<usize>, Vec<Vec<u8>>) = requests
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match r {
                    Ok(req) if req.method == "sendTransaction" => {
                        send_params(req.params.clone()).ok().map(|b| (i, b))
                    }
                    _ => None,
                })
                .unzip();
            let mut sent: Vec<Option<Result<Hash, ApiError>>> = Vec::new();
            if txs.len() > 1 {
                sent.resize_with(requests.len(), || None);
                for (i, result) in at.into_iter().zip(api.send_transactions(&txs)) {
                    sent[i] = Some(result);
                }
            }
            let out: Vec<Value> = requests
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let req = match r {
                        Ok(req) => req,
                        Err(invalid) => return Some(invalid),
                    };
                    observe(&req.method);
                    let result = match sent.get_mut(i).and_then(Option::take) {
                        Some(admitted) => admitted
                            .map(|h| Value::String(h.to_string()))
                            .map_err(RpcError::from),
                        None => call(api, &req.method, req.params),
                    };
                    respond(req.id, result)
                })
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_one(api, other, observe),
    }
}

/// A request whose envelope is well formed: its id (`None` for a notification), method
/// and parameters.
struct Request {
    id: Option<Value>,
    method: String,
    params: Option<Value>,
}

/// Checks one request object's envelope; an invalid one gets its error response.
fn parse(v: Value) -> Result<Request, Value> {
    let invalid = |why: &str| {
        error_response(
            Value::Null,
            &RpcError::new(codes::INVALID_REQUEST, format!("Invalid Request: {why}")),
        )
    };
    let Value::Object(mut obj) = v else {
        return Err(invalid("a request is a JSON object"));
    };
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return Err(invalid("\"id\" must be a string, a number or null")),
    };
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err(invalid("\"method\" must be a string"));
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Array(_) | Value::Object(_))) => Some(p),
        Some(_) => return Err(invalid("\"params\" must be an array or an object")),
    };
    Ok(Request { id, method, params })
}

/// The response to a call's result; `None` for a notification, which gets no response,
/// not even an error.
fn respond(id: Option<Value>, result: Result<Value, RpcError>) -> Option<Value> {
    let id = id?;
    Some(match result {
        Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        Err(e) => error_response(id, &e),
    })
}

/// Handles one request object; `None` for a notification.
pub fn handle_one<A: NodeApi + ?Sized>(api: &A, v: Value, observe: &dyn Fn(&str)) -> Option<Value> {
    match parse(v) {
        Err(invalid) => Some(invalid),
        Ok(req) => {
            observe(&req.method);
            respond(req.id, call(api, &req.method, req.params))
        }
    }
}

/// The transaction bytes of `sendTransaction`'s parameters.
fn send_params(params: Option<Value>) -> Result<Vec<u8>, RpcError> {
    let p = Params::new(params, &["transaction"])?;
    decode_transaction(p.string(0, "transaction")?)
}

/// A `sendTransaction` parameter's bytes.
fn decode_transaction(hex_tx: &str) -> Result<Vec<u8>, RpcError> {
    // Takes an optional 0x prefix.
    hex::decode(hex_tx).map_err(|e| {
        RpcError::params(format!(
            "parameter \"transaction\" must be the signed transaction's bytes in hex: {e}"
        ))
    })
}

/// Positional or named parameters, read by position and name.
struct Params {
    positional: Vec<Value>,
    named: Map<String, Value>,
}

impl Params {
    fn new(p: Option<Value>, names: &[&str]) -> Result<Self, RpcError> {
        let (positional, named) = match p {
            None => (vec![], Map::new()),
            Some(Value::Array(a)) => (a, Map::new()),
            Some(Value::Object(o)) => (vec![], o),
            Some(_) => return Err(RpcError::params("params must be an array or an object")),
        };
        if positional.len() > names.len() {
            return Err(RpcError::params(format!(
                "expected at most {} parameters ({}), got {}",
                names.len(),
                names.join(", "),
                positional.len()
            )));
        }
        if let Some(k) = named.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(RpcError::params(format!(
                "unknown parameter {k:?}; expected {}",
                names.join(", ")
            )));
        }
        Ok(Params { positional, named })
    }

    fn get(&self, pos: usize, name: &str) -> Option<&Value> {
        self.positional
            .get(pos)
            .or_else(|| self.named.get(name))
            .filter(|v| !v.is_null())
    }

    fn required(&self, pos: usize, name: &str) -> Result<&Value, RpcError> {
        self.get(pos, name)
            .ok_or_else(|| RpcError::params(format!("missing parameter {name:?}")))
    }

    fn string(&self, pos: usize, name: &str) -> Result<&str, RpcError> {
        self.required(pos, name)?
            .as_str()
            .ok_or_else(|| RpcError::params(format!("parameter {name:?} must be a string")))
    }

    fn address(&self, pos: usize, name: &str) -> Result<Address, RpcError> {
        let s = self.string(pos, name)?;
        s.parse().map_err(|e| {
            RpcError::params(format!("parameter {name:?} is not an address (gv…): {e}"))
        })
    }

    fn hash(&self, pos: usize, name: &str) -> Result<Hash, RpcError> {
        let s = self.string(pos, name)?;
        s.parse()
            .map_err(|e| RpcError::params(format!("parameter {name:?} is not a hash: {e}")))
    }

    fn flag(&self, pos: usize, name: &str) -> Result<bool, RpcError> {
        match self.get(pos, name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(RpcError::params(format!(
                "parameter {name:?} must be true or false"
            ))),
        }
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|_| RpcError::from(ApiError::Internal))
}

/// Calls `method` with `params`.
pub fn call<A: NodeApi + ?Sized>(
    api: &A,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    match method {
        "getStatus" => {
            Params::new(params, &[])?;
            to_value(api.status()?)
        }
        "getBalance" => {
            let p = Params::new(params, &["address"])?;
            let a = api.account(&p.address(0, "address")?)?;
            Ok(Value::String(a.balance.to_string()))
        }
        "getAccount" => {
            let p = Params::new(params, &["address"])?;
            to_value(api.account(&p.address(0, "address")?)?)
        }
        "sendTransaction" => {
            let bytes = send_params(params)?;
            Ok(Value::String(api.send_transaction(&bytes)?.to_string()))
        }
        "getTransaction" => {
            let p = Params::new(params, &["hash"])?;
            to_value(api.transaction(&p.hash(0, "hash")?)?)
        }
        "getBlock" => {
            let p = Params::new(params, &["block", "full"])?;
            let full = p.flag(1, "full")?;
            let which = p.get(0, "block").cloned().unwrap_or(Value::from("latest"));
            let height = match &which {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| RpcError::params("a block height is a non-negative integer"))?,
                Value::String(s) if s == "latest" => api.head_height(),
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                    .parse()
                    .map_err(|_| RpcError::params("block height too large"))?,
                Value::String(s) => {
                    let h: Hash = s.parse().map_err(|_| {
                        RpcError::params(
                            "parameter \"block\" must be a height, a block hash or \"latest\"",
                        )
                    })?;
                    api.height_of(&h)?
                        .ok_or_else(|| ApiError::BlockNotFound(h.to_string()))?
                }
                _ => {
                    return Err(RpcError::params(
                        "parameter \"block\" must be a height, a block hash or \"latest\"",
                    ));
                }
            };
            let mut b = api
                .block_by_height(height)?
                .ok_or_else(|| ApiError::BlockNotFound(format!("height {height}")))?;
            if !full {
                b.transactions = None;
            }
            to_value(b)
        }
        "getBlockHeight" => {
            Params::new(params, &[])?;
            Ok(Value::String(api.head_height().to_string()))
        }
        "getPeers" => {
            Params::new(params, &[])?;
            to_value(api.peers())
        }
        "getAccountTransactions" => {
            let p = Params::new(params, &["address", "limit", "before"])?;
            let addr = p.address(0, "address")?;
            let limit = match p.get(1, "limit") {
                None => 20,
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        RpcError::params(format!(
                            "\"limit\" must be an integer from 1 to {MAX_PAGE}"
                        ))
                    })? as usize,
            };
            let before = match p.get(2, "before") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(|s| s.split_once(':'))
                        .and_then(|(h, i)| Some((h.parse().ok()?, i.parse().ok()?)))
                        .ok_or_else(|| {
                            RpcError::params(
                                "\"before\" is a cursor \"height:index\" from a previous page",
                            )
                        })?,
                ),
            };
            to_value(api.account_transactions(&addr, before, limit)?)
        }
        "getMempool" => {
            let p = Params::new(params, &["hashes"])?;
            to_value(api.mempool(p.flag(0, "hashes")?))
        }
        "getSyncStatus" => {
            Params::new(params, &[])?;
            to_value(api.sync_status())
        }
        _ => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}
