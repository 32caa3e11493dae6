//! The controller service: the quorum's [`AppHandler`], served on the Raft leader.
//!
//! Requests from brokers (registration, heartbeats, admin operations forwarded from the Kafka
//! port, producer-id blocks) arrive as JSON [`Call`]s through `Quorum::call_leader`. The
//! active controller runs `holdfast_metadata::Controller` on the latest image, proposes the
//! records it returns one by one (each waits for commit and local apply), and answers with
//! an [`Envelope`] carrying the metadata index the answer depends on, so the calling broker
//! can wait until its own image has reached it.
//!
//! Requests are served one at a time (a mutex held across the proposals): every decision is
//! made on an image that already contains every record proposed before it, which is the
//! "working image" the metadata crate requires. On taking over, the new controller first
//! commits a barrier (an empty command), so entries of earlier terms are applied before it
//! decides, then calls `on_become_active`. Losing leadership (a failed proposal or a leader
//! change) drops the `Controller`; callers retry through `call_leader`.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use holdfast_metadata::{
    ConfigResource, Controller, ControllerConfig, ControllerRequest, ControllerResponse, Endpoint,
    MetadataImage, NewTopic, Record,
};
use holdfast_quorum::{AppHandler, Quorum};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex, OnceCell};

use crate::state::{now_ms, timer_ms};

/// A topic to create: (name, partitions, replication factor, configs).
pub(crate) type TopicSpec = (
    String,
    i32,
    i16,
    Vec<(String, String)>,
    Option<Vec<Vec<i32>>>,
);

/// A request to the active controller.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// `durable_restart`: the broker acknowledged nothing it had not fsynced (fsync policy),
    /// so a crash lost nothing of what it reported; its replicas stay eligible (design §1.4,
    /// "Holdfast difference").
    Register {
        id: i32,
        incarnation: u128,
        listeners: Vec<Endpoint>,
        durable_restart: bool,
        /// A broker-only node (not a voter): its quorum address, where the Raft leader
        /// replicates the metadata log to it once the controller has added it as a learner.
        #[serde(default)]
        controller_listen: Option<String>,
        /// `broker.rack`.
        #[serde(default)]
        rack: Option<String>,
    },
    Heartbeat {
        id: i32,
        broker_epoch: i64,
        metadata_offset: i64,
        want_shutdown: bool,
    },
    CreateTopics {
        topics: Vec<TopicSpec>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    SetTopicConfigs {
        topic: String,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        validate_only: bool,
    },
    AllocateProducerIds {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// AlterPartition for one partition (ISR members with their broker epochs).
    AlterPartition {
        broker_id: i32,
        broker_epoch: i64,
        topic_id: u128,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<(i32, i64)>,
    },
    /// ElectLeaders; `partitions` None: every partition.
    ElectLeaders {
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// DescribeQuorum: the Raft leader's view of the metadata quorum.
    DescribeQuorum,
    /// AlterPartitionReassignments: (topic, partition, target replicas or None to cancel).
    AlterPartitionReassignments {
        partitions: Vec<(String, i32, Option<Vec<i32>>)>,
        /// KIP-860: false refuses a target with another replica count.
        allow_replication_factor_change: bool,
    },
    /// UnregisterBroker (API 64): decommission a fenced broker; a broker-only node also
    /// leaves the metadata quorum's learners.
    UnregisterBroker {
        id: i32,
    },
    /// IncrementalAlterConfigs on a BROKER resource: `broker` None is the cluster default
    /// (Kafka's empty resource name).
    SetBrokerConfigs {
        broker: Option<i32>,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        validate_only: bool,
    },
}

/// One created topic.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TopicOutcome {
    pub name: String,
    pub error: i16,
    pub message: Option<String>,
    pub id: u128,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// This node is not (or no longer) the active controller: retry.
    NotController,
    Error {
        code: i16,
        message: String,
    },
    Registered {
        broker_epoch: i64,
    },
    Heartbeat {
        is_caught_up: bool,
        is_fenced: bool,
        should_shut_down: bool,
    },
    Topics(Vec<TopicOutcome>),
    /// Per item: (name, error code, message).
    Items(Vec<(String, i16, Option<String>)>),
    ProducerIds {
        start: i64,
        len: i32,
    },
    AlterPartition {
        error: i16,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// ElectLeaders: (topic, partition, error code) per partition.
    Elected(Vec<(String, i32, i16)>),
    /// DescribeQuorum, from the Raft leader.
    Quorum(Box<holdfast_quorum::QuorumStatus>),
    /// AlterPartitionReassignments: (topic, partition, error code, message) per partition.
    Reassigned(Vec<(String, i32, i16, Option<String>)>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The metadata index (`MetadataImage::last_applied`) the answer depends on.
    pub index: u64,
    pub answer: Answer,
}

pub(crate) struct ControllerService {
    node_id: u64,
    /// This process's broker registration incarnation (random per start).
    incarnation: u128,
    cluster_id: String,
    config: ControllerConfig,
    quorum: OnceCell<Weak<Quorum>>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    /// `Some` while this node is the active controller.
    active: Mutex<Option<Controller>>,
}

const TICK_INTERVAL_MS: u64 = 250;

/// Deadline of one proposal: a leader cut off from the quorum stops being the controller
/// instead of holding the request queue forever.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn propose(q: &Quorum, command: Vec<u8>) -> Result<(u64, Vec<u8>), String> {
    match tokio::time::timeout(PROPOSE_TIMEOUT, q.propose(command)).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not committed within {PROPOSE_TIMEOUT:?}")),
    }
}

impl ControllerService {
    pub(crate) fn new(
        node_id: u64,
        incarnation: u128,
        cluster_id: String,
        config: ControllerConfig,
        image_rx: watch::Receiver<Arc<MetadataImage>>,
    ) -> ControllerService {
        ControllerService {
            node_id,
            incarnation,
            cluster_id,
            config,
            quorum: OnceCell::new(),
            image_rx,
            active: Mutex::new(None),
        }
    }

    pub(crate) fn set_quorum(&self, q: &Arc<Quorum>) {
        let _ = self.quorum.set(Arc::downgrade(q));
    }

    fn quorum(&self) -> Option<Arc<Quorum>> {
        self.quorum.get().and_then(Weak::upgrade)
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.image_rx.borrow().clone()
    }

    fn is_leader(&self, q: &Quorum) -> bool {
        *q.leader_watch().borrow() == Some(self.node_id)
    }

    /// Makes this node the active controller if it is not yet (barrier, bootstrap record,
    /// `on_become_active`). False when it is not the leader (any more).
    async fn ensure_active(&self, q: &Quorum, active: &mut Option<Controller>) -> bool {
        if active.is_some() {
            return true;
        }
        let started = std::time::Instant::now();
        if let Err(e) = propose(q, Vec::new()).await {
            tracing::debug!(error = %e, "barrier not committed: not the active controller");
            return false;
        }
        if self.image().cluster_id.is_empty() {
            for r in Controller::bootstrap_records(&self.cluster_id) {
                if let Err(e) = propose(q, r.encode()).await {
                    tracing::warn!(error = %e, "bootstrap record not committed");
                    return false;
                }
            }
            tracing::info!(cluster_id = %self.cluster_id, "metadata log bootstrapped");
        }
        let image = self.image();
        let mut c = Controller::new(self.config.clone(), fastrand::u64(..));
        c.on_become_active(
            &image,
            timer_ms(),
            Some((self.node_id as i32, self.incarnation)),
        );
        *active = Some(c);
        tracing::info!(
            node = self.node_id,
            metadata_index = image.last_applied,
            ms = started.elapsed().as_millis() as u64,
            "became the active controller"
        );
        true
    }

    /// Proposes `records` in order; returns the index of the last one (or the current
    /// applied index when there are none). `None`: leadership was lost on the way (earlier
    /// records of the batch may have committed; each is valid on its own).
    async fn propose_all(&self, q: &Quorum, records: Vec<Record>) -> Option<u64> {
        let mut last = self.image().last_applied;
        for r in records {
            match propose(q, r.encode()).await {
                Ok((index, resp)) => {
                    if !resp.is_empty() {
                        tracing::warn!(index, outcome = %String::from_utf8_lossy(&resp), "proposed record did not apply");
                    } else {
                        self.ledger_unclean_election(&r);
                    }
                    last = index;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proposal failed: giving up the controller role");
                    return None;
                }
            }
        }
        Some(last)
    }

    /// A committed unclean election goes to the loss ledger of the controller that decided
    /// it (once: at proposal, never on a replay of the metadata log). The offsets lost are
    /// not known here: the new leader's followers truncate to its log (each such cut below a
    /// high watermark is a `replica_truncation` event on that follower).
    fn ledger_unclean_election(&self, r: &Record) {
        let Record::UncleanElection {
            topic,
            partition,
            new_leader,
            old_leader_epoch,
            isr_before,
            elr_before,
        } = r
        else {
            return;
        };
        let name = self
            .image()
            .topics
            .get(topic)
            .map_or_else(|| format!("{topic:?}"), |t| t.name.clone());
        crate::ledger::record(crate::ledger::Event {
            time_ms: now_ms(),
            reason: crate::ledger::UNCLEAN_ELECTION,
            topic: name,
            partition: *partition,
            from_offset: -1,
            to_offset: -1,
            records: 0,
            group: None,
            detail: format!(
                "unclean leader election: broker {new_leader} leads after leader epoch \
                 {old_leader_epoch} (ISR before {isr_before:?}, ELR before {elr_before:?}); \
                 records it lacks are lost"
            ),
        });
    }

    /// A broker-only node registering: make it a learner of the metadata quorum (a Raft
    /// membership change) unless it is one already at that address. Voters are left alone.
    async fn add_learner(&self, q: &Quorum, id: i32, addr: &str) -> Result<(), Answer> {
        let node = id as u64;
        if q.voter_ids().contains(&node) {
            return Ok(());
        }
        let known = q.members().get(&node).cloned();
        if known.as_deref() == Some(addr) {
            return Ok(());
        }
        let sa: std::net::SocketAddr = addr.parse().map_err(|e| Answer::Error {
            code: holdfast_metadata::codes::INVALID_REQUEST,
            message: format!("broker {id}: bad controller listener {addr:?}: {e}"),
        })?;
        let result = if known.is_some() {
            // A learner that restarted with another controller listener: its address in the
            // membership is replaced (learners never vote, so this cannot split the quorum).
            tracing::info!(node = id, old = ?known, new = %addr, "a learner's address changed");
            q.change_learners([(node, sa)].into_iter().collect(), Default::default())
                .await
        } else {
            q.add_learner(node, sa, false).await
        };
        match result {
            Ok(()) => {
                tracing::info!(node = id, %addr, "broker-only node added to the metadata quorum as a learner");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(node = id, error = %e, "could not add a learner");
                Err(Answer::NotController)
            }
        }
    }

    async fn serve(&self, call: Call) -> Envelope {
        let not_controller = Envelope {
            index: 0,
            answer: Answer::NotController,
        };
        let Some(q) = self.quorum() else {
            return not_controller;
        };
        if !self.is_leader(&q) {
            return not_controller;
        }
        if let Call::Register {
            id,
            controller_listen: Some(addr),
            ..
        } = &call
        {
            if let Err(answer) = self.add_learner(&q, *id, addr).await {
                return Envelope {
                    index: self.image().last_applied,
                    answer,
                };
            }
        }
        if let Call::UnregisterBroker { id } = &call {
            let id = *id;
            let env = self.serve_locked(&q, Call::UnregisterBroker { id }).await;
            if matches!(env.answer, Answer::Items(_)) {
                let node = id as u64;
                let learner = !q.voter_ids().contains(&node) && q.members().contains_key(&node);
                if learner {
                    if let Err(e) = q
                        .change_learners(Default::default(), [node].into_iter().collect())
                        .await
                    {
                        tracing::warn!(node = id, error = %e, "could not remove the learner of an unregistered broker");
                        return Envelope {
                            index: env.index,
                            answer: Answer::Error {
                                code: holdfast_metadata::codes::UNKNOWN_SERVER_ERROR,
                                message: format!("broker {id} was unregistered but is still a metadata learner: {e}"),
                            },
                        };
                    }
                    tracing::info!(
                        node = id,
                        "unregistered broker removed from the metadata quorum's learners"
                    );
                }
            }
            return env;
        }
        if matches!(call, Call::DescribeQuorum) {
            // Read-only and about the quorum itself: no controller state, no lock.
            return Envelope {
                index: self.image().last_applied,
                answer: Answer::Quorum(Box::new(q.status())),
            };
        }
        self.serve_locked(&q, call).await
    }

    /// Serves `call` through the controller, under the controller lock.
    async fn serve_locked(&self, q: &Arc<Quorum>, call: Call) -> Envelope {
        let not_controller = Envelope {
            index: 0,
            answer: Answer::NotController,
        };
        let queued_at = std::time::Instant::now();
        let mut guard = self.active.lock().await;
        let queued_ms = queued_at.elapsed().as_millis() as u64;
        if queued_ms >= 2_000 {
            tracing::warn!(
                queued_ms,
                ?call,
                "a controller call waited long for the controller lock"
            );
        }
        if !self.ensure_active(q, &mut guard).await {
            return not_controller;
        }
        let image = self.image();
        let request = match to_request(&image, call) {
            Ok(r) => r,
            Err(answer) => {
                return Envelope {
                    index: image.last_applied,
                    answer,
                }
            }
        };
        let Some(controller) = guard.as_mut() else {
            return not_controller;
        };
        let (records, response) = match controller.handle(&image, request, timer_ms()) {
            Ok(x) => x,
            Err(e) => {
                return Envelope {
                    index: image.last_applied,
                    answer: Answer::Error {
                        code: e.code(),
                        message: e.to_string(),
                    },
                }
            }
        };
        let Some(index) = self.propose_all(q, records).await else {
            *guard = None;
            return not_controller;
        };
        let answer = match response {
            ControllerResponse::RegisterBroker { id } => {
                let epoch = self.image().brokers.get(&id).map_or(-1, |b| b.epoch);
                assert_eq!(
                    epoch as u64, index,
                    "broker {id}: the epoch is the index of its RegisterBroker record"
                );
                Answer::Registered {
                    broker_epoch: epoch,
                }
            }
            ControllerResponse::Heartbeat(h) => Answer::Heartbeat {
                is_caught_up: h.is_caught_up,
                is_fenced: h.is_fenced,
                should_shut_down: h.should_shut_down,
            },
            ControllerResponse::CreateTopics(results) => Answer::Topics(
                results
                    .into_iter()
                    .map(|r| TopicOutcome {
                        name: r.name,
                        error: r.error,
                        message: r.message,
                        id: r.id.0,
                        partitions: r.partitions,
                        replication_factor: r.replication_factor,
                        configs: r.configs,
                    })
                    .collect(),
            ),
            ControllerResponse::DeleteTopics(results) => Answer::Items(
                results
                    .into_iter()
                    .map(|(r, _)| (r.name, r.error, r.message))
                    .collect(),
            ),
            ControllerResponse::CreatePartitions(results) => Answer::Items(
                results
                    .into_iter()
                    .map(|r| (r.name, r.error, r.message))
                    .collect(),
            ),
            ControllerResponse::SetConfigs(r) => Answer::Items(vec![(r.name, r.error, r.message)]),
            ControllerResponse::ProducerIds { start, len } => Answer::ProducerIds { start, len },
            ControllerResponse::AlterPartition(r) => Answer::AlterPartition {
                error: r.error,
                leader_epoch: r.leader_epoch,
                partition_epoch: r.partition_epoch,
                isr: r.isr,
            },
            ControllerResponse::ElectLeaders(results) => Answer::Elected(
                results
                    .into_iter()
                    .map(|r| (r.topic, r.partition, r.error))
                    .collect(),
            ),
            ControllerResponse::UnregisterBroker => Answer::Items(Vec::new()),
            ControllerResponse::Reassignments(results) => Answer::Reassigned(
                results
                    .into_iter()
                    .map(|r| (r.topic, r.partition, r.error, r.message))
                    .collect(),
            ),
        };
        Envelope { index, answer }
    }

    /// Every 250 ms on the leader: `Controller::tick` (fences brokers whose session expired);
    /// elsewhere: drops the controller state if leadership moved away.
    pub(crate) async fn tick_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(Duration::from_millis(TICK_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let Some(q) = self.quorum() else { return };
            let mut guard = self.active.lock().await;
            if !self.is_leader(&q) {
                if guard.take().is_some() {
                    tracing::info!(node = self.node_id, "no longer the active controller");
                }
                continue;
            }
            if !self.ensure_active(&q, &mut guard).await {
                *guard = None;
                continue;
            }
            let image = self.image();
            let Some(c) = guard.as_mut() else { continue };
            let records = c.tick(&image, timer_ms());
            if !records.is_empty() {
                tracing::info!(records = records.len(), "controller tick");
                if self.propose_all(&q, records).await.is_none() {
                    *guard = None;
                }
            }
        }
    }
}

fn to_request(image: &MetadataImage, call: Call) -> Result<ControllerRequest, Answer> {
    Ok(match call {
        Call::Register {
            id,
            incarnation,
            listeners,
            durable_restart,
            rack,
            ..
        } => ControllerRequest::RegisterBroker {
            id,
            incarnation,
            listeners,
            rack,
            previous_broker_epoch: if durable_restart {
                image.brokers.get(&id).map_or(-1, |b| b.epoch)
            } else {
                -1
            },
        },
        Call::Heartbeat {
            id,
            broker_epoch,
            metadata_offset,
            want_shutdown,
        } => ControllerRequest::Heartbeat {
            id,
            broker_epoch,
            metadata_offset,
            want_fence: false,
            want_shutdown,
        },
        Call::CreateTopics {
            topics,
            validate_only,
        } => ControllerRequest::CreateTopics {
            topics: topics
                .into_iter()
                .map(
                    |(name, partitions, replication_factor, configs, assignments)| NewTopic {
                        name,
                        partitions,
                        replication_factor,
                        configs,
                        assignments,
                    },
                )
                .collect(),
            validate_only,
        },
        Call::DeleteTopics { names } => ControllerRequest::DeleteTopics { names },
        Call::CreatePartitions {
            topics,
            validate_only,
        } => ControllerRequest::CreatePartitions {
            topics,
            validate_only,
        },
        Call::SetTopicConfigs {
            topic,
            set,
            delete,
            validate_only,
        } => ControllerRequest::SetConfigs {
            resource: ConfigResource::Topic(topic),
            set,
            delete,
            validate_only,
        },
        Call::AllocateProducerIds {
            broker_id,
            broker_epoch,
        } => ControllerRequest::AllocateProducerIds {
            broker_id,
            broker_epoch,
        },
        Call::AlterPartition {
            broker_id,
            broker_epoch,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            new_isr,
        } => ControllerRequest::AlterPartition {
            broker_id,
            broker_epoch,
            topic: holdfast_metadata::TopicId(topic_id),
            partition,
            leader_epoch,
            partition_epoch,
            new_isr: new_isr
                .into_iter()
                .map(
                    |(id, broker_epoch)| holdfast_metadata::controller::IsrMember {
                        id,
                        broker_epoch,
                    },
                )
                .collect(),
            leader_recovery: holdfast_metadata::LeaderRecovery::Recovered,
        },
        Call::ElectLeaders {
            unclean,
            partitions,
        } => ControllerRequest::ElectLeaders {
            election: if unclean {
                holdfast_metadata::controller::ElectionType::Unclean
            } else {
                holdfast_metadata::controller::ElectionType::Preferred
            },
            partitions,
        },
        Call::AlterPartitionReassignments {
            partitions,
            allow_replication_factor_change,
        } => ControllerRequest::AlterPartitionReassignments {
            partitions,
            allow_replication_factor_change,
        },
        Call::SetBrokerConfigs {
            broker,
            set,
            delete,
            validate_only,
        } => ControllerRequest::SetConfigs {
            resource: match broker {
                Some(id) => ConfigResource::Broker(id),
                None => ConfigResource::Cluster,
            },
            set,
            delete,
            validate_only,
        },
        Call::UnregisterBroker { id } => ControllerRequest::UnregisterBroker { id },
        Call::DescribeQuorum => {
            return Err(Answer::Error {
                code: holdfast_metadata::codes::INVALID_REQUEST,
                message: "DescribeQuorum is answered before the controller".into(),
            })
        }
    })
}

/// The quorum's handler: a strong reference to the service, cloned into each request's
/// future.
pub(crate) struct Handler(pub(crate) Arc<ControllerService>);

impl AppHandler for Handler {
    fn handle(
        &self,
        request: Vec<u8>,
    ) -> Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>> {
        let svc = Arc::clone(&self.0);
        Box::pin(async move {
            let env = match serde_json::from_slice::<Call>(&request) {
                Ok(call) => svc.serve(call).await,
                Err(e) => Envelope {
                    index: 0,
                    answer: Answer::Error {
                        code: holdfast_metadata::codes::INVALID_REQUEST,
                        message: format!("malformed controller request: {e}"),
                    },
                },
            };
            serde_json::to_vec(&env).unwrap_or_default()
        })
    }
}
