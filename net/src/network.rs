//! The network actor: accepts and dials links, keeps the peer set within its limits,
//! exchanges addresses, gossips transactions (announce, then fetch what is missing) and
//! floods consensus messages, scores peers and bans those that misbehave.
//!
//! One task owns all state; link tasks talk to it through a bounded channel. Each peer
//! has a bounded send queue: a peer that cannot keep up is dropped, never waited for.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::collections::{FastMap, FastSet, RecentMap, RecentSet};
use grapevine_ledger::crypto::sha256;
use grapevine_ledger::tx::SIG_BATCH;
use grapevine_ledger::{Address, Hash, Keypair, SignedTx};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::addrbook::AddressBook;
use crate::message::{MAX_ITEMS_PER_MESSAGE, MAX_PEERS_PER_MESSAGE, Message};
use crate::secure::{self, LinkError, LocalIdentity};

/// What the node made of a transaction a peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and now held by the node: announced onwards.
    Accepted,
    /// Well-formed and signed, but not taken (already known or final, a nonce another
    /// transaction holds, a full pool). Honest peers send these in races: not relayed,
    /// not penalized.
    Ignored,
    /// Cannot be valid on this chain (bad signature, other chain, malformed): the
    /// sender is penalized.
    Invalid,
    /// Not taken now (the node is busy): not relayed, not penalized, and not marked
    /// seen, so it is fetched again when announced again (see
    /// [`NetworkHandle::reannounce`]).
    Deferred,
}

/// Checks transactions before they are accepted and relayed. The node supplies it (its
/// mempool admission); only transactions it accepts are announced onwards.
pub trait TxValidator: Send + Sync + 'static {
    /// One verdict per transaction, in order.
    fn validate(&self, txs: &[SignedTx]) -> Vec<Verdict>;

    /// [`TxValidator::validate`] for several batches (from different peers) at once:
    /// one verdict list per batch, in order. A validator can check the signatures of
    /// all of them together, in fewer and larger batches; this one validates each
    /// batch alone.
    fn validate_many(&self, batches: &[Vec<SignedTx>]) -> Vec<Vec<Verdict>> {
        batches.iter().map(|b| self.validate(b)).collect()
    }
}

/// Network settings.
#[derive(Debug)]
pub struct NetConfig {
    /// Address to accept peers on (port 0 picks one).
    pub listen: SocketAddr,
    /// Addresses to dial at start.
    pub bootstrap: Vec<SocketAddr>,
    /// Identity, chain and genesis proved and checked in handshakes.
    pub node_key: Keypair,
    /// Chain id peers must share.
    pub chain_id: u32,
    /// Genesis hash peers must share.
    pub genesis_hash: Hash,
    /// Outbound links the node keeps.
    pub target_outbound: usize,
    /// Most inbound links.
    pub max_inbound: usize,
    /// Most links from one IP address (loopback included).
    pub max_per_ip: usize,
    /// Messages queued for one peer before it counts as stuck and is dropped.
    pub send_queue: usize,
    /// How long a misbehaving peer stays banned.
    pub ban_duration: Duration,
    /// Where the address book is kept (none: not persisted).
    pub address_book: Option<PathBuf>,
    /// Limit for the Noise handshake and hello exchange.
    pub handshake_timeout: Duration,
    /// Learn peers' addresses (ask for address lists, keep inbound peers' listen
    /// addresses). Off, the node dials only its bootstrap addresses (sentry setups,
    /// or a test that routes every link through a fault-injecting proxy).
    pub peer_exchange: bool,
}

impl NetConfig {
    /// Defaults for a node with this identity and chain.
    pub fn new(listen: SocketAddr, node_key: Keypair, chain_id: u32, genesis_hash: Hash) -> Self {
        NetConfig {
            listen,
            bootstrap: Vec::new(),
            node_key,
            chain_id,
            genesis_hash,
            target_outbound: 8,
            max_inbound: 32,
            max_per_ip: 16,
            send_queue: 1024,
            ban_duration: Duration::from_secs(600),
            address_book: None,
            handshake_timeout: Duration::from_secs(5),
            peer_exchange: true,
        }
    }
}

/// Score at which a peer is banned.
pub const BAN_SCORE: i64 = -100;
/// Highest score good behaviour earns.
pub const MAX_SCORE: i64 = 100;

/// What happens to a peer's score, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// A frame or message that does not decode, or an oversized frame.
    Malformed,
    /// A transaction the validator refused.
    InvalidTx,
    /// Transactions nobody asked it for.
    Unsolicited,
    /// An address list that is not addresses.
    BadAddress,
    /// A consensus message the node found malformed or wrongly signed.
    InvalidConsensus,
    /// More block sync requests or status messages than an honest peer sends: the
    /// excess is dropped unserved (throttled) and each one costs score.
    Flood,
}

impl Offence {
    fn penalty(self) -> i64 {
        match self {
            Offence::Malformed => 100,
            Offence::InvalidTx => 20,
            Offence::Unsolicited => 5,
            Offence::BadAddress => 10,
            Offence::InvalidConsensus => 50,
            Offence::Flood => 10,
        }
    }
}

/// Counters exposed as metrics.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connected peers.
    pub peers: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Transaction bodies received.
    pub tx_bodies: AtomicU64,
    /// Transaction bodies received that the node already had.
    pub tx_duplicates: AtomicU64,
    /// Peers banned.
    pub bans: AtomicU64,
    /// Messages received, by kind (see [`MESSAGE_KINDS`]).
    pub messages: [AtomicU64; 12],
    /// Consensus messages dropped because the node's consensus queue was full (not
    /// recorded as seen, so a later copy is taken).
    pub consensus_dropped: AtomicU64,
    /// Sync messages dropped because the node's sync queue was full.
    pub sync_dropped: AtomicU64,
}

/// Message kinds in the order of [`NetStats::messages`].
pub const MESSAGE_KINDS: [&str; 12] = [
    "hello",
    "ping",
    "pong",
    "getPeers",
    "peers",
    "txAnnounce",
    "txRequest",
    "txs",
    "consensus",
    "consensusHave",
    "consensusWant",
    "sync",
];

/// A connected peer, as `getPeers` shows it.
#[derive(Clone, Debug)]
pub struct PeerSummary {
    /// The peer's node key.
    pub id: Address,
    /// Its socket address.
    pub address: SocketAddr,
    /// Whether it dialed us.
    pub inbound: bool,
    /// Its score.
    pub score: i64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Last measured round trip.
    pub latency: Option<Duration>,
}

/// Delivered to the node.
#[derive(Clone, Debug)]
pub enum NetEvent {
    /// A consensus message seen for the first time. It is not relayed: the node checks
    /// it and relays it with [`NetworkHandle::relay_consensus`], or reports the peer
    /// with [`NetworkHandle::report`].
    Consensus {
        /// The peer it came from.
        from: Address,
        /// Its bytes.
        payload: Bytes,
    },
    /// A block sync message (never relayed, no seen-set: every copy is delivered).
    Sync {
        /// The peer it came from.
        from: Address,
        /// Its bytes.
        payload: Bytes,
    },
}

/// What the network delivers to the node, on two queues so that no volume of block
/// sync traffic can crowd out a proposal, vote or timeout.
#[derive(Debug)]
pub struct Inbox {
    /// [`NetEvent::Consensus`] only.
    pub consensus: mpsc::Receiver<NetEvent>,
    /// [`NetEvent::Sync`] only.
    pub sync: mpsc::Receiver<NetEvent>,
}

enum Command {
    BroadcastTxs(Vec<SignedTx>),
    Reannounce(Vec<SignedTx>),
    BroadcastConsensus(Bytes),
    RelayConsensus(Bytes, Address),
    Peers(oneshot::Sender<Vec<PeerSummary>>),
    Report(Address, Offence, &'static str),
    SendSync(Address, Bytes),
    BroadcastSync(Bytes),
}

/// Control of a running network.
#[derive(Clone, Debug)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    /// Counters.
    pub stats: Arc<NetStats>,
    /// This node's id.
    pub local_id: Address,
    /// The address it accepts peers on.
    pub listen_addr: SocketAddr,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NetworkHandle {
    /// Announces transactions the node accepted (from a client) to every peer.
    pub async fn broadcast_txs(&self, txs: Vec<SignedTx>) {
        let _ = self.commands.send(Command::BroadcastTxs(txs)).await;
    }

    /// Announces again transactions the node still holds (announced before): peers
    /// that deferred or dropped them while busy fetch them now; peers that have them
    /// ignore the announcement.
    pub async fn reannounce(&self, txs: Vec<SignedTx>) {
        let _ = self.commands.send(Command::Reannounce(txs)).await;
    }

    /// Sends this node's own consensus message whole to every peer, even one sent
    /// before (a re-sent timeout, a block asked for again). Peers that already saw the
    /// same bytes drop it. Messages of other nodes go on with
    /// [`NetworkHandle::relay_consensus`].
    pub async fn broadcast_consensus(&self, payload: Bytes) {
        let _ = self
            .commands
            .send(Command::BroadcastConsensus(payload))
            .await;
    }

    /// Sends on a consensus message that peer `from` sent and the node checked, to
    /// every other peer. One of at least [`RELAY_HAVE_BYTES`] (a proposal with its
    /// block) is announced by hash instead, and sent to the peers that ask for it: in a
    /// full mesh every peer already has the proposer's copy, and sending it on in full
    /// had tripled the bytes each node receives.
    pub async fn relay_consensus(&self, payload: Bytes, from: Address) {
        let _ = self
            .commands
            .send(Command::RelayConsensus(payload, from))
            .await;
    }

    /// Sends a block sync message ([`Message::Sync`]) to peer `id` only; dropped if
    /// that peer is not connected.
    pub async fn send_sync_to(&self, id: Address, payload: Bytes) {
        let _ = self.commands.send(Command::SendSync(id, payload)).await;
    }

    /// Sends a block sync message to every connected peer (the node's final height).
    pub async fn broadcast_sync(&self, payload: Bytes) {
        let _ = self.commands.send(Command::BroadcastSync(payload)).await;
    }

    /// Lowers the score of peer `id` for `offence` (the node found what it sent
    /// invalid); `detail` goes to the log.
    pub async fn report(&self, id: Address, offence: Offence, detail: &'static str) {
        let _ = self
            .commands
            .send(Command::Report(id, offence, detail))
            .await;
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<PeerSummary> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Peers(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

type ConnId = u64;

/// A relayed batch with its verdicts.
struct ValidatedBatch {
    conn: ConnId,
    id: Address,
    fresh: Vec<SignedTx>,
    verdicts: Vec<Verdict>,
}

enum LinkEvent {
    Up {
        conn: ConnId,
        link_id: Address,
        addr: SocketAddr,
        listen_port: u16,
        inbound: bool,
        queue: mpsc::Sender<Bytes>,
        queued: Arc<std::sync::atomic::AtomicUsize>,
        accept: oneshot::Sender<bool>,
        tasks: Vec<AbortHandle>,
    },
    Message {
        conn: ConnId,
        msg: Message,
        bytes: usize,
    },
    Down {
        conn: ConnId,
        error: Option<LinkError>,
    },
    /// Batches of relayed transactions came back from the validator.
    Validated(Vec<ValidatedBatch>),
    DialFailed {
        conn: ConnId,
        addr: SocketAddr,
        reason: String,
    },
}

struct Peer {
    id: Address,
    addr: SocketAddr,
    listen_addr: Option<SocketAddr>,
    inbound: bool,
    queue: mpsc::Sender<Bytes>,
    /// Bytes in `queue` not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    score: i64,
    bytes_in: u64,
    bytes_out: Arc<AtomicU64>,
    tasks: Vec<AbortHandle>,
    ping_sent: Option<(u64, Instant)>,
    latency: Option<Duration>,
    /// We sent GetPeers and await the answer.
    asked_peers: bool,
    announce: Vec<Hash>,
    /// Announced consensus messages asked of this peer and not yet received.
    open_wants: usize,
}

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

/// Seen-hash memory for transactions.
const SEEN_CAPACITY: usize = 200_000;
/// Seen-hash memory for consensus messages (a few hundred a second at most).
const SEEN_CONSENSUS_CAPACITY: usize = 20_000;
/// A consensus message is a duplicate only this long after the node took it. Copies
/// relayed by other peers arrive within a round trip or two; a later copy is a
/// retransmission (a re-sent timeout, an answer to a block request) that the node may
/// need because its consensus dropped the first (a restart, a proposal that waited
/// for a parent too long), and it must not be refused for as long as the seen-set
/// happens to remember it.
pub const SEEN_CONSENSUS_TTL: Duration = Duration::from_secs(2);
/// Consensus messages of at least this many bytes are relayed by announcement
/// ([`NetworkHandle::relay_consensus`]); smaller ones (votes, timeouts, empty
/// proposals) are sent on whole, as an announcement would save little and cost a
/// round trip.
pub const RELAY_HAVE_BYTES: usize = 16 * 1024;
/// Relayed consensus messages kept to answer requests: at most this many...
const RELAYED_KEEP: usize = 64;
/// ...and this many bytes.
const RELAYED_KEEP_BYTES: usize = 64 * 1024 * 1024;
/// An announced consensus message not received this long after it was asked for (or
/// whose peer left) is asked of the next peer that announced it.
const WANT_RETRY: Duration = Duration::from_secs(1);
/// At most this many announced consensus messages are asked of one peer at once, so
/// that a peer announcing messages it does not send cannot crowd out the others...
const MAX_WANTS_PER_PEER: usize = 8;
/// ...and at most this many in all.
const MAX_WANTED: usize = 1024;
/// Transaction bodies kept to answer requests. Peers ask within milliseconds of an
/// announcement, and a pooled transaction that is announced again brings its body
/// back; each generation still covers 3 s at 16,000/s, in about 15 MB (it was twice
/// that, of a validator's memory that passed 500 MB under long loads).
const TX_STORE_CAPACITY: usize = 50_000;
/// A requested body not received in this long may be requested from another peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Gossip batching interval.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes queued for one peer before it counts as stuck and is dropped.
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// Largest consensus message relayed (a full block with its certificates fits).
pub const MAX_CONSENSUS_BYTES: usize = 12 * 1024 * 1024;
/// Other announcers remembered per requested transaction, to ask if the first fails.
const MAX_ALTERNATES: usize = 4;
/// A peer that leaves a ping unanswered this long is disconnected.
const PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// Capacity of the channel from link tasks to the actor.
const EVENT_QUEUE: usize = 4096;
/// Capacity of each of the node's two queues ([`Inbox`]).
const INBOX_QUEUE: usize = 4096;
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
/// that sent them, and (hash, body) pairs.
type WaitingBatch = (ConnId, Address, Vec<SignedTx>);

struct Actor {
    cfg: NetConfig,
    validator: Arc<dyn TxValidator>,
    stats: Arc<NetStats>,
    events: mpsc::Sender<LinkEvent>,
    to_node: mpsc::Sender<NetEvent>,
    to_sync: mpsc::Sender<NetEvent>,
    identity: Arc<LocalIdentity>,
    peers: HashMap<ConnId, Peer>,
    by_id: HashMap<Address, ConnId>,
    next_conn: ConnId,
    /// Link tasks not yet up (handshaking), by connection.
    pending: HashMap<ConnId, AbortHandle>,
    /// Inbound links still handshaking, with their IP.
    pending_inbound: HashMap<ConnId, IpAddr>,
    dialing: HashSet<SocketAddr>,
    book: AddressBook,
    banned: HashMap<Address, Instant>,
    banned_ips: HashMap<IpAddr, Instant>,
    seen_txs: RecentSet,
    /// Consensus messages the node took, and when (see [`SEEN_CONSENSUS_TTL`]).
    seen_consensus: RecentMap<Instant>,
    /// Large consensus messages this node relayed by announcement, oldest first, to
    /// answer `ConsensusWant`; at most [`RELAYED_KEEP`] of them and
    /// [`RELAYED_KEEP_BYTES`] in all.
    relayed: std::collections::VecDeque<Relayed>,
    relayed_bytes: usize,
    /// Announced consensus messages asked for.
    wanted: FastMap<Hash, Want>,
    /// Bodies of valid transactions, to answer requests.
    tx_store: RecentMap<SignedTx>,
    inflight: FastMap<Hash, (ConnId, Instant)>,
    alternates: FastMap<Hash, Vec<ConnId>>,
    listen_addr: SocketAddr,
    /// Hashes of relayed transactions being validated or waiting for it.
    validating: FastSet<Hash>,
    /// Batches being validated now.
    validations: usize,
    /// Batches waiting for a validation slot, oldest first, with the sending peer's
    /// connection and id (its penalties still apply if it disconnected meanwhile).
    waiting: std::collections::VecDeque<WaitingBatch>,
}

/// Starts the network: binds the listener, dials the bootstrap addresses, and runs
/// until `stop` turns true. Returns the handle and the events for the node.
pub async fn start(
    cfg: NetConfig,
    validator: Arc<dyn TxValidator>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(NetworkHandle, Inbox)> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let listen_addr = listener.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (node_tx, node_rx) = mpsc::channel(INBOX_QUEUE);
    let (sync_tx, sync_rx) = mpsc::channel(INBOX_QUEUE);
    let stats = Arc::new(NetStats::default());
    let local_id = cfg.node_key.address();
    let identity = Arc::new(LocalIdentity {
        node_key: cfg.node_key.duplicate(),
        chain_id: cfg.chain_id,
        genesis_hash: cfg.genesis_hash,
        listen_port: listen_addr.port(),
    });
    let mut book = AddressBook::load(cfg.address_book.clone());
    for a in &cfg.bootstrap {
        book.add(*a);
    }
    let actor = Actor {
        validator,
        stats: stats.clone(),
        events: ev_tx,
        to_node: node_tx,
        to_sync: sync_tx,
        identity,
        peers: HashMap::new(),
        by_id: HashMap::new(),
        next_conn: 0,
        pending: HashMap::new(),
        pending_inbound: HashMap::new(),
        dialing: HashSet::new(),
        book,
        banned: HashMap::new(),
        banned_ips: HashMap::new(),
        seen_txs: RecentSet::new(SEEN_CAPACITY),
        seen_consensus: RecentMap::new(SEEN_CONSENSUS_CAPACITY),
        relayed: std::collections::VecDeque::new(),
        relayed_bytes: 0,
        wanted: FastMap::default(),
        tx_store: RecentMap::new(TX_STORE_CAPACITY),
        inflight: FastMap::default(),
        alternates: FastMap::default(),
        listen_addr,
        validating: FastSet::default(),
        validations: 0,
        waiting: std::collections::VecDeque::new(),
        cfg,
    };
    tokio::spawn(actor.run(listener, cmd_rx, ev_rx, stop));
    Ok((
        NetworkHandle {
            commands: cmd_tx,
            stats,
            local_id,
            listen_addr,
        },
        Inbox {
            consensus: node_rx,
            sync: sync_rx,
        },
    ))
}

/// What a link task needs from the actor.
#[derive(Clone)]
struct LinkCtx {
    identity: Arc<LocalIdentity>,
    events: mpsc::Sender<LinkEvent>,
    stats: Arc<NetStats>,
    handshake_timeout: Duration,
    queue_len: usize,
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs one link: handshake, registration with the actor, then the reader loop (this
/// task) and a writer task draining the peer's queue.
async fn run_link(stream: TcpStream, addr: SocketAddr, inbound: bool, conn: ConnId, ctx: LinkCtx) {
    let LinkCtx {
        identity,
        events,
        stats,
        handshake_timeout,
        queue_len,
    } = ctx;
    let _ = stream.set_nodelay(true);
    let link = match tokio::time::timeout(
        handshake_timeout,
        secure::handshake(stream, !inbound, &identity),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            // A link dropped mid-handshake is ordinary churn; a refusal (another
            // chain, a bad signature) is worth an operator's attention.
            if matches!(e, LinkError::Io(_)) {
                tracing::debug!(%addr, error = %e, "handshake failed");
            } else {
                tracing::warn!(%addr, error = %e, "handshake failed");
            }
            let _ = events
                .send(if inbound {
                    LinkEvent::Down { conn, error: None }
                } else {
                    LinkEvent::DialFailed {
                        conn,
                        addr,
                        reason: e.to_string(),
                    }
                })
                .await;
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "handshake timed out");
            let _ = events
                .send(if inbound {
                    LinkEvent::Down { conn, error: None }
                } else {
                    LinkEvent::DialFailed {
                        conn,
                        addr,
                        reason: "handshake timed out".into(),
                    }
                })
                .await;
            return;
        }
    };
    let secure::Link {
        mut reader,
        mut writer,
        hello,
    } = link;
    let (queue_tx, mut queue_rx) = mpsc::channel::<Bytes>(queue_len);
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queued_w = queued.clone();
    let stats_w = stats.clone();
    let events_w = events.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = queue_rx.recv().await {
            queued_w.fetch_sub(frame.len(), Ordering::Relaxed);
            match writer.send_frame(&frame).await {
                Ok(n) => {
                    stats_w.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = events_w
                        .send(LinkEvent::Down {
                            conn,
                            error: Some(e),
                        })
                        .await;
                    return;
                }
            }
        }
    });
    let (accept_tx, accept_rx) = oneshot::channel();
    let up = LinkEvent::Up {
        conn,
        link_id: hello.node_key,
        addr,
        listen_port: hello.listen_port,
        inbound,
        queue: queue_tx,
        queued,
        accept: accept_tx,
        tasks: vec![writer_task.abort_handle()],
    };
    if events.send(up).await.is_err() || !accept_rx.await.unwrap_or(false) {
        writer_task.abort();
        return;
    }
    loop {
        match reader.recv().await {
            Ok((msg, bytes)) => {
                stats.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
                if events
                    .send(LinkEvent::Message { conn, msg, bytes })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = events
                    .send(LinkEvent::Down {
                        conn,
                        error: Some(e),
                    })
                    .await;
                return;
            }
        }
    }
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
                Some(ev) = events.recv() => self.on_event(ev).await,
                Some(cmd) = commands.recv() => self.on_command(cmd),
                _ = flush.tick() => self.flush_announcements(),
                _ = maintain.tick() => self.maintain(),
                _ = ping.tick() => self.ping_all(),
                _ = save.tick() => self.book.save(),
                () = stopped(&mut stop) => break,
            }
        }
        self.book.save();
        for (_, p) in self.peers.drain() {
            for t in p.tasks {
                t.abort();
            }
        }
        for (_, t) in self.pending.drain() {
            t.abort();
        }
    }

    fn conns_from(&self, ip: IpAddr) -> usize {
        self.peers.values().filter(|p| p.addr.ip() == ip).count()
    }

    fn on_accept(&mut self, stream: TcpStream, addr: SocketAddr) {
        let now = Instant::now();
        if self.banned_ips.get(&addr.ip()).is_some_and(|t| *t > now) {
            return; // dropping the stream closes it
        }
        // Links still in their handshake count too, so half-open ones cannot pile up.
        let inbound =
            self.peers.values().filter(|p| p.inbound).count() + self.pending_inbound.len();
        let from_ip = self.conns_from(addr.ip())
            + self
                .pending_inbound
                .values()
                .filter(|ip| **ip == addr.ip())
                .count();
        if inbound >= self.cfg.max_inbound || from_ip >= self.cfg.max_per_ip {
            tracing::debug!(%addr, "inbound limit reached; refusing");
            return;
        }
        self.spawn_link(stream, addr, true);
    }

    fn link_ctx(&self) -> LinkCtx {
        LinkCtx {
            identity: self.identity.clone(),
            events: self.events.clone(),
            stats: self.stats.clone(),
            handshake_timeout: self.cfg.handshake_timeout,
            queue_len: self.cfg.send_queue,
        }
    }

    fn spawn_link(&mut self, stream: TcpStream, addr: SocketAddr, inbound: bool) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let task = tokio::spawn(run_link(stream, addr, inbound, conn, self.link_ctx()));
        // Kept so a disconnect stops the reader, which is this task.
        self.pending.insert(conn, task.abort_handle());
        if inbound {
            self.pending_inbound.insert(conn, addr.ip());
        }
    }

    /// Asks `conn` for the announced consensus message `h`, or the first of
    /// `alternates` after it with fewer than [`MAX_WANTS_PER_PEER`] open; the others
    /// stay alternates.
    fn ask_consensus(&mut self, h: Hash, conn: ConnId, mut alternates: Vec<ConnId>) {
        let mut next = Some(conn);
        while let Some(c) = next {
            if let Some(p) = self.peers.get_mut(&c)
                && p.open_wants < MAX_WANTS_PER_PEER
            {
                p.open_wants += 1;
                self.wanted.insert(
                    h,
                    Want {
                        conn: c,
                        asked: Instant::now(),
                        alternates,
                    },
                );
                self.send(c, &Message::ConsensusWant(h));
                return;
            }
            next = (!alternates.is_empty()).then(|| alternates.remove(0));
        }
    }

    /// Announced consensus messages not received in time, or whose peer left: asked of
    /// the next peer that announced them, or given up (a later announcement asks
    /// again).
    fn retry_wants(&mut self, now: Instant) {
        let due: Vec<Hash> = self
            .wanted
            .iter()
            .filter(|(_, w)| {
                now.duration_since(w.asked) >= WANT_RETRY || !self.peers.contains_key(&w.conn)
            })
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            let Some(w) = self.wanted.remove(&h) else {
                continue;
            };
            if let Some(p) = self.peers.get_mut(&w.conn) {
                p.open_wants = p.open_wants.saturating_sub(1);
            }
            let mut alternates = w.alternates;
            if !alternates.is_empty() {
                let first = alternates.remove(0);
                self.ask_consensus(h, first, alternates);
            }
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        self.banned.retain(|_, t| *t > now);
        self.banned_ips.retain(|_, t| *t > now);
        self.retry_wants(now);
        self.retry_requests(now);
        let outbound = self.peers.values().filter(|p| !p.inbound).count() + self.dialing.len();
        if outbound >= self.cfg.target_outbound {
            return;
        }
        let connected: HashSet<SocketAddr> = self
            .peers
            .values()
            .flat_map(|p| [Some(p.addr), p.listen_addr])
            .flatten()
            .collect();
        let wanted = self.cfg.target_outbound - outbound;
        let candidates = self.book.candidates(now, wanted, |a| {
            a != self.listen_addr && !connected.contains(&a) && !self.dialing.contains(&a)
        });
        for addr in candidates {
            self.book.attempted(addr, now);
            self.dialing.insert(addr);
            let ctx = self.link_ctx();
            let conn = self.next_conn;
            self.next_conn += 1;
            let task = tokio::spawn(async move {
                let events = ctx.events.clone();
                let reason =
                    match tokio::time::timeout(ctx.handshake_timeout, TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(stream)) => return run_link(stream, addr, false, conn, ctx).await,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "connect timed out".to_string(),
                    };
                let _ = events
                    .send(LinkEvent::DialFailed { conn, addr, reason })
                    .await;
            });
            self.pending.insert(conn, task.abort_handle());
        }
    }

    /// Requests that timed out, or whose peer left, go to another announcer.
    fn retry_requests(&mut self, now: Instant) {
        let expired: Vec<Hash> = self
            .inflight
            .iter()
            .filter(|(_, (c, t))| {
                now.duration_since(*t) >= REQUEST_TIMEOUT || !self.peers.contains_key(c)
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
                if self.peers.contains_key(&c) {
                    retry.entry(c).or_default().push(h);
                    self.inflight.insert(h, (c, now));
                    break;
                }
            }
        }
        let inflight = &self.inflight;
        self.alternates.retain(|h, _| inflight.contains_key(h));
        for (c, hashes) in retry {
            for chunk in hashes.chunks(MAX_ITEMS_PER_MESSAGE) {
                self.send(c, &Message::TxRequest(chunk.to_vec()));
            }
        }
    }

    fn send(&mut self, conn: ConnId, msg: &Message) {
        if self.peers.contains_key(&conn) {
            self.send_encoded(conn, Bytes::from(msg.encode()));
        }
    }

    /// Queues an encoded message for peer `conn`; a peer whose queue is full is dropped.
    fn send_encoded(&mut self, conn: ConnId, bytes: Bytes) {
        let Some(p) = self.peers.get(&conn) else {
            return;
        };
        let len = bytes.len() as u64;
        let queued = p.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if queued > MAX_QUEUED_BYTES || p.queue.try_send(bytes).is_err() {
            let id = p.id;
            tracing::warn!(peer = %id, "send queue full: peer too slow; disconnecting");
            self.disconnect(conn);
            return;
        }
        p.bytes_out.fetch_add(len, Ordering::Relaxed);
    }

    fn disconnect(&mut self, conn: ConnId) {
        // Its batches still waiting are not worth the work any more.
        let validating = &mut self.validating;
        self.waiting.retain(|(c, _, fresh)| {
            if *c == conn {
                for t in fresh {
                    validating.remove(&t.hash());
                }
            }
            *c != conn
        });
        if let Some(p) = self.peers.remove(&conn) {
            if self.by_id.get(&p.id) == Some(&conn) {
                self.by_id.remove(&p.id);
            }
            for t in p.tasks {
                t.abort();
            }
            self.stats
                .peers
                .store(self.peers.len() as u64, Ordering::Relaxed);
        }
    }

    fn penalize(&mut self, conn: ConnId, offence: Offence, detail: &str) {
        let Some(p) = self.peers.get_mut(&conn) else {
            return;
        };
        p.score -= offence.penalty();
        if p.score <= BAN_SCORE {
            let (id, addr) = (p.id, p.addr);
            tracing::warn!(peer = %id, %addr, reason = detail, ?offence, "banning peer");
            let until = Instant::now() + self.cfg.ban_duration;
            self.banned.insert(id, until);
            if !addr.ip().is_loopback() {
                self.banned_ips.insert(addr.ip(), until);
            }
            self.stats.bans.fetch_add(1, Ordering::Relaxed);
            self.disconnect(conn);
        } else {
            tracing::debug!(peer = %p.id, reason = detail, score = p.score, "peer penalized");
        }
    }

    fn reward(&mut self, conn: ConnId, points: i64) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.score = (p.score + points).min(MAX_SCORE);
        }
    }

    async fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up {
                conn,
                link_id,
                addr,
                listen_port,
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
                self.pending_inbound.remove(&conn);
                let now = Instant::now();
                let refuse = if link_id == self.identity.node_key.address() {
                    self.book.forget(addr);
                    Some("connected to ourselves")
                } else if self.banned.get(&link_id).is_some_and(|t| *t > now) {
                    Some("peer is banned")
                } else if self.by_id.contains_key(&link_id) {
                    Some("already connected to this peer")
                } else {
                    None
                };
                if let Some(why) = refuse {
                    tracing::debug!(%addr, peer = %link_id, why, "refusing link");
                    let _ = accept.send(false);
                    return;
                }
                if accept.send(true).is_err() {
                    return;
                }
                let listen_addr =
                    (listen_port != 0).then(|| SocketAddr::new(addr.ip(), listen_port));
                // Without peer exchange only dialed addresses count: a peer's own
                // listen address may be one this node is not meant to use.
                let good = if self.cfg.peer_exchange {
                    listen_addr
                } else {
                    (!inbound).then_some(addr)
                };
                if let Some(l) = good {
                    self.book.connected(l);
                }
                tracing::info!(peer = %link_id, %addr, inbound, "peer connected");
                self.peers.insert(
                    conn,
                    Peer {
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
                        announce: Vec::new(),
                        open_wants: 0,
                    },
                );
                self.by_id.insert(link_id, conn);
                self.stats
                    .peers
                    .store(self.peers.len() as u64, Ordering::Relaxed);
                if self.cfg.peer_exchange {
                    self.send(conn, &Message::GetPeers);
                }
            }
            LinkEvent::Validated(batches) => self.on_validations(batches),
            LinkEvent::Down { conn, error } => {
                self.pending.remove(&conn);
                self.pending_inbound.remove(&conn);
                if let Some(e) = &error {
                    if e.is_misbehaviour() {
                        self.penalize(conn, Offence::Malformed, &e.to_string());
                    } else if let Some(p) = self.peers.get(&conn) {
                        tracing::info!(peer = %p.id, error = %e, "peer disconnected");
                    }
                }
                self.disconnect(conn);
            }
            LinkEvent::DialFailed { conn, addr, reason } => {
                self.pending.remove(&conn);
                self.dialing.remove(&addr);
                self.book.failed(addr, Instant::now());
                tracing::debug!(%addr, reason, "dial failed");
            }
            LinkEvent::Message { conn, msg, bytes } => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    p.bytes_in += bytes as u64;
                } else {
                    return;
                }
                if let Some(i) = MESSAGE_KINDS.iter().position(|k| *k == msg.kind()) {
                    self.stats.messages[i].fetch_add(1, Ordering::Relaxed);
                }
                self.on_message(conn, msg).await;
            }
        }
    }

    async fn on_message(&mut self, conn: ConnId, msg: Message) {
        match msg {
            Message::Hello(_) => self.penalize(conn, Offence::Malformed, "second hello"),
            Message::Ping(n) => self.send(conn, &Message::Pong(n)),
            Message::Pong(n) => {
                if let Some(p) = self.peers.get_mut(&conn)
                    && let Some((sent, at)) = p.ping_sent
                    && sent == n
                {
                    p.latency = Some(at.elapsed());
                    p.ping_sent = None;
                }
            }
            Message::GetPeers => {
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
                let asked = self
                    .peers
                    .get_mut(&conn)
                    .is_some_and(|p| std::mem::take(&mut p.asked_peers));
                if !asked {
                    self.penalize(conn, Offence::Unsolicited, "unrequested address list");
                    return;
                }
                for s in list {
                    match s.parse::<SocketAddr>() {
                        Ok(a) if a.port() != 0 => self.book.add(a),
                        _ => {
                            self.penalize(conn, Offence::BadAddress, "unparsable address");
                            return;
                        }
                    }
                }
            }
            Message::TxAnnounce(hashes) => {
                let now = Instant::now();
                let mut want = Vec::new();
                for h in hashes {
                    if self.seen_txs.contains(&h) || self.validating.contains(&h) {
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
                if !want.is_empty() {
                    self.send(conn, &Message::TxRequest(want));
                }
            }
            Message::TxRequest(hashes) => {
                let bodies: Vec<SignedTx> = hashes
                    .iter()
                    .filter_map(|h| self.tx_store.get(h).copied())
                    .collect();
                if !bodies.is_empty() {
                    self.send(conn, &Message::Txs(bodies));
                }
            }
            Message::Txs(txs) => self.on_txs(conn, txs),
            Message::ConsensusHave(h) => {
                if self.seen_recently(&h) {
                    return;
                }
                if let Some(w) = self.wanted.get_mut(&h) {
                    // Asked of someone already: remember who else has it.
                    if w.conn != conn
                        && w.alternates.len() < MAX_ALTERNATES
                        && !w.alternates.contains(&conn)
                    {
                        w.alternates.push(conn);
                    }
                    return;
                }
                if self.wanted.len() < MAX_WANTED {
                    self.ask_consensus(h, conn, Vec::new());
                }
            }
            Message::ConsensusWant(h) => {
                // Answered once per peer it was announced to; a message no longer kept
                // is not answered (the peer asks another announcer).
                let Some(r) = self.relayed.iter_mut().rev().find(|r| r.hash == h) else {
                    return;
                };
                match r.announced_to.iter().position(|c| *c == conn) {
                    Some(i) => {
                        r.announced_to.swap_remove(i);
                        let frame = r.frame.clone();
                        self.send_encoded(conn, frame);
                    }
                    None => self.penalize(
                        conn,
                        Offence::Unsolicited,
                        "asked for a consensus message twice or unannounced",
                    ),
                }
            }
            Message::Consensus(payload) => {
                if payload.len() > MAX_CONSENSUS_BYTES {
                    self.penalize(conn, Offence::Malformed, "oversized consensus message");
                    return;
                }
                let h = sha256(&[&payload]);
                if let Some(w) = self.wanted.remove(&h)
                    && let Some(p) = self.peers.get_mut(&w.conn)
                {
                    p.open_wants = p.open_wants.saturating_sub(1);
                }
                if self.seen_recently(&h) {
                    return;
                }
                let from = match self.peers.get(&conn) {
                    Some(p) => p.id,
                    None => return,
                };
                let payload = Bytes::from(payload);
                // Seen only once the node has it: a copy dropped at a full queue must
                // not make the next copy (a re-sent timeout, another peer's relay) a
                // duplicate, or a burst that fills the queue could end liveness.
                match self.to_node.try_send(NetEvent::Consensus { from, payload }) {
                    Ok(()) => self.mark_seen(h),
                    Err(_) => {
                        self.stats.consensus_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %from, "consensus queue full; message dropped");
                    }
                }
            }
            Message::Sync(payload) => {
                let Some(from) = self.peers.get(&conn).map(|p| p.id) else {
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

    /// Whether the node took the consensus message `h` less than
    /// [`SEEN_CONSENSUS_TTL`] ago.
    fn seen_recently(&self, h: &Hash) -> bool {
        self.seen_consensus
            .get(h)
            .is_some_and(|at| at.elapsed() < SEEN_CONSENSUS_TTL)
    }

    /// Records that the node took (or sent) the consensus message `h` now.
    fn mark_seen(&mut self, h: Hash) {
        let now = Instant::now();
        match self.seen_consensus.get_mut(&h) {
            Some(at) => *at = now,
            None => {
                self.seen_consensus.insert(h, now);
            }
        }
    }

    fn on_txs(&mut self, conn: ConnId, txs: Vec<SignedTx>) {
        let mut fresh = Vec::new();
        let mut in_message = HashSet::new();
        let mut unsolicited = 0;
        for t in txs {
            let h = t.hash();
            self.stats.tx_bodies.fetch_add(1, Ordering::Relaxed);
            match self.inflight.get(&h) {
                Some((c, _)) if *c == conn => {
                    self.inflight.remove(&h);
                }
                _ => unsolicited += 1,
            }
            if self.seen_txs.contains(&h) || self.validating.contains(&h) || !in_message.insert(h) {
                self.stats.tx_duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            fresh.push(t);
        }
        if unsolicited > 0 {
            self.penalize(conn, Offence::Unsolicited, "transactions nobody asked for");
        }
        if fresh.is_empty() {
            return;
        }
        let Some(id) = self.peers.get(&conn).map(|p| p.id) else {
            return;
        };
        let from_peer = self.waiting.iter().filter(|(c, _, _)| *c == conn).count();
        if self.waiting.len() >= MAX_WAITING_BATCHES || from_peer >= MAX_WAITING_PER_PEER {
            tracing::debug!(
                txs = fresh.len(),
                "admission behind; relayed transactions dropped"
            );
            return;
        }
        self.validating.extend(fresh.iter().map(SignedTx::hash));
        self.waiting.push_back((conn, id, fresh));
        self.start_validations();
    }

    /// Hands waiting batches to the validator while slots are free. Each result comes
    /// back as [`LinkEvent::Validated`].
    fn start_validations(&mut self) {
        while self.validations < MAX_VALIDATING && !self.waiting.is_empty() {
            // Waiting batches go together up to a signature batch: a peer's message
            // often holds a few dozen transactions, and batch verification costs less
            // per signature the larger the batch.
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
            let validator = self.validator.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let bodies: Vec<Vec<SignedTx>> =
                    jobs.iter().map(|(_, _, fresh)| fresh.clone()).collect();
                // Validation checks signatures: keep it off the async workers.
                let mut verdicts =
                    tokio::task::spawn_blocking(move || validator.validate_many(&bodies))
                        .await
                        .unwrap_or_default()
                        .into_iter();
                let batches = jobs
                    .into_iter()
                    .map(|(conn, id, fresh)| ValidatedBatch {
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

    /// A validation finished: frees its slot, then applies each batch's verdicts.
    fn on_validations(&mut self, batches: Vec<ValidatedBatch>) {
        self.validations = self.validations.saturating_sub(1);
        for b in &batches {
            for t in &b.fresh {
                self.validating.remove(&t.hash());
            }
        }
        self.start_validations();
        for b in batches {
            self.on_validated(b.conn, b.id, b.fresh, b.verdicts);
        }
    }

    fn on_validated(
        &mut self,
        conn: ConnId,
        id: Address,
        fresh: Vec<SignedTx>,
        verdicts: Vec<Verdict>,
    ) {
        let mut valid = Vec::new();
        let mut invalid = 0;
        for (t, v) in fresh.into_iter().zip(
            verdicts
                .into_iter()
                .chain(std::iter::repeat(Verdict::Ignored)),
        ) {
            let h = t.hash();
            match v {
                Verdict::Accepted => valid.push(t),
                Verdict::Ignored => {
                    // Not asked for again from others, not relayed.
                    self.seen_txs.insert(h, ());
                }
                Verdict::Invalid => {
                    self.seen_txs.insert(h, ());
                    invalid += 1;
                }
                Verdict::Deferred => {}
            }
        }
        if invalid > 0 && !self.peers.contains_key(&conn) {
            // It left before its verdict came back: honest peers never relay invalid
            // transactions, so it is banned by id as if it had stayed.
            tracing::warn!(peer = %id, "banning peer that relayed invalid transactions and left");
            self.banned
                .insert(id, Instant::now() + self.cfg.ban_duration);
            self.stats.bans.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..invalid {
            self.penalize(conn, Offence::InvalidTx, "invalid transaction");
        }
        let n = valid.len() as i64;
        self.reward(conn, n.min(10));
        self.accept_txs(valid, Some(conn));
    }

    /// Records valid transactions and queues their announcement to every peer but
    /// `except`.
    fn accept_txs(&mut self, txs: Vec<SignedTx>, except: Option<ConnId>) {
        let mut hashes = Vec::with_capacity(txs.len());
        for t in txs {
            let h = t.hash();
            if !self.seen_txs.insert(h, ()) {
                continue;
            }
            self.tx_store.insert(h, t);
            hashes.push(h);
        }
        for (c, p) in self.peers.iter_mut() {
            if Some(*c) != except {
                p.announce.extend_from_slice(&hashes);
            }
        }
    }

    fn flush_announcements(&mut self) {
        let conns: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.announce.is_empty())
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            let Some(p) = self.peers.get_mut(&c) else {
                continue;
            };
            let all = std::mem::take(&mut p.announce);
            for chunk in all.chunks(MAX_ITEMS_PER_MESSAGE) {
                self.send(c, &Message::TxAnnounce(chunk.to_vec()));
            }
        }
    }

    /// Every connected peer but `except`.
    fn peers_except(&self, except: Option<ConnId>) -> Vec<ConnId> {
        self.peers
            .keys()
            .copied()
            .filter(|c| Some(*c) != except)
            .collect()
    }

    fn flood_consensus(&mut self, payload: &Bytes, except: Option<ConnId>) {
        // Encoded once for every peer: a proposal carries a whole block.
        let bytes = Bytes::from(Message::Consensus(payload.to_vec()).encode());
        for c in self.peers_except(except) {
            self.send_encoded(c, bytes.clone());
        }
    }

    fn ping_all(&mut self) {
        let now = Instant::now();
        // A peer that has not answered a ping for this long is gone (half-open link).
        let silent: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.ping_sent
                    .is_some_and(|(_, at)| now.duration_since(at) > PONG_TIMEOUT)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in silent {
            if let Some(p) = self.peers.get(&c) {
                tracing::info!(peer = %p.id, "no pong: disconnecting");
            }
            self.disconnect(c);
        }
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for c in conns {
            let n = self.next_conn.wrapping_mul(0x9e37_79b9) ^ c;
            if let Some(p) = self.peers.get_mut(&c) {
                // Keep the oldest unanswered ping: that is what the timeout measures.
                if p.ping_sent.is_none() {
                    p.ping_sent = Some((n, now));
                }
            }
            let n = self
                .peers
                .get(&c)
                .and_then(|p| p.ping_sent)
                .map_or(n, |(n, _)| n);
            self.send(c, &Message::Ping(n));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::BroadcastTxs(txs) => {
                self.accept_txs(txs, None);
            }
            Command::Reannounce(txs) => {
                let mut hashes = Vec::with_capacity(txs.len());
                for t in txs {
                    let h = t.hash();
                    self.seen_txs.insert(h, ());
                    self.tx_store.insert(h, t);
                    hashes.push(h);
                }
                for p in self.peers.values_mut() {
                    p.announce.extend_from_slice(&hashes);
                }
            }
            Command::BroadcastConsensus(payload) => {
                self.mark_seen(sha256(&[&payload]));
                self.flood_consensus(&payload, None);
            }
            Command::RelayConsensus(payload, from) => {
                let h = sha256(&[&payload]);
                self.mark_seen(h);
                let except = self.by_id.get(&from).copied();
                if payload.len() < RELAY_HAVE_BYTES {
                    self.flood_consensus(&payload, except);
                    return;
                }
                let conns = self.peers_except(except);
                let frame = Bytes::from(Message::Consensus(payload.to_vec()).encode());
                self.relayed_bytes += frame.len();
                self.relayed.push_back(Relayed {
                    hash: h,
                    frame,
                    announced_to: conns.clone(),
                });
                while self.relayed.len() > RELAYED_KEEP
                    || (self.relayed_bytes > RELAYED_KEEP_BYTES && self.relayed.len() > 1)
                {
                    if let Some(old) = self.relayed.pop_front() {
                        self.relayed_bytes -= old.frame.len();
                    }
                }
                let have = Message::ConsensusHave(h);
                for c in conns {
                    self.send(c, &have);
                }
            }
            Command::SendSync(id, payload) => {
                if let Some(conn) = self.by_id.get(&id).copied() {
                    self.send(conn, &Message::Sync(payload.to_vec()));
                }
            }
            Command::BroadcastSync(payload) => {
                let bytes = Bytes::from(Message::Sync(payload.to_vec()).encode());
                for c in self.peers_except(None) {
                    self.send_encoded(c, bytes.clone());
                }
            }
            Command::Report(id, offence, detail) => {
                if let Some(conn) = self.by_id.get(&id).copied() {
                    self.penalize(conn, offence, detail);
                }
            }
            Command::Peers(reply) => {
                let list = self
                    .peers
                    .values()
                    .map(|p| PeerSummary {
                        id: p.id,
                        address: p.addr,
                        inbound: p.inbound,
                        score: p.score,
                        bytes_in: p.bytes_in,
                        bytes_out: p.bytes_out.load(Ordering::Relaxed),
                        latency: p.latency,
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }
}
