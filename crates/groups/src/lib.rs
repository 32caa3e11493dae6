//! Sans-IO consumer group coordinator for the classic protocol, with the committed-offset
//! store. No I/O, no clock, no runtime: every call takes `now_ms`; JoinGroup and SyncGroup
//! that must wait return a [`Ticket`] and are answered later through [`Coordinator::take_completions`];
//! timers (rebalance, session, sync deadlines) fire in [`Coordinator::tick`], whose next due
//! time is [`Coordinator::next_deadline`]. Records to persist in `__consumer_offsets` are
//! produced by [`records`] encoders and queued in [`Coordinator::take_writes`].
//!
//! The state machine follows Apache Kafka's classic group (Empty, PreparingRebalance,
//! CompletingRebalance, Stable, Dead). Holdfast's one deliberate difference is the initial
//! rebalance delay: see [`Config::initial_rebalance_delay_ms`].

pub mod consumer;
pub mod consumer_records;
pub mod records;

use std::collections::{BTreeMap, HashMap};

use records::{GroupValue, OffsetValue};

/// Kafka error codes the coordinator answers with.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUEST: i16 = 42;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
    pub const INVALID_REGULAR_EXPRESSION: i16 = 128;
}
use codes::*;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("malformed __consumer_offsets record: {0}")]
    BadRecord(&'static str),
}

/// Coordinator settings (Kafka's broker config names in the docs).
#[derive(Debug, Clone)]
pub struct Config {
    /// `group.initial.rebalance.delay.ms`. Holdfast's default is 100 ms, not Kafka's 3000:
    /// the delay is a quiet window that restarts on each new member joining an empty group
    /// (capped by the rebalance timeout), so a burst of members starting together still lands
    /// in one generation while a lone consumer is assigned after 100 ms instead of 3 s.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.max.size`.
    pub max_group_size: usize,
    /// Bound on groups per broker (Holdfast-specific: `holdfast.groups.max`).
    pub max_groups: usize,
    /// `offset.metadata.max.bytes`.
    pub max_metadata_bytes: usize,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// Bound on committed offsets per group (Holdfast-specific).
    pub max_offsets_per_group: usize,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub consumer_heartbeat_interval_ms: i32,
    /// Holdfast-specific (`holdfast.group.consumer.reconciling.heartbeat.interval.ms`): the
    /// heartbeat interval given to members while their group is not Stable, so that a
    /// member waiting for a partition another member just released learns of it quickly.
    pub consumer_reconciling_heartbeat_interval_ms: i32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            initial_rebalance_delay_ms: 100,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_group_size: 1_000,
            max_groups: 100_000,
            max_metadata_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            max_offsets_per_group: 1_000_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_reconciling_heartbeat_interval_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's name, as DescribeGroups and ListGroups report it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

pub type Ticket = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    /// JoinGroup v4+: an unknown member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<JoinMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

/// An answer now, or a ticket answered later by a [`Completion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Now(T),
    Wait(Ticket),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Join(Ticket, JoinResponse),
    Sync(Ticket, SyncResponse),
}

/// A member as persisted and described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSnapshot {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSnapshot>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
    pub group_type: &'static str,
}

/// A record to append to `__consumer_offsets` (value `None` = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub group: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<Protocol>,
    assignment: Vec<u8>,
    join_ticket: Option<Ticket>,
    sync_ticket: Option<Ticket>,
    heartbeat_deadline: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }
    fn snapshot(&self, protocol: Option<&str>) -> MemberSnapshot {
        MemberSnapshot {
            member_id: self.id.clone(),
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            client_host: self.client_host.clone(),
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            session_timeout_ms: self.session_timeout_ms,
            subscription: protocol.map(|p| self.metadata_for(p)).unwrap_or_default(),
            assignment: self.assignment.clone(),
        }
    }
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the deadline to rejoin.
    pending: BTreeMap<String, i64>,
    /// group.instance.id -> member id.
    statics: HashMap<String, String>,
    join_deadline: Option<i64>,
    /// The initial delay's cap (rebalance timeout) while it is running.
    initial_cap: Option<i64>,
    sync_deadline: Option<i64>,
    state_ts: i64,
    offsets: BTreeMap<(String, i32), OffsetValue>,
    /// Set for a group using the KIP-848 consumer protocol (its classic members are then
    /// always empty).
    consumer: Option<consumer::CGroup>,
}

impl Group {
    fn new(id: &str, now: i64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            statics: HashMap::new(),
            join_deadline: None,
            initial_cap: None,
            sync_deadline: None,
            state_ts: now,
            offsets: BTreeMap::new(),
            consumer: None,
        }
    }

    fn set_state(&mut self, s: GroupState, now: i64) {
        if self.state != s {
            self.state = s;
            self.state_ts = now;
        }
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn supports(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|p| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|q| q.name == p.name))
        })
    }

    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|q| q.name == *n))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(p) = m
                .protocols
                .iter()
                .find(|p| candidates.contains(&p.name.as_str()))
            {
                *votes.entry(p.name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        // Ties go to the first member's preference order.
        candidates
            .into_iter()
            .find(|c| votes.get(c) == Some(&best))
            .map(str::to_string)
    }

    /// The topics the members subscribe to, read from their embedded consumer protocol
    /// subscriptions (the version 0 prefix every version shares: i16 version, then an array
    /// of topic names); `None` if there is no protocol yet or a subscription does not parse.
    fn subscribed_topics(&self) -> Option<std::collections::BTreeSet<String>> {
        let protocol = self.protocol.as_deref()?;
        let mut out = std::collections::BTreeSet::new();
        for m in self.members.values() {
            let meta = m.metadata_for(protocol);
            let b = meta.get(2..)?;
            let n = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
            let mut rest = b.get(4..)?;
            for _ in 0..n.max(0) {
                let len = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
                let len = usize::try_from(len).ok()?;
                let name = rest.get(2..2 + len)?;
                out.insert(String::from_utf8(name.to_vec()).ok()?);
                rest = rest.get(2 + len..)?;
            }
        }
        Some(out)
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join_ticket.is_some())
    }

    fn snapshot(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_ts,
            members: self
                .members
                .values()
                .map(|m| m.snapshot(self.protocol.as_deref()))
                .collect(),
        }
    }
}

/// The coordinator of every group on this broker.
pub struct Coordinator {
    cfg: Config,
    groups: BTreeMap<String, Group>,
    completions: Vec<Completion>,
    writes: Vec<Write>,
    next_ticket: Ticket,
    next_member: u64,
    /// Distinguishes member ids across restarts.
    instance_tag: String,
}

fn err_join(error: i16, member_id: &str) -> JoinResponse {
    JoinResponse {
        error,
        generation: -1,
        member_id: member_id.to_string(),
        ..JoinResponse::default()
    }
}

fn err_sync(error: i16) -> SyncResponse {
    SyncResponse {
        error,
        ..SyncResponse::default()
    }
}

/// The outcome of validating an OffsetCommit for a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCheck {
    Ok,
    Error(i16),
}

impl Coordinator {
    /// `instance_tag` makes member ids unique across broker restarts (e.g. start time).
    pub fn new(cfg: Config, instance_tag: &str) -> Coordinator {
        Coordinator {
            cfg,
            groups: BTreeMap::new(),
            completions: Vec::new(),
            writes: Vec::new(),
            next_ticket: 1,
            next_member: 1,
            instance_tag: instance_tag.to_string(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Answers to waiting JoinGroup/SyncGroup requests produced since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Records to append to `__consumer_offsets` produced since the last call.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    fn ticket(&mut self) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        let n = self.next_member;
        self.next_member += 1;
        let prefix: String = client_id.chars().take(64).collect();
        format!("{prefix}-{}-{n}", self.instance_tag)
    }

    pub fn group_state(&self, group: &str) -> Option<GroupState> {
        self.groups.get(group).map(|g| g.state)
    }

    pub fn generation(&self, group: &str) -> Option<i32> {
        self.groups.get(group).map(|g| g.generation)
    }

    fn ensure_group(&mut self, id: &str, now: i64) -> Result<&mut Group, i16> {
        if !self.groups.contains_key(id) {
            if self.groups.len() >= self.cfg.max_groups {
                return Err(COORDINATOR_NOT_AVAILABLE);
            }
            self.groups.insert(id.to_string(), Group::new(id, now));
        }
        self.groups.get_mut(id).ok_or(UNKNOWN_SERVER_ERROR)
    }

    // ------------------------------------------------------------------ JoinGroup

    pub fn join(&mut self, req: JoinRequest, now: i64) -> Outcome<JoinResponse> {
        if req.group_id.is_empty() {
            return Outcome::Now(err_join(INVALID_GROUP_ID, &req.member_id));
        }
        if req.session_timeout_ms < self.cfg.min_session_timeout_ms
            || req.session_timeout_ms > self.cfg.max_session_timeout_ms
        {
            return Outcome::Now(err_join(INVALID_SESSION_TIMEOUT, &req.member_id));
        }
        let known = self.groups.contains_key(&req.group_id);
        if !known && !req.member_id.is_empty() {
            return Outcome::Now(err_join(UNKNOWN_MEMBER_ID, &req.member_id));
        }
        if let Err(e) = self.ensure_group(&req.group_id, now) {
            return Outcome::Now(err_join(e, &req.member_id));
        }
        // KIP-848 offline migration: an empty consumer group joined with the classic
        // protocol becomes a classic group; a non-empty one refuses classic members
        // (Holdfast does not mix protocols in one group).
        if !self.downgrade_if_empty(&req.group_id) {
            return Outcome::Now(err_join(INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
        }
        let out = self.join_inner(req.clone(), now);
        // A group created by a refused join is removed again.
        if let Some(g) = self.groups.get(&req.group_id) {
            if g.state == GroupState::Empty
                && g.members.is_empty()
                && g.pending.is_empty()
                && g.offsets.is_empty()
                && g.generation == 0
                && !known
            {
                self.groups.remove(&req.group_id);
            }
        }
        out
    }

    fn join_inner(&mut self, req: JoinRequest, now: i64) -> Outcome<JoinResponse> {
        let max_size = self.cfg.max_group_size;
        let gid = req.group_id.clone();
        let Some(g) = self.groups.get(&gid) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, &req.member_id));
        };
        if g.state == GroupState::Dead {
            return Outcome::Now(err_join(COORDINATOR_NOT_AVAILABLE, &req.member_id));
        }
        if !g.supports(&req.protocol_type, &req.protocols) {
            return Outcome::Now(err_join(INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
        }
        // Static membership.
        if let Some(instance) = req.instance_id.clone() {
            let existing = g.statics.get(&instance).cloned();
            if let Some(old) = existing {
                if req.member_id.is_empty() {
                    return self.replace_static(req, old, now);
                }
                if req.member_id != old {
                    return Outcome::Now(err_join(FENCED_INSTANCE_ID, &req.member_id));
                }
            } else if req.member_id.is_empty() {
                if g.members.len() >= max_size {
                    return Outcome::Now(err_join(GROUP_MAX_SIZE_REACHED, ""));
                }
                let id = self.new_member_id(&req.client_id);
                return self.add_member(req, id, now);
            }
        }
        if req.member_id.is_empty() {
            if g.members.len() + g.pending.len() >= max_size {
                return Outcome::Now(err_join(GROUP_MAX_SIZE_REACHED, ""));
            }
            let id = self.new_member_id(&req.client_id);
            if req.require_known_member_id {
                let deadline = now + i64::from(req.session_timeout_ms);
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.pending.insert(id.clone(), deadline);
                }
                return Outcome::Now(err_join(MEMBER_ID_REQUIRED, &id));
            }
            return self.add_member(req, id, now);
        }
        if g.pending.contains_key(&req.member_id) {
            if g.members.len() >= max_size {
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.pending.remove(&req.member_id);
                }
                return Outcome::Now(err_join(GROUP_MAX_SIZE_REACHED, &req.member_id));
            }
            if let Some(g) = self.groups.get_mut(&gid) {
                g.pending.remove(&req.member_id);
            }
            let id = req.member_id.clone();
            return self.add_member(req, id, now);
        }
        if !g.members.contains_key(&req.member_id) {
            return Outcome::Now(err_join(UNKNOWN_MEMBER_ID, &req.member_id));
        }
        self.rejoin(req, now)
    }

    fn add_member(&mut self, req: JoinRequest, id: String, now: i64) -> Outcome<JoinResponse> {
        let ticket = self.ticket();
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, &id));
        };
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(i) = &req.instance_id {
            g.statics.insert(i.clone(), id.clone());
        }
        g.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms.max(req.session_timeout_ms),
                protocols: req.protocols,
                assignment: Vec::new(),
                join_ticket: Some(ticket),
                sync_ticket: None,
                heartbeat_deadline: now + i64::from(req.session_timeout_ms),
            },
        );
        let gid = req.group_id;
        self.after_join(&gid, now);
        Outcome::Wait(ticket)
    }

    /// A known member joins again.
    fn rejoin(&mut self, req: JoinRequest, now: i64) -> Outcome<JoinResponse> {
        let ticket = self.ticket();
        let gid = req.group_id.clone();
        let Some(g) = self.groups.get_mut(&gid) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, &req.member_id));
        };
        let state = g.state;
        let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
        let Some(m) = g.members.get_mut(&req.member_id) else {
            return Outcome::Now(err_join(UNKNOWN_MEMBER_ID, &req.member_id));
        };
        m.heartbeat_deadline = now + i64::from(req.session_timeout_ms);
        let same = m.protocols == req.protocols;
        if matches!(state, GroupState::Stable | GroupState::CompletingRebalance)
            && same
            && !(state == GroupState::Stable && is_leader)
        {
            // Nothing changed: answer with the current generation.
            let resp = self.current_join_response(&gid, &req.member_id);
            return Outcome::Now(resp);
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, &req.member_id));
        };
        let Some(m) = g.members.get_mut(&req.member_id) else {
            return Outcome::Now(err_join(UNKNOWN_MEMBER_ID, &req.member_id));
        };
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms.max(req.session_timeout_ms);
        if let Some(old) = m.join_ticket.replace(ticket) {
            self.completions.push(Completion::Join(
                old,
                err_join(REBALANCE_IN_PROGRESS, &req.member_id),
            ));
        }
        self.after_join(&gid, now);
        Outcome::Wait(ticket)
    }

    fn replace_static(&mut self, req: JoinRequest, old: String, now: i64) -> Outcome<JoinResponse> {
        let new_id = self.new_member_id(&req.client_id);
        let gid = req.group_id.clone();
        let Some(g) = self.groups.get_mut(&gid) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, ""));
        };
        let Some(mut m) = g.members.remove(&old) else {
            return Outcome::Now(err_join(UNKNOWN_MEMBER_ID, ""));
        };
        // The old incarnation's waiting requests are fenced.
        if let Some(t) = m.join_ticket.take() {
            self.completions
                .push(Completion::Join(t, err_join(FENCED_INSTANCE_ID, &old)));
        }
        if let Some(t) = m.sync_ticket.take() {
            self.completions
                .push(Completion::Sync(t, err_sync(FENCED_INSTANCE_ID)));
        }
        let same = m.protocols == req.protocols;
        m.id = new_id.clone();
        m.heartbeat_deadline = now + i64::from(req.session_timeout_ms);
        m.session_timeout_ms = req.session_timeout_ms;
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        let was_leader = g.leader.as_deref() == Some(old.as_str());
        if was_leader {
            g.leader = Some(new_id.clone());
        }
        if let Some(i) = &req.instance_id {
            g.statics.insert(i.clone(), new_id.clone());
        }
        g.members.insert(new_id.clone(), m);
        let state = g.state;
        if state == GroupState::Stable && same {
            // KIP-345: a static member coming back within the session timeout gets its
            // assignment without a rebalance of the others. A returning leader gets the
            // member list as before KIP-814: its SyncGroup in Stable returns the stored
            // assignment, so its recomputation changes nothing.
            self.persist_group(&gid);
            let resp = self.current_join_response(&gid, &new_id);
            return Outcome::Now(resp);
        }
        let req = JoinRequest {
            member_id: new_id,
            ..req
        };
        let ticket = self.ticket();
        let Some(g) = self.groups.get_mut(&gid) else {
            return Outcome::Now(err_join(UNKNOWN_SERVER_ERROR, ""));
        };
        if let Some(m) = g.members.get_mut(&req.member_id) {
            m.protocols = req.protocols.clone();
            m.join_ticket = Some(ticket);
        }
        self.after_join(&gid, now);
        Outcome::Wait(ticket)
    }

    fn current_join_response(&self, gid: &str, member: &str) -> JoinResponse {
        let Some(g) = self.groups.get(gid) else {
            return err_join(UNKNOWN_SERVER_ERROR, member);
        };
        let leader = g.leader.clone().unwrap_or_default();
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = if leader == member {
            g.members
                .values()
                .map(|m| JoinMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: NONE,
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol.clone(),
            leader,
            member_id: member.to_string(),
            members,
        }
    }

    /// After a member (re)joined: start or advance the rebalance.
    fn after_join(&mut self, gid: &str, now: i64) {
        let delay = self.cfg.initial_rebalance_delay_ms;
        let Some(g) = self.groups.get_mut(gid) else {
            return;
        };
        match g.state {
            GroupState::Empty => {
                g.set_state(GroupState::PreparingRebalance, now);
                let cap = now + g.max_rebalance_timeout();
                g.initial_cap = Some(cap);
                g.join_deadline = Some((now + delay).min(cap));
                return;
            }
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(gid, now);
            }
            GroupState::PreparingRebalance => {
                if let Some(cap) = g.initial_cap {
                    // Initial delay: each new member restarts the quiet window.
                    g.join_deadline = Some((now + delay).min(cap));
                    return;
                }
            }
            GroupState::Dead => return,
        }
        self.maybe_complete_join(gid, now);
    }

    fn prepare_rebalance(&mut self, gid: &str, now: i64) {
        let Some(g) = self.groups.get_mut(gid) else {
            return;
        };
        if g.state == GroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                m.assignment.clear();
                if let Some(t) = m.sync_ticket.take() {
                    self.completions
                        .push(Completion::Sync(t, err_sync(REBALANCE_IN_PROGRESS)));
                }
            }
        }
        if g.state == GroupState::PreparingRebalance {
            return;
        }
        g.set_state(GroupState::PreparingRebalance, now);
        g.sync_deadline = None;
        g.initial_cap = None;
        g.join_deadline = Some(now + g.max_rebalance_timeout());
    }

    fn maybe_complete_join(&mut self, gid: &str, now: i64) {
        let Some(g) = self.groups.get(gid) else {
            return;
        };
        if g.state == GroupState::PreparingRebalance && g.initial_cap.is_none() && g.all_joined() {
            self.complete_join(gid, now);
        }
    }

    fn complete_join(&mut self, gid: &str, now: i64) {
        let Some(g) = self.groups.get_mut(gid) else {
            return;
        };
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = g
            .members
            .values()
            .filter(|m| m.join_ticket.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            if let Some(m) = g.members.remove(&id) {
                if let Some(i) = m.instance_id {
                    g.statics.remove(&i);
                }
            }
        }
        g.join_deadline = None;
        g.initial_cap = None;
        let prev = g.generation;
        g.generation = g.generation.wrapping_add(1).max(1);
        assert!(
            g.generation > prev,
            "generation of group {gid} must only grow"
        );
        if g.members.is_empty() {
            g.protocol = None;
            g.leader = None;
            g.set_state(GroupState::Empty, now);
            self.persist_group(gid);
            return;
        }
        g.protocol = g.select_protocol();
        if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        g.set_state(GroupState::CompletingRebalance, now);
        g.sync_deadline = Some(now + g.max_rebalance_timeout());
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let resp = self.current_join_response(gid, &id);
            let Some(g) = self.groups.get_mut(gid) else {
                return;
            };
            if let Some(m) = g.members.get_mut(&id) {
                m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                if let Some(t) = m.join_ticket.take() {
                    self.completions.push(Completion::Join(t, resp));
                }
            }
        }
    }

    // ------------------------------------------------------------------ SyncGroup

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Vec<u8>)>,
        now: i64,
    ) -> Outcome<SyncResponse> {
        let Some(g) = self.groups.get_mut(group_id) else {
            return Outcome::Now(err_sync(UNKNOWN_MEMBER_ID));
        };
        if let Some(i) = instance_id {
            if let Some(cur) = g.statics.get(i) {
                if cur != member_id {
                    return Outcome::Now(err_sync(FENCED_INSTANCE_ID));
                }
            }
        }
        if !g.members.contains_key(member_id) {
            return Outcome::Now(err_sync(UNKNOWN_MEMBER_ID));
        }
        if generation != g.generation {
            return Outcome::Now(err_sync(ILLEGAL_GENERATION));
        }
        if protocol_type.is_some_and(|t| Some(t) != g.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != g.protocol.as_deref())
        {
            return Outcome::Now(err_sync(INCONSISTENT_GROUP_PROTOCOL));
        }
        let ok = |g: &Group, a: Vec<u8>| SyncResponse {
            error: NONE,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol.clone(),
            assignment: a,
        };
        match g.state {
            GroupState::Empty | GroupState::Dead => Outcome::Now(err_sync(UNKNOWN_MEMBER_ID)),
            GroupState::PreparingRebalance => Outcome::Now(err_sync(REBALANCE_IN_PROGRESS)),
            GroupState::Stable => {
                let a = g
                    .members
                    .get_mut(member_id)
                    .map(|m| {
                        m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                        m.assignment.clone()
                    })
                    .unwrap_or_default();
                Outcome::Now(ok(g, a))
            }
            GroupState::CompletingRebalance => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let is_leader = g.leader.as_deref() == Some(member_id);
                if let Some(m) = g.members.get_mut(member_id) {
                    m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                    if let Some(old) = m.sync_ticket.replace(ticket) {
                        self.completions
                            .push(Completion::Sync(old, err_sync(REBALANCE_IN_PROGRESS)));
                    }
                }
                if is_leader {
                    let mut by_member: HashMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for m in g.members.values_mut() {
                        m.assignment = by_member.remove(&m.id).unwrap_or_default();
                    }
                    g.set_state(GroupState::Stable, now);
                    g.sync_deadline = None;
                    let resp: Vec<(Ticket, SyncResponse)> = g
                        .members
                        .values_mut()
                        .filter_map(|m| {
                            let t = m.sync_ticket.take()?;
                            Some((t, m.assignment.clone()))
                        })
                        .collect::<Vec<_>>()
                        .into_iter()
                        .map(|(t, a)| (t, ok(g, a)))
                        .collect();
                    for (t, r) in resp {
                        self.completions.push(Completion::Sync(t, r));
                    }
                    self.persist_group(group_id);
                }
                Outcome::Wait(ticket)
            }
        }
    }

    // ------------------------------------------------------------------ Heartbeat

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
    ) -> i16 {
        let Some(g) = self.groups.get_mut(group_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if let Some(i) = instance_id {
            if let Some(cur) = g.statics.get(i) {
                if cur != member_id {
                    return FENCED_INSTANCE_ID;
                }
            }
        }
        let state = g.state;
        let gen = g.generation;
        let Some(m) = g.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        match state {
            GroupState::Empty | GroupState::Dead => UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => {
                m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                REBALANCE_IN_PROGRESS
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                if generation != gen {
                    return ILLEGAL_GENERATION;
                }
                m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                NONE
            }
        }
    }

    // ------------------------------------------------------------------ LeaveGroup

    /// Removes members; returns one error code per (member id, instance id), plus the
    /// top-level error (UNKNOWN_MEMBER_ID... only for a missing group).
    pub fn leave(
        &mut self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now: i64,
    ) -> (i16, Vec<i16>) {
        let Some(g) = self.groups.get(group_id) else {
            return (
                UNKNOWN_MEMBER_ID,
                members.iter().map(|_| UNKNOWN_MEMBER_ID).collect(),
            );
        };
        let mut errs = Vec::with_capacity(members.len());
        let mut remove = Vec::new();
        for (id, instance) in members {
            let target = match instance {
                Some(i) => match g.statics.get(i) {
                    None => {
                        errs.push(UNKNOWN_MEMBER_ID);
                        continue;
                    }
                    Some(cur) if !id.is_empty() && cur != id => {
                        errs.push(FENCED_INSTANCE_ID);
                        continue;
                    }
                    Some(cur) => cur.clone(),
                },
                None => id.clone(),
            };
            if g.members.contains_key(&target) || g.pending.contains_key(&target) {
                errs.push(NONE);
                remove.push(target);
            } else {
                errs.push(UNKNOWN_MEMBER_ID);
            }
        }
        for id in remove {
            self.remove_member(group_id, &id, now);
        }
        (NONE, errs)
    }

    fn remove_member(&mut self, gid: &str, id: &str, now: i64) {
        let Some(g) = self.groups.get_mut(gid) else {
            return;
        };
        if g.pending.remove(id).is_some() {
            self.maybe_complete_join(gid, now);
            return;
        }
        let Some(m) = g.members.remove(id) else {
            return;
        };
        if let Some(i) = &m.instance_id {
            if g.statics.get(i).map(String::as_str) == Some(id) {
                g.statics.remove(i);
            }
        }
        if let Some(t) = m.join_ticket {
            self.completions
                .push(Completion::Join(t, err_join(UNKNOWN_MEMBER_ID, id)));
        }
        if let Some(t) = m.sync_ticket {
            self.completions
                .push(Completion::Sync(t, err_sync(UNKNOWN_MEMBER_ID)));
        }
        match g.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(gid, now);
                self.maybe_complete_join(gid, now);
            }
            GroupState::PreparingRebalance => {
                if g.members.is_empty() {
                    // Nobody left to wait for (even during the initial delay).
                    g.initial_cap = None;
                }
                self.maybe_complete_join(gid, now);
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ timers

    /// The earliest time at which [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut best: Option<i64> = None;
        let mut consider = |t: i64| best = Some(best.map_or(t, |b: i64| b.min(t)));
        for g in self.groups.values() {
            if let Some(t) = g.join_deadline {
                consider(t);
            }
            if let Some(t) = g.sync_deadline {
                consider(t);
            }
            for t in g.pending.values() {
                consider(*t);
            }
            for m in g.members.values() {
                if m.join_ticket.is_none() && m.sync_ticket.is_none() {
                    consider(m.heartbeat_deadline);
                }
            }
        }
        self.consumer_next_deadline(&mut consider);
        best
    }

    /// Fires every timer due at `now`.
    pub fn tick(&mut self, now: i64) {
        self.consumer_tick(now);
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for gid in ids {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let expired_pending: Vec<String> = g
                .pending
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired_pending {
                g.pending.remove(id);
            }
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| {
                    m.join_ticket.is_none()
                        && m.sync_ticket.is_none()
                        && m.heartbeat_deadline <= now
                })
                .map(|m| m.id.clone())
                .collect();
            let join_due = g.join_deadline.is_some_and(|d| d <= now);
            let sync_due = g.sync_deadline.is_some_and(|d| d <= now);
            for id in expired {
                self.remove_member(&gid, &id, now);
            }
            if !expired_pending.is_empty() {
                self.maybe_complete_join(&gid, now);
            }
            let Some(g) = self.groups.get(&gid) else {
                continue;
            };
            if join_due && g.state == GroupState::PreparingRebalance {
                self.complete_join(&gid, now);
            } else if sync_due && g.state == GroupState::CompletingRebalance {
                // The leader never sent the assignment: members that did not sync are
                // removed and the rest rebalance.
                let Some(g) = self.groups.get(&gid) else {
                    continue;
                };
                let laggards: Vec<String> = g
                    .members
                    .values()
                    .filter(|m| m.sync_ticket.is_none())
                    .map(|m| m.id.clone())
                    .collect();
                let leader_missing = g.leader.as_ref().is_some_and(|l| laggards.contains(l));
                for id in laggards {
                    self.remove_member(&gid, &id, now);
                }
                if !leader_missing {
                    self.prepare_rebalance(&gid, now);
                }
            }
        }
    }

    fn persist_group(&mut self, gid: &str) {
        if let Some(g) = self.groups.get(gid) {
            let v = g.snapshot();
            self.writes.push(Write {
                group: gid.to_string(),
                key: records::group_key(gid),
                value: Some(records::group_value(&v)),
            });
        }
    }

    // ------------------------------------------------------------------ offsets

    /// Validates an OffsetCommit before its records are written. A simple commit
    /// (generation -1, no member) is allowed only for a group without members; it creates
    /// the group.
    #[allow(clippy::too_many_arguments)]
    pub fn check_commit(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        api_version: i16,
        now: i64,
    ) -> CommitCheck {
        if group_id.is_empty() {
            return CommitCheck::Error(INVALID_GROUP_ID);
        }
        if self.is_consumer_group(group_id) {
            // OffsetCommit v9+ carries the member epoch in `generationIdOrMemberEpoch`.
            return match self.check_consumer_commit(group_id, generation, member_id, api_version) {
                NONE => CommitCheck::Ok,
                e => CommitCheck::Error(e),
            };
        }
        // Kafka's rules (OffsetMetadataManager / ClassicGroup.validateOffsetCommit): a
        // generation below 0 commits to a missing or empty group whatever the member id (a
        // KIP-848 client not in the group sends its own member id with epoch -1).
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                return CommitCheck::Error(if api_version >= 9 {
                    GROUP_ID_NOT_FOUND
                } else {
                    ILLEGAL_GENERATION
                });
            }
            return match self.ensure_group(group_id, now) {
                Ok(_) => CommitCheck::Ok,
                Err(e) => CommitCheck::Error(e),
            };
        }
        let Some(g) = self.groups.get_mut(group_id) else {
            return CommitCheck::Error(UNKNOWN_SERVER_ERROR);
        };
        if generation < 0 && g.members.is_empty() {
            return CommitCheck::Ok;
        }
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            return CommitCheck::Error(UNKNOWN_MEMBER_ID);
        }
        if let Some(i) = instance_id {
            if let Some(cur) = g.statics.get(i) {
                if cur != member_id {
                    return CommitCheck::Error(FENCED_INSTANCE_ID);
                }
            }
        }
        let state = g.state;
        let gen = g.generation;
        let Some(m) = g.members.get_mut(member_id) else {
            return CommitCheck::Error(UNKNOWN_MEMBER_ID);
        };
        if generation != gen {
            return CommitCheck::Error(ILLEGAL_GENERATION);
        }
        if state == GroupState::CompletingRebalance {
            return CommitCheck::Error(REBALANCE_IN_PROGRESS);
        }
        m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
        CommitCheck::Ok
    }

    /// Whether a metadata string fits `offset.metadata.max.bytes`.
    pub fn metadata_fits(&self, metadata: &str) -> bool {
        metadata.len() <= self.cfg.max_metadata_bytes
    }

    /// Applies committed offsets once their records are durable.
    pub fn apply_commit(&mut self, group_id: &str, offsets: Vec<(String, i32, OffsetValue)>) {
        let max = self.cfg.max_offsets_per_group;
        let now_ts = offsets.first().map(|o| o.2.commit_timestamp).unwrap_or(0);
        let Ok(g) = self.ensure_group(group_id, now_ts) else {
            return;
        };
        for (t, p, v) in offsets {
            let key = (t, p);
            if g.offsets.len() >= max && !g.offsets.contains_key(&key) {
                continue;
            }
            g.offsets.insert(key, v);
        }
    }

    /// Committed offsets of a group: all of them (`None`) or the ones asked for (missing
    /// partitions are reported with offset -1).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<(String, i32, Option<OffsetValue>)> {
        let g = self.groups.get(group_id);
        match partitions {
            None => g
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), v)| (t.clone(), *p, Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(list) => list
                .iter()
                .map(|(t, p)| {
                    let v = g.and_then(|g| g.offsets.get(&(t.clone(), *p)).cloned());
                    (t.clone(), *p, v)
                })
                .collect(),
        }
    }

    /// OffsetDelete: the group must exist; a group with members refuses it per partition.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, i16> {
        if self.is_consumer_group(group_id) {
            // Kafka refuses only the partitions of topics the group subscribes to.
            let mut out = Vec::with_capacity(partitions.len());
            for (t, p) in partitions {
                if self.consumer_subscribes(group_id, t) {
                    out.push(GROUP_SUBSCRIBED_TO_TOPIC);
                    continue;
                }
                let removed = self
                    .groups
                    .get_mut(group_id)
                    .and_then(|g| g.offsets.remove(&(t.clone(), *p)));
                if removed.is_some() {
                    self.writes.push(Write {
                        group: group_id.to_string(),
                        key: records::offset_key(group_id, t, *p),
                        value: None,
                    });
                }
                out.push(NONE);
            }
            return Ok(out);
        }
        let Some(g) = self.groups.get_mut(group_id) else {
            return Err(GROUP_ID_NOT_FOUND);
        };
        // Kafka's rules: a classic group with members refuses OffsetDelete unless it uses the
        // consumer protocol type, and then only for the topics its members subscribe to
        // (all topics while those are unknown).
        let subscribed: Option<std::collections::BTreeSet<String>> = if g.members.is_empty() {
            Some(std::collections::BTreeSet::new())
        } else if g.protocol_type.as_deref() != Some("consumer") {
            return Err(NON_EMPTY_GROUP);
        } else {
            g.subscribed_topics()
        };
        let mut out = Vec::with_capacity(partitions.len());
        for (t, p) in partitions {
            if subscribed.as_ref().is_none_or(|s| s.contains(t)) {
                out.push(GROUP_SUBSCRIBED_TO_TOPIC);
                continue;
            }
            if g.offsets.remove(&(t.clone(), *p)).is_some() {
                self.writes.push(Write {
                    group: group_id.to_string(),
                    key: records::offset_key(group_id, t, *p),
                    value: None,
                });
            }
            out.push(NONE);
        }
        Ok(out)
    }

    /// DeleteGroups for one group.
    pub fn delete_group(&mut self, group_id: &str) -> i16 {
        let Some(g) = self.groups.get(group_id) else {
            return GROUP_ID_NOT_FOUND;
        };
        if g.state != GroupState::Empty && g.state != GroupState::Dead {
            return NON_EMPTY_GROUP;
        }
        if let Some(g) = self.groups.remove(group_id) {
            self.tombstone_group(g);
        }
        NONE
    }

    fn tombstone_group(&mut self, mut g: Group) {
        if let Some(cg) = g.consumer.take() {
            for (t, p) in g.offsets.keys() {
                self.writes.push(Write {
                    group: g.id.clone(),
                    key: records::offset_key(&g.id, t, *p),
                    value: None,
                });
            }
            self.consumer_tombstones(&g.id, &cg);
            return;
        }
        for (t, p) in g.offsets.keys() {
            self.writes.push(Write {
                group: g.id.clone(),
                key: records::offset_key(&g.id, t, *p),
                value: None,
            });
        }
        self.writes.push(Write {
            group: g.id.clone(),
            key: records::group_key(&g.id),
            value: None,
        });
    }

    /// `offsets.retention.minutes`: offsets of an empty group expire `retention` after the
    /// group became empty (a group that never had members: after each offset's commit);
    /// an empty group without offsets left is deleted.
    pub fn expire_offsets(&mut self, now: i64) {
        let retention = self.cfg.offsets_retention_ms;
        let ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.state == GroupState::Empty)
            .map(|g| g.id.clone())
            .collect();
        for gid in ids {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let consumer_group = g.protocol_type.is_some();
            let group_expired = now - g.state_ts >= retention;
            let gone: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, v)| {
                    if consumer_group {
                        group_expired
                    } else {
                        now - v.commit_timestamp >= retention
                    }
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                g.offsets.remove(&k);
                self.writes.push(Write {
                    group: gid.clone(),
                    key: records::offset_key(&gid, &k.0, k.1),
                    value: None,
                });
            }
            let Some(g) = self.groups.get(&gid) else {
                continue;
            };
            if g.offsets.is_empty() && group_expired {
                if let Some(g) = self.groups.remove(&gid) {
                    self.tombstone_group(g);
                }
            }
        }
    }

    // ------------------------------------------------------------------ describe / list

    /// ListGroups: (group id, protocol type, state name, group type `classic`/`consumer`),
    /// filtered by state names (case-insensitive; empty = all).
    pub fn list_groups(&self, states: &[String]) -> Vec<ListedGroup> {
        self.groups
            .values()
            .map(|g| match &g.consumer {
                Some(cg) => ListedGroup {
                    group_id: g.id.clone(),
                    protocol_type: "consumer".into(),
                    state: cg.state_name(),
                    group_type: "consumer",
                },
                None => ListedGroup {
                    group_id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state.name(),
                    group_type: "classic",
                },
            })
            .filter(|l| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(l.state)))
            .collect()
    }

    /// DescribeGroups (classic): `None` for a missing group or a consumer-protocol group.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group_id)?;
        if g.consumer.is_some() {
            return None;
        }
        let stable = g.state == GroupState::Stable;
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                g.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| {
                    let mut s = m.snapshot(g.protocol.as_deref());
                    if !stable {
                        s.assignment.clear();
                    }
                    s
                })
                .collect(),
        })
    }

    // ------------------------------------------------------------------ loading

    /// Applies one record of `__consumer_offsets` while loading (in log order).
    pub fn load_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        now: i64,
    ) -> Result<(), GroupError> {
        match records::decode_key(key)? {
            records::RecordKey::Offset {
                group,
                topic,
                partition,
            } => match value {
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
                Some(v) => {
                    let v = records::decode_offset_value(v)?;
                    if let Ok(g) = self.ensure_group(&group, now) {
                        g.offsets.insert((topic, partition), v);
                    }
                }
            },
            records::RecordKey::Consumer {
                version,
                group,
                member,
            } => self.load_consumer_record(version, group, member, value, now)?,
            records::RecordKey::Group { group } => match value {
                None => {
                    // Offsets are separate records: a group tombstone (also written when
                    // an empty classic group becomes a consumer group) keeps them.
                    if let Some(g) = self.groups.get_mut(&group) {
                        if g.consumer.is_none() {
                            if g.offsets.is_empty() {
                                self.groups.remove(&group);
                            } else {
                                g.members.clear();
                                g.statics.clear();
                                g.protocol_type = None;
                                g.protocol = None;
                                g.leader = None;
                                g.set_state(GroupState::Empty, now);
                            }
                        }
                    }
                }
                Some(v) => {
                    let v = records::decode_group_value(v)?;
                    let Ok(g) = self.ensure_group(&group, now) else {
                        return Ok(());
                    };
                    g.consumer = None;
                    g.generation = v.generation;
                    g.protocol_type =
                        (!v.protocol_type.is_empty()).then_some(v.protocol_type.clone());
                    g.protocol = v.protocol;
                    g.leader = v.leader;
                    g.members.clear();
                    g.statics.clear();
                    g.pending.clear();
                    for m in v.members {
                        if let Some(i) = &m.instance_id {
                            g.statics.insert(i.clone(), m.member_id.clone());
                        }
                        let protocols = g
                            .protocol
                            .as_ref()
                            .map(|p| {
                                vec![Protocol {
                                    name: p.clone(),
                                    metadata: m.subscription.clone(),
                                }]
                            })
                            .unwrap_or_default();
                        g.members.insert(
                            m.member_id.clone(),
                            Member {
                                id: m.member_id,
                                instance_id: m.instance_id,
                                client_id: m.client_id,
                                client_host: m.client_host,
                                session_timeout_ms: m.session_timeout_ms,
                                rebalance_timeout_ms: m.rebalance_timeout_ms,
                                protocols,
                                assignment: m.assignment,
                                join_ticket: None,
                                sync_ticket: None,
                                // Members get a full session after the load to come back.
                                heartbeat_deadline: now + i64::from(m.session_timeout_ms),
                            },
                        );
                    }
                    let state = if g.members.is_empty() {
                        GroupState::Empty
                    } else {
                        GroupState::Stable
                    };
                    g.state = state;
                    g.state_ts = if state == GroupState::Empty && v.state_timestamp > 0 {
                        v.state_timestamp
                    } else {
                        now
                    };
                }
            },
        }
        Ok(())
    }

    /// Number of groups (bounded by `max_groups`).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Drops every group `unload` selects, e.g. because this broker no longer leads its
    /// partition of `__consumer_offsets` (cluster mode: the coordinator moved). Members
    /// waiting in JoinGroup/SyncGroup are answered NOT_COORDINATOR, so they rediscover the
    /// coordinator. Returns how many groups were dropped.
    pub fn unload_groups(&mut self, unload: impl Fn(&str) -> bool) -> usize {
        let ids: Vec<String> = self.groups.keys().filter(|g| unload(g)).cloned().collect();
        for id in &ids {
            let Some(g) = self.groups.remove(id) else {
                continue;
            };
            for m in g.members.values() {
                if let Some(t) = m.join_ticket {
                    self.completions
                        .push(Completion::Join(t, err_join(codes::NOT_COORDINATOR, &m.id)));
                }
                if let Some(t) = m.sync_ticket {
                    self.completions
                        .push(Completion::Sync(t, err_sync(codes::NOT_COORDINATOR)));
                }
            }
        }
        // Writes queued for those groups are not this broker's to make any more.
        self.writes.retain(|w| !unload(&w.group));
        ids.len()
    }
}

#[cfg(test)]
mod tests;
