//! Prometheus metrics (text exposition format 0.0.4), served by [`crate::http`].
//!
//! Counters that hot paths bump (requests, bytes per topic, loss-ledger events) live in one
//! process-wide [`Registry`] of atomics; everything else (log sizes, offsets, group lag,
//! fsync latency from the log crate's flusher) is read when scraped. Names and the exact
//! definition of each metric are in docs/operability.md.
//!
//! Cardinality: per API (only APIs that were called), per topic, per partition for log
//! gauges, per group and partition for lag. No per-client or per-connection labels.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use holdfast_log::ROUND_LATENCY_BOUNDS_US;

use crate::state::{now_ms, Broker};

/// Upper bounds (seconds) of the request latency histogram.
const REQUEST_BOUNDS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const MAX_API_KEY: usize = 128;

#[derive(Default)]
struct ApiStats {
    count: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; REQUEST_BOUNDS_S.len()],
}

#[derive(Default, Clone, Copy)]
struct TopicCounters {
    bytes_in: u64,
    bytes_out: u64,
}

/// Process-wide counters.
pub struct Registry {
    apis: Vec<ApiStats>,
    topics: Mutex<HashMap<String, TopicCounters>>,
    /// reason → (events, records lost).
    ledger: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        apis: (0..MAX_API_KEY).map(|_| ApiStats::default()).collect(),
        topics: Mutex::new(HashMap::new()),
        ledger: Mutex::new(BTreeMap::new()),
    })
}

/// A request of `api_key` was answered `took` after it was read.
pub fn request_done(api_key: i16, took: Duration) {
    let Some(s) = usize::try_from(api_key)
        .ok()
        .and_then(|k| registry().apis.get(k))
    else {
        return;
    };
    s.count.fetch_add(1, Ordering::Relaxed);
    s.sum_us.fetch_add(
        took.as_micros().min(u128::from(u64::MAX)) as u64,
        Ordering::Relaxed,
    );
    let secs = took.as_secs_f64();
    for (i, b) in REQUEST_BOUNDS_S.iter().enumerate() {
        if secs <= *b {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Record bytes appended to `topic` (produce).
pub fn bytes_in(topic: &str, n: usize) {
    let mut t = lock(&registry().topics);
    match t.get_mut(topic) {
        Some(c) => c.bytes_in += n as u64,
        None => {
            t.insert(
                topic.to_string(),
                TopicCounters {
                    bytes_in: n as u64,
                    bytes_out: 0,
                },
            );
        }
    }
}

/// Record bytes served from `topic` (fetch).
pub fn bytes_out(topic: &str, n: usize) {
    if n == 0 {
        return;
    }
    let mut t = lock(&registry().topics);
    match t.get_mut(topic) {
        Some(c) => c.bytes_out += n as u64,
        None => {
            t.insert(
                topic.to_string(),
                TopicCounters {
                    bytes_in: 0,
                    bytes_out: n as u64,
                },
            );
        }
    }
}

/// A loss-ledger event (see [`crate::ledger`]).
pub fn ledger_event(reason: &'static str, records: u64) {
    let mut l = lock(&registry().ledger);
    let e = l.entry(reason).or_default();
    e.0 += 1;
    e.1 += records;
}

/// Label value escaping of the exposition format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn api_name(key: usize) -> String {
    match i16::try_from(key)
        .ok()
        .and_then(|k| kafka_protocol::messages::ApiKey::try_from(k).ok())
    {
        Some(k) => format!("{k:?}"),
        None => format!("api{key}"),
    }
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}

/// A per-partition gauge: name, help, value (None: not emitted for this partition).
type Gauge = (&'static str, &'static str, fn(&PartSample) -> Option<f64>);

/// One partition as scraped.
struct PartSample {
    topic: String,
    partition: i32,
    size_bytes: u64,
    segments: usize,
    log_start: i64,
    log_end: i64,
    dirty_bytes: Option<u64>,
    offline: bool,
}

/// Base timestamp of the batch holding `offset` (blocking read of one batch header).
fn batch_timestamp(log: &mut holdfast_log::Log, offset: i64) -> Option<i64> {
    let slice = log.read(offset, 64, i64::MAX, true).ok()?;
    let file = slice.file.as_ref()?;
    let mut h = [0u8; holdfast_log::batch::HEADER_SIZE];
    if slice.len < h.len() {
        return None;
    }
    file.read_exact_at(&mut h, slice.position).ok()?;
    holdfast_log::batch::BatchHeader::parse(&h).map(|b| b.base_timestamp)
}

/// Renders every metric (blocking: takes each partition lock briefly).
pub fn render(broker: &Broker) -> String {
    let now = now_ms();
    let mut o = Out(String::with_capacity(16 * 1024));
    let committed = broker.groups().committed_offsets();
    // Partitions with a group's committed offset behind the end: their lag's age needs the
    // timestamp of the batch at the committed offset.
    let mut wanted_ts: HashMap<(String, i32), Vec<i64>> = HashMap::new();
    for (_, t, p, off) in &committed {
        wanted_ts.entry((t.clone(), *p)).or_default().push(*off);
    }
    let mut parts = Vec::new();
    let mut ts_at: HashMap<(String, i32, i64), i64> = HashMap::new();
    let mut under_min_isr = 0u64;
    for t in broker.all_topics() {
        let min_isr: i64 = t
            .meta
            .config
            .get("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let compacted = t.log_config.cleanup_policy.compact;
        for p in &t.partitions {
            let mut st = p.lock();
            let sample = match st.log.as_mut() {
                Some(log) => {
                    if let Some(offs) = wanted_ts.get(&(p.topic.clone(), p.index)) {
                        for off in offs {
                            if *off < log.log_end_offset() && *off >= log.log_start_offset() {
                                if let Some(ts) = batch_timestamp(log, *off) {
                                    ts_at.insert((p.topic.clone(), p.index, *off), ts);
                                }
                            }
                        }
                    }
                    PartSample {
                        topic: p.topic.clone(),
                        partition: p.index,
                        size_bytes: log.size_bytes(),
                        segments: log.segment_count(),
                        log_start: log.log_start_offset(),
                        log_end: p.high_watermark(),
                        dirty_bytes: compacted.then(|| log.compaction_dirty_bytes()),
                        offline: log.corruption().is_some(),
                    }
                }
                None => PartSample {
                    topic: p.topic.clone(),
                    partition: p.index,
                    size_bytes: 0,
                    segments: 0,
                    log_start: p.log_start_offset(),
                    log_end: p.high_watermark(),
                    dirty_bytes: None,
                    offline: true,
                },
            };
            drop(st);
            // One replica: the ISR is the leader alone unless the partition is offline.
            let isr = if sample.offline { 0 } else { 1 };
            if isr < min_isr {
                under_min_isr += 1;
            }
            parts.push(sample);
        }
    }
    let offline = parts.iter().filter(|p| p.offline).count();

    o.head(
        "holdfast_active_controller_count",
        "gauge",
        "1 on the broker that is the active controller (a single node always is).",
    );
    o.sample("holdfast_active_controller_count", &[], 1);
    o.head(
        "holdfast_under_replicated_partitions",
        "gauge",
        "Partitions led here whose ISR is smaller than their replica set.",
    );
    o.sample("holdfast_under_replicated_partitions", &[], 0);
    o.head(
        "holdfast_under_min_isr_partitions",
        "gauge",
        "Partitions whose ISR is smaller than min.insync.replicas (acks=all writes fail).",
    );
    o.sample("holdfast_under_min_isr_partitions", &[], under_min_isr);
    o.head(
        "holdfast_offline_partitions",
        "gauge",
        "Partitions that cannot serve: fenced after corruption or a failed fsync, or closed.",
    );
    o.sample("holdfast_offline_partitions", &[], offline);
    o.head(
        "holdfast_isr_shrinks_total",
        "counter",
        "ISR shrinks (always 0 until replication).",
    );
    o.sample("holdfast_isr_shrinks_total", &[], 0);
    o.head(
        "holdfast_isr_expands_total",
        "counter",
        "ISR expansions (always 0 until replication).",
    );
    o.sample("holdfast_isr_expands_total", &[], 0);

    // Requests.
    o.head(
        "holdfast_requests_total",
        "counter",
        "Requests answered, per API.",
    );
    let reg = registry();
    let used: Vec<usize> = (0..MAX_API_KEY)
        .filter(|k| reg.apis[*k].count.load(Ordering::Relaxed) > 0)
        .collect();
    for k in &used {
        let n = api_name(*k);
        o.sample(
            "holdfast_requests_total",
            &[("api", &n)],
            reg.apis[*k].count.load(Ordering::Relaxed),
        );
    }
    o.head(
        "holdfast_request_duration_seconds",
        "histogram",
        "Time from reading a request to its response being ready, per API (long polls included).",
    );
    for k in &used {
        let n = api_name(*k);
        let s = &reg.apis[*k];
        let count = s.count.load(Ordering::Relaxed);
        for (i, b) in REQUEST_BOUNDS_S.iter().enumerate() {
            o.sample(
                "holdfast_request_duration_seconds_bucket",
                &[("api", &n), ("le", &b.to_string())],
                s.buckets[i].load(Ordering::Relaxed),
            );
        }
        o.sample(
            "holdfast_request_duration_seconds_bucket",
            &[("api", &n), ("le", "+Inf")],
            count,
        );
        o.sample(
            "holdfast_request_duration_seconds_sum",
            &[("api", &n)],
            s.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        o.sample(
            "holdfast_request_duration_seconds_count",
            &[("api", &n)],
            count,
        );
    }

    // Bytes per topic (topics that still exist).
    let topics: BTreeMap<String, TopicCounters> = {
        let mut t = lock(&reg.topics);
        t.retain(|name, _| broker.topic(name).is_some());
        t.iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    o.head(
        "holdfast_topic_bytes_in_total",
        "counter",
        "Record batch bytes appended by produce requests, per topic.",
    );
    for (t, c) in &topics {
        o.sample("holdfast_topic_bytes_in_total", &[("topic", t)], c.bytes_in);
    }
    o.head(
        "holdfast_topic_bytes_out_total",
        "counter",
        "Record batch bytes returned by fetch requests, per topic.",
    );
    for (t, c) in &topics {
        o.sample(
            "holdfast_topic_bytes_out_total",
            &[("topic", t)],
            c.bytes_out,
        );
    }

    // Logs.
    let gauges: [Gauge; 5] = [
        (
            "holdfast_log_size_bytes",
            "Bytes of segment files of the partition.",
            |p| Some(p.size_bytes as f64),
        ),
        (
            "holdfast_log_segments",
            "Segment files of the partition.",
            |p| Some(p.segments as f64),
        ),
        (
            "holdfast_log_start_offset",
            "First offset still in the log (retention and DeleteRecords move it).",
            |p| Some(p.log_start as f64),
        ),
        (
            "holdfast_log_end_offset",
            "High watermark: the end of what consumers can read.",
            |p| Some(p.log_end as f64),
        ),
        (
            "holdfast_compaction_dirty_bytes",
            "Bytes not yet compacted (compacted topics only): the cleaner's backlog.",
            |p| p.dirty_bytes.map(|b| b as f64),
        ),
    ];
    for (name, help, get) in gauges {
        o.head(name, "gauge", help);
        for p in &parts {
            if let Some(v) = get(p) {
                let part = p.partition.to_string();
                o.sample(name, &[("topic", &p.topic), ("partition", &part)], v);
            }
        }
    }

    // fsync rounds (the log crate's flusher).
    let fs = broker.flush_stats();
    o.head(
        "holdfast_fsync_round_duration_seconds",
        "histogram",
        "Wall time of each group-commit round's fsyncs (every file with pending appends, concurrently).",
    );
    for (i, b) in ROUND_LATENCY_BOUNDS_US.iter().enumerate() {
        let le = (*b as f64 / 1e6).to_string();
        o.sample(
            "holdfast_fsync_round_duration_seconds_bucket",
            &[("le", &le)],
            fs.round_latency_buckets[i].load(Ordering::Relaxed),
        );
    }
    let timed = fs.rounds_timed.load(Ordering::Relaxed);
    o.sample(
        "holdfast_fsync_round_duration_seconds_bucket",
        &[("le", "+Inf")],
        timed,
    );
    o.sample(
        "holdfast_fsync_round_duration_seconds_sum",
        &[],
        fs.round_latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    o.sample("holdfast_fsync_round_duration_seconds_count", &[], timed);
    o.head(
        "holdfast_fsyncs_total",
        "counter",
        "File fsyncs issued by the flusher.",
    );
    o.sample(
        "holdfast_fsyncs_total",
        &[],
        fs.fsyncs.load(Ordering::Relaxed),
    );

    // Consumer group lag.
    let by_tp: HashMap<(String, i32), &PartSample> = parts
        .iter()
        .map(|p| ((p.topic.clone(), p.partition), p))
        .collect();
    let mut lag_rows = Vec::new();
    for (g, t, p, off) in &committed {
        let Some(ps) = by_tp.get(&(t.clone(), *p)) else {
            continue;
        };
        let lag = (ps.log_end - off).max(0);
        let age_s = if lag == 0 {
            0.0
        } else {
            ts_at
                .get(&(t.clone(), *p, *off))
                .map(|ts| ((now - ts).max(0)) as f64 / 1000.0)
                .unwrap_or(f64::NAN)
        };
        lag_rows.push((
            g,
            t,
            *p,
            lag,
            age_s,
            lag_retention_ratio(*off, ps.log_start, ps.log_end),
        ));
    }
    lag_rows.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    o.head(
        "holdfast_group_lag_records",
        "gauge",
        "Records between a group's committed offset and the high watermark.",
    );
    for (g, t, p, lag, _, _) in &lag_rows {
        let ps = p.to_string();
        o.sample(
            "holdfast_group_lag_records",
            &[("group", g), ("topic", t), ("partition", &ps)],
            lag,
        );
    }
    o.head(
        "holdfast_group_lag_seconds",
        "gauge",
        "Age of the group's next unread record (timestamp of the batch at the committed offset); 0 when caught up; NaN when it is already deleted.",
    );
    for (g, t, p, _, age, _) in &lag_rows {
        let ps = p.to_string();
        o.sample(
            "holdfast_group_lag_seconds",
            &[("group", g), ("topic", t), ("partition", &ps)],
            age,
        );
    }
    o.head(
        "holdfast_group_lag_retention_ratio",
        "gauge",
        "(high watermark - committed offset) / (high watermark - log start offset): the fraction of the retained log the group has not read. At 1 the next retention deletion removes records the group never saw; above 1 it already has.",
    );
    for (g, t, p, _, _, r) in &lag_rows {
        let ps = p.to_string();
        o.sample(
            "holdfast_group_lag_retention_ratio",
            &[("group", g), ("topic", t), ("partition", &ps)],
            r,
        );
    }

    // Loss ledger.
    let ledger = lock(&reg.ledger).clone();
    o.head(
        "holdfast_loss_events_total",
        "counter",
        "Loss-ledger events (data lost or possibly lost), per reason; listed by `holdfast cluster events`.",
    );
    for reason in crate::ledger::REASONS {
        let (n, _) = ledger.get(reason).copied().unwrap_or_default();
        o.sample("holdfast_loss_events_total", &[("reason", reason)], n);
    }
    o.head(
        "holdfast_loss_records_total",
        "counter",
        "Records counted in loss-ledger events, per reason (records a group never saw, records skipped or discarded).",
    );
    for reason in crate::ledger::REASONS {
        let (_, r) = ledger.get(reason).copied().unwrap_or_default();
        o.sample("holdfast_loss_records_total", &[("reason", reason)], r);
    }

    // Transactions.
    o.head(
        "holdfast_transactions",
        "gauge",
        "Transactional ids known to the coordinator, by state.",
    );
    for (state, n) in broker.txns().count_by_state() {
        o.sample("holdfast_transactions", &[("state", state)], n);
    }
    o.head(
        "holdfast_txn_lso_stuck_total",
        "counter",
        "Times a partition's last stable offset was found held by a transaction past its timeout or unknown to the coordinator (a hanging transaction).",
    );
    o.sample(
        "holdfast_txn_lso_stuck_total",
        &[],
        broker
            .txns()
            .lso_stuck_total
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    o.0
}

/// The fraction of the retained log a group has not read: (end − committed) / (end − start).
/// 0 when caught up; 1 when the committed offset is the log start (the next retention
/// deletion takes unread records); above 1 when it is below the log start (already lost).
/// An empty retained log with the group behind its end counts as 1.
pub fn lag_retention_ratio(committed: i64, log_start: i64, log_end: i64) -> f64 {
    let lag = (log_end - committed).max(0);
    if lag == 0 {
        return 0.0;
    }
    let retained = log_end - log_start;
    if retained <= 0 {
        return 1.0;
    }
    lag as f64 / retained as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ratio_edges() {
        assert_eq!(lag_retention_ratio(100, 0, 100), 0.0);
        assert_eq!(lag_retention_ratio(50, 0, 100), 0.5);
        assert_eq!(lag_retention_ratio(0, 0, 100), 1.0);
        assert_eq!(lag_retention_ratio(10, 20, 100), 1.125);
        assert_eq!(lag_retention_ratio(5, 10, 10), 1.0);
    }
}
