//! The transaction pool: admission, ordering for block building, replacement, eviction
//! and expiry.
//!
//! Admission checks run cheapest first: size, decoding, chain id and signature (in
//! [`precheck`], outside the pool's lock), then duplicates (in the pool or already
//! final), nonce, balance and the pool's limits. Each refusal is a
//! distinct [`Refusal`]. A transaction whose nonce is the sender's next (counting the
//! sender's pooled transactions) is *pending*; one after a gap is *queued* until the gap
//! closes. Blocks take pending transactions by fee, each sender's in nonce order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use grapevine_ledger::collections::{FastMap, FastSet};
use grapevine_ledger::state::StateView;
use grapevine_ledger::tx::SIGNED_TX_LEN;
use grapevine_ledger::{Address, Hash, SignedTx};

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
    /// Admission backpressure: new transactions are turned away as
    /// [`Refusal::Busy`] while the pool holds more than this long's worth of the
    /// recent finalized throughput (and at least `min_backlog_txs`), so a node under
    /// more load than it can finalize refuses the excess at once instead of queueing it
    /// for ever longer. Zero turns it off.
    pub max_backlog: Duration,
    /// The pool never counts as busy below this many transactions (20,000: two full
    /// blocks; an idle chain has no recent throughput to size the backlog by).
    pub min_backlog_txs: usize,
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
    /// The node holds more waiting transactions than it finalizes in
    /// [`MempoolConfig::max_backlog`]: retry in a moment.
    #[error(
        "node busy: {pooled} transactions are waiting, more than it finalizes in {backlog_ms} ms; retry in a moment, or pay a fee of at least {min_fee}"
    )]
    Busy {
        /// Pending transactions in the pool.
        pooled: usize,
        /// The backlog limit in milliseconds of recent throughput.
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

#[derive(Clone, Debug)]
struct Entry {
    tx: SignedTx,
    inserted: Instant,
    seq: u64,
    /// When it was last announced to peers (first: at admission).
    announced: Instant,
}

#[derive(Debug, Default)]
struct Sender {
    /// The sender's next nonce in the ledger. Changed only through [`Sender::set_base`].
    base_nonce: u64,
    /// The sender's balance in the ledger.
    balance: u64,
    /// `base_nonce` and `balance` were read from the ledger and every block since has
    /// been through [`Mempool::on_commit`] (false after a failed read there).
    synced: bool,
    /// Pooled transactions by nonce. Changed only through [`Sender::insert`] and
    /// [`Sender::remove`], which keep `gap` and `cost`.
    txs: BTreeMap<u64, Hash>,
    /// Sum of amount + fee over `txs`, so admission's balance check does not walk them.
    cost: u128,
    /// The first nonce from `base_nonce` on that is not pooled. Kept up to date rather
    /// than found by walking `txs`: with deep per-sender queues under load, the walks
    /// became a top item of the profile.
    gap: u64,
}

impl Sender {
    /// The first nonce from `base_nonce` on that is not pooled.
    fn first_gap(&self) -> u64 {
        self.gap
    }

    fn advance_gap(&mut self) {
        while self.txs.contains_key(&self.gap) {
            self.gap += 1;
        }
    }

    /// The ledger's next nonce for this sender.
    fn set_base(&mut self, base: u64) {
        if base < self.base_nonce || self.gap < base {
            self.gap = base;
        }
        self.base_nonce = base;
        self.advance_gap();
    }

    fn insert(&mut self, nonce: u64, hash: Hash, cost: u128) {
        if self.txs.insert(nonce, hash).is_none() {
            self.cost += cost;
        }
        if nonce == self.gap {
            self.advance_gap();
        }
    }

    fn remove(&mut self, nonce: u64, cost: u128) {
        if self.txs.remove(&nonce).is_some() {
            self.cost -= cost;
            if nonce >= self.base_nonce && nonce < self.gap {
                self.gap = nonce;
            }
        }
    }

    /// Hashes of the pooled transactions with nonces in `range`.
    fn hashes_in(&self, range: std::ops::Range<u64>) -> Vec<Hash> {
        if range.start >= range.end {
            return Vec::new();
        }
        self.txs.range(range).map(|(_, h)| *h).collect()
    }
}

/// What a transfer can take from its sender's balance.
fn cost(tx: &SignedTx) -> u128 {
    u128::from(tx.tx().amount) + u128::from(tx.tx().fee)
}

/// The pool. Not thread-safe by itself: the node keeps it behind a mutex.
#[derive(Debug)]
pub struct Mempool {
    cfg: MempoolConfig,
    entries: FastMap<Hash, Entry>,
    senders: FastMap<Address, Sender>,
    /// (fee, sequence, hash) of every entry, for eviction.
    by_fee: BTreeSet<(u64, u64, Hash)>,
    bytes: usize,
    next_seq: u64,
    /// Selected for the block being built: not to be replaced, evicted or expired.
    in_block: FastSet<Hash>,
    /// Calls of [`Mempool::on_commit`] so far: blocks written, and blocks that could
    /// not be built (`Node::unbuildable`), which only makes idle records go sooner.
    commits: u64,
    /// Senders whose last pooled transactions a block took, with the commit count then:
    /// their records are kept for [`IDLE_COMMITS`] more blocks (see `admit`).
    idle: VecDeque<(Address, u64)>,
}

/// Blocks a sender's record outlives its last pooled transaction by. A busy sender's
/// next transfer usually comes within a few blocks, and its record spares admission a
/// ledger read (1.2% of a loaded testnet's CPU went to such reads).
const IDLE_COMMITS: u64 = 32;
/// Most records kept for idle senders.
const IDLE_MAX: usize = 65_536;

/// The result of an accepted submission.
#[derive(Debug)]
pub struct Admitted {
    /// The transaction's hash.
    pub hash: Hash,
    /// Pending or queued.
    pub state: PoolState,
    /// Transactions that left the pool to make room (replaced or evicted).
    pub dropped: Vec<(Hash, Dropped)>,
    /// Queued transactions of the same sender that became pending.
    pub promoted: Vec<Hash>,
}

impl Mempool {
    /// An empty pool.
    pub fn new(cfg: MempoolConfig) -> Self {
        Mempool {
            cfg,
            entries: FastMap::default(),
            senders: FastMap::default(),
            by_fee: BTreeSet::new(),
            bytes: 0,
            next_seq: 0,
            in_block: FastSet::default(),
            commits: 0,
            idle: VecDeque::new(),
        }
    }

    /// The limits the pool was made with.
    pub fn config(&self) -> &MempoolConfig {
        &self.cfg
    }

    /// Whether the transaction with this hash is pooled.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.entries.contains_key(hash)
    }

    /// The lowest fee in the pool, if it holds anything.
    pub fn lowest_fee(&self) -> Option<u64> {
        self.by_fee.first().map(|(fee, _, _)| *fee)
    }

    /// Up to `max` transactions pooled and last announced at least `age` ago, marked as
    /// announced now: a node re-announces them, since peers may have dropped or
    /// deferred them while busy.
    pub fn due_for_reannounce(&mut self, now: Instant, age: Duration, max: usize) -> Vec<SignedTx> {
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if out.len() >= max {
                break;
            }
            if now.saturating_duration_since(e.announced) >= age {
                e.announced = now;
                out.push(e.tx);
            }
        }
        out
    }

    /// Number of pooled transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of pooled transactions.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts of pending and queued transactions.
    /// Whether some sender's next transaction can run now. Stops at the first.
    pub fn has_executable(&self) -> bool {
        self.senders
            .values()
            .any(|s| s.txs.contains_key(&s.base_nonce))
    }

    /// Pending and queued counts. Visits every sender (not every transaction): not for
    /// hot paths.
    pub fn counts(&self) -> (usize, usize) {
        // A sender's pending transactions are exactly the nonces base..gap.
        let pending: u64 = self.senders.values().map(|s| s.gap - s.base_nonce).sum();
        let pending = usize::try_from(pending).unwrap_or(usize::MAX);
        (pending, self.entries.len().saturating_sub(pending))
    }

    /// Hashes of pooled transactions, at most `max`.
    pub fn hashes(&self, max: usize) -> Vec<Hash> {
        self.entries.keys().take(max).copied().collect()
    }

    /// The pooled transaction with this hash and its state.
    pub fn get(&self, hash: &Hash) -> Option<(SignedTx, PoolState)> {
        let e = self.entries.get(hash)?;
        let s = self.senders.get(&e.tx.tx().from)?;
        let gap = s.first_gap();
        let state = if e.tx.tx().nonce < gap {
            PoolState::Pending
        } else {
            PoolState::Queued { waiting_for: gap }
        };
        Some((e.tx, state))
    }

    /// The sender's next nonce counting pooled transactions (`pendingNonce`), or `None`
    /// if the pool holds nothing of this sender.
    pub fn pending_nonce(&self, sender: &Address) -> Option<u64> {
        self.senders
            .get(sender)
            .filter(|s| !s.txs.is_empty())
            .map(Sender::first_gap)
    }

    /// Admits a transaction that passed [`precheck`] (chain id and signature): only the
    /// checks that need the pool and the ledger run here, under the pool's lock.
    pub fn submit_verified(
        &mut self,
        tx: SignedTx,
        view: &dyn StateView,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let from = tx.tx().from;
        let result = self.admit(tx, view, now);
        // A refused first transaction leaves no sender record behind.
        self.prune(&from);
        result
    }

    fn admit(
        &mut self,
        tx: SignedTx,
        view: &dyn StateView,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let hash = tx.hash();
        if self.entries.contains_key(&hash) {
            return Err(Refusal::AlreadyKnown(hash));
        }
        if view.contains_tx(&hash).map_err(|_| Refusal::Internal)? {
            return Err(Refusal::AlreadyFinal(hash));
        }
        // A sender's record is current: every block that holds one of its transactions
        // refreshes it in `on_commit`, which runs under the same lock as the ledger
        // write (Node::commit_block). Records outlive the sender's pooled transactions
        // only when a block took them, so they were refreshed then. Only transfers to
        // the sender can make a record stale, by raising its balance, so trusting it can
        // only refuse wrongly, never admit wrongly: the ledger is read for a sender
        // without a record, and again to re-check a refusal on nonce or balance. Under
        // load this spares a ledger read on nearly every admission.
        let from = tx.tx().from;
        let kept = self.senders.get(&from).is_some_and(|s| s.synced);
        if !kept {
            self.refresh_sender(&from, view)?;
        }
        match self.admit_sender_checked(tx, now) {
            Err(
                Refusal::NonceTooLow { .. }
                | Refusal::NonceTooHigh { .. }
                | Refusal::InsufficientBalance { .. },
            ) if kept => {
                self.refresh_sender(&from, view)?;
                self.admit_sender_checked(tx, now)
            }
            result => result,
        }
    }

    /// Admission once the sender's record is loaded: nonce, replacement, balance and
    /// the pool's limits.
    fn admit_sender_checked(&mut self, tx: SignedTx, now: Instant) -> Result<Admitted, Refusal> {
        let hash = tx.hash();
        let t = tx.tx();
        let max_ahead = self.cfg.max_per_sender as u64;
        let sender = self.senders.get(&t.from).ok_or(Refusal::Internal)?;
        if t.nonce < sender.base_nonce {
            return Err(Refusal::NonceTooLow {
                expected: sender.base_nonce,
                got: t.nonce,
            });
        }
        if t.nonce - sender.base_nonce >= max_ahead {
            return Err(Refusal::NonceTooHigh {
                expected: sender.base_nonce,
                got: t.nonce,
                max_ahead,
            });
        }
        let replacing = sender.txs.get(&t.nonce).copied();
        if let Some(old) = replacing
            && self.in_block.contains(&old)
        {
            return Err(Refusal::InBlock { nonce: t.nonce });
        }
        if let Some(old) = replacing {
            let old_fee = self.entries[&old].tx.tx().fee;
            // At least 10% more, rounded up, and at least one more.
            let min_fee = old_fee
                .saturating_add(old_fee.div_ceil(10))
                .max(old_fee.saturating_add(1));
            if t.fee < min_fee {
                return Err(Refusal::Underpriced {
                    nonce: t.nonce,
                    old_fee,
                    min_fee,
                });
            }
        } else if sender.txs.len() >= self.cfg.max_per_sender {
            return Err(Refusal::SenderLimit(self.cfg.max_per_sender));
        }
        // The sender must afford every pooled transaction with this one in place. Those
        // below the ledger's nonce (a block just made them final) no longer count.
        let mut needed: u128 = sender.cost + cost(&tx);
        for h in sender
            .txs
            .range(..sender.base_nonce)
            .map(|(_, h)| h)
            .chain(&replacing)
        {
            needed -= cost(&self.entries[h].tx);
        }
        if needed > u128::from(sender.balance) {
            return Err(Refusal::InsufficientBalance {
                balance: sender.balance,
                needed,
            });
        }

        let mut dropped = Vec::new();
        if replacing.is_none() {
            while self.entries.len() + 1 > self.cfg.max_txs
                || self.bytes + SIGNED_TX_LEN > self.cfg.max_bytes
            {
                match self.cheapest_evictable(&t.from) {
                    Some((fee, victim)) if fee < t.fee => {
                        if let Some(e) = self.remove(&victim) {
                            self.prune(&e.tx.tx().from);
                        }
                        dropped.push((victim, Dropped::EvictedFull));
                    }
                    Some((lowest, _)) => return Err(Refusal::Full { fee: t.fee, lowest }),
                    None => {
                        return Err(Refusal::Full {
                            fee: t.fee,
                            lowest: 0,
                        });
                    }
                }
            }
        }

        // Pending transactions are the run of nonces from the ledger's up to the first
        // gap, so what this one promotes is what lies between the old gap and the new.
        let gap_before = self.senders.get(&t.from).map_or(0, Sender::first_gap);
        if let Some(old) = replacing {
            self.remove(&old);
            dropped.push((old, Dropped::Replaced { by: hash }));
        }
        let (from, nonce, fee) = (t.from, t.nonce, t.fee);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_fee.insert((fee, seq, hash));
        self.bytes += SIGNED_TX_LEN;
        let sender = self.senders.entry(from).or_default();
        sender.insert(nonce, hash, cost(&tx));
        let gap_after = sender.first_gap();
        let promoted = sender.hashes_in(gap_before.max(nonce + 1)..gap_after);
        let state = if nonce < gap_after {
            PoolState::Pending
        } else {
            PoolState::Queued {
                waiting_for: gap_after,
            }
        };
        self.entries.insert(
            hash,
            Entry {
                tx,
                inserted: now,
                seq,
                announced: now,
            },
        );
        Ok(Admitted {
            hash,
            state,
            dropped,
            promoted,
        })
    }

    /// Re-reads the sender's nonce and balance from the ledger.
    fn refresh_sender(&mut self, addr: &Address, view: &dyn StateView) -> Result<(), Refusal> {
        let acct = view
            .account(addr)
            .map_err(|_| Refusal::Internal)?
            .unwrap_or_default();
        let s = self.senders.entry(*addr).or_default();
        s.set_base(acct.nonce);
        s.balance = acct.balance;
        s.synced = true;
        Ok(())
    }

    /// The lowest-fee transaction that is its sender's last (so evicting it opens no
    /// gap), not counting `except`'s transactions.
    fn cheapest_evictable(&self, except: &Address) -> Option<(u64, Hash)> {
        self.by_fee.iter().find_map(|(fee, _, h)| {
            let e = &self.entries[h];
            let from = &e.tx.tx().from;
            let last = self.senders.get(from)?.txs.keys().next_back()?;
            (from != except && *last == e.tx.tx().nonce && !self.in_block.contains(h))
                .then_some((*fee, *h))
        })
    }

    fn remove(&mut self, hash: &Hash) -> Option<Entry> {
        let e = self.entries.remove(hash)?;
        self.by_fee.remove(&(e.tx.tx().fee, e.seq, *hash));
        self.bytes -= SIGNED_TX_LEN;
        self.in_block.remove(hash);
        if let Some(s) = self.senders.get_mut(&e.tx.tx().from) {
            s.remove(e.tx.tx().nonce, cost(&e.tx));
        }
        Some(e)
    }

    /// Forgets the sender's record if it holds no transaction.
    fn prune(&mut self, addr: &Address) {
        if self.senders.get(addr).is_some_and(|s| s.txs.is_empty()) {
            self.senders.remove(addr);
        }
    }

    /// Up to `max` pending transactions for a block: highest fee first, each sender's in
    /// nonce order. Leaves them in the pool until [`Mempool::on_commit`] and protects them
    /// from replacement, eviction and expiry until then (or [`Mempool::release`]).
    pub fn select(&mut self, max: usize) -> Vec<SignedTx> {
        self.select_after(max, &HashMap::new())
    }

    /// [`Mempool::select`] for a block whose parent is not final yet: `next_nonce`
    /// holds the next nonce of the senders that the unfinalized ancestors touched, so
    /// their transactions already in those blocks are skipped.
    pub fn select_after(
        &mut self,
        max: usize,
        next_nonce: &HashMap<Address, u64>,
    ) -> Vec<SignedTx> {
        // Heap of each sender's next executable transaction, by fee then age.
        let mut heap: BinaryHeap<(u64, Reverse<u64>, Address, u64)> = BinaryHeap::new();
        for (addr, s) in &self.senders {
            let start = next_nonce
                .get(addr)
                .map_or(s.base_nonce, |n| (*n).max(s.base_nonce));
            if let Some(h) = s.txs.get(&start) {
                let e = &self.entries[h];
                heap.push((e.tx.tx().fee, Reverse(e.seq), *addr, start));
            }
        }
        let mut out = Vec::with_capacity(max.min(self.entries.len()));
        while out.len() < max {
            let Some((_, _, addr, nonce)) = heap.pop() else {
                break;
            };
            let s = &self.senders[&addr];
            let h = s.txs[&nonce];
            out.push(self.entries[&h].tx);
            self.in_block.insert(h);
            if let Some(h) = s.txs.get(&(nonce + 1)) {
                let e = &self.entries[h];
                heap.push((e.tx.tx().fee, Reverse(e.seq), addr, nonce + 1));
            }
        }
        out
    }

    /// Ends the protection [`Mempool::select`] gave, when its block was not made.
    pub fn release(&mut self) {
        self.in_block.clear();
    }

    /// After a block is final: removes its transactions, re-reads the state of their
    /// senders, and drops what no longer fits. Returns the dropped transactions and the
    /// queued ones that became pending. Every block written to the ledger must come
    /// through here before the next admission: admission trusts the sender records it
    /// keeps current.
    pub fn on_commit(
        &mut self,
        included: &[SignedTx],
        view: &dyn StateView,
    ) -> (Vec<(Hash, Dropped)>, Vec<Hash>) {
        self.commits += 1;
        let mut senders: Vec<Address> = included.iter().map(|t| t.tx().from).collect();
        senders.sort();
        senders.dedup();
        let gaps: Vec<u64> = senders
            .iter()
            .map(|a| self.senders.get(a).map_or(0, Sender::first_gap))
            .collect();
        for t in included {
            self.remove(&t.hash());
        }
        self.in_block.clear();
        let mut dropped = Vec::new();
        let mut promoted = Vec::new();
        for (addr, gap_before) in senders.into_iter().zip(gaps) {
            let Ok(acct) = view.account(&addr) else {
                if let Some(s) = self.senders.get_mut(&addr) {
                    s.synced = false;
                }
                self.prune(&addr);
                continue;
            };
            let acct = acct.unwrap_or_default();
            let Some(s) = self.senders.get_mut(&addr) else {
                continue;
            };
            s.set_base(acct.nonce);
            s.balance = acct.balance;
            let stale: Vec<Hash> = s.txs.range(..acct.nonce).map(|(_, h)| *h).collect();
            let mut spent: u128 = 0;
            let mut unaffordable = Vec::new();
            if s.cost > u128::from(acct.balance) {
                for h in s.txs.range(acct.nonce..).map(|(_, h)| *h) {
                    let c = cost(&self.entries[&h].tx);
                    // Once one cannot be paid, the later ones could never run either.
                    if !unaffordable.is_empty() || spent + c > u128::from(acct.balance) {
                        unaffordable.push(h);
                    } else {
                        spent += c;
                    }
                }
            }
            // Each reason is formatted only when something is dropped for it.
            let reasons: [(Vec<Hash>, &dyn Fn() -> String); 2] = [
                (stale, &|| {
                    format!(
                        "nonce already used: the account's next nonce is {}",
                        acct.nonce
                    )
                }),
                (unaffordable, &|| {
                    format!(
                        "insufficient balance after the last block: {} available",
                        acct.balance
                    )
                }),
            ];
            for (hashes, why) in reasons {
                if hashes.is_empty() {
                    continue;
                }
                let why = why();
                for h in hashes {
                    self.remove(&h);
                    dropped.push((h, Dropped::Invalidated(why.clone())));
                }
            }
            // Only removals happened: every transaction pending now at or past the gap
            // before the block was queued before it.
            if let Some(s) = self.senders.get(&addr) {
                promoted.extend(s.hashes_in(gap_before.max(s.base_nonce)..s.first_gap()));
                if s.txs.is_empty() && s.synced {
                    self.idle.push_back((addr, self.commits));
                    continue;
                }
            }
            self.prune(&addr);
        }
        // Forget idle senders' records after IDLE_COMMITS blocks (or beyond IDLE_MAX).
        // One that pooled a transaction since keeps its record; a stale queue entry for
        // a record that went idle again later forgets it early, which costs only a read.
        while let Some(&(addr, at)) = self.idle.front() {
            if at + IDLE_COMMITS > self.commits && self.idle.len() <= IDLE_MAX {
                break;
            }
            self.idle.pop_front();
            self.prune(&addr);
        }
        (dropped, promoted)
    }

    /// Drops transactions older than the time to live.
    pub fn expire(&mut self, now: Instant) -> Vec<(Hash, Dropped)> {
        let ttl = self.cfg.ttl;
        let old: Vec<Hash> = self
            .entries
            .iter()
            .filter(|(h, e)| {
                now.saturating_duration_since(e.inserted) >= ttl && !self.in_block.contains(h)
            })
            .map(|(h, _)| *h)
            .collect();
        let mut out = Vec::with_capacity(old.len());
        for h in old {
            if let Some(e) = self.remove(&h) {
                self.prune(&e.tx.tx().from);
                out.push((h, Dropped::Expired));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine_ledger::state::build_block;
    use grapevine_ledger::{Keypair, Ledger, MemoryStore, Transaction};

    const CHAIN: u32 = 5;

    struct Fixture {
        ledger: Ledger,
        keys: Vec<Keypair>,
        pool: Mempool,
        now: Instant,
    }

    fn fixture(cfg: MempoolConfig) -> Fixture {
        let keys: Vec<Keypair> = (1..=4u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
        let g = crate::test_support::genesis(CHAIN, &addrs, 1_000, Address([9; 32]));
        Fixture {
            ledger: Ledger::open(Box::new(MemoryStore::new()), &g).unwrap(),
            keys,
            pool: Mempool::new(cfg),
            now: Instant::now(),
        }
    }

    fn tx(k: &Keypair, nonce: u64, amount: u64, fee: u64) -> SignedTx {
        Transaction {
            chain_id: CHAIN,
            from: k.address(),
            to: Address([7; 32]),
            amount,
            fee,
            nonce,
        }
        .sign(k)
    }

    impl Fixture {
        /// A block of `txs` (another node's) on the ledger's head, written final and
        /// passed to the pool as the node does.
        fn final_block(&mut self, txs: Vec<SignedTx>) -> (Vec<(Hash, Dropped)>, Vec<Hash>) {
            let head = self.ledger.head();
            let round = head.height + 1;
            let (block, exec) =
                build_block(&self.ledger, CHAIN, &head, Address([9; 32]), round, 1, txs).unwrap();
            self.ledger.commit(&block, &[], &exec).unwrap();
            self.pool.on_commit(&block.txs, &self.ledger)
        }

        /// A final block in which the second key (nonce 0, no fee) pays `amount` to
        /// `to`.
        fn pay_from_second_key(&mut self, to: Address, amount: u64) {
            let payment = Transaction {
                chain_id: CHAIN,
                from: self.keys[1].address(),
                to,
                amount,
                fee: 0,
                nonce: 0,
            }
            .sign(&self.keys[1]);
            self.final_block(vec![payment]);
        }

        fn submit(&mut self, t: SignedTx) -> Result<Admitted, Refusal> {
            let tx = precheck(&t.to_bytes(), CHAIN).map_err(|(_, r)| r)?;
            self.pool.submit_verified(tx, &self.ledger, self.now)
        }
    }

    #[test]
    fn refusals_are_distinct() {
        let mut f = fixture(MempoolConfig::default());
        let good = tx(&f.keys[0], 0, 10, 1);
        assert!(matches!(
            precheck(&good.to_bytes()[..100], CHAIN),
            Err((None, Refusal::Malformed(_)))
        ));
        let other_chain = good.altered(|t, _| t.chain_id = 6);
        assert!(matches!(
            f.submit(other_chain),
            Err(Refusal::WrongChain { .. })
        ));
        let bad_sig = good.altered(|t, _| t.amount = 11);
        assert_eq!(f.submit(bad_sig).unwrap_err(), Refusal::BadSignature);
        assert!(matches!(
            f.submit(tx(&f.keys[0], 0, 1000, 1)),
            Err(Refusal::InsufficientBalance { .. })
        ));
        assert!(matches!(
            f.submit(tx(&f.keys[0], 5000, 1, 1)),
            Err(Refusal::NonceTooHigh { .. })
        ));
        f.submit(good).unwrap();
        assert!(matches!(f.submit(good), Err(Refusal::AlreadyKnown(_))));
        assert!(matches!(
            f.submit(tx(&f.keys[0], 0, 10, 1)),
            Err(Refusal::AlreadyKnown(_)) | Err(Refusal::Underpriced { .. })
        ));
    }

    #[test]
    fn gap_queues_and_filling_it_promotes() {
        let mut f = fixture(MempoolConfig::default());
        let t1 = tx(&f.keys[0], 1, 10, 1);
        let a = f.submit(t1).unwrap();
        assert_eq!(a.state, PoolState::Queued { waiting_for: 0 });
        assert_eq!(f.pool.select(10).len(), 0);
        let a = f.submit(tx(&f.keys[0], 0, 10, 1)).unwrap();
        assert_eq!(a.state, PoolState::Pending);
        assert_eq!(a.promoted, vec![t1.hash()]);
        assert_eq!(f.pool.pending_nonce(&f.keys[0].address()), Some(2));
        assert_eq!(f.pool.counts(), (2, 0));
    }

    #[test]
    fn replacement_needs_ten_percent_more() {
        let mut f = fixture(MempoolConfig::default());
        let first = tx(&f.keys[0], 0, 10, 100);
        f.submit(first).unwrap();
        let cheap = tx(&f.keys[0], 0, 11, 109);
        assert_eq!(
            f.submit(cheap).unwrap_err(),
            Refusal::Underpriced {
                nonce: 0,
                old_fee: 100,
                min_fee: 110
            }
        );
        let better = tx(&f.keys[0], 0, 11, 110);
        let a = f.submit(better).unwrap();
        assert_eq!(
            a.dropped,
            vec![(first.hash(), Dropped::Replaced { by: better.hash() })]
        );
        assert!(f.pool.get(&first.hash()).is_none());
        assert_eq!(f.pool.len(), 1);
    }

    #[test]
    fn replacing_the_only_pooled_transaction_keeps_it_pending() {
        let mut f = fixture(MempoolConfig::default());
        // Make nonce 0 final so the account's next nonce is 1.
        let first = tx(&f.keys[0], 0, 1, 1);
        f.submit(first).unwrap();
        let sel = f.pool.select(10);
        f.final_block(sel);
        f.submit(tx(&f.keys[0], 1, 1, 10)).unwrap();
        let better = tx(&f.keys[0], 1, 1, 20);
        let a = f.submit(better).unwrap();
        assert_eq!(a.state, PoolState::Pending);
        assert_eq!(f.pool.select(10), vec![better]);
    }

    #[test]
    fn a_pooled_sender_that_received_funds_can_spend_them() {
        let mut f = fixture(MempoolConfig::default());
        let a = f.keys[0].address();
        f.submit(tx(&f.keys[0], 0, 600, 1)).unwrap();
        // A block that pays the pooled sender but holds none of its transactions, so
        // `on_commit` does not refresh its record: the kept balance (1,000) is stale.
        f.pay_from_second_key(a, 500);
        // 601 pooled + 801 = 1,402: more than the kept balance, within the ledger's 1,500.
        let spend = f.submit(tx(&f.keys[0], 1, 800, 1)).unwrap();
        assert_eq!(spend.state, PoolState::Pending);
        // Beyond the ledger's balance it is still refused, with the ledger's figure.
        assert_eq!(
            f.submit(tx(&f.keys[0], 2, 98, 1)).unwrap_err(),
            Refusal::InsufficientBalance {
                balance: 1_500,
                needed: 1_501,
            }
        );
    }

    #[test]
    fn selection_after_unfinalized_blocks_skips_their_nonces() {
        let mut f = fixture(MempoolConfig::default());
        let a = f.keys[0].address();
        let txs: Vec<SignedTx> = (0..4).map(|n| tx(&f.keys[0], n, 1, 1)).collect();
        for t in &txs {
            f.submit(*t).unwrap();
        }
        let other = tx(&f.keys[1], 0, 1, 1);
        f.submit(other).unwrap();
        assert!(f.pool.has_executable());
        // An unfinalized parent already holds nonces 0 and 1 of the first sender.
        let next = HashMap::from([(a, 2)]);
        let mut sel = f.pool.select_after(10, &next);
        sel.sort_by_key(|t| (t.tx().from, t.tx().nonce));
        let mut want = vec![txs[2], txs[3], other];
        want.sort_by_key(|t| (t.tx().from, t.tx().nonce));
        assert_eq!(sel, want);
        // With no unfinalized ancestors, every pending transaction is selectable.
        f.pool.release();
        assert_eq!(f.pool.select_after(10, &HashMap::new()).len(), 5);
    }

    /// The ledger, counting account reads.
    struct Counting<'a>(&'a Ledger, std::cell::Cell<usize>);

    impl StateView for Counting<'_> {
        fn account(
            &self,
            addr: &Address,
        ) -> Result<Option<grapevine_ledger::Account>, grapevine_ledger::StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.account(addr)
        }
        fn state_hash(
            &self,
        ) -> Result<grapevine_ledger::state::LtHash, grapevine_ledger::StoreError> {
            self.0.state_hash()
        }
        fn contains_tx(&self, hash: &Hash) -> Result<bool, grapevine_ledger::StoreError> {
            self.0.contains_tx(hash)
        }
    }

    #[test]
    fn a_sender_a_block_emptied_keeps_its_record_for_a_while() {
        let mut f = fixture(MempoolConfig::default());
        let a = f.keys[0].address();
        let t0 = tx(&f.keys[0], 0, 100, 1);
        f.submit(t0).unwrap();
        f.final_block(vec![t0]);
        assert_eq!(f.pool.pending_nonce(&a), None, "nothing of it is pooled");
        // Its next transfer is checked against the record the block left: no read.
        let view = Counting(&f.ledger, Default::default());
        let t1 = tx(&f.keys[0], 1, 100, 1);
        let admitted = f.pool.submit_verified(t1, &view, f.now).unwrap();
        assert_eq!(admitted.state, PoolState::Pending);
        assert_eq!(view.1.get(), 0);
        // Paid by another sender, it may spend more than the record says (1,000 - 101
        // - 101 = 798 left): the refusal is re-checked against the ledger.
        f.final_block(vec![t1]);
        f.pay_from_second_key(a, 500);
        let view = Counting(&f.ledger, Default::default());
        let big = tx(&f.keys[0], 2, 1_000, 1);
        assert_eq!(
            f.pool.submit_verified(big, &view, f.now).unwrap().state,
            PoolState::Pending
        );
        assert_eq!(view.1.get(), 1, "one read, for the re-check");
        // A nonce the block used is refused after the re-check too.
        f.final_block(vec![big]);
        assert!(matches!(
            f.submit(tx(&f.keys[0], 2, 1, 1)),
            Err(Refusal::NonceTooLow {
                expected: 3,
                got: 2
            })
        ));
        // After IDLE_COMMITS blocks without it, the record is gone and read again.
        for _ in 0..IDLE_COMMITS {
            f.final_block(vec![]);
        }
        assert!(!f.pool.senders.contains_key(&a));
        let view = Counting(&f.ledger, Default::default());
        f.pool
            .submit_verified(tx(&f.keys[0], 3, 1, 1), &view, f.now)
            .unwrap();
        assert_eq!(view.1.get(), 1);
    }

    #[test]
    fn refused_senders_leave_no_record() {
        let mut f = fixture(MempoolConfig::default());
        let stranger = Keypair::from_seed(&[77; 32]);
        for n in 0..5 {
            assert!(f.submit(tx(&stranger, n, 1, 1)).is_err());
        }
        assert!(f.pool.senders.is_empty());
    }

    #[test]
    fn selected_transactions_cannot_be_replaced_until_committed() {
        let mut f = fixture(MempoolConfig::default());
        f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
        let _ = f.pool.select(10);
        assert_eq!(
            f.submit(tx(&f.keys[0], 0, 1, 100)).unwrap_err(),
            Refusal::InBlock { nonce: 0 }
        );
        f.pool.release();
        assert!(f.submit(tx(&f.keys[0], 0, 1, 100)).is_ok());
    }

    #[test]
    fn selection_orders_by_fee_but_keeps_nonce_order() {
        let mut f = fixture(MempoolConfig::default());
        let (a, b) = (f.keys[0].address(), f.keys[1].address());
        f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
        f.submit(tx(&f.keys[0], 1, 1, 50)).unwrap();
        f.submit(tx(&f.keys[1], 0, 1, 10)).unwrap();
        let order: Vec<(Address, u64)> = f
            .pool
            .select(10)
            .iter()
            .map(|t| (t.tx().from, t.tx().nonce))
            .collect();
        assert_eq!(order, vec![(b, 0), (a, 0), (a, 1)]);
        assert_eq!(f.pool.select(1).len(), 1);
    }

    #[test]
    fn full_pool_evicts_the_cheapest_or_refuses() {
        let mut f = fixture(MempoolConfig {
            max_txs: 2,
            ..MempoolConfig::default()
        });
        let cheap = tx(&f.keys[0], 0, 1, 1);
        f.submit(cheap).unwrap();
        f.submit(tx(&f.keys[1], 0, 1, 5)).unwrap();
        assert!(matches!(
            f.submit(tx(&f.keys[2], 0, 1, 1)),
            Err(Refusal::Full { fee: 1, lowest: 1 })
        ));
        let rich = tx(&f.keys[2], 0, 1, 9);
        let a = f.submit(rich).unwrap();
        assert_eq!(a.dropped, vec![(cheap.hash(), Dropped::EvictedFull)]);
        assert_eq!(f.pool.len(), 2);
    }

    #[test]
    fn per_sender_limit_and_expiry() {
        let mut f = fixture(MempoolConfig {
            max_per_sender: 2,
            ttl: Duration::from_secs(10),
            ..MempoolConfig::default()
        });
        f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
        f.submit(tx(&f.keys[0], 1, 1, 1)).unwrap();
        assert!(matches!(
            f.submit(tx(&f.keys[0], 2, 1, 1)),
            Err(Refusal::NonceTooHigh { .. }) | Err(Refusal::SenderLimit(2))
        ));
        assert!(f.pool.expire(f.now + Duration::from_secs(9)).is_empty());
        assert_eq!(f.pool.expire(f.now + Duration::from_secs(10)).len(), 2);
        assert_eq!(f.pool.len(), 0);
        assert_eq!(f.pool.bytes(), 0);
    }

    /// The kept gap always equals the one found by walking the sender's transactions,
    /// through submissions, replacements, expiry and blocks made elsewhere.
    #[test]
    fn kept_gaps_match_walked_gaps() {
        let mut f = fixture(MempoolConfig {
            max_per_sender: 64,
            ttl: Duration::from_secs(20),
            ..MempoolConfig::default()
        });
        let keys: Vec<Keypair> = (1..=2u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 0..600 {
            let k = &keys[(next() % 2) as usize];
            let base = f
                .ledger
                .account(&k.address())
                .unwrap()
                .unwrap_or_default()
                .nonce;
            match next() % 10 {
                0 => {
                    // Another node's block spends the next one or two nonces.
                    let n = 1 + next() % 2;
                    let txs: Vec<SignedTx> = (base..base + n).map(|i| tx(k, i, 1, 0)).collect();
                    f.final_block(txs);
                }
                // Transactions older than 20 steps expire, wherever their nonce is.
                1 => {
                    f.pool.expire(f.now);
                }
                _ => {
                    f.now += Duration::from_secs(1);
                    let nonce = base + next() % 8;
                    let _ = f.submit(tx(k, nonce, 1, 1 + next() % 5));
                }
            }
            for (addr, s) in &f.pool.senders {
                let mut walked = s.base_nonce;
                while s.txs.contains_key(&walked) {
                    walked += 1;
                }
                assert_eq!(s.first_gap(), walked, "step {step}, sender {addr:?}");
                let sum: u128 = s.txs.values().map(|h| cost(&f.pool.entries[h].tx)).sum();
                assert_eq!(s.cost, sum, "step {step}");
            }
        }
    }

    #[test]
    fn promotion_reports_only_what_was_queued() {
        let mut f = fixture(MempoolConfig::default());
        let k = &Keypair::from_seed(&[2; 32]);
        let (t0, t1, t3, t4, t6) = (
            tx(k, 0, 10, 1),
            tx(k, 1, 10, 1),
            tx(k, 3, 10, 1),
            tx(k, 4, 10, 1),
            tx(k, 6, 10, 1),
        );
        for t in [t0, t1, t3, t4, t6] {
            f.submit(t).unwrap();
        }
        // Nonce 2 closes the first gap: 3 and 4 become pending, 6 stays queued.
        let a = f.submit(tx(k, 2, 10, 1)).unwrap();
        assert_eq!(a.state, PoolState::Pending);
        assert_eq!(a.promoted, vec![t3.hash(), t4.hash()]);
        // A replacement of a pending transaction promotes nothing.
        let a = f.submit(tx(k, 1, 10, 5)).unwrap();
        assert_eq!(a.state, PoolState::Pending);
        assert!(a.promoted.is_empty());
        // Another node's block spends nonces 0..=5: 6 becomes pending; nothing that was
        // pending before the block is reported again.
        let other: Vec<SignedTx> = (0..=5).map(|n| tx(k, n, 1, 0)).collect();
        let (dropped, promoted) = f.final_block(other);
        assert_eq!(dropped.len(), 5, "nonces 0..=4 were used by the block");
        assert_eq!(promoted, vec![t6.hash()]);
        assert_eq!(f.pool.counts(), (1, 0));
    }

    #[test]
    fn commit_removes_included_and_drops_what_no_longer_fits() {
        let mut f = fixture(MempoolConfig::default());
        let included = tx(&f.keys[0], 0, 500, 0);
        let later = tx(&f.keys[0], 1, 400, 0);
        // A conflicting spend of the same nonce, final through another node's block.
        let conflicting = tx(&f.keys[0], 0, 900, 0);
        f.submit(included).unwrap();
        f.submit(later).unwrap();
        let (dropped, _) = f.final_block(vec![conflicting]);
        let hashes: Vec<Hash> = dropped.iter().map(|(h, _)| *h).collect();
        assert!(hashes.contains(&included.hash()), "nonce 0 was used");
        assert!(hashes.contains(&later.hash()), "100 left cannot pay 400");
        assert_eq!(f.pool.len(), 0);
    }
}
