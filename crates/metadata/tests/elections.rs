//! ElectLeaders (PREFERRED, UNCLEAN) outcomes and error codes, and the automatic leader
//! rebalance (`auto.leader.rebalance.enable`).

mod common;

use common::Cluster;
use holdfast_metadata::controller::{codes, ControllerResponse, ElectionType, IsrMember};
use holdfast_metadata::{ControllerConfig, ControllerRequest, Record, TopicId};

/// The leader of `topic`/`partition` sets the ISR to `isr`; returns the error code.
fn set_isr(c: &mut Cluster, topic: TopicId, partition: i32, isr: &[i32]) -> i16 {
    let p = c
        .image
        .partition(topic, partition)
        .expect("partition")
        .clone();
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

/// Broker `id` goes through controlled shutdown and registers again (clean restart): it
/// leads nothing and sits in no ISR.
fn restart_cleanly(c: &mut Cluster, id: i32, others: &[i32]) {
    let h = c.heartbeat_full(id, false, true);
    assert!(h.in_controlled_shutdown || h.should_shut_down);
    assert_eq!(c.leads(id), 0, "leadership moved before the broker stops");
    for o in others {
        c.heartbeat(*o);
    }
    let h = c.heartbeat_full(id, false, true);
    assert!(h.should_shut_down);
    c.register(id, None);
    assert!(!c.heartbeat(id).is_fenced);
    assert_eq!(c.in_isrs(id), 0);
}

/// The partitions of `topic` whose preferred replica is `id`.
fn preferred_of(c: &Cluster, topic: TopicId, id: i32) -> Vec<i32> {
    c.image.topics[&topic]
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.replicas.first() == Some(&id))
        .map(|(i, _)| i as i32)
        .collect()
}

/// Puts broker `id` back into the ISR of every partition of `topic` that has it as a replica.
fn rejoin_isrs(c: &mut Cluster, topic: TopicId, id: i32) {
    let n = c.image.topics[&topic].partitions.len() as i32;
    for i in 0..n {
        let p = c.image.partition(topic, i).expect("p").clone();
        if p.replicas.contains(&id) && !p.isr.contains(&id) {
            let mut isr = p.isr.clone();
            isr.push(id);
            assert_eq!(set_isr(c, topic, i, &isr), codes::NONE);
        }
    }
}

fn elect_all(c: &mut Cluster, election: ElectionType) -> Vec<(String, i32, i16)> {
    match c.request(ControllerRequest::ElectLeaders {
        election,
        partitions: None,
    }) {
        Ok(ControllerResponse::ElectLeaders(r)) => r
            .into_iter()
            .map(|r| (r.topic, r.partition, r.error))
            .collect(),
        other => panic!("elect: {other:?}"),
    }
}

#[test]
fn preferred_election_outcomes_and_codes() {
    let mut c = Cluster::with_config(
        ControllerConfig {
            auto_leader_rebalance_enable: false,
            ..ControllerConfig::default()
        },
        21,
    );
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 3, 3, &[]);
    let b = 2;
    let mine = preferred_of(&c, id, b);
    assert!(!mine.is_empty());
    let p = mine[0];
    // Led by its preferred replica: nothing to do.
    assert_eq!(
        c.elect(ElectionType::Preferred, "t", p),
        codes::ELECTION_NOT_NEEDED
    );
    assert_eq!(
        c.elect(ElectionType::Preferred, "nope", 0),
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        c.elect(ElectionType::Preferred, "t", 3),
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    restart_cleanly(&mut c, b, &[1, 3]);
    // Back and unfenced but not yet in the ISR: the preferred replica may not lead.
    assert_ne!(c.image.partition(id, p).expect("p").leader, b);
    assert_eq!(
        c.elect(ElectionType::Preferred, "t", p),
        codes::PREFERRED_LEADER_NOT_AVAILABLE
    );
    // Negative control: nothing was written for the refused election.
    let before = c.image.partition(id, p).expect("p").clone();
    rejoin_isrs(&mut c, id, b);
    let epoch = c.image.partition(id, p).expect("p").leader_epoch;
    assert_eq!(before.leader, c.image.partition(id, p).expect("p").leader);
    assert_eq!(c.elect(ElectionType::Preferred, "t", p), codes::NONE);
    let now = c.image.partition(id, p).expect("p").clone();
    assert_eq!(now.leader, b);
    assert!(
        now.leader_epoch > epoch,
        "a new leader bumps the leader epoch"
    );
    assert_eq!(
        c.elect(ElectionType::Preferred, "t", p),
        codes::ELECTION_NOT_NEEDED
    );
    // An UNCLEAN election where a leader exists is not needed either.
    assert_eq!(
        c.elect(ElectionType::Unclean, "t", p),
        codes::ELECTION_NOT_NEEDED
    );
    // Fenced preferred replica: not available, even though it is in the ISR record.
    restart_cleanly(&mut c, b, &[1, 3]);
    rejoin_isrs(&mut c, id, b);
    c.heartbeat_full(b, true, false);
    assert!(c.image.brokers[&b].fenced);
    assert_eq!(
        c.elect(ElectionType::Preferred, "t", p),
        codes::PREFERRED_LEADER_NOT_AVAILABLE
    );
}

#[test]
fn electing_every_partition_lists_only_those_that_needed_it() {
    let mut c = Cluster::with_config(
        ControllerConfig {
            auto_leader_rebalance_enable: false,
            ..ControllerConfig::default()
        },
        22,
    );
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 6, 3, &[]);
    assert!(elect_all(&mut c, ElectionType::Preferred).is_empty());
    restart_cleanly(&mut c, 3, &[1, 2]);
    let mine = preferred_of(&c, id, 3);
    let r = elect_all(&mut c, ElectionType::Preferred);
    assert_eq!(r.len(), mine.len(), "{r:?}");
    assert!(r
        .iter()
        .all(|(_, _, e)| *e == codes::PREFERRED_LEADER_NOT_AVAILABLE));
    rejoin_isrs(&mut c, id, 3);
    let r = elect_all(&mut c, ElectionType::Preferred);
    assert_eq!(r.len(), mine.len());
    assert!(r.iter().all(|(_, _, e)| *e == codes::NONE), "{r:?}");
    for p in &mine {
        assert_eq!(c.image.partition(id, *p).expect("p").leader, 3);
    }
    assert!(elect_all(&mut c, ElectionType::Preferred).is_empty());
    // Every partition has a leader: an unclean election of all is a no-op listing nothing.
    assert!(elect_all(&mut c, ElectionType::Unclean).is_empty());
}

#[test]
fn unclean_election_prefers_the_isr_and_records_a_loss_only_when_unclean() {
    let mut c = Cluster::with_config(
        ControllerConfig {
            auto_leader_rebalance_enable: false,
            ..ControllerConfig::default()
        },
        23,
    );
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[("min.insync.replicas", "1")]);
    let p0 = c.image.partition(id, 0).expect("p").clone();
    let (l, f1, f2) = (p0.replicas[0], p0.replicas[1], p0.replicas[2]);
    assert_eq!(p0.leader, l);
    // The ISR shrinks to the leader alone; then the leader's session expires.
    assert_eq!(set_isr(&mut c, id, 0, &[l]), codes::NONE);
    c.now_ms += 9_001;
    c.heartbeat(f1);
    c.heartbeat(f2);
    c.tick();
    let p = c.image.partition(id, 0).expect("p").clone();
    assert_eq!(
        p.leader, -1,
        "no clean candidate: offline (min ISR 1, no ELR)"
    );
    // No live replica at all would be ELIGIBLE_LEADERS_NOT_AVAILABLE: fence the others too.
    for b in [f1, f2] {
        c.heartbeat_full(b, true, false);
    }
    assert_eq!(
        c.elect(ElectionType::Unclean, "t", 0),
        codes::ELIGIBLE_LEADERS_NOT_AVAILABLE
    );
    assert!(!c
        .applied
        .iter()
        .any(|(_, r)| matches!(r, Record::UncleanElection { .. })));
    // One comes back: the unclean election takes it, and the loss is recorded.
    c.heartbeat(f2);
    assert!(!c.image.brokers[&f2].fenced);
    assert_eq!(c.elect(ElectionType::Unclean, "t", 0), codes::NONE);
    let p = c.image.partition(id, 0).expect("p").clone();
    assert_eq!(p.leader, f2);
    assert_eq!(p.isr, vec![f2]);
    assert!(c.applied.iter().any(
        |(_, r)| matches!(r, Record::UncleanElection { new_leader, isr_before, .. } if *new_leader == f2 && !isr_before.contains(&f2))
    ));
}

#[test]
fn unclean_election_with_a_live_isr_member_is_clean() {
    let mut c = Cluster::with_config(
        ControllerConfig {
            auto_leader_rebalance_enable: false,
            ..ControllerConfig::default()
        },
        24,
    );
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[("min.insync.replicas", "2")]);
    let p0 = c.image.partition(id, 0).expect("p").clone();
    let (l, f1) = (p0.replicas[0], p0.replicas[1]);
    // ISR {l, f1}; l's session expires. The controller elects f1 itself (clean).
    assert_eq!(set_isr(&mut c, id, 0, &[l, f1]), codes::NONE);
    c.now_ms += 9_001;
    for b in [1, 2, 3].into_iter().filter(|b| *b != l) {
        c.heartbeat(b);
    }
    c.tick();
    let p = c.image.partition(id, 0).expect("p").clone();
    assert_eq!(p.leader, f1);
    assert_eq!(
        c.elect(ElectionType::Unclean, "t", 0),
        codes::ELECTION_NOT_NEEDED
    );
    assert!(!c
        .applied
        .iter()
        .any(|(_, r)| matches!(r, Record::UncleanElection { .. })));
}

fn rebalance_cluster(config: ControllerConfig, seed: u64) -> (Cluster, TopicId, Vec<i32>) {
    let mut c = Cluster::with_config(config, seed);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 9, 3, &[]);
    restart_cleanly(&mut c, 1, &[2, 3]);
    rejoin_isrs(&mut c, id, 1);
    let mine = preferred_of(&c, id, 1);
    assert!(!mine.is_empty());
    for p in &mine {
        assert_ne!(c.image.partition(id, *p).expect("p").leader, 1);
    }
    (c, id, mine)
}

#[test]
fn auto_rebalance_moves_leadership_back_after_the_interval() {
    let config = ControllerConfig {
        leader_imbalance_check_interval_ms: 1_000,
        ..ControllerConfig::default()
    };
    assert!(ControllerConfig::default().auto_leader_rebalance_enable);
    let (mut c, id, mine) = rebalance_cluster(config, 25);
    let keep_alive = |c: &mut Cluster| {
        for b in [1, 2, 3] {
            c.heartbeat(b);
        }
    };
    // The first tick starts the interval; before it elapses nothing moves.
    assert!(c.tick().is_empty());
    c.now_ms += 999;
    keep_alive(&mut c);
    assert!(c.tick().is_empty());
    c.now_ms += 1;
    keep_alive(&mut c);
    let records = c.tick();
    assert_eq!(records.len(), mine.len(), "{records:?}");
    for p in &mine {
        assert_eq!(c.image.partition(id, *p).expect("p").leader, 1);
    }
    // Balanced: later passes change nothing.
    c.now_ms += 1_000;
    keep_alive(&mut c);
    assert!(c.tick().is_empty());
}

#[test]
fn auto_rebalance_negative_controls() {
    for config in [
        // Disabled.
        ControllerConfig {
            auto_leader_rebalance_enable: false,
            leader_imbalance_check_interval_ms: 1_000,
            ..ControllerConfig::default()
        },
        // Enabled, but an imbalance ratio of 100% does not exceed a 100% threshold.
        ControllerConfig {
            leader_imbalance_check_interval_ms: 1_000,
            leader_imbalance_per_broker_percentage: 100,
            ..ControllerConfig::default()
        },
    ] {
        let (mut c, id, mine) = rebalance_cluster(config, 26);
        c.tick();
        for _ in 0..3 {
            c.now_ms += 1_000;
            for b in [1, 2, 3] {
                c.heartbeat(b);
            }
            assert!(c.tick().is_empty());
        }
        for p in &mine {
            assert_ne!(c.image.partition(id, *p).expect("p").leader, 1);
        }
    }
    // The preferred replica not in the ISR: the imbalance is counted but nothing is elected.
    let config = ControllerConfig {
        leader_imbalance_check_interval_ms: 1_000,
        ..ControllerConfig::default()
    };
    let mut c = Cluster::with_config(config, 27);
    c.start_brokers(&[1, 2, 3]);
    c.create_topic("t", 9, 3, &[]);
    restart_cleanly(&mut c, 1, &[2, 3]);
    c.tick();
    c.now_ms += 1_000;
    for b in [1, 2, 3] {
        c.heartbeat(b);
    }
    assert!(c.tick().is_empty());
    assert_eq!(c.leads(1), 0);
}
