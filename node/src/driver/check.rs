//! Checking proposed blocks, the engine's [`Action::CheckBlock`]: a block is executed
//! on its parent's state (the ledger plus the executions of unfinalized ancestors,
//! kept in [`ExecCache`]) and its time is checked.
//!
//! [`Action::CheckBlock`]: crate::consensus::engine::Action::CheckBlock

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use grapevine_ledger::state::{Execution, Overlay, validate_block};
use grapevine_ledger::{Block, BlockHeader, Hash, Ledger};

use crate::node::Node;
use crate::runtime::now_ms;

/// A block whose timestamp is further ahead of this node's clock is refused.
const MAX_CLOCK_AHEAD_MS: u64 = 30_000;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Executions of checked blocks that are not final yet, by block hash.
#[derive(Default)]
pub(super) struct ExecCache {
    pub(super) map: HashMap<Hash, (BlockHeader, Arc<Execution>)>,
}

impl ExecCache {
    /// Executions from the ledger's head (exclusive) to `tip` (inclusive), oldest
    /// first; `None` if `tip` does not descend from the head through known blocks.
    pub(super) fn layers(&self, ledger: &Ledger, tip: &Hash) -> Option<Vec<Arc<Execution>>> {
        let head = ledger.head().hash();
        let mut out = Vec::new();
        let mut cur = *tip;
        while cur != head {
            let (header, exec) = self.map.get(&cur)?;
            out.push(exec.clone());
            cur = header.parent_hash;
        }
        out.reverse();
        Some(out)
    }

    /// Forgets blocks at or below a final height (final ones and dead forks).
    pub(super) fn prune(&mut self, final_height: u64) {
        self.map.retain(|_, (h, _)| h.height > final_height);
    }
}

/// The block validity check the engine asks for: the block executes correctly on its
/// parent's state (the ledger plus the unfinalized ancestors) and its time is sane.
pub(super) struct LedgerCheck {
    pub(super) node: Arc<Node>,
    pub(super) cache: Arc<Mutex<ExecCache>>,
}

impl LedgerCheck {
    /// Whether `block` is a valid child of `parent`; a valid one's execution is kept in
    /// the cache (to check its children, build on it, and commit it). Reads the
    /// database: not on an async worker without `block_in_place`.
    pub(super) fn check(&self, block: &Block, parent: &Block) -> bool {
        let hash = block.hash();
        let mut cache = lock(&self.cache);
        if cache.map.contains_key(&hash) {
            return true;
        }
        let ts = block.header.timestamp_ms;
        if ts < parent.header.timestamp_ms || ts > now_ms().saturating_add(MAX_CLOCK_AHEAD_MS) {
            tracing::warn!(height = block.header.height, %hash, "refusing a block whose time is before its parent's or too far ahead");
            return false;
        }
        let ledger = self.node.ledger();
        let Some(layers) = cache.layers(ledger, &parent.hash()) else {
            tracing::debug!(%hash, "cannot check a block whose parent does not extend the final chain");
            return false;
        };
        let refs: Vec<&Execution> = layers.iter().map(|e| &**e).collect();
        let base = self.node.block_view(&block.txs);
        let overlay = Overlay::new(&base, &refs);
        match validate_block(&overlay, ledger.chain_id(), &parent.header, block) {
            Ok(exec) => {
                cache.map.insert(hash, (block.header, Arc::new(exec)));
                true
            }
            Err(e) => {
                tracing::warn!(height = block.header.height, %hash, error = %e, "refusing an invalid proposed block");
                false
            }
        }
    }
}
