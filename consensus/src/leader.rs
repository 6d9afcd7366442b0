//! Leader election by reputation (docs/CONSENSUS.md, "Leaders").
//!
//! The leader of a round is drawn from the recent final chain as the round's
//! proposal sees it: the blocks its certificate proves final, up to the newest
//! *anchor* (a block whose child on that chain is of the next round, so that a
//! two-chain commits it). Each validator's weight says how it took part over a window
//! of final blocks ending at the anchor: proposing blocks, signing their
//! certificates, or failing to propose when it led. A validator that has not signed
//! or proposed lately, or that failed its last turn to lead and has not taken part
//! since, weighs nothing, so a crashed validator stops being chosen until its votes
//! appear in certificates again. Among the validators of the highest weight, the
//! highest score, a hash of the anchor, the round and the validator, wins.
//!
//! Safety never depends on this: honest validators vote at most once per round, for
//! whichever proposal of that round they take first, and the two-chain rule does not
//! look at who proposed. Two honest nodes that disagree on a leader lose that round
//! (a timeout), nothing else.

use std::collections::VecDeque;

use grapevine_ledger::crypto::sha256;
use grapevine_ledger::{BlockHeader, Hash};

use crate::types::{Certificate, ValidatorIndex, ValidatorSet};

/// Domain tag of the draw's seed.
const SEED_TAG: &[u8] = b"grapevine/leader/v1";

/// Weight of a validator in good standing.
pub const ACTIVE_WEIGHT: u64 = 1_000;
/// Weight of a validator that failed more than [`FAILED_PERCENT`] of its turns to
/// lead within the window but has taken part since its last failure.
pub const FAILING_WEIGHT: u64 = 1;
/// Share of failed turns (percent of turns, proposed or failed, in the window) above
/// which a validator weighs [`FAILING_WEIGHT`].
pub const FAILED_PERCENT: u64 = 10;
/// Skipped rounds before a final block whose leaders are counted as failed, at most
/// this many times the validator count (the latest ones): after a long stall, the
/// leaders of the last rounds before progress resumed.
const FAILED_ROUNDS_PER_VALIDATOR: u64 = 2;

/// Final blocks the weights look at: proposals and failures over the last
/// `5 * n`, with `n` the validator count.
pub fn window(n: usize) -> u64 {
    5 * n as u64
}

/// Final blocks in which a validator must have proposed or signed the certificate to
/// be chosen: the last `2 * n` (at least 4).
pub fn recent_window(n: usize) -> u64 {
    (2 * n as u64).max(4)
}

/// The leader while the chain is shorter than the window, and in a one-validator set.
pub fn round_robin(set: &ValidatorSet, round: u64) -> ValidatorIndex {
    (round % set.len().max(1) as u64) as ValidatorIndex
}

#[derive(Clone, Debug)]
struct Entry {
    height: u64,
    round: u64,
    hash: Hash,
    proposer: Option<ValidatorIndex>,
    /// Signers of the QC on this block that the next final block's proposal carries
    /// (the same for every node); until that block is final, those of this node's
    /// certificate, which are not counted (see [`History::push`]).
    signers: Vec<ValidatorIndex>,
    /// (round, leader) of the rounds skipped just before this block: they led and no
    /// block of theirs made it into the final chain.
    failed: Vec<(u64, ValidatorIndex)>,
    /// Whether `failed` is what every node holds: false where the history did not
    /// reach far enough below this block to draw those leaders.
    exact: bool,
    /// Whether the next final block is of the next round (so this block is an anchor
    /// for the chains through its child).
    direct_child: bool,
}

/// The recent final chain, enough of it to compute leaders: [`History::wanted`]
/// blocks, two windows and some slack.
#[derive(Clone, Debug)]
pub struct History {
    set: ValidatorSet,
    entries: VecDeque<Entry>,
    capacity: usize,
}

/// Final blocks kept beyond the window, for anchors below the newest final block.
const SLACK: usize = 32;

impl History {
    /// A history holding only `genesis` (height 0).
    pub fn new(set: ValidatorSet, genesis: &BlockHeader) -> History {
        let capacity = usize::try_from(History::wanted(&set)).unwrap_or(usize::MAX);
        let mut entries = VecDeque::new();
        entries.push_back(Entry {
            height: genesis.height,
            round: genesis.round,
            hash: genesis.hash(),
            proposer: None,
            signers: vec![],
            failed: vec![],
            exact: genesis.height == 0,
            direct_child: false,
        });
        History {
            set,
            entries,
            capacity,
        }
    }

    /// How many final blocks before a block the caller should pass to [`Self::push`]
    /// after [`Self::starting_at`] so that leaders are known at once: two windows (the
    /// failures recorded in the window are drawn from the window before it) and some
    /// slack for anchors below the newest block.
    pub fn wanted(set: &ValidatorSet) -> u64 {
        2 * window(set.len()) + SLACK as u64
    }

    /// A history starting at `first`, a final block at any height (the blocks before
    /// it unknown; leaders whose window reaches below it are unknown).
    pub fn starting_at(
        set: ValidatorSet,
        first: &BlockHeader,
        cert: Option<&Certificate>,
    ) -> History {
        let mut h = History::new(set, first);
        if let Some(e) = h.entries.back_mut() {
            e.proposer = h.set.index_of(&first.proposer).filter(|_| first.height > 0);
            e.signers = signers(cert);
        }
        h
    }

    /// The newest final block: (height, hash).
    pub fn tip(&self) -> (u64, Hash) {
        self.entries
            .back()
            .map_or((0, Hash::ZERO), |e| (e.height, e.hash))
    }

    /// Records the final block after the newest one (a block at or below the newest is
    /// ignored; one further ahead starts the history over from it). `cert` is its
    /// finality certificate (`None` where there is none, as for a dev chain's blocks);
    /// `parent_qc` the QC its proposal carries, on the newest block, when known.
    ///
    /// Signers are read from `parent_qc`, not from the certificates: a block's
    /// certificate holds the QC of whichever child this node committed it through,
    /// and that child may be a certified block the chain then left, so two nodes can
    /// store different signers for one final block. The QC in the next final block's
    /// proposal is one for everybody. Block sync has no proposals, so a synced block's
    /// signers are its certificate's.
    pub fn push(
        &mut self,
        header: &BlockHeader,
        cert: Option<&Certificate>,
        parent_qc: Option<&crate::types::QuorumCert>,
    ) {
        let (tip, _) = self.tip();
        if header.height <= tip && !self.entries.is_empty() {
            return;
        }
        if header.height != tip + 1 {
            *self = History::starting_at(self.set.clone(), header, cert);
            return;
        }
        if let (Some(prev), Some(qc)) = (self.entries.back_mut(), parent_qc)
            && qc.block_hash == prev.hash
        {
            prev.signers = qc.votes.iter().map(|(v, _)| *v).collect();
        }
        let (failed, exact) = self.failed_before(header.round);
        if let Some(prev) = self.entries.back_mut() {
            prev.direct_child = prev.round.checked_add(1) == Some(header.round);
        }
        self.entries.push_back(Entry {
            height: header.height,
            round: header.round,
            hash: header.hash(),
            proposer: self.set.index_of(&header.proposer),
            signers: signers(cert),
            failed,
            exact,
            direct_child: false,
        });
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// The leaders of the rounds skipped between the newest final block and a new
    /// one of round `round` (the latest [`FAILED_ROUNDS_PER_VALIDATOR`] x n of them).
    /// A proposal in any of those rounds would have extended the newest final block
    /// (or, entering by a timeout certificate, a block certified before it), so its
    /// leader is drawn from the newest block's anchor, by the participation weights
    /// alone (failures left out): so the failures recorded are a function of the
    /// window's blocks, which a restarted node that loaded two windows recomputes
    /// exactly. Where the window holds failures already, the leader drawn this way
    /// may not be the one that led; the one blamed instead is back once it signs a
    /// final block, and a crashed one is caught by the recent window anyway.
    /// Also returns whether every one of those leaders could be drawn here.
    fn failed_before(&self, round: u64) -> (Vec<(u64, ValidatorIndex)>, bool) {
        let Some(prev) = self.entries.back() else {
            return (vec![], false);
        };
        let cap = FAILED_ROUNDS_PER_VALIDATOR * self.set.len() as u64;
        let from = prev.round.saturating_add(1).max(round.saturating_sub(cap));
        if from >= round {
            return (vec![], true);
        }
        let Some(anchor) = self.anchor_below(prev.height) else {
            return (vec![], false);
        };
        match self.drawer(anchor, false) {
            Some(d) => (d.skipped(from, round), true),
            None => (vec![], false),
        }
    }

    fn index(&self, height: u64) -> Option<usize> {
        let first = self.entries.front()?.height;
        let i = usize::try_from(height.checked_sub(first)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    /// The anchor of a chain that passes through the final block at `height`: the
    /// newest final block below it whose child is of the next round. `None` if the
    /// history does not reach it.
    pub fn anchor_below(&self, height: u64) -> Option<u64> {
        let i = self.index(height)?;
        self.entries
            .range(..i)
            .rev()
            .find(|e| e.direct_child)
            .map(|e| e.height)
            // A chain with no two-chain since genesis: the window is empty.
            .or_else(|| (self.entries.front()?.height == 0).then_some(0))
    }

    /// Whether the final block at `height` is `hash` (the chain being walked is the
    /// final one there).
    pub fn is_final(&self, height: u64, hash: &Hash) -> bool {
        self.index(height)
            .is_some_and(|i| self.entries[i].hash == *hash)
    }

    /// The leader of `round` for a proposal whose chain has the final block at height
    /// `anchor` as its anchor and whose QC is of round `qc_round`; `None` when the
    /// history does not hold the window. The rounds between the QC's and `round`
    /// passed without a certified block on this chain: their leaders (drawn the same
    /// way, the latest 2n of them) are left out of the draw, so that after a round
    /// times out, the next one is not drawn for the same leader again.
    pub fn leader(&self, round: u64, anchor: u64, qc_round: u64) -> Option<ValidatorIndex> {
        let d = self.drawer(anchor, true)?;
        let cap = FAILED_ROUNDS_PER_VALIDATOR * self.set.len() as u64;
        let from = qc_round.saturating_add(1).max(round.saturating_sub(cap));
        let skipped: Vec<ValidatorIndex> =
            d.skipped(from, round).into_iter().map(|(_, l)| l).collect();
        Some(d.pick(round, &skipped))
    }

    /// What draws leaders from `anchor` (`failures`: whether the weights count them);
    /// `None` when the history does not hold the window, or holds failures this node
    /// could not draw.
    fn drawer(&self, anchor: u64, failures: bool) -> Option<Drawer<'_>> {
        let n = self.set.len();
        if n <= 1 || anchor < window(n) || forced_round_robin() {
            return Some(Drawer {
                set: &self.set,
                seed: None,
                weights: vec![],
            });
        }
        let i = self.index(anchor)?;
        let w = usize::try_from(window(n)).ok()?;
        if i + 1 < w || (failures && self.entries.range(i + 1 - w..=i).any(|e| !e.exact)) {
            return None;
        }
        Some(Drawer {
            set: &self.set,
            seed: Some(self.entries[i].hash),
            weights: self.weights_at(i, failures),
        })
    }

    /// Each validator's weight over the window ending at entry `i` (`failures`: with
    /// the failed turns counted).
    fn weights_at(&self, i: usize, failures: bool) -> Vec<u64> {
        let n = self.set.len();
        let w = usize::try_from(window(n)).unwrap_or(usize::MAX);
        let recent = usize::try_from(recent_window(n)).unwrap_or(usize::MAX);
        let start = (i + 1).saturating_sub(w);
        let recent_start = (i + 1).saturating_sub(recent);
        let mut proposed = vec![0u64; n];
        let mut failed = vec![0u64; n];
        let mut last_seen = vec![None::<u64>; n];
        let mut last_failed = vec![None::<u64>; n];
        let mut is_recent = vec![false; n];
        for (k, e) in self.entries.range(start..=i).enumerate() {
            let in_recent = start + k >= recent_start;
            let mut seen = |v: ValidatorIndex| {
                if let Some(s) = last_seen.get_mut(usize::from(v)) {
                    *s = Some(s.map_or(e.round, |r: u64| r.max(e.round)));
                    if in_recent {
                        is_recent[usize::from(v)] = true;
                    }
                }
            };
            if let Some(p) = e.proposer {
                seen(p);
                if let Some(c) = proposed.get_mut(usize::from(p)) {
                    *c += 1;
                }
            }
            // The anchor's signers are not settled yet (its child is not final).
            if start + k < i {
                for s in &e.signers {
                    seen(*s);
                }
            }
            for (r, v) in e.failed.iter().filter(|_| failures) {
                if let Some(c) = failed.get_mut(usize::from(*v)) {
                    *c += 1;
                    last_failed[usize::from(*v)] = Some(*r);
                }
            }
        }
        (0..n)
            .map(|v| {
                let back_since_failure = match (last_failed[v], last_seen[v]) {
                    (Some(f), Some(s)) => s > f,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                if !is_recent[v] || !back_since_failure {
                    0
                } else if failed[v] * 100 > FAILED_PERCENT * (proposed[v] + failed[v]) {
                    FAILING_WEIGHT
                } else {
                    ACTIVE_WEIGHT
                }
            })
            .collect()
    }

    /// Each validator's weight as the next round after the newest final block would
    /// draw it if that block were the anchor (for metrics and logs).
    pub fn current_weights(&self) -> Vec<u64> {
        let n = self.set.len();
        let (tip, _) = self.tip();
        let held = self.entries.len() as u64;
        if n <= 1 || tip < window(n) || held < window(n) {
            return vec![ACTIVE_WEIGHT; n];
        }
        self.weights_at(self.entries.len() - 1, true)
    }
}

#[cfg(test)]
thread_local! {
    static ROUND_ROBIN_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: makes this thread's elections round-robin (to show what reputation avoids).
#[cfg(test)]
pub(crate) fn round_robin_only(on: bool) {
    ROUND_ROBIN_ONLY.with(|c| c.set(on));
}

#[cfg(test)]
fn forced_round_robin() -> bool {
    ROUND_ROBIN_ONLY.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn forced_round_robin() -> bool {
    false
}

/// Draws the leaders of rounds from one anchor's weights.
struct Drawer<'a> {
    set: &'a ValidatorSet,
    /// The anchor's hash; `None`: round-robin (a young chain).
    seed: Option<Hash>,
    weights: Vec<u64>,
}

impl Drawer<'_> {
    /// The leader of `round` with the validators in `skip` left out: of the
    /// validators of the highest weight present, the one whose score
    /// `SHA-256(tag ‖ anchor ‖ u64le(round) ‖ u16le(v))` (its first 8 bytes,
    /// little-endian) is highest. Leaving a validator out changes the result only
    /// when it was the one chosen, so the leaders drawn without the failures (to
    /// record them) are the leaders drawn with them, except where a validator already
    /// left out for failing would have been chosen: it is blamed again, harmlessly.
    fn pick(&self, round: u64, skip: &[ValidatorIndex]) -> ValidatorIndex {
        let Some(anchor) = self.seed else {
            return round_robin(self.set, round);
        };
        let eligible = |v: usize| !skip.iter().any(|s| usize::from(*s) == v);
        let top = (0..self.weights.len())
            .filter(|v| eligible(*v))
            .map(|v| self.weights[v])
            .max()
            .unwrap_or(0);
        if top == 0 {
            return round_robin(self.set, round);
        }
        let score = |v: usize| {
            let index = u16::try_from(v).unwrap_or(u16::MAX);
            let h = sha256(&[
                SEED_TAG,
                &anchor.0,
                &round.to_le_bytes(),
                &index.to_le_bytes(),
            ]);
            let mut first = [0u8; 8];
            first.copy_from_slice(&h.0[..8]);
            u64::from_le_bytes(first)
        };
        (0..self.weights.len())
            .filter(|v| eligible(*v) && self.weights[*v] == top)
            .max_by_key(|v| score(*v))
            .and_then(|v| ValidatorIndex::try_from(v).ok())
            .unwrap_or_else(|| round_robin(self.set, round))
    }

    /// (round, leader) of rounds `from..to`, each drawn without the ones before it.
    fn skipped(&self, from: u64, to: u64) -> Vec<(u64, ValidatorIndex)> {
        let mut out: Vec<(u64, ValidatorIndex)> = Vec::new();
        for r in from..to {
            let skip: Vec<ValidatorIndex> = out.iter().map(|(_, l)| *l).collect();
            out.push((r, self.pick(r, &skip)));
        }
        out
    }
}

fn signers(cert: Option<&Certificate>) -> Vec<ValidatorIndex> {
    cert.map(|c| c.qc.votes.iter().map(|(v, _)| *v).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use grapevine_ledger::Keypair;

    use super::*;
    use crate::types::QuorumCert;

    fn set(n: u8) -> ValidatorSet {
        let keys = (1..=n)
            .map(|i| Keypair::from_seed(&[i; 32]).address())
            .collect();
        ValidatorSet::new(keys, 1)
    }

    fn header(
        set: &ValidatorSet,
        height: u64,
        round: u64,
        proposer: ValidatorIndex,
        parent: Hash,
    ) -> BlockHeader {
        BlockHeader {
            height,
            round,
            parent_hash: parent,
            proposer: set.key(proposer).copied().unwrap_or_default(),
            timestamp_ms: height,
            tx_count: 0,
            tx_root: Hash::ZERO,
            state_root: Hash::ZERO,
        }
    }

    /// A QC on `block` signed (with blank signatures: only the signers matter here) by
    /// `signers`.
    fn unsigned_qc(round: u64, block: Hash, signers: &[ValidatorIndex]) -> QuorumCert {
        QuorumCert {
            round,
            block_hash: block,
            votes: signers
                .iter()
                .map(|v| (*v, grapevine_ledger::Signature([0; 64])))
                .collect(),
        }
    }

    /// A chain of `blocks` blocks on top of `h`, one per round from `round`, proposed
    /// and signed (unsigned QCs: only the signer indices matter here) by `active`.
    fn grow(
        h: &mut History,
        s: &ValidatorSet,
        mut round: u64,
        blocks: u64,
        active: &[ValidatorIndex],
    ) -> u64 {
        for k in 0..blocks {
            let (height, parent) = h.tip();
            let p = active[(k as usize) % active.len()];
            let qc = unsigned_qc(round - 1, parent, active);
            h.push(&header(s, height + 1, round, p, parent), None, Some(&qc));
            round += 1;
        }
        round
    }

    #[test]
    fn a_young_chain_is_round_robin_and_a_silent_validator_weighs_nothing() {
        let s = set(4);
        let mut h = History::new(s.clone(), &header(&s, 0, 0, 0, Hash::ZERO));
        let r = grow(&mut h, &s, 1, 10, &[0, 1, 2, 3]);
        let (tip, _) = h.tip();
        assert!(tip < window(4));
        assert_eq!(h.leader(r, tip - 1, r - 1), Some(round_robin(&s, r)));
        let r = grow(&mut h, &s, r, 30, &[0, 1, 2, 3]);
        assert_eq!(h.current_weights(), vec![ACTIVE_WEIGHT; 4]);
        // Validator 3 falls silent: after the recent window it weighs 0 and is never
        // drawn.
        let r = grow(&mut h, &s, r, recent_window(4) + 1, &[0, 1, 2]);
        assert_eq!(h.current_weights()[3], 0);
        let (tip, _) = h.tip();
        let anchor = h.anchor_below(tip).unwrap_or(0);
        for round in r..r + 200 {
            assert_ne!(h.leader(round, anchor, round - 1), Some(3));
        }
    }

    #[test]
    fn a_failed_leader_weighs_nothing_until_it_takes_part_again() {
        let s = set(4);
        let mut h = History::new(s.clone(), &header(&s, 0, 0, 0, Hash::ZERO));
        let mut r = grow(&mut h, &s, 1, 40, &[0, 1, 2, 3]);
        // Grow until validator 2 leads the next round, then skip that round: the
        // next block, signed by 0, 1 and 3 only, records its failure.
        loop {
            let (tip, _) = h.tip();
            let anchor = h.anchor_below(tip).unwrap_or(0);
            if h.leader(r, anchor, r - 1) == Some(2) {
                break;
            }
            r = grow(&mut h, &s, r, 1, &[0, 1, 2, 3]);
        }
        let r = grow(&mut h, &s, r + 1, 1, &[0, 1, 3]);
        assert_eq!(h.current_weights()[2], 0, "failed at its turn");
        // Its votes in the next blocks bring it back.
        grow(&mut h, &s, r, 3, &[0, 1, 2, 3]);
        assert!(h.current_weights()[2] > 0);
    }

    #[test]
    fn the_draw_is_deterministic_and_spread() {
        let s = set(4);
        let mut h = History::new(s.clone(), &header(&s, 0, 0, 0, Hash::ZERO));
        let r = grow(&mut h, &s, 1, 60, &[0, 1, 2, 3]);
        let (tip, _) = h.tip();
        let anchor = h.anchor_below(tip).unwrap_or(0);
        let mut counts = [0u32; 4];
        for round in r..r + 400 {
            let l = h.leader(round, anchor, round - 1);
            assert_eq!(l, h.clone().leader(round, anchor, round - 1));
            counts[usize::from(l.unwrap_or(0))] += 1;
        }
        assert!(counts.iter().all(|c| *c > 60), "{counts:?}");
    }

    #[test]
    fn a_node_that_loads_two_windows_draws_what_a_node_from_genesis_draws() {
        for n in [4, 7, 10] {
            for seed in 0..5 {
                restart_draws_the_same(n, seed);
            }
        }
    }

    fn restart_draws_the_same(n: u8, seed: u64) {
        use grapevine_ledger::seeded::SeededRng;
        let s = set(n);
        let all: Vec<ValidatorIndex> = (0..u16::from(n)).collect();
        let genesis = header(&s, 0, 0, 0, Hash::ZERO);
        let mut full = History::new(s.clone(), &genesis);
        let mut rng = SeededRng::new(seed + 1);
        let mut chain: Vec<(BlockHeader, QuorumCert)> = vec![];
        let mut round = 1;
        for height in 1..=400u64 {
            // Rounds skipped now and then; validator 6 silent for a while.
            if rng.chance(15) {
                round += 1 + rng.below(3);
            }
            let active: Vec<ValidatorIndex> = if (150..250).contains(&height) {
                all[1..].to_vec()
            } else {
                all.clone()
            };
            let (_, parent) = full.tip();
            let parent_qc = unsigned_qc(round - 1, parent, &active);
            let proposer = active[rng.below(active.len() as u64) as usize];
            let h = header(&s, height, round, proposer, parent);
            full.push(&h, None, Some(&parent_qc));
            chain.push((h, parent_qc));
            round += 1;
        }
        // The restarted node reads blocks with their certificates: the QC on block k
        // is the one block k + 1's proposal carried.
        let from = 400 - History::wanted(&s) as usize;
        let cert = |k: usize| Certificate {
            qc: chain
                .get(k + 1)
                .map(|c| c.1.clone())
                .unwrap_or_else(|| chain[k].1.clone()),
            commit: None,
        };
        let mut restarted =
            History::starting_at(s.clone(), &chain[from - 1].0, Some(&cert(from - 1)));
        for (k, (header, _)) in chain.iter().enumerate().skip(from) {
            restarted.push(header, Some(&cert(k)), None);
        }
        let (tip, _) = full.tip();
        let anchor = full.anchor_below(tip).unwrap_or(0);
        assert_eq!(restarted.anchor_below(tip), Some(anchor));
        for r in round..round + 100 {
            let l = full.leader(r, anchor, round - 1);
            assert!(l.is_some());
            assert_eq!(
                l,
                restarted.leader(r, anchor, round - 1),
                "n={n} seed {seed} round {r}"
            );
        }
        // Lower anchors: the restarted node draws the same leader or cannot tell, never
        // another one.
        for a in (from as u64 + 1)..tip {
            let r = chain[a as usize - 1].0.round + 1;
            let (f, g) = (full.leader(r, a, r - 1), restarted.leader(r, a, r - 1));
            assert!(
                g.is_none() || g == f,
                "n={n} seed {seed} anchor {a}: {f:?} {g:?}"
            );
        }
    }
}
