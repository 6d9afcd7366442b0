//! Block production for a single-validator chain: a block as soon as transactions are
//! pending, at most one per interval, and none while idle (so an idle node does not grow
//! its disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;

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

/// Completes once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
            let produced = tokio::task::spawn_blocking(move || n.produce_block(max)).await;
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
