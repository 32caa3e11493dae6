//! The records of `__consumer_offsets`, in Apache Kafka's own layout (docs/format.md,
//! "Consumer offsets topic"): offset commit key v1 / value v3, group metadata key v2 / value v3.
//! A null value is a tombstone.

use crate::{GroupError, MemberSnapshot};

pub const OFFSET_KEY_VERSION: i16 = 1;
pub const GROUP_KEY_VERSION: i16 = 2;
pub const OFFSET_VALUE_VERSION: i16 = 3;
pub const GROUP_VALUE_VERSION: i16 = 3;

/// A decoded record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
    /// A KIP-848 consumer group record (key versions 3 to 8; see `consumer_records`).
    Consumer {
        version: i16,
        group: String,
        member: Option<String>,
    },
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// Group metadata as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberSnapshot>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(i16::MAX as usize);
    out.extend_from_slice(&(n as i16).to_be_bytes());
    out.extend_from_slice(&b[..n]);
}

fn put_nstr(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
        Some(s) => put_str(out, s),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + group.len() + topic.len());
    out.extend_from_slice(&OFFSET_KEY_VERSION.to_be_bytes());
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + group.len());
    out.extend_from_slice(&GROUP_KEY_VERSION.to_be_bytes());
    put_str(&mut out, group);
    out
}

pub fn offset_value(v: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(26 + v.metadata.len());
    out.extend_from_slice(&OFFSET_VALUE_VERSION.to_be_bytes());
    out.extend_from_slice(&v.offset.to_be_bytes());
    out.extend_from_slice(&v.leader_epoch.to_be_bytes());
    put_str(&mut out, &v.metadata);
    out.extend_from_slice(&v.commit_timestamp.to_be_bytes());
    out
}

pub fn group_value(v: &GroupValue) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&GROUP_VALUE_VERSION.to_be_bytes());
    put_str(&mut out, &v.protocol_type);
    out.extend_from_slice(&v.generation.to_be_bytes());
    put_nstr(&mut out, v.protocol.as_deref());
    put_nstr(&mut out, v.leader.as_deref());
    out.extend_from_slice(&v.state_timestamp.to_be_bytes());
    out.extend_from_slice(&(v.members.len() as i32).to_be_bytes());
    for m in &v.members {
        put_str(&mut out, &m.member_id);
        put_nstr(&mut out, m.instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
        out.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GroupError> {
        if self.b.len() < n {
            return Err(GroupError::BadRecord("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn i16(&mut self) -> Result<i16, GroupError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, GroupError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, GroupError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn nstr(&mut self) -> Result<Option<String>, GroupError> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| GroupError::BadRecord("string is not UTF-8"))
    }
    fn str(&mut self) -> Result<String, GroupError> {
        self.nstr()?.ok_or(GroupError::BadRecord("null string"))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, GroupError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize)?.to_vec())
    }
}

pub fn decode_key(b: &[u8]) -> Result<RecordKey, GroupError> {
    let mut r = Reader { b };
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.str()?,
            topic: r.str()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.str()? }),
        v @ 3..=8 => {
            let (group, member) = crate::consumer_records::decode_key_body(v, r.b)?;
            Ok(RecordKey::Consumer {
                version: v,
                group,
                member,
            })
        }
        _ => Err(GroupError::BadRecord("unknown key version")),
    }
}

pub fn decode_offset_value(b: &[u8]) -> Result<OffsetValue, GroupError> {
    let mut r = Reader { b };
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(GroupError::BadRecord("unknown offset value version"));
    }
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.str()?;
    let commit_timestamp = r.i64()?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

pub fn decode_group_value(b: &[u8]) -> Result<GroupValue, GroupError> {
    let mut r = Reader { b };
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(GroupError::BadRecord("unknown group value version"));
    }
    let protocol_type = r.str()?;
    let generation = r.i32()?;
    let protocol = r.nstr()?;
    let leader = r.nstr()?;
    let state_timestamp = if version >= 2 { r.i64()? } else { -1 };
    let n = r.i32()?;
    if n < 0 || n as usize > r.b.len() {
        return Err(GroupError::BadRecord("bad member count"));
    }
    let mut members = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let member_id = r.str()?;
        let instance_id = if version >= 3 { r.nstr()? } else { None };
        let client_id = r.str()?;
        let client_host = r.str()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { 0 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(MemberSnapshot {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

/// Kafka's partition of `__consumer_offsets` for a group: `abs(groupId.hashCode()) % n`
/// with Java's `String.hashCode` over UTF-16 code units.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for u in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(u));
    }
    // Kafka's Utils.abs maps i32::MIN to 0.
    let h = if h == i32::MIN { 0 } else { h.abs() };
    h % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let k = offset_key("g", "t", 3);
        assert_eq!(
            decode_key(&k).ok(),
            Some(RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3
            })
        );
        let v = OffsetValue {
            offset: 42,
            leader_epoch: 7,
            metadata: "meta".into(),
            commit_timestamp: 99,
        };
        assert_eq!(decode_offset_value(&offset_value(&v)).ok(), Some(v));
        let g = GroupValue {
            protocol_type: "consumer".into(),
            generation: 3,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 5,
            members: vec![MemberSnapshot {
                member_id: "m1".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300000,
                session_timeout_ms: 45000,
                subscription: vec![1, 2],
                assignment: vec![3],
            }],
        };
        assert_eq!(decode_group_value(&group_value(&g)).ok(), Some(g));
        assert!(decode_key(&[0, 9]).is_err());
    }

    #[test]
    fn java_hash_partition() {
        // "test-group".hashCode() == 627841412 in Java.
        assert_eq!(partition_for("test-group", 50), 627841412 % 50);
        assert_eq!(partition_for("", 10), 0);
    }
}
