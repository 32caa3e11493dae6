//! Typed errors of the log crate, each mapped to the Kafka error code a broker sends for it.

use std::io;
use std::path::PathBuf;

/// Kafka error codes the log layer produces. Kept here (not in the codec crate) so that the
/// log has no protocol dependency; the values are Kafka's and never change.
pub mod kafka_code {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_RECORD: i16 = 87;
}

/// Why a batch offered for append was refused. Nothing of the request is written when any
/// batch of it is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvalidBatch {
    #[error("corrupt batch: {0}")]
    Corrupt(String),
    #[error("batch of {size_bytes} bytes exceeds max.message.bytes {limit_bytes}")]
    TooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("record list of {size_bytes} bytes exceeds the segment size {limit_bytes}")]
    RecordListTooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("timestamp {timestamp_ms} out of the allowed range around {now_ms}")]
    InvalidTimestamp { timestamp_ms: i64, now_ms: i64 },
    #[error("message format magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
}

impl InvalidBatch {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            InvalidBatch::Corrupt(_) => kafka_code::CORRUPT_MESSAGE,
            InvalidBatch::TooLarge { .. } => kafka_code::MESSAGE_TOO_LARGE,
            InvalidBatch::RecordListTooLarge { .. } => kafka_code::RECORD_LIST_TOO_LARGE,
            InvalidBatch::InvalidRecord(_) => kafka_code::INVALID_RECORD,
            InvalidBatch::InvalidTimestamp { .. } => kafka_code::INVALID_TIMESTAMP,
            InvalidBatch::UnsupportedMagic(_) => kafka_code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
        }
    }
}

/// Producer-state (idempotence) refusals.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProducerError {
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current_epoch}")]
    FencedEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    #[error("producer {producer_id}: sequence {sequence} out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        sequence: i32,
        expected: i32,
    },
    #[error("producer {producer_id}: unknown producer with sequence {sequence} (not 0)")]
    UnknownProducer { producer_id: i64, sequence: i32 },
    #[error("producer {producer_id}: invalid transaction state: {reason}")]
    InvalidTxnState {
        producer_id: i64,
        reason: &'static str,
    },
}

impl ProducerError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            ProducerError::FencedEpoch { .. } => kafka_code::INVALID_PRODUCER_EPOCH,
            ProducerError::OutOfOrderSequence { .. } => kafka_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerError::UnknownProducer { .. } => kafka_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerError::InvalidTxnState { .. } => kafka_code::INVALID_TXN_STATE,
        }
    }
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    InvalidBatch(#[from] InvalidBatch),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("partition is offline: {0}")]
    Offline(String),
    #[error("corrupt data at offset {offset} in {path} (position {position}): {reason}")]
    Corruption {
        path: PathBuf,
        offset: i64,
        position: u64,
        reason: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl LogError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// The Kafka error code a broker answers with.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            LogError::InvalidBatch(e) => e.kafka_error_code(),
            LogError::Producer(e) => e.kafka_error_code(),
            LogError::OffsetOutOfRange { .. } => kafka_code::OFFSET_OUT_OF_RANGE,
            LogError::Io { .. } | LogError::Offline(_) | LogError::Corruption { .. } => {
                kafka_code::KAFKA_STORAGE_ERROR
            }
            LogError::InvalidArgument(_) => kafka_code::INVALID_RECORD,
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
