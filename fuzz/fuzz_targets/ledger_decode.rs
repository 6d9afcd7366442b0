//! Transaction and block decoding from untrusted bytes.
#![no_main]

use grapevine_ledger::{Block, SignedTx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = SignedTx::from_bytes(data) {
        assert_eq!(t.to_bytes(), data);
        let _ = t.verify();
    }
    if let Ok(b) = Block::from_bytes(data) {
        assert_eq!(b.to_bytes(), data);
    }
});
