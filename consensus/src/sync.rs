//! Block sync: a node that is behind fetches final blocks with their certificates from
//! several peers at once, checks the certificates against the genesis validators, and
//! hands the blocks to the driver in height order (docs/CONSENSUS.md, "Block sync").
//!
//! [`Syncer`] holds no IO: the driver feeds it peers' final heights and answers, asks
//! it which requests to send, and applies the blocks it releases.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use grapevine_ledger::{Address, Block, BlockHeader, Hash};
use serde::{Deserialize, Serialize};

use super::types::{Certificate, Proposal};

/// Most blocks asked of one peer in one request.
pub const CHUNK: u64 = 64;
/// Requests outstanding at once, over all peers.
pub const MAX_INFLIGHT: usize = 8;
/// Requests outstanding at once to one peer.
pub const PER_PEER: usize = 2;
/// A request not answered in this long is sent to another peer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A node this many blocks behind its peers syncs (closer, consensus catches it up).
pub const LAG: u64 = 3;
/// A node behind at all whose height has not moved for this long syncs too.
pub const STALL: Duration = Duration::from_secs(2);
/// Blocks fetched ahead of what can be applied, at most.
const MAX_AHEAD: u64 = CHUNK * MAX_INFLIGHT as u64 * 2;
/// Window of the blocks/s estimate.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The sync messages between nodes (carried in the network's consensus channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// The sender's final height. `nonce` keeps repeats distinct for the network's
    /// seen-set.
    Status {
        /// Height of the sender's last final block.
        final_height: u64,
        /// Distinguishes repeats.
        nonce: u64,
    },
    /// Asks for final blocks `from .. from + count`.
    GetBlocks {
        /// Echoed in the answer.
        id: u64,
        /// First height.
        from: u64,
        /// How many (at most [`CHUNK`] are served).
        count: u16,
    },
    /// Final blocks in height order with their certificates; empty if the sender has
    /// none of them.
    Blocks {
        /// The request's id.
        id: u64,
        /// The blocks.
        blocks: Vec<(Block, Certificate)>,
    },
    /// Asks for the proposal of a block that is not final yet, which consensus needs
    /// (a proposal's parent it missed). A sync message rather than a consensus one so
    /// that it is never taken for a copy: two nodes asking for one block send the same
    /// bytes. Answered with [`SyncMsg::Proposal`] to the requester alone, within the
    /// answering node's byte budget for that peer.
    BlockRequest {
        /// The block's hash.
        hash: Hash,
    },
    /// The answer to a [`SyncMsg::BlockRequest`]: a proposal the sender checked and
    /// kept. Not relayed; the receiver checks it like a proposal from the network.
    Proposal(Box<Proposal>),
}

/// Why a peer's answer was refused (the driver penalizes the peer).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Blocks nobody asked this peer for.
    #[error("blocks nobody asked this peer for")]
    Unsolicited,
    /// Not the heights asked for, or not a chain.
    #[error("blocks that are not the requested chain")]
    NotTheChain,
    /// A certificate that does not prove its block.
    #[error("a block whose certificate does not verify")]
    BadCertificate,
}

struct Request {
    peer: Address,
    from: u64,
    count: u64,
    sent: Instant,
}

/// Where sync stands, for `getSyncStatus`, metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Whether the node is fetching blocks.
    pub syncing: bool,
    /// The node's final height.
    pub current: u64,
    /// The highest final height peers report.
    pub target: u64,
    /// Blocks applied per second over the last seconds.
    pub blocks_per_second: f64,
    /// Seconds to reach the target at that rate, when known.
    pub eta_seconds: Option<f64>,
}

/// What a peer says of its final height, and whether it has shown it.
#[derive(Clone, Copy, Debug, Default)]
struct Claim {
    /// The height it reports (lowered when it fails to serve below it).
    height: u64,
    /// It served blocks that verify, and has not failed a request since. Only such
    /// claims count toward the target that `getSyncStatus` and `/health` report, so a
    /// peer that merely says it is far ahead cannot make a node look behind.
    proven: bool,
    /// It sent a status since the last sweep ([`PEER_SILENCE`]).
    heard: bool,
}

/// A peer that sent no status for this long (peers send one a second) is forgotten,
/// with its claim: a peer that disconnected cannot hold the target up.
pub const PEER_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The block sync state machine.
#[derive(Default)]
pub struct Syncer {
    peers: HashMap<Address, Claim>,
    inflight: HashMap<u64, Request>,
    buffer: BTreeMap<u64, (Block, Certificate, Address)>,
    next_id: u64,
    /// (time, local height) samples for the rate.
    samples: VecDeque<(Instant, u64)>,
    last_height: Option<(u64, Instant)>,
    syncing: bool,
    last_sweep: Option<Instant>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Syncer({} peers, {} requests, {} buffered)",
            self.peers.len(),
            self.inflight.len(),
            self.buffer.len()
        )
    }
}

impl Syncer {
    /// A peer says its final height is `height`.
    pub fn on_status(&mut self, peer: Address, height: u64) {
        let c = self.peers.entry(peer).or_default();
        c.height = height;
        c.heard = true;
    }

    /// Forgets the peers that sent no status since the last sweep, at most every
    /// [`PEER_SILENCE`] (those with requests out are kept until they time out).
    fn sweep(&mut self, now: Instant) {
        let last = *self.last_sweep.get_or_insert(now);
        if now.duration_since(last) < PEER_SILENCE {
            return;
        }
        self.last_sweep = Some(now);
        let busy: std::collections::HashSet<Address> =
            self.inflight.values().map(|r| r.peer).collect();
        self.peers.retain(|p, c| c.heard || busy.contains(p));
        for c in self.peers.values_mut() {
            c.heard = false;
        }
    }

    /// The highest final height a peer reports: what sync asks for.
    pub fn target(&self) -> u64 {
        self.peers.values().map(|c| c.height).max().unwrap_or(0)
    }

    /// The highest final height reported by a peer that has served blocks that
    /// verify: what the node reports as its sync target.
    pub fn proven_target(&self) -> u64 {
        self.peers
            .values()
            .filter(|c| c.proven)
            .map(|c| c.height)
            .max()
            .unwrap_or(0)
    }

    fn note_height(&mut self, local: u64, now: Instant) {
        match self.last_height {
            Some((h, _)) if h == local => {}
            _ => self.last_height = Some((local, now)),
        }
        if self.samples.back().is_none_or(|(_, h)| *h != local) {
            self.samples.push_back((now, local));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
            && self.samples.len() > 1
        {
            self.samples.pop_front();
        }
    }

    /// Whether the node at final height `local` is behind `target`.
    fn behind(&self, local: u64, target: u64, now: Instant) -> bool {
        if target <= local {
            return false;
        }
        target >= local + LAG
            || self
                .last_height
                .is_some_and(|(h, at)| h == local && now.duration_since(at) >= STALL)
    }

    /// The requests to send now, given the node's final height `local`. Requests that
    /// timed out are dropped, and their peer's reported height is no longer believed.
    pub fn poll(&mut self, local: u64, now: Instant) -> Vec<(Address, SyncMsg)> {
        self.note_height(local, now);
        self.sweep(now);
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| now.duration_since(r.sent) >= REQUEST_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(r) = self.inflight.remove(&id) {
                self.distrust(r.peer, r.from);
            }
        }
        self.buffer.retain(|h, _| *h > local);
        self.syncing = self.behind(local, self.proven_target(), now);
        // Claims not yet shown are asked for all the same: that is how they are shown.
        if !self.behind(local, self.target(), now) {
            return Vec::new();
        }
        let target = self.target();
        let mut out = Vec::new();
        let mut start = local + 1;
        while start <= target && start <= local + MAX_AHEAD && self.inflight.len() < MAX_INFLIGHT {
            let covered = self.buffer.contains_key(&start)
                || self
                    .inflight
                    .values()
                    .any(|r| r.from <= start && start < r.from + r.count);
            if covered {
                start += 1;
                continue;
            }
            let Some(peer) = self.pick_peer(start) else {
                break;
            };
            let peer_height = self.peers.get(&peer).map_or(0, |c| c.height);
            // Up to the next height already buffered or requested.
            let mut count = CHUNK.min(peer_height - start + 1);
            for h in start + 1..start + count {
                if self.buffer.contains_key(&h)
                    || self
                        .inflight
                        .values()
                        .any(|r| r.from <= h && h < r.from + r.count)
                {
                    count = h - start;
                    break;
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            self.inflight.insert(
                id,
                Request {
                    peer,
                    from: start,
                    count,
                    sent: now,
                },
            );
            out.push((
                peer,
                SyncMsg::GetBlocks {
                    id,
                    from: start,
                    count: u16::try_from(count).unwrap_or(u16::MAX),
                },
            ));
            start += count;
        }
        out
    }

    /// The peer with the fewest outstanding requests among those that have `height`;
    /// of those, one that has served blocks that verify, then the one with the lowest
    /// claim: a peer that claims far more than the others is asked only for what
    /// nobody else has, so a false claim cannot hold up the heights honest peers serve.
    fn pick_peer(&self, height: u64) -> Option<Address> {
        let mut load: HashMap<Address, usize> = HashMap::new();
        for r in self.inflight.values() {
            *load.entry(r.peer).or_default() += 1;
        }
        self.peers
            .iter()
            .filter(|(p, c)| c.height >= height && load.get(*p).copied().unwrap_or(0) < PER_PEER)
            .min_by_key(|(p, c)| (load.get(*p).copied().unwrap_or(0), !c.proven, c.height, **p))
            .map(|(p, _)| *p)
    }

    /// `peer` did not deliver from `from` on: believe it has at most `from - 1`, and
    /// not its claims until it serves blocks that verify again.
    fn distrust(&mut self, peer: Address, from: u64) {
        if let Some(c) = self.peers.get_mut(&peer) {
            c.height = c.height.min(from.saturating_sub(1));
            c.proven = false;
        }
    }

    /// An answer from `peer`. `verify` checks a certificate against the validator set.
    /// On error the answer is dropped and its range asked of others.
    pub fn on_blocks(
        &mut self,
        peer: Address,
        id: u64,
        blocks: Vec<(Block, Certificate)>,
        verify: impl Fn(&BlockHeader, &Certificate) -> bool,
    ) -> Result<(), SyncError> {
        let Some(req) = self.inflight.get(&id) else {
            return Err(SyncError::Unsolicited);
        };
        if req.peer != peer {
            return Err(SyncError::Unsolicited);
        }
        let Some(req) = self.inflight.remove(&id) else {
            return Err(SyncError::Unsolicited);
        };
        if blocks.is_empty() {
            self.distrust(peer, req.from);
            return Ok(());
        }
        if blocks.len() as u64 > req.count {
            self.distrust(peer, req.from);
            return Err(SyncError::NotTheChain);
        }
        let mut prev: Option<&Block> = None;
        for (i, (b, cert)) in blocks.iter().enumerate() {
            let chained = prev.is_none_or(|p| b.header.parent_hash == p.hash());
            if b.header.height != req.from + i as u64 || !chained {
                self.distrust(peer, req.from);
                return Err(SyncError::NotTheChain);
            }
            if !verify(&b.header, cert) {
                self.distrust(peer, req.from);
                return Err(SyncError::BadCertificate);
            }
            prev = Some(b);
        }
        let got = blocks.len() as u64;
        if let Some(c) = self.peers.get_mut(&peer) {
            c.proven = true;
            if got < req.count {
                // Served part (an answer is capped in bytes): ask it for the rest later.
                c.height = c.height.min(req.from + got - 1);
            }
        }
        for (b, cert) in blocks {
            self.buffer.insert(b.header.height, (b, cert, peer));
        }
        Ok(())
    }

    /// The buffered blocks that extend `head` and are proven final: the contiguous run
    /// after `head` up to its last block with a commit proof (earlier ones are final
    /// as its ancestors). Each comes with the peer that served it.
    pub fn ready(&mut self, head: &BlockHeader) -> Vec<(Block, Certificate, Address)> {
        let mut last_final = None;
        let mut parent = head.hash();
        let mut h = head.height + 1;
        while let Some((b, cert, served_by)) = self.buffer.get(&h) {
            if b.header.parent_hash != parent {
                // Does not extend what is final here: never applied; ask again.
                let served_by = *served_by;
                self.buffer.remove(&h);
                self.distrust(served_by, h);
                break;
            }
            if cert.commit.is_some() {
                last_final = Some(h);
            }
            parent = b.hash();
            h += 1;
        }
        let Some(end) = last_final else {
            return Vec::new();
        };
        let rest = self.buffer.split_off(&(end + 1));
        let out = std::mem::replace(&mut self.buffer, rest);
        out.into_iter()
            .filter(|(k, _)| *k > head.height)
            .map(|(_, v)| v)
            .collect()
    }

    /// A block `peer` served failed to execute: forget what is buffered from it and
    /// stop believing its height.
    pub fn reject(&mut self, peer: Address, height: u64) {
        self.buffer.retain(|_, (_, _, p)| *p != peer);
        self.distrust(peer, height);
    }

    /// Progress at final height `local`.
    pub fn progress(&self, local: u64, now: Instant) -> Progress {
        let target = self.proven_target().max(local);
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, h0)), Some((_, h1))) if h1 > h0 => {
                let secs = now.duration_since(*t0).as_secs_f64();
                if secs > 0.0 {
                    (h1 - h0) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        Progress {
            syncing: self.syncing,
            current: local,
            target,
            blocks_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| (target - local) as f64 / rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::QuorumCert;
    use grapevine_ledger::Hash;

    fn chain(n: u64) -> Vec<Block> {
        let mut out = Vec::new();
        let mut parent = Hash([1; 32]);
        for h in 0..=n {
            let header = BlockHeader {
                height: h,
                round: h,
                parent_hash: parent,
                proposer: Address::default(),
                timestamp_ms: h,
                tx_count: 0,
                tx_root: Hash::ZERO,
                state_root: Hash::ZERO,
            };
            parent = header.hash();
            out.push(Block {
                header,
                txs: Vec::new(),
            });
        }
        out
    }

    fn cert(b: &Block, direct: bool, next: Option<&Block>) -> Certificate {
        Certificate {
            qc: QuorumCert {
                round: b.header.round,
                block_hash: b.hash(),
                votes: Vec::new(),
            },
            commit: direct.then(|| {
                let child = next.expect("a child").header;
                (
                    child,
                    QuorumCert {
                        round: child.round,
                        block_hash: child.hash(),
                        votes: Vec::new(),
                    },
                )
            }),
        }
    }

    fn serve(
        c: &[Block],
        from: u64,
        count: u64,
        direct: impl Fn(u64) -> bool,
    ) -> Vec<(Block, Certificate)> {
        (from..from + count)
            .filter(|h| (*h as usize) < c.len() - 1)
            .map(|h| {
                let b = &c[h as usize];
                (b.clone(), cert(b, direct(h), c.get(h as usize + 1)))
            })
            .collect()
    }

    fn peer(i: u8) -> Address {
        Address([i; 32])
    }

    #[test]
    fn fetches_in_parallel_from_several_peers_and_applies_in_order() {
        let c = chain(300);
        let mut s = Syncer::default();
        let now = Instant::now();
        for i in 1..=3 {
            s.on_status(peer(i), 299);
        }
        let reqs = s.poll(0, now);
        assert_eq!(reqs.len(), 5, "300 blocks in chunks of 64: {reqs:?}");
        let peers: std::collections::HashSet<_> = reqs.iter().map(|(p, _)| *p).collect();
        assert_eq!(peers.len(), 3, "spread over every peer");
        // Answer out of order; nothing is applied until the run from the head is whole.
        let mut answers: Vec<_> = reqs.into_iter().collect();
        answers.reverse();
        let head = c[0].header;
        for (p, m) in answers {
            let SyncMsg::GetBlocks { id, from, count } = m else {
                panic!()
            };
            s.on_blocks(p, id, serve(&c, from, count.into(), |_| true), |_, _| true)
                .unwrap();
        }
        let got = s.ready(&head);
        assert_eq!(got.len(), 299);
        assert!(
            got.windows(2)
                .all(|w| w[1].0.header.parent_hash == w[0].0.hash())
        );
        assert_eq!(got[0].0.header.parent_hash, head.hash());
    }

    #[test]
    fn only_blocks_proven_final_are_released() {
        let c = chain(10);
        let mut s = Syncer::default();
        let now = Instant::now();
        s.on_status(peer(1), 9);
        let reqs = s.poll(0, now);
        let SyncMsg::GetBlocks { id, from, count } = reqs[0].1 else {
            panic!()
        };
        // Only block 5 carries a commit proof: 1..=5 are final, 6..=9 wait.
        s.on_blocks(
            peer(1),
            id,
            serve(&c, from, count.into(), |h| h == 5),
            |_, _| true,
        )
        .unwrap();
        let got = s.ready(&c[0].header);
        assert_eq!(got.last().unwrap().0.header.height, 5);
        assert!(s.ready(&c[5].header).is_empty());
    }

    #[test]
    fn a_peer_serving_bad_certificates_is_refused_and_its_range_asked_elsewhere() {
        let c = chain(100);
        let mut s = Syncer::default();
        let now = Instant::now();
        s.on_status(peer(1), 99);
        s.on_status(peer(2), 99);
        let reqs = s.poll(0, now);
        let (bad, msg) = reqs[0].clone();
        let SyncMsg::GetBlocks { id, from, count } = msg else {
            panic!()
        };
        let err = s
            .on_blocks(bad, id, serve(&c, from, count.into(), |_| true), |_, _| {
                false
            })
            .unwrap_err();
        assert_eq!(err, SyncError::BadCertificate);
        let again = s.poll(0, now);
        assert!(
            again
                .iter()
                .any(|(p, m)| *p != bad
                    && matches!(m, SyncMsg::GetBlocks { from: f, .. } if *f == from)),
            "the range goes to the other peer: {again:?}"
        );
        // Answers nobody asked for are refused.
        assert_eq!(
            s.on_blocks(peer(3), 999, Vec::new(), |_, _| true),
            Err(SyncError::Unsolicited)
        );
    }

    #[test]
    fn timed_out_requests_move_to_other_peers_and_a_liar_stops_counting() {
        let mut s = Syncer::default();
        let t0 = Instant::now();
        s.on_status(peer(1), 1_000_000); // claims far more than it serves
        s.on_status(peer(2), 50);
        let first = s.poll(0, t0);
        assert!(first.iter().any(|(p, _)| *p == peer(1)));
        let later = t0 + REQUEST_TIMEOUT + Duration::from_millis(1);
        let _ = s.poll(0, later);
        assert!(
            s.target() < 1_000_000,
            "the unserved claim is no longer the target"
        );
    }

    #[test]
    fn peers_that_fall_silent_are_forgotten_with_their_claims() {
        let mut s = Syncer::default();
        let t0 = Instant::now();
        s.on_status(peer(1), 500);
        s.on_status(peer(2), 5);
        let _ = s.poll(5, t0);
        assert_eq!(s.target(), 500);
        // peer 1 goes quiet (disconnected); peer 2 keeps reporting.
        let mut t = t0;
        for _ in 0..3 {
            t += PEER_SILENCE;
            s.on_status(peer(2), 5);
            let _ = s.poll(5, t);
        }
        assert_eq!(s.target(), 5, "the silent peer's claim is gone");
        assert_eq!(s.peers.len(), 1);
    }

    #[test]
    fn a_node_close_behind_leaves_it_to_consensus_unless_stalled() {
        let mut s = Syncer::default();
        let t0 = Instant::now();
        s.on_status(peer(1), 11);
        assert!(
            s.poll(10, t0).is_empty(),
            "one block behind: consensus catches up"
        );
        assert!(!s.poll(10, t0 + STALL + Duration::from_millis(1)).is_empty());
        s.on_status(peer(1), 20);
        assert!(!s.poll(11, t0).is_empty(), "far behind: sync");
    }

    #[test]
    fn a_claimed_height_counts_only_once_the_peer_serves_blocks_that_verify() {
        let c = chain(40);
        let mut s = Syncer::default();
        let t0 = Instant::now();
        // A liar claims 2^62 again and again and never serves; the honest peer is at 39.
        s.on_status(peer(1), 1 << 62);
        s.on_status(peer(2), 39);
        let reqs = s.poll(10, t0);
        assert!(!reqs.is_empty(), "claims are asked for");
        let p = s.progress(10, t0);
        assert!(!p.syncing && p.target == 10, "nothing shown yet: {p:?}");
        // The honest peer serves blocks that verify: its claim counts, the liar's not.
        for (to, m) in reqs {
            let SyncMsg::GetBlocks { id, from, count } = m else {
                panic!()
            };
            if to == peer(2) {
                s.on_blocks(to, id, serve(&c, from, count.into(), |_| true), |_, _| true)
                    .unwrap();
            }
        }
        let p = s.progress(10, t0);
        assert_eq!(p.target, 39, "the honest claim counts once shown");
        // The liar's requests time out; it claims 2^62 again: still not the target.
        let later = t0 + REQUEST_TIMEOUT + Duration::from_millis(1);
        let _ = s.poll(10, later);
        s.on_status(peer(1), 1 << 62);
        let _ = s.poll(10, later);
        assert_eq!(s.progress(10, later).target, 39);
        // An answer that does not verify takes credibility away too.
        let mut s = Syncer::default();
        s.on_status(peer(3), 39);
        let reqs = s.poll(0, t0);
        let SyncMsg::GetBlocks { id, from, count } = reqs[0].1 else {
            panic!()
        };
        let _ = s.on_blocks(
            peer(3),
            id,
            serve(&c, from, count.into(), |_| true),
            |_, _| false,
        );
        assert_eq!(s.progress(0, t0).target, 0);
    }
}
