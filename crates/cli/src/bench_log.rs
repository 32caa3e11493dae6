//! `holdfast bench-log`: durable-append throughput and latency of the log, beside the raw
//! disk's fsync-bound figures measured by the same command on the same directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use holdfast_log::batch::build::{batch, BatchOptions, Record};
use holdfast_log::batch::HEADER_SIZE;
use holdfast_log::{FlushPolicy, Flusher, Log, LogConfig};

#[derive(clap::Args, Debug)]
pub struct BenchLogArgs {
    /// Directory to benchmark in (on the disk you care about); a fresh subdirectory is used.
    #[arg(long, default_value = "./holdfast-bench")]
    dir: PathBuf,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Batch sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1024usize, 65536])]
    sizes: Vec<usize>,
    /// Concurrent partitions (one appending thread each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8])]
    partitions: Vec<usize>,
    /// Also measure the page-cache-only policy (Kafka's default, an explicit opt-out here).
    #[arg(long)]
    page_cache: bool,
}

struct Cell {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Cell {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn pct_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Sequential `write` + `fdatasync` of `size`-byte blocks to one file, closed loop.
fn raw_disk(dir: &std::path::Path, size: usize, seconds: f64) -> anyhow::Result<Cell> {
    let path = dir.join(format!("raw-{size}"));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0xa5u8; size];
    let mut hist = new_hist()?;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
    }
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Cell {
        ops,
        bytes: ops * size as u64,
        elapsed,
        hist,
    })
}

fn bench_batch(size: usize) -> Vec<u8> {
    let value = vec![0x5au8; size.saturating_sub(HEADER_SIZE + 12).max(1)];
    batch(
        &[Record {
            key: None,
            value: Some(&value),
            timestamp_ms: now_ms(),
        }],
        BatchOptions::default(),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `partitions` threads, each appending `size`-byte batches to its own log and waiting for
/// each to be durable before the next (closed loop), all sharing one flusher.
fn log_append(
    dir: &std::path::Path,
    size: usize,
    partitions: usize,
    seconds: f64,
    policy: FlushPolicy,
) -> anyhow::Result<(Cell, u64, u64)> {
    let flusher = Flusher::start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let start = Instant::now();
    for p in 0..partitions {
        let dir = dir.join(format!("bench-{size}-{partitions}-{p}"));
        let flusher = flusher.clone();
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<(u64, Histogram<u64>)> {
                let cfg = LogConfig {
                    flush_policy: policy,
                    segment_bytes: 256 << 20,
                    ..LogConfig::default()
                };
                let (mut log, _) = Log::open(&dir, cfg, flusher, now_ms())?;
                let template = bench_batch(size);
                let mut hist = new_hist()?;
                let mut ops = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut b = template.clone();
                    let t = Instant::now();
                    let o = log.append_as_leader(&mut b, 0, now_ms())?;
                    if policy.ack_waits_for_fsync() {
                        log.durable().wait_blocking(o.durable_end)?;
                    }
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    ops += 1;
                }
                log.delete()?;
                Ok((ops, hist))
            },
        ));
    }
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut hist = new_hist()?;
    let mut ops = 0;
    for t in threads {
        let (o, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        ops += o;
        hist.add(&h)?;
    }
    let rounds = flusher.stats().rounds.load(Ordering::Relaxed);
    let fsyncs = flusher.stats().fsyncs.load(Ordering::Relaxed);
    flusher.shutdown();
    let bytes = ops * bench_batch(size).len() as u64;
    Ok((
        Cell {
            ops,
            bytes,
            elapsed,
            hist,
        },
        rounds,
        fsyncs,
    ))
}

pub fn run(args: BenchLogArgs) -> anyhow::Result<()> {
    let dir = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "holdfast bench-log: dir={} seconds/cell={}",
        dir.display(),
        args.seconds
    );
    println!(
        "{:<34} {:>7} {:>5} {:>10} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "cell",
        "size",
        "parts",
        "MB/s",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "fsync/rnd",
        "vs raw"
    );
    for &size in &args.sizes {
        let raw = raw_disk(&dir, size, args.seconds)?;
        println!(
            "{:<34} {:>7} {:>5} {:>10.1} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>10} {:>8}",
            "raw write+fdatasync (1 file)",
            size,
            1,
            raw.mb_per_s(),
            raw.ops_per_s(),
            raw.pct_ms(0.5),
            raw.pct_ms(0.99),
            raw.pct_ms(0.999),
            "-",
            "1.00"
        );
        let mut policies = vec![("log append, fsync before ack", FlushPolicy::EveryAppend)];
        if args.page_cache {
            policies.push(("log append, page cache (opt-out)", FlushPolicy::PageCache));
        }
        for (name, policy) in policies {
            for &parts in &args.partitions {
                let (cell, rounds, fsyncs) = log_append(&dir, size, parts, args.seconds, policy)?;
                let per_round = if rounds > 0 {
                    format!("{:.2}", fsyncs as f64 / rounds as f64)
                } else {
                    "-".into()
                };
                println!(
                    "{:<34} {:>7} {:>5} {:>10.1} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>10} {:>8.2}",
                    name,
                    size,
                    parts,
                    cell.mb_per_s(),
                    cell.ops_per_s(),
                    cell.pct_ms(0.5),
                    cell.pct_ms(0.99),
                    cell.pct_ms(0.999),
                    per_round,
                    cell.mb_per_s() / raw.mb_per_s()
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
