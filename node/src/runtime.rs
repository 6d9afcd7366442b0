//! Wiring: the async runtime, the RPC server, block production, and shutdown on Ctrl-C
//! or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::node::Node;
use crate::producer;

/// How long shutdown waits for in-flight RPC requests and the block being written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("grapevine")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(rpc_addr)
            .await
            .with_context(|| format!("cannot listen for RPC on {rpc_addr}"))?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let router = grapevine_rpc::app(node.clone(), &rpc_cfg, rpc_metrics);
        let mut rpc_stop = stop_rx.clone();
        let rpc = tokio::spawn(grapevine_rpc::serve(listener, router, async move {
            producer::stopped(&mut rpc_stop).await;
        }));
        let producer = tokio::spawn(producer::run(node.clone(), producer_cfg, stop_rx));
        tracing::info!(%addr, "JSON-RPC server listening");
        on_ready(addr);

        shutdown_signal().await;
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
