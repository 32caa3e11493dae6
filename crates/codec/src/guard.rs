//! A structural pre-check of request bodies, run before `kafka-protocol` decodes them.
//!
//! `kafka-protocol` preallocates every array with the element count read from the wire
//! (`Vec::with_capacity(n)`), so a 20-byte frame claiming two billion topics makes it ask the
//! allocator for tens of gigabytes, and the process aborts. This walker checks the shape of
//! each supported request (field layout per version, following Kafka's message schemas)
//! without allocating, and refuses any array whose count exceeds the bytes left in the frame
//! (every element of these arrays encodes to at least one byte). Allocation while decoding
//! is then bounded by a small multiple of the frame size (itself bounded by
//! `socket.request.max.bytes`).

use kafka_protocol::messages::ApiKey;

#[derive(Debug)]
pub struct Malformed(pub &'static str);

type R = Result<(), Malformed>;

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    flexible: bool,
}

impl<'a> Walker<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.remaining() {
            return Err(Malformed("field runs past the end of the frame"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> R {
        self.take(n).map(|_| ())
    }

    fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uvarint(&mut self) -> Result<u64, Malformed> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("varint longer than 5 bytes"))
    }

    /// A length-prefixed string or byte field; `wide` = 4-byte length (bytes) vs 2-byte
    /// (strings) in non-flexible versions.
    fn blob(&mut self, nullable: bool, wide: bool) -> R {
        let len: i64 = if self.flexible {
            self.uvarint()? as i64 - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match len {
            -1 if nullable => Ok(()),
            n if n < 0 => Err(Malformed("negative length")),
            n => self.skip(n as usize),
        }
    }

    fn string(&mut self) -> R {
        self.blob(false, false)
    }

    fn nullable_string(&mut self) -> R {
        self.blob(true, false)
    }

    fn array(&mut self, nullable: bool, mut each: impl FnMut(&mut Self) -> R) -> R {
        let n: i64 = if self.flexible {
            self.uvarint()? as i64 - 1
        } else {
            i64::from(self.i32()?)
        };
        if n == -1 && nullable {
            return Ok(());
        }
        if n < 0 {
            return Err(Malformed("negative array length"));
        }
        if n as usize > self.remaining() {
            return Err(Malformed("array count exceeds the bytes left in the frame"));
        }
        for _ in 0..n {
            each(self)?;
        }
        Ok(())
    }

    fn tagged_fields(&mut self) -> R {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        if n as usize > self.remaining() {
            return Err(Malformed("tagged field count exceeds the frame"));
        }
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size as usize)?;
        }
        Ok(())
    }
}

/// The first version of each API using compact encodings and tagged fields.
fn first_flexible(key: ApiKey) -> i16 {
    match key {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 6,
        ApiKey::Metadata => 9,
        ApiKey::ApiVersions => 3,
        ApiKey::CreateTopics => 5,
        ApiKey::DeleteTopics => 4,
        ApiKey::InitProducerId => 2,
        ApiKey::FindCoordinator => 3,
        ApiKey::DeleteRecords => 2,
        ApiKey::CreatePartitions => 2,
        ApiKey::DescribeConfigs => 4,
        ApiKey::AlterConfigs => 2,
        ApiKey::IncrementalAlterConfigs => 1,
        ApiKey::DescribeCluster => 0,
        ApiKey::DescribeLogDirs => 2,
        ApiKey::OffsetForLeaderEpoch => 4,
        ApiKey::OffsetCommit => 8,
        ApiKey::OffsetFetch => 6,
        ApiKey::JoinGroup => 6,
        ApiKey::Heartbeat => 4,
        ApiKey::LeaveGroup => 4,
        ApiKey::SyncGroup => 4,
        ApiKey::DescribeGroups => 5,
        ApiKey::ListGroups => 3,
        ApiKey::DeleteGroups => 2,
        ApiKey::OffsetDelete => i16::MAX,
        ApiKey::ConsumerGroupHeartbeat | ApiKey::ConsumerGroupDescribe => 0,
        ApiKey::AddPartitionsToTxn
        | ApiKey::AddOffsetsToTxn
        | ApiKey::EndTxn
        | ApiKey::TxnOffsetCommit => 3,
        ApiKey::WriteTxnMarkers => 1,
        ApiKey::DescribeProducers | ApiKey::DescribeTransactions | ApiKey::ListTransactions => 0,
        ApiKey::ElectLeaders => 2,
        ApiKey::DescribeQuorum => 0,
        ApiKey::AlterPartitionReassignments | ApiKey::ListPartitionReassignments => 0,
        ApiKey::UnregisterBroker => 0,
        _ => i16::MAX,
    }
}

/// Checks the body of a request of a supported API and version. APIs without a walker here
/// are refused: every advertised API must have one.
pub fn check_body(key: ApiKey, v: i16, body: &[u8]) -> R {
    walk(key, v, body).map(|_| ())
}

/// Walks the body; returns how many bytes the request's fields span.
pub fn walk(key: ApiKey, v: i16, body: &[u8]) -> Result<usize, Malformed> {
    let mut w = Walker {
        buf: body,
        pos: 0,
        flexible: v >= first_flexible(key),
    };
    match key {
        ApiKey::Produce => {
            if v >= 3 {
                w.nullable_string()?; // transactional_id
            }
            w.skip(2 + 4)?; // acks, timeout_ms
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4)?;
                    w.blob(true, true)?; // records
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::Fetch => {
            if v < 15 {
                w.skip(4)?; // replica_id
            }
            w.skip(4 + 4 + 4 + 1)?; // max_wait_ms, min_bytes, max_bytes, isolation_level
            if v >= 7 {
                w.skip(4 + 4)?; // session_id, session_epoch
            }
            w.array(false, |w| {
                if v >= 13 {
                    w.skip(16)?;
                } else {
                    w.string()?;
                }
                w.array(false, |w| {
                    w.skip(4)?; // partition
                    if v >= 9 {
                        w.skip(4)?; // current_leader_epoch
                    }
                    w.skip(8)?; // fetch_offset
                    if v >= 12 {
                        w.skip(4)?; // last_fetched_epoch
                    }
                    if v >= 5 {
                        w.skip(8)?; // log_start_offset
                    }
                    w.skip(4)?; // partition_max_bytes
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            if v >= 7 {
                w.array(false, |w| {
                    if v >= 13 {
                        w.skip(16)?;
                    } else {
                        w.string()?;
                    }
                    w.array(false, |w| w.skip(4))?;
                    w.tagged_fields()
                })?;
            }
            if v >= 11 {
                w.string()?; // rack_id
            }
        }
        ApiKey::ListOffsets => {
            w.skip(4)?; // replica_id
            if v >= 2 {
                w.skip(1)?; // isolation_level
            }
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4)?;
                    if v >= 4 {
                        w.skip(4)?; // current_leader_epoch
                    }
                    w.skip(8)?; // timestamp
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            if v >= 10 {
                w.skip(4)?;
            }
        }
        ApiKey::Metadata => {
            w.array(v >= 1, |w| {
                if v >= 10 {
                    w.skip(16)?;
                    w.nullable_string()?;
                } else {
                    w.string()?;
                }
                w.tagged_fields()
            })?;
            if v >= 4 {
                w.skip(1)?;
            }
            if (8..=10).contains(&v) {
                w.skip(1)?;
            }
            if v >= 8 {
                w.skip(1)?;
            }
        }
        ApiKey::ApiVersions => {
            if v >= 3 {
                w.string()?;
                w.string()?;
            }
        }
        ApiKey::CreateTopics => {
            w.array(false, |w| {
                w.string()?;
                w.skip(4 + 2)?;
                w.array(false, |w| {
                    w.skip(4)?;
                    w.array(false, |w| w.skip(4))?;
                    w.tagged_fields()
                })?;
                w.array(false, |w| {
                    w.string()?;
                    w.nullable_string()?;
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            w.skip(4)?; // timeout_ms
            if v >= 1 {
                w.skip(1)?; // validate_only
            }
        }
        ApiKey::DeleteTopics => {
            if v >= 6 {
                w.array(false, |w| {
                    w.nullable_string()?;
                    w.skip(16)?;
                    w.tagged_fields()
                })?;
            } else {
                w.array(false, |w| w.string())?;
            }
            w.skip(4)?;
        }
        ApiKey::InitProducerId => {
            w.nullable_string()?;
            w.skip(4)?;
            if v >= 3 {
                w.skip(8 + 2)?;
            }
            if v >= 6 {
                w.skip(1)?;
            }
        }
        ApiKey::FindCoordinator => {
            if v < 4 {
                w.string()?; // key
            }
            if v >= 1 {
                w.skip(1)?; // key_type
            }
            if v >= 4 {
                w.array(false, |w| w.string())?;
            }
        }
        ApiKey::DeleteRecords => {
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4 + 8)?;
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            w.skip(4)?;
        }
        ApiKey::CreatePartitions => {
            w.array(false, |w| {
                w.string()?;
                w.skip(4)?; // count
                w.array(true, |w| {
                    w.array(false, |w| w.skip(4))?;
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            w.skip(4 + 1)?; // timeout_ms, validate_only
        }
        ApiKey::DescribeConfigs => {
            w.array(false, |w| {
                w.skip(1)?; // resource_type
                w.string()?;
                w.array(true, |w| w.string())?;
                w.tagged_fields()
            })?;
            if v >= 1 {
                w.skip(1)?; // include_synonyms
            }
            if v >= 3 {
                w.skip(1)?; // include_documentation
            }
        }
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            let incremental = key == ApiKey::IncrementalAlterConfigs;
            w.array(false, |w| {
                w.skip(1)?; // resource_type
                w.string()?;
                w.array(false, |w| {
                    w.string()?;
                    if incremental {
                        w.skip(1)?; // config_operation
                    }
                    w.nullable_string()?;
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
            w.skip(1)?; // validate_only
        }
        ApiKey::OffsetForLeaderEpoch => {
            if v >= 3 {
                w.skip(4)?; // replica_id
            }
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4 + 4 + 4)?; // partition, current_leader_epoch, leader_epoch
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::DescribeLogDirs => {
            w.array(true, |w| {
                w.string()?;
                w.array(false, |w| w.skip(4))?;
                w.tagged_fields()
            })?;
        }
        ApiKey::DescribeCluster => {
            w.skip(1)?; // include_cluster_authorized_operations
            if v >= 1 {
                w.skip(1)?; // endpoint_type
            }
            if v >= 2 {
                w.skip(1)?; // include_fenced_brokers
            }
        }
        ApiKey::OffsetCommit => {
            w.string()?; // group_id
            if v >= 1 {
                w.skip(4)?; // generation_id_or_member_epoch
                w.string()?; // member_id
            }
            if v >= 7 {
                w.nullable_string()?; // group_instance_id
            }
            if (2..=4).contains(&v) {
                w.skip(8)?; // retention_time_ms
            }
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4 + 8)?; // partition_index, committed_offset
                    if v >= 6 {
                        w.skip(4)?; // committed_leader_epoch
                    }
                    if v == 1 {
                        w.skip(8)?; // commit_timestamp
                    }
                    w.nullable_string()?; // committed_metadata
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::OffsetFetch => {
            let topics = |w: &mut Walker<'_>| {
                w.array(v >= 2, |w| {
                    w.string()?;
                    w.array(false, |w| w.skip(4))?;
                    w.tagged_fields()
                })
            };
            if v >= 8 {
                w.array(false, |w| {
                    w.string()?; // group_id
                    if v >= 9 {
                        w.nullable_string()?; // member_id
                        w.skip(4)?; // member_epoch
                    }
                    topics(w)?;
                    w.tagged_fields()
                })?;
            } else {
                w.string()?;
                topics(&mut w)?;
            }
            if v >= 7 {
                w.skip(1)?; // require_stable
            }
        }
        ApiKey::JoinGroup => {
            w.string()?; // group_id
            w.skip(4)?; // session_timeout_ms
            if v >= 1 {
                w.skip(4)?; // rebalance_timeout_ms
            }
            w.string()?; // member_id
            if v >= 5 {
                w.nullable_string()?; // group_instance_id
            }
            w.string()?; // protocol_type
            w.array(false, |w| {
                w.string()?;
                w.blob(false, true)?; // metadata
                w.tagged_fields()
            })?;
            if v >= 8 {
                w.nullable_string()?; // reason
            }
        }
        ApiKey::Heartbeat => {
            w.string()?;
            w.skip(4)?;
            w.string()?;
            if v >= 3 {
                w.nullable_string()?;
            }
        }
        ApiKey::LeaveGroup => {
            w.string()?;
            if v >= 3 {
                w.array(false, |w| {
                    w.string()?;
                    w.nullable_string()?;
                    if v >= 5 {
                        w.nullable_string()?; // reason
                    }
                    w.tagged_fields()
                })?;
            } else {
                w.string()?;
            }
        }
        ApiKey::SyncGroup => {
            w.string()?;
            w.skip(4)?;
            w.string()?;
            if v >= 3 {
                w.nullable_string()?;
            }
            if v >= 5 {
                w.nullable_string()?; // protocol_type
                w.nullable_string()?; // protocol_name
            }
            w.array(false, |w| {
                w.string()?;
                w.blob(false, true)?;
                w.tagged_fields()
            })?;
        }
        ApiKey::DescribeGroups => {
            w.array(false, |w| w.string())?;
            if v >= 3 {
                w.skip(1)?;
            }
        }
        ApiKey::ListGroups => {
            if v >= 4 {
                w.array(false, |w| w.string())?;
            }
            if v >= 5 {
                w.array(false, |w| w.string())?;
            }
        }
        ApiKey::DeleteGroups => {
            w.array(false, |w| w.string())?;
        }
        ApiKey::OffsetDelete => {
            w.string()?;
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| w.skip(4))
            })?;
        }
        ApiKey::AddPartitionsToTxn => {
            if v >= 4 {
                return Err(Malformed("AddPartitionsToTxn v4+ is broker-to-broker"));
            }
            w.string()?; // transactional_id
            w.skip(8 + 2)?; // producer_id, producer_epoch
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| w.skip(4))?;
                w.tagged_fields()
            })?;
        }
        ApiKey::WriteTxnMarkers => {
            w.array(false, |w| {
                // producer_id, producer_epoch, transaction_result
                w.skip(8 + 2 + 1)?;
                w.array(false, |w| {
                    w.string()?;
                    w.array(false, |w| w.skip(4))?;
                    w.tagged_fields()
                })?;
                w.skip(4)?; // coordinator_epoch
                w.tagged_fields()
            })?;
        }
        ApiKey::AddOffsetsToTxn => {
            w.string()?; // transactional_id
            w.skip(8 + 2)?;
            w.string()?; // group_id
        }
        ApiKey::EndTxn => {
            w.string()?;
            w.skip(8 + 2 + 1)?; // producer_id, producer_epoch, committed
        }
        ApiKey::TxnOffsetCommit => {
            w.string()?; // transactional_id
            w.string()?; // group_id
            w.skip(8 + 2)?;
            if v >= 3 {
                w.skip(4)?; // generation_id
                w.string()?; // member_id
                w.nullable_string()?; // group_instance_id
            }
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| {
                    w.skip(4 + 8)?; // partition_index, committed_offset
                    if v >= 2 {
                        w.skip(4)?; // committed_leader_epoch
                    }
                    w.nullable_string()?; // committed_metadata
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::DescribeProducers => {
            w.array(false, |w| {
                w.string()?;
                w.array(false, |w| w.skip(4))?;
                w.tagged_fields()
            })?;
        }
        ApiKey::DescribeTransactions => {
            w.array(false, |w| w.string())?;
        }
        ApiKey::ListTransactions => {
            w.array(false, |w| w.string())?; // state_filters
            w.array(false, |w| w.skip(8))?; // producer_id_filters
            if v >= 1 {
                w.skip(8)?; // duration_filter
            }
        }
        ApiKey::ConsumerGroupHeartbeat => {
            w.string()?; // group_id
            w.string()?; // member_id
            w.skip(4)?; // member_epoch
            w.nullable_string()?; // instance_id
            w.nullable_string()?; // rack_id
            w.skip(4)?; // rebalance_timeout_ms
            w.array(true, |w| w.string())?; // subscribed_topic_names
            if v >= 1 {
                w.nullable_string()?; // subscribed_topic_regex
            }
            w.nullable_string()?; // server_assignor
            w.array(true, |w| {
                w.skip(16)?; // topic_id
                w.array(false, |w| w.skip(4))?;
                w.tagged_fields()
            })?;
        }
        ApiKey::ConsumerGroupDescribe => {
            w.array(false, |w| w.string())?;
            w.skip(1)?; // include_authorized_operations
        }
        ApiKey::ElectLeaders => {
            if v >= 1 {
                w.skip(1)?; // election_type
            }
            // topic_partitions: null means every partition.
            w.array(true, |w| {
                w.string()?;
                w.array(false, |w| w.skip(4))?;
                w.tagged_fields()
            })?;
            w.skip(4)?; // timeout_ms
        }
        ApiKey::DescribeQuorum => {
            w.array(false, |w| {
                w.string()?; // topic_name
                w.array(false, |w| {
                    w.skip(4)?; // partition_index
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::AlterPartitionReassignments => {
            w.skip(4)?; // timeout_ms
            if v >= 1 {
                w.skip(1)?; // allow_replication_factor_change
            }
            w.array(false, |w| {
                w.string()?; // name
                w.array(false, |w| {
                    w.skip(4)?; // partition_index
                    w.array(true, |w| w.skip(4))?; // replicas: null cancels
                    w.tagged_fields()
                })?;
                w.tagged_fields()
            })?;
        }
        ApiKey::ListPartitionReassignments => {
            w.skip(4)?; // timeout_ms
            w.array(true, |w| {
                w.string()?; // name
                w.array(false, |w| w.skip(4))?; // partition_indexes
                w.tagged_fields()
            })?;
        }
        ApiKey::UnregisterBroker => {
            w.skip(4)?; // broker_id
        }
        _ => return Err(Malformed("no structural check for this API")),
    }
    w.tagged_fields()?;
    Ok(w.pos)
}
