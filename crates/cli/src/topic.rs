//! `holdfast topic create|list|describe|alter-config|add-partitions|delete`.

use anyhow::{bail, Context};
use holdfast_client::{check, error_name, Client};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    IncrementalAlterConfigsRequest,
};
use serde_json::json;

use crate::ops::{self, name, print_json, sb, ConnArgs};

#[derive(clap::Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: TopicCmd,
}

#[derive(clap::Subcommand, Debug)]
enum TopicCmd {
    /// Create topics.
    Create {
        #[arg(required = true)]
        topics: Vec<String>,
        /// Partitions (default: the broker's num.partitions).
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        /// Replication factor (default: the broker's default.replication.factor).
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// A topic config `key=value` (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Succeed when the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics, one per line.
    List {
        /// Leave out internal topics (`__consumer_offsets`, ...).
        #[arg(long)]
        exclude_internal: bool,
    },
    /// Describe topics (all when none is named), in kafka-topics.sh's layout.
    Describe {
        topics: Vec<String>,
        /// Only partitions whose ISR is smaller than their replica set.
        #[arg(long)]
        under_replicated_partitions: bool,
        /// Only partitions without a leader.
        #[arg(long)]
        unavailable_partitions: bool,
        /// Leave out internal topics.
        #[arg(long)]
        exclude_internal: bool,
    },
    /// Set or remove topic configs (IncrementalAlterConfigs).
    AlterConfig {
        topic: String,
        /// `key=value` to set (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Config to remove, back to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Grow a topic to `--count` partitions in total.
    AddPartitions {
        topic: String,
        #[arg(long)]
        count: i32,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
        /// Succeed when a topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
}

pub fn run(args: TopicArgs) -> anyhow::Result<i32> {
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        match args.cmd {
            TopicCmd::Create {
                topics,
                partitions,
                replication_factor,
                configs,
                if_not_exists,
            } => {
                create(
                    &mut client,
                    &args.conn,
                    topics,
                    partitions,
                    replication_factor,
                    &configs,
                    if_not_exists,
                )
                .await
            }
            TopicCmd::List { exclude_internal } => {
                list(&mut client, &args.conn, exclude_internal).await
            }
            TopicCmd::Describe {
                topics,
                under_replicated_partitions,
                unavailable_partitions,
                exclude_internal,
            } => {
                describe(
                    &mut client,
                    &args.conn,
                    topics,
                    under_replicated_partitions,
                    unavailable_partitions,
                    exclude_internal,
                )
                .await
            }
            TopicCmd::AlterConfig { topic, set, delete } => {
                alter_config(&mut client, &args.conn, &topic, &set, &delete).await
            }
            TopicCmd::AddPartitions { topic, count } => {
                add_partitions(&mut client, &args.conn, &topic, count).await
            }
            TopicCmd::Delete { topics, if_exists } => {
                delete_topics(&mut client, &args.conn, topics, if_exists).await
            }
        }
    })
}

fn split_kv(kv: &str) -> anyhow::Result<(&str, &str)> {
    kv.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .with_context(|| format!("{kv}: expected key=value"))
}

async fn create(
    client: &mut Client,
    conn: &ConnArgs,
    topics: Vec<String>,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
    if_not_exists: bool,
) -> anyhow::Result<i32> {
    let mut cfgs = Vec::new();
    for kv in configs {
        let (k, v) = split_kv(kv)?;
        let mut c = CreatableTopicConfig::default();
        c.name = sb(k);
        c.value = Some(sb(v));
        cfgs.push(c);
    }
    let mut req = CreateTopicsRequest::default();
    req.timeout_ms = conn.timeout_ms.min(i32::MAX as u64) as i32;
    req.topics = topics
        .iter()
        .map(|t| {
            let mut ct = CreatableTopic::default();
            ct.name = name(t);
            ct.num_partitions = partitions;
            ct.replication_factor = replication_factor;
            ct.configs = cfgs.clone();
            ct
        })
        .collect();
    let resp = client.send_controller(req, 7).await?;
    let mut results = Vec::new();
    let mut failed = 0;
    for r in &resp.topics {
        let t = r.name.0.to_string();
        // TOPIC_ALREADY_EXISTS (36)
        let ok = r.error_code == 0 || (if_not_exists && r.error_code == 36);
        if !ok {
            failed += 1;
        }
        let err = (r.error_code != 0).then(|| {
            format!(
                "{}{}",
                error_name(r.error_code),
                r.error_message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        });
        if !conn.json() {
            match (&err, ok) {
                (None, _) => println!("Created topic {t}."),
                (Some(_), true) => println!("Topic {t} already exists."),
                (Some(e), false) => eprintln!("Error while creating topic {t}: {e}"),
            }
        }
        results.push(json!({
            "topic": t,
            "created": r.error_code == 0,
            "error": err,
            "partitions": r.num_partitions,
            "replication_factor": r.replication_factor,
        }));
    }
    if conn.json() {
        print_json(&json!(results))?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

async fn list(client: &mut Client, conn: &ConnArgs, exclude_internal: bool) -> anyhow::Result<i32> {
    let md = client.metadata(None).await?;
    let mut topics: Vec<(String, bool, usize)> = md
        .topics
        .iter()
        .filter_map(|t| {
            let n = t.name.as_ref()?.to_string();
            (!(exclude_internal && t.is_internal)).then_some((n, t.is_internal, t.partitions.len()))
        })
        .collect();
    topics.sort();
    if conn.json() {
        print_json(&json!(topics
            .iter()
            .map(|(n, i, p)| json!({"name": n, "internal": i, "partitions": p}))
            .collect::<Vec<_>>()))?;
    } else {
        for (n, _, _) in &topics {
            println!("{n}");
        }
    }
    Ok(0)
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn describe(
    client: &mut Client,
    conn: &ConnArgs,
    topics: Vec<String>,
    under_replicated: bool,
    unavailable: bool,
    exclude_internal: bool,
) -> anyhow::Result<i32> {
    let md = client
        .metadata(if topics.is_empty() {
            None
        } else {
            Some(topics.clone())
        })
        .await?;
    let mut listed = Vec::new();
    let mut status = 0;
    for t in &md.topics {
        let Some(n) = &t.name else { continue };
        if t.error_code != 0 {
            eprintln!(
                "Error describing topic {}: {}",
                n.as_str(),
                error_name(t.error_code)
            );
            status = 1;
            continue;
        }
        if exclude_internal && t.is_internal {
            continue;
        }
        listed.push(n.to_string());
    }
    listed.sort();
    let configs = ops::topic_configs(client, &listed).await?;
    let filtered = under_replicated || unavailable;
    let mut out = Vec::new();
    for tname in &listed {
        let Some(t) = md
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == tname))
        else {
            continue;
        };
        let mut parts: Vec<_> = t.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        let rf = parts.first().map(|p| p.replica_nodes.len()).unwrap_or(0);
        let overrides: Vec<(String, String)> = configs
            .get(tname)
            .map(|c| {
                c.iter()
                    .filter(|(_, (_, src))| *src == 1)
                    .map(|(k, (v, _))| (k.clone(), v.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let topic_id = *t.topic_id.as_bytes();
        let topic_id = (topic_id != [0; 16]).then(|| ops::uuid_base64(&topic_id));
        let mut pjson = Vec::new();
        let mut lines = Vec::new();
        for p in &parts {
            let replicas: Vec<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
            let isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
            let leader = p.leader_id.0;
            let is_under = isr.len() < replicas.len();
            let is_unavailable = leader < 0;
            if filtered && !((under_replicated && is_under) || (unavailable && is_unavailable)) {
                continue;
            }
            lines.push(format!(
                "\tTopic: {tname}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
                p.partition_index,
                if leader < 0 {
                    "none".to_string()
                } else {
                    leader.to_string()
                },
                join_ids(&replicas),
                join_ids(&isr)
            ));
            pjson.push(json!({
                "partition": p.partition_index,
                "leader": (leader >= 0).then_some(leader),
                "leader_epoch": p.leader_epoch,
                "replicas": replicas,
                "isr": isr,
                "offline_replicas": p.offline_replicas.iter().map(|b| b.0).collect::<Vec<_>>(),
                "error": (p.error_code != 0).then(|| error_name(p.error_code)),
            }));
        }
        if filtered && lines.is_empty() {
            continue;
        }
        if conn.json() {
            out.push(json!({
                "topic": tname,
                "topic_id": topic_id,
                "internal": t.is_internal,
                "partition_count": parts.len(),
                "replication_factor": rf,
                "configs": overrides
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "partitions": pjson,
            }));
        } else {
            if !filtered {
                let mut head = format!("Topic: {tname}");
                if let Some(id) = &topic_id {
                    head.push_str(&format!("\tTopicId: {id}"));
                }
                head.push_str(&format!(
                    "\tPartitionCount: {}\tReplicationFactor: {rf}\tConfigs: {}",
                    parts.len(),
                    overrides
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
                println!("{head}");
            }
            for l in lines {
                println!("{l}");
            }
        }
    }
    if conn.json() {
        print_json(&json!(out))?;
    }
    Ok(status)
}

async fn alter_config(
    client: &mut Client,
    conn: &ConnArgs,
    topic: &str,
    set: &[String],
    delete: &[String],
) -> anyhow::Result<i32> {
    if set.is_empty() && delete.is_empty() {
        bail!("nothing to change: give --set key=value and/or --delete key");
    }
    let mut configs = Vec::new();
    for kv in set {
        let (k, v) = split_kv(kv)?;
        let mut c = AlterableConfig::default();
        c.name = sb(k);
        c.config_operation = 0; // SET
        c.value = Some(sb(v));
        configs.push(c);
    }
    for k in delete {
        let mut c = AlterableConfig::default();
        c.name = sb(k);
        c.config_operation = 1; // DELETE
        c.value = None;
        configs.push(c);
    }
    let mut res = AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = sb(topic);
    res.configs = configs;
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![res];
    let resp = client.send_controller(req, 1).await?;
    for r in &resp.responses {
        check(r.error_code, r.error_message.as_ref(), || {
            format!("altering the configs of topic {topic}")
        })?;
    }
    if conn.json() {
        print_json(&json!({"topic": topic, "set": set, "deleted": delete}))?;
    } else {
        println!("Completed updating config for topic {topic}.");
    }
    Ok(0)
}

async fn add_partitions(
    client: &mut Client,
    conn: &ConnArgs,
    topic: &str,
    count: i32,
) -> anyhow::Result<i32> {
    let mut t = CreatePartitionsTopic::default();
    t.name = name(topic);
    t.count = count;
    t.assignments = None;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = conn.timeout_ms.min(i32::MAX as u64) as i32;
    let resp = client.send_controller(req, 3).await?;
    for r in &resp.results {
        check(r.error_code, r.error_message.as_ref(), || {
            format!("adding partitions to topic {topic}")
        })?;
    }
    if conn.json() {
        print_json(&json!({"topic": topic, "partition_count": count}))?;
    } else {
        println!("Topic {topic} now has {count} partitions.");
    }
    Ok(0)
}

async fn delete_topics(
    client: &mut Client,
    conn: &ConnArgs,
    topics: Vec<String>,
    if_exists: bool,
) -> anyhow::Result<i32> {
    let mut req = DeleteTopicsRequest::default();
    req.timeout_ms = conn.timeout_ms.min(i32::MAX as u64) as i32;
    req.topics = topics
        .iter()
        .map(|t| {
            let mut d = DeleteTopicState::default();
            d.name = Some(name(t));
            d
        })
        .collect();
    req.topic_names = topics.iter().map(|t| name(t)).collect();
    let resp = client.send_controller(req, 6).await?;
    let mut failed = 0;
    let mut results = Vec::new();
    for r in &resp.responses {
        let t = r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        // UNKNOWN_TOPIC_OR_PARTITION (3)
        let ok = r.error_code == 0 || (if_exists && r.error_code == 3);
        if !ok {
            failed += 1;
        }
        let err = (r.error_code != 0).then(|| error_name(r.error_code));
        if !conn.json() {
            match (&err, ok) {
                (None, _) => println!("Deleted topic {t}."),
                (Some(_), true) => println!("Topic {t} does not exist."),
                (Some(e), false) => eprintln!("Error while deleting topic {t}: {e}"),
            }
        }
        results.push(json!({"topic": t, "deleted": r.error_code == 0, "error": err}));
    }
    if conn.json() {
        print_json(&json!(results))?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
