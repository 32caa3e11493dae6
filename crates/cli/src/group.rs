//! `holdfast group list|describe|lag|reset-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use holdfast_client::{check, error_name, Client};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
};
use serde_json::json;

use crate::ops::{self, name, print_json, print_table, sb, ConnArgs};

#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(clap::Subcommand, Debug)]
enum GroupCmd {
    /// List consumer groups.
    List,
    /// Offsets, lag and members of a group, in kafka-consumer-groups.sh's layout.
    Describe {
        group: String,
        /// Members instead of offsets: `GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS`.
        #[arg(long, conflicts_with = "state")]
        members: bool,
        /// With --members: the group instance id and the assignment too.
        #[arg(long, requires = "members")]
        verbose: bool,
        /// The group's state: `GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS`.
        #[arg(long)]
        state: bool,
    },
    /// Lag per partition, with the log start offset and the lag as a fraction of the
    /// records the log retains (1.0 or more: the group's next records are already deleted).
    Lag { group: String },
    /// Move a group's committed offsets (dry run unless --execute; the group must be empty).
    ResetOffsets(ResetArgs),
    /// Delete groups (they must be empty).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args([
    "to_earliest", "to_latest", "to_current", "to_offset", "to_datetime", "by_duration", "shift_by"
])))]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["topic", "all_topics"])))]
struct ResetArgs {
    group: String,
    /// `topic` or `topic:0,1,2` (repeatable).
    #[arg(long)]
    topic: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_current: bool,
    #[arg(long, allow_hyphen_values = true)]
    to_offset: Option<i64>,
    /// `YYYY-MM-DDTHH:mm:SS[.sss][Z|+HH:MM]` (UTC when no zone).
    #[arg(long)]
    to_datetime: Option<String>,
    /// A duration before now: `PT1H30M`, `P1D`, or `90m`.
    #[arg(long)]
    by_duration: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Commit the new offsets (without it, only print them).
    #[arg(long)]
    execute: bool,
}

pub fn run(args: GroupArgs) -> anyhow::Result<i32> {
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        match args.cmd {
            GroupCmd::List => list(&mut client, &args.conn).await,
            GroupCmd::Describe {
                group,
                members,
                verbose,
                state,
            } => {
                if members {
                    describe_members(&mut client, &args.conn, &group, verbose).await
                } else if state {
                    describe_state(&mut client, &args.conn, &group).await
                } else {
                    describe(&mut client, &args.conn, &group).await
                }
            }
            GroupCmd::Lag { group } => lag(&mut client, &args.conn, &group).await,
            GroupCmd::ResetOffsets(r) => reset(&mut client, &args.conn, r).await,
            GroupCmd::Delete { groups } => delete(&mut client, &args.conn, groups).await,
        }
    })
}

/// Every group of the cluster: (group, state, protocol type), from every broker.
pub async fn list_groups(client: &mut Client) -> anyhow::Result<Vec<(String, String, String)>> {
    let ids: Vec<i32> = client.brokers().map(|b| b.node_id).collect();
    let mut out = Vec::new();
    for id in ids {
        let resp = client.send_to(id, ListGroupsRequest::default(), 4).await?;
        check(resp.error_code, None, || {
            format!("ListGroups on broker {id}")
        })?;
        for g in resp.groups {
            out.push((
                g.group_id.0.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn list(client: &mut Client, conn: &ConnArgs) -> anyhow::Result<i32> {
    let groups = list_groups(client).await?;
    if conn.json() {
        print_json(&json!(groups
            .iter()
            .map(|(g, s, p)| json!({"group": g, "state": s, "protocol_type": p}))
            .collect::<Vec<_>>()))?;
    } else {
        for (g, _, _) in &groups {
            println!("{g}");
        }
    }
    Ok(0)
}

/// One row of describe/lag.
#[derive(Debug, Clone)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: i32,
    pub current: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    pub member: Option<(String, String, String)>,
}

impl OffsetRow {
    pub fn lag(&self) -> Option<i64> {
        self.current.map(|c| (self.log_end - c).max(0))
    }

    /// Lag as a fraction of the records the log retains: (end − committed) / (end − start).
    /// 1.0 or more: the group's next record is already gone (or goes with the next
    /// deletion). `None` without a committed offset; 0 for an empty log.
    pub fn retention_ratio(&self) -> Option<f64> {
        let c = self.current?;
        let retained = self.log_end - self.log_start;
        if retained <= 0 {
            return Some(if c < self.log_end { 1.0 } else { 0.0 });
        }
        Some((self.log_end - c).max(0) as f64 / retained as f64)
    }
}

/// Committed offsets, log start and end offsets, and the owning member of every partition
/// the group has an offset for or is assigned.
pub async fn offset_rows(
    client: &mut Client,
    group: &str,
) -> anyhow::Result<(ops::GroupInfo, Vec<OffsetRow>)> {
    let coord = client.group_coordinator(group).await?;
    let info = ops::describe_group(client, coord, group).await?;
    let committed = ops::committed_offsets(client, coord, group).await?;
    let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &info.members {
        for tp in &m.assignment {
            owner.insert(
                tp.clone(),
                (
                    m.member_id.clone(),
                    format!("/{}", m.host.trim_start_matches('/')),
                    m.client_id.clone(),
                ),
            );
        }
    }
    let parts: BTreeSet<(String, i32)> = committed.keys().chain(owner.keys()).cloned().collect();
    // Partitions of deleted topics keep their committed offsets; leave them out of the
    // end-offset queries.
    let topics: Vec<String> = parts
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let existing: BTreeSet<(String, i32)> = if topics.is_empty() {
        BTreeSet::new()
    } else {
        ops::leaders(&client.metadata(Some(topics)).await?)
            .into_keys()
            .collect()
    };
    let live: Vec<&(String, i32)> = parts.iter().filter(|tp| existing.contains(*tp)).collect();
    let ends =
        ops::list_offsets(client, &live.iter().map(|tp| ((*tp).clone(), -1)).collect()).await?;
    let starts =
        ops::list_offsets(client, &live.iter().map(|tp| ((*tp).clone(), -2)).collect()).await?;
    let rows = live
        .into_iter()
        .map(|tp| OffsetRow {
            topic: tp.0.clone(),
            partition: tp.1,
            current: committed.get(tp).copied(),
            log_start: starts.get(tp).copied().unwrap_or(0),
            log_end: ends.get(tp).copied().unwrap_or(0),
            member: owner.get(tp).cloned(),
        })
        .collect();
    Ok((info, rows))
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

async fn describe(client: &mut Client, conn: &ConnArgs, group: &str) -> anyhow::Result<i32> {
    let (info, rows) = offset_rows(client, group).await?;
    if conn.json() {
        print_json(&json!({
            "group": group,
            "state": info.state,
            "protocol_type": info.protocol_type,
            "protocol": info.protocol,
            "members": info.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "group_instance_id": m.instance_id,
                "client_id": m.client_id,
                "host": m.host,
                "assignment": m.assignment.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "offsets": rows.iter().map(|r| json!({
                "topic": r.topic,
                "partition": r.partition,
                "current_offset": r.current,
                "log_end_offset": r.log_end,
                "lag": r.lag(),
                "consumer_id": r.member.as_ref().map(|m| &m.0),
                "host": r.member.as_ref().map(|m| &m.1),
                "client_id": r.member.as_ref().map(|m| &m.2),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    if info.members.is_empty() {
        eprintln!("\nConsumer group '{group}' has no active members.\n");
    }
    if rows.is_empty() {
        eprintln!("Consumer group '{group}' has no committed offsets or assigned partitions.");
        return Ok(0);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (c, h, cl) = r
                .member
                .clone()
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
            vec![
                group.to_string(),
                r.topic.clone(),
                r.partition.to_string(),
                opt(r.current),
                r.log_end.to_string(),
                opt(r.lag()),
                c,
                h,
                cl,
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &table,
        // kafka-consumer-groups.sh: "%-{g}s %-{t}s %-10s %-15s %-15s %-15s %-{c}s %-{h}s %s"
        &[15, 15, 10, 15, 15, 15, 15, 15, 0],
    );
    Ok(0)
}

/// `topic(0,1),other(2)`, as kafka-consumer-groups.sh renders an assignment.
fn render_assignment(tps: &[(String, i32)]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            format!(
                "{t}({})",
                ps.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn describe_members(
    client: &mut Client,
    conn: &ConnArgs,
    group: &str,
    verbose: bool,
) -> anyhow::Result<i32> {
    let coord = client.group_coordinator(group).await?;
    let info = ops::describe_group(client, coord, group).await?;
    if conn.json() {
        print_json(&json!(info
            .members
            .iter()
            .map(|m| json!({
                "group": group,
                "consumer_id": m.member_id,
                "group_instance_id": m.instance_id,
                "host": format!("/{}", m.host.trim_start_matches('/')),
                "client_id": m.client_id,
                "partitions": m.assignment.len(),
                "assignment": m.assignment.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()))?;
        return Ok(0);
    }
    if info.members.is_empty() {
        eprintln!("\nConsumer group '{group}' has no active members.\n");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = info
        .members
        .iter()
        .map(|m| {
            let mut r = vec![group.to_string(), m.member_id.clone()];
            if verbose {
                r.push(m.instance_id.clone().unwrap_or_else(|| "-".into()));
            }
            r.push(format!("/{}", m.host.trim_start_matches('/')));
            r.push(m.client_id.clone());
            r.push(m.assignment.len().to_string());
            if verbose {
                r.push(if m.assignment.is_empty() {
                    "-".into()
                } else {
                    render_assignment(&m.assignment)
                });
            }
            r
        })
        .collect();
    let header: Vec<&str> = if verbose {
        vec![
            "GROUP",
            "CONSUMER-ID",
            "GROUP-INSTANCE-ID",
            "HOST",
            "CLIENT-ID",
            "#PARTITIONS",
            "ASSIGNMENT",
        ]
    } else {
        vec!["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS"]
    };
    print_table(&header, &rows, &[15]);
    Ok(0)
}

async fn describe_state(client: &mut Client, conn: &ConnArgs, group: &str) -> anyhow::Result<i32> {
    let coord = client.group_coordinator(group).await?;
    let info = ops::describe_group(client, coord, group).await?;
    let addr = client
        .brokers()
        .find(|b| b.node_id == coord)
        .map(|b| b.addr())
        .unwrap_or_else(|| "-".into());
    if conn.json() {
        print_json(&json!({
            "group": group,
            "coordinator": {"id": coord, "address": addr},
            "assignment_strategy": info.protocol,
            "state": info.state,
            "members": info.members.len(),
        }))?;
        return Ok(0);
    }
    print_table(
        &[
            "GROUP",
            "COORDINATOR (ID)",
            "ASSIGNMENT-STRATEGY",
            "STATE",
            "#MEMBERS",
        ],
        &[vec![
            group.to_string(),
            format!("{addr}  ({coord})"),
            if info.protocol.is_empty() {
                "-".into()
            } else {
                info.protocol.clone()
            },
            info.state.clone(),
            info.members.len().to_string(),
        ]],
        &[15],
    );
    Ok(0)
}

async fn lag(client: &mut Client, conn: &ConnArgs, group: &str) -> anyhow::Result<i32> {
    let (_, rows) = offset_rows(client, group).await?;
    let total: i64 = rows.iter().filter_map(OffsetRow::lag).sum();
    if conn.json() {
        print_json(&json!({
            "group": group,
            "total_lag": total,
            "partitions": rows.iter().map(|r| json!({
                "topic": r.topic,
                "partition": r.partition,
                "current_offset": r.current,
                "log_start_offset": r.log_start,
                "log_end_offset": r.log_end,
                "lag": r.lag(),
                "lag_retention_ratio": r.retention_ratio(),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                group.to_string(),
                r.topic.clone(),
                r.partition.to_string(),
                opt(r.current),
                r.log_start.to_string(),
                r.log_end.to_string(),
                opt(r.lag()),
                r.retention_ratio()
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-START-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "LAG-RETENTION-RATIO",
        ],
        &table,
        &[15, 15, 10, 15],
    );
    println!("TOTAL-LAG {total}");
    Ok(0)
}

async fn reset(client: &mut Client, conn: &ConnArgs, r: ResetArgs) -> anyhow::Result<i32> {
    let group = r.group.as_str();
    let coord = client.group_coordinator(group).await?;
    let info = ops::describe_group(client, coord, group).await?;
    if info.state != "Empty" && info.state != "Dead" {
        bail!(
            "Assignments can only be reset if the group '{group}' is inactive, but the current state is {}.",
            info.state
        );
    }
    let committed = ops::committed_offsets(client, coord, group).await?;
    // The partitions in scope.
    let mut parts: BTreeSet<(String, i32)> = BTreeSet::new();
    if r.all_topics {
        parts.extend(committed.keys().cloned());
    } else {
        let mut whole = Vec::new();
        for spec in &r.topic {
            match spec.split_once(':') {
                Some((t, ps)) => {
                    for p in ps.split(',') {
                        let p: i32 = p
                            .trim()
                            .parse()
                            .with_context(|| format!("--topic {spec}: bad partition {p}"))?;
                        parts.insert((t.to_string(), p));
                    }
                }
                None => whole.push(spec.clone()),
            }
        }
        if !whole.is_empty() {
            let md = client.metadata(Some(whole.clone())).await?;
            for t in &md.topics {
                let n = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
                check(t.error_code, None, || format!("topic {n}"))?;
                for p in &t.partitions {
                    parts.insert((n.clone(), p.partition_index));
                }
            }
        }
    }
    let spec = |ts: i64| {
        parts
            .iter()
            .map(|tp| (tp.clone(), ts))
            .collect::<BTreeMap<_, _>>()
    };
    let earliest = ops::list_offsets(client, &spec(-2)).await?;
    let latest = ops::list_offsets(client, &spec(-1)).await?;
    let clamp = |tp: &(String, i32), o: i64| {
        let lo = earliest.get(tp).copied().unwrap_or(0);
        let hi = latest.get(tp).copied().unwrap_or(0);
        o.clamp(lo, hi.max(lo))
    };
    let by_time = match (&r.to_datetime, &r.by_duration) {
        (Some(dt), _) => Some(ops::parse_datetime_ms(dt)?),
        (_, Some(d)) => Some(ops::now_ms() - ops::parse_duration_ms(d)?),
        _ => None,
    };
    let at_time = match by_time {
        Some(ts) => Some(ops::list_offsets(client, &spec(ts)).await?),
        None => None,
    };
    let mut new_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for tp in &parts {
        let current = committed.get(tp).copied();
        let o = if r.to_earliest {
            earliest.get(tp).copied().unwrap_or(0)
        } else if r.to_latest {
            latest.get(tp).copied().unwrap_or(0)
        } else if r.to_current {
            match current {
                Some(c) => c,
                None => continue,
            }
        } else if let Some(o) = r.to_offset {
            clamp(tp, o)
        } else if let Some(n) = r.shift_by {
            // Kafka shifts from the committed offset; without one, from the latest.
            let base = current.unwrap_or_else(|| latest.get(tp).copied().unwrap_or(0));
            clamp(tp, base.saturating_add(n))
        } else if let Some(at) = &at_time {
            // No record at or after the time: the end of the log.
            match at.get(tp).copied() {
                Some(o) if o >= 0 => o,
                _ => latest.get(tp).copied().unwrap_or(0),
            }
        } else {
            bail!("no reset target given");
        };
        new_offsets.insert(tp.clone(), o);
    }
    if r.execute && !new_offsets.is_empty() {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for ((t, p), o) in &new_offsets {
            by_topic.entry(t).or_default().push((*p, *o));
        }
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(sb(group));
        req.generation_id_or_member_epoch = -1;
        req.member_id = sb("");
        req.retention_time_ms = -1;
        req.topics = by_topic
            .into_iter()
            .map(|(t, ps)| {
                let mut ct = OffsetCommitRequestTopic::default();
                ct.name = name(t);
                ct.partitions = ps
                    .into_iter()
                    .map(|(p, o)| {
                        let mut cp = OffsetCommitRequestPartition::default();
                        cp.partition_index = p;
                        cp.committed_offset = o;
                        cp.committed_leader_epoch = -1;
                        cp
                    })
                    .collect();
                ct
            })
            .collect();
        let resp = client.send_to(coord, req, 8).await?;
        for t in &resp.topics {
            for p in &t.partitions {
                check(p.error_code, None, || {
                    format!("committing {}-{}", t.name.0, p.partition_index)
                })?;
            }
        }
    }
    if conn.json() {
        print_json(&json!({
            "group": group,
            "executed": r.execute,
            "offsets": new_offsets.iter().map(|((t, p), o)| json!({
                "topic": t, "partition": p, "new_offset": o,
                "previous_offset": committed.get(&(t.clone(), *p)),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        let rows: Vec<Vec<String>> = new_offsets
            .iter()
            .map(|((t, p), o)| vec![group.to_string(), t.clone(), p.to_string(), o.to_string()])
            .collect();
        print_table(
            &["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
            &rows,
            &[15, 15, 10, 0],
        );
        if !r.execute {
            eprintln!("Dry run: nothing committed; add --execute to apply.");
        }
    }
    Ok(0)
}

async fn delete(client: &mut Client, conn: &ConnArgs, groups: Vec<String>) -> anyhow::Result<i32> {
    let mut results = Vec::new();
    let mut failed = 0;
    for g in &groups {
        let coord = client.group_coordinator(g).await?;
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = vec![GroupId(sb(g))];
        let resp = client.send_to(coord, req, 2).await?;
        for r in resp.results {
            let err = (r.error_code != 0).then(|| error_name(r.error_code));
            if err.is_some() {
                failed += 1;
            }
            results.push((r.group_id.0.to_string(), err));
        }
    }
    if conn.json() {
        print_json(&json!(results
            .iter()
            .map(|(g, e)| json!({"group": g, "deleted": e.is_none(), "error": e}))
            .collect::<Vec<_>>()))?;
    } else {
        let ok: Vec<String> = results
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(g, _)| format!("'{g}'"))
            .collect();
        if !ok.is_empty() {
            println!(
                "Deletion of requested consumer groups ({}) was successful.",
                ok.join(", ")
            );
        }
        for (g, e) in &results {
            if let Some(e) = e {
                eprintln!("Deletion of consumer group '{g}' failed: {e}");
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
