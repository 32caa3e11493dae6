//! The KIP-848 consumer group records of `__consumer_offsets`, in Apache Kafka's layout
//! (group-coordinator `ConsumerGroup*Key.json` / `*Value.json`; docs/format.md): keys are
//! non-flexible (`int16` version, `int16`-length strings), values are version 0 of flexible
//! structs (compact strings and arrays, tagged fields; unknown tags are skipped on read).
//!
//! | key version | record                                  | key fields        |
//! |-------------|-----------------------------------------|-------------------|
//! | 3           | ConsumerGroupMetadata (group epoch)     | group             |
//! | 4           | ConsumerGroupPartitionMetadata          | group             |
//! | 5           | ConsumerGroupMemberMetadata             | group, member     |
//! | 6           | ConsumerGroupTargetAssignmentMetadata   | group             |
//! | 7           | ConsumerGroupTargetAssignmentMember     | group, member     |
//! | 8           | ConsumerGroupCurrentMemberAssignment    | group, member     |

use crate::consumer::{Assign, TopicId};
use crate::GroupError;

pub const METADATA: i16 = 3;
pub const PARTITION_METADATA: i16 = 4;
pub const MEMBER_METADATA: i16 = 5;
pub const TARGET_METADATA: i16 = 6;
pub const TARGET_MEMBER: i16 = 7;
pub const CURRENT_ASSIGNMENT: i16 = 8;

/// ConsumerGroupMemberMetadataValue v0 (the classic-member tag is never written).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMetadata {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

/// ConsumerGroupCurrentMemberAssignmentValue v0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentAssignment {
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: i8,
    pub assigned: Assign,
    pub pending_revocation: Assign,
}

/// One topic of ConsumerGroupPartitionMetadataValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub id: TopicId,
    pub name: String,
    pub partitions: i32,
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(i16::MAX as usize);
    out.extend_from_slice(&(n as i16).to_be_bytes());
    out.extend_from_slice(&b[..n]);
}

/// A key: version, group, and the member for per-member records.
pub fn key(version: i16, group: &str, member: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + group.len());
    out.extend_from_slice(&version.to_be_bytes());
    put_str16(&mut out, group);
    if let Some(m) = member {
        put_str16(&mut out, m);
    }
    out
}

fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    uvarint(out, s.len() as u64 + 1);
    out.extend_from_slice(s.as_bytes());
}

fn cnstr(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => uvarint(out, 0),
        Some(s) => cstr(out, s),
    }
}

fn no_tags(out: &mut Vec<u8>) {
    uvarint(out, 0);
}

fn value_header() -> Vec<u8> {
    0i16.to_be_bytes().to_vec()
}

fn put_assign(out: &mut Vec<u8>, a: &Assign) {
    uvarint(out, a.len() as u64 + 1);
    for (id, parts) in a {
        out.extend_from_slice(id);
        uvarint(out, parts.len() as u64 + 1);
        for p in parts {
            out.extend_from_slice(&p.to_be_bytes());
        }
        no_tags(out);
    }
}

pub fn metadata_value(epoch: i32) -> Vec<u8> {
    let mut out = value_header();
    out.extend_from_slice(&epoch.to_be_bytes());
    no_tags(&mut out);
    out
}

pub fn partition_metadata_value(topics: &[TopicMetadata]) -> Vec<u8> {
    let mut out = value_header();
    uvarint(&mut out, topics.len() as u64 + 1);
    for t in topics {
        out.extend_from_slice(&t.id);
        cstr(&mut out, &t.name);
        out.extend_from_slice(&t.partitions.to_be_bytes());
        // PartitionMetadata (racks): none.
        uvarint(&mut out, 1);
        no_tags(&mut out);
    }
    no_tags(&mut out);
    out
}

pub fn member_metadata_value(m: &MemberMetadata) -> Vec<u8> {
    let mut out = value_header();
    cnstr(&mut out, m.instance_id.as_deref());
    cnstr(&mut out, m.rack_id.as_deref());
    cstr(&mut out, &m.client_id);
    cstr(&mut out, &m.client_host);
    uvarint(&mut out, m.subscribed_topic_names.len() as u64 + 1);
    for t in &m.subscribed_topic_names {
        cstr(&mut out, t);
    }
    cnstr(&mut out, m.subscribed_topic_regex.as_deref());
    out.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
    cnstr(&mut out, m.server_assignor.as_deref());
    no_tags(&mut out);
    out
}

pub fn target_metadata_value(assignment_epoch: i32) -> Vec<u8> {
    metadata_value(assignment_epoch)
}

pub fn target_member_value(a: &Assign) -> Vec<u8> {
    let mut out = value_header();
    put_assign(&mut out, a);
    no_tags(&mut out);
    out
}

pub fn current_assignment_value(c: &CurrentAssignment) -> Vec<u8> {
    let mut out = value_header();
    out.extend_from_slice(&c.member_epoch.to_be_bytes());
    out.extend_from_slice(&c.previous_member_epoch.to_be_bytes());
    out.push(c.state as u8);
    put_assign(&mut out, &c.assigned);
    put_assign(&mut out, &c.pending_revocation);
    no_tags(&mut out);
    out
}

struct R<'a> {
    b: &'a [u8],
}

/// Bound on decoded array lengths (each element takes at least one byte).
fn check_len(n: usize, left: usize) -> Result<usize, GroupError> {
    if n > left {
        return Err(GroupError::BadRecord("array longer than the record"));
    }
    Ok(n)
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GroupError> {
        if self.b.len() < n {
            return Err(GroupError::BadRecord("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn i8(&mut self) -> Result<i8, GroupError> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Result<i16, GroupError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, GroupError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn uvarint(&mut self) -> Result<u64, GroupError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(GroupError::BadRecord("varint too long"))
    }
    fn uuid(&mut self) -> Result<TopicId, GroupError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.take(16)?);
        Ok(id)
    }
    fn cnstr(&mut self) -> Result<Option<String>, GroupError> {
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(None);
        }
        let len = check_len((n - 1) as usize, self.b.len())?;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| GroupError::BadRecord("string is not UTF-8"))
    }
    fn cstr(&mut self) -> Result<String, GroupError> {
        self.cnstr()?.ok_or(GroupError::BadRecord("null string"))
    }
    fn array_len(&mut self) -> Result<usize, GroupError> {
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(0);
        }
        check_len((n - 1) as usize, self.b.len())
    }
    fn skip_tags(&mut self) -> Result<(), GroupError> {
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = check_len(self.uvarint()? as usize, self.b.len())?;
            self.take(size)?;
        }
        Ok(())
    }
    fn str16(&mut self) -> Result<String, GroupError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(GroupError::BadRecord("null string in key"));
        }
        String::from_utf8(self.take(n as usize)?.to_vec())
            .map_err(|_| GroupError::BadRecord("string is not UTF-8"))
    }
    fn version0(&mut self) -> Result<(), GroupError> {
        if self.i16()? != 0 {
            return Err(GroupError::BadRecord(
                "unknown consumer group value version",
            ));
        }
        Ok(())
    }
    fn assign(&mut self) -> Result<Assign, GroupError> {
        let n = self.array_len()?;
        let mut a = Assign::new();
        for _ in 0..n {
            let id = self.uuid()?;
            let k = self.array_len()?;
            let set = a.entry(id).or_default();
            for _ in 0..k {
                set.insert(self.i32()?);
            }
            self.skip_tags()?;
        }
        Ok(a)
    }
}

/// The group and member of a consumer group key (after its version).
pub(crate) fn decode_key_body(
    version: i16,
    b: &[u8],
) -> Result<(String, Option<String>), GroupError> {
    let mut r = R { b };
    let group = r.str16()?;
    let member = match version {
        MEMBER_METADATA | TARGET_MEMBER | CURRENT_ASSIGNMENT => Some(r.str16()?),
        _ => None,
    };
    Ok((group, member))
}

pub fn decode_epoch_value(b: &[u8]) -> Result<i32, GroupError> {
    let mut r = R { b };
    r.version0()?;
    let e = r.i32()?;
    r.skip_tags()?;
    Ok(e)
}

pub fn decode_partition_metadata_value(b: &[u8]) -> Result<Vec<TopicMetadata>, GroupError> {
    let mut r = R { b };
    r.version0()?;
    let n = r.array_len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.uuid()?;
        let name = r.cstr()?;
        let partitions = r.i32()?;
        let k = r.array_len()?;
        for _ in 0..k {
            r.i32()?;
            let racks = r.array_len()?;
            for _ in 0..racks {
                r.cstr()?;
            }
            r.skip_tags()?;
        }
        r.skip_tags()?;
        out.push(TopicMetadata {
            id,
            name,
            partitions,
        });
    }
    r.skip_tags()?;
    Ok(out)
}

pub fn decode_member_metadata_value(b: &[u8]) -> Result<MemberMetadata, GroupError> {
    let mut r = R { b };
    r.version0()?;
    let instance_id = r.cnstr()?;
    let rack_id = r.cnstr()?;
    let client_id = r.cstr()?;
    let client_host = r.cstr()?;
    let n = r.array_len()?;
    let mut subscribed_topic_names = Vec::with_capacity(n);
    for _ in 0..n {
        subscribed_topic_names.push(r.cstr()?);
    }
    let subscribed_topic_regex = r.cnstr()?;
    let rebalance_timeout_ms = r.i32()?;
    let server_assignor = r.cnstr()?;
    r.skip_tags()?;
    Ok(MemberMetadata {
        instance_id,
        rack_id,
        client_id,
        client_host,
        subscribed_topic_names,
        subscribed_topic_regex,
        rebalance_timeout_ms,
        server_assignor,
    })
}

pub fn decode_target_member_value(b: &[u8]) -> Result<Assign, GroupError> {
    let mut r = R { b };
    r.version0()?;
    let a = r.assign()?;
    r.skip_tags()?;
    Ok(a)
}

pub fn decode_current_assignment_value(b: &[u8]) -> Result<CurrentAssignment, GroupError> {
    let mut r = R { b };
    r.version0()?;
    let member_epoch = r.i32()?;
    let previous_member_epoch = r.i32()?;
    let state = r.i8()?;
    let assigned = r.assign()?;
    let pending_revocation = r.assign()?;
    r.skip_tags()?;
    Ok(CurrentAssignment {
        member_epoch,
        previous_member_epoch,
        state,
        assigned,
        pending_revocation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let mut a = Assign::new();
        a.entry([7; 16]).or_default().extend([0, 2, 5]);
        assert_eq!(
            decode_target_member_value(&target_member_value(&a)),
            Ok(a.clone())
        );
        let c = CurrentAssignment {
            member_epoch: 5,
            previous_member_epoch: 4,
            state: 1,
            assigned: a.clone(),
            pending_revocation: Assign::new(),
        };
        assert_eq!(
            decode_current_assignment_value(&current_assignment_value(&c)),
            Ok(c)
        );
        let m = MemberMetadata {
            instance_id: Some("i".into()),
            rack_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            subscribed_topic_names: vec!["a".into(), "b".into()],
            subscribed_topic_regex: Some("t.*".into()),
            rebalance_timeout_ms: 300_000,
            server_assignor: Some("uniform".into()),
        };
        assert_eq!(
            decode_member_metadata_value(&member_metadata_value(&m)),
            Ok(m)
        );
        let t = vec![TopicMetadata {
            id: [1; 16],
            name: "t".into(),
            partitions: 12,
        }];
        assert_eq!(
            decode_partition_metadata_value(&partition_metadata_value(&t)),
            Ok(t)
        );
        assert_eq!(decode_epoch_value(&metadata_value(9)), Ok(9));
        let k = key(CURRENT_ASSIGNMENT, "g", Some("m"));
        assert_eq!(
            decode_key_body(CURRENT_ASSIGNMENT, &k[2..]),
            Ok(("g".into(), Some("m".into())))
        );
        // Kafka's exact bytes for ConsumerGroupMetadataValue{epoch=1}: version 0, int32, no tags.
        assert_eq!(metadata_value(1), vec![0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn hostile_lengths_are_rejected() {
        assert!(decode_target_member_value(&[0, 0, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_member_metadata_value(&[0, 0]).is_err());
    }
}
