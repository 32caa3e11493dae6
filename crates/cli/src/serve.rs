//! `holdfast serve`: a single-node broker, or (with `--controller-quorum-voters`) one node of
//! a cluster on the Raft metadata quorum (docs/cluster.md).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use holdfast_broker::cluster::{self, Cluster, ClusterConfig, MetaProperties};
use holdfast_broker::{Broker, BrokerConfig};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Directory holding the partition logs and broker metadata.
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "./holdfast-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "localhost:9092")]
    listen: String,
    /// `host:port` advertised to clients in Metadata (default: the listen host and bound port).
    #[arg(long, env = "HOLDFAST_ADVERTISE")]
    advertise: Option<String>,
    /// This broker's node id.
    #[arg(long, env = "HOLDFAST_NODE_ID", default_value_t = 1)]
    node_id: i32,
    /// TOML file of broker settings keyed by Kafka's names, e.g. `"num.partitions" = 4`.
    #[arg(long, env = "HOLDFAST_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides one setting: `--set key=value` (repeatable; applied last). Between the
    /// config file and `--set`, environment variables `HOLDFAST_<KEY>` apply, with the
    /// Kafka name upper-cased and dots as underscores: `HOLDFAST_LOG_RETENTION_MS=60000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given; e.g.
    /// `127.0.0.1:9644`; port 0 picks a free port, printed at start).
    #[arg(long, env = "HOLDFAST_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Cluster mode: the metadata quorum's voters, Kafka's `controller.quorum.voters`
    /// format: `1@host:port,2@host:port,3@host:port`. Without it the broker runs alone.
    #[arg(long, env = "HOLDFAST_CONTROLLER_QUORUM_VOTERS", value_name = "VOTERS")]
    controller_quorum_voters: Option<String>,
    /// Cluster mode: address of this node's quorum (controller) listener; default: its
    /// entry in `--controller-quorum-voters`. A node not among the voters runs as a
    /// broker-only node (Kafka's `process.roles=broker`) and must be given this address: the
    /// Raft leader replicates the metadata log to it there, as a learner.
    #[arg(long, env = "HOLDFAST_CONTROLLER_LISTEN", value_name = "ADDR")]
    controller_listen: Option<String>,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<BrokerConfig> {
    let mut cfg = BrokerConfig::new(args.data_dir.clone(), args.listen.clone());
    cfg.node_id = args.node_id;
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (k, v) in table {
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("{}: unsupported value for `{k}`: {other}", path.display()),
            };
            cfg.set(&k, &value)
                .with_context(|| format!("{}: `{k}`", path.display()))?;
        }
    }
    apply_env(&mut cfg, std::env::vars())?;
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected key=value"))?;
        cfg.set(k.trim(), v.trim())
            .with_context(|| format!("--set {kv}"))?;
    }
    Ok(cfg)
}

/// Environment variables naming flags, not settings.
const FLAG_VARS: &[&str] = &[
    "DATA_DIR",
    "LISTEN",
    "ADVERTISE",
    "NODE_ID",
    "CONFIG",
    "METRICS_LISTEN",
    "CONTROLLER_QUORUM_VOTERS",
    "CONTROLLER_LISTEN",
];

/// Applies `HOLDFAST_<KEY>` variables: `HOLDFAST_LOG_RETENTION_MS` sets `log.retention.ms`.
/// A variable that names no setting is reported and ignored (test harnesses and tools
/// share the prefix); an invalid value for a real setting is an error.
fn apply_env(
    cfg: &mut BrokerConfig,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("HOLDFAST_") else {
            continue;
        };
        if FLAG_VARS.contains(&rest) {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace('_', ".");
        match cfg.set(&key, &value) {
            Ok(()) => {
                tracing::info!(variable = %name, setting = %key, "setting from the environment")
            }
            Err(holdfast_broker::ConfigError::UnknownKey(_)) => {
                tracing::debug!(variable = %name, "environment variable names no setting; ignored")
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("environment variable {name}")))
            }
        }
    }
    Ok(())
}

fn advertised(args: &ServeArgs, bound: SocketAddr) -> anyhow::Result<(String, i32)> {
    if let Some(a) = &args.advertise {
        let (h, p) = a
            .rsplit_once(':')
            .with_context(|| format!("--advertise {a}: expected host:port"))?;
        return Ok((
            h.to_string(),
            p.parse()
                .with_context(|| format!("--advertise {a}: bad port"))?,
        ));
    }
    let host = args
        .listen
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or("localhost");
    let host = if host.is_empty() || host == "0.0.0.0" || host == "::" {
        "localhost"
    } else {
        host
    };
    Ok((host.to_string(), i32::from(bound.port())))
}

/// Test-only fault injection for the chaos harness: with `HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1=1`
/// each SIGUSR1 makes the next group-commit fsync fail as with EIO (the partitions of that
/// round go offline until restart, as after a real fsync failure). Off unless the variable
/// is exactly `1`; logged at ERROR when on.
fn fsync_fault_hook() {
    #[cfg(unix)]
    if std::env::var("HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1").is_ok_and(|v| v == "1") {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                tracing::error!(
                    "HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1=1: SIGUSR1 makes the next fsync fail \
                     (test-only fault injection)"
                );
                tokio::spawn(async move {
                    // Bounded by the process: one injection per signal received.
                    while usr1.recv().await.is_some() {
                        tracing::error!("SIGUSR1: injecting an fsync failure (test hook)");
                        holdfast_log::inject_fsync_failures(1);
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot install the SIGUSR1 test hook"),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install a SIGTERM handler; only SIGINT stops the broker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Cluster mode settings checked before anything is opened: the data dir must be formatted
/// for this node (`holdfast format`).
struct ClusterStart {
    props: MetaProperties,
    voters: std::collections::BTreeMap<u64, SocketAddr>,
    controller_listen: SocketAddr,
}

fn cluster_start(args: &ServeArgs) -> anyhow::Result<Option<ClusterStart>> {
    let Some(voters) = &args.controller_quorum_voters else {
        if args.controller_listen.is_some() {
            bail!("--controller-listen needs --controller-quorum-voters");
        }
        return Ok(None);
    };
    let voters = cluster::parse_voters(voters).context("--controller-quorum-voters")?;
    let props = MetaProperties::check_for_serve(&args.data_dir, args.node_id)?;
    let controller_listen = match &args.controller_listen {
        Some(a) => cluster::resolve(a).context("--controller-listen")?,
        None => *voters.get(&(args.node_id as u64)).with_context(|| {
            format!(
                "node {} is not a voter, so it runs as a broker-only node: give it \
                 --controller-listen (the address the metadata quorum replicates to it at)",
                args.node_id
            )
        })?,
    };

    if props.bootstrap && !voters.contains_key(&(props.node_id as u64)) {
        bail!("the bootstrap node must be a voter");
    }
    Ok(Some(ClusterStart {
        props,
        voters,
        controller_listen,
    }))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(&args)?;
    let cluster_start = cluster_start(&args)?;
    if cluster_start.is_some() {
        // Topics are created through the controller only (v0).
        cfg.auto_create_topics = false;
        // `__consumer_offsets` is a replicated cluster topic (broker::cluster::coord).
        cfg.cluster_mode = true;
    }
    let heartbeat_interval_ms = cfg.broker_heartbeat_interval_ms;
    let session_timeout_ms = cfg.broker_session_timeout_ms;
    let listen = cfg.listen.clone();
    let broker = Broker::open(cfg)
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("holdfast-worker")
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        let (host, port) = advertised(&args, bound)?;
        broker.set_advertised(host.clone(), port);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        fsync_fault_hook();
        if let Some(m) = &args.metrics_listen {
            let ml = tokio::net::TcpListener::bind(m).await.with_context(|| format!("binding the metrics listener {m}"))?;
            let mbound = ml.local_addr()?;
            tracing::info!(%mbound, "metrics at http://{mbound}/metrics");
            // Printed before the "listening" line, which tools wait for.
            println!("holdfast metrics on http://{mbound}/metrics");
            tokio::spawn(holdfast_broker::serve_metrics(Arc::clone(&broker), ml, stop_rx));
        }
        let cluster = match cluster_start {
            None => None,
            Some(cs) => {
                let ccfg = ClusterConfig {
                    node_id: args.node_id,
                    cluster_id: cs.props.cluster_id.clone(),
                    controller_listen: cs.controller_listen,
                    voters: cs.voters,
                    bootstrap: cs.props.bootstrap,
                    advertised: (host.clone(), port),
                    heartbeat_interval_ms,
                    session_timeout_ms,
                };
                Some(Cluster::start(&broker, ccfg).await.context("starting the cluster node")?)
            }
        };
        let cluster_id = cluster.as_ref().map_or(broker.cluster_id.clone(), |c| c.cluster_id().to_string());
        tracing::info!(%bound, advertised = %format!("{host}:{port}"), %cluster_id, "broker started");
        println!("holdfast listening on {bound}");
        let _ = std::io::stdout().flush();
        let fatal = {
            let cluster = cluster.clone();
            async move {
                match cluster {
                    Some(c) => c.fatal().await,
                    None => std::future::pending().await,
                }
            }
        };
        let (fatal_tx, mut fatal_rx) = tokio::sync::oneshot::channel::<String>();
        let cluster_stop = cluster.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown_signal() => {
                    // Cluster mode: the controller moves this broker's leaderships while the
                    // listener still serves, so clients follow them (bounded).
                    if let Some(c) = &cluster_stop {
                        let started = std::time::Instant::now();
                        let (moved, confirmed) = c.controlled_shutdown().await;
                        tracing::info!(
                            moved_ms = moved.map(|d| d.as_millis() as u64),
                            confirmed,
                            ms = started.elapsed().as_millis() as u64,
                            "controlled shutdown done; stopping the listener"
                        );
                    }
                }
                reason = fatal => { let _ = fatal_tx.send(reason); }
            }
        };
        holdfast_broker::serve(Arc::clone(&broker), listener, stop).await;
        let _ = stop_tx.send(true);
        if let Some(c) = &cluster {
            c.shutdown().await;
        }
        if let Ok(reason) = fatal_rx.try_recv() {
            bail!("stopping: {reason}");
        }
        anyhow::Ok(())
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    broker.shutdown();
    served?;
    tracing::info!("holdfast stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_use_kafka_names() {
        let mut cfg = BrokerConfig::new(PathBuf::from("/tmp/x"), "127.0.0.1:0".into());
        let vars = vec![
            ("HOLDFAST_NUM_PARTITIONS".to_string(), "7".to_string()),
            ("HOLDFAST_BIN".to_string(), "/usr/bin/holdfast".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        apply_env(&mut cfg, vars.into_iter()).expect("valid");
        assert_eq!(cfg.num_partitions, 7);
        let bad = vec![("HOLDFAST_NUM_PARTITIONS".to_string(), "many".to_string())];
        assert!(apply_env(&mut cfg, bad.into_iter()).is_err());
    }
}

/// `holdfast format`: prepares a data directory for cluster mode.
#[derive(clap::Args, Debug)]
pub struct FormatArgs {
    /// The data directory to format (created if missing; refused if already formatted).
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's id (Kafka's `node.id`).
    #[arg(long)]
    node_id: i32,
    /// The cluster id, from `holdfast random-uuid`; the same on every node.
    #[arg(long)]
    cluster_id: String,
    /// This node initializes the metadata quorum on its first start. Give it to exactly one
    /// node of the cluster.
    #[arg(long)]
    bootstrap: bool,
}

pub fn format(args: FormatArgs) -> anyhow::Result<()> {
    let props = MetaProperties {
        cluster_id: args.cluster_id,
        node_id: args.node_id,
        directory_id: cluster::props::random_kafka_uuid(),
        bootstrap: args.bootstrap,
    };
    MetaProperties::format(&args.data_dir, &props)?;
    println!(
        "Formatted {} for cluster {} as node {}{}",
        args.data_dir.display(),
        props.cluster_id,
        props.node_id,
        if props.bootstrap {
            " (bootstraps the metadata quorum)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `holdfast random-uuid`: a Kafka-style cluster id (22 base64url characters).
pub fn random_uuid() -> anyhow::Result<()> {
    println!("{}", cluster::props::random_kafka_uuid());
    Ok(())
}
