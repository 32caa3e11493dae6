//! The Kafka APIs in cluster mode. [`intercept`] runs before the single-node dispatch and
//! returns the request untouched (`Err`) when the broker is not a cluster node, so the
//! single-node path does not change.
//!
//! * Metadata and DescribeCluster are answered from the local image.
//! * CreateTopics, DeleteTopics and CreatePartitions go to the active controller and are
//!   answered once the result is applied locally; (Incremental)AlterConfigs on topics go
//!   through `Broker::set_topic_config`, which forwards in cluster mode.
//! * Produce, Fetch, ListOffsets, OffsetForLeaderEpoch and DeleteRecords run the single-node
//!   handlers, which only see partitions this broker leads (`Broker::partition`); a partition
//!   that exists in the image but is led elsewhere is answered NOT_LEADER_OR_FOLLOWER.
//! * FindCoordinator: groups are coordinated by the leader of their `__consumer_offsets`
//!   partition (`super::coord`), transactional ids by the leader of their
//!   `__transaction_state` partition (`super::txn`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, MetadataRequest, MetadataResponse, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::controller::{Answer, Call};
use super::{Cluster, ADMIN_TIMEOUT};
use crate::errors as ec;
use crate::handlers::Reply;
use crate::state::Broker;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_CONTROLLER: i16 = 41;

/// Longest hold of a request that arrives before the node caught up with the metadata log
/// (a restart waits for the previous incarnation's session to expire, 3 s in tests).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn tn(s: &str) -> TopicName {
    TopicName(sb(s))
}

/// Handles `body` if the broker is a cluster node and the API differs there; otherwise
/// gives it back.
pub async fn intercept(
    broker: &Arc<Broker>,
    api_key: ApiKey,
    version: i16,
    body: RequestKind,
) -> Result<Reply, RequestKind> {
    let Some(cluster) = broker.cluster().cloned() else {
        return Err(body);
    };
    // Kafka enables request processing only after the initial metadata catch-up; requests
    // that arrive earlier wait here (bounded), then are answered as usual.
    if api_key != ApiKey::ApiVersions && !cluster.wait_caught_up(CATCH_UP_WAIT).await {
        tracing::warn!(?api_key, "answering before the metadata catch-up finished");
    }
    match body {
        RequestKind::Metadata(r) => Ok(Reply::Now(Some(ResponseKind::Metadata(metadata(
            broker, &cluster, r, version,
        ))))),
        RequestKind::DescribeCluster(_) => Ok(Reply::Now(Some(ResponseKind::DescribeCluster(
            describe_cluster(&cluster),
        )))),
        RequestKind::CreateTopics(r) => Ok(Reply::Now(Some(ResponseKind::CreateTopics(
            create_topics(&cluster, r, version).await,
        )))),
        RequestKind::DeleteTopics(r) => Ok(Reply::Now(Some(ResponseKind::DeleteTopics(
            delete_topics(&cluster, r, version).await,
        )))),
        RequestKind::CreatePartitions(r) => Ok(Reply::Now(Some(ResponseKind::CreatePartitions(
            create_partitions(&cluster, r).await,
        )))),
        RequestKind::ElectLeaders(r) => Ok(Reply::Now(Some(ResponseKind::ElectLeaders(
            super::ops::elect_leaders(&cluster, r, version).await,
        )))),
        RequestKind::AlterPartitionReassignments(r) => Ok(Reply::Later(Box::pin(async move {
            Some(ResponseKind::AlterPartitionReassignments(
                super::reassign::alter_partition_reassignments(&cluster, r, version).await,
            ))
        }))),
        RequestKind::ListPartitionReassignments(r) => {
            Ok(Reply::Now(Some(ResponseKind::ListPartitionReassignments(
                super::reassign::list_partition_reassignments(&cluster, r),
            ))))
        }
        RequestKind::UnregisterBroker(r) => Ok(Reply::Later(Box::pin(async move {
            let mut resp = kafka_protocol::messages::UnregisterBrokerResponse::default();
            let call = Call::UnregisterBroker { id: r.broker_id.0 };
            match forward(&cluster, &call).await {
                Ok(Answer::Items(_)) => {
                    tracing::info!(broker = r.broker_id.0, "broker unregistered");
                }
                Ok(other) => {
                    resp.error_code = ec::INVALID_REQUEST;
                    resp.error_message = Some(sb(&format!("unexpected answer {other:?}")));
                }
                Err((code, message)) => {
                    resp.error_code = code;
                    resp.error_message = Some(sb(&message));
                }
            }
            Some(ResponseKind::UnregisterBroker(resp))
        }))),
        RequestKind::DescribeQuorum(r) => Ok(Reply::Later(Box::pin(async move {
            Some(ResponseKind::DescribeQuorum(
                super::ops::describe_quorum(&cluster, r).await,
            ))
        }))),
        RequestKind::FindCoordinator(r) => {
            let b = Arc::clone(broker);
            Ok(Reply::Later(Box::pin(async move {
                Some(ResponseKind::FindCoordinator(
                    super::coord::find_coordinator(&b, &cluster, r, version).await,
                ))
            })))
        }
        // Transactional: the transaction coordinator (crate::txn), which refuses ids whose
        // `__transaction_state` partition is not led and loaded here (super::txn).
        body @ RequestKind::InitProducerId(_)
            if matches!(&body, RequestKind::InitProducerId(r)
                if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty())) =>
        {
            Err(body)
        }
        RequestKind::InitProducerId(_) => Ok(Reply::Later(Box::pin(async move {
            let mut resp = kafka_protocol::messages::InitProducerIdResponse::default();
            match cluster.allocate_producer_id().await {
                Ok(id) => {
                    resp.producer_id = id.into();
                    resp.producer_epoch = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no producer id block from the controller");
                    resp.error_code = ec::COORDINATOR_NOT_AVAILABLE;
                    resp.producer_id = (-1).into();
                    resp.producer_epoch = -1;
                }
            }
            Some(ResponseKind::InitProducerId(resp))
        }))),
        body @ (RequestKind::Produce(_)
        | RequestKind::Fetch(_)
        | RequestKind::ListOffsets(_)
        | RequestKind::OffsetForLeaderEpoch(_)
        | RequestKind::DeleteRecords(_)) => {
            let reply = broker.handle(api_key, version, body).await;
            Ok(match reply {
                Reply::Now(r) => Reply::Now(r.map(|r| not_leader(&cluster, r))),
                Reply::Later(fut) => Reply::Later(Box::pin(async move {
                    fut.await.map(|r| not_leader(&cluster, r))
                })),
                quiet @ Reply::Quiet(_) => quiet,
            })
        }
        other => Err(other),
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION for a partition the image has (so led elsewhere, or not yet
/// opened here) becomes NOT_LEADER_OR_FOLLOWER: the client refreshes its metadata and retries.
fn not_leader(cluster: &Cluster, mut resp: ResponseKind) -> ResponseKind {
    let image = cluster.image();
    let exists = |name: &str, id: Uuid, p: i32| -> bool {
        let t = if id.is_nil() {
            image.topic_by_name(name)
        } else {
            image.topics.get(&holdfast_metadata::TopicId(id.as_u128()))
        };
        t.is_some_and(|t| usize::try_from(p).is_ok_and(|i| i < t.partitions.len()))
    };
    let fix = |code: &mut i16, name: &str, id: Uuid, p: i32| {
        if *code == ec::UNKNOWN_TOPIC_OR_PARTITION && exists(name, id, p) {
            *code = NOT_LEADER_OR_FOLLOWER;
        }
    };
    match &mut resp {
        ResponseKind::Produce(r) => {
            for t in &mut r.responses {
                for p in &mut t.partition_responses {
                    fix(&mut p.error_code, t.name.0.as_str(), t.topic_id, p.index);
                }
            }
        }
        ResponseKind::Fetch(r) => {
            for t in &mut r.responses {
                for p in &mut t.partitions {
                    fix(
                        &mut p.error_code,
                        t.topic.0.as_str(),
                        t.topic_id,
                        p.partition_index,
                    );
                }
            }
        }
        ResponseKind::ListOffsets(r) => {
            for t in &mut r.topics {
                for p in &mut t.partitions {
                    fix(
                        &mut p.error_code,
                        t.name.0.as_str(),
                        Uuid::nil(),
                        p.partition_index,
                    );
                }
            }
        }
        ResponseKind::OffsetForLeaderEpoch(r) => {
            for t in &mut r.topics {
                for p in &mut t.partitions {
                    fix(
                        &mut p.error_code,
                        t.topic.0.as_str(),
                        Uuid::nil(),
                        p.partition,
                    );
                }
            }
        }
        ResponseKind::DeleteRecords(r) => {
            for t in &mut r.topics {
                for p in &mut t.partitions {
                    fix(
                        &mut p.error_code,
                        t.name.0.as_str(),
                        Uuid::nil(),
                        p.partition_index,
                    );
                }
            }
        }
        _ => {}
    }
    resp
}

fn controller_id(cluster: &Cluster) -> BrokerId {
    BrokerId(cluster.controller_id().map_or(-1, |id| id as i32))
}

fn metadata(
    broker: &Broker,
    cluster: &Cluster,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let image = cluster.image();
    let mut resp = MetadataResponse::default();
    resp.brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let l = b.listeners.first()?;
            let mut mb = MetadataResponseBroker::default();
            mb.node_id = BrokerId(b.id);
            mb.host = sb(&l.host);
            mb.port = i32::from(l.port);
            mb.rack = b.rack.as_deref().map(sb);
            Some(mb)
        })
        .collect();
    resp.cluster_id = Some(sb(&cluster.cluster_id));
    resp.controller_id = controller_id(cluster);
    let topic_md = |t: &holdfast_metadata::TopicReg| -> MetadataResponseTopic {
        let mut mt = MetadataResponseTopic::default();
        mt.name = Some(tn(&t.name));
        mt.topic_id = Uuid::from_u128(t.id.0);
        mt.is_internal = t.name == crate::groups::OFFSETS_TOPIC || t.name == crate::txn::TXN_TOPIC;
        mt.partitions = t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut mp = MetadataResponsePartition::default();
                mp.partition_index = i as i32;
                mp.leader_id = BrokerId(p.leader);
                mp.leader_epoch = p.leader_epoch;
                mp.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r)).collect();
                mp.isr_nodes = p.isr.iter().map(|r| BrokerId(*r)).collect();
                mp.offline_replicas = p
                    .replicas
                    .iter()
                    .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                    .map(|r| BrokerId(*r))
                    .collect();
                if p.leader < 0 {
                    mp.error_code = LEADER_NOT_AVAILABLE;
                }
                mp
            })
            .collect();
        mt
    };
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
        resp.topics = image.topics.values().map(topic_md).collect();
        return resp;
    };
    for (name, id) in requested {
        let name = if id.is_nil() { name } else { None };
        let found = match &name {
            Some(n) => image.topic_by_name(n),
            None => image.topics.get(&holdfast_metadata::TopicId(id.as_u128())),
        };
        match found {
            Some(t) => resp.topics.push(topic_md(t)),
            None => {
                let mut t = MetadataResponseTopic::default();
                match name {
                    Some(n) => {
                        // No auto-creation in cluster mode (v0).
                        t.error_code = match crate::state::validate_topic_name(&n) {
                            Err((code, _)) => code,
                            Ok(()) => ec::UNKNOWN_TOPIC_OR_PARTITION,
                        };
                        t.name = Some(tn(&n));
                    }
                    None => {
                        t.error_code = ec::UNKNOWN_TOPIC_ID;
                        t.topic_id = id;
                    }
                }
                resp.topics.push(t);
            }
        }
    }
    let _ = broker;
    resp
}

fn describe_cluster(cluster: &Cluster) -> kafka_protocol::messages::DescribeClusterResponse {
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    let image = cluster.image();
    let mut r = kafka_protocol::messages::DescribeClusterResponse::default();
    r.brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let l = b.listeners.first()?;
            let mut db = DescribeClusterBroker::default();
            db.broker_id = BrokerId(b.id);
            db.host = sb(&l.host);
            db.port = i32::from(l.port);
            db.rack = b.rack.as_deref().map(sb);
            Some(db)
        })
        .collect();
    r.cluster_id = sb(&cluster.cluster_id);
    r.controller_id = controller_id(cluster);
    r
}

/// A failed forward as (code, message).
fn forward_error(e: super::ClusterError) -> (i16, String) {
    match e {
        super::ClusterError::Controller { code, message } => (code, message),
        super::ClusterError::Timeout => (ec::REQUEST_TIMED_OUT, e.to_string()),
        other => (NOT_CONTROLLER, other.to_string()),
    }
}

/// [`forward`] for other modules of the cluster.
pub(crate) async fn forward_call(cluster: &Cluster, call: &Call) -> Result<Answer, (i16, String)> {
    forward(cluster, call).await
}

/// Sends `call` and waits until the answer is applied locally.
async fn forward(cluster: &Cluster, call: &Call) -> Result<Answer, (i16, String)> {
    let env = cluster
        .call(call, ADMIN_TIMEOUT)
        .await
        .map_err(forward_error)?;
    if let Answer::Error { code, message } = env.answer {
        return Err((code, message));
    }
    if !cluster.wait_reconciled(env.index, ADMIN_TIMEOUT).await {
        return Err((
            ec::REQUEST_TIMED_OUT,
            "the change committed but was not applied on this broker in time".into(),
        ));
    }
    Ok(env.answer)
}

async fn create_topics(
    cluster: &Cluster,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let mut results: BTreeMap<String, CreatableTopicResult> = BTreeMap::new();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut forwarded = Vec::new();
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        order.push(name.clone());
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let refused: Option<(i16, String)> = if !seen.insert(name.clone()) {
            Some((
                ec::INVALID_REQUEST,
                format!("Create topics request from client contains a duplicate topic '{name}'"),
            ))
        } else if super::publisher::is_local_internal(&name) {
            Some((
                ec::INVALID_REQUEST,
                format!("'{name}' is a node-local internal topic in cluster mode v0"),
            ))
        } else if !t.assignments.is_empty()
            && !t
                .assignments
                .iter()
                .enumerate()
                .all(|(i, a)| a.partition_index == i as i32)
        {
            Some((
                ec::INVALID_REPLICA_ASSIGNMENT,
                "partitions should be a consecutive 0-based integer sequence".into(),
            ))
        } else if t.replication_factor == 0 || t.replication_factor < -1 {
            Some((
                ec::INVALID_REPLICATION_FACTOR,
                "Replication factor must be larger than 0, or -1 to use the default.".into(),
            ))
        } else {
            let mut configs = Vec::new();
            let mut bad = None;
            for c in &t.configs {
                match &c.value {
                    Some(v) => configs.push((c.name.as_str().to_string(), v.as_str().to_string())),
                    None => {
                        bad = Some((
                            ec::INVALID_CONFIG,
                            format!(
                                "Null value not supported for topic configs: {}",
                                c.name.as_str()
                            ),
                        ))
                    }
                }
            }
            if bad.is_none() {
                let map: BTreeMap<String, String> = configs.iter().cloned().collect();
                if let Err(e) =
                    crate::config::build_log_config(&holdfast_log::LogConfig::default(), &map)
                {
                    bad = Some((ec::INVALID_CONFIG, e.to_string()));
                }
            }
            if bad.is_none() {
                let mut manual: Vec<_> = t
                    .assignments
                    .iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect::<Vec<i32>>())
                    .collect();
                forwarded.push((
                    name.clone(),
                    t.num_partitions,
                    t.replication_factor,
                    configs,
                    (!manual.is_empty()).then(|| std::mem::take(&mut manual)),
                ));
            }
            bad
        };
        if let Some((code, msg)) = refused {
            r.error_code = code;
            r.error_message = Some(sb(&msg));
        }
        results.entry(name).or_insert(r);
    }
    if !forwarded.is_empty() {
        let names: Vec<String> = forwarded.iter().map(|f| f.0.clone()).collect();
        let call = Call::CreateTopics {
            topics: forwarded,
            validate_only: req.validate_only,
        };
        match forward(cluster, &call).await {
            Ok(Answer::Topics(outcomes)) => {
                for o in outcomes {
                    let Some(r) = results.get_mut(&o.name) else {
                        continue;
                    };
                    if o.error != ec::NONE {
                        r.error_code = o.error;
                        r.error_message = o.message.as_deref().map(sb);
                        continue;
                    }
                    if version >= 7 && !req.validate_only {
                        r.topic_id = Uuid::from_u128(o.id);
                    }
                    r.num_partitions = o.partitions;
                    r.replication_factor = o.replication_factor;
                }
            }
            Ok(other) => {
                for n in &names {
                    if let Some(r) = results.get_mut(n) {
                        r.error_code = ec::INVALID_REQUEST;
                        r.error_message = Some(sb(&format!("unexpected answer {other:?}")));
                    }
                }
            }
            Err((code, msg)) => {
                for n in &names {
                    if let Some(r) = results.get_mut(n) {
                        r.error_code = code;
                        r.error_message = Some(sb(&msg));
                    }
                }
            }
        }
    }
    let mut emitted = HashSet::new();
    for n in order {
        if emitted.insert(n.clone()) {
            if let Some(r) = results.remove(&n) {
                resp.topics.push(r);
            }
        }
    }
    resp
}

async fn delete_topics(
    cluster: &Cluster,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let image = cluster.image();
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
    let mut resp = DeleteTopicsResponse::default();
    let mut names = Vec::new();
    for (name, id) in &targets {
        let resolved = match name {
            Some(n) if !n.is_empty() => Some(n.clone()),
            _ => image
                .topics
                .get(&holdfast_metadata::TopicId(id.as_u128()))
                .map(|t| t.name.clone()),
        };
        let mut r = DeletableTopicResult::default();
        r.name = resolved.as_deref().map(tn);
        if version >= 6 {
            r.topic_id = resolved
                .as_deref()
                .and_then(|n| image.topic_by_name(n))
                .map_or(*id, |t| Uuid::from_u128(t.id.0));
        }
        match resolved {
            None => {
                r.error_code = ec::UNKNOWN_TOPIC_ID;
                if version >= 5 {
                    r.error_message = Some(sb("This server does not host this topic ID."));
                }
            }
            Some(n) => names.push(n),
        }
        resp.responses.push(r);
    }
    if names.is_empty() {
        return resp;
    }
    let outcome = forward(cluster, &Call::DeleteTopics { names }).await;
    for r in &mut resp.responses {
        let Some(name) = r.name.as_ref().map(|n| n.0.as_str().to_string()) else {
            continue;
        };
        if r.error_code != ec::NONE {
            continue;
        }
        let (code, msg) = match &outcome {
            Ok(Answer::Items(items)) => items
                .iter()
                .find(|i| i.0 == name)
                .map_or((ec::NONE, None), |i| (i.1, i.2.clone())),
            Ok(other) => (
                ec::INVALID_REQUEST,
                Some(format!("unexpected answer {other:?}")),
            ),
            Err((code, msg)) => (*code, Some(msg.clone())),
        };
        r.error_code = code;
        if version >= 5 && code != ec::NONE {
            r.error_message = msg.as_deref().map(sb);
        }
    }
    resp
}

async fn create_partitions(
    cluster: &Cluster,
    req: kafka_protocol::messages::CreatePartitionsRequest,
) -> kafka_protocol::messages::CreatePartitionsResponse {
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    let mut resp = kafka_protocol::messages::CreatePartitionsResponse::default();
    let mut topics = Vec::new();
    for t in &req.topics {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        if t.assignments.is_some() {
            r.error_code = ec::INVALID_REPLICA_ASSIGNMENT;
            r.error_message = Some(sb(
                "Manual replica assignment is not supported in cluster mode v0.",
            ));
        } else {
            topics.push((t.name.0.as_str().to_string(), t.count));
        }
        resp.results.push(r);
    }
    if topics.is_empty() {
        return resp;
    }
    let outcome = forward(
        cluster,
        &Call::CreatePartitions {
            topics,
            validate_only: req.validate_only,
        },
    )
    .await;
    for r in &mut resp.results {
        if r.error_code != ec::NONE {
            continue;
        }
        let name = r.name.0.as_str().to_string();
        let (code, msg) = match &outcome {
            Ok(Answer::Items(items)) => items
                .iter()
                .find(|i| i.0 == name)
                .map_or((ec::NONE, None), |i| (i.1, i.2.clone())),
            Ok(other) => (
                ec::INVALID_REQUEST,
                Some(format!("unexpected answer {other:?}")),
            ),
            Err((code, msg)) => (*code, Some(msg.clone())),
        };
        r.error_code = code;
        if code != ec::NONE {
            r.error_message = msg.as_deref().map(sb);
        }
    }
    resp
}

impl Cluster {
    /// (Incremental)AlterConfigs of a topic in cluster mode (called from a blocking thread
    /// by `Broker::set_topic_config`, after the values were validated): the controller
    /// records the new overrides; returns once they are applied locally.
    /// Dynamic broker configs (IncrementalAlterConfigs on a BROKER resource) through the
    /// controller; `broker` None: the cluster-wide default.
    pub(crate) fn set_broker_configs_blocking(
        &self,
        broker: Option<i32>,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        super::throttle::check_dynamic_broker_configs(&set, &delete)
            .map_err(|m| (ec::INVALID_CONFIG, m))?;
        let call = Call::SetBrokerConfigs {
            broker,
            set: set.into_iter().collect(),
            delete,
            validate_only,
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| (ec::INVALID_REQUEST, e.to_string()))?;
        match handle.block_on(forward(self, &call))? {
            Answer::Items(items) => match items.into_iter().find(|i| i.1 != ec::NONE) {
                Some((_, code, msg)) => Err((code, msg.unwrap_or_default())),
                None => Ok(()),
            },
            other => Err((ec::INVALID_REQUEST, format!("unexpected answer {other:?}"))),
        }
    }

    /// This node's dynamic broker configs from the image (its own, then the cluster-wide
    /// defaults it does not override), with Kafka's config sources.
    pub(crate) fn dynamic_broker_configs(&self) -> Vec<(String, String, i8)> {
        const DYNAMIC_BROKER_CONFIG: i8 = 1;
        const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 4;
        let image = self.image();
        let mut out: Vec<(String, String, i8)> = Vec::new();
        if let Some(c) = image
            .configs
            .get(&holdfast_metadata::ConfigResource::Broker(self.node_id))
        {
            out.extend(
                c.iter()
                    .map(|(k, v)| (k.clone(), v.clone(), DYNAMIC_BROKER_CONFIG)),
            );
        }
        if let Some(c) = image
            .configs
            .get(&holdfast_metadata::ConfigResource::Cluster)
        {
            for (k, v) in c {
                if !out.iter().any(|(x, _, _)| x == k) {
                    out.push((k.clone(), v.clone(), DYNAMIC_DEFAULT_BROKER_CONFIG));
                }
            }
        }
        out
    }

    pub(crate) fn set_topic_configs_blocking(
        &self,
        current: &BTreeMap<String, String>,
        topic: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let delete: Vec<String> = current
            .keys()
            .filter(|k| !overrides.contains_key(*k))
            .cloned()
            .collect();
        let call = Call::SetTopicConfigs {
            topic: topic.to_string(),
            set: overrides.into_iter().collect(),
            delete,
            validate_only,
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| (ec::INVALID_REQUEST, e.to_string()))?;
        match handle.block_on(forward(self, &call))? {
            Answer::Items(items) => match items.into_iter().find(|i| i.1 != ec::NONE) {
                Some((_, code, msg)) => Err((code, msg.unwrap_or_default())),
                None => Ok(()),
            },
            other => Err((ec::INVALID_REQUEST, format!("unexpected answer {other:?}"))),
        }
    }
}
