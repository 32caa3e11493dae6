//! Record batches on the client side: encoding one uncompressed v2 batch for Produce, and
//! decoding the batches a Fetch returns (any codec, via `holdfast-log`'s batch reader).

use holdfast_log::batch::{self, BatchHeader, HEADER_SIZE};

use crate::{ClientError, Result};

/// A record to produce, or a record fetched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Absolute offset (fetched records; ignored when producing).
    pub offset: i64,
    pub timestamp_ms: i64,
    /// Whether `timestamp_ms` is the broker's LogAppendTime.
    pub log_append_time: bool,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The producer identity of an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes `records` as one uncompressed v2 batch (base offset 0, CRC set). With a
/// producer identity the batch is idempotent: the broker deduplicates retries of it.
pub fn encode_batch(records: &[Record], producer: Option<ProducerIdentity>) -> Vec<u8> {
    let base_ts = records.first().map(|r| r.timestamp_ms).unwrap_or(0);
    let max_ts = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(base_ts);
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut rec = vec![0u8];
        put_varint(&mut rec, r.timestamp_ms - base_ts);
        put_varint(&mut rec, i as i64);
        put_bytes(&mut rec, r.key.as_deref());
        put_bytes(&mut rec, r.value.as_deref());
        put_varint(&mut rec, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(&mut rec, Some(k.as_bytes()));
            put_bytes(&mut rec, v.as_deref());
        }
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let (pid, epoch, seq) = match producer {
        Some(p) => (p.producer_id, p.producer_epoch, p.base_sequence),
        None => (-1, -1, -1),
    };
    let mut b = Vec::with_capacity(HEADER_SIZE + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - batch::LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32 - 1).max(0).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = batch::compute_crc(&b);
    b[batch::CRC_OFFSET..batch::CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(what: &str) -> ClientError {
        ClientError::Protocol {
            api: "Fetch",
            reason: format!("malformed record: {what}"),
        }
    }
    fn varint(&mut self, what: &str) -> Result<i64> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.at).ok_or_else(|| Self::bad(what))?;
            self.at += 1;
            z |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(Self::bad(what))
    }
    fn bytes(&mut self, what: &str) -> Result<Option<&'a [u8]>> {
        let len = self.varint(what)?;
        if len < 0 {
            return Ok(None);
        }
        let end = self
            .at
            .checked_add(len as usize)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| Self::bad(what))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(Some(s))
    }
}

/// A decoded fetch response partition: its records and where the next fetch starts.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// The offset after the last complete batch (control batches included).
    pub next_offset: Option<i64>,
}

/// Decodes the batches of a fetch response's record set. Control batches (transaction
/// markers) are skipped; a partial trailing batch (cut by max_bytes) is ignored; records
/// below `from_offset` (inside a batch that starts earlier) are dropped.
pub fn decode_fetched(mut set: &[u8], from_offset: i64) -> Result<Decoded> {
    let mut out = Decoded::default();
    while let Some(h) = BatchHeader::parse(set) {
        let total = h.total_size();
        if total > set.len() || h.batch_length <= 0 {
            break;
        }
        let frame = &set[..total];
        set = &set[total..];
        let h = batch::check_frame(frame).map_err(|e| ClientError::Protocol {
            api: "Fetch",
            reason: format!("batch at offset {}: {e}", h.base_offset),
        })?;
        out.next_offset = Some(h.last_offset() + 1);
        if h.is_control() {
            continue;
        }
        let body = batch::records_bytes(&h, frame).map_err(|e| ClientError::Protocol {
            api: "Fetch",
            reason: format!("batch at offset {}: {e}", h.base_offset),
        })?;
        let mut r = Reader { b: &body, at: 0 };
        for _ in 0..h.records_count.max(0) {
            let len = r.varint("length")?;
            let end = r.at + len.max(0) as usize;
            let _attributes = r.b.get(r.at).ok_or_else(|| Reader::bad("attributes"))?;
            r.at += 1;
            let ts_delta = r.varint("timestamp delta")?;
            let off_delta = r.varint("offset delta")?;
            let key = r.bytes("key")?.map(<[u8]>::to_vec);
            let value = r.bytes("value")?.map(<[u8]>::to_vec);
            let n = r.varint("header count")?;
            let mut headers = Vec::new();
            for _ in 0..n.max(0) {
                let k = r.bytes("header key")?.unwrap_or_default();
                let v = r.bytes("header value")?.map(<[u8]>::to_vec);
                headers.push((String::from_utf8_lossy(k).into_owned(), v));
            }
            r.at = end;
            let offset = h.base_offset + off_delta;
            if offset < from_offset {
                continue;
            }
            let log_append_time = h.is_log_append_time();
            out.records.push(Record {
                offset,
                timestamp_ms: if log_append_time {
                    h.max_timestamp
                } else {
                    h.base_timestamp + ts_delta
                },
                log_append_time,
                key,
                value,
                headers,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_batch_decodes_with_headers() {
        let recs = vec![
            Record {
                timestamp_ms: 1000,
                key: Some(b"k".to_vec()),
                value: Some(b"v".to_vec()),
                headers: vec![("h".into(), Some(b"x".to_vec())), ("n".into(), None)],
                ..Record::default()
            },
            Record {
                timestamp_ms: 1005,
                key: None,
                value: Some(vec![7; 300]),
                ..Record::default()
            },
        ];
        let b = encode_batch(
            &recs,
            Some(ProducerIdentity {
                producer_id: 4,
                producer_epoch: 0,
                base_sequence: 0,
            }),
        );
        batch::check_frame(&b).expect("valid frame");
        let mut twice = b.clone();
        twice.extend_from_slice(&b[..20]); // a partial trailing batch is ignored
        let d = decode_fetched(&twice, 1).expect("decodes");
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].offset, 1);
        assert_eq!(d.records[0].value.as_deref(), Some(&[7u8; 300][..]));
        let d = decode_fetched(&b, 0).expect("decodes");
        assert_eq!(d.records[0].headers, recs[0].headers);
        assert_eq!(d.records[1].timestamp_ms, 1005);
        assert_eq!(d.next_offset, Some(2));
    }
}
