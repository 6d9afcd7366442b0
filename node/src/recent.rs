//! Transactions that left the node's view without becoming final (rejected, evicted,
//! expired), remembered for a bounded time and count so `getTransaction` can say why.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use grapevine_ledger::Hash;
use grapevine_ledger::collections::FastMap;
use grapevine_rpc::api::TxInfo;

/// A bounded memory of recent outcomes: at most `capacity` entries, none older than
/// `max_age`. The oldest go first.
#[derive(Debug)]
pub struct RecentOutcomes {
    by_hash: FastMap<Hash, (TxInfo, Instant)>,
    order: VecDeque<(Instant, Hash)>,
    capacity: usize,
    max_age: Duration,
}

impl RecentOutcomes {
    /// An empty memory.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        RecentOutcomes {
            by_hash: FastMap::default(),
            order: VecDeque::new(),
            capacity,
            max_age,
        }
    }

    /// Remembers `info` as the latest outcome of its transaction.
    pub fn record(&mut self, info: TxInfo, now: Instant) {
        self.prune(now);
        let hash = info.hash;
        self.by_hash.insert(hash, (info, now));
        self.order.push_back((now, hash));
        // The queue may hold stale duplicates of re-recorded hashes: bound it too.
        while self.by_hash.len() > self.capacity || self.order.len() > 2 * self.capacity {
            self.pop_oldest();
        }
    }

    /// The remembered outcome, if it is recent enough.
    pub fn get(&self, hash: &Hash, now: Instant) -> Option<TxInfo> {
        let (info, at) = self.by_hash.get(hash)?;
        (now.saturating_duration_since(*at) < self.max_age).then(|| info.clone())
    }

    fn pop_oldest(&mut self) {
        if let Some((at, h)) = self.order.pop_front() {
            // Only remove if this queue entry is the hash's latest record.
            if self.by_hash.get(&h).is_some_and(|(_, t)| *t == at) {
                self.by_hash.remove(&h);
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.max_age {
                break;
            }
            self.pop_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine_rpc::api::TxState;

    fn info(b: u8) -> TxInfo {
        TxInfo {
            hash: Hash([b; 32]),
            state: TxState::Unknown,
            transaction: None,
        }
    }

    #[test]
    fn bounded_by_count_and_age() {
        let t0 = Instant::now();
        let mut r = RecentOutcomes::new(2, Duration::from_secs(60));
        r.record(info(1), t0);
        r.record(info(2), t0);
        r.record(info(3), t0);
        assert!(r.get(&Hash([1; 32]), t0).is_none());
        assert!(r.get(&Hash([3; 32]), t0).is_some());
        assert!(
            r.get(&Hash([3; 32]), t0 + Duration::from_secs(60))
                .is_none()
        );
        r.record(info(4), t0 + Duration::from_secs(61));
        assert_eq!(r.by_hash.len(), 1);
    }
}
