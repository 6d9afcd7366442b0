//! The batch signature check against the single one.
//!
//! From the input: up to four keys (32-byte seeds), a batch of signatures by them over
//! input messages, then a few corruptions (a flipped bit in a message, R or S; swapped
//! signers; an arbitrary key or signature; S + l, the same scalar not canonically
//! encoded; a small-order key; R with a small-order component, valid under the
//! cofactored equation). Then, as ledger/src/crypto.rs documents:
//!
//! - `verify_batch` is `true` exactly when `verify` accepts every member ("a wrong
//!   `true` has probability below 2^-120", so equality is asserted, not implication),
//!   with the signers' key points fresh or remembered (the second call finds them in
//!   the process-wide memory);
//! - `verify_batch_reference` (the library's batch verifier) gives the same verdicts;
//! - an empty batch is valid (all of nothing), and batches whose three slices differ in
//!   length are refused by both.
#![no_main]

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
use curve25519_dalek::scalar::Scalar;
use grapevine_ledger::crypto::{verify, verify_batch, verify_batch_reference};
use grapevine_ledger::{Address, Keypair, Signature};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha512};

/// Batches above 190 take another multiscalar algorithm (see crypto.rs's tests); one
/// input byte value asks for such a batch.
const LARGE_BATCH: usize = 200;
const MAX_MSG: usize = 48;

/// The input, read front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let keys: Vec<Keypair> = (0..1 + input.byte() % 4)
        .map(|_| Keypair::from_seed(&input.array()))
        .collect();
    let n = match input.byte() {
        255 => LARGE_BATCH,
        b => usize::from(b % 65),
    };
    let mut msgs = Vec::with_capacity(n);
    let mut signers = Vec::with_capacity(n);
    let mut sigs = Vec::with_capacity(n);
    for _ in 0..n {
        let key = &keys[usize::from(input.byte()) % keys.len()];
        let len = usize::from(input.byte()) % (MAX_MSG + 1);
        let msg = input.bytes(len);
        sigs.push(key.sign(&msg));
        signers.push(key.address());
        msgs.push(msg);
    }
    if n > 0 {
        for _ in 0..input.byte() % 4 {
            corrupt(&mut input, &mut msgs, &mut signers, &mut sigs);
        }
    }
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let single = (0..n).all(|i| verify(&signers[i], refs[i], &sigs[i]));
    assert_eq!(verify_batch(&refs, &signers, &sigs), single, "batch, keys fresh or not");
    assert_eq!(verify_batch(&refs, &signers, &sigs), single, "batch, keys remembered");
    assert_eq!(verify_batch_reference(&refs, &signers, &sigs), single, "library batch");
    if n > 0 {
        // Lengths that differ: refused by both, whatever the members.
        assert!(!verify_batch(&refs[1..], &signers, &sigs));
        assert!(!verify_batch(&refs, &signers[1..], &sigs));
        assert!(!verify_batch_reference(&refs, &signers, &sigs[1..]));
    }
});

fn corrupt(
    input: &mut Input<'_>,
    msgs: &mut [Vec<u8>],
    signers: &mut [Address],
    sigs: &mut [Signature],
) {
    let n = msgs.len();
    let i = usize::from(input.byte()) % n;
    let bit = 1u8 << (input.byte() % 8);
    match input.byte() % 8 {
        0 => match msgs[i].len() {
            0 => msgs[i].push(bit),
            len => msgs[i][usize::from(input.byte()) % len] ^= bit,
        },
        1 => sigs[i].0[usize::from(input.byte()) % 32] ^= bit,
        2 => sigs[i].0[32 + usize::from(input.byte()) % 32] ^= bit,
        3 => signers.swap(i, usize::from(input.byte()) % n),
        4 => signers[i] = Address(input.array()),
        5 => sigs[i] = Signature(input.array()),
        6 => {
            // S + l: the same scalar, not canonical; ZIP-215 refuses it.
            let s: [u8; 32] = sigs[i].0[32..].try_into().expect("32 of 64 bytes");
            if let Some(s) = add_l(s) {
                sigs[i].0[32..].copy_from_slice(&s);
            }
        }
        _ => {
            // A signature by a key from an input scalar whose R has a small-order
            // component (or, with torsion index 0, none): valid under the cofactored
            // equation. With an input byte, the key itself is the identity instead (a
            // small-order key, for which anyone can sign: refused).
            let a = Scalar::from_bytes_mod_order(input.array());
            let r = Scalar::from_bytes_mod_order(input.array());
            let t = EIGHT_TORSION[usize::from(input.byte()) % 8];
            let key = if input.byte() % 16 == 0 {
                let mut identity = [0u8; 32];
                identity[0] = 1;
                Address(identity)
            } else {
                Address((a * B).compress().to_bytes())
            };
            let big_r = (r * B + t).compress().to_bytes();
            let k = Scalar::from_bytes_mod_order_wide(
                &Sha512::new()
                    .chain_update(big_r)
                    .chain_update(key.0)
                    .chain_update(&msgs[i])
                    .finalize()
                    .into(),
            );
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&big_r);
            sig[32..].copy_from_slice((r + k * a).as_bytes());
            signers[i] = key;
            sigs[i] = Signature(sig);
        }
    }
}

/// `s + l` as 32 little-endian bytes (l the group order), if it fits in 256 bits.
fn add_l(s: [u8; 32]) -> Option<[u8; 32]> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    (carry == 0).then_some(out)
}
