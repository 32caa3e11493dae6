//! The KIP-848 consumer group protocol: ConsumerGroupHeartbeat and ConsumerGroupDescribe,
//! with server-side assignors, member epochs and incremental reconciliation, following
//! Apache Kafka's group coordinator (`GroupMetadataManager.consumerGroupHeartbeat`,
//! `CurrentAssignmentBuilder`).
//!
//! A consumer group has a *group epoch* (bumped when a member joins or leaves, a
//! subscription changes or a subscribed topic changes), a *target assignment* computed by
//! the assignor at that epoch (*assignment epoch*), and per member a *current assignment*
//! reconciled towards its target one heartbeat at a time: partitions the member must give
//! up are first revoked (the member keeps its epoch until it reports them released), and a
//! partition is handed to its new owner only once no member owns it any more
//! (`UNRELEASED_PARTITIONS` until then). So a partition never has two owners.
//!
//! Each change is recorded in `__consumer_offsets` with Kafka's consumer group records
//! ([`crate::consumer_records`]), and [`Coordinator::load_record`] rebuilds the group from
//! them.

use std::collections::{BTreeMap, BTreeSet};

use crate::codes::*;
use crate::consumer_records::{self as cr, CurrentAssignment, MemberMetadata, TopicMetadata};
use crate::{Coordinator, Group, GroupState, Write};

pub type TopicId = [u8; 16];
/// Partitions per topic id.
pub type Assign = BTreeMap<TopicId, BTreeSet<i32>>;

/// What the coordinator must know about a topic (the broker passes a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: TopicId,
    pub partitions: i32,
    /// Internal topics (`__consumer_offsets`) never match a regex subscription.
    pub internal: bool,
}

/// Every topic of the cluster by name.
pub type Topics = BTreeMap<String, TopicInfo>;

pub const LEAVE_EPOCH: i32 = -1;
pub const STATIC_LEAVE_EPOCH: i32 = -2;
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

#[derive(Debug, Clone)]
pub struct HeartbeatRequest {
    pub api_version: i16,
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Vec<(TopicId, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatResponse {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: Option<String>,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    pub assignment: Option<Vec<(TopicId, Vec<i32>)>>,
}

/// Kafka's `MemberState` (persisted as its byte value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
    Unknown,
}

impl MemberState {
    fn code(self) -> i8 {
        match self {
            MemberState::Stable => 0,
            MemberState::UnrevokedPartitions => 1,
            MemberState::UnreleasedPartitions => 2,
            MemberState::Unknown => 127,
        }
    }
    fn from_code(c: i8) -> MemberState {
        match c {
            0 => MemberState::Stable,
            1 => MemberState::UnrevokedPartitions,
            2 => MemberState::UnreleasedPartitions,
            _ => MemberState::Unknown,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CMember {
    pub(crate) id: String,
    meta: MemberMetadata,
    compiled: Option<regex::Regex>,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    assigned: Assign,
    pending_revocation: Assign,
    session_deadline: i64,
    revoke_deadline: Option<i64>,
}

impl CMember {
    fn new(id: &str, now: i64, session_ms: i64) -> CMember {
        CMember {
            id: id.to_string(),
            meta: MemberMetadata {
                rebalance_timeout_ms: -1,
                ..MemberMetadata::default()
            },
            compiled: None,
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Assign::new(),
            pending_revocation: Assign::new(),
            session_deadline: now + session_ms,
            revoke_deadline: None,
        }
    }

    fn current(&self) -> CurrentAssignment {
        CurrentAssignment {
            member_epoch: self.epoch,
            previous_member_epoch: self.previous_epoch,
            state: self.state.code(),
            assigned: self.assigned.clone(),
            pending_revocation: self.pending_revocation.clone(),
        }
    }

    /// Whether the member subscribes to a topic; its regex counts once the group resolved it.
    fn subscribes(&self, name: &str, info: &TopicInfo, resolved: &BTreeSet<String>) -> bool {
        self.meta.subscribed_topic_names.iter().any(|n| n == name)
            || (!info.internal
                && self
                    .meta
                    .subscribed_topic_regex
                    .as_ref()
                    .is_some_and(|re| resolved.contains(re))
                && self.compiled.as_ref().is_some_and(|r| r.is_match(name)))
    }
}

/// The consumer-protocol part of a group.
#[derive(Debug, Clone, Default)]
pub(crate) struct CGroup {
    pub(crate) epoch: i32,
    assignment_epoch: i32,
    pub(crate) members: BTreeMap<String, CMember>,
    target: BTreeMap<String, Assign>,
    /// Subscription metadata: the subscribed topics as last seen.
    metadata: BTreeMap<String, (TopicId, i32)>,
    /// Regexes of the members that the group has resolved. As in Kafka, a regex new to the
    /// group is resolved asynchronously: the heartbeat that brings it gets an assignment
    /// without its topics, a later heartbeat (of any member) resolves it and bumps the epoch.
    resolved_regex: BTreeSet<String>,
}

impl CGroup {
    /// Kafka's consumer group state names.
    pub(crate) fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.epoch != self.assignment_epoch && m.epoch != STATIC_LEAVE_EPOCH
                || m.state != MemberState::Stable
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    fn regexes_in_use(&self) -> BTreeSet<String> {
        self.members
            .values()
            .filter_map(|m| m.meta.subscribed_topic_regex.clone())
            .collect()
    }

    fn assignor(&self) -> &'static str {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = m.meta.server_assignor.as_deref() {
                *votes.entry(a).or_default() += 1;
            }
        }
        let best = votes.values().copied().max().unwrap_or(0);
        ASSIGNORS
            .iter()
            .copied()
            .find(|a| best > 0 && votes.get(a) == Some(&best))
            .unwrap_or(ASSIGNORS[0])
    }

    fn topic_name(&self, id: &TopicId) -> String {
        self.metadata
            .iter()
            .find(|(_, (i, _))| i == id)
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    /// (topic id, topic name, partitions).
    pub assignment: Vec<(TopicId, String, Vec<i32>)>,
    pub target_assignment: Vec<(TopicId, String, Vec<i32>)>,
}

#[derive(Debug, Clone)]
pub struct ConsumerGroupDescription {
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<DescribedMember>,
}

type HbResult<T> = Result<T, (i16, String)>;

fn invalid(msg: &str) -> (i16, String) {
    (INVALID_REQUEST, msg.to_string())
}

fn to_list(a: &Assign) -> Vec<(TopicId, Vec<i32>)> {
    a.iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(id, ps)| (*id, ps.iter().copied().collect()))
        .collect()
}

fn is_subset(owned: Option<&[(TopicId, Vec<i32>)]>, of: &Assign) -> bool {
    let Some(owned) = owned else {
        return false;
    };
    owned
        .iter()
        .all(|(id, ps)| ps.iter().all(|p| of.get(id).is_some_and(|s| s.contains(p))))
}

fn compile(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

fn push(writes: &mut Vec<Write>, gid: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
    writes.push(Write {
        group: gid.to_string(),
        key,
        value,
    });
}

impl Coordinator {
    fn cgroup(&self, gid: &str) -> Option<&CGroup> {
        self.groups.get(gid).and_then(|g| g.consumer.as_ref())
    }

    /// The configured interval, or the short reconciling one for a member that is not yet
    /// at its target (behind the assignment epoch, revoking, waiting for a partition to be
    /// released, or with a regex not yet resolved): it has something to learn soon. Members
    /// at their target keep the configured interval, so a group waiting for a crashed
    /// member's session to expire does not make every member heartbeat fast.
    fn heartbeat_interval_for(&self, gid: &str, member_id: &str) -> i32 {
        let base = self.cfg.consumer_heartbeat_interval_ms;
        let fast = self.cgroup(gid).is_some_and(|cg| {
            cg.members.get(member_id).is_some_and(|m| {
                m.epoch != cg.assignment_epoch
                    || m.state != MemberState::Stable
                    || m.meta
                        .subscribed_topic_regex
                        .as_ref()
                        .is_some_and(|r| !cg.resolved_regex.contains(r))
            })
        });
        if fast {
            base.min(self.cfg.consumer_reconciling_heartbeat_interval_ms)
        } else {
            base
        }
    }

    /// ConsumerGroupHeartbeat (API 68).
    pub fn consumer_heartbeat(
        &mut self,
        req: HeartbeatRequest,
        topics: &Topics,
        now: i64,
    ) -> HeartbeatResponse {
        let gid = req.group_id.clone();
        let existed = self.groups.contains_key(&gid);
        let out = self.consumer_heartbeat_inner(req, topics, now);
        // A group created by a refused join is removed again.
        if !existed {
            if let Some(g) = self.groups.get(&gid) {
                if g.consumer.as_ref().is_none_or(|c| c.members.is_empty()) && g.offsets.is_empty()
                {
                    self.groups.remove(&gid);
                    self.writes.retain(|w| w.group != gid);
                }
            }
        }
        match out {
            Ok(r) => r,
            Err((error, message)) => HeartbeatResponse {
                error,
                message: Some(message),
                member_id: None,
                member_epoch: 0,
                heartbeat_interval_ms: 0,
                assignment: None,
            },
        }
    }

    fn validate_heartbeat(&self, req: &HeartbeatRequest) -> HbResult<()> {
        if req.group_id.is_empty() {
            return Err(invalid("GroupId can't be empty."));
        }
        if req.instance_id.as_deref() == Some("") {
            return Err(invalid("InstanceId can't be empty."));
        }
        if req.rack_id.as_deref() == Some("") {
            return Err(invalid("RackId can't be empty."));
        }
        if req.api_version >= 1 && req.member_id.is_empty() {
            return Err(invalid("MemberId can't be empty."));
        }
        match req.member_epoch {
            e if e > 0 || e == LEAVE_EPOCH => {
                if req.member_id.is_empty() {
                    return Err(invalid("MemberId can't be empty."));
                }
            }
            0 => {
                if req.rebalance_timeout_ms == -1 {
                    return Err(invalid(
                        "RebalanceTimeoutMs must be provided in first request.",
                    ));
                }
                if req.owned.as_ref().is_none_or(|o| !o.is_empty()) {
                    return Err(invalid("TopicPartitions must be empty when (re-)joining."));
                }
                if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                    return Err(invalid(
                        "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                    ));
                }
            }
            STATIC_LEAVE_EPOCH => {
                if req.member_id.is_empty() {
                    return Err(invalid("MemberId can't be empty."));
                }
                if req.instance_id.is_none() {
                    return Err(invalid("InstanceId can't be null."));
                }
            }
            _ => return Err(invalid("MemberEpoch is invalid.")),
        }
        if let Some(a) = &req.server_assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return Err((
                    UNSUPPORTED_ASSIGNOR,
                    format!(
                        "ServerAssignor {a} is not supported. Supported assignors: {}.",
                        ASSIGNORS.join(", ")
                    ),
                ));
            }
        }
        if let Some(re) = &req.subscribed_topic_regex {
            if let Err(e) = compile(re) {
                return Err((
                    INVALID_REGULAR_EXPRESSION,
                    format!("SubscribedTopicRegex `{re}` is not a valid regular expression: {e}"),
                ));
            }
        }
        Ok(())
    }

    fn consumer_heartbeat_inner(
        &mut self,
        req: HeartbeatRequest,
        topics: &Topics,
        now: i64,
    ) -> HbResult<HeartbeatResponse> {
        self.validate_heartbeat(&req)?;
        let gid = req.group_id.clone();
        if req.member_epoch == LEAVE_EPOCH || req.member_epoch == STATIC_LEAVE_EPOCH {
            return self.consumer_leave(&req, topics, now);
        }
        let session_ms = i64::from(self.cfg.consumer_session_timeout_ms);
        let joining = req.member_epoch == 0;
        // The group: created (or converted from an empty classic group) by a join.
        match self.groups.get(&gid) {
            None if joining => {
                self.ensure_group(&gid, now)
                    .map_err(|e| (e, "The coordinator cannot take more groups.".to_string()))?;
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.make_consumer(now);
                }
            }
            None => {
                return Err((
                    GROUP_ID_NOT_FOUND,
                    format!("Consumer group {gid} not found."),
                ))
            }
            Some(g) if g.consumer.is_none() => {
                let empty = g.members.is_empty() && g.pending.is_empty();
                if !(joining && empty) {
                    return Err((
                        GROUP_ID_NOT_FOUND,
                        format!("Group {gid} is not a consumer group."),
                    ));
                }
                // KIP-848 offline migration: an empty classic group becomes a consumer
                // group; its committed offsets stay.
                push(
                    &mut self.writes,
                    &gid,
                    crate::records::group_key(&gid),
                    None,
                );
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.make_consumer(now);
                }
            }
            Some(_) => {}
        }
        let max = self.cfg.max_group_size;
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            member_id = self.new_member_id(&req.client_id);
        }
        let cg = self.cgroup(&gid).ok_or_else(|| {
            (
                GROUP_ID_NOT_FOUND,
                format!("Group {gid} is not a consumer group."),
            )
        })?;
        if !cg.members.contains_key(&member_id) && cg.members.len() >= max {
            return Err((
                GROUP_MAX_SIZE_REACHED,
                format!("The consumer group has reached its maximum capacity of {max} members."),
            ));
        }
        let owned = req.owned.as_deref();
        // The member: new, existing, or a static member's replacement.
        let static_old: Option<String> = req.instance_id.as_ref().and_then(|i| {
            cg.members
                .values()
                .find(|m| m.meta.instance_id.as_deref() == Some(i.as_str()))
                .map(|m| m.id.clone())
        });
        let mut new_member = false;
        if let Some(instance) = &req.instance_id {
            if joining {
                match &static_old {
                    None => new_member = !cg.members.contains_key(&member_id),
                    Some(old) => {
                        let m = &cg.members[old];
                        if m.epoch != STATIC_LEAVE_EPOCH {
                            return Err((
                                UNRELEASED_INSTANCE_ID,
                                format!("Static member {member_id} with instance id {instance} cannot join the group because the instance id is owned by {old} member."),
                            ));
                        }
                        let old = old.clone();
                        self.replace_static_member(&gid, &old, &member_id);
                    }
                }
            } else {
                let Some(old) = &static_old else {
                    return Err((
                        UNKNOWN_MEMBER_ID,
                        format!("Instance id {instance} is unknown."),
                    ));
                };
                if *old != member_id {
                    return Err((
                        FENCED_INSTANCE_ID,
                        format!("Static member {member_id} with instance id {instance} was fenced by member {old}."),
                    ));
                }
                check_epoch(&cg.members[old], req.member_epoch, owned)?;
            }
        } else {
            match cg.members.get(&member_id) {
                None if joining => new_member = true,
                None => {
                    return Err((
                        UNKNOWN_MEMBER_ID,
                        format!("Member {member_id} is not a member of group {gid}."),
                    ))
                }
                Some(m) => check_epoch(m, req.member_epoch, owned)?,
            }
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return Err((UNKNOWN_SERVER_ERROR, "group vanished".into()));
        };
        let Some(cg) = g.consumer.as_mut() else {
            return Err((UNKNOWN_SERVER_ERROR, "group vanished".into()));
        };
        if new_member {
            cg.members
                .insert(member_id.clone(), CMember::new(&member_id, now, session_ms));
        }
        let Some(m) = cg.members.get_mut(&member_id) else {
            return Err((UNKNOWN_SERVER_ERROR, "member vanished".into()));
        };
        let before_meta = m.meta.clone();
        let before_assigned = m.assigned.clone();
        if let Some(i) = &req.instance_id {
            m.meta.instance_id = Some(i.clone());
        }
        if let Some(r) = &req.rack_id {
            m.meta.rack_id = Some(r.clone());
        }
        if req.rebalance_timeout_ms != -1 {
            m.meta.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if let Some(a) = &req.server_assignor {
            m.meta.server_assignor = Some(a.clone());
        }
        if let Some(names) = &req.subscribed_topic_names {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            m.meta.subscribed_topic_names = names;
        }
        if let Some(re) = &req.subscribed_topic_regex {
            if m.meta.subscribed_topic_regex.as_deref() != Some(re.as_str()) || m.compiled.is_none()
            {
                m.compiled = compile(re).ok();
            }
            m.meta.subscribed_topic_regex = (!re.is_empty()).then(|| re.clone());
            if re.is_empty() {
                m.compiled = None;
            }
        }
        m.meta.client_id = req.client_id.clone();
        m.meta.client_host = req.client_host.clone();
        m.session_deadline = now + session_ms;
        let mut subscription_changed = new_member
            || before_meta.subscribed_topic_names != m.meta.subscribed_topic_names
            || before_meta.subscribed_topic_regex != m.meta.subscribed_topic_regex
            || before_meta.server_assignor != m.meta.server_assignor;
        let introduced = (before_meta.subscribed_topic_regex != m.meta.subscribed_topic_regex)
            .then(|| m.meta.subscribed_topic_regex.clone())
            .flatten();
        // Regexes brought by earlier heartbeats are resolved now; the one this heartbeat
        // brings waits for the next (Kafka resolves them asynchronously).
        let in_use = cg.regexes_in_use();
        let newly: Vec<String> = in_use
            .iter()
            .filter(|r| !cg.resolved_regex.contains(*r) && Some(*r) != introduced.as_ref())
            .cloned()
            .collect();
        if !newly.is_empty() {
            subscription_changed = true;
        }
        cg.resolved_regex.extend(newly);
        cg.resolved_regex.retain(|r| in_use.contains(r));
        let Some(m) = cg.members.get_mut(&member_id) else {
            return Err((UNKNOWN_SERVER_ERROR, "member vanished".into()));
        };
        if new_member || before_meta != m.meta {
            let v = cr::member_metadata_value(&m.meta);
            push(
                &mut self.writes,
                &gid,
                cr::key(cr::MEMBER_METADATA, &gid, Some(&member_id)),
                Some(v),
            );
        }
        self.refresh_group(&gid, topics, subscription_changed);
        self.reconcile(&gid, &member_id, owned, now);
        self.mark_state(&gid, now);
        let interval = self.heartbeat_interval_for(&gid, &member_id);
        let Some(m) = self.cgroup(&gid).and_then(|c| c.members.get(&member_id)) else {
            return Err((UNKNOWN_SERVER_ERROR, "member vanished".into()));
        };
        let full = joining
            || (req.rebalance_timeout_ms != -1
                && (req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some())
                && req.owned.is_some());
        let assignment =
            (full || new_member || m.assigned != before_assigned).then(|| to_list(&m.assigned));
        Ok(HeartbeatResponse {
            error: NONE,
            message: None,
            member_id: Some(member_id),
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval,
            assignment,
        })
    }

    /// Member epoch -1 (leave) or -2 (static member leaves, expecting to come back).
    fn consumer_leave(
        &mut self,
        req: &HeartbeatRequest,
        topics: &Topics,
        now: i64,
    ) -> HbResult<HeartbeatResponse> {
        let gid = &req.group_id;
        let Some(cg) = self.cgroup(gid) else {
            return Err((
                GROUP_ID_NOT_FOUND,
                format!("Consumer group {gid} not found."),
            ));
        };
        let target = match &req.instance_id {
            Some(i) => {
                let Some(m) = cg
                    .members
                    .values()
                    .find(|m| m.meta.instance_id.as_deref() == Some(i.as_str()))
                else {
                    return Err((UNKNOWN_MEMBER_ID, format!("Instance id {i} is unknown.")));
                };
                if m.id != req.member_id {
                    return Err((
                        FENCED_INSTANCE_ID,
                        format!(
                            "Static member {} with instance id {i} was fenced by member {}.",
                            req.member_id, m.id
                        ),
                    ));
                }
                m.id.clone()
            }
            None => {
                if !cg.members.contains_key(&req.member_id) {
                    return Err((
                        UNKNOWN_MEMBER_ID,
                        format!("Member {} is not a member of group {gid}.", req.member_id),
                    ));
                }
                req.member_id.clone()
            }
        };
        if req.member_epoch == STATIC_LEAVE_EPOCH {
            // The static member keeps its partitions until it comes back or its session
            // expires; no rebalance.
            if let Some(m) = self
                .groups
                .get_mut(gid)
                .and_then(|g| g.consumer.as_mut())
                .and_then(|c| c.members.get_mut(&target))
            {
                m.previous_epoch = m.epoch;
                m.epoch = STATIC_LEAVE_EPOCH;
                let v = cr::current_assignment_value(&m.current());
                push(
                    &mut self.writes,
                    gid,
                    cr::key(cr::CURRENT_ASSIGNMENT, gid, Some(&target)),
                    Some(v),
                );
            }
        } else {
            self.remove_consumer_member(gid, &target, Some(topics), now);
        }
        self.mark_state(gid, now);
        Ok(HeartbeatResponse {
            error: NONE,
            message: None,
            member_id: Some(req.member_id.clone()),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    /// A static member comes back under a new member id: it takes over the old member's
    /// assignment without a rebalance.
    fn replace_static_member(&mut self, gid: &str, old: &str, new: &str) {
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return;
        };
        let Some(mut m) = cg.members.remove(old) else {
            return;
        };
        let target = cg.target.remove(old).unwrap_or_default();
        m.id = new.to_string();
        m.epoch = 0;
        m.previous_epoch = 0;
        cg.target.insert(new.to_string(), target.clone());
        let meta = cr::member_metadata_value(&m.meta);
        let cur = cr::current_assignment_value(&m.current());
        cg.members.insert(new.to_string(), m);
        for v in [
            cr::CURRENT_ASSIGNMENT,
            cr::TARGET_MEMBER,
            cr::MEMBER_METADATA,
        ] {
            push(&mut self.writes, gid, cr::key(v, gid, Some(old)), None);
        }
        push(
            &mut self.writes,
            gid,
            cr::key(cr::MEMBER_METADATA, gid, Some(new)),
            Some(meta),
        );
        push(
            &mut self.writes,
            gid,
            cr::key(cr::TARGET_MEMBER, gid, Some(new)),
            Some(cr::target_member_value(&target)),
        );
        push(
            &mut self.writes,
            gid,
            cr::key(cr::CURRENT_ASSIGNMENT, gid, Some(new)),
            Some(cur),
        );
    }

    /// Removes (fences) a member: its partitions are free, the group epoch is bumped and a
    /// new target assignment computed.
    fn remove_consumer_member(&mut self, gid: &str, id: &str, topics: Option<&Topics>, now: i64) {
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return;
        };
        if cg.members.remove(id).is_none() {
            return;
        }
        cg.target.remove(id);
        // A regex no member uses any more is forgotten: subscribing to it again resolves it
        // anew (as in Kafka).
        let in_use = cg.regexes_in_use();
        cg.resolved_regex.retain(|r| in_use.contains(r));
        for v in [
            cr::CURRENT_ASSIGNMENT,
            cr::TARGET_MEMBER,
            cr::MEMBER_METADATA,
        ] {
            push(&mut self.writes, gid, cr::key(v, gid, Some(id)), None);
        }
        match topics {
            Some(t) => self.refresh_group(gid, t, true),
            None => {
                // Without a fresh topic view (timers), the last subscription metadata is used.
                let known: Topics = self
                    .cgroup(gid)
                    .map(|c| {
                        c.metadata
                            .iter()
                            .map(|(n, (id, p))| {
                                (
                                    n.clone(),
                                    TopicInfo {
                                        id: *id,
                                        partitions: *p,
                                        internal: false,
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.refresh_group(gid, &known, true);
            }
        }
        self.mark_state(gid, now);
    }

    /// Recomputes the subscription metadata; bumps the group epoch if it or a subscription
    /// changed, and then computes the new target assignment.
    fn refresh_group(&mut self, gid: &str, topics: &Topics, mut bump: bool) {
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return;
        };
        let mut metadata = BTreeMap::new();
        for (name, info) in topics {
            if cg
                .members
                .values()
                .any(|m| m.subscribes(name, info, &cg.resolved_regex))
            {
                metadata.insert(name.clone(), (info.id, info.partitions));
            }
        }
        if metadata != cg.metadata {
            cg.metadata = metadata;
            bump = true;
            let list: Vec<TopicMetadata> = cg
                .metadata
                .iter()
                .map(|(n, (id, p))| TopicMetadata {
                    id: *id,
                    name: n.clone(),
                    partitions: *p,
                })
                .collect();
            push(
                &mut self.writes,
                gid,
                cr::key(cr::PARTITION_METADATA, gid, None),
                Some(cr::partition_metadata_value(&list)),
            );
        }
        if !bump {
            return;
        }
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return;
        };
        let prev = cg.epoch;
        cg.epoch += 1;
        assert!(cg.epoch > prev, "group epoch of {gid} must only grow");
        let epoch = cg.epoch;
        push(
            &mut self.writes,
            gid,
            cr::key(cr::METADATA, gid, None),
            Some(cr::metadata_value(epoch)),
        );
        // The target assignment at the new epoch.
        let assignor = cg.assignor();
        let mut subs: BTreeMap<String, BTreeSet<TopicId>> = BTreeMap::new();
        for m in cg.members.values() {
            let ids = cg
                .metadata
                .iter()
                .filter(|(n, (id, p))| {
                    m.subscribes(
                        n,
                        &TopicInfo {
                            id: *id,
                            partitions: *p,
                            internal: false,
                        },
                        &cg.resolved_regex,
                    )
                })
                .map(|(_, (id, _))| *id)
                .collect();
            subs.insert(m.id.clone(), ids);
        }
        let parts: BTreeMap<TopicId, i32> = cg.metadata.values().copied().collect();
        let new_target = if assignor == "range" {
            assign_range(&subs, &parts)
        } else {
            assign_uniform(&subs, &parts, &cg.target)
        };
        let mut changed = Vec::new();
        for (id, a) in &new_target {
            if cg.target.get(id) != Some(a) {
                changed.push((id.clone(), cr::target_member_value(a)));
            }
        }
        cg.target = new_target;
        cg.assignment_epoch = epoch;
        for (id, v) in changed {
            push(
                &mut self.writes,
                gid,
                cr::key(cr::TARGET_MEMBER, gid, Some(&id)),
                Some(v),
            );
        }
        push(
            &mut self.writes,
            gid,
            cr::key(cr::TARGET_METADATA, gid, None),
            Some(cr::target_metadata_value(epoch)),
        );
    }

    /// Kafka's `CurrentAssignmentBuilder`: moves a member one step towards its target.
    fn reconcile(
        &mut self,
        gid: &str,
        member_id: &str,
        owned: Option<&[(TopicId, Vec<i32>)]>,
        now: i64,
    ) {
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return;
        };
        // Partitions owned (assigned or pending revocation) by other members.
        let mut taken: BTreeSet<(TopicId, i32)> = BTreeSet::new();
        for m in cg.members.values().filter(|m| m.id != member_id) {
            for a in [&m.assigned, &m.pending_revocation] {
                for (id, ps) in a {
                    taken.extend(ps.iter().map(|p| (*id, *p)));
                }
            }
        }
        let target_epoch = cg.assignment_epoch;
        let target = cg.target.get(member_id).cloned().unwrap_or_default();
        let Some(m) = cg.members.get_mut(member_id) else {
            return;
        };
        if m.epoch == STATIC_LEAVE_EPOCH {
            return;
        }
        let owns_any = |pending: &Assign| -> bool {
            let Some(owned) = owned else {
                return true;
            };
            owned.iter().any(|(id, ps)| {
                ps.iter()
                    .any(|p| pending.get(id).is_some_and(|s| s.contains(p)))
            })
        };
        let next_epoch = match m.state {
            MemberState::Stable if m.epoch == target_epoch => None,
            MemberState::Stable | MemberState::UnreleasedPartitions => Some(m.epoch),
            MemberState::UnrevokedPartitions => {
                if owns_any(&m.pending_revocation) {
                    None
                } else {
                    Some(m.epoch + 1)
                }
            }
            MemberState::Unknown => Some(target_epoch),
        };
        let Some(epoch) = next_epoch else {
            return;
        };
        let before = m.current();
        let mut assigned = Assign::new();
        let mut revoke = Assign::new();
        let mut pending_assign = Assign::new();
        let mut unreleased = false;
        let ids: BTreeSet<TopicId> = target.keys().chain(m.assigned.keys()).copied().collect();
        for id in ids {
            let empty = BTreeSet::new();
            let t = target.get(&id).unwrap_or(&empty);
            let cur = m.assigned.get(&id).unwrap_or(&empty);
            let keep: BTreeSet<i32> = cur.intersection(t).copied().collect();
            let rev: BTreeSet<i32> = cur.difference(&keep).copied().collect();
            let mut add: BTreeSet<i32> = t.difference(&keep).copied().collect();
            let before_len = add.len();
            add.retain(|p| {
                !taken.contains(&(id, *p))
                    && !m.pending_revocation.get(&id).is_some_and(|s| s.contains(p))
            });
            unreleased |= add.len() != before_len;
            if !keep.is_empty() {
                assigned.insert(id, keep);
            }
            if !rev.is_empty() {
                revoke.insert(id, rev);
            }
            if !add.is_empty() {
                pending_assign.insert(id, add);
            }
        }
        if !revoke.is_empty() && owns_any(&revoke) {
            m.state = MemberState::UnrevokedPartitions;
            if m.epoch != epoch {
                m.previous_epoch = m.epoch;
                m.epoch = epoch;
            }
            m.assigned = assigned;
            m.pending_revocation = revoke;
        } else {
            for (id, ps) in pending_assign {
                assigned.entry(id).or_default().extend(ps);
            }
            m.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
            if m.epoch != target_epoch {
                m.previous_epoch = m.epoch;
                m.epoch = target_epoch;
            }
            m.assigned = assigned;
            m.pending_revocation = Assign::new();
        }
        if m.state == MemberState::UnrevokedPartitions {
            if m.revoke_deadline.is_none() {
                m.revoke_deadline = Some(now + i64::from(m.meta.rebalance_timeout_ms.max(0)));
            }
        } else {
            m.revoke_deadline = None;
        }
        let after = m.current();
        if after != before {
            push(
                &mut self.writes,
                gid,
                cr::key(cr::CURRENT_ASSIGNMENT, gid, Some(member_id)),
                Some(cr::current_assignment_value(&after)),
            );
        }
    }

    /// Keeps the classic state field in step (Empty iff no members) for the code shared
    /// with classic groups (offset expiry, DeleteGroups).
    fn mark_state(&mut self, gid: &str, now: i64) {
        if let Some(g) = self.groups.get_mut(gid) {
            let empty = g.consumer.as_ref().is_none_or(|c| c.members.is_empty());
            let s = if empty {
                GroupState::Empty
            } else {
                GroupState::Stable
            };
            g.set_state(s, now);
        }
    }

    /// ConsumerGroupDescribe (API 69) for one group: `Err` with Kafka's error if the group
    /// does not exist or is not a consumer group.
    pub fn consumer_describe(&self, gid: &str) -> Result<ConsumerGroupDescription, (i16, String)> {
        let Some(g) = self.groups.get(gid) else {
            return Err((GROUP_ID_NOT_FOUND, format!("Group {gid} not found.")));
        };
        let Some(cg) = &g.consumer else {
            return Err((
                GROUP_ID_NOT_FOUND,
                format!("Group {gid} is not a consumer group."),
            ));
        };
        let named = |a: &Assign| -> Vec<(TopicId, String, Vec<i32>)> {
            a.iter()
                .filter(|(_, ps)| !ps.is_empty())
                .map(|(id, ps)| (*id, cg.topic_name(id), ps.iter().copied().collect()))
                .collect()
        };
        Ok(ConsumerGroupDescription {
            state: cg.state_name(),
            group_epoch: cg.epoch,
            assignment_epoch: cg.assignment_epoch,
            assignor: cg.assignor().to_string(),
            members: cg
                .members
                .values()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.meta.instance_id.clone(),
                    rack_id: m.meta.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.meta.client_id.clone(),
                    client_host: m.meta.client_host.clone(),
                    subscribed_topic_names: m.meta.subscribed_topic_names.clone(),
                    subscribed_topic_regex: m.meta.subscribed_topic_regex.clone(),
                    assignment: named(&m.assigned),
                    target_assignment: named(cg.target.get(&m.id).unwrap_or(&Assign::new())),
                })
                .collect(),
        })
    }

    /// Whether a group uses the consumer protocol.
    pub fn is_consumer_group(&self, gid: &str) -> bool {
        self.cgroup(gid).is_some()
    }

    /// Validates an OffsetCommit against a consumer-protocol group (Kafka's
    /// `ConsumerGroup.validateOffsetCommit`).
    pub(crate) fn check_consumer_commit(
        &mut self,
        gid: &str,
        epoch: i32,
        member_id: &str,
        api_version: i16,
    ) -> i16 {
        let Some(cg) = self.groups.get_mut(gid).and_then(|g| g.consumer.as_mut()) else {
            return UNKNOWN_SERVER_ERROR;
        };
        if epoch < 0 && cg.members.is_empty() {
            return NONE;
        }
        let Some(m) = cg.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if api_version < 9 {
            return UNSUPPORTED_VERSION;
        }
        if epoch != m.epoch {
            return STALE_MEMBER_EPOCH;
        }
        NONE
    }

    /// Validates an OffsetFetch carrying a member id and epoch (v9+) against a
    /// consumer-protocol group. Other groups are not checked.
    pub fn check_offset_fetch(&self, gid: &str, member_id: Option<&str>, epoch: i32) -> i16 {
        let Some(cg) = self.cgroup(gid) else {
            return NONE;
        };
        let Some(id) = member_id else {
            return if epoch < 0 { NONE } else { UNKNOWN_MEMBER_ID };
        };
        match cg.members.get(id) {
            None => UNKNOWN_MEMBER_ID,
            Some(m) if m.epoch != epoch => STALE_MEMBER_EPOCH,
            Some(_) => NONE,
        }
    }

    /// Whether some member of a consumer group subscribes to `topic` (OffsetDelete).
    pub(crate) fn consumer_subscribes(&self, gid: &str, topic: &str) -> bool {
        self.cgroup(gid)
            .is_some_and(|cg| cg.metadata.contains_key(topic))
    }

    /// An empty consumer group joined with the classic protocol becomes a classic group
    /// (offsets stay). Returns false if the group has consumer members.
    pub(crate) fn downgrade_if_empty(&mut self, gid: &str) -> bool {
        let Some(g) = self.groups.get_mut(gid) else {
            return true;
        };
        let Some(cg) = &g.consumer else {
            return true;
        };
        if !cg.members.is_empty() {
            return false;
        }
        g.consumer = None;
        g.protocol_type = None;
        g.generation = 0;
        for v in [cr::TARGET_METADATA, cr::PARTITION_METADATA, cr::METADATA] {
            push(&mut self.writes, gid, cr::key(v, gid, None), None);
        }
        true
    }

    /// Tombstones for every consumer group record of a group being deleted.
    pub(crate) fn consumer_tombstones(&mut self, gid: &str, cg: &CGroup) {
        for id in cg.members.keys() {
            for v in [
                cr::CURRENT_ASSIGNMENT,
                cr::TARGET_MEMBER,
                cr::MEMBER_METADATA,
            ] {
                push(&mut self.writes, gid, cr::key(v, gid, Some(id)), None);
            }
        }
        for v in [cr::TARGET_METADATA, cr::PARTITION_METADATA, cr::METADATA] {
            push(&mut self.writes, gid, cr::key(v, gid, None), None);
        }
    }

    pub(crate) fn consumer_next_deadline(&self, consider: &mut dyn FnMut(i64)) {
        for g in self.groups.values() {
            if let Some(cg) = &g.consumer {
                for m in cg.members.values() {
                    consider(m.session_deadline);
                    if let Some(d) = m.revoke_deadline {
                        consider(d);
                    }
                }
            }
        }
    }

    /// Fences members whose session expired or who did not revoke in time.
    pub(crate) fn consumer_tick(&mut self, now: i64) {
        let mut due: Vec<(String, String)> = Vec::new();
        for (gid, g) in &self.groups {
            if let Some(cg) = &g.consumer {
                for m in cg.members.values() {
                    if m.session_deadline <= now || m.revoke_deadline.is_some_and(|d| d <= now) {
                        due.push((gid.clone(), m.id.clone()));
                    }
                }
            }
        }
        for (gid, id) in due {
            self.remove_consumer_member(&gid, &id, None, now);
        }
    }

    /// Applies a consumer group record while loading.
    pub(crate) fn load_consumer_record(
        &mut self,
        version: i16,
        group: String,
        member: Option<String>,
        value: Option<&[u8]>,
        now: i64,
    ) -> Result<(), crate::GroupError> {
        let session_ms = i64::from(self.cfg.consumer_session_timeout_ms);
        if value.is_none() {
            let Some(g) = self.groups.get_mut(&group) else {
                return Ok(());
            };
            if version == cr::METADATA {
                g.consumer = None;
                g.protocol_type = None;
                if g.offsets.is_empty() {
                    self.groups.remove(&group);
                } else {
                    g.set_state(GroupState::Empty, now);
                }
                return Ok(());
            }
            let Some(cg) = g.consumer.as_mut() else {
                return Ok(());
            };
            match (version, member) {
                (cr::MEMBER_METADATA, Some(m)) => {
                    cg.members.remove(&m);
                }
                (cr::TARGET_MEMBER, Some(m)) => {
                    cg.target.remove(&m);
                }
                (cr::CURRENT_ASSIGNMENT, Some(m)) => {
                    if let Some(x) = cg.members.get_mut(&m) {
                        x.epoch = 0;
                        x.previous_epoch = 0;
                        x.assigned.clear();
                        x.pending_revocation.clear();
                        x.state = MemberState::Stable;
                    }
                }
                (cr::PARTITION_METADATA, _) => cg.metadata.clear(),
                _ => {}
            }
            self.mark_state(&group, now);
            return Ok(());
        }
        let v = value.unwrap_or_default();
        let g = match self.ensure_group(&group, now) {
            Ok(g) => g,
            Err(_) => return Ok(()),
        };
        if g.consumer.is_none() {
            g.make_consumer(now);
        }
        let Some(cg) = g.consumer.as_mut() else {
            return Ok(());
        };
        let member_entry = |cg: &mut CGroup, m: &str| -> Option<()> {
            cg.members
                .entry(m.to_string())
                .or_insert_with(|| CMember::new(m, now, session_ms));
            Some(())
        };
        match (version, member) {
            (cr::METADATA, _) => cg.epoch = cr::decode_epoch_value(v)?,
            (cr::TARGET_METADATA, _) => cg.assignment_epoch = cr::decode_epoch_value(v)?,
            (cr::PARTITION_METADATA, _) => {
                cg.metadata = cr::decode_partition_metadata_value(v)?
                    .into_iter()
                    .map(|t| (t.name, (t.id, t.partitions)))
                    .collect();
            }
            (cr::MEMBER_METADATA, Some(m)) => {
                let meta = cr::decode_member_metadata_value(v)?;
                member_entry(cg, &m);
                if let Some(x) = cg.members.get_mut(&m) {
                    x.compiled = meta
                        .subscribed_topic_regex
                        .as_deref()
                        .and_then(|r| compile(r).ok());
                    if let Some(r) = &meta.subscribed_topic_regex {
                        cg.resolved_regex.insert(r.clone());
                    }
                    x.meta = meta;
                }
            }
            (cr::TARGET_MEMBER, Some(m)) => {
                cg.target.insert(m, cr::decode_target_member_value(v)?);
            }
            (cr::CURRENT_ASSIGNMENT, Some(m)) => {
                let c = cr::decode_current_assignment_value(v)?;
                member_entry(cg, &m);
                if let Some(x) = cg.members.get_mut(&m) {
                    x.epoch = c.member_epoch;
                    x.previous_epoch = c.previous_member_epoch;
                    x.state = MemberState::from_code(c.state);
                    x.assigned = c.assigned;
                    x.pending_revocation = c.pending_revocation;
                    if x.state == MemberState::UnrevokedPartitions {
                        x.revoke_deadline =
                            Some(now + i64::from(x.meta.rebalance_timeout_ms.max(0)));
                    }
                }
            }
            _ => {
                return Err(crate::GroupError::BadRecord(
                    "consumer group key without member",
                ))
            }
        }
        self.mark_state(&group, now);
        Ok(())
    }
}

fn check_epoch(m: &CMember, received: i32, owned: Option<&[(TopicId, Vec<i32>)]>) -> HbResult<()> {
    if received > m.epoch {
        return Err((
            FENCED_MEMBER_EPOCH,
            format!("The consumer group member has a greater member epoch ({received}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.", m.epoch),
        ));
    }
    if received < m.epoch && (received != m.previous_epoch || !is_subset(owned, &m.assigned)) {
        return Err((
            FENCED_MEMBER_EPOCH,
            format!("The consumer group member has a smaller member epoch ({received}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.", m.epoch),
        ));
    }
    Ok(())
}

impl Group {
    pub(crate) fn make_consumer(&mut self, now: i64) {
        self.consumer = Some(CGroup::default());
        self.protocol_type = Some("consumer".to_string());
        self.protocol = None;
        self.leader = None;
        self.generation = 0;
        self.set_state(GroupState::Empty, now);
    }
}

/// The `uniform` assignor: balanced and sticky. Every partition of a subscribed topic goes
/// to a subscribed member; a member keeps the partitions of its previous target that it
/// still subscribes to, then unassigned partitions go to the least loaded subscribed member,
/// then partitions move from the most to the least loaded eligible member until no move
/// lowers the spread (for members with the same subscription: counts within one).
pub fn assign_uniform(
    subs: &BTreeMap<String, BTreeSet<TopicId>>,
    parts: &BTreeMap<TopicId, i32>,
    prev: &BTreeMap<String, Assign>,
) -> BTreeMap<String, Assign> {
    let mut out: BTreeMap<&str, BTreeSet<(TopicId, i32)>> =
        subs.keys().map(|m| (m.as_str(), BTreeSet::new())).collect();
    let mut owned: BTreeSet<(TopicId, i32)> = BTreeSet::new();
    let exists = |id: &TopicId, p: i32| parts.get(id).is_some_and(|n| p >= 0 && p < *n);
    for (m, a) in prev {
        let (Some(s), Some(x)) = (subs.get(m), out.get_mut(m.as_str())) else {
            continue;
        };
        for (id, ps) in a.iter().filter(|(id, _)| s.contains(*id)) {
            for p in ps {
                if exists(id, *p) && owned.insert((*id, *p)) {
                    x.insert((*id, *p));
                }
            }
        }
    }
    // Members by load: the least loaded first (ties in member-id order).
    let mut load: BTreeSet<(usize, &str)> = out.iter().map(|(m, a)| (a.len(), *m)).collect();
    fn lightest<'a>(
        load: &BTreeSet<(usize, &'a str)>,
        subs: &BTreeMap<String, BTreeSet<TopicId>>,
        id: &TopicId,
        not: &str,
    ) -> Option<(usize, &'a str)> {
        load.iter()
            .find(|(_, m)| *m != not && subs.get(*m).is_some_and(|s| s.contains(id)))
            .copied()
    }
    fn shift<'a>(
        out: &mut BTreeMap<&'a str, BTreeSet<(TopicId, i32)>>,
        load: &mut BTreeSet<(usize, &'a str)>,
        m: &'a str,
        tp: (TopicId, i32),
        add: bool,
    ) {
        if let Some(x) = out.get_mut(m) {
            load.remove(&(x.len(), m));
            if add {
                x.insert(tp);
            } else {
                x.remove(&tp);
            }
            load.insert((x.len(), m));
        }
    }
    for (id, n) in parts {
        for p in 0..*n {
            if owned.contains(&(*id, p)) {
                continue;
            }
            if let Some((_, m)) = lightest(&load, subs, id, "") {
                shift(&mut out, &mut load, m, (*id, p), true);
            }
        }
    }
    // Balance: move a partition from a more loaded member to the least loaded eligible one
    // while that narrows the spread. Each move lowers the sum of squared loads, so this
    // ends; with one subscription for all it takes at most one move per partition.
    'balance: loop {
        let heavy: Vec<(usize, &str)> = load.iter().rev().copied().collect();
        for (n_from, from) in heavy {
            let Some(from_parts) = out.get(from) else {
                continue;
            };
            let mut chosen = None;
            for tp in from_parts.iter().rev() {
                match lightest(&load, subs, &tp.0, from) {
                    Some((n_to, to)) if n_to + 1 < n_from => {
                        chosen = Some((*tp, to));
                        break;
                    }
                    // For a homogeneous group the least loaded member is the same for
                    // every partition: one look is enough.
                    _ if subs.values().all(|s| s == &subs[from]) => break,
                    _ => {}
                }
            }
            if let Some((tp, to)) = chosen {
                shift(&mut out, &mut load, from, tp, false);
                shift(&mut out, &mut load, to, tp, true);
                continue 'balance;
            }
        }
        break;
    }
    out.into_iter()
        .map(|(m, set)| {
            let mut a = Assign::new();
            for (id, p) in set {
                a.entry(id).or_default().insert(p);
            }
            (m.to_string(), a)
        })
        .collect()
}

/// The `range` assignor: per topic, the subscribed members in member-id order each get a
/// contiguous range of partitions, the first `partitions % members` one more. Members with
/// the same subscription get the same partition numbers of every topic (co-partitioning).
pub fn assign_range(
    subs: &BTreeMap<String, BTreeSet<TopicId>>,
    parts: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assign> {
    let mut out: BTreeMap<String, Assign> =
        subs.keys().map(|m| (m.clone(), Assign::new())).collect();
    for (id, n) in parts {
        let members: Vec<&String> = subs
            .iter()
            .filter(|(_, s)| s.contains(id))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() {
            continue;
        }
        let k = members.len() as i32;
        let (q, r) = (n / k, n % k);
        let mut start = 0;
        for (i, m) in members.iter().enumerate() {
            let len = q + i32::from((i as i32) < r);
            if len > 0 {
                if let Some(a) = out.get_mut(*m) {
                    a.entry(*id).or_default().extend(start..start + len);
                }
            }
            start += len;
        }
    }
    out
}

#[cfg(test)]
#[path = "consumer_tests.rs"]
mod tests;
