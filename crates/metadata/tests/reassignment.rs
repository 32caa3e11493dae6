//! AlterPartitionReassignments in the controller (Kafka's `ReplicationControlManager
//! .alterPartitionReassignment`, `PartitionReassignmentReplicas`, `PartitionReassignmentRevert`):
//! adding replicas waits for the ISR, completion drops the removed replicas (with a leader
//! epoch bump, and a new leader when the leader leaves), cancel reverts, and bad targets get
//! Kafka's error codes.

mod common;

use common::Cluster;
use holdfast_metadata::controller::{codes, ControllerResponse, IsrMember};
use holdfast_metadata::{ControllerRequest, PartitionReg, TopicId};

fn reassign(c: &mut Cluster, topic: &str, partition: i32, target: Option<&[i32]>) -> i16 {
    match c.request(ControllerRequest::AlterPartitionReassignments {
        partitions: vec![(topic.into(), partition, target.map(<[i32]>::to_vec))],
        allow_replication_factor_change: true,
    }) {
        Ok(ControllerResponse::Reassignments(r)) => {
            assert_eq!(r.len(), 1);
            r[0].error
        }
        other => panic!("reassign: {other:?}"),
    }
}

fn part(c: &Cluster, topic: TopicId, partition: i32) -> PartitionReg {
    c.image
        .partition(topic, partition)
        .expect("partition")
        .clone()
}

/// The leader proposes `isr`; returns the error code.
fn set_isr(c: &mut Cluster, topic: TopicId, partition: i32, isr: &[i32]) -> i16 {
    let p = part(c, topic, partition);
    let req = ControllerRequest::AlterPartition {
        broker_id: p.leader,
        broker_epoch: c.image.brokers[&p.leader].epoch,
        topic,
        partition,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: isr
            .iter()
            .map(|id| IsrMember {
                id: *id,
                broker_epoch: c.image.brokers[id].epoch,
            })
            .collect(),
        leader_recovery: p.leader_recovery,
    };
    match c.request(req) {
        Ok(ControllerResponse::AlterPartition(r)) => r.error,
        other => panic!("alter: {other:?}"),
    }
}

fn setup() -> (Cluster, TopicId, Vec<i32>) {
    let mut c = Cluster::new(7);
    c.start_brokers(&[1, 2, 3, 4]);
    let (err, id) = c.create_topic("t", 1, 3, &[]);
    assert_eq!(err, codes::NONE);
    let replicas = part(&c, id, 0).replicas;
    (c, id, replicas)
}

#[test]
fn moving_a_follower_waits_for_the_isr_then_drops_the_old_replica() {
    let (mut c, id, replicas) = setup();
    let spare = *[1, 2, 3, 4]
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("a spare broker");
    let before = part(&c, id, 0);
    let leaving = replicas[2];
    let target = vec![replicas[0], replicas[1], spare];
    assert_eq!(reassign(&mut c, "t", 0, Some(&target)), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, vec![replicas[0], replicas[1], spare, leaving]);
    assert_eq!(p.adding, vec![spare]);
    assert_eq!(p.removing, vec![leaving]);
    assert_eq!(
        p.isr, before.isr,
        "the ISR does not change when replicas are added"
    );
    assert_eq!(
        p.leader_epoch, before.leader_epoch,
        "adding a replica bumps no leader epoch"
    );
    assert_eq!(p.partition_epoch, before.partition_epoch + 1);

    // An ISR expansion without the new replica completes nothing.
    let mut isr = p.isr.clone();
    isr.retain(|r| *r != leaving);
    assert_eq!(set_isr(&mut c, id, 0, &isr), codes::NONE);
    assert_eq!(part(&c, id, 0).adding, vec![spare]);

    // The new replica caught up: the leader adds it, the reassignment completes.
    let mut isr = part(&c, id, 0).isr.clone();
    isr.push(spare);
    let epoch_before = part(&c, id, 0).leader_epoch;
    assert_eq!(set_isr(&mut c, id, 0, &isr), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, target);
    assert!(p.adding.is_empty() && p.removing.is_empty());
    assert!(!p.isr.contains(&leaving));
    assert!(p.isr.contains(&spare));
    assert_eq!(p.leader, replicas[0]);
    assert_eq!(
        p.leader_epoch,
        epoch_before + 1,
        "removing a replica fences it with a leader epoch bump"
    );
    p.check_invariants().expect("invariants");
}

#[test]
fn moving_the_leader_elects_a_target_replica_on_completion() {
    let (mut c, id, replicas) = setup();
    let spare = *[1, 2, 3, 4]
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("spare");
    let old_leader = part(&c, id, 0).leader;
    let target: Vec<i32> = std::iter::once(spare)
        .chain(replicas.iter().copied().filter(|r| *r != old_leader))
        .collect();
    assert_eq!(reassign(&mut c, "t", 0, Some(&target)), codes::NONE);
    assert_eq!(
        part(&c, id, 0).leader,
        old_leader,
        "the leader serves until completion"
    );
    let mut isr = part(&c, id, 0).isr.clone();
    isr.push(spare);
    // Kafka answers NEW_LEADER_ELECTED when the expansion completed a reassignment that
    // moved leadership away from the sender.
    assert_eq!(set_isr(&mut c, id, 0, &isr), codes::NEW_LEADER_ELECTED);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, target);
    assert_eq!(p.leader, spare, "the first target replica in the ISR leads");
    assert!(!p.isr.contains(&old_leader));
}

#[test]
fn pure_removal_and_reordering_complete_at_once() {
    let (mut c, id, replicas) = setup();
    let reordered = vec![replicas[2], replicas[0], replicas[1]];
    assert_eq!(reassign(&mut c, "t", 0, Some(&reordered)), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, reordered);
    assert!(p.adding.is_empty() && p.removing.is_empty());
    // Same assignment again: nothing to do, nothing written.
    let records = c.applied.len();
    assert_eq!(reassign(&mut c, "t", 0, Some(&reordered)), codes::NONE);
    assert_eq!(c.applied.len(), records);
    // Shrinking to two replicas completes at once (every remaining replica is in the ISR).
    let two = vec![replicas[2], replicas[0]];
    assert_eq!(reassign(&mut c, "t", 0, Some(&two)), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, two);
    assert_eq!(p.isr.len(), 2);
    assert!(!p.isr.contains(&replicas[1]));
}

#[test]
fn cancel_reverts_to_the_original_replicas() {
    let (mut c, id, replicas) = setup();
    let spare = *[1, 2, 3, 4]
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("spare");
    assert_eq!(
        reassign(&mut c, "t", 0, None),
        codes::NO_REASSIGNMENT_IN_PROGRESS
    );
    let target = vec![spare, replicas[1], replicas[2]];
    assert_eq!(reassign(&mut c, "t", 0, Some(&target)), codes::NONE);
    assert!(!part(&c, id, 0).adding.is_empty());
    assert_eq!(reassign(&mut c, "t", 0, None), codes::NONE);
    let p = part(&c, id, 0);
    // As in Kafka, the original replicas keep the order they have in the reassigning list.
    let sorted = |v: &[i32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&p.replicas), sorted(&replicas));
    assert!(p.adding.is_empty() && p.removing.is_empty());
    assert!(!p.isr.contains(&spare));
    assert_eq!(
        reassign(&mut c, "t", 0, None),
        codes::NO_REASSIGNMENT_IN_PROGRESS
    );
}

#[test]
fn a_new_target_replaces_an_ongoing_reassignment() {
    let (mut c, id, replicas) = setup();
    let spare = *[1, 2, 3, 4]
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("spare");
    assert_eq!(
        reassign(&mut c, "t", 0, Some(&[spare, replicas[1], replicas[2]])),
        codes::NONE
    );
    // Back to the original replicas: the added replica leaves, nothing remains to do.
    assert_eq!(reassign(&mut c, "t", 0, Some(&replicas)), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, replicas);
    assert!(p.adding.is_empty() && p.removing.is_empty());
}

#[test]
fn invalid_targets_are_refused_with_kafkas_codes() {
    let (mut c, id, replicas) = setup();
    let before = part(&c, id, 0);
    assert_eq!(
        reassign(&mut c, "t", 0, Some(&[])),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(&mut c, "t", 0, Some(&[replicas[0], replicas[0]])),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(&mut c, "t", 0, Some(&[replicas[0], 99])),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(&mut c, "t", 5, Some(&replicas)),
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        reassign(&mut c, "nope", 0, Some(&replicas)),
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(part(&c, id, 0), before, "refused requests change nothing");
}

#[test]
fn a_fenced_removed_replica_does_not_block_completion() {
    let (mut c, id, replicas) = setup();
    let spare = *[1, 2, 3, 4]
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("spare");
    let leader = part(&c, id, 0).leader;
    let leaving = *replicas.iter().find(|r| **r != leader).expect("a follower");
    let target: Vec<i32> = replicas
        .iter()
        .map(|r| if *r == leaving { spare } else { *r })
        .collect();
    assert_eq!(reassign(&mut c, "t", 0, Some(&target)), codes::NONE);
    // The leaving replica is fenced (session expired) while the new one catches up.
    c.now_ms += 60_000;
    for b in [1, 2, 3, 4].iter().filter(|b| **b != leaving) {
        c.heartbeat(*b);
    }
    c.tick();
    assert!(!part(&c, id, 0).isr.contains(&leaving));
    let mut isr = part(&c, id, 0).isr.clone();
    isr.push(spare);
    assert_eq!(set_isr(&mut c, id, 0, &isr), codes::NONE);
    let p = part(&c, id, 0);
    assert_eq!(p.replicas, target);
    assert!(p.adding.is_empty() && p.removing.is_empty());
}
