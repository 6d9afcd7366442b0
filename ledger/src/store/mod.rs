//! Persistent storage: a small key-value [`Store`] interface with an in-memory and a
//! RocksDB implementation, and [`Ledger`], which keeps the chain in any of them.
//!
//! All ledger logic (what a committed block writes, what reopening checks) lives in
//! [`Ledger`] once, so the in-memory store used by tests behaves exactly like RocksDB.
//! A committed block is one atomic, synced [`WriteBatch`]: a crash leaves either all of
//! it or none of it.

mod ledger;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use ledger::{FORMAT_VERSION, Ledger, StoredBlock};
pub use memory::MemoryStore;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;

use crate::crypto::Hash;

/// The key spaces of the store (RocksDB column families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// Height (u64 big-endian) -> encoded [`StoredBlock`] (block and its certificate).
    Blocks,
    /// Block hash -> height (u64 big-endian).
    BlockHashes,
    /// Transaction hash -> encoded [`crate::state::TxLocation`].
    Txs,
    /// Address -> encoded [`crate::state::Account`].
    Accounts,
    /// Named values: genesis hash, head header, state commitment, format version.
    Meta,
    /// Consensus safety state (last voted round, lock, highest certificate).
    Consensus,
    /// Address || height (u64 BE) -> the final transactions of that block the account
    /// sent or received, in block order: index (u32 BE) || transaction hash, 36 bytes
    /// each.
    AccountTxs,
}

impl Column {
    /// Every column, in a fixed order.
    pub const ALL: [Column; 7] = [
        Column::Blocks,
        Column::BlockHashes,
        Column::Txs,
        Column::Accounts,
        Column::Meta,
        Column::Consensus,
        Column::AccountTxs,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Column::Blocks => "blocks",
            Column::BlockHashes => "block_hashes",
            Column::Txs => "txs",
            Column::Accounts => "accounts",
            Column::Meta => "meta",
            Column::Consensus => "consensus",
            Column::AccountTxs => "account_txs",
        }
    }
}

/// A set of writes applied atomically by [`Store::write`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// (column, key, value); `None` deletes.
    pub ops: Vec<(Column, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// Queues `key = value` in `col`.
    pub fn put(&mut self, col: Column, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((col, key.into(), Some(value.into())));
    }

    /// Queues the removal of `key` from `col`.
    pub fn delete(&mut self, col: Column, key: impl Into<Vec<u8>>) {
        self.ops.push((col, key.into(), None));
    }
}

/// A key-value store with column families and atomic batches.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The value of `key` in `col`, if any.
    fn get(&self, col: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether each of `keys` has a value in `col`, in order. One call for many keys,
    /// which a store may answer more cheaply than key by key.
    fn contains_many(&self, col: Column, keys: &[&[u8]]) -> Result<Vec<bool>, StoreError> {
        keys.iter()
            .map(|k| self.get(col, k).map(|v| v.is_some()))
            .collect()
    }

    /// Applies every operation of `batch` or none. With `sync`, returns only once the
    /// batch is durable (survives a power loss, not just a process crash).
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError>;

    /// Calls `f` for each entry of `col` in key order until it returns `false`.
    fn scan(&self, col: Column, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>;

    /// Calls `f` for each entry of `col` with `lower <= key < upper`, in descending key
    /// order, until it returns `false`.
    fn scan_range_rev(
        &self,
        col: Column,
        lower: &[u8],
        upper: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Makes everything written so far durable, and out of the write-ahead log where
    /// the store has one (used at shutdown and after writing a genesis).
    fn flush(&self) -> Result<(), StoreError>;

    /// Approximate bytes of memory the store holds, by part (for metrics). Empty when
    /// the store does not track it.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A storage failure. Each names what went wrong so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the database at {path}: {reason}")]
    Open {
        /// The data directory.
        path: String,
        /// The database's explanation.
        reason: String,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Db(String),
    /// The data directory belongs to another chain.
    #[error(
        "the data directory was created for genesis {found}, but this node's genesis is {expected}; use another --home or remove the data directory"
    )]
    GenesisMismatch {
        /// This node's genesis hash.
        expected: Hash,
        /// The genesis hash stored in the data directory.
        found: Hash,
    },
    /// The data directory was written in another on-disk format (by another release).
    #[error(
        "the data directory is in data format version {found}, this binary reads version {supported}; move it aside and start with a new one (a node syncs the chain from its peers)"
    )]
    FormatVersion {
        /// The version recorded in the data directory.
        found: u32,
        /// [`FORMAT_VERSION`], the one this binary reads.
        supported: u32,
    },
    /// Stored data is damaged or inconsistent.
    #[error("the data directory is corrupt: {0}")]
    Corrupt(String),
    /// A block was committed that does not extend the head.
    #[error("block {height} with parent {parent} does not extend the head {head_height} ({head})")]
    NotNextBlock {
        /// The block's height.
        height: u64,
        /// The block's parent hash.
        parent: Hash,
        /// The current head height.
        head_height: u64,
        /// The current head hash.
        head: Hash,
    },
    /// The execution result handed to commit does not match the block.
    #[error("execution does not match block {height}: {what}")]
    ExecutionMismatch {
        /// The block's height.
        height: u64,
        /// What differs.
        what: &'static str,
    },
}
