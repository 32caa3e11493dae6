//! Entry points for fuzzing the quorum's decoders (`fuzz/fuzz_targets/decode_quorum.rs`, and
//! on stable in `tests/fuzz_smoke.rs`): any bytes must decode or be refused, never panic or
//! allocate beyond the bound they were given.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Frame bound used by the wire entry point (small, so a lying length is refused quickly).
const FUZZ_MAX_FRAME: usize = 1 << 20;

/// Decodes `data` as a stream of RPC frames (as a peer's connection would deliver it), and
/// every frame as a request, until the stream ends or a frame is refused.
pub fn wire(data: &[u8]) {
    let mut r = data;
    // Bounded: every decoded frame consumes at least its 13-byte header.
    for _ in 0..=data.len() / 13 {
        // Reading from a byte slice never waits, so one poll completes the future.
        let fut = crate::net::read_frame(&mut r, FUZZ_MAX_FRAME);
        let Poll::Ready(res) = pin!(fut).poll(&mut Context::from_waker(Waker::noop())) else {
            return;
        };
        match res {
            Ok(Some(frame)) => crate::net::fuzz_decode_request(frame),
            _ => return,
        }
    }
}

/// Decodes `data` as the start of a `.raftlog` segment (entry frames back to back).
pub fn log_segment(data: &[u8]) {
    crate::store::fuzz_decode_entries(data);
}
