//! Helpers shared by the unit tests of this crate.

use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::{Address, Genesis};

/// A genesis on `chain_id` that gives each of `accounts` `balance`, with `validator` its
/// only validator.
pub fn genesis(chain_id: u32, accounts: &[Address], balance: u64, validator: Address) -> Genesis {
    Genesis {
        chain_id,
        genesis_time_ms: 0,
        accounts: accounts
            .iter()
            .map(|a| GenesisAccount {
                address: *a,
                balance,
            })
            .collect(),
        validators: vec![GenesisValidator {
            public_key: validator,
            network_address: None,
        }],
    }
}
