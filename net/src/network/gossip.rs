//! Transaction gossip as a state machine without sockets or tasks: announce, then fetch
//! what is missing. It keeps what was seen, the bodies it can serve, the requests in
//! flight with the other peers that announced the same hash, and the relayed batches
//! waiting for validation. Each method takes the time and its input and returns what to
//! send and what to penalize; the actor ([`super`]) does the sending, the validation
//! and the penalties.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grapevine_ledger::collections::{FastMap, FastSet, RecentMap, RecentSet};
use grapevine_ledger::tx::SIG_BATCH;
use grapevine_ledger::{Address, Hash, SignedTx};

use super::{ConnId, MAX_ALTERNATES, NetStats, Verdict};
use crate::message::{MAX_ITEMS_PER_MESSAGE, Message};

/// Seen-hash memory for transactions.
const SEEN_CAPACITY: usize = 200_000;
/// Transaction bodies kept to answer requests. Peers ask within milliseconds of an
/// announcement, and a pooled transaction that is announced again brings its body
/// back; each generation still covers 3 s at 16,000/s, in about 15 MB of a validator's
/// memory.
const TX_STORE_CAPACITY: usize = 50_000;
/// A requested body not received in this long may be requested from another peer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Relayed transaction batches validated at once. Validation runs beside the actor, so
/// consensus messages and links are served while it works.
const MAX_VALIDATING: usize = 2;
/// Relayed transaction batches waiting for validation. Past this the node is behind on
/// admission and drops new batches unvalidated (their hashes are not marked seen, so
/// they are fetched again when re-announced): shedding load here keeps consensus and
/// links responsive.
const MAX_WAITING_BATCHES: usize = 256;
/// Waiting batches per peer, so one peer cannot fill the queue for all.
const MAX_WAITING_PER_PEER: usize = 64;

/// Relayed transactions waiting for validation: the connection and id of the peer
/// that sent them (its penalties still apply if it disconnects meanwhile), and the
/// bodies.
pub(super) type WaitingBatch = (ConnId, Address, Vec<SignedTx>);

/// A relayed batch with its verdicts.
pub(super) struct ValidatedBatch {
    pub(super) conn: ConnId,
    pub(super) id: Address,
    pub(super) fresh: Vec<SignedTx>,
    pub(super) verdicts: Vec<Verdict>,
}

/// Bodies a peer sent, sorted out.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// Bodies neither seen, nor being validated, nor repeated in the message: to be
    /// queued for validation with [`Gossip::enqueue`].
    pub(super) fresh: Vec<SignedTx>,
    /// Whether some were not requested from this peer (an offence).
    pub(super) unsolicited: bool,
}

/// What a batch's verdicts came to.
#[derive(Debug, Default)]
pub(super) struct Judged {
    /// Accepted transactions, to be passed to [`Gossip::accept`].
    pub(super) valid: Vec<SignedTx>,
    /// Transactions that cannot be valid: one offence each.
    pub(super) invalid: usize,
}

/// Transaction gossip for the connected peers it is told about ([`Gossip::peer_up`],
/// [`Gossip::peer_down`]).
pub(super) struct Gossip {
    stats: Arc<NetStats>,
    /// Hashes accepted, ignored or found invalid: never requested again.
    seen: RecentSet,
    /// Bodies of valid transactions, to answer requests.
    store: RecentMap<SignedTx>,
    /// Requested hashes: the peer asked, and when.
    inflight: FastMap<Hash, (ConnId, Instant)>,
    /// Other peers that announced a requested hash, asked in turn if the first fails.
    alternates: FastMap<Hash, Vec<ConnId>>,
    /// Each connected peer's announcements not yet sent (see [`Gossip::flush`]).
    announce: FastMap<ConnId, Vec<Hash>>,
    /// Hashes of relayed transactions being validated or waiting for it.
    validating: FastSet<Hash>,
    /// Batches being validated now.
    validations: usize,
    /// Batches waiting for a validation slot, oldest first.
    waiting: VecDeque<WaitingBatch>,
}

impl Gossip {
    /// Gossip with nothing seen and no peers; counts bodies and duplicates in `stats`.
    pub(super) fn new(stats: Arc<NetStats>) -> Self {
        Gossip {
            stats,
            seen: RecentSet::new(SEEN_CAPACITY),
            store: RecentMap::new(TX_STORE_CAPACITY),
            inflight: FastMap::default(),
            alternates: FastMap::default(),
            announce: FastMap::default(),
            validating: FastSet::default(),
            validations: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Peer `conn` is connected: it gets announcements and may be asked for bodies.
    pub(super) fn peer_up(&mut self, conn: ConnId) {
        self.announce.entry(conn).or_default();
    }

    /// Peer `conn` is gone: its waiting batches are not worth the work any more, and
    /// its requests go to other announcers at the next [`Gossip::retry`].
    pub(super) fn peer_down(&mut self, conn: ConnId) {
        self.announce.remove(&conn);
        let validating = &mut self.validating;
        self.waiting.retain(|(c, _, fresh)| {
            if *c == conn {
                for t in fresh {
                    validating.remove(&t.hash());
                }
            }
            *c != conn
        });
    }

    /// `conn` announced `hashes`: requests from it those neither seen, nor being
    /// validated, nor requested already; for those requested from another peer, `conn`
    /// is remembered as an alternate. Returns the request for `conn`, if any.
    #[must_use]
    pub(super) fn on_announce(
        &mut self,
        now: Instant,
        conn: ConnId,
        hashes: Vec<Hash>,
    ) -> Option<Message> {
        let mut want = Vec::new();
        for h in hashes {
            if self.seen.contains(&h) || self.validating.contains(&h) {
                continue;
            }
            if self.inflight.contains_key(&h) {
                // Remember who else has it, in case the first never answers.
                let alts = self.alternates.entry(h).or_default();
                if alts.len() < MAX_ALTERNATES && !alts.contains(&conn) {
                    alts.push(conn);
                }
            } else {
                want.push(h);
            }
        }
        for h in &want {
            self.inflight.insert(*h, (conn, now));
        }
        (!want.is_empty()).then_some(Message::TxRequest(want))
    }

    /// A peer asked for `hashes`: the answer with the bodies this node keeps, if any.
    #[must_use]
    pub(super) fn on_request(&self, hashes: &[Hash]) -> Option<Message> {
        let bodies: Vec<SignedTx> = hashes
            .iter()
            .filter_map(|h| self.store.get(h).copied())
            .collect();
        (!bodies.is_empty()).then_some(Message::Txs(bodies))
    }

    /// `conn` sent bodies: settles their requests, counts bodies and duplicates, and
    /// sorts out the fresh ones and whether any came unrequested.
    #[must_use]
    pub(super) fn on_txs(&mut self, conn: ConnId, txs: Vec<SignedTx>) -> Received {
        let mut out = Received::default();
        let mut in_message = HashSet::new();
        for t in txs {
            let h = t.hash();
            self.stats.tx_bodies.fetch_add(1, Ordering::Relaxed);
            match self.inflight.get(&h) {
                Some((c, _)) if *c == conn => {
                    self.inflight.remove(&h);
                }
                _ => out.unsolicited = true,
            }
            if self.seen.contains(&h) || self.validating.contains(&h) || !in_message.insert(h) {
                self.stats.tx_duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            out.fresh.push(t);
        }
        out
    }

    /// Queues fresh bodies from `conn` (node id `id`) for validation, unless the
    /// queue, or that peer's share of it, is full: then they are dropped unseen (a
    /// later announcement fetches them again). Returns whether they were queued.
    pub(super) fn enqueue(&mut self, conn: ConnId, id: Address, fresh: Vec<SignedTx>) -> bool {
        let from_peer = self.waiting.iter().filter(|(c, _, _)| *c == conn).count();
        if self.waiting.len() >= MAX_WAITING_BATCHES || from_peer >= MAX_WAITING_PER_PEER {
            tracing::debug!(
                txs = fresh.len(),
                "admission behind; relayed transactions dropped"
            );
            return false;
        }
        self.validating.extend(fresh.iter().map(SignedTx::hash));
        self.waiting.push_back((conn, id, fresh));
        true
    }

    /// The next validation job if a slot is free: the oldest waiting batches, together
    /// up to one signature batch ([`SIG_BATCH`]), as a peer's message often holds a few
    /// dozen transactions and batch verification costs less per signature the larger
    /// the batch. The slot stays taken until [`Gossip::on_validated`].
    #[must_use]
    pub(super) fn next_validation(&mut self) -> Option<Vec<WaitingBatch>> {
        if self.validations >= MAX_VALIDATING || self.waiting.is_empty() {
            return None;
        }
        let mut jobs: Vec<WaitingBatch> = Vec::new();
        let mut total = 0;
        while let Some(next) = self.waiting.front() {
            if !jobs.is_empty() && total + next.2.len() > SIG_BATCH {
                break;
            }
            total += next.2.len();
            jobs.extend(self.waiting.pop_front());
        }
        self.validations += 1;
        Some(jobs)
    }

    /// A validation job finished: frees its slot and its hashes. The verdicts are
    /// applied with [`Gossip::judge`], batch by batch.
    pub(super) fn on_validated(&mut self, batches: &[ValidatedBatch]) {
        self.validations = self.validations.saturating_sub(1);
        for b in batches {
            for t in &b.fresh {
                self.validating.remove(&t.hash());
            }
        }
    }

    /// Applies one batch's verdicts (a missing verdict counts as
    /// [`Verdict::Ignored`]): ignored and invalid hashes are seen, deferred ones are
    /// not (they are fetched again when announced again).
    #[must_use]
    pub(super) fn judge(&mut self, fresh: Vec<SignedTx>, verdicts: Vec<Verdict>) -> Judged {
        let mut out = Judged::default();
        for (t, v) in fresh.into_iter().zip(
            verdicts
                .into_iter()
                .chain(std::iter::repeat(Verdict::Ignored)),
        ) {
            let h = t.hash();
            match v {
                Verdict::Accepted => out.valid.push(t),
                Verdict::Ignored => {
                    // Not asked for again from others, not relayed.
                    self.seen.insert(h, ());
                }
                Verdict::Invalid => {
                    self.seen.insert(h, ());
                    out.invalid += 1;
                }
                Verdict::Deferred => {}
            }
        }
        out
    }

    /// Records valid transactions not seen before, keeps their bodies, and queues their
    /// announcement to every peer but `except`.
    pub(super) fn accept(&mut self, txs: Vec<SignedTx>, except: Option<ConnId>) {
        let mut hashes = Vec::with_capacity(txs.len());
        for t in txs {
            let h = t.hash();
            if !self.seen.insert(h, ()) {
                continue;
            }
            self.store.insert(h, t);
            hashes.push(h);
        }
        for (c, queue) in self.announce.iter_mut() {
            if Some(*c) != except {
                queue.extend_from_slice(&hashes);
            }
        }
    }

    /// Queues the announcement of transactions the node still holds to every peer,
    /// seen or not, so that peers that deferred or dropped them fetch them now.
    pub(super) fn reannounce(&mut self, txs: Vec<SignedTx>) {
        let mut hashes = Vec::with_capacity(txs.len());
        for t in txs {
            let h = t.hash();
            self.seen.insert(h, ());
            self.store.insert(h, t);
            hashes.push(h);
        }
        for queue in self.announce.values_mut() {
            queue.extend_from_slice(&hashes);
        }
    }

    /// The queued announcements, at most [`MAX_ITEMS_PER_MESSAGE`] hashes a message.
    #[must_use]
    pub(super) fn flush(&mut self) -> Vec<(ConnId, Message)> {
        let mut out = Vec::new();
        for (c, queue) in self.announce.iter_mut() {
            let all = std::mem::take(queue);
            for chunk in all.chunks(MAX_ITEMS_PER_MESSAGE) {
                out.push((*c, Message::TxAnnounce(chunk.to_vec())));
            }
        }
        out
    }

    /// Requests unanswered for [`REQUEST_TIMEOUT`], or whose peer left, go to the
    /// latest connected alternate; those without one are given up (a later
    /// announcement asks again). Returns the new requests.
    #[must_use]
    pub(super) fn retry(&mut self, now: Instant) -> Vec<(ConnId, Message)> {
        let announce = &self.announce;
        let expired: Vec<Hash> = self
            .inflight
            .iter()
            .filter(|(_, (c, t))| {
                now.duration_since(*t) >= REQUEST_TIMEOUT || !announce.contains_key(c)
            })
            .map(|(h, _)| *h)
            .collect();
        let mut retry: HashMap<ConnId, Vec<Hash>> = HashMap::new();
        for h in expired {
            self.inflight.remove(&h);
            let Some(alts) = self.alternates.get_mut(&h) else {
                continue;
            };
            while let Some(c) = alts.pop() {
                if self.announce.contains_key(&c) {
                    retry.entry(c).or_default().push(h);
                    self.inflight.insert(h, (c, now));
                    break;
                }
            }
        }
        let inflight = &self.inflight;
        self.alternates.retain(|h, _| inflight.contains_key(h));
        let mut out = Vec::new();
        for (c, hashes) in retry {
            for chunk in hashes.chunks(MAX_ITEMS_PER_MESSAGE) {
                out.push((c, Message::TxRequest(chunk.to_vec())));
            }
        }
        out
    }
}
