//! Crash consistency: a child process commits blocks to RocksDB as fast as it can and is
//! killed with SIGKILL at random moments; every reopen must find a whole block at the
//! head, every acknowledged block present, and the state matching the head's root.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::seeded::SeededRng;
use grapevine_ledger::state::build_block;
use grapevine_ledger::{Address, Genesis, Keypair, Ledger, RocksStore, StateView, Transaction};

const CHILD_ENV: &str = "GRAPEVINE_CRASH_CHILD_DIR";
const CHAIN: u32 = 9;
const ACCOUNTS: usize = 20;

fn keys() -> Vec<Keypair> {
    (0..ACCOUNTS)
        .map(|i| Keypair::from_seed(&[i as u8 + 1; 32]))
        .collect()
}

fn proposer() -> Address {
    Keypair::from_seed(&[250; 32]).address()
}

fn genesis() -> Genesis {
    Genesis {
        chain_id: CHAIN,
        genesis_time_ms: 0,
        accounts: keys()
            .iter()
            .map(|k| GenesisAccount {
                address: k.address(),
                balance: 1_000_000,
            })
            .collect(),
        validators: vec![GenesisValidator {
            public_key: proposer(),
            network_address: None,
        }],
    }
}

fn open(dir: &Path) -> Ledger {
    let store = RocksStore::open(dir).expect("reopening after a crash must succeed");
    Ledger::open(Box::new(store), &genesis()).expect("the ledger must be consistent")
}

/// The child: commit blocks of transfers until killed (or 30 s pass).
#[test]
#[ignore = "runs only as the child process of sigkill_at_random_moments_leaves_whole_blocks"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger = open(Path::new(&dir));
    let ks = keys();
    let mut rng = SeededRng::new(ledger.head().height + 1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let mut txs = Vec::new();
        for _ in 0..40 {
            let from = &ks[(rng.next() % ACCOUNTS as u64) as usize];
            let nonce = ledger
                .account(&from.address())
                .unwrap()
                .unwrap_or_default()
                .nonce
                + txs
                    .iter()
                    .filter(|t: &&grapevine_ledger::SignedTx| t.tx().from == from.address())
                    .count() as u64;
            let to = ks[(rng.next() % ACCOUNTS as u64) as usize].address();
            txs.push(
                Transaction {
                    chain_id: CHAIN,
                    from: from.address(),
                    to,
                    amount: rng.next() % 100,
                    fee: 1,
                    nonce,
                }
                .sign(from),
            );
        }
        let head = ledger.head();
        let (block, exec) =
            build_block(&ledger, CHAIN, &head, proposer(), 0, head.height + 1, txs).unwrap();
        ledger.commit(&block, b"cert", &exec).unwrap();
        println!("committed {}", block.header.height);
    }
}

fn check(dir: &Path, acknowledged: u64) -> u64 {
    let ledger = open(dir);
    let head = ledger.head();
    assert!(
        head.height >= acknowledged,
        "block {acknowledged} was reported committed but the head is {}",
        head.height
    );
    ledger.verify_state().unwrap();
    let supply: u128 = ledger
        .accounts()
        .unwrap()
        .iter()
        .map(|(_, a)| u128::from(a.balance))
        .sum();
    assert_eq!(supply, u128::from(genesis().total_supply()));
    let mut parent = ledger.block(0).unwrap().unwrap().block.header;
    for h in 1..=head.height {
        let b = ledger
            .block(h)
            .unwrap()
            .expect("every block up to the head");
        assert_eq!(b.block.header.parent_hash, parent.hash());
        assert_eq!(b.certificate, b"cert");
        for (i, t) in b.block.txs.iter().enumerate() {
            let loc = ledger.tx_location(&t.hash()).unwrap().expect("indexed");
            assert_eq!((loc.height, loc.index as usize), (h, i));
        }
        parent = b.block.header;
    }
    assert!(ledger.block(head.height + 1).unwrap().is_none());
    head.height
}

#[test]
fn sigkill_at_random_moments_leaves_whole_blocks() {
    let seed = std::env::var("GRAPEVINE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed {seed} (set GRAPEVINE_CRASH_SEED to repeat)");
    let mut rng = SeededRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = 0;
    let mut kills_mid_write = 0;
    for round in 0..25 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(h) = line.strip_prefix("committed ") {
                    let _ = tx.send(h.parse::<u64>().unwrap());
                }
            }
        });
        // Wait for the child to be writing, then let it run a random while.
        let first = rx.recv_timeout(Duration::from_secs(60));
        if first.is_ok() {
            kills_mid_write += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 150));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for h in first.into_iter().chain(rx.try_iter()) {
            acknowledged = acknowledged.max(h);
        }
        let head = check(dir.path(), acknowledged);
        println!("round {round}: acknowledged {acknowledged}, head after restart {head}");
    }
    assert!(
        kills_mid_write >= 20 && acknowledged >= 25,
        "the child must have been killed while writing blocks"
    );
}
