//! Broker state: topics, partitions (each with its log, leader epoch, high watermark), the
//! metadata store and the group-commit flusher.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use holdfast_log::{DurableWatch, Flusher, Log, LogConfig, LogError};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{build_log_config, BrokerConfig, ConfigError};
use crate::errors as ec;
use crate::meta::{random_uuid, MetaError, MetaStore, TopicMeta};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("log of {topic}-{partition}: {source}")]
    Log {
        topic: String,
        partition: i32,
        source: LogError,
    },
    #[error("topic {topic}: {source}")]
    Config { topic: String, source: ConfigError },
    #[error("cannot start the flusher: {0}")]
    Flusher(std::io::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("group coordinator: {0}")]
    Groups(String),
}

/// The wall clock, in milliseconds since the Unix epoch: record timestamps (LogAppendTime,
/// markers), retention, producer-state expiry, ledger entries. It can step (NTP, a resumed
/// VM), so no timeout is measured on it: see [`timer_ms`].
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Test-only negative control for the chaos harness: with
/// `HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS=1`, [`timer_ms`] is the wall clock, so timeouts step with
/// it; a cluster `clock` chaos run must then be caught (`clock-spurious-timeout`). Off unless
/// the variable is exactly `1`; read once.
fn unsafe_wall_clock_timers() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        let on = std::env::var("HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS").is_ok_and(|v| v == "1");
        if on {
            tracing::error!(
                "HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS=1: timeouts run on the wall clock and WILL \
                 expire at once when it steps forward (test-only negative control)"
            );
        }
        on
    })
}

/// Milliseconds on a clock that never steps: the wall clock read once, when first called
/// (at startup), plus the monotonic time elapsed since. Every timeout and interval runs on
/// it: ISR lag (`replica.lag.time.max.ms`), broker sessions at the controller, group sessions
/// and rebalances, transaction timeouts. A wall-clock step forward would otherwise expire
/// them all at once (spurious ISR shrinks and fencing, found by the chaos harness's
/// clock-jump fault) and a step back would keep a dead member alive for the step. Values
/// stay close to wall time, so timestamps the coordinators persist (commit and transaction
/// start times) still compare correctly with those read back after a restart.
pub fn timer_ms() -> i64 {
    if unsafe_wall_clock_timers() {
        return now_ms();
    }
    static START: std::sync::OnceLock<(std::time::Instant, i64)> = std::sync::OnceLock::new();
    let (at, wall_ms) = *START.get_or_init(|| (std::time::Instant::now(), now_ms()));
    wall_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Mutable state of a partition, behind its lock. Blocking file I/O happens under it, so it
/// is only taken on blocking threads (`spawn_blocking`), never on a tokio worker for long.
pub struct PartitionState {
    /// `None` once the partition is closed or deleted.
    pub log: Option<Log>,
    pub leader_epoch: i32,
}

/// One partition this broker leads. With one replica the high watermark is what is durable
/// (fsync policy) or the log end (page-cache / interval policies).
pub struct Partition {
    pub topic: String,
    pub index: i32,
    state: Mutex<PartitionState>,
    durable: Arc<DurableWatch>,
    log_end: AtomicI64,
    log_start: AtomicI64,
    waits_fsync: AtomicBool,
    /// High watermark floor: the HW never moves back.
    hw: AtomicI64,
    /// Copy of `PartitionState::leader_epoch` for readers that must not take the lock.
    epoch_copy: std::sync::atomic::AtomicI32,
    /// This broker leads the partition. Always true on a single node; in cluster mode the
    /// metadata publisher sets it from the image (`crate::cluster`).
    leads: AtomicBool,
    /// Cluster mode: the replication role (leader or follower state machine). When set, the
    /// high watermark is the one it computes (`hw`), not the local durable end.
    pub(crate) repl: Mutex<Option<crate::cluster::replica::Repl>>,
    replicated: AtomicBool,
}

impl Partition {
    pub(crate) fn new(topic: &str, index: i32, log: Log) -> Partition {
        let p = Partition {
            topic: topic.to_string(),
            index,
            durable: log.durable(),
            log_end: AtomicI64::new(0),
            log_start: AtomicI64::new(0),
            waits_fsync: AtomicBool::new(log.config().flush_policy.ack_waits_for_fsync()),
            hw: AtomicI64::new(0),
            epoch_copy: std::sync::atomic::AtomicI32::new(0),
            state: Mutex::new(PartitionState {
                log: None,
                leader_epoch: 0,
            }),
            leads: AtomicBool::new(true),
            repl: Mutex::new(None),
            replicated: AtomicBool::new(false),
        };
        p.refresh(&log);
        // Recovered data was validated on open and is in the file: it is visible.
        p.hw.store(log.log_end_offset(), Ordering::SeqCst);
        lock(&p.state).log = Some(log);
        p
    }

    /// A partition of a cluster topic that this broker does not host (cluster mode): no
    /// log, never led here.
    pub(crate) fn absent(topic: &str, index: i32) -> Partition {
        Partition {
            topic: topic.to_string(),
            index,
            durable: DurableWatch::new(0),
            log_end: AtomicI64::new(0),
            log_start: AtomicI64::new(0),
            waits_fsync: AtomicBool::new(true),
            hw: AtomicI64::new(0),
            epoch_copy: std::sync::atomic::AtomicI32::new(0),
            state: Mutex::new(PartitionState {
                log: None,
                leader_epoch: 0,
            }),
            leads: AtomicBool::new(false),
            repl: Mutex::new(None),
            replicated: AtomicBool::new(false),
        }
    }

    /// Cluster mode: a hosted partition whose high watermark comes from replication. Its HW
    /// starts at 0 (recovered data past the last committed HW may not be on the ISR) and is
    /// raised only by the leader or follower state machine.
    pub(crate) fn new_replicated(topic: &str, index: i32, log: Log) -> Partition {
        let p = Partition::new(topic, index, log);
        p.hw.store(0, Ordering::SeqCst);
        p.replicated.store(true, Ordering::SeqCst);
        p.leads.store(false, Ordering::SeqCst);
        p
    }

    pub(crate) fn is_replicated(&self) -> bool {
        self.replicated.load(Ordering::SeqCst)
    }

    pub(crate) fn repl(&self) -> MutexGuard<'_, Option<crate::cluster::replica::Repl>> {
        lock(&self.repl)
    }

    /// Cluster mode: raises the served high watermark (from `LeaderState`/`FollowerState`).
    /// Asserts it never passes the local durable end.
    pub(crate) fn raise_hw(&self, hw: i64) {
        if hw <= self.hw.load(Ordering::SeqCst) {
            return;
        }
        assert!(
            hw <= self.durable.durable_end(),
            "{}-{}: HW {hw} past the durable end {}",
            self.topic,
            self.index,
            self.durable.durable_end()
        );
        self.hw.fetch_max(hw, Ordering::SeqCst);
    }

    /// Cluster mode: after a truncation below the served HW (a follower of a new leader whose
    /// log diverged; never for data a clean election committed) the HW follows the log end.
    pub(crate) fn lower_hw_after_truncation(&self, end: i64) {
        self.hw.fetch_min(end, Ordering::SeqCst);
    }

    pub fn lock(&self) -> MutexGuard<'_, PartitionState> {
        lock(&self.state)
    }

    /// Whether this broker serves the partition as its leader.
    pub fn is_leader(&self) -> bool {
        self.leads.load(Ordering::SeqCst)
    }

    /// Cluster mode: the role and leader epoch from the metadata image. Leader epochs seen by
    /// a partition only grow (asserted: images are applied in log order).
    pub(crate) fn set_role(&self, leads: bool, leader_epoch: i32) {
        let mut st = self.lock();
        assert!(
            leader_epoch >= st.leader_epoch,
            "{}-{}: leader epoch went back from {} to {leader_epoch}",
            self.topic,
            self.index,
            st.leader_epoch
        );
        st.leader_epoch = leader_epoch;
        self.epoch_copy.store(leader_epoch, Ordering::SeqCst);
        self.leads
            .store(leads && st.log.is_some(), Ordering::SeqCst);
    }

    pub fn durable(&self) -> &Arc<DurableWatch> {
        &self.durable
    }

    /// Caches the log's offsets; call with the lock held after any change.
    pub fn refresh(&self, log: &Log) {
        self.log_end.store(log.log_end_offset(), Ordering::SeqCst);
        self.log_start
            .store(log.log_start_offset(), Ordering::SeqCst);
        self.waits_fsync.store(
            log.config().flush_policy.ack_waits_for_fsync(),
            Ordering::SeqCst,
        );
    }

    /// The leader epoch, without taking the partition lock (Metadata).
    pub fn leader_epoch(&self) -> i32 {
        self.epoch_copy.load(Ordering::SeqCst)
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end.load(Ordering::SeqCst)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::SeqCst)
    }

    pub fn waits_fsync(&self) -> bool {
        self.waits_fsync.load(Ordering::SeqCst)
    }

    /// The high watermark: the end of what consumers may see.
    pub fn high_watermark(&self) -> i64 {
        if self.is_replicated() {
            return self.hw.load(Ordering::SeqCst);
        }
        let leo = self.log_end_offset();
        let candidate = if self.waits_fsync() {
            self.durable.durable_end().min(leo)
        } else {
            leo
        };
        let prev = self.hw.fetch_max(candidate, Ordering::SeqCst);
        prev.max(candidate)
    }
}

pub struct Topic {
    /// In cluster mode `meta.config` holds the topic's explicit configs from the image.
    pub meta: TopicMeta,
    pub log_config: LogConfig,
    pub partitions: Vec<Arc<Partition>>,
}

/// The broker: everything the request handlers share.
pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    pub(crate) meta: MetaStore,
    flusher: Flusher,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and deletion.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Bumped whenever a high watermark may have advanced or topics changed: wakes fetches.
    data_tx: watch::Sender<u64>,
    producer_ids: Mutex<(i64, i64)>,
    advertised: OnceLock<(String, i32)>,
    stopping: AtomicBool,
    pub(crate) fetch_sessions: crate::fetch::FetchSessions,
    pub(crate) groups: crate::groups::GroupService,
    pub(crate) txns: crate::txn::TxnService,
    /// Set when the broker runs as a node of a cluster (`crate::cluster`); unset on a single
    /// node, whose behaviour does not change.
    pub(crate) cluster: OnceLock<Arc<crate::cluster::Cluster>>,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

impl Broker {
    /// Opens the data directory: metadata, then every partition log (recovering them).
    /// Blocking.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        // Reads (and loudly logs) the test-only negative-control switch once, at start.
        crate::handlers::unsafe_ack_before_fsync();
        crate::handlers::unsafe_no_dedup_from_env();
        crate::handlers::unsafe_lso_off_by_one();
        crate::groups::unsafe_offsets_no_fsync();
        std::fs::create_dir_all(&config.data_dir)?;
        let meta = MetaStore::open(&config.data_dir)?;
        let cluster_id = meta.cluster_id()?;
        let flusher = Flusher::start().map_err(BrokerError::Flusher)?;
        let mut topics = BTreeMap::new();
        for tm in meta.load_topics()? {
            if config.cluster_mode
                && (tm.name == crate::groups::OFFSETS_TOPIC || tm.name == crate::txn::TXN_TOPIC)
            {
                // A node-local `__consumer_offsets` of an earlier version (never served in
                // cluster mode): forgotten; its directories lack `partition.metadata`, so the
                // publisher deletes them before the replicated topic opens there.
                tracing::warn!(topic = %tm.name, "forgetting a node-local internal topic (cluster mode)");
                meta.remove_topic(&tm.name)?;
                continue;
            }
            let log_config =
                build_log_config(&config.log_defaults, &tm.config).map_err(|source| {
                    BrokerError::Config {
                        topic: tm.name.clone(),
                        source,
                    }
                })?;
            let mut partitions = Vec::new();
            for p in 0..tm.partitions {
                let log = open_log(&config.data_dir, &tm.name, p, &log_config, &flusher)?;
                partitions.push(Arc::new(Partition::new(&tm.name, p, log)));
            }
            tracing::info!(topic = %tm.name, partitions = tm.partitions, "topic loaded");
            topics.insert(
                tm.name.clone(),
                Arc::new(Topic {
                    meta: tm,
                    log_config,
                    partitions,
                }),
            );
        }
        let (data_tx, _) = watch::channel(0);
        let groups = crate::groups::GroupService::new(
            config.groups.clone(),
            config.offsets_topic_partitions,
            config.offsets_retention_check_interval_ms,
        );
        let txns = crate::txn::TxnService::new(
            config.txns.clone(),
            config.txn_topic_partitions,
            config.txn_timeout_check_interval_ms,
        );
        let broker = Arc::new(Broker {
            config,
            cluster_id,
            meta,
            flusher,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            data_tx,
            producer_ids: Mutex::new((0, 0)),
            advertised: OnceLock::new(),
            stopping: AtomicBool::new(false),
            fetch_sessions: Default::default(),
            groups,
            txns,
            cluster: OnceLock::new(),
        });
        if broker.config.cluster_mode {
            // Loaded per partition as this node becomes its leader (cluster::coord).
            broker.groups().enable_cluster();
            // Likewise for `__transaction_state` (cluster::txn).
            broker.txns().enable_cluster();
        } else {
            broker.load_groups().map_err(BrokerError::Groups)?;
            broker.load_txns().map_err(BrokerError::Groups)?;
        }
        Ok(broker)
    }

    pub fn set_advertised(&self, host: String, port: i32) {
        let _ = self.advertised.set((host, port));
    }

    pub fn advertised(&self) -> (String, i32) {
        self.advertised
            .get()
            .cloned()
            .unwrap_or_else(|| ("localhost".to_string(), 9092))
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.meta.id == id)
            .cloned()
    }

    /// The group-commit flusher's counters and fsync latency histogram (metrics).
    pub fn flush_stats(&self) -> &holdfast_log::FlushStats {
        self.flusher.stats()
    }

    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The partition, if this broker leads it (always, on a single node).
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let t = self.topic(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .filter(|p| p.is_leader())
            .cloned()
    }

    /// Cluster mode: installs (or replaces) a topic built by the metadata publisher.
    pub(crate) fn install_topic(&self, topic: Arc<Topic>) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.meta.name.clone(), topic);
        self.notify_data();
    }

    /// Cluster mode: removes a topic from the map (the caller deletes its logs).
    pub(crate) fn uninstall_topic(&self, name: &str) -> Option<Arc<Topic>> {
        let t = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.notify_data();
        t
    }

    /// Opens (creating if needed) the log of one partition (blocking).
    pub(crate) fn open_partition_log(
        &self,
        topic: &str,
        p: i32,
        cfg: &LogConfig,
    ) -> Result<Log, BrokerError> {
        let log = open_log(&self.config.data_dir, topic, p, cfg, &self.flusher)?;
        if let (Some(c), Some(corruption)) = (self.cluster(), log.corruption()) {
            // Data this replica held (and may have acknowledged as an ISR member) is gone:
            // it must not stay eligible to lead (crate::cluster, "damaged").
            c.mark_damaged(topic, p, corruption.offset);
        }
        Ok(log)
    }

    /// Shutdown started: long polls answer now instead of waiting out `max_wait_ms`.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify_data();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn subscribe_data(&self) -> watch::Receiver<u64> {
        self.data_tx.subscribe()
    }

    pub fn notify_data(&self) {
        self.data_tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Creates a topic (blocking). Returns its id, or a Kafka error code and message.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, (i16, String)> {
        validate_topic_name(name)?;
        if self.topic(name).is_some() {
            return Err((
                ec::TOPIC_ALREADY_EXISTS,
                format!("Topic '{name}' already exists."),
            ));
        }
        if partitions < 1 {
            return Err((
                ec::INVALID_PARTITIONS,
                "Number of partitions must be larger than 0.".into(),
            ));
        }
        if partitions > 100_000 {
            return Err((
                ec::INVALID_PARTITIONS,
                "Too many partitions for one broker.".into(),
            ));
        }
        let log_config = build_log_config(&self.config.log_defaults, &config)
            .map_err(|e| (ec::INVALID_CONFIG, e.to_string()))?;
        let meta = TopicMeta {
            name: name.to_string(),
            id: random_uuid(),
            partitions,
            config,
        };
        if validate_only {
            return Ok(meta);
        }
        self.meta
            .save_topic(&meta)
            .map_err(|e| (ec::KAFKA_STORAGE_ERROR, e.to_string()))?;
        let mut parts = Vec::new();
        for p in 0..partitions {
            match open_log(&self.config.data_dir, name, p, &log_config, &self.flusher) {
                Ok(log) => parts.push(Arc::new(Partition::new(name, p, log))),
                Err(e) => {
                    tracing::error!(topic = name, partition = p, error = %e, "cannot create partition log");
                    for part in parts {
                        if let Some(log) = part.lock().log.take() {
                            let _ = log.delete();
                        }
                    }
                    let _ = self.meta.remove_topic(name);
                    return Err((ec::KAFKA_STORAGE_ERROR, e.to_string()));
                }
            }
        }
        tracing::info!(topic = name, partitions, id = %meta.id, "topic created");
        let topic = Arc::new(Topic {
            meta: meta.clone(),
            log_config,
            partitions: parts,
        });
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), topic);
        self.notify_data();
        Ok(meta)
    }

    /// Replaces a topic's config overrides (blocking): validated, persisted, then applied to
    /// every partition's log.
    pub fn set_topic_config(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let topic = self.topic(name).ok_or((
            ec::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".to_string(),
        ))?;
        let log_config = build_log_config(&self.config.log_defaults, &overrides)
            .map_err(|e| (ec::INVALID_CONFIG, e.to_string()))?;
        if let Some(c) = self.cluster.get() {
            // Cluster mode: the controller records the change; the publisher applies it.
            return c.set_topic_configs_blocking(
                &topic.meta.config,
                name,
                overrides,
                validate_only,
            );
        }
        if validate_only {
            return Ok(());
        }
        let mut meta = topic.meta.clone();
        meta.config = overrides;
        self.meta
            .save_topic(&meta)
            .map_err(|e| (ec::KAFKA_STORAGE_ERROR, e.to_string()))?;
        for p in &topic.partitions {
            let mut st = p.lock();
            if let Some(log) = st.log.as_mut() {
                log.set_config(log_config.clone());
                p.refresh(log);
            }
        }
        let updated = Arc::new(Topic {
            meta,
            log_config,
            partitions: topic.partitions.clone(),
        });
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), updated);
        tracing::info!(topic = name, "topic config changed");
        self.notify_data();
        Ok(())
    }

    /// Grows a topic to `count` partitions (blocking).
    pub fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let topic = self.topic(name).ok_or((
            ec::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".to_string(),
        ))?;
        let current = topic.meta.partitions;
        if count <= current {
            let msg = if count == current {
                format!("Topic already has {current} partitions.")
            } else {
                format!("Topic currently has {current} partitions, which is higher than the requested {count}.")
            };
            return Err((ec::INVALID_PARTITIONS, msg));
        }
        if count > 100_000 {
            return Err((
                ec::INVALID_PARTITIONS,
                "Too many partitions for one broker.".into(),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let mut meta = topic.meta.clone();
        meta.partitions = count;
        let mut parts = topic.partitions.clone();
        for p in current..count {
            match open_log(
                &self.config.data_dir,
                name,
                p,
                &topic.log_config,
                &self.flusher,
            ) {
                Ok(log) => parts.push(Arc::new(Partition::new(name, p, log))),
                Err(e) => {
                    for part in &parts[current as usize..] {
                        if let Some(log) = part.lock().log.take() {
                            let _ = log.delete();
                        }
                    }
                    return Err((ec::KAFKA_STORAGE_ERROR, e.to_string()));
                }
            }
        }
        // Logs first, then the metadata: a crash in between leaves empty directories that the
        // next CreatePartitions reopens.
        self.meta
            .save_topic(&meta)
            .map_err(|e| (ec::KAFKA_STORAGE_ERROR, e.to_string()))?;
        let grown = Arc::new(Topic {
            meta,
            log_config: topic.log_config.clone(),
            partitions: parts,
        });
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), grown);
        tracing::info!(topic = name, from = current, to = count, "partitions added");
        self.notify_data();
        Ok(())
    }

    /// Deletes a topic and its partition directories (blocking).
    pub fn delete_topic(&self, name: &str) -> Result<Uuid, (i16, String)> {
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or((
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                "This server does not host this topic-partition.".to_string(),
            ))?;
        for p in &topic.partitions {
            let log = p.lock().log.take();
            if let Some(log) = log {
                if let Err(e) = log.delete() {
                    tracing::error!(topic = name, partition = p.index, error = %e, "cannot delete partition directory");
                }
            }
        }
        self.meta
            .remove_topic(name)
            .map_err(|e| (ec::KAFKA_STORAGE_ERROR, e.to_string()))?;
        tracing::info!(topic = name, "topic deleted");
        self.notify_data();
        Ok(topic.meta.id)
    }

    /// Partitions of `__consumer_offsets`.
    /// Allocates a producer id from a persisted block (blocking when a new block is needed).
    pub fn allocate_producer_id(&self) -> Result<i64, MetaError> {
        let mut ids = lock(&self.producer_ids);
        if ids.0 >= ids.1 {
            let start = self.meta.reserve_producer_ids(PRODUCER_ID_BLOCK)?;
            *ids = (start, start + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Periodic log maintenance (blocking): interval flushes, segment rolls, retention.
    pub fn tick(&self, retention: bool) {
        let now = now_ms();
        let mut changed = false;
        // Log starts moved by retention, for the loss ledger (checked off the partition lock).
        let mut deleted: Vec<(Arc<Partition>, i64, i64)> = Vec::new();
        // Protected retention needs the committed offsets, read before any partition lock.
        let topics = self.all_topics();
        let committed: crate::protect::Committed = if retention
            && topics
                .iter()
                .any(|t| !crate::protect::groups(&t.meta).is_empty())
        {
            self.groups()
                .committed_offsets()
                .into_iter()
                .map(|(g, t, p, o)| ((g, t, p), o))
                .collect()
        } else {
            Default::default()
        };
        for t in topics {
            for p in &t.partitions {
                let before = (p.high_watermark(), p.log_start_offset());
                let mut st = p.lock();
                let Some(log) = st.log.as_mut() else { continue };
                if let Err(e) = log.tick(now) {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "log tick failed");
                }
                if retention {
                    let old_start = log.log_start_offset();
                    let enforced = match crate::protect::floor(&t.meta, p.index, &committed) {
                        Some((from, cap)) => log.enforce_retention_protecting(now, from, cap),
                        None => log.enforce_retention(now),
                    };
                    match enforced {
                        Ok(r) if r.segments_deleted > 0 => {
                            tracing::info!(topic = %p.topic, partition = p.index, segments = r.segments_deleted, log_start = r.log_start_offset, "retention deleted segments");
                            deleted.push((Arc::clone(p), old_start, r.log_start_offset));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                        }
                    }
                }
                let plan = if retention {
                    log.compaction_plan(now)
                } else {
                    None
                };
                p.refresh(log);
                drop(st);
                if let Some(plan) = plan {
                    // The cleaner reads and writes closed segments without the partition
                    // lock; only the swap of cleaned segments takes it.
                    Self::compact(p, plan);
                }
                changed |= before != (p.high_watermark(), p.log_start_offset());
            }
        }
        // Interval flushes move the high watermark, retention the log start: wake fetches.
        if changed {
            self.notify_data();
        }
        for (p, old_start, new_start) in deleted {
            crate::ledger::retention_deleted(self, &p.topic, p.index, old_start, new_start);
        }
        crate::ledger::flush(self);
    }

    fn compact(p: &Partition, plan: holdfast_log::CompactionPlan) {
        let out = match plan.run() {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed");
                return;
            }
        };
        let mut st = p.lock();
        let Some(log) = st.log.as_mut() else { return };
        match log.install_compaction(out) {
            Ok(r) if r.segments_rewritten > 0 => tracing::info!(
                topic = %p.topic,
                partition = p.index,
                segments = r.segments_rewritten,
                bytes_before = r.bytes_before,
                bytes_after = r.bytes_after,
                records_removed = r.records_removed,
                "compacted"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "installing compaction failed")
            }
        }
    }

    /// Closes every log cleanly and stops the flusher (blocking).
    pub fn shutdown(&self) {
        for t in self.all_topics() {
            for p in &t.partitions {
                let log = p.lock().log.take();
                if let Some(log) = log {
                    if let Err(e) = log.close() {
                        tracing::error!(topic = %p.topic, partition = p.index, error = %e, "unclean log close");
                    }
                }
            }
        }
        self.flusher.shutdown();
        tracing::info!("logs closed");
    }
}

fn open_log(
    data_dir: &std::path::Path,
    topic: &str,
    p: i32,
    cfg: &LogConfig,
    flusher: &Flusher,
) -> Result<Log, BrokerError> {
    let dir: PathBuf = data_dir.join(format!("{topic}-{p}"));
    let (log, report) =
        Log::open(&dir, cfg.clone(), flusher.clone(), now_ms()).map_err(|source| {
            BrokerError::Log {
                topic: topic.to_string(),
                partition: p,
                source,
            }
        })?;
    if let Some((offset, bytes, reason)) = &report.truncated {
        crate::ledger::record(crate::ledger::Event {
            time_ms: now_ms(),
            reason: crate::ledger::TRUNCATION,
            topic: topic.to_string(),
            partition: p,
            from_offset: *offset,
            to_offset: -1,
            records: 0,
            group: None,
            detail: format!(
                "recovery cut {bytes} bytes from offset {offset} ({reason}); under the fsync policy none of it was acknowledged"
            ),
        });
    }
    if report.truncated.is_some() || report.corruption.is_some() {
        tracing::warn!(
            topic,
            partition = p,
            ?report,
            "partition recovered with damage"
        );
    } else if !report.clean_shutdown && report.log_end_offset > 0 {
        tracing::info!(
            topic,
            partition = p,
            ?report,
            "partition recovered after an unclean stop"
        );
    } else {
        tracing::debug!(
            topic,
            partition = p,
            log_end = report.log_end_offset,
            "partition opened"
        );
    }
    Ok(log)
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), (i16, String)> {
    let bad = |why: &str| {
        Err((
            ec::INVALID_TOPIC_EXCEPTION,
            format!("Topic name '{name}' is illegal: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("it cannot be '.' or '..'");
    }
    if name.len() > 249 {
        return bad("it is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("it contains characters other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}
