//! Consumer groups driven by the rdkafka crate (librdkafka): subscribed `BaseConsumer`s in
//! a classic group and in a KIP-848 (`group.protocol=consumer`) group share a topic, commit,
//! and are dropped (which closes them: leave the group) within a bounded time.
//!
//! The binary is `target/debug/holdfast` (or `$HOLDFAST_BIN`); build it first:
//! `cargo build -p holdfast && cargo test -p holdfast-itest --test groups`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

struct Broker {
    child: Child,
    addr: String,
    dir: PathBuf,
    /// The broker's stderr (group coordinator at debug level), for failure messages.
    log: PathBuf,
}

impl Broker {
    fn start() -> Result<Broker> {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "holdfast-itest-groups-{}-{port}",
            std::process::id()
        ));
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "holdfast-itest-groups-{}-{port}.log",
            std::process::id()
        ));
        let stderr = std::fs::File::create(&log)?;
        let mut child = Command::new(&bin)
            .env(
                "RUST_LOG",
                "info,holdfast_broker::groups=debug,holdfast_groups=debug",
            )
            .args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--listen", &addr])
            .args(["--set", "group.consumer.heartbeat.interval.ms=500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("holdfast listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            bail!("holdfast did not report listening in 30 s");
        }
        Ok(Broker {
            child,
            addr,
            dir,
            log,
        })
    }

    /// The last `n` lines of the broker's log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Keeps a member's librdkafka debug lines (`cgrp`) in memory, bounded, for failure messages.
#[derive(Clone, Default)]
struct ClientLog(Arc<Mutex<std::collections::VecDeque<String>>>);

impl ClientLog {
    fn tail(&self) -> String {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl rdkafka::ClientContext for ClientLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= 200 {
            g.pop_front();
        }
        g.push_back(format!("{level:?} {fac}: {msg}"));
    }
}

impl ConsumerContext for ClientLog {}

async fn setup(b: &Broker, topic: &str, partitions: i32, records: usize) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("linger.ms", "5")
        .create()?;
    for i in 0..records {
        let key = format!("k{i}");
        let payload = format!("v{i}");
        p.send(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .partition((i % partitions as usize) as i32),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

fn member(b: &Broker, group: &str, protocol: &str, topic: &str) -> Result<BaseConsumer<ClientLog>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &b.addr)
        .set("debug", "cgrp")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if protocol == "classic" {
        cfg.set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
    }
    let c: BaseConsumer<ClientLog> = cfg.create_with_context(ClientLog::default())?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// Two members consume every record once between them, commit, and are dropped (closed:
/// they leave the group), each drop bounded in time.
fn two_members_share_and_close(protocol: &str) -> Result<()> {
    let b = Broker::start()?;
    let topic = format!("rd-{protocol}");
    let group = format!("rdg-{protocol}");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(setup(&b, &topic, 4, 40))?;
    let members = [
        member(&b, &group, protocol, &topic)?,
        member(&b, &group, protocol, &topic)?,
    ];
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 40 && Instant::now() < deadline {
        for c in &members {
            if let Some(m) = c.poll(Duration::from_millis(50)) {
                let m = m?;
                seen.insert((m.partition(), m.offset()));
                c.commit_message(&m, CommitMode::Sync)?;
            }
        }
    }
    if seen.len() != 40 {
        bail!("consumed {} of 40 records", seen.len());
    }
    // Both members hold a share once the group settles.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sizes: Vec<usize> = members
            .iter()
            .map(|c| c.assignment().map(|a| a.count()).unwrap_or(0))
            .collect();
        if sizes == [2, 2] {
            break;
        }
        if Instant::now() > deadline {
            bail!("assignments did not settle: {sizes:?}");
        }
        for c in &members {
            let _ = c.poll(Duration::from_millis(50));
        }
    }
    // Dropping a subscribed BaseConsumer closes it: it leaves the group and polls until
    // librdkafka reports it closed. Each drop must end well within the session timeout.
    for c in members {
        let t = Instant::now();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(c);
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            bail!("dropping a subscribed consumer did not finish in 10 s");
        }
        eprintln!("{protocol}: consumer dropped in {:?}", t.elapsed());
    }
    // Every record was committed.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("group.id", &group)
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = probe.committed_offsets(tpl, Duration::from_secs(10))?;
    for e in committed.elements() {
        if e.offset() != rdkafka::Offset::Offset(10) {
            bail!("partition {} committed {:?}", e.partition(), e.offset());
        }
    }
    Ok(())
}

#[test]
fn classic_group_members_share_commit_and_close() -> Result<()> {
    two_members_share_and_close("classic")
}

#[test]
fn kip848_group_members_share_commit_and_close() -> Result<()> {
    two_members_share_and_close("consumer")
}

/// A subscribed consumer dropped at any stage of joining (before its first poll, while its
/// join is pending, during a rebalance, settled) closes promptly, in both protocols.
#[test]
fn dropping_subscribed_consumers_at_any_join_stage_is_prompt() -> Result<()> {
    let b = Broker::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(setup(&b, "sv", 4, 4))?;
    for protocol in ["classic", "consumer"] {
        for polls in [0usize, 1, 5] {
            let g = format!("sv-{protocol}-{polls}");
            let a = member(&b, &g, protocol, "sv")?;
            for _ in 0..polls {
                let _ = a.poll(Duration::from_millis(20));
            }
            let c2 = member(&b, &g, protocol, "sv")?;
            for _ in 0..polls {
                let _ = c2.poll(Duration::from_millis(20));
                let _ = a.poll(Duration::from_millis(20));
            }
            for c in [a, c2] {
                let t = Instant::now();
                let (tx, rx) = mpsc::channel();
                let client_log = c.context().clone();
                std::thread::spawn(move || {
                    drop(c);
                    let _ = tx.send(());
                });
                if rx.recv_timeout(Duration::from_secs(15)).is_err() {
                    bail!(
                        "{protocol} polls={polls}: drop did not finish in 15 s\n--- client (cgrp) ---\n{}\n--- broker ---\n{}",
                        client_log.tail(),
                        b.log_tail(120)
                    );
                }
                eprintln!("{protocol} polls={polls}: dropped in {:?}", t.elapsed());
            }
        }
    }
    Ok(())
}
