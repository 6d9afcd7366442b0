//! Wiring: the async runtime, the RPC server, block production, and shutdown on Ctrl-C
//! or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::driver;
use crate::node::Node;
use crate::producer;

/// How long shutdown waits for in-flight RPC requests and the block being written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Ctrl-C and SIGTERM, listened for from the moment this is made. A node makes it before
/// it serves anything: otherwise a signal that comes between the first answered request
/// and the first wait for a signal takes the default action, killing the node without
/// its drain.
struct ShutdownSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignal {
    /// Starts listening; must run inside the runtime.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Some((int, term)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGINT and SIGTERM; only Ctrl-C stops the node");
                    None
                }
            };
            ShutdownSignal { signals }
        }
        #[cfg(not(unix))]
        ShutdownSignal {}
    }

    /// Resolves at the first Ctrl-C or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Completes once `stop` is true (or its sender is gone): every task of a node selects
/// on it to shut down.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Milliseconds since the Unix epoch by this machine's clock (block timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("grapevine")
        .build()
        .context("cannot start the async runtime")
}

async fn bind_rpc(rpc_addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(rpc_addr)
        .await
        .with_context(|| format!("cannot listen for RPC on {rpc_addr}"))
}

/// Serves RPC on `rpc_addr` and produces blocks until Ctrl-C or SIGTERM, then drains.
/// `on_ready` is called with the bound RPC address once the node accepts requests.
pub fn run_node(
    node: Arc<Node>,
    rpc_addr: SocketAddr,
    rpc_cfg: grapevine_rpc::RpcConfig,
    rpc_metrics: grapevine_rpc::RpcMetrics,
    producer_cfg: producer::Config,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut shutdown = ShutdownSignal::listen();
        let listener = bind_rpc(rpc_addr).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let router = grapevine_rpc::app(node.clone(), &rpc_cfg, rpc_metrics);
        let mut rpc_stop = stop_rx.clone();
        let rpc = tokio::spawn(grapevine_rpc::serve(listener, router, async move {
            stopped(&mut rpc_stop).await;
        }));
        let producer = tokio::spawn(producer::run(node.clone(), producer_cfg, stop_rx));
        tracing::info!(%addr, "JSON-RPC server listening");
        on_ready(addr);

        shutdown.recv().await;
        tracing::info!("shutting down: draining RPC and finishing the current block");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let _ = producer.await;
            match rpc.await {
                Ok(Err(e)) => tracing::error!(error = %e, "RPC server failed"),
                Err(e) => tracing::error!(error = %e, "RPC server task panicked"),
                Ok(Ok(())) => {}
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown drain timed out; stopping anyway");
        }
        Ok(())
    })
}

/// How often `getPeers`, the network metrics and mempool expiry are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// What a networked node runs besides RPC.
#[derive(Debug)]
pub struct Networked {
    /// The peer-to-peer network.
    pub net: grapevine_net::NetConfig,
    /// Consensus (as a validator or a follower).
    pub consensus: driver::Setup,
}

/// Runs a networked node (RPC, peer-to-peer network, consensus) until Ctrl-C or
/// SIGTERM, then drains. `on_ready` gets the bound RPC and peer addresses. Fails if
/// consensus stops because the node can no longer take part safely.
pub fn run_networked(
    node: Arc<Node>,
    rpc_addr: SocketAddr,
    rpc_cfg: grapevine_rpc::RpcConfig,
    rpc_metrics: grapevine_rpc::RpcMetrics,
    networked: Networked,
    on_ready: impl FnOnce(SocketAddr, SocketAddr),
) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut shutdown = ShutdownSignal::listen();
        let listener = bind_rpc(rpc_addr).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        node.set_networked();
        let p2p_listen = networked.net.listen;
        let validator: Arc<dyn grapevine_net::TxValidator> = node.clone();
        let (net, inbox) = grapevine_net::start(networked.net, validator, stop_rx.clone())
            .await
            .with_context(|| format!("cannot listen for peers on {p2p_listen}"))?;
        let p2p_addr = net.listen_addr;

        // Client transactions go to the network in batches.
        let gossip = {
            let (node, net, mut stop) = (node.clone(), net.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = node.gossip_ready.notified() => {}
                        () = stopped(&mut stop) => return,
                    }
                    // A short pause gathers a burst of submissions into one announcement.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let txs = node.take_gossip();
                    if !txs.is_empty() {
                        net.broadcast_txs(txs).await;
                    }
                }
            })
        };
        let refresh = {
            let (node, net, mut stop) = (node.clone(), net.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    let peers = net.peers().await;
                    node.update_network(&peers, &net.stats);
                    let n = node.clone();
                    // Both walk the pool under its lock: off the async workers.
                    let again = tokio::task::spawn_blocking(move || {
                        n.expire();
                        n.reannounce_due()
                    })
                    .await
                    .unwrap_or_default();
                    if !again.is_empty() {
                        net.reannounce(again).await;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(REFRESH) => {}
                        () = stopped(&mut stop) => return,
                    }
                }
            })
        };
        // Block sync is served on a task of its own, so requests cannot delay consensus.
        let (sync_tx, sync_rx) = tokio::sync::mpsc::channel(driver::serve::TO_DRIVER_QUEUE);
        let sync_server = tokio::spawn(driver::serve::run(
            node.ledger().clone(),
            networked.consensus.kept.clone(),
            net.clone(),
            inbox.sync,
            sync_tx,
            stop_rx.clone(),
        ));
        let mut consensus = tokio::spawn(driver::run(
            node.clone(),
            networked.consensus,
            net.clone(),
            inbox.consensus,
            sync_rx,
            stop_rx.clone(),
        ));
        let router = grapevine_rpc::app(node.clone(), &rpc_cfg, rpc_metrics);
        let mut rpc_stop = stop_rx.clone();
        let rpc = tokio::spawn(grapevine_rpc::serve(listener, router, async move {
            stopped(&mut rpc_stop).await;
        }));
        tracing::info!(rpc = %addr, p2p = %p2p_addr, id = %net.local_id, "node running");
        on_ready(addr, p2p_addr);

        let mut failure = None;
        tokio::select! {
            () = shutdown.recv() => {
                tracing::info!("shutting down: draining RPC and consensus");
            }
            res = &mut consensus => {
                let e = match res {
                    Ok(Ok(())) => anyhow::anyhow!("consensus stopped unexpectedly"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("consensus task panicked: {e}"),
                };
                tracing::error!(error = %format!("{e:#}"), "consensus failed; stopping the node");
                failure = Some(e);
            }
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            if failure.is_none() {
                match consensus.await {
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "consensus failed"),
                    Err(e) => tracing::error!(error = %e, "consensus task panicked"),
                    Ok(Ok(())) => {}
                }
            }
            let _ = gossip.await;
            let _ = refresh.await;
            let _ = sync_server.await;
            match rpc.await {
                Ok(Err(e)) => tracing::error!(error = %e, "RPC server failed"),
                Err(e) => tracing::error!(error = %e, "RPC server task panicked"),
                Ok(Ok(())) => {}
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown drain timed out; stopping anyway");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// `hosts`, plus the IP of `listen` when it is a specific address (a node told to
/// listen on 10.0.0.5 is called at 10.0.0.5).
pub fn allowed_hosts(mut hosts: Vec<String>, listen: std::net::SocketAddr) -> Vec<String> {
    let ip = listen.ip();
    if !ip.is_unspecified() && !hosts.iter().any(|h| h == &ip.to_string()) {
        hosts.push(ip.to_string());
    }
    hosts
}
