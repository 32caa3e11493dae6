//! Idempotent-producer state per partition: for each producer id the current epoch and the
//! last five batches (sequence range and offsets), so that a retried batch is answered with
//! its original offsets and a gap is refused. Persisted as a snapshot at an offset; on open
//! the log replays batches after the snapshot (see docs/format.md).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::BatchHeader;
use crate::error::{LogError, ProducerError, Result};
use crate::fsutil;

/// How many batches per producer are remembered for deduplication (Kafka: 5, matching
/// `max.in.flight.requests.per.connection` <= 5 for idempotent producers).
pub const BATCHES_REMEMBERED: usize = 5;
pub const SNAPSHOT_FILE: &str = "producer-state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
    pub last_append_ms: i64,
}

/// The verdict for an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets, write nothing.
    Duplicate(BatchMeta),
}

fn in_sequence(last_seq: i32, next_first_seq: i32) -> bool {
    next_first_seq == last_seq.wrapping_add(1) || (last_seq == i32::MAX && next_first_seq == 0)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
}

/// Test-only negative control (set by the broker from `HOLDFAST_UNSAFE_NO_DEDUP=1`): when on,
/// `Log::append_as_leader` appends an idempotent producer's retried batch again instead of
/// answering with the original offsets, i.e. deduplication is off. Off by default.
static UNSAFE_NO_DEDUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_unsafe_no_dedup(on: bool) {
    UNSAFE_NO_DEDUP.store(on, std::sync::atomic::Ordering::SeqCst);
}

pub fn unsafe_no_dedup() -> bool {
    UNSAFE_NO_DEDUP.load(std::sync::atomic::Ordering::SeqCst)
}

impl ProducerState {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }
    pub fn len(&self) -> usize {
        self.producers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what to do with a producer's batch (Kafka's ProducerAppendInfo rules).
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, ProducerError> {
        if !h.has_producer_id() || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // No state (new producer, or its state expired or was removed by retention):
            // Kafka accepts any sequence here.
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(ProducerError::FencedEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current_epoch: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            if h.base_sequence != 0 {
                return Err(ProducerError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    sequence: h.base_sequence,
                    expected: 0,
                });
            }
            return Ok(SequenceCheck::Append);
        }
        let last_seq = h.last_sequence();
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        let current_last = entry.batches.back().map(|b| b.last_seq).unwrap_or(-1);
        if entry.batches.is_empty() || in_sequence(current_last, h.base_sequence) {
            return Ok(SequenceCheck::Append);
        }
        Err(ProducerError::OutOfOrderSequence {
            producer_id: h.producer_id,
            sequence: h.base_sequence,
            expected: current_last.wrapping_add(1),
        })
    }

    /// Records a batch that was written (header carries its assigned base offset).
    pub fn record(&mut self, h: &BatchHeader, append_ms: i64) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_append_ms: append_ms,
            });
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(append_ms);
        if h.base_sequence >= 0 && !h.is_control() {
            if entry.batches.len() == BATCHES_REMEMBERED {
                entry.batches.pop_front();
            }
            entry.batches.push_back(BatchMeta {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                first_offset: h.base_offset,
                last_offset: h.last_offset(),
            });
        }
    }

    /// Forgets producers idle for longer than `expiration_ms` (`producer.id.expiration.ms`).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_append_ms) < expiration_ms);
        before - self.producers.len()
    }

    /// Drops batches at or past `end_offset` (after a truncation).
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        for e in self.producers.values_mut() {
            e.batches.retain(|b| b.last_offset < end_offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    /// Text snapshot of the state as of `offset` (every batch below it applied).
    pub(crate) fn encode(&self, offset: i64) -> String {
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut s = format!("0\n{offset}\n{}\n", ids.len());
        for id in ids {
            let e = &self.producers[&id];
            s.push_str(&format!(
                "{id} {} {} {}",
                e.epoch,
                e.last_append_ms,
                e.batches.len()
            ));
            for b in &e.batches {
                s.push_str(&format!(
                    " {} {} {} {}",
                    b.first_seq, b.last_seq, b.first_offset, b.last_offset
                ));
            }
            s.push('\n');
        }
        fsutil::with_crc_line(&s)
    }

    pub(crate) fn decode(text: &str) -> Option<(ProducerState, i64)> {
        let body = fsutil::check_crc_line(text)?;
        let mut lines = body.lines();
        if lines.next()? != "0" {
            return None;
        }
        let offset: i64 = lines.next()?.parse().ok()?;
        let count: usize = lines.next()?.parse().ok()?;
        let mut producers = HashMap::new();
        for line in lines.take(count) {
            let nums: Vec<i64> = line
                .split(' ')
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if nums.len() < 4 {
                return None;
            }
            let n = usize::try_from(nums[3]).ok()?;
            if n > BATCHES_REMEMBERED || nums.len() != 4 + 4 * n {
                return None;
            }
            let batches = (0..n)
                .map(|i| BatchMeta {
                    first_seq: nums[4 + 4 * i] as i32,
                    last_seq: nums[5 + 4 * i] as i32,
                    first_offset: nums[6 + 4 * i],
                    last_offset: nums[7 + 4 * i],
                })
                .collect();
            producers.insert(
                nums[0],
                ProducerEntry {
                    epoch: nums[1] as i16,
                    last_append_ms: nums[2],
                    batches,
                },
            );
        }
        (producers.len() == count).then_some((ProducerState { producers }, offset))
    }

    pub(crate) fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_FILE)
    }

    pub(crate) fn write_snapshot(&self, dir: &Path, offset: i64) -> Result<()> {
        fsutil::write_atomic(&Self::snapshot_path(dir), self.encode(offset).as_bytes())
    }

    /// Loads the snapshot, or `None` when absent or damaged (the caller replays the log).
    pub(crate) fn read_snapshot(dir: &Path) -> Result<Option<(ProducerState, i64)>> {
        let path = Self::snapshot_path(dir);
        match std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned()) {
            Ok(t) => {
                let decoded = Self::decode(&t);
                if decoded.is_none() {
                    tracing::warn!(path = %path.display(), "producer state snapshot damaged; rebuilding from the log");
                }
                Ok(decoded)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(path, e)),
        }
    }
}
