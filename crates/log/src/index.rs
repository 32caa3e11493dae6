//! The per-segment index file: a sparse offset index and a time index in one file, written
//! when a segment is closed (rolled) or the log is closed cleanly. It is a cache: it carries
//! a checksum and the number of segment bytes it describes, and anything that does not check
//! out is rebuilt from the segment. Format: docs/format.md.

use std::path::Path;

use crate::error::{LogError, Result};

const MAGIC: &[u8; 4] = b"HFIX";
const VERSION: u8 = 1;
const HEADER_SIZE: usize = 4 + 1 + 3 + 8 + 8 + 8 + 8 + 8 + 8 + 4 + 4 + 4 + 4;
const OFFSET_ENTRY_SIZE: usize = 8;
const TIME_ENTRY_SIZE: usize = 12;

/// Offset index entry: the batch whose base offset is `base_offset + relative_offset`
/// starts at byte `position` of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Time index entry: every batch up to and including the batch at `relative_offset` has a
/// max timestamp <= `timestamp`, and that batch raised the maximum to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Everything the index file records about a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    /// Segment bytes described (a prefix of the segment file).
    pub covered_bytes: u64,
    /// Offset after the last batch in the covered bytes.
    pub next_offset: i64,
    pub max_timestamp: i64,
    /// Base offset of the batch holding `max_timestamp`.
    pub max_timestamp_offset: i64,
    /// Position and CRC of the last batch in the covered bytes: checked against the segment
    /// on load, so an index left over from a segment since rewritten (compaction) or cut is
    /// never trusted.
    pub last_batch_position: u64,
    pub last_batch_crc: u32,
    /// Memory only: `offsets` and `times` were dropped (closed segment); look them up in the
    /// index file, which was written or validated when this was set.
    pub entries_on_disk: bool,
}

impl SegmentIndex {
    /// The last entry at or before `relative_offset`: where to start scanning for it.
    pub(crate) fn floor_position(&self, relative_offset: u32) -> (u32, u32) {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            (0, 0)
        } else {
            let e = self.offsets[i - 1];
            (e.relative_offset, e.position)
        }
    }

    /// Relative offset of a batch from which to scan for the first batch with max
    /// timestamp >= `timestamp`.
    pub(crate) fn time_floor(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    pub(crate) fn truncate_to_position(&mut self, position: u64) {
        self.offsets.retain(|e| u64::from(e.position) < position);
        let last_rel = self.offsets.last().map(|e| e.relative_offset);
        self.times.retain(|t| Some(t.relative_offset) <= last_rel);
    }

    pub(crate) fn encode(&self, base_offset: i64) -> Vec<u8> {
        let mut b =
            Vec::with_capacity(HEADER_SIZE + self.offsets.len() * 8 + self.times.len() * 12 + 4);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(&base_offset.to_be_bytes());
        b.extend_from_slice(&self.covered_bytes.to_be_bytes());
        b.extend_from_slice(&self.next_offset.to_be_bytes());
        b.extend_from_slice(&self.max_timestamp.to_be_bytes());
        b.extend_from_slice(&self.max_timestamp_offset.to_be_bytes());
        b.extend_from_slice(&self.last_batch_position.to_be_bytes());
        b.extend_from_slice(&self.last_batch_crc.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
        b.extend_from_slice(&(self.times.len() as u32).to_be_bytes());
        for e in &self.offsets {
            b.extend_from_slice(&e.relative_offset.to_be_bytes());
            b.extend_from_slice(&e.position.to_be_bytes());
        }
        for t in &self.times {
            b.extend_from_slice(&t.timestamp.to_be_bytes());
            b.extend_from_slice(&t.relative_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and checks an index file; `None` if it is damaged or not for this segment.
    pub(crate) fn decode(b: &[u8], base_offset: i64, segment_len: u64) -> Option<SegmentIndex> {
        if b.len() < HEADER_SIZE + 4 || &b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let i64_at = |at: usize| i64::from_be_bytes(body[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap_or([0; 4]));
        if i64_at(8) != base_offset {
            return None;
        }
        let covered_bytes = i64_at(16) as u64;
        let next_offset = i64_at(24);
        let max_timestamp = i64_at(32);
        let max_timestamp_offset = i64_at(40);
        let last_batch_position = i64_at(48) as u64;
        let last_batch_crc = u32_at(56);
        let n_off = u32_at(64) as usize;
        let n_time = u32_at(68) as usize;
        if covered_bytes > segment_len
            || body.len() != HEADER_SIZE + n_off * OFFSET_ENTRY_SIZE + n_time * TIME_ENTRY_SIZE
            || next_offset < base_offset
        {
            return None;
        }
        let mut at = HEADER_SIZE;
        let mut offsets = Vec::with_capacity(n_off);
        for _ in 0..n_off {
            offsets.push(OffsetEntry {
                relative_offset: u32_at(at),
                position: u32_at(at + 4),
            });
            at += OFFSET_ENTRY_SIZE;
        }
        let mut times = Vec::with_capacity(n_time);
        for _ in 0..n_time {
            times.push(TimeEntry {
                timestamp: i64_at(at),
                relative_offset: u32_at(at + 8),
            });
            at += TIME_ENTRY_SIZE;
        }
        // Entries must be strictly increasing and inside the covered bytes.
        let sorted =
            offsets.windows(2).all(|w| {
                w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position
            }) && times.windows(2).all(|w| {
                w[0].timestamp < w[1].timestamp && w[0].relative_offset < w[1].relative_offset
            }) && offsets
                .iter()
                .all(|e| u64::from(e.position) < covered_bytes.max(1));
        sorted.then_some(SegmentIndex {
            offsets,
            times,
            covered_bytes,
            next_offset,
            max_timestamp,
            max_timestamp_offset,
            last_batch_position,
            last_batch_crc,
            entries_on_disk: false,
        })
    }

    pub(crate) fn load(
        path: &Path,
        base_offset: i64,
        segment_len: u64,
    ) -> Result<Option<SegmentIndex>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Self::decode(&b, base_offset, segment_len)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(path, e)),
        }
    }
}

fn read_at(f: &std::fs::File, at: u64, buf: &mut [u8]) -> Option<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, at).ok()
}

/// Entry counts from an index file's header.
fn counts(f: &std::fs::File) -> Option<(u64, u64)> {
    let mut h = [0u8; 8];
    read_at(f, 64, &mut h)?;
    let n_off = u64::from(u32::from_be_bytes(h[..4].try_into().ok()?));
    let n_time = u64::from(u32::from_be_bytes(h[4..].try_into().ok()?));
    Some((n_off, n_time))
}

/// [`SegmentIndex::floor_position`] by binary search in the file (O(log n) reads; the page
/// cache keeps hot index pages, as Kafka's mmap does). `None` if the file is unreadable.
pub(crate) fn floor_position_on_disk(path: &Path, relative_offset: u32) -> Option<(u32, u32)> {
    let f = std::fs::File::open(path).ok()?;
    let (n, _) = counts(&f)?;
    let entry = |i: u64| -> Option<(u32, u32)> {
        let mut b = [0u8; 8];
        read_at(
            &f,
            HEADER_SIZE as u64 + i * OFFSET_ENTRY_SIZE as u64,
            &mut b,
        )?;
        Some((
            u32::from_be_bytes(b[..4].try_into().ok()?),
            u32::from_be_bytes(b[4..].try_into().ok()?),
        ))
    };
    // Find the number of entries with relative offset <= target.
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid)?.0 <= relative_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        Some((0, 0))
    } else {
        entry(lo - 1)
    }
}

/// [`SegmentIndex::time_floor`] by binary search in the file.
pub(crate) fn time_floor_on_disk(path: &Path, timestamp: i64) -> Option<u32> {
    let f = std::fs::File::open(path).ok()?;
    let (n_off, n) = counts(&f)?;
    let base = HEADER_SIZE as u64 + n_off * OFFSET_ENTRY_SIZE as u64;
    let entry = |i: u64| -> Option<(i64, u32)> {
        let mut b = [0u8; 12];
        read_at(&f, base + i * TIME_ENTRY_SIZE as u64, &mut b)?;
        Some((
            i64::from_be_bytes(b[..8].try_into().ok()?),
            u32::from_be_bytes(b[8..].try_into().ok()?),
        ))
    };
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid)?.0 < timestamp {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        Some(0)
    } else {
        entry(lo - 1).map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detected() {
        let idx = SegmentIndex {
            offsets: vec![
                OffsetEntry {
                    relative_offset: 3,
                    position: 4100,
                },
                OffsetEntry {
                    relative_offset: 9,
                    position: 8300,
                },
            ],
            times: vec![TimeEntry {
                timestamp: 77,
                relative_offset: 3,
            }],
            covered_bytes: 9000,
            next_offset: 112,
            max_timestamp: 77,
            max_timestamp_offset: 103,
            last_batch_position: 8500,
            last_batch_crc: 0xdead_beef,
            entries_on_disk: false,
        };
        let b = idx.encode(100);
        assert_eq!(SegmentIndex::decode(&b, 100, 9000), Some(idx.clone()));
        assert_eq!(SegmentIndex::decode(&b, 101, 9000), None);
        assert_eq!(SegmentIndex::decode(&b, 100, 8999), None);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert_eq!(SegmentIndex::decode(&c, 100, 9000), None, "flip at {i}");
        }
        for len in 0..b.len() {
            assert_eq!(SegmentIndex::decode(&b[..len], 100, 9000), None);
        }
        assert_eq!(idx.floor_position(0), (0, 0));
        assert_eq!(idx.floor_position(5), (3, 4100));
        assert_eq!(idx.floor_position(100), (9, 8300));
    }
}
