//! The `__transaction_state` record layout (Kafka's TransactionLogKey / TransactionLogValue,
//! version 0, so that Kafka's own tools can read the topic):
//!
//! key:   int16 version (0), string transactional_id
//! value: int16 version (0), int64 producer_id, int16 producer_epoch, int32 timeout_ms,
//!        int8 state, array of { string topic, array of int32 partition } (nullable),
//!        int64 last_update_timestamp_ms, int64 start_timestamp_ms
//!
//! Strings are int16 length + UTF-8; arrays are int32 count. A null value is a tombstone.

use std::collections::BTreeSet;

use crate::{TxnError, TxnMeta, TxnState};

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.extend_from_slice(&(b.len().min(i16::MAX as usize) as i16).to_be_bytes());
    out.extend_from_slice(&b[..b.len().min(i16::MAX as usize)]);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TxnError> {
        if self.b.len() - self.at < n {
            return Err(TxnError::Record("truncated".into()));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn i8(&mut self) -> Result<i8, TxnError> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Result<i16, TxnError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, TxnError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, TxnError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, TxnError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(TxnError::Record("null string".into()));
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| TxnError::Record("string not UTF-8".into()))
    }
}

pub fn key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.extend_from_slice(&0i16.to_be_bytes());
    put_str(&mut out, transactional_id);
    out
}

pub fn decode_key(b: &[u8]) -> Result<String, TxnError> {
    let mut r = Reader { b, at: 0 };
    let v = r.i16()?;
    if v != 0 {
        return Err(TxnError::Record(format!("unknown key version {v}")));
    }
    r.string()
}

pub fn value(m: &TxnMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&m.producer_id.to_be_bytes());
    out.extend_from_slice(&m.producer_epoch.to_be_bytes());
    out.extend_from_slice(&m.timeout_ms.to_be_bytes());
    out.push(m.state.code() as u8);
    // Topics grouped, in order.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (t, p) in &m.partitions {
        match topics.last_mut() {
            Some((name, ps)) if *name == t.as_str() => ps.push(*p),
            _ => topics.push((t.as_str(), vec![*p])),
        }
    }
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (t, ps) in topics {
        put_str(&mut out, t);
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&m.last_update_ms.to_be_bytes());
    out.extend_from_slice(&m.start_ms.to_be_bytes());
    out
}

/// Bound on partitions in one decoded record (a damaged count cannot allocate much).
const MAX_PARTITIONS: i32 = 1_000_000;

pub fn decode_value(transactional_id: &str, b: &[u8]) -> Result<TxnMeta, TxnError> {
    let mut r = Reader { b, at: 0 };
    let v = r.i16()?;
    if v != 0 && v != 1 {
        return Err(TxnError::Record(format!("unknown value version {v}")));
    }
    if v == 1 {
        // Flexible versions (tagged fields) are not written by Holdfast.
        return Err(TxnError::Record("value version 1 not supported".into()));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = TxnState::from_code(r.i8()?)
        .ok_or_else(|| TxnError::Record("unknown transaction state".into()))?;
    let topics = r.i32()?;
    let mut partitions = BTreeSet::new();
    if topics > MAX_PARTITIONS {
        return Err(TxnError::Record("too many topics".into()));
    }
    for _ in 0..topics.max(0) {
        let t = r.string()?;
        let n = r.i32()?;
        if n > MAX_PARTITIONS {
            return Err(TxnError::Record("too many partitions".into()));
        }
        for _ in 0..n.max(0) {
            partitions.insert((t.clone(), r.i32()?));
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnMeta {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch,
        last_producer_epoch: -1,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
        pending: None,
        next_producer_id: -1,
    })
}
