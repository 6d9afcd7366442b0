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
