//! Maps for the hot paths, keyed by [`Hash`]es and [`Address`]es.
//!
//! Those keys are SHA-256 digests and public keys: an attacker can only pick them by
//! grinding, and each map gets its own random seed. The standard library's SipHash
//! (made to resist chosen keys) would cost several percent of a loaded node's CPU;
//! foldhash, the hasher of `hashbrown`, with per-map random seeds, is several times
//! faster.
//!
//! [`Address`]: crate::Address

use std::collections::{HashMap, HashSet};

use crate::Hash;

/// Hasher builder of [`FastMap`] and [`FastSet`]: randomly seeded per map.
pub type FastState = foldhash::fast::RandomState;
/// A `HashMap` with [`FastState`]; make one with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, FastState>;
/// A `HashSet` with [`FastState`]; make one with `FastSet::default()`.
pub type FastSet<K> = HashSet<K, FastState>;

/// A bounded memory of recent entries by hash, in two generations: when the current
/// generation holds `capacity` entries it becomes the previous one and the old previous
/// one is forgotten. Lookups see both, so an entry is kept for at least `capacity`
/// later insertions. Each generation's table is allocated for `capacity` entries when
/// it starts and reused when forgotten, so no insertion rehashes: growing by doubling
/// would copy every entry again and again on a node's busiest path. The allocation is
/// reserved, not touched (beyond one control byte per slot), so an idle node's memory
/// does not hold full tables.
#[derive(Debug)]
pub struct RecentMap<V> {
    current: FastMap<Hash, V>,
    previous: FastMap<Hash, V>,
    capacity: usize,
}

impl<V> RecentMap<V> {
    /// An empty memory whose generations hold `capacity` entries each (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecentMap {
            current: FastMap::with_capacity_and_hasher(capacity, Default::default()),
            previous: FastMap::default(),
            capacity,
        }
    }

    /// Whether `hash` is remembered.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.current.contains_key(hash) || self.previous.contains_key(hash)
    }

    /// The value remembered for `hash`.
    pub fn get(&self, hash: &Hash) -> Option<&V> {
        self.current.get(hash).or_else(|| self.previous.get(hash))
    }

    /// The value remembered for `hash`, to change it in place.
    pub fn get_mut(&mut self, hash: &Hash) -> Option<&mut V> {
        match self.current.get_mut(hash) {
            Some(v) => Some(v),
            None => self.previous.get_mut(hash),
        }
    }

    /// Remembers `value` for `hash` unless `hash` is already remembered; returns whether
    /// it was new (an entry already remembered keeps its value).
    pub fn insert(&mut self, hash: Hash, value: V) -> bool {
        if self.previous.contains_key(&hash) {
            return false;
        }
        if self.current.len() >= self.capacity {
            if self.current.contains_key(&hash) {
                return false;
            }
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            // Only the first turnover allocates: afterwards both tables are full size.
            self.current.reserve(self.capacity);
        }
        // One probe of the current table both checks and inserts (these tables are
        // far larger than the CPU caches, so each probe is a memory access).
        match self.current.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(value);
                true
            }
        }
    }

    /// Number of entries remembered (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (the tables' memory is kept).
    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }
}

/// A [`RecentMap`] of hashes alone.
pub type RecentSet = RecentMap<()>;

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        crate::crypto::sha256(&[&i.to_le_bytes()])
    }

    #[test]
    fn keeps_at_least_one_generation_and_forgets_the_oldest() {
        let mut m = RecentMap::new(3);
        for i in 0..3 {
            assert!(m.insert(h(i), i));
        }
        assert!(!m.insert(h(1), 99), "a remembered hash is not new");
        assert_eq!(m.get(&h(1)), Some(&1), "and keeps its first value");
        // The fourth insertion turns the generation over: 0..3 are the previous one.
        assert!(m.insert(h(3), 3));
        assert!((0..4).all(|i| m.contains(&h(i))));
        assert!(!m.insert(h(0), 9), "nor is one of the previous generation");
        assert!(!m.insert(h(3), 9), "nor one of the current generation");
        for i in 4..6 {
            m.insert(h(i), i);
        }
        // 6 turns over again: 0..3 are forgotten, 3..6 kept, 6 current.
        assert!(m.insert(h(6), 6));
        assert!((0..3).all(|i| !m.contains(&h(i))));
        assert!((3..7).all(|i| m.get(&h(i)) == Some(&i)));
        assert_eq!(m.len(), 4);
        m.clear();
        assert!(m.is_empty() && !m.contains(&h(6)));
    }
}
