//! One connection to one broker: ApiVersions negotiation and request/response framing.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ClientError, Result};

/// Responses larger than this are refused (a fetch is bounded by its own max_bytes).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// A connection with one request in flight at a time.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    client_id: StrBytes,
    correlation_id: i32,
    timeout: Duration,
    /// api key → (min, max) the broker advertised.
    versions: HashMap<i16, (i16, i16)>,
}

fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(k) => k.name(),
        Err(_) => "unknown API",
    }
}

trait ApiKeyName {
    fn name(self) -> &'static str;
}

impl ApiKeyName for ApiKey {
    fn name(self) -> &'static str {
        match self {
            ApiKey::Produce => "Produce",
            ApiKey::Fetch => "Fetch",
            ApiKey::ListOffsets => "ListOffsets",
            ApiKey::Metadata => "Metadata",
            ApiKey::OffsetCommit => "OffsetCommit",
            ApiKey::OffsetFetch => "OffsetFetch",
            ApiKey::FindCoordinator => "FindCoordinator",
            ApiKey::DescribeGroups => "DescribeGroups",
            ApiKey::ListGroups => "ListGroups",
            ApiKey::ApiVersions => "ApiVersions",
            ApiKey::CreateTopics => "CreateTopics",
            ApiKey::DeleteTopics => "DeleteTopics",
            ApiKey::InitProducerId => "InitProducerId",
            ApiKey::DescribeConfigs => "DescribeConfigs",
            ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
            ApiKey::CreatePartitions => "CreatePartitions",
            ApiKey::DeleteGroups => "DeleteGroups",
            ApiKey::DescribeCluster => "DescribeCluster",
            ApiKey::DeleteRecords => "DeleteRecords",
            _ => "request",
        }
    }
}

impl Connection {
    /// Connects and negotiates API versions (ApiVersions v3, falling back to v0 when the
    /// broker answers UNSUPPORTED_VERSION).
    pub async fn connect(addr: &str, client_id: &str, timeout: Duration) -> Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
                api: "connect",
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            correlation_id: 0,
            timeout,
            versions: HashMap::new(),
        };
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("holdfast");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut resp = conn.send_at(req.clone(), 3).await?;
        if resp.error_code == 35 {
            resp = conn.send_at(req, 0).await?;
        }
        crate::check(resp.error_code, None, || format!("ApiVersions to {addr}"))?;
        conn.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The version of `R` to use: the highest the broker supports up to `preferred`.
    pub fn version_for<R: Request>(&self, preferred: i16) -> Result<i16> {
        let (lo, hi) =
            self.versions
                .get(&R::KEY)
                .copied()
                .ok_or_else(|| ClientError::Unsupported {
                    addr: self.addr.clone(),
                    api: api_name(R::KEY),
                    min: 0,
                    max: preferred,
                })?;
        let ours = R::VERSIONS;
        let v = preferred.min(hi).min(ours.max);
        if v < lo || v < ours.min {
            return Err(ClientError::Unsupported {
                addr: self.addr.clone(),
                api: api_name(R::KEY),
                min: lo,
                max: hi,
            });
        }
        Ok(v)
    }

    /// Sends `req` at the negotiated version (at most `preferred`) and returns the response.
    pub async fn send<R: Request>(&mut self, req: R, preferred: i16) -> Result<R::Response> {
        let v = self.version_for::<R>(preferred)?;
        self.send_at(req, v).await
    }

    /// Sends `req` at exactly `version`.
    pub async fn send_at<R: Request>(&mut self, req: R, version: i16) -> Result<R::Response> {
        let api = api_name(R::KEY);
        let timeout = self.timeout;
        let addr = self.addr.clone();
        tokio::time::timeout(timeout, self.round_trip(req, version))
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                api,
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    async fn round_trip<R: Request>(&mut self, req: R, version: i16) -> Result<R::Response> {
        let api = api_name(R::KEY);
        let proto = |reason: String| ClientError::Protocol { api, reason };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        let mut body = BytesMut::new();
        body.put_i32(0);
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| proto(e.to_string()))?;
        req.encode(&mut body, version)
            .map_err(|e| proto(e.to_string()))?;
        let len = (body.len() - 4) as i32;
        body[..4].copy_from_slice(&len.to_be_bytes());
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(&body).await.map_err(io)?;
        let len = self
            .stream
            .read_i32()
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })?;
        if len < 0 || len as usize > MAX_RESPONSE_BYTES {
            return Err(ClientError::Protocol {
                api,
                reason: format!("response length {len}"),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })?;
        let mut buf = Bytes::from(buf);
        let rh = ResponseHeader::decode(
            &mut buf,
            <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version),
        )
        .map_err(|e| proto(e.to_string()))?;
        if rh.correlation_id != correlation_id {
            return Err(ClientError::Protocol {
                api,
                reason: format!(
                    "correlation id {} answers request {correlation_id}",
                    rh.correlation_id
                ),
            });
        }
        let resp = R::Response::decode(&mut buf, version).map_err(|e| proto(e.to_string()))?;
        if buf.has_remaining() {
            tracing::debug!(
                api,
                remaining = buf.remaining(),
                "trailing bytes in response"
            );
        }
        Ok(resp)
    }
}
