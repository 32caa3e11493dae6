//! The transaction coordinator in cluster mode, built like the group coordinator
//! (`super::coord`) over `__transaction_state`:
//!
//! * `__transaction_state` is a replicated cluster topic, created through the controller on
//!   the first FindCoordinator(TRANSACTION) (`transaction.state.log.num.partitions`,
//!   `transaction.state.log.replication.factor`, compacted; the controller stores
//!   `min.insync.replicas=2` for RF ≥ 3). FindCoordinator names the leader of the
//!   transactional id's partition (`Utils.abs(transactionalId.hashCode) % partitions`).
//! * [`run`] follows the local leadership of its partitions: when this broker becomes leader
//!   of one (or its leader epoch changes) the transactional ids of that partition are
//!   dropped and reloaded from the log once the high watermark has reached the log end seen
//!   at election (COORDINATOR_LOAD_IN_PROGRESS meanwhile); when it stops leading they are
//!   unloaded (NOT_COORDINATOR). A loaded transaction in PrepareCommit/PrepareAbort gets its
//!   markers written by the timer loop (`crate::txn`); an Ongoing one times out and is
//!   aborted, as in Kafka.
//! * Transitions are written as leader and acknowledged once the high watermark passes
//!   them (`Broker::append_internal`: acks=all).
//! * [`send_markers`]: the markers of a prepared transaction go to each partition's leader as
//!   WriteTxnMarkers (API 27) over the Kafka protocol (`holdfast_client::Connection`), the
//!   leader taken from the local image again on every retry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use super::coord::{create_internal_topic, led, locate, Found};
use super::Cluster;
use crate::state::Broker;
use crate::txn::TXN_TOPIC;

/// How often the leadership of the local `__transaction_state` partitions is checked (also
/// woken by every data notification).
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long one attempt to write a transaction's markers may take before the transaction is
/// left prepared for the timer loop's next try.
const MARKERS_DEADLINE: Duration = Duration::from_secs(30);
/// Timeout of one WriteTxnMarkers exchange (connect, ApiVersions, request).
const MARKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

/// FindCoordinator(TRANSACTION): the leader of the id's `__transaction_state` partition,
/// creating the topic through the controller when the image has none yet.
pub(crate) async fn locate_txn(broker: &Arc<Broker>, cluster: &Arc<Cluster>, id: &str) -> Found {
    if cluster.image().topic_by_name(TXN_TOPIC).is_none() {
        let cfg = &broker.config;
        create_internal_topic(
            cluster,
            TXN_TOPIC,
            cfg.txn_topic_partitions,
            cfg.txn_topic_replication_factor,
        )
        .await?;
    }
    locate(cluster, TXN_TOPIC, id)
}

/// Follows the leadership of the local `__transaction_state` partitions: loads the
/// transactional ids of partitions this broker starts leading, unloads the others.
pub(crate) async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut data = broker.subscribe_data();
    loop {
        if let Err(e) = reconcile(&broker).await {
            tracing::error!(error = %e, "transaction coordinator load failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            r = data.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile(broker: &Arc<Broker>) -> Result<(), String> {
    let svc = broker.txns();
    let (n, led) = led(broker, TXN_TOPIC);
    let (gone, dropped) = {
        // Lock order: coordinator, then `owned` (as `Broker::persist`).
        let mut c = svc.coord_lock();
        let mut g = svc.owned();
        let Some(o) = g.as_mut() else {
            return Ok(());
        };
        let resized = o.partitions != n && o.partitions > 0;
        if resized {
            tracing::warn!(
                before = o.partitions,
                now = n,
                "__transaction_state partition count changed"
            );
        }
        let gone: Vec<i32> = o
            .parts
            .iter()
            .filter(|(p, (epoch, _))| {
                o.partitions != n || !led.iter().any(|(x, e)| x.index == **p && e == epoch)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            o.parts.remove(p);
        }
        let before = o.partitions;
        o.partitions = n;
        for (p, epoch) in &led {
            o.parts.entry(p.index).or_insert((*epoch, false));
        }
        let dropped = if gone.is_empty() {
            0
        } else {
            c.unload(|id| {
                before <= 0
                    || resized
                    || gone.contains(&holdfast_groups::records::partition_for(id, before))
            })
        };
        (gone, dropped)
    };
    if !gone.is_empty() {
        tracing::info!(partitions = ?gone, transactional_ids = dropped, "transaction coordinator unloaded (leadership moved)");
    }
    for (p, epoch) in led {
        let pending = svc
            .owned()
            .as_ref()
            .is_some_and(|o| o.parts.get(&p.index) == Some(&(epoch, false)));
        if !pending {
            continue;
        }
        let hw = p.high_watermark();
        if hw < p.log_end_offset() {
            // What the previous leader wrote is not all committed yet.
            continue;
        }
        let started = std::time::Instant::now();
        let p2 = Arc::clone(&p);
        let records = crate::handlers::blocking(move || {
            let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            crate::txn::scan_internal_partition(TXN_TOPIC, &p2, hw, &mut |h, key, value| {
                if h.is_control() {
                    return;
                }
                if let Some(k) = key {
                    out.push((k.to_vec(), value.map(<[u8]>::to_vec)));
                }
            })
            .map(|()| out)
        })
        .await
        .ok_or("the load task failed")??;
        let count = records.len();
        let loaded = {
            let mut c = svc.coord_lock();
            let mut g = svc.owned();
            let Some(entry) = g
                .as_mut()
                .and_then(|o| o.parts.get_mut(&p.index))
                .filter(|e| **e == (epoch, false))
            else {
                continue;
            };
            // Anything left from an earlier tenure of this partition goes first.
            c.unload(|id| holdfast_groups::records::partition_for(id, n) == p.index);
            for (k, v) in &records {
                if let Err(e) = c.load_record(k, v.as_deref()) {
                    tracing::warn!(error = %e, "skipping a __transaction_state record");
                }
            }
            entry.1 = true;
            c.all()
                .filter(|m| {
                    holdfast_groups::records::partition_for(&m.transactional_id, n) == p.index
                })
                .count()
        };
        svc.wake();
        tracing::info!(
            partition = p.index,
            leader_epoch = epoch,
            high_watermark = hw,
            records = count,
            transactional_ids = loaded,
            ms = started.elapsed().as_millis() as u64,
            "transaction coordinator loaded"
        );
    }
    Ok(())
}

/// Writes a transaction's COMMIT (`commit`) or ABORT markers to every partition in `parts`
/// through WriteTxnMarkers to each partition's current leader, retrying (leaders refreshed
/// from the local image) until every marker is acknowledged or [`MARKERS_DEADLINE`]
/// passes. Partitions of deleted topics need no marker.
pub(crate) async fn send_markers(
    cluster: &Arc<Cluster>,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    parts: Vec<(String, i32)>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + MARKERS_DEADLINE;
    let mut left: BTreeSet<(String, i32)> = parts.into_iter().collect();
    let mut attempt: u32 = 0;
    // Bounded by the deadline.
    loop {
        let image = cluster.image();
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        let mut deleted = Vec::new();
        for (t, p) in &left {
            let reg = image
                .topic_by_name(t)
                .and_then(|tr| usize::try_from(*p).ok().and_then(|i| tr.partitions.get(i)));
            match reg {
                None => deleted.push((t.clone(), *p)),
                Some(r) if r.leader >= 0 => {
                    by_leader.entry(r.leader).or_default().push((t.clone(), *p))
                }
                Some(_) => {} // no leader right now: next attempt
            }
        }
        for d in deleted {
            left.remove(&d);
        }
        for (leader, ps) in by_leader {
            let Some(addr) = image
                .brokers
                .get(&leader)
                .and_then(|b| b.listeners.first())
                .map(|l| format!("{}:{}", l.host, l.port))
            else {
                continue;
            };
            match write_markers_to(
                &addr,
                producer_id,
                producer_epoch,
                commit,
                coordinator_epoch,
                &ps,
            )
            .await
            {
                Ok(results) => {
                    for ((t, p), code) in results {
                        if code == crate::errors::NONE {
                            left.remove(&(t, p));
                        } else {
                            tracing::debug!(topic = %t, partition = p, leader, code, attempt, "marker not written yet");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(leader, %addr, error = %e, attempt, "WriteTxnMarkers failed")
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "markers not written within {MARKERS_DEADLINE:?} on {} partitions (first {:?})",
                left.len(),
                left.iter().next()
            ));
        }
        attempt = attempt.saturating_add(1);
        let backoff = Duration::from_millis(50 * u64::from(attempt.min(10)));
        tokio::time::sleep(backoff).await;
    }
}

/// One WriteTxnMarkers exchange with the broker at `addr`: the error code per partition.
async fn write_markers_to(
    addr: &str,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    parts: &[(String, i32)],
) -> Result<Vec<((String, i32), i16)>, String> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let mut m = WritableTxnMarker::default();
    m.producer_id = ProducerId(producer_id);
    m.producer_epoch = producer_epoch;
    m.transaction_result = commit;
    m.coordinator_epoch = coordinator_epoch;
    m.topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut x = WritableTxnMarkerTopic::default();
            x.name = TopicName(StrBytes::from_string(t.to_string()));
            x.partition_indexes = ps;
            x
        })
        .collect();
    let mut req = WriteTxnMarkersRequest::default();
    req.markers = vec![m];
    let mut conn =
        holdfast_client::Connection::connect(addr, "holdfast-txn-markers", MARKER_REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
    let resp = conn.send(req, 1).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for mr in resp.markers {
        for t in mr.topics {
            for p in t.partitions {
                out.push(((t.name.0.to_string(), p.partition_index), p.error_code));
            }
        }
    }
    Ok(out)
}
