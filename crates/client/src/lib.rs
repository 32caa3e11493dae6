//! The client side of the Kafka protocol, as small as the admin CLI (and later the edge
//! buffer and the mirror) need it:
//!
//! * [`Connection`]: one TCP connection, ApiVersions negotiation, request/response framing
//!   with `kafka-protocol`'s encoders, one request in flight at a time.
//! * [`Client`]: bootstrap through Metadata, connections per broker id, the controller,
//!   group coordinators (FindCoordinator).
//! * [`records`]: encoding a produce batch and decoding fetched batches (every codec Kafka
//!   uses, through `holdfast-log`'s batch reader).
//!
//! Only standard APIs at versions Apache Kafka 4.x also serves are used, clamped to what the
//! broker advertises, so the same code works against Holdfast and against Kafka.

mod conn;
pub mod records;

use std::collections::BTreeMap;
use std::time::Duration;

pub use conn::Connection;
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};

/// Everything that can go wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O with {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer {api} within {timeout_ms} ms")]
    Timeout {
        addr: String,
        api: &'static str,
        timeout_ms: u64,
    },
    #[error("encoding or decoding {api}: {reason}")]
    Protocol { api: &'static str, reason: String },
    #[error("{addr} does not support {api} (needs v{min}..=v{max} of it)")]
    Unsupported {
        addr: String,
        api: &'static str,
        min: i16,
        max: i16,
    },
    #[error("{context}: {}{}", error_name(*.code), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Broker {
        context: String,
        code: i16,
        message: Option<String>,
    },
    #[error("{0}")]
    Other(String),
}

/// Kafka's name for an error code (`UNKNOWN_TOPIC_OR_PARTITION`), or the number.
pub fn error_name(code: i16) -> String {
    match code.err() {
        Some(ResponseError::Unknown(_)) | None => format!("error code {code}"),
        Some(e) => {
            // kafka-protocol's variants are CamelCase; Kafka's tools print the enum names.
            let camel = format!("{e:?}");
            let mut out = String::new();
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// Turns a non-zero error code into [`ClientError::Broker`].
pub fn check(
    code: i16,
    message: Option<&StrBytes>,
    context: impl FnOnce() -> String,
) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::Broker {
            context: context(),
            code,
            message: message.map(|m| m.to_string()),
        })
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A broker as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerAddr {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A cluster reached through its bootstrap servers.
pub struct Client {
    bootstrap: Vec<String>,
    timeout: Duration,
    client_id: String,
    brokers: BTreeMap<i32, BrokerAddr>,
    conns: BTreeMap<i32, Connection>,
    /// The connection used for cluster-wide requests (any broker).
    any: Option<Connection>,
    pub controller_id: i32,
    pub cluster_id: Option<String>,
}

impl Client {
    /// Connects to the first reachable bootstrap server and loads the broker list.
    pub async fn connect(bootstrap: &str, client_id: &str, timeout: Duration) -> Result<Client> {
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut last = None;
        for addr in &bootstrap {
            match Connection::connect(addr, client_id, timeout).await {
                Ok(conn) => {
                    let mut c = Client {
                        bootstrap: bootstrap.clone(),
                        timeout,
                        client_id: client_id.to_string(),
                        brokers: BTreeMap::new(),
                        conns: BTreeMap::new(),
                        any: Some(conn),
                        controller_id: -1,
                        cluster_id: None,
                    };
                    c.metadata(Some(Vec::new())).await?;
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Other("no bootstrap server given".into())))
    }

    pub fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    pub fn brokers(&self) -> impl Iterator<Item = &BrokerAddr> {
        self.brokers.values()
    }

    /// Metadata for `topics` (`None`: every topic; `Some(vec![])`: none, brokers only).
    /// Never auto-creates topics. Refreshes the broker list.
    pub async fn metadata(&mut self, topics: Option<Vec<String>>) -> Result<MetadataResponse> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.into_iter()
                .map(|t| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(TopicName(StrBytes::from_string(t)));
                    mt
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        let resp = self.send_any(req, 12).await?;
        self.brokers = resp
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    BrokerAddr {
                        node_id: b.node_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        self.controller_id = resp.controller_id.0;
        self.cluster_id = resp.cluster_id.as_ref().map(|c| c.to_string());
        Ok(resp)
    }

    /// Sends to any broker (the bootstrap connection, re-established if it broke).
    pub async fn send_any<R: Request + Clone>(
        &mut self,
        req: R,
        preferred_version: i16,
    ) -> Result<R::Response> {
        if self.any.is_none() {
            let mut last = None;
            for addr in &self.bootstrap {
                match Connection::connect(addr, &self.client_id, self.timeout).await {
                    Ok(c) => {
                        self.any = Some(c);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if self.any.is_none() {
                return Err(last.unwrap_or_else(|| ClientError::Other("no bootstrap".into())));
            }
        }
        let Some(conn) = self.any.as_mut() else {
            return Err(ClientError::Other("no connection".into()));
        };
        let r = conn.send(req, preferred_version).await;
        if r.is_err() {
            self.any = None;
        }
        r
    }

    /// The connection to broker `node_id` (opened on first use).
    pub async fn broker(&mut self, node_id: i32) -> Result<&mut Connection> {
        if !self.conns.contains_key(&node_id) {
            let addr = match self.brokers.get(&node_id) {
                Some(b) => b.addr(),
                None => {
                    self.metadata(Some(Vec::new())).await?;
                    self.brokers
                        .get(&node_id)
                        .map(|b| b.addr())
                        .ok_or_else(|| ClientError::Other(format!("unknown broker {node_id}")))?
                }
            };
            let conn = Connection::connect(&addr, &self.client_id, self.timeout).await?;
            self.conns.insert(node_id, conn);
        }
        self.conns
            .get_mut(&node_id)
            .ok_or_else(|| ClientError::Other(format!("unknown broker {node_id}")))
    }

    /// Sends to broker `node_id`; a broken connection is dropped so the next call reconnects.
    pub async fn send_to<R: Request + Clone>(
        &mut self,
        node_id: i32,
        req: R,
        preferred_version: i16,
    ) -> Result<R::Response> {
        let r = self
            .broker(node_id)
            .await?
            .send(req, preferred_version)
            .await;
        if matches!(r, Err(ClientError::Io { .. } | ClientError::Timeout { .. })) {
            self.conns.remove(&node_id);
        }
        r
    }

    /// Sends to the controller (for CreateTopics, DeleteTopics, CreatePartitions, configs),
    /// or to any broker when the cluster reports none.
    pub async fn send_controller<R: Request + Clone>(
        &mut self,
        req: R,
        preferred_version: i16,
    ) -> Result<R::Response> {
        if self.controller_id >= 0 && self.brokers.contains_key(&self.controller_id) {
            self.send_to(self.controller_id, req, preferred_version)
                .await
        } else {
            self.send_any(req, preferred_version).await
        }
    }

    /// The coordinator of group `group` (FindCoordinator, key type 0), retried while the
    /// coordinator is loading or not yet available.
    pub async fn group_coordinator(&mut self, group: &str) -> Result<i32> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut req = FindCoordinatorRequest::default();
            req.key_type = 0;
            // v4+ batches keys; older versions carry one key.
            let batched = match self.any.as_ref() {
                Some(c) => c.version_for::<FindCoordinatorRequest>(4)? >= 4,
                None => true,
            };
            if batched {
                req.coordinator_keys = vec![StrBytes::from_string(group.to_string())];
            } else {
                req.key = StrBytes::from_string(group.to_string());
            }
            let resp = self.send_any(req, 4).await?;
            let (code, msg, node) = match resp.coordinators.first() {
                Some(c) => (c.error_code, c.error_message.clone(), c.node_id.0),
                None => (resp.error_code, resp.error_message.clone(), resp.node_id.0),
            };
            // COORDINATOR_LOAD_IN_PROGRESS (14), COORDINATOR_NOT_AVAILABLE (15)
            if (code == 14 || code == 15) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            check(code, msg.as_ref(), || {
                format!("finding the coordinator of group {group}")
            })?;
            if !self.brokers.contains_key(&node) {
                self.metadata(Some(Vec::new())).await?;
            }
            return Ok(node);
        }
    }
}
