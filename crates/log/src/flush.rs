//! Group commit: one flusher thread per broker fsyncs every file with pending appends, then
//! advances each partition's [`DurableWatch`]. Appends that arrive while a round of fsyncs is
//! running are collected into the next round, so concurrent appends on all partitions share
//! rounds instead of each paying for its own fsync.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::error::LogError;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// "Every offset below `durable_end` is on stable storage", per partition. Callers wait on it
/// with [`DurableWatch::wait_for`] (async) or [`DurableWatch::wait_blocking`].
#[derive(Debug)]
pub struct DurableWatch {
    state: Mutex<WatchState>,
    cond: Condvar,
    next_waiter_id: AtomicU64,
}

#[derive(Debug)]
struct WatchState {
    durable_end: i64,
    failed: Option<String>,
    wakers: HashMap<u64, (i64, Waker)>,
}

/// Bound on registered async waiters per partition; the broker bounds in-flight produce
/// requests far below this. Past it, a waiter falls back to being woken on every advance.
const MAX_WAKERS: usize = 65_536;

impl DurableWatch {
    pub fn new(durable_end: i64) -> Arc<DurableWatch> {
        Arc::new(DurableWatch {
            state: Mutex::new(WatchState {
                durable_end,
                failed: None,
                wakers: HashMap::new(),
            }),
            cond: Condvar::new(),
            next_waiter_id: AtomicU64::new(0),
        })
    }

    pub fn durable_end(&self) -> i64 {
        lock(&self.state).durable_end
    }

    /// The error that took this partition's durability down, if any.
    pub fn failure(&self) -> Option<String> {
        lock(&self.state).failed.clone()
    }

    /// Moves the durable end forward (never back: see [`DurableWatch::reset_after_truncation`]).
    pub(crate) fn advance(&self, end: i64) {
        let mut s = lock(&self.state);
        if end <= s.durable_end {
            return;
        }
        s.durable_end = end;
        let ready: Vec<u64> = s
            .wakers
            .iter()
            .filter(|(_, (t, _))| *t <= end)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some((_, w)) = s.wakers.remove(&id) {
                w.wake();
            }
        }
        drop(s);
        self.cond.notify_all();
    }

    /// After an explicit truncation the durable end may move back to the new log end.
    pub(crate) fn reset_after_truncation(&self, end: i64) {
        let mut s = lock(&self.state);
        if end < s.durable_end {
            s.durable_end = end;
        }
    }

    pub(crate) fn fail(&self, why: String) {
        let mut s = lock(&self.state);
        if s.failed.is_none() {
            s.failed = Some(why);
        }
        for (_, (_, w)) in s.wakers.drain() {
            w.wake();
        }
        drop(s);
        self.cond.notify_all();
    }

    /// Resolves once every offset below `end` is durable, or with the fsync error.
    pub fn wait_for(self: &Arc<Self>, end: i64) -> DurableWait {
        DurableWait {
            watch: Arc::clone(self),
            end,
            id: self.next_waiter_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Blocks the calling thread until every offset below `end` is durable.
    pub fn wait_blocking(&self, end: i64) -> Result<(), LogError> {
        let mut s = lock(&self.state);
        loop {
            if let Some(f) = &s.failed {
                return Err(LogError::Offline(f.clone()));
            }
            if s.durable_end >= end {
                return Ok(());
            }
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Future returned by [`DurableWatch::wait_for`]; runtime-agnostic.
#[derive(Debug)]
pub struct DurableWait {
    watch: Arc<DurableWatch>,
    end: i64,
    id: u64,
}

impl Future for DurableWait {
    type Output = Result<(), LogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.watch.state);
        if let Some(f) = &s.failed {
            return Poll::Ready(Err(LogError::Offline(f.clone())));
        }
        if s.durable_end >= self.end {
            s.wakers.remove(&self.id);
            return Poll::Ready(Ok(()));
        }
        if s.wakers.len() < MAX_WAKERS || s.wakers.contains_key(&self.id) {
            s.wakers.insert(self.id, (self.end, cx.waker().clone()));
        } else {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for DurableWait {
    fn drop(&mut self) {
        lock(&self.watch.state).wakers.remove(&self.id);
    }
}

/// A file with appends not yet fsynced, and the durable end its fsync establishes.
struct FlushRequest {
    file: Arc<File>,
    watch: Arc<DurableWatch>,
    end: i64,
}

#[derive(Default)]
struct Queue {
    requests: Vec<FlushRequest>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
    stats: FlushStats,
}

/// Counters of the flusher, for metrics and the benchmark.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub rounds: AtomicU64,
    pub fsyncs: AtomicU64,
    pub requests: AtomicU64,
    /// Wall time of each round's fsyncs (all files of the round, issued concurrently), as a
    /// cumulative histogram: `round_latency_buckets[i]` counts rounds that took at most
    /// `ROUND_LATENCY_BOUNDS_US[i]`; rounds slower than the last bound count only in
    /// `rounds_timed`. Measured for metrics only; no decision reads it.
    pub round_latency_buckets: [AtomicU64; ROUND_LATENCY_BOUNDS_US.len()],
    pub round_latency_sum_us: AtomicU64,
    pub rounds_timed: AtomicU64,
}

/// Upper bounds (µs) of the fsync round latency histogram buckets.
pub const ROUND_LATENCY_BOUNDS_US: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

impl FlushStats {
    fn observe_round(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        for (i, bound) in ROUND_LATENCY_BOUNDS_US.iter().enumerate() {
            if us <= *bound {
                self.round_latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.round_latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.rounds_timed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Handle to the group-commit thread; cloning shares it.
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

/// Most requests in the queue before appenders wait for a round to drain it (backpressure).
const MAX_QUEUED_REQUESTS: usize = 1 << 16;

impl Flusher {
    /// Starts the flusher thread.
    pub fn start() -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
            stats: FlushStats::default(),
        });
        let s2 = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("holdfast-flusher".into())
            .spawn(move || run(s2))?;
        Ok(Flusher {
            shared,
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    pub fn stats(&self) -> &FlushStats {
        &self.shared.stats
    }

    /// Asks for `file` to be fsynced; `watch` advances to `end` after it is.
    pub(crate) fn request(&self, file: Arc<File>, watch: Arc<DurableWatch>, end: i64) {
        let mut q = lock(&self.shared.queue);
        while q.requests.len() >= MAX_QUEUED_REQUESTS && !q.shutdown {
            q = self.shared.cond.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.requests.push(FlushRequest { file, watch, end });
        drop(q);
        self.shared.cond.notify_all();
    }

    /// Finishes queued work and stops the thread.
    pub fn shutdown(&self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.cond.notify_all();
        if let Some(h) = lock(&self.thread).take() {
            if h.join().is_err() {
                tracing::error!("flusher thread panicked");
            }
        }
    }
}

/// Most threads syncing files at once in one round.
const MAX_SYNC_THREADS: usize = 8;

/// Test hook (fault injection): this many of the next group-commit fsyncs fail as if the
/// device had returned EIO. Zero unless a test or the broker's test-only switch
/// (`HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1=1`, used by the chaos harness) sets it.
static INJECTED_FSYNC_FAILURES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Makes the next `n` group-commit fsyncs fail with an injected EIO (test hook).
pub fn inject_fsync_failures(n: u32) {
    INJECTED_FSYNC_FAILURES.fetch_add(n, Ordering::SeqCst);
}

fn sync_one(f: &File) -> Result<(), String> {
    let injected = INJECTED_FSYNC_FAILURES
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if injected {
        // The data was written (it is in the page cache) but is reported as not durable:
        // what a real EIO from fsync means, minus the kernel dropping the dirty pages.
        return Err("Input/output error (os error 5) [injected by the fsync test hook]".into());
    }
    f.sync_data().map_err(|e| e.to_string())
}

fn sync_all_concurrently(files: &[Arc<File>]) -> Vec<Result<(), String>> {
    if files.len() <= 1 {
        return files.iter().map(|f| sync_one(f)).collect();
    }
    let chunk = files.len().div_ceil(MAX_SYNC_THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|f| sync_one(f)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("fsync thread panicked".to_string()); chunk])
            })
            .collect()
    })
}

fn run(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut q = lock(&shared.queue);
            while q.requests.is_empty() && !q.shutdown {
                q = shared.cond.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.requests.is_empty() && q.shutdown {
                return;
            }
            std::mem::take(&mut q.requests)
        };
        shared.cond.notify_all();
        shared.stats.rounds.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // One fsync per distinct file in this round, issued concurrently: the file system
        // (ext4's jbd2) folds concurrent fsyncs into shared journal commits and device flushes,
        // so partitions share the cost instead of queueing behind each other.
        let mut files: Vec<Arc<File>> = Vec::new();
        for r in &batch {
            if !files.iter().any(|f| Arc::ptr_eq(f, &r.file)) {
                files.push(Arc::clone(&r.file));
            }
        }
        shared
            .stats
            .fsyncs
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let results = sync_all_concurrently(&files);
        shared.stats.observe_round(started.elapsed());
        let synced: HashMap<*const File, Result<(), String>> =
            files.iter().map(Arc::as_ptr).zip(results).collect();
        // Files of one partition are synced in the same or an earlier round than any later
        // file of it, so advancing after the whole round keeps "durable" a prefix.
        for r in batch {
            match &synced[&Arc::as_ptr(&r.file)] {
                Ok(()) => r.watch.advance(r.end),
                Err(e) => {
                    // After a failed fsync the page cache can no longer be trusted (the kernel may
                    // have dropped the dirty pages): the partition goes offline, never retries.
                    tracing::error!(error = %e, "fsync failed; partition taken offline");
                    r.watch.fail(format!("fsync failed: {e}"));
                }
            }
        }
    }
}
