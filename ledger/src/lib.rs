//! The Grapevine ledger: signed transfers, blocks, the state transition and storage.
//!
//! No async runtime and no sockets: everything here is plain functions and types that
//! the node, the network and the RPC server build on.
//!
//! # Layout
//! - [`codec`]: the one module that encodes and decodes bytes (bounded, strict).
//! - [`crypto`]: [`Hash`], [`Address`] (an ed25519 public key with a checksummed text
//!   form), [`Signature`], [`Keypair`], single and batch verification.
//! - [`tx`]: [`Transaction`] and [`SignedTx`]: signing bytes, encoding, hash.
//! - [`block`]: [`Block`], [`BlockHeader`], the transaction Merkle root.
//! - [`genesis`]: the genesis file and its hash.
//! - [`state`]: accounts, the LtHash state commitment, receipts, and the pure state
//!   transition ([`state::execute`], [`state::validate_block`], [`state::build_block`]).
//! - [`store`]: the key-value [`store::Store`] (in memory or RocksDB) and [`Ledger`],
//!   which commits one block per atomic, synced write.
//! - [`memo`]: the process's one memory of signature work (verdicts, key points).
//! - [`seeded`]: the deterministic generator of simulations and randomized tests.
//!
//! The byte-exact formats are specified in `docs/PROTOCOL.md`.

pub mod block;
pub mod codec;
pub mod collections;
pub mod crypto;
pub mod genesis;
pub mod memo;
pub mod seeded;
pub mod state;
pub mod store;
pub mod tx;

pub use block::{Block, BlockHeader};
pub use crypto::{Address, Hash, Keypair, Signature};
pub use genesis::Genesis;
pub use state::{Account, Receipt, StateView, TxLocation};
#[cfg(feature = "rocksdb")]
pub use store::RocksStore;
pub use store::{Ledger, MemoryStore, Store, StoreError};
pub use tx::{SignedTx, Transaction};

/// Serde helper for u64 values that must survive JavaScript: a decimal string in
/// human-readable formats (JSON), a plain little-endian u64 in the binary codec. When
/// reading JSON, a number is accepted as well as a string.
pub mod json_u64 {
    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serializer};

    /// Serializes `v` as described in the module documentation.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(v)
        } else {
            s.serialize_u64(*v)
        }
    }

    /// Deserializes as described in the module documentation.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an unsigned 64-bit integer as a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format!("{v:?} is not a decimal integer")));
                }
                v.parse()
                    .map_err(|_| E::custom(format!("{v} does not fit in 64 bits")))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            u64::deserialize(d)
        }
    }
}
