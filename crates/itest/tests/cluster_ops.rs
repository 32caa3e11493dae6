//! Leader elections as operations and controlled shutdown (docs/cluster.md): three real
//! `holdfast serve` processes on loopback, RF 3 topics, rdkafka producers and consumers,
//! holdfast-client for ElectLeaders (rdkafka does not wrap it).
//!
//! * After a clean restart of a preferred replica, ElectLeaders PREFERRED (all partitions)
//!   moves leadership back to it; electing again lists nothing; an explicit partition answers
//!   ELECTION_NOT_NEEDED.
//! * SIGTERM of a partition leader under an idempotent acks=all producer: leadership moves
//!   before the process exits, no acknowledged record is lost (timings printed).
//! * With `leader.imbalance.check.interval.seconds=1`, leadership returns to the preferred
//!   replica without any admin operation.
//!
//! Build first: `cargo build -p holdfast && cargo test -p holdfast-itest --test cluster_ops`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_client::Client;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ElectLeadersRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

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
    /// Extra `--set key=value` settings of every node.
    extra: Vec<String>,
}

impl Cluster {
    /// Formats three data dirs (node 1 bootstraps the quorum) and starts the nodes.
    fn start(tag: &str, extra: &[&str]) -> Result<Cluster> {
        let bin = bin()?;
        let root = std::env::temp_dir().join(format!("holdfast-ops-{tag}-{}", std::process::id()));
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
            // `--cluster-id=<id>`: a random id may start with '-'.
            fmt.args(["format", "--data-dir"]).arg(&dir).args([
                "--node-id",
                &id.to_string(),
                &format!("--cluster-id={cluster_id}"),
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
            .args(["--node-id", "1", &format!("--cluster-id={cluster_id}")])
            .stderr(Stdio::null())
            .status()?;
        assert!(!again.success(), "formatting a formatted dir is refused");
        let mut c = Cluster {
            nodes,
            voters: voters.join(","),
            root,
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
            .args(self.extra.iter().flat_map(|s| ["--set", s.as_str()]))
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

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Metadata as `addr` sees it: (unfenced brokers, controller, partition → (leader, replicas, isr)).
type View = (BTreeSet<i32>, i32, BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)>);

async fn view(addr: &str, topic: Option<&str>) -> Option<View> {
    let mut c = Client::connect(addr, "itest", Duration::from_secs(5))
        .await
        .ok()?;
    let md = c.metadata(topic.map(|t| vec![t.to_string()])).await.ok()?;
    let brokers = md.brokers.iter().map(|b| b.node_id.0).collect();
    let mut parts = BTreeMap::new();
    for t in &md.topics {
        for p in &t.partitions {
            let mut isr: Vec<i32> = p.isr_nodes.iter().map(|r| r.0).collect();
            isr.sort();
            parts.insert(
                p.partition_index,
                (
                    p.leader_id.0,
                    p.replica_nodes.iter().map(|r| r.0).collect(),
                    isr,
                ),
            );
        }
    }
    Some((brokers, md.controller_id.0, parts))
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

async fn create_topic(bootstrap: &str, name: &str, configs: &[(&str, &str)]) -> Result<()> {
    let mut t = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(3));
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

/// Every record of `topic` from the beginning of each partition: (partition, offset) → value.
fn consume_all(bootstrap: &str, topic: &str, want: usize) -> Result<BTreeMap<(i32, i64), String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "repl-itest")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = BTreeMap::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.insert((m.partition(), m.offset()), v);
        }
    }
    // A short extra look: nothing beyond what was acknowledged may show up twice.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.insert((m.partition(), m.offset()), v);
        }
    }
    Ok(out)
}

/// Offsets of one partition as each live broker's own Metadata/ListOffsets would serve it is
/// not available on followers; instead the same data must be served by whichever replica
/// leads: checked after the failover by reading through the new leader.
fn idempotent_producer(bootstrap: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .create()?)
}

fn signal(child: &Child, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill {sig} failed");
    }
    Ok(())
}

/// acked (partition, offset) → value; checks every acknowledged record is read back at its
/// offset, exactly once, and each partition's values are in production order.
fn check_read_back(
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
    // Values are `<phase>-<partition>-<zero-padded sequence>`: per partition, offset order
    // must be production order.
    for p in 0..PARTITIONS {
        let seq: Vec<&String> = read
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|(_, v)| v)
            .collect();
        if seq.windows(2).any(|w| w[0] >= w[1]) {
            bail!("partition {p}: values out of production order");
        }
    }
    Ok(())
}

impl Cluster {
    /// SIGTERM; waits for the exit (bounded) and returns how long it took.
    fn terminate(&mut self, i: usize) -> Result<Duration> {
        let Some(mut c) = self.nodes[i].child.take() else {
            bail!("node {} is not running", self.nodes[i].id);
        };
        let t0 = Instant::now();
        signal(&c, "-TERM")?;
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
                bail!(
                    "node {} did not exit within 60 s of SIGTERM",
                    self.nodes[i].id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

/// (partition → (leader, replicas, isr)) once every partition of `topic` has a leader and a
/// full ISR, as `addr` sees it.
async fn settled(addr: &str, topic: &str) -> Option<BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)>> {
    let (_, _, parts) = view(addr, Some(topic)).await?;
    (parts.len() == PARTITIONS as usize
        && parts
            .values()
            .all(|(l, r, isr)| *l >= 0 && isr.len() == r.len()))
    .then_some(parts)
}

/// Every partition led by its preferred (first) replica.
fn preferred_lead(parts: &BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)>) -> bool {
    parts.values().all(|(l, r, _)| r.first() == Some(l))
}

/// ElectLeaders through `addr`; `None` partitions: all. Returns (topic, partition, code).
async fn elect(
    addr: &str,
    preferred: bool,
    partitions: Option<Vec<(&str, i32)>>,
) -> Result<Vec<(String, i32, i16)>> {
    let mut c = Client::connect(addr, "itest-elect", Duration::from_secs(10)).await?;
    let mut req = ElectLeadersRequest::default();
    req.election_type = if preferred { 0 } else { 1 };
    req.timeout_ms = 30_000;
    req.topic_partitions = partitions.map(|ps| {
        ps.into_iter()
            .map(|(t, p)| {
                let mut tp = TopicPartitions::default();
                tp.topic = TopicName(StrBytes::from_string(t.to_string()));
                tp.partitions = vec![p];
                tp
            })
            .collect()
    });
    let resp = c.send_any(req, 2).await?;
    if resp.error_code != 0 {
        bail!("ElectLeaders error {}", resp.error_code);
    }
    Ok(resp
        .replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(move |p| (t.topic.0.to_string(), p.partition_id, p.error_code))
        })
        .collect())
}

/// SIGTERM, respawn, wait for the node back in every ISR. Returns the SIGTERM-to-exit time.
async fn restart_cleanly(
    cluster: &mut Cluster,
    i: usize,
    other: &str,
    topic: &str,
) -> Result<Duration> {
    let took = cluster.terminate(i)?;
    cluster.spawn(i)?;
    wait_for(
        "the restarted node back in every ISR",
        Duration::from_secs(60),
        || {
            let a = other.to_string();
            let t = topic.to_string();
            async move { settled(&a, &t).await }
        },
    )
    .await?;
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_election_and_controlled_shutdown_under_a_producer() -> Result<()> {
    let mut cluster = Cluster::start("elect", &["auto.leader.rebalance.enable=false"])?;
    let bootstrap = cluster.bootstrap();
    let first = cluster.nodes[0].addr.clone();
    wait_for("three unfenced brokers", Duration::from_secs(60), || {
        let a = first.clone();
        async move { view(&a, None).await.filter(|v| v.0.len() == 3).map(|_| ()) }
    })
    .await?;
    create_topic(&bootstrap, "ops", &[("min.insync.replicas", "2")]).await?;
    let parts = wait_for("ops settled", Duration::from_secs(60), || {
        let a = first.clone();
        async move { settled(&a, "ops").await }
    })
    .await?;
    assert!(preferred_lead(&parts), "{parts:?}");

    // 1. The preferred replica of partition 0 restarts cleanly; with the automatic
    // rebalance off it stays a follower until an ElectLeaders.
    let pref = parts[&0].1[0];
    let pi = cluster.node(pref);
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.id != pref)
        .context("other")?
        .addr
        .clone();
    let took = restart_cleanly(&mut cluster, pi, &other, "ops").await?;
    println!(
        "clean restart of node {pref}: SIGTERM to exit {} ms",
        took.as_millis()
    );
    let parts = settled(&other, "ops").await.context("metadata")?;
    assert_ne!(
        parts[&0].0, pref,
        "leadership moved away and stays away: {parts:?}"
    );
    let results = elect(&other, true, None).await?;
    let mine: BTreeSet<i32> = parts
        .iter()
        .filter(|(_, (_, r, _))| r[0] == pref)
        .map(|(p, _)| *p)
        .collect();
    let elected: BTreeSet<i32> = results
        .iter()
        .filter(|(t, _, code)| t == "ops" && *code == 0)
        .map(|(_, p, _)| *p)
        .collect();
    assert_eq!(elected, mine, "{results:?}");
    let parts = wait_for(
        "preferred leaders everywhere",
        Duration::from_secs(30),
        || {
            let a = other.clone();
            async move { settled(&a, "ops").await.filter(preferred_lead) }
        },
    )
    .await?;
    println!("ElectLeaders PREFERRED (all): {results:?} -> {parts:?}");
    // Nothing left to elect: all-partition elections list nothing, explicit ones say why.
    let again = elect(&other, true, None).await?;
    assert!(again.iter().all(|(t, _, _)| t != "ops"), "{again:?}");
    assert_eq!(
        elect(&other, true, Some(vec![("ops", 0)])).await?,
        vec![("ops".to_string(), 0, 84)]
    );
    assert_eq!(
        elect(&other, false, Some(vec![("ops", 0)])).await?,
        vec![("ops".to_string(), 0, 84)]
    );
    assert_eq!(
        elect(&other, true, Some(vec![("nope", 0)])).await?,
        vec![("nope".to_string(), 0, 3)]
    );

    // 2. SIGTERM of the leader of partition 0 under an idempotent acks=all producer.
    let victim = parts[&0].0;
    let vi = cluster.node(victim);
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.id != victim)
        .context("survivor")?
        .addr
        .clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<(i32, i64), String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let ack_times: Arc<Mutex<Vec<(Instant, i32)>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let prod = {
        let producer = idempotent_producer(&bootstrap)?;
        let (stop, acked, ack_times, errors) = (
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&ack_times),
            Arc::clone(&errors),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..30 {
                    let p = (i % PARTITIONS as u64) as i32;
                    let v = format!("b-{p}-{i:08}");
                    i += 1;
                    let fut = producer
                        .send_result(FutureRecord::<(), _>::to("ops").partition(p).payload(&v))
                        .map_err(|(e, _)| e);
                    if let Ok(f) = fut {
                        inflight.push((v, f));
                    }
                }
                for (v, f) in inflight.drain(..) {
                    match f.await {
                        Ok(Ok(d)) => {
                            ack_times
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((Instant::now(), d.partition));
                            acked
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert((d.partition, d.offset), v);
                        }
                        Ok(Err((e, _))) => errors
                            .lock()
                            .unwrap_or_else(|x| x.into_inner())
                            .push(e.to_string()),
                        Err(e) => errors
                            .lock()
                            .unwrap_or_else(|x| x.into_inner())
                            .push(e.to_string()),
                    }
                }
            }
        })
    };
    wait_for("acks before SIGTERM", Duration::from_secs(30), || {
        let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
        async move { (n >= 600).then_some(()) }
    })
    .await?;
    let acked_before = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    let term_at = Instant::now();
    let exit_took = cluster.terminate(vi)?;
    // Leadership had moved while the process still ran: its own log says so, and the
    // controller confirmed the shutdown.
    let log = cluster.log_text(vi);
    let moved_line = log
        .lines()
        .find(|l| l.contains("controlled shutdown: leadership moved"))
        .context("the victim's log reports the moves before it stopped")?;
    assert!(
        log.lines()
            .any(|l| l.contains("controlled shutdown done") && l.contains("confirmed=true")),
        "the controller confirmed the controlled shutdown"
    );
    let parts_after = view(&survivor, Some("ops")).await.context("metadata")?.2;
    assert!(
        parts_after
            .values()
            .all(|(l, _, isr)| *l != victim && !isr.contains(&victim)),
        "{parts_after:?}"
    );
    wait_for(
        "the producer continues after the shutdown",
        Duration::from_secs(60),
        || {
            let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
            async move { (n >= acked_before + 900).then_some(()) }
        },
    )
    .await?;
    stop.store(true, Ordering::SeqCst);
    prod.await?;
    // The longest wait between two acks of a partition the victim led, around the shutdown.
    let times = ack_times.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let led: BTreeSet<i32> = parts
        .iter()
        .filter(|(_, (l, _, _))| *l == victim)
        .map(|(p, _)| *p)
        .collect();
    let mut max_gap = Duration::ZERO;
    for p in &led {
        let ts: Vec<Instant> = times
            .iter()
            .filter(|(t, q)| q == p && *t + Duration::from_secs(1) >= term_at)
            .map(|(t, _)| *t)
            .collect();
        for w in ts.windows(2) {
            max_gap = max_gap.max(w[1] - w[0]);
        }
    }
    let errs = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(errs.is_empty(), "producer errors: {errs:?}");
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let read = consume_all(&survivor, "ops", acked.len())?;
    check_read_back(&acked, &read)?;
    println!(
        "SIGTERM of leader {victim}: exit after {} ms; {moved_line}; longest ack gap on its \
         partitions {led:?}: {} ms; {} acknowledged, 0 lost, {} producer errors",
        exit_took.as_millis(),
        max_gap.as_millis(),
        acked.len(),
        errs.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rebalance_returns_leadership_to_the_preferred_replica() -> Result<()> {
    let mut cluster = Cluster::start(
        "auto",
        &[
            "auto.leader.rebalance.enable=true",
            "leader.imbalance.check.interval.seconds=1",
        ],
    )?;
    let bootstrap = cluster.bootstrap();
    let first = cluster.nodes[0].addr.clone();
    wait_for("three unfenced brokers", Duration::from_secs(60), || {
        let a = first.clone();
        async move { view(&a, None).await.filter(|v| v.0.len() == 3).map(|_| ()) }
    })
    .await?;
    create_topic(&bootstrap, "bal", &[]).await?;
    let parts = wait_for("bal settled", Duration::from_secs(60), || {
        let a = first.clone();
        async move { settled(&a, "bal").await }
    })
    .await?;
    let pref = parts[&0].1[0];
    let pi = cluster.node(pref);
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.id != pref)
        .context("other")?
        .addr
        .clone();
    let t0 = Instant::now();
    cluster.terminate(pi)?;
    let moved = view(&other, Some("bal")).await.context("metadata")?.2;
    assert_ne!(
        moved[&0].0, pref,
        "the stopped node leads nothing: {moved:?}"
    );
    cluster.spawn(pi)?;
    let parts = wait_for(
        "leadership back on the preferred replicas",
        Duration::from_secs(60),
        || {
            let a = other.clone();
            async move { settled(&a, "bal").await.filter(preferred_lead) }
        },
    )
    .await?;
    println!(
        "auto rebalance: leadership back on the preferred replicas {} ms after SIGTERM of {pref} \
         (restart included): {parts:?}",
        t0.elapsed().as_millis()
    );
    Ok(())
}
