//! The history: every operation as invoke / ok / fail / info events, streamed to JSONL and
//! kept in memory (bounded) for the checker.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// invoke: the operation started; ok: it definitely happened; fail: it definitely did not;
/// info: unknown (indefinite error, or no answer).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What the operation was.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum F {
    /// A produce of one unique value (acks=all, idempotent).
    Send,
    /// One record returned by a consumer poll during the run.
    Poll,
    /// A ListOffsets observation of (log start, high watermark).
    Watermarks,
    /// One record read by the fresh consumer after healing.
    FinalRead,
    /// A produce after healing that must succeed within the liveness deadline.
    Probe,
    /// A fault being injected (invoke) and healed (ok).
    Fault,
    /// One record returned by a poll of a consumer-group member (`--groups`); the process is
    /// the member incarnation.
    GroupPoll,
    /// A synchronous OffsetCommit of a group member, with the offsets per partition.
    GroupCommit,
    /// An OffsetFetch of the group's committed offsets by the watcher (invoke, then ok/info).
    GroupOffsets,
    /// A group member's life: started, assigned, revoked, closed (value says which).
    GroupMember,
    /// The fresh OffsetFetch after the workload stopped (the group's final offsets) and the
    /// group's liveness result.
    GroupFinal,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Event {
    /// Microseconds since the run started.
    pub t_us: u64,
    pub kind: Kind,
    pub f: F,
    pub process: String,
    pub op: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Offsets per partition (group commits and committed-offset observations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<Vec<(i32, i64)>>,
}

impl Event {
    pub fn new(kind: Kind, f: F, process: &str, op: u64) -> Event {
        Event {
            t_us: 0,
            kind,
            f,
            process: process.to_string(),
            op,
            value: None,
            partition: None,
            offset: None,
            low: None,
            high: None,
            code: None,
            error: None,
            offsets: None,
        }
    }
    pub fn value(mut self, v: &str) -> Event {
        self.value = Some(v.to_string());
        self
    }
    pub fn partition(mut self, p: i32) -> Event {
        self.partition = Some(p);
        self
    }
    pub fn offset(mut self, o: i64) -> Event {
        self.offset = Some(o);
        self
    }
    pub fn offsets(mut self, o: Vec<(i32, i64)>) -> Event {
        self.offsets = Some(o);
        self
    }
    pub fn error(mut self, code: Option<i32>, e: String) -> Event {
        self.code = code;
        self.error = Some(e);
        self
    }
}

/// Upper bound on events kept; beyond it the run is declared invalid (never silently cut).
pub const MAX_EVENTS: usize = 4_000_000;

pub struct Recorder {
    start: Instant,
    next_op: AtomicU64,
    overflow: AtomicBool,
    /// Count of acknowledged sends, for a nemesis that strikes right after an ack.
    acks: AtomicU64,
    /// Count of acknowledged group commits, for a nemesis that strikes right after one.
    commit_acks: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    out: BufWriter<File>,
    events: Vec<Event>,
    write_error: Option<String>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let f = File::create(path)?;
        Ok(Recorder {
            start: Instant::now(),
            next_op: AtomicU64::new(0),
            overflow: AtomicBool::new(false),
            acks: AtomicU64::new(0),
            commit_acks: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                out: BufWriter::new(f),
                events: Vec::new(),
                write_error: None,
            }),
        })
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn next_op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until a send is acknowledged after the call; true if one was.
    pub fn wait_for_ack(&self, deadline: std::time::Duration) -> bool {
        Self::wait_for_count(&self.acks, deadline)
    }

    /// Waits (bounded) until a group commit is acknowledged after the call; true if one was.
    pub fn wait_for_commit_ack(&self, deadline: std::time::Duration) -> bool {
        Self::wait_for_count(&self.commit_acks, deadline)
    }

    fn wait_for_count(c: &AtomicU64, deadline: std::time::Duration) -> bool {
        let n = c.load(Ordering::SeqCst);
        let t = Instant::now();
        while t.elapsed() < deadline {
            if c.load(Ordering::SeqCst) > n {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        false
    }

    pub fn record(&self, e: Event) {
        self.record_stamped(e, None);
    }

    /// [`Recorder::record`] with the time the event happened (microseconds since the start)
    /// when it is known to be earlier than now: a Java producer's invoke, taken by the
    /// program before `send()` (crates/chaos/src/java.rs). Never later than now.
    pub fn record_at(&self, e: Event, t_us: u64) {
        self.record_stamped(e, Some(t_us));
    }

    fn record_stamped(&self, mut e: Event, at_us: Option<u64>) {
        if e.kind == Kind::Ok && e.f == F::Send {
            self.acks.fetch_add(1, Ordering::SeqCst);
        }
        if e.kind == Kind::Ok && e.f == F::GroupCommit {
            self.commit_acks.fetch_add(1, Ordering::SeqCst);
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.events.len() >= MAX_EVENTS {
            self.overflow.store(true, Ordering::Relaxed);
            return;
        }
        let now = self.now_us();
        e.t_us = at_us.map_or(now, |t| t.min(now));
        match serde_json::to_string(&e) {
            Ok(line) => {
                if let Err(err) = writeln!(g.out, "{line}") {
                    g.write_error.get_or_insert(err.to_string());
                }
            }
            Err(err) => {
                g.write_error.get_or_insert(err.to_string());
            }
        }
        g.events.push(e);
    }

    /// Flushes the JSONL file and returns a copy of the events.
    pub fn finish(&self) -> anyhow::Result<Vec<Event>> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("history lock poisoned"))?;
        g.out.flush()?;
        if let Some(e) = &g.write_error {
            anyhow::bail!("writing the history failed: {e}");
        }
        Ok(g.events.clone())
    }
}
