//! A validator's consensus safety state (last round signed in, highest QC), kept in a
//! file of its own next to its key, outside the ledger's data directory: deleting or
//! rebuilding the data (`grapevine rebuild`) never loses it, as with CometBFT's
//! `priv_validator_state.json`.
//!
//! Layout: the state in the ledger codec, then the SHA-256 of those bytes, so a torn or
//! damaged file is detected instead of read as an older state. Written atomically
//! (temporary file, fsync, rename, fsync of the directory) before any vote or timeout
//! leaves the node.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use grapevine_ledger::codec;
use grapevine_ledger::crypto::sha256;

use super::types::{MAX_CERTIFICATE_BYTES, SafetyState};

/// Where a validator's safety state is kept.
#[derive(Clone, Debug)]
pub struct SafetyFile {
    path: PathBuf,
}

impl SafetyFile {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        SafetyFile { path }
    }

    /// The stored state; `None` if the file does not exist. A file that exists but does
    /// not check out is an error naming it (never silently treated as no state).
    pub fn load(&self) -> anyhow::Result<Option<SafetyState>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        let damaged = || {
            anyhow::anyhow!(
                "{} is damaged (checksum mismatch or truncated); this validator's safety \
                 state is lost: see docs/OPERATIONS.md before starting it again",
                self.path.display()
            )
        };
        let split = bytes.len().checked_sub(32).ok_or_else(damaged)?;
        let (body, sum) = bytes.split_at(split);
        if sha256(&[body]).0 != sum {
            return Err(damaged());
        }
        let state = codec::decode(body, MAX_CERTIFICATE_BYTES).map_err(|_| damaged())?;
        Ok(Some(state))
    }

    /// Writes `state` durably and atomically.
    pub fn store(&self, state: &SafetyState) -> anyhow::Result<()> {
        let body = codec::encode(state);
        let sum = sha256(&[&body]);
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.write_all(&sum.0)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is.
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))
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

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let f = SafetyFile::new(dir.path().join("safety.bin"));
        assert!(f.load().unwrap().is_none());
        let s = SafetyState {
            last_voted_round: 41,
            high_qc: QuorumCert::genesis(Hash([3; 32])),
        };
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s.clone()));
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[0] ^= 1;
        std::fs::write(f.path(), &bytes).unwrap();
        assert!(f.load().is_err(), "a flipped bit is caught");
        std::fs::write(f.path(), &bytes[..10]).unwrap();
        assert!(f.load().is_err(), "a truncated file is caught");
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s));
    }
}
