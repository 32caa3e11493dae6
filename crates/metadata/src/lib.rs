//! Holdfast's cluster metadata, sans-IO: the replicated metadata image, the records that
//! change it, and the controller's decisions (replica placement, leader elections, ISR and
//! ELR changes, AlterPartition validation, broker heartbeats and fencing).
//!
//! The quorum (openraft glue, the metadata log on disk, the controller RPC) lives elsewhere
//! and treats this crate as its state machine: the active controller turns requests into
//! [`Record`]s with [`Controller`], the quorum commits them, and every node applies them in
//! log order with [`MetadataImage::apply`].
//!
//! Architecture invariant: no I/O, no clock, no runtime: time is a `now_ms` argument and
//! randomness comes from a seeded generator owned by the controller.
//! Architecture invariant: `MetadataImage::apply` is deterministic and validates every
//! record again; a record that no longer applies is a [`Rejected`] no-op, never a panic.
//! See docs/metadata.md.

pub mod controller;
pub mod image;
pub mod placement;
pub mod records;

pub use controller::{
    codes, Controller, ControllerConfig, ControllerError, ControllerRequest, ControllerResponse,
    ElectionType, HeartbeatReply, IsrMember, NewTopic,
};
pub use image::{
    BrokerReg, ChangedPartition, Delta, LocalChange, MetadataImage, PartitionReg, Rejected,
    TopicReg, NO_LEADER,
};
pub use records::{
    ConfigResource, DecodeError, Endpoint, LeaderRecovery, PartitionChange, Record, TopicId,
};
