//! Blocks, headers and the transaction Merkle root.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::crypto::{Address, Hash, sha256};
use crate::json_u64;
use crate::tx::{SIGNED_TX_LEN, SignedTx};

/// Most transactions one block may hold.
pub const MAX_BLOCK_TXS: usize = 50_000;

/// Largest encoded block accepted from the network or the disk: the header, a length
/// prefix, [`MAX_BLOCK_TXS`] transactions, and slack for the header's growth.
pub const MAX_BLOCK_BYTES: u64 = (MAX_BLOCK_TXS * SIGNED_TX_LEN) as u64 + 4096;

/// A block header. Its canonical encoding is the fields in order (u64 little-endian,
/// 32-byte hashes and keys raw, `tx_count` u32 LE); the block hash is SHA-256 of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockHeader {
    /// Height: 0 for the genesis block, parent's height + 1 otherwise.
    #[serde(with = "json_u64")]
    pub height: u64,
    /// Consensus round in which the block was proposed (0 for genesis and dev blocks).
    #[serde(with = "json_u64")]
    pub round: u64,
    /// Hash of the parent header; for the genesis block, the genesis hash.
    pub parent_hash: Hash,
    /// Validator that proposed the block and receives its fees.
    pub proposer: Address,
    /// Proposer's clock in milliseconds since the Unix epoch.
    #[serde(with = "json_u64")]
    pub timestamp_ms: u64,
    /// Number of transactions in the block.
    pub tx_count: u32,
    /// Merkle root of the transaction hashes ([`tx_root`]).
    pub tx_root: Hash,
    /// Commitment to the whole account state after the block is applied.
    pub state_root: Hash,
}

impl BlockHeader {
    /// SHA-256 of the canonical header encoding.
    pub fn hash(&self) -> Hash {
        sha256(&[&codec::encode(self)])
    }
}

/// A header and its transactions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header, which commits to the transactions through `tx_root`.
    pub header: BlockHeader,
    /// Transactions in execution order.
    pub txs: Vec<SignedTx>,
}

impl Block {
    /// Canonical encoding: header, then u64 LE count, then each transaction's full encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a block of at most [`MAX_BLOCK_BYTES`]. Checks nothing but the encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAX_BLOCK_BYTES)
    }

    /// The block's hash (the header's).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }
}

/// Merkle root over transaction hashes. A leaf is `SHA-256(0x00 || tx_hash)`, an inner
/// node `SHA-256(0x01 || left || right)`; a level with an odd count carries its last node
/// up unchanged (never duplicated, so two transaction lists never share a root). The root
/// of no transactions is all zeros.
pub fn tx_root(tx_hashes: &[Hash]) -> Hash {
    if tx_hashes.is_empty() {
        return Hash::ZERO;
    }
    let mut level: Vec<Hash> = tx_hashes.iter().map(|h| sha256(&[&[0], &h.0])).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => sha256(&[&[1], &l.0, &r.0]),
                [one] => *one,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Hash {
        Hash([b; 32])
    }

    #[test]
    fn merkle_root_shapes() {
        assert_eq!(tx_root(&[]), Hash::ZERO);
        let leaf = |x: Hash| sha256(&[&[0], &x.0]);
        let node = |l: Hash, r: Hash| sha256(&[&[1], &l.0, &r.0]);
        assert_eq!(tx_root(&[h(1)]), leaf(h(1)));
        assert_eq!(tx_root(&[h(1), h(2)]), node(leaf(h(1)), leaf(h(2))));
        assert_eq!(
            tx_root(&[h(1), h(2), h(3)]),
            node(node(leaf(h(1)), leaf(h(2))), leaf(h(3)))
        );
        // Order matters, and a duplicated last element changes the root.
        assert_ne!(tx_root(&[h(1), h(2)]), tx_root(&[h(2), h(1)]));
        assert_ne!(
            tx_root(&[h(1), h(2), h(3)]),
            tx_root(&[h(1), h(2), h(3), h(3)])
        );
    }

    #[test]
    fn header_encoding_is_fixed_and_round_trips() {
        let hd = BlockHeader {
            height: 1,
            round: 2,
            parent_hash: h(3),
            proposer: Address([4; 32]),
            timestamp_ms: 5,
            tx_count: 0,
            tx_root: Hash::ZERO,
            state_root: h(6),
        };
        let bytes = codec::encode(&hd);
        assert_eq!(bytes.len(), 8 + 8 + 32 + 32 + 8 + 4 + 32 + 32);
        let b = Block {
            header: hd,
            txs: vec![],
        };
        assert_eq!(Block::from_bytes(&b.to_bytes()), Ok(b));
    }
}
