#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use tokio::sync::watch;

use super::{LogStore, ENTRY_HEADER};
use crate::sm::SmStore;
use crate::{StateMachine, StoreError, TypeConfig};

static N: AtomicU64 = AtomicU64::new(0);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "holdfast-quorum-store-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A state machine that records commands (for the openraft suite).
#[derive(Default)]
struct Vec8(Vec<Vec<u8>>);

impl StateMachine for Vec8 {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        self.0.push(command.to_vec());
        command.to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Builder;

/// Removes a suite case's directory when openraft drops the case's guard.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StoreBuilder<TypeConfig, LogStore, SmStore, DirGuard> for Builder {
    async fn build(&self) -> Result<(DirGuard, LogStore, SmStore), openraft::StorageError<u64>> {
        let dir = temp_dir("suite");
        let (log, _) = LogStore::open(&dir, 256).unwrap();
        let (tx, _rx) = watch::channel(0);
        let sm = SmStore::open(&dir, Box::new(Vec8::default()), tx).unwrap();
        Ok((DirGuard(dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn entry(index: u64, payload: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(payload.to_vec()),
    }
}

async fn read_all(store: &mut LogStore) -> Vec<u64> {
    store
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

fn segment(dir: &std::path::Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.raftlog"))
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_returns_same_entries_and_vote() {
    let dir = temp_dir("reopen");
    let _cleanup = DirGuard(dir.clone());
    {
        let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
        assert_eq!(r.entries, 0);
        s.blocking_append((1..=10).map(|i| entry(i, format!("cmd{i}").as_bytes())))
            .await
            .unwrap();
        s.save_vote(&openraft::Vote::new_committed(3, 2))
            .await
            .unwrap();
    }
    let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(
        r,
        super::Recovery {
            segments: 1,
            entries: 10,
            torn_bytes_cut: 0
        }
    );
    assert_eq!(read_all(&mut s).await, (1..=10).collect::<Vec<_>>());
    let e = s.try_get_log_entries(4..5).await.unwrap();
    assert!(matches!(&e[0].payload, EntryPayload::Normal(c) if c == b"cmd4"));
    assert_eq!(
        s.read_vote().await.unwrap(),
        Some(openraft::Vote::new_committed(3, 2))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_tail_is_cut_at_every_byte_position() {
    let payload = b"the last entry, torn";
    let frame_len = (ENTRY_HEADER + payload.len()) as u64;
    for cut in 1..=frame_len {
        let dir = temp_dir("torn");
        let _cleanup = DirGuard(dir.clone());
        {
            let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
            s.blocking_append((1..=4).map(|i| entry(i, b"ok")))
                .await
                .unwrap();
            s.blocking_append([entry(5, payload)]).await.unwrap();
        }
        let path = segment(&dir, 1);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - cut).unwrap();
        drop(f);
        let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
        assert_eq!(r.torn_bytes_cut, frame_len - cut, "cut {cut}");
        assert_eq!(read_all(&mut s).await, vec![1, 2, 3, 4], "cut {cut}");
        // The log continues cleanly after the cut.
        s.blocking_append([entry(5, b"again")]).await.unwrap();
        drop(s);
        let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
        assert_eq!(r.torn_bytes_cut, 0);
        assert_eq!(read_all(&mut s).await, vec![1, 2, 3, 4, 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_filled_tail_is_cut() {
    let dir = temp_dir("zeros");
    let _cleanup = DirGuard(dir.clone());
    {
        let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
        s.blocking_append((1..=3).map(|i| entry(i, b"x")))
            .await
            .unwrap();
    }
    let path = segment(&dir, 1);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len + 4096)
        .unwrap();
    let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(r.torn_bytes_cut, 4096);
    assert_eq!(read_all(&mut s).await, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn corruption_followed_by_a_valid_entry_refuses_to_open() {
    let dir = temp_dir("corrupt");
    let _cleanup = DirGuard(dir.clone());
    {
        let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
        s.blocking_append((1..=5).map(|i| entry(i, b"payload")))
            .await
            .unwrap();
    }
    let path = segment(&dir, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = ENTRY_HEADER + b"payload".len();
    bytes[frame + ENTRY_HEADER] ^= 0xff; // a payload byte of entry 2
    std::fs::write(&path, &bytes).unwrap();
    match LogStore::open(&dir, 1 << 20) {
        Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, frame as u64),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_non_last_segment_is_corruption() {
    let dir = temp_dir("torn-mid");
    let _cleanup = DirGuard(dir.clone());
    {
        let (mut s, _) = LogStore::open(&dir, 64).unwrap();
        for i in 1..=6 {
            s.blocking_append([entry(i, b"0123456789012345678901234567890123456789")])
                .await
                .unwrap();
        }
    }
    let path = segment(&dir, 1);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        LogStore::open(&dir, 64),
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_and_purge_across_segments_survive_reopen() {
    let dir = temp_dir("segments");
    let _cleanup = DirGuard(dir.clone());
    let seg = 3 * (ENTRY_HEADER as u64 + 8); // three 8-byte entries per segment
    {
        let (mut s, _) = LogStore::open(&dir, seg).unwrap();
        s.blocking_append((1..=20).map(|i| entry(i, b"12345678")))
            .await
            .unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 7);
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 11))
            .await
            .unwrap();
        assert_eq!(read_all(&mut s).await, (1..=10).collect::<Vec<_>>());
        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        assert_eq!(read_all(&mut s).await, (6..=10).collect::<Vec<_>>());
        s.blocking_append((11..=13).map(|i| entry(i, b"abcdefgh")))
            .await
            .unwrap();
    }
    let (mut s, r) = LogStore::open(&dir, seg).unwrap();
    assert_eq!(r.torn_bytes_cut, 0);
    assert_eq!(read_all(&mut s).await, (6..=13).collect::<Vec<_>>());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(5));
    assert_eq!(st.last_log_id.map(|l| l.index), Some(13));
    // Purge beyond the end of the log (after a snapshot install): the log restarts after it.
    s.purge(LogId::new(CommittedLeaderId::new(2, 1), 30))
        .await
        .unwrap();
    assert_eq!(read_all(&mut s).await, Vec::<u64>::new());
    s.blocking_append([entry(31, b"next")]).await.unwrap();
    drop(s);
    let (mut s, _) = LogStore::open(&dir, seg).unwrap();
    assert_eq!(read_all(&mut s).await, vec![31]);
    assert_eq!(
        s.get_log_state()
            .await
            .unwrap()
            .last_purged_log_id
            .map(|l| l.index),
        Some(30)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_interrupted_before_segment_deletion_is_finished_at_open() {
    let dir = temp_dir("purge-crash");
    let _cleanup = DirGuard(dir.clone());
    let old = segment(&dir, 1);
    let saved;
    {
        let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
        s.blocking_append((1..=5).map(|i| entry(i, b"old")))
            .await
            .unwrap();
        saved = std::fs::read(&old).unwrap();
        s.purge(LogId::new(CommittedLeaderId::new(2, 1), 30))
            .await
            .unwrap();
        assert!(!old.exists());
        s.blocking_append([entry(31, b"new")]).await.unwrap();
    }
    // As if the crash came after the `purged` file was written but before the old segment's
    // deletion reached the disk.
    std::fs::write(&old, saved).unwrap();
    let (mut s, r) = LogStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(read_all(&mut s).await, vec![31]);
    assert_eq!(r.segments, 1);
    assert!(!old.exists(), "the interrupted purge was finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_io_failure_the_store_refuses_everything() {
    let dir = temp_dir("failed");
    let _cleanup = DirGuard(dir.clone());
    let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
    s.blocking_append([entry(1, b"ok")]).await.unwrap();
    // As after a failed fdatasync: never retried, every later call fails.
    let _ = s
        .lock()
        .fail("fdatasync raft log", &std::io::Error::other("EIO"));
    assert!(s.blocking_append([entry(2, b"no")]).await.is_err());
    assert!(s.save_vote(&openraft::Vote::new(2, 1)).await.is_err());
    assert!(s
        .truncate(LogId::new(CommittedLeaderId::new(1, 1), 1))
        .await
        .is_err());
    assert!(s
        .purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
        .await
        .is_err());
    drop(s);
    // A restart recovers from what is on disk.
    let (mut s, _) = LogStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(read_all(&mut s).await, vec![1]);
}
