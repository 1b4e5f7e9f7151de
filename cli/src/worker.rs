//! `bulkhead worker` and `bulkhead bench worker`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_proto::WorkerId;
use bulkhead_worker::bench::{BenchConfig, RawLoopReport, raw_loop_report, run_bench};
use bulkhead_worker::{
    AdapterSpec, ControlPlaneRegistration, EngineConfig, ModelSpec, UsageSink, WorkerConfig,
};
use clap::Args;

use crate::env;

/// Engine sizing, shared by the worker and its benchmark.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Device KV slots (concurrent sequences) per model variant.
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Most tokens (prompt plus completion) of one request; capped by the model's training context.
    #[arg(long, default_value_t = 4096)]
    context: u32,
    /// Most tokens decoded in one step.
    #[arg(long, default_value_t = 512)]
    batch: u32,
    /// Most prompt tokens prefilled in one step (long prompts are chunked).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: u32,
    /// CPU threads for llama.cpp (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    /// Host memory for sessions evicted from the device cache, in MiB.
    #[arg(long, default_value_t = 1024)]
    host_cache_mib: u64,
    /// How many nice levels below the rest of the process llama.cpp's threads run, so the
    /// threads that stream tokens and serve requests never wait for a spinning decode
    /// thread (0 keeps them equal).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    decode_nice: i32,
    /// Most llama.cpp contexts (model variants: model, adapter, adapter scale) held at once, each
    /// with its own KV slots; past it the least recently used idle one is dropped.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    max_contexts: u32,
    /// Model layers to run on the GPU, on a CUDA build (default: all of them; a CPU build runs
    /// everything on the CPU whatever this says).
    #[arg(long)]
    gpu_layers: Option<u32>,
}

impl EngineArgs {
    pub(crate) fn gpu_layers(&self) -> u32 {
        self.gpu_layers.unwrap_or(u32::MAX)
    }

    pub(crate) fn config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            slots: self.slots,
            context_window: self.context,
            batch: self.batch,
            prefill_chunk: self.prefill_chunk,
            threads: self.threads.unwrap_or(defaults.threads),
            host_cache_bytes: self.host_cache_mib << 20,
            decode_nice: self.decode_nice,
            max_contexts: self.max_contexts,
        }
    }
}

/// Models loaded while serving (`worker` and `up`).
#[derive(Args, Debug, Clone)]
pub struct LiveModelArgs {
    /// A directory of GGUF files to load on demand, each named by its file stem: when a tenant
    /// uses a model no worker serves, the control plane asks a worker that has the file and room
    /// to load it. Repeat for more.
    #[arg(long = "model-dir", env = env::MODEL_DIRS, value_delimiter = ',')]
    pub model_dirs: Vec<PathBuf>,
    /// The most MiB of model weights held at once; models no tenant uses are unloaded to make room
    /// (default: 9/10 of the GPU memory, or 3/4 of the RAM on a CPU build).
    #[arg(long = "model-memory-mib")]
    pub model_memory_mib: Option<u64>,
}

impl LiveModelArgs {
    pub fn memory_budget(&self) -> Option<u64> {
        self.model_memory_mib.map(|mib| mib.saturating_mul(1 << 20))
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub tls: crate::connect::Tls,
    /// gRPC listen address (gateways call it).
    #[arg(long, default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// A model to serve from the start and keep, NAME=PATH to a GGUF file; repeat for more.
    /// The first is the default.
    #[arg(long = "model", required_unless_present = "model_dirs")]
    models: Vec<ModelSpec>,
    #[command(flatten)]
    live: LiveModelArgs,
    /// Chat template override for a model, NAME=TEMPLATE (a llama.cpp template name such as chatml, or template text).
    #[arg(long = "chat-template")]
    chat_templates: Vec<String>,
    /// A LoRA adapter (GGUF) for a served model, MODEL:NAME=PATH; repeat for more.
    #[arg(long = "lora")]
    adapters: Vec<AdapterSpec>,
    /// Also serve the OpenAI-compatible HTTP API on this address. It trusts the caller's
    /// X-Tenant-ID, so it must be a loopback address unless --http-token is given.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The token every call of the --http API must carry (`Authorization: Bearer TOKEN`).
    #[arg(long, env = env::WORKER_HTTP_TOKEN, hide_env_values = true)]
    http_token: Option<String>,
    /// NATS server for usage events (JetStream stream BULKHEAD_USAGE).
    #[arg(long, env = env::NATS_URL)]
    nats: Option<String>,
    /// Control-plane node addresses, comma-separated: register there so gateways route here.
    #[arg(long = "control-plane", env = env::CONTROL_PLANE, value_delimiter = ',')]
    control_plane: Vec<String>,
    /// The gRPC address gateways dial to reach this worker (default: the --listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// File holding this worker's credential (`bulkhead credential create --role worker`;
    /// or set BULKHEAD_CREDENTIAL). The gRPC port accepts the gateways the control plane lists.
    #[arg(long)]
    credential_file: Option<PathBuf>,
    /// The usage spool's size cap: past it the worker takes no new requests (503
    /// `usage_spool_full`) until NATS has taken the backlog; nothing is lost.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    spool_max_mib: u64,
    /// Directory for the worker's local state (the usage spool).
    #[arg(long, env = env::DATA_DIR, default_value = "bulkhead-data/worker")]
    data_dir: PathBuf,
    /// This worker's id (default: worker-<gRPC port>).
    #[arg(long, env = env::WORKER_ID)]
    worker_id: Option<String>,
    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The address gateways dial: `--advertise`, else the bound gRPC address,
/// which must then be a concrete one.
fn advertise_addr(advertise: Option<String>, bound: SocketAddr) -> anyhow::Result<String> {
    let addr = advertise.unwrap_or_else(|| bound.to_string());
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
    {
        anyhow::bail!(
            "gateways cannot dial {addr}: pass --advertise HOST:PORT with an address they reach this worker at"
        );
    }
    Ok(addr)
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    args.tls.install()?;
    let credential = env::credential(args.credential_file.as_deref())?;
    let control_plane: Vec<String> = args
        .control_plane
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if !control_plane.is_empty() && credential.is_none() {
        anyhow::bail!(
            "registering with the control plane needs this worker's credential; {}",
            env::CREDENTIAL_HELP
        );
    }
    let mut models = args.models;
    for entry in &args.chat_templates {
        let (name, template) = entry.split_once('=').with_context(|| {
            format!("--chat-template must look like NAME=TEMPLATE, got {entry:?}")
        })?;
        let model = models
            .iter_mut()
            .find(|m| m.name == name)
            .with_context(|| {
                format!("--chat-template names model `{name}`, which no --model serves")
            })?;
        model.chat_template = Some(template.to_owned());
    }
    let grpc = crate::bind("the worker's gRPC API", args.listen).await?;
    let grpc_addr = grpc.local_addr()?;
    let registration = if control_plane.is_empty() {
        None
    } else {
        Some(ControlPlaneRegistration::new(
            control_plane,
            advertise_addr(args.advertise, grpc_addr)?,
        ))
    };
    let worker_id = WorkerId::new(
        args.worker_id
            .unwrap_or_else(|| format!("worker-{}", grpc_addr.port())),
    )
    .context("--worker-id")?;
    if let Some(addr) = args.http
        && !addr.ip().is_loopback()
        && args.http_token.is_none()
    {
        anyhow::bail!(
            "--http {addr} is not a loopback address: the worker's HTTP API trusts the caller's X-Tenant-ID, so give it a token with --http-token (or {}), or listen on 127.0.0.1",
            env::WORKER_HTTP_TOKEN
        );
    }
    let http = crate::bind_if("the worker's HTTP API", args.http).await?;
    eprintln!("bulkhead worker: gRPC on {grpc_addr}");
    if let Some(http) = &http {
        eprintln!(
            "bulkhead worker: OpenAI-compatible API on http://{}",
            http.local_addr()?
        );
    }
    let config = WorkerConfig {
        worker_id,
        models,
        adapters: args.adapters,
        memory_budget: args.live.memory_budget(),
        model_dirs: args.live.model_dirs,
        engine: args.engine.config(),
        gpu_layers: args.engine.gpu_layers(),
        usage: args.nats.map_or(UsageSink::None, UsageSink::Nats),
        spool_dir: args.data_dir.join("usage-spool"),
        spool_max_bytes: args.spool_max_mib << 20,
        max_body_bytes: args.max_body_bytes,
        http_token: args.http_token,
        credential,
        gateway_credentials: Vec::new(),
        control_plane: registration,
    };
    bulkhead_worker::run(config, grpc, http, crate::shutdown_signal()).await?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF model to measure.
    #[arg(long)]
    model: PathBuf,
    /// Concurrent sessions to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    sessions: Vec<u32>,
    /// Tokens generated per session.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Approximate history length of the returning session, in tokens.
    #[arg(long, default_value_t = 1500)]
    history_tokens: u32,
    /// Repeats per measurement (the best throughput, the median time is kept).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let repeats = args.repeats.max(1);
    let baseline = baseline(&args.model, &args.sessions, args.max_tokens, repeats).await?;
    let config = BenchConfig {
        model: args.model,
        engine: args.engine.config(),
        gpu_layers: args.engine.gpu_layers(),
        sessions: args.sessions,
        max_tokens: args.max_tokens,
        history_tokens: args.history_tokens,
        repeats,
    };
    let report = run_bench(config, baseline).await?;
    print!("{report}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct RawLoopArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_delimiter = ',')]
    sessions: Vec<u32>,
    #[arg(long)]
    max_tokens: u32,
    #[arg(long)]
    repeats: u32,
}

/// `bulkhead bench raw-loop`: the baseline, printed as one line of JSON.
pub fn raw_loop(args: &RawLoopArgs) -> anyhow::Result<()> {
    let report = raw_loop_report(&args.model, &args.sessions, args.max_tokens, args.repeats)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs the raw llama.cpp loop in a process of its own, with no OpenMP
/// variables (whatever this process was given), so it runs at llama.cpp's
/// defaults and nothing of ours applies to it. It runs alone: nothing else
/// of the benchmark has started yet.
pub(crate) async fn baseline(
    model: &std::path::Path,
    sessions: &[u32],
    max_tokens: u32,
    repeats: u32,
) -> anyhow::Result<RawLoopReport> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let sessions: Vec<String> = sessions.iter().map(u32::to_string).collect();
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["bench", "raw-loop", "--model"])
        .arg(model)
        .args(["--sessions", &sessions.join(",")])
        .args(["--max-tokens", &max_tokens.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("OMP_") || name.starts_with("GOMP_") {
            command.env_remove(&key);
        }
    }
    let output = command.output().await.context("running the raw loop")?;
    if !output.status.success() {
        anyhow::bail!("the raw loop failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the raw loop's report {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_not_advertised() {
        let any: SocketAddr = "0.0.0.0:7200".parse().unwrap();
        assert!(advertise_addr(None, any).is_err());
        assert!(advertise_addr(Some("0.0.0.0:1".into()), any).is_err());
        assert!(advertise_addr(Some("[::]:1".into()), any).is_err());
        assert_eq!(
            advertise_addr(Some("worker-1:7200".into()), any).unwrap(),
            "worker-1:7200"
        );
        let local: SocketAddr = "127.0.0.1:7200".parse().unwrap();
        assert_eq!(advertise_addr(None, local).unwrap(), "127.0.0.1:7200");
    }
}
