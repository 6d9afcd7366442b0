//! The node's Prometheus metrics, and the refresh of the network's view into them.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) height: Gauge,
    pub(super) blocks: Counter,
    pub(super) txs_finalized: Counter,
    pub(super) txs_rejected: Counter,
    pub(super) mempool_pending: Gauge,
    pub(super) mempool_queued: Gauge,
    pub(super) mempool_bytes: Gauge,
    pub(super) peers: Gauge,
    pub(super) sync_target: Gauge,
    pub(super) syncing: Gauge,
    pub(super) net_bytes_in: Counter,
    pub(super) net_bytes_out: Counter,
    pub(super) net_tx_bodies: Counter,
    pub(super) net_tx_duplicates: Counter,
    pub(super) net_bans: Counter,
    pub(super) net_consensus_dropped: Counter,
    pub(super) net_sync_dropped: Counter,
    pub(super) net_throttled: Counter,
    pub(super) net_requests_refused: Counter,
    pub(super) net_inbound_refused: Counter,
    pub(super) net_evictions: Counter,
    pub(super) net_messages: Family<Vec<(String, String)>, Counter>,
    pub(super) db_memory: Family<Vec<(String, String)>, Gauge>,
    pub(super) equivocations: Family<Vec<(String, String)>, Counter>,
    pub(super) kept_proposals: Gauge,
    pub(super) kept_proposal_bytes: Gauge,
    pub(super) leader_weight: Family<Vec<(String, String)>, Gauge>,
}

impl Metrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "grapevine_height",
            "Height of the latest final block",
            self.height.clone(),
        );
        r.register(
            "grapevine_blocks",
            "Blocks committed by this node",
            self.blocks.clone(),
        );
        r.register(
            "grapevine_txs_finalized",
            "Transactions in committed blocks",
            self.txs_finalized.clone(),
        );
        r.register(
            "grapevine_txs_rejected",
            "Transactions refused at submission",
            self.txs_rejected.clone(),
        );
        r.register(
            "grapevine_mempool_pending",
            "Executable transactions in the mempool",
            self.mempool_pending.clone(),
        );
        r.register(
            "grapevine_mempool_queued",
            "Transactions waiting for an earlier nonce",
            self.mempool_queued.clone(),
        );
        r.register(
            "grapevine_mempool_bytes",
            "Bytes of transactions in the mempool",
            self.mempool_bytes.clone(),
        );
        r.register("grapevine_peers", "Connected peers", self.peers.clone());
        r.register(
            "grapevine_consensus_equivocations",
            "Validators caught signing two proposals or two votes in one round (kind)",
            self.equivocations.clone(),
        );
        r.register(
            "grapevine_consensus_kept_proposals",
            "Proposals above the final height kept on disk for a restart",
            self.kept_proposals.clone(),
        );
        r.register(
            "grapevine_consensus_kept_proposal_bytes",
            "Encoded bytes of the proposals kept on disk for a restart",
            self.kept_proposal_bytes.clone(),
        );
        r.register(
            "grapevine_consensus_leader_weight",
            "Each validator's weight in the leader election over the recent final blocks (validator: its index in genesis; 0: not chosen)",
            self.leader_weight.clone(),
        );
        r.register(
            "grapevine_sync_target_height",
            "Highest final height peers report",
            self.sync_target.clone(),
        );
        r.register(
            "grapevine_syncing",
            "1 while the node fetches final blocks from peers",
            self.syncing.clone(),
        );
        r.register(
            "grapevine_net_bytes_in",
            "Bytes received from peers",
            self.net_bytes_in.clone(),
        );
        r.register(
            "grapevine_net_bytes_out",
            "Bytes sent to peers",
            self.net_bytes_out.clone(),
        );
        r.register(
            "grapevine_net_tx_bodies",
            "Transaction bodies received from peers",
            self.net_tx_bodies.clone(),
        );
        r.register(
            "grapevine_net_tx_duplicates",
            "Transaction bodies received that the node already had",
            self.net_tx_duplicates.clone(),
        );
        r.register("grapevine_net_bans", "Peers banned", self.net_bans.clone());
        r.register(
            "grapevine_net_consensus_dropped",
            "Consensus messages dropped at the node's full consensus queue",
            self.net_consensus_dropped.clone(),
        );
        r.register(
            "grapevine_net_throttled",
            "Times a peer went over its inbound message or byte budget (reading paused)",
            self.net_throttled.clone(),
        );
        r.register(
            "grapevine_net_requests_refused",
            "GetPeers beyond one a minute, or TxRequests for what was not announced to the peer",
            self.net_requests_refused.clone(),
        );
        r.register(
            "grapevine_net_inbound_refused",
            "Inbound links closed before their handshake (ban, limit, nobody to evict)",
            self.net_inbound_refused.clone(),
        );
        r.register(
            "grapevine_net_evictions",
            "Inbound peers dropped to make room for a new one",
            self.net_evictions.clone(),
        );
        r.register(
            "grapevine_net_sync_dropped",
            "Block sync messages dropped at the node's full sync queue",
            self.net_sync_dropped.clone(),
        );
        r.register(
            "grapevine_net_messages",
            "Messages received from peers, by kind",
            self.net_messages.clone(),
        );
        r.register(
            "grapevine_db_memory_bytes",
            "Memory the database holds, by part (block cache, memtables, table readers)",
            self.db_memory.clone(),
        );
    }
}

impl Node {
    /// Refreshes `getPeers` and the network metrics from the network's counters.
    pub fn update_network(&self, peers: &[PeerSummary], stats: &NetStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut view = self.net_view();
        view.peers = peers
            .iter()
            .map(|p| PeerInfo {
                id: p.id.to_string(),
                address: p.address.to_string(),
                listen_address: p.listen_address.map(|a| a.to_string()),
                direction: if p.inbound { "inbound" } else { "outbound" }.into(),
                score: p.score,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                latency_ms: p.latency.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        self.metrics.peers.set(peers.len() as i64);
        let mut totals = vec![
            stats.bytes_in.load(Relaxed),
            stats.bytes_out.load(Relaxed),
            stats.tx_bodies.load(Relaxed),
            stats.tx_duplicates.load(Relaxed),
            stats.bans.load(Relaxed),
            stats.consensus_dropped.load(Relaxed),
            stats.sync_dropped.load(Relaxed),
            stats.throttled.load(Relaxed),
            stats.requests_refused.load(Relaxed),
            stats.inbound_refused.load(Relaxed),
            stats.evictions.load(Relaxed),
        ];
        totals.extend(stats.messages.iter().map(|m| m.load(Relaxed)));
        view.last.resize(totals.len(), 0);
        let delta: Vec<u64> = totals
            .iter()
            .zip(&view.last)
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        view.last = totals;
        drop(view);
        let m = &self.metrics;
        for (c, d) in [
            &m.net_bytes_in,
            &m.net_bytes_out,
            &m.net_tx_bodies,
            &m.net_tx_duplicates,
            &m.net_bans,
            &m.net_consensus_dropped,
            &m.net_sync_dropped,
            &m.net_throttled,
            &m.net_requests_refused,
            &m.net_inbound_refused,
            &m.net_evictions,
        ]
        .into_iter()
        .zip(&delta)
        {
            c.inc_by(*d);
        }
        for (kind, d) in grapevine_net::network::MESSAGE_KINDS
            .iter()
            .zip(&delta[11..])
        {
            m.net_messages
                .get_or_create(&vec![("kind".to_string(), (*kind).to_string())])
                .inc_by(*d);
        }
    }
}
