//! The controller's decisions, pure: requests + the current image + `now_ms` → records to
//! propose + the response to send once they commit.
//!
//! Ports of Kafka's rules (files under `metadata/src/main/java/org/apache/kafka/controller/`):
//! [`PartitionChangeBuilder`] (`PartitionChangeBuilder.java`), AlterPartition validation
//! (`ReplicationControlManager.validateAlterPartitionData`), fencing, unfencing and
//! controlled shutdown (`ReplicationControlManager.handleBroker*`,
//! `generateLeaderAndIsrUpdates`), heartbeats (`BrokerHeartbeatManager.java`).
//!
//! The image passed in must already contain every record this controller returned before
//! (the driver applies proposed records to its working copy at once, as Kafka's controller
//! does with its timeline data structures, and reloads the committed image when it loses
//! leadership). Records that raced anyway are caught by `MetadataImage::apply`, which
//! rejects a stale `PartitionChange` (`expect_partition_epoch`) or a duplicate topic.

use std::collections::{BTreeMap, BTreeSet};

use crate::image::{MetadataImage, PartitionReg, NO_LEADER};
use crate::placement::{place, PlacementBroker, PlacementError};
use crate::records::{
    ConfigResource, ElectionKind, Endpoint, LeaderRecovery, PartitionAssignment, PartitionChange,
    Record, TopicId,
};

/// Kafka error codes used here (`clients/.../common/protocol/Errors.java`).
pub mod codes {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const STALE_BROKER_EPOCH: i16 = 77;
    pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
    pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
    pub const ELECTION_NOT_NEEDED: i16 = 84;
    pub const INVALID_UPDATE_VERSION: i16 = 95;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const DUPLICATE_BROKER_REGISTRATION: i16 = 101;
    pub const BROKER_ID_NOT_REGISTERED: i16 = 102;
    pub const INELIGIBLE_REPLICA: i16 = 107;
    pub const NEW_LEADER_ELECTED: i16 = 108;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
}

/// Kafka's config names read by the controller.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// Controller settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: a broker without heartbeat for this long is fenced.
    pub session_timeout_ms: i64,
    /// `default.replication.factor`; `None`: min(3, registered brokers).
    pub default_replication_factor: Option<i16>,
    /// `num.partitions`: partitions of a topic created with -1.
    pub default_num_partitions: i32,
    /// Upper bound of partitions per topic.
    pub max_partitions_per_topic: i32,
    /// Upper bound of partitions in the cluster.
    pub max_partitions_total: usize,
    /// Upper bound of registered brokers.
    pub max_brokers: usize,
    /// Upper bound of topics (or partitions for ElectLeaders) in one request.
    pub max_items_per_request: usize,
    /// Upper bound of config entries set on one resource in one request.
    pub max_configs_per_request: usize,
    /// Producer ids handed out per AllocateProducerIds (Kafka: 1000).
    pub producer_id_block_size: i32,
    /// Leaderless partitions tried per tick for opted-in unclean elections.
    pub max_unclean_elections_per_tick: usize,
    /// `auto.leader.rebalance.enable`: periodically move leadership back to preferred
    /// replicas that are in the ISR.
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, in milliseconds.
    pub leader_imbalance_check_interval_ms: i64,
    /// `leader.imbalance.per.broker.percentage`: a broker's partitions are rebalanced when
    /// more than this share of those it is preferred for are led by another replica.
    pub leader_imbalance_per_broker_percentage: u32,
    /// Preferred elections per rebalance pass (Kafka's `maxElectionsPerImbalance`, 1000).
    pub max_elections_per_imbalance: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            session_timeout_ms: 9_000,
            default_replication_factor: None,
            default_num_partitions: 1,
            max_partitions_per_topic: 10_000,
            max_partitions_total: 200_000,
            max_brokers: 10_000,
            max_items_per_request: 10_000,
            max_configs_per_request: 1_000,
            producer_id_block_size: 1_000,
            max_unclean_elections_per_tick: 1_000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            max_elections_per_imbalance: 1_000,
        }
    }
}

/// One ISR member in an AlterPartition request (Kafka's `BrokerState`); `broker_epoch` -1
/// skips the epoch check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsrMember {
    pub id: i32,
    pub broker_epoch: i64,
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub partitions: i32,
    /// -1: the default replication factor.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
    /// A manual replica assignment (partition `i` gets `assignments[i]`); then `partitions`
    /// and `replication_factor` must be -1 (Kafka's CreateTopics rule).
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// ElectLeaders' election type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionType {
    Preferred,
    Unclean,
}

/// A request to the active controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerRequest {
    /// BrokerRegistration. `previous_broker_epoch` is the epoch the broker had when it last
    /// shut down cleanly, -1 otherwise (KIP-966: an unclean shutdown leaves ISR and ELR).
    RegisterBroker {
        id: i32,
        incarnation: u128,
        listeners: Vec<Endpoint>,
        rack: Option<String>,
        previous_broker_epoch: i64,
    },
    /// BrokerHeartbeat. `metadata_offset`: the last metadata log index the broker applied.
    Heartbeat {
        id: i32,
        broker_epoch: i64,
        metadata_offset: i64,
        want_fence: bool,
        want_shutdown: bool,
    },
    /// AlterPartition, one partition.
    AlterPartition {
        broker_id: i32,
        broker_epoch: i64,
        topic: TopicId,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<IsrMember>,
        leader_recovery: LeaderRecovery,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    /// CreatePartitions: (topic, new total count).
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    /// (Incremental)AlterConfigs on one resource.
    SetConfigs {
        resource: ConfigResource,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        validate_only: bool,
    },
    AllocateProducerIds {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// `partitions` None: every partition.
    ElectLeaders {
        election: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Decommission a fenced broker (UnregisterBroker API).
    UnregisterBroker {
        id: i32,
    },
    /// AlterPartitionReassignments: per partition, the target replicas (`None`: cancel).
    AlterPartitionReassignments {
        partitions: Vec<(String, i32, Option<Vec<i32>>)>,
        /// KIP-860: false refuses a target whose replica count differs from the current
        /// (original) replica count with INVALID_REPLICATION_FACTOR.
        allow_replication_factor_change: bool,
    },
}

/// BrokerHeartbeat's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub in_controlled_shutdown: bool,
    pub should_shut_down: bool,
}

/// AlterPartition's answer (the partition as it will be once the records commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartitionReply {
    pub error: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
    pub leader_recovery: LeaderRecovery,
}

/// A per-item outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub name: String,
    pub error: i16,
    pub message: Option<String>,
}

/// CreateTopics' per-topic answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicResult {
    pub name: String,
    pub error: i16,
    pub message: Option<String>,
    pub id: TopicId,
    pub partitions: i32,
    pub replication_factor: i16,
    /// The explicit configs stored with the topic (including defaults the controller chose).
    pub configs: Vec<(String, String)>,
}

/// ElectLeaders' per-partition answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectResult {
    pub topic: String,
    pub partition: i32,
    pub error: i16,
}

/// AlterPartitionReassignments' per-partition answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassignResult {
    pub topic: String,
    pub partition: i32,
    pub error: i16,
    pub message: Option<String>,
}

/// The answer to send once the returned records are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerResponse {
    /// The broker epoch is the index at which the `RegisterBroker` record commits.
    RegisterBroker {
        id: i32,
    },
    Heartbeat(HeartbeatReply),
    AlterPartition(AlterPartitionReply),
    CreateTopics(Vec<CreateTopicResult>),
    /// Per name: error and the id of the deleted topic.
    DeleteTopics(Vec<(ItemResult, TopicId)>),
    CreatePartitions(Vec<ItemResult>),
    SetConfigs(ItemResult),
    ProducerIds {
        start: i64,
        len: i32,
    },
    ElectLeaders(Vec<ElectResult>),
    UnregisterBroker,
    /// AlterPartitionReassignments: per partition, in request order.
    Reassignments(Vec<ReassignResult>),
}

/// A request refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error("the metadata log is not bootstrapped")]
    NotBootstrapped,
    #[error("broker {0} is not registered")]
    BrokerNotRegistered(i32),
    #[error("broker {id}: epoch {got} is not the registered {current}")]
    StaleBrokerEpoch { id: i32, got: i64, current: i64 },
    #[error("broker {0} is registered by another live process")]
    DuplicateBrokerRegistration(i32),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("producer ids exhausted")]
    ProducerIdsExhausted,
}

impl ControllerError {
    /// The Kafka error code to answer with.
    pub fn code(&self) -> i16 {
        match self {
            ControllerError::NotBootstrapped => codes::NOT_CONTROLLER,
            ControllerError::BrokerNotRegistered(_) => codes::BROKER_ID_NOT_REGISTERED,
            ControllerError::StaleBrokerEpoch { .. } => codes::STALE_BROKER_EPOCH,
            ControllerError::DuplicateBrokerRegistration(_) => codes::DUPLICATE_BROKER_REGISTRATION,
            ControllerError::InvalidRequest(_) => codes::INVALID_REQUEST,
            ControllerError::ProducerIdsExhausted => codes::UNKNOWN_SERVER_ERROR,
        }
    }
}

// ---------------------------------------------------------------------------------------
// PartitionChangeBuilder
// ---------------------------------------------------------------------------------------

/// Kafka's `PartitionChangeBuilder.Election`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// Elect the preferred (first) replica if it is valid.
    Preferred,
    /// Keep the partition online from the ISR (or the ELR when the ISR is empty).
    Online,
    /// As `Online`, then any acceptable replica: may lose data.
    Unclean,
}

/// The outcome of a leader election: the node (-1 none) and whether it was unclean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionResult {
    pub node: i32,
    pub unclean: bool,
}

/// A built change and the records it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltChange {
    pub change: PartitionChange,
    /// Set when the election was unclean: the `UncleanElection` record to write after it.
    pub unclean_election: Option<Record>,
}

impl BuiltChange {
    fn push_into(self, records: &mut Vec<Record>) {
        records.push(Record::PartitionChange(self.change));
        if let Some(r) = self.unclean_election {
            records.push(r);
        }
    }
}

/// Computes one `PartitionChange` from a partition and targets, as Kafka's
/// `PartitionChangeBuilder` with ELR enabled and "balanced recovery" (electing the last
/// known leader) disabled. An ongoing reassignment (non-empty `adding` / `removing`)
/// completes in [`PartitionChangeBuilder::build`] once the target ISR holds every target
/// replica (Kafka's `completeReassignmentIfNeeded`).
pub struct PartitionChangeBuilder<'a> {
    partition: &'a PartitionReg,
    topic: TopicId,
    partition_id: i32,
    is_acceptable_leader: &'a dyn Fn(i32) -> bool,
    min_isr: usize,
    election: Election,
    target_isr: Vec<i32>,
    target_elr: Vec<i32>,
    target_last_known_elr: Vec<i32>,
    unclean_shutdown_replicas: Vec<i32>,
    target_leader_recovery: LeaderRecovery,
    target_replicas: Vec<i32>,
    target_adding: Vec<i32>,
    target_removing: Vec<i32>,
}

impl<'a> PartitionChangeBuilder<'a> {
    /// `min_isr` is the topic's effective min ISR (min(min.insync.replicas, replicas)).
    pub fn new(
        partition: &'a PartitionReg,
        topic: TopicId,
        partition_id: i32,
        is_acceptable_leader: &'a dyn Fn(i32) -> bool,
        min_isr: usize,
    ) -> Self {
        PartitionChangeBuilder {
            partition,
            topic,
            partition_id,
            is_acceptable_leader,
            min_isr,
            election: Election::Online,
            target_isr: partition.isr.clone(),
            target_elr: partition.elr.clone(),
            target_last_known_elr: partition.last_known_elr.clone(),
            unclean_shutdown_replicas: Vec::new(),
            target_leader_recovery: partition.leader_recovery,
            target_replicas: partition.replicas.clone(),
            target_adding: partition.adding.clone(),
            target_removing: partition.removing.clone(),
        }
    }

    /// The replica list to set, with the replicas being added and removed (a reassignment:
    /// `replicas` is the target followed by the replicas being removed).
    pub fn target_assignment(
        mut self,
        replicas: Vec<i32>,
        adding: Vec<i32>,
        removing: Vec<i32>,
    ) -> Self {
        self.target_replicas = replicas;
        self.target_adding = adding;
        self.target_removing = removing;
        self
    }

    pub fn election(mut self, election: Election) -> Self {
        self.election = election;
        self
    }

    pub fn target_isr(mut self, isr: Vec<i32>) -> Self {
        self.target_isr = isr;
        self
    }

    pub fn unclean_shutdown_replicas(mut self, replicas: Vec<i32>) -> Self {
        self.unclean_shutdown_replicas = replicas;
        self
    }

    pub fn target_leader_recovery(mut self, r: LeaderRecovery) -> Self {
        self.target_leader_recovery = r;
        self
    }

    fn acceptable(&self, r: i32) -> bool {
        (self.is_acceptable_leader)(r)
    }

    /// In the target ISR, or in the ELR when the target ISR is empty, and acceptable.
    fn is_valid_new_leader(&self, r: i32) -> bool {
        (self.target_isr.contains(&r)
            || (self.target_isr.is_empty() && self.target_elr.contains(&r)))
            && self.acceptable(r)
    }

    /// Kafka's `electLeader` (call after the ELR targets are computed, as `build` does).
    pub fn elect_leader(&self) -> ElectionResult {
        let replicas = &self.target_replicas;
        if self.election == Election::Preferred {
            if let Some(&first) = replicas.first() {
                if self.is_valid_new_leader(first) {
                    return ElectionResult {
                        node: first,
                        unclean: false,
                    };
                }
            }
            if self.is_valid_new_leader(self.partition.leader) {
                return ElectionResult {
                    node: self.partition.leader,
                    unclean: false,
                };
            }
            if let Some(&r) = replicas
                .iter()
                .skip(1)
                .find(|r| self.is_valid_new_leader(**r))
            {
                return ElectionResult {
                    node: r,
                    unclean: false,
                };
            }
            return ElectionResult {
                node: NO_LEADER,
                unclean: false,
            };
        }
        if self.is_valid_new_leader(self.partition.leader) {
            return ElectionResult {
                node: self.partition.leader,
                unclean: false,
            };
        }
        if let Some(&r) = replicas.iter().find(|r| self.is_valid_new_leader(**r)) {
            return ElectionResult {
                node: r,
                unclean: false,
            };
        }
        if self.election == Election::Unclean {
            if let Some(&r) = replicas.iter().find(|r| self.acceptable(**r)) {
                return ElectionResult {
                    node: r,
                    unclean: true,
                };
            }
        }
        ElectionResult {
            node: NO_LEADER,
            unclean: false,
        }
    }

    /// Kafka's `maybePopulateTargetElr`: below min ISR, the replicas leaving the ISR (and
    /// the ELR so far) are eligible, minus unclean-shutdown replicas; at or above min ISR,
    /// no ELR. Lists are kept in replica order.
    fn populate_target_elr(&mut self) {
        if self.target_isr.len() >= self.min_isr {
            self.target_elr.clear();
            self.target_last_known_elr.clear();
            return;
        }
        let candidates: BTreeSet<i32> = self
            .target_elr
            .iter()
            .chain(self.partition.isr.iter())
            .copied()
            .collect();
        // Kept in target replica order; a replica leaving the assignment is never eligible.
        let in_order = |set: &dyn Fn(i32) -> bool| -> Vec<i32> {
            self.target_replicas
                .iter()
                .copied()
                .filter(|r| set(*r))
                .collect()
        };
        let new_elr = in_order(&|r| {
            candidates.contains(&r)
                && !self.target_isr.contains(&r)
                && !self.unclean_shutdown_replicas.contains(&r)
        });
        let lk_candidates: BTreeSet<i32> = candidates
            .iter()
            .chain(self.target_last_known_elr.iter())
            .copied()
            .collect();
        let new_lk = in_order(&|r| {
            lk_candidates.contains(&r) && !self.target_isr.contains(&r) && !new_elr.contains(&r)
        });
        self.target_elr = new_elr;
        self.target_last_known_elr = new_lk;
    }

    /// Kafka's `PartitionReassignmentReplicas.maybeCompleteReassignment`: when a
    /// reassignment is in progress and the target ISR, without the replicas being removed,
    /// is non-empty and holds every remaining replica, the replicas become the target and
    /// the adding / removing lists are cleared.
    fn complete_reassignment_if_needed(&mut self) {
        if self.target_adding.is_empty() && self.target_removing.is_empty() {
            return;
        }
        let removing = &self.target_removing;
        let isr: Vec<i32> = self
            .target_isr
            .iter()
            .copied()
            .filter(|r| !removing.contains(r))
            .collect();
        let replicas: Vec<i32> = self
            .target_replicas
            .iter()
            .copied()
            .filter(|r| !removing.contains(r))
            .collect();
        if isr.is_empty() || replicas.is_empty() || !replicas.iter().all(|r| isr.contains(r)) {
            return;
        }
        self.target_isr = isr;
        self.target_replicas = replicas;
        self.target_adding.clear();
        self.target_removing.clear();
    }

    /// The change, or `None` when nothing would change (Kafka's `build`).
    pub fn build(mut self) -> Option<BuiltChange> {
        let p = self.partition;
        let mut change = PartitionChange::new(self.topic, self.partition_id, p.partition_epoch);
        self.complete_reassignment_if_needed();
        self.populate_target_elr();

        // tryElection
        let result = self.elect_leader();
        let mut unclean_record = None;
        if result.node != p.leader {
            if self.target_elr.contains(&result.node) {
                self.target_isr = vec![result.node];
                self.target_elr.retain(|r| *r != result.node);
                change.election = ElectionKind::Elr;
            }
            change.leader = Some(result.node);
            if result.unclean {
                change.isr = Some(vec![result.node]);
                change.election = ElectionKind::Unclean;
                if p.leader_recovery != LeaderRecovery::Recovering {
                    change.leader_recovery = Some(LeaderRecovery::Recovering);
                }
                unclean_record = Some(Record::UncleanElection {
                    topic: self.topic,
                    partition: self.partition_id,
                    new_leader: result.node,
                    old_leader_epoch: p.leader_epoch,
                    isr_before: p.isr.clone(),
                    elr_before: p.elr.clone(),
                });
            }
        }

        // A replica leaving the assignment is fenced by a leader epoch bump (Kafka's
        // triggerLeaderEpochBumpForReplicaReassignmentIfNeeded).
        if change.leader.is_none() && !p.replicas.iter().all(|r| self.target_replicas.contains(r)) {
            change.leader = Some(p.leader);
        }

        // maybeUpdateRecordElr (without the "last known leader" mode)
        if change.isr.is_some() {
            self.target_elr.clear();
            self.target_last_known_elr.clear();
        }
        if self.target_elr != p.elr {
            change.elr = Some(self.target_elr.clone());
        }
        if self.target_last_known_elr != p.last_known_elr {
            change.last_known_elr = Some(self.target_last_known_elr.clone());
        }

        // With ELR the ISR may become empty.
        if change.isr.is_none() && self.target_isr != p.isr {
            change.isr = Some(self.target_isr.clone());
        }
        if self.target_leader_recovery != p.leader_recovery && change.leader_recovery.is_none() {
            change.leader_recovery = Some(self.target_leader_recovery);
        }
        if self.target_replicas != p.replicas {
            change.replicas = Some(self.target_replicas.clone());
        }
        if self.target_adding != p.adding {
            change.adding = Some(self.target_adding.clone());
        }
        if self.target_removing != p.removing {
            change.removing = Some(self.target_removing.clone());
        }
        if change.is_noop() {
            None
        } else {
            Some(BuiltChange {
                change,
                unclean_election: unclean_record,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Controller
// ---------------------------------------------------------------------------------------

/// In-memory heartbeat state of one broker (Kafka's `BrokerHeartbeatState`); never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeartbeatState {
    last_heartbeat_ms: i64,
    metadata_offset: i64,
    /// Set when the broker entered controlled shutdown: the index its shutdown records
    /// end at; it may stop once every active broker has applied that far.
    controlled_shutdown_offset: Option<i64>,
}

/// Kafka's `BrokerControlState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerState {
    Fenced,
    Unfenced,
    ControlledShutdown,
    ShutdownNow,
}

/// The active controller's logic. Holds only what is not in the image: heartbeat times
/// and a seeded random generator (topic ids, placement start).
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    heartbeats: BTreeMap<i32, HeartbeatState>,
    rng: fastrand::Rng,
    /// When the last leader-imbalance check ran (`None`: not yet in this term).
    last_imbalance_check_ms: Option<i64>,
}

/// `r` is an acceptable leader / ISR member: registered, unfenced, not shutting down.
fn is_active(image: &MetadataImage, r: i32) -> bool {
    image.brokers.get(&r).is_some_and(|b| b.is_active())
}

/// The topic's effective min ISR: min(`min.insync.replicas` (topic, else cluster, else
/// 1), replication factor) (Kafka's `getTopicEffectiveMinIsr`).
pub fn effective_min_isr(image: &MetadataImage, topic_name: &str, replicas: usize) -> usize {
    let configured = image
        .topic_config(topic_name, MIN_INSYNC_REPLICAS)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    configured.min(replicas.max(1))
}

fn unclean_enabled(image: &MetadataImage, topic_name: &str) -> bool {
    image.topic_config(topic_name, UNCLEAN_LEADER_ELECTION_ENABLE) == Some("true")
}

/// Kafka's topic name rule (`Topic.validate`).
fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("invalid topic name {name:?}"));
    }
    if name.len() > 249 {
        return Err("topic name longer than 249 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(format!(
            "topic name {name:?} has characters other than [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Checks the values of the configs the controller itself interprets; other names are
/// passed through (the broker validates them at its edge).
fn validate_configs(set: &[(String, String)], max: usize) -> Result<(), String> {
    if set.len() > max {
        return Err(format!("more than {max} configs"));
    }
    for (k, v) in set {
        if k.is_empty() || k.len() > 255 || v.len() > 32 * 1024 {
            return Err(format!("config {k:?} too long or empty"));
        }
        match k.as_str() {
            MIN_INSYNC_REPLICAS if v.parse::<i32>().map_or(true, |n| n < 1) => {
                return Err(format!(
                    "{MIN_INSYNC_REPLICAS} must be a positive integer, not {v:?}"
                ));
            }
            UNCLEAN_LEADER_ELECTION_ENABLE if v != "true" && v != "false" => {
                return Err(format!(
                    "{UNCLEAN_LEADER_ELECTION_ENABLE} must be true or false"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Controller {
    /// A controller; `seed` drives topic ids and placement starts (deterministic in tests).
    pub fn new(config: ControllerConfig, seed: u64) -> Controller {
        Controller {
            config,
            heartbeats: BTreeMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            last_imbalance_check_ms: None,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The records that start a new cluster.
    pub fn bootstrap_records(cluster_id: &str) -> Vec<Record> {
        vec![Record::Bootstrap {
            cluster_id: cluster_id.to_string(),
            metadata_version: 1,
        }]
    }

    /// This node just became the active controller: every registered broker counts as having
    /// heartbeated now, so a failover never fences healthy brokers.
    ///
    /// Except one: `local` is the node id and incarnation of the broker in this controller's
    /// own process (combined mode). A registration of that node by another incarnation
    /// belongs to an earlier process of this very node, dead for certain, so its session
    /// counts as expired: the next tick fences it (its partitions elect other leaders) and
    /// the new incarnation may register at once. Without this, a combined node that is
    /// restarted and wins the Raft election again gave its own dead incarnation a fresh
    /// session each time: its partitions stayed without a working leader for a whole
    /// session timeout after its last restart (8.5 s after four restarts in a chaos run).
    pub fn on_become_active(
        &mut self,
        image: &MetadataImage,
        now_ms: i64,
        local: Option<(i32, u128)>,
    ) {
        self.heartbeats.clear();
        for (id, reg) in &image.brokers {
            let dead = local.is_some_and(|(me, inc)| me == *id && reg.incarnation != inc);
            self.heartbeats.insert(
                *id,
                HeartbeatState {
                    last_heartbeat_ms: if dead {
                        now_ms.saturating_sub(self.config.session_timeout_ms + 1)
                    } else {
                        now_ms
                    },
                    metadata_offset: -1,
                    controlled_shutdown_offset: None,
                },
            );
        }
    }

    /// Handles one request. On `Ok`, propose the records (in order) and send the response
    /// once they are committed.
    pub fn handle(
        &mut self,
        image: &MetadataImage,
        request: ControllerRequest,
        now_ms: i64,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        if image.cluster_id.is_empty() {
            return Err(ControllerError::NotBootstrapped);
        }
        match request {
            ControllerRequest::RegisterBroker {
                id,
                incarnation,
                listeners,
                rack,
                previous_broker_epoch,
            } => self.register_broker(
                image,
                id,
                incarnation,
                listeners,
                rack,
                previous_broker_epoch,
                now_ms,
            ),
            ControllerRequest::Heartbeat {
                id,
                broker_epoch,
                metadata_offset,
                want_fence,
                want_shutdown,
            } => self.heartbeat(
                image,
                id,
                broker_epoch,
                metadata_offset,
                want_fence,
                want_shutdown,
                now_ms,
            ),
            ControllerRequest::AlterPartition {
                broker_id,
                broker_epoch,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                new_isr,
                leader_recovery,
            } => {
                check_broker_epoch(image, broker_id, broker_epoch)?;
                let (records, reply) = alter_partition(
                    image,
                    broker_id,
                    topic,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    &new_isr,
                    leader_recovery,
                );
                Ok((records, ControllerResponse::AlterPartition(reply)))
            }
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => self.create_topics(image, topics, validate_only),
            ControllerRequest::DeleteTopics { names } => self.delete_topics(image, names),
            ControllerRequest::CreatePartitions {
                topics,
                validate_only,
            } => self.create_partitions(image, topics, validate_only),
            ControllerRequest::SetConfigs {
                resource,
                set,
                delete,
                validate_only,
            } => set_configs(
                image,
                resource,
                set,
                delete,
                validate_only,
                self.config.max_configs_per_request,
            ),
            ControllerRequest::AllocateProducerIds {
                broker_id,
                broker_epoch,
            } => {
                check_broker_epoch(image, broker_id, broker_epoch)?;
                let start = image.next_producer_id;
                let len = self.config.producer_id_block_size.max(1);
                if start.checked_add(i64::from(len)).is_none() {
                    return Err(ControllerError::ProducerIdsExhausted);
                }
                Ok((
                    vec![Record::AllocateProducerIds {
                        broker: broker_id,
                        broker_epoch,
                        start,
                        len,
                    }],
                    ControllerResponse::ProducerIds { start, len },
                ))
            }
            ControllerRequest::ElectLeaders {
                election,
                partitions,
            } => self.elect_leaders(image, election, partitions),
            ControllerRequest::AlterPartitionReassignments {
                partitions,
                allow_replication_factor_change,
            } => {
                if partitions.len() > self.config.max_items_per_request {
                    return Err(ControllerError::InvalidRequest(format!(
                        "{} partitions in one request",
                        partitions.len()
                    )));
                }
                let mut records = Vec::new();
                let mut results = Vec::with_capacity(partitions.len());
                // A working image: a partition named twice sees the first change.
                let mut working = image.clone();
                for (topic, partition, target) in partitions {
                    let (error, message) = match alter_partition_reassignment(
                        &working,
                        &topic,
                        partition,
                        target,
                        allow_replication_factor_change,
                    ) {
                        Ok(built) => {
                            if let Some(built) = built {
                                let mut recs = Vec::new();
                                built.push_into(&mut recs);
                                for r in recs {
                                    let index = working.last_applied + 1;
                                    working.apply(index, &r).map_err(|e| {
                                        ControllerError::InvalidRequest(format!(
                                            "reassignment of {topic}-{partition}: {e}"
                                        ))
                                    })?;
                                    records.push(r);
                                }
                            }
                            (codes::NONE, None)
                        }
                        Err((code, message)) => (code, Some(message)),
                    };
                    results.push(ReassignResult {
                        topic,
                        partition,
                        error,
                        message,
                    });
                }
                Ok((records, ControllerResponse::Reassignments(results)))
            }
            ControllerRequest::UnregisterBroker { id } => {
                let b = image
                    .brokers
                    .get(&id)
                    .ok_or(ControllerError::BrokerNotRegistered(id))?;
                if !b.fenced {
                    return Err(ControllerError::InvalidRequest(format!(
                        "broker {id} is unfenced; shut it down before unregistering it"
                    )));
                }
                let mut records = Vec::new();
                let affected: Vec<(TopicId, i32)> = image
                    .partitions()
                    .filter(|(_, _, p)| {
                        p.isr.contains(&id) || p.elr.contains(&id) || p.last_known_elr.contains(&id)
                    })
                    .map(|(t, i, _)| (t, i))
                    .collect();
                generate_leader_and_isr_updates(
                    image,
                    id,
                    NO_LEADER,
                    Some(id),
                    &affected,
                    &mut records,
                );
                records.push(Record::UnregisterBroker { id, epoch: b.epoch });
                self.heartbeats.remove(&id);
                Ok((records, ControllerResponse::UnregisterBroker))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register_broker(
        &mut self,
        image: &MetadataImage,
        id: i32,
        incarnation: u128,
        listeners: Vec<Endpoint>,
        rack: Option<String>,
        previous_broker_epoch: i64,
        now_ms: i64,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        if id < 0 {
            return Err(ControllerError::InvalidRequest(format!("broker id {id}")));
        }
        if listeners.len() > 64 || rack.as_ref().is_some_and(|r| r.len() > 255) {
            return Err(ControllerError::InvalidRequest(
                "too many listeners or rack too long".into(),
            ));
        }
        let mut records = Vec::new();
        match image.brokers.get(&id) {
            None if image.brokers.len() >= self.config.max_brokers => {
                return Err(ControllerError::InvalidRequest(format!(
                    "already {} brokers registered",
                    image.brokers.len()
                )));
            }
            None => {}
            Some(existing) => {
                let alive = self.heartbeats.get(&id).is_some_and(|h| {
                    now_ms.saturating_sub(h.last_heartbeat_ms) < self.config.session_timeout_ms
                });
                if existing.incarnation != incarnation && !existing.fenced && alive {
                    return Err(ControllerError::DuplicateBrokerRegistration(id));
                }
                // The old incarnation no longer leads nor sits in an ISR; after an unclean
                // shutdown it also leaves the ELR (ReplicationControlManager
                // .handleBrokerUncleanShutdown).
                let unclean = previous_broker_epoch != existing.epoch;
                let affected: Vec<(TopicId, i32)> = image
                    .partitions()
                    .filter(|(_, _, p)| p.isr.contains(&id) || (unclean && p.elr.contains(&id)))
                    .map(|(t, i, _)| (t, i))
                    .collect();
                generate_leader_and_isr_updates(
                    image,
                    id,
                    NO_LEADER,
                    if unclean { Some(id) } else { None },
                    &affected,
                    &mut records,
                );
            }
        }
        records.push(Record::RegisterBroker {
            id,
            incarnation,
            listeners,
            rack,
        });
        self.heartbeats.insert(
            id,
            HeartbeatState {
                last_heartbeat_ms: now_ms,
                metadata_offset: -1,
                controlled_shutdown_offset: None,
            },
        );
        Ok((records, ControllerResponse::RegisterBroker { id }))
    }

    #[allow(clippy::too_many_arguments)]
    fn heartbeat(
        &mut self,
        image: &MetadataImage,
        id: i32,
        broker_epoch: i64,
        metadata_offset: i64,
        want_fence: bool,
        want_shutdown: bool,
        now_ms: i64,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        let reg = check_broker_epoch(image, id, broker_epoch)?;
        let is_caught_up = metadata_offset >= reg.epoch;
        let has_leaderships = image.partitions().any(|(_, _, p)| p.leader == id);
        let current = if reg.fenced && reg.in_controlled_shutdown {
            // It was told to shut down: only a new registration brings it back.
            BrokerState::ShutdownNow
        } else if reg.fenced {
            BrokerState::Fenced
        } else if reg.in_controlled_shutdown {
            BrokerState::ControlledShutdown
        } else {
            BrokerState::Unfenced
        };
        let prev_shutdown_offset = self
            .heartbeats
            .get(&id)
            .and_then(|h| h.controlled_shutdown_offset);
        // Kafka's lowestActiveOffset: the least metadata offset of the active brokers.
        let lowest_active_offset = image
            .brokers
            .values()
            .filter(|b| b.is_active() && b.id != id)
            .map(|b| self.heartbeats.get(&b.id).map_or(-1, |h| h.metadata_offset))
            .min()
            .unwrap_or(i64::MAX);
        let next = match current {
            BrokerState::Fenced if want_shutdown => BrokerState::ShutdownNow,
            BrokerState::Fenced if !want_fence && is_caught_up => BrokerState::Unfenced,
            BrokerState::Fenced => BrokerState::Fenced,
            BrokerState::Unfenced if want_fence => BrokerState::Fenced,
            BrokerState::Unfenced if want_shutdown && has_leaderships => {
                BrokerState::ControlledShutdown
            }
            BrokerState::Unfenced if want_shutdown => BrokerState::ShutdownNow,
            BrokerState::Unfenced => BrokerState::Unfenced,
            BrokerState::ControlledShutdown if has_leaderships => BrokerState::ControlledShutdown,
            BrokerState::ControlledShutdown => match prev_shutdown_offset {
                Some(off) if off > lowest_active_offset => BrokerState::ControlledShutdown,
                _ => BrokerState::ShutdownNow,
            },
            BrokerState::ShutdownNow => BrokerState::ShutdownNow,
        };
        let mut records = Vec::new();
        let in_isr: Vec<(TopicId, i32)> = image
            .partitions()
            .filter(|(_, _, p)| p.isr.contains(&id))
            .map(|(t, i, _)| (t, i))
            .collect();
        if current != next || next == BrokerState::ControlledShutdown {
            match next {
                BrokerState::Fenced | BrokerState::ShutdownNow => {
                    if !reg.fenced {
                        generate_leader_and_isr_updates(
                            image,
                            id,
                            NO_LEADER,
                            None,
                            &in_isr,
                            &mut records,
                        );
                        records.push(Record::FenceBroker {
                            id,
                            epoch: reg.epoch,
                        });
                    }
                }
                BrokerState::Unfenced => {
                    records.push(Record::UnfenceBroker {
                        id,
                        epoch: reg.epoch,
                    });
                    let leaderless: Vec<(TopicId, i32)> = image
                        .partitions()
                        .filter(|(_, _, p)| p.leader == NO_LEADER && p.replicas.contains(&id))
                        .map(|(t, i, _)| (t, i))
                        .collect();
                    generate_leader_and_isr_updates(
                        image,
                        NO_LEADER,
                        id,
                        None,
                        &leaderless,
                        &mut records,
                    );
                }
                BrokerState::ControlledShutdown => {
                    if current != BrokerState::ControlledShutdown {
                        records.push(Record::BeginControlledShutdown {
                            id,
                            epoch: reg.epoch,
                        });
                    }
                    generate_leader_and_isr_updates(
                        image,
                        id,
                        NO_LEADER,
                        None,
                        &in_isr,
                        &mut records,
                    );
                }
            }
        }
        let shutdown_offset = match next {
            BrokerState::ControlledShutdown if current != BrokerState::ControlledShutdown => {
                Some(image.last_applied as i64 + records.len() as i64)
            }
            BrokerState::ControlledShutdown => prev_shutdown_offset,
            _ => None,
        };
        self.heartbeats.insert(
            id,
            HeartbeatState {
                last_heartbeat_ms: now_ms,
                metadata_offset,
                controlled_shutdown_offset: shutdown_offset,
            },
        );
        let reply = HeartbeatReply {
            is_caught_up,
            is_fenced: matches!(next, BrokerState::Fenced | BrokerState::ShutdownNow),
            in_controlled_shutdown: next == BrokerState::ControlledShutdown,
            should_shut_down: next == BrokerState::ShutdownNow,
        };
        Ok((records, ControllerResponse::Heartbeat(reply)))
    }

    /// Periodic work: fences at most one broker whose session expired (Kafka's
    /// `maybeFenceOneStaleBroker`) and retries unclean elections of leaderless partitions of
    /// topics that opted in (`unclean.leader.election.enable=true`).
    pub fn tick(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        self.heartbeats
            .retain(|id, _| image.brokers.contains_key(id));
        for id in image.brokers.keys() {
            // A broker registered through another controller's term: counts from now.
            self.heartbeats.entry(*id).or_insert(HeartbeatState {
                last_heartbeat_ms: now_ms,
                metadata_offset: -1,
                controlled_shutdown_offset: None,
            });
        }
        let mut records = Vec::new();
        let stale = image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter_map(|b| self.heartbeats.get(&b.id).map(|h| (h.last_heartbeat_ms, b)))
            .filter(|(last, _)| now_ms.saturating_sub(*last) > self.config.session_timeout_ms)
            .min_by_key(|(last, b)| (*last, b.id));
        if let Some((_, b)) = stale {
            let in_isr: Vec<(TopicId, i32)> = image
                .partitions()
                .filter(|(_, _, p)| p.isr.contains(&b.id))
                .map(|(t, i, _)| (t, i))
                .collect();
            generate_leader_and_isr_updates(image, b.id, NO_LEADER, None, &in_isr, &mut records);
            records.push(Record::FenceBroker {
                id: b.id,
                epoch: b.epoch,
            });
            return records;
        }
        let leaderless: Vec<(TopicId, i32)> = image
            .topics
            .values()
            .filter(|t| unclean_enabled(image, &t.name))
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leader == NO_LEADER)
                    .map(|(i, _)| (t.id, i as i32))
            })
            .take(self.config.max_unclean_elections_per_tick)
            .collect();
        generate_leader_and_isr_updates(
            image,
            NO_LEADER,
            NO_LEADER,
            None,
            &leaderless,
            &mut records,
        );
        if records.is_empty() && self.config.auto_leader_rebalance_enable {
            let last = *self.last_imbalance_check_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(last) >= self.config.leader_imbalance_check_interval_ms {
                self.last_imbalance_check_ms = Some(now_ms);
                self.balance_partition_leaders(image, &mut records);
            }
        }
        records
    }

    /// One auto-rebalance pass (`auto.leader.rebalance.enable`): for every broker whose
    /// imbalance ratio (partitions it is the preferred replica of but does not lead, over
    /// the partitions it is the preferred replica of) exceeds
    /// `leader.imbalance.per.broker.percentage`, a preferred election for each of those
    /// partitions that has a leader and the (active) preferred replica in its ISR (Kafka's
    /// `maybeBalancePartitionLeaders`, with the ZooKeeper controller's per-broker threshold).
    /// At most `max_elections_per_imbalance` partitions per pass.
    pub fn balance_partition_leaders(&self, image: &MetadataImage, records: &mut Vec<Record>) {
        // preferred broker -> (partitions it is preferred for, those led elsewhere)
        let mut per_broker: BTreeMap<i32, (usize, Vec<(TopicId, i32)>)> = BTreeMap::new();
        for (tid, pid, p) in image.partitions() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let e = per_broker.entry(preferred).or_default();
            e.0 += 1;
            if p.leader != preferred {
                e.1.push((tid, pid));
            }
        }
        let threshold = u64::from(self.config.leader_imbalance_per_broker_percentage);
        let mut elections = 0;
        for (&preferred, (total, imbalanced)) in &per_broker {
            assert!(imbalanced.len() <= *total);
            // ratio > percentage / 100, in integers
            if imbalanced.is_empty() || (imbalanced.len() as u64) * 100 <= threshold * *total as u64
            {
                continue;
            }
            if !is_active(image, preferred) {
                continue;
            }
            for &(tid, pid) in imbalanced {
                if elections >= self.config.max_elections_per_imbalance {
                    return;
                }
                let (Some(t), Some(p)) = (image.topics.get(&tid), image.partition(tid, pid)) else {
                    continue;
                };
                // Only a partition with a leader whose preferred replica is in its ISR.
                if p.leader == NO_LEADER || !p.isr.contains(&preferred) {
                    continue;
                }
                let acceptable = |r: i32| is_active(image, r);
                let min_isr = effective_min_isr(image, &t.name, p.replicas.len());
                if let Some(built) = PartitionChangeBuilder::new(p, tid, pid, &acceptable, min_isr)
                    .election(Election::Preferred)
                    .build()
                {
                    debug_assert_eq!(built.change.leader, p.replicas.first().copied());
                    built.push_into(records);
                    elections += 1;
                }
            }
        }
    }

    fn default_replication_factor(&self, image: &MetadataImage) -> i16 {
        self.config
            .default_replication_factor
            .unwrap_or_else(|| image.brokers.len().min(3) as i16)
    }

    fn usable_brokers(image: &MetadataImage) -> Vec<PlacementBroker> {
        image
            .brokers
            .values()
            .filter(|b| b.is_active())
            .map(|b| PlacementBroker {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect()
    }

    fn new_topic_id(&mut self, image: &MetadataImage, taken: &BTreeSet<TopicId>) -> TopicId {
        loop {
            let id = TopicId(self.rng.u128(1..));
            if !image.topics.contains_key(&id) && !taken.contains(&id) {
                return id;
            }
        }
    }

    fn assignments(
        &mut self,
        brokers: &[PlacementBroker],
        partitions: usize,
        rf: usize,
    ) -> Result<Vec<PartitionAssignment>, String> {
        let seed = self.rng.u64(..);
        let placed = place(brokers, partitions, rf, seed).map_err(|e| match e {
            PlacementError::NotEnoughBrokers { .. } | PlacementError::ZeroReplicationFactor => {
                e.to_string()
            }
        })?;
        // Every placed broker is active, so the ISR is all replicas, led by the first.
        Ok(placed
            .into_iter()
            .map(|replicas| PartitionAssignment {
                isr: replicas.clone(),
                leader: replicas[0],
                replicas,
            })
            .collect())
    }

    fn create_topics(
        &mut self,
        image: &MetadataImage,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        if topics.len() > self.config.max_items_per_request {
            return Err(ControllerError::InvalidRequest(format!(
                "{} topics in one request",
                topics.len()
            )));
        }
        let brokers = Self::usable_brokers(image);
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(topics.len());
        let mut names_seen: BTreeSet<String> = BTreeSet::new();
        let mut ids_taken: BTreeSet<TopicId> = BTreeSet::new();
        let mut total_partitions = image.partition_count();
        for t in topics {
            let mut result = CreateTopicResult {
                name: t.name.clone(),
                error: codes::NONE,
                message: None,
                id: TopicId::ZERO,
                partitions: -1,
                replication_factor: -1,
                configs: Vec::new(),
            };
            let outcome = (|| -> Result<NewTopicPlan, (i16, String)> {
                validate_topic_name(&t.name).map_err(|m| (codes::INVALID_TOPIC_EXCEPTION, m))?;
                if image.topic_names.contains_key(&t.name) || names_seen.contains(&t.name) {
                    return Err((
                        codes::TOPIC_ALREADY_EXISTS,
                        format!("topic {:?} already exists", t.name),
                    ));
                }
                if t.assignments.is_some() && (t.partitions != -1 || t.replication_factor != -1) {
                    return Err((
                        codes::INVALID_REQUEST,
                        "Both numPartitions or replicationFactor and replicasAssignments were set. \
                         Both cannot be used at the same time."
                            .into(),
                    ));
                }
                let partitions = match &t.assignments {
                    Some(a) => i32::try_from(a.len()).unwrap_or(i32::MAX),
                    None if t.partitions == -1 => self.config.default_num_partitions,
                    None => t.partitions,
                };
                if partitions < 1 || partitions > self.config.max_partitions_per_topic {
                    return Err((
                        codes::INVALID_PARTITIONS,
                        format!("{partitions} partitions"),
                    ));
                }
                if total_partitions + partitions as usize > self.config.max_partitions_total {
                    return Err((
                        codes::POLICY_VIOLATION,
                        "the cluster's partition limit is reached".into(),
                    ));
                }
                let rf = match &t.assignments {
                    Some(a) => a.first().map_or(0, |r| r.len()) as i16,
                    None if t.replication_factor == -1 => self.default_replication_factor(image),
                    None => t.replication_factor,
                };
                if rf < 1 {
                    return Err((
                        codes::INVALID_REPLICATION_FACTOR,
                        format!("replication factor {rf}"),
                    ));
                }
                validate_configs(&t.configs, self.config.max_configs_per_request)
                    .map_err(|m| (codes::INVALID_CONFIG, m))?;
                let mut configs = t.configs.clone();
                configs.sort();
                configs.dedup_by(|a, b| a.0 == b.0);
                if rf >= 3 && !configs.iter().any(|(k, _)| k == MIN_INSYNC_REPLICAS) {
                    configs.push((MIN_INSYNC_REPLICAS.to_string(), "2".to_string()));
                }
                let assignments = match &t.assignments {
                    Some(manual) => manual_assignments(image, manual)?,
                    None => self
                        .assignments(&brokers, partitions as usize, rf as usize)
                        .map_err(|m| (codes::INVALID_REPLICATION_FACTOR, m))?,
                };
                let id = self.new_topic_id(image, &ids_taken);
                Ok((id, assignments, configs))
            })();
            match outcome {
                Ok((id, assignments, configs)) => {
                    result.id = id;
                    result.partitions = assignments.len() as i32;
                    result.replication_factor = assignments[0].replicas.len() as i16;
                    result.configs = configs.clone();
                    names_seen.insert(t.name.clone());
                    ids_taken.insert(id);
                    total_partitions += assignments.len();
                    if !validate_only {
                        records.push(Record::CreateTopic {
                            name: t.name,
                            id,
                            partitions: assignments,
                            configs,
                        });
                    }
                }
                Err((code, message)) => {
                    result.error = code;
                    result.message = Some(message);
                }
            }
            results.push(result);
        }
        Ok((records, ControllerResponse::CreateTopics(results)))
    }

    fn delete_topics(
        &mut self,
        image: &MetadataImage,
        names: Vec<String>,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        if names.len() > self.config.max_items_per_request {
            return Err(ControllerError::InvalidRequest(format!(
                "{} topics in one request",
                names.len()
            )));
        }
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(names.len());
        let mut deleted = BTreeSet::new();
        for name in names {
            match image.topic_names.get(&name) {
                Some(id) => {
                    if deleted.insert(*id) {
                        records.push(Record::DeleteTopic { id: *id });
                    }
                    results.push((
                        ItemResult {
                            name,
                            error: codes::NONE,
                            message: None,
                        },
                        *id,
                    ));
                }
                None => results.push((
                    ItemResult {
                        name,
                        error: codes::UNKNOWN_TOPIC_OR_PARTITION,
                        message: None,
                    },
                    TopicId::ZERO,
                )),
            }
        }
        Ok((records, ControllerResponse::DeleteTopics(results)))
    }

    fn create_partitions(
        &mut self,
        image: &MetadataImage,
        topics: Vec<(String, i32)>,
        validate_only: bool,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        if topics.len() > self.config.max_items_per_request {
            return Err(ControllerError::InvalidRequest(format!(
                "{} topics in one request",
                topics.len()
            )));
        }
        let brokers = Self::usable_brokers(image);
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(topics.len());
        let mut seen = BTreeSet::new();
        let mut total_partitions = image.partition_count();
        for (name, count) in topics {
            let outcome = (|| -> Result<Option<Record>, (i16, String)> {
                let topic = image.topic_by_name(&name).ok_or((
                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("no topic {name:?}"),
                ))?;
                if !seen.insert(name.clone()) {
                    return Err((codes::INVALID_REQUEST, "topic listed twice".into()));
                }
                let existing = topic.partitions.len() as i32;
                if count <= existing || count > self.config.max_partitions_per_topic {
                    return Err((
                        codes::INVALID_PARTITIONS,
                        format!(
                            "topic has {existing} partitions; {count} is not a valid new count"
                        ),
                    ));
                }
                let added = (count - existing) as usize;
                if total_partitions + added > self.config.max_partitions_total {
                    return Err((
                        codes::POLICY_VIOLATION,
                        "the cluster's partition limit is reached".into(),
                    ));
                }
                let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
                let assignments = self
                    .assignments(&brokers, added, rf)
                    .map_err(|m| (codes::INVALID_REPLICATION_FACTOR, m))?;
                total_partitions += added;
                Ok((!validate_only).then_some(Record::CreatePartitions {
                    id: topic.id,
                    partitions: assignments,
                }))
            })();
            match outcome {
                Ok(record) => {
                    records.extend(record);
                    results.push(ItemResult {
                        name,
                        error: codes::NONE,
                        message: None,
                    });
                }
                Err((error, message)) => results.push(ItemResult {
                    name,
                    error,
                    message: Some(message),
                }),
            }
        }
        Ok((records, ControllerResponse::CreatePartitions(results)))
    }

    fn elect_leaders(
        &mut self,
        image: &MetadataImage,
        election: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
        let all = partitions.is_none();
        let wanted: Vec<(String, i32)> = match partitions {
            Some(list) => list,
            None => image
                .topics
                .values()
                .flat_map(|t| (0..t.partitions.len() as i32).map(move |i| (t.name.clone(), i)))
                .collect(),
        };
        if wanted.len() > self.config.max_items_per_request {
            return Err(ControllerError::InvalidRequest(format!(
                "{} partitions in one request",
                wanted.len()
            )));
        }
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(wanted.len());
        let mut done = BTreeSet::new();
        for (topic, partition) in wanted {
            let error = (|| {
                let Some(t) = image.topic_by_name(&topic) else {
                    return codes::UNKNOWN_TOPIC_OR_PARTITION;
                };
                let Some(p) = image.partition(t.id, partition) else {
                    return codes::UNKNOWN_TOPIC_OR_PARTITION;
                };
                if !done.insert((t.id, partition)) {
                    return codes::INVALID_REQUEST;
                }
                let not_needed = match election {
                    ElectionType::Preferred => p.replicas.first() == Some(&p.leader),
                    ElectionType::Unclean => p.leader != NO_LEADER,
                };
                if not_needed {
                    return codes::ELECTION_NOT_NEEDED;
                }
                let acceptable = |r: i32| is_active(image, r);
                let min_isr = effective_min_isr(image, &t.name, p.replicas.len());
                let kind = match election {
                    ElectionType::Preferred => Election::Preferred,
                    ElectionType::Unclean => Election::Unclean,
                };
                match PartitionChangeBuilder::new(p, t.id, partition, &acceptable, min_isr)
                    .election(kind)
                    .build()
                {
                    Some(built) => {
                        built.push_into(&mut records);
                        codes::NONE
                    }
                    None if election == ElectionType::Preferred => {
                        codes::PREFERRED_LEADER_NOT_AVAILABLE
                    }
                    None => codes::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                }
            })();
            // Kafka: electing every partition does not list those already led as wanted.
            if all && error == codes::ELECTION_NOT_NEEDED {
                continue;
            }
            results.push(ElectResult {
                topic,
                partition,
                error,
            });
        }
        Ok((records, ControllerResponse::ElectLeaders(results)))
    }
}

/// A topic id, its partitions and its explicit configs.
type NewTopicPlan = (TopicId, Vec<PartitionAssignment>, Vec<(String, String)>);

fn check_broker_epoch(
    image: &MetadataImage,
    id: i32,
    epoch: i64,
) -> Result<&crate::image::BrokerReg, ControllerError> {
    let b = image
        .brokers
        .get(&id)
        .ok_or(ControllerError::BrokerNotRegistered(id))?;
    if b.epoch != epoch {
        return Err(ControllerError::StaleBrokerEpoch {
            id,
            got: epoch,
            current: b.epoch,
        });
    }
    Ok(b)
}

/// Kafka's `generateLeaderAndIsrUpdates`: for each partition, the target ISR is the ISR
/// without `broker_to_remove` and the unclean-shutdown broker; `broker_to_remove` and the
/// unclean-shutdown broker are never acceptable leaders; `broker_to_add` is acceptable even
/// though the image still shows it fenced (it is being unfenced by the same batch).
pub fn generate_leader_and_isr_updates(
    image: &MetadataImage,
    broker_to_remove: i32,
    broker_to_add: i32,
    unclean_shutdown: Option<i32>,
    partitions: &[(TopicId, i32)],
    records: &mut Vec<Record>,
) {
    let unclean_id = unclean_shutdown.unwrap_or(NO_LEADER);
    let acceptable = |r: i32| {
        r != NO_LEADER
            && r != broker_to_remove
            && r != unclean_id
            && (r == broker_to_add || is_active(image, r))
    };
    for &(tid, pid) in partitions {
        let (Some(topic), Some(p)) = (image.topics.get(&tid), image.partition(tid, pid)) else {
            continue;
        };
        let min_isr = effective_min_isr(image, &topic.name, p.replicas.len());
        let target_isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|r| *r != broker_to_remove && *r != unclean_id)
            .collect();
        let mut builder =
            PartitionChangeBuilder::new(p, tid, pid, &acceptable, min_isr).target_isr(target_isr);
        if unclean_enabled(image, &topic.name) {
            builder = builder.election(Election::Unclean);
        }
        if let Some(u) = unclean_shutdown {
            builder = builder.unclean_shutdown_replicas(vec![u]);
        }
        if let Some(built) = builder.build() {
            built.push_into(records);
        }
    }
}

/// AlterPartition for one partition: Kafka's `validateAlterPartitionData`, then the change.
/// Checks a replica list given by a user (Kafka's `validateManualPartitionAssignment`):
/// non-empty, bounded, no broker twice, every broker registered.
fn validate_manual_replicas(image: &MetadataImage, replicas: &[i32]) -> Result<(), (i16, String)> {
    if replicas.is_empty() {
        return Err((
            codes::INVALID_REPLICA_ASSIGNMENT,
            "The manual partition assignment includes an empty replica list.".into(),
        ));
    }
    if replicas.len() > crate::image::MAX_REPLICAS_PER_PARTITION {
        return Err((
            codes::INVALID_REPLICA_ASSIGNMENT,
            format!("{} replicas is too many.", replicas.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    for r in replicas {
        if !seen.insert(*r) {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!("The manual partition assignment includes the replica {r} more than once."),
            ));
        }
        if !image.brokers.contains_key(r) {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!("The manual partition assignment includes broker {r}, but no such broker is registered."),
            ));
        }
    }
    Ok(())
}

/// The partitions of a manually assigned new topic (Kafka's `ReplicationControlManager
/// .createTopic` with assignments): every list valid and of the same length; the ISR is the
/// active replicas, led by the first; a partition with no active replica is refused.
fn manual_assignments(
    image: &MetadataImage,
    manual: &[Vec<i32>],
) -> Result<Vec<PartitionAssignment>, (i16, String)> {
    let rf = manual.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(manual.len());
    for (i, replicas) in manual.iter().enumerate() {
        validate_manual_replicas(image, replicas)?;
        if replicas.len() != rf {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                "All partitions in the manual partition assignment must have the same number of replicas.".into(),
            ));
        }
        let isr: Vec<i32> = replicas
            .iter()
            .copied()
            .filter(|r| is_active(image, *r))
            .collect();
        let Some(&leader) = isr.first() else {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!("All brokers specified in the manual partition assignment for partition {i} are fenced or in controlled shutdown."),
            ));
        };
        out.push(PartitionAssignment {
            replicas: replicas.clone(),
            isr,
            leader,
        });
    }
    Ok(out)
}

/// One partition of AlterPartitionReassignments (Kafka's `ReplicationControlManager
/// .alterPartitionReassignment`): `None` cancels the ongoing reassignment (the replicas
/// being added leave, those being removed stay); a target starts one: the replicas become
/// the target followed by the replicas being removed, and the reassignment completes (in
/// `PartitionChangeBuilder::build`) once the ISR holds every target replica; a target that
/// only reorders or removes replicas may complete at once. `Ok(None)`: nothing to change.
fn alter_partition_reassignment(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
    allow_replication_factor_change: bool,
) -> Result<Option<BuiltChange>, (i16, String)> {
    let t = image.topic_by_name(topic).ok_or_else(|| {
        (
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("Unable to find a topic named {topic}."),
        )
    })?;
    let p = image.partition(t.id, partition).ok_or_else(|| {
        (
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("Unable to find partition {topic}:{partition}."),
        )
    })?;
    let acceptable = |r: i32| is_active(image, r);
    let min_isr = effective_min_isr(image, topic, p.replicas.len());
    let in_progress = !p.adding.is_empty() || !p.removing.is_empty();
    let Some(target) = target else {
        if !in_progress {
            return Err((
                codes::NO_REASSIGNMENT_IN_PROGRESS,
                "No partition reassignment is in progress.".into(),
            ));
        }
        // PartitionReassignmentRevert: keep the original replicas, drop the added ones from
        // the ISR. Holdfast refuses a revert that would need an unclean election (Kafka
        // allows it for topics with unclean.leader.election.enable).
        let original: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| !p.adding.contains(r))
            .collect();
        let isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|r| !p.adding.contains(r))
            .collect();
        if isr.is_empty() || original.is_empty() {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "Unable to revert partition assignment for {topic}:{partition} because it \
                     would require an unclean leader election."
                ),
            ));
        }
        return Ok(
            PartitionChangeBuilder::new(p, t.id, partition, &acceptable, min_isr)
                .target_isr(isr)
                .target_assignment(original, Vec::new(), Vec::new())
                .build(),
        );
    };
    validate_manual_replicas(image, &target)?;
    // A new target replaces an ongoing reassignment: start from its original replicas
    // (Kafka computes the new one from the current replica list, which then keeps the
    // replicas of the earlier target being added; this drops them instead).
    let (current, isr): (Vec<i32>, Vec<i32>) = if in_progress {
        (
            p.replicas
                .iter()
                .copied()
                .filter(|r| !p.adding.contains(r))
                .collect(),
            p.isr.clone(),
        )
    } else {
        (p.replicas.clone(), p.isr.clone())
    };
    if !allow_replication_factor_change && target.len() != current.len() {
        return Err((
            codes::INVALID_REPLICATION_FACTOR,
            format!(
                "The replication factor is changed from {} to {}",
                current.len(),
                target.len()
            ),
        ));
    }
    let removing: Vec<i32> = current
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !current.contains(r))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut replicas = target.clone();
    replicas.extend(removing.iter().copied());
    // Replicas of an earlier target that are not in this one leave the ISR.
    let isr: Vec<i32> = isr.into_iter().filter(|r| replicas.contains(r)).collect();
    if isr.is_empty() {
        return Err((
            codes::INVALID_REPLICA_ASSIGNMENT,
            format!("Reassigning {topic}:{partition} now would leave no in-sync replica."),
        ));
    }
    Ok(
        PartitionChangeBuilder::new(p, t.id, partition, &acceptable, min_isr)
            .target_isr(isr)
            .target_assignment(replicas, adding, removing)
            .build(),
    )
}

#[allow(clippy::too_many_arguments)]
fn alter_partition(
    image: &MetadataImage,
    broker_id: i32,
    topic: TopicId,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    new_isr: &[IsrMember],
    leader_recovery: LeaderRecovery,
) -> (Vec<Record>, AlterPartitionReply) {
    let error_reply = |error: i16| AlterPartitionReply {
        error,
        leader: NO_LEADER,
        leader_epoch: -1,
        partition_epoch: -1,
        isr: Vec::new(),
        leader_recovery: LeaderRecovery::Recovered,
    };
    let Some(t) = image.topics.get(&topic) else {
        return (Vec::new(), error_reply(codes::UNKNOWN_TOPIC_ID));
    };
    let Some(p) = image.partition(topic, partition) else {
        return (Vec::new(), error_reply(codes::UNKNOWN_TOPIC_OR_PARTITION));
    };
    let isr: Vec<i32> = new_isr.iter().map(|m| m.id).collect();
    // The ISR must be a duplicate-free subset of the replicas containing the leader
    // (`Replicas.validateIsr`); a recovering leader may not grow it, and a recovered one
    // may not go back to recovering.
    let invalid_isr = isr.is_empty()
        || isr.len() > p.replicas.len()
        || !isr.iter().all(|r| p.replicas.contains(r))
        || isr.iter().collect::<BTreeSet<_>>().len() != isr.len()
        || !isr.contains(&p.leader);
    let bad_recovery = leader_recovery == LeaderRecovery::Recovering
        && (isr.len() > 1 || p.leader_recovery == LeaderRecovery::Recovered);
    let error = if leader_epoch > p.leader_epoch || partition_epoch > p.partition_epoch {
        // The sender knows a newer state than this controller: it is likely not the active
        // controller any more.
        codes::NOT_CONTROLLER
    } else if leader_epoch < p.leader_epoch {
        codes::FENCED_LEADER_EPOCH
    } else if broker_id != p.leader {
        codes::INVALID_REQUEST
    } else if partition_epoch < p.partition_epoch {
        codes::INVALID_UPDATE_VERSION
    } else if invalid_isr || bad_recovery {
        codes::INVALID_REQUEST
    } else if new_isr.iter().any(|m| match image.brokers.get(&m.id) {
        None => true,
        Some(b) => {
            b.in_controlled_shutdown
                || b.fenced
                || (m.broker_epoch != -1 && m.broker_epoch != b.epoch)
        }
    }) {
        codes::INELIGIBLE_REPLICA
    } else {
        codes::NONE
    };
    if error != codes::NONE {
        return (Vec::new(), error_reply(error));
    }
    let acceptable = |r: i32| is_active(image, r);
    let min_isr = effective_min_isr(image, &t.name, p.replicas.len());
    let mut builder = PartitionChangeBuilder::new(p, topic, partition, &acceptable, min_isr)
        .target_isr(isr)
        .target_leader_recovery(leader_recovery);
    if unclean_enabled(image, &t.name) {
        builder = builder.election(Election::Unclean);
    }
    let mut records = Vec::new();
    let mut state = p.clone();
    if let Some(built) = builder.build() {
        match state.merge(&built.change) {
            Ok(next) => state = next,
            Err(_) => return (Vec::new(), error_reply(codes::INVALID_REQUEST)),
        }
        let new_leader = built.change.leader;
        built.push_into(&mut records);
        if new_leader.is_some_and(|l| l != broker_id) {
            return (records, error_reply(codes::NEW_LEADER_ELECTED));
        }
    }
    let reply = AlterPartitionReply {
        error: codes::NONE,
        leader: state.leader,
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
        isr: state.isr,
        leader_recovery: state.leader_recovery,
    };
    (records, reply)
}

fn set_configs(
    image: &MetadataImage,
    resource: ConfigResource,
    set: Vec<(String, String)>,
    delete: Vec<String>,
    validate_only: bool,
    max: usize,
) -> Result<(Vec<Record>, ControllerResponse), ControllerError> {
    let name = match &resource {
        ConfigResource::Topic(n) => n.clone(),
        ConfigResource::Broker(id) => id.to_string(),
        ConfigResource::Cluster => String::new(),
    };
    if let ConfigResource::Topic(n) = &resource {
        if !image.topic_names.contains_key(n) {
            return Ok((
                Vec::new(),
                ControllerResponse::SetConfigs(ItemResult {
                    name,
                    error: codes::UNKNOWN_TOPIC_OR_PARTITION,
                    message: None,
                }),
            ));
        }
    }
    if let Err(m) = validate_configs(&set, max).and_then(|()| {
        if delete.len() > max {
            Err(format!("more than {max} configs to delete"))
        } else {
            Ok(())
        }
    }) {
        return Ok((
            Vec::new(),
            ControllerResponse::SetConfigs(ItemResult {
                name,
                error: codes::INVALID_CONFIG,
                message: Some(m),
            }),
        ));
    }
    let mut records = Vec::new();
    let changes_something = !set.is_empty() || !delete.is_empty();
    if !validate_only && changes_something {
        let min_isr_changes = set.iter().any(|(k, _)| k == MIN_INSYNC_REPLICAS)
            || delete.iter().any(|k| k == MIN_INSYNC_REPLICAS);
        let resource_for_elr = resource.clone();
        records.push(Record::SetConfigs {
            resource,
            set,
            delete,
        });
        if min_isr_changes {
            clear_elr_after_min_isr_change(image, &resource_for_elr, &mut records);
        }
    }
    Ok((
        records,
        ControllerResponse::SetConfigs(ItemResult {
            name,
            error: codes::NONE,
            message: None,
        }),
    ))
}

/// KIP-966: when `min.insync.replicas` changes, the ELR and last-known ELR of the affected
/// partitions are cleared. Lowering min ISR lets the high watermark advance with a smaller
/// ISR, so a replica that became eligible under the old value may miss data below the new
/// high watermark; clearing is the conservative choice (a partition with an empty ISR then
/// stays offline until an ISR member returns or an unclean election is chosen). Kafka at the
/// commit read (1eb7644) does not do this yet; KIP-966 specifies it.
fn clear_elr_after_min_isr_change(
    image: &MetadataImage,
    resource: &ConfigResource,
    records: &mut Vec<Record>,
) {
    for topic in image.topics.values() {
        let affected = match resource {
            ConfigResource::Topic(name) => &topic.name == name,
            // A cluster or broker default matters to topics without their own value.
            ConfigResource::Cluster | ConfigResource::Broker(_) => !image
                .configs
                .get(&ConfigResource::Topic(topic.name.clone()))
                .is_some_and(|c| c.contains_key(MIN_INSYNC_REPLICAS)),
        };
        if !affected {
            continue;
        }
        for (i, p) in topic.partitions.iter().enumerate() {
            if p.elr.is_empty() && p.last_known_elr.is_empty() {
                continue;
            }
            let mut change = PartitionChange::new(topic.id, i as i32, p.partition_epoch);
            if !p.elr.is_empty() {
                change.elr = Some(Vec::new());
            }
            if !p.last_known_elr.is_empty() {
                change.last_known_elr = Some(Vec::new());
            }
            records.push(Record::PartitionChange(change));
        }
    }
}
