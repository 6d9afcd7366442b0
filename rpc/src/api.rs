//! What the RPC server needs from a node ([`NodeApi`]), the JSON shapes it answers with,
//! and the domain errors it maps to JSON-RPC error objects.

use grapevine_ledger::json_u64;
use grapevine_ledger::state::FailureReason;
use grapevine_ledger::{Address, BlockHeader, Hash, Receipt, Transaction};
use serde::Serialize;
use tokio::sync::broadcast;

/// The node as the RPC server sees it. Methods may touch the disk: the server calls them
/// off the async runtime's worker threads.
pub trait NodeApi: Send + Sync + 'static {
    /// Chain and node status.
    fn status(&self) -> Result<Status, ApiError>;
    /// An account's committed state and its next nonce counting pooled transactions.
    fn account(&self, addr: &Address) -> Result<AccountInfo, ApiError>;
    /// Admits a transaction (its full encoding) to the mempool; returns its hash.
    fn send_transaction(&self, bytes: &[u8]) -> Result<Hash, ApiError>;
    /// Admits the transactions of a JSON-RPC batch's `sendTransaction` calls: the same
    /// verdicts, in order, as [`NodeApi::send_transaction`] one by one. A node may do
    /// work for all of them together (signature checks, ledger lookups), which is
    /// cheaper.
    fn send_transactions(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, ApiError>> {
        txs.iter().map(|t| self.send_transaction(t)).collect()
    }
    /// A transaction's lifecycle state.
    fn transaction(&self, hash: &Hash) -> Result<TxInfo, ApiError>;
    /// A final block by height, with its hash and certificate.
    fn block_by_height(&self, height: u64) -> Result<Option<BlockInfo>, ApiError>;
    /// Up to `limit` final transactions that `addr` sent or received, newest first,
    /// before position `before` (height, index) when given.
    fn account_transactions(
        &self,
        addr: &Address,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<AccountTxPage, ApiError>;
    /// Height of the final block with this hash.
    fn height_of(&self, hash: &Hash) -> Result<Option<u64>, ApiError>;
    /// Height of the latest final block.
    fn head_height(&self) -> u64;
    /// Connected peers.
    fn peers(&self) -> Vec<PeerInfo>;
    /// Mempool counts (and hashes if asked).
    fn mempool(&self, with_hashes: bool) -> MempoolInfo;
    /// `None` when the node is ready to serve (caught up, enough peers), else why not.
    fn not_ready_reason(&self) -> Option<String>;
    /// Block sync progress. A node without a network (a dev chain) is always synced.
    fn sync_status(&self) -> SyncStatus {
        let h = self.head_height();
        SyncStatus {
            syncing: false,
            current_height: h,
            target_height: h,
            blocks_per_second: 0.0,
            eta_seconds: None,
        }
    }
    /// Each new final block's header.
    fn subscribe_heads(&self) -> broadcast::Receiver<HeadEvent>;
    /// Every transaction lifecycle change.
    fn subscribe_transactions(&self) -> broadcast::Receiver<TxInfo>;
    /// Prometheus text exposition of the node's metrics.
    fn metrics_text(&self) -> String;
    /// The genesis this node runs, for `getGenesis` (a node joining the network checks
    /// it against a hash it got elsewhere). `None`: not known to this node.
    fn genesis(&self) -> Option<grapevine_ledger::Genesis> {
        None
    }
}

/// `getStatus`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The chain id.
    pub chain_id: u32,
    /// The genesis hash.
    pub genesis_hash: Hash,
    /// Height of the latest final block.
    #[serde(with = "json_u64")]
    pub height: u64,
    /// Its hash.
    pub head_hash: Hash,
    /// Its state root.
    pub state_root: Hash,
    /// Connected peers.
    pub peer_count: usize,
    /// Whether the node is catching up.
    pub syncing: bool,
    /// The node's software version.
    pub version: String,
    /// The validator set, in leader order.
    pub validators: Vec<Address>,
}

/// `getAccountTransactions`: one page of an account's history.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountTxPage {
    /// The account.
    pub address: Address,
    /// Newest first.
    pub transactions: Vec<TxInfo>,
    /// Cursor for the next (older) page, as `"height:index"`; `null` when this is the
    /// last page.
    pub next: Option<String>,
}

/// `getAccount`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    /// The account.
    pub address: Address,
    /// Committed balance.
    #[serde(with = "json_u64")]
    pub balance: u64,
    /// Next nonce in the ledger.
    #[serde(with = "json_u64")]
    pub nonce: u64,
    /// Next nonce counting the account's pending transactions in the mempool.
    #[serde(with = "json_u64")]
    pub pending_nonce: u64,
}

/// A transaction's lifecycle state, as `getTransaction` and `subscribeTransaction`
/// report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum TxState {
    /// In the mempool, executable.
    Pending,
    /// In the mempool, waiting for an earlier nonce.
    #[serde(rename_all = "camelCase")]
    Queued {
        /// The sender's nonce it waits for.
        #[serde(with = "json_u64")]
        waiting_for_nonce: u64,
    },
    /// In a final block.
    #[serde(rename_all = "camelCase")]
    Finalized {
        /// The block's height.
        #[serde(with = "json_u64")]
        height: u64,
        /// The block's hash.
        block_hash: Hash,
        /// Position in the block.
        index: u32,
        /// Outcome.
        receipt: ReceiptView,
    },
    /// Refused at submission.
    Rejected {
        /// Why.
        reason: Reason,
    },
    /// Left the mempool without being included (replaced, pushed out, invalidated).
    Evicted {
        /// Why.
        reason: Reason,
    },
    /// Not included within the mempool's time to live.
    Expired {
        /// Why.
        reason: Reason,
    },
    /// Never seen, or forgotten since.
    Unknown,
}

/// A machine-readable code and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable identifier, e.g. `nonceTooLow`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

/// A receipt in JSON: `{"status": "success"}` or `{"status": "failed", "reason": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiptView {
    /// `success` or `failed`.
    pub status: &'static str,
    /// For a failure, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl From<Receipt> for ReceiptView {
    fn from(r: Receipt) -> Self {
        match r {
            Receipt::Success => ReceiptView {
                status: "success",
                reason: None,
            },
            Receipt::Failed { reason } => ReceiptView {
                status: "failed",
                reason: Some(Reason {
                    code: match reason {
                        FailureReason::BadNonce { .. } => "badNonce",
                        FailureReason::InsufficientBalance { .. } => "insufficientBalance",
                        FailureReason::Overflow => "overflow",
                    }
                    .into(),
                    message: reason.to_string(),
                }),
            },
        }
    }
}

/// A transaction as JSON: its fields and signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TxView {
    /// The signed fields.
    #[serde(flatten)]
    pub tx: Transaction,
    /// The signature, 128 hex digits.
    pub signature: grapevine_ledger::Signature,
}

/// `getTransaction` and `subscribeTransaction` notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TxInfo {
    /// The transaction hash.
    pub hash: Hash,
    /// Where it stands.
    #[serde(flatten)]
    pub state: TxState,
    /// The transaction, when the node knows its body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TxView>,
}

/// `getBlock`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockInfo {
    /// The block hash.
    pub hash: Hash,
    /// The header.
    pub header: BlockHeader,
    /// Hashes of the transactions, in order.
    pub tx_hashes: Vec<Hash>,
    /// The transactions, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions: Option<Vec<TxView>>,
    /// The finality certificate, hex (empty for genesis and dev blocks).
    pub certificate: String,
}

/// A new final block, as `subscribeHeads` sends it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadEvent {
    /// The block hash.
    pub hash: Hash,
    /// The header.
    pub header: BlockHeader,
}

/// `getPeers`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// The peer's node key.
    pub id: String,
    /// Its socket address.
    pub address: String,
    /// Where it asks to be dialed (its advertised `external_address`, or the address
    /// it is seen from with its listen port); `None` if it accepts no connections.
    pub listen_address: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Its score.
    pub score: i64,
    /// Bytes received from it.
    #[serde(with = "json_u64")]
    pub bytes_in: u64,
    /// Bytes sent to it.
    #[serde(with = "json_u64")]
    pub bytes_out: u64,
    /// Round-trip time in milliseconds, if measured.
    pub latency_ms: Option<f64>,
}

/// `getSyncStatus`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Whether the node is fetching final blocks from peers.
    pub syncing: bool,
    /// Its final height.
    #[serde(with = "json_u64")]
    pub current_height: u64,
    /// The highest final height its peers report (at least its own).
    #[serde(with = "json_u64")]
    pub target_height: u64,
    /// Blocks applied per second over the last seconds.
    pub blocks_per_second: f64,
    /// Seconds to reach the target at that rate, when known.
    pub eta_seconds: Option<f64>,
}

/// `getMempool`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MempoolInfo {
    /// Executable transactions.
    pub pending: usize,
    /// Transactions waiting for an earlier nonce.
    pub queued: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Hashes, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Vec<Hash>>,
}

/// Why a transaction was refused at submission. The one owner of each reason's
/// JSON-RPC error code and stable name (docs/RPC.md lists them; a test compares).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not one signed transaction of the right size and encoding.
    Malformed,
    /// Signed for another chain id.
    WrongChain,
    /// The signature does not verify for the sender.
    BadSignature,
    /// The nonce is used.
    NonceTooLow,
    /// The balance does not cover amount, fee and the sender's pooled transactions.
    InsufficientBalance,
    /// Already in the mempool.
    AlreadyKnown,
    /// Already in a final block.
    AlreadyFinal,
    /// Replaces a pooled transaction without paying enough more.
    Underpriced,
    /// The pool is full and the fee does not beat the cheapest evictable one.
    MempoolFull,
    /// The sender has as many pooled transactions as allowed.
    SenderLimit,
    /// The nonce is too far past the account's next one.
    NonceTooHigh,
    /// The pooled transaction with this nonce is being put into a block.
    NonceInBlock,
    /// Admission backpressure: the node is behind.
    Busy,
    /// The fee is below the node's minimum.
    FeeTooLow,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 14] = [
        RejectReason::Malformed,
        RejectReason::WrongChain,
        RejectReason::BadSignature,
        RejectReason::NonceTooLow,
        RejectReason::InsufficientBalance,
        RejectReason::AlreadyKnown,
        RejectReason::AlreadyFinal,
        RejectReason::Underpriced,
        RejectReason::MempoolFull,
        RejectReason::SenderLimit,
        RejectReason::NonceTooHigh,
        RejectReason::NonceInBlock,
        RejectReason::Busy,
        RejectReason::FeeTooLow,
    ];

    /// The JSON-RPC error code (in the range JSON-RPC 2.0 leaves to servers).
    pub fn code(self) -> i64 {
        match self {
            RejectReason::Malformed => -32010,
            RejectReason::WrongChain => -32011,
            RejectReason::BadSignature => -32012,
            RejectReason::NonceTooLow => -32013,
            RejectReason::InsufficientBalance => -32014,
            RejectReason::AlreadyKnown => -32015,
            RejectReason::AlreadyFinal => -32016,
            RejectReason::Underpriced => -32017,
            RejectReason::MempoolFull => -32018,
            RejectReason::SenderLimit => -32019,
            RejectReason::NonceTooHigh => -32020,
            RejectReason::NonceInBlock => -32021,
            RejectReason::Busy => -32023,
            RejectReason::FeeTooLow => -32024,
        }
    }

    /// The stable name clients match on (`data.reason`, and `reason.code` of a
    /// `rejected` transaction).
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::WrongChain => "wrongChain",
            RejectReason::BadSignature => "badSignature",
            RejectReason::NonceTooLow => "nonceTooLow",
            RejectReason::InsufficientBalance => "insufficientBalance",
            RejectReason::AlreadyKnown => "alreadyKnown",
            RejectReason::AlreadyFinal => "alreadyFinal",
            RejectReason::Underpriced => "underpriced",
            RejectReason::MempoolFull => "mempoolFull",
            RejectReason::SenderLimit => "senderLimit",
            RejectReason::NonceTooHigh => "nonceTooHigh",
            RejectReason::NonceInBlock => "nonceInBlock",
            RejectReason::Busy => "busy",
            RejectReason::FeeTooLow => "feeTooLow",
        }
    }
}

/// Application errors, each with its JSON-RPC code (see docs/RPC.md).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The mempool refused a transaction.
    #[error("{message}")]
    Rejected {
        /// Why (its code and name).
        reason: RejectReason,
        /// The person-readable message.
        message: String,
        /// The transaction's hash, if it could be decoded.
        hash: Option<Hash>,
    },
    /// No block with that height or hash.
    #[error("block not found: {0}")]
    BlockNotFound(String),
    /// A fault inside the node (details are in its log).
    #[error("internal error; see the node's log")]
    Internal,
}

#[cfg(test)]
mod reject_reason_tests {
    use super::RejectReason;
    use crate::jsonrpc::codes;

    #[test]
    fn codes_are_distinct_server_errors_that_no_other_error_uses() {
        let mut seen = std::collections::HashSet::new();
        for r in RejectReason::ALL {
            let code = r.code();
            assert!(seen.insert(code), "{r:?} shares code {code}");
            // JSON-RPC 2.0 leaves -32000..=-32099 to implementation-defined server errors.
            assert!((-32099..=-32000).contains(&code), "{r:?}: {code}");
            for other in [
                codes::RATE_LIMITED,
                codes::TOO_MANY_SUBSCRIPTIONS,
                codes::BLOCK_NOT_FOUND,
                codes::RESPONSE_TOO_LARGE,
                codes::TIMED_OUT,
            ] {
                assert_ne!(code, other, "{r:?}");
            }
        }
    }

    /// docs/RPC.md's table of application codes lists exactly these reasons, each with
    /// its code.
    #[test]
    fn the_documented_codes_are_the_codes() {
        let doc = include_str!("../../docs/RPC.md");
        let mut documented: Vec<(i64, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse::<i64>().ok()?;
                // The application table names each reason in backticks.
                let name = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code, name.to_string()))
            })
            .collect();
        documented.sort();
        let mut ours: Vec<(i64, String)> = RejectReason::ALL
            .iter()
            .map(|r| (r.code(), r.name().to_string()))
            .collect();
        ours.sort();
        assert_eq!(documented, ours);
    }
}
