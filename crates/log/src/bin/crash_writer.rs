//! `holdfast-crash-writer DIR PARTITIONS SEED`: appends deterministic batches to PARTITIONS
//! logs under DIR (one thread each, one shared group-commit flusher) and prints
//! `durable <partition> <seq> <base offset>` after each batch is reported durable. It runs
//! until killed; the crash tests SIGKILL it and check that every printed batch survived.

use std::io::Write;
use std::path::PathBuf;

use holdfast_log::testkit::batch_for;
use holdfast_log::{Flusher, Log, LogConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: holdfast-crash-writer DIR PARTITIONS");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let partitions: u32 = args[2].parse()?;
    let flusher = Flusher::start()?;
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut threads = Vec::new();
    for p in 0..partitions {
        let dir = dir.join(format!("t-{p}"));
        let flusher = flusher.clone();
        let out = out.clone();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut cfg = LogConfig {
                segment_bytes: 64 * 1024,
                index_interval_bytes: 1024,
                ..LogConfig::default()
            };
            // Negative control for the crash tests: report batches "durable" without fsync.
            if std::env::var("HOLDFAST_NEGATIVE_CONTROL_NO_FSYNC").is_ok() {
                cfg.flush_policy = holdfast_log::FlushPolicy::PageCache;
            }
            let (mut log, _) =
                Log::open(&dir, cfg, flusher, 1_000_000).map_err(|e| e.to_string())?;
            // Continue the sequence after whatever survived a previous run.
            let mut seq = count_batches(&mut log)?;
            loop {
                let mut b = batch_for(p, seq);
                let o = log
                    .append_as_leader(&mut b, 0, 1_000_000)
                    .map_err(|e| e.to_string())?;
                if log.config().flush_policy.ack_waits_for_fsync() {
                    log.durable()
                        .wait_blocking(o.durable_end)
                        .map_err(|e| e.to_string())?;
                }
                let mut w = out.lock().map_err(|e| e.to_string())?;
                writeln!(w, "durable {p} {seq} {}", o.first_offset).map_err(|e| e.to_string())?;
                w.flush().map_err(|e| e.to_string())?;
                seq += 1;
            }
        }));
    }
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("writer failed: {e}");
            std::process::exit(1);
        }
    }
    Ok(())
}

fn count_batches(log: &mut Log) -> Result<u64, String> {
    let mut at = log.log_start_offset();
    let mut n = 0;
    while at < log.log_end_offset() {
        let s = log
            .read(at, 1 << 20, i64::MAX, true)
            .map_err(|e| e.to_string())?;
        let bytes = s.read_bytes().map_err(|e| e.to_string())?;
        for f in holdfast_log::batch::frames(&bytes) {
            let (h, _) = f.map_err(|e| e.to_string())?;
            n += 1;
            at = h.last_offset() + 1;
        }
    }
    Ok(n)
}
