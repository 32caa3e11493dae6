//! Partition replication (design §2, docs/cluster.md): three real `holdfast serve` processes
//! on loopback, RF 3 topics, driven by rdkafka. One cluster for the whole file: ISR = 3 and
//! every record on every replica; SIGKILL of a partition leader under an idempotent acks=all
//! producer (no acknowledged record lost, each read back once and in order); SIGSTOP of a
//! follower past `replica.lag.time.max.ms` (ISR shrink, NOT_ENOUGH_REPLICAS with
//! min.insync.replicas=3, ISR expansion after SIGCONT); a stale leader's diverged tail
//! truncated when it rejoins (diverging epoch).
//!
//! Build first: `cargo build -p holdfast && cargo test -p holdfast-itest --test replication`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_client::Client;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
const WIDE_PARTITIONS: i32 = 6;

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
        let root = std::env::temp_dir().join(format!("holdfast-repl-{}", std::process::id()));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_partitions() -> Result<()> {
    let mut cluster = Cluster::start()?;
    let first = cluster.nodes[0].addr.clone();
    wait_for(
        "3 brokers and a controller",
        Duration::from_secs(60),
        || {
            let a = first.clone();
            async move {
                view(&a, None)
                    .await
                    .filter(|(b, c, _)| b.len() == 3 && *c >= 0)
            }
        },
    )
    .await?;
    let bootstrap = cluster.bootstrap();

    // RF 3; the controller sets min.insync.replicas=2 for RF >= 3.
    create_topic(&bootstrap, "rep", &[]).await?;
    let t0 = Instant::now();
    let parts = wait_for(
        "ISR = 3 replicas everywhere",
        Duration::from_secs(30),
        || {
            let a = first.clone();
            async move {
                view(&a, Some("rep")).await.map(|v| v.2).filter(|p| {
                    p.len() == PARTITIONS as usize
                        && p.values()
                            .all(|(l, r, isr)| *l >= 0 && r.len() == 3 && isr.len() == 3)
                })
            }
        },
    )
    .await?;
    println!(
        "ISR = 3 on every partition after {} ms: {parts:?}",
        t0.elapsed().as_millis()
    );

    // Phase 1: 1,500 records, idempotent acks=all.
    let producer = idempotent_producer(&bootstrap)?;
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut futures = Vec::new();
    for i in 0..1_500u64 {
        let p = (i % PARTITIONS as u64) as i32;
        let v = format!("a-{p}-{i:08}");
        let f = producer
            .send_result(FutureRecord::<(), _>::to("rep").partition(p).payload(&v))
            .map_err(|(e, _)| e)?;
        futures.push((v, f));
    }
    for (v, f) in futures {
        let d = f.await?.map_err(|(e, _)| e)?;
        acked.insert((d.partition, d.offset), v);
    }
    let read = consume_all(&bootstrap, "rep", acked.len())?;
    check_read_back(&acked, &read)?;
    println!(
        "phase 1: {} acknowledged, {} read back",
        acked.len(),
        read.len()
    );

    // Phase 2: SIGKILL the leader of partition 0 while a producer runs.
    let (_, _, parts) = view(&first, Some("rep")).await.context("metadata")?;
    let victim = parts[&0].0;
    let vi = cluster.node(victim);
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.id != victim)
        .map(|n| n.addr.clone())
        .context("survivor")?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked2: Arc<Mutex<BTreeMap<(i32, i64), String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let errors = Arc::new(Mutex::new(0u64));
    let prod = {
        let producer = idempotent_producer(&bootstrap)?;
        let stop = Arc::clone(&stop);
        let acked2 = Arc::clone(&acked2);
        let errors = Arc::clone(&errors);
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..30 {
                    let p = (i % PARTITIONS as u64) as i32;
                    let v = format!("b-{p}-{i:08}");
                    i += 1;
                    let fut = producer
                        .send_result(FutureRecord::<(), _>::to("rep").partition(p).payload(&v))
                        .map_err(|(e, _)| e);
                    if let Ok(f) = fut {
                        inflight.push((v, f));
                    }
                }
                for (v, f) in inflight.drain(..) {
                    match f.await {
                        Ok(Ok(d)) => {
                            acked2
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert((d.partition, d.offset), v);
                        }
                        _ => *errors.lock().unwrap_or_else(|e| e.into_inner()) += 1,
                    }
                }
            }
        })
    };
    wait_for("acks before the kill", Duration::from_secs(30), || {
        let n = acked2.lock().unwrap_or_else(|e| e.into_inner()).len();
        async move { (n >= 300).then_some(()) }
    })
    .await?;
    cluster.kill(vi);
    let killed_at = Instant::now();
    let acked_at_kill = acked2.lock().unwrap_or_else(|e| e.into_inner()).len();
    let new_leader = wait_for(
        "a new leader of partition 0",
        Duration::from_secs(30),
        || {
            let a = survivor.clone();
            async move {
                view(&a, Some("rep"))
                    .await
                    .and_then(|v| v.2.get(&0).map(|x| x.0))
                    .filter(|l| *l >= 0 && *l != victim)
            }
        },
    )
    .await?;
    let failover_ms = killed_at.elapsed().as_millis();
    wait_for(
        "the producer continues after the failover",
        Duration::from_secs(60),
        || {
            let n = acked2.lock().unwrap_or_else(|e| e.into_inner()).len();
            async move { (n >= acked_at_kill + 600).then_some(()) }
        },
    )
    .await?;
    stop.store(true, Ordering::SeqCst);
    prod.await?;
    cluster.spawn(vi)?;
    let t1 = Instant::now();
    wait_for(
        "the killed node back in every ISR",
        Duration::from_secs(60),
        || {
            let a = survivor.clone();
            async move {
                view(&a, Some("rep"))
                    .await
                    .map(|v| v.2)
                    .filter(|p| p.values().all(|(_, _, isr)| isr.len() == 3))
            }
        },
    )
    .await?;
    let rejoin_ms = t1.elapsed().as_millis();
    let acked2 = acked2.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let errors = *errors.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = acked.clone();
    all.extend(acked2.clone());
    let bootstrap = cluster.bootstrap();
    let read = consume_all(&bootstrap, "rep", all.len())?;
    check_read_back(&all, &read)?;
    println!(
        "phase 2: leader {victim} of partition 0 SIGKILLed; new leader {new_leader} in Metadata after {failover_ms} ms; \
         {} acknowledged during the run ({errors} delivery errors), {} acknowledged in all, {} read back, 0 lost; \
         restarted node back in every ISR after {rejoin_ms} ms",
        acked2.len(),
        all.len(),
        read.len()
    );

    // Phase 3: min.insync.replicas=3; SIGSTOP a follower past replica.lag.time.max.ms.
    create_topic(&bootstrap, "strict", &[("min.insync.replicas", "3")]).await?;
    // Six partitions on three brokers: each broker leads two at leader epoch 0.
    let wide = NewTopic::new("wide", WIDE_PARTITIONS, TopicReplication::Fixed(3));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    match admin(&bootstrap)?
        .create_topics([&wide], &opts)
        .await?
        .into_iter()
        .next()
    {
        Some(Ok(_)) => {}
        other => bail!("create wide: {other:?}"),
    }
    let parts = wait_for("strict: ISR = 3", Duration::from_secs(30), || {
        let a = first.clone();
        async move {
            view(&a, Some("strict")).await.map(|v| v.2).filter(|p| {
                p.len() == PARTITIONS as usize
                    && p.values().all(|(l, _, isr)| *l >= 0 && isr.len() == 3)
            })
        }
    })
    .await?;
    let (_, controller, _) = view(&first, None).await.context("metadata")?;
    let leader = parts[&0].0;
    let follower = parts[&0]
        .1
        .iter()
        .copied()
        .find(|r| *r != leader && *r != controller)
        .or_else(|| parts[&0].1.iter().copied().find(|r| *r != leader))
        .context("a follower")?;
    let leader_addr = cluster.nodes[cluster.node(leader)].addr.clone();
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &leader_addr)
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create()?;
    let send = |v: String| {
        let plain = plain.clone();
        async move {
            plain
                .send(
                    FutureRecord::<(), _>::to("strict").partition(0).payload(&v),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)
        }
    };
    send("s-0".into()).await?;
    let fi = cluster.node(follower);
    signal(
        cluster.nodes[fi].child.as_ref().context("running")?,
        "-STOP",
    )?;
    let stopped_at = Instant::now();
    wait_for(
        "the ISR of strict-0 shrinks",
        Duration::from_secs(30),
        || {
            let a = leader_addr.clone();
            async move {
                view(&a, Some("strict"))
                    .await
                    .and_then(|v| v.2.get(&0).cloned())
                    .filter(|(_, _, isr)| isr.len() == 2 && !isr.contains(&follower))
            }
        },
    )
    .await?;
    let shrink_ms = stopped_at.elapsed().as_millis();
    // Every partition of `wide` led elsewhere shrinks too: the ISR changes of two partitions
    // led by one broker at the same leader epoch each reach the controller (their
    // AlterPartition request ids coincide; a manager that tracked ids alone sent only one).
    let shrunk_all = wait_for(
        "the ISR of every wide partition led elsewhere shrinks",
        Duration::from_secs(30),
        || {
            let a = leader_addr.clone();
            async move {
                view(&a, Some("wide")).await.map(|v| v.2).filter(|p| {
                    p.len() == WIDE_PARTITIONS as usize
                        && p.values()
                            .filter(|(l, _, _)| *l != follower)
                            .all(|(_, _, isr)| isr.len() == 2 && !isr.contains(&follower))
                })
            }
        },
    )
    .await?;
    println!("phase 3: ISRs after the follower stopped: {shrunk_all:?}");
    match send("s-1".into()).await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)) => {}
        other => {
            bail!("expected NOT_ENOUGH_REPLICAS with ISR 2 < min.insync.replicas 3, got {other:?}")
        }
    }
    // min ISR 2 (topic rep): still writable with one follower out.
    let (_, _, rp) = view(&leader_addr, Some("rep")).await.context("metadata")?;
    let p_rep = rp
        .iter()
        .find(|(_, (l, _, _))| *l != follower)
        .map(|(p, _)| *p)
        .context("partition")?;
    let rep_prod = idempotent_producer(&leader_addr)?;
    rep_prod
        .send(
            FutureRecord::<(), _>::to("rep")
                .partition(p_rep)
                .payload("c-x"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    signal(
        cluster.nodes[fi].child.as_ref().context("running")?,
        "-CONT",
    )?;
    let cont_at = Instant::now();
    wait_for(
        "the ISR of strict-0 expands",
        Duration::from_secs(60),
        || {
            let a = leader_addr.clone();
            async move {
                view(&a, Some("strict"))
                    .await
                    .and_then(|v| v.2.get(&0).cloned())
                    .filter(|(_, _, isr)| isr.len() == 3)
            }
        },
    )
    .await?;
    let expand_ms = cont_at.elapsed().as_millis();
    // Every partition of `wide` expands too. ISR expansions are only ever proposed by the
    // leaders (no controller decision covers for a lost one), and partitions led by one broker
    // at the same leader epoch can propose equal AlterPartition request ids: a manager that
    // tracked ids alone could send only one of them (seen in a chaos run: a partition stuck at
    // ISR [leader] for 45 s). Whether ids coincide here depends on timing, so this is a
    // regression check rather than a reliable negative control (without the fix it passed,
    // 2.2 s instead of 0.6 s).
    let expanded_all = wait_for(
        "the ISR of every wide partition expands",
        Duration::from_secs(60),
        || {
            let a = leader_addr.clone();
            async move {
                view(&a, Some("wide")).await.map(|v| v.2).filter(|p| {
                    p.len() == WIDE_PARTITIONS as usize
                        && p.values().all(|(_, _, isr)| isr.len() == 3)
                })
            }
        },
    )
    .await?;
    println!(
        "phase 3: every wide partition back to ISR 3 after {} ms: {expanded_all:?}",
        cont_at.elapsed().as_millis()
    );
    send("s-2".into()).await?;
    println!(
        "phase 3: follower {follower} SIGSTOPped: ISR shrank after {shrink_ms} ms, acks=all got NOT_ENOUGH_REPLICAS \
         (min.insync.replicas=3), a min-ISR-2 topic stayed writable; SIGCONT: ISR back to 3 after {expand_ms} ms"
    );

    // Phase 4: a stale leader's log diverges and is truncated on rejoin. Both followers of
    // diverge-0 are stopped (the metadata quorum too), the leader takes acks=1 writes alone,
    // is killed; the followers resume, one of them is elected; the old leader restarts,
    // follows it and truncates the never-committed tail (diverging epoch).
    create_topic(&bootstrap, "diverge", &[]).await?;
    let parts = wait_for("diverge: ISR = 3", Duration::from_secs(30), || {
        let a = first.clone();
        async move {
            view(&a, Some("diverge")).await.map(|v| v.2).filter(|p| {
                p.len() == PARTITIONS as usize
                    && p.values().all(|(l, _, isr)| *l >= 0 && isr.len() == 3)
            })
        }
    })
    .await?;
    let old_leader = parts[&0].0;
    let followers: Vec<i32> = parts[&0]
        .1
        .iter()
        .copied()
        .filter(|r| *r != old_leader)
        .collect();
    let ol_addr = cluster.nodes[cluster.node(old_leader)].addr.clone();
    let committed = idempotent_producer(&ol_addr)?;
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for i in 0..100u64 {
        let v = format!("d-0-{i:08}");
        let d = committed
            .send(
                FutureRecord::<(), _>::to("diverge")
                    .partition(0)
                    .payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        acked.insert((d.partition, d.offset), v);
    }
    for f in &followers {
        signal(
            cluster.nodes[cluster.node(*f)]
                .child
                .as_ref()
                .context("running")?,
            "-STOP",
        )?;
    }
    let lone: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &ol_addr)
        .set("acks", "1")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create()?;
    let mut lone_acked = 0;
    for i in 0..50u64 {
        let v = format!("e-0-{i:08}");
        if lone
            .send(
                FutureRecord::<(), _>::to("diverge")
                    .partition(0)
                    .payload(&v),
                Duration::from_secs(5),
            )
            .await
            .is_ok()
        {
            lone_acked += 1;
        }
    }
    let oli = cluster.node(old_leader);
    cluster.kill(oli);
    for f in &followers {
        signal(
            cluster.nodes[cluster.node(*f)]
                .child
                .as_ref()
                .context("running")?,
            "-CONT",
        )?;
    }
    let f_addr = cluster.nodes[cluster.node(followers[0])].addr.clone();
    let new_leader = wait_for(
        "diverge-0 led by a former follower",
        Duration::from_secs(60),
        || {
            let a = f_addr.clone();
            let followers = followers.clone();
            async move {
                view(&a, Some("diverge"))
                    .await
                    .and_then(|v| v.2.get(&0).map(|x| x.0))
                    .filter(|l| followers.contains(l))
            }
        },
    )
    .await?;
    cluster.spawn(oli)?;
    wait_for("diverge-0 ISR = 3 again", Duration::from_secs(60), || {
        let a = f_addr.clone();
        async move {
            view(&a, Some("diverge"))
                .await
                .and_then(|v| v.2.get(&0).cloned())
                .filter(|(_, _, isr)| isr.len() == 3)
        }
    })
    .await?;
    let inherit = std::env::var_os("HOLDFAST_ITEST_LOG").is_some_and(|v| v == "inherit");
    if lone_acked > 0 && !inherit {
        let text = std::fs::read_to_string(&cluster.nodes[oli].log)?;
        assert!(
            text.lines()
                .any(|l| l.contains("follower log truncated") && l.contains("diverge")),
            "the old leader truncates its diverged tail"
        );
    }
    let bootstrap = cluster.bootstrap();
    let read = consume_all(&bootstrap, "diverge", acked.len())?;
    let p0: BTreeMap<(i32, i64), String> = read.into_iter().filter(|((p, _), _)| *p == 0).collect();
    check_read_back(&acked, &p0)?;
    // acks=1 records may survive (a follower's fetch answered before it stopped is read when
    // it resumes); never more than the old leader took.
    let survived = p0.values().filter(|v| v.starts_with("e-")).count();
    assert!(
        survived <= lone_acked,
        "{survived} acks=1 records visible, {lone_acked} written"
    );
    println!(
        "phase 4: old leader {old_leader} took {lone_acked} acks=1 records alone, was killed; {new_leader} elected; \
         on restart the old leader truncated its diverged tail; {} records read back ({survived} of the acks=1 ones)",
        p0.len()
    );
    Ok(())
}
