//! Unit tests of the pool.

use super::*;
use grapevine_ledger::state::build_block;
use grapevine_ledger::{Keypair, Ledger, MemoryStore, Transaction};

const CHAIN: u32 = 5;

struct Fixture {
    ledger: Ledger,
    keys: Vec<Keypair>,
    pool: Mempool,
    now: Instant,
}

fn fixture(cfg: MempoolConfig) -> Fixture {
    let keys: Vec<Keypair> = (1..=4u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
    let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let g = crate::test_support::genesis(CHAIN, &addrs, 1_000, Address([9; 32]));
    Fixture {
        ledger: Ledger::open(Box::new(MemoryStore::new()), &g).unwrap(),
        keys,
        pool: Mempool::new(cfg),
        now: Instant::now(),
    }
}

fn tx(k: &Keypair, nonce: u64, amount: u64, fee: u64) -> SignedTx {
    Transaction {
        chain_id: CHAIN,
        from: k.address(),
        to: Address([7; 32]),
        amount,
        fee,
        nonce,
    }
    .sign(k)
}

impl Fixture {
    /// A block of `txs` (another node's) on the ledger's head, written final and
    /// passed to the pool as the node does.
    fn final_block(&mut self, txs: Vec<SignedTx>) -> (Vec<(Hash, Dropped)>, Vec<Hash>) {
        let head = self.ledger.head();
        let round = head.height + 1;
        let (block, exec) =
            build_block(&self.ledger, CHAIN, &head, Address([9; 32]), round, 1, txs).unwrap();
        self.ledger.commit(&block, &[], &exec).unwrap();
        self.pool.on_commit(&block.txs, &self.ledger)
    }

    /// A final block in which the second key (nonce 0, no fee) pays `amount` to
    /// `to`.
    fn pay_from_second_key(&mut self, to: Address, amount: u64) {
        let payment = Transaction {
            chain_id: CHAIN,
            from: self.keys[1].address(),
            to,
            amount,
            fee: 0,
            nonce: 0,
        }
        .sign(&self.keys[1]);
        self.final_block(vec![payment]);
    }

    fn submit(&mut self, t: SignedTx) -> Result<Admitted, Refusal> {
        let tx = precheck(&t.to_bytes(), CHAIN).map_err(|(_, r)| r)?;
        self.pool.submit_verified(tx, &self.ledger, self.now)
    }
}

#[test]
fn refusals_are_distinct() {
    let mut f = fixture(MempoolConfig::default());
    let good = tx(&f.keys[0], 0, 10, 1);
    assert!(matches!(
        precheck(&good.to_bytes()[..100], CHAIN),
        Err((None, Refusal::Malformed(_)))
    ));
    let other_chain = good.altered(|t, _| t.chain_id = 6);
    assert!(matches!(
        f.submit(other_chain),
        Err(Refusal::WrongChain { .. })
    ));
    let bad_sig = good.altered(|t, _| t.amount = 11);
    assert_eq!(f.submit(bad_sig).unwrap_err(), Refusal::BadSignature);
    assert!(matches!(
        f.submit(tx(&f.keys[0], 0, 1000, 1)),
        Err(Refusal::InsufficientBalance { .. })
    ));
    assert!(matches!(
        f.submit(tx(&f.keys[0], 5000, 1, 1)),
        Err(Refusal::NonceTooHigh { .. })
    ));
    assert_eq!(
        f.submit(tx(&f.keys[0], 0, 10, 0)).unwrap_err(),
        Refusal::FeeTooLow { fee: 0, min_fee: 1 },
        "free transactions are refused by default"
    );
    f.submit(good).unwrap();
    assert!(matches!(f.submit(good), Err(Refusal::AlreadyKnown(_))));
    assert!(matches!(
        f.submit(tx(&f.keys[0], 0, 10, 1)),
        Err(Refusal::AlreadyKnown(_)) | Err(Refusal::Underpriced { .. })
    ));
}

#[test]
fn gap_queues_and_filling_it_promotes() {
    let mut f = fixture(MempoolConfig::default());
    let t1 = tx(&f.keys[0], 1, 10, 1);
    let a = f.submit(t1).unwrap();
    assert_eq!(a.state, PoolState::Queued { waiting_for: 0 });
    assert_eq!(f.pool.select(10).len(), 0);
    let a = f.submit(tx(&f.keys[0], 0, 10, 1)).unwrap();
    assert_eq!(a.state, PoolState::Pending);
    assert_eq!(a.promoted, vec![t1.hash()]);
    assert_eq!(f.pool.pending_nonce(&f.keys[0].address()), Some(2));
    assert_eq!(f.pool.counts(), (2, 0));
}

#[test]
fn replacement_needs_ten_percent_more() {
    let mut f = fixture(MempoolConfig::default());
    let first = tx(&f.keys[0], 0, 10, 100);
    f.submit(first).unwrap();
    let cheap = tx(&f.keys[0], 0, 11, 109);
    assert_eq!(
        f.submit(cheap).unwrap_err(),
        Refusal::Underpriced {
            nonce: 0,
            old_fee: 100,
            min_fee: 110
        }
    );
    let better = tx(&f.keys[0], 0, 11, 110);
    let a = f.submit(better).unwrap();
    assert_eq!(
        a.dropped,
        vec![(first.hash(), Dropped::Replaced { by: better.hash() })]
    );
    assert!(f.pool.get(&first.hash()).is_none());
    assert_eq!(f.pool.len(), 1);
}

#[test]
fn replacing_the_only_pooled_transaction_keeps_it_pending() {
    let mut f = fixture(MempoolConfig::default());
    // Make nonce 0 final so the account's next nonce is 1.
    let first = tx(&f.keys[0], 0, 1, 1);
    f.submit(first).unwrap();
    let sel = f.pool.select(10);
    f.final_block(sel);
    f.submit(tx(&f.keys[0], 1, 1, 10)).unwrap();
    let better = tx(&f.keys[0], 1, 1, 20);
    let a = f.submit(better).unwrap();
    assert_eq!(a.state, PoolState::Pending);
    assert_eq!(f.pool.select(10), vec![better]);
}

#[test]
fn a_pooled_sender_that_received_funds_can_spend_them() {
    let mut f = fixture(MempoolConfig::default());
    let a = f.keys[0].address();
    f.submit(tx(&f.keys[0], 0, 600, 1)).unwrap();
    // A block that pays the pooled sender but holds none of its transactions, so
    // `on_commit` does not refresh its record: the kept balance (1,000) is stale.
    f.pay_from_second_key(a, 500);
    // 601 pooled + 801 = 1,402: more than the kept balance, within the ledger's 1,500.
    let spend = f.submit(tx(&f.keys[0], 1, 800, 1)).unwrap();
    assert_eq!(spend.state, PoolState::Pending);
    // Beyond the ledger's balance it is still refused, with the ledger's figure.
    assert_eq!(
        f.submit(tx(&f.keys[0], 2, 98, 1)).unwrap_err(),
        Refusal::InsufficientBalance {
            balance: 1_500,
            needed: 1_501,
        }
    );
}

#[test]
fn selection_after_unfinalized_blocks_skips_their_nonces() {
    let mut f = fixture(MempoolConfig::default());
    let a = f.keys[0].address();
    let txs: Vec<SignedTx> = (0..4).map(|n| tx(&f.keys[0], n, 1, 1)).collect();
    for t in &txs {
        f.submit(*t).unwrap();
    }
    let other = tx(&f.keys[1], 0, 1, 1);
    f.submit(other).unwrap();
    assert!(f.pool.has_executable());
    // An unfinalized parent already holds nonces 0 and 1 of the first sender.
    let next = HashMap::from([(a, 2)]);
    let mut sel = f.pool.select_after(10, &next);
    sel.sort_by_key(|t| (t.tx().from, t.tx().nonce));
    let mut want = vec![txs[2], txs[3], other];
    want.sort_by_key(|t| (t.tx().from, t.tx().nonce));
    assert_eq!(sel, want);
    // With no unfinalized ancestors, every pending transaction is selectable.
    f.pool.release();
    assert_eq!(f.pool.select_after(10, &HashMap::new()).len(), 5);
}

/// The ledger, counting account reads.
struct Counting<'a>(&'a Ledger, std::cell::Cell<usize>);

impl StateView for Counting<'_> {
    fn account(
        &self,
        addr: &Address,
    ) -> Result<Option<grapevine_ledger::Account>, grapevine_ledger::StoreError> {
        self.1.set(self.1.get() + 1);
        self.0.account(addr)
    }
    fn state_hash(&self) -> Result<grapevine_ledger::state::LtHash, grapevine_ledger::StoreError> {
        self.0.state_hash()
    }
    fn contains_tx(&self, hash: &Hash) -> Result<bool, grapevine_ledger::StoreError> {
        self.0.contains_tx(hash)
    }
}

#[test]
fn a_sender_a_block_emptied_keeps_its_record_for_a_while() {
    let mut f = fixture(MempoolConfig::default());
    let a = f.keys[0].address();
    let t0 = tx(&f.keys[0], 0, 100, 1);
    f.submit(t0).unwrap();
    f.final_block(vec![t0]);
    assert_eq!(f.pool.pending_nonce(&a), None, "nothing of it is pooled");
    // Its next transfer is checked against the record the block left: no read.
    let view = Counting(&f.ledger, Default::default());
    let t1 = tx(&f.keys[0], 1, 100, 1);
    let admitted = f.pool.submit_verified(t1, &view, f.now).unwrap();
    assert_eq!(admitted.state, PoolState::Pending);
    assert_eq!(view.1.get(), 0);
    // Paid by another sender, it may spend more than the record says (1,000 - 101
    // - 101 = 798 left): the refusal is re-checked against the ledger.
    f.final_block(vec![t1]);
    f.pay_from_second_key(a, 500);
    let view = Counting(&f.ledger, Default::default());
    let big = tx(&f.keys[0], 2, 1_000, 1);
    assert_eq!(
        f.pool.submit_verified(big, &view, f.now).unwrap().state,
        PoolState::Pending
    );
    assert_eq!(view.1.get(), 1, "one read, for the re-check");
    // A nonce the block used is refused after the re-check too.
    f.final_block(vec![big]);
    assert!(matches!(
        f.submit(tx(&f.keys[0], 2, 1, 1)),
        Err(Refusal::NonceTooLow {
            expected: 3,
            got: 2
        })
    ));
    // After IDLE_COMMITS blocks without it, the record is gone and read again.
    for _ in 0..IDLE_COMMITS {
        f.final_block(vec![]);
    }
    assert!(!f.pool.senders.contains_key(&a));
    let view = Counting(&f.ledger, Default::default());
    f.pool
        .submit_verified(tx(&f.keys[0], 3, 1, 1), &view, f.now)
        .unwrap();
    assert_eq!(view.1.get(), 1);
}

#[test]
fn refused_senders_leave_no_record() {
    let mut f = fixture(MempoolConfig::default());
    let stranger = Keypair::from_seed(&[77; 32]);
    for n in 0..5 {
        assert!(f.submit(tx(&stranger, n, 1, 1)).is_err());
    }
    assert!(f.pool.senders.is_empty());
}

#[test]
fn selected_transactions_cannot_be_replaced_until_committed() {
    let mut f = fixture(MempoolConfig::default());
    f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
    let _ = f.pool.select(10);
    assert_eq!(
        f.submit(tx(&f.keys[0], 0, 1, 100)).unwrap_err(),
        Refusal::InBlock { nonce: 0 }
    );
    f.pool.release();
    assert!(f.submit(tx(&f.keys[0], 0, 1, 100)).is_ok());
}

#[test]
fn selection_orders_by_fee_but_keeps_nonce_order() {
    let mut f = fixture(MempoolConfig::default());
    let (a, b) = (f.keys[0].address(), f.keys[1].address());
    f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
    f.submit(tx(&f.keys[0], 1, 1, 50)).unwrap();
    f.submit(tx(&f.keys[1], 0, 1, 10)).unwrap();
    let order: Vec<(Address, u64)> = f
        .pool
        .select(10)
        .iter()
        .map(|t| (t.tx().from, t.tx().nonce))
        .collect();
    assert_eq!(order, vec![(b, 0), (a, 0), (a, 1)]);
    assert_eq!(f.pool.select(1).len(), 1);
}

#[test]
fn full_pool_evicts_the_cheapest_or_refuses() {
    let mut f = fixture(MempoolConfig {
        max_txs: 2,
        ..MempoolConfig::default()
    });
    let cheap = tx(&f.keys[0], 0, 1, 1);
    f.submit(cheap).unwrap();
    f.submit(tx(&f.keys[1], 0, 1, 5)).unwrap();
    assert!(matches!(
        f.submit(tx(&f.keys[2], 0, 1, 1)),
        Err(Refusal::Full { fee: 1, lowest: 1 })
    ));
    let rich = tx(&f.keys[2], 0, 1, 9);
    let a = f.submit(rich).unwrap();
    assert_eq!(a.dropped, vec![(cheap.hash(), Dropped::EvictedFull)]);
    assert_eq!(f.pool.len(), 2);
}

#[test]
fn per_sender_limit_and_expiry() {
    let mut f = fixture(MempoolConfig {
        max_per_sender: 2,
        ttl: Duration::from_secs(10),
        ..MempoolConfig::default()
    });
    f.submit(tx(&f.keys[0], 0, 1, 1)).unwrap();
    f.submit(tx(&f.keys[0], 1, 1, 1)).unwrap();
    assert!(matches!(
        f.submit(tx(&f.keys[0], 2, 1, 1)),
        Err(Refusal::NonceTooHigh { .. }) | Err(Refusal::SenderLimit(2))
    ));
    assert!(f.pool.expire(f.now + Duration::from_secs(9)).is_empty());
    assert_eq!(f.pool.expire(f.now + Duration::from_secs(10)).len(), 2);
    assert_eq!(f.pool.len(), 0);
    assert_eq!(f.pool.bytes(), 0);
}

/// The kept gap always equals the one found by walking the sender's transactions,
/// through submissions, replacements, expiry and blocks made elsewhere.
#[test]
fn kept_gaps_match_walked_gaps() {
    let mut f = fixture(MempoolConfig {
        max_per_sender: 64,
        ttl: Duration::from_secs(20),
        ..MempoolConfig::default()
    });
    let keys: Vec<Keypair> = (1..=2u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..600 {
        let k = &keys[(next() % 2) as usize];
        let base = f
            .ledger
            .account(&k.address())
            .unwrap()
            .unwrap_or_default()
            .nonce;
        match next() % 10 {
            0 => {
                // Another node's block spends the next one or two nonces.
                let n = 1 + next() % 2;
                let txs: Vec<SignedTx> = (base..base + n).map(|i| tx(k, i, 1, 0)).collect();
                f.final_block(txs);
            }
            // Transactions older than 20 steps expire, wherever their nonce is.
            1 => {
                f.pool.expire(f.now);
            }
            _ => {
                f.now += Duration::from_secs(1);
                let nonce = base + next() % 8;
                let _ = f.submit(tx(k, nonce, 1, 1 + next() % 5));
            }
        }
        for (addr, s) in &f.pool.senders {
            let mut walked = s.base_nonce;
            while s.txs.contains_key(&walked) {
                walked += 1;
            }
            assert_eq!(s.first_gap(), walked, "step {step}, sender {addr:?}");
            let sum: u128 = s.txs.values().map(|h| cost(&f.pool.entries[h].tx)).sum();
            assert_eq!(s.cost, sum, "step {step}");
        }
    }
}

#[test]
fn promotion_reports_only_what_was_queued() {
    let mut f = fixture(MempoolConfig::default());
    let k = &Keypair::from_seed(&[2; 32]);
    let (t0, t1, t3, t4, t6) = (
        tx(k, 0, 10, 1),
        tx(k, 1, 10, 1),
        tx(k, 3, 10, 1),
        tx(k, 4, 10, 1),
        tx(k, 6, 10, 1),
    );
    for t in [t0, t1, t3, t4, t6] {
        f.submit(t).unwrap();
    }
    // Nonce 2 closes the first gap: 3 and 4 become pending, 6 stays queued.
    let a = f.submit(tx(k, 2, 10, 1)).unwrap();
    assert_eq!(a.state, PoolState::Pending);
    assert_eq!(a.promoted, vec![t3.hash(), t4.hash()]);
    // A replacement of a pending transaction promotes nothing.
    let a = f.submit(tx(k, 1, 10, 5)).unwrap();
    assert_eq!(a.state, PoolState::Pending);
    assert!(a.promoted.is_empty());
    // Another node's block spends nonces 0..=5: 6 becomes pending; nothing that was
    // pending before the block is reported again.
    let other: Vec<SignedTx> = (0..=5).map(|n| tx(k, n, 1, 0)).collect();
    let (dropped, promoted) = f.final_block(other);
    assert_eq!(dropped.len(), 5, "nonces 0..=4 were used by the block");
    assert_eq!(promoted, vec![t6.hash()]);
    assert_eq!(f.pool.counts(), (1, 0));
}

#[test]
fn commit_removes_included_and_drops_what_no_longer_fits() {
    let mut f = fixture(MempoolConfig::default());
    let included = tx(&f.keys[0], 0, 500, 1);
    let later = tx(&f.keys[0], 1, 400, 1);
    // A conflicting spend of the same nonce, final through another node's block.
    let conflicting = tx(&f.keys[0], 0, 900, 1);
    f.submit(included).unwrap();
    f.submit(later).unwrap();
    let (dropped, _) = f.final_block(vec![conflicting]);
    let hashes: Vec<Hash> = dropped.iter().map(|(h, _)| *h).collect();
    assert!(hashes.contains(&included.hash()), "nonce 0 was used");
    assert!(hashes.contains(&later.hash()), "99 left cannot pay 401");
    assert_eq!(f.pool.len(), 0);
}
