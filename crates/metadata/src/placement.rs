//! Replica placement for new partitions: round robin over the usable brokers from a start
//! position, rack-aware when racks are known (the replicas of one partition go to distinct
//! racks whenever there are at least as many racks as replicas).
//!
//! The broker order is Kafka's rack-alternating list (`AdminUtils.getRackAlternatedBrokerList`
//! in Kafka's `server-common` / the old ZooKeeper-mode assignment): racks sorted by name,
//! then brokers of each rack by id, taken one rack at a time, so that consecutive entries are
//! on different racks. Partition `p`'s first replica (its preferred leader) is entry
//! `(start + p) mod n`; each further replica is the next entry whose rack is not used yet by
//! that partition (while unused racks remain) and whose broker is not used yet. Leaders are
//! therefore spread evenly. Deterministic: the same brokers and `seed` give the same result.

use std::collections::BTreeMap;

/// A broker that may receive replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementBroker {
    pub id: i32,
    pub rack: Option<String>,
}

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "replication factor {replication_factor} is larger than the {available} available brokers"
    )]
    NotEnoughBrokers {
        replication_factor: usize,
        available: usize,
    },
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
}

/// Brokers in rack-alternating order (brokers without a rack form one rack named "").
fn rack_alternated(brokers: &[PlacementBroker]) -> Vec<PlacementBroker> {
    let mut by_rack: BTreeMap<&str, Vec<&PlacementBroker>> = BTreeMap::new();
    for b in brokers {
        by_rack
            .entry(b.rack.as_deref().unwrap_or(""))
            .or_default()
            .push(b);
    }
    for list in by_rack.values_mut() {
        list.sort_by_key(|b| b.id);
        list.dedup_by_key(|b| b.id);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0..longest {
        for list in by_rack.values() {
            if let Some(b) = list.get(i) {
                out.push((*b).clone());
            }
        }
    }
    out
}

/// Replica lists for `partitions` new partitions with `replication_factor` replicas each.
/// `seed` picks the start position (the controller passes a random value; tests a fixed one).
pub fn place(
    brokers: &[PlacementBroker],
    partitions: usize,
    replication_factor: usize,
    seed: u64,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    let order = rack_alternated(brokers);
    let n = order.len();
    if replication_factor > n {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            available: n,
        });
    }
    let rack_of = |i: usize| order[i].rack.as_deref().unwrap_or("");
    let start = (seed % n as u64) as usize;
    let mut out = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let first = (start + p) % n;
        let mut replicas: Vec<i32> = vec![order[first].id];
        let mut racks_used: Vec<&str> = vec![rack_of(first)];
        // Shift where the followers start so that partitions with the same leader do not
        // all get the same followers (Kafka's `replicaShift`).
        let shift = 1 + (p / n) % (n.max(2) - 1);
        let mut cursor = first + shift;
        // One iteration per further replica; each scans at most 2n entries.
        while replicas.len() < replication_factor {
            let unused = |i: &usize| !replicas.contains(&order[*i].id);
            let pick = (0..n)
                .map(|j| (cursor + j) % n)
                .find(|i| unused(i) && !racks_used.contains(&rack_of(*i)))
                .or_else(|| (0..n).map(|j| (cursor + j) % n).find(unused));
            let Some(i) = pick else { break };
            replicas.push(order[i].id);
            racks_used.push(rack_of(i));
            cursor = i + 1;
        }
        debug_assert_eq!(replicas.len(), replication_factor);
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn brokers(spec: &[(i32, Option<&str>)]) -> Vec<PlacementBroker> {
        spec.iter()
            .map(|(id, r)| PlacementBroker {
                id: *id,
                rack: r.map(String::from),
            })
            .collect()
    }

    #[test]
    fn refuses_more_replicas_than_brokers() {
        let b = brokers(&[(1, None), (2, None)]);
        assert_eq!(
            place(&b, 1, 3, 0),
            Err(PlacementError::NotEnoughBrokers {
                replication_factor: 3,
                available: 2
            })
        );
        assert_eq!(
            place(&b, 1, 0, 0),
            Err(PlacementError::ZeroReplicationFactor)
        );
    }

    #[test]
    fn round_robin_without_racks_balances_leaders() {
        let b = brokers(&[(3, None), (1, None), (2, None)]);
        let got = place(&b, 6, 2, 0).expect("placed");
        let leaders: Vec<i32> = got.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        for r in &got {
            assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), 2, "{got:?}");
        }
        // Another seed starts elsewhere, deterministically.
        assert_eq!(place(&b, 6, 2, 1), place(&b, 6, 2, 1));
        assert_eq!(place(&b, 1, 2, 1).expect("placed")[0][0], 2);
    }

    #[test]
    fn replicas_go_to_distinct_racks_when_possible() {
        for seed in 0..50u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let racks = ["a", "b", "c"];
            let n = rng.usize(3..10);
            let spec: Vec<(i32, Option<&str>)> = (0..n)
                .map(|i| (i as i32 + 1, Some(racks[rng.usize(..3)])))
                .collect();
            let b = brokers(&spec);
            let distinct_racks = spec.iter().map(|s| s.1).collect::<BTreeSet<_>>().len();
            let rf = rng.usize(1..=3.min(n));
            let got = place(&b, 12, rf, seed).expect("placed");
            for r in &got {
                assert_eq!(r.len(), rf);
                assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), rf, "{r:?}");
                let rack_of = |id: i32| {
                    spec.iter()
                        .find(|s| s.0 == id)
                        .and_then(|s| s.1)
                        .unwrap_or("")
                };
                let used = r
                    .iter()
                    .map(|id| rack_of(*id))
                    .collect::<BTreeSet<_>>()
                    .len();
                assert_eq!(
                    used,
                    rf.min(distinct_racks),
                    "seed {seed}: {r:?} on {spec:?}"
                );
            }
        }
    }
}
