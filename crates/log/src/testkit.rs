//! Deterministic test data shared by the crash tools and tests.

use crate::batch::build::{batch, BatchOptions, Record};

/// The batch a writer appends as `seq` on `partition`: a pure function of both.
pub fn batch_for(partition: u32, seq: u64) -> Vec<u8> {
    let mut rng = fastrand_like(u64::from(partition) << 40 ^ seq);
    let n = 1 + (rng() % 8) as usize;
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let len = (rng() % 3000) as usize;
            let mut v = format!("p{partition}-s{seq}-r{i}-").into_bytes();
            v.extend((0..len).map(|_| rng() as u8));
            v
        })
        .collect();
    let recs: Vec<Record> = values
        .iter()
        .map(|v| Record {
            key: Some(b"key"),
            value: Some(v),
            timestamp_ms: 1_000_000,
        })
        .collect();
    batch(&recs, BatchOptions::default())
}

pub fn fastrand_like(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
