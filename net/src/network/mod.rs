//! The network's public surface: [`start`], the [`NetworkHandle`] that controls it,
//! the [`Inbox`] it delivers to, and the types and limits they use. The parts behind
//! it:
//!
//! - `actor`: the one task that owns all state and does all IO; it accepts and dials
//!   links and wires the other parts together;
//! - `link`: one task per link (handshake, reader, writer), talking to the actor
//!   through a bounded channel;
//! - `peers`: the peer set with its limits, scores and bans, and the peers' bounded
//!   send queues (a peer that cannot keep up is dropped, never waited for);
//! - `gossip`: transaction gossip (announce, then fetch what is missing) and the
//!   validation queue, without sockets or tasks;
//! - `relay`: consensus relay (the seen-set, announce-then-fetch of large messages),
//!   without sockets or tasks;
//! - `budget`: each peer's inbound budget of messages and bytes a second, which its
//!   link's reader charges and pauses on, without sockets or clocks.
//!
//! Gossip and relay take the time and their inputs and return what to send; the actor
//! sends it, runs validations beside itself, and applies penalties.

mod actor;
mod budget;
mod gossip;
mod link;
mod peers;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use grapevine_ledger::{Address, Hash, Keypair, SignedTx};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

#[cfg(doc)]
use crate::message::Message;
use actor::Command;

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
    /// Persistent peers: dialed at start and again whenever their link is down (with
    /// backoff, for ever), names resolved at every dial, and a pinned node id checked.
    pub bootstrap: Vec<crate::PeerAddr>,
    /// The address peers are asked to dial this node at (sent in every hello), for
    /// when the address it is seen from plus its listen port does not reach it. A name
    /// is resolved by this node at start and again every minute; while it does not
    /// resolve, the node advertises nothing and logs why.
    pub external_address: Option<crate::PeerAddr>,
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
    /// Most inbound links from one network group (an IPv4 /16 or IPv6 /48; see
    /// [`crate::netgroup`]; local addresses are exempt), so that a few networks cannot
    /// hold every inbound slot.
    pub max_inbound_per_group: usize,
    /// Messages a second one peer may send on average (bursts of two seconds' worth);
    /// a peer over it is not read from until it is back within budget, and loses
    /// score ([`Offence::Flood`]) once a second while it stays over.
    pub recv_msgs_per_sec: u32,
    /// Bytes a second one peer may send on average, enforced like
    /// [`NetConfig::recv_msgs_per_sec`] (bursts of two seconds' worth, and never less
    /// than two of the largest frames).
    pub recv_bytes_per_sec: u64,
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

/// Outbound links a node keeps by default (`[p2p] target_outbound`).
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;
/// Most inbound links by default (`[p2p] max_inbound`).
pub const DEFAULT_MAX_INBOUND: usize = 32;
/// Most links from one IP address by default (`[p2p] max_per_ip`).
pub const DEFAULT_MAX_PER_IP: usize = 16;
/// Most inbound links from one network group by default (`[p2p]
/// max_inbound_per_group`): a quarter of [`DEFAULT_MAX_INBOUND`].
pub const DEFAULT_MAX_INBOUND_PER_GROUP: usize = 8;
/// Messages a second from one peer by default (`[p2p] recv_msgs_per_sec`). An honest
/// peer of a validator at 30,000 tx/s sends about 100 announcements, 100 requests and
/// 100 answers a second (gossip is batched every 10 ms), a few hundred consensus
/// messages with a hundred validators, and a few sync messages: about 1,000. This is
/// four times that.
pub const DEFAULT_RECV_MSGS_PER_SEC: u32 = 4_000;
/// Bytes a second from one peer by default (`[p2p] recv_bytes_per_sec`). At 30,000
/// tx/s an honest peer sends at most about 4.7 MB/s of bodies (156 bytes each), 1 MB/s
/// of announced hashes, 4.7 MB/s of proposals and 4 MiB/s of block sync answers (the
/// serving budget, docs/CONSENSUS.md): about 15 MB/s. This is twice that.
pub const DEFAULT_RECV_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;

impl NetConfig {
    /// Defaults for a node with this identity and chain.
    pub fn new(listen: SocketAddr, node_key: Keypair, chain_id: u32, genesis_hash: Hash) -> Self {
        NetConfig {
            listen,
            bootstrap: Vec::new(),
            external_address: None,
            node_key,
            chain_id,
            genesis_hash,
            target_outbound: DEFAULT_TARGET_OUTBOUND,
            max_inbound: DEFAULT_MAX_INBOUND,
            max_per_ip: DEFAULT_MAX_PER_IP,
            max_inbound_per_group: DEFAULT_MAX_INBOUND_PER_GROUP,
            recv_msgs_per_sec: DEFAULT_RECV_MSGS_PER_SEC,
            recv_bytes_per_sec: DEFAULT_RECV_BYTES_PER_SEC,
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
    /// More than an honest peer sends: messages or bytes over its inbound budget
    /// (reported at most once a second while it stays over), `GetPeers` more often
    /// than once a minute, block sync requests or status messages beyond their
    /// budgets. The excess is throttled or dropped unserved, and costs score.
    Flood,
}

impl Offence {
    /// Score points the offence costs.
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
    /// Times a peer went over its inbound budget and its link was paused (counted at
    /// most once a second per peer).
    pub throttled: AtomicU64,
    /// Requests ignored: `GetPeers` sooner than a minute after the last from the same
    /// peer, and `TxRequest`s for transactions not announced to that peer.
    pub requests_refused: AtomicU64,
    /// Inbound links refused before their handshake (banned address, or a limit
    /// reached with no peer to evict).
    pub inbound_refused: AtomicU64,
    /// Inbound peers disconnected to make room for a new inbound link.
    pub evictions: AtomicU64,
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
    /// Where it asks to be dialed: the address its hello advertised, or the one it is
    /// seen from with its listen port (`None`: it accepts no connections).
    pub listen_address: Option<SocketAddr>,
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

impl NetworkHandle {
    /// Sends transactions the node accepted from a client to every peer: their bodies,
    /// pushed (`TxPush`), as no peer can have them yet.
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
    /// would triple the bytes each node receives.
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

/// A link's identifier, unique for the life of the network (never reused).
type ConnId = u64;

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
/// Largest consensus message relayed (a full block with its certificates fits).
pub const MAX_CONSENSUS_BYTES: usize = 12 * 1024 * 1024;
/// Other announcers remembered per requested transaction or consensus message, to ask
/// if the first fails.
const MAX_ALTERNATES: usize = 4;
/// Capacity of the channel from the handles to the actor.
const COMMAND_QUEUE: usize = 1024;
/// Capacity of each of the node's two queues ([`Inbox`]).
const INBOX_QUEUE: usize = 4096;

/// Starts the network: binds the listener, dials the bootstrap addresses, and runs
/// until `stop` turns true. Returns the handle and the events for the node.
pub async fn start(
    cfg: NetConfig,
    validator: Arc<dyn TxValidator>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(NetworkHandle, Inbox)> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let listen_addr = listener.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(NetStats::default());
    let local_id = cfg.node_key.address();
    let inbox = actor::spawn(
        cfg,
        validator,
        stats.clone(),
        listener,
        listen_addr,
        cmd_rx,
        stop,
    );
    Ok((
        NetworkHandle {
            commands: cmd_tx,
            stats,
            local_id,
            listen_addr,
        },
        inbox,
    ))
}
