//! Reading a segment file batch by batch without opening the log: for `holdfast dump-log`
//! (Kafka's `kafka-dump-log.sh`) and for tools that need the batch headers behind an offset
//! (the chaos harness tells a broker's failed deduplication from a client's producer epoch
//! bump by them). Read-only; never repairs, never truncates.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::batch::{check_frame, BatchHeader, HEADER_SIZE, LOG_OVERHEAD};

/// Largest batch the reader accepts (a length field above it is reported as corrupt rather
/// than allocated): the broker's own ceiling on a stored batch.
pub const MAX_DUMP_BATCH_BYTES: usize = 256 << 20;

/// Why reading stopped before the end of the file.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file ends inside a batch: an unflushed tail cut by a crash (recovery truncates it).
    #[error("torn batch at position {position}: {have} of {want} bytes")]
    Torn {
        position: u64,
        have: usize,
        want: usize,
    },
    /// A frame that fails its checks (length, magic, CRC): corruption.
    #[error("invalid batch at position {position}: {reason}")]
    Invalid { position: u64, reason: String },
}

/// One batch as stored: its position in the file, its header and its bytes.
pub struct StoredBatch {
    pub position: u64,
    pub header: BatchHeader,
    pub bytes: Vec<u8>,
}

/// Streams the batches of one segment file (`<base offset>.log`).
pub struct SegmentReader {
    path: String,
    file: BufReader<File>,
    position: u64,
    failed: bool,
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<SegmentReader, DumpError> {
        let file = File::open(path).map_err(|source| DumpError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(SegmentReader {
            path: path.display().to_string(),
            file: BufReader::with_capacity(1 << 20, file),
            position: 0,
            failed: false,
        })
    }

    /// Fills `buf` as far as the file allows; returns the bytes read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, DumpError> {
        let mut have = 0;
        while have < buf.len() {
            match self.file.read(&mut buf[have..]) {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(DumpError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(have)
    }

    /// The next batch, `Ok(None)` at a clean end of file. After an error, always `Ok(None)`.
    pub fn next_batch(&mut self) -> Result<Option<StoredBatch>, DumpError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.read_one();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn read_one(&mut self) -> Result<Option<StoredBatch>, DumpError> {
        let position = self.position;
        let mut prefix = [0u8; LOG_OVERHEAD];
        let got = self.read_up_to(&mut prefix)?;
        if got == 0 {
            return Ok(None);
        }
        if got < LOG_OVERHEAD {
            return Err(DumpError::Torn {
                position,
                have: got,
                want: LOG_OVERHEAD,
            });
        }
        let length = i32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        let total = LOG_OVERHEAD as i64 + i64::from(length);
        if length < (HEADER_SIZE - LOG_OVERHEAD) as i32 || total > MAX_DUMP_BATCH_BYTES as i64 {
            return Err(DumpError::Invalid {
                position,
                reason: format!("batch length field {length}"),
            });
        }
        let total = total as usize;
        let mut bytes = vec![0u8; total];
        bytes[..LOG_OVERHEAD].copy_from_slice(&prefix);
        let rest = self.read_up_to(&mut bytes[LOG_OVERHEAD..])?;
        if rest < total - LOG_OVERHEAD {
            return Err(DumpError::Torn {
                position,
                have: LOG_OVERHEAD + rest,
                want: total,
            });
        }
        let header = check_frame(&bytes).map_err(|e| DumpError::Invalid {
            position,
            reason: e.to_string(),
        })?;
        self.position += total as u64;
        Ok(Some(StoredBatch {
            position,
            header,
            bytes,
        }))
    }
}

/// The headers of the batches holding `offsets` in the partition directory `dir` (every
/// `*.log` segment read in order), as (offset, header) for each offset found. Stops a
/// segment at its first torn or invalid batch.
pub fn headers_at(dir: &Path, offsets: &[i64]) -> Result<Vec<(i64, BatchHeader)>, DumpError> {
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DumpError::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut wanted: Vec<i64> = offsets.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = Vec::new();
    for s in segments {
        let mut r = SegmentReader::open(&s)?;
        while let Ok(Some(b)) = r.next_batch() {
            let (lo, hi) = (b.header.base_offset, b.header.last_offset());
            for o in wanted.iter().filter(|o| (lo..=hi).contains(*o)) {
                out.push((*o, b.header));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build::{batch, BatchOptions, Record};

    #[test]
    fn reads_batches_and_stops_at_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("holdfast-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut file = Vec::new();
        for (i, pid) in [(0i64, 7i64), (3, 8)] {
            let recs: Vec<Record<'_>> = (0..3)
                .map(|_| Record {
                    key: None,
                    value: Some(b"v"),
                    timestamp_ms: 1,
                })
                .collect();
            let mut b = batch(
                &recs,
                BatchOptions {
                    producer_id: pid,
                    producer_epoch: 2,
                    base_sequence: 0,
                    ..BatchOptions::default()
                },
            );
            crate::batch::stamp_offset_and_epoch(&mut b, i, 0);
            file.extend_from_slice(&b);
        }
        let whole = file.len();
        file.extend_from_within(..30);
        let path = dir.join("00000000000000000000.log");
        std::fs::write(&path, &file).expect("write");
        let mut r = SegmentReader::open(&path).expect("open");
        let a = r.next_batch().expect("first").expect("some");
        assert_eq!((a.position, a.header.producer_id), (0, 7));
        let b = r.next_batch().expect("second").expect("some");
        assert_eq!((b.header.base_offset, b.header.producer_id), (3, 8));
        match r.next_batch() {
            Err(DumpError::Torn { position, have, .. }) => {
                assert_eq!((position, have), (whole as u64, 30));
            }
            other => panic!("{:?}", other.map(|o| o.map(|b| b.position))),
        }
        assert!(r.next_batch().expect("after an error").is_none());
        let found = headers_at(&dir, &[4, 1, 99]).expect("headers");
        let ids: Vec<(i64, i64)> = found.iter().map(|(o, h)| (*o, h.producer_id)).collect();
        assert_eq!(ids, [(1, 7), (4, 8)]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
