//! Sans-IO Kafka wire protocol layer.
//!
//! * [`FrameDecoder`] splits a byte stream into request frames (4-byte big-endian length
//!   prefix), refusing frames larger than `socket.request.max.bytes`.
//! * [`decode_request`] decodes the request header and body of one frame with the
//!   `kafka-protocol` crate. Record batches stay raw bytes: they are never decoded here.
//! * [`encode_response`] encodes a response with the right header version, length-prefixed.
//! * [`SUPPORTED_APIS`] is the table of API versions this broker implements and advertises.
//!
//! No I/O and no async runtime: the broker feeds bytes in and writes bytes out.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Kafka's default `socket.request.max.bytes` (100 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

/// Kafka error code for an unsupported API version.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The APIs and version ranges this broker implements, as advertised in ApiVersions.
/// Minimum versions follow Kafka 4.0's (the protocol baseline of KIP-896), which is also
/// what `kafka-protocol` 0.18 can decode. Only magic v2 record batches are accepted.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
];

/// The version range we support for `key`, if any.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, lo, hi)| (*lo, *hi))
}

/// Whether we implement `version` of `key`.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported_range(key).is_some_and(|(lo, hi)| (lo..=hi).contains(&version))
}

/// The ApiVersions response listing [`SUPPORTED_APIS`], with the given top-level error.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED_APIS
        .iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect();
    r
}

/// Protocol errors. Each one means the connection that sent the frame is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame of {size} bytes exceeds socket.request.max.bytes {limit}")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    TruncatedHeader(usize),
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("unsupported version {api_version} of {api_key:?} (correlation id {correlation_id})")]
    UnsupportedVersion { api_key: ApiKey, api_version: i16, correlation_id: i32 },
    #[error("malformed {api_key:?} v{api_version} request: {reason}")]
    Malformed { api_key: ApiKey, api_version: i16, reason: String },
    #[error("cannot encode {api_key:?} v{api_version} response: {reason}")]
    Encode { api_key: ApiKey, api_version: i16, reason: String },
}

/// Splits a byte stream into frames. Feed it the connection's read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder { max_frame_bytes }
    }

    /// Removes and returns the next complete frame (without its length prefix) from `buf`,
    /// or `Ok(None)` when more bytes are needed. An error means the stream is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(len) = self.peek_len(buf)? else { return Ok(None) };
        if buf.len() < 4 + len {
            // Grow towards the frame size in bounded steps: a length prefix alone never
            // makes us allocate the whole frame.
            buf.reserve((4 + len - buf.len()).min(1 << 20));
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// The length of the next frame, validated, once its prefix has arrived.
    pub fn peek_len(&self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 0 {
            return Err(CodecError::NegativeLength(len));
        }
        let len = len as usize;
        if len > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge { size: len, limit: self.max_frame_bytes });
        }
        Ok(Some(len))
    }
}

/// A decoded request.
#[derive(Debug)]
pub enum Request {
    /// A request we implement.
    Known { header: RequestHeader, api_key: ApiKey, body: RequestKind },
    /// An ApiVersions request of a version we do not implement: Kafka answers it with a v0
    /// response carrying UNSUPPORTED_VERSION and our ranges, so the client can downgrade.
    UnsupportedApiVersions { correlation_id: i32 },
}

/// Decodes one frame (without its length prefix).
pub fn decode_request(frame: Bytes) -> Result<Request, CodecError> {
    if frame.len() < 8 {
        return Err(CodecError::TruncatedHeader(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| CodecError::UnknownApiKey { api_key: raw_key, correlation_id })?;
    if !is_supported(api_key, api_version) {
        if api_key == ApiKey::ApiVersions {
            return Ok(Request::UnsupportedApiVersions { correlation_id });
        }
        return Err(CodecError::UnsupportedVersion { api_key, api_version, correlation_id });
    }
    let malformed = |e: &dyn std::fmt::Display| CodecError::Malformed { api_key, api_version, reason: e.to_string() };
    let mut buf = frame;
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|e| malformed(&e))?;
    let body = RequestKind::decode(api_key, &mut buf, api_version).map_err(|e| malformed(&e))?;
    Ok(Request::Known { header, api_key, body })
}

/// Encodes a response frame: length prefix, response header, body.
/// ApiVersions responses always use header v0 (no tagged fields), as Kafka does.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<BytesMut, CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError::Encode { api_key, api_version, reason: e.to_string() };
    let header_version = if api_key == ApiKey::ApiVersions { 0 } else { api_key.response_header_version(api_version) };
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    header.encode(&mut out, header_version).map_err(|e| err(&e))?;
    body.encode(&mut out, api_version).map_err(|e| err(&e))?;
    let len = out.len() - 4;
    let len = i32::try_from(len).map_err(|e| err(&e))?;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// The response to an ApiVersions request of a version we do not support: v0 body, v0 header.
pub fn encode_unsupported_api_versions(correlation_id: i32) -> Result<BytesMut, CodecError> {
    let body = ResponseKind::ApiVersions(api_versions_response(UNSUPPORTED_VERSION));
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;
    use kafka_protocol::protocol::StrBytes;

    fn request_frame(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = 7;
        h.client_id = Some(StrBytes::from_static_str("t"));
        let mut b = BytesMut::new();
        h.encode(&mut b, key.request_header_version(version)).expect("header");
        body.encode(&mut b, version).expect("body");
        b.freeze()
    }

    #[test]
    fn frames_split_and_wait_for_more() {
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[3, 0, 0, 0, 1, 9]);
        assert_eq!(d.decode(&mut buf).expect("ok").as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(d.decode(&mut buf).expect("ok").as_deref(), Some(&[9u8][..]));
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn oversized_and_negative_frames_are_refused() {
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&17i32.to_be_bytes()[..]);
        assert!(matches!(d.decode(&mut buf), Err(CodecError::FrameTooLarge { .. })));
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert!(matches!(d.decode(&mut buf), Err(CodecError::NegativeLength(-1))));
    }

    #[test]
    fn api_versions_round_trip_and_unsupported_version() {
        let f = request_frame(ApiKey::ApiVersions, 3, &RequestKind::ApiVersions(ApiVersionsRequest::default()));
        match decode_request(f).expect("decodes") {
            Request::Known { header, api_key, .. } => {
                assert_eq!(api_key, ApiKey::ApiVersions);
                assert_eq!(header.correlation_id, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::ApiVersions as i16);
        f.put_i16(99);
        f.put_i32(5);
        assert!(matches!(decode_request(f.freeze()), Ok(Request::UnsupportedApiVersions { correlation_id: 5 })));
        let out = encode_unsupported_api_versions(5).expect("encodes");
        let mut body = out.freeze();
        body.advance(4);
        assert_eq!(body.get_i32(), 5);
        let r = ApiVersionsResponse::decode(&mut body, 0).expect("decodes");
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.api_keys.len(), SUPPORTED_APIS.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000 {
            let len = n % 64;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                v.push(rng as u8);
            }
            if len >= 2 && n % 2 == 0 {
                v[0] = 0;
                v[1] = (n % 4) as u8;
            }
            let _ = decode_request(Bytes::from(v));
        }
    }

    #[test]
    fn unknown_key_and_unsupported_version_are_errors() {
        let mut f = BytesMut::new();
        f.put_i16(9999);
        f.put_i16(0);
        f.put_i32(1);
        assert!(matches!(decode_request(f.freeze()), Err(CodecError::UnknownApiKey { api_key: 9999, .. })));
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::Fetch as i16);
        f.put_i16(0);
        f.put_i32(1);
        assert!(matches!(decode_request(f.freeze()), Err(CodecError::UnsupportedVersion { .. })));
    }
}
