//! Views of the ledger for building and checking blocks.

use super::*;

impl Node {
    /// The ledger as a view for building or checking a block of `txs` on the final head:
    /// those of them in the pool are known not to be final without a database read
    /// (each admission looked them up already). Consensus asks "already final?" of
    /// every transaction of every block; on a chain with history that read would be a
    /// few percent of a validator's CPU. The answers are the ledger's own, so every node
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
