//! `holdfast-chaos`: starts a real holdfast broker, drives it with librdkafka (the `rdkafka`
//! crate), injects faults on a schedule derived only from the seed, records a JSONL history,
//! heals, reads everything back with a fresh consumer and checks the history.
//!
//! Exit status: 0 pass, 1 the checker found anomalies, 2 harness error, 3 skipped (the
//! scenario needs something this machine cannot do, e.g. loop mounts without root).

mod checker;
mod cluster;
mod copy;
mod cycles;
mod dups;
mod env;
mod groups;
mod history;
mod java;
mod netns;
mod netproxy;
mod report;
mod txn;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::env::{Broker, Disk, WorkDir};
use crate::history::{Event, Kind, Recorder, F};

#[derive(Parser)]
#[command(
    name = "holdfast-chaos",
    about = "Fault-injection harness for holdfast"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one scenario with one seed and checks it.
    Run(RunArgs),
    /// Prints the fault schedule a scenario and seed give, without running anything.
    Plan(RunArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// kill | pause | power-cut | disk-full | mixed | partition | blackhole | delay | net |
    /// fsync-eio | none; cluster scenarios: kill-node | kill-leader | unclean | kill-controller | pause-node |
    /// power-cut-node | power-cut-all | cluster-mixed
    #[arg(long)]
    scenario: String,
    /// Number of holdfast nodes. 1 (the default) runs one broker without a quorum, as
    /// before; more (or a cluster scenario) runs a cluster (`holdfast format` + `serve
    /// --controller-quorum-voters`), each node on its own ext4 image when root.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Replication factor of the workload's topic (cluster mode; created through the Admin
    /// API). Cluster mode v0 accepts only 1.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// `min.insync.replicas` of the workload's topic (cluster mode). Default: the cluster's
    /// default (no topic config given).
    #[arg(long)]
    min_insync_replicas: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the faulty part of the run (the heal, liveness probe and final read follow).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The broker binary (default: `holdfast` next to this binary).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Output directory (history.jsonl, report.txt, timeline.svg, broker.log).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Negative control: start the broker with HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC=1.
    #[arg(long)]
    unsafe_ack_before_fsync: bool,
    /// Negative control: start the broker with HOLDFAST_UNSAFE_NO_DEDUP=1 (retries appended
    /// again).
    #[arg(long)]
    unsafe_no_dedup: bool,
    /// Negative control for `--txn`: start the broker with HOLDFAST_UNSAFE_ABORT_AS_COMMIT=1
    /// (aborted transactions get COMMIT markers).
    #[arg(long)]
    unsafe_abort_as_commit: bool,
    /// Negative control for `--txn`: start the broker with HOLDFAST_UNSAFE_LSO_OFF_BY_ONE=1
    /// (read_committed fetches read one offset past the last stable offset).
    #[arg(long)]
    unsafe_lso_off_by_one: bool,
    /// `acks` of the workload's producers: `all` (the default; idempotent) or `1` (negative
    /// control in cluster mode: the leader acknowledges alone, idempotence off as librdkafka
    /// requires, so a leader killed before its followers fetched loses acknowledged writes).
    #[arg(long, default_value = "all", value_parser = ["all", "1"])]
    acks: String,
    /// Negative control for the `unclean` cluster scenario (e.g. `--nodes 3
    /// --replication-factor 2 --min-insync-replicas 1`): the workload's topic is created with
    /// `unclean.leader.election.enable=true`, so an out-of-sync replica may lead.
    #[arg(long)]
    unsafe_unclean_election: bool,
    /// Negative control for the `clock` scenario in cluster mode: start every node with
    /// HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS=1 (timeouts measured on the wall clock, so a step
    /// forward expires them at once: ISR shrinks and fencing with nothing wrong).
    #[arg(long)]
    unsafe_wall_clock_timers: bool,
    /// Sends per second per producer (two producers).
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Also run the transactional workload (crates/chaos/src/txn.rs) on its own topic.
    #[arg(long)]
    txn: bool,
    /// Also run the consume-transform-produce copier (crates/chaos/src/copy.rs) over the
    /// transactional workload's topic: polls, sends and offset commits in one transaction,
    /// checked for exactly-once after healing. Implies `--txn`.
    #[arg(long)]
    copy: bool,
    /// Negative control for `--copy`: start the broker(s) with
    /// HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER=1 (transactional offsets take effect before the
    /// commit, so an aborted transaction still moves the group's offsets).
    #[arg(long)]
    unsafe_txn_offsets_eager: bool,
    /// Also run the consumer-group workload (crates/chaos/src/groups.rs): members of one group
    /// subscribed to the `chaos` topic, committing, restarted on a seeded schedule, and a
    /// watcher of the committed offsets. Power cuts then strike right after a commit ack.
    #[arg(long)]
    groups: bool,
    /// Negative control for `--groups`: start the broker with
    /// HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC=1 (OffsetCommit acknowledged before fsync).
    #[arg(long)]
    unsafe_offsets_no_fsync: bool,
    /// API keys the `delay` fault holds back (comma-separated numbers). Default: Produce (0),
    /// AddPartitionsToTxn (24), AddOffsetsToTxn (25), TxnOffsetCommit (28). EndTxn (26) is
    /// left out by default: librdkafka speaks transactions version 1, where a delayed
    /// EndTxn can complete a later transaction of the same epoch (KAFKA-17754; fixed only by
    /// KIP-890's per-transaction epoch bump in version 2).
    #[arg(long, value_delimiter = ',', default_values_t = [0i16, 24, 25, 28])]
    hold_apis: Vec<i16>,
    /// Also run N producers of the Java client (Apache Kafka's kafka-clients; `java` from
    /// PATH, classes from `.deps/java` or `HOLDFAST_JAVA_CP`) sending `--rate` values per
    /// second each, round-robin over the partitions, with the same `--acks`, into the same
    /// history (process `java-<i>`). Without `java` the run is SKIPPED (exit 3).
    #[arg(long, default_value_t = 0)]
    java_producers: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    PowerCut,
    DiskFull,
    /// Loud client-broker partition through the proxy: connections reset and refused.
    Partition,
    /// Silent client-broker partition: sockets stay open, nothing is forwarded.
    Blackhole,
    /// Requests of some API keys held back past the client's request timeout, then delivered.
    Delay,
    /// The next fsync fails with EIO (broker test hook); its partitions go offline until the
    /// broker is restarted.
    FsyncEio,
    /// Cluster: SIGKILL one node (seeded choice), restart it after the hold.
    KillNode,
    /// Cluster: SIGKILL the current leader of one partition of the workload's topic (seeded
    /// choice, leader from Metadata) right after an acknowledgement, restart it after the hold.
    KillLeader,
    /// Cluster: the followers of one partition (seeded choice) stopped until they leave its
    /// ISR, writes acknowledged by the leader alone, then the leader SIGKILLed and the
    /// followers continued: the only live replicas are out of sync. Only a topic with
    /// `unclean.leader.election.enable=true` lets one of them lead (and lose those writes).
    Unclean,
    /// Cluster: SIGKILL the active controller (Metadata's controller id), restart it.
    KillController,
    /// Cluster: SIGSTOP one node, SIGCONT after the hold.
    PauseNode,
    /// Cluster: power cut of one node (SIGKILL, image copied, remounted, restarted).
    PowerCutNode,
    /// Cluster: coordinated power cut: every node SIGKILLed in one loop, every image
    /// copied, all restarted.
    PowerCutAll,
    /// Cluster, network namespaces (`netns`): one seeded node cut off from every other node
    /// (clients still reach it), healed after the hold.
    IsolateNode,
    /// Cluster, netns: the nodes split into a minority and a majority side (seeded).
    PartitionHalves,
    /// Cluster, netns: each node reaches only its two neighbours on a seeded ring (Jepsen's
    /// "majorities ring"; no cut with fewer than 4 nodes).
    PartitionRing,
    /// Cluster, netns: one seeded node cannot send to another (one direction only).
    PartitionOneWay,
    /// Cluster, netns: one seeded node cannot answer clients (requests still arrive).
    PartitionClients,
    /// Cluster: SIGKILL one node, flip bytes in the middle of one of its segment files of the
    /// workload topic (corruption on a minority), restart it.
    CorruptNode,
    /// The wall clock of the broker (cluster: of one seeded node) steps forward or back by a
    /// seeded amount (seconds to an hour, `clock_offset_s`) through libfaketime, and steps
    /// back to real time after the hold, as an NTP step or a resumed VM does. The monotonic
    /// clock is untouched. Single-node and cluster mode.
    ClockJump,
    /// One client process (a Java producer, `--java-producers`; seeded choice) SIGSTOPped,
    /// SIGCONTinued after the hold: a client that stalls (GC pause, suspended VM) with its
    /// requests in flight. Single-node and cluster mode.
    PauseClient,
}

/// The wall-clock step of a `ClockJump` with seeded draw `target`: forward or back by 2-60 s,
/// 5 min, 20 min or 1 h (bits of the draw other than those choosing the node).
pub fn clock_offset_s(target: u64) -> i64 {
    let sign = if (target >> 8) & 1 == 0 { 1 } else { -1 };
    let magnitude = match (target >> 9) % 4 {
        0 => 2 + ((target >> 12) % 59) as i64,
        1 => 300,
        2 => 1200,
        _ => 3600,
    };
    sign * magnitude
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::PowerCut => "power-cut",
            FaultKind::DiskFull => "disk-full",
            FaultKind::Partition => "partition",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Delay => "delay",
            FaultKind::FsyncEio => "fsync-eio",
            FaultKind::KillNode => "kill-node",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Unclean => "unclean",
            FaultKind::KillController => "kill-controller",
            FaultKind::PauseNode => "pause-node",
            FaultKind::PowerCutNode => "power-cut-node",
            FaultKind::PowerCutAll => "power-cut-all",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::PartitionHalves => "partition-halves",
            FaultKind::PartitionRing => "partition-ring",
            FaultKind::PartitionOneWay => "partition-oneway",
            FaultKind::PartitionClients => "partition-clients",
            FaultKind::CorruptNode => "corrupt-node",
            FaultKind::ClockJump => "clock-jump",
            FaultKind::PauseClient => "pause-client",
        }
    }
    fn needs_disk(self) -> bool {
        matches!(
            self,
            FaultKind::PowerCut
                | FaultKind::DiskFull
                | FaultKind::PowerCutNode
                | FaultKind::PowerCutAll
        )
    }
    /// A fault on the nodes of a cluster (cluster mode only).
    pub fn is_cluster(self) -> bool {
        matches!(
            self,
            FaultKind::KillNode
                | FaultKind::KillLeader
                | FaultKind::Unclean
                | FaultKind::KillController
                | FaultKind::PauseNode
                | FaultKind::PowerCutNode
                | FaultKind::PowerCutAll
                | FaultKind::CorruptNode
        ) || self.needs_netns()
    }
    /// A network partition between cluster nodes (network namespaces, root only).
    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            FaultKind::IsolateNode
                | FaultKind::PartitionHalves
                | FaultKind::PartitionRing
                | FaultKind::PartitionOneWay
                | FaultKind::PartitionClients
        )
    }
    fn needs_proxy(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::Blackhole | FaultKind::Delay
        )
    }
}

/// One planned fault: injected at `at_ms` after the run started, healed `hold_ms` later.
#[derive(Clone, Debug)]
pub struct Planned {
    pub at_ms: u64,
    pub kind: FaultKind,
    pub hold_ms: u64,
    /// Seeded draw choosing the node of a one-node cluster fault (`target % nodes`); 0 for
    /// the other kinds (drawn only for cluster faults, so single-node schedules are
    /// unchanged).
    pub target: u64,
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct Applied {
    pub kind: FaultKind,
    pub start_us: u64,
    pub end_us: u64,
    pub detail: String,
}

fn kinds(scenario: &str) -> anyhow::Result<Vec<FaultKind>> {
    Ok(match scenario {
        "kill" => vec![FaultKind::Kill],
        "pause" => vec![FaultKind::Pause],
        "power-cut" => vec![FaultKind::PowerCut],
        "disk-full" => vec![FaultKind::DiskFull],
        "mixed" => vec![
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::PowerCut,
            FaultKind::DiskFull,
        ],
        "partition" => vec![FaultKind::Partition],
        "blackhole" => vec![FaultKind::Blackhole],
        "delay" => vec![FaultKind::Delay],
        "net" => vec![FaultKind::Partition, FaultKind::Blackhole, FaultKind::Delay],
        "fsync-eio" => vec![FaultKind::FsyncEio],
        "kill-node" => vec![FaultKind::KillNode],
        "kill-leader" => vec![FaultKind::KillLeader],
        "unclean" => vec![FaultKind::Unclean],
        "kill-controller" => vec![FaultKind::KillController],
        "pause-node" => vec![FaultKind::PauseNode],
        "power-cut-node" => vec![FaultKind::PowerCutNode],
        "power-cut-all" => vec![FaultKind::PowerCutAll],
        "cluster-mixed" => vec![
            FaultKind::KillNode,
            FaultKind::KillController,
            FaultKind::PauseNode,
            FaultKind::PowerCutNode,
            FaultKind::PowerCutAll,
        ],
        "corrupt-node" => vec![FaultKind::CorruptNode],
        "clock" => vec![FaultKind::ClockJump],
        "pause-client" => vec![FaultKind::PauseClient],
        "isolate-node" => vec![FaultKind::IsolateNode],
        "partition-halves" => vec![FaultKind::PartitionHalves],
        "partition-ring" => vec![FaultKind::PartitionRing],
        "partition-oneway" => vec![FaultKind::PartitionOneWay],
        "partition-clients" => vec![FaultKind::PartitionClients],
        "cluster-partitions" => vec![
            FaultKind::IsolateNode,
            FaultKind::PartitionHalves,
            FaultKind::PartitionRing,
            FaultKind::PartitionOneWay,
            FaultKind::PartitionClients,
        ],
        "cluster-all" => vec![
            FaultKind::KillNode,
            FaultKind::KillController,
            FaultKind::PauseNode,
            FaultKind::PowerCutNode,
            FaultKind::PowerCutAll,
            FaultKind::IsolateNode,
            FaultKind::PartitionHalves,
            FaultKind::PartitionRing,
            FaultKind::PartitionOneWay,
            FaultKind::PartitionClients,
            FaultKind::CorruptNode,
        ],
        "none" => vec![],
        _ => {
            bail!("unknown scenario {scenario:?} (kill, pause, power-cut, disk-full, mixed, partition, blackhole, delay, net, fsync-eio, clock, none; cluster: kill-node, kill-leader, unclean, kill-controller, pause-node, power-cut-node, power-cut-all, cluster-mixed, isolate-node, partition-halves, partition-ring, partition-oneway, partition-clients, cluster-partitions, corrupt-node, cluster-all)")
        }
    })
}

/// The schedule: a function of (scenario, seed, seconds) only. A 3 s quiet warm-up, then
/// alternating quiet periods (0.7-2.5 s) and faults, ending 3 s before the heal.
fn plan(scenario: &str, seed: u64, seconds: u64) -> anyhow::Result<Vec<Planned>> {
    let kinds = kinds(scenario)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = seconds * 1000;
    let mut t = 3000;
    let mut out = Vec::new();
    if kinds.is_empty() {
        return Ok(out);
    }
    // Bounded: every iteration advances t by at least 0.7 s.
    while t < end {
        t += rng.u64(700..2500);
        let kind = kinds[rng.usize(0..kinds.len())];
        let hold = match kind {
            FaultKind::Kill => rng.u64(100..1500),
            FaultKind::Pause => rng.u64(500..6500),
            FaultKind::PowerCut => rng.u64(100..700),
            FaultKind::DiskFull => rng.u64(1000..4000),
            FaultKind::Partition => rng.u64(1000..5000),
            FaultKind::Blackhole => rng.u64(500..6500),
            // Longer than the workload's 5 s request timeout, so the client gives up first.
            FaultKind::Delay => rng.u64(5500..8000),
            FaultKind::FsyncEio => rng.u64(300..2000),
            FaultKind::KillNode
            | FaultKind::KillLeader
            | FaultKind::KillController
            | FaultKind::CorruptNode => rng.u64(100..1500),
            FaultKind::PauseNode => rng.u64(500..6500),
            // Down longer than the broker session timeout, so the controller fences the dead
            // leader and (if the topic allows it) elects an out-of-sync replica.
            FaultKind::Unclean => rng.u64(5000..6000),
            FaultKind::PowerCutNode | FaultKind::PowerCutAll => rng.u64(100..700),
            // Past the 3 s broker session timeout most of the time, so the controller fences
            // the cut-off side and leadership moves.
            FaultKind::IsolateNode
            | FaultKind::PartitionHalves
            | FaultKind::PartitionRing
            | FaultKind::PartitionOneWay
            | FaultKind::PartitionClients => rng.u64(1000..6000),
            // Past the 3 s broker session timeout and the cluster's shortest timers.
            FaultKind::ClockJump => rng.u64(1000..6000),
            // Past the Java producer's request timeout (5 s) some of the time.
            FaultKind::PauseClient => rng.u64(1000..8000),
        };
        let target = if kind.is_cluster()
            || kind == FaultKind::ClockJump
            || kind == FaultKind::PauseClient
        {
            rng.u64(..)
        } else {
            0
        };
        if t + hold + 3000 > end {
            break;
        }
        out.push(Planned {
            at_ms: t,
            kind,
            hold_ms: hold,
            target,
        });
        t += hold;
    }
    Ok(out)
}

/// Set on SIGINT / SIGTERM / SIGHUP: the run stops at its next sleep and returns an error,
/// so the Drop guards kill the broker, unmount the images and remove the temp files.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("chaos: interrupted: cleaning up (broker, mounts, temp files)");
        });
    });
}

/// A clock scenario where libfaketime is not installed: SKIPPED (exit 3), said, not silent.
pub fn skip_no_libfaketime(scenario: &str, out: &std::path::Path) -> anyhow::Result<i32> {
    let msg = format!(
        "SKIPPED scenario {scenario}: clock jumps need libfaketime (apt-get install faketime, or HOLDFAST_LIBFAKETIME=path)"
    );
    println!("chaos: {msg}");
    std::fs::write(out.join("report.txt"), format!("{msg}\n"))?;
    Ok(3)
}

fn run_watched(a: &RunArgs) -> anyhow::Result<i32> {
    watch_signals();
    run(a)
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Sleeps in small steps, returning an error as soon as the run is interrupted.
fn sleep(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Plan(a) => match plan(&a.scenario, a.seed, a.seconds) {
            Ok(p) => {
                for f in p {
                    let what = match f.kind {
                        FaultKind::ClockJump if a.nodes > 1 => format!(
                            "  node {}: {:+} s",
                            f.target % a.nodes as u64 + 1,
                            clock_offset_s(f.target)
                        ),
                        FaultKind::ClockJump => format!("  {:+} s", clock_offset_s(f.target)),
                        // 2520 is divisible by every count 1..=10: the same producer.
                        FaultKind::PauseClient => {
                            format!("  java-(draw {} mod --java-producers)", f.target % 2520)
                        }
                        _ => String::new(),
                    };
                    println!(
                        "{:>7} ms  {:<9} hold {} ms{what}",
                        f.at_ms,
                        f.kind.name(),
                        f.hold_ms
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        },
        Cmd::Run(a) => match run_watched(&a) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chaos: HARNESS ERROR: {e:#}");
                2
            }
        },
    };
    std::process::exit(code);
}

/// The outcome the report needs.
pub struct RunSummary {
    pub scenario: String,
    /// Cluster mode: (nodes, replication factor, min.insync.replicas or None = default).
    pub cluster: Option<(usize, i32, Option<u32>)>,
    pub seed: u64,
    pub seconds: u64,
    pub unsafe_ack_before_fsync: bool,
    pub unsafe_no_dedup: bool,
    pub data_dir: String,
    pub planned: Vec<Planned>,
    pub applied: Vec<Applied>,
    pub notes: Vec<String>,
    pub broker_starts: u32,
    pub probe: Result<Duration, String>,
    pub final_bounds: std::collections::BTreeMap<i32, (i64, i64)>,
    pub final_reached: std::collections::BTreeMap<i32, i64>,
    pub wall: Duration,
}

fn run(a: &RunArgs) -> anyhow::Result<i32> {
    let cluster_kinds = kinds(&a.scenario)?.iter().any(|k| k.is_cluster());
    if a.nodes > 1 || cluster_kinds {
        return cluster::run(a);
    }
    let wall = Instant::now();
    let planned = plan(&a.scenario, a.seed, a.seconds)?;
    let needs_disk = kinds(&a.scenario)?.iter().any(|k| k.needs_disk());
    let needs_proxy = kinds(&a.scenario)?.iter().any(|k| k.needs_proxy());
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "chaos-out/{}{}-{}",
            a.scenario,
            if a.unsafe_ack_before_fsync {
                "-unsafe"
            } else {
                ""
            },
            a.seed
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if kinds(&a.scenario)?.contains(&FaultKind::PauseClient) && a.java_producers == 0 {
        bail!("the pause-client scenario pauses Java producers: add --java-producers 1 or more");
    }
    let java_cp = if a.java_producers > 0 {
        match java_classpath(a, &out)? {
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

    // Drop order matters: locals drop in reverse, so the broker dies before the disk is
    // unmounted, and the work directory goes last.
    let work = WorkDir::create(&format!("{}-{}", a.scenario, a.seed))?;
    let mut notes = Vec::new();
    let disk = if env::is_root() {
        match Disk::create(&work.path) {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("cannot loop-mount an ext4 image: {e:#}"));
                None
            }
        }
    } else {
        notes.push("not root: no loop-mounted ext4 image, data in a plain temp dir".into());
        None
    };
    if needs_disk && disk.is_none() {
        let msg = format!(
            "SKIPPED scenario {}: power cuts and disk-full need a loop-mounted ext4 image ({})",
            a.scenario,
            notes.join("; ")
        );
        println!("chaos: {msg}");
        std::fs::write(out.join("report.txt"), format!("{msg}\n"))?;
        return Ok(3);
    }
    let data_dir = match &disk {
        Some(d) => d.mount_point.join("data"),
        None => work.path.join("data"),
    };
    let mut disk = disk;
    let mut unsafe_env = Vec::new();
    if a.unsafe_ack_before_fsync {
        unsafe_env.push("HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC");
    }
    if a.unsafe_no_dedup {
        unsafe_env.push("HOLDFAST_UNSAFE_NO_DEDUP");
    }
    if kinds(&a.scenario)?.contains(&FaultKind::FsyncEio) {
        unsafe_env.push("HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1");
    }
    if a.unsafe_offsets_no_fsync {
        unsafe_env.push("HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC");
        notes.push("NEGATIVE CONTROL: OffsetCommit is acknowledged before fsync".into());
    }
    if a.unsafe_abort_as_commit {
        unsafe_env.push("HOLDFAST_UNSAFE_ABORT_AS_COMMIT");
        notes.push("NEGATIVE CONTROL: aborted transactions get COMMIT markers".into());
    }
    if a.unsafe_txn_offsets_eager {
        unsafe_env.push("HOLDFAST_UNSAFE_TXN_OFFSETS_EAGER");
        notes.push(
            "NEGATIVE CONTROL: transactional offsets take effect before the transaction commits"
                .into(),
        );
    }
    if a.unsafe_lso_off_by_one {
        unsafe_env.push("HOLDFAST_UNSAFE_LSO_OFF_BY_ONE");
        notes.push(
            "NEGATIVE CONTROL: read_committed fetches read one offset past the last stable offset"
                .into(),
        );
    }
    if a.unsafe_wall_clock_timers {
        bail!("--unsafe-wall-clock-timers is a cluster control (--scenario clock --nodes 3)");
    }
    if a.unsafe_unclean_election {
        bail!("--unsafe-unclean-election is a cluster control (--scenario unclean --nodes 3)");
    }
    if a.acks == "1" {
        workload::ACKS_ONE.store(true, Ordering::Relaxed);
        notes.push(
            "NEGATIVE CONTROL (meant for cluster mode): producers use acks=1, idempotence off"
                .into(),
        );
    }
    let mut broker = Broker::new(&broker_bin, &data_dir, &out.join("broker.log"), unsafe_env)?;
    let _ = std::fs::remove_file(out.join("broker.log"));
    if kinds(&a.scenario)?.contains(&FaultKind::ClockJump) {
        let Some(lib) = env::libfaketime() else {
            return skip_no_libfaketime(&a.scenario, &out);
        };
        broker.clock = Some(env::Clock::create(&lib, &work.path.join("clock"))?);
        notes.push(format!(
            "the broker runs under {} (wall clock shifted by clock-jump faults; monotonic clock real)",
            lib.display()
        ));
    }
    // Network faults: every client connection goes through the proxy, and the broker
    // advertises the proxy so connections opened from Metadata do too.
    let proxy = if needs_proxy {
        let p = netproxy::Proxy::start(broker.bootstrap().parse()?)?;
        broker.advertise = Some(p.addr());
        workload::SOCKET_TIMEOUT_MS.store(5000, Ordering::Relaxed);
        notes.push(format!(
            "clients reach the broker through a frame-aware proxy ({} -> {}); delay holds API keys {:?}; clients use socket.timeout.ms=5000",
            p.addr(),
            broker.bootstrap(),
            a.hold_apis
        ));
        Some(p)
    } else {
        None
    };
    broker.start(Duration::from_secs(30))?;
    let bootstrap = match &proxy {
        Some(p) => p.addr(),
        None => broker.bootstrap(),
    };
    workload::create_topic(&bootstrap, Duration::from_secs(30))?;
    let mut java = java_spawn(a, java_cp.as_ref(), &out, &bootstrap, &mut notes)?;

    let rec = Arc::new(Recorder::create(&out.join("history.jsonl"))?);
    if let Some(j) = java.as_mut() {
        notes.extend(j.start(&rec)?);
    }
    let txn_load = if a.txn || a.copy {
        workload::create_named_topic(&bootstrap, txn::TOPIC, Duration::from_secs(30))?;
        let copier = if a.copy {
            workload::create_named_topic(&bootstrap, copy::TOPIC, Duration::from_secs(30))?;
            Some(copy::Copier::start(&bootstrap, a.seed))
        } else {
            None
        };
        Some((txn::TxnWorkload::start(&bootstrap, a.seed), copier))
    } else {
        None
    };
    let load = workload::Workload::start(&bootstrap, &rec, a.seed, a.rate);
    let group_load = a
        .groups
        .then(|| groups::GroupWorkload::start(&bootstrap, &rec, a.seed));
    let mut applied = Vec::new();
    let mut restart_failures = Vec::new();
    for f in &planned {
        sleep_until(&rec, f.at_ms)?;
        let op = rec.next_op();
        rec.record(Event::new(Kind::Invoke, F::Fault, "nemesis", op).value(f.kind.name()));
        let start_us = rec.now_us();
        let injected = if f.kind == FaultKind::PauseClient {
            pause_client(java.as_mut(), f)
        } else {
            inject(
                f,
                &mut broker,
                disk.as_mut(),
                proxy.as_ref(),
                &a.hold_apis,
                &rec,
                a.groups,
            )
        };
        let detail = match injected {
            Ok(d) => {
                if d.contains("BROKER HAD EXITED") {
                    restart_failures.push(format!("{} at {} ms: {d}", f.kind.name(), f.at_ms));
                }
                d
            }
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

    // Heal everything: no pause, no filler, real time, a running broker.
    let heal_t = rec.now_us();
    let _ = broker.resume();
    if let Some(j) = java.as_mut() {
        j.resume_all();
    }
    if let Some(c) = broker.clock.as_mut() {
        c.set(0)?;
    }
    if let Some(p) = &proxy {
        p.set(netproxy::Mode::Pass);
    }
    if let Some(d) = disk.as_ref() {
        d.unfill()?;
    }
    if !broker.alive() {
        let _ = broker.kill();
        if let Err(e) = broker.start(Duration::from_secs(30)) {
            restart_failures.push(format!("restart at heal: {e:#}"));
        }
    }
    let op = rec.next_op();
    rec.record(Event::new(Kind::Ok, F::Fault, "nemesis", op).value("heal"));
    notes.push(format!("healed at {:.1} s", heal_t as f64 / 1e6));

    check_interrupted()?;
    if let Some(j) = java.as_mut() {
        j.request_stop();
    }
    let stop_res = load.stop();
    let java_err = java_stop(java, &mut notes);
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
                    groups::GROUP,
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
        Some((t, c)) => txn::finish(t, c, &bootstrap, &mut notes),
        None => Vec::new(),
    };
    // Liveness: produce and fetch must work within deadlines after healing.
    let probe =
        workload::probe(&bootstrap, &rec, Duration::from_secs(30)).map_err(|e| format!("{e:#}"));
    let fr = workload::final_read(&bootstrap, &rec, Duration::from_secs(60));
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
    broker.stop();
    if let Some(p) = &proxy {
        let st = p.stats();
        notes.push(format!(
            "proxy: {} connections, {} refused, {} reset; held and delivered late by API key {:?}, {} of them after the client had closed",
            st.connections, st.refused, st.reset, st.held, st.delivered_after_client_closed
        ));
    }

    let coverage = if fr.is_ok() {
        bounds
            .iter()
            .map(|(p, (_, hw))| (*p, (*hw, reached.get(p).copied().unwrap_or(0))))
            .collect()
    } else {
        // No final read at all: every partition is uncovered.
        (0..workload::PARTITIONS).map(|p| (p, (1, 0))).collect()
    };
    let mut verdict = checker::check(&events, &coverage);
    notes.extend(dups::explain(
        &mut verdict,
        std::slice::from_ref(&data_dir),
        workload::TOPIC,
    ));
    if a.groups {
        let suspects = checker::group_suspects(&events);
        if !suspects.is_empty() {
            notes.push(format!(
                "SUSPECT (not failing the run): {} group commit(s) in flight across a crash refused as UNKNOWN_MEMBER_ID by the restarted coordinator: an assignment answered before its generation was durable (docs/chaos.md)",
                suspects.len()
            ));
            notes.extend(
                suspects
                    .into_iter()
                    .take(5)
                    .map(|s| format!("  suspect: {s}")),
            );
        }
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
    for r in restart_failures {
        verdict.anomalies.push(checker::Anomaly {
            class: "broker-did-not-recover",
            what: r,
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
    let summary = RunSummary {
        scenario: a.scenario.clone(),
        cluster: None,
        seed: a.seed,
        seconds: a.seconds,
        unsafe_ack_before_fsync: a.unsafe_ack_before_fsync,
        unsafe_no_dedup: a.unsafe_no_dedup,
        data_dir: if disk.is_some() {
            format!("loop-mounted ext4 image ({} MiB)", env::IMAGE_MB)
        } else {
            "plain temp directory".into()
        },
        planned,
        applied,
        notes,
        broker_starts: broker.starts,
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
        "chaos: wrote {}/report.txt, timeline.svg, history.jsonl, broker.log",
        out.display()
    );
    if let Some(e) = java_err {
        bail!("the run proves nothing about the Java sends: {e}");
    }
    drop(broker);
    drop(disk);
    drop(work);
    Ok(if verdict.anomalies.is_empty() { 0 } else { 1 })
}

/// `--java-producers`: the class path, or `Ok(None)` after writing a SKIPPED report when this
/// machine cannot run them (no `java`, no kafka-clients jar). Called before anything starts.
fn java_classpath(a: &RunArgs, out: &std::path::Path) -> anyhow::Result<Option<java::Classpath>> {
    let cp = java::Classpath::find();
    if let Some(why) = java::unavailable(&cp) {
        let msg = format!("SKIPPED scenario {}: {why}", a.scenario);
        println!("chaos: {msg}");
        std::fs::write(out.join("report.txt"), format!("{msg}\n"))?;
        return Ok(None);
    }
    Ok(Some(cp))
}

/// `--java-producers`: spawns the programs once the topic exists (an error is a harness error).
fn java_spawn(
    a: &RunArgs,
    cp: Option<&java::Classpath>,
    out: &std::path::Path,
    bootstrap: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<java::JavaProducers>> {
    let Some(cp) = cp.filter(|_| a.java_producers > 0) else {
        return Ok(None);
    };
    let t = Instant::now();
    let j = java::JavaProducers::spawn(
        a.java_producers,
        cp,
        out,
        bootstrap,
        workload::TOPIC,
        workload::PARTITIONS,
        a.rate,
        &a.acks,
    )
    .context("starting the Java producers")?;
    notes.push(format!(
        "{} Java producer(s) (kafka-clients, acks={}, {}idempotent, delivery.timeout.ms=15000, request.timeout.ms=5000), {} sends/s each, ready {} ms after the spawn; logs java-<i>.log",
        a.java_producers,
        a.acks,
        if a.acks == "all" { "" } else { "not " },
        a.rate,
        t.elapsed().as_millis()
    ));
    Ok(Some(j))
}

/// `--java-producers`: stops the programs; their figures go to the notes, a failure (a
/// program died, did not stop, or exited badly) is returned as text for a harness error once
/// the report is written.
fn java_stop(j: Option<java::JavaProducers>, notes: &mut Vec<String>) -> Option<String> {
    match j?.stop() {
        Ok(s) => {
            for (name, st) in s.stats {
                if st.acked == 0 {
                    notes.push(format!(
                        "WARNING: {name} got no send acknowledged: this run says nothing about the Java client"
                    ));
                }
                notes.push(format!(
                    "{name}: {} sends, {} acknowledged, {} failed, {} indefinite; errors by exception {:?}",
                    st.invoked, st.acked, st.failed, st.indefinite, st.errors
                ));
            }
            None
        }
        Err(e) => {
            let e = format!("{e:#}");
            notes.push(format!("HARNESS ERROR: {e}"));
            Some(e)
        }
    }
}

fn sleep_until(rec: &Recorder, ms: u64) -> anyhow::Result<()> {
    let target = rec.start() + Duration::from_millis(ms);
    sleep(target.saturating_duration_since(Instant::now()))
}

/// Records the instant the broker is killed (a fault's invoke is recorded before a power
/// cut waits for its acknowledgement).
fn crash_mark(rec: &Recorder) {
    rec.record(Event::new(Kind::Info, F::Fault, "nemesis", rec.next_op()).value("crash"));
}

/// With `--groups`: lets the members commit again once the watcher has read the committed
/// offsets after the restart (bounded), and says how it went.
fn release(held: Option<u64>) -> String {
    match held {
        None => String::new(),
        Some(n) if groups::release_after_watch(n, Duration::from_secs(10)) => {
            "; commits held until the watcher read after the restart".into()
        }
        Some(_) => "; commits held 10 s, the watcher did not read after the restart".into(),
    }
}

/// Injects one fault, holds it, heals it. Returns a description.
/// The `pause-client` fault: SIGSTOP one Java producer (seeded), SIGCONT after the hold.
pub fn pause_client(java: Option<&mut java::JavaProducers>, f: &Planned) -> anyhow::Result<String> {
    let java = java.context("the pause-client fault needs --java-producers 1 or more")?;
    let i = (f.target % java.len().max(1) as u64) as usize;
    let who = java.pause(i)?;
    let slept = sleep(Duration::from_millis(f.hold_ms));
    java.resume(i)?;
    slept?;
    Ok(format!("{who}: SIGSTOP for {} ms, SIGCONT", f.hold_ms))
}

fn inject(
    f: &Planned,
    broker: &mut Broker,
    disk: Option<&mut Disk>,
    proxy: Option<&netproxy::Proxy>,
    hold_apis: &[i16],
    rec: &Recorder,
    groups: bool,
) -> anyhow::Result<String> {
    let hold = Duration::from_millis(f.hold_ms);
    let net = |mode: netproxy::Mode| -> anyhow::Result<String> {
        let p = proxy.context("a network fault without the proxy")?;
        let what = format!("{mode:?}");
        match mode {
            netproxy::Mode::Hold { keys, .. } => p.hold_existing(keys),
            m => p.set(m),
        }
        sleep(hold)?;
        p.set(netproxy::Mode::Pass);
        Ok(format!("proxy {what} for {} ms", f.hold_ms))
    };
    match f.kind {
        FaultKind::Partition => net(netproxy::Mode::Reset),
        FaultKind::Blackhole => net(netproxy::Mode::Blackhole),
        FaultKind::Delay => net(netproxy::Mode::Hold {
            keys: hold_apis.to_vec(),
            conns_before: 0,
        }),
        FaultKind::FsyncEio => {
            // A failed fsync takes the partitions of that round offline for good (the page
            // cache can no longer be trusted); like a Kafka log directory failure, only a
            // restart (with recovery) brings them back.
            broker.fail_next_fsync()?;
            sleep(hold)?;
            broker.kill()?;
            let up = broker.start(Duration::from_secs(30))?;
            Ok(format!(
                "SIGUSR1 (next fsync fails with EIO), {} ms later SIGKILL and restart in {} ms",
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::Kill => {
            let held = groups.then(groups::hold_commits);
            crash_mark(rec);
            broker.kill()?;
            sleep(hold)?;
            let up = broker.start(Duration::from_secs(30));
            let watched = release(held);
            let up = up?;
            Ok(format!(
                "SIGKILL, down {} ms, restarted in {} ms{watched}",
                f.hold_ms,
                up.as_millis()
            ))
        }
        FaultKind::Pause => {
            broker.pause()?;
            sleep(hold)?;
            broker.resume()?;
            Ok(format!("SIGSTOP for {} ms, SIGCONT", f.hold_ms))
        }
        FaultKind::PowerCut => {
            let disk = disk.context("power cut without a disk image")?;
            // Strike right after a client saw an acknowledgement: the write behind it must
            // already be durable, so this is the moment an early ack is most exposed. With
            // the group workload, the acknowledgement of an offset commit, waited for longer:
            // after a cut the group may stall for a session timeout (members that left
            // since the last durable generation come back from the log until their sessions
            // expire), and a cut during that stall would exercise no commit at all.
            let after_ack = if groups {
                rec.wait_for_commit_ack(groups::STRIKE_WAIT)
            } else {
                rec.wait_for_ack(Duration::from_secs(2))
            };
            let held = groups.then(groups::hold_commits);
            crash_mark(rec);
            broker.kill()?;
            let copy = disk.cut_power();
            if copy.is_err() {
                release(held);
            }
            let copy = copy?;
            sleep(hold)?;
            let up = broker.start(Duration::from_secs(30));
            let watched = release(held);
            let up = up?;
            Ok(format!(
                "SIGKILL{} + image copied in {} ms + remounted, down {} ms more, restarted (recovery) in {} ms{watched}",
                match (after_ack, groups) {
                    (true, true) => " right after a commit ack",
                    (true, false) => " right after an ack",
                    _ => "",
                },
                copy.as_millis(),
                f.hold_ms,
                up.as_millis()
            ))
        }
        k @ (FaultKind::KillNode
        | FaultKind::KillLeader
        | FaultKind::Unclean
        | FaultKind::KillController
        | FaultKind::PauseNode
        | FaultKind::PowerCutNode
        | FaultKind::PowerCutAll
        | FaultKind::IsolateNode
        | FaultKind::PartitionHalves
        | FaultKind::PartitionRing
        | FaultKind::PartitionOneWay
        | FaultKind::PartitionClients
        | FaultKind::CorruptNode) => bail!("cluster fault {} on a single broker", k.name()),
        FaultKind::PauseClient => bail!("pause-client is injected by pause_client"),
        FaultKind::ClockJump => {
            let clock = broker
                .clock
                .as_mut()
                .context("a clock jump without libfaketime")?;
            let offset_s = clock_offset_s(f.target);
            clock.step_for(offset_s, hold)?;
            Ok(format!(
                "wall clock {offset_s:+} s for {} ms, then back to real time",
                f.hold_ms
            ))
        }
        FaultKind::DiskFull => {
            let disk = disk.context("disk full without a disk image")?;
            let n = disk.fill()?;
            sleep(hold)?;
            disk.unfill()?;
            let mut d = format!(
                "filled {} MiB for {} ms, filler removed",
                n >> 20,
                f.hold_ms
            );
            if !broker.alive() {
                // The broker exited on ENOSPC: a finding, reported; restart to continue.
                d += "; BROKER HAD EXITED, restarted";
                broker.kill()?;
                broker.start(Duration::from_secs(30))?;
            }
            Ok(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_depends_only_on_scenario_seed_and_length() {
        let a = plan("mixed", 7, 60).map(|p| format!("{p:?}"));
        let b = plan("mixed", 7, 60).map(|p| format!("{p:?}"));
        assert_eq!(a.ok(), b.ok());
        let c = plan("mixed", 8, 60).map(|p| format!("{p:?}"));
        assert_ne!(plan("mixed", 7, 60).map(|p| format!("{p:?}")).ok(), c.ok());
    }

    #[test]
    fn cluster_schedules_choose_nodes_from_the_seed_only() {
        // Single-node kinds draw no target, so their schedules are unchanged by cluster mode.
        for sc in ["kill", "mixed", "net", "fsync-eio"] {
            for f in plan(sc, 3, 60).unwrap_or_default() {
                assert_eq!(f.target, 0, "{sc}");
                assert!(!f.kind.is_cluster());
            }
        }
        let a = plan("cluster-mixed", 5, 120).unwrap_or_default();
        let b = plan("cluster-mixed", 5, 120).unwrap_or_default();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.iter().all(|f| f.kind.is_cluster()));
        // Over a few seeds every cluster fault kind and every node of three is drawn.
        let mut kinds_seen = std::collections::BTreeSet::new();
        let mut nodes_seen = std::collections::BTreeSet::new();
        for seed in 0..10 {
            for f in plan("cluster-mixed", seed, 60).unwrap_or_default() {
                kinds_seen.insert(f.kind.name());
                nodes_seen.insert(f.target % 3);
            }
        }
        assert_eq!(kinds_seen.len(), 5, "{kinds_seen:?}");
        assert_eq!(nodes_seen.len(), 3);
        for sc in [
            "kill-node",
            "kill-leader",
            "unclean",
            "kill-controller",
            "pause-node",
            "power-cut-node",
            "power-cut-all",
        ] {
            let p = plan(sc, 1, 30).unwrap_or_default();
            assert!(!p.is_empty(), "{sc}");
            assert!(p.iter().all(|f| f.kind.name() == sc));
        }
        assert!(kinds("power-cut-all")
            .unwrap_or_default()
            .iter()
            .all(|k| k.needs_disk()));
    }

    #[test]
    fn report_counts_coordinated_power_cuts() {
        let applied = |detail: &str| Applied {
            kind: FaultKind::PowerCutAll,
            start_us: 0,
            end_us: 1,
            detail: detail.into(),
        };
        let s = RunSummary {
            scenario: "power-cut-all".into(),
            cluster: Some((3, 1, None)),
            seed: 1,
            seconds: 10,
            unsafe_ack_before_fsync: false,
            unsafe_no_dedup: false,
            data_dir: "x".into(),
            planned: plan("power-cut-all", 1, 10).unwrap_or_default(),
            applied: vec![applied("COORDINATED: ..."), applied("FAILED: no disk")],
            notes: Vec::new(),
            broker_starts: 6,
            probe: Ok(Duration::from_millis(1)),
            final_bounds: Default::default(),
            final_reached: Default::default(),
            wall: Duration::from_secs(1),
        };
        let v = checker::Verdict {
            acked: 42,
            ..Default::default()
        };
        let t = report::text(&s, &v);
        assert!(t.contains("cluster: 3 nodes, replication factor 1"), "{t}");
        assert!(
            t.contains("coordinated power cuts: 1; acknowledged writes lost: 0 of 42"),
            "{t}"
        );
    }

    #[test]
    fn schedule_keeps_quiet_warmup_and_tail() {
        for seed in 0..50 {
            let p = plan("power-cut", seed, 30).unwrap_or_default();
            assert!(!p.is_empty(), "seed {seed}: no fault in 30 s");
            for f in &p {
                assert!(f.at_ms >= 3000 && f.at_ms + f.hold_ms + 3000 <= 30_000);
            }
            for w in p.windows(2) {
                assert!(w[1].at_ms >= w[0].at_ms + w[0].hold_ms + 700);
            }
        }
    }
}
