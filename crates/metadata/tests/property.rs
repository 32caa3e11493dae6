//! Seeded random walks through the controller and the image: broker registrations,
//! heartbeats, deaths and restarts, clock jumps and ticks, controller failovers, topic
//! creation and deletion, AlterPartition, elections and config changes. After every step the
//! invariants of docs/metadata.md are checked; every record the controller returns must
//! apply; at the end the log replays to the same image and the snapshot round-trips.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Cluster;
use holdfast_metadata::controller::{ElectionType, IsrMember};
use holdfast_metadata::records::ElectionKind;
use holdfast_metadata::{
    ConfigResource, Controller, ControllerConfig, ControllerRequest, Endpoint, MetadataImage,
    NewTopic, Record,
};

const SEEDS: u64 = 200;
const STEPS: usize = 200;
const SESSION_MS: i64 = 9_000;
const BROKERS: i32 = 5;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

struct World {
    c: Cluster,
    rng: fastrand::Rng,
    /// Brokers whose process runs (and heartbeats when time passes).
    alive: BTreeSet<i32>,
    /// When the controller last heard from each broker (the model of its heartbeat table).
    last_heartbeat_ms: BTreeMap<i32, i64>,
    incarnation: u128,
}

impl World {
    fn heartbeat(&mut self, id: i32, want_shutdown: bool) {
        if !self.c.image.brokers.contains_key(&id) {
            return;
        }
        let reply = self.c.heartbeat_full(id, false, want_shutdown);
        self.last_heartbeat_ms.insert(id, self.c.now_ms);
        if reply.should_shut_down {
            // The process exits, as a real broker does.
            self.alive.remove(&id);
        }
    }

    fn register(&mut self, id: i32) {
        self.incarnation += 1;
        let existing = self.c.image.brokers.get(&id).cloned();
        let clean = self.rng.bool();
        let previous_broker_epoch = match (&existing, clean) {
            (Some(b), true) => b.epoch,
            _ => -1,
        };
        let req = ControllerRequest::RegisterBroker {
            id,
            incarnation: self.incarnation,
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "h".into(),
                port: 1,
            }],
            rack: Some(["r1", "r2"][(id % 2) as usize].into()),
            previous_broker_epoch,
        };
        match self.c.request(req) {
            Ok(_) => {
                self.alive.insert(id);
                self.last_heartbeat_ms.insert(id, self.c.now_ms);
            }
            Err(e) => {
                // Only a live registration with a running session may refuse a newcomer.
                let b = existing.expect("refused only an existing registration");
                let last = self
                    .last_heartbeat_ms
                    .get(&id)
                    .copied()
                    .unwrap_or(i64::MIN / 2);
                assert!(
                    !b.fenced && self.c.now_ms - last < SESSION_MS,
                    "refused wrongly: {e}"
                );
            }
        }
    }

    fn random_partition(&mut self) -> Option<(String, i32)> {
        let topics: Vec<_> = self.c.image.topics.values().collect();
        if topics.is_empty() {
            return None;
        }
        let t = topics[self.rng.usize(..topics.len())];
        Some((t.name.clone(), self.rng.usize(..t.partitions.len()) as i32))
    }

    fn step(&mut self) -> bool {
        let mut explicit_unclean = false;
        match self.rng.u8(0..20) {
            0 | 1 => {
                let id = self.rng.i32(1..=BROKERS);
                if !self.alive.contains(&id) {
                    self.register(id);
                }
            }
            2..=4 => {
                let ids: Vec<i32> = self.alive.iter().copied().collect();
                for id in ids {
                    let shutdown = self.rng.u8(0..40) == 0;
                    self.heartbeat(id, shutdown);
                }
            }
            5 => {
                let ids: Vec<i32> = self.alive.iter().copied().collect();
                if !ids.is_empty() {
                    self.alive.remove(&ids[self.rng.usize(..ids.len())]);
                }
            }
            6..=8 => {
                self.c.now_ms += self.rng.i64(0..5_000);
                let ids: Vec<i32> = self.alive.iter().copied().collect();
                for id in ids {
                    self.heartbeat(id, false);
                }
                self.tick_until_quiet();
            }
            9 => {
                // The controller fails over.
                let seed = self.rng.u64(..);
                self.c.controller = Controller::new(config(), seed);
                self.c
                    .controller
                    .on_become_active(&self.c.image, self.c.now_ms, None);
                for id in self.c.image.brokers.keys() {
                    self.last_heartbeat_ms.insert(*id, self.c.now_ms);
                }
            }
            10 | 11 => {
                let name = NAMES[self.rng.usize(..NAMES.len())].to_string();
                let mut configs = Vec::new();
                if self.rng.bool() {
                    configs.push((
                        "min.insync.replicas".to_string(),
                        self.rng.u8(1..4).to_string(),
                    ));
                }
                if self.rng.u8(0..4) == 0 {
                    configs.push((
                        "unclean.leader.election.enable".to_string(),
                        "true".to_string(),
                    ));
                }
                let rf = [-1, 1, 2, 3, 4][self.rng.usize(..5)];
                let topics = vec![NewTopic {
                    name,
                    partitions: self.rng.i32(1..4),
                    replication_factor: rf,
                    configs,
                    assignments: None,
                }];
                self.c
                    .request(ControllerRequest::CreateTopics {
                        topics,
                        validate_only: false,
                    })
                    .expect("answered");
            }
            12 => {
                let name = NAMES[self.rng.usize(..NAMES.len())].to_string();
                self.c
                    .request(ControllerRequest::DeleteTopics { names: vec![name] })
                    .expect("answered");
            }
            13 => {
                if let Some((name, _)) = self.random_partition() {
                    let count = self
                        .c
                        .image
                        .topic_by_name(&name)
                        .map_or(0, |t| t.partitions.len() as i32);
                    let req = ControllerRequest::CreatePartitions {
                        topics: vec![(name, count + self.rng.i32(0..3))],
                        validate_only: false,
                    };
                    self.c.request(req).expect("answered");
                }
            }
            14..=16 => self.alter_partition(),
            17 => {
                let election = if self.rng.u8(0..4) == 0 {
                    ElectionType::Unclean
                } else {
                    ElectionType::Preferred
                };
                explicit_unclean = election == ElectionType::Unclean;
                let partitions = if self.rng.bool() {
                    None
                } else {
                    self.random_partition().map(|p| vec![p])
                };
                self.c
                    .request(ControllerRequest::ElectLeaders {
                        election,
                        partitions,
                    })
                    .expect("answered");
            }
            18 => {
                if let Some((name, _)) = self.random_partition() {
                    let (k, v) = if self.rng.bool() {
                        ("min.insync.replicas", self.rng.u8(1..4).to_string())
                    } else {
                        (
                            "unclean.leader.election.enable",
                            self.rng.bool().to_string(),
                        )
                    };
                    let req = ControllerRequest::SetConfigs {
                        resource: ConfigResource::Topic(name),
                        set: vec![(k.to_string(), v)],
                        delete: vec![],
                        validate_only: false,
                    };
                    self.c.request(req).expect("answered");
                }
            }
            _ => {
                let ids: Vec<i32> = self.c.image.brokers.keys().copied().collect();
                if !ids.is_empty() {
                    let id = ids[self.rng.usize(..ids.len())];
                    let epoch = self.c.image.brokers[&id].epoch;
                    self.c
                        .request(ControllerRequest::AllocateProducerIds {
                            broker_id: id,
                            broker_epoch: epoch,
                        })
                        .expect("answered");
                }
            }
        }
        explicit_unclean
    }

    fn tick_until_quiet(&mut self) {
        for _ in 0..=BROKERS + 1 {
            if self.c.tick().is_empty() {
                break;
            }
        }
        // Every broker that missed its session is fenced and leads nothing.
        for (id, b) in &self.c.image.brokers {
            let last = self
                .last_heartbeat_ms
                .get(id)
                .copied()
                .unwrap_or(i64::MIN / 2);
            if self.c.now_ms - last > SESSION_MS {
                assert!(
                    b.fenced,
                    "broker {id} silent for {} ms but not fenced",
                    self.c.now_ms - last
                );
                assert_eq!(self.c.leads(*id), 0);
                assert_eq!(self.c.in_isrs(*id), 0);
            }
        }
    }

    fn alter_partition(&mut self) {
        let Some((name, pid)) = self.random_partition() else {
            return;
        };
        let Some(t) = self.c.image.topic_by_name(&name) else {
            return;
        };
        let tid = t.id;
        let p = t.partitions[pid as usize].clone();
        if p.leader < 0 || !self.alive.contains(&p.leader) {
            return;
        }
        let mut isr = vec![p.leader];
        for r in &p.replicas {
            if *r != p.leader && self.rng.bool() && self.c.image.brokers.contains_key(r) {
                isr.push(*r);
            }
        }
        let stale = self.rng.u8(0..10) == 0;
        let req = ControllerRequest::AlterPartition {
            broker_id: p.leader,
            broker_epoch: self.c.image.brokers[&p.leader].epoch,
            topic: tid,
            partition: pid,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch - i32::from(stale),
            new_isr: isr
                .iter()
                .map(|id| IsrMember {
                    id: *id,
                    broker_epoch: -1,
                })
                .collect(),
            leader_recovery: if self.rng.u8(0..3) == 0 {
                holdfast_metadata::LeaderRecovery::Recovered
            } else {
                p.leader_recovery
            },
        };
        // Answered with a per-partition error or a whole-request error; either is fine here.
        let _ = self.c.request(req);
    }
}

fn config() -> ControllerConfig {
    ControllerConfig {
        session_timeout_ms: SESSION_MS,
        producer_id_block_size: 10,
        ..ControllerConfig::default()
    }
}

/// The invariants between two consecutive images and over the records applied between them.
fn check_step(
    before: &MetadataImage,
    after: &MetadataImage,
    applied: &[(u64, Record)],
    explicit_unclean: bool,
) {
    after.check_invariants().expect("image invariants");
    for (tid, pid, p) in after.partitions() {
        // Leaders and ISR members are live: registered, unfenced, not shutting down.
        for r in p
            .isr
            .iter()
            .chain(std::iter::once(&p.leader).filter(|l| **l >= 0))
        {
            let b = after
                .brokers
                .get(r)
                .unwrap_or_else(|| panic!("{tid:?}-{pid}: {r} not registered"));
            assert!(b.is_active(), "{tid:?}-{pid}: ISR member or leader {r} is not active: {p:?} {b:?} after {applied:#?} before {:?}", before.partition(tid, pid));
        }
        if let Some(old) = before.partition(tid, pid) {
            assert!(p.leader_epoch >= old.leader_epoch, "leader epoch went back");
            assert!(
                p.partition_epoch >= old.partition_epoch,
                "partition epoch went back"
            );
            if p != old {
                assert!(
                    p.partition_epoch > old.partition_epoch,
                    "changed without a new partition epoch"
                );
            }
            if p.leader != old.leader {
                assert!(
                    p.leader_epoch > old.leader_epoch,
                    "new leader without a new leader epoch"
                );
            }
        }
    }
    // Replay the step's records on `before` to see each change against its own predecessor.
    let mut img = before.clone();
    for (i, (index, record)) in applied.iter().enumerate() {
        let delta = img.apply(*index, record).expect("applies again");
        if let Record::PartitionChange(pc) = record {
            let prev = delta.partitions[0].previous.as_ref().expect("existed");
            if let Some(l) = pc.leader.filter(|l| *l >= 0) {
                if pc.election == ElectionKind::Unclean {
                    assert!(
                        matches!(
                            applied.get(i + 1),
                            Some((_, Record::UncleanElection { .. }))
                        ),
                        "an unclean election is always recorded"
                    );
                } else {
                    assert!(
                        prev.isr.contains(&l) || prev.elr.contains(&l),
                        "clean election of {l} outside ISR {:?} / ELR {:?}",
                        prev.isr,
                        prev.elr
                    );
                }
            }
        }
        if let Record::UncleanElection { topic, .. } = record {
            let name = &img.topics[topic].name;
            assert!(
                explicit_unclean
                    || img.topic_config(name, "unclean.leader.election.enable") == Some("true"),
                "unclean election on {name} that nobody opted in to"
            );
        }
    }
    assert_eq!(&img, after);
}

#[test]
fn random_walks_keep_the_invariants() {
    let mut steps_with_records = 0usize;
    let mut elections = [0usize; 3];
    for seed in 0..SEEDS {
        let mut w = World {
            c: Cluster::with_config(config(), seed),
            rng: fastrand::Rng::with_seed(seed),
            alive: BTreeSet::new(),
            last_heartbeat_ms: BTreeMap::new(),
            incarnation: 0,
        };
        for _ in 0..STEPS {
            let before = w.c.image.clone();
            let first_new = w.c.applied.len();
            let explicit_unclean = w.step();
            let applied = w.c.applied[first_new..].to_vec();
            if !applied.is_empty() {
                steps_with_records += 1;
            }
            for (_, r) in &applied {
                if let Record::PartitionChange(pc) = r {
                    if pc.leader.is_some_and(|l| l >= 0) {
                        elections[pc.election as usize] += 1;
                    }
                }
            }
            check_step(&before, &w.c.image, &applied, explicit_unclean);
        }
        // The log replays to the same image; the snapshot round-trips.
        let mut replay = MetadataImage::new();
        for (index, r) in &w.c.applied {
            replay.apply(*index, r).expect("replays");
        }
        assert_eq!(replay, w.c.image, "seed {seed}: replay differs");
        let snap = MetadataImage::decode_snapshot(&w.c.image.encode_snapshot()).expect("snapshot");
        assert_eq!(snap, w.c.image, "seed {seed}: snapshot differs");
    }
    // The walk really exercised the interesting paths.
    assert!(
        steps_with_records > (SEEDS as usize * STEPS) / 4,
        "{steps_with_records}"
    );
    assert!(
        elections.iter().all(|n| *n > 0),
        "clean/ELR/unclean elections: {elections:?}"
    );
}
