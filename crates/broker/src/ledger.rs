//! The loss ledger: every event where data is or may be lost is counted in a metric
//! (`holdfast_loss_events_total{reason}`), logged (tracing, WARN), and appended durably to
//! the internal topic `__holdfast_events` as a JSON record, so `holdfast cluster events` and
//! any Kafka consumer can list it, and it will replicate with the cluster.
//!
//! Hooks call [`record`] from wherever the event happens (retention in `Broker::tick`, fetch,
//! produce, log recovery); events queue in memory (bounded) and [`flush`] appends them from
//! the maintenance tick (every 200 ms), waiting for the fsync under the topic's default
//! policy. The value layout is in docs/format.md.
//!
//! The queue and the counters are process-wide (one broker per process, as `holdfast
//! serve` runs it): in a process hosting several brokers, whichever ticks first stores
//! every broker's events.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::state::{now_ms, Broker};

/// The internal topic holding the ledger (created on the first event).
pub const EVENTS_TOPIC: &str = "__holdfast_events";

/// Retention deleted records a consumer group had not consumed yet.
pub const RETENTION_UNCONSUMED: &str = "retention_unconsumed";
/// A fetch asked for an offset below the log start: the consumer fell off retention and its
/// client resets (auto.offset.reset), skipping at least `records`.
pub const FETCH_BELOW_LOG_START: &str = "fetch_below_log_start";
/// Records discarded by a truncation (a torn or corrupt unflushed tail cut on recovery).
pub const TRUNCATION: &str = "truncation";
/// A produced batch refused as corrupt (CRC or framing): the producer's data was not stored.
pub const CORRUPT_BATCH: &str = "corrupt_batch";
/// A produce refused because the producer was fenced (stale epoch): its batch was not stored.
pub const PRODUCER_FENCED: &str = "producer_fenced";

/// Cluster mode: a follower truncated its log below its high watermark to follow a new leader
/// (never after a clean election; an unclean one, or a replica that lost fsynced data).
/// Not in `REASONS` (no pre-registered metric series on single nodes).
pub const REPLICA_TRUNCATION: &str = "replica_truncation";

/// Cluster mode: a leader was elected from outside the ISR and ELR (ElectLeaders UNCLEAN, or
/// `unclean.leader.election.enable=true`): what only the old ISR had is lost. Recorded by the
/// controller that decided it. Not in `REASONS` either.
pub const UNCLEAN_ELECTION: &str = "unclean_election";

pub const REASONS: [&str; 5] = [
    RETENTION_UNCONSUMED,
    FETCH_BELOW_LOG_START,
    TRUNCATION,
    CORRUPT_BATCH,
    PRODUCER_FENCED,
];

/// Events waiting to be appended; beyond this, events are still counted and logged but
/// only the count of dropped ones is appended.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time_ms: i64,
    pub reason: &'static str,
    pub topic: String,
    pub partition: i32,
    /// First offset concerned (−1 when none was assigned, e.g. a refused batch).
    pub from_offset: i64,
    /// One past the last offset concerned (−1 when unknown).
    pub to_offset: i64,
    /// Records lost or skipped (0 when unknown, e.g. a truncation counted in bytes).
    pub records: u64,
    /// The consumer group concerned, if any.
    pub group: Option<String>,
    pub detail: String,
}

struct Pending {
    events: Vec<Event>,
    dropped: u64,
    /// (topic, partition, offset) of fetch-below-start events already recorded: a client
    /// retrying the same offset is one event.
    seen_fetches: HashSet<(String, i32, i64)>,
}

fn pending() -> &'static Mutex<Pending> {
    static P: OnceLock<Mutex<Pending>> = OnceLock::new();
    P.get_or_init(|| {
        Mutex::new(Pending {
            events: Vec::new(),
            dropped: 0,
            seen_fetches: HashSet::new(),
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static APPENDED: AtomicU64 = AtomicU64::new(0);

/// Counts, logs and queues an event.
pub fn record(ev: Event) {
    if ev.topic == EVENTS_TOPIC {
        return;
    }
    crate::metrics::ledger_event(ev.reason, ev.records);
    tracing::warn!(
        reason = ev.reason,
        topic = %ev.topic,
        partition = ev.partition,
        from_offset = ev.from_offset,
        to_offset = ev.to_offset,
        records = ev.records,
        group = ev.group.as_deref().unwrap_or(""),
        detail = %ev.detail,
        "data loss recorded"
    );
    let mut p = lock(pending());
    if p.events.len() >= MAX_PENDING {
        p.dropped += 1;
    } else {
        p.events.push(ev);
    }
}

/// A follower cut `[to, from)` of `topic`/`partition`, below its high watermark `hw`.
pub fn replica_truncation(topic: &str, partition: i32, from: i64, to: i64, hw: i64, leader: i32) {
    record(Event {
        time_ms: now_ms(),
        reason: REPLICA_TRUNCATION,
        topic: topic.to_string(),
        partition,
        from_offset: to,
        to_offset: hw.min(from),
        records: 0,
        group: None,
        detail: format!(
            "follower log truncated from {from} to {to} below its high watermark {hw} to follow leader {leader}"
        ),
    });
}

/// A fetch for `offset` below `log_start` of `topic`/`partition`.
pub fn fetch_below_log_start(topic: &str, partition: i32, offset: i64, log_start: i64) {
    {
        let mut p = lock(pending());
        if p.seen_fetches.len() >= 4096 {
            p.seen_fetches.clear();
        }
        if !p
            .seen_fetches
            .insert((topic.to_string(), partition, offset))
        {
            return;
        }
    }
    record(Event {
        time_ms: now_ms(),
        reason: FETCH_BELOW_LOG_START,
        topic: topic.to_string(),
        partition,
        from_offset: offset,
        to_offset: log_start,
        records: (log_start - offset).max(0) as u64,
        group: None,
        detail: format!(
            "fetch at offset {offset} below the log start {log_start}: the consumer resets and skips at least {} records",
            log_start - offset
        ),
    });
}

/// A produce refused with Kafka error `code`; records a ledger event when the refusal loses
/// the producer's data (corrupt batch, fenced producer).
pub fn produce_refused(topic: &str, partition: i32, code: i16, batch: &[u8], detail: &str) {
    let reason = match code {
        2 => CORRUPT_BATCH,
        47 | 90 => PRODUCER_FENCED,
        _ => return,
    };
    let records = holdfast_log::batch::BatchHeader::parse(batch)
        .map(|h| h.records_count.max(0) as u64)
        .unwrap_or(0);
    record(Event {
        time_ms: now_ms(),
        reason,
        topic: topic.to_string(),
        partition,
        from_offset: -1,
        to_offset: -1,
        records,
        group: None,
        detail: detail.to_string(),
    });
}

/// Retention moved the log start of `topic`/`partition` from `old_start` to `new_start`:
/// one event per group whose committed offset was below `new_start`, with the records it
/// never saw.
pub fn retention_deleted(
    broker: &Broker,
    topic: &str,
    partition: i32,
    old_start: i64,
    new_start: i64,
) {
    if new_start <= old_start {
        return;
    }
    for (group, t, p, committed) in broker.groups().committed_offsets() {
        if t != topic || p != partition || committed >= new_start {
            continue;
        }
        let from = committed.max(old_start);
        record(Event {
            time_ms: now_ms(),
            reason: RETENTION_UNCONSUMED,
            topic: topic.to_string(),
            partition,
            from_offset: from,
            to_offset: new_start,
            records: (new_start - from) as u64,
            group: Some(group.clone()),
            detail: format!(
                "retention deleted offsets {from}..{new_start} that group {group} (committed offset {committed}) never consumed"
            ),
        });
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The JSON value of an event record (docs/format.md, "__holdfast_events").
pub fn to_json(ev: &Event) -> String {
    let mut s = String::from("{\"version\":1,\"time_ms\":");
    s.push_str(&ev.time_ms.to_string());
    s.push_str(",\"reason\":");
    json_str(&mut s, ev.reason);
    s.push_str(",\"topic\":");
    json_str(&mut s, &ev.topic);
    s.push_str(&format!(
        ",\"partition\":{},\"from_offset\":{},\"to_offset\":{},\"records\":{},\"group\":",
        ev.partition, ev.from_offset, ev.to_offset, ev.records
    ));
    match &ev.group {
        Some(g) => json_str(&mut s, g),
        None => s.push_str("null"),
    }
    s.push_str(",\"detail\":");
    json_str(&mut s, &ev.detail);
    s.push('}');
    s
}

/// Appends queued events to `__holdfast_events` (creating it first) and waits until they
/// are durable. Blocking; called from the maintenance tick. Events that cannot be appended
/// stay queued for the next tick.
pub fn flush(broker: &Broker) {
    let (events, dropped) = {
        let mut p = lock(pending());
        if p.events.is_empty() && p.dropped == 0 {
            return;
        }
        let d = p.dropped;
        p.dropped = 0;
        (std::mem::take(&mut p.events), d)
    };
    let mut events = events;
    if dropped > 0 {
        events.push(Event {
            time_ms: now_ms(),
            reason: "ledger_overflow",
            topic: String::new(),
            partition: -1,
            from_offset: -1,
            to_offset: -1,
            records: 0,
            group: None,
            detail: format!(
                "{dropped} loss events were counted and logged but not stored (queue full)"
            ),
        });
    }
    let requeue = |events: Vec<Event>| {
        let mut p = lock(pending());
        let mut all = events;
        all.append(&mut p.events);
        all.truncate(MAX_PENDING);
        p.events = all;
    };
    if broker.topic(EVENTS_TOPIC).is_none() {
        // Topic creation is serialized by the admin lock; when an admin request holds it,
        // try again next tick (the events stay queued).
        let Ok(_admin) = broker.admin.try_lock() else {
            requeue(events);
            return;
        };
        let mut cfg = BTreeMap::new();
        cfg.insert("cleanup.policy".to_string(), "delete".to_string());
        // Kept until 1 GiB per partition: events are rare and small.
        cfg.insert("retention.ms".to_string(), "-1".to_string());
        cfg.insert("retention.bytes".to_string(), "1073741824".to_string());
        if let Err((code, msg)) = broker.create_topic(EVENTS_TOPIC, 1, cfg, false) {
            // Created concurrently is fine; anything else retries next tick.
            if code != 36 {
                tracing::error!(code, %msg, "cannot create {EVENTS_TOPIC}");
                requeue(events);
                return;
            }
        }
    }
    let Some(part) = broker.partition(EVENTS_TOPIC, 0) else {
        requeue(events);
        return;
    };
    let values: Vec<String> = events.iter().map(to_json).collect();
    let keys: Vec<String> = events
        .iter()
        .map(|e| format!("{}-{}", e.topic, e.partition))
        .collect();
    let records: Vec<holdfast_log::batch::build::Record<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| holdfast_log::batch::build::Record {
            key: Some(keys[i].as_bytes()),
            value: Some(values[i].as_bytes()),
            timestamp_ms: e.time_ms,
        })
        .collect();
    let batch = holdfast_log::batch::build::batch(
        &records,
        holdfast_log::batch::build::BatchOptions::default(),
    );
    match crate::handlers::append_records(&part, Some(batch.into()), now_ms(), |_| Ok(())) {
        Ok(a) => {
            // Under the default policy the append is acknowledged once fsynced; a broker
            // whose default opts out of fsync gets what it asked for.
            let waited = if part.waits_fsync() {
                part.durable().wait_blocking(a.durable_end)
            } else {
                Ok(())
            };
            if let Err(e) = waited {
                tracing::error!(error = %e, "loss ledger append not durable");
                return;
            }
            APPENDED.fetch_add(events.len() as u64, Ordering::Relaxed);
            broker.notify_data();
        }
        Err((code, msg)) => {
            tracing::error!(code, ?msg, "cannot append to {EVENTS_TOPIC}");
            requeue(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_is_escaped() {
        let ev = Event {
            time_ms: 5,
            reason: RETENTION_UNCONSUMED,
            topic: "t\"1".into(),
            partition: 0,
            from_offset: 1,
            to_offset: 3,
            records: 2,
            group: Some("g".into()),
            detail: "a\nb".into(),
        };
        assert_eq!(
            to_json(&ev),
            r#"{"version":1,"time_ms":5,"reason":"retention_unconsumed","topic":"t\"1","partition":0,"from_offset":1,"to_offset":3,"records":2,"group":"g","detail":"a\nb"}"#
        );
    }
}
