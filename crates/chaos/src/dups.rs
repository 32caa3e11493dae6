//! Who wrote a duplicate: the batch headers behind each copy of a duplicated value, read from
//! the partition's segment files (`holdfast_log::dump`).
//!
//! - Every copy written by one producer session (same producer id and epoch): the broker
//!   failed to recognise a retry. The anomaly stays `duplicate`, with the sequences.
//! - Copies from different producer sessions (another epoch or producer id): the client sent
//!   the value again under a new session, which no broker can recognise as a retry
//!   (librdkafka bumps the epoch after message timeouts and re-sends what it had queued,
//!   KIP-360; idempotence covers one session). Reclassified `duplicate-across-sessions`,
//!   still an anomaly: the value is stored twice.
//! - Headers not found (a replica truncated since, data gone): left as `duplicate`, said.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use holdfast_log::batch::BatchHeader;

use crate::checker::Verdict;

/// (producer id, producer epoch, sequence of the record) of one stored copy.
type Session = (i64, i16, i32);

fn session_of(h: &BatchHeader, offset: i64) -> Session {
    let seq = if h.base_sequence >= 0 {
        h.base_sequence
            .wrapping_add((offset - h.base_offset).clamp(0, i64::from(i32::MAX)) as i32)
    } else {
        -1
    };
    (h.producer_id, h.producer_epoch, seq)
}

/// Annotates and reclassifies the verdict's duplicates. `dirs` are data directories (one
/// per node; the first that holds an offset answers); `topic` the workload's topic. Returns
/// a summary note, `None` when there are no duplicates.
pub fn explain(v: &mut Verdict, dirs: &[PathBuf], topic: &str) -> Option<String> {
    if v.duplicates.is_empty() {
        return None;
    }
    let not_examined = v
        .anomalies
        .iter()
        .filter(|a| a.class == "duplicate")
        .count()
        .saturating_sub(v.duplicates.len());
    let mut wanted: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (_, _, places) in &v.duplicates {
        for (p, o) in places {
            wanted.entry(*p).or_default().push(*o);
        }
    }
    let mut found: HashMap<(i32, i64), Session> = HashMap::new();
    for (p, offsets) in &wanted {
        for d in dirs {
            let missing: Vec<i64> = offsets
                .iter()
                .copied()
                .filter(|o| !found.contains_key(&(*p, *o)))
                .collect();
            if missing.is_empty() {
                break;
            }
            let dir = d.join(format!("{topic}-{p}"));
            if let Ok(hs) = holdfast_log::dump::headers_at(&dir, &missing) {
                for (o, h) in hs {
                    found.entry((*p, o)).or_insert_with(|| session_of(&h, o));
                }
            }
        }
    }
    let (mut same, mut across, mut unknown) = (0usize, 0usize, 0usize);
    for (index, _, places) in &v.duplicates {
        let sessions: Option<Vec<Session>> = places.iter().map(|k| found.get(k).copied()).collect();
        let Some(a) = v.anomalies.get_mut(*index) else {
            continue;
        };
        match sessions {
            None => {
                unknown += 1;
                a.what += " (batch headers not found)";
            }
            Some(s) if s.iter().all(|x| (x.0, x.1) == (s[0].0, s[0].1)) => {
                same += 1;
                a.what += &format!(
                    ": every copy from producer id {} epoch {} (sequences {:?}): the broker stored a retry twice",
                    s[0].0,
                    s[0].1,
                    s.iter().map(|x| x.2).collect::<Vec<_>>()
                );
            }
            Some(s) => {
                across += 1;
                a.class = "duplicate-across-sessions";
                a.what += &format!(
                    ": copies from different producer sessions (id, epoch, sequence) {s:?}: the client sent it again under a new session"
                );
            }
        }
    }
    Some(format!(
        "duplicates by the batches behind them: {same} within one producer session (broker), {across} across producer sessions (client re-send), {unknown} not found, {not_examined} not examined (over the bound)"
    ))
}
