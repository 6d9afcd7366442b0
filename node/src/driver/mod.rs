//! The consensus driver: runs the sans-IO [`Engine`] against the network, the mempool
//! and the ledger.
//!
//! One task owns the engine. It feeds it consensus messages from peers (after checking
//! their signatures, so only valid ones are relayed), timer expiries and the blocks it
//! builds from the mempool, and carries out the engine's actions in order: safety state
//! is written (synced) before any later action leaves the node, final blocks are
//! written with their certificates.
//!
//! Proposals this node has checked are kept in the ledger's consensus records until
//! final, so a restarted validator (even a lone one) still knows the blocks its
//! persisted highest QC points to.
//!
//! This is the IO side of consensus; [`crate::consensus`] holds the pure parts.
//!
//! # Layout
//! - this file: the task ([`run`]): messages from the network, timers, block sync's
//!   client side, carrying out the engine's actions (persist, send, commit).
//! - `build`: building this node's proposals from the mempool, paced.
//! - `check`: the engine's block check (execution on the parent's state) and the
//!   cache of executions of unfinalized blocks.
//! - [`safety_file`]: the validator's safety state on disk.
//! - [`serve`]: answering other nodes' block sync requests, on a task of its own,
//!   within byte budgets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use grapevine_ledger::state::validate_block;
use grapevine_ledger::{Address, Block, Hash, Keypair, Ledger, codec};
use grapevine_net::network::MAX_CONSENSUS_BYTES;
use grapevine_net::{NetEvent, NetworkHandle, Offence};
use tokio::sync::{mpsc, watch};

use crate::consensus::engine::{Action, Engine, Timing};
use crate::consensus::sync::{Progress, SyncMsg, Syncer};
use crate::consensus::types::{
    Certificate, ConsensusMsg, Proposal, QuorumCert, SafetyState, ValidatorIndex, ValidatorSet,
};
use crate::node::Node;

mod build;
mod check;
pub mod safety_file;
pub mod serve;

use check::{ExecCache, LedgerCheck, lock};

/// How often sync looks at peers' heights and its requests.
const SYNC_TICK: Duration = Duration::from_millis(250);
/// How often a node tells its peers its final height.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress is logged while syncing.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Prefix of kept proposals: prefix || height (BE) || block hash.
const PROPOSAL_PREFIX: &[u8] = b"proposal/";
/// Consensus messages of rounds this far behind the engine's are still relayed; older
/// ones are not.
const RELAY_ROUNDS_BEHIND: u64 = 2;
/// A block request for the same block is answered at most this often.
const ANSWER_INTERVAL: Duration = Duration::from_millis(200);

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

fn proposal_key(height: u64, hash: &Hash) -> Vec<u8> {
    [PROPOSAL_PREFIX, &height.to_be_bytes(), &hash.0].concat()
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
    answered: HashMap<Hash, Instant>,
    /// Keys of the kept proposals, by height.
    kept: std::collections::BTreeMap<u64, Vec<Vec<u8>>>,
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
    if stored.is_none() && setup.validator_key.is_some() && head.height > 0 {
        tracing::warn!(
            "no consensus safety state found; starting as a validator that never signed. \
             If this validator signed before and its state file was removed, it could sign \
             twice in a round"
        );
    }
    let safety = stored.unwrap_or_else(|| SafetyState {
        last_voted_round: 0,
        high_qc: QuorumCert::genesis(genesis_block),
    });
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
    let engine = Engine::new(
        setup.set.clone(),
        me.zip(setup.validator_key),
        genesis_block,
        committed,
        safety,
        setup.config.timing,
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
        answered: HashMap::new(),
        kept: std::collections::BTreeMap::new(),
        syncer: Syncer::default(),
        safety_file: setup.safety_file.clone(),
        last_status: Instant::now() - STATUS_INTERVAL,
        last_progress_log: Instant::now(),
        status_nonce: 0,
        was_syncing: false,
    };
    let now = d.now();
    d.engine.start(now);
    tokio::task::block_in_place(|| d.replay_kept_proposals())?;
    d.drain().await?;

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
    /// first, so it knows the unfinalized blocks its certificates point to.
    fn replay_kept_proposals(&mut self) -> anyhow::Result<()> {
        let final_height = self.ledger.head().height;
        let mut stale = Vec::new();
        let mut kept = Vec::new();
        for (key, value) in self.ledger.consensus_scan(PROPOSAL_PREFIX)? {
            match codec::decode::<Proposal>(&value, MAX_CONSENSUS_BYTES as u64) {
                Ok(p) if p.block.header.height > final_height => {
                    self.kept
                        .entry(p.block.header.height)
                        .or_default()
                        .push(key);
                    kept.push(p);
                }
                Ok(_) => stale.push(key),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an unreadable kept proposal");
                    stale.push(key);
                }
            }
        }
        self.ledger.consensus_delete(&stale)?;
        let now = self.now();
        for p in kept {
            self.engine
                .handle_message(now, None, ConsensusMsg::Proposal(Box::new(p)));
        }
        Ok(())
    }

    fn keep_proposal(&mut self, p: &Proposal) {
        let height = p.block.header.height;
        if height <= self.ledger.head().height {
            return;
        }
        let key = proposal_key(height, &p.block.hash());
        // Synced: the safety state is in a file of its own, so no later synced ledger
        // write is certain to come before a crash.
        let write = || self.ledger.consensus_put(&key, &codec::encode(p));
        // A synced write: off the async workers.
        match tokio::task::block_in_place(write) {
            Ok(()) => self.kept.entry(height).or_default().push(key),
            Err(e) => tracing::warn!(error = %e, "cannot keep a proposal for restart"),
        }
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
        let valid = match &msg {
            ConsensusMsg::Proposal(p) => p.verify_signed(&self.set),
            ConsensusMsg::Vote(v) => v.verify(&self.set),
            ConsensusMsg::Timeout(t) => t.verify_signed(&self.set),
            ConsensusMsg::BlockRequest(hash) => {
                self.answer_request(*hash).await;
                return;
            }
            // Certificates verify inside the engine; a sync hint is not relayed.
            ConsensusMsg::Sync { .. } => true,
        };
        if !valid {
            self.net
                .report(
                    from,
                    Offence::InvalidConsensus,
                    "consensus message with a bad signature",
                )
                .await;
            return;
        }
        // Only what is still current goes on: a late copy of an old message (a
        // retransmission taken again after the network's seen window, or a replay)
        // helps nobody and must not echo through the network.
        let round = match &msg {
            ConsensusMsg::Proposal(p) => Some(p.round()),
            ConsensusMsg::Vote(v) => Some(v.round),
            ConsensusMsg::Timeout(t) => Some(t.round),
            ConsensusMsg::BlockRequest(_) | ConsensusMsg::Sync { .. } => None,
        };
        if round.is_some_and(|r| r + RELAY_ROUNDS_BEHIND >= self.engine.round()) {
            self.net.relay_consensus(payload, from).await;
        }
        if let ConsensusMsg::Proposal(p) = &msg {
            self.keep_proposal(p);
        }
        let now = self.now();
        self.engine.handle_message(now, None, msg);
    }

    async fn answer_request(&mut self, hash: Hash) {
        let now = Instant::now();
        if self
            .answered
            .get(&hash)
            .is_some_and(|at| now.duration_since(*at) < ANSWER_INTERVAL)
        {
            return;
        }
        let Some(p) = self.engine.proposal(&hash).cloned() else {
            return;
        };
        if self.answered.len() > 1024 {
            self.answered.clear();
        }
        self.answered.insert(hash, now);
        broadcast(&self.net, &ConsensusMsg::Proposal(Box::new(p))).await;
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
            SyncMsg::GetBlocks { .. } => {}
            SyncMsg::BlockRequest { hash } => self.answer_request(hash).await,
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
            Action::Broadcast(msg) => {
                if let ConsensusMsg::Proposal(p) = &msg {
                    self.keep_proposal(p);
                }
                broadcast(&self.net, &msg).await;
            }
            Action::Commit { blocks } => {
                tokio::task::block_in_place(|| self.commit(blocks))?;
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

    /// Drops what final blocks made useless: cached executions and kept proposals at
    /// or below the final height.
    fn forget_final(&mut self) -> anyhow::Result<()> {
        let final_height = self.ledger.head().height;
        lock(&self.cache).prune(final_height);
        // Kept proposals of final heights (and of forks there) are no longer needed.
        let above = self.kept.split_off(&(final_height + 1));
        let stale: Vec<Vec<u8>> = std::mem::replace(&mut self.kept, above)
            .into_values()
            .flatten()
            .collect();
        self.ledger.consensus_delete(&stale)?;
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
