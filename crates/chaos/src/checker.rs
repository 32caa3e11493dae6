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
        .filter(|e| matches!(e.f, F::Poll | F::FinalRead))
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

    // Duplicates: a value at more than one offset in the final read.
    for (val, places) in &final_at {
        let mut distinct = places.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 {
            add(
                &mut v,
                "duplicate",
                format!("value {val:?} at {distinct:?}"),
                Vec::new(),
            );
        }
    }

    let by_value: HashMap<&str, &Send> = sends
        .values()
        .filter_map(|s| s.invoke.value.as_deref().map(|val| (val, s)))
        .collect();
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
}
