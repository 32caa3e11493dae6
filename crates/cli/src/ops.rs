//! What every admin command shares: connection flags, output format, and the queries
//! several commands need (end offsets, committed offsets, topic configs).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use holdfast_client::{check, Client};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::{
    BrokerId, DescribeConfigsRequest, DescribeGroupsRequest, GroupId, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// Flags every command talking to a cluster takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Bootstrap servers, comma-separated `host:port`.
    #[arg(long, short = 'b', default_value = "localhost:9092", global = true)]
    pub bootstrap: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: Format,
    /// Timeout of each request, in milliseconds.
    #[arg(long, default_value_t = 30_000, global = true)]
    pub timeout_ms: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl ConnArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(
            &self.bootstrap,
            "holdfast-cli",
            Duration::from_millis(self.timeout_ms),
        )
        .await
        .with_context(|| format!("connecting to {}", self.bootstrap))
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Runs an async command on a current-thread runtime; the command returns its exit code.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> anyhow::Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as Kafka's tools do: each column left-aligned and padded to its widest cell
/// (at least `min_widths[i]`, or the last of them), separated by one space; the last column
/// is not padded.
pub fn print_table(header: &[&str], rows: &[Vec<String>], min_widths: &[usize]) {
    let min = |i: usize| {
        min_widths
            .get(i)
            .or(min_widths.last())
            .copied()
            .unwrap_or(0)
    };
    let mut widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| h.len().max(min(i)))
        .collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$} ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The leader of every partition of `topics` (from a Metadata response).
pub fn leaders(md: &MetadataResponse) -> BTreeMap<(String, i32), i32> {
    let mut out = BTreeMap::new();
    for t in &md.topics {
        let Some(name) = &t.name else { continue };
        for p in &t.partitions {
            out.insert((name.to_string(), p.partition_index), p.leader_id.0);
        }
    }
    out
}

/// ListOffsets for `spec` ((topic, partition) → timestamp: -1 latest, -2 earliest, or a time
/// in ms), sent to each partition's leader. Returns (topic, partition) → offset (-1 when no
/// offset matches a timestamp).
pub async fn list_offsets(
    client: &mut Client,
    spec: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    if spec.is_empty() {
        return Ok(BTreeMap::new());
    }
    let topics: Vec<String> = {
        let mut t: Vec<String> = spec.keys().map(|(t, _)| t.clone()).collect();
        t.dedup();
        t
    };
    let md = client.metadata(Some(topics)).await?;
    let leaders = leaders(&md);
    let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<(i32, i64)>>> = BTreeMap::new();
    for ((t, p), ts) in spec {
        let leader = *leaders
            .get(&(t.clone(), *p))
            .with_context(|| format!("no partition {t}-{p}"))?;
        if leader < 0 {
            bail!("partition {t}-{p} has no leader");
        }
        by_leader
            .entry(leader)
            .or_default()
            .entry(t.clone())
            .or_default()
            .push((*p, *ts));
    }
    let mut out = BTreeMap::new();
    for (leader, topics) in by_leader {
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = topics
            .iter()
            .map(|(t, ps)| {
                let mut lt = ListOffsetsTopic::default();
                lt.name = name(t);
                lt.partitions = ps
                    .iter()
                    .map(|(p, ts)| {
                        let mut lp = ListOffsetsPartition::default();
                        lp.partition_index = *p;
                        lp.current_leader_epoch = -1;
                        lp.timestamp = *ts;
                        lp
                    })
                    .collect();
                lt
            })
            .collect();
        let resp = client.send_to(leader, req, 7).await?;
        for t in resp.topics {
            for p in t.partitions {
                check(p.error_code, None, || {
                    format!("ListOffsets {}-{}", t.name.0, p.partition_index)
                })?;
                out.insert((t.name.0.to_string(), p.partition_index), p.offset);
            }
        }
    }
    Ok(out)
}

/// The group's committed offsets (every partition it has one for).
pub async fn committed_offsets(
    client: &mut Client,
    coordinator: i32,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(sb(group));
    req.topics = None;
    // v7 at most: the single-group layout (v8+ batches groups).
    let resp = client.send_to(coordinator, req, 7).await?;
    check(resp.error_code, None, || {
        format!("OffsetFetch of group {group}")
    })?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, None, || {
                format!("OffsetFetch {}-{}", t.name.0, p.partition_index)
            })?;
            if p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// A consumer group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberInfo>,
}

#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub assignment: Vec<(String, i32)>,
}

pub async fn describe_group(
    client: &mut Client,
    coordinator: i32,
    group: &str,
) -> anyhow::Result<GroupInfo> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(sb(group))];
    let resp = client.send_to(coordinator, req, 5).await?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .context("DescribeGroups returned no group")?;
    check(g.error_code, g.error_message.as_ref(), || {
        format!("describing group {group}")
    })?;
    let members = g
        .members
        .iter()
        .map(|m| {
            let mut assignment = Vec::new();
            if g.protocol_type.as_str() == "consumer" && m.member_assignment.len() >= 2 {
                let mut b = m.member_assignment.clone();
                let version = i16::from_be_bytes([b[0], b[1]]);
                bytes::Buf::advance(&mut b, 2);
                if let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) {
                    for tp in a.assigned_partitions {
                        for p in tp.partitions {
                            assignment.push((tp.topic.0.to_string(), p));
                        }
                    }
                }
            }
            MemberInfo {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment,
            }
        })
        .collect();
    Ok(GroupInfo {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// Topic configs (DescribeConfigs), name → (value, source). Source codes are Kafka's:
/// 1 topic override, 4 static broker, 5 default, ...
pub type Configs = BTreeMap<String, (Option<String>, i8)>;

pub async fn topic_configs(
    client: &mut Client,
    topics: &[String],
) -> anyhow::Result<BTreeMap<String, Configs>> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut req = DescribeConfigsRequest::default();
    req.resources = topics
        .iter()
        .map(|t| {
            let mut r = DescribeConfigsResource::default();
            r.resource_type = 2;
            r.resource_name = sb(t);
            r.configuration_keys = None;
            r
        })
        .collect();
    let resp = client.send_any(req, 4).await?;
    let mut out = BTreeMap::new();
    for r in resp.results {
        check(r.error_code, r.error_message.as_ref(), || {
            format!("DescribeConfigs of topic {}", r.resource_name)
        })?;
        let cfg = r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    (c.value.as_ref().map(|v| v.to_string()), c.config_source),
                )
            })
            .collect();
        out.insert(r.resource_name.to_string(), cfg);
    }
    Ok(out)
}

/// Kafka's text rendering of a UUID (topic ids, cluster ids): URL-safe base64, no padding.
pub fn uuid_base64(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:mm:SS[.sss][Z|±HH:MM]` (Kafka's `--to-datetime` format; no zone
/// means UTC) into ms since the epoch.
pub fn parse_datetime_ms(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("{s}: expected YYYY-MM-DDTHH:mm:SS[.sss][Z|+HH:MM]");
    let (date, rest) = s.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if d.len() != 3 {
        return Err(bad());
    }
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        (t, sign * (h * 60 + m))
    } else {
        (rest, 0)
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if t.len() != 3 {
        return Err(bad());
    }
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    let days = days_from_civil(d[0], d[1], d[2]);
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2] - offset_min * 60;
    Ok(secs * 1000 + frac_ms)
}

/// Formats ms since the epoch as `YYYY-MM-DDTHH:mm:SS.sssZ`.
pub fn format_datetime_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses an ISO-8601 duration as Kafka's `--by-duration` takes it (`PnDTnHnMnS`,
/// e.g. `PT1H30M`, `P2D`), or a short form `90s`, `15m`, `2h`, `1d`, `500ms`; in ms.
pub fn parse_duration_ms(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("{s}: expected an ISO-8601 duration (PT1H30M) or 90s/15m/2h/1d");
    if let Some(rest) = s.strip_prefix('P').or_else(|| s.strip_prefix('p')) {
        let mut total_ms = 0f64;
        let mut num = String::new();
        let mut in_time = false;
        for c in rest.chars() {
            match c.to_ascii_uppercase() {
                'T' => in_time = true,
                c if c.is_ascii_digit() || c == '.' => num.push(c),
                unit => {
                    let n: f64 = num.parse().map_err(|_| bad())?;
                    num.clear();
                    let ms = match (unit, in_time) {
                        ('D', false) => 86_400_000.0,
                        ('W', false) => 7.0 * 86_400_000.0,
                        ('H', true) => 3_600_000.0,
                        ('M', true) => 60_000.0,
                        ('S', true) => 1000.0,
                        _ => return Err(bad()),
                    };
                    total_ms += n * ms;
                }
            }
        }
        if !num.is_empty() {
            return Err(bad());
        }
        return Ok(total_ms as i64);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(n * ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_and_durations() {
        let t = parse_datetime_ms("2024-02-29T12:34:56.789Z").expect("valid");
        assert_eq!(format_datetime_ms(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(
            parse_datetime_ms("1970-01-01T01:00:00+01:00").expect("valid"),
            0
        );
        assert_eq!(
            parse_datetime_ms("1970-01-01T00:00:01").expect("valid"),
            1000
        );
        assert!(parse_datetime_ms("yesterday").is_err());
        assert_eq!(parse_duration_ms("PT1H30M").expect("valid"), 5_400_000);
        assert_eq!(parse_duration_ms("P1DT1S").expect("valid"), 86_401_000);
        assert_eq!(parse_duration_ms("15m").expect("valid"), 900_000);
        assert!(parse_duration_ms("P1X").is_err());
    }

    #[test]
    fn uuids_render_as_kafka_does() {
        // Kafka's Uuid.toString of 0x0001..0f10 bytes.
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(uuid_base64(&b), "AQIDBAUGBwgJCgsMDQ4PEA");
        assert_eq!(uuid_base64(&[0; 16]).len(), 22);
    }
}
