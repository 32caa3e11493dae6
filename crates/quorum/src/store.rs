//! The durable Raft log: vote file, `purged` file and `.raftlog` segments (docs/format-quorum.md).
//!
//! All live entries (those after the last purged one) are also kept in memory; the snapshot
//! policy bounds how many there are (purge follows every snapshot). The disk is the truth for
//! recovery only.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId,
    RaftLogReader, StorageError, StorageIOError, Vote,
};

use crate::fsutil::{
    atomic_write, be_u32, be_u64, checked, fsync_dir, read_checked, remove_tmp_files,
};
use crate::{StoreError, TypeConfig};

/// Bytes of an entry frame before the payload: length, crc, index, term, leader node, kind.
pub(crate) const ENTRY_HEADER: usize = 4 + 4 + 8 + 8 + 8 + 1;
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const SEGMENT_SUFFIX: &str = ".raftlog";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
}

struct Segment {
    path: PathBuf,
    len: u64,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    entries: BTreeMap<u64, (Entry<TypeConfig>, Loc)>,
    segments: BTreeMap<u64, Segment>,
    /// The last segment, open for appending.
    active: Option<(u64, File)>,
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
    /// Set after a failed write or fsync: the store refuses everything afterwards (an fsync
    /// failure is never retried, because the page cache state after it is unknown).
    failed: Option<String>,
}

/// The openraft log store (and, cloned, its log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Encodes one entry frame.
pub(crate) fn encode_entry(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, std::borrow::Cow::Borrowed(&[])),
        EntryPayload::Normal(cmd) => (KIND_NORMAL, std::borrow::Cow::Borrowed(cmd.as_slice())),
        EntryPayload::Membership(m) => (
            KIND_MEMBERSHIP,
            std::borrow::Cow::Owned(
                serde_json::to_vec(m).map_err(|e| StoreError::Encode(e.to_string()))?,
            ),
        ),
    };
    let len = ENTRY_HEADER - 4 + payload.len();
    let len =
        u32::try_from(len).map_err(|_| StoreError::Encode("entry larger than 4 GiB".into()))?;
    let start = out.len();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Result of decoding the frame at the start of `buf`.
enum Decoded {
    /// A valid frame of `size` bytes.
    Entry(Box<Entry<TypeConfig>>, usize),
    /// Not a valid frame (short, bad length or bad checksum).
    Invalid,
    /// Checksum valid but the payload does not decode: corruption, not a torn write.
    BadPayload(String),
}

fn decode_entry(buf: &[u8]) -> Decoded {
    if buf.len() < ENTRY_HEADER {
        return Decoded::Invalid;
    }
    let len = be_u32(buf) as usize;
    if len < ENTRY_HEADER - 4 || len > buf.len() - 4 {
        return Decoded::Invalid;
    }
    let frame = &buf[..4 + len];
    if crc32c::crc32c(&frame[8..]) != be_u32(&frame[4..]) {
        return Decoded::Invalid;
    }
    let index = be_u64(&frame[8..]);
    let term = be_u64(&frame[16..]);
    let node = be_u64(&frame[24..]);
    let kind = frame[32];
    let payload = &frame[ENTRY_HEADER..];
    let payload = match kind {
        KIND_BLANK if payload.is_empty() => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(payload.to_vec()),
        KIND_MEMBERSHIP => match serde_json::from_slice(payload) {
            Ok(m) => EntryPayload::Membership(m),
            Err(e) => return Decoded::BadPayload(format!("membership payload: {e}")),
        },
        other => return Decoded::BadPayload(format!("unknown entry kind {other}")),
    };
    let log_id = LogId::new(CommittedLeaderId::new(term, node), index);
    Decoded::Entry(Box::new(Entry { log_id, payload }), 4 + len)
}

/// Fuzzing entry point: decodes entry frames from the start of `buf` until one is refused.
pub(crate) fn fuzz_decode_entries(mut buf: &[u8]) {
    // Bounded: every entry consumes at least its header.
    while let Decoded::Entry(_, size) = decode_entry(buf) {
        buf = &buf[size..];
    }
    let _ = valid_frame_after(buf);
}

/// True if a checksum-valid frame starts anywhere in `buf` after position 0.
fn valid_frame_after(buf: &[u8]) -> bool {
    (1..buf.len()).any(|p| !matches!(decode_entry(&buf[p..]), Decoded::Invalid))
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match read_checked(path) {
        Ok(None) => Ok(None),
        Ok(Some(body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| corrupt(path, 0, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(corrupt(path, 0, e.to_string())),
        Err(e) => Err(StoreError::Io {
            context: format!("read {}", path.display()),
            source: e,
        }),
    }
}

/// What recovery found, for logging and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub entries: usize,
    /// Bytes cut from a torn tail (0 if the log ended cleanly).
    pub torn_bytes_cut: u64,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, validating every segment.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<(LogStore, Recovery), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        remove_tmp_files(dir).map_err(io_err("remove tmp files"))?;
        let vote: Option<Vote<u64>> = parse_json(&dir.join(VOTE_FILE))?;
        let purged: Option<LogId<u64>> = parse_json(&dir.join(PURGED_FILE))?;

        let mut bases = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err("list log dir"))? {
            let item = item.map_err(io_err("list log dir"))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                let base = stem
                    .parse::<u64>()
                    .map_err(|_| corrupt(&item.path(), 0, "segment name is not an index"))?;
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut recovery = Recovery::default();
        let mut entries = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut next_index: Option<u64> = None;
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let path = dir.join(segment_name(base));
            let is_last = i + 1 == count;
            let buf = fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
            if let Some(expected) = next_index {
                // A gap is allowed only inside the purged prefix (a purge interrupted between
                // writing `purged` and deleting segments, after the log restarted past it).
                let in_purged =
                    purged.is_some_and(|p| expected <= p.index + 1 && base <= p.index + 1);
                if base != expected && !in_purged {
                    return Err(corrupt(
                        &path,
                        0,
                        format!("segment starts at {base}, expected {expected}"),
                    ));
                }
            }
            let mut pos = 0usize;
            let mut expected = base;
            while pos < buf.len() {
                match decode_entry(&buf[pos..]) {
                    Decoded::Entry(entry, size) => {
                        if entry.log_id.index != expected {
                            return Err(corrupt(
                                &path,
                                pos as u64,
                                format!(
                                    "entry index {} where {expected} was expected",
                                    entry.log_id.index
                                ),
                            ));
                        }
                        expected += 1;
                        if purged.is_none_or(|p| entry.log_id.index > p.index) {
                            let loc = Loc {
                                segment: base,
                                offset: pos as u64,
                            };
                            entries.insert(entry.log_id.index, (*entry, loc));
                        }
                        pos += size;
                    }
                    Decoded::BadPayload(reason) => return Err(corrupt(&path, pos as u64, reason)),
                    Decoded::Invalid => {
                        if !is_last {
                            return Err(corrupt(
                                &path,
                                pos as u64,
                                "invalid entry in a segment that is not the last",
                            ));
                        }
                        if valid_frame_after(&buf[pos..]) {
                            return Err(corrupt(
                                &path,
                                pos as u64,
                                "invalid entry followed by a valid one",
                            ));
                        }
                        break;
                    }
                }
            }
            if pos < buf.len() {
                // Torn tail: nothing valid after `pos`. Cut it, durably, before serving.
                recovery.torn_bytes_cut = (buf.len() - pos) as u64;
                tracing::warn!(path = %path.display(), offset = pos, cut = buf.len() - pos, "cutting torn tail of the raft log");
                if pos == 0 {
                    fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
                    fsync_dir(dir).map_err(io_err("fsync log dir"))?;
                    continue;
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("open {}", path.display())))?;
                f.set_len(pos as u64)
                    .map_err(io_err(format!("truncate {}", path.display())))?;
                f.sync_all()
                    .map_err(io_err(format!("fsync {}", path.display())))?;
            }
            next_index = Some(expected);
            recovery.segments += 1;
            segments.insert(
                base,
                Segment {
                    path,
                    len: pos as u64,
                },
            );
        }
        if let (Some(p), Some((&first, _))) = (purged, entries.first_key_value()) {
            if first != p.index + 1 {
                return Err(corrupt(
                    dir,
                    0,
                    format!("first entry {first} does not follow purged {}", p.index),
                ));
            }
        }
        recovery.entries = entries.len();
        let active = match segments.last_key_value() {
            Some((&base, seg)) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err(format!("open {}", seg.path.display())))?;
                Some((base, f))
            }
            None => None,
        };
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segment_bytes,
            entries,
            segments,
            active,
            vote,
            purged,
            failed: None,
        };
        inner
            .drop_purged_segments()
            .map_err(io_err("remove purged segments"))?;
        recovery.segments = inner.segments.len();
        Ok((
            LogStore {
                inner: Arc::new(Mutex::new(inner)),
            },
            recovery,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data is still consistent with
        // the disk because every mutation updates memory only after the disk.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn se(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

impl Inner {
    fn check(&self) -> Result<(), StorageError<u64>> {
        match &self.failed {
            Some(why) => Err(se(
                ErrorSubject::Store,
                ErrorVerb::Write,
                format!("log store stopped after an I/O failure: {why}"),
            )),
            None => Ok(()),
        }
    }

    fn fail(&mut self, what: &str, e: &io::Error) -> StorageError<u64> {
        let why = format!("{what}: {e}");
        tracing::error!(error = %why, "raft log I/O failed; the node stops");
        self.failed = Some(why.clone());
        se(ErrorSubject::Logs, ErrorVerb::Write, why)
    }

    fn last_log_id(&self) -> Option<LogId<u64>> {
        self.entries
            .last_key_value()
            .map(|(_, (e, _))| e.log_id)
            .or(self.purged)
    }

    /// Appends the frames; returns Ok after fdatasync.
    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> Result<(), StorageError<u64>> {
        self.check()?;
        let mut buf = Vec::new();
        for entry in entries {
            if self.active.is_none()
                || self
                    .segments
                    .get(&self.active_base())
                    .is_none_or(|s| s.len >= self.segment_bytes)
            {
                self.roll(entry.log_id.index)?;
            }
            buf.clear();
            encode_entry(&entry, &mut buf)
                .map_err(|e| se(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            let base = self.active_base();
            let Some((_, file)) = self.active.as_mut() else {
                return Err(se(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    "no active segment",
                ));
            };
            if let Err(e) = file.write_all(&buf) {
                return Err(self.fail("write raft log", &e));
            }
            let seg = self
                .segments
                .get_mut(&base)
                .ok_or_else(|| se(ErrorSubject::Logs, ErrorVerb::Write, "segment missing"))?;
            let loc = Loc {
                segment: base,
                offset: seg.len,
            };
            seg.len += buf.len() as u64;
            self.entries.insert(entry.log_id.index, (entry, loc));
        }
        self.sync_active()
    }

    fn active_base(&self) -> u64 {
        self.active.as_ref().map_or(u64::MAX, |(b, _)| *b)
    }

    fn sync_active(&mut self) -> Result<(), StorageError<u64>> {
        if let Some((_, file)) = self.active.as_ref() {
            if let Err(e) = file.sync_data() {
                return Err(self.fail("fdatasync raft log", &e));
            }
        }
        Ok(())
    }

    /// Starts a new segment at `base`, after making the previous one durable.
    fn roll(&mut self, base: u64) -> Result<(), StorageError<u64>> {
        self.sync_active()?;
        let path = self.dir.join(segment_name(base));
        let file = match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) => return Err(self.fail("create raft log segment", &e)),
        };
        if let Err(e) = fsync_dir(&self.dir) {
            return Err(self.fail("fsync log dir", &e));
        }
        self.segments.insert(base, Segment { path, len: 0 });
        self.active = Some((base, file));
        Ok(())
    }

    fn reopen_active(&mut self) -> Result<(), StorageError<u64>> {
        self.active = None;
        if let Some((&base, seg)) = self.segments.last_key_value() {
            match OpenOptions::new().append(true).open(&seg.path) {
                Ok(f) => self.active = Some((base, f)),
                Err(e) => return Err(self.fail("reopen raft log segment", &e)),
            }
        }
        Ok(())
    }

    /// Removes entries at and after `index`: later segments are deleted newest first (a crash
    /// midway leaves a contiguous prefix), then the segment holding `index` is cut.
    fn truncate(&mut self, index: u64) -> Result<(), StorageError<u64>> {
        self.check()?;
        let Some((_, loc)) = self.entries.get(&index).map(|(e, l)| (e.log_id, *l)) else {
            return Ok(());
        };
        let later: Vec<u64> = self
            .segments
            .range(loc.segment + 1..)
            .map(|(b, _)| *b)
            .rev()
            .collect();
        self.active = None;
        for base in later {
            if let Some(seg) = self.segments.remove(&base) {
                if let Err(e) = fs::remove_file(&seg.path) {
                    return Err(self.fail("remove raft log segment", &e));
                }
            }
        }
        if loc.offset == 0 {
            if let Some(seg) = self.segments.remove(&loc.segment) {
                if let Err(e) = fs::remove_file(&seg.path) {
                    return Err(self.fail("remove raft log segment", &e));
                }
            }
        } else if let Some(seg) = self.segments.get_mut(&loc.segment) {
            let res = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .and_then(|f| {
                    f.set_len(loc.offset)?;
                    f.sync_all()
                });
            if let Err(e) = res {
                return Err(self.fail("truncate raft log segment", &e));
            }
            seg.len = loc.offset;
        }
        if let Err(e) = fsync_dir(&self.dir) {
            return Err(self.fail("fsync log dir", &e));
        }
        self.entries.split_off(&index);
        self.reopen_active()
    }

    /// Deletes the segments that hold only entries at or before the purged index (also run at
    /// open, to finish a purge interrupted after the `purged` file was written).
    fn drop_purged_segments(&mut self) -> io::Result<()> {
        let Some(purged) = self.purged else {
            return Ok(());
        };
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for (i, base) in bases.iter().enumerate() {
            // Segment `base` holds entries below the next segment's base; the last segment holds
            // live entries iff any remain.
            let all_purged = match bases.get(i + 1) {
                Some(next) => next - 1 <= purged.index,
                None => self.entries.is_empty(),
            };
            if !all_purged {
                break;
            }
            if let Some(seg) = self.segments.remove(base) {
                if self.active_base() == *base {
                    self.active = None;
                }
                fs::remove_file(&seg.path)?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Records `log_id` as purged (atomic replace), then deletes segments holding only purged
    /// entries.
    fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.check()?;
        if self.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let body =
            serde_json::to_vec(&log_id).map_err(|e| se(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        if let Err(e) = atomic_write(&self.dir, PURGED_FILE, &checked(&body)) {
            return Err(self.fail("write purged file", &e));
        }
        self.purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
        if let Err(e) = self.drop_purged_segments() {
            return Err(self.fail("remove purged segments", &e));
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner.check()?;
        let body =
            serde_json::to_vec(vote).map_err(|e| se(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let dir = inner.dir.clone();
        if let Err(e) = atomic_write(&dir, VOTE_FILE, &checked(&body)) {
            return Err(inner.fail("write vote file", &e));
        }
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let res = self.lock().append(entries);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.lock().truncate(log_id.index)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.lock().purge(log_id)
    }
}

#[cfg(test)]
mod tests;
