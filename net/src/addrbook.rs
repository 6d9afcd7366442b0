//! Known peer addresses in two tables, as Bitcoin Core's address manager keeps them,
//! with reconnect backoff and random dial selection; persisted as JSON in the node's
//! home.
//!
//! - **new**: addresses heard of (in a `Peers` answer, or an inbound peer's own
//!   listen address), in buckets by the network group of the peer that told us
//!   ([`crate::netgroup`]): at most [`MAX_NEW_PER_SOURCE`] per bucket and [`MAX_NEW`]
//!   in all, so peers in one network can fill one bucket, not the table. A new address
//!   whose dial fails [`MAX_NEW_FAILURES`] times in a row is forgotten.
//! - **tried**: addresses this node dialed successfully, at most [`MAX_TRIED`]. Only a
//!   successful dial moves an address here, so no peer can put one there by talk.
//!
//! Bootstrap addresses are kept whatever happens to them. The book holds at most
//! `MAX_NEW + MAX_TRIED` (2,048) addresses besides them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::netgroup;

/// Most addresses in the new table.
pub const MAX_NEW: usize = 1024;
/// Most new addresses learned from peers of one network group: one full `Peers`
/// answer.
pub const MAX_NEW_PER_SOURCE: usize = 64;
/// Most addresses in the tried table.
pub const MAX_TRIED: usize = 1024;
/// A new address is forgotten after this many failed dials in a row (with backoff,
/// about 15 s of trying).
pub const MAX_NEW_FAILURES: u32 = 5;
/// First retry delay; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The bucket of a new address: the network group of the peer that told us of it.
/// Local peers (and addresses of the old file format, which did not record who told
/// us) share the bucket `None`.
type Source = Option<[u8; 7]>;

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    next_attempt: Instant,
    /// Dialed successfully: in the tried table.
    tried: bool,
    source: Source,
    /// From the node's config: never forgotten.
    bootstrap: bool,
    /// When it was added, in additions to the book: a smaller one is older.
    added: u64,
}

/// The file, version 2: both tables.
#[derive(Serialize, Deserialize)]
struct Saved {
    tried: Vec<String>,
    new: Vec<SavedNew>,
}

#[derive(Serialize, Deserialize)]
struct SavedNew {
    addr: String,
    source: Source,
}

/// The address book. Not persisted when created without a path.
#[derive(Debug)]
pub struct AddressBook {
    entries: HashMap<SocketAddr, Entry>,
    path: Option<PathBuf>,
    rng: u64,
    added: u64,
}

impl AddressBook {
    /// Loads the book from `path` if it exists: the current format (an object with
    /// `tried` and `new` tables) or the old one (a JSON array of "ip:port" strings,
    /// read into the new table). Unreadable content is logged and ignored.
    pub fn load(path: Option<PathBuf>) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self::load_seeded(path, seed)
    }

    /// [`AddressBook::load`] with the random choices of dials and answers seeded by
    /// `seed` (a test can repeat them).
    pub fn load_seeded(path: Option<PathBuf>, seed: u64) -> Self {
        let mut book = AddressBook {
            entries: HashMap::new(),
            path,
            // Xorshift must not start at zero.
            rng: seed | 1,
            added: 0,
        };
        let Some(p) = book.path.clone() else {
            return book;
        };
        let Ok(bytes) = std::fs::read(&p) else {
            return book;
        };
        if let Ok(saved) = serde_json::from_slice::<Saved>(&bytes) {
            for a in saved.tried.iter().filter_map(|s| s.parse().ok()) {
                book.connected(a);
            }
            for n in saved.new {
                if let Ok(a) = n.addr.parse() {
                    book.add_to_new(a, n.source);
                }
            }
        } else {
            match serde_json::from_slice::<Vec<String>>(&bytes) {
                Ok(list) => {
                    for a in list.iter().filter_map(|s| s.parse().ok()) {
                        book.add_to_new(a, None);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable address book")
                }
            }
        }
        book
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // Between 75% and 125% of `d`, so peers that failed together do not retry together.
        let pct = 75 + (self.next_random() % 51);
        d * u32::try_from(pct).unwrap_or(100) / 100
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let d = BACKOFF_BASE
            .saturating_mul(1u32 << failures.min(16))
            .min(BACKOFF_MAX);
        self.jitter(d)
    }

    fn entry(&mut self, source: Source, tried: bool) -> Entry {
        self.added += 1;
        Entry {
            failures: 0,
            next_attempt: Instant::now(),
            tried,
            source,
            bootstrap: false,
            added: self.added,
        }
    }

    /// Remembers a bootstrap address: dialed like the others, never forgotten.
    pub fn add_bootstrap(&mut self, a: SocketAddr) {
        if !self.entries.contains_key(&a) {
            let e = self.entry(None, false);
            self.entries.insert(a, e);
        }
        if let Some(e) = self.entries.get_mut(&a) {
            e.bootstrap = true;
        }
    }

    /// Remembers address `a` that the peer at `source` told us of, in the new table
    /// (nothing if it is known). A full bucket of that source's group makes room by
    /// forgetting its worst address (most failures, then oldest); a full table, the
    /// worst of its largest bucket.
    pub fn add(&mut self, a: SocketAddr, source: IpAddr) {
        self.add_to_new(a, netgroup::group(source));
    }

    fn add_to_new(&mut self, a: SocketAddr, source: Source) {
        if self.entries.contains_key(&a) {
            return;
        }
        let mut buckets: HashMap<Source, usize> = HashMap::new();
        for e in self.entries.values().filter(|e| !e.tried && !e.bootstrap) {
            *buckets.entry(e.source).or_default() += 1;
        }
        let total: usize = buckets.values().sum();
        let bucket = if buckets.get(&source).copied().unwrap_or(0) >= MAX_NEW_PER_SOURCE {
            Some(source)
        } else if total >= MAX_NEW {
            // Ties go to the smaller key, so the choice does not follow a hash map.
            buckets
                .iter()
                .max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s)))
                .map(|(s, _)| *s)
        } else {
            None
        };
        if let Some(full) = bucket {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| !e.tried && !e.bootstrap && e.source == full)
                .max_by_key(|(_, e)| (e.failures, std::cmp::Reverse(e.added)))
                .map(|(a, _)| *a);
            if let Some(v) = victim {
                self.entries.remove(&v);
            }
        }
        let e = self.entry(source, false);
        self.entries.insert(a, e);
    }

    /// Forgets an address (for example, our own).
    pub fn forget(&mut self, a: SocketAddr) {
        self.entries.remove(&a);
    }

    /// A dial to `a` started: no other until it ends or its backoff passes.
    pub fn attempted(&mut self, a: SocketAddr, now: Instant) {
        let failures = self.entries.get(&a).map_or(0, |e| e.failures);
        let wait = self.backoff(failures);
        if let Some(e) = self.entries.get_mut(&a) {
            e.next_attempt = now + wait;
        }
    }

    /// A dial to `a` failed: back off exponentially, with jitter. A new (never
    /// dialed successfully) address that failed [`MAX_NEW_FAILURES`] times in a row is
    /// forgotten.
    pub fn failed(&mut self, a: SocketAddr, now: Instant) {
        let Some(e) = self.entries.get(&a) else {
            return;
        };
        let failures = e.failures + 1;
        if !e.tried && !e.bootstrap && failures >= MAX_NEW_FAILURES {
            self.entries.remove(&a);
            return;
        }
        let wait = self.backoff(failures);
        if let Some(e) = self.entries.get_mut(&a) {
            e.failures = failures;
            e.next_attempt = now + wait;
        }
    }

    /// A dial to `a` succeeded: it moves to the tried table. A full table makes room
    /// by forgetting its address with the most failures (then the oldest).
    pub fn connected(&mut self, a: SocketAddr) {
        let known_tried = self.entries.get(&a).is_some_and(|e| e.tried);
        if !known_tried && self.entries.values().filter(|e| e.tried).count() >= MAX_TRIED {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| e.tried && !e.bootstrap)
                .max_by_key(|(_, e)| (e.failures, std::cmp::Reverse(e.added)))
                .map(|(a, _)| *a);
            if let Some(v) = victim {
                self.entries.remove(&v);
            }
        }
        if !self.entries.contains_key(&a) {
            let e = self.entry(None, true);
            self.entries.insert(a, e);
        }
        if let Some(e) = self.entries.get_mut(&a) {
            e.failures = 0;
            e.tried = true;
        }
    }

    /// Up to `n` addresses due for a dial that pass `ok`, picked at random, tried
    /// addresses four times as likely as new ones and each failure in a row halving
    /// the odds (down to a sixteenth), at most one per network group (local addresses
    /// have none). A fixed order would let an attacker who knows the book's contents
    /// predict, and occupy, every dial.
    pub fn candidates(
        &mut self,
        now: Instant,
        n: usize,
        ok: impl Fn(SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let mut due: Vec<(SocketAddr, u64)> = self
            .entries
            .iter()
            .filter(|(a, e)| e.next_attempt <= now && ok(**a))
            .map(|(a, e)| {
                let base: u64 = if e.tried { 64 } else { 16 };
                (*a, (base >> e.failures.min(4)).max(1))
            })
            .collect();
        // The same seed picks the same addresses, whatever the hash map's order.
        due.sort_unstable();
        let mut picked = Vec::new();
        while picked.len() < n && !due.is_empty() {
            let total: u64 = due.iter().map(|(_, w)| w).sum();
            let mut r = self.next_random() % total;
            let i = due
                .iter()
                .position(|(_, w)| {
                    let hit = r < *w;
                    r = r.saturating_sub(*w);
                    hit
                })
                .unwrap_or(due.len() - 1);
            let (a, _) = due.swap_remove(i);
            if let Some(g) = netgroup::group(a.ip()) {
                due.retain(|(b, _)| netgroup::group(b.ip()) != Some(g));
            }
            picked.push(a);
        }
        picked
    }

    /// Up to `n` addresses to tell a peer of, at random: tried ones first, then new
    /// ones (a node whose only peers dialed it has tried none yet).
    pub fn good(&mut self, n: usize) -> Vec<SocketAddr> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut new: Vec<SocketAddr> = Vec::new();
        for (a, e) in &self.entries {
            let list = if e.tried { &mut tried } else { &mut new };
            list.push(*a);
        }
        tried.sort_unstable();
        new.sort_unstable();
        let mut out = Vec::new();
        for mut list in [tried, new] {
            while out.len() < n && !list.is_empty() {
                let i = (self.next_random() % list.len() as u64) as usize;
                out.push(list.swap_remove(i));
            }
        }
        out
    }

    /// Writes the book to its path, if any (atomically: temp file, then rename).
    pub fn save(&self) {
        let Some(p) = &self.path else {
            return;
        };
        let mut saved = Saved {
            tried: Vec::new(),
            new: Vec::new(),
        };
        for (a, e) in &self.entries {
            if e.tried {
                saved.tried.push(a.to_string());
            } else {
                saved.new.push(SavedNew {
                    addr: a.to_string(),
                    source: e.source,
                });
            }
        }
        let tmp = p.with_extension("tmp");
        let result = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = result {
            tracing::warn!(path = %p.display(), error = %e, "cannot save the address book");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = AddressBook::load(None);
        let a = sa("127.0.0.1:9");
        b.add_bootstrap(a);
        let t0 = Instant::now();
        assert_eq!(b.candidates(t0, 5, |_| true), vec![a]);
        b.failed(a, t0);
        assert!(b.candidates(t0, 5, |_| true).is_empty());
        assert_eq!(
            b.candidates(t0 + Duration::from_secs(2), 5, |_| true),
            vec![a]
        );
        for _ in 0..10 {
            b.failed(a, t0);
        }
        assert!(
            b.candidates(t0 + Duration::from_secs(40), 5, |_| true)
                .is_empty()
        );
        assert_eq!(
            b.candidates(t0 + Duration::from_secs(80), 5, |_| true),
            vec![a],
            "a bootstrap address is never forgotten"
        );
        b.connected(a);
        assert_eq!(b.good(5), vec![a]);
    }

    /// Dials are picked at random (the old book always took the lowest address of
    /// those with the fewest failures), evenly among equals, tried ones more often.
    #[test]
    fn candidates_are_random_and_prefer_tried_addresses() {
        let addrs: Vec<SocketAddr> = (1..=10u8)
            .map(|i| SocketAddr::from(([198, i, 0, 1], 4000)))
            .collect();
        let mut firsts: HashMap<SocketAddr, u32> = HashMap::new();
        for seed in 0..1000u64 {
            let mut b = AddressBook::load_seeded(None, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for a in &addrs {
                b.add(*a, ip("203.0.113.1"));
            }
            let first = b.candidates(Instant::now(), 1, |_| true);
            *firsts.entry(first[0]).or_default() += 1;
        }
        for a in &addrs {
            let n = firsts.get(a).copied().unwrap_or(0);
            assert!((50..=150).contains(&n), "{a} first {n} times in 1,000");
        }

        let mut tried_first = 0;
        for seed in 0..1000u64 {
            let mut b = AddressBook::load_seeded(None, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for a in &addrs {
                b.add(*a, ip("203.0.113.1"));
            }
            b.connected(addrs[9]);
            let first = b.candidates(Instant::now(), 1, |_| true);
            tried_first += u32::from(first[0] == addrs[9]);
        }
        // Odds 4 in 13.
        assert!((230..=390).contains(&tried_first), "{tried_first}");
    }

    #[test]
    fn candidates_hold_at_most_one_address_per_network_group_except_local_ones() {
        let mut b = AddressBook::load(None);
        for i in 0..5u8 {
            b.add(SocketAddr::from(([203, 0, i, 1], 4000)), ip("198.51.100.1"));
            b.add(
                SocketAddr::from(([127, 0, 0, 1], 5000 + u16::from(i))),
                ip("127.0.0.1"),
            );
        }
        b.add(sa("[2001:db8:1::1]:1"), ip("198.51.100.1"));
        b.add(sa("[2001:db8:1:2::1]:1"), ip("198.51.100.1"));
        let picked = b.candidates(Instant::now(), 20, |_| true);
        assert_eq!(picked.len(), 1 + 5 + 1, "{picked:?}");
        assert_eq!(picked.iter().filter(|a| a.ip().is_loopback()).count(), 5);
    }

    /// The new table holds at most 64 addresses from one source group and 1,024 in
    /// all, forgetting the oldest of the fullest bucket; tried addresses are not
    /// touched by it; a new address that keeps failing is forgotten.
    #[test]
    fn the_new_table_is_bounded_per_source_and_in_all() {
        let mut b = AddressBook::load(None);
        let good = sa("192.0.2.1:1");
        b.connected(good);
        let heard = |i: u32| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9));
        for i in 0..200 {
            b.add(heard(i), ip("203.0.113.1"));
        }
        let from = |b: &AddressBook, g| {
            b.entries
                .values()
                .filter(|e| !e.tried && e.source == netgroup::group(ip(g)))
                .count()
        };
        assert_eq!(from(&b, "203.0.113.1"), MAX_NEW_PER_SOURCE);
        assert!(b.entries.contains_key(&heard(199)) && !b.entries.contains_key(&heard(0)));
        // Many sources, each within its bucket: the table's bound holds.
        for s in 0..40u32 {
            let source = IpAddr::from([198, s as u8, 0, 1]);
            for i in 0..50 {
                b.add(heard(1000 + s * 100 + i), source);
            }
        }
        let new = b.entries.values().filter(|e| !e.tried).count();
        assert_eq!(new, MAX_NEW);
        assert!(
            from(&b, "203.0.113.1") < MAX_NEW_PER_SOURCE,
            "the fullest bucket gave way"
        );
        assert!(b.entries.contains_key(&good), "a tried address stays");

        let t0 = Instant::now();
        let flaky = heard(1000 + 39 * 100 + 49);
        assert!(b.entries.contains_key(&flaky), "the latest address is kept");
        for _ in 0..MAX_NEW_FAILURES {
            b.failed(flaky, t0);
        }
        assert!(
            !b.entries.contains_key(&flaky),
            "failed dials forget a new address"
        );
        for _ in 0..MAX_NEW_FAILURES * 2 {
            b.failed(good, t0);
        }
        assert!(b.entries.contains_key(&good), "a tried one stays");
    }

    #[test]
    fn the_tried_table_is_bounded() {
        let mut b = AddressBook::load(None);
        for i in 0..(MAX_TRIED as u32 + 10) {
            b.connected(SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 9)));
        }
        assert_eq!(b.entries.len(), MAX_TRIED);
    }

    #[test]
    fn persists_both_tables_and_reads_the_old_format() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let p = dir.path().join("peers.json");
        let mut b = AddressBook::load(Some(p.clone()));
        b.add(sa("198.51.100.7:7000"), ip("203.0.113.1"));
        b.connected(sa("192.0.2.1:7001"));
        b.save();
        let b2 = AddressBook::load(Some(p.clone()));
        let e = &b2.entries[&sa("198.51.100.7:7000")];
        assert!(!e.tried && e.source == netgroup::group(ip("203.0.113.1")));
        assert!(b2.entries[&sa("192.0.2.1:7001")].tried);

        std::fs::write(&p, br#"["127.0.0.1:7000", "not an address"]"#).expect("written");
        let old = AddressBook::load(Some(p.clone()));
        assert_eq!(old.entries.len(), 1);
        assert!(!old.entries[&sa("127.0.0.1:7000")].tried);

        std::fs::write(&p, b"{ garbage").expect("written");
        assert!(AddressBook::load(Some(p)).entries.is_empty());
    }
}
