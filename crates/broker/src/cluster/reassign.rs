//! Partition reassignment as Kafka APIs: AlterPartitionReassignments (API 45, v0-1) is
//! forwarded to the active controller (`holdfast_metadata::controller`, Kafka's
//! `ReplicationControlManager.alterPartitionReassignment` rules); ListPartitionReassignments
//! (API 46) is answered from the local image. Catch-up of the new replicas goes through normal
//! replication, metered by the reassignment throttles (`super::throttle`); a replica removed
//! by a completed reassignment has its log deleted by the publisher.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::api::forward_call;
use super::controller::{Answer, Call};
use super::Cluster;
use crate::errors as ec;
use crate::state::Broker;

const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// (topic, partition, target replicas) in request order.
type Wanted = Vec<(String, i32, Option<Vec<i32>>)>;

fn wanted(req: &AlterPartitionReassignmentsRequest) -> Wanted {
    req.topics
        .iter()
        .flat_map(|t| {
            let name = t.name.0.as_str().to_string();
            t.partitions.iter().map(move |p| {
                (
                    name.clone(),
                    p.partition_index,
                    p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
                )
            })
        })
        .collect()
}

/// Groups per-partition outcomes by topic, in first-seen order.
fn response(
    version: i16,
    allow_rf_change: bool,
    results: Vec<(String, i32, i16, Option<String>)>,
) -> AlterPartitionReassignmentsResponse {
    let mut resp = AlterPartitionReassignmentsResponse::default();
    if version >= 1 {
        resp.allow_replication_factor_change = allow_rf_change;
    }
    for (topic, partition, code, message) in results {
        let i = match resp
            .responses
            .iter()
            .position(|t| t.name.0.as_str() == topic)
        {
            Some(i) => i,
            None => {
                let mut t = ReassignableTopicResponse::default();
                t.name = tn(&topic);
                resp.responses.push(t);
                resp.responses.len() - 1
            }
        };
        let mut p = ReassignablePartitionResponse::default();
        p.partition_index = partition;
        p.error_code = code;
        p.error_message = message.map(StrBytes::from_string);
        resp.responses[i].partitions.push(p);
    }
    resp
}

/// AlterPartitionReassignments on a cluster node; answered once the change is applied here.
pub(crate) async fn alter_partition_reassignments(
    cluster: &Cluster,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let allow_rf_change = version < 1 || req.allow_replication_factor_change;
    let partitions = wanted(&req);
    let call = Call::AlterPartitionReassignments {
        partitions: partitions.clone(),
        allow_replication_factor_change: allow_rf_change,
    };
    let fail = |code: i16, message: String| {
        let results = partitions
            .iter()
            .map(|(t, p, _)| (t.clone(), *p, code, Some(message.clone())))
            .collect();
        let mut resp = response(version, allow_rf_change, results);
        resp.error_code = code;
        resp.error_message = Some(StrBytes::from_string(message));
        resp
    };
    match forward_call(cluster, &call).await {
        Ok(Answer::Reassigned(results)) => {
            for (t, p, code, message) in &results {
                if *code != ec::NONE {
                    tracing::info!(topic = %t, partition = p, code, message = ?message, "reassignment refused");
                }
            }
            response(version, allow_rf_change, results)
        }
        Ok(other) => fail(ec::INVALID_REQUEST, format!("unexpected answer {other:?}")),
        Err((code, message)) => fail(code, message),
    }
}

/// ListPartitionReassignments on a cluster node, from the local image: the partitions with
/// replicas being added or removed (all topics when `topics` is null).
pub(crate) fn list_partition_reassignments(
    cluster: &Cluster,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = cluster.image();
    let mut resp = ListPartitionReassignmentsResponse::default();
    let ongoing = |p: &holdfast_metadata::PartitionReg, index: i32| {
        (!p.adding.is_empty() || !p.removing.is_empty()).then(|| {
            let mut o = OngoingPartitionReassignment::default();
            o.partition_index = index;
            o.replicas = p.replicas.iter().map(|r| BrokerId(*r)).collect();
            o.adding_replicas = p.adding.iter().map(|r| BrokerId(*r)).collect();
            o.removing_replicas = p.removing.iter().map(|r| BrokerId(*r)).collect();
            o
        })
    };
    let mut push = |name: &str, parts: Vec<OngoingPartitionReassignment>| {
        if !parts.is_empty() {
            let mut t = OngoingTopicReassignment::default();
            t.name = tn(name);
            t.partitions = parts;
            resp.topics.push(t);
        }
    };
    match req.topics {
        None => {
            for t in image.topics.values() {
                let parts = t
                    .partitions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| ongoing(p, i as i32))
                    .collect();
                push(&t.name, parts);
            }
        }
        Some(topics) => {
            for wanted in topics {
                let Some(t) = image.topic_by_name(wanted.name.0.as_str()) else {
                    continue;
                };
                let parts = wanted
                    .partition_indexes
                    .iter()
                    .filter_map(|i| {
                        let p = t.partitions.get(usize::try_from(*i).ok()?)?;
                        ongoing(p, *i)
                    })
                    .collect();
                push(&t.name, parts);
            }
        }
    }
    resp
}

/// AlterPartitionReassignments on a single node: its one replica is the only assignment.
pub(crate) fn alter_partition_reassignments_single(
    broker: &Broker,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let allow_rf_change = version < 1 || req.allow_replication_factor_change;
    let me = broker.config.node_id;
    let results = wanted(&req)
        .into_iter()
        .map(|(topic, partition, target)| {
            let exists = broker
                .topic(&topic)
                .is_some_and(|t| usize::try_from(partition).is_ok_and(|i| i < t.partitions.len()));
            let (code, message) = match target {
                _ if !exists => (
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(format!("Unable to find partition {topic}:{partition}.")),
                ),
                None => (
                    NO_REASSIGNMENT_IN_PROGRESS,
                    Some("No partition reassignment is in progress.".to_string()),
                ),
                Some(r) if r == [me] => (ec::NONE, None),
                Some(_) => (
                    INVALID_REPLICA_ASSIGNMENT,
                    Some(format!(
                        "This broker runs alone (node {me}): the only assignment is [{me}]."
                    )),
                ),
            };
            (topic, partition, code, message)
        })
        .collect();
    response(version, allow_rf_change, results)
}
