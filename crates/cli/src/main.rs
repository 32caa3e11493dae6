//! The `holdfast` binary. Each subcommand lives in its own module.

use clap::{Parser, Subcommand};

mod bench_log;
mod serve;

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
    /// Run a single-node broker.
    Serve(serve::ServeArgs),
    /// Benchmark durable appends against the raw disk's fsync-bound figures.
    BenchLog(bench_log::BenchLogArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args),
        Command::BenchLog(args) => bench_log::run(args),
    }
}
