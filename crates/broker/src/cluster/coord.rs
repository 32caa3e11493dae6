//! The group coordinator in cluster mode (docs/design/replication.md §4, "Coordinators
//! follow their partitions' leadership"), as Kafka does it:
//!
//! * `__consumer_offsets` is a replicated cluster topic, created through the controller on
//!   the first FindCoordinator(GROUP) (`offsets.topic.num.partitions`,
//!   `offsets.topic.replication.factor`: while fewer brokers are alive the creation fails and
//!   FindCoordinator answers COORDINATOR_NOT_AVAILABLE, as in Kafka).
//! * FindCoordinator(GROUP) names the leader of the group's partition
//!   (`Utils.abs(groupId.hashCode) % partitions`), from the image.
//! * [`run`] watches the local partitions of the topic: when this broker becomes leader of
//!   one (or its leader epoch changes) the groups of that partition are dropped and reloaded
//!   from the log, once the high watermark has reached the log end seen at election (so the
//!   loaded state is exactly what is committed); meanwhile their requests get
//!   COORDINATOR_LOAD_IN_PROGRESS. When it stops leading, the groups are unloaded (waiting
//!   joins answered NOT_COORDINATOR). Groups of partitions led elsewhere get NOT_COORDINATOR
//!   ([`refusal`]), so clients run FindCoordinator again.
//! * Writes go through the replicated partition and are acknowledged once the high watermark
//!   passes them (`Broker::append_offsets_records`: acks=all).
//!
//! The transaction coordinator follows `__transaction_state` the same way (`super::txn`,
//! which reuses [`locate`] and [`create_internal_topic`]). Transactional offset commits
//! are loaded here like on a single node: pending until their marker, applied on COMMIT.

use std::sync::Arc;
use std::time::Duration;

use holdfast_groups::codes;
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use super::controller::{Answer, Call};
use super::Cluster;
use crate::errors as ec;
use crate::groups::{GroupService, OFFSETS_TOPIC};
use crate::state::{timer_ms, Broker, Partition};

/// How often the leadership of the local `__consumer_offsets` partitions is checked (also
/// woken by every data notification, which HW moves and role changes send).
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The answer to a group request for a group this broker does not coordinate (cluster
/// mode); `None` to serve it. Requests naming several groups are refused as a whole when
/// any of them is not served here (clients send one group per coordinator).
pub(crate) fn refusal(
    svc: &GroupService,
    version: i16,
    body: &RequestKind,
) -> Option<ResponseKind> {
    svc.owned().as_ref()?;
    let first_error = |groups: &mut dyn Iterator<Item = &str>| -> i16 {
        groups
            .map(|g| svc.owner_error(g))
            .find(|c| *c != codes::NONE)
            .unwrap_or(codes::NONE)
    };
    let code = match body {
        RequestKind::FindCoordinator(_) | RequestKind::ListGroups(_) => codes::NONE,
        RequestKind::JoinGroup(r) => svc.owner_error(&r.group_id.0),
        RequestKind::SyncGroup(r) => svc.owner_error(&r.group_id.0),
        RequestKind::Heartbeat(r) => svc.owner_error(&r.group_id.0),
        RequestKind::LeaveGroup(r) => svc.owner_error(&r.group_id.0),
        RequestKind::OffsetCommit(r) => svc.owner_error(&r.group_id.0),
        RequestKind::OffsetDelete(r) => svc.owner_error(&r.group_id.0),
        RequestKind::ConsumerGroupHeartbeat(r) => svc.owner_error(&r.group_id.0),
        RequestKind::OffsetFetch(r) if version >= 8 => {
            first_error(&mut r.groups.iter().map(|g| g.group_id.0.as_str()))
        }
        RequestKind::OffsetFetch(r) => svc.owner_error(&r.group_id.0),
        RequestKind::DescribeGroups(r) => first_error(&mut r.groups.iter().map(|g| g.0.as_str())),
        RequestKind::DeleteGroups(r) => {
            first_error(&mut r.groups_names.iter().map(|g| g.0.as_str()))
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            first_error(&mut r.group_ids.iter().map(|g| g.0.as_str()))
        }
        _ => codes::NONE,
    };
    if code == codes::NONE {
        return None;
    }
    Some(match body {
        RequestKind::JoinGroup(r) => {
            let mut x = JoinGroupResponse::default();
            x.error_code = code;
            x.generation_id = -1;
            x.member_id = r.member_id.clone();
            ResponseKind::JoinGroup(x)
        }
        RequestKind::SyncGroup(_) => {
            let mut x = SyncGroupResponse::default();
            x.error_code = code;
            ResponseKind::SyncGroup(x)
        }
        RequestKind::Heartbeat(_) => {
            let mut x = HeartbeatResponse::default();
            x.error_code = code;
            ResponseKind::Heartbeat(x)
        }
        RequestKind::LeaveGroup(_) => {
            let mut x = LeaveGroupResponse::default();
            x.error_code = code;
            ResponseKind::LeaveGroup(x)
        }
        RequestKind::OffsetCommit(r) => {
            use offset_commit_response::{
                OffsetCommitResponsePartition, OffsetCommitResponseTopic,
            };
            let mut x = OffsetCommitResponse::default();
            for t in &r.topics {
                let mut rt = OffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.topic_id = t.topic_id;
                for p in &t.partitions {
                    let mut rp = OffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                x.topics.push(rt);
            }
            ResponseKind::OffsetCommit(x)
        }
        RequestKind::OffsetDelete(_) => {
            let mut x = OffsetDeleteResponse::default();
            x.error_code = code;
            ResponseKind::OffsetDelete(x)
        }
        RequestKind::ConsumerGroupHeartbeat(_) => {
            let mut x = ConsumerGroupHeartbeatResponse::default();
            x.error_code = code;
            x.heartbeat_interval_ms = 0;
            ResponseKind::ConsumerGroupHeartbeat(x)
        }
        RequestKind::OffsetFetch(r) if version >= 8 => {
            let mut x = OffsetFetchResponse::default();
            for g in &r.groups {
                let mut rg = offset_fetch_response::OffsetFetchResponseGroup::default();
                rg.group_id = g.group_id.clone();
                rg.error_code = code;
                x.groups.push(rg);
            }
            ResponseKind::OffsetFetch(x)
        }
        RequestKind::OffsetFetch(_) => {
            let mut x = OffsetFetchResponse::default();
            x.error_code = code;
            ResponseKind::OffsetFetch(x)
        }
        RequestKind::DescribeGroups(r) => {
            let mut x = DescribeGroupsResponse::default();
            for g in &r.groups {
                let mut d = describe_groups_response::DescribedGroup::default();
                d.group_id = g.clone();
                d.error_code = code;
                x.groups.push(d);
            }
            ResponseKind::DescribeGroups(x)
        }
        RequestKind::DeleteGroups(r) => {
            let mut x = DeleteGroupsResponse::default();
            for g in &r.groups_names {
                let mut d = delete_groups_response::DeletableGroupResult::default();
                d.group_id = g.clone();
                d.error_code = code;
                x.results.push(d);
            }
            ResponseKind::DeleteGroups(x)
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            let mut x = ConsumerGroupDescribeResponse::default();
            for g in &r.group_ids {
                let mut d = consumer_group_describe_response::DescribedGroup::default();
                d.group_id = g.clone();
                d.error_code = code;
                x.groups.push(d);
            }
            ResponseKind::ConsumerGroupDescribe(x)
        }
        _ => return None,
    })
}

/// One key's answer: (node id, host, port) or (error code, message).
pub(crate) type Found = Result<(i32, String, i32), (i16, String)>;

/// FindCoordinator in cluster mode: the leader of the group's `__consumer_offsets`
/// partition, creating the topic through the controller when the image has none yet.
pub(crate) async fn find_coordinator(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let mut found: Vec<Found> = Vec::with_capacity(keys.len());
    for k in &keys {
        found.push(match req.key_type {
            0 => locate_group(broker, cluster, k).await,
            1 => super::txn::locate_txn(broker, cluster, k).await,
            _ => Err((
                ec::INVALID_REQUEST,
                "Unknown coordinator key type.".to_string(),
            )),
        });
    }
    let mut r = FindCoordinatorResponse::default();
    if version >= 4 {
        r.coordinators = keys
            .into_iter()
            .zip(found)
            .map(|(key, f)| {
                let mut c = FoundCoordinator::default();
                c.key = key;
                match f {
                    Ok((node, host, port)) => {
                        c.node_id = BrokerId(node);
                        c.host = sb(&host);
                        c.port = port;
                    }
                    Err((code, msg)) => {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                        c.error_code = code;
                        c.error_message = Some(sb(&msg));
                    }
                }
                c
            })
            .collect();
    } else {
        match found.into_iter().next() {
            Some(Ok((node, host, port))) => {
                r.node_id = BrokerId(node);
                r.host = sb(&host);
                r.port = port;
            }
            other => {
                let (code, msg) = match other {
                    Some(Err(e)) => e,
                    _ => (ec::COORDINATOR_NOT_AVAILABLE, String::new()),
                };
                r.error_code = code;
                if version >= 1 {
                    r.error_message = Some(sb(&msg));
                }
                r.node_id = BrokerId(-1);
                r.port = -1;
            }
        }
    }
    r
}

async fn locate_group(broker: &Arc<Broker>, cluster: &Arc<Cluster>, group: &str) -> Found {
    if cluster.image().topic_by_name(OFFSETS_TOPIC).is_none() {
        let cfg = &broker.config;
        create_internal_topic(
            cluster,
            OFFSETS_TOPIC,
            cfg.offsets_topic_partitions,
            cfg.offsets_topic_replication_factor,
        )
        .await?;
    }
    locate(cluster, OFFSETS_TOPIC, group)
}

/// The leader of `key`'s partition of the internal topic `topic`
/// (`Utils.abs(key.hashCode) % partitions`), from the local image.
pub(crate) fn locate(cluster: &Cluster, topic: &str, key: &str) -> Found {
    let unavailable = |m: String| Err((ec::COORDINATOR_NOT_AVAILABLE, m));
    let image = cluster.image();
    let Some(t) = image.topic_by_name(topic) else {
        return unavailable(format!("{topic} is being created"));
    };
    let n = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
    let p = holdfast_groups::records::partition_for(key, n);
    let Some(reg) = usize::try_from(p).ok().and_then(|i| t.partitions.get(i)) else {
        return unavailable(format!("no such {topic} partition"));
    };
    if reg.leader < 0 {
        return unavailable(format!("the key's {topic} partition has no leader"));
    }
    let Some(l) = image
        .brokers
        .get(&reg.leader)
        .and_then(|b| b.listeners.first())
    else {
        return unavailable("the coordinator has no listener in the metadata".into());
    };
    Ok((reg.leader, l.host.clone(), i32::from(l.port)))
}

/// Creates an internal compacted topic (`__consumer_offsets`, `__transaction_state`) through
/// the controller (an existing topic is fine) and waits until the result is applied here.
pub(crate) async fn create_internal_topic(
    cluster: &Arc<Cluster>,
    name: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<(), (i16, String)> {
    let configs = vec![
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), (100 * 1024 * 1024).to_string()),
    ];
    let call = Call::CreateTopics {
        topics: vec![(
            name.to_string(),
            partitions,
            replication_factor,
            configs,
            None,
        )],
        validate_only: false,
    };
    let unavailable = |m: String| (ec::COORDINATOR_NOT_AVAILABLE, m);
    let env = cluster
        .call(&call, super::ADMIN_TIMEOUT)
        .await
        .map_err(|e| unavailable(format!("creating {name}: {e}")))?;
    match &env.answer {
        Answer::Topics(outcomes) => {
            for o in outcomes {
                const TOPIC_ALREADY_EXISTS: i16 = 36;
                if o.error != ec::NONE && o.error != TOPIC_ALREADY_EXISTS {
                    // E.g. fewer alive brokers than the replication factor.
                    tracing::warn!(topic = name, code = o.error, message = ?o.message, "cannot create an internal topic");
                    return Err(unavailable(format!(
                        "cannot create {name}: {}",
                        o.message.clone().unwrap_or_default()
                    )));
                }
            }
        }
        Answer::Error { code, message } => {
            return Err(unavailable(format!(
                "cannot create {name} ({code}): {message}"
            )))
        }
        _ => {}
    }
    if !cluster
        .wait_reconciled(env.index, super::ADMIN_TIMEOUT)
        .await
    {
        return Err(unavailable(format!("{name} not applied here yet")));
    }
    tracing::info!(
        topic = name,
        partitions,
        replication_factor,
        "internal topic created"
    );
    Ok(())
}

/// Follows the leadership of the local `__consumer_offsets` partitions: loads the groups of
/// partitions this broker starts leading, unloads those of partitions it stops leading.
pub(crate) async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut data = broker.subscribe_data();
    loop {
        if let Err(e) = reconcile(&broker).await {
            tracing::error!(error = %e, "group coordinator load failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            r = data.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// The leader epoch of each local partition this broker leads.
pub(crate) fn led(broker: &Broker, topic: &str) -> (i32, Vec<(Arc<Partition>, i32)>) {
    let Some(t) = broker.topic(topic) else {
        return (0, Vec::new());
    };
    let n = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
    let led = t
        .partitions
        .iter()
        .filter(|p| p.is_leader())
        .map(|p| (Arc::clone(p), p.leader_epoch()))
        .collect();
    (n, led)
}

async fn reconcile(broker: &Arc<Broker>) -> Result<(), String> {
    let svc = broker.groups();
    let (n, led) = led(broker, OFFSETS_TOPIC);
    // Partitions to unload: not led any more, or led in another epoch (re-elected: reload).
    let gone: Vec<i32> = {
        let mut g = svc.owned();
        let Some(o) = g.as_mut() else {
            return Ok(());
        };
        if o.partitions != n && o.partitions > 0 {
            // The topic was deleted and created again: everything is reloaded.
            tracing::warn!(
                before = o.partitions,
                now = n,
                "__consumer_offsets partition count changed"
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
        o.partitions = n;
        for (p, epoch) in &led {
            o.parts.entry(p.index).or_insert((*epoch, false));
        }
        gone
    };
    if !gone.is_empty() {
        let dropped = svc.fence_and_unload(&gone, n);
        broker.txns().drop_pending_offsets(|g| {
            gone.contains(&holdfast_groups::records::partition_for(g, n))
        });
        tracing::info!(partitions = ?gone, groups = dropped, "group coordinator unloaded (leadership moved)");
    }
    // Load the partitions led here that are not loaded yet, once committed to their end.
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
            // Records the previous leader wrote are not all committed yet: the followers'
            // next fetches raise the HW (or the ISR shrinks).
            continue;
        }
        let started = std::time::Instant::now();
        let b = Arc::clone(broker);
        let p2 = Arc::clone(&p);
        let loaded = crate::handlers::blocking(move || {
            let svc = b.groups();
            // Anything left from an earlier tenure of this partition goes first.
            // Records decided in that tenure are not written any more either.
            svc.fence_and_unload(&[p2.index], n);
            let txns = b.txns();
            txns.drop_pending_offsets(|g| {
                holdfast_groups::records::partition_for(g, n) == p2.index
            });
            let now = timer_ms();
            let mut count = 0u64;
            let scanned = crate::txn::scan_internal_partition(
                OFFSETS_TOPIC,
                &p2,
                hw,
                &mut |h, key, value| {
                    let Some(k) = key else { return };
                    if h.is_control() {
                        // A transaction marker: its offsets apply (COMMIT) or vanish.
                        if let Some(kind) = holdfast_log::MarkerKind::from_control_key(k) {
                            for (k, v) in txns.loaded_marker(h.producer_id, kind) {
                                svc.load(&k, v.as_deref(), now);
                                count += 1;
                            }
                        }
                    } else if h.is_transactional() {
                        // Pending until its marker (below, or a WriteTxnMarkers later).
                        txns.loaded_txn_offset(h.producer_id, k, value);
                    } else {
                        svc.load(k, value, now);
                        count += 1;
                    }
                },
            );
            // Offsets of transactions still open at the HW wait for their marker.
            txns.adopt_loaded();
            scanned.map(|()| count)
        })
        .await
        .ok_or("the load task failed")??;
        let mut g = svc.owned();
        let still = g
            .as_mut()
            .and_then(|o| o.parts.get_mut(&p.index))
            .filter(|(e, _)| *e == epoch);
        if let Some(entry) = still {
            entry.1 = true;
            tracing::info!(
                partition = p.index,
                leader_epoch = epoch,
                high_watermark = hw,
                records = loaded,
                ms = started.elapsed().as_millis() as u64,
                "group coordinator loaded"
            );
        }
    }
    Ok(())
}
