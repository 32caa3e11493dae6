//! The partition log: segments, appends, reads, recovery, retention, truncation.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader, ProduceRules};
use crate::config::{FlushPolicy, LogConfig, TimestampType};
use crate::epoch::{EpochCache, EpochEntry};
use crate::error::{InvalidBatch, LogError, Result};
use crate::flush::{DurableWatch, Flusher};
use crate::fsutil;
use crate::producer::{AbortedTxn, MarkerKind, ProducerState, SequenceCheck};
use crate::segment::{self, ScanFault, Segment};

const CHECKPOINT_FILE: &str = "partition-checkpoint";

/// The marker kind of a control batch (its single record's key), if well formed.
fn marker_kind(h: &BatchHeader, b: &[u8]) -> Option<MarkerKind> {
    let mut kind = None;
    let _ = batch::for_each_stored_record(h, b, |r| {
        if kind.is_none() {
            kind = r.key.and_then(MarkerKind::from_control_key);
        }
        Ok(())
    });
    kind
}
/// `producer.id.expiration.ms` default (Kafka: one day).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 3600 * 1000;
/// How often `tick` rewrites the recovery checkpoint.
const CHECKPOINT_INTERVAL_MS: i64 = 10_000;

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_offset: i64,
    pub last_offset: i64,
    /// The broker's append time for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// Wait until `durable().durable_end() >= durable_end` before acknowledging.
    pub durable_end: i64,
    /// The request repeated a batch already in the log (idempotent retry): nothing written.
    pub duplicate: bool,
}

/// Whole batches to send, as a file range: read it outside any lock (or sendfile it).
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub file: Option<Arc<File>>,
    pub position: u64,
    pub len: usize,
    /// Base offset of the first batch (may be below the offset asked for).
    pub first_batch_offset: i64,
}

impl ReadSlice {
    pub fn empty() -> ReadSlice {
        ReadSlice {
            file: None,
            position: 0,
            len: 0,
            first_batch_offset: -1,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn read_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; self.len];
        if let Some(f) = &self.file {
            f.read_exact_at(&mut b, self.position)?;
        }
        Ok(b)
    }
}

/// A corrupt batch found below the recovery point (or followed by valid data): the log does
/// not serve past it until an operator truncates or a replica repairs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub offset: i64,
    pub segment: PathBuf,
    pub position: u64,
    pub reason: String,
}

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub segments: usize,
    /// Bytes scanned with CRC validation (the unflushed tail).
    pub bytes_validated: u64,
    /// A torn or corrupt tail was cut: (offset, bytes discarded, reason).
    pub truncated: Option<(i64, u64, String)>,
    pub corruption: Option<Corruption>,
    pub log_end_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    log_start_offset: i64,
    recovery_point: i64,
    clean: bool,
}

fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = dir.join(CHECKPOINT_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(path, e)),
    };
    let parsed = fsutil::check_crc_line(&text).and_then(|body| {
        let mut l = body.lines();
        if l.next()? != "0" {
            return None;
        }
        let log_start_offset = l.next()?.strip_prefix("log_start_offset ")?.parse().ok()?;
        let recovery_point = l.next()?.strip_prefix("recovery_point ")?.parse().ok()?;
        let clean = l.next()?.strip_prefix("clean ")? == "1";
        Some(Checkpoint {
            log_start_offset,
            recovery_point,
            clean,
        })
    });
    if parsed.is_none() {
        // Written atomically, so damage means the disk lied: recover conservatively.
        tracing::warn!(path = %path.display(), "partition checkpoint damaged; full recovery scan");
    }
    Ok(parsed)
}

fn write_checkpoint(dir: &Path, c: Checkpoint) -> Result<()> {
    let body = format!(
        "0\nlog_start_offset {}\nrecovery_point {}\nclean {}\n",
        c.log_start_offset,
        c.recovery_point,
        u8::from(c.clean)
    );
    fsutil::write_atomic(
        &dir.join(CHECKPOINT_FILE),
        fsutil::with_crc_line(&body).as_bytes(),
    )
}

/// One partition's log. Not thread-safe by itself: the broker holds it behind a lock and
/// does reads of [`ReadSlice`]s and durability waits outside that lock.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    flusher: Flusher,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    durable: Arc<DurableWatch>,
    epochs: EpochCache,
    producers: ProducerState,
    corruption: Option<Corruption>,
    /// Set when a write failed half-way or fsync failed: appends are refused.
    offline: Option<String>,
    unflushed_messages: u64,
    last_flush_ms: i64,
    last_checkpoint_ms: i64,
    checkpointed_recovery_point: i64,
    /// Closed segments below this offset have been compacted (memory only: after a
    /// restart compaction starts over, which is idempotent).
    cleaned_up_to: i64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from an unclean stop.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        flusher: Flusher,
        now_ms: i64,
    ) -> Result<(Log, RecoveryReport)> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let checkpoint = read_checkpoint(dir)?;
        let clean = checkpoint.is_some_and(|c| c.clean);
        let recovery_point = checkpoint.map(|c| c.recovery_point).unwrap_or(0);
        let mut report = RecoveryReport {
            clean_shutdown: clean,
            ..Default::default()
        };

        let mut bases = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LogError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = segment::parse_file_name(name, segment::LOG_SUFFIX) {
                bases.push(base);
            } else if name.ends_with(".tmp") || name.ends_with(".cleaned") {
                // An interrupted atomic write or compaction: the original is still in place.
                // An interrupted atomic write: the target still holds the previous version.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        // Remove index files whose segment is gone.
        for entry in std::fs::read_dir(dir)
            .map_err(|e| LogError::io(dir, e))?
            .flatten()
        {
            if let Some(base) = entry
                .file_name()
                .to_str()
                .and_then(|n| segment::parse_file_name(n, segment::INDEX_SUFFIX))
            {
                if bases.binary_search(&base).is_err() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }

        let max_batch_bytes =
            (config.segment_bytes.max(config.max_message_bytes as u64)).max(1 << 20) + (1 << 20);
        let mut segments = BTreeMap::new();
        let mut corruption = None;
        let mut cut_from: Option<usize> = None;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment::file_name(base, segment::LOG_SUFFIX));
            let next_base = bases.get(i + 1).copied();
            // Segments wholly below the recovery point were fsynced: trust their framing.
            let validate = !clean && next_base.is_none_or(|nb| nb > recovery_point);
            let (mut seg, fault) = Segment::open(path, base, validate, max_batch_bytes)?;
            if validate {
                report.bytes_validated += seg.size;
            }
            if let Some(prev) = segments.values().last() {
                let prev: &Segment = prev;
                if prev.next_offset() < base && !config.cleanup_policy.compact {
                    tracing::warn!(segment = %seg.path.display(), gap_from = prev.next_offset(), gap_to = base, "offset gap between segments");
                }
                if prev.next_offset() > base {
                    return Err(LogError::Corruption {
                        path: seg.path.clone(),
                        offset: base,
                        position: 0,
                        reason: format!(
                            "segment overlaps the previous one ending at {}",
                            prev.next_offset()
                        ),
                    });
                }
            }
            if let Some(ScanFault {
                position,
                reason,
                followed_by_valid,
            }) = fault
            {
                let offset = seg.next_offset();
                let file_len = seg
                    .file()?
                    .metadata()
                    .map_err(|e| LogError::io(&seg.path, e))?
                    .len();
                let above_recovery_point = validate && offset >= recovery_point;
                if above_recovery_point && !followed_by_valid {
                    // A torn tail: data never reported durable. Cut it and everything after.
                    let discarded = file_len - position;
                    tracing::warn!(segment = %seg.path.display(), offset, discarded, %reason, "truncating torn tail");
                    seg.truncate_to_position(position, offset)?;
                    report.truncated = Some((offset, discarded, reason));
                } else {
                    tracing::error!(segment = %seg.path.display(), offset, position, %reason, "corrupt batch; partition will not serve past it");
                    corruption = Some(Corruption {
                        offset,
                        segment: seg.path.clone(),
                        position,
                        reason,
                    });
                }
                segments.insert(base, seg);
                cut_from = Some(i + 1);
                break;
            }
            segments.insert(base, seg);
        }
        if let Some(from) = cut_from {
            let later = &bases[from..];
            if corruption.is_none() {
                // Later segments follow a torn tail: never durable; remove them.
                for &b in later {
                    let p = dir.join(segment::file_name(b, segment::LOG_SUFFIX));
                    tracing::warn!(segment = %p.display(), "removing segment after a torn tail");
                    std::fs::remove_file(&p).map_err(|e| LogError::io(&p, e))?;
                    let _ = std::fs::remove_file(p.with_extension(segment::INDEX_SUFFIX));
                }
                if !later.is_empty() {
                    fsutil::sync_dir(dir)?;
                }
            }
        }
        if segments.is_empty() {
            let start = checkpoint.map(|c| c.log_start_offset).unwrap_or(0).max(0);
            segments.insert(start, Segment::create(dir, start)?);
            fsutil::sync_dir(dir)?;
        }
        // Closed segments keep only a summary in memory; their entries stay in index files.
        let last_base = segments.keys().next_back().copied();
        for (base, seg) in segments.iter_mut() {
            if Some(*base) != last_base {
                seg.close_entries()?;
            }
        }
        let first_base = segments.keys().next().copied().unwrap_or(0);
        let log_start_offset = checkpoint
            .map(|c| c.log_start_offset)
            .unwrap_or(first_base)
            .max(first_base);
        let log_end = segments
            .values()
            .last()
            .map(|s| s.next_offset())
            .unwrap_or(0);
        report.segments = segments.len();
        report.corruption = corruption.clone();
        report.log_end_offset = log_end;

        let loaded_epochs = EpochCache::load(dir)?;
        let rebuild_epochs = loaded_epochs.is_none();
        let mut epochs = loaded_epochs.unwrap_or_else(|| EpochCache::empty(dir));
        epochs.truncate_from_end(log_end)?;

        let mut log = Log {
            dir: dir.to_path_buf(),
            config,
            flusher,
            segments,
            log_start_offset,
            durable: DurableWatch::new(log_end),
            epochs,
            producers: ProducerState::default(),
            corruption,
            offline: None,
            unflushed_messages: 0,
            last_flush_ms: now_ms,
            last_checkpoint_ms: now_ms,
            checkpointed_recovery_point: log_end,
            cleaned_up_to: log_start_offset,
        };
        // Everything that survived recovery is now fsynced: make it durable before serving.
        log.sync_all_segments()?;
        log.rebuild_producer_state()?;
        if rebuild_epochs {
            log.rebuild_epochs()?;
        }
        // From here a crash is an unclean stop.
        write_checkpoint(
            dir,
            Checkpoint {
                log_start_offset,
                recovery_point: log_end,
                clean: false,
            },
        )?;
        Ok((log, report))
    }

    fn max_batch_bytes(&self) -> u64 {
        (self
            .config
            .segment_bytes
            .max(self.config.max_message_bytes as u64))
        .max(1 << 20)
            + (1 << 20)
    }

    fn sync_all_segments(&self) -> Result<()> {
        for s in self.segments.values() {
            s.file()?
                .sync_data()
                .map_err(|e| LogError::io(&s.path, e))?;
        }
        Ok(())
    }

    fn rebuild_producer_state(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        let (mut state, from) = match ProducerState::read_snapshot(&self.dir)? {
            Some((s, at)) if at <= end && at >= self.log_start_offset => (s, at),
            _ => (ProducerState::default(), self.log_start_offset),
        };
        state.truncate_from_end(end);
        for seg in self.segments.values() {
            if seg.next_offset() <= from {
                continue;
            }
            let mut pos = match seg.find(from)? {
                Some((p, _)) => p,
                None => continue,
            };
            while pos < seg.size {
                let h = seg.header_at(pos)?;
                if h.base_offset >= from {
                    if h.is_control() {
                        let b = seg.read_batch(pos, &h)?;
                        if let Some(kind) = marker_kind(&h, &b) {
                            state.record_marker(&h, kind, h.max_timestamp);
                        }
                    } else {
                        state.record(&h, h.max_timestamp);
                    }
                }
                pos += h.total_size() as u64;
            }
        }
        self.producers = state;
        Ok(())
    }

    /// Rebuilds the leader-epoch cache from the epochs stamped in the batches.
    fn rebuild_epochs(&mut self) -> Result<()> {
        let mut found = Vec::new();
        let mut last = -1;
        for seg in self.segments.values() {
            let mut pos = 0;
            while pos < seg.size {
                let h = seg.header_at(pos)?;
                if h.partition_leader_epoch > last {
                    last = h.partition_leader_epoch;
                    found.push((
                        h.partition_leader_epoch,
                        h.base_offset.max(self.log_start_offset),
                    ));
                }
                pos += h.total_size() as u64;
            }
        }
        for (epoch, start) in found {
            self.epochs.assign(epoch, start)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    /// The offset the next appended batch gets (or the first corrupt offset, which caps it).
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }
    pub fn durable(&self) -> Arc<DurableWatch> {
        Arc::clone(&self.durable)
    }
    pub fn corruption(&self) -> Option<&Corruption> {
        self.corruption.as_ref()
    }
    pub fn producer_state(&self) -> &ProducerState {
        &self.producers
    }
    pub fn epoch_entries(&self) -> &[EpochEntry] {
        self.epochs.entries()
    }
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest().map(|e| e.epoch)
    }
    /// KIP-279: the largest epoch <= `epoch` and where it ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        // Invariant: a log always has at least one segment (open creates one).
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    fn check_writable(&self) -> Result<()> {
        if let Some(c) = &self.corruption {
            return Err(LogError::Offline(format!(
                "corrupt batch at offset {}: {}",
                c.offset, c.reason
            )));
        }
        if let Some(o) = &self.offline {
            return Err(LogError::Offline(o.clone()));
        }
        if let Some(f) = self.durable.failure() {
            return Err(LogError::Offline(f));
        }
        Ok(())
    }

    fn maybe_roll(
        &mut self,
        incoming_bytes: u64,
        incoming_max_offset: i64,
        now_ms: i64,
    ) -> Result<()> {
        let seg = self.active();
        let too_big = seg.size + incoming_bytes > self.config.segment_bytes;
        let too_old = seg
            .first_append_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms);
        let offsets_overflow = incoming_max_offset - seg.base_offset > i64::from(u32::MAX) - 1;
        if !seg.is_empty() && (too_big || too_old || offsets_overflow) {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the active segment and opens a new one at the log end offset.
    pub fn roll(&mut self) -> Result<()> {
        let next = self.log_end_offset();
        if self.active().is_empty() {
            return Ok(());
        }
        {
            // The old segment is fsynced before the new one exists, whatever the flush
            // policy: a crash can then never leave a later segment on disk behind a lost
            // tail (a gap).
            let old = self.active_mut();
            old.active_file()
                .sync_data()
                .map_err(|e| LogError::io(&old.path, e))?;
            old.close_entries()?;
        }
        self.durable.advance(next);
        let seg = Segment::create(&self.dir, next)?;
        fsutil::sync_dir(&self.dir)?;
        assert!(
            next > *self.segments.keys().next_back().unwrap_or(&-1),
            "segment bases only grow"
        );
        self.segments.insert(next, seg);
        Ok(())
    }

    /// Appends a producer's record set as the leader: validates it, deduplicates idempotent
    /// retries, stamps offsets and `leader_epoch` in place and writes it. Nothing is written
    /// if any batch is refused.
    pub fn append_as_leader(
        &mut self,
        records: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        self.check_writable()?;
        let rules = ProduceRules {
            max_message_bytes: self.config.max_message_bytes,
            require_keys: self.config.cleanup_policy.compact,
            log_append_time: self.config.timestamp_type == TimestampType::LogAppendTime,
            timestamp_before_max_ms: self.config.timestamp_before_max_ms,
            timestamp_after_max_ms: self.config.timestamp_after_max_ms,
            now_ms,
        };
        let validated = batch::validate_produce(records, &rules)?;
        if records.len() as u64 > self.config.segment_bytes {
            return Err(InvalidBatch::RecordListTooLarge {
                size_bytes: records.len(),
                limit_bytes: self.config.segment_bytes as usize,
            }
            .into());
        }
        // Producer state: the whole request is checked before anything is written.
        let mut scratch: Option<ProducerState> = None;
        for v in &validated {
            let state = scratch.as_ref().unwrap_or(&self.producers);
            match state.check(&v.header)? {
                SequenceCheck::Duplicate(meta) if !crate::producer::unsafe_no_dedup() => {
                    return Ok(AppendOutcome {
                        first_offset: meta.first_offset,
                        last_offset: meta.last_offset,
                        log_append_time_ms: -1,
                        durable_end: meta.last_offset + 1,
                        duplicate: true,
                    });
                }
                SequenceCheck::Append | SequenceCheck::Duplicate(_) => {
                    if validated.len() > 1 {
                        let s = scratch.get_or_insert_with(|| self.producers.clone());
                        s.record(&v.header, now_ms);
                    }
                }
            }
        }
        let first_offset = self.log_end_offset();
        let total_records: i64 = validated
            .iter()
            .map(|v| i64::from(v.header.last_offset_delta) + 1)
            .sum();
        self.maybe_roll(records.len() as u64, first_offset + total_records, now_ms)?;
        let log_append = rules.log_append_time;
        let mut next = first_offset;
        let mut headers = Vec::with_capacity(validated.len());
        for v in &validated {
            let size = v.header.total_size();
            let b = &mut records[v.position..v.position + size];
            batch::stamp_offset_and_epoch(b, next, leader_epoch);
            if log_append {
                batch::set_max_timestamp(b, true, now_ms);
            } else if v.header.max_timestamp != v.max_timestamp || v.header.is_log_append_time() {
                batch::set_max_timestamp(b, false, v.max_timestamp);
            }
            let h = BatchHeader::parse(b)
                .ok_or_else(|| LogError::InvalidArgument("batch vanished".into()))?;
            next = h.last_offset() + 1;
            headers.push((v.position, h));
        }
        self.write(records, &headers, now_ms)?;
        self.epochs.assign(leader_epoch, first_offset)?;
        for (_, h) in &headers {
            self.producers.record(h, now_ms);
        }
        let durable_end = self.after_write(validated.len() as u64, total_records as u64, now_ms);
        Ok(AppendOutcome {
            first_offset,
            last_offset: next - 1,
            log_append_time_ms: if log_append { now_ms } else { -1 },
            durable_end,
            duplicate: false,
        })
    }

    /// Appends batches that already carry offsets and epochs (a follower copying its leader).
    /// Each batch's framing and CRC is checked and offsets must move forward.
    pub fn append_as_follower(&mut self, records: &[u8], now_ms: i64) -> Result<AppendOutcome> {
        self.check_writable()?;
        let mut headers = Vec::new();
        let mut pos = 0;
        let mut expected = self.log_end_offset();
        for frame in batch::frames(records) {
            let (h, b) = frame?;
            if h.base_offset < expected {
                return Err(LogError::InvalidArgument(format!(
                    "follower batch at {} below log end {expected}",
                    h.base_offset
                )));
            }
            expected = h.last_offset() + 1;
            headers.push((pos, h));
            pos += b.len();
        }
        let Some((_, first)) = headers.first().copied() else {
            return Ok(AppendOutcome {
                first_offset: -1,
                last_offset: -1,
                log_append_time_ms: -1,
                durable_end: self.log_end_offset(),
                duplicate: false,
            });
        };
        self.maybe_roll(records.len() as u64, expected, now_ms)?;
        if first.base_offset - self.active().base_offset > i64::from(u32::MAX) - 1 {
            self.roll_at(first.base_offset)?;
        }
        self.write(records, &headers, now_ms)?;
        for (pos, h) in &headers {
            self.epochs
                .assign(h.partition_leader_epoch, h.base_offset)?;
            if h.is_control() {
                let b = &records[*pos..*pos + h.total_size()];
                if let Some(kind) = marker_kind(h, b) {
                    self.producers.record_marker(h, kind, now_ms);
                }
            } else {
                self.producers.record(h, now_ms);
            }
        }
        let records_count: i64 = headers
            .iter()
            .map(|(_, h)| i64::from(h.last_offset_delta) + 1)
            .sum();
        let durable_end = self.after_write(headers.len() as u64, records_count as u64, now_ms);
        Ok(AppendOutcome {
            first_offset: first.base_offset,
            last_offset: expected - 1,
            log_append_time_ms: -1,
            durable_end,
            duplicate: false,
        })
    }

    /// Writes a transaction marker (a control batch) for `producer_id` as the leader: the
    /// end of its transaction on this partition. Refused for an older producer epoch.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        kind: MarkerKind,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        self.check_writable()?;
        self.producers.check_marker(producer_id, producer_epoch)?;
        let key = kind.control_key();
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&coordinator_epoch.to_be_bytes());
        let mut b = batch::build::batch(
            &[batch::build::Record {
                key: Some(&key),
                value: Some(&value),
                timestamp_ms: now_ms,
            }],
            batch::build::BatchOptions {
                base_offset: 0,
                producer_id,
                producer_epoch,
                base_sequence: -1,
                transactional: true,
                control: true,
            },
        );
        let first_offset = self.log_end_offset();
        self.maybe_roll(b.len() as u64, first_offset + 1, now_ms)?;
        batch::stamp_offset_and_epoch(&mut b, first_offset, leader_epoch);
        let h = BatchHeader::parse(&b)
            .ok_or_else(|| LogError::InvalidArgument("marker batch too short".into()))?;
        self.write(&b, &[(0, h)], now_ms)?;
        self.epochs.assign(leader_epoch, first_offset)?;
        self.producers.record_marker(&h, kind, now_ms);
        let durable_end = self.after_write(1, 1, now_ms);
        Ok(AppendOutcome {
            first_offset,
            last_offset: first_offset,
            log_append_time_ms: -1,
            durable_end,
            duplicate: false,
        })
    }

    /// The last stable offset given the partition's high watermark: `read_committed`
    /// consumers read below it.
    pub fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        match self.producers.first_unstable_offset(high_watermark) {
            Some(f) => f.min(high_watermark),
            None => high_watermark,
        }
    }

    /// Aborted transactions overlapping `[from, upper_bound)` (Fetch, read_committed).
    pub fn aborted_transactions(&self, from: i64, upper_bound: i64) -> Vec<AbortedTxn> {
        self.producers.aborted_between(from, upper_bound)
    }

    fn roll_at(&mut self, base: i64) -> Result<()> {
        let old = self.active_mut();
        old.active_file()
            .sync_data()
            .map_err(|e| LogError::io(&old.path, e))?;
        old.close_entries()?;
        self.durable.advance(self.log_end_offset());
        let seg = Segment::create(&self.dir, base)?;
        fsutil::sync_dir(&self.dir)?;
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Writes stamped batches at the end of the active segment. On failure the segment is cut
    /// back to where it was, so no partial batch is ever left behind.
    fn write(
        &mut self,
        records: &[u8],
        headers: &[(usize, BatchHeader)],
        now_ms: i64,
    ) -> Result<()> {
        let interval = self.config.index_interval_bytes;
        let seg = self.active_mut();
        let start = seg.size;
        let file = seg.active_file();
        if let Err(e) = file.write_all_at(records, start) {
            let path = seg.path.clone();
            if let Err(e2) = file.set_len(start) {
                let why =
                    format!("write failed ({e}) and the partial write could not be removed ({e2})");
                tracing::error!(segment = %path.display(), "{why}");
                self.offline = Some(why);
            }
            return Err(LogError::io(path, e));
        }
        let before = seg.next_offset();
        for (pos, h) in headers {
            seg.note_batch(h, start + *pos as u64, Some(interval));
        }
        seg.size = start + records.len() as u64;
        seg.first_append_ms.get_or_insert(now_ms);
        assert!(seg.next_offset() > before, "offsets only grow");
        Ok(())
    }

    /// Applies the flush policy after a write; returns the durable end to wait for.
    fn after_write(&mut self, _batches: u64, records: u64, now_ms: i64) -> i64 {
        let end = self.log_end_offset();
        match self.config.flush_policy {
            FlushPolicy::EveryAppend => {
                self.flusher
                    .request(self.active().active_file(), Arc::clone(&self.durable), end);
            }
            FlushPolicy::Interval { messages, .. } => {
                self.unflushed_messages += records;
                if self.unflushed_messages >= messages {
                    self.request_flush(now_ms);
                }
            }
            FlushPolicy::PageCache => {}
        }
        end
    }

    fn request_flush(&mut self, now_ms: i64) {
        let end = self.log_end_offset();
        self.unflushed_messages = 0;
        self.last_flush_ms = now_ms;
        if self.durable.durable_end() < end {
            self.flusher
                .request(self.active().active_file(), Arc::clone(&self.durable), end);
        }
    }

    /// Periodic work: interval flushes, `segment.ms` rolls, producer expiry, checkpoints.
    pub fn tick(&mut self, now_ms: i64) -> Result<()> {
        if let FlushPolicy::Interval { interval_ms, .. } = self.config.flush_policy {
            if now_ms.saturating_sub(self.last_flush_ms) >= interval_ms
                && self.unflushed_messages > 0
            {
                self.request_flush(now_ms);
            }
        }
        let seg = self.active();
        if !seg.is_empty()
            && seg
                .first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms)
            && self.corruption.is_none()
        {
            self.roll()?;
        }
        // max.compaction.lag.ms: a record may not stay uncompactable (in the active segment)
        // for longer than this.
        let seg = self.active();
        if self.config.cleanup_policy.compact
            && !seg.is_empty()
            && seg
                .first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.max_compaction_lag_ms)
            && self.corruption.is_none()
        {
            self.roll()?;
        }
        self.producers.expire(now_ms, PRODUCER_ID_EXPIRATION_MS);
        if now_ms.saturating_sub(self.last_checkpoint_ms) >= CHECKPOINT_INTERVAL_MS {
            self.checkpoint(now_ms)?;
        }
        Ok(())
    }

    /// Records the durable end as the recovery point: a restart validates only what follows.
    pub fn checkpoint(&mut self, now_ms: i64) -> Result<()> {
        self.last_checkpoint_ms = now_ms;
        let rp = self.durable.durable_end().min(self.log_end_offset());
        if rp == self.checkpointed_recovery_point {
            return Ok(());
        }
        write_checkpoint(
            &self.dir,
            Checkpoint {
                log_start_offset: self.log_start_offset,
                recovery_point: rp,
                clean: false,
            },
        )?;
        self.checkpointed_recovery_point = rp;
        Ok(())
    }

    /// Finds whole batches from the one containing `offset`, up to `max_bytes` (at least one
    /// batch if `min_one_batch`), never a batch whose last offset is >= `upper_bound`.
    pub fn read(
        &mut self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
        min_one_batch: bool,
    ) -> Result<ReadSlice> {
        let end = self.log_end_offset();
        if offset < self.log_start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: end,
            });
        }
        let limit = upper_bound.min(end);
        if offset >= limit {
            return Ok(ReadSlice::empty());
        }
        for seg in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .map(|(_, s)| s)
            .chain(self.segments.range(offset + 1..).map(|(_, s)| s))
        {
            if seg.next_offset() <= offset {
                continue;
            }
            let Some((start, first)) = seg.find(offset)? else {
                continue;
            };
            if first.last_offset() >= limit {
                return Ok(ReadSlice::empty());
            }
            let mut len = first.total_size() as u64;
            if len as usize > max_bytes && !min_one_batch {
                return Ok(ReadSlice::empty());
            }
            let mut pos = start + len;
            // Bounded by the segment size.
            while pos < seg.size {
                let h = seg.header_at(pos)?;
                let size = h.total_size() as u64;
                if h.last_offset() >= limit || (len + size) as usize > max_bytes {
                    break;
                }
                len += size;
                pos += size;
            }
            return Ok(ReadSlice {
                file: Some(seg.file()?),
                position: start,
                len: len as usize,
                first_batch_offset: first.base_offset,
            });
        }
        Ok(ReadSlice::empty())
    }

    /// The first record at or after the log start with timestamp >= `timestamp_ms`:
    /// (offset, its timestamp). `None` if there is none.
    pub fn offset_for_timestamp(&mut self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        for seg in self.segments.values() {
            if seg.index.max_timestamp < timestamp_ms || seg.next_offset() <= self.log_start_offset
            {
                continue;
            }
            let rel = seg.time_floor(timestamp_ms);
            let mut pos = seg.position_for(rel)?;
            while let Some((p, h)) = seg.scan_headers(pos, |h| {
                h.max_timestamp >= timestamp_ms && h.last_offset() >= self.log_start_offset
            })? {
                if let Some(found) = self.first_record_at_or_after(seg, p, &h, timestamp_ms)? {
                    return Ok(Some(found));
                }
                pos = p + h.total_size() as u64;
            }
        }
        Ok(None)
    }

    fn first_record_at_or_after(
        &self,
        seg: &Segment,
        pos: u64,
        h: &BatchHeader,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>> {
        if h.is_control() {
            return Ok(None);
        }
        let b = seg.read_batch(pos, h)?;
        let mut found = None;
        let start = self.log_start_offset;
        let corrupt = |e: InvalidBatch| LogError::Corruption {
            path: seg.path.clone(),
            offset: h.base_offset,
            position: pos,
            reason: e.to_string(),
        };
        batch::for_each_stored_record(h, &b, |r| {
            let ts = if h.is_log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp + r.timestamp_delta
            };
            let off = h.base_offset + i64::from(r.offset_delta);
            if found.is_none() && ts >= timestamp_ms && off >= start {
                found = Some((off, ts));
            }
            Ok(())
        })
        .map_err(corrupt)?;
        Ok(found)
    }

    /// The record with the largest timestamp (the first such): (offset, timestamp).
    pub fn max_timestamp_offset(&mut self) -> Result<Option<(i64, i64)>> {
        let Some(seg) = self
            .segments
            .values()
            .filter(|s| !s.is_empty() && s.next_offset() > self.log_start_offset)
            .fold(None::<&Segment>, |best, s| match best {
                Some(b) if b.index.max_timestamp >= s.index.max_timestamp => Some(b),
                _ => Some(s),
            })
        else {
            return Ok(None);
        };
        let max = seg.index.max_timestamp;
        let Some((p, h)) = seg.scan_headers(0, |h| {
            h.max_timestamp == max && h.last_offset() >= self.log_start_offset
        })?
        else {
            return Ok(None);
        };
        self.first_record_at_or_after(seg, p, &h, max)
    }

    /// DeleteRecords: moves the log start offset up to `offset` (never down) and deletes
    /// segments wholly below it. Returns the new log start offset.
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64> {
        let end = self.log_end_offset();
        if offset > end || offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: end,
            });
        }
        if offset > self.log_start_offset {
            self.log_start_offset = offset;
            self.persist_start_offset()?;
        }
        self.delete_segments_while(|s, start, _| s.next_offset() <= start)?;
        Ok(self.log_start_offset)
    }

    fn persist_start_offset(&mut self) -> Result<()> {
        self.epochs.truncate_from_start(self.log_start_offset)?;
        self.producers.truncate_from_start(self.log_start_offset);
        write_checkpoint(
            &self.dir,
            Checkpoint {
                log_start_offset: self.log_start_offset,
                recovery_point: self.checkpointed_recovery_point,
                clean: false,
            },
        )
    }

    /// Deletes closed segments from the front while `pred(segment, log_start, total_bytes)`.
    fn delete_segments_while(
        &mut self,
        mut pred: impl FnMut(&Segment, i64, u64) -> bool,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let mut total = self.size_bytes();
        // Bounded by the segment count; the active segment is never deleted.
        while self.segments.len() > 1 {
            let (&base, seg) = self.segments.iter().next().expect("more than one segment");
            if !pred(seg, self.log_start_offset, total) {
                break;
            }
            let seg = self.segments.remove(&base).expect("present");
            total -= seg.size;
            report.segments_deleted += 1;
            report.bytes_deleted += seg.size;
            std::fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, e))?;
            let _ = std::fs::remove_file(seg.index_path());
        }
        if report.segments_deleted > 0 {
            fsutil::sync_dir(&self.dir)?;
            let first = *self.segments.keys().next().expect("a segment remains");
            if first > self.log_start_offset {
                self.log_start_offset = first;
                self.persist_start_offset()?;
            }
        }
        report.log_start_offset = self.log_start_offset;
        Ok(report)
    }

    /// Deletes closed segments past `retention.ms` (by their largest timestamp) or beyond
    /// `retention.bytes`, oldest first.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<RetentionReport> {
        if !self.config.cleanup_policy.delete {
            return self.delete_segments_while(|s, start, _| s.next_offset() <= start);
        }
        let retention_ms = self.config.retention_ms;
        let retention_bytes = self.config.retention_bytes;
        self.delete_segments_while(|s, start, total| {
            let below_start = s.next_offset() <= start;
            let expired = retention_ms >= 0
                && s.index.max_timestamp >= 0
                && now_ms.saturating_sub(s.index.max_timestamp) > retention_ms;
            let too_big =
                retention_bytes >= 0 && total.saturating_sub(s.size) >= retention_bytes as u64;
            below_start || expired || too_big
        })
    }

    /// [`Log::enforce_retention`] with protected retention: a segment holding any offset at
    /// or after `protect_from` (the lowest committed offset of the protected consumer groups)
    /// is kept, whatever its age or the size limit, while the partition holds at most
    /// `cap_bytes`; beyond the cap, deletion proceeds as without protection.
    pub fn enforce_retention_protecting(
        &mut self,
        now_ms: i64,
        protect_from: i64,
        cap_bytes: u64,
    ) -> Result<RetentionReport> {
        if !self.config.cleanup_policy.delete {
            return self.enforce_retention(now_ms);
        }
        let retention_ms = self.config.retention_ms;
        let retention_bytes = self.config.retention_bytes;
        self.delete_segments_while(|s, start, total| {
            let below_start = s.next_offset() <= start;
            let expired = retention_ms >= 0
                && s.index.max_timestamp >= 0
                && now_ms.saturating_sub(s.index.max_timestamp) > retention_ms;
            let too_big =
                retention_bytes >= 0 && total.saturating_sub(s.size) >= retention_bytes as u64;
            let protected = s.next_offset() > protect_from && total <= cap_bytes;
            below_start || ((expired || too_big) && !protected)
        })
    }

    /// Removes every batch at or after the batch containing `offset` (a follower reconciling
    /// with a new leader, or an operator cutting a corrupt tail). The log end offset becomes
    /// the start of that batch.
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        if offset < self.log_start_offset {
            return Err(LogError::InvalidArgument(format!(
                "truncate to {offset} below log start {}",
                self.log_start_offset
            )));
        }
        // Segments past a corruption were never loaded: delete their files too.
        let mut doomed: Vec<PathBuf> = Vec::new();
        if self.corruption.take().is_some() {
            for entry in std::fs::read_dir(&self.dir)
                .map_err(|e| LogError::io(&self.dir, e))?
                .flatten()
            {
                if let Some(b) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| segment::parse_file_name(n, segment::LOG_SUFFIX))
                {
                    if !self.segments.contains_key(&b) {
                        doomed.push(entry.path());
                    }
                }
            }
        }
        let later: Vec<i64> = self
            .segments
            .range(offset + 1..)
            .map(|(b, _)| *b)
            .filter(|b| *b > offset)
            .collect();
        for b in later {
            if self.segments.len() == 1 {
                break;
            }
            if let Some(seg) = self.segments.remove(&b) {
                doomed.push(seg.path.clone());
            }
        }
        for p in &doomed {
            std::fs::remove_file(p).map_err(|e| LogError::io(p, e))?;
            let _ = std::fs::remove_file(p.with_extension(segment::INDEX_SUFFIX));
        }
        let max_batch_bytes = self.max_batch_bytes();
        let seg = self.active_mut();
        seg.reopen_entries(max_batch_bytes)?;
        if seg.base_offset > offset {
            // Only one segment left and it starts after the target: empty it.
            let base = seg.base_offset;
            seg.truncate_to_position(0, base)?;
        } else if let Some((pos, h)) = seg.find(offset)? {
            let new_end = h.base_offset;
            seg.truncate_to_position(pos, new_end)?;
            seg.recompute_summary()?;
        } else {
            // Nothing at or after `offset` among the valid batches; bytes past them (a corrupt
            // batch left in place for the operator) go now.
            let (size, next) = (seg.size, seg.next_offset());
            seg.truncate_to_position(size, next)?;
        }
        fsutil::sync_dir(&self.dir)?;
        let end = self.log_end_offset();
        if end < self.log_start_offset {
            // The batch holding `offset` began below the log start: the whole batch went, so
            // the log restarts at its base (Kafka lowers the log start on truncation too).
            self.log_start_offset = end;
        }
        self.durable.reset_after_truncation(end);
        self.epochs.truncate_from_end(end)?;
        // A removed marker reopens its transaction: rebuild the producer state from the log.
        let _ = std::fs::remove_file(ProducerState::snapshot_path(&self.dir));
        self.rebuild_producer_state()?;
        self.checkpointed_recovery_point = self.checkpointed_recovery_point.min(end);
        write_checkpoint(
            &self.dir,
            Checkpoint {
                log_start_offset: self.log_start_offset,
                recovery_point: self.checkpointed_recovery_point,
                clean: false,
            },
        )?;
        Ok(())
    }

    /// Bytes in closed segments not yet compacted (the cleaner's backlog), for compacted
    /// topics; 0 otherwise.
    pub fn compaction_dirty_bytes(&self) -> u64 {
        if !self.config.cleanup_policy.compact {
            return 0;
        }
        let active = self.active().base_offset;
        self.segments
            .range(self.cleaned_up_to..active)
            .map(|(_, s)| s.size)
            .sum()
    }

    pub fn compaction_cleaned_up_to(&self) -> i64 {
        self.cleaned_up_to
    }

    /// The closed segments a compaction pass may clean now: from the log start up to the
    /// first segment younger than `min.compaction.lag.ms`. `None` if not compacted or
    /// nothing is new since the last pass.
    pub fn compaction_plan(&self, now_ms: i64) -> Option<crate::compaction::CompactionPlan> {
        if !self.config.cleanup_policy.compact || self.corruption.is_some() {
            return None;
        }
        let active = self.active().base_offset;
        let horizon = now_ms.saturating_sub(self.config.min_compaction_lag_ms);
        // Never past an open transaction: its outcome decides what its data is.
        let first_open = self
            .producers
            .open_transactions()
            .iter()
            .map(|t| t.2)
            .min()
            .unwrap_or(i64::MAX);
        let segments: Vec<_> = self
            .segments
            .range(..active)
            .map(|(_, s)| s)
            .take_while(|s| s.index.max_timestamp <= horizon && s.next_offset() <= first_open)
            .map_while(|s| {
                // A segment whose file cannot be opened ends the plan (kept a prefix).
                Some(crate::compaction::PlannedSegment {
                    base_offset: s.base_offset,
                    path: s.path.clone(),
                    file: s.file().ok()?,
                    size: s.size,
                    max_timestamp: s.index.max_timestamp,
                })
            })
            .collect();
        let newest = segments.last().map(|s| s.base_offset)?;
        if newest < self.cleaned_up_to {
            // Every cleanable segment was cleaned by an earlier pass. (Tombstones that expire
            // later are removed by the next pass that has a new segment to clean.)
            return None;
        }
        Some(crate::compaction::CompactionPlan {
            segments,
            delete_horizon_ms: now_ms.saturating_sub(self.config.delete_retention_ms),
            max_map_entries: crate::compaction::DEFAULT_MAX_MAP_ENTRIES,
            io_bytes_per_sec: None,
            aborted: {
                let mut m: std::collections::HashMap<i64, Vec<(i64, i64)>> =
                    std::collections::HashMap::new();
                for a in self.producers.aborted_between(i64::MIN, i64::MAX) {
                    m.entry(a.producer_id)
                        .or_default()
                        .push((a.first_offset, a.last_offset));
                }
                m
            },
        })
    }

    /// Swaps cleaned segments in. A segment that changed since the plan was made (deleted by
    /// retention, cut by truncation) is skipped and its cleaned file removed.
    pub fn install_compaction(
        &mut self,
        out: crate::compaction::CompactionOutput,
    ) -> Result<crate::compaction::CompactionReport> {
        let mut report = crate::compaction::CompactionReport {
            records_removed: out.records_removed,
            tombstones_removed: out.tombstones_removed,
            ..Default::default()
        };
        let active = self.active().base_offset;
        let max_batch_bytes = (self
            .config
            .segment_bytes
            .max(self.config.max_message_bytes as u64))
        .max(1 << 20)
            + (1 << 20);
        let mut renamed = false;
        for c in out.cleaned {
            let current = self
                .segments
                .get(&c.base_offset)
                .filter(|s| s.base_offset != active && s.size == c.original_size);
            let Some(seg) = current else {
                let _ = std::fs::remove_file(&c.cleaned_path);
                continue;
            };
            let path = seg.path.clone();
            let mut seg = self.segments.remove(&c.base_offset).expect("present");
            seg.remove_index_file()?;
            std::fs::rename(&c.cleaned_path, &path).map_err(|e| LogError::io(&path, e))?;
            renamed = true;
            let (new_seg, fault) =
                Segment::open(path.clone(), c.base_offset, true, max_batch_bytes)?;
            if let Some(f) = fault {
                return Err(LogError::Corruption {
                    path,
                    offset: c.base_offset,
                    position: f.position,
                    reason: f.reason,
                });
            }
            let mut new_seg = new_seg;
            new_seg.close_entries()?;
            self.segments.insert(c.base_offset, new_seg);
            report.segments_rewritten += 1;
            report.bytes_before += c.original_size;
            report.bytes_after += c.cleaned_size;
        }
        if renamed {
            fsutil::sync_dir(&self.dir)?;
        }
        self.cleaned_up_to = self.cleaned_up_to.max(out.clean_end.min(active));
        report.cleaned_up_to = self.cleaned_up_to;
        Ok(report)
    }

    /// One whole compaction pass in the caller's thread (tests and tools; the broker runs
    /// the plan outside the partition lock).
    pub fn compact(&mut self, now_ms: i64) -> Result<crate::compaction::CompactionReport> {
        match self.compaction_plan(now_ms) {
            None => Ok(crate::compaction::CompactionReport {
                cleaned_up_to: self.cleaned_up_to,
                ..Default::default()
            }),
            Some(plan) => {
                let out = plan.run()?;
                self.install_compaction(out)
            }
        }
    }

    /// Clean close: fsync everything, write indexes, producer snapshot and a clean checkpoint.
    pub fn close(mut self) -> Result<()> {
        self.sync_all_segments()?;
        for seg in self.segments.values_mut() {
            seg.persist_index()?;
        }
        let end = self.log_end_offset();
        self.producers.write_snapshot(&self.dir, end)?;
        let clean = self.corruption.is_none() && self.offline.is_none();
        write_checkpoint(
            &self.dir,
            Checkpoint {
                log_start_offset: self.log_start_offset,
                recovery_point: end,
                clean,
            },
        )
    }

    /// Deletes the partition's directory.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        if let Some(parent) = dir.parent() {
            fsutil::sync_dir(parent)?;
        }
        Ok(())
    }
}
