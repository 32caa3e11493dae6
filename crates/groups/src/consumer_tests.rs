use super::*;
use crate::{Config, Coordinator};

const T: TopicId = [1; 16];

fn topics(n: i32) -> Topics {
    let mut t = Topics::new();
    t.insert(
        "t".into(),
        TopicInfo {
            id: T,
            partitions: n,
            internal: false,
        },
    );
    t
}

fn hb(member: &str, epoch: i32, owned: Option<Vec<i32>>) -> HeartbeatRequest {
    HeartbeatRequest {
        api_version: 1,
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: epoch,
        instance_id: None,
        rack_id: None,
        rebalance_timeout_ms: if epoch == 0 { 30_000 } else { -1 },
        subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
        subscribed_topic_regex: None,
        server_assignor: None,
        owned: owned.map(|o| if o.is_empty() { vec![] } else { vec![(T, o)] }),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
    }
}

fn parts(r: &HeartbeatResponse) -> Option<Vec<i32>> {
    r.assignment
        .as_ref()
        .map(|a| a.iter().flat_map(|(_, p)| p.clone()).collect())
}

/// No partition is owned (assigned or pending revocation) by two members.
fn check_single_owner(c: &Coordinator) {
    for g in c.groups.values() {
        let Some(cg) = &g.consumer else { continue };
        let mut seen = BTreeSet::new();
        for m in cg.members.values() {
            for a in [&m.assigned, &m.pending_revocation] {
                for (id, ps) in a {
                    for p in ps {
                        assert!(seen.insert((*id, *p)), "partition {p} has two owners");
                    }
                }
            }
        }
    }
}

/// Drives a member like a client: heartbeats with what it owns until nothing changes.
struct Client {
    id: String,
    epoch: i32,
    owned: Vec<i32>,
}

impl Client {
    fn beat(&mut self, c: &mut Coordinator, t: &Topics, now: i64) -> HeartbeatResponse {
        let r = c.consumer_heartbeat(hb(&self.id, self.epoch, Some(self.owned.clone())), t, now);
        assert_eq!(r.error, 0, "{r:?}");
        self.epoch = r.member_epoch;
        if let Some(p) = parts(&r) {
            self.owned = p;
        }
        check_single_owner(c);
        r
    }
}

fn join(c: &mut Coordinator, id: &str, t: &Topics, now: i64) -> Client {
    let r = c.consumer_heartbeat(hb(id, 0, Some(vec![])), t, now);
    assert_eq!(r.error, 0, "{r:?}");
    check_single_owner(c);
    Client {
        id: id.into(),
        epoch: r.member_epoch,
        owned: parts(&r).unwrap_or_default(),
    }
}

fn settle(c: &mut Coordinator, clients: &mut [Client], t: &Topics, now: i64) {
    for _ in 0..10 {
        for x in clients.iter_mut() {
            x.beat(c, t, now);
        }
    }
    assert_eq!(c.consumer_describe("g").map(|d| d.state), Ok("Stable"));
}

#[test]
fn members_join_and_partitions_move_without_two_owners() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(6);
    let mut a = join(&mut c, "a", &t, 0);
    assert_eq!(a.epoch, 1);
    assert_eq!(a.owned, vec![0, 1, 2, 3, 4, 5]);
    let mut b = join(&mut c, "b", &t, 1);
    // b's partitions are still a's: b waits at the new epoch with nothing.
    assert_eq!(b.epoch, 2);
    assert!(b.owned.is_empty());
    assert_eq!(c.consumer_describe("g").map(|d| d.state), Ok("Reconciling"));
    // a is asked to revoke three partitions and keeps its epoch until it has.
    let r = a.beat(&mut c, &t, 2);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(a.owned.len(), 3);
    // b still gets nothing until a reports them released.
    b.beat(&mut c, &t, 3);
    assert!(b.owned.is_empty());
    let r = a.beat(&mut c, &t, 4);
    assert_eq!(r.member_epoch, 2);
    b.beat(&mut c, &t, 5);
    assert_eq!(b.owned.len(), 3);
    let mut all: Vec<i32> = a.owned.iter().chain(&b.owned).copied().collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(c.consumer_describe("g").map(|d| d.state), Ok("Stable"));
    // a leaves: b gets everything at the next epoch.
    let r = c.consumer_heartbeat(hb("a", LEAVE_EPOCH, None), &t, 6);
    assert_eq!((r.error, r.member_epoch), (0, -1));
    b.beat(&mut c, &t, 7);
    assert_eq!(b.owned.len(), 6);
    assert_eq!(b.epoch, 3);
}

#[test]
fn epochs_are_checked_like_kafka() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(4);
    let a = join(&mut c, "a", &t, 0);
    let r = c.consumer_heartbeat(hb("a", a.epoch + 1, Some(a.owned.clone())), &t, 1);
    assert_eq!(r.error, FENCED_MEMBER_EPOCH);
    let r = c.consumer_heartbeat(hb("nobody", 3, None), &t, 1);
    assert_eq!(r.error, UNKNOWN_MEMBER_ID);
    let r = c.consumer_heartbeat(hb("a", 1, None), &t, 1);
    assert_eq!(r.error, 0);
    // The group does not exist for a non-joining heartbeat.
    let mut x = hb("a", 1, None);
    x.group_id = "other".into();
    assert_eq!(c.consumer_heartbeat(x, &t, 1).error, GROUP_ID_NOT_FOUND);
    let mut x = hb("z", 0, Some(vec![]));
    x.server_assignor = Some("sticky".into());
    assert_eq!(c.consumer_heartbeat(x, &t, 1).error, UNSUPPORTED_ASSIGNOR);
    let mut x = hb("z", 0, Some(vec![]));
    x.subscribed_topic_names = None;
    x.subscribed_topic_regex = Some("(".into());
    assert_eq!(
        c.consumer_heartbeat(x, &t, 1).error,
        INVALID_REGULAR_EXPRESSION
    );
    let x = hb("", 0, Some(vec![]));
    assert_eq!(c.consumer_heartbeat(x, &t, 1).error, INVALID_REQUEST);
    // A commit with a stale epoch is refused; the current one accepted.
    assert_eq!(
        c.check_commit("g", 0, "a", None, 9, 1),
        crate::CommitCheck::Error(STALE_MEMBER_EPOCH)
    );
    assert_eq!(
        c.check_commit("g", 1, "a", None, 9, 1),
        crate::CommitCheck::Ok
    );
    assert_eq!(
        c.check_commit("g", 1, "a", None, 8, 1),
        crate::CommitCheck::Error(UNSUPPORTED_VERSION)
    );
}

#[test]
fn session_expiry_fences_and_frees_partitions() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(4);
    let a = join(&mut c, "a", &t, 0);
    let b = join(&mut c, "b", &t, 0);
    let mut cl = vec![a, b];
    settle(&mut c, &mut cl, &t, 10);
    assert_eq!(c.next_deadline(), Some(10 + 45_000));
    // Only b keeps heartbeating; a's session ends at 45_010.
    cl[1].beat(&mut c, &t, 40_000);
    c.tick(45_011);
    let desc = c.consumer_describe("g").expect("group");
    assert_eq!(desc.members.len(), 1);
    assert_eq!(desc.members[0].member_id, "b");
    cl[1].beat(&mut c, &t, 45_100);
    assert_eq!(cl[1].owned.len(), 4);
}

#[test]
fn static_member_leaves_and_returns_without_rebalance() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(4);
    let mut x = hb("a1", 0, Some(vec![]));
    x.instance_id = Some("i".into());
    let r = c.consumer_heartbeat(x, &t, 0);
    assert_eq!((r.error, r.member_epoch), (0, 1));
    let epoch = c.consumer_describe("g").map(|d| d.group_epoch);
    // Another member with the same instance id while the first is active.
    let mut y = hb("a2", 0, Some(vec![]));
    y.instance_id = Some("i".into());
    assert_eq!(
        c.consumer_heartbeat(y.clone(), &t, 1).error,
        UNRELEASED_INSTANCE_ID
    );
    let mut l = hb("a1", STATIC_LEAVE_EPOCH, None);
    l.instance_id = Some("i".into());
    assert_eq!(
        c.consumer_heartbeat(l, &t, 2).member_epoch,
        STATIC_LEAVE_EPOCH
    );
    let r = c.consumer_heartbeat(y, &t, 3);
    assert_eq!(r.error, 0);
    assert_eq!(parts(&r).map(|p| p.len()), Some(4));
    assert_eq!(c.consumer_describe("g").map(|d| d.group_epoch), epoch);
    // The old incarnation is fenced.
    let mut z = hb("a1", 1, None);
    z.instance_id = Some("i".into());
    assert_eq!(c.consumer_heartbeat(z, &t, 4).error, FENCED_INSTANCE_ID);
}

#[test]
fn new_partitions_trigger_a_new_target() {
    let mut c = Coordinator::new(Config::default(), "t");
    let mut a = join(&mut c, "a", &topics(2), 0);
    assert_eq!(a.owned.len(), 2);
    let r = a.beat(&mut c, &topics(5), 1);
    assert_eq!(parts(&r).map(|p| p.len()), Some(5));
    assert_eq!(a.epoch, 2);
}

#[test]
fn regex_subscription_matches_whole_names_and_skips_internal_topics() {
    let mut c = Coordinator::new(Config::default(), "t");
    let mut t = topics(2);
    t.insert(
        "tx".into(),
        TopicInfo {
            id: [2; 16],
            partitions: 1,
            internal: false,
        },
    );
    t.insert(
        "__consumer_offsets".into(),
        TopicInfo {
            id: [3; 16],
            partitions: 1,
            internal: true,
        },
    );
    let mut x = hb("a", 0, Some(vec![]));
    x.subscribed_topic_names = None;
    x.subscribed_topic_regex = Some("t|__.*".into());
    let r = c.consumer_heartbeat(x, &t, 0);
    assert_eq!(r.error, 0);
    // As in Kafka, a regex new to the group is resolved after the heartbeat that brought it,
    // which is told to come back soon.
    assert_eq!(r.assignment, Some(vec![]));
    assert!(r.heartbeat_interval_ms < Config::default().consumer_heartbeat_interval_ms);
    let r = c.consumer_heartbeat(hb("a", r.member_epoch, Some(vec![])), &t, 1);
    assert_eq!(r.error, 0);
    assert_eq!(r.assignment, Some(vec![(T, vec![0, 1])]));
    // Leaving and subscribing again with the regex and a literal topic: the literal topic
    // first, the regex's topics on the next heartbeat.
    let r = c.consumer_heartbeat(hb("a", LEAVE_EPOCH, None), &t, 2);
    assert_eq!(r.error, 0);
    let mut x = hb("a", 0, Some(vec![]));
    x.subscribed_topic_names = Some(vec!["tx".into()]);
    x.subscribed_topic_regex = Some("t".into());
    let r = c.consumer_heartbeat(x, &t, 3);
    assert_eq!(r.assignment, Some(vec![([2; 16], vec![0])]));
    let r = c.consumer_heartbeat(hb("a", r.member_epoch, None), &t, 4);
    assert_eq!(
        r.assignment,
        Some(vec![(T, vec![0, 1]), ([2; 16], vec![0])])
    );
}

#[test]
fn records_rebuild_the_group() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(6);
    let a = join(&mut c, "a", &t, 0);
    let b = join(&mut c, "b", &t, 1);
    let mut cl = vec![a, b];
    settle(&mut c, &mut cl, &t, 2);
    let writes = c.take_writes();
    let mut d = Coordinator::new(Config::default(), "u");
    for w in &writes {
        d.load_record(&w.key, w.value.as_deref(), 100)
            .expect("record");
    }
    let x = c.consumer_describe("g").expect("group");
    let y = d.consumer_describe("g").expect("group");
    assert_eq!(
        (x.state, x.group_epoch, x.assignment_epoch),
        (y.state, y.group_epoch, y.assignment_epoch)
    );
    let own = |d: &ConsumerGroupDescription| -> Vec<(String, i32, Vec<i32>)> {
        d.members
            .iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    m.member_epoch,
                    m.assignment.iter().flat_map(|a| a.2.clone()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(own(&x), own(&y));
    // The members carry on against the rebuilt coordinator.
    for cli in cl.iter_mut() {
        cli.beat(&mut d, &t, 200);
    }
    // Leave both, delete: tombstones remove everything on reload.
    for id in ["a", "b"] {
        assert_eq!(
            d.consumer_heartbeat(hb(id, LEAVE_EPOCH, None), &t, 300)
                .error,
            0
        );
    }
    assert_eq!(d.delete_group("g"), 0);
    let mut e = Coordinator::new(Config::default(), "v");
    for w in writes.iter().chain(d.take_writes().iter()) {
        e.load_record(&w.key, w.value.as_deref(), 400)
            .expect("record");
    }
    assert!(e.consumer_describe("g").is_err());
}

#[test]
fn empty_groups_convert_between_protocols() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(2);
    // A classic group with only offsets becomes a consumer group; offsets stay.
    assert_eq!(
        c.check_commit("g", -1, "", None, 9, 0),
        crate::CommitCheck::Ok
    );
    c.apply_commit(
        "g",
        vec![(
            "t".into(),
            0,
            crate::records::OffsetValue {
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 0,
            },
        )],
    );
    let a = join(&mut c, "a", &t, 1);
    assert_eq!(c.list_groups(&[])[0].group_type, "consumer");
    assert_eq!(c.fetch_offsets("g", None).len(), 1);
    // A classic member cannot join while the consumer group has members.
    let mut j = crate::JoinRequest {
        group_id: "g".into(),
        member_id: String::new(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![crate::Protocol {
            name: "range".into(),
            metadata: vec![],
        }],
        require_known_member_id: true,
    };
    match c.join(j.clone(), 2) {
        crate::Outcome::Now(r) => assert_eq!(r.error, INCONSISTENT_GROUP_PROTOCOL),
        crate::Outcome::Wait(_) => panic!("joined a consumer group"),
    }
    assert_eq!(
        c.consumer_heartbeat(hb(&a.id, LEAVE_EPOCH, None), &t, 3)
            .error,
        0
    );
    // Empty now: a classic join converts it back.
    j.require_known_member_id = false;
    assert!(matches!(c.join(j, 4), crate::Outcome::Wait(_)));
    assert_eq!(c.list_groups(&[])[0].group_type, "classic");
    assert_eq!(c.fetch_offsets("g", None).len(), 1);
    // And a consumer member cannot join the non-empty classic group.
    assert_eq!(
        c.consumer_heartbeat(hb("b", 0, Some(vec![])), &t, 5).error,
        GROUP_ID_NOT_FOUND
    );
}

#[test]
fn uniform_is_balanced_and_sticky() {
    let mut subs = BTreeMap::new();
    for m in ["a", "b", "c"] {
        subs.insert(m.to_string(), BTreeSet::from([T]));
    }
    let parts = BTreeMap::from([(T, 12)]);
    let first = assign_uniform(&subs, &parts, &BTreeMap::new());
    let counts: Vec<usize> = first.values().map(|a| a[&T].len()).collect();
    assert_eq!(counts, vec![4, 4, 4]);
    subs.insert("d".into(), BTreeSet::from([T]));
    let second = assign_uniform(&subs, &parts, &first);
    let counts: Vec<usize> = second
        .values()
        .map(|a| a.get(&T).map_or(0, BTreeSet::len))
        .collect();
    assert_eq!(counts, vec![3, 3, 3, 3]);
    // Sticky: each old member keeps 3 of its 4.
    for m in ["a", "b", "c"] {
        assert_eq!(second[m][&T].difference(&first[m][&T]).count(), 0);
    }
}

#[test]
fn range_gives_contiguous_ranges() {
    let mut subs = BTreeMap::new();
    for m in ["a", "b"] {
        subs.insert(m.to_string(), BTreeSet::from([T]));
    }
    let out = assign_range(&subs, &BTreeMap::from([(T, 5)]));
    assert_eq!(out["a"][&T], BTreeSet::from([0, 1, 2]));
    assert_eq!(out["b"][&T], BTreeSet::from([3, 4]));
}

#[test]
fn uniform_scales_to_a_large_group_joining_one_by_one() {
    // 200 members join one after another a 2000-partition topic: each join recomputes the
    // target from the previous one. Balanced within one at every step, and quick.
    let parts = BTreeMap::from([(T, 2000)]);
    let mut subs = BTreeMap::new();
    let mut target = BTreeMap::new();
    let t0 = std::time::Instant::now();
    for i in 0..200 {
        subs.insert(format!("m{i:03}"), BTreeSet::from([T]));
        let next = assign_uniform(&subs, &parts, &target);
        let counts: Vec<usize> = next
            .values()
            .map(|a| a.get(&T).map_or(0, BTreeSet::len))
            .collect();
        let (lo, hi) = (counts.iter().min(), counts.iter().max());
        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 2000);
        // Sticky: a member keeps all but what it must give up.
        for (m, a) in &target {
            let kept = a
                .get(&T)
                .map_or(0, |s: &BTreeSet<i32>| s.intersection(&next[m][&T]).count());
            assert!(kept + 1 >= next[m][&T].len().min(a.get(&T).map_or(0, BTreeSet::len)));
        }
        target = next;
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
}

/// Deterministic xorshift for the randomized test (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct SimClient {
    id: String,
    epoch: i32,
    /// What the client believes it owns (it adopts every assignment at once: revoking is
    /// instantaneous in this model).
    owned: BTreeMap<TopicId, BTreeSet<i32>>,
    alive: bool,
    last_beat: i64,
}

fn owned_list(c: &SimClient) -> Vec<(TopicId, Vec<i32>)> {
    c.owned
        .iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(id, ps)| (*id, ps.iter().copied().collect()))
        .collect()
}

fn sim_beat(co: &mut Coordinator, c: &mut SimClient, t: &Topics, now: i64, full: bool) {
    let mut req = hb(&c.id, c.epoch, Some(vec![]));
    req.owned = Some(owned_list(c));
    if c.epoch == 0 {
        req.owned = Some(vec![]);
        req.rebalance_timeout_ms = 30_000;
        req.subscribed_topic_names = Some(vec!["t".into(), "u".into()]);
    } else if full {
        req.rebalance_timeout_ms = 30_000;
        req.subscribed_topic_names = Some(vec!["t".into(), "u".into()]);
    }
    let r = co.consumer_heartbeat(req, t, now);
    c.last_beat = now;
    match r.error {
        0 => {
            c.epoch = r.member_epoch;
            if let Some(a) = r.assignment {
                c.owned = a
                    .into_iter()
                    .map(|(id, ps)| (id, ps.into_iter().collect()))
                    .collect();
            }
        }
        FENCED_MEMBER_EPOCH | UNKNOWN_MEMBER_ID => {
            // The client loses its partitions and rejoins.
            c.epoch = 0;
            c.owned.clear();
        }
        e => panic!("unexpected error {e}: {r:?}"),
    }
}

/// What each live member of the coordinator's group holds.
fn members_holdings(co: &Coordinator) -> BTreeMap<String, (i32, BTreeSet<(TopicId, i32)>)> {
    let mut out = BTreeMap::new();
    if let Some(cg) = co.groups.get("g").and_then(|g| g.consumer.as_ref()) {
        for m in cg.members.values() {
            let mut set = BTreeSet::new();
            for a in [&m.assigned, &m.pending_revocation] {
                for (id, ps) in a {
                    set.extend(ps.iter().map(|p| (*id, *p)));
                }
            }
            out.insert(m.id.clone(), (m.epoch, set));
        }
    }
    out
}

#[test]
fn randomized_joins_leaves_crashes_and_growth_keep_one_owner_and_converge() {
    for seed in 1..=40u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut co = Coordinator::new(Config::default(), "sim");
        let mut t = topics(1 + rng.below(6) as i32);
        t.insert(
            "u".into(),
            TopicInfo {
                id: [2; 16],
                partitions: 1 + rng.below(4) as i32,
                internal: false,
            },
        );
        let mut clients: Vec<SimClient> = Vec::new();
        let mut now = 0i64;
        for step in 0..300 {
            now += rng.below(3_000) as i64;
            match rng.below(20) {
                0 | 1 if clients.iter().filter(|c| c.alive).count() < 6 => {
                    let mut c = SimClient {
                        id: format!("c{step}"),
                        epoch: 0,
                        owned: BTreeMap::new(),
                        alive: true,
                        last_beat: now,
                    };
                    sim_beat(&mut co, &mut c, &t, now, false);
                    clients.push(c);
                }
                2 => {
                    // A clean leave.
                    if let Some(c) = clients.iter_mut().find(|c| c.alive && c.epoch > 0) {
                        let r = co.consumer_heartbeat(hb(&c.id, LEAVE_EPOCH, None), &t, now);
                        assert!(r.error == 0 || r.error == UNKNOWN_MEMBER_ID, "{r:?}");
                        c.alive = false;
                    }
                }
                3 => {
                    // A crash: the client stops; its session expires later.
                    let n = clients.len() as u64;
                    if let Some(c) = clients.get_mut(rng.below(n) as usize) {
                        c.alive = false;
                    }
                }
                4 => {
                    // More partitions.
                    if let Some(x) = t.get_mut("t") {
                        x.partitions += 1 + rng.below(3) as i32;
                    }
                }
                5 => {
                    now += 50_000; // past every session of members that did not beat
                    for c in clients.iter_mut().filter(|c| c.alive) {
                        sim_beat(&mut co, c, &t, now - 1, false);
                    }
                }
                _ => {
                    let n = clients.len() as u64;
                    let full = rng.below(10) == 0;
                    if let Some(c) = clients.get_mut(rng.below(n) as usize) {
                        if c.alive {
                            sim_beat(&mut co, c, &t, now, full);
                        }
                    }
                }
            }
            // Live clients whose session ran out are fenced by the timer, like in the broker.
            for c in clients.iter_mut().filter(|c| c.alive) {
                if now - c.last_beat >= 45_000 {
                    c.alive = false;
                }
            }
            co.tick(now);
            check_single_owner(&co);
            // A client believes it owns only what the coordinator has it holding.
            let held = members_holdings(&co);
            for c in clients.iter().filter(|c| c.alive && c.epoch > 0) {
                if let Some((_, set)) = held.get(&c.id) {
                    for (id, ps) in &c.owned {
                        for p in ps {
                            assert!(set.contains(&(*id, *p)), "seed {seed} step {step}: {} owns {p} the coordinator does not give it", c.id);
                        }
                    }
                }
            }
        }
        // Convergence: the live clients keep heartbeating; the group ends Stable with every
        // partition owned once and counts within one.
        let live: Vec<usize> = (0..clients.len()).filter(|i| clients[*i].alive).collect();
        // Rounds 5 s apart: members of crashed clients expire after the 45 s session.
        for round in 0..30 {
            now += 5_000;
            for i in &live {
                sim_beat(&mut co, &mut clients[*i], &t, now, round == 0);
            }
            co.tick(now);
            check_single_owner(&co);
        }
        if live.is_empty() {
            continue;
        }
        let d = co.consumer_describe("g").expect("group");
        assert_eq!(d.state, "Stable", "seed {seed}");
        let total: i32 = t.values().map(|x| x.partitions).sum();
        let mut all = BTreeSet::new();
        let mut counts = Vec::new();
        for i in &live {
            let c = &clients[*i];
            let n: usize = c.owned.values().map(BTreeSet::len).sum();
            counts.push(n);
            for (id, ps) in &c.owned {
                for p in ps {
                    assert!(all.insert((*id, *p)), "seed {seed}: two clients own {p}");
                }
            }
        }
        assert_eq!(all.len() as i32, total, "seed {seed}: {counts:?}");
        let (lo, hi) = (counts.iter().min(), counts.iter().max());
        assert!(
            hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
            "seed {seed}: {counts:?}"
        );
    }
}

#[test]
fn version_0_members_get_their_id_from_the_coordinator() {
    let mut c = Coordinator::new(Config::default(), "t");
    let t = topics(2);
    let mut x = hb("", 0, Some(vec![]));
    x.api_version = 0;
    let r = c.consumer_heartbeat(x, &t, 0);
    assert_eq!(r.error, 0);
    let id = r.member_id.expect("generated member id");
    assert!(!id.is_empty());
    assert_eq!(r.member_epoch, 1);
    // v1 requires the client's own id.
    assert_eq!(
        c.consumer_heartbeat(hb("", 0, Some(vec![])), &t, 1).error,
        INVALID_REQUEST
    );
    let r = c.consumer_heartbeat(hb(&id, 1, None), &t, 2);
    assert_eq!(r.error, 0);
}
