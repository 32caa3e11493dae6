#![no_main]
// The metadata quorum's decoders: RPC frames and requests from peers, `.raftlog` entries, and
// the metadata records and snapshots they carry. Any bytes must decode or be refused, never
// panic or allocate without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    holdfast_quorum::fuzzing::wire(data);
    holdfast_quorum::fuzzing::log_segment(data);
    let _ = holdfast_metadata::Record::decode(data);
    let _ = holdfast_metadata::MetadataImage::decode_snapshot(data);
});
