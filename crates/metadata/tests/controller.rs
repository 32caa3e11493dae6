//! Scenario tests of the controller and the image together.

mod common;

use common::Cluster;
use holdfast_metadata::controller::{codes, ControllerResponse, ElectionType, IsrMember};
use holdfast_metadata::records::ElectionKind;
use holdfast_metadata::{
    ConfigResource, ControllerConfig, ControllerError, ControllerRequest, LeaderRecovery,
    LocalChange, MetadataImage, NewTopic, Record, TopicId,
};

fn alter(
    c: &mut Cluster,
    broker: i32,
    topic: TopicId,
    isr: &[i32],
    tweak: impl Fn(&mut ControllerRequest),
) -> Result<ControllerResponse, ControllerError> {
    let p = c.image.partition(topic, 0).expect("partition").clone();
    let mut req = ControllerRequest::AlterPartition {
        broker_id: broker,
        broker_epoch: c.image.brokers[&broker].epoch,
        topic,
        partition: 0,
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
    tweak(&mut req);
    c.request(req)
}

fn alter_error(r: Result<ControllerResponse, ControllerError>) -> i16 {
    match r {
        Ok(ControllerResponse::AlterPartition(a)) => a.error,
        Err(e) => e.code(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_before_bootstrap_are_refused() {
    let mut controller = holdfast_metadata::Controller::new(ControllerConfig::default(), 1);
    let image = MetadataImage::new();
    let err = controller
        .handle(
            &image,
            ControllerRequest::AllocateProducerIds {
                broker_id: 1,
                broker_epoch: 1,
            },
            0,
        )
        .expect_err("not bootstrapped");
    assert_eq!(err.code(), codes::NOT_CONTROLLER);
}

#[test]
fn broker_registers_fenced_and_is_unfenced_once_caught_up() {
    let mut c = Cluster::new(1);
    let epoch = c.register(1, None);
    assert!(c.image.brokers[&1].fenced);
    assert_eq!(
        epoch, c.image.last_applied as i64,
        "broker epoch = index of its RegisterBroker record"
    );
    // Behind its own registration: stays fenced.
    let req = ControllerRequest::Heartbeat {
        id: 1,
        broker_epoch: epoch,
        metadata_offset: epoch - 1,
        want_fence: false,
        want_shutdown: false,
    };
    match c.request(req) {
        Ok(ControllerResponse::Heartbeat(h)) => assert!(h.is_fenced && !h.is_caught_up),
        other => panic!("{other:?}"),
    }
    assert!(c.image.brokers[&1].fenced);
    let h = c.heartbeat(1);
    assert!(!h.is_fenced && h.is_caught_up);
    assert!(!c.image.brokers[&1].fenced);
    // A stale epoch is refused.
    let req = ControllerRequest::Heartbeat {
        id: 1,
        broker_epoch: epoch - 1,
        metadata_offset: 100,
        want_fence: false,
        want_shutdown: false,
    };
    assert_eq!(
        c.request(req).expect_err("stale").code(),
        codes::STALE_BROKER_EPOCH
    );
}

#[test]
fn duplicate_live_registration_is_refused() {
    let mut c = Cluster::new(1);
    c.start_brokers(&[1]);
    let req = ControllerRequest::RegisterBroker {
        id: 1,
        incarnation: 999_999,
        listeners: vec![],
        rack: None,
        previous_broker_epoch: -1,
    };
    assert_eq!(
        c.request(req.clone()).expect_err("dup").code(),
        codes::DUPLICATE_BROKER_REGISTRATION
    );
    // After the session expired, the new process may take the id over.
    c.now_ms += 9_001;
    c.request(req).expect("re-registered");
    assert!(c.image.brokers[&1].fenced);
}

#[test]
fn create_topic_defaults_are_safe() {
    let mut c = Cluster::new(2);
    c.start_brokers(&[1, 2, 3, 4]);
    let (err, id) = c.create_topic("orders", 4, -1, &[]);
    assert_eq!(err, codes::NONE);
    let t = &c.image.topics[&id];
    assert_eq!(t.partitions.len(), 4);
    for p in &t.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
    }
    assert_eq!(
        c.image.topic_config("orders", "min.insync.replicas"),
        Some("2")
    );
    assert_eq!(
        c.image
            .topic_config("orders", "unclean.leader.election.enable"),
        None
    );
    // RF 2: no min ISR set; an explicit min ISR is kept.
    let (_, _) = c.create_topic("small", 1, 2, &[]);
    assert_eq!(c.image.topic_config("small", "min.insync.replicas"), None);
    let (_, _) = c.create_topic("strict", 1, 3, &[("min.insync.replicas", "3")]);
    assert_eq!(
        c.image.topic_config("strict", "min.insync.replicas"),
        Some("3")
    );
    // Errors.
    assert_eq!(
        c.create_topic("orders", 1, 1, &[]).0,
        codes::TOPIC_ALREADY_EXISTS
    );
    assert_eq!(
        c.create_topic("big", 1, 5, &[]).0,
        codes::INVALID_REPLICATION_FACTOR
    );
    assert_eq!(
        c.create_topic("zero", 0, 1, &[]).0,
        codes::INVALID_PARTITIONS
    );
    assert_eq!(
        c.create_topic("bad/name", 1, 1, &[]).0,
        codes::INVALID_TOPIC_EXCEPTION
    );
    assert_eq!(
        c.create_topic("cfg", 1, 1, &[("min.insync.replicas", "0")])
            .0,
        codes::INVALID_CONFIG
    );
    assert!(c.image.topic_by_name("big").is_none());
}

#[test]
fn default_replication_factor_counts_registered_brokers() {
    let mut c = Cluster::new(3);
    c.start_brokers(&[1, 2, 3]);
    // Broker 3 dies and is fenced: the default stays 3, so creation fails loudly instead of
    // silently creating an under-replicated topic.
    c.now_ms += 5_000;
    c.heartbeat(1);
    c.heartbeat(2);
    c.now_ms += 5_000;
    c.heartbeat(1);
    c.heartbeat(2);
    assert!(matches!(
        c.tick().last(),
        Some(Record::FenceBroker { id: 3, .. })
    ));
    assert_eq!(
        c.create_topic("t", 1, -1, &[]).0,
        codes::INVALID_REPLICATION_FACTOR
    );
    assert_eq!(c.create_topic("t", 1, 2, &[]).0, codes::NONE);
}

#[test]
fn validate_only_writes_nothing() {
    let mut c = Cluster::new(4);
    c.start_brokers(&[1]);
    let before = c.image.last_applied;
    let req = ControllerRequest::CreateTopics {
        topics: vec![NewTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: 1,
            configs: vec![],
            assignments: None,
        }],
        validate_only: true,
    };
    match c.request(req) {
        Ok(ControllerResponse::CreateTopics(r)) => {
            assert_eq!((r[0].error, r[0].partitions), (codes::NONE, 2))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.image.last_applied, before);
}

#[test]
fn stale_broker_is_fenced_after_session_timeout_and_loses_leaderships() {
    let mut c = Cluster::new(5);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 6, 3, &[]);
    assert!(c.leads(2) > 0);
    // Brokers 1 and 3 keep heartbeating, broker 2 stops.
    for _ in 0..4 {
        c.now_ms += 2_000;
        c.heartbeat(1);
        c.heartbeat(3);
        assert!(
            c.tick().is_empty(),
            "nobody is fenced within the session timeout"
        );
    }
    c.now_ms += 1_001; // 9001 ms since broker 2's last heartbeat
    let records = c.tick();
    assert!(
        matches!(records.last(), Some(Record::FenceBroker { id: 2, .. })),
        "{records:?}"
    );
    assert!(c.image.brokers[&2].fenced);
    assert_eq!(c.leads(2), 0);
    assert_eq!(c.in_isrs(2), 0);
    for p in &c.image.topics[&id].partitions {
        assert!(p.leader == 1 || p.leader == 3);
        // ISR 2 of 3 is still >= min ISR 2: no ELR.
        assert!(p.elr.is_empty());
    }
    // Broker 2 comes back: unfenced, then the leader adds it back to the ISR.
    c.heartbeat(2);
    assert!(!c.image.brokers[&2].fenced);
    let leader = c.image.partition(id, 0).expect("p").leader;
    let r = alter(&mut c, leader, id, &[1, 2, 3], |_| {});
    assert_eq!(alter_error(r), codes::NONE);
    assert_eq!(c.image.partition(id, 0).expect("p").isr.len(), 3);
}

#[test]
fn failover_does_not_fence_healthy_brokers() {
    let mut c = Cluster::new(6);
    c.start_brokers(&[1, 2]);
    c.now_ms += 8_000;
    // A new controller takes over: it has never seen a heartbeat.
    c.controller = holdfast_metadata::Controller::new(ControllerConfig::default(), 7);
    c.controller.on_become_active(&c.image, c.now_ms, None);
    c.now_ms += 8_000;
    assert!(c.tick().is_empty());
    c.now_ms += 1_001;
    assert!(matches!(c.tick().last(), Some(Record::FenceBroker { .. })));
    // One per tick.
    assert!(matches!(c.tick().last(), Some(Record::FenceBroker { .. })));
    assert!(c.image.brokers.values().all(|b| b.fenced));
}

#[test]
fn elr_keeps_the_partition_safe_and_elects_an_eligible_replica() {
    let mut c = Cluster::new(7);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let p0 = c.image.partition(id, 0).expect("p").clone();
    let [a, b, l] = [p0.replicas[1], p0.replicas[2], p0.replicas[0]];
    // The leader shrinks the ISR to itself (followers lagging): below min ISR 2, so the
    // followers become eligible leader replicas.
    assert_eq!(alter_error(alter(&mut c, l, id, &[l], |_| {})), codes::NONE);
    let p = c.image.partition(id, 0).expect("p");
    assert_eq!(p.isr, vec![l]);
    assert_eq!(p.elr.len(), 2);
    // The leader dies: the ISR becomes empty and a follower from the ELR (it has
    // everything below the high watermark) is elected, cleanly.
    c.now_ms += 9_001;
    c.heartbeat(a);
    c.heartbeat(b);
    let records = c.tick();
    assert!(matches!(records.last(), Some(Record::FenceBroker { id, .. }) if *id == l));
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::PartitionChange(pc) if pc.election == ElectionKind::Elr)));
    let p = c.image.partition(id, 0).expect("p");
    assert!(p.leader == a || p.leader == b, "{p:?}");
    assert_eq!(p.isr, vec![p.leader]);
    let mut elr = p.elr.clone();
    elr.sort();
    let mut want = vec![l, if p.leader == a { b } else { a }];
    want.sort();
    assert_eq!(elr, want);
    assert!(c
        .applied
        .iter()
        .all(|(_, r)| !matches!(r, Record::UncleanElection { .. })));
}

#[test]
fn offline_partition_comes_back_with_the_first_elr_member_that_returns() {
    let mut c = Cluster::new(70);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let p0 = c.image.partition(id, 0).expect("p").clone();
    let [l, a, b] = [p0.replicas[0], p0.replicas[1], p0.replicas[2]];
    assert_eq!(alter_error(alter(&mut c, l, id, &[l], |_| {})), codes::NONE);
    // The followers die first (fenced, still ELR), then the leader.
    c.now_ms += 9_001;
    c.heartbeat(l);
    c.tick();
    c.tick();
    assert!(c.image.brokers[&a].fenced && c.image.brokers[&b].fenced);
    c.now_ms += 9_001;
    c.tick();
    let p = c.image.partition(id, 0).expect("p").clone();
    assert_eq!((p.leader, p.isr.len(), p.elr.len()), (-1, 0, 3), "{p:?}");
    // No clean candidate is alive: ticks change nothing (no unclean election by default).
    assert!(c.tick().is_empty());
    // b returns: unfencing elects it from the ELR in the same batch.
    c.heartbeat(b);
    let p = c.image.partition(id, 0).expect("p").clone();
    assert_eq!((p.leader, p.isr.clone()), (b, vec![b]));
    assert!(p.leader_epoch > p0.leader_epoch);
    assert_eq!(p.leader_recovery, LeaderRecovery::Recovered);
}

#[test]
fn only_opted_in_topics_get_unclean_elections() {
    for opted_in in [false, true] {
        let mut c = Cluster::new(8);
        c.start_brokers(&[1, 2]);
        let cfg: &[(&str, &str)] = if opted_in {
            &[("unclean.leader.election.enable", "true")]
        } else {
            &[]
        };
        let (_, id) = c.create_topic("t", 1, 2, cfg);
        let p0 = c.image.partition(id, 0).expect("p").clone();
        let (l, f) = (p0.replicas[0], p0.replicas[1]);
        // The follower falls out of the ISR (min ISR 1: no ELR), then the leader dies.
        assert_eq!(alter_error(alter(&mut c, l, id, &[l], |_| {})), codes::NONE);
        assert!(c.image.partition(id, 0).expect("p").elr.is_empty());
        c.now_ms += 9_001;
        c.heartbeat(f);
        c.tick();
        let p = c.image.partition(id, 0).expect("p").clone();
        if opted_in {
            assert_eq!(p.leader, f);
            assert_eq!(p.isr, vec![f]);
            assert_eq!(p.leader_recovery, LeaderRecovery::Recovering);
            assert!(c.applied.iter().any(
                |(_, r)| matches!(r, Record::UncleanElection { new_leader, .. } if *new_leader == f)
            ));
            // While recovering the ISR may not grow.
            let r = alter(&mut c, f, id, &[f, l], |_| {});
            assert_eq!(alter_error(r), codes::INVALID_REQUEST);
        } else {
            assert_eq!(
                p.leader, -1,
                "stays offline rather than losing data silently"
            );
            assert!(c.tick().is_empty());
            assert_eq!(
                c.elect(ElectionType::Preferred, "t", 0),
                codes::PREFERRED_LEADER_NOT_AVAILABLE
            );
            // An admin may choose the loss explicitly; it is recorded.
            assert_eq!(c.elect(ElectionType::Unclean, "t", 0), codes::NONE);
            assert_eq!(c.image.partition(id, 0).expect("p").leader, f);
            assert!(matches!(
                c.applied.last(),
                Some((_, Record::UncleanElection { .. }))
            ));
            assert_eq!(
                c.elect(ElectionType::Unclean, "t", 0),
                codes::ELECTION_NOT_NEEDED
            );
        }
    }
}

#[test]
fn alter_partition_validation() {
    let mut c = Cluster::new(9);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let p = c.image.partition(id, 0).expect("p").clone();
    let l = p.leader;
    let f = p.replicas[1];
    let all = p.replicas.clone();
    let cases: Vec<AlterCase> = vec![
        (
            "newer leader epoch",
            l,
            all.clone(),
            Box::new(|r| set(r, |le, _| *le += 1)),
            codes::NOT_CONTROLLER,
        ),
        (
            "newer partition epoch",
            l,
            all.clone(),
            Box::new(|r| set(r, |_, pe| *pe += 1)),
            codes::NOT_CONTROLLER,
        ),
        (
            "older leader epoch",
            l,
            all.clone(),
            Box::new(|r| set(r, |le, _| *le -= 1)),
            codes::FENCED_LEADER_EPOCH,
        ),
        (
            "not the leader",
            f,
            all.clone(),
            Box::new(|_| {}),
            codes::INVALID_REQUEST,
        ),
        (
            "older partition epoch",
            l,
            all.clone(),
            Box::new(|r| set(r, |_, pe| *pe -= 1)),
            codes::INVALID_UPDATE_VERSION,
        ),
        (
            "isr outside replicas",
            l,
            vec![l, 9],
            Box::new(|_| {}),
            codes::INVALID_REQUEST,
        ),
        (
            "isr without leader",
            l,
            vec![f],
            Box::new(|_| {}),
            codes::INVALID_REQUEST,
        ),
        (
            "recovering with isr > 1",
            l,
            all.clone(),
            Box::new(recovering),
            codes::INVALID_REQUEST,
        ),
        (
            "stale member epoch",
            l,
            all.clone(),
            Box::new(stale_member),
            codes::INELIGIBLE_REPLICA,
        ),
    ];
    // Make the partition epoch non-zero so "older" exists.
    assert_eq!(
        alter_error(alter(&mut c, l, id, &[l, f], |_| {})),
        codes::NONE
    );
    for (name, broker, isr, tweak, want) in cases {
        let before = c.image.clone();
        let got = if isr.contains(&9) {
            let p = c.image.partition(id, 0).expect("p").clone();
            let req = ControllerRequest::AlterPartition {
                broker_id: broker,
                broker_epoch: c.image.brokers[&broker].epoch,
                topic: id,
                partition: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: vec![
                    IsrMember {
                        id: l,
                        broker_epoch: -1,
                    },
                    IsrMember {
                        id: 9,
                        broker_epoch: -1,
                    },
                ],
                leader_recovery: p.leader_recovery,
            };
            alter_error(c.request(req))
        } else {
            alter_error(alter(&mut c, broker, id, &isr, tweak))
        };
        assert_eq!(got, want, "{name}");
        assert_eq!(c.image, before, "{name}: nothing written");
    }
    // A fenced or shutting-down broker cannot join the ISR.
    c.now_ms += 9_001;
    c.heartbeat(l);
    c.heartbeat(f);
    c.tick(); // fences the third replica
    let third = all
        .iter()
        .copied()
        .find(|b| *b != l && *b != f)
        .expect("third");
    assert!(c.image.brokers[&third].fenced);
    assert_eq!(
        alter_error(alter(&mut c, l, id, &[l, f, third], |_| {})),
        codes::INELIGIBLE_REPLICA
    );
    // A stale broker epoch of the sender fails the whole request.
    let r = alter(&mut c, l, id, &[l, f], |r| {
        if let ControllerRequest::AlterPartition { broker_epoch, .. } = r {
            *broker_epoch -= 1;
        }
    });
    assert_eq!(alter_error(r), codes::STALE_BROKER_EPOCH);
    // Unknown topic.
    let r = alter(&mut c, l, id, &[l], |r| {
        if let ControllerRequest::AlterPartition { topic, .. } = r {
            *topic = TopicId(7);
        }
    });
    assert_eq!(alter_error(r), codes::UNKNOWN_TOPIC_ID);
    // A successful shrink answers with the new epochs.
    let before = c.image.partition(id, 0).expect("p").clone();
    match alter(&mut c, l, id, &[l], |_| {}) {
        Ok(ControllerResponse::AlterPartition(a)) => {
            assert_eq!(a.error, codes::NONE);
            assert_eq!(a.isr, vec![l]);
            assert_eq!(
                a.leader_epoch, before.leader_epoch,
                "an ISR change keeps the leader epoch"
            );
            assert_eq!(a.partition_epoch, before.partition_epoch + 1);
            assert_eq!(
                c.image.partition(id, 0).expect("p").partition_epoch,
                a.partition_epoch
            );
        }
        other => panic!("{other:?}"),
    }
}

/// (name, sender, new ISR, request tweak, expected error).
type AlterCase = (
    &'static str,
    i32,
    Vec<i32>,
    Box<dyn Fn(&mut ControllerRequest)>,
    i16,
);

fn set(r: &mut ControllerRequest, f: impl Fn(&mut i32, &mut i32)) {
    if let ControllerRequest::AlterPartition {
        leader_epoch,
        partition_epoch,
        ..
    } = r
    {
        f(leader_epoch, partition_epoch);
    }
}

fn recovering(r: &mut ControllerRequest) {
    if let ControllerRequest::AlterPartition {
        leader_recovery, ..
    } = r
    {
        *leader_recovery = LeaderRecovery::Recovering;
    }
}

fn stale_member(r: &mut ControllerRequest) {
    if let ControllerRequest::AlterPartition { new_isr, .. } = r {
        new_isr[1].broker_epoch -= 1;
    }
}

#[test]
fn controlled_shutdown_moves_leaderships_then_allows_shutdown() {
    let mut c = Cluster::new(10);
    c.start_brokers(&[1, 2, 3]);
    c.create_topic("t", 6, 3, &[]);
    c.create_topic("solo", 1, 1, &[]);
    let victim = 1;
    assert!(c.leads(victim) > 0);
    let h = c.heartbeat_full(victim, false, true);
    assert!(h.in_controlled_shutdown && !h.should_shut_down);
    assert!(c.image.brokers[&victim].in_controlled_shutdown);
    assert_eq!(c.leads(victim), 0);
    assert_eq!(c.in_isrs(victim), 0);
    // The others must catch up with the moves before the broker may stop.
    let h = c.heartbeat_full(victim, false, true);
    assert!(
        !h.should_shut_down,
        "other brokers have not seen the new leaders yet"
    );
    c.heartbeat(2);
    c.heartbeat(3);
    let h = c.heartbeat_full(victim, false, true);
    assert!(h.should_shut_down && h.is_fenced);
    assert!(c.image.brokers[&victim].fenced);
    // It comes back after a clean shutdown and leads again after a preferred election.
    c.register(victim, None);
    c.heartbeat(victim);
    assert!(!c.image.brokers[&victim].fenced);
}

#[test]
fn unclean_restart_leaves_the_elr() {
    let mut c = Cluster::new(11);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let p0 = c.image.partition(id, 0).expect("p").clone();
    let l = p0.leader;
    let f = p0.replicas[1];
    assert_eq!(alter_error(alter(&mut c, l, id, &[l], |_| {})), codes::NONE);
    assert!(c.image.partition(id, 0).expect("p").elr.contains(&f));
    // f crashes and restarts without a clean shutdown: it may have lost unflushed data.
    // (A new incarnation is refused while the old session is alive.)
    c.now_ms += 9_001;
    c.heartbeat(l);
    c.register_full(f, None, -1);
    let p = c.image.partition(id, 0).expect("p");
    assert!(!p.elr.contains(&f), "{p:?}");
    assert!(p.last_known_elr.contains(&f));
}

#[test]
fn producer_id_blocks_do_not_overlap() {
    let mut c = Cluster::new(12);
    c.start_brokers(&[1, 2]);
    let mut blocks = Vec::new();
    for b in [1, 2, 1] {
        let epoch = c.image.brokers[&b].epoch;
        match c.request(ControllerRequest::AllocateProducerIds {
            broker_id: b,
            broker_epoch: epoch,
        }) {
            Ok(ControllerResponse::ProducerIds { start, len }) => blocks.push((start, len)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(blocks, vec![(0, 1000), (1000, 1000), (2000, 1000)]);
    assert_eq!(c.image.next_producer_id, 3000);
    let err = c
        .request(ControllerRequest::AllocateProducerIds {
            broker_id: 1,
            broker_epoch: 0,
        })
        .expect_err("stale epoch");
    assert_eq!(err.code(), codes::STALE_BROKER_EPOCH);
}

#[test]
fn configs_partitions_delete_and_local_changes() {
    let mut c = Cluster::new(13);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 2, 2, &[]);
    let req = ControllerRequest::SetConfigs {
        resource: ConfigResource::Topic("t".into()),
        set: vec![("retention.ms".into(), "5".into())],
        delete: vec![],
        validate_only: false,
    };
    assert!(
        matches!(c.request(req), Ok(ControllerResponse::SetConfigs(r)) if r.error == codes::NONE)
    );
    assert_eq!(c.image.topic_config("t", "retention.ms"), Some("5"));
    let req = ControllerRequest::SetConfigs {
        resource: ConfigResource::Topic("nope".into()),
        set: vec![("retention.ms".into(), "5".into())],
        delete: vec![],
        validate_only: false,
    };
    assert!(
        matches!(c.request(req), Ok(ControllerResponse::SetConfigs(r)) if r.error == codes::UNKNOWN_TOPIC_OR_PARTITION)
    );

    let req = ControllerRequest::CreatePartitions {
        topics: vec![("t".into(), 5)],
        validate_only: false,
    };
    let (records, _) = c.controller.handle(&c.image, req, c.now_ms).expect("ok");
    let deltas = c.apply(records);
    assert_eq!(c.image.topics[&id].partitions.len(), 5);
    let node = c.image.topics[&id].partitions[4].replicas[0];
    let local = deltas[0].local_changes(&c.image, node);
    assert!(
        local
            .iter()
            .any(|l| matches!(l, LocalChange::Leader { partition: 4, .. })),
        "{local:?}"
    );
    let req = ControllerRequest::CreatePartitions {
        topics: vec![("t".into(), 3)],
        validate_only: false,
    };
    assert!(
        matches!(c.request(req), Ok(ControllerResponse::CreatePartitions(r)) if r[0].error == codes::INVALID_PARTITIONS)
    );

    let hosted = c.image.topics[&id]
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&node))
        .count();
    let req = ControllerRequest::DeleteTopics {
        names: vec!["t".into(), "nope".into()],
    };
    let (records, resp) = c.controller.handle(&c.image, req, c.now_ms).expect("ok");
    match resp {
        ControllerResponse::DeleteTopics(r) => {
            assert_eq!((r[0].0.error, r[0].1), (codes::NONE, id));
            assert_eq!(r[1].0.error, codes::UNKNOWN_TOPIC_OR_PARTITION);
        }
        other => panic!("{other:?}"),
    }
    let deltas = c.apply(records);
    assert!(c.image.topic_by_name("t").is_none());
    assert_eq!(
        c.image.topic_config("t", "retention.ms"),
        None,
        "configs go with the topic"
    );
    let removed = deltas[0].local_changes(&c.image, node);
    assert_eq!(removed.len(), hosted);
    assert!(removed
        .iter()
        .all(|l| matches!(l, LocalChange::Removed { .. })));
}

#[test]
fn stale_partition_change_is_rejected_without_effect() {
    let mut c = Cluster::new(14);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let p = c.image.partition(id, 0).expect("p").clone();
    let req = |c: &Cluster, isr: Vec<i32>| ControllerRequest::AlterPartition {
        broker_id: p.leader,
        broker_epoch: c.image.brokers[&p.leader].epoch,
        topic: id,
        partition: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: isr
            .into_iter()
            .map(|id| IsrMember {
                id,
                broker_epoch: -1,
            })
            .collect(),
        leader_recovery: p.leader_recovery,
    };
    // Two changes computed from the same image: the second no longer applies.
    let (r1, _) = c
        .controller
        .handle(&c.image, req(&c, vec![p.leader]), c.now_ms)
        .expect("ok");
    let (r2, _) = c
        .controller
        .handle(
            &c.image,
            req(&c, p.replicas.clone()[..2].to_vec()),
            c.now_ms,
        )
        .expect("ok");
    c.apply(r1);
    let before = c.image.clone();
    let err = c
        .image
        .apply(before.last_applied + 1, &r2[0])
        .expect_err("stale");
    assert!(
        matches!(err, holdfast_metadata::Rejected::StalePartitionEpoch { .. }),
        "{err}"
    );
    let mut expected = before.clone();
    expected.last_applied += 1;
    assert_eq!(c.image, expected);
    // A replayed index changes nothing at all.
    assert!(c.image.apply(1, &r2[0]).is_err());
    assert_eq!(c.image, expected);
}

#[test]
fn snapshot_round_trips() {
    let mut c = Cluster::new(15);
    c.start_brokers(&[1, 2, 3]);
    c.register(4, Some("rack-b"));
    c.create_topic("a", 3, 3, &[("retention.ms", "10")]);
    c.create_topic("b", 1, 1, &[]);
    c.request(ControllerRequest::AllocateProducerIds {
        broker_id: 1,
        broker_epoch: c.image.brokers[&1].epoch,
    })
    .expect("ok");
    let bytes = c.image.encode_snapshot();
    let back = MetadataImage::decode_snapshot(&bytes).expect("decodes");
    assert_eq!(back, c.image);
    // Corrupt snapshots are refused, not panicked on.
    assert!(MetadataImage::decode_snapshot(&bytes[..bytes.len() / 2]).is_err());
    assert!(MetadataImage::decode_snapshot(&[]).is_err());
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..2_000 {
        let mut b = bytes.clone();
        let at = rng.usize(..b.len());
        b[at] = rng.u8(..);
        if let Ok(img) = MetadataImage::decode_snapshot(&b) {
            img.check_invariants()
                .expect("a decoded snapshot keeps the invariants");
        }
    }
}

#[test]
fn rack_aware_topics_spread_over_racks() {
    let mut c = Cluster::new(16);
    for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
        c.register(id, Some(rack));
        c.heartbeat(id);
    }
    let (_, id) = c.create_topic("t", 12, 3, &[]);
    for p in &c.image.topics[&id].partitions {
        let racks: std::collections::BTreeSet<_> = p
            .replicas
            .iter()
            .map(|b| c.image.brokers[b].rack.clone())
            .collect();
        assert_eq!(racks.len(), 3, "{:?}", p.replicas);
    }
}

#[test]
fn create_topics_request_is_bounded() {
    let mut c = Cluster::with_config(
        ControllerConfig {
            max_items_per_request: 2,
            ..ControllerConfig::default()
        },
        17,
    );
    c.start_brokers(&[1]);
    let topics = (0..3)
        .map(|i| NewTopic {
            name: format!("t{i}"),
            partitions: 1,
            replication_factor: 1,
            configs: vec![],
            assignments: None,
        })
        .collect();
    let err = c
        .request(ControllerRequest::CreateTopics {
            topics,
            validate_only: false,
        })
        .expect_err("bounded");
    assert_eq!(err.code(), codes::INVALID_REQUEST);
}

#[test]
fn changing_min_isr_clears_the_elr() {
    let mut c = Cluster::new(18);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 1, 3, &[]);
    let l = c.image.partition(id, 0).expect("p").leader;
    assert_eq!(alter_error(alter(&mut c, l, id, &[l], |_| {})), codes::NONE);
    assert_eq!(c.image.partition(id, 0).expect("p").elr.len(), 2);
    // Lowering min ISR to 1 lets the HW advance with the leader alone: the old ELR members
    // may now miss data, so they are no longer eligible.
    let req = ControllerRequest::SetConfigs {
        resource: ConfigResource::Topic("t".into()),
        set: vec![("min.insync.replicas".into(), "1".into())],
        delete: vec![],
        validate_only: false,
    };
    c.request(req).expect("ok");
    let p = c.image.partition(id, 0).expect("p");
    assert!(p.elr.is_empty() && p.last_known_elr.is_empty(), "{p:?}");
    // The leader dies: nobody clean is left, the partition goes offline.
    let others: Vec<i32> = p.replicas.iter().copied().filter(|r| *r != l).collect();
    c.now_ms += 9_001;
    for o in &others {
        c.heartbeat(*o);
    }
    c.tick();
    assert_eq!(c.image.partition(id, 0).expect("p").leader, -1);
}

#[test]
fn a_restarted_combined_node_fences_its_own_dead_incarnation_at_once() {
    let mut c = Cluster::new(8);
    c.start_brokers(&[1, 2, 3]);
    let (_, id) = c.create_topic("t", 3, 3, &[]);
    let led_by_1: Vec<i32> = (0..3)
        .filter(|&i| c.image.partition(id, i).expect("p").leader == 1)
        .collect();
    assert!(!led_by_1.is_empty());
    // Node 1 (controller and broker in one process) is killed and restarted at once, and
    // wins the election again: a new process, a new incarnation.
    let old = c.image.brokers[&1].incarnation;
    let new_incarnation = old + 1;
    c.now_ms += 500;
    c.controller = holdfast_metadata::Controller::new(ControllerConfig::default(), 9);
    c.controller
        .on_become_active(&c.image, c.now_ms, Some((1, new_incarnation)));
    // Brokers 2 and 3 keep their fresh sessions; the dead incarnation of 1 is fenced by the
    // first tick and its partitions get other leaders.
    c.heartbeat(2);
    c.heartbeat(3);
    let records = c.tick();
    assert!(
        matches!(records.last(), Some(Record::FenceBroker { id: 1, .. })),
        "{records:?}"
    );
    for i in &led_by_1 {
        let p = c.image.partition(id, *i).expect("p");
        assert!(p.leader == 2 || p.leader == 3, "{p:?}");
    }
    assert!(c.tick().is_empty(), "only the dead incarnation is fenced");
    // A registration of another node's incarnation is not affected: with the local node
    // being 2 (its registration current), nobody's session is cut short.
    let cur2 = c.image.brokers[&2].incarnation;
    c.controller = holdfast_metadata::Controller::new(ControllerConfig::default(), 10);
    c.controller
        .on_become_active(&c.image, c.now_ms, Some((2, cur2)));
    assert!(c.tick().is_empty());
}
