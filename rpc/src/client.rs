//! A blocking JSON-RPC 2.0 client over HTTP, for the wallet commands, the load
//! generator and the end-to-end tests: one place that builds requests and reads
//! answers.

use std::time::Duration;

use serde_json::{Value, json};

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer (connection refused, timed out).
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// An HTTP answer whose body is not JSON.
    #[error("the node at {url} answered HTTP {status} without JSON")]
    NotJson {
        /// The node's URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A JSON-RPC error object.
    #[error("{message} (code {code})")]
    Rpc {
        /// Its code.
        code: i64,
        /// Its message.
        message: String,
        /// Its data, if any.
        data: Option<Value>,
    },
    /// A response with neither a result nor an error.
    #[error("the node's answer has no result")]
    NoResult,
}

/// A node's JSON-RPC endpoint. Cloning shares the connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the node at `url` (`http://HOST:PORT`); each exchange takes at most
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            url: url.to_string(),
            agent,
        }
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` as it is; returns the HTTP status and the body's bytes (for a
    /// caller that reads the answer into its own types).
    pub fn post_bytes(&self, body: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        let unreachable = |e: ureq::Error| ClientError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let mut resp = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.body_mut().read_to_vec().map_err(unreachable)?;
        Ok((status, bytes))
    }

    /// GETs `path` (such as `/health`) of the node's URL; returns the HTTP status and
    /// the body as text (lossily decoded).
    pub fn get(&self, path: &str) -> Result<(u16, String), ClientError> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let unreachable = |e: ureq::Error| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut resp = self.agent.get(&url).call().map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.body_mut().read_to_vec().map_err(unreachable)?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// POSTs `body` as it is; returns the HTTP status and the body as JSON, if it is
    /// JSON (for requests a caller writes itself: batches, malformed ones).
    pub fn post(&self, body: &str) -> Result<(u16, Option<Value>), ClientError> {
        let (status, bytes) = self.post_bytes(body.as_bytes())?;
        Ok((status, serde_json::from_slice(&bytes).ok()))
    }

    /// Calls `method` with `params`; returns the whole response object (result or
    /// error).
    pub fn request(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        match self.post(&req.to_string())? {
            (_, Some(v)) => Ok(v),
            (status, None) => Err(ClientError::NotJson {
                url: self.url.clone(),
                status,
            }),
        }
    }

    /// Calls `method` with `params`; returns its result, or its error object as
    /// [`ClientError::Rpc`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let v = self.request(method, params)?;
        if let Some(err) = v.get("error") {
            return Err(ClientError::Rpc {
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string(),
                data: err.get("data").cloned(),
            });
        }
        v.get("result").cloned().ok_or(ClientError::NoResult)
    }
}
