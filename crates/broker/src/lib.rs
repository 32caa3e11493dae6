//! The Holdfast broker: a Kafka-protocol server over the durable log.
//!
//! * [`state`]: topics and partitions (log, leader epoch, high watermark), persisted metadata.
//! * [`handlers`]: one handler per API; appends happen in request order, durability waits and
//!   fetch long polls complete asynchronously while the connection keeps reading.
//! * [`server`]: TCP accept loop and per-connection pipelining with bounded in-flight requests.

pub mod cluster;
pub mod config;
pub mod errors;
mod fetch;
pub mod groups;
pub mod handlers;
pub mod http;
pub mod ledger;
pub mod meta;
pub mod metrics;
pub mod protect;
pub mod server;
pub mod state;
pub mod txn;

pub use config::{BrokerConfig, ConfigError};
pub use http::serve_metrics;
pub use server::serve;
pub use state::{Broker, BrokerError};
