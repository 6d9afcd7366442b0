//! [`Node`]: the node's state (the ledger, the mempool, the event streams), shared by
//! the RPC server, the network, consensus and the dev block producer.
//!
//! # Layout
//! - this file: the state, committing a final block and publishing what it changed,
//!   `/health`'s readiness;
//! - `admission`: whether a transaction from a client or a peer enters the mempool;
//! - `rpc`: the node as the JSON-RPC server sees it ([`NodeApi`]);
//! - `views`: the ledger as block building and checking read it (`PooledView`);
//! - `metrics`: Prometheus metrics.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use grapevine_ledger::collections::FastMap;
use grapevine_ledger::state::{Execution, LtHash, Overlay};
use grapevine_ledger::{Address, Block, Hash, Ledger, SignedTx, StateView, StoreError};
use grapevine_net::{NetStats, PeerSummary, Verdict};
use grapevine_rpc::api::{
    AccountInfo, AccountTxPage, ApiError, BlockInfo, HeadEvent, MempoolInfo, NodeApi, PeerInfo,
    Reason, ReceiptView, RejectReason, Status, SyncStatus, TxInfo, TxState, TxView,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, broadcast};

use crate::consensus::sync::Progress;
use crate::mempool::{Dropped, Mempool, MempoolConfig, PoolState, Refusal};
use crate::recent::RecentOutcomes;

mod admission;
mod metrics;
mod rpc;
#[cfg(test)]
mod tests;
mod views;

use admission::FinalityPrefetch;
use metrics::Metrics;

/// Capacity of the head and transaction event channels; a subscriber that falls this
/// far behind skips ahead (and is told so by the WebSocket layer).
const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Most hashes `getMempool` lists, so one answer stays small.
const MAX_MEMPOOL_HASHES: usize = 10_000;

/// How many rejected/evicted/expired outcomes are remembered, and for how long.
const RECENT_CAPACITY: usize = 100_000;
const RECENT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The node's state shared by the RPC server and the block producer.
#[derive(Debug)]
pub struct Node {
    ledger: Arc<Ledger>,
    /// The genesis, for `getGenesis` (set once at start).
    genesis: std::sync::OnceLock<grapevine_ledger::Genesis>,
    mempool: Mutex<Mempool>,
    recent: Mutex<RecentOutcomes>,
    heads: broadcast::Sender<HeadEvent>,
    txs: broadcast::Sender<TxInfo>,
    /// Wakes the block producer when a transaction becomes pending.
    pub new_work: Notify,
    metrics: Metrics,
    registry: Registry,
    /// Receives the fees of the blocks this node produces.
    proposer: Address,
    /// The genesis validator set.
    validators: Vec<Address>,
    /// What the network reports, for RPC and metrics.
    net: Mutex<NetView>,
    /// Client transactions accepted and not yet handed to the network.
    gossip: Mutex<Vec<SignedTx>>,
    /// Wakes the task that hands [`Node::take_gossip`] to the network.
    pub gossip_ready: Notify,
    /// Block sync progress, from the consensus driver.
    sync: Mutex<Option<Progress>>,
    /// (commit time, transactions) of the blocks of the last [`THROUGHPUT_WINDOW`], for
    /// admission backpressure.
    finalized: Mutex<std::collections::VecDeque<(Instant, usize)>>,
    /// The pool's pending count and when it was taken (see [`Node::busy`]).
    pending_count: Mutex<Option<(Instant, usize)>>,
    /// When the last block became final here (or the node started).
    last_final_at: Mutex<Instant>,
    /// `/health` reports not ready once finality has not advanced for this long while
    /// blocks are due (see [`Node::set_health_max_stall`]); `None`: never.
    health_max_stall: Mutex<Option<Duration>>,
}

/// How long a pending count is reused by admission backpressure.
const PENDING_COUNT_REUSE: Duration = Duration::from_millis(100);
/// A pooled transaction is announced again after this long.
const REANNOUNCE_AFTER: Duration = Duration::from_secs(5);
/// Most transactions announced again at once.
const REANNOUNCE_MAX: usize = 4096;

/// How far back the finalized throughput that sizes the admission backlog is measured.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);

/// A networked node this many blocks behind its peers reports not ready on `/health`.
pub const HEALTH_MAX_LAG: u64 = 5;

/// The default of `[rpc] health_max_stall_ms`: finality that has not advanced for this
/// long while blocks are due makes `/health` report not ready.
pub const DEFAULT_HEALTH_MAX_STALL: Duration = Duration::from_secs(20);

/// The network as RPC sees it: refreshed by the runtime about once a second.
#[derive(Debug, Default)]
struct NetView {
    networked: bool,
    peers: Vec<PeerInfo>,
    /// Last totals copied into the metrics (bytes in, out, bodies, duplicates, bans,
    /// then messages by kind).
    last: Vec<u64>,
}

fn tx_view(t: &SignedTx) -> TxView {
    TxView {
        tx: *t.tx(),
        signature: *t.signature(),
    }
}

fn dropped_state(d: &Dropped) -> TxState {
    match d {
        Dropped::Replaced { by } => TxState::Evicted {
            reason: Reason {
                code: "replaced".into(),
                message: format!("replaced by transaction {by} with a higher fee"),
            },
        },
        Dropped::EvictedFull => TxState::Evicted {
            reason: Reason {
                code: "mempoolFull".into(),
                message: "pushed out of the full mempool by higher-fee transactions".into(),
            },
        },
        Dropped::Invalidated(why) => TxState::Evicted {
            reason: Reason {
                code: "invalidated".into(),
                message: why.clone(),
            },
        },
        Dropped::Expired => TxState::Expired {
            reason: Reason {
                code: "expired".into(),
                message: "not included in a block within the mempool's time to live".into(),
            },
        },
    }
}

impl Node {
    /// A node over `ledger`, producing blocks as `proposer`. Registers its metrics (and
    /// the RPC server's) in one registry; returns the RPC metrics for the server.
    pub fn new(
        ledger: Arc<Ledger>,
        pool: MempoolConfig,
        proposer: Address,
        validators: Vec<Address>,
    ) -> (Arc<Node>, grapevine_rpc::RpcMetrics) {
        let mut registry = Registry::default();
        let metrics = Metrics::default();
        metrics.register(&mut registry);
        let rpc_metrics = grapevine_rpc::RpcMetrics::register(&mut registry);
        metrics
            .height
            .set(i64::try_from(ledger.head().height).unwrap_or(i64::MAX));
        let node = Node {
            mempool: Mutex::new(Mempool::new(pool)),
            ledger,
            recent: Mutex::new(RecentOutcomes::new(RECENT_CAPACITY, RECENT_MAX_AGE)),
            heads: broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
            txs: broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
            new_work: Notify::new(),
            metrics,
            registry,
            proposer,
            validators,
            net: Mutex::new(NetView::default()),
            gossip: Mutex::new(Vec::new()),
            gossip_ready: Notify::new(),
            sync: Mutex::new(None),
            finalized: Mutex::new(std::collections::VecDeque::new()),
            pending_count: Mutex::new(None),
            last_final_at: Mutex::new(Instant::now()),
            health_max_stall: Mutex::new(Some(DEFAULT_HEALTH_MAX_STALL)),
            genesis: std::sync::OnceLock::new(),
        };
        (Arc::new(node), rpc_metrics)
    }

    fn pool(&self) -> MutexGuard<'_, Mempool> {
        // A panic while holding the pool lock leaves it consistent enough to serve:
        // every mutation completes its bookkeeping before it can fail.
        self.mempool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, RecentOutcomes> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_pool_metrics(&self, pool: &Mempool) {
        let (pending, queued) = pool.counts();
        self.metrics.mempool_pending.set(pending as i64);
        self.metrics.mempool_queued.set(queued as i64);
        self.metrics.mempool_bytes.set(pool.bytes() as i64);
    }

    /// Publishes a lifecycle change, and remembers it if it is an end without finality.
    fn publish(&self, info: TxInfo) {
        if matches!(
            info.state,
            TxState::Rejected { .. } | TxState::Evicted { .. } | TxState::Expired { .. }
        ) {
            self.recent().record(info.clone(), Instant::now());
        }
        // No subscriber is not an error.
        let _ = self.txs.send(info);
    }

    fn publish_dropped(&self, dropped: Vec<(Hash, Dropped, Option<SignedTx>)>) {
        for (hash, d, tx) in dropped {
            self.publish(TxInfo {
                hash,
                state: dropped_state(&d),
                transaction: tx.as_ref().map(tx_view),
            });
        }
    }

    fn pooled_info(&self, hash: Hash, tx: SignedTx, state: PoolState) -> TxInfo {
        TxInfo {
            hash,
            state: match state {
                PoolState::Pending => TxState::Pending,
                PoolState::Queued { waiting_for } => TxState::Queued {
                    waiting_for_nonce: waiting_for,
                },
            },
            transaction: Some(tx_view(&tx)),
        }
    }

    /// Drops transactions past the mempool's time to live.
    pub fn expire(&self) {
        let mut pool = self.pool();
        let expired = pool.expire(Instant::now());
        self.update_pool_metrics(&pool);
        drop(pool);
        self.publish_dropped(expired.into_iter().map(|(h, d)| (h, d, None)).collect());
    }

    /// Up to `max` pending transactions for a block on the final head, held for it
    /// until the block is committed or [`Node::release_selected`] gives them back.
    pub fn select_pending(&self, max: usize) -> Vec<SignedTx> {
        self.pool().select(max)
    }

    /// Gives back the transactions [`Node::select_pending`] took for a block that was
    /// not written.
    pub fn release_selected(&self) {
        self.pool().release();
    }

    /// The address that receives the fees of the blocks this node produces.
    pub fn proposer(&self) -> Address {
        self.proposer
    }

    /// Up to `max` pending transactions for a block on a parent that is not final yet;
    /// `next_nonce` holds the next nonce of senders the unfinalized ancestors touched.
    pub fn select_txs(&self, max: usize, next_nonce: &HashMap<Address, u64>) -> Vec<SignedTx> {
        self.pool().select_after(max, next_nonce)
    }

    /// Building a block of `txs` failed with `e`: a storage fault keeps them; anything
    /// else means the pool admitted what a block cannot hold, so they are dropped
    /// rather than fail the same way forever.
    pub fn unbuildable(&self, txs: &[SignedTx], e: &grapevine_ledger::state::BlockError) {
        if matches!(e, grapevine_ledger::state::BlockError::Store(_)) {
            self.pool().release();
            return;
        }
        tracing::error!(error = %e, "building a block failed; dropping its transactions from the mempool");
        let mut pool = self.pool();
        let (dropped, _) = pool.on_commit(txs, &*self.ledger);
        drop(pool);
        let why = Dropped::Invalidated(format!("could not be included in a block: {e}"));
        let mut all: Vec<_> = txs
            .iter()
            .map(|t| (t.hash(), why.clone(), Some(*t)))
            .collect();
        all.extend(dropped.into_iter().map(|(h, d)| (h, d, None)));
        self.publish_dropped(all);
    }

    /// Writes a final block with its certificate atomically and durably, then removes
    /// its transactions from the pool and publishes the results. `exec` is the block's
    /// execution on the current head. `log` makes a block with transactions an info
    /// line (block sync passes false: it logs progress at an interval instead).
    pub fn commit_block(
        &self,
        block: &Block,
        certificate: &[u8],
        exec: &Execution,
        log: bool,
    ) -> Result<(), StoreError> {
        // The pool's lock is held across the write: admission trusts the pool's record
        // of a sender (nonce, balance), which `on_commit` brings up to date, so no
        // admission may run between the two. Readers see the
        // transactions in the pool or in the ledger, never in neither.
        let mut pool = self.pool();
        self.ledger.commit(block, certificate, exec)?;
        // The senders' new nonces and balances from the execution itself: reading them
        // back from the ledger would cost a lookup per sender per block.
        let written = Overlay::new(&*self.ledger, &[exec]);
        let (dropped, promoted) = pool.on_commit(&block.txs, &written);
        let promoted: Vec<TxInfo> = promoted
            .into_iter()
            .filter_map(|h| pool.get(&h).map(|(t, s)| self.pooled_info(h, t, s)))
            .collect();
        self.update_pool_metrics(&pool);
        drop(pool);

        let hash = block.hash();
        let n = block.txs.len();
        {
            let now = Instant::now();
            *self.last_final_at.lock().unwrap_or_else(|p| p.into_inner()) = now;
            let mut f = self.finalized.lock().unwrap_or_else(|p| p.into_inner());
            f.push_back((now, n));
            while f
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > THROUGHPUT_WINDOW)
            {
                f.pop_front();
            }
        }
        self.metrics
            .height
            .set(i64::try_from(block.header.height).unwrap_or(i64::MAX));
        self.metrics.blocks.inc();
        self.metrics.txs_finalized.inc_by(n as u64);
        if self.txs.receiver_count() > 0 {
            for (index, (t, r)) in block.txs.iter().zip(&exec.receipts).enumerate() {
                let _ = self.txs.send(TxInfo {
                    hash: exec.tx_hashes[index],
                    state: TxState::Finalized {
                        height: block.header.height,
                        block_hash: hash,
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        receipt: ReceiptView::from(*r),
                    },
                    transaction: Some(tx_view(t)),
                });
            }
        }
        self.publish_dropped(dropped.into_iter().map(|(h, d)| (h, d, None)).collect());
        for p in promoted {
            self.publish(p);
        }
        let _ = self.heads.send(HeadEvent {
            hash,
            header: block.header,
        });
        if n > 0 && log {
            tracing::info!(height = block.header.height, round = block.header.round, txs = n, hash = %hash, "block committed");
        } else {
            tracing::debug!(height = block.header.height, round = block.header.round, txs = n, hash = %hash, "block committed");
        }
        Ok(())
    }

    /// Makes `/health` report not ready once no block has become final for `stall`
    /// while blocks are due: on a networked node always (its validators propose empty
    /// blocks when idle), on a dev node while transactions are pending. `None` turns
    /// the check off.
    pub fn set_health_max_stall(&self, stall: Option<Duration>) {
        *self
            .health_max_stall
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = stall;
    }

    /// Why finality counts as stalled, if it does (see [`Node::set_health_max_stall`]).
    fn finality_stalled(&self, networked: bool) -> Option<String> {
        let stall = (*self
            .health_max_stall
            .lock()
            .unwrap_or_else(|p| p.into_inner()))?;
        let since = self
            .last_final_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        (since > stall && (networked || self.has_pending())).then(|| {
            format!(
                "finality stalled: no block final for {} s (height {})",
                since.as_secs(),
                self.ledger.head().height
            )
        })
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Whether any transaction is waiting for a block.
    pub fn has_pending(&self) -> bool {
        self.pool().has_executable()
    }

    fn net_view(&self) -> MutexGuard<'_, NetView> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the node as one that runs the peer-to-peer network: client transactions
    /// are then queued for gossip, and readiness needs peers.
    pub fn set_networked(&self) {
        self.net_view().networked = true;
    }

    /// Client transactions accepted since the last call, for the network to announce.
    pub fn take_gossip(&self) -> Vec<SignedTx> {
        std::mem::take(&mut *self.gossip.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records block sync progress (for `getSyncStatus`, `/health` and metrics).
    pub fn set_sync_progress(&self, p: Progress) {
        self.metrics
            .sync_target
            .set(i64::try_from(p.target).unwrap_or(i64::MAX));
        self.metrics.syncing.set(i64::from(p.syncing));
        *self.sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// Records the genesis this node runs (served by `getGenesis`); later calls are
    /// ignored.
    pub fn set_genesis(&self, g: grapevine_ledger::Genesis) {
        let _ = self.genesis.set(g);
    }

    /// Counts a validator caught equivocating (`kind`: "proposal" or "vote").
    pub fn count_equivocation(&self, kind: &str) {
        self.metrics
            .equivocations
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Publishes each validator's leader weight (index = position in genesis).
    pub fn set_leader_weights(&self, weights: &[u64]) {
        for (i, w) in weights.iter().enumerate() {
            self.metrics
                .leader_weight
                .get_or_create(&vec![("validator".to_string(), i.to_string())])
                .set(i64::try_from(*w).unwrap_or(i64::MAX));
        }
    }

    /// Records what the proposals kept for a restart hold.
    pub fn set_kept_proposals(&self, count: usize, bytes: u64) {
        self.metrics
            .kept_proposals
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.metrics
            .kept_proposal_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn sync_progress(&self) -> Option<Progress> {
        *self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }
}
