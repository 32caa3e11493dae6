#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    holdfast_log::fuzzing::validate_batches(data);
});
