//! The genesis file: chain id, initial balances and the validator set.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::block::{BlockHeader, tx_root};
use crate::codec;
use crate::crypto::{Address, Hash, sha256};
use crate::json_u64;
use crate::state::{Account, LtHash};

/// Domain tag of the genesis hash.
pub const GENESIS_TAG: &[u8] = b"grapevine/genesis/v1";

/// Largest genesis file read from disk: 512 MiB (room for about 4 million accounts).
pub const MAX_GENESIS_FILE: u64 = 512 * 1024 * 1024;

/// Why a genesis file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// The file could not be read.
    // The causes are part of the message and deliberately not `source`s: an error
    // chain printer (anyhow's `{:#}`) would print them twice.
    #[error("cannot read genesis file {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not valid genesis JSON.
    #[error("genesis file is not valid: {0}")]
    Json(serde_json::Error),
    /// The file is larger than [`MAX_GENESIS_FILE`].
    #[error("genesis file is {0} bytes, larger than the {MAX_GENESIS_FILE}-byte limit")]
    TooLarge(u64),
    /// A rule of the genesis format is broken.
    #[error("invalid genesis: {0}")]
    Invalid(String),
}

impl From<serde_json::Error> for GenesisError {
    fn from(e: serde_json::Error) -> Self {
        GenesisError::Json(e)
    }
}

/// One funded account in the genesis file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenesisAccount {
    /// The account.
    pub address: Address,
    /// Its initial balance (a decimal string in JSON).
    #[serde(with = "json_u64")]
    pub balance: u64,
}

/// One validator in the genesis file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenesisValidator {
    /// The validator's consensus key, in address text form.
    pub public_key: Address,
    /// Where its node listens for peers (`host:port`), if published. Not part of the
    /// genesis hash: operators may move a validator without forking the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_address: Option<String>,
}

/// The parsed genesis file. Use [`Genesis::validate`] (done by [`Genesis::load`] and
/// [`Genesis::from_json`]) before trusting it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Genesis {
    /// The chain id every transaction must carry.
    pub chain_id: u32,
    /// Timestamp of the genesis block, milliseconds since the Unix epoch.
    #[serde(with = "json_u64")]
    pub genesis_time_ms: u64,
    /// Initial balances; addresses unique.
    pub accounts: Vec<GenesisAccount>,
    /// The validator set, in leader-rotation order; keys unique, at least one.
    pub validators: Vec<GenesisValidator>,
}

/// What the genesis hash commits to, in this order and encoding.
#[derive(Serialize)]
struct GenesisCommitment<'a> {
    chain_id: u32,
    genesis_time_ms: u64,
    accounts: Vec<(Address, u64)>,
    validators: Vec<&'a Address>,
}

impl Genesis {
    /// Reads, parses and validates a genesis file.
    pub fn load(path: &Path) -> Result<Genesis, GenesisError> {
        let io = |error| GenesisError::Io {
            path: path.display().to_string(),
            error,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_GENESIS_FILE {
            return Err(GenesisError::TooLarge(len));
        }
        let text = std::fs::read(path).map_err(io)?;
        Self::from_json(&text)
    }

    /// Parses and validates genesis JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Genesis, GenesisError> {
        let g: Genesis = serde_json::from_slice(bytes)?;
        g.validate()?;
        Ok(g)
    }

    /// Pretty JSON of this genesis.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("genesis contains only JSON-safe values")
    }

    /// Checks the format's rules: at least one validator, unique validator keys, unique
    /// account addresses, total supply fits in a u64.
    pub fn validate(&self) -> Result<(), GenesisError> {
        let bad = |m: String| Err(GenesisError::Invalid(m));
        if self.validators.is_empty() {
            return bad("at least one validator is required".into());
        }
        let mut keys = BTreeSet::new();
        for v in &self.validators {
            if !keys.insert(v.public_key) {
                return bad(format!("validator {} is listed twice", v.public_key));
            }
        }
        let mut addrs = BTreeSet::new();
        let mut supply: u64 = 0;
        for a in &self.accounts {
            if !addrs.insert(a.address) {
                return bad(format!("account {} is listed twice", a.address));
            }
            supply = match supply.checked_add(a.balance) {
                Some(s) => s,
                None => return bad("total supply exceeds 2^64 - 1".into()),
            };
        }
        Ok(())
    }

    /// Sum of initial balances. Constant for the life of the chain.
    pub fn total_supply(&self) -> u64 {
        self.accounts.iter().map(|a| a.balance).sum()
    }

    /// SHA-256 of `GENESIS_TAG || encode(chain_id, genesis_time_ms, accounts sorted by
    /// address as (address, balance), validator keys in order)`.
    pub fn hash(&self) -> Hash {
        let mut accounts: Vec<(Address, u64)> = self
            .accounts
            .iter()
            .map(|a| (a.address, a.balance))
            .collect();
        accounts.sort();
        let c = GenesisCommitment {
            chain_id: self.chain_id,
            genesis_time_ms: self.genesis_time_ms,
            accounts,
            validators: self.validators.iter().map(|v| &v.public_key).collect(),
        };
        sha256(&[GENESIS_TAG, &codec::encode(&c)])
    }

    /// The initial accounts (those with a non-zero balance).
    pub fn initial_accounts(&self) -> Vec<(Address, Account)> {
        self.accounts
            .iter()
            .filter(|a| a.balance > 0)
            .map(|a| {
                (
                    a.address,
                    Account {
                        balance: a.balance,
                        nonce: 0,
                    },
                )
            })
            .collect()
    }

    /// The state commitment of the initial accounts.
    pub fn initial_state(&self) -> LtHash {
        let mut s = LtHash::default();
        for (addr, acct) in self.initial_accounts() {
            s.add(&LtHash::of_account(&addr, &acct));
        }
        s
    }

    /// Header of block 0: no transactions, parent hash = genesis hash, zero proposer,
    /// state root of the initial balances.
    pub fn block_header(&self, state_root: Hash) -> BlockHeader {
        BlockHeader {
            height: 0,
            round: 0,
            parent_hash: self.hash(),
            proposer: Address::default(),
            timestamp_ms: self.genesis_time_ms,
            tx_count: 0,
            tx_root: tx_root(&[]),
            state_root,
        }
    }

    /// The validators' keys in leader-rotation order.
    pub fn validator_keys(&self) -> Vec<Address> {
        self.validators.iter().map(|v| v.public_key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    fn sample() -> Genesis {
        Genesis {
            chain_id: 1337,
            genesis_time_ms: 1_700_000_000_000,
            accounts: vec![
                GenesisAccount {
                    address: Keypair::from_seed(&[1; 32]).address(),
                    balance: 100,
                },
                GenesisAccount {
                    address: Keypair::from_seed(&[2; 32]).address(),
                    balance: 200,
                },
            ],
            validators: vec![GenesisValidator {
                public_key: Keypair::from_seed(&[3; 32]).address(),
                network_address: Some("127.0.0.1:7000".into()),
            }],
        }
    }

    #[test]
    fn json_round_trip_and_hash_ignores_account_order_and_network_addresses() {
        let g = sample();
        let back = Genesis::from_json(g.to_json().as_bytes()).unwrap();
        assert_eq!(back, g);
        let mut h = g.clone();
        h.accounts.reverse();
        h.validators[0].network_address = None;
        assert_eq!(h.hash(), g.hash());
        h.chain_id += 1;
        assert_ne!(h.hash(), g.hash());
    }

    #[test]
    fn rules_are_enforced() {
        let mut g = sample();
        g.accounts.push(g.accounts[0].clone());
        assert!(g.validate().is_err());
        let mut g = sample();
        g.validators.clear();
        assert!(g.validate().is_err());
        let mut g = sample();
        g.accounts[0].balance = u64::MAX;
        assert!(g.validate().is_err());
        assert!(Genesis::from_json(b"{\"chainId\": 1}").is_err());
        assert!(Genesis::from_json(b"\xff\x00").is_err());
    }
}
