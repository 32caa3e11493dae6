//! The follower side of one partition: fetch position, `last_fetched_epoch`, truncation on a
//! diverging epoch (KIP-320, `AbstractFetcherThread`), and the follower high watermark.

use crate::truncation::{
    out_of_range_action, truncation_offset, EpochEndOffset, OutOfRangeAction, Truncation,
};
use crate::BrokerId;

/// The partition registration as a follower sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerRegistration {
    pub leader_id: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// What to put in the next Fetch for this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPosition {
    pub fetch_offset: i64,
    pub last_fetched_epoch: Option<i32>,
    pub current_leader_epoch: i32,
}

/// The leader's answer for this partition, as far as replication state cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// Records (possibly none) were appended locally with `append_as_follower`; the log now
    /// ends at `log_end`, and `last_appended_epoch` is the epoch of the last appended batch.
    Records {
        leader_high_watermark: i64,
        last_appended_epoch: Option<i32>,
        log_end: i64,
    },
    /// `diverging_epoch` was set: nothing was appended.
    Diverging(EpochEndOffset),
    /// OFFSET_OUT_OF_RANGE; the broker asked the leader for its log start and end (ListOffsets).
    OffsetOutOfRange {
        leader_log_start: i64,
        leader_log_end: i64,
    },
}

/// What the broker must do to the local log next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerAction {
    /// Keep fetching (after fsync of what was appended: the Holdfast fetch rule).
    Continue,
    /// `log.truncate_to(offset)` (loss-ledger event `replica_truncation` when it cuts data), then
    /// [`FollowerState::on_truncated`].
    Truncate(Truncation),
    /// Drop the whole log and restart it at this offset, then [`FollowerState::on_truncated`].
    TruncateFullyAndStartAt(i64),
}

/// One partition this broker follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerState {
    leader_id: BrokerId,
    leader_epoch: i32,
    partition_epoch: i32,
    fetch_offset: i64,
    last_fetched_epoch: Option<i32>,
    leader_high_watermark: i64,
    high_watermark: i64,
}

impl FollowerState {
    /// This broker starts following (`Partition.makeFollower`, then the fetcher is added with
    /// `last_fetched_epoch = log.latest_epoch()`; truncation happens on the first response).
    pub fn new(
        reg: FollowerRegistration,
        local_log_end: i64,
        local_latest_epoch: Option<i32>,
        persisted_high_watermark: i64,
    ) -> FollowerState {
        assert!(local_log_end >= 0);
        FollowerState {
            leader_id: reg.leader_id,
            leader_epoch: reg.leader_epoch,
            partition_epoch: reg.partition_epoch,
            fetch_offset: local_log_end,
            last_fetched_epoch: local_latest_epoch,
            leader_high_watermark: -1,
            high_watermark: persisted_high_watermark.clamp(0, local_log_end),
        }
    }

    /// A new registration while following. Ignored (returns false) when its partition epoch is
    /// older; returns true when the leader epoch moved: the broker restarts fetching from the
    /// (possibly new) leader (`makeFollower` returns `isNewLeaderEpoch`).
    pub fn become_follower(
        &mut self,
        reg: FollowerRegistration,
        local_log_end: i64,
        local_latest_epoch: Option<i32>,
    ) -> bool {
        if reg.partition_epoch < self.partition_epoch {
            return false;
        }
        let new_epoch = reg.leader_epoch > self.leader_epoch;
        self.partition_epoch = reg.partition_epoch;
        if new_epoch {
            self.leader_id = reg.leader_id;
            self.leader_epoch = reg.leader_epoch;
            self.fetch_offset = local_log_end;
            self.last_fetched_epoch = local_latest_epoch;
            self.leader_high_watermark = -1;
        }
        new_epoch
    }

    /// The next fetch position, or `None` while appended data is not yet durable: Holdfast's
    /// follower fetches at offset N only once N is durable locally (design §2.2), so the leader
    /// may count the fetch offset as this replica's durable end.
    pub fn next_fetch(&self, local_log_end: i64, local_durable_end: i64) -> Option<FetchPosition> {
        assert!(local_durable_end <= local_log_end);
        assert_eq!(
            local_log_end, self.fetch_offset,
            "log end and fetch position disagree"
        );
        (local_durable_end >= self.fetch_offset).then_some(FetchPosition {
            fetch_offset: self.fetch_offset,
            last_fetched_epoch: self.last_fetched_epoch,
            current_leader_epoch: self.leader_epoch,
        })
    }

    /// Handles the leader's answer. Mirrors `AbstractFetcherThread.processFetchRequest`:
    /// records advance the fetch position and `last_fetched_epoch`; a diverging epoch gives a
    /// truncation from [`truncation_offset`]; OFFSET_OUT_OF_RANGE follows
    /// `fetchOffsetAndTruncate`. The follower HW is `min(leader HW, local durable end)`
    /// (Kafka uses the LEO), and only grows.
    pub fn on_fetch_response(
        &mut self,
        result: FetchResult,
        local_epochs: &[(i32, i64)],
        local_log_end: i64,
        local_durable_end: i64,
    ) -> FollowerAction {
        assert!(local_durable_end <= local_log_end);
        match result {
            FetchResult::Records {
                leader_high_watermark,
                last_appended_epoch,
                log_end,
            } => {
                assert!(
                    log_end >= self.fetch_offset,
                    "append moved the log end back"
                );
                self.fetch_offset = log_end;
                if last_appended_epoch.is_some() {
                    self.last_fetched_epoch = last_appended_epoch;
                }
                self.leader_high_watermark = self.leader_high_watermark.max(leader_high_watermark);
                self.on_local_durable(local_durable_end);
                FollowerAction::Continue
            }
            FetchResult::Diverging(d) => FollowerAction::Truncate(truncation_offset(
                local_epochs,
                local_log_end,
                d.epoch,
                d.end_offset,
            )),
            FetchResult::OffsetOutOfRange {
                leader_log_start,
                leader_log_end,
            } => match out_of_range_action(local_log_end, leader_log_start, leader_log_end) {
                OutOfRangeAction::TruncateTo(offset) => FollowerAction::Truncate(Truncation {
                    offset,
                    complete: true,
                }),
                OutOfRangeAction::TruncateFullyAndStartAt(offset) => {
                    FollowerAction::TruncateFullyAndStartAt(offset)
                }
                OutOfRangeAction::FetchFrom(offset) => {
                    self.fetch_offset = offset;
                    FollowerAction::Continue
                }
            },
        }
    }

    /// The local log was truncated (or restarted); resume fetching at its new end with its
    /// latest epoch. Returns true when the cut went below this replica's HW, which a clean
    /// (ISR/ELR) election never causes: the broker records it in the loss ledger.
    pub fn on_truncated(&mut self, local_log_end: i64, local_latest_epoch: Option<i32>) -> bool {
        self.fetch_offset = local_log_end;
        self.last_fetched_epoch = local_latest_epoch;
        let below_hw = local_log_end < self.high_watermark;
        self.high_watermark = self.high_watermark.min(local_log_end);
        below_hw
    }

    /// The local durable end advanced: the follower HW may follow the leader's.
    pub fn on_local_durable(&mut self, local_durable_end: i64) -> Option<i64> {
        let candidate = self.leader_high_watermark.min(local_durable_end);
        (candidate > self.high_watermark).then(|| {
            self.high_watermark = candidate;
            candidate
        })
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    pub fn leader_id(&self) -> BrokerId {
        self.leader_id
    }
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }
    pub fn fetch_offset(&self) -> i64 {
        self.fetch_offset
    }
    pub fn last_fetched_epoch(&self) -> Option<i32> {
        self.last_fetched_epoch
    }
}
