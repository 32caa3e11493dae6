//! openraft state-machine adapter around the application's [`StateMachine`], with durable
//! snapshot files (`snapshot-<index>-<term>.snap`, two kept).

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use crate::fsutil::{atomic_write, be_u32, remove_tmp_files};
use crate::{StateMachine, StoreError, TypeConfig};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const SNAPSHOTS_KEPT: usize = 2;

type Meta = SnapshotMeta<u64, BasicNode>;

#[derive(Clone)]
struct Stored {
    meta: Meta,
    data: Vec<u8>,
}

struct State {
    sm: Box<dyn StateMachine>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    current: Option<Stored>,
    failed: Option<String>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    applied: watch::Sender<u64>,
}

/// The openraft state machine (and, cloned, its snapshot builder).
#[derive(Clone)]
pub(crate) struct SmStore {
    shared: Arc<Shared>,
}

fn se(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snapshot_name(meta: &Meta) -> String {
    let (index, term) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.index + 1, l.leader_id.term));
    // index + 1 so that "nothing applied" (0) sorts first; names are only for ordering.
    format!("{SNAPSHOT_PREFIX}{index:020}-{term:020}{SNAPSHOT_SUFFIX}")
}

/// `u32 crc32c(rest) | u32 meta_len | meta (JSON) | data`.
fn encode_snapshot(meta: &Meta, data: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let meta_json = serde_json::to_vec(meta)?;
    let mut out = Vec::with_capacity(8 + meta_json.len() + data.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Stored, StoreError> {
    let bad = |reason: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.into(),
    };
    if bytes.len() < 8 {
        return Err(bad("snapshot shorter than its header"));
    }
    if crc32c::crc32c(&bytes[4..]) != be_u32(bytes) {
        return Err(bad("snapshot checksum mismatch"));
    }
    let meta_len = be_u32(&bytes[4..]) as usize;
    if meta_len > bytes.len() - 8 {
        return Err(bad("snapshot meta length out of range"));
    }
    let meta: Meta =
        serde_json::from_slice(&bytes[8..8 + meta_len]).map_err(|e| bad(&e.to_string()))?;
    Ok(Stored {
        meta,
        data: bytes[8 + meta_len..].to_vec(),
    })
}

fn list_snapshots(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX) {
            out.push(item.path());
        }
    }
    out.sort();
    Ok(out)
}

impl SmStore {
    /// Opens the snapshot directory and restores `sm` from the newest snapshot, if any.
    pub(crate) fn open(
        dir: &Path,
        mut sm: Box<dyn StateMachine>,
        applied: watch::Sender<u64>,
    ) -> Result<SmStore, StoreError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| StoreError::Io { context, source }
        };
        fs::create_dir_all(dir).map_err(io("create snapshot dir"))?;
        remove_tmp_files(dir).map_err(io("remove tmp files"))?;
        let mut current = None;
        if let Some(path) = list_snapshots(dir).map_err(io("list snapshots"))?.pop() {
            let bytes = fs::read(&path).map_err(io("read snapshot"))?;
            let stored = decode_snapshot(&path, &bytes)?;
            sm.restore(&stored.data).map_err(StoreError::Restore)?;
            current = Some(stored);
        }
        let (last_applied, membership) = match &current {
            Some(s) => (s.meta.last_log_id, s.meta.last_membership.clone()),
            None => (None, StoredMembership::default()),
        };
        applied.send_replace(last_applied.map_or(0, |l| l.index));
        let state = State {
            sm,
            last_applied,
            membership,
            current,
            failed: None,
        };
        Ok(SmStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(state),
                applied,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the snapshot durably, makes it current if newer, keeps the newest two files.
    fn persist(&self, stored: &Stored) -> Result<(), StorageError<u64>> {
        if let Some(why) = &self.lock().failed {
            return Err(se(
                ErrorVerb::Write,
                format!("snapshot store stopped after an I/O failure: {why}"),
            ));
        }
        let bytes =
            encode_snapshot(&stored.meta, &stored.data).map_err(|e| se(ErrorVerb::Write, e))?;
        let dir = &self.shared.dir;
        let res = atomic_write(dir, &snapshot_name(&stored.meta), &bytes).and_then(|()| {
            let files = list_snapshots(dir)?;
            for old in files
                .iter()
                .take(files.len().saturating_sub(SNAPSHOTS_KEPT))
            {
                fs::remove_file(old)?;
            }
            crate::fsutil::fsync_dir(dir)
        });
        if let Err(e) = res {
            let why = format!("write snapshot: {e}");
            tracing::error!(error = %why, "snapshot I/O failed; the node stops");
            self.lock().failed = Some(why.clone());
            return Err(se(ErrorVerb::Write, why));
        }
        let mut state = self.lock();
        if state
            .current
            .as_ref()
            .is_none_or(|c| c.meta.last_log_id <= stored.meta.last_log_id)
        {
            state.current = Some(stored.clone());
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let stored = {
            let state = self.lock();
            let last = state.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => "empty".to_string(),
            };
            let meta = Meta {
                last_log_id: last,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            Stored {
                meta,
                data: state.sm.snapshot(),
            }
        };
        self.persist(&stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let response = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => state.sm.apply(index, &cmd),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            state.last_applied = Some(entry.log_id);
            out.push(response);
        }
        if let Some(last) = state.last_applied {
            self.shared.applied.send_replace(last.index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let stored = Stored {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.persist(&stored)?;
        let mut state = self.lock();
        state
            .sm
            .restore(&stored.data)
            .map_err(|e| se(ErrorVerb::Write, format!("restore snapshot: {e}")))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.shared
            .applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let state = self.lock();
        Ok(state.current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
