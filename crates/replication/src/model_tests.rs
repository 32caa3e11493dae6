//! Model-based property tests.
//!
//! 1. A simulated partition on 3-5 brokers: a controller holding the authoritative leader,
//!    leader epoch, ISR and partition epoch; a metadata log each broker applies at its own
//!    pace; each broker with a log of `(epoch, record id)`, a separate durable end, an epoch
//!    cache kept as Kafka keeps it, and a role: [`LeaderState`] or [`FollowerState`]. Random
//!    steps: appends (acks=all and acks=1) to whichever broker believes it leads, fsyncs,
//!    follower fetches (at the durable end, by Holdfast's rule) with divergence and
//!    truncation, follower crashes (log end falls back to the durable end, new broker epoch),
//!    pauses (lagging followers are shrunk out, long pauses get fenced and dropped from the ISR
//!    by the controller), ISR-expiration ticks, AlterPartition requests processed by the
//!    controller with failures (not applied / applied but answer lost / stale epochs /
//!    ineligible), answers delayed, reordered and replayed, leader epoch bumps, and clean
//!    failovers (a new leader from the controller's ISR; the old one may crash, or keep
//!    believing it leads until its metadata catches up).
//!    After every step: every offset below the current leader's HW is durable, with the
//!    leader's data, on every member of the controller's and the leader's ISR and on at least
//!    the effective min ISR replicas; no leader's HW decreases; every acknowledged acks=all
//!    write is durable, at its offset, on every member of the controller's ISR (so any
//!    future leader has it); when acknowledged it was on at least min ISR replicas.
//!    Negative controls: four deliberately broken drivers must make the checker fail.
//! 2. `truncation_offset` against brute-force divergent logs: after the fetch/truncate
//!    protocol converges the follower log is a prefix of the leader log and no entry the two
//!    logs shared was cut.

use std::collections::BTreeSet;

use crate::*;

const LAG_MS: i64 = 1_000;
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
    /// The controller may elect a leader outside the ISR (unclean election).
    UncleanElection,
    /// Kafka's `makeLeader`: a registration with the same epochs drops a pending AlterPartition.
    KafkaResetPendingOnSameEpoch,
}

#[derive(Debug, Clone)]
enum Role {
    Leader(Box<LeaderState>),
    Follower(FollowerState),
}

#[derive(Debug, Clone)]
struct Node {
    id: BrokerId,
    log: Vec<(i32, u64)>,
    durable: usize,
    /// Kafka's leader epoch cache for this log: `(epoch, start offset)`.
    cache: Vec<(i32, i64)>,
    broker_epoch: i64,
    paused_since: Option<i64>,
    role: Role,
    meta_applied: usize,
    /// The HW of the current `LeaderState` at the previous check (monotonic per leadership).
    prev_leader_hw: i64,
}

impl Node {
    fn truncate(&mut self, offset: usize) {
        self.log.truncate(offset);
        self.durable = self.durable.min(offset);
        self.cache.retain(|e| e.1 < offset as i64);
    }
    fn append(&mut self, entry: (i32, u64)) {
        if self.cache.last().is_none_or(|l| l.0 < entry.0) {
            self.cache.push((entry.0, self.log.len() as i64));
        }
        self.log.push(entry);
    }
    fn leader(&self) -> Option<&LeaderState> {
        match &self.role {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }
    fn leader_mut(&mut self) -> Option<&mut LeaderState> {
        match &mut self.role {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Meta {
    leader: BrokerId,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: Vec<BrokerId>,
    brokers: Vec<(BrokerId, BrokerStatus)>,
}

struct Ctrl {
    leader: BrokerId,
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
    config: LeaderConfig,
    nodes: Vec<Node>,
    ctrl: Ctrl,
    meta_log: Vec<Meta>,
    /// AlterPartition requests at the controller, with the broker that sent them.
    at_ctrl: Vec<(BrokerId, AlterIsr)>,
    responses: Vec<(BrokerId, u64, AlterResult)>,
    delivered: Vec<(BrokerId, u64, AlterResult)>,
    /// acks=all appends waiting: (leader broker, required offset, leader epoch of the append).
    waiting_acks: Vec<(BrokerId, i64, i32)>,
    /// The longest log prefix covered by an acknowledged acks=all write.
    acked_prefix: Vec<(i32, u64)>,
    acked_count: u64,
    refused_count: u64,
    next_record: u64,
    /// Coverage counters, printed by the main test (`--nocapture`).
    stats: std::collections::BTreeMap<&'static str, u64>,
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn leader_reg(replicas: &[BrokerId], m: &Meta) -> LeaderRegistration {
    LeaderRegistration {
        leader_epoch: m.leader_epoch,
        partition_epoch: m.partition_epoch,
        replicas: replicas.to_vec(),
        isr: m.isr.clone(),
    }
}

fn follower_reg(m: &Meta) -> FollowerRegistration {
    FollowerRegistration {
        leader_id: m.leader,
        leader_epoch: m.leader_epoch,
        partition_epoch: m.partition_epoch,
    }
}

impl Sim {
    fn new(seed: u64, bug: Bug) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=5);
        let replicas: Vec<BrokerId> = (1..=n as BrokerId).collect();
        let config = LeaderConfig {
            min_insync_replicas: [1, 2, 2, 2, 3, n][rng.usize(0..6)],
            replica_lag_time_max_ms: LAG_MS,
        };
        let brokers: Vec<(BrokerId, BrokerStatus)> = replicas
            .iter()
            .map(|id| (*id, BrokerStatus::alive(100)))
            .collect();
        let meta = Meta {
            leader: 1,
            leader_epoch: FIRST_EPOCH,
            partition_epoch: 1,
            isr: replicas.clone(),
            brokers: brokers.clone(),
        };
        let nodes: Vec<Node> = replicas
            .iter()
            .map(|id| {
                let role = if *id == meta.leader {
                    let mut l = LeaderState::new(
                        *id,
                        100,
                        &leader_reg(&replicas, &meta),
                        config,
                        LocalLogView {
                            log_end: 0,
                            durable_end: 0,
                            high_watermark: 0,
                        },
                        0,
                    )
                    .expect("valid");
                    for (b, st) in &brokers {
                        l.update_broker(*b, *st, 0);
                    }
                    l.bug_ignore_min_isr = bug == Bug::HwBelowMinIsr;
                    l.bug_reset_pending_on_same_epoch = bug == Bug::KafkaResetPendingOnSameEpoch;
                    Role::Leader(Box::new(l))
                } else {
                    Role::Follower(FollowerState::new(follower_reg(&meta), 0, None, 0))
                };
                Node {
                    id: *id,
                    log: Vec::new(),
                    durable: 0,
                    cache: if *id == meta.leader {
                        vec![(FIRST_EPOCH, 0)]
                    } else {
                        Vec::new()
                    },
                    broker_epoch: 100,
                    paused_since: None,
                    role,
                    meta_applied: 1,
                    prev_leader_hw: 0,
                }
            })
            .collect();
        Sim {
            rng,
            bug,
            now: 0,
            replicas: replicas.clone(),
            config,
            nodes,
            ctrl: Ctrl {
                leader: meta.leader,
                leader_epoch: FIRST_EPOCH,
                partition_epoch: 1,
                isr: replicas.iter().copied().collect(),
                fenced: BTreeSet::new(),
            },
            meta_log: vec![meta],
            at_ctrl: Vec::new(),
            responses: Vec::new(),
            delivered: Vec::new(),
            waiting_acks: Vec::new(),
            acked_prefix: Vec::new(),
            acked_count: 0,
            refused_count: 0,
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

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
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
            leader: self.ctrl.leader,
            leader_epoch: self.ctrl.leader_epoch,
            partition_epoch: self.ctrl.partition_epoch,
            isr: self.ctrl.isr.iter().copied().collect(),
            brokers,
        });
    }

    fn send(&mut self, from: BrokerId, alter: Option<AlterIsr>) {
        if let Some(a) = alter {
            let committed = self.nodes[self.idx(from)]
                .leader()
                .map_or(0, |l| l.committed_isr().len());
            self.count(if a.new_isr.len() > committed {
                "propose expand"
            } else {
                "propose shrink"
            });
            self.at_ctrl.push((from, a));
        }
    }

    /// Indices of brokers that currently believe they lead.
    fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].leader().is_some())
            .collect()
    }

    fn produce(&mut self, acks: Acks) {
        let leaders = self.leaders();
        if leaders.is_empty() {
            return;
        }
        let i = leaders[self.rng.usize(0..leaders.len())];
        let k = self.rng.usize(1..=3);
        let bug = self.bug;
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(l) = node.leader() else { return };
        if l.check_before_append(acks).is_err() {
            self.refused_count += 1;
            return;
        }
        let epoch = l.leader_epoch();
        for _ in 0..k {
            self.next_record += 1;
            node.append((epoch, self.next_record));
        }
        let leo = node.log.len() as i64;
        let l = node.leader_mut().expect("leader");
        l.on_local_append(leo, now);
        if bug == Bug::LeaderCountsLogEnd {
            l.on_local_durable(leo, now);
        }
        if acks == Acks::All {
            let id = node.id;
            self.waiting_acks.push((id, leo, epoch));
        }
    }

    fn fsync(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.durable = node.log.len();
        let d = node.durable as i64;
        match &mut node.role {
            Role::Leader(l) => {
                l.on_local_durable(d, now);
            }
            Role::Follower(f) => {
                f.on_local_durable(d);
            }
        }
    }

    fn follower_fetch(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let Role::Follower(fs) = &node.role else {
            return Ok(());
        };
        if node.paused_since.is_some() {
            return Ok(());
        }
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
        let li = self.idx(fs.leader_id());
        let target = &self.nodes[li];
        let Some(l) = target.leader() else {
            self.count("fetch: target not leader");
            return Ok(());
        };
        if l.leader_epoch() != pos.current_leader_epoch {
            self.count("fetch: epoch mismatch");
            return Ok(());
        }
        let leo = target.log.len() as i64;
        let result = match diverging_epoch(
            &target.cache,
            0,
            leo,
            pos.last_fetched_epoch,
            pos.fetch_offset,
        ) {
            Err(_) => Some(FetchResult::OffsetOutOfRange {
                leader_log_start: 0,
                leader_log_end: leo,
            }),
            Ok(Some(d)) => Some(FetchResult::Diverging(d)),
            Ok(None) => None,
        };
        if let Some(result) = result {
            self.count("fetch: diverging / out of range");
            let node = &mut self.nodes[i];
            let (len, durable) = (node.log.len() as i64, node.durable as i64);
            let Role::Follower(fs) = &mut node.role else {
                unreachable!()
            };
            let action = fs.on_fetch_response(result, &node.cache, len, durable);
            match action {
                FollowerAction::Truncate(t) => {
                    if t.offset < len {
                        *self.stats.entry("follower truncation").or_default() += 1;
                    }
                    node.truncate(t.offset as usize);
                    let latest = node.cache.last().map(|e| e.0);
                    let Role::Follower(fs) = &mut node.role else {
                        unreachable!()
                    };
                    fs.on_truncated(node.log.len() as i64, latest);
                }
                FollowerAction::Continue => {}
                FollowerAction::TruncateFullyAndStartAt(o) => {
                    return Err(format!("unexpected full truncation to {o}"))
                }
            }
            return Ok(());
        }
        let req = FollowerFetch {
            replica_id: node.id,
            broker_epoch: node.broker_epoch,
            current_leader_epoch: Some(pos.current_leader_epoch),
            fetch_offset: pos.fetch_offset,
            log_start: 0,
        };
        let now = self.now;
        let leader_id = self.nodes[li].id;
        let l = self.nodes[li].leader_mut().expect("leader");
        match l.on_follower_fetch(req, leo, now) {
            Ok(out) => {
                ensure!(
                    !out.isr_member_below_hw || self.bug != Bug::None,
                    "ISR member {} fetched at {} below the HW",
                    req.replica_id,
                    req.fetch_offset
                );
                self.send(leader_id, out.alter_isr)
            }
            Err(e) => return Err(format!("fetch {req:?} refused: {e}")),
        }
        let hw = self.nodes[li].leader().expect("leader").high_watermark();
        let from = pos.fetch_offset as usize;
        let to = (from + self.rng.usize(0..=4)).min(leo as usize);
        let batch: Vec<(i32, u64)> = self.nodes[li].log[from..to].to_vec();
        let node = &mut self.nodes[i];
        ensure!(
            node.log.len() == from,
            "follower log end {} != fetch offset {from}",
            node.log.len()
        );
        for e in &batch {
            node.append(*e);
        }
        let (log_end, durable) = (node.log.len() as i64, node.durable as i64);
        let Role::Follower(fs) = &mut node.role else {
            unreachable!()
        };
        let action = fs.on_fetch_response(
            FetchResult::Records {
                leader_high_watermark: hw,
                last_appended_epoch: batch.last().map(|b| b.0),
                log_end,
            },
            &node.cache,
            log_end,
            durable,
        );
        ensure!(action == FollowerAction::Continue, "unexpected {action:?}");
        Ok(())
    }

    /// A broker process crash: the log falls back to its durable end, the broker re-registers
    /// with a new epoch and reads the latest metadata before serving.
    fn crash(&mut self, i: usize) {
        self.count("crash");
        let node = &mut self.nodes[i];
        let d = node.durable;
        node.truncate(d);
        node.broker_epoch += 1;
        node.paused_since = None;
        let hw = match &node.role {
            Role::Leader(l) => l.high_watermark(),
            Role::Follower(f) => f.high_watermark(),
        };
        self.waiting_acks.retain(|a| a.0 != node.id);
        let id = node.id;
        // Its connections die with it: answers to its AlterPartitions never arrive.
        self.responses.retain(|r| r.0 != id);
        self.delivered.retain(|r| r.0 != id);
        self.ctrl.fenced.remove(&id);
        self.push_meta();
        let m = self.meta_log.last().expect("meta").clone();
        let node = &mut self.nodes[i];
        node.meta_applied = self.meta_log.len();
        if m.leader == node.id {
            let mut l = LeaderState::new(
                node.id,
                node.broker_epoch,
                &leader_reg(&self.replicas, &m),
                self.config,
                LocalLogView {
                    log_end: node.log.len() as i64,
                    durable_end: node.durable as i64,
                    high_watermark: hw,
                },
                self.now,
            )
            .expect("valid");
            for (b, st) in &m.brokers {
                l.update_broker(*b, *st, self.now);
            }
            l.bug_ignore_min_isr = self.bug == Bug::HwBelowMinIsr;
            l.bug_reset_pending_on_same_epoch = self.bug == Bug::KafkaResetPendingOnSameEpoch;
            node.prev_leader_hw = l.high_watermark();
            node.role = Role::Leader(Box::new(l));
        } else {
            let latest = node.cache.last().map(|e| e.0);
            node.role = Role::Follower(FollowerState::new(
                follower_reg(&m),
                node.log.len() as i64,
                latest,
                hw,
            ));
        }
    }

    fn controller_process(&mut self) {
        if self.at_ctrl.is_empty() {
            return;
        }
        let (from, req) = self.at_ctrl.remove(self.rng.usize(0..self.at_ctrl.len()));
        let roll = self.rng.u8(0..100);
        let ineligible = req.new_isr.iter().any(|m| {
            let n = &self.nodes[self.idx(m.broker_id)];
            self.ctrl.fenced.contains(&m.broker_id)
                || (m.broker_epoch != -1 && m.broker_epoch != n.broker_epoch)
        });
        let result = if roll < 10 {
            Err(AlterPartitionError::Retriable(codes::NOT_CONTROLLER))
        } else if req.leader_id != self.ctrl.leader || req.leader_epoch != self.ctrl.leader_epoch {
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
        self.responses.push((from, req.request_id, result));
    }

    fn deliver_response(&mut self) -> Result<(), String> {
        let now = self.now;
        let replay = !self.delivered.is_empty() && self.rng.u8(0..10) == 0;
        if replay {
            let (to, id, r) = self.delivered[self.rng.usize(0..self.delivered.len())].clone();
            let i = self.idx(to);
            if let Some(l) = self.nodes[i].leader_mut() {
                let out = l.on_alter_partition_response(id, r, now);
                ensure!(
                    out == AlterOutcome::Ignored,
                    "replayed answer {id} not ignored: {out:?}"
                );
            }
            return Ok(());
        }
        if self.responses.is_empty() {
            return Ok(());
        }
        let (to, id, r) = self
            .responses
            .remove(self.rng.usize(0..self.responses.len()));
        self.delivered.push((to, id, r.clone()));
        let i = self.idx(to);
        let Some(l) = self.nodes[i].leader_mut() else {
            return Ok(()); // no longer leader: nobody waits for it
        };
        match l.on_alter_partition_response(id, r, now) {
            AlterOutcome::Resend(a) => {
                self.count("answer: resend");
                self.at_ctrl.push((to, a));
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
        let now = self.now;
        let bug = self.bug;
        let config = self.config;
        let reg = leader_reg(&self.replicas, &m);
        let node = &mut self.nodes[i];
        node.meta_applied += 1;
        let leo = node.log.len() as i64;
        let latest = node.cache.last().map(|e| e.0);
        let what = match (&mut node.role, m.leader == node.id) {
            (Role::Leader(l), true) => {
                let out = l.become_leader(&reg, leo, now).expect("valid registration");
                for (b, st) in &m.brokers {
                    l.update_broker(*b, *st, now);
                }
                match out {
                    BecomeLeader::Skipped => "metadata: skipped",
                    BecomeLeader::Applied {
                        new_leader_epoch: true,
                        ..
                    } => {
                        node.cache.push((m.leader_epoch, leo));
                        "metadata: new leader epoch"
                    }
                    BecomeLeader::Applied { .. } => "metadata: applied",
                }
            }
            (Role::Follower(f), true) => {
                if m.leader_epoch <= f.leader_epoch() {
                    "metadata: stale"
                } else {
                    let mut l = LeaderState::new(
                        node.id,
                        node.broker_epoch,
                        &reg,
                        config,
                        LocalLogView {
                            log_end: leo,
                            durable_end: node.durable as i64,
                            high_watermark: f.high_watermark(),
                        },
                        now,
                    )
                    .expect("valid registration");
                    for (b, st) in &m.brokers {
                        l.update_broker(*b, *st, now);
                    }
                    l.bug_ignore_min_isr = bug == Bug::HwBelowMinIsr;
                    l.bug_reset_pending_on_same_epoch = bug == Bug::KafkaResetPendingOnSameEpoch;
                    node.prev_leader_hw = l.high_watermark();
                    node.cache.push((m.leader_epoch, leo));
                    node.role = Role::Leader(Box::new(l));
                    "metadata: became leader"
                }
            }
            (Role::Leader(l), false) => {
                let hw = l.high_watermark();
                node.role = Role::Follower(FollowerState::new(follower_reg(&m), leo, latest, hw));
                "metadata: leader became follower"
            }
            (Role::Follower(f), false) => {
                f.become_follower(follower_reg(&m), leo, latest);
                "metadata: follower"
            }
        };
        self.count(what);
    }

    /// A clean failover: the controller elects another member of its ISR (any broker under
    /// `Bug::UncleanElection`); the old leader may crash at the same time.
    fn failover(&mut self) {
        let old = self.ctrl.leader;
        let candidates: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|r| *r != old && !self.ctrl.fenced.contains(r))
            .filter(|r| self.bug == Bug::UncleanElection || self.ctrl.isr.contains(r))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let new = candidates[self.rng.usize(0..candidates.len())];
        self.count("failover");
        self.ctrl.leader = new;
        self.ctrl.leader_epoch += 1;
        self.ctrl.partition_epoch += 1;
        self.ctrl.isr.insert(new);
        let crash_old = self.rng.bool();
        if crash_old {
            self.ctrl.isr.remove(&old);
        }
        self.push_meta();
        let ni = self.idx(new);
        self.nodes[ni].paused_since = None;
        if crash_old {
            let oi = self.idx(old);
            self.crash(oi);
        }
    }

    fn check_acks(&mut self) -> Result<(), String> {
        let mut still = Vec::new();
        for (id, required, epoch) in std::mem::take(&mut self.waiting_acks) {
            let i = self.idx(id);
            let Some(l) = self.nodes[i].leader() else {
                self.count("ack: not leader");
                continue;
            };
            match l.check_after_append(required, epoch) {
                AckDecision::Wait => still.push((id, required, epoch)),
                AckDecision::Ack => {
                    let eff_min = l.effective_min_isr();
                    let prefix = &self.nodes[i].log[..required as usize];
                    let holders = self
                        .nodes
                        .iter()
                        .filter(|n| n.durable as i64 >= required && n.log.starts_with(prefix))
                        .count();
                    ensure!(
                        holders >= eff_min,
                        "acked offset {required} durable on {holders} < min ISR {eff_min}"
                    );
                    ensure!(
                        prefix.starts_with(&self.acked_prefix)
                            || self.acked_prefix.starts_with(prefix),
                        "acked history forked at offset {required} (epoch {epoch})"
                    );
                    if prefix.len() > self.acked_prefix.len() {
                        self.acked_prefix = prefix.to_vec();
                    }
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
        ensure!(
            self.ctrl.isr.contains(&self.ctrl.leader),
            "controller ISR lost the leader"
        );
        // Acknowledged writes are on every controller-ISR member: any future leader has them.
        let acked = self.acked_prefix.len();
        for m in &self.ctrl.isr {
            let n = &self.nodes[self.idx(*m)];
            ensure!(
                n.durable >= acked && n.log.starts_with(&self.acked_prefix),
                "acknowledged writes below {acked} lost on controller-ISR member {m} (durable {}, ISR {:?})",
                n.durable,
                self.ctrl.isr
            );
        }
        for i in 0..self.nodes.len() {
            let Some(l) = self.nodes[i].leader() else {
                continue;
            };
            let hw = l.high_watermark();
            ensure!(
                hw >= self.nodes[i].prev_leader_hw,
                "HW of leader {} went back from {} to {hw}",
                self.nodes[i].id,
                self.nodes[i].prev_leader_hw
            );
            let current =
                l.leader_epoch() == self.ctrl.leader_epoch && self.nodes[i].id == self.ctrl.leader;
            if current {
                let prefix = &self.nodes[i].log[..hw as usize];
                let members: BTreeSet<BrokerId> =
                    self.ctrl.isr.union(l.committed_isr()).copied().collect();
                for m in members {
                    let n = &self.nodes[self.idx(m)];
                    ensure!(
                        n.durable as i64 >= hw && n.log.starts_with(prefix),
                        "HW {hw} but ISR member {m} is durable only to {} (controller ISR {:?}, leader ISR {:?})",
                        n.durable,
                        self.ctrl.isr,
                        l.committed_isr()
                    );
                }
                let holders = self
                    .nodes
                    .iter()
                    .filter(|n| n.durable as i64 >= hw && n.log.starts_with(prefix))
                    .count();
                ensure!(
                    holders >= l.effective_min_isr(),
                    "HW {hw} durable on {holders} replicas < min ISR"
                );
            }
            self.nodes[i].prev_leader_hw = hw;
        }
        for n in &self.nodes {
            if let Role::Follower(f) = &n.role {
                ensure!(
                    f.high_watermark() <= n.durable as i64,
                    "follower {} HW above its durable end",
                    n.id
                );
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += self.rng.i64(0..=LAG_MS / 3);
        let n = self.nodes.len();
        let roll = self.rng.u16(0..1000);
        let pick = self.rng.usize(0..n);
        match roll {
            0..200 => self.produce(Acks::All),
            200..250 => self.produce(Acks::Leader),
            250..400 => self.fsync(pick),
            400..650 => self.follower_fetch(pick)?,
            650..680 => {
                if self.nodes[pick].leader().is_none() {
                    self.crash(pick);
                }
            }
            680..710 => {
                if self.nodes[pick].id != self.ctrl.leader {
                    let now = self.now;
                    let node = &mut self.nodes[pick];
                    node.paused_since = match node.paused_since {
                        Some(_) => None,
                        None => Some(now),
                    };
                    if node.paused_since.is_none() && self.ctrl.fenced.remove(&node.id) {
                        self.push_meta();
                    }
                }
            }
            710..770 => {
                let now = self.now;
                let leo = self.nodes[pick].log.len() as i64;
                let id = self.nodes[pick].id;
                if let Some(l) = self.nodes[pick].leader_mut() {
                    let a = l.maybe_shrink_isr(now, leo);
                    self.send(id, a);
                }
            }
            770..830 => self.controller_process(),
            830..880 => self.deliver_response()?,
            880..980 => self.deliver_meta(pick),
            980..985 => {
                // Leader epoch bump without a leader change (e.g. a preferred election no-op).
                self.ctrl.leader_epoch += 1;
                self.ctrl.partition_epoch += 1;
                self.push_meta();
            }
            985..990 => {
                // The controller fences brokers paused for long and drops them from the ISR.
                let now = self.now;
                let long: Vec<BrokerId> = self
                    .nodes
                    .iter()
                    .filter(|n| n.paused_since.is_some_and(|t| now - t > 2 * LAG_MS))
                    .map(|n| n.id)
                    .filter(|id| !self.ctrl.fenced.contains(id) && *id != self.ctrl.leader)
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
            _ => self.failover(),
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
    *sim.stats.entry("final acked prefix sum").or_default() += sim.acked_prefix.len() as u64;
    Ok((sim.acked_count, sim.refused_count, sim.stats))
}

const SEEDS: u64 = 300;
const STEPS: usize = 300;

#[test]
fn model_every_offset_below_hw_is_durable_on_the_isr() {
    // A soak is the same test with more seeds and steps, e.g.
    // `HOLDFAST_MODEL_SEEDS=20000 HOLDFAST_MODEL_STEPS=2000 cargo test --release -p
    // holdfast-replication model_every`.
    let var = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (seeds, steps) = (
        var("HOLDFAST_MODEL_SEEDS", SEEDS),
        var("HOLDFAST_MODEL_STEPS", STEPS as u64) as usize,
    );
    let (mut acked, mut refused, mut stats) = (0, 0, Stats::new());
    for seed in 0..seeds {
        let (a, r, s) = run(seed, steps, Bug::None).unwrap_or_else(|e| panic!("{e}"));
        acked += a;
        refused += r;
        for (k, v) in s {
            *stats.entry(k).or_default() += v;
        }
    }
    eprintln!("model coverage: {stats:?}");
    eprintln!("model: {acked} acks=all acknowledged, {refused} refused with NOT_ENOUGH_REPLICAS");
    // Not vacuous: writes were acknowledged, some refused under min ISR, leaders changed,
    // followers truncated.
    assert!(acked > SEEDS * 3, "only {acked} acks");
    assert!(refused > 0, "NOT_ENOUGH_REPLICAS never exercised");
    assert!(
        stats.get("failover").is_some_and(|n| *n > SEEDS / 2),
        "{stats:?}"
    );
    assert!(
        stats.get("follower truncation").is_some_and(|n| *n > 0),
        "{stats:?}"
    );
}

fn negative_control(bug: Bug, seeds: u64, min_failures: u64) {
    let failures: Vec<String> = (0..seeds)
        .filter_map(|seed| run(seed, STEPS, bug).err())
        .collect();
    eprintln!(
        "{bug:?} control: {} of {seeds} runs fail; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        failures.len() as u64 >= min_failures,
        "checker caught only {} runs",
        failures.len()
    );
}

#[test]
fn model_negative_control_follower_reporting_log_end_is_caught() {
    negative_control(Bug::FollowerReportsLogEnd, SEEDS, SEEDS / 10);
}

#[test]
fn model_negative_control_leader_counting_log_end_is_caught() {
    negative_control(Bug::LeaderCountsLogEnd, SEEDS, SEEDS / 20);
}

#[test]
fn model_negative_control_hw_below_min_isr_is_caught() {
    negative_control(Bug::HwBelowMinIsr, SEEDS, SEEDS / 20);
}

#[test]
fn model_negative_control_unclean_election_is_caught() {
    negative_control(Bug::UncleanElection, SEEDS, SEEDS / 20);
}

/// Why `LeaderState::become_leader` keeps a pending AlterPartition on a registration with the
/// same epochs: with Kafka's reset the model loses an acknowledged write.
#[test]
fn model_negative_control_kafka_reset_of_pending_alter_partition_is_caught() {
    negative_control(Bug::KafkaResetPendingOnSameEpoch, 3_000, 3);
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
