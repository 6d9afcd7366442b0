//! `gv-proxy`: a fault-injecting TCP proxy for local testnets (tests and
//! `scripts/testnet.sh partition`). Not part of the node.
//!
//! `gv-proxy ROUTES CONTROL`
//! - ROUTES: one route per line, `NAME LISTEN_ADDR TARGET_ADDR` (whitespace-separated);
//!   `grapevine testnet --fault-proxy` writes it as `proxies.tsv`.
//! - CONTROL: the names of blocked routes, one per line; read every 100 ms (a missing
//!   file blocks nothing). Blocking a route closes its open connections and refuses
//!   new ones until the name leaves the file.
//!
//! Runs until killed. Only loopback addresses are accepted.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    blocked: HashSet<String>,
    open: HashMap<String, Vec<TcpStream>>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn serve(name: String, listener: TcpListener, target: SocketAddr, state: Shared) {
    for conn in listener.incoming() {
        let Ok(inbound) = conn else { continue };
        if lock(&state).blocked.contains(&name) {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        };
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
        std::thread::spawn(move || pipe(inbound, o2));
        std::thread::spawn(move || pipe(outbound, i2));
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
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f[..] {
            [name, listen, target] => listen
                .parse::<SocketAddr>()
                .ok()
                .zip(target.parse::<SocketAddr>().ok())
                .map(|(l, t)| (name.to_string(), l, t)),
            _ => None,
        };
        let Some((name, listen, target)) = parsed else {
            eprintln!("gv-proxy: bad route line: {line}");
            std::process::exit(1);
        };
        if !listen.ip().is_loopback() || !target.ip().is_loopback() {
            eprintln!("gv-proxy: only loopback addresses: {line}");
            std::process::exit(1);
        }
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
            eprintln!("gv-proxy: cannot listen on {listen}: {e}");
            std::process::exit(1);
        });
        let st = state.clone();
        std::thread::spawn(move || serve(name, listener, target, st));
    }
    println!("gv-proxy ready");
    let mut last = String::new();
    loop {
        let now = std::fs::read_to_string(control).unwrap_or_default();
        if now != last {
            let blocked: HashSet<String> = now
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            let mut s = lock(&state);
            for name in &blocked {
                for c in s.open.remove(name).unwrap_or_default() {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
            eprintln!("gv-proxy: {} routes blocked", blocked.len());
            s.blocked = blocked;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
