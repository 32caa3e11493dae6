//! The `holdfast` binary. Each subcommand lives in its own module.

use clap::{Parser, Subcommand};

mod bench_log;
mod cluster;
mod data;
mod doctor;
mod dump_log;
mod group;
mod ops;
mod serve;
mod topic;

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Holdfast: a Kafka-compatible streaming log that never loses an acknowledged write"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker: alone, or as a node of a cluster (`--controller-quorum-voters`).
    Serve(serve::ServeArgs),
    /// Format a data directory for cluster mode (writes meta.properties).
    Format(serve::FormatArgs),
    /// Print a new random cluster id (Kafka's base64url UUID).
    RandomUuid,
    /// Benchmark durable appends against the raw disk's fsync-bound figures.
    BenchLog(bench_log::BenchLogArgs),
    /// Topics: create, list, describe, alter-config, add-partitions, delete.
    Topic(topic::TopicArgs),
    /// Consumer groups: list, describe, lag, reset-offsets, delete.
    Group(group::GroupArgs),
    /// The cluster: describe, health.
    Cluster(cluster::ClusterArgs),
    /// Produce records (idempotent, acks=all) from stdin lines or --value.
    Produce(data::ProduceArgs),
    /// Consume records (kcat-like), stopping at the end unless --follow.
    Consume(data::ConsumeArgs),
    /// Read-only durability audit; exits 0 (clean), 1 (warnings) or 2 (critical).
    Doctor(doctor::DoctorArgs),
    /// Print the batches and records of segment files (as Kafka's kafka-dump-log.sh).
    DumpLog(dump_log::DumpLogArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Admin commands log warnings only, unless RUST_LOG says otherwise.
    let default_filter = match cli.command {
        Command::Serve(_) | Command::BenchLog(_) | Command::Format(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let code = match cli.command {
        Command::Serve(args) => return serve::run(args),
        Command::BenchLog(args) => return bench_log::run(args),
        Command::Format(args) => return serve::format(args),
        Command::RandomUuid => return serve::random_uuid(),
        Command::Topic(args) => topic::run(args),
        Command::Group(args) => group::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Produce(args) => data::produce(args),
        Command::Consume(args) => data::consume(args),
        Command::Doctor(args) => doctor::run(args),
        Command::DumpLog(args) => dump_log::run(args),
    };
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2)
        }
    }
}
