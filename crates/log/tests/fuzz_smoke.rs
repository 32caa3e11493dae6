//! The fuzz targets (see `fuzz/`) run on stable in every test run, over inputs made by
//! mutating valid batches: bit flips, truncations, splices, overwritten length fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::fuzzing;
use holdfast_log::Flusher;

fn seed_inputs(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.usize(1..4) {
        let n = rng.usize(1..5);
        let vals: Vec<Vec<u8>> = (0..n).map(|_| vec![rng.u8(..); rng.usize(0..64)]).collect();
        let recs: Vec<Record> = vals
            .iter()
            .map(|v| Record {
                key: if rng.bool() { Some(b"key") } else { None },
                value: Some(v),
                timestamp_ms: rng.i64(0..1000),
            })
            .collect();
        out.extend(batch(&recs, BatchOptions::default()));
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(0..4) {
        if b.is_empty() {
            break;
        }
        match rng.u32(0..5) {
            0 => {
                let i = rng.usize(0..b.len());
                b[i] ^= 1 << rng.u32(0..8);
            }
            1 => b.truncate(rng.usize(0..b.len())),
            2 => {
                let i = rng.usize(0..b.len());
                let junk: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
                b.splice(i..i, junk);
            }
            3 => {
                // Overwrite a length-ish field with an extreme value.
                let i = rng.usize(0..b.len().saturating_sub(4).max(1));
                let v: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 61][rng.usize(0..5)];
                for (k, x) in v.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = *x;
                    }
                }
            }
            _ => {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
        }
    }
    b
}

#[test]
fn validator_never_panics_on_mutated_batches() {
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..20_000 {
        let seed = seed_inputs(&mut rng);
        let input = mutate(&mut rng, seed);
        fuzzing::validate_batches(&input);
    }
}

#[test]
fn recovery_never_panics_on_mutated_segments() {
    let mut rng = fastrand::Rng::with_seed(2);
    let scratch = std::env::temp_dir().join(format!("holdfast-fuzz-smoke-{}", std::process::id()));
    let flusher = Flusher::start().unwrap();
    for _ in 0..400 {
        let mut seg = Vec::new();
        let mut next = 0i64;
        for _ in 0..rng.usize(1..6) {
            let mut b = seed_inputs(&mut rng);
            // Give the batches real, growing offsets as a segment would hold them.
            let mut pos = 0;
            while pos < b.len() {
                let h = holdfast_log::batch::BatchHeader::parse(&b[pos..]).unwrap();
                holdfast_log::batch::stamp_offset_and_epoch(&mut b[pos..], next, 0);
                next += i64::from(h.last_offset_delta) + 1;
                pos += h.total_size();
            }
            seg.extend(b);
        }
        let input = mutate(&mut rng, seg);
        fuzzing::recover_segment(&input, &scratch, &flusher);
    }
    flusher.shutdown();
    let _ = std::fs::remove_dir_all(&scratch);
}
