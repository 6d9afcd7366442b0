//! The peer set: connected peers with their send queues, scores and pings; the limits
//! on inbound links per IP address, per network group and in all (links still in their
//! handshake count too), and which inbound peer to evict when all inbound slots are
//! taken; bans by node id and by IP address. Sending to a peer never waits: a peer
//! whose queue is full is reported stuck, and the actor disconnects it.

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
use crate::netgroup;

/// Bytes queued for one peer before it counts as stuck and is dropped.
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// A peer that leaves a ping unanswered this long is disconnected.
const PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// A peer's `GetPeers` is answered at most this often; an honest peer asks once per
/// link.
pub(super) const GET_PEERS_INTERVAL: Duration = Duration::from_secs(60);
/// When every inbound slot is taken, the inbound peers with the lowest latency are
/// safe from eviction (an attacker must be close to the node to take their place)...
const PROTECT_BY_LATENCY: usize = 4;
/// ...and those with the highest score (those that delivered valid transactions)...
const PROTECT_BY_SCORE: usize = 4;
/// ...and then this share of the rest (in percent), those connected longest.
const PROTECT_LONGEST_PERCENT: usize = 50;

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
    /// When the link came up.
    pub(super) connected_at: Instant,
    /// When we last answered its `GetPeers`.
    pub(super) answered_get_peers: Option<Instant>,
}

/// What to do with a link accepted from an address, before its handshake.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Start the handshake.
    Admit,
    /// Start the handshake once this inbound peer is disconnected (every inbound slot
    /// is taken).
    Evict(ConnId),
    /// Close it, for this reason.
    Refuse(&'static str),
}

/// A peer's send queue is full: it reads too slowly, or not at all.
#[derive(Debug)]
pub(super) struct Stuck;

/// The connected peers, links in their handshake, and bans.
pub(super) struct PeerSet {
    stats: Arc<NetStats>,
    max_inbound: usize,
    max_per_ip: usize,
    max_inbound_per_group: usize,
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
            max_inbound_per_group: cfg.max_inbound_per_group,
            ban_duration: cfg.ban_duration,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            pending_inbound: HashMap::new(),
            banned: HashMap::new(),
            banned_ips: HashMap::new(),
        }
    }

    /// Whether a link accepted from `addr` may start its handshake: not if its IP is
    /// banned, or the limit of links per IP or of inbound links per network group
    /// ([`netgroup::group`]; none for local addresses) is reached. When every inbound
    /// slot is taken, an inbound peer to evict for it, if one is not protected (see
    /// [`PeerSet::eviction_candidate`]).
    pub(super) fn admits(&self, addr: SocketAddr, now: Instant) -> Admission {
        let ip = addr.ip();
        if self.banned_ips.get(&ip).is_some_and(|t| *t > now) {
            return Admission::Refuse("address is banned");
        }
        // Links still in their handshake count too, so half-open ones cannot pile up.
        let inbound_ips = || {
            self.peers
                .values()
                .filter(|p| p.inbound)
                .map(|p| p.addr.ip())
                .chain(self.pending_inbound.values().copied())
        };
        let from_ip = self.peers.values().filter(|p| p.addr.ip() == ip).count()
            + self.pending_inbound.values().filter(|i| **i == ip).count();
        if from_ip >= self.max_per_ip {
            return Admission::Refuse("limit of links per IP address reached");
        }
        if let Some(g) = netgroup::group(ip) {
            let from_group = inbound_ips()
                .filter(|i| netgroup::group(*i) == Some(g))
                .count();
            if from_group >= self.max_inbound_per_group {
                return Admission::Refuse("limit of inbound links per network group reached");
            }
        }
        if inbound_ips().count() < self.max_inbound {
            return Admission::Admit;
        }
        match self.eviction_candidate() {
            Some(c) => Admission::Evict(c),
            None => Admission::Refuse("inbound slots full, every inbound peer protected"),
        }
    }

    /// The inbound peer to disconnect for a new inbound link, as Bitcoin Core picks
    /// it: protected are the [`PROTECT_BY_LATENCY`] with the lowest latency, the
    /// [`PROTECT_BY_SCORE`] with the highest score, and [`PROTECT_LONGEST_PERCENT`]% of
    /// the rest, those connected longest; of the others, the most recently connected
    /// peer of the network group with the most of them (a local address is a group of
    /// its own). An attacker must beat honest peers at all three to take their slots,
    /// and its own links, crowded in few groups, go first.
    pub(super) fn eviction_candidate(&self) -> Option<ConnId> {
        let mut left: Vec<(ConnId, &Peer)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.inbound)
            .map(|(c, p)| (*c, p))
            .collect();
        // Ties go to the older link (lower id), so the choice does not depend on the
        // order of a hash map.
        left.sort_by_key(|(c, p)| (p.latency.unwrap_or(Duration::MAX), *c));
        left.drain(..PROTECT_BY_LATENCY.min(left.len()));
        left.sort_by_key(|(c, p)| (std::cmp::Reverse(p.score), *c));
        left.drain(..PROTECT_BY_SCORE.min(left.len()));
        left.sort_by_key(|(c, p)| (p.connected_at, *c));
        left.drain(..left.len() * PROTECT_LONGEST_PERCENT / 100);
        let group_key = |p: &Peer| match netgroup::group(p.addr.ip()) {
            Some(g) => (Some(g), None),
            None => (None, Some(p.addr.ip())),
        };
        let mut sizes: HashMap<_, usize> = HashMap::new();
        for (_, p) in &left {
            *sizes.entry(group_key(p)).or_default() += 1;
        }
        // The largest group; of its peers, the youngest (ties: the newest link).
        left.iter()
            .max_by_key(|(c, p)| (sizes[&group_key(p)], p.connected_at, *c))
            .map(|(c, _)| *c)
    }

    /// The network groups of the outbound peers (local addresses have none).
    pub(super) fn outbound_groups(&self) -> HashSet<[u8; 7]> {
        self.peers
            .values()
            .filter(|p| !p.inbound)
            .filter_map(|p| netgroup::group(p.addr.ip()))
            .collect()
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

    /// The addresses connected peers use and listen on (not to be dialed again). A
    /// listen address on another IP than the peer's is only its claim: left out, so
    /// that a peer cannot keep this node from dialing an address by claiming it (a
    /// second link to the same node is refused at the handshake anyway).
    pub(super) fn addresses(&self) -> HashSet<SocketAddr> {
        self.peers
            .values()
            .flat_map(|p| {
                [
                    Some(p.addr),
                    p.listen_addr.filter(|l| l.ip() == p.addr.ip()),
                ]
            })
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

    /// Bans node id `id` of a peer that already left, and its IP `ip` unless
    /// loopback, as [`PeerSet::penalize`] does.
    pub(super) fn ban_left(&mut self, id: Address, ip: IpAddr, now: Instant) {
        let until = now + self.ban_duration;
        self.banned.insert(id, until);
        if !ip.is_loopback() {
            self.banned_ips.insert(ip, until);
        }
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

    /// Whether to answer peer `conn`'s `GetPeers` at `now`: not within
    /// [`GET_PEERS_INTERVAL`] of the last answer (the caller ignores and penalizes it).
    pub(super) fn may_answer_get_peers(&mut self, conn: ConnId, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&conn) else {
            return false;
        };
        if p.answered_get_peers
            .is_some_and(|t| now.saturating_duration_since(t) < GET_PEERS_INTERVAL)
        {
            return false;
        }
        p.answered_get_peers = Some(now);
        true
    }

    /// The connected peers, for `getPeers`.
    pub(super) fn summaries(&self) -> Vec<PeerSummary> {
        self.peers
            .values()
            .map(|p| PeerSummary {
                id: p.id,
                address: p.addr,
                listen_address: p.listen_addr,
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
            connected_at: Instant::now(),
            answered_get_peers: None,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    fn admitted(s: &PeerSet, a: &str) -> bool {
        s.admits(addr(a), Instant::now()) == Admission::Admit
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
            !admitted(&s, "192.0.2.7:5999"),
            "a new link from the banned address is refused before its handshake"
        );
        assert!(admitted(&s, "198.51.100.1:4000"));
        assert!(
            admitted(&s, "127.0.0.1:5999"),
            "loopback is not banned by address"
        );
        let later = now + Duration::from_secs(601);
        s.expire_bans(later);
        assert_eq!(s.admits(addr("192.0.2.7:5999"), later), Admission::Admit);

        // A peer whose invalid transactions are judged after it left is banned by
        // address too.
        s.ban_left(Address([3; 32]), addr("203.0.113.5:1").ip(), later);
        assert_eq!(s.refusal(&Address([3; 32]), later), Some("peer is banned"));
        assert_ne!(s.admits(addr("203.0.113.5:2"), later), Admission::Admit);
        s.ban_left(Address([4; 32]), addr("127.0.0.1:1").ip(), later);
        assert_eq!(s.admits(addr("127.0.0.1:2"), later), Admission::Admit);
    }

    /// Inbound links per IPv4 /16 and IPv6 /48 are capped (8 by default), on top of
    /// the cap per IP; handshaking links count; local addresses only have the cap per
    /// IP.
    #[test]
    fn inbound_links_are_capped_per_network_group() {
        let mut s = set();
        s.max_per_ip = 64;
        s.max_inbound = 64;
        for i in 0..8u8 {
            assert!(admitted(&s, &format!("203.0.{i}.1:4000")));
            if i % 2 == 0 {
                s.insert(u64::from(i), peer(i, &format!("203.0.{i}.1:4000")));
            } else {
                s.handshaking(u64::from(i), addr(&format!("203.0.{i}.1:4000")).ip());
            }
        }
        assert_eq!(
            s.admits(addr("203.0.99.9:4000"), Instant::now()),
            Admission::Refuse("limit of inbound links per network group reached")
        );
        assert!(admitted(&s, "203.1.0.1:4000"), "another /16");
        for i in 0..8u8 {
            let a = format!("[2001:db8:1:{i}::1]:4000");
            assert!(admitted(&s, &a));
            s.insert(100 + u64::from(i), peer(100 + i, &a));
        }
        assert!(!admitted(&s, "[2001:db8:1:ffff::2]:4000"), "the same /48");
        assert!(admitted(&s, "[2001:db8:2::1]:4000"), "another /48");
        for i in 0..20u8 {
            s.insert(200 + u64::from(i), peer(200 + i, "127.0.0.1:4000"));
        }
        assert!(admitted(&s, "127.0.0.1:4001"), "loopback has no group cap");
        // An outbound link does not count toward the inbound cap of its group.
        let mut s = set();
        for i in 0..8u8 {
            let mut p = peer(i, &format!("198.51.{i}.1:4000"));
            p.inbound = false;
            s.insert(u64::from(i), p);
        }
        assert!(admitted(&s, "198.51.100.1:4000"));
        assert_eq!(s.outbound_groups().len(), 1);
    }

    /// With every inbound slot taken, a new link evicts the youngest peer of the most
    /// crowded group, never one with low latency, a high score or a long connection.
    #[test]
    fn a_full_set_evicts_from_the_most_crowded_group_and_protects_the_best() {
        let mut s = set();
        s.max_inbound = 24;
        let t0 = Instant::now();
        let mut conn = 0u64;
        let mut add = |s: &mut PeerSet, a: String, age: u64, tune: &dyn Fn(&mut Peer)| {
            conn += 1;
            let mut p = peer(conn as u8, &a);
            p.connected_at = t0 + Duration::from_secs(age);
            tune(&mut p);
            s.insert(conn, p);
            conn
        };
        // 4 fast, 4 high-scoring, 8 old honest peers in distinct groups (conns 1-16)...
        for i in 0..4u8 {
            add(&mut s, format!("198.{i}.0.1:1"), 100, &|p| {
                p.latency = Some(Duration::from_millis(5))
            });
        }
        for i in 4..8u8 {
            add(&mut s, format!("198.{i}.0.1:1"), 100, &|p| p.score = 80);
        }
        for i in 8..16u8 {
            add(&mut s, format!("198.{i}.0.1:1"), u64::from(i), &|_| {});
        }
        // ...and 8 attacker links, new, from 2 groups of 5 and 3 (conns 17-24).
        let mut attacker = Vec::new();
        for i in 0..8u8 {
            let g = if i < 5 { 1 } else { 2 };
            attacker.push(add(
                &mut s,
                format!("203.{g}.{i}.1:1"),
                200 + u64::from(i),
                &|_| {},
            ));
        }
        let evicted = match s.admits(addr("192.0.2.1:1"), t0) {
            Admission::Evict(c) => c,
            other => panic!("expected an eviction, got {other:?}"),
        };
        assert_eq!(
            evicted, attacker[4],
            "the youngest of the largest group (203.1/16, five links)"
        );
        // Protection holds: 16 honest peers are never the candidate while attacker
        // links remain.
        for _ in &attacker {
            let victim = s.eviction_candidate().expect("a candidate");
            assert!(attacker.contains(&victim), "honest peer {victim} evicted");
            s.remove(victim);
        }
        // Too few unprotected peers: refused rather than evicting a protected one.
        let mut s = set();
        s.max_inbound = 4;
        for i in 0..4u8 {
            s.insert(u64::from(i), peer(i, &format!("198.{i}.0.1:1")));
        }
        assert!(matches!(
            s.admits(addr("192.0.2.1:1"), t0),
            Admission::Refuse(_)
        ));
    }

    /// `GetPeers` is answered once a minute per peer.
    #[test]
    fn get_peers_is_answered_once_a_minute() {
        let mut s = set();
        s.insert(1, peer(1, "192.0.2.7:4000"));
        let t0 = Instant::now();
        assert!(s.may_answer_get_peers(1, t0));
        assert!(!s.may_answer_get_peers(1, t0 + Duration::from_secs(59)));
        assert!(s.may_answer_get_peers(1, t0 + GET_PEERS_INTERVAL));
        assert!(!s.may_answer_get_peers(2, t0), "not connected");
    }
}
