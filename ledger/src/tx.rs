//! Signed transfer transactions.
//!
//! Encoding (see `docs/PROTOCOL.md`): the 92-byte body is `chain_id` (u32 LE), `from`
//! (32-byte public key), `to` (32 bytes), `amount`, `fee`, `nonce` (u64 LE each). The
//! signature covers `"grapevine/tx/v1" || body`. The full encoding is `body || signature`
//! (156 bytes) and the transaction hash is SHA-256 of the full encoding.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::collections::RecentSet;
use crate::crypto::{self, Address, Hash, Keypair, Signature, sha256};
use crate::json_u64;
use crate::memo::{MEMO, VERIFIED_CAPACITY};

/// Domain-separation tag prepended to a transaction body before signing, so that a
/// transaction signature can never be replayed as a signature over anything else.
pub const TX_SIGNING_TAG: &[u8] = b"grapevine/tx/v1";

/// Length of a transaction body in bytes.
pub const TX_BODY_LEN: usize = 92;

/// Length of a signed transaction's full encoding in bytes.
pub const SIGNED_TX_LEN: usize = TX_BODY_LEN + 64;

/// An unsigned transfer of `amount` from `from` to `to`, paying `fee` to the block's
/// proposer. `nonce` is the sender's count of previously applied transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    /// The chain this transaction is valid on; a transaction for another chain is refused.
    pub chain_id: u32,
    /// Sender, who signs.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Amount moved to `to`.
    #[serde(with = "json_u64")]
    pub amount: u64,
    /// Fee paid to the proposer of the block that includes the transaction.
    #[serde(with = "json_u64")]
    pub fee: u64,
    /// Must equal the sender's account nonce when the transaction is applied.
    #[serde(with = "json_u64")]
    pub nonce: u64,
}

impl Transaction {
    /// The bytes the sender signs: the domain tag followed by the canonical body.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TX_SIGNING_TAG.len() + TX_BODY_LEN);
        out.extend_from_slice(TX_SIGNING_TAG);
        out.extend_from_slice(&codec::encode(self));
        out
    }

    /// Signs the transaction. `key` should be the key of `from`; otherwise the result
    /// does not verify.
    pub fn sign(self, key: &Keypair) -> SignedTx {
        let signature = key.sign(&self.signing_bytes());
        SignedTx::new(self, signature)
    }
}

/// A transaction with the sender's signature, and its hash.
///
/// The hash is computed once, when the value is made or decoded: a node needs a
/// transaction's hash at each step (gossip, admission, the signature memory, execution,
/// the index), and recomputing it at each would cost 4% of a loaded validator's CPU. The
/// fields are private so that the hash always matches them; [`SignedTx::altered`] makes
/// a changed copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SignedTxFields")]
pub struct SignedTx {
    tx: Transaction,
    signature: Signature,
    #[serde(skip)]
    hash: Hash,
}

/// The encoded fields of a [`SignedTx`]: the same names and order, so the encodings
/// (bincode and JSON) are those of the struct without its cached hash.
#[derive(Deserialize)]
struct SignedTxFields {
    tx: Transaction,
    signature: Signature,
}

impl From<SignedTxFields> for SignedTx {
    fn from(f: SignedTxFields) -> Self {
        SignedTx::new(f.tx, f.signature)
    }
}

impl SignedTx {
    /// A transaction with this signature (not checked) and its hash.
    pub fn new(tx: Transaction, signature: Signature) -> Self {
        let hash = sha256(&[&codec::encode(&(&tx, &signature))]);
        SignedTx {
            tx,
            signature,
            hash,
        }
    }

    /// The signed body.
    pub fn tx(&self) -> &Transaction {
        &self.tx
    }

    /// Ed25519 signature by `tx.from` over [`Transaction::signing_bytes`].
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// A copy with the body and signature changed by `f`, and its new hash (for
    /// building forgeries and variants).
    pub fn altered(self, f: impl FnOnce(&mut Transaction, &mut Signature)) -> Self {
        let (mut tx, mut signature) = (self.tx, self.signature);
        f(&mut tx, &mut signature);
        SignedTx::new(tx, signature)
    }

    /// The canonical full encoding (body then signature), [`SIGNED_TX_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes exactly [`SIGNED_TX_LEN`] bytes. Does not check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, SIGNED_TX_LEN as u64)
    }

    /// SHA-256 of the full encoding: the transaction's identity.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Whether the signature is valid for `tx.from` ([`crypto::verify`]: ZIP-215 rules,
    /// no small-order key). Always checks; see [`verified_before`] for the memory ([`crate::memo`]).
    pub fn verify(&self) -> bool {
        crypto::verify(&self.tx.from, &self.tx.signing_bytes(), &self.signature)
    }
}

/// Remembers that the transactions with these hashes have valid signatures (checked by
/// [`SignedTx::verify`] or [`crypto::verify_batch`]), so later checks skip them.
pub fn remember_verified(hashes: impl IntoIterator<Item = Hash>) {
    let mut g = MEMO.verified();
    let set = g.get_or_insert_with(|| RecentSet::new(VERIFIED_CAPACITY));
    for h in hashes {
        set.insert(h, ());
    }
}

/// Forgets every remembered verdict and key point (benchmarks measure checks of unseen
/// transactions).
pub fn forget_verified() {
    MEMO.forget();
}

/// Whether the transaction with this hash was remembered as validly signed.
pub fn verified_before(hash: &Hash) -> bool {
    MEMO.verified()
        .as_ref()
        .is_some_and(|set| set.contains(hash))
}

/// Checks the signatures of `txs` that are not remembered as valid, in batches of
/// [`SIG_BATCH`], and remembers the valid ones. Returns the index of the first
/// transaction with an invalid signature, or `None` when all are valid. The verdict does
/// not depend on what was remembered or how the batches fell, so every node agrees on it.
pub fn first_invalid_signature(txs: &[SignedTx]) -> Option<usize> {
    for chunk in unremembered(txs).chunks(SIG_BATCH) {
        if !batch_valid(txs, chunk) {
            // The batch and single checks agree, so some member fails alone; earlier
            // chunks passed, so it is the first invalid one overall.
            return Some(
                chunk
                    .iter()
                    .copied()
                    .find(|&i| !txs[i].verify())
                    .unwrap_or(chunk[0]),
            );
        }
        remember_verified(chunk.iter().map(|&i| txs[i].hash()));
    }
    None
}

/// Indexes of the `txs` not remembered as validly signed.
fn unremembered(txs: &[SignedTx]) -> Vec<usize> {
    let g = MEMO.verified();
    (0..txs.len())
        .filter(|&i| !g.as_ref().is_some_and(|set| set.contains(&txs[i].hash())))
        .collect()
}

/// Whether every signature of `txs[i]` for `i` in `members` is valid (one batch check).
fn batch_valid(txs: &[SignedTx], members: &[usize]) -> bool {
    let bodies: Vec<Vec<u8>> = members.iter().map(|&i| txs[i].tx.signing_bytes()).collect();
    let msgs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let signers: Vec<Address> = members.iter().map(|&i| txs[i].tx.from).collect();
    let sigs: Vec<Signature> = members.iter().map(|&i| txs[i].signature).collect();
    crypto::verify_batch(&msgs, &signers, &sigs)
}

/// Checks the signatures of `txs` not remembered as valid, in batches of [`SIG_BATCH`],
/// and remembers the members of every batch that passes. A failing batch is left as it
/// is (nothing in it remembered, no one-by-one search): for callers that check a mix
/// from several sources ahead of the per-source checks, which then find the invalid
/// one among their own transactions only.
pub fn preverify_signatures(txs: &[SignedTx]) {
    for chunk in unremembered(txs).chunks(SIG_BATCH) {
        if batch_valid(txs, chunk) {
            remember_verified(chunk.iter().map(|&i| txs[i].hash()));
        }
    }
}

/// Signatures not remembered as valid are checked in batches of up to this many, and a
/// node's network merges relayed transactions that wait for a check up to this many.
/// A batch check costs less per signature the larger the batch (`grapevine bench
/// ledger`: about 13 µs at 256, 10 µs at 1,024 on a 2-core machine). A failing batch is
/// searched one by one, so a forger's 1,024 costs a check of up to that many; the peer
/// is then penalized, the client refused.
pub const SIG_BATCH: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SignedTx {
        let kp = Keypair::from_seed(&[1; 32]);
        Transaction {
            chain_id: 7,
            from: kp.address(),
            to: Keypair::from_seed(&[2; 32]).address(),
            amount: 1000,
            fee: 10,
            nonce: 0,
        }
        .sign(&kp)
    }

    #[test]
    fn encoding_is_fixed_length_and_round_trips() {
        let t = sample();
        let b = t.to_bytes();
        assert_eq!(b.len(), SIGNED_TX_LEN);
        assert_eq!(codec::encode(&t.tx).len(), TX_BODY_LEN);
        assert_eq!(SignedTx::from_bytes(&b), Ok(t));
        assert!(t.verify());
        assert_eq!(
            t.hash(),
            sha256(&[&b]),
            "the cached hash is of the full encoding"
        );
        let j = serde_json::to_value(t).unwrap();
        assert!(j.get("hash").is_none(), "the cached hash is not encoded");
        assert_eq!(serde_json::from_value::<SignedTx>(j).unwrap(), t);
        let changed = t.altered(|tx, _| tx.fee += 1);
        assert_eq!(changed.hash(), sha256(&[&changed.to_bytes()]));
        assert_ne!(changed.hash(), t.hash());
    }

    #[test]
    fn encoding_is_the_documented_byte_layout() {
        // docs/PROTOCOL.md: body fields in order, integers little-endian, keys and
        // signature as their raw bytes; signatures cover the tag and this body.
        let kp = Keypair::from_seed(&[4; 32]);
        let to = Address(std::array::from_fn(|i| i as u8));
        let t = Transaction {
            chain_id: 0x0102_0304,
            from: kp.address(),
            to,
            amount: 0x1122_3344_5566_7788,
            fee: 9,
            nonce: 1 << 40,
        }
        .sign(&kp);
        let mut want = Vec::new();
        want.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        want.extend_from_slice(&kp.address().0);
        want.extend_from_slice(&to.0);
        want.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&(1u64 << 40).to_le_bytes());
        want.extend_from_slice(&t.signature().0);
        assert_eq!(t.to_bytes(), want);
        assert_eq!(
            t.tx().signing_bytes(),
            [TX_SIGNING_TAG, &want[..TX_BODY_LEN]].concat()
        );
        assert_eq!(SignedTx::from_bytes(&want), Ok(t));
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let t = sample();
        assert!(!t.altered(|tx, _| tx.amount += 1).verify());
        assert!(!t.altered(|tx, _| tx.chain_id += 1).verify());
        assert!(!t.altered(|tx, _| tx.nonce += 1).verify());
    }

    /// `count` transfers to `Address([to; 32])` on chain `chain_id`, signed in turn by
    /// `keys` senders whose seeds are `[first_seed + i; 32]`, transaction `n` with nonce
    /// and amount `n`.
    fn signed_by_turns(
        count: usize,
        keys: u8,
        first_seed: u8,
        chain_id: u32,
        to: u8,
    ) -> Vec<SignedTx> {
        let kps: Vec<Keypair> = (0..keys)
            .map(|i| Keypair::from_seed(&[first_seed + i; 32]))
            .collect();
        (0..count as u64)
            .map(|n| {
                let kp = &kps[(n % u64::from(keys)) as usize];
                Transaction {
                    chain_id,
                    from: kp.address(),
                    to: Address([to; 32]),
                    amount: n,
                    fee: 1,
                    nonce: n,
                }
                .sign(kp)
            })
            .collect()
    }

    #[test]
    fn remembered_signatures_do_not_change_the_verdict() {
        let txs: Vec<SignedTx> = signed_by_turns(200, 7, 40, 3, 8);
        // Remember the first 128 (two whole batches) and a few of the rest.
        remember_verified(txs[..128].iter().chain(&txs[150..160]).map(SignedTx::hash));
        assert_eq!(first_invalid_signature(&txs), None);
        // A bad signature in a batch with remembered ones is still found.
        let mut bad = txs.clone();
        bad[155] = bad[155].altered(|tx, _| tx.amount += 1);
        assert_eq!(first_invalid_signature(&bad), Some(155));
        let mut bad = txs;
        bad[130] = bad[130].altered(|_, sig| sig.0[5] ^= 1);
        assert_eq!(first_invalid_signature(&bad), Some(130));
    }

    /// Across several signature batches the first invalid transaction is named, not
    /// one in a later batch, and the batches before it are remembered as valid.
    #[test]
    fn the_first_invalid_signature_across_batches_is_named() {
        let mut txs: Vec<SignedTx> = signed_by_turns(2 * SIG_BATCH + 10, 11, 60, 11, 10);
        txs[2 * SIG_BATCH + 3] = txs[2 * SIG_BATCH + 3].altered(|tx, _| tx.amount += 1);
        txs[SIG_BATCH + 5] = txs[SIG_BATCH + 5].altered(|_, sig| sig.0[9] ^= 1);
        assert_eq!(first_invalid_signature(&txs), Some(SIG_BATCH + 5));
        assert!(txs[..SIG_BATCH].iter().all(|t| verified_before(&t.hash())));
        assert!(!verified_before(&txs[SIG_BATCH + 5].hash()));
    }

    #[test]
    fn batch_check_names_the_bad_transaction() {
        let mut txs: Vec<SignedTx> = signed_by_turns(150, 5, 0, 1, 9);
        assert_eq!(first_invalid_signature(&txs), None);
        txs[100] = txs[100].altered(|tx, _| tx.amount += 1);
        assert_eq!(first_invalid_signature(&txs), Some(100));
    }

    #[test]
    fn truncated_or_extended_bytes_are_errors() {
        let b = sample().to_bytes();
        for n in 0..b.len() {
            assert!(SignedTx::from_bytes(&b[..n]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(SignedTx::from_bytes(&long).is_err());
    }

    #[test]
    fn json_amounts_are_strings() {
        let j = serde_json::to_value(sample().tx).unwrap();
        assert_eq!(j["amount"], "1000");
        assert_eq!(j["chainId"], 7);
        let back: Transaction = serde_json::from_value(j).unwrap();
        assert_eq!(back, sample().tx);
    }
}
