//! `holdfast-quorum`: a replicated, durable command log on openraft 0.9.
//!
//! The crate does not know what commands mean: the application supplies a [`StateMachine`]
//! (applied in log order on every node) and an [`AppHandler`] (served on the leader, reached
//! from any node with [`Quorum::call_leader`]). Every openraft type stays inside this crate.
//! On-disk and wire formats: docs/format-quorum.md.

// openraft's trait signatures fix the error types (`StorageError`, `RPCError`: 200+ bytes);
// the private helpers that build them return the same types.
#![allow(clippy::result_large_err)]

mod fsutil;
pub mod fuzzing;
mod net;
mod sm;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use store::Recovery;

openraft::declare_raft_types!(
    /// openraft's type configuration for the quorum (crate-internal in spirit).
    pub TypeConfig:
        D = Vec<u8>,
        R = Vec<u8>,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The application's deterministic state machine.
pub trait StateMachine: Send + 'static {
    /// Apply one committed command at log index `index`; returns the response bytes given to
    /// the proposer (on the leader; discarded elsewhere).
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The full state, as bytes [`StateMachine::restore`] accepts.
    fn snapshot(&self) -> Vec<u8>;
    /// Replace the whole state with a snapshot.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Serves application requests on the leader (controller RPCs).
pub trait AppHandler: Send + Sync + 'static {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;
}

/// The name of the log directory under `data_dir` (Kafka's name for the metadata log).
pub const LOG_DIR_NAME: &str = "__cluster_metadata-0";

#[derive(Clone, Debug)]
pub struct QuorumConfig {
    pub node_id: u64,
    /// The cluster this node belongs to (`meta.properties`). Sent in the handshake of every
    /// quorum connection; connections from another cluster are refused (docs/format-quorum.md).
    pub cluster_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The voters (including this node if it is one). Used to bootstrap and as an address
    /// book until the replicated membership is known.
    pub voters: BTreeMap<u64, SocketAddr>,
    /// Exactly one voter initializes the cluster, on first start with an empty log.
    pub bootstrap: bool,
    /// Election timeout range. openraft 0.9 also makes followers reject votes for a leader
    /// lease of `election_timeout_max_ms` after the last heartbeat, so a failover takes about
    /// `max + random(min..max)` plus one election round.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the latest snapshot (for slow followers).
    pub log_entries_kept_after_snapshot: u64,
    /// Largest RPC frame accepted or sent (also bounds a snapshot).
    pub max_frame_bytes: usize,
    /// A new `.raftlog` segment is started once the active one reaches this size.
    pub segment_bytes: u64,
    /// Deadline of one snapshot transfer.
    pub snapshot_timeout_ms: u64,
}

impl QuorumConfig {
    /// Defaults from docs/design/replication.md §1.5 and §1.9.
    pub fn new(
        node_id: u64,
        cluster_id: String,
        data_dir: PathBuf,
        listen: SocketAddr,
        voters: BTreeMap<u64, SocketAddr>,
    ) -> QuorumConfig {
        QuorumConfig {
            node_id,
            cluster_id,
            data_dir,
            listen,
            voters,
            bootstrap: false,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            heartbeat_interval_ms: 200,
            snapshot_every_entries: 10_000,
            log_entries_kept_after_snapshot: 1_000,
            max_frame_bytes: 64 << 20,
            segment_bytes: 8 << 20,
            snapshot_timeout_ms: 30_000,
        }
    }
}

/// Errors of the on-disk stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Refuse to start: the log or a snapshot is damaged in a way a torn write cannot explain.
    #[error("corrupt quorum data in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("encode: {0}")]
    Encode(String),
    #[error("state machine refused the snapshot: {0}")]
    Restore(String),
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This node is not the leader; `leader_hint` is the leader it knows of, if any.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<u64> },
    #[error("command of {0} bytes is too large for the frame limit")]
    CommandTooLarge(usize),
    #[error("no leader answered before the deadline")]
    Timeout,
    #[error("the quorum is shut down")]
    Shutdown,
    #[error("raft: {0}")]
    Raft(String),
}

/// A snapshot of [`Quorum::status`]. Indexes are Raft log indexes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumStatus {
    pub node_id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    /// The last index appended to this node's log.
    pub last_log_index: Option<u64>,
    /// The last index applied to this node's state machine (committed, on the leader).
    pub last_applied_index: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// On the leader: per member (itself included), the last index known to match its log.
    pub matched_index: Option<BTreeMap<u64, Option<u64>>>,
    /// On the leader: time since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

/// A running quorum member (voter or learner).
pub struct Quorum {
    node_id: u64,
    raft: Raft<TypeConfig>,
    app: Arc<dyn AppHandler>,
    peers: Arc<net::Peers>,
    voters: BTreeMap<u64, SocketAddr>,
    max_frame: usize,
    leader_rx: watch::Receiver<Option<u64>>,
    applied_rx: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
    recovery: Recovery,
    refused_rx: watch::Receiver<u64>,
}

impl Quorum {
    /// Opens the log and snapshots under `data_dir`, listens, starts openraft, and (if
    /// `bootstrap` and the log is empty) initializes the cluster with `voters`.
    pub async fn start(
        config: QuorumConfig,
        sm: Box<dyn StateMachine>,
        app: Arc<dyn AppHandler>,
    ) -> Result<Quorum, QuorumError> {
        if config.bootstrap && !config.voters.contains_key(&config.node_id) {
            return Err(QuorumError::Config(
                "a bootstrapping node must be one of the voters".into(),
            ));
        }
        if config.cluster_id.is_empty() || config.cluster_id.len() > 255 {
            return Err(QuorumError::Config(
                "the cluster id must be 1 to 255 bytes".into(),
            ));
        }
        if config.max_frame_bytes < 4096 {
            return Err(QuorumError::Config(
                "max_frame_bytes must be at least 4096".into(),
            ));
        }
        let dir = config.data_dir.join(LOG_DIR_NAME);
        let (log_store, recovery) = store::LogStore::open(&dir, config.segment_bytes)?;
        let (applied_tx, applied_rx) = watch::channel(0);
        let sm_store = sm::SmStore::open(&dir, sm, applied_tx)?;

        let raft_config = Config {
            cluster_name: "holdfast".into(),
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            heartbeat_interval: config.heartbeat_interval_ms,
            install_snapshot_timeout: config.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| QuorumError::Config(e.to_string()))?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| QuorumError::Bind {
                addr: config.listen,
                source,
            })?;
        let identity = net::Identity {
            cluster_id: config.cluster_id.clone(),
            node_id: config.node_id,
        };
        let peers = Arc::new(net::Peers::new(identity.clone(), config.max_frame_bytes));
        let factory = net::NetFactory {
            node_id: config.node_id,
            peers: peers.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            factory,
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?;

        let (leader_tx, leader_rx) = watch::channel(None);
        let mut metrics = raft.metrics();
        let leader_task = tokio::spawn(async move {
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                leader_tx.send_if_modified(|cur| {
                    let changed = *cur != leader;
                    *cur = leader;
                    changed
                });
                if metrics.changed().await.is_err() {
                    leader_tx.send_replace(None);
                    return;
                }
            }
        });
        let (refused_tx, refused_rx) = watch::channel(0);
        let ctx = Arc::new(net::ServerCtx {
            node_id: config.node_id,
            identity,
            refused: refused_tx,
            raft: raft.clone(),
            app: app.clone(),
            leader: leader_rx.clone(),
            max_frame: config.max_frame_bytes,
        });
        let server_task = tokio::spawn(net::serve(listener, ctx));
        let quorum = Quorum {
            node_id: config.node_id,
            raft,
            app,
            peers,
            voters: config.voters.clone(),
            max_frame: config.max_frame_bytes,
            leader_rx,
            applied_rx,
            tasks: vec![server_task, leader_task],
            recovery,
            refused_rx,
        };
        if config.bootstrap
            && !quorum
                .raft
                .is_initialized()
                .await
                .map_err(|e| QuorumError::Raft(e.to_string()))?
        {
            let members: BTreeMap<u64, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
                .collect();
            match quorum.raft.initialize(members).await {
                Ok(()) => tracing::info!(node = config.node_id, "quorum bootstrapped"),
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(error = %e, "quorum already initialized")
                }
                Err(e) => return Err(QuorumError::Raft(e.to_string())),
            }
        }
        Ok(quorum)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// What recovery of the log found at start (torn bytes cut, entries, segments).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// On the leader: replicate, commit and apply `command`; returns (log index, response).
    /// Elsewhere: `Err(NotLeader { leader_hint })`.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), QuorumError> {
        // Entries travel as JSON arrays of numbers (≤ 4 bytes per byte) inside append frames.
        if command.len().saturating_mul(4).saturating_add(4096) > self.max_frame {
            return Err(QuorumError::CommandTooLarge(command.len()));
        }
        match self.raft.client_write(command).await {
            Ok(resp) => Ok((resp.log_id.index, resp.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(QuorumError::NotLeader {
                    leader_hint: f.leader_id,
                })
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
            Err(e) => Err(QuorumError::Raft(e.to_string())),
        }
    }

    fn leader_addr(&self, leader: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let from_membership = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone());
        from_membership.or_else(|| self.voters.get(&leader).map(|a| a.to_string()))
    }

    /// Sends `request` to the current leader's [`AppHandler`] (locally if this node leads);
    /// retries across leader changes and unreachable leaders until `timeout`.
    pub async fn call_leader(
        &self,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, QuorumError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut leader_rx = self.leader_rx.clone();
        // A node that is not (yet) a member, e.g. a broker-only node before the controller
        // added it as a learner, learns of no leader from Raft: it asks the configured voters
        // in turn and follows their hints.
        let voters: Vec<u64> = self.voters.keys().copied().collect();
        let mut next_voter = 0usize;
        let mut hint: Option<u64> = None;
        loop {
            let leader = *leader_rx.borrow_and_update();
            let target = match leader.or(hint.take()) {
                Some(id) => Some(id),
                None if voters.is_empty() => None,
                None => {
                    next_voter = next_voter.wrapping_add(1);
                    Some(voters[next_voter % voters.len()])
                }
            };
            match target {
                Some(id) if id == self.node_id => return Ok(self.app.handle(request).await),
                Some(id) => {
                    if let Some(addr) = self.leader_addr(id) {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let peer = self.peers.get(id, &addr);
                        match peer.call(net::Kind::AppReq, &request, left).await {
                            Ok(f) if f.kind == net::Kind::AppResp => return Ok(f.body),
                            Ok(f) if f.kind == net::Kind::NotLeader => {
                                hint = serde_json::from_slice::<Option<u64>>(&f.body)
                                    .ok()
                                    .flatten()
                                    .filter(|h| *h != id);
                            }
                            Ok(f) => {
                                tracing::warn!(kind = ?f.kind, "unexpected reply to an app request")
                            }
                            Err(e) => {
                                tracing::debug!(node = id, error = %e, "app request failed")
                            }
                        }
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QuorumError::Timeout);
            }
            if hint.is_some() {
                continue;
            }
            tracing::debug!(?leader, "waiting for a leader to serve an app request");
            // Wait for a leader change, but retry at least every 100 ms (the leader we know of
            // may be unreachable while nobody has noticed yet).
            let pause = tokio::time::Instant::now() + Duration::from_millis(100);
            let _ = tokio::time::timeout_at(pause.min(deadline), leader_rx.changed()).await;
        }
    }

    /// The current leader's id, as this node knows it.
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.leader_rx.clone()
    }

    /// How many inbound quorum connections this node refused because they came from another
    /// cluster or were meant for another node id (e.g. a node of an earlier cluster still
    /// running with this node's address in its voter list).
    pub fn refused_watch(&self) -> watch::Receiver<u64> {
        self.refused_rx.clone()
    }

    /// The last log index applied to the local state machine.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_rx.clone()
    }

    /// On the leader: add a non-voting member (committed as a membership change); with
    /// `wait_caught_up`, also wait until it has caught up.
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: SocketAddr,
        wait_caught_up: bool,
    ) -> Result<(), QuorumError> {
        match self
            .raft
            .add_learner(node_id, BasicNode::new(addr.to_string()), wait_caught_up)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(QuorumError::NotLeader {
                    leader_hint: f.leader_id,
                })
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
            Err(e) => Err(QuorumError::Raft(e.to_string())),
        }
    }

    /// On the leader: change the membership's learners (never voters, whose address change
    /// could split the quorum): `set` adds a learner or replaces a learner's address,
    /// `remove` drops learners. Committed as a membership change.
    pub async fn change_learners(
        &self,
        set: BTreeMap<u64, SocketAddr>,
        remove: BTreeSet<u64>,
    ) -> Result<(), QuorumError> {
        let voters = self.voter_ids();
        if let Some(v) = set
            .keys()
            .chain(remove.iter())
            .find(|id| voters.contains(id))
        {
            return Err(QuorumError::Raft(format!(
                "node {v} is a voter: voters are not changed"
            )));
        }
        let changes = if remove.is_empty() {
            ChangeMembers::SetNodes(
                set.into_iter()
                    .map(|(id, a)| (id, BasicNode::new(a.to_string())))
                    .collect(),
            )
        } else if set.is_empty() {
            ChangeMembers::RemoveNodes(remove)
        } else {
            return Err(QuorumError::Raft(
                "set and remove learners in separate changes".into(),
            ));
        };
        match self.raft.change_membership(changes, true).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(QuorumError::NotLeader {
                    leader_hint: f.leader_id,
                })
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
            Err(e) => Err(QuorumError::Raft(e.to_string())),
        }
    }

    /// The quorum as this node sees it (Kafka's DescribeQuorum): term, leader, its own log,
    /// the membership, and, on the leader only, how far each member's log matches.
    pub fn status(&self) -> QuorumStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        QuorumStatus {
            node_id: self.node_id,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            matched_index: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect()
            }),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// Every member (voters and learners) with its address, as replicated.
    pub fn members(&self) -> BTreeMap<u64, String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The voter ids of the replicated membership.
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Stops openraft, the listener and every connection.
    pub async fn shutdown(mut self) -> Result<(), QuorumError> {
        let res = self
            .raft
            .shutdown()
            .await
            .map_err(|e| QuorumError::Raft(e.to_string()));
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.peers.close_all().await;
        res
    }
}

impl Drop for Quorum {
    /// Dropped without [`Quorum::shutdown`]: stop the listener now and openraft in the
    /// background (if a runtime is still there).
    fn drop(&mut self) {
        if self.tasks.is_empty() {
            return; // already shut down
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            let peers = self.peers.clone();
            handle.spawn(async move {
                let _ = raft.shutdown().await;
                peers.close_all().await;
            });
        }
    }
}

fn fatal(e: openraft::error::Fatal<u64>) -> QuorumError {
    match e {
        openraft::error::Fatal::Stopped => QuorumError::Shutdown,
        other => QuorumError::Raft(other.to_string()),
    }
}
