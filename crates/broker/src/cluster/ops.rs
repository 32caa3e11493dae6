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
