//! The consume-transform-produce copier (`--copy`, implies `--txn`): the second stage of an
//! exactly-once pipeline. One librdkafka consumer reads the transactional workload's topic
//! (`chaos-txn`) with `read_committed`, `assign()`ed to every partition, its positions kept in
//! the group `chaos-copy`; one transactional producer (`transactional.id=chaos-copy`) copies
//! each value to the same partition of `chaos-copy`. Each transaction mixes polls, sends and
//! the offset commit (`send_offsets_to_transaction`, TxnOffsetCommit), then commits, or
//! aborts on purpose one time in five. After any abort the copier rewinds to the group's
//! committed offsets as read back from the coordinator, as an application restoring its
//! state would; after an error whose outcome it cannot know it starts a new instance (which
//! fences the old one and aborts what it left open).
//!
//! After healing, the copier drains its input to the end and the checker reads both topics
//! with `read_committed` and the group's committed offsets, and verifies exactly-once:
//!
//! - every committed input value below the committed offset is copied exactly once
//!   (`copy-lost`, `copy-duplicate`), in input order (`copy-order`), with the value it had
//!   (`copy-mismatch`);
//! - nothing at or above the committed offset is copied: output and offsets commit together
//!   (`copy-beyond-offsets`), and nothing the input's `read_committed` view does not hold
//!   (`copy-aborted-read`: an aborted or phantom input value went through);
//! - each copier transaction is visible whole or not at all, and as acknowledged
//!   (`copy-torn`, `copy-committed-lost`, `copy-aborted-visible`);
//! - after an acknowledged abort, the coordinator gives back the offsets of the last
//!   acknowledged commit (`copy-offsets-after-abort`);
//! - the copier reaches the end of its input within the deadline (`copy-incomplete`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::checker::Anomaly;
use crate::txn::{Outcome, TxnCtx};

pub const TOPIC: &str = "chaos-copy";
pub const GROUP: &str = "chaos-copy";
const INPUT: &str = crate::txn::TOPIC;
const PARTITIONS: i32 = crate::txn::PARTITIONS;
/// Bound on copier transactions remembered.
const MAX_TXNS: usize = 100_000;
/// Bound on values copied in one transaction.
const MAX_PER_TXN: usize = 16;

/// One input value copied by a transaction: (input partition, input offset, value).
pub type Input = (i32, i64, String);

#[derive(Debug, Default)]
pub struct CopyLedger {
    /// copier transaction key ("<instance>-<n>") -> (inputs copied, outcome).
    pub txns: BTreeMap<String, (Vec<Input>, Outcome)>,
    pub errors: BTreeMap<String, usize>,
    pub instances: usize,
    /// Coordinator answers after an acknowledged abort that differ from the last
    /// acknowledged commit of the same instance.
    pub offsets_after_abort: Vec<String>,
    /// Whether the drain reached the input's end, and how long it took.
    pub drained: Option<Result<Duration, String>>,
}

pub struct Copier {
    stop: Arc<AtomicBool>,
    /// The input's end per partition, once the transactional workload stopped: the copier
    /// then drains to it and exits.
    target: Arc<Mutex<Option<BTreeMap<i32, i64>>>>,
    thread: JoinHandle<anyhow::Result<()>>,
    ledger: Arc<Mutex<CopyLedger>>,
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

fn note(l: &Mutex<CopyLedger>, e: &rdkafka::error::KafkaError) {
    let key = match e.rdkafka_error_code() {
        Some(c) => format!("{c:?}"),
        None => e.to_string(),
    };
    *lock(l).errors.entry(key).or_default() += 1;
}

/// The copy of an input value: `cp <copier txn> <partition>:<offset> <input value>`.
fn copy_value(key: &str, p: i32, o: i64, v: &str) -> String {
    format!("cp {key} {p}:{o} {v}")
}

/// Parses [`copy_value`]: (copier txn, input partition, input offset, input value).
pub fn parse_copy(v: &str) -> Option<(&str, i32, i64, &str)> {
    let mut it = v.splitn(4, ' ');
    if it.next()? != "cp" {
        return None;
    }
    let key = it.next()?;
    let (p, o) = it.next()?.split_once(':')?;
    Some((key, p.parse().ok()?, o.parse().ok()?, it.next()?))
}

type CopyProducer = crate::txn::TxnProducer;

fn producer(bootstrap: &str) -> anyhow::Result<CopyProducer> {
    Ok(
        crate::workload::with_socket_timeout(&mut ClientConfig::new())
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", "chaos-copy")
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", "2")
            .set("request.timeout.ms", "5000")
            .set("message.timeout.ms", "9000")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "500")
            .set("log_level", "3")
            .create_with_context(TxnCtx)?,
    )
}

fn consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(
        crate::workload::with_socket_timeout(&mut ClientConfig::new())
            .set("bootstrap.servers", bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "500")
            .set("log_level", "3")
            .create()?,
    )
}

/// The group's committed offsets as the coordinator gives them (0 where none).
fn committed(c: &BaseConsumer) -> rdkafka::error::KafkaResult<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(INPUT, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for e in got.elements() {
        let o = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        out.insert(e.partition(), o);
    }
    Ok(out)
}

fn assign_at(c: &BaseConsumer, pos: &BTreeMap<i32, i64>) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in pos {
        tpl.add_partition_offset(INPUT, p, Offset::Offset(o))?;
    }
    c.assign(&tpl)
}

fn txn_requires_abort(e: &rdkafka::error::KafkaError) -> bool {
    match e {
        rdkafka::error::KafkaError::Transaction(r) => r.txn_requires_abort(),
        _ => false,
    }
}

impl Copier {
    pub fn start(bootstrap: &str, seed: u64) -> Copier {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(None));
        let ledger = Arc::new(Mutex::new(CopyLedger::default()));
        let (b, s, t, l) = (
            bootstrap.to_string(),
            Arc::clone(&stop),
            Arc::clone(&target),
            Arc::clone(&ledger),
        );
        let thread = std::thread::spawn(move || run(&b, &s, &t, &l, seed));
        Copier {
            stop,
            target,
            thread,
            ledger,
        }
    }

    /// Lets the copier drain its input to `ends` (bounded by `deadline`), then stops it.
    pub fn drain_and_stop(
        self,
        ends: BTreeMap<i32, i64>,
        deadline: Duration,
    ) -> anyhow::Result<CopyLedger> {
        let t = Instant::now();
        *lock(&self.target) = Some(ends);
        while !self.thread.is_finished() && t.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.thread.is_finished() {
            lock(&self.ledger).drained = Some(Err(format!(
                "the copier did not reach the end of its input within {deadline:?}"
            )));
        }
        self.stop.store(true, Ordering::SeqCst);
        let r = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the copier panicked"))?;
        let ledger = std::mem::take(&mut *lock(&self.ledger));
        r.map(|()| ledger)
    }
}

/// One copier instance: its producer, its consumer, and the offsets of its last
/// acknowledged commit (an instance whose outcome is unknown is dropped).
struct Instance {
    id: usize,
    producer: CopyProducer,
    consumer: BaseConsumer,
    acked: BTreeMap<i32, i64>,
}

fn run(
    bootstrap: &str,
    stop: &AtomicBool,
    target: &Mutex<Option<BTreeMap<i32, i64>>>,
    l: &Mutex<CopyLedger>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x636f_7079);
    let timeout = Duration::from_secs(20);
    let mut current: Option<Instance> = None;
    let mut instances = 0usize;
    let mut n = 0u64;
    let mut drain_started: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let drain = lock(target).clone();
        if drain.is_some() && drain_started.is_none() {
            drain_started = Some(Instant::now());
        }
        if lock(l).txns.len() >= MAX_TXNS {
            break;
        }
        let mut inst = match current.take() {
            Some(i) => i,
            None => {
                instances += 1;
                lock(l).instances = instances;
                let producer = producer(bootstrap)?;
                if let Err(e) = producer.init_transactions(timeout) {
                    note(l, &e);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                // After init_transactions whatever an earlier instance left open is
                // decided, so the committed offsets are final.
                let consumer = consumer(bootstrap)?;
                let pos = match committed(&consumer) {
                    Ok(p) => p,
                    Err(e) => {
                        note(l, &e);
                        continue;
                    }
                };
                assign_at(&consumer, &pos)?;
                Instance {
                    id: instances,
                    producer,
                    consumer,
                    acked: pos,
                }
            }
        };
        let base = inst.acked.clone();
        // Drained: every partition committed up to the input's end.
        if let Some(ends) = &drain {
            if ends
                .iter()
                .all(|(p, e)| base.get(p).copied().unwrap_or(0) >= *e)
            {
                let d = drain_started.map(|t| t.elapsed()).unwrap_or_default();
                lock(l).drained = Some(Ok(d));
                break;
            }
        }
        if let Err(e) = inst.producer.begin_transaction() {
            note(l, &e);
            continue; // new instance
        }
        n += 1;
        let key = format!("{}-{n}", inst.id);
        let want = rng.usize(1..=MAX_PER_TXN);
        let mut inputs: Vec<Input> = Vec::new();
        let mut pos = base.clone();
        let window = Instant::now();
        let mut send_failed = false;
        while inputs.len() < want && window.elapsed() < Duration::from_millis(300) {
            let Some(Ok(m)) = inst.consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let v = m
                .payload()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let (p, o) = (m.partition(), m.offset());
            let out = copy_value(&key, p, o, &v);
            if !crate::txn::send_bounded(&inst.producer, TOPIC, p, &out, |e| note(l, e)) {
                send_failed = true;
            }
            inputs.push((p, o, v));
            pos.insert(p, o + 1);
            if send_failed {
                break;
            }
        }
        // The position also moves past markers and aborted batches the consumer skipped;
        // only where nothing fetched is still unread (position == next offset to return).
        if let Ok(tpl) = inst.consumer.position() {
            for e in tpl.elements() {
                if let (Offset::Offset(o), Some(cur)) = (e.offset(), pos.get(&e.partition())) {
                    if o > *cur {
                        pos.insert(e.partition(), o);
                    }
                }
            }
        }
        if inputs.is_empty() && pos == base {
            // Nothing to do: close the empty transaction (no request is sent for it).
            if let Err(e) = inst.producer.abort_transaction(timeout) {
                note(l, &e);
                continue;
            }
            current = Some(inst);
            continue;
        }
        lock(l)
            .txns
            .insert(key.clone(), (inputs.clone(), Outcome::Unknown));
        let abort = send_failed || (drain.is_none() && rng.u32(0..5) == 0);
        let mut offsets_failed = false;
        if !send_failed {
            let mut tpl = TopicPartitionList::new();
            for (&p, &o) in &pos {
                tpl.add_partition_offset(INPUT, p, Offset::Offset(o))?;
            }
            let sent = match inst.consumer.group_metadata() {
                Some(g) => inst.producer.send_offsets_to_transaction(&tpl, &g, timeout),
                None => Err(rdkafka::error::KafkaError::Subscription(
                    "no group metadata".into(),
                )),
            };
            if let Err(e) = sent {
                note(l, &e);
                if !txn_requires_abort(&e) {
                    continue; // outcome unknown: new instance
                }
                offsets_failed = true;
            }
        }
        let outcome = if abort || offsets_failed {
            if abort && !send_failed {
                // Deliver first, so the aborted copies are in the log and the abort is
                // what hides them.
                crate::txn::await_deliveries(&inst.producer, timeout);
                if let Err(e) = inst.producer.flush(timeout) {
                    note(l, &e);
                }
            }
            match inst.producer.abort_transaction(timeout) {
                Ok(()) => Outcome::Aborted,
                Err(e) => {
                    note(l, &e);
                    continue; // unknown: new instance
                }
            }
        } else {
            crate::txn::await_deliveries(&inst.producer, timeout);
            match inst.producer.commit_transaction(timeout) {
                Ok(()) => Outcome::Committed,
                Err(e) if txn_requires_abort(&e) => {
                    note(l, &e);
                    match inst.producer.abort_transaction(timeout) {
                        Ok(()) => Outcome::Aborted,
                        Err(e2) => {
                            note(l, &e2);
                            continue;
                        }
                    }
                }
                Err(e) => {
                    note(l, &e);
                    continue;
                }
            }
        };
        lock(l).txns.insert(key.clone(), (inputs, outcome));
        match outcome {
            Outcome::Committed => inst.acked = pos,
            _ => {
                // Rewind to what the coordinator says was committed, as an application
                // restoring its state after an abort does.
                match committed(&inst.consumer) {
                    Ok(got) => {
                        if got != base {
                            let mut g = lock(l);
                            if g.offsets_after_abort.len() < 100 {
                                g.offsets_after_abort.push(format!(
                                    "after aborting {key}: the coordinator gave {got:?}, the last acknowledged commit was {base:?}"
                                ));
                            }
                        }
                        if assign_at(&inst.consumer, &got).is_err() {
                            continue;
                        }
                        inst.acked = got;
                    }
                    Err(e) => {
                        note(l, &e);
                        continue;
                    }
                }
            }
        }
        current = Some(inst);
    }
    if let Some(i) = current {
        i.producer.flush(Duration::from_secs(5)).ok();
    }
    Ok(())
}

/// Counts for the report: (committed, aborted, unknown) copier transactions.
fn summary(ledger: &CopyLedger) -> (usize, usize, usize, usize) {
    let mut s = (0, 0, 0, 0);
    for (inputs, o) in ledger.txns.values() {
        match o {
            Outcome::Committed => {
                s.0 += 1;
                s.3 += inputs.len();
            }
            Outcome::Aborted => s.1 += 1,
            Outcome::Unknown => s.2 += 1,
        }
    }
    s
}

fn anomaly(class: &'static str, what: String) -> Anomaly {
    Anomaly {
        class,
        what,
        ops: Vec::new(),
        at_us: None,
    }
}

/// The exactly-once checks. `input` is the input topic's `read_committed` view
/// (partition, offset, value) and `output` the copy topic's, both read to the end;
/// `offsets` the group's final committed offsets.
pub fn check(
    ledger: &CopyLedger,
    input: &[Input],
    output: &[Input],
    offsets: &BTreeMap<i32, i64>,
) -> Vec<Anomaly> {
    let mut out = Vec::new();
    match &ledger.drained {
        Some(Ok(_)) => {}
        Some(Err(e)) => out.push(anomaly("copy-incomplete", e.clone())),
        None => out.push(anomaly(
            "copy-incomplete",
            "the copier stopped before reaching the end of its input".into(),
        )),
    }
    for w in &ledger.offsets_after_abort {
        out.push(anomaly("copy-offsets-after-abort", w.clone()));
    }
    let input_at: HashMap<(i32, i64), &str> = input
        .iter()
        .map(|(p, o, v)| ((*p, *o), v.as_str()))
        .collect();
    // Copies per input offset, in output order per partition.
    let mut copies: HashMap<(i32, i64), usize> = HashMap::new();
    let mut last_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut per_txn: HashMap<&str, usize> = HashMap::new();
    for (out_p, out_o, v) in output {
        let Some((key, p, o, val)) = parse_copy(v) else {
            out.push(anomaly(
                "copy-aborted-read",
                format!("{TOPIC}-{out_p}@{out_o}: {v:?} is not a copy"),
            ));
            continue;
        };
        *per_txn.entry(key).or_default() += 1;
        *copies.entry((p, o)).or_default() += 1;
        if *out_p != p {
            out.push(anomaly(
                "copy-mismatch",
                format!("{TOPIC}-{out_p}@{out_o} holds a copy of {INPUT}-{p}@{o}"),
            ));
        }
        match input_at.get(&(p, o)) {
            None => out.push(anomaly(
                "copy-aborted-read",
                format!(
                    "{TOPIC}-{out_p}@{out_o} (copier txn {key}) copies {INPUT}-{p}@{o} = {val}, which read_committed does not show"
                ),
            )),
            Some(x) if *x != val => out.push(anomaly(
                "copy-mismatch",
                format!("{TOPIC}-{out_p}@{out_o} copies {INPUT}-{p}@{o} as {val}, the input holds {x}"),
            )),
            Some(_) => {}
        }
        if o >= offsets.get(&p).copied().unwrap_or(0) {
            out.push(anomaly(
                "copy-beyond-offsets",
                format!(
                    "{TOPIC}-{out_p}@{out_o} copies {INPUT}-{p}@{o}, at or above the committed offset {}",
                    offsets.get(&p).copied().unwrap_or(0)
                ),
            ));
        }
        if let Some(prev) = last_per_partition.insert(p, o) {
            if o <= prev {
                out.push(anomaly(
                    "copy-order",
                    format!("{TOPIC}-{out_p}@{out_o} copies {INPUT}-{p}@{o} after a copy of offset {prev}"),
                ));
            }
        }
    }
    for ((p, o), n) in &copies {
        if *n > 1 {
            out.push(anomaly(
                "copy-duplicate",
                format!("{INPUT}-{p}@{o} copied {n} times"),
            ));
        }
    }
    for (p, o, v) in input {
        if *o < offsets.get(p).copied().unwrap_or(0) && !copies.contains_key(&(*p, *o)) {
            out.push(anomaly(
                "copy-lost",
                format!(
                    "{INPUT}-{p}@{o} = {v} is below the committed offset {} but was never copied",
                    offsets.get(p).copied().unwrap_or(0)
                ),
            ));
        }
    }
    for (key, (inputs, outcome)) in &ledger.txns {
        let visible = per_txn.get(key.as_str()).copied().unwrap_or(0);
        let count = inputs.len();
        let class = if visible != 0 && visible < count {
            Some("copy-torn")
        } else if *outcome == Outcome::Committed && visible == 0 && count > 0 {
            Some("copy-committed-lost")
        } else if *outcome == Outcome::Aborted && visible > 0 {
            Some("copy-aborted-visible")
        } else {
            None
        };
        if let Some(class) = class {
            out.push(anomaly(
                class,
                format!("copier transaction {key}: {visible} of {count} copies visible, outcome {outcome:?}"),
            ));
        }
    }
    out
}

/// Drains and stops the copier, reads the output and the group's offsets, and checks.
/// Returns the anomalies and the output's `read_committed` view.
pub fn finish(
    c: Copier,
    bootstrap: &str,
    input: &[Input],
    ends: BTreeMap<i32, i64>,
    notes: &mut Vec<String>,
) -> (Vec<Anomaly>, Vec<Input>) {
    let ledger = match c.drain_and_stop(ends, Duration::from_secs(60)) {
        Ok(l) => l,
        Err(e) => {
            return (
                vec![anomaly(
                    "copy-workload",
                    format!("the copier failed: {e:#}"),
                )],
                Vec::new(),
            )
        }
    };
    let (c, ab, u, copied) = summary(&ledger);
    notes.push(format!(
        "copier: {c} transactions committed ({copied} values), {ab} aborted, {u} unknown, {} instances, drained {}; client errors {:?}",
        ledger.instances,
        match &ledger.drained {
            Some(Ok(d)) => format!("in {} ms", d.as_millis()),
            _ => "NO".to_string(),
        },
        ledger.errors
    ));
    let (output, _, mut out) =
        match crate::txn::read_committed_all(bootstrap, TOPIC, Duration::from_secs(60)) {
            Ok(r) => r,
            Err(e) => {
                return (
                    vec![anomaly("copy-final-read", format!("{e:#}"))],
                    Vec::new(),
                )
            }
        };
    let offsets = match consumer(bootstrap).and_then(|cons| Ok(committed(&cons)?)) {
        Ok(o) => o,
        Err(e) => {
            return (
                vec![anomaly(
                    "copy-final-read",
                    format!("the group's committed offsets: {e:#}"),
                )],
                output,
            )
        }
    };
    notes.push(format!(
        "copier: final committed offsets {offsets:?}, {} copies read back",
        output.len()
    ));
    out.extend(check(&ledger, input, &output, &offsets));
    (out, output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inp(p: i32, o: i64, v: &str) -> Input {
        (p, o, v.to_string())
    }

    #[test]
    fn exactly_once_checks() {
        let input = vec![
            inp(0, 0, "a"),
            inp(0, 1, "b"),
            inp(0, 5, "c"),
            inp(1, 0, "d"),
            inp(1, 3, "e"),
        ];
        let mut l = CopyLedger {
            drained: Some(Ok(Duration::ZERO)),
            ..CopyLedger::default()
        };
        l.txns.insert(
            "1-1".into(),
            (vec![inp(0, 0, "a"), inp(1, 0, "d")], Outcome::Committed),
        );
        l.txns
            .insert("1-2".into(), (vec![inp(0, 1, "b")], Outcome::Aborted));
        l.txns
            .insert("1-3".into(), (vec![inp(0, 1, "b")], Outcome::Committed));
        l.txns
            .insert("1-4".into(), (vec![inp(0, 5, "c")], Outcome::Committed));
        let good = vec![
            inp(0, 0, &copy_value("1-1", 0, 0, "a")),
            inp(1, 0, &copy_value("1-1", 1, 0, "d")),
            inp(0, 1, &copy_value("1-3", 0, 1, "b")),
            inp(0, 2, &copy_value("1-4", 0, 5, "c")),
        ];
        let offsets: BTreeMap<i32, i64> = [(0, 6), (1, 1)].into();
        assert!(check(&l, &input, &good, &offsets).is_empty());
        assert_eq!(parse_copy("cp 1-3 0:1 b c"), Some(("1-3", 0, 1, "b c")));

        // The aborted copy visible, a copy beyond the offsets, an input skipped.
        let mut bad = good.clone();
        bad.insert(2, inp(0, 1, &copy_value("1-2", 0, 1, "b")));
        let classes = |a: Vec<Anomaly>| {
            let mut c: Vec<&str> = a.iter().map(|x| x.class).collect();
            c.sort_unstable();
            c.dedup();
            c
        };
        assert_eq!(
            classes(check(&l, &input, &bad, &offsets)),
            ["copy-aborted-visible", "copy-duplicate", "copy-order"]
        );
        let short: BTreeMap<i32, i64> = [(0, 2), (1, 4)].into();
        assert_eq!(
            classes(check(&l, &input, &good, &short)),
            ["copy-beyond-offsets", "copy-lost"]
        );
        let mut phantom = good.clone();
        phantom.push(inp(1, 1, &copy_value("9-9", 1, 2, "zz")));
        assert_eq!(
            classes(check(&l, &input, &phantom, &offsets)),
            ["copy-aborted-read", "copy-beyond-offsets"]
        );
    }
}
