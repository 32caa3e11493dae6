//! A real `holdfast serve` process driven by rdkafka (librdkafka) and by raw sockets.
//!
//! The binary is `target/debug/holdfast` (or `$HOLDFAST_BIN`); build it first:
//! `cargo build -p holdfast && cargo test -p holdfast-itest --test broker`.
//! `HOLDFAST_ITEST_LOG=inherit` shows the brokers' logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

struct Broker {
    child: Child,
    addr: String,
    dir: PathBuf,
    /// The broker's stderr (its log); printed when the test fails.
    log: PathBuf,
}

impl Broker {
    fn start() -> Result<Broker> {
        Broker::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Result<Broker> {
        let bin = match std::env::var_os("HOLDFAST_BIN") {
            Some(b) => PathBuf::from(b),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/holdfast"),
        };
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build -p holdfast` first",
                bin.display()
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir =
            std::env::temp_dir().join(format!("holdfast-itest-{}-{port}", std::process::id()));
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "holdfast-itest-{}-{port}.stderr",
            std::process::id()
        ));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&bin)
            .args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--listen", &addr])
            .args(extra)
            .stdout(Stdio::piped())
            // HOLDFAST_ITEST_LOG=inherit shows the broker's log live; otherwise it goes to a
            // file whose tail is printed if the test panics.
            .stderr(
                if std::env::var_os("HOLDFAST_ITEST_LOG").is_some_and(|v| v == "inherit") {
                    Stdio::inherit()
                } else {
                    Stdio::from(log_file)
                },
            )
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("holdfast listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            bail!("holdfast did not report listening in 30 s");
        }
        Ok(Broker {
            child,
            addr,
            dir,
            log,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- holdfast log ({}), last lines:", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// (offset, key, value, header count) of a consumed record.
type Consumed = (i64, Option<Vec<u8>>, Option<Vec<u8>>, usize);

fn producer(b: &Broker) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
}

fn consume(b: &Broker, topic: &str, count: usize) -> Result<Vec<Consumed>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("group.id", "itest")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            out.push((
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                m.headers().map_or(0, |h| h.count()),
            ));
        }
    }
    Ok(out)
}

async fn produce_n(p: &FutureProducer, topic: &str, n: usize, tag: &str) -> Result<Vec<i64>> {
    let mut offsets = Vec::new();
    let mut futures = Vec::new();
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!("{tag}-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "i",
            value: Some(&i.to_string()),
        });
        futures.push(
            p.send_result(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)?,
        );
    }
    for f in futures {
        match f.await? {
            Ok(d) => offsets.push(d.offset),
            Err((e, _)) => bail!("delivery failed: {e}"),
        }
    }
    Ok(offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_produce_consume_round_trip() -> Result<()> {
    let b = Broker::start()?;
    let p = producer(&b)?;
    let offsets = produce_n(&p, "round-trip", 200, "a").await?;
    assert_eq!(offsets, (0..200).collect::<Vec<i64>>());
    let got = consume(&b, "round-trip", 200)?;
    assert_eq!(got.len(), 200);
    for (i, (offset, key, value, headers)) in got.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(value.as_deref(), Some(format!("a-{i}").as_bytes()));
        assert_eq!(*headers, 1);
    }
    Ok(())
}

/// An ApiVersions request frame: v0-v2 have header v1 and an empty body; v3+ header v2
/// (tagged fields) and a body naming the client software.
fn api_versions_frame(version: i16, correlation_id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    if version >= 3 {
        body.push(0); // header tagged fields
        body.extend_from_slice(&[2, b't', 2, b'1']); // compact strings "t", "1"
        body.push(0); // body tagged fields
    }
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// Reads one response frame: (correlation id, first two body bytes as the error code).
fn read_response(s: &mut TcpStream) -> Result<(i32, i16)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if !(6..=1 << 20).contains(&len) {
        bail!("implausible response length {len}");
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)?;
    Ok((
        i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
        i16::from_be_bytes([buf[4], buf[5]]),
    ))
}

fn connect(b: &Broker) -> Result<TcpStream> {
    let s = TcpStream::connect(&b.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// The broker closes the connection (EOF or reset) rather than answering.
fn expect_closed(mut s: TcpStream, what: &str) -> Result<()> {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(n) => bail!("{what}: expected the broker to close, got {n} bytes"),
        Err(e) => bail!("{what}: expected the broker to close, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_only_close_their_connection() -> Result<()> {
    let b = Broker::start()?;
    let p = producer(&b)?;
    assert_eq!(produce_n(&p, "survivor", 10, "before").await?.len(), 10);

    // A healthy raw connection that stays open through all of the abuse below.
    let mut healthy = connect(&b)?;
    healthy.write_all(&api_versions_frame(3, 1))?;
    assert_eq!(read_response(&mut healthy)?, (1, 0));

    // Oversized length prefix (over socket.request.max.bytes) and a negative one.
    for prefix in [i32::MAX, 200 * 1024 * 1024, -1, i32::MIN] {
        let mut s = connect(&b)?;
        s.write_all(&prefix.to_be_bytes())?;
        expect_closed(s, &format!("length prefix {prefix}"))?;
    }
    // Unknown API key, unsupported version of a non-ApiVersions API, garbage bodies.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut frames: Vec<(String, Vec<u8>)> = vec![
        (
            "unknown api key".into(),
            [
                &10i32.to_be_bytes()[..],
                &[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "fetch v0".into(),
            [
                &10i32.to_be_bytes()[..],
                &[0, 1, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "header too short".into(),
            [&3i32.to_be_bytes()[..], &[0, 3, 0]].concat(),
        ),
        // Metadata v1 claiming i32::MAX topics in a 14-byte frame: must not make the broker
        // try to allocate for them (kafka-protocol preallocates arrays by their count).
        (
            "huge array count".into(),
            [
                &14i32.to_be_bytes()[..],
                &[0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff],
                &i32::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
    ];
    for i in 0..30 {
        // Valid Metadata/Produce/Fetch headers followed by random bytes.
        let key: i16 = [0, 1, 3, 2, 19][i % 5];
        let version: i16 = [3, 4, 9, 12, 7][i % 5];
        let mut body = Vec::new();
        body.extend_from_slice(&key.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&(i as i32).to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        for _ in 0..(next() % 200) {
            body.push(next() as u8);
        }
        frames.push((
            format!("garbage body {i}"),
            [&(body.len() as i32).to_be_bytes()[..], &body].concat(),
        ));
    }
    for (what, f) in frames {
        let mut s = connect(&b)?;
        s.write_all(&f)?;
        // Random bodies may happen to decode: then the broker answers; either way it must
        // not hang or take the others down. Closed or answered, then we move on.
        let mut buf = [0u8; 4];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => bail!("{what}: broker neither answered nor closed: {e}"),
        }
    }
    // Truncated frames: the peer goes away mid-frame.
    for cut in [1usize, 3, 5, 9] {
        let mut s = connect(&b)?;
        let f = api_versions_frame(3, 9);
        s.write_all(&f[..cut.min(f.len())])?;
        s.shutdown(Shutdown::Write)?;
        expect_closed(s, &format!("truncated after {cut} bytes"))?;
    }
    // Pure random streams.
    for _ in 0..20 {
        let mut s = connect(&b)?;
        let junk: Vec<u8> = (0..(next() % 512 + 4)).map(|_| next() as u8).collect();
        s.write_all(&junk)?;
        s.shutdown(Shutdown::Write)?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }

    // ApiVersions of an unknown version: a v0 answer with UNSUPPORTED_VERSION (35).
    let mut s = connect(&b)?;
    s.write_all(&api_versions_frame(99, 42))?;
    assert_eq!(read_response(&mut s)?, (42, 35));

    // The healthy connection and the client are unaffected.
    healthy.write_all(&api_versions_frame(0, 2))?;
    assert_eq!(read_response(&mut healthy)?, (2, 0));
    assert_eq!(
        produce_n(&p, "survivor", 10, "after").await?,
        (10..20).collect::<Vec<i64>>()
    );
    assert_eq!(consume(&b, "survivor", 20)?.len(), 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let b = Broker::start()?;
    let mut s = connect(&b)?;
    let mut all = Vec::new();
    for cid in 0..200 {
        all.extend_from_slice(&api_versions_frame((cid % 5) as i16, cid));
    }
    s.write_all(&all)?;
    for cid in 0..200 {
        assert_eq!(read_response(&mut s)?, (cid, 0));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_values_zero_one_all_and_invalid() -> Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let b = Broker::start()?;
    for acks in ["0", "1", "all"] {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &b.addr)
            .set("acks", acks)
            .set("enable.idempotence", "false")
            .create()?;
        let r = p
            .send(
                FutureRecord::to("acks").partition(0).key("k").payload(acks),
                Duration::from_secs(30),
            )
            .await;
        assert!(r.is_ok(), "acks={acks}: {r:?}");
    }
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("acks", "2")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .create()?;
    let r = p
        .send(
            FutureRecord::to("acks")
                .partition(0)
                .key("k")
                .payload("two"),
            Duration::from_secs(30),
        )
        .await;
    match r {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRequiredAcks), _)) => {}
        other => bail!("acks=2: expected INVALID_REQUIRED_ACKS, got {other:?}"),
    }
    let got = consume(&b, "acks", 3)?;
    let values: Vec<Vec<u8>> = got.into_iter().filter_map(|m| m.2).collect();
    assert_eq!(values, vec![b"0".to_vec(), b"1".to_vec(), b"all".to_vec()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_extra_connections_and_frees_slots() -> Result<()> {
    let b = Broker::start_with(&["--set", "max.connections=2"])?;
    let mut first = connect(&b)?;
    first.write_all(&api_versions_frame(0, 1))?;
    assert_eq!(read_response(&mut first)?, (1, 0));
    let mut second = connect(&b)?;
    second.write_all(&api_versions_frame(0, 2))?;
    assert_eq!(read_response(&mut second)?, (2, 0));
    // The third is accepted by the kernel and closed by the broker.
    let third = connect(&b)?;
    expect_closed(third, "third connection")?;
    // Closing one frees its slot (the broker notices the close asynchronously: poll).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(&b)?;
        s.write_all(&api_versions_frame(0, 3))?;
        match read_response(&mut s) {
            Ok(r) => {
                assert_eq!(r, (3, 0));
                break;
            }
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => return Err(e.context("slot never freed")),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_bytes_budget_stops_reading_until_freed() -> Result<()> {
    let b = Broker::start_with(&["--set", "queued.max.request.bytes=1000"])?;
    // A announces a 995-byte request and sends only part of it: it holds 995 of the 1000.
    let mut hog = connect(&b)?;
    hog.write_all(&995i32.to_be_bytes())?;
    hog.write_all(&[0u8; 10])?;
    // A complete 14-byte ApiVersions on another connection cannot get its bytes reserved...
    // The hog's reservation happens on its own connection task, so a request sent right
    // after may still be served: retry on fresh connections until one is held back.
    let mut held = None;
    for correlation in 5..45 {
        let mut waiting = connect(&b)?;
        waiting.set_read_timeout(Some(Duration::from_millis(500)))?;
        waiting.write_all(&api_versions_frame(0, correlation))?;
        let mut one = [0u8; 1];
        match waiting.read(&mut one) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held = Some((waiting, correlation));
                break;
            }
            Ok(1) => continue, // served before the hog's bytes were reserved
            other => bail!("unexpected read while the budget is spent: {other:?}"),
        }
    }
    let (mut waiting, correlation) =
        held.ok_or_else(|| anyhow::anyhow!("requests were never held back by the byte budget"))?;
    // ...until the hog goes away and its reservation is released.
    drop(hog);
    waiting.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(read_response(&mut waiting)?, (correlation, 0));
    Ok(())
}

/// OffsetForLeaderEpoch v3 for one topic: (partition, current_leader_epoch, leader_epoch).
/// Returns (error, partition, leader_epoch, end_offset) per partition.
fn offset_for_leader_epoch(
    s: &mut TcpStream,
    topic: &str,
    parts: &[(i32, i32, i32)],
) -> Result<Vec<(i16, i32, i32, i64)>> {
    let mut body = Vec::new();
    body.extend_from_slice(&23i16.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&77i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id: a consumer
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&(parts.len() as i32).to_be_bytes());
    for (p, current, epoch) in parts {
        for v in [p, current, epoch] {
            body.extend_from_slice(&v.to_be_bytes());
        }
    }
    s.write_all(&(body.len() as i32).to_be_bytes())?;
    s.write_all(&body)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut r = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut r)?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let out = r.get(at..at + n).context("short response")?;
        at += n;
        Ok(out)
    };
    let i32_of = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(i32_of(take(4)?), 77); // correlation id
    take(4)?; // throttle
    assert_eq!(i32_of(take(4)?), 1);
    let name_len = i16::from_be_bytes(take(2)?.try_into()?) as usize;
    take(name_len)?;
    let n = i32_of(take(4)?);
    let mut out = Vec::new();
    for _ in 0..n {
        let err = i16::from_be_bytes(take(2)?.try_into()?);
        let p = i32_of(take(4)?);
        let e = i32_of(take(4)?);
        let end = i64::from_be_bytes(take(8)?.try_into()?);
        out.push((err, p, e, end));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_reports_epoch_ends() -> Result<()> {
    let b = Broker::start()?;
    let p = producer(&b)?;
    assert_eq!(produce_n(&p, "epochs", 5, "e").await?.len(), 5);
    let mut s = connect(&b)?;
    let r = offset_for_leader_epoch(
        &mut s,
        "epochs",
        &[(0, -1, 0), (0, 0, 0), (0, 3, 0), (9, -1, 0)],
    )?;
    assert_eq!(
        r[0],
        (0, 0, 0, 5),
        "epoch 0 ends at the end of the visible log"
    );
    assert_eq!(r[1], (0, 0, 0, 5));
    assert_eq!(
        r[2].0, 75,
        "a newer current epoch than the leader's is UNKNOWN_LEADER_EPOCH"
    );
    assert_eq!(r[3].0, 3, "unknown partition");
    Ok(())
}
