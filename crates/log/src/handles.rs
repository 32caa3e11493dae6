//! Bounded open files. The active segment of each log keeps its file open; closed segments
//! open theirs on demand and the most recently used stay open in a process-wide LRU of at
//! most [`set_open_segment_limit`] handles. Segments hold only a weak reference, so an
//! evicted handle closes as soon as no read in flight holds it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crate::error::{LogError, Result};

static LIMIT: AtomicUsize = AtomicUsize::new(1024);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Sets how many closed-segment files may stay open at once (default 1024).
pub fn set_open_segment_limit(limit: usize) {
    LIMIT.store(limit.max(1), Ordering::Relaxed);
}

/// Closed-segment files currently held open by the cache.
pub fn open_segment_handles() -> usize {
    lock(cache()).by_id.len()
}

#[derive(Default)]
struct Lru {
    by_id: HashMap<u64, (Arc<File>, u64)>,
    by_tick: BTreeMap<u64, u64>,
    tick: u64,
}

fn cache() -> &'static Mutex<Lru> {
    static CACHE: OnceLock<Mutex<Lru>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Lru::default()))
}

fn lock(m: &Mutex<Lru>) -> MutexGuard<'_, Lru> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lru {
    fn touch(&mut self, id: u64, file: Arc<File>) {
        self.tick += 1;
        if let Some((_, old_tick)) = self.by_id.insert(id, (file, self.tick)) {
            self.by_tick.remove(&old_tick);
        }
        self.by_tick.insert(self.tick, id);
        let limit = LIMIT.load(Ordering::Relaxed);
        // Bounded: each iteration removes one entry.
        while self.by_id.len() > limit {
            let Some((&t, &victim)) = self.by_tick.iter().next() else {
                break;
            };
            self.by_tick.remove(&t);
            self.by_id.remove(&victim);
        }
    }
    fn remove(&mut self, id: u64) {
        if let Some((_, t)) = self.by_id.remove(&id) {
            self.by_tick.remove(&t);
        }
    }
}

/// A segment's file: pinned open while the segment is active, cached when closed.
#[derive(Debug)]
pub(crate) struct FileHandle {
    id: u64,
    path: PathBuf,
    pinned: Option<Arc<File>>,
    weak: Mutex<Weak<File>>,
}

impl FileHandle {
    pub(crate) fn pinned(path: &Path, file: File) -> FileHandle {
        let file = Arc::new(file);
        FileHandle {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            weak: Mutex::new(Arc::downgrade(&file)),
            pinned: Some(file),
        }
    }

    /// The open file, reopening it if the cache closed it.
    pub(crate) fn get(&self) -> Result<Arc<File>> {
        if let Some(f) = &self.pinned {
            return Ok(Arc::clone(f));
        }
        let mut weak = self.weak.lock().unwrap_or_else(|p| p.into_inner());
        let file = match weak.upgrade() {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| LogError::io(&self.path, e))?;
                let f = Arc::new(f);
                *weak = Arc::downgrade(&f);
                f
            }
        };
        drop(weak);
        lock(cache()).touch(self.id, Arc::clone(&file));
        Ok(file)
    }

    /// The file of a pinned (active) segment.
    pub(crate) fn pinned_file(&self) -> Option<&Arc<File>> {
        self.pinned.as_ref()
    }

    /// The segment became closed: its file may be closed when unused.
    pub(crate) fn unpin(&mut self) {
        if let Some(f) = self.pinned.take() {
            lock(cache()).touch(self.id, f);
        }
    }

    /// The segment became active again (truncation): keep its file open.
    pub(crate) fn pin(&mut self) -> Result<()> {
        if self.pinned.is_none() {
            let f = self.get()?;
            lock(cache()).remove(self.id);
            self.pinned = Some(f);
        }
        Ok(())
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        lock(cache()).remove(self.id);
    }
}
