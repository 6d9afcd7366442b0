//! The consensus driver: runs the sans-IO [`Engine`] against the network, the mempool
//! and the ledger.
//!
//! One task owns the engine. It feeds it consensus messages from peers (after checking
//! their signatures, so only valid ones are relayed), timer expiries and the blocks it
//! builds from the mempool, and carries out the engine's actions in order: safety state
//! is written (synced) before any later action leaves the node, final blocks are
//! written with their certificates.
//!
//! Proposals whose blocks consensus checked are kept in the ledger's consensus records
//! until final (`kept`: bounded), so a restarted validator (even a lone one) still
//! knows the blocks its persisted highest QC points to; the sync server answers block
//! requests from them.
//!
//! This is the IO side of consensus; [`crate::consensus`] holds the pure parts.
//!
//! # Layout
//! - this file: the task ([`run`]): messages from the network, timers, block sync's
//!   client side, carrying out the engine's actions (persist, send, commit).
//! - `build`: building this node's proposals from the mempool, paced.
//! - `check`: the engine's block check (execution on the parent's state) and the
//!   cache of executions of unfinalized blocks.
//! - `kept`: the index of the kept proposals, and its bounds.
//! - [`safety_file`]: the validator's safety state on disk.
//! - [`serve`]: answering other nodes' block sync requests, on a task of its own,
//!   within byte budgets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use grapevine_ledger::state::validate_block;
use grapevine_ledger::{Address, Block, BlockHeader, Hash, Keypair, Ledger, codec};
use grapevine_net::network::MAX_CONSENSUS_BYTES;
use grapevine_net::{NetEvent, NetworkHandle, Offence};
use tokio::sync::{mpsc, watch};

use crate::consensus::engine::{Action, Engine, Evidence, MAX_HEIGHTS_AHEAD, Timing};
use crate::consensus::leader::History;
use crate::consensus::sync::{Progress, SyncMsg, Syncer};
use crate::consensus::types::{
    Certificate, ConsensusMsg, Proposal, QuorumCert, SafetyState, ValidatorIndex, ValidatorSet,
};
use crate::node::Node;

mod build;
mod check;
pub mod kept;
pub mod safety_file;
pub mod serve;

use check::{ExecCache, LedgerCheck, lock};
use kept::{PROPOSAL_PREFIX, SharedKept, proposal_key};

/// How often sync looks at peers' heights and its requests.
const SYNC_TICK: Duration = Duration::from_millis(250);
/// How often a node tells its peers its final height.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress is logged while syncing.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Consensus settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Round timeouts.
    pub timing: Timing,
    /// Most transactions in a proposed block.
    pub max_block_txs: usize,
    /// How long a leader with nothing to include waits for transactions before it
    /// proposes an empty block (keep it well under the round timeout).
    pub idle_block: Duration,
    /// The least time between a block's timestamp and its child's proposal (zero: propose
    /// as soon as there is something to include). Fewer, larger blocks cost less CPU per
    /// transaction and add up to three times this to finality.
    pub min_block_interval: Duration,
}

/// Everything the driver needs to start.
#[derive(Debug)]
pub struct Setup {
    /// The validator set from genesis.
    pub set: ValidatorSet,
    /// This node's validator key, if it is a validator.
    pub validator_key: Option<Keypair>,
    /// Where a validator keeps its safety state (required with a validator key).
    pub safety_file: Option<safety_file::SafetyFile>,
    /// Settings.
    pub config: Config,
    /// The index of kept proposals, shared with the sync server.
    pub kept: SharedKept,
    /// Start a validator past height 0 whose safety state file is missing (see
    /// `grapevine run --allow-missing-safety-state`).
    pub allow_missing_safety_state: bool,
}

struct Driver {
    node: Arc<Node>,
    ledger: Arc<Ledger>,
    net: NetworkHandle,
    engine: Engine,
    set: ValidatorSet,
    me: Option<ValidatorIndex>,
    proposer: Address,
    cache: Arc<Mutex<ExecCache>>,
    /// Answers the engine's block checks.
    check: LedgerCheck,
    cfg: Config,
    genesis_block: Hash,
    epoch: Instant,
    timer: Option<u64>,
    build: Option<(u64, Block, Instant)>,
    local: VecDeque<ConsensusMsg>,
    kept: SharedKept,
    syncer: Syncer,
    safety_file: Option<safety_file::SafetyFile>,
    last_status: Instant,
    last_progress_log: Instant,
    status_nonce: u64,
    was_syncing: bool,
}

/// Runs consensus until `stop` turns true, taking consensus messages from `events`
/// and the block sync messages the sync server passes on (`Status`, `Blocks`) from
/// `sync`. Returns an error if the node can no longer take part safely (its safety
/// state or a final block cannot be written).
pub async fn run(
    node: Arc<Node>,
    setup: Setup,
    net: NetworkHandle,
    mut events: mpsc::Receiver<NetEvent>,
    mut sync: mpsc::Receiver<(Address, SyncMsg)>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ledger = node.ledger().clone();
    let genesis_block = ledger
        .block(0)?
        .context("the ledger has no genesis block")?
        .block
        .hash();
    let head = ledger.head();
    let committed = ledger
        .block(head.height)?
        .context("the ledger's head block is missing")?
        .block;
    let stored = match &setup.safety_file {
        Some(f) => f.load()?,
        None => None,
    };
    let safety = match (stored, &setup.safety_file) {
        (Some(s), _) => s,
        (None, None) => SafetyState {
            last_voted_round: 0,
            high_qc: QuorumCert::genesis(genesis_block),
        },
        (None, Some(f)) => {
            if head.height > 0 {
                anyhow::ensure!(
                    setup.allow_missing_safety_state,
                    "the consensus safety state file {} is missing, but this validator's \
                     chain is at height {}: it may have signed before, and without the file \
                     it could sign two conflicting messages in one round. Restore the file; \
                     or, only if this key never signed on this chain (or the file is lost \
                     for good and you accept the risk), start once with \
                     --allow-missing-safety-state",
                    f.path().display(),
                    head.height
                );
                tracing::warn!(
                    path = %f.path().display(),
                    "no consensus safety state; starting as a validator that never signed \
                     (--allow-missing-safety-state)"
                );
            }
            let s = SafetyState {
                last_voted_round: 0,
                high_qc: QuorumCert::genesis(genesis_block),
            };
            // Written now, so that from here on a missing file means a removed one.
            tokio::task::block_in_place(|| f.store(&s))
                .context("cannot write the consensus safety state")?;
            s
        }
    };
    let me = match &setup.validator_key {
        Some(k) => Some(setup.set.index_of(&k.address()).with_context(|| {
            format!(
                "validator key {} is not in the genesis validator set",
                k.address()
            )
        })?),
        None => None,
    };
    let proposer = setup
        .validator_key
        .as_ref()
        .map(Keypair::address)
        .unwrap_or_default();
    let cache = Arc::new(Mutex::new(ExecCache::default()));
    let check = LedgerCheck {
        node: node.clone(),
        cache: cache.clone(),
    };
    let history = tokio::task::block_in_place(|| load_history(&ledger, &setup.set, head.height))?;
    let engine = Engine::new(
        setup.set.clone(),
        me.zip(setup.validator_key),
        genesis_block,
        committed,
        safety,
        setup.config.timing,
        history,
    );
    tracing::info!(
        safety_state = ?setup.safety_file.as_ref().map(|f| f.path().display().to_string()),
        validators = setup.set.len(),
        validator = ?me,
        height = head.height,
        round = engine.round(),
        "consensus starting"
    );
    let mut d = Driver {
        node,
        ledger,
        net,
        engine,
        set: setup.set,
        me,
        proposer,
        cache,
        check,
        cfg: setup.config,
        genesis_block,
        epoch: Instant::now(),
        timer: None,
        build: None,
        local: VecDeque::new(),
        kept: setup.kept,
        syncer: Syncer::default(),
        safety_file: setup.safety_file.clone(),
        last_status: Instant::now() - STATUS_INTERVAL,
        last_progress_log: Instant::now(),
        status_nonce: 0,
        was_syncing: false,
    };
    d.node.set_leader_weights(&d.engine.leader_weights());
    let now = d.now();
    d.engine.start(now);
    d.drain().await?;
    d.replay_kept_proposals().await?;

    let mut sync_tick = tokio::time::interval(SYNC_TICK);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timer_at = d.timer.map(|t| d.epoch + Duration::from_millis(t));
        let build_at = d.build.as_ref().map(|(_, parent, since)| {
            let paced = d.paced_at(parent, *since);
            if paced > Instant::now() {
                paced
            } else {
                *since + d.cfg.idle_block
            }
        });
        tokio::select! {
            ev = events.recv() => match ev {
                Some(NetEvent::Consensus { from, payload }) => d.on_net(from, payload).await,
                Some(NetEvent::Sync { .. }) => {}
                None => {
                    tracing::info!("network stopped; consensus stops");
                    return Ok(());
                }
            },
            () = sleep_until(timer_at) => {
                d.timer = None;
                let now = d.now();
                d.engine.handle_timer(now);
            }
            () = sleep_until(build_at) => {}
            () = d.node.new_work.notified(), if d.build.is_some() => {}
            Some((from, msg)) = sync.recv() => d.on_sync(from, msg).await,
            _ = sync_tick.tick() => d.sync_tick().await,
            () = crate::runtime::stopped(&mut stop) => return Ok(()),
        }
        d.maybe_build();
        d.drain().await?;
    }
}

async fn broadcast(net: &NetworkHandle, msg: &ConsensusMsg) {
    net.broadcast_consensus(Bytes::from(codec::encode(msg)))
        .await;
}

async fn send_sync(net: &NetworkHandle, to: Address, msg: SyncMsg) {
    net.send_sync_to(to, Bytes::from(codec::encode(&msg))).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Feeds the proposals kept from before a restart back to the engine, oldest
    /// first, so it knows the unfinalized blocks its certificates point to. Reads one
    /// at a time (memory: one proposal, whatever the disk holds); deletes what is
    /// final, unreadable, too far ahead, or beyond the index's count (the lowest).
    async fn replay_kept_proposals(&mut self) -> anyhow::Result<()> {
        let final_height = self.ledger.head().height;
        let mut keys = Vec::new();
        self.ledger
            .consensus_for_each_key(PROPOSAL_PREFIX, &mut |k| keys.push(k.to_vec()))?;
        // Keys sort by height: past the count bound, the lowest go unread.
        let excess = keys.len().saturating_sub(kept::MAX_KEPT);
        let mut stale: Vec<Vec<u8>> = keys.drain(..excess).collect();
        for key in keys {
            let value = tokio::task::block_in_place(|| self.ledger.consensus_get(&key))?;
            let decoded = value.map(|v| {
                let size = v.len() as u64;
                codec::decode::<Proposal>(&v, MAX_CONSENSUS_BYTES as u64).map(|p| (p, size))
            });
            let (p, size) = match decoded {
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dropping an unreadable kept proposal");
                    stale.push(key);
                    continue;
                }
                None => continue,
            };
            let height = p.block.header.height;
            let hash = p.block.hash();
            if height <= final_height
                || height > final_height.saturating_add(MAX_HEIGHTS_AHEAD)
                || key != proposal_key(height, &hash)
            {
                stale.push(key);
                continue;
            }
            stale.extend(kept::lock(&self.kept).insert(height, hash, size));
            let now = self.now();
            self.engine.handle_replayed(now, p);
            self.drain().await?;
        }
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "deleting kept proposals that are final, unreadable or beyond the bounds"
            );
        }
        self.ledger.consensus_delete(&stale)?;
        self.publish_kept();
        Ok(())
    }

    fn publish_kept(&self) {
        let k = kept::lock(&self.kept);
        self.node.set_kept_proposals(k.len(), k.bytes());
    }

    /// Keeps a proposal consensus accepted or built, synced, before the vote for it
    /// leaves; the lowest kept ones go when the index is past its bounds. An error
    /// (the write failed) stops consensus, as a failed safety-state write does: the
    /// node must not vote for what it could not keep.
    fn keep_proposal(&mut self, p: &Proposal) -> anyhow::Result<()> {
        let height = p.block.header.height;
        let hash = p.block.hash();
        if height <= self.ledger.head().height || kept::lock(&self.kept).contains(&hash) {
            return Ok(());
        }
        let bytes = codec::encode(p);
        let key = proposal_key(height, &hash);
        // Synced: the safety state is in a file of its own, so no later synced ledger
        // write is certain to come before a crash. Off the async workers.
        tokio::task::block_in_place(|| self.ledger.consensus_put(&key, &bytes))
            .context("cannot keep a proposal for restart; stopping consensus")?;
        let evicted = kept::lock(&self.kept).insert(height, hash, bytes.len() as u64);
        if !evicted.is_empty() {
            tracing::warn!(
                count = evicted.len(),
                "the kept proposals are at their bound: dropping the lowest"
            );
            self.ledger.consensus_delete(&evicted)?;
        }
        self.publish_kept();
        Ok(())
    }

    /// A consensus message from peer `from`: checked, relayed if valid, then handed to
    /// the engine.
    async fn on_net(&mut self, from: Address, payload: Bytes) {
        let msg = match codec::decode::<ConsensusMsg>(&payload, MAX_CONSENSUS_BYTES as u64) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "undecodable consensus message");
                self.net
                    .report(
                        from,
                        Offence::InvalidConsensus,
                        "undecodable consensus message",
                    )
                    .await;
                return;
            }
        };
        if matches!(msg, ConsensusMsg::BlockRequest(_)) {
            // Block requests travel as sync messages (`SyncMsg::BlockRequest`).
            return;
        }
        // Only what may still count and does not conflict with what its signer sent
        // before goes on: a late copy (a retransmission taken again after the
        // network's seen window, a replay) or an equivocation must not echo through
        // the network. The engine judges those itself, without relaying.
        if !self.engine.relayable(&msg) {
            let now = self.now();
            self.engine.handle_message(now, None, msg);
            return;
        }
        if !self.signed(&msg) || !self.engine.certified(&msg) {
            self.net
                .report(
                    from,
                    Offence::InvalidConsensus,
                    "consensus message with a bad signature or certificate",
                )
                .await;
            return;
        }
        self.net.relay_consensus(payload, from).await;
        let now = self.now();
        self.engine.handle_message(now, None, msg);
    }

    /// Whether `msg` carries its signer's valid signature (certificates verify in the
    /// engine).
    fn signed(&self, msg: &ConsensusMsg) -> bool {
        match msg {
            ConsensusMsg::Proposal(p) => p.verify_signed(&self.set),
            ConsensusMsg::Vote(v) => v.verify(&self.set),
            ConsensusMsg::Timeout(t) => t.verify_signed(&self.set),
            ConsensusMsg::BlockRequest(_) | ConsensusMsg::Sync { .. } => true,
        }
    }

    /// Every [`SYNC_TICK`]: tells peers the final height now and then, sends the block
    /// requests sync wants, publishes and logs progress.
    async fn sync_tick(&mut self) {
        let now = Instant::now();
        let local = self.ledger.head().height;
        if now.duration_since(self.last_status) >= STATUS_INTERVAL {
            self.last_status = now;
            self.status_nonce += 1;
            let msg = SyncMsg::Status {
                final_height: local,
                nonce: self.status_nonce,
            };
            self.net
                .broadcast_sync(Bytes::from(codec::encode(&msg)))
                .await;
        }
        for (peer, msg) in self.syncer.poll(local, now) {
            send_sync(&self.net, peer, msg).await;
        }
        let p = self.syncer.progress(local, now);
        self.node.set_sync_progress(p);
        if p.syncing && !self.was_syncing {
            tracing::info!(
                height = p.current,
                target = p.target,
                "behind the network: syncing final blocks from peers"
            );
            self.last_progress_log = now;
        } else if !p.syncing && self.was_syncing {
            tracing::info!(height = p.current, "caught up with the network");
        } else if p.syncing && now.duration_since(self.last_progress_log) >= PROGRESS_LOG_INTERVAL {
            self.last_progress_log = now;
            log_progress(&p);
        }
        self.was_syncing = p.syncing;
    }

    /// A `Status` or `Blocks` message the sync server passed on (it answers
    /// `GetBlocks` itself, off this task: [`serve`]).
    async fn on_sync(&mut self, from: Address, msg: SyncMsg) {
        match msg {
            SyncMsg::Status { final_height, .. } => self.syncer.on_status(from, final_height),
            // The sync server answers these itself.
            SyncMsg::GetBlocks { .. } | SyncMsg::BlockRequest { .. } => {}
            SyncMsg::Proposal(p) => {
                // Only an answer to this node's own request is worth its checks.
                if !self.engine.wants(&p.block.hash()) {
                    return;
                }
                if !p.verify_signed(&self.set) {
                    self.net
                        .report(
                            from,
                            Offence::InvalidConsensus,
                            "answered a block request with a badly signed proposal",
                        )
                        .await;
                    return;
                }
                let now = self.now();
                self.engine
                    .handle_message(now, None, ConsensusMsg::Proposal(p));
            }
            SyncMsg::Blocks { id, blocks } => {
                let (set, genesis) = (&self.set, &self.genesis_block);
                if let Err(e) = self
                    .syncer
                    .on_blocks(from, id, blocks, |h, c| c.verify(h, set, genesis))
                {
                    tracing::warn!(peer = %from, error = %e, "refusing a block sync answer");
                    self.net
                        .report(from, Offence::InvalidConsensus, "invalid block sync answer")
                        .await;
                    return;
                }
                match tokio::task::block_in_place(|| self.apply_synced()) {
                    Ok(Some(bad_peer)) => {
                        self.net
                            .report(
                                bad_peer,
                                Offence::InvalidConsensus,
                                "served a block that does not execute",
                            )
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "writing synced blocks failed")
                    }
                }
            }
        }
    }

    /// Executes and writes the blocks sync has proven final, then moves the engine on.
    /// Returns the peer that served a block that does not execute, if one did.
    fn apply_synced(&mut self) -> anyhow::Result<Option<Address>> {
        let ready = self.syncer.ready(&self.ledger.head());
        let mut last = None;
        let mut bad = None;
        for (block, cert, peer) in ready {
            let head = self.ledger.head();
            let exec = match validate_block(&*self.ledger, self.ledger.chain_id(), &head, &block) {
                Ok(e) => e,
                Err(e) => {
                    // A quorum certified it, so this means our own state is wrong or
                    // the certificates lie; either way, not from this peer again.
                    tracing::error!(height = block.header.height, peer = %peer, error = %e, "a certified block does not execute here");
                    self.syncer.reject(peer, block.header.height);
                    bad = Some(peer);
                    break;
                }
            };
            self.node
                .commit_block(&block, &cert.to_bytes(), &exec, false)
                .with_context(|| format!("cannot write synced block {}", block.header.height))?;
            self.engine.record_final(&block.header, &cert);
            last = Some((block, cert));
        }
        if let Some((block, cert)) = last {
            let qc = cert.commit.map(|(_, qc)| qc);
            let now = self.now();
            self.engine.synced_to(now, block, qc);
            self.forget_final()?;
        }
        Ok(bad)
    }

    /// Carries out the engine's actions, delivering messages to self, until none are
    /// left.
    async fn drain(&mut self) -> anyhow::Result<()> {
        loop {
            while let Some(a) = self.engine.poll_action() {
                self.act(a).await?;
            }
            let Some(msg) = self.local.pop_front() else {
                return Ok(());
            };
            let now = self.now();
            let me = self.me;
            self.engine.handle_message(now, me, msg);
        }
    }

    async fn act(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Persist(s) => {
                // Synced before anything signed after it leaves the node.
                if let Some(f) = &self.safety_file {
                    tokio::task::block_in_place(|| f.store(&s))
                        .context("cannot persist the consensus safety state; stopping consensus")?;
                }
            }
            Action::Send(_, ConsensusMsg::BlockRequest(hash))
            | Action::Broadcast(ConsensusMsg::BlockRequest(hash)) => {
                // Peers answer it with the proposal; on the sync channel it is never
                // dropped as a copy of another node's request for the same block.
                let msg = SyncMsg::BlockRequest { hash };
                self.net
                    .broadcast_sync(Bytes::from(codec::encode(&msg)))
                    .await;
            }
            Action::Send(to, msg) => {
                if Some(to) == self.me {
                    self.local.push_back(msg);
                } else {
                    broadcast(&self.net, &msg).await;
                }
            }
            Action::Broadcast(msg) => broadcast(&self.net, &msg).await,
            Action::Keep(p) => self.keep_proposal(&p)?,
            Action::Evidence(e) => self.on_evidence(&e),
            Action::Commit { blocks } => {
                tokio::task::block_in_place(|| self.commit(blocks))?;
                self.node.set_leader_weights(&self.engine.leader_weights());
            }
            Action::SetTimer(at) => self.timer = Some(at),
            Action::CheckBlock { block, parent } => {
                // Executes the block: off the async workers' queue.
                let valid = tokio::task::block_in_place(|| self.check.check(&block, &parent));
                let now = self.now();
                self.engine.handle_block_checked(now, &block.hash(), valid);
            }
            Action::BuildBlock { round, parent } => {
                self.build = Some((round, parent, Instant::now()));
            }
        }
        Ok(())
    }

    /// A validator equivocated: logged and counted. Its peer is not penalized: the
    /// conflicting message usually arrives through honest peers relaying what they
    /// took first, and the signer's network identity is not known.
    fn on_evidence(&self, e: &Evidence) {
        let (kind, round, first, second) = match e {
            Evidence::Proposal {
                round,
                first,
                second,
                ..
            } => ("proposal", round, first, second),
            Evidence::Vote {
                round,
                first,
                second,
                ..
            } => ("vote", round, first, second),
        };
        let signer = self.set.key(e.signer()).copied().unwrap_or_default();
        tracing::warn!(
            validator = %signer,
            kind,
            round,
            first = %first,
            second = %second,
            "equivocation: a validator signed two conflicting messages in one round"
        );
        self.node.count_equivocation(kind);
    }

    fn commit(&mut self, blocks: Vec<(Block, Certificate)>) -> anyhow::Result<()> {
        for (block, cert) in blocks {
            let hash = block.hash();
            let head = self.ledger.head();
            if block.header.height <= head.height {
                // Block sync wrote it already; it must be the same block.
                let stored = self
                    .ledger
                    .block(block.header.height)?
                    .map(|b| b.block.hash());
                anyhow::ensure!(
                    stored == Some(hash),
                    "consensus finalized block {} ({hash}) but the ledger holds another at that height; refusing to fork",
                    block.header.height
                );
                continue;
            }
            let cached = lock(&self.cache).map.get(&hash).map(|(_, e)| e.clone());
            let exec = match cached {
                Some(e) => e,
                None => {
                    // Checked before a restart: execute it again on the head.
                    let head = self.ledger.head();
                    Arc::new(
                        validate_block(&*self.ledger, self.ledger.chain_id(), &head, &block)
                            .with_context(|| {
                                format!("final block {} does not execute", block.header.height)
                            })?,
                    )
                }
            };
            // The engine built this proof; checking it (a handful of signatures) keeps
            // an engine bug from writing a block nobody could prove final.
            anyhow::ensure!(
                cert.verify(&block.header, &self.set, &self.genesis_block),
                "the certificate of final block {} does not verify; refusing to write it",
                block.header.height
            );
            self.node
                .commit_block(&block, &cert.to_bytes(), &exec, true)
                .with_context(|| format!("cannot write final block {}", block.header.height))?;
        }
        self.forget_final()
    }

    /// Drops what final blocks made useless: cached executions, and kept proposals
    /// more than [`kept::KEPT_BELOW_FINAL`] heights below the final one.
    fn forget_final(&mut self) -> anyhow::Result<()> {
        let final_height = self.ledger.head().height;
        lock(&self.cache).prune(final_height);
        // Below that, kept proposals (and forks there) are of use to nobody.
        let stale =
            kept::lock(&self.kept).prune(final_height.saturating_sub(kept::KEPT_BELOW_FINAL));
        self.ledger.consensus_delete(&stale)?;
        self.publish_kept();
        Ok(())
    }
}

fn log_progress(p: &Progress) {
    match p.eta_seconds {
        Some(eta) => tracing::info!(
            height = p.current,
            target = p.target,
            blocks_per_second = format!("{:.1}", p.blocks_per_second),
            eta_seconds = format!("{eta:.0}"),
            "syncing"
        ),
        None => tracing::info!(height = p.current, target = p.target, "syncing"),
    }
}

/// The final chain's last [`History::wanted`] blocks up to `head` (or all of it from
/// genesis), with their certificates, for the leader election.
/// Reads further back (up to eight times as far, or from genesis) while the next
/// round's leader cannot be told from what was read: a run of rounds without two-chains
/// can put the anchor below the usual reach, and a node that cannot tell does not vote.
fn load_history(ledger: &Ledger, set: &ValidatorSet, head: u64) -> anyhow::Result<History> {
    let mut reach = History::wanted(set);
    loop {
        let history = load_history_from(ledger, set, head, head.saturating_sub(reach))?;
        let round = ledger.head().round;
        let known = history
            .anchor_below(head)
            .and_then(|a| history.leader(round.saturating_add(1), a, round))
            .is_some();
        if known || reach >= head || reach >= 8 * History::wanted(set) {
            return Ok(history);
        }
        reach *= 2;
    }
}

fn load_history_from(
    ledger: &Ledger,
    set: &ValidatorSet,
    head: u64,
    from: u64,
) -> anyhow::Result<History> {
    let read = |h: u64| -> anyhow::Result<(BlockHeader, Option<Certificate>)> {
        let b = ledger
            .block(h)?
            .with_context(|| format!("final block {h} is missing from the ledger"))?;
        // Genesis and a dev chain's blocks have no certificate.
        let cert = Certificate::from_bytes(&b.certificate).ok();
        Ok((b.block.header, cert))
    };
    let (first, cert) = read(from)?;
    let mut history = if from == 0 {
        History::new(set.clone(), &first)
    } else {
        History::starting_at(set.clone(), &first, cert.as_ref())
    };
    for h in from + 1..=head {
        let (header, cert) = read(h)?;
        history.push(&header, cert.as_ref(), None);
    }
    Ok(history)
}
