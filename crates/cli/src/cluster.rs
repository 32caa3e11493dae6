//! `holdfast cluster describe|health`.

use std::collections::BTreeMap;

use holdfast_client::{check, Client, Connection};
use kafka_protocol::messages::DescribeClusterRequest;
use serde_json::json;

use crate::ops::{self, print_json, print_table, ConnArgs};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCmd {
    /// Cluster id, controller and brokers.
    Describe,
    /// Whether every broker answers, a controller exists, and every partition has a leader,
    /// a full ISR and at least min.insync.replicas in it. Exits 1 when unhealthy.
    Health,
    /// The loss ledger: every event where data was or may have been lost (read from the
    /// `__holdfast_events` topic; Holdfast brokers only).
    Events {
        /// Only events of this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only events of this reason (retention_unconsumed, fetch_below_log_start,
        /// truncation, corrupt_batch, producer_fenced).
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(args: ClusterArgs) -> anyhow::Result<i32> {
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        match args.cmd {
            ClusterCmd::Describe => describe(&mut client, &args.conn).await,
            ClusterCmd::Health => health(&mut client, &args.conn).await,
            ClusterCmd::Events { topic, reason } => {
                events(&mut client, &args.conn, topic.as_deref(), reason.as_deref()).await
            }
        }
    })
}

async fn describe(client: &mut Client, conn: &ConnArgs) -> anyhow::Result<i32> {
    // DescribeCluster (Kafka 2.8+); Metadata (already loaded) otherwise.
    let (cluster_id, controller, brokers) =
        match client.send_any(DescribeClusterRequest::default(), 1).await {
            Ok(r) => {
                check(r.error_code, r.error_message.as_ref(), || {
                    "DescribeCluster".to_string()
                })?;
                let brokers: Vec<(i32, String, i32, Option<String>)> = r
                    .brokers
                    .iter()
                    .map(|b| {
                        (
                            b.broker_id.0,
                            b.host.to_string(),
                            b.port,
                            b.rack.as_ref().map(|r| r.to_string()),
                        )
                    })
                    .collect();
                (Some(r.cluster_id.to_string()), r.controller_id.0, brokers)
            }
            Err(holdfast_client::ClientError::Unsupported { .. }) => (
                client.cluster_id.clone(),
                client.controller_id,
                client
                    .brokers()
                    .map(|b| (b.node_id, b.host.clone(), b.port, b.rack.clone()))
                    .collect(),
            ),
            Err(e) => return Err(e.into()),
        };
    let md = client.metadata(None).await?;
    let partitions: usize = md.topics.iter().map(|t| t.partitions.len()).sum();
    if conn.json() {
        print_json(&json!({
            "cluster_id": cluster_id,
            "controller_id": controller,
            "brokers": brokers.iter().map(|(id, h, p, r)| json!({"id": id, "host": h, "port": p, "rack": r})).collect::<Vec<_>>(),
            "topics": md.topics.len(),
            "partitions": partitions,
        }))?;
    } else {
        println!("ClusterId:    {}", cluster_id.as_deref().unwrap_or("-"));
        println!("ControllerId: {controller}");
        println!("Topics:       {}", md.topics.len());
        println!("Partitions:   {partitions}");
        println!();
        let rows: Vec<Vec<String>> = brokers
            .iter()
            .map(|(id, h, p, r)| {
                vec![
                    id.to_string(),
                    h.clone(),
                    p.to_string(),
                    r.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(&["BROKER", "HOST", "PORT", "RACK"], &rows, &[6]);
    }
    Ok(0)
}

/// What `cluster health` finds.
#[derive(Debug, Default)]
pub struct Health {
    pub nodes: Vec<i32>,
    pub nodes_down: Vec<i32>,
    pub controller_id: i32,
    pub leaderless: Vec<String>,
    pub under_replicated: Vec<String>,
    pub under_min_isr: Vec<String>,
    pub at_min_isr: Vec<String>,
}

impl Health {
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.controller_id < 0 {
            r.push("no_controller");
        }
        if !self.nodes_down.is_empty() {
            r.push("nodes_down");
        }
        if !self.leaderless.is_empty() {
            r.push("leaderless_partitions");
        }
        if !self.under_replicated.is_empty() {
            r.push("under_replicated_partitions");
        }
        if !self.under_min_isr.is_empty() {
            r.push("under_min_isr_partitions");
        }
        r
    }
}

pub async fn check_health(client: &mut Client, timeout_ms: u64) -> anyhow::Result<Health> {
    let md = client.metadata(None).await?;
    let mut h = Health {
        controller_id: client.controller_id,
        ..Health::default()
    };
    let brokers: Vec<_> = client.brokers().cloned().collect();
    for b in brokers {
        h.nodes.push(b.node_id);
        let ok = Connection::connect(
            &b.addr(),
            "holdfast-cli",
            std::time::Duration::from_millis(timeout_ms),
        )
        .await
        .is_ok();
        if !ok {
            h.nodes_down.push(b.node_id);
        }
    }
    let topics: Vec<String> = md
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    let configs = ops::topic_configs(client, &topics).await?;
    let mut by_name: BTreeMap<String, _> = BTreeMap::new();
    for t in &md.topics {
        if let Some(n) = &t.name {
            by_name.insert(n.to_string(), t);
        }
    }
    for (n, t) in by_name {
        let min_isr: usize = configs
            .get(&n)
            .and_then(|c| c.get("min.insync.replicas"))
            .and_then(|(v, _)| v.as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let mut parts: Vec<_> = t.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        for p in parts {
            let tp = format!("{n}/{}", p.partition_index);
            if p.leader_id.0 < 0 || h.nodes_down.contains(&p.leader_id.0) {
                h.leaderless.push(tp.clone());
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                h.under_replicated.push(tp.clone());
            }
            if p.isr_nodes.len() < min_isr {
                h.under_min_isr.push(tp.clone());
            } else if p.isr_nodes.len() == min_isr && p.replica_nodes.len() > min_isr {
                h.at_min_isr.push(tp);
            }
        }
    }
    Ok(h)
}

async fn health(client: &mut Client, conn: &ConnArgs) -> anyhow::Result<i32> {
    let h = check_health(client, conn.timeout_ms).await?;
    let reasons = h.reasons();
    let healthy = reasons.is_empty();
    if conn.json() {
        print_json(&json!({
            "healthy": healthy,
            "unhealthy_reasons": reasons,
            "controller_id": h.controller_id,
            "nodes": h.nodes,
            "nodes_down": h.nodes_down,
            "leaderless_partitions": h.leaderless,
            "under_replicated_partitions": h.under_replicated,
            "under_min_isr_partitions": h.under_min_isr,
            "at_min_isr_partitions": h.at_min_isr,
        }))?;
    } else {
        let list = |v: &[String]| format!("({}) [{}]", v.len(), v.join(", "));
        let ids = |v: &[i32]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!("Healthy:                     {healthy}");
        println!("Unhealthy reasons:           [{}]", reasons.join(", "));
        println!("Controller ID:               {}", h.controller_id);
        println!("All nodes:                   {}", ids(&h.nodes));
        println!("Nodes down:                  {}", ids(&h.nodes_down));
        println!("Leaderless partitions:       {}", list(&h.leaderless));
        println!("Under-replicated partitions: {}", list(&h.under_replicated));
        println!("Under-min-ISR partitions:    {}", list(&h.under_min_isr));
    }
    Ok(if healthy { 0 } else { 1 })
}

/// The topic the loss ledger lives in (holdfast_broker::ledger::EVENTS_TOPIC).
pub const EVENTS_TOPIC: &str = "__holdfast_events";

async fn events(
    client: &mut Client,
    conn: &ConnArgs,
    topic: Option<&str>,
    reason: Option<&str>,
) -> anyhow::Result<i32> {
    let records = crate::data::read_topic(client, EVENTS_TOPIC)
        .await?
        .unwrap_or_default();
    let mut events = Vec::new();
    for (_, r) in records {
        let Some(v) = r.value.as_deref() else {
            continue;
        };
        let Ok(ev) = serde_json::from_slice::<serde_json::Value>(v) else {
            eprintln!("skipping an unreadable event at offset {}", r.offset);
            continue;
        };
        if topic.is_some_and(|t| ev["topic"] != t) || reason.is_some_and(|x| ev["reason"] != x) {
            continue;
        }
        events.push(ev);
    }
    if conn.json() {
        print_json(&serde_json::Value::Array(events))?;
        return Ok(0);
    }
    let int = |v: &serde_json::Value| {
        v.as_i64()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e["time_ms"]
                    .as_i64()
                    .map(ops::format_datetime_ms)
                    .unwrap_or_else(|| "-".into()),
                e["reason"].as_str().unwrap_or("-").to_string(),
                e["topic"].as_str().unwrap_or("-").to_string(),
                int(&e["partition"]),
                int(&e["from_offset"]),
                int(&e["to_offset"]),
                int(&e["records"]),
                e["group"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("No loss events recorded.");
        return Ok(0);
    }
    print_table(
        &[
            "TIME",
            "REASON",
            "TOPIC",
            "PARTITION",
            "FROM-OFFSET",
            "TO-OFFSET",
            "RECORDS",
            "GROUP",
        ],
        &rows,
        &[24, 21, 10, 9, 11, 9, 7, 0],
    );
    Ok(0)
}
