//! `holdfast dump-log`: prints the batches (and with `--print-data-log` the records) of
//! segment files, in the layout of Kafka's `kafka-dump-log.sh`, read-only. For reading what
//! a partition really holds: producer ids, epochs and sequences of each batch, transaction
//! markers, a torn tail or a corrupt frame.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use holdfast_log::batch::for_each_stored_record;
use holdfast_log::dump::{DumpError, SegmentReader};

#[derive(Args)]
pub struct DumpLogArgs {
    /// Segment files (`<partition dir>/<base offset>.log`), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    files: Vec<PathBuf>,
    /// Also print every record (offset, timestamp, key and value sizes, payload).
    #[arg(long)]
    print_data_log: bool,
    /// Longest key or payload printed, in bytes (longer ones are cut and marked).
    #[arg(long, default_value_t = 256)]
    max_payload_bytes: usize,
}

fn show(b: Option<&[u8]>, max: usize) -> String {
    match b {
        None => "null".to_string(),
        Some(b) if b.len() > max => {
            format!(
                "{}... ({} bytes)",
                String::from_utf8_lossy(&b[..max]),
                b.len()
            )
        }
        Some(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Exit code 0 when every file was read to a clean end, 1 when one ended torn or invalid
/// (reported, as Kafka's tool does), errors (2) for files that cannot be read.
pub fn run(a: DumpLogArgs) -> anyhow::Result<i32> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut code = 0;
    for path in &a.files {
        writeln!(out, "Dumping {}", path.display())?;
        let mut r = SegmentReader::open(path)?;
        let mut batches = 0u64;
        loop {
            let b = match r.next_batch() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e @ (DumpError::Torn { .. } | DumpError::Invalid { .. })) => {
                    writeln!(out, "Stopped: {e}")?;
                    code = 1;
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            batches += 1;
            let h = &b.header;
            writeln!(
                out,
                "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} producerId: {} producerEpoch: {} partitionLeaderEpoch: {} isTransactional: {} isControl: {} position: {} {}: {} size: {} magic: {} compresscodec: {} crcValid: true",
                h.base_offset,
                h.last_offset(),
                h.records_count,
                h.base_sequence,
                h.last_sequence(),
                h.producer_id,
                h.producer_epoch,
                h.partition_leader_epoch,
                h.is_transactional(),
                h.is_control(),
                b.position,
                if h.is_log_append_time() { "LogAppendTime" } else { "CreateTime" },
                h.max_timestamp,
                h.total_size(),
                h.magic,
                h.compression()
                    .map_or("unknown".to_string(), |c| format!("{c:?}").to_lowercase()),
            )?;
            if a.print_data_log {
                let mut lines = Vec::new();
                let walked = for_each_stored_record(h, &b.bytes, |rec| {
                    let offset = h.base_offset + i64::from(rec.offset_delta);
                    let sequence = if h.base_sequence >= 0 {
                        h.base_sequence.wrapping_add(rec.offset_delta)
                    } else {
                        -1
                    };
                    let what = if h.is_control() {
                        match rec.key.and_then(|k| k.get(2..4)) {
                            Some([0, 0]) => " endTxnMarker: ABORT".to_string(),
                            Some([0, 1]) => " endTxnMarker: COMMIT".to_string(),
                            _ => " control record".to_string(),
                        }
                    } else {
                        format!(
                            " key: {} payload: {}",
                            show(rec.key, a.max_payload_bytes),
                            show(rec.value, a.max_payload_bytes)
                        )
                    };
                    lines.push(format!(
                        "| offset: {offset} {}: {} keySize: {} valueSize: {} sequence: {sequence} headerCount: {}{what}",
                        if h.is_log_append_time() { "LogAppendTime" } else { "CreateTime" },
                        h.base_timestamp + rec.timestamp_delta,
                        rec.key.map_or(-1, |k| k.len() as i64),
                        rec.value.map_or(-1, |v| v.len() as i64),
                        rec.headers_count,
                    ));
                    Ok(())
                });
                for l in lines {
                    writeln!(out, "{l}")?;
                }
                if let Err(e) = walked {
                    writeln!(out, "| records unreadable: {e}")?;
                    code = 1;
                }
            }
        }
        writeln!(out, "Batches: {batches}")?;
    }
    out.flush()?;
    Ok(code)
}
