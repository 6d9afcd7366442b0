//! [`Ledger`]: the chain kept in a [`Store`].

use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::{Column, Store, StoreError, WriteBatch};
use crate::block::{Block, BlockHeader, MAX_BLOCK_BYTES};
use crate::codec;
use crate::collections::FastMap;
use crate::crypto::{Address, Hash};
use crate::genesis::Genesis;
use crate::state::{Account, Execution, LtHash, StateView, TxLocation};
use crate::tx::SignedTx;

const META_FORMAT: &[u8] = b"format_version";
const META_GENESIS: &[u8] = b"genesis_hash";
const META_HEAD: &[u8] = b"head";
const META_STATE: &[u8] = b"state";

/// Version of the on-disk layout; a node refuses a data directory of another version.
/// 3: the account history holds one entry per account and block (docs/DECISIONS.md).
pub const FORMAT_VERSION: u32 = 3;

/// A consensus record: (key, value).
pub type ConsensusRecord = (Vec<u8>, Vec<u8>);

/// A final block as stored: the block and the certificate that proves its finality.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    /// The block.
    pub block: Block,
    /// The encoded finality certificate (empty for the genesis block and for a
    /// single-validator dev chain, whose blocks are final when written).
    pub certificate: Vec<u8>,
}

/// The chain: final blocks, the transaction index, accounts and consensus state, kept in
/// a [`Store`]. Readers may run concurrently with one writer.
#[derive(Debug)]
pub struct Ledger {
    store: Box<dyn Store>,
    genesis_hash: Hash,
    chain_id: u32,
    tip: RwLock<Tip>,
    /// Serializes commits: each one checks and extends the head it read.
    commit_lock: Mutex<()>,
}

#[derive(Debug, Clone)]
struct Tip {
    head: BlockHeader,
    state: LtHash,
}

/// Key of the account history: address || height (BE), so one account's entries sort
/// in chain order.
fn account_tx_key(addr: &Address, height: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&addr.0);
    k.extend_from_slice(&height.to_be_bytes());
    k
}

/// One record of an account history entry: the transaction's index in its block (u32
/// BE) and its hash.
const ACCOUNT_TX_RECORD: usize = 36;

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

impl Ledger {
    /// Opens the ledger in `store` for `genesis`. An empty store is initialized with the
    /// genesis block. A store made for another genesis, of another format version, or
    /// whose head and state disagree is refused with an error saying so.
    pub fn open(store: Box<dyn Store>, genesis: &Genesis) -> Result<Ledger, StoreError> {
        let genesis_hash = genesis.hash();
        match store.get(Column::Meta, META_GENESIS)? {
            None => {
                Self::initialize(&*store, genesis)?;
                // The genesis state, possibly millions of accounts, is otherwise one
                // giant memtable until a background flush gets to it: every account
                // read meanwhile searches its skip list (at 10M accounts, a third of a
                // block apply's state part goes there), and a restart replays it from
                // the log.
                store.flush()?;
            }
            Some(found) => {
                let found = Hash(
                    found
                        .try_into()
                        .map_err(|_| corrupt("stored genesis hash is not 32 bytes"))?,
                );
                if found != genesis_hash {
                    return Err(StoreError::GenesisMismatch {
                        expected: genesis_hash,
                        found,
                    });
                }
            }
        }
        let version = store
            .get(Column::Meta, META_FORMAT)?
            .ok_or_else(|| corrupt("format version missing"))?;
        let version = <[u8; 4]>::try_from(version.as_slice())
            .map(u32::from_le_bytes)
            .map_err(|_| corrupt("format version record is not 4 bytes"))?;
        if version != FORMAT_VERSION {
            return Err(StoreError::FormatVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let head_bytes = store
            .get(Column::Meta, META_HEAD)?
            .ok_or_else(|| corrupt("head record missing"))?;
        let head: BlockHeader = codec::decode(&head_bytes, 1024)
            .map_err(|e| corrupt(format!("head record unreadable: {e}")))?;
        let state_bytes = store
            .get(Column::Meta, META_STATE)?
            .ok_or_else(|| corrupt("state commitment missing"))?;
        let state = LtHash::from_bytes(&state_bytes)
            .ok_or_else(|| corrupt("state commitment has the wrong length"))?;
        if state.root() != head.state_root {
            return Err(corrupt(format!(
                "state commitment {} does not match head block {}'s state root {}",
                state.root(),
                head.height,
                head.state_root
            )));
        }
        let ledger = Ledger {
            store,
            genesis_hash,
            chain_id: genesis.chain_id,
            tip: RwLock::new(Tip { head, state }),
            commit_lock: Mutex::new(()),
        };
        let stored = ledger
            .block(head.height)?
            .ok_or_else(|| corrupt(format!("head block {} missing", head.height)))?;
        if stored.block.header != head {
            return Err(corrupt(format!(
                "block {} differs from the head record",
                head.height
            )));
        }
        Ok(ledger)
    }

    fn initialize(store: &dyn Store, genesis: &Genesis) -> Result<(), StoreError> {
        let state = genesis.initial_state();
        let header = genesis.block_header(state.root());
        let block = Block {
            header,
            txs: vec![],
        };
        let mut b = WriteBatch::default();
        for (addr, acct) in genesis.initial_accounts() {
            b.put(Column::Accounts, addr.0, codec::encode(&acct));
        }
        Self::put_block(&mut b, &block, &[]);
        b.put(Column::Meta, META_STATE, state.to_bytes());
        b.put(Column::Meta, META_HEAD, codec::encode(&header));
        b.put(Column::Meta, META_FORMAT, FORMAT_VERSION.to_le_bytes());
        // In the same atomic batch as the rest: its presence means the rest is there.
        b.put(Column::Meta, META_GENESIS, genesis.hash().0);
        store.write(b, true)
    }

    fn put_block(b: &mut WriteBatch, block: &Block, certificate: &[u8]) {
        let height = block.header.height.to_be_bytes();
        let stored = StoredBlock {
            block: block.clone(),
            certificate: certificate.to_vec(),
        };
        b.put(Column::Blocks, height, codec::encode(&stored));
        b.put(Column::BlockHashes, block.hash().0, height);
    }

    /// The genesis hash this ledger was opened for.
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    /// Approximate bytes of memory the storage holds, by part (empty if it does not
    /// track it).
    pub fn store_memory(&self) -> Vec<(&'static str, u64)> {
        self.store.memory()
    }

    /// The chain id from genesis.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// Header of the latest final block.
    pub fn head(&self) -> BlockHeader {
        self.tip
            .read()
            .map(|t| t.head)
            .unwrap_or_else(|p| p.into_inner().head)
    }

    /// The final block at `height` with its certificate.
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, StoreError> {
        let Some(bytes) = self.store.get(Column::Blocks, &height.to_be_bytes())? else {
            return Ok(None);
        };
        let stored: StoredBlock = codec::decode(&bytes, MAX_BLOCK_BYTES + 1024 * 1024)
            .map_err(|e| corrupt(format!("block {height} unreadable: {e}")))?;
        if stored.block.header.height != height {
            return Err(corrupt(format!(
                "block stored at height {height} says otherwise"
            )));
        }
        Ok(Some(stored))
    }

    /// Height of the final block with this hash.
    pub fn height_of(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        let Some(v) = self.store.get(Column::BlockHashes, &hash.0)? else {
            return Ok(None);
        };
        let h: [u8; 8] = v
            .try_into()
            .map_err(|_| corrupt("block hash index entry is not 8 bytes"))?;
        Ok(Some(u64::from_be_bytes(h)))
    }

    /// Where a final transaction is, and its receipt.
    pub fn tx_location(&self, hash: &Hash) -> Result<Option<TxLocation>, StoreError> {
        let Some(v) = self.store.get(Column::Txs, &hash.0)? else {
            return Ok(None);
        };
        codec::decode(&v, 64)
            .map(Some)
            .map_err(|e| corrupt(format!("transaction index entry {hash} unreadable: {e}")))
    }

    /// A final transaction with its location and receipt.
    pub fn transaction(&self, hash: &Hash) -> Result<Option<(SignedTx, TxLocation)>, StoreError> {
        let Some(loc) = self.tx_location(hash)? else {
            return Ok(None);
        };
        let stored = self.block(loc.height)?.ok_or_else(|| {
            corrupt(format!(
                "transaction {hash} indexed in missing block {}",
                loc.height
            ))
        })?;
        let tx = stored
            .block
            .txs
            .get(loc.index as usize)
            .copied()
            .ok_or_else(|| corrupt(format!("transaction {hash} indexed past its block's end")))?;
        Ok(Some((tx, loc)))
    }

    /// Writes a final block atomically and durably: the block and certificate, its
    /// transactions' index entries and receipts, the touched accounts, the new state
    /// commitment and the new head. `exec` must be the block's execution against the
    /// current head (as returned by [`crate::state::validate_block`]).
    pub fn commit(
        &self,
        block: &Block,
        certificate: &[u8],
        exec: &Execution,
    ) -> Result<(), StoreError> {
        let _guard = self
            .commit_lock
            .lock()
            .map_err(|_| StoreError::Db("commit lock poisoned by a panic".into()))?;
        let head = self.head();
        let h = &block.header;
        if h.height != head.height + 1 || h.parent_hash != head.hash() {
            return Err(StoreError::NotNextBlock {
                height: h.height,
                parent: h.parent_hash,
                head_height: head.height,
                head: head.hash(),
            });
        }
        let mismatch = |what| StoreError::ExecutionMismatch {
            height: h.height,
            what,
        };
        if exec.state_root() != h.state_root {
            return Err(mismatch("state root"));
        }
        if exec.receipts.len() != block.txs.len() || exec.tx_hashes.len() != block.txs.len() {
            return Err(mismatch("transaction count"));
        }

        let mut b = WriteBatch::default();
        Self::put_block(&mut b, block, certificate);
        let mut history: FastMap<Address, Vec<u8>> = FastMap::default();
        for (index, ((hash, receipt), tx)) in exec
            .tx_hashes
            .iter()
            .zip(&exec.receipts)
            .zip(&block.txs)
            .enumerate()
        {
            let index = u32::try_from(index).map_err(|_| mismatch("transaction count"))?;
            let loc = TxLocation {
                height: h.height,
                index,
                receipt: *receipt,
            };
            b.put(Column::Txs, hash.0, codec::encode(&loc));
            let mut record = [0u8; ACCOUNT_TX_RECORD];
            record[..4].copy_from_slice(&index.to_be_bytes());
            record[4..].copy_from_slice(&hash.0);
            let (from, to) = (tx.tx().from, tx.tx().to);
            history.entry(from).or_default().extend_from_slice(&record);
            if to != from {
                history.entry(to).or_default().extend_from_slice(&record);
            }
        }
        // One entry per account and block, its records in index order: an account in
        // many of a block's transfers (an exchange, a busy sender) costs one memtable
        // insert, where one per transfer would be the largest part of a block's write.
        for (addr, records) in history {
            b.put(Column::AccountTxs, account_tx_key(&addr, h.height), records);
        }
        for (addr, acct) in &exec.accounts {
            if acct.is_empty() {
                b.delete(Column::Accounts, addr.0);
            } else {
                b.put(Column::Accounts, addr.0, codec::encode(acct));
            }
        }
        b.put(Column::Meta, META_STATE, exec.state.to_bytes());
        b.put(Column::Meta, META_HEAD, codec::encode(h));
        self.store.write(b, true)?;

        let mut tip = self
            .tip
            .write()
            .map_err(|_| StoreError::Db("tip lock poisoned by a panic".into()))?;
        *tip = Tip {
            head: *h,
            state: exec.state.clone(),
        };
        Ok(())
    }

    /// Up to `limit` final transactions that `addr` sent or received, newest first,
    /// strictly before position `before` (height, index) when given: (hash, height,
    /// index).
    pub fn account_transactions(
        &self,
        addr: &Address,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<(Hash, u64, u32)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lower = account_tx_key(addr, 0);
        // Exclusive: one byte past the entry of `before`'s height, so that entry is read.
        let mut upper = match before {
            Some((h, _)) => account_tx_key(addr, h),
            None => account_tx_key(addr, u64::MAX),
        };
        upper.push(0);
        let mut out = Vec::new();
        let mut bad = false;
        self.store
            .scan_range_rev(Column::AccountTxs, &lower, &upper, &mut |k, v| {
                let Some(height) = k
                    .get(32..)
                    .and_then(|h| <[u8; 8]>::try_from(h).ok())
                    .map(u64::from_be_bytes)
                else {
                    bad = true;
                    return false;
                };
                if v.is_empty() || v.len() % ACCOUNT_TX_RECORD != 0 {
                    bad = true;
                    return false;
                }
                for r in v.chunks_exact(ACCOUNT_TX_RECORD).rev() {
                    let (i, hash) = r.split_at(4);
                    let index = u32::from_be_bytes(i.try_into().unwrap_or_default());
                    if before.is_some_and(|b| (height, index) >= b) {
                        continue;
                    }
                    out.push((Hash(hash.try_into().unwrap_or_default()), height, index));
                    if out.len() >= limit {
                        return false;
                    }
                }
                true
            })?;
        if bad {
            return Err(corrupt("unreadable account transaction index entry"));
        }
        Ok(out)
    }

    /// Reads a consensus safety record.
    pub fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(Column::Consensus, key)
    }

    /// Writes a consensus safety record durably (synced) before returning.
    pub fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.put(Column::Consensus, key, value);
        self.store.write(b, true)
    }

    /// Writes a consensus record without waiting for the disk: it becomes durable with
    /// the next synced write (the write-ahead log is ordered) or at shutdown.
    pub fn consensus_put_unsynced(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.put(Column::Consensus, key, value);
        self.store.write(b, false)
    }

    /// Deletes consensus records.
    pub fn consensus_delete(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut b = WriteBatch::default();
        for k in keys {
            b.delete(Column::Consensus, k.clone());
        }
        self.store.write(b, false)
    }

    /// Calls `f` with each consensus record key that starts with `prefix`, in key
    /// order, without holding the values.
    pub fn consensus_for_each_key(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        self.store.scan(Column::Consensus, &mut |k, _| {
            if k.starts_with(prefix) {
                f(k);
                true
            } else {
                k < prefix
            }
        })
    }

    /// The consensus records whose keys start with `prefix`, in key order.
    pub fn consensus_scan(&self, prefix: &[u8]) -> Result<Vec<ConsensusRecord>, StoreError> {
        let mut out = Vec::new();
        // Keys sort bytewise: the prefix's entries are one contiguous run.
        self.store.scan(Column::Consensus, &mut |k, v| {
            if k.starts_with(prefix) {
                out.push((k.to_vec(), v.to_vec()));
                true
            } else {
                k < prefix
            }
        })?;
        Ok(out)
    }

    /// Every non-empty account, in address order. Reads the whole table: for checks and
    /// tools, not for the hot path.
    pub fn accounts(&self) -> Result<Vec<(Address, Account)>, StoreError> {
        let mut out = Vec::new();
        let mut err = None;
        self.store.scan(Column::Accounts, &mut |k, v| match (
            <[u8; 32]>::try_from(k),
            codec::decode::<Account>(v, 16),
        ) {
            (Ok(k), Ok(a)) => {
                out.push((Address(k), a));
                true
            }
            _ => {
                err = Some(corrupt("unreadable account record"));
                false
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Recomputes the state commitment from every account and compares it with the head's
    /// state root. Reads the whole account table.
    pub fn verify_state(&self) -> Result<(), StoreError> {
        let mut s = LtHash::default();
        for (addr, acct) in self.accounts()? {
            s.add(&LtHash::of_account(&addr, &acct));
        }
        let head = self.head();
        if s.root() != head.state_root {
            return Err(corrupt(format!(
                "accounts hash to {} but head block {} says {}",
                s.root(),
                head.height,
                head.state_root
            )));
        }
        Ok(())
    }

    /// Makes all writes durable and the next open fast.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

impl StateView for Ledger {
    fn account(&self, addr: &Address) -> Result<Option<Account>, StoreError> {
        let Some(v) = self.store.get(Column::Accounts, &addr.0)? else {
            return Ok(None);
        };
        codec::decode(&v, 16)
            .map(Some)
            .map_err(|e| corrupt(format!("account {addr} unreadable: {e}")))
    }

    fn state_hash(&self) -> Result<LtHash, StoreError> {
        self.tip
            .read()
            .map(|t| t.state.clone())
            .map_err(|_| StoreError::Db("tip lock poisoned by a panic".into()))
    }

    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.store.get(Column::Txs, &hash.0)?.is_some())
    }

    fn contains_txs(&self, hashes: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.0.as_slice()).collect();
        self.store.contains_many(Column::Txs, &keys)
    }
}
