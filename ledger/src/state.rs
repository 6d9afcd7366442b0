//! Accounts, the state commitment and the state transition.
//!
//! [`execute`] is a pure function of a [`StateView`] and a list of transactions: it reads
//! accounts, never writes, and returns the new values of the accounts it touched, a
//! receipt per transaction and the new state commitment. [`validate_block`] adds the
//! header checks a validator makes before it accepts a block; [`build_block`] is the
//! proposer's side.
//!
//! The state commitment is a lattice hash (LtHash, as in Solana's accounts hash): each
//! account maps to 1024 16-bit lanes drawn from BLAKE3's extendable output over the
//! account, and the state is the lane-wise wrapping sum over all accounts. Changing an
//! account subtracts its old lanes and adds its new ones, so a block costs work in the
//! number of accounts it touches, never in the number that exist. The state root is
//! SHA-256 of the 2048-byte sum.

use crate::collections::{FastMap, FastSet};

use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockHeader, MAX_BLOCK_TXS, tx_root};
use crate::crypto::{Address, Hash, sha256};
use crate::json_u64;
use crate::store::StoreError;
use crate::tx::{SignedTx, first_invalid_signature};

/// An account's state. An account that was never credited reads as the default (zero
/// balance, nonce 0) and is not part of the state commitment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Spendable balance.
    #[serde(with = "json_u64")]
    pub balance: u64,
    /// Number of transactions from this account applied so far: the next valid nonce.
    #[serde(with = "json_u64")]
    pub nonce: u64,
}

impl Account {
    /// An account with zero balance and nonce is absent from the state commitment.
    pub fn is_empty(&self) -> bool {
        self.balance == 0 && self.nonce == 0
    }
}

/// Number of 16-bit lanes in the lattice hash.
pub const LTHASH_LANES: usize = 1024;

/// The lattice-hash commitment to a set of accounts. See the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash(Box<[u16; LTHASH_LANES]>);

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash(root {})", self.root())
    }
}

impl Default for LtHash {
    fn default() -> Self {
        LtHash(Box::new([0; LTHASH_LANES]))
    }
}

impl LtHash {
    /// The lanes of one account: BLAKE3 XOF of `"grapevine/account/v1" || address ||
    /// balance (u64 LE) || nonce (u64 LE)`, 2048 bytes read as u16 LE lanes.
    pub fn of_account(addr: &Address, acct: &Account) -> LtHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"grapevine/account/v1");
        hasher.update(&addr.0);
        hasher.update(&acct.balance.to_le_bytes());
        hasher.update(&acct.nonce.to_le_bytes());
        let mut bytes = [0u8; LTHASH_LANES * 2];
        hasher.finalize_xof().fill(&mut bytes);
        let mut lanes = Box::new([0u16; LTHASH_LANES]);
        for (lane, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([b[0], b[1]]);
        }
        LtHash(lanes)
    }

    /// Adds `other`'s lanes (wrapping).
    pub fn add(&mut self, other: &LtHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Subtracts `other`'s lanes (wrapping).
    pub fn sub(&mut self, other: &LtHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    /// Replaces `old` with `new` for one account; empty accounts count as absent.
    pub fn update(&mut self, addr: &Address, old: &Account, new: &Account) {
        if old == new {
            return;
        }
        if !old.is_empty() {
            self.sub(&LtHash::of_account(addr, old));
        }
        if !new.is_empty() {
            self.add(&LtHash::of_account(addr, new));
        }
    }

    /// 2048 bytes: the lanes as u16 little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// Inverse of [`LtHash::to_bytes`]; `None` unless exactly 2048 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<LtHash> {
        if bytes.len() != LTHASH_LANES * 2 {
            return None;
        }
        let mut lanes = Box::new([0u16; LTHASH_LANES]);
        for (lane, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([b[0], b[1]]);
        }
        Some(LtHash(lanes))
    }

    /// The state root: SHA-256 of [`LtHash::to_bytes`].
    pub fn root(&self) -> Hash {
        sha256(&[&self.to_bytes()])
    }
}

/// Why a transaction did not apply. In a final block only a failure to move the amount
/// occurs (the transaction then paid its fee and used its nonce, see [`execute`]); a
/// wrong nonce or a balance below the fee keeps a transaction out of any valid block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// The transaction's nonce is not the sender's next nonce.
    #[error("wrong nonce: the account's next nonce is {expected}, the transaction has {got}")]
    #[serde(rename_all = "camelCase")]
    BadNonce {
        /// The sender's nonce when the transaction ran.
        #[serde(with = "json_u64")]
        expected: u64,
        /// The transaction's nonce.
        #[serde(with = "json_u64")]
        got: u64,
    },
    /// The sender cannot pay amount + fee.
    #[error("insufficient balance: {balance} available, {needed} needed (amount + fee)")]
    #[serde(rename_all = "camelCase")]
    InsufficientBalance {
        /// The sender's balance when the transaction ran.
        #[serde(with = "json_u64")]
        balance: u64,
        /// amount + fee.
        #[serde(with = "json_u64")]
        needed: u64,
    },
    /// amount + fee, or a resulting balance, does not fit in a u64.
    #[error("amount overflow: the transfer would exceed the largest representable balance")]
    Overflow,
}

/// The outcome of one transaction in a final block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Receipt {
    /// Applied: amount moved, fee paid, nonce incremented.
    Success,
    /// The amount did not move, with the reason; the fee was paid and the nonce used.
    Failed {
        /// Why it failed.
        reason: FailureReason,
    },
}

/// Where a final transaction is and what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TxLocation {
    /// Height of the block that includes it.
    #[serde(with = "json_u64")]
    pub height: u64,
    /// Position in that block.
    pub index: u32,
    /// Its receipt.
    pub receipt: Receipt,
}

/// Read access to committed state, as the state transition needs it.
pub trait StateView {
    /// The account's committed state, or `None` if it was never credited.
    fn account(&self, addr: &Address) -> Result<Option<Account>, StoreError>;
    /// The committed state commitment.
    fn state_hash(&self) -> Result<LtHash, StoreError>;
    /// Whether a transaction with this hash is already in a final block.
    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError>;
    /// [`StateView::contains_tx`] for each of `hashes`, in order, in one call.
    fn contains_txs(&self, hashes: &[Hash]) -> Result<Vec<bool>, StoreError> {
        hashes.iter().map(|h| self.contains_tx(h)).collect()
    }
}

/// The state after blocks that are executed but not yet final: a committed `base`
/// with uncommitted executions layered on top (oldest first). Consensus needs it to
/// execute and check a proposal whose parent is certified but not yet final.
pub struct Overlay<'a> {
    base: &'a dyn StateView,
    accounts: FastMap<Address, Account>,
    txs: FastSet<Hash>,
    state: Option<LtHash>,
}

impl<'a> Overlay<'a> {
    /// `base` with `layers` applied in order (each executed on top of the previous).
    pub fn new(base: &'a dyn StateView, layers: &[&Execution]) -> Self {
        let mut accounts = FastMap::default();
        let mut txs = FastSet::default();
        for layer in layers {
            accounts.extend(layer.accounts.iter().copied());
            txs.extend(layer.tx_hashes.iter().copied());
        }
        Overlay {
            base,
            accounts,
            txs,
            state: layers.last().map(|l| l.state.clone()),
        }
    }
}

impl std::fmt::Debug for Overlay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Overlay({} accounts, {} txs)",
            self.accounts.len(),
            self.txs.len()
        )
    }
}

impl StateView for Overlay<'_> {
    fn account(&self, addr: &Address) -> Result<Option<Account>, StoreError> {
        match self.accounts.get(addr) {
            Some(a) if a.is_empty() => Ok(None),
            Some(a) => Ok(Some(*a)),
            None => self.base.account(addr),
        }
    }

    fn state_hash(&self) -> Result<LtHash, StoreError> {
        match &self.state {
            Some(s) => Ok(s.clone()),
            None => self.base.state_hash(),
        }
    }

    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.txs.contains(hash) || self.base.contains_tx(hash)?)
    }

    fn contains_txs(&self, hashes: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let mut found = self.base.contains_txs(hashes)?;
        for (f, h) in found.iter_mut().zip(hashes) {
            *f |= self.txs.contains(h);
        }
        Ok(found)
    }
}

/// The result of executing a block's transactions against a state.
#[derive(Clone, Debug)]
pub struct Execution {
    /// New values of every account the block touched (including unchanged ones).
    pub accounts: Vec<(Address, Account)>,
    /// One receipt per transaction, in block order.
    pub receipts: Vec<Receipt>,
    /// Hashes of the block's transactions, in block order.
    pub tx_hashes: Vec<Hash>,
    /// The state commitment after the block.
    pub state: LtHash,
}

impl Execution {
    /// The post-state root.
    pub fn state_root(&self) -> Hash {
        self.state.root()
    }
}

/// Why a block is invalid as a whole. Validators refuse such a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A transaction is for another chain.
    #[error("transaction {index} is for chain {got}, this chain is {expected}")]
    WrongChain {
        /// Position in the block.
        index: usize,
        /// This chain's id.
        expected: u32,
        /// The transaction's chain id.
        got: u32,
    },
    /// A transaction's signature does not verify.
    #[error("transaction {index} has an invalid signature")]
    BadSignature {
        /// Position in the block.
        index: usize,
    },
    /// The same transaction appears twice, or was already final in an earlier block.
    #[error("transaction {hash} is duplicated or already final")]
    DuplicateTx {
        /// The repeated hash.
        hash: Hash,
    },
    /// A transaction that cannot pay for its place: not the sender's next nonce, or a
    /// balance below its fee.
    #[error("transaction {index} cannot be included: {reason}")]
    Unpayable {
        /// Position in the block.
        index: usize,
        /// Why.
        reason: FailureReason,
    },
    /// More transactions than a block may hold.
    #[error("block holds {count} transactions, the limit is {limit}")]
    TooManyTxs {
        /// Transactions in the block.
        count: usize,
        /// [`MAX_BLOCK_TXS`].
        limit: usize,
    },
    /// A header field disagrees with the parent or the contents.
    #[error("header field {field} is wrong: expected {expected}, got {got}")]
    BadHeader {
        /// Which field.
        field: &'static str,
        /// The value the node computed.
        expected: String,
        /// The value in the header.
        got: String,
    },
    /// Reading committed state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies `txs` in order to the state behind `view`, fees going to `proposer`.
///
/// Every transaction pays for its place (docs/PROTOCOL.md, "Failed transactions"): it
/// must carry the sender's next nonce and the sender must hold at least its fee, or the
/// block is invalid ([`BlockError::Unpayable`]). One whose amount and fee together
/// exceed the balance (or would overflow a balance) gets a failed receipt: it pays its
/// fee and uses its nonce, and the amount stays. The block is also invalid for a
/// transaction of another chain, a bad signature, a duplicate, or too many
/// transactions. Total supply is unchanged.
pub fn execute(
    view: &dyn StateView,
    chain_id: u32,
    proposer: &Address,
    txs: &[SignedTx],
) -> Result<Execution, BlockError> {
    execute_txs(view, chain_id, proposer, txs, false).map(|(exec, _)| exec)
}

/// [`execute`], leaving out (when `skip_unpayable`) the transactions that cannot pay
/// for their place instead of failing; returns which were left out, by index.
fn execute_txs(
    view: &dyn StateView,
    chain_id: u32,
    proposer: &Address,
    txs: &[SignedTx],
    skip_unpayable: bool,
) -> Result<(Execution, Vec<usize>), BlockError> {
    if txs.len() > MAX_BLOCK_TXS {
        return Err(BlockError::TooManyTxs {
            count: txs.len(),
            limit: MAX_BLOCK_TXS,
        });
    }
    for (index, t) in txs.iter().enumerate() {
        if t.tx().chain_id != chain_id {
            return Err(BlockError::WrongChain {
                index,
                expected: chain_id,
                got: t.tx().chain_id,
            });
        }
    }
    let tx_hashes: Vec<Hash> = txs.iter().map(SignedTx::hash).collect();
    let mut seen = FastSet::with_capacity_and_hasher(tx_hashes.len(), Default::default());
    if let Some(h) = tx_hashes.iter().find(|h| !seen.insert(**h)) {
        return Err(BlockError::DuplicateTx { hash: *h });
    }
    let final_before = view.contains_txs(&tx_hashes)?;
    if let Some((h, _)) = tx_hashes.iter().zip(&final_before).find(|(_, f)| **f) {
        return Err(BlockError::DuplicateTx { hash: *h });
    }
    if let Some(index) = first_invalid_signature(txs) {
        return Err(BlockError::BadSignature { index });
    }

    // Pre-block values of every touched account, then the working copies.
    let mut before: FastMap<Address, Account> = FastMap::default();
    let mut order: Vec<Address> = Vec::new();
    let mut touch =
        |addr: Address, before: &mut FastMap<Address, Account>| -> Result<(), StoreError> {
            if let std::collections::hash_map::Entry::Vacant(e) = before.entry(addr) {
                e.insert(view.account(&addr)?.unwrap_or_default());
                order.push(addr);
            }
            Ok(())
        };
    touch(*proposer, &mut before)?;
    for t in txs {
        touch(t.tx().from, &mut before)?;
        touch(t.tx().to, &mut before)?;
    }
    let mut now = before.clone();

    let mut receipts = Vec::with_capacity(txs.len());
    let mut left_out = Vec::new();
    for (index, t) in txs.iter().enumerate() {
        match apply_tx(&mut now, proposer, t) {
            Ok(receipt) => receipts.push(receipt),
            Err(_) if skip_unpayable => left_out.push(index),
            Err(reason) => return Err(BlockError::Unpayable { index, reason }),
        }
    }
    let tx_hashes = if left_out.is_empty() {
        tx_hashes
    } else {
        let mut out = left_out.iter().copied().peekable();
        tx_hashes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| out.next_if_eq(i).is_none())
            .map(|(_, h)| h)
            .collect()
    };

    let mut state = view.state_hash()?;
    let mut accounts = Vec::with_capacity(order.len());
    for addr in order {
        let old = before[&addr];
        let new = now[&addr];
        state.update(&addr, &old, &new);
        accounts.push((addr, new));
    }
    Ok((
        Execution {
            accounts,
            receipts,
            tx_hashes,
            state,
        },
        left_out,
    ))
}

/// Applies one transaction to `accts` (which holds every account it touches) and
/// returns its receipt; `Err`: it cannot pay for its place, and `accts` is unchanged.
fn apply_tx(
    accts: &mut FastMap<Address, Account>,
    proposer: &Address,
    t: &SignedTx,
) -> Result<Receipt, FailureReason> {
    let tx = t.tx();
    let sender = accts.get(&tx.from).copied().unwrap_or_default();
    if tx.nonce != sender.nonce {
        return Err(FailureReason::BadNonce {
            expected: sender.nonce,
            got: tx.nonce,
        });
    }
    let Some(after_fee) = sender.balance.checked_sub(tx.fee) else {
        return Err(FailureReason::InsufficientBalance {
            balance: sender.balance,
            needed: tx.fee,
        });
    };
    let next_nonce = sender.nonce.checked_add(1).ok_or(FailureReason::Overflow)?;
    let paid = Account {
        balance: after_fee,
        nonce: next_nonce,
    };

    // Compute every new value before writing any. The sender, recipient and proposer
    // may be the same account.
    let staged = |amount: u64| -> Result<FastMap<Address, Account>, FailureReason> {
        let mut staged: FastMap<Address, Account> = [tx.from, tx.to, *proposer]
            .iter()
            .map(|k| (*k, accts.get(k).copied().unwrap_or_default()))
            .collect();
        let balance =
            paid.balance
                .checked_sub(amount)
                .ok_or(FailureReason::InsufficientBalance {
                    balance: sender.balance,
                    needed: tx.amount.saturating_add(tx.fee),
                })?;
        staged.insert(
            tx.from,
            Account {
                balance,
                nonce: next_nonce,
            },
        );
        credit(&mut staged, &tx.to, amount)?;
        credit(&mut staged, proposer, tx.fee)?;
        Ok(staged)
    };
    let receipt = match staged(tx.amount) {
        Ok(s) => {
            accts.extend(s);
            Receipt::Success
        }
        Err(reason) => {
            // The amount cannot move: the fee is paid all the same.
            accts.extend(staged(0)?);
            Receipt::Failed { reason }
        }
    };
    Ok(receipt)
}

fn credit(
    accts: &mut FastMap<Address, Account>,
    addr: &Address,
    amount: u64,
) -> Result<(), FailureReason> {
    let a = accts.entry(*addr).or_default();
    a.balance = a
        .balance
        .checked_add(amount)
        .ok_or(FailureReason::Overflow)?;
    Ok(())
}

/// Checks `block` against its parent header and executes it: height, parent hash,
/// transaction count and root, then [`execute`], then the state root.
pub fn validate_block(
    view: &dyn StateView,
    chain_id: u32,
    parent: &BlockHeader,
    block: &Block,
) -> Result<Execution, BlockError> {
    let h = &block.header;
    let check = |field: &'static str, expected: String, got: String| {
        if expected == got {
            Ok(())
        } else {
            Err(BlockError::BadHeader {
                field,
                expected,
                got,
            })
        }
    };
    check(
        "height",
        (parent.height + 1).to_string(),
        h.height.to_string(),
    )?;
    check(
        "parentHash",
        parent.hash().to_string(),
        h.parent_hash.to_string(),
    )?;
    check(
        "txCount",
        block.txs.len().to_string(),
        h.tx_count.to_string(),
    )?;
    let exec = execute(view, chain_id, &h.proposer, &block.txs)?;
    check(
        "txRoot",
        tx_root(&exec.tx_hashes).to_string(),
        h.tx_root.to_string(),
    )?;
    check(
        "stateRoot",
        exec.state_root().to_string(),
        h.state_root.to_string(),
    )?;
    Ok(exec)
}

/// Builds the block that `proposer` proposes on top of `parent` with `txs`, executing
/// them to fill in the roots. Transactions that cannot pay for their place (see
/// [`execute`]) are left out of the block.
pub fn build_block(
    view: &dyn StateView,
    chain_id: u32,
    parent: &BlockHeader,
    proposer: Address,
    round: u64,
    timestamp_ms: u64,
    txs: Vec<SignedTx>,
) -> Result<(Block, Execution), BlockError> {
    let (exec, left_out) = execute_txs(view, chain_id, &proposer, &txs, true)?;
    let txs = if left_out.is_empty() {
        txs
    } else {
        let mut out = left_out.into_iter().peekable();
        txs.into_iter()
            .enumerate()
            .filter(|(i, _)| out.next_if_eq(i).is_none())
            .map(|(_, t)| t)
            .collect()
    };
    let header = BlockHeader {
        height: parent.height + 1,
        round,
        parent_hash: parent.hash(),
        proposer,
        timestamp_ms,
        tx_count: u32::try_from(txs.len()).map_err(|_| BlockError::TooManyTxs {
            count: txs.len(),
            limit: MAX_BLOCK_TXS,
        })?,
        tx_root: tx_root(&exec.tx_hashes),
        state_root: exec.state_root(),
    };
    Ok((Block { header, txs }, exec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lthash_is_order_independent_and_invertible() {
        let a = (
            Address([1; 32]),
            Account {
                balance: 5,
                nonce: 0,
            },
        );
        let b = (
            Address([2; 32]),
            Account {
                balance: 7,
                nonce: 3,
            },
        );
        let mut x = LtHash::default();
        x.add(&LtHash::of_account(&a.0, &a.1));
        x.add(&LtHash::of_account(&b.0, &b.1));
        let mut y = LtHash::default();
        y.add(&LtHash::of_account(&b.0, &b.1));
        y.add(&LtHash::of_account(&a.0, &a.1));
        assert_eq!(x, y);
        y.sub(&LtHash::of_account(&b.0, &b.1));
        y.sub(&LtHash::of_account(&a.0, &a.1));
        assert_eq!(y, LtHash::default());
        assert_eq!(LtHash::from_bytes(&x.to_bytes()), Some(x));
    }

    #[test]
    fn receipts_serialize_readably() {
        let r = Receipt::Failed {
            reason: FailureReason::BadNonce {
                expected: 3,
                got: 5,
            },
        };
        let j = serde_json::to_value(r).unwrap();
        assert_eq!(j["failed"]["reason"]["badNonce"]["expected"], "3");
        let bytes = crate::codec::encode(&r);
        assert_eq!(crate::codec::decode::<Receipt>(&bytes, 64).unwrap(), r);
    }
}
