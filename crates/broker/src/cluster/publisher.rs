//! The metadata publisher (Kafka's `BrokerMetadataPublisher`): reconciles the broker's
//! topics and partitions with the latest image, level-triggered (each pass looks at the whole
//! image, so a missed intermediate image changes nothing).
//!
//! Every topic of the image is installed in the broker's topic map (so DescribeConfigs and
//! topic-id lookups work on every node); a partition whose replicas include this node has its
//! log opened (created when new), the others are placeholders without a log. The role and
//! leader epoch of each partition come from the image. Topics gone from the image (or
//! replaced by a topic of the same name with another id) are removed and their logs deleted;
//! so is the log of a replica a reassignment removed from this node.
//!
//! Each partition directory holds `partition.metadata` (Kafka's file: `version: 0`,
//! `topic_id: <base64url>`). A directory whose file names another topic id (a topic deleted
//! while this node was down and created again) is stale and deleted before the log opens.

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_metadata::{ConfigResource, MetadataImage, TopicId};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::build_log_config;
use crate::meta::TopicMeta;
use crate::state::{Broker, BrokerError, Partition, Topic};

/// Names of the node-local internal topics (groups, transactions, the loss ledger): never
/// cluster topics in v0.
pub(crate) fn is_local_internal(name: &str) -> bool {
    name == crate::groups::OFFSETS_TOPIC
        || name == crate::txn::TXN_TOPIC
        || name == crate::ledger::EVENTS_TOPIC
}

/// Who this process is: node id, incarnation (random per start), cluster id.
pub(crate) struct Me {
    pub node_id: i32,
    pub incarnation: u128,
    pub cluster_id: String,
}

pub(crate) async fn run(
    broker: Arc<Broker>,
    me: Me,
    mut image_rx: watch::Receiver<Arc<MetadataImage>>,
    reconciled_tx: watch::Sender<u64>,
    fatal_tx: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let Me {
        node_id,
        incarnation,
        cluster_id,
    } = me;
    // Cluster topics installed by this task: name → topic id.
    let mut installed: BTreeMap<String, u128> = BTreeMap::new();
    loop {
        let image = image_rx.borrow_and_update().clone();
        if !image.cluster_id.is_empty() && image.cluster_id != cluster_id {
            let reason = format!(
                "the metadata log belongs to cluster {}, but meta.properties says {}",
                image.cluster_id, cluster_id
            );
            tracing::error!("{reason}");
            let _ = fatal_tx.send(Some(reason));
            return;
        }
        let b = Arc::clone(&broker);
        let img = Arc::clone(&image);
        let before = std::mem::take(&mut installed);
        match tokio::task::spawn_blocking(move || reconcile(&b, &img, node_id, incarnation, before))
            .await
        {
            Ok(next) => installed = next,
            Err(e) => {
                let reason = format!("metadata publisher failed: {e}");
                tracing::error!("{reason}");
                let _ = fatal_tx.send(Some(reason));
                return;
            }
        }
        reconciled_tx.send_replace(image.last_applied);
        tokio::select! {
            r = image_rx.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Kafka's `partition.metadata` contents for a topic id.
fn partition_metadata(id: TopicId) -> String {
    format!(
        "version: 0\ntopic_id: {}\n",
        super::props::base64url(&id.0.to_be_bytes())
    )
}

fn open_hosted(
    b: &Broker,
    name: &str,
    id: TopicId,
    index: i32,
    cfg: &holdfast_log::LogConfig,
) -> Result<holdfast_log::Log, BrokerError> {
    let dir = b.config.data_dir.join(format!("{name}-{index}"));
    let file = dir.join("partition.metadata");
    let want = partition_metadata(id);
    match std::fs::read_to_string(&file) {
        Ok(s) if s == want => {}
        Ok(_) => {
            tracing::warn!(dir = %dir.display(), "partition directory of an earlier topic with this name: deleting it");
            std::fs::remove_dir_all(&dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.exists() => {
            // Created by a start that crashed before writing the file: nothing was
            // acknowledged from it (the partition is served only once the file exists).
            tracing::warn!(dir = %dir.display(), "partition directory without partition.metadata: deleting it");
            std::fs::remove_dir_all(&dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let log = b.open_partition_log(name, index, cfg)?;
    if !file.exists() {
        crate::meta::write_atomic(&file, want.as_bytes())?;
    }
    Ok(log)
}

fn delete_logs(t: &Topic) {
    for p in &t.partitions {
        let log = p.lock().log.take();
        p.set_role(false, p.leader_epoch());
        if let Some(log) = log {
            match log.delete() {
                Ok(()) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "partition log deleted")
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot delete partition log")
                }
            }
        }
    }
}

/// The partition's role and leader epoch from the image, and its replication state
/// (`super::replica::apply_role`).
fn set_roles(
    b: &Broker,
    image: &MetadataImage,
    topic: &str,
    p: &Partition,
    reg: &holdfast_metadata::PartitionReg,
    me: i32,
    active: bool,
) {
    let named = active && reg.leader == me;
    // Stop serving as leader first, so no produce is accepted under a stale role.
    if !named || p.leader_epoch() != reg.leader_epoch {
        p.set_role(false, reg.leader_epoch);
    }
    let broker_epoch = image.brokers.get(&me).map_or(-1, |r| r.epoch);
    let leads = super::replica::apply_role(
        p,
        image,
        topic,
        reg,
        me,
        broker_epoch,
        named,
        b.config.replica_lag_time_max_ms as i64,
    );
    p.set_role(leads, reg.leader_epoch);
}

/// One reconciliation pass (blocking: opens and deletes logs). Returns the installed map.
fn reconcile(
    b: &Broker,
    image: &MetadataImage,
    me: i32,
    incarnation: u128,
    installed: BTreeMap<String, u128>,
) -> BTreeMap<String, u128> {
    // This process leads nothing until the image has its own registration unfenced: a
    // restarted node replaying an old image must not serve as the leader its previous
    // incarnation was.
    let active = image
        .brokers
        .get(&me)
        .is_some_and(|r| r.incarnation == incarnation && r.is_active());
    for (name, id) in &installed {
        let still = image.topic_by_name(name).is_some_and(|t| t.id.0 == *id);
        if !still {
            if let Some(t) = b.uninstall_topic(name) {
                tracing::info!(topic = %name, "topic deleted");
                delete_logs(&t);
            }
        }
    }
    let mut next = BTreeMap::new();
    for t in image.topics.values() {
        // `__consumer_offsets` and `__transaction_state` are cluster topics (created by the
        // coordinators, coord.rs and txn.rs).
        if is_local_internal(&t.name)
            && t.name != crate::groups::OFFSETS_TOPIC
            && t.name != crate::txn::TXN_TOPIC
        {
            tracing::warn!(topic = %t.name, "the metadata image has a topic with a node-local internal name; ignored");
            continue;
        }
        let configs: BTreeMap<String, String> = image
            .configs
            .get(&ConfigResource::Topic(t.name.clone()))
            .cloned()
            .unwrap_or_default();
        let log_config = match build_log_config(&b.config.log_defaults, &configs) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %t.name, error = %e, "invalid topic config in the image; using the broker defaults");
                b.config.log_defaults.clone()
            }
        };
        let existing = b
            .topic(&t.name)
            .filter(|x| installed.get(&t.name) == Some(&t.id.0) && x.meta.id.as_u128() == t.id.0);
        let config_changed = existing.as_ref().is_some_and(|e| e.meta.config != configs);
        let unchanged = existing.as_ref().is_some_and(|e| {
            !config_changed
                && e.partitions.len() == t.partitions.len()
                && e.partitions.iter().zip(&t.partitions).all(|(p, reg)| {
                    p.leader_epoch() == reg.leader_epoch
                        && p.is_leader() == (active && reg.leader == me)
                        && p.lock().log.is_some() == reg.replicas.contains(&me)
                })
        });
        if unchanged {
            if let Some(e) = existing.as_ref() {
                for (p, reg) in e.partitions.iter().zip(&t.partitions) {
                    set_roles(b, image, &t.name, p, reg, me, active);
                }
            }
            next.insert(t.name.clone(), t.id.0);
            continue;
        }
        let mut parts = Vec::with_capacity(t.partitions.len());
        for (i, reg) in t.partitions.iter().enumerate() {
            let index = i as i32;
            let prev = existing.as_ref().and_then(|e| e.partitions.get(i)).cloned();
            let hosted = reg.replicas.contains(&me);
            let has_log = prev.as_ref().is_some_and(|p| p.lock().log.is_some());
            let part = match (hosted, prev) {
                (true, Some(p)) if has_log => {
                    if config_changed {
                        let mut st = p.lock();
                        if let Some(log) = st.log.as_mut() {
                            log.set_config(log_config.clone());
                            p.refresh(log);
                        }
                    }
                    p
                }
                (true, _) => match open_hosted(b, &t.name, t.id, index, &log_config) {
                    Ok(log) => {
                        tracing::info!(topic = %t.name, partition = index, leader_epoch = reg.leader_epoch, "partition opened");
                        Arc::new(Partition::new_replicated(&t.name, index, log))
                    }
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = index, error = %e, "cannot open partition log");
                        Arc::new(Partition::absent(&t.name, index))
                    }
                },
                (false, Some(p)) => {
                    if has_log {
                        // A reassignment removed this replica. It completed only once every
                        // target replica was in the ISR, so the ISR holds everything this
                        // copy had below the high watermark: the copy is deleted, as Kafka's
                        // StopReplica(delete) does.
                        p.set_role(false, reg.leader_epoch);
                        let log = p.lock().log.take();
                        if let Some(log) = log {
                            match log.delete() {
                                Ok(()) => {
                                    tracing::info!(topic = %t.name, partition = index, "replica removed by a reassignment: log deleted")
                                }
                                Err(e) => {
                                    tracing::error!(topic = %t.name, partition = index, error = %e, "cannot delete the log of a removed replica")
                                }
                            }
                        }
                    }
                    p
                }
                (false, None) => Arc::new(Partition::absent(&t.name, index)),
            };
            set_roles(b, image, &t.name, &part, reg, me, active);
            parts.push(part);
        }
        b.install_topic(Arc::new(Topic {
            meta: TopicMeta {
                name: t.name.clone(),
                id: Uuid::from_u128(t.id.0),
                partitions: t.partitions.len() as i32,
                config: configs,
            },
            log_config,
            partitions: parts,
        }));
        next.insert(t.name.clone(), t.id.0);
    }
    next
}
