//! Admission, shared by HTTP and WebSocket: which client a request counts against, the
//! per-client rate limiter (charged per call, its table pruned as it goes), WebSocket
//! connection slots, and the `Origin` and `Content-Type` checks that keep web pages
//! from driving a node through a visitor's browser.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// The key a client's requests count against: its IPv4 address, or the /64 prefix of
/// its IPv6 address. One IPv6 host is routinely given a whole /64, so keying by full
/// address would let it take a fresh rate limit and WebSocket quota per request.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(s))
            }
        },
    }
}

/// Why the rate limiter refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateRefusal {
    /// Over the rate: retry after this long.
    Wait(Duration),
    /// More calls at once than the burst allows: no wait makes it fit.
    NeverFits {
        /// The burst.
        burst: u32,
    },
}

impl RateRefusal {
    /// A message a person can act on.
    pub(crate) fn message(self, calls: u32) -> String {
        match self {
            RateRefusal::Wait(_) => "rate limit exceeded; retry later".into(),
            RateRefusal::NeverFits { burst } => format!(
                "rate limit exceeded: {calls} calls at once is more than this node allows a \
                 client in a burst ({burst}); split the batch"
            ),
        }
    }
}

/// Charges between two prunings of the limiter's table.
const PRUNE_EVERY: u64 = 4096;

/// A token bucket per client key: each JSON-RPC call takes one token, over HTTP or
/// WebSocket alike. Every [`PRUNE_EVERY`] charges it drops the keys whose bucket is
/// full again (indistinguishable from a client never seen), so the table holds the
/// clients of the last few seconds, not every address that ever connected, and no
/// background task is needed.
pub(crate) struct ClientLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    burst: NonZeroU32,
    charges: AtomicU64,
    prune_every: u64,
}

impl ClientLimiter {
    /// A limiter allowing `rate` calls per second per client with bursts of `burst`
    /// (at least `rate`); `None` when `rate` is 0 (no limit).
    pub(crate) fn new(rate: u32, burst: u32) -> Option<Self> {
        Self::with_clock(rate, burst, DefaultClock::default(), PRUNE_EVERY)
    }
}

impl<C: Clock + Clone> ClientLimiter<C> {
    fn with_clock(rate: u32, burst: u32, clock: C, prune_every: u64) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
        Some(ClientLimiter {
            limiter: RateLimiter::dashmap_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            ),
            clock,
            burst,
            charges: AtomicU64::new(0),
            prune_every,
        })
    }

    /// Takes `calls` tokens (at least one) from `ip`'s bucket, all or none.
    pub(crate) fn charge(&self, ip: IpAddr, calls: u32) -> Result<(), RateRefusal> {
        if self.charges.fetch_add(1, Ordering::Relaxed) % self.prune_every == self.prune_every - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(calls).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(&client_key(ip), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateRefusal::Wait(
                not_until.wait_time_from(self.clock.now()),
            )),
            Err(_) => Err(RateRefusal::NeverFits {
                burst: self.burst.get(),
            }),
        }
    }
}

impl<C: Clock> std::fmt::Debug for ClientLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("clients", &self.limiter.len())
            .field("burst", &self.burst)
            .finish()
    }
}

/// Why a WebSocket connection was refused before its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefusal {
    /// The node holds its most connections.
    Total(usize),
    /// This client holds its most connections.
    PerClient(usize),
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Counts open WebSocket connections, in total and per client key.
#[derive(Debug)]
pub(crate) struct WsSlots {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<SlotCounts>,
}

/// One open WebSocket connection; dropping it frees its slot.
#[derive(Debug)]
pub(crate) struct WsSlot {
    slots: Arc<WsSlots>,
    key: Option<IpAddr>,
}

impl WsSlots {
    /// Room for `max_total` connections, `max_per_client` from one client key.
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(WsSlots {
            max_total,
            max_per_client,
            counts: Mutex::new(SlotCounts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, SlotCounts> {
        // The counts stay consistent even if a holder panicked: each update is one step.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip` (unknown when served without client
    /// addresses: then only the total applies).
    pub(crate) fn take(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<WsSlot, SlotRefusal> {
        let key = ip.map(client_key);
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(SlotRefusal::Total(self.max_total));
        }
        if let Some(k) = key {
            let n = c.per_client.entry(k).or_insert(0);
            if *n >= self.max_per_client {
                return Err(SlotRefusal::PerClient(self.max_per_client));
            }
            *n += 1;
        }
        c.total += 1;
        Ok(WsSlot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut c = self.slots.counts();
        c.total -= 1;
        if let Some(k) = self.key
            && let Some(n) = c.per_client.get_mut(&k)
        {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&k);
            }
        }
    }
}

/// Whether a POST body is declared JSON (`application/json`, parameters such as
/// `; charset=utf-8` allowed). Requiring it is what stops a web page from posting
/// JSON-RPC to a node on its visitor's machine: a browser sends a cross-origin
/// `text/plain` or form POST without asking, but an `application/json` one only after a
/// CORS preflight, which this node answers for no origin unless configured to.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether a WebSocket handshake may proceed. Browsers attach `Origin` to every
/// handshake and let any page open a socket to any host (WebSockets have no CORS), so
/// this check is the only thing between a page and a node on its visitor's machine.
/// Allowed: no `Origin` (not a browser), an `Origin` naming the host the request was
/// sent to (the node's own explorer), or one listed in `allowed` (`*`: any).
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Whether a request's `Host` names one of `allowed` (`*`: any), port aside. A request
/// without `Host` (not a browser) is allowed.
pub(crate) fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    allowed.iter().any(|a| {
        a == "*"
            || a.trim_matches(|c| c == '[' || c == ']')
                .eq_ignore_ascii_case(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_count_by_their_64_prefix() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    /// The table forgets clients whose bucket has refilled, by itself, as charges come.
    #[test]
    fn the_limiter_table_is_pruned() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::with_clock(1, 1, clock.clone(), 10).unwrap();
        for i in 0..100u8 {
            assert_eq!(l.charge(ip(&format!("10.0.0.{i}")), 1), Ok(()));
        }
        assert_eq!(l.limiter.len(), 100, "recent clients are kept");
        clock.advance(Duration::from_secs(2));
        for _ in 0..10 {
            let _ = l.charge(ip("10.9.9.9"), 1);
        }
        assert_eq!(l.limiter.len(), 1, "only the client still charging remains");
    }

    #[test]
    fn a_charge_takes_one_token_per_call() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::with_clock(1, 5, clock.clone(), PRUNE_EVERY).unwrap();
        let a = ip("10.0.0.1");
        assert_eq!(l.charge(a, 3), Ok(()));
        assert!(matches!(l.charge(a, 3), Err(RateRefusal::Wait(_))));
        assert_eq!(l.charge(a, 2), Ok(()));
        assert_eq!(
            l.charge(ip("10.0.0.2"), 6),
            Err(RateRefusal::NeverFits { burst: 5 })
        );
    }

    #[test]
    fn slots_are_capped_per_client_and_in_total_and_freed_on_drop() {
        let s = WsSlots::new(3, 2);
        let a = Some(ip("10.0.0.1"));
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(a).unwrap();
        assert_eq!(s.take(a).unwrap_err(), SlotRefusal::PerClient(2));
        let _b = s.take(Some(ip("10.0.0.2"))).unwrap();
        assert_eq!(s.take(None).unwrap_err(), SlotRefusal::Total(3));
        drop(a1);
        let _a3 = s.take(a).unwrap();
        drop(_a3);
        drop(_a2);
        assert!(!s.counts().per_client.contains_key(&ip("10.0.0.1")));
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(is_json(&headers(&[(header::CONTENT_TYPE, ok)])), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
        ] {
            assert!(!is_json(&headers(&[(header::CONTENT_TYPE, bad)])), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn hosts() {
        let loopback: Vec<String> = crate::server::DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|h| h.to_string())
            .collect();
        for (host, ok) in [
            ("127.0.0.1:8545", true),
            ("localhost:8545", true),
            ("LOCALHOST", true),
            ("[::1]:8545", true),
            ("evil.example:8545", false),
            ("127.0.0.1.evil.example", false),
            ("10.0.0.5:8545", false),
        ] {
            assert_eq!(
                host_allowed(&headers(&[(header::HOST, host)]), &loopback),
                ok,
                "{host}"
            );
        }
        assert!(
            host_allowed(&headers(&[]), &loopback),
            "no Host: not a browser"
        );
        let any = vec!["*".to_string()];
        assert!(host_allowed(
            &headers(&[(header::HOST, "evil.example")]),
            &any
        ));
        let named = vec!["node.example".to_string()];
        assert!(host_allowed(
            &headers(&[(header::HOST, "node.example:8545")]),
            &named
        ));
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        let host = (header::HOST, "127.0.0.1:7545");
        assert!(origin_allowed(&headers(std::slice::from_ref(&host)), &none));
        let same = (header::ORIGIN, "http://127.0.0.1:7545");
        assert!(origin_allowed(&headers(&[host.clone(), same]), &none));
        let evil = (header::ORIGIN, "https://evil.example");
        assert!(!origin_allowed(
            &headers(&[host.clone(), evil.clone()]),
            &none
        ));
        let null = (header::ORIGIN, "null");
        assert!(!origin_allowed(&headers(&[host.clone(), null]), &none));
        let listed = vec!["https://evil.example".to_string()];
        assert!(origin_allowed(
            &headers(&[host.clone(), evil.clone()]),
            &listed
        ));
        assert!(origin_allowed(&headers(&[host, evil]), &["*".to_string()]));
    }
}
