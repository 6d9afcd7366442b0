//! The link task: one per connection. It runs the Noise handshake and hello exchange
//! (bounded by the handshake timeout), registers the link with the actor and waits to
//! be accepted, then reads messages into the actor's event channel, within the peer's
//! inbound budget (`budget`), while a writer task drains the peer's bounded send queue
//! onto the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grapevine_ledger::Address;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use super::budget::InboundBudget;
use super::gossip::ValidatedBatch;
use super::{ConnId, NetStats};
use crate::message::Message;
use crate::secure::{self, LinkError, LocalIdentity};

/// What link tasks (and validation tasks) tell the actor.
pub(super) enum LinkEvent {
    /// The handshake succeeded; the link waits for `accept`.
    Up {
        conn: ConnId,
        link_id: Address,
        addr: SocketAddr,
        /// Where the peer asks to be dialed: its advertised address, or the address it
        /// is seen from with its listen port (`None`: it accepts no connections).
        listen_addr: Option<SocketAddr>,
        inbound: bool,
        queue: mpsc::Sender<Bytes>,
        /// Bytes in `queue` not yet written.
        queued: Arc<AtomicUsize>,
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
    /// The peer went over its inbound budget: its link pauses reading (at most one
    /// such event a second per link).
    Throttled { conn: ConnId },
    /// Batches of relayed transactions came back from the validator.
    Validated(Vec<ValidatedBatch>),
    DialFailed {
        conn: ConnId,
        addr: SocketAddr,
        reason: String,
    },
}

/// The first address `host` (a name or an IP address) resolves to, now, that `keep`
/// takes, within `limit`; otherwise why not.
pub(super) async fn resolve(
    host: &str,
    port: u16,
    limit: Duration,
    keep: impl Fn(&SocketAddr) -> bool,
) -> Result<SocketAddr, String> {
    match tokio::time::timeout(limit, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(mut addrs)) => addrs
            .find(|a| keep(a))
            .ok_or_else(|| "no address to use".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("lookup timed out".to_string()),
    }
}

/// Whether `advertised`, the address a peer seen at `seen` asks to be dialed at, is one
/// to take: a port, a unicast address that is not unspecified, and loopback only from a
/// peer on loopback (a remote peer cannot mean this machine). Another is ignored, and
/// the address the peer is seen from is used.
pub(super) fn dialable(advertised: SocketAddr, seen: SocketAddr) -> bool {
    let ip = advertised.ip();
    let unicast = match ip {
        std::net::IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_multicast(),
        std::net::IpAddr::V6(v6) => !v6.is_multicast(),
    };
    advertised.port() != 0
        && unicast
        && !ip.is_unspecified()
        && (!ip.is_loopback() || seen.ip().is_loopback())
}

/// What a link task needs from the actor.
#[derive(Clone)]
pub(super) struct LinkCtx {
    pub(super) identity: Arc<LocalIdentity>,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) stats: Arc<NetStats>,
    pub(super) handshake_timeout: Duration,
    pub(super) queue_len: usize,
    /// Each peer's inbound budget: messages and bytes a second.
    pub(super) recv_msgs_per_sec: u32,
    pub(super) recv_bytes_per_sec: u64,
}

/// Dials `addr` (within the handshake timeout) and runs the link as connection
/// `conn`; a failure to connect comes back as [`LinkEvent::DialFailed`].
pub(super) fn dial(addr: SocketAddr, conn: ConnId, ctx: LinkCtx) -> JoinHandle<()> {
    tokio::spawn(dial_addr(addr, conn, ctx))
}

/// Resolves `host` (a name or an IP address) now, then dials its first address as
/// [`dial`] does; a name that does not resolve comes back as
/// [`LinkEvent::DialFailed`] for `0.0.0.0:port`.
pub(super) fn dial_named(host: String, port: u16, conn: ConnId, ctx: LinkCtx) -> JoinHandle<()> {
    tokio::spawn(async move {
        match resolve(&host, port, ctx.handshake_timeout, |_| true).await {
            Ok(addr) => dial_addr(addr, conn, ctx).await,
            Err(e) => {
                let _ = ctx
                    .events
                    .send(LinkEvent::DialFailed {
                        conn,
                        addr: SocketAddr::from(([0, 0, 0, 0], port)),
                        reason: format!("cannot resolve {host}: {e}"),
                    })
                    .await;
            }
        }
    })
}

async fn dial_addr(addr: SocketAddr, conn: ConnId, ctx: LinkCtx) {
    let events = ctx.events.clone();
    let reason = match tokio::time::timeout(ctx.handshake_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => return run_link(stream, addr, false, conn, ctx).await,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connect timed out".to_string(),
    };
    let _ = events
        .send(LinkEvent::DialFailed { conn, addr, reason })
        .await;
}

/// Runs one link: handshake, registration with the actor, then the reader loop (this
/// task) and a writer task draining the peer's queue.
pub(super) async fn run_link(
    stream: TcpStream,
    addr: SocketAddr,
    inbound: bool,
    conn: ConnId,
    ctx: LinkCtx,
) {
    let LinkCtx {
        identity,
        events,
        stats,
        handshake_timeout,
        queue_len,
        recv_msgs_per_sec,
        recv_bytes_per_sec,
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
    let queued = Arc::new(AtomicUsize::new(0));
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
        listen_addr: hello
            .external
            .filter(|e| dialable(*e, addr))
            .or((hello.listen_port != 0).then(|| SocketAddr::new(addr.ip(), hello.listen_port))),
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
    let mut budget = InboundBudget::new(recv_msgs_per_sec, recv_bytes_per_sec, Instant::now());
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
                let charge = budget.charge(Instant::now(), bytes);
                if charge.report && events.send(LinkEvent::Throttled { conn }).await.is_err() {
                    return;
                }
                // Not reading is the backpressure: the peer's sends block on TCP flow
                // control until it is back within budget.
                if !charge.pause.is_zero() {
                    tokio::time::sleep(charge.pause).await;
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

#[cfg(test)]
mod tests {
    use super::dialable;

    #[test]
    fn only_dialable_advertised_addresses_are_taken() {
        let a = |s: &str| s.parse().unwrap();
        let remote = a("203.0.113.7:40000");
        assert!(dialable(a("198.51.100.1:26656"), remote));
        assert!(dialable(a("[2001:db8::1]:26656"), remote));
        assert!(!dialable(a("198.51.100.1:0"), remote), "no port");
        assert!(!dialable(a("0.0.0.0:26656"), remote), "unspecified");
        assert!(!dialable(a("255.255.255.255:26656"), remote), "broadcast");
        assert!(!dialable(a("224.0.0.1:26656"), remote), "multicast");
        assert!(!dialable(a("[ff02::1]:26656"), remote), "multicast");
        assert!(
            !dialable(a("127.0.1.1:26656"), remote),
            "a remote peer's loopback is not ours"
        );
        assert!(dialable(a("127.0.0.1:26656"), a("127.0.0.1:40000")));
    }
}
