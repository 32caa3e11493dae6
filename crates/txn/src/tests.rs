use super::*;

fn coord() -> Coordinator {
    Coordinator::new(Config::default())
}

fn init(c: &mut Coordinator, id: &str, now: i64) -> (i64, i16) {
    let out = c
        .init_producer_id::<()>(id, 60_000, None, now, || Ok(7))
        .expect("alloc")
        .expect("init");
    let InitOutcome::Write(t) = out else {
        panic!("unexpected {out:?}")
    };
    c.complete(&t, true);
    (t.target.producer_id, t.target.producer_epoch)
}

fn tp(t: &str, p: i32) -> (String, i32) {
    (t.to_string(), p)
}

#[test]
fn commit_cycle_and_retry() {
    let mut c = coord();
    let (pid, epoch) = init(&mut c, "a", 0);
    assert_eq!((pid, epoch), (7, 0));
    let t = c
        .add_partitions("a", pid, epoch, &[tp("t", 0), tp("t", 1)], 10)
        .expect("add")
        .expect("a write");
    // While it is being written, others wait.
    assert_eq!(
        c.add_partitions("a", pid, epoch, &[tp("t", 2)], 11),
        Err(codes::CONCURRENT_TRANSACTIONS)
    );
    c.complete(&t, true);
    assert_eq!(c.get("a").map(|m| m.state), Some(TxnState::Ongoing));
    assert_eq!(
        c.add_partitions("a", pid, epoch, &[tp("t", 1)], 12),
        Ok(None)
    );
    assert_eq!(c.verify_partition(pid, epoch, "t", 1), Ok(()));
    assert_eq!(
        c.verify_partition(pid, epoch, "t", 5),
        Err(codes::INVALID_TXN_STATE)
    );
    let EndOutcome::Prepare(t) = c
        .end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: epoch,
                commit: true,
                bump: false,
            },
            20,
            || Ok(99),
        )
        .expect("alloc")
        .expect("end")
    else {
        panic!()
    };
    c.complete(&t, true);
    assert_eq!(c.prepared().len(), 1);
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: epoch,
                commit: true,
                bump: false
            },
            21,
            || Ok(99)
        )
        .expect("alloc"),
        Err(codes::CONCURRENT_TRANSACTIONS)
    );
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: epoch,
                commit: false,
                bump: false
            },
            21,
            || Ok(99)
        )
        .expect("alloc"),
        Err(codes::INVALID_TXN_STATE)
    );
    let done = c.markers_written("a", 30).expect("complete");
    c.complete(&done, true);
    let m = c.get("a").expect("meta");
    assert_eq!(m.state, TxnState::CompleteCommit);
    assert!(m.partitions.is_empty());
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: epoch,
                commit: true,
                bump: false
            },
            40,
            || Ok(99)
        )
        .expect("alloc"),
        Ok(EndOutcome::AlreadyDone)
    );
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: epoch,
                commit: false,
                bump: false
            },
            40,
            || Ok(99)
        )
        .expect("alloc"),
        Err(codes::INVALID_TXN_STATE)
    );
    // After completion, data for the old transaction is refused.
    assert_eq!(
        c.verify_partition(pid, epoch, "t", 1),
        Err(codes::INVALID_TXN_STATE)
    );
}

#[test]
fn a_second_instance_fences_the_first() {
    let mut c = coord();
    let (pid, e0) = init(&mut c, "a", 0);
    let (pid2, e1) = init(&mut c, "a", 1);
    assert_eq!(pid, pid2);
    assert_eq!(e1, e0 + 1);
    assert_eq!(
        c.add_partitions("a", pid, e0, &[tp("t", 0)], 2),
        Err(codes::PRODUCER_FENCED)
    );
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: e0,
                commit: true,
                bump: false
            },
            2,
            || Ok(99)
        )
        .expect("alloc"),
        Err(codes::PRODUCER_FENCED)
    );
    assert_eq!(
        c.verify_partition(pid, e0, "t", 0),
        Err(codes::INVALID_PRODUCER_EPOCH)
    );
}

#[test]
fn init_with_an_open_transaction_aborts_it_first() {
    let mut c = coord();
    let (pid, e0) = init(&mut c, "a", 0);
    let t = c
        .add_partitions("a", pid, e0, &[tp("t", 0)], 1)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    let out = c
        .init_producer_id::<()>("a", 60_000, None, 2, || Ok(99))
        .expect("alloc")
        .expect("init");
    let InitOutcome::AbortFirst(t) = out else {
        panic!("{out:?}")
    };
    assert_eq!(t.target.state, TxnState::PrepareAbort);
    assert_eq!(t.target.producer_epoch, e0 + 1);
    c.complete(&t, true);
    // Until the markers are written, the new instance waits.
    assert_eq!(
        c.init_producer_id::<()>("a", 60_000, None, 3, || Ok(99)),
        Ok(Err(codes::CONCURRENT_TRANSACTIONS))
    );
    let done = c.markers_written("a", 4).expect("complete");
    assert_eq!(done.target.state, TxnState::CompleteAbort);
    c.complete(&done, true);
    let (_, e2) = init(&mut c, "a", 5);
    assert_eq!(e2, e0 + 2);
}

#[test]
fn open_transactions_time_out_with_an_epoch_bump() {
    let mut c = coord();
    let (pid, e0) = init(&mut c, "a", 0);
    let t = c
        .add_partitions("a", pid, e0, &[tp("t", 0)], 1_000)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    assert_eq!(c.next_deadline(), Some(61_001));
    assert!(c.expired(61_000).is_empty());
    let mut aborts = c.expired(61_001);
    assert_eq!(aborts.len(), 1);
    let t = aborts.remove(0);
    assert_eq!(t.target.state, TxnState::PrepareAbort);
    c.complete(&t, true);
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: e0,
                commit: true,
                bump: false
            },
            61_002,
            || Ok(99)
        )
        .expect("alloc"),
        Err(codes::PRODUCER_FENCED)
    );
    // KIP-360: the fenced producer may re-initialise with its old epoch.
    let done = c.markers_written("a", 61_003).expect("complete");
    c.complete(&done, true);
    let out = c
        .init_producer_id::<()>("a", 60_000, Some((pid, e0)), 61_004, || Ok(99))
        .expect("alloc");
    assert!(matches!(out, Ok(InitOutcome::Write(_))), "{out:?}");
}

#[test]
fn timeout_limits_and_unknown_ids() {
    let mut c = coord();
    assert_eq!(
        c.init_producer_id::<()>("a", 900_001, None, 0, || Ok(1)),
        Ok(Err(codes::INVALID_TRANSACTION_TIMEOUT))
    );
    assert_eq!(
        c.add_partitions("nope", 1, 0, &[tp("t", 0)], 0),
        Err(codes::INVALID_PRODUCER_ID_MAPPING)
    );
    // A failed write leaves nothing behind.
    let out = c
        .init_producer_id::<()>("a", 1000, None, 0, || Ok(1))
        .expect("alloc")
        .expect("init");
    let InitOutcome::Write(t) = out else { panic!() };
    c.complete(&t, false);
    assert!(c.get("a").is_none());
}

#[test]
fn records_round_trip_and_rebuild_state() {
    let mut c = coord();
    let (pid, e0) = init(&mut c, "tx-1", 0);
    let t = c
        .add_partitions("tx-1", pid, e0, &[tp("a", 0), tp("a", 3), tp("b", 1)], 5)
        .expect("add")
        .expect("write");
    let key = records::key("tx-1");
    let value = records::value(&t.target);
    assert_eq!(records::decode_key(&key).ok().as_deref(), Some("tx-1"));
    let back = records::decode_value("tx-1", &value).expect("decode");
    assert_eq!(back.partitions, t.target.partitions);
    assert_eq!(back.state, TxnState::Ongoing);
    let mut c2 = coord();
    c2.load_record(&key, Some(&value)).expect("load");
    assert_eq!(c2.transactional_id_of(pid), Some("tx-1"));
    assert_eq!(c2.verify_partition(pid, e0, "a", 3), Ok(()));
    c2.load_record(&key, None).expect("tombstone");
    assert!(c2.is_empty());
    // Damaged values are refused, never panic.
    for cut in 0..value.len() {
        assert!(records::decode_value("x", &value[..cut]).is_err());
    }
}

#[test]
fn version_2_bumps_the_epoch_so_a_delayed_end_txn_cannot_touch_the_next_transaction() {
    let mut c = coord();
    let (pid, e0) = init(&mut c, "a", 0);
    let t = c
        .add_partitions("a", pid, e0, &[tp("t", 0)], 1)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    let out = c
        .end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: e0,
                commit: true,
                bump: true,
            },
            2,
            || Ok(99),
        )
        .expect("alloc")
        .expect("end");
    let EndOutcome::Prepare(t) = out else {
        panic!()
    };
    assert_eq!(
        t.target.producer_epoch,
        e0 + 1,
        "markers carry the bumped epoch"
    );
    c.complete(&t, true);
    assert_eq!(c.continuing_producer("a"), Some((pid, e0 + 1)));
    let done = c.markers_written("a", 3).expect("complete");
    c.complete(&done, true);
    // A retry of the same EndTxn is answered with success.
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: e0,
                commit: true,
                bump: true
            },
            4,
            || Ok(99)
        ),
        Ok(Ok(EndOutcome::AlreadyDone))
    );
    // The next transaction runs with the new epoch.
    let e1 = e0 + 1;
    let t = c
        .add_partitions("a", pid, e1, &[tp("t", 0)], 5)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    // The delayed EndTxn of the first transaction arrives now: it cannot end this one.
    assert_eq!(
        c.end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: e0,
                commit: true,
                bump: true
            },
            6,
            || Ok(99)
        ),
        Ok(Err(codes::PRODUCER_FENCED))
    );
    assert_eq!(c.get("a").map(|m| m.state), Some(TxnState::Ongoing));
    // Nor can its late data.
    assert_eq!(
        c.verify_partition(pid, e0, "t", 0),
        Err(codes::INVALID_PRODUCER_EPOCH)
    );
    assert_eq!(c.verify_partition(pid, e1, "t", 0), Ok(()));
}

#[test]
fn version_2_switches_to_a_new_producer_id_when_epochs_run_out() {
    let mut c = coord();
    let (pid, _) = init(&mut c, "a", 0);
    let mut m = c.get("a").cloned().expect("meta");
    m.producer_epoch = i16::MAX - 1;
    c.complete(&Transition { target: m }, true);
    let t = c
        .add_partitions("a", pid, i16::MAX - 1, &[tp("t", 0)], 1)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    let out = c
        .end_txn::<()>(
            EndTxn {
                transactional_id: "a",
                producer_id: pid,
                producer_epoch: i16::MAX - 1,
                commit: true,
                bump: true,
            },
            2,
            || Ok(555),
        )
        .expect("alloc")
        .expect("end");
    let EndOutcome::Prepare(t) = out else {
        panic!()
    };
    c.complete(&t, true);
    assert_eq!(c.continuing_producer("a"), Some((555, 0)));
    let done = c.markers_written("a", 3).expect("complete");
    c.complete(&done, true);
    let m = c.get("a").expect("meta");
    assert_eq!((m.producer_id, m.producer_epoch), (555, 0));
    assert_eq!(c.transactional_id_of(555), Some("a"));
}

#[test]
fn idle_transactional_ids_expire() {
    let mut c = Coordinator::new(Config {
        id_expiration_ms: 1000,
        ..Config::default()
    });
    let (pid, _) = init(&mut c, "idle", 0);
    let (busy_pid, busy_epoch) = init(&mut c, "busy", 0);
    let t = c
        .add_partitions("busy", busy_pid, busy_epoch, &[tp("t", 0)], 10)
        .expect("add")
        .expect("write");
    c.complete(&t, true);
    assert!(c.expired_ids(1000).is_empty());
    // An open transaction never expires this way (it times out instead).
    let ids = c.expired_ids(5000);
    assert_eq!(ids, vec!["idle".to_string()]);
    assert_eq!(
        c.init_producer_id::<()>("idle", 1000, None, 5001, || Ok(1)),
        Ok(Err(codes::CONCURRENT_TRANSACTIONS))
    );
    c.forget("idle", true);
    assert!(c.get("idle").is_none());
    assert_eq!(c.transactional_id_of(pid), None);
}

#[test]
fn mutated_records_never_panic() {
    // Deterministic mutations of a valid record (the fuzz target decode_txn_state explores
    // further on nightly).
    let mut c = coord();
    let (pid, e) = init(&mut c, "m", 0);
    let t = c
        .add_partitions("m", pid, e, &[tp("a", 0), tp("b", 7)], 1)
        .expect("add")
        .expect("write");
    let value = records::value(&t.target);
    let key = records::key("m");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut v = value.clone();
        let i = (seed as usize) % v.len();
        v[i] ^= (seed >> 32) as u8 | 1;
        if (seed >> 5) & 3 == 0 {
            v.truncate((seed as usize >> 8) % v.len());
        }
        let mut c2 = coord();
        let _ = c2.load_record(&key, Some(&v));
        let _ = c2.load_record(&v, Some(&key));
    }
}

#[test]
fn unload_drops_only_the_chosen_ids_and_their_producer_ids() {
    let mut c = coord();
    let (pa, _) = init(&mut c, "a", 0);
    let out = c
        .init_producer_id::<()>("b", 60_000, None, 0, || Ok(8))
        .expect("alloc")
        .expect("init");
    let InitOutcome::Write(t) = out else {
        panic!("unexpected {out:?}")
    };
    c.complete(&t, true);
    assert_eq!(c.unload(|id| id == "a"), 1);
    assert!(c.get("a").is_none());
    assert_eq!(c.transactional_id_of(pa), None);
    assert_eq!(c.transactional_id_of(8), Some("b"));
    assert_eq!(c.len(), 1);
    // Nothing left to unload.
    assert_eq!(c.unload(|id| id == "a"), 0);
}
