//! Cluster mode: N real `holdfast serve` processes on the Raft metadata quorum (docs/cluster.md),
//! each with its own data directory (its own loop-mounted ext4 image when root), broker and
//! controller ports. The workload bootstraps from every node; the workload's topic is created
//! through the Admin API with the requested replication factor; faults strike nodes (one, the
//! active controller, or all at once for the coordinated power cut).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::env::{self, Broker, Disk, WorkDir};
use crate::history::{self, Event, Kind, Recorder, F};
use crate::netns;
use crate::{
    check_interrupted, checker, crash_mark, kinds, plan, report, sleep, sleep_until, workload,
    Applied, FaultKind, Planned, RunArgs, RunSummary,
};

/// Broker session timeout given to every node (docs/cluster.md: `broker.session.timeout.ms`,
/// default 9000). A node restarted after a SIGKILL is refused registration
/// (DUPLICATE_BROKER_REGISTRATION) until the controller fences its previous incarnation, so
/// this bounds how long its partitions stay leaderless after the restart.
pub const SESSION_TIMEOUT_MS: u64 = 3000;
/// `broker.heartbeat.interval.ms` given to every node (default 2000).
pub const HEARTBEAT_MS: u64 = 500;
/// How long `kill-leader` keeps a partition's followers stopped before it kills the leader:
/// well below `replica.lag.time.max.ms`, so they stay in the ISR and one of them is elected.
const FOLLOWERS_STOPPED: Duration = Duration::from_millis(300);
/// `replica.lag.time.max.ms` of every node in the `unclean` scenario.
const UNCLEAN_LAG_MS: u64 = 600;
/// Most nodes a run may start.
pub const MAX_NODES: usize = 9;
/// Deadline for the cluster to be formed, or to be whole again after healing: every broker
/// registered and every partition led. Covers an election (2-4 s), the session timeout that
/// fences a SIGKILLed incarnation, and a slow debug build on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(45);

/// One node: its broker process and, when root, its disk. Fields drop in order: the process
/// dies before its image is unmounted.
pub struct Node {
    pub id: i32,
    pub broker: Broker,
    pub disk: Option<Disk>,
}

/// The nodes of a run.
pub struct Cluster {
    pub nodes: Vec<Node>,
    bin: PathBuf,
    pub cluster_id: String,
    /// The nodes' network namespaces (root only); dropped after the nodes (field order).
    pub net: Option<netns::Net>,
}

/// Free TCP ports on 127.0.0.1, distinct: every listener is held until all are chosen.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("choosing free ports")?;
    ls.iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<Vec<u16>>>()
}

impl Cluster {
    /// Formats `n` nodes (node ids 1..=n, node 1 bootstraps the quorum), each on its own disk
    /// image when `root`. Nothing is started yet.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        bin: &Path,
        work: &Path,
        out: &Path,
        n: usize,
        root: bool,
        net: Option<netns::Net>,
        unsafe_env: &[&'static str],
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Cluster> {
        if n == 0 || n > MAX_NODES {
            bail!("--nodes must be 1..={MAX_NODES}");
        }
        let bin_s = bin.to_str().context("non-UTF-8 broker path")?;
        let cluster_id = env::sh(bin_s, &["random-uuid"])?.trim().to_string();
        if cluster_id.is_empty() {
            bail!("holdfast random-uuid printed nothing");
        }
        // Loopback: 2n distinct ports (n broker listeners, n controller listeners). In
        // namespaces: one address per node, the same two ports everywhere.
        let (hosts, ports): (Vec<String>, Vec<u16>) = match &net {
            Some(net) => (
                (0..n).map(|i| net.node_ip(i)).collect(),
                (0..n)
                    .map(|_| netns::BROKER_PORT)
                    .chain((0..n).map(|_| netns::CONTROLLER_PORT))
                    .collect(),
            ),
            None => (vec!["127.0.0.1".to_string(); n], free_ports(2 * n)?),
        };
        let voters = (0..n)
            .map(|i| format!("{}@{}:{}", i + 1, hosts[i], ports[n + i]))
            .collect::<Vec<_>>()
            .join(",");
        let in_netns = net.is_some();
        let mut cluster = Cluster {
            nodes: Vec::with_capacity(n),
            bin: bin.to_path_buf(),
            cluster_id,
            net,
        };
        let (broker_ports, _) = ports.split_at(n);
        for (i, &port) in broker_ports.iter().enumerate() {
            let id = (i + 1) as i32;
            let dir = work.join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let disk = if root {
                match Disk::create(&dir) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        notes.push(format!("node {id}: cannot loop-mount an ext4 image: {e:#}"));
                        None
                    }
                }
            } else {
                None
            };
            let data_dir = match &disk {
                Some(d) => d.mount_point.join("data"),
                None => dir.join("data"),
            };
            let log = out.join(format!("node-{id}.log"));
            let _ = std::fs::remove_file(&log);
            let mut broker = Broker::new(bin, &data_dir, &log, unsafe_env.to_vec())?;
            broker.port = port;
            broker.host = hosts[i].clone();
            broker.netns = cluster.net.as_ref().map(|net| net.ns(i));
            broker.extra_args = vec![
                "--node-id".into(),
                id.to_string(),
                "--controller-quorum-voters".into(),
                voters.clone(),
                "--set".into(),
                format!("broker.session.timeout.ms={SESSION_TIMEOUT_MS}"),
                "--set".into(),
                format!("broker.heartbeat.interval.ms={HEARTBEAT_MS}"),
            ];
            let data_s = data_dir.to_str().context("non-UTF-8 data dir")?;
            let id_s = id.to_string();
            let mut args = vec![
                "format",
                "--data-dir",
                data_s,
                "--node-id",
                &id_s,
                "--cluster-id",
                &cluster.cluster_id,
            ];
            if id == 1 {
                args.push("--bootstrap");
            }
            env::sh(bin_s, &args).with_context(|| format!("formatting node {id}"))?;
            cluster.nodes.push(Node { id, broker, disk });
        }
        notes.push(format!(
            "cluster {}: {n} nodes{}, voters {voters}, broker.session.timeout.ms={SESSION_TIMEOUT_MS}, broker.heartbeat.interval.ms={HEARTBEAT_MS}",
            cluster.cluster_id,
            if in_netns {
                " each in its own network namespace (veth to a bridge; partitions are blackhole routes)"
            } else {
                " on loopback"
            }
        ));
        Ok(cluster)
    }

    /// Every node's listener, comma-separated (the clients' bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.broker.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the nodes at `idx` together (a node of a quorum may wait for the others), then
    /// waits for each listening line within `deadline`.
    pub fn start(&mut self, idx: &[usize], deadline: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut rxs = Vec::with_capacity(idx.len());
        for &i in idx {
            rxs.push((i, self.nodes[i].broker.spawn()?));
        }
        let mut first_err = None;
        for (i, rx) in rxs {
            let left = deadline.saturating_sub(t.elapsed());
            if let Err(e) = self.nodes[i].broker.await_listening(&rx, left) {
                first_err.get_or_insert(e.context(format!("node {}", self.nodes[i].id)));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(t.elapsed()),
        }
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// The active controller's node id, from DescribeCluster / Metadata (`holdfast cluster
    /// describe`), asked of each running node in turn. None if no node answers with one.
    pub fn controller_id(&mut self) -> Option<i32> {
        let bin = self.bin.to_str()?.to_string();
        let addrs: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.broker.alive().then(|| n.broker.bootstrap()))
            .collect();
        for a in addrs {
            let out = env::sh(
                &bin,
                &[
                    "cluster",
                    "describe",
                    "-b",
                    &a,
                    "--format",
                    "json",
                    "--timeout-ms",
                    "3000",
                ],
            );
            if let Ok(text) = out {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    if let Some(c) = v.get("controller_id").and_then(|c| c.as_i64()) {
                        if c >= 0 {
                            return i32::try_from(c).ok();
                        }
                    }
                }
            }
        }
        None
    }

    fn index_of(&self, id: i32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn starts(&self) -> u32 {
        self.nodes.iter().map(|n| n.broker.starts).sum()
    }
}

/// Polls Metadata (bounded) until it lists `n` brokers and every partition of `topic` (if
/// given) has a leader. Returns the time it took.
pub fn wait_ready(
    bootstrap: &str,
    n: usize,
    topic: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3")
        .create()?;
    let mut last = String::from("no Metadata answer");
    while t.elapsed() < deadline {
        check_interrupted()?;
        match c.fetch_metadata(topic, Duration::from_secs(2)) {
            Ok(md) => {
                let brokers = md.brokers().len();
                let led = match topic {
                    None => true,
                    Some(name) => md.topics().iter().any(|tm| {
                        tm.name() == name
                            && tm.error().is_none()
                            && tm.partitions().len() == workload::PARTITIONS as usize
                            && tm.partitions().iter().all(|p| p.leader() >= 0)
                    }),
                };
                if brokers == n && led {
                    return Ok(t.elapsed());
                }
                last = format!("{brokers} of {n} brokers, every partition led: {led}");
            }
            Err(e) => last = format!("{e}"),
        }
        // No event to await: Metadata is polled.
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("cluster not ready within {deadline:?} ({last})")
}

/// Polls Metadata (bounded) until every partition of the workload topic has its whole
/// replica set in the ISR: after healing, every replica (including one repaired after a
/// corruption) must catch up. Returns the time it took.
pub fn wait_isr_full(bootstrap: &str, deadline: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()?;
    let mut last = String::from("no Metadata answer");
    while t.elapsed() < deadline {
        check_interrupted()?;
        match c.fetch_metadata(Some(workload::TOPIC), Duration::from_secs(2)) {
            Ok(md) => {
                let short: Vec<String> = md
                    .topics()
                    .iter()
                    .filter(|tm| tm.name() == workload::TOPIC)
                    .flat_map(|tm| tm.partitions().iter())
                    .filter(|p| p.isr().len() != p.replicas().len())
                    .map(|p| format!("{}: isr {:?} of {:?}", p.id(), p.isr(), p.replicas()))
                    .collect();
                if short.is_empty() && md.topics().iter().any(|tm| tm.name() == workload::TOPIC) {
                    return Ok(t.elapsed());
                }
                last = short.join("; ");
            }
            Err(e) => last = format!("{e}"),
        }
        // No event to await: Metadata is polled.
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("replicas not all in sync within {deadline:?} ({last})")
}

/// The leader and the replicas of `topic`-`partition` from Metadata (one bounded request), if
/// it has a leader.
fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> Option<(i32, Vec<i32>)> {
    partition_state(bootstrap, topic, partition)
        .filter(|s| s.0 >= 0)
        .map(|s| (s.0, s.1))
}

/// A partition in Metadata: (leader or -1, replicas, ISR).
type PartState = (i32, Vec<i32>, Vec<i32>);

/// The [`PartState`] of `topic`-`partition` from Metadata (one bounded request).
fn partition_state(bootstrap: &str, topic: &str, partition: i32) -> Option<PartState> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .ok()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(2)).ok()?;
    let tm = md.topics().iter().find(|t| t.name() == topic)?;
    let p = tm.partitions().iter().find(|p| p.id() == partition)?;
    Some((p.leader(), p.replicas().to_vec(), p.isr().to_vec()))
}

/// Polls Metadata (bounded by `deadline`) until `cond` holds for the partition's state.
fn await_partition(
    bootstrap: &str,
    partition: i32,
    deadline: Duration,
    cond: impl Fn(&PartState) -> bool,
) -> anyhow::Result<Option<PartState>> {
    let t = Instant::now();
    while t.elapsed() < deadline {
        check_interrupted()?;
        if let Some(s) = partition_state(bootstrap, workload::TOPIC, partition) {
            if cond(&s) {
                return Ok(Some(s));
            }
        }
        // No event to await: Metadata is polled.
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(None)
}

/// Creates the workload's topic through the Admin API (CreateTopics) with the replication
/// factor and, if given, `min.insync.replicas`; retried until the deadline on errors a
/// forming cluster gives (no controller yet, timeouts). A refusal (e.g. cluster mode v0's
/// INVALID_REPLICATION_FACTOR for RF > 1) is an error at once.
pub fn create_topic(
    bootstrap: &str,
    topic: &str,
    rf: i32,
    min_isr: Option<u32>,
    unclean: bool,
    deadline: Duration,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let isr = min_isr.map(|m| m.to_string());
    let mut nt = NewTopic::new(topic, workload::PARTITIONS, TopicReplication::Fixed(rf));
    if let Some(m) = &isr {
        nt = nt.set("min.insync.replicas", m);
    }
    if unclean {
        nt = nt.set("unclean.leader.election.enable", "true");
    }
    let opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < deadline {
        check_interrupted()?;
        match rt.block_on(admin.create_topics([&nt], &opts)) {
            Ok(rs) => {
                let mut retry = false;
                for r in rs {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((
                            name,
                            c @ (RDKafkaErrorCode::NotController
                            | RDKafkaErrorCode::RequestTimedOut
                            | RDKafkaErrorCode::BrokerNotAvailable
                            | RDKafkaErrorCode::LeaderNotAvailable
                            | RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                            | RDKafkaErrorCode::OperationTimedOut),
                        )) => {
                            retry = true;
                            last = format!("{name}: {c:?}");
                        }
                        Err((name, c)) => bail!(
                            "CreateTopics {name} (replication factor {rf}, min.insync.replicas {}) refused: {c:?}",
                            isr.as_deref().unwrap_or("default")
                        ),
                    }
                }
                if !retry {
                    return Ok(());
                }
            }
            Err(e) => last = format!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("CreateTopics {topic} did not succeed within {deadline:?} ({last})")
}

/// The cluster-mode run: like `main::run` for one broker, with N nodes and node faults.
pub fn run(a: &RunArgs) -> anyhow::Result<i32> {
    let wall = Instant::now();
    if a.nodes < 2 {
        bail!("cluster scenarios need --nodes 2 or more (e.g. --nodes 3)");
    }
    if a.unsafe_no_dedup
        || a.unsafe_abort_as_commit
        || a.unsafe_offsets_no_fsync
        || a.unsafe_lso_off_by_one
    {
        bail!("cluster mode supports only the --unsafe-ack-before-fsync, --acks 1, --unsafe-unclean-election, --unsafe-wall-clock-timers and --unsafe-txn-offsets-eager controls");
    }
    let ks = kinds(&a.scenario)?;
    if let Some(k) = ks
        .iter()
        .find(|k| !k.is_cluster() && **k != FaultKind::ClockJump && **k != FaultKind::PauseClient)
    {
        bail!(
            "scenario {} ({}) is single-node only; cluster scenarios: kill-node, kill-leader, kill-controller, pause-node, power-cut-node, power-cut-all, cluster-mixed, unclean, isolate-node, partition-halves, partition-ring, partition-oneway, partition-clients, cluster-partitions, corrupt-node, cluster-all, none",
            a.scenario,
            k.name()
        );
    }
    let planned = plan(&a.scenario, a.seed, a.seconds)?;
    let needs_disk = ks.iter().any(|k| k.needs_disk());
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "chaos-out/{}-n{}{}-{}",
            a.scenario,
            a.nodes,
            if a.unsafe_ack_before_fsync {
                "-unsafe"
            } else {
                ""
            },
            a.seed
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if ks.contains(&FaultKind::PauseClient) && a.java_producers == 0 {
        bail!("the pause-client scenario pauses Java producers: add --java-producers 1 or more");
    }
    let java_cp = if a.java_producers > 0 {
        match crate::java_classpath(a, &out)? {
            Some(cp) => Some(cp),
            None => return Ok(3),
        }
    } else {
        None
    };
    let broker_bin = match &a.broker_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("holdfast"))
            .context("locating the holdfast binary")?,
    };
    if !broker_bin.exists() {
        bail!(
            "broker binary {} not found (use --broker-bin)",
            broker_bin.display()
        );
    }
    // Drop order: the cluster (processes, then mounts) before the work directory.
    let work = WorkDir::create(&format!("{}-n{}-{}", a.scenario, a.nodes, a.seed))?;
    let mut notes = Vec::new();
    let root = env::is_root();
    if !root {
        notes.push("not root: no loop-mounted ext4 images, data in plain temp dirs".into());
    }
    let mut unsafe_env = Vec::new();
    if a.unsafe_ack_before_fsync {
        unsafe_env.push("HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC");
        notes.push("NEGATIVE CONTROL: every node acknowledges before fsync".into());
    }
    if a.unsafe_wall_clock_timers {
        unsafe_env.push("HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS");
        notes.push("NEGATIVE CONTROL: every node measures timeouts on the wall clock".into());
    }
    if a.unsafe_txn_offsets_eager {
        unsafe_env.push("HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER");
        notes.push(
            "NEGATIVE CONTROL: transactional offsets take effect before the transaction commits"
                .into(),
        );
    }
    // As root every node gets its own network namespace, so partitions can be cut between
    // nodes; without it, partition scenarios are skipped (said, not silently).
    let needs_netns = ks.iter().any(|k| k.needs_netns());
    let net = if root {
        match netns::available()
            .and_then(|()| netns::Net::create(a.nodes).map_err(|e| format!("{e:#}")))
        {
            Ok(net) => Some(net),
            Err(e) => {
                notes.push(format!("no network namespaces: {e}"));
                None
            }
        }
    } else {
        None
    };
    if needs_netns && net.is_none() {
        let msg = format!(
            "SKIPPED scenario {}: network partitions between nodes need root and `ip netns` ({})",
            a.scenario,
            notes.join("; ")
        );
        println!("chaos: {msg}");
        std::fs::write(out.join("report.txt"), format!("{msg}\n"))?;
        return Ok(3);
    }
    if net.is_some() {
        notes.push(
            "not available here: probabilistic packet loss and delays (no netem, nft or iptables on this machine)"
                .into(),
        );
    }
    if a.acks == "1" {
        workload::ACKS_ONE.store(true, Ordering::Relaxed);
        notes.push(
            "NEGATIVE CONTROL: the workload's producers use acks=1 (leader-only acknowledgement, idempotence off)"
                .into(),
        );
    }
    let mut cl = Cluster::create(
        &broker_bin,
        &work.path,
        &out,
        a.nodes,
        root,
        net,
        &unsafe_env,
        &mut notes,
    )?;
    if a.unsafe_unclean_election {
        notes.push(
            "NEGATIVE CONTROL: the workload's topic has unclean.leader.election.enable=true".into(),
        );
    }
    if ks.contains(&FaultKind::Unclean) {
        // A stopped follower must leave the ISR well within the broker session timeout (it
        // is not fenced meanwhile).
        for n in cl.nodes.iter_mut() {
            n.broker.extra_args.push("--set".into());
            n.broker
                .extra_args
                .push(format!("replica.lag.time.max.ms={UNCLEAN_LAG_MS}"));
        }
        notes.push(format!(
            "scenario unclean: replica.lag.time.max.ms={UNCLEAN_LAG_MS} on every node"
        ));
    }
    if ks.contains(&FaultKind::ClockJump) {
        let Some(lib) = env::libfaketime() else {
            return crate::skip_no_libfaketime(&a.scenario, &out);
        };
        for n in cl.nodes.iter_mut() {
            let file = work.path.join(format!("node-{}", n.id)).join("clock");
            n.broker.clock = Some(env::Clock::create(&lib, &file)?);
        }
        notes.push(format!(
            "every node runs under {} (a clock-jump fault shifts one node's wall clock; monotonic clocks real)",
            lib.display()
        ));
    }
    let with_disks = cl.nodes.iter().all(|n| n.disk.is_some());
    if needs_disk && !with_disks {
        let msg = format!(
            "SKIPPED scenario {}: power cuts need a loop-mounted ext4 image per node ({})",
            a.scenario,
            notes.join("; ")
        );
        println!("chaos: {msg}");
        std::fs::write(out.join("report.txt"), format!("{msg}\n"))?;
        return Ok(3);
    }
    let all = cl.all();
    cl.start(&all, Duration::from_secs(60))?;
    let bootstrap = cl.bootstrap();
    let formed =
        wait_ready(&bootstrap, a.nodes, None, READY_DEADLINE).context("forming the cluster")?;
    notes.push(format!(
        "formed: Metadata listed {} brokers {} ms after the processes were listening",
        a.nodes,
        formed.as_millis()
    ));
    create_topic(
        &bootstrap,
        workload::TOPIC,
        a.replication_factor,
        a.min_insync_replicas,
        a.unsafe_unclean_election,
        Duration::from_secs(30),
    )?;
    workload::create_topic(&bootstrap, READY_DEADLINE)?;
    notes.push(format!(
        "topic {} created through the Admin API: {} partitions, replication factor {}, min.insync.replicas {}",
        workload::TOPIC,
        workload::PARTITIONS,
        a.replication_factor,
        a.min_insync_replicas
            .map_or("cluster default".to_string(), |m| m.to_string())
    ));
    workload::SOCKET_TIMEOUT_MS.store(0, Ordering::Relaxed);
    // `--txn`: the transactional workload on its own replicated topic, against the cluster's
    // transaction coordinators (leaders of `__transaction_state` partitions).
    if a.txn || a.copy {
        create_topic(
            &bootstrap,
            crate::txn::TOPIC,
            a.replication_factor,
            a.min_insync_replicas,
            false,
            Duration::from_secs(30),
        )?;
    }
    if a.copy {
        create_topic(
            &bootstrap,
            crate::copy::TOPIC,
            a.replication_factor,
            a.min_insync_replicas,
            false,
            Duration::from_secs(30),
        )?;
    }
    let mut java = crate::java_spawn(a, java_cp.as_ref(), &out, &bootstrap, &mut notes)?;

    let rec = Arc::new(Recorder::create(&out.join("history.jsonl"))?);
    if let Some(j) = java.as_mut() {
        notes.extend(j.start(&rec)?);
    }
    let txn_load = (a.txn || a.copy).then(|| {
        (
            crate::txn::TxnWorkload::start(&bootstrap, a.seed),
            a.copy
                .then(|| crate::copy::Copier::start(&bootstrap, a.seed)),
        )
    });
    let load = workload::Workload::start(&bootstrap, &rec, a.seed, a.rate);
    // `--groups`: the consumer-group workload (members, commits, a watcher of the committed
    // offsets) against the cluster's group coordinator, which moves with the leadership of
    // `__consumer_offsets` partitions.
    let group_load = a
        .groups
        .then(|| crate::groups::GroupWorkload::start(&bootstrap, &rec, a.seed));
    let mut applied = Vec::new();
    let mut restart_failures = Vec::new();
    // `corrupt-node` strikes one node per run, drawn from the seed (not from the schedule's
    // generator, so other scenarios' schedules are unchanged).
    let corrupt_victim = fastrand::Rng::with_seed(a.seed ^ 0x00c0_ffee).usize(..a.nodes);
    if ks.contains(&FaultKind::CorruptNode) {
        notes.push(format!(
            "corrupt-node corrupts node {} only (a minority of {})",
            corrupt_victim + 1,
            a.nodes
        ));
    }
    for f in &planned {
        sleep_until(&rec, f.at_ms)?;
        let op = rec.next_op();
        rec.record(Event::new(Kind::Invoke, F::Fault, "nemesis", op).value(f.kind.name()));
        let start_us = rec.now_us();
        let injected = if f.kind == FaultKind::PauseClient {
            crate::pause_client(java.as_mut(), f)
        } else {
            inject(f, &mut cl, &rec, corrupt_victim)
        };
        let detail = match injected {
            Ok(d) => d,
            Err(e) => {
                restart_failures.push(format!("{} at {} ms: {e:#}", f.kind.name(), f.at_ms));
                format!("FAILED: {e:#}")
            }
        };
        rec.record(
            Event::new(Kind::Ok, F::Fault, "nemesis", op)
                .value(f.kind.name())
                .error(None, detail.clone()),
        );
        applied.push(Applied {
            kind: f.kind,
            start_us,
            end_us: rec.now_us(),
            detail,
        });
    }
    sleep_until(&rec, a.seconds * 1000)?;

    // Heal: remove every network cut, SIGCONT every node, restart every node that is down,
    // then wait until the cluster is whole (every broker registered, every partition led).
    let heal_t = rec.now_us();
    if let Some(j) = java.as_mut() {
        j.resume_all();
    }
    if let Some(net) = cl.net.as_mut() {
        if let Err(e) = net.heal() {
            restart_failures.push(format!("removing network cuts at heal: {e:#}"));
        }
    }
    let mut down = Vec::new();
    for n in cl.nodes.iter_mut() {
        if let Some(c) = n.broker.clock.as_mut() {
            if let Err(e) = c.set(0) {
                restart_failures.push(format!("resetting node {}'s clock at heal: {e:#}", n.id));
            }
        }
    }
    for (i, n) in cl.nodes.iter_mut().enumerate() {
        if n.broker.alive() {
            let _ = n.broker.resume();
        } else {
            let _ = n.broker.kill();
            down.push(i);
        }
    }
    if !down.is_empty() {
        if let Err(e) = cl.start(&down, Duration::from_secs(60)) {
            restart_failures.push(format!("restart at heal: {e:#}"));
        }
    }
    let op = rec.next_op();
    rec.record(Event::new(Kind::Ok, F::Fault, "nemesis", op).value("heal"));
    notes.push(format!(
        "healed at {:.1} s ({} node(s) restarted)",
        heal_t as f64 / 1e6,
        down.len()
    ));
    let ready = wait_ready(&bootstrap, a.nodes, Some(workload::TOPIC), READY_DEADLINE);
    match &ready {
        Ok(d) => notes.push(format!(
            "after healing: Metadata listed {} brokers and a leader for every partition within {} ms",
            a.nodes,
            d.as_millis()
        )),
        Err(e) => notes.push(format!("after healing: {e:#}")),
    }
    check_interrupted()?;
    if let Some(j) = java.as_mut() {
        j.request_stop();
    }
    let stop_res = load.stop();
    let java_err = crate::java_stop(java, &mut notes);
    check_interrupted()?;
    if let Err(e) = &stop_res {
        notes.push(format!("workload thread error: {e:#}"));
    }
    // The group drains what the producers wrote (liveness), then stops; its final committed
    // offsets are read by a fresh client.
    let mut group_errors = Vec::new();
    if let Some(g) = group_load {
        match g.finish(&rec) {
            Ok(end) => {
                notes.push(format!(
                    "group {}: final committed {:?}, high watermarks after the producers stopped {:?}, {}",
                    crate::groups::GROUP,
                    end.committed,
                    end.target,
                    match &end.liveness {
                        Ok(d) => format!("caught up {} ms after the producers stopped", d.as_millis()),
                        Err(e) => format!("NOT caught up: {e}"),
                    }
                ));
                notes.extend(end.notes);
            }
            Err(e) => group_errors.push(format!("{e:#}")),
        }
        check_interrupted()?;
    }
    let txn_anomalies = match txn_load {
        Some((t, c)) => crate::txn::finish(t, c, &bootstrap, &mut notes),
        None => Vec::new(),
    };
    check_interrupted()?;
    let probe =
        workload::probe(&bootstrap, &rec, Duration::from_secs(30)).map_err(|e| format!("{e:#}"));
    let fr = workload::final_read(&bootstrap, &rec, Duration::from_secs(60));
    // Every replica back in the ISR (the producers have stopped, so followers catch up).
    let in_sync = wait_isr_full(&bootstrap, READY_DEADLINE);
    match &in_sync {
        Ok(d) => notes.push(format!(
            "after healing: every replica of {} in the ISR {} ms after the final read",
            workload::TOPIC,
            d.as_millis()
        )),
        Err(e) => notes.push(format!("after healing: {e:#}")),
    }
    let (bounds, reached) = match &fr {
        Ok(f) => (f.bounds.clone(), f.reached.clone()),
        Err(e) => {
            notes.push(format!("final read failed: {e:#}"));
            Default::default()
        }
    };
    if rec.overflowed() {
        bail!(
            "history exceeded {} events; run shorter",
            history::MAX_EVENTS
        );
    }
    let events = rec.finish()?;
    notes.extend(producer_progress(&events, heal_t));
    // Read before the nodes stop (a controlled shutdown fences the node, legitimately).
    let spurious = timeouts_in_logs(&out, a.nodes);
    for n in cl.nodes.iter_mut() {
        n.broker.stop();
    }
    // Kafka records unclean elections; Holdfast writes them to its loss ledger, logged by
    // the controller that decided them.
    let unclean = (1..=a.nodes)
        .filter_map(|id| std::fs::read_to_string(out.join(format!("node-{id}.log"))).ok())
        .map(|log| log.matches("reason=\"unclean_election\"").count())
        .sum::<usize>();
    if unclean > 0 {
        notes.push(format!(
            "loss ledger: {unclean} unclean_election record(s) in the node logs"
        ));
    }
    let coverage = if fr.is_ok() {
        bounds
            .iter()
            .map(|(p, (_, hw))| (*p, (*hw, reached.get(p).copied().unwrap_or(0))))
            .collect()
    } else {
        (0..workload::PARTITIONS).map(|p| (p, (1, 0))).collect()
    };
    let mut verdict = checker::check(&events, &coverage);
    let dirs: Vec<std::path::PathBuf> =
        cl.nodes.iter().map(|n| n.broker.data_dir.clone()).collect();
    notes.extend(crate::dups::explain(&mut verdict, &dirs, workload::TOPIC));
    if a.groups {
        verdict
            .anomalies
            .extend(checker::check_groups(&events, &bounds));
        for e in group_errors {
            verdict.anomalies.push(checker::Anomaly {
                class: "group-workload",
                what: e,
                ops: Vec::new(),
                at_us: None,
            });
        }
    }
    verdict.anomalies.extend(txn_anomalies);
    // A wall-clock step slows no node and loses no packet: when it is the only fault, no
    // follower may be dropped from an ISR and no broker fenced. Timeouts measured on the wall
    // clock would do both (a step forward makes every peer look silent for the step).
    if !ks.is_empty() && ks.iter().all(|k| *k == FaultKind::ClockJump) {
        for (what, n) in [
            ("ISR shrink(s) proposed", spurious.0),
            ("controller tick(s) fencing a broker", spurious.1),
        ] {
            if n > 0 {
                verdict.anomalies.push(checker::Anomaly {
                    class: "clock-spurious-timeout",
                    what: format!(
                        "{n} {what} in the node logs while the only faults were wall-clock steps"
                    ),
                    ops: Vec::new(),
                    at_us: None,
                });
            }
        }
    }
    for r in restart_failures {
        verdict.anomalies.push(checker::Anomaly {
            class: "broker-did-not-recover",
            what: r,
            ops: Vec::new(),
            at_us: None,
        });
    }
    if let Err(e) = &ready {
        verdict.anomalies.push(checker::Anomaly {
            class: "liveness",
            what: format!("cluster after healing: {e:#}"),
            ops: Vec::new(),
            at_us: None,
        });
    }
    if let Err(e) = &probe {
        verdict.anomalies.push(checker::Anomaly {
            class: "liveness",
            what: format!("produce after healing: {e}"),
            ops: Vec::new(),
            at_us: None,
        });
    }
    if let Err(e) = &in_sync {
        verdict.anomalies.push(checker::Anomaly {
            class: "liveness",
            what: format!("after healing: {e:#}"),
            ops: Vec::new(),
            at_us: None,
        });
    }
    let summary = RunSummary {
        scenario: a.scenario.clone(),
        cluster: Some((a.nodes, a.replication_factor, a.min_insync_replicas)),
        seed: a.seed,
        seconds: a.seconds,
        unsafe_ack_before_fsync: a.unsafe_ack_before_fsync,
        unsafe_no_dedup: false,
        data_dir: if with_disks {
            format!(
                "{} loop-mounted ext4 images ({} MiB each), one per node",
                a.nodes,
                env::IMAGE_MB
            )
        } else {
            "plain temp directories".into()
        },
        planned,
        applied,
        notes,
        broker_starts: cl.starts(),
        probe,
        final_bounds: bounds,
        final_reached: reached,
        wall: wall.elapsed(),
    };
    let text = report::text(&summary, &verdict);
    print!("{text}");
    std::fs::write(out.join("report.txt"), &text)?;
    std::fs::write(
        out.join("timeline.svg"),
        report::svg(&summary, &events, &verdict),
    )?;
    println!(
        "chaos: wrote {}/report.txt, timeline.svg, history.jsonl, node-*.log",
        out.display()
    );
    if let Some(e) = java_err {
        bail!("the run proves nothing about the Java sends: {e}");
    }
    drop(cl);
    drop(work);
    Ok(if verdict.anomalies.is_empty() { 0 } else { 1 })
}

/// How the workload's long-lived producers fared: acknowledgements per producer session
/// before and after the heal, and a `STALLED` note for a session that sent after the heal but
/// got no acknowledgement then (the fresh liveness probe can pass while the workload's own
/// producers never recover; a client stall, not counted as an anomaly yet).
pub fn producer_progress(events: &[Event], heal_us: u64) -> Vec<String> {
    use std::collections::BTreeMap;
    // session -> (acks before heal, acks after, failed or indefinite after, last ack)
    let mut per: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == F::Send && e.value.is_some())
    {
        let s = per.entry(e.process.as_str()).or_default();
        match (e.kind, e.t_us >= heal_us) {
            (Kind::Ok, false) => s.0 += 1,
            (Kind::Ok, true) => s.1 += 1,
            (Kind::Info | Kind::Fail, true) => s.2 += 1,
            _ => {}
        }
        if e.kind == Kind::Ok {
            s.3 = s.3.max(e.t_us);
        }
    }
    let mut out = vec![format!(
        "producers (acks before heal / after heal / failed or indefinite after heal, last ack): {}",
        per.iter()
            .map(|(p, s)| format!("{p} {}/{}/{} @{:.1} s", s.0, s.1, s.2, s.3 as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    for (p, s) in &per {
        if s.1 == 0 && s.2 > 0 {
            out.push(format!(
                "STALLED (not failing the run): producer {p} got no acknowledgement after the heal ({} sends failed or indefinite; last ack at {:.1} s) while fresh producers were served",
                s.2,
                s.3 as f64 / 1e6
            ));
        }
    }
    out
}

/// Injects one node fault, holds it, heals it. Returns a description.
fn inject(
    f: &Planned,
    cl: &mut Cluster,
    rec: &Arc<Recorder>,
    corrupt_victim: usize,
) -> anyhow::Result<String> {
    let hold = Duration::from_millis(f.hold_ms);
    let n = cl.nodes.len();
    let chosen = (f.target % n as u64) as usize;
    match f.kind {
        FaultKind::KillNode | FaultKind::KillController => {
            let (i, how) = if f.kind == FaultKind::KillController {
                match cl.controller_id().and_then(|id| cl.index_of(id)) {
                    Some(i) => (i, "the active controller".to_string()),
                    None => (
                        chosen,
                        "no controller id in Metadata; seeded node instead".into(),
                    ),
                }
            } else {
                (chosen, "seeded".into())
            };
            let id = cl.nodes[i].id;
            crash_mark(rec);
            cl.nodes[i].broker.kill()?;
            sleep(hold)?;
            let up = cl.start(&[i], Duration::from_secs(30))?;
            Ok(format!(
                "SIGKILL node {id} ({how}), down {} ms, restarted in {} ms",
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::KillLeader => {
            // The followers of one partition stop (SIGSTOP) for FOLLOWERS_STOPPED, still in
            // the ISR, while the producers keep sending; then its leader is SIGKILLed and the
            // followers continue, and one of them is elected (a clean election). Under acks=all
            // nothing sent while the followers were stopped was acknowledged; under acks=1
            // (the negative control) the leader alone acknowledged it, and it is lost when the
            // old leader rejoins and truncates to the new leader.
            let part = (f.target % workload::PARTITIONS as u64) as i32;
            let found = leader_of(&cl.bootstrap(), workload::TOPIC, part)
                .and_then(|(l, r)| cl.index_of(l).map(|i| (i, r)));
            let (i, followers, how) = match found {
                Some((i, replicas)) => {
                    let leader = cl.nodes[i].id;
                    let fs: Vec<usize> = replicas
                        .iter()
                        .filter(|&&r| r != leader)
                        .filter_map(|&r| cl.index_of(r))
                        .collect();
                    (i, fs, format!("leader of partition {part}"))
                }
                None => (
                    chosen,
                    Vec::new(),
                    format!("no leader of partition {part} in Metadata; seeded node instead"),
                ),
            };
            let id = cl.nodes[i].id;
            let mut stopped = Vec::new();
            for &fi in &followers {
                if cl.nodes[fi].broker.pause().is_ok() {
                    stopped.push(fi);
                }
            }
            sleep(FOLLOWERS_STOPPED)?;
            let after_ack = rec.wait_for_ack(Duration::from_secs(2));
            crash_mark(rec);
            let killed = cl.nodes[i].broker.kill();
            for &fi in &stopped {
                let _ = cl.nodes[fi].broker.resume();
            }
            killed?;
            sleep(hold)?;
            let up = cl.start(&[i], Duration::from_secs(30))?;
            let ids: Vec<i32> = stopped.iter().map(|&fi| cl.nodes[fi].id).collect();
            Ok(format!(
                "SIGSTOP followers {ids:?} for {} ms, SIGKILL node {id} ({how}){}, SIGCONT followers, down {} ms, restarted in {} ms",
                FOLLOWERS_STOPPED.as_millis(),
                if after_ack { " after an ack" } else { "" },
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::Unclean => {
            // A partition away from the active controller if there is one (from the seeded
            // one on): stopping the controller would hold up the ISR change, killing it the
            // election, for a Raft election each.
            let controller = cl.controller_id();
            let bs = cl.bootstrap();
            let start = f.target % workload::PARTITIONS as u64;
            let states: Vec<(i32, (i32, Vec<i32>))> = (0..workload::PARTITIONS as u64)
                .map(|k| ((start + k) % workload::PARTITIONS as u64) as i32)
                .filter_map(|p| leader_of(&bs, workload::TOPIC, p).map(|s| (p, s)))
                .collect();
            let Some((part, (leader, replicas))) = states
                .iter()
                .find(|(_, (_, r))| !r.iter().any(|&x| Some(x) == controller))
                .or_else(|| states.first())
                .cloned()
            else {
                bail!("no partition with a leader in Metadata");
            };
            let li = cl
                .index_of(leader)
                .context("the leader is not a node of this run")?;
            let followers: Vec<i32> = replicas.into_iter().filter(|&r| r != leader).collect();
            if followers.is_empty() {
                bail!("partition {part} has no follower (replication factor 1)");
            }
            // Stop the followers until the leader has shrunk the ISR to itself (bounded: well
            // inside the broker session timeout, so the stopped nodes are not fenced).
            let mut stopped = Vec::new();
            for &fid in &followers {
                if let Some(fi) = cl.index_of(fid) {
                    cl.nodes[fi].broker.pause()?;
                    stopped.push(fi);
                }
            }
            let t = Instant::now();
            let shrunk = await_partition(
                &cl.bootstrap(),
                part,
                Duration::from_millis(SESSION_TIMEOUT_MS - 500),
                |s| s.2 == [leader],
            );
            // Writes the leader alone acknowledges while the followers are out of the ISR.
            let after_ack =
                matches!(shrunk, Ok(Some(_))) && rec.wait_for_ack(Duration::from_secs(1));
            let shrink_ms = t.elapsed().as_millis();
            crash_mark(rec);
            let killed = cl.nodes[li].broker.kill();
            for &fi in &stopped {
                let _ = cl.nodes[fi].broker.resume();
            }
            killed?;
            let shrunk = shrunk?.is_some();
            // Down for the hold, or until another replica leads (an unclean election).
            let elected =
                await_partition(&cl.bootstrap(), part, hold, |s| s.0 >= 0 && s.0 != leader)?;
            let down = t.elapsed().as_millis() - shrink_ms;
            let up = cl.start(&[li], Duration::from_secs(30))?;
            Ok(format!(
                "partition {part}: SIGSTOP followers {followers:?}, ISR {} in {shrink_ms} ms{}, SIGKILL leader {leader}, SIGCONT followers; {}; leader restarted after {down} ms in {} ms",
                if shrunk { format!("shrunk to [{leader}]") } else { "NOT shrunk".into() },
                if after_ack { " and an ack after" } else { "" },
                match elected {
                    Some(s) => format!("node {} elected leader while {leader} was down (ISR {:?})", s.0, s.2),
                    None => format!("no other replica led within {} ms", f.hold_ms),
                },
                up.as_millis()
            ))
        }
        FaultKind::PauseNode => {
            let id = cl.nodes[chosen].id;
            cl.nodes[chosen].broker.pause()?;
            sleep(hold)?;
            cl.nodes[chosen].broker.resume()?;
            Ok(format!("SIGSTOP node {id} for {} ms, SIGCONT", f.hold_ms))
        }
        FaultKind::PowerCutNode => {
            let after_ack = rec.wait_for_ack(Duration::from_secs(2));
            let id = cl.nodes[chosen].id;
            crash_mark(rec);
            cl.nodes[chosen].broker.kill()?;
            let copy = cl.nodes[chosen]
                .disk
                .as_mut()
                .context("power cut without a disk image")?
                .cut_power()?;
            sleep(hold)?;
            let up = cl.start(&[chosen], Duration::from_secs(30))?;
            Ok(format!(
                "node {id}: SIGKILL{} + image copied in {} ms + remounted, down {} ms more, restarted (recovery) in {} ms",
                if after_ack { " right after an ack" } else { "" },
                copy.as_millis(),
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::PowerCutAll => {
            let after_ack = rec.wait_for_ack(Duration::from_secs(2));
            crash_mark(rec);
            // One loop of kill() calls, nothing else in between: the closest this machine
            // gets to every node losing power at the same instant.
            let t = Instant::now();
            let mut results = Vec::with_capacity(n);
            for node in cl.nodes.iter_mut() {
                results.push(node.broker.sigkill_nowait());
            }
            let spread = t.elapsed();
            for node in cl.nodes.iter_mut() {
                node.broker.reap()?;
            }
            for r in results {
                r?;
            }
            // Every node is dead before any image is copied: nothing is written back
            // after the instant of the cut.
            let t = Instant::now();
            for node in cl.nodes.iter_mut() {
                node.disk
                    .as_mut()
                    .context("power cut without a disk image")?
                    .cut_power()?;
            }
            let copies = t.elapsed();
            sleep(hold)?;
            let all = cl.all();
            let up = cl.start(&all, Duration::from_secs(60))?;
            // The whole cluster was down: the fault ends when it is whole again (quorum
            // elected, every broker registered once its previous incarnation is fenced,
            // every partition led), so the next cut strikes a serving cluster.
            let led = wait_ready(&cl.bootstrap(), n, Some(workload::TOPIC), READY_DEADLINE)
                .context("cluster not whole again after a coordinated power cut")?;
            let whole = workload::probe_tagged(
                &cl.bootstrap(),
                rec,
                READY_DEADLINE,
                &format!("ready{}", f.at_ms),
            )
            .context("no produce acknowledged on every partition after a coordinated power cut")?;
            Ok(format!(
                "COORDINATED: SIGKILL of all {n} nodes{} within {} us, {n} images copied in {} ms + remounted, down {} ms more, all restarted (recovery) in {} ms, Metadata: every partition led {} ms later, a produce acknowledged on every partition {} ms after that",
                if after_ack { " right after an ack" } else { "" },
                spread.as_micros(),
                copies.as_millis(),
                f.hold_ms,
                up.as_millis(),
                led.as_millis(),
                whole.as_millis()
            ))
        }
        FaultKind::CorruptNode => {
            // Always the same node in a run: corruption on a minority (one of N).
            let victim = corrupt_victim % n;
            let id = cl.nodes[victim].id;
            crash_mark(rec);
            cl.nodes[victim].broker.kill()?;
            let what = corrupt_a_segment(&cl.nodes[victim].broker.data_dir, f.target)?;
            sleep(hold)?;
            let up = cl.start(&[victim], Duration::from_secs(30))?;
            Ok(format!(
                "node {id}: SIGKILL, {what}, down {} ms, restarted in {} ms",
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::ClockJump => {
            let id = cl.nodes[chosen].id;
            let offset_s = crate::clock_offset_s(f.target);
            let clock = cl.nodes[chosen]
                .broker
                .clock
                .as_mut()
                .context("a clock jump without libfaketime")?;
            clock.step_for(offset_s, hold)?;
            Ok(format!(
                "node {id}: wall clock {offset_s:+} s for {} ms, then back to real time",
                f.hold_ms
            ))
        }
        k if k.needs_netns() => {
            let net = cl
                .net
                .as_mut()
                .context("a network partition without network namespaces")?;
            let what = partition(k, f.target, n, net)?;
            let cuts = net.describe_cuts();
            sleep(hold)?;
            let removed = net.heal()?;
            Ok(format!(
                "{what}: {removed} cut direction(s) [{cuts}] for {} ms, healed",
                f.hold_ms
            ))
        }
        k => bail!("fault {} is not a cluster fault", k.name()),
    }
}

/// (ISR shrinks proposed, controller ticks that wrote records) counted in the node logs so
/// far. A tick writes records only to fence a broker whose session expired, or for an
/// unclean election (off unless the topic enables it).
fn timeouts_in_logs(out: &Path, nodes: usize) -> (usize, usize) {
    (1..=nodes)
        .filter_map(|id| std::fs::read_to_string(out.join(format!("node-{id}.log"))).ok())
        .fold((0, 0), |(s, f), log| {
            (
                s + log.matches("ISR shrink proposed").count(),
                f + log.matches("controller tick records=").count(),
            )
        })
}

/// Flips 16 bytes in the middle of the largest segment file of one (seeded) partition of the
/// workload topic under `data_dir`: a corrupt batch followed by valid data, which recovery
/// reports as corruption (not a torn tail). Returns what it did.
fn corrupt_a_segment(data_dir: &Path, target: u64) -> anyhow::Result<String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let partitions = workload::PARTITIONS as u64;
    let p = (target / 7) % partitions;
    let dir = data_dir.join(format!("{}-{p}", workload::TOPIC));
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .collect();
    segments.sort();
    let Some((len, path)) = segments.pop() else {
        return Ok(format!("partition {p}: no segment to corrupt"));
    };
    if len < 4096 {
        return Ok(format!(
            "partition {p}: segment of {len} bytes, too small to corrupt"
        ));
    }
    let at = len / 2;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut buf = [0u8; 16];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&buf)?;
    f.sync_all()?;
    Ok(format!(
        "partition {p}: 16 bytes flipped at byte {at} of {} ({len} bytes)",
        path.file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
    ))
}

/// Where a cut direction goes: another node, or the clients (the bridge address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Node(usize),
    Clients,
}

/// The cut directions of partition fault `kind` over `n` nodes, drawn from `target` (the
/// seeded schedule), and a description.
fn partition_cuts(
    kind: FaultKind,
    target: u64,
    n: usize,
) -> anyhow::Result<(String, Vec<(usize, Dest)>)> {
    let mut rng = fastrand::Rng::with_seed(target);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let ids = |v: &[usize]| {
        v.iter()
            .map(|i| (i + 1).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cuts = Vec::new();
    let mut pair = |a: usize, b: usize| {
        cuts.push((a, Dest::Node(b)));
        cuts.push((b, Dest::Node(a)));
    };
    let what = match kind {
        FaultKind::IsolateNode => {
            for &b in &order[1..] {
                pair(order[0], b);
            }
            format!("node {} isolated from the other nodes", order[0] + 1)
        }
        FaultKind::PartitionHalves => {
            let (minority, majority) = order.split_at(n / 2);
            for &a in minority {
                for &b in majority {
                    pair(a, b);
                }
            }
            format!(
                "partition: nodes [{}] | nodes [{}]",
                ids(minority),
                ids(majority)
            )
        }
        FaultKind::PartitionRing => {
            // Ring order[0] - order[1] - ... - order[n-1] - order[0]: every other pair is cut.
            for x in 0..n {
                for y in (x + 1)..n {
                    let adjacent = y == x + 1 || (x == 0 && y == n - 1);
                    if !adjacent {
                        pair(order[x], order[y]);
                    }
                }
            }
            format!(
                "ring [{}]: each node reaches only its neighbours",
                ids(&order)
            )
        }
        FaultKind::PartitionOneWay => {
            let (a, b) = (order[0], order[1 % n]);
            cuts.push((a, Dest::Node(b)));
            format!("node {} cannot send to node {}", a + 1, b + 1)
        }
        FaultKind::PartitionClients => {
            cuts.push((order[0], Dest::Clients));
            format!("node {} cannot answer clients", order[0] + 1)
        }
        k => bail!("fault {} is not a network partition", k.name()),
    };
    Ok((what, cuts))
}

/// Cuts the network as fault `kind` says. Returns what it did.
fn partition(
    kind: FaultKind,
    target: u64,
    n: usize,
    net: &mut netns::Net,
) -> anyhow::Result<String> {
    let (what, cuts) = partition_cuts(kind, target, n)?;
    for (from, to) in cuts {
        let addr = match to {
            Dest::Node(b) => net.node_ip(b),
            Dest::Clients => net.host_ip(),
        };
        net.cut(from, &addr)?;
    }
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(kind: Kind, process: &str, t_us: u64) -> Event {
        let mut e = Event::new(kind, F::Send, process, 1).value("v");
        e.t_us = t_us;
        e
    }

    #[test]
    fn partitions_cut_what_their_kind_says() {
        use std::collections::BTreeSet;
        for target in 0..20u64 {
            let n = 5;
            let (_, iso) = partition_cuts(FaultKind::IsolateNode, target, n).expect("isolate");
            assert_eq!(iso.len(), 2 * (n - 1));
            let (_, halves) =
                partition_cuts(FaultKind::PartitionHalves, target, n).expect("halves");
            assert_eq!(
                halves.len(),
                2 * 2 * 3,
                "minority 2 x majority 3, both ways"
            );
            let (_, ring) = partition_cuts(FaultKind::PartitionRing, target, n).expect("ring");
            for node in 0..n {
                let reachable: BTreeSet<usize> = (0..n)
                    .filter(|o| *o != node && !ring.contains(&(node, Dest::Node(*o))))
                    .collect();
                assert_eq!(
                    reachable.len(),
                    2,
                    "node {node} keeps its two ring neighbours"
                );
            }
            let (_, one) = partition_cuts(FaultKind::PartitionOneWay, target, n).expect("oneway");
            assert_eq!(one.len(), 1);
            assert!(matches!(one[0], (a, Dest::Node(b)) if a != b));
            let (_, cl) = partition_cuts(FaultKind::PartitionClients, target, n).expect("clients");
            assert!(matches!(cl[..], [(_, Dest::Clients)]));
        }
        // The same target gives the same cuts; three nodes have no ring to cut.
        assert_eq!(
            partition_cuts(FaultKind::PartitionHalves, 7, 3)
                .expect("a")
                .1,
            partition_cuts(FaultKind::PartitionHalves, 7, 3)
                .expect("b")
                .1
        );
        assert!(partition_cuts(FaultKind::PartitionRing, 7, 3)
            .expect("ring")
            .1
            .is_empty());
        assert!(partition_cuts(FaultKind::KillNode, 7, 3).is_err());
    }

    #[test]
    fn a_producer_without_acks_after_the_heal_is_reported_stalled() {
        let events = vec![
            send(Kind::Ok, "p0.0", 1_000_000),
            send(Kind::Ok, "p1.0", 1_000_000),
            send(Kind::Ok, "p1.0", 9_000_000),
            send(Kind::Info, "p0.0", 9_500_000),
            send(Kind::Info, "p1.0", 9_500_000),
        ];
        let notes = producer_progress(&events, 5_000_000);
        assert!(notes[0].contains("p0.0 1/0/1 @1.0 s"), "{notes:?}");
        assert!(notes[0].contains("p1.0 1/1/1 @9.0 s"), "{notes:?}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[1].starts_with("STALLED") && notes[1].contains("p0.0"));
    }
}
