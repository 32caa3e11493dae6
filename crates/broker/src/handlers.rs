//! Request handlers. Each returns a [`Reply`]: either the response now, or a future that
//! resolves to it (produce waiting for durability, fetch long polling). The part of a request
//! that must happen in request order (appends) runs before the handler returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::errors as ec;
use crate::state::{now_ms, Broker, Partition};

pub type ReplyFuture = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

/// A handler's answer. `None` as a response means the request could not be answered (an
/// internal failure): the connection is closed rather than left waiting for a response that
/// never comes.
#[allow(clippy::large_enum_variant)] // one per in-flight request; moved once
pub enum Reply {
    Now(Option<ResponseKind>),
    Later(ReplyFuture),
    /// No response at all (Produce with acks=0) once the future completes; it still holds
    /// an in-flight slot until then.
    Quiet(Pin<Box<dyn Future<Output = ()> + Send>>),
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn tn(s: &str) -> TopicName {
    TopicName(sb(s))
}

/// Runs blocking work (file I/O) off the tokio workers.
/// Test-only negative control for the chaos harness (`crates/chaos`): with
/// `HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC=1` in the environment, Produce acknowledges without
/// waiting for fsync, breaking the promise on purpose so a power-cut run can prove that its
/// checker notices. Off unless the variable is exactly `1`; read once (at broker start).
pub fn unsafe_ack_before_fsync() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC").is_ok_and(|v| v == "1");
        if on {
            tracing::error!(
                "HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC=1: produce is acknowledged BEFORE fsync; \
                 acknowledged writes WILL be lost on power failure (test-only negative control)"
            );
        }
        on
    })
}

/// Test-only negative control for the chaos harness: `HOLDFAST_UNSAFE_NO_DEDUP=1` turns off
/// idempotent-producer deduplication in the log (retries are appended again). Off unless the
/// variable is exactly `1`; read once (at broker start).
pub fn unsafe_no_dedup_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("HOLDFAST_UNSAFE_NO_DEDUP").is_ok_and(|v| v == "1") {
            tracing::error!(
                "HOLDFAST_UNSAFE_NO_DEDUP=1: idempotent producer deduplication is OFF; \
                 retried batches WILL be duplicated (test-only negative control)"
            );
            holdfast_log::producer::set_unsafe_no_dedup(true);
        }
    });
}

/// Test-only negative control for the chaos harness: with `HOLDFAST_UNSAFE_LSO_OFF_BY_ONE=1`
/// a `read_committed` fetch reads (and is told the last stable offset is) one offset past the
/// real last stable offset, capped at the high watermark: the first batch of an open
/// transaction becomes visible before its outcome is decided. A `--txn` chaos run with it must
/// be caught (`txn-uncommitted-read`). Off unless the variable is exactly `1`; read once (at
/// broker start).
pub fn unsafe_lso_off_by_one() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_LSO_OFF_BY_ONE").is_ok_and(|v| v == "1");
        if on {
            tracing::error!(
                "HOLDFAST_UNSAFE_LSO_OFF_BY_ONE=1: read_committed fetches read ONE OFFSET PAST \
                 the last stable offset; uncommitted records WILL be visible (test-only \
                 negative control)"
            );
        }
        on
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            None
        }
    }
}

impl Broker {
    /// Handles one decoded request.
    pub async fn handle(
        self: &Arc<Self>,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Reply {
        match body {
            RequestKind::ApiVersions(_) => Reply::Now(Some(ResponseKind::ApiVersions(
                holdfast_codec::api_versions_response_with_features(
                    // Cluster mode: transactions version 2 would have partition leaders add
                    // partitions to transactions coordinated elsewhere (not done yet).
                    if self.cluster().is_some() {
                        self.config.transaction_version.min(1)
                    } else {
                        self.config.transaction_version
                    },
                ),
            ))),
            RequestKind::Metadata(r) => {
                Reply::Now(self.metadata(r, version).await.map(ResponseKind::Metadata))
            }
            RequestKind::Produce(r) => self.produce(r, version).await,
            RequestKind::Fetch(r) => {
                let b = Arc::clone(self);
                Reply::Later(Box::pin(async move {
                    b.fetch(r, version).await.map(ResponseKind::Fetch)
                }))
            }
            RequestKind::ListOffsets(r) => {
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.list_offsets(r, version))
                        .await
                        .map(ResponseKind::ListOffsets),
                )
            }
            RequestKind::CreateTopics(r) => Reply::Now(
                self.create_topics(r, version)
                    .await
                    .map(ResponseKind::CreateTopics),
            ),
            RequestKind::DeleteTopics(r) => Reply::Now(
                self.delete_topics(r, version)
                    .await
                    .map(ResponseKind::DeleteTopics),
            ),
            RequestKind::InitProducerId(r)
                if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) =>
            {
                let b = Arc::clone(self);
                Reply::Later(Box::pin(async move {
                    Some(ResponseKind::InitProducerId(
                        b.txn_init_producer_id(r, version).await,
                    ))
                }))
            }
            RequestKind::InitProducerId(r) => {
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.init_producer_id(r))
                        .await
                        .map(ResponseKind::InitProducerId),
                )
            }
            RequestKind::DeleteRecords(r) => {
                let b = Arc::clone(self);
                let resp = blocking(move || b.delete_records(r)).await;
                if resp.is_some() {
                    self.notify_data();
                }
                Reply::Now(resp.map(ResponseKind::DeleteRecords))
            }
            RequestKind::CreatePartitions(r) => Reply::Now(
                self.create_partitions(r)
                    .await
                    .map(ResponseKind::CreatePartitions),
            ),
            RequestKind::DescribeConfigs(r) => Reply::Now(Some(ResponseKind::DescribeConfigs(
                self.describe_configs(r, version),
            ))),
            RequestKind::AlterConfigs(r) => {
                let _guard = self.admin.lock().await;
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.alter_configs(r))
                        .await
                        .map(ResponseKind::AlterConfigs),
                )
            }
            RequestKind::IncrementalAlterConfigs(r) => {
                let _guard = self.admin.lock().await;
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.incremental_alter_configs(r))
                        .await
                        .map(ResponseKind::IncrementalAlterConfigs),
                )
            }
            RequestKind::DescribeLogDirs(r) => {
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.describe_log_dirs(r))
                        .await
                        .map(ResponseKind::DescribeLogDirs),
                )
            }
            RequestKind::OffsetForLeaderEpoch(r) => {
                let b = Arc::clone(self);
                Reply::Now(
                    blocking(move || b.offset_for_leader_epoch(r))
                        .await
                        .map(ResponseKind::OffsetForLeaderEpoch),
                )
            }
            RequestKind::DescribeCluster(_) => {
                Reply::Now(Some(ResponseKind::DescribeCluster(self.describe_cluster())))
            }
            RequestKind::ElectLeaders(r) => Reply::Now(Some(ResponseKind::ElectLeaders(
                crate::cluster::ops::elect_leaders_single(self, r),
            ))),
            RequestKind::AlterPartitionReassignments(r) => {
                Reply::Now(Some(ResponseKind::AlterPartitionReassignments(
                    crate::cluster::reassign::alter_partition_reassignments_single(
                        self, r, version,
                    ),
                )))
            }
            RequestKind::UnregisterBroker(r) => {
                // A single node is not a cluster: there is nothing to decommission.
                let mut resp = kafka_protocol::messages::UnregisterBrokerResponse::default();
                resp.error_code = if r.broker_id.0 == self.config.node_id {
                    ec::INVALID_REQUEST
                } else {
                    ec::BROKER_ID_NOT_REGISTERED
                };
                resp.error_message = Some(sb(&format!(
                    "broker {} cannot be unregistered: this broker runs alone",
                    r.broker_id.0
                )));
                Reply::Now(Some(ResponseKind::UnregisterBroker(resp)))
            }
            RequestKind::ListPartitionReassignments(_) => {
                Reply::Now(Some(ResponseKind::ListPartitionReassignments(
                    kafka_protocol::messages::ListPartitionReassignmentsResponse::default(),
                )))
            }
            RequestKind::DescribeQuorum(_) => Reply::Now(Some(ResponseKind::DescribeQuorum(
                crate::cluster::ops::describe_quorum_single(),
            ))),
            _ => {
                // The codec only lets through APIs of the supported table.
                tracing::error!(
                    ?api_key,
                    version,
                    "request of an advertised API without a handler"
                );
                Reply::Now(None)
            }
        }
    }

    // ---------------------------------------------------------------- Metadata

    async fn metadata(
        self: &Arc<Self>,
        req: MetadataRequest,
        version: i16,
    ) -> Option<MetadataResponse> {
        let mut resp = MetadataResponse::default();
        let (host, port) = self.advertised();
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(self.config.node_id);
        b.host = sb(&host);
        b.port = port;
        resp.brokers = vec![b];
        resp.cluster_id = Some(sb(&self.cluster_id));
        resp.controller_id = BrokerId(self.config.node_id);

        let requested: Option<Vec<(Option<String>, Uuid)>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .map(|t| (t.name.map(|n| n.0.as_str().to_string()), t.topic_id))
                    .collect(),
            ),
        };
        let Some(requested) = requested else {
            resp.topics = self
                .all_topics()
                .iter()
                .map(|t| self.topic_metadata(t))
                .collect();
            return Some(resp);
        };
        let allow_create =
            self.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        for (name, id) in requested {
            // A non-zero topic id wins over the name, as in Kafka: the Java client asks by id
            // with name "" (the field's default), not null.
            let name = if id.is_nil() { name } else { None };
            let Some(name) = name else {
                match self.topic_by_id(id) {
                    Some(t) => resp.topics.push(self.topic_metadata(&t)),
                    None => {
                        let mut t = MetadataResponseTopic::default();
                        t.error_code = ec::UNKNOWN_TOPIC_ID;
                        t.topic_id = id;
                        resp.topics.push(t);
                    }
                }
                continue;
            };
            if let Some(t) = self.topic(&name) {
                resp.topics.push(self.topic_metadata(&t));
                continue;
            }
            let mut err = ec::UNKNOWN_TOPIC_OR_PARTITION;
            if let Err((code, _)) = crate::state::validate_topic_name(&name) {
                err = code;
            } else if allow_create {
                let _guard = self.admin.lock().await;
                let b = Arc::clone(self);
                let n = name.clone();
                let parts = self.config.num_partitions;
                match blocking(move || b.create_topic(&n, parts, BTreeMap::new(), false)).await {
                    Some(Ok(_)) | Some(Err((ec::TOPIC_ALREADY_EXISTS, _))) => {
                        if let Some(t) = self.topic(&name) {
                            resp.topics.push(self.topic_metadata(&t));
                            continue;
                        }
                    }
                    Some(Err((code, msg))) => {
                        tracing::warn!(topic = %name, code, msg, "auto-create failed");
                        err = code;
                    }
                    None => err = ec::KAFKA_STORAGE_ERROR,
                }
            }
            let mut t = MetadataResponseTopic::default();
            t.error_code = err;
            t.name = Some(tn(&name));
            resp.topics.push(t);
        }
        Some(resp)
    }

    fn topic_metadata(&self, t: &crate::state::Topic) -> MetadataResponseTopic {
        let mut mt = MetadataResponseTopic::default();
        mt.name = Some(tn(&t.meta.name));
        mt.topic_id = t.meta.id;
        mt.is_internal =
            t.meta.name == crate::groups::OFFSETS_TOPIC || t.meta.name == crate::txn::TXN_TOPIC;
        mt.partitions = t
            .partitions
            .iter()
            .map(|p| {
                let mut mp = MetadataResponsePartition::default();
                mp.partition_index = p.index;
                mp.leader_id = BrokerId(self.config.node_id);
                mp.leader_epoch = p.leader_epoch();
                mp.replica_nodes = vec![BrokerId(self.config.node_id)];
                mp.isr_nodes = vec![BrokerId(self.config.node_id)];
                mp
            })
            .collect();
        mt
    }

    // ---------------------------------------------------------------- Produce

    async fn produce(self: &Arc<Self>, req: ProduceRequest, version: i16) -> Reply {
        let acks = req.acks;
        let transactional_id = req
            .transactional_id
            .as_ref()
            .map(|t| t.0.to_string())
            .filter(|t| !t.is_empty());
        let timeout_ms = if req.timeout_ms > 0 {
            req.timeout_ms as u64
        } else {
            30_000
        };
        // (topic, partition, records) in request order.
        let mut work: Vec<(String, i32, Option<Bytes>)> = Vec::new();
        for t in req.topic_data {
            let name = t.name.0.as_str().to_string();
            for p in t.partition_data {
                work.push((name.clone(), p.index, p.records));
            }
        }
        if !(-1..=1).contains(&acks) {
            let results = work
                .into_iter()
                .map(|(t, p, _)| (t, p, Err((ec::INVALID_REQUIRED_ACKS, None))))
                .collect();
            return Reply::Now(Some(ResponseKind::Produce(produce_response(results))));
        }
        // Transactions version 2 (Produce v12+): the first write to a partition adds it to
        // the producer's transaction.
        let mut refused: HashMap<(String, i32), i16> = HashMap::new();
        if version >= 12 {
            if let Some(txn_id) = &transactional_id {
                let mut by_producer: BTreeMap<(i64, i16), Vec<(String, i32)>> = BTreeMap::new();
                for (t, p, records) in &work {
                    if let Some(h) = records
                        .as_deref()
                        .and_then(holdfast_log::batch::BatchHeader::parse)
                        .filter(|h| h.is_transactional())
                    {
                        by_producer
                            .entry((h.producer_id, h.producer_epoch))
                            .or_default()
                            .push((t.clone(), *p));
                    }
                }
                for ((pid, epoch), parts) in by_producer {
                    if let Err(code) = self
                        .add_partitions_implicitly(txn_id, pid, epoch, &parts)
                        .await
                    {
                        for tp in parts {
                            refused.insert(tp, code);
                        }
                    }
                }
            }
        }
        let b = Arc::clone(self);
        // Appends, in request order, on a blocking thread.
        let appended = blocking(move || {
            let now = now_ms();
            work.into_iter()
                .map(|(topic, index, records)| {
                    if let Some(code) = refused.get(&(topic.clone(), index)) {
                        return (topic, index, Err((*code, None)));
                    }
                    let r = match b.partition(&topic, index) {
                        // Only the group coordinator writes its internal topic (as in Kafka).
                        Some(_)
                            if topic == crate::groups::OFFSETS_TOPIC
                                || topic == crate::txn::TXN_TOPIC =>
                        {
                            Err((
                                ec::INVALID_TOPIC_EXCEPTION,
                                Some(format!("Cannot append to internal topic {topic}")),
                            ))
                        }
                        None => Err((ec::UNKNOWN_TOPIC_OR_PARTITION, None)),
                        // Cluster mode: NOT_ENOUGH_REPLICAS before anything is written.
                        Some(p)
                            if crate::cluster::replica::check_before_append(&p, acks).is_err() =>
                        {
                            let code = crate::cluster::replica::check_before_append(&p, acks)
                                .err()
                                .unwrap_or(ec::NOT_LEADER_OR_FOLLOWER);
                            Err((code, None))
                        }
                        // Cluster mode: the transaction coordinator is usually another node;
                        // KIP-890 verification against it is not done (Kafka before 3.6).
                        Some(p) if b.cluster().is_some() => {
                            append_records(&p, records, now, |_| Ok(())).map(|o| (o, p))
                        }
                        Some(p) => append_records(&p, records, now, |h| {
                            b.txns()
                                .verify(h.producer_id, h.producer_epoch, &topic, index)
                        })
                        .map(|o| (o, p)),
                    };
                    (topic, index, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Some(appended) = appended else {
            return Reply::Now(None);
        };
        self.notify_data();
        let b = Arc::clone(self);
        let ack_deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let wait = async move {
            let mut results = Vec::with_capacity(appended.len());
            for (topic, index, r) in appended {
                let r = match r {
                    Err(e) => Err(e),
                    Ok((o, p)) => {
                        let mut r = Ok(o.clone());
                        if p.waits_fsync() && !unsafe_ack_before_fsync() {
                            let w = p.durable().wait_for(o.durable_end);
                            r = match tokio::time::timeout(Duration::from_millis(timeout_ms), w)
                                .await
                            {
                                Ok(Ok(())) => Ok(o.clone()),
                                Ok(Err(e)) => Err((ec::KAFKA_STORAGE_ERROR, Some(e.to_string()))),
                                Err(_) => Err((ec::REQUEST_TIMED_OUT, None)),
                            };
                            // The high watermark moved: wake long-polling fetches.
                            b.notify_data();
                        }
                        if r.is_ok() && p.is_replicated() {
                            if crate::cluster::replica::feed_durable(&p) {
                                b.notify_data();
                            }
                            if acks == -1 {
                                r = b
                                    .await_ack_all(&p, &o, ack_deadline)
                                    .await
                                    .map(|()| o.clone());
                            }
                        }
                        r.map(|mut o| {
                            o.log_start_offset = p.log_start_offset();
                            o
                        })
                    }
                };
                results.push((topic, index, r));
            }
            results
        };
        if acks == 0 {
            // No response, but the durability wait still occupies one of the connection's
            // bounded in-flight slots (so acks=0 floods cannot pile up unbounded waiters) and
            // wakes long-polling fetches once the data is visible.
            return Reply::Quiet(Box::pin(async move {
                wait.await;
            }));
        }
        Reply::Later(Box::pin(async move {
            Some(ResponseKind::Produce(produce_response(wait.await)))
        }))
    }

    /// Cluster mode, `acks=all`: waits (until `deadline`: REQUEST_TIMED_OUT) until the
    /// leader state says the batch is below the HW with enough replicas in the ISR
    /// (`check_after_append`); NOT_ENOUGH_REPLICAS_AFTER_APPEND or NOT_LEADER_OR_FOLLOWER
    /// otherwise. Woken by every HW move (`notify_data`).
    pub(crate) async fn await_ack_all(
        &self,
        p: &Arc<Partition>,
        o: &Appended,
        deadline: tokio::time::Instant,
    ) -> Result<(), (i16, Option<String>)> {
        let mut rx = self.subscribe_data();
        loop {
            rx.borrow_and_update();
            match crate::cluster::replica::ack_all_decision(p, o.durable_end, o.leader_epoch) {
                Some(ec::NONE) => return Ok(()),
                Some(code) => return Err((code, None)),
                None => {}
            }
            if self.is_stopping() {
                return Err((ec::NOT_LEADER_OR_FOLLOWER, None));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err((ec::NOT_LEADER_OR_FOLLOWER, None)),
                Err(_) => return Err((ec::REQUEST_TIMED_OUT, None)),
            }
        }
    }

    // ---------------------------------------------------------------- ListOffsets

    fn list_offsets(&self, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for t in req.topics {
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            for lp in t.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = lp.partition_index;
                match self.partition(t.name.0.as_str(), lp.partition_index) {
                    None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => match list_offset(
                        &p,
                        lp.timestamp,
                        lp.current_leader_epoch,
                        version >= 2,
                        version >= 2 && req.isolation_level == 1,
                    ) {
                        Ok((offset, ts, epoch)) => {
                            pr.offset = offset;
                            pr.timestamp = ts;
                            if version >= 4 {
                                pr.leader_epoch = epoch;
                            }
                        }
                        Err(code) => pr.error_code = code,
                    },
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    // ---------------------------------------------------------------- Topics

    async fn create_topics(
        self: &Arc<Self>,
        req: CreateTopicsRequest,
        version: i16,
    ) -> Option<CreateTopicsResponse> {
        let _guard = self.admin.lock().await;
        let mut resp = CreateTopicsResponse::default();
        let mut seen = HashSet::new();
        let dups: HashSet<String> = req
            .topics
            .iter()
            .map(|t| t.name.0.as_str().to_string())
            .filter(|n| !seen.insert(n.clone()))
            .collect();
        for t in req.topics {
            let name = t.name.0.as_str().to_string();
            let mut r = CreatableTopicResult::default();
            r.name = t.name.clone();
            let checked: Result<NewTopicSpec, (i16, String)> = (|| {
                if dups.contains(&name) {
                    return Err((ec::INVALID_REQUEST, format!("Create topics request from client contains a duplicate topic '{name}'")));
                }
                crate::state::validate_topic_name(&name)?;
                if t.replication_factor > 1 {
                    return Err((
                        ec::INVALID_REPLICATION_FACTOR,
                        format!("Unable to replicate the partition {} time(s): The target replication factor of {} cannot be reached because only 1 broker(s) are registered.", t.replication_factor, t.replication_factor),
                    ));
                }
                if t.replication_factor == 0 || t.replication_factor < -1 {
                    return Err((ec::INVALID_REPLICATION_FACTOR, "Replication factor must be larger than 0, or -1 to use the default value.".into()));
                }
                let mut partitions = if t.num_partitions == -1 { self.config.num_partitions } else { t.num_partitions };
                if !t.assignments.is_empty() {
                    if t.num_partitions != -1 || t.replication_factor != -1 {
                        return Err((ec::INVALID_REQUEST, "Both numPartitions or replicationFactor and replicasAssignments were set.".into()));
                    }
                    for (i, a) in t.assignments.iter().enumerate() {
                        if a.partition_index != i as i32 || a.broker_ids.len() != 1 || a.broker_ids[0].0 != self.config.node_id {
                            return Err((ec::INVALID_REPLICA_ASSIGNMENT, "Replica assignment must place each partition on this broker only.".into()));
                        }
                    }
                    partitions = t.assignments.len() as i32;
                }
                if partitions < 1 {
                    return Err((ec::INVALID_PARTITIONS, "Number of partitions must be larger than 0.".into()));
                }
                let mut config = BTreeMap::new();
                for c in &t.configs {
                    match &c.value {
                        Some(v) => {
                            config.insert(c.name.as_str().to_string(), v.as_str().to_string());
                        }
                        None => return Err((ec::INVALID_CONFIG, format!("Null value not supported for topic configs: {}", c.name.as_str()))),
                    }
                }
                Ok((name.clone(), partitions, config))
            })()
            .and_then(|(n, partitions, config)| {
                if self.topic(&n).is_some() {
                    return Err((ec::TOPIC_ALREADY_EXISTS, format!("Topic '{n}' already exists.")));
                }
                Ok((n, partitions, config))
            });
            let outcome: Result<(Uuid, i32), (i16, String)> = match checked {
                Err(e) => Err(e),
                Ok((n, partitions, config)) => {
                    let b = Arc::clone(self);
                    let validate_only = req.validate_only;
                    match blocking(move || b.create_topic(&n, partitions, config, validate_only))
                        .await
                    {
                        Some(Ok(m)) => Ok((m.id, m.partitions)),
                        Some(Err(e)) => Err(e),
                        None => Err((ec::KAFKA_STORAGE_ERROR, "internal error".into())),
                    }
                }
            };
            match outcome {
                Ok((id, partitions)) => {
                    if version >= 7 && !req.validate_only {
                        r.topic_id = id;
                    }
                    r.num_partitions = partitions;
                    r.replication_factor = 1;
                }
                Err((code, msg)) => {
                    r.error_code = code;
                    r.error_message = Some(sb(&msg));
                    r.num_partitions = -1;
                    r.replication_factor = -1;
                }
            }
            resp.topics.push(r);
        }
        Some(resp)
    }

    async fn delete_topics(
        self: &Arc<Self>,
        req: DeleteTopicsRequest,
        version: i16,
    ) -> Option<DeleteTopicsResponse> {
        let _guard = self.admin.lock().await;
        let mut resp = DeleteTopicsResponse::default();
        let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
            req.topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.as_str().to_string()), t.topic_id))
                .collect()
        } else {
            req.topic_names
                .into_iter()
                .map(|n| (Some(n.0.as_str().to_string()), Uuid::nil()))
                .collect()
        };
        for (name, id) in targets {
            let mut r = DeletableTopicResult::default();
            let resolved = match &name {
                Some(n) => Some(n.clone()),
                None => self.topic_by_id(id).map(|t| t.meta.name.clone()),
            };
            r.name = resolved.as_deref().map(tn);
            let result = match resolved {
                None => Err((
                    ec::UNKNOWN_TOPIC_ID,
                    "This server does not host this topic ID.".to_string(),
                )),
                Some(n) => {
                    let b = Arc::clone(self);
                    blocking(move || b.delete_topic(&n))
                        .await
                        .unwrap_or(Err((ec::KAFKA_STORAGE_ERROR, "internal error".into())))
                }
            };
            match result {
                Ok(tid) => {
                    if version >= 6 {
                        r.topic_id = tid;
                    }
                }
                Err((code, msg)) => {
                    r.error_code = code;
                    if version >= 5 {
                        r.error_message = Some(sb(&msg));
                    }
                    if version >= 6 {
                        r.topic_id = id;
                    }
                }
            }
            resp.responses.push(r);
        }
        Some(resp)
    }

    fn delete_records(
        &self,
        req: kafka_protocol::messages::DeleteRecordsRequest,
    ) -> kafka_protocol::messages::DeleteRecordsResponse {
        use kafka_protocol::messages::delete_records_response::{
            DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
        };
        let mut resp = kafka_protocol::messages::DeleteRecordsResponse::default();
        for t in req.topics {
            let mut tr = DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            for dp in t.partitions {
                let mut pr = DeleteRecordsPartitionResult::default();
                pr.partition_index = dp.partition_index;
                pr.low_watermark = -1;
                match self.partition(t.name.0.as_str(), dp.partition_index) {
                    None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let hw = p.high_watermark();
                        // -1 means "up to the high watermark"; beyond it is out of range.
                        let target = if dp.offset == -1 { hw } else { dp.offset };
                        if target < 0 || target > hw {
                            pr.error_code = ec::OFFSET_OUT_OF_RANGE;
                        } else {
                            let mut st = p.lock();
                            match st.log.as_mut() {
                                None => pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                                Some(log) => {
                                    match log.delete_records_before(target) {
                                        Ok(start) => pr.low_watermark = start,
                                        Err(e) => pr.error_code = e.kafka_error_code(),
                                    }
                                    p.refresh(log);
                                }
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

    async fn create_partitions(
        self: &Arc<Self>,
        req: kafka_protocol::messages::CreatePartitionsRequest,
    ) -> Option<kafka_protocol::messages::CreatePartitionsResponse> {
        use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
        let _guard = self.admin.lock().await;
        let mut resp = kafka_protocol::messages::CreatePartitionsResponse::default();
        for t in req.topics {
            let mut r = CreatePartitionsTopicResult::default();
            r.name = t.name.clone();
            let node = self.config.node_id;
            let bad_assignment = t.assignments.as_ref().is_some_and(|a| {
                a.iter()
                    .any(|x| x.broker_ids.len() != 1 || x.broker_ids[0].0 != node)
            });
            let result = if bad_assignment {
                Err((
                    ec::INVALID_REPLICA_ASSIGNMENT,
                    "Replica assignment must place each partition on this broker only.".to_string(),
                ))
            } else {
                let b = Arc::clone(self);
                let name = t.name.0.as_str().to_string();
                let (count, validate_only) = (t.count, req.validate_only);
                blocking(move || b.add_partitions(&name, count, validate_only))
                    .await
                    .unwrap_or(Err((ec::KAFKA_STORAGE_ERROR, "internal error".into())))
            };
            if let Err((code, msg)) = result {
                r.error_code = code;
                r.error_message = Some(sb(&msg));
            }
            resp.results.push(r);
        }
        Some(resp)
    }

    fn describe_configs(
        &self,
        req: kafka_protocol::messages::DescribeConfigsRequest,
        version: i16,
    ) -> kafka_protocol::messages::DescribeConfigsResponse {
        use kafka_protocol::messages::describe_configs_response::{
            DescribeConfigsResourceResult, DescribeConfigsResult,
        };
        const TOPIC: i8 = 2;
        const BROKER: i8 = 4;
        let mut resp = kafka_protocol::messages::DescribeConfigsResponse::default();
        for res in req.resources {
            let mut r = DescribeConfigsResult::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let entries: Result<Vec<ConfigEntry>, (i16, String)> = match res.resource_type {
                TOPIC => match self.topic(res.resource_name.as_str()) {
                    Some(t) => Ok(crate::config::describe_topic_configs(
                        &self.config,
                        &t.log_config,
                        &t.meta.config,
                    )),
                    None => Err((
                        ec::UNKNOWN_TOPIC_OR_PARTITION,
                        "This server does not host this topic-partition.".into(),
                    )),
                },
                BROKER
                    if res.resource_name.as_str().is_empty()
                        || res.resource_name.as_str() == self.config.node_id.to_string() =>
                {
                    let mut entries = self.broker_config_entries();
                    if let Some(c) = self.cluster() {
                        for (k, v, source) in c.dynamic_broker_configs() {
                            entries.retain(|(name, _, _)| *name != k);
                            entries.push((k, v, source));
                        }
                    }
                    Ok(entries)
                }
                BROKER => Err((
                    ec::INVALID_REQUEST,
                    format!("Unexpected broker id {}", res.resource_name.as_str()),
                )),
                _ => Err((
                    ec::INVALID_REQUEST,
                    format!("Unsupported resource type {}", res.resource_type),
                )),
            };
            match entries {
                Ok(entries) => {
                    let wanted = res.configuration_keys.as_ref().map(|k| {
                        k.iter()
                            .map(|s| s.as_str().to_string())
                            .collect::<HashSet<_>>()
                    });
                    for (name, value, source) in entries {
                        if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                            continue;
                        }
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = sb(&name);
                        c.value = Some(sb(&value));
                        c.config_source = source;
                        if version >= 3 {
                            c.config_type = config_type(&name);
                        }
                        r.configs.push(c);
                    }
                }
                Err((code, msg)) => {
                    r.error_code = code;
                    r.error_message = Some(sb(&msg));
                }
            }
            resp.results.push(r);
        }
        resp
    }

    fn alter_configs(
        &self,
        req: kafka_protocol::messages::AlterConfigsRequest,
    ) -> kafka_protocol::messages::AlterConfigsResponse {
        use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
        let mut resp = kafka_protocol::messages::AlterConfigsResponse::default();
        for res in req.resources {
            let mut r = AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let result = if res.resource_type != RESOURCE_TOPIC {
                Err((
                    ec::INVALID_REQUEST,
                    "Only topic configs can be altered.".to_string(),
                ))
            } else {
                // AlterConfigs replaces the whole set of overrides.
                let mut overrides = BTreeMap::new();
                let mut bad = None;
                for c in &res.configs {
                    match &c.value {
                        Some(v) => {
                            overrides.insert(c.name.as_str().to_string(), v.as_str().to_string());
                        }
                        None => {
                            bad = Some((
                                ec::INVALID_CONFIG,
                                format!("Null value for {}", c.name.as_str()),
                            ))
                        }
                    }
                }
                match bad {
                    Some(e) => Err(e),
                    None => self.set_topic_config(
                        res.resource_name.as_str(),
                        overrides,
                        req.validate_only,
                    ),
                }
            };
            if let Err((code, msg)) = result {
                r.error_code = code;
                r.error_message = Some(sb(&msg));
            }
            resp.responses.push(r);
        }
        resp
    }

    /// IncrementalAlterConfigs on a BROKER resource in cluster mode: SET and DELETE of the
    /// dynamic broker configs (`crate::cluster::throttle::DYNAMIC_BROKER_CONFIGS`).
    fn alter_broker_configs(
        &self,
        name: &str,
        configs: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let Some(cluster) = self.cluster() else {
            return Err((
                ec::INVALID_REQUEST,
                "Only topic configs can be altered.".to_string(),
            ));
        };
        let broker = if name.is_empty() {
            None
        } else {
            Some(
                name.parse::<i32>()
                    .map_err(|_| (ec::INVALID_REQUEST, format!("Invalid broker id {name:?}")))?,
            )
        };
        let mut set = BTreeMap::new();
        let mut delete = Vec::new();
        for c in configs {
            let key = c.name.as_str().to_string();
            match (c.config_operation, c.value.as_ref()) {
                (0, Some(v)) => {
                    set.insert(key, v.as_str().to_string());
                }
                (1, _) => delete.push(key),
                (op, _) => {
                    return Err((
                        ec::INVALID_CONFIG,
                        format!("Operation {op} is not valid for {key}"),
                    ))
                }
            }
        }
        cluster.set_broker_configs_blocking(broker, set, delete, validate_only)
    }

    fn incremental_alter_configs(
        &self,
        req: kafka_protocol::messages::IncrementalAlterConfigsRequest,
    ) -> kafka_protocol::messages::IncrementalAlterConfigsResponse {
        use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
        let mut resp = kafka_protocol::messages::IncrementalAlterConfigsResponse::default();
        for res in req.resources {
            let mut r = AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let name = res.resource_name.as_str().to_string();
            let result = if res.resource_type == RESOURCE_BROKER && self.cluster().is_some() {
                self.alter_broker_configs(&name, &res.configs, req.validate_only)
            } else if res.resource_type != RESOURCE_TOPIC {
                Err((
                    ec::INVALID_REQUEST,
                    "Only topic configs can be altered.".to_string(),
                ))
            } else {
                match self.topic(&name) {
                    None => Err((
                        ec::UNKNOWN_TOPIC_OR_PARTITION,
                        "This server does not host this topic-partition.".to_string(),
                    )),
                    Some(t) => {
                        let mut overrides = t.meta.config.clone();
                        let mut err = None;
                        for c in &res.configs {
                            let key = c.name.as_str().to_string();
                            let value = c.value.as_ref().map(|v| v.as_str().to_string());
                            match (c.config_operation, value) {
                                (0, Some(v)) => {
                                    overrides.insert(key, v);
                                }
                                (1, _) => {
                                    overrides.remove(&key);
                                }
                                (2 | 3, Some(v)) if key == "cleanup.policy" => {
                                    let current = overrides
                                        .get(&key)
                                        .cloned()
                                        .or_else(|| {
                                            crate::config::render_topic_config(&t.log_config, &key)
                                        })
                                        .unwrap_or_default();
                                    let mut items: Vec<String> = current
                                        .split(',')
                                        .map(|x| x.trim().to_string())
                                        .filter(|x| !x.is_empty())
                                        .collect();
                                    for x in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                                        if c.config_operation == 2 {
                                            if !items.iter().any(|i| i == x) {
                                                items.push(x.to_string());
                                            }
                                        } else {
                                            items.retain(|i| i != x);
                                        }
                                    }
                                    overrides.insert(key, items.join(","));
                                }
                                (op, _) => {
                                    err = Some((
                                        ec::INVALID_CONFIG,
                                        format!("Operation {op} is not valid for {key}"),
                                    ));
                                }
                            }
                        }
                        match err {
                            Some(e) => Err(e),
                            None => self.set_topic_config(&name, overrides, req.validate_only),
                        }
                    }
                }
            };
            if let Err((code, msg)) = result {
                r.error_code = code;
                r.error_message = Some(sb(&msg));
            }
            resp.responses.push(r);
        }
        resp
    }

    /// One log dir (the data dir); partition sizes from the logs. Total and usable bytes stay
    /// -1 ("unknown") for now.
    fn describe_log_dirs(
        &self,
        req: kafka_protocol::messages::DescribeLogDirsRequest,
    ) -> kafka_protocol::messages::DescribeLogDirsResponse {
        use kafka_protocol::messages::describe_log_dirs_response::{
            DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
        };
        let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.topic.0.as_str().to_string(), t.partitions))
                .collect()
        });
        let mut dir = DescribeLogDirsResult::default();
        dir.log_dir = sb(&self.config.data_dir.display().to_string());
        for t in self.all_topics() {
            let parts: Vec<i32> = match &wanted {
                None => (0..t.meta.partitions).collect(),
                Some(w) => match w.get(&t.meta.name) {
                    Some(p) => p.clone(),
                    None => continue,
                },
            };
            let mut dt = DescribeLogDirsTopic::default();
            dt.name = tn(&t.meta.name);
            for idx in parts {
                let Some(p) = usize::try_from(idx).ok().and_then(|i| t.partitions.get(i)) else {
                    continue;
                };
                let size = p.lock().log.as_ref().map(|l| l.size_bytes());
                if let Some(size) = size {
                    let mut dp = DescribeLogDirsPartition::default();
                    dp.partition_index = idx;
                    dp.partition_size = i64::try_from(size).unwrap_or(i64::MAX);
                    dt.partitions.push(dp);
                }
            }
            dir.topics.push(dt);
        }
        let mut resp = kafka_protocol::messages::DescribeLogDirsResponse::default();
        resp.results = vec![dir];
        resp
    }

    /// KIP-101/KIP-320: where a leader epoch ends, for followers and consumers alike (Kafka's
    /// `Partition.lastOffsetForLeaderEpoch`). Not capped at the high watermark for consumers:
    /// a new leader's HW can lag behind the HW its predecessor served (it only learnt it from
    /// its fetches, and it does not advance while the ISR is below min.insync.replicas), so a
    /// capped answer sat below positions consumers had legitimately reached; librdkafka took
    /// that for a log truncation and consumed those records again (tests/cluster_five.rs).
    /// Fetching between the HW and the log end returns no records, as in Kafka.
    fn offset_for_leader_epoch(
        &self,
        req: kafka_protocol::messages::OffsetForLeaderEpochRequest,
    ) -> kafka_protocol::messages::OffsetForLeaderEpochResponse {
        use kafka_protocol::messages::offset_for_leader_epoch_response::{
            EpochEndOffset, OffsetForLeaderTopicResult,
        };
        let mut resp = kafka_protocol::messages::OffsetForLeaderEpochResponse::default();
        for t in req.topics {
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            for op in t.partitions {
                let mut e = EpochEndOffset::default();
                e.partition = op.partition;
                e.leader_epoch = -1;
                e.end_offset = -1;
                match self.partition(t.topic.0.as_str(), op.partition) {
                    None => e.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let st = p.lock();
                        match (
                            check_epoch(op.current_leader_epoch, st.leader_epoch),
                            st.log.as_ref(),
                        ) {
                            (Err(code), _) => e.error_code = code,
                            (Ok(()), None) => e.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION,
                            (Ok(()), Some(log)) => {
                                if let Some((epoch, end)) =
                                    log.end_offset_for_epoch(op.leader_epoch)
                                {
                                    e.leader_epoch = epoch;
                                    e.end_offset = end;
                                }
                            }
                        }
                    }
                }
                tr.partitions.push(e);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn describe_cluster(&self) -> kafka_protocol::messages::DescribeClusterResponse {
        use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
        let mut r = kafka_protocol::messages::DescribeClusterResponse::default();
        let (host, port) = self.advertised();
        let mut b = DescribeClusterBroker::default();
        b.broker_id = BrokerId(self.config.node_id);
        b.host = sb(&host);
        b.port = port;
        r.brokers = vec![b];
        r.cluster_id = sb(&self.cluster_id);
        r.controller_id = BrokerId(self.config.node_id);
        r
    }

    fn broker_config_entries(&self) -> Vec<(String, String, i8)> {
        let c = &self.config;
        let mut out = vec![
            (
                "node.id".to_string(),
                c.node_id.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
            (
                "num.partitions".to_string(),
                c.num_partitions.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
            (
                "auto.create.topics.enable".to_string(),
                c.auto_create_topics.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
            (
                "socket.request.max.bytes".to_string(),
                c.socket_request_max_bytes.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
            (
                "max.connections".to_string(),
                c.max_connections.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
            (
                "log.retention.check.interval.ms".to_string(),
                c.retention_check_interval_ms.to_string(),
                crate::config::SOURCE_STATIC_BROKER,
            ),
        ];
        for (k, v) in &c.log_default_overrides {
            out.push((
                format!("holdfast.log.default.{k}"),
                v.clone(),
                crate::config::SOURCE_STATIC_BROKER,
            ));
        }
        out
    }

    fn init_producer_id(&self, req: InitProducerIdRequest) -> InitProducerIdResponse {
        // Transactional ids go to the transaction coordinator (crate::txn).
        let _ = req;
        let mut r = InitProducerIdResponse::default();
        match self.allocate_producer_id() {
            Ok(id) => {
                r.producer_id = id.into();
                r.producer_epoch = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                r.error_code = ec::KAFKA_STORAGE_ERROR;
                r.producer_id = (-1).into();
                r.producer_epoch = -1;
            }
        }
        r
    }
}

/// Kafka's ConfigType of a topic config (DescribeConfigs v3+): 1 boolean, 2 string, 3 int,
/// 4 short, 5 long, 6 double, 7 list.
fn config_type(name: &str) -> i8 {
    match name {
        "preallocate" | "unclean.leader.election.enable" | "auto.create.topics.enable" => 1,
        "compression.type" | "message.timestamp.type" | "holdfast.flush.policy" => 2,
        "cleanup.policy" => 7,
        "max.message.bytes"
        | "index.interval.bytes"
        | "min.insync.replicas"
        | "segment.bytes"
        | "segment.index.bytes"
        | "num.partitions"
        | "node.id"
        | "socket.request.max.bytes"
        | "max.connections" => 3,
        _ => 5,
    }
}

/// No group or transaction coordinator yet: every key gets COORDINATOR_NOT_AVAILABLE, which
/// clients treat as retriable. Advertised because librdkafka ties features (LZ4) to it.
/// Kafka's ConfigResource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// (name, value, config source) of a described config.
type ConfigEntry = (String, String, i8);

/// A validated CreateTopics entry: name, partition count, config overrides.
type NewTopicSpec = (String, i32, BTreeMap<String, String>);

/// What an append reports back to the produce response.
#[derive(Clone)]
pub(crate) struct Appended {
    pub(crate) first_offset: i64,
    pub(crate) durable_end: i64,
    /// The leader epoch the batch was appended in.
    pub(crate) leader_epoch: i32,
    log_append_time_ms: i64,
    log_start_offset: i64,
}

impl Appended {
    /// A transaction marker appended at `first_offset` (WriteTxnMarkers).
    pub(crate) fn of_marker(first_offset: i64, durable_end: i64, leader_epoch: i32) -> Appended {
        Appended {
            first_offset,
            durable_end,
            leader_epoch,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

pub(crate) type ProduceResult = Result<Appended, (i16, Option<String>)>;

/// Appends a producer's records as the leader. `verify` sees each transactional batch's
/// header under the partition lock, before anything is written (KIP-890 verification).
pub(crate) fn append_records(
    p: &Arc<Partition>,
    records: Option<Bytes>,
    now: i64,
    verify: impl Fn(&holdfast_log::batch::BatchHeader) -> Result<(), i16>,
) -> ProduceResult {
    let Some(records) = records else {
        return Err((ec::CORRUPT_MESSAGE, Some("null record set".into())));
    };
    let mut buf = records.to_vec();
    let batch_bytes = buf.len();
    let mut st = p.lock();
    if holdfast_log::batch::BatchHeader::parse(&buf).is_some_and(|h| h.is_transactional()) {
        // Bounded by the request size; a malformed frame is left to the log's validation.
        for (h, _) in holdfast_log::batch::frames(&buf).flatten() {
            if h.is_transactional() {
                if let Err(code) = verify(&h) {
                    // A fenced transactional producer's batch is lost to it: ledger.
                    crate::ledger::produce_refused(
                        &p.topic,
                        p.index,
                        code,
                        &buf,
                        "transactional batch refused by verification",
                    );
                    return Err((code, None));
                }
            }
        }
    }
    // Cluster mode: the role is changed under this lock, so a partition demoted since the
    // caller looked it up never gets a leader append.
    if p.is_replicated() && !p.is_leader() {
        return Err((ec::NOT_LEADER_OR_FOLLOWER, None));
    }
    let epoch = st.leader_epoch;
    let log = st
        .log
        .as_mut()
        .ok_or((ec::UNKNOWN_TOPIC_OR_PARTITION, None))?;
    let r = log.append_as_leader(&mut buf, epoch, now);
    p.refresh(log);
    drop(st);
    match r {
        Ok(o) => Ok({
            crate::metrics::bytes_in(&p.topic, batch_bytes);
            Appended {
                first_offset: o.first_offset,
                durable_end: o.durable_end,
                leader_epoch: epoch,
                log_append_time_ms: o.log_append_time_ms,
                log_start_offset: p.log_start_offset(),
            }
        }),
        Err(e) => {
            tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "append refused");
            crate::ledger::produce_refused(
                &p.topic,
                p.index,
                e.kafka_error_code(),
                &buf,
                &e.to_string(),
            );
            Err((e.kafka_error_code(), Some(e.to_string())))
        }
    }
}

fn produce_response(results: Vec<(String, i32, ProduceResult)>) -> ProduceResponse {
    let mut resp = ProduceResponse::default();
    for (topic, index, r) in results {
        let pos = match resp
            .responses
            .iter()
            .position(|t| t.name.0.as_str() == topic)
        {
            Some(i) => i,
            None => {
                let mut t = TopicProduceResponse::default();
                t.name = tn(&topic);
                resp.responses.push(t);
                resp.responses.len() - 1
            }
        };
        let mut pr = PartitionProduceResponse::default();
        pr.index = index;
        match r {
            Ok(a) => {
                pr.base_offset = a.first_offset;
                pr.log_append_time_ms = a.log_append_time_ms;
                pr.log_start_offset = a.log_start_offset;
            }
            Err((code, msg)) => {
                pr.error_code = code;
                pr.base_offset = -1;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = -1;
                pr.error_message = msg.map(|m| sb(&m));
            }
        }
        resp.responses[pos].partition_responses.push(pr);
    }
    resp
}

fn check_epoch(requested: i32, current: i32) -> Result<(), i16> {
    if requested == -1 || requested == current {
        Ok(())
    } else if requested < current {
        Err(ec::FENCED_LEADER_EPOCH)
    } else {
        Err(ec::UNKNOWN_LEADER_EPOCH)
    }
}

/// What a fetch read of one partition found.
pub(crate) struct PartitionRead {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
    /// For `read_committed`: aborted transactions overlapping the records.
    pub aborted: Vec<holdfast_log::AbortedTxn>,
}

/// Reads a partition for a fetch (blocking), or (error, high watermark, log start).
/// `read_committed` reads stop at the last stable offset.
pub(crate) fn read_partition(
    p: &Partition,
    offset: i64,
    leader_epoch: i32,
    max_bytes: usize,
    min_one: bool,
    read_committed: bool,
) -> Result<PartitionRead, (i16, i64, i64)> {
    let hw = p.high_watermark();
    let mut st = p.lock();
    let epoch = st.leader_epoch;
    let Some(log) = st.log.as_mut() else {
        return Err((ec::UNKNOWN_TOPIC_OR_PARTITION, -1, -1));
    };
    let start = log.log_start_offset();
    check_epoch(leader_epoch, epoch).map_err(|c| (c, hw, start))?;
    if offset < start || offset > log.log_end_offset() {
        return Err((ec::OFFSET_OUT_OF_RANGE, hw, start));
    }
    let mut lso = log.last_stable_offset(hw);
    debug_assert!(
        lso <= hw,
        "the last stable offset never passes the high watermark"
    );
    if unsafe_lso_off_by_one() {
        lso = (lso + 1).min(hw);
    }
    let upper = if read_committed { lso } else { hw };
    let mut out = PartitionRead {
        high_watermark: hw,
        last_stable_offset: lso,
        log_start_offset: start,
        records: Bytes::new(),
        aborted: Vec::new(),
    };
    if offset >= upper || max_bytes == 0 && !min_one {
        return Ok(out);
    }
    let slice = match log.read(offset, max_bytes, upper, min_one) {
        Ok(s) => s,
        Err(e) => return Err((e.kafka_error_code(), hw, start)),
    };
    let may_have_aborts = read_committed && !slice.is_empty();
    let aborted_upper = upper;
    if may_have_aborts {
        out.aborted = log.aborted_transactions(offset, aborted_upper);
    }
    drop(st);
    // The file read happens outside the partition lock.
    match slice.read_bytes() {
        Ok(v) => {
            if may_have_aborts && !out.aborted.is_empty() {
                // Only the transactions overlapping what is returned.
                let end = holdfast_log::batch::frames(&v)
                    .flatten()
                    .last()
                    .map(|(h, _)| h.last_offset() + 1)
                    .unwrap_or(aborted_upper);
                out.aborted.retain(|a| a.first_offset < end);
            }
            out.records = Bytes::from(v);
            Ok(out)
        }
        Err(e) => {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fetch read failed");
            Err((ec::KAFKA_STORAGE_ERROR, hw, start))
        }
    }
}

/// ListOffsets for one partition (blocking): (offset, timestamp, leader epoch).
///
/// `client_request` is Kafka's "isolation level present" (v2+): only those requests get
/// OFFSET_NOT_AVAILABLE while a new leader's high watermark is still below the offset its
/// leadership started at (Kafka's `Partition.fetchOffsetForTimestamp`). Until the followers
/// have caught up, that high watermark can be below one an earlier leader (or this broker before
/// a restart) already served, and answering with it would move a client's view backwards.
fn list_offset(
    p: &Partition,
    timestamp: i64,
    leader_epoch: i32,
    client_request: bool,
    read_committed: bool,
) -> Result<(i64, i64, i32), i16> {
    let hw = p.high_watermark();
    let mut st = p.lock();
    let epoch = st.leader_epoch;
    check_epoch(leader_epoch, epoch)?;
    let lagging_hw = client_request
        && p.is_replicated()
        && match p.repl().as_ref() {
            Some(crate::cluster::replica::Repl::Leader(ls)) => ls.leader_epoch_start_offset() > hw,
            _ => false,
        };
    let log = st.log.as_mut().ok_or(ec::UNKNOWN_TOPIC_OR_PARTITION)?;
    // read_committed consumers see up to the last stable offset (Kafka's ListOffsets with
    // isolation level 1).
    let hw = if read_committed {
        log.last_stable_offset(hw)
    } else {
        hw
    };
    match timestamp {
        // -4 is EARLIEST_LOCAL (ListOffsets v8+, KIP-405): with no tiered storage the local
        // log starts at the log start offset, as Kafka answers for a non-tiered topic.
        -2 | -4 => Ok((log.log_start_offset(), -1, epoch)),
        -1 if lagging_hw => Err(ec::OFFSET_NOT_AVAILABLE),
        -1 => Ok((hw, -1, epoch)),
        -3 => match log.max_timestamp_offset() {
            Ok(Some((o, ts))) if o < hw => Ok((o, ts, epoch)),
            Ok(_) if lagging_hw => Err(ec::OFFSET_NOT_AVAILABLE),
            Ok(_) => Ok((-1, -1, -1)),
            Err(e) => Err(e.kafka_error_code()),
        },
        t if t >= 0 => match log.offset_for_timestamp(t) {
            Ok(Some((o, ts))) if o < hw => Ok((o, ts, epoch)),
            Ok(_) if lagging_hw => Err(ec::OFFSET_NOT_AVAILABLE),
            Ok(_) => Ok((-1, -1, -1)),
            Err(e) => Err(e.kafka_error_code()),
        },
        // -5 (latest tiered) needs v9+, which we do not advertise.
        _ => Err(ec::INVALID_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use holdfast_log::batch::build::{batch, BatchOptions, Record};
    use holdfast_log::{Flusher, Log, LogConfig};
    use holdfast_replication::{
        FollowerFetch, LeaderConfig, LeaderRegistration, LeaderState, LocalLogView,
    };

    use super::*;
    use crate::cluster::replica::Repl;

    /// A leader that just took over (here: restarted, so its served high watermark starts at 0)
    /// must not answer ListOffsets LATEST with a high watermark below where its leadership
    /// started: an earlier leader may already have served a higher one. Kafka answers
    /// OFFSET_NOT_AVAILABLE until the followers have caught up; so do we.
    #[test]
    fn new_leader_with_lagging_high_watermark_answers_offset_not_available() {
        let dir = std::env::temp_dir().join(format!("holdfast-lagging-hw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let flusher = Flusher::start().unwrap();
        let (mut log, _) = Log::open(&dir, LogConfig::default(), flusher, 1_000).unwrap();
        let recs: Vec<Record> = (0..5)
            .map(|_| Record {
                key: None,
                value: Some(b"v"),
                timestamp_ms: 1_000,
            })
            .collect();
        let mut b = batch(&recs, BatchOptions::default());
        let o = log.append_as_leader(&mut b, 0, 1_000).unwrap();
        log.durable().wait_blocking(o.durable_end).unwrap();
        let p = Partition::new_replicated("t", 0, log);
        let reg = LeaderRegistration {
            leader_epoch: 3,
            partition_epoch: 3,
            replicas: vec![1, 2],
            isr: vec![1, 2],
        };
        let mut ls = LeaderState::new(
            1,
            1,
            &reg,
            LeaderConfig {
                min_insync_replicas: 2,
                replica_lag_time_max_ms: 30_000,
            },
            LocalLogView {
                log_end: 5,
                durable_end: 5,
                high_watermark: p.high_watermark(),
            },
            1_000,
        )
        .unwrap();
        ls.on_local_durable(5, 1_000);
        assert_eq!(ls.high_watermark(), 0, "the follower has not fetched yet");
        *p.repl() = Some(Repl::Leader(ls));
        p.lock().leader_epoch = 3;

        assert_eq!(
            list_offset(&p, -1, -1, true, false),
            Err(ec::OFFSET_NOT_AVAILABLE)
        );
        assert_eq!(
            list_offset(&p, -1, -1, true, true),
            Err(ec::OFFSET_NOT_AVAILABLE)
        );
        assert_eq!(
            list_offset(&p, 1_000, -1, true, false),
            Err(ec::OFFSET_NOT_AVAILABLE)
        );
        // The log start is known; old (v0/v1) requests get the HW as Kafka answers them.
        assert_eq!(list_offset(&p, -2, -1, true, false), Ok((0, -1, 3)));
        assert_eq!(list_offset(&p, -1, -1, false, false), Ok((0, -1, 3)));

        // The follower catches up: the HW reaches the epoch start and LATEST is answered.
        let hw = match p.repl().as_mut() {
            Some(Repl::Leader(ls)) => {
                ls.on_follower_fetch(
                    FollowerFetch {
                        replica_id: 2,
                        broker_epoch: -1,
                        current_leader_epoch: Some(3),
                        fetch_offset: 5,
                        log_start: 0,
                    },
                    5,
                    1_001,
                )
                .unwrap();
                ls.high_watermark()
            }
            _ => unreachable!(),
        };
        assert_eq!(hw, 5);
        p.raise_hw(hw);
        assert_eq!(list_offset(&p, -1, -1, true, false), Ok((5, -1, 3)));
        assert_eq!(list_offset(&p, 1_000, -1, true, false), Ok((0, 1_000, 3)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
