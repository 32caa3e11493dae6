//! Compaction: random keyed appends (some compressed, some tombstones) interleaved with
//! compaction passes; after each pass the log must hold a subset of what was written, at the
//! same offsets, including the latest record of every key, with the active segment untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::batch::{self, Compression, HEADER_SIZE};
use holdfast_log::{CleanupPolicy, Flusher, Log, LogConfig};

type Rec = (Option<Vec<u8>>, Option<Vec<u8>>); // key, value

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("holdfast-compaction-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 200,
        cleanup_policy: CleanupPolicy::COMPACT,
        min_compaction_lag_ms: 0,
        delete_retention_ms: 1_000_000_000,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// A batch of `recs`, compressed with `codec`.
fn make_batch(recs: &[Rec], ts: i64, codec: Compression) -> Vec<u8> {
    let r: Vec<Record> = recs
        .iter()
        .map(|(k, v)| Record {
            key: k.as_deref(),
            value: v.as_deref(),
            timestamp_ms: ts,
        })
        .collect();
    let plain = batch(&r, BatchOptions::default());
    if codec == Compression::None {
        return plain;
    }
    let mut b = plain[..HEADER_SIZE].to_vec();
    b.extend_from_slice(&batch::compress(codec, &plain[HEADER_SIZE..]).unwrap());
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let code: i16 = match codec {
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
        Compression::None => 0,
    };
    b[21..23].copy_from_slice(&code.to_be_bytes());
    let crc = batch::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Every record in the log: offset -> (key, value).
fn read_records(log: &mut Log) -> BTreeMap<i64, Rec> {
    let mut out = BTreeMap::new();
    let mut at = log.log_start_offset();
    let end = log.log_end_offset();
    while at < end {
        let s = log.read(at, 1 << 20, i64::MAX, true).unwrap();
        if s.is_empty() {
            break;
        }
        let bytes = s.read_bytes().unwrap();
        for f in batch::frames(&bytes) {
            let (h, b) = f.expect("stored batches stay valid after compaction");
            batch::for_each_stored_record(&h, b, |r| {
                let off = h.base_offset + i64::from(r.offset_delta);
                assert!(out
                    .insert(
                        off,
                        (r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec))
                    )
                    .is_none());
                Ok(())
            })
            .unwrap();
            at = h.last_offset() + 1;
        }
    }
    out
}

#[test]
fn compaction_keeps_latest_per_key_and_preserves_offsets() {
    for seed in 0..6u64 {
        let dir = tempdir(&format!("prop-{seed}"));
        let flusher = Flusher::start().unwrap();
        let (mut log, _) = Log::open(&dir, cfg(), flusher.clone(), 1_000).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut written: BTreeMap<i64, Rec> = BTreeMap::new();
        let mut removed_total = 0;
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for round in 0..8 {
            for _ in 0..rng.usize(5..40) {
                let n = rng.usize(1..5);
                let recs: Vec<Rec> = (0..n)
                    .map(|_| {
                        let key = Some(format!("key-{}", rng.u32(0..25)).into_bytes());
                        let value = if rng.u32(0..8) == 0 {
                            None
                        } else {
                            Some(vec![rng.u8(..); rng.usize(1..120)])
                        };
                        (key, value)
                    })
                    .collect();
                let mut b = make_batch(&recs, 1_000, codecs[rng.usize(0..codecs.len())]);
                let o = log.append_as_leader(&mut b, 0, 1_000).unwrap();
                log.durable().wait_blocking(o.durable_end).unwrap();
                for (i, r) in recs.into_iter().enumerate() {
                    written.insert(o.first_offset + i as i64, r);
                }
            }
            let active_base = {
                // The active segment's base: records at or past it must be untouched.
                let end = log.log_end_offset();
                let s = log
                    .read(end.saturating_sub(1).max(0), 1, i64::MAX, true)
                    .unwrap();
                s.first_batch_offset
            };
            let end_before = log.log_end_offset();
            let report = log.compact(2_000).unwrap();
            removed_total += report.records_removed;
            assert_eq!(
                log.log_end_offset(),
                end_before,
                "seed {seed} round {round}"
            );
            let got = read_records(&mut log);
            let mut latest: BTreeMap<&Option<Vec<u8>>, i64> = BTreeMap::new();
            for (o, (k, _)) in &written {
                latest.insert(k, *o);
            }
            for (o, r) in &got {
                assert_eq!(
                    written.get(o),
                    Some(r),
                    "seed {seed}: record at {o} changed"
                );
            }
            for (k, o) in &latest {
                assert!(
                    got.contains_key(o),
                    "seed {seed} round {round}: latest of {k:?} at {o} missing"
                );
            }
            for (o, (k, _)) in &written {
                if !got.contains_key(o) {
                    assert!(
                        latest[k] > *o,
                        "seed {seed}: {o} removed but it was the latest"
                    );
                }
                if *o >= active_base {
                    assert!(
                        got.contains_key(o),
                        "seed {seed}: record {o} in the active segment removed"
                    );
                }
            }
            if round > 0 {
                assert!(report.cleaned_up_to > 0, "{report:?}");
            }
            // Reopen: indexes of rewritten segments are rebuilt, content identical.
            drop(log);
            log = Log::open(&dir, cfg(), flusher.clone(), 1_000).unwrap().0;
            assert_eq!(
                read_records(&mut log),
                got,
                "seed {seed}: content changed on reopen"
            );
            // Compacted batches still decode as kept records for lookups by time.
            assert!(log.offset_for_timestamp(0).unwrap().is_some());
            written.retain(|o, _| got.contains_key(o) || *o >= end_before);
        }
        assert!(
            removed_total > 50,
            "seed {seed}: compaction removed only {removed_total} records"
        );
        eprintln!("seed {seed}: compaction removed {removed_total} records");
        drop(log);
        flusher.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn tombstones_expire_after_delete_retention_and_min_lag_is_honoured() {
    let dir = tempdir("tomb");
    let flusher = Flusher::start().unwrap();
    let mut c = cfg();
    c.delete_retention_ms = 10_000;
    c.min_compaction_lag_ms = 5_000;
    let (mut log, _) = Log::open(&dir, c, flusher.clone(), 1_000).unwrap();
    let v = vec![7u8; 300];
    for i in 0..40 {
        let key = format!("k{}", i % 4).into_bytes();
        let value = if i >= 36 { None } else { Some(v.clone()) };
        let mut b = make_batch(&[(Some(key), value)], 1_000, Compression::None);
        let o = log.append_as_leader(&mut b, 0, 1_000).unwrap();
        log.durable().wait_blocking(o.durable_end).unwrap();
    }
    let filler = vec![1u8; 1500];
    for i in 0..3 {
        let mut b = make_batch(
            &[(Some(format!("f{i}").into_bytes()), Some(filler.clone()))],
            1_000,
            Compression::None,
        );
        log.append_as_leader(&mut b, 0, 1_000).unwrap();
    }
    // Too young for min.compaction.lag.ms: nothing happens.
    let r = log.compact(3_000).unwrap();
    assert_eq!(r.segments_rewritten, 0);
    assert_eq!(read_records(&mut log).len(), 43);
    // Old enough to compact, tombstones still within delete.retention.ms: kept.
    let r = log.compact(7_000).unwrap();
    assert!(r.segments_rewritten > 0);
    let got = read_records(&mut log);
    let tombstones = got.values().filter(|(_, v)| v.is_none()).count();
    assert_eq!(tombstones, 4, "{got:?}");
    assert_eq!(got.len(), 4 + 3, "only latest per key remain");
    // Past delete.retention.ms: a later pass over a new segment removes the tombstones.
    for i in 0..3 {
        let mut b = make_batch(
            &[(Some(format!("g{i}").into_bytes()), Some(filler.clone()))],
            1_000,
            Compression::None,
        );
        log.append_as_leader(&mut b, 0, 1_000).unwrap();
    }
    let _ = log.compact(20_000).unwrap();
    let got = read_records(&mut log);
    assert_eq!(
        got.values().filter(|(_, v)| v.is_none()).count(),
        0,
        "{got:?}"
    );
    assert!(log.compaction_dirty_bytes() < 4096);
    drop(log);
    flusher.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A transactional batch of one keyed record.
fn txn_batch(pid: i64, epoch: i16, seq: i32, key: &str, value: &str, ts: i64) -> Vec<u8> {
    batch(
        &[Record {
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            timestamp_ms: ts,
        }],
        BatchOptions {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            transactional: true,
            ..BatchOptions::default()
        },
    )
}

#[test]
fn compaction_removes_aborted_data_compacts_committed_and_stops_at_open_transactions() {
    use holdfast_log::MarkerKind;
    let dir = tempdir("txn");
    let flusher = Flusher::start().unwrap();
    let (mut log, _) = Log::open(&dir, cfg(), flusher.clone(), 1_000).unwrap();
    let ts = 1_000;
    // Producer 1 commits k=a1; producer 2 aborts k=b1 and k=a-aborted; plain records too.
    log.append_as_leader(&mut txn_batch(1, 0, 0, "a", "a1", ts), 0, ts)
        .unwrap();
    log.append_as_leader(&mut txn_batch(2, 0, 0, "b", "b1", ts), 0, ts)
        .unwrap();
    log.append_as_leader(&mut txn_batch(2, 0, 1, "a", "a-aborted", ts), 0, ts)
        .unwrap();
    log.append_marker(1, 0, MarkerKind::Commit, 0, 0, ts)
        .unwrap();
    log.append_marker(2, 0, MarkerKind::Abort, 0, 0, ts)
        .unwrap();
    let mut plain = make_batch(
        &[(Some(b"a".to_vec()), Some(b"a2".to_vec()))],
        ts,
        Compression::None,
    );
    log.append_as_leader(&mut plain, 0, ts).unwrap();
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 1);
    // Producer 3 opens a transaction that stays open.
    log.roll().unwrap();
    let open_at = log.log_end_offset();
    log.append_as_leader(&mut txn_batch(3, 0, 0, "c", "c-open", ts), 0, ts)
        .unwrap();
    log.roll().unwrap();
    let mut later = make_batch(
        &[(Some(b"c".to_vec()), Some(b"c2".to_vec()))],
        ts,
        Compression::None,
    );
    log.append_as_leader(&mut later, 0, ts).unwrap();
    log.roll().unwrap();
    assert_eq!(log.last_stable_offset(log.log_end_offset()), open_at);

    let report = log.compact(10_000).unwrap();
    assert!(report.records_removed >= 3, "{report:?}");
    let recs = read_records(&mut log);
    let values: Vec<_> = recs
        .values()
        .filter_map(|(_, v)| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect();
    // Aborted data gone, the committed a1 superseded by a2, markers kept (no key), the open
    // transaction's segment and everything after it untouched.
    assert!(!values.contains(&"b1".to_string()), "{values:?}");
    assert!(!values.contains(&"a-aborted".to_string()), "{values:?}");
    assert!(!values.contains(&"a1".to_string()), "{values:?}");
    assert!(values.contains(&"a2".to_string()), "{values:?}");
    assert!(values.contains(&"c-open".to_string()), "{values:?}");
    assert!(values.contains(&"c2".to_string()), "{values:?}");
    // The open transaction still holds the LSO; after its marker the LSO reaches the end.
    log.append_marker(3, 0, MarkerKind::Commit, 0, 0, ts)
        .unwrap();
    let end = log.log_end_offset();
    assert_eq!(log.last_stable_offset(end), end);
    log.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transaction_state_survives_clean_and_unclean_restarts() {
    use holdfast_log::MarkerKind;
    let dir = tempdir("txn-restart");
    let flusher = Flusher::start().unwrap();
    let ts = 1_000;
    let expected_lso;
    {
        let (mut log, _) = Log::open(&dir, cfg(), flusher.clone(), ts).unwrap();
        log.append_as_leader(&mut txn_batch(7, 0, 0, "k", "aborted", ts), 0, ts)
            .unwrap();
        log.append_marker(7, 0, MarkerKind::Abort, 0, 0, ts)
            .unwrap();
        expected_lso = log.log_end_offset();
        log.append_as_leader(&mut txn_batch(8, 0, 0, "k", "open", ts), 0, ts)
            .unwrap();
        assert_eq!(log.last_stable_offset(i64::MAX), expected_lso);
        log.close().unwrap();
    }
    for unclean in [false, true] {
        if unclean {
            // No snapshot: the state is rebuilt from the batches.
            std::fs::remove_file(dir.join("producer-state")).unwrap();
        }
        let (mut log, _) = Log::open(&dir, cfg(), flusher.clone(), ts).unwrap();
        let aborted = log.aborted_transactions(0, i64::MAX);
        assert_eq!(aborted.len(), 1, "unclean={unclean}");
        assert_eq!(
            (
                aborted[0].producer_id,
                aborted[0].first_offset,
                aborted[0].last_offset
            ),
            (7, 0, 1)
        );
        assert_eq!(
            log.last_stable_offset(i64::MAX),
            expected_lso,
            "unclean={unclean}"
        );
        // A non-transactional write from the producer with an open transaction is refused.
        let mut plain = batch(
            &[Record {
                key: Some(b"k"),
                value: Some(b"x"),
                timestamp_ms: ts,
            }],
            BatchOptions {
                producer_id: 8,
                producer_epoch: 0,
                base_sequence: 1,
                ..BatchOptions::default()
            },
        );
        assert!(log.append_as_leader(&mut plain, 0, ts).is_err());
        log.close().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
