//! The consumer-group workload (`--groups`), through librdkafka: [`MEMBERS`] consumers in one
//! group subscribe to the `chaos` topic, poll, and commit their positions synchronously at
//! most every [`COMMIT_EVERY_MS`] ms. Each member is closed and restarted by the workload
//! itself after a seeded lifetime, forcing rebalances on top of the broker faults. A watcher
//! (a consumer with the same `group.id` that never joins) reads the committed offsets with
//! OffsetFetch every [`WATCH_EVERY_MS`] ms. Every poll, commit, membership change and
//! observation goes into the history; `checker::check_groups` checks them.
//!
//! Assignor: `range`, the eager protocol. Every rebalance revokes every partition from every
//! member, and every member then reads its new partitions' committed offsets from the
//! coordinator: each rebalance is a full hand-off through `__consumer_offsets`, which is what
//! the checks are about. The cooperative protocol moves only some partitions and adds
//! librdkafka's own incremental state machine, which would make an anomaly harder to pin
//! on the broker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{Event, Kind, Recorder, F};
use crate::workload::{PARTITIONS, TOPIC};

pub const GROUP: &str = "chaos-group";
pub const MEMBERS: usize = 3;
/// A member commits its positions at most this often (and only when they moved).
pub const COMMIT_EVERY_MS: u64 = 100;
/// The watcher reads the committed offsets this often.
pub const WATCH_EVERY_MS: u64 = 200;
/// Liveness: after the producers stopped, the committed offsets must reach the high
/// watermark of every partition within this deadline. It covers one session timeout
/// ([`SESSION_TIMEOUT_MS`], a member whose LeaveGroup was lost), a rebalance and the catch-up
/// of the last few thousand records, with room for a loaded 2-core machine.
pub const LIVENESS_DEADLINE_S: u64 = 30;
/// Session timeout of the members (the broker's minimum is 6 s, Kafka's default 45 s would
/// make a lost LeaveGroup stall the group for most of a short run).
pub const SESSION_TIMEOUT_MS: u32 = 6000;
/// How long a power cut waits for a commit acknowledgement before striking anyway: longer
/// than a session timeout, so a group stalled by members restored from the log (until their
/// sessions expire) has recovered and is committing again.
pub const STRIKE_WAIT: Duration = Duration::from_millis(SESSION_TIMEOUT_MS as u64 + 2000);
/// Bound on the incarnations of one member (each lives at least 2 s).
const MAX_INCARNATIONS: u32 = 10_000;
/// Bound on joining a thread at stop; a thread still stuck after it is reported, not waited.
const JOIN_DEADLINE: Duration = Duration::from_secs(40);

/// Set by the nemesis from just before it kills the broker until the watcher has read the
/// committed offsets after the restart: members keep polling but do not commit, so the
/// first observation after a crash shows what the broker kept, before new commits can cover
/// a lost one. (A client that is slow to commit is ordinary; nothing else changes.)
static HOLD_COMMITS: AtomicBool = AtomicBool::new(false);
/// Successful watcher reads so far.
static WATCH_READS: AtomicU64 = AtomicU64::new(0);

/// Holds the members' commits; returns the watcher's read count to pass to
/// [`release_after_watch`].
pub fn hold_commits() -> u64 {
    HOLD_COMMITS.store(true, Ordering::SeqCst);
    WATCH_READS.load(Ordering::SeqCst)
}

/// Waits (bounded) until the watcher completed two more reads than `reads_before` (the second
/// one was invoked after the first completed, so after the restart), then lets the members
/// commit again. Returns whether the watcher read in time.
pub fn release_after_watch(reads_before: u64, deadline: Duration) -> bool {
    let t = Instant::now();
    let mut read = false;
    while t.elapsed() < deadline {
        if WATCH_READS.load(Ordering::SeqCst) >= reads_before + 2 {
            read = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    HOLD_COMMITS.store(false, Ordering::SeqCst);
    read
}

/// Errors after which the commit is known NOT to have been applied: the coordinator refused
/// it before appending (generation, membership, rebalance, size checks).
pub fn is_definite_commit_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::IllegalGeneration
            | C::UnknownMemberId
            | C::RebalanceInProgress
            | C::FencedInstanceId
            | C::OffsetMetadataTooLarge
            | C::InvalidCommitOffsetSize
            | C::GroupAuthorizationFailed
            | C::TopicAuthorizationFailed
            | C::UnknownTopicOrPartition
            | C::StaleMemberEpoch
    )
}

fn classify(e: &KafkaError) -> (Kind, Option<i32>, String) {
    match e.rdkafka_error_code() {
        Some(c) if is_definite_commit_error(c) => (Kind::Fail, Some(c as i32), format!("{c:?}")),
        Some(c) => (Kind::Info, Some(c as i32), format!("{c:?}")),
        None => (Kind::Info, None, e.to_string()),
    }
}

/// Records assignments and revocations of one member incarnation.
struct MemberCtx {
    rec: Arc<Recorder>,
    process: String,
}

impl ClientContext for MemberCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if std::env::var_os("CHAOS_GROUP_DEBUG").is_some() {
            eprintln!("[{}] rdkafka {level:?} {fac}: {log_message}", self.process);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == TOPIC)
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

impl ConsumerContext for MemberCtx {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let (what, parts) = match r {
            Rebalance::Assign(tpl) => ("assigned", partitions_of(tpl)),
            Rebalance::Revoke(tpl) => ("revoked", partitions_of(tpl)),
            Rebalance::Error(e) => {
                self.rec.record(
                    Event::new(
                        Kind::Info,
                        F::GroupMember,
                        &self.process,
                        self.rec.next_op(),
                    )
                    .value("rebalance-error")
                    .error(None, e.to_string()),
                );
                return;
            }
        };
        self.rec.record(
            Event::new(Kind::Ok, F::GroupMember, &self.process, self.rec.next_op())
                .value(what)
                .offsets(parts),
        );
    }
}

fn group_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    crate::workload::with_socket_timeout(&mut cfg)
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3");
    if let Ok(d) = std::env::var("CHAOS_GROUP_DEBUG") {
        cfg.set("debug", d).set("log_level", "7");
    }
    cfg
}

fn member(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    process: &str,
) -> anyhow::Result<BaseConsumer<MemberCtx>> {
    let ctx = MemberCtx {
        rec: Arc::clone(rec),
        process: process.to_string(),
    };
    Ok(group_config(bootstrap)
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "30000")
        .create_with_context(ctx)?)
}

/// A consumer with the group's id that never subscribes: it only reads committed offsets.
fn reader(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(group_config(bootstrap).create()?)
}

fn all_partitions() -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Invalid)?;
    }
    Ok(tpl)
}

/// Committed offsets of the group (partitions without one are left out).
fn committed(c: &BaseConsumer, timeout: Duration) -> anyhow::Result<Vec<(i32, i64)>> {
    let tpl = c.committed_offsets(all_partitions()?, timeout)?;
    let mut out = Vec::new();
    for e in tpl.elements() {
        // A partition-level error makes the whole read unknown (never "no offset").
        if let Err(err) = e.error() {
            bail!("partition {}: {err}", e.partition());
        }
        if let Offset::Offset(o) = e.offset() {
            out.push((e.partition(), o));
        }
    }
    Ok(out)
}

/// The running group workload.
pub struct GroupWorkload {
    /// Stop restarting members (they keep consuming and committing): the drain phase.
    settle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    bootstrap: String,
}

/// What the end of the group workload produced.
pub struct GroupEnd {
    /// partition -> committed offset read by a fresh OffsetFetch after the members stopped.
    pub committed: BTreeMap<i32, i64>,
    /// partition -> high watermark after the producers stopped (the liveness target).
    pub target: BTreeMap<i32, i64>,
    /// How long the group took to commit up to `target`, or why it did not.
    pub liveness: Result<Duration, String>,
    pub notes: Vec<String>,
}

impl GroupWorkload {
    pub fn start(bootstrap: &str, rec: &Arc<Recorder>, seed: u64) -> GroupWorkload {
        let settle = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..MEMBERS {
            let (b, r, se, st) = (
                bootstrap.to_string(),
                Arc::clone(rec),
                Arc::clone(&settle),
                Arc::clone(&stop),
            );
            let rng_seed = seed
                .wrapping_mul(7_000_003)
                .wrapping_add(0x6772_7000 + i as u64);
            threads.push(std::thread::spawn(move || {
                member_loop(&b, &r, &se, &st, i, rng_seed)
            }));
        }
        let (b, r, st) = (bootstrap.to_string(), Arc::clone(rec), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || watch_loop(&b, &r, &st)));
        GroupWorkload {
            settle,
            stop,
            threads,
            bootstrap: bootstrap.to_string(),
        }
    }

    /// Call after the producers stopped: no more member restarts; waits (bounded by
    /// [`LIVENESS_DEADLINE_S`]) until the committed offsets reach the high watermarks, then
    /// stops every member and the watcher and reads the final committed offsets.
    pub fn finish(self, rec: &Arc<Recorder>) -> anyhow::Result<GroupEnd> {
        self.settle.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let deadline = Duration::from_secs(LIVENESS_DEADLINE_S);
        let mut notes = Vec::new();
        let r = reader(&self.bootstrap)?;
        let mut target = BTreeMap::new();
        for p in 0..PARTITIONS {
            loop {
                match r.fetch_watermarks(TOPIC, p, Duration::from_secs(2)) {
                    Ok((_, high)) => {
                        target.insert(p, high);
                        break;
                    }
                    Err(e) if t.elapsed() > deadline => {
                        bail!("group liveness: watermarks of partition {p}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        let mut last = Vec::new();
        let liveness = loop {
            if let Ok(c) = committed(&r, Duration::from_secs(2)) {
                last = c;
            }
            let behind: Vec<String> = target
                .iter()
                .filter_map(|(p, hw)| {
                    // No committed offset yet counts as 0 (retention is off: log start 0).
                    let c = last.iter().find(|(q, _)| q == p).map_or(0, |x| x.1);
                    (c < *hw).then(|| format!("partition {p} committed {c} < high watermark {hw}"))
                })
                .collect();
            if behind.is_empty() {
                break Ok(t.elapsed());
            }
            if t.elapsed() > deadline {
                break Err(format!(
                    "committed offsets did not reach the high watermarks within {LIVENESS_DEADLINE_S} s after the producers stopped: {}",
                    behind.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.stop.store(true, Ordering::SeqCst);
        let joined_by = Instant::now() + JOIN_DEADLINE;
        for h in self.threads {
            while !h.is_finished() && Instant::now() < joined_by {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !h.is_finished() {
                notes.push("a group thread did not stop within 40 s (left running)".into());
                continue;
            }
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => notes.push(format!("group thread error: {e:#}")),
                Err(_) => notes.push("a group thread panicked".into()),
            }
        }
        // The group's final committed offsets, from a fresh client.
        let fresh = reader(&self.bootstrap)?;
        let op = rec.next_op();
        rec.record(Event::new(Kind::Invoke, F::GroupFinal, "group-final", op).value("committed"));
        let fetch_t = Instant::now();
        let final_committed = loop {
            match committed(&fresh, Duration::from_secs(5)) {
                Ok(c) => break c,
                Err(e) if fetch_t.elapsed() > Duration::from_secs(30) => {
                    rec.record(
                        Event::new(Kind::Info, F::GroupFinal, "group-final", op)
                            .value("committed")
                            .error(None, format!("{e:#}")),
                    );
                    bail!("final OffsetFetch of the group failed for 30 s: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        rec.record(
            Event::new(Kind::Ok, F::GroupFinal, "group-final", op)
                .value("committed")
                .offsets(final_committed.clone()),
        );
        let mut l = Event::new(
            if liveness.is_ok() {
                Kind::Ok
            } else {
                Kind::Fail
            },
            F::GroupFinal,
            "group-final",
            rec.next_op(),
        )
        .value("liveness")
        .offsets(target.iter().map(|(p, o)| (*p, *o)).collect());
        if let Err(e) = &liveness {
            l = l.error(None, e.clone());
        }
        rec.record(l);
        Ok(GroupEnd {
            committed: final_committed.into_iter().collect(),
            target,
            liveness,
            notes,
        })
    }
}

fn member_loop(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    settle: &AtomicBool,
    stop: &AtomicBool,
    index: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for incarnation in 0..MAX_INCARNATIONS {
        if stop.load(Ordering::SeqCst) || rec.overflowed() {
            break;
        }
        let process = format!("g{index}.{incarnation}");
        // Seeded lifetime: 2-9 s, then a graceful close (LeaveGroup) and a restart.
        let life = Duration::from_millis(rng.u64(2000..9000));
        let gap = Duration::from_millis(rng.u64(100..1000));
        run_member(bootstrap, rec, settle, stop, &process, life)?;
        let until = Instant::now() + gap;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// One member incarnation: subscribe, poll, commit, until its lifetime ends (unless the
/// workload is settling) or the workload stops; then close.
fn run_member(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    settle: &AtomicBool,
    stop: &AtomicBool,
    process: &str,
    life: Duration,
) -> anyhow::Result<()> {
    let c = member(bootstrap, rec, process)?;
    rec.record(Event::new(Kind::Ok, F::GroupMember, process, rec.next_op()).value("started"));
    c.subscribe(&[TOPIC])?;
    let born = Instant::now();
    let mut last_commit = Instant::now();
    // Positions last committed successfully, to skip commits that would change nothing.
    let mut committed: Vec<(i32, i64)> = Vec::new();
    loop {
        let ending = stop.load(Ordering::SeqCst)
            || rec.overflowed()
            || (born.elapsed() >= life && !settle.load(Ordering::SeqCst));
        let mut got = false;
        if !ending {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                got = true;
                let v = m
                    .payload()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                rec.record(
                    Event::new(Kind::Ok, F::GroupPoll, process, rec.next_op())
                        .value(&v)
                        .partition(m.partition())
                        .offset(m.offset()),
                );
            }
        }
        let due = last_commit.elapsed() >= Duration::from_millis(COMMIT_EVERY_MS)
            || (!got && last_commit.elapsed() >= Duration::from_millis(20));
        if due || ending {
            last_commit = Instant::now();
            commit(&c, rec, process, &mut committed);
        }
        if ending {
            break;
        }
    }
    let op = rec.next_op();
    rec.record(Event::new(Kind::Invoke, F::GroupMember, process, op).value("closed"));
    // Drop closes the consumer (LeaveGroup) and polls until it is closed.
    drop(c);
    rec.record(Event::new(Kind::Ok, F::GroupMember, process, op).value("closed"));
    Ok(())
}

/// Commits the member's current positions (those that moved) synchronously and records the
/// commit. Rebalances are served inside `poll`, so between `position` and `commit` in this
/// thread the assignment cannot change.
fn commit(
    c: &BaseConsumer<MemberCtx>,
    rec: &Arc<Recorder>,
    process: &str,
    last: &mut Vec<(i32, i64)>,
) {
    if HOLD_COMMITS.load(Ordering::SeqCst) {
        return;
    }
    let Ok(pos) = c.position() else { return };
    let offsets: Vec<(i32, i64)> = pos
        .elements()
        .iter()
        .filter(|e| e.topic() == TOPIC)
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
        .filter(|x| !last.contains(x))
        .collect();
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &offsets {
        if tpl
            .add_partition_offset(TOPIC, *p, Offset::Offset(*o))
            .is_err()
        {
            return;
        }
    }
    let op = rec.next_op();
    rec.record(Event::new(Kind::Invoke, F::GroupCommit, process, op).offsets(offsets.clone()));
    match c.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            rec.record(Event::new(Kind::Ok, F::GroupCommit, process, op).offsets(offsets.clone()));
            last.retain(|(p, _)| !offsets.iter().any(|(q, _)| q == p));
            last.extend(offsets);
        }
        Err(e) => {
            let (kind, code, text) = classify(&e);
            rec.record(
                Event::new(kind, F::GroupCommit, process, op)
                    .offsets(offsets)
                    .error(code, text),
            );
        }
    }
}

fn watch_loop(bootstrap: &str, rec: &Arc<Recorder>, stop: &AtomicBool) -> anyhow::Result<()> {
    let c = reader(bootstrap)?;
    while !stop.load(Ordering::SeqCst) && !rec.overflowed() {
        let op = rec.next_op();
        rec.record(Event::new(Kind::Invoke, F::GroupOffsets, "gw", op));
        match committed(&c, Duration::from_secs(2)) {
            Ok(o) => {
                rec.record(Event::new(Kind::Ok, F::GroupOffsets, "gw", op).offsets(o));
                WATCH_READS.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => rec.record(
                Event::new(Kind::Info, F::GroupOffsets, "gw", op).error(None, format!("{e:#}")),
            ),
        }
        std::thread::sleep(Duration::from_millis(WATCH_EVERY_MS));
    }
    Ok(())
}
