//! The index of the proposals kept on disk above the final height: what a restarted
//! node feeds back to consensus, and what the sync server answers block requests
//! from.
//!
//! Consensus keeps a proposal only once its block checked valid, and takes at most
//! [`MAX_PROPOSALS_PER_ROUND`](grapevine_consensus::engine::MAX_PROPOSALS_PER_ROUND) per
//! round (plus blocks it asked for), so a Byzantine leader adds at most that many per
//! round it leads. The index bounds the total as well: at most [`MAX_KEPT`] proposals
//! and [`MAX_KEPT_BYTES`] encoded bytes; past either, a proposal is not kept (a
//! restarted node then asks peers for it, as for any block it missed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use grapevine_ledger::Hash;

/// Prefix of kept proposals' keys: prefix || height (BE) || block hash.
pub const PROPOSAL_PREFIX: &[u8] = b"proposal/";

/// Most proposals kept above the final height.
pub const MAX_KEPT: usize = 1024;

/// Most encoded bytes of proposals kept above the final height.
pub const MAX_KEPT_BYTES: u64 = 512 * 1024 * 1024;

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

    /// Records a proposal of `bytes` encoded bytes as kept, if the bounds allow;
    /// `false`: it must not be written.
    pub fn admit(&mut self, height: u64, hash: Hash, bytes: u64) -> bool {
        if self.by_hash.contains_key(&hash) {
            return true;
        }
        if self.by_hash.len() >= MAX_KEPT || self.bytes.saturating_add(bytes) > MAX_KEPT_BYTES {
            return false;
        }
        self.by_hash.insert(hash, (height, bytes));
        self.by_height.entry(height).or_default().push(hash);
        self.bytes += bytes;
        true
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
    fn the_index_refuses_past_its_bounds_and_frees_what_finality_prunes() {
        let mut k = KeptIndex::default();
        for i in 0..MAX_KEPT as u32 {
            assert!(k.admit(10 + u64::from(i), h(i), 100));
        }
        assert!(!k.admit(5_000, h(1 << 20), 100), "count bound");
        assert_eq!(k.len(), MAX_KEPT);
        let keys = k.prune(10 + MAX_KEPT as u64 / 2 - 1);
        assert_eq!(keys.len(), MAX_KEPT / 2);
        assert_eq!(k.len(), MAX_KEPT / 2);
        assert_eq!(k.bytes(), 100 * (MAX_KEPT as u64 / 2));
        assert!(k.admit(5_000, h(1 << 20), 100));

        let mut k = KeptIndex::default();
        assert!(k.admit(1, h(1), MAX_KEPT_BYTES - 10));
        assert!(!k.admit(2, h(2), 11), "byte bound");
        assert!(k.admit(2, h(3), 10));
        assert_eq!(k.key_of(&h(3)), Some(proposal_key(2, &h(3))));
        assert!(k.admit(2, h(3), 10), "keeping again is a no-op");
        assert_eq!(k.bytes(), MAX_KEPT_BYTES);
    }
}
