//! Serving block sync, off the consensus task: peers' `GetBlocks` requests are read
//! from the network's sync queue, queued per peer and answered one at a time from the
//! ledger, each peer within a byte budget and all of them within a node-wide one.
//! `Status`, `Blocks` and `Proposal` messages go on to the consensus driver, which runs
//! the [`Syncer`](crate::consensus::sync::Syncer). A `BlockRequest` is answered here,
//! to the requester alone, from the proposals kept on disk ([`super::kept`]), within a
//! request rate and the same byte budgets: whatever a peer sends, what it gets back is
//! bounded by [`PEER_BYTES_PER_SEC`] (after a burst of [`PEER_BURST_BYTES`]).
//!
//! A peer whose requests wait beyond [`MAX_WAITING_PER_PEER`], or that sends `Status`
//! faster than [`STATUS_PER_SEC`], has the excess dropped and is reported
//! ([`Offence::Flood`]); the network bans it when its score runs out. An honest peer
//! never has more than [`crate::consensus::sync::PER_PEER`] requests out to one node,
//! so it is throttled (answered later) but never reported.
//!
//! [`ServeQueue`] holds the rules and no IO (time is passed in); [`run`] is the task.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::{Address, Block, Hash, Ledger, codec};
use grapevine_net::network::MAX_CONSENSUS_BYTES;
use grapevine_net::{NetEvent, NetworkHandle, Offence};
use tokio::sync::{mpsc, watch};

use crate::consensus::sync::{CHUNK, REQUEST_TIMEOUT, SyncMsg};
use crate::consensus::types::{Certificate, Proposal};

use super::kept::{self, SharedKept};

/// Bytes of blocks one peer is served per second on average...
pub const PEER_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;
/// ...and at most at once after being idle (two full answers).
pub const PEER_BURST_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// Bytes of blocks all peers together are served per second on average...
pub const NODE_BYTES_PER_SEC: f64 = 12.0 * 1024.0 * 1024.0;
/// ...and at most at once.
pub const NODE_BURST_BYTES: f64 = 32.0 * 1024.0 * 1024.0;
/// What any answer costs at least, so requests for blocks this node does not have
/// (answered empty) are bounded too.
pub const MIN_CHARGE_BYTES: f64 = 16.0 * 1024.0;
/// Requests of one peer waiting to be served; more are dropped and reported.
pub const MAX_WAITING_PER_PEER: usize = 8;
/// `Status` messages a peer may send per second on average (honest nodes send one)...
pub const STATUS_PER_SEC: f64 = 2.0;
/// ...and in a burst.
pub const STATUS_BURST: f64 = 5.0;
/// `BlockRequest`s of one peer answered per second on average (within its byte
/// budget)...
pub const BLOCK_REQUESTS_PER_SEC: f64 = 64.0;
/// ...and in a burst (a node that missed a run of proposals asks for the parent of
/// each it holds, up to 256, when its round timer fires). The excess is dropped
/// without penalty: requests are asked again.
pub const BLOCK_REQUESTS_BURST: f64 = 256.0;
/// Most bytes of blocks in one answer (the consensus channel takes 12 MiB).
pub const MAX_SERVE_BYTES: usize = 8 << 20;
/// Capacity of the queue of `Status` and `Blocks` messages to the driver.
pub const TO_DRIVER_QUEUE: usize = 1024;
/// Peers with nothing waiting and full budgets are forgotten when more than this many
/// are tracked.
const MAX_TRACKED_IDLE: usize = 256;

/// A token bucket that may go into debt: an answer's size is known only once it is
/// read, so it is charged after, and the peer waits until the debt is paid back.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket refilling at `rate` per second up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Whether nothing is owed at `now`.
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 0.0
    }

    /// Takes `n` tokens at `now`, into debt if need be.
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// Takes one token if one is there.
    pub fn take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the debt is paid back (`at` itself if nothing is owed).
    pub fn ready_at(&self) -> Instant {
        if self.tokens >= 0.0 {
            self.at
        } else {
            // A millisecond more, so that the debt is surely paid by then.
            self.at + Duration::from_secs_f64(-self.tokens / self.rate) + Duration::from_millis(1)
        }
    }

    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A block range a peer asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the answer.
    pub id: u64,
    /// First height.
    pub from: u64,
    /// How many blocks.
    pub count: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug)]
struct PeerState {
    waiting: VecDeque<Request>,
    bytes: Bucket,
    status: Bucket,
    block_requests: Bucket,
}

impl PeerState {
    /// Drops the requests that waited [`REQUEST_TIMEOUT`]: the requester has asked
    /// someone else by now, so they are not worth serving.
    fn drop_stale(&mut self, now: Instant) {
        while self
            .waiting
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) >= REQUEST_TIMEOUT)
        {
            self.waiting.pop_front();
        }
    }
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Serve this request of this peer now.
    Serve(Address, Request),
    /// Nothing can be served before this time.
    WaitUntil(Instant),
    /// Nothing is waiting.
    Idle,
}

/// The serving rules: per-peer queues and budgets, served round-robin within the
/// node-wide budget. No IO; time is passed in.
#[derive(Debug)]
pub struct ServeQueue {
    peers: HashMap<Address, PeerState>,
    /// Peers with waiting requests, in turn order.
    turn: VecDeque<Address>,
    node: Bucket,
}

impl ServeQueue {
    /// An empty queue with a full node-wide budget.
    pub fn new(now: Instant) -> ServeQueue {
        ServeQueue {
            peers: HashMap::new(),
            turn: VecDeque::new(),
            node: Bucket::new(NODE_BYTES_PER_SEC, NODE_BURST_BYTES, now),
        }
    }

    fn peer(&mut self, peer: Address, now: Instant) -> &mut PeerState {
        if self.peers.len() > MAX_TRACKED_IDLE {
            self.peers.retain(|_, p| {
                !p.waiting.is_empty()
                    || !p.bytes.full(now)
                    || !p.status.full(now)
                    || !p.block_requests.full(now)
            });
        }
        self.peers.entry(peer).or_insert_with(|| PeerState {
            waiting: VecDeque::new(),
            bytes: Bucket::new(PEER_BYTES_PER_SEC, PEER_BURST_BYTES, now),
            status: Bucket::new(STATUS_PER_SEC, STATUS_BURST, now),
            block_requests: Bucket::new(BLOCK_REQUESTS_PER_SEC, BLOCK_REQUESTS_BURST, now),
        })
    }

    /// Queues a request of `peer`. `false`: the peer has [`MAX_WAITING_PER_PEER`]
    /// waiting already (requests it gave up on, older than the requester's timeout,
    /// do not count), so this one is dropped and the peer should be reported.
    #[must_use]
    pub fn request(&mut self, peer: Address, req: Request, now: Instant) -> bool {
        let p = self.peer(peer, now);
        p.drop_stale(now);
        if p.waiting.len() >= MAX_WAITING_PER_PEER {
            return false;
        }
        p.waiting.push_back(req);
        if p.waiting.len() == 1 && !self.turn.contains(&peer) {
            self.turn.push_back(peer);
        }
        true
    }

    /// Whether a `Status` from `peer` is within its rate; `false`: drop it and report.
    #[must_use]
    pub fn status(&mut self, peer: Address, now: Instant) -> bool {
        self.peer(peer, now).status.take_one(now)
    }

    /// Whether a `BlockRequest` from `peer` may be answered now: within its rate and
    /// with both byte budgets available; `false`: drop it (the requester asks again).
    #[must_use]
    pub fn block_request(&mut self, peer: Address, now: Instant) -> bool {
        if !self.node.ready(now) {
            return false;
        }
        let p = self.peer(peer, now);
        p.bytes.ready(now) && p.block_requests.take_one(now)
    }

    /// Whether a proposal `peer` sent (an answer to a block request) is within the
    /// same rate as its requests; `false`: drop it.
    #[must_use]
    pub fn answer(&mut self, peer: Address, now: Instant) -> bool {
        self.peer(peer, now).block_requests.take_one(now)
    }

    /// The next request to serve, round-robin over the peers whose budget allows,
    /// if the node-wide budget allows.
    pub fn next(&mut self, now: Instant) -> Next {
        if self.turn.is_empty() {
            return Next::Idle;
        }
        if !self.node.ready(now) {
            return Next::WaitUntil(self.node.ready_at());
        }
        let mut earliest: Option<Instant> = None;
        for _ in 0..self.turn.len() {
            let Some(peer) = self.turn.pop_front() else {
                break;
            };
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            p.drop_stale(now);
            if p.waiting.is_empty() {
                continue;
            }
            if !p.bytes.ready(now) {
                let at = p.bytes.ready_at();
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                self.turn.push_back(peer);
                continue;
            }
            let Some(req) = p.waiting.pop_front() else {
                continue;
            };
            if !p.waiting.is_empty() {
                self.turn.push_back(peer);
            }
            return Next::Serve(peer, req);
        }
        match earliest {
            Some(at) => Next::WaitUntil(at),
            None => Next::Idle,
        }
    }

    /// Charges an answer of `bytes` to `peer` and to the node.
    pub fn served(&mut self, peer: Address, bytes: usize, now: Instant) {
        let cost = (bytes as f64).max(MIN_CHARGE_BYTES);
        self.node.charge(cost, now);
        self.peer(peer, now).bytes.charge(cost, now);
    }
}

/// Final blocks from `start` on with their certificates: at most `count` (and
/// [`CHUNK`], and about [`MAX_SERVE_BYTES`]); fewer if this node has fewer.
pub fn read_blocks(ledger: &Ledger, start: u64, count: u16) -> Vec<(Block, Certificate)> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let end = start.saturating_add(u64::from(count).min(CHUNK));
    for h in start.max(1)..end {
        let Ok(Some(stored)) = ledger.block(h) else {
            break;
        };
        let Ok(cert) = Certificate::from_bytes(&stored.certificate) else {
            break; // a dev chain's blocks carry none
        };
        bytes += 256 + stored.block.txs.len() * grapevine_ledger::tx::SIGNED_TX_LEN;
        if bytes > MAX_SERVE_BYTES && !out.is_empty() {
            break;
        }
        out.push((stored.block, cert));
    }
    out
}

/// Runs the sync server until `stop` turns true or the network stops: answers
/// `GetBlocks` within the budgets and hands `Status` and `Blocks` to the driver
/// through `to_driver` (dropped when that queue is full: a status is sent again, a
/// lost answer is asked again).
pub async fn run(
    ledger: Arc<Ledger>,
    kept: SharedKept,
    net: NetworkHandle,
    mut inbox: mpsc::Receiver<NetEvent>,
    to_driver: mpsc::Sender<(Address, SyncMsg)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut queue = ServeQueue::new(Instant::now());
    let mut serving: Option<tokio::task::JoinHandle<(Address, u64, Bytes)>> = None;
    loop {
        let mut wait = None;
        if serving.is_none() {
            match queue.next(Instant::now()) {
                Next::Serve(peer, req) => {
                    let ledger = ledger.clone();
                    // RocksDB reads: off the async workers.
                    serving = Some(tokio::task::spawn_blocking(move || {
                        let blocks = read_blocks(&ledger, req.from, req.count);
                        let answer = codec::encode(&SyncMsg::Blocks { id: req.id, blocks });
                        (peer, req.from, Bytes::from(answer))
                    }));
                }
                Next::WaitUntil(at) => wait = Some(at),
                Next::Idle => {}
            }
        }
        tokio::select! {
            ev = inbox.recv() => match ev {
                Some(NetEvent::Sync { from, payload }) => {
                    let ctx = Context { ledger: &ledger, kept: &kept, net: &net, to_driver: &to_driver };
                    on_message(&mut queue, &ctx, from, &payload).await;
                }
                Some(NetEvent::Consensus { .. }) => {}
                None => return,
            },
            done = async {
                match serving.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                serving = None;
                match done {
                    Ok((peer, start, answer)) => {
                        queue.served(peer, answer.len(), Instant::now());
                        tracing::trace!(%peer, start, bytes = answer.len(), "served blocks");
                        net.send_sync_to(peer, answer).await;
                    }
                    Err(e) => tracing::error!(error = %e, "serving blocks failed"),
                }
            }
            () = async {
                match wait {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            () = crate::runtime::stopped(&mut stop) => return,
        }
    }
}

/// What handling one sync message needs.
struct Context<'a> {
    ledger: &'a Ledger,
    kept: &'a SharedKept,
    net: &'a NetworkHandle,
    to_driver: &'a mpsc::Sender<(Address, SyncMsg)>,
}

/// The kept proposal of block `hash` as a [`SyncMsg::Proposal`] answer, if kept.
fn kept_answer(ledger: &Ledger, kept: &SharedKept, hash: &Hash) -> Option<Bytes> {
    let key = kept::lock(kept).key_of(hash)?;
    let value = ledger.consensus_get(&key).ok()??;
    let p = codec::decode::<Proposal>(&value, MAX_CONSENSUS_BYTES as u64).ok()?;
    Some(Bytes::from(codec::encode(&SyncMsg::Proposal(Box::new(p)))))
}

async fn on_message(queue: &mut ServeQueue, ctx: &Context<'_>, from: Address, payload: &[u8]) {
    let (net, to_driver) = (ctx.net, ctx.to_driver);
    let now = Instant::now();
    let msg = match codec::decode::<SyncMsg>(payload, MAX_CONSENSUS_BYTES as u64) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(peer = %from, error = %e, "undecodable sync message");
            net.report(from, Offence::Malformed, "undecodable sync message")
                .await;
            return;
        }
    };
    match msg {
        SyncMsg::GetBlocks {
            id,
            from: start,
            count,
        } => {
            let req = Request {
                id,
                from: start,
                count,
                at: now,
            };
            if !queue.request(from, req, now) {
                tracing::debug!(peer = %from, "block requests over the peer's budget; dropped");
                net.report(from, Offence::Flood, "block requests beyond its budget")
                    .await;
            }
        }
        SyncMsg::Status { .. } => {
            if !queue.status(from, now) {
                net.report(from, Offence::Flood, "status messages beyond their rate")
                    .await;
                return;
            }
            let _ = to_driver.try_send((from, msg));
        }
        SyncMsg::Proposal(_) if !queue.answer(from, now) => {
            tracing::debug!(peer = %from, "proposal answers over their rate; dropped");
        }
        SyncMsg::Blocks { .. } | SyncMsg::Proposal(_) => {
            if to_driver.try_send((from, msg)).is_err() {
                tracing::debug!(peer = %from, "sync answers queue full; answer dropped");
            }
        }
        SyncMsg::BlockRequest { hash } => {
            if !kept::lock(ctx.kept).contains(&hash) {
                return; // not a block this node holds: nothing to send
            }
            if !queue.block_request(from, now) {
                tracing::debug!(peer = %from, "block requests over their budget; dropped");
                return;
            }
            // A point read of one kept proposal: off the async workers' queue.
            let Some(answer) =
                tokio::task::block_in_place(|| kept_answer(ctx.ledger, ctx.kept, &hash))
            else {
                return;
            };
            queue.served(from, answer.len(), now);
            net.send_sync_to(from, answer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: u64, at: Instant) -> Request {
        Request {
            id,
            from: 1,
            count: 64,
            at,
        }
    }

    #[test]
    fn an_honest_requester_is_throttled_but_never_refused() {
        // Two requests out at a time (the Syncer's PER_PEER), each answered with 8 MiB:
        // served, later and later as the budget runs out, never refused.
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let peer = Address([1; 32]);
        let mut now = t0;
        let mut served = 0;
        let mut id = 0;
        for _ in 0..2 {
            assert!(q.request(peer, req(id, now), now));
            id += 1;
        }
        while now < t0 + Duration::from_secs(20) {
            match q.next(now) {
                Next::Serve(p, _) => {
                    assert_eq!(p, peer);
                    q.served(peer, 8 << 20, now);
                    served += 1;
                    // The answer arrives; the requester asks for the next range.
                    assert!(q.request(peer, req(id, now), now), "never refused");
                    id += 1;
                }
                Next::WaitUntil(at) => {
                    assert!(at > now);
                    now = at;
                }
                Next::Idle => panic!("requests are waiting"),
            }
        }
        // 16 MiB at once, then 4 MiB/s: 2 + 20 * 4 / 8 answers (give or take one).
        assert!(
            (11..=13).contains(&served),
            "served {served} answers of 8 MiB in 20 s"
        );
    }

    #[test]
    fn a_flooder_is_refused_past_its_queue_and_others_keep_their_turn() {
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let (flooder, honest) = (Address([1; 32]), Address([2; 32]));
        let mut refused = 0;
        for i in 0..100 {
            if !q.request(flooder, req(i, t0), t0) {
                refused += 1;
            }
        }
        assert_eq!(refused, 100 - MAX_WAITING_PER_PEER);
        assert!(q.request(honest, req(1000, t0), t0));
        // The first turn goes to the flooder, which was first; the honest peer is next.
        let mut order = Vec::new();
        for _ in 0..3 {
            if let Next::Serve(p, _) = q.next(t0) {
                q.served(p, 1 << 20, t0);
                order.push(p);
            }
        }
        assert_eq!(order, vec![flooder, honest, flooder]);
    }

    #[test]
    fn the_node_wide_budget_bounds_what_many_peers_get() {
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let mut now = t0;
        let mut bytes = 0f64;
        let peers: Vec<Address> = (0..20u8).map(|i| Address([i; 32])).collect();
        while now < t0 + Duration::from_secs(10) {
            for (i, p) in peers.iter().enumerate() {
                let _ = q.request(*p, req(i as u64, now), now);
            }
            match q.next(now) {
                Next::Serve(p, _) => {
                    q.served(p, 8 << 20, now);
                    bytes += f64::from(8u32 << 20);
                }
                Next::WaitUntil(at) => now = at,
                Next::Idle => panic!("requests are waiting"),
            }
        }
        let most = NODE_BURST_BYTES + 10.0 * NODE_BYTES_PER_SEC + f64::from(8u32 << 20);
        assert!(
            bytes <= most,
            "served {bytes} bytes in 10 s, at most {most}"
        );
    }

    #[test]
    fn requests_the_requester_gave_up_on_are_not_served() {
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let peer = Address([1; 32]);
        for i in 0..MAX_WAITING_PER_PEER as u64 {
            assert!(q.request(peer, req(i, t0), t0));
        }
        let later = t0 + REQUEST_TIMEOUT;
        assert!(
            q.request(peer, req(99, later), later),
            "stale ones make room"
        );
        assert!(matches!(q.next(later), Next::Serve(_, r) if r.id == 99));
    }

    #[test]
    fn block_request_answers_are_charged_to_the_byte_budgets() {
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let (greedy, other) = (Address([1; 32]), Address([2; 32]));
        // Proposals of 12 MiB: the greedy peer gets its burst, then waits for its rate.
        let mut answered = 0;
        for _ in 0..100 {
            if q.block_request(greedy, t0) {
                q.served(greedy, 12 << 20, t0);
                answered += 1;
            }
        }
        assert_eq!(
            answered, 2,
            "16 MiB of burst: two answers, the second in debt"
        );
        assert!(
            q.block_request(other, t0),
            "another peer has its own budget"
        );
        q.served(other, 12 << 20, t0);
        // Over a minute the greedy peer gets its rate's worth, no more.
        let mut bytes = 0f64;
        for ms in (0..60_000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            if q.block_request(greedy, now) {
                q.served(greedy, 12 << 20, now);
                bytes += f64::from(12u32 << 20);
            }
        }
        assert!(
            bytes <= PEER_BYTES_PER_SEC * 60.0 + f64::from(12u32 << 20),
            "{} MiB in a minute",
            bytes / 1048576.0
        );
    }

    #[test]
    fn status_messages_are_rate_limited() {
        let t0 = Instant::now();
        let mut q = ServeQueue::new(t0);
        let peer = Address([1; 32]);
        let taken = (0..100).filter(|_| q.status(peer, t0)).count();
        assert_eq!(taken, STATUS_BURST as usize);
        let later = t0 + Duration::from_secs(1);
        assert!(q.status(peer, later), "one a second is always taken");
    }
}
