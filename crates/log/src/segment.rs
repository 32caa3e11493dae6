//! One segment: `<base offset, 20 digits>.log` holding whole batches back to back, and its
//! in-memory index (persisted to `<base>.index` as a cache when the segment closes).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::error::{LogError, Result};
use crate::handles::FileHandle;
use crate::index::{OffsetEntry, SegmentIndex, TimeEntry};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";

pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// Parses `00000000000000000042.log` into 42.
pub(crate) fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    handle: FileHandle,
    /// Bytes of valid batches; the file is never longer after open or truncation.
    pub size: u64,
    pub index: SegmentIndex,
    /// Whether `<base>.index` on disk describes `size` bytes.
    pub index_persisted: bool,
    bytes_since_index_entry: u64,
    /// Wall-clock time of the first append (for `segment.ms`), if appended since open.
    pub first_append_ms: Option<i64>,
}

/// What a scan of a segment found wrong.
#[derive(Debug, Clone)]
pub(crate) struct ScanFault {
    pub position: u64,
    pub reason: String,
    /// A valid batch follows the bad one: this is damage in the middle, not a torn tail.
    pub followed_by_valid: bool,
}

impl Segment {
    pub(crate) fn index_path(&self) -> PathBuf {
        self.path.with_extension(INDEX_SUFFIX)
    }

    /// The segment's open file (reopened on demand for closed segments).
    pub(crate) fn file(&self) -> Result<Arc<File>> {
        self.handle.get()
    }

    /// The file of the active segment, which is always open.
    pub(crate) fn active_file(&self) -> Arc<File> {
        Arc::clone(
            self.handle
                .pinned_file()
                .expect("the active segment's file is pinned open"),
        )
    }

    /// The segment is closed: write its index file and keep only the summary in memory;
    /// lookups then binary-search the index file, and the file handle may be evicted.
    pub(crate) fn close_entries(&mut self) -> Result<()> {
        self.persist_index()?;
        self.index.offsets = Vec::new();
        self.index.times = Vec::new();
        self.index.entries_on_disk = true;
        self.handle.unpin();
        Ok(())
    }

    /// The segment becomes active again (after a truncation): entries back in memory.
    pub(crate) fn reopen_entries(&mut self, max_batch_bytes: u64) -> Result<()> {
        self.handle.pin()?;
        if !self.index.entries_on_disk {
            return Ok(());
        }
        let file = self.file()?;
        let loaded = SegmentIndex::load(&self.index_path(), self.base_offset, self.size)?
            .filter(|idx| idx.covered_bytes == self.size && Self::index_matches(&file, idx));
        match loaded {
            Some(idx) => {
                self.index = idx;
                self.index_persisted = true;
            }
            None => {
                let size = self.size;
                self.index = SegmentIndex {
                    next_offset: self.base_offset,
                    max_timestamp: -1,
                    max_timestamp_offset: self.base_offset,
                    ..Default::default()
                };
                self.size = 0;
                if let Some(f) = self.scan_from(0, size, false, max_batch_bytes)? {
                    return Err(LogError::Corruption {
                        path: self.path.clone(),
                        offset: self.index.next_offset,
                        position: f.position,
                        reason: f.reason,
                    });
                }
            }
        }
        self.bytes_since_index_entry = 0;
        Ok(())
    }

    /// Where to start scanning for `relative_offset`: (relative offset, position).
    fn floor_position(&self, relative_offset: u32) -> Result<(u32, u32)> {
        if !self.index.entries_on_disk {
            return Ok(self.index.floor_position(relative_offset));
        }
        let found = crate::index::floor_position_on_disk(&self.index_path(), relative_offset);
        if let Some((rel, pos)) = found {
            // Trust but verify: the entry must point at the batch it names.
            if self
                .header_at(u64::from(pos))
                .is_ok_and(|h| h.base_offset == self.base_offset + i64::from(rel))
            {
                return Ok((rel, pos));
            }
        }
        Ok((0, 0))
    }

    /// Relative offset from which to scan for the first batch with max timestamp >= `ts`.
    pub(crate) fn time_floor(&self, timestamp: i64) -> u32 {
        if !self.index.entries_on_disk {
            return self.index.time_floor(timestamp);
        }
        crate::index::time_floor_on_disk(&self.index_path(), timestamp).unwrap_or(0)
    }

    /// Position from which to scan for the batch with relative offset >= `rel`.
    pub(crate) fn position_for(&self, relative_offset: u32) -> Result<u64> {
        Ok(u64::from(self.floor_position(relative_offset)?.1))
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.index.next_offset
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Creates an empty segment file (the caller fsyncs the directory).
    pub(crate) fn create(dir: &Path, base_offset: i64) -> Result<Segment> {
        let path = dir.join(file_name(base_offset, LOG_SUFFIX));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        Ok(Segment {
            base_offset,
            handle: FileHandle::pinned(&path, file),
            path,
            size: 0,
            index: SegmentIndex {
                next_offset: base_offset,
                max_timestamp: -1,
                max_timestamp_offset: base_offset,
                ..Default::default()
            },
            index_persisted: false,
            bytes_since_index_entry: 0,
            first_append_ms: None,
        })
    }

    /// Opens an existing segment. When `validate` is false and the index file describes the
    /// whole file, nothing is scanned; otherwise the bytes past what the index covers are
    /// scanned (with CRC checks when `validate`). Returns the segment (its size cut to the
    /// valid prefix in memory only) and the first fault found, if any.
    pub(crate) fn open(
        path: PathBuf,
        base_offset: i64,
        validate: bool,
        max_batch_bytes: u64,
    ) -> Result<(Segment, Option<ScanFault>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
        let index_path = path.with_extension(INDEX_SUFFIX);
        let loaded = SegmentIndex::load(&index_path, base_offset, len)?
            .filter(|idx| Self::index_matches(&file, idx));
        let (index, start, persisted) = match loaded {
            // A validating scan starts from the beginning: the index says nothing about CRCs.
            Some(idx) if !validate => {
                let start = idx.covered_bytes;
                let whole = start == len;
                (idx, start, whole)
            }
            _ => (
                SegmentIndex {
                    next_offset: base_offset,
                    max_timestamp: -1,
                    max_timestamp_offset: base_offset,
                    ..Default::default()
                },
                0,
                false,
            ),
        };
        let mut seg = Segment {
            base_offset,
            handle: FileHandle::pinned(&path, file),
            path,
            size: start,
            index,
            index_persisted: persisted,
            bytes_since_index_entry: 0,
            first_append_ms: None,
        };
        let fault = seg.scan_from(start, len, validate, max_batch_bytes)?;
        Ok((seg, fault))
    }

    /// Whether the index's last batch is where and what the index says: an index written for
    /// another version of this segment fails this check.
    fn index_matches(file: &File, idx: &SegmentIndex) -> bool {
        if idx.covered_bytes == 0 {
            return true;
        }
        let mut hb = [0u8; HEADER_SIZE];
        if file
            .read_exact_at(&mut hb, idx.last_batch_position)
            .is_err()
        {
            return false;
        }
        BatchHeader::parse(&hb).is_some_and(|h| {
            h.crc == idx.last_batch_crc
                && idx.last_batch_position + h.total_size() as u64 == idx.covered_bytes
                && h.last_offset() + 1 == idx.next_offset
        })
    }

    /// Scans batches from `pos` to `len`, extending the in-memory index.
    fn scan_from(
        &mut self,
        mut pos: u64,
        len: u64,
        validate: bool,
        max_batch_bytes: u64,
    ) -> Result<Option<ScanFault>> {
        let mut buf = Vec::new();
        // Bounded: every iteration advances `pos` by at least a header.
        while pos < len {
            let fault = |reason: String, seg: &Segment, pos: u64| ScanFault {
                position: pos,
                followed_by_valid: false,
                reason: format!("{} at position {pos}: {reason}", seg.path.display()),
            };
            if len - pos < HEADER_SIZE as u64 {
                return Ok(Some(fault(
                    format!("{} trailing bytes, shorter than a header", len - pos),
                    self,
                    pos,
                )));
            }
            let mut hb = [0u8; HEADER_SIZE];
            self.file()?
                .read_exact_at(&mut hb, pos)
                .map_err(|e| LogError::io(&self.path, e))?;
            let Some(h) = BatchHeader::parse(&hb) else {
                return Ok(Some(fault("unreadable header".into(), self, pos)));
            };
            let total = h.total_size() as u64;
            let plausible = h.magic == 2
                && total >= HEADER_SIZE as u64
                && total <= max_batch_bytes
                && h.last_offset_delta >= 0
                && h.base_offset >= self.index.next_offset
                && h.base_offset - self.base_offset <= i64::from(u32::MAX);
            if !plausible {
                let mut f = fault(format!("implausible header {h:?}"), self, pos);
                f.followed_by_valid = self.valid_batch_within(pos + 1, len, max_batch_bytes);
                return Ok(Some(f));
            }
            if pos + total > len {
                let mut f = fault(
                    format!("batch of {total} bytes runs past the end ({len})"),
                    self,
                    pos,
                );
                f.followed_by_valid = self.valid_batch_within(pos + 1, len, max_batch_bytes);
                return Ok(Some(f));
            }
            if validate {
                buf.resize(total as usize, 0);
                self.file()?
                    .read_exact_at(&mut buf, pos)
                    .map_err(|e| LogError::io(&self.path, e))?;
                if let Err(e) = batch::check_frame(&buf) {
                    let mut f = fault(e.to_string(), self, pos);
                    f.followed_by_valid = self.valid_batch_at(pos + total, len, max_batch_bytes)
                        || self.valid_batch_within(pos + 1, len, max_batch_bytes);
                    return Ok(Some(f));
                }
            }
            self.note_batch(&h, pos, None);
            pos += total;
            self.size = pos;
        }
        Ok(None)
    }

    /// Whether a whole, CRC-valid batch starts anywhere in `[from, from + max_batch_bytes +
    /// header)` (and within `len`). Used when a bad batch's own length cannot be trusted (a
    /// damaged length field): if valid data follows, the next batch starts within one
    /// maximal batch of the bad one, so the window is bounded. A torn tail (a write cut short,
    /// or never written back) has nothing valid after it; a match by chance needs the magic
    /// byte, a plausible length and a CRC-32C to agree.
    fn valid_batch_within(&self, from: u64, len: u64, max_batch_bytes: u64) -> bool {
        if from >= len {
            return false;
        }
        let window = (len - from).min(max_batch_bytes + HEADER_SIZE as u64) as usize;
        let mut buf = vec![0u8; window];
        let Ok(file) = self.file() else { return false };
        if file.read_exact_at(&mut buf, from).is_err() {
            return false;
        }
        const MAGIC_AT: usize = 16;
        // Bounded: one pass over the window.
        for i in 0..window.saturating_sub(HEADER_SIZE) {
            if buf[i + MAGIC_AT] != 2 {
                continue;
            }
            let Some(h) = BatchHeader::parse(&buf[i..]) else {
                continue;
            };
            let total = h.total_size() as u64;
            if total < HEADER_SIZE as u64 || total > max_batch_bytes || h.last_offset_delta < 0 {
                continue;
            }
            let start = from + i as u64;
            if start + total > len {
                continue;
            }
            let ok = if i + total as usize <= window {
                batch::check_frame(&buf[i..i + total as usize]).is_ok()
            } else {
                self.valid_batch_at(start, len, max_batch_bytes)
            };
            if ok {
                return true;
            }
        }
        false
    }

    /// Whether a whole, CRC-valid batch starts at `pos`.
    fn valid_batch_at(&self, pos: u64, len: u64, max_batch_bytes: u64) -> bool {
        let mut hb = [0u8; HEADER_SIZE];
        let Ok(file) = self.file() else { return false };
        if pos + HEADER_SIZE as u64 > len || file.read_exact_at(&mut hb, pos).is_err() {
            return false;
        }
        let Some(h) = BatchHeader::parse(&hb) else {
            return false;
        };
        let total = h.total_size() as u64;
        if h.magic != 2
            || total < HEADER_SIZE as u64
            || total > max_batch_bytes
            || pos + total > len
        {
            return false;
        }
        let mut buf = vec![0u8; total as usize];
        file.read_exact_at(&mut buf, pos).is_ok() && batch::check_frame(&buf).is_ok()
    }

    /// Updates the in-memory index for a batch written (or found) at `pos`.
    pub(crate) fn note_batch(
        &mut self,
        h: &BatchHeader,
        pos: u64,
        index_interval_bytes: Option<u64>,
    ) {
        let interval = index_interval_bytes.unwrap_or(4096);
        let rel = (h.base_offset - self.base_offset) as u32;
        if pos > 0 && self.bytes_since_index_entry >= interval {
            self.index.offsets.push(OffsetEntry {
                relative_offset: rel,
                position: pos as u32,
            });
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += h.total_size() as u64;
        if h.max_timestamp > self.index.max_timestamp {
            self.index.max_timestamp = h.max_timestamp;
            self.index.max_timestamp_offset = h.base_offset;
            if self
                .index
                .times
                .last()
                .is_none_or(|t| t.relative_offset < rel)
            {
                self.index.times.push(TimeEntry {
                    timestamp: h.max_timestamp,
                    relative_offset: rel,
                });
            } else if let Some(t) = self.index.times.last_mut() {
                t.timestamp = h.max_timestamp;
            }
        }
        self.index.next_offset = h.last_offset() + 1;
        self.index.covered_bytes = pos + h.total_size() as u64;
        self.index.last_batch_position = pos;
        self.index.last_batch_crc = h.crc;
        self.index_persisted = false;
    }

    /// Writes the index file (not fsynced: it is a cache validated on load).
    pub(crate) fn persist_index(&mut self) -> Result<()> {
        if self.index_persisted {
            return Ok(());
        }
        let p = self.index_path();
        std::fs::write(&p, self.index.encode(self.base_offset)).map_err(|e| LogError::io(&p, e))?;
        self.index_persisted = true;
        Ok(())
    }

    pub(crate) fn remove_index_file(&mut self) -> Result<()> {
        self.index_persisted = false;
        let p = self.index_path();
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io(p, e)),
        }
    }

    /// Reads the batch header at `pos`.
    pub(crate) fn header_at(&self, pos: u64) -> Result<BatchHeader> {
        let mut hb = [0u8; HEADER_SIZE];
        self.file()?
            .read_exact_at(&mut hb, pos)
            .map_err(|e| LogError::io(&self.path, e))?;
        BatchHeader::parse(&hb).ok_or_else(|| LogError::Corruption {
            path: self.path.clone(),
            offset: -1,
            position: pos,
            reason: "unreadable header".into(),
        })
    }

    /// Position and header of the first batch whose last offset is >= `offset`, scanning from
    /// the index entry at or before it. `None` when the segment has no such batch.
    pub(crate) fn find(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        let rel = (offset.max(self.base_offset) - self.base_offset).min(i64::from(u32::MAX)) as u32;
        let (_, start) = self.floor_position(rel)?;
        self.scan_headers(u64::from(start), |h| h.last_offset() >= offset)
    }

    /// Walks batch headers from `pos` to the end; returns the first matching `pred`.
    pub(crate) fn scan_headers(
        &self,
        mut pos: u64,
        mut pred: impl FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>> {
        while pos < self.size {
            let h = self.header_at(pos)?;
            if pred(&h) {
                return Ok(Some((pos, h)));
            }
            let total = h.total_size() as u64;
            if total == 0 {
                break;
            }
            pos += total;
        }
        Ok(None)
    }

    /// Reads the whole batch at `pos`.
    pub(crate) fn read_batch(&self, pos: u64, h: &BatchHeader) -> Result<Vec<u8>> {
        let mut b = vec![0u8; h.total_size()];
        self.file()?
            .read_exact_at(&mut b, pos)
            .map_err(|e| LogError::io(&self.path, e))?;
        Ok(b)
    }

    /// Cuts the segment (file and index) to `position` bytes and fsyncs it. The segment must
    /// be active (entries in memory).
    pub(crate) fn truncate_to_position(&mut self, position: u64, next_offset: i64) -> Result<()> {
        assert!(
            !self.index.entries_on_disk,
            "only the active segment is truncated"
        );
        self.remove_index_file()?;
        self.file()?
            .set_len(position)
            .map_err(|e| LogError::io(&self.path, e))?;
        self.file()?
            .sync_all()
            .map_err(|e| LogError::io(&self.path, e))?;
        self.size = position;
        self.index.truncate_to_position(position);
        self.index.covered_bytes = position;
        self.index.next_offset = next_offset;
        self.bytes_since_index_entry = 0;
        Ok(())
    }

    /// Recomputes max timestamp and last batch after a truncation (scan of headers).
    pub(crate) fn recompute_summary(&mut self) -> Result<()> {
        let mut max = -1;
        let mut at = self.base_offset;
        let mut pos = 0;
        let (mut last_pos, mut last_crc) = (0, 0);
        while pos < self.size {
            let h = self.header_at(pos)?;
            if h.max_timestamp > max {
                max = h.max_timestamp;
                at = h.base_offset;
            }
            (last_pos, last_crc) = (pos, h.crc);
            pos += h.total_size() as u64;
        }
        self.index.max_timestamp = max;
        self.index.max_timestamp_offset = at;
        self.index.last_batch_position = last_pos;
        self.index.last_batch_crc = last_crc;
        Ok(())
    }
}
