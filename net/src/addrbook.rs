//! Known peer addresses with reconnect backoff, persisted as JSON in the node's home.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most addresses remembered.
const MAX_ENTRIES: usize = 2048;
/// First retry delay; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    next_attempt: Instant,
    connected_once: bool,
}

/// The address book. Not persisted when created without a path.
#[derive(Debug)]
pub struct AddressBook {
    entries: HashMap<SocketAddr, Entry>,
    path: Option<PathBuf>,
    rng: u64,
}

impl AddressBook {
    /// Loads the book from `path` if it exists (a JSON array of "ip:port" strings);
    /// unreadable content is logged and ignored.
    pub fn load(path: Option<PathBuf>) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let mut book = AddressBook {
            entries: HashMap::new(),
            path,
            rng: seed,
        };
        if let Some(p) = &book.path
            && let Ok(bytes) = std::fs::read(p)
        {
            match serde_json::from_slice::<Vec<String>>(&bytes) {
                Ok(list) => {
                    for a in list.iter().filter_map(|s| s.parse().ok()) {
                        book.add(a);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable address book")
                }
            }
        }
        book
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Between 75% and 125% of `d`, so peers that failed together do not retry together.
        let pct = 75 + (self.rng % 51);
        d * u32::try_from(pct).unwrap_or(100) / 100
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let d = BACKOFF_BASE
            .saturating_mul(1u32 << failures.min(16))
            .min(BACKOFF_MAX);
        self.jitter(d)
    }

    /// Remembers an address. When the book is full, an address never connected to with
    /// the most failures makes room; if every entry was good once, the new one is dropped.
    pub fn add(&mut self, a: SocketAddr) {
        if self.entries.contains_key(&a) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| !e.connected_once)
                .max_by_key(|(_, e)| e.failures)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    self.entries.remove(&v);
                }
                None => return,
            }
        }
        self.entries.insert(
            a,
            Entry {
                failures: 0,
                next_attempt: Instant::now(),
                connected_once: false,
            },
        );
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

    /// A dial to `a` failed: back off exponentially, with jitter.
    pub fn failed(&mut self, a: SocketAddr, now: Instant) {
        let failures = self.entries.get(&a).map_or(0, |e| e.failures) + 1;
        let wait = self.backoff(failures);
        if let Some(e) = self.entries.get_mut(&a) {
            e.failures = failures;
            e.next_attempt = now + wait;
        }
    }

    /// A peer listening at `a` is connected: a good address.
    pub fn connected(&mut self, a: SocketAddr) {
        self.add(a);
        if let Some(e) = self.entries.get_mut(&a) {
            e.failures = 0;
            e.connected_once = true;
        }
    }

    /// Up to `n` addresses due for a dial that pass `ok`, fewest failures first.
    pub fn candidates(
        &self,
        now: Instant,
        n: usize,
        ok: impl Fn(SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let mut due: Vec<(&SocketAddr, &Entry)> = self
            .entries
            .iter()
            .filter(|(a, e)| e.next_attempt <= now && ok(**a))
            .collect();
        due.sort_by_key(|(a, e)| (e.failures, **a));
        due.into_iter().take(n).map(|(a, _)| *a).collect()
    }

    /// Up to `n` addresses that were connected to at least once.
    pub fn good(&self, n: usize) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|(_, e)| e.connected_once)
            .map(|(a, _)| *a)
            .take(n)
            .collect()
    }

    /// Writes the book to its path, if any (atomically: temp file, then rename).
    pub fn save(&self) {
        let Some(p) = &self.path else {
            return;
        };
        let list: Vec<String> = self.entries.keys().map(ToString::to_string).collect();
        let tmp = p.with_extension("tmp");
        let result = serde_json::to_vec_pretty(&list)
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

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = AddressBook::load(None);
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        b.add(a);
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
            vec![a]
        );
        b.connected(a);
        assert_eq!(b.good(5), vec![a]);
    }

    #[test]
    fn a_full_book_evicts_never_connected_addresses_first() {
        let mut b = AddressBook::load(None);
        let good: SocketAddr = "10.0.0.1:1".parse().unwrap();
        b.connected(good);
        for i in 0..MAX_ENTRIES as u32 {
            b.add(SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 9)));
        }
        assert_eq!(b.entries.len(), MAX_ENTRIES);
        let newcomer: SocketAddr = "10.0.0.2:2".parse().unwrap();
        b.add(newcomer);
        assert_eq!(b.entries.len(), MAX_ENTRIES);
        assert!(b.entries.contains_key(&newcomer));
        assert!(
            b.entries.contains_key(&good),
            "a good address is never evicted"
        );
    }

    #[test]
    fn persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("peers.json");
        let mut b = AddressBook::load(Some(p.clone()));
        b.add("127.0.0.1:7000".parse().unwrap());
        b.save();
        let b2 = AddressBook::load(Some(p));
        assert_eq!(b2.candidates(Instant::now(), 5, |_| true).len(), 1);
    }
}
