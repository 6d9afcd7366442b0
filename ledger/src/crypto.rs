//! Hashes, addresses, signatures and keys.
//!
//! An [`Address`] is an ed25519 public key. Its text form is `gv` + 64 lowercase hex digits
//! of the key + 8 hex digits of checksum (the first 4 bytes of SHA-256 of the key), so a
//! mistyped address is refused instead of sending funds nowhere. [`Keypair`] owns a secret
//! key that is zeroized on drop and never printed by `Debug`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::collections::FastMap;

/// Why a text form (hex, address) could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Wrong number of characters.
    #[error("expected {expected} characters, got {got}")]
    Length {
        /// Characters expected.
        expected: usize,
        /// Characters received.
        got: usize,
    },
    /// A character that is not a hex digit.
    #[error("not hex: {0}")]
    Hex(String),
    /// An address without the `gv` prefix.
    #[error("an address starts with \"gv\"")]
    Prefix,
    /// The address's checksum does not match its key: most likely a typo.
    #[error("address checksum mismatch (typo?)")]
    Checksum,
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    Hash(h.finalize().into())
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseError> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 2 * N {
        return Err(ParseError::Length {
            expected: 2 * N,
            got: s.len(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|e| ParseError::Hex(e.to_string()))?;
    Ok(out)
}

/// Serde for fixed-size byte newtypes: the text form in human-readable formats (JSON),
/// raw bytes (no length prefix) in the binary codec. The bytes pass through serde as a
/// tuple of little-endian u64 words, which the codec writes as their 8 bytes each
/// (fixed-width little-endian integers), so the encoding is the bytes themselves; word
/// by word, encoding and decoding make an eighth of the calls that byte by byte would,
/// on the node's busiest paths (every transaction carries three of these).
macro_rules! byte_newtype_serde {
    ($ty:ident, $n:expr) => {
        const _: () = assert!($n % 8 == 0, "whole u64 words");

        impl serde::Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    let mut t = s.serialize_tuple($n / 8)?;
                    for word in self.0.chunks_exact(8) {
                        t.serialize_element(&u64::from_le_bytes(
                            word.try_into().expect("chunks of 8 bytes"),
                        ))?;
                    }
                    t.end()
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} ({} bytes)", stringify!($ty), $n)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$ty, A::Error> {
                        let mut out = [0u8; $n];
                        for (i, word) in out.chunks_exact_mut(8).enumerate() {
                            let w: u64 = seq
                                .next_element()?
                                .ok_or_else(|| de::Error::invalid_length(i * 8, &self))?;
                            word.copy_from_slice(&w.to_le_bytes());
                        }
                        Ok($ty(out))
                    }
                }
                if d.is_human_readable() {
                    d.deserialize_str(V)
                } else {
                    d.deserialize_tuple($n / 8, V)
                }
            }
        }
    };
}

/// A SHA-256 digest. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash, used where no parent exists.
    pub const ZERO: Hash = Hash([0; 32]);
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &hex::encode(self.0)[..16])
    }
}

impl FromStr for Hash {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_hex(s).map(Hash)
    }
}

byte_newtype_serde!(Hash, 32);

/// An account address: the account's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 32]);

impl Address {
    /// The 4-byte checksum that the text form carries.
    fn checksum(&self) -> [u8; 4] {
        let h = sha256(&[&self.0]);
        [h.0[0], h.0[1], h.0[2], h.0[3]]
    }

    /// Parses 64 hex digits of a raw public key (no prefix, no checksum).
    pub fn from_public_key_hex(s: &str) -> Result<Self, ParseError> {
        parse_hex(s).map(Address)
    }

    /// The raw public key as 64 lowercase hex digits.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gv{}{}",
            hex::encode(self.0),
            hex::encode(self.checksum())
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self)
    }
}

impl FromStr for Address {
    type Err = ParseError;
    /// Accepts only the checksummed text form `gv<64 hex><8 hex>` (hex in any case).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let rest = s.strip_prefix("gv").ok_or(ParseError::Prefix)?;
        // ASCII first, so the slicing below is on character boundaries.
        if !rest.is_ascii() {
            return Err(ParseError::Hex("non-ASCII character".into()));
        }
        if rest.len() != 72 {
            return Err(ParseError::Length {
                expected: 74,
                got: s.len(),
            });
        }
        let key: [u8; 32] = parse_hex(&rest[..64])?;
        let sum: [u8; 4] = parse_hex(&rest[64..])?;
        let addr = Address(key);
        if addr.checksum() != sum {
            return Err(ParseError::Checksum);
        }
        Ok(addr)
    }
}

byte_newtype_serde!(Address, 32);

/// An ed25519 signature (R || S). Text form: 128 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", &hex::encode(self.0)[..16])
    }
}

impl FromStr for Signature {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_hex(s).map(Signature)
    }
}

byte_newtype_serde!(Signature, 64);

/// Verifies `sig` over `msg` by `signer` under the ZIP-215 rules (the cofactored
/// equation; S must be canonical; encodings of the key and R need not be), with one rule
/// added: the signer's key must be a curve point not of small order, since anyone can
/// sign for such a key. Batch verification ([`verify_batch`]) agrees with this on every
/// input, so a verdict of either is a property of the signature alone and may be
/// remembered.
pub fn verify(signer: &Address, msg: &[u8], sig: &Signature) -> bool {
    if key_points(std::slice::from_ref(signer)).is_none() {
        return false;
    }
    let Ok(key) = ed25519_zebra::VerificationKey::try_from(signer.0) else {
        return false;
    };
    key.verify(&ed25519_zebra::Signature::from_bytes(&sig.0), msg)
        .is_ok()
}

/// Verifies many signatures at once (ZIP-215 batch equation with random coefficients).
/// `true` exactly when [`verify`] accepts every one of them (a wrong `true` has
/// probability below 2^-120); `false` means at least one is invalid.
///
/// The equation and its checks are those of `ed25519_zebra::batch::Verifier`
/// ([`verify_batch_reference`], which the tests hold this to), with one difference:
/// signers' keys come from a memory of decompressed keys instead of being decompressed
/// in every batch. Decompressing a point costs about a third of a signature's share of
/// a batch, and a busy sender signs many transactions.
#[allow(non_snake_case)] // the names of the batch equation
pub fn verify_batch(msgs: &[&[u8]], signers: &[Address], sigs: &[Signature]) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT as B;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand::RngExt;

    if msgs.len() != signers.len() || msgs.len() != sigs.len() {
        return false;
    }
    let Some(points) = key_points(signers) else {
        return false;
    };
    // The batch equation, for signatures i with random 128-bit z_i:
    //   8 * ( -[sum z_i s_i] B + sum [z_i] R_i + sum [z_i k_i] A_i ) = 0
    // with the terms of one key A coalesced into one coefficient.
    let mut rng = rand::rng();
    let mut key_index: FastMap<[u8; 32], usize> = FastMap::default();
    let mut As = Vec::new();
    let mut A_coeffs: Vec<Scalar> = Vec::new();
    let mut Rs = Vec::with_capacity(sigs.len());
    let mut R_coeffs = Vec::with_capacity(sigs.len());
    let mut B_coeff = Scalar::ZERO;
    for (((msg, signer), sig), A) in msgs.iter().zip(signers).zip(sigs).zip(points) {
        let (r_bytes, s_bytes) = sig.0.split_at(32);
        let r_bytes: [u8; 32] = r_bytes.try_into().expect("32 of 64 bytes");
        let s_bytes: [u8; 32] = s_bytes.try_into().expect("32 of 64 bytes");
        let Some(R) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let k = challenge(&r_bytes, signer, msg);
        let z = Scalar::from(rng.random::<u128>());
        B_coeff -= z * s;
        Rs.push(R);
        R_coeffs.push(z);
        let j = *key_index.entry(signer.0).or_insert_with(|| {
            As.push(A);
            A_coeffs.push(Scalar::ZERO);
            As.len() - 1
        });
        A_coeffs[j] += z * k;
    }
    let check = curve25519_dalek::EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(&B_coeff).chain(&A_coeffs).chain(&R_coeffs),
        std::iter::once(&B).chain(&As).chain(&Rs),
    );
    check.mul_by_cofactor().is_identity()
}

/// The challenge `k = SHA-512(R || A || msg) mod l`, over R's and the key's bytes as
/// given (ZIP-215: a non-canonical encoding is hashed as it is, not re-encoded).
fn challenge(r_bytes: &[u8; 32], key: &Address, msg: &[u8]) -> curve25519_dalek::scalar::Scalar {
    curve25519_dalek::scalar::Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key.0)
            .chain_update(msg)
            .finalize()
            .into(),
    )
}

/// [`verify_batch`] by `ed25519_zebra::batch::Verifier` itself, which decompresses
/// every key in every batch: the library's batch verification, which `grapevine bench
/// ledger` reports as the signature ceiling (docs/PERFORMANCE.md), and the reference
/// the tests hold [`verify_batch`] to. Same verdicts.
pub fn verify_batch_reference(msgs: &[&[u8]], signers: &[Address], sigs: &[Signature]) -> bool {
    if msgs.len() != signers.len() || msgs.len() != sigs.len() {
        return false;
    }
    if !signers.iter().all(|s| point_of(s).is_some()) {
        return false;
    }
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for ((msg, signer), sig) in msgs.iter().zip(signers).zip(sigs) {
        batch.queue((
            ed25519_zebra::VerificationKeyBytes::from(signer.0),
            ed25519_zebra::Signature::from_bytes(&sig.0),
            *msg,
        ));
    }
    batch.verify(rand::rng()).is_ok()
}

/// Forgets every remembered key point (tests check batches with fresh keys).
#[cfg(test)]
fn forget_key_points() {
    *crate::memo::MEMO.key_points() = None;
}

/// The point of `key` when it is a usable key: the encoding of a curve point (under
/// ZIP-215, not necessarily canonical) that is not of small order.
fn point_of(key: &Address) -> Option<curve25519_dalek::EdwardsPoint> {
    curve25519_dalek::edwards::CompressedEdwardsY(key.0)
        .decompress()
        .filter(|p| !p.is_small_order())
}

/// The points of `keys` ([`point_of`], remembered in [`crate::memo`]), or `None` when one is
/// not a usable key.
fn key_points(keys: &[Address]) -> Option<Vec<curve25519_dalek::EdwardsPoint>> {
    let mut points: Vec<Option<curve25519_dalek::EdwardsPoint>> = {
        let g = crate::memo::MEMO.key_points();
        keys.iter()
            .map(|k| g.as_ref().and_then(|m| m.get(&k.0)).copied())
            .collect()
    };
    let mut found = Vec::new();
    for (key, point) in keys.iter().zip(&mut points) {
        if point.is_none() {
            let p = point_of(key)?;
            *point = Some(p);
            found.push((key.0, p));
        }
    }
    if !found.is_empty() {
        let mut g = crate::memo::MEMO.key_points();
        let m = g.get_or_insert_with(FastMap::default);
        for (k, p) in found {
            if m.len() >= crate::memo::KEY_POINTS_CAPACITY {
                m.clear();
            }
            m.insert(k, p);
        }
    }
    points.into_iter().collect()
}

/// An ed25519 key pair. The secret half is zeroized when dropped and never printed.
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut())?;
        Ok(Self::from_seed(&seed))
    }

    /// The key pair whose 32-byte RFC 8032 secret key is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Keypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// Parses a secret key written as 64 hex digits.
    pub fn from_secret_hex(s: &str) -> Result<Self, ParseError> {
        let seed = Zeroizing::new(parse_hex::<32>(s.trim())?);
        Ok(Self::from_seed(&seed))
    }

    /// The secret key as 64 hex digits: for key files only.
    pub fn secret_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.signing.as_bytes()))
    }

    /// An explicit copy of this key pair. `Keypair` is deliberately not `Clone`, so
    /// copies of a secret are visible in the code.
    pub fn duplicate(&self) -> Keypair {
        Keypair::from_seed(self.signing.as_bytes())
    }

    /// The address (public key) of this key pair.
    pub fn address(&self) -> Address {
        Address(self.signing.verifying_key().to_bytes())
    }

    /// Signs `msg` (RFC 8032 Ed25519, deterministic).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({}, secret: <redacted>)", self.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::codec;

    #[test]
    fn binary_encoding_is_the_raw_bytes() {
        let bytes: [u8; 64] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let h = Hash(bytes[..32].try_into().unwrap());
        let a = Address(bytes[32..].try_into().unwrap());
        let s = Signature(bytes);
        assert_eq!(codec::encode(&h), &bytes[..32]);
        assert_eq!(codec::encode(&a), &bytes[32..]);
        assert_eq!(codec::encode(&s), bytes);
        assert_eq!(codec::decode::<Hash>(&bytes[..32], 32), Ok(h));
        assert_eq!(codec::decode::<Address>(&bytes[32..], 32), Ok(a));
        assert_eq!(codec::decode::<Signature>(&bytes, 64), Ok(s));
        assert!(codec::decode::<Signature>(&bytes[..63], 64).is_err());
        assert!(
            codec::decode::<Hash>(&bytes[..33], 64).is_err(),
            "trailing byte"
        );
    }

    /// RFC 8032 section 7.1, tests 1 to 3: (secret, public, message, signature).
    const RFC8032: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn rfc8032_vectors() {
        for (sk, pk, msg, sig) in RFC8032 {
            let kp = Keypair::from_secret_hex(sk).unwrap();
            assert_eq!(kp.address().public_key_hex(), pk);
            let msg = hex::decode(msg).unwrap();
            let s = kp.sign(&msg);
            assert_eq!(s.to_string(), sig);
            assert!(verify(&kp.address(), &msg, &s));
            let mut bad = s;
            bad.0[5] ^= 1;
            assert!(!verify(&kp.address(), &msg, &bad));
        }
    }

    /// Our batch check (keys from the memory, coefficients coalesced per key) against
    /// the library's and the single check, on batches with repeated keys, one bad
    /// member of each kind (body, R, S, non-canonical S, key), and the keys both fresh
    /// and remembered. Batches of 40 and 300: the library's multiscalar multiplication
    /// takes another algorithm from 190 points on, and each has its own code in every
    /// backend (portable, AVX2, AVX-512 IFMA).
    #[test]
    fn batch_agrees_with_the_library_batch_and_the_single_check() {
        for n in [40, 300] {
            batch_agreement(n);
        }
    }

    fn batch_agreement(n: usize) {
        use curve25519_dalek::scalar::Scalar;
        let kps: Vec<Keypair> = (0..7u8)
            .map(|i| Keypair::from_seed(&[i + 100; 32]))
            .collect();
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 3 + i % 5]).collect();
        let addrs: Vec<Address> = (0..n).map(|i| kps[i % 7].address()).collect();
        let good: Vec<Signature> = (0..n).map(|i| kps[i % 7].sign(&msgs[i])).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        // (signers, signatures, messages); the first is all good.
        type Case<'a> = (Vec<Address>, Vec<Signature>, Vec<&'a [u8]>);
        let mut cases: Vec<Case> = vec![(addrs.clone(), good.clone(), refs.clone())];
        let mut bad_body = refs.clone();
        bad_body[17] = b"not what was signed";
        cases.push((addrs.clone(), good.clone(), bad_body));
        for (at, byte) in [(3usize, 0usize), (21, 40)] {
            let mut sigs = good.clone();
            sigs[at].0[byte] ^= 4;
            cases.push((addrs.clone(), sigs, refs.clone()));
        }
        // S + l: the same value, not canonical; ZIP-215 refuses it.
        let mut sigs = good.clone();
        let s = Scalar::from_canonical_bytes(sigs[9].0[32..].try_into().unwrap()).unwrap();
        let l_plus_s = (num_add_l(s.to_bytes())).to_vec();
        sigs[9].0[32..].copy_from_slice(&l_plus_s);
        cases.push((addrs.clone(), sigs, refs.clone()));
        let mut wrong_key = addrs.clone();
        wrong_key[30] = kps[(30 + 1) % 7].address();
        cases.push((wrong_key, good.clone(), refs.clone()));
        // Two errors that cancel without the random coefficients: S + 1 in one
        // signature, S - 1 in another.
        let mut sigs = good.clone();
        for (at, delta) in [(5usize, Scalar::ONE), (26, -Scalar::ONE)] {
            let s = Scalar::from_canonical_bytes(sigs[at].0[32..].try_into().unwrap()).unwrap();
            sigs[at].0[32..].copy_from_slice((s + delta).as_bytes());
        }
        cases.push((addrs.clone(), sigs, refs.clone()));
        for (case, (a, sg, m)) in cases.iter().enumerate() {
            // First with no key remembered, then with every key remembered.
            forget_key_points();
            let batch = verify_batch(m, a, sg);
            let single = (0..n).all(|i| verify(&a[i], m[i], &sg[i]));
            assert_eq!(single, case == 0, "case {case}, n {n}");
            assert_eq!(batch, single, "case {case}, n {n}, keys fresh");
            assert_eq!(
                verify_batch(m, a, sg),
                single,
                "case {case}, n {n}, keys remembered"
            );
            assert_eq!(
                verify_batch_reference(m, a, sg),
                single,
                "case {case}, n {n}"
            );
        }
        assert!(verify_batch(&[], &[], &[]));
        assert!(!verify_batch(&refs[..2], &addrs[..1], &good[..2]));
    }

    /// `s + l` as 32 little-endian bytes (l is the group order; it fits for the
    /// signatures of these tests, whose top byte is small).
    fn num_add_l(s: [u8; 32]) -> [u8; 32] {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(L[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        out
    }

    /// R encoded non-canonically (y = p, meaning y = 0: a point of order 4) with a
    /// signature valid under ZIP-215's cofactored equation: k must be hashed over R's
    /// bytes as given, not over a re-encoding.
    #[test]
    fn a_non_canonical_r_is_hashed_as_given() {
        use curve25519_dalek::constants::ED25519_BASEPOINT_POINT as B;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        let mut r_bytes = [0xffu8; 32];
        r_bytes[0] = 0xed;
        r_bytes[31] = 0x7f;
        let r = CompressedEdwardsY(r_bytes)
            .decompress()
            .expect("y = p decodes");
        assert_ne!(
            r.compress().to_bytes(),
            r_bytes,
            "not the canonical encoding"
        );
        let a = Scalar::from_bytes_mod_order([11; 32]);
        let key = Address((a * B).compress().to_bytes());
        let msg = b"grapevine non-canonical R".to_vec();
        let k = challenge(&r_bytes, &key, &msg);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((k * a).as_bytes());
        let sig = Signature(sig);
        assert!(verify(&key, &msg, &sig));
        let other = Keypair::from_seed(&[12; 32]);
        let (msgs, keys) = ([msg.as_slice(), b"x"], [key, other.address()]);
        let sigs = [sig, other.sign(b"x")];
        for _ in 0..10 {
            assert!(verify_batch(&msgs, &keys, &sigs));
            assert!(verify_batch_reference(&msgs, &keys, &sigs));
        }
    }

    #[test]
    fn batch_agrees_with_single_verification() {
        let kps: Vec<Keypair> = (0..5u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<Signature> = kps.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        let addrs: Vec<Address> = kps.iter().map(Keypair::address).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert!(verify_batch(&refs, &addrs, &sigs));
        sigs[3].0[0] ^= 1;
        assert!(!verify_batch(&refs, &addrs, &sigs));
    }

    /// A signature whose R carries a small-order component: valid under the cofactored
    /// equation, invalid under the cofactorless one. The single and the batch check
    /// must agree on it whatever it is batched with.
    #[test]
    fn torsioned_r_gets_the_same_verdict_alone_and_in_any_batch() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        let a = Scalar::from_bytes_mod_order([7; 32]);
        let key = Address((a * B).compress().to_bytes());
        let msg = b"grapevine torsion".to_vec();
        let r = Scalar::from_bytes_mod_order([9; 32]);
        let big_r = (r * B + EIGHT_TORSION[1]).compress().to_bytes();
        let k = challenge(&big_r, &key, &msg);
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(s.as_bytes());
        let sig = Signature(sig);
        assert!(verify(&key, &msg, &sig));
        let kps: Vec<Keypair> = (0..3u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let mut addrs: Vec<Address> = kps.iter().map(Keypair::address).collect();
        let mut sigs: Vec<Signature> = kps.iter().map(|kp| kp.sign(&msg)).collect();
        addrs.push(key);
        sigs.push(sig);
        let refs = vec![msg.as_slice(); 4];
        for _ in 0..20 {
            assert!(verify_batch(&refs, &addrs, &sigs));
            assert!(verify_batch(&refs[3..], &addrs[3..], &sigs[3..]));
            assert!(verify_batch_reference(&refs, &addrs, &sigs));
        }
    }

    /// Anyone can sign for a small-order key (here the identity, with R the identity
    /// and S zero): such keys are refused, alone and in batches.
    #[test]
    fn small_order_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = Address(identity);
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let sig = Signature(sig);
        assert!(!verify(&key, b"anything", &sig));
        assert!(!verify_batch(&[b"anything"], &[key], &[sig]));
        let kp = Keypair::from_seed(&[1; 32]);
        let good = kp.sign(b"x");
        assert!(!verify_batch(
            &[b"x", b"anything"],
            &[kp.address(), key],
            &[good, sig]
        ));
    }

    #[test]
    fn address_text_form_round_trips_and_catches_typos() {
        let a = Keypair::from_seed(&[7; 32]).address();
        let text = a.to_string();
        assert_eq!(text.len(), 74);
        assert!(text.starts_with("gv"));
        assert_eq!(text.parse::<Address>(), Ok(a));
        assert_eq!(text.to_uppercase().replacen("GV", "gv", 1).parse(), Ok(a));
        let mut typo = text.clone().into_bytes();
        typo[10] = if typo[10] == b'0' { b'1' } else { b'0' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(typo.parse::<Address>(), Err(ParseError::Checksum));
        assert_eq!(text[2..].parse::<Address>(), Err(ParseError::Prefix));
        assert!(text[..70].parse::<Address>().is_err());
        let multibyte = format!("gv{}é{}", "a".repeat(63), "a".repeat(7));
        assert!(
            multibyte.parse::<Address>().is_err(),
            "no panic on a multi-byte character"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let kp = Keypair::from_seed(&[9; 32]);
        let secret = kp.secret_hex();
        let dbg = format!("{kp:?}");
        assert!(!dbg.contains(secret.as_str()));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn json_uses_text_forms() {
        let a = Keypair::from_seed(&[1; 32]).address();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), a);
        assert_eq!(crate::codec::encode(&a), a.0.to_vec());
    }
}
