//! Many partitions: open file handles stay bounded (the active segment of each log plus the
//! cache's limit), and closed segments answer lookups from their index files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::{Flusher, Log, LogConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn thousands_of_segments_with_bounded_handles() {
    let dir = std::env::temp_dir().join(format!("holdfast-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    holdfast_log::set_open_segment_limit(32);
    let flusher = Flusher::start().unwrap();
    let fds_before = open_fds();
    let cfg = LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let partitions = 200;
    let mut logs = Vec::new();
    let value = vec![3u8; 200];
    for p in 0..partitions {
        let (mut log, _) =
            Log::open(&dir.join(format!("t-{p}")), cfg.clone(), flusher.clone(), 0).unwrap();
        let mut last = 0;
        for i in 0..20 {
            let mut b = batch(
                &[Record {
                    key: None,
                    value: Some(&value),
                    timestamp_ms: i,
                }],
                BatchOptions::default(),
            );
            last = log.append_as_leader(&mut b, 0, 0).unwrap().durable_end;
        }
        log.durable().wait_blocking(last).unwrap();
        assert!(log.segment_count() >= 4);
        logs.push(log);
    }
    // Read every offset of every partition, and look up by time: closed segments reopen.
    for log in logs.iter_mut() {
        for o in 0..20 {
            let s = log.read(o, 1, i64::MAX, true).unwrap();
            assert_eq!(s.first_batch_offset, o);
        }
        assert_eq!(log.offset_for_timestamp(7).unwrap(), Some((7, 7)));
    }
    assert!(holdfast_log::open_segment_handles() <= 32);
    let fds = open_fds() - fds_before;
    let segments: usize = logs.iter().map(|l| l.segment_count()).sum();
    eprintln!("{partitions} partitions, {segments} segments, {fds} open files");
    assert!(
        fds <= partitions + 32 + 8,
        "{fds} open files for {partitions} partitions"
    );
    // Reopen everything (clean) and check again.
    for log in logs.drain(..) {
        log.close().unwrap();
    }
    for p in 0..partitions {
        let (mut log, report) =
            Log::open(&dir.join(format!("t-{p}")), cfg.clone(), flusher.clone(), 0).unwrap();
        assert!(report.clean_shutdown);
        assert_eq!(
            report.bytes_validated, 0,
            "a clean restart validates nothing"
        );
        assert_eq!(
            log.read(13, 1, i64::MAX, true).unwrap().first_batch_offset,
            13
        );
        logs.push(log);
    }
    assert!(open_fds() - fds_before <= partitions + 32 + 8);
    drop(logs);
    flusher.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
