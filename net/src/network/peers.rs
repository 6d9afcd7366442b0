//! The peer set: connected peers with their send queues, scores and pings; the limits
//! on inbound links (links still in their handshake count too); bans by node id and by
//! IP address. Sending to a peer never waits: a peer whose queue is full is reported
//! stuck, and the actor disconnects it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::Address;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{BAN_SCORE, ConnId, MAX_SCORE, NetConfig, NetStats, Offence, PeerSummary};
use crate::message::Message;

/// Bytes queued for one peer before it counts as stuck and is dropped.
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// A peer that leaves a ping unanswered this long is disconnected.
const PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// A connected peer.
pub(super) struct Peer {
    pub(super) id: Address,
    pub(super) addr: SocketAddr,
    /// Where it accepts links (its address with the port of its hello), if it does.
    pub(super) listen_addr: Option<SocketAddr>,
    pub(super) inbound: bool,
    pub(super) queue: mpsc::Sender<Bytes>,
    /// Bytes in `queue` not yet written.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) score: i64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: Arc<AtomicU64>,
    /// Its link's reader and writer tasks, stopped when it is disconnected.
    pub(super) tasks: Vec<AbortHandle>,
    /// The oldest ping it has not answered: nonce and time sent.
    pub(super) ping_sent: Option<(u64, Instant)>,
    pub(super) latency: Option<Duration>,
    /// We sent GetPeers and await the answer.
    pub(super) asked_peers: bool,
}

/// A peer's send queue is full: it reads too slowly, or not at all.
#[derive(Debug)]
pub(super) struct Stuck;

/// The connected peers, links in their handshake, and bans.
pub(super) struct PeerSet {
    stats: Arc<NetStats>,
    max_inbound: usize,
    max_per_ip: usize,
    ban_duration: Duration,
    peers: HashMap<ConnId, Peer>,
    by_id: HashMap<Address, ConnId>,
    /// Inbound links still handshaking, with their IP.
    pending_inbound: HashMap<ConnId, IpAddr>,
    banned: HashMap<Address, Instant>,
    banned_ips: HashMap<IpAddr, Instant>,
}

impl PeerSet {
    /// No peers, with the limits and ban duration of `cfg`; keeps `stats.peers` and
    /// `stats.bans` up to date.
    pub(super) fn new(cfg: &NetConfig, stats: Arc<NetStats>) -> Self {
        PeerSet {
            stats,
            max_inbound: cfg.max_inbound,
            max_per_ip: cfg.max_per_ip,
            ban_duration: cfg.ban_duration,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            pending_inbound: HashMap::new(),
            banned: HashMap::new(),
            banned_ips: HashMap::new(),
        }
    }

    /// Whether a link accepted from `addr` may start its handshake: its IP is not
    /// banned, and neither the inbound limit nor the limit per IP is reached.
    pub(super) fn admits(&self, addr: SocketAddr, now: Instant) -> bool {
        if self.banned_ips.get(&addr.ip()).is_some_and(|t| *t > now) {
            return false;
        }
        // Links still in their handshake count too, so half-open ones cannot pile up.
        let inbound =
            self.peers.values().filter(|p| p.inbound).count() + self.pending_inbound.len();
        let from_ip = self
            .peers
            .values()
            .filter(|p| p.addr.ip() == addr.ip())
            .count()
            + self
                .pending_inbound
                .values()
                .filter(|ip| **ip == addr.ip())
                .count();
        if inbound >= self.max_inbound || from_ip >= self.max_per_ip {
            tracing::debug!(%addr, "inbound limit reached; refusing");
            return false;
        }
        true
    }

    /// Inbound link `conn` from `ip` is in its handshake.
    pub(super) fn handshaking(&mut self, conn: ConnId, ip: IpAddr) {
        self.pending_inbound.insert(conn, ip);
    }

    /// Link `conn`'s handshake is over (it came up or failed).
    pub(super) fn handshake_over(&mut self, conn: ConnId) {
        self.pending_inbound.remove(&conn);
    }

    /// Why a link that proved node id `id` is refused, if it is: banned, or already
    /// connected.
    pub(super) fn refusal(&self, id: &Address, now: Instant) -> Option<&'static str> {
        if self.banned.get(id).is_some_and(|t| *t > now) {
            Some("peer is banned")
        } else if self.by_id.contains_key(id) {
            Some("already connected to this peer")
        } else {
            None
        }
    }

    /// Adds connected peer `conn`.
    pub(super) fn insert(&mut self, conn: ConnId, peer: Peer) {
        self.by_id.insert(peer.id, conn);
        self.peers.insert(conn, peer);
        self.count();
    }

    /// Removes peer `conn` and stops its link's tasks.
    pub(super) fn remove(&mut self, conn: ConnId) {
        if let Some(p) = self.peers.remove(&conn) {
            if self.by_id.get(&p.id) == Some(&conn) {
                self.by_id.remove(&p.id);
            }
            for t in p.tasks {
                t.abort();
            }
            self.count();
        }
    }

    /// Removes every peer and returns their links' tasks.
    pub(super) fn drain_tasks(&mut self) -> Vec<AbortHandle> {
        self.by_id.clear();
        self.peers.drain().flat_map(|(_, p)| p.tasks).collect()
    }

    fn count(&self) {
        self.stats
            .peers
            .store(self.peers.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn get(&self, conn: ConnId) -> Option<&Peer> {
        self.peers.get(&conn)
    }

    pub(super) fn get_mut(&mut self, conn: ConnId) -> Option<&mut Peer> {
        self.peers.get_mut(&conn)
    }

    /// The connection of the peer with node id `id`.
    pub(super) fn conn_of(&self, id: &Address) -> Option<ConnId> {
        self.by_id.get(id).copied()
    }

    /// Every connected peer but `except`.
    pub(super) fn conns_except(&self, except: Option<ConnId>) -> Vec<ConnId> {
        self.peers
            .keys()
            .copied()
            .filter(|c| Some(*c) != except)
            .collect()
    }

    /// Outbound links up.
    pub(super) fn outbound(&self) -> usize {
        self.peers.values().filter(|p| !p.inbound).count()
    }

    /// The addresses connected peers use and listen on (not to be dialed again).
    pub(super) fn addresses(&self) -> HashSet<SocketAddr> {
        self.peers
            .values()
            .flat_map(|p| [Some(p.addr), p.listen_addr])
            .flatten()
            .collect()
    }

    /// Encodes `msg` and queues it for peer `conn` (nothing if it is not connected).
    pub(super) fn send(&self, conn: ConnId, msg: &Message) -> Result<(), Stuck> {
        if self.peers.contains_key(&conn) {
            self.send_encoded(conn, Bytes::from(msg.encode()))
        } else {
            Ok(())
        }
    }

    /// Queues an encoded message for peer `conn` (nothing if it is not connected).
    /// Fails if the peer's queue is full, in messages or in [`MAX_QUEUED_BYTES`].
    pub(super) fn send_encoded(&self, conn: ConnId, bytes: Bytes) -> Result<(), Stuck> {
        let Some(p) = self.peers.get(&conn) else {
            return Ok(());
        };
        let len = bytes.len() as u64;
        let queued = p.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if queued > MAX_QUEUED_BYTES || p.queue.try_send(bytes).is_err() {
            tracing::warn!(peer = %p.id, "send queue full: peer too slow; disconnecting");
            return Err(Stuck);
        }
        p.bytes_out.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Lowers the score of peer `conn` for `offence`. At [`BAN_SCORE`] its id (and
    /// its IP, unless loopback) is banned and `true` returned: the caller disconnects
    /// it.
    pub(super) fn penalize(
        &mut self,
        conn: ConnId,
        offence: Offence,
        detail: &str,
        now: Instant,
    ) -> bool {
        let Some(p) = self.peers.get_mut(&conn) else {
            return false;
        };
        p.score -= offence.penalty();
        if p.score <= BAN_SCORE {
            let (id, addr) = (p.id, p.addr);
            tracing::warn!(peer = %id, %addr, reason = detail, ?offence, "banning peer");
            let until = now + self.ban_duration;
            self.banned.insert(id, until);
            if !addr.ip().is_loopback() {
                self.banned_ips.insert(addr.ip(), until);
            }
            self.stats.bans.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            tracing::debug!(peer = %p.id, reason = detail, score = p.score, "peer penalized");
            false
        }
    }

    /// Bans node id `id` of a peer that already left.
    pub(super) fn ban_id(&mut self, id: Address, now: Instant) {
        self.banned.insert(id, now + self.ban_duration);
        self.stats.bans.fetch_add(1, Ordering::Relaxed);
    }

    /// Raises the score of peer `conn`, up to [`MAX_SCORE`].
    pub(super) fn reward(&mut self, conn: ConnId, points: i64) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.score = (p.score + points).min(MAX_SCORE);
        }
    }

    /// Forgets bans that ended.
    pub(super) fn expire_bans(&mut self, now: Instant) {
        self.banned.retain(|_, t| *t > now);
        self.banned_ips.retain(|_, t| *t > now);
    }

    /// Peers that left a ping unanswered for [`PONG_TIMEOUT`] (a half-open link): to
    /// be disconnected.
    pub(super) fn silent(&self, now: Instant) -> Vec<ConnId> {
        let silent: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.ping_sent
                    .is_some_and(|(_, at)| now.duration_since(at) > PONG_TIMEOUT)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in &silent {
            if let Some(p) = self.peers.get(c) {
                tracing::info!(peer = %p.id, "no pong: disconnecting");
            }
        }
        silent
    }

    /// A ping for every peer, nonces derived from `salt`. A peer with a ping
    /// unanswered is sent that one again: the oldest is what the timeout measures.
    pub(super) fn pings(&mut self, now: Instant, salt: u64) -> Vec<(ConnId, Message)> {
        self.peers
            .iter_mut()
            .map(|(c, p)| {
                let n = salt.wrapping_mul(0x9e37_79b9) ^ c;
                let (n, _) = *p.ping_sent.get_or_insert((n, now));
                (*c, Message::Ping(n))
            })
            .collect()
    }

    /// Peer `conn` answered ping `n` at `now`.
    pub(super) fn on_pong(&mut self, conn: ConnId, n: u64, now: Instant) {
        if let Some(p) = self.peers.get_mut(&conn)
            && let Some((sent, at)) = p.ping_sent
            && sent == n
        {
            p.latency = Some(now.saturating_duration_since(at));
            p.ping_sent = None;
        }
    }

    /// Whether an address list from `conn` answers our `GetPeers` (taken once).
    pub(super) fn take_asked_peers(&mut self, conn: ConnId) -> bool {
        self.peers
            .get_mut(&conn)
            .is_some_and(|p| std::mem::take(&mut p.asked_peers))
    }

    /// The connected peers, for `getPeers`.
    pub(super) fn summaries(&self) -> Vec<PeerSummary> {
        self.peers
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
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected peer at `addr` (no link behind it: nothing is sent in these tests).
    fn peer(id: u8, addr: &str) -> Peer {
        let (queue, _) = mpsc::channel(1);
        Peer {
            id: Address([id; 32]),
            addr: addr.parse().expect("a socket address"),
            listen_addr: None,
            inbound: true,
            queue,
            queued: Arc::default(),
            score: 0,
            bytes_in: 0,
            bytes_out: Arc::default(),
            tasks: Vec::new(),
            ping_sent: None,
            latency: None,
            asked_peers: false,
        }
    }

    fn set() -> PeerSet {
        let cfg = NetConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            grapevine_ledger::Keypair::from_seed(&[1; 32]),
            1,
            grapevine_ledger::Hash::ZERO,
        );
        PeerSet::new(&cfg, Arc::default())
    }

    /// A peer banned for flooding is refused by id, and so is any new node key from
    /// the same address, except on loopback, where local networks share one address.
    #[test]
    fn a_ban_holds_against_a_fresh_key_from_the_same_address() {
        let now = Instant::now();
        let mut s = set();
        // A documentation address (RFC 5737): nothing is sent to it.
        s.insert(1, peer(1, "192.0.2.7:4000"));
        s.insert(2, peer(2, "127.0.0.1:4001"));
        let banned_after = |s: &mut PeerSet, conn| {
            (1..=20).find(|_| s.penalize(conn, Offence::Flood, "flood", now))
        };
        assert_eq!(
            banned_after(&mut s, 1),
            Some(10),
            "ten floods reach the ban score"
        );
        assert_eq!(banned_after(&mut s, 2), Some(10));
        assert_eq!(s.refusal(&Address([1; 32]), now), Some("peer is banned"));
        assert!(
            !s.admits("192.0.2.7:5999".parse().expect("an address"), now),
            "a new link from the banned address is refused before its handshake"
        );
        assert!(s.admits("198.51.100.1:4000".parse().expect("an address"), now));
        assert!(
            s.admits("127.0.0.1:5999".parse().expect("an address"), now),
            "loopback is not banned by address"
        );
        let later = now + Duration::from_secs(601);
        s.expire_bans(later);
        assert!(s.admits("192.0.2.7:5999".parse().expect("an address"), later));
    }
}
