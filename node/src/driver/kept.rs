//! The index of the proposals kept on disk above the final height: what a restarted
//! node feeds back to consensus, and what the sync server answers block requests
//! from.
//!
//! Consensus keeps a proposal only once its block checked valid (or built it itself),
//! and takes at most
//! [`MAX_PROPOSALS_PER_ROUND`](grapevine_consensus::engine::MAX_PROPOSALS_PER_ROUND) per
//! round still in use (plus blocks it asked for), so a Byzantine leader adds at most that
//! many per round it leads. The index bounds the total as well: at most [`MAX_KEPT`]
//! proposals and [`MAX_KEPT_BYTES`] encoded bytes; past either, the lowest proposals go
//! first (the newest are the ones a restarted node's certificates point to). Proposals
//! stay [`KEPT_BELOW_FINAL`] heights below the final one, so that peers that missed a
//! block just made final can still ask for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use grapevine_ledger::Hash;

/// Prefix of kept proposals' keys: prefix || height (BE) || block hash.
pub const PROPOSAL_PREFIX: &[u8] = b"proposal/";

/// Most proposals kept above the final height.
pub const MAX_KEPT: usize = 1024;

/// Most encoded bytes of proposals kept above the final height.
pub const MAX_KEPT_BYTES: u64 = 512 * 1024 * 1024;

/// Heights below the final one whose proposals are still kept (the engine holds its
/// blocks that far back too).
pub const KEPT_BELOW_FINAL: u64 = 64;

/// The database key of the kept proposal of block `hash` at `height`.
pub fn proposal_key(height: u64, hash: &Hash) -> Vec<u8> {
    [PROPOSAL_PREFIX, &height.to_be_bytes(), &hash.0].concat()
}

/// Which proposals are kept, by height and by block hash, with their sizes.
#[derive(Debug, Default)]
pub struct KeptIndex {
    by_height: BTreeMap<u64, Vec<Hash>>,
    by_hash: HashMap<Hash, (u64, u64)>,
    bytes: u64,
}

/// The index, shared by the driver (which writes) and the sync server (which reads).
pub type SharedKept = Arc<Mutex<KeptIndex>>;

/// Locks the shared index (a panic elsewhere while holding it leaves it usable: every
/// update is a single insert or removal).
pub fn lock(kept: &SharedKept) -> MutexGuard<'_, KeptIndex> {
    kept.lock().unwrap_or_else(|e| e.into_inner())
}

impl KeptIndex {
    /// Whether block `hash`'s proposal is kept.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The database key of block `hash`'s kept proposal, if kept.
    pub fn key_of(&self, hash: &Hash) -> Option<Vec<u8>> {
        self.by_hash
            .get(hash)
            .map(|(height, _)| proposal_key(*height, hash))
    }

    /// Records a proposal of `bytes` encoded bytes as kept (already written); returns
    /// the database keys of the lowest proposals it pushed past the bounds, which the
    /// caller deletes.
    pub fn insert(&mut self, height: u64, hash: Hash, bytes: u64) -> Vec<Vec<u8>> {
        if self.by_hash.contains_key(&hash) {
            return Vec::new();
        }
        self.by_hash.insert(hash, (height, bytes));
        self.by_height.entry(height).or_default().push(hash);
        self.bytes += bytes;
        let mut evicted = Vec::new();
        while self.by_hash.len() > MAX_KEPT || self.bytes > MAX_KEPT_BYTES {
            let Some(mut lowest) = self.by_height.first_entry() else {
                break;
            };
            let h = *lowest.key();
            let Some(gone) = lowest.get_mut().pop() else {
                lowest.remove();
                continue;
            };
            if lowest.get().is_empty() {
                lowest.remove();
            }
            if let Some((_, b)) = self.by_hash.remove(&gone) {
                self.bytes -= b;
            }
            evicted.push(proposal_key(h, &gone));
        }
        evicted
    }

    /// Forgets the proposals at or below `final_height`; returns their database keys.
    pub fn prune(&mut self, final_height: u64) -> Vec<Vec<u8>> {
        let above = self.by_height.split_off(&final_height.saturating_add(1));
        let stale = std::mem::replace(&mut self.by_height, above);
        let mut keys = Vec::new();
        for (height, hashes) in stale {
            for hash in hashes {
                if let Some((_, bytes)) = self.by_hash.remove(&hash) {
                    self.bytes -= bytes;
                }
                keys.push(proposal_key(height, &hash));
            }
        }
        keys
    }

    /// Proposals kept.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Their encoded bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_le_bytes());
        Hash(b)
    }

    #[test]
    fn the_index_evicts_the_lowest_past_its_bounds_and_frees_what_finality_prunes() {
        let mut k = KeptIndex::default();
        for i in 0..MAX_KEPT as u32 {
            assert!(k.insert(10 + u64::from(i), h(i), 100).is_empty());
        }
        let evicted = k.insert(5_000, h(1 << 20), 100);
        assert_eq!(evicted, vec![proposal_key(10, &h(0))], "the lowest goes");
        assert_eq!(k.len(), MAX_KEPT);
        assert!(k.contains(&h(1 << 20)) && !k.contains(&h(0)));
        let keys = k.prune(10 + MAX_KEPT as u64 / 2);
        assert_eq!(keys.len(), MAX_KEPT / 2);
        assert_eq!(k.len(), MAX_KEPT / 2);
        assert_eq!(k.bytes(), 100 * (MAX_KEPT as u64 / 2));

        let mut k = KeptIndex::default();
        assert!(k.insert(1, h(1), MAX_KEPT_BYTES - 10).is_empty());
        assert_eq!(
            k.insert(2, h(2), 11),
            vec![proposal_key(1, &h(1))],
            "byte bound"
        );
        assert!(k.insert(2, h(3), 10).is_empty());
        assert_eq!(k.key_of(&h(3)), Some(proposal_key(2, &h(3))));
        assert!(k.insert(2, h(3), 10).is_empty(), "keeping again is a no-op");
        assert_eq!(k.bytes(), 21);
    }
}
