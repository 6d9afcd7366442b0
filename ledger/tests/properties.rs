//! Property tests of the state transition over random blocks of valid and invalid
//! transactions, on the in-memory and the RocksDB store side by side.

use std::collections::HashMap;

use grapevine_ledger::genesis::{GenesisAccount, GenesisValidator};
use grapevine_ledger::state::{BlockError, build_block, execute, validate_block};
use grapevine_ledger::store::{Column, FORMAT_VERSION, WriteBatch};
use grapevine_ledger::{
    Account, Address, Genesis, Keypair, Ledger, MemoryStore, Receipt, RocksStore, StateView, Store,
    StoreError, Transaction,
};
use proptest::prelude::*;

const CHAIN: u32 = 42;

fn keys(n: usize) -> Vec<Keypair> {
    (0..n)
        .map(|i| Keypair::from_seed(&[i as u8 + 1; 32]))
        .collect()
}

fn genesis(balances: &[u64], validator: Address) -> Genesis {
    Genesis {
        chain_id: CHAIN,
        genesis_time_ms: 0,
        accounts: keys(balances.len())
            .iter()
            .zip(balances)
            .map(|(k, b)| GenesisAccount {
                address: k.address(),
                balance: *b,
            })
            .collect(),
        validators: vec![GenesisValidator {
            public_key: validator,
            network_address: None,
        }],
    }
}

/// One generated transaction: who sends to whom, how much, and how it is spoiled.
#[derive(Debug, Clone)]
struct TxSpec {
    from: usize,
    to: usize,
    amount: u64,
    fee: u64,
    nonce_offset: i8,
    spoil: Spoil,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Spoil {
    None,
    BadSignature,
    WrongChain,
}

fn tx_spec(accounts: usize) -> impl Strategy<Value = TxSpec> {
    (
        0..accounts,
        0..accounts + 2, // the last two are fresh accounts
        prop_oneof![4 => 0u64..2_000, 1 => Just(u64::MAX), 1 => (u64::MAX - 10)..=u64::MAX],
        prop_oneof![4 => 0u64..50, 1 => Just(u64::MAX)],
        prop_oneof![8 => Just(0i8), 1 => -1i8..=2],
        prop_oneof![40 => Just(Spoil::None), 1 => Just(Spoil::BadSignature), 1 => Just(Spoil::WrongChain)],
    )
        .prop_map(|(from, to, amount, fee, nonce_offset, spoil)| TxSpec {
            from,
            to,
            amount,
            fee,
            nonce_offset,
            spoil,
        })
}

fn supply(ledger: &Ledger) -> u128 {
    ledger
        .accounts()
        .unwrap()
        .iter()
        .map(|(_, a)| u128::from(a.balance))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn blocks_conserve_supply_and_both_stores_agree(
        balances in proptest::collection::vec(0u64..10_000, 2..6),
        blocks in proptest::collection::vec(proptest::collection::vec(tx_spec(5), 0..12), 1..5),
    ) {
        let n = balances.len();
        let ks = keys(n + 2);
        let proposer = Keypair::from_seed(&[200; 32]).address();
        let g = genesis(&balances, proposer);
        let mem = Ledger::open(Box::new(MemoryStore::new()), &g).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rocks = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
        let total = supply(&mem);
        prop_assert_eq!(total, u128::from(g.total_supply()));

        // Nonces we believe each sender is at, to make most transactions valid.
        let mut expected_nonce: HashMap<Address, u64> = HashMap::new();
        for (bi, specs) in blocks.iter().enumerate() {
            let mut txs = Vec::new();
            let mut spoiled = false;
            for s in specs.iter().filter(|s| s.from < n) {
                let from = &ks[s.from];
                let base = *expected_nonce.get(&from.address()).unwrap_or(&0);
                let nonce = base.saturating_add_signed(i64::from(s.nonce_offset));
                let mut st = Transaction {
                    chain_id: if s.spoil == Spoil::WrongChain { CHAIN + 1 } else { CHAIN },
                    from: from.address(),
                    to: ks[s.to % ks.len()].address(),
                    amount: s.amount,
                    fee: s.fee,
                    nonce,
                }
                .sign(from);
                if s.spoil == Spoil::BadSignature {
                    st = st.altered(|_, sig| sig.0[40] ^= 0x10);
                }
                spoiled |= s.spoil != Spoil::None;
                if s.nonce_offset == 0 {
                    expected_nonce.insert(from.address(), base + 1);
                }
                txs.push(st);
            }
            // Identical transactions within a block, or ones already final (a regenerated
            // copy of an earlier transaction), make a block invalid by design: keep the
            // first, drop the repeats.
            let mut seen = std::collections::HashSet::new();
            txs.retain(|t| seen.insert(t.hash()) && !mem.contains_tx(&t.hash()).unwrap());

            let before: HashMap<Address, Account> = mem.accounts().unwrap().into_iter().collect();
            let built = build_block(&mem, CHAIN, &mem.head(), proposer, bi as u64, bi as u64, txs.clone());
            if spoiled {
                let invalid = matches!(built, Err(BlockError::BadSignature { .. } | BlockError::WrongChain { .. }));
                prop_assert!(invalid, "a block with a spoiled transaction must be invalid: {:?}", built.err());
                // And a validator given that block refuses it.
                prop_assert!(execute(&rocks, CHAIN, &proposer, &txs).is_err());
                continue;
            }
            let (block, exec) = built.unwrap();
            // What the builder left out could not pay for its place: given whole, the
            // transactions make an invalid block.
            let whole = execute(&rocks, CHAIN, &proposer, &txs);
            prop_assert_eq!(
                matches!(whole, Err(BlockError::Unpayable { .. })),
                block.txs.len() < txs.len()
            );
            let exec_rocks = validate_block(&rocks, CHAIN, &rocks.head(), &block).unwrap();
            prop_assert_eq!(exec.state_root(), exec_rocks.state_root());
            mem.commit(&block, &[], &exec).unwrap();
            rocks.commit(&block, &[], &exec_rocks).unwrap();
            prop_assert_eq!(mem.head(), rocks.head());
            prop_assert_eq!(supply(&mem), total);
            prop_assert_eq!(supply(&rocks), total);
            mem.verify_state().unwrap();
            rocks.verify_state().unwrap();

            // Nonces go up by exactly the number of transactions included (a failed
            // one used its nonce and paid its fee too).
            let mut sent_ok: HashMap<Address, u64> = HashMap::new();
            for (t, r) in block.txs.iter().zip(&exec.receipts) {
                let failed_state = mem.tx_location(&t.hash()).unwrap().unwrap().receipt;
                prop_assert_eq!(failed_state, *r);
                *sent_ok.entry(t.tx().from).or_default() += 1;
            }
            for k in &ks {
                let a = k.address();
                let old = before.get(&a).map_or(0, |x| x.nonce);
                let new = mem.account(&a).unwrap().unwrap_or_default().nonce;
                prop_assert_eq!(new, old + sent_ok.get(&a).copied().unwrap_or(0));
                // Resync our belief with the chain for the next block.
                expected_nonce.insert(a, new);
            }
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = grapevine_ledger::SignedTx::from_bytes(&bytes);
        let _ = grapevine_ledger::Block::from_bytes(&bytes);
        let _ = grapevine_ledger::codec::decode::<grapevine_ledger::store::StoredBlock>(&bytes, 1 << 20);
        let _ = grapevine_ledger::Genesis::from_json(&bytes);
    }

    #[test]
    fn truncated_blocks_are_errors(cut in 0usize..1000) {
        let k = Keypair::from_seed(&[1; 32]);
        let g = genesis(&[1000], Address([9; 32]));
        let mem = Ledger::open(Box::new(MemoryStore::new()), &g).unwrap();
        let txs = (0..5).map(|n| Transaction { chain_id: CHAIN, from: k.address(), to: Address([3; 32]), amount: 1, fee: 1, nonce: n }.sign(&k)).collect();
        let (block, _) = build_block(&mem, CHAIN, &mem.head(), Address([9; 32]), 0, 0, txs).unwrap();
        let bytes = block.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(grapevine_ledger::Block::from_bytes(&bytes[..cut]).is_err());
    }
}

#[test]
fn failed_transactions_pay_their_fee_and_unpayable_ones_stay_out() {
    let ks = keys(2);
    let proposer = Keypair::from_seed(&[99; 32]).address();
    let g = genesis(&[100, 0], proposer);
    let l = Ledger::open(Box::new(MemoryStore::new()), &g).unwrap();
    let tx = |amount, fee, nonce| {
        Transaction {
            chain_id: CHAIN,
            from: ks[0].address(),
            to: ks[1].address(),
            amount,
            fee,
            nonce,
        }
        .sign(&ks[0])
    };
    let txs = vec![
        tx(50, 5, 0),       // moves 50, pays 5: 45 left
        tx(50, 5, 1),       // 55 needed: fails, pays 5: 40 left
        tx(1, 1, 5),        // nonce gap: left out
        tx(u64::MAX, 1, 2), // amount beyond any balance: fails, pays 1: 39 left
        tx(1, 100, 3),      // fee above the balance: left out
    ];
    let whole = execute(&l, CHAIN, &proposer, &txs);
    assert!(
        matches!(whole, Err(BlockError::Unpayable { index: 2, .. })),
        "{whole:?}"
    );
    let (block, exec) = build_block(&l, CHAIN, &l.head(), proposer, 1, 1, txs.clone()).unwrap();
    assert_eq!(block.txs, vec![txs[0], txs[1], txs[3]]);
    assert_eq!(exec.receipts[0], Receipt::Success);
    assert!(matches!(exec.receipts[1], Receipt::Failed { .. }));
    assert!(matches!(exec.receipts[2], Receipt::Failed { .. }));
    validate_block(&l, CHAIN, &l.head(), &block).unwrap();
    l.commit(&block, &[], &exec).unwrap();
    assert_eq!(
        l.account(&ks[0].address()).unwrap().unwrap(),
        Account {
            balance: 39,
            nonce: 3
        }
    );
    assert_eq!(l.account(&ks[1].address()).unwrap().unwrap().balance, 50);
    assert_eq!(l.account(&proposer).unwrap().unwrap().balance, 11);

    // Replaying the same transaction in a later block makes that block invalid.
    let again = execute(&l, CHAIN, &proposer, &block.txs[..1]);
    assert!(matches!(again, Err(BlockError::DuplicateTx { .. })));
}

#[test]
fn reopening_for_another_genesis_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let g1 = genesis(&[5], Address([1; 32]));
    let g2 = genesis(&[6], Address([1; 32]));
    drop(Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g1).unwrap());
    let err = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g2).unwrap_err();
    assert!(err.to_string().contains("created for genesis"), "{err}");
    // The right genesis still opens.
    Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g1).unwrap();
}

#[test]
fn a_data_directory_of_another_format_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(&[5], Address([1; 32]));
    drop(Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap());
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put(
            Column::Meta,
            b"format_version".to_vec(),
            2u32.to_le_bytes().to_vec(),
        );
        store.write(b, true).unwrap();
    }
    let err = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FormatVersion { found: 2, supported } if supported == FORMAT_VERSION
        ),
        "{err}"
    );
    assert!(err.to_string().contains("start with a new one"), "{err}");
}

#[test]
fn a_new_ledger_writes_its_genesis_state_to_table_files() {
    // A large genesis left in the memtable is searched by every account read until a
    // background flush, and replayed from the log on every restart until then.
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(&[5, 6, 7], Address([1; 32]));
    let ledger = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
    let tables = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sst"))
        })
        .count();
    assert!(
        tables > 0,
        "the genesis state is only in the memtable and the log"
    );
    assert_eq!(supply(&ledger), u128::from(g.total_supply()));
}

#[test]
fn account_history_pages_newest_first_in_both_stores() {
    let ks = keys(3);
    let proposer = Keypair::from_seed(&[99; 32]).address();
    let g = genesis(&[1000, 1000, 0], proposer);
    let dir = tempfile::tempdir().unwrap();
    for l in [
        Ledger::open(Box::new(MemoryStore::new()), &g).unwrap(),
        Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap(),
    ] {
        // Three transfers a block from ks[0]: to ks[1], to ks[2] and to itself, so one
        // account's history entry for a block holds several transactions.
        let mut sent = vec![];
        for block in 0..3u64 {
            let txs: Vec<_> = (0..3u64)
                .map(|i| {
                    Transaction {
                        chain_id: CHAIN,
                        from: ks[0].address(),
                        to: ks[[1, 2, 0][i as usize]].address(),
                        amount: 1,
                        fee: 1,
                        nonce: block * 3 + i,
                    }
                    .sign(&ks[0])
                })
                .collect();
            sent.extend(txs.iter().map(|t| t.hash()));
            let (b, exec) = build_block(&l, CHAIN, &l.head(), proposer, block, block, txs).unwrap();
            l.commit(&b, &[], &exec).unwrap();
        }
        sent.reverse();
        let history = |addr: &Address, before, limit| {
            l.account_transactions(addr, before, limit)
                .unwrap()
                .into_iter()
                .map(|(h, _, _)| h)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            history(&ks[0].address(), None, 100),
            sent,
            "the sender sees all nine, its transfer to itself once, newest first"
        );
        let (_, last_height, last_index) =
            l.account_transactions(&ks[0].address(), None, 1).unwrap()[0];
        assert_eq!(
            (last_height, last_index),
            (3, 2),
            "positions are height and index"
        );
        for size in 1..=10 {
            let mut paged = Vec::new();
            let mut before = None;
            // Bounded: a cursor that does not advance fails the comparison below.
            for _ in 0..=sent.len() {
                let page = l
                    .account_transactions(&ks[0].address(), before, size)
                    .unwrap();
                assert!(page.len() <= size);
                paged.extend(page.iter().map(|(h, _, _)| *h));
                match page.last() {
                    Some((_, h, i)) if page.len() == size => before = Some((*h, *i)),
                    _ => break,
                }
            }
            assert_eq!(
                paged, sent,
                "pages of {size} continue where the last stopped"
            );
        }
        assert_eq!(history(&ks[1].address(), None, 100).len(), 3);
        assert_eq!(
            history(&ks[2].address(), None, 100),
            [sent[1], sent[4], sent[7]],
            "the recipient sees its own transfers only"
        );
        assert!(history(&ks[0].address(), None, 0).is_empty());
        assert!(history(&proposer, None, 100).is_empty());
    }
}

#[test]
fn a_damaged_account_history_entry_is_an_error_not_a_short_page() {
    let ks = keys(2);
    let g = genesis(&[1000, 0], Address([1; 32]));
    let dir = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
        let tx = Transaction {
            chain_id: CHAIN,
            from: ks[0].address(),
            to: ks[1].address(),
            amount: 1,
            fee: 1,
            nonce: 0,
        }
        .sign(&ks[0]);
        let (b, exec) =
            build_block(&l, CHAIN, &l.head(), Address([1; 32]), 0, 0, vec![tx]).unwrap();
        l.commit(&b, &[], &exec).unwrap();
        assert_eq!(
            l.account_transactions(&ks[1].address(), None, 10)
                .unwrap()
                .len(),
            1
        );
    }
    {
        // An entry for height 1 of ks[1] cut short: 35 bytes, not a whole record.
        let store = RocksStore::open(dir.path()).unwrap();
        let mut key = ks[1].address().0.to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        let mut b = WriteBatch::default();
        b.put(Column::AccountTxs, key, vec![0u8; 35]);
        store.write(b, true).unwrap();
    }
    let l = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
    let err = l
        .account_transactions(&ks[1].address(), None, 10)
        .unwrap_err();
    assert!(
        err.to_string().contains("account transaction index"),
        "{err}"
    );
    assert_eq!(
        l.account_transactions(&ks[0].address(), None, 10)
            .unwrap()
            .len(),
        1,
        "another account's history is still read"
    );
}

#[test]
fn executing_on_an_overlay_equals_executing_after_commit() {
    use grapevine_ledger::state::Overlay;
    let ks = keys(2);
    let proposer = Keypair::from_seed(&[99; 32]).address();
    let g = genesis(&[1000, 10], proposer);
    let l = Ledger::open(Box::new(MemoryStore::new()), &g).unwrap();
    let tx = |from: usize, to: usize, amount, nonce| {
        Transaction {
            chain_id: CHAIN,
            from: ks[from].address(),
            to: ks[to].address(),
            amount,
            fee: 1,
            nonce,
        }
        .sign(&ks[from])
    };
    // Block 1, executed but not committed.
    let t1 = tx(0, 1, 500, 0);
    let (b1, e1) = build_block(&l, CHAIN, &l.head(), proposer, 1, 1, vec![t1]).unwrap();
    // Block 2 built on the overlay: account 1 spends money it only has after block 1.
    let overlay = Overlay::new(&l, &[&e1]);
    let (b2, e2) = build_block(
        &overlay,
        CHAIN,
        &b1.header,
        proposer,
        2,
        2,
        vec![tx(1, 0, 300, 0)],
    )
    .unwrap();
    assert_eq!(e2.receipts, vec![Receipt::Success], "sees block 1's credit");
    // Re-including block 1's transaction on the overlay is a duplicate.
    assert!(matches!(
        execute(&overlay, CHAIN, &proposer, &[t1]),
        Err(BlockError::DuplicateTx { .. })
    ));
    // Committing block 1, then validating block 2 against the ledger, agrees.
    l.commit(&b1, &[], &e1).unwrap();
    let e2_committed = validate_block(&l, CHAIN, &b1.header, &b2).unwrap();
    assert_eq!(e2_committed.state_root(), e2.state_root());
    l.commit(&b2, &[], &e2_committed).unwrap();
    l.verify_state().unwrap();
}

#[test]
fn consensus_records_scan_by_prefix_and_survive_reopen() {
    let k = keys(1);
    let g = genesis(&[1], k[0].address());
    let dir = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
        l.consensus_put(b"safety", b"s").unwrap();
        l.consensus_put_unsynced(b"proposal/2", b"b").unwrap();
        l.consensus_put_unsynced(b"proposal/1", b"a").unwrap();
        l.consensus_put_unsynced(b"proposalz", b"not mine").unwrap();
        l.consensus_put_unsynced(b"zzz", b"z").unwrap();
        let got = l.consensus_scan(b"proposal/").unwrap();
        assert_eq!(
            got,
            vec![
                (b"proposal/1".to_vec(), b"a".to_vec()),
                (b"proposal/2".to_vec(), b"b".to_vec())
            ]
        );
        l.consensus_delete(&[b"proposal/1".to_vec()]).unwrap();
        l.flush().unwrap();
    }
    let l = Ledger::open(Box::new(RocksStore::open(dir.path()).unwrap()), &g).unwrap();
    assert_eq!(
        l.consensus_scan(b"proposal/").unwrap(),
        vec![(b"proposal/2".to_vec(), b"b".to_vec())]
    );
    assert_eq!(l.consensus_get(b"safety").unwrap(), Some(b"s".to_vec()));
}
