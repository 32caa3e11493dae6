//! Partition replication in cluster mode (design §2, docs/replication-rules.md): the broker
//! side of `holdfast-replication`.
//!
//! * Roles: the publisher gives every hosted partition a [`Repl`] from the image
//!   ([`apply_role`]): a `LeaderState` when the image names this node leader, a
//!   `FollowerState` otherwise. The partition's served high watermark is raised only from them.
//! * Followers: one fetcher task per source broker ([`fetcher`]) sends Kafka Fetch requests
//!   (v15+, `replica_state`) at the local **durable** end (`FollowerState::next_fetch`),
//!   appends with `Log::append_as_follower`, waits for the fsync, and truncates on a diverging
//!   epoch.
//! * Leader: replica fetches update follower progress ([`leader_read`]); a manager task
//!   ([`manager`]) feeds the local durable end, runs the ISR shrink check every
//!   `replica.lag.time.max.ms / 2`, sends pending AlterPartitions to the controller and starts
//!   fetchers.
//!
//! Lock order: the partition state lock (`Partition::lock`) before `Partition::repl`; the
//! replication lock is never held across I/O or an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast_metadata::MetadataImage;
use holdfast_replication::{
    AlterIsr, AlterOutcome, AlterPartitionError, AlterPartitionOk, BrokerStatus, FetchResult,
    FollowerAction, FollowerFetch, FollowerRegistration, FollowerState, LeaderConfig,
    LeaderRegistration, LeaderState, LocalLogView,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::controller::{Answer, Call};
use super::throttle::Side;
use super::Cluster;
use crate::errors as ec;
use crate::state::{now_ms, timer_ms, Broker, Partition};

/// The replication role of a hosted partition.
#[derive(Debug)]
pub(crate) enum Repl {
    Leader(LeaderState),
    Follower(FollowerState),
}

/// Follower fetch `max_wait_ms`.
const FETCH_MAX_WAIT_MS: i32 = 500;
/// Bytes per partition in one follower fetch.
const FETCH_PARTITION_MAX_BYTES: i32 = 1024 * 1024;
/// Bytes per follower fetch.
const FETCH_MAX_BYTES: i32 = 8 * 1024 * 1024;
/// How often the manager looks at every leader partition.
const MANAGER_INTERVAL: Duration = Duration::from_millis(100);

fn epochs_of(log: &holdfast_log::Log) -> Vec<(i32, i64)> {
    log.epoch_entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

fn broker_status(image: &MetadataImage, id: i32) -> BrokerStatus {
    match image.brokers.get(&id) {
        Some(b) => BrokerStatus {
            broker_epoch: Some(b.epoch),
            fenced: b.fenced,
            in_controlled_shutdown: b.in_controlled_shutdown,
        },
        None => BrokerStatus::default(),
    }
}

/// Sets the replication role of one hosted partition from its registration (blocking: takes
/// the partition lock). `leads`: the image names this node leader and this incarnation is
/// registered and active. Returns whether the partition serves as leader.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_role(
    p: &Partition,
    image: &MetadataImage,
    topic: &str,
    reg: &holdfast_metadata::PartitionReg,
    me: i32,
    broker_epoch: i64,
    leads: bool,
    lag_ms: i64,
) -> bool {
    let now = timer_ms();
    let mut st = p.lock();
    if !leads && reg.leader >= 0 && reg.leader != me {
        if let Some(log) = st.log.as_mut() {
            repair_corrupt_follower(p, log, topic, reg.leader);
        }
    }
    let Some(log) = st.log.as_ref() else {
        *p.repl() = None;
        return false;
    };
    let log_end = log.log_end_offset();
    let durable_end = p.durable().durable_end().min(log_end);
    let latest_epoch = log.latest_epoch();
    let hw = p.high_watermark();
    let mut repl = p.repl();
    if leads {
        let lreg = LeaderRegistration {
            leader_epoch: reg.leader_epoch,
            partition_epoch: reg.partition_epoch,
            replicas: reg.replicas.clone(),
            isr: reg.isr.clone(),
        };
        let config = LeaderConfig {
            min_insync_replicas: holdfast_metadata::controller::effective_min_isr(
                image,
                topic,
                reg.replicas.len(),
            ),
            replica_lag_time_max_ms: lag_ms.max(1),
        };
        let result = match repl.as_mut() {
            Some(Repl::Leader(ls)) => ls
                .become_leader(&lreg, log_end, now)
                .map(|_| ())
                .and_then(|()| ls.set_config(config, now).map(|_| ())),
            _ => LeaderState::new(
                me,
                broker_epoch,
                &lreg,
                config,
                LocalLogView {
                    log_end,
                    durable_end,
                    high_watermark: hw,
                },
                now,
            )
            .map(|ls| {
                tracing::info!(topic, partition = p.index, leader_epoch = reg.leader_epoch, isr = ?reg.isr, hw = ls.high_watermark(), "leading partition");
                *repl = Some(Repl::Leader(ls));
            }),
        };
        if let Err(e) = result {
            tracing::error!(topic, partition = p.index, error = %e, "cannot lead the partition");
            *repl = None;
            drop(repl);
            st.leader_epoch = st.leader_epoch.max(reg.leader_epoch);
            return false;
        }
        if let Some(Repl::Leader(ls)) = repl.as_mut() {
            for r in &reg.replicas {
                if *r != me {
                    ls.update_broker(*r, broker_status(image, *r), now);
                }
            }
            ls.on_local_durable(durable_end, now);
            let h = ls.high_watermark();
            p.raise_hw(h);
        }
        true
    } else if reg.leader >= 0 && reg.leader != me {
        let freg = FollowerRegistration {
            leader_id: reg.leader,
            leader_epoch: reg.leader_epoch,
            partition_epoch: reg.partition_epoch,
        };
        match repl.as_mut() {
            Some(Repl::Follower(fs)) if fs.leader_epoch() <= reg.leader_epoch => {
                fs.become_follower(freg, log_end, latest_epoch);
            }
            _ => {
                tracing::info!(
                    topic,
                    partition = p.index,
                    leader = reg.leader,
                    leader_epoch = reg.leader_epoch,
                    "following partition"
                );
                *repl = Some(Repl::Follower(FollowerState::new(
                    freg,
                    log_end,
                    latest_epoch,
                    hw,
                )));
            }
        }
        false
    } else {
        // No leader, or this node is named leader but its incarnation is not active yet.
        *repl = None;
        false
    }
}

/// A follower whose log was found corrupt when it opened (`Log::corruption`: a bad batch
/// below the recovery point, or followed by valid data) serves nothing past the corruption and
/// refuses appends. As a follower it repairs itself from the leader: the log is cut at the
/// corruption (the unreadable rest is dropped) and fetched again. Safe because a follower is
/// not needed for what the leader's ISR holds; recorded in the loss ledger, since this copy
/// lost data it may have acknowledged as an ISR member before.
fn repair_corrupt_follower(p: &Partition, log: &mut holdfast_log::Log, topic: &str, leader: i32) {
    let Some(c) = log.corruption().cloned() else {
        return;
    };
    let end = log.log_end_offset();
    match log.truncate_to(end) {
        Ok(()) => {
            p.refresh(log);
            if p.high_watermark() > end {
                p.lower_hw_after_truncation(end);
            }
            tracing::warn!(topic, partition = p.index, corrupt_offset = c.offset, segment = %c.segment.display(), reason = %c.reason, leader, "corrupt replica repaired: cut at the corruption, fetching the rest from the leader");
            crate::ledger::record(crate::ledger::Event {
                time_ms: now_ms(),
                reason: crate::ledger::TRUNCATION,
                topic: topic.to_string(),
                partition: p.index,
                from_offset: end,
                to_offset: -1,
                records: 0,
                group: None,
                detail: format!(
                    "corrupt batch at offset {} ({}, {}): this replica dropped its log from offset {end} and fetches it again from leader {leader}",
                    c.offset,
                    c.segment.display(),
                    c.reason
                ),
            });
        }
        Err(e) => {
            tracing::error!(topic, partition = p.index, error = %e, "cannot cut a corrupt replica's log; it stays out of sync");
        }
    }
}

/// What a replica fetch of a partition this node leads answers (blocking).
pub(crate) struct ReplicaRead {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
    pub diverging: Option<(i32, i64)>,
}

/// The leader side of one replica fetch (design §2.3): epoch checks, divergence
/// (`diverging_epoch`), follower progress (`on_follower_fetch`), then records up to the log
/// end. Returns the AlterPartition to send when the ISR should expand (the manager sends it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn leader_read(
    b: &Broker,
    p: &Partition,
    replica_id: i32,
    replica_epoch: i64,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    fetch_offset: i64,
    follower_log_start: i64,
    max_bytes: usize,
) -> ReplicaRead {
    let now = timer_ms();
    let mut out = ReplicaRead {
        error: ec::NONE,
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
        diverging: None,
    };
    let mut st = p.lock();
    let Some(log) = st.log.as_mut() else {
        out.error = ec::NOT_LEADER_OR_FOLLOWER;
        return out;
    };
    let log_end = log.log_end_offset();
    let log_start = log.log_start_offset();
    let durable_end = p.durable().durable_end().min(log_end);
    out.log_start_offset = log_start;
    let mut repl = p.repl();
    let Some(Repl::Leader(ls)) = repl.as_mut() else {
        out.error = ec::NOT_LEADER_OR_FOLLOWER;
        return out;
    };
    if ls.on_local_durable(durable_end, now).is_some() {
        p.raise_hw(ls.high_watermark());
        b.notify_data();
    }
    out.high_watermark = ls.high_watermark();
    if current_leader_epoch >= 0 && current_leader_epoch != ls.leader_epoch() {
        out.error = if current_leader_epoch < ls.leader_epoch() {
            ec::FENCED_LEADER_EPOCH
        } else {
            ec::UNKNOWN_LEADER_EPOCH
        };
        return out;
    }
    let lfe = (last_fetched_epoch >= 0).then_some(last_fetched_epoch);
    match holdfast_replication::diverging_epoch(
        &epochs_of(log),
        log_start,
        log_end,
        lfe,
        fetch_offset,
    ) {
        Err(e) => {
            out.error = e.code();
            return out;
        }
        Ok(Some(d)) => {
            out.diverging = Some((d.epoch, d.end_offset));
            return out;
        }
        Ok(None) => {}
    }
    let fetch = FollowerFetch {
        replica_id,
        broker_epoch: replica_epoch,
        current_leader_epoch: (current_leader_epoch >= 0).then_some(current_leader_epoch),
        fetch_offset,
        log_start: follower_log_start,
    };
    match ls.on_follower_fetch(fetch, log_end, now) {
        Err(e) => {
            out.error = e.code();
            return out;
        }
        Ok(o) => {
            if o.high_watermark.is_some() {
                p.raise_hw(ls.high_watermark());
                b.notify_data();
            }
            if o.isr_member_below_hw {
                tracing::error!(topic = %p.topic, partition = p.index, replica_id, fetch_offset, hw = ls.high_watermark(), "an ISR member reports a durable end below the high watermark: it lost fsynced data");
            }
            if let Some(a) = o.alter_isr {
                tracing::info!(topic = %p.topic, partition = p.index, replica_id, new_isr = ?a.isr_ids(), "ISR expansion proposed");
            }
        }
    }
    out.high_watermark = ls.high_watermark();
    let in_sync = ls.maximal_isr().contains(&replica_id);
    drop(repl);
    if fetch_offset >= log_end || max_bytes == 0 {
        return out;
    }
    // Reassignment throttle (super::throttle): only replicas outside the ISR are metered.
    let cluster = b.cluster();
    let throttle = match cluster {
        Some(c) if !in_sync => {
            let image = c.image();
            c.throttles
                .lookup(&image, Side::Leader, c.node_id, &p.topic, p.index)
        }
        _ => None,
    };
    let max_bytes = match throttle {
        Some((limiter, rate)) => match limiter.available(rate) {
            0 => return out,
            n => max_bytes.min(n),
        },
        None => max_bytes,
    };
    // The follower reads up to the log end; the slice is read outside the lock.
    let slice = match log.read(fetch_offset, max_bytes, log_end, true) {
        Ok(s) => s,
        Err(e) => {
            out.error = e.kafka_error_code();
            return out;
        }
    };
    drop(st);
    match slice.read_bytes() {
        Ok(v) => {
            if let Some((limiter, _)) = throttle {
                limiter.record(v.len());
            }
            out.records = Bytes::from(v)
        }
        Err(e) => {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e, "replica fetch read failed");
            out.error = ec::KAFKA_STORAGE_ERROR;
        }
    }
    out
}

/// Before an `acks=all` append: NOT_ENOUGH_REPLICAS when the ISR is below min ISR.
pub(crate) fn check_before_append(p: &Partition, acks: i16) -> Result<(), i16> {
    if !p.is_replicated() {
        return Ok(());
    }
    match p.repl().as_ref() {
        Some(Repl::Leader(ls)) => {
            let a = holdfast_replication::Acks::from_kafka(acks)
                .unwrap_or(holdfast_replication::Acks::All);
            ls.check_before_append(a).map_err(|e| e.code())
        }
        _ => Err(ec::NOT_LEADER_OR_FOLLOWER),
    }
}

/// Feeds the local durable end to the leader state; raises the HW. True when it moved.
pub(crate) fn feed_durable(p: &Partition) -> bool {
    let mut repl = p.repl();
    let durable_end = p.durable().durable_end().min(p.log_end_offset());
    if let Some(Repl::Leader(ls)) = repl.as_mut() {
        if ls.on_local_durable(durable_end, timer_ms()).is_some() {
            p.raise_hw(ls.high_watermark());
            return true;
        }
    }
    false
}

/// The `acks=all` decision for an append ending at `required_offset` made in `epoch`:
/// `None` to wait, else the produce error code (NONE = acknowledge).
pub(crate) fn ack_all_decision(p: &Partition, required_offset: i64, epoch: i32) -> Option<i16> {
    use holdfast_replication::AckDecision;
    let repl = p.repl();
    match repl.as_ref() {
        Some(Repl::Leader(ls)) => match ls.check_after_append(required_offset, epoch) {
            AckDecision::Wait => None,
            AckDecision::Ack => {
                assert!(
                    ls.high_watermark() >= required_offset,
                    "acks=all acknowledged below the HW"
                );
                Some(ec::NONE)
            }
            AckDecision::NotEnoughReplicasAfterAppend => {
                Some(holdfast_replication::codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND)
            }
            AckDecision::NotLeader => Some(ec::NOT_LEADER_OR_FOLLOWER),
        },
        _ => Some(ec::NOT_LEADER_OR_FOLLOWER),
    }
}

/// The background task of replication on this node: every `MANAGER_INTERVAL` it feeds the
/// durable end of led partitions, runs the ISR shrink check every `lag / 2`, sends pending
/// AlterPartitions (one per partition in flight, by `LeaderState`'s rule) and keeps one
/// fetcher task per source broker.
pub(crate) async fn manager(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    lag_ms: i64,
    mut stop: watch::Receiver<bool>,
) {
    // Keyed by partition too: request ids are unique only within one partition's leadership
    // (they start at `leader_epoch << 32 | 1`), so two partitions led at the same epoch
    // propose the same first id. Keyed by id alone, the second partition's AlterPartition was
    // taken as already sent and never went out (its ISR stayed [leader] under min ISR 2).
    let mut sent: HashSet<(u128, i32, u64)> = HashSet::new();
    let mut fetchers: HashMap<i32, JoinHandle<()>> = HashMap::new();
    let mut last_shrink = 0i64;
    let shrink_every = (lag_ms / 2).max(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MANAGER_INTERVAL) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            for (_, f) in fetchers.drain() {
                f.abort();
            }
            return;
        }
        let now = timer_ms();
        let shrink = now - last_shrink >= shrink_every;
        if shrink {
            last_shrink = now;
        }
        let mut pending: Vec<(Arc<Partition>, u128, AlterIsr)> = Vec::new();
        let mut leaders: HashSet<i32> = HashSet::new();
        let mut moved = false;
        for t in broker.all_topics() {
            if !t.partitions.iter().any(|p| p.is_replicated()) {
                continue;
            }
            for p in &t.partitions {
                if !p.is_replicated() {
                    continue;
                }
                moved |= feed_durable(p);
                let log_end = p.log_end_offset();
                let mut repl = p.repl();
                match repl.as_mut() {
                    Some(Repl::Leader(ls)) => {
                        if shrink {
                            if let Some(a) = ls.maybe_shrink_isr(now, log_end) {
                                tracing::info!(topic = %p.topic, partition = p.index, new_isr = ?a.isr_ids(), "ISR shrink proposed");
                            }
                        }
                        if let Some(a) = ls.pending_alter_isr() {
                            if !sent.contains(&(t.meta.id.as_u128(), p.index, a.request_id)) {
                                pending.push((Arc::clone(p), t.meta.id.as_u128(), a.clone()));
                            }
                        }
                    }
                    Some(Repl::Follower(fs)) => {
                        leaders.insert(fs.leader_id());
                    }
                    None => {}
                }
            }
        }
        if moved {
            broker.notify_data();
        }
        // Only request ids still pending matter; the set stays bounded by the partitions.
        let live: HashSet<(u128, i32, u64)> = broker
            .all_topics()
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.meta.id.as_u128(), p)))
            .filter_map(|(topic_id, p)| match p.repl().as_ref() {
                Some(Repl::Leader(ls)) => ls
                    .pending_alter_isr()
                    .map(|a| (topic_id, p.index, a.request_id)),
                _ => None,
            })
            .collect();
        sent.retain(|k| live.contains(k));
        for (p, topic_id, a) in pending {
            sent.insert((topic_id, p.index, a.request_id));
            tokio::spawn(alter_partition(
                Arc::clone(&broker),
                Arc::clone(&cluster),
                p,
                topic_id,
                a,
            ));
        }
        fetchers.retain(|_, h| !h.is_finished());
        for l in leaders {
            if let std::collections::hash_map::Entry::Vacant(e) = fetchers.entry(l) {
                e.insert(tokio::spawn(fetcher(
                    Arc::clone(&broker),
                    Arc::clone(&cluster),
                    l,
                    stop.clone(),
                )));
            }
        }
    }
}

/// Sends one AlterPartition to the controller and feeds the answer to the leader state.
async fn alter_partition(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    p: Arc<Partition>,
    topic_id: u128,
    a: AlterIsr,
) {
    let call = Call::AlterPartition {
        broker_id: cluster.node_id,
        broker_epoch: cluster.broker_epoch(),
        topic_id,
        partition: p.index,
        leader_epoch: a.leader_epoch,
        partition_epoch: a.partition_epoch,
        new_isr: a
            .new_isr
            .iter()
            .map(|m| (m.broker_id, m.broker_epoch))
            .collect(),
    };
    let result = match cluster.call(&call, Duration::from_secs(5)).await {
        Ok(env) => match env.answer {
            Answer::AlterPartition {
                error,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                if error == ec::NONE {
                    Ok(AlterPartitionOk {
                        leader_epoch,
                        partition_epoch,
                        isr,
                    })
                } else {
                    Err(AlterPartitionError::from_code(error))
                }
            }
            Answer::Error { code, .. } => Err(AlterPartitionError::from_code(code)),
            _ => Err(AlterPartitionError::Retriable(ec::REQUEST_TIMED_OUT)),
        },
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "AlterPartition failed");
            Err(AlterPartitionError::Retriable(ec::REQUEST_TIMED_OUT))
        }
    };
    let outcome = {
        let mut repl = p.repl();
        match repl.as_mut() {
            Some(Repl::Leader(ls)) => {
                let o = ls.on_alter_partition_response(a.request_id, result.clone(), timer_ms());
                p.raise_hw(ls.high_watermark());
                Some(o)
            }
            _ => None,
        }
    };
    tracing::info!(topic = %p.topic, partition = p.index, proposed = ?a.isr_ids(), result = ?result, outcome = ?outcome, "AlterPartition answered");
    if let Some(AlterOutcome::Resend(_)) = outcome {
        // The manager sends the new request id on its next pass; pace retries.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.notify_data();
}

/// The follower fetcher for every partition this node follows from `leader`; ends when there
/// is none left (the manager starts it again when needed).
async fn fetcher(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    leader: i32,
    mut stop: watch::Receiver<bool>,
) {
    let me = cluster.node_id;
    let mut conn: Option<holdfast_client::Connection> = None;
    let mut idle_rounds = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let parts = followed_from(&broker, leader);
        if parts.is_empty() {
            idle_rounds += 1;
            if idle_rounds > 10 {
                return;
            }
            if sleep_or_stop(&mut stop, Duration::from_millis(100)).await {
                return;
            }
            continue;
        }
        idle_rounds = 0;
        if conn.is_none() {
            let image = cluster.image();
            let Some(addr) = image
                .brokers
                .get(&leader)
                .filter(|b| !b.fenced)
                .and_then(|b| b.listeners.first())
                .map(|l| format!("{}:{}", l.host, l.port))
            else {
                if sleep_or_stop(&mut stop, Duration::from_millis(250)).await {
                    return;
                }
                continue;
            };
            match holdfast_client::Connection::connect(
                &addr,
                &format!("holdfast-replica-{me}"),
                Duration::from_secs(5),
            )
            .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(leader, error = %e, "replica fetcher cannot connect");
                    if sleep_or_stop(&mut stop, Duration::from_millis(250)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Positions: only partitions whose appended data is durable (the fetch rule).
        let b = Arc::clone(&broker);
        let positions = crate::handlers::blocking(move || {
            parts
                .into_iter()
                .filter_map(|(p, topic_id)| {
                    let st = p.lock();
                    let log = st.log.as_ref()?;
                    let log_end = log.log_end_offset();
                    let log_start = log.log_start_offset();
                    let durable_end = p.durable().durable_end().min(log_end);
                    let repl = p.repl();
                    let Some(Repl::Follower(fs)) = repl.as_ref() else {
                        return None;
                    };
                    if fs.leader_id() != leader || fs.fetch_offset() != log_end {
                        return None;
                    }
                    let pos = fs.next_fetch(log_end, durable_end)?;
                    drop(repl);
                    drop(st);
                    Some((p, topic_id, pos, log_start))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let _ = b;
        let Some(mut positions) = positions else {
            return;
        };
        // Reassignment throttle (super::throttle): partitions this node is catching up on
        // wait while the follower limiter is exhausted; the others are fetched as usual.
        let image = cluster.image();
        let mut held_back = 0usize;
        let mut throttled: Vec<(Arc<Partition>, usize)> = Vec::new();
        positions.retain(|(p, topic_id, _, _)| {
            let in_sync = image
                .partition(holdfast_metadata::TopicId(*topic_id), p.index)
                .is_some_and(|r| r.isr.contains(&me));
            if in_sync {
                return true;
            }
            match cluster
                .throttles
                .lookup(&image, Side::Follower, me, &p.topic, p.index)
            {
                None => true,
                Some((limiter, rate)) => match limiter.available(rate) {
                    0 => {
                        held_back += 1;
                        false
                    }
                    n => {
                        throttled.push((Arc::clone(p), n));
                        true
                    }
                },
            }
        });
        drop(image);
        if positions.is_empty() {
            let pause = if held_back > 0 { 100 } else { 5 };
            if sleep_or_stop(&mut stop, Duration::from_millis(pause)).await {
                return;
            }
            continue;
        }
        let mut req = FetchRequest::default();
        req.replica_state = ReplicaState::default()
            .with_replica_id(BrokerId(me))
            .with_replica_epoch(cluster.broker_epoch());
        req.max_wait_ms = FETCH_MAX_WAIT_MS;
        req.min_bytes = 1;
        req.max_bytes = FETCH_MAX_BYTES;
        req.session_id = 0;
        req.session_epoch = -1;
        let mut by_topic: BTreeMap<u128, Vec<FetchPartition>> = BTreeMap::new();
        for (p, topic_id, pos, log_start) in &positions {
            let mut fp = FetchPartition::default();
            fp.partition = p.index;
            fp.current_leader_epoch = pos.current_leader_epoch;
            fp.fetch_offset = pos.fetch_offset;
            fp.last_fetched_epoch = pos.last_fetched_epoch.unwrap_or(-1);
            fp.log_start_offset = *log_start;
            fp.partition_max_bytes = throttled
                .iter()
                .find(|(t, _)| Arc::ptr_eq(t, p))
                .map_or(FETCH_PARTITION_MAX_BYTES, |(_, n)| {
                    FETCH_PARTITION_MAX_BYTES.min(i32::try_from(*n).unwrap_or(i32::MAX))
                });
            by_topic.entry(*topic_id).or_default().push(fp);
        }
        for (id, parts) in by_topic {
            let mut ft = FetchTopic::default();
            ft.topic_id = uuid::Uuid::from_u128(id);
            ft.partitions = parts;
            req.topics.push(ft);
        }
        let Some(c) = conn.as_mut() else { continue };
        let resp = tokio::select! {
            r = c.send(req, 16) => r,
            _ = stop.changed() => return,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "replica fetch failed");
                conn = None;
                if sleep_or_stop(&mut stop, Duration::from_millis(250)).await {
                    return;
                }
                continue;
            }
        };
        let mut answers = Vec::new();
        for t in resp.responses {
            let id = t.topic_id.as_u128();
            for pd in t.partitions {
                if let Some((p, _, _, _)) = positions
                    .iter()
                    .find(|(p, tid, _, _)| *tid == id && p.index == pd.partition_index)
                {
                    if throttled.iter().any(|(t, _)| Arc::ptr_eq(t, p)) {
                        let bytes = pd.records.as_ref().map_or(0, |r| r.len());
                        if let Some((limiter, _)) = cluster.throttles.lookup(
                            &cluster.image(),
                            Side::Follower,
                            me,
                            &p.topic,
                            p.index,
                        ) {
                            limiter.record(bytes);
                        }
                    }
                    answers.push((Arc::clone(p), pd));
                }
            }
        }
        let b = Arc::clone(&broker);
        let waits = crate::handlers::blocking(move || {
            answers
                .into_iter()
                .filter_map(|(p, pd)| follower_apply(&b, &p, leader, pd))
                .collect::<Vec<_>>()
        })
        .await;
        let Some((waits, backoff)) = waits.map(|w| {
            let backoff = w.iter().any(|x| x.1);
            (w, backoff)
        }) else {
            return;
        };
        // The fetch rule: the next fetch at N only once N is durable here.
        for (w, _) in &waits {
            if let Some((p, end)) = w {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), p.durable().wait_for(*end)).await;
                // Read under the replication lock: a truncation (which lowers the durable end)
                // holds it, so the HW raised here never passes the durable end.
                let mut repl = p.repl();
                let durable = p.durable().durable_end().min(p.log_end_offset());
                if let Some(Repl::Follower(fs)) = repl.as_mut() {
                    if let Some(hw) = fs.on_local_durable(durable) {
                        p.raise_hw(hw);
                    }
                }
            }
        }
        if backoff && sleep_or_stop(&mut stop, Duration::from_millis(100)).await {
            return;
        }
    }
}

type FollowerWait = (Option<(Arc<Partition>, i64)>, bool);

/// Applies one partition of the leader's answer (blocking). Returns the partition and the
/// log end to wait durable for, and whether to back off (an error).
fn follower_apply(
    b: &Broker,
    p: &Arc<Partition>,
    leader: i32,
    pd: kafka_protocol::messages::fetch_response::PartitionData,
) -> Option<FollowerWait> {
    let now = now_ms();
    let mut st = p.lock();
    let log = st.log.as_mut()?;
    let mut repl = p.repl();
    let Some(Repl::Follower(fs)) = repl.as_mut() else {
        return None;
    };
    if fs.leader_id() != leader || fs.fetch_offset() != log.log_end_offset() {
        return None;
    }
    let epochs = epochs_of(log);
    let result = if pd.error_code == ec::OFFSET_OUT_OF_RANGE {
        // The leader's log end is not in the answer; its HW is a safe stand-in (never below
        // this replica's HW, so no committed data is cut).
        FetchResult::OffsetOutOfRange {
            leader_log_start: pd.log_start_offset.max(0),
            leader_log_end: pd.high_watermark.max(0),
        }
    } else if pd.error_code != ec::NONE {
        tracing::debug!(topic = %p.topic, partition = p.index, code = pd.error_code, "replica fetch error");
        return Some((None, true));
    } else if pd.diverging_epoch.epoch >= 0 {
        FetchResult::Diverging(holdfast_replication::EpochEndOffset {
            epoch: pd.diverging_epoch.epoch,
            end_offset: pd.diverging_epoch.end_offset,
        })
    } else {
        let records = pd.records.unwrap_or_default();
        let mut last_epoch = None;
        if !records.is_empty() {
            // Only whole batches at or past our end.
            for (h, _) in holdfast_log::batch::frames(&records).flatten() {
                last_epoch = Some(h.partition_leader_epoch);
            }
            if let Err(e) = log.append_as_follower(&records, now) {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "follower append failed");
                p.refresh(log);
                return Some((None, true));
            }
            p.refresh(log);
            b.notify_data();
        }
        FetchResult::Records {
            leader_high_watermark: pd.high_watermark,
            last_appended_epoch: last_epoch,
            log_end: log.log_end_offset(),
        }
    };
    let log_end = log.log_end_offset();
    let durable_end = p.durable().durable_end().min(log_end);
    let action = fs.on_fetch_response(result, &epochs, log_end, durable_end);
    let hw_before = fs.high_watermark();
    p.raise_hw(hw_before);
    let cut = match action {
        FollowerAction::Continue => None,
        FollowerAction::Truncate(t) => Some((t.offset, false)),
        FollowerAction::TruncateFullyAndStartAt(o) => Some((o, true)),
    };
    if let Some((offset, fully)) = cut {
        let r = if fully {
            // Everything goes; the log restarts at the leader's log start.
            log.truncate_to(log.log_start_offset())
                .and_then(|()| log.delete_records_before(offset).map(|_| ()))
        } else if offset < log_end {
            log.truncate_to(offset)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            tracing::error!(topic = %p.topic, partition = p.index, offset, error = %e, "follower truncation failed");
            return Some((None, true));
        }
        p.refresh(log);
        let new_end = log.log_end_offset();
        let below_hw = fs.on_truncated(new_end, log.latest_epoch());
        if new_end < log_end {
            tracing::warn!(topic = %p.topic, partition = p.index, from = log_end, to = new_end, leader, "follower log truncated to the leader's (diverging epoch)");
        }
        if below_hw {
            crate::ledger::replica_truncation(
                &p.topic, p.index, log_end, new_end, hw_before, leader,
            );
            p.lower_hw_after_truncation(new_end);
        }
        return Some((None, false));
    }
    Some((Some((Arc::clone(p), log.log_end_offset())), false))
}

/// Partitions this node follows from `leader`, with their topic ids.
fn followed_from(broker: &Broker, leader: i32) -> Vec<(Arc<Partition>, u128)> {
    let mut out = Vec::new();
    for t in broker.all_topics() {
        for p in &t.partitions {
            if let Some(Repl::Follower(fs)) = p.repl().as_ref() {
                if fs.leader_id() == leader {
                    out.push((Arc::clone(p), t.meta.id.as_u128()));
                }
            }
        }
    }
    out
}

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
