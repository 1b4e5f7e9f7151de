//! `bulkhead`: one binary, a subcommand per role. Each subcommand parses its
//! flags, sets up tracing and calls the role crate's `run`.

mod admin;
mod apply;
mod audit;
mod bench_cp;
mod bench_gw;
mod bench_sandbox;
mod bench_soak;
mod bench_up;
mod burst;
mod connect;
mod control_plane;
mod credential;
mod env;
mod gateway;
mod loopback;
mod scripted_engine;
mod share;
mod table;
mod up;
mod usage;
mod webhook;
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
    /// Run everything on this machine in one process: control plane, worker (demo model), gateway.
    Up(up::UpArgs),
    /// Run a gateway: the OpenAI-compatible API, tenant auth, quotas, routing.
    Gateway(gateway::GatewayArgs),
    /// Run a worker: llama.cpp generation with per-tenant KV slots.
    Worker(worker::WorkerArgs),
    /// Run a control-plane node (Raft + redb): tenants, keys, the quota ledger.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Show or change the control plane's membership.
    Cluster {
        #[command(subcommand)]
        command: admin::ClusterCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Create, list, show, update and delete tenants, or apply tenant config files.
    Tenant {
        #[command(subcommand)]
        command: admin::TenantCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Create, revoke and list a tenant's API keys.
    Key {
        #[command(subcommand)]
        command: admin::KeyCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// A tenant's token usage per day, and per user.
    Usage {
        #[command(flatten)]
        args: usage::UsageArgs,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Issue, revoke and list the gateways' and workers' own credentials.
    Credential {
        #[command(subcommand)]
        command: credential::CredentialCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Rotate the admin token.
    AdminToken {
        #[command(subcommand)]
        command: admin::AdminTokenCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// The plans and what they give a tenant.
    Plan {
        #[command(subcommand)]
        command: admin::PlanCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Ask for, approve, deny and list burst quota.
    Burst {
        #[command(subcommand)]
        command: burst::BurstCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Webhook endpoints and their deliveries.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Publish, delete and list a tenant's shared snippets.
    Snippet {
        #[command(subcommand)]
        command: share::SnippetCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Grant, revoke and list access to another tenant's snippets.
    Share {
        #[command(subcommand)]
        command: share::ShareCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// The per-tenant, hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
        #[command(flatten)]
        connect: connect::Connect,
    },
    /// Measure a role against a baseline run in the same command.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Worker decode throughput and slot-restore time to first token.
    Worker(worker::BenchArgs),
    /// The baseline of `bench worker` and `bench up`: a plain llama.cpp decode loop at
    /// llama.cpp's defaults, meant to run in a process of its own; prints JSON.
    #[command(hide = true)]
    RawLoop(worker::RawLoopArgs),
    /// Control-plane usage events/s, grants/s and failover time (3 nodes + NATS on loopback).
    ControlPlane(bench_cp::BenchControlPlaneArgs),
    /// Millions of usage events and session turns into 3 nodes + NATS on loopback: each
    /// node's memory and file sizes before and after retention, snapshot and catch-up times.
    Soak(bench_soak::BenchSoakArgs),
    /// Latency the gateway path adds and the highest rate it sustains, against calling a
    /// scripted engine (not llama.cpp) directly.
    Gateway(bench_gw::BenchGatewayArgs),
    /// Tokens/s end to end through `bulkhead up` (its own process, a real model, sessions)
    /// against a plain llama.cpp decode loop.
    Up(bench_up::BenchUpArgs),
    /// Start-up time of a sandboxed tool run (`pass` under bubblewrap) against the same
    /// Python started plainly.
    Sandbox(bench_sandbox::BenchSandboxArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
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
        Command::Up(args) => runtime.block_on(up::run(args)),
        Command::Gateway(args) => runtime.block_on(gateway::run(args)),
        Command::Worker(args) => runtime.block_on(worker::run(args)),
        Command::ControlPlane(args) => runtime.block_on(control_plane::run(args)),
        Command::Cluster { command, connect } => runtime.block_on(admin::cluster(connect, command)),
        Command::Tenant { command, connect } => runtime.block_on(admin::tenant(connect, command)),
        Command::Key { command, connect } => runtime.block_on(admin::key(connect, command)),
        Command::Usage { args, connect } => runtime.block_on(usage::usage(connect, args)),
        Command::Plan { command, connect } => runtime.block_on(admin::plan(connect, command)),
        Command::Credential { command, connect } => {
            runtime.block_on(credential::credential(connect, command))
        }
        Command::AdminToken { command, connect } => {
            runtime.block_on(admin::admin_token(connect, command))
        }
        Command::Burst { command, connect } => runtime.block_on(burst::burst(connect, command)),
        Command::Webhook { command, connect } => {
            runtime.block_on(webhook::webhook(connect, command))
        }
        Command::Snippet { command, connect } => runtime.block_on(share::snippet(connect, command)),
        Command::Share { command, connect } => runtime.block_on(share::share(connect, command)),
        Command::Audit { command, connect } => runtime.block_on(audit::audit(connect, command)),
        Command::Bench(BenchCommand::Worker(args)) => runtime.block_on(worker::bench(args)),
        Command::Bench(BenchCommand::RawLoop(args)) => worker::raw_loop(&args),
        Command::Bench(BenchCommand::ControlPlane(args)) => runtime.block_on(bench_cp::run(args)),
        Command::Bench(BenchCommand::Soak(args)) => runtime.block_on(bench_soak::run(args)),
        Command::Bench(BenchCommand::Gateway(args)) => runtime.block_on(bench_gw::run(args)),
        Command::Bench(BenchCommand::Up(args)) => runtime.block_on(bench_up::run(args)),
        Command::Bench(BenchCommand::Sandbox(args)) => runtime.block_on(bench_sandbox::run(args)),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Binds `addr` for `what` (such as "the API"); a failure names both.
async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))
}

/// [`bind`] when an address is given.
async fn bind_if(
    what: &str,
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match addr {
        Some(addr) => bind(what, addr).await.map(Some),
        None => Ok(None),
    }
}
