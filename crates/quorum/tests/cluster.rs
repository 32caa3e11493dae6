//! Quorum tests over real loopback TCP with the real disk stores in temp dirs.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_quorum::{AppHandler, Quorum, QuorumConfig, QuorumError, StateMachine, StoreError};

const DEADLINE: Duration = Duration::from_secs(30);
const CLUSTER_ID: &str = "test-cluster";

type Applied = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records every applied command with its index; the snapshot is the whole record.
struct Recorder(Applied);

impl StateMachine for Recorder {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.lock().unwrap().push((index, command.to_vec()));
        [b"applied:".as_slice(), command].concat()
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.0.lock().unwrap()).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self.0.lock().unwrap() = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Echo(u64);

impl AppHandler for Echo {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
        let id = self.0;
        Box::pin(async move { [format!("node{id}:").as_bytes(), &request].concat() })
    }
}

static N: AtomicU64 = AtomicU64::new(0);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "holdfast-quorum-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Node {
    quorum: Quorum,
    applied: Applied,
}

struct Cluster {
    root: PathBuf,
    addrs: BTreeMap<u64, SocketAddr>,
    voters: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, Node>,
    snapshot_every: u64,
}

impl Cluster {
    async fn new(tag: &str, voters: u64, snapshot_every: u64) -> Result<Cluster> {
        let addrs: BTreeMap<u64, SocketAddr> = (1..=voters).map(|id| (id, free_addr())).collect();
        let mut c = Cluster {
            root: temp_dir(tag),
            voters: addrs.clone(),
            addrs,
            nodes: BTreeMap::new(),
            snapshot_every,
        };
        for id in 1..=voters {
            c.start(id).await?;
        }
        Ok(c)
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("node{id}"))
    }

    fn config(&mut self, id: u64) -> QuorumConfig {
        let listen = *self.addrs.entry(id).or_insert_with(free_addr);
        let mut cfg = QuorumConfig::new(
            id,
            CLUSTER_ID.into(),
            self.dir(id),
            listen,
            self.voters.clone(),
        );
        cfg.bootstrap = id == 1;
        cfg.election_timeout_min_ms = 500;
        cfg.election_timeout_max_ms = 1000;
        cfg.heartbeat_interval_ms = 100;
        cfg.snapshot_every_entries = self.snapshot_every;
        cfg.log_entries_kept_after_snapshot = 5;
        cfg
    }

    async fn start(&mut self, id: u64) -> Result<()> {
        let cfg = self.config(id);
        let applied: Applied = Arc::default();
        let quorum =
            Quorum::start(cfg, Box::new(Recorder(applied.clone())), Arc::new(Echo(id))).await?;
        self.nodes.insert(id, Node { quorum, applied });
        Ok(())
    }

    async fn stop(&mut self, id: u64) -> Result<()> {
        if let Some(n) = self.nodes.remove(&id) {
            n.quorum.shutdown().await?;
        }
        Ok(())
    }

    fn node(&self, id: u64) -> &Quorum {
        &self.nodes[&id].quorum
    }

    /// Waits until every running node reports the same leader.
    async fn leader(&self) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut rxs: Vec<_> = self
            .nodes
            .values()
            .map(|n| n.quorum.leader_watch())
            .collect();
        loop {
            let seen: Vec<Option<u64>> = rxs.iter_mut().map(|rx| *rx.borrow_and_update()).collect();
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && self.nodes.contains_key(l) {
                    return Ok(*l);
                }
            }
            let changes = futures_any(&mut rxs);
            if tokio::time::timeout_at(deadline, changes).await.is_err() {
                bail!("no agreed leader before the deadline: {seen:?}");
            }
        }
    }

    async fn wait_applied(&self, id: u64, index: u64) -> Result<()> {
        let mut rx = self.node(id).applied_watch();
        tokio::time::timeout(DEADLINE, rx.wait_for(|a| *a >= index))
            .await
            .with_context(|| format!("node {id} did not apply {index}"))??;
        Ok(())
    }

    fn applied(&self, id: u64) -> Vec<(u64, Vec<u8>)> {
        self.nodes[&id].applied.lock().unwrap().clone()
    }

    async fn shutdown(mut self) -> Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        let _ = std::fs::remove_dir_all(&self.root);
        Ok(())
    }
}

/// Resolves when any of the watches changes.
async fn futures_any(rxs: &mut [tokio::sync::watch::Receiver<Option<u64>>]) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    for r in rxs.iter() {
        let mut r = r.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            if r.changed().await.is_ok() {
                let _ = tx.send(()).await;
            }
        }));
    }
    drop(tx);
    let _ = rx.recv().await;
    for t in tasks {
        t.abort();
    }
}

/// Proposes on whichever node leads, retrying through NotLeader until the deadline.
async fn propose_anywhere(c: &Cluster, cmd: &[u8]) -> Result<(u64, Vec<u8>)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = c.leader().await?;
        match c.node(leader).propose(cmd.to_vec()).await {
            Ok(r) => return Ok(r),
            Err(QuorumError::NotLeader { .. }) if Instant::now() < deadline => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_commit_the_same_commands_in_the_same_order() -> Result<()> {
    let c = Cluster::new("order", 3, 10_000).await?;
    let leader = c.leader().await?;
    let started = Instant::now();
    let mut last = 0;
    const N: usize = 50;
    for i in 0..N {
        let cmd = format!("cmd-{i}").into_bytes();
        let (index, resp) = c.node(leader).propose(cmd.clone()).await?;
        assert!(index > last, "indexes grow");
        assert_eq!(resp, [b"applied:".as_slice(), &cmd].concat());
        last = index;
    }
    let per_commit = started.elapsed() / N as u32;
    println!("3-node sequential commit latency (fsync on every node): {per_commit:?} per command");

    // Concurrent proposals are all committed, in one order everywhere.
    let mut handles = Vec::new();
    let q = Arc::new(());
    for i in 0..20 {
        let _ = &q;
        let fut = c.node(leader).propose(format!("par-{i}").into_bytes());
        handles.push(fut);
    }
    for r in futures_join(handles).await {
        last = last.max(r?.0);
    }
    for id in 1..=3 {
        c.wait_applied(id, last).await?;
    }
    let reference = c.applied(leader);
    assert_eq!(reference.len(), N + 20);
    for id in 1..=3 {
        assert_eq!(
            c.applied(id),
            reference,
            "node {id} applied a different sequence"
        );
    }

    // A follower refuses to propose and names the leader.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    match c.node(follower).propose(b"nope".to_vec()).await {
        Err(QuorumError::NotLeader { leader_hint }) => assert_eq!(leader_hint, Some(leader)),
        other => bail!("expected NotLeader, got {other:?}"),
    }
    // call_leader from a follower reaches the leader's AppHandler.
    let resp = c
        .node(follower)
        .call_leader(b"hello".to_vec(), DEADLINE)
        .await?;
    assert_eq!(resp, format!("node{leader}:hello").into_bytes());
    // ... and on the leader it is served locally.
    let resp = c
        .node(leader)
        .call_leader(b"self".to_vec(), DEADLINE)
        .await?;
    assert_eq!(resp, format!("node{leader}:self").into_bytes());
    c.shutdown().await
}

async fn futures_join<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    // Poll all proposals concurrently on this task.
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_then_restarted_node_catches_up() -> Result<()> {
    let mut c = Cluster::new("failover", 3, 10_000).await?;
    let old = c.leader().await?;
    for i in 0..10 {
        c.node(old)
            .propose(format!("before-{i}").into_bytes())
            .await?;
    }
    let killed = Instant::now();
    c.stop(old).await?;
    let new = c.leader().await?;
    assert_ne!(new, old);
    let elected = killed.elapsed();
    let (index, _) = propose_anywhere(&c, b"after-failover").await?;
    let committed = killed.elapsed();
    println!("leader failover: new leader {new} known after {elected:?}, first commit after {committed:?}");
    assert!(committed < DEADLINE);
    // call_leader from the surviving follower reaches the new leader.
    let survivor = (1..=3).find(|id| *id != old && *id != new).unwrap();
    let resp = c
        .node(survivor)
        .call_leader(b"ping".to_vec(), DEADLINE)
        .await?;
    assert_eq!(resp, format!("node{new}:ping").into_bytes());

    // The old leader restarts from its data dir and catches up.
    c.start(old).await?;
    let (last, _) = propose_anywhere(&c, b"after-restart").await?;
    assert!(last > index);
    for id in 1..=3 {
        c.wait_applied(id, last).await?;
    }
    let reference = c.applied(new);
    assert_eq!(reference.len(), 12);
    assert_eq!(c.applied(old), reference);
    c.shutdown().await
}

/// A follower that was down while the leader snapshotted and purged its log behind the
/// snapshot catches up through a snapshot install. (Not a *wiped* voter: a voter that lost its
/// log must not rejoin under its old id; see docs/format-quorum.md, "Lost data".)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_node_catches_up_through_a_snapshot() -> Result<()> {
    let mut c = Cluster::new("snapshot", 3, 20).await?;
    let leader = c.leader().await?;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    c.node(leader).propose(b"first".to_vec()).await?;
    c.stop(victim).await?;
    let mut last = 0;
    for i in 0..100 {
        last = c
            .node(leader)
            .propose(format!("cmd-{i}").into_bytes())
            .await?
            .0;
    }
    // The leader has snapshotted (two files kept) and purged its log behind the snapshot.
    let root = c.root.clone();
    let snap_files = |id: u64| -> Result<usize> {
        let dir = root
            .join(format!("node{id}"))
            .join(holdfast_quorum::LOG_DIR_NAME);
        Ok(std::fs::read_dir(dir)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            })
            .count())
    };
    assert_eq!(snap_files(leader)?, 2);
    assert_eq!(snap_files(victim)?, 0);

    let started = Instant::now();
    c.start(victim).await?;
    c.wait_applied(victim, last).await?;
    println!(
        "lagging node caught up to index {last} via snapshot in {:?}",
        started.elapsed()
    );
    assert_eq!(c.applied(victim), c.applied(leader));
    assert!(
        snap_files(victim)? >= 1,
        "the follower installed a snapshot"
    );
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_receives_the_log() -> Result<()> {
    let mut c = Cluster::new("learner", 3, 10_000).await?;
    let leader = c.leader().await?;
    for i in 0..5 {
        c.node(leader)
            .propose(format!("early-{i}").into_bytes())
            .await?;
    }
    c.start(4).await?; // not a voter, not bootstrapping
    let addr4 = c.addrs[&4];
    c.node(leader).add_learner(4, addr4, true).await?;
    let mut last = 0;
    for i in 0..5 {
        last = c
            .node(leader)
            .propose(format!("late-{i}").into_bytes())
            .await?
            .0;
    }
    c.wait_applied(4, last).await?;
    assert_eq!(c.applied(4), c.applied(leader));
    assert!(!c.node(leader).voter_ids().contains(&4));
    let resp = c
        .node(4)
        .call_leader(b"from-learner".to_vec(), DEADLINE)
        .await?;
    assert_eq!(resp, format!("node{leader}:from-learner").into_bytes());
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_voter_restarts_through_torn_tail_and_refuses_corruption() -> Result<()> {
    let mut c = Cluster::new("single", 1, 10_000).await?;
    c.leader().await?;
    for i in 0..5 {
        c.node(1).propose(format!("cmd-{i}").into_bytes()).await?;
    }
    c.stop(1).await?;
    let log = c.dir(1).join(holdfast_quorum::LOG_DIR_NAME);
    let segment = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .context("no segment")?;

    // Torn tail: the last (unacknowledged-looking) bytes are cut; the node starts and commits.
    let len = std::fs::metadata(&segment)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(len - 3)?;
    c.start(1).await?;
    assert!(c.node(1).recovery().torn_bytes_cut > 0);
    c.leader().await?;
    let (last, _) = c.node(1).propose(b"after-torn".to_vec()).await?;
    c.wait_applied(1, last).await?;
    c.stop(1).await?;

    // A flipped byte in the middle of the log: refuse to start.
    let mut bytes = std::fs::read(&segment)?;
    bytes[40] ^= 0x55;
    std::fs::write(&segment, &bytes)?;
    match c.start(1).await {
        Err(e) => match e.downcast_ref::<QuorumError>() {
            Some(QuorumError::Store(StoreError::Corrupt { .. })) => {}
            _ => bail!("unexpected error: {e}"),
        },
        Ok(()) => bail!("a corrupt log started"),
    }
    c.shutdown().await
}

fn raw_frame(kind: u8, correlation: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((9 + body.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Sends `bytes` on a fresh connection and returns what the server answers before closing.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    s.shutdown().await?; // half-close: the server sees EOF after our bytes
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await??;
    Ok(out)
}

/// The handshake frame a node of `cluster` sends first to reach node `to`.
fn hello(cluster: &str, from: u64, to: u64) -> Vec<u8> {
    let body = format!(r#"{{"cluster_id":"{cluster}","from":{from},"to":{to}}}"#);
    raw_frame(11, 0, body.as_bytes())
}

/// `bytes` after a valid handshake to node `to`.
fn after_hello(to: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = hello(CLUSTER_ID, 99, to);
    out.extend_from_slice(bytes);
    out
}

/// Asserts that `answer` is exactly one Refused frame whose reason contains `why`.
fn assert_refused(answer: &[u8], why: &str) {
    assert!(
        answer.len() >= 13,
        "expected a Refused frame, got {answer:?}"
    );
    assert_eq!(answer[4], 12, "Refused kind");
    let len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    assert_eq!(answer.len(), 4 + len, "nothing after the Refused frame");
    let reason = String::from_utf8_lossy(&answer[13..]);
    assert!(
        reason.contains(why),
        "reason {reason:?} does not say {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_close_the_connection_and_the_node_keeps_serving() -> Result<()> {
    let c = Cluster::new("frames", 3, 10_000).await?;
    let leader = c.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let addr = c.addrs[&follower];
    let f = follower;

    // Length far beyond the limit: closed without reading (or allocating) a body.
    assert!(exchange(addr, &after_hello(f, &u32::MAX.to_be_bytes()))
        .await?
        .is_empty());
    // Length below the fixed header.
    assert!(exchange(addr, &after_hello(f, &[0, 0, 0, 3, 7, 0, 0]))
        .await?
        .is_empty());
    // Bad checksum.
    let mut bad = raw_frame(7, 1, b"hello");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(exchange(addr, &after_hello(f, &bad)).await?.is_empty());
    // Unknown kind, a response kind sent as a request, a second Hello.
    for kind in [200, 2, 11] {
        assert!(exchange(addr, &after_hello(f, &raw_frame(kind, 1, b"x")))
            .await?
            .is_empty());
    }
    // A request body that does not decode.
    assert!(
        exchange(addr, &after_hello(f, &raw_frame(1, 1, b"{not json")))
            .await?
            .is_empty()
    );
    // Truncated frame then EOF.
    assert!(
        exchange(addr, &after_hello(f, &raw_frame(7, 1, b"hello")[..10]))
            .await?
            .is_empty()
    );

    // The handshake: a connection that does not start with a Hello, or whose Hello names
    // another cluster or another node, gets one Refused frame and is closed; the request
    // pipelined after the refused Hello is not handled.
    let mut refused = c.node(follower).refused_watch();
    assert_eq!(*refused.borrow_and_update(), 0);
    assert_refused(&exchange(addr, &raw_frame(7, 1, b"a")).await?, "not Hello");
    let mut foreign = hello("another-cluster", leader, follower);
    foreign.extend(raw_frame(7, 1, b"a"));
    assert_refused(&exchange(addr, &foreign).await?, "another-cluster");
    assert_refused(
        &exchange(addr, &hello(CLUSTER_ID, leader, follower + 10)).await?,
        &format!("this is node {follower}"),
    );
    assert_refused(
        &exchange(addr, &raw_frame(11, 0, b"{}")).await?,
        "bad Hello",
    );
    assert_eq!(*refused.borrow_and_update(), 4);

    // A valid app request to a follower, pipelined twice: two NotLeader answers naming the leader.
    let mut two = raw_frame(7, 41, b"a");
    two.extend(raw_frame(7, 42, b"b"));
    let answer = exchange(addr, &after_hello(f, &two)).await?;
    assert_eq!(answer.len(), 2 * (13 + format!("{leader}").len()));
    assert_eq!(answer[4], 9, "NotLeader kind");
    let mut corrs = vec![u32::from_be_bytes(answer[5..9].try_into()?)];
    let second = 13 + format!("{leader}").len();
    corrs.push(u32::from_be_bytes(
        answer[second + 5..second + 9].try_into()?,
    ));
    corrs.sort();
    assert_eq!(corrs, vec![41, 42]);
    assert_eq!(&answer[13..second], format!("{leader}").as_bytes());

    // The cluster still commits.
    let (index, _) = c.node(leader).propose(b"still-alive".to_vec()).await?;
    c.wait_applied(follower, index).await?;
    c.shutdown().await
}

/// The cluster-start panic (docs/cluster.md, "Fixed: Raft leader panic"): a leader replicating
/// to a voter's address reached a freshly formatted node of *another* cluster that had taken
/// the address, took its "conflict" answers for a follower whose log had gone backwards, and
/// openraft's leader panicked ("follower log reversion ... matching: T1-N1-51; conflict: 51").
/// Now the new node refuses the foreign leader's connection: the leader sees an unreachable
/// peer and keeps committing with the others, and the new node takes nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_cluster_at_a_voters_address_is_refused() -> Result<()> {
    let mut c = Cluster::new("foreign", 3, 10_000).await?;
    let leader = c.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = c
            .node(leader)
            .propose(format!("a-{i}").into_bytes())
            .await?
            .0;
    }
    // The leader knows the follower matches `last`.
    c.wait_applied(follower, last).await?;
    c.stop(follower).await?;

    // A new, empty node of another cluster, with the same node id, at the same address.
    let mut cfg = c.config(follower);
    cfg.cluster_id = "another-cluster".into();
    cfg.data_dir = c.root.join("intruder");
    let applied: Applied = Arc::default();
    let intruder =
        Quorum::start(cfg, Box::new(Recorder(applied.clone())), Arc::new(Echo(99))).await?;
    let mut refused = intruder.refused_watch();
    tokio::time::timeout(DEADLINE, refused.wait_for(|n| *n >= 1))
        .await
        .context("the leader never reached the new node")??;

    // The leader is alive and still commits with the remaining voter.
    let (index, _) = c.node(leader).propose(b"after".to_vec()).await?;
    assert!(index > last);
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    c.wait_applied(other, index).await?;
    // The new node took nothing from the foreign leader: no leader, nothing applied.
    assert_eq!(*intruder.leader_watch().borrow(), None);
    assert_eq!(*intruder.applied_watch().borrow(), 0);
    assert!(applied.lock().unwrap().is_empty());
    intruder.shutdown().await?;
    c.shutdown().await
}
