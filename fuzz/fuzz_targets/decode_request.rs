#![no_main]
// Request decoding: any frame body must decode or be refused with an error, never panic or
// allocate without bound.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = holdfast_codec::decode_request(bytes::Bytes::copy_from_slice(data));
    let decoder = holdfast_codec::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::from(data);
    // Bounded: each successful decode consumes at least the 4-byte length.
    for _ in 0..64 {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let _ = holdfast_codec::decode_request(frame);
            }
            _ => break,
        }
    }
});
