//! Broker configuration (Kafka's broker property names) and per-topic configuration
//! (Kafka's topic config names), validated and turned into a [`LogConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use holdfast_log::{CleanupPolicy, FlushPolicy, LogConfig, TimestampType};

/// A configuration key or value was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn parse_i64(key: &str, value: &str, min: i64) -> Result<i64, ConfigError> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not an integer"))?;
    if v < min {
        return Err(invalid(key, value, format!("must be at least {min}")));
    }
    Ok(v)
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

/// Topic configs we understand, with how each is validated. The ones that change the log are
/// applied to its [`LogConfig`]; the others are stored and reported but have no effect on a
/// single-node broker (e.g. `min.insync.replicas`).
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "holdfast.flush.policy",
    "index.interval.bytes",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "retention.bytes",
    "retention.ms",
    "retention.protect.groups",
    "retention.protect.max.bytes",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// Builds the effective log config of a topic: `defaults` with `overrides` applied.
pub fn build_log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, ConfigError> {
    let mut c = defaults.clone();
    let mut flush_messages: Option<u64> = None;
    let mut flush_ms: Option<i64> = None;
    let mut policy: Option<String> = None;
    for (key, value) in overrides {
        let k = key.as_str();
        let v = value.as_str();
        match k {
            "cleanup.policy" => {
                let mut p = CleanupPolicy {
                    delete: false,
                    compact: false,
                };
                for part in v.split(',').map(str::trim) {
                    match part {
                        "delete" => p.delete = true,
                        "compact" => p.compact = true,
                        _ => return Err(invalid(k, v, "expected delete and/or compact")),
                    }
                }
                c.cleanup_policy = p;
            }
            "compression.type" => {
                // The broker stores batches as produced: it never recompresses.
                if v != "producer" {
                    return Err(invalid(
                        k,
                        v,
                        "only `producer` is supported (batches are stored as produced)",
                    ));
                }
            }
            "delete.retention.ms" => c.delete_retention_ms = parse_i64(k, v, 0)?,
            "file.delete.delay.ms" | "segment.jitter.ms" => {
                parse_i64(k, v, 0)?;
            }
            "segment.index.bytes" => {
                parse_i64(k, v, 4)?;
            }
            "flush.messages" => flush_messages = Some(parse_i64(k, v, 1)? as u64),
            "flush.ms" => flush_ms = Some(parse_i64(k, v, 0)?),
            "holdfast.flush.policy" => match v {
                "fsync" | "interval" | "pagecache" => policy = Some(v.to_string()),
                _ => return Err(invalid(k, v, "expected fsync, interval or pagecache")),
            },
            "index.interval.bytes" => c.index_interval_bytes = parse_i64(k, v, 0)? as u64,
            "max.compaction.lag.ms" => c.max_compaction_lag_ms = parse_i64(k, v, 1)?,
            "min.compaction.lag.ms" => c.min_compaction_lag_ms = parse_i64(k, v, 0)?,
            "max.message.bytes" => c.max_message_bytes = parse_i64(k, v, 0)? as usize,
            "message.timestamp.after.max.ms" => c.timestamp_after_max_ms = parse_i64(k, v, 0)?,
            "message.timestamp.before.max.ms" => c.timestamp_before_max_ms = parse_i64(k, v, 0)?,
            "message.timestamp.type" => {
                c.timestamp_type = match v {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid(k, v, "expected CreateTime or LogAppendTime")),
                }
            }
            "min.insync.replicas" => {
                parse_i64(k, v, 1)?;
            }
            "preallocate" | "unclean.leader.election.enable" => {
                parse_bool(k, v)?;
            }
            "retention.bytes" => c.retention_bytes = parse_i64(k, v, -1)?,
            "retention.ms" => c.retention_ms = parse_i64(k, v, -1)?,
            // Protected retention (crate::protect): applied by the broker's retention tick.
            "retention.protect.groups" => {}
            "retention.protect.max.bytes" => {
                parse_i64(k, v, 0)?;
            }
            // Reassignment throttles (crate::cluster::throttle), read from the image.
            "leader.replication.throttled.replicas" | "follower.replication.throttled.replicas" => {
                crate::cluster::throttle::validate_throttled_replicas(v)
                    .map_err(|m| invalid(k, v, m))?;
            }
            "segment.bytes" => c.segment_bytes = parse_i64(k, v, 14)? as u64,
            "segment.ms" => c.segment_ms = parse_i64(k, v, 1)?,
            _ => return Err(ConfigError::UnknownKey(key.clone())),
        }
    }
    let interval = || FlushPolicy::Interval {
        messages: flush_messages.unwrap_or(u64::MAX),
        interval_ms: flush_ms.unwrap_or(i64::MAX),
    };
    match policy.as_deref() {
        Some("fsync") => c.flush_policy = FlushPolicy::EveryAppend,
        Some("pagecache") => c.flush_policy = FlushPolicy::PageCache,
        Some(_) => c.flush_policy = interval(),
        None if flush_messages == Some(1) && flush_ms.is_none() => {
            c.flush_policy = FlushPolicy::EveryAppend
        }
        None if flush_messages.is_some() || flush_ms.is_some() => c.flush_policy = interval(),
        None => {}
    }
    Ok(c)
}

/// Kafka's ConfigSource values (DescribeConfigs v1+).
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// The value of a topic config key as the effective `LogConfig` has it, rendered as Kafka
/// renders it. Keys without an effect on the log report Kafka's default.
pub fn render_topic_config(c: &LogConfig, key: &str) -> Option<String> {
    let (messages, ms) = match c.flush_policy {
        FlushPolicy::EveryAppend => (1u64.to_string(), i64::MAX.to_string()),
        FlushPolicy::Interval {
            messages,
            interval_ms,
        } => (
            messages.min(i64::MAX as u64).to_string(),
            interval_ms.to_string(),
        ),
        FlushPolicy::PageCache => (i64::MAX.to_string(), i64::MAX.to_string()),
    };
    Some(match key {
        "cleanup.policy" => match (c.cleanup_policy.delete, c.cleanup_policy.compact) {
            (true, true) => "compact,delete".into(),
            (false, true) => "compact".into(),
            _ => "delete".into(),
        },
        "compression.type" => "producer".into(),
        "delete.retention.ms" => c.delete_retention_ms.to_string(),
        "file.delete.delay.ms" => "60000".into(),
        "flush.messages" => messages,
        "flush.ms" => ms,
        "holdfast.flush.policy" => match c.flush_policy {
            FlushPolicy::EveryAppend => "fsync".into(),
            FlushPolicy::Interval { .. } => "interval".into(),
            FlushPolicy::PageCache => "pagecache".into(),
        },
        "index.interval.bytes" => c.index_interval_bytes.to_string(),
        "max.compaction.lag.ms" => c.max_compaction_lag_ms.to_string(),
        "max.message.bytes" => c.max_message_bytes.to_string(),
        "message.timestamp.after.max.ms" => c.timestamp_after_max_ms.to_string(),
        "message.timestamp.before.max.ms" => c.timestamp_before_max_ms.to_string(),
        "message.timestamp.type" => match c.timestamp_type {
            TimestampType::CreateTime => "CreateTime".into(),
            TimestampType::LogAppendTime => "LogAppendTime".into(),
        },
        "min.compaction.lag.ms" => c.min_compaction_lag_ms.to_string(),
        "min.insync.replicas" => "1".into(),
        "preallocate" | "unclean.leader.election.enable" => "false".into(),
        "retention.bytes" => c.retention_bytes.to_string(),
        "retention.ms" => c.retention_ms.to_string(),
        "retention.protect.groups" => String::new(),
        "retention.protect.max.bytes" => crate::protect::DEFAULT_CAP_BYTES.to_string(),
        "segment.bytes" => c.segment_bytes.to_string(),
        "segment.index.bytes" => "10485760".into(),
        "segment.jitter.ms" => "0".into(),
        "segment.ms" => c.segment_ms.to_string(),
        _ => return None,
    })
}

/// Every topic config with its effective value and source, for DescribeConfigs.
pub fn describe_topic_configs(
    broker: &BrokerConfig,
    effective: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<(String, String, i8)> {
    TOPIC_CONFIG_KEYS
        .iter()
        .filter_map(|k| {
            let source = if overrides.contains_key(*k) {
                SOURCE_TOPIC
            } else if broker.log_default_overrides.contains_key(*k) {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            };
            let value = match overrides.get(*k) {
                Some(v)
                    if matches!(
                        *k,
                        "min.insync.replicas"
                            | "preallocate"
                            | "unclean.leader.election.enable"
                            | "segment.index.bytes"
                            | "segment.jitter.ms"
                            | "file.delete.delay.ms"
                            | "compression.type"
                            | "retention.protect.groups"
                            | "retention.protect.max.bytes"
                    ) =>
                {
                    v.clone()
                }
                _ => render_topic_config(effective, k)?,
            };
            Some((k.to_string(), value, source))
        })
        .collect()
}

/// Maps a broker-level log default (`log.retention.ms`) to its topic config (`retention.ms`).
fn broker_key_to_topic_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "log.segment.bytes" => "segment.bytes",
        "log.roll.ms" => "segment.ms",
        "log.index.interval.bytes" => "index.interval.bytes",
        "log.retention.ms" => "retention.ms",
        "log.retention.bytes" => "retention.bytes",
        "message.max.bytes" => "max.message.bytes",
        "log.message.timestamp.type" => "message.timestamp.type",
        "log.message.timestamp.before.max.ms" => "message.timestamp.before.max.ms",
        "log.message.timestamp.after.max.ms" => "message.timestamp.after.max.ms",
        "log.flush.interval.messages" => "flush.messages",
        "log.flush.interval.ms" => "flush.ms",
        "log.cleanup.policy" => "cleanup.policy",
        "log.cleaner.delete.retention.ms" => "delete.retention.ms",
        "log.cleaner.min.compaction.lag.ms" => "min.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms" => "max.compaction.lag.ms",
        "holdfast.flush.policy" => "holdfast.flush.policy",
        "min.insync.replicas" => "min.insync.replicas",
        "compression.type" => "compression.type",
        _ => return None,
    })
}

/// Broker settings. Keys follow Kafka's broker configuration names.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Address to bind, `host:port`.
    pub listen: String,
    /// Host and port advertised in Metadata; `None` means the bound address.
    pub advertised: Option<(String, i32)>,
    /// `num.partitions`
    pub num_partitions: i32,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `socket.request.max.bytes`
    pub socket_request_max_bytes: usize,
    /// `max.connections`
    pub max_connections: usize,
    /// `queued.max.request.bytes`: request bytes read but not yet answered, broker-wide;
    /// `None` (-1) is unbounded.
    pub queued_max_request_bytes: Option<usize>,
    /// `holdfast.max.inflight.requests.per.connection`: pipelined requests read ahead.
    pub max_inflight_per_connection: usize,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval_ms: u64,
    /// Broker-level log defaults (`log.*` keys), as topic config overrides.
    pub log_default_overrides: BTreeMap<String, String>,
    /// The log config a topic without overrides gets.
    pub log_defaults: LogConfig,
    /// Group coordinator settings (`group.*`, `offset.metadata.max.bytes`,
    /// `offsets.retention.minutes`).
    pub groups: holdfast_groups::Config,
    /// `offsets.topic.num.partitions` (Kafka: 50; Holdfast on one node: 10). Only used when
    /// `__consumer_offsets` is created.
    pub offsets_topic_partitions: i32,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
    /// Transaction coordinator settings (`transaction.max.timeout.ms`).
    pub txns: holdfast_txn::Config,
    /// `transaction.state.log.num.partitions` (Kafka: 50; Holdfast on one node: 10). Only
    /// used when `__transaction_state` is created.
    pub txn_topic_partitions: i32,
    /// `holdfast.transaction.version`: the `transaction.version` feature advertised to
    /// clients: 2 (default, KIP-890: the producer epoch is bumped on every transaction, so a
    /// delayed request of an earlier transaction can never touch a later one) or 1.
    pub transaction_version: i16,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms` (Kafka: 10000): how
    /// often open transactions are checked against their timeout.
    pub txn_timeout_check_interval_ms: u64,
    /// `broker.heartbeat.interval.ms` (cluster mode; Kafka: 2000).
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms` (cluster mode, read by the active controller; Kafka: 9000).
    pub broker_session_timeout_ms: u64,
    /// `replica.lag.time.max.ms` (cluster mode; Kafka: 30000): a follower that has not caught
    /// up to the leader's log end for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `offsets.topic.replication.factor` (cluster mode; Kafka: 3): the replication factor
    /// `__consumer_offsets` is created with. As in Kafka, FindCoordinator answers
    /// COORDINATOR_NOT_AVAILABLE until that many brokers are alive to create it.
    pub offsets_topic_replication_factor: i16,
    /// `transaction.state.log.replication.factor` (cluster mode; Kafka: 3): the replication
    /// factor `__transaction_state` is created with (min ISR 2 from the controller for RF
    /// ≥ 3, Kafka's `transaction.state.log.min.isr` default).
    pub txn_topic_replication_factor: i16,
    /// Set by `holdfast serve` in cluster mode: `__consumer_offsets` is then a replicated
    /// cluster topic (created through the controller), never a node-local one.
    pub cluster_mode: bool,
    /// `auto.leader.rebalance.enable` (cluster mode, read by the active controller; Kafka:
    /// true): leadership moves back to preferred replicas that are in the ISR.
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds` (Kafka: 300), in milliseconds.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage` (Kafka: 10).
    pub leader_imbalance_per_broker_percentage: u32,
    /// `broker.rack` (cluster mode): replicas of a new partition go to distinct racks.
    pub rack: Option<String>,
}

impl BrokerConfig {
    pub fn new(data_dir: PathBuf, listen: String) -> BrokerConfig {
        BrokerConfig {
            node_id: 1,
            data_dir,
            listen,
            advertised: None,
            num_partitions: 1,
            auto_create_topics: true,
            socket_request_max_bytes: holdfast_codec::DEFAULT_MAX_REQUEST_BYTES,
            max_connections: 1024,
            queued_max_request_bytes: Some(512 * 1024 * 1024),
            max_inflight_per_connection: 16,
            retention_check_interval_ms: 300_000,
            log_default_overrides: BTreeMap::new(),
            log_defaults: LogConfig::default(),
            groups: holdfast_groups::Config::default(),
            offsets_topic_partitions: 10,
            offsets_retention_check_interval_ms: 600_000,
            txns: holdfast_txn::Config::default(),
            txn_topic_partitions: 10,
            txn_timeout_check_interval_ms: 10_000,
            transaction_version: 2,
            broker_heartbeat_interval_ms: 2000,
            broker_session_timeout_ms: 9000,
            replica_lag_time_max_ms: 30_000,
            offsets_topic_replication_factor: 3,
            txn_topic_replication_factor: 3,
            cluster_mode: false,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            rack: None,
        }
    }

    /// Sets one broker property by its Kafka name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "node.id" | "broker.id" => self.node_id = parse_i64(key, value, 0)? as i32,
            "broker.rack" => {
                if value.len() > 255 {
                    return Err(invalid(key, value, "at most 255 bytes"));
                }
                self.rack = (!value.is_empty()).then(|| value.to_string());
            }
            "num.partitions" => {
                self.num_partitions = parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "auto.create.topics.enable" => self.auto_create_topics = parse_bool(key, value)?,
            "socket.request.max.bytes" => {
                self.socket_request_max_bytes =
                    parse_i64(key, value, 64)?.min(i32::MAX as i64) as usize
            }
            "max.connections" => self.max_connections = parse_i64(key, value, 1)? as usize,
            "queued.max.request.bytes" => {
                let n = parse_i64(key, value, -1)?;
                self.queued_max_request_bytes = if n < 0 { None } else { Some(n.max(1) as usize) };
            }
            "holdfast.max.inflight.requests.per.connection" => {
                self.max_inflight_per_connection = parse_i64(key, value, 1)?.min(1024) as usize
            }
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms = parse_i64(key, value, 1)? as u64
            }
            "group.initial.rebalance.delay.ms" => {
                self.groups.initial_rebalance_delay_ms = parse_i64(key, value, 0)?
            }
            "group.min.session.timeout.ms" => {
                self.groups.min_session_timeout_ms =
                    parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "group.max.session.timeout.ms" => {
                self.groups.max_session_timeout_ms =
                    parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "group.max.size" => self.groups.max_group_size = parse_i64(key, value, 1)? as usize,
            "group.consumer.session.timeout.ms" => {
                self.groups.consumer_session_timeout_ms =
                    parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "group.consumer.heartbeat.interval.ms" => {
                self.groups.consumer_heartbeat_interval_ms =
                    parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "holdfast.group.consumer.reconciling.heartbeat.interval.ms" => {
                self.groups.consumer_reconciling_heartbeat_interval_ms =
                    parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "holdfast.groups.max" => self.groups.max_groups = parse_i64(key, value, 1)? as usize,
            "offset.metadata.max.bytes" => {
                self.groups.max_metadata_bytes = parse_i64(key, value, 0)? as usize
            }
            "offsets.retention.minutes" => {
                self.groups.offsets_retention_ms = parse_i64(key, value, 1)?.saturating_mul(60_000)
            }
            "offsets.topic.num.partitions" => {
                self.offsets_topic_partitions = parse_i64(key, value, 1)?.min(1000) as i32
            }
            "transaction.max.timeout.ms" => {
                self.txns.max_timeout_ms = parse_i64(key, value, 1)?.min(i32::MAX as i64) as i32
            }
            "holdfast.transaction.version" => {
                self.transaction_version = parse_i64(key, value, 1)?.min(2) as i16
            }
            "transactional.id.expiration.ms" => {
                self.txns.id_expiration_ms = parse_i64(key, value, 1)?
            }
            "transaction.state.log.num.partitions" => {
                self.txn_topic_partitions = parse_i64(key, value, 1)?.min(1000) as i32
            }
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                self.txn_timeout_check_interval_ms = parse_i64(key, value, 1)? as u64
            }
            "broker.heartbeat.interval.ms" => {
                self.broker_heartbeat_interval_ms = parse_i64(key, value, 1)? as u64
            }
            "broker.session.timeout.ms" => {
                self.broker_session_timeout_ms = parse_i64(key, value, 1)? as u64
            }
            "transaction.state.log.replication.factor" => {
                self.txn_topic_replication_factor = parse_i64(key, value, 1)?.min(16) as i16
            }
            "offsets.topic.replication.factor" => {
                self.offsets_topic_replication_factor = parse_i64(key, value, 1)?.min(16) as i16
            }
            "auto.leader.rebalance.enable" => {
                self.auto_leader_rebalance_enable = parse_bool(key, value)?
            }
            "leader.imbalance.check.interval.seconds" => {
                self.leader_imbalance_check_interval_ms =
                    (parse_i64(key, value, 1)? as u64).saturating_mul(1000)
            }
            "leader.imbalance.per.broker.percentage" => {
                self.leader_imbalance_per_broker_percentage =
                    parse_i64(key, value, 0)?.min(100) as u32
            }
            "replica.lag.time.max.ms" => {
                self.replica_lag_time_max_ms = parse_i64(key, value, 1)? as u64
            }
            "offsets.retention.check.interval.ms" => {
                self.offsets_retention_check_interval_ms = parse_i64(key, value, 1)? as u64
            }
            "log.retention.hours" | "log.retention.minutes" | "log.roll.hours" => {
                let n = parse_i64(key, value, -1)?;
                let unit = if key.ends_with("hours") {
                    3_600_000
                } else {
                    60_000
                };
                let ms = if n < 0 { -1 } else { n.saturating_mul(unit) };
                let target = if key.starts_with("log.roll") {
                    "log.roll.ms"
                } else {
                    "log.retention.ms"
                };
                return self.set(target, &ms.to_string());
            }
            _ => {
                let topic_key = broker_key_to_topic_key(key)
                    .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
                let mut next = self.log_default_overrides.clone();
                next.insert(topic_key.to_string(), value.to_string());
                self.log_defaults = build_log_config(&LogConfig::default(), &next)?;
                self.log_default_overrides = next;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_overrides_apply_and_unknown_keys_fail() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        let c = build_log_config(&LogConfig::default(), &o).expect("valid");
        assert_eq!(c.retention_ms, 1000);
        assert!(c.cleanup_policy.compact && c.cleanup_policy.delete);
        o.insert("no.such".to_string(), "1".to_string());
        assert!(matches!(
            build_log_config(&LogConfig::default(), &o),
            Err(ConfigError::UnknownKey(_))
        ));
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "abc".to_string());
        assert!(matches!(
            build_log_config(&LogConfig::default(), &o),
            Err(ConfigError::InvalidValue { .. })
        ));
    }

    #[test]
    fn broker_keys_map_to_log_defaults() {
        let mut b = BrokerConfig::new("d".into(), "127.0.0.1:0".into());
        b.set("num.partitions", "4").expect("ok");
        b.set("log.retention.hours", "1").expect("ok");
        b.set("log.flush.interval.ms", "100").expect("ok");
        assert_eq!(b.num_partitions, 4);
        assert_eq!(b.log_defaults.retention_ms, 3_600_000);
        assert!(matches!(
            b.log_defaults.flush_policy,
            FlushPolicy::Interval {
                interval_ms: 100,
                ..
            }
        ));
        assert!(b.set("bogus", "1").is_err());
    }
}
