#![no_main]
// `__transaction_state` records and producer-state snapshots: any bytes must decode or be
// refused, never panic or allocate without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| usize::from(*b)).unwrap_or(0).min(data.len());
    let (key, value) = data.split_at(split);
    let mut c = holdfast_txn::Coordinator::new(holdfast_txn::Config::default());
    let _ = c.load_record(key, Some(value));
    let _ = holdfast_txn::records::decode_value("fuzz", data);
    holdfast_log::fuzzing::producer_snapshot(data);
});
