//! Holdfast's partition replication state machine, sans-IO (issue #6, design
//! `docs/design/replication.md` §2).
//!
//! - [`LeaderState`]: one partition led by this broker. Follower progress from replica fetches,
//!   the high watermark, ISR shrink/expand decisions with one AlterPartition in flight (the
//!   "maximal ISR" of KIP-497), and the `acks` checks of produce.
//! - [`FollowerState`]: one partition this broker follows. Fetch position, `last_fetched_epoch`,
//!   truncation decisions on a diverging epoch (KIP-320), the follower high watermark.
//! - [`truncation`]: pure functions over epoch caches (KIP-101/279): `end_offset_for`,
//!   `truncation_offset`, the leader-side `diverging_epoch` check.
//!
//! Every rule mirrors a named method of Apache Kafka (`core/.../cluster/Partition.scala`,
//! `Replica.scala`, `AbstractFetcherThread.scala`, `LeaderEpochFileCache.java`); where Holdfast
//! differs it says so. `docs/replication-rules.md` lists them.
//!
//! Holdfast's durability rule: a follower fetches at offset N only once N is durable locally,
//! so the fetch offset a leader records for a follower is that follower's *durable* end, and
//! the leader counts its own durable end (not its log end) in the high watermark. Hence every
//! offset below the high watermark is fsynced on every member of the ISR.
//!
//! Architecture invariant: no I/O, no clock, no async runtime; time is a `now_ms` argument.

pub mod follower;
pub mod leader;
pub mod truncation;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use follower::{
    FetchPosition, FetchResult, FollowerAction, FollowerRegistration, FollowerState,
};
pub use leader::{
    AckDecision, Acks, AlterIsr, AlterOutcome, AlterPartitionError, AlterPartitionOk, BecomeLeader,
    BrokerStatus, FetchOutcome, FollowerFetch, FollowerProgress, IsrMember, LeaderConfig,
    LeaderRegistration, LeaderState, LocalLogView, NotEnoughReplicas, RegistrationError,
    ReplicaError,
};
pub use truncation::{
    diverging_epoch, end_offset_for, out_of_range_action, truncation_offset, EpochEndOffset,
    FetchPositionError, OutOfRangeAction, Truncation,
};

/// A broker (replica) id, as in Kafka.
pub type BrokerId = i32;

/// Upper bound on a partition's replica set. Kafka has none; a replication factor beyond this is
/// refused as a registration error, so every per-partition collection here is bounded.
pub const MAX_REPLICAS: usize = 32;

/// Kafka error codes produced here.
pub mod codes {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const INVALID_UPDATE_VERSION: i16 = 95;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const INELIGIBLE_REPLICA: i16 = 107;
    pub const NEW_LEADER_ELECTED: i16 = 108;
}
