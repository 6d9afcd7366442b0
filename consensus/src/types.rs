//! Consensus messages, certificates and the validator set, each with its own
//! verification. See docs/CONSENSUS.md.

use std::collections::HashSet;

use grapevine_ledger::codec;
use grapevine_ledger::collections::RecentSet;
use grapevine_ledger::crypto::verify;
use grapevine_ledger::{Address, Block, BlockHeader, Hash, Keypair, Signature};
use serde::{Deserialize, Serialize};

/// Domain tags, one per signed message kind.
pub const PROPOSAL_TAG: &[u8] = b"grapevine/proposal/v1";
/// See [`PROPOSAL_TAG`].
pub const VOTE_TAG: &[u8] = b"grapevine/vote/v1";
/// See [`PROPOSAL_TAG`].
pub const TIMEOUT_TAG: &[u8] = b"grapevine/timeout/v1";

/// A validator's position in the genesis list.
pub type ValidatorIndex = u16;

/// Signatures already found valid, shared by the clones of one [`ValidatorSet`]: the
/// driver checks a message before relaying it and the engine checks it again, and a
/// vote or timeout reaches a node inside many certificates.
#[derive(Debug)]
struct VerifiedCache(std::sync::Mutex<RecentSet>);

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache(std::sync::Mutex::new(RecentSet::new(
            VERIFIED_CACHE_CAPACITY,
        )))
    }
}

/// Entries per generation of the cache (bounded memory).
const VERIFIED_CACHE_CAPACITY: usize = 100_000;

/// The fixed validator set from genesis.
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    keys: Vec<Address>,
    chain_id: u32,
    verified: std::sync::Arc<VerifiedCache>,
}

impl ValidatorSet {
    /// The set of `keys` (in leader order) for `chain_id`.
    pub fn new(keys: Vec<Address>, chain_id: u32) -> Self {
        ValidatorSet {
            keys,
            chain_id,
            verified: std::sync::Arc::default(),
        }
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no validators (no genesis allows that).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Signatures that make a quorum: 2f + 1 with f = (n - 1) / 3.
    pub fn quorum(&self) -> usize {
        2 * ((self.keys.len().saturating_sub(1)) / 3) + 1
    }

    /// Round-robin leader of `round`: the leader while the chain is shorter than the
    /// reputation window ([`crate::leader`]), and the one tests script against.
    pub fn round_robin(&self, round: u64) -> ValidatorIndex {
        crate::leader::round_robin(self, round)
    }

    /// Key of validator `i`.
    pub fn key(&self, i: ValidatorIndex) -> Option<&Address> {
        self.keys.get(usize::from(i))
    }

    /// Index of `key`, if a validator.
    pub fn index_of(&self, key: &Address) -> Option<ValidatorIndex> {
        self.keys
            .iter()
            .position(|k| k == key)
            .and_then(|i| ValidatorIndex::try_from(i).ok())
    }

    /// The chain id signatures are bound to.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// Whether validator `i` signed `msg`. Remembers valid signatures (by a hash of
    /// key, message and signature, so only the same triple hits).
    fn check(&self, i: ValidatorIndex, msg: &[u8], sig: &Signature) -> bool {
        let Some(k) = self.key(i) else {
            return false;
        };
        let id = grapevine_ledger::crypto::sha256(&[&k.0, &sig.0, msg]);
        let mut cache = self.verified.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.contains(&id) {
            return true;
        }
        drop(cache);
        let ok = verify(k, msg, sig);
        if ok {
            cache = self.verified.0.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(id, ());
        }
        ok
    }
}

/// Bytes a vote signs.
pub fn vote_bytes(chain_id: u32, round: u64, block: &Hash) -> Vec<u8> {
    [
        VOTE_TAG,
        &chain_id.to_le_bytes(),
        &round.to_le_bytes(),
        &block.0,
    ]
    .concat()
}

/// Bytes a timeout signs.
pub fn timeout_bytes(chain_id: u32, round: u64, high_qc_round: u64) -> Vec<u8> {
    [
        TIMEOUT_TAG,
        &chain_id.to_le_bytes(),
        &round.to_le_bytes(),
        &high_qc_round.to_le_bytes(),
    ]
    .concat()
}

/// Bytes a proposal signs.
pub fn proposal_bytes(chain_id: u32, block: &Hash) -> Vec<u8> {
    [PROPOSAL_TAG, &chain_id.to_le_bytes(), &block.0].concat()
}

/// A quorum of votes on one block in one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCert {
    /// The round of the certified block.
    pub round: u64,
    /// The certified block.
    pub block_hash: Hash,
    /// (voter, signature over [`vote_bytes`]).
    pub votes: Vec<(ValidatorIndex, Signature)>,
}

impl QuorumCert {
    /// The certificate of block 0: round 0, no signatures needed.
    pub fn genesis(genesis_block: Hash) -> Self {
        QuorumCert {
            round: 0,
            block_hash: genesis_block,
            votes: Vec::new(),
        }
    }

    /// Whether it holds a quorum of distinct, valid votes (or is the genesis QC of
    /// `genesis_block`).
    pub fn verify(&self, set: &ValidatorSet, genesis_block: &Hash) -> bool {
        if self.round == 0 {
            return self.block_hash == *genesis_block && self.votes.is_empty();
        }
        let msg = vote_bytes(set.chain_id(), self.round, &self.block_hash);
        distinct_quorum(set, self.votes.iter().map(|(i, s)| (*i, s)), |i, s| {
            set.check(i, &msg, s)
        })
    }
}

fn distinct_quorum<'a>(
    set: &ValidatorSet,
    sigs: impl Iterator<Item = (ValidatorIndex, &'a Signature)>,
    ok: impl Fn(ValidatorIndex, &Signature) -> bool,
) -> bool {
    let mut seen = HashSet::new();
    for (i, s) in sigs {
        if !seen.insert(i) || !ok(i, s) {
            return false;
        }
    }
    seen.len() >= set.quorum()
}

/// A quorum of timeouts for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutCert {
    /// The round that timed out.
    pub round: u64,
    /// (voter, its highest QC round, signature over [`timeout_bytes`]).
    pub timeouts: Vec<(ValidatorIndex, u64, Signature)>,
}

impl TimeoutCert {
    /// The largest highest-QC round among the timeouts.
    pub fn high_qc_round(&self) -> u64 {
        self.timeouts.iter().map(|(_, r, _)| *r).max().unwrap_or(0)
    }

    /// Whether it holds a quorum of distinct, valid timeouts.
    pub fn verify(&self, set: &ValidatorSet) -> bool {
        let round = self.round;
        distinct_quorum(
            set,
            self.timeouts.iter().map(|(i, _, s)| (*i, s)),
            |i, s| {
                self.timeouts
                    .iter()
                    .find(|(j, _, _)| *j == i)
                    .is_some_and(|(_, hq, _)| {
                        set.check(i, &timeout_bytes(set.chain_id(), round, *hq), s)
                    })
            },
        )
    }
}

/// A leader's proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The block; `header.round` is the proposal's round, `header.parent_hash` the block
    /// `qc` certifies.
    pub block: Block,
    /// Certificate of the parent.
    pub qc: QuorumCert,
    /// Timeout certificate of the previous round, when the leader entered by one.
    pub tc: Option<TimeoutCert>,
    /// The leader's signature over [`proposal_bytes`].
    pub signature: Signature,
}

impl Proposal {
    /// The proposal's round.
    pub fn round(&self) -> u64 {
        self.block.header.round
    }

    /// Signs `block` as validator `key`.
    pub fn new(
        block: Block,
        qc: QuorumCert,
        tc: Option<TimeoutCert>,
        key: &Keypair,
        chain_id: u32,
    ) -> Self {
        let signature = key.sign(&proposal_bytes(chain_id, &block.hash()));
        Proposal {
            block,
            qc,
            tc,
            signature,
        }
    }

    /// Signed by the block's proposer, a validator, and the block extends the QC's
    /// block. Whether the proposer leads the round is the engine's check
    /// (`Engine::leader_for`: it needs the chain); the certificates' signatures are
    /// checked separately.
    pub fn verify_signed(&self, set: &ValidatorSet) -> bool {
        let r = self.round();
        let key = &self.block.header.proposer;
        set.index_of(key).is_some()
            && r > self.qc.round
            && self.block.header.parent_hash == self.qc.block_hash
            && self
                .tc
                .as_ref()
                .is_none_or(|tc| tc.round.checked_add(1) == Some(r))
            && verify(
                key,
                &proposal_bytes(set.chain_id(), &self.block.hash()),
                &self.signature,
            )
    }
}

/// A vote, sent to the next round's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The round voted in.
    pub round: u64,
    /// The block voted for.
    pub block_hash: Hash,
    /// The voter.
    pub voter: ValidatorIndex,
    /// Signature over [`vote_bytes`].
    pub signature: Signature,
}

impl Vote {
    /// Whether the voter signed it.
    pub fn verify(&self, set: &ValidatorSet) -> bool {
        set.check(
            self.voter,
            &vote_bytes(set.chain_id(), self.round, &self.block_hash),
            &self.signature,
        )
    }
}

/// A timeout, broadcast to everyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeout {
    /// The round that timed out.
    pub round: u64,
    /// The sender's highest QC.
    pub high_qc: QuorumCert,
    /// The sender.
    pub voter: ValidatorIndex,
    /// Signature over [`timeout_bytes`] with `high_qc.round`.
    pub signature: Signature,
}

impl Timeout {
    /// The voter's signature only (the QC checked separately).
    pub fn verify_signed(&self, set: &ValidatorSet) -> bool {
        set.check(
            self.voter,
            &timeout_bytes(set.chain_id(), self.round, self.high_qc.round),
            &self.signature,
        )
    }
}

/// Everything consensus sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsensusMsg {
    /// A leader's proposal.
    Proposal(Box<Proposal>),
    /// A vote.
    Vote(Vote),
    /// A timeout.
    Timeout(Box<Timeout>),
    /// Asks for the proposal of a block this node is missing.
    BlockRequest(Hash),
    /// Certificates for a node that lags behind: its highest QC and the TC that moved
    /// the sender into its round. Unsigned: certificates verify themselves.
    Sync {
        /// The sender's highest QC.
        qc: QuorumCert,
        /// The TC of the sender's previous round, if it entered its round by one.
        tc: Option<TimeoutCert>,
    },
}

/// What a validator must never lose: written durably before a vote or timeout leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    /// The last round this validator voted or timed out in.
    pub last_voted_round: u64,
    /// The highest QC it knows.
    pub high_qc: QuorumCert,
}

/// Largest encoded [`Certificate`] accepted (ample for thousands of validators).
pub const MAX_CERTIFICATE_BYTES: u64 = 1 << 20;

/// The proof of finality stored with every final block, so that any node can prove a
/// block final to another (docs/CONSENSUS.md, "Certificates").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// A quorum certificate on this block.
    pub qc: QuorumCert,
    /// For the block a commit ended at: its child, proposed one round later, and the
    /// child's QC (the two-chain rule). `None` for the blocks committed with it as its
    /// ancestors: their finality follows from that descendant through parent hashes.
    pub commit: Option<(BlockHeader, QuorumCert)>,
}

impl Certificate {
    /// Whether `qc` is a valid quorum on `block` (its hash and round) and, when
    /// present, the commit proof is a valid two-chain on it. A certificate without a
    /// commit proof shows the block certified; its finality needs a final descendant.
    pub fn verify(&self, block: &BlockHeader, set: &ValidatorSet, genesis_block: &Hash) -> bool {
        let hash = block.hash();
        self.qc.block_hash == hash
            && self.qc.round == block.round
            && self.qc.round > 0
            && self.qc.verify(set, genesis_block)
            && self.commit.as_ref().is_none_or(|(child, child_qc)| {
                child.parent_hash == hash
                    && block.height.checked_add(1) == Some(child.height)
                    && block.round.checked_add(1) == Some(child.round)
                    && child_qc.block_hash == child.hash()
                    && child_qc.round == child.round
                    && child_qc.verify(set, genesis_block)
            })
    }

    /// The encoding stored next to the block.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a stored or received certificate (bounded, no trailing bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_CERTIFICATE_BYTES)
    }
}
