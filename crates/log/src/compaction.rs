//! Log compaction (`cleanup.policy=compact`): keep the latest record per key in closed
//! segments. Offsets are preserved; tombstones are kept for `delete.retention.ms`; segments
//! younger than `min.compaction.lag.ms` and the active segment are never touched.
//!
//! A pass has three steps so that the broker holds the partition lock only briefly:
//! [`Log::compaction_plan`] (under the lock) names the cleanable segments,
//! [`CompactionPlan::run`] (no lock) builds the key map and writes `<base>.cleaned` files,
//! [`Log::install_compaction`] (under the lock) swaps them in with atomic renames.
//! Memory is bounded by `max_map_entries` key hashes; I/O by an optional byte rate.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::error::{LogError, Result};

pub(crate) const CLEANED_SUFFIX: &str = "cleaned";

/// Default bound on distinct keys held in memory by one pass (24 bytes each).
pub const DEFAULT_MAX_MAP_ENTRIES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct PlannedSegment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub size: u64,
    pub max_timestamp: i64,
}

/// The cleanable segments of a log, captured under its lock.
#[derive(Debug, Clone)]
pub struct CompactionPlan {
    pub(crate) segments: Vec<PlannedSegment>,
    /// Tombstones in segments whose max timestamp is below this are removed.
    pub(crate) delete_horizon_ms: i64,
    pub max_map_entries: usize,
    /// Bytes read plus written per second; `None` for unthrottled.
    pub io_bytes_per_sec: Option<u64>,
    /// Aborted transactions: producer id -> (first offset, marker offset). Their data is
    /// removed (as Kafka's cleaner does); committed transactional data is compacted like
    /// any other. Only segments below the first open transaction are planned.
    pub(crate) aborted: HashMap<i64, Vec<(i64, i64)>>,
}

impl CompactionPlan {
    fn is_aborted(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.aborted.get(&h.producer_id).is_some_and(|v| {
                v.iter()
                    .any(|(first, last)| *first <= h.base_offset && h.base_offset < *last)
            })
    }
}

/// A rewritten segment ready to be swapped in.
#[derive(Debug, Clone)]
pub struct CleanedSegment {
    pub(crate) base_offset: i64,
    pub(crate) original_size: u64,
    pub(crate) cleaned_path: PathBuf,
    pub(crate) cleaned_size: u64,
}

#[derive(Debug, Clone, Default)]
pub struct CompactionOutput {
    pub(crate) cleaned: Vec<CleanedSegment>,
    /// Offset below which the log is now clean.
    pub(crate) clean_end: i64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Every closed segment below this offset has been compacted.
    pub cleaned_up_to: i64,
}

/// A 128-bit key fingerprint from two independently keyed SipHashes.
struct KeyHasher(RandomState, RandomState);

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher(RandomState::new(), RandomState::new())
    }
    fn hash(&self, key: &[u8]) -> u128 {
        (u128::from(self.0.hash_one(key)) << 64) | u128::from(self.1.hash_one(key))
    }
}

struct Throttle {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// Calls `f` with every batch of a segment file (header, bytes).
fn for_each_batch(
    seg: &PlannedSegment,
    throttle: &mut Throttle,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut pos = 0u64;
    let mut buf = Vec::new();
    // Bounded by the segment size; each step advances by a whole batch.
    while pos < seg.size {
        let mut hb = [0u8; HEADER_SIZE];
        seg.file
            .read_exact_at(&mut hb, pos)
            .map_err(|e| LogError::io(&seg.path, e))?;
        let h = BatchHeader::parse(&hb).ok_or_else(|| LogError::Corruption {
            path: seg.path.clone(),
            offset: -1,
            position: pos,
            reason: "unreadable header during compaction".into(),
        })?;
        let total = h.total_size();
        if total < HEADER_SIZE || pos + total as u64 > seg.size {
            return Err(LogError::Corruption {
                path: seg.path.clone(),
                offset: h.base_offset,
                position: pos,
                reason: "batch runs past the segment".into(),
            });
        }
        buf.resize(total, 0);
        seg.file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io(&seg.path, e))?;
        throttle.account(total as u64);
        f(&h, &buf)?;
        pos += total as u64;
    }
    Ok(())
}

impl CompactionPlan {
    /// Builds the key map and writes the cleaned segments. Touches no state of the log.
    pub fn run(self) -> Result<CompactionOutput> {
        let hasher = KeyHasher::new();
        let mut throttle = Throttle {
            rate: self.io_bytes_per_sec,
            start: Instant::now(),
            bytes: 0,
        };
        // Pass 1: latest offset of every key, over whole segments while the map has room.
        let mut latest: HashMap<u128, i64> = HashMap::new();
        let mut mapped = 0;
        'segments: for seg in &self.segments {
            let mut full = false;
            let mut seg_map: Vec<(u128, i64)> = Vec::new();
            for_each_batch(seg, &mut throttle, |h, b| {
                if h.is_control() || self.is_aborted(h) {
                    // Markers are kept; aborted data never counts as a key's latest value.
                    return Ok(());
                }
                batch::for_each_stored_record(h, b, |r| {
                    if let Some(k) = r.key {
                        seg_map.push((hasher.hash(k), h.base_offset + i64::from(r.offset_delta)));
                    }
                    Ok(())
                })
                .map_err(|e| LogError::Corruption {
                    path: seg.path.clone(),
                    offset: h.base_offset,
                    position: 0,
                    reason: e.to_string(),
                })
            })?;
            for (k, o) in seg_map {
                if latest.len() >= self.max_map_entries && !latest.contains_key(&k) {
                    full = true;
                    break;
                }
                latest.insert(k, o);
            }
            if full {
                // This segment is only partly mapped: clean only the ones before it.
                break 'segments;
            }
            mapped += 1;
        }
        let mut out = CompactionOutput::default();
        if mapped == 0 {
            return Ok(out);
        }
        // Pass 2: rewrite each mapped segment, keeping the latest record per key.
        for seg in &self.segments[..mapped] {
            let cleaned_path = seg.path.with_extension(CLEANED_SUFFIX);
            let mut w = std::io::BufWriter::new(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&cleaned_path)
                    .map_err(|e| LogError::io(&cleaned_path, e))?,
            );
            let mut written = 0u64;
            let mut changed = false;
            let tombstones_expire = seg.max_timestamp < self.delete_horizon_ms;
            let (mut removed, mut tombstones) = (0u64, 0u64);
            for_each_batch(seg, &mut throttle, |h, b| {
                let kept = if h.is_control() {
                    // Markers stay: a read_committed reader of the remaining data needs them.
                    Some(b.to_vec())
                } else if self.is_aborted(h) {
                    removed += u64::try_from(h.records_count.max(0)).unwrap_or(0);
                    None
                } else {
                    batch::retain_records(h, b, |offset, r| {
                        let Some(k) = r.key else { return true };
                        let is_latest = latest.get(&hasher.hash(k)).is_none_or(|&l| l <= offset);
                        let keep = is_latest && !(r.value.is_none() && tombstones_expire);
                        if !keep {
                            removed += 1;
                            if r.value.is_none() {
                                tombstones += 1;
                            }
                        }
                        keep
                    })
                    .map_err(|e| LogError::Corruption {
                        path: seg.path.clone(),
                        offset: h.base_offset,
                        position: 0,
                        reason: e.to_string(),
                    })?
                };
                match kept {
                    Some(k) => {
                        changed |= k.len() != b.len();
                        w.write_all(&k)
                            .map_err(|e| LogError::io(&cleaned_path, e))?;
                        written += k.len() as u64;
                    }
                    None => changed = true,
                }
                Ok(())
            })?;
            throttle.account(written);
            let f = w
                .into_inner()
                .map_err(|e| LogError::io(&cleaned_path, e.into_error()))?;
            if !changed {
                drop(f);
                std::fs::remove_file(&cleaned_path).map_err(|e| LogError::io(&cleaned_path, e))?;
                continue;
            }
            f.sync_all().map_err(|e| LogError::io(&cleaned_path, e))?;
            out.records_removed += removed;
            out.tombstones_removed += tombstones;
            out.cleaned.push(CleanedSegment {
                base_offset: seg.base_offset,
                original_size: seg.size,
                cleaned_path,
                cleaned_size: written,
            });
        }
        out.clean_end = self
            .segments
            .get(mapped)
            .map(|s| s.base_offset)
            .unwrap_or(i64::MAX);
        Ok(out)
    }
}
