//! The metadata records: every change to cluster metadata is one of these, committed by the
//! quorum and applied in log order by [`crate::MetadataImage::apply`] on every node.
//!
//! Names follow Kafka's metadata records (`metadata/src/main/resources/common/metadata/
//! *Record.json`) so that reading those files explains the fields.
//!
//! Encoding (`Record::encode`): a `u16` big-endian record format version, then the record
//! as serde_json. [`Record::decode`] never panics: it checks the size bound and the version
//! before handing the bytes to serde_json.

use serde::{Deserialize, Serialize};

/// The record format version written by [`Record::encode`].
pub const RECORD_FORMAT_VERSION: u16 = 1;

/// Upper bound of one encoded record; larger inputs are refused before parsing.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// A topic id (Kafka's 128-bit `Uuid`). Zero is Kafka's `ZERO_UUID` and is never assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub u128);

impl TopicId {
    /// Kafka's `Uuid.ZERO_UUID`: "no topic id".
    pub const ZERO: TopicId = TopicId(0);
}

/// A listener of a broker, as advertised to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name, e.g. `PLAINTEXT`.
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// KIP-704: whether the leader may be missing data after an unclean election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LeaderRecovery {
    #[default]
    Recovered,
    /// Set by an unclean election; the ISR may not grow beyond the leader until the leader
    /// reports `Recovered` in an AlterPartition.
    Recovering,
}

impl LeaderRecovery {
    /// Kafka's wire value (`LeaderRecoveryState`): 0 recovered, 1 recovering.
    pub fn code(self) -> i8 {
        match self {
            LeaderRecovery::Recovered => 0,
            LeaderRecovery::Recovering => 1,
        }
    }
}

/// What a config set applies to (Kafka's `ConfigResource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    /// A topic, by name (as Kafka keys topic configs).
    Topic(String),
    /// One broker's dynamic configs.
    Broker(i32),
    /// Cluster-wide defaults (Kafka: the broker resource with an empty name).
    Cluster,
}

/// The initial state of one partition, as created by `CreateTopic` / `CreatePartitions`
/// (Kafka's `PartitionRecord`). Epochs start at 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1: no leader.
    pub leader: i32,
}

/// Why a `PartitionChange` was made; informational (the loss ledger and logs use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionKind {
    /// No election, or a clean one from the ISR.
    Clean,
    /// The leader was elected from the ELR (KIP-966).
    Elr,
    /// The leader was elected from outside the ISR and ELR: data may be lost.
    Unclean,
}

/// Kafka's `PartitionChangeRecord`: `None` fields do not change. Applying it always adds
/// one to the partition epoch; setting `leader` (even to the same broker) adds one to the
/// leader epoch. It applies only if the partition epoch is still `expect_partition_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    pub topic: TopicId,
    pub partition: i32,
    /// The partition epoch this change was computed from.
    pub expect_partition_epoch: i32,
    /// `Some(-1)`: no leader.
    pub leader: Option<i32>,
    pub isr: Option<Vec<i32>>,
    pub elr: Option<Vec<i32>>,
    pub last_known_elr: Option<Vec<i32>>,
    pub replicas: Option<Vec<i32>>,
    pub adding: Option<Vec<i32>>,
    pub removing: Option<Vec<i32>>,
    pub leader_recovery: Option<LeaderRecovery>,
    pub election: ElectionKind,
}

impl PartitionChange {
    /// A change of nothing (yet) for `(topic, partition)` at `expect_partition_epoch`.
    pub fn new(topic: TopicId, partition: i32, expect_partition_epoch: i32) -> PartitionChange {
        PartitionChange {
            topic,
            partition,
            expect_partition_epoch,
            leader: None,
            isr: None,
            elr: None,
            last_known_elr: None,
            replicas: None,
            adding: None,
            removing: None,
            leader_recovery: None,
            election: ElectionKind::Clean,
        }
    }

    /// True when applying it would change no field (Kafka's `changeRecordIsNoOp`).
    pub fn is_noop(&self) -> bool {
        self.leader.is_none()
            && self.isr.is_none()
            && self.elr.is_none()
            && self.last_known_elr.is_none()
            && self.replicas.is_none()
            && self.adding.is_none()
            && self.removing.is_none()
            && self.leader_recovery.is_none()
    }
}

/// One metadata record. See docs/metadata.md for the effect of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// First entry of the log; fixes the cluster id.
    Bootstrap {
        cluster_id: String,
        metadata_version: u16,
    },
    /// A broker (re-)registers; its epoch becomes the index of this record; it starts fenced.
    RegisterBroker {
        id: i32,
        /// Random per process start.
        incarnation: u128,
        listeners: Vec<Endpoint>,
        rack: Option<String>,
    },
    /// The broker caught up with the metadata log: it may lead and join ISRs.
    UnfenceBroker { id: i32, epoch: i64 },
    /// The broker missed its session (or asked to be fenced, or shut down).
    FenceBroker { id: i32, epoch: i64 },
    /// The broker asked to shut down; it is no longer an acceptable leader or ISR member.
    BeginControlledShutdown { id: i32, epoch: i64 },
    /// The broker is removed from the cluster (decommission).
    UnregisterBroker { id: i32, epoch: i64 },
    /// A new topic with its partitions (epochs 0) and its explicit configs.
    CreateTopic {
        name: String,
        id: TopicId,
        partitions: Vec<PartitionAssignment>,
        configs: Vec<(String, String)>,
    },
    /// Removes a topic, its partitions and its configs.
    DeleteTopic { id: TopicId },
    /// Appends partitions to a topic.
    CreatePartitions {
        id: TopicId,
        partitions: Vec<PartitionAssignment>,
    },
    /// Leader / ISR / ELR / replicas change of one partition.
    PartitionChange(PartitionChange),
    /// Dynamic config changes (`delete` is applied after `set`).
    SetConfigs {
        resource: ConfigResource,
        set: Vec<(String, String)>,
        delete: Vec<String>,
    },
    /// A block of producer ids `[start, start + len)` handed to a broker.
    AllocateProducerIds {
        broker: i32,
        broker_epoch: i64,
        start: i64,
        len: i32,
    },
    /// An unclean election happened (written after its `PartitionChange`): no effect on the
    /// image; the new leader records an `unclean_election` loss-ledger event on apply.
    UncleanElection {
        topic: TopicId,
        partition: i32,
        new_leader: i32,
        old_leader_epoch: i32,
        isr_before: Vec<i32>,
        elr_before: Vec<i32>,
    },
}

/// Why bytes could not be decoded into a [`Record`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record too short: {0} bytes")]
    TooShort(usize),
    #[error("record too large: {0} bytes (max {MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u16),
    #[error("malformed record: {0}")]
    Malformed(String),
}

impl Record {
    /// `u16` big-endian format version + serde_json.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = RECORD_FORMAT_VERSION.to_be_bytes().to_vec();
        // Serializing these plain data types to a Vec cannot fail (no maps with non-string
        // keys, no custom serializers); an error here would be a programming error.
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(e) => unreachable!("metadata record serialization failed: {e}"),
        }
    }

    /// The inverse of [`Record::encode`]; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (version, body) = match bytes {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
            _ => return Err(DecodeError::TooShort(bytes.len())),
        };
        if version != RECORD_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Record> {
        let t = TopicId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let mut pc = PartitionChange::new(t, 3, 7);
        pc.leader = Some(2);
        pc.isr = Some(vec![2, 3]);
        pc.elr = Some(vec![]);
        pc.leader_recovery = Some(LeaderRecovery::Recovering);
        pc.election = ElectionKind::Unclean;
        vec![
            Record::Bootstrap {
                cluster_id: "abc".into(),
                metadata_version: 1,
            },
            Record::RegisterBroker {
                id: 1,
                incarnation: u128::MAX,
                listeners: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "h".into(),
                    port: 9092,
                }],
                rack: Some("r1".into()),
            },
            Record::UnfenceBroker { id: 1, epoch: 5 },
            Record::FenceBroker { id: 1, epoch: 5 },
            Record::BeginControlledShutdown { id: 1, epoch: 5 },
            Record::UnregisterBroker { id: 1, epoch: 5 },
            Record::CreateTopic {
                name: "orders".into(),
                id: t,
                partitions: vec![PartitionAssignment {
                    replicas: vec![1, 2],
                    isr: vec![1],
                    leader: 1,
                }],
                configs: vec![("min.insync.replicas".into(), "2".into())],
            },
            Record::DeleteTopic { id: t },
            Record::CreatePartitions {
                id: t,
                partitions: vec![],
            },
            Record::PartitionChange(pc),
            Record::SetConfigs {
                resource: ConfigResource::Topic("orders".into()),
                set: vec![("retention.ms".into(), "1".into())],
                delete: vec!["segment.bytes".into()],
            },
            Record::AllocateProducerIds {
                broker: 1,
                broker_epoch: 4,
                start: 0,
                len: 1000,
            },
            Record::UncleanElection {
                topic: t,
                partition: 0,
                new_leader: 2,
                old_leader_epoch: 4,
                isr_before: vec![1],
                elr_before: vec![],
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for r in samples() {
            let bytes = r.encode();
            assert_eq!(&bytes[..2], &[0, 1]);
            assert_eq!(Record::decode(&bytes), Ok(r));
        }
    }

    #[test]
    fn decode_refuses_bad_envelopes() {
        assert_eq!(Record::decode(&[]), Err(DecodeError::TooShort(0)));
        assert_eq!(Record::decode(&[0]), Err(DecodeError::TooShort(1)));
        let mut bytes = samples()[0].encode();
        bytes[1] = 2;
        assert_eq!(
            Record::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            Record::decode(&big),
            Err(DecodeError::TooLarge(MAX_RECORD_BYTES + 1))
        );
        assert!(matches!(
            Record::decode(b"\0\x01{\"Nope\":1}"),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// Random and mutated inputs never panic (and a mutation is either refused or decodes to
    /// some record that encodes again).
    #[test]
    fn decode_never_panics_on_random_or_mutated_bytes() {
        let samples: Vec<Vec<u8>> = samples().iter().map(Record::encode).collect();
        let mut rng = fastrand::Rng::with_seed(6);
        let mut decoded = 0;
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 4 == 0 {
                let len = rng.usize(0..64);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                let mut b = samples[rng.usize(..samples.len())].clone();
                for _ in 0..rng.usize(1..4) {
                    match rng.u8(0..3) {
                        0 if !b.is_empty() => {
                            let at = rng.usize(..b.len());
                            b[at] = rng.u8(..);
                        }
                        1 if !b.is_empty() => {
                            let at = rng.usize(..b.len());
                            b.truncate(at);
                        }
                        _ => {
                            let at = rng.usize(..=b.len());
                            b.insert(at, rng.u8(..));
                        }
                    }
                }
                b
            };
            if let Ok(r) = Record::decode(&bytes) {
                decoded += 1;
                assert_eq!(Record::decode(&r.encode()), Ok(r));
            }
        }
        // Some mutations (e.g. a changed digit) still decode; the test exercised both paths.
        assert!(decoded > 0);
    }
}
