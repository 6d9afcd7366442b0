//! Building this node's proposals: when the engine asks for a block, the driver
//! waits for transactions (or the idle time), keeps blocks at least the minimum
//! interval apart ([`paced_at`]), and builds from the mempool on the parent's state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_ledger::Block;
use grapevine_ledger::state::{Execution, Overlay, build_block};

use super::Driver;
use super::check::lock;
use crate::runtime::now_ms;

/// When a child of a block stamped `parent_ms` may be proposed, given a minimum interval
/// `min`, the moment the build was asked for (`since`) and the time now (as an instant
/// and in wall-clock milliseconds): the parent's time plus `min`, but never later than
/// `since` plus `min`, so a parent stamped by a clock ahead of ours cannot stall the
/// round. `since` when `min` is zero.
pub(super) fn paced_at(
    min: Duration,
    parent_ms: u64,
    since: Instant,
    now: Instant,
    now_ms: u64,
) -> Instant {
    if min.is_zero() {
        return since;
    }
    let due_ms = parent_ms.saturating_add(u64::try_from(min.as_millis()).unwrap_or(u64::MAX));
    (now + Duration::from_millis(due_ms.saturating_sub(now_ms))).min(since + min)
}

impl Driver {
    /// Whether a block on `parent` should carry the chain forward now even if empty:
    /// the parent or grandparent holds transactions, which become final only once two
    /// descendants are certified.
    fn ancestors_busy(&self, parent: &Block) -> bool {
        if parent.header.tx_count > 0 {
            return true;
        }
        let grandparent = parent.header.parent_hash;
        if let Some((h, _)) = lock(&self.cache).map.get(&grandparent) {
            return h.tx_count > 0;
        }
        let head = self.ledger.head();
        head.hash() == grandparent && head.tx_count > 0
    }

    /// When the minimum block interval after `parent` is over ([`paced_at`]).
    pub(super) fn paced_at(&self, parent: &Block, since: Instant) -> Instant {
        paced_at(
            self.cfg.min_block_interval,
            parent.header.timestamp_ms,
            since,
            Instant::now(),
            now_ms(),
        )
    }

    /// Builds the block the engine asked for once there is something to put in it, the
    /// chain needs it to finalize earlier transactions, or the idle wait is over.
    pub(super) fn maybe_build(&mut self) {
        let Some((round, parent, since)) = self.build.take() else {
            return;
        };
        if round != self.engine.round() {
            return; // the round moved on
        }
        let ready = self.paced_at(&parent, since) <= Instant::now()
            && (since.elapsed() >= self.cfg.idle_block
                || self.ancestors_busy(&parent)
                || self.node.has_pending());
        if !ready {
            self.build = Some((round, parent, since));
            return;
        }
        let built = tokio::task::block_in_place(|| self.build_block(round, &parent));
        if let Some(block) = built {
            let now = self.now();
            self.engine.handle_block_built(now, block);
        }
    }

    fn build_block(&self, round: u64, parent: &Block) -> Option<Block> {
        let parent_hash = parent.hash();
        let layers = lock(&self.cache).layers(&self.ledger, &parent_hash);
        let Some(layers) = layers else {
            tracing::warn!(%parent_hash, "cannot build on a parent that does not extend the final chain");
            return None;
        };
        let mut next_nonce = HashMap::new();
        for e in &layers {
            for (addr, acct) in &e.accounts {
                next_nonce.insert(*addr, acct.nonce);
            }
        }
        let txs = self.node.select_txs(self.cfg.max_block_txs, &next_nonce);
        let refs: Vec<&Execution> = layers.iter().map(|e| &**e).collect();
        let base = self.node.block_view(&txs);
        let overlay = Overlay::new(&base, &refs);
        let ts = now_ms().max(parent.header.timestamp_ms);
        let chain_id = self.ledger.chain_id();
        match build_block(
            &overlay,
            chain_id,
            &parent.header,
            self.proposer,
            round,
            ts,
            txs.clone(),
        ) {
            Ok((block, exec)) => {
                lock(&self.cache)
                    .map
                    .insert(block.hash(), (block.header, Arc::new(exec)));
                tracing::debug!(
                    round,
                    height = block.header.height,
                    txs = block.txs.len(),
                    "proposing"
                );
                Some(block)
            }
            Err(e) => {
                self.node.unbuildable(&txs, &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_waits_for_the_parent_time_plus_the_interval_but_never_longer_than_the_interval() {
        let min = Duration::from_millis(40);
        let since = Instant::now();
        let now = since + Duration::from_millis(5);
        let now_ms = 1_000_000;
        // No interval: at once.
        assert_eq!(paced_at(Duration::ZERO, now_ms, since, now, now_ms), since);
        // Parent stamped 10 ms ago: 30 ms from now.
        assert_eq!(
            paced_at(min, now_ms - 10, since, now, now_ms),
            now + Duration::from_millis(30)
        );
        // Parent stamped long ago: due already.
        assert!(paced_at(min, now_ms - 1_000, since, now, now_ms) <= now);
        // Parent stamped 30 s ahead of our clock: the interval from `since`, no more.
        assert_eq!(
            paced_at(min, now_ms + 30_000, since, now, now_ms),
            since + min
        );
        // A timestamp at the end of time does not overflow.
        assert_eq!(paced_at(min, u64::MAX, since, now, now_ms), since + min);
    }
}
