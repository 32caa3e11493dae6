use super::*;

fn req(group: &str, member: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: vec![
            Protocol {
                name: "range".into(),
                metadata: vec![1],
            },
            Protocol {
                name: "roundrobin".into(),
                metadata: vec![2],
            },
        ],
        require_known_member_id: true,
    }
}

fn join_id(c: &mut Coordinator, group: &str, now: i64) -> String {
    match c.join(req(group, ""), now) {
        Outcome::Now(r) => {
            assert_eq!(r.error, MEMBER_ID_REQUIRED);
            r.member_id
        }
        Outcome::Wait(_) => panic!("expected MEMBER_ID_REQUIRED"),
    }
}

fn wait(o: Outcome<JoinResponse>) -> Ticket {
    match o {
        Outcome::Wait(t) => t,
        Outcome::Now(r) => panic!("expected to wait, got {r:?}"),
    }
}

fn joins(c: &mut Coordinator) -> Vec<(Ticket, JoinResponse)> {
    c.take_completions()
        .into_iter()
        .filter_map(|x| match x {
            Completion::Join(t, r) => Some((t, r)),
            _ => None,
        })
        .collect()
}

#[test]
fn single_member_two_step_join_sync_heartbeat() {
    let mut c = Coordinator::new(Config::default(), "t");
    let id = join_id(&mut c, "g", 0);
    let t = wait(c.join(req("g", &id), 1));
    assert!(c.take_completions().is_empty());
    // The initial delay is a quiet window: nothing before it ends.
    c.tick(50);
    assert!(c.take_completions().is_empty());
    assert_eq!(c.next_deadline(), Some(101));
    c.tick(101);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].0, t);
    let r = &j[0].1;
    assert_eq!(r.error, NONE);
    assert_eq!(r.generation, 1);
    assert_eq!(r.leader, id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    match c.sync(
        "g",
        1,
        &id,
        None,
        None,
        None,
        vec![(id.clone(), vec![9])],
        102,
    ) {
        Outcome::Wait(_) => {}
        o => panic!("{o:?}"),
    }
    let done = c.take_completions();
    assert!(matches!(&done[0], Completion::Sync(_, s) if s.assignment == vec![9]));
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    assert_eq!(c.heartbeat("g", 1, &id, None, 103), NONE);
    assert_eq!(c.heartbeat("g", 0, &id, None, 103), ILLEGAL_GENERATION);
    assert_eq!(c.heartbeat("g", 1, "nope", None, 103), UNKNOWN_MEMBER_ID);
    // Group metadata was queued for persistence.
    assert!(!c.take_writes().is_empty());
}

#[test]
fn second_member_triggers_rebalance_and_session_expiry_removes() {
    let mut c = Coordinator::new(Config::default(), "t");
    let a = join_id(&mut c, "g", 0);
    wait(c.join(req("g", &a), 0));
    c.tick(100);
    joins(&mut c);
    c.sync("g", 1, &a, None, None, None, vec![], 100);
    c.take_completions();
    let b = join_id(&mut c, "g", 200);
    let tb = wait(c.join(req("g", &b), 200));
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(c.heartbeat("g", 1, &a, None, 300), REBALANCE_IN_PROGRESS);
    let ta = wait(c.join(req("g", &a), 400));
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    assert!(j.iter().all(|(_, r)| r.generation == 2 && r.error == NONE));
    let leader = j.iter().find(|(t, _)| *t == ta).map(|x| &x.1);
    assert_eq!(leader.map(|r| r.members.len()), Some(2));
    assert!(j
        .iter()
        .any(|(t, r)| *t == tb && r.members.is_empty() && r.leader == a));
    // b syncs, the leader syncs: both get their assignment.
    assert!(matches!(
        c.sync("g", 2, &b, None, None, None, vec![], 500),
        Outcome::Wait(_)
    ));
    c.sync(
        "g",
        2,
        &a,
        None,
        None,
        None,
        vec![(a.clone(), vec![1]), (b.clone(), vec![2])],
        500,
    );
    assert_eq!(c.take_completions().len(), 2);
    // b stops heartbeating: expelled at its session deadline; a must rejoin.
    assert_eq!(c.heartbeat("g", 2, &a, None, 9_000), NONE);
    c.tick(10_500);
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(c.heartbeat("g", 2, &b, None, 10_600), UNKNOWN_MEMBER_ID);
    wait(c.join(req("g", &a), 10_700));
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.generation, 3);
}

#[test]
fn leave_and_unknown_member_and_max_size() {
    let cfg = Config {
        max_group_size: 1,
        ..Config::default()
    };
    let mut c = Coordinator::new(cfg, "t");
    let a = join_id(&mut c, "g", 0);
    wait(c.join(req("g", &a), 0));
    match c.join(req("g", ""), 1) {
        Outcome::Now(r) => assert_eq!(r.error, GROUP_MAX_SIZE_REACHED),
        o => panic!("{o:?}"),
    }
    match c.join(req("g", "ghost"), 1) {
        Outcome::Now(r) => assert_eq!(r.error, UNKNOWN_MEMBER_ID),
        o => panic!("{o:?}"),
    }
    let (top, per) = c.leave("g", &[(a.clone(), None), ("x".into(), None)], 2);
    assert_eq!(top, NONE);
    assert_eq!(per, vec![NONE, UNKNOWN_MEMBER_ID]);
    // The waiting join is answered, and the group is empty again.
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.error, UNKNOWN_MEMBER_ID);
    assert_eq!(c.group_state("g"), Some(GroupState::Empty));
}

#[test]
fn static_member_rejoins_without_rebalance() {
    let mut c = Coordinator::new(Config::default(), "t");
    let mut ra = req("g", "");
    ra.instance_id = Some("ia".into());
    let mut rb = req("g", "");
    rb.instance_id = Some("ib".into());
    wait(c.join(ra.clone(), 0));
    wait(c.join(rb.clone(), 10));
    c.tick(200);
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    let leader = j[0].1.leader.clone();
    let ids: Vec<String> = j.iter().map(|x| x.1.member_id.clone()).collect();
    let follower = ids
        .iter()
        .find(|i| **i != leader)
        .cloned()
        .unwrap_or_default();
    for id in &ids {
        let a = if *id == leader {
            ids.iter()
                .map(|i| (i.clone(), i.as_bytes().to_vec()))
                .collect()
        } else {
            vec![]
        };
        c.sync("g", 1, id, None, None, None, a, 300);
    }
    c.take_completions();
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    // The follower's process restarts: same instance id, empty member id.
    let instance = if follower == j[0].1.member_id {
        "ia"
    } else {
        "ib"
    };
    let mut again = req("g", "");
    again.instance_id = Some(instance.into());
    let r = match c.join(again, 1_000) {
        Outcome::Now(r) => r,
        o => panic!("{o:?}"),
    };
    assert_eq!(r.error, NONE);
    assert_eq!(r.generation, 1);
    assert_ne!(r.member_id, follower);
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    // The old incarnation is fenced.
    assert_eq!(
        c.heartbeat("g", 1, &follower, Some(instance), 1_001),
        FENCED_INSTANCE_ID
    );
    match c.sync(
        "g",
        1,
        &r.member_id,
        Some(instance),
        None,
        None,
        vec![],
        1_002,
    ) {
        Outcome::Now(s) => assert_eq!(s.assignment, follower.as_bytes().to_vec()),
        o => panic!("{o:?}"),
    }
}

#[test]
fn commits_generation_checks_and_reload() {
    let mut c = Coordinator::new(Config::default(), "t");
    assert_eq!(
        c.check_commit("simple", -1, "", None, 8, 0),
        CommitCheck::Ok
    );
    let v = OffsetValue {
        offset: 5,
        leader_epoch: 0,
        metadata: "m".into(),
        commit_timestamp: 0,
    };
    c.apply_commit("simple", vec![("t".into(), 0, v.clone())]);
    assert_eq!(
        c.fetch_offsets("simple", Some(&[("t".into(), 0), ("t".into(), 1)])),
        vec![("t".into(), 0, Some(v.clone())), ("t".into(), 1, None)]
    );
    let a = join_id(&mut c, "g", 0);
    wait(c.join(req("g", &a), 0));
    c.tick(100);
    joins(&mut c);
    assert_eq!(
        c.check_commit("g", 1, &a, None, 8, 101),
        CommitCheck::Error(REBALANCE_IN_PROGRESS)
    );
    c.sync("g", 1, &a, None, None, None, vec![], 102);
    assert_eq!(c.check_commit("g", 1, &a, None, 8, 103), CommitCheck::Ok);
    assert_eq!(
        c.check_commit("g", 0, &a, None, 8, 103),
        CommitCheck::Error(ILLEGAL_GENERATION)
    );
    assert_eq!(
        c.check_commit("g", -1, "", None, 8, 103),
        CommitCheck::Error(UNKNOWN_MEMBER_ID)
    );
    assert_eq!(c.delete_group("g"), NON_EMPTY_GROUP);
    // Reload from the records: the offsets and the stable group come back.
    let mut d = Coordinator::new(Config::default(), "u");
    d.load_record(
        &records::offset_key("simple", "t", 0),
        Some(&records::offset_value(&v)),
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for w in c.take_writes() {
        d.load_record(&w.key, w.value.as_deref(), 200)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(d.fetch_offsets("simple", None).len(), 1);
    assert_eq!(d.group_state("g"), Some(GroupState::Stable));
    assert_eq!(d.heartbeat("g", 1, &a, None, 300), NONE);
}

#[test]
fn retention_expires_empty_group_offsets() {
    let cfg = Config {
        offsets_retention_ms: 1_000,
        ..Config::default()
    };
    let mut c = Coordinator::new(cfg, "t");
    assert_eq!(c.check_commit("s", -1, "", None, 8, 0), CommitCheck::Ok);
    let v = OffsetValue {
        offset: 1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp: 0,
    };
    c.apply_commit("s", vec![("t".into(), 0, v)]);
    c.expire_offsets(500);
    assert_eq!(c.fetch_offsets("s", None).len(), 1);
    c.expire_offsets(1_000);
    assert!(c.fetch_offsets("s", None).is_empty());
    let w = c.take_writes();
    assert!(w.iter().any(|w| w.value.is_none()));
    assert_eq!(c.group_count(), 0);
}

#[test]
fn protocol_selection_and_inconsistent_protocol() {
    let mut c = Coordinator::new(Config::default(), "t");
    let a = join_id(&mut c, "g", 0);
    wait(c.join(req("g", &a), 0));
    let b = join_id(&mut c, "g", 1);
    let mut rb = req("g", &b);
    rb.protocols.reverse();
    wait(c.join(rb, 1));
    let mut bad = req("g", "");
    bad.protocols = vec![Protocol {
        name: "other".into(),
        metadata: vec![],
    }];
    match c.join(bad, 2) {
        Outcome::Now(r) => assert_eq!(r.error, INCONSISTENT_GROUP_PROTOCOL),
        o => panic!("{o:?}"),
    }
    c.tick(1_000);
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    // One vote each: the tie goes to the first member's preference.
    assert!(j.iter().all(|(_, r)| r.protocol_name.is_some()));
}

#[test]
fn leader_that_never_syncs_is_removed_and_the_other_member_rebalances() {
    let mut c = Coordinator::new(Config::default(), "t");
    let a = join_id(&mut c, "g", 0);
    wait(c.join(req("g", &a), 0));
    let b = join_id(&mut c, "g", 1);
    wait(c.join(req("g", &b), 1));
    c.tick(200);
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    let leader = j[0].1.leader.clone();
    let other = if leader == a { b.clone() } else { a.clone() };
    let ts = match c.sync("g", 1, &other, None, None, None, vec![], 300) {
        Outcome::Wait(t) => t,
        o => panic!("{o:?}"),
    };
    // Stale generation and unknown members get their errors without touching the group.
    assert!(matches!(
        c.sync("g", 0, &other, None, None, None, vec![], 301),
        Outcome::Now(SyncResponse {
            error: ILLEGAL_GENERATION,
            ..
        })
    ));
    assert!(matches!(
        c.sync("g", 1, "ghost", None, None, None, vec![], 301),
        Outcome::Now(SyncResponse {
            error: UNKNOWN_MEMBER_ID,
            ..
        })
    ));
    assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));
    // The leader neither syncs nor heartbeats: its session (10 s) ends first.
    assert_eq!(c.next_deadline(), Some(200 + 10_000));
    c.tick(200 + 10_000);
    let done = c.take_completions();
    assert!(done.iter().any(
        |x| matches!(x, Completion::Sync(t, s) if *t == ts && s.error == REBALANCE_IN_PROGRESS)
    ));
    assert_eq!(
        c.heartbeat("g", 1, &leader, None, 30_300),
        UNKNOWN_MEMBER_ID
    );
    wait(c.join(req("g", &other), 30_400));
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.generation, 2);
    assert_eq!(j[0].1.leader, other);
}

#[test]
fn pending_member_that_never_rejoins_expires() {
    let mut c = Coordinator::new(Config::default(), "t");
    let a = join_id(&mut c, "g", 0);
    assert_eq!(c.next_deadline(), Some(10_000));
    c.tick(10_000);
    match c.join(req("g", &a), 10_001) {
        Outcome::Now(r) => assert_eq!(r.error, UNKNOWN_MEMBER_ID),
        o => panic!("{o:?}"),
    }
    // Session timeouts outside the broker's bounds are refused.
    let mut r = req("g", "");
    r.session_timeout_ms = 10;
    match c.join(r, 10_002) {
        Outcome::Now(r) => assert_eq!(r.error, INVALID_SESSION_TIMEOUT),
        o => panic!("{o:?}"),
    }
}

#[test]
fn initial_delay_window_restarts_per_member_and_is_capped() {
    let cfg = Config {
        initial_rebalance_delay_ms: 1_000,
        ..Config::default()
    };
    let mut c = Coordinator::new(cfg, "t");
    let mut ids = Vec::new();
    for i in 0..5 {
        let now = i * 500;
        let id = join_id(&mut c, "g", now);
        wait(c.join(req("g", &id), now));
        ids.push(id);
    }
    // Last join at 2000: window ends at 3000.
    c.tick(2_999);
    assert!(c.take_completions().is_empty());
    c.tick(3_000);
    let j = joins(&mut c);
    assert_eq!(j.len(), 5);
    assert!(j.iter().all(|(_, r)| r.generation == 1));
}

#[test]
fn offset_delete_refuses_only_subscribed_topics_of_a_group_with_members() {
    let mut c = Coordinator::new(Config::default(), "t");
    // A consumer-protocol subscription v0 to topic "a".
    let sub = {
        let mut v = vec![0, 0, 0, 0, 0, 1, 0, 1];
        v.extend_from_slice(b"a");
        v.extend_from_slice(&[0, 0, 0, 0]);
        v
    };
    let mut r = req("g", "");
    r.require_known_member_id = false;
    r.protocols = vec![Protocol {
        name: "range".into(),
        metadata: sub,
    }];
    let t = wait(c.join(r, 0));
    c.tick(1_000);
    let joined = joins(&mut c);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].0, t);
    let ov = OffsetValue {
        offset: 1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp: 0,
    };
    c.apply_commit("g", vec![("a".into(), 0, ov.clone()), ("b".into(), 0, ov)]);
    let codes = c
        .delete_offsets("g", &[("a".into(), 0), ("b".into(), 0)])
        .expect("group exists");
    assert_eq!(codes, vec![GROUP_SUBSCRIBED_TO_TOPIC, NONE]);
    assert_eq!(c.fetch_offsets("g", None).len(), 1);
    // Another protocol type with members: the whole request is refused.
    let mut r = req("h", "");
    r.require_known_member_id = false;
    r.protocol_type = "connect".into();
    wait(c.join(r, 0));
    c.tick(1_000);
    assert_eq!(
        c.delete_offsets("h", &[("a".into(), 0)]),
        Err(NON_EMPTY_GROUP)
    );
}

#[test]
fn unload_groups_answers_waiting_joins_not_coordinator() {
    let mut c = Coordinator::new(Config::default(), "t");
    let a = join_id(&mut c, "moved", 0);
    let t = wait(c.join(req("moved", &a), 1));
    let b = join_id(&mut c, "kept", 0);
    let _ = wait(c.join(req("kept", &b), 1));
    let _ = c.take_writes();
    assert_eq!(c.unload_groups(|g| g == "moved"), 1);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].0, t);
    assert_eq!(j[0].1.error, codes::NOT_COORDINATOR);
    assert!(c.describe("moved").is_none());
    assert!(c.describe("kept").is_some());
    assert_eq!(c.group_count(), 1);
}
