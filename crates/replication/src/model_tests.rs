//! Model-based property tests.
//!
//! 1. A simulated partition: one leader ([`LeaderState`]) and 2-4 followers
//!    ([`FollowerState`]), each with a log of `(epoch, record id)` and a separate durable end,
//!    a controller holding the authoritative ISR and partition epoch, and a metadata log each
//!    broker applies at its own pace. Random steps: appends (acks=all and acks=1), fsyncs,
//!    follower fetches (at the durable end, by Holdfast's rule), follower crashes (log end
//!    falls back to the durable end, new broker epoch), pauses (lagging followers are shrunk out,
//!    long pauses get fenced by the controller), ISR-expiration ticks, AlterPartition requests
//!    processed by the controller with failures (not applied / applied but answer lost /
//!    stale epochs / ineligible), answers delayed, reordered and replayed, leader epoch bumps.
//!    After every step: every offset below the HW is durable on every member of the
//!    controller's ISR and of the leader's committed ISR, and on at least the effective min ISR
//!    replicas; the HW never decreases; every acknowledged acks=all write is below the HW and
//!    was durable on at least min ISR replicas (and every controller-ISR member) when acked.
//!    Negative controls: two deliberately broken drivers must make the checker fail.
//! 2. `truncation_offset` against brute-force divergent logs: after the fetch/truncate
//!    protocol converges the follower log is a prefix of the leader log and no entry the two
//!    logs shared was cut.

use std::collections::BTreeSet;

use crate::*;

const LAG_MS: i64 = 1_000;
const L: BrokerId = 1;
const FIRST_EPOCH: i32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// The follower fetches at its log end before fsync (reports page cache, like Kafka).
    FollowerReportsLogEnd,
    /// The leader reports its log end as durable right after an append.
    LeaderCountsLogEnd,
    /// The leader advances the HW while the committed ISR is below min ISR (no KIP-966 rule).
    HwBelowMinIsr,
}

#[derive(Debug, Clone)]
struct Node {
    id: BrokerId,
    log: Vec<(i32, u64)>,
    durable: usize,
    broker_epoch: i64,
    paused_since: Option<i64>,
    follower: Option<FollowerState>,
    meta_applied: usize,
}

#[derive(Debug, Clone)]
struct Meta {
    leader_epoch: i32,
    partition_epoch: i32,
    isr: Vec<BrokerId>,
    brokers: Vec<(BrokerId, BrokerStatus)>,
}

struct Ctrl {
    leader_epoch: i32,
    partition_epoch: i32,
    isr: BTreeSet<BrokerId>,
    fenced: BTreeSet<BrokerId>,
}

type AlterResult = Result<AlterPartitionOk, AlterPartitionError>;

struct Sim {
    rng: fastrand::Rng,
    bug: Bug,
    now: i64,
    replicas: Vec<BrokerId>,
    nodes: Vec<Node>,
    leader: LeaderState,
    leader_epochs: Vec<(i32, i64)>,
    ctrl: Ctrl,
    meta_log: Vec<Meta>,
    at_ctrl: Vec<AlterIsr>,
    responses: Vec<(u64, AlterResult)>,
    delivered: Vec<(u64, AlterResult)>,
    waiting_acks: Vec<(i64, i32)>,
    acked_max: i64,
    acked_count: u64,
    refused_count: u64,
    prev_hw: i64,
    next_record: u64,
    /// Coverage counters, printed by the main test (`--nocapture`).
    stats: std::collections::BTreeMap<&'static str, u64>,
}

fn epochs_of(log: &[(i32, u64)]) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for (i, (e, _)) in log.iter().enumerate() {
        if out.last().is_none_or(|l| l.0 != *e) {
            out.push((*e, i as i64));
        }
    }
    out
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Sim {
    fn new(seed: u64, bug: Bug) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=5);
        let replicas: Vec<BrokerId> = (1..=n as BrokerId).collect();
        let min_isr = [1, 2, 2, 2, 3, n][rng.usize(0..6)];
        let nodes: Vec<Node> = replicas
            .iter()
            .map(|id| Node {
                id: *id,
                log: Vec::new(),
                durable: 0,
                broker_epoch: 100,
                paused_since: None,
                follower: (*id != L).then(|| {
                    FollowerState::new(
                        FollowerRegistration {
                            leader_id: L,
                            leader_epoch: FIRST_EPOCH,
                            partition_epoch: 1,
                        },
                        0,
                        None,
                        0,
                    )
                }),
                meta_applied: 1,
            })
            .collect();
        let brokers: Vec<(BrokerId, BrokerStatus)> = replicas
            .iter()
            .map(|id| (*id, BrokerStatus::alive(100)))
            .collect();
        let mut leader = LeaderState::new(
            L,
            100,
            &LeaderRegistration {
                leader_epoch: FIRST_EPOCH,
                partition_epoch: 1,
                replicas: replicas.clone(),
                isr: replicas.clone(),
            },
            LeaderConfig {
                min_insync_replicas: min_isr,
                replica_lag_time_max_ms: LAG_MS,
            },
            LocalLogView {
                log_end: 0,
                durable_end: 0,
                high_watermark: 0,
            },
            0,
        )
        .expect("valid");
        for (id, st) in &brokers {
            leader.update_broker(*id, *st, 0);
        }
        leader.bug_ignore_min_isr = bug == Bug::HwBelowMinIsr;
        Sim {
            rng,
            bug,
            now: 0,
            replicas: replicas.clone(),
            nodes,
            leader,
            leader_epochs: vec![(FIRST_EPOCH, 0)],
            ctrl: Ctrl {
                leader_epoch: FIRST_EPOCH,
                partition_epoch: 1,
                isr: replicas.iter().copied().collect(),
                fenced: BTreeSet::new(),
            },
            meta_log: vec![Meta {
                leader_epoch: FIRST_EPOCH,
                partition_epoch: 1,
                isr: replicas.clone(),
                brokers,
            }],
            at_ctrl: Vec::new(),
            responses: Vec::new(),
            delivered: Vec::new(),
            waiting_acks: Vec::new(),
            acked_max: 0,
            acked_count: 0,
            refused_count: 0,
            prev_hw: 0,
            next_record: 0,
            stats: Default::default(),
        }
    }

    fn idx(&self, id: BrokerId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("known node")
    }

    fn push_meta(&mut self) {
        let brokers = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    BrokerStatus {
                        broker_epoch: Some(n.broker_epoch),
                        fenced: self.ctrl.fenced.contains(&n.id),
                        in_controlled_shutdown: false,
                    },
                )
            })
            .collect();
        self.meta_log.push(Meta {
            leader_epoch: self.ctrl.leader_epoch,
            partition_epoch: self.ctrl.partition_epoch,
            isr: self.ctrl.isr.iter().copied().collect(),
            brokers,
        });
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn send(&mut self, alter: Option<AlterIsr>) {
        if let Some(a) = alter {
            self.count(if a.new_isr.len() > self.leader.committed_isr().len() {
                "propose expand"
            } else {
                "propose shrink"
            });
            self.at_ctrl.push(a);
        }
    }

    fn leader_log_end(&self) -> i64 {
        self.nodes[0].log.len() as i64
    }

    fn produce(&mut self, acks: Acks) {
        if self.leader.check_before_append(acks).is_err() {
            self.refused_count += 1;
            return;
        }
        let epoch = self.leader.leader_epoch();
        for _ in 0..self.rng.usize(1..=3) {
            self.next_record += 1;
            let r = self.next_record;
            self.nodes[0].log.push((epoch, r));
        }
        let leo = self.leader_log_end();
        self.leader.on_local_append(leo, self.now);
        if self.bug == Bug::LeaderCountsLogEnd {
            self.leader.on_local_durable(leo, self.now);
        }
        if acks == Acks::All {
            self.waiting_acks.push((leo, epoch));
        }
    }

    fn follower_fetch(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        if node.paused_since.is_some() {
            return Ok(());
        }
        let fs = node.follower.as_ref().expect("follower");
        let pos = if self.bug == Bug::FollowerReportsLogEnd {
            FetchPosition {
                fetch_offset: node.log.len() as i64,
                last_fetched_epoch: fs.last_fetched_epoch(),
                current_leader_epoch: fs.leader_epoch(),
            }
        } else {
            match fs.next_fetch(node.log.len() as i64, node.durable as i64) {
                Some(p) => p,
                None => return Ok(()), // waiting for its fsync
            }
        };
        let leo = self.leader_log_end();
        let div = diverging_epoch(
            &self.leader_epochs,
            0,
            leo,
            pos.last_fetched_epoch,
            pos.fetch_offset,
        );
        ensure!(div == Ok(None), "unexpected divergence {div:?} at {pos:?}");
        let req = FollowerFetch {
            replica_id: node.id,
            broker_epoch: node.broker_epoch,
            current_leader_epoch: Some(pos.current_leader_epoch),
            fetch_offset: pos.fetch_offset,
            log_start: 0,
        };
        match self.leader.on_follower_fetch(req, leo, self.now) {
            Ok(out) => self.send(out.alter_isr),
            Err(
                ReplicaError::FencedLeaderEpoch { .. } | ReplicaError::UnknownLeaderEpoch { .. },
            ) => {
                self.count("fetch: epoch mismatch");
                return Ok(());
            }
            Err(e) => return Err(format!("fetch {req:?} refused: {e}")),
        }
        let hw = self.leader.high_watermark();
        let from = pos.fetch_offset as usize;
        let to = (from + self.rng.usize(0..=4)).min(leo as usize);
        let batch: Vec<(i32, u64)> = self.nodes[0].log[from..to].to_vec();
        let node = &mut self.nodes[i];
        ensure!(
            node.log.len() == from,
            "follower log end {} != fetch offset {from}",
            node.log.len()
        );
        node.log.extend_from_slice(&batch);
        let epochs = epochs_of(&node.log);
        let (log_end, durable) = (node.log.len() as i64, node.durable as i64);
        let fs = node.follower.as_mut().expect("follower");
        let action = fs.on_fetch_response(
            FetchResult::Records {
                leader_high_watermark: hw,
                last_appended_epoch: batch.last().map(|b| b.0),
                log_end,
            },
            &epochs,
            log_end,
            durable,
        );
        ensure!(action == FollowerAction::Continue, "unexpected {action:?}");
        Ok(())
    }

    fn follower_crash(&mut self, i: usize) {
        self.count("follower crash");
        let meta = self.meta_log[self.nodes[i].meta_applied - 1].clone();
        let node = &mut self.nodes[i];
        node.log.truncate(node.durable);
        node.broker_epoch += 1;
        node.paused_since = None;
        let hw = node.follower.as_ref().map_or(0, |f| f.high_watermark());
        node.follower = Some(FollowerState::new(
            FollowerRegistration {
                leader_id: L,
                leader_epoch: meta.leader_epoch,
                partition_epoch: meta.partition_epoch,
            },
            node.log.len() as i64,
            node.log.last().map(|e| e.0),
            hw,
        ));
        // Re-registration with a new broker epoch; the controller unfences it.
        let id = node.id;
        self.ctrl.fenced.remove(&id);
        self.push_meta();
    }

    fn controller_process(&mut self) {
        if self.at_ctrl.is_empty() {
            return;
        }
        let req = self.at_ctrl.remove(self.rng.usize(0..self.at_ctrl.len()));
        let roll = self.rng.u8(0..100);
        let ineligible = req.new_isr.iter().any(|m| {
            let n = &self.nodes[self.idx(m.broker_id)];
            self.ctrl.fenced.contains(&m.broker_id)
                || (m.broker_epoch != -1 && m.broker_epoch != n.broker_epoch)
        });
        let result = if roll < 10 {
            Err(AlterPartitionError::Retriable(codes::NOT_CONTROLLER))
        } else if req.leader_epoch != self.ctrl.leader_epoch {
            Err(AlterPartitionError::FencedLeaderEpoch)
        } else if req.partition_epoch != self.ctrl.partition_epoch {
            Err(AlterPartitionError::InvalidUpdateVersion)
        } else if ineligible {
            Err(AlterPartitionError::IneligibleReplica)
        } else if roll < 15 {
            Err(AlterPartitionError::OperationNotAttempted)
        } else {
            self.ctrl.isr = req.isr_ids().into_iter().collect();
            self.ctrl.partition_epoch += 1;
            self.push_meta();
            if roll < 25 {
                Err(AlterPartitionError::Retriable(codes::REQUEST_TIMED_OUT)) // applied, answer lost
            } else {
                Ok(AlterPartitionOk {
                    leader_epoch: self.ctrl.leader_epoch,
                    partition_epoch: self.ctrl.partition_epoch,
                    isr: self.ctrl.isr.iter().copied().collect(),
                })
            }
        };
        self.responses.push((req.request_id, result));
    }

    fn deliver_response(&mut self) -> Result<(), String> {
        let replay = !self.delivered.is_empty() && self.rng.u8(0..10) == 0;
        if replay {
            let (id, r) = self.delivered[self.rng.usize(0..self.delivered.len())].clone();
            let out = self.leader.on_alter_partition_response(id, r, self.now);
            ensure!(
                out == AlterOutcome::Ignored,
                "replayed answer {id} not ignored: {out:?}"
            );
            return Ok(());
        }
        if self.responses.is_empty() {
            return Ok(());
        }
        let (id, r) = self
            .responses
            .remove(self.rng.usize(0..self.responses.len()));
        self.delivered.push((id, r.clone()));
        match self.leader.on_alter_partition_response(id, r, self.now) {
            AlterOutcome::Resend(a) => {
                self.count("answer: resend");
                self.at_ctrl.push(a);
            }
            AlterOutcome::Committed { .. } => self.count("answer: committed"),
            AlterOutcome::Reverted { .. } => self.count("answer: reverted"),
            AlterOutcome::AwaitMetadata => self.count("answer: await metadata"),
            AlterOutcome::Ignored => self.count("answer: ignored"),
        }
        Ok(())
    }

    fn deliver_meta(&mut self, i: usize) {
        let applied = self.nodes[i].meta_applied;
        if applied >= self.meta_log.len() {
            return;
        }
        let m = self.meta_log[applied].clone();
        self.nodes[i].meta_applied += 1;
        let leo = self.nodes[i].log.len() as i64;
        if i == 0 {
            let reg = LeaderRegistration {
                leader_epoch: m.leader_epoch,
                partition_epoch: m.partition_epoch,
                replicas: self.replicas.clone(),
                isr: m.isr.clone(),
            };
            let out = self
                .leader
                .become_leader(&reg, leo, self.now)
                .expect("valid registration");
            self.count(match out {
                BecomeLeader::Skipped => "metadata: skipped",
                BecomeLeader::Applied {
                    new_leader_epoch: true,
                    ..
                } => "metadata: new leader epoch",
                BecomeLeader::Applied { .. } => "metadata: applied",
            });
            if matches!(
                out,
                BecomeLeader::Applied {
                    new_leader_epoch: true,
                    ..
                }
            ) {
                self.leader_epochs.push((m.leader_epoch, leo));
            }
            for (id, st) in &m.brokers {
                self.leader.update_broker(*id, *st, self.now);
            }
        } else {
            let latest = self.nodes[i].log.last().map(|e| e.0);
            let fs = self.nodes[i].follower.as_mut().expect("follower");
            fs.become_follower(
                FollowerRegistration {
                    leader_id: L,
                    leader_epoch: m.leader_epoch,
                    partition_epoch: m.partition_epoch,
                },
                leo,
                latest,
            );
        }
    }

    fn check_acks(&mut self) -> Result<(), String> {
        let eff_min = self.leader.effective_min_isr();
        let mut still = Vec::new();
        for (required, epoch) in std::mem::take(&mut self.waiting_acks) {
            match self.leader.check_after_append(required, epoch) {
                AckDecision::Wait => still.push((required, epoch)),
                AckDecision::Ack => {
                    let holders = self
                        .nodes
                        .iter()
                        .filter(|n| n.durable as i64 >= required)
                        .count();
                    ensure!(
                        holders >= eff_min,
                        "acked offset {required} durable on {holders} < min ISR {eff_min}"
                    );
                    for m in &self.ctrl.isr {
                        let n = &self.nodes[self.idx(*m)];
                        ensure!(
                            n.durable as i64 >= required,
                            "acked offset {required} not durable on controller-ISR member {m}"
                        );
                    }
                    self.acked_max = self.acked_max.max(required);
                    self.acked_count += 1;
                }
                AckDecision::NotEnoughReplicasAfterAppend => {
                    self.count("ack: not enough after append")
                }
                AckDecision::NotLeader => self.count("ack: not leader"),
            }
        }
        self.waiting_acks = still;
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let hw = self.leader.high_watermark();
        ensure!(
            hw >= self.prev_hw,
            "HW went back from {} to {hw}",
            self.prev_hw
        );
        self.prev_hw = hw;
        ensure!(self.ctrl.isr.contains(&L), "controller ISR lost the leader");
        let members: BTreeSet<BrokerId> = self
            .ctrl
            .isr
            .union(self.leader.committed_isr())
            .copied()
            .collect();
        for m in members {
            let n = &self.nodes[self.idx(m)];
            ensure!(
                n.durable as i64 >= hw,
                "HW {hw} but ISR member {m} is durable only to {} (controller ISR {:?}, leader ISR {:?})",
                n.durable,
                self.ctrl.isr,
                self.leader.committed_isr()
            );
        }
        let holders = self.nodes.iter().filter(|n| n.durable as i64 >= hw).count();
        ensure!(
            holders >= self.leader.effective_min_isr(),
            "HW {hw} durable on {holders} replicas < min ISR"
        );
        ensure!(
            self.acked_max <= hw,
            "acked {} above HW {hw}",
            self.acked_max
        );
        let leader_log = &self.nodes[0].log;
        for n in &self.nodes[1..] {
            ensure!(
                leader_log.starts_with(&n.log),
                "follower {} log is not a prefix",
                n.id
            );
            let fhw = n.follower.as_ref().map_or(0, |f| f.high_watermark());
            ensure!(
                fhw <= n.durable as i64 && fhw <= hw,
                "follower {} HW {fhw} too high",
                n.id
            );
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += self.rng.i64(0..=LAG_MS / 3);
        let n = self.nodes.len();
        let roll = self.rng.u8(0..100);
        let pick_follower = self.rng.usize(1..n);
        let pick_node = self.rng.usize(0..n);
        match roll {
            0..20 => self.produce(Acks::All),
            20..25 => self.produce(Acks::Leader),
            25..37 => {
                let d = self.nodes[0].log.len();
                self.nodes[0].durable = d;
                self.leader.on_local_durable(d as i64, self.now);
            }
            37..62 => self.follower_fetch(pick_follower)?,
            62..72 => {
                let i = self.rng.usize(1..n);
                let node = &mut self.nodes[i];
                node.durable = node.log.len();
                let d = node.durable as i64;
                node.follower
                    .as_mut()
                    .expect("follower")
                    .on_local_durable(d);
            }
            72..75 => self.follower_crash(pick_follower),
            75..78 => {
                let i = self.rng.usize(1..n);
                let now = self.now;
                let node = &mut self.nodes[i];
                node.paused_since = match node.paused_since {
                    Some(_) => None,
                    None => Some(now),
                };
                if node.paused_since.is_none() && self.ctrl.fenced.remove(&node.id) {
                    self.push_meta();
                }
            }
            78..84 => {
                let leo = self.leader_log_end();
                let a = self.leader.maybe_shrink_isr(self.now, leo);
                self.send(a);
            }
            84..90 => self.controller_process(),
            90..95 => self.deliver_response()?,
            95..99 => self.deliver_meta(pick_node),
            _ => {
                if self.rng.bool() {
                    // Leader epoch bump (e.g. a re-election of the same leader).
                    self.ctrl.leader_epoch += 1;
                    self.ctrl.partition_epoch += 1;
                    self.push_meta();
                } else {
                    // The controller fences brokers paused for long and drops them from the ISR.
                    let now = self.now;
                    let long: Vec<BrokerId> = self
                        .nodes
                        .iter()
                        .filter(|n| n.paused_since.is_some_and(|t| now - t > 2 * LAG_MS))
                        .map(|n| n.id)
                        .filter(|id| !self.ctrl.fenced.contains(id))
                        .collect();
                    if !long.is_empty() {
                        for id in long {
                            self.ctrl.fenced.insert(id);
                            self.ctrl.isr.remove(&id);
                        }
                        self.ctrl.partition_epoch += 1;
                        self.push_meta();
                    }
                }
            }
        }
        self.check_acks()?;
        self.check()
    }
}

type Stats = std::collections::BTreeMap<&'static str, u64>;

fn run(seed: u64, steps: usize, bug: Bug) -> Result<(u64, u64, Stats), String> {
    let mut sim = Sim::new(seed, bug);
    for step in 0..steps {
        sim.step()
            .map_err(|e| format!("seed {seed} step {step}: {e}"))?;
    }
    *sim.stats.entry("final HW sum").or_default() += sim.leader.high_watermark() as u64;
    Ok((sim.acked_count, sim.refused_count, sim.stats))
}

const SEEDS: u64 = 300;
const STEPS: usize = 300;

#[test]
fn model_every_offset_below_hw_is_durable_on_the_isr() {
    let (mut acked, mut refused, mut stats) = (0, 0, Stats::new());
    for seed in 0..SEEDS {
        let (a, r, s) = run(seed, STEPS, Bug::None).unwrap_or_else(|e| panic!("{e}"));
        acked += a;
        refused += r;
        for (k, v) in s {
            *stats.entry(k).or_default() += v;
        }
    }
    eprintln!("model coverage: {stats:?}");
    // Not vacuous: writes were acknowledged, and some were refused under min ISR.
    eprintln!("model: {acked} acks=all acknowledged, {refused} refused with NOT_ENOUGH_REPLICAS");
    assert!(acked > SEEDS * 5, "only {acked} acks");
    assert!(refused > 0, "NOT_ENOUGH_REPLICAS never exercised");
}

#[test]
fn model_negative_control_follower_reporting_log_end_is_caught() {
    let failures: Vec<String> = (0..SEEDS)
        .filter_map(|seed| run(seed, STEPS, Bug::FollowerReportsLogEnd).err())
        .collect();
    eprintln!(
        "follower-LEO control: {} of {SEEDS} runs fail; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        failures.len() as u64 > SEEDS / 10,
        "checker caught only {} runs",
        failures.len()
    );
    assert!(
        failures.iter().any(|f| f.contains("durable")),
        "{failures:?}"
    );
}

#[test]
fn model_negative_control_leader_counting_log_end_is_caught() {
    let failures: Vec<String> = (0..SEEDS)
        .filter_map(|seed| run(seed, STEPS, Bug::LeaderCountsLogEnd).err())
        .collect();
    eprintln!(
        "leader-LEO control: {} of {SEEDS} runs fail; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        failures.len() as u64 > SEEDS / 10,
        "checker caught only {} runs",
        failures.len()
    );
}

#[test]
fn model_negative_control_hw_below_min_isr_is_caught() {
    let failures: Vec<String> = (0..SEEDS)
        .filter_map(|seed| run(seed, STEPS, Bug::HwBelowMinIsr).err())
        .collect();
    eprintln!(
        "min-ISR control: {} of {SEEDS} runs fail; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        failures.len() as u64 > SEEDS / 20,
        "checker caught only {} runs",
        failures.len()
    );
}

// ---- 2. truncation against brute-force divergent logs ----

/// A replica for the truncation model: its log of `(epoch, record id)` and its epoch cache,
/// maintained as Kafka's `LeaderEpochFileCache` is: a leader assigns `(epoch, log end)` when
/// elected, a follower adds an entry when it appends a batch of a newer epoch, truncation drops
/// entries starting at or after the cut.
#[derive(Debug, Clone, Default)]
struct TReplica {
    log: Vec<(i32, u64)>,
    cache: Vec<(i32, i64)>,
}

impl TReplica {
    fn truncate(&mut self, offset: i64) {
        self.log.truncate(offset as usize);
        self.cache.retain(|e| e.1 < offset);
    }
    fn append(&mut self, entry: (i32, u64)) {
        if self.cache.last().is_none_or(|l| l.0 < entry.0) {
            self.cache.push((entry.0, self.log.len() as i64));
        }
        self.log.push(entry);
    }
}

fn common_prefix(a: &[(i32, u64)], b: &[(i32, u64)]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One fetch round trip of `f` against leader `l`, using the crate's functions on both sides.
/// Returns whether the leader accepted the position (then `batch` entries were appended).
type TruncFn = fn(&[(i32, i64)], i64, i32, i64) -> Truncation;

fn fetch_round(
    f: &mut TReplica,
    l: &TReplica,
    batch: usize,
    trunc: TruncFn,
) -> Result<bool, String> {
    let last_fetched_epoch = f.cache.last().map(|e| e.0);
    let fetch_offset = f.log.len() as i64;
    let leader_end = l.log.len() as i64;
    match diverging_epoch(&l.cache, 0, leader_end, last_fetched_epoch, fetch_offset) {
        Err(_) => match out_of_range_action(fetch_offset, 0, leader_end) {
            OutOfRangeAction::TruncateTo(o) => {
                f.truncate(o);
                Ok(false)
            }
            other => Err(format!("unexpected {other:?}")),
        },
        Ok(Some(d)) => {
            let t = trunc(&f.cache, fetch_offset, d.epoch, d.end_offset);
            ensure!(t.offset <= fetch_offset, "truncation past log end");
            f.truncate(t.offset);
            Ok(false)
        }
        Ok(None) => {
            ensure!(
                l.log.starts_with(&f.log),
                "leader accepted position {fetch_offset}/{last_fetched_epoch:?} of a diverged log:\n  follower {:?} {:?}\n  leader   {:?} {:?}",
                f.log,
                f.cache,
                l.log,
                l.cache
            );
            for e in l.log[f.log.len()..].iter().take(batch) {
                f.append(*e);
            }
            Ok(true)
        }
    }
}

/// Runs the protocol until the follower has the leader's whole log. Returns the smallest log
/// end the follower went through.
fn full_sync(f: &mut TReplica, l: &TReplica, trunc: TruncFn) -> Result<usize, String> {
    let mut low = f.log.len();
    for _ in 0..200 {
        if fetch_round(f, l, 3, trunc)? && f.log.len() == l.log.len() {
            return Ok(low);
        }
        low = low.min(f.log.len());
    }
    Err(format!(
        "no convergence: follower {:?} leader {:?}",
        f.log, l.log
    ))
}

fn truncation_run(seed: u64, trunc: TruncFn) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = rng.usize(2..=4);
    let mut reps = vec![TReplica::default(); n];
    let mut epoch = 0;
    let mut next_id = 0u64;
    for _ in 0..rng.usize(1..=8) {
        epoch += rng.i32(1..=2);
        // Any replica may win, as in an unclean election: epochs alone must sort logs out.
        let li = rng.usize(0..n);
        let start = reps[li].log.len() as i64;
        reps[li].cache.push((epoch, start));
        for _ in 0..rng.usize(0..=4) {
            next_id += 1;
            reps[li].log.push((epoch, next_id));
        }
        let leader = reps[li].clone();
        for (i, r) in reps.iter_mut().enumerate() {
            if i != li && rng.bool() {
                for _ in 0..rng.usize(1..=4) {
                    fetch_round(r, &leader, rng.usize(1..=3), trunc)?;
                }
            }
        }
    }
    // A final leader; everyone else converges to its log without cutting shared entries.
    epoch += 1;
    let li = rng.usize(0..n);
    let start = reps[li].log.len() as i64;
    reps[li].cache.push((epoch, start));
    let leader = reps[li].clone();
    for (i, r) in reps.iter_mut().enumerate() {
        if i == li {
            continue;
        }
        let shared = common_prefix(&r.log, &leader.log);
        let before = r.clone();
        let low = full_sync(r, &leader, trunc)?;
        ensure!(r.log == leader.log, "follower did not converge");
        ensure!(
            low >= shared,
            "truncated to {low} below the {shared} shared entries:\n  follower {:?} {:?}\n  leader   {:?} {:?}",
            before.log,
            before.cache,
            leader.log,
            leader.cache
        );
    }
    Ok(())
}

#[test]
fn truncation_converges_to_leader_prefix_without_cutting_shared_entries() {
    for seed in 0..2_000 {
        truncation_run(seed, truncation_offset).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn truncation_negative_controls_are_caught() {
    // Ignores the leader's end offset for a shared epoch (KIP-101 without KIP-279's min).
    fn ignore_leader_end(local: &[(i32, i64)], log_end: i64, epoch: i32, end: i64) -> Truncation {
        let t = truncation_offset(local, log_end, epoch, end);
        match end_offset_for(local, epoch, log_end) {
            Some(found) if found.epoch == epoch => Truncation {
                offset: found.end_offset.min(log_end),
                complete: true,
            },
            _ => t,
        }
    }
    // Trusts the leader's end offset even for an epoch this replica never had.
    fn trust_leader_end(_: &[(i32, i64)], log_end: i64, _: i32, end: i64) -> Truncation {
        Truncation {
            offset: end.min(log_end),
            complete: true,
        }
    }
    for (name, f) in [
        ("ignore leader end", ignore_leader_end as TruncFn),
        ("trust leader end", trust_leader_end as TruncFn),
    ] {
        let failures = (0..2_000)
            .filter(|seed| truncation_run(*seed, f).is_err())
            .count();
        eprintln!("truncation control '{name}': {failures} of 2000 runs fail");
        assert!(failures > 0, "{name}: the checker never failed");
    }
}
