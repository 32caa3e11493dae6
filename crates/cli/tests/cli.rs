//! The admin CLI against a real `holdfast serve` process, with output snapshots in both
//! formats, cross-checked with librdkafka (the `rdkafka` crate).
//!
//! Needs `target/debug/holdfast` (or `$HOLDFAST_BIN`): `cargo build -p holdfast` first.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

fn bin() -> PathBuf {
    match std::env::var_os("HOLDFAST_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/holdfast"),
    }
}

struct Broker {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Broker {
    fn start(extra: &[&str]) -> Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("holdfast-cli-{}-{port}", std::process::id()));
        let addr = format!("127.0.0.1:{port}");
        let child = Self::spawn(&dir, &addr, extra)?;
        Ok(Broker { child, addr, dir })
    }

    fn spawn(dir: &std::path::Path, addr: &str, extra: &[&str]) -> Result<Child> {
        let bin = bin();
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build -p holdfast` first",
                bin.display()
            );
        }
        let mut child = Command::new(&bin)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", addr])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("holdfast listening on") {
            let _ = child.kill();
            bail!("broker did not start: {line:?}");
        }
        Ok(child)
    }

    /// SIGKILL, `damage` the data directory, start again on the same address.
    fn kill_and_restart(
        &mut self,
        damage: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        damage(&self.dir)?;
        self.child = Self::spawn(&self.dir, &self.addr, &[])?;
        Ok(())
    }

    /// Runs `holdfast <args> --bootstrap <addr>`.
    fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_stdin(args, None)
    }

    fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut child = Command::new(bin())
            .args(args)
            .args(["--bootstrap", &self.addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        {
            let mut input = child.stdin.take().context("stdin")?;
            if let Some(s) = stdin {
                input.write_all(s.as_bytes())?;
            }
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "holdfast {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        Ok(serde_json::from_str(&self.ok(&a)?)?)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces the value after `label` up to the next tab or newline with `<label>`.
fn mask(s: &str, label: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(label) {
        out.push_str(&rest[..i + label.len()]);
        rest = &rest[i + label.len()..];
        let end = rest.find(['\t', '\n']).unwrap_or(rest.len());
        out.push_str("<masked>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn topic_commands_with_snapshots() -> Result<()> {
    let b = Broker::start(&[])?;
    assert_eq!(
        b.ok(&[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=86400000"
        ])?,
        "Created topic orders.\n"
    );
    // Already exists: an error, unless --if-not-exists.
    let again = b.cli(&["topic", "create", "orders"])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("TOPIC_ALREADY_EXISTS"));
    assert_eq!(
        b.ok(&["topic", "create", "orders", "--if-not-exists"])?,
        "Topic orders already exists.\n"
    );
    let created = b.json(&["topic", "create", "audit", "-p", "1"])?;
    assert_eq!(created[0]["topic"], "audit");
    assert_eq!(created[0]["created"], true);

    assert_eq!(
        b.ok(&["topic", "list", "--exclude-internal"])?,
        "audit\norders\n"
    );
    let listed = b.json(&["topic", "list"])?;
    assert!(listed
        .as_array()
        .context("array")?
        .iter()
        .any(|t| t["name"] == "__consumer_offsets" && t["internal"] == true));

    let describe = b.ok(&["topic", "describe", "orders"])?;
    assert_eq!(
        mask(&describe, "TopicId: "),
        "Topic: orders\tTopicId: <masked>\tPartitionCount: 3\tReplicationFactor: 1\tConfigs: retention.ms=86400000\n\
         \tTopic: orders\tPartition: 0\tLeader: 1\tReplicas: 1\tIsr: 1\n\
         \tTopic: orders\tPartition: 1\tLeader: 1\tReplicas: 1\tIsr: 1\n\
         \tTopic: orders\tPartition: 2\tLeader: 1\tReplicas: 1\tIsr: 1\n"
    );
    let id = describe
        .split('\t')
        .find_map(|f| f.strip_prefix("TopicId: "))
        .context("topic id")?;
    assert_eq!(
        id.len(),
        22,
        "Kafka renders topic ids as 22 base64url chars"
    );
    let dj = b.json(&["topic", "describe", "orders"])?;
    assert_eq!(dj[0]["topic_id"], id);
    assert_eq!(dj[0]["partition_count"], 3);
    assert_eq!(dj[0]["replication_factor"], 1);
    assert_eq!(dj[0]["configs"]["retention.ms"], "86400000");
    assert_eq!(dj[0]["partitions"][2]["leader"], 1);
    assert_eq!(dj[0]["partitions"][2]["isr"], serde_json::json!([1]));

    assert_eq!(
        b.ok(&[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "cleanup.policy=compact",
            "--delete",
            "retention.ms"
        ])?,
        "Completed updating config for topic orders.\n"
    );
    assert_eq!(
        b.ok(&["topic", "add-partitions", "orders", "--count", "4"])?,
        "Topic orders now has 4 partitions.\n"
    );
    let head = b.ok(&["topic", "describe", "orders"])?;
    let head = head.lines().next().context("a line")?;
    assert!(
        head.ends_with(
            "\tPartitionCount: 4\tReplicationFactor: 1\tConfigs: cleanup.policy=compact"
        ),
        "{head}"
    );
    // Filters: a healthy single node has nothing under-replicated or unavailable.
    assert_eq!(
        b.ok(&["topic", "describe", "--under-replicated-partitions"])?,
        ""
    );

    assert_eq!(
        b.ok(&["topic", "delete", "audit", "orders"])?,
        "Deleted topic audit.\nDeleted topic orders.\n"
    );
    assert_eq!(
        b.cli(&["topic", "delete", "orders"])?.status.code(),
        Some(1)
    );
    assert_eq!(
        b.ok(&["topic", "delete", "orders", "--if-exists"])?,
        "Topic orders does not exist.\n"
    );
    assert_eq!(b.ok(&["topic", "list", "--exclude-internal"])?, "");
    Ok(())
}

#[test]
fn produce_and_consume_agree_with_librdkafka() -> Result<()> {
    let b = Broker::start(&[])?;
    b.ok(&["topic", "create", "events", "-p", "2"])?;
    // CLI produce → librdkafka consume.
    let out = b.cli_stdin(
        &[
            "produce",
            "events",
            "-p",
            "1",
            "-K",
            ":",
            "-H",
            "trace=abc",
            "--timestamp-ms",
            "1700000000000",
        ],
        Some("k1:v1\nk2:v2\nk3:v3\n"),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "Produced 3 records to events-1 at offsets 0..2\n"
    );
    let consumer: BaseConsumer = b
        .config()
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("events", 1, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 3 {
        match consumer.poll(Duration::from_secs(1)) {
            Some(m) => {
                let m = m?;
                let h = m.headers().context("headers")?.get(0);
                assert_eq!((h.key, h.value), ("trace", Some(&b"abc"[..])));
                assert_eq!(m.timestamp().to_millis(), Some(1_700_000_000_000));
                got.push((
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ));
            }
            None if std::time::Instant::now() > deadline => bail!("no message from librdkafka"),
            None => {}
        }
    }
    assert_eq!(
        got,
        vec![
            (0, "k1".to_string(), "v1".to_string()),
            (1, "k2".into(), "v2".into()),
            (2, "k3".into(), "v3".into())
        ]
    );
    // Keyed records without -p land where Kafka's default partitioner puts them (murmur2):
    // librdkafka's murmur2_random partitioner agrees.
    b.cli_stdin(&["produce", "events", "-k", "same"], Some("a\nb\n"))?;

    // librdkafka produce (gzip, headers) → CLI consume, JSON and template.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let producer: FutureProducer = b
        .config()
        .set("compression.type", "gzip")
        .set("partitioner", "murmur2_random")
        .create()?;
    rt.block_on(async {
        for i in 0..3 {
            let key = format!("key{i}");
            let value = format!("value{i}");
            producer
                .send(
                    FutureRecord::to("events")
                        .partition(0)
                        .key(&key)
                        .payload(&value)
                        .timestamp(1_700_000_000_000 + i)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "n",
                            value: Some(&i.to_string()),
                        })),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        // The same key the CLI produced: same partition.
        producer
            .send(
                FutureRecord::to("events").key("same").payload("c"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        anyhow::Ok(())
    })?;
    let lines = b.ok(&["consume", "events", "-p", "0", "--format", "json"])?;
    let recs: Vec<serde_json::Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let gz: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["headers"]["n"].is_string())
        .collect();
    assert_eq!(gz.len(), 3);
    assert_eq!(
        *gz[1],
        serde_json::json!({"topic": "events", "partition": 0, "offset": gz[1]["offset"],
            "timestamp": 1_700_000_000_001i64, "timestamp_type": "CreateTime",
            "key": "key1", "value": "value1", "headers": {"n": "1"}})
    );
    let text = b.ok(&[
        "consume",
        "events",
        "--fmt",
        "%p:%o %k=%s [%h]\\n",
        "-o",
        "2",
        "-c",
        "1",
        "-p",
        "1",
    ])?;
    assert_eq!(text, "1:2 k3=v3 [trace=abc]\n");
    // "same" went to one partition, from both clients.
    let all = b.ok(&["consume", "events", "--fmt", "%p %k\\n"])?;
    let same: std::collections::BTreeSet<&str> = all
        .lines()
        .filter(|l| l.ends_with(" same"))
        .map(|l| &l[..1])
        .collect();
    assert_eq!(same.len(), 1, "{all}");
    assert_eq!(all.lines().filter(|l| l.ends_with(" same")).count(), 3);
    // -c and @timestamp.
    assert_eq!(
        b.ok(&[
            "consume",
            "events",
            "-p",
            "1",
            "-o",
            "@1700000000000",
            "-c",
            "1"
        ])?,
        "v1\n"
    );
    Ok(())
}

#[test]
fn group_commands_match_the_committed_state() -> Result<()> {
    let b = Broker::start(&[])?;
    b.ok(&["topic", "create", "jobs", "-p", "2"])?;
    b.cli_stdin(&["produce", "jobs", "-p", "0"], Some("1\n2\n3\n4\n5\n"))?;
    b.cli_stdin(&["produce", "jobs", "-p", "1"], Some("6\n7\n"))?;
    let consumer: BaseConsumer = b
        .config()
        .set("group.id", "workers")
        .set("client.id", "worker-1")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["jobs"])?;
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen < 7 {
        // poll returns None after serving a rebalance event, too.
        if let Some(m) = consumer.poll(Duration::from_secs(1)) {
            m?;
            seen += 1;
        } else if std::time::Instant::now() > deadline {
            bail!("no message");
        }
    }
    // Commit 3 of partition 0 and all of partition 1.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("jobs", 0, Offset::Offset(3))?;
    tpl.add_partition_offset("jobs", 1, Offset::Offset(2))?;
    consumer.commit(&tpl, CommitMode::Sync)?;

    assert_eq!(b.ok(&["group", "list"])?, "workers\n");
    let d = b.ok(&["group", "describe", "workers"])?;
    let header: Vec<&str> = d
        .lines()
        .next()
        .context("header")?
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID"
        ]
    );
    let rows: Vec<Vec<&str>> = d
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][..6], ["workers", "jobs", "0", "3", "5", "2"]);
    assert_eq!(&rows[1][..6], ["workers", "jobs", "1", "2", "2", "0"]);
    assert!(rows[0][6].starts_with("worker-1-"), "{:?}", rows[0]);
    assert_eq!(rows[0][8], "worker-1");
    let dj = b.json(&["group", "describe", "workers"])?;
    assert_eq!(dj["state"], "Stable");
    assert_eq!(dj["members"][0]["client_id"], "worker-1");
    assert_eq!(dj["offsets"][0]["lag"], 2);
    let members = b.ok(&["group", "describe", "workers", "--members", "--verbose"])?;
    let m: Vec<&str> = members
        .lines()
        .nth(1)
        .context("a member")?
        .split_whitespace()
        .collect();
    assert_eq!(
        members
            .lines()
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "GROUP",
            "CONSUMER-ID",
            "GROUP-INSTANCE-ID",
            "HOST",
            "CLIENT-ID",
            "#PARTITIONS",
            "ASSIGNMENT"
        ])
    );
    assert_eq!(
        (m[0], m[2], m[4], m[5], m[6]),
        ("workers", "-", "worker-1", "2", "jobs(0,1)")
    );
    let state = b.ok(&["group", "describe", "workers", "--state"])?;
    let row = state.lines().nth(1).context("state row")?;
    assert!(row.starts_with("workers         "), "{row}");
    assert!(row.contains(&format!("{}  (1)", b.addr)), "{row}");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3..], ["range", "Stable", "1"], "{row}");
    let sj = b.json(&["group", "describe", "workers", "--state"])?;
    assert_eq!(
        (sj["state"].as_str(), sj["members"].as_i64()),
        (Some("Stable"), Some(1))
    );
    let lag = b.json(&["group", "lag", "workers"])?;
    assert_eq!(lag["total_lag"], 2);
    assert_eq!(lag["partitions"][0]["lag_retention_ratio"], 0.4);

    // Reset is refused while the group has members.
    let refused = b.cli(&[
        "group",
        "reset-offsets",
        "workers",
        "--all-topics",
        "--to-earliest",
    ])?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(
        "Assignments can only be reset if the group 'workers' is inactive, but the current state is Stable."
    ));
    drop(consumer); // leaves the group

    // Dry run: printed, not committed.
    let dry = b.ok(&[
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs:0",
        "--shift-by",
        "-2",
    ])?;
    assert_eq!(
        dry,
        "GROUP           TOPIC           PARTITION  NEW-OFFSET\nworkers         jobs            0          1\n"
    );
    let committed = |b: &Broker| -> Result<Vec<i64>> {
        let c: BaseConsumer = b.config().set("group.id", "workers").create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("jobs", 0);
        tpl.add_partition("jobs", 1);
        let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(-1))
            .collect())
    };
    assert_eq!(committed(&b)?, vec![3, 2]);
    let ex = b.json(&[
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs",
        "--to-earliest",
        "--execute",
    ])?;
    assert_eq!(ex["executed"], true);
    assert_eq!(committed(&b)?, vec![0, 0]);
    b.ok(&[
        "group",
        "reset-offsets",
        "workers",
        "--all-topics",
        "--to-latest",
        "--execute",
    ])?;
    assert_eq!(committed(&b)?, vec![5, 2]);
    b.ok(&[
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs",
        "--to-offset",
        "4",
        "--execute",
    ])?;
    assert_eq!(
        committed(&b)?,
        vec![4, 2],
        "--to-offset clamps to the log end"
    );
    b.ok(&[
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs",
        "--to-datetime",
        "2000-01-01T00:00:00Z",
        "--execute",
    ])?;
    assert_eq!(committed(&b)?, vec![0, 0]);
    b.ok(&[
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs",
        "--by-duration",
        "PT0S",
        "--execute",
    ])?;
    assert_eq!(committed(&b)?, vec![5, 2], "no record after now: the end");

    assert_eq!(
        b.ok(&["group", "delete", "workers"])?,
        "Deletion of requested consumer groups ('workers') was successful.\n"
    );
    assert_eq!(b.ok(&["group", "list"])?, "");
    Ok(())
}

#[test]
fn cluster_describe_and_health() -> Result<()> {
    let b = Broker::start(&[])?;
    let d = b.ok(&["cluster", "describe"])?;
    let port = b.addr.rsplit_once(':').context("port")?.1;
    // The internal topics a fresh broker has (which depends on the features it runs).
    let listed = b.json(&["topic", "list"])?;
    let listed = listed.as_array().context("array")?;
    let partitions: i64 = listed
        .iter()
        .map(|t| t["partitions"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        mask(&d, "ClusterId:    "),
        format!(
            "ClusterId:    <masked>\nControllerId: 1\nTopics:       {}\nPartitions:   {partitions}\n\nBROKER HOST      PORT   RACK\n1      127.0.0.1 {port:<6} -\n",
            listed.len()
        )
    );
    let dj = b.json(&["cluster", "describe"])?;
    assert_eq!(dj["controller_id"], 1);
    assert_eq!(dj["brokers"][0]["port"], port.parse::<i64>()?);
    let h = b.ok(&["cluster", "health"])?;
    assert!(h.starts_with("Healthy:                     true\n"), "{h}");
    // min.insync.replicas above the replica count: the partition can never take an
    // acks=all write; health says so and exits 1.
    b.ok(&[
        "topic",
        "create",
        "fragile",
        "-p",
        "1",
        "-c",
        "min.insync.replicas=2",
    ])?;
    let out = b.cli(&["cluster", "health", "--format", "json"])?;
    assert_eq!(out.status.code(), Some(1));
    let hj: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(hj["healthy"], false);
    assert_eq!(
        hj["under_min_isr_partitions"],
        serde_json::json!(["fragile/0"])
    );
    // An unreachable cluster is an error (exit 2), not "healthy".
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = Command::new(bin())
        .args([
            "cluster",
            "health",
            "--bootstrap",
            &format!("127.0.0.1:{port}"),
            "--timeout-ms",
            "2000",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

/// A doctor finding: (severity, check, resource).
type Finding = (String, String, String);

/// The doctor's exit code, findings and their fixes.
fn doctor(b: &Broker) -> Result<(Option<i32>, Vec<Finding>, Vec<String>)> {
    let out = b.cli(&["doctor", "--format", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let mut findings = Vec::new();
    let mut fixes = Vec::new();
    for f in v["findings"].as_array().context("findings")? {
        let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
        findings.push((s("severity"), s("check"), s("resource")));
        fixes.push(s("fix"));
    }
    Ok((out.status.code(), findings, fixes))
}

fn finding(sev: &str, check: &str, resource: &str) -> Finding {
    (sev.into(), check.into(), resource.into())
}

#[test]
fn doctor_reports_each_risk_and_its_fix_works() -> Result<()> {
    let b = Broker::start(&[])?;
    // The default configuration: nothing critical; a single node can only warn about RF.
    let (code, findings, _) = doctor(&b)?;
    assert_eq!(code, Some(1));
    assert_eq!(
        findings,
        vec![finding(
            "warning",
            "replication-factor",
            "cluster (1 broker)"
        )]
    );
    b.ok(&[
        "topic",
        "create",
        "risky",
        "-c",
        "unclean.leader.election.enable=true",
        "-c",
        "holdfast.flush.policy=pagecache",
    ])?;
    b.ok(&["topic", "create", "tight", "-c", "min.insync.replicas=2"])?;
    b.ok(&["topic", "create", "lagging", "-c", "retention.ms=3600000"])?;
    b.cli_stdin(
        &["produce", "lagging"],
        Some("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n"),
    )?;
    // A group that committed offset 2 of 10: 80% of the retained log unread.
    b.ok(&[
        "group",
        "reset-offsets",
        "behind",
        "--topic",
        "lagging",
        "--to-offset",
        "2",
        "--execute",
    ])?;
    let (code, findings, fixes) = doctor(&b)?;
    assert_eq!(code, Some(2), "{findings:?}");
    for f in [
        finding("critical", "min-insync-replicas", "topic tight"),
        finding("critical", "unclean-leader-election", "topic risky"),
        finding("warning", "page-cache-only", "topic risky"),
        finding(
            "warning",
            "group-lag-retention",
            "group behind partition lagging/0",
        ),
        finding("warning", "replication-factor", "cluster (1 broker)"),
    ] {
        assert!(findings.contains(&f), "{f:?} missing from {findings:?}");
    }
    // Critical first.
    assert_eq!(findings[0].0, "critical");
    let text = b.cli(&["doctor"])?;
    let text = String::from_utf8(text.stdout)?;
    assert!(text.contains("[CRITICAL] unclean-leader-election topic risky: unclean.leader.election.enable=true lets an out-of-sync replica become leader"), "{text}");
    assert!(text.contains(&format!(
        "    fix: holdfast topic alter-config risky --set unclean.leader.election.enable=false --bootstrap {}",
        b.addr
    )));
    assert!(text.ends_with("2 critical, 3 warning, 0 info\n"), "{text}");

    // Each printed topic fix, run as printed, clears its finding.
    for fix in fixes
        .iter()
        .filter(|f| f.starts_with("holdfast topic alter-config") && !f.contains("retention.ms"))
    {
        let args: Vec<&str> = fix.split_whitespace().skip(1).collect();
        let out = Command::new(bin()).args(&args).output()?;
        assert!(
            out.status.success(),
            "{fix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The group catches up.
    b.ok(&[
        "group",
        "reset-offsets",
        "behind",
        "--topic",
        "lagging",
        "--to-latest",
        "--execute",
    ])?;
    let (code, findings, _) = doctor(&b)?;
    assert_eq!(code, Some(1));
    assert_eq!(
        findings,
        vec![finding(
            "warning",
            "replication-factor",
            "cluster (1 broker)"
        )]
    );
    Ok(())
}

#[test]
fn doctor_flags_a_page_cache_broker_default() -> Result<()> {
    // Kafka's own default (acknowledge from the page cache), set broker-wide.
    let b = Broker::start(&["--set", "log.flush.interval.messages=10000"])?;
    b.ok(&["topic", "create", "fast"])?;
    let (code, findings, fixes) = doctor(&b)?;
    assert_eq!(code, Some(1));
    let i = findings
        .iter()
        .position(|f| *f == finding("warning", "page-cache-only", "topic fast"))
        .context("page-cache-only finding")?;
    assert_eq!(
        fixes[i],
        format!(
            "holdfast topic alter-config fast --set holdfast.flush.policy=fsync --bootstrap {}",
            b.addr
        )
    );
    Ok(())
}

/// Sends one Produce of `batch` to partition 0 of `topic` and returns its error code.
async fn raw_produce(
    client: &mut holdfast_client::Client,
    topic: &str,
    batch: Vec<u8>,
) -> Result<i16> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(batch.into());
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 10_000;
    req.topic_data = vec![td];
    let resp = client.send_any(req, 9).await?;
    Ok(resp.responses[0].partition_responses[0].error_code)
}

#[test]
fn ledger_records_corrupt_batches_fenced_producers_and_truncations() -> Result<()> {
    use holdfast_client::records::{encode_batch, ProducerIdentity, Record};
    let mut b = Broker::start(&[])?;
    b.ok(&["topic", "create", "raw"])?;
    assert_eq!(b.ok(&["cluster", "events"])?, "", "no loss, no events");
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000,
            value: Some(format!("r{i}").into_bytes()),
            ..Record::default()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c =
            holdfast_client::Client::connect(&b.addr, "ledger-test", Duration::from_secs(10))
                .await?;
        // A bit flipped in a record: the CRC no longer matches.
        let mut corrupt = encode_batch(&recs, None);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x40;
        assert_eq!(
            raw_produce(&mut c, "raw", corrupt).await?,
            2,
            "CORRUPT_MESSAGE"
        );
        // An idempotent producer at epoch 5, then a zombie of it at epoch 4.
        let id = |epoch| {
            Some(ProducerIdentity {
                producer_id: 4242,
                producer_epoch: epoch,
                base_sequence: 0,
            })
        };
        assert_eq!(
            raw_produce(&mut c, "raw", encode_batch(&recs, id(5))).await?,
            0
        );
        assert_eq!(
            raw_produce(&mut c, "raw", encode_batch(&recs, id(4))).await?,
            47,
            "INVALID_PRODUCER_EPOCH"
        );
        anyhow::Ok(())
    })?;
    let reasons = |b: &Broker| -> Result<Vec<(String, i64)>> {
        let v = b.json(&["cluster", "events", "--topic", "raw"])?;
        Ok(v.as_array()
            .context("array")?
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["records"].as_i64().unwrap_or(-1),
                )
            })
            .collect())
    };
    // Appended from the maintenance tick: poll until both are there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = reasons(&b)?;
    while got.len() < 2 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        got = reasons(&b)?;
    }
    assert_eq!(
        got,
        vec![
            ("corrupt_batch".to_string(), 3),
            ("producer_fenced".to_string(), 3)
        ]
    );

    // A torn tail after a crash: recovery cuts it, and says so in the ledger.
    b.kill_and_restart(|dir| {
        let seg = dir.join("raw-0").join("00000000000000000000.log");
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg)?;
        f.write_all(&[0xAB; 40])?;
        Ok(())
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = reasons(&b)?;
    while got.len() < 3 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        got = reasons(&b)?;
    }
    assert_eq!(got.last(), Some(&("truncation".to_string(), 0)), "{got:?}");
    let text = b.ok(&["cluster", "events"])?;
    let header: Vec<&str> = text
        .lines()
        .next()
        .context("header")?
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "TIME",
            "REASON",
            "TOPIC",
            "PARTITION",
            "FROM-OFFSET",
            "TO-OFFSET",
            "RECORDS",
            "GROUP"
        ]
    );
    let truncation: Vec<&str> = text
        .lines()
        .last()
        .context("row")?
        .split_whitespace()
        .collect();
    assert_eq!(
        &truncation[1..],
        ["truncation", "raw", "0", "3", "-1", "0", "-"]
    );
    Ok(())
}
