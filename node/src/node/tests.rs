//! Unit tests of the node's admission, views, health and commit.

use grapevine_ledger::state::build_block;

use super::admission::{FinalityPrefetch, refusal_reasons};
use super::*;

/// Relayed batches from several peers are validated together; each keeps its own
/// verdicts, so a forgery or a foreign-chain transaction in one does not touch the
/// others.
#[test]
fn batches_validated_together_keep_their_own_verdicts() {
    use grapevine_ledger::{Keypair, MemoryStore, Transaction};
    let keys: Vec<Keypair> = (20..23u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
    let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let genesis = crate::test_support::genesis(9, &addrs, 1_000, addrs[0]);
    let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
    let (node, _) = Node::new(
        ledger,
        MempoolConfig::default(),
        keys[0].address(),
        vec![keys[0].address()],
    );
    let tx = |k: &Keypair, nonce, chain_id| {
        Transaction {
            chain_id,
            from: k.address(),
            to: Address([7; 32]),
            amount: 1,
            fee: 1,
            nonce,
        }
        .sign(k)
    };
    let forged = tx(&keys[1], 1, 9).altered(|t, _| t.amount = 500);
    let batches = vec![
        vec![tx(&keys[0], 0, 9), tx(&keys[0], 1, 9)],
        vec![tx(&keys[1], 0, 9), forged, tx(&keys[1], 2, 8)],
        vec![tx(&keys[2], 0, 9)],
    ];
    use Verdict::{Accepted, Invalid};
    use grapevine_net::TxValidator;
    assert_eq!(
        node.validate_many(&batches),
        vec![
            vec![Accepted, Accepted],
            vec![Accepted, Invalid, Invalid],
            vec![Accepted]
        ]
    );
    assert_eq!(node.pool().counts().0, 4, "every valid one is pooled");
}

/// A transfer of chain 9 with nonce 0 and fee 1.
fn first_transfer(k: &grapevine_ledger::Keypair, to: Address, amount: u64) -> SignedTx {
    transfer(k, to, amount, 0)
}

/// A transfer of chain 9 with fee 1.
fn transfer(k: &grapevine_ledger::Keypair, to: Address, amount: u64, nonce: u64) -> SignedTx {
    grapevine_ledger::Transaction {
        chain_id: 9,
        from: k.address(),
        to,
        amount,
        fee: 1,
        nonce,
    }
    .sign(k)
}

/// A node whose ledger holds a final block with a transfer that failed for want of
/// balance (it paid its fee and used nonce 0), then a credit to its sender. Returns the
/// node, its ledger, the sender's key and the failed transfer.
fn node_with_a_failed_final_transfer(
    seed: u8,
) -> (Arc<Node>, Arc<Ledger>, grapevine_ledger::Keypair, SignedTx) {
    use grapevine_ledger::{Keypair, MemoryStore};
    let keys: Vec<Keypair> = (seed..seed + 2)
        .map(|i| Keypair::from_seed(&[i; 32]))
        .collect();
    let addrs: Vec<Address> = keys.iter().map(Keypair::address).collect();
    let genesis = crate::test_support::genesis(9, &addrs, 1_000, addrs[0]);
    let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
    let (node, _) = Node::new(
        ledger.clone(),
        MempoolConfig::default(),
        addrs[0],
        vec![addrs[0]],
    );
    let failed = first_transfer(&keys[0], Address([7; 32]), 1_500);
    let credit = first_transfer(&keys[1], addrs[0], 900);
    let head = ledger.head();
    let (block, exec) =
        build_block(&*ledger, 9, &head, addrs[0], 1, 1, vec![failed, credit]).unwrap();
    assert!(matches!(
        exec.receipts[..],
        [
            grapevine_ledger::Receipt::Failed { .. },
            grapevine_ledger::Receipt::Success
        ]
    ));
    node.commit_block(&block, &[], &exec, false).unwrap();
    assert_eq!(
        ledger.account(&addrs[0]).unwrap().unwrap(),
        grapevine_ledger::Account {
            // It proposed the block: the fees it paid came back, plus the credit's.
            balance: 1_000 + 900 + 1,
            nonce: 1
        },
        "the failed transfer used its nonce"
    );
    let sender = keys.into_iter().next().unwrap();
    (node, ledger, sender, failed)
}

/// `/health` reports a stall once no block has become final for the configured
/// time while one is due (on a networked node always, on a dev node while a
/// transaction is pending), and is ready again once a block is final.
#[test]
fn health_reports_finality_that_stalled_while_blocks_are_due() {
    use grapevine_rpc::NodeApi;
    let (node, ledger, sender, _) = node_with_a_failed_final_transfer(40);
    node.set_health_max_stall(Some(Duration::from_millis(50)));
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(
        node.not_ready_reason(),
        None,
        "a dev node with nothing pending"
    );
    let tx = grapevine_ledger::Transaction {
        chain_id: 9,
        from: sender.address(),
        to: Address([7; 32]),
        amount: 1,
        fee: 1,
        nonce: 1,
    }
    .sign(&sender);
    assert_eq!(node.admit_from_peer(&[tx]), vec![Verdict::Accepted]);
    let why = node
        .not_ready_reason()
        .expect("pending and nothing final for 80 ms");
    assert!(why.starts_with("finality stalled"), "{why}");
    let head = ledger.head();
    let (block, exec) = build_block(&*ledger, 9, &head, sender.address(), 2, 2, vec![tx])
        .expect("the pending transfer makes a block");
    node.commit_block(&block, &[], &exec, false).unwrap();
    assert_eq!(node.not_ready_reason(), None, "a block is final again");
    // A networked node expects blocks even with nothing pending (empty ones).
    node.net_view().networked = true;
    std::thread::sleep(Duration::from_millis(80));
    let why = node
        .not_ready_reason()
        .expect("networked, nothing final for 80 ms");
    assert!(why.starts_with("finality stalled"), "{why}");
    node.set_health_max_stall(None);
    assert_eq!(node.not_ready_reason(), None, "the check can be turned off");
}

/// A relayed transaction already in a final block is not pooled again, even one
/// that failed there.
#[test]
fn relayed_transactions_already_final_are_ignored() {
    let (node, _, sender, failed) = node_with_a_failed_final_transfer(5);
    let fresh = transfer(&sender, Address([7; 32]), 10, 1);
    assert_eq!(
        node.admit_from_peer(&[failed, fresh]),
        vec![Verdict::Ignored, Verdict::Accepted]
    );
    assert_eq!(node.pool().counts().0, 1);
}

/// A block view answers "already final?" like the ledger: no for what the pool
/// holds, the ledger's answer for the rest, and the ledger's alone once a block was
/// written after the pool was read.
#[test]
fn block_view_answers_like_the_ledger() {
    let (node, ledger, sender, failed) = node_with_a_failed_final_transfer(11);
    let fresh = transfer(&sender, Address([7; 32]), 10, 1);
    let unknown = transfer(&sender, Address([7; 32]), 20, 1);
    assert_eq!(node.admit_from_peer(&[fresh]), vec![Verdict::Accepted]);
    let all = [failed.hash(), fresh.hash(), unknown.hash()];
    let view = node.block_view(&[failed, fresh, unknown]);
    assert_eq!(view.contains_txs(&all).unwrap(), vec![true, false, false]);
    // Asked in another order, it asks the ledger: the same answers.
    let reordered = [all[2], all[0], all[1]];
    assert_eq!(
        view.contains_txs(&reordered).unwrap(),
        vec![false, true, false]
    );

    let head = ledger.head();
    let (block, exec) =
        build_block(&*ledger, 9, &head, sender.address(), 2, 2, vec![fresh]).unwrap();
    node.commit_block(&block, &[], &exec, false).unwrap();
    assert_eq!(view.contains_txs(&all).unwrap(), vec![true, true, false]);
}

/// Admission takes "already final?" from the looked-up answers, not the ledger.
#[test]
fn prefetched_finality_answers_decide_admission() {
    use grapevine_ledger::{Keypair, MemoryStore, Transaction};
    let key = Keypair::from_seed(&[8; 32]);
    let genesis = crate::test_support::genesis(9, &[key.address()], 1_000, key.address());
    let ledger = Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap();
    let tx = Transaction {
        chain_id: 9,
        from: key.address(),
        to: Address([7; 32]),
        amount: 1,
        fee: 1,
        nonce: 0,
    }
    .sign(&key);
    let mut pool = Mempool::new(MempoolConfig::default());
    let answer = |f| FinalityPrefetch {
        ledger: &ledger,
        head: ledger.head().height,
        final_before: [(tx.hash(), f)].into_iter().collect(),
    };
    let said_final = answer(true);
    assert!(matches!(
        pool.submit_verified(tx, said_final.view(), Instant::now()),
        Err(Refusal::AlreadyFinal(_))
    ));
    let said_not = answer(false);
    assert!(
        pool.submit_verified(tx, said_not.view(), Instant::now())
            .is_ok()
    );
}

/// A JSON-RPC batch's transactions, admitted together, get the verdicts they would
/// get one by one: one already final (a failed one), a new one, the new one again,
/// bytes that do not decode.
#[test]
fn client_batches_get_the_verdicts_of_single_submissions() {
    let (node, _, sender, failed) = node_with_a_failed_final_transfer(30);
    let fresh = transfer(&sender, Address([7; 32]), 10, 1);
    let batch = vec![
        failed.to_bytes(),
        fresh.to_bytes(),
        fresh.to_bytes(),
        vec![1, 2, 3],
    ];
    let reasons: Vec<Result<Hash, &str>> = node
        .send_transactions(&batch)
        .into_iter()
        .map(|r| {
            r.map_err(|e| match e {
                ApiError::Rejected { reason, .. } => reason.name(),
                _ => "other",
            })
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            Err("alreadyFinal"),
            Ok(fresh.hash()),
            Err("alreadyKnown"),
            Err("malformed")
        ]
    );
}

/// Past the backlog the node refuses client transactions as busy (before checking
/// their signatures) and ignores relayed ones; once blocks drain the pool it admits
/// again. Transactions queued behind a nonce gap do not make it busy.
#[test]
fn a_pool_past_its_backlog_refuses_new_transactions_until_blocks_drain_it() {
    use grapevine_ledger::{Keypair, MemoryStore, Transaction};
    let key = Keypair::from_seed(&[3; 32]);
    let genesis = crate::test_support::genesis(9, &[key.address()], 1_000_000, key.address());
    let ledger = Arc::new(Ledger::open(Box::new(MemoryStore::new()), &genesis).unwrap());
    let cfg = MempoolConfig {
        min_backlog_txs: 5,
        ..MempoolConfig::default()
    };
    let (node, _) = Node::new(ledger.clone(), cfg, key.address(), vec![key.address()]);
    let tx_fee = |nonce, fee| {
        Transaction {
            chain_id: 9,
            from: key.address(),
            to: Address([7; 32]),
            amount: 1,
            fee,
            nonce,
        }
        .sign(&key)
    };
    let tx = |nonce| tx_fee(nonce, 1);
    for n in 0..5 {
        node.send_transaction(&tx(n).to_bytes()).unwrap();
    }
    let busy = node.send_transaction(&tx(5).to_bytes()).unwrap_err();
    assert!(
        matches!(
            busy,
            ApiError::Rejected {
                reason: RejectReason::Busy,
                ..
            }
        ),
        "{busy:?}"
    );
    assert_eq!(node.admit_from_peer(&[tx(5)]), vec![Verdict::Deferred]);
    // A fee above the lowest pooled one is admitted even now.
    node.send_transaction(&tx_fee(4, 2).to_bytes()).unwrap();
    // A block takes the five: the pool is empty and admits again.
    let txs = node.pool().select(10);
    let head = ledger.head();
    let (block, exec) = build_block(&*ledger, 9, &head, key.address(), 1, 1, txs).unwrap();
    node.commit_block(&block, &[], &exec, false).unwrap();
    std::thread::sleep(PENDING_COUNT_REUSE);
    node.send_transaction(&tx(5).to_bytes()).unwrap();
    // Queued transactions (behind a nonce gap) do not count: they may never run.
    for n in 7..12 {
        node.send_transaction(&tx(n).to_bytes()).unwrap();
    }
    std::thread::sleep(PENDING_COUNT_REUSE);
    node.send_transaction(&tx(12).to_bytes()).unwrap();
}

/// Each kind of refusal has a reason of its own, and every reason is used: a
/// client can tell them apart, and none is documented for nothing.
#[test]
fn every_refusal_has_a_reason_of_its_own() {
    let reasons = refusal_reasons();
    let distinct: std::collections::HashSet<_> = reasons.iter().collect();
    assert_eq!(
        distinct.len(),
        reasons.len(),
        "two refusals share a reason: {reasons:?}"
    );
    for r in RejectReason::ALL {
        assert!(reasons.contains(&r), "{r:?} is never used");
    }
}
