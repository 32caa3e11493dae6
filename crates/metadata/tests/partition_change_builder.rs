//! Table tests ported from Kafka's `metadata/src/test/java/org/apache/kafka/controller/
//! PartitionChangeBuilderTest.java` (the partition-change-record version 2 cases: ELR
//! enabled; "last known leader" balanced recovery off, as in Holdfast; reassignment and
//! directory cases left out because the builder does not support them yet).

use holdfast_metadata::controller::{Election, ElectionResult, PartitionChangeBuilder};
use holdfast_metadata::records::ElectionKind;
use holdfast_metadata::{LeaderRecovery, PartitionChange, PartitionReg, Record, TopicId};

const T: TopicId = TopicId(42);

fn part(replicas: &[i32], isr: &[i32], elr: &[i32], lk_elr: &[i32], leader: i32) -> PartitionReg {
    PartitionReg {
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
        elr: elr.to_vec(),
        last_known_elr: lk_elr.to_vec(),
        leader,
        leader_epoch: 100,
        partition_epoch: 200,
        leader_recovery: LeaderRecovery::Recovered,
        adding: vec![],
        removing: vec![],
    }
}

/// Kafka's FOO: replicas [2,1,3], ISR [2,1,3], leader 1.
fn foo() -> PartitionReg {
    part(&[2, 1, 3], &[2, 1, 3], &[], &[], 1)
}

/// Kafka's BAZ: replicas [2,1,3], ISR [1,3], leader 3.
fn baz() -> PartitionReg {
    part(&[2, 1, 3], &[1, 3], &[], &[], 3)
}

/// Kafka's OFFLINE_WITH_ELR: replicas [2,1,3], ISR [], ELR [3], last known ELR [2], no leader.
fn offline_with_elr() -> PartitionReg {
    part(&[2, 1, 3], &[], &[3], &[2], -1)
}

fn not3(r: i32) -> bool {
    r != 3
}

fn any(_: i32) -> bool {
    true
}

fn only1(r: i32) -> bool {
    r == 1
}

fn elected(
    p: &PartitionReg,
    acc: &dyn Fn(i32) -> bool,
    election: Election,
    isr: Option<&[i32]>,
) -> ElectionResult {
    let mut b = PartitionChangeBuilder::new(p, T, 0, acc, 2).election(election);
    if let Some(isr) = isr {
        b = b.target_isr(isr.to_vec());
    }
    b.elect_leader()
}

fn er(node: i32, unclean: bool) -> ElectionResult {
    ElectionResult { node, unclean }
}

fn change() -> PartitionChange {
    PartitionChange::new(T, 0, 200)
}

#[test]
fn elect_leader() {
    let f = foo();
    assert_eq!(elected(&f, &not3, Election::Preferred, None), er(2, false));
    assert_eq!(elected(&f, &not3, Election::Online, None), er(1, false));
    assert_eq!(elected(&f, &not3, Election::Unclean, None), er(1, false));
    assert_eq!(
        elected(&f, &not3, Election::Online, Some(&[1, 3])),
        er(1, false)
    );
    assert_eq!(
        elected(&f, &not3, Election::Unclean, Some(&[1, 3])),
        er(1, false)
    );
    assert_eq!(
        elected(&f, &not3, Election::Online, Some(&[3])),
        er(-1, false)
    );
    assert_eq!(
        elected(&f, &not3, Election::Unclean, Some(&[3])),
        er(2, true)
    );
    let b = baz();
    assert_eq!(elected(&b, &any, Election::Preferred, None), er(3, false));
    assert_eq!(elected(&b, &any, Election::Online, None), er(3, false));
    assert_eq!(elected(&b, &any, Election::Unclean, None), er(3, false));
}

#[test]
fn no_change_builds_nothing() {
    let f = foo();
    assert_eq!(
        PartitionChangeBuilder::new(&f, T, 0, &not3, 2).build(),
        None
    );
    assert_eq!(
        PartitionChangeBuilder::new(&f, T, 0, &not3, 2)
            .election(Election::Unclean)
            .build(),
        None
    );
    let b = baz();
    assert_eq!(
        PartitionChangeBuilder::new(&b, T, 0, &any, 2)
            .election(Election::Preferred)
            .build(),
        None
    );
}

#[test]
fn isr_change_does_not_bump_leader_epoch() {
    let f = foo();
    let built = PartitionChangeBuilder::new(&f, T, 0, &not3, 2)
        .target_isr(vec![2, 1])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![2, 1]);
    assert_eq!(built.change, want);
    let merged = f.merge(&built.change).expect("merges");
    assert_eq!((merged.leader_epoch, merged.partition_epoch), (100, 201));
}

#[test]
fn isr_change_and_leader_change() {
    let f = foo();
    let built = PartitionChangeBuilder::new(&f, T, 0, &not3, 2)
        .target_isr(vec![2, 3])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![2, 3]);
    want.leader = Some(2);
    assert_eq!(built.change, want);
    let merged = f.merge(&built.change).expect("merges");
    assert_eq!(
        (merged.leader, merged.leader_epoch, merged.partition_epoch),
        (2, 101, 201)
    );
}

#[test]
fn unclean_leader_election() {
    let f = foo();
    let built = PartitionChangeBuilder::new(&f, T, 0, &not3, 2)
        .election(Election::Unclean)
        .target_isr(vec![3])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![2]);
    want.leader = Some(2);
    want.leader_recovery = Some(LeaderRecovery::Recovering);
    want.election = ElectionKind::Unclean;
    assert_eq!(built.change, want);
    assert_eq!(
        built.unclean_election,
        Some(Record::UncleanElection {
            topic: T,
            partition: 0,
            new_leader: 2,
            old_leader_epoch: 100,
            isr_before: vec![2, 1, 3],
            elr_before: vec![],
        })
    );

    // The partition has ELR: an unclean election clears it.
    let o = offline_with_elr();
    let mut want = change();
    want.isr = Some(vec![1]);
    want.leader = Some(1);
    want.leader_recovery = Some(LeaderRecovery::Recovering);
    want.elr = Some(vec![]);
    want.last_known_elr = Some(vec![]);
    want.election = ElectionKind::Unclean;
    let built = PartitionChangeBuilder::new(&o, T, 0, &only1, 2)
        .election(Election::Unclean)
        .build();
    assert_eq!(built.map(|b| b.change), Some(want.clone()));
    let built = PartitionChangeBuilder::new(&o, T, 0, &only1, 2)
        .election(Election::Unclean)
        .target_isr(vec![2])
        .build();
    assert_eq!(built.map(|b| b.change), Some(want));
    // Without UNCLEAN, the same partition stays offline.
    assert_eq!(
        PartitionChangeBuilder::new(&o, T, 0, &only1, 2).build(),
        None
    );
}

#[test]
fn elr_isr_shrink_below_min_isr() {
    let p = part(&[1, 2, 3, 4], &[1, 2, 3, 4], &[], &[], 1);
    let built = PartitionChangeBuilder::new(&p, T, 0, &not3, 3)
        .election(Election::Preferred)
        .target_isr(vec![1, 2])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![1, 2]);
    want.elr = Some(vec![3, 4]);
    assert_eq!(built.change, want);
    let merged = p.merge(&built.change).expect("merges");
    assert_eq!(
        (merged.elr.as_slice(), merged.last_known_elr.as_slice()),
        (&[3, 4][..], &[][..])
    );
}

#[test]
fn elr_isr_expand_above_min_isr() {
    let p = part(&[1, 2, 3, 4], &[1, 2], &[3], &[4], 1);
    let built = PartitionChangeBuilder::new(&p, T, 0, &not3, 3)
        .election(Election::Preferred)
        .target_isr(vec![1, 2, 3])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![1, 2, 3]);
    want.elr = Some(vec![]);
    want.last_known_elr = Some(vec![]);
    assert_eq!(built.change, want);
}

#[test]
fn elr_isr_add_new_member_not_in_elr() {
    let p = part(&[1, 2, 3, 4], &[1], &[3], &[2], 1);
    let built = PartitionChangeBuilder::new(&p, T, 0, &not3, 3)
        .election(Election::Preferred)
        .target_isr(vec![1, 4])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![1, 4]);
    assert_eq!(built.change, want);
    let merged = p.merge(&built.change).expect("merges");
    assert_eq!((merged.elr, merged.last_known_elr), (vec![3], vec![2]));
}

#[test]
fn elr_removes_unclean_shutdown_replicas() {
    let p = part(&[1, 2, 3, 4], &[1], &[2, 3], &[], 1);
    let built = PartitionChangeBuilder::new(&p, T, 0, &not3, 3)
        .election(Election::Preferred)
        .unclean_shutdown_replicas(vec![3])
        .build()
        .expect("change");
    let mut want = change();
    want.elr = Some(vec![2]);
    want.last_known_elr = Some(vec![3]);
    assert_eq!(built.change, want);
}

#[test]
fn elr_member_can_be_elected() {
    let p = part(&[1, 2, 3, 4], &[1], &[3], &[2], 1);
    let not1 = |r: i32| r != 1;
    let built = PartitionChangeBuilder::new(&p, T, 0, &not1, 3)
        .election(Election::Preferred)
        .target_isr(vec![])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![3]);
    want.elr = Some(vec![1]);
    want.leader = Some(3);
    want.election = ElectionKind::Elr;
    assert_eq!(built.change, want);
    let merged = p.merge(&built.change).expect("merges");
    assert_eq!(
        (merged.isr, merged.elr, merged.last_known_elr),
        (vec![3], vec![1], vec![2])
    );
}

#[test]
fn elr_isr_can_shrink_to_zero() {
    let p = part(&[1, 2, 3, 4], &[1, 2, 3, 4], &[], &[], 1);
    let none = |_: i32| false;
    let built = PartitionChangeBuilder::new(&p, T, 0, &none, 3)
        .election(Election::Preferred)
        .target_isr(vec![])
        .build()
        .expect("change");
    let mut want = change();
    want.isr = Some(vec![]);
    want.leader = Some(-1);
    want.elr = Some(vec![1, 2, 3, 4]);
    assert_eq!(built.change, want);
    let merged = p.merge(&built.change).expect("merges");
    assert_eq!((merged.leader, merged.leader_epoch), (-1, 101));
}

#[test]
fn elr_without_acceptable_member_changes_nothing() {
    // Kafka's testEligibleLeaderReplicas_ElectLastKnownLeaderShouldFail (balanced recovery
    // is off in Holdfast, so the last known leader is never elected).
    let p = part(&[1, 2, 3, 4], &[], &[3], &[1], -1);
    assert_eq!(
        PartitionChangeBuilder::new(&p, T, 0, &not3, 3)
            .election(Election::Preferred)
            .target_isr(vec![])
            .build(),
        None
    );
    let p = part(&[1, 2, 3, 4], &[], &[], &[1], -1);
    assert_eq!(
        PartitionChangeBuilder::new(&p, T, 0, &any, 3)
            .election(Election::Preferred)
            .target_isr(vec![])
            .build(),
        None,
        "the last known leader alone is not elected without UNCLEAN"
    );
}

#[test]
fn recovering_leader_reports_recovered() {
    let mut p = part(&[1, 2, 3], &[1], &[], &[], 1);
    p.leader_recovery = LeaderRecovery::Recovering;
    let built = PartitionChangeBuilder::new(&p, T, 0, &any, 2)
        .target_leader_recovery(LeaderRecovery::Recovered)
        .build()
        .expect("change");
    let mut want = change();
    want.leader_recovery = Some(LeaderRecovery::Recovered);
    assert_eq!(built.change, want);
}

#[test]
fn merge_refuses_changes_breaking_invariants() {
    let f = foo();
    let mut c = change();
    c.leader = Some(4);
    assert!(f.merge(&c).is_err(), "leader outside the ISR");
    let mut c = change();
    c.isr = Some(vec![2, 5]);
    assert!(f.merge(&c).is_err(), "ISR outside the replicas");
    let mut c = change();
    c.elr = Some(vec![2]);
    assert!(f.merge(&c).is_err(), "ELR intersecting the ISR");
    let mut c = change();
    c.isr = Some(vec![2, 2]);
    assert!(f.merge(&c).is_err(), "duplicate ISR member");
}
