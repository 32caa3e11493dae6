//! The broker side of the group coordinator: wires the group APIs to the sans-IO
//! `holdfast_groups::Coordinator`, waits for JoinGroup/SyncGroup completions, drives its
//! timers from one task (sleeping until the next deadline or a wake-up), and stores offsets
//! and group metadata in the compacted `__consumer_offsets` topic. An OffsetCommit is
//! acknowledged only after its records are durable under the topic's (default) fsync policy.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use holdfast_groups::records::{self, OffsetValue};
use holdfast_groups::{codes, CommitCheck, Completion, Coordinator, Outcome, Protocol, Ticket};
use holdfast_log::batch::build::{batch, BatchOptions, Record};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::errors as ec;
use crate::handlers::{blocking, Reply};
use crate::state::{now_ms, timer_ms, Broker};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Test-only negative control for the chaos harness: with
/// `HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC=1` OffsetCommit is applied and acknowledged as soon as
/// its `__consumer_offsets` records are appended, without waiting for fsync, so a power cut
/// can take back committed offsets that clients saw acknowledged. A `power-cut --groups` run
/// with it must be caught (`group-offset-regressed`). Read once (at broker start); off unless
/// exactly `1`.
pub(crate) fn unsafe_offsets_no_fsync() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC").is_ok_and(|v| v == "1");
        if on {
            tracing::error!(
                "HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC=1: OffsetCommit is acknowledged BEFORE fsync; \
                 committed offsets WILL go back on power failure (test-only negative control)"
            );
        }
        on
    })
}

/// A record of `__consumer_offsets`: key, value (`None` = tombstone).
type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// Bound on queued batches of coordinator writes (group metadata, tombstones).
const WRITE_QUEUE: usize = 4096;

/// A batch of coordinator writes, with whom to tell once it is durable (`true`) or failed.
/// The third element is the coordinator tenure the records were decided in (see `Inner`).
type WriteBatch = (
    Vec<holdfast_groups::Write>,
    Option<oneshot::Sender<bool>>,
    u64,
);

/// Orders offset commits and fetches: a turn is taken synchronously while the request is
/// dispatched (connections dispatch their requests one after another), and the commit or
/// fetch runs only when its turn comes. So commits are applied in the order they arrived,
/// even though each waits for its own fsync, and a fetch sees every commit sent before it.
/// (Found by librdkafka test 0030: back-to-back async commits were applied out of order.)
/// One sequencer per group (`CommitOrder`): commits of different groups do not wait for
/// each other's fsync.
#[derive(Default)]
pub(crate) struct CommitSequencer {
    state: Mutex<SequencerState>,
    changed: Notify,
}

#[derive(Default)]
struct SequencerState {
    next: u64,
    serving: u64,
    /// Turns dropped before they were served; skipped when reached.
    abandoned: std::collections::BTreeSet<u64>,
}

pub(crate) struct Turn {
    seq: Arc<CommitSequencer>,
    ticket: u64,
    served: bool,
    /// The registry to drop the sequencer from once no turn of its group is left.
    order: Option<(Arc<CommitOrder>, String)>,
}

/// The commit sequencers of the groups with commits or fetches in flight (bounded by the
/// requests in flight: a sequencer is removed when its last turn ends).
#[derive(Default)]
pub(crate) struct CommitOrder {
    by_group: Mutex<HashMap<String, Arc<CommitSequencer>>>,
}

impl CommitOrder {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<CommitSequencer>>> {
        self.by_group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A turn in `group`'s order, taken now (synchronously, in arrival order).
    pub(crate) fn take_turn(self: &Arc<Self>, group: &str) -> Turn {
        let seq = Arc::clone(self.map().entry(group.to_string()).or_default());
        let mut t = seq.take_turn();
        t.order = Some((Arc::clone(self), group.to_string()));
        t
    }

    /// Turns in several groups' orders (OffsetFetch v8+ names many groups).
    pub(crate) fn take_turns<'a>(
        self: &Arc<Self>,
        groups: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Turn> {
        let set: std::collections::BTreeSet<&str> = groups.into_iter().collect();
        set.into_iter().map(|g| self.take_turn(g)).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl CommitSequencer {
    fn state(&self) -> MutexGuard<'_, SequencerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn take_turn(self: &Arc<Self>) -> Turn {
        let mut st = self.state();
        let ticket = st.next;
        st.next += 1;
        Turn {
            seq: Arc::clone(self),
            ticket,
            served: false,
            order: None,
        }
    }
}

impl Turn {
    /// Resolves when every earlier turn has finished.
    pub(crate) async fn wait(&mut self) {
        loop {
            let notified = self.seq.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.seq.state().serving == self.ticket {
                self.served = true;
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.seq.state();
        if self.served || st.serving == self.ticket {
            st.serving += 1;
            // Bounded by the number of abandoned turns.
            loop {
                let at = st.serving;
                if !st.abandoned.remove(&at) {
                    break;
                }
                st.serving += 1;
            }
        } else {
            st.abandoned.insert(self.ticket);
        }
        drop(st);
        self.seq.changed.notify_waiters();
        if let Some((order, group)) = self.order.take() {
            let mut map = order.map();
            // Only the registry and this turn hold it: no turn of the group is left, and
            // none can be taken meanwhile (that needs the registry lock).
            if map
                .get(&group)
                .is_some_and(|s| Arc::ptr_eq(s, &self.seq) && Arc::strong_count(s) == 2)
            {
                map.remove(&group);
            }
        }
    }
}

struct Inner {
    coord: Coordinator,
    waiters: HashMap<Ticket, oneshot::Sender<Completion>>,
    /// Cluster mode: bumped whenever a partition's groups are unloaded or reloaded.
    tenure: u64,
    /// Cluster mode: partition of `__consumer_offsets` → the tenure it was last fenced at.
    /// Records decided in an earlier tenure are not written for it (they belong to a
    /// coordinator tenure that has ended, even if this node leads the partition again).
    fenced: HashMap<i32, u64>,
}

pub struct GroupService {
    inner: Mutex<Inner>,
    pub(crate) commit_order: Arc<CommitOrder>,
    wake: Notify,
    writes_tx: mpsc::Sender<WriteBatch>,
    writes_rx: Mutex<Option<mpsc::Receiver<WriteBatch>>>,
    partitions: i32,
    retention_check_ms: u64,
    /// Cluster mode only (`None` on a single node, where every group is served here): the
    /// partitions of `__consumer_offsets` this broker leads and has loaded or is loading
    /// (crate::cluster::coord).
    owned: Mutex<Option<Owned>>,
}

/// Cluster mode: the `__consumer_offsets` partitions this broker coordinates.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    /// Partitions of the replicated topic (0 until the image has it).
    pub(crate) partitions: i32,
    /// Partition → (leader epoch, loaded). Only partitions this broker leads.
    pub(crate) parts: BTreeMap<i32, (i32, bool)>,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn is_group_api(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::FindCoordinator
            | ApiKey::JoinGroup
            | ApiKey::SyncGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::DescribeGroups
            | ApiKey::ListGroups
            | ApiKey::DeleteGroups
            | ApiKey::OffsetDelete
            | ApiKey::ConsumerGroupHeartbeat
            | ApiKey::ConsumerGroupDescribe
    )
}

impl GroupService {
    pub fn new(cfg: holdfast_groups::Config, partitions: i32, retention_check_ms: u64) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        GroupService {
            inner: Mutex::new(Inner {
                coord: Coordinator::new(cfg, &format!("{:x}", now_ms())),
                waiters: HashMap::new(),
                tenure: 0,
                fenced: HashMap::new(),
            }),
            commit_order: Arc::new(CommitOrder::default()),
            wake: Notify::new(),
            writes_tx: tx,
            writes_rx: Mutex::new(Some(rx)),
            partitions,
            retention_check_ms,
            owned: Mutex::new(None),
        }
    }

    /// Cluster mode: groups are served only for the `__consumer_offsets` partitions this
    /// broker leads and has loaded (crate::cluster::coord).
    pub(crate) fn enable_cluster(&self) {
        *self.owned() = Some(Owned::default());
    }

    pub(crate) fn owned(&self) -> MutexGuard<'_, Option<Owned>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `__consumer_offsets` partition of `group` (Kafka's `Utils.abs(hashCode) % n`).
    pub(crate) fn partition_of(&self, group: &str) -> i32 {
        let n = match self.owned().as_ref() {
            Some(o) if o.partitions > 0 => o.partitions,
            _ => self.partitions,
        };
        records::partition_for(group, n)
    }

    /// NONE when this broker coordinates `group`; otherwise NOT_COORDINATOR, or
    /// COORDINATOR_LOAD_IN_PROGRESS while its partition is being loaded (cluster mode).
    pub(crate) fn owner_error(&self, group: &str) -> i16 {
        let g = self.owned();
        let Some(o) = g.as_ref() else {
            return codes::NONE;
        };
        if o.partitions <= 0 {
            return codes::NOT_COORDINATOR;
        }
        match o.parts.get(&records::partition_for(group, o.partitions)) {
            Some((_, true)) => codes::NONE,
            Some((_, false)) => codes::COORDINATOR_LOAD_IN_PROGRESS,
            None => codes::NOT_COORDINATOR,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cluster mode: ends the coordinator tenure of `parts` (of `n` partitions): their groups
    /// are dropped (waiting joins answered NOT_COORDINATOR) and records decided for them
    /// before now are never written. Returns how many groups were dropped.
    pub(crate) fn fence_and_unload(&self, parts: &[i32], n: i32) -> usize {
        let mut g = self.lock();
        g.tenure += 1;
        let t = g.tenure;
        for p in parts {
            g.fenced.insert(*p, t);
        }
        let dropped = g
            .coord
            .unload_groups(|grp| parts.contains(&records::partition_for(grp, n)));
        Self::dispatch(&mut g, &self.writes_tx);
        drop(g);
        self.wake.notify_one();
        dropped
    }

    /// The current coordinator tenure (see `Inner::tenure`).
    fn tenure(&self) -> u64 {
        self.lock().tenure
    }

    /// Whether `group`'s partition was fenced after `tenure` (its records are stale).
    fn fenced_since(&self, group: &str, tenure: u64) -> bool {
        let p = self.partition_of(group);
        self.lock().fenced.get(&p).is_some_and(|f| *f > tenure)
    }

    /// Runs `f` on the coordinator, then delivers completions and queues writes.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Coordinator) -> T) -> T {
        let mut g = self.lock();
        let out = f(&mut g.coord);
        Self::dispatch(&mut g, &self.writes_tx);
        drop(g);
        self.wake.notify_one();
        out
    }

    /// Like `with`, and also returns a receiver told when the records this call produced
    /// are durable in `__consumer_offsets` (`true`) or could not be written.
    fn with_durable<T>(
        &self,
        f: impl FnOnce(&mut Coordinator) -> T,
    ) -> (T, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let mut g = self.lock();
        let out = f(&mut g.coord);
        Self::dispatch_acked(&mut g, &self.writes_tx, Some(tx));
        drop(g);
        self.wake.notify_one();
        (out, rx)
    }

    fn dispatch(g: &mut Inner, writes: &mpsc::Sender<WriteBatch>) {
        Self::dispatch_acked(g, writes, None)
    }

    fn dispatch_acked(
        g: &mut Inner,
        writes: &mpsc::Sender<WriteBatch>,
        ack: Option<oneshot::Sender<bool>>,
    ) {
        let mut ready = Vec::new();
        for c in g.coord.take_completions() {
            let t = match &c {
                Completion::Join(t, _) | Completion::Sync(t, _) => *t,
            };
            if let Some(tx) = g.waiters.remove(&t) {
                ready.push((tx, c));
            }
        }
        let w = g.coord.take_writes();
        if w.is_empty() {
            for (tx, c) in ready {
                let _ = tx.send(c);
            }
            if let Some(a) = ack {
                // Nothing new to write, but an earlier call's records may still be on their
                // way to disk, and this answer may depend on them: a follower's SyncGroup
                // arriving after the leader's gets the assignment at once, while the group
                // record holding it is queued. A barrier through the (ordered) write queue
                // acknowledges only once everything queued before it is durable, as Kafka
                // parks late followers until the store completes (found by the chaos
                // harness's --groups workload under power cuts).
                if let Err(e) = writes.try_send((Vec::new(), Some(a), g.tenure)) {
                    tracing::error!(error = %e, "group metadata write queue full: barrier dropped");
                    if let tokio::sync::mpsc::error::TrySendError::Full((_, Some(a), _))
                    | tokio::sync::mpsc::error::TrySendError::Closed((_, Some(a), _)) = e
                    {
                        let _ = a.send(false);
                    }
                }
            }
            return;
        }
        // The answers that go with these records (e.g. SyncGroup once the leader's
        // assignment is stored) are sent only once the records are durable, as Kafka does.
        let (done_tx, done_rx) = oneshot::channel();
        if let Err(e) = writes.try_send((w, Some(done_tx), g.tenure)) {
            tracing::error!(error = %e, "group metadata write queue full: records dropped");
        }
        tokio::spawn(async move {
            let ok = matches!(done_rx.await, Ok(true));
            for (tx, c) in ready {
                let _ = tx.send(if ok { c } else { failed(c) });
            }
            if let Some(a) = ack {
                let _ = a.send(ok);
            }
        });
    }

    /// Applies a record of `__consumer_offsets` while loading.
    pub(crate) fn load(&self, key: &[u8], value: Option<&[u8]>, now: i64) {
        let mut g = self.lock();
        if let Err(e) = g.coord.load_record(key, value, now) {
            tracing::warn!(error = %e, "skipping a __consumer_offsets record");
        }
        // Loading produces no completions or writes worth keeping.
        let _ = g.coord.take_writes();
    }
}

/// The error a client gets when its group's records cannot be stored, as Kafka's group
/// coordinator maps append errors (`GroupMetadataManager.storeOffsets` /
/// `CoordinatorRuntime`): retriable coordinator errors instead of the storage error, so the
/// client re-discovers the coordinator and retries.
pub(crate) fn coordinator_append_error(code: i16) -> i16 {
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const MESSAGE_TOO_LARGE: i16 = 10;
    const NOT_COORDINATOR: i16 = 16;
    const RECORD_LIST_TOO_LARGE: i16 = 18;
    const NOT_ENOUGH_REPLICAS: i16 = 19;
    const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    match code {
        UNKNOWN_TOPIC_OR_PARTITION | NOT_ENOUGH_REPLICAS | NOT_ENOUGH_REPLICAS_AFTER_APPEND => {
            codes::COORDINATOR_NOT_AVAILABLE
        }
        NOT_LEADER_OR_FOLLOWER | crate::errors::KAFKA_STORAGE_ERROR => NOT_COORDINATOR,
        MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE => INVALID_COMMIT_OFFSET_SIZE,
        _ => codes::UNKNOWN_SERVER_ERROR,
    }
}

/// The answer to a waiting JoinGroup/SyncGroup whose group records could not be stored.
fn failed(c: Completion) -> Completion {
    match c {
        Completion::Join(t, r) => Completion::Join(
            t,
            holdfast_groups::JoinResponse {
                error: codes::COORDINATOR_NOT_AVAILABLE,
                generation: -1,
                member_id: r.member_id,
                ..Default::default()
            },
        ),
        Completion::Sync(t, _) => Completion::Sync(
            t,
            holdfast_groups::SyncResponse {
                error: codes::COORDINATOR_NOT_AVAILABLE,
                ..Default::default()
            },
        ),
    }
}

impl GroupService {
    /// Every committed offset, as (group, topic, partition, offset): for metrics and the
    /// loss ledger.
    pub(crate) fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let g = self.lock();
        let mut out = Vec::new();
        for group in g.coord.list_groups(&[]).into_iter().map(|x| x.group_id) {
            for (t, p, v) in g.coord.fetch_offsets(&group, None) {
                if let Some(v) = v {
                    out.push((group.clone(), t, p, v.offset));
                }
            }
        }
        out
    }
}

impl Broker {
    pub(crate) fn groups(&self) -> &GroupService {
        &self.groups
    }

    /// Whether offsets may be committed for the partition: on a single node it is hosted
    /// here; in cluster mode it exists in the topic map (it may be led by another broker).
    pub(crate) fn partition_exists(&self, topic: &str, index: i32) -> bool {
        if self.cluster().is_none() {
            return self.partition(topic, index).is_some();
        }
        self.topic(topic)
            .is_some_and(|t| usize::try_from(index).is_ok_and(|i| i < t.partitions.len()))
    }

    /// Creates `__consumer_offsets` if missing and rebuilds offsets and groups from it.
    /// Blocking; called once on open.
    pub(crate) fn load_groups(&self) -> Result<(), String> {
        let n = self.groups().partitions;
        if self.topic(OFFSETS_TOPIC).is_none() {
            let mut cfg = BTreeMap::new();
            cfg.insert("cleanup.policy".to_string(), "compact".to_string());
            cfg.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
            self.create_topic(OFFSETS_TOPIC, n, cfg, false)
                .map_err(|(_, m)| m)?;
        }
        let now = timer_ms();
        let mut count = 0u64;
        self.scan_internal_topic(OFFSETS_TOPIC, |h, key, value| {
            let Some(k) = key else { return };
            if h.is_control() {
                // A transaction marker: its offsets apply (COMMIT) or vanish.
                if let Some(kind) = holdfast_log::MarkerKind::from_control_key(k) {
                    for (k, v) in self.txns().loaded_marker(h.producer_id, kind) {
                        self.groups().load(&k, v.as_deref(), now);
                        count += 1;
                    }
                }
            } else if h.is_transactional() {
                self.txns().loaded_txn_offset(h.producer_id, k, value);
            } else {
                self.groups().load(k, value, now);
                count += 1;
            }
        })?;
        tracing::info!(records = count, "consumer offsets and groups loaded");
        Ok(())
    }

    /// Appends records for one group's partition of `__consumer_offsets` and waits until
    /// they are durable (unless `wait_durable` is false: only the OffsetCommit negative
    /// control). Returns a Kafka error code on failure.
    async fn append_offsets_records(
        self: &Arc<Self>,
        group: &str,
        recs: Vec<KeyValue>,
        wait_durable: bool,
        tenure: u64,
    ) -> Result<(), i16> {
        if self.groups().fenced_since(group, tenure) {
            // Decided by an earlier coordinator tenure of this partition (cluster mode).
            return Err(codes::NOT_COORDINATOR);
        }
        let index = self.groups().partition_of(group);
        let Some(p) = self.partition(OFFSETS_TOPIC, index) else {
            return Err(if self.groups().owned().is_some() {
                codes::NOT_COORDINATOR
            } else {
                codes::COORDINATOR_NOT_AVAILABLE
            });
        };
        // Cluster mode: acks=all, as a Produce with acks=-1 (NOT_ENOUGH_REPLICAS before
        // anything is written).
        if let Err(code) = crate::cluster::replica::check_before_append(&p, -1) {
            return Err(coordinator_append_error(code));
        }
        let now = now_ms();
        let data = {
            let rs: Vec<Record<'_>> = recs
                .iter()
                .map(|(k, v)| Record {
                    key: Some(k),
                    value: v.as_deref(),
                    timestamp_ms: now,
                })
                .collect();
            batch(
                &rs,
                BatchOptions {
                    producer_id: -1,
                    producer_epoch: -1,
                    base_sequence: -1,
                    ..BatchOptions::default()
                },
            )
        };
        let p2 = Arc::clone(&p);
        let appended = blocking(move || {
            crate::handlers::append_records(&p2, Some(Bytes::from(data)), now_ms(), |_| Ok(()))
        })
        .await
        .ok_or(codes::UNKNOWN_SERVER_ERROR)?;
        let o = appended.map_err(|(code, msg)| {
            tracing::error!(code, ?msg, "cannot append to __consumer_offsets");
            coordinator_append_error(code)
        })?;
        if p.waits_fsync() && wait_durable {
            let w = p.durable().wait_for(o.durable_end);
            match tokio::time::timeout(Duration::from_secs(30), w).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "__consumer_offsets fsync failed");
                    return Err(coordinator_append_error(crate::errors::KAFKA_STORAGE_ERROR));
                }
                Err(_) => return Err(codes::COORDINATOR_NOT_AVAILABLE),
            }
        }
        self.notify_data();
        if p.is_replicated() && wait_durable {
            // Acknowledged only once the high watermark passes the records (acks=all).
            if crate::cluster::replica::feed_durable(&p) {
                self.notify_data();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            if let Err((code, _)) = self.await_ack_all(&p, &o, deadline).await {
                tracing::warn!(group, code, "__consumer_offsets records not replicated");
                return Err(if code == crate::errors::REQUEST_TIMED_OUT {
                    codes::COORDINATOR_NOT_AVAILABLE
                } else {
                    coordinator_append_error(code)
                });
            }
        }
        Ok(())
    }

    /// Writes queued coordinator records (group metadata, tombstones) in order.
    async fn writer_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let rx = self
            .groups()
            .writes_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut rx) = rx else { return };
        // Whether the last batch with records was stored; an empty batch is a barrier and
        // reports it (see `dispatch_acked`).
        let mut last_stored = true;
        loop {
            let w = tokio::select! {
                w = rx.recv() => w,
                _ = stop.changed() => return,
            };
            let Some((w, ack, tenure)) = w else { return };
            if w.is_empty() {
                if let Some(a) = ack {
                    let _ = a.send(last_stored);
                }
                continue;
            }
            let mut by_group: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
            for x in w {
                by_group.entry(x.group).or_default().push((x.key, x.value));
            }
            let mut ok = true;
            for (g, recs) in by_group {
                if let Err(code) = self.append_offsets_records(&g, recs, true, tenure).await {
                    tracing::error!(group = %g, code, "cannot persist group metadata");
                    ok = false;
                }
            }
            last_stored = ok;
            if let Some(a) = ack {
                let _ = a.send(ok);
            }
        }
    }

    /// Fires coordinator timers: sleeps until the next deadline or a wake-up.
    async fn timer_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let svc = self.groups();
        let retention_every = Duration::from_millis(svc.retention_check_ms.max(1000));
        let mut last_retention = tokio::time::Instant::now();
        loop {
            let next = svc.lock().coord.next_deadline();
            let wait = match next {
                Some(d) => Duration::from_millis((d - timer_ms()).clamp(0, 60_000) as u64),
                None => Duration::from_secs(60),
            };
            let wait = wait.min(retention_every);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = svc.wake.notified() => {}
                _ = stop.changed() => return,
            }
            let now = timer_ms();
            let expire = last_retention.elapsed() >= retention_every;
            if expire {
                last_retention = tokio::time::Instant::now();
            }
            tracing::trace!(now, ?next, "group timers");
            // Not `with`: that wakes this loop.
            {
                let mut g = svc.lock();
                g.coord.tick(now);
                if expire {
                    g.coord.expire_offsets(now);
                }
                GroupService::dispatch(&mut g, &svc.writes_tx);
            }
        }
    }

    /// Starts the coordinator's timer and writer tasks.
    pub fn spawn_group_tasks(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::spawn(Arc::clone(self).timer_loop(stop.clone()));
        tokio::spawn(Arc::clone(self).writer_loop(stop));
    }

    /// Handles a group API request.
    pub async fn handle_group(
        self: &Arc<Self>,
        version: i16,
        body: RequestKind,
        client_id: &str,
        peer: SocketAddr,
    ) -> Reply {
        if let Some(refused) = crate::cluster::coord::refusal(self.groups(), version, &body) {
            return Reply::Now(Some(refused));
        }
        match body {
            RequestKind::FindCoordinator(r) => Reply::Now(Some(ResponseKind::FindCoordinator(
                self.find_coordinator(r, version),
            ))),
            RequestKind::JoinGroup(r) => {
                let b = Arc::clone(self);
                let host = format!("/{}", peer.ip());
                let client = client_id.to_string();
                Reply::Later(Box::pin(async move {
                    Some(ResponseKind::JoinGroup(
                        b.join_group(r, version, client, host).await,
                    ))
                }))
            }
            RequestKind::SyncGroup(r) => {
                let b = Arc::clone(self);
                Reply::Later(Box::pin(async move {
                    Some(ResponseKind::SyncGroup(b.sync_group(r, version).await))
                }))
            }
            RequestKind::Heartbeat(r) => {
                let now = timer_ms();
                let code = self.groups().with(|c| {
                    c.heartbeat(
                        &r.group_id.0,
                        r.generation_id,
                        &r.member_id,
                        r.group_instance_id.as_deref(),
                        now,
                    )
                });
                let mut resp = HeartbeatResponse::default();
                resp.error_code = code;
                Reply::Now(Some(ResponseKind::Heartbeat(resp)))
            }
            RequestKind::LeaveGroup(r) => {
                Reply::Now(Some(ResponseKind::LeaveGroup(self.leave_group(r, version))))
            }
            RequestKind::OffsetCommit(r) => {
                let b = Arc::clone(self);
                let mut turn = self.groups().commit_order.take_turn(&r.group_id.0);
                Reply::Later(Box::pin(async move {
                    turn.wait().await;
                    let resp = b.offset_commit(r, version).await;
                    drop(turn);
                    Some(ResponseKind::OffsetCommit(resp))
                }))
            }
            RequestKind::OffsetFetch(r) => {
                let b = Arc::clone(self);
                let mut turns = if version >= 8 {
                    let order = &self.groups().commit_order;
                    order.take_turns(r.groups.iter().map(|g| g.group_id.0.as_str()))
                } else {
                    vec![self.groups().commit_order.take_turn(&r.group_id.0)]
                };
                Reply::Later(Box::pin(async move {
                    for t in turns.iter_mut() {
                        t.wait().await;
                    }
                    let resp = b.offset_fetch(r, version);
                    drop(turns);
                    Some(ResponseKind::OffsetFetch(resp))
                }))
            }
            RequestKind::DescribeGroups(r) => {
                Reply::Now(Some(ResponseKind::DescribeGroups(self.describe_groups(r))))
            }
            RequestKind::ListGroups(r) => {
                Reply::Now(Some(ResponseKind::ListGroups(self.list_groups(r, version))))
            }
            RequestKind::DeleteGroups(r) => {
                let mut resp = DeleteGroupsResponse::default();
                for g in r.groups_names {
                    let code = self.groups().with(|c| c.delete_group(&g.0));
                    let mut x = delete_groups_response::DeletableGroupResult::default();
                    x.group_id = g;
                    x.error_code = code;
                    resp.results.push(x);
                }
                Reply::Now(Some(ResponseKind::DeleteGroups(resp)))
            }
            RequestKind::OffsetDelete(r) => {
                Reply::Now(Some(ResponseKind::OffsetDelete(self.offset_delete(r))))
            }
            RequestKind::ConsumerGroupHeartbeat(r) => {
                let b = Arc::clone(self);
                let host = format!("/{}", peer.ip());
                let client = client_id.to_string();
                Reply::Later(Box::pin(async move {
                    Some(ResponseKind::ConsumerGroupHeartbeat(
                        b.consumer_group_heartbeat(r, version, client, host).await,
                    ))
                }))
            }
            RequestKind::ConsumerGroupDescribe(r) => Reply::Now(Some(
                ResponseKind::ConsumerGroupDescribe(self.consumer_group_describe(r)),
            )),
            _ => Reply::Now(None),
        }
    }

    fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        use find_coordinator_response::Coordinator as C;
        const BAD_KEY: &str = "Unknown coordinator key type.";
        let (host, port) = self.advertised();
        let node = BrokerId(self.config.node_id);
        // 0: group, 1: transaction (this broker coordinates both); anything else is refused.
        let bad_key_type = !(0..=1).contains(&req.key_type);
        let mut r = FindCoordinatorResponse::default();
        if version >= 4 {
            r.coordinators = req
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let mut c = C::default();
                    c.key = key;
                    if bad_key_type {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                        c.error_code = ec::INVALID_REQUEST;
                        c.error_message = Some(sb(BAD_KEY));
                    } else {
                        c.node_id = node;
                        c.host = sb(&host);
                        c.port = port;
                    }
                    c
                })
                .collect();
        } else if bad_key_type {
            r.error_code = ec::INVALID_REQUEST;
            if version >= 1 {
                r.error_message = Some(sb(BAD_KEY));
            }
            r.node_id = BrokerId(-1);
            r.port = -1;
        } else {
            r.node_id = node;
            r.host = sb(&host);
            r.port = port;
        }
        r
    }

    async fn join_group(
        self: Arc<Self>,
        r: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> JoinGroupResponse {
        let rebalance_timeout = if version >= 1 {
            r.rebalance_timeout_ms
        } else {
            r.session_timeout_ms
        };
        let req = holdfast_groups::JoinRequest {
            group_id: r.group_id.0.to_string(),
            member_id: r.member_id.to_string(),
            instance_id: r.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id,
            client_host,
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: rebalance_timeout,
            protocol_type: r.protocol_type.to_string(),
            protocols: r
                .protocols
                .iter()
                .map(|p| Protocol {
                    name: p.name.to_string(),
                    metadata: p.metadata.to_vec(),
                })
                .collect(),
            require_known_member_id: version >= 4,
        };
        let svc = self.groups();
        let res = {
            let mut g = svc.lock();
            let out = g.coord.join(req, timer_ms());
            // Register before completions are dispatched: the join may complete at once.
            let rx = match &out {
                Outcome::Wait(t) => {
                    let (tx, rx) = oneshot::channel();
                    g.waiters.insert(*t, tx);
                    Some(rx)
                }
                Outcome::Now(_) => None,
            };
            let (ack_tx, ack) = oneshot::channel();
            GroupService::dispatch_acked(&mut g, &svc.writes_tx, Some(ack_tx));
            (out, rx, ack)
        };
        svc.wake.notify_one();
        let resp = match res {
            // E.g. a static member's rejoin: answered once its record is durable.
            (Outcome::Now(x), _, ack) => match ack.await {
                Ok(true) => x,
                _ => holdfast_groups::JoinResponse {
                    error: codes::COORDINATOR_NOT_AVAILABLE,
                    generation: -1,
                    member_id: x.member_id,
                    ..Default::default()
                },
            },
            (Outcome::Wait(_), Some(rx), _) => {
                let bound = Duration::from_millis(rebalance_timeout.max(0) as u64 + 10_000);
                match tokio::time::timeout(bound, rx).await {
                    Ok(Ok(Completion::Join(_, x))) => x,
                    _ => holdfast_groups::JoinResponse {
                        error: codes::REBALANCE_IN_PROGRESS,
                        generation: -1,
                        member_id: r.member_id.to_string(),
                        ..Default::default()
                    },
                }
            }
            (Outcome::Wait(_), None, _) => holdfast_groups::JoinResponse {
                error: codes::UNKNOWN_SERVER_ERROR,
                ..Default::default()
            },
        };
        let mut out = JoinGroupResponse::default();
        out.error_code = resp.error;
        out.generation_id = resp.generation;
        out.protocol_type = resp.protocol_type.as_deref().map(sb);
        out.protocol_name = Some(sb(resp.protocol_name.as_deref().unwrap_or("")));
        if version >= 7 && resp.error != codes::NONE {
            out.protocol_name = None;
        }
        out.leader = sb(&resp.leader);
        out.member_id = sb(&resp.member_id);
        out.members = resp
            .members
            .into_iter()
            .map(|m| {
                let mut x = join_group_response::JoinGroupResponseMember::default();
                x.member_id = sb(&m.member_id);
                x.group_instance_id = m.instance_id.as_deref().map(sb);
                x.metadata = Bytes::from(m.metadata);
                x
            })
            .collect();
        out
    }

    async fn sync_group(self: Arc<Self>, r: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let svc = self.groups();
        let assignments: Vec<(String, Vec<u8>)> = r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
            .collect();
        let (out, rx, ack) = {
            let mut g = svc.lock();
            let out = g.coord.sync(
                &r.group_id.0,
                r.generation_id,
                &r.member_id,
                r.group_instance_id.as_deref(),
                r.protocol_type.as_deref(),
                r.protocol_name.as_deref(),
                assignments,
                timer_ms(),
            );
            let rx = match &out {
                Outcome::Wait(t) => {
                    let (tx, rx) = oneshot::channel();
                    g.waiters.insert(*t, tx);
                    Some(rx)
                }
                Outcome::Now(_) => None,
            };
            let (ack_tx, ack) = oneshot::channel();
            GroupService::dispatch_acked(&mut g, &svc.writes_tx, Some(ack_tx));
            (out, rx, ack)
        };
        svc.wake.notify_one();
        let resp = match (out, rx, ack) {
            (Outcome::Now(x), _, ack) => match ack.await {
                Ok(true) => x,
                _ => holdfast_groups::SyncResponse {
                    error: codes::COORDINATOR_NOT_AVAILABLE,
                    ..Default::default()
                },
            },
            (Outcome::Wait(_), Some(rx), _) => {
                match tokio::time::timeout(Duration::from_secs(330), rx).await {
                    Ok(Ok(Completion::Sync(_, x))) => x,
                    _ => holdfast_groups::SyncResponse {
                        error: codes::REBALANCE_IN_PROGRESS,
                        ..Default::default()
                    },
                }
            }
            (Outcome::Wait(_), None, _) => holdfast_groups::SyncResponse {
                error: codes::UNKNOWN_SERVER_ERROR,
                ..Default::default()
            },
        };
        let mut out = SyncGroupResponse::default();
        out.error_code = resp.error;
        if version >= 5 {
            out.protocol_type = resp.protocol_type.as_deref().map(sb);
            out.protocol_name = resp.protocol_name.as_deref().map(sb);
        }
        out.assignment = Bytes::from(resp.assignment);
        out
    }

    fn leave_group(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            r.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(r.member_id.to_string(), None)]
        };
        let now = timer_ms();
        let (top, per) = self
            .groups()
            .with(|c| c.leave(&r.group_id.0, &members, now));
        let mut resp = LeaveGroupResponse::default();
        if version >= 3 {
            resp.error_code = top;
            resp.members = members
                .iter()
                .zip(per)
                .map(|((id, inst), code)| {
                    let mut m = leave_group_response::MemberResponse::default();
                    m.member_id = sb(id);
                    m.group_instance_id = inst.as_deref().map(sb);
                    m.error_code = code;
                    m
                })
                .collect();
        } else {
            resp.error_code = per.first().copied().unwrap_or(top);
        }
        resp
    }

    async fn offset_commit(
        self: Arc<Self>,
        r: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let group = r.group_id.0.to_string();
        let tenure = self.groups().tenure();
        let now = timer_ms();
        let (generation, member) = if version >= 1 {
            (r.generation_id_or_member_epoch, r.member_id.to_string())
        } else {
            (-1, String::new())
        };
        let check = self.groups().with(|c| {
            c.check_commit(
                &group,
                generation,
                &member,
                r.group_instance_id.as_deref(),
                version,
                now,
            )
        });
        let fits = |m: &str| self.groups().lock().coord.metadata_fits(m);
        // (topic, partition, code, value)
        let mut results: Vec<(String, i32, i16)> = Vec::new();
        let mut ok: Vec<(String, i32, OffsetValue)> = Vec::new();
        for t in &r.topics {
            let name = t.name.0.to_string();
            for p in &t.partitions {
                let meta = p.committed_metadata.as_deref().unwrap_or("").to_string();
                let code = match check {
                    CommitCheck::Error(e) => e,
                    CommitCheck::Ok if !fits(&meta) => codes::OFFSET_METADATA_TOO_LARGE,
                    CommitCheck::Ok if !self.partition_exists(&name, p.partition_index) => {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    }
                    CommitCheck::Ok => {
                        ok.push((
                            name.clone(),
                            p.partition_index,
                            OffsetValue {
                                offset: p.committed_offset,
                                leader_epoch: if version >= 6 {
                                    p.committed_leader_epoch
                                } else {
                                    -1
                                },
                                metadata: meta,
                                commit_timestamp: now,
                            },
                        ));
                        codes::NONE
                    }
                };
                results.push((name.clone(), p.partition_index, code));
            }
        }
        if !ok.is_empty() {
            let recs = ok
                .iter()
                .map(|(t, p, v)| {
                    (
                        records::offset_key(&group, t, *p),
                        Some(records::offset_value(v)),
                    )
                })
                .collect();
            let wait_durable = !unsafe_offsets_no_fsync();
            match self
                .append_offsets_records(&group, recs, wait_durable, tenure)
                .await
            {
                Ok(()) => self.groups().with(|c| c.apply_commit(&group, ok)),
                Err(code) => {
                    for x in results.iter_mut() {
                        if x.2 == codes::NONE {
                            x.2 = code;
                        }
                    }
                }
            }
        }
        let mut resp = OffsetCommitResponse::default();
        let mut by_topic: Vec<offset_commit_response::OffsetCommitResponseTopic> = Vec::new();
        for (t, p, code) in results {
            if by_topic.last().map(|x| x.name.0.as_str()) != Some(t.as_str()) {
                let mut x = offset_commit_response::OffsetCommitResponseTopic::default();
                x.name = TopicName(sb(&t));
                by_topic.push(x);
            }
            let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
            pr.partition_index = p;
            pr.error_code = code;
            if let Some(x) = by_topic.last_mut() {
                x.partitions.push(pr);
            }
        }
        resp.topics = by_topic;
        resp
    }

    fn offset_fetch(&self, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let mut resp = OffsetFetchResponse::default();
        let coord = &self.groups().lock().coord;
        let fetch = |group: &str, wanted: Option<Vec<(String, i32)>>| {
            let rows = coord.fetch_offsets(group, wanted.as_deref());
            let mut by: BTreeMap<String, Vec<(i32, Option<OffsetValue>)>> = BTreeMap::new();
            for (t, p, v) in rows {
                by.entry(t).or_default().push((p, v));
            }
            by
        };
        if version >= 8 {
            for g in r.groups {
                let wanted = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .flat_map(|t| {
                            t.partition_indexes
                                .iter()
                                .map(|p| (t.name.0.to_string(), *p))
                        })
                        .collect::<Vec<_>>()
                });
                let mut og = offset_fetch_response::OffsetFetchResponseGroup::default();
                og.group_id = g.group_id.clone();
                if version >= 9 {
                    let code = coord.check_offset_fetch(
                        &g.group_id.0,
                        g.member_id.as_deref(),
                        g.member_epoch,
                    );
                    if code != codes::NONE {
                        og.error_code = code;
                        resp.groups.push(og);
                        continue;
                    }
                }
                for (t, parts) in fetch(&g.group_id.0, wanted) {
                    let mut ot = offset_fetch_response::OffsetFetchResponseTopics::default();
                    ot.name = TopicName(sb(&t));
                    for (p, v) in parts {
                        let mut op =
                            offset_fetch_response::OffsetFetchResponsePartitions::default();
                        op.partition_index = p;
                        op.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                        op.committed_leader_epoch = v.as_ref().map_or(-1, |v| v.leader_epoch);
                        op.metadata = Some(sb(v.as_ref().map_or("", |v| v.metadata.as_str())));
                        if r.require_stable && self.txns().has_pending_offsets(&g.group_id.0, &t, p)
                        {
                            op.error_code = crate::txn::UNSTABLE_OFFSET_COMMIT;
                        }
                        ot.partitions.push(op);
                    }
                    og.topics.push(ot);
                }
                resp.groups.push(og);
            }
        } else {
            let wanted = r.topics.as_ref().map(|ts| {
                ts.iter()
                    .flat_map(|t| {
                        t.partition_indexes
                            .iter()
                            .map(|p| (t.name.0.to_string(), *p))
                    })
                    .collect::<Vec<_>>()
            });
            for (t, parts) in fetch(&r.group_id.0, wanted) {
                let mut ot = offset_fetch_response::OffsetFetchResponseTopic::default();
                ot.name = TopicName(sb(&t));
                for (p, v) in parts {
                    let mut op = offset_fetch_response::OffsetFetchResponsePartition::default();
                    op.partition_index = p;
                    op.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                    op.committed_leader_epoch = v.as_ref().map_or(-1, |v| v.leader_epoch);
                    op.metadata = Some(sb(v.as_ref().map_or("", |v| v.metadata.as_str())));
                    if version >= 7
                        && r.require_stable
                        && self.txns().has_pending_offsets(&r.group_id.0, &t, p)
                    {
                        op.error_code = crate::txn::UNSTABLE_OFFSET_COMMIT;
                    }
                    ot.partitions.push(op);
                }
                resp.topics.push(ot);
            }
        }
        resp
    }

    fn describe_groups(&self, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let mut resp = DescribeGroupsResponse::default();
        let g = self.groups().lock();
        for id in r.groups {
            let mut d = describe_groups_response::DescribedGroup::default();
            match g.coord.describe(&id.0) {
                // A missing group, or a consumer-protocol one: Dead with no error, as Kafka
                // answers DescribeGroups up to v5 (v6, not served, adds GROUP_ID_NOT_FOUND).
                None => d.group_state = sb("Dead"),
                Some(x) => {
                    d.group_state = sb(x.state.name());
                    d.protocol_type = sb(&x.protocol_type);
                    d.protocol_data = sb(&x.protocol);
                    d.members = x
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = describe_groups_response::DescribedGroupMember::default();
                            dm.member_id = sb(&m.member_id);
                            dm.group_instance_id = m.instance_id.as_deref().map(sb);
                            dm.client_id = sb(&m.client_id);
                            dm.client_host = sb(&m.client_host);
                            dm.member_metadata = Bytes::from(m.subscription);
                            dm.member_assignment = Bytes::from(m.assignment);
                            dm
                        })
                        .collect();
                }
            }
            d.authorized_operations = i32::MIN;
            d.group_id = id;
            resp.groups.push(d);
        }
        resp
    }

    fn list_groups(&self, r: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let mut resp = ListGroupsResponse::default();
        let states: Vec<String> = r.states_filter.iter().map(|s| s.to_string()).collect();
        let type_ok = |t: &str| {
            r.types_filter.is_empty() || r.types_filter.iter().any(|f| f.eq_ignore_ascii_case(t))
        };
        for x in self.groups().lock().coord.list_groups(&states) {
            if !type_ok(x.group_type) {
                continue;
            }
            let mut l = list_groups_response::ListedGroup::default();
            l.group_id = GroupId(sb(&x.group_id));
            l.protocol_type = sb(&x.protocol_type);
            if version >= 4 {
                l.group_state = sb(x.state);
            }
            if version >= 5 {
                l.group_type = sb(x.group_type);
            }
            resp.groups.push(l);
        }
        resp
    }

    fn offset_delete(&self, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let mut resp = OffsetDeleteResponse::default();
        let parts: Vec<(String, i32)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index))
            })
            .collect();
        match self
            .groups()
            .with(|c| c.delete_offsets(&r.group_id.0, &parts))
        {
            Err(code) => resp.error_code = code,
            Ok(codes) => {
                let mut i = 0;
                for t in r.topics {
                    let mut ot = offset_delete_response::OffsetDeleteResponseTopic::default();
                    ot.name = t.name;
                    for p in t.partitions {
                        let mut op =
                            offset_delete_response::OffsetDeleteResponsePartition::default();
                        op.partition_index = p.partition_index;
                        op.error_code = codes.get(i).copied().unwrap_or(codes::NONE);
                        i += 1;
                        ot.partitions.push(op);
                    }
                    resp.topics.push(ot);
                }
            }
        }
        resp
    }
}

impl Broker {
    /// The topics as the consumer group coordinator sees them.
    fn topics_view(&self) -> holdfast_groups::consumer::Topics {
        self.all_topics()
            .into_iter()
            .map(|t| {
                (
                    t.meta.name.clone(),
                    holdfast_groups::consumer::TopicInfo {
                        id: *t.meta.id.as_bytes(),
                        partitions: t.partitions.len() as i32,
                        internal: t.meta.name == OFFSETS_TOPIC,
                    },
                )
            })
            .collect()
    }

    /// ConsumerGroupHeartbeat (KIP-848). The response is sent once the records the
    /// heartbeat produced (member, epochs, assignments) are durable.
    async fn consumer_group_heartbeat(
        self: Arc<Self>,
        r: ConsumerGroupHeartbeatRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> ConsumerGroupHeartbeatResponse {
        let req = holdfast_groups::consumer::HeartbeatRequest {
            api_version: version,
            group_id: r.group_id.0.to_string(),
            member_id: r.member_id.to_string(),
            member_epoch: r.member_epoch,
            instance_id: r.instance_id.as_ref().map(|s| s.to_string()),
            rack_id: r.rack_id.as_ref().map(|s| s.to_string()),
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            subscribed_topic_names: r
                .subscribed_topic_names
                .as_ref()
                .map(|v| v.iter().map(|t| t.0.to_string()).collect()),
            subscribed_topic_regex: r.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
            server_assignor: r.server_assignor.as_ref().map(|s| s.to_string()),
            owned: r.topic_partitions.as_ref().map(|v| {
                v.iter()
                    .map(|tp| (*tp.topic_id.as_bytes(), tp.partitions.clone()))
                    .collect()
            }),
            client_id,
            client_host,
        };
        let topics = self.topics_view();
        let now = timer_ms();
        tracing::debug!(
            group = %req.group_id,
            member = %req.member_id,
            epoch = req.member_epoch,
            topics = ?req.subscribed_topic_names.as_ref().map(Vec::len),
            regex = ?req.subscribed_topic_regex,
            owned = ?req.owned.as_ref().map(|o| o.iter().map(|(_, p)| p.len()).sum::<usize>()),
            "consumer heartbeat"
        );
        let (out, durable) = self
            .groups()
            .with_durable(|c| c.consumer_heartbeat(req, &topics, now));
        tracing::debug!(
            error = out.error,
            member = ?out.member_id,
            epoch = out.member_epoch,
            assigned = ?out.assignment.as_ref().map(|a| a.iter().map(|(_, p)| p.len()).sum::<usize>()),
            "consumer heartbeat answered"
        );
        let mut resp = ConsumerGroupHeartbeatResponse::default();
        let persisted = matches!(
            tokio::time::timeout(Duration::from_secs(30), durable).await,
            Ok(Ok(true))
        );
        if !persisted {
            resp.error_code = codes::COORDINATOR_NOT_AVAILABLE;
            resp.error_message = Some(sb("The group state could not be made durable."));
            return resp;
        }
        resp.error_code = out.error;
        resp.error_message = out.message.as_deref().map(sb);
        resp.member_id = out.member_id.as_deref().map(sb);
        resp.member_epoch = out.member_epoch;
        resp.heartbeat_interval_ms = out.heartbeat_interval_ms;
        resp.assignment = out.assignment.map(|a| {
            let mut x = consumer_group_heartbeat_response::Assignment::default();
            x.topic_partitions = a
                .into_iter()
                .map(|(id, ps)| {
                    let mut tp = consumer_group_heartbeat_response::TopicPartitions::default();
                    tp.topic_id = uuid::Uuid::from_bytes(id);
                    tp.partitions = ps;
                    tp
                })
                .collect();
            x
        });
        resp
    }

    fn consumer_group_describe(
        &self,
        r: ConsumerGroupDescribeRequest,
    ) -> ConsumerGroupDescribeResponse {
        use consumer_group_describe_response as d;
        let assignment = |list: Vec<([u8; 16], String, Vec<i32>)>| {
            let mut a = d::Assignment::default();
            a.topic_partitions = list
                .into_iter()
                .map(|(id, name, ps)| {
                    let mut tp = d::TopicPartitions::default();
                    tp.topic_id = uuid::Uuid::from_bytes(id);
                    tp.topic_name = TopicName(sb(&name));
                    tp.partitions = ps;
                    tp
                })
                .collect();
            a
        };
        let mut resp = ConsumerGroupDescribeResponse::default();
        let g = self.groups().lock();
        for id in r.group_ids {
            let mut x = d::DescribedGroup::default();
            x.authorized_operations = i32::MIN;
            match g.coord.consumer_describe(&id.0) {
                Err((code, msg)) => {
                    x.error_code = code;
                    x.error_message = Some(sb(&msg));
                    x.group_state = sb("Dead");
                }
                Ok(desc) => {
                    x.group_state = sb(desc.state);
                    x.group_epoch = desc.group_epoch;
                    x.assignment_epoch = desc.assignment_epoch;
                    x.assignor_name = sb(&desc.assignor);
                    x.members = desc
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = d::Member::default();
                            dm.member_id = sb(&m.member_id);
                            dm.instance_id = m.instance_id.as_deref().map(sb);
                            dm.rack_id = m.rack_id.as_deref().map(sb);
                            dm.member_epoch = m.member_epoch;
                            dm.client_id = sb(&m.client_id);
                            dm.client_host = sb(&m.client_host);
                            dm.subscribed_topic_names = m
                                .subscribed_topic_names
                                .iter()
                                .map(|t| TopicName(sb(t)))
                                .collect();
                            dm.subscribed_topic_regex = m.subscribed_topic_regex.as_deref().map(sb);
                            dm.assignment = assignment(m.assignment);
                            dm.target_assignment = assignment(m.target_assignment);
                            // 1 = consumer protocol member (KIP-1099).
                            dm.member_type = 1;
                            dm
                        })
                        .collect();
                }
            }
            x.group_id = id;
            resp.groups.push(x);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_order_is_per_group_and_forgets_idle_groups() {
        let order = Arc::new(CommitOrder::default());
        let mut a1 = order.take_turn("a");
        let mut a2 = order.take_turn("a");
        let mut b1 = order.take_turn("b");
        // b's turn does not wait for a's.
        tokio::time::timeout(Duration::from_secs(5), b1.wait())
            .await
            .expect("b is served at once");
        a1.wait().await;
        let waiting = tokio::spawn(async move {
            a2.wait().await;
            a2
        });
        drop(b1);
        assert_eq!(order.len(), 1);
        drop(a1);
        let a2 = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a2 served after a1")
            .expect("task");
        drop(a2);
        assert_eq!(order.len(), 0);
        // An abandoned turn (dropped before served) is skipped.
        let a3 = order.take_turn("a");
        let a4 = order.take_turn("a");
        let mut a5 = order.take_turn("a");
        drop(a4);
        drop(a3);
        tokio::time::timeout(Duration::from_secs(5), a5.wait())
            .await
            .expect("a5 served");
        drop(a5);
        assert_eq!(order.len(), 0);
    }
}
