//! The transactional workload (`--txn`): one librdkafka transactional producer writes
//! transactions of 1..8 unique values over the partitions of its own topic, committing most
//! and aborting some, while the nemesis injects faults. After healing, a `read_committed`
//! reader checks what Jepsen checks of Kafka transactions:
//!
//! - atomicity: every transaction is visible whole or not at all (`txn-torn`);
//! - a transaction whose commit was acknowledged is visible (`txn-committed-lost`);
//! - a transaction whose abort was acknowledged, or that the client was told to abort, is
//!   not visible (`txn-aborted-visible`);
//! - no value is visible twice (`txn-duplicate`);
//! - the last stable offset reaches the high watermark once producers are gone
//!   (`txn-lso-stuck`): no hanging transaction.
//!
//! A second `read_committed` reader runs during the faults and notes when it first saw each
//! transaction. It must never see a transaction before the client asked to commit it, nor one
//! that was aborted (`txn-uncommitted-read`): the final read cannot tell, since by then every
//! transaction is decided.
//!
//! Outcomes the client could not learn (a timeout, a fatal error) are "unknown": only
//! atomicity applies to them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::checker::Anomaly;

pub const TOPIC: &str = "chaos-txn";
pub const PARTITIONS: i32 = 4;
/// Bound on transactions remembered (the run is short; this only guards memory).
const MAX_TXNS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
    Unknown,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// transaction key ("<instance>-<n>") -> (values written, outcome).
    pub txns: BTreeMap<String, (usize, Outcome)>,
    pub errors: BTreeMap<String, usize>,
    /// The first client errors in full, with when they happened (ms after the start).
    pub first_errors: Vec<String>,
    pub started: Option<Instant>,
    pub instances: usize,
    /// transaction key -> when the client called `commit_transaction` for it.
    pub commit_called: HashMap<String, Instant>,
    /// transaction key -> when the concurrent `read_committed` reader first saw a value of it.
    pub first_seen: HashMap<String, Instant>,
    /// Last stable offsets sampled during the run (ListOffsets under read_committed), and
    /// every sample below an earlier one of the same partition.
    pub lso_samples: usize,
    pub lso_regressions: Vec<String>,
    /// Per committed transaction: ms from begin_transaction to the last send queued, and ms
    /// in commit_transaction (flush, EndTxn, until the coordinator answered).
    pub send_ms: Vec<u64>,
    pub commit_ms: Vec<u64>,
}

pub struct TxnWorkload {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
    reader: JoinHandle<anyhow::Result<()>>,
    lso_watch: JoinHandle<anyhow::Result<()>>,
    ledger: Arc<Mutex<Ledger>>,
}

fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Client logs go to stderr when `CHAOS_TXN_DEBUG` is set (librdkafka debug contexts).
pub(crate) struct TxnCtx;

impl rdkafka::ClientContext for TxnCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if std::env::var_os("CHAOS_TXN_DEBUG").is_some() {
            static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            let ms = T0.get_or_init(Instant::now).elapsed().as_millis();
            eprintln!("{ms:>8} rdkafka {level:?} {fac}: {log_message}");
        }
    }
}

impl rdkafka::producer::ProducerContext for TxnCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

pub(crate) type TxnProducer = ThreadedProducer<TxnCtx>;

fn producer(bootstrap: &str) -> anyhow::Result<TxnProducer> {
    let mut c = ClientConfig::new();
    if let Ok(d) = std::env::var("CHAOS_TXN_DEBUG") {
        c.set("debug", d).set("log_level", "7");
    }
    Ok(crate::workload::with_socket_timeout(&mut c)
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "chaos-txn")
        .set("transaction.timeout.ms", "10000")
        .set("linger.ms", "2")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "9000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set(
            "metadata.recovery.strategy",
            std::env::var("CHAOS_TXN_RECOVERY").unwrap_or_else(|_| "none".into()),
        )
        .create_with_context(TxnCtx)?)
}

impl TxnWorkload {
    pub fn start(bootstrap: &str, seed: u64) -> TxnWorkload {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger {
            started: Some(Instant::now()),
            ..Ledger::default()
        }));
        let (b, s, l) = (
            bootstrap.to_string(),
            Arc::clone(&stop),
            Arc::clone(&ledger),
        );
        let thread = std::thread::spawn(move || run(&b, &s, &l, seed));
        let (b, s, l) = (
            bootstrap.to_string(),
            Arc::clone(&stop),
            Arc::clone(&ledger),
        );
        let reader = std::thread::spawn(move || read_loop(&b, &s, &l));
        let (b, s, l) = (
            bootstrap.to_string(),
            Arc::clone(&stop),
            Arc::clone(&ledger),
        );
        let lso_watch = std::thread::spawn(move || lso_loop(&b, &s, &l));
        TxnWorkload {
            stop,
            thread,
            reader,
            lso_watch,
            ledger,
        }
    }

    pub fn stop(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        let r = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("transactional workload panicked"))?;
        let r2 = self
            .reader
            .join()
            .map_err(|_| anyhow::anyhow!("transactional reader panicked"))?;
        let r3 = self
            .lso_watch
            .join()
            .map_err(|_| anyhow::anyhow!("last stable offset watcher panicked"))?;
        let r = r.and(r2).and(r3);
        let ledger = std::mem::take(&mut *lock(&self.ledger));
        r.map(|()| ledger)
    }
}

fn note(l: &Mutex<Ledger>, e: &rdkafka::error::KafkaError) {
    let key = match e.rdkafka_error_code() {
        Some(c) => format!("{c:?}"),
        None => e.to_string(),
    };
    let mut g = lock(l);
    *g.errors.entry(key).or_default() += 1;
    if g.first_errors.len() < 10 {
        let at = g.started.map(|t| t.elapsed().as_millis()).unwrap_or(0);
        g.first_errors.push(format!("{at} ms: {e}"));
    }
}

fn run(bootstrap: &str, stop: &AtomicBool, l: &Mutex<Ledger>, seed: u64) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x7478_6e00);
    let mut current: Option<(TxnProducer, usize)> = None;
    let mut instance = 0usize;
    let mut n = 0u64;
    let timeout = Duration::from_secs(20);
    while !stop.load(Ordering::SeqCst) {
        if lock(l).txns.len() >= MAX_TXNS {
            break;
        }
        let (p, inst) = match current.take() {
            Some(x) => x,
            None => {
                instance += 1;
                lock(l).instances = instance;
                let p = producer(bootstrap)?;
                if let Err(e) = p.init_transactions(timeout) {
                    note(l, &e);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                (p, instance)
            }
        };
        n += 1;
        let key = format!("{inst}-{n}");
        let count = rng.usize(1..=8);
        let abort = rng.u32(0..5) == 0;
        let began = Instant::now();
        if let Err(e) = p.begin_transaction() {
            note(l, &e);
            continue; // new instance
        }
        lock(l).txns.insert(key.clone(), (count, Outcome::Unknown));
        let mut send_failed = false;
        for i in 0..count {
            let value = format!("{key}-{i}-of-{count}");
            let part = ((n as usize + i) % PARTITIONS as usize) as i32;
            if !send_bounded(&p, TOPIC, part, &value, |e| note(l, e)) {
                send_failed = true;
            }
        }
        let outcome = if abort || send_failed {
            // Deliver first, so the aborted data is in the log (abort alone would purge
            // what is still queued) and the abort is what hides it.
            if abort {
                await_deliveries(&p, timeout);
                if let Err(e) = p.flush(timeout) {
                    note(l, &e);
                }
            }
            match p.abort_transaction(timeout) {
                Ok(()) => Outcome::Aborted,
                Err(e) => {
                    note(l, &e);
                    // Nothing was committed by us; a new instance aborts what is open.
                    lock(l).txns.insert(key, (count, Outcome::Unknown));
                    continue;
                }
            }
        } else {
            let asked = Instant::now();
            lock(l).commit_called.insert(key.clone(), asked);
            await_deliveries(&p, timeout);
            match p.commit_transaction(timeout) {
                Ok(()) => {
                    let mut g = lock(l);
                    g.send_ms
                        .push(asked.duration_since(began).as_millis() as u64);
                    g.commit_ms.push(asked.elapsed().as_millis() as u64);
                    Outcome::Committed
                }
                Err(e) if e.rdkafka_error_code().is_some() && txn_requires_abort(&e) => {
                    note(l, &e);
                    match p.abort_transaction(timeout) {
                        Ok(()) => Outcome::Aborted,
                        Err(e2) => {
                            note(l, &e2);
                            lock(l).txns.insert(key, (count, Outcome::Unknown));
                            continue;
                        }
                    }
                }
                Err(e) => {
                    // Timed out or fatal: the outcome is unknown; start a new instance
                    // (which fences this one and aborts whatever it left open).
                    note(l, &e);
                    lock(l).txns.insert(key, (count, Outcome::Unknown));
                    continue;
                }
            }
        };
        lock(l).txns.insert(key, (count, outcome));
        current = Some((p, inst));
    }
    if let Some((p, _)) = current {
        // Leave nothing open: close the producer (no transaction is open between loops).
        p.flush(Duration::from_secs(5)).ok();
    }
    Ok(())
}

/// Queues one value, retrying while the local queue is full (the producer's polling thread
/// drains it): at most 100 tries 10 ms apart. Every refusal goes to `on_error`; false when
/// the value was never queued.
pub(crate) fn send_bounded(
    p: &TxnProducer,
    topic: &str,
    partition: i32,
    value: &str,
    mut on_error: impl FnMut(&rdkafka::error::KafkaError),
) -> bool {
    for tries in 0..=100 {
        match p.send(
            BaseRecord::<(), str>::to(topic)
                .partition(partition)
                .payload(value),
        ) {
            Ok(()) => return true,
            Err((e, _)) => {
                on_error(&e);
                if tries == 100 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    false
}

/// Waits (bounded) until every queued message of `p` was delivered or failed. rust-rdkafka's
/// `flush` (and `commit_transaction`, which flushes first) polls in whole 100 ms slices while
/// anything is in flight, so every transaction took at least 100 ms, and 300 ms in a
/// replicated cluster; the producer's polling thread serves delivery reports as they arrive,
/// so waiting for the in-flight count to reach zero first leaves `flush` nothing to wait for.
pub(crate) fn await_deliveries<P: Producer<TxnCtx>>(p: &P, timeout: Duration) {
    let t = Instant::now();
    while p.in_flight_count() > 0 && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn txn_requires_abort(e: &rdkafka::error::KafkaError) -> bool {
    match e {
        rdkafka::error::KafkaError::Transaction(r) => r.txn_requires_abort(),
        _ => false,
    }
}

/// The transaction key of a value (`<instance>-<n>-<i>-of-<count>` -> `<instance>-<n>`).
fn txn_key(v: &str) -> Option<&str> {
    v.rsplit_once('-')
        .and_then(|(a, _)| a.rsplit_once('-'))
        .and_then(|(a, _)| a.rsplit_once('-'))
        .map(|(k, _)| k)
}

/// The concurrent `read_committed` reader: notes when it first saw each transaction.
fn read_loop(bootstrap: &str, stop: &AtomicBool, l: &Mutex<Ledger>) -> anyhow::Result<()> {
    let c = reader_named(bootstrap, "read_committed", "chaos-txn-live")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    while !stop.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let now = Instant::now();
            let v = m
                .payload()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if let Some(k) = txn_key(&v) {
                let mut g = lock(l);
                if g.first_seen.len() < MAX_TXNS {
                    g.first_seen.entry(k.to_string()).or_insert(now);
                }
            }
        }
    }
    Ok(())
}

/// Samples each partition's last stable offset (ListOffsets LATEST under `read_committed`)
/// every 200 ms and notes every answer below an earlier answer for the same partition: the
/// last stable offset must never go backwards (reliability.md 7), across leader changes and
/// restarts too. Errors (no leader, timeouts) are skipped: only answers are compared.
fn lso_loop(bootstrap: &str, stop: &AtomicBool, l: &Mutex<Ledger>) -> anyhow::Result<()> {
    let c = reader_named(bootstrap, "read_committed", "chaos-txn-lso")?;
    let mut max: BTreeMap<i32, i64> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        for p in 0..PARTITIONS {
            if let Ok((_, lso)) = c.fetch_watermarks(TOPIC, p, Duration::from_secs(1)) {
                let mut g = lock(l);
                g.lso_samples += 1;
                let m = max.entry(p).or_insert(lso);
                if lso < *m {
                    if g.lso_regressions.len() < 100 {
                        g.lso_regressions.push(format!(
                            "{TOPIC}-{p}: last stable offset {lso} after {} was answered",
                            *m
                        ));
                    }
                } else {
                    *m = lso;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What the concurrent reader saw that `read_committed` must hide: a transaction seen before
/// its commit was asked for (or never asked for), or one that ended aborted.
pub fn check_live(ledger: &Ledger) -> Vec<Anomaly> {
    let mut out: Vec<Anomaly> = ledger
        .lso_regressions
        .iter()
        .map(|w| Anomaly {
            class: "lso-regressed",
            what: w.clone(),
            ops: Vec::new(),
            at_us: None,
        })
        .collect();
    for (key, seen) in &ledger.first_seen {
        let Some((count, outcome)) = ledger.txns.get(key) else {
            continue;
        };
        let why = match (outcome, ledger.commit_called.get(key)) {
            (Outcome::Aborted, _) => "it was aborted".to_string(),
            (_, None) => "its commit was never asked for".to_string(),
            (_, Some(c)) if seen < c => format!(
                "{} ms before the client asked to commit it",
                c.duration_since(*seen).as_millis()
            ),
            _ => continue,
        };
        out.push(Anomaly {
            class: "txn-uncommitted-read",
            what: format!(
                "transaction {key} ({count} values, outcome {outcome:?}) seen by the concurrent read_committed reader, but {why}"
            ),
            ops: Vec::new(),
            at_us: None,
        });
    }
    out.sort_by(|a, b| a.what.cmp(&b.what));
    out
}

fn reader(bootstrap: &str, isolation: &str) -> anyhow::Result<BaseConsumer> {
    reader_named(
        bootstrap,
        isolation,
        &format!("chaos-txn-final-{isolation}"),
    )
}

fn reader_named(bootstrap: &str, isolation: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3")
        .create()?)
}

/// A topic read to its end with `read_committed`: the values (partition, offset, value), the
/// end per partition, and the `txn-lso-stuck` anomalies met on the way.
pub type CommittedView = (Vec<crate::copy::Input>, BTreeMap<i32, i64>, Vec<Anomaly>);

/// Reads `topic` (every partition of [`PARTITIONS`]) with `read_committed` from its log
/// start to its end, after waiting (bounded) for each partition's last stable offset to reach
/// its high watermark. Returns the values read (partition, offset, value), the end read to
/// per partition, and a `txn-lso-stuck` anomaly for each partition whose last stable offset
/// stayed below its high watermark.
pub fn read_committed_all(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
) -> anyhow::Result<CommittedView> {
    let t = Instant::now();
    let committed = reader(bootstrap, "read_committed")?;
    let uncommitted = reader(bootstrap, "read_uncommitted")?;
    let mut anomalies = Vec::new();
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        loop {
            let lso = committed.fetch_watermarks(topic, p, Duration::from_secs(2));
            let hw = uncommitted.fetch_watermarks(topic, p, Duration::from_secs(2));
            match (lso, hw) {
                (Ok((lo, lso)), Ok((_, hw))) if lso == hw => {
                    ends.insert(p, (lo, lso));
                    break;
                }
                (Ok((lo, lso)), Ok((_, hw))) if t.elapsed() > deadline / 2 => {
                    anomalies.push(Anomaly {
                        class: "txn-lso-stuck",
                        what: format!(
                            "{topic}-{p}: last stable offset {lso} below the high watermark {hw} after healing"
                        ),
                        ops: Vec::new(),
                        at_us: None,
                    });
                    ends.insert(p, (lo, lso));
                    break;
                }
                (Err(e), _) | (_, Err(e)) if t.elapsed() > deadline / 2 => {
                    bail!("watermarks of {topic}-{p}: {e}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    let mut reached: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &(lo, _)) in &ends {
        tpl.add_partition_offset(topic, p, Offset::Offset(lo))?;
        reached.insert(p, lo);
    }
    committed.assign(&tpl)?;
    let mut values = Vec::new();
    let done = |r: &BTreeMap<i32, i64>| {
        ends.iter()
            .all(|(p, (_, end))| r.get(p).copied().unwrap_or(0) >= *end)
    };
    // read_committed skips aborted records and markers: position, not offsets, tells
    // whether the end was reached.
    while !done(&reached) && t.elapsed() < deadline {
        match committed.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v = m
                    .payload()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                values.push((m.partition(), m.offset(), v));
                reached.insert(m.partition(), m.offset() + 1);
            }
            _ => {
                if let Ok(pos) = committed.position() {
                    for e in pos.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let r = reached.entry(e.partition()).or_insert(0);
                            *r = (*r).max(o);
                        }
                    }
                }
            }
        }
    }
    if !done(&reached) {
        bail!("the read_committed final read did not reach the end of {topic} ({reached:?} of {ends:?})");
    }
    let ends = ends.into_iter().map(|(p, (_, e))| (p, e)).collect();
    Ok((values, ends, anomalies))
}

/// The transactional checks on the final `read_committed` view of [`TOPIC`].
pub fn check(ledger: &Ledger, values: &[crate::copy::Input]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut per_txn: HashMap<&str, usize> = HashMap::new();
    for (_, _, v) in values {
        *seen.entry(v.as_str()).or_default() += 1;
        if let Some(txn) = txn_key(v) {
            *per_txn.entry(txn).or_default() += 1;
        }
    }
    for (v, n) in &seen {
        if *n > 1 {
            anomalies.push(Anomaly {
                class: "txn-duplicate",
                what: format!("value {v} visible {n} times"),
                ops: Vec::new(),
                at_us: None,
            });
        }
    }
    for (key, (count, outcome)) in &ledger.txns {
        let visible = per_txn.get(key.as_str()).copied().unwrap_or(0).min(*count);
        let dup_free = per_txn.get(key.as_str()).copied().unwrap_or(0);
        let class = if visible != 0 && visible != *count {
            Some("txn-torn")
        } else if *outcome == Outcome::Committed && visible == 0 {
            Some("txn-committed-lost")
        } else if *outcome == Outcome::Aborted && dup_free > 0 {
            Some("txn-aborted-visible")
        } else {
            None
        };
        if let Some(class) = class {
            anomalies.push(Anomaly {
                class,
                what: format!(
                    "transaction {key}: {visible} of {count} values visible, outcome {outcome:?}"
                ),
                ops: Vec::new(),
                at_us: None,
            });
        }
    }
    anomalies
}

/// Counts for the report: (committed, aborted, unknown) transactions.
pub fn summary(ledger: &Ledger) -> (usize, usize, usize) {
    let mut s = (0, 0, 0);
    for (_, o) in ledger.txns.values() {
        match o {
            Outcome::Committed => s.0 += 1,
            Outcome::Aborted => s.1 += 1,
            Outcome::Unknown => s.2 += 1,
        }
    }
    s
}

/// Stops the workload and checks it (single-node and cluster runs alike): the live reader's
/// anomalies, then the final `read_committed` read's; then, with `--copy`, drains the
/// copier over the final view and checks it. Summary lines go to `notes`.
pub fn finish(
    t: TxnWorkload,
    copier: Option<crate::copy::Copier>,
    bootstrap: &str,
    notes: &mut Vec<String>,
) -> Vec<Anomaly> {
    let ledger = match t.stop() {
        Ok(l) => l,
        Err(e) => {
            return vec![Anomaly {
                class: "txn-workload",
                what: format!("the transactional workload failed: {e:#}"),
                ops: Vec::new(),
                at_us: None,
            }]
        }
    };
    let (c, ab, u) = summary(&ledger);
    notes.push(format!(
        "transactions: {c} committed, {ab} aborted, {u} unknown, {} producer instances; client errors {:?}",
        ledger.instances, ledger.errors
    ));
    for e in &ledger.first_errors {
        notes.push(format!("transactional client error at {e}"));
    }
    let pct = |v: &[u64], q: f64| -> u64 {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    notes.push(format!(
        "committed transactions: begin to last send p50 {} / p99 {} ms, commit_transaction p50 {} / p99 {} / max {} ms",
        pct(&ledger.send_ms, 0.5),
        pct(&ledger.send_ms, 0.99),
        pct(&ledger.commit_ms, 0.5),
        pct(&ledger.commit_ms, 0.99),
        pct(&ledger.commit_ms, 1.0)
    ));
    notes.push(format!(
        "last stable offsets of {TOPIC} sampled {} times during the run, {} regressions",
        ledger.lso_samples,
        ledger.lso_regressions.len()
    ));
    let mut out = check_live(&ledger);
    match read_committed_all(bootstrap, TOPIC, Duration::from_secs(60)) {
        Ok((values, ends, stuck)) => {
            out.extend(stuck);
            out.extend(check(&ledger, &values));
            let copies = match copier {
                Some(c) => {
                    let (a, copies) = crate::copy::finish(c, bootstrap, &values, ends, notes);
                    out.extend(a);
                    copies
                }
                None => Vec::new(),
            };
            let g = crate::cycles::build(&values, txn_key, &copies, |v| {
                crate::copy::parse_copy(v).map(|(k, _, _, input)| (k, input))
            });
            let cycles = g.anomalies();
            notes.push(format!(
                "dependency graph (ww, wr, process order): {} transactions, {} edges, {} cycles",
                g.size().0,
                g.size().1,
                cycles.len()
            ));
            out.extend(cycles);
        }
        Err(e) => {
            if let Some(c) = copier {
                // Stop it (an empty target counts as reached).
                c.drain_and_stop(BTreeMap::new(), Duration::from_secs(30))
                    .ok();
            }
            out.push(Anomaly {
                class: "txn-final-read",
                what: format!("{e:#}"),
                ops: Vec::new(),
                at_us: None,
            })
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_reader_must_not_see_undecided_or_aborted_transactions() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(50);
        let mut l = Ledger::default();
        for (k, o) in [
            ("1-1", Outcome::Committed),
            ("1-2", Outcome::Committed),
            ("1-3", Outcome::Aborted),
            ("1-4", Outcome::Unknown),
            ("1-5", Outcome::Unknown),
        ] {
            l.txns.insert(k.into(), (2, o));
        }
        // 1-1 seen after its commit was asked for: fine. 1-2 seen before: uncommitted read.
        l.commit_called.insert("1-1".into(), t0);
        l.first_seen.insert("1-1".into(), later);
        l.commit_called.insert("1-2".into(), later);
        l.first_seen.insert("1-2".into(), t0);
        // 1-3 aborted: never visible. 1-4 never asked to commit: never visible.
        l.first_seen.insert("1-3".into(), later);
        l.first_seen.insert("1-4".into(), later);
        // 1-5 commit asked, outcome unknown, seen after: may have committed.
        l.commit_called.insert("1-5".into(), t0);
        l.first_seen.insert("1-5".into(), later);
        let a = check_live(&l);
        let keys: Vec<&str> = a
            .iter()
            .map(|x| x.what.split(' ').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(keys, ["1-2", "1-3", "1-4"], "{a:?}");
        assert!(a.iter().all(|x| x.class == "txn-uncommitted-read"));
        assert_eq!(txn_key("3-17-2-of-5"), Some("3-17"));
    }
}
