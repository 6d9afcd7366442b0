//! The consensus engine: a deterministic state machine with no IO (sans-IO).
//!
//! Inputs are method calls with the current time in milliseconds (`handle_message`,
//! `handle_timer`, `handle_block_built`, `handle_block_checked`); outputs are
//! [`Action`]s, drained with [`Engine::poll_action`] and carried out in order by a
//! driver (the node, or the simulator). A [`Action::Persist`] must be durable before any
//! later action leaves the node. Checking a block's contents (executing its
//! transactions) is the driver's: the engine asks with [`Action::CheckBlock`] and is
//! told the verdict. The rules are those of docs/CONSENSUS.md.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use grapevine_ledger::{Block, Hash, Keypair, Signature};

use super::leader::History;
use super::types::{
    Certificate, ConsensusMsg, Proposal, QuorumCert, SafetyState, Timeout, TimeoutCert,
    ValidatorIndex, ValidatorSet, Vote, timeout_bytes, vote_bytes,
};

/// Messages for rounds further ahead than this are dropped, so a Byzantine validator
/// cannot fill memory with far-future proposals, votes or timeouts. A node that far
/// behind catches up through certificates (`Sync`, QCs in proposals and timeouts).
pub const MAX_ROUNDS_AHEAD: u64 = 1_000;

/// How long a block request waits for an answer before it is sent to everyone.
pub const REQUEST_RETRY_MS: u64 = 300;

/// Proposals whose block check the engine awaits at once; more are dropped (and asked
/// for again when a child refers to them).
pub const MAX_CHECKING: usize = 256;

/// Proposals for heights further above the final height than this are dropped: their
/// parents cannot be checked yet, and a node that far behind catches up by block sync.
pub const MAX_HEIGHTS_AHEAD: u64 = MAX_ROUNDS_AHEAD;

/// Proposals waiting for their parent, at most; more are dropped (and asked for again
/// when a child or a certificate refers to them).
pub const MAX_WAITING: usize = 256;

/// Encoded bytes of the proposals waiting for their parent, at most.
pub const MAX_WAITING_BYTES: u64 = 64 * 1024 * 1024;

/// Distinct proposals taken per round from one proposer (an honest leader sends one). A
/// Byzantine leader's second is still taken, since the other honest nodes may certify it
/// and this node then needs its block (a copy asked for again would be dropped as a
/// duplicate by the network for a while); further ones are dropped. Counted per
/// proposer because whether a proposer leads is known only once its proposal's parent
/// is (docs/CONSENSUS.md, "Leaders").
pub const MAX_PROPOSALS_PER_ROUND: usize = 2;

/// Rounds behind the current one whose messages are still relayed and counted.
pub const ROUNDS_BEHIND: u64 = 2;

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Store this safety state durably before carrying out any later action.
    Persist(SafetyState),
    /// Send to one validator (possibly this node itself: deliver it back).
    Send(ValidatorIndex, ConsensusMsg),
    /// Send to every validator.
    Broadcast(ConsensusMsg),
    /// These blocks are final, in height order, each with its certificate (the last
    /// one's holds the two-chain proof; see [`Certificate`]).
    Commit {
        /// Newly final blocks and their certificates.
        blocks: Vec<(Block, Certificate)>,
    },
    /// Call [`Engine::handle_timer`] at this time (replaces earlier timers).
    SetTimer(u64),
    /// This node leads `round`: build a block on `parent` and pass it to
    /// [`Engine::handle_block_built`].
    BuildBlock {
        /// The round.
        round: u64,
        /// The parent block.
        parent: Block,
    },
    /// Check that `block` is a valid child of `parent` (its transactions execute to
    /// the roots in its header, its time is sane) and pass the verdict to
    /// [`Engine::handle_block_checked`]. Height, round and signatures are checked
    /// already.
    CheckBlock {
        /// The proposed block.
        block: Block,
        /// Its parent.
        parent: Block,
    },
    /// This proposal's block checked valid: keep it durably before any later action
    /// leaves the node (a vote for it may follow), so that after a restart the node
    /// still knows the blocks its persisted certificates point to. It may be dropped
    /// once its height is final. At most one proposal per round is kept, plus blocks
    /// this node asked for by hash (a certificate or a child refers to them).
    Keep(Proposal),
    /// A validator signed two conflicting messages in one round: record it (log,
    /// metric). A conflicting vote is dropped and not relayed; a leader's second
    /// proposal of a round is still taken (see [`MAX_PROPOSALS_PER_ROUND`]), a third
    /// is not.
    Evidence(Evidence),
}

/// Proof that a validator equivocated: both messages carry its valid signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Round `round`'s leader signed proposals of two different blocks.
    Proposal {
        /// The round.
        round: u64,
        /// The leader.
        leader: ValidatorIndex,
        /// The block of the proposal taken first.
        first: Hash,
        /// The block of the conflicting proposal.
        second: Hash,
    },
    /// `voter` voted for two different blocks in `round`.
    Vote {
        /// The round.
        round: u64,
        /// The voter.
        voter: ValidatorIndex,
        /// The block of the vote taken first.
        first: Hash,
        /// The block of the conflicting vote.
        second: Hash,
    },
}

impl Evidence {
    /// The validator who signed both messages.
    pub fn signer(&self) -> ValidatorIndex {
        match self {
            Evidence::Proposal { leader, .. } => *leader,
            Evidence::Vote { voter, .. } => *voter,
        }
    }
}

/// Counts of what an engine holds (see [`Engine::held`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Votes counted (at most one per round and voter).
    pub votes: usize,
    /// Proposals taken, over the rounds since the final block's.
    pub proposals: usize,
    /// Proposals waiting for their parent...
    pub waiting: usize,
    /// ...and their encoded bytes.
    pub waiting_bytes: u64,
    /// Blocks known above (and just below) the final height.
    pub blocks: usize,
    /// Timeouts counted.
    pub timeouts: usize,
}

/// Where a proposal given to `on_proposal` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Arrived just now (from the network, or this node's builder): it must pass the
    /// per-round bounds and the leader check.
    Network,
    /// Released from `waiting` once its parent came: it passed the bounds, and its
    /// leader is checked now.
    Released,
    /// Kept on disk before a restart: it passed both.
    Replayed,
}

struct Stored {
    block: Block,
    proposal: Option<Proposal>,
}

/// Timing of rounds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// First round timeout, in milliseconds.
    pub base_timeout_ms: u64,
    /// Largest round timeout after repeated timeouts.
    pub max_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            base_timeout_ms: 1_000,
            max_timeout_ms: 30_000,
        }
    }
}

/// One validator's (or follower's) consensus state.
pub struct Engine {
    set: ValidatorSet,
    me: Option<(ValidatorIndex, Keypair)>,
    genesis: Hash,
    timing: Timing,
    safety: SafetyState,
    round: u64,
    last_tc: Option<TimeoutCert>,
    consecutive_timeouts: u32,
    blocks: HashMap<Hash, Stored>,
    committed: (Hash, u64),
    votes: HashMap<(u64, Hash), BTreeMap<ValidatorIndex, Signature>>,
    /// The block each validator voted for, by round: one vote per (round, voter) is
    /// counted, so a Byzantine voter's votes for random hashes cost nothing to hold.
    voted: HashMap<(u64, ValidatorIndex), Hash>,
    /// The (proposer, block) of the proposals taken in each round since the final
    /// block's, in order.
    proposed: BTreeMap<u64, Vec<(ValidatorIndex, Hash)>>,
    /// The recent final chain, from which leaders are drawn.
    history: History,
    /// (round, validator) already shown to equivocate: further conflicts are dropped
    /// without checking their signatures.
    equivocated: HashSet<(u64, ValidatorIndex)>,
    timeouts: HashMap<u64, BTreeMap<ValidatorIndex, (u64, Signature)>>,
    my_timeout: Option<Timeout>,
    built_round: u64,
    want_build: bool,
    /// Proposals waiting for their parent, with their encoded size.
    waiting: Vec<(Proposal, u64)>,
    waiting_bytes: u64,
    /// Proposals whose block check was asked for, by block hash, with their sender.
    checking: HashMap<Hash, (Proposal, Option<ValidatorIndex>)>,
    requested: HashMap<Hash, u64>,
    now: u64,
    verified_qcs: HashSet<Hash>,
    verified_tcs: HashMap<(u64, usize), TimeoutCert>,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Engine(round {}, committed height {})",
            self.round, self.committed.1
        )
    }
}

impl Engine {
    /// An engine that resumes from `safety` (persisted) with `committed` as its last
    /// final block. `me` is this node's validator index and key (`None`: a follower).
    /// `history` holds the final chain up to `committed` (at least
    /// [`History::wanted`] blocks of it, where there are that many), so that leaders
    /// are known from the start.
    pub fn new(
        set: ValidatorSet,
        me: Option<(ValidatorIndex, Keypair)>,
        genesis_block: Hash,
        committed: Block,
        safety: SafetyState,
        timing: Timing,
        history: History,
    ) -> Engine {
        let committed_ref = (committed.hash(), committed.header.height);
        let mut blocks = HashMap::new();
        blocks.insert(
            committed_ref.0,
            Stored {
                block: committed,
                proposal: None,
            },
        );
        Engine {
            set,
            me,
            genesis: genesis_block,
            timing,
            // Resume in the last round signed in, not after it: a validator that voted
            // in round r and restarted must still be able to time out r, or the others
            // (who cannot certify r without it) wait forever. It will not vote in r
            // again, nor propose there (see `enter_round`).
            round: safety
                .high_qc
                .round
                .saturating_add(1)
                .max(safety.last_voted_round),
            safety,
            last_tc: None,
            consecutive_timeouts: 0,
            blocks,
            committed: committed_ref,
            votes: HashMap::new(),
            voted: HashMap::new(),
            proposed: BTreeMap::new(),
            history,
            equivocated: HashSet::new(),
            timeouts: HashMap::new(),
            my_timeout: None,
            built_round: 0,
            want_build: false,
            waiting: Vec::new(),
            waiting_bytes: 0,
            checking: HashMap::new(),
            requested: HashMap::new(),
            now: 0,
            verified_qcs: HashSet::new(),
            verified_tcs: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The next action for the driver, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// A block that became final without this engine (block sync wrote it), with its
    /// certificate: call for each such block in height order, before
    /// [`Engine::synced_to`] with the last, so that leaders stay known.
    pub fn record_final(&mut self, header: &grapevine_ledger::BlockHeader, cert: &Certificate) {
        self.history.push(header, Some(cert), None);
    }

    /// `block` became final without this engine (block sync wrote it, with `qc` the
    /// QC of its child from its certificate, if any): continue from it.
    pub fn synced_to(&mut self, now: u64, block: Block, qc: Option<QuorumCert>) {
        self.now = now;
        let height = block.header.height;
        if height <= self.committed.1 {
            return;
        }
        let hash = block.hash();
        self.proposed = self.proposed.split_off(&block.header.round);
        self.committed = (hash, height);
        self.blocks.retain(|_, s| s.block.header.height > height);
        self.blocks.insert(
            hash,
            Stored {
                block,
                proposal: None,
            },
        );
        let waiting = std::mem::take(&mut self.waiting);
        self.set_waiting(
            waiting
                .into_iter()
                .filter(|(w, _)| w.block.header.height > height)
                .collect(),
        );
        self.checking
            .retain(|_, (p, _)| p.block.header.height > height);
        if let Some(qc) = qc
            && self.qc_ok(&qc)
        {
            self.process_qc(now, &qc);
        }
        self.try_build();
    }

    /// The proposal of a known block (to answer a block request).
    pub fn proposal(&self, hash: &Hash) -> Option<&Proposal> {
        self.blocks.get(hash).and_then(|s| s.proposal.as_ref())
    }

    /// The current round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// What the engine holds from messages, for metrics and the bounds' tests.
    pub fn held(&self) -> Held {
        Held {
            votes: self.voted.len(),
            proposals: self.proposed.values().map(Vec::len).sum(),
            waiting: self.waiting.len(),
            waiting_bytes: self.waiting_bytes,
            blocks: self.blocks.len(),
            timeouts: self.timeouts.values().map(BTreeMap::len).sum(),
        }
    }

    /// Debug summary: (waiting proposals, outstanding requests, known blocks).
    #[cfg(test)]
    pub fn debug_counts(&self) -> (usize, usize, usize) {
        (self.waiting.len(), self.requested.len(), self.blocks.len())
    }

    fn timeout_ms(&self) -> u64 {
        let f = 1u64 << self.consecutive_timeouts.min(10);
        self.timing
            .base_timeout_ms
            .saturating_mul(f)
            .min(self.timing.max_timeout_ms)
    }

    /// Starts the round timer (and proposes, if this node leads the round).
    pub fn start(&mut self, now: u64) {
        self.now = now;
        let r = self.round;
        self.enter_round(now, r, None);
    }

    /// The height of the anchor of the chain ending at the known block `hash`: the
    /// newest block on it whose child on it is of the next round, which the chain's
    /// certificates therefore prove final (docs/CONSENSUS.md, "Leaders"). `None` if a
    /// block of the chain is missing.
    fn anchor_of(&self, hash: &Hash) -> Option<u64> {
        let mut cur_hash = *hash;
        let mut cur = &self.blocks.get(hash)?.block.header;
        loop {
            if self.history.is_final(cur.height, &cur_hash) {
                return self.history.anchor_below(cur.height);
            }
            let parent = &self.blocks.get(&cur.parent_hash)?.block.header;
            if parent.round.checked_add(1) == Some(cur.round) {
                return Some(parent.height);
            }
            cur_hash = cur.parent_hash;
            cur = parent;
        }
    }

    /// The leader of `round` for a proposal carrying `qc` (the same function for
    /// building and for checking): drawn from the final chain `qc`'s block proves.
    /// `None` when it cannot be told (a block of the chain, or the history below the
    /// anchor, is missing).
    pub fn leader_for(&self, round: u64, qc: &QuorumCert) -> Option<ValidatorIndex> {
        let anchor = self.anchor_of(&qc.block_hash)?;
        self.history.leader(round, anchor, qc.round)
    }

    /// Each validator's leader weight over the window ending at the newest final block
    /// (metrics: 0 means it is not chosen).
    pub fn leader_weights(&self) -> Vec<u64> {
        self.history.current_weights()
    }

    /// Whether this node leads the current round with its highest QC, and can justify a
    /// proposal there (the QC is of the previous round, or it holds the previous
    /// round's TC).
    fn leads_now(&self) -> bool {
        let round = self.round;
        let justified = self.safety.high_qc.round.checked_add(1) == Some(round)
            || self
                .last_tc
                .as_ref()
                .is_some_and(|tc| tc.round.checked_add(1) == Some(round));
        justified
            && self
                .me
                .as_ref()
                .is_some_and(|(i, _)| self.leader_for(round, &self.safety.high_qc) == Some(*i))
    }

    fn enter_round(&mut self, now: u64, round: u64, tc: Option<TimeoutCert>) {
        self.round = round;
        self.last_tc = tc;
        self.my_timeout = None;
        self.actions
            .push_back(Action::SetTimer(now + self.timeout_ms()));
        // Forget what belongs to rounds long past.
        let past = |r: u64| r.saturating_add(ROUNDS_BEHIND) < round;
        self.votes.retain(|(r, _), _| !past(*r));
        self.voted.retain(|(r, _), _| !past(*r));
        self.equivocated.retain(|(r, _)| !past(*r));
        self.timeouts.retain(|r, _| !past(*r));
        // A round this node already signed in (as leader it voted for its own
        // proposal) gets no second proposal: that would be equivocation. Whether it
        // leads is decided when it builds: that depends on its highest QC's chain,
        // which may still be arriving.
        self.want_build = self.me.is_some() && round > self.safety.last_voted_round;
        self.ask_missing();
        self.try_build();
    }

    fn try_build(&mut self) {
        if !self.want_build || self.built_round >= self.round {
            return;
        }
        let parent_hash = self.safety.high_qc.block_hash;
        match self.blocks.get(&parent_hash) {
            Some(_) if !self.leads_now() => {}
            Some(s) => {
                self.want_build = false;
                self.built_round = self.round;
                self.actions.push_back(Action::BuildBlock {
                    round: self.round,
                    parent: s.block.clone(),
                });
            }
            None => self.request(parent_hash, None),
        }
    }

    /// Asks for a missing block: first from `from` (who referred to it), then, if no
    /// answer came within [`REQUEST_RETRY_MS`], from everyone.
    fn request(&mut self, hash: Hash, from: Option<ValidatorIndex>) {
        if self.requested.len() > 4096 {
            self.requested.clear();
        }
        let now = self.now;
        let (to, due) = match self.requested.get(&hash) {
            None => (from, true),
            Some(at) => (None, now >= at + REQUEST_RETRY_MS),
        };
        if due {
            self.requested.insert(hash, now);
            let msg = ConsensusMsg::BlockRequest(hash);
            self.actions.push_back(match to {
                Some(v) => Action::Send(v, msg),
                None => Action::Broadcast(msg),
            });
        }
    }

    /// The block this node asked for (its round's proposal) was built by the driver.
    pub fn handle_block_built(&mut self, now: u64, block: Block) {
        self.now = now;
        let Some((_, key)) = &self.me else {
            return;
        };
        if block.header.round != self.round
            || block.header.parent_hash != self.safety.high_qc.block_hash
            || !self.leads_now()
        {
            return; // the round moved on while building
        }
        let tc = self
            .last_tc
            .clone()
            .filter(|tc| tc.round.checked_add(1) == Some(self.round));
        let p = Proposal::new(
            block,
            self.with_late_votes(&self.safety.high_qc),
            tc,
            key,
            self.set.chain_id(),
        );
        // Proposing signs in the round: the leader's vote for its own block is signed
        // and persisted before the proposal leaves, so a leader that restarts in this
        // round never proposes a second block there.
        let Some(vote) = self.sign_vote(&p) else {
            return;
        };
        // Kept before its vote leaves, as every proposal this node votes for.
        self.actions.push_back(Action::Keep(p.clone()));
        self.actions
            .push_back(Action::Broadcast(ConsensusMsg::Proposal(Box::new(
                p.clone(),
            ))));
        self.actions
            .push_back(Action::Broadcast(ConsensusMsg::Vote(vote.clone())));
        self.on_vote(now, vote);
        self.on_proposal(now, p, None, Origin::Network);
    }

    /// A message from validator `from` (if known).
    pub fn handle_message(&mut self, now: u64, from: Option<ValidatorIndex>, msg: ConsensusMsg) {
        self.now = now;
        match msg {
            ConsensusMsg::Proposal(p) => {
                // No lower bound: replayed and requested proposals of past rounds
                // carry blocks a commit may need.
                if p.round() <= self.round.saturating_add(MAX_ROUNDS_AHEAD)
                    && p.block.header.height <= self.committed.1.saturating_add(MAX_HEIGHTS_AHEAD)
                    && p.qc.round >= self.committed_round()
                    && p.verify_signed(&self.set)
                    && self.qc_ok(&p.qc)
                    && p.tc.as_ref().is_none_or(|tc| self.tc_ok(tc))
                {
                    self.on_proposal(now, *p, from, Origin::Network);
                }
            }
            ConsensusMsg::Vote(v) => self.on_vote(now, v),
            ConsensusMsg::Timeout(t) => {
                if t.round <= self.round.saturating_add(MAX_ROUNDS_AHEAD)
                    && t.verify_signed(&self.set)
                    && self.qc_ok(&t.high_qc)
                {
                    self.on_timeout(now, *t);
                }
            }
            ConsensusMsg::BlockRequest(h) => {
                if let (Some(to), Some(p)) =
                    (from, self.blocks.get(&h).and_then(|s| s.proposal.clone()))
                {
                    self.actions
                        .push_back(Action::Send(to, ConsensusMsg::Proposal(Box::new(p))));
                }
            }
            ConsensusMsg::Sync { qc, tc } => {
                if self.qc_ok(&qc) {
                    self.process_qc(now, &qc);
                }
                if let Some(tc) = tc
                    && self.tc_ok(&tc)
                {
                    self.process_tc(now, tc);
                }
            }
        }
    }

    /// The round of the last final block. A proposal that extends it (the only kind
    /// that can still become final) certifies a block of at least this round; one with
    /// an older QC would only wait for a parent that never comes.
    fn committed_round(&self) -> u64 {
        self.blocks
            .get(&self.committed.0)
            .map_or(0, |s| s.block.header.round)
    }

    /// Feeds back a proposal kept on disk before a restart (its bounds held when it was
    /// kept).
    pub fn handle_replayed(&mut self, now: u64, p: Proposal) {
        self.now = now;
        if p.verify_signed(&self.set)
            && self.qc_ok(&p.qc)
            && p.tc.as_ref().is_none_or(|tc| self.tc_ok(tc))
        {
            self.on_proposal(now, p, None, Origin::Replayed);
        }
    }

    /// Whether this node asked for block `hash` and does not have it (so an answer to
    /// that request is worth checking).
    pub fn wants(&self, hash: &Hash) -> bool {
        self.requested.contains_key(hash)
            && !self.blocks.contains_key(hash)
            && !self.checking.contains_key(hash)
    }

    /// Whether messages of round `r` are still of use: at most [`ROUNDS_BEHIND`] rounds
    /// behind the current one and at most [`MAX_ROUNDS_AHEAD`] ahead.
    fn in_window(&self, r: u64) -> bool {
        r.saturating_add(ROUNDS_BEHIND) >= self.round
            && r <= self.round.saturating_add(MAX_ROUNDS_AHEAD)
    }

    /// Whether a message whose signature checks may be passed on to peers: it is of a
    /// round still in use and does not conflict with what its signer sent before in
    /// that round beyond what is taken (a leader's proposals past the
    /// [`MAX_PROPOSALS_PER_ROUND`] taken, a vote for another block). A copy of a message
    /// already taken is relayable (a retransmission must still reach nodes that missed
    /// it); a conflicting vote is not, so a Byzantine validator's vote equivocations
    /// reach no further than its own links. Cheap: no signature is checked.
    pub fn relayable(&self, msg: &ConsensusMsg) -> bool {
        match msg {
            ConsensusMsg::Proposal(p) => {
                let hash = p.block.hash();
                let proposer = self.set.index_of(&p.block.header.proposer);
                self.in_window(p.round())
                    && p.block.header.height > self.committed.1
                    && p.block.header.height <= self.committed.1.saturating_add(MAX_HEIGHTS_AHEAD)
                    && proposer.is_some()
                    // Only what this node can tell comes from the round's leader: a
                    // proposal on a parent it lacks reaches others from their peers.
                    && self.leader_for(p.round(), &p.qc) == proposer
                    && self.proposed.get(&p.round()).is_none_or(|taken| {
                        let mine = taken.iter().filter(|(v, _)| Some(*v) == proposer);
                        mine.clone().count() < MAX_PROPOSALS_PER_ROUND
                            || mine.into_iter().any(|(_, h)| *h == hash)
                    })
            }
            ConsensusMsg::Vote(v) => {
                self.in_window(v.round)
                    && self
                        .voted
                        .get(&(v.round, v.voter))
                        .is_none_or(|h| *h == v.block_hash)
            }
            ConsensusMsg::Timeout(t) => {
                self.in_window(t.round)
                    && self
                        .timeouts
                        .get(&t.round)
                        .and_then(|e| e.get(&t.voter))
                        .is_none_or(|(hq, _)| *hq == t.high_qc.round)
            }
            ConsensusMsg::BlockRequest(_) | ConsensusMsg::Sync { .. } => false,
        }
    }

    /// Whether the certificates `msg` carries verify (a proposal's QC and TC, a
    /// timeout's highest QC), remembering those that do. Together with the signer's
    /// signature, what a node checks before it relays.
    pub fn certified(&mut self, msg: &ConsensusMsg) -> bool {
        match msg {
            ConsensusMsg::Proposal(p) => {
                self.qc_ok(&p.qc) && p.tc.as_ref().is_none_or(|tc| self.tc_ok(tc))
            }
            ConsensusMsg::Timeout(t) => self.qc_ok(&t.high_qc),
            ConsensusMsg::Vote(_) | ConsensusMsg::BlockRequest(_) | ConsensusMsg::Sync { .. } => {
                true
            }
        }
    }

    /// Verifies a QC, remembering those already verified (they arrive many times).
    fn qc_ok(&mut self, qc: &QuorumCert) -> bool {
        // Keyed by the whole certificate, signatures included: a QC with the same round
        // and block but other signatures is a different, unverified QC.
        let key = grapevine_ledger::crypto::sha256(&[&grapevine_ledger::codec::encode(qc)]);
        if self.verified_qcs.contains(&key) {
            return true;
        }
        let ok = qc.verify(&self.set, &self.genesis);
        if ok {
            if self.verified_qcs.len() > 4096 {
                self.verified_qcs.clear();
            }
            self.verified_qcs.insert(key);
        }
        ok
    }

    /// Verifies a TC, remembering those already verified.
    fn tc_ok(&mut self, tc: &TimeoutCert) -> bool {
        let key = (tc.round, tc.timeouts.len());
        if self.verified_tcs.get(&key).is_some_and(|t| t == tc) {
            return true;
        }
        let ok = tc.verify(&self.set);
        if ok {
            if self.verified_tcs.len() > 1024 {
                self.verified_tcs.clear();
            }
            self.verified_tcs.insert(key, tc.clone());
        }
        ok
    }

    /// Asks again (each at most every [`REQUEST_RETRY_MS`]) for the blocks that
    /// waiting proposals lack and nobody has sent yet: requests and answers may be
    /// lost, and a node behind that follows rounds through certificates never lets
    /// its round timer fire, so this runs on every new round too.
    fn ask_missing(&mut self) {
        let held: HashSet<Hash> = self.waiting.iter().map(|(w, _)| w.block.hash()).collect();
        let mut missing: Vec<Hash> = self
            .waiting
            .iter()
            .map(|(w, _)| w.block.header.parent_hash)
            .filter(|h| {
                !self.blocks.contains_key(h) && !self.checking.contains_key(h) && !held.contains(h)
            })
            .collect();
        missing.sort_unstable_by_key(|h| h.0);
        missing.dedup();
        for h in missing {
            self.request(h, None);
        }
    }

    /// The round timer fired: time out the round (again, with the same signature, if
    /// it already did).
    pub fn handle_timer(&mut self, now: u64) {
        self.now = now;
        self.ask_missing();
        if self.me.is_none() {
            self.actions
                .push_back(Action::SetTimer(now + self.timeout_ms()));
            return;
        }
        self.local_timeout(now);
    }

    /// Times out the current round: signs (once per round) and broadcasts a timeout.
    fn local_timeout(&mut self, now: u64) {
        let Some((i, key)) = &self.me else {
            return;
        };
        let t = match &self.my_timeout {
            Some(t) => t.clone(),
            None => {
                let hq = self.safety.high_qc.round;
                let t = Timeout {
                    round: self.round,
                    high_qc: self.safety.high_qc.clone(),
                    voter: *i,
                    signature: key.sign(&timeout_bytes(self.set.chain_id(), self.round, hq)),
                };
                self.safety.last_voted_round = self.safety.last_voted_round.max(self.round);
                self.actions.push_back(Action::Persist(self.safety.clone()));
                self.my_timeout = Some(t.clone());
                self.consecutive_timeouts += 1;
                t
            }
        };
        self.actions
            .push_back(Action::Broadcast(ConsensusMsg::Timeout(Box::new(
                t.clone(),
            ))));
        self.actions
            .push_back(Action::SetTimer(now + self.timeout_ms()));
        self.on_timeout(now, t);
    }

    fn process_qc(&mut self, now: u64, qc: &QuorumCert) {
        if qc.round > self.safety.high_qc.round {
            self.safety.high_qc = qc.clone();
        }
        self.try_commit(qc);
        if qc.round >= self.round
            && let Some(next) = qc.round.checked_add(1)
        {
            // Progress: the round timer returns to its base.
            self.consecutive_timeouts = 0;
            self.enter_round(now, next, None);
        } else {
            // New final blocks may make this node the leader of the current round.
            self.try_build();
        }
    }

    fn process_tc(&mut self, now: u64, tc: TimeoutCert) {
        if tc.round >= self.round
            && let Some(next) = tc.round.checked_add(1)
        {
            self.enter_round(now, next, Some(tc));
        }
    }

    fn on_proposal(&mut self, now: u64, p: Proposal, from: Option<ValidatorIndex>, origin: Origin) {
        let qc = p.qc.clone();
        self.process_qc(now, &qc);
        if let Some(tc) = p.tc.clone() {
            self.process_tc(now, tc);
        }
        if p.block.header.height <= self.committed.1 {
            return; // at or below what is final: only its certificates mattered
        }
        let hash = p.block.hash();
        if origin == Origin::Network && !self.take_proposal(&p, &hash) {
            return;
        }
        let parent_hash = p.block.header.parent_hash;
        if !self.blocks.contains_key(&parent_hash) {
            // A parent awaiting its check releases this proposal when it passes.
            if !self.checking.contains_key(&parent_hash) {
                self.request(parent_hash, from);
            }
            self.wait(p, &hash);
            return;
        }
        // The leader is known once the parent is: its chain decides it. A block this
        // node asked for is needed whoever proposed it (a certificate or a child
        // refers to it); one it kept passed this check before it was kept. Where the
        // leader cannot be told yet (a node catching up, whose final chain is behind
        // the anchor), the block is checked and kept, since others may certify it,
        // but not voted for (`maybe_vote`).
        if origin != Origin::Replayed
            && !self.requested.contains_key(&hash)
            && !self.blocks.contains_key(&hash)
            && !self.by_leader(&p, true)
        {
            return;
        }
        if !self.blocks.contains_key(&hash) {
            let parent = &self.blocks[&parent_hash].block;
            let shaped = parent.header.height.checked_add(1) == Some(p.block.header.height)
                && p.block.header.round > parent.header.round;
            if !shaped || self.checking.contains_key(&hash) || self.checking.len() >= MAX_CHECKING {
                return;
            }
            self.actions.push_back(Action::CheckBlock {
                block: p.block.clone(),
                parent: parent.clone(),
            });
            self.checking.insert(hash, (p, from));
            return;
        }
        self.accept(now, p, from);
    }

    /// Whether `p` (of block `hash`) may be taken: one of the first
    /// [`MAX_PROPOSALS_PER_ROUND`] of its round by its proposer, or a block this node
    /// asked for. A second proposal of one proposer in a round is recorded as
    /// evidence, so equivocation is seen and cannot grow the blocks held beyond that
    /// bound.
    fn take_proposal(&mut self, p: &Proposal, hash: &Hash) -> bool {
        let round = p.round();
        if round < self.committed_round() {
            // Older than the final block, so not a descendant of it: of use only if
            // this node asked for it.
            return self.requested.contains_key(hash) || self.blocks.contains_key(hash);
        }
        // Counted per round from the final block's round on (a proposal that arrives
        // after its round ended may still be certified), so a leader of any such round
        // gets at most the bound taken.
        // The proposer (a validator: checked with its signature).
        let Some(leader) = self.set.index_of(&p.block.header.proposer) else {
            return false;
        };
        let taken = self.proposed.entry(round).or_default();
        if taken.contains(&(leader, *hash)) {
            return true;
        }
        let first = taken.iter().find(|(v, _)| *v == leader).map(|(_, h)| *h);
        let room = taken.iter().filter(|(v, _)| *v == leader).count() < MAX_PROPOSALS_PER_ROUND;
        if room {
            taken.push((leader, *hash));
        }
        if let Some(first) = first
            && self.equivocated.insert((round, leader))
        {
            self.actions.push_back(Action::Evidence(Evidence::Proposal {
                round,
                leader,
                first,
                second: *hash,
            }));
        }
        room || self.requested.contains_key(hash) || self.blocks.contains_key(hash)
    }

    /// Holds `p` until its parent is known, within [`MAX_WAITING`] proposals and
    /// [`MAX_WAITING_BYTES`].
    fn wait(&mut self, p: Proposal, hash: &Hash) {
        if self.waiting.len() >= MAX_WAITING
            || self.waiting.iter().any(|(w, _)| w.block.hash() == *hash)
        {
            return;
        }
        let size = grapevine_ledger::codec::encoded_len(&p);
        if self.waiting_bytes.saturating_add(size) > MAX_WAITING_BYTES {
            return;
        }
        self.waiting_bytes += size;
        self.waiting.push((p, size));
    }

    fn set_waiting(&mut self, waiting: Vec<(Proposal, u64)>) {
        self.waiting_bytes = waiting.iter().map(|(_, n)| n).sum();
        self.waiting = waiting;
    }

    /// The driver's verdict on a block [`Action::CheckBlock`] asked about: a valid one
    /// is kept, voted for if the rules allow, and its waiting children go on.
    pub fn handle_block_checked(&mut self, now: u64, block: &Hash, valid: bool) {
        self.now = now;
        let Some((p, from)) = self.checking.remove(block) else {
            return;
        };
        if !valid
            || p.block.header.height <= self.committed.1
            || !self.blocks.contains_key(&p.block.header.parent_hash)
        {
            return;
        }
        self.blocks.insert(
            *block,
            Stored {
                block: p.block.clone(),
                proposal: Some(p.clone()),
            },
        );
        self.requested.remove(block);
        self.actions.push_back(Action::Keep(p.clone()));
        self.accept(now, p, from);
    }

    /// A proposal of a known, checked block: vote if the rules allow, then release the
    /// proposals that waited for it, commit and build as that makes possible.
    fn accept(&mut self, now: u64, p: Proposal, from: Option<ValidatorIndex>) {
        let hash = p.block.hash();
        self.maybe_vote(&p);
        // Blocks that waited for this one, and commits that waited for it.
        let ready: Vec<(Proposal, u64)> = {
            let (r, w): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|(w, _)| w.block.header.parent_hash == hash);
            self.set_waiting(w);
            r
        };
        for (w, _) in ready {
            self.on_proposal(now, w, from, Origin::Released);
        }
        let hq = self.safety.high_qc.clone();
        self.try_commit(&hq);
        self.try_build();
    }

    /// Whether `p` comes from the leader of its round for its QC; `unknown` is the
    /// answer where that cannot be told.
    fn by_leader(&self, p: &Proposal, unknown: bool) -> bool {
        self.leader_for(p.round(), &p.qc).map_or(unknown, |l| {
            self.set.key(l) == Some(&p.block.header.proposer)
        })
    }

    /// Votes for `p` if the rules allow, and only for the round's leader's proposal.
    fn maybe_vote(&mut self, p: &Proposal) {
        if !self.by_leader(p, false) {
            return;
        }
        let Some(v) = self.sign_vote(p) else {
            return;
        };
        // Votes go to every validator, not only the next leader: whoever sees a quorum
        // forms the QC and moves on at once. With the next leader down, the others
        // then wait out one round timer (that leader's round) instead of two.
        self.actions
            .push_back(Action::Broadcast(ConsensusMsg::Vote(v.clone())));
        let now = self.now;
        self.on_vote(now, v);
    }

    /// Signs a vote for `p` if the rules allow, recording (and persisting) the round as
    /// signed in.
    fn sign_vote(&mut self, p: &Proposal) -> Option<Vote> {
        let (i, key) = self.me.as_ref()?;
        let r = p.round();
        let justified = p.qc.round.checked_add(1) == Some(r)
            || p.tc.as_ref().is_some_and(|tc| {
                tc.round.checked_add(1) == Some(r) && p.qc.round >= tc.high_qc_round()
            });
        if r != self.round || r <= self.safety.last_voted_round || !justified {
            return None;
        }
        let hash = p.block.hash();
        let v = Vote {
            round: r,
            block_hash: hash,
            voter: *i,
            signature: key.sign(&vote_bytes(self.set.chain_id(), r, &hash)),
        };
        self.safety.last_voted_round = r;
        self.actions.push_back(Action::Persist(self.safety.clone()));
        Some(v)
    }

    fn on_vote(&mut self, now: u64, v: Vote) {
        // Votes one round behind still count: a QC of the previous round moves
        // everyone on.
        if v.round.saturating_add(1) < self.round
            || v.round > self.round.saturating_add(MAX_ROUNDS_AHEAD)
        {
            return;
        }
        match self.voted.get(&(v.round, v.voter)) {
            // Already counted (every validator receives every vote).
            Some(h) if *h == v.block_hash => return,
            Some(first) => {
                let first = *first;
                // Checked once per (round, voter): evidence needs both signatures,
                // later conflicts are dropped unchecked.
                if !self.equivocated.contains(&(v.round, v.voter)) && v.verify(&self.set) {
                    self.equivocated.insert((v.round, v.voter));
                    self.actions.push_back(Action::Evidence(Evidence::Vote {
                        round: v.round,
                        voter: v.voter,
                        first,
                        second: v.block_hash,
                    }));
                }
                return;
            }
            None => {}
        }
        // Counted after the quorum too: the next leader's proposal carries every vote
        // it has, so the final chain records who took part (docs/CONSENSUS.md,
        // "Leaders"). The driver checked the signature before relaying it, so this
        // check mostly hits the set's cache.
        if !v.verify(&self.set) {
            return;
        }
        self.voted.insert((v.round, v.voter), v.block_hash);
        if let Some(qc) = self.collect_vote(v) {
            self.process_qc(now, &qc);
        }
    }

    /// Adds a verified vote; returns a QC when this vote completes a quorum.
    fn collect_vote(&mut self, v: Vote) -> Option<QuorumCert> {
        let quorum = self.set.quorum();
        let entry = self.votes.entry((v.round, v.block_hash)).or_default();
        if entry.insert(v.voter, v.signature).is_some() {
            return None;
        }
        (entry.len() == quorum).then(|| QuorumCert {
            round: v.round,
            block_hash: v.block_hash,
            votes: entry.iter().map(|(i, s)| (*i, *s)).collect(),
        })
    }

    /// `qc` with every other valid vote this node counted for its block, so that a
    /// proposal's certificate names every validator that voted in time for it, not
    /// only the first quorum (leader reputation reads the signers).
    fn with_late_votes(&self, qc: &QuorumCert) -> QuorumCert {
        let Some(counted) = self.votes.get(&(qc.round, qc.block_hash)) else {
            return qc.clone();
        };
        let mut all: BTreeMap<ValidatorIndex, Signature> = qc.votes.iter().copied().collect();
        for (v, sig) in counted {
            all.entry(*v).or_insert(*sig);
        }
        if all.len() == qc.votes.len() {
            return qc.clone();
        }
        QuorumCert {
            round: qc.round,
            block_hash: qc.block_hash,
            votes: all.into_iter().collect(),
        }
    }

    fn on_timeout(&mut self, now: u64, t: Timeout) {
        self.process_qc(now, &t.high_qc);
        if t.round < self.round {
            // The sender lags: hand it the certificates that moved us on.
            if self.me.as_ref().is_none_or(|(i, _)| *i != t.voter) {
                self.actions.push_back(Action::Send(
                    t.voter,
                    ConsensusMsg::Sync {
                        qc: self.safety.high_qc.clone(),
                        tc: self.last_tc.clone(),
                    },
                ));
            }
            return;
        }
        let quorum = self.set.quorum();
        let entry = self.timeouts.entry(t.round).or_default();
        if entry.len() >= quorum {
            return;
        }
        entry.insert(t.voter, (t.high_qc.round, t.signature));
        let count = entry.len();
        // f + 1 timeouts for a later round include an honest one: that round is stuck
        // for someone honest, so join it (timing out there only gives up voting in it).
        if t.round > self.round && count > self.set.len().saturating_sub(1) / 3 && self.me.is_some()
        {
            self.enter_round(now, t.round, None);
            self.local_timeout(now);
            return;
        }
        let Some(entry) = self.timeouts.get(&t.round) else {
            return;
        };
        if count == quorum {
            let tc = TimeoutCert {
                round: t.round,
                timeouts: entry.iter().map(|(i, (r, s))| (*i, *r, *s)).collect(),
            };
            self.process_tc(now, tc);
        }
    }

    /// Applies the two-chain rule along the chain `qc` certifies: every block of it is
    /// certified (the newest by `qc`, each other by the QC in its child's proposal),
    /// so the newest block B on it whose child B' is of the next round is final, with
    /// its ancestors.
    fn try_commit(&mut self, qc: &QuorumCert) {
        let mut child_hash = qc.block_hash;
        let mut child_qc = qc.clone();
        let (child, child_p, b_hash) = loop {
            let Some(child) = self.blocks.get(&child_hash) else {
                return;
            };
            let Some(child_p) = child.proposal.as_ref() else {
                return; // the last final block
            };
            let b_hash = child.block.header.parent_hash;
            let Some(b) = self.blocks.get(&b_hash) else {
                return;
            };
            if b.block.header.height <= self.committed.1 {
                return;
            }
            if b.block.header.round.checked_add(1) == Some(child.block.header.round) {
                break (child, child_p, b_hash);
            }
            child_qc = child_p.qc.clone();
            child_hash = b_hash;
        };
        let mut proof = Some((child.block.header, child_qc));
        // Each block's QC is in its child's proposal.
        let mut cert_qc = child_p.qc.clone();
        // Walk back to the last final block; every ancestor must be known.
        let mut chain = Vec::new();
        let mut cur = b_hash;
        while cur != self.committed.0 {
            let Some(s) = self.blocks.get(&cur) else {
                self.request(cur, None);
                return;
            };
            let Some(p) = s.proposal.as_ref() else {
                return; // only the last final block is stored without its proposal
            };
            if s.block.header.height <= self.committed.1 {
                // Conflicts with what is final: a safety failure if certificates are
                // honest; refuse to commit rather than fork.
                return;
            }
            let next_qc = p.qc.clone();
            chain.push((
                s.block.clone(),
                Certificate {
                    qc: std::mem::replace(&mut cert_qc, next_qc),
                    commit: proof.take(),
                },
            ));
            cur = s.block.header.parent_hash;
        }
        chain.reverse();
        let Some((last, _)) = chain.last() else {
            return;
        };
        self.committed = (last.hash(), last.header.height);
        self.proposed = self.proposed.split_off(&last.header.round);
        self.consecutive_timeouts = 0;
        // Proposals waiting for a parent at or below the final height wait for good
        // (peers drop such blocks), and asking for their parents at every round
        // would flood the network.
        let final_height = last.header.height;
        let waiting = std::mem::take(&mut self.waiting);
        self.set_waiting(
            waiting
                .into_iter()
                .filter(|(w, _)| w.block.header.height > final_height)
                .collect(),
        );
        for (b, cert) in &chain {
            let parent_qc = self
                .blocks
                .get(&b.hash())
                .and_then(|s| s.proposal.as_ref())
                .map(|p| &p.qc);
            self.history.push(&b.header, Some(cert), parent_qc);
        }
        let floor = self.committed.1;
        self.blocks
            .retain(|_, s| s.block.header.height + 64 >= floor);
        self.actions.push_back(Action::Commit { blocks: chain });
    }
}
