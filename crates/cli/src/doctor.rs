//! `holdfast doctor`: a read-only durability audit through the standard admin APIs
//! (Metadata, DescribeConfigs, ListGroups, OffsetFetch, ListOffsets), so it audits Apache
//! Kafka as well. Each finding has a severity, one sentence, and the command that fixes it.
//! Exit code: 0 nothing above info, 1 warnings, 2 critical (or the audit could not run).

use std::collections::BTreeMap;

use holdfast_client::Client;
use serde_json::json;

use crate::ops::{self, print_json, Configs, ConnArgs};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    pub resource: String,
    pub explanation: String,
    pub fix: String,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        let findings = audit(&mut client, &args.conn.bootstrap).await?;
        let worst = findings.iter().map(|f| f.severity).max();
        if args.conn.json() {
            print_json(&json!({
                "worst": worst.map(Severity::name),
                "findings": findings.iter().map(|f| json!({
                    "severity": f.severity.name(),
                    "check": f.check,
                    "resource": f.resource,
                    "explanation": f.explanation,
                    "fix": f.fix,
                })).collect::<Vec<_>>(),
            }))?;
        } else {
            for f in &findings {
                println!(
                    "[{}] {} {}: {}",
                    f.severity.name().to_uppercase(),
                    f.check,
                    f.resource,
                    f.explanation
                );
                println!("    fix: {}", f.fix);
            }
            let count = |s| findings.iter().filter(|f| f.severity == s).count();
            println!(
                "{} critical, {} warning, {} info",
                count(Severity::Critical),
                count(Severity::Warning),
                count(Severity::Info)
            );
        }
        Ok(match worst {
            Some(Severity::Critical) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        })
    })
}

fn cfg<'a>(c: Option<&'a Configs>, key: &str) -> Option<&'a str> {
    c?.get(key)?.0.as_deref()
}

/// Runs every check.
pub async fn audit(client: &mut Client, bootstrap: &str) -> anyhow::Result<Vec<Finding>> {
    let alter = |topic: &str, change: &str| {
        format!("holdfast topic alter-config {topic} {change} --bootstrap {bootstrap}")
    };
    let mut out = Vec::new();
    let md = client.metadata(None).await?;
    let brokers = md.brokers.len();
    let mut topics: BTreeMap<
        String,
        &kafka_protocol::messages::metadata_response::MetadataResponseTopic,
    > = BTreeMap::new();
    for t in &md.topics {
        if let Some(n) = &t.name {
            if t.error_code == 0 {
                topics.insert(n.to_string(), t);
            }
        }
    }
    let names: Vec<String> = topics.keys().cloned().collect();
    let configs = ops::topic_configs(client, &names).await?;

    // Replication factor: on a cluster with fewer than 3 brokers no topic can have RF 3;
    // say so once, as a warning (the single-node case), instead of per topic.
    let low_rf: Vec<(&String, usize)> = topics
        .iter()
        .map(|(n, t)| {
            (
                n,
                t.partitions
                    .first()
                    .map(|p| p.replica_nodes.len())
                    .unwrap_or(0),
            )
        })
        .filter(|(_, rf)| *rf < 3)
        .collect();
    if brokers < 3 && !low_rf.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            check: "replication-factor",
            resource: format!("cluster ({brokers} broker{})", if brokers == 1 { "" } else { "s" }),
            explanation: format!(
                "{} topics have fewer than 3 replicas because the cluster has {brokers} broker(s): losing one disk loses their acknowledged data.",
                low_rf.len()
            ),
            fix: "add brokers until there are at least 3, then raise each topic's replication factor with kafka-reassign-partitions.sh".into(),
        });
    } else {
        for (n, rf) in &low_rf {
            out.push(Finding {
                severity: if *rf <= 1 { Severity::Critical } else { Severity::Warning },
                check: "replication-factor",
                resource: format!("topic {n}"),
                explanation: format!("replication factor {rf} is below 3: losing {rf} disk(s) loses acknowledged data."),
                fix: format!("raise the replication factor of {n} to 3 with kafka-reassign-partitions.sh"),
            });
        }
    }

    for (n, t) in &topics {
        let c = configs.get(n);
        let rf = t
            .partitions
            .first()
            .map(|p| p.replica_nodes.len())
            .unwrap_or(0);
        let min_isr: usize = cfg(c, "min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        if min_isr > rf {
            out.push(Finding {
                severity: Severity::Critical,
                check: "min-insync-replicas",
                resource: format!("topic {n}"),
                explanation: format!("min.insync.replicas={min_isr} exceeds the replication factor {rf}: every acks=all write fails with NOT_ENOUGH_REPLICAS."),
                fix: alter(n, &format!("--set min.insync.replicas={}", rf.max(1))),
            });
        } else if rf >= 2 && (min_isr <= 1 || min_isr + 1 < rf) {
            let want = if rf >= 3 { rf - 1 } else { 2.min(rf) };
            out.push(Finding {
                severity: if min_isr <= 1 { Severity::Critical } else { Severity::Warning },
                check: "min-insync-replicas",
                resource: format!("topic {n}"),
                explanation: format!("min.insync.replicas={min_isr} with {rf} replicas lets acks=all acknowledge a write held by {min_isr} replica(s), which one failure can lose."),
                fix: alter(n, &format!("--set min.insync.replicas={want}")),
            });
        }
        if cfg(c, "unclean.leader.election.enable") == Some("true") {
            out.push(Finding {
                severity: Severity::Critical,
                check: "unclean-leader-election",
                resource: format!("topic {n}"),
                explanation: "unclean.leader.election.enable=true lets an out-of-sync replica become leader and silently truncate acknowledged writes.".into(),
                fix: alter(n, "--set unclean.leader.election.enable=false"),
            });
        }
        // Page-cache-only: Holdfast names its policy; on Kafka, flush.messages > 1 means the
        // page cache (Kafka's norm, which relies on replication instead).
        let (pagecache, fix) = match cfg(c, "holdfast.flush.policy") {
            Some(policy) => (
                policy != "fsync",
                alter(n, "--set holdfast.flush.policy=fsync"),
            ),
            None => (
                cfg(c, "flush.messages").is_some_and(|v| v != "1"),
                alter(n, "--set flush.messages=1"),
            ),
        };
        if pagecache {
            let covered = rf >= 3 && min_isr >= 2;
            out.push(Finding {
                severity: if covered { Severity::Info } else { Severity::Warning },
                check: "page-cache-only",
                resource: format!("topic {n}"),
                explanation: if covered {
                    "writes are acknowledged before fsync; replication (RF>=3, min.insync.replicas>=2) is what keeps them across a power loss.".into()
                } else {
                    "writes are acknowledged from the page cache before fsync, with no replication to cover it: a power loss or kernel crash loses them.".into()
                },
                fix,
            });
        }
        if n == "__consumer_offsets"
            && cfg(c, "cleanup.policy").is_some_and(|p| !p.contains("compact"))
        {
            out.push(Finding {
                severity: Severity::Critical,
                check: "internal-topic",
                resource: format!("topic {n}"),
                explanation: "__consumer_offsets is not compacted: retention will delete committed offsets and consumers will reset.".into(),
                fix: alter(n, "--set cleanup.policy=compact"),
            });
        }
        let mut parts: Vec<_> = t.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        for p in parts {
            let tp = format!("partition {n}/{}", p.partition_index);
            let isr = p.isr_nodes.len();
            if p.leader_id.0 < 0 {
                out.push(Finding {
                    severity: Severity::Critical,
                    check: "offline-partition",
                    resource: tp,
                    explanation: "the partition has no leader: it accepts no writes and serves no reads.".into(),
                    fix: format!("bring back the brokers holding its replicas ({:?}); check `holdfast cluster health --bootstrap {bootstrap}`", p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>()),
                });
                continue;
            }
            if isr < p.replica_nodes.len() {
                out.push(Finding {
                    severity: Severity::Critical,
                    check: "under-replicated",
                    resource: tp.clone(),
                    explanation: format!("{isr} of {} replicas are in sync: acknowledged data has fewer copies than configured.", p.replica_nodes.len()),
                    fix: format!("restore the out-of-sync brokers; check `holdfast cluster health --bootstrap {bootstrap}`"),
                });
            }
            if rf > min_isr && isr == min_isr && rf > 1 {
                out.push(Finding {
                    severity: Severity::Warning,
                    check: "isr-at-minimum",
                    resource: tp,
                    explanation: format!("the ISR is at min.insync.replicas={min_isr}: one more failure stops acks=all writes."),
                    fix: format!("restore the out-of-sync brokers; check `holdfast cluster health --bootstrap {bootstrap}`"),
                });
            }
        }
    }

    // Consumer groups against retention.
    for (group, _, protocol) in crate::group::list_groups(client).await? {
        if protocol != "consumer" && !protocol.is_empty() {
            continue;
        }
        let (_, rows) = match crate::group::offset_rows(client, &group).await {
            Ok(r) => r,
            Err(e) => {
                out.push(Finding {
                    severity: Severity::Info,
                    check: "group-lag",
                    resource: format!("group {group}"),
                    explanation: format!("could not read the group's offsets: {e:#}"),
                    fix: format!("holdfast group describe {group} --bootstrap {bootstrap}"),
                });
                continue;
            }
        };
        for r in rows {
            let Some(ratio) = r.retention_ratio() else {
                continue;
            };
            if ratio <= 0.5 {
                continue;
            }
            let retention_ms = configs
                .get(&r.topic)
                .and_then(|c| cfg(Some(c), "retention.ms"))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1);
            let fix = if retention_ms > 0 {
                format!(
                    "scale up group {group}'s consumers, or give them time: {}",
                    alter(
                        &r.topic,
                        &format!("--set retention.ms={}", retention_ms.saturating_mul(2))
                    )
                )
            } else {
                format!("scale up group {group}'s consumers")
            };
            out.push(Finding {
                severity: if ratio >= 1.0 { Severity::Critical } else { Severity::Warning },
                check: "group-lag-retention",
                resource: format!("group {group} partition {}/{}", r.topic, r.partition),
                explanation: if ratio >= 1.0 {
                    format!("the group's committed offset {} is at or below the log start {}: retention has deleted (or deletes next) records it never read.", r.current.unwrap_or(-1), r.log_start)
                } else {
                    format!("the group has not read {:.0}% of the retained log: retention will delete records it never read unless it catches up.", ratio * 100.0)
                },
                fix,
            });
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.check.cmp(b.check))
            .then(a.resource.cmp(&b.resource))
    });
    Ok(out)
}
