//! The workload, through librdkafka (the `rdkafka` crate): idempotent acks=all producers
//! sending unique values to every partition, assign()-based consumers polling, a watcher of
//! watermarks, and after healing a liveness probe and a fresh consumer's final read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{Event, Kind, Recorder, F};

pub const TOPIC: &str = "chaos";
pub const PARTITIONS: i32 = 4;
pub const PRODUCERS: usize = 2;
pub const CONSUMERS: usize = 2;

/// Errors after which the value is known NOT to be in the log (reliability.md, "Honesty").
/// Everything else (timeouts, network, purge, storage, unknown) is indefinite.
pub fn is_definite(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OutOfOrderSequenceNumber
            | C::InvalidRecord
            | C::InvalidTransactionalState
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::NotEnoughReplicas
            | C::MessageSizeTooLarge
            | C::InvalidRequiredAcks
            | C::InvalidMessage
            | C::DuplicateSequenceNumber
    )
}

fn classify(e: &KafkaError) -> (Kind, Option<i32>, String) {
    match e.rdkafka_error_code() {
        Some(c) if is_definite(c) => (Kind::Fail, Some(c as i32), format!("{c:?}")),
        Some(c) => (Kind::Info, Some(c as i32), format!("{c:?}")),
        None => (Kind::Info, None, e.to_string()),
    }
}

struct SendOpaque {
    op: u64,
    value: String,
    partition: i32,
}

struct ProdCtx {
    rec: Arc<Recorder>,
    process: String,
    f: F,
    /// The partitions with an acknowledged send (the liveness probe's evidence).
    acked: Option<Arc<Mutex<BTreeSet<i32>>>>,
}

impl ClientContext for ProdCtx {
    /// librdkafka's logs go to stderr when `CHAOS_DEBUG` names debug contexts.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if std::env::var_os("CHAOS_DEBUG").is_some() {
            eprintln!("[{}] rdkafka {level:?} {fac}: {log_message}", self.process);
        }
    }
}

impl ProducerContext for ProdCtx {
    type DeliveryOpaque = Box<SendOpaque>;
    fn delivery(&self, r: &DeliveryResult<'_>, o: Box<SendOpaque>) {
        let e = match r {
            Ok(m) => {
                if let Some(a) = &self.acked {
                    if let Ok(mut a) = a.lock() {
                        a.insert(m.partition());
                    }
                }
                Event::new(Kind::Ok, self.f, &self.process, o.op)
                    .value(&o.value)
                    .partition(m.partition())
                    .offset(m.offset())
            }
            Err((err, _)) => {
                let (kind, code, text) = classify(err);
                Event::new(kind, self.f, &self.process, o.op)
                    .value(&o.value)
                    .partition(o.partition)
                    .error(code, text)
            }
        };
        self.rec.record(e);
    }
}

fn producer(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    process: &str,
    f: F,
) -> anyhow::Result<ThreadedProducer<ProdCtx>> {
    producer_with(bootstrap, rec, process, f, 15_000, None)
}

fn producer_with(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    process: &str,
    f: F,
    message_timeout_ms: u64,
    acked: Option<Arc<Mutex<BTreeSet<i32>>>>,
) -> anyhow::Result<ThreadedProducer<ProdCtx>> {
    let ctx = ProdCtx {
        rec: Arc::clone(rec),
        process: process.to_string(),
        f,
        acked,
    };
    let debug = std::env::var("CHAOS_DEBUG").ok();
    let mut cfg = ClientConfig::new();
    if let Some(d) = &debug {
        cfg.set("debug", d);
        // rust-rdkafka sets librdkafka's log level from the `log` crate's (off here), which
        // drops every debug line after the client is created.
        cfg.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    // `CHAOS_PRODUCER_CONF=key=value,key=value`: extra librdkafka settings for the workload
    // producers (experiments on client behaviour; never set by the smoke).
    if let Ok(extra) = std::env::var("CHAOS_PRODUCER_CONF") {
        for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                cfg.set(k.trim(), v.trim());
            }
        }
    }
    // `--acks 1` (negative control): the workload's producers only; the probe keeps acks=all.
    let acks_one = f == F::Send && ACKS_ONE.load(Ordering::Relaxed);
    Ok(with_socket_timeout(&mut cfg)
        .set("bootstrap.servers", bootstrap)
        .set(
            "enable.idempotence",
            if acks_one { "false" } else { "true" },
        )
        .set("acks", if acks_one { "1" } else { "all" })
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("queue.buffering.max.messages", "20000")
        .set("log_level", if debug.is_some() { "7" } else { "3" })
        .create_with_context(ctx)?)
}

/// `--acks 1`: the workload's producers (not the probe) send with acks=1 and without
/// idempotence (librdkafka requires acks=all for it).
pub static ACKS_ONE: AtomicBool = AtomicBool::new(false);

/// librdkafka's client-side timeout for requests other than Produce (`socket.timeout.ms`;
/// Produce requests time out with their first message's `message.timeout.ms`). 0 keeps
/// librdkafka's default (60 s). Network-fault scenarios set it below the time the proxy
/// holds a request, so the client gives up, reconnects and retries while the held request
/// is still on its way: the delayed-request case.
pub static SOCKET_TIMEOUT_MS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Applies [`SOCKET_TIMEOUT_MS`] to a client configuration.
pub fn with_socket_timeout(cfg: &mut ClientConfig) -> &mut ClientConfig {
    let ms = SOCKET_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed);
    if ms > 0 {
        cfg.set("socket.timeout.ms", ms.to_string());
    }
    cfg
}

fn consumer(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(with_socket_timeout(&mut ClientConfig::new())
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3")
        .create()?)
}

/// Creates the topic (auto-created by metadata with num.partitions=4) and waits until every
/// partition has a leader.
pub fn create_topic(bootstrap: &str, deadline: Duration) -> anyhow::Result<()> {
    create_named_topic(bootstrap, TOPIC, deadline)
}

/// [`create_topic`] for another topic of [`PARTITIONS`] partitions.
pub fn create_named_topic(bootstrap: &str, topic: &str, deadline: Duration) -> anyhow::Result<()> {
    let rec_dummy: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("log_level", "3")
            .create()?;
    let t = Instant::now();
    while t.elapsed() < deadline {
        if let Ok(md) = rec_dummy
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(2))
        {
            if let Some(tm) = md.topics().iter().find(|t| t.name() == topic) {
                if tm.error().is_none()
                    && tm.partitions().len() == PARTITIONS as usize
                    && tm.partitions().iter().all(|p| p.leader() >= 0)
                {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("topic {topic} with {PARTITIONS} partitions not ready within {deadline:?}")
}

/// The running workload threads.
pub struct Workload {
    stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<anyhow::Result<()>>>,
    others: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Workload {
    pub fn start(
        bootstrap: &str,
        rec: &Arc<Recorder>,
        seed: u64,
        rate_per_producer: u32,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for i in 0..PRODUCERS {
            let (b, r, s) = (bootstrap.to_string(), Arc::clone(rec), Arc::clone(&stop));
            let rng_seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            producers.push(std::thread::spawn(move || {
                produce_loop(&b, &r, &s, i, rng_seed, rate_per_producer)
            }));
        }
        let mut others = Vec::new();
        for i in 0..CONSUMERS {
            let (b, r, s) = (bootstrap.to_string(), Arc::clone(rec), Arc::clone(&stop));
            others.push(std::thread::spawn(move || consume_loop(&b, &r, &s, i)));
        }
        let (b, r, s) = (bootstrap.to_string(), Arc::clone(rec), Arc::clone(&stop));
        others.push(std::thread::spawn(move || watch_loop(&b, &r, &s)));
        Workload {
            stop,
            producers,
            others,
        }
    }

    /// Stops every thread; producers flush (bounded) so in-flight sends complete.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first_err = None;
        for h in self.producers.into_iter().chain(self.others) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a workload thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn produce_loop(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    stop: &AtomicBool,
    index: usize,
    seed: u64,
    rate: u32,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut session = 0u32;
    let mut process = format!("p{index}.{session}");
    let mut p = producer(bootstrap, rec, &process, F::Send)?;
    let pace = Duration::from_micros(1_000_000 / u64::from(rate.max(1)));
    let mut seq = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) && !rec.overflowed() {
        if let Some((code, why)) = p.client().fatal_error() {
            // A fatal idempotence error ends the session: its unfinished sends are purged
            // (reported as info) and a new producer (new producer id) takes over.
            rec.record(
                Event::new(Kind::Info, F::Send, &process, rec.next_op())
                    .error(Some(code as i32), format!("fatal: {why}")),
            );
            drop(p);
            session += 1;
            process = format!("p{index}.{session}");
            p = producer(bootstrap, rec, &process, F::Send)?;
        }
        let partition = rng.i32(0..PARTITIONS);
        let value = format!("{process}-{seq}");
        seq += 1;
        let op = rec.next_op();
        rec.record(
            Event::new(Kind::Invoke, F::Send, &process, op)
                .value(&value)
                .partition(partition),
        );
        let o = Box::new(SendOpaque {
            op,
            value: value.clone(),
            partition,
        });
        if let Err((e, _)) = p.send(
            BaseRecord::<(), [u8], _>::with_opaque_to(TOPIC, o)
                .partition(partition)
                .payload(value.as_bytes()),
        ) {
            // Refused locally (e.g. queue full): never sent.
            rec.record(
                Event::new(Kind::Fail, F::Send, &process, op)
                    .value(&value)
                    .partition(partition)
                    .error(None, format!("not enqueued: {e}")),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        next += pace;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now;
        }
    }
    // Bounded flush: anything still unanswered is purged on drop and reported as info.
    let _ = p.flush(Duration::from_secs(20));
    drop(p);
    Ok(())
}

fn consume_loop(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    stop: &AtomicBool,
    index: usize,
) -> anyhow::Result<()> {
    let process = format!("c{index}");
    let c = consumer(bootstrap, &format!("chaos-{index}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    while !stop.load(Ordering::SeqCst) && !rec.overflowed() {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v = m
                .payload()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            rec.record(
                Event::new(Kind::Ok, F::Poll, &process, rec.next_op())
                    .value(&v)
                    .partition(m.partition())
                    .offset(m.offset()),
            );
        }
    }
    Ok(())
}

fn watch_loop(bootstrap: &str, rec: &Arc<Recorder>, stop: &AtomicBool) -> anyhow::Result<()> {
    let c = consumer(bootstrap, "chaos-watch")?;
    while !stop.load(Ordering::SeqCst) && !rec.overflowed() {
        for p in 0..PARTITIONS {
            let op = rec.next_op();
            if let Ok((low, high)) = c.fetch_watermarks(TOPIC, p, Duration::from_secs(1)) {
                let mut e = Event::new(Kind::Ok, F::Watermarks, "w0", op).partition(p);
                e.low = Some(low);
                e.high = Some(high);
                rec.record(e);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Liveness: a fresh producer must get one value per partition acknowledged within the
/// deadline. Returns the time it took.
pub fn probe(bootstrap: &str, rec: &Arc<Recorder>, deadline: Duration) -> anyhow::Result<Duration> {
    probe_tagged(bootstrap, rec, deadline, "probe")
}

/// [`probe`] with the values and process named `tag` (unique per call). A send that fails
/// (e.g. its message times out while a partition has no serving leader) is sent again, with a
/// new value, until every partition has an acknowledged one or the deadline passes: draining
/// the queue is not enough, the acknowledgement is the evidence.
pub fn probe_tagged(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    deadline: Duration,
    tag: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let p = producer_with(
        bootstrap,
        rec,
        tag,
        F::Probe,
        5000,
        Some(Arc::clone(&acked)),
    )?;
    // Bounded: every attempt ends by the message timeout, and the deadline ends the loop.
    let mut attempt = 0u32;
    loop {
        let missing: Vec<i32> = {
            let a = acked.lock().map_err(|_| anyhow!("probe lock poisoned"))?;
            (0..PARTITIONS).filter(|p| !a.contains(p)).collect()
        };
        if missing.is_empty() {
            return Ok(t.elapsed());
        }
        let left = deadline.saturating_sub(t.elapsed());
        if left.is_zero() {
            bail!("partitions {missing:?} had no acknowledged produce within {deadline:?} ({attempt} attempts)");
        }
        probe_send(&p, rec, tag, attempt, &missing)?;
        attempt += 1;
        let _ = p.flush(left);
    }
}

fn probe_send(
    p: &ThreadedProducer<ProdCtx>,
    rec: &Arc<Recorder>,
    process: &str,
    attempt: u32,
    partitions: &[i32],
) -> anyhow::Result<()> {
    for &partition in partitions {
        let op = rec.next_op();
        let value = format!("{process}-{attempt}-{partition}");
        rec.record(
            Event::new(Kind::Invoke, F::Probe, process, op)
                .value(&value)
                .partition(partition),
        );
        let o = Box::new(SendOpaque {
            op,
            value: value.clone(),
            partition,
        });
        if let Err((e, _)) = p.send(
            BaseRecord::<(), [u8], _>::with_opaque_to(TOPIC, o)
                .partition(partition)
                .payload(value.as_bytes()),
        ) {
            bail!("probe not enqueued: {e}");
        }
    }
    Ok(())
}

/// Result of the final read.
pub struct FinalRead {
    /// partition -> (log start, high watermark) at the start of the read.
    pub bounds: BTreeMap<i32, (i64, i64)>,
    /// partition -> next offset reached.
    pub reached: BTreeMap<i32, i64>,
}

/// A fresh consumer reads every partition from log start to the high watermark (recorded
/// as final-read events). The caller fails the run unless every partition was covered.
pub fn final_read(
    bootstrap: &str,
    rec: &Arc<Recorder>,
    deadline: Duration,
) -> anyhow::Result<FinalRead> {
    let t = Instant::now();
    let c = consumer(bootstrap, "chaos-final")?;
    let mut bounds = BTreeMap::new();
    for p in 0..PARTITIONS {
        loop {
            match c.fetch_watermarks(TOPIC, p, Duration::from_secs(2)) {
                Ok(b) => {
                    bounds.insert(p, b);
                    break;
                }
                Err(e) if t.elapsed() > deadline => bail!("watermarks of partition {p}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    let mut reached = BTreeMap::new();
    for (&p, &(low, _)) in &bounds {
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(low))?;
        reached.insert(p, low);
    }
    c.assign(&tpl)?;
    let done = |reached: &BTreeMap<i32, i64>| {
        bounds
            .iter()
            .all(|(p, (_, high))| reached.get(p).copied().unwrap_or(0) >= *high)
    };
    while !done(&reached) && t.elapsed() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v = m
                .payload()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            rec.record(
                Event::new(Kind::Ok, F::FinalRead, "final", rec.next_op())
                    .value(&v)
                    .partition(m.partition())
                    .offset(m.offset()),
            );
            let r = reached.entry(m.partition()).or_insert(0);
            *r = (*r).max(m.offset() + 1);
        }
    }
    Ok(FinalRead { bounds, reached })
}
