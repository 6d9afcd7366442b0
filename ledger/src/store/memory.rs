//! An in-memory [`Store`] for tests and ephemeral nodes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Column, Store, StoreError, WriteBatch};

type Tables = BTreeMap<Column, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`Store`] held in memory: atomic like RocksDB, gone when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StoreError> {
        self.tables
            .lock()
            .map_err(|_| StoreError::Db("memory store lock poisoned by a panic".into()))
    }
}

impl Store for MemoryStore {
    fn get(&self, col: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&col).and_then(|t| t.get(key)).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), StoreError> {
        let mut tables = self.lock()?;
        for (col, key, value) in batch.ops {
            let t = tables.entry(col).or_default();
            match value {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
        Ok(())
    }

    fn scan(&self, col: Column, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        let tables = self.lock()?;
        if let Some(t) = tables.get(&col) {
            for (k, v) in t {
                if !f(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn scan_range_rev(
        &self,
        col: Column,
        lower: &[u8],
        upper: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let tables = self.lock()?;
        if let Some(t) = tables.get(&col) {
            for (k, v) in t.range(lower.to_vec()..upper.to_vec()).rev() {
                if !f(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
