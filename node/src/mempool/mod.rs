//! The transaction pool: admission, ordering for block building, replacement, eviction
//! and expiry.
//!
//! Admission checks run cheapest first: size, decoding, chain id and signature (in
//! [`precheck`], outside the pool's lock), then duplicates (in the pool or already
//! final), nonce, balance and the pool's limits. Each refusal is a
//! distinct [`Refusal`]. A transaction whose nonce is the sender's next (counting the
//! sender's pooled transactions) is *pending*; one after a gap is *queued* until the gap
//! closes. Blocks take pending transactions by fee, each sender's in nonce order.
//!
//! # Layout
//! - this file: [`Mempool`], admission, selection, commits and expiry;
//! - `types`: [`MempoolConfig`], [`Refusal`], [`precheck`], [`PoolState`], [`Dropped`];
//! - `sender`: what the pool keeps per transaction and per sender.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use grapevine_ledger::collections::{FastMap, FastSet};
use grapevine_ledger::state::StateView;
use grapevine_ledger::tx::SIGNED_TX_LEN;
use grapevine_ledger::{Address, Hash, SignedTx};

mod sender;
#[cfg(test)]
mod tests;
mod types;

use sender::{Entry, Sender, cost};
pub use types::{Dropped, MempoolConfig, PoolState, Refusal, precheck};

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
/// ledger read (such reads would take 1.2% of a loaded testnet's CPU).
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
        if tx.tx().fee < self.cfg.min_fee {
            return Err(Refusal::FeeTooLow {
                fee: tx.tx().fee,
                min_fee: self.cfg.min_fee,
            });
        }
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
