//! Replication throttles for reassignments (KIP-73, Kafka's `ReplicationQuotaManager`), as
//! `kafka-reassign-partitions.sh --throttle` sets them:
//!
//! * broker configs `leader.replication.throttled.rate` and
//!   `follower.replication.throttled.rate` (bytes per second; per broker, or cluster-wide
//!   from the empty broker name; unset: unlimited);
//! * topic configs `leader.replication.throttled.replicas` and
//!   `follower.replication.throttled.replicas`: `*` or a list of `partition:broker`.
//!
//! On the leader, a replica fetch of a partition listed for this broker, from a follower that
//! is not in the ISR, is charged to the leader limiter, and gets no data while the limiter is
//! exhausted. On the follower, partitions listed for this broker that it is not in the ISR of
//! are left out of its fetches while the follower limiter is exhausted. In-sync replicas are
//! never throttled (Kafka's rule: a throttle must not slow the acks=all path).
//!
//! The limiter is a token bucket holding at most one second of the rate; a read may take it
//! below zero (one batch is always returned whole), and nothing is read until it refills.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use holdfast_metadata::{ConfigResource, MetadataImage};

pub(crate) const LEADER_RATE: &str = "leader.replication.throttled.rate";
pub(crate) const FOLLOWER_RATE: &str = "follower.replication.throttled.rate";
pub(crate) const LEADER_REPLICAS: &str = "leader.replication.throttled.replicas";
pub(crate) const FOLLOWER_REPLICAS: &str = "follower.replication.throttled.replicas";
/// Accepted (kafka-reassign-partitions.sh sets and clears it) but unused: one log directory.
pub(crate) const ALTER_LOG_DIRS_RATE: &str = "replica.alter.log.dirs.io.max.bytes.per.second";

/// The broker configs that can be set dynamically in cluster mode.
pub(crate) const DYNAMIC_BROKER_CONFIGS: &[&str] =
    &[LEADER_RATE, FOLLOWER_RATE, ALTER_LOG_DIRS_RATE];

/// Which side of replication a limiter meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Leader,
    Follower,
}

impl Side {
    fn rate_key(self) -> &'static str {
        match self {
            Side::Leader => LEADER_RATE,
            Side::Follower => FOLLOWER_RATE,
        }
    }

    fn replicas_key(self) -> &'static str {
        match self {
            Side::Leader => LEADER_REPLICAS,
            Side::Follower => FOLLOWER_REPLICAS,
        }
    }
}

/// Checks a `*.replication.throttled.replicas` value (Kafka's
/// `ThrottledReplicaListValidator`): empty, `*`, or `partition:broker` items.
pub fn validate_throttled_replicas(value: &str) -> Result<(), String> {
    let v = value.trim();
    if v.is_empty() || v == "*" {
        return Ok(());
    }
    for item in v.split(',').map(str::trim) {
        let ok = item.split_once(':').is_some_and(|(p, b)| {
            p.trim().parse::<i32>().is_ok_and(|p| p >= 0)
                && b.trim().parse::<i32>().is_ok_and(|b| b >= 0)
        });
        if !ok {
            return Err(format!(
                "{item:?}: expected `*` or a list of partition:broker"
            ));
        }
    }
    Ok(())
}

/// Checks a throttle rate (a non-negative long, bytes per second).
pub fn validate_rate(value: &str) -> Result<(), String> {
    match value.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(()),
        _ => Err(format!(
            "{value:?}: expected a non-negative number of bytes per second"
        )),
    }
}

/// Whether `partition` on `broker` is listed in a throttled-replicas value.
fn lists(value: &str, partition: i32, broker: i32) -> bool {
    let v = value.trim();
    if v == "*" {
        return true;
    }
    v.split(',').any(|item| {
        item.split_once(':').is_some_and(|(p, b)| {
            p.trim().parse::<i32>() == Ok(partition) && b.trim().parse::<i32>() == Ok(broker)
        })
    })
}

/// The configured rate of `side` on `broker`: its own dynamic config, else the cluster-wide
/// one; `None`: unlimited.
fn rate(image: &MetadataImage, side: Side, broker: i32) -> Option<u64> {
    let get = |r: &ConfigResource| {
        image
            .configs
            .get(r)
            .and_then(|c| c.get(side.rate_key()))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    get(&ConfigResource::Broker(broker)).or_else(|| get(&ConfigResource::Cluster))
}

/// A token bucket of bytes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate_bytes_per_s: u64,
    tokens: f64,
    last: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            state: Mutex::new(Bucket {
                rate_bytes_per_s: 0,
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }
}

impl RateLimiter {
    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refills at `rate_bytes_per_s` (a new rate applies from now) and returns the bytes
    /// that may be read now (0: exhausted).
    pub(crate) fn available(&self, rate_bytes_per_s: u64) -> usize {
        let mut b = self.bucket();
        let now = Instant::now();
        if b.rate_bytes_per_s != rate_bytes_per_s {
            b.rate_bytes_per_s = rate_bytes_per_s;
            b.tokens = b.tokens.min(rate_bytes_per_s as f64);
        }
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        let cap = rate_bytes_per_s as f64;
        b.tokens = (b.tokens + elapsed * cap).min(cap);
        if b.tokens <= 0.0 {
            0
        } else {
            b.tokens as usize
        }
    }

    /// Charges `bytes` read.
    pub(crate) fn record(&self, bytes: usize) {
        let mut b = self.bucket();
        // Bounded below: a huge read waits at most ten seconds' worth of refill.
        let floor = -10.0 * b.rate_bytes_per_s as f64;
        b.tokens = (b.tokens - bytes as f64).max(floor);
    }
}

/// The two limiters of one broker.
#[derive(Debug, Default)]
pub(crate) struct Throttles {
    leader: RateLimiter,
    follower: RateLimiter,
}

impl Throttles {
    /// The limiter and rate to apply to a replica fetch of `topic`/`partition` on `side` of
    /// broker `me`, or `None` when it is not throttled. The caller also checks that the
    /// follower is not in the ISR.
    pub(crate) fn lookup(
        &self,
        image: &MetadataImage,
        side: Side,
        me: i32,
        topic: &str,
        partition: i32,
    ) -> Option<(&RateLimiter, u64)> {
        let rate = rate(image, side, me)?;
        let listed = image
            .configs
            .get(&ConfigResource::Topic(topic.to_string()))
            .and_then(|c| c.get(side.replicas_key()))
            .is_some_and(|v| lists(v, partition, me));
        if !listed {
            return None;
        }
        let limiter = match side {
            Side::Leader => &self.leader,
            Side::Follower => &self.follower,
        };
        Some((limiter, rate))
    }
}

/// Dynamic broker config changes (IncrementalAlterConfigs on a BROKER resource), checked:
/// only the throttles may change; values are validated.
pub(crate) fn check_dynamic_broker_configs(
    set: &BTreeMap<String, String>,
    delete: &[String],
) -> Result<(), String> {
    for k in set.keys().chain(delete.iter()) {
        if !DYNAMIC_BROKER_CONFIGS.contains(&k.as_str()) {
            return Err(format!(
                "Cannot update the broker config {k} dynamically: Holdfast supports {}",
                DYNAMIC_BROKER_CONFIGS.join(", ")
            ));
        }
    }
    for v in set.values() {
        validate_rate(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_replica_lists_parse_like_kafka() {
        assert!(validate_throttled_replicas("").is_ok());
        assert!(validate_throttled_replicas("*").is_ok());
        assert!(validate_throttled_replicas("0:1, 1:2,2:3").is_ok());
        assert!(validate_throttled_replicas("0").is_err());
        assert!(validate_throttled_replicas("a:1").is_err());
        assert!(validate_throttled_replicas("0:1,").is_err());
        assert!(lists("0:1,1:2", 1, 2));
        assert!(!lists("0:1,1:2", 1, 1));
        assert!(lists(" * ", 7, 9));
    }

    #[test]
    fn limiter_refuses_once_exhausted_and_refills() {
        let l = RateLimiter::default();
        // A fresh bucket starts empty, then refills at the rate.
        let first = l.available(1_000_000);
        assert!(first <= 1_000_000);
        l.record(5_000_000);
        assert_eq!(l.available(1_000_000), 0, "exhausted after a big read");
        // An unlimited-looking rate change keeps the debt.
        assert_eq!(l.available(2_000_000), 0);
    }
}
