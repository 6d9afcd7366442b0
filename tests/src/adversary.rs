//! An adversary for process tests: it links to a node as a peer with the real
//! handshake (Noise, signed hello) and sends crafted traffic as fast as the link takes
//! it; as a Byzantine validator it signs consensus messages with one of a testnet's
//! validator keys.
//!
//! A link the node closes (a ban) is dialed again with a fresh node key after a pause,
//! so the pressure lasts (loopback is exempt from address bans).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grapevine_consensus::types::{
    ConsensusMsg, Proposal, QuorumCert, ValidatorIndex, ValidatorSet, Vote, vote_bytes,
};
use grapevine_ledger::seeded::SeededRng;
use grapevine_ledger::{Address, Block, BlockHeader, Hash, Keypair, codec};
use grapevine_net::message::Message;
use grapevine_net::secure::{self, LocalIdentity};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::NodeProcess;

/// Limit for a TCP connect, a handshake, or one message's send.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a link the node closed is dialed again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);

/// What a peer must share with a node to be accepted.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    /// The chain id.
    pub id: u32,
    /// The genesis block's hash.
    pub genesis: Hash,
}

impl Chain {
    /// The chain `node` is on (from `getStatus`).
    pub fn of(node: &NodeProcess) -> Chain {
        let status = node.result("getStatus", serde_json::json!([]));
        Chain {
            id: status["chainId"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .expect("getStatus gives chainId"),
            genesis: status["genesisHash"]
                .as_str()
                .and_then(|h| h.parse().ok())
                .expect("getStatus gives genesisHash"),
        }
    }
}

/// A node key no link has used (a banned key is refused for a while).
pub fn fresh_node_key() -> Keypair {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut seed = [0x5au8; 32];
    seed[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    seed[8..16].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    Keypair::from_seed(&seed)
}

/// What one flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Messages written to a link.
    pub sent: u64,
    /// Links made (the first, and one per reconnection).
    pub links: u64,
    /// Links the node closed or stopped reading from for [`LINK_TIMEOUT`].
    pub closed_by_node: u64,
}

/// Sends every message `messages` yields to the node at `addr`, as fast as the link
/// takes them, answering its pings; stops when `messages` is exhausted or at
/// `deadline`. A link the node ends is replaced by a fresh key's.
pub async fn flood(
    addr: SocketAddr,
    chain: Chain,
    mut messages: impl Iterator<Item = Message> + Send,
    deadline: Instant,
) -> FloodReport {
    let mut report = FloodReport::default();
    let mut pending: Option<Message> = None;
    while Instant::now() < deadline {
        let Ok(link) = connect(addr, chain).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        report.links += 1;
        let secure::Link {
            mut reader,
            mut writer,
            ..
        } = link;
        let (ping_tx, mut pings) = tokio::sync::mpsc::channel::<u64>(16);
        let reading = tokio::spawn(async move {
            while let Ok((msg, _)) = reader.recv().await {
                if let Message::Ping(p) = msg {
                    let _ = ping_tx.try_send(p);
                }
            }
        });
        let ended = loop {
            if Instant::now() >= deadline {
                break false;
            }
            if let Ok(p) = pings.try_recv()
                && !send(&mut writer, &Message::Pong(p)).await
            {
                break true;
            }
            let Some(msg) = pending.take().or_else(|| messages.next()) else {
                reading.abort();
                return report;
            };
            if !send(&mut writer, &msg).await {
                pending = Some(msg);
                break true;
            }
            report.sent += 1;
        };
        reading.abort();
        if ended {
            report.closed_by_node += 1;
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
    report
}

/// Dials `addr` with a fresh node key and completes the real handshake (each step
/// within [`LINK_TIMEOUT`]); `Err` says which step failed.
pub async fn connect(addr: SocketAddr, chain: Chain) -> Result<secure::Link, String> {
    let me = LocalIdentity {
        node_key: fresh_node_key(),
        chain_id: chain.id,
        genesis_hash: chain.genesis,
        listen_port: 0,
        external: Default::default(),
    };
    let stream = tokio::time::timeout(LINK_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dialing {addr} timed out"))?
        .map_err(|e| format!("dialing {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    tokio::time::timeout(LINK_TIMEOUT, secure::handshake(stream, true, &me))
        .await
        .map_err(|_| format!("handshake with {addr} timed out"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))
}

async fn send(writer: &mut secure::LinkWriter, msg: &Message) -> bool {
    matches!(
        tokio::time::timeout(LINK_TIMEOUT, writer.send(msg)).await,
        Ok(Ok(_))
    )
}

/// A Byzantine validator: holds one of a testnet's validator keys and signs whatever
/// it is asked to.
#[derive(Debug)]
pub struct Byzantine {
    key: Keypair,
    index: ValidatorIndex,
    set: ValidatorSet,
    rng: SeededRng,
}

impl Byzantine {
    /// Validator `name` (e.g. "validator0") of the testnet generated in `out`.
    pub fn from_testnet(out: &Path, name: &str, seed: u64) -> Byzantine {
        let read = |p: &Path| -> Value {
            serde_json::from_slice(&std::fs::read(p).expect("readable")).expect("JSON")
        };
        let key_file = read(&out.join(name).join("validator-key.json"));
        let key = Keypair::from_secret_hex(key_file["secretKey"].as_str().expect("secretKey"))
            .expect("a valid key");
        let genesis = read(&out.join("genesis.json"));
        let keys: Vec<Address> = genesis["validators"]
            .as_array()
            .expect("validators")
            .iter()
            .map(|v| {
                v["publicKey"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("a validator address")
            })
            .collect();
        let chain_id = genesis["chainId"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .expect("chainId");
        let set = ValidatorSet::new(keys, chain_id);
        let index = set
            .index_of(&key.address())
            .expect("a validator of the set");
        Byzantine {
            key,
            index,
            set,
            rng: SeededRng::new(seed),
        }
    }

    fn random_hash(&mut self) -> Hash {
        let mut h = [0u8; 32];
        for chunk in h.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next().to_le_bytes());
        }
        Hash(h)
    }

    /// A signed proposal for a random round this validator leads, between `from_round`
    /// and `from_round + rounds`, of a distinct block at a random height up to
    /// `max_height`, certified by the genesis QC (valid everywhere: the block's parent
    /// is the genesis block `genesis_block`).
    pub fn random_proposal(
        &mut self,
        genesis_block: Hash,
        from_round: u64,
        rounds: u64,
        max_height: u64,
    ) -> Message {
        let mut round = from_round + self.rng.below(rounds.max(1));
        while self.set.round_robin(round) != self.index {
            round += 1;
        }
        let block = Block {
            header: BlockHeader {
                height: 1 + self.rng.below(max_height.max(1)),
                round,
                parent_hash: genesis_block,
                proposer: self.key.address(),
                timestamp_ms: self.rng.next() % (1 << 40),
                tx_count: 0,
                tx_root: Hash::ZERO,
                state_root: self.random_hash(),
            },
            txs: vec![],
        };
        let qc = QuorumCert::genesis(genesis_block);
        let p = Proposal::new(block, qc, None, &self.key, self.set.chain_id());
        Message::Consensus(codec::encode(&ConsensusMsg::Proposal(Box::new(p))))
    }

    /// A signed vote in `round` for a random block hash.
    pub fn random_vote(&mut self, round: u64) -> Message {
        let block_hash = self.random_hash();
        let v = Vote {
            round,
            block_hash,
            voter: self.index,
            signature: self
                .key
                .sign(&vote_bytes(self.set.chain_id(), round, &block_hash)),
        };
        Message::Consensus(codec::encode(&ConsensusMsg::Vote(v)))
    }
}
