//! Holdfast's durable partition log.
//!
//! One [`Log`] per partition directory: segments of Kafka v2 record batches stored exactly as
//! produced, a sparse offset and time index per segment (a cache, rebuilt from the segment
//! when missing or damaged), a leader-epoch cache, producer (idempotence) state, and a
//! checkpoint of the log start offset and recovery point. Appends are made durable by the
//! broker-wide group-commit [`Flusher`]; callers wait on [`DurableWatch`].
//!
//! Architecture invariant: this crate does no network I/O and knows nothing of the Kafka
//! wire protocol beyond the record batch format. Time is always passed in (`now_ms`).

pub mod batch;
pub mod compaction;
pub mod config;
pub mod dump;
pub mod epoch;
pub mod error;
pub mod flush;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod handles;
mod index;
mod log;
pub mod producer;
mod segment;
pub mod testkit;

pub use compaction::{CompactionOutput, CompactionPlan, CompactionReport};
pub use config::{CleanupPolicy, FlushPolicy, LogConfig, TimestampType};
pub use epoch::EpochEntry;
pub use error::{InvalidBatch, LogError, ProducerError, Result};
pub use flush::{
    inject_fsync_failures, DurableWait, DurableWatch, FlushStats, Flusher, ROUND_LATENCY_BOUNDS_US,
};
pub use handles::{open_segment_handles, set_open_segment_limit};
pub use log::{AppendOutcome, Corruption, Log, ReadSlice, RecoveryReport, RetentionReport};
pub use producer::{AbortedTxn, MarkerKind};
