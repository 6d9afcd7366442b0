//! The fake node and request helpers the RPC tests share.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use grapevine_ledger::{Address, BlockHeader, Hash, Keypair};
use grapevine_rpc::api::{
    AccountInfo, ApiError, BlockInfo, HeadEvent, MempoolInfo, PeerInfo, Status, TxInfo, TxState,
};
use grapevine_rpc::{NodeApi, RejectReason, RpcConfig, RpcMetrics, app};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tower::ServiceExt;

/// A node with fixed answers. Its blocks (heights 0 to 7) and its mempool hold `bulk`
/// transaction hashes each, for answers as large as a test needs; `getPeers` takes
/// `slow` to answer, for tests of time and concurrency limits.
pub struct Fake {
    heads: broadcast::Sender<HeadEvent>,
    txs: broadcast::Sender<TxInfo>,
    bulk: usize,
    slow: Duration,
    /// `getPeers` calls begun.
    pub slow_begun: AtomicUsize,
    /// `getPeers` calls ended.
    pub slow_ended: AtomicUsize,
}

impl Fake {
    /// A node whose blocks and mempool hold `bulk` hashes and whose `getPeers` takes
    /// `slow`.
    pub fn new(bulk: usize, slow: Duration) -> Self {
        Fake {
            heads: broadcast::channel(4).0,
            txs: broadcast::channel(4).0,
            bulk,
            slow,
            slow_begun: AtomicUsize::new(0),
            slow_ended: AtomicUsize::new(0),
        }
    }
}

impl NodeApi for Fake {
    fn status(&self) -> Result<Status, ApiError> {
        Ok(Status {
            chain_id: 1,
            genesis_hash: Hash([1; 32]),
            height: 7,
            head_hash: Hash([2; 32]),
            state_root: Hash([3; 32]),
            peer_count: 0,
            syncing: false,
            version: "test".into(),
            validators: vec![],
        })
    }
    fn account(&self, addr: &Address) -> Result<AccountInfo, ApiError> {
        Ok(AccountInfo {
            address: *addr,
            balance: u64::MAX,
            nonce: 2,
            pending_nonce: 3,
        })
    }
    /// Takes a one-byte transaction (its hash is that byte 32 times), refuses the rest.
    fn send_transaction(&self, bytes: &[u8]) -> Result<Hash, ApiError> {
        if let [b] = bytes {
            return Ok(Hash([*b; 32]));
        }
        Err(ApiError::Rejected {
            reason: RejectReason::Malformed,
            message: format!("got {} bytes", bytes.len()),
            hash: None,
        })
    }
    fn transaction(&self, hash: &Hash) -> Result<TxInfo, ApiError> {
        Ok(TxInfo {
            hash: *hash,
            state: TxState::Unknown,
            transaction: None,
        })
    }
    fn block_by_height(&self, height: u64) -> Result<Option<BlockInfo>, ApiError> {
        if height > 7 {
            return Ok(None);
        }
        Ok(Some(BlockInfo {
            hash: Hash([4; 32]),
            header: BlockHeader {
                height,
                round: 0,
                parent_hash: Hash([5; 32]),
                proposer: Keypair::from_seed(&[2; 32]).address(),
                timestamp_ms: 0,
                tx_count: self.bulk as u32,
                tx_root: Hash([6; 32]),
                state_root: Hash([3; 32]),
            },
            tx_hashes: vec![Hash([7; 32]); self.bulk],
            transactions: None,
            certificate: String::new(),
        }))
    }
    fn account_transactions(
        &self,
        addr: &Address,
        _before: Option<(u64, u32)>,
        _limit: usize,
    ) -> Result<grapevine_rpc::api::AccountTxPage, ApiError> {
        Ok(grapevine_rpc::api::AccountTxPage {
            address: *addr,
            transactions: vec![],
            next: None,
        })
    }
    fn height_of(&self, _hash: &Hash) -> Result<Option<u64>, ApiError> {
        Ok(None)
    }
    fn head_height(&self) -> u64 {
        7
    }
    fn peers(&self) -> Vec<PeerInfo> {
        self.slow_begun.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.slow);
        self.slow_ended.fetch_add(1, Ordering::SeqCst);
        vec![]
    }
    fn mempool(&self, with_hashes: bool) -> MempoolInfo {
        MempoolInfo {
            pending: self.bulk,
            queued: 0,
            bytes: 0,
            hashes: with_hashes.then(|| vec![Hash([8; 32]); self.bulk]),
        }
    }
    fn not_ready_reason(&self) -> Option<String> {
        Some("catching up: 10 blocks behind".into())
    }
    fn subscribe_heads(&self) -> broadcast::Receiver<HeadEvent> {
        self.heads.subscribe()
    }
    fn subscribe_transactions(&self) -> broadcast::Receiver<TxInfo> {
        self.txs.subscribe()
    }
    fn metrics_text(&self) -> String {
        "# EOF\n".into()
    }
}

/// The router over a default [`Fake`].
pub fn router(cfg: RpcConfig) -> axum::Router {
    router_over(Arc::new(Fake::new(0, Duration::ZERO)), cfg)
}

/// The router over `fake`.
pub fn router_over(fake: Arc<Fake>, cfg: RpcConfig) -> axum::Router {
    let mut registry = prometheus_client::registry::Registry::default();
    app(fake, &cfg, RpcMetrics::register(&mut registry))
}

/// POSTs `body` as JSON; returns the status and the body as JSON, if it is.
pub async fn post(router: axum::Router, body: impl Into<Body>) -> (StatusCode, Option<Value>) {
    let req = Request::post("/")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).ok();
    (status, v)
}
