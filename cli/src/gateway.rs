//! `bulkhead gateway`: one stateless gateway of a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_gateway::GatewayConfig;
use bulkhead_proto::GatewayId;
use clap::Args;

use crate::env;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub tls: crate::connect::Tls,
    /// Address of the OpenAI-compatible API (and /metrics).
    #[arg(long, default_value = "127.0.0.1:18789")]
    listen: SocketAddr,
    /// Also serve the web console (with the same API) on this address, such as 0.0.0.0:8080.
    #[arg(long)]
    console: Option<SocketAddr>,
    /// Control-plane node addresses, comma-separated (any subset; the leader is followed).
    #[arg(long = "control-plane", env = env::CONTROL_PLANE, value_delimiter = ',', required = true)]
    control_plane: Vec<String>,
    /// File holding this gateway's credential (`bulkhead credential create --role gateway`;
    /// or set BULKHEAD_CREDENTIAL).
    #[arg(long)]
    credential_file: Option<PathBuf>,
    /// This gateway's id, unique in the cluster: allowances are leased to it (default: a random one).
    #[arg(long, env = env::GATEWAY_ID)]
    gateway_id: Option<String>,
    /// The model of tenants that name none (default: the one model the workers serve).
    #[arg(long)]
    default_model: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = bulkhead_gateway::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Where server-side tools' sandboxed runs get their scratch directories (default: the
    /// system's temporary directory).
    #[arg(long)]
    sandbox_dir: Option<PathBuf>,
    /// The longest a chat request may take, in seconds: past it the worker is told to stop, the
    /// slot and the tenant's concurrency are freed, and the client gets 504 (or an error event).
    #[arg(long, default_value_t = bulkhead_gateway::DEFAULT_REQUEST_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub request_deadline_s: u64,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    args.tls.install()?;
    let credential = env::require_credential(args.credential_file.as_deref())?;
    let gateway_id = match args.gateway_id {
        Some(id) => GatewayId::new(id).context("--gateway-id")?,
        None => GatewayId::new(format!(
            "gateway-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))?,
    };
    let listener = crate::bind("the API", args.listen).await?;
    let bound = listener.local_addr()?;
    eprintln!("bulkhead gateway {gateway_id}: API on http://{bound}/v1");
    let console = crate::bind_if("the console", args.console).await?;
    if let Some(console) = &console {
        eprintln!("console: http://{}/", console.local_addr()?);
    }
    let config = GatewayConfig {
        gateway_id,
        control_plane: args
            .control_plane
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        credential,
        default_model: args.default_model,
        max_body_bytes: args.max_body_bytes,
        sandbox_dir: args.sandbox_dir,
        request_deadline: std::time::Duration::from_secs(args.request_deadline_s),
    };
    bulkhead_gateway::run(config, listener, console, crate::shutdown_signal()).await?;
    Ok(())
}
