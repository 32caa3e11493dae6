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
    /// Offset of this producer's first batch in its ongoing transaction on this partition
    /// (`None` when no transaction is open here).
    pub txn_first_offset: Option<i64>,
}

/// An aborted transaction on this partition: the producer's records in
/// `[first_offset, last_offset]` are invisible to `read_committed` consumers
/// (`last_offset` is the offset of the ABORT marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// A transaction whose marker is written but may not be below the high watermark yet: it
/// stays "unstable" (holds the last stable offset back) until the marker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompletedTxn {
    first_offset: i64,
    marker_offset: i64,
}

/// The kind of transaction marker (control record key type): 0 abort, 1 commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Abort,
    Commit,
}

impl MarkerKind {
    pub fn from_control_key(key: &[u8]) -> Option<MarkerKind> {
        if key.len() < 4 {
            return None;
        }
        match i16::from_be_bytes([key[2], key[3]]) {
            0 => Some(MarkerKind::Abort),
            1 => Some(MarkerKind::Commit),
            _ => None,
        }
    }
    pub fn control_key(self) -> [u8; 4] {
        let t: i16 = match self {
            MarkerKind::Abort => 0,
            MarkerKind::Commit => 1,
        };
        let t = t.to_be_bytes();
        [0, 0, t[0], t[1]]
    }
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
    /// Aborted transactions whose marker is at or above the log start, by marker offset.
    aborted: VecDeque<AbortedTxn>,
    /// Completed transactions not yet known to be below the high watermark (memory only:
    /// after a restart everything in the log is below it).
    completed: VecDeque<CompletedTxn>,
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
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.producers.iter()
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
        if !h.is_transactional() && entry.txn_first_offset.is_some() {
            return Err(ProducerError::InvalidTxnState {
                producer_id: h.producer_id,
                reason: "a non-transactional batch while its transaction is open",
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

    /// The producer's entry, created if new, with its epoch and last append time moved
    /// forward by `h` (a newer epoch forgets the batches of the older one).
    fn entry_for(&mut self, h: &BatchHeader, append_ms: i64) -> &mut ProducerEntry {
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_append_ms: append_ms,
                txn_first_offset: None,
            });
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(append_ms);
        entry
    }

    /// Records a batch that was written (header carries its assigned base offset).
    pub fn record(&mut self, h: &BatchHeader, append_ms: i64) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self.entry_for(h, append_ms);
        if h.is_transactional() && !h.is_control() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(h.base_offset);
        }
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

    /// Records a transaction marker (control batch) written at `h.base_offset`: closes the
    /// producer's open transaction here; an ABORT makes its records invisible to
    /// `read_committed`. A marker for a producer with nothing open here changes nothing but
    /// the epoch.
    pub fn record_marker(&mut self, h: &BatchHeader, kind: MarkerKind, append_ms: i64) {
        let entry = self.entry_for(h, append_ms);
        let Some(first_offset) = entry.txn_first_offset.take() else {
            return;
        };
        let marker_offset = h.base_offset;
        assert!(first_offset < marker_offset, "a marker follows its data");
        if kind == MarkerKind::Abort {
            if let Some(last) = self.aborted.back() {
                assert!(
                    last.last_offset < marker_offset,
                    "markers only move forward"
                );
            }
            self.aborted.push_back(AbortedTxn {
                producer_id: h.producer_id,
                first_offset,
                last_offset: marker_offset,
            });
        }
        self.completed.push_back(CompletedTxn {
            first_offset,
            marker_offset,
        });
    }

    /// Checks a transaction marker before it is written: an older epoch is fenced.
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), ProducerError> {
        match self.producers.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(ProducerError::FencedEpoch {
                producer_id,
                epoch,
                current_epoch: e.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// The first offset that `read_committed` consumers may not pass: the start of the
    /// oldest open transaction, or of a completed one whose marker is not below
    /// `high_watermark` yet. Forgets completed transactions below it.
    pub fn first_unstable_offset(&mut self, high_watermark: i64) -> Option<i64> {
        // Bounded by the number of completed transactions.
        while self
            .completed
            .front()
            .is_some_and(|c| c.marker_offset < high_watermark)
        {
            self.completed.pop_front();
        }
        let open = self
            .producers
            .values()
            .filter_map(|e| e.txn_first_offset)
            .min();
        let completed = self.completed.iter().map(|c| c.first_offset).min();
        match (open, completed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Producers with a transaction open here: (producer id, epoch, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i16, i64)> {
        let mut v: Vec<_> = self
            .producers
            .iter()
            .filter_map(|(id, e)| e.txn_first_offset.map(|f| (*id, e.epoch, f)))
            .collect();
        v.sort_unstable_by_key(|x| x.2);
        v
    }

    /// Aborted transactions overlapping `[from, upper_bound)`: those whose marker is at or
    /// after `from` and whose first record is before `upper_bound` (what a Fetch returns).
    pub fn aborted_between(&self, from: i64, upper_bound: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(|a| a.first_offset < upper_bound)
            .copied()
            .collect()
    }

    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }

    /// Forgets aborted transactions whose marker is below the new log start.
    pub fn truncate_from_start(&mut self, log_start_offset: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start_offset)
        {
            self.aborted.pop_front();
        }
    }

    /// Forgets producers idle for longer than `expiration_ms` (`producer.id.expiration.ms`);
    /// a producer with an open transaction is kept (Kafka does the same).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some() || now_ms.saturating_sub(e.last_append_ms) < expiration_ms
        });
        before - self.producers.len()
    }

    /// Drops what is at or past `end_offset` (the snapshot-load path; a truncation of the log
    /// rebuilds the whole state from the log instead, since a removed marker reopens a
    /// transaction).
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        for e in self.producers.values_mut() {
            e.batches.retain(|b| b.last_offset < end_offset);
            if e.txn_first_offset.is_some_and(|f| f >= end_offset) {
                e.txn_first_offset = None;
            }
        }
        self.producers
            .retain(|_, e| !e.batches.is_empty() || e.txn_first_offset.is_some());
        self.aborted.retain(|a| a.last_offset < end_offset);
        self.completed.retain(|c| c.marker_offset < end_offset);
    }

    /// Text snapshot of the state as of `offset` (every batch below it applied).
    pub(crate) fn encode(&self, offset: i64) -> String {
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut s = format!("1\n{offset}\n{}\n", ids.len());
        for id in ids {
            let e = &self.producers[&id];
            s.push_str(&format!(
                "{id} {} {} {} {}",
                e.epoch,
                e.last_append_ms,
                e.txn_first_offset.unwrap_or(-1),
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
        s.push_str(&format!("{}\n", self.aborted.len()));
        for a in &self.aborted {
            s.push_str(&format!(
                "{} {} {}\n",
                a.producer_id, a.first_offset, a.last_offset
            ));
        }
        fsutil::with_crc_line(&s)
    }

    pub(crate) fn decode(text: &str) -> Option<(ProducerState, i64)> {
        let body = fsutil::check_crc_line(text)?;
        let mut lines = body.lines();
        // Version 0 had no transaction state; version 1 adds the open transaction's first
        // offset per producer and the aborted transactions.
        let version: u8 = match lines.next()? {
            "0" => 0,
            "1" => 1,
            _ => return None,
        };
        let fixed = if version == 0 { 4 } else { 5 };
        let offset: i64 = lines.next()?.parse().ok()?;
        let count: usize = lines.next()?.parse().ok()?;
        let mut producers = HashMap::new();
        for _ in 0..count {
            let line = lines.next()?;
            let nums: Vec<i64> = line
                .split(' ')
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if nums.len() < fixed {
                return None;
            }
            let n = usize::try_from(nums[fixed - 1]).ok()?;
            if n > BATCHES_REMEMBERED || nums.len() != fixed + 4 * n {
                return None;
            }
            let batches = (0..n)
                .map(|i| BatchMeta {
                    first_seq: nums[fixed + 4 * i] as i32,
                    last_seq: nums[fixed + 1 + 4 * i] as i32,
                    first_offset: nums[fixed + 2 + 4 * i],
                    last_offset: nums[fixed + 3 + 4 * i],
                })
                .collect();
            let txn_first_offset = (version == 1 && nums[3] >= 0).then_some(nums[3]);
            producers.insert(
                nums[0],
                ProducerEntry {
                    epoch: nums[1] as i16,
                    last_append_ms: nums[2],
                    txn_first_offset,
                    batches,
                },
            );
        }
        if producers.len() != count {
            return None;
        }
        let mut aborted = VecDeque::new();
        if version == 1 {
            let n: usize = lines.next()?.parse().ok()?;
            for _ in 0..n {
                let nums: Vec<i64> = lines
                    .next()?
                    .split(' ')
                    .map(|v| v.parse().ok())
                    .collect::<Option<_>>()?;
                if nums.len() != 3 {
                    return None;
                }
                aborted.push_back(AbortedTxn {
                    producer_id: nums[0],
                    first_offset: nums[1],
                    last_offset: nums[2],
                });
            }
        }
        Some((
            ProducerState {
                producers,
                aborted,
                completed: VecDeque::new(),
            },
            offset,
        ))
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
