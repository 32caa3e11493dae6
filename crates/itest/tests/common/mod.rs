//! A reusable N-node cluster fixture for the integration tests: real `holdfast format` +
//! `holdfast serve` processes on loopback (every node a combined controller and broker),
//! signals (SIGKILL, SIGTERM, SIGSTOP/SIGCONT), Metadata views through holdfast-client, and
//! rdkafka helpers: an idempotent `acks=all` load generator that records every acknowledged
//! record, a consumer tailing a topic while it is written, and the read-back check.
//!
//! Used through `mod common;` (tests/cluster_five.rs). The older test files keep their own
//! copies of the three-node fixture.
// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_client::Client;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub fn bin() -> Result<PathBuf> {
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

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Locks, ignoring poisoning (a panicking producer task must not hide the real failure).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Node {
    pub id: i32,
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// SIGSTOPped (not serving, but its process exists).
    pub stopped: bool,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub voters: String,
    pub root: PathBuf,
    /// `--set key=value` settings of every node.
    pub settings: Vec<String>,
    /// Keep the data and print the logs' tails on drop, as after a panic.
    pub failed: bool,
}

/// The settings the cluster tests use unless told otherwise: quick fencing (3 s session) and
/// ISR shrink (2 s lag).
pub const FAST_FAILURE_DETECTION: &[&str] = &[
    "broker.heartbeat.interval.ms=500",
    "broker.session.timeout.ms=3000",
    "replica.lag.time.max.ms=2000",
];

impl Cluster {
    /// Formats `n` data dirs (node 1 bootstraps the quorum; every node is a voter) and starts
    /// the nodes one after the other. `settings` are passed as `--set` to every node.
    pub fn start(tag: &str, n: i32, settings: &[&str]) -> Result<Cluster> {
        let bin = bin()?;
        let root = std::env::temp_dir().join(format!("holdfast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let out = Command::new(&bin).arg("random-uuid").output()?;
        let cluster_id = String::from_utf8(out.stdout)?.trim().to_string();
        assert_eq!(cluster_id.len(), 22, "random-uuid prints a 22-char id");
        let mut nodes = Vec::new();
        let mut voters = Vec::new();
        for id in 1..=n {
            let dir = root.join(format!("node{id}"));
            let mut fmt = Command::new(&bin);
            // `--cluster-id=<id>`: a random id may start with '-'.
            fmt.args(["format", "--data-dir"]).arg(&dir).args([
                "--node-id",
                &id.to_string(),
                &format!("--cluster-id={cluster_id}"),
            ]);
            if id == 1 {
                fmt.arg("--bootstrap");
            }
            let status = fmt.stdout(Stdio::null()).status()?;
            assert!(status.success(), "format node {id}");
            voters.push(format!("{id}@127.0.0.1:{}", free_port()?));
            nodes.push(Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                log: root.join(format!("node{id}.stderr")),
                dir,
                child: None,
                stopped: false,
            });
        }
        let mut c = Cluster {
            nodes,
            voters: voters.join(","),
            root,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            failed: false,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Starts node index `i` (again) and waits until it reports listening.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let bin = bin()?;
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--data-dir"])
            .arg(&n.dir)
            .args(["--node-id", &n.id.to_string(), "--listen", &n.addr])
            .args(["--controller-quorum-voters", &self.voters]);
        for s in &self.settings {
            cmd.args(["--set", s]);
        }
        let mut child = cmd
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
            let _ = child.wait();
            bail!("node {} did not report listening in 30 s", n.id);
        }
        n.child = Some(child);
        n.stopped = false;
        Ok(())
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].stopped = false;
    }

    /// SIGKILL of several nodes with one `kill` command (one kill(2) after the other, no
    /// scheduling gap between them), then reaps them.
    pub fn kill_together(&mut self, idx: &[usize]) -> Result<()> {
        let pids: Vec<String> = idx
            .iter()
            .filter_map(|i| self.nodes[*i].child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let ok = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status()?
            .success();
        if !ok {
            bail!("kill -KILL {pids:?} failed");
        }
        for i in idx {
            self.kill(*i);
        }
        Ok(())
    }

    /// Sends `sig` ("-STOP", "-CONT", "-TERM", …) to node index `i`.
    pub fn signal(&mut self, i: usize, sig: &str) -> Result<()> {
        let n = &mut self.nodes[i];
        let c = n
            .child
            .as_ref()
            .with_context(|| format!("node {} is not running", n.id))?;
        let ok = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} node {} failed", n.id);
        }
        match sig {
            "-STOP" => n.stopped = true,
            "-CONT" => n.stopped = false,
            _ => {}
        }
        Ok(())
    }

    /// SIGTERM (controlled shutdown); waits for a successful exit (bounded) and returns how
    /// long it took.
    pub fn terminate(&mut self, i: usize) -> Result<Duration> {
        let Some(mut c) = self.nodes[i].child.take() else {
            bail!("node {} is not running", self.nodes[i].id);
        };
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -TERM node {} failed", self.nodes[i].id);
        }
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("node {} exited with {status}", self.nodes[i].id);
                }
                return Ok(t0.elapsed());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "node {} did not exit within 60 s of SIGTERM",
                    self.nodes[i].id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Index of node `id`.
    pub fn node(&self, id: i32) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn addr(&self, id: i32) -> String {
        self.nodes[self.node(id)].addr.clone()
    }

    fn serving(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.stopped)
    }

    /// The addresses of the running, not stopped nodes.
    pub fn bootstrap(&self) -> String {
        self.serving()
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address of a running, not stopped node other than `not`.
    pub fn other_than(&self, not: &[i32]) -> Result<String> {
        self.serving()
            .find(|n| !not.contains(&n.id))
            .map(|n| n.addr.clone())
            .context("no other serving node")
    }

    /// The address of every node (running or not): librdkafka clients that live through
    /// restarts of every node bootstrap from all of them.
    pub fn all_addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].stopped {
                let _ = self.signal(i, "-CONT");
            }
            self.kill(i);
        }
        if self.failed
            || std::thread::panicking()
            || std::env::var_os("HOLDFAST_ITEST_KEEP").is_some()
        {
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

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One partition in a Metadata answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub leader: i32,
    pub replicas: Vec<i32>,
    /// Sorted.
    pub isr: Vec<i32>,
}

/// A Metadata answer as one node sees it.
#[derive(Clone, Debug)]
pub struct View {
    /// Unfenced brokers.
    pub brokers: BTreeSet<i32>,
    pub controller: i32,
    /// (topic, partition) → partition.
    pub parts: BTreeMap<(String, i32), Part>,
}

impl View {
    /// The partitions of `topic`, by index.
    pub fn topic(&self, topic: &str) -> BTreeMap<i32, Part> {
        self.parts
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), v)| (*p, v.clone()))
            .collect()
    }

    /// Every partition (of the topics asked for) has a leader and its whole replica set in
    /// its ISR.
    pub fn settled(&self) -> bool {
        !self.parts.is_empty()
            && self
                .parts
                .values()
                .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len())
    }
}

/// Metadata from `addr` (`topics` None: every topic), bounded by 3 s (a stopped node accepts
/// connections but never answers).
pub async fn view(addr: &str, topics: Option<&[&str]>) -> Option<View> {
    let fut = async {
        let mut c = Client::connect(addr, "itest", Duration::from_secs(3))
            .await
            .ok()?;
        let md = c
            .metadata(topics.map(|ts| ts.iter().map(|t| t.to_string()).collect()))
            .await
            .ok()?;
        let brokers = md.brokers.iter().map(|b| b.node_id.0).collect();
        let mut parts = BTreeMap::new();
        for t in &md.topics {
            if t.error_code != 0 {
                return None;
            }
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            for p in &t.partitions {
                let mut isr: Vec<i32> = p.isr_nodes.iter().map(|r| r.0).collect();
                isr.sort();
                parts.insert(
                    (name.clone(), p.partition_index),
                    Part {
                        leader: p.leader_id.0,
                        replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                        isr,
                    },
                );
            }
        }
        Some(View {
            brokers,
            controller: md.controller_id.0,
            parts,
        })
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

pub fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin(bootstrap)?.create_topics([&t], &opts).await?;
    match res.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((n, code))) => bail!("create {n}: {code:?}"),
        None => bail!("no result"),
    }
}

/// Creates `topic` and waits until `addr` shows every partition led with a full ISR.
pub async fn create_settled_topic(
    bootstrap: &str,
    addr: &str,
    topic: &str,
    partitions: i32,
    rf: i32,
) -> Result<BTreeMap<i32, Part>> {
    create_topic(bootstrap, topic, partitions, rf, &[]).await?;
    wait_for(
        &format!("{topic}: every partition led, full ISR"),
        Duration::from_secs(30),
        || async move {
            view(addr, Some(&[topic]))
                .await
                .filter(|v| v.settled() && v.parts.len() == partitions as usize)
                .map(|v| v.topic(topic))
        },
    )
    .await
}

/// Every record of `topic` from the beginning of each partition: (partition, offset) → value.
/// Reads until `want` records were seen (or 60 s), then half a second more.
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
) -> Result<BTreeMap<(i32, i64), String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "itest-read-back")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = BTreeMap::new();
    let mut extra_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if out.len() >= want && extra_until.is_none() {
            extra_until = Some(now + Duration::from_millis(500));
        }
        if now >= deadline || extra_until.is_some_and(|u| now >= u) {
            break;
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            if let Some(old) = out.insert((m.partition(), m.offset()), v.clone()) {
                if old != v {
                    bail!(
                        "{topic}-{} offset {} read as {old} and as {v}",
                        m.partition(),
                        m.offset()
                    );
                }
            }
        }
    }
    Ok(out)
}

pub fn idempotent_producer(bootstrap: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// Checks every acknowledged record (`acked`: (partition, offset) → value) is read back at
/// its offset, each value is read once, and each partition's values are in production order
/// (values are `<tag>-<partition>-<zero-padded sequence>`).
pub fn check_read_back(
    acked: &BTreeMap<(i32, i64), String>,
    read: &BTreeMap<(i32, i64), String>,
) -> Result<()> {
    let mut lost = 0;
    for (k, v) in acked {
        if read.get(k) != Some(v) {
            lost += 1;
            if lost < 5 {
                eprintln!("acknowledged {k:?}={v} read back as {:?}", read.get(k));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for v in read.values() {
        if !seen.insert(v.clone()) {
            bail!("record {v} read twice");
        }
    }
    if lost > 0 {
        bail!("{lost} of {} acknowledged records lost", acked.len());
    }
    let parts: BTreeSet<i32> = read.keys().map(|(p, _)| *p).collect();
    for p in parts {
        let seq: Vec<&String> = read
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|(_, v)| v)
            .collect();
        if let Some(w) = seq.windows(2).find(|w| w[0] >= w[1]) {
            bail!(
                "partition {p}: values out of production order ({} before {})",
                w[0],
                w[1]
            );
        }
    }
    Ok(())
}

/// What a [`Load`] saw.
#[derive(Default)]
pub struct LoadStats {
    /// (partition, offset) → value.
    pub acked: BTreeMap<(i32, i64), String>,
    /// When each acknowledgement arrived, with its partition.
    pub ack_times: Vec<(Instant, i32)>,
    /// Delivery errors reported to the application (after librdkafka's own retries).
    pub errors: Vec<String>,
}

/// An idempotent `acks=all` producer task writing `<tag>-<partition>-<seq>` values to
/// `topic` in rounds of `batch` records (each round's deliveries awaited before the next),
/// recording every acknowledgement. `pick(seq)` chooses the partition of record `seq`.
pub struct Load {
    pub stats: Arc<Mutex<LoadStats>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(
        bootstrap: &str,
        topic: &str,
        tag: &str,
        batch: usize,
        pick: impl Fn(u64) -> i32 + Send + 'static,
    ) -> Result<Load> {
        let producer = idempotent_producer(bootstrap)?;
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, tag) = (topic.to_string(), tag.to_string());
        let task = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut inflight = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    for _ in 0..batch {
                        let p = pick(i);
                        let v = format!("{tag}-{p}-{i:08}");
                        i += 1;
                        match producer
                            .send_result(FutureRecord::<(), _>::to(&topic).partition(p).payload(&v))
                        {
                            Ok(f) => inflight.push((v, f)),
                            Err((e, _)) => lock(&stats).errors.push(format!("enqueue: {e}")),
                        }
                    }
                    for (v, f) in inflight.drain(..) {
                        let r = f.await;
                        let mut s = lock(&stats);
                        match r {
                            Ok(Ok(d)) => {
                                s.ack_times.push((Instant::now(), d.partition));
                                s.acked.insert((d.partition, d.offset), v);
                            }
                            Ok(Err((e, _))) => s.errors.push(format!("{v}: {e}")),
                            Err(e) => s.errors.push(format!("{v}: {e}")),
                        }
                    }
                }
            })
        };
        Ok(Load { stats, stop, task })
    }

    pub fn acked(&self) -> usize {
        lock(&self.stats).acked.len()
    }

    /// Acknowledgements of partition `p` so far.
    pub fn acked_on(&self, p: i32) -> usize {
        lock(&self.stats)
            .acked
            .keys()
            .filter(|(q, _)| *q == p)
            .count()
    }

    /// Waits until `n` more records than `from` are acknowledged (on `partition`, if given).
    pub async fn wait_acked(
        &self,
        what: &str,
        partition: Option<i32>,
        from: usize,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        wait_for(what, timeout, || {
            let have = match partition {
                Some(p) => self.acked_on(p),
                None => self.acked(),
            };
            async move { (have >= from + n).then_some(()) }
        })
        .await
    }

    /// Stops after the current round and returns what it saw.
    pub async fn stop(self) -> Result<LoadStats> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?;
        let mut s = lock(&self.stats);
        Ok(std::mem::take(&mut *s))
    }
}

/// A consumer reading `topic` from the beginning of every partition while it is written,
/// in its own thread. Records every message in arrival order.
pub struct Tail {
    /// (partition, offset, value) in arrival order.
    pub seen: Arc<Mutex<Vec<(i32, i64, String)>>>,
    /// Errors the consumer reported (transport errors during failovers are expected).
    pub errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Tail {
    pub fn start(bootstrap: &str, topic: &str, partitions: i32) -> Result<Tail> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "itest-tail")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, errors, stop) = (Arc::clone(&seen), Arc::clone(&errors), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            let v = String::from_utf8_lossy(m.payload().unwrap_or_default())
                                .into_owned();
                            lock(&seen).push((m.partition(), m.offset(), v));
                        }
                        Some(Err(e)) => lock(&errors).push(e.to_string()),
                        None => {}
                    }
                }
                Ok(())
            })
        };
        Ok(Tail {
            seen,
            errors,
            stop,
            thread,
        })
    }

    /// Waits until every acknowledged value was seen, stops, and checks what was consumed:
    /// every acknowledged record, each record once (no offset delivered twice), values in
    /// production order per partition, and nothing consumed that is not in `log` (the final
    /// contents read back): a consumer never sees a record that is later lost.
    /// Returns (records consumed, consumer errors).
    pub async fn finish(
        self,
        acked: &BTreeMap<(i32, i64), String>,
        log: &BTreeMap<(i32, i64), String>,
    ) -> Result<(usize, usize)> {
        let want: BTreeSet<String> = acked.values().cloned().collect();
        let caught_up = wait_for(
            "the tailing consumer has every acknowledged record",
            Duration::from_secs(60),
            || {
                let seen: BTreeSet<String> =
                    lock(&self.seen).iter().map(|(_, _, v)| v.clone()).collect();
                let missing = want.difference(&seen).count();
                async move { (missing == 0).then_some(()) }
            },
        )
        .await;
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(r) => r?,
            Err(_) => bail!("tail thread panicked"),
        }
        let seen = lock(&self.seen).clone();
        let errors = lock(&self.errors).len();
        if let Err(e) = caught_up {
            let got: BTreeSet<String> = seen.iter().map(|(_, _, v)| v.clone()).collect();
            let missing: Vec<&String> = want.difference(&got).take(5).collect();
            bail!(
                "{e}: {} missing, e.g. {missing:?}",
                want.difference(&got).count()
            );
        }
        let mut last: BTreeMap<i32, (i64, String)> = BTreeMap::new();
        for (p, o, v) in &seen {
            if let Some((lo, lv)) = last.get(p) {
                if o <= lo || v <= lv {
                    let around: Vec<String> = seen
                        .iter()
                        .filter(|(q, _, _)| q == p)
                        .skip_while(|(_, q, _)| *q + 5 < *o)
                        .take(20)
                        .map(|(_, o, v)| format!("{o}={v}"))
                        .collect();
                    let errs = lock(&self.errors).clone();
                    bail!(
                        "tail: partition {p} delivered {o}={v} after {lo}={lv}; deliveries from \
                         there: {around:?}; consumer errors: {errs:?}"
                    );
                }
            }
            last.insert(*p, (*o, v.clone()));
            if log.get(&(*p, *o)) != Some(v) {
                bail!(
                    "tail consumed {p}/{o}={v}, the log now holds {:?} there",
                    log.get(&(*p, *o))
                );
            }
        }
        Ok((seen.len(), errors))
    }
}

/// The longest gap between two consecutive acknowledgements of partition `p` at or after
/// `from` (including the gap from `from` to the first one).
pub fn longest_ack_gap(times: &[(Instant, i32)], p: Option<i32>, from: Instant) -> Duration {
    let mut ts: Vec<Instant> = times
        .iter()
        .filter(|(t, q)| p.is_none_or(|p| p == *q) && *t >= from)
        .map(|(t, _)| *t)
        .collect();
    ts.sort();
    let mut prev = from;
    let mut max = Duration::ZERO;
    for t in ts {
        max = max.max(t - prev);
        prev = t;
    }
    max
}
