//! The leader-epoch cache (KIP-101 / KIP-279): for each leader epoch, the first offset written
//! in it. Persisted in `leader-epoch-checkpoint` (see docs/format.md) on every change.

use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};
use crate::fsutil;

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug)]
pub(crate) struct EpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    /// Loads the checkpoint; `Ok(None)` when it is damaged (the log rebuilds it from the
    /// partition leader epochs stamped in its batches).
    pub(crate) fn load(dir: &Path) -> Result<Option<EpochCache>> {
        match Self::load_strict(dir) {
            Ok(c) => Ok(Some(c)),
            Err(LogError::Corruption { reason, .. }) => {
                tracing::warn!(dir = %dir.display(), %reason, "leader epoch checkpoint damaged; rebuilding from the log");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An empty cache to be filled by [`EpochCache::assign`] from a scan of the log.
    pub(crate) fn empty(dir: &Path) -> EpochCache {
        EpochCache {
            path: dir.join(FILE_NAME),
            entries: Vec::new(),
        }
    }

    fn load_strict(dir: &Path) -> Result<EpochCache> {
        let path = dir.join(FILE_NAME);
        let mut entries = Vec::new();
        match std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned()) {
            Ok(text) => {
                let body = fsutil::check_crc_line(&text).ok_or_else(|| LogError::Corruption {
                    path: path.clone(),
                    offset: -1,
                    position: 0,
                    reason: "leader epoch checkpoint fails its checksum".into(),
                })?;
                let mut lines = body.lines();
                let bad = |why: &str| LogError::Corruption {
                    path: path.clone(),
                    offset: -1,
                    position: 0,
                    reason: why.into(),
                };
                if lines.next() != Some("0") {
                    return Err(bad("unknown leader epoch checkpoint version"));
                }
                let count: usize = lines
                    .next()
                    .and_then(|l| l.parse().ok())
                    .ok_or_else(|| bad("missing count"))?;
                for line in lines.by_ref().take(count) {
                    let mut it = line.split(' ');
                    let epoch = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad("bad epoch"))?;
                    let start_offset = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad("bad offset"))?;
                    entries.push(EpochEntry {
                        epoch,
                        start_offset,
                    });
                }
                if entries.len() != count {
                    return Err(bad("entry count mismatch"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(&path, e)),
        }
        Ok(EpochCache { path, entries })
    }

    fn persist(&self) -> Result<()> {
        let mut body = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            body.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        fsutil::write_atomic(&self.path, fsutil::with_crc_line(&body).as_bytes())
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than the latest epoch.
    /// Entries are strictly increasing in both epoch and start offset.
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<()> {
        if epoch < 0 {
            return Ok(());
        }
        if let Some(last) = self.entries.last() {
            if epoch <= last.epoch {
                return Ok(());
            }
            assert!(
                start_offset >= last.start_offset,
                "epoch start offsets only grow"
            );
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.persist()
    }

    /// The largest epoch <= `epoch` and the offset where the next epoch starts (or
    /// `log_end_offset` for the latest epoch). `None` when no epoch <= `epoch` is known.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let idx = self.entries.iter().rposition(|e| e.epoch <= epoch)?;
        let found = self.entries[idx].epoch;
        let end = self
            .entries
            .get(idx + 1)
            .map(|e| e.start_offset)
            .unwrap_or(log_end_offset);
        Some((found, end))
    }

    /// Drops entries starting at or after `end_offset` (after truncating the log to it).
    pub(crate) fn truncate_from_end(&mut self, end_offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Moves the first epoch's start up to the new log start offset.
    pub(crate) fn truncate_from_start(&mut self, start_offset: i64) -> Result<()> {
        let keep_from = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        let Some(k) = keep_from else { return Ok(()) };
        if k == 0 && self.entries[0].start_offset == start_offset {
            return Ok(());
        }
        self.entries.drain(..k);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }
}
