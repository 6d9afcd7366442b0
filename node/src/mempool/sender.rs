//! What the pool keeps per transaction and per sender.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) tx: SignedTx,
    pub(super) inserted: Instant,
    pub(super) seq: u64,
    /// When it was last announced to peers (first: at admission).
    pub(super) announced: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Sender {
    /// The sender's next nonce in the ledger. Changed only through [`Sender::set_base`].
    pub(super) base_nonce: u64,
    /// The sender's balance in the ledger.
    pub(super) balance: u64,
    /// `base_nonce` and `balance` were read from the ledger and every block since has
    /// been through [`Mempool::on_commit`] (false after a failed read there).
    pub(super) synced: bool,
    /// Pooled transactions by nonce. Changed only through [`Sender::insert`] and
    /// [`Sender::remove`], which keep `gap` and `cost`.
    pub(super) txs: BTreeMap<u64, Hash>,
    /// Sum of amount + fee over `txs`, so admission's balance check does not walk them.
    pub(super) cost: u128,
    /// The first nonce from `base_nonce` on that is not pooled. Kept up to date rather
    /// than found by walking `txs`: with deep per-sender queues under load, the walks
    /// would be a top item of the profile.
    pub(super) gap: u64,
}

impl Sender {
    /// The first nonce from `base_nonce` on that is not pooled.
    pub(super) fn first_gap(&self) -> u64 {
        self.gap
    }

    pub(super) fn advance_gap(&mut self) {
        while self.txs.contains_key(&self.gap) {
            self.gap += 1;
        }
    }

    /// The ledger's next nonce for this sender.
    pub(super) fn set_base(&mut self, base: u64) {
        if base < self.base_nonce || self.gap < base {
            self.gap = base;
        }
        self.base_nonce = base;
        self.advance_gap();
    }

    pub(super) fn insert(&mut self, nonce: u64, hash: Hash, cost: u128) {
        if self.txs.insert(nonce, hash).is_none() {
            self.cost += cost;
        }
        if nonce == self.gap {
            self.advance_gap();
        }
    }

    pub(super) fn remove(&mut self, nonce: u64, cost: u128) {
        if self.txs.remove(&nonce).is_some() {
            self.cost -= cost;
            if nonce >= self.base_nonce && nonce < self.gap {
                self.gap = nonce;
            }
        }
    }

    /// Hashes of the pooled transactions with nonces in `range`.
    pub(super) fn hashes_in(&self, range: std::ops::Range<u64>) -> Vec<Hash> {
        if range.start >= range.end {
            return Vec::new();
        }
        self.txs.range(range).map(|(_, h)| *h).collect()
    }
}

/// What a transfer can take from its sender's balance.
pub(super) fn cost(tx: &SignedTx) -> u128 {
    u128::from(tx.tx().amount) + u128::from(tx.tx().fee)
}
