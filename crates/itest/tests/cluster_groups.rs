//! The group coordinator in cluster mode (docs/cluster.md, design §4): three real
//! `holdfast serve` processes on loopback, driven by rdkafka consumers in one group on an
//! RF 3 topic. One cluster for the whole file: FindCoordinator creates the RF 3
//! `__consumer_offsets` and names its partition's leader; a non-coordinator answers
//! NOT_COORDINATOR; two consumers consume everything with committed offsets; SIGKILL of the
//! coordinator: the group finds the new one, OffsetFetch there returns the last committed
//! offsets, the consumers go on, and no committed offset ever goes backwards.
//!
//! Build first: `cargo build -p holdfast && cargo test -p holdfast-itest --test cluster_groups`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_client::Client;
use kafka_protocol::messages::{GroupId, HeartbeatRequest, OffsetFetchRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;
const TOPIC: &str = "orders";
const GROUP: &str = "itest-cluster-group";
const NOT_COORDINATOR: i16 = 16;
fn bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("HOLDFAST_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/holdfast"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build -p holdfast` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

struct Node {
    id: i32,
    addr: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Node>,
    voters: String,
    root: PathBuf,
}

impl Cluster {
    /// Formats three data dirs (node 1 bootstraps the quorum) and starts the nodes.
    fn start() -> Result<Cluster> {
        let bin = bin()?;
        let root = std::env::temp_dir().join(format!("holdfast-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let out = Command::new(&bin).arg("random-uuid").output()?;
        let cluster_id = String::from_utf8(out.stdout)?.trim().to_string();
        assert_eq!(cluster_id.len(), 22, "random-uuid prints a 22-char id");
        let mut nodes = Vec::new();
        let mut voters = Vec::new();
        for id in 1..=3 {
            let dir = root.join(format!("node{id}"));
            let mut fmt = Command::new(&bin);
            fmt.args(["format", "--data-dir"]).arg(&dir).args([
                "--node-id",
                &id.to_string(),
                "--cluster-id",
                &cluster_id,
            ]);
            if id == 1 {
                fmt.arg("--bootstrap");
            }
            let status = fmt.status()?;
            assert!(status.success(), "format node {id}");
            voters.push(format!("{id}@127.0.0.1:{}", free_port()?));
            nodes.push(Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                log: root.join(format!("node{id}.stderr")),
                dir,
                child: None,
            });
        }
        // Formatting never reuses a directory (a wiped voter must not come back as itself).
        let again = Command::new(&bin)
            .args(["format", "--data-dir"])
            .arg(&nodes[0].dir)
            .args(["--node-id", "1", "--cluster-id", &cluster_id])
            .stderr(Stdio::null())
            .status()?;
        assert!(!again.success(), "formatting a formatted dir is refused");
        let mut c = Cluster {
            nodes,
            voters: voters.join(","),
            root,
        };
        for i in 0..3 {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let bin = bin()?;
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut child = Command::new(&bin)
            .args(["serve", "--data-dir"])
            .arg(&n.dir)
            .args(["--node-id", &n.id.to_string(), "--listen", &n.addr])
            .args(["--controller-quorum-voters", &self.voters])
            .args(["--set", "broker.heartbeat.interval.ms=500"])
            .args(["--set", "broker.session.timeout.ms=3000"])
            .args(["--set", "replica.lag.time.max.ms=2000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(
                if std::env::var_os("HOLDFAST_ITEST_LOG").is_some_and(|v| v == "inherit") {
                    Stdio::inherit()
                } else {
                    Stdio::from(log)
                },
            )
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("holdfast listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            bail!("node {} did not report listening in 30 s", n.id);
        }
        n.child = Some(child);
        Ok(())
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn node(&self, id: i32) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- node {} log ({}), last lines:", n.id, n.log.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unfenced brokers and, for `topic`, partition → (leader, replicas) as `addr` sees them.
async fn view(addr: &str, topic: &str) -> Option<(BTreeSet<i32>, BTreeMap<i32, (i32, Vec<i32>)>)> {
    let mut c = Client::connect(addr, "itest", Duration::from_secs(5))
        .await
        .ok()?;
    let md = c.metadata(Some(vec![topic.to_string()])).await.ok()?;
    let brokers = md.brokers.iter().map(|b| b.node_id.0).collect();
    let mut parts = BTreeMap::new();
    for t in &md.topics {
        for p in &t.partitions {
            parts.insert(
                p.partition_index,
                (p.leader_id.0, p.replica_nodes.iter().map(|r| r.0).collect()),
            );
        }
    }
    Some((brokers, parts))
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

async fn create_topic(bootstrap: &str) -> Result<()> {
    let t = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin(bootstrap)?.create_topics([&t], &opts).await?;
    match res.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((n, code))) => bail!("create {n}: {code:?}"),
        None => bail!("no result"),
    }
}

fn producer(bootstrap: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// Produces `n` records `<phase>-<i>` round-robin over the partitions; all acknowledged.
async fn produce(p: &FutureProducer, phase: &str, n: usize) -> Result<()> {
    let values: Vec<String> = (0..n).map(|i| format!("{phase}-{i:06}")).collect();
    let mut futs = Vec::with_capacity(n);
    for (i, v) in values.iter().enumerate() {
        let part = (i as i32) % PARTITIONS;
        futs.push(p.send(
            FutureRecord::<(), _>::to(TOPIC).payload(v).partition(part),
            Duration::from_secs(60),
        ));
    }
    for f in futs {
        if let Err((e, _)) = f.await {
            bail!("produce failed: {e}");
        }
    }
    Ok(())
}

/// OffsetFetch (v7, all partitions) sent to broker `node`: (error code, partition → offset).
async fn offset_fetch(c: &mut Client, node: i32) -> Result<(i16, BTreeMap<i32, i64>)> {
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(StrBytes::from_static_str(GROUP));
    req.topics = None;
    let resp = c.send_to(node, req, 7).await?;
    let mut out = BTreeMap::new();
    for t in &resp.topics {
        if t.name.0.as_str() != TOPIC {
            continue;
        }
        for p in &t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok((resp.error_code, out))
}

/// One group member in a thread: polls, records what it read, commits synchronously every
/// 50 records and whenever it goes idle, until `stop`.
fn member(
    bootstrap: String,
    seen: Arc<Mutex<BTreeMap<(i32, i64), String>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || -> Result<u64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "500")
            .create()?;
        c.subscribe(&[TOPIC])?;
        let mut pending = 0u64;
        let mut commits = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut idle = false;
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((m.partition(), m.offset()), v);
                    pending += 1;
                }
                // Transient errors (coordinator moved, partition leader changed) are retried
                // by librdkafka.
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => idle = true,
            }
            if pending >= 50 || (pending > 0 && idle) {
                // A failed commit (e.g. NOT_COORDINATOR during the failover) is retried on
                // the next round with the then current positions.
                match c.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => {
                        pending = 0;
                        commits += 1;
                    }
                    Err(e) => eprintln!("commit: {e}"),
                }
            }
        }
        Ok(commits)
    })
}

/// Fails if a committed offset is lower than one observed before (on any coordinator).
fn no_regression(max: &mut BTreeMap<i32, i64>, now: &BTreeMap<i32, i64>) -> Result<()> {
    for (p, o) in now {
        let m = max.entry(*p).or_insert(*o);
        if o < m {
            bail!("committed offset of partition {p} went back from {m} to {o}");
        }
        *m = *o;
    }
    for p in max.keys() {
        if !now.contains_key(p) {
            bail!("committed offset of partition {p} disappeared");
        }
    }
    Ok(())
}

/// Polls OffsetFetch on `node` until it answers `want` (checking no regression on the way).
async fn wait_committed(
    c: &mut Client,
    node: i32,
    want: &BTreeMap<i32, i64>,
    max: &mut BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((0, offs)) = offset_fetch(c, node).await {
            no_regression(max, &offs)?;
            if &offs == want {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let last = offset_fetch(c, node).await.ok();
            bail!("committed offsets on node {node} did not reach {want:?} (last {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_coordinator_follows_leadership() -> Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start()?;
    let boot = cluster.bootstrap();
    let first = cluster.nodes[0].addr.clone();
    wait_for("3 unfenced brokers", Duration::from_secs(30), || async {
        view(&first, TOPIC)
            .await
            .filter(|v| v.0.len() == 3)
            .map(|_| ())
    })
    .await?;
    create_topic(&boot).await?;
    wait_for(
        "leaders of every partition",
        Duration::from_secs(30),
        || async {
            view(&first, TOPIC)
                .await
                .filter(|v| v.1.len() == PARTITIONS as usize && v.1.values().all(|p| p.0 >= 0))
                .map(|_| ())
        },
    )
    .await?;

    // FindCoordinator creates __consumer_offsets (RF 3 by offsets.topic.replication.factor)
    // and names the leader of the group's partition.
    eprintln!("cluster up, topic created: {:?}", started.elapsed());
    let mut client = Client::connect(&boot, "itest", Duration::from_secs(20)).await?;
    let t0 = Instant::now();
    let coord = client.group_coordinator(GROUP).await?;
    let found_in = t0.elapsed();
    let (_, offsets_topic) = view(&first, "__consumer_offsets")
        .await
        .context("metadata of __consumer_offsets")?;
    assert_eq!(offsets_topic.len(), 10, "offsets.topic.num.partitions");
    assert!(
        offsets_topic.values().all(|(_, r)| r.len() == 3),
        "__consumer_offsets has RF 3: {offsets_topic:?}"
    );
    // Kafka's Utils.abs("itest-cluster-group".hashCode()) % 10.
    let mut h: i32 = 0;
    for u in GROUP.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(u));
    }
    let part = h.wrapping_abs().max(0) % 10;
    assert_eq!(
        offsets_topic[&part].0, coord,
        "the coordinator leads partition {part}"
    );
    // The coordinator serves the group once loaded; the other brokers answer NOT_COORDINATOR.
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while offset_fetch(&mut client, coord).await?.0 != 0 {
        if Instant::now() >= deadline {
            bail!("coordinator {coord} never served OffsetFetch");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loaded_in = t1.elapsed();
    for n in [1, 2, 3].into_iter().filter(|n| *n != coord) {
        let (code, _) = offset_fetch(&mut client, n).await?;
        assert_eq!(code, NOT_COORDINATOR, "OffsetFetch on non-coordinator {n}");
        let mut hb = HeartbeatRequest::default();
        hb.group_id = GroupId(StrBytes::from_static_str(GROUP));
        hb.generation_id = 1;
        hb.member_id = StrBytes::from_static_str("nobody");
        let r = client.send_to(n, hb, 4).await?;
        assert_eq!(
            r.error_code, NOT_COORDINATOR,
            "Heartbeat on non-coordinator {n}"
        );
    }
    eprintln!(
        "coordinator of {GROUP}: node {coord} (partition {part}); FindCoordinator incl. topic \
         creation {found_in:?}, served {loaded_in:?} later"
    );

    // Two members consume everything and commit it.
    let prod = producer(&boot)?;
    produce(&prod, "a", 2000).await?;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let members = [
        member(boot.clone(), Arc::clone(&seen), Arc::clone(&stop)),
        member(boot.clone(), Arc::clone(&seen), Arc::clone(&stop)),
    ];
    let mut max = BTreeMap::new();
    let end_a: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 500)).collect();
    let t2 = Instant::now();
    wait_committed(
        &mut client,
        coord,
        &end_a,
        &mut max,
        Duration::from_secs(90),
    )
    .await?;
    eprintln!(
        "2,000 records consumed and committed by the group in {:?}",
        t2.elapsed()
    );

    // SIGKILL of the coordinator: a new one is elected with the partition's leadership and
    // serves the same committed offsets.
    let killed_at = Instant::now();
    let victim = cluster.node(coord);
    cluster.kill(victim);
    let mut c2 = Client::connect(&cluster.bootstrap(), "itest2", Duration::from_secs(5)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (new_coord, after) = loop {
        if let Ok(n) = c2.group_coordinator(GROUP).await {
            if n != coord {
                if let Ok((0, offs)) = offset_fetch(&mut c2, n).await {
                    break (n, offs);
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("no new coordinator within 60 s of the SIGKILL");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = killed_at.elapsed();
    no_regression(&mut max, &after)?;
    assert_eq!(
        after, end_a,
        "committed offsets survive the coordinator's SIGKILL"
    );
    eprintln!("SIGKILL of coordinator {coord} -> node {new_coord} serves the offsets after {failover:?}: {after:?}");

    // The members find the new coordinator and go on.
    let tb = Instant::now();
    produce(&prod, "b", 2000).await?;
    eprintln!(
        "2,000 more produced (partition leaders failed over too) in {:?}",
        tb.elapsed()
    );
    let end_b: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 1000)).collect();
    let t3 = Instant::now();
    wait_committed(
        &mut c2,
        new_coord,
        &end_b,
        &mut max,
        Duration::from_secs(90),
    )
    .await?;
    eprintln!(
        "2,000 more consumed and committed through the new coordinator in {:?}",
        t3.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let tc = Instant::now();
    let mut commits = Vec::new();
    for m in members {
        commits.push(m.join().map_err(|_| anyhow::anyhow!("member panicked"))??);
    }
    eprintln!("members closed in {:?}", tc.elapsed());
    assert!(
        commits.iter().all(|c| *c > 0),
        "both members committed: {commits:?}"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for p in 0..PARTITIONS {
        for o in 0..1000 {
            assert!(seen.contains_key(&(p, o)), "record {p}/{o} was consumed");
        }
    }
    eprintln!("members' synchronous commits: {commits:?}");
    Ok(())
}
