//! Cluster mode v0: three real `holdfast serve` processes on loopback forming a cluster on the
//! Raft metadata quorum, driven by rdkafka (librdkafka) and by holdfast-client for raw
//! requests. One cluster for the whole file (CI time): the test walks through formation,
//! placement, produce/consume through any broker, replication factors accepted (RF 0 refused),
//! NOT_LEADER_OR_FOLLOWER, DeleteTopics, SIGKILL of the active controller, and the restart
//! of the killed node with every acknowledged record read back.
//!
//! Build first: `cargo build -p holdfast && cargo test -p holdfast-itest --test cluster`.
//! `HOLDFAST_ITEST_LOG=inherit` shows the nodes' logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_client::records::{encode_batch, Record};
use holdfast_client::{Client, Connection};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const RECORDS: usize = 3_000;
const PARTITIONS: i32 = 6;

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
        let root = std::env::temp_dir().join(format!("holdfast-cluster-{}", std::process::id()));
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

    /// SIGTERM, then wait for the process to exit (controlled shutdown, then clean stop).
    fn terminate(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            assert!(status.success(), "kill -TERM");
            let code = c.wait()?;
            assert!(
                code.success(),
                "node {} exited with {code}",
                self.nodes[i].id
            );
        }
        Ok(())
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

/// (unfenced brokers, controller id, partition → (leader, replicas)) as `addr` sees them.
type View = (BTreeSet<i32>, i32, BTreeMap<i32, (i32, Vec<i32>)>);

async fn view(addr: &str, topic: Option<&str>) -> Option<View> {
    let mut c = Client::connect(addr, "itest", Duration::from_secs(5))
        .await
        .ok()?;
    let md = c.metadata(topic.map(|t| vec![t.to_string()])).await.ok()?;
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
    Some((brokers, md.controller_id.0, parts))
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, rf: i32) -> Result<()> {
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
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
        .set("group.id", "cluster-itest")
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
    Ok(out)
}

/// Runs Apache Kafka's `kafka-topics.sh --describe` (TopicCommand from the jars
/// `scripts/setup-java-deps.sh` puts in `.deps/java/lib`, as the Python suite does) and
/// checks its Leader/Replicas/Isr columns. Skipped, with a line saying so, when Java or the
/// jars are not installed.
fn kafka_topics_describe(
    addr: &str,
    topic: &str,
    parts: &BTreeMap<i32, (i32, Vec<i32>)>,
) -> Result<()> {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/java/lib");
    let has_tools = std::fs::read_dir(&lib).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("kafka-tools-"))
    });
    let java = Command::new("java")
        .arg("-version")
        .stderr(Stdio::null())
        .status();
    if !has_tools || !java.is_ok_and(|s| s.success()) {
        println!(
            "kafka-topics.sh check skipped: no java or no Kafka jars in {}",
            lib.display()
        );
        return Ok(());
    }
    let out = Command::new("java")
        .args([
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
        ])
        .arg(format!("{}/*", lib.display()))
        .args([
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            addr,
        ])
        .args(["--describe", "--topic", topic])
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = 0;
    for line in text.lines().filter(|l| l.contains("Partition: ")) {
        let field = |name: &str| -> Option<String> {
            line.split('\t')
                .find_map(|f| f.trim().strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let p: i32 = field("Partition:").context("partition")?.parse()?;
        let (leader, replicas) = parts.get(&p).context("known partition")?;
        assert_eq!(field("Leader:"), Some(leader.to_string()), "{line}");
        assert_eq!(field("Replicas:"), Some(replicas[0].to_string()), "{line}");
        assert_eq!(field("Isr:"), Some(replicas[0].to_string()), "{line}");
        seen += 1;
    }
    assert_eq!(
        seen,
        parts.len(),
        "kafka-topics.sh --describe output:\n{text}"
    );
    println!("kafka-topics.sh --describe agrees on {seen} partitions");
    Ok(())
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_v0() -> Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start()?;
    let first = cluster.nodes[0].addr.clone();

    // Formation: every node registered and unfenced, a controller elected.
    let (brokers, controller, _) = wait_for(
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
    println!(
        "cluster formed in {} ms (brokers {brokers:?}, controller {controller})",
        started.elapsed().as_millis()
    );

    // Placement: 6 partitions, RF 1, spread over the three brokers.
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "spread", PARTITIONS, 1).await?;
    let (_, _, parts) = view(&first, Some("spread")).await.context("metadata")?;
    assert_eq!(parts.len(), PARTITIONS as usize);
    let leaders: BTreeSet<i32> = parts.values().map(|(l, _)| *l).collect();
    assert_eq!(
        leaders,
        BTreeSet::from([1, 2, 3]),
        "partitions spread: {parts:?}"
    );
    for (l, r) in parts.values() {
        assert_eq!(r, &vec![*l], "RF 1: the leader is the only replica");
    }

    // Apache Kafka's kafka-topics.sh --describe shows the same leaders and replicas.
    kafka_topics_describe(&first, "spread", &parts)?;

    // RF 3 and the default RF (-1 = min(3, brokers)) are accepted (replication,
    // tests/replication.rs); RF 0 is refused.
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin(&bootstrap)?
        .create_topics(
            [
                &NewTopic::new("rf3", 1, TopicReplication::Fixed(3)),
                &NewTopic::new("rfdefault", 1, TopicReplication::Fixed(-1)),
            ],
            &opts,
        )
        .await?;
    for r in res {
        assert!(r.is_ok(), "RF 3 and the default RF are accepted: {r:?}");
    }
    let (_, _, rf3) = view(&first, Some("rfdefault")).await.context("metadata")?;
    assert_eq!(rf3[&0].1.len(), 3, "default RF = min(3, brokers): {rf3:?}");
    let mut raw = Client::connect(&first, "itest", Duration::from_secs(5)).await?;
    let mut ct = CreatableTopic::default();
    ct.name = TopicName(sb("rfzero"));
    ct.num_partitions = 1;
    ct.replication_factor = 0;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![ct];
    req.timeout_ms = 10_000;
    let resp = raw.send_any(req, 5).await?;
    let t = &resp.topics[0];
    assert_eq!(t.error_code, INVALID_REPLICATION_FACTOR);
    let msg = t
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(msg.contains("larger than 0"), "{msg}");

    // Produce 3,000 records (idempotent, acks=all) through one bootstrap broker; rdkafka
    // routes each partition to its leader.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.nodes[1].addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    let mut futures = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let value = format!("v{i}");
        let p = (i % PARTITIONS as usize) as i32;
        let f = producer
            .send_result(
                FutureRecord::<(), _>::to("spread")
                    .partition(p)
                    .payload(&value),
            )
            .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
        futures.push((value, f));
    }
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for (value, f) in futures {
        match f.await? {
            Ok(d) => {
                acked.insert((d.partition, d.offset), value);
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
    assert_eq!(acked.len(), RECORDS);
    let read = consume_all(&cluster.nodes[2].addr, "spread", RECORDS)?;
    assert_eq!(read, acked, "every acknowledged record read back");
    println!(
        "produced and consumed {} records over {PARTITIONS} partitions",
        acked.len()
    );

    // A produce sent to a broker that does not lead the partition: NOT_LEADER_OR_FOLLOWER.
    let (leader0, _) = parts[&0].clone();
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader0)
        .context("other")?;
    let mut conn = Connection::connect(&other.addr, "itest", Duration::from_secs(5)).await?;
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(
        encode_batch(
            &[Record {
                value: Some(b"misrouted".to_vec()),
                ..Record::default()
            }],
            None,
        )
        .into(),
    );
    let mut td = TopicProduceData::default();
    td.name = TopicName(sb("spread"));
    td.partition_data = vec![pd];
    let mut preq = ProduceRequest::default();
    preq.acks = -1;
    preq.timeout_ms = 10_000;
    preq.topic_data = vec![td];
    let presp = conn.send(preq, 9).await?;
    assert_eq!(
        presp.responses[0].partition_responses[0].error_code,
        NOT_LEADER_OR_FOLLOWER
    );

    // DeleteTopics removes the logs on their owners.
    create_topic(&bootstrap, "doomed", 3, 1).await?;
    let dirs: Vec<PathBuf> = cluster
        .nodes
        .iter()
        .flat_map(|n| (0..3).map(move |p| n.dir.join(format!("doomed-{p}"))))
        .filter(|d| d.exists())
        .collect();
    assert_eq!(
        dirs.len(),
        3,
        "one log per partition on its owner: {dirs:?}"
    );
    let res = admin(&bootstrap)?
        .delete_topics(&["doomed"], &AdminOptions::new())
        .await?;
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    wait_for(
        "the doomed logs to be deleted",
        Duration::from_secs(20),
        || {
            let gone = dirs.iter().all(|d| !d.exists());
            async move { gone.then_some(()) }
        },
    )
    .await?;

    // SIGKILL the active controller: a new one is elected and CreateTopics works again.
    let (_, controller, _) = view(&first, None).await.context("metadata")?;
    let victim = cluster.node(controller);
    let killed_at = Instant::now();
    cluster.kill(victim);
    let survivor = cluster.bootstrap();
    let survivor_addr = survivor.split(',').next().unwrap_or_default().to_string();
    let (_, new_controller, _) = wait_for("a new controller", Duration::from_secs(60), || {
        let a = survivor_addr.clone();
        async move {
            view(&a, None)
                .await
                .filter(|(_, c, _)| *c >= 0 && *c != controller)
        }
    })
    .await?;
    let elected_ms = killed_at.elapsed().as_millis();
    wait_for(
        "CreateTopics after the failover",
        Duration::from_secs(60),
        || {
            let b = survivor.clone();
            async move { create_topic(&b, "after-failover", 1, 1).await.ok() }
        },
    )
    .await?;
    println!(
        "controller {controller} killed: node {new_controller} elected after {elected_ms} ms, \
         CreateTopics answered after {} ms",
        killed_at.elapsed().as_millis()
    );

    // Its session expires: fenced, its partitions have no leader (RF 1).
    wait_for("the killed node fenced", Duration::from_secs(60), || {
        let a = survivor_addr.clone();
        async move {
            view(&a, Some("spread")).await.filter(|(b, _, p)| {
                !b.contains(&controller)
                    && p.values().filter(|(l, _)| *l < 0).count() == 2
                    && p.values().all(|(l, _)| *l != controller)
            })
        }
    })
    .await?;
    println!(
        "node {controller} fenced, its partitions leaderless, {} ms after the kill",
        killed_at.elapsed().as_millis()
    );

    // The killed node restarts from its data dir: its partitions serve again, with all data.
    let restarted_at = Instant::now();
    cluster.spawn(victim)?;
    let all = cluster.bootstrap();
    wait_for("every partition led again", Duration::from_secs(60), || {
        let a = survivor_addr.clone();
        async move {
            view(&a, Some("spread")).await.filter(|(b, _, p)| {
                b.len() == 3 && p.len() == PARTITIONS as usize && p.values().all(|(l, _)| *l >= 0)
            })
        }
    })
    .await?;
    println!(
        "node {controller} restarted: its partitions led again after {} ms",
        restarted_at.elapsed().as_millis()
    );
    let read = consume_all(&all, "spread", RECORDS)?;
    assert_eq!(
        read, acked,
        "every acknowledged record survives the SIGKILL"
    );

    // The same producer (its metadata cached from before the kill; the restarted node's
    // partitions have a new leader epoch) keeps producing: rdkafka refreshes and recovers,
    // and the idempotent sequence continues on the recovered partitions.
    let more = 600;
    let mut futures = Vec::with_capacity(more);
    for i in RECORDS..RECORDS + more {
        let value = format!("v{i}");
        let p = (i % PARTITIONS as usize) as i32;
        let f = producer
            .send_result(
                FutureRecord::<(), _>::to("spread")
                    .partition(p)
                    .payload(&value),
            )
            .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
        futures.push((value, f));
    }
    for (value, f) in futures {
        match f.await? {
            Ok(d) => {
                acked.insert((d.partition, d.offset), value);
            }
            Err((e, _)) => bail!("produce after the restart failed: {e}"),
        }
    }
    let read = consume_all(&all, "spread", RECORDS + more)?;
    assert_eq!(
        read, acked,
        "every acknowledged record, before and after the restart"
    );
    println!(
        "{} acknowledged records read back after the restart",
        acked.len()
    );

    // SIGTERM: controlled shutdown and a clean stop; restarted at once, the node registers
    // without waiting for its old session to expire and leads its partitions again.
    let (_, controller, _) = view(&first, None).await.context("metadata")?;
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.id != controller)
        .context("a non-controller node")?;
    let stopped_at = Instant::now();
    cluster.terminate(victim)?;
    println!(
        "node {} stopped by SIGTERM in {} ms",
        cluster.nodes[victim].id,
        stopped_at.elapsed().as_millis()
    );
    let restarted_at = Instant::now();
    cluster.spawn(victim)?;
    // The first Metadata the restarted node answers (it holds requests until it has caught
    // up with the metadata log) already knows the topic and all its partitions.
    let first_answer = view(&cluster.nodes[victim].addr, Some("spread"))
        .await
        .context("metadata from the restarted node")?;
    assert_eq!(
        first_answer.2.len(),
        PARTITIONS as usize,
        "the restarted node's first Metadata answer lists every partition of the topic: {first_answer:?}"
    );
    println!(
        "node {}: first Metadata answer after its restart ({} ms) lists the topic",
        cluster.nodes[victim].id,
        restarted_at.elapsed().as_millis()
    );
    let any = cluster.nodes[(victim + 1) % 3].addr.clone();
    wait_for(
        "every partition led after the SIGTERM restart",
        Duration::from_secs(30),
        || {
            let a = any.clone();
            async move {
                view(&a, Some("spread")).await.filter(|(b, _, p)| {
                    b.len() == 3
                        && p.len() == PARTITIONS as usize
                        && p.values().all(|(l, _)| *l >= 0)
                })
            }
        },
    )
    .await?;
    println!(
        "node {} led its partitions again {} ms after its restart",
        cluster.nodes[victim].id,
        restarted_at.elapsed().as_millis()
    );
    let read = consume_all(&cluster.bootstrap(), "spread", acked.len())?;
    assert_eq!(
        read, acked,
        "every acknowledged record after the SIGTERM restart"
    );
    Ok(())
}
