//! Admission: whether a transaction from a client or a peer enters the mempool,
//! cheapest checks first, with backpressure when the node is behind.

use super::*;

/// The RPC error for a mempool refusal (every refusal but an internal fault is a
/// [`RejectReason`]).
pub(super) fn refusal_error(r: &Refusal, hash: Option<Hash>) -> ApiError {
    let reason = match r {
        Refusal::Malformed(_) => RejectReason::Malformed,
        Refusal::WrongChain { .. } => RejectReason::WrongChain,
        Refusal::BadSignature => RejectReason::BadSignature,
        Refusal::NonceTooLow { .. } => RejectReason::NonceTooLow,
        Refusal::InsufficientBalance { .. } => RejectReason::InsufficientBalance,
        Refusal::AlreadyKnown(_) => RejectReason::AlreadyKnown,
        Refusal::AlreadyFinal(_) => RejectReason::AlreadyFinal,
        Refusal::Underpriced { .. } => RejectReason::Underpriced,
        Refusal::Full { .. } => RejectReason::MempoolFull,
        Refusal::SenderLimit(_) => RejectReason::SenderLimit,
        Refusal::NonceTooHigh { .. } => RejectReason::NonceTooHigh,
        Refusal::InBlock { .. } => RejectReason::NonceInBlock,
        Refusal::Busy { .. } => RejectReason::Busy,
        Refusal::FeeTooLow { .. } => RejectReason::FeeTooLow,
        Refusal::Internal => return ApiError::Internal,
    };
    ApiError::Rejected {
        reason,
        message: r.to_string(),
        hash,
    }
}

impl Node {
    /// `Some(refusal)` while the pool holds more than half [`MempoolConfig::max_backlog`]
    /// of the recent finalized throughput: checked before any signature work, so refusing
    /// the excess of an overload costs almost nothing. Even then a transaction paying
    /// more than the lowest pooled fee is admitted ([`Refusal::Busy`]'s `min_fee`), so
    /// free transactions cannot keep paying ones out.
    pub(super) fn busy(&self) -> Option<Refusal> {
        let (pooled, backlog, floor, lowest) = {
            let pool = self.pool();
            let cfg = pool.config();
            (
                pool.len(),
                cfg.max_backlog,
                cfg.min_backlog_txs,
                pool.lowest_fee().unwrap_or(0),
            )
        };
        if backlog.is_zero() || pooled < floor {
            return None;
        }
        // Only pending transactions count: queued ones behind a nonce gap may never run,
        // and must not make the node refuse everyone. Counting walks the pool, so the
        // count is reused for a moment.
        let pooled = {
            let mut cache = self.pending_count.lock().unwrap_or_else(|p| p.into_inner());
            match *cache {
                Some((at, n)) if at.elapsed() < PENDING_COUNT_REUSE => n,
                _ => {
                    let n = self.pool().counts().0;
                    *cache = Some((Instant::now(), n));
                    n
                }
            }
        };
        if pooled < floor {
            return None;
        }
        let per_s = {
            let f = self.finalized.lock().unwrap_or_else(|p| p.into_inner());
            let txs: usize = f.iter().map(|(_, n)| n).sum();
            txs as f64 / THROUGHPUT_WINDOW.as_secs_f64()
        };
        // Half the bound waits in the pool; the other half is for the block, the two
        // certified blocks after it that make it final, and a client's retries, so
        // that a transaction admitted under overload is final within the bound.
        let allowance = backlog / 2;
        let limit = (per_s * allowance.as_secs_f64()) as usize;
        (pooled >= limit.max(floor)).then(|| Refusal::Busy {
            pooled,
            backlog_ms: u64::try_from(allowance.as_millis()).unwrap_or(u64::MAX),
            min_fee: lowest.saturating_add(1),
        })
    }

    /// The busy refusal for a transaction paying `fee`, if it must wait.
    pub(super) fn busy_for(busy: &Option<Refusal>, fee: u64) -> bool {
        matches!(busy, Some(Refusal::Busy { min_fee, .. }) if fee < *min_fee)
    }

    /// Pooled transactions announced at least [`REANNOUNCE_AFTER`] ago, to announce
    /// again (peers may have deferred or dropped them while busy). At most
    /// [`REANNOUNCE_MAX`] per call.
    pub fn reannounce_due(&self) -> Vec<SignedTx> {
        self.pool()
            .due_for_reannounce(Instant::now(), REANNOUNCE_AFTER, REANNOUNCE_MAX)
    }

    /// Checks ahead, in signature batches, the signatures of the transactions of `txs`
    /// that admission would take now (this chain's, and not deferred while busy), and
    /// remembers the valid ones; admission then skips them. A failing batch remembers
    /// nothing: each caller's own admission finds the invalid transaction among its own.
    pub(super) fn preverify(&self, txs: impl Iterator<Item = SignedTx>) {
        let busy = self.busy();
        let chain_id = self.ledger.chain_id();
        let taken: Vec<SignedTx> = txs
            .filter(|t| t.tx().chain_id == chain_id && !Self::busy_for(&busy, t.tx().fee))
            .collect();
        grapevine_ledger::tx::preverify_signatures(&taken);
    }

    /// Admits one transaction from a client (its full encoding), with "already final?"
    /// taken from `looked_up` when given.
    pub(super) fn admit_client(
        &self,
        bytes: &[u8],
        looked_up: Option<&FinalityPrefetch<'_>>,
    ) -> Result<Hash, ApiError> {
        let busy = self.busy();
        if busy.is_some() {
            // The fee decides; what does not decode is refused below as malformed.
            let fee = SignedTx::from_bytes(bytes).map_or(u64::MAX, |t| t.tx().fee);
            if Self::busy_for(&busy, fee)
                && let Some(refusal) = busy
            {
                return Err(refusal_error(&refusal, None));
            }
        }
        // Signature checks happen before taking the pool's lock.
        let checked = crate::mempool::precheck(bytes, self.ledger.chain_id());
        let mut pool = self.pool();
        let view = looked_up.map_or(&*self.ledger as &dyn StateView, FinalityPrefetch::view);
        let result = checked.and_then(|tx| {
            pool.submit_verified(tx, view, Instant::now())
                .map_err(|r| (Some(tx.hash()), r))
        });
        match result {
            Ok(admitted) => {
                let entry = pool.get(&admitted.hash);
                let info = entry.map(|(t, s)| self.pooled_info(admitted.hash, t, s));
                let promoted: Vec<TxInfo> = admitted
                    .promoted
                    .iter()
                    .filter_map(|h| pool.get(h).map(|(t, s)| self.pooled_info(*h, t, s)))
                    .collect();
                // The pool gauges walk every sender: they are refreshed after each block
                // and each expiry sweep (every second), not on this hot path.
                drop(pool);
                let wake = admitted.state == PoolState::Pending || !promoted.is_empty();
                self.publish_dropped(
                    admitted
                        .dropped
                        .into_iter()
                        .map(|(h, d)| (h, d, None))
                        .collect(),
                );
                if let Some(info) = info {
                    self.publish(info);
                }
                for p in promoted {
                    self.publish(p);
                }
                if wake {
                    self.new_work.notify_one();
                }
                if self.net_view().networked
                    && let Some((t, _)) = entry
                {
                    self.gossip
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t);
                    self.gossip_ready.notify_one();
                }
                Ok(admitted.hash)
            }
            Err((hash, refusal)) => {
                drop(pool);
                self.metrics.txs_rejected.inc();
                let err = refusal_error(&refusal, hash);
                // Remember refusals of decodable transactions, except those that say the
                // transaction is alive elsewhere (pooled or final).
                if let (Some(h), false) = (
                    hash,
                    matches!(refusal, Refusal::AlreadyKnown(_) | Refusal::AlreadyFinal(_)),
                ) {
                    let code = match &err {
                        ApiError::Rejected { reason, .. } => reason.name().to_string(),
                        _ => "internal".into(),
                    };
                    let tx = grapevine_ledger::SignedTx::from_bytes(bytes).ok();
                    self.publish(TxInfo {
                        hash: h,
                        state: TxState::Rejected {
                            reason: Reason {
                                code,
                                message: refusal.to_string(),
                            },
                        },
                        transaction: tx.as_ref().map(tx_view),
                    });
                }
                Err(err)
            }
        }
    }

    /// Admits transactions a peer relayed: each gets a [`Verdict`] for the network
    /// (only accepted ones are announced onwards; invalid ones cost the peer score).
    pub fn admit_from_peer(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        let busy = self.busy();
        if busy.is_none() {
            return self.admit_relayed(txs);
        }
        // Deferred ones are fetched again when their node re-announces them.
        let taken: Vec<SignedTx> = txs
            .iter()
            .filter(|t| !Self::busy_for(&busy, t.tx().fee))
            .copied()
            .collect();
        let mut verdicts = self.admit_relayed(&taken).into_iter();
        txs.iter()
            .map(|t| {
                if Self::busy_for(&busy, t.tx().fee) {
                    Verdict::Deferred
                } else {
                    verdicts.next().unwrap_or(Verdict::Ignored)
                }
            })
            .collect()
    }

    pub(super) fn admit_relayed(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        let chain_id = self.ledger.chain_id();
        // Transactions already pooled (a re-announcement of what this node took) are
        // ignored before any signature work; whether one is final is the pool's check.
        let known: Vec<bool> = {
            let pool = self.pool();
            txs.iter().map(|t| pool.contains(&t.hash())).collect()
        };
        let fresh: Vec<SignedTx> = txs
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(t, _)| *t)
            .collect();
        // One batch verification for the common all-valid case; the verdicts are
        // remembered, so the block that carries these transactions skips them.
        let all_signed = grapevine_ledger::tx::first_invalid_signature(&fresh).is_none();
        // "Already final?" for the whole batch in one lookup, outside the pool's lock.
        let looked_up = FinalityPrefetch::new(&self.ledger, &fresh);
        let mut verdicts = Vec::with_capacity(txs.len());
        let mut wake = false;
        let mut infos = Vec::new();
        let mut dropped_all = Vec::new();
        let now = Instant::now();
        {
            let mut pool = self.pool();
            let view = looked_up.view();
            for (t, known) in txs.iter().zip(known) {
                let hash = t.hash();
                if known {
                    verdicts.push(Verdict::Ignored);
                    continue;
                }
                if t.tx().chain_id != chain_id || (!all_signed && !t.verify()) {
                    verdicts.push(Verdict::Invalid);
                    continue;
                }
                match pool.submit_verified(*t, view, now) {
                    Ok(admitted) => {
                        wake |=
                            admitted.state == PoolState::Pending || !admitted.promoted.is_empty();
                        if let Some(info) =
                            pool.get(&hash).map(|(t, s)| self.pooled_info(hash, t, s))
                        {
                            infos.push(info);
                        }
                        infos.extend(
                            admitted.promoted.iter().filter_map(|h| {
                                pool.get(h).map(|(t, s)| self.pooled_info(*h, t, s))
                            }),
                        );
                        dropped_all.extend(admitted.dropped.into_iter().map(|(h, d)| (h, d, None)));
                        verdicts.push(Verdict::Accepted);
                    }
                    Err(
                        Refusal::Malformed(_) | Refusal::WrongChain { .. } | Refusal::BadSignature,
                    ) => {
                        verdicts.push(Verdict::Invalid);
                    }
                    Err(_) => verdicts.push(Verdict::Ignored),
                }
            }
        }
        self.publish_dropped(dropped_all);
        for info in infos {
            self.publish(info);
        }
        if wake {
            self.new_work.notify_one();
        }
        verdicts
    }
}

/// The ledger, with the "already final?" answers for some transactions looked up
/// together before admission takes the pool's lock.
pub(super) struct FinalityPrefetch<'a> {
    pub(super) ledger: &'a Ledger,
    /// The head height when they were looked up.
    pub(super) head: u64,
    pub(super) final_before: FastMap<Hash, bool>,
}

impl<'a> FinalityPrefetch<'a> {
    /// Looks up whether each of `txs` is final, in one call (none are known if the
    /// lookup fails: admission then asks the ledger one by one).
    pub(super) fn new(ledger: &'a Ledger, txs: &[SignedTx]) -> Self {
        let head = ledger.head().height;
        let hashes: Vec<Hash> = txs.iter().map(SignedTx::hash).collect();
        let final_before = match ledger.contains_txs(&hashes) {
            Ok(found) => hashes.into_iter().zip(found).collect(),
            Err(_) => FastMap::default(),
        };
        FinalityPrefetch {
            ledger,
            head,
            final_before,
        }
    }

    /// What admission reads under the pool's lock: these answers while the head has not
    /// moved since they were looked up, else the ledger itself. Blocks are written
    /// under that lock (`Node::commit_block`), so an unmoved head means none was.
    pub(super) fn view(&self) -> &dyn StateView {
        if self.ledger.head().height == self.head {
            self
        } else {
            self.ledger
        }
    }
}

impl StateView for FinalityPrefetch<'_> {
    fn account(&self, addr: &Address) -> Result<Option<grapevine_ledger::Account>, StoreError> {
        self.ledger.account(addr)
    }

    fn state_hash(&self) -> Result<LtHash, StoreError> {
        self.ledger.state_hash()
    }

    fn contains_tx(&self, hash: &Hash) -> Result<bool, StoreError> {
        match self.final_before.get(hash) {
            Some(f) => Ok(*f),
            None => self.ledger.contains_tx(hash),
        }
    }
}

impl grapevine_net::TxValidator for Node {
    fn validate(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        self.admit_from_peer(txs)
    }

    fn validate_many(&self, batches: &[Vec<SignedTx>]) -> Vec<Vec<Verdict>> {
        if batches.len() > 1 {
            // All signatures in as few batches as possible; the valid ones are
            // remembered, so each batch's admission below skips them. A batch check that
            // fails remembers nothing, and each source's own admission then finds the
            // invalid one among its own transactions: one peer's forgery costs the
            // others one batch check again, not one-by-one checks.
            self.preverify(batches.iter().flatten().copied());
        }
        batches.iter().map(|b| self.admit_from_peer(b)).collect()
    }
}

/// The reason each kind of mempool refusal is reported with (one sample of each).
#[cfg(test)]
pub(super) fn refusal_reasons() -> Vec<RejectReason> {
    let samples = [
        Refusal::Malformed(String::new()),
        Refusal::WrongChain {
            expected: 0,
            got: 1,
        },
        Refusal::BadSignature,
        Refusal::NonceTooLow {
            expected: 1,
            got: 0,
        },
        Refusal::InsufficientBalance {
            balance: 0,
            needed: 1,
        },
        Refusal::AlreadyKnown(Hash::ZERO),
        Refusal::AlreadyFinal(Hash::ZERO),
        Refusal::Underpriced {
            nonce: 0,
            old_fee: 1,
            min_fee: 2,
        },
        Refusal::Full { fee: 0, lowest: 1 },
        Refusal::SenderLimit(1),
        Refusal::NonceTooHigh {
            expected: 0,
            got: 9,
            max_ahead: 1,
        },
        Refusal::InBlock { nonce: 0 },
        Refusal::Busy {
            pooled: 1,
            backlog_ms: 1,
            min_fee: 1,
        },
        Refusal::FeeTooLow { fee: 0, min_fee: 1 },
    ];
    samples
        .iter()
        .filter_map(|r| match refusal_error(r, None) {
            ApiError::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}
