//! Consensus and block sync messages from untrusted bytes, decoded as the node decodes
//! them, then checked as the node checks them against a fixed set of four validators.
//!
//! The same bytes are tried as each decoder's input:
//! - `ConsensusMsg` (`codec::decode`, `MAX_CONSENSUS_BYTES`: node/src/driver/mod.rs),
//!   then `verify_signed` / `verify` as the driver does before relaying, and the
//!   certificates' `verify` as the engine does;
//! - `SyncMsg` (same limit: node/src/driver/serve.rs); a `Blocks` answer goes through
//!   `Syncer::on_blocks` with `Certificate::verify`, then `Syncer::ready`, as in the
//!   driver;
//! - `Certificate::from_bytes` (`MAX_CERTIFICATE_BYTES`) and a kept `Proposal`
//!   (`MAX_CONSENSUS_BYTES`): read from disk, not from peers, but the same types.
//!
//! Random bytes never carry a valid signature, so each decoded message is also checked
//! once more with every signature replaced by the fixed validator's real one: then the
//! verdict depends only on the message's structure, and is compared with what
//! docs/CONSENSUS.md promises (a quorum of distinct known voters, a proposal signed by
//! its proposer, a validator).
#![no_main]

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Instant;

use grapevine_consensus::sync::{SyncMsg, Syncer};
use grapevine_consensus::types::{
    Certificate, ConsensusMsg, Proposal, QuorumCert, TimeoutCert, ValidatorSet, proposal_bytes,
    timeout_bytes, vote_bytes,
};
use grapevine_ledger::codec;
use grapevine_ledger::{Address, BlockHeader, Hash, Keypair};
use grapevine_net::network::MAX_CONSENSUS_BYTES;
use libfuzzer_sys::fuzz_target;

const CHAIN_ID: u32 = 7;
const GENESIS_BLOCK: Hash = Hash([9; 32]);
/// Most signatures made for one input (signing and checking cost ~70 µs each).
const SIGNING_BUDGET: usize = 24;

/// Validators 0..4 from fixed seeds.
static KEYS: LazyLock<Vec<Keypair>> =
    LazyLock::new(|| (1..=4u8).map(|i| Keypair::from_seed(&[i; 32])).collect());

/// One set for every input: its memory of valid signatures holds only valid triples, so
/// verdicts do not depend on earlier inputs (and a set per input would allocate the
/// memory's 100,000 entries each time).
static SET: LazyLock<ValidatorSet> =
    LazyLock::new(|| ValidatorSet::new(KEYS.iter().map(Keypair::address).collect(), CHAIN_ID));

fuzz_target!(|data: &[u8]| {
    let set = &*SET;
    let limit = MAX_CONSENSUS_BYTES as u64;
    if let Ok(m) = codec::decode::<ConsensusMsg>(data, limit) {
        assert_eq!(codec::encode(&m), data, "canonical encoding");
        check_consensus(&m, set);
        let mut budget = SIGNING_BUDGET;
        let mut m = m;
        resign_consensus(&mut m, &mut budget);
        if budget > 0 {
            check_consensus_oracle(&m, set);
        }
    }
    if let Ok(s) = codec::decode::<SyncMsg>(data, limit) {
        assert_eq!(codec::encode(&s), data, "canonical encoding");
        sync(s.clone(), set);
        if let SyncMsg::Blocks { id, mut blocks } = s {
            let mut budget = SIGNING_BUDGET;
            for (_, cert) in &mut blocks {
                resign_certificate(cert, &mut budget);
            }
            sync(SyncMsg::Blocks { id, blocks }, set);
        }
    }
    if let Ok(c) = Certificate::from_bytes(data) {
        assert_eq!(c.to_bytes(), data, "canonical encoding");
        // Served as stored (node/src/driver/serve.rs); its parts verify as in a sync
        // answer, which `sync` below checks against the block.
        let _ = c.qc.verify(set, &GENESIS_BLOCK);
        if let Some((child, child_qc)) = &c.commit {
            let _ = child_qc.verify(set, &GENESIS_BLOCK);
            let _ = child.hash();
        }
    }
    if let Ok(p) = codec::decode::<Proposal>(data, limit) {
        assert_eq!(codec::encode(&p), data, "canonical encoding");
        let _ = p.verify_signed(set);
    }
});

/// The driver's check before relaying, then the engine's checks of certificates.
fn check_consensus(m: &ConsensusMsg, set: &ValidatorSet) {
    match m {
        ConsensusMsg::Proposal(p) => {
            let _ = p.verify_signed(set);
            let _ = p.qc.verify(set, &GENESIS_BLOCK);
            if let Some(tc) = &p.tc {
                let _ = tc.verify(set);
                let _ = tc.high_qc_round();
            }
            let _ = p.block.hash();
        }
        ConsensusMsg::Vote(v) => {
            let _ = v.verify(set);
        }
        ConsensusMsg::Timeout(t) => {
            let _ = t.verify_signed(set);
            let _ = t.high_qc.verify(set, &GENESIS_BLOCK);
        }
        ConsensusMsg::BlockRequest(_) => {}
        ConsensusMsg::Sync { qc, tc } => {
            let _ = qc.verify(set, &GENESIS_BLOCK);
            if let Some(tc) = tc {
                let _ = tc.verify(set);
            }
        }
    }
}

/// After [`resign_consensus`]: every verdict is the structural one.
fn check_consensus_oracle(m: &ConsensusMsg, set: &ValidatorSet) {
    match m {
        ConsensusMsg::Proposal(p) => {
            let r = p.round();
            let want = set.index_of(&p.block.header.proposer).is_some()
                && r > p.qc.round
                && p.block.header.parent_hash == p.qc.block_hash
                && p.tc.as_ref().is_none_or(|tc| tc.round.checked_add(1) == Some(r));
            assert_eq!(p.verify_signed(set), want, "proposal {p:?}");
            assert_eq!(p.qc.verify(set, &GENESIS_BLOCK), qc_ok(&p.qc, set));
            if let Some(tc) = &p.tc {
                assert_eq!(tc.verify(set), tc_ok(tc, set));
            }
        }
        ConsensusMsg::Vote(v) => {
            assert_eq!(v.verify(set), usize::from(v.voter) < set.len(), "{v:?}");
        }
        ConsensusMsg::Timeout(t) => {
            assert_eq!(t.verify_signed(set), usize::from(t.voter) < set.len());
            assert_eq!(t.high_qc.verify(set, &GENESIS_BLOCK), qc_ok(&t.high_qc, set));
        }
        ConsensusMsg::BlockRequest(_) => {}
        ConsensusMsg::Sync { qc, tc } => {
            assert_eq!(qc.verify(set, &GENESIS_BLOCK), qc_ok(qc, set), "{qc:?}");
            if let Some(tc) = tc {
                assert_eq!(tc.verify(set), tc_ok(tc, set), "{tc:?}");
            }
        }
    }
}

/// What a QC with real signatures must verify to: the genesis QC, or a quorum of
/// distinct known voters.
fn qc_ok(qc: &QuorumCert, set: &ValidatorSet) -> bool {
    if qc.round == 0 {
        return qc.block_hash == GENESIS_BLOCK && qc.votes.is_empty();
    }
    distinct_known_quorum(qc.votes.iter().map(|(i, _)| *i), set)
}

/// What a TC with real signatures must verify to: a quorum of distinct known voters.
fn tc_ok(tc: &TimeoutCert, set: &ValidatorSet) -> bool {
    distinct_known_quorum(tc.timeouts.iter().map(|(i, _, _)| *i), set)
}

fn distinct_known_quorum(voters: impl Iterator<Item = u16>, set: &ValidatorSet) -> bool {
    let mut seen = HashSet::new();
    for i in voters {
        if usize::from(i) >= set.len() || !seen.insert(i) {
            return false;
        }
    }
    seen.len() >= set.quorum()
}

/// The real signature of validator `i` over `msg`, if `i` is one and the budget lasts;
/// `budget` is zeroed when it runs out (the caller then skips the oracle).
fn sign(i: u16, msg: &[u8], budget: &mut usize) -> Option<grapevine_ledger::Signature> {
    let key = KEYS.get(usize::from(i))?;
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    if *budget == 0 {
        // Out of budget: this message may keep unsigned members; mark it unusable.
        return None;
    }
    Some(key.sign(msg))
}

fn resign_qc(qc: &mut QuorumCert, budget: &mut usize) {
    let msg = vote_bytes(CHAIN_ID, qc.round, &qc.block_hash);
    for (i, s) in &mut qc.votes {
        if let Some(sig) = sign(*i, &msg, budget) {
            *s = sig;
        }
    }
}

fn resign_tc(tc: &mut TimeoutCert, budget: &mut usize) {
    // The verifier checks each voter's signature against the high-QC round of that
    // voter's first entry; duplicates fail the distinctness check before that matters.
    for (i, hq, s) in &mut tc.timeouts {
        if let Some(sig) = sign(*i, &timeout_bytes(CHAIN_ID, tc.round, *hq), budget) {
            *s = sig;
        }
    }
}

fn resign_certificate(c: &mut Certificate, budget: &mut usize) {
    resign_qc(&mut c.qc, budget);
    if let Some((_, child_qc)) = &mut c.commit {
        resign_qc(child_qc, budget);
    }
}

fn resign_consensus(m: &mut ConsensusMsg, budget: &mut usize) {
    match m {
        ConsensusMsg::Proposal(p) => {
            // Signed by its proposer when that is a validator (whether it leads the
            // round is the engine's check, not the message's).
            if let Some(proposer) = SET.index_of(&p.block.header.proposer)
                && let Some(sig) = sign(proposer, &proposal_bytes(CHAIN_ID, &p.block.hash()), budget)
            {
                p.signature = sig;
            }
            resign_qc(&mut p.qc, budget);
            if let Some(tc) = &mut p.tc {
                resign_tc(tc, budget);
            }
        }
        ConsensusMsg::Vote(v) => {
            if let Some(sig) = sign(v.voter, &vote_bytes(CHAIN_ID, v.round, &v.block_hash), budget)
            {
                v.signature = sig;
            }
        }
        ConsensusMsg::Timeout(t) => {
            let msg = timeout_bytes(CHAIN_ID, t.round, t.high_qc.round);
            if let Some(sig) = sign(t.voter, &msg, budget) {
                t.signature = sig;
            }
            resign_qc(&mut t.high_qc, budget);
        }
        ConsensusMsg::BlockRequest(_) => {}
        ConsensusMsg::Sync { qc, tc } => {
            resign_qc(qc, budget);
            if let Some(tc) = tc {
                resign_tc(tc, budget);
            }
        }
    }
}

/// The driver's handling of a sync message from one peer, on a fresh syncer that has
/// asked that peer for blocks 1.. (so a `Blocks` answer with id 0 is solicited).
fn sync(msg: SyncMsg, set: &ValidatorSet) {
    let peer = Address([1; 32]);
    let genesis = BlockHeader {
        height: 0,
        round: 0,
        parent_hash: Hash::ZERO,
        proposer: Address::default(),
        timestamp_ms: 0,
        tx_count: 0,
        tx_root: Hash::ZERO,
        state_root: Hash::ZERO,
    };
    let now = Instant::now();
    let mut syncer = Syncer::default();
    syncer.on_status(peer, 1_000);
    let asked = syncer.poll(genesis.height, now);
    assert!(!asked.is_empty(), "a syncer 1,000 blocks behind asks");
    match msg {
        SyncMsg::Status { final_height, .. } => {
            syncer.on_status(peer, final_height);
            let _ = syncer.poll(genesis.height, now);
            let _ = syncer.progress(genesis.height, now);
        }
        SyncMsg::Blocks { id, blocks } => {
            for (b, c) in &blocks {
                let _ = c.verify(&b.header, set, &GENESIS_BLOCK);
            }
            let res = syncer.on_blocks(peer, id, blocks, |h, c| c.verify(h, set, &GENESIS_BLOCK));
            if res.is_ok() {
                for (b, _, from) in syncer.ready(&genesis) {
                    assert_eq!(from, peer);
                    assert!(b.header.height > genesis.height);
                }
            }
            let _ = syncer.poll(genesis.height, now);
        }
        SyncMsg::GetBlocks { .. } | SyncMsg::BlockRequest { .. } => {}
    }
}
