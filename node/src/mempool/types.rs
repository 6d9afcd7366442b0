//! The pool's limits, its refusals, and what it reports about transactions.

use super::*;

/// Limits of the pool.
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most bytes (full encodings) held.
    pub max_bytes: usize,
    /// Most transactions held per sender; also how far past the sender's next nonce a
    /// transaction may be.
    pub max_per_sender: usize,
    /// A transaction not included within this long is dropped as expired.
    pub ttl: Duration,
    /// Admission backpressure, the finality a transaction admitted under overload
    /// should get: new transactions are turned away as [`Refusal::Busy`] while the
    /// pool holds more than half this long's worth of the recent finalized throughput
    /// (and at least `min_backlog_txs`; the other half is for inclusion and finality),
    /// so a node under more load than it can finalize refuses the excess at once
    /// instead of queueing it for ever longer. Zero turns it off.
    pub max_backlog: Duration,
    /// The pool never counts as busy below this many transactions (20,000: two full
    /// blocks; an idle chain has no recent throughput to size the backlog by).
    pub min_backlog_txs: usize,
    /// The least fee admitted (node-local, like Bitcoin Core's relay fee floor): every
    /// transaction a block holds stays on every node's disk for good, so none is free.
    pub min_fee: u64,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 200_000,
            max_bytes: 200_000 * SIGNED_TX_LEN,
            max_per_sender: 1_000,
            ttl: Duration::from_secs(600),
            max_backlog: Duration::from_secs(2),
            min_backlog_txs: 20_000,
            min_fee: 1,
        }
    }
}

/// Why the pool refused a transaction. Each maps to its own JSON-RPC error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not hex, or not exactly one encoded transaction.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// For another chain.
    #[error("transaction is for chain {got}, this node runs chain {expected}")]
    WrongChain {
        /// This chain.
        expected: u32,
        /// The transaction's.
        got: u32,
    },
    /// The fee is below this node's minimum.
    #[error("fee {fee} is below this node's minimum fee of {min_fee}")]
    FeeTooLow {
        /// The transaction's fee.
        fee: u64,
        /// The node's minimum.
        min_fee: u64,
    },
    /// Already in the pool.
    #[error("transaction {0} is already in the mempool")]
    AlreadyKnown(Hash),
    /// Already in a final block.
    #[error("transaction {0} is already final")]
    AlreadyFinal(Hash),
    /// The signature does not verify for `from`.
    #[error("invalid signature: the transaction is not signed by its sender's key")]
    BadSignature,
    /// The nonce was already used.
    #[error("nonce {got} is too low: the account's next nonce is {expected}")]
    NonceTooLow {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The nonce is too far ahead of the sender's next nonce.
    #[error(
        "nonce {got} is too far ahead: the account's next nonce is {expected}, at most {max_ahead} ahead are held"
    )]
    NonceTooHigh {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
        /// The window.
        max_ahead: u64,
    },
    /// The sender cannot pay for this and its earlier pooled transactions.
    #[error(
        "insufficient balance: {balance} available, {needed} needed for this and the sender's pending transactions"
    )]
    InsufficientBalance {
        /// The sender's balance.
        balance: u64,
        /// What the sender's pooled transactions with this one cost.
        needed: u128,
    },
    /// A transaction with the same sender and nonce is pooled and this one's fee is not
    /// at least 10% higher.
    #[error(
        "replacement fee too low: nonce {nonce} is taken by a transaction with fee {old_fee}; a replacement needs a fee of at least {min_fee}"
    )]
    Underpriced {
        /// The contested nonce.
        nonce: u64,
        /// The pooled transaction's fee.
        old_fee: u64,
        /// The least fee that replaces it.
        min_fee: u64,
    },
    /// The sender has the maximum number of pooled transactions.
    #[error("the sender already has {0} transactions in the mempool, the limit per sender")]
    SenderLimit(usize),
    /// The pool is full and this transaction's fee does not beat the cheapest one.
    #[error("the mempool is full and the fee {fee} is not above the lowest evictable fee {lowest}")]
    Full {
        /// This transaction's fee.
        fee: u64,
        /// The cheapest evictable fee in the pool.
        lowest: u64,
    },
    /// The pooled transaction with this nonce is being put into a block right now.
    #[error("nonce {nonce} is being included in a block right now and cannot be replaced")]
    InBlock {
        /// The contested nonce.
        nonce: u64,
    },
    /// The node holds more waiting transactions than it finalizes in half
    /// [`MempoolConfig::max_backlog`]: retry in a moment.
    #[error(
        "node busy: {pooled} transactions are waiting, more than it finalizes in {backlog_ms} ms; retry in a moment, or pay a fee of at least {min_fee}"
    )]
    Busy {
        /// Pending transactions in the pool.
        pooled: usize,
        /// The pool's allowance (half the backlog bound) in milliseconds of recent
        /// throughput.
        backlog_ms: u64,
        /// The fee that is admitted even now: one more than the lowest pooled.
        min_fee: u64,
    },
    /// Reading the ledger failed.
    #[error("internal error reading the ledger")]
    Internal,
}

/// The checks that need neither the pool nor the ledger, cheapest first: size,
/// decoding, chain id, signature. Run without the pool's lock, so signature checks of
/// concurrent submissions proceed in parallel. On refusal, the hash when known.
pub fn precheck(bytes: &[u8], chain_id: u32) -> Result<SignedTx, (Option<Hash>, Refusal)> {
    if bytes.len() != SIGNED_TX_LEN {
        return Err((
            None,
            Refusal::Malformed(format!(
                "a signed transaction is {SIGNED_TX_LEN} bytes, got {}",
                bytes.len()
            )),
        ));
    }
    let tx = SignedTx::from_bytes(bytes).map_err(|e| (None, Refusal::Malformed(e.to_string())))?;
    let hash = tx.hash();
    if tx.tx().chain_id != chain_id {
        return Err((
            Some(hash),
            Refusal::WrongChain {
                expected: chain_id,
                got: tx.tx().chain_id,
            },
        ));
    }
    // A batch submission's signatures may have been checked together already (see
    // `Node::send_transactions`); block checks skip what is known valid.
    if !grapevine_ledger::tx::verified_before(&hash) {
        if !tx.verify() {
            return Err((Some(hash), Refusal::BadSignature));
        }
        grapevine_ledger::tx::remember_verified([hash]);
    }
    Ok(tx)
}

/// Where a pooled transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolState {
    /// Executable now: every earlier nonce of its sender is final or pooled.
    Pending,
    /// Waiting for the sender's transaction with this nonce.
    Queued {
        /// The first missing nonce.
        waiting_for: u64,
    },
}

/// Why a transaction left the pool without being included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Replaced by a transaction with the same sender and nonce and a higher fee.
    Replaced {
        /// The replacement.
        by: Hash,
    },
    /// Pushed out of a full pool by a higher-fee transaction.
    EvictedFull,
    /// No longer valid after a block (its nonce was used, or the balance no longer
    /// covers it).
    Invalidated(String),
    /// Not included within the pool's time to live.
    Expired,
}
