//! In-process networks over 127.0.0.1 with ephemeral ports: discovery from one seed,
//! relay, refusal of foreign chains, bans for garbage and invalid transactions, and a
//! stalled peer that must not slow the others.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use grapevine_ledger::{Address, Hash, Keypair, SignedTx, Transaction};
use grapevine_net::frame;
use grapevine_net::message::{Hello, MAX_FRAME, Message};
use grapevine_net::secure::{self, LocalIdentity};
use grapevine_net::{NetConfig, NetEvent, NetworkHandle, TxValidator, Verdict, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const GENESIS: Hash = Hash([7; 32]);

/// Accepts transactions whose signature verifies, and remembers them; defers every
/// transaction while `busy`.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashSet<Hash>>,
    busy: std::sync::atomic::AtomicBool,
}

impl TxValidator for Recorder {
    fn validate(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        if self.busy.load(Ordering::Relaxed) {
            return vec![Verdict::Deferred; txs.len()];
        }
        verdicts(txs, &mut self.seen.lock().unwrap())
    }
}

/// Invalid if the signature fails, else accepted the first time and ignored after.
fn verdicts(txs: &[SignedTx], seen: &mut HashSet<Hash>) -> Vec<Verdict> {
    txs.iter()
        .map(|t| {
            if !t.verify() {
                Verdict::Invalid
            } else if seen.insert(t.hash()) {
                Verdict::Accepted
            } else {
                Verdict::Ignored
            }
        })
        .collect()
}

struct TestNode {
    handle: NetworkHandle,
    events: mpsc::Receiver<NetEvent>,
    sync: mpsc::Receiver<NetEvent>,
    recorder: Arc<Recorder>,
    _stop: watch::Sender<bool>,
}

async fn node(
    seed: u8,
    chain: u32,
    bootstrap: Vec<SocketAddr>,
    tune: impl FnOnce(&mut NetConfig),
) -> TestNode {
    let mut cfg = NetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::from_seed(&[seed; 32]),
        chain,
        GENESIS,
    );
    cfg.bootstrap = bootstrap.into_iter().map(Into::into).collect();
    cfg.target_outbound = 4;
    cfg.max_per_ip = 64;
    tune(&mut cfg);
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (handle, inbox) = start(cfg, recorder.clone(), stop_rx).await.unwrap();
    TestNode {
        handle,
        events: inbox.consensus,
        sync: inbox.sync,
        recorder,
        _stop: stop_tx,
    }
}

fn txs(n: u64) -> Vec<SignedTx> {
    let k = Keypair::from_seed(&[200; 32]);
    (0..n)
        .map(|i| {
            Transaction {
                chain_id: 1,
                from: k.address(),
                to: Address([1; 32]),
                amount: i,
                fee: 1,
                nonce: i,
            }
            .sign(&k)
        })
        .collect()
}

async fn wait_until(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Documented bound (docs/NETWORK.md): with announce-then-fetch a node receives each
/// transaction body about once; we allow 1.5 on average per node.
const MAX_BODIES_PER_TX: f64 = 1.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_nodes_discover_each_other_from_one_seed_and_relay() {
    let seed = node(1, 1, vec![], |_| {}).await;
    let mut nodes = vec![];
    for i in 0..10u8 {
        nodes.push(node(10 + i, 1, vec![seed.handle.listen_addr], |_| {}).await);
    }
    let all: Vec<&TestNode> = std::iter::once(&seed).chain(nodes.iter()).collect();
    let connected = wait_until(Duration::from_secs(30), async || {
        for n in &all {
            if n.handle.peers().await.len() < 3 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        connected,
        "every node reaches 3 peers through peer exchange"
    );
    // Peer exchange, not just the seed: some node knows a peer other than the seed.
    let mut beyond_seed = false;
    for n in &nodes {
        beyond_seed |= n
            .handle
            .peers()
            .await
            .iter()
            .any(|p| p.id != seed.handle.local_id);
    }
    assert!(beyond_seed);

    let batch = txs(300);
    let hashes: HashSet<Hash> = batch.iter().map(SignedTx::hash).collect();
    nodes[5].handle.broadcast_txs(batch).await;
    let others: Vec<&TestNode> = all
        .iter()
        .copied()
        .filter(|n| n.handle.local_id != nodes[5].handle.local_id)
        .collect();
    let reached = wait_until(Duration::from_secs(20), async || {
        others
            .iter()
            .all(|n| hashes.is_subset(&n.recorder.seen.lock().unwrap()))
    })
    .await;
    assert!(reached, "all 300 transactions reach all 10 other nodes");
    for n in &others {
        let bodies = n.handle.stats.tx_bodies.load(Ordering::Relaxed) as f64;
        let per_tx = bodies / hashes.len() as f64;
        assert!(
            per_tx <= MAX_BODIES_PER_TX,
            "a node received {per_tx:.2} bodies per transaction"
        );
    }
    let peers = nodes[0].handle.peers().await;
    assert!(peers.iter().all(|p| p.bytes_in > 0 && p.bytes_out > 0));
}

/// A busy node defers relayed transactions without forgetting them as seen, so it
/// fetches them when their node announces them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_transactions_are_fetched_again_when_reannounced() {
    let a = node(1, 1, vec![], |_| {}).await;
    let b = node(2, 1, vec![a.handle.listen_addr], |_| {}).await;
    assert!(
        wait_until(Duration::from_secs(10), async || !a
            .handle
            .peers()
            .await
            .is_empty())
        .await
    );
    b.recorder.busy.store(true, Ordering::Relaxed);
    let batch = txs(50);
    a.handle.broadcast_txs(batch.clone()).await;
    assert!(
        wait_until(Duration::from_secs(10), async || {
            b.handle.stats.tx_bodies.load(Ordering::Relaxed) >= 50
        })
        .await,
        "b received the bodies"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.recorder.seen.lock().unwrap().is_empty(), "all deferred");
    b.recorder.busy.store(false, Ordering::Relaxed);
    a.handle.reannounce(batch.clone()).await;
    let hashes: HashSet<Hash> = batch.iter().map(SignedTx::hash).collect();
    assert!(
        wait_until(Duration::from_secs(10), async || {
            hashes.is_subset(&b.recorder.seen.lock().unwrap())
        })
        .await,
        "b fetched and accepted all 50 after the re-announcement"
    );
}

/// One side of a link that speaks the protocol as far as its own hello and checks
/// nothing the node sends: to see what the node makes of a hello (here, one of
/// another chain).
struct RawLink {
    stream: TcpStream,
    noise: snow::TransportState,
    plain: BytesMut,
}

impl RawLink {
    /// Runs the Noise handshake on `stream` and sends a hello for chain `chain` with
    /// the node key of `seed`.
    async fn open(mut stream: TcpStream, initiator: bool, seed: u8, chain: u32) -> RawLink {
        let builder = snow::Builder::new("Noise_NN_25519_ChaChaPoly_SHA256".parse().unwrap());
        let mut hs = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .unwrap();
        let mut buf = vec![0u8; 65535];
        if initiator {
            let n = hs.write_message(&[], &mut buf).unwrap();
            write_noise(&mut stream, &buf[..n]).await;
        }
        let theirs = read_noise(&mut stream).await.expect("the node's handshake");
        hs.read_message(&theirs, &mut buf).unwrap();
        if !initiator {
            let n = hs.write_message(&[], &mut buf).unwrap();
            write_noise(&mut stream, &buf[..n]).await;
        }
        let hh = hs.get_handshake_hash().to_vec();
        let mut noise = hs.into_transport_mode().unwrap();
        let hello = Hello::new(
            &Keypair::from_seed(&[seed; 32]),
            chain,
            GENESIS,
            0,
            None,
            &hh,
        );
        let mut framed = BytesMut::new();
        frame::encode(&Message::Hello(hello).encode(), &mut framed);
        let n = noise.write_message(&framed, &mut buf).unwrap();
        write_noise(&mut stream, &buf[..n]).await;
        RawLink {
            stream,
            noise,
            plain: BytesMut::new(),
        }
    }

    /// The node's next message, or `None` once it has closed the link. Panics if it
    /// does neither within 5 s.
    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(f) = frame::decode(&mut self.plain, MAX_FRAME).unwrap() {
                    return Some(Message::decode(&f).unwrap());
                }
                let cipher = read_noise(&mut self.stream).await?;
                let mut out = vec![0u8; cipher.len()];
                let n = self.noise.read_message(&cipher, &mut out).unwrap();
                self.plain.extend_from_slice(&out[..n]);
            }
        })
        .await
        .expect("the node sends a message or closes the link within 5 s")
    }
}

async fn write_noise(stream: &mut TcpStream, msg: &[u8]) {
    let len = u16::try_from(msg.len()).unwrap().to_be_bytes();
    stream.write_all(&[&len[..], msg].concat()).await.unwrap();
}

/// One Noise message; `None` if the link closed.
async fn read_noise(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_chain_is_refused() {
    let a = node(1, 1, vec![], |_| {}).await;
    let addr = a.handle.listen_addr;
    // The control: a link of our chain is taken, and asked for addresses.
    let mut ours = RawLink::open(TcpStream::connect(addr).await.unwrap(), true, 60, 1).await;
    assert!(matches!(ours.next().await, Some(Message::Hello(h)) if h.chain_id == 1));
    assert_eq!(ours.next().await, Some(Message::GetPeers));
    // Another chain's hello: the node closes the link after its own hello.
    let mut theirs = RawLink::open(TcpStream::connect(addr).await.unwrap(), true, 61, 2).await;
    assert!(matches!(theirs.next().await, Some(Message::Hello(h)) if h.chain_id == 1));
    assert_eq!(theirs.next().await, None, "the node closed the link");

    // The other way: a node that dialed a peer of another chain closes the link too.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = node(2, 1, vec![listener.local_addr().unwrap()], |_| {}).await;
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the node dials its bootstrap address")
        .unwrap();
    let mut theirs = RawLink::open(stream, false, 62, 2).await;
    assert!(matches!(theirs.next().await, Some(Message::Hello(h)) if h.chain_id == 1));
    assert_eq!(theirs.next().await, None, "the node closed the link");
    assert!(b.handle.peers().await.is_empty());
    assert_eq!(
        a.handle.peers().await.len(),
        1,
        "only the link of our chain"
    );
}

async fn handshake_as(seed: u8, addr: SocketAddr) -> secure::Link {
    let me = LocalIdentity {
        node_key: Keypair::from_seed(&[seed; 32]),
        chain_id: 1,
        genesis_hash: GENESIS,
        listen_port: 0,
        external: Default::default(),
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = TcpStream::connect(addr).await.unwrap();
        secure::handshake(stream, true, &me).await.unwrap()
    })
    .await
    .expect("handshake within 10 s")
}

/// Reads until the node closes the link; `false` if it stays open for `limit`.
async fn closed_within(link: &mut secure::Link, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            if link.reader.recv().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_transactions_get_a_peer_banned_and_relay_goes_on() {
    let hub = node(1, 1, vec![], |_| {}).await;
    let left = node(2, 1, vec![hub.handle.listen_addr], |_| {}).await;
    let right = node(3, 1, vec![hub.handle.listen_addr], |_| {}).await;
    assert!(
        wait_until(Duration::from_secs(10), async || hub
            .handle
            .peers()
            .await
            .len()
            == 2)
        .await
    );

    // Raw garbage before any handshake: the link is dropped.
    let mut raw = TcpStream::connect(hub.handle.listen_addr).await.unwrap();
    let junk: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = raw.write_all(&junk).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "garbage gets the connection closed");

    // A garbage frame after the handshake: banned at once.
    let mut link = handshake_as(50, hub.handle.listen_addr).await;
    link.writer
        .send_frame(&[0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    assert!(closed_within(&mut link, Duration::from_secs(5)).await);
    // An oversized frame header: banned too (another identity).
    let mut link = handshake_as(51, hub.handle.listen_addr).await;
    link.writer
        .send_plaintext(&[0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closed_within(&mut link, Duration::from_secs(5)).await);
    // The banned key cannot come back.
    let mut again = handshake_as(50, hub.handle.listen_addr).await;
    assert!(closed_within(&mut again, Duration::from_secs(5)).await);

    // Invalid transactions: penalized until banned.
    let mut spammer = handshake_as(52, hub.handle.listen_addr).await;
    let bad: Vec<_> = txs(10)
        .into_iter()
        .map(|t| t.altered(|_, sig| sig.0[0] ^= 1))
        .collect();
    let mut banned = false;
    for chunk in bad.chunks(1) {
        if spammer
            .writer
            .send(&Message::Txs(chunk.to_vec()))
            .await
            .is_err()
        {
            banned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    banned |= closed_within(&mut spammer, Duration::from_secs(5)).await;
    assert!(banned, "a peer sending invalid transactions is banned");
    assert!(hub.handle.stats.bans.load(Ordering::Relaxed) >= 3);
    assert!(
        hub.recorder.seen.lock().unwrap().is_empty(),
        "invalid txs were not accepted"
    );

    // The honest nodes still relay through the hub.
    let good = txs(5);
    let hashes: HashSet<Hash> = good.iter().map(SignedTx::hash).collect();
    left.handle.broadcast_txs(good).await;
    assert!(
        wait_until(Duration::from_secs(10), async || hashes
            .is_subset(&right.recorder.seen.lock().unwrap()))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_is_dropped_and_does_not_slow_the_others() {
    let mut hub = node(1, 1, vec![], |c| c.send_queue = 16).await;
    let mut a = node(2, 1, vec![hub.handle.listen_addr], |_| {}).await;
    let mut b = node(3, 1, vec![hub.handle.listen_addr], |_| {}).await;
    assert!(
        wait_until(Duration::from_secs(10), async || hub
            .handle
            .peers()
            .await
            .len()
            == 2)
        .await
    );
    // Handshakes, then never reads again.
    let stalled = handshake_as(60, hub.handle.listen_addr).await;
    let stalled_id = Keypair::from_seed(&[60; 32]).address();
    assert!(
        wait_until(Duration::from_secs(5), async || hub
            .handle
            .peers()
            .await
            .len()
            == 3)
        .await
    );

    let start = Instant::now();
    let n = 200usize;
    // 12.8 MB in steady bursts: more than the stalled peer's socket buffers hold, a
    // pace the honest peers keep up with.
    for i in 0..n {
        let mut payload = vec![0u8; 64 * 1024];
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hub.handle.broadcast_consensus(Bytes::from(payload)).await;
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut got_a = 0;
    let mut got_b = 0;
    while (got_a < n || got_b < n) && start.elapsed() < Duration::from_secs(30) {
        tokio::select! {
            Some(NetEvent::Consensus { .. }) = a.events.recv() => got_a += 1,
            Some(NetEvent::Consensus { .. }) = b.events.recv() => got_b += 1,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(
        (got_a, got_b),
        (n, n),
        "honest peers got every consensus message"
    );
    assert!(
        wait_until(Duration::from_secs(10), async || !hub
            .handle
            .peers()
            .await
            .iter()
            .any(|p| p.id == stalled_id))
        .await,
        "the stalled peer was dropped"
    );
    let _ = hub.events.try_recv();
    drop(stalled);
}

/// Takes its time over each validation and records how many batches each one held.
#[derive(Default)]
struct SlowRecorder {
    calls: Mutex<Vec<usize>>,
    accepted: Mutex<HashSet<Hash>>,
}

impl TxValidator for SlowRecorder {
    fn validate(&self, txs: &[SignedTx]) -> Vec<Verdict> {
        self.validate_many(&[txs.to_vec()]).remove(0)
    }

    fn validate_many(&self, batches: &[Vec<SignedTx>]) -> Vec<Vec<Verdict>> {
        self.calls.lock().unwrap().push(batches.len());
        std::thread::sleep(Duration::from_millis(300));
        let mut accepted = self.accepted.lock().unwrap();
        batches.iter().map(|b| verdicts(b, &mut accepted)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_batches_from_several_peers_are_validated_together_each_with_its_verdicts() {
    let cfg = NetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::from_seed(&[1; 32]),
        1,
        GENESIS,
    );
    let validator = Arc::new(SlowRecorder::default());
    let (_stop, stop_rx) = watch::channel(false);
    let (hub, _events) = start(cfg, validator.clone(), stop_rx).await.unwrap();
    let mut links = Vec::new();
    for seed in 70..74u8 {
        links.push(handshake_as(seed, hub.listen_addr).await);
    }
    let all = txs(6);
    // Two batches take both validation slots...
    links[0]
        .writer
        .send(&Message::Txs(vec![all[0]]))
        .await
        .unwrap();
    links[1]
        .writer
        .send(&Message::Txs(vec![all[1]]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so these two wait, and are then validated in one call.
    links[2]
        .writer
        .send(&Message::Txs(vec![all[2], all[3]]))
        .await
        .unwrap();
    let forged = all[4].altered(|_, sig| sig.0[0] ^= 1);
    links[3]
        .writer
        .send(&Message::Txs(vec![forged, all[5]]))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), async || validator
            .calls
            .lock()
            .unwrap()
            .len()
            >= 3)
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*validator.calls.lock().unwrap(), vec![1, 1, 2]);
    let accepted = validator.accepted.lock().unwrap().clone();
    let want: HashSet<Hash> = [0, 1, 2, 3, 5].iter().map(|&i| all[i].hash()).collect();
    assert_eq!(
        accepted, want,
        "every valid transaction is taken, the forged one not"
    );
    // Only the peer that sent the forged transaction pays for it.
    let score = |seed: u8| {
        let id = Keypair::from_seed(&[seed; 32]).address();
        let hub = hub.clone();
        async move {
            hub.peers()
                .await
                .into_iter()
                .find(|p| p.id == id)
                .map(|p| p.score)
        }
    };
    let honest = score(72).await.expect("the honest peer stays connected");
    let forger = score(73).await;
    assert!(
        forger.is_none_or(|f| f < honest),
        "the forger ({forger:?}) is penalized below the honest peer ({honest})"
    );
}

/// How many messages of `kind` (a [`MESSAGE_KINDS`] name) node `n` received.
///
/// [`MESSAGE_KINDS`]: grapevine_net::network::MESSAGE_KINDS
fn received(n: &TestNode, kind: &str) -> u64 {
    let i = grapevine_net::network::MESSAGE_KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("a message kind");
    n.handle.stats.messages[i].load(Ordering::Relaxed)
}

/// The next consensus message `n` is handed within 10 s, with its sender.
async fn next_consensus(n: &mut TestNode) -> (Address, Bytes) {
    match tokio::time::timeout(Duration::from_secs(10), n.events.recv()).await {
        Ok(Some(NetEvent::Consensus { from, payload })) => (from, payload),
        other => panic!("no consensus message within 10 s: {other:?}"),
    }
}

/// Wait until every node has `peers` links.
async fn linked(nodes: &[&TestNode], peers: usize) {
    for n in nodes {
        assert!(
            wait_until(Duration::from_secs(10), async || n
                .handle
                .peers()
                .await
                .len()
                == peers)
            .await,
            "links up"
        );
    }
}

/// A - B - C in a line (no peer exchange): a large consensus message from A reaches C
/// through B's announcement and C's request; a small one is sent on whole; neither
/// goes back to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_consensus_message_is_relayed_by_announcement_across_a_hop() {
    let line = |c: &mut NetConfig| c.peer_exchange = false;
    let a = node(1, 1, vec![], line).await;
    let mut b = node(2, 1, vec![a.handle.listen_addr], line).await;
    let mut c = node(3, 1, vec![b.handle.listen_addr], line).await;
    linked(&[&b], 2).await;
    linked(&[&a, &c], 1).await;

    let large = Bytes::from(vec![7u8; grapevine_net::network::RELAY_HAVE_BYTES + 1]);
    a.handle.broadcast_consensus(large.clone()).await;
    let (from, payload) = next_consensus(&mut b).await;
    assert_eq!((from, &payload), (a.handle.local_id, &large));
    b.handle.relay_consensus(payload, from).await;
    let (from, payload) = next_consensus(&mut c).await;
    assert_eq!((from, &payload), (b.handle.local_id, &large));
    assert_eq!(received(&c, "consensusHave"), 1, "announced to C");
    assert_eq!(received(&b, "consensusWant"), 1, "C asked B for it");

    let small = Bytes::from(vec![8u8; 1000]);
    a.handle.broadcast_consensus(small.clone()).await;
    let (from, payload) = next_consensus(&mut b).await;
    b.handle.relay_consensus(payload, from).await;
    assert_eq!(next_consensus(&mut c).await.1, small);
    assert_eq!(
        received(&c, "consensusHave"),
        1,
        "a small one is not announced"
    );
    assert_eq!(received(&c, "consensus"), 2);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received(&a, "consensus") + received(&a, "consensusHave"),
        0,
        "nothing is relayed back to where it came from"
    );
}

/// A, B and C all linked: B and C each got A's large message, and relaying it costs
/// each of them one announcement from the other, not a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_has_a_large_consensus_message_gets_only_its_announcement() {
    let mesh = |c: &mut NetConfig| c.peer_exchange = false;
    let a = node(1, 1, vec![], mesh).await;
    let mut b = node(2, 1, vec![a.handle.listen_addr], mesh).await;
    let mut c = node(3, 1, vec![a.handle.listen_addr, b.handle.listen_addr], mesh).await;
    linked(&[&a, &b, &c], 2).await;

    let large = Bytes::from(vec![9u8; 100 * 1024]);
    a.handle.broadcast_consensus(large.clone()).await;
    let (from_b, at_b) = next_consensus(&mut b).await;
    let (from_c, at_c) = next_consensus(&mut c).await;
    assert_eq!((&at_b, &at_c), (&large, &large));
    b.handle.relay_consensus(at_b, from_b).await;
    c.handle.relay_consensus(at_c, from_c).await;

    assert!(
        wait_until(Duration::from_secs(5), async || received(
            &b,
            "consensusHave"
        ) == 1
            && received(&c, "consensusHave") == 1)
        .await,
        "each announced it to the other"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [&b, &c] {
        assert_eq!(received(n, "consensus"), 1, "one copy each, from A");
        assert_eq!(received(n, "consensusWant"), 0, "nobody asked for it again");
    }
    assert!(b.events.try_recv().is_err() && c.events.try_recv().is_err());
}

/// Announces a large consensus message `h` on a raw link; returns the request for it
/// that comes back within 5 s, if any.
async fn announce(link: &mut secure::Link, h: Hash) -> Option<Hash> {
    link.writer.send(&Message::ConsensusHave(h)).await.unwrap();
    next_want(link, Duration::from_secs(5)).await
}

/// The next `ConsensusWant` on a raw link within `limit` (other messages skipped).
async fn next_want(link: &mut secure::Link, limit: Duration) -> Option<Hash> {
    next_such(link, limit, |m| match m {
        Message::ConsensusWant(h) => Some(h),
        _ => None,
    })
    .await
}

/// The first message on a raw link within `limit` that `pick` takes (others skipped);
/// `None` at the limit or if the link closes.
async fn next_such<T>(
    link: &mut secure::Link,
    limit: Duration,
    mut pick: impl FnMut(Message) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(limit, async {
        loop {
            match link.reader.recv().await {
                Ok((m, _)) => {
                    if let Some(t) = pick(m) {
                        return Some(t);
                    }
                }
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Two raw peers announce the same large consensus message to a node. The first is
/// asked and never answers; after the retry time the second is asked, answers, and the
/// node gets the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcer_that_does_not_deliver_is_replaced_by_the_next() {
    let mut hub = node(1, 1, vec![], |_| {}).await;
    let mut silent = handshake_as(70, hub.handle.listen_addr).await;
    let mut honest = handshake_as(71, hub.handle.listen_addr).await;
    linked(&[&hub], 2).await;
    let payload = vec![3u8; 40_000];
    let h = grapevine_ledger::crypto::sha256(&[&payload]);
    assert_eq!(
        announce(&mut silent, h).await,
        Some(h),
        "the first announcer is asked"
    );
    assert_eq!(
        announce(&mut honest, h).await,
        Some(h),
        "the next announcer is asked when the first does not deliver"
    );
    honest
        .writer
        .send(&Message::Consensus(payload.clone()))
        .await
        .unwrap();
    let (from, got) = next_consensus(&mut hub).await;
    assert_eq!(from, Keypair::from_seed(&[71; 32]).address());
    assert_eq!(got.as_ref(), payload.as_slice());
}

/// A node answers a request for a message it relayed by announcement once per peer it
/// announced it to; a second request, or one from a peer it was not announced to, costs
/// score and gets nothing. A peer announcing many messages it does not send has at most
/// 8 requests open, and another peer's announcement is still asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_requests_are_answered_once_and_announcement_spam_is_capped() {
    let hub = node(1, 1, vec![], |_| {}).await;
    let mut a = handshake_as(72, hub.handle.listen_addr).await;
    let mut b = handshake_as(73, hub.handle.listen_addr).await;
    linked(&[&hub], 2).await;
    let large = vec![4u8; 50_000];
    let h = grapevine_ledger::crypto::sha256(&[&large]);
    hub.handle
        .relay_consensus(Bytes::from(large.clone()), Address([0; 32]))
        .await;
    // Asked for once announced, as a peer does (the request could otherwise overtake
    // the relay command inside the node).
    let announced = next_such(&mut a, Duration::from_secs(5), |m| match m {
        Message::ConsensusHave(got) => Some(got),
        _ => None,
    })
    .await;
    assert_eq!(announced, Some(h), "announced within 5 s");
    a.writer.send(&Message::ConsensusWant(h)).await.unwrap();
    let got = next_such(&mut a, Duration::from_secs(5), |m| match m {
        Message::Consensus(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(got, Some(large), "answered within 5 s");
    let score = async |seed: u8| {
        let id = Keypair::from_seed(&[seed; 32]).address();
        hub.handle
            .peers()
            .await
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.score)
    };
    assert_eq!(score(72).await, Some(0));
    a.writer.send(&Message::ConsensusWant(h)).await.unwrap();
    let mut late = handshake_as(74, hub.handle.listen_addr).await;
    linked(&[&hub], 3).await;
    late.writer.send(&Message::ConsensusWant(h)).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), async || score(72).await == Some(-5)
            && score(74).await == Some(-5))
        .await,
        "a second request and an unannounced one cost score"
    );

    // Spam: 20 announcements from `b`, which sends nothing.
    for i in 0..20u8 {
        b.writer
            .send(&Message::ConsensusHave(Hash([i; 32])))
            .await
            .unwrap();
    }
    let mut asked = 0;
    while next_want(&mut b, Duration::from_millis(500))
        .await
        .is_some()
    {
        asked += 1;
    }
    assert_eq!(asked, 8, "at most 8 open requests per peer");
    let other = Hash([99; 32]);
    assert_eq!(
        announce(&mut late, other).await,
        Some(other),
        "another peer's announcement is still asked for"
    );
}

/// Two nodes linked to each other only (B dialed A), each with a send queue that
/// holds a burst of thousands of messages, so neither drops the link under one.
async fn linked_pair() -> (TestNode, TestNode) {
    let tune = |c: &mut NetConfig| {
        c.peer_exchange = false;
        c.send_queue = 16_384;
    };
    let a = node(1, 1, vec![], tune).await;
    let b = node(2, 1, vec![a.handle.listen_addr], tune).await;
    linked(&[&a, &b], 1).await;
    (a, b)
}

/// A consensus message dropped because the node's consensus queue was full is not
/// recorded as seen: when its sender sends the same bytes again (a re-sent timeout),
/// the node takes it. Recording it as seen would let any burst end liveness for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consensus_message_dropped_at_a_full_queue_is_taken_when_sent_again() {
    let (a, mut b) = linked_pair().await;

    // Fill B's consensus queue (nobody reads it yet), then send the message that
    // matters: it arrives at a full queue.
    let filler = 5_000u32;
    for i in 0..filler {
        a.handle
            .broadcast_consensus(Bytes::from(i.to_le_bytes().to_vec()))
            .await;
    }
    let timeout = Bytes::from_static(b"a timeout that must get through");
    a.handle.broadcast_consensus(timeout.clone()).await;
    assert!(
        wait_until(Duration::from_secs(20), async || received(&b, "consensus")
            == u64::from(filler) + 1)
        .await,
        "B received every message"
    );
    assert!(
        b.handle.stats.consensus_dropped.load(Ordering::Relaxed) > 0,
        "the queue overflowed"
    );
    let mut got = false;
    while let Ok(NetEvent::Consensus { payload, .. }) = b.events.try_recv() {
        got |= payload == timeout;
    }
    assert!(!got, "the last message was dropped at the full queue");

    // The re-send is delivered now that the queue has room.
    a.handle.broadcast_consensus(timeout.clone()).await;
    let (_, payload) = next_consensus(&mut b).await;
    assert_eq!(payload, timeout, "the re-sent message is taken");
}

/// Block sync messages go to their own queue, every copy of them (no seen-set), and a
/// flood of them that fills that queue leaves consensus messages unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_messages_have_their_own_queue() {
    let (a, mut b) = linked_pair().await;

    let request = Bytes::from_static(b"the same sync request");
    for _ in 0..6_000 {
        a.handle
            .send_sync_to(b.handle.local_id, request.clone())
            .await;
    }
    let vote = Bytes::from_static(b"a vote");
    a.handle.broadcast_consensus(vote.clone()).await;
    let (from, payload) = next_consensus(&mut b).await;
    assert_eq!((from, payload), (a.handle.local_id, vote));
    assert!(
        wait_until(Duration::from_secs(20), async || received(&b, "sync")
            == 6_000)
        .await,
        "B received every sync message"
    );
    let mut delivered = 0;
    while let Ok(ev) = b.sync.try_recv() {
        assert!(matches!(ev, NetEvent::Sync { ref payload, .. } if *payload == request));
        delivered += 1;
    }
    let dropped = b.handle.stats.sync_dropped.load(Ordering::Relaxed);
    assert!(
        delivered > 1,
        "repeats of one sync message are all delivered"
    );
    assert_eq!(
        delivered + dropped,
        6_000,
        "each was delivered or counted dropped"
    );
    assert!(
        b.events.try_recv().is_err(),
        "no sync message on the consensus queue"
    );
}

/// A copy of a consensus message the node took is dropped for a moment (relayed
/// copies arrive within a round trip), but a retransmission after
/// [`SEEN_CONSENSUS_TTL`] is taken: a node whose consensus lost the first copy must
/// be able to get it again.
///
/// [`SEEN_CONSENSUS_TTL`]: grapevine_net::network::SEEN_CONSENSUS_TTL
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_is_taken_once_the_seen_window_passed() {
    let (a, mut b) = linked_pair().await;

    let proposal = Bytes::from_static(b"a proposal");
    a.handle.broadcast_consensus(proposal.clone()).await;
    assert_eq!(next_consensus(&mut b).await.1, proposal);
    a.handle.broadcast_consensus(proposal.clone()).await;
    assert!(
        wait_until(Duration::from_secs(5), async || received(&b, "consensus")
            == 2)
        .await,
        "the copy arrived"
    );
    // The count goes up just before the copy is judged: give that a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        b.events.try_recv().is_err(),
        "a copy right after is dropped"
    );
    tokio::time::sleep(grapevine_net::network::SEEN_CONSENSUS_TTL).await;
    a.handle.broadcast_consensus(proposal.clone()).await;
    assert_eq!(
        next_consensus(&mut b).await.1,
        proposal,
        "taken again once the window passed"
    );
}

/// A peer sending faster than its inbound budget is read no faster than the budget
/// (its pongs come back at that pace: the node stops reading its socket), counted as
/// throttled once a second, and banned when the penalties exhaust its score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_inbound_budget_is_throttled_then_banned() {
    let hub = node(1, 1, vec![], |c| c.recv_msgs_per_sec = 50).await;
    let secure::Link {
        mut reader,
        mut writer,
        ..
    } = handshake_as(60, hub.handle.listen_addr).await;
    let flood = tokio::spawn(async move {
        let mut n = 0u64;
        while writer.send(&Message::Ping(n)).await.is_ok() {
            n += 1;
        }
    });
    let start = Instant::now();
    let (mut early_pongs, mut closed) = (0u32, false);
    while start.elapsed() < Duration::from_secs(25) {
        match tokio::time::timeout(Duration::from_secs(25), reader.recv()).await {
            Ok(Ok((Message::Pong(_), _))) => {
                if start.elapsed() < Duration::from_secs(3) {
                    early_pongs += 1;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                closed = true;
                break;
            }
        }
    }
    flood.abort();
    // The burst (100) and three seconds at 50 a second, with slack for timing; an
    // unthrottled link answers thousands.
    assert!(
        early_pongs <= 400,
        "{early_pongs} pongs in 3 s at 50 messages/s"
    );
    assert!(closed, "the flooding peer is disconnected");
    let stats = &hub.handle.stats;
    assert!(stats.throttled.load(Ordering::Relaxed) >= 10);
    assert!(stats.bans.load(Ordering::Relaxed) >= 1, "and banned");
}

/// `TxRequest` is answered only for transactions announced to the asking peer, and
/// `GetPeers` once a minute; the rest is ignored and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_what_a_peer_may_ask_are_ignored() {
    let hub = node(1, 1, vec![], |_| {}).await;
    let before = txs(3);
    let hashes: Vec<Hash> = before.iter().map(SignedTx::hash).collect();
    hub.handle.broadcast_txs(before).await;
    // The link comes up after their announcement: they were never announced to it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut link = handshake_as(61, hub.handle.listen_addr).await;
    link.writer
        .send(&Message::TxRequest(hashes.clone()))
        .await
        .unwrap();
    link.writer.send(&Message::GetPeers).await.unwrap();
    link.writer.send(&Message::GetPeers).await.unwrap();
    let (mut bodies, mut peer_lists) = (0, 0);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok((msg, _)) = link.reader.recv().await {
            match msg {
                Message::Txs(t) => bodies += t.len(),
                Message::Peers(_) => peer_lists += 1,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(bodies, 0, "bodies never announced to this peer");
    assert_eq!(peer_lists, 1, "one GetPeers answered");
    assert_eq!(hub.handle.stats.requests_refused.load(Ordering::Relaxed), 2);

    // Announced to it now: served.
    hub.handle.reannounce(txs(3)).await;
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok((msg, _)) = link.reader.recv().await {
            match msg {
                Message::TxAnnounce(_) => link
                    .writer
                    .send(&Message::TxRequest(hashes.clone()))
                    .await
                    .map(|_| ())
                    .unwrap(),
                Message::Txs(t) => return t.len(),
                _ => {}
            }
        }
        0
    })
    .await;
    assert_eq!(served.ok(), Some(3));
}

/// Configured peers are dialed by name (resolved at every dial), a pinned node id is
/// checked, a wrong one is refused, and a peer whose link drops is dialed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_peers_are_dialed_by_name_pinned_and_kept() {
    // Without peer exchange `a` dials nobody: any link to it is one its peers dialed.
    let a = node(31, 1, vec![], |c| c.peer_exchange = false).await;
    let port = a.handle.listen_addr.port();
    let a_id = a.handle.local_id;
    let by_name: grapevine_net::PeerAddr = format!("localhost:{port}").parse().unwrap();
    let pinned: grapevine_net::PeerAddr = format!("{a_id}@localhost:{port}").parse().unwrap();
    let wrong_id = Keypair::from_seed(&[99; 32]).address();
    let wrong: grapevine_net::PeerAddr = format!("{wrong_id}@localhost:{port}").parse().unwrap();
    let unresolvable: grapevine_net::PeerAddr = "no-such-host.invalid:1".parse().unwrap();

    let b = node(32, 1, vec![], |c| {
        c.bootstrap = vec![unresolvable.clone(), by_name.clone()];
    })
    .await;
    let c = node(33, 1, vec![], |c| c.bootstrap = vec![pinned.clone()]).await;
    let d = node(34, 1, vec![], |c| c.bootstrap = vec![wrong.clone()]).await;
    let linked = |n: &TestNode| {
        let h = n.handle.clone();
        async move { h.peers().await.iter().any(|p| p.id == a_id) }
    };
    assert!(
        wait_until(Duration::from_secs(10), async || linked(&b).await).await,
        "dialed by name, an unresolvable name beside it notwithstanding"
    );
    assert!(
        wait_until(Duration::from_secs(10), async || linked(&c).await).await,
        "the pinned id proved"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !linked(&d).await,
        "a peer proving another id than the pinned one is refused"
    );

    // A dropped link is dialed again: a stops, then starts again on the same port.
    drop(a);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a2 = node(31, 1, vec![], |c| {
        c.peer_exchange = false;
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    assert!(
        wait_until(Duration::from_secs(20), async || linked(&b).await).await,
        "the configured peer is dialed again after its link went down"
    );
    drop(a2);
}

/// `external_address` is what a node's hello advertises: a name is resolved by the
/// node itself, and its peers record the advertised address as where to dial it. One
/// that does not resolve leaves the node running, advertising the address it is seen
/// from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_address_is_advertised_resolved_and_recorded() {
    let named = node(42, 1, vec![], |c| {
        c.peer_exchange = false;
        c.external_address = Some("localhost:4567".parse().unwrap());
    })
    .await;
    let lost = node(43, 1, vec![], |c| {
        c.peer_exchange = false;
        c.external_address = Some("no-such-host.invalid:4568".parse().unwrap());
    })
    .await;
    let hub = node(
        41,
        1,
        vec![named.handle.listen_addr, lost.handle.listen_addr],
        |c| c.peer_exchange = false,
    )
    .await;
    let listen_of = |id: Address| {
        let h = hub.handle.clone();
        async move {
            h.peers()
                .await
                .into_iter()
                .find(|p| p.id == id)
                .and_then(|p| p.listen_address)
        }
    };
    let (named_id, lost_id) = (named.handle.local_id, lost.handle.local_id);
    // A node starts linking once its external address resolved (or failed to): the
    // first hello carries it.
    assert!(
        wait_until(Duration::from_secs(10), async || {
            listen_of(named_id).await.is_some() && listen_of(lost_id).await.is_some()
        })
        .await,
        "the hub links both"
    );
    let a = listen_of(named_id).await.unwrap();
    assert!(
        a.ip().is_loopback() && a.port() == 4567,
        "the advertised name, resolved by the node: {a}"
    );
    assert_eq!(
        listen_of(lost_id).await,
        Some(lost.handle.listen_addr),
        "without a resolvable external address, the address seen with the listen port"
    );
}
