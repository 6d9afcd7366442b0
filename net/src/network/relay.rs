//! Consensus relay as a state machine without sockets or tasks: which consensus
//! messages the node took recently (a copy is dropped for [`SEEN_CONSENSUS_TTL`]), and
//! announce-then-fetch for large ones: `ConsensusHave` to announce, `ConsensusWant` to
//! ask one announcer at a time, and the store of messages this node announced, each
//! served once per peer it was announced to. Each method takes the time and its input
//! and returns what to send; the actor ([`super`]) sends it and delivers messages to
//! the node.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::collections::{FastMap, RecentMap};
use grapevine_ledger::{Hash, crypto::sha256};

use super::{ConnId, MAX_ALTERNATES, RELAY_HAVE_BYTES, SEEN_CONSENSUS_TTL};
use crate::message::Message;

/// Seen-hash memory for consensus messages (a few hundred a second at most).
const SEEN_CONSENSUS_CAPACITY: usize = 20_000;
/// Relayed consensus messages kept to answer requests: at most this many...
const RELAYED_KEEP: usize = 64;
/// ...and this many bytes.
const RELAYED_KEEP_BYTES: usize = 64 * 1024 * 1024;
/// An announced consensus message not received this long after it was asked for (or
/// whose peer left) is asked of the next peer that announced it.
pub(super) const WANT_RETRY: Duration = Duration::from_secs(1);
/// At most this many announced consensus messages are asked of one peer at once, so
/// that a peer announcing messages it does not send cannot crowd out the others...
pub(super) const MAX_WANTS_PER_PEER: usize = 8;
/// ...and at most this many in all.
pub(super) const MAX_WANTED: usize = 1024;

/// An announced consensus message asked for.
struct Want {
    /// The peer asked, and when.
    conn: ConnId,
    asked: Instant,
    /// Other peers that announced it, asked in turn if `conn` does not deliver.
    alternates: Vec<ConnId>,
}

/// A large consensus message this node relayed by announcement.
struct Relayed {
    hash: Hash,
    /// Its `Message::Consensus` frame.
    frame: Bytes,
    /// Peers it was announced to that have not asked for it: each is answered once.
    announced_to: Vec<ConnId>,
}

/// The answer to a peer's `ConsensusWant`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// The message's `Consensus` frame, for that peer.
    Serve(Bytes),
    /// Asked twice, or never announced to that peer: an offence.
    Refuse,
    /// A message no longer kept (or never relayed): not answered, the peer asks
    /// another announcer.
    Unknown,
}

/// Consensus relay for the connected peers it is told about ([`Relay::peer_up`],
/// [`Relay::peer_down`]).
pub(super) struct Relay {
    /// Consensus messages the node took, and when (see [`SEEN_CONSENSUS_TTL`]).
    seen: RecentMap<Instant>,
    /// Large consensus messages this node relayed by announcement, oldest first, to
    /// answer `ConsensusWant`; at most [`RELAYED_KEEP`] of them and
    /// [`RELAYED_KEEP_BYTES`] in all.
    relayed: VecDeque<Relayed>,
    relayed_bytes: usize,
    /// Announced consensus messages asked for.
    wanted: FastMap<Hash, Want>,
    /// Each connected peer's wants not yet answered.
    open_wants: FastMap<ConnId, usize>,
}

impl Relay {
    /// A relay with nothing seen and no peers.
    pub(super) fn new() -> Self {
        Relay {
            seen: RecentMap::new(SEEN_CONSENSUS_CAPACITY),
            relayed: VecDeque::new(),
            relayed_bytes: 0,
            wanted: FastMap::default(),
            open_wants: FastMap::default(),
        }
    }

    /// Peer `conn` is connected: it may be asked for announced messages.
    pub(super) fn peer_up(&mut self, conn: ConnId) {
        self.open_wants.insert(conn, 0);
    }

    /// Peer `conn` is gone: what was asked of it goes to the next announcer at the
    /// next [`Relay::retry`].
    pub(super) fn peer_down(&mut self, conn: ConnId) {
        self.open_wants.remove(&conn);
    }

    /// Whether the node took the consensus message `h` less than
    /// [`SEEN_CONSENSUS_TTL`] before `now`.
    fn seen_recently(&self, now: Instant, h: &Hash) -> bool {
        self.seen
            .get(h)
            .is_some_and(|at| now.saturating_duration_since(*at) < SEEN_CONSENSUS_TTL)
    }

    /// Records that the node took (or sent) the consensus message `h` at `now`. Only
    /// once the node's queue has taken it: a copy dropped at a full queue must not make
    /// the next copy (a re-sent timeout, another peer's relay) a duplicate, or a burst
    /// that fills the queue could end liveness.
    pub(super) fn mark_seen(&mut self, now: Instant, h: Hash) {
        match self.seen.get_mut(&h) {
            Some(at) => *at = now,
            None => {
                self.seen.insert(h, now);
            }
        }
    }

    /// A consensus message with hash `h` arrived: settles its want, and says whether
    /// it goes to the node (not taken in the last [`SEEN_CONSENSUS_TTL`]). The caller
    /// records it with [`Relay::mark_seen`] once the node took it.
    #[must_use]
    pub(super) fn on_consensus(&mut self, now: Instant, h: Hash) -> bool {
        if let Some(w) = self.wanted.remove(&h)
            && let Some(open) = self.open_wants.get_mut(&w.conn)
        {
            *open = open.saturating_sub(1);
        }
        !self.seen_recently(now, &h)
    }

    /// `conn` announced the consensus message `h`. One not taken recently is asked of
    /// `conn`, unless it is asked of another peer already (then `conn` is an
    /// alternate), or `conn` has [`MAX_WANTS_PER_PEER`] open, or [`MAX_WANTED`] are
    /// open in all. Returns the want to send.
    #[must_use]
    pub(super) fn on_have(
        &mut self,
        now: Instant,
        conn: ConnId,
        h: Hash,
    ) -> Option<(ConnId, Message)> {
        if self.seen_recently(now, &h) {
            return None;
        }
        if let Some(w) = self.wanted.get_mut(&h) {
            // Asked of someone already: remember who else has it.
            if w.conn != conn
                && w.alternates.len() < MAX_ALTERNATES
                && !w.alternates.contains(&conn)
            {
                w.alternates.push(conn);
            }
            return None;
        }
        if self.wanted.len() < MAX_WANTED {
            return self.ask(now, h, conn, Vec::new());
        }
        None
    }

    /// `conn` asked for the announced consensus message `h`: served once per peer it
    /// was announced to.
    #[must_use]
    pub(super) fn on_want(&mut self, conn: ConnId, h: Hash) -> Answer {
        let Some(r) = self.relayed.iter_mut().rev().find(|r| r.hash == h) else {
            return Answer::Unknown;
        };
        match r.announced_to.iter().position(|c| *c == conn) {
            Some(i) => {
                r.announced_to.swap_remove(i);
                Answer::Serve(r.frame.clone())
            }
            None => Answer::Refuse,
        }
    }

    /// The node sends its own consensus message `payload`: recorded as seen, and its
    /// `Consensus` frame returned, for every peer.
    #[must_use]
    pub(super) fn broadcast(&mut self, now: Instant, payload: &[u8]) -> Bytes {
        self.mark_seen(now, sha256(&[payload]));
        // Encoded once for every peer: a proposal carries a whole block.
        Bytes::from(Message::Consensus(payload.to_vec()).encode())
    }

    /// The node relays a consensus message of another node to peers `to`: recorded as
    /// seen; one smaller than [`RELAY_HAVE_BYTES`] goes whole, a larger one is kept to
    /// be served and announced instead. Returns the frame to send to each of `to`.
    #[must_use]
    pub(super) fn relay(&mut self, now: Instant, payload: &[u8], to: &[ConnId]) -> Bytes {
        let h = sha256(&[payload]);
        self.mark_seen(now, h);
        let frame = Bytes::from(Message::Consensus(payload.to_vec()).encode());
        if payload.len() < RELAY_HAVE_BYTES {
            return frame;
        }
        self.relayed_bytes += frame.len();
        self.relayed.push_back(Relayed {
            hash: h,
            frame,
            announced_to: to.to_vec(),
        });
        while self.relayed.len() > RELAYED_KEEP
            || (self.relayed_bytes > RELAYED_KEEP_BYTES && self.relayed.len() > 1)
        {
            if let Some(old) = self.relayed.pop_front() {
                self.relayed_bytes -= old.frame.len();
            }
        }
        Bytes::from(Message::ConsensusHave(h).encode())
    }

    /// Wants not answered within [`WANT_RETRY`], or whose peer left: asked of the next
    /// peer that announced the message, or given up (a later announcement asks again).
    /// Returns the new wants.
    #[must_use]
    pub(super) fn retry(&mut self, now: Instant) -> Vec<(ConnId, Message)> {
        let due: Vec<Hash> = self
            .wanted
            .iter()
            .filter(|(_, w)| {
                now.saturating_duration_since(w.asked) >= WANT_RETRY
                    || !self.open_wants.contains_key(&w.conn)
            })
            .map(|(h, _)| *h)
            .collect();
        let mut out = Vec::new();
        for h in due {
            let Some(w) = self.wanted.remove(&h) else {
                continue;
            };
            if let Some(open) = self.open_wants.get_mut(&w.conn) {
                *open = open.saturating_sub(1);
            }
            let mut alternates = w.alternates;
            if !alternates.is_empty() {
                let first = alternates.remove(0);
                out.extend(self.ask(now, h, first, alternates));
            }
        }
        out
    }

    /// Asks `conn` for the announced consensus message `h`, or the first of
    /// `alternates` after it that is connected with fewer than [`MAX_WANTS_PER_PEER`]
    /// open; the others stay alternates.
    fn ask(
        &mut self,
        now: Instant,
        h: Hash,
        conn: ConnId,
        mut alternates: Vec<ConnId>,
    ) -> Option<(ConnId, Message)> {
        let mut next = Some(conn);
        while let Some(c) = next {
            if let Some(open) = self.open_wants.get_mut(&c)
                && *open < MAX_WANTS_PER_PEER
            {
                *open += 1;
                self.wanted.insert(
                    h,
                    Want {
                        conn: c,
                        asked: now,
                        alternates,
                    },
                );
                return Some((c, Message::ConsensusWant(h)));
            }
            next = (!alternates.is_empty()).then(|| alternates.remove(0));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay with peers `conns` connected.
    fn relay(conns: &[ConnId]) -> Relay {
        let mut r = Relay::new();
        for c in conns {
            r.peer_up(*c);
        }
        r
    }

    fn hash(i: u32) -> Hash {
        sha256(&[&i.to_le_bytes()])
    }

    fn want(conn: ConnId, h: Hash) -> Option<(ConnId, Message)> {
        Some((conn, Message::ConsensusWant(h)))
    }

    #[test]
    fn a_message_dropped_at_a_full_queue_is_not_seen_and_a_copy_is_dropped_only_within_the_ttl() {
        let t0 = Instant::now();
        let mut r = relay(&[1, 2]);
        let h = hash(1);
        assert!(r.on_consensus(t0, h), "first copy goes to the node");
        // The node's queue was full: not marked seen, so the next copy is taken.
        assert!(r.on_consensus(t0, h));
        r.mark_seen(t0, h);
        let t1 = t0 + SEEN_CONSENSUS_TTL / 2;
        assert!(!r.on_consensus(t1, h), "a relayed copy within the TTL");
        assert_eq!(r.on_have(t1, 2, h), None, "nor is it asked for");
        let t2 = t0 + SEEN_CONSENSUS_TTL;
        assert!(
            r.on_consensus(t2, h),
            "a retransmission after the TTL is taken"
        );
        assert_eq!(r.on_have(t2, 2, h), want(2, h));
    }

    #[test]
    fn own_and_small_messages_go_whole_and_count_as_seen() {
        let t0 = Instant::now();
        let mut r = relay(&[1, 2]);
        let small = vec![5u8; RELAY_HAVE_BYTES - 1];
        let frame = r.relay(t0, &small, &[2]);
        assert_eq!(&frame[..], &Message::Consensus(small.clone()).encode()[..]);
        assert!(!r.on_consensus(t0, sha256(&[&small])));
        assert_eq!(r.on_want(2, sha256(&[&small])), Answer::Unknown, "not kept");

        let own = vec![6u8; RELAY_HAVE_BYTES * 2];
        let frame = r.broadcast(t0, &own);
        assert_eq!(&frame[..], &Message::Consensus(own.clone()).encode()[..]);
        assert!(!r.on_consensus(t0, sha256(&[&own])));
    }

    #[test]
    fn a_large_message_is_announced_and_served_once_per_announced_peer() {
        let t0 = Instant::now();
        let mut r = relay(&[1, 2, 3]);
        let big = vec![7u8; RELAY_HAVE_BYTES];
        let h = sha256(&[&big]);
        let have = r.relay(t0, &big, &[2, 3]);
        assert_eq!(&have[..], &Message::ConsensusHave(h).encode()[..]);

        let whole = Bytes::from(Message::Consensus(big).encode());
        assert_eq!(r.on_want(2, h), Answer::Serve(whole.clone()));
        assert_eq!(
            r.on_want(2, h),
            Answer::Refuse,
            "a second want is an offence"
        );
        assert_eq!(r.on_want(1, h), Answer::Refuse, "never announced to it");
        assert_eq!(r.on_want(3, h), Answer::Serve(whole));
        assert_eq!(r.on_want(2, hash(9)), Answer::Unknown);

        // Only the last RELAYED_KEEP are kept.
        for i in 0..RELAYED_KEEP {
            let mut other = vec![8u8; RELAY_HAVE_BYTES];
            other[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let _ = r.relay(t0, &other, &[1]);
        }
        assert_eq!(r.relayed.len(), RELAYED_KEEP);
        assert!(r.relayed.iter().all(|m| m.hash != h));
    }

    #[test]
    fn wants_per_peer_and_in_total_are_bounded() {
        let t0 = Instant::now();
        let conns: Vec<ConnId> = (0..200).collect();
        let mut r = relay(&conns);
        let mut asked = 0;
        let mut i = 0;
        for c in &conns {
            for _ in 0..MAX_WANTS_PER_PEER + 2 {
                i += 1;
                if let Some((to, _)) = r.on_have(t0, *c, hash(i)) {
                    assert_eq!(to, *c);
                    asked += 1;
                }
            }
            let per_peer = (MAX_WANTS_PER_PEER * (*c as usize + 1)).min(MAX_WANTED);
            assert_eq!(asked, per_peer, "at most MAX_WANTS_PER_PEER from one peer");
        }
        assert_eq!(r.wanted.len(), MAX_WANTED);

        // A delivered message frees its peer's slot.
        let (h, w) = r.wanted.iter().next().map(|(h, w)| (*h, w.conn)).unwrap();
        assert!(r.on_consensus(t0, h));
        assert_eq!(r.open_wants[&w], MAX_WANTS_PER_PEER - 1);
        assert_eq!(r.on_have(t0, w, hash(100_000)), want(w, hash(100_000)));
    }

    #[test]
    fn a_want_not_answered_in_time_or_whose_peer_left_goes_to_the_next_announcer() {
        let t0 = Instant::now();
        let mut r = relay(&(1..=10).collect::<Vec<_>>());
        let h = hash(1);
        assert_eq!(r.on_have(t0, 1, h), want(1, h));
        for c in 1..=10 {
            assert_eq!(r.on_have(t0, c, h), None, "asked once");
        }
        assert_eq!(r.wanted[&h].alternates, vec![2, 3, 4, 5]);

        assert!(r.retry(t0 + WANT_RETRY / 2).is_empty(), "not yet due");
        let t1 = t0 + WANT_RETRY;
        assert_eq!(r.retry(t1), vec![want(2, h).unwrap()]);
        assert_eq!(r.open_wants[&1], 0, "the first peer's slot is freed");
        // The peer asked leaves: the next is asked at once; one that left is skipped.
        r.peer_down(2);
        r.peer_down(3);
        assert_eq!(r.retry(t1), vec![want(4, h).unwrap()]);
        // One with all its slots taken is skipped too.
        *r.open_wants.get_mut(&5).unwrap() = MAX_WANTS_PER_PEER;
        assert!(r.retry(t1 + WANT_RETRY).is_empty(), "alternates exhausted");
        assert!(r.wanted.is_empty());
        assert_eq!(
            r.on_have(t1, 6, h),
            want(6, h),
            "a later announcement asks again"
        );
    }
}
