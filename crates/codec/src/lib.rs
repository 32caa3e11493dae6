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

mod guard;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Kafka's default `socket.request.max.bytes` (100 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

/// Kafka error code for an unsupported API version.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The APIs and version ranges this broker implements, as advertised in ApiVersions.
/// Minimum versions follow Kafka 4.0's (the protocol baseline of KIP-896), except that
/// Produce v0-v2 stay advertised as Kafka 4.0 does (KAFKA-18659: librdkafka derives feature
/// flags from them); they are translated here, and only magic v2 batches are accepted.
/// FindCoordinator v0 matters to librdkafka too: without it, it silently disables LZ4.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
];

/// The version range we support for `key`, if any.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// Whether we implement `version` of `key`.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported_range(key).is_some_and(|(lo, hi)| (lo..=hi).contains(&version))
}

/// The ApiVersions response of a broker with transactions version `transaction_version`
/// finalized (KIP-890: 2 makes clients bump the producer epoch on every transaction).
pub fn api_versions_response_with_features(transaction_version: i16) -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::{
        FinalizedFeatureKey, SupportedFeatureKey,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut r = api_versions_response(0);
    let mut s = SupportedFeatureKey::default();
    s.name = StrBytes::from_static_str("transaction.version");
    s.min_version = 0;
    s.max_version = 2;
    r.supported_features = vec![s];
    let mut f = FinalizedFeatureKey::default();
    f.name = StrBytes::from_static_str("transaction.version");
    f.max_version_level = transaction_version;
    f.min_version_level = transaction_version;
    r.finalized_features = vec![f];
    // Fixed for the life of the process: clients re-read features when the epoch grows.
    r.finalized_features_epoch = 1;
    r
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
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api_key:?} v{api_version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
    #[error("cannot encode {api_key:?} v{api_version} response: {reason}")]
    Encode {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
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
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
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
            return Err(CodecError::FrameTooLarge {
                size: len,
                limit: self.max_frame_bytes,
            });
        }
        Ok(Some(len))
    }
}

/// A decoded request. Boxing the body would buy nothing: one lives per in-flight request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// A request we implement.
    Known {
        header: RequestHeader,
        api_key: ApiKey,
        body: RequestKind,
    },
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
    let api_key = ApiKey::try_from(raw_key).map_err(|_| CodecError::UnknownApiKey {
        api_key: raw_key,
        correlation_id,
    })?;
    if !is_supported(api_key, api_version) {
        if api_key == ApiKey::ApiVersions {
            return Ok(Request::UnsupportedApiVersions { correlation_id });
        }
        return Err(CodecError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }
    let malformed = |e: &dyn std::fmt::Display| CodecError::Malformed {
        api_key,
        api_version,
        reason: e.to_string(),
    };
    let mut buf = frame;
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|e| malformed(&e))?;
    // Never hand `kafka-protocol` a body whose array counts could make it over-allocate.
    guard::check_body(api_key, api_version, &buf).map_err(|e| malformed(&e.0))?;
    let body = if api_key == ApiKey::Produce && api_version < 3 {
        // Produce v0-v2 is v3 without the leading transactional id: decode as v3 with a null one.
        let mut v3 = BytesMut::with_capacity(buf.len() + 2);
        v3.put_i16(-1);
        v3.extend_from_slice(&buf);
        RequestKind::decode(api_key, &mut v3.freeze(), 3).map_err(|e| malformed(&e))?
    } else {
        RequestKind::decode(api_key, &mut buf, api_version).map_err(|e| malformed(&e))?
    };
    Ok(Request::Known {
        header,
        api_key,
        body,
    })
}

/// Encodes a response frame: length prefix, response header, body.
/// ApiVersions responses always use header v0 (no tagged fields), as Kafka does.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<BytesMut, CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError::Encode {
        api_key,
        api_version,
        reason: e.to_string(),
    };
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    };
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    header
        .encode(&mut out, header_version)
        .map_err(|e| err(&e))?;
    match body {
        ResponseKind::Produce(r) if api_version < 3 => {
            encode_legacy_produce(r, api_version, &mut out).map_err(|e| err(&e))?
        }
        _ => body.encode(&mut out, api_version).map_err(|e| err(&e))?,
    }
    let len = out.len() - 4;
    let len = i32::try_from(len).map_err(|e| err(&e))?;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Produce response v0-v2 (which `kafka-protocol` no longer encodes): v0 has per-partition
/// (index, error, base offset); v1 adds the throttle time; v2 the log append time.
fn encode_legacy_produce(
    r: &kafka_protocol::messages::ProduceResponse,
    version: i16,
    out: &mut BytesMut,
) -> Result<(), String> {
    let len32 = |n: usize| i32::try_from(n).map_err(|_| "array too long".to_string());
    out.put_i32(len32(r.responses.len())?);
    for t in &r.responses {
        let name = t.name.0.as_bytes();
        out.put_i16(i16::try_from(name.len()).map_err(|_| "topic name too long".to_string())?);
        out.extend_from_slice(name);
        out.put_i32(len32(t.partition_responses.len())?);
        for p in &t.partition_responses {
            out.put_i32(p.index);
            out.put_i16(p.error_code);
            out.put_i64(p.base_offset);
            if version >= 2 {
                out.put_i64(p.log_append_time_ms);
            }
        }
    }
    if version >= 1 {
        out.put_i32(r.throttle_time_ms);
    }
    Ok(())
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
        h.encode(&mut b, key.request_header_version(version))
            .expect("header");
        body.encode(&mut b, version).expect("body");
        b.freeze()
    }

    #[test]
    fn frames_split_and_wait_for_more() {
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[3, 0, 0, 0, 1, 9]);
        assert_eq!(
            d.decode(&mut buf).expect("ok").as_deref(),
            Some(&[1u8, 2, 3][..])
        );
        assert_eq!(d.decode(&mut buf).expect("ok").as_deref(), Some(&[9u8][..]));
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn oversized_and_negative_frames_are_refused() {
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&17i32.to_be_bytes()[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(CodecError::NegativeLength(-1))
        ));
    }

    #[test]
    fn api_versions_round_trip_and_unsupported_version() {
        let f = request_frame(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        );
        match decode_request(f).expect("decodes") {
            Request::Known {
                header, api_key, ..
            } => {
                assert_eq!(api_key, ApiKey::ApiVersions);
                assert_eq!(header.correlation_id, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::ApiVersions as i16);
        f.put_i16(99);
        f.put_i32(5);
        assert!(matches!(
            decode_request(f.freeze()),
            Ok(Request::UnsupportedApiVersions { correlation_id: 5 })
        ));
        let out = encode_unsupported_api_versions(5).expect("encodes");
        let mut body = out.freeze();
        body.advance(4);
        assert_eq!(body.get_i32(), 5);
        let r = ApiVersionsResponse::decode(&mut body, 0).expect("decodes");
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.api_keys.len(), SUPPORTED_APIS.len());
    }

    #[test]
    fn huge_array_counts_are_refused_before_decoding() {
        use kafka_protocol::messages::MetadataRequest;
        // Metadata v1: a topics array claiming i32::MAX entries in a tiny frame.
        let mut f = BytesMut::from(
            &request_frame(
                ApiKey::Metadata,
                1,
                &RequestKind::Metadata(MetadataRequest::default()),
            )[..],
        );
        let n = f.len();
        f[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_request(f.freeze()),
            Err(CodecError::Malformed { .. })
        ));
        // CreateTopics v7 (compact): a varint count of u32::MAX.
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::CreateTopics as i16);
        f.put_i16(7);
        f.put_i32(1);
        f.put_i16(-1);
        f.put_u8(0);
        f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_request(f.freeze()),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn every_supported_request_passes_the_guard_when_well_formed() {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::StrBytes as S;
        let name = || TopicName(S::from_static_str("topic"));
        let mut produce = ProduceRequest::default();
        let mut pd = produce_request::PartitionProduceData::default();
        pd.records = Some(Bytes::from_static(b"0123456789"));
        let mut td = produce_request::TopicProduceData::default();
        td.name = name();
        td.partition_data = vec![pd.clone(), pd];
        produce.topic_data = vec![td];
        produce.transactional_id = Some(TransactionalId(S::from_static_str("tx")));
        let mut fetch = FetchRequest::default();
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = name();
        ft.partitions = vec![fetch_request::FetchPartition::default(); 2];
        fetch.topics = vec![ft];
        let mut forgotten = fetch_request::ForgottenTopic::default();
        forgotten.topic = name();
        forgotten.partitions = vec![1, 2];
        fetch.forgotten_topics_data = vec![forgotten];
        let mut lo_req = ListOffsetsRequest::default();
        let mut lt = list_offsets_request::ListOffsetsTopic::default();
        lt.name = name();
        lt.partitions = vec![list_offsets_request::ListOffsetsPartition::default(); 3];
        lo_req.topics = vec![lt];
        let mut md = MetadataRequest::default();
        let mut mt = metadata_request::MetadataRequestTopic::default();
        mt.name = Some(name());
        md.topics = Some(vec![mt.clone(), mt]);
        let mut ct = CreateTopicsRequest::default();
        let mut c = create_topics_request::CreatableTopic::default();
        c.name = name();
        let mut a = create_topics_request::CreatableReplicaAssignment::default();
        a.broker_ids = vec![BrokerId(1), BrokerId(2)];
        c.assignments = vec![a];
        let mut cfg = create_topics_request::CreatableTopicConfig::default();
        cfg.name = S::from_static_str("retention.ms");
        cfg.value = Some(S::from_static_str("1"));
        c.configs = vec![cfg.clone(), cfg];
        ct.topics = vec![c];
        let mut dt = DeleteTopicsRequest::default();
        let mut ds = delete_topics_request::DeleteTopicState::default();
        ds.name = Some(name());
        dt.topics = vec![ds];
        dt.topic_names = vec![name(), name()];
        let mut ip = InitProducerIdRequest::default();
        ip.transactional_id = Some(TransactionalId(S::from_static_str("t")));
        for (key, lo, hi) in SUPPORTED_APIS {
            for v in *lo..=*hi {
                let mut dt_v = dt.clone();
                if v >= 6 {
                    dt_v.topic_names.clear();
                } else {
                    dt_v.topics.clear();
                }
                let mut fetch_v = fetch.clone();
                if v < 7 {
                    fetch_v.forgotten_topics_data.clear();
                }
                let mut md_v = md.clone();
                if v >= 10 {
                    if let Some(t) = md_v.topics.as_mut() {
                        t[0].name = None;
                    }
                }
                let body = match key {
                    ApiKey::Produce => RequestKind::Produce(produce.clone()),
                    ApiKey::Fetch => RequestKind::Fetch(fetch_v),
                    ApiKey::ListOffsets => RequestKind::ListOffsets(lo_req.clone()),
                    ApiKey::Metadata => RequestKind::Metadata(md_v),
                    ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
                    ApiKey::CreateTopics => RequestKind::CreateTopics(ct.clone()),
                    ApiKey::DeleteTopics => RequestKind::DeleteTopics(dt_v),
                    ApiKey::InitProducerId => RequestKind::InitProducerId(ip.clone()),
                    ApiKey::DeleteRecords => {
                        let mut r = DeleteRecordsRequest::default();
                        let mut t = delete_records_request::DeleteRecordsTopic::default();
                        t.name = name();
                        t.partitions =
                            vec![delete_records_request::DeleteRecordsPartition::default(); 2];
                        r.topics = vec![t];
                        RequestKind::DeleteRecords(r)
                    }
                    ApiKey::CreatePartitions => {
                        let mut r = CreatePartitionsRequest::default();
                        let mut t = create_partitions_request::CreatePartitionsTopic::default();
                        t.name = name();
                        let mut a =
                            create_partitions_request::CreatePartitionsAssignment::default();
                        a.broker_ids = vec![BrokerId(1)];
                        t.assignments = Some(vec![a.clone(), a]);
                        r.topics = vec![
                            t.clone(),
                            create_partitions_request::CreatePartitionsTopic::default(),
                        ];
                        RequestKind::CreatePartitions(r)
                    }
                    ApiKey::DescribeConfigs => {
                        let mut r = DescribeConfigsRequest::default();
                        let mut res = describe_configs_request::DescribeConfigsResource::default();
                        res.resource_name = S::from_static_str("topic");
                        res.configuration_keys = Some(vec![S::from_static_str("retention.ms")]);
                        r.resources = vec![
                            res,
                            describe_configs_request::DescribeConfigsResource::default(),
                        ];
                        RequestKind::DescribeConfigs(r)
                    }
                    ApiKey::AlterConfigs => {
                        let mut r = AlterConfigsRequest::default();
                        let mut res = alter_configs_request::AlterConfigsResource::default();
                        res.resource_name = S::from_static_str("topic");
                        let mut c = alter_configs_request::AlterableConfig::default();
                        c.name = S::from_static_str("retention.ms");
                        c.value = Some(S::from_static_str("1"));
                        res.configs = vec![c.clone(), c];
                        r.resources = vec![res];
                        RequestKind::AlterConfigs(r)
                    }
                    ApiKey::IncrementalAlterConfigs => {
                        let mut r = IncrementalAlterConfigsRequest::default();
                        let mut res =
                            incremental_alter_configs_request::AlterConfigsResource::default();
                        res.resource_name = S::from_static_str("topic");
                        let mut c = incremental_alter_configs_request::AlterableConfig::default();
                        c.name = S::from_static_str("retention.ms");
                        c.value = Some(S::from_static_str("1"));
                        res.configs = vec![c.clone(), c];
                        r.resources = vec![res];
                        RequestKind::IncrementalAlterConfigs(r)
                    }
                    ApiKey::OffsetForLeaderEpoch => {
                        use offset_for_leader_epoch_request as ofle;
                        let mut r = OffsetForLeaderEpochRequest::default();
                        let mut t = ofle::OffsetForLeaderTopic::default();
                        t.topic = name();
                        t.partitions = vec![ofle::OffsetForLeaderPartition::default(); 2];
                        r.topics = vec![t];
                        RequestKind::OffsetForLeaderEpoch(r)
                    }
                    ApiKey::DescribeLogDirs => {
                        let mut r = DescribeLogDirsRequest::default();
                        let mut t = describe_log_dirs_request::DescribableLogDirTopic::default();
                        t.topic = name();
                        t.partitions = vec![0, 1];
                        r.topics = Some(vec![t.clone(), t]);
                        RequestKind::DescribeLogDirs(r)
                    }
                    ApiKey::DescribeCluster => {
                        RequestKind::DescribeCluster(DescribeClusterRequest::default())
                    }
                    ApiKey::FindCoordinator => {
                        let mut fc = FindCoordinatorRequest::default();
                        if v >= 4 {
                            fc.coordinator_keys =
                                vec![S::from_static_str("g1"), S::from_static_str("g2")];
                        } else {
                            fc.key = S::from_static_str("g");
                        }
                        RequestKind::FindCoordinator(fc)
                    }
                    ApiKey::OffsetCommit => {
                        let mut r = OffsetCommitRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        r.member_id = S::from_static_str("m");
                        if v >= 7 {
                            r.group_instance_id = Some(S::from_static_str("i"));
                        }
                        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
                        t.name = name();
                        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
                        p.committed_metadata = Some(S::from_static_str("meta"));
                        t.partitions = vec![p.clone(), p];
                        r.topics = vec![t];
                        RequestKind::OffsetCommit(r)
                    }
                    ApiKey::OffsetFetch => {
                        let mut r = OffsetFetchRequest::default();
                        if v >= 8 {
                            let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
                            g.group_id = GroupId(S::from_static_str("g"));
                            let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
                            t.name = name();
                            t.partition_indexes = vec![0, 1];
                            g.topics = Some(vec![t]);
                            if v >= 9 {
                                g.member_id = Some(S::from_static_str("m"));
                            }
                            r.groups = vec![g.clone(), g];
                        } else {
                            r.group_id = GroupId(S::from_static_str("g"));
                            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
                            t.name = name();
                            t.partition_indexes = vec![0, 1];
                            r.topics = Some(vec![t]);
                        }
                        RequestKind::OffsetFetch(r)
                    }
                    ApiKey::JoinGroup => {
                        let mut r = JoinGroupRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        r.protocol_type = S::from_static_str("consumer");
                        let mut p = join_group_request::JoinGroupRequestProtocol::default();
                        p.name = S::from_static_str("range");
                        p.metadata = Bytes::from_static(b"meta");
                        r.protocols = vec![p.clone(), p];
                        if v >= 5 {
                            r.group_instance_id = Some(S::from_static_str("i"));
                        }
                        if v >= 8 {
                            r.reason = Some(S::from_static_str("why"));
                        }
                        RequestKind::JoinGroup(r)
                    }
                    ApiKey::Heartbeat => {
                        let mut r = HeartbeatRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        r.member_id = S::from_static_str("m");
                        if v >= 3 {
                            r.group_instance_id = Some(S::from_static_str("i"));
                        }
                        RequestKind::Heartbeat(r)
                    }
                    ApiKey::LeaveGroup => {
                        let mut r = LeaveGroupRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        if v >= 3 {
                            let mut m = leave_group_request::MemberIdentity::default();
                            m.member_id = S::from_static_str("m");
                            m.group_instance_id = Some(S::from_static_str("i"));
                            if v >= 5 {
                                m.reason = Some(S::from_static_str("bye"));
                            }
                            r.members = vec![m.clone(), m];
                        } else {
                            r.member_id = S::from_static_str("m");
                        }
                        RequestKind::LeaveGroup(r)
                    }
                    ApiKey::SyncGroup => {
                        let mut r = SyncGroupRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        r.member_id = S::from_static_str("m");
                        if v >= 3 {
                            r.group_instance_id = Some(S::from_static_str("i"));
                        }
                        if v >= 5 {
                            r.protocol_type = Some(S::from_static_str("consumer"));
                            r.protocol_name = Some(S::from_static_str("range"));
                        }
                        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
                        a.member_id = S::from_static_str("m");
                        a.assignment = Bytes::from_static(b"assignment");
                        r.assignments = vec![a.clone(), a];
                        RequestKind::SyncGroup(r)
                    }
                    ApiKey::DescribeGroups => {
                        let mut r = DescribeGroupsRequest::default();
                        r.groups = vec![GroupId(S::from_static_str("g")); 2];
                        RequestKind::DescribeGroups(r)
                    }
                    ApiKey::ListGroups => {
                        let mut r = ListGroupsRequest::default();
                        if v >= 4 {
                            r.states_filter = vec![S::from_static_str("Stable")];
                        }
                        if v >= 5 {
                            r.types_filter = vec![S::from_static_str("classic")];
                        }
                        RequestKind::ListGroups(r)
                    }
                    ApiKey::DeleteGroups => {
                        let mut r = DeleteGroupsRequest::default();
                        r.groups_names = vec![GroupId(S::from_static_str("g")); 2];
                        RequestKind::DeleteGroups(r)
                    }
                    ApiKey::OffsetDelete => {
                        let mut r = OffsetDeleteRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
                        t.name = name();
                        t.partitions =
                            vec![offset_delete_request::OffsetDeleteRequestPartition::default(); 2];
                        r.topics = vec![t];
                        RequestKind::OffsetDelete(r)
                    }
                    ApiKey::AddPartitionsToTxn => {
                        let mut r = AddPartitionsToTxnRequest::default();
                        r.v3_and_below_transactional_id = TransactionalId(S::from_static_str("x"));
                        let mut t =
                            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
                        t.name = name();
                        t.partitions = vec![0, 1];
                        r.v3_and_below_topics = vec![t.clone(), t];
                        RequestKind::AddPartitionsToTxn(r)
                    }
                    ApiKey::AddOffsetsToTxn => {
                        let mut r = AddOffsetsToTxnRequest::default();
                        r.transactional_id = TransactionalId(S::from_static_str("x"));
                        r.group_id = GroupId(S::from_static_str("g"));
                        RequestKind::AddOffsetsToTxn(r)
                    }
                    ApiKey::WriteTxnMarkers => {
                        let mut r = WriteTxnMarkersRequest::default();
                        let mut t = write_txn_markers_request::WritableTxnMarkerTopic::default();
                        t.name = name();
                        t.partition_indexes = vec![0, 1];
                        let mut m = write_txn_markers_request::WritableTxnMarker::default();
                        m.topics = vec![t.clone(), t];
                        r.markers = vec![m.clone(), m];
                        RequestKind::WriteTxnMarkers(r)
                    }
                    ApiKey::EndTxn => {
                        let mut r = EndTxnRequest::default();
                        r.transactional_id = TransactionalId(S::from_static_str("x"));
                        r.committed = true;
                        RequestKind::EndTxn(r)
                    }
                    ApiKey::TxnOffsetCommit => {
                        let mut r = TxnOffsetCommitRequest::default();
                        r.transactional_id = TransactionalId(S::from_static_str("x"));
                        r.group_id = GroupId(S::from_static_str("g"));
                        if v >= 3 {
                            r.member_id = S::from_static_str("m");
                            r.group_instance_id = Some(S::from_static_str("i"));
                        }
                        let mut p =
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
                        p.committed_metadata = Some(S::from_static_str("meta"));
                        let mut t =
                            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
                        t.name = name();
                        t.partitions = vec![p.clone(), p];
                        r.topics = vec![t];
                        RequestKind::TxnOffsetCommit(r)
                    }
                    ApiKey::DescribeProducers => {
                        let mut r = DescribeProducersRequest::default();
                        let mut t = describe_producers_request::TopicRequest::default();
                        t.name = name();
                        t.partition_indexes = vec![0, 1];
                        r.topics = vec![t.clone(), t];
                        RequestKind::DescribeProducers(r)
                    }
                    ApiKey::DescribeTransactions => {
                        let mut r = DescribeTransactionsRequest::default();
                        r.transactional_ids = vec![TransactionalId(S::from_static_str("x")); 2];
                        RequestKind::DescribeTransactions(r)
                    }
                    ApiKey::ListTransactions => {
                        let mut r = ListTransactionsRequest::default();
                        r.state_filters = vec![S::from_static_str("Ongoing")];
                        r.producer_id_filters = vec![ProducerId(4), ProducerId(5)];
                        if v >= 1 {
                            r.duration_filter = 1000;
                        }
                        RequestKind::ListTransactions(r)
                    }
                    ApiKey::ConsumerGroupHeartbeat => {
                        let mut r = ConsumerGroupHeartbeatRequest::default();
                        r.group_id = GroupId(S::from_static_str("g"));
                        r.member_id = S::from_static_str("m");
                        r.instance_id = Some(S::from_static_str("i"));
                        r.rack_id = Some(S::from_static_str("r"));
                        r.subscribed_topic_names = Some(vec![name(), name()]);
                        if v >= 1 {
                            r.subscribed_topic_regex = Some(S::from_static_str("t.*"));
                        }
                        r.server_assignor = Some(S::from_static_str("uniform"));
                        let mut tp = consumer_group_heartbeat_request::TopicPartitions::default();
                        tp.partitions = vec![1, 2, 3];
                        r.topic_partitions = Some(vec![tp.clone(), tp]);
                        RequestKind::ConsumerGroupHeartbeat(r)
                    }
                    ApiKey::ConsumerGroupDescribe => {
                        let mut r = ConsumerGroupDescribeRequest::default();
                        r.group_ids = vec![GroupId(S::from_static_str("g")); 2];
                        r.include_authorized_operations = true;
                        RequestKind::ConsumerGroupDescribe(r)
                    }
                    ApiKey::ElectLeaders => {
                        let mut r = ElectLeadersRequest::default();
                        if v >= 1 {
                            r.election_type = 1;
                        }
                        let mut tp = elect_leaders_request::TopicPartitions::default();
                        tp.topic = name();
                        tp.partitions = vec![0, 2];
                        r.topic_partitions = Some(vec![tp.clone(), tp]);
                        r.timeout_ms = 30_000;
                        RequestKind::ElectLeaders(r)
                    }
                    ApiKey::DescribeQuorum => {
                        let mut r = DescribeQuorumRequest::default();
                        let mut t = describe_quorum_request::TopicData::default();
                        t.topic_name = name();
                        let mut p = describe_quorum_request::PartitionData::default();
                        p.partition_index = 0;
                        t.partitions = vec![p];
                        r.topics = vec![t];
                        RequestKind::DescribeQuorum(r)
                    }
                    ApiKey::AlterPartitionReassignments => {
                        let mut r = AlterPartitionReassignmentsRequest::default();
                        r.timeout_ms = 30_000;
                        if v >= 1 {
                            r.allow_replication_factor_change = false;
                        }
                        let mut p0 =
                            alter_partition_reassignments_request::ReassignablePartition::default();
                        p0.partition_index = 0;
                        p0.replicas = Some(vec![BrokerId(4), BrokerId(2), BrokerId(3)]);
                        let mut p1 = p0.clone();
                        p1.partition_index = 1;
                        p1.replicas = None; // cancel
                        let mut t =
                            alter_partition_reassignments_request::ReassignableTopic::default();
                        t.name = name();
                        t.partitions = vec![p0, p1];
                        r.topics = vec![t.clone(), t];
                        RequestKind::AlterPartitionReassignments(r)
                    }
                    ApiKey::ListPartitionReassignments => {
                        let mut r = ListPartitionReassignmentsRequest::default();
                        r.timeout_ms = 30_000;
                        let mut t = list_partition_reassignments_request::ListPartitionReassignmentsTopics::default();
                        t.name = name();
                        t.partition_indexes = vec![0, 1];
                        r.topics = Some(vec![t.clone(), t]);
                        RequestKind::ListPartitionReassignments(r)
                    }
                    ApiKey::UnregisterBroker => {
                        let mut r = UnregisterBrokerRequest::default();
                        r.broker_id = BrokerId(4);
                        RequestKind::UnregisterBroker(r)
                    }
                    other => panic!("no test body for {other:?}"),
                };
                if *key == ApiKey::Produce && v < 3 {
                    continue; // covered by legacy_produce_versions_translate
                }
                let f = request_frame(*key, v, &body);
                let mut b = BytesMut::new();
                body.encode(&mut b, v).expect("encodes");
                assert_eq!(
                    guard::walk(*key, v, &b).map_err(|e| e.0),
                    Ok(b.len()),
                    "{key:?} v{v}: walker disagrees"
                );
                assert!(decode_request(f).is_ok(), "{key:?} v{v} refused");
            }
        }
    }

    #[test]
    fn legacy_produce_versions_translate() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::messages::*;
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 1000;
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = 3;
        pd.records = Some(Bytes::from_static(b"batch"));
        let mut td = produce_request::TopicProduceData::default();
        td.name = TopicName(StrBytes::from_static_str("t"));
        td.partition_data = vec![pd];
        req.topic_data = vec![td];
        for v in 0..3i16 {
            // A v0-v2 body is the v3 body minus the 2-byte null transactional id.
            let mut body = BytesMut::new();
            req.encode(&mut body, 3).expect("encodes");
            let mut h = RequestHeader::default();
            h.request_api_key = ApiKey::Produce as i16;
            h.request_api_version = v;
            h.correlation_id = 11;
            let mut f = BytesMut::new();
            h.encode(&mut f, 1).expect("header");
            f.extend_from_slice(&body[2..]);
            match decode_request(f.freeze()).expect("decodes") {
                Request::Known {
                    body: RequestKind::Produce(p),
                    ..
                } => {
                    assert_eq!(p.acks, -1);
                    assert_eq!(
                        p.topic_data[0].partition_data[0].records.as_deref(),
                        Some(&b"batch"[..])
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
            let mut resp = ProduceResponse::default();
            let mut t = TopicProduceResponse::default();
            t.name = TopicName(StrBytes::from_static_str("t"));
            let mut p = PartitionProduceResponse::default();
            p.index = 3;
            p.base_offset = 42;
            t.partition_responses = vec![p];
            resp.responses = vec![t];
            let out = encode_response(ApiKey::Produce, v, 11, &ResponseKind::Produce(resp))
                .expect("encodes");
            // len + cid + [count + name(2+1) + [count + index + error + offset (+ append time)]] (+ throttle)
            let expected = 4
                + 4
                + 4
                + 3
                + 4
                + 4
                + 2
                + 8
                + if v >= 2 { 8 } else { 0 }
                + if v >= 1 { 4 } else { 0 };
            assert_eq!(out.len(), expected, "v{v}");
            let tail = 8 + if v >= 2 { 8 } else { 0 } + if v >= 1 { 4 } else { 0 };
            assert_eq!(
                &out[out.len() - tail..][..8],
                &42i64.to_be_bytes()[..],
                "v{v}"
            );
        }
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
        assert!(matches!(
            decode_request(f.freeze()),
            Err(CodecError::UnknownApiKey { api_key: 9999, .. })
        ));
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::Fetch as i16);
        f.put_i16(0);
        f.put_i32(1);
        assert!(matches!(
            decode_request(f.freeze()),
            Err(CodecError::UnsupportedVersion { .. })
        ));
    }
}
