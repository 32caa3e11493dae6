//! The quorum fuzz entry points (`fuzz/fuzz_targets/decode_quorum.rs`) run on stable in every
//! test run, over inputs made by mutating valid RPC frames and `.raftlog` entries: bit flips,
//! truncations, splices, overwritten length fields. Any input must be decoded or refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use holdfast_quorum::fuzzing;

/// An RPC frame: `u32 length | u8 kind | u32 correlation | u32 crc32c(body) | body`.
fn rpc_frame(kind: u8, correlation: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((9 + body.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A `.raftlog` entry: `u32 length | u32 crc32c | u64 index | u64 term | u64 node | u8 kind |
/// payload`, the checksum over everything after it.
fn log_entry(index: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&index.to_be_bytes());
    body.extend_from_slice(&3u64.to_be_bytes());
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(kind);
    body.extend_from_slice(payload);
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn seed(rng: &mut fastrand::Rng) -> (Vec<u8>, Vec<u8>) {
    let bodies: [&[u8]; 5] = [
        br#"{"vote":{"leader_id":{"term":3,"node_id":1},"committed":false},"last_log_id":null}"#,
        br#"{"vote":{"leader_id":{"term":3,"node_id":1},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}"#,
        b"\x00\x00\x00\x02{}snapshot-bytes",
        b"app request",
        b"",
    ];
    let mut wire = Vec::new();
    let mut log = Vec::new();
    for i in 0..rng.usize(1..4) {
        let body = bodies[rng.usize(0..bodies.len())];
        wire.extend(rpc_frame(rng.u8(0..12), i as u32, body));
        let payload: &[u8] = [
            b"".as_slice(),
            b"[1,2,3]",
            br#"{"configs":[[1,2,3]],"nodes":{"1":{"addr":"127.0.0.1:1"}}}"#,
        ][rng.usize(0..3)];
        log.extend(log_entry(i as u64 + 1, rng.u8(0..4), payload));
    }
    (wire, log)
}

fn mutate(rng: &mut fastrand::Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(0..4) {
        if b.is_empty() {
            break;
        }
        match rng.u32(0..4) {
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
            _ => {
                let i = rng.usize(0..b.len().saturating_sub(4).max(1));
                let v: u32 = [0, 1, 9, 0x7fff_ffff, 0xffff_ffff][rng.usize(0..5)];
                for (k, x) in v.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = *x;
                    }
                }
            }
        }
    }
    b
}

#[test]
fn mutated_frames_and_log_entries_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x7175_6f72);
    for _ in 0..20_000 {
        let (wire, log) = seed(&mut rng);
        fuzzing::wire(&mutate(&mut rng, wire));
        fuzzing::log_segment(&mutate(&mut rng, log));
    }
    // Pure noise too.
    for _ in 0..5_000 {
        let noise: Vec<u8> = (0..rng.usize(0..256)).map(|_| rng.u8(..)).collect();
        fuzzing::wire(&noise);
        fuzzing::log_segment(&noise);
    }
}
