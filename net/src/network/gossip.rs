//! Transaction gossip as a state machine without sockets or tasks: announce, then fetch
//! what is missing. It keeps what was seen, the bodies it can serve (each only to the
//! peers it was announced to), the requests in
//! flight with the other peers that announced the same hash, and the relayed batches
//! waiting for validation. Each method takes the time and its input and returns what to
//! send and what to penalize; the actor ([`super`]) does the sending, the validation
//! and the penalties.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
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

/// The node id and IP address of a peer, so that it can be banned after it left.
pub(super) type Origin = (Address, IpAddr);

/// Relayed transactions waiting for validation: the connection and origin of the peer
/// that sent them (its penalties still apply if it disconnects meanwhile), and the
/// bodies.
pub(super) type WaitingBatch = (ConnId, Origin, Vec<SignedTx>);

/// A relayed batch with its verdicts.
pub(super) struct ValidatedBatch {
    pub(super) conn: ConnId,
    pub(super) id: Origin,
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

/// The answer to a peer's `TxRequest`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Served {
    /// The bodies to send, if any.
    pub(super) answer: Option<Message>,
    /// Hashes asked for that this node keeps but never announced to that peer (it
    /// sent them, or connected after they were announced): not served, an offence.
    pub(super) unannounced: usize,
}

/// A body kept to answer requests, and to whom it was announced: every peer connected
/// at `at` but `from`.
#[derive(Clone, Copy)]
struct Stored {
    tx: SignedTx,
    from: Option<ConnId>,
    at: Instant,
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
    /// Bodies of valid transactions, to answer requests. Announcements go to every
    /// peer connected at the time but the sender, so what was announced to a peer
    /// follows from each body's sender and time and the peer's `joined`: no per-peer
    /// set of hashes (at 30,000 tx/s and 2 s of retries, 60,000 hashes for each peer).
    store: RecentMap<Stored>,
    /// When each connected peer came up.
    joined: FastMap<ConnId, Instant>,
    /// Requested hashes: the peer asked, and when.
    inflight: FastMap<Hash, (ConnId, Instant)>,
    /// Other peers that announced a requested hash, asked in turn if the first fails.
    alternates: FastMap<Hash, Vec<ConnId>>,
    /// Each connected peer's announcements not yet sent (see [`Gossip::flush`]).
    announce: FastMap<ConnId, Vec<Hash>>,
    /// Bodies of this node's own transactions not yet pushed to every peer (see
    /// [`Gossip::flush`]).
    push: Vec<SignedTx>,
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
            joined: FastMap::default(),
            inflight: FastMap::default(),
            alternates: FastMap::default(),
            announce: FastMap::default(),
            push: Vec::new(),
            validating: FastSet::default(),
            validations: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Peer `conn` is connected since `now`: it gets announcements (and may ask for
    /// those bodies) and may be asked for bodies.
    pub(super) fn peer_up(&mut self, conn: ConnId, now: Instant) {
        self.announce.entry(conn).or_default();
        self.joined.insert(conn, now);
    }

    /// Peer `conn` is gone: its waiting batches are not worth the work any more, and
    /// its requests go to other announcers at the next [`Gossip::retry`].
    pub(super) fn peer_down(&mut self, conn: ConnId) {
        self.announce.remove(&conn);
        self.joined.remove(&conn);
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

    /// Peer `conn` asked for `hashes` (at most [`MAX_ITEMS_PER_MESSAGE`], as decoding
    /// checks): the answer with the bodies this node keeps and announced to it. A
    /// hash no longer kept is passed over (the peer asks another announcer).
    #[must_use]
    pub(super) fn on_request(&self, conn: ConnId, hashes: &[Hash]) -> Served {
        let joined = self.joined.get(&conn);
        let mut out = Served::default();
        let mut bodies = Vec::new();
        for h in hashes {
            let Some(s) = self.store.get(h) else {
                continue;
            };
            if s.from != Some(conn) && joined.is_some_and(|j| s.at >= *j) {
                bodies.push(s.tx);
            } else {
                out.unannounced += 1;
            }
        }
        out.answer = (!bodies.is_empty()).then_some(Message::Txs(bodies));
        out
    }

    /// `conn` sent bodies, in answer to requests (`pushed` false) or pushed as its own
    /// (`pushed`): settles their requests, counts bodies and duplicates, and sorts out
    /// the fresh ones and whether any came unrequested (pushed bodies never do).
    #[must_use]
    pub(super) fn on_txs(&mut self, conn: ConnId, txs: Vec<SignedTx>, pushed: bool) -> Received {
        let mut out = Received::default();
        let mut in_message = HashSet::new();
        for t in txs {
            let h = t.hash();
            self.stats.tx_bodies.fetch_add(1, Ordering::Relaxed);
            match self.inflight.get(&h) {
                Some((c, _)) if *c == conn => {
                    self.inflight.remove(&h);
                }
                // Pushed while requested from another peer: that request is left to
                // finish (its answer then counts as a duplicate).
                _ if pushed => {}
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
    pub(super) fn enqueue(&mut self, conn: ConnId, id: Origin, fresh: Vec<SignedTx>) -> bool {
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

    /// Marks `txs` seen and keeps the bodies of those not seen before, as sent by `from`
    /// at `now` (see [`Stored`]); returns those, with their hashes.
    fn keep(
        &mut self,
        now: Instant,
        txs: Vec<SignedTx>,
        from: Option<ConnId>,
    ) -> Vec<(SignedTx, Hash)> {
        let mut fresh = Vec::with_capacity(txs.len());
        for tx in txs {
            let h = tx.hash();
            if self.seen.insert(h, ()) {
                self.store.insert(h, Stored { tx, from, at: now });
                fresh.push((tx, h));
            }
        }
        fresh
    }

    /// Records this node's own transactions (submitted to it) not seen before, keeps
    /// their bodies, and queues the bodies to be pushed to every peer: none can have
    /// them yet, and a push saves the round trip of an announcement and its request.
    pub(super) fn accept_own(&mut self, now: Instant, txs: Vec<SignedTx>) {
        let fresh = self.keep(now, txs, None);
        self.push.extend(fresh.into_iter().map(|(t, _)| t));
    }

    /// Records valid transactions not seen before, keeps their bodies, and queues their
    /// announcement (at `now`) to every peer but `except`.
    pub(super) fn accept(&mut self, now: Instant, txs: Vec<SignedTx>, except: Option<ConnId>) {
        let hashes: Vec<Hash> = self
            .keep(now, txs, except)
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        for (c, queue) in self.announce.iter_mut() {
            if Some(*c) != except {
                queue.extend_from_slice(&hashes);
            }
        }
    }

    /// Queues the announcement of transactions the node still holds to every peer,
    /// seen or not, so that peers that deferred or dropped them fetch them now.
    pub(super) fn reannounce(&mut self, now: Instant, txs: Vec<SignedTx>) {
        let mut hashes = Vec::with_capacity(txs.len());
        for t in txs {
            let h = t.hash();
            self.seen.insert(h, ());
            let stored = Stored {
                tx: t,
                from: None,
                at: now,
            };
            match self.store.get_mut(&h) {
                Some(s) => *s = stored,
                None => {
                    self.store.insert(h, stored);
                }
            }
            hashes.push(h);
        }
        for queue in self.announce.values_mut() {
            queue.extend_from_slice(&hashes);
        }
    }

    /// The queued pushes and announcements, at most [`MAX_ITEMS_PER_MESSAGE`] items a
    /// message.
    #[must_use]
    pub(super) fn flush(&mut self) -> Vec<(ConnId, Message)> {
        let mut out = Vec::new();
        let push = std::mem::take(&mut self.push);
        for chunk in push.chunks(MAX_ITEMS_PER_MESSAGE) {
            for c in self.announce.keys() {
                out.push((*c, Message::TxPush(chunk.to_vec())));
            }
        }
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

#[cfg(test)]
mod tests {
    use grapevine_ledger::{Keypair, Transaction};

    use std::net::Ipv4Addr;

    use super::*;

    const PEER: Origin = (Address([9; 32]), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));

    /// `n` distinct signed transactions; `from` picks the sender.
    fn txs(from: u8, n: u64) -> Vec<SignedTx> {
        let k = Keypair::from_seed(&[from; 32]);
        (0..n)
            .map(|i| {
                Transaction {
                    chain_id: 1,
                    from: k.address(),
                    to: Address([1; 32]),
                    amount: i,
                    fee: 1,
                    nonce: i,
                }
                .sign(&k)
            })
            .collect()
    }

    fn hashes(txs: &[SignedTx]) -> Vec<Hash> {
        txs.iter().map(SignedTx::hash).collect()
    }

    /// Gossip with peers `conns` connected.
    fn gossip(conns: &[ConnId]) -> Gossip {
        let mut g = Gossip::new(Arc::new(NetStats::default()));
        for c in conns {
            g.peer_up(*c, Instant::now());
        }
        g
    }

    #[test]
    fn a_hash_seen_or_in_flight_is_not_requested_again_and_its_announcer_is_an_alternate() {
        let t0 = Instant::now();
        let mut g = gossip(&[1, 2, 3]);
        let [a, b, c] = txs(1, 3).try_into().unwrap();
        g.accept(Instant::now(), vec![c], None);

        let request = g.on_announce(t0, 1, vec![a.hash(), b.hash(), c.hash()]);
        assert_eq!(request, Some(Message::TxRequest(vec![a.hash(), b.hash()])));
        assert_eq!(g.on_announce(t0, 2, vec![a.hash(), c.hash()]), None);
        assert_eq!(g.on_announce(t0, 2, vec![a.hash()]), None, "asked once");
        assert_eq!(g.alternates[&a.hash()], vec![2], "each announcer once");

        // Timed out: `a` goes to the alternate, `b` (none) is given up...
        let retries = g.retry(t0 + REQUEST_TIMEOUT);
        assert_eq!(retries, vec![(2, Message::TxRequest(vec![a.hash()]))]);
        // ...and a later announcement of `b` asks again.
        let request = g.on_announce(t0 + REQUEST_TIMEOUT, 3, vec![b.hash()]);
        assert_eq!(request, Some(Message::TxRequest(vec![b.hash()])));
    }

    #[test]
    fn a_request_that_times_out_or_whose_peer_left_goes_to_the_next_alternate() {
        let t0 = Instant::now();
        let mut g = gossip(&(1..=10).collect::<Vec<_>>());
        let h = txs(1, 1)[0].hash();
        let _ = g.on_announce(t0, 1, vec![h]);
        for c in 2..=10 {
            assert_eq!(g.on_announce(t0, c, vec![h]), None);
        }
        assert_eq!(g.alternates[&h], vec![2, 3, 4, 5], "at most MAX_ALTERNATES");

        assert!(g.retry(t0 + REQUEST_TIMEOUT / 2).is_empty(), "not yet due");
        let t1 = t0 + REQUEST_TIMEOUT;
        assert_eq!(g.retry(t1), vec![(5, Message::TxRequest(vec![h]))]);
        // The peer asked leaves: the next alternate is asked at once; one that left
        // is skipped.
        g.peer_down(5);
        g.peer_down(4);
        assert_eq!(g.retry(t1), vec![(3, Message::TxRequest(vec![h]))]);
        let t2 = t1 + REQUEST_TIMEOUT;
        assert_eq!(g.retry(t2), vec![(2, Message::TxRequest(vec![h]))]);
        let t3 = t2 + REQUEST_TIMEOUT;
        assert!(g.retry(t3).is_empty(), "alternates exhausted: given up");
        assert!(g.inflight.is_empty() && g.alternates.is_empty());
    }

    #[test]
    fn unsolicited_and_repeated_bodies_are_reported() {
        let t0 = Instant::now();
        let mut g = gossip(&[1, 2]);
        let [a, b] = txs(1, 2).try_into().unwrap();
        let _ = g.on_announce(t0, 1, vec![a.hash()]);

        let got = g.on_txs(2, vec![a], false);
        assert!(got.unsolicited, "requested of another peer");
        assert_eq!(hashes(&got.fresh), vec![a.hash()]);

        let got = g.on_txs(1, vec![a], false);
        assert!(!got.unsolicited, "requested of this peer");
        assert_eq!(hashes(&got.fresh), vec![a.hash()]);

        let got = g.on_txs(1, vec![b, b], false);
        assert!(got.unsolicited, "requested of nobody");
        assert_eq!(hashes(&got.fresh), vec![b.hash()], "once");
        assert_eq!(g.stats.tx_bodies.load(Ordering::Relaxed), 4);
        assert_eq!(g.stats.tx_duplicates.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn verdicts_decide_what_is_seen_relayed_and_penalized() {
        let t0 = Instant::now();
        let mut g = gossip(&[1, 2, 3]);
        let batch = txs(1, 5);
        let all = hashes(&batch);
        let _ = g.on_announce(t0, 1, all.clone());
        let got = g.on_txs(1, batch, false);
        assert!(g.enqueue(1, PEER, got.fresh));
        assert_eq!(g.on_announce(t0, 2, all.clone()), None, "being validated");

        let jobs = g.next_validation().expect("a free slot");
        let (conn, id, fresh) = jobs.into_iter().next().unwrap();
        let bodies = fresh.clone();
        let verdicts = vec![
            Verdict::Accepted,
            Verdict::Ignored,
            Verdict::Invalid,
            Verdict::Deferred,
        ];
        g.on_validated(&[ValidatedBatch {
            conn,
            id,
            fresh,
            verdicts: verdicts.clone(),
        }]);
        let judged = g.judge(bodies, verdicts);
        assert_eq!(judged.invalid, 1);
        assert_eq!(hashes(&judged.valid), vec![all[0]]);
        g.accept(Instant::now(), judged.valid, Some(1));

        // Only the deferred one is fetched again; the missing verdict counts as
        // ignored.
        let again = g.on_announce(t0, 3, all.clone());
        assert_eq!(again, Some(Message::TxRequest(vec![all[3]])));
        // The valid one is announced to every peer but its sender, and served.
        let mut flushed = g.flush();
        flushed.sort_by_key(|(c, _)| *c);
        let announce = Message::TxAnnounce(vec![all[0]]);
        assert_eq!(flushed, vec![(2, announce.clone()), (3, announce)]);
        assert!(g.flush().is_empty());
        let served = g.on_request(2, &[all[0], all[1]]);
        assert!(matches!(served.answer, Some(Message::Txs(b)) if hashes(&b) == vec![all[0]]));
    }

    #[test]
    fn the_validation_queue_is_bounded_per_peer_and_in_all_and_batches_go_together() {
        let mut g = gossip(&(0..10).collect::<Vec<_>>());
        let pool = txs(7, MAX_WAITING_BATCHES as u64 + 2);
        let mut next = pool.iter().map(|t| vec![*t]);
        for _ in 0..MAX_WAITING_PER_PEER {
            assert!(g.enqueue(0, PEER, next.next().unwrap()));
        }
        assert!(
            !g.enqueue(0, PEER, next.next().unwrap()),
            "the peer's share is full"
        );
        for c in 1..10 {
            while g.waiting.len() < MAX_WAITING_BATCHES.min(64 * (c as usize + 1)) {
                assert!(g.enqueue(c, PEER, next.next().unwrap()));
            }
        }
        assert!(
            !g.enqueue(9, PEER, next.next().unwrap()),
            "the queue is full"
        );

        // A peer that leaves takes its waiting batches with it.
        g.peer_down(0);
        assert_eq!(g.waiting.len(), MAX_WAITING_BATCHES - MAX_WAITING_PER_PEER);

        // Two slots; each job takes waiting batches up to one signature batch.
        let big = txs(200, SIG_BATCH as u64 - 1);
        let one = |seed: u8| txs(seed, 1);
        let mut g = gossip(&[1]);
        assert!(g.enqueue(1, PEER, big));
        assert!(g.enqueue(1, PEER, one(1)));
        assert!(g.enqueue(1, PEER, one(2)));
        assert!(g.enqueue(1, PEER, one(3)));
        assert_eq!(g.next_validation().map(|j| j.len()), Some(2), "1,023 + 1");
        assert_eq!(g.next_validation().map(|j| j.len()), Some(2));
        assert!(g.enqueue(1, PEER, one(4)));
        assert!(g.next_validation().is_none(), "both slots taken");
        g.on_validated(&[]);
        assert_eq!(g.next_validation().map(|j| j.len()), Some(1));
    }

    #[test]
    fn reannounced_transactions_go_to_every_peer_and_are_served() {
        let mut g = gossip(&[1, 2]);
        let batch = txs(1, MAX_ITEMS_PER_MESSAGE as u64 + 1);
        g.reannounce(Instant::now(), batch.clone());
        let flushed = g.flush();
        assert_eq!(flushed.len(), 4, "two messages for each peer");
        assert!(g.on_announce(Instant::now(), 1, hashes(&batch)).is_none());
        assert!(g.on_request(1, &hashes(&batch)).answer.is_some());
    }

    /// A body is served only to a peer it was announced to: not back to the peer that
    /// sent it, nor to one that connected after its announcement, and a hash no longer
    /// kept is passed over without blame.
    #[test]
    fn a_request_for_a_transaction_not_announced_to_that_peer_is_refused() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut g = gossip(&[]);
        g.peer_up(1, t0);
        g.peer_up(2, t0);
        let [a, b, gone] = txs(3, 3).try_into().unwrap();
        g.accept(t0 + ms, vec![a], Some(1));
        g.accept(t0 + ms, vec![b], None);
        g.peer_up(3, t0 + 2 * ms);

        let served = g.on_request(2, &[a.hash(), b.hash(), gone.hash()]);
        assert!(
            matches!(&served.answer, Some(Message::Txs(t)) if hashes(t) == vec![a.hash(), b.hash()])
        );
        assert_eq!(served.unannounced, 0, "an unknown hash is no offence");

        let served = g.on_request(1, &[a.hash(), b.hash()]);
        assert!(matches!(&served.answer, Some(Message::Txs(t)) if hashes(t) == vec![b.hash()]));
        assert_eq!(
            served.unannounced, 1,
            "its own transaction, never announced to it"
        );

        let served = g.on_request(3, &[a.hash(), b.hash()]);
        assert_eq!(served.answer, None);
        assert_eq!(served.unannounced, 2, "connected after the announcements");

        // Announced again, to every peer connected now: peer 3 may ask.
        g.reannounce(t0 + 3 * ms, vec![a]);
        let served = g.on_request(3, &[a.hash()]);
        assert!(served.answer.is_some());
        assert_eq!(served.unannounced, 0);
    }

    /// A node's own transactions go to every peer as bodies, at once; a receiver takes
    /// pushed bodies without blame, even while it has them requested elsewhere, and
    /// never pushes what it only relays.
    #[test]
    fn own_transactions_are_pushed_to_every_peer_and_taken_unasked() {
        let mut g = gossip(&[1, 2]);
        let now = Instant::now();
        let own = txs(4, 3);
        g.accept_own(now, own.clone());
        g.accept_own(now, own.clone());
        let flushed = g.flush();
        let mut to: Vec<ConnId> = flushed.iter().map(|(c, _)| *c).collect();
        to.sort_unstable();
        assert_eq!(to, [1, 2], "one push to each peer, nothing announced");
        for (_, m) in &flushed {
            assert!(matches!(m, Message::TxPush(t) if *t == own), "{m:?}");
        }
        assert!(g.flush().is_empty(), "pushed once");
        assert!(
            g.on_request(1, &hashes(&own)).answer.is_some(),
            "and served to a peer that asks"
        );

        let mut r = gossip(&[7, 8]);
        let [a, b] = txs(5, 2).try_into().unwrap();
        assert!(r.on_announce(now, 8, vec![a.hash()]).is_some());
        let got = r.on_txs(7, vec![a, b], true);
        assert!(!got.unsolicited);
        assert_eq!(got.fresh.len(), 2);
        let got = r.on_txs(7, vec![b], false);
        assert!(got.unsolicited, "an unrequested answer is still an offence");
        r.accept(now, vec![a, b], Some(7));
        assert!(
            r.flush()
                .iter()
                .all(|(c, m)| *c == 8 && matches!(m, Message::TxAnnounce(_))),
            "relayed transactions are announced"
        );
    }
}
