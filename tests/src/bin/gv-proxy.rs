//! `gv-proxy`: a fault-injecting TCP proxy and link emulator for local testnets (tests,
//! `scripts/testnet.sh partition`, `scripts/netns-testnet.sh`). Not part of the node.
//!
//! `gv-proxy ROUTES CONTROL`
//! - ROUTES: one route per line, `NAME LISTEN_ADDR TARGET_ADDR [BIND_IP]`
//!   (whitespace-separated); `grapevine testnet --fault-proxy` writes it as `proxies.tsv`.
//!   BIND_IP, when given, is the local address the proxy's outbound connections must
//!   come from, so the target sees them from that address. std cannot bind a socket
//!   before connecting it (and the workspace forbids unsafe code), so the host's routes
//!   choose the source (`ip route add TARGET_IP/32 dev DEV src BIND_IP`, as
//!   `scripts/netns-testnet.sh` does) and the proxy checks it: a connection from another
//!   address is closed and logged.
//! - CONTROL: one line per route to change, `NAME [block] [delay=MS] [jitter=MS]
//!   [loss=PCT] [rate=RATE]`; NAME `*` sets the default of every route, and a route's own
//!   line overrides the default's fields it names (`block` on either blocks). A bare
//!   name blocks the route (the original format). Read every 100 ms (a missing file
//!   blocks nothing and emulates nothing). Blocking a route closes its open connections
//!   and refuses new ones until it is unblocked; other changes apply to the next chunk
//!   of data on open connections.
//!   - `delay=MS`: one-way delay, in each direction (a round trip through the route
//!     takes 2 x delay).
//!   - `jitter=MS`: each chunk's delay is delay + a uniform value in [-jitter, +jitter]
//!     (at least 0), but data is never reordered: a chunk is delivered no earlier than
//!     the one before it in the same direction.
//!   - `loss=PCT`: each TCP segment (1448 bytes) of a chunk is lost with this
//!     probability (percent). A chunk whose first lost segment has 3 more behind it is
//!     delivered one round trip (2 x delay) late, like TCP's fast retransmit; one lost
//!     near its tail, one retransmission timeout late, max(200 ms, 2 x delay) (Linux's
//!     minimum RTO is 200 ms). What follows waits too (TCP delivers in order).
//!   - `rate=RATE`: bandwidth of the route in each direction, bytes per second, or with
//!     a unit: `10mbit`, `512kbit`, `1gbit` (bits/s), `100kb`, `2mb` (bytes/s). A token
//!     bucket of 16 KiB paces the chunks; connections of a route share it.
//!
//! Emulation is per chunk read from a socket (what one `read` returns, at most 64 KiB,
//! smaller with a rate), not per packet: see docs/TESTBED.md for the model and its
//! limits. Each direction of a connection has one reader thread, which timestamps
//! chunks and queues them (at most 8 MiB in flight, like a TCP window), and one writer
//! thread, which sleeps until each chunk's delivery time and writes it.
//!
//! Runs until killed. Only loopback and private (10/8, 172.16/12, 192.168/16)
//! addresses are accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most bytes queued in one direction of a connection before its reader waits.
const MAX_QUEUED: usize = 8 << 20;
/// Bytes per TCP segment, for the loss probability of a chunk.
const SEGMENT: usize = 1448;
/// Linux's minimum retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(200);
/// Depth of a route's token bucket.
const BUCKET: f64 = 16.0 * 1024.0;

/// A route's link settings; `None` fields are not set (the default's apply).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Link {
    block: bool,
    delay_ms: Option<f64>,
    jitter_ms: Option<f64>,
    loss: Option<f64>, // a fraction, 0..=1
    rate: Option<f64>, // bytes per second; 0: unlimited
}

impl Link {
    fn over(self, default: Link) -> Link {
        Link {
            block: self.block || default.block,
            delay_ms: self.delay_ms.or(default.delay_ms),
            jitter_ms: self.jitter_ms.or(default.jitter_ms),
            loss: self.loss.or(default.loss),
            rate: self.rate.or(default.rate),
        }
    }
    fn delay(&self) -> f64 {
        self.delay_ms.unwrap_or(0.0)
    }
    fn jitter(&self) -> f64 {
        self.jitter_ms.unwrap_or(0.0)
    }
    fn loss(&self) -> f64 {
        self.loss.unwrap_or(0.0)
    }
    fn rate(&self) -> f64 {
        self.rate.unwrap_or(0.0)
    }
    fn emulates(&self) -> bool {
        self.delay() > 0.0 || self.jitter() > 0.0 || self.loss() > 0.0 || self.rate() > 0.0
    }
}

/// `10mbit`, `512kbit`, `1gbit`, `100kb`, `2mb`, `1500` (bytes/s) -> bytes per second.
fn parse_rate(s: &str) -> Option<f64> {
    let s = s.to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "" | "b" | "bps" => 1.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n * mult)
}

/// One CONTROL line -> (name, link), or an error naming the bad field.
fn parse_control_line(line: &str) -> Result<(String, Link), String> {
    let mut fields = line.split_whitespace();
    let name = fields.next().ok_or("empty line")?.to_string();
    let mut link = Link::default();
    let mut any = false;
    for f in fields {
        any = true;
        let ms = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
        match f.split_once('=') {
            None if f == "block" => link.block = true,
            Some(("delay", v)) => link.delay_ms = Some(ms(v).ok_or(format!("bad delay: {f}"))?),
            Some(("jitter", v)) => link.jitter_ms = Some(ms(v).ok_or(format!("bad jitter: {f}"))?),
            Some(("loss", v)) => {
                let v = v.strip_suffix('%').unwrap_or(v);
                let p = ms(v)
                    .filter(|p| *p <= 100.0)
                    .ok_or(format!("bad loss: {f}"))?;
                link.loss = Some(p / 100.0);
            }
            Some(("rate", v)) => link.rate = Some(parse_rate(v).ok_or(format!("bad rate: {f}"))?),
            _ => return Err(format!("unknown field: {f}")),
        }
    }
    if !any {
        link.block = true; // a bare name: blocked (the original format)
    }
    Ok((name, link))
}

#[derive(Default)]
struct State {
    default: Link,
    links: HashMap<String, Link>,
    open: HashMap<String, Vec<TcpStream>>,
    /// Per route and direction (true: towards the target): when its token bucket is
    /// next empty, as seconds since `epoch` (a virtual clock).
    buckets: HashMap<(String, bool), f64>,
}

impl State {
    fn link(&self, name: &str) -> Link {
        match self.links.get(name) {
            Some(l) => l.over(self.default),
            None => self.default,
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock<T>(s: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// xorshift64*: std has no random numbers; this is plenty for jitter and loss.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let mut r = Rng(t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction's queue of timestamped chunks; `None` data marks the end.
struct Queue {
    items: VecDeque<(Instant, Option<Vec<u8>>)>,
    bytes: usize,
    dead: bool,
}

struct Pipe {
    q: Mutex<Queue>,
    cv: Condvar,
}

/// Reads chunks from `from`, gives each its delivery time under the route's current
/// link, and queues them for `writer`.
fn reader(
    mut from: TcpStream,
    pipe: Arc<Pipe>,
    name: String,
    forward: bool,
    state: Shared,
    epoch: Instant,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut rng =
        Rng::new(from.local_addr().map(|a| a.port() as u64).unwrap_or(0) << 1 | forward as u64);
    let mut last = Instant::now();
    loop {
        let cap = {
            let rate = lock(&state).link(&name).rate();
            if rate > 0.0 {
                // Chunks of ~20 ms at this rate, so pacing is smooth.
                ((rate / 50.0) as usize).clamp(SEGMENT, buf.len())
            } else {
                buf.len()
            }
        };
        let n = match from.read(&mut buf[..cap]) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let now = Instant::now();
        let (link, wire_done) = {
            let mut s = lock(&state);
            let link = s.link(&name);
            let rate = link.rate();
            let mut wire_done = now;
            if rate > 0.0 && n > 0 {
                // Token bucket as a virtual clock: the bucket is empty at `t`; it
                // refills at `rate` and holds at most BUCKET bytes.
                let key = (name.clone(), forward);
                let t_now = now.duration_since(epoch).as_secs_f64();
                let t = s.buckets.get(&key).copied().unwrap_or(0.0);
                let t = t.max(t_now - BUCKET / rate) + n as f64 / rate;
                s.buckets.insert(key, t);
                if t > t_now {
                    wire_done = now + Duration::from_secs_f64(t - t_now);
                }
            }
            (link, wire_done)
        };
        let mut due = wire_done;
        if link.emulates() {
            let j = link.jitter();
            let d = (link.delay()
                + if j > 0.0 {
                    (rng.unit() * 2.0 - 1.0) * j
                } else {
                    0.0
                })
            .max(0.0);
            due += Duration::from_secs_f64(d / 1000.0);
            let p = link.loss();
            if p > 0.0 && n > 0 {
                // The first lost segment decides: with 3 more segments behind it, the
                // receiver's duplicate ACKs trigger fast retransmit (about one round
                // trip late); a loss near the tail waits for a retransmission timeout.
                let segments = n.div_ceil(SEGMENT);
                let rtt = Duration::from_secs_f64(2.0 * link.delay() / 1000.0);
                if let Some(k) = (0..segments).find(|_| rng.unit() < p) {
                    due += if segments - 1 - k >= 3 {
                        rtt
                    } else {
                        MIN_RTO.max(rtt)
                    };
                }
            }
        }
        // TCP keeps order: never before the chunk ahead.
        let due = due.max(last);
        last = due;
        let mut q = lock(&pipe.q);
        while !q.dead && q.bytes >= MAX_QUEUED {
            q = pipe.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.dead {
            return;
        }
        if n == 0 {
            q.items.push_back((due, None));
            pipe.cv.notify_all();
            return;
        }
        q.bytes += n;
        q.items.push_back((due, Some(buf[..n].to_vec())));
        pipe.cv.notify_all();
    }
}

/// Delivers the queued chunks to `to` at their times; at the end (or a failed write)
/// shuts both sockets down, as the plain proxy did.
fn writer(mut to: TcpStream, from: TcpStream, pipe: Arc<Pipe>) {
    loop {
        let (due, data) = {
            let mut q = lock(&pipe.q);
            while q.items.is_empty() {
                q = pipe.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.items.pop_front().expect("not empty")
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let Some(data) = data else { break };
        let ok = to.write_all(&data).is_ok();
        {
            let mut q = lock(&pipe.q);
            q.bytes -= data.len();
            pipe.cv.notify_all();
        }
        if !ok {
            break;
        }
    }
    lock(&pipe.q).dead = true;
    pipe.cv.notify_all();
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn spawn_direction(
    from: TcpStream,
    to: TcpStream,
    name: String,
    forward: bool,
    state: Shared,
    epoch: Instant,
) -> Option<()> {
    let from2 = from.try_clone().ok()?;
    let pipe = Arc::new(Pipe {
        q: Mutex::new(Queue {
            items: VecDeque::new(),
            bytes: 0,
            dead: false,
        }),
        cv: Condvar::new(),
    });
    let p2 = pipe.clone();
    std::thread::spawn(move || reader(from, p2, name, forward, state, epoch));
    std::thread::spawn(move || writer(to, from2, pipe));
    Some(())
}

fn serve(
    name: String,
    listener: TcpListener,
    target: SocketAddr,
    bind: Option<IpAddr>,
    state: Shared,
    epoch: Instant,
) {
    for conn in listener.incoming() {
        let Ok(inbound) = conn else { continue };
        if lock(&state).link(&name).block {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        };
        if let Some(want) = bind {
            let from = outbound.local_addr().map(|a| a.ip());
            if from.as_ref().ok() != Some(&want) {
                eprintln!(
                    "gv-proxy: route {name}: the connection to {target} comes from {from:?}, \
                     not {want}; closed (add: ip route add {}/32 ... src {want})",
                    target.ip()
                );
                let _ = outbound.shutdown(Shutdown::Both);
                let _ = inbound.shutdown(Shutdown::Both);
                continue;
            }
        }
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (Ok(i2), Ok(o2), Ok(i3), Ok(o3)) = (
            inbound.try_clone(),
            outbound.try_clone(),
            inbound.try_clone(),
            outbound.try_clone(),
        ) else {
            continue;
        };
        {
            let mut s = lock(&state);
            let open = s.open.entry(name.clone()).or_default();
            open.retain(|c| c.peer_addr().is_ok());
            open.push(i3);
            open.push(o3);
        }
        let _ = spawn_direction(inbound, o2, name.clone(), true, state.clone(), epoch);
        let _ = spawn_direction(outbound, i2, name.clone(), false, state.clone(), epoch);
    }
}

/// Loopback, or IPv4 private (10/8, 172.16/12, 192.168/16).
fn allowed(ip: IpAddr) -> bool {
    ip.is_loopback()
        || match ip {
            IpAddr::V4(v) => v.is_private(),
            IpAddr::V6(_) => false,
        }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, routes, control] = &args[..] else {
        eprintln!("usage: gv-proxy ROUTES CONTROL (see the source's header)");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(routes).unwrap_or_else(|e| {
        eprintln!("gv-proxy: cannot read {routes}: {e}");
        std::process::exit(1);
    });
    let state: Shared = Arc::default();
    let epoch = Instant::now();
    let mut names = HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let addrs = |listen: &str, target: &str| {
            listen
                .parse::<SocketAddr>()
                .ok()
                .zip(target.parse::<SocketAddr>().ok())
        };
        let parsed = match f[..] {
            [name, listen, target] => addrs(listen, target).map(|(l, t)| (name, l, t, None)),
            [name, listen, target, bind] => addrs(listen, target)
                .zip(bind.parse::<IpAddr>().ok())
                .map(|((l, t), b)| (name, l, t, Some(b))),
            _ => None,
        };
        let Some((name, listen, target, bind)) = parsed else {
            eprintln!("gv-proxy: bad route line (NAME LISTEN TARGET [BIND_IP]): {line}");
            std::process::exit(1);
        };
        if name == "*" || !names.insert(name.to_string()) {
            eprintln!("gv-proxy: route name '{name}' is reserved or used twice: {line}");
            std::process::exit(1);
        }
        let ok = allowed(listen.ip())
            && allowed(target.ip())
            && bind.is_none_or(|b| allowed(b) && b.is_ipv4() == target.is_ipv4());
        if !ok {
            eprintln!("gv-proxy: only loopback and private addresses: {line}");
            std::process::exit(1);
        }
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
            eprintln!("gv-proxy: cannot listen on {listen}: {e}");
            std::process::exit(1);
        });
        let st = state.clone();
        let name = name.to_string();
        std::thread::spawn(move || serve(name, listener, target, bind, st, epoch));
    }
    println!("gv-proxy ready");
    let mut last: Option<String> = None;
    loop {
        let now = std::fs::read_to_string(control).unwrap_or_default();
        if last.as_ref() != Some(&now) {
            let mut default = Link::default();
            let mut links = HashMap::new();
            for line in now
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                match parse_control_line(line) {
                    Ok((name, link)) if name == "*" => default = link,
                    Ok((name, link)) => {
                        if !names.contains(&name) {
                            eprintln!("gv-proxy: note: no route named {name}");
                        }
                        links.insert(name, link);
                    }
                    Err(e) => eprintln!("gv-proxy: ignoring control line '{line}': {e}"),
                }
            }
            let mut s = lock(&state);
            s.default = default;
            s.links = links;
            let blocked: Vec<String> = names.iter().filter(|n| s.link(n).block).cloned().collect();
            for name in &blocked {
                for c in s.open.remove(name).unwrap_or_default() {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
            let emulated = names.iter().filter(|n| s.link(n).emulates()).count();
            eprintln!(
                "gv-proxy: {} routes blocked, {emulated} emulated (default: {})",
                blocked.len(),
                describe(&s.default)
            );
            last = Some(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe(l: &Link) -> String {
    let mut out = Vec::new();
    if l.block {
        out.push("block".to_string());
    }
    let fields = [("delay", l.delay_ms, "ms"), ("jitter", l.jitter_ms, "ms")];
    for (k, v, u) in fields {
        if let Some(v) = v {
            out.push(format!("{k}={v}{u}"));
        }
    }
    if let Some(p) = l.loss {
        out.push(format!("loss={}%", p * 100.0));
    }
    if let Some(r) = l.rate {
        out.push(format!("rate={r}B/s"));
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(" ")
    }
}
