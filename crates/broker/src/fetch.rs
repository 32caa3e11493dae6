//! Fetch: long polling woken by high-watermark changes, and fetch sessions (KIP-227).
//!
//! A session remembers the partitions a client fetches and what the last response told it
//! (high watermark, last stable offset, log start). Incremental requests only name partitions
//! whose fetch position changed; incremental responses only carry partitions with records,
//! an error, or changed offsets. Sessions live in a bounded cache (least recently used is
//! evicted) and are not persisted: after a restart clients get FETCH_SESSION_ID_NOT_FOUND
//! and start a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::errors as ec;
use crate::handlers::{blocking, read_partition};
use crate::state::Broker;

/// Kafka's `max.incremental.fetch.session.cache.slots` default.
pub const MAX_FETCH_SESSIONS: usize = 1000;
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// A partition to read, as the client names it (by id from Fetch v13, by name before).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PartKey {
    topic_id: Uuid,
    topic: String,
    partition: i32,
}

#[derive(Debug, Clone)]
struct Target {
    key: PartKey,
    fetch_offset: i64,
    leader_epoch: i32,
    max_bytes: i32,
    last_fetched_epoch: i32,
    log_start_offset: i64,
}

/// What the session last told the client about a partition.
#[derive(Debug, Clone)]
struct Cached {
    target: Target,
    sent: Option<(i64, i64, i64)>,
}

#[derive(Debug)]
pub(crate) struct FetchSession {
    next_epoch: i32,
    parts: IndexMap<PartKey, Cached>,
    last_used: Instant,
}

/// The broker's fetch session cache.
#[derive(Debug, Default)]
pub(crate) struct FetchSessions {
    sessions: Mutex<HashMap<i32, FetchSession>>,
}

enum Mode {
    Sessionless,
    Full(i32),
    Incremental(i32),
}

fn next_epoch(e: i32) -> i32 {
    if e == i32::MAX {
        1
    } else {
        e + 1
    }
}

fn targets_of(req: &FetchRequest, version: i16) -> Vec<Target> {
    let mut out = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            out.push(Target {
                key: PartKey {
                    topic_id: if version >= 13 {
                        t.topic_id
                    } else {
                        Uuid::nil()
                    },
                    topic: if version >= 13 {
                        String::new()
                    } else {
                        t.topic.0.as_str().to_string()
                    },
                    partition: p.partition,
                },
                fetch_offset: p.fetch_offset,
                leader_epoch: p.current_leader_epoch,
                max_bytes: p.partition_max_bytes,
                last_fetched_epoch: p.last_fetched_epoch,
                log_start_offset: p.log_start_offset,
            });
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FetchSessions {
    fn remove(&self, id: i32) {
        lock(&self.sessions).remove(&id);
    }

    /// A new session holding `targets`; 0 when no id could be found (sessionless then).
    fn create(&self, targets: &[Target]) -> i32 {
        let mut s = lock(&self.sessions);
        if s.len() >= MAX_FETCH_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, v)| v.last_used).map(|(k, _)| *k) {
                s.remove(&oldest);
            }
        }
        for _ in 0..16 {
            let id = fastrand::i32(1..);
            if let std::collections::hash_map::Entry::Vacant(e) = s.entry(id) {
                let parts = targets
                    .iter()
                    .map(|t| {
                        (
                            t.key.clone(),
                            Cached {
                                target: t.clone(),
                                sent: None,
                            },
                        )
                    })
                    .collect();
                e.insert(FetchSession {
                    next_epoch: 1,
                    parts,
                    last_used: Instant::now(),
                });
                tracing::debug!(
                    session = id,
                    partitions = targets.len(),
                    "fetch session created"
                );
                return id;
            }
        }
        0
    }

    /// Applies an incremental request; returns every partition of the session to read.
    fn update(
        &self,
        id: i32,
        epoch: i32,
        req: &FetchRequest,
        version: i16,
    ) -> Result<Vec<Target>, i16> {
        let mut s = lock(&self.sessions);
        let session = s.get_mut(&id).ok_or(ec::FETCH_SESSION_ID_NOT_FOUND)?;
        if epoch != session.next_epoch {
            return Err(INVALID_FETCH_SESSION_EPOCH);
        }
        session.next_epoch = next_epoch(epoch);
        session.last_used = Instant::now();
        tracing::trace!(session = id, epoch, "incremental fetch");
        for t in targets_of(req, version) {
            match session.parts.get_mut(&t.key) {
                Some(c) => c.target = t,
                None => {
                    session.parts.insert(
                        t.key.clone(),
                        Cached {
                            target: t,
                            sent: None,
                        },
                    );
                }
            }
        }
        for f in &req.forgotten_topics_data {
            for p in &f.partitions {
                let key = PartKey {
                    topic_id: if version >= 13 {
                        f.topic_id
                    } else {
                        Uuid::nil()
                    },
                    topic: if version >= 13 {
                        String::new()
                    } else {
                        f.topic.0.as_str().to_string()
                    },
                    partition: *p,
                };
                session.parts.shift_remove(&key);
            }
        }
        Ok(session.parts.values().map(|c| c.target.clone()).collect())
    }

    /// Records what a response told the client; for incremental responses, also decides
    /// which partitions go in it (records, errors or changed offsets).
    fn record(
        &self,
        id: i32,
        incremental: bool,
        results: Vec<(PartKey, PartitionData)>,
    ) -> Vec<(PartKey, PartitionData)> {
        let mut s = lock(&self.sessions);
        let Some(session) = s.get_mut(&id) else {
            return results;
        };
        results
            .into_iter()
            .filter(|(key, pd)| {
                let now = (
                    pd.high_watermark,
                    pd.last_stable_offset,
                    pd.log_start_offset,
                );
                let Some(c) = session.parts.get_mut(key) else {
                    return true;
                };
                let changed = c.sent != Some(now);
                c.sent = Some(now);
                let has_records = pd.records.as_ref().is_some_and(|r| !r.is_empty());
                !incremental || has_records || pd.error_code != ec::NONE || changed
            })
            .collect()
    }
}

impl Broker {
    pub(crate) async fn fetch(
        self: Arc<Self>,
        req: FetchRequest,
        version: i16,
    ) -> Option<FetchResponse> {
        let (targets, mode) = match (req.session_id, req.session_epoch) {
            (id, -1) => {
                if id != 0 {
                    self.fetch_sessions.remove(id);
                }
                (targets_of(&req, version), Mode::Sessionless)
            }
            (id, 0) => {
                if id != 0 {
                    self.fetch_sessions.remove(id);
                }
                let targets = targets_of(&req, version);
                let new_id = self.fetch_sessions.create(&targets);
                (
                    targets,
                    if new_id == 0 {
                        Mode::Sessionless
                    } else {
                        Mode::Full(new_id)
                    },
                )
            }
            (id, epoch) => match self.fetch_sessions.update(id, epoch, &req, version) {
                Ok(targets) => (targets, Mode::Incremental(id)),
                Err(code) => {
                    let mut r = FetchResponse::default();
                    r.error_code = code;
                    return Some(r);
                }
            },
        };
        let targets = Arc::new(targets);
        // A follower's fetch (cluster mode): Fetch v15+ names it in `replica_state`.
        let replica = if version >= 15 {
            (
                req.replica_state.replica_id.0,
                req.replica_state.replica_epoch,
            )
        } else {
            (req.replica_id.0, -1)
        };
        let replica = (replica.0 >= 0 && self.cluster().is_some()).then_some(replica);
        let isolation = req.isolation_level;
        let max_bytes = if req.max_bytes > 0 {
            req.max_bytes as usize
        } else {
            usize::MAX
        };
        let min_bytes = req.min_bytes.max(0) as usize;
        let max_wait = Duration::from_millis(req.max_wait_ms.clamp(0, 300_000) as u64);
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut rx = self.subscribe_data();
        let results = loop {
            rx.borrow_and_update();
            let b = Arc::clone(&self);
            let t = Arc::clone(&targets);
            let (results, bytes, errors) =
                blocking(move || b.read_targets(&t, version, isolation, max_bytes, replica))
                    .await?;
            if bytes >= min_bytes
                || errors
                || tokio::time::Instant::now() >= deadline
                || self.is_stopping()
            {
                break results;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                // Deadline: one last look, then answer whatever there is.
                let b = Arc::clone(&self);
                let t = Arc::clone(&targets);
                break blocking(move || b.read_targets(&t, version, isolation, max_bytes, replica))
                    .await?
                    .0;
            }
        };
        let (session_id, results) = match mode {
            Mode::Sessionless => (0, results),
            Mode::Full(id) => (id, self.fetch_sessions.record(id, false, results)),
            Mode::Incremental(id) => (id, self.fetch_sessions.record(id, true, results)),
        };
        let mut resp = FetchResponse::default();
        resp.session_id = session_id;
        for (key, pd) in results {
            let same_topic = resp
                .responses
                .last()
                .is_some_and(|t: &FetchableTopicResponse| {
                    if version >= 13 {
                        t.topic_id == key.topic_id
                    } else {
                        t.topic.0.as_str() == key.topic
                    }
                });
            if !same_topic {
                let mut t = FetchableTopicResponse::default();
                if version >= 13 {
                    t.topic_id = key.topic_id;
                } else {
                    t.topic = TopicName(StrBytes::from_string(key.topic.clone()));
                }
                resp.responses.push(t);
            }
            if let Some(t) = resp.responses.last_mut() {
                t.partitions.push(pd);
            }
        }
        Some(resp)
    }

    /// One pass over the partitions (blocking): per-partition results, record bytes read and
    /// whether any partition has an error.
    fn read_targets(
        &self,
        targets: &[Target],
        version: i16,
        isolation: i8,
        max_bytes: usize,
        replica: Option<(i32, i64)>,
    ) -> (Vec<(PartKey, PartitionData)>, usize, bool) {
        let mut out = Vec::with_capacity(targets.len());
        let mut total = 0usize;
        let mut errors = false;
        for t in targets {
            let topic = if version >= 13 {
                self.topic_by_id(t.key.topic_id)
            } else {
                self.topic(&t.key.topic)
            };
            let mut pd = PartitionData::default();
            pd.partition_index = t.key.partition;
            pd.aborted_transactions = if isolation == 1 {
                Some(Vec::new())
            } else {
                None
            };
            pd.records = Some(Bytes::new());
            let part = topic.as_ref().and_then(|tp| {
                usize::try_from(t.key.partition)
                    .ok()
                    .and_then(|i| tp.partitions.get(i))
                    .filter(|p| p.is_leader())
            });
            if let (Some((replica_id, replica_epoch)), Some(p)) = (replica, part) {
                let budget = (t.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
                let r = crate::cluster::replica::leader_read(
                    self,
                    p,
                    replica_id,
                    replica_epoch,
                    t.leader_epoch,
                    t.last_fetched_epoch,
                    t.fetch_offset,
                    t.log_start_offset,
                    budget,
                );
                pd.error_code = r.error;
                pd.high_watermark = r.high_watermark;
                pd.last_stable_offset = r.high_watermark;
                pd.log_start_offset = r.log_start_offset;
                if let Some((epoch, end_offset)) = r.diverging {
                    pd.diverging_epoch.epoch = epoch;
                    pd.diverging_epoch.end_offset = end_offset;
                    errors = true;
                }
                if r.error != ec::NONE {
                    errors = true;
                }
                total += r.records.len();
                pd.records = Some(r.records);
                out.push((t.key.clone(), pd));
                continue;
            }
            match part {
                None => {
                    pd.error_code = if version >= 13 && topic.is_none() {
                        ec::UNKNOWN_TOPIC_ID
                    } else {
                        ec::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    pd.high_watermark = -1;
                    errors = true;
                }
                Some(p) => {
                    let budget = (t.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
                    match read_partition(
                        p,
                        t.fetch_offset,
                        t.leader_epoch,
                        budget,
                        total == 0,
                        isolation == 1,
                    ) {
                        Ok(r) => {
                            pd.high_watermark = r.high_watermark;
                            pd.last_stable_offset = r.last_stable_offset;
                            pd.log_start_offset = r.log_start_offset;
                            total += r.records.len();
                            crate::metrics::bytes_out(&p.topic, r.records.len());
                            pd.records = Some(r.records);
                            if isolation == 1 {
                                pd.aborted_transactions = Some(
                                    r.aborted
                                        .iter()
                                        .map(|a| {
                                            let mut x = AbortedTransaction::default();
                                            x.producer_id = ProducerId(a.producer_id);
                                            x.first_offset = a.first_offset;
                                            x
                                        })
                                        .collect(),
                                );
                            }
                        }
                        Err((code, hw, start)) => {
                            if code == ec::OFFSET_OUT_OF_RANGE && t.fetch_offset < start {
                                crate::ledger::fetch_below_log_start(
                                    &p.topic,
                                    p.index,
                                    t.fetch_offset,
                                    start,
                                );
                            }
                            pd.error_code = code;
                            pd.high_watermark = hw;
                            pd.last_stable_offset = hw;
                            pd.log_start_offset = start;
                            errors = true;
                        }
                    }
                }
            }
            out.push((t.key.clone(), pd));
        }
        (out, total, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};

    fn request(
        parts: &[(&str, i32, i64)],
        forgotten: &[(&str, i32)],
        id: i32,
        epoch: i32,
    ) -> FetchRequest {
        let mut r = FetchRequest::default();
        r.session_id = id;
        r.session_epoch = epoch;
        for (t, p, off) in parts {
            let mut ft = FetchTopic::default();
            ft.topic = TopicName(StrBytes::from_string(t.to_string()));
            let mut fp = FetchPartition::default();
            fp.partition = *p;
            fp.fetch_offset = *off;
            ft.partitions = vec![fp];
            r.topics.push(ft);
        }
        for (t, p) in forgotten {
            let mut f = ForgottenTopic::default();
            f.topic = TopicName(StrBytes::from_string(t.to_string()));
            f.partitions = vec![*p];
            r.forgotten_topics_data.push(f);
        }
        r
    }

    fn pd(key: &PartKey, hw: i64, records: &'static [u8]) -> (PartKey, PartitionData) {
        let mut d = PartitionData::default();
        d.partition_index = key.partition;
        d.high_watermark = hw;
        d.last_stable_offset = hw;
        d.log_start_offset = 0;
        d.records = Some(Bytes::from_static(records));
        (key.clone(), d)
    }

    #[test]
    fn incremental_sessions_track_partitions_and_send_only_changes() {
        let s = FetchSessions::default();
        let full = request(&[("a", 0, 0), ("a", 1, 0)], &[], 0, 0);
        let targets = targets_of(&full, 12);
        let id = s.create(&targets);
        assert!(id > 0);
        let (k0, k1) = (targets[0].key.clone(), targets[1].key.clone());
        // The full response carries everything and is remembered.
        assert_eq!(
            s.record(id, false, vec![pd(&k0, 5, b""), pd(&k1, 5, b"")])
                .len(),
            2
        );
        // Epoch 1: a0 moves on; nothing changed anywhere: the response is empty.
        let t = s
            .update(id, 1, &request(&[("a", 0, 5)], &[], id, 1), 12)
            .expect("valid");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].fetch_offset, 5);
        assert!(s
            .record(id, true, vec![pd(&k0, 5, b""), pd(&k1, 5, b"")])
            .is_empty());
        // Epoch 2: a1's high watermark moved, a0 has records: both are sent.
        s.update(id, 2, &request(&[], &[], id, 2), 12)
            .expect("valid");
        let sent = s.record(id, true, vec![pd(&k0, 5, b"x"), pd(&k1, 6, b"")]);
        assert_eq!(sent.len(), 2);
        // A wrong epoch and an unknown session are refused.
        assert_eq!(
            s.update(id, 9, &request(&[], &[], id, 9), 12).err(),
            Some(INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            s.update(id + 1, 1, &request(&[], &[], id + 1, 1), 12).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        // Epoch 3 forgets a1.
        let t = s
            .update(id, 3, &request(&[], &[("a", 1)], id, 3), 12)
            .expect("valid");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, k0);
        s.remove(id);
        assert_eq!(
            s.update(id, 4, &request(&[], &[], id, 4), 12).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let s = FetchSessions::default();
        let t = targets_of(&request(&[("a", 0, 0)], &[], 0, 0), 12);
        for _ in 0..MAX_FETCH_SESSIONS + 10 {
            assert!(s.create(&t) > 0);
        }
        assert_eq!(lock(&s.sessions).len(), MAX_FETCH_SESSIONS);
    }
}
