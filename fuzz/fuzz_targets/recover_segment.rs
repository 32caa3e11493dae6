#![no_main]
use std::sync::OnceLock;

static FLUSHER: OnceLock<holdfast_log::Flusher> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let flusher = FLUSHER.get_or_init(|| holdfast_log::Flusher::start().expect("flusher"));
    let scratch = std::env::temp_dir().join(format!("holdfast-fuzz-recover-{}", std::process::id()));
    holdfast_log::fuzzing::recover_segment(data, &scratch, flusher);
});
