//! The network actor: one task that owns all state and does all IO. It accepts and
//! dials links, feeds what links and the node's handle send it to the peer set,
//! gossip and relay, sends what they return, runs transaction validations beside
//! itself, and applies the penalties they report.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::crypto::sha256;
use grapevine_ledger::{Address, SignedTx};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::gossip::{Gossip, ValidatedBatch, WaitingBatch};
use super::link::{self, LinkCtx, LinkEvent};
use super::peers::{Admission, Peer, PeerSet};
use super::relay::{Answer, Relay};
use super::{
    ConnId, INBOX_QUEUE, Inbox, MAX_CONSENSUS_BYTES, MESSAGE_KINDS, NetConfig, NetEvent, NetStats,
    Offence, PeerSummary, TxValidator,
};
use crate::addrbook::AddressBook;
use crate::message::{MAX_PEERS_PER_MESSAGE, Message};
use crate::netgroup;
use crate::secure::LocalIdentity;

/// Gossip batching interval.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Capacity of the channel from link and validation tasks to the actor.
const EVENT_QUEUE: usize = 4096;

/// What a [`super::NetworkHandle`] asks of the actor.
pub(super) enum Command {
    BroadcastTxs(Vec<SignedTx>),
    Reannounce(Vec<SignedTx>),
    BroadcastConsensus(Bytes),
    RelayConsensus(Bytes, Address),
    Peers(oneshot::Sender<Vec<PeerSummary>>),
    Report(Address, Offence, &'static str),
    SendSync(Address, Bytes),
    BroadcastSync(Bytes),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The actor: the parts, and what ties them to tasks and sockets.
struct Actor {
    cfg: NetConfig,
    validator: Arc<dyn TxValidator>,
    stats: Arc<NetStats>,
    /// For link and validation tasks to report to the actor.
    events: mpsc::Sender<LinkEvent>,
    to_node: mpsc::Sender<NetEvent>,
    to_sync: mpsc::Sender<NetEvent>,
    identity: Arc<LocalIdentity>,
    listen_addr: SocketAddr,
    next_conn: ConnId,
    /// Link tasks not yet up (handshaking), by connection.
    pending: HashMap<ConnId, AbortHandle>,
    dialing: HashSet<SocketAddr>,
    /// The configured peers, kept linked for ever.
    persistent: Vec<Persistent>,
    book: AddressBook,
    peers: PeerSet,
    gossip: Gossip,
    relay: Relay,
}

/// A configured peer the actor keeps linked: dialed whenever its link is down, after a
/// backoff that grows with consecutive failures (1 s, doubling, at most 30 s).
#[derive(Debug)]
struct Persistent {
    addr: crate::PeerAddr,
    /// Its link, dialing or up.
    conn: Option<ConnId>,
    next_dial: Instant,
    failures: u32,
}

impl Persistent {
    fn retry_later(&mut self, now: Instant) {
        self.conn = None;
        self.failures = self.failures.saturating_add(1);
        let secs = 1u64 << self.failures.min(5);
        self.next_dial = now + Duration::from_secs(secs.min(30));
    }
}

/// Spawns the actor for `listener` (bound at `listen_addr`): it dials the bootstrap
/// addresses and runs until `stop` turns true, taking commands from `commands`.
/// Returns the queues it delivers to.
pub(super) fn spawn(
    cfg: NetConfig,
    validator: Arc<dyn TxValidator>,
    stats: Arc<NetStats>,
    listener: TcpListener,
    listen_addr: SocketAddr,
    commands: mpsc::Receiver<Command>,
    stop: watch::Receiver<bool>,
) -> Inbox {
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (node_tx, node_rx) = mpsc::channel(INBOX_QUEUE);
    let (sync_tx, sync_rx) = mpsc::channel(INBOX_QUEUE);
    let identity = Arc::new(LocalIdentity {
        node_key: cfg.node_key.duplicate(),
        chain_id: cfg.chain_id,
        genesis_hash: cfg.genesis_hash,
        listen_port: listen_addr.port(),
        external: std::sync::RwLock::new(None),
    });
    let (resolved_tx, resolved) = tokio::sync::oneshot::channel();
    match cfg.external_address.clone() {
        Some(ext) => {
            let local = listen_addr.ip().is_loopback();
            tokio::spawn(advertise(
                ext,
                local,
                identity.clone(),
                resolved_tx,
                stop.clone(),
            ));
        }
        None => {
            let _ = resolved_tx.send(());
        }
    }
    let book = AddressBook::load(cfg.address_book.clone());
    let persistent = cfg
        .bootstrap
        .iter()
        .map(|addr| Persistent {
            addr: addr.clone(),
            conn: None,
            next_dial: Instant::now(),
            failures: 0,
        })
        .collect();
    let actor = Actor {
        validator,
        events: ev_tx,
        to_node: node_tx,
        to_sync: sync_tx,
        identity,
        listen_addr,
        next_conn: 0,
        pending: HashMap::new(),
        dialing: HashSet::new(),
        persistent,
        book,
        peers: PeerSet::new(&cfg, stats.clone()),
        gossip: Gossip::new(stats.clone()),
        relay: Relay::new(),
        stats,
        cfg,
    };
    tokio::spawn(async move {
        // The first hellos carry the advertised address: links made at start last.
        let _ = tokio::time::timeout(Duration::from_secs(5), resolved).await;
        actor.run(listener, commands, ev_rx, stop).await;
    });
    Inbox {
        consensus: node_rx,
        sync: sync_rx,
    }
}

/// How often `[p2p] external_address` is resolved again: addresses of containers and
/// cluster services change.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// Keeps `identity.external` at what `ext` resolves to (its first address that is not
/// loopback, unless the node listens on loopback: Debian maps a host's own name to
/// 127.0.1.1), until `stop`; `first` fires after the first attempt. A failure keeps
/// the last good address and is logged (a warning while the node has none yet), and
/// the name is tried again after [`RESOLVE_EVERY`], or after 5 s while it has never
/// resolved.
async fn advertise(
    ext: crate::PeerAddr,
    local: bool,
    identity: Arc<LocalIdentity>,
    first: tokio::sync::oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<SocketAddr> = None;
    let mut first = Some(first);
    loop {
        let found = link::resolve(&ext.host, ext.port, Duration::from_secs(5), |a| {
            local || !a.ip().is_loopback()
        })
        .await;
        match found {
            Ok(addr) => {
                if last != Some(addr) {
                    tracing::info!(external_address = %ext, %addr, "advertising this address to peers");
                    *identity.external.write().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    last = Some(addr);
                }
            }
            Err(e) if last.is_none() => {
                tracing::warn!(external_address = %ext, error = %e, "cannot resolve external_address; advertising none until it resolves")
            }
            Err(e) => {
                tracing::debug!(external_address = %ext, error = %e, "cannot resolve external_address; keeping the last address")
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        let wait = if last.is_some() {
            RESOLVE_EVERY
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Actor {
    async fn run(
        mut self,
        listener: TcpListener,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<LinkEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        let mut maintain = tokio::time::interval(Duration::from_millis(200));
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        let mut save = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => self.on_accept(stream, addr),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(ev) = events.recv() => self.on_event(ev),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                _ = flush.tick() => {
                    let announcements = self.gossip.flush();
                    self.send_all(announcements);
                }
                _ = maintain.tick() => self.maintain(),
                _ = ping.tick() => self.ping_all(),
                _ = save.tick() => self.book.save(),
                () = stopped(&mut stop) => break,
            }
        }
        self.book.save();
        for t in self.peers.drain_tasks() {
            t.abort();
        }
        for (_, t) in self.pending.drain() {
            t.abort();
        }
    }

    fn link_ctx(&self) -> LinkCtx {
        LinkCtx {
            identity: self.identity.clone(),
            events: self.events.clone(),
            stats: self.stats.clone(),
            handshake_timeout: self.cfg.handshake_timeout,
            queue_len: self.cfg.send_queue,
            recv_msgs_per_sec: self.cfg.recv_msgs_per_sec,
            recv_bytes_per_sec: self.cfg.recv_bytes_per_sec,
        }
    }

    fn new_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn - 1
    }

    fn on_accept(&mut self, stream: TcpStream, addr: SocketAddr) {
        match self.peers.admits(addr, Instant::now()) {
            Admission::Admit => {}
            Admission::Evict(victim) => {
                if let Some(p) = self.peers.get(victim) {
                    tracing::info!(peer = %p.id, addr = %p.addr, new = %addr, "inbound slots full: evicting a peer");
                }
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                self.disconnect(victim);
            }
            Admission::Refuse(why) => {
                // Dropping the stream closes it.
                tracing::debug!(%addr, why, "refusing inbound link");
                self.stats.inbound_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let conn = self.new_conn();
        let task = tokio::spawn(link::run_link(stream, addr, true, conn, self.link_ctx()));
        // Kept so a disconnect stops the reader, which is this task.
        self.pending.insert(conn, task.abort_handle());
        self.peers.handshaking(conn, addr.ip());
    }

    /// Expires bans, retries wants and requests, and dials toward the outbound target.
    fn maintain(&mut self) {
        let now = Instant::now();
        self.peers.expire_bans(now);
        self.dial_persistent(now);
        let wants = self.relay.retry(now);
        self.send_all(wants);
        let requests = self.gossip.retry(now);
        self.send_all(requests);
        let outbound = self.peers.outbound() + self.dialing.len();
        if outbound >= self.cfg.target_outbound {
            return;
        }
        let connected = self.peers.addresses();
        // At most one outbound link per network group, so that an attacker needs as
        // many networks as the node has outbound links to surround it.
        let mut groups = self.peers.outbound_groups();
        groups.extend(self.dialing.iter().filter_map(|a| netgroup::group(a.ip())));
        let wanted = self.cfg.target_outbound - outbound;
        let candidates = self.book.candidates(now, wanted, |a| {
            a != self.listen_addr
                && !connected.contains(&a)
                && !self.dialing.contains(&a)
                && netgroup::group(a.ip()).is_none_or(|g| !groups.contains(&g))
        });
        for addr in candidates {
            self.book.attempted(addr, now);
            self.dialing.insert(addr);
            let conn = self.new_conn();
            let task = link::dial(addr, conn, self.link_ctx());
            self.pending.insert(conn, task.abort_handle());
        }
    }

    /// Dials the configured peers whose link is down and whose backoff has passed.
    fn dial_persistent(&mut self, now: Instant) {
        for i in 0..self.persistent.len() {
            let p = &self.persistent[i];
            if p.conn.is_some() || p.next_dial > now {
                continue;
            }
            let (host, port) = (p.addr.host.clone(), p.addr.port);
            let conn = self.new_conn();
            let task = link::dial_named(host, port, conn, self.link_ctx());
            self.pending.insert(conn, task.abort_handle());
            self.persistent[i].conn = Some(conn);
        }
    }

    /// The configured peer whose link is `conn`, if any.
    fn persistent_of(&mut self, conn: ConnId) -> Option<&mut Persistent> {
        self.persistent.iter_mut().find(|p| p.conn == Some(conn))
    }

    /// Disconnects peers silent for too long and pings the others.
    fn ping_all(&mut self) {
        let now = Instant::now();
        for c in self.peers.silent(now) {
            self.disconnect(c);
        }
        let pings = self.peers.pings(now, self.next_conn);
        self.send_all(pings);
    }

    /// Queues `msg` for peer `conn`; a peer whose queue is full is dropped.
    fn send(&mut self, conn: ConnId, msg: &Message) {
        if self.peers.send(conn, msg).is_err() {
            self.disconnect(conn);
        }
    }

    /// Queues an encoded message for peer `conn`; a peer whose queue is full is dropped.
    fn send_encoded(&mut self, conn: ConnId, bytes: Bytes) {
        if self.peers.send_encoded(conn, bytes).is_err() {
            self.disconnect(conn);
        }
    }

    fn send_all(&mut self, out: Vec<(ConnId, Message)>) {
        for (c, msg) in out {
            self.send(c, &msg);
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        if let Some(p) = self.persistent_of(conn) {
            // Dialed again soon: a link that was up resets the backoff.
            p.conn = None;
            p.next_dial = Instant::now() + Duration::from_secs(1);
        }
        self.gossip.peer_down(conn);
        self.relay.peer_down(conn);
        self.peers.remove(conn);
    }

    fn penalize(&mut self, conn: ConnId, offence: Offence, detail: &str) {
        if self.peers.penalize(conn, offence, detail, Instant::now()) {
            self.disconnect(conn);
        }
    }

    fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up {
                conn,
                link_id,
                addr,
                listen_addr,
                inbound,
                queue,
                queued,
                accept,
                mut tasks,
            } => {
                if !inbound {
                    self.dialing.remove(&addr);
                }
                if let Some(reader) = self.pending.remove(&conn) {
                    tasks.push(reader);
                }
                self.peers.handshake_over(conn);
                let pinned = self
                    .persistent
                    .iter()
                    .find(|p| p.conn == Some(conn))
                    .and_then(|p| p.addr.id);
                let refuse = if link_id == self.identity.node_key.address() {
                    self.book.forget(addr);
                    Some("connected to ourselves")
                } else if pinned.is_some_and(|id| id != link_id) {
                    tracing::warn!(
                        %addr,
                        proved = %link_id,
                        pinned = ?pinned,
                        "a configured peer proved another node id than the one pinned; refusing it"
                    );
                    Some("not the pinned node id")
                } else {
                    self.peers.refusal(&link_id, Instant::now())
                };
                if let Some(why) = refuse {
                    tracing::debug!(%addr, peer = %link_id, why, "refusing link");
                    let _ = accept.send(false);
                    if let Some(p) = self.persistent_of(conn) {
                        p.retry_later(Instant::now());
                    }
                    return;
                }
                if let Some(p) = self.persistent_of(conn) {
                    p.failures = 0;
                }
                if accept.send(true).is_err() {
                    return;
                }
                if !inbound {
                    // Dialed and proved: a tried address.
                    self.book.connected(addr);
                } else if self.cfg.peer_exchange
                    && let Some(l) = listen_addr
                {
                    // Only claimed: a new address, bucketed by the claimant's group.
                    // Without peer exchange, a peer's own listen address may be one
                    // this node is not meant to use.
                    self.book.add(l, addr.ip());
                }
                tracing::info!(peer = %link_id, %addr, inbound, "peer connected");
                let peer = Peer {
                    id: link_id,
                    addr,
                    listen_addr,
                    inbound,
                    queue,
                    queued,
                    score: 0,
                    bytes_in: 0,
                    bytes_out: Arc::new(AtomicU64::new(0)),
                    tasks,
                    ping_sent: None,
                    latency: None,
                    asked_peers: self.cfg.peer_exchange,
                    connected_at: Instant::now(),
                    answered_get_peers: None,
                };
                self.peers.insert(conn, peer);
                self.gossip.peer_up(conn, Instant::now());
                self.relay.peer_up(conn);
                if self.cfg.peer_exchange {
                    self.send(conn, &Message::GetPeers);
                }
            }
            LinkEvent::Validated(batches) => self.on_validations(batches),
            LinkEvent::Down { conn, error } => {
                self.pending.remove(&conn);
                if self.peers.get(conn).is_none()
                    && let Some(p) = self.persistent_of(conn)
                {
                    // The handshake failed: back off as for a failed dial.
                    p.retry_later(Instant::now());
                }
                self.peers.handshake_over(conn);
                if let Some(e) = &error {
                    if e.is_misbehaviour() {
                        self.penalize(conn, Offence::Malformed, &e.to_string());
                    } else if let Some(p) = self.peers.get(conn) {
                        tracing::info!(peer = %p.id, error = %e, "peer disconnected");
                    }
                }
                self.disconnect(conn);
            }
            LinkEvent::Throttled { conn } => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                self.penalize(
                    conn,
                    Offence::Flood,
                    "messages or bytes over the inbound budget",
                );
            }
            LinkEvent::DialFailed { conn, addr, reason } => {
                self.pending.remove(&conn);
                let now = Instant::now();
                if let Some(p) = self.persistent_of(conn) {
                    p.retry_later(now);
                    // The first failures say why; later ones would repeat it.
                    if p.failures <= 3 {
                        tracing::info!(peer = %p.addr, reason, "cannot reach a configured peer; retrying");
                    }
                    return;
                }
                self.dialing.remove(&addr);
                self.book.failed(addr, now);
                tracing::debug!(%addr, reason, "dial failed");
            }
            LinkEvent::Message { conn, msg, bytes } => {
                let Some(p) = self.peers.get_mut(conn) else {
                    return;
                };
                p.bytes_in += bytes as u64;
                if let Some(i) = MESSAGE_KINDS.iter().position(|k| *k == msg.kind()) {
                    self.stats.messages[i].fetch_add(1, Ordering::Relaxed);
                }
                self.on_message(conn, msg);
            }
        }
    }

    /// Bodies from `conn`, requested (`pushed` false) or pushed as its own: an
    /// unrequested answer is an offence; fresh bodies are queued for validation.
    fn on_txs(&mut self, conn: ConnId, txs: Vec<SignedTx>, pushed: bool) {
        let got = self.gossip.on_txs(conn, txs, pushed);
        if got.unsolicited {
            self.penalize(conn, Offence::Unsolicited, "transactions nobody asked for");
        }
        if got.fresh.is_empty() {
            return;
        }
        let Some(origin) = self.peers.get(conn).map(|p| (p.id, p.addr.ip())) else {
            return;
        };
        if self.gossip.enqueue(conn, origin, got.fresh) {
            self.start_validations();
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) {
        match msg {
            Message::Hello(_) => self.penalize(conn, Offence::Malformed, "second hello"),
            Message::Ping(n) => self.send(conn, &Message::Pong(n)),
            Message::Pong(n) => self.peers.on_pong(conn, n, Instant::now()),
            Message::GetPeers => {
                if !self.peers.may_answer_get_peers(conn, Instant::now()) {
                    self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                    self.penalize(conn, Offence::Flood, "GetPeers more than once a minute");
                    return;
                }
                let addrs: Vec<String> = self
                    .book
                    .good(MAX_PEERS_PER_MESSAGE)
                    .into_iter()
                    .map(|a| a.to_string())
                    .collect();
                self.send(conn, &Message::Peers(addrs));
            }
            Message::Peers(list) => {
                // Only an answer to our GetPeers is taken, once.
                if !self.peers.take_asked_peers(conn) {
                    self.penalize(conn, Offence::Unsolicited, "unrequested address list");
                    return;
                }
                let Some(source) = self.peers.get(conn).map(|p| p.addr.ip()) else {
                    return;
                };
                for s in list {
                    match s.parse::<SocketAddr>() {
                        Ok(a) if a.port() != 0 => self.book.add(a, source),
                        _ => {
                            self.penalize(conn, Offence::BadAddress, "unparsable address");
                            return;
                        }
                    }
                }
            }
            Message::TxAnnounce(hashes) => {
                if let Some(request) = self.gossip.on_announce(Instant::now(), conn, hashes) {
                    self.send(conn, &request);
                }
            }
            Message::TxRequest(hashes) => {
                let served = self.gossip.on_request(conn, &hashes);
                if let Some(bodies) = served.answer {
                    self.send(conn, &bodies);
                }
                if served.unannounced > 0 {
                    self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                    self.penalize(
                        conn,
                        Offence::Unsolicited,
                        "asked for transactions not announced to it",
                    );
                }
            }
            Message::Txs(txs) => self.on_txs(conn, txs, false),
            Message::TxPush(txs) => self.on_txs(conn, txs, true),
            Message::ConsensusHave(h) => {
                if let Some((c, want)) = self.relay.on_have(Instant::now(), conn, h) {
                    self.send(c, &want);
                }
            }
            Message::ConsensusWant(h) => match self.relay.on_want(conn, h) {
                Answer::Serve(frame) => self.send_encoded(conn, frame),
                Answer::Refuse => self.penalize(
                    conn,
                    Offence::Unsolicited,
                    "asked for a consensus message twice or unannounced",
                ),
                Answer::Unknown => {}
            },
            Message::Consensus(payload) => {
                if payload.len() > MAX_CONSENSUS_BYTES {
                    self.penalize(conn, Offence::Malformed, "oversized consensus message");
                    return;
                }
                let now = Instant::now();
                let h = sha256(&[&payload]);
                if !self.relay.on_consensus(now, h) {
                    return;
                }
                let Some(from) = self.peers.get(conn).map(|p| p.id) else {
                    return;
                };
                let payload = Bytes::from(payload);
                // Seen only once the node has it (see `Relay::mark_seen`).
                match self.to_node.try_send(NetEvent::Consensus { from, payload }) {
                    Ok(()) => self.relay.mark_seen(now, h),
                    Err(_) => {
                        self.stats.consensus_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %from, "consensus queue full; message dropped");
                    }
                }
            }
            Message::Sync(payload) => {
                let Some(from) = self.peers.get(conn).map(|p| p.id) else {
                    return;
                };
                let payload = Bytes::from(payload);
                if self
                    .to_sync
                    .try_send(NetEvent::Sync { from, payload })
                    .is_err()
                {
                    self.stats.sync_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %from, "sync queue full; message dropped");
                }
            }
        }
    }

    /// Hands waiting batches to the validator while slots are free, on a blocking
    /// thread (validation checks signatures). Each result comes back as
    /// [`LinkEvent::Validated`].
    fn start_validations(&mut self) {
        while let Some(jobs) = self.gossip.next_validation() {
            let validator = self.validator.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let bodies: Vec<Vec<SignedTx>> =
                    jobs.iter().map(|(_, _, fresh)| fresh.clone()).collect();
                let mut verdicts =
                    tokio::task::spawn_blocking(move || validator.validate_many(&bodies))
                        .await
                        .unwrap_or_default()
                        .into_iter();
                let batches = jobs
                    .into_iter()
                    .map(|(conn, id, fresh): WaitingBatch| ValidatedBatch {
                        conn,
                        id,
                        fresh,
                        verdicts: verdicts.next().unwrap_or_default(),
                    })
                    .collect();
                let _ = events.send(LinkEvent::Validated(batches)).await;
            });
        }
    }

    /// A validation finished: frees its slot, then applies each batch's verdicts:
    /// penalties for invalid transactions, a reward for valid ones, which are
    /// announced onwards.
    fn on_validations(&mut self, batches: Vec<ValidatedBatch>) {
        self.gossip.on_validated(&batches);
        self.start_validations();
        for b in batches {
            let judged = self.gossip.judge(b.fresh, b.verdicts);
            if judged.invalid > 0 && self.peers.get(b.conn).is_none() {
                // It left before its verdict came back: honest peers never relay
                // invalid transactions, so it is banned (id and address) as if it had
                // stayed.
                let (id, ip) = b.id;
                tracing::warn!(peer = %id, %ip, "banning peer that relayed invalid transactions and left");
                self.peers.ban_left(id, ip, Instant::now());
            }
            for _ in 0..judged.invalid {
                self.penalize(b.conn, Offence::InvalidTx, "invalid transaction");
            }
            self.peers
                .reward(b.conn, (judged.valid.len() as i64).min(10));
            self.gossip
                .accept(Instant::now(), judged.valid, Some(b.conn));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::BroadcastTxs(txs) => self.gossip.accept_own(Instant::now(), txs),
            Command::Reannounce(txs) => self.gossip.reannounce(Instant::now(), txs),
            Command::BroadcastConsensus(payload) => {
                let frame = self.relay.broadcast(Instant::now(), &payload);
                for c in self.peers.conns_except(None) {
                    self.send_encoded(c, frame.clone());
                }
            }
            Command::RelayConsensus(payload, from) => {
                let to = self.peers.conns_except(self.peers.conn_of(&from));
                let frame = self.relay.relay(Instant::now(), &payload, &to);
                for c in to {
                    self.send_encoded(c, frame.clone());
                }
            }
            Command::SendSync(id, payload) => {
                if let Some(conn) = self.peers.conn_of(&id) {
                    self.send(conn, &Message::Sync(payload.to_vec()));
                }
            }
            Command::BroadcastSync(payload) => {
                let bytes = Bytes::from(Message::Sync(payload.to_vec()).encode());
                for c in self.peers.conns_except(None) {
                    self.send_encoded(c, bytes.clone());
                }
            }
            Command::Report(id, offence, detail) => {
                if let Some(conn) = self.peers.conn_of(&id) {
                    self.penalize(conn, offence, detail);
                }
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers.summaries());
            }
        }
    }
}
