//! The replicated state machine: [`MetadataImage`] and [`MetadataImage::apply`].
//!
//! `apply` is deterministic (same records in the same order give the same image on every
//! node) and validates every record again against the current image: a record that no
//! longer applies (stale partition epoch, unknown topic, broker epoch mismatch, a change
//! that would break an invariant) is a [`Rejected`] no-op, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::records::{
    ConfigResource, Endpoint, LeaderRecovery, PartitionAssignment, PartitionChange, Record, TopicId,
};

/// The snapshot format version written by [`MetadataImage::encode_snapshot`].
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// Upper bound of a decoded snapshot.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Upper bound of partitions per topic accepted by `apply` (the controller's own limit is
/// lower and configurable).
pub const MAX_PARTITIONS_PER_TOPIC: usize = 100_000;
/// Upper bound of replicas per partition accepted by `apply`.
pub const MAX_REPLICAS_PER_PARTITION: usize = 64;

/// Kafka's "no leader".
pub const NO_LEADER: i32 = -1;

/// One registered broker (Kafka's `BrokerRegistration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerReg {
    pub id: i32,
    /// The log index of its `RegisterBroker` record (Kafka's broker epoch).
    pub epoch: i64,
    pub incarnation: u128,
    pub listeners: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

impl BrokerReg {
    /// May lead and join ISRs: unfenced and not shutting down (Kafka's `isActive`).
    pub fn is_active(&self) -> bool {
        !self.fenced && !self.in_controlled_shutdown
    }
}

/// One partition (Kafka's `PartitionRegistration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReg {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// KIP-966 eligible leader replicas: were in the ISR when it shrank below min ISR, so
    /// they have everything below the high watermark.
    pub elr: Vec<i32>,
    pub last_known_elr: Vec<i32>,
    /// -1: no leader (offline).
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub leader_recovery: LeaderRecovery,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl PartitionReg {
    fn from_assignment(a: &PartitionAssignment) -> PartitionReg {
        PartitionReg {
            replicas: a.replicas.clone(),
            isr: a.isr.clone(),
            elr: Vec::new(),
            last_known_elr: Vec::new(),
            leader: a.leader,
            leader_epoch: 0,
            partition_epoch: 0,
            leader_recovery: LeaderRecovery::Recovered,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// This partition after `change` (Kafka's `PartitionRegistration.merge`): the partition
    /// epoch grows by one; the leader epoch grows by one when the change sets a leader.
    /// Checks the invariants of the result and that the epochs grow. Does not check
    /// `expect_partition_epoch` (`MetadataImage::apply` does).
    pub fn merge(&self, change: &PartitionChange) -> Result<PartitionReg, Rejected> {
        let prev = self;
        let mut next = prev.clone();
        if let Some(l) = change.leader {
            next.leader = l;
            next.leader_epoch = prev
                .leader_epoch
                .checked_add(1)
                .ok_or_else(|| Rejected::Invariant("leader epoch overflow".into()))?;
        }
        if let Some(v) = &change.isr {
            next.isr = v.clone();
        }
        if let Some(v) = &change.elr {
            next.elr = v.clone();
        }
        if let Some(v) = &change.last_known_elr {
            next.last_known_elr = v.clone();
        }
        if let Some(v) = &change.replicas {
            next.replicas = v.clone();
        }
        if let Some(v) = &change.adding {
            next.adding = v.clone();
        }
        if let Some(v) = &change.removing {
            next.removing = v.clone();
        }
        if let Some(r) = change.leader_recovery {
            next.leader_recovery = r;
        }
        next.partition_epoch = prev
            .partition_epoch
            .checked_add(1)
            .ok_or_else(|| Rejected::Invariant("partition epoch overflow".into()))?;
        next.check_invariants().map_err(Rejected::Invariant)?;
        debug_assert!(next.leader_epoch >= prev.leader_epoch);
        debug_assert!(next.partition_epoch > prev.partition_epoch);
        Ok(next)
    }

    /// The structural invariants every partition keeps; `Err` names the broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.replicas.is_empty() || self.replicas.len() > MAX_REPLICAS_PER_PARTITION {
            return Err(format!("{} replicas", self.replicas.len()));
        }
        for (name, list) in [
            ("replicas", &self.replicas),
            ("isr", &self.isr),
            ("elr", &self.elr),
            ("last_known_elr", &self.last_known_elr),
            ("adding", &self.adding),
            ("removing", &self.removing),
        ] {
            if has_duplicates(list) {
                return Err(format!("duplicate broker in {name} {list:?}"));
            }
            if name != "replicas" && !list.iter().all(|b| self.replicas.contains(b)) {
                return Err(format!(
                    "{name} {list:?} not within replicas {:?}",
                    self.replicas
                ));
            }
        }
        if self.leader != NO_LEADER && !self.isr.contains(&self.leader) {
            return Err(format!("leader {} not in isr {:?}", self.leader, self.isr));
        }
        if self.adding.iter().any(|b| self.removing.contains(b)) {
            return Err(format!(
                "adding {:?} intersects removing {:?}",
                self.adding, self.removing
            ));
        }
        if self.elr.iter().any(|b| self.isr.contains(b)) {
            return Err(format!("elr {:?} intersects isr {:?}", self.elr, self.isr));
        }
        if self.leader_epoch < 0 || self.partition_epoch < 0 {
            return Err("negative epoch".into());
        }
        Ok(())
    }
}

fn has_duplicates(list: &[i32]) -> bool {
    let set: BTreeSet<i32> = list.iter().copied().collect();
    set.len() != list.len()
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReg {
    pub id: TopicId,
    pub name: String,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionReg>,
}

/// Why a record did not apply. The image is unchanged; `last_applied` still advances.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("index {index} is not after the last applied index {last_applied}")]
    StaleIndex { index: u64, last_applied: u64 },
    #[error("the cluster is already bootstrapped")]
    AlreadyBootstrapped,
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    #[error("unknown broker {0}")]
    UnknownBroker(i32),
    #[error("broker {id} epoch {got} does not match the registered epoch {current}")]
    BrokerEpochMismatch { id: i32, got: i64, current: i64 },
    #[error("unknown topic {0:?}")]
    UnknownTopic(TopicId),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("unknown partition {1} of topic {0:?}")]
    UnknownPartition(TopicId, i32),
    #[error("stale partition epoch: expected {expected}, current {current}")]
    StalePartitionEpoch { expected: i32, current: i32 },
    #[error("producer id block starts at {got}, next is {next}")]
    ProducerIdMismatch { got: i64, next: i64 },
    #[error("invariant would break: {0}")]
    Invariant(String),
}

/// One partition whose registration changed; `previous` is what it was before (None when
/// created), and the current state is in the image (absent when deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedPartition {
    pub topic: TopicId,
    pub partition: i32,
    pub previous: Option<PartitionReg>,
}

/// What one applied record changed, so a broker can update itself without diffing the
/// whole image (Kafka's `image/TopicDelta.java`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub brokers: BTreeSet<i32>,
    pub topics_created: Vec<TopicId>,
    /// Deleted topics with their name.
    pub topics_deleted: Vec<(TopicId, String)>,
    pub partitions: Vec<ChangedPartition>,
    pub configs: Vec<ConfigResource>,
    pub cluster_id_set: bool,
    /// A producer-id block was allocated: (broker, start, len).
    pub producer_ids: Option<(i32, i64, i32)>,
    /// The `UncleanElection` record that was applied, for the loss ledger (§3.3).
    pub unclean_election: Option<Record>,
}

/// The role of one node for one partition after a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalChange {
    /// The node leads the partition (new leader, or a new leader epoch / ISR).
    Leader {
        topic: TopicId,
        partition: i32,
        state: PartitionReg,
    },
    /// The node follows the partition.
    Follower {
        topic: TopicId,
        partition: i32,
        state: PartitionReg,
    },
    /// The node no longer hosts the partition (topic deleted or replica removed).
    Removed { topic: TopicId, partition: i32 },
}

impl Delta {
    /// The changes of `node_id`'s role for the partitions this delta touched (Kafka's
    /// `TopicDelta.localChanges`). Call with the image the delta was applied to.
    pub fn local_changes(&self, image: &MetadataImage, node_id: i32) -> Vec<LocalChange> {
        let mut out = Vec::new();
        for c in &self.partitions {
            let was_replica = c
                .previous
                .as_ref()
                .is_some_and(|p| p.replicas.contains(&node_id));
            match image.partition(c.topic, c.partition) {
                Some(p) if p.replicas.contains(&node_id) => {
                    let state = p.clone();
                    if p.leader == node_id {
                        out.push(LocalChange::Leader {
                            topic: c.topic,
                            partition: c.partition,
                            state,
                        });
                    } else {
                        out.push(LocalChange::Follower {
                            topic: c.topic,
                            partition: c.partition,
                            state,
                        });
                    }
                }
                _ if was_replica => out.push(LocalChange::Removed {
                    topic: c.topic,
                    partition: c.partition,
                }),
                _ => {}
            }
        }
        out
    }
}

/// The cluster metadata every node holds: the result of applying the committed metadata
/// log in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Set by the `Bootstrap` record; empty before.
    pub cluster_id: String,
    pub metadata_version: u16,
    /// Index of the last applied record (0: none).
    pub last_applied: u64,
    pub brokers: BTreeMap<i32, BrokerReg>,
    pub topics: BTreeMap<TopicId, TopicReg>,
    /// Topic name → id.
    pub topic_names: BTreeMap<String, TopicId>,
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// The first producer id of the next block.
    pub next_producer_id: i64,
}

/// The serialized form of a snapshot (maps as lists: JSON map keys must be strings).
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    cluster_id: String,
    metadata_version: u16,
    last_applied: u64,
    brokers: Vec<BrokerReg>,
    topics: Vec<TopicReg>,
    configs: Vec<(ConfigResource, Vec<(String, String)>)>,
    next_producer_id: i64,
}

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot too short")]
    TooShort,
    #[error("snapshot too large: {0} bytes")]
    TooLarge(usize),
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u16),
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

impl MetadataImage {
    /// An empty image (before the `Bootstrap` record).
    pub fn new() -> MetadataImage {
        MetadataImage::default()
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&TopicReg> {
        self.topic_names
            .get(name)
            .and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, topic: TopicId, partition: i32) -> Option<&PartitionReg> {
        let idx = usize::try_from(partition).ok()?;
        self.topics.get(&topic)?.partitions.get(idx)
    }

    /// A config value: the topic's own, else the cluster default, else `None`.
    pub fn topic_config(&self, topic_name: &str, key: &str) -> Option<&str> {
        self.configs
            .get(&ConfigResource::Topic(topic_name.to_string()))
            .and_then(|c| c.get(key))
            .or_else(|| {
                self.configs
                    .get(&ConfigResource::Cluster)
                    .and_then(|c| c.get(key))
            })
            .map(String::as_str)
    }

    /// Every partition, in (topic id, partition) order.
    pub fn partitions(&self) -> impl Iterator<Item = (TopicId, i32, &PartitionReg)> {
        self.topics.values().flat_map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .map(move |(i, p)| (t.id, i as i32, p))
        })
    }

    /// Total number of partitions.
    pub fn partition_count(&self) -> usize {
        self.topics.values().map(|t| t.partitions.len()).sum()
    }

    /// Applies the record committed at `index`. On `Err` the image is unchanged except
    /// `last_applied` (a stale index changes nothing at all).
    pub fn apply(&mut self, index: u64, record: &Record) -> Result<Delta, Rejected> {
        if index <= self.last_applied {
            return Err(Rejected::StaleIndex {
                index,
                last_applied: self.last_applied,
            });
        }
        self.last_applied = index;
        let mut delta = Delta::default();
        self.apply_inner(index, record, &mut delta)?;
        Ok(delta)
    }

    fn broker_with_epoch(&mut self, id: i32, epoch: i64) -> Result<&mut BrokerReg, Rejected> {
        let b = self
            .brokers
            .get_mut(&id)
            .ok_or(Rejected::UnknownBroker(id))?;
        if b.epoch != epoch {
            return Err(Rejected::BrokerEpochMismatch {
                id,
                got: epoch,
                current: b.epoch,
            });
        }
        Ok(b)
    }

    fn apply_inner(
        &mut self,
        index: u64,
        record: &Record,
        delta: &mut Delta,
    ) -> Result<(), Rejected> {
        if self.cluster_id.is_empty() && !matches!(record, Record::Bootstrap { .. }) {
            return Err(Rejected::NotBootstrapped);
        }
        match record {
            Record::Bootstrap {
                cluster_id,
                metadata_version,
            } => {
                if !self.cluster_id.is_empty() {
                    return Err(Rejected::AlreadyBootstrapped);
                }
                if cluster_id.is_empty() {
                    return Err(Rejected::Invariant("empty cluster id".into()));
                }
                self.cluster_id = cluster_id.clone();
                self.metadata_version = *metadata_version;
                delta.cluster_id_set = true;
            }
            Record::RegisterBroker {
                id,
                incarnation,
                listeners,
                rack,
            } => {
                if *id < 0 {
                    return Err(Rejected::Invariant(format!("negative broker id {id}")));
                }
                let epoch = i64::try_from(index)
                    .map_err(|_| Rejected::Invariant("index beyond i64".into()))?;
                self.brokers.insert(
                    *id,
                    BrokerReg {
                        id: *id,
                        epoch,
                        incarnation: *incarnation,
                        listeners: listeners.clone(),
                        rack: rack.clone(),
                        fenced: true,
                        in_controlled_shutdown: false,
                    },
                );
                delta.brokers.insert(*id);
            }
            Record::UnfenceBroker { id, epoch } => {
                let b = self.broker_with_epoch(*id, *epoch)?;
                b.fenced = false;
                delta.brokers.insert(*id);
            }
            Record::FenceBroker { id, epoch } => {
                let b = self.broker_with_epoch(*id, *epoch)?;
                b.fenced = true;
                delta.brokers.insert(*id);
            }
            Record::BeginControlledShutdown { id, epoch } => {
                let b = self.broker_with_epoch(*id, *epoch)?;
                b.in_controlled_shutdown = true;
                delta.brokers.insert(*id);
            }
            Record::UnregisterBroker { id, epoch } => {
                self.broker_with_epoch(*id, *epoch)?;
                self.brokers.remove(id);
                self.configs.remove(&ConfigResource::Broker(*id));
                delta.brokers.insert(*id);
            }
            Record::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                if *id == TopicId::ZERO || self.topics.contains_key(id) {
                    return Err(Rejected::Invariant(format!("topic id {id:?} unusable")));
                }
                if self.topic_names.contains_key(name) {
                    return Err(Rejected::TopicExists(name.clone()));
                }
                if name.is_empty()
                    || partitions.is_empty()
                    || partitions.len() > MAX_PARTITIONS_PER_TOPIC
                {
                    return Err(Rejected::Invariant(format!(
                        "topic {name:?} with {} partitions",
                        partitions.len()
                    )));
                }
                let regs = self.new_partitions(partitions)?;
                for i in 0..regs.len() {
                    delta.partitions.push(ChangedPartition {
                        topic: *id,
                        partition: i as i32,
                        previous: None,
                    });
                }
                self.topics.insert(
                    *id,
                    TopicReg {
                        id: *id,
                        name: name.clone(),
                        partitions: regs,
                    },
                );
                self.topic_names.insert(name.clone(), *id);
                let resource = ConfigResource::Topic(name.clone());
                // A leftover config set of an earlier topic of that name is replaced.
                self.configs.remove(&resource);
                if !configs.is_empty() {
                    self.configs
                        .insert(resource.clone(), configs.iter().cloned().collect());
                    delta.configs.push(resource);
                }
                delta.topics_created.push(*id);
            }
            Record::DeleteTopic { id } => {
                let topic = self.topics.remove(id).ok_or(Rejected::UnknownTopic(*id))?;
                self.topic_names.remove(&topic.name);
                let resource = ConfigResource::Topic(topic.name.clone());
                if self.configs.remove(&resource).is_some() {
                    delta.configs.push(resource);
                }
                for (i, p) in topic.partitions.into_iter().enumerate() {
                    delta.partitions.push(ChangedPartition {
                        topic: *id,
                        partition: i as i32,
                        previous: Some(p),
                    });
                }
                delta.topics_deleted.push((*id, topic.name));
            }
            Record::CreatePartitions { id, partitions } => {
                let existing = self
                    .topics
                    .get(id)
                    .ok_or(Rejected::UnknownTopic(*id))?
                    .partitions
                    .len();
                if partitions.is_empty() || existing + partitions.len() > MAX_PARTITIONS_PER_TOPIC {
                    return Err(Rejected::Invariant(format!(
                        "{} new partitions",
                        partitions.len()
                    )));
                }
                let regs = self.new_partitions(partitions)?;
                let topic = self.topics.get_mut(id).ok_or(Rejected::UnknownTopic(*id))?;
                for (i, r) in regs.into_iter().enumerate() {
                    topic.partitions.push(r);
                    delta.partitions.push(ChangedPartition {
                        topic: *id,
                        partition: (existing + i) as i32,
                        previous: None,
                    });
                }
            }
            Record::PartitionChange(change) => {
                let (prev, next) = self.changed_partition(change)?;
                let slot = self
                    .topics
                    .get_mut(&change.topic)
                    .and_then(|t| t.partitions.get_mut(change.partition as usize))
                    .ok_or(Rejected::UnknownPartition(change.topic, change.partition))?;
                *slot = next;
                delta.partitions.push(ChangedPartition {
                    topic: change.topic,
                    partition: change.partition,
                    previous: Some(prev),
                });
            }
            Record::SetConfigs {
                resource,
                set,
                delete,
            } => {
                if let ConfigResource::Topic(name) = resource {
                    if !self.topic_names.contains_key(name) {
                        return Err(Rejected::Invariant(format!(
                            "config for unknown topic {name:?}"
                        )));
                    }
                }
                let entry = self.configs.entry(resource.clone()).or_default();
                for (k, v) in set {
                    entry.insert(k.clone(), v.clone());
                }
                for k in delete {
                    entry.remove(k);
                }
                if entry.is_empty() {
                    self.configs.remove(resource);
                }
                delta.configs.push(resource.clone());
            }
            Record::AllocateProducerIds {
                broker,
                broker_epoch,
                start,
                len,
            } => {
                self.broker_with_epoch(*broker, *broker_epoch)?;
                if *start != self.next_producer_id {
                    return Err(Rejected::ProducerIdMismatch {
                        got: *start,
                        next: self.next_producer_id,
                    });
                }
                if *len <= 0 {
                    return Err(Rejected::Invariant(format!("producer id block of {len}")));
                }
                self.next_producer_id = start
                    .checked_add(i64::from(*len))
                    .ok_or_else(|| Rejected::Invariant("producer ids exhausted".into()))?;
                delta.producer_ids = Some((*broker, *start, *len));
            }
            Record::UncleanElection {
                topic, partition, ..
            } => {
                if self.partition(*topic, *partition).is_none() {
                    return Err(Rejected::UnknownPartition(*topic, *partition));
                }
                delta.unclean_election = Some(record.clone());
            }
        }
        Ok(())
    }

    fn new_partitions(
        &self,
        partitions: &[PartitionAssignment],
    ) -> Result<Vec<PartitionReg>, Rejected> {
        let mut regs = Vec::with_capacity(partitions.len());
        for a in partitions {
            let reg = PartitionReg::from_assignment(a);
            reg.check_invariants().map_err(Rejected::Invariant)?;
            regs.push(reg);
        }
        Ok(regs)
    }

    /// The partition before and after `change`, validated.
    fn changed_partition(
        &self,
        change: &PartitionChange,
    ) -> Result<(PartitionReg, PartitionReg), Rejected> {
        if !self.topics.contains_key(&change.topic) {
            return Err(Rejected::UnknownTopic(change.topic));
        }
        let prev = self
            .partition(change.topic, change.partition)
            .ok_or(Rejected::UnknownPartition(change.topic, change.partition))?
            .clone();
        if prev.partition_epoch != change.expect_partition_epoch {
            return Err(Rejected::StalePartitionEpoch {
                expected: change.expect_partition_epoch,
                current: prev.partition_epoch,
            });
        }
        if change.is_noop() {
            return Err(Rejected::Invariant("empty partition change".into()));
        }
        let next = prev.merge(change)?;
        Ok((prev, next))
    }

    /// Checks every invariant of the whole image (tests and debug builds call it).
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.topics.len() != self.topic_names.len() {
            return Err("name index size differs from topics".into());
        }
        for (name, id) in &self.topic_names {
            match self.topics.get(id) {
                Some(t) if &t.name == name => {}
                _ => return Err(format!("name index entry {name:?} is wrong")),
            }
        }
        for (tid, p, reg) in self.partitions() {
            reg.check_invariants()
                .map_err(|e| format!("{tid:?}-{p}: {e}"))?;
        }
        Ok(())
    }

    /// `u16` big-endian snapshot version + serde_json of the whole image.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let snap = SnapshotV1 {
            cluster_id: self.cluster_id.clone(),
            metadata_version: self.metadata_version,
            last_applied: self.last_applied,
            brokers: self.brokers.values().cloned().collect(),
            topics: self.topics.values().cloned().collect(),
            configs: self
                .configs
                .iter()
                .map(|(r, c)| {
                    (
                        r.clone(),
                        c.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                })
                .collect(),
            next_producer_id: self.next_producer_id,
        };
        let mut out = SNAPSHOT_FORMAT_VERSION.to_be_bytes().to_vec();
        match serde_json::to_writer(&mut out, &snap) {
            Ok(()) => out,
            Err(e) => unreachable!("snapshot serialization failed: {e}"),
        }
    }

    /// The inverse of [`MetadataImage::encode_snapshot`]; validates the invariants of the
    /// decoded image; never panics.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<MetadataImage, SnapshotError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::TooLarge(bytes.len()));
        }
        let (version, body) = match bytes {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
            _ => return Err(SnapshotError::TooShort),
        };
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let snap: SnapshotV1 =
            serde_json::from_slice(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        let mut image = MetadataImage {
            cluster_id: snap.cluster_id,
            metadata_version: snap.metadata_version,
            last_applied: snap.last_applied,
            next_producer_id: snap.next_producer_id,
            ..MetadataImage::default()
        };
        for b in snap.brokers {
            if image.brokers.insert(b.id, b).is_some() {
                return Err(SnapshotError::Malformed("duplicate broker".into()));
            }
        }
        for t in snap.topics {
            if image.topic_names.insert(t.name.clone(), t.id).is_some() {
                return Err(SnapshotError::Malformed(format!(
                    "duplicate topic name {:?}",
                    t.name
                )));
            }
            if image.topics.insert(t.id, t).is_some() {
                return Err(SnapshotError::Malformed("duplicate topic id".into()));
            }
        }
        for (r, c) in snap.configs {
            image.configs.insert(r, c.into_iter().collect());
        }
        image.check_invariants().map_err(SnapshotError::Malformed)?;
        Ok(image)
    }
}
