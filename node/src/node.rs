//! [`Node`]: the ledger, the mempool and the event streams behind the RPC server, and
//! block production for a single-validator chain.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use grapevine_ledger::collections::FastMap;
use grapevine_ledger::state::{Execution, LtHash, Overlay, build_block};
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

/// Capacity of the head and transaction event channels; a subscriber that falls this
/// far behind skips ahead (and is told so by the WebSocket layer).
const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Most hashes `getMempool` lists, so one answer stays small.
const MAX_MEMPOOL_HASHES: usize = 10_000;

/// How many rejected/evicted/expired outcomes are remembered, and for how long.
const RECENT_CAPACITY: usize = 100_000;
const RECENT_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Metrics {
    height: Gauge,
    blocks: Counter,
    txs_finalized: Counter,
    txs_rejected: Counter,
    mempool_pending: Gauge,
    mempool_queued: Gauge,
    mempool_bytes: Gauge,
    peers: Gauge,
    sync_target: Gauge,
    syncing: Gauge,
    net_bytes_in: Counter,
    net_bytes_out: Counter,
    net_tx_bodies: Counter,
    net_tx_duplicates: Counter,
    net_bans: Counter,
    net_consensus_dropped: Counter,
    net_sync_dropped: Counter,
    net_messages: Family<Vec<(String, String)>, Counter>,
    db_memory: Family<Vec<(String, String)>, Gauge>,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "grapevine_height",
            "Height of the latest final block",
            self.height.clone(),
        );
        r.register(
            "grapevine_blocks",
            "Blocks committed by this node",
            self.blocks.clone(),
        );
        r.register(
            "grapevine_txs_finalized",
            "Transactions in committed blocks",
            self.txs_finalized.clone(),
        );
        r.register(
            "grapevine_txs_rejected",
            "Transactions refused at submission",
            self.txs_rejected.clone(),
        );
        r.register(
            "grapevine_mempool_pending",
            "Executable transactions in the mempool",
            self.mempool_pending.clone(),
        );
        r.register(
            "grapevine_mempool_queued",
            "Transactions waiting for an earlier nonce",
            self.mempool_queued.clone(),
        );
        r.register(
            "grapevine_mempool_bytes",
            "Bytes of transactions in the mempool",
            self.mempool_bytes.clone(),
        );
        r.register("grapevine_peers", "Connected peers", self.peers.clone());
        r.register(
            "grapevine_sync_target_height",
            "Highest final height peers report",
            self.sync_target.clone(),
        );
        r.register(
            "grapevine_syncing",
            "1 while the node fetches final blocks from peers",
            self.syncing.clone(),
        );
        r.register(
            "grapevine_net_bytes_in",
            "Bytes received from peers",
            self.net_bytes_in.clone(),
        );
        r.register(
            "grapevine_net_bytes_out",
            "Bytes sent to peers",
            self.net_bytes_out.clone(),
        );
        r.register(
            "grapevine_net_tx_bodies",
            "Transaction bodies received from peers",
            self.net_tx_bodies.clone(),
        );
        r.register(
            "grapevine_net_tx_duplicates",
            "Transaction bodies received that the node already had",
            self.net_tx_duplicates.clone(),
        );
        r.register("grapevine_net_bans", "Peers banned", self.net_bans.clone());
        r.register(
            "grapevine_net_consensus_dropped",
            "Consensus messages dropped at the node's full consensus queue",
            self.net_consensus_dropped.clone(),
        );
        r.register(
            "grapevine_net_sync_dropped",
            "Block sync messages dropped at the node's full sync queue",
            self.net_sync_dropped.clone(),
        );
        r.register(
            "grapevine_net_messages",
            "Messages received from peers, by kind",
            self.net_messages.clone(),
        );
        r.register(
            "grapevine_db_memory_bytes",
            "Memory the database holds, by part (block cache, memtables, table readers)",
            self.db_memory.clone(),
        );
    }
}

/// The node's state shared by the RPC server and the block producer.
#[derive(Debug)]
pub struct Node {
    ledger: Arc<Ledger>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn tx_view(t: &SignedTx) -> TxView {
    TxView {
        tx: *t.tx(),
        signature: *t.signature(),
    }
}

/// The RPC error for a mempool refusal (every refusal but an internal fault is a
/// [`RejectReason`]).
fn refusal_error(r: &Refusal, hash: Option<Hash>) -> ApiError {
    let reason = match r {
        Refusal::Malformed(_) => RejectReason::Malformed,
        Refusal::WrongChain { .. } => RejectReason::WrongChain,
        Refusal::BadSignature => RejectReason::BadSignature,
        Refusal::NonceTooLow { .. } => RejectReason::NonceTooLow,
        Refusal::InsufficientBalance { .. } => RejectReason::InsufficientBalance,
        Refusal::AlreadyKnown(_) => RejectReason::AlreadyKnown,
        Refusal::AlreadyFinal(_) => RejectReason::AlreadyFinal,
        Refusal::Underpriced { .. } => RejectReason::Underpriced,
        Refusal::Full { .. } => RejectReason::MempoolFull,
        Refusal::SenderLimit(_) => RejectReason::SenderLimit,
        Refusal::NonceTooHigh { .. } => RejectReason::NonceTooHigh,
        Refusal::InBlock { .. } => RejectReason::NonceInBlock,
        Refusal::Busy { .. } => RejectReason::Busy,
        Refusal::Internal => return ApiError::Internal,
    };
    ApiError::Rejected {
        reason,
        message: r.to_string(),
        hash,
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

    /// Takes up to `max_txs` pending transactions, executes them into a block on top of
    /// the head, commits it durably, and publishes the results. Returns the number of
    /// transactions included (0: nothing to do). For a single-validator dev chain, whose
    /// blocks are final when written.
    pub fn produce_block(
        &self,
        max_txs: usize,
    ) -> Result<usize, grapevine_ledger::state::BlockError> {
        let txs = self.pool().select(max_txs);
        if txs.is_empty() {
            return Ok(0);
        }
        let head = self.ledger.head();
        let view = self.block_view(&txs);
        let built = build_block(
            &view,
            self.ledger.chain_id(),
            &head,
            self.proposer,
            0,
            now_ms().max(head.timestamp_ms),
            txs.clone(),
        );
        let (block, exec) = match built {
            Ok(b) => b,
            Err(e) => {
                self.unbuildable(&txs, &e);
                return Err(e);
            }
        };
        if let Err(e) = self.commit_block(&block, &[], &exec, true) {
            self.pool().release();
            return Err(e.into());
        }
        Ok(block.txs.len())
    }

    /// Up to `max` pending transactions for a block on a parent that is not final yet;
    /// `next_nonce` holds the next nonce of senders the unfinalized ancestors touched.
    pub fn select_txs(&self, max: usize, next_nonce: &HashMap<Address, u64>) -> Vec<SignedTx> {
        self.pool().select_after(max, next_nonce)
    }

    /// The ledger as a view for building or checking a block of `txs` on the final head:
    /// those of them in the pool are known not to be final without a database read
    /// (each admission looked them up already). Consensus asks "already final?" of
    /// every transaction of every block; on a chain with history that read was a few
    /// percent of a validator's CPU. The answers are the ledger's own, so every node
    /// decides the same whatever its pool holds.
    pub fn block_view(&self, txs: &[SignedTx]) -> PooledView<'_> {
        let pool = self.pool();
        PooledView {
            ledger: &self.ledger,
            head: self.ledger.head().height,
            txs: txs
                .iter()
                .map(|t| (t.hash(), pool.contains(&t.hash())))
                .collect(),
        }
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
        // back from the ledger cost a lookup per sender per block.
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

    fn sync_progress(&self) -> Option<Progress> {
        *self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes `getPeers` and the network metrics from the network's counters.
    pub fn update_network(&self, peers: &[PeerSummary], stats: &NetStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut view = self.net_view();
        view.peers = peers
            .iter()
            .map(|p| PeerInfo {
                id: p.id.to_string(),
                address: p.address.to_string(),
                direction: if p.inbound { "inbound" } else { "outbound" }.into(),
                score: p.score,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                latency_ms: p.latency.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        self.metrics.peers.set(peers.len() as i64);
        let mut totals = vec![
            stats.bytes_in.load(Relaxed),
            stats.bytes_out.load(Relaxed),
            stats.tx_bodies.load(Relaxed),
            stats.tx_duplicates.load(Relaxed),
            stats.bans.load(Relaxed),
            stats.consensus_dropped.load(Relaxed),
            stats.sync_dropped.load(Relaxed),
        ];
        totals.extend(stats.messages.iter().map(|m| m.load(Relaxed)));
        view.last.resize(totals.len(), 0);
        let delta: Vec<u64> = totals
            .iter()
            .zip(&view.last)
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        view.last = totals;
        drop(view);
        let m = &self.metrics;
        for (c, d) in [
            &m.net_bytes_in,
            &m.net_bytes_out,
            &m.net_tx_bodies,
            &m.net_tx_duplicates,
            &m.net_bans,
            &m.net_consensus_dropped,
            &m.net_sync_dropped,
        ]
        .into_iter()
        .zip(&delta)
        {
            c.inc_by(*d);
        }
        for (kind, d) in grapevine_net::network::MESSAGE_KINDS
            .iter()
            .zip(&delta[7..])
        {
            m.net_messages
                .get_or_create(&vec![("kind".to_string(), (*kind).to_string())])
                .inc_by(*d);
        }
    }

    /// `Some(refusal)` while the pool holds more than [`MempoolConfig::max_backlog`] of
    /// the recent finalized throughput: checked before any signature work, so refusing
    /// the excess of an overload costs almost nothing. Even then a transaction paying
    /// more than the lowest pooled fee is admitted ([`Refusal::Busy`]'s `min_fee`), so
    /// free transactions cannot keep paying ones out.
    fn busy(&self) -> Option<Refusal> {
        let (pooled, backlog, floor, lowest) = {
            let pool = self.pool();
            let cfg = pool.config();
            (
                pool.len(),
                cfg.max_backlog,
                cfg.min_backlog_txs,
                pool.lowest_fee().unwrap_or(0),
            )
        };
        if backlog.is_zero() || pooled < floor {
            return None;
        }
        // Only pending transactions count: queued ones behind a nonce gap may never run,
        // and must not make the node refuse everyone. Counting walks the pool, so the
        // count is reused for a moment.
        let pooled = {
            let mut cache = self.pending_count.lock().unwrap_or_else(|p| p.into_inner());
            match *cache {
                Some((at, n)) if at.elapsed() < PENDING_COUNT_REUSE => n,
                _ => {
                    let n = self.pool().counts().0;
                    *cache = Some((Instant::now(), n));
                    n
                }
            }
        };
        if pooled < floor {
            return None;
        }
        let per_s = {
            let f = self.finalized.lock().unwrap_or_else(|p| p.into_inner());
            let txs: usize = f.iter().map(|(_, n)| n).sum();
            txs as f64 / THROUGHPUT_WINDOW.as_secs_f64()
        };
        let limit = (per_s * backlog.as_secs_f64()) as usize;
        (pooled >= limit.max(floor)).then(|| Refusal::Busy {
            pooled,
            backlog_ms: u64::try_from(backlog.as_millis()).unwrap_or(u64::MAX),
            min_fee: lowest.saturating_add(1),
        })
    }

    /// The busy refusal for a transaction paying `fee`, if it must wait.
    fn busy_for(busy: &Option<Refusal>, fee: u64) -> bool {
        matches!(busy, Some(Refusal::Busy { min_fee, .. }) if fee < *min_fee)
    }

    /// Pooled transactions announced at least [`REANNOUNCE_AFTER`] ago, to announce
    /// again (peers may have deferred or dropped them while busy). At most
    /// [`REANNOUNCE_MAX`] per call.
    pub fn reannounce_due(&self) -> Vec<SignedTx> {
        self.pool()
            .due_for_reannounce(Instant::now(), REANNOUNCE_AFTER, REANNOUNCE_MAX)
    }

    /// Checks ahead, in signature batches, the signatures of the transactions of `txs`
    /// that admission would take now (this chain's, and not deferred while busy), and
    /// remembers the valid ones; admission then skips them. A failing batch remembers
    /// nothing: each caller's own admission finds the invalid transaction among its own.
    fn preverify(&self, txs: impl Iterator<Item = SignedTx>) {
        let busy = self.busy();
        let chain_id = self.ledger.chain_id();
        let taken: Vec<SignedTx> = txs
            .filter(|t| t.tx().chain_id == chain_id && !Self::busy_for(&busy, t.tx().fee))
            .collect();
        grapevine_ledger::tx::preverify_signatures(&taken);
    }

    /// Admits one transaction from a client (its full encoding), with "already final?"
    /// taken from `looked_up` when given.
    fn admit_client(
        &self,
        bytes: &[u8],
        looked_up: Option<&LookedUp<'_>>,
    ) -> Result<Hash, ApiError> {
        let busy = self.busy();
        if busy.is_some() {
            // The fee decides; what does not decode is refused below as malformed.
            let fee = SignedTx::from_bytes(bytes).map_or(u64::MAX, |t| t.tx().fee);
            if Self::busy_for(&busy, fee)
                && let Some(refusal) = busy
            {
                return Err(refusal_error(&refusal, None));
            }
        }
        // Signature checks happen before taking the pool's lock.
        let checked = crate::mempool::precheck(bytes, self.ledger.chain_id());
        let mut pool = self.pool();
        let view = looked_up.map_or(&*self.ledger as &dyn StateView, LookedUp::view);
        let result = checked.and_then(|tx| {
            pool.submit_verified(tx, view, Instant::now())
                .map_err(|r| (Some(tx.hash()), r))
        });
        match result {
            Ok(admitted) => {
                let entry = pool.get(&admitted.hash);
                let info = entry.map(|(t, s)| self.pooled_info(admitted.hash, t, s));
                let promoted: Vec<TxInfo> = admitted
                    .promoted
                    .iter()
                    .filter_map(|h| pool.get(h).map(|(t, s)| self.pooled_info(*h, t, s)))
                    .collect();
                // The pool gauges walk every sender: they are refreshed after each block
                // and each expiry sweep (every second), not on this hot path.
                drop(pool);
                let wake = admitted.state == PoolState::Pending || !promoted.is_empty();
                self.publish_dropped(
                    admitted
                        .dropped
                        .into_iter()
                        .map(|(h, d)| (h, d, None))
                        .collect(),
                );
                if let Some(info) = info {
                    self.publish(info);
                }
                for p in promoted {
                    self.publish(p);
                }
                if wake {
                    self.new_work.notify_one();
                }
                if self.net_view().networked
                    && let Some((t, _)) = entry
                {
                    self.gossip
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t);
                    self.gossip_ready.notify_one();
                }
                Ok(admitted.hash)
            }
            Err((hash, refusal)) => {
                drop(pool);
                self.metrics.txs_rejected.inc();
                let err = refusal_error(&refusal, hash);
                // Remember refusals of decodable transactions, except those that say the
                // transaction is alive elsewhere (pooled or final).
                if let (Some(h), false) = (
                    hash,
                    matches!(refusal, Refusal::AlreadyKnown(_) | Refusal::AlreadyFinal(_)),
                ) {
                    let code = match &err {
                        ApiError::Rejected { reason, .. } => reason.name().to_string(),
                        _ => "internal".into(),
                    };
                    let tx = grapevine_ledger::SignedTx::from_bytes(bytes).ok();
                    self.publish(TxInfo {
                        hash: h,
                        state: TxState::Rejected {
                            reason: Reason {
                                code,
                                message: refusal.to_string(),
                            },
                        },
                        transaction: tx.as_ref().map(tx_view),
                    });
                }
                Err(err)
            }
        }
    }

    /// Admits transactions a peer relayed: each gets a [`Verdict`] for the network
    /// (only accepted ones are announced onwards; invalid ones cost the peer score).
    pub fn admit_from_peer(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        let busy = self.busy();
        if busy.is_none() {
            return self.admit_relayed(txs);
        }
        // Deferred ones are fetched again when their node re-announces them.
        let taken: Vec<SignedTx> = txs
            .iter()
            .filter(|t| !Self::busy_for(&busy, t.tx().fee))
            .copied()
            .collect();
        let mut verdicts = self.admit_relayed(&taken).into_iter();
        txs.iter()
            .map(|t| {
                if Self::busy_for(&busy, t.tx().fee) {
                    Verdict::Deferred
                } else {
                    verdicts.next().unwrap_or(Verdict::Ignored)
                }
            })
            .collect()
    }

    fn admit_relayed(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        let chain_id = self.ledger.chain_id();
        // Transactions already pooled (a re-announcement of what this node took) are
        // ignored before any signature work; whether one is final is the pool's check.
        let known: Vec<bool> = {
            let pool = self.pool();
            txs.iter().map(|t| pool.contains(&t.hash())).collect()
        };
        let fresh: Vec<SignedTx> = txs
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(t, _)| *t)
            .collect();
        // One batch verification for the common all-valid case; the verdicts are
        // remembered, so the block that carries these transactions skips them.
        let all_signed = grapevine_ledger::tx::first_invalid_signature(&fresh).is_none();
        // "Already final?" for the whole batch in one lookup, outside the pool's lock.
        let looked_up = LookedUp::new(&self.ledger, &fresh);
        let mut verdicts = Vec::with_capacity(txs.len());
        let mut wake = false;
        let mut infos = Vec::new();
        let mut dropped_all = Vec::new();
        let now = Instant::now();
        {
            let mut pool = self.pool();
            let view = looked_up.view();
            for (t, known) in txs.iter().zip(known) {
                let hash = t.hash();
                if known {
                    verdicts.push(Verdict::Ignored);
                    continue;
                }
                if t.tx().chain_id != chain_id || (!all_signed && !t.verify()) {
                    verdicts.push(Verdict::Invalid);
                    continue;
                }
                match pool.submit_verified(*t, view, now) {
                    Ok(admitted) => {
                        wake |=
                            admitted.state == PoolState::Pending || !admitted.promoted.is_empty();
                        if let Some(info) =
                            pool.get(&hash).map(|(t, s)| self.pooled_info(hash, t, s))
                        {
                            infos.push(info);
                        }
                        infos.extend(
                            admitted.promoted.iter().filter_map(|h| {
                                pool.get(h).map(|(t, s)| self.pooled_info(*h, t, s))
                            }),
                        );
                        dropped_all.extend(admitted.dropped.into_iter().map(|(h, d)| (h, d, None)));
                        verdicts.push(Verdict::Accepted);
                    }
                    Err(
                        Refusal::Malformed(_) | Refusal::WrongChain { .. } | Refusal::BadSignature,
                    ) => {
                        verdicts.push(Verdict::Invalid);
                    }
                    Err(_) => verdicts.push(Verdict::Ignored),
                }
            }
        }
        self.publish_dropped(dropped_all);
        for info in infos {
            self.publish(info);
        }
        if wake {
            self.new_work.notify_one();
        }
        verdicts
    }

    fn finalized_info(&self, hash: &Hash) -> Result<Option<TxInfo>, ApiError> {
        let Some((tx, loc)) = self.ledger.transaction(hash).map_err(internal)? else {
            return Ok(None);
        };
        let block_hash = self
            .ledger
            .block(loc.height)
            .map_err(internal)?
            .map(|b| b.block.hash())
            .ok_or(ApiError::Internal)?;
        Ok(Some(TxInfo {
            hash: *hash,
            state: TxState::Finalized {
                height: loc.height,
                block_hash,
                index: loc.index,
                receipt: ReceiptView::from(loc.receipt),
            },
            transaction: Some(tx_view(&tx)),
        }))
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "storage error while serving RPC");
    ApiError::Internal
}

impl NodeApi for Node {
    fn status(&self) -> Result<Status, ApiError> {
        let head = self.ledger.head();
        Ok(Status {
            chain_id: self.ledger.chain_id(),
            genesis_hash: self.ledger.genesis_hash(),
            height: head.height,
            head_hash: head.hash(),
            state_root: head.state_root,
            peer_count: self.net_view().peers.len(),
            syncing: self.sync_progress().is_some_and(|p| p.syncing),
            version: env!("CARGO_PKG_VERSION").to_string(),
            validators: self.validators.clone(),
        })
    }

    fn account(&self, addr: &Address) -> Result<AccountInfo, ApiError> {
        let acct = self
            .ledger
            .account(addr)
            .map_err(internal)?
            .unwrap_or_default();
        let pending = self.pool().pending_nonce(addr).unwrap_or(acct.nonce);
        Ok(AccountInfo {
            address: *addr,
            balance: acct.balance,
            nonce: acct.nonce,
            pending_nonce: pending.max(acct.nonce),
        })
    }

    fn send_transaction(&self, bytes: &[u8]) -> Result<Hash, ApiError> {
        self.admit_client(bytes, None)
    }

    fn send_transactions(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, ApiError>> {
        let decoded: Vec<SignedTx> = txs
            .iter()
            .filter(|b| b.len() == grapevine_ledger::tx::SIGNED_TX_LEN)
            .filter_map(|b| SignedTx::from_bytes(b).ok())
            .collect();
        // Signatures in batches, and "already final?" in one lookup, for those that
        // admission would take now (this chain's, not refused while busy).
        let busy = self.busy();
        let chain_id = self.ledger.chain_id();
        let taken: Vec<SignedTx> = decoded
            .into_iter()
            .filter(|t| t.tx().chain_id == chain_id && !Self::busy_for(&busy, t.tx().fee))
            .collect();
        self.preverify(taken.iter().copied());
        let looked_up = LookedUp::new(&self.ledger, &taken);
        txs.iter()
            .map(|b| self.admit_client(b, Some(&looked_up)))
            .collect()
    }

    fn transaction(&self, hash: &Hash) -> Result<TxInfo, ApiError> {
        // Order matters: a committed transaction leaves the pool only after the ledger
        // has it, so looking in the pool first and the ledger second never misses it.
        if let Some(info) = self
            .pool()
            .get(hash)
            .map(|(t, s)| self.pooled_info(*hash, t, s))
        {
            return Ok(info);
        }
        if let Some(info) = self.finalized_info(hash)? {
            return Ok(info);
        }
        if let Some(info) = self.recent().get(hash, Instant::now()) {
            return Ok(info);
        }
        Ok(TxInfo {
            hash: *hash,
            state: TxState::Unknown,
            transaction: None,
        })
    }

    fn block_by_height(&self, height: u64) -> Result<Option<BlockInfo>, ApiError> {
        let Some(stored) = self.ledger.block(height).map_err(internal)? else {
            return Ok(None);
        };
        let b = stored.block;
        Ok(Some(BlockInfo {
            hash: b.hash(),
            header: b.header,
            tx_hashes: b.txs.iter().map(SignedTx::hash).collect(),
            transactions: Some(b.txs.iter().map(tx_view).collect()),
            certificate: hex::encode(&stored.certificate),
        }))
    }

    fn account_transactions(
        &self,
        addr: &Address,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<AccountTxPage, ApiError> {
        // One more than asked says whether an older page exists.
        let mut rows = self
            .ledger
            .account_transactions(addr, before, limit + 1)
            .map_err(internal)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = more
            .then(|| rows.last().map(|(_, h, i)| format!("{h}:{i}")))
            .flatten();
        let mut transactions = Vec::with_capacity(rows.len());
        for (hash, _, _) in rows {
            if let Some(info) = self.finalized_info(&hash)? {
                transactions.push(info);
            }
        }
        Ok(AccountTxPage {
            address: *addr,
            transactions,
            next,
        })
    }

    fn height_of(&self, hash: &Hash) -> Result<Option<u64>, ApiError> {
        self.ledger.height_of(hash).map_err(internal)
    }

    fn head_height(&self) -> u64 {
        self.ledger.head().height
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.net_view().peers.clone()
    }

    fn mempool(&self, with_hashes: bool) -> MempoolInfo {
        let pool = self.pool();
        let (pending, queued) = pool.counts();
        MempoolInfo {
            pending,
            queued,
            bytes: pool.bytes(),
            hashes: with_hashes.then(|| pool.hashes(MAX_MEMPOOL_HASHES)),
        }
    }

    fn not_ready_reason(&self) -> Option<String> {
        // A single-validator chain needs no peers; a networked node without any can
        // neither hear of new blocks nor spread transactions.
        let view = self.net_view();
        if view.networked && self.validators.len() > 1 && view.peers.is_empty() {
            return Some("no peers connected".to_string());
        }
        let networked = view.networked;
        drop(view);
        if let Some(why) = self.finality_stalled(networked) {
            return Some(why);
        }
        let p = self.sync_progress()?;
        let behind = p.target.saturating_sub(self.ledger.head().height);
        (behind > HEALTH_MAX_LAG).then(|| {
            format!(
                "syncing: {behind} blocks behind peers (height {} of {})",
                p.current, p.target
            )
        })
    }

    fn sync_status(&self) -> SyncStatus {
        let height = self.ledger.head().height;
        match self.sync_progress() {
            Some(p) => SyncStatus {
                syncing: p.syncing,
                current_height: height,
                target_height: p.target.max(height),
                blocks_per_second: p.blocks_per_second,
                eta_seconds: p.eta_seconds,
            },
            None => SyncStatus {
                syncing: false,
                current_height: height,
                target_height: height,
                blocks_per_second: 0.0,
                eta_seconds: None,
            },
        }
    }

    fn subscribe_heads(&self) -> broadcast::Receiver<HeadEvent> {
        self.heads.subscribe()
    }

    fn subscribe_transactions(&self) -> broadcast::Receiver<TxInfo> {
        self.txs.subscribe()
    }

    fn metrics_text(&self) -> String {
        // Read when scraped: RocksDB adds it up on request.
        for (part, bytes) in self.ledger.store_memory() {
            self.metrics
                .db_memory
                .get_or_create(&vec![("part".to_string(), part.to_string())])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding metrics failed");
        }
        out
    }
}

/// The ledger, answering "already final?" for a block's transactions that were in the
/// pool without reading the database (see [`Node::block_view`]).
pub struct PooledView<'a> {
    ledger: &'a Ledger,
    /// The head height when the pool was read.
    head: u64,
    /// The block's transaction hashes in order, each with whether the pool held it.
    txs: Vec<(Hash, bool)>,
}

impl PooledView<'_> {
    /// Whether the pool's answers still hold: no block was written since it was read.
    /// Blocks are written under the pool's lock, and a block takes its transactions out
    /// of the pool in the same step ([`Node::commit_block`]), so a transaction in the
    /// pool at head `h` is in no final block up to `h`.
    fn current(&self) -> bool {
        self.ledger.head().height == self.head
    }
}

impl StateView for PooledView<'_> {
    fn account(&self, addr: &Address) -> Result<Option<grapevine_ledger::Account>, StoreError> {
        self.ledger.account(addr)
    }

    fn state_hash(&self) -> Result<LtHash, StoreError> {
        self.ledger.state_hash()
    }

    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.ledger.contains_tx(hash)
    }

    /// The pool's answers when asked about the block's transactions in the block's
    /// order (as block execution asks), the ledger's otherwise.
    fn contains_txs(&self, hashes: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let same = hashes.len() == self.txs.len()
            && hashes.iter().zip(&self.txs).all(|(h, (t, _))| h == t);
        if !same || !self.current() {
            return self.ledger.contains_txs(hashes);
        }
        let unknown: Vec<Hash> = self
            .txs
            .iter()
            .filter(|(_, pooled)| !pooled)
            .map(|(h, _)| *h)
            .collect();
        let mut found = self.ledger.contains_txs(&unknown)?.into_iter();
        Ok(self
            .txs
            .iter()
            .map(|(_, pooled)| !pooled && found.next().unwrap_or(false))
            .collect())
    }
}

/// The ledger, with the "already final?" answers for some transactions looked up
/// together before admission takes the pool's lock.
struct LookedUp<'a> {
    ledger: &'a Ledger,
    /// The head height when they were looked up.
    head: u64,
    final_before: FastMap<Hash, bool>,
}

impl<'a> LookedUp<'a> {
    /// Looks up whether each of `txs` is final, in one call (none are known if the
    /// lookup fails: admission then asks the ledger one by one).
    fn new(ledger: &'a Ledger, txs: &[SignedTx]) -> Self {
        let head = ledger.head().height;
        let hashes: Vec<Hash> = txs.iter().map(SignedTx::hash).collect();
        let final_before = match ledger.contains_txs(&hashes) {
            Ok(found) => hashes.into_iter().zip(found).collect(),
            Err(_) => FastMap::default(),
        };
        LookedUp {
            ledger,
            head,
            final_before,
        }
    }

    /// What admission reads under the pool's lock: these answers while the head has not
    /// moved since they were looked up, else the ledger itself. Blocks are written
    /// under that lock (`Node::commit_block`), so an unmoved head means none was.
    fn view(&self) -> &dyn StateView {
        if self.ledger.head().height == self.head {
            self
        } else {
            self.ledger
        }
    }
}

impl StateView for LookedUp<'_> {
    fn account(&self, addr: &Address) -> Result<Option<grapevine_ledger::Account>, StoreError> {
        self.ledger.account(addr)
    }

    fn state_hash(&self) -> Result<LtHash, StoreError> {
        self.ledger.state_hash()
    }

    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError> {
        match self.final_before.get(hash) {
            Some(f) => Ok(*f),
            None => self.ledger.contains_tx(hash),
        }
    }
}

impl grapevine_net::TxValidator for Node {
    fn validate(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        self.admit_from_peer(txs)
    }

    fn validate_many(&self, batches: &[Vec<SignedTx>]) -> Vec<Vec<Verdict>> {
        if batches.len() > 1 {
            // All signatures in as few batches as possible; the valid ones are
            // remembered, so each batch's admission below skips them. A batch check that
            // fails remembers nothing, and each source's own admission then finds the
            // invalid one among its own transactions: one peer's forgery costs the
            // others one batch check again, not one-by-one checks.
            self.preverify(batches.iter().flatten().copied());
        }
        batches.iter().map(|b| self.admit_from_peer(b)).collect()
    }
}

/// The reason each kind of mempool refusal is reported with (one sample of each).
#[cfg(test)]
pub(crate) fn refusal_reasons() -> Vec<RejectReason> {
    let samples = [
        Refusal::Malformed(String::new()),
        Refusal::WrongChain {
            expected: 0,
            got: 1,
        },
        Refusal::BadSignature,
        Refusal::NonceTooLow {
            expected: 1,
            got: 0,
        },
        Refusal::InsufficientBalance {
            balance: 0,
            needed: 1,
        },
        Refusal::AlreadyKnown(Hash::ZERO),
        Refusal::AlreadyFinal(Hash::ZERO),
        Refusal::Underpriced {
            nonce: 0,
            old_fee: 1,
            min_fee: 2,
        },
        Refusal::Full { fee: 0, lowest: 1 },
        Refusal::SenderLimit(1),
        Refusal::NonceTooHigh {
            expected: 0,
            got: 9,
            max_ahead: 1,
        },
        Refusal::InBlock { nonce: 0 },
        Refusal::Busy {
            pooled: 1,
            backlog_ms: 1,
            min_fee: 1,
        },
    ];
    samples
        .iter()
        .filter_map(|r| match refusal_error(r, None) {
            ApiError::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relayed batches from several peers are validated together; each keeps its own
    /// verdicts, so a forgery or a foreign-chain transaction in one does not touch the
    /// others.
    #[test]
    fn batches_validated_together_keep_their_own_verdicts() {
        use grapevine_ledger::{Keypair, MemoryStore, Transaction};
        let keys: Vec<Keypair> = (20..23u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
        let genesis = crate::test_support::genesis(9, &addrs, 1_000, addrs[0]);
        let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
        let (node, _) = Node::new(
            ledger,
            MempoolConfig::default(),
            keys[0].address(),
            vec![keys[0].address()],
        );
        let tx = |k: &Keypair, nonce, chain_id| {
            Transaction {
                chain_id,
                from: k.address(),
                to: Address([7; 32]),
                amount: 1,
                fee: 1,
                nonce,
            }
            .sign(k)
        };
        let forged = tx(&keys[1], 1, 9).altered(|t, _| t.amount = 500);
        let batches = vec![
            vec![tx(&keys[0], 0, 9), tx(&keys[0], 1, 9)],
            vec![tx(&keys[1], 0, 9), forged, tx(&keys[1], 2, 8)],
            vec![tx(&keys[2], 0, 9)],
        ];
        use Verdict::{Accepted, Invalid};
        use grapevine_net::TxValidator;
        assert_eq!(
            node.validate_many(&batches),
            vec![
                vec![Accepted, Accepted],
                vec![Accepted, Invalid, Invalid],
                vec![Accepted]
            ]
        );
        assert_eq!(node.pool().counts().0, 4, "every valid one is pooled");
    }

    /// A transfer of chain 9 with nonce 0 and fee 1.
    fn first_transfer(k: &grapevine_ledger::Keypair, to: Address, amount: u64) -> SignedTx {
        grapevine_ledger::Transaction {
            chain_id: 9,
            from: k.address(),
            to,
            amount,
            fee: 1,
            nonce: 0,
        }
        .sign(k)
    }

    /// A node whose ledger holds a final block with a transfer that failed for want of
    /// balance, then a credit to its sender: by nonce and balance alone the failed
    /// transfer would be admissible now. Returns the node, its ledger, the sender's key
    /// and the failed transfer.
    fn node_with_a_failed_final_transfer(
        seed: u8,
    ) -> (Arc<Node>, Arc<Ledger>, grapevine_ledger::Keypair, SignedTx) {
        use grapevine_ledger::{Keypair, MemoryStore};
        let keys: Vec<Keypair> = (seed..seed + 2)
            .map(|i| Keypair::from_seed(&[i; 32]))
            .collect();
        let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
        let genesis = crate::test_support::genesis(9, &addrs, 1_000, addrs[0]);
        let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
        let (node, _) = Node::new(
            ledger.clone(),
            MempoolConfig::default(),
            addrs[0],
            vec![addrs[0]],
        );
        let failed = first_transfer(&keys[0], Address([7; 32]), 1_500);
        let credit = first_transfer(&keys[1], addrs[0], 900);
        let head = ledger.head();
        let (block, exec) =
            build_block(&*ledger, 9, &head, addrs[0], 1, 1, vec![failed, credit]).unwrap();
        assert!(matches!(
            exec.receipts[..],
            [
                grapevine_ledger::Receipt::Failed { .. },
                grapevine_ledger::Receipt::Success
            ]
        ));
        node.commit_block(&block, &[], &exec, false).unwrap();
        assert_eq!(ledger.account(&addrs[0]).unwrap().unwrap().nonce, 0);
        let sender = keys.into_iter().next().unwrap();
        (node, ledger, sender, failed)
    }

    /// `/health` reports a stall once no block has become final for the configured
    /// time while one is due (on a networked node always, on a dev node while a
    /// transaction is pending), and is ready again once a block is final.
    #[test]
    fn health_reports_finality_that_stalled_while_blocks_are_due() {
        use grapevine_rpc::NodeApi;
        let (node, ledger, sender, _) = node_with_a_failed_final_transfer(40);
        node.set_health_max_stall(Some(Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            node.not_ready_reason(),
            None,
            "a dev node with nothing pending"
        );
        let tx = grapevine_ledger::Transaction {
            chain_id: 9,
            from: sender.address(),
            to: Address([7; 32]),
            amount: 1,
            fee: 1,
            nonce: 0,
        }
        .sign(&sender);
        assert_eq!(node.admit_from_peer(&[tx]), vec![Verdict::Accepted]);
        let why = node
            .not_ready_reason()
            .expect("pending and nothing final for 80 ms");
        assert!(why.starts_with("finality stalled"), "{why}");
        let head = ledger.head();
        let (block, exec) = build_block(&*ledger, 9, &head, sender.address(), 2, 2, vec![tx])
            .expect("the pending transfer makes a block");
        node.commit_block(&block, &[], &exec, false).unwrap();
        assert_eq!(node.not_ready_reason(), None, "a block is final again");
        // A networked node expects blocks even with nothing pending (empty ones).
        node.net_view().networked = true;
        std::thread::sleep(Duration::from_millis(80));
        let why = node
            .not_ready_reason()
            .expect("networked, nothing final for 80 ms");
        assert!(why.starts_with("finality stalled"), "{why}");
        node.set_health_max_stall(None);
        assert_eq!(node.not_ready_reason(), None, "the check can be turned off");
    }

    /// A relayed transaction already in a final block is not pooled again, even one
    /// that failed there and so left its sender's nonce where it was.
    #[test]
    fn relayed_transactions_already_final_are_ignored() {
        let (node, _, sender, failed) = node_with_a_failed_final_transfer(5);
        let fresh = first_transfer(&sender, Address([7; 32]), 10);
        assert_eq!(
            node.admit_from_peer(&[failed, fresh]),
            vec![Verdict::Ignored, Verdict::Accepted]
        );
        assert_eq!(node.pool().counts().0, 1);
    }

    /// A block view answers "already final?" like the ledger: no for what the pool
    /// holds, the ledger's answer for the rest, and the ledger's alone once a block was
    /// written after the pool was read.
    #[test]
    fn block_view_answers_like_the_ledger() {
        let (node, ledger, sender, failed) = node_with_a_failed_final_transfer(11);
        let fresh = first_transfer(&sender, Address([7; 32]), 10);
        let unknown = first_transfer(&sender, Address([7; 32]), 20);
        assert_eq!(node.admit_from_peer(&[fresh]), vec![Verdict::Accepted]);
        let all = [failed.hash(), fresh.hash(), unknown.hash()];
        let view = node.block_view(&[failed, fresh, unknown]);
        assert_eq!(view.contains_txs(&all).unwrap(), vec![true, false, false]);
        // Asked in another order, it asks the ledger: the same answers.
        let reordered = [all[2], all[0], all[1]];
        assert_eq!(
            view.contains_txs(&reordered).unwrap(),
            vec![false, true, false]
        );

        let head = ledger.head();
        let (block, exec) =
            build_block(&*ledger, 9, &head, sender.address(), 2, 2, vec![fresh]).unwrap();
        node.commit_block(&block, &[], &exec, false).unwrap();
        assert_eq!(view.contains_txs(&all).unwrap(), vec![true, true, false]);
    }

    /// Admission takes "already final?" from the looked-up answers, not the ledger.
    #[test]
    fn looked_up_answers_decide_admission() {
        use grapevine_ledger::{Keypair, MemoryStore, Transaction};
        let key = Keypair::from_seed(&[8; 32]);
        let genesis = crate::test_support::genesis(9, &[key.address()], 1_000, key.address());
        let ledger = Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap();
        let tx = Transaction {
            chain_id: 9,
            from: key.address(),
            to: Address([7; 32]),
            amount: 1,
            fee: 1,
            nonce: 0,
        }
        .sign(&key);
        let mut pool = Mempool::new(MempoolConfig::default());
        let answer = |f| LookedUp {
            ledger: &ledger,
            head: ledger.head().height,
            final_before: [(tx.hash(), f)].into_iter().collect(),
        };
        let said_final = answer(true);
        assert!(matches!(
            pool.submit_verified(tx, said_final.view(), Instant::now()),
            Err(Refusal::AlreadyFinal(_))
        ));
        let said_not = answer(false);
        assert!(
            pool.submit_verified(tx, said_not.view(), Instant::now())
                .is_ok()
        );
    }

    /// A JSON-RPC batch's transactions, admitted together, get the verdicts they would
    /// get one by one: one already final (a failed one, its nonce unmoved, so only that
    /// lookup refuses it), a new one, the new one again, bytes that do not decode.
    #[test]
    fn client_batches_get_the_verdicts_of_single_submissions() {
        let (node, _, sender, failed) = node_with_a_failed_final_transfer(30);
        let fresh = first_transfer(&sender, Address([7; 32]), 10);
        let batch = vec![
            failed.to_bytes(),
            fresh.to_bytes(),
            fresh.to_bytes(),
            vec![1, 2, 3],
        ];
        let reasons: Vec<Result<Hash, &str>> = node
            .send_transactions(&batch)
            .into_iter()
            .map(|r| {
                r.map_err(|e| match e {
                    ApiError::Rejected { reason, .. } => reason.name(),
                    _ => "other",
                })
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                Err("alreadyFinal"),
                Ok(fresh.hash()),
                Err("alreadyKnown"),
                Err("malformed")
            ]
        );
    }

    /// Past the backlog the node refuses client transactions as busy (before checking
    /// their signatures) and ignores relayed ones; once blocks drain the pool it admits
    /// again. Transactions queued behind a nonce gap do not make it busy.
    #[test]
    fn a_pool_past_its_backlog_refuses_new_transactions_until_blocks_drain_it() {
        use grapevine_ledger::{Keypair, MemoryStore, Transaction};
        let key = Keypair::from_seed(&[3; 32]);
        let genesis = crate::test_support::genesis(9, &[key.address()], 1_000_000, key.address());
        let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
        let cfg = MempoolConfig {
            min_backlog_txs: 5,
            ..MempoolConfig::default()
        };
        let (node, _) = Node::new(ledger.clone(), cfg, key.address(), vec![key.address()]);
        let tx_fee = |nonce, fee| {
            Transaction {
                chain_id: 9,
                from: key.address(),
                to: Address([7; 32]),
                amount: 1,
                fee,
                nonce,
            }
            .sign(&key)
        };
        let tx = |nonce| tx_fee(nonce, 1);
        for n in 0..5 {
            node.send_transaction(&tx(n).to_bytes()).unwrap();
        }
        let busy = node.send_transaction(&tx(5).to_bytes()).unwrap_err();
        assert!(
            matches!(
                busy,
                ApiError::Rejected {
                    reason: RejectReason::Busy,
                    ..
                }
            ),
            "{busy:?}"
        );
        assert_eq!(node.admit_from_peer(&[tx(5)]), vec![Verdict::Deferred]);
        // A fee above the lowest pooled one is admitted even now.
        node.send_transaction(&tx_fee(4, 2).to_bytes()).unwrap();
        // A block takes the five: the pool is empty and admits again.
        let txs = node.pool().select(10);
        let head = ledger.head();
        let (block, exec) = build_block(&*ledger, 9, &head, key.address(), 1, 1, txs).unwrap();
        node.commit_block(&block, &[], &exec, false).unwrap();
        std::thread::sleep(PENDING_COUNT_REUSE);
        node.send_transaction(&tx(5).to_bytes()).unwrap();
        // Queued transactions (behind a nonce gap) do not count: they may never run.
        for n in 7..12 {
            node.send_transaction(&tx(n).to_bytes()).unwrap();
        }
        std::thread::sleep(PENDING_COUNT_REUSE);
        node.send_transaction(&tx(12).to_bytes()).unwrap();
    }

    /// Each kind of refusal has a reason of its own, and every reason is used: a
    /// client can tell them apart, and none is documented for nothing.
    #[test]
    fn every_refusal_has_a_reason_of_its_own() {
        let reasons = refusal_reasons();
        let distinct: std::collections::HashSet<_> = reasons.iter().collect();
        assert_eq!(
            distinct.len(),
            reasons.len(),
            "two refusals share a reason: {reasons:?}"
        );
        for r in RejectReason::ALL {
            assert!(reasons.contains(&r), "{r:?} is never used");
        }
    }
}
