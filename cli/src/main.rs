//! `bulkhead`: one binary, a subcommand per role. Each subcommand parses its
//! flags, sets up tracing and calls the role crate's `run`.

mod env;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Multi-tenant LLM serving on your own machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker: llama.cpp generation with per-tenant KV slots.
    Worker(worker::WorkerArgs),
    /// Measure a role against a baseline run in the same command.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Worker decode throughput and slot-restore time to first token.
    Worker(worker::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,llama_cpp_2=warn,llama-cpp-2=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Worker(args) => runtime.block_on(worker::run(args)),
        Command::Bench(BenchCommand::Worker(args)) => runtime.block_on(worker::bench(args)),
    }
}
