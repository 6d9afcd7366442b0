//! The RocksDB [`Store`].

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    WriteOptions,
};

use super::{Column, Store, StoreError, WriteBatch};

/// A [`Store`] in a RocksDB directory, one column family per [`Column`].
pub struct RocksStore {
    db: DB,
    /// The account state's block cache (kept for [`Store::memory`]).
    account_cache: Cache,
    /// The block cache the other columns share (kept for [`Store::memory`]).
    other_cache: Cache,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksStore({})", self.db.path().display())
    }
}

/// Block cache of the account state (and the small columns read with it).
const BLOCK_CACHE_BYTES: usize = 128 << 20;
/// Block cache the other columns share: blocks, the transaction and history indexes,
/// consensus records.
const OTHER_CACHE_BYTES: usize = 16 << 20;

fn db_err(e: rocksdb::Error) -> StoreError {
    StoreError::Db(e.into_string())
}

impl RocksStore {
    /// Opens (creating if needed) the database in directory `path`. A directory that
    /// holds files but no database (its `CURRENT` file gone) is refused as damaged
    /// rather than silently replaced by a new, empty database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let has_files = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some());
        if has_files && !path.join("CURRENT").exists() {
            return Err(StoreError::Corrupt(format!(
                "{} holds files but no database (its CURRENT file is missing)",
                path.display()
            )));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Checksums of every block read catch a damaged file instead of returning
        // garbage.
        opts.set_paranoid_checks(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_max_open_files(512);
        opts.set_keep_log_file_num(4);
        // One memory budget for the memtables of all column families (each would
        // otherwise take up to 2 x 64 MiB): peak RSS under load stays bounded.
        opts.set_db_write_buffer_size(64 << 20);
        // Account state is read for every transaction (sender and recipient); with
        // millions of accounts a small block cache holds too little of it. Filters and
        // indexes stay out of it: inside it, at 10M accounts they evict data blocks
        // and slow the state part of a block apply by a quarter.
        //
        // The other columns share one small cache. A column without a cache of its own
        // gets a private 32 MiB one from RocksDB: under ten loads of 240,000 transfers
        // in a row, those caches would fill until a testnet's validators pass 550 MB.
        // In the account cache, the other columns' blocks (block bodies and indexes
        // read by RPC and admission) would fill it by about 15 MB per load, while the
        // account blocks in use stay under 1 MB. Block sync reads blocks 8 MiB at a
        // time, which must not evict account state either.
        let account_cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let other_cache = Cache::new_lru_cache(OTHER_CACHE_BYTES);
        let cfs = Column::ALL.iter().map(|c| {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::Lz4);
            let mut table = BlockBasedOptions::default();
            if matches!(c, Column::Txs | Column::Accounts | Column::BlockHashes) {
                // Point lookups, many of absent keys (every admitted transaction asks
                // whether it is already final): Bloom filters in the memtable and the
                // table files answer those without searching. Without them, memtable
                // searches are the top item of a loaded testnet's profile.
                o.set_memtable_prefix_bloom_ratio(0.1);
                o.set_memtable_whole_key_filtering(true);
                table.set_bloom_filter(10.0, false);
                table.set_whole_key_filtering(true);
            }
            if matches!(c, Column::Accounts | Column::BlockHashes | Column::Meta) {
                table.set_block_cache(&account_cache);
            } else {
                table.set_block_cache(&other_cache);
            }
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(c.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.into_string(),
        })?;
        Ok(RocksStore {
            db,
            account_cache,
            other_cache,
        })
    }

    fn cf(&self, col: Column) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(col.name())
            .ok_or_else(|| StoreError::Corrupt(format!("column family {} missing", col.name())))
    }
}

impl Store for RocksStore {
    fn get(&self, col: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(col)?, key).map_err(db_err)
    }

    fn contains_many(&self, col: Column, keys: &[&[u8]]) -> Result<Vec<bool>, StoreError> {
        // RocksDB's batched lookup probes the Bloom filters of the memtables and table
        // files for all keys together, overlapping their cache misses: the "already
        // final?" checks of a block or a relayed batch, nearly all of absent keys, cost
        // a fraction of separate lookups once the column spans several table files.
        self.db
            .batched_multi_get_cf(self.cf(col)?, keys.iter().copied(), false)
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(db_err))
            .collect()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        // Reserved up front: a block's batch is megabytes, and growing it by doubling
        // would copy it several times into freshly faulted pages.
        let bytes: usize = batch
            .ops
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let mut wb = rocksdb::WriteBatch::with_capacity_bytes(bytes + 64);
        // In key order within each column: the memtable's skip list then finds each
        // insert position next to the previous one instead of searching from the top
        // (a block's index keys are hashes, in random order). The sort is stable, so
        // writes of one key keep their order and the last still wins.
        let mut ops: Vec<_> = batch.ops.iter().collect();
        ops.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (col, key, value) in ops {
            let cf = self.cf(*col)?;
            match value {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(db_err)
    }

    fn scan(&self, col: Column, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.db.iterator_cf(self.cf(col)?, IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            if !f(&k, &v) {
                break;
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
        let mode = IteratorMode::From(upper, rocksdb::Direction::Reverse);
        for item in self.db.iterator_cf(self.cf(col)?, mode) {
            let (k, v) = item.map_err(db_err)?;
            if &*k >= upper {
                continue; // seeking backwards lands on `upper` itself when it exists
            }
            if &*k < lower || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn memory(&self) -> Vec<(&'static str, u64)> {
        let mut parts = vec![
            ("account_cache", self.account_cache.get_usage() as u64),
            ("other_cache", self.other_cache.get_usage() as u64),
        ];
        if let Ok(m) = rocksdb::perf::get_memory_usage_stats(Some(&[&self.db]), None) {
            parts.push(("memtables", m.mem_table_total));
            parts.push(("table_readers", m.mem_table_readers_total));
        }
        parts
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(db_err)?;
        // Writing the memtables out spares the next start a replay of the log.
        for col in Column::ALL {
            self.db.flush_cf(self.cf(col)?).map_err(db_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_lookups_agree_with_single_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        for i in 0..50u8 {
            b.put(Column::Txs, [i; 32], [i]);
        }
        store.write(b, true).unwrap();
        // Half in a table file, half in the memtable.
        store.flush().unwrap();
        let mut b = WriteBatch::default();
        for i in 50..100u8 {
            b.put(Column::Txs, [i; 32], [i]);
        }
        store.write(b, true).unwrap();
        // Absent and present keys, out of order, one of them twice.
        let mut keys: Vec<[u8; 32]> = (0..200u8).rev().map(|i| [i; 32]).collect();
        keys.push([7; 32]);
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let single: Vec<bool> = refs
            .iter()
            .map(|k| store.get(Column::Txs, k).unwrap().is_some())
            .collect();
        assert_eq!(store.contains_many(Column::Txs, &refs).unwrap(), single);
        assert_eq!(single.iter().filter(|f| **f).count(), 101);
        assert_eq!(
            store.contains_many(Column::Txs, &[]).unwrap(),
            Vec::<bool>::new()
        );
    }

    #[test]
    fn reads_of_other_columns_stay_out_of_the_account_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let part = |name: &str| {
            store
                .memory()
                .into_iter()
                .find(|(p, _)| *p == name)
                .map(|(_, bytes)| bytes)
                .unwrap()
        };
        // 24 MiB of block bodies, more than the small cache holds, then 1 MiB of
        // accounts, all written out to table files.
        let body = vec![7u8; 4096];
        for chunk in 0..6u32 {
            let mut b = WriteBatch::default();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                b.put(Column::Blocks, i.to_be_bytes(), body.clone());
            }
            store.write(b, false).unwrap();
        }
        let mut b = WriteBatch::default();
        for i in 0..256u32 {
            b.put(Column::Accounts, i.to_be_bytes(), body.clone());
        }
        store.write(b, false).unwrap();
        store.flush().unwrap();

        let read_all = |col: Column, n: u32| {
            (0..n).all(|i| store.get(col, &i.to_be_bytes()).unwrap().is_some())
        };
        assert!(read_all(Column::Blocks, 6000));
        let other = part("other_cache");
        assert!(other > 8 << 20, "block reads cached: {other}");
        assert!(other <= OTHER_CACHE_BYTES as u64, "bounded: {other}");
        assert!(part("account_cache") < 1 << 20, "{}", part("account_cache"));

        assert!(read_all(Column::Accounts, 256));
        assert!(
            part("account_cache") >= 1 << 20,
            "{}",
            part("account_cache")
        );
        assert!(part("memtables") > 0 && part("table_readers") > 0);
    }

    #[test]
    fn writes_of_one_key_in_a_batch_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put(Column::Txs, [9u8; 4], [1u8]);
        b.put(Column::Meta, [0u8], [1u8]);
        b.put(Column::Txs, [1u8; 4], [1u8]);
        b.delete(Column::Txs, [9u8; 4]);
        b.put(Column::Txs, [9u8; 4], [2u8]);
        b.put(Column::Txs, [1u8; 4], [3u8]);
        b.delete(Column::Txs, [1u8; 4]);
        b.put(Column::Meta, [0u8], [4u8]);
        // Enough writes of one key, among others, that an unstable sort would reorder.
        for i in 0..64u8 {
            b.put(Column::Txs, [5u8; 4], [i]);
            b.put(Column::Txs, [i.wrapping_mul(37); 3], [i]);
        }
        store.write(b, true).unwrap();
        assert_eq!(store.get(Column::Txs, &[5u8; 4]).unwrap(), Some(vec![63]));
        assert_eq!(store.get(Column::Txs, &[9u8; 4]).unwrap(), Some(vec![2]));
        assert_eq!(store.get(Column::Txs, &[1u8; 4]).unwrap(), None);
        assert_eq!(store.get(Column::Meta, &[0u8]).unwrap(), Some(vec![4]));
    }
}
