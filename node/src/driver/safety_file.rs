//! A validator's consensus safety state (last round signed in, highest QC), kept in a
//! file of its own next to its key, outside the ledger's data directory: deleting or
//! rebuilding the data (`grapevine rebuild`) never loses it, as with CometBFT's
//! `priv_validator_state.json`.
//!
//! Layout: a 4096-byte header (magic `GVSAFE\0\x02`, slot size as u32le, zeros), then
//! two slots of that size (a power of two, at least 4096), so no two of the three
//! share a disk sector or page and a torn write damages one slot at most. Each slot holds a record: sequence number (u64le),
//! body length (u32le), the state in the ledger codec, then the SHA-256 of sequence,
//! length and body. A store overwrites the slot that does not hold the latest record
//! and syncs its data (no metadata changes: the file keeps its size), so a write torn
//! by a crash leaves the other slot, whose state was stored before, intact; a load
//! takes the valid record with the highest sequence number, and logs a warning if the
//! other slot was written but fails its checksum. The header is only
//! written when the whole file is (the first store after a start, or a state larger
//! than a slot): temporary file, fsync, rename, fsync of the directory. A file from
//! before the slots (the state, then its SHA-256) is still read.
//!
//! Every vote or timeout waits for a store, so it is on the critical path of each
//! round: the slot write costs one data sync, where a new file would cost two syncs and
//! a rename (5% of a validator's CPU on a loaded 4-validator testnet).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use grapevine_ledger::codec;
use grapevine_ledger::crypto::sha256;

use crate::consensus::types::{MAX_CERTIFICATE_BYTES, SafetyState};

const MAGIC: &[u8; 8] = b"GVSAFE\0\x02";
const HEADER: usize = 4096;
/// Sequence number and body length in front of a record's body.
const RECORD_HEAD: usize = 12;
/// Smallest slot.
const MIN_SLOT: usize = 4096;

/// Why the safety state cannot be read or written. Either way the validator must not
/// sign: it could sign twice in a round.
#[derive(Debug, thiserror::Error)]
pub enum SafetyFileError {
    /// The file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file exists but does not check out.
    #[error(
        "{path} is damaged (checksum mismatch or truncated); this validator's safety \
         state is lost: see docs/OPERATIONS.md before starting it again"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
    },
}

/// Where a validator's safety state is kept.
#[derive(Clone, Debug)]
pub struct SafetyFile {
    path: PathBuf,
    open: Arc<Mutex<Option<Slots>>>,
}

/// The file as this process last wrote it whole.
#[derive(Debug)]
struct Slots {
    file: File,
    slot: usize,
    /// The slot the next store writes.
    next: usize,
    seq: u64,
}

/// A slot's record for `body`.
fn record(seq: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut r = Vec::with_capacity(RECORD_HEAD + body.len() + 32);
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(body);
    let sum = sha256(&[&r]);
    r.extend_from_slice(&sum.0);
    r
}

/// The (sequence, body) of a valid record at the start of `slot`.
fn parse_record(slot: &[u8]) -> Option<(u64, &[u8])> {
    let seq = u64::from_le_bytes(slot.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(slot.get(8..RECORD_HEAD)?.try_into().ok()?) as usize;
    let end = RECORD_HEAD.checked_add(len)?;
    let covered = slot.get(..end)?;
    let sum = slot.get(end..end.checked_add(32)?)?;
    (seq != 0 && sha256(&[covered]).0 == sum).then(|| (seq, &covered[RECORD_HEAD..]))
}

impl SafetyFile {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        SafetyFile {
            path,
            open: Arc::default(),
        }
    }

    /// The stored state; `None` if the file does not exist. A file that exists but does
    /// not check out is an error naming it (never silently treated as no state).
    pub fn load(&self) -> Result<Option<SafetyState>, SafetyFileError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SafetyFileError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let damaged = || SafetyFileError::Damaged {
            path: self.path.clone(),
        };
        let body = if bytes.starts_with(MAGIC) {
            let slot = bytes
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_le_bytes(b) as usize)
                .ok_or_else(damaged)?;
            if slot < MIN_SLOT || bytes.len() != HEADER + 2 * slot {
                return Err(damaged());
            }
            let slots = &bytes[HEADER..];
            let mut newest: Option<(u64, &[u8])> = None;
            for (i, s) in [&slots[..slot], &slots[slot..]].into_iter().enumerate() {
                match parse_record(s) {
                    Some(r) if newest.is_none_or(|n| r.0 > n.0) => newest = Some(r),
                    Some(_) => {}
                    // Never written (the second slot of a new file).
                    None if s.iter().all(|b| *b == 0) => {}
                    None => tracing::warn!(
                        file = %self.path.display(),
                        slot = i,
                        "a safety state slot fails its checksum (a write torn by a crash, \
                         or damage); using the state in the other slot"
                    ),
                }
            }
            newest.ok_or_else(damaged)?.1.to_vec()
        } else {
            // The layout before slots: the state, then its SHA-256.
            let split = bytes.len().checked_sub(32).ok_or_else(damaged)?;
            let (body, sum) = bytes.split_at(split);
            if sha256(&[body]).0 != sum {
                return Err(damaged());
            }
            body.to_vec()
        };
        let state = codec::decode(&body, MAX_CERTIFICATE_BYTES).map_err(|_| damaged())?;
        Ok(Some(state))
    }

    /// Writes `state` durably, so that a crash at any point leaves either it or the
    /// state stored before it.
    pub fn store(&self, state: &SafetyState) -> Result<(), SafetyFileError> {
        let body = codec::encode(state);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let result = match open.as_mut() {
            Some(s) if RECORD_HEAD + body.len() + 32 <= s.slot => {
                let seq = s.seq + 1;
                let at = (HEADER + s.next * s.slot) as u64;
                s.file
                    .write_all_at(&record(seq, &body), at)
                    .and_then(|()| s.file.sync_data())
                    .map(|()| {
                        s.seq = seq;
                        s.next ^= 1;
                    })
            }
            _ => self.write_whole(&body).map(|s| *open = Some(s)),
        };
        if result.is_err() {
            // Whatever the slot holds now, the next store starts from a whole file.
            *open = None;
        }
        result.map_err(|source| SafetyFileError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the file with a new one holding `body` in its first slot.
    fn write_whole(&self, body: &[u8]) -> std::io::Result<Slots> {
        let rec = record(1, body);
        let slot = rec.len().next_power_of_two().max(MIN_SLOT);
        let mut bytes = vec![0u8; HEADER + 2 * slot];
        bytes[..8].copy_from_slice(MAGIC);
        let slot_le = u32::try_from(slot)
            .map_err(|_| std::io::Error::other("safety state too large"))?
            .to_le_bytes();
        bytes[8..12].copy_from_slice(&slot_le);
        bytes[HEADER..HEADER + rec.len()].copy_from_slice(&rec);
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        // The rename is durable once the directory is.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        let file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        Ok(Slots {
            file,
            slot,
            next: 1,
            seq: 1,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::QuorumCert;
    use grapevine_ledger::Hash;

    /// A safety file (not yet written) in a directory of its own, kept while the
    /// returned guard lives.
    fn new_file() -> (tempfile::TempDir, SafetyFile) {
        let dir = tempfile::tempdir().unwrap();
        let f = SafetyFile::new(dir.path().join("safety.bin"));
        (dir, f)
    }

    fn state(round: u64) -> SafetyState {
        SafetyState {
            last_voted_round: round,
            high_qc: QuorumCert::genesis(Hash([3; 32])),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let (_dir, f) = new_file();
        assert!(f.load().unwrap().is_none());
        let s = state(41);
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s.clone()));
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[0] ^= 1;
        std::fs::write(f.path(), &bytes).unwrap();
        assert!(f.load().is_err(), "a flipped bit in the header is caught");
        std::fs::write(f.path(), &bytes[..10]).unwrap();
        assert!(f.load().is_err(), "a truncated file is caught");
        // A fresh handle (a restart) writes a whole file again.
        let f = SafetyFile::new(f.path().to_path_buf());
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s));
    }

    #[test]
    fn stores_alternate_slots_and_the_newest_valid_one_wins() {
        let (_dir, f) = new_file();
        for round in 1..=5 {
            f.store(&state(round)).unwrap();
            assert_eq!(f.load().unwrap(), Some(state(round)));
        }
        let len = std::fs::metadata(f.path()).unwrap().len();
        assert_eq!(
            len,
            (HEADER + 2 * MIN_SLOT) as u64,
            "slots are written in place"
        );
        // Round 5 went to the first slot (1: first, 2: second, ...). A crash that tore
        // that write leaves round 4 in the other slot.
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[HEADER + 20] ^= 0xff;
        std::fs::write(f.path(), &bytes).unwrap();
        assert_eq!(f.load().unwrap(), Some(state(4)));
        // Both slots damaged: the state is lost, and the load says so.
        bytes[HEADER + MIN_SLOT + 20] ^= 0xff;
        std::fs::write(f.path(), &bytes).unwrap();
        assert!(f.load().is_err());
    }

    #[test]
    fn a_state_larger_than_a_slot_grows_the_file() {
        let (_dir, f) = new_file();
        f.store(&state(1)).unwrap();
        let mut big = state(2);
        big.high_qc.votes = (0..100)
            .map(|i| (i, grapevine_ledger::Signature([7; 64])))
            .collect();
        f.store(&big).unwrap();
        assert_eq!(f.load().unwrap(), Some(big.clone()));
        assert!(std::fs::metadata(f.path()).unwrap().len() > (HEADER + 2 * MIN_SLOT) as u64);
        f.store(&state(3)).unwrap();
        assert_eq!(f.load().unwrap(), Some(state(3)));
        // A restart reads the grown file.
        let again = SafetyFile::new(f.path().to_path_buf());
        assert_eq!(again.load().unwrap(), Some(state(3)));
    }

    #[test]
    fn a_torn_second_slot_falls_back_to_the_first() {
        let (_dir, f) = new_file();
        for round in 1..=4 {
            f.store(&state(round)).unwrap();
        }
        // Round 4 is in the second slot, round 3 in the first.
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[HEADER + MIN_SLOT + 20] ^= 0xff;
        std::fs::write(f.path(), &bytes).unwrap();
        assert_eq!(f.load().unwrap(), Some(state(3)));
    }

    #[test]
    fn reads_the_layout_from_before_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safety.bin");
        let body = codec::encode(&state(9));
        let sum = sha256(&[&body]);
        std::fs::write(&path, [body.as_slice(), &sum.0].concat()).unwrap();
        let f = SafetyFile::new(path);
        assert_eq!(f.load().unwrap(), Some(state(9)));
        f.store(&state(10)).unwrap();
        assert_eq!(f.load().unwrap(), Some(state(10)));
    }
}
