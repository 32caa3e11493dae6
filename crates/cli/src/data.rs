//! `holdfast produce` and `holdfast consume`: kcat-like, through the standard APIs.
//!
//! Produce is idempotent (InitProducerId, sequence numbers) with acks=all: a record the
//! command reports produced is acknowledged under the topic's durability policy.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use holdfast_client::records::{decode_fetched, encode_batch, ProducerIdentity, Record};
use holdfast_client::{check, error_name, Client};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, InitProducerIdRequest, ProduceRequest};
use serde_json::json;

use crate::ops::{self, name, print_json, ConnArgs};

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    topic: String,
    /// Partition to write to (default: by key hash as Kafka's default partitioner, keyless
    /// records round-robin).
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// Key of every record.
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Split each input line at the first DELIM into key and value (kcat's -K).
    #[arg(long, short = 'K', value_name = "DELIM")]
    key_delimiter: Option<String>,
    /// Header `name=value` on every record (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Record timestamp in ms since the epoch (default: now).
    #[arg(long)]
    timestamp_ms: Option<i64>,
    /// Produce this one value instead of reading lines from stdin.
    #[arg(long)]
    value: Option<String>,
    /// Records per produce batch.
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    topic: String,
    /// Partition to read (repeatable; default: all).
    #[arg(long, short = 'p')]
    partition: Vec<i32>,
    /// Start: `beginning`, `end`, an offset `N`, `-N` (N before the end), or `@MS` (first
    /// record at or after a timestamp in ms).
    #[arg(
        long,
        short = 'o',
        default_value = "beginning",
        allow_hyphen_values = true
    )]
    offset: String,
    /// Stop after this many records.
    #[arg(long, short = 'c')]
    count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end of each partition.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Text output template (kcat's -f): %t topic, %p partition, %o offset, %k key,
    /// %s value, %T timestamp ms, %h headers (n=v,...), %K/%S key/value lengths, \n, \t.
    #[arg(long, default_value = "%s\\n")]
    fmt: String,
}

/// Kafka's murmur2 (the Java client's default partitioner hash).
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// How long `topic_leaders` waits for a topic to appear in Metadata: a topic just created
/// reaches every broker's metadata a moment later (Apache Kafka answered
/// UNKNOWN_TOPIC_OR_PARTITION to a produce right after a successful CreateTopics in a test).
/// Kafka's producer waits for metadata too (`max.block.ms`).
const METADATA_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Partition count and leader per partition of `topic`.
async fn topic_leaders(client: &mut Client, topic: &str) -> anyhow::Result<BTreeMap<i32, i32>> {
    let deadline = std::time::Instant::now() + METADATA_WAIT;
    let t = loop {
        let md = client.metadata(Some(vec![topic.to_string()])).await?;
        let t = md
            .topics
            .into_iter()
            .next()
            .context("Metadata returned no topic")?;
        // UNKNOWN_TOPIC_OR_PARTITION (3) and LEADER_NOT_AVAILABLE (5) may be transient.
        if (t.error_code == 3 || t.error_code == 5) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        break t;
    };
    check(t.error_code, None, || {
        format!("topic {topic} (create it with `holdfast topic create {topic}`)")
    })?;
    Ok(t.partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect())
}

pub fn produce(args: ProduceArgs) -> anyhow::Result<i32> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--header {h}: expected name=value"))?;
        headers.push((k.to_string(), Some(v.as_bytes().to_vec())));
    }
    let ts = args.timestamp_ms;
    let make = |key: Option<Vec<u8>>, value: Vec<u8>| Record {
        timestamp_ms: ts.unwrap_or_else(ops::now_ms),
        key,
        value: Some(value),
        headers: headers.clone(),
        ..Record::default()
    };
    let fixed_key = args.key.as_ref().map(|k| k.as_bytes().to_vec());
    let mut input = Vec::new();
    if let Some(v) = &args.value {
        input.push(make(fixed_key.clone(), v.as_bytes().to_vec()));
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading stdin")?;
            let rec = match &args.key_delimiter {
                Some(d) => match line.split_once(d.as_str()) {
                    Some((k, v)) => make(Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => make(fixed_key.clone(), line.into_bytes()),
                },
                None => make(fixed_key.clone(), line.into_bytes()),
            };
            input.push(rec);
        }
    }
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        let leaders = topic_leaders(&mut client, &args.topic).await?;
        let n = leaders.len() as i32;
        if n == 0 {
            bail!("topic {} has no partitions", args.topic);
        }
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (i, r) in input.into_iter().enumerate() {
            let p = match (args.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(k)) => (murmur2(k) & 0x7fff_ffff) % n,
                (None, None) => (i as i32) % n,
            };
            if !leaders.contains_key(&p) {
                bail!("topic {} has no partition {p}", args.topic);
            }
            by_partition.entry(p).or_default().push(r);
        }
        let mut init = InitProducerIdRequest::default();
        init.transactional_id = None;
        init.transaction_timeout_ms = -1;
        init.producer_id = kafka_protocol::messages::ProducerId(-1);
        init.producer_epoch = -1;
        // Retriable coordinator errors (a broker that has just started answers
        // COORDINATOR_LOAD_IN_PROGRESS) are retried with a short backoff, at most 50 times.
        let mut attempt = 0;
        let pid = loop {
            let pid = client.send_any(init.clone(), 4).await?;
            attempt += 1;
            if matches!(pid.error_code, 14..=16 | 51) && attempt < 50 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            break pid;
        };
        check(pid.error_code, None, || "InitProducerId".to_string())?;
        let mut seq: BTreeMap<i32, i32> = BTreeMap::new();
        let mut results = Vec::new();
        let batch_records = args.batch_records.max(1);
        for (p, recs) in &by_partition {
            let leader = leaders.get(p).copied().unwrap_or(-1);
            if leader < 0 {
                bail!("partition {}-{p} has no leader", args.topic);
            }
            for chunk in recs.chunks(batch_records) {
                let s = seq.entry(*p).or_insert(0);
                let batch = encode_batch(
                    chunk,
                    Some(ProducerIdentity {
                        producer_id: pid.producer_id.0,
                        producer_epoch: pid.producer_epoch,
                        base_sequence: *s,
                    }),
                );
                *s = s.wrapping_add(chunk.len() as i32);
                let mut pd = PartitionProduceData::default();
                pd.index = *p;
                pd.records = Some(batch.into());
                let mut td = TopicProduceData::default();
                td.name = name(&args.topic);
                td.partition_data = vec![pd];
                let mut req = ProduceRequest::default();
                req.acks = -1;
                req.timeout_ms = args.conn.timeout_ms.min(i32::MAX as u64) as i32;
                req.topic_data = vec![td];
                let resp = client.send_to(leader, req, 9).await?;
                for t in &resp.responses {
                    for pr in &t.partition_responses {
                        check(pr.error_code, pr.error_message.as_ref(), || {
                            format!("producing to {}-{}", args.topic, pr.index)
                        })?;
                        results.push((pr.index, pr.base_offset, chunk.len()));
                    }
                }
            }
        }
        if args.conn.json() {
            print_json(&json!(results
                .iter()
                .map(|(p, o, c)| json!({"topic": args.topic, "partition": p, "base_offset": o, "records": c}))
                .collect::<Vec<_>>()))?;
        } else {
            for (p, o, c) in &results {
                println!(
                    "Produced {c} records to {}-{p} at offsets {o}..{}",
                    args.topic,
                    o + *c as i64 - 1
                );
            }
        }
        Ok(0)
    })
}

fn lossy(b: &Option<Vec<u8>>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn render(fmt: &str, topic: &str, partition: i32, r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(n)) => {
                chars.next();
                match n {
                    't' => out.extend_from_slice(topic.as_bytes()),
                    'p' => out.extend_from_slice(partition.to_string().as_bytes()),
                    'o' => out.extend_from_slice(r.offset.to_string().as_bytes()),
                    'k' => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
                    's' => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
                    'T' => out.extend_from_slice(r.timestamp_ms.to_string().as_bytes()),
                    'K' => out.extend_from_slice(
                        r.key
                            .as_ref()
                            .map_or(-1, |k| k.len() as i64)
                            .to_string()
                            .as_bytes(),
                    ),
                    'S' => out.extend_from_slice(
                        r.value
                            .as_ref()
                            .map_or(-1, |v| v.len() as i64)
                            .to_string()
                            .as_bytes(),
                    ),
                    'h' => {
                        let h: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}={}", lossy(v).unwrap_or_default()))
                            .collect();
                        out.extend_from_slice(h.join(",").as_bytes());
                    }
                    '%' => out.push(b'%'),
                    other => {
                        out.push(b'%');
                        out.extend_from_slice(other.to_string().as_bytes());
                    }
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push(b'\n');
            }
            ('\\', Some('t')) => {
                chars.next();
                out.push(b'\t');
            }
            (c, _) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

pub fn consume(args: ConsumeArgs) -> anyhow::Result<i32> {
    ops::block_on(async move {
        let mut client = args.conn.connect().await?;
        let leaders = topic_leaders(&mut client, &args.topic).await?;
        let parts: Vec<i32> = if args.partition.is_empty() {
            leaders.keys().copied().collect()
        } else {
            for p in &args.partition {
                if !leaders.contains_key(p) {
                    bail!("topic {} has no partition {p}", args.topic);
                }
            }
            args.partition.clone()
        };
        let spec = |ts: i64| {
            parts
                .iter()
                .map(|p| ((args.topic.clone(), *p), ts))
                .collect::<BTreeMap<_, _>>()
        };
        let ends = ops::list_offsets(&mut client, &spec(-1)).await?;
        let end_of = |p: i32| ends.get(&(args.topic.clone(), p)).copied().unwrap_or(0);
        let starts = ops::list_offsets(&mut client, &spec(-2)).await?;
        let start_of = |p: i32| starts.get(&(args.topic.clone(), p)).copied().unwrap_or(0);
        let o = args.offset.as_str();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        if let Some(ts) = o.strip_prefix('@') {
            let ts: i64 = ts.parse().with_context(|| format!("--offset {o}"))?;
            let at = ops::list_offsets(&mut client, &spec(ts)).await?;
            for p in &parts {
                let off = at.get(&(args.topic.clone(), *p)).copied().unwrap_or(-1);
                next.insert(*p, if off < 0 { end_of(*p) } else { off });
            }
        } else {
            for p in &parts {
                let off = match o {
                    "beginning" => start_of(*p),
                    "end" => end_of(*p),
                    n => {
                        let n: i64 = n.parse().with_context(|| {
                            format!("--offset {n}: expected beginning, end, N, -N or @MS")
                        })?;
                        if n < 0 {
                            (end_of(*p) + n).max(start_of(*p))
                        } else {
                            n
                        }
                    }
                };
                next.insert(*p, off);
            }
        }
        let mut seen: u64 = 0;
        let stdout = std::io::stdout();
        loop {
            let active: Vec<i32> = next
                .iter()
                .filter(|(p, o)| args.follow || **o < end_of(**p))
                .map(|(p, _)| *p)
                .collect();
            if active.is_empty() || args.count.is_some_and(|c| seen >= c) {
                break;
            }
            let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
            for p in &active {
                let leader = leaders.get(p).copied().unwrap_or(-1);
                if leader < 0 {
                    bail!("partition {}-{p} has no leader", args.topic);
                }
                by_leader.entry(leader).or_default().push(*p);
            }
            for (leader, ps) in by_leader {
                let mut ft = FetchTopic::default();
                ft.topic = name(&args.topic);
                ft.partitions = ps
                    .iter()
                    .map(|p| {
                        let mut fp = FetchPartition::default();
                        fp.partition = *p;
                        fp.current_leader_epoch = -1;
                        fp.fetch_offset = next.get(p).copied().unwrap_or(0);
                        fp.last_fetched_epoch = -1;
                        fp.log_start_offset = -1;
                        fp.partition_max_bytes = 1 << 20;
                        fp
                    })
                    .collect();
                let mut req = FetchRequest::default();
                req.replica_id = BrokerId(-1);
                req.max_wait_ms = if args.follow { 1000 } else { 100 };
                req.min_bytes = 1;
                req.max_bytes = 50 << 20;
                req.isolation_level = 0;
                req.session_id = 0;
                req.session_epoch = -1;
                req.topics = vec![ft];
                let resp = client.send_to(leader, req, 12).await?;
                check(resp.error_code, None, || "Fetch".to_string())?;
                for t in resp.responses {
                    for pd in t.partitions {
                        let p = pd.partition_index;
                        // Only partitions this command asked for.
                        let Some(from) = next.get(&p).copied() else {
                            continue;
                        };
                        if pd.error_code != 0 {
                            bail!(
                                "fetching {}-{p} at offset {from}: {} (log start {}, end {})",
                                args.topic,
                                error_name(pd.error_code),
                                start_of(p),
                                end_of(p)
                            );
                        }
                        let d = decode_fetched(pd.records.as_deref().unwrap_or_default(), from)?;
                        if let Some(n) = d.next_offset {
                            next.insert(p, n.max(from));
                        }
                        let mut out = stdout.lock();
                        for r in &d.records {
                            if args.count.is_some_and(|c| seen >= c) {
                                break;
                            }
                            if !args.follow && r.offset >= end_of(p) {
                                break;
                            }
                            seen += 1;
                            if args.conn.json() {
                                let headers: serde_json::Map<String, serde_json::Value> = r
                                    .headers
                                    .iter()
                                    .map(|(k, v)| (k.clone(), json!(lossy(v))))
                                    .collect();
                                writeln!(
                                    out,
                                    "{}",
                                    json!({
                                        "topic": args.topic,
                                        "partition": p,
                                        "offset": r.offset,
                                        "timestamp": r.timestamp_ms,
                                        "timestamp_type": if r.log_append_time { "LogAppendTime" } else { "CreateTime" },
                                        "key": lossy(&r.key),
                                        "value": lossy(&r.value),
                                        "headers": headers,
                                    })
                                )?;
                            } else {
                                out.write_all(&render(&args.fmt, &args.topic, p, r))?;
                            }
                        }
                        out.flush()?;
                    }
                }
            }
        }
        Ok(0)
    })
}

/// Every record of `topic` from its log start to its current end (all partitions), in
/// partition then offset order. `Ok(None)` when the topic does not exist.
pub async fn read_topic(
    client: &mut Client,
    topic: &str,
) -> anyhow::Result<Option<Vec<(i32, Record)>>> {
    let md = client.metadata(Some(vec![topic.to_string()])).await?;
    let Some(t) = md.topics.first() else {
        return Ok(None);
    };
    if t.error_code == 3 {
        return Ok(None);
    }
    check(t.error_code, None, || format!("topic {topic}"))?;
    let leaders: BTreeMap<i32, i32> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    let spec = |ts: i64| {
        leaders
            .keys()
            .map(|p| ((topic.to_string(), *p), ts))
            .collect::<BTreeMap<_, _>>()
    };
    let starts = ops::list_offsets(client, &spec(-2)).await?;
    let ends = ops::list_offsets(client, &spec(-1)).await?;
    let mut out = Vec::new();
    for (p, leader) in &leaders {
        let key = (topic.to_string(), *p);
        let end = ends.get(&key).copied().unwrap_or(0);
        let mut next = starts.get(&key).copied().unwrap_or(0);
        while next < end {
            let mut fp = FetchPartition::default();
            fp.partition = *p;
            fp.current_leader_epoch = -1;
            fp.fetch_offset = next;
            fp.last_fetched_epoch = -1;
            fp.log_start_offset = -1;
            fp.partition_max_bytes = 1 << 20;
            let mut ft = FetchTopic::default();
            ft.topic = name(topic);
            ft.partitions = vec![fp];
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_wait_ms = 100;
            req.min_bytes = 1;
            req.max_bytes = 8 << 20;
            req.session_epoch = -1;
            req.topics = vec![ft];
            let resp = client.send_to(*leader, req, 12).await?;
            check(resp.error_code, None, || "Fetch".to_string())?;
            let mut progressed = false;
            for rt in resp.responses {
                for pd in rt.partitions {
                    check(pd.error_code, None, || {
                        format!("fetching {topic}-{p} at offset {next}")
                    })?;
                    let d = decode_fetched(pd.records.as_deref().unwrap_or_default(), next)?;
                    if let Some(n) = d.next_offset {
                        if n > next {
                            next = n;
                            progressed = true;
                        }
                    }
                    for r in d.records {
                        if r.offset < end {
                            out.push((*p, r));
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }
}
