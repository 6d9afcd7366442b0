//! JSON-RPC 2.0 request handling: single requests, batches, notifications, the method
//! table, and the per-body limits (calls per batch, bytes per response). Pure over
//! bytes and a [`NodeApi`], so it is tested without sockets.

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::api::{ApiError, NodeApi};
use grapevine_ledger::{Address, Hash};

/// Largest page of `getAccountTransactions`.
pub const MAX_PAGE: u64 = 100;

/// The default most calls in one batch (geth's default limit); a larger batch is
/// refused whole with -32600. The request body limit bounds a batch's bytes as well.
pub const MAX_BATCH: usize = 1000;

/// The default most bytes of one response: room for `getBlock` with `full` of the
/// largest block (50,000 transactions, about 25 MB of JSON).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// What one request body may cost the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most calls in one batch; a larger batch gets one -32600 error and runs nothing.
    pub max_batch_calls: usize,
    /// Most bytes of one response. The call whose result would pass it gets -32031
    /// instead, and so does every later call of its batch, which is not run; the result
    /// is never built in full first. Error objects and a batch's `sendTransaction`
    /// verdicts (its transactions were admitted together before any other call ran) are
    /// written past it: each is small, and there is at most one per call.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_calls: MAX_BATCH,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// What the dispatcher tells its caller as it goes, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed<'a> {
    /// A well-formed call of this method.
    Call(&'a str),
    /// A batch refused for holding more than [`Limits::max_batch_calls`].
    BatchTooLarge,
    /// A call answered -32031 (its result, or its batch's, passed the response limit).
    ResponseTooLarge,
}

/// How many rate-limit tokens a body costs: one per call of a batch, one for anything
/// else (a single call, malformed JSON, an empty batch), and one for a batch over
/// `max_batch_calls`, which is refused without running anything. Reads the body
/// without building a JSON tree.
pub fn call_cost(body: &[u8], max_batch_calls: usize) -> u32 {
    let is_array = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if !is_array {
        return 1;
    }
    match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body) {
        Ok(calls) if (1..=max_batch_calls).contains(&calls.len()) => {
            u32::try_from(calls.len()).unwrap_or(u32::MAX)
        }
        _ => 1,
    }
}

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
    /// Over the per-client rate limit (WebSocket calls; over HTTP the answer is HTTP
    /// 429). The code EIP-1474 gives "limit exceeded".
    pub const RATE_LIMITED: i64 = -32005;
    /// A WebSocket connection asked for more subscriptions than it may hold.
    pub const TOO_MANY_SUBSCRIPTIONS: i64 = -32022;
    /// No block with that height or hash.
    pub const BLOCK_NOT_FOUND: i64 = -32030;
    /// The answer would pass the response size limit; the call (or the rest of its
    /// batch) was not answered. Ask for less per request.
    pub const RESPONSE_TOO_LARGE: i64 = -32031;
    /// A WebSocket call took longer than the request timeout (over HTTP: HTTP 408).
    pub const TIMED_OUT: i64 = -32032;
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

/// Handles a request body, a single call or a batch, as JSON-RPC 2.0 says: returns
/// the response's bytes (an object, or an array for a batch), or `None` when nothing is
/// to be sent back (only notifications). `observe` is told each well-formed call's
/// method and each refusal. A batch made only of plain `sendTransaction` calls (the
/// load of a busy node) takes a path that builds no JSON tree; its answers are the same.
pub fn handle_body_bytes<A: NodeApi + ?Sized>(
    api: &A,
    body: &[u8],
    limits: &Limits,
    observe: &dyn Fn(Observed<'_>),
) -> Option<Vec<u8>> {
    if let Some(out) = send_batch(api, body, limits, observe) {
        return Some(out);
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(to_bytes(&error_response(
                Value::Null,
                &RpcError::new(codes::PARSE_ERROR, format!("Parse error: {e}")),
            )));
        }
    };
    let mut out = Answer::new(limits.max_response_bytes);
    let items = match v {
        Value::Array(items) => items,
        single => {
            match parse(single) {
                Err(invalid) => return Some(to_bytes(&invalid)),
                Ok(req) => answer(api, &mut out, req, None, observe),
            }
            return (!out.buf.is_empty()).then_some(out.buf);
        }
    };
    if items.is_empty() {
        return Some(to_bytes(&error_response(
            Value::Null,
            &RpcError::new(codes::INVALID_REQUEST, "Invalid Request: empty batch"),
        )));
    }
    if items.len() > limits.max_batch_calls {
        observe(Observed::BatchTooLarge);
        return Some(to_bytes(&error_response(
            Value::Null,
            &RpcError::new(
                codes::INVALID_REQUEST,
                format!(
                    "Invalid Request: batch of {} requests exceeds the limit of {}",
                    items.len(),
                    limits.max_batch_calls
                ),
            ),
        )));
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
    out.raw(b"[");
    let mut answered = false;
    for (i, r) in requests.into_iter().enumerate() {
        let before = out.buf.len();
        if answered {
            out.raw(b",");
        }
        match r {
            Err(invalid) => out.json(&invalid),
            Ok(req) => {
                let admitted = sent.get_mut(i).and_then(Option::take);
                answer(api, &mut out, req, admitted, observe);
            }
        }
        if out.buf.len() == before + usize::from(answered) {
            // A notification: no answer, and no separator for it.
            out.buf.truncate(before);
        } else {
            answered = true;
        }
    }
    out.raw(b"]");
    answered.then_some(out.buf)
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // Cannot fail: a JSON value written into memory.
    serde_json::to_vec(v).unwrap_or_default()
}

/// A response being written, and the most bytes results may take in it.
struct Answer {
    buf: Vec<u8>,
    cap: usize,
    /// Set once a result did not fit: the rest of the batch is not run.
    full: bool,
}

/// A writer into a response that fails rather than grow past the cap, so that serde
/// stops as soon as a result is too large instead of building it whole.
struct Capped<'a> {
    buf: &'a mut Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > self.cap {
            return Err(std::io::Error::other("past the response size limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Answer {
    fn new(cap: usize) -> Self {
        Answer {
            buf: Vec::new(),
            cap,
            full: false,
        }
    }

    /// Writes a call's result if the response stays within the cap; otherwise leaves
    /// the response as it was and says why.
    fn put<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Result<(), RpcError> {
        let mark = self.buf.len();
        let cap = self.cap;
        let written = serde_json::to_writer(
            Capped {
                buf: &mut self.buf,
                cap,
            },
            v,
        );
        let Err(e) = written else {
            return Ok(());
        };
        self.buf.truncate(mark);
        if e.is_io() {
            return Err(RpcError::new(
                codes::RESPONSE_TOO_LARGE,
                format!(
                    "response too large: the answer would pass this node's limit of {cap} \
                     bytes; ask for less per request (fewer calls per batch, getBlock \
                     without \"full\")"
                ),
            ));
        }
        tracing::error!(error = %e, "cannot serialize an RPC result");
        Err(ApiError::Internal.into())
    }

    /// Writes bytes whatever the cap: framing, error objects and admitted
    /// transactions' verdicts, each small and at most one per call of a body that is
    /// itself bounded.
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn json(&mut self, v: &Value) {
        // Cannot fail: a JSON value written into memory.
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn error(&mut self, id: Value, e: &RpcError) {
        self.json(&error_response(id, e));
    }
}

/// Runs one well-formed call (unless its batch's answer is already full) and writes its
/// response; a notification gets none. `admitted` is the verdict of a `sendTransaction`
/// admitted with the rest of its batch.
fn answer<A: NodeApi + ?Sized>(
    api: &A,
    out: &mut Answer,
    req: Request,
    admitted: Option<Result<Hash, ApiError>>,
    observe: &dyn Fn(Observed<'_>),
) {
    observe(Observed::Call(&req.method));
    let Some(id) = req.id else {
        if admitted.is_none() && !out.full {
            // A notification runs, but its result is not kept: a zero cap stops its
            // serialization at the first byte.
            let _ = call(api, &req.method, req.params, &mut Answer::new(0));
        }
        return;
    };
    match admitted {
        Some(Ok(hash)) => {
            out.raw(br#"{"id":"#);
            out.json(&id);
            out.raw(br#","jsonrpc":"2.0","result":""#);
            out.raw(hash.to_string().as_bytes());
            out.raw(br#""}"#);
            return;
        }
        Some(Err(e)) => return out.error(id, &RpcError::from(e)),
        None => {}
    }
    if out.full {
        observe(Observed::ResponseTooLarge);
        let e = RpcError::new(
            codes::RESPONSE_TOO_LARGE,
            format!(
                "not run: the batch's answer already reached this node's limit of {} bytes; \
                 send this call again in another request",
                out.cap
            ),
        );
        return out.error(id, &e);
    }
    let mark = out.buf.len();
    // Keys in the order error objects have them (serde_json's maps are sorted).
    out.raw(br#"{"id":"#);
    out.json(&id);
    out.raw(br#","jsonrpc":"2.0","result":"#);
    match call(api, &req.method, req.params, out) {
        Ok(()) => out.raw(b"}"),
        Err(e) => {
            out.buf.truncate(mark);
            if e.code == codes::RESPONSE_TOO_LARGE {
                out.full = true;
                observe(Observed::ResponseTooLarge);
            }
            out.error(id, &e);
        }
    }
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
/// transaction), which the general path then answers. Its answer is a few hundred bytes
/// per call, so the response limit does not apply: the transactions are admitted.
fn send_batch<A: NodeApi + ?Sized>(
    api: &A,
    body: &[u8],
    limits: &Limits,
    observe: &dyn Fn(Observed<'_>),
) -> Option<Vec<u8>> {
    let calls: Vec<SendCall<'_>> = serde_json::from_slice(body).ok()?;
    if !(2..=limits.max_batch_calls).contains(&calls.len()) {
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
        observe(Observed::Call("sendTransaction"));
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

/// Calls `method` with `params` and writes its result into `out`.
fn call<A: NodeApi + ?Sized>(
    api: &A,
    method: &str,
    params: Option<Value>,
    out: &mut Answer,
) -> Result<(), RpcError> {
    match method {
        "getStatus" => {
            Params::new(params, &[])?;
            out.put(&api.status()?)
        }
        "getGenesis" => {
            Params::new(params, &[])?;
            let g = api.genesis().ok_or(ApiError::Internal)?;
            out.put(&serde_json::json!({"hash": g.hash().to_string(), "genesis": g}))
        }
        "getBalance" => {
            let p = Params::new(params, &["address"])?;
            let a = api.account(&p.address(0, "address")?)?;
            out.put(&a.balance.to_string())
        }
        "getAccount" => {
            let p = Params::new(params, &["address"])?;
            out.put(&api.account(&p.address(0, "address")?)?)
        }
        "sendTransaction" => {
            let bytes = send_params(params)?;
            out.put(&api.send_transaction(&bytes)?.to_string())
        }
        "getTransaction" => {
            let p = Params::new(params, &["hash"])?;
            out.put(&api.transaction(&p.hash(0, "hash")?)?)
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
            out.put(&b)
        }
        "getBlockHeight" => {
            Params::new(params, &[])?;
            out.put(&api.head_height().to_string())
        }
        "getPeers" => {
            Params::new(params, &[])?;
            out.put(&api.peers())
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
            out.put(&api.account_transactions(&addr, before, limit)?)
        }
        "getMempool" => {
            let p = Params::new(params, &["hashes"])?;
            out.put(&api.mempool(p.flag(0, "hashes")?))
        }
        "getSyncStatus" => {
            Params::new(params, &[])?;
            out.put(&api.sync_status())
        }
        _ => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}
