//! The transaction coordinator's I/O: requests of the transaction APIs, `__transaction_state`
//! persistence, transaction markers written to partitions, transactional offset commits,
//! timeouts and recovery. The state machine itself is `holdfast_txn::Coordinator`.
//!
//! Order of a commit (as in Kafka): EndTxn persists PrepareCommit (fsynced) and answers;
//! then a COMMIT marker is appended to every partition of the transaction and made durable;
//! then pending transactional offsets are applied; then CompleteCommit is persisted. A crash
//! anywhere after PrepareCommit is finished on restart: prepared transactions get their
//! markers written again (a second marker for a closed transaction changes nothing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use holdfast_groups::records::{self as group_records, OffsetValue, RecordKey};
use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::MarkerKind;
use holdfast_txn::{codes, Coordinator, EndOutcome, InitOutcome, Transition, TxnMeta, TxnState};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{watch, Notify};

use crate::errors as ec;
use crate::groups::OFFSETS_TOPIC;
use crate::handlers::{append_records, blocking, Reply};
use crate::state::{now_ms, timer_ms, Broker, Partition};

pub const TXN_TOPIC: &str = "__transaction_state";

/// Test-only negative control for the chaos harness: with
/// `HOLDFAST_UNSAFE_ABORT_AS_COMMIT=1` an aborted transaction gets COMMIT markers, so its
/// data becomes visible to `read_committed` readers. A run with it must be caught by the
/// transactional checker (`txn-aborted-visible`). Read once; off unless exactly `1`.
fn unsafe_abort_as_commit() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_ABORT_AS_COMMIT").is_ok_and(|v| v == "1");
        if on {
            tracing::error!("HOLDFAST_UNSAFE_ABORT_AS_COMMIT=1: aborted transactions are COMMITTED (test-only negative control)");
        }
        on
    })
}

/// Test-only negative control for the chaos harness: with `HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER=1`
/// a TxnOffsetCommit's offsets take effect as soon as they are appended, before the
/// transaction's outcome is known, so an aborted transaction still moves its group's
/// committed offsets (a consume-transform-produce copier that rewinds to them after an abort
/// skips input). The copy checker must catch it (`copy-offsets-after-abort`, `copy-lost`).
/// Read once; off unless exactly `1`.
fn unsafe_txn_offsets_eager() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER").is_ok_and(|v| v == "1");
        if on {
            tracing::error!("HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER=1: transactional offsets take effect before the commit (test-only negative control)");
        }
        on
    })
}

/// Test hook (`HOLDFAST_TEST_CRASH_AFTER_PREPARE=1`): the process aborts right after a
/// PrepareCommit/PrepareAbort is durable and before any marker is written, so a test can
/// prove that recovery finishes the transaction. Read once; off unless exactly `1`.
fn crash_after_prepare() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("HOLDFAST_TEST_CRASH_AFTER_PREPARE").is_ok_and(|v| v == "1");
        if on {
            tracing::error!("HOLDFAST_TEST_CRASH_AFTER_PREPARE=1: the broker aborts after the first prepared transaction (test hook)");
        }
        on
    })
}

const OPERATION_NOT_ATTEMPTED: i16 = 55;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const NOT_COORDINATOR: i16 = 16;
pub(crate) const UNSTABLE_OFFSET_COMMIT: i16 = 88;
/// How long a coordinator write may wait for durability before the request fails.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(30);

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A record's key and value, as read from a log.
type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// A transactional offset commit waiting for its transaction's marker.
#[derive(Debug, Clone)]
struct PendingOffset {
    group: String,
    topic: String,
    partition: i32,
    value: OffsetValue,
}

pub struct TxnService {
    coord: Mutex<Coordinator>,
    partitions: i32,
    check_interval_ms: u64,
    /// Transactional offset commits by producer id, applied on COMMIT.
    pending_offsets: Mutex<HashMap<i64, Vec<PendingOffset>>>,
    /// Records of open transactions met while loading `__consumer_offsets`.
    loading: Mutex<HashMap<i64, Vec<KeyValue>>>,
    /// Transactional ids whose markers are being written.
    markers_in_flight: Mutex<HashSet<String>>,
    wake: Notify,
    /// Times a partition's last stable offset was found held back by a transaction past its
    /// timeout (or one its coordinator does not know: a hanging transaction).
    pub lso_stuck_total: AtomicU64,
    lso_stuck_reported: Mutex<HashSet<(String, i32, i64)>>,
    /// Cluster mode only (`None` on a single node): the `__transaction_state` partitions this
    /// broker leads and has loaded or is loading (crate::cluster::txn). Lock order: `coord`
    /// first, then `owned`.
    owned: Mutex<Option<crate::groups::Owned>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TxnService {
    pub fn new(cfg: holdfast_txn::Config, partitions: i32, check_interval_ms: u64) -> Self {
        TxnService {
            coord: Mutex::new(Coordinator::new(cfg)),
            partitions,
            check_interval_ms,
            pending_offsets: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            markers_in_flight: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            lso_stuck_total: AtomicU64::new(0),
            lso_stuck_reported: Mutex::new(HashSet::new()),
            owned: Mutex::new(None),
        }
    }

    /// Cluster mode: transactional ids are served only for the `__transaction_state`
    /// partitions this broker leads and has loaded (crate::cluster::txn).
    pub(crate) fn enable_cluster(&self) {
        *self.owned() = Some(crate::groups::Owned::default());
    }

    pub(crate) fn owned(&self) -> MutexGuard<'_, Option<crate::groups::Owned>> {
        lock(&self.owned)
    }

    pub(crate) fn coord_lock(&self) -> MutexGuard<'_, Coordinator> {
        self.coord()
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The `__transaction_state` partition of `transactional_id`
    /// (`Utils.abs(hashCode) % partitions`, as Kafka).
    pub(crate) fn partition_of(&self, transactional_id: &str) -> i32 {
        let n = match self.owned().as_ref() {
            Some(o) if o.partitions > 0 => o.partitions,
            _ => self.partitions,
        };
        group_records::partition_for(transactional_id, n)
    }

    /// NONE when this broker coordinates `transactional_id`; otherwise NOT_COORDINATOR, or
    /// COORDINATOR_LOAD_IN_PROGRESS while its partition is being loaded (cluster mode).
    pub(crate) fn owner_error(&self, transactional_id: &str) -> i16 {
        let g = self.owned();
        let Some(o) = g.as_ref() else {
            return ec::NONE;
        };
        if o.partitions <= 0 {
            return NOT_COORDINATOR;
        }
        match o.parts.get(&group_records::partition_for(
            transactional_id,
            o.partitions,
        )) {
            Some((_, true)) => ec::NONE,
            Some((_, false)) => COORDINATOR_LOAD_IN_PROGRESS,
            None => NOT_COORDINATOR,
        }
    }

    /// Cluster mode: transactional offsets waiting for a marker of groups whose
    /// `__consumer_offsets` partition is unloaded here are dropped (the new group
    /// coordinator loads them from the log).
    pub(crate) fn drop_pending_offsets(&self, unload: impl Fn(&str) -> bool) {
        let mut pending = lock(&self.pending_offsets);
        for v in pending.values_mut() {
            v.retain(|o| !unload(&o.group));
        }
        pending.retain(|_, v| !v.is_empty());
    }

    fn coord(&self) -> MutexGuard<'_, Coordinator> {
        lock(&self.coord)
    }

    /// KIP-890 part 1, called under the partition lock before a transactional batch is
    /// appended: the producer's transaction must be open with this partition in it, and not
    /// being ended.
    pub(crate) fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), i16> {
        self.coord()
            .verify_partition(producer_id, epoch, topic, partition)
    }

    /// While loading `__consumer_offsets`: a record of a transactional batch.
    pub(crate) fn loaded_txn_offset(&self, producer_id: i64, key: &[u8], value: Option<&[u8]>) {
        lock(&self.loading)
            .entry(producer_id)
            .or_default()
            .push((key.to_vec(), value.map(<[u8]>::to_vec)));
    }

    /// While loading `__consumer_offsets`: a marker. Returns the records to apply (COMMIT).
    pub(crate) fn loaded_marker(&self, producer_id: i64, kind: MarkerKind) -> Vec<KeyValue> {
        let recs = lock(&self.loading).remove(&producer_id).unwrap_or_default();
        match kind {
            MarkerKind::Commit => recs,
            MarkerKind::Abort => Vec::new(),
        }
    }

    /// After loading: transactional offsets still open become pending again.
    pub(crate) fn adopt_loaded(&self) {
        let loading = std::mem::take(&mut *lock(&self.loading));
        let mut pending = lock(&self.pending_offsets);
        for (pid, recs) in loading {
            for (k, v) in recs {
                let (
                    Ok(RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    }),
                    Some(v),
                ) = (group_records::decode_key(&k), v)
                else {
                    continue;
                };
                if let Ok(value) = group_records::decode_offset_value(&v) {
                    pending.entry(pid).or_default().push(PendingOffset {
                        group,
                        topic,
                        partition,
                        value,
                    });
                }
            }
        }
    }

    /// Transactional ids per state (metrics), in a fixed order.
    pub(crate) fn count_by_state(&self) -> Vec<(&'static str, u64)> {
        let states = [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ];
        let c = self.coord();
        states
            .iter()
            .map(|s| {
                let n = c
                    .all()
                    .filter(|m| m.producer_id >= 0 && m.state == *s)
                    .count();
                (s.name(), n as u64)
            })
            .collect()
    }

    /// Whether a group has transactional offsets waiting for a marker (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT for those partitions).
    pub(crate) fn has_pending_offsets(&self, group: &str, topic: &str, partition: i32) -> bool {
        lock(&self.pending_offsets).values().any(|v| {
            v.iter()
                .any(|p| p.group == group && p.topic == topic && p.partition == partition)
        })
    }
}

pub fn is_txn_api(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::AddPartitionsToTxn
            | ApiKey::AddOffsetsToTxn
            | ApiKey::EndTxn
            | ApiKey::TxnOffsetCommit
            | ApiKey::WriteTxnMarkers
            | ApiKey::DescribeTransactions
            | ApiKey::ListTransactions
            | ApiKey::DescribeProducers
    )
}

/// PRODUCER_FENCED exists from these versions on (KIP-588); older clients get
/// INVALID_PRODUCER_EPOCH.
fn fenced_code(code: i16, version: i16, first_version: i16) -> i16 {
    if code == codes::PRODUCER_FENCED && version < first_version {
        codes::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

impl Broker {
    pub(crate) fn txns(&self) -> &TxnService {
        &self.txns
    }

    /// Creates `__transaction_state` if missing and rebuilds the coordinator from it.
    /// Blocking; called once on open, after the groups are loaded.
    pub(crate) fn load_txns(&self) -> Result<(), String> {
        self.txns().adopt_loaded();
        let n = self.txns().partitions;
        if self.topic(TXN_TOPIC).is_none() {
            let mut cfg = BTreeMap::new();
            cfg.insert("cleanup.policy".to_string(), "compact".to_string());
            cfg.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
            self.create_topic(TXN_TOPIC, n, cfg, false)
                .map_err(|(_, m)| m)?;
        }
        let mut count = 0u64;
        let mut coord = self.txns().coord();
        self.scan_internal_topic(TXN_TOPIC, |h, key, value| {
            if h.is_control() {
                return;
            }
            if let Some(k) = key {
                if let Err(e) = coord.load_record(k, value) {
                    tracing::warn!(error = %e, "skipping a __transaction_state record");
                }
                count += 1;
            }
        })?;
        tracing::info!(
            records = count,
            transactional_ids = coord.len(),
            prepared = coord.prepared().len(),
            "transaction state loaded"
        );
        Ok(())
    }

    /// Reads every record of an internal topic below its high watermark (blocking).
    pub(crate) fn scan_internal_topic(
        &self,
        name: &str,
        mut f: impl FnMut(&holdfast_log::batch::BatchHeader, Option<&[u8]>, Option<&[u8]>),
    ) -> Result<(), String> {
        let Some(topic) = self.topic(name) else {
            return Err(format!("{name} is missing"));
        };
        for p in &topic.partitions {
            scan_internal_partition(name, p, p.high_watermark(), &mut f)?;
        }
        Ok(())
    }

    /// Appends one internal record set to `p` and waits until it is durable.
    async fn append_internal(
        self: &Arc<Self>,
        p: &Arc<Partition>,
        data: Vec<u8>,
    ) -> Result<(), i16> {
        // Cluster mode: acks=all, as a Produce with acks=-1 (NOT_ENOUGH_REPLICAS before
        // anything is written); errors mapped as Kafka's coordinators do.
        if let Err(code) = crate::cluster::replica::check_before_append(p, -1) {
            return Err(crate::groups::coordinator_append_error(code));
        }
        let p2 = Arc::clone(p);
        let appended =
            blocking(move || append_records(&p2, Some(Bytes::from(data)), now_ms(), |_| Ok(())))
                .await
                .ok_or(ec::COORDINATOR_NOT_AVAILABLE)?;
        let o = appended.map_err(|(code, msg)| {
            tracing::error!(topic = %p.topic, partition = p.index, code, ?msg, "internal append failed");
            if p.is_replicated() {
                crate::groups::coordinator_append_error(code)
            } else {
                ec::COORDINATOR_NOT_AVAILABLE
            }
        })?;
        if p.waits_fsync() {
            match tokio::time::timeout(PERSIST_TIMEOUT, p.durable().wait_for(o.durable_end)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "internal fsync failed");
                    return Err(ec::COORDINATOR_NOT_AVAILABLE);
                }
                Err(_) => return Err(ec::COORDINATOR_NOT_AVAILABLE),
            }
        }
        self.notify_data();
        if p.is_replicated() {
            // Acknowledged only once the high watermark passes the records (acks=all).
            if crate::cluster::replica::feed_durable(p) {
                self.notify_data();
            }
            let deadline = tokio::time::Instant::now() + PERSIST_TIMEOUT;
            if let Err((code, _)) = self.await_ack_all(p, &o, deadline).await {
                tracing::warn!(topic = %p.topic, partition = p.index, code, "internal records not replicated");
                return Err(if code == ec::REQUEST_TIMED_OUT {
                    ec::COORDINATOR_NOT_AVAILABLE
                } else {
                    crate::groups::coordinator_append_error(code)
                });
            }
        }
        Ok(())
    }

    /// Persists a transition in `__transaction_state`, then makes it current.
    async fn persist(self: &Arc<Self>, t: &Transition) -> Result<(), i16> {
        let id = t.transactional_id();
        let index = self.txns().partition_of(id);
        // Cluster mode: the tenure (leader epoch of the loaded partition) this transition
        // was decided in; `None` on a single node.
        let tenure: Option<Option<(i32, bool)>> = self
            .txns()
            .owned()
            .as_ref()
            .map(|o| o.parts.get(&index).copied());
        let result = match (tenure, self.partition(TXN_TOPIC, index)) {
            (Some(None) | Some(Some((_, false))), _) => Err(NOT_COORDINATOR),
            (Some(_), None) => Err(NOT_COORDINATOR),
            (None, None) => Err(ec::COORDINATOR_NOT_AVAILABLE),
            (Some(Some((epoch, true))), Some(p)) if p.leader_epoch() != epoch => {
                Err(NOT_COORDINATOR)
            }
            (_, Some(p)) => {
                let key = holdfast_txn::records::key(id);
                let value = holdfast_txn::records::value(&t.target);
                let data = batch(
                    &[Record {
                        key: Some(&key),
                        value: Some(&value),
                        timestamp_ms: now_ms(),
                    }],
                    BatchOptions {
                        producer_id: -1,
                        producer_epoch: -1,
                        base_sequence: -1,
                        ..BatchOptions::default()
                    },
                );
                self.append_internal(&p, data).await
            }
        };
        let result = {
            let mut c = self.txns().coord();
            // Under the coordinator lock (taken before `owned` by the loader too): a
            // partition unloaded meanwhile must not get this transition back.
            let still = match tenure {
                None => true,
                Some(now) => self
                    .txns()
                    .owned()
                    .as_ref()
                    .is_some_and(|o| o.parts.get(&index).copied() == now),
            };
            let result = if still { result } else { Err(NOT_COORDINATOR) };
            c.complete(t, result.is_ok());
            result
        };
        self.txns().wake.notify_one();
        result
    }

    /// Writes a tombstone for an expired transactional id.
    async fn persist_tombstone(self: &Arc<Self>, id: &str) -> Result<(), i16> {
        let index = self.txns().partition_of(id);
        let p = self
            .partition(TXN_TOPIC, index)
            .ok_or(ec::COORDINATOR_NOT_AVAILABLE)?;
        let key = holdfast_txn::records::key(id);
        let data = batch(
            &[Record {
                key: Some(&key),
                value: None,
                timestamp_ms: now_ms(),
            }],
            BatchOptions {
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                ..BatchOptions::default()
            },
        );
        self.append_internal(&p, data).await
    }

    /// Writes the markers of a prepared transaction, applies or drops its pending offsets,
    /// and persists its completion. At most one task per transactional id.
    async fn finish_txn(self: Arc<Self>, transactional_id: String) {
        if !lock(&self.txns().markers_in_flight).insert(transactional_id.clone()) {
            return;
        }
        let r = self.write_markers(&transactional_id).await;
        lock(&self.txns().markers_in_flight).remove(&transactional_id);
        if let Err(e) = r {
            // Left prepared: the timer loop tries again.
            tracing::warn!(transactional_id = %transactional_id, error = %e, "transaction markers not written yet");
        }
    }

    async fn write_markers(self: &Arc<Self>, transactional_id: &str) -> Result<(), String> {
        let meta: TxnMeta = self
            .txns()
            .coord()
            .get(transactional_id)
            .cloned()
            .ok_or("unknown transactional id")?;
        let kind = match (meta.state, meta.pending) {
            (TxnState::PrepareCommit, None) => MarkerKind::Commit,
            (TxnState::PrepareAbort, None) if unsafe_abort_as_commit() => MarkerKind::Commit,
            (TxnState::PrepareAbort, None) => MarkerKind::Abort,
            _ => return Ok(()),
        };
        let parts: Vec<(String, i32)> = meta.partitions.iter().cloned().collect();
        let (pid, epoch) = (meta.producer_id, meta.producer_epoch);
        match self.cluster().cloned() {
            // Cluster mode: WriteTxnMarkers to every partition's leader; the group
            // coordinator applies transactional offsets when its marker is written.
            Some(cluster) => {
                let coordinator_epoch = self
                    .partition(TXN_TOPIC, self.txns().partition_of(transactional_id))
                    .map_or(0, |p| p.leader_epoch());
                crate::cluster::txn::send_markers(
                    &cluster,
                    pid,
                    epoch,
                    kind == MarkerKind::Commit,
                    coordinator_epoch,
                    parts,
                )
                .await?;
            }
            None => self.write_markers_locally(pid, epoch, kind, parts).await?,
        }
        self.notify_data();
        let done = self
            .txns()
            .coord()
            .markers_written(transactional_id, timer_ms());
        if let Some(t) = done {
            self.persist(&t)
                .await
                .map_err(|code| format!("persisting completion: error {code}"))?;
        }
        tracing::debug!(transactional_id, ?kind, pid, epoch, "transaction completed");
        Ok(())
    }

    /// Single node: appends the markers to the local partitions, waits until they are
    /// durable, then applies (COMMIT) or drops the transaction's pending offsets.
    async fn write_markers_locally(
        self: &Arc<Self>,
        pid: i64,
        epoch: i16,
        kind: MarkerKind,
        parts: Vec<(String, i32)>,
    ) -> Result<(), String> {
        let b = Arc::clone(self);
        let written = blocking(move || {
            let now = now_ms();
            let mut waits = Vec::new();
            for (topic, index) in parts {
                // A deleted topic needs no marker.
                let Some(p) = b.partition(&topic, index) else {
                    continue;
                };
                let mut st = p.lock();
                let leader_epoch = st.leader_epoch;
                let Some(log) = st.log.as_mut() else { continue };
                let o = log
                    .append_marker(pid, epoch, kind, 0, leader_epoch, now)
                    .map_err(|e| format!("marker for {topic}-{index}: {e}"))?;
                p.refresh(log);
                drop(st);
                waits.push((p, o.durable_end));
            }
            Ok::<_, String>(waits)
        })
        .await
        .ok_or("marker task failed")??;
        for (p, end) in written {
            if p.waits_fsync() {
                tokio::time::timeout(PERSIST_TIMEOUT, p.durable().wait_for(end))
                    .await
                    .map_err(|_| format!("marker fsync timed out on {}-{}", p.topic, p.index))?
                    .map_err(|e| format!("marker fsync on {}-{}: {e}", p.topic, p.index))?;
            }
        }
        // Markers are durable: transactional offsets take effect (or vanish).
        let pending = lock(&self.txns().pending_offsets)
            .remove(&pid)
            .unwrap_or_default();
        if kind == MarkerKind::Commit {
            let mut by_group: BTreeMap<String, Vec<(String, i32, OffsetValue)>> = BTreeMap::new();
            for o in pending {
                by_group
                    .entry(o.group)
                    .or_default()
                    .push((o.topic, o.partition, o.value));
            }
            for (g, offs) in by_group {
                self.groups().with(|c| c.apply_commit(&g, offs));
            }
        }
        Ok(())
    }

    /// WriteTxnMarkers (API 27), sent by a transaction coordinator to the leader of each
    /// partition of a transaction: appends the COMMIT/ABORT control batch as leader (with
    /// its leader epoch), waits until it is durable and, in cluster mode, until the high
    /// watermark passes it (it replicates like any batch). For a `__consumer_offsets`
    /// partition the transaction's pending offsets of its groups then take effect (COMMIT)
    /// or vanish (ABORT).
    async fn write_txn_markers(
        self: Arc<Self>,
        r: WriteTxnMarkersRequest,
    ) -> WriteTxnMarkersResponse {
        use write_txn_markers_response::{
            WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
        };
        let mut resp = WriteTxnMarkersResponse::default();
        for m in r.markers {
            let kind = if m.transaction_result {
                MarkerKind::Commit
            } else {
                MarkerKind::Abort
            };
            let (pid, epoch) = (m.producer_id.0, m.producer_epoch);
            let mut mr = WritableTxnMarkerResult::default();
            mr.producer_id = m.producer_id;
            for t in m.topics {
                let mut tr = WritableTxnMarkerTopicResult::default();
                tr.name = t.name.clone();
                for index in t.partition_indexes {
                    let code = self
                        .write_one_marker(&t.name.0, index, pid, epoch, kind, m.coordinator_epoch)
                        .await;
                    if code != ec::NONE {
                        tracing::debug!(topic = %t.name.0.as_str(), partition = index, producer_id = pid, code, "marker not written");
                    }
                    let mut pr = WritableTxnMarkerPartitionResult::default();
                    pr.partition_index = index;
                    pr.error_code = code;
                    tr.partitions.push(pr);
                }
                mr.topics.push(tr);
            }
            resp.markers.push(mr);
        }
        resp
    }

    async fn write_one_marker(
        self: &Arc<Self>,
        topic: &str,
        index: i32,
        pid: i64,
        epoch: i16,
        kind: MarkerKind,
        coordinator_epoch: i32,
    ) -> i16 {
        const NOT_LEADER_OR_FOLLOWER: i16 = 6;
        let Some(p) = self.partition(topic, index) else {
            let exists = self
                .topic(topic)
                .is_some_and(|t| usize::try_from(index).is_ok_and(|i| i < t.partitions.len()));
            return if exists && self.cluster().is_some() {
                NOT_LEADER_OR_FOLLOWER
            } else {
                ec::UNKNOWN_TOPIC_OR_PARTITION
            };
        };
        if let Err(code) = crate::cluster::replica::check_before_append(&p, -1) {
            return code;
        }
        let p2 = Arc::clone(&p);
        let appended = blocking(move || {
            let mut st = p2.lock();
            // Cluster mode: the role changes under this lock (see `append_records`).
            if p2.is_replicated() && !p2.is_leader() {
                return Err(NOT_LEADER_OR_FOLLOWER);
            }
            let leader_epoch = st.leader_epoch;
            let Some(log) = st.log.as_mut() else {
                return Err(ec::UNKNOWN_TOPIC_OR_PARTITION);
            };
            let r = log.append_marker(pid, epoch, kind, coordinator_epoch, leader_epoch, now_ms());
            p2.refresh(log);
            drop(st);
            match r {
                Ok(o) => Ok(crate::handlers::Appended::of_marker(
                    o.first_offset,
                    o.durable_end,
                    leader_epoch,
                )),
                Err(e) => {
                    tracing::warn!(topic = %p2.topic, partition = p2.index, producer_id = pid, error = %e, "marker refused");
                    Err(e.kafka_error_code())
                }
            }
        })
        .await;
        let o = match appended {
            None => return ec::UNKNOWN_SERVER_ERROR,
            Some(Err(code)) => return code,
            Some(Ok(o)) => o,
        };
        if p.waits_fsync() {
            match tokio::time::timeout(PERSIST_TIMEOUT, p.durable().wait_for(o.durable_end)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "marker fsync failed");
                    return ec::KAFKA_STORAGE_ERROR;
                }
                Err(_) => return ec::REQUEST_TIMED_OUT,
            }
        }
        self.notify_data();
        if p.is_replicated() {
            if crate::cluster::replica::feed_durable(&p) {
                self.notify_data();
            }
            let deadline = tokio::time::Instant::now() + PERSIST_TIMEOUT;
            if let Err((code, _)) = self.await_ack_all(&p, &o, deadline).await {
                return code;
            }
        }
        if topic == OFFSETS_TOPIC {
            // The marker is committed: this partition's transactional offsets of `pid`
            // take effect (or vanish).
            let mine: Vec<PendingOffset> = {
                let mut pending = lock(&self.txns().pending_offsets);
                let Some(v) = pending.get_mut(&pid) else {
                    return ec::NONE;
                };
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(v)
                    .into_iter()
                    .partition(|o| self.groups().partition_of(&o.group) == index);
                *v = rest;
                if v.is_empty() {
                    pending.remove(&pid);
                }
                mine
            };
            if kind == MarkerKind::Commit {
                let mut by_group: BTreeMap<String, Vec<(String, i32, OffsetValue)>> =
                    BTreeMap::new();
                for o in mine {
                    by_group
                        .entry(o.group)
                        .or_default()
                        .push((o.topic, o.partition, o.value));
                }
                for (g, offs) in by_group {
                    self.groups().with(|c| c.apply_commit(&g, offs));
                }
            }
        }
        ec::NONE
    }

    /// Aborts timed-out transactions, finishes prepared ones, watches last stable offsets.
    async fn txn_timer_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.txns().check_interval_ms.max(10));
        let mut first = true;
        loop {
            if !first {
                let next = self.txns().coord().next_deadline();
                let wait = match next {
                    Some(d) => Duration::from_millis((d - timer_ms()).clamp(0, 60_000) as u64),
                    None => every,
                }
                .min(every);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.txns().wake.notified() => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            let now = timer_ms();
            let expired = self.txns().coord().expired(now);
            for t in expired {
                tracing::warn!(transactional_id = %t.transactional_id(), producer_id = t.target.producer_id, "transaction timed out: aborting");
                if self.persist(&t).await.is_ok() {
                    tokio::spawn(Arc::clone(&self).finish_txn(t.transactional_id().to_string()));
                }
            }
            let idle = self.txns().coord().expired_ids(now);
            for id in idle {
                let ok = self.persist_tombstone(&id).await.is_ok();
                self.txns().coord().forget(&id, ok);
                if ok {
                    tracing::info!(transactional_id = %id, "transactional id expired");
                }
            }
            let prepared = self.txns().coord().prepared();
            for m in prepared {
                if !lock(&self.txns().markers_in_flight).contains(&m.transactional_id) {
                    tokio::spawn(Arc::clone(&self).finish_txn(m.transactional_id));
                }
            }
            let b = Arc::clone(&self);
            let _ = blocking(move || b.check_stuck_lso(now)).await;
        }
    }

    /// Reports partitions whose last stable offset is held back by a transaction past its
    /// timeout, or by one the coordinator does not know (a hanging transaction).
    fn check_stuck_lso(&self, now: i64) {
        if self.cluster().is_some() {
            // A partition's transactions are coordinated by other nodes too: this node's
            // coordinator cannot tell a hanging transaction from another coordinator's.
            return;
        }
        let grace = self.txns().check_interval_ms as i64;
        for t in self.all_topics() {
            for p in &t.partitions {
                let open = {
                    let st = p.lock();
                    match st.log.as_ref() {
                        Some(log) => log.producer_state().open_transactions(),
                        None => continue,
                    }
                };
                for (pid, _epoch, first) in open {
                    let stuck = {
                        let c = self.txns().coord();
                        match c.transactional_id_of(pid).and_then(|id| c.get(id)) {
                            None => Some("no transaction known to the coordinator"),
                            Some(m) => match m.state {
                                TxnState::Ongoing
                                    if now.saturating_sub(m.start_ms)
                                        > i64::from(m.timeout_ms) + grace =>
                                {
                                    Some("open past its timeout")
                                }
                                TxnState::Ongoing
                                | TxnState::PrepareCommit
                                | TxnState::PrepareAbort => None,
                                _ if m.partitions.contains(&(p.topic.clone(), p.index)) => None,
                                _ => Some(
                                    "its transaction is complete but no marker was written here",
                                ),
                            },
                        }
                    };
                    if let Some(why) = stuck {
                        let key = (p.topic.clone(), p.index, pid);
                        if lock(&self.txns().lso_stuck_reported).insert(key) {
                            self.txns().lso_stuck_total.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(topic = %p.topic, partition = p.index, producer_id = pid, first_offset = first, reason = why, "last stable offset stuck behind a transaction");
                        }
                    }
                }
            }
        }
    }

    pub fn spawn_txn_tasks(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        crash_after_prepare();
        unsafe_abort_as_commit();
        unsafe_txn_offsets_eager();
        tokio::spawn(Arc::clone(self).txn_timer_loop(stop));
    }

    // ------------------------------------------------------------------ requests

    /// Cluster mode: a producer id from a block the controller allocated (unique across the
    /// cluster), taken before the coordinator's decision because that is not async.
    async fn fresh_producer_id(&self) -> Option<Result<i64, String>> {
        let c = self.cluster()?;
        Some(c.allocate_producer_id().await.map_err(|e| e.to_string()))
    }

    /// The id for the coordinator's `allocate`: the prefetched one in cluster mode, else
    /// the node's own blocks.
    fn take_producer_id(&self, fresh: Option<Result<i64, String>>) -> Result<i64, String> {
        match fresh {
            Some(r) => r,
            None => self.allocate_producer_id().map_err(|e| e.to_string()),
        }
    }

    /// Cluster mode: the answer to a transaction request for a transactional id (or, for
    /// TxnOffsetCommit, a group) this broker does not coordinate; `None` to serve it.
    fn txn_refusal(&self, version: i16, body: &RequestKind) -> Option<ResponseKind> {
        self.cluster()?;
        let code = match body {
            RequestKind::AddPartitionsToTxn(r) => {
                self.txns().owner_error(&r.v3_and_below_transactional_id.0)
            }
            RequestKind::AddOffsetsToTxn(r) => self.txns().owner_error(&r.transactional_id.0),
            RequestKind::EndTxn(r) => self.txns().owner_error(&r.transactional_id.0),
            RequestKind::TxnOffsetCommit(r) => self.groups().owner_error(&r.group_id.0),
            _ => ec::NONE,
        };
        if code == ec::NONE {
            return None;
        }
        let _ = version;
        Some(match body {
            RequestKind::AddPartitionsToTxn(r) => {
                let mut resp = AddPartitionsToTxnResponse::default();
                for t in &r.v3_and_below_topics {
                    let mut tr =
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
                    tr.name = t.name.clone();
                    for p in &t.partitions {
                        let mut pr = add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default();
                        pr.partition_index = *p;
                        pr.partition_error_code = code;
                        tr.results_by_partition.push(pr);
                    }
                    resp.results_by_topic_v3_and_below.push(tr);
                }
                ResponseKind::AddPartitionsToTxn(resp)
            }
            RequestKind::AddOffsetsToTxn(_) => {
                let mut resp = AddOffsetsToTxnResponse::default();
                resp.error_code = code;
                ResponseKind::AddOffsetsToTxn(resp)
            }
            RequestKind::EndTxn(_) => {
                let mut resp = EndTxnResponse::default();
                resp.error_code = code;
                resp.producer_id = ProducerId(-1);
                resp.producer_epoch = -1;
                ResponseKind::EndTxn(resp)
            }
            RequestKind::TxnOffsetCommit(r) => {
                let mut resp = TxnOffsetCommitResponse::default();
                for t in &r.topics {
                    let mut tr =
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                    tr.name = t.name.clone();
                    for p in &t.partitions {
                        let mut pr =
                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                        pr.partition_index = p.partition_index;
                        pr.error_code = code;
                        tr.partitions.push(pr);
                    }
                    resp.topics.push(tr);
                }
                ResponseKind::TxnOffsetCommit(resp)
            }
            _ => return None,
        })
    }

    pub(crate) async fn txn_init_producer_id(
        self: Arc<Self>,
        r: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse {
        let mut resp = InitProducerIdResponse::default();
        resp.producer_id = ProducerId(-1);
        resp.producer_epoch = -1;
        let id = r
            .transactional_id
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let expected =
            (version >= 3 && r.producer_id.0 >= 0).then_some((r.producer_id.0, r.producer_epoch));
        let owner = self.txns().owner_error(&id);
        if owner != ec::NONE {
            resp.error_code = owner;
            return resp;
        }
        let fresh = self.fresh_producer_id().await;
        let b = Arc::clone(&self);
        let timeout_ms = r.transaction_timeout_ms;
        let decided = blocking(move || {
            let mut c = b.txns().coord();
            c.init_producer_id(&id, timeout_ms, expected, timer_ms(), || {
                b.take_producer_id(fresh)
            })
        })
        .await;
        let outcome = match decided {
            None => {
                resp.error_code = ec::COORDINATOR_NOT_AVAILABLE;
                return resp;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                resp.error_code = ec::COORDINATOR_NOT_AVAILABLE;
                return resp;
            }
            Some(Ok(Err(code))) => {
                resp.error_code = fenced_code(code, version, 4);
                return resp;
            }
            Some(Ok(Ok(o))) => o,
        };
        match outcome {
            InitOutcome::Write(t) => match self.persist(&t).await {
                Ok(()) => {
                    resp.producer_id = ProducerId(t.target.producer_id);
                    resp.producer_epoch = t.target.producer_epoch;
                    tracing::debug!(
                        transactional_id = %t.transactional_id(),
                        ?expected,
                        producer_id = t.target.producer_id,
                        producer_epoch = t.target.producer_epoch,
                        "InitProducerId"
                    );
                }
                Err(code) => resp.error_code = code,
            },
            InitOutcome::AbortFirst(t) => {
                if self.persist(&t).await.is_ok() {
                    tracing::info!(transactional_id = %t.transactional_id(), "new producer instance: aborting the open transaction of the previous one");
                    tokio::spawn(Arc::clone(&self).finish_txn(t.transactional_id().to_string()));
                }
                resp.error_code = codes::CONCURRENT_TRANSACTIONS;
            }
        }
        resp
    }

    async fn add_partitions_to_txn(
        self: Arc<Self>,
        r: AddPartitionsToTxnRequest,
        version: i16,
    ) -> AddPartitionsToTxnResponse {
        let id = r.v3_and_below_transactional_id.0.to_string();
        let pid = r.v3_and_below_producer_id.0;
        let epoch = r.v3_and_below_producer_epoch;
        let mut wanted = Vec::new();
        let mut unknown = HashSet::new();
        for t in &r.v3_and_below_topics {
            let name = t.name.0.to_string();
            for p in &t.partitions {
                if !self.partition_exists(&name, *p) || name == TXN_TOPIC {
                    unknown.insert((name.clone(), *p));
                }
                wanted.push((name.clone(), *p));
            }
        }
        let code = if !unknown.is_empty() {
            None
        } else {
            let decided = self
                .txns()
                .coord()
                .add_partitions(&id, pid, epoch, &wanted, timer_ms());
            Some(match decided {
                Err(code) => fenced_code(code, version, 2),
                Ok(None) => ec::NONE,
                Ok(Some(t)) => match self.persist(&t).await {
                    Ok(()) => ec::NONE,
                    Err(code) => code,
                },
            })
        };
        let mut resp = AddPartitionsToTxnResponse::default();
        for t in r.v3_and_below_topics {
            let mut tr = add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
            tr.name = t.name.clone();
            for p in t.partitions {
                let mut pr =
                    add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default();
                pr.partition_index = p;
                pr.partition_error_code = match code {
                    Some(c) => c,
                    None if unknown.contains(&(t.name.0.to_string(), p)) => {
                        ec::UNKNOWN_TOPIC_OR_PARTITION
                    }
                    None => OPERATION_NOT_ATTEMPTED,
                };
                tr.results_by_partition.push(pr);
            }
            resp.results_by_topic_v3_and_below.push(tr);
        }
        resp
    }

    async fn add_offsets_to_txn(
        self: Arc<Self>,
        r: AddOffsetsToTxnRequest,
        version: i16,
    ) -> AddOffsetsToTxnResponse {
        let index = self.groups().partition_of(&r.group_id.0);
        let decided = self.txns().coord().add_partitions(
            &r.transactional_id.0,
            r.producer_id.0,
            r.producer_epoch,
            &[(OFFSETS_TOPIC.to_string(), index)],
            timer_ms(),
        );
        let mut resp = AddOffsetsToTxnResponse::default();
        resp.error_code = match decided {
            Err(code) => fenced_code(code, version, 2),
            Ok(None) => ec::NONE,
            Ok(Some(t)) => match self.persist(&t).await {
                Ok(()) => ec::NONE,
                Err(code) => code,
            },
        };
        resp
    }

    async fn end_txn(self: Arc<Self>, r: EndTxnRequest, version: i16) -> EndTxnResponse {
        let id = r.transactional_id.0.to_string();
        // Transactions version 2 (KIP-890): EndTxn v5 ends with the epoch bumped.
        let bump = version >= 5;
        let fresh = if bump {
            self.fresh_producer_id().await
        } else {
            None
        };
        let b = Arc::clone(&self);
        let id2 = id.clone();
        let decided = blocking(move || {
            b.txns().coord().end_txn(
                holdfast_txn::EndTxn {
                    transactional_id: &id2,
                    producer_id: r.producer_id.0,
                    producer_epoch: r.producer_epoch,
                    commit: r.committed,
                    bump,
                },
                timer_ms(),
                || b.take_producer_id(fresh),
            )
        })
        .await;
        let mut resp = EndTxnResponse::default();
        resp.producer_id = ProducerId(-1);
        resp.producer_epoch = -1;
        resp.error_code = match decided {
            None => ec::COORDINATOR_NOT_AVAILABLE,
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                ec::COORDINATOR_NOT_AVAILABLE
            }
            Some(Ok(Err(code))) => fenced_code(code, version, 2),
            Some(Ok(Ok(EndOutcome::AlreadyDone))) => ec::NONE,
            Some(Ok(Ok(EndOutcome::Prepare(t)))) => match self.persist(&t).await {
                Ok(()) => {
                    if crash_after_prepare() {
                        tracing::error!(transactional_id = %id, "test hook: aborting the process after PrepareCommit/PrepareAbort");
                        std::process::abort();
                    }
                    tokio::spawn(Arc::clone(&self).finish_txn(id.clone()));
                    ec::NONE
                }
                Err(code) => code,
            },
        };
        tracing::debug!(
            transactional_id = %id,
            producer_id = r.producer_id.0,
            producer_epoch = r.producer_epoch,
            commit = r.committed,
            error_code = resp.error_code,
            "EndTxn"
        );
        if bump && resp.error_code == ec::NONE {
            if let Some((pid, epoch)) = self.txns().coord().continuing_producer(&id) {
                resp.producer_id = ProducerId(pid);
                resp.producer_epoch = epoch;
            }
        }
        resp
    }

    /// Transactions version 2: a partition is added to the transaction by the write itself
    /// (Produce v12+, TxnOffsetCommit v5+) instead of AddPartitionsToTxn/AddOffsetsToTxn.
    pub(crate) async fn add_partitions_implicitly(
        self: &Arc<Self>,
        transactional_id: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), i16> {
        let decided = self.txns().coord().add_partitions(
            transactional_id,
            pid,
            epoch,
            partitions,
            timer_ms(),
        );
        match decided {
            Err(codes::PRODUCER_FENCED) => Err(codes::INVALID_PRODUCER_EPOCH),
            Err(code) => Err(code),
            Ok(None) => Ok(()),
            Ok(Some(t)) => self.persist(&t).await,
        }
    }

    async fn txn_offset_commit(
        self: Arc<Self>,
        r: TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        let group = r.group_id.0.to_string();
        let pid = r.producer_id.0;
        let epoch = r.producer_epoch;
        let index = self.groups().partition_of(&group);
        let now = timer_ms();
        let implicit = if version >= 5 {
            self.add_partitions_implicitly(
                &r.transactional_id.0,
                pid,
                epoch,
                &[(OFFSETS_TOPIC.to_string(), index)],
            )
            .await
        } else {
            Ok(())
        };
        // The group's offsets partition must be in the transaction (AddOffsetsToTxn).
        // Cluster mode: the transaction coordinator is usually another node; not verified
        // against it (Kafka before KIP-890 did not either).
        let verified = implicit.and_then(|()| {
            if self.cluster().is_some() {
                Ok(())
            } else {
                self.txns().verify(pid, epoch, OFFSETS_TOPIC, index)
            }
        });
        let mut code = match verified {
            Ok(()) => ec::NONE,
            Err(codes::INVALID_PRODUCER_EPOCH) => fenced_code(codes::PRODUCER_FENCED, version, 3),
            Err(c) => c,
        };
        // KIP-447: a consumer-group member's generation is checked like OffsetCommit's.
        if code == ec::NONE && version >= 3 && !r.member_id.is_empty() {
            let check = self.groups().with(|c| {
                c.check_commit(
                    &group,
                    r.generation_id,
                    &r.member_id,
                    r.group_instance_id.as_deref(),
                    // Not OffsetCommit's version: v9 rules (member epochs, GROUP_ID_NOT_FOUND)
                    // apply to transactional commits of members too.
                    i16::MAX,
                    now,
                )
            });
            if let holdfast_groups::CommitCheck::Error(e) = check {
                code = e;
            }
        }
        let mut offsets = Vec::new();
        let mut unknown = HashSet::new();
        for t in &r.topics {
            let name = t.name.0.to_string();
            for p in &t.partitions {
                if !self.partition_exists(&name, p.partition_index) {
                    unknown.insert((name.clone(), p.partition_index));
                    continue;
                }
                offsets.push(PendingOffset {
                    group: group.clone(),
                    topic: name.clone(),
                    partition: p.partition_index,
                    value: OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 2 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p.committed_metadata.as_deref().unwrap_or("").to_string(),
                        commit_timestamp: now,
                    },
                });
            }
        }
        if code == ec::NONE && !offsets.is_empty() {
            code = match self.partition(OFFSETS_TOPIC, index) {
                None => ec::COORDINATOR_NOT_AVAILABLE,
                Some(p) => {
                    let keys: Vec<(Vec<u8>, Vec<u8>)> = offsets
                        .iter()
                        .map(|o| {
                            (
                                group_records::offset_key(&o.group, &o.topic, o.partition),
                                group_records::offset_value(&o.value),
                            )
                        })
                        .collect();
                    let recs: Vec<Record<'_>> = keys
                        .iter()
                        .map(|(k, v)| Record {
                            key: Some(k),
                            value: Some(v),
                            timestamp_ms: now,
                        })
                        .collect();
                    let data = batch(
                        &recs,
                        BatchOptions {
                            producer_id: pid,
                            producer_epoch: epoch,
                            base_sequence: -1,
                            transactional: true,
                            ..BatchOptions::default()
                        },
                    );
                    // Registered before the write: a marker that follows the write must
                    // find them.
                    lock(&self.txns().pending_offsets)
                        .entry(pid)
                        .or_default()
                        .extend(offsets.iter().cloned());
                    match self.append_internal(&p, data).await {
                        Ok(()) if unsafe_txn_offsets_eager() => {
                            let offs = offsets
                                .iter()
                                .map(|o| (o.topic.clone(), o.partition, o.value.clone()))
                                .collect();
                            self.groups().with(|c| c.apply_commit(&group, offs));
                            ec::NONE
                        }
                        Ok(()) => ec::NONE,
                        Err(c) => c,
                    }
                }
            };
        }
        let mut resp = TxnOffsetCommitResponse::default();
        for t in r.topics {
            let mut tr = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            for p in t.partitions {
                let mut pr =
                    txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = if unknown.contains(&(t.name.0.to_string(), p.partition_index)) {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    code
                };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn describe_transactions(
        &self,
        r: DescribeTransactionsRequest,
    ) -> DescribeTransactionsResponse {
        let c = self.txns().coord();
        let mut resp = DescribeTransactionsResponse::default();
        for id in r.transactional_ids {
            let mut s = describe_transactions_response::TransactionState::default();
            s.transactional_id = id.clone();
            // Cluster mode: only the id's coordinator answers (NOT_COORDINATOR elsewhere).
            let owner = self.txns().owner_error(&id.0);
            if owner != ec::NONE {
                s.error_code = owner;
                resp.transaction_states.push(s);
                continue;
            }
            match c.get(&id.0).filter(|m| m.producer_id >= 0) {
                None => s.error_code = codes::TRANSACTIONAL_ID_NOT_FOUND,
                Some(m) => {
                    s.transaction_state = sb(m.state.name());
                    s.transaction_timeout_ms = m.timeout_ms;
                    s.transaction_start_time_ms = m.start_ms;
                    s.producer_id = ProducerId(m.producer_id);
                    s.producer_epoch = m.producer_epoch;
                    let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
                    for (t, p) in &m.partitions {
                        match topics.last_mut() {
                            Some(x) if x.topic.0.as_str() == t => x.partitions.push(*p),
                            _ => {
                                let mut x = describe_transactions_response::TopicData::default();
                                x.topic = TopicName(sb(t));
                                x.partitions = vec![*p];
                                topics.push(x);
                            }
                        }
                    }
                    s.topics = topics;
                }
            }
            resp.transaction_states.push(s);
        }
        resp
    }

    fn list_transactions(
        &self,
        r: ListTransactionsRequest,
        version: i16,
    ) -> ListTransactionsResponse {
        let c = self.txns().coord();
        let now = timer_ms();
        let known = [
            "Empty",
            "Ongoing",
            "PrepareCommit",
            "PrepareAbort",
            "CompleteCommit",
            "CompleteAbort",
            "Dead",
            "PrepareEpochFence",
        ];
        let mut resp = ListTransactionsResponse::default();
        resp.unknown_state_filters = r
            .state_filters
            .iter()
            .filter(|s| !known.contains(&s.as_str()))
            .cloned()
            .collect();
        let mut all: Vec<&TxnMeta> = c
            .all()
            .filter(|m| m.producer_id >= 0)
            .filter(|m| {
                r.state_filters.is_empty()
                    || r.state_filters.iter().any(|s| s.as_str() == m.state.name())
            })
            .filter(|m| {
                r.producer_id_filters.is_empty()
                    || r.producer_id_filters.iter().any(|p| p.0 == m.producer_id)
            })
            .filter(|m| {
                // v1 (KIP-994): only transactions running longer than the filter.
                version < 1
                    || r.duration_filter < 0
                    || (m.state == TxnState::Ongoing
                        && now.saturating_sub(m.start_ms) > r.duration_filter)
            })
            .collect();
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        for m in all {
            let mut s = list_transactions_response::TransactionState::default();
            s.transactional_id = TransactionalId(sb(&m.transactional_id));
            s.producer_id = ProducerId(m.producer_id);
            s.transaction_state = sb(m.state.name());
            resp.transaction_states.push(s);
        }
        resp
    }

    fn describe_producers(&self, r: DescribeProducersRequest) -> DescribeProducersResponse {
        let mut resp = DescribeProducersResponse::default();
        for t in r.topics {
            let mut tr = describe_producers_response::TopicResponse::default();
            tr.name = t.name.clone();
            for index in t.partition_indexes {
                let mut pr = describe_producers_response::PartitionResponse::default();
                pr.partition_index = index;
                match self.partition(&t.name.0, index) {
                    None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let st = p.lock();
                        if let Some(log) = st.log.as_ref() {
                            let mut producers: Vec<_> = log.producer_state().iter().collect();
                            producers.sort_by_key(|(id, _)| **id);
                            for (id, e) in producers {
                                let mut ps = describe_producers_response::ProducerState::default();
                                ps.producer_id = ProducerId(*id);
                                ps.producer_epoch = i32::from(e.epoch);
                                ps.last_sequence =
                                    e.batches.back().map(|b| b.last_seq).unwrap_or(-1);
                                ps.last_timestamp = e.last_append_ms;
                                ps.coordinator_epoch = -1;
                                ps.current_txn_start_offset = e.txn_first_offset.unwrap_or(-1);
                                pr.active_producers.push(ps);
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// Handles a transaction API request.
    pub async fn handle_txn(self: &Arc<Self>, version: i16, body: RequestKind) -> Reply {
        if let Some(refused) = self.txn_refusal(version, &body) {
            return Reply::Now(Some(refused));
        }
        let b = Arc::clone(self);
        match body {
            RequestKind::AddPartitionsToTxn(r) => Reply::Later(Box::pin(async move {
                Some(ResponseKind::AddPartitionsToTxn(
                    b.add_partitions_to_txn(r, version).await,
                ))
            })),
            RequestKind::AddOffsetsToTxn(r) => Reply::Later(Box::pin(async move {
                Some(ResponseKind::AddOffsetsToTxn(
                    b.add_offsets_to_txn(r, version).await,
                ))
            })),
            RequestKind::EndTxn(r) => Reply::Later(Box::pin(async move {
                Some(ResponseKind::EndTxn(b.end_txn(r, version).await))
            })),
            RequestKind::TxnOffsetCommit(r) => Reply::Later(Box::pin(async move {
                Some(ResponseKind::TxnOffsetCommit(
                    b.txn_offset_commit(r, version).await,
                ))
            })),
            RequestKind::WriteTxnMarkers(r) => Reply::Later(Box::pin(async move {
                Some(ResponseKind::WriteTxnMarkers(b.write_txn_markers(r).await))
            })),
            RequestKind::DescribeTransactions(r) => Reply::Now(Some(
                ResponseKind::DescribeTransactions(self.describe_transactions(r)),
            )),
            RequestKind::ListTransactions(r) => Reply::Now(Some(ResponseKind::ListTransactions(
                self.list_transactions(r, version),
            ))),
            RequestKind::DescribeProducers(r) => Reply::Now(
                blocking(move || b.describe_producers(r))
                    .await
                    .map(ResponseKind::DescribeProducers),
            ),
            _ => Reply::Now(None),
        }
    }
}

/// Reads every record of one partition of an internal topic below `hw`, in order (blocking;
/// holds the partition lock).
pub(crate) fn scan_internal_partition(
    name: &str,
    p: &Partition,
    hw: i64,
    f: &mut impl FnMut(&holdfast_log::batch::BatchHeader, Option<&[u8]>, Option<&[u8]>),
) -> Result<(), String> {
    let mut st = p.lock();
    let Some(log) = st.log.as_mut() else {
        return Ok(());
    };
    let mut offset = log.log_start_offset();

    // Bounded: every pass moves `offset` forward or stops.
    while offset < hw {
        let slice = log
            .read(offset, 1 << 20, hw, true)
            .map_err(|e| format!("reading {name}-{}: {e}", p.index))?;
        if slice.is_empty() {
            break;
        }
        let bytes = slice
            .read_bytes()
            .map_err(|e| format!("reading {name}-{}: {e}", p.index))?;
        let mut next = offset;
        for fr in holdfast_log::batch::frames(&bytes) {
            let (h, b) = fr.map_err(|e| format!("{name}-{}: {e}", p.index))?;
            next = h.last_offset() + 1;
            holdfast_log::batch::for_each_stored_record(&h, b, |r| {
                f(&h, r.key, r.value);
                Ok(())
            })
            .map_err(|e| format!("{name}-{}: {e}", p.index))?;
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(())
}
