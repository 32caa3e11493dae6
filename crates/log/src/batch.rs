//! Kafka v2 record batches, read in place.
//!
//! The log stores batches exactly as the wire carries them. The broker only writes the two
//! fields that lie outside the CRC (base offset and partition leader epoch), so the produce
//! path never re-encodes a batch; the exceptions are LogAppendTime topics and a max timestamp
//! the producer got wrong, where the CRC is recomputed as Kafka does.

use crate::error::InvalidBatch;

pub const BASE_OFFSET_OFFSET: usize = 0;
pub const LENGTH_OFFSET: usize = 8;
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
pub const BASE_SEQUENCE_OFFSET: usize = 53;
pub const RECORDS_COUNT_OFFSET: usize = 57;
/// Bytes before the first record.
pub const HEADER_SIZE: usize = 61;
/// Bytes of base offset + length: the length field counts what follows it.
pub const LOG_OVERHEAD: usize = 12;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Upper bound on records in one batch we are willing to iterate (bounded loops).
const MAX_RECORDS_PER_BATCH: i32 = 1 << 24;
/// Upper bound on the decompressed size of one batch: a decompression bomb is refused.
const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The fixed-size header of a v2 batch, decoded. Constructed only from a buffer of at
/// least [`HEADER_SIZE`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// The length field: bytes after the length field itself.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `b`. `None` if fewer than [`HEADER_SIZE`] bytes.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < HEADER_SIZE {
            return None;
        }
        Some(BatchHeader {
            base_offset: be_i64(b, BASE_OFFSET_OFFSET),
            batch_length: be_i32(b, LENGTH_OFFSET),
            partition_leader_epoch: be_i32(b, PARTITION_LEADER_EPOCH_OFFSET),
            magic: b[MAGIC_OFFSET] as i8,
            crc: be_u32(b, CRC_OFFSET),
            attributes: be_i16(b, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: be_i64(b, BASE_TIMESTAMP_OFFSET),
            max_timestamp: be_i64(b, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(b, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(b, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(b, BASE_SEQUENCE_OFFSET),
            records_count: be_i32(b, RECORDS_COUNT_OFFSET),
        })
    }

    /// Total size on disk and on the wire, including base offset and length.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn compression(&self) -> Option<Compression> {
        match self.attributes & ATTR_COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
    /// Sequence of the last record, wrapping at i32::MAX as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }
}

/// CRC-32C over everything from the attributes to the end of the batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// Checks framing and CRC of one stored or received batch, without looking at records.
/// `b` must start at the batch; it may extend past it.
pub fn check_frame(b: &[u8]) -> Result<BatchHeader, InvalidBatch> {
    let h = BatchHeader::parse(b).ok_or_else(|| {
        InvalidBatch::Corrupt(format!("{} bytes is shorter than a batch header", b.len()))
    })?;
    if h.magic != 2 {
        return Err(InvalidBatch::UnsupportedMagic(h.magic));
    }
    if (h.batch_length as i64) < (HEADER_SIZE - LOG_OVERHEAD) as i64 {
        return Err(InvalidBatch::Corrupt(format!(
            "batch length {} too small",
            h.batch_length
        )));
    }
    let total = h.total_size();
    if total > b.len() {
        return Err(InvalidBatch::Corrupt(format!(
            "batch length {} runs past the {} bytes available",
            total,
            b.len()
        )));
    }
    let actual = compute_crc(&b[..total]);
    if actual != h.crc {
        return Err(InvalidBatch::Corrupt(format!(
            "crc mismatch: stored {:#010x}, computed {:#010x}",
            h.crc, actual
        )));
    }
    if h.last_offset_delta < 0 {
        return Err(InvalidBatch::Corrupt(format!(
            "negative last offset delta {}",
            h.last_offset_delta
        )));
    }
    Ok(h)
}

/// Iterates over the batches of a buffer holding whole batches back to back (a produce
/// request's record set, or a span of a segment). Stops at the first bad frame with an error.
pub fn frames(mut b: &[u8]) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), InvalidBatch>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || b.is_empty() {
            return None;
        }
        match check_frame(b) {
            Ok(h) => {
                let (this, rest) = b.split_at(h.total_size());
                b = rest;
                Some(Ok((h, this)))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// A reader of Kafka's zig-zag varints over a slice; every read is bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn corrupt(what: &str) -> InvalidBatch {
        InvalidBatch::Corrupt(format!("record truncated or malformed reading {what}"))
    }
    fn varlong(&mut self, what: &str) -> Result<i64, InvalidBatch> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let byte = *self.b.get(self.at).ok_or_else(|| Self::corrupt(what))?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(Self::corrupt(what))
    }
    fn varint(&mut self, what: &str) -> Result<i32, InvalidBatch> {
        let v = self.varlong(what)?;
        i32::try_from(v).map_err(|_| Self::corrupt(what))
    }
    fn skip(&mut self, n: usize, what: &str) -> Result<&'a [u8], InvalidBatch> {
        let end = self.at.checked_add(n).ok_or_else(|| Self::corrupt(what))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or_else(|| Self::corrupt(what))?;
        self.at = end;
        Ok(s)
    }
    fn i8(&mut self, what: &str) -> Result<i8, InvalidBatch> {
        Ok(self.skip(1, what)?[0] as i8)
    }
    /// A length-prefixed byte string; `None` for length -1.
    fn bytes(&mut self, what: &str) -> Result<Option<&'a [u8]>, InvalidBatch> {
        let len = self.varint(what)?;
        if len < -1 {
            return Err(Self::corrupt(what));
        }
        if len == -1 {
            return Ok(None);
        }
        Ok(Some(self.skip(len as usize, what)?))
    }
}

/// One record of a batch, borrowed from the (decompressed) records buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The whole encoded record, length prefix included: copied verbatim when a batch is
    /// rewritten (its deltas are relative to the batch, which keeps its base values).
    pub raw: &'a [u8],
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers_count: i32,
}

/// Decompresses the records section of a batch (or borrows it when uncompressed).
pub fn records_bytes<'a>(
    h: &BatchHeader,
    batch: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, InvalidBatch> {
    use std::borrow::Cow;
    use std::io::Read;
    let body = &batch[HEADER_SIZE..h.total_size()];
    let codec = h.compression().ok_or_else(|| {
        InvalidBatch::InvalidRecord(format!(
            "unknown compression in attributes {:#x}",
            h.attributes
        ))
    })?;
    let limited = |r: &mut dyn Read| -> Result<Vec<u8>, InvalidBatch> {
        let mut out = Vec::new();
        r.take(MAX_DECOMPRESSED_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| InvalidBatch::Corrupt(format!("decompression failed: {e}")))?;
        if out.len() > MAX_DECOMPRESSED_BYTES {
            return Err(InvalidBatch::InvalidRecord(
                "batch decompresses to more than 256 MiB".into(),
            ));
        }
        Ok(out)
    };
    Ok(match codec {
        Compression::None => Cow::Borrowed(body),
        Compression::Gzip => Cow::Owned(limited(&mut flate2::read::GzDecoder::new(body))?),
        Compression::Snappy => Cow::Owned(snappy_decompress(body)?),
        Compression::Lz4 => Cow::Owned(limited(&mut lz4_flex::frame::FrameDecoder::new(body))?),
        Compression::Zstd => Cow::Owned(limited(
            &mut zstd::stream::read::Decoder::new(body)
                .map_err(|e| InvalidBatch::Corrupt(format!("zstd: {e}")))?,
        )?),
    })
}

const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

/// Raw snappy block, or the xerial framing the Java client writes (magic, version, compat,
/// then big-endian length-prefixed raw blocks).
fn snappy_decompress(body: &[u8]) -> Result<Vec<u8>, InvalidBatch> {
    let err = |e: snap::Error| InvalidBatch::Corrupt(format!("snappy: {e}"));
    let decode_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), InvalidBatch> {
        let len = snap::raw::decompress_len(block).map_err(err)?;
        if out.len() + len > MAX_DECOMPRESSED_BYTES {
            return Err(InvalidBatch::InvalidRecord(
                "batch decompresses to more than 256 MiB".into(),
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(err)?;
        Ok(())
    };
    let mut out = Vec::new();
    if body.len() >= 16 && body.starts_with(XERIAL_MAGIC) {
        let mut at = 16;
        while at < body.len() {
            if at + 4 > body.len() {
                return Err(InvalidBatch::Corrupt(
                    "xerial snappy block length truncated".into(),
                ));
            }
            let len = be_u32(body, at) as usize;
            at += 4;
            let block = body
                .get(at..at.saturating_add(len))
                .ok_or_else(|| InvalidBatch::Corrupt("xerial snappy block truncated".into()))?;
            decode_block(block, &mut out)?;
            at += len;
        }
    } else {
        decode_block(body, &mut out)?;
    }
    Ok(out)
}

/// Calls `f` for every record of a batch, checking the record structure, count and offset
/// deltas as it goes.
pub fn for_each_record<F>(h: &BatchHeader, batch: &[u8], f: F) -> Result<(), InvalidBatch>
where
    F: FnMut(&RecordView<'_>) -> Result<(), InvalidBatch>,
{
    for_each_record_inner(h, batch, false, f)
}

/// Like [`for_each_record`] for stored batches, which compaction may have thinned: offset
/// deltas must increase but may skip, and the count need not match the last offset delta.
pub fn for_each_stored_record<F>(h: &BatchHeader, batch: &[u8], f: F) -> Result<(), InvalidBatch>
where
    F: FnMut(&RecordView<'_>) -> Result<(), InvalidBatch>,
{
    for_each_record_inner(h, batch, true, f)
}

fn for_each_record_inner<F>(
    h: &BatchHeader,
    batch: &[u8],
    sparse_deltas: bool,
    mut f: F,
) -> Result<(), InvalidBatch>
where
    F: FnMut(&RecordView<'_>) -> Result<(), InvalidBatch>,
{
    let mut prev_delta = 0i32;
    if h.records_count < 0 || h.records_count > MAX_RECORDS_PER_BATCH {
        return Err(InvalidBatch::InvalidRecord(format!(
            "record count {}",
            h.records_count
        )));
    }
    let records = records_bytes(h, batch)?;
    let mut c = Cursor { b: &records, at: 0 };
    for expected_delta in 0..h.records_count {
        let record_start = c.at;
        let len = c.varint("record length")?;
        if len < 0 {
            return Err(InvalidBatch::Corrupt(format!(
                "negative record length {len}"
            )));
        }
        let body = c.skip(len as usize, "record body")?;
        let mut r = Cursor { b: body, at: 0 };
        let attributes = r.i8("record attributes")?;
        let timestamp_delta = r.varlong("timestamp delta")?;
        let offset_delta = r.varint("offset delta")?;
        let key = r.bytes("key")?;
        let value = r.bytes("value")?;
        let headers_count = r.varint("headers count")?;
        if headers_count < 0 || headers_count as usize > body.len() {
            return Err(InvalidBatch::Corrupt(format!(
                "header count {headers_count}"
            )));
        }
        for _ in 0..headers_count {
            let k = r.bytes("header key")?;
            if k.is_none() {
                return Err(InvalidBatch::InvalidRecord("null header key".into()));
            }
            r.bytes("header value")?;
        }
        if r.at != body.len() {
            return Err(InvalidBatch::Corrupt(
                "record length does not match its fields".into(),
            ));
        }
        if offset_delta != expected_delta && !sparse_deltas {
            return Err(InvalidBatch::InvalidRecord(format!(
                "record offset delta {offset_delta}, expected {expected_delta}"
            )));
        }
        if sparse_deltas && (offset_delta < prev_delta || offset_delta > h.last_offset_delta) {
            return Err(InvalidBatch::Corrupt(format!(
                "record offset delta {offset_delta} out of order"
            )));
        }
        prev_delta = offset_delta.saturating_add(1);
        let raw = &records[record_start..c.at];
        f(&RecordView {
            raw,
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers_count,
        })?;
    }
    if c.at != records.len() {
        return Err(InvalidBatch::Corrupt("bytes after the last record".into()));
    }
    if !sparse_deltas && h.records_count > 0 && h.last_offset_delta != h.records_count - 1 {
        return Err(InvalidBatch::InvalidRecord(format!(
            "last offset delta {} does not match {} records",
            h.last_offset_delta, h.records_count
        )));
    }
    Ok(())
}

/// What validation learns about one batch of a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedBatch {
    pub header: BatchHeader,
    /// Position of the batch in the request buffer.
    pub position: usize,
    /// Highest record timestamp (CreateTime), as the batch should carry it.
    pub max_timestamp: i64,
}

/// Rules for batches arriving from a producer.
#[derive(Debug, Clone, Copy)]
pub struct ProduceRules {
    pub max_message_bytes: usize,
    pub require_keys: bool,
    pub log_append_time: bool,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    pub now_ms: i64,
}

/// Validates a producer's record set: every batch framed, CRC-checked, magic 2, not a control
/// batch, record count and deltas consistent, timestamps in range (CreateTime topics), keys
/// present on compacted topics, each batch within `max.message.bytes`.
/// Nothing is modified; the first refusal is returned.
pub fn validate_produce(
    records: &[u8],
    rules: &ProduceRules,
) -> Result<Vec<ValidatedBatch>, InvalidBatch> {
    if records.is_empty() {
        return Err(InvalidBatch::InvalidRecord("empty record set".into()));
    }
    let mut out = Vec::new();
    let mut position = 0usize;
    for frame in frames(records) {
        let (h, batch) = frame?;
        if batch.len() > rules.max_message_bytes {
            return Err(InvalidBatch::TooLarge {
                size_bytes: batch.len(),
                limit_bytes: rules.max_message_bytes,
            });
        }
        if h.is_control() {
            return Err(InvalidBatch::InvalidRecord(
                "clients may not write control batches".into(),
            ));
        }
        if h.records_count == 0 {
            return Err(InvalidBatch::InvalidRecord("batch with no records".into()));
        }
        let mut max_ts = i64::MIN;
        let check_ts = !rules.log_append_time;
        for_each_record(&h, batch, |r| {
            if rules.require_keys && r.key.is_none() {
                return Err(InvalidBatch::InvalidRecord(
                    "compacted topic: records must have a key".into(),
                ));
            }
            let ts = h.base_timestamp.saturating_add(r.timestamp_delta);
            max_ts = max_ts.max(ts);
            if check_ts && ts >= 0 {
                let before_ok = rules.now_ms.saturating_sub(ts) <= rules.timestamp_before_max_ms;
                let after_ok = ts.saturating_sub(rules.now_ms) <= rules.timestamp_after_max_ms;
                if !before_ok || !after_ok {
                    return Err(InvalidBatch::InvalidTimestamp {
                        timestamp_ms: ts,
                        now_ms: rules.now_ms,
                    });
                }
            }
            Ok(())
        })?;
        out.push(ValidatedBatch {
            header: h,
            position,
            max_timestamp: max_ts,
        });
        position += batch.len();
    }
    Ok(out)
}

/// Writes base offset and partition leader epoch (outside the CRC).
pub fn stamp_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Sets the timestamp type and max timestamp (inside the CRC) and recomputes the CRC.
pub fn set_max_timestamp(batch: &mut [u8], log_append_time: bool, max_timestamp: i64) {
    let mut attrs = be_i16(batch, ATTRIBUTES_OFFSET);
    if log_append_time {
        attrs |= ATTR_TIMESTAMP_TYPE;
    } else {
        attrs &= !ATTR_TIMESTAMP_TYPE;
    }
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Compresses a records section with `codec` (the Java client's xerial framing for snappy).
pub fn compress(codec: Compression, plain: &[u8]) -> Result<Vec<u8>, InvalidBatch> {
    use std::io::Write;
    let fail = |e: String| InvalidBatch::Corrupt(format!("recompression failed: {e}"));
    Ok(match codec {
        Compression::None => plain.to_vec(),
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(plain).map_err(|e| fail(e.to_string()))?;
            w.finish().map_err(|e| fail(e.to_string()))?
        }
        Compression::Snappy => {
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for block in plain.chunks(32 * 1024) {
                let c = enc.compress_vec(block).map_err(|e| fail(e.to_string()))?;
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            out
        }
        Compression::Lz4 => {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            w.write_all(plain).map_err(|e| fail(e.to_string()))?;
            w.finish().map_err(|e| fail(e.to_string()))?
        }
        Compression::Zstd => zstd::encode_all(plain, 3).map_err(|e| fail(e.to_string()))?,
    })
}

/// Rewrites a stored batch keeping only the records `keep` accepts (by absolute offset).
/// Returns `Ok(None)` when no record is kept, the original bytes when all are, otherwise
/// a new batch with the same base offset, last offset delta, epoch, producer fields and
/// codec, the kept records copied verbatim, and a fresh CRC.
pub fn retain_records<F>(
    h: &BatchHeader,
    batch: &[u8],
    mut keep: F,
) -> Result<Option<Vec<u8>>, InvalidBatch>
where
    F: FnMut(i64, &RecordView<'_>) -> bool,
{
    let mut kept = Vec::new();
    let mut kept_count = 0i32;
    let mut total = 0i32;
    for_each_stored_record(h, batch, |r| {
        total += 1;
        if keep(h.base_offset + i64::from(r.offset_delta), r) {
            kept.extend_from_slice(r.raw);
            kept_count += 1;
        }
        Ok(())
    })?;
    if kept_count == 0 {
        return Ok(None);
    }
    if kept_count == total {
        return Ok(Some(batch[..h.total_size()].to_vec()));
    }
    let codec = h.compression().unwrap_or(Compression::None);
    let body = compress(codec, &kept)?;
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(&batch[..HEADER_SIZE]);
    out.extend_from_slice(&body);
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
    out[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4].copy_from_slice(&kept_count.to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(out))
}

/// Builds an uncompressed v2 batch (used by tests, tools and the broker's own control records).
pub mod build {
    use super::*;

    fn put_varlong(out: &mut Vec<u8>, v: i64) {
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
            None => put_varlong(out, -1),
            Some(b) => {
                put_varlong(out, b.len() as i64);
                out.extend_from_slice(b);
            }
        }
    }

    /// A record to encode: key, value, timestamp.
    #[derive(Debug, Clone)]
    pub struct Record<'a> {
        pub key: Option<&'a [u8]>,
        pub value: Option<&'a [u8]>,
        pub timestamp_ms: i64,
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub struct BatchOptions {
        pub base_offset: i64,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub base_sequence: i32,
        pub transactional: bool,
        pub control: bool,
    }

    /// Encodes records into one uncompressed v2 batch with a valid CRC.
    pub fn batch(records: &[Record<'_>], opts: BatchOptions) -> Vec<u8> {
        let base_ts = records.first().map(|r| r.timestamp_ms).unwrap_or(0);
        let max_ts = records
            .iter()
            .map(|r| r.timestamp_ms)
            .max()
            .unwrap_or(base_ts);
        let mut body = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut rec = Vec::new();
            rec.push(0u8);
            put_varlong(&mut rec, r.timestamp_ms - base_ts);
            put_varlong(&mut rec, i as i64);
            put_bytes(&mut rec, r.key);
            put_bytes(&mut rec, r.value);
            put_varlong(&mut rec, 0);
            put_varlong(&mut body, rec.len() as i64);
            body.extend_from_slice(&rec);
        }
        let mut attrs: i16 = 0;
        if opts.transactional {
            attrs |= ATTR_TRANSACTIONAL;
        }
        if opts.control {
            attrs |= ATTR_CONTROL;
        }
        let mut b = Vec::with_capacity(HEADER_SIZE + body.len());
        b.extend_from_slice(&opts.base_offset.to_be_bytes());
        b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&attrs.to_be_bytes());
        b.extend_from_slice(&(records.len() as i32 - 1).max(0).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        let pid = if opts.producer_id == 0 && opts.base_sequence == 0 && opts.producer_epoch == 0 {
            -1
        } else {
            opts.producer_id
        };
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&(if pid < 0 { -1i16 } else { opts.producer_epoch }).to_be_bytes());
        b.extend_from_slice(&(if pid < 0 { -1i32 } else { opts.base_sequence }).to_be_bytes());
        b.extend_from_slice(&(records.len() as i32).to_be_bytes());
        b.extend_from_slice(&body);
        let crc = compute_crc(&b);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn rules() -> ProduceRules {
        ProduceRules {
            max_message_bytes: 1 << 20,
            require_keys: false,
            log_append_time: false,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
            now_ms: 1_000_000,
        }
    }

    #[test]
    fn built_batch_validates_and_every_bit_flip_is_caught() {
        let recs = [
            Record {
                key: Some(b"k"),
                value: Some(b"v1"),
                timestamp_ms: 999_000,
            },
            Record {
                key: None,
                value: None,
                timestamp_ms: 999_500,
            },
        ];
        let b = batch(&recs, BatchOptions::default());
        let v = validate_produce(&b, &rules()).expect("valid");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].header.records_count, 2);
        assert_eq!(v[0].max_timestamp, 999_500);
        // Flip every bit covered by the CRC: each must be refused.
        for i in ATTRIBUTES_OFFSET * 8..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(
                validate_produce(&c, &rules()).is_err(),
                "bit {i} flip accepted"
            );
        }
    }

    #[test]
    fn keys_required_on_compacted_topics() {
        let b = batch(
            &[Record {
                key: None,
                value: Some(b"v"),
                timestamp_ms: 1_000_000,
            }],
            BatchOptions::default(),
        );
        let r = ProduceRules {
            require_keys: true,
            ..rules()
        };
        assert_eq!(validate_produce(&b, &r).unwrap_err().kafka_error_code(), 87);
    }

    #[test]
    fn timestamps_out_of_range_refused() {
        let b = batch(
            &[Record {
                key: None,
                value: Some(b"v"),
                timestamp_ms: 9_000_000,
            }],
            BatchOptions::default(),
        );
        assert_eq!(
            validate_produce(&b, &rules())
                .unwrap_err()
                .kafka_error_code(),
            32
        );
        let r = ProduceRules {
            log_append_time: true,
            ..rules()
        };
        assert!(validate_produce(&b, &r).is_ok());
    }

    #[test]
    fn too_large_batch_refused() {
        let v = vec![7u8; 2000];
        let b = batch(
            &[Record {
                key: None,
                value: Some(&v),
                timestamp_ms: 1_000_000,
            }],
            BatchOptions::default(),
        );
        let r = ProduceRules {
            max_message_bytes: 1000,
            ..rules()
        };
        assert_eq!(validate_produce(&b, &r).unwrap_err().kafka_error_code(), 10);
    }

    #[test]
    fn truncated_batches_refused_at_every_length() {
        let b = batch(
            &[Record {
                key: Some(b"k"),
                value: Some(b"value"),
                timestamp_ms: 1_000_000,
            }],
            BatchOptions::default(),
        );
        for len in 0..b.len() {
            assert!(
                validate_produce(&b[..len], &rules()).is_err(),
                "length {len} accepted"
            );
        }
    }

    #[test]
    fn set_max_timestamp_keeps_crc_valid() {
        let mut b = batch(
            &[Record {
                key: None,
                value: Some(b"v"),
                timestamp_ms: 5,
            }],
            BatchOptions::default(),
        );
        set_max_timestamp(&mut b, true, 123);
        let h = check_frame(&b).expect("crc recomputed");
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 123);
    }

    #[test]
    fn compressed_batches_are_decoded() {
        use std::io::Write;
        let plain = batch(
            &[
                Record {
                    key: Some(b"a"),
                    value: Some(b"1"),
                    timestamp_ms: 1_000_000,
                },
                Record {
                    key: Some(b"b"),
                    value: Some(b"2"),
                    timestamp_ms: 1_000_001,
                },
            ],
            BatchOptions::default(),
        );
        let body = &plain[HEADER_SIZE..];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(body).expect("lz4");
        let lz = lz.finish().expect("lz4");
        let zs = zstd::encode_all(body, 1).expect("zstd");
        let sn = snap::raw::Encoder::new()
            .compress_vec(body)
            .expect("snappy");
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&1i32.to_be_bytes());
        xerial.extend_from_slice(&1i32.to_be_bytes());
        xerial.extend_from_slice(&(sn.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&sn);
        for (codec, comp) in [(1i16, gz), (2, sn.clone()), (2, xerial), (3, lz), (4, zs)] {
            let mut b = plain[..HEADER_SIZE].to_vec();
            b.extend_from_slice(&comp);
            let len = (b.len() - LOG_OVERHEAD) as i32;
            b[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
            b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&codec.to_be_bytes());
            let crc = compute_crc(&b);
            b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
            let v = validate_produce(&b, &rules()).unwrap_or_else(|e| panic!("codec {codec}: {e}"));
            assert_eq!(v[0].max_timestamp, 1_000_001);
        }
    }
}
