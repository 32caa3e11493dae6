//! The leader side of one partition: follower progress, high watermark, ISR changes, and the
//! produce `acks` checks. Rules from Kafka's `core/.../cluster/Partition.scala` and
//! `Replica.scala`; Holdfast's difference is durability (see the crate docs).

use std::collections::BTreeSet;

use crate::{codes, BrokerId, MAX_REPLICAS};

/// The partition registration this broker leads, from the metadata image (Kafka's
/// `LeaderAndIsrPartitionState` / `PartitionRegistration`; the leader is the local broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRegistration {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
}

/// Topic and broker configuration the leader needs (Kafka names at the edge:
/// `min.insync.replicas`, `replica.lag.time.max.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderConfig {
    pub min_insync_replicas: usize,
    pub replica_lag_time_max_ms: i64,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
        }
    }
}

/// The local log as the leader sees it when it takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLogView {
    /// Log end offset (LEO): next offset to be written.
    pub log_end: i64,
    /// Everything below this is fsynced.
    pub durable_end: i64,
    /// The high watermark persisted in `partition-checkpoint` (or the previous one in memory).
    pub high_watermark: i64,
}

/// What the metadata image says about a follower's broker (Kafka's `KRaftMetadataCache`:
/// `getAliveBrokerEpoch`, `isBrokerFenced`, `isBrokerShuttingDown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStatus {
    /// The registered broker epoch; `None` when the broker is not registered (not alive).
    pub broker_epoch: Option<i64>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

impl BrokerStatus {
    /// A registered, unfenced broker that is not shutting down.
    pub fn alive(broker_epoch: i64) -> BrokerStatus {
        BrokerStatus {
            broker_epoch: Some(broker_epoch),
            fenced: false,
            in_controlled_shutdown: false,
        }
    }
}

/// The leader's view of one follower (Kafka's `ReplicaState`). Offsets are -1 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    pub replica_id: BrokerId,
    /// The follower's last fetch offset: by Holdfast's fetch rule, its *durable* log end.
    pub log_end: i64,
    pub log_start: i64,
    pub last_fetch_ms: i64,
    pub last_caught_up_ms: i64,
    /// The leader's log end at the follower's previous fetch.
    pub last_fetch_leader_log_end: i64,
    /// The broker epoch the follower sent in its last fetch (`replica_state.replica_epoch`).
    pub broker_epoch: Option<i64>,
    /// From the metadata image, via [`LeaderState::update_broker`].
    pub status: BrokerStatus,
}

impl FollowerProgress {
    fn empty(replica_id: BrokerId) -> FollowerProgress {
        FollowerProgress {
            replica_id,
            log_end: -1,
            log_start: -1,
            last_fetch_ms: 0,
            last_caught_up_ms: 0,
            last_fetch_leader_log_end: 0,
            broker_epoch: None,
            status: BrokerStatus::default(),
        }
    }

    /// Mirrors `ReplicaState.isCaughtUp`: at the leader's log end, or caught up to it within
    /// the last `replica_lag_time_max_ms`.
    pub fn is_caught_up(
        &self,
        leader_log_end: i64,
        now_ms: i64,
        replica_lag_time_max_ms: i64,
    ) -> bool {
        leader_log_end == self.log_end || now_ms - self.last_caught_up_ms <= replica_lag_time_max_ms
    }
}

/// A follower fetch, as far as replication state cares (Fetch v15+ `replica_state`, per
/// partition `current_leader_epoch`, `fetch_offset`, `log_start_offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica_id: BrokerId,
    /// `replica_state.replica_epoch`; -1 when absent (skips the broker-epoch fence).
    pub broker_epoch: i64,
    /// `current_leader_epoch`; `None` when the request carries none (-1 / old versions).
    pub current_leader_epoch: Option<i32>,
    pub fetch_offset: i64,
    pub log_start: i64,
}

/// A refused follower fetch. [`ReplicaError::code`] is the Kafka error to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("fetch leader epoch {request} is older than the current {current}")]
    FencedLeaderEpoch { request: i32, current: i32 },
    #[error("fetch leader epoch {request} is newer than the current {current}")]
    UnknownLeaderEpoch { request: i32, current: i32 },
    /// Not one of the partition's replicas. UNKNOWN_LEADER_EPOCH when the fetch carried a
    /// leader epoch (the follower retries), NOT_LEADER_OR_FOLLOWER otherwise
    /// (`Partition.followerReplicaOrThrow`).
    #[error("replica {replica_id} is not a replica of this partition")]
    UnknownReplica {
        replica_id: BrokerId,
        request_had_leader_epoch: bool,
    },
    /// `Replica.updateFetchStateOrThrow`: a fetch from an older incarnation of the broker.
    #[error("stale broker epoch {request} from replica {replica_id} (registered {registered})")]
    StaleBrokerEpoch {
        replica_id: BrokerId,
        request: i64,
        registered: i64,
    },
    #[error("fetch offset {fetch_offset} is past the leader's log end {leader_log_end}")]
    OffsetOutOfRange {
        fetch_offset: i64,
        leader_log_end: i64,
    },
}

impl ReplicaError {
    pub fn code(&self) -> i16 {
        match self {
            ReplicaError::FencedLeaderEpoch { .. } => codes::FENCED_LEADER_EPOCH,
            ReplicaError::UnknownLeaderEpoch { .. } => codes::UNKNOWN_LEADER_EPOCH,
            ReplicaError::UnknownReplica {
                request_had_leader_epoch: true,
                ..
            } => codes::UNKNOWN_LEADER_EPOCH,
            ReplicaError::UnknownReplica { .. } => codes::NOT_LEADER_OR_FOLLOWER,
            ReplicaError::StaleBrokerEpoch { .. } => codes::NOT_LEADER_OR_FOLLOWER,
            ReplicaError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
        }
    }
}

/// A registration or response this state machine cannot accept (a controller bug or a
/// misrouted update).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("replica set is empty")]
    NoReplicas,
    #[error("{0} replicas exceed the cap of {MAX_REPLICAS}")]
    TooManyReplicas(usize),
    #[error("replica {0} listed twice")]
    DuplicateReplica(BrokerId),
    #[error("local broker {0} is not a replica")]
    LocalNotReplica(BrokerId),
    #[error("ISR member {0} is not a replica")]
    IsrNotSubset(BrokerId),
    #[error("leader {0} is not in the ISR")]
    LeaderNotInIsr(BrokerId),
    #[error("leader epoch went back from {current} to {got}")]
    LeaderEpochWentBack { current: i32, got: i32 },
    #[error("min.insync.replicas must be >= 1 and replica.lag.time.max.ms > 0")]
    BadConfig,
}

/// One ISR member in an AlterPartition request (v3+ `new_isr_with_epochs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsrMember {
    pub broker_id: BrokerId,
    /// -1 when unknown (`Partition.addBrokerEpochToIsr`).
    pub broker_epoch: i64,
}

/// An AlterPartition the broker must send to the controller. At most one is in flight per
/// partition; its `request_id` ties the response to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterIsr {
    pub request_id: u64,
    pub leader_id: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<IsrMember>,
}

impl AlterIsr {
    pub fn isr_ids(&self) -> Vec<BrokerId> {
        self.new_isr.iter().map(|m| m.broker_id).collect()
    }
}

/// A successful AlterPartition answer: the partition's state at the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartitionOk {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<BrokerId>,
}

/// A failed AlterPartition (`Partition.handleAlterPartitionError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterPartitionError {
    /// Not applied, partition epoch is current: revert to the committed ISR.
    OperationNotAttempted,
    /// Not applied (a proposed member is fenced/shutting down/stale): revert.
    IneligibleReplica,
    UnknownTopicOrPartition,
    UnknownTopicId,
    FencedLeaderEpoch,
    InvalidUpdateVersion,
    InvalidRequest,
    NewLeaderElected,
    /// Anything else (NOT_CONTROLLER, REQUEST_TIMED_OUT, a lost connection): resend.
    Retriable(i16),
}

impl AlterPartitionError {
    pub fn from_code(code: i16) -> AlterPartitionError {
        match code {
            codes::OPERATION_NOT_ATTEMPTED => AlterPartitionError::OperationNotAttempted,
            codes::INELIGIBLE_REPLICA => AlterPartitionError::IneligibleReplica,
            codes::UNKNOWN_TOPIC_OR_PARTITION => AlterPartitionError::UnknownTopicOrPartition,
            codes::UNKNOWN_TOPIC_ID => AlterPartitionError::UnknownTopicId,
            codes::FENCED_LEADER_EPOCH => AlterPartitionError::FencedLeaderEpoch,
            codes::INVALID_UPDATE_VERSION => AlterPartitionError::InvalidUpdateVersion,
            codes::INVALID_REQUEST => AlterPartitionError::InvalidRequest,
            codes::NEW_LEADER_ELECTED => AlterPartitionError::NewLeaderElected,
            other => AlterPartitionError::Retriable(other),
        }
    }
}

/// What handling an AlterPartition response did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterOutcome {
    /// Not the request in flight (stale, duplicate, or superseded by metadata).
    Ignored,
    /// The ISR and partition epoch were adopted; `high_watermark` is the new HW if it moved.
    Committed { high_watermark: Option<i64> },
    /// The controller did not apply it: back to the committed ISR.
    Reverted { high_watermark: Option<i64> },
    /// Stays pending until the next metadata update for this partition.
    AwaitMetadata,
    /// Send this again (a fresh `request_id`).
    Resend(AlterIsr),
}

/// Result of [`LeaderState::on_follower_fetch`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchOutcome {
    /// The new high watermark when it advanced (wake produce waiters and consumers).
    pub high_watermark: Option<i64>,
    /// An ISR expansion to send to the controller.
    pub alter_isr: Option<AlterIsr>,
    /// A maximal-ISR member reported a durable end below the HW: it lost data the promise says
    /// it holds (a disk lost fsynced data, or a broken follower). Not a Kafka rule: Holdfast's
    /// check, for the loss ledger and an alert. The replica is shrunk out by lag as usual.
    pub isr_member_below_hw: bool,
}

/// Result of [`LeaderState::become_leader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BecomeLeader {
    /// Lower partition epoch than known: ignored (`makeLeader` returns false).
    Skipped,
    /// Applied. `new_leader_epoch`: follower states were reset and the epoch start offset
    /// moved (the broker must `assign_epoch_start(leader_epoch, log_end)` in the log).
    Applied {
        new_leader_epoch: bool,
        high_watermark: Option<i64>,
    },
}

/// Produce `acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    /// Kafka's `acks` field: 0, 1, -1. Anything else is INVALID_REQUIRED_ACKS for the caller.
    pub fn from_kafka(acks: i16) -> Option<Acks> {
        match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }
}

/// NOT_ENOUGH_REPLICAS before an `acks=all` append (`Partition.appendRecordsToLeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ISR size {isr_size} is below min.insync.replicas {min_isr}")]
pub struct NotEnoughReplicas {
    pub isr_size: usize,
    pub min_isr: usize,
}

impl NotEnoughReplicas {
    pub fn code(&self) -> i16 {
        codes::NOT_ENOUGH_REPLICAS
    }
}

/// Whether an appended `acks=all` batch may be answered (`Partition.checkEnoughReplicasReachOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckDecision {
    /// HW has not reached the batch yet.
    Wait,
    /// Committed: acknowledge.
    Ack,
    /// Committed, but the maximal ISR is below min ISR: NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    NotEnoughReplicasAfterAppend,
    /// The leader epoch changed since the append: NOT_LEADER_OR_FOLLOWER.
    NotLeader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingKind {
    Expand(BrokerId),
    Shrink(Vec<BrokerId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    kind: PendingKind,
    request: AlterIsr,
    /// A non-retriable error or an out-of-date answer: only metadata clears it.
    awaiting_metadata: bool,
}

/// One partition led by this broker.
#[derive(Debug, Clone)]
pub struct LeaderState {
    local_id: BrokerId,
    local_broker_epoch: i64,
    config: LeaderConfig,
    leader_epoch: i32,
    /// The leader epoch this state was created in: this broker has led the partition without
    /// a break since then (a later epoch adopted by `become_leader` is a bump while leading,
    /// e.g. a reassignment removing a replica), so its log was never truncated in between.
    leadership_first_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<BrokerId>,
    /// Committed ISR (what the controller last confirmed).
    isr: BTreeSet<BrokerId>,
    pending: Option<Pending>,
    next_request_id: u64,
    leader_epoch_start_offset: i64,
    leader_log_end: i64,
    leader_durable_end: i64,
    high_watermark: i64,
    /// One entry per replica other than the leader, in `replicas` order.
    followers: Vec<FollowerProgress>,
    /// Negative control for the model test: drop the KIP-966 min-ISR rule.
    #[cfg(test)]
    pub(crate) bug_ignore_min_isr: bool,
    /// Negative control: Kafka's `makeLeader`, dropping a pending AlterPartition on a
    /// registration with the same epochs.
    #[cfg(test)]
    pub(crate) bug_reset_pending_on_same_epoch: bool,
}

fn validate(local_id: BrokerId, reg: &LeaderRegistration) -> Result<(), RegistrationError> {
    if reg.replicas.is_empty() {
        return Err(RegistrationError::NoReplicas);
    }
    if reg.replicas.len() > MAX_REPLICAS {
        return Err(RegistrationError::TooManyReplicas(reg.replicas.len()));
    }
    for (i, r) in reg.replicas.iter().enumerate() {
        if reg.replicas[..i].contains(r) {
            return Err(RegistrationError::DuplicateReplica(*r));
        }
    }
    if !reg.replicas.contains(&local_id) {
        return Err(RegistrationError::LocalNotReplica(local_id));
    }
    for m in &reg.isr {
        if !reg.replicas.contains(m) {
            return Err(RegistrationError::IsrNotSubset(*m));
        }
    }
    if !reg.isr.contains(&local_id) {
        return Err(RegistrationError::LeaderNotInIsr(local_id));
    }
    Ok(())
}

impl LeaderState {
    /// This broker becomes leader of a partition it did not lead (`Partition.makeLeader` with
    /// `isNewLeader`): follower states start empty (`Replica.resetReplicaState`), ISR members
    /// counted as caught up now. The HW starts from the persisted HW clamped to the durable
    /// end, never from the log end (design §2.3, §2.7).
    pub fn new(
        local_id: BrokerId,
        local_broker_epoch: i64,
        reg: &LeaderRegistration,
        config: LeaderConfig,
        log: LocalLogView,
        now_ms: i64,
    ) -> Result<LeaderState, RegistrationError> {
        validate(local_id, reg)?;
        if config.min_insync_replicas == 0 || config.replica_lag_time_max_ms <= 0 {
            return Err(RegistrationError::BadConfig);
        }
        assert!(
            0 <= log.durable_end && log.durable_end <= log.log_end,
            "durable end outside [0, log end]: {log:?}"
        );
        let followers = reg
            .replicas
            .iter()
            .filter(|r| **r != local_id)
            .map(|r| {
                let mut p = FollowerProgress::empty(*r);
                if reg.isr.contains(r) {
                    p.last_caught_up_ms = now_ms;
                }
                p.last_fetch_leader_log_end = -1;
                p
            })
            .collect();
        let mut s = LeaderState {
            local_id,
            local_broker_epoch,
            config,
            leader_epoch: reg.leader_epoch,
            leadership_first_epoch: reg.leader_epoch,
            partition_epoch: reg.partition_epoch,
            replicas: reg.replicas.clone(),
            isr: reg.isr.iter().copied().collect(),
            pending: None,
            // Unique across leaderships of different leader epochs, so a late answer to an
            // earlier leadership of this partition never matches a request of this one.
            next_request_id: ((reg.leader_epoch.max(0) as u64) << 32) | 1,
            leader_epoch_start_offset: log.log_end,
            leader_log_end: log.log_end,
            leader_durable_end: log.durable_end,
            high_watermark: log.high_watermark.clamp(0, log.durable_end),
            followers,
            #[cfg(test)]
            bug_ignore_min_isr: false,
            #[cfg(test)]
            bug_reset_pending_on_same_epoch: false,
        };
        s.maybe_increment_hw(now_ms);
        s.check_invariants();
        Ok(s)
    }

    /// A new registration for a partition this broker already leads (`Partition.makeLeader`
    /// without `isNewLeader`): ignored when its partition epoch is older; otherwise adopts
    /// replicas and ISR and drops any pending AlterPartition, except when the registration has
    /// the leader and partition epochs we already have (then it is the state we know, and the
    /// pending change stays: Holdfast differs from Kafka, see docs/replication-rules.md). On a
    /// new leader epoch, moves the epoch start offset to the log end (the broker also assigns
    /// it in the log's epoch cache) and resets follower timers, keeping their log ends.
    pub fn become_leader(
        &mut self,
        reg: &LeaderRegistration,
        leader_log_end: i64,
        now_ms: i64,
    ) -> Result<BecomeLeader, RegistrationError> {
        if reg.partition_epoch < self.partition_epoch {
            return Ok(BecomeLeader::Skipped);
        }
        validate(self.local_id, reg)?;
        if reg.leader_epoch < self.leader_epoch {
            return Err(RegistrationError::LeaderEpochWentBack {
                current: self.leader_epoch,
                got: reg.leader_epoch,
            });
        }
        let new_leader_epoch = reg.leader_epoch > self.leader_epoch;
        // Holdfast differs from Kafka here: a registration with the partition epoch and leader
        // epoch we already have (learnt from an AlterPartition answer before the metadata
        // record arrived) says nothing new, so it does not cancel a pending AlterPartition.
        // Kafka's `makeLeader` resets to the committed state, which can drop a pending expansion
        // the controller is about to apply: the HW would then stop waiting for a replica that is
        // in the controller's ISR.
        #[cfg(test)]
        let keep_pending = !self.bug_reset_pending_on_same_epoch;
        #[cfg(not(test))]
        let keep_pending = true;
        if keep_pending
            && !new_leader_epoch
            && reg.partition_epoch == self.partition_epoch
            && self.pending.is_some()
        {
            return Ok(BecomeLeader::Applied {
                new_leader_epoch: false,
                high_watermark: self.maybe_increment_hw(now_ms),
            });
        }
        // Reads and appends race in the broker: keep the largest log end seen.
        let leader_log_end = self.leader_log_end.max(leader_log_end);
        let mut followers = Vec::with_capacity(reg.replicas.len());
        for r in reg.replicas.iter().filter(|r| **r != self.local_id) {
            let mut p = self
                .followers
                .iter()
                .find(|f| f.replica_id == *r)
                .copied()
                .unwrap_or_else(|| FollowerProgress::empty(*r));
            if new_leader_epoch {
                let in_sync = reg.isr.contains(r);
                p.last_caught_up_ms = if in_sync { now_ms } else { 0 };
                p.last_fetch_ms = if in_sync { now_ms } else { 0 };
                p.last_fetch_leader_log_end = leader_log_end;
            }
            followers.push(p);
        }
        self.followers = followers;
        self.replicas = reg.replicas.clone();
        self.isr = reg.isr.iter().copied().collect();
        self.pending = None;
        self.leader_log_end = leader_log_end;
        if new_leader_epoch {
            self.leader_epoch = reg.leader_epoch;
            self.leader_epoch_start_offset = leader_log_end;
        }
        self.partition_epoch = reg.partition_epoch;
        let high_watermark = self.maybe_increment_hw(now_ms);
        self.check_invariants();
        Ok(BecomeLeader::Applied {
            new_leader_epoch,
            high_watermark,
        })
    }

    /// New configuration (`min.insync.replicas` is a dynamic topic config). May move the HW.
    pub fn set_config(
        &mut self,
        config: LeaderConfig,
        now_ms: i64,
    ) -> Result<Option<i64>, RegistrationError> {
        if config.min_insync_replicas == 0 || config.replica_lag_time_max_ms <= 0 {
            return Err(RegistrationError::BadConfig);
        }
        self.config = config;
        Ok(self.maybe_increment_hw(now_ms))
    }

    /// A follower broker's registration changed in the metadata image (fenced, controlled
    /// shutdown, new broker epoch). Unknown ids are ignored. May move the HW: a fenced or
    /// shutting-down broker outside the ISR stops holding it back
    /// (`PartitionTest.testHighWatermarkIncreasesWithFencedOrShutdownFollower`).
    pub fn update_broker(
        &mut self,
        broker_id: BrokerId,
        status: BrokerStatus,
        now_ms: i64,
    ) -> Option<i64> {
        let f = self
            .followers
            .iter_mut()
            .find(|f| f.replica_id == broker_id)?;
        f.status = status;
        self.maybe_increment_hw(now_ms)
    }

    /// The local log grew (an append as leader). May move the HW only in the sense that a
    /// non-ISR follower stops counting as caught up.
    pub fn on_local_append(&mut self, leader_log_end: i64, now_ms: i64) -> Option<i64> {
        self.leader_log_end = self.leader_log_end.max(leader_log_end);
        self.maybe_increment_hw(now_ms)
    }

    /// The local durable end advanced (a flusher round). The leader's contribution to the HW is
    /// its durable end, not its log end (design §2.2; Kafka uses the LEO).
    pub fn on_local_durable(&mut self, durable_end: i64, now_ms: i64) -> Option<i64> {
        // Reports may arrive out of order; the durable end only grows (the check that it stays
        // at or above the HW is in `check_invariants`).
        self.leader_durable_end = self.leader_durable_end.max(durable_end);
        self.leader_log_end = self.leader_log_end.max(durable_end);
        let hw = self.maybe_increment_hw(now_ms);
        self.check_invariants();
        hw
    }

    /// A fetch from a follower, after the broker's divergence check
    /// ([`crate::diverging_epoch`]) found none. Mirrors `Partition.fetchRecords` (epoch and
    /// replica checks) → `Replica.updateFetchStateOrThrow` → `maybeExpandIsr` →
    /// `maybeIncrementLeaderHW`. `leader_log_end_now` is the leader's log end at the read.
    pub fn on_follower_fetch(
        &mut self,
        fetch: FollowerFetch,
        leader_log_end_now: i64,
        now_ms: i64,
    ) -> Result<FetchOutcome, ReplicaError> {
        if let Some(e) = fetch.current_leader_epoch {
            if e < self.leader_epoch {
                return Err(ReplicaError::FencedLeaderEpoch {
                    request: e,
                    current: self.leader_epoch,
                });
            }
            if e > self.leader_epoch {
                return Err(ReplicaError::UnknownLeaderEpoch {
                    request: e,
                    current: self.leader_epoch,
                });
            }
        }
        let Some(idx) = self
            .followers
            .iter()
            .position(|f| f.replica_id == fetch.replica_id)
        else {
            return Err(ReplicaError::UnknownReplica {
                replica_id: fetch.replica_id,
                request_had_leader_epoch: fetch.current_leader_epoch.is_some(),
            });
        };
        // Reads and appends race in the broker: keep the largest log end seen.
        self.leader_log_end = self.leader_log_end.max(leader_log_end_now);
        if fetch.fetch_offset < 0 || fetch.fetch_offset > leader_log_end_now {
            return Err(ReplicaError::OffsetOutOfRange {
                fetch_offset: fetch.fetch_offset,
                leader_log_end: leader_log_end_now,
            });
        }
        let f = &mut self.followers[idx];
        if let Some(registered) = f.status.broker_epoch {
            if fetch.broker_epoch != -1 && registered > fetch.broker_epoch {
                return Err(ReplicaError::StaleBrokerEpoch {
                    replica_id: fetch.replica_id,
                    request: fetch.broker_epoch,
                    registered,
                });
            }
        }
        // Replica.updateFetchStateOrThrow.
        let prev_log_end = f.log_end;
        f.last_caught_up_ms = if fetch.fetch_offset >= leader_log_end_now {
            f.last_caught_up_ms.max(now_ms)
        } else if fetch.fetch_offset >= f.last_fetch_leader_log_end {
            f.last_caught_up_ms.max(f.last_fetch_ms)
        } else {
            f.last_caught_up_ms
        };
        f.log_start = fetch.log_start;
        f.log_end = fetch.fetch_offset;
        f.last_fetch_leader_log_end = f.last_fetch_leader_log_end.max(leader_log_end_now);
        f.last_fetch_ms = now_ms;
        f.broker_epoch = Some(fetch.broker_epoch);

        let isr_member_below_hw = fetch.fetch_offset < self.high_watermark
            && self.maximal_isr().contains(&fetch.replica_id);
        let alter_isr = self.maybe_expand_isr(fetch.replica_id);
        let high_watermark = if prev_log_end != fetch.fetch_offset {
            self.maybe_increment_hw(now_ms)
        } else {
            None
        };
        self.check_invariants();
        Ok(FetchOutcome {
            high_watermark,
            alter_isr,
            isr_member_below_hw,
        })
    }

    /// Mirrors `Partition.maybeExpandIsr` / `canAddReplicaToIsr` / `isFollowerInSync`: with no
    /// AlterPartition in flight, a follower outside the ISR that is ISR-eligible and whose log
    /// end is at or past both the HW and the current epoch's start offset is proposed for the
    /// ISR. The proposal counts in the maximal ISR (for the HW) at once.
    pub fn maybe_expand_isr(&mut self, replica_id: BrokerId) -> Option<AlterIsr> {
        if self.pending.is_some() || self.isr.contains(&replica_id) {
            return None;
        }
        let f = self.followers.iter().find(|f| f.replica_id == replica_id)?;
        if !self.is_isr_eligible(f)
            || f.log_end < self.high_watermark
            || f.log_end < self.leader_epoch_start_offset
        {
            return None;
        }
        let mut new_isr = self.isr.clone();
        new_isr.insert(replica_id);
        Some(self.prepare(PendingKind::Expand(replica_id), &new_isr))
    }

    /// Mirrors `Partition.maybeShrinkIsr` / `getOutOfSyncReplicas`: with no AlterPartition in
    /// flight, ISR followers that are not caught up (`ReplicaState.isCaughtUp`) are proposed
    /// for removal. Until the controller confirms, they still count for the HW (the maximal
    /// ISR of a pending shrink is the current ISR). The broker calls this every
    /// `replica.lag.time.max.ms / 2`.
    pub fn maybe_shrink_isr(&mut self, now_ms: i64, leader_log_end: i64) -> Option<AlterIsr> {
        self.leader_log_end = self.leader_log_end.max(leader_log_end);
        let out = self.out_of_sync_replicas(now_ms);
        if out.is_empty() {
            return None;
        }
        let new_isr: BTreeSet<BrokerId> = self
            .isr
            .iter()
            .copied()
            .filter(|r| !out.contains(r))
            .collect();
        Some(self.prepare(PendingKind::Shrink(out), &new_isr))
    }

    /// ISR followers that are out of sync now (empty while an AlterPartition is in flight).
    pub fn out_of_sync_replicas(&self, now_ms: i64) -> Vec<BrokerId> {
        if self.pending.is_some() {
            return Vec::new();
        }
        self.isr
            .iter()
            .copied()
            .filter(|r| *r != self.local_id)
            .filter(
                |r| match self.followers.iter().find(|f| f.replica_id == *r) {
                    None => true,
                    Some(f) => !f.is_caught_up(
                        self.leader_log_end,
                        now_ms,
                        self.config.replica_lag_time_max_ms,
                    ),
                },
            )
            .collect()
    }

    fn prepare(&mut self, kind: PendingKind, new_isr: &BTreeSet<BrokerId>) -> AlterIsr {
        assert!(
            self.pending.is_none(),
            "one AlterPartition in flight at a time"
        );
        assert!(
            new_isr.contains(&self.local_id),
            "proposed ISR without the leader"
        );
        let request = AlterIsr {
            request_id: self.take_request_id(),
            leader_id: self.local_id,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            new_isr: new_isr
                .iter()
                .map(|b| IsrMember {
                    broker_id: *b,
                    broker_epoch: if *b == self.local_id {
                        self.local_broker_epoch
                    } else {
                        self.followers
                            .iter()
                            .find(|f| f.replica_id == *b)
                            .and_then(|f| f.broker_epoch)
                            .unwrap_or(-1)
                    },
                })
                .collect(),
        };
        self.pending = Some(Pending {
            kind,
            request: request.clone(),
            awaiting_metadata: false,
        });
        request
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// The controller's answer to the AlterPartition with `request_id`. Mirrors
    /// `Partition.submitAlterPartition`'s completion, `handleAlterPartitionUpdate` and
    /// `handleAlterPartitionError`.
    pub fn on_alter_partition_response(
        &mut self,
        request_id: u64,
        result: Result<AlterPartitionOk, AlterPartitionError>,
        now_ms: i64,
    ) -> AlterOutcome {
        let Some(pending) = self.pending.as_mut() else {
            return AlterOutcome::Ignored;
        };
        if pending.request.request_id != request_id || pending.awaiting_metadata {
            return AlterOutcome::Ignored;
        }
        let outcome = match result {
            Ok(ok) => {
                let valid = ok.isr.contains(&self.local_id)
                    && ok.isr.iter().all(|m| self.replicas.contains(m))
                    && ok.isr.len() <= MAX_REPLICAS;
                if ok.leader_epoch != self.leader_epoch
                    || ok.partition_epoch < self.partition_epoch
                    || !valid
                {
                    pending.awaiting_metadata = true;
                    AlterOutcome::AwaitMetadata
                } else {
                    self.isr = ok.isr.iter().copied().collect();
                    self.partition_epoch = ok.partition_epoch;
                    self.pending = None;
                    AlterOutcome::Committed {
                        high_watermark: self.maybe_increment_hw(now_ms),
                    }
                }
            }
            Err(
                AlterPartitionError::OperationNotAttempted | AlterPartitionError::IneligibleReplica,
            ) => {
                self.pending = None;
                AlterOutcome::Reverted {
                    high_watermark: self.maybe_increment_hw(now_ms),
                }
            }
            Err(AlterPartitionError::Retriable(_)) => {
                let id = self.take_request_id();
                let Some(pending) = self.pending.as_mut() else {
                    unreachable!("pending checked above")
                };
                pending.request.request_id = id;
                AlterOutcome::Resend(pending.request.clone())
            }
            Err(_) => {
                pending.awaiting_metadata = true;
                AlterOutcome::AwaitMetadata
            }
        };
        self.check_invariants();
        outcome
    }

    /// Before an append (`Partition.appendRecordsToLeader`): `acks=all` with the committed ISR
    /// below the effective min ISR is refused with nothing written.
    pub fn check_before_append(&self, acks: Acks) -> Result<(), NotEnoughReplicas> {
        let min_isr = self.effective_min_isr();
        if acks == Acks::All && self.isr.len() < min_isr {
            return Err(NotEnoughReplicas {
                isr_size: self.isr.len(),
                min_isr,
            });
        }
        Ok(())
    }

    /// After an `acks=all` append ending at `required_offset` (last offset + 1) made in
    /// `append_leader_epoch` (`Partition.checkEnoughReplicasReachOffset`): acknowledge once the
    /// HW reaches it, unless the maximal ISR is below min ISR by then. An append made before
    /// this broker's current unbroken leadership began may have been truncated since (the
    /// offset may now hold other data): NOT_LEADER_OR_FOLLOWER (design §2.4). An epoch bump
    /// while leading keeps the log, so those appends are acknowledged once committed, as
    /// Kafka does (failing them made clients retry batches that later batches had already
    /// implicitly acknowledged, so librdkafka reported them delivered without an offset).
    pub fn check_after_append(
        &self,
        required_offset: i64,
        append_leader_epoch: i32,
    ) -> AckDecision {
        if append_leader_epoch < self.leadership_first_epoch
            || append_leader_epoch > self.leader_epoch
        {
            return AckDecision::NotLeader;
        }
        if self.high_watermark < required_offset {
            return AckDecision::Wait;
        }
        if self.maximal_isr().len() >= self.effective_min_isr() {
            AckDecision::Ack
        } else {
            AckDecision::NotEnoughReplicasAfterAppend
        }
    }

    /// Mirrors `Partition.maybeIncrementLeaderHW`: no advance while the committed ISR is below
    /// the effective min ISR (KIP-966); otherwise the HW is the minimum of the leader's durable
    /// end and the log end of every maximal-ISR member and of every caught-up, ISR-eligible
    /// follower outside it. It only grows. Returns the new HW when it moved.
    fn maybe_increment_hw(&mut self, now_ms: i64) -> Option<i64> {
        #[cfg(test)]
        let under_min_isr = self.is_under_min_isr() && !self.bug_ignore_min_isr;
        #[cfg(not(test))]
        let under_min_isr = self.is_under_min_isr();
        if under_min_isr {
            return None;
        }
        let maximal = self.maximal_isr();
        let mut candidate = self.leader_durable_end;
        for f in &self.followers {
            let counts = maximal.contains(&f.replica_id)
                || (f.is_caught_up(
                    self.leader_log_end,
                    now_ms,
                    self.config.replica_lag_time_max_ms,
                ) && self.is_isr_eligible(f));
            if counts && f.log_end < candidate {
                candidate = f.log_end;
            }
        }
        if candidate <= self.high_watermark {
            return None;
        }
        assert!(
            candidate <= self.leader_durable_end,
            "HW past the leader's durable end"
        );
        for m in &maximal {
            if *m != self.local_id {
                let f = self.followers.iter().find(|f| f.replica_id == *m);
                assert!(
                    f.is_some_and(|f| f.log_end >= candidate),
                    "HW {candidate} past maximal-ISR member {m}'s durable end"
                );
            }
        }
        self.high_watermark = candidate;
        Some(candidate)
    }

    /// Mirrors `Partition.isReplicaIsrEligible` (KRaft): registered, not fenced, not in
    /// controlled shutdown, and the fetch's broker epoch is -1 or the registered one.
    fn is_isr_eligible(&self, f: &FollowerProgress) -> bool {
        let Some(registered) = f.status.broker_epoch else {
            return false;
        };
        let epoch_ok = matches!(f.broker_epoch, Some(e) if e == -1 || e == registered);
        !f.status.fenced && !f.status.in_controlled_shutdown && epoch_ok
    }

    fn check_invariants(&self) {
        assert!(self.replicas.len() <= MAX_REPLICAS);
        assert!(
            self.isr.contains(&self.local_id),
            "committed ISR lost the leader"
        );
        assert!(
            self.isr.iter().all(|m| self.replicas.contains(m)),
            "committed ISR not within replicas"
        );
        assert_eq!(self.followers.len() + 1, self.replicas.len());
        assert!(
            self.high_watermark <= self.leader_durable_end,
            "HW past the leader's durable end"
        );
        assert!(self.leader_durable_end <= self.leader_log_end);
        if let Some(p) = &self.pending {
            assert_eq!(p.request.leader_epoch, self.leader_epoch);
            if let PendingKind::Expand(r) = p.kind {
                assert!(self.replicas.contains(&r) && !self.isr.contains(&r));
            }
        }
    }

    /// `min(min.insync.replicas, replication factor)` (`Partition.effectiveMinIsr`).
    pub fn effective_min_isr(&self) -> usize {
        self.config.min_insync_replicas.min(self.replicas.len())
    }

    /// Committed ISR below the effective min ISR (`Partition.isUnderMinIsr`).
    pub fn is_under_min_isr(&self) -> bool {
        self.isr.len() < self.effective_min_isr()
    }

    /// The committed ISR plus a pending expansion (KIP-497 `maximalIsr`); a pending shrink
    /// still counts the members it removes.
    pub fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut m = self.isr.clone();
        if let Some(Pending {
            kind: PendingKind::Expand(r),
            ..
        }) = &self.pending
        {
            m.insert(*r);
        }
        m
    }

    pub fn committed_isr(&self) -> &BTreeSet<BrokerId> {
        &self.isr
    }

    /// The AlterPartition in flight, to resend after a controller change.
    pub fn pending_alter_isr(&self) -> Option<&AlterIsr> {
        self.pending.as_ref().map(|p| &p.request)
    }

    pub fn is_alter_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn leader_epoch_start_offset(&self) -> i64 {
        self.leader_epoch_start_offset
    }

    pub fn replicas(&self) -> &[BrokerId] {
        &self.replicas
    }

    pub fn config(&self) -> LeaderConfig {
        self.config
    }

    pub fn follower(&self, replica_id: BrokerId) -> Option<&FollowerProgress> {
        self.followers.iter().find(|f| f.replica_id == replica_id)
    }

    pub fn followers(&self) -> &[FollowerProgress] {
        &self.followers
    }
}
