//! `bulkhead up`: the whole system in one process on one machine: a one-node
//! control plane, a worker with the demo model, and a gateway, with usage
//! going from the worker to the control plane over an in-process channel
//! (or through NATS with `--nats`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_control_plane::ControlPlaneConfig;
use bulkhead_gateway::GatewayConfig;
use bulkhead_proto::{ClusterSecret, GatewayId, WorkerId};
use bulkhead_worker::{ControlPlaneRegistration, ModelSpec, UsageSink, WorkerConfig};
use clap::Args;

use crate::env;
use crate::worker::EngineArgs;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where everything is kept: the control plane's database, the usage spool, the admin token
    /// and the cluster secret. Restarted on the same directory, nothing is lost.
    #[arg(long, env = env::DATA_DIR, default_value = "bulkhead-data")]
    data_dir: PathBuf,
    /// Address of the OpenAI-compatible API.
    #[arg(long, default_value = "127.0.0.1:18789")]
    api: SocketAddr,
    /// Address of the control plane's gRPC API (what the admin commands reach by default).
    #[arg(long, default_value = "127.0.0.1:7100")]
    control_plane: SocketAddr,
    /// Address of the worker's gRPC API.
    #[arg(long, default_value = "127.0.0.1:7200")]
    worker: SocketAddr,
    /// A model to serve, NAME=PATH to a GGUF file; repeat for more. The first is the default
    /// model of tenants that name none. Default: the demo model (scripts/setup.sh fetches it).
    #[arg(long = "model")]
    models: Vec<ModelSpec>,
    /// Send usage events through this NATS server instead of the in-process channel.
    #[arg(long, env = env::NATS_URL)]
    nats: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Reads `path`, or writes `make()` there (readable by the owner only).
fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_owned());
    }
    let text = make();
    write_private(path, &text)?;
    Ok(text)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_text = read_or_create(&dir.join("cluster.secret"), || {
        ClusterSecret::generate().expose().to_owned()
    })?;
    let secret = ClusterSecret::new(&secret_text).map_err(anyhow::Error::msg)?;
    let models = if args.models.is_empty() {
        let path = bulkhead_worker::demo_model_path();
        if !path.exists() {
            anyhow::bail!(
                "the demo model is not at {}; run scripts/setup.sh, or pass --model NAME=PATH",
                path.display()
            );
        }
        vec![
            format!("smollm2={}", path.display())
                .parse::<ModelSpec>()
                .map_err(anyhow::Error::msg)?,
        ]
    } else {
        args.models
    };
    let default_model = models.first().map(|m| m.name.clone());

    let cp_listener = tokio::net::TcpListener::bind(args.control_plane)
        .await
        .with_context(|| format!("binding the control plane to {}", args.control_plane))?;
    let worker_listener = tokio::net::TcpListener::bind(args.worker)
        .await
        .with_context(|| format!("binding the worker to {}", args.worker))?;
    let api_listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("binding the API to {}", args.api))?;
    let cp_addr = cp_listener.local_addr()?.to_string();
    let worker_addr = worker_listener.local_addr()?.to_string();
    let api_addr = api_listener.local_addr()?;

    let token_path = dir.join("admin.token");
    let (usage, local_usage) = match &args.nats {
        Some(url) => (UsageSink::Nats(url.clone()), None),
        None => {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            (UsageSink::Local(tx), Some(rx))
        }
    };
    let token_file = token_path.clone();
    let cp_config = ControlPlaneConfig {
        node_id: 1,
        advertise: cp_addr.clone(),
        data_dir: dir.join("control-plane"),
        init: Some(BTreeMap::from([(1, cp_addr.clone())])),
        nats: args.nats.clone(),
        snapshot_logs: 10_000,
        cluster_secret: secret.clone(),
        local_usage,
        on_admin_token: Some(Box::new(move |token| {
            if let Err(e) = write_private(&token_file, &token) {
                eprintln!("warning: the admin token could not be saved: {e:#}");
            }
        })),
    };
    let worker_config = WorkerConfig {
        worker_id: WorkerId::new("worker-1")?,
        models,
        adapters: Vec::new(),
        engine: args.engine.config(),
        gpu_layers: 0,
        usage,
        spool_dir: dir.join("usage-spool"),
        max_body_bytes: bulkhead_gateway::DEFAULT_MAX_BODY_BYTES,
        cluster_secret: Some(secret.clone()),
        control_plane: Some(ControlPlaneRegistration::new(
            vec![cp_addr.clone()],
            worker_addr.clone(),
        )),
    };
    let gateway_config = GatewayConfig {
        gateway_id: GatewayId::new("gateway-1")?,
        control_plane: vec![cp_addr.clone()],
        cluster_secret: secret,
        default_model,
        max_body_bytes: bulkhead_gateway::DEFAULT_MAX_BODY_BYTES,
    };

    // Stopped in order: the gateway drains and returns its allowances, the
    // worker finishes and hands over its usage, then the control plane.
    let (stop_gateway, gateway_stop) = tokio::sync::oneshot::channel::<()>();
    let (stop_worker, worker_stop) = tokio::sync::oneshot::channel::<()>();
    let (stop_cp, cp_stop) = tokio::sync::oneshot::channel::<()>();
    let mut control_plane =
        tokio::spawn(bulkhead_control_plane::run(cp_config, cp_listener, async {
            let _ = cp_stop.await;
        }));
    let mut worker = tokio::spawn(bulkhead_worker::run(
        worker_config,
        worker_listener,
        None,
        async {
            let _ = worker_stop.await;
        },
    ));
    let mut gateway = tokio::spawn(bulkhead_gateway::run(gateway_config, api_listener, async {
        let _ = gateway_stop.await;
    }));

    // The admin token exists once the control plane has initialized.
    let mut waited = 0;
    let token = loop {
        if let Ok(token) = std::fs::read_to_string(&token_path)
            && !token.trim().is_empty()
        {
            break token.trim().to_owned();
        }
        if control_plane.is_finished() || waited > 300 {
            break String::new();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    };
    println!("bulkhead is up");
    println!("API: http://{api_addr}/v1");
    println!("control plane: {cp_addr}");
    println!(
        "metrics: http://{api_addr}/metrics http://{cp_addr}/metrics http://{worker_addr}/metrics"
    );
    println!("admin token: {token}");
    println!(
        "  (saved in {}; the admin commands take it as --admin-token or BULKHEAD_ADMIN_TOKEN)",
        token_path.display()
    );
    let _ = std::io::stdout().flush();

    let failed = tokio::select! {
        () = crate::shutdown_signal() => None,
        r = &mut control_plane => Some(("control plane", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut worker => Some(("worker", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut gateway => Some(("gateway", r.map(|r| r.map_err(anyhow::Error::from)))),
    };
    let _ = stop_gateway.send(());
    if failed.as_ref().is_none_or(|(role, _)| *role != "gateway") {
        let _ = (&mut gateway).await;
    }
    let _ = stop_worker.send(());
    if failed.as_ref().is_none_or(|(role, _)| *role != "worker") {
        let _ = (&mut worker).await;
    }
    let _ = stop_cp.send(());
    if failed
        .as_ref()
        .is_none_or(|(role, _)| *role != "control plane")
    {
        let _ = (&mut control_plane).await;
    }
    match failed {
        None => {
            eprintln!("bulkhead stopped");
            Ok(())
        }
        Some((role, Ok(Ok(())))) => anyhow::bail!("the {role} stopped unexpectedly"),
        Some((role, Ok(Err(e)))) => Err(e.context(format!("the {role} failed"))),
        Some((role, Err(e))) => anyhow::bail!("the {role} panicked: {e}"),
    }
}
