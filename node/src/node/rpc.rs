//! The RPC adapter: [`NodeApi`] for [`Node`], the node as the JSON-RPC server sees it.

use super::*;

impl Node {
    fn finalized_info(&self, hash: &Hash) -> Result<Option<TxInfo>, ApiError> {
        let Some((tx, loc)) = self.ledger.transaction(hash).map_err(internal)? else {
            return Ok(None);
        };
        let block_hash = self
            .ledger
            .block(loc.height)
            .map_err(internal)?
            .map(|b| b.block.hash())
            .ok_or(ApiError::Internal)?;
        Ok(Some(TxInfo {
            hash: *hash,
            state: TxState::Finalized {
                height: loc.height,
                block_hash,
                index: loc.index,
                receipt: ReceiptView::from(loc.receipt),
            },
            transaction: Some(tx_view(&tx)),
        }))
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "storage error while serving RPC");
    ApiError::Internal
}

impl NodeApi for Node {
    fn status(&self) -> Result<Status, ApiError> {
        let head = self.ledger.head();
        Ok(Status {
            chain_id: self.ledger.chain_id(),
            genesis_hash: self.ledger.genesis_hash(),
            height: head.height,
            head_hash: head.hash(),
            state_root: head.state_root,
            peer_count: self.net_view().peers.len(),
            syncing: self.sync_progress().is_some_and(|p| p.syncing),
            version: env!("CARGO_PKG_VERSION").to_string(),
            validators: self.validators.clone(),
        })
    }

    fn account(&self, addr: &Address) -> Result<AccountInfo, ApiError> {
        let acct = self
            .ledger
            .account(addr)
            .map_err(internal)?
            .unwrap_or_default();
        let pending = self.pool().pending_nonce(addr).unwrap_or(acct.nonce);
        Ok(AccountInfo {
            address: *addr,
            balance: acct.balance,
            nonce: acct.nonce,
            pending_nonce: pending.max(acct.nonce),
        })
    }

    fn send_transaction(&self, bytes: &[u8]) -> Result<Hash, ApiError> {
        self.admit_client(bytes, None)
    }

    fn send_transactions(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, ApiError>> {
        let decoded: Vec<SignedTx> = txs
            .iter()
            .filter(|b| b.len() == grapevine_ledger::tx::SIGNED_TX_LEN)
            .filter_map(|b| SignedTx::from_bytes(b).ok())
            .collect();
        // Signatures in batches, and "already final?" in one lookup, for those that
        // admission would take now (this chain's, not refused while busy).
        let busy = self.busy();
        let chain_id = self.ledger.chain_id();
        let taken: Vec<SignedTx> = decoded
            .into_iter()
            .filter(|t| t.tx().chain_id == chain_id && !Self::busy_for(&busy, t.tx().fee))
            .collect();
        self.preverify(taken.iter().copied());
        let looked_up = FinalityPrefetch::new(&self.ledger, &taken);
        txs.iter()
            .map(|b| self.admit_client(b, Some(&looked_up)))
            .collect()
    }

    fn transaction(&self, hash: &Hash) -> Result<TxInfo, ApiError> {
        // Order matters: a committed transaction leaves the pool only after the ledger
        // has it, so looking in the pool first and the ledger second never misses it.
        if let Some(info) = self
            .pool()
            .get(hash)
            .map(|(t, s)| self.pooled_info(*hash, t, s))
        {
            return Ok(info);
        }
        if let Some(info) = self.finalized_info(hash)? {
            return Ok(info);
        }
        if let Some(info) = self.recent().get(hash, Instant::now()) {
            return Ok(info);
        }
        Ok(TxInfo {
            hash: *hash,
            state: TxState::Unknown,
            transaction: None,
        })
    }

    fn block_by_height(&self, height: u64) -> Result<Option<BlockInfo>, ApiError> {
        let Some(stored) = self.ledger.block(height).map_err(internal)? else {
            return Ok(None);
        };
        let b = stored.block;
        Ok(Some(BlockInfo {
            hash: b.hash(),
            header: b.header,
            tx_hashes: b.txs.iter().map(SignedTx::hash).collect(),
            transactions: Some(b.txs.iter().map(tx_view).collect()),
            certificate: hex::encode(&stored.certificate),
        }))
    }

    fn account_transactions(
        &self,
        addr: &Address,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<AccountTxPage, ApiError> {
        // One more than asked says whether an older page exists.
        let mut rows = self
            .ledger
            .account_transactions(addr, before, limit + 1)
            .map_err(internal)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = more
            .then(|| rows.last().map(|(_, h, i)| format!("{h}:{i}")))
            .flatten();
        let mut transactions = Vec::with_capacity(rows.len());
        for (hash, _, _) in rows {
            if let Some(info) = self.finalized_info(&hash)? {
                transactions.push(info);
            }
        }
        Ok(AccountTxPage {
            address: *addr,
            transactions,
            next,
        })
    }

    fn height_of(&self, hash: &Hash) -> Result<Option<u64>, ApiError> {
        self.ledger.height_of(hash).map_err(internal)
    }

    fn head_height(&self) -> u64 {
        self.ledger.head().height
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.net_view().peers.clone()
    }

    fn mempool(&self, with_hashes: bool) -> MempoolInfo {
        let pool = self.pool();
        let (pending, queued) = pool.counts();
        MempoolInfo {
            pending,
            queued,
            bytes: pool.bytes(),
            hashes: with_hashes.then(|| pool.hashes(MAX_MEMPOOL_HASHES)),
        }
    }

    fn not_ready_reason(&self) -> Option<String> {
        // A single-validator chain needs no peers; a networked node without any can
        // neither hear of new blocks nor spread transactions.
        let view = self.net_view();
        if view.networked && self.validators.len() > 1 && view.peers.is_empty() {
            return Some("no peers connected".to_string());
        }
        let networked = view.networked;
        drop(view);
        if let Some(why) = self.finality_stalled(networked) {
            return Some(why);
        }
        let p = self.sync_progress()?;
        let behind = p.target.saturating_sub(self.ledger.head().height);
        (behind > HEALTH_MAX_LAG).then(|| {
            format!(
                "syncing: {behind} blocks behind peers (height {} of {})",
                p.current, p.target
            )
        })
    }

    fn sync_status(&self) -> SyncStatus {
        let height = self.ledger.head().height;
        match self.sync_progress() {
            Some(p) => SyncStatus {
                syncing: p.syncing,
                current_height: height,
                target_height: p.target.max(height),
                blocks_per_second: p.blocks_per_second,
                eta_seconds: p.eta_seconds,
            },
            None => SyncStatus {
                syncing: false,
                current_height: height,
                target_height: height,
                blocks_per_second: 0.0,
                eta_seconds: None,
            },
        }
    }

    fn subscribe_heads(&self) -> broadcast::Receiver<HeadEvent> {
        self.heads.subscribe()
    }

    fn subscribe_transactions(&self) -> broadcast::Receiver<TxInfo> {
        self.txs.subscribe()
    }

    fn genesis(&self) -> Option<grapevine_ledger::Genesis> {
        self.genesis.get().cloned()
    }

    fn metrics_text(&self) -> String {
        // Read when scraped: RocksDB adds it up on request.
        for (part, bytes) in self.ledger.store_memory() {
            self.metrics
                .db_memory
                .get_or_create(&vec![("part".to_string(), part.to_string())])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding metrics failed");
        }
        out
    }
}
