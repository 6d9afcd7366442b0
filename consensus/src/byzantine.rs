//! The engine against one Byzantine validator's signed messages: what it holds stays
//! bounded, equivocation is reported once, and nothing it sends is kept before it is
//! checked. (The simulator covers liveness and safety with an equivocating twin.)

use grapevine_ledger::seeded::SeededRng;
use grapevine_ledger::{Block, BlockHeader, Hash, Keypair};

use crate::engine::{
    Action, Engine, Evidence, MAX_HEIGHTS_AHEAD, MAX_ROUNDS_AHEAD, MAX_WAITING, MAX_WAITING_BYTES,
    Timing,
};
use crate::types::{
    ConsensusMsg, Proposal, QuorumCert, SafetyState, TimeoutCert, Vote, timeout_bytes, vote_bytes,
};
use crate::types::{ValidatorIndex, ValidatorSet};

const CHAIN: u32 = 7;

struct Net {
    keys: Vec<Keypair>,
    set: ValidatorSet,
    genesis: Block,
}

impl Net {
    fn new() -> Net {
        let keys: Vec<Keypair> = (1..=4u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
        let set = ValidatorSet::new(keys.iter().map(Keypair::address).collect(), CHAIN);
        let genesis = crate::sim::genesis_block();
        Net { keys, set, genesis }
    }

    /// Validator `me`'s engine, started, its first actions drained.
    fn engine(&self, me: ValidatorIndex) -> Engine {
        let mut e = Engine::new(
            self.set.clone(),
            Some((me, self.keys[usize::from(me)].duplicate())),
            self.genesis.hash(),
            self.genesis.clone(),
            SafetyState {
                last_voted_round: 0,
                high_qc: QuorumCert::genesis(self.genesis.hash()),
            },
            Timing::default(),
            crate::leader::History::new(self.set.clone(), &self.genesis.header),
        );
        e.start(0);
        drain(&mut e);
        e
    }

    fn block(&self, parent: &Block, round: u64, height: u64, salt: u8) -> Block {
        Block {
            header: BlockHeader {
                height,
                round,
                parent_hash: parent.hash(),
                proposer: self.keys[usize::from(self.set.round_robin(round))].address(),
                timestamp_ms: round,
                tx_count: 0,
                tx_root: Hash::ZERO,
                state_root: Hash([salt; 32]),
            },
            txs: vec![],
        }
    }

    /// Round `round`'s leader's proposal of `block` on the genesis QC.
    fn proposal(&self, block: Block, qc: QuorumCert, tc: Option<TimeoutCert>) -> Proposal {
        let leader = usize::from(self.set.round_robin(block.header.round));
        Proposal::new(block, qc, tc, &self.keys[leader], CHAIN)
    }

    fn vote(&self, voter: ValidatorIndex, round: u64, block: Hash) -> Vote {
        Vote {
            round,
            block_hash: block,
            voter,
            signature: self.keys[usize::from(voter)].sign(&vote_bytes(CHAIN, round, &block)),
        }
    }

    /// A QC on `block` in `round` signed by validators 0..3.
    fn qc(&self, round: u64, block: Hash) -> QuorumCert {
        QuorumCert {
            round,
            block_hash: block,
            votes: (0..3u16)
                .map(|i| (i, self.vote(i, round, block).signature))
                .collect(),
        }
    }

    /// A TC for `round` signed by validators 0..3, all reporting highest QC round 0.
    fn tc(&self, round: u64) -> TimeoutCert {
        TimeoutCert {
            round,
            timeouts: (0..3u16)
                .map(|i| {
                    let sig = self.keys[usize::from(i)].sign(&timeout_bytes(CHAIN, round, 0));
                    (i, 0, sig)
                })
                .collect(),
        }
    }
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn evidence(actions: &[Action]) -> Vec<&Evidence> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Evidence(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn votes_for_random_hashes_are_held_once_per_round_and_voter_and_reported_once() {
    let net = Net::new();
    let mut e = net.engine(1);
    let mut rng = SeededRng::new(5);
    let mut actions = Vec::new();
    let mut relayable = 0;
    for _ in 0..5_000 {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&rng.next().to_le_bytes());
        let v = ConsensusMsg::Vote(net.vote(0, 1, Hash(h)));
        relayable += usize::from(e.relayable(&v));
        e.handle_message(10, None, v);
        actions.extend(drain(&mut e));
    }
    assert_eq!(
        relayable, 1,
        "only the first vote of (round, voter) is passed on"
    );
    assert_eq!(e.held().votes, 1);
    let ev = evidence(&actions);
    assert_eq!(ev.len(), 1, "one piece of evidence, not one per vote");
    assert!(matches!(
        ev[0],
        Evidence::Vote {
            round: 1,
            voter: 0,
            ..
        }
    ));
}

#[test]
fn a_proposal_flood_holds_within_the_bounds_and_keeps_nothing_unchecked() {
    let net = Net::new();
    let mut e = net.engine(1);
    let mut rng = SeededRng::new(9);
    let mut actions = Vec::new();
    // Validator 0 leads rounds 0, 4, 8, ...: it signs proposals for its own rounds
    // anywhere up to far beyond the window, on parents nobody has, with big blocks.
    for i in 0..3_000u64 {
        let round = 4 * (1 + rng.below(2 * MAX_ROUNDS_AHEAD / 4));
        let height = 1 + rng.below(2 * MAX_HEIGHTS_AHEAD);
        let parent = net.block(&net.genesis, round, i, 3);
        let mut block = net.block(&parent, round, height, 4);
        block.header.state_root = Hash([u8::try_from(i % 256).unwrap_or(0); 32]);
        let p = net.proposal(block, QuorumCert::genesis(net.genesis.hash()), None);
        e.handle_message(10, None, ConsensusMsg::Proposal(Box::new(p)));
        actions.extend(drain(&mut e));
    }
    let held = e.held();
    assert!(held.waiting <= MAX_WAITING, "{held:?}");
    assert!(held.waiting_bytes <= MAX_WAITING_BYTES, "{held:?}");
    assert!(
        held.proposals <= 2 * (MAX_ROUNDS_AHEAD as usize / 4 + 1),
        "{held:?}"
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Keep(_) | Action::CheckBlock { .. })),
        "nothing whose parent is unknown is checked or kept"
    );
}

#[test]
fn a_leader_gets_two_proposals_per_round_checked_and_the_rest_dropped() {
    let net = Net::new();
    let mut e = net.engine(2);
    let genesis_qc = QuorumCert::genesis(net.genesis.hash());
    let mut actions = Vec::new();
    for salt in 0..10u8 {
        let p = net.proposal(
            net.block(&net.genesis, 1, 1, salt),
            genesis_qc.clone(),
            None,
        );
        let msg = ConsensusMsg::Proposal(Box::new(p));
        assert_eq!(e.relayable(&msg), salt < 2, "proposal {salt}");
        e.handle_message(10, None, msg);
        actions.extend(drain(&mut e));
    }
    let checks = actions
        .iter()
        .filter(|a| matches!(a, Action::CheckBlock { .. }))
        .count();
    assert_eq!(checks, 2);
    assert_eq!(evidence(&actions).len(), 1);
    assert_eq!(e.held().proposals, 2);
}

#[test]
fn a_proposal_is_kept_only_once_its_block_checks_and_before_the_vote() {
    let net = Net::new();
    let mut e = net.engine(2);
    let genesis_qc = QuorumCert::genesis(net.genesis.hash());
    let bad = net.block(&net.genesis, 1, 1, 1);
    let p = net.proposal(bad.clone(), genesis_qc.clone(), None);
    e.handle_message(10, None, ConsensusMsg::Proposal(Box::new(p)));
    let actions = drain(&mut e);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CheckBlock { .. }))
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Keep(_))));
    e.handle_block_checked(11, &bad.hash(), false);
    assert!(!drain(&mut e).iter().any(|a| matches!(a, Action::Keep(_))));

    // The leader's other proposal of round 1 (equivocation, but the first valid one).
    let good = net.block(&net.genesis, 1, 1, 2);
    let p = net.proposal(good.clone(), genesis_qc, None);
    e.handle_message(12, None, ConsensusMsg::Proposal(Box::new(p)));
    drain(&mut e);
    e.handle_block_checked(13, &good.hash(), true);
    let actions = drain(&mut e);
    let keep = actions.iter().position(|a| matches!(a, Action::Keep(_)));
    let vote = actions
        .iter()
        .position(|a| matches!(a, Action::Broadcast(ConsensusMsg::Vote(_))));
    assert!(
        keep.is_some() && vote.is_some() && keep < vote,
        "{actions:?}"
    );
}

#[test]
fn a_leader_whose_parent_arrives_late_does_not_propose_in_a_round_it_does_not_lead() {
    let net = Net::new();
    // Validator 0 leads round 4. Block x of round 3 is certified but unknown to it.
    let mut e = net.engine(0);
    let x = net.block(&net.genesis, 3, 1, 9);
    e.handle_message(
        10,
        None,
        ConsensusMsg::Sync {
            qc: net.qc(3, x.hash()),
            tc: None,
        },
    );
    let actions = drain(&mut e);
    assert_eq!(e.round(), 4);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::BuildBlock { .. })),
        "cannot build without its parent"
    );
    // Round 4 times out; round 5 is validator 1's.
    e.handle_message(
        20,
        None,
        ConsensusMsg::Sync {
            qc: net.qc(3, x.hash()),
            tc: Some(net.tc(4)),
        },
    );
    drain(&mut e);
    assert_eq!(e.round(), 5);
    // Now the parent arrives and checks.
    let p = net.proposal(x.clone(), QuorumCert::genesis(net.genesis.hash()), None);
    e.handle_message(30, None, ConsensusMsg::Proposal(Box::new(p)));
    drain(&mut e);
    e.handle_block_checked(31, &x.hash(), true);
    let actions = drain(&mut e);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::BuildBlock { .. })),
        "validator 0 must not build in round 5: {actions:?}"
    );
}

#[test]
fn a_leader_of_a_past_round_gets_no_more_than_the_bound_taken_either() {
    let net = Net::new();
    let mut e = net.engine(2);
    // Rounds 1..=7 time out: the engine is in round 8, nothing final since genesis.
    e.handle_message(
        10,
        None,
        ConsensusMsg::Sync {
            qc: QuorumCert::genesis(net.genesis.hash()),
            tc: Some(net.tc(7)),
        },
    );
    drain(&mut e);
    assert_eq!(e.round(), 8);
    // Round 4's leader sends proposal after proposal for its long-gone round.
    let genesis_qc = QuorumCert::genesis(net.genesis.hash());
    let mut actions = Vec::new();
    for salt in 0..20u8 {
        let p = net.proposal(
            net.block(&net.genesis, 4, 1, salt),
            genesis_qc.clone(),
            None,
        );
        e.handle_message(20, None, ConsensusMsg::Proposal(Box::new(p)));
        actions.extend(drain(&mut e));
    }
    let checks = actions
        .iter()
        .filter(|a| matches!(a, Action::CheckBlock { .. }))
        .count();
    assert_eq!(checks, 2, "the per-round bound holds for past rounds too");
}
