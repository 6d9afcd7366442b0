//! Block production for a single-validator chain: a block as soon as transactions are
//! pending, at most one per interval, and none while idle (so an idle node does not grow
//! its disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use grapevine_ledger::state::{BlockError, build_block};

use crate::node::Node;
use crate::runtime::stopped;

/// How often the mempool is swept for expired transactions.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Block production settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Least time between two blocks.
    pub interval: Duration,
    /// Most transactions in a block.
    pub max_block_txs: usize,
}

/// Produces blocks until `stop` turns true; a block being written when it does is
/// finished first.
pub async fn run(node: Arc<Node>, cfg: Config, mut stop: watch::Receiver<bool>) {
    let mut last_block = Instant::now() - cfg.interval;
    loop {
        tokio::select! {
            () = node.new_work.notified() => {}
            () = tokio::time::sleep(EXPIRY_SWEEP) => {
                let n = node.clone();
                let _ = tokio::task::spawn_blocking(move || n.expire()).await;
                continue;
            }
            () = stopped(&mut stop) => return,
        }
        // Keep producing while anything is pending.
        loop {
            let wait = cfg.interval.saturating_sub(last_block.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped(&mut stop) => return,
                }
            }
            let n = node.clone();
            let max = cfg.max_block_txs;
            // Execution and the synced write are blocking work.
            let produced = tokio::task::spawn_blocking(move || produce_block(&n, max)).await;
            last_block = Instant::now();
            match produced {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "block production failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "block production task panicked");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// Takes up to `max_txs` pending transactions, executes them into a block on top of
/// the head, commits it durably, and publishes the results. Returns the number of
/// transactions included (0: nothing to do). For a single-validator dev chain, whose
/// blocks are final when written.
pub fn produce_block(node: &Node, max_txs: usize) -> Result<usize, BlockError> {
    let txs = node.select_pending(max_txs);
    if txs.is_empty() {
        return Ok(0);
    }
    let ledger = node.ledger();
    let head = ledger.head();
    let view = node.block_view(&txs);
    let built = build_block(
        &view,
        ledger.chain_id(),
        &head,
        node.proposer(),
        0,
        crate::runtime::now_ms().max(head.timestamp_ms),
        txs.clone(),
    );
    let (block, exec) = match built {
        Ok(b) => b,
        Err(e) => {
            node.unbuildable(&txs, &e);
            return Err(e);
        }
    };
    if let Err(e) = node.commit_block(&block, &[], &exec, true) {
        node.release_selected();
        return Err(e.into());
    }
    Ok(block.txs.len())
}
