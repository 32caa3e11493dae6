//! Cluster mode v0 (docs/cluster.md, design §1.7-§1.9 and §6 step 3): the broker as one node
//! of a cluster on the Raft metadata quorum.
//!
//! * [`props`]: `meta.properties` (formatting, the checks at start).
//! * [`sm`]: the quorum's state machine: committed `Record`s applied to a `MetadataImage`,
//!   published on a `watch`.
//! * [`controller`]: the quorum's `AppHandler`, the active controller on the Raft leader.
//! * [`publisher`]: reconciles the local partitions with the latest image.
//! * [`api`]: the Kafka APIs that differ in cluster mode (Metadata, admin forwarded to the
//!   controller, NOT_LEADER_OR_FOLLOWER for partitions led elsewhere).
//! * [`replica`]: partition replication (follower fetchers, leader state, AlterPartition).
//! * [`coord`]: the group coordinator follows the leadership of `__consumer_offsets`.
//! * [`ops`]: leader elections as operations (ElectLeaders).
//! * the broker lifecycle (registration, heartbeats) lives here.
//!
//! Controlled shutdown ([`Cluster::controlled_shutdown`]) runs while the broker still serves:
//! the controller moves its leaderships first, then the listener stops.
//!
//! Limits: no auto-creation,
//! no transaction coordinator (FindCoordinator(TRANSACTION) answers COORDINATOR_NOT_AVAILABLE).

pub mod api;
pub mod controller;
pub(crate) mod coord;
pub mod ops;
pub mod props;
pub mod publisher;
pub(crate) mod reassign;
pub mod replica;
pub mod sm;
pub(crate) mod throttle;
pub(crate) mod txn;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_metadata::{ControllerConfig, Endpoint, MetadataImage};
use holdfast_quorum::{Quorum, QuorumConfig, QuorumError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::Broker;
use controller::{Answer, Call, ControllerService, Envelope};

pub use props::{MetaProperties, PropsError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    #[error("malformed controller answer: {0}")]
    Decode(String),
    #[error("the controller answered error {code}: {message}")]
    Controller { code: i16, message: String },
    #[error("no active controller answered in time")]
    Timeout,
    #[error("invalid cluster configuration: {0}")]
    Config(String),
}

/// Settings of a cluster node.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: i32,
    pub cluster_id: String,
    pub controller_listen: SocketAddr,
    pub voters: BTreeMap<u64, SocketAddr>,
    /// This node was formatted with `--bootstrap`.
    pub bootstrap: bool,
    /// Host and port advertised to clients.
    pub advertised: (String, i32),
    /// `broker.heartbeat.interval.ms`
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`
    pub session_timeout_ms: u64,
}

/// Parses `--controller-quorum-voters`: `1@host:port,2@host:port,...` (Kafka's format).
pub fn parse_voters(s: &str) -> Result<BTreeMap<u64, SocketAddr>, ClusterError> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (id, addr) = item.split_once('@').ok_or_else(|| {
            ClusterError::Config(format!("voter {item:?}: expected id@host:port"))
        })?;
        let id: u64 = id
            .parse()
            .map_err(|_| ClusterError::Config(format!("voter {item:?}: bad id")))?;
        let addr = resolve(addr)?;
        if out.insert(id, addr).is_some() {
            return Err(ClusterError::Config(format!("voter {id} given twice")));
        }
    }
    if out.is_empty() {
        return Err(ClusterError::Config("no voters".into()));
    }
    Ok(out)
}

/// Resolves `host:port` to one socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Config(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Config(format!("{addr}: no address")))
}

/// A running cluster node (the broker side of it).
pub struct Cluster {
    pub(crate) node_id: i32,
    pub(crate) cluster_id: String,
    quorum: Arc<Quorum>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    /// The image index the publisher has reconciled the local partitions with.
    reconciled_rx: watch::Receiver<u64>,
    /// -1 until registered.
    broker_epoch: AtomicI64,
    /// True once this incarnation has registered, its partitions reflect the image up to its
    /// own registration record (Kafka's initial metadata catch-up before a broker processes
    /// requests) and the controller has unfenced it. Until then a restarted node could answer
    /// from an image older than what clients already saw (a topic missing, a stale leader), or
    /// with an empty broker list.
    caught_up: watch::Sender<bool>,
    /// Set once a controlled shutdown began: heartbeats ask for it from then on.
    shutting_down: AtomicBool,
    /// Reassignment throttles (leader and follower limiters).
    pub(crate) throttles: throttle::Throttles,
    /// Set when a partition log opened with corruption (`Log::corruption`): this node lost
    /// data it may have acknowledged, so it registers as after an unclean shutdown (KIP-966:
    /// it leaves every ELR), re-registering if it had claimed a durable restart.
    damaged: AtomicBool,
    /// The current producer-id block `[next, end)`.
    pub(crate) producer_ids: tokio::sync::Mutex<(i64, i64)>,
    stop_tx: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Set when the node must stop (e.g. the metadata log belongs to another cluster).
    fatal_rx: watch::Receiver<Option<String>>,
}

/// Deadline of one forwarded admin operation (Kafka's default request timeout is 30 s).
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Longest wait for the controller to confirm a controlled shutdown (Kafka's KRaft broker
/// waits up to 5 minutes). Short, because the last node of a cluster whose quorum is gone
/// waits it out in full; moving leaderships takes milliseconds when a controller is there.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Starts the quorum member, the controller service, the publisher and the broker
    /// lifecycle, and attaches the cluster to `broker`.
    pub async fn start(
        broker: &Arc<Broker>,
        cfg: ClusterConfig,
    ) -> Result<Arc<Cluster>, ClusterError> {
        if cfg.node_id < 0 {
            return Err(ClusterError::Config("node id must be >= 0".into()));
        }
        let (sm, image_rx) = sm::MetadataSm::new();
        let controller_config = ControllerConfig {
            session_timeout_ms: cfg.session_timeout_ms as i64,
            auto_leader_rebalance_enable: broker.config.auto_leader_rebalance_enable,
            leader_imbalance_check_interval_ms: broker.config.leader_imbalance_check_interval_ms
                as i64,
            leader_imbalance_per_broker_percentage: broker
                .config
                .leader_imbalance_per_broker_percentage,
            ..ControllerConfig::default()
        };
        // Random per process start: tells this registration from earlier ones.
        let incarnation = crate::meta::random_uuid().as_u128();
        let svc = Arc::new(ControllerService::new(
            cfg.node_id as u64,
            incarnation,
            cfg.cluster_id.clone(),
            controller_config,
            image_rx.clone(),
        ));
        let mut qcfg = QuorumConfig::new(
            cfg.node_id as u64,
            cfg.cluster_id.clone(),
            broker.config.data_dir.clone(),
            cfg.controller_listen,
            cfg.voters.clone(),
        );
        qcfg.bootstrap = cfg.bootstrap;
        let quorum = Arc::new(
            Quorum::start(
                qcfg,
                Box::new(sm),
                Arc::new(controller::Handler(Arc::clone(&svc))),
            )
            .await?,
        );
        svc.set_quorum(&quorum);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (reconciled_tx, reconciled_rx) = watch::channel(0u64);
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let cluster = Arc::new(Cluster {
            node_id: cfg.node_id,
            cluster_id: cfg.cluster_id.clone(),
            quorum,
            image_rx: image_rx.clone(),
            reconciled_rx,
            broker_epoch: AtomicI64::new(-1),
            caught_up: watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            throttles: throttle::Throttles::default(),
            damaged: AtomicBool::new(false),
            stop_tx,
            tasks: std::sync::Mutex::new(Vec::new()),
            fatal_rx,
        });
        if broker.cluster.set(Arc::clone(&cluster)).is_err() {
            return Err(ClusterError::Config("cluster already started".into()));
        }
        let tasks = vec![
            tokio::spawn(Arc::clone(&svc).tick_loop(stop_rx.clone())),
            tokio::spawn(publisher::run(
                Arc::clone(broker),
                publisher::Me {
                    node_id: cfg.node_id,
                    incarnation,
                    cluster_id: cfg.cluster_id.clone(),
                },
                image_rx,
                reconciled_tx,
                fatal_tx,
                stop_rx.clone(),
            )),
            tokio::spawn(coord::run(Arc::clone(broker), stop_rx.clone())),
            tokio::spawn(txn::run(Arc::clone(broker), stop_rx.clone())),
            tokio::spawn(replica::manager(
                Arc::clone(broker),
                Arc::clone(&cluster),
                broker.config.replica_lag_time_max_ms as i64,
                stop_rx.clone(),
            )),
            tokio::spawn(lifecycle(
                Arc::clone(broker),
                Arc::clone(&cluster),
                cfg.clone(),
                incarnation,
                stop_rx,
            )),
        ];
        *cluster.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        tracing::info!(
            node = cfg.node_id,
            cluster_id = %cfg.cluster_id,
            controller_listen = %cfg.controller_listen,
            voters = ?cfg.voters,
            bootstrap = cfg.bootstrap,
            "cluster mode"
        );
        Ok(cluster)
    }

    /// The latest applied metadata image.
    /// A partition log of this node opened with corruption (see the `damaged` field).
    pub(crate) fn mark_damaged(&self, topic: &str, partition: i32, offset: i64) {
        if !self.damaged.swap(true, Ordering::SeqCst) {
            tracing::error!(topic, partition, offset, "a partition log is corrupt: this node registers as after an unclean shutdown and leaves every eligible-leader set");
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image_rx.borrow().clone()
    }

    /// The Raft leader (the active controller), as this node knows it.
    pub fn controller_id(&self) -> Option<u64> {
        *self.quorum.leader_watch().borrow()
    }

    /// The cluster id from `meta.properties`.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::SeqCst)
    }

    /// Resolves with a reason when the node must stop.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal_rx.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The publisher ended (shutdown): never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sends a request to the active controller, retrying while there is none.
    pub(crate) async fn call(
        &self,
        call: &Call,
        timeout: Duration,
    ) -> Result<Envelope, ClusterError> {
        let bytes = serde_json::to_vec(call).map_err(|e| ClusterError::Decode(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClusterError::Timeout);
            }
            // Bounded here too: when this node leads the quorum, `call_leader` serves the call
            // in-process, and that path has no deadline of its own (a stuck proposal behind the
            // controller's lock would hold the caller, e.g. an AlterPartition, forever).
            let raw = tokio::time::timeout(left, self.quorum.call_leader(bytes.clone(), left))
                .await
                .map_err(|_| ClusterError::Timeout)??;
            let env: Envelope =
                serde_json::from_slice(&raw).map_err(|e| ClusterError::Decode(e.to_string()))?;
            match env.answer {
                Answer::NotController => {
                    // The leader we reached is stepping down or not yet active.
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                _ => return Ok(env),
            }
        }
    }

    /// Waits (at most `timeout`) until the node has caught up with the metadata log after its
    /// start; true when it has.
    pub(crate) async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the local partitions reflect the image at `index` (false on timeout).
    pub(crate) async fn wait_reconciled(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.reconciled_rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A producer id from this broker's block, asking the controller for a new block when
    /// it is used up.
    pub(crate) async fn allocate_producer_id(&self) -> Result<i64, ClusterError> {
        let mut ids = self.producer_ids.lock().await;
        if ids.0 >= ids.1 {
            let env = self
                .call(
                    &Call::AllocateProducerIds {
                        broker_id: self.node_id,
                        broker_epoch: self.broker_epoch(),
                    },
                    ADMIN_TIMEOUT,
                )
                .await?;
            match env.answer {
                Answer::ProducerIds { start, len } => *ids = (start, start + i64::from(len)),
                Answer::Error { code, message } => {
                    return Err(ClusterError::Controller { code, message })
                }
                other => return Err(ClusterError::Decode(format!("{other:?}"))),
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Kafka's controlled shutdown, run while the broker still serves clients: heartbeats
    /// with `want_shutdown` until the controller answers `should_shut_down`, at most
    /// `SHUTDOWN_WAIT`. The controller first moves every leadership of this broker to another
    /// ISR member (new leader epochs) and takes it out of the ISRs; the publisher demotes the
    /// local partitions as the image arrives, so clients get NOT_LEADER_OR_FOLLOWER (pending
    /// acks=all requests too) and go to the new leaders while this listener is still up. Once
    /// every other active broker has applied the moves, the controller fences this broker
    /// and answers `should_shut_down`.
    ///
    /// Returns how long the moves took (until the local image shows this broker leading
    /// nothing) and whether the controller confirmed.
    pub async fn controlled_shutdown(&self) -> (Option<Duration>, bool) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let epoch = self.broker_epoch();
        if epoch < 0 {
            return (None, false);
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        let leads_nothing =
            |image: &MetadataImage| !image.partitions().any(|(_, _, p)| p.leader == self.node_id);
        let mut moved: Option<Duration> = None;
        let mut image_rx = self.image_rx.clone();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!("controlled shutdown not confirmed in time; stopping anyway");
                return (moved, false);
            }
            let call = Call::Heartbeat {
                id: self.node_id,
                broker_epoch: epoch,
                metadata_offset: self.image().last_applied as i64,
                want_shutdown: true,
            };
            match self.call(&call, left).await {
                Ok(Envelope {
                    index,
                    answer:
                        Answer::Heartbeat {
                            should_shut_down, ..
                        },
                }) => {
                    if moved.is_none()
                        && self.wait_reconciled(index, left).await
                        && leads_nothing(&self.image())
                    {
                        let d = started.elapsed();
                        tracing::info!(
                            ms = d.as_millis() as u64,
                            "controlled shutdown: leadership moved to other replicas"
                        );
                        moved = Some(d);
                    }
                    if should_shut_down {
                        tracing::info!(
                            ms = started.elapsed().as_millis() as u64,
                            "controlled shutdown confirmed by the controller"
                        );
                        return (moved, true);
                    }
                }
                other => {
                    tracing::warn!(result = ?other, "controlled shutdown heartbeat failed; stopping anyway");
                    return (moved, false);
                }
            }
            // The next heartbeat as soon as the image moves (the others' progress is what
            // the controller waits for), at least every 100 ms.
            let wait = Duration::from_millis(100).min(left);
            let _ = tokio::time::timeout(wait, image_rx.changed()).await;
        }
    }

    /// Stops the background tasks, after a controlled shutdown unless one was tried already
    /// (see [`Cluster::controlled_shutdown`]; here, with the listener closed, it still takes
    /// the broker out of the ISRs). With replication factor 1 the broker's
    /// partitions are then leaderless until it returns; its next start registers at once (no
    /// duplicate-registration wait).
    pub async fn shutdown(&self) {
        let _ = self.stop_tx.send(true);
        let epoch = self.broker_epoch();
        // A controlled shutdown already tried (confirmed or timed out): no second wait.
        if epoch >= 0 && !self.shutting_down.swap(true, Ordering::SeqCst) {
            let started = std::time::Instant::now();
            let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!("controlled shutdown not confirmed in time; stopping anyway");
                    break;
                }
                let call = Call::Heartbeat {
                    id: self.node_id,
                    broker_epoch: epoch,
                    metadata_offset: self.image().last_applied as i64,
                    want_shutdown: true,
                };
                match self.call(&call, left).await {
                    Ok(Envelope {
                        answer:
                            Answer::Heartbeat {
                                should_shut_down: true,
                                ..
                            },
                        ..
                    }) => {
                        tracing::info!(
                            ms = started.elapsed().as_millis() as u64,
                            "controlled shutdown confirmed by the controller"
                        );
                        break;
                    }
                    Ok(Envelope {
                        answer: Answer::Heartbeat { .. },
                        ..
                    }) => {}
                    other => {
                        tracing::warn!(result = ?other, "controlled shutdown heartbeat failed; stopping anyway");
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // Other holders of the Arc<Quorum> are gone once the tasks are; Drop shuts openraft
        // down if this is not the last reference.
        tracing::info!("cluster node stopped");
    }
}

/// Registration, then heartbeats every `broker.heartbeat.interval.ms` (every 250 ms while
/// fenced, so a new broker is unfenced as soon as it has caught up). A broker that learns
/// its registration is gone (stale epoch, not registered) registers again.
async fn lifecycle(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    cfg: ClusterConfig,
    incarnation: u128,
    mut stop: watch::Receiver<bool>,
) {
    let listeners = vec![Endpoint {
        name: "PLAINTEXT".into(),
        host: cfg.advertised.0.clone(),
        port: u16::try_from(cfg.advertised.1).unwrap_or(0),
    }];
    // Under the fsync policy a broker never acknowledged what it had not fsynced, so a
    // crash lost nothing acknowledged and its replicas may lead again (design §1.4).
    let durable_restart = broker
        .config
        .log_defaults
        .flush_policy
        .ack_waits_for_fsync();
    // A broker-only node (not a voter) asks to be added to the quorum as a learner.
    let broker_only = (!cfg.voters.contains_key(&(cfg.node_id as u64)))
        .then(|| cfg.controller_listen.to_string());
    let interval = Duration::from_millis(cfg.heartbeat_interval_ms.max(10));
    let fenced_interval = interval.min(Duration::from_millis(250));
    let call_timeout = Duration::from_millis(cfg.session_timeout_ms.max(1000));
    let mut fenced = true;
    'register: loop {
        cluster.broker_epoch.store(-1, Ordering::SeqCst);
        let registered_durable = durable_restart && !cluster.damaged.load(Ordering::SeqCst);
        let registered = cluster
            .call(
                &Call::Register {
                    id: cfg.node_id,
                    incarnation,
                    listeners: listeners.clone(),
                    durable_restart: registered_durable,
                    controller_listen: broker_only.clone(),
                    rack: broker.config.rack.clone(),
                },
                call_timeout,
            )
            .await;
        match registered {
            Ok(Envelope {
                answer: Answer::Registered { broker_epoch },
                ..
            }) => {
                tracing::info!(node = cfg.node_id, broker_epoch, "broker registered");
                cluster.broker_epoch.store(broker_epoch, Ordering::SeqCst);
                if !*cluster.caught_up.borrow() {
                    // The registration record's index is the broker epoch: once it is
                    // reconciled locally, the image holds everything committed before. The
                    // node serves once the controller has also unfenced it (below).
                    let ok = cluster
                        .wait_reconciled(broker_epoch.max(0) as u64, call_timeout)
                        .await;
                    tracing::info!(
                        node = cfg.node_id,
                        reconciled = ok,
                        "registration reconciled"
                    );
                }
            }
            other => {
                tracing::warn!(result = ?other, "broker registration failed; retrying");
                if wait_or_stop(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
                continue 'register;
            }
        }
        loop {
            if registered_durable && cluster.damaged.load(Ordering::SeqCst) {
                tracing::warn!(
                    node = cfg.node_id,
                    "registered as a durable restart, but a partition log is corrupt: registering again as unclean"
                );
                fenced = true;
                continue 'register;
            }
            let epoch = cluster.broker_epoch();
            let offset = cluster.image().last_applied as i64;
            let hb = cluster
                .call(
                    &Call::Heartbeat {
                        id: cfg.node_id,
                        broker_epoch: epoch,
                        metadata_offset: offset,
                        // Once a controlled shutdown began, every heartbeat asks for it.
                        want_shutdown: cluster.shutting_down.load(Ordering::SeqCst),
                    },
                    call_timeout,
                )
                .await;
            match hb {
                Ok(Envelope {
                    answer: Answer::Heartbeat { is_fenced, .. },
                    ..
                }) => {
                    if fenced != is_fenced {
                        tracing::info!(
                            node = cfg.node_id,
                            fenced = is_fenced,
                            "broker fencing changed"
                        );
                    }
                    fenced = is_fenced;
                    if !is_fenced && !*cluster.caught_up.borrow() {
                        // Unfenced: this node is in the live broker list its Metadata answers
                        // carry. Served earlier, right after a cut of every node (all fenced),
                        // Metadata listed no broker at all, and librdkafka then dropped every
                        // broker it knew and never produced again (chaos finding 3).
                        tracing::info!(
                            node = cfg.node_id,
                            "caught up and unfenced: serving requests"
                        );
                        cluster.caught_up.send_replace(true);
                    }
                }
                Ok(Envelope {
                    answer: Answer::Error { code, message },
                    ..
                }) if code == holdfast_metadata::codes::STALE_BROKER_EPOCH
                    || code == holdfast_metadata::codes::BROKER_ID_NOT_REGISTERED =>
                {
                    tracing::warn!(code, message, "registration lost; registering again");
                    fenced = true;
                    continue 'register;
                }
                other => tracing::warn!(result = ?other, "heartbeat failed"),
            }
            let wait = if fenced { fenced_interval } else { interval };
            if wait_or_stop(&mut stop, wait).await {
                return;
            }
        }
    }
}

/// Sleeps for `d`; true if the node is stopping.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

impl Broker {
    /// The cluster this broker is a node of (`None` on a single node).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }
}
