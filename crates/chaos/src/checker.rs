//! The checker: the single-node invariants of reliability.md over a recorded history.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Event, Kind, F};

/// One anomaly: its class, a description and the offending events.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub class: &'static str,
    pub what: String,
    pub ops: Vec<Event>,
    /// When the last offending event happened (for the timeline).
    pub at_us: Option<u64>,
}

/// Bound on the duplicates whose batches `dups::explain` looks up.
const MAX_EXPLAINED_DUPLICATES: usize = 200_000;

/// A produce, assembled from its invoke and completion.
#[derive(Debug, Clone)]
struct Send {
    invoke: Event,
    done: Option<Event>,
}

impl Send {
    fn outcome(&self) -> Kind {
        self.done.as_ref().map_or(Kind::Info, |d| d.kind)
    }
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    /// (f, outcome) -> count.
    pub counts: BTreeMap<String, usize>,
    pub acked: usize,
    pub acked_found: usize,
    pub info_observed: usize,
    pub info_unseen: usize,
    pub final_records: usize,
    /// Per client library of the workload's sends (`F::Send`; rdkafka or java): the
    /// report's per-library figures.
    pub by_client: BTreeMap<&'static str, ClientFigures>,
    /// Each `duplicate` anomaly's index in `anomalies`, value and places (partition, offset),
    /// for `dups::explain` (bounded).
    pub duplicates: Vec<Duplicate>,
}

/// A `duplicate` anomaly's index in [`Verdict::anomalies`], its value and its places
/// (partition, offset) in the final read.
pub type Duplicate = (usize, String, Vec<(i32, i64)>);

/// One client library's sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientFigures {
    pub sent: usize,
    pub acked: usize,
    pub lost: usize,
    /// Values at more than one offset in the final read.
    pub duplicated: usize,
    pub failed: usize,
    pub indefinite: usize,
}

impl Verdict {
    pub fn by_class(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.anomalies {
            *m.entry(a.class).or_insert(0) += 1;
        }
        m
    }
}

/// At most this many anomalies of one class keep their full detail.
const DETAIL_PER_CLASS: usize = 20;

/// Checks the history. `coverage` is the final read's (partition -> (high watermark,
/// reached)); a partition not read to its high watermark is an anomaly.
pub fn check(events: &[Event], coverage: &BTreeMap<i32, (i64, i64)>) -> Verdict {
    let mut v = Verdict::default();
    let mut classes: HashMap<&'static str, usize> = HashMap::new();
    let mut add = |v: &mut Verdict, class: &'static str, what: String, ops: Vec<Event>| {
        let n = classes.entry(class).or_insert(0);
        *n += 1;
        let at_us = ops.iter().map(|e| e.t_us).max();
        let ops = if *n <= DETAIL_PER_CLASS {
            ops
        } else {
            Vec::new()
        };
        v.anomalies.push(Anomaly {
            class,
            what,
            ops,
            at_us,
        });
    };

    // Assemble sends (including liveness probes).
    let mut sends: BTreeMap<u64, Send> = BTreeMap::new();
    for e in events {
        let key = match e.f {
            F::Send | F::Probe => e.f,
            _ => {
                let k = format!("{:?} {:?}", e.f, e.kind).to_lowercase();
                *v.counts.entry(k).or_insert(0) += 1;
                continue;
            }
        };
        let _ = key;
        if e.value.is_none() {
            // A session-level note (fatal producer error).
            *v.counts.entry("send-session fatal".into()).or_insert(0) += 1;
            continue;
        }
        match e.kind {
            Kind::Invoke => {
                sends.insert(
                    e.op,
                    Send {
                        invoke: e.clone(),
                        done: None,
                    },
                );
            }
            _ => {
                if let Some(s) = sends.get_mut(&e.op) {
                    if s.done.is_none() {
                        s.done = Some(e.clone());
                    }
                }
            }
        }
    }
    for s in sends.values() {
        let k = format!(
            "{:?} {}",
            s.invoke.f,
            match (&s.done, s.outcome()) {
                (None, _) => "info (no answer)".to_string(),
                (_, k) => format!("{k:?}"),
            }
        )
        .to_lowercase();
        *v.counts.entry(k).or_insert(0) += 1;
    }

    // Everything any reader saw: (partition, offset) -> value, and value -> offsets.
    let mut at: HashMap<(i32, i64), (String, Event)> = HashMap::new();
    let mut observed: HashSet<String> = HashSet::new();
    let mut final_at: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| matches!(e.f, F::Poll | F::FinalRead | F::GroupPoll))
    {
        let (Some(p), Some(o), Some(val)) = (e.partition, e.offset, e.value.as_ref()) else {
            continue;
        };
        observed.insert(val.clone());
        if e.f == F::FinalRead {
            v.final_records += 1;
            final_at.entry(val.clone()).or_default().push((p, o));
        }
        match at.get(&(p, o)) {
            None => {
                at.insert((p, o), (val.clone(), e.clone()));
            }
            Some((other, first)) if other != val => add(
                &mut v,
                "inconsistent-offset",
                format!("partition {p} offset {o} read as {other:?} and as {val:?}"),
                vec![first.clone(), e.clone()],
            ),
            Some(_) => {}
        }
    }

    let by_value: HashMap<&str, &Send> = sends
        .values()
        .filter_map(|s| s.invoke.value.as_deref().map(|val| (val, s)))
        .collect();

    // Duplicates: a value at more than one offset in the final read.
    for (val, places) in &final_at {
        let mut distinct = places.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 {
            if let Some(s) = by_value.get(val.as_str()).filter(|s| s.invoke.f == F::Send) {
                v.by_client
                    .entry(crate::java::client_of(&s.invoke.process))
                    .or_default()
                    .duplicated += 1;
            }
            if v.duplicates.len() < MAX_EXPLAINED_DUPLICATES {
                let index = v.anomalies.len();
                v.duplicates.push((index, val.clone(), distinct.clone()));
            }
            add(
                &mut v,
                "duplicate",
                format!("value {val:?} at {distinct:?}"),
                Vec::new(),
            );
        }
    }
    // Values read that nobody sent.
    for val in &observed {
        if !by_value.contains_key(val.as_str()) {
            add(
                &mut v,
                "phantom-read",
                format!("value {val:?} read but never sent"),
                Vec::new(),
            );
        }
    }

    for s in sends.values() {
        let Some(val) = s.invoke.value.as_deref() else {
            continue;
        };
        let found = final_at.get(val).and_then(|o| o.first().copied());
        let mut ops = vec![s.invoke.clone()];
        ops.extend(s.done.clone());
        if s.invoke.f == F::Send {
            let c = v
                .by_client
                .entry(crate::java::client_of(&s.invoke.process))
                .or_default();
            c.sent += 1;
            match s.outcome() {
                Kind::Ok if found.is_none() => {
                    c.acked += 1;
                    c.lost += 1;
                }
                Kind::Ok => c.acked += 1,
                Kind::Fail => c.failed += 1,
                Kind::Info | Kind::Invoke => c.indefinite += 1,
            }
        }
        match s.outcome() {
            Kind::Ok => {
                v.acked += 1;
                let done = s.done.as_ref();
                // librdkafka reports offset -1001 (unknown) when an ack carried no offset (e.g. a
                // retried batch confirmed by a later one): nothing to compare then.
                let acked_at = done
                    .and_then(|d| Some((d.partition?, d.offset?)))
                    .filter(|(_, o)| *o >= 0);
                match found {
                    None => {
                        let mut what = format!("acknowledged value {val:?}");
                        if let Some((p, o)) = acked_at {
                            what += &format!(" (partition {p} offset {o})");
                        }
                        what += " is missing from the final read";
                        if let Some((other, _)) = acked_at.and_then(|k| at.get(&k)) {
                            what += &format!("; its offset now holds {other:?}");
                        }
                        add(&mut v, "lost-acknowledged-write", what, ops);
                    }
                    Some(place) => {
                        v.acked_found += 1;
                        if let Some(ack) = acked_at {
                            if ack != place {
                                add(
                                    &mut v,
                                    "ack-offset-mismatch",
                                    format!(
                                        "value {val:?} acknowledged at {ack:?}, read at {place:?}"
                                    ),
                                    ops,
                                );
                            }
                        }
                    }
                }
            }
            Kind::Fail => {
                if observed.contains(val) {
                    add(
                        &mut v,
                        "definite-failure-read",
                        format!("value {val:?} failed definitely but was read"),
                        ops,
                    );
                }
            }
            Kind::Info | Kind::Invoke => {
                if observed.contains(val) {
                    v.info_observed += 1;
                    if found.is_none() {
                        add(
                            &mut v,
                            "lost-observed-write",
                            format!("value {val:?} (indefinite send) was read during the run but is missing from the final read"),
                            ops,
                        );
                    }
                } else {
                    v.info_unseen += 1;
                }
            }
        }
    }

    // Per-producer order: one session's values to one partition land in send order.
    type Placed<'a> = Vec<(u64, i64, &'a Send)>;
    let mut per: BTreeMap<(String, i32), Placed<'_>> = BTreeMap::new();
    for s in sends.values() {
        let (Some(val), Some(p)) = (s.invoke.value.as_deref(), s.invoke.partition) else {
            continue;
        };
        if let Some(&(fp, o)) = final_at.get(val).and_then(|v| v.first()) {
            if fp == p {
                per.entry((s.invoke.process.clone(), p))
                    .or_default()
                    .push((s.invoke.op, o, s));
            }
        }
    }
    for ((proc_, p), mut list) in per {
        list.sort_by_key(|x| x.0);
        for w in list.windows(2) {
            if w[1].1 <= w[0].1 {
                add(
                    &mut v,
                    "producer-order",
                    format!(
                        "{proc_} partition {p}: {:?} sent before {:?} but at offset {} >= {}",
                        w[0].2.invoke.value, w[1].2.invoke.value, w[0].1, w[1].1
                    ),
                    vec![w[0].2.invoke.clone(), w[1].2.invoke.clone()],
                );
            }
        }
    }

    // Real-time order: send(a) completed ok before send(b) was invoked (same partition)
    // => offset(a) < offset(b), with offsets from the final read.
    let mut by_part: BTreeMap<i32, Vec<(&Send, i64)>> = BTreeMap::new();
    for s in sends.values() {
        let Some(val) = s.invoke.value.as_deref() else {
            continue;
        };
        if let Some(&(p, o)) = final_at.get(val).and_then(|v| v.first()) {
            by_part.entry(p).or_default().push((s, o));
        }
    }
    for (p, list) in by_part {
        let mut completions: Vec<(u64, i64, &Send)> = list
            .iter()
            .filter(|(s, _)| s.outcome() == Kind::Ok)
            .filter_map(|(s, o)| s.done.as_ref().map(|d| (d.t_us, *o, *s)))
            .collect();
        completions.sort_by_key(|c| c.0);
        let mut invokes: Vec<(u64, i64, &Send)> =
            list.iter().map(|(s, o)| (s.invoke.t_us, *o, *s)).collect();
        invokes.sort_by_key(|c| c.0);
        let mut i = 0;
        let mut max_done: Option<(i64, &Send)> = None;
        for (t, o, s) in invokes {
            while i < completions.len() && completions[i].0 < t {
                if max_done.is_none_or(|(m, _)| completions[i].1 > m) {
                    max_done = Some((completions[i].1, completions[i].2));
                }
                i += 1;
            }
            if let Some((m, prev)) = max_done {
                if m >= o {
                    add(
                        &mut v,
                        "real-time-order",
                        format!(
                            "partition {p}: {:?} acknowledged at offset {m} before {:?} was sent, which sits at offset {o}",
                            prev.invoke.value, s.invoke.value
                        ),
                        vec![prev.invoke.clone(), s.invoke.clone()],
                    );
                }
            }
        }
    }

    // Watermarks never go backwards as seen by the client (one sequential watcher).
    let mut last: HashMap<i32, (i64, i64, Event)> = HashMap::new();
    for e in events.iter().filter(|e| e.f == F::Watermarks) {
        let (Some(p), Some(lo), Some(hi)) = (e.partition, e.low, e.high) else {
            continue;
        };
        if let Some((plo, phi, pe)) = last.get(&p) {
            if hi < *phi {
                add(
                    &mut v,
                    "high-watermark-regressed",
                    format!("partition {p}: high watermark {phi} then {hi}"),
                    vec![pe.clone(), e.clone()],
                );
            }
            if lo < *plo {
                add(
                    &mut v,
                    "log-start-regressed",
                    format!("partition {p}: log start offset {plo} then {lo}"),
                    vec![pe.clone(), e.clone()],
                );
            }
        }
        last.insert(p, (lo, hi, e.clone()));
    }

    // The final read must have covered every partition up to its high watermark.
    for (p, (hw, reached)) in coverage {
        if reached < hw {
            add(
                &mut v,
                "incomplete-final-read",
                format!("partition {p}: read up to {reached}, high watermark {hw}"),
                Vec::new(),
            );
        }
    }
    v
}

/// The consumer-group checks (`--groups`, reliability.md 13 and 21) over the history.
/// `bounds` is the final read's partition -> (log start, high watermark), taken after the
/// group stopped.
///
/// - `group-offset-regressed` (13): the watcher's committed offsets per partition never go
///   down (one sequential reader), and no read of the committed offsets (watcher or the final
///   fetch) invoked after a commit was acknowledged shows less than that commit (real-time
///   order). A committed offset that disappears counts as a regression.
/// - `group-skipped`: every offset from the log start up to the group's final committed
///   offset was delivered to some member (at-least-once).
/// - `group-commit-beyond-hw`: no committed offset (acknowledged, observed or final) above
///   the partition's final high watermark.
/// - `group-liveness` (21): the committed offsets reached the high watermarks within the
///   deadline after the producers stopped.
/// - `group-final-read`: the final fetch of the committed offsets never succeeded.
pub fn check_groups(events: &[Event], bounds: &BTreeMap<i32, (i64, i64)>) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut per_class: HashMap<&'static str, usize> = HashMap::new();
    let mut add = |class: &'static str, what: String, ops: Vec<Event>| {
        let n = per_class.entry(class).or_insert(0);
        *n += 1;
        let at_us = ops.iter().map(|e| e.t_us).max();
        out.push(Anomaly {
            class,
            what,
            ops: if *n <= DETAIL_PER_CLASS {
                ops
            } else {
                Vec::new()
            },
            at_us,
        });
    };
    let invoked: HashMap<(F, u64), u64> = events
        .iter()
        .filter(|e| e.kind == Kind::Invoke)
        .map(|e| ((e.f, e.op), e.t_us))
        .collect();
    let is_final_committed = |e: &Event| {
        e.f == F::GroupFinal && e.kind == Kind::Ok && e.value.as_deref() == Some("committed")
    };
    // Reads of the committed offsets, in history order (the watcher is one thread; the
    // final fetch comes after it stopped).
    let reads: Vec<&Event> = events
        .iter()
        .filter(|e| (e.f == F::GroupOffsets && e.kind == Kind::Ok) || is_final_committed(e))
        .collect();
    let final_committed: Option<&Event> = events.iter().rev().find(|e| is_final_committed(e));
    // Acknowledged commits: partition -> [(ok time, offset, event)], by ok time.
    let mut acked: BTreeMap<i32, Vec<(u64, i64, &Event)>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == F::GroupCommit && e.kind == Kind::Ok)
    {
        for &(p, o) in e.offsets.as_deref().unwrap_or(&[]) {
            acked.entry(p).or_default().push((e.t_us, o, e));
        }
    }
    for list in acked.values_mut() {
        list.sort_by_key(|x| x.0);
    }
    let get = |e: &Event, p: i32| -> Option<i64> {
        e.offsets
            .as_deref()
            .and_then(|v| v.iter().find(|x| x.0 == p).map(|x| x.1))
    };
    let partitions: Vec<i32> = {
        let mut ps: Vec<i32> = bounds.keys().copied().collect();
        for e in &reads {
            ps.extend(e.offsets.iter().flatten().map(|x| x.0));
        }
        ps.extend(acked.keys().copied());
        ps.sort_unstable();
        ps.dedup();
        ps
    };
    for &p in &partitions {
        // Sequential reads never go down.
        let mut prev: Option<(i64, &Event)> = None;
        for &e in &reads {
            let now = get(e, p);
            if let Some((was, pe)) = prev {
                if now.is_none_or(|n| n < was) {
                    add(
                        "group-offset-regressed",
                        format!(
                            "partition {p}: committed offset read as {was}, then as {}",
                            now.map_or("none".to_string(), |n| n.to_string())
                        ),
                        vec![pe.clone(), e.clone()],
                    );
                }
            }
            if let Some(n) = now {
                prev = Some((n, e));
            }
        }
        // Real time: a read invoked after a commit was acknowledged sees at least it.
        let list = acked.get(&p).map(Vec::as_slice).unwrap_or(&[]);
        let mut i = 0;
        let mut best: Option<(i64, &Event)> = None;
        let mut reads_by_invoke: Vec<(u64, &Event)> = reads
            .iter()
            .map(|e| (invoked.get(&(e.f, e.op)).copied().unwrap_or(e.t_us), *e))
            .collect();
        reads_by_invoke.sort_by_key(|x| x.0);
        // One anomaly per (acknowledged commit, value seen), not one per read repeating it.
        let mut reported: Option<(u64, Option<i64>)> = None;
        for (t, e) in reads_by_invoke {
            while i < list.len() && list[i].0 < t {
                if best.is_none_or(|(b, _)| list[i].1 > b) {
                    best = Some((list[i].1, list[i].2));
                }
                i += 1;
            }
            if let Some((b, ce)) = best {
                let now = get(e, p);
                if now.is_none_or(|n| n < b) && reported != Some((ce.op, now)) {
                    reported = Some((ce.op, now));
                    add(
                        "group-offset-regressed",
                        format!(
                            "partition {p}: commit of offset {b} acknowledged to {} before a read that saw {}",
                            ce.process,
                            now.map_or("none".to_string(), |n| n.to_string())
                        ),
                        vec![ce.clone(), e.clone()],
                    );
                }
            }
        }
        // Committed offsets above the final high watermark.
        if let Some(&(_, hw)) = bounds.get(&p) {
            let mut seen_beyond: Option<(i64, &Event)> = None;
            for e in reads.iter().copied().chain(list.iter().map(|x| x.2)) {
                if let Some(o) = get(e, p).filter(|o| *o > hw) {
                    if seen_beyond.is_none_or(|(m, _)| o > m) {
                        seen_beyond = Some((o, e));
                    }
                }
            }
            if let Some((o, e)) = seen_beyond {
                add(
                    "group-commit-beyond-hw",
                    format!(
                        "partition {p}: committed offset {o} above the final high watermark {hw}"
                    ),
                    vec![e.clone()],
                );
            }
        }
    }
    // At-least-once: everything below the final committed offset was delivered.
    match final_committed {
        None => add(
            "group-final-read",
            "no successful OffsetFetch of the group after the workload stopped".into(),
            Vec::new(),
        ),
        Some(fe) => {
            let mut delivered: HashMap<i32, HashSet<i64>> = HashMap::new();
            for e in events.iter().filter(|e| e.f == F::GroupPoll) {
                if let (Some(p), Some(o)) = (e.partition, e.offset) {
                    delivered.entry(p).or_default().insert(o);
                }
            }
            for &(p, c) in fe.offsets.as_deref().unwrap_or(&[]) {
                let (start, hw) = bounds.get(&p).copied().unwrap_or((0, c));
                // Bounded by the high watermark: above it is group-commit-beyond-hw.
                let got = delivered.get(&p);
                let mut missing: Vec<(i64, i64)> = Vec::new();
                let mut count = 0u64;
                for o in start.max(0)..c.min(hw) {
                    if got.is_some_and(|s| s.contains(&o)) {
                        continue;
                    }
                    count += 1;
                    let n = missing.len();
                    match missing.last_mut() {
                        Some(r) if r.1 + 1 == o => r.1 = o,
                        _ if n < 10 => missing.push((o, o)),
                        _ => {}
                    }
                }
                if count > 0 {
                    add(
                        "group-skipped",
                        format!(
                            "partition {p}: {count} offsets below the final committed offset {c} were never delivered to a member (first ranges {missing:?})"
                        ),
                        vec![fe.clone()],
                    );
                }
            }
        }
    }
    for e in events.iter().filter(|e| {
        e.f == F::GroupFinal && e.kind == Kind::Fail && e.value.as_deref() == Some("liveness")
    }) {
        add(
            "group-liveness",
            e.error
                .clone()
                .unwrap_or_else(|| "the group made no progress after healing".into()),
            vec![e.clone()],
        );
    }
    out
}

/// Suspects, reported but not failing the run: group commits in flight across a broker
/// kill or power cut that the restarted coordinator refused as UNKNOWN_MEMBER_ID. The
/// coordinator reloads the group with a full session for every member, so a member it had
/// answered before the crash should still be known; one that is not was given an assignment
/// (SyncGroup) of a generation that was not yet durable (docs/chaos.md, finding).
pub fn group_suspects(events: &[Event]) -> Vec<String> {
    let crashes: Vec<u64> = events
        .iter()
        .filter(|e| {
            e.f == F::Fault
                && ((e.kind == Kind::Info && e.value.as_deref() == Some("crash"))
                    || (e.kind == Kind::Invoke && e.value.as_deref() == Some("fsync-eio")))
        })
        .map(|e| e.t_us)
        .collect();
    let invoked: HashMap<u64, u64> = events
        .iter()
        .filter(|e| e.f == F::GroupCommit && e.kind == Kind::Invoke)
        .map(|e| (e.op, e.t_us))
        .collect();
    events
        .iter()
        .filter(|e| {
            e.f == F::GroupCommit
                && e.kind == Kind::Fail
                && e.error.as_deref() == Some("UnknownMemberId")
        })
        .filter_map(|e| {
            let t0 = *invoked.get(&e.op)?;
            crashes.iter().find(|&&c| t0 < c && c < e.t_us).map(|c| {
                format!(
                    "{} committed {:?} at {:.3} s, before the crash at {:.3} s; refused after the restart (UNKNOWN_MEMBER_ID) at {:.3} s",
                    e.process,
                    e.offsets.as_deref().unwrap_or(&[]),
                    t0 as f64 / 1e6,
                    *c as f64 / 1e6,
                    e.t_us as f64 / 1e6
                )
            })
        })
        .take(50)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, f: F, process: &str, op: u64, t_us: u64) -> Event {
        let mut e = Event::new(kind, f, process, op);
        e.t_us = t_us;
        e
    }

    /// A send of `value` to partition 0: invoke at t, completion at t+1 with `kind`.
    fn send(h: &mut Vec<Event>, op: u64, value: &str, t: u64, kind: Kind, offset: Option<i64>) {
        h.push(
            ev(Kind::Invoke, F::Send, "p0.0", op, t)
                .value(value)
                .partition(0),
        );
        let mut d = ev(kind, F::Send, "p0.0", op, t + 1)
            .value(value)
            .partition(0);
        d.offset = offset;
        h.push(d);
    }

    fn read(h: &mut Vec<Event>, f: F, value: &str, offset: i64) {
        h.push(
            ev(Kind::Ok, f, "r", 1000, 10_000)
                .value(value)
                .partition(0)
                .offset(offset),
        );
    }

    fn classes(h: &[Event], hw: i64, reached: i64) -> BTreeMap<&'static str, usize> {
        check(h, &[(0, (hw, reached))].into_iter().collect()).by_class()
    }

    #[test]
    fn clean_history_passes() {
        let mut h = Vec::new();
        send(&mut h, 1, "a", 10, Kind::Ok, Some(0));
        send(&mut h, 2, "b", 20, Kind::Info, None);
        send(&mut h, 3, "c", 30, Kind::Fail, None);
        read(&mut h, F::Poll, "a", 0);
        read(&mut h, F::FinalRead, "a", 0);
        read(&mut h, F::FinalRead, "b", 1);
        assert!(classes(&h, 2, 2).is_empty());
    }

    #[test]
    fn figures_per_client_library() {
        let mut h = Vec::new();
        send(&mut h, 1, "a", 10, Kind::Ok, Some(0));
        for (op, val, kind) in [
            (2, "java-0-0", Kind::Ok),
            (3, "java-0-1", Kind::Ok),
            (4, "java-0-2", Kind::Info),
        ] {
            h.push(
                ev(Kind::Invoke, F::Send, "java-0", op, op * 10)
                    .value(val)
                    .partition(0),
            );
            h.push(
                ev(kind, F::Send, "java-0", op, op * 10 + 1)
                    .value(val)
                    .partition(0),
            );
        }
        read(&mut h, F::FinalRead, "a", 0);
        read(&mut h, F::FinalRead, "java-0-0", 1);
        read(&mut h, F::FinalRead, "java-0-0", 2);
        let v = check(&h, &[(0, (3, 3))].into_iter().collect());
        let java = ClientFigures {
            sent: 3,
            acked: 2,
            lost: 1,
            duplicated: 1,
            failed: 0,
            indefinite: 1,
        };
        assert_eq!(v.by_client.get("java"), Some(&java), "{:?}", v.by_client);
        assert_eq!(
            v.by_client.get("rdkafka").map(|c| (c.acked, c.lost)),
            Some((1, 0))
        );
        assert_eq!(v.acked, 3);
    }

    #[test]
    fn catches_each_anomaly() {
        let mut h = Vec::new();
        send(&mut h, 1, "lost", 10, Kind::Ok, Some(0));
        send(&mut h, 2, "moved", 20, Kind::Ok, Some(1));
        send(&mut h, 3, "dup", 30, Kind::Ok, Some(2));
        send(&mut h, 4, "refused", 40, Kind::Fail, None);
        send(&mut h, 5, "seen-then-gone", 50, Kind::Info, None);
        read(&mut h, F::Poll, "x", 0);
        read(&mut h, F::Poll, "seen-then-gone", 7);
        read(&mut h, F::FinalRead, "y", 0);
        read(&mut h, F::FinalRead, "dup", 2);
        read(&mut h, F::FinalRead, "moved", 3);
        read(&mut h, F::FinalRead, "dup", 4);
        read(&mut h, F::FinalRead, "refused", 5);
        let c = classes(&h, 9, 6);
        for want in [
            "lost-acknowledged-write",
            "ack-offset-mismatch",
            "duplicate",
            "definite-failure-read",
            "lost-observed-write",
            "inconsistent-offset",
            "phantom-read",
            "incomplete-final-read",
        ] {
            assert!(c.contains_key(want), "{want} not reported: {c:?}");
        }
    }

    #[test]
    fn catches_order_and_watermark_regressions() {
        let mut h = Vec::new();
        send(&mut h, 1, "first", 10, Kind::Ok, Some(1));
        send(&mut h, 2, "second", 20, Kind::Ok, Some(0));
        read(&mut h, F::FinalRead, "second", 0);
        read(&mut h, F::FinalRead, "first", 1);
        for (hw, lo) in [(5, 1), (4, 0)] {
            let mut w = ev(Kind::Ok, F::Watermarks, "w0", 9, 30).partition(0);
            w.high = Some(hw);
            w.low = Some(lo);
            h.push(w);
        }
        let c = classes(&h, 2, 2);
        for want in [
            "producer-order",
            "real-time-order",
            "high-watermark-regressed",
            "log-start-regressed",
        ] {
            assert!(c.contains_key(want), "{want} not reported: {c:?}");
        }
    }

    // ---- consumer-group checks ----

    fn commit(h: &mut Vec<Event>, op: u64, t: u64, kind: Kind, offsets: &[(i32, i64)]) {
        h.push(ev(Kind::Invoke, F::GroupCommit, "g0.0", op, t).offsets(offsets.to_vec()));
        h.push(ev(kind, F::GroupCommit, "g0.0", op, t + 1).offsets(offsets.to_vec()));
    }

    fn watch(h: &mut Vec<Event>, op: u64, t: u64, offsets: &[(i32, i64)]) {
        h.push(ev(Kind::Invoke, F::GroupOffsets, "gw", op, t));
        h.push(ev(Kind::Ok, F::GroupOffsets, "gw", op, t + 1).offsets(offsets.to_vec()));
    }

    fn group_poll(h: &mut Vec<Event>, p: i32, offsets: std::ops::Range<i64>) {
        for o in offsets {
            h.push(
                ev(Kind::Ok, F::GroupPoll, "g0.0", 5000 + o as u64, 5)
                    .value(&format!("v{p}-{o}"))
                    .partition(p)
                    .offset(o),
            );
        }
    }

    fn final_committed(h: &mut Vec<Event>, t: u64, offsets: &[(i32, i64)]) {
        h.push(ev(Kind::Invoke, F::GroupFinal, "group-final", 9000, t).value("committed"));
        h.push(
            ev(Kind::Ok, F::GroupFinal, "group-final", 9000, t + 1)
                .value("committed")
                .offsets(offsets.to_vec()),
        );
    }

    fn group_classes(h: &[Event], hw: i64) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for a in check_groups(h, &[(0, (0, hw))].into_iter().collect()) {
            *m.entry(a.class).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn clean_group_history_passes() {
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..10);
        commit(&mut h, 1, 10, Kind::Ok, &[(0, 5)]);
        watch(&mut h, 2, 20, &[(0, 5)]);
        // A commit whose outcome is unknown may or may not be visible.
        commit(&mut h, 3, 30, Kind::Info, &[(0, 8)]);
        watch(&mut h, 4, 40, &[(0, 8)]);
        commit(&mut h, 5, 50, Kind::Ok, &[(0, 10)]);
        // Invoked before the commit was acknowledged: may still see the older offset.
        watch(&mut h, 6, 50, &[(0, 8)]);
        watch(&mut h, 7, 60, &[(0, 10)]);
        final_committed(&mut h, 70, &[(0, 10)]);
        let c = group_classes(&h, 10);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn catches_a_watcher_regression() {
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..10);
        watch(&mut h, 1, 10, &[(0, 7)]);
        watch(&mut h, 2, 20, &[(0, 4)]);
        final_committed(&mut h, 70, &[(0, 7)]);
        let c = group_classes(&h, 10);
        assert_eq!(c.get("group-offset-regressed"), Some(&1), "{c:?}");
    }

    #[test]
    fn catches_an_acknowledged_commit_taken_back() {
        // The clients saw the commit acknowledged; the power cut took it back; every read
        // afterwards (the watcher never saw the higher value) shows the older offset.
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..10);
        commit(&mut h, 1, 10, Kind::Ok, &[(0, 4)]);
        watch(&mut h, 2, 20, &[(0, 4)]);
        commit(&mut h, 3, 30, Kind::Ok, &[(0, 9)]);
        watch(&mut h, 4, 40, &[(0, 4)]);
        final_committed(&mut h, 70, &[(0, 9)]);
        let c = group_classes(&h, 10);
        assert_eq!(c.get("group-offset-regressed"), Some(&1), "{c:?}");
        // A committed offset that vanishes is a regression too.
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..10);
        commit(&mut h, 1, 10, Kind::Ok, &[(0, 4)]);
        watch(&mut h, 2, 20, &[]);
        final_committed(&mut h, 70, &[(0, 4)]);
        assert!(group_classes(&h, 10).contains_key("group-offset-regressed"));
    }

    #[test]
    fn catches_skipped_offsets() {
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..3);
        group_poll(&mut h, 0, 6..10);
        commit(&mut h, 1, 10, Kind::Ok, &[(0, 10)]);
        final_committed(&mut h, 70, &[(0, 10)]);
        let a = check_groups(&h, &[(0, (0, 10))].into_iter().collect());
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].class, "group-skipped");
        assert!(a[0].what.contains("3 offsets"), "{}", a[0].what);
        assert!(a[0].what.contains("(3, 5)"), "{}", a[0].what);
        // Below the log start nothing is expected.
        let a = check_groups(&h, &[(0, (6, 10))].into_iter().collect());
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn catches_commit_beyond_high_watermark_and_liveness() {
        let mut h = Vec::new();
        group_poll(&mut h, 0, 0..10);
        commit(&mut h, 1, 10, Kind::Ok, &[(0, 12)]);
        final_committed(&mut h, 70, &[(0, 12)]);
        let mut l = ev(Kind::Fail, F::GroupFinal, "group-final", 9001, 80).value("liveness");
        l.error = Some("partition 0 committed 3 < high watermark 10".into());
        h.push(l);
        let c = group_classes(&h, 10);
        assert_eq!(c.get("group-commit-beyond-hw"), Some(&1), "{c:?}");
        assert_eq!(c.get("group-liveness"), Some(&1), "{c:?}");
        // And no final fetch at all is reported, never passed silently.
        let c = group_classes(&[], 10);
        assert_eq!(c.get("group-final-read"), Some(&1), "{c:?}");
    }

    #[test]
    fn group_polls_join_the_one_value_per_offset_check() {
        let mut h = Vec::new();
        send(&mut h, 1, "a", 10, Kind::Ok, Some(0));
        read(&mut h, F::FinalRead, "a", 0);
        h.push(
            ev(Kind::Ok, F::GroupPoll, "g0.0", 7, 20)
                .value("b")
                .partition(0)
                .offset(0),
        );
        let c = classes(&h, 1, 1);
        assert!(c.contains_key("inconsistent-offset"), "{c:?}");
    }

    #[test]
    fn reports_commits_forgotten_across_a_crash() {
        let mut h = vec![ev(Kind::Invoke, F::GroupCommit, "g1.1", 1, 10).offsets(vec![(2, 5)])];
        h.push(ev(Kind::Info, F::Fault, "nemesis", 2, 20).value("crash"));
        let mut f = ev(Kind::Fail, F::GroupCommit, "g1.1", 1, 30).offsets(vec![(2, 5)]);
        f.error = Some("UnknownMemberId".into());
        h.push(f.clone());
        assert_eq!(group_suspects(&h).len(), 1);
        // The same refusal without a crash in between is ordinary fencing.
        let mut h = vec![ev(Kind::Invoke, F::GroupCommit, "g1.1", 1, 10).offsets(vec![(2, 5)])];
        h.push(f);
        assert!(group_suspects(&h).is_empty());
    }
}
