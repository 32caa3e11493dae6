//! Entry points for fuzzers (`fuzz/` has the cargo-fuzz targets; `tests/fuzz_smoke.rs` runs
//! them on mutated inputs under stable Rust in every test run). Each must never panic on
//! any input, and checks the properties that must hold when the input is accepted.

use crate::batch::{self, ProduceRules};
use crate::{Flusher, Log, LogConfig};

/// The produce-path validator on arbitrary bytes. When the first byte's bit 1 is set the
/// CRCs of the framed batches are fixed up first, so the fuzzer gets past the checksum into
/// the record parser and decompressors.
pub fn validate_batches(data: &[u8]) {
    let fixed;
    let data = if data.first().is_some_and(|b| b & 2 == 2) {
        fixed = fix_crcs(&data[1..]);
        &fixed[..]
    } else {
        data
    };
    let rules = ProduceRules {
        max_message_bytes: 1 << 20,
        require_keys: data.first().is_some_and(|b| b & 1 == 1),
        log_append_time: false,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: i64::MAX,
        now_ms: 0,
    };
    if let Ok(batches) = batch::validate_produce(data, &rules) {
        let mut pos = 0;
        for v in batches {
            assert_eq!(v.position, pos, "batches are contiguous");
            let h = batch::check_frame(&data[pos..]).expect("an accepted batch has a valid frame");
            assert!(h.records_count > 0);
            pos += h.total_size();
        }
        assert_eq!(pos, data.len(), "an accepted record set is consumed whole");
    }
}

fn fix_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut pos = 0;
    // Bounded: each step advances by at least a header.
    while let Some(h) = batch::BatchHeader::parse(&out[pos..]) {
        let total = h.total_size();
        if total < batch::HEADER_SIZE || pos + total > out.len() {
            break;
        }
        let crc = batch::compute_crc(&out[pos..pos + total]);
        out[pos + batch::CRC_OFFSET..pos + batch::CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_be_bytes());
        pos += total;
    }
    out
}

/// Recovery of a segment file holding arbitrary bytes: opening must not panic, and
/// whatever the log then serves must be whole, CRC-valid batches with growing offsets.
pub fn recover_segment(data: &[u8], scratch: &std::path::Path, flusher: &Flusher) {
    let _ = std::fs::remove_dir_all(scratch);
    if std::fs::create_dir_all(scratch).is_err() {
        return;
    }
    if std::fs::write(scratch.join("00000000000000000000.log"), data).is_err() {
        return;
    }
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 128,
        ..LogConfig::default()
    };
    let Ok((mut log, _report)) = Log::open(scratch, cfg, flusher.clone(), 0) else {
        return;
    };
    let end = log.log_end_offset();
    let mut at = log.log_start_offset();
    let mut last = -1;
    // Bounded: every step advances past at least one batch.
    while at < end {
        let Ok(slice) = log.read(at, 1 << 20, i64::MAX, true) else {
            return;
        };
        if slice.is_empty() {
            break;
        }
        let Ok(bytes) = slice.read_bytes() else {
            return;
        };
        for f in batch::frames(&bytes) {
            let (h, _) = f.expect("recovered logs serve only valid batches");
            assert!(h.base_offset > last, "offsets grow");
            last = h.last_offset();
            at = h.last_offset() + 1;
        }
    }
    if log.corruption().is_none() {
        let mut b = batch::build::batch(
            &[batch::build::Record {
                key: Some(b"k"),
                value: Some(b"v"),
                timestamp_ms: 0,
            }],
            batch::build::BatchOptions::default(),
        );
        let o = log
            .append_as_leader(&mut b, 0, 0)
            .expect("a recovered log accepts appends");
        assert_eq!(o.first_offset, end);
    }
}

/// Producer-state snapshot decoding: any text must decode or be refused, never panic.
pub fn producer_snapshot(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((state, _)) = crate::producer::ProducerState::decode(&text) {
        // Whatever decoded is usable.
        let _ = state.open_transactions();
        let _ = state.aborted_between(i64::MIN, i64::MAX);
    }
}
