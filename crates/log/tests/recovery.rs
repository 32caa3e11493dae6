//! Recovery from damaged segments: a torn last batch cut at every byte position, bit flips
//! in the tail and in the middle, and damaged or missing index and checkpoint files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::{Flusher, Log, LogConfig};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("holdfast-recovery-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 97)).into_bytes()
}

/// Writes `n` single-record batches (each awaited durable), then stops uncleanly.
/// Returns the batches as stored.
fn write_batches(dir: &Path, flusher: &Flusher, n: usize) -> Vec<Vec<u8>> {
    let (mut log, _) = Log::open(dir, cfg(), flusher.clone(), 1_000_000).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let v = value(i);
        let mut b = batch(
            &[Record {
                key: Some(b"k"),
                value: Some(&v),
                timestamp_ms: 1_000_000,
            }],
            BatchOptions::default(),
        );
        let o = log.append_as_leader(&mut b, 0, 1_000_000).unwrap();
        log.durable().wait_blocking(o.durable_end).unwrap();
        out.push(b);
    }
    drop(log); // unclean: no clean-shutdown checkpoint
    out
}

fn read_all(log: &mut Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.log_end_offset() {
        let bytes = log
            .read(at, 1 << 20, i64::MAX, true)
            .unwrap()
            .read_bytes()
            .unwrap();
        for f in holdfast_log::batch::frames(&bytes) {
            let (h, b) = f.unwrap();
            out.push(b.to_vec());
            at = h.last_offset() + 1;
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_last_batch_is_cut_at_every_byte_position() {
    let base = tempdir("torn");
    let orig = base.join("orig");
    let flusher = Flusher::start().unwrap();
    let batches = write_batches(&orig, &flusher, 30);
    let last_seg = segments(&orig).pop().unwrap();
    let full_len = std::fs::metadata(&last_seg).unwrap().len();
    let last_len = batches.last().unwrap().len() as u64;
    let work = base.join("work");
    for cut in (full_len - last_len)..full_len {
        copy_dir(&orig, &work);
        let seg = work.join(last_seg.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (mut log, report) = Log::open(&work, cfg(), flusher.clone(), 1_000_000).unwrap();
        assert_eq!(log.log_end_offset(), 29, "cut at {cut}");
        assert!(report.corruption.is_none(), "cut at {cut}: {report:?}");
        assert_eq!(
            report.truncated.is_some(),
            cut > full_len - last_len,
            "cut at {cut}"
        );
        assert_eq!(read_all(&mut log), batches[..29].to_vec(), "cut at {cut}");
        // Appends continue at the cut.
        let mut b = batches[29].clone();
        let o = log.append_as_leader(&mut b, 0, 1_000_000).unwrap();
        assert_eq!(o.first_offset, 29);
    }
    flusher.shutdown();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn bit_flip_in_last_batch_truncates_it() {
    let base = tempdir("flip-tail");
    let orig = base.join("orig");
    let flusher = Flusher::start().unwrap();
    let batches = write_batches(&orig, &flusher, 30);
    let last_seg = segments(&orig).pop().unwrap();
    let full_len = std::fs::metadata(&last_seg).unwrap().len();
    let last_len = batches.last().unwrap().len() as u64;
    let work = base.join("work");
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..40 {
        copy_dir(&orig, &work);
        let seg = work.join(last_seg.file_name().unwrap());
        let mut bytes = std::fs::read(&seg).unwrap();
        // Any byte of the last batch except the base offset (which recovery reads as a
        // header field, so a flip there may look like a gap rather than a bad CRC).
        let at = rng.u64(full_len - last_len + 8..full_len) as usize;
        bytes[at] ^= 1 << rng.u32(0..8);
        std::fs::write(&seg, &bytes).unwrap();
        let (mut log, report) = Log::open(&work, cfg(), flusher.clone(), 1_000_000).unwrap();
        assert_eq!(log.log_end_offset(), 29, "flip at {at}: {report:?}");
        assert_eq!(read_all(&mut log), batches[..29].to_vec());
    }
    flusher.shutdown();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn corruption_in_the_middle_is_reported_not_skipped() {
    let base = tempdir("flip-mid");
    let orig = base.join("orig");
    let flusher = Flusher::start().unwrap();
    let batches = write_batches(&orig, &flusher, 30);
    let work = base.join("work");
    copy_dir(&orig, &work);
    let last_seg = segments(&work).pop().unwrap();
    let mut bytes = std::fs::read(&last_seg).unwrap();
    // Flip a payload byte of the first batch of the last segment, which has more after it.
    let first_len = holdfast_log::batch::BatchHeader::parse(&bytes)
        .unwrap()
        .total_size();
    bytes[first_len - 3] ^= 0x40;
    std::fs::write(&last_seg, &bytes).unwrap();
    let (mut log, report) = Log::open(&work, cfg(), flusher.clone(), 1_000_000).unwrap();
    let c = report.corruption.clone().expect("corruption reported");
    assert_eq!(log.corruption(), Some(&c));
    assert_eq!(
        log.log_end_offset(),
        c.offset,
        "does not serve past the corrupt batch"
    );
    assert_eq!(read_all(&mut log), batches[..c.offset as usize].to_vec());
    // Appends are refused with KAFKA_STORAGE_ERROR until an operator truncates.
    let mut b = batches[0].clone();
    let err = log.append_as_leader(&mut b, 0, 1_000_000).unwrap_err();
    assert_eq!(err.kafka_error_code(), 56);
    log.truncate_to(c.offset).unwrap();
    assert!(log.corruption().is_none());
    let o = log.append_as_leader(&mut b, 0, 1_000_000).unwrap();
    assert_eq!(o.first_offset, c.offset);
    drop(log);
    // Nothing of the corrupt tail comes back on reopen.
    let (mut log, report) = Log::open(&work, cfg(), flusher.clone(), 1_000_000).unwrap();
    assert!(report.corruption.is_none());
    assert_eq!(log.log_end_offset(), c.offset + 1);
    assert_eq!(read_all(&mut log).len(), c.offset as usize + 1);
    flusher.shutdown();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_damaged_length_field_with_valid_data_after_it_is_corruption_not_a_torn_tail() {
    // Found by the chaos harness (corrupt-node): bytes flipped over a batch's length field made
    // the batch implausible; recovery could not step over it, took it for a torn tail and cut
    // fsynced batches after it. The scan now looks for a valid batch within one maximal batch.
    let base = tempdir("flip-len");
    let orig = base.join("orig");
    let flusher = Flusher::start().unwrap();
    let batches = write_batches(&orig, &flusher, 30);
    for (field, what) in [(8usize, "length"), (16, "magic")] {
        let work = base.join(format!("work-{what}"));
        copy_dir(&orig, &work);
        let last_seg = segments(&work).pop().unwrap();
        let mut bytes = std::fs::read(&last_seg).unwrap();
        for b in &mut bytes[field..field + 4] {
            *b ^= 0xff;
        }
        std::fs::write(&last_seg, &bytes).unwrap();
        let (mut log, report) = Log::open(&work, cfg(), flusher.clone(), 1_000_000).unwrap();
        assert!(report.truncated.is_none(), "{what}: not cut as a torn tail");
        let c = report.corruption.clone().expect("corruption reported");
        assert_eq!(log.log_end_offset(), c.offset, "{what}");
        assert_eq!(read_all(&mut log), batches[..c.offset as usize].to_vec());
        drop(log);
        // The segment file still holds every batch after the damaged one.
        assert_eq!(
            std::fs::read(&last_seg).unwrap().len(),
            bytes.len(),
            "{what}"
        );
    }
    flusher.shutdown();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn damaged_indexes_and_checkpoints_are_rebuilt() {
    let base = tempdir("index");
    let dir = base.join("log");
    let flusher = Flusher::start().unwrap();
    let batches = write_batches(&dir, &flusher, 60);
    let (log, _) = Log::open(&dir, cfg(), flusher.clone(), 1_000_000).unwrap();
    log.close().unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    for round in 0..20 {
        // Damage every index file in a random way, or remove it; sometimes the checkpoint too.
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".index") || (round % 4 == 0 && name == "partition-checkpoint") {
                let mut b = std::fs::read(&p).unwrap();
                match rng.u32(0..3) {
                    0 if !b.is_empty() => {
                        let i = rng.usize(0..b.len());
                        b[i] ^= 0xff;
                        std::fs::write(&p, b).unwrap();
                    }
                    1 => std::fs::write(&p, &b[..b.len() / 2]).unwrap(),
                    _ => std::fs::remove_file(&p).unwrap(),
                }
            }
        }
        let (mut log, _) = Log::open(&dir, cfg(), flusher.clone(), 1_000_000).unwrap();
        assert_eq!(read_all(&mut log), batches, "round {round}");
        for (i, _) in batches.iter().enumerate() {
            let s = log.read(i as i64, 1, i64::MAX, true).unwrap();
            assert_eq!(s.first_batch_offset, i as i64);
        }
        log.close().unwrap();
    }
    flusher.shutdown();
    std::fs::remove_dir_all(&base).unwrap();
}
