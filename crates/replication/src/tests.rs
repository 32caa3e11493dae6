//! Table and scenario tests, one per Kafka rule; several are ports of
//! `core/src/test/scala/unit/kafka/cluster/PartitionTest.scala` cases (named in each test).

use crate::*;

const L: BrokerId = 1;
const F1: BrokerId = 2;
const F2: BrokerId = 3;
const LAG_MS: i64 = 30_000;

fn reg(
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: &[BrokerId],
    isr: &[BrokerId],
) -> LeaderRegistration {
    LeaderRegistration {
        leader_epoch,
        partition_epoch,
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
    }
}

fn cfg(min_isr: usize) -> LeaderConfig {
    LeaderConfig {
        min_insync_replicas: min_isr,
        replica_lag_time_max_ms: LAG_MS,
    }
}

fn broker_epoch(id: BrokerId) -> i64 {
    1000 + id as i64
}

/// A leader over a log of `log_end` offsets, all durable, persisted HW 0, every follower broker
/// alive with its registered epoch.
fn leader(
    replicas: &[BrokerId],
    isr: &[BrokerId],
    min_isr: usize,
    log_end: i64,
    now_ms: i64,
) -> LeaderState {
    let mut s = LeaderState::new(
        L,
        broker_epoch(L),
        &reg(5, 1, replicas, isr),
        cfg(min_isr),
        LocalLogView {
            log_end,
            durable_end: log_end,
            high_watermark: 0,
        },
        now_ms,
    )
    .expect("valid registration");
    for r in replicas.iter().filter(|r| **r != L) {
        s.update_broker(*r, BrokerStatus::alive(broker_epoch(*r)), now_ms);
    }
    s
}

fn fetch_req(id: BrokerId, offset: i64) -> FollowerFetch {
    FollowerFetch {
        replica_id: id,
        broker_epoch: broker_epoch(id),
        current_leader_epoch: Some(5),
        fetch_offset: offset,
        log_start: 0,
    }
}

fn fetch(
    s: &mut LeaderState,
    id: BrokerId,
    offset: i64,
    leader_log_end: i64,
    now_ms: i64,
) -> FetchOutcome {
    s.on_follower_fetch(fetch_req(id, offset), leader_log_end, now_ms)
        .expect("fetch accepted")
}

fn ok(
    s: &LeaderState,
    isr: &[BrokerId],
    partition_epoch: i32,
) -> Result<AlterPartitionOk, AlterPartitionError> {
    Ok(AlterPartitionOk {
        leader_epoch: s.leader_epoch(),
        partition_epoch,
        isr: isr.to_vec(),
    })
}

fn set(ids: &[BrokerId]) -> std::collections::BTreeSet<BrokerId> {
    ids.iter().copied().collect()
}

#[test]
fn effective_min_isr_is_capped_by_replication_factor() {
    // Partition.effectiveMinIsr.
    for (replicas, min_isr, want) in [
        (&[L][..], 2, 1),
        (&[L, F1][..], 3, 2),
        (&[L, F1, F2][..], 2, 2),
        (&[L, F1, F2][..], 1, 1),
    ] {
        let s = leader(replicas, replicas, min_isr, 0, 0);
        assert_eq!(s.effective_min_isr(), want, "{replicas:?} min {min_isr}");
    }
}

#[test]
fn high_watermark_starts_from_persisted_value_not_log_end() {
    // testUseCheckpointToInitializeHighWatermark; design §2.3 (never HW = LEO for RF > 1).
    let s = LeaderState::new(
        L,
        1,
        &reg(5, 1, &[L, F1], &[L, F1]),
        cfg(1),
        LocalLogView {
            log_end: 20,
            durable_end: 20,
            high_watermark: 7,
        },
        0,
    )
    .expect("valid");
    assert_eq!(s.high_watermark(), 7);
    // A persisted HW past the durable end is clamped to it.
    let s = LeaderState::new(
        L,
        1,
        &reg(5, 1, &[L], &[L]),
        cfg(1),
        LocalLogView {
            log_end: 20,
            durable_end: 12,
            high_watermark: 15,
        },
        0,
    )
    .expect("valid");
    assert_eq!(s.high_watermark(), 12);
}

#[test]
fn single_replica_hw_follows_durable_end_not_log_end() {
    let mut s = leader(&[L], &[L], 1, 0, 0);
    assert_eq!(s.on_local_append(10, 1), None);
    assert_eq!(s.high_watermark(), 0);
    assert_eq!(s.on_local_durable(6, 2), Some(6));
    assert_eq!(s.on_local_durable(10, 3), Some(10));
    assert_eq!(s.on_local_durable(10, 4), None);
}

#[test]
fn hw_is_min_of_leader_durable_end_and_isr_log_ends() {
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 2, 10, 0);
    assert_eq!(
        fetch(&mut s, F1, 10, 10, 1).high_watermark,
        None,
        "F2 unknown holds HW"
    );
    assert_eq!(fetch(&mut s, F2, 4, 10, 1).high_watermark, Some(4));
    assert_eq!(fetch(&mut s, F2, 10, 10, 2).high_watermark, Some(10));
    s.on_local_append(15, 3);
    assert_eq!(s.on_local_durable(15, 3), None);
    fetch(&mut s, F1, 15, 15, 4);
    assert_eq!(fetch(&mut s, F2, 15, 15, 4).high_watermark, Some(15));
}

#[test]
fn hw_does_not_count_leader_log_end_beyond_durable() {
    let mut s = LeaderState::new(
        L,
        1,
        &reg(5, 1, &[L, F1], &[L, F1]),
        cfg(2),
        LocalLogView {
            log_end: 10,
            durable_end: 4,
            high_watermark: 0,
        },
        0,
    )
    .expect("valid");
    s.update_broker(F1, BrokerStatus::alive(broker_epoch(F1)), 0);
    assert_eq!(fetch(&mut s, F1, 10, 10, 1).high_watermark, Some(4));
    assert_eq!(s.on_local_durable(10, 2), Some(10));
}

#[test]
fn hw_does_not_advance_under_min_isr_even_with_larger_maximal_isr() {
    // testHighWatermarkAdvanceShouldNotAdvanceWhenUnderMinISR (KIP-966).
    let mut s = leader(&[L, F1, F2], &[L, F1], 3, 10, 0);
    assert!(s.is_under_min_isr());
    assert_eq!(s.high_watermark(), 0);
    fetch(&mut s, F1, 10, 10, 1);
    assert_eq!(s.high_watermark(), 0);
    let out = fetch(&mut s, F2, 10, 10, 1);
    assert_eq!(s.high_watermark(), 0, "maximal ISR of 3 is not enough");
    assert_eq!(s.maximal_isr().len(), 3);
    let alter = out.alter_isr.expect("expansion proposed");
    assert_eq!(alter.isr_ids(), vec![L, F1, F2]);
    assert_eq!(
        s.on_alter_partition_response(alter.request_id, ok(&s, &[L, F1, F2], 2), 2),
        AlterOutcome::Committed {
            high_watermark: Some(10)
        }
    );
    assert!(!s.is_under_min_isr());
}

#[test]
fn last_caught_up_time_rules() {
    // Replica.updateFetchStateOrThrow, table over (fetch offset vs leader LEO now / at previous fetch).
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 5, 10, 100); // behind; last_fetch_leader_log_end was -1 → caught up at last fetch (0)
    assert_eq!(s.follower(F1).map(|f| f.last_caught_up_ms), Some(0));
    s.on_local_append(15, 150);
    fetch(&mut s, F1, 10, 15, 200); // reached the LEO of the previous fetch (10) → previous fetch time
    assert_eq!(s.follower(F1).map(|f| f.last_caught_up_ms), Some(100));
    fetch(&mut s, F1, 12, 15, 300); // below previous leader LEO (15) → unchanged
    assert_eq!(s.follower(F1).map(|f| f.last_caught_up_ms), Some(100));
    fetch(&mut s, F1, 15, 15, 400); // at the LEO now → now
    let f = *s.follower(F1).expect("follower");
    assert_eq!(f.last_caught_up_ms, 400);
    assert_eq!(
        (f.log_end, f.last_fetch_ms, f.last_fetch_leader_log_end),
        (15, 400, 15)
    );
}

#[test]
fn should_not_shrink_isr_if_previous_fetch_is_caught_up() {
    // testShouldNotShrinkIsrIfPreviousFetchIsCaughtUp.
    let t0 = 1_000;
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, t0);
    let t1 = t0 + 5_000;
    fetch(&mut s, F1, 5, 10, t1);
    assert_eq!(s.follower(F1).map(|f| f.last_caught_up_ms), Some(t0));
    assert_eq!(s.high_watermark(), 5);
    let t2 = t1 + 5_001;
    s.on_local_append(15, t2);
    fetch(&mut s, F1, 10, 15, t2);
    assert_eq!(s.follower(F1).map(|f| f.last_caught_up_ms), Some(t1));
    assert_eq!(s.high_watermark(), 10);
    assert_eq!(s.maybe_shrink_isr(t1 + LAG_MS, 15), None);
}

#[test]
fn should_not_shrink_isr_if_follower_caught_up_to_log_end() {
    // testShouldNotShrinkIsrIfFollowerCaughtUpToLogEnd.
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    assert_eq!(s.maybe_shrink_isr(LAG_MS + 1, 10), None);
}

#[test]
fn shrink_keeps_removed_follower_in_maximal_isr_until_committed() {
    // testMaybeShrinkIsr / testRetryShrinkIsr / KIP-497.
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 1);
    fetch(&mut s, F2, 3, 10, 1);
    assert_eq!(s.high_watermark(), 3);
    assert_eq!(
        s.maybe_shrink_isr(LAG_MS, 10),
        None,
        "not lagging long enough"
    );
    let alter = s.maybe_shrink_isr(LAG_MS + 1, 10).expect("shrink proposed");
    assert_eq!(alter.isr_ids(), vec![L, F1]);
    assert_eq!(s.maximal_isr(), set(&[L, F1, F2]));
    assert_eq!(s.committed_isr(), &set(&[L, F1, F2]));
    assert_eq!(
        s.on_local_durable(10, LAG_MS + 2),
        None,
        "F2 still holds the HW"
    );
    // A retriable failure resends with a new id; the old id is then ignored.
    let resend = match s.on_alter_partition_response(
        alter.request_id,
        Err(AlterPartitionError::Retriable(7)),
        LAG_MS + 3,
    ) {
        AlterOutcome::Resend(r) => r,
        other => panic!("expected resend, got {other:?}"),
    };
    assert_ne!(resend.request_id, alter.request_id);
    assert_eq!(resend.isr_ids(), alter.isr_ids());
    assert_eq!(
        s.on_alter_partition_response(alter.request_id, ok(&s, &[L, F1], 2), LAG_MS + 4),
        AlterOutcome::Ignored
    );
    assert_eq!(
        s.on_alter_partition_response(resend.request_id, ok(&s, &[L, F1], 2), LAG_MS + 4),
        AlterOutcome::Committed {
            high_watermark: Some(10)
        }
    );
    assert_eq!(s.partition_epoch(), 2);
    assert_eq!(s.maximal_isr(), set(&[L, F1]));
}

#[test]
fn follower_does_not_join_isr_until_caught_up_within_current_leader_epoch() {
    // testFollowerDoesNotJoinISRUntilCaughtUpToOffsetWithinCurrentLeaderEpoch.
    let mut s = leader(&[L, F1, F2], &[L, F2], 1, 5, 0);
    fetch(&mut s, F2, 2, 5, 1);
    assert_eq!(s.high_watermark(), 2);
    // Re-elected with a new leader epoch at log end 5.
    let applied = s
        .become_leader(&reg(7, 1, &[L, F1, F2], &[L, F2]), 5, 2)
        .expect("valid");
    assert!(matches!(
        applied,
        BecomeLeader::Applied {
            new_leader_epoch: true,
            ..
        }
    ));
    assert_eq!(s.leader_epoch_start_offset(), 5);
    s.on_local_append(7, 3);
    s.on_local_durable(7, 3);
    let f1 = |o| FollowerFetch {
        current_leader_epoch: Some(7),
        ..fetch_req(F1, o)
    };
    assert_eq!(
        s.on_follower_fetch(f1(0), 7, 4).map(|o| o.alter_isr),
        Ok(None)
    );
    assert_eq!(
        s.on_follower_fetch(f1(2), 7, 4).map(|o| o.alter_isr),
        Ok(None)
    );
    assert_eq!(s.committed_isr(), &set(&[L, F2]));
    let out = s.on_follower_fetch(f1(5), 7, 5).expect("accepted");
    assert_eq!(out.alter_isr.map(|a| a.isr_ids()), Some(vec![L, F1, F2]));
    assert_eq!(
        s.committed_isr(),
        &set(&[L, F2]),
        "expansion does not change the committed ISR"
    );
    assert_eq!(s.maximal_isr(), set(&[L, F1, F2]));
}

#[test]
fn expansion_requires_log_end_at_or_past_hw() {
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    assert_eq!(s.high_watermark(), 10);
    // F2 is not caught up (last_caught_up 0 and now > lag), so it does not hold the HW either.
    let now = LAG_MS + 1;
    assert_eq!(fetch(&mut s, F2, 9, 10, now).alter_isr, None);
    assert!(fetch(&mut s, F2, 10, 10, now).alter_isr.is_some());
}

#[test]
fn isr_eligibility_table() {
    // isReplicaIsrEligible: testIsrNotExpandedIfReplicaIsFencedOrShutdown,
    // testIsrCanExpandedIfBrokerEpochsMatchWithKraftMetadataCache, controlled shutdown.
    let alive = BrokerStatus::alive(broker_epoch(F1));
    let cases = [
        ("alive, epoch matches", alive, broker_epoch(F1), true),
        ("fetch epoch -1 bypasses the check", alive, -1, true),
        (
            "fenced",
            BrokerStatus {
                fenced: true,
                ..alive
            },
            broker_epoch(F1),
            false,
        ),
        (
            "controlled shutdown",
            BrokerStatus {
                in_controlled_shutdown: true,
                ..alive
            },
            broker_epoch(F1),
            false,
        ),
        (
            "not registered",
            BrokerStatus::default(),
            broker_epoch(F1),
            false,
        ),
        (
            "fetch from a newer incarnation",
            alive,
            broker_epoch(F1) + 1,
            false,
        ),
    ];
    for (name, status, fetch_epoch, expands) in cases {
        let mut s = leader(&[L, F1], &[L], 1, 10, 0);
        s.update_broker(F1, status, 0);
        let out = s
            .on_follower_fetch(
                FollowerFetch {
                    broker_epoch: fetch_epoch,
                    ..fetch_req(F1, 10)
                },
                10,
                1,
            )
            .expect(name);
        assert_eq!(out.alter_isr.is_some(), expands, "{name}");
    }
}

#[test]
fn stale_broker_epoch_fetch_is_fenced() {
    // testFenceFollowerFetchWithStaleBrokerEpoch.
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, 0);
    let err = s
        .on_follower_fetch(
            FollowerFetch {
                broker_epoch: broker_epoch(F1) - 1,
                ..fetch_req(F1, 10)
            },
            10,
            1,
        )
        .expect_err("stale");
    assert_eq!(err.code(), codes::NOT_LEADER_OR_FOLLOWER);
    assert_eq!(
        s.follower(F1).map(|f| f.log_end),
        Some(-1),
        "state not updated"
    );
}

#[test]
fn fetch_error_mapping() {
    // Partition.fetchRecords / localLogWithEpochOrThrow / followerReplicaOrThrow.
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, 0);
    let cases = [
        (
            "unknown replica with epoch",
            fetch_req(9, 0),
            codes::UNKNOWN_LEADER_EPOCH,
        ),
        (
            "unknown replica without epoch",
            FollowerFetch {
                current_leader_epoch: None,
                ..fetch_req(9, 0)
            },
            codes::NOT_LEADER_OR_FOLLOWER,
        ),
        (
            "the leader itself",
            fetch_req(L, 0),
            codes::UNKNOWN_LEADER_EPOCH,
        ),
        (
            "older leader epoch",
            FollowerFetch {
                current_leader_epoch: Some(4),
                ..fetch_req(F1, 0)
            },
            codes::FENCED_LEADER_EPOCH,
        ),
        (
            "newer leader epoch",
            FollowerFetch {
                current_leader_epoch: Some(6),
                ..fetch_req(F1, 0)
            },
            codes::UNKNOWN_LEADER_EPOCH,
        ),
        (
            "past the leader's log end",
            fetch_req(F1, 11),
            codes::OFFSET_OUT_OF_RANGE,
        ),
    ];
    for (name, req, code) in cases {
        assert_eq!(
            s.on_follower_fetch(req, 10, 1).map_err(|e| e.code()),
            Err(code),
            "{name}"
        );
    }
    assert!(s
        .on_follower_fetch(
            FollowerFetch {
                current_leader_epoch: None,
                ..fetch_req(F1, 10)
            },
            10,
            1
        )
        .is_ok());
}

#[test]
fn caught_up_eligible_non_isr_follower_holds_hw_until_fenced() {
    // maybeIncrementLeaderHW's shouldWaitForReplicaToJoinIsr and
    // testHighWatermarkIncreasesWithFencedOrShutdownFollower.
    // F2 is outside the ISR, below the epoch start offset (10) so not expandable, but caught
    // up by time (last caught up 0, now 0) and eligible: it holds the HW.
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    assert_eq!(fetch(&mut s, F2, 4, 10, 0).alter_isr, None);
    fetch(&mut s, F1, 10, 10, 0);
    assert_eq!(s.high_watermark(), 4);
    // Broker fenced: no longer eligible, stops holding the HW.
    let fenced = BrokerStatus {
        fenced: true,
        ..BrokerStatus::alive(broker_epoch(F2))
    };
    assert_eq!(s.update_broker(F2, fenced, 1), Some(10));
}

#[test]
fn one_alter_partition_in_flight() {
    // testSingleInFlightAlterIsr.
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    let alter = fetch(&mut s, F2, 10, 10, 0).alter_isr.expect("expand");
    assert!(s.is_alter_in_flight());
    assert_eq!(s.maybe_shrink_isr(LAG_MS * 10, 10), None);
    assert!(s.out_of_sync_replicas(LAG_MS * 10).is_empty());
    assert_eq!(fetch(&mut s, F2, 10, 10, 1).alter_isr, None);
    assert_eq!(s.pending_alter_isr(), Some(&alter));
}

#[test]
fn alter_partition_error_table() {
    // Partition.handleAlterPartitionError.
    use AlterPartitionError as E;
    let cases = [
        (E::OperationNotAttempted, "revert"),
        (E::IneligibleReplica, "revert"),
        (E::UnknownTopicOrPartition, "await"),
        (E::UnknownTopicId, "await"),
        (E::FencedLeaderEpoch, "await"),
        (E::InvalidUpdateVersion, "await"),
        (E::InvalidRequest, "await"),
        (E::NewLeaderElected, "await"),
        (E::Retriable(codes::NOT_CONTROLLER), "resend"),
        (E::Retriable(codes::REQUEST_TIMED_OUT), "resend"),
    ];
    for (err, want) in cases {
        let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
        fetch(&mut s, F1, 10, 10, 0);
        let alter = fetch(&mut s, F2, 10, 10, 0).alter_isr.expect("expand");
        let got = s.on_alter_partition_response(alter.request_id, Err(err), 1);
        match want {
            "revert" => {
                assert!(
                    matches!(got, AlterOutcome::Reverted { .. }),
                    "{err:?}: {got:?}"
                );
                assert!(!s.is_alter_in_flight());
                assert_eq!(s.maximal_isr(), set(&[L, F1]));
            }
            "await" => {
                assert_eq!(got, AlterOutcome::AwaitMetadata, "{err:?}");
                assert!(s.is_alter_in_flight());
                assert_eq!(s.maximal_isr(), set(&[L, F1, F2]), "{err:?}: stays maximal");
                // Even a late success for the same request is ignored now...
                assert_eq!(
                    s.on_alter_partition_response(alter.request_id, ok(&s, &[L, F1, F2], 2), 2),
                    AlterOutcome::Ignored
                );
                // ...until metadata arrives.
                s.become_leader(&reg(5, 2, &[L, F1, F2], &[L, F1, F2]), 10, 3)
                    .expect("valid");
                assert!(!s.is_alter_in_flight());
                assert_eq!(s.committed_isr(), &set(&[L, F1, F2]));
            }
            _ => assert!(matches!(got, AlterOutcome::Resend(_)), "{err:?}: {got:?}"),
        }
    }
    assert_eq!(
        AlterPartitionError::from_code(95),
        AlterPartitionError::InvalidUpdateVersion
    );
    assert_eq!(
        AlterPartitionError::from_code(41),
        AlterPartitionError::Retriable(41)
    );
}

#[test]
fn alter_partition_success_with_stale_epochs_is_not_adopted() {
    // handleAlterPartitionUpdate: other leader epoch, or a partition epoch older than ours.
    for (leader_epoch, partition_epoch) in [(6, 2), (4, 2), (5, 0)] {
        let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
        fetch(&mut s, F1, 10, 10, 0);
        let alter = fetch(&mut s, F2, 10, 10, 0).alter_isr.expect("expand");
        let got = s.on_alter_partition_response(
            alter.request_id,
            Ok(AlterPartitionOk {
                leader_epoch,
                partition_epoch,
                isr: vec![L, F1, F2],
            }),
            1,
        );
        assert_eq!(got, AlterOutcome::AwaitMetadata);
        assert_eq!(s.committed_isr(), &set(&[L, F1]));
    }
    // Same partition epoch (no-op at the controller) is adopted.
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    let alter = fetch(&mut s, F2, 10, 10, 0).alter_isr.expect("expand");
    let got = s.on_alter_partition_response(alter.request_id, ok(&s, &[L, F1, F2], 1), 1);
    assert!(matches!(got, AlterOutcome::Committed { .. }));
    // A response whose ISR lacks the leader is not adopted.
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    let alter = fetch(&mut s, F2, 10, 10, 0).alter_isr.expect("expand");
    let got = s.on_alter_partition_response(alter.request_id, ok(&s, &[F1, F2], 2), 1);
    assert_eq!(got, AlterOutcome::AwaitMetadata);
}

#[test]
fn produce_checks() {
    // appendRecordsToLeader and checkEnoughReplicasReachOffset.
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 2, 0, 0);
    assert_eq!(s.check_before_append(Acks::All), Ok(()));
    s.on_local_append(10, 1);
    s.on_local_durable(10, 1);
    assert_eq!(s.check_after_append(10, 5), AckDecision::Wait);
    fetch(&mut s, F1, 10, 10, 2);
    assert_eq!(
        s.check_after_append(10, 5),
        AckDecision::Wait,
        "F2 in ISR holds it"
    );
    fetch(&mut s, F2, 10, 10, 2);
    assert_eq!(s.check_after_append(10, 5), AckDecision::Ack);
    assert_eq!(
        s.check_after_append(10, 4),
        AckDecision::NotLeader,
        "appended in another epoch"
    );
    // Shrink to [L] committed: under min ISR.
    s.on_local_append(20, LAG_MS + 10);
    let alter = s.maybe_shrink_isr(LAG_MS + 10, 20).expect("both lag");
    assert_eq!(alter.isr_ids(), vec![L]);
    s.on_alter_partition_response(alter.request_id, ok(&s, &[L], 2), LAG_MS + 11);
    assert!(s.is_under_min_isr());
    assert_eq!(
        s.check_before_append(Acks::All),
        Err(NotEnoughReplicas {
            isr_size: 1,
            min_isr: 2
        })
    );
    assert_eq!(s.check_before_append(Acks::Leader), Ok(()));
    assert_eq!(s.check_before_append(Acks::None), Ok(()));
    assert_eq!(
        s.check_after_append(10, 5),
        AckDecision::NotEnoughReplicasAfterAppend
    );
    assert_eq!(s.check_after_append(20, 5), AckDecision::Wait);
    assert_eq!(Acks::from_kafka(-1), Some(Acks::All));
    assert_eq!(Acks::from_kafka(2), None);
}

#[test]
fn appends_before_an_epoch_bump_while_leading_are_acknowledged_once_committed() {
    // A reassignment that removes a replica bumps the leader epoch of an unchanged leader: its
    // log is not truncated, so writes appended in the old epoch are still committed ones
    // (Kafka's DelayedProduce completes them). A write from before the leadership began is not.
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 2, 0, 0);
    s.on_local_append(10, 1);
    s.on_local_durable(10, 1);
    s.become_leader(&reg(6, 2, &[L, F1], &[L, F1]), 10, 2)
        .expect("bump while leading");
    assert_eq!(s.leader_epoch(), 6);
    assert_eq!(s.check_after_append(10, 5), AckDecision::Wait);
    let mut req = fetch_req(F1, 10);
    req.current_leader_epoch = Some(6);
    s.on_follower_fetch(req, 10, 3).expect("fetch accepted");
    assert_eq!(s.check_after_append(10, 5), AckDecision::Ack);
    assert_eq!(s.check_after_append(10, 6), AckDecision::Ack);
    assert_eq!(
        s.check_after_append(10, 4),
        AckDecision::NotLeader,
        "appended before this leadership began"
    );
    assert_eq!(
        s.check_after_append(10, 7),
        AckDecision::NotLeader,
        "an epoch this broker has not led in"
    );
}

#[test]
fn become_leader_ignores_older_partition_epoch_and_keeps_state_within_epoch() {
    // testIgnoreLeaderPartitionStateChangeWithOlderPartitionEpoch,
    // testDoNotResetReplicaStateIfLeaderEpochIsNotBumped,
    // testDoNotUpdateEpochStartOffsetIfLeaderEpochIsNotBumped.
    let mut s = leader(&[L, F1], &[L, F1], 1, 10, 0);
    s.become_leader(&reg(5, 3, &[L, F1], &[L, F1]), 10, 0)
        .expect("valid");
    assert_eq!(
        s.become_leader(&reg(6, 2, &[L, F1], &[L]), 10, 0),
        Ok(BecomeLeader::Skipped)
    );
    fetch(&mut s, F1, 10, 10, 1);
    let before = *s.follower(F1).expect("f1");
    s.on_local_append(15, 2);
    let applied = s
        .become_leader(&reg(5, 4, &[L, F1], &[L, F1]), 15, 5)
        .expect("valid");
    assert_eq!(
        applied,
        BecomeLeader::Applied {
            new_leader_epoch: false,
            high_watermark: None
        }
    );
    assert_eq!(s.follower(F1), Some(&before));
    assert_eq!(s.leader_epoch_start_offset(), 10);
    // A new leader epoch resets the follower's timers but keeps its log end (not a new leader).
    s.become_leader(&reg(6, 5, &[L, F1], &[L]), 15, 9)
        .expect("valid");
    let after = *s.follower(F1).expect("f1");
    assert_eq!(
        (after.log_end, after.last_caught_up_ms, after.last_fetch_ms),
        (10, 0, 0)
    );
    assert_eq!(after.last_fetch_leader_log_end, 15);
    assert_eq!(s.leader_epoch_start_offset(), 15);
    assert_eq!(s.high_watermark(), 10, "HW never goes back");
    assert_eq!(
        s.become_leader(&reg(4, 6, &[L, F1], &[L]), 15, 9),
        Err(RegistrationError::LeaderEpochWentBack { current: 6, got: 4 })
    );
}

#[test]
fn registration_validation() {
    let view = LocalLogView {
        log_end: 0,
        durable_end: 0,
        high_watermark: 0,
    };
    let many: Vec<BrokerId> = (1..=(MAX_REPLICAS as i32 + 1)).collect();
    let cases = [
        (reg(1, 1, &[], &[]), cfg(1), RegistrationError::NoReplicas),
        (
            reg(1, 1, &many, &[L]),
            cfg(1),
            RegistrationError::TooManyReplicas(MAX_REPLICAS + 1),
        ),
        (
            reg(1, 1, &[L, F1, F1], &[L]),
            cfg(1),
            RegistrationError::DuplicateReplica(F1),
        ),
        (
            reg(1, 1, &[F1, F2], &[F1]),
            cfg(1),
            RegistrationError::LocalNotReplica(L),
        ),
        (
            reg(1, 1, &[L, F1], &[L, F2]),
            cfg(1),
            RegistrationError::IsrNotSubset(F2),
        ),
        (
            reg(1, 1, &[L, F1], &[F1]),
            cfg(1),
            RegistrationError::LeaderNotInIsr(L),
        ),
        (reg(1, 1, &[L], &[L]), cfg(0), RegistrationError::BadConfig),
    ];
    for (r, c, want) in cases {
        assert_eq!(
            LeaderState::new(L, 1, &r, c, view, 0).map(|_| ()),
            Err(want.clone()),
            "{want}"
        );
    }
}

#[test]
fn min_isr_config_change_can_release_the_hw() {
    let mut s = leader(&[L, F1, F2], &[L, F1], 3, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    assert_eq!(s.high_watermark(), 0);
    assert_eq!(s.set_config(cfg(2), 1), Ok(Some(10)));
}

#[test]
fn end_offset_for_table() {
    // LeaderEpochFileCache.endOffsetFor (see LeaderEpochFileCacheTest).
    let epochs = [(1, 0), (3, 10), (5, 20)];
    let cases = [
        (-1, None),
        (0, Some((0, 0))),  // below every epoch: (requested, first start)
        (1, Some((1, 10))), // ends where the next starts
        (2, Some((1, 10))), // unknown epoch between: floor epoch, next start
        (3, Some((3, 20))),
        (4, Some((3, 20))),
        (5, Some((5, 25))), // latest: log end
        (6, None),          // above every epoch
    ];
    for (requested, want) in cases {
        let got = end_offset_for(&epochs, requested, 25).map(|e| (e.epoch, e.end_offset));
        assert_eq!(got, want, "epoch {requested}");
    }
    assert_eq!(end_offset_for(&[], 3, 0), None);
}

#[test]
fn truncation_offset_table() {
    // AbstractFetcherThread.getOffsetTruncationState.
    let local = [(1, 0), (2, 10), (4, 20)];
    let t = |offset, complete| Truncation { offset, complete };
    let cases = [
        (
            "leader knows epoch 2 ending at 15; local 2 ends at 20",
            2,
            15,
            t(15, true),
        ),
        (
            "leader epoch 2 ends past local end of 2",
            2,
            25,
            t(20, true),
        ),
        (
            "leader epoch 3 unknown locally: to end of local 2, another round",
            3,
            22,
            t(20, false),
        ),
        ("leader epoch 4, same end", 4, 30, t(28, true)),
        ("leader epoch 4 ends before our end", 4, 24, t(24, true)),
        (
            "leader epoch older than anything local: (0, first start 0)",
            0,
            5,
            t(0, true),
        ),
        (
            "undefined leader epoch: leader's offset",
            -1,
            12,
            t(12, true),
        ),
        ("undefined end offset: keep position", 2, -1, t(28, true)),
    ];
    for (name, leader_epoch, leader_end, want) in cases {
        assert_eq!(
            truncation_offset(&local, 28, leader_epoch, leader_end),
            want,
            "{name}"
        );
    }
    // Empty local cache: the leader's end offset, capped by the log end.
    assert_eq!(truncation_offset(&[], 7, 3, 5), t(5, true));
    assert_eq!(truncation_offset(&[], 7, 3, 9), t(7, true));
}

#[test]
fn leader_diverging_epoch_table() {
    // Partition.readRecords.
    let leader = [(1, 0), (3, 10)];
    let cases = [
        ("no last fetched epoch", None, 5, Ok(None)),
        ("same epoch, within", Some(3), 12, Ok(None)),
        ("older epoch ends at its next start", Some(1), 10, Ok(None)),
        (
            "older epoch, follower past its end",
            Some(1),
            12,
            Ok(Some((1, 10))),
        ),
        (
            "epoch unknown to leader (2)",
            Some(2),
            12,
            Ok(Some((1, 10))),
        ),
        ("epoch above every known", Some(4), 12, Err(())),
        (
            "past log end: diverges first, as readRecords checks",
            Some(3),
            16,
            Ok(Some((3, 15))),
        ),
        ("past log end, no epoch", None, 16, Err(())),
        ("below log start", Some(3), 1, Err(())),
    ];
    for (name, last, offset, want) in cases {
        let got = diverging_epoch(&leader, 2, 15, last, offset)
            .map(|d| d.map(|d| (d.epoch, d.end_offset)))
            .map_err(|_| ());
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(
        out_of_range_action(20, 0, 15),
        OutOfRangeAction::TruncateTo(15)
    );
    assert_eq!(
        out_of_range_action(5, 8, 15),
        OutOfRangeAction::TruncateFullyAndStartAt(8)
    );
    assert_eq!(
        out_of_range_action(10, 8, 15),
        OutOfRangeAction::FetchFrom(10)
    );
}

#[test]
fn follower_fetches_only_durable_positions_and_caps_hw_by_durable_end() {
    let r = FollowerRegistration {
        leader_id: L,
        leader_epoch: 5,
        partition_epoch: 1,
    };
    let mut f = FollowerState::new(r, 10, Some(4), 8);
    assert_eq!(f.high_watermark(), 8);
    assert_eq!(
        f.next_fetch(10, 10),
        Some(FetchPosition {
            fetch_offset: 10,
            last_fetched_epoch: Some(4),
            current_leader_epoch: 5
        })
    );
    let action = f.on_fetch_response(
        FetchResult::Records {
            leader_high_watermark: 14,
            last_appended_epoch: Some(5),
            log_end: 15,
        },
        &[(4, 0), (5, 10)],
        15,
        10,
    );
    assert_eq!(action, FollowerAction::Continue);
    assert_eq!(f.high_watermark(), 10, "min(leader HW 14, durable 10)");
    assert_eq!(
        f.next_fetch(15, 10),
        None,
        "wait for fsync before fetching at 15"
    );
    assert_eq!(f.on_local_durable(15), Some(14));
    assert_eq!(
        f.next_fetch(15, 15)
            .map(|p| (p.fetch_offset, p.last_fetched_epoch)),
        Some((15, Some(5)))
    );
    // Diverging epoch → truncate, then resume at the cut with the log's latest epoch.
    let action = f.on_fetch_response(
        FetchResult::Diverging(EpochEndOffset {
            epoch: 5,
            end_offset: 12,
        }),
        &[(4, 0), (5, 10)],
        15,
        15,
    );
    assert_eq!(
        action,
        FollowerAction::Truncate(Truncation {
            offset: 12,
            complete: true
        })
    );
    assert!(f.on_truncated(12, Some(5)), "cut below HW 14 is reported");
    assert_eq!((f.fetch_offset(), f.high_watermark()), (12, 12));
    // Older partition epoch ignored; new leader epoch restarts fetching.
    assert!(!f.become_follower(
        FollowerRegistration {
            partition_epoch: 0,
            ..r
        },
        12,
        Some(5)
    ));
    assert!(f.become_follower(
        FollowerRegistration {
            leader_id: F2,
            leader_epoch: 6,
            partition_epoch: 2
        },
        12,
        Some(5)
    ));
    assert_eq!((f.leader_id(), f.leader_epoch()), (F2, 6));
}

#[test]
fn same_partition_epoch_registration_keeps_pending_expansion() {
    // Holdfast differs from Kafka's makeLeader: the leader learnt partition epoch 2 from an
    // AlterPartition answer, proposed an expansion at epoch 2, then the metadata record for
    // epoch 2 arrives. Kafka resets to the committed state (dropping the expansion the
    // controller may be applying); we keep it, so the HW keeps waiting for the replica. The
    // model test finds a lost acknowledged write without this (seed 869 at 5000 seeds).
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    fetch(&mut s, F2, 10, 10, 0);
    let shrink = s.maybe_shrink_isr(LAG_MS + 1, 20).expect("both lag");
    s.on_alter_partition_response(shrink.request_id, ok(&s, &[L], 2), LAG_MS + 1);
    let expand = fetch(&mut s, F1, 20, 20, LAG_MS + 2)
        .alter_isr
        .expect("expand");
    assert_eq!(expand.partition_epoch, 2);
    let applied = s.become_leader(&reg(5, 2, &[L, F1, F2], &[L]), 20, LAG_MS + 3);
    assert!(matches!(
        applied,
        Ok(BecomeLeader::Applied {
            new_leader_epoch: false,
            ..
        })
    ));
    assert_eq!(s.pending_alter_isr(), Some(&expand));
    assert_eq!(s.maximal_isr(), set(&[L, F1]));
    // A newer partition epoch does supersede it.
    s.become_leader(&reg(5, 3, &[L, F1, F2], &[L, F1]), 20, LAG_MS + 4)
        .expect("valid");
    assert!(!s.is_alter_in_flight());
    assert_eq!(s.committed_isr(), &set(&[L, F1]));
}

#[test]
fn isr_member_fetching_below_hw_is_flagged() {
    let mut s = leader(&[L, F1, F2], &[L, F1, F2], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    fetch(&mut s, F2, 10, 10, 0);
    assert_eq!(s.high_watermark(), 10);
    // F2 comes back having lost fsynced data.
    assert!(fetch(&mut s, F2, 6, 10, 1).isr_member_below_hw);
    assert!(!fetch(&mut s, F1, 10, 10, 1).isr_member_below_hw);
    // A non-ISR replica behind the HW is normal.
    let mut s = leader(&[L, F1, F2], &[L, F1], 1, 10, 0);
    fetch(&mut s, F1, 10, 10, 0);
    assert!(!fetch(&mut s, F2, 3, 10, LAG_MS + 1).isr_member_below_hw);
}
