//! Leader epochs and log divergence (KIP-101, KIP-279, KIP-320): where a follower's log stops
//! agreeing with its leader's, computed from the two epoch caches.
//!
//! An epoch cache is a slice of `(epoch, start_offset)`, sorted by epoch (strictly increasing)
//! with non-decreasing start offsets, exactly what `holdfast_log::Log::epoch_entries` holds.

/// Kafka's `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET` on the wire.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// Fetch response `diverging_epoch` (and an OffsetForLeaderEpoch answer): the largest epoch
/// the leader knows that is `<=` the one asked about, and where it ends on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    pub epoch: i32,
    pub end_offset: i64,
}

/// Where to truncate a follower log after a diverging epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Truncate the local log to this offset (it becomes the log end; no-op when equal to it).
    pub offset: i64,
    /// `false` when the leader answered with an epoch this replica never saw: the follower
    /// truncates to the end of its largest smaller epoch and another round of divergence may
    /// follow on the next fetch (Kafka's `truncationCompleted = false`).
    pub complete: bool,
}

/// Leader-side answer to a replica fetch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchPositionError {
    /// OFFSET_OUT_OF_RANGE: below the log start, above the log end, or the last fetched epoch
    /// cannot be resolved from the epoch cache.
    #[error("fetch offset {fetch_offset} out of range [{log_start}, {log_end}] (last fetched epoch {last_fetched_epoch:?})")]
    OffsetOutOfRange {
        fetch_offset: i64,
        log_start: i64,
        log_end: i64,
        last_fetched_epoch: Option<i32>,
    },
}

impl FetchPositionError {
    pub fn code(&self) -> i16 {
        crate::codes::OFFSET_OUT_OF_RANGE
    }
}

fn assert_epoch_cache(epochs: &[(i32, i64)]) {
    for w in epochs.windows(2) {
        assert!(
            w[0].0 < w[1].0 && w[0].1 <= w[1].1,
            "epoch cache out of order: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

/// The largest epoch `<= requested_epoch` and the offset where it ends, from an epoch cache
/// and its log end. `None` is Kafka's `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)`.
///
/// Mirrors `LeaderEpochFileCache.endOffsetFor` as used by `UnifiedLog.endOffsetForEpoch`:
/// the latest epoch ends at the log end; an epoch below every known one answers
/// `(requested_epoch, start of the first epoch)`; an epoch above every known one is undefined.
pub fn end_offset_for(
    epochs: &[(i32, i64)],
    requested_epoch: i32,
    log_end: i64,
) -> Option<EpochEndOffset> {
    assert_epoch_cache(epochs);
    if requested_epoch == UNDEFINED_EPOCH {
        return None;
    }
    let latest = epochs.last()?;
    if latest.0 == requested_epoch {
        return Some(EpochEndOffset {
            epoch: requested_epoch,
            end_offset: log_end,
        });
    }
    let higher = epochs.iter().find(|e| e.0 > requested_epoch)?;
    match epochs.iter().rev().find(|e| e.0 <= requested_epoch) {
        None => Some(EpochEndOffset {
            epoch: requested_epoch,
            end_offset: higher.1,
        }),
        Some(floor) => Some(EpochEndOffset {
            epoch: floor.0,
            end_offset: higher.1,
        }),
    }
}

/// Where a follower truncates when its leader answers a fetch with
/// `diverging_epoch = {leader_epoch, leader_end_offset}`.
///
/// Mirrors `AbstractFetcherThread.getOffsetTruncationState`: with `(e, end) =`
/// [`end_offset_for`]`(local_epochs, leader_epoch)`, if `e == leader_epoch` truncate to
/// `min(end, leader_end_offset, local_log_end)`; if `e < leader_epoch` (this replica never saw
/// the leader's epoch) truncate to `min(end, local_log_end)` and expect another round; if the
/// local cache knows nothing that old, truncate to `min(leader_end_offset, local_log_end)`.
/// An undefined leader end offset keeps the current fetch position (the local log end).
pub fn truncation_offset(
    local_epochs: &[(i32, i64)],
    local_log_end: i64,
    leader_epoch: i32,
    leader_end_offset: i64,
) -> Truncation {
    assert!(local_log_end >= 0, "negative log end {local_log_end}");
    let t = if leader_end_offset == UNDEFINED_EPOCH_OFFSET {
        Truncation {
            offset: local_log_end,
            complete: true,
        }
    } else if leader_epoch == UNDEFINED_EPOCH {
        Truncation {
            offset: leader_end_offset.min(local_log_end),
            complete: true,
        }
    } else {
        match end_offset_for(local_epochs, leader_epoch, local_log_end) {
            Some(found) if found.epoch != leader_epoch => Truncation {
                offset: found.end_offset.min(local_log_end),
                complete: false,
            },
            Some(found) => Truncation {
                offset: found.end_offset.min(leader_end_offset).min(local_log_end),
                complete: true,
            },
            None => Truncation {
                offset: leader_end_offset.min(local_log_end),
                complete: true,
            },
        }
    };
    assert!(
        t.offset <= local_log_end,
        "truncation never extends the log"
    );
    t
}

/// Leader side of truncation on fetch: is a replica's fetch position `(last_fetched_epoch,
/// fetch_offset)` consistent with the leader's log?
///
/// Mirrors `Partition.readRecords`: with a last fetched epoch, resolve it with
/// [`end_offset_for`] (undefined → OFFSET_OUT_OF_RANGE); a fetch offset below the log start is
/// OFFSET_OUT_OF_RANGE regardless; if the resolved epoch is smaller than the one asked about or
/// ends before the fetch offset, answer `Ok(Some(diverging_epoch))` and no records (and do not
/// update the follower's fetch state). A fetch offset beyond the log end is
/// OFFSET_OUT_OF_RANGE (`UnifiedLog.read`).
pub fn diverging_epoch(
    leader_epochs: &[(i32, i64)],
    leader_log_start: i64,
    leader_log_end: i64,
    last_fetched_epoch: Option<i32>,
    fetch_offset: i64,
) -> Result<Option<EpochEndOffset>, FetchPositionError> {
    let out_of_range = FetchPositionError::OffsetOutOfRange {
        fetch_offset,
        log_start: leader_log_start,
        log_end: leader_log_end,
        last_fetched_epoch,
    };
    if let Some(fetch_epoch) = last_fetched_epoch {
        let found =
            end_offset_for(leader_epochs, fetch_epoch, leader_log_end).ok_or(out_of_range)?;
        if fetch_offset < leader_log_start {
            return Err(out_of_range);
        }
        if found.epoch < fetch_epoch || found.end_offset < fetch_offset {
            return Ok(Some(found));
        }
    }
    if fetch_offset < leader_log_start || fetch_offset > leader_log_end {
        return Err(out_of_range);
    }
    Ok(None)
}

/// What a follower does after OFFSET_OUT_OF_RANGE from its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRangeAction {
    /// The leader's log ends below ours (unclean election): truncate to its end.
    TruncateTo(i64),
    /// Our log ends below the leader's log start: drop everything, restart at its start.
    TruncateFullyAndStartAt(i64),
    /// Keep the log and fetch again from this offset.
    FetchFrom(i64),
}

/// Mirrors `AbstractFetcherThread.fetchOffsetAndTruncate`.
pub fn out_of_range_action(
    local_log_end: i64,
    leader_log_start: i64,
    leader_log_end: i64,
) -> OutOfRangeAction {
    if leader_log_end < local_log_end {
        OutOfRangeAction::TruncateTo(leader_log_end)
    } else if leader_log_start > local_log_end {
        OutOfRangeAction::TruncateFullyAndStartAt(leader_log_start)
    } else {
        OutOfRangeAction::FetchFrom(local_log_end)
    }
}
