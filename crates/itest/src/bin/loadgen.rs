//! `holdfast-loadgen`: a Kafka load generator on librdkafka (the `rdkafka` crate) that works
//! against any bootstrap address. Closed loop (maximum throughput) or open loop (a fixed
//! rate, latency measured from each message's scheduled send time so stalls are not
//! hidden). HDR histograms; prints MB/s, msgs/s, produce and end-to-end p50/p99/p999/max,
//! and, given the broker's pid (or `--spawn-broker`), its CPU seconds per GB and peak RSS.
//!
//! Usage: holdfast-loadgen [--bootstrap HOST:PORT | --spawn-broker BIN] [--sizes 100,1024,16384]
//!        [--seconds N] [--rate MSGS_PER_S] [--partitions N] [--replication-factor N]
//!        [--acks all|1|0] [--broker-pid PID]
//!        [--topic-config KEY=VALUE]...

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

struct Args {
    bootstrap: Option<String>,
    spawn_broker: Option<String>,
    sizes: Vec<usize>,
    seconds: f64,
    rate: Option<f64>,
    partitions: i32,
    /// `--replication-factor` of the topics it creates (default 1).
    replication_factor: i32,
    acks: String,
    broker_pid: Option<u32>,
    warmup_seconds: f64,
    /// `--topic-config KEY=VALUE` (repeatable): configs of the topics it creates, e.g.
    /// `flush.messages=1` to make Apache Kafka fsync before acknowledging.
    topic_configs: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstrap: None,
        spawn_broker: None,
        sizes: vec![100, 1024, 16384],
        seconds: 10.0,
        rate: None,
        partitions: 8,
        replication_factor: 1,
        acks: "all".into(),
        broker_pid: None,
        warmup_seconds: 2.0,
        topic_configs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(val()?),
            "--spawn-broker" => a.spawn_broker = Some(val()?),
            "--sizes" => {
                a.sizes = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = val()?.parse()?,
            "--rate" => a.rate = Some(val()?.parse()?),
            "--partitions" => a.partitions = val()?.parse()?,
            "--replication-factor" => a.replication_factor = val()?.parse()?,
            "--acks" => a.acks = val()?,
            "--broker-pid" => a.broker_pid = Some(val()?.parse()?),
            "--warmup" => a.warmup_seconds = val()?.parse()?,
            "--topic-config" => {
                let kv = val()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--topic-config wants KEY=VALUE, got {kv}"))?;
                a.topic_configs.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("loadgen.rs")
                        .lines()
                        .take(9)
                        .map(|l| l.trim_start_matches("//!"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    if a.bootstrap.is_none() && a.spawn_broker.is_none() {
        a.bootstrap = Some("localhost:9092".into());
    }
    Ok(a)
}

/// Per-message delivery accounting: latency from the scheduled send time to the ack.
struct Ctx {
    start: Instant,
    /// Messages scheduled before this (the warm-up: metadata, connections) are not measured.
    measure_from_ns: u64,
    hist: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, scheduled_ns: Box<u64>) {
        match result {
            Ok(_) if *scheduled_ns < self.measure_from_ns => {}
            Ok(_) => {
                let now = self.start.elapsed().as_nanos() as u64;
                let us = now.saturating_sub(*scheduled_ns) / 1000;
                if let Ok(mut h) = self.hist.lock() {
                    let _ = h.record(us.max(1));
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// (utime+stime seconds, VmHWM KiB) of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, hwm))
}

fn spawn_broker(bin: &str) -> anyhow::Result<(Child, String, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("holdfast-loadgen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap_or("."),
            "--listen",
            &addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("listening") => break,
            Some(Ok(_)) => continue,
            _ => bail!("broker exited before listening"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr, dir))
}

struct CellResult {
    msgs: u64,
    bytes: u64,
    elapsed: f64,
    produce: Histogram<u64>,
    e2e: Histogram<u64>,
    failed: u64,
}

async fn run_cell(args: &Args, bootstrap: &str, size: usize) -> anyhow::Result<CellResult> {
    let topic = format!("loadgen-{size}-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut nt = NewTopic::new(
        &topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    for (k, v) in &args.topic_configs {
        nt = nt.set(k, v);
    }
    for r in admin.create_topics([&nt], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    let start = Instant::now();
    let measure_from_ns = (args.warmup_seconds * 1e9) as u64;
    let ctx = Ctx {
        start,
        measure_from_ns,
        hist: Mutex::new(hist()),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", &args.acks)
        .set("linger.ms", "5")
        .set(
            "enable.idempotence",
            if args.acks == "all" { "true" } else { "false" },
        )
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(ctx)?;
    // Consumer: end-to-end latency from the scheduled time written into each payload.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "loadgen")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let e2e_thread = {
        let (stop, consumed, target) = (
            Arc::clone(&stop),
            Arc::clone(&consumed),
            Arc::clone(&target),
        );
        std::thread::spawn(move || {
            let mut h = hist();
            let deadline_after_stop = Duration::from_secs(30);
            let mut stopped_at: Option<Instant> = None;
            loop {
                if stop.load(Ordering::Relaxed) {
                    let t = *stopped_at.get_or_insert_with(Instant::now);
                    if consumed.load(Ordering::Relaxed) >= target.load(Ordering::Relaxed)
                        || t.elapsed() > deadline_after_stop
                    {
                        break;
                    }
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if let Some(p) = m.payload() {
                        if p.len() >= 8 {
                            let sched = u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8]));
                            if sched < measure_from_ns {
                                consumed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let us =
                                (start.elapsed().as_nanos() as u64).saturating_sub(sched) / 1000;
                            let _ = h.record(us.max(1));
                        }
                    }
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            h
        })
    };
    let mut payload = vec![0x42u8; size.max(8)];
    let measure_from = Instant::now();
    let mut sent: u64 = 0;
    let total_seconds = args.warmup_seconds + args.seconds;
    let interval_ns = args.rate.map(|r| (1e9 / r) as u64);
    while measure_from.elapsed().as_secs_f64() < total_seconds {
        let now_ns = start.elapsed().as_nanos() as u64;
        let scheduled = match interval_ns {
            Some(iv) => {
                let due = (measure_from - start).as_nanos() as u64 + sent * iv;
                if due > now_ns {
                    std::thread::sleep(Duration::from_nanos((due - now_ns).min(1_000_000)));
                    continue;
                }
                due
            }
            None => now_ns,
        };
        payload[..8].copy_from_slice(&scheduled.to_be_bytes());
        let key = (sent % 1024).to_be_bytes();
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(scheduled))
            .payload(&payload[..])
            .key(&key[..]);
        // Bounded retries on a full local queue: that is backpressure, not an error.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
        sent += 1;
    }
    let elapsed = (measure_from.elapsed().as_secs_f64() - args.warmup_seconds).max(1e-9);
    producer.flush(Duration::from_secs(60))?;
    target.store(sent, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let e2e = e2e_thread
        .join()
        .map_err(|_| anyhow!("consumer thread panicked"))?;
    let ctx = producer.context();
    let produce = ctx.hist.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    Ok(CellResult {
        msgs: ctx.acked.load(Ordering::Relaxed),
        bytes: ctx.acked.load(Ordering::Relaxed) * size as u64,
        elapsed,
        produce,
        e2e,
        failed: ctx.failed.load(Ordering::Relaxed),
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut spawned = None;
    let bootstrap = match &args.spawn_broker {
        Some(bin) => {
            let (child, addr, dir) = spawn_broker(bin)?;
            let pid = child.id();
            spawned = Some((child, dir, pid));
            addr
        }
        None => args.bootstrap.clone().unwrap_or_default(),
    };
    let pid = args.broker_pid.or(spawned.as_ref().map(|s| s.2));
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} msgs/s"),
        None => "closed loop".into(),
    };
    println!(
        "holdfast-loadgen: {bootstrap}, acks={}, {} partitions, {mode}, {} s per cell",
        args.acks, args.partitions, args.seconds
    );
    println!(
        "{:>6} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "size",
        "MB/s",
        "msgs/s",
        "prod p50",
        "p99",
        "p999",
        "e2e p50",
        "p99",
        "p999",
        "failed",
        "cpu s/GB",
        "peak RSS"
    );
    let mut results = HashMap::new();
    for &size in &args.sizes {
        let before = pid.and_then(proc_usage);
        let r = run_cell(&args, &bootstrap, size).await?;
        let after = pid.and_then(proc_usage);
        let (cpu, rss) = match (before, after) {
            (Some((c0, _)), Some((c1, hwm))) => (
                format!("{:.2}", (c1 - c0) / (r.bytes as f64 / 1e9)),
                format!("{} MiB", hwm / 1024),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:>6} {:>9.1} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>9} {:>9}",
            size,
            r.bytes as f64 / 1e6 / r.elapsed,
            r.msgs as f64 / r.elapsed,
            ms(&r.produce, 0.5),
            ms(&r.produce, 0.99),
            ms(&r.produce, 0.999),
            ms(&r.e2e, 0.5),
            ms(&r.e2e, 0.99),
            ms(&r.e2e, 0.999),
            r.failed,
            cpu,
            rss
        );
        results.insert(size, r.msgs);
    }
    if let Some((mut child, dir, _)) = spawned {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
