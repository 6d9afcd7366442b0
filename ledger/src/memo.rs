//! The process's one memory of signature work: which transactions' signatures were
//! found valid, and the decompressed curve points of signers' keys.
//!
//! It is a process-wide value rather than one the node creates and passes in, on
//! purpose (docs/DECISIONS.md, "One signature memo, process-wide"):
//! - what it remembers is a pure function of the bytes (under ZIP-215 the single and
//!   the batch check agree on every signature), so it can never change a verdict,
//!   only save work, and every node agrees on every block whatever it remembers;
//! - the work it saves is shared by admission (client and relayed transactions) and
//!   by block checking and building, which reach signature checks through the pure
//!   state transition; a value would add a parameter to every caller of it for
//!   something that changes nothing observable.
//!
//! It is bounded (see each part) and can be emptied ([`SignatureMemo::forget`]) for
//! benchmarks and tests that measure or exercise checks of unseen signatures.

use std::sync::{Mutex, MutexGuard};

use crate::collections::{FastMap, RecentSet};

/// Remembered transaction verdicts: two generations of at most this many. A verdict
/// has to last from admission to the block that takes the transaction; admission's
/// backpressure keeps the pool near 2 s of throughput, so 200,000 (and up to twice
/// that) is ample, and a verdict forgotten early costs only a check again.
pub const VERIFIED_CAPACITY: usize = 200_000;

/// Remembered key points, at most; the memory is emptied when full.
pub const KEY_POINTS_CAPACITY: usize = 100_000;

/// The memory's two parts, each behind its own lock: admission threads and block
/// checks use them at once, and a check takes each briefly.
#[derive(Debug)]
pub struct SignatureMemo {
    /// Hashes (body and signature) of transactions whose signature is valid.
    verified: Mutex<Option<RecentSet>>,
    /// Usable keys (curve points not of small order), decompressed, so that a busy
    /// sender's key is decompressed once rather than for every signature.
    key_points: Mutex<Option<FastMap<[u8; 32], curve25519_dalek::EdwardsPoint>>>,
}

/// The memo every check in this process shares.
pub static MEMO: SignatureMemo = SignatureMemo {
    verified: Mutex::new(None),
    key_points: Mutex::new(None),
};

impl SignatureMemo {
    /// The remembered verdicts (created on first use).
    pub(crate) fn verified(&self) -> MutexGuard<'_, Option<RecentSet>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered key points (created on first use).
    pub(crate) fn key_points(
        &self,
    ) -> MutexGuard<'_, Option<FastMap<[u8; 32], curve25519_dalek::EdwardsPoint>>> {
        self.key_points.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything: later checks start cold.
    pub fn forget(&self) {
        *self.verified() = None;
        *self.key_points() = None;
    }
}
