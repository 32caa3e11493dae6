//! Leader elections as operations: ElectLeaders (API 43) in cluster mode, forwarded to the
//! active controller (PREFERRED and UNCLEAN, Kafka's `ReplicationControlManager
//! .electLeaders` rules in `holdfast_metadata::controller`), and its single-node answer.

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::api::forward_call;
use super::controller::{Answer, Call};
use super::Cluster;
use crate::errors as ec;
use crate::state::Broker;

const ELECTION_NOT_NEEDED: i16 = 84;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// The requested partitions in order (`None`: every partition).
fn wanted(req: &ElectLeadersRequest) -> Option<Vec<(String, i32)>> {
    req.topic_partitions.as_ref().map(|tps| {
        tps.iter()
            .flat_map(|t| {
                let name = t.topic.0.as_str().to_string();
                t.partitions.iter().map(move |p| (name.clone(), *p))
            })
            .collect()
    })
}

/// Groups per-partition outcomes by topic, in first-seen order; `topics` are listed first
/// (with no partitions unless some result names them).
fn response(
    topics: Vec<String>,
    results: Vec<(String, i32, i16, Option<String>)>,
) -> ElectLeadersResponse {
    let mut out: Vec<ReplicaElectionResult> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut slot = |out: &mut Vec<ReplicaElectionResult>, name: &str| -> usize {
        *index.entry(name.to_string()).or_insert_with(|| {
            let mut r = ReplicaElectionResult::default();
            r.topic = tn(name);
            out.push(r);
            out.len() - 1
        })
    };
    for t in topics {
        slot(&mut out, &t);
    }
    for (topic, partition, code, message) in results {
        let i = slot(&mut out, &topic);
        let mut p = PartitionResult::default();
        p.partition_id = partition;
        p.error_code = code;
        p.error_message = message.map(StrBytes::from_string);
        out[i].partition_result.push(p);
    }
    let mut resp = ElectLeadersResponse::default();
    resp.replica_election_results = out;
    resp
}

/// ElectLeaders on a cluster node: the controller elects, the answer is sent once the new
/// leaders are applied locally.
pub(crate) async fn elect_leaders(
    cluster: &Cluster,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let election_type = if version >= 1 { req.election_type } else { 0 };
    let partitions = wanted(&req);
    let fail = |code: i16, message: String| {
        let results = partitions
            .iter()
            .flatten()
            .map(|(t, p)| (t.clone(), *p, code, Some(message.clone())))
            .collect();
        let mut resp = response(Vec::new(), results);
        if version >= 1 {
            resp.error_code = code;
        }
        resp
    };
    let unclean = match election_type {
        0 => false,
        1 => true,
        other => {
            return fail(
                ec::INVALID_REQUEST,
                format!("Unknown election type {other}"),
            )
        }
    };
    let call = Call::ElectLeaders {
        unclean,
        partitions: partitions.clone(),
    };
    match forward_call(cluster, &call).await {
        Ok(Answer::Elected(results)) => {
            // Kafka lists every topic when electing all partitions (with only the
            // partitions that needed an election).
            let topics = if partitions.is_none() {
                cluster
                    .image()
                    .topics
                    .values()
                    .map(|t| t.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            response(
                topics,
                results
                    .into_iter()
                    .map(|(t, p, code)| (t, p, code, None))
                    .collect(),
            )
        }
        Ok(other) => fail(ec::INVALID_REQUEST, format!("unexpected answer {other:?}")),
        Err((code, message)) => fail(code, message),
    }
}

/// The metadata log's topic name in DescribeQuorum (Kafka's `__cluster_metadata`, partition 0).
pub(crate) const METADATA_TOPIC: &str = "__cluster_metadata";

/// DescribeQuorum (API 55) on a cluster node: the Raft leader's view, fetched through the
/// controller channel (Kafka forwards it to the active controller too). Raft log index `i`
/// is reported as offset `i`, so a log end offset is the last index + 1; the high watermark
/// is the leader's applied (committed) index + 1. Per-follower fetch times are not tracked:
/// followers report -1 (unknown), as Kafka does for a replica it has not heard from.
pub(crate) async fn describe_quorum(
    cluster: &Cluster,
    req: kafka_protocol::messages::DescribeQuorumRequest,
) -> kafka_protocol::messages::DescribeQuorumResponse {
    use kafka_protocol::messages::describe_quorum_response::{
        PartitionData, ReplicaState, TopicData,
    };
    use kafka_protocol::messages::{BrokerId, DescribeQuorumResponse};
    let mut resp = DescribeQuorumResponse::default();
    let valid = req.topics.len() == 1
        && req.topics[0].topic_name.0.as_str() == METADATA_TOPIC
        && req.topics[0].partitions.len() == 1
        && req.topics[0].partitions[0].partition_index == 0;
    if !valid {
        resp.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
        resp.error_message = Some(StrBytes::from_static_str(
            "DescribeQuorum only describes __cluster_metadata partition 0",
        ));
        return resp;
    }
    let mut part = PartitionData::default();
    part.partition_index = 0;
    match cluster
        .call(&Call::DescribeQuorum, super::ADMIN_TIMEOUT)
        .await
    {
        Ok(env) => match env.answer {
            Answer::Quorum(q) => {
                let now = crate::state::now_ms();
                let leader_end = q.last_log_index.map_or(0, |i| i as i64 + 1);
                let state = |id: u64| {
                    let mut r = ReplicaState::default();
                    r.replica_id = BrokerId(id as i32);
                    if Some(id) == q.leader {
                        r.log_end_offset = leader_end;
                        r.last_fetch_timestamp = now;
                        r.last_caught_up_timestamp = now;
                    } else {
                        r.log_end_offset = q
                            .matched_index
                            .as_ref()
                            .and_then(|m| m.get(&id).copied().flatten())
                            .map_or(-1, |i| i as i64 + 1);
                        r.last_fetch_timestamp = -1;
                        r.last_caught_up_timestamp = -1;
                    }
                    r
                };
                part.leader_id = BrokerId(q.leader.map_or(-1, |l| l as i32));
                part.leader_epoch = i32::try_from(q.term).unwrap_or(i32::MAX);
                part.high_watermark = q.last_applied_index.map_or(0, |i| i as i64 + 1);
                part.current_voters = q.voters.iter().map(|id| state(*id)).collect();
                part.observers = q.learners.iter().map(|id| state(*id)).collect();
            }
            other => {
                part.error_code = ec::UNKNOWN_SERVER_ERROR;
                part.error_message = Some(StrBytes::from_string(format!(
                    "unexpected controller answer {other:?}"
                )));
            }
        },
        Err(e) => {
            part.error_code = ec::NOT_LEADER_OR_FOLLOWER;
            part.error_message = Some(StrBytes::from_string(format!(
                "the metadata quorum leader did not answer: {e}"
            )));
            part.leader_id = BrokerId(-1);
            part.leader_epoch = -1;
        }
    }
    let mut topic = TopicData::default();
    topic.topic_name = tn(METADATA_TOPIC);
    topic.partitions = vec![part];
    resp.topics = vec![topic];
    resp
}

/// DescribeQuorum on a single node: there is no metadata quorum (Kafka's ZooKeeper-mode
/// brokers did not implement the API either).
pub(crate) fn describe_quorum_single() -> kafka_protocol::messages::DescribeQuorumResponse {
    let mut resp = kafka_protocol::messages::DescribeQuorumResponse::default();
    resp.error_code = ec::INVALID_REQUEST;
    resp.error_message = Some(StrBytes::from_static_str(
        "this broker runs alone: there is no metadata quorum",
    ));
    resp
}

/// ElectLeaders on a single node: every partition has one replica, which leads it.
pub(crate) fn elect_leaders_single(
    broker: &Broker,
    req: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let results = wanted(&req)
        .unwrap_or_default()
        .into_iter()
        .map(|(t, p)| {
            let code = if broker.partition(&t, p).is_some() {
                ELECTION_NOT_NEEDED
            } else {
                ec::UNKNOWN_TOPIC_OR_PARTITION
            };
            (t, p, code, None)
        })
        .collect();
    response(Vec::new(), results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_grouped_by_topic_in_order() {
        let r = response(
            vec!["z".into()],
            vec![
                ("a".into(), 1, 0, None),
                ("b".into(), 0, 84, None),
                ("a".into(), 0, 80, Some("m".into())),
            ],
        );
        let names: Vec<_> = r
            .replica_election_results
            .iter()
            .map(|t| t.topic.0.as_str().to_string())
            .collect();
        assert_eq!(names, ["z", "a", "b"]);
        assert!(r.replica_election_results[0].partition_result.is_empty());
        let a: Vec<_> = r.replica_election_results[1]
            .partition_result
            .iter()
            .map(|p| (p.partition_id, p.error_code))
            .collect();
        assert_eq!(a, [(1, 0), (0, 80)]);
    }
}
