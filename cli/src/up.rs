//! `bulkhead up`: the whole system in one process on one machine: a one-node
//! control plane, a worker with the demo model, and a gateway, with usage
//! going from the worker to the control plane over an in-process channel
//! (or through NATS with `--nats`). With `--tenants DIR` it also serves the
//! model files the tenant configs name and applies the configs once the
//! control plane is up, as `bulkhead tenant apply` would; a config that cannot
//! be read or applied stops it with the file, the field and the reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_control_plane::ControlPlaneConfig;
use bulkhead_control_plane::tenant_config::LoadedConfig;
use bulkhead_gateway::GatewayConfig;
use bulkhead_proto::{ClusterSecret, GatewayId, WorkerId};
use bulkhead_worker::{AdapterSpec, ControlPlaneRegistration, ModelSpec, UsageSink, WorkerConfig};
use clap::Args;

use crate::env;
use crate::worker::{EngineArgs, LiveModelArgs};

/// Where the console listens unless `--console` says otherwise.
const DEFAULT_CONSOLE: &str = "127.0.0.1:8080";

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub tls: crate::connect::Tls,
    /// Where everything is kept: the control plane's database, the usage spool, the admin token
    /// and the cluster secret. Restarted on the same directory, nothing is lost.
    #[arg(long, env = env::DATA_DIR, default_value = "bulkhead-data")]
    data_dir: PathBuf,
    /// Address of the OpenAI-compatible API.
    #[arg(long, default_value = "127.0.0.1:18789")]
    api: SocketAddr,
    /// Address of the web console (chat for tenants' users, dashboard for operators). Default:
    /// 127.0.0.1:8080, or no console (with a warning) when that port is taken.
    #[arg(long)]
    console: Option<SocketAddr>,
    /// Do not serve the web console.
    #[arg(long, conflicts_with = "console")]
    no_console: bool,
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
    /// Tenant configs to apply once the cluster is up: a file, or a directory of <id>/config.yaml
    /// and *.yaml (as `bulkhead tenant apply`). Model files they name by `model_path` are served
    /// too, under their file stem. Default: ./tenants when it is a directory.
    #[arg(long, env = env::TENANTS_DIR)]
    tenants: Option<PathBuf>,
    /// Send usage events through this NATS server instead of the in-process channel.
    #[arg(long, env = env::NATS_URL)]
    nats: Option<String>,
    /// The longest a chat request may take, in seconds (past it: 504, and the worker stops).
    #[arg(long, default_value_t = bulkhead_gateway::DEFAULT_REQUEST_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    request_deadline_s: u64,
    /// Audit records older than this many days are archived to files under
    /// <data dir>/control-plane/archives/audit/ and pruned from the database (0: kept for ever).
    #[arg(long, default_value_t = bulkhead_control_plane::DEFAULT_AUDIT_RETENTION_DAYS)]
    audit_retention_days: u32,
    /// Where models are loaded from on demand (default: the demo model's directory,
    /// ~/.cache/bulkhead/models).
    #[command(flatten)]
    live: LiveModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// The usage spool's size cap: past it the worker takes no new requests (503
    /// `usage_spool_full`) until the backlog is delivered; nothing is lost.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_mib: u64,
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

/// The directory of tenant configs `up` loads when it is not told one, as
/// the article keeps them.
const DEFAULT_TENANTS: &str = "tenants";

pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
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

pub async fn run(mut args: UpArgs) -> anyhow::Result<()> {
    args.tls.install()?;
    if args.tenants.is_none() && Path::new(DEFAULT_TENANTS).is_dir() {
        eprintln!("bulkhead up: loading the tenant configs in ./{DEFAULT_TENANTS}/");
        args.tenants = Some(PathBuf::from(DEFAULT_TENANTS));
    }
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_text = read_or_create(&dir.join("cluster.secret"), || {
        ClusterSecret::generate().expose().to_owned()
    })?;
    let secret = ClusterSecret::new(&secret_text).map_err(anyhow::Error::msg)?;
    // Read before anything starts: a config that cannot be read stops `up` here.
    let mut tenant_configs = args
        .tenants
        .as_deref()
        .map(crate::apply::load)
        .transpose()?;
    let configs = tenant_configs.as_deref_mut().unwrap_or_default();
    let mut models = args.models;
    if models.is_empty() {
        let path = bulkhead_worker::demo_model_path();
        if path.exists() {
            models.push(
                format!("smollm2={}", path.display())
                    .parse::<ModelSpec>()
                    .map_err(anyhow::Error::msg)?,
            );
        } else if configs.iter().all(|c| c.model_path.is_none()) {
            anyhow::bail!(
                "the demo model is not at {}; run scripts/setup.sh, or pass --model NAME=PATH",
                path.display()
            );
        }
    }
    serve_tenant_models(configs, &mut models)?;
    let configs = &*configs;
    let default_model = models.first().map(|m| m.name.clone());
    let adapters = tenant_adapters(configs, default_model.as_deref().unwrap_or_default())?;
    let served = Served {
        models: models.clone(),
        adapters: adapters.clone(),
    };

    let cp_listener = crate::bind("the control plane", args.control_plane).await?;
    let worker_listener = crate::bind("the worker", args.worker).await?;
    let api_listener = crate::bind("the API", args.api).await?;
    let console_listener = match (args.no_console, args.console) {
        (true, _) => None,
        (false, Some(addr)) => Some(crate::bind("the console", addr).await?),
        (false, None) => match tokio::net::TcpListener::bind(DEFAULT_CONSOLE).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!(
                    "warning: no console: {DEFAULT_CONSOLE} is not free ({e}); pass --console ADDR"
                );
                None
            }
        },
    };
    let console_addr = console_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
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
        prune_every: bulkhead_control_plane::DEFAULT_PRUNE_EVERY,
        audit_retention_days: args.audit_retention_days,
        cluster_secret: secret.clone(),
        local_usage,
        on_admin_token: Some(Box::new(move |token| {
            if let Err(e) = write_private(&token_file, &token) {
                eprintln!("warning: the admin token could not be saved: {e:#}");
            }
        })),
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
    // The gateway and the worker each get their own credential (kept in the
    // data dir, so a restart reuses them); the cluster secret stays with the
    // control plane.
    if token.is_empty() {
        let _ = stop_cp.send(());
        let _ = (&mut control_plane).await;
        anyhow::bail!("the control plane did not initialize (no admin token within 30 s)");
    }
    let admin =
        bulkhead_control_plane::ControlPlaneClient::new(vec![cp_addr.clone()], Some(token.clone()));
    let gateway_credential = own_credential(&admin, dir, "gateway", "up-gateway").await?;
    let worker_credential = own_credential(&admin, dir, "worker", "up-worker").await?;
    let mut model_dirs = args.live.model_dirs.clone();
    if model_dirs.is_empty()
        && let Some(demo_dir) = bulkhead_worker::demo_model_path().parent()
    {
        model_dirs.push(demo_dir.to_path_buf());
    }
    let worker_config = WorkerConfig {
        worker_id: WorkerId::new("worker-1")?,
        models,
        adapters,
        model_dirs,
        memory_budget: args.live.memory_budget(),
        engine: args.engine.config(),
        gpu_layers: args.engine.gpu_layers(),
        usage,
        spool_dir: dir.join("usage-spool"),
        spool_max_bytes: args.spool_max_mib << 20,
        max_body_bytes: bulkhead_gateway::DEFAULT_MAX_BODY_BYTES,
        http_token: None,
        credential: Some(worker_credential),
        gateway_credentials: Vec::new(),
        control_plane: Some(ControlPlaneRegistration::new(
            vec![cp_addr.clone()],
            worker_addr.clone(),
        )),
    };
    let gateway_config = GatewayConfig {
        gateway_id: GatewayId::new("gateway-1")?,
        control_plane: vec![cp_addr.clone()],
        credential: gateway_credential,
        default_model,
        max_body_bytes: bulkhead_gateway::DEFAULT_MAX_BODY_BYTES,
        sandbox_dir: Some(dir.join("sandbox")),
        request_deadline: std::time::Duration::from_secs(args.request_deadline_s),
    };

    let mut worker = tokio::spawn(bulkhead_worker::run(
        worker_config,
        worker_listener,
        None,
        async {
            let _ = worker_stop.await;
        },
    ));
    let mut gateway = tokio::spawn(bulkhead_gateway::run(
        gateway_config,
        api_listener,
        console_listener,
        async {
            let _ = gateway_stop.await;
        },
    ));

    // The tenant configs go in before `up` says it is up; if the control plane
    // refuses them, everything stops again.
    let applied = match &tenant_configs {
        Some(configs) => crate::apply::apply(&admin, configs.clone()).await,
        None => Ok(()),
    };
    if applied.is_ok() {
        println!("bulkhead is up");
        println!("API: http://{api_addr}/v1");
        if let Some(addr) = console_addr {
            println!("console: http://{addr}/");
        }
        println!("control plane: {cp_addr}");
        println!(
            "metrics: http://{api_addr}/metrics (with the admin token) http://{cp_addr}/metrics http://{worker_addr}/metrics (with a metrics credential: `bulkhead credential create --role metrics`)"
        );
        println!("admin token: {token}");
        println!(
            "  (saved in {}; the admin commands take it as --admin-token or BULKHEAD_ADMIN_TOKEN)",
            token_path.display()
        );
        let _ = std::io::stdout().flush();
    }

    let reload = async {
        match &args.tenants {
            Some(path) => reload_tenants(&admin, path, &served).await,
            None => std::future::pending().await,
        }
    };
    let failed = match applied {
        Err(e) => Some(("tenant configs", Ok(Err(e)))),
        Ok(()) => tokio::select! {
            () = crate::shutdown_signal() => None,
            () = reload => None,
        r = &mut control_plane => Some(("control plane", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut worker => Some(("worker", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut gateway => Some(("gateway", r.map(|r| r.map_err(anyhow::Error::from)))),
        },
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
        Some(("tenant configs", Ok(Err(e)))) => Err(e.context(format!(
            "applying the tenant configs of {}",
            args.tenants.as_deref().unwrap_or(Path::new("")).display()
        ))),
        Some((role, Ok(Ok(())))) => anyhow::bail!("the {role} stopped unexpectedly"),
        Some((role, Ok(Err(e)))) => Err(e.context(format!("the {role} failed"))),
        Some((role, Err(e))) => anyhow::bail!("the {role} panicked: {e}"),
    }
}

/// `path` made absolute with `.` and `..` resolved by name, so that two
/// configs naming one file by different relative paths agree (links are
/// not followed: a link is served under its own name).
fn same_file_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in std::path::absolute(path)?.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The model and adapter files `up` serves (from its start).
struct Served {
    models: Vec<ModelSpec>,
    adapters: Vec<AdapterSpec>,
}

/// The tenant config files under `path` as they are now: each file's path,
/// size and modification time.
fn config_files(path: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                todo.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else {
            out.push((p, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

/// Applies the tenant configs under `path` again whenever its files change
/// (looked at every 2 s), with the same all-or-nothing validation as at
/// start and one line per tenant changed; a refused change is logged and
/// the running configs stay. Model and adapter files must be among those
/// `up` serves since its start (a new one needs a restart). A removed file
/// deletes no tenant (`bulkhead tenant delete` archives one first).
async fn reload_tenants(
    admin: &bulkhead_control_plane::ControlPlaneClient,
    path: &Path,
    served: &Served,
) {
    let mut seen = config_files(path);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let now = config_files(path);
        if now == seen {
            continue;
        }
        seen = now;
        eprintln!(
            "bulkhead up: the tenant configs in {} changed; applying them",
            path.display()
        );
        if let Err(e) = reload_once(admin, path, served).await {
            eprintln!(
                "bulkhead up: the changed tenant configs in {} were not applied; the running ones stay: {e:#}",
                path.display()
            );
        }
    }
}

async fn reload_once(
    admin: &bulkhead_control_plane::ControlPlaneClient,
    path: &Path,
    served: &Served,
) -> anyhow::Result<()> {
    let mut configs = crate::apply::load(path)?;
    let mut models = served.models.clone();
    serve_tenant_models(&mut configs, &mut models)?;
    if let Some(new) = models.get(served.models.len()) {
        anyhow::bail!(
            "model_path {} is not served yet; restart `bulkhead up` to serve a new model file",
            new.path.display()
        );
    }
    let default_model = models.first().map(|m| m.name.as_str()).unwrap_or_default();
    for a in tenant_adapters(&configs, default_model)? {
        if !served
            .adapters
            .iter()
            .any(|s| s.model == a.model && s.name == a.name)
        {
            anyhow::bail!(
                "adapter_path {} is not served yet; restart `bulkhead up` to serve a new adapter file",
                a.path.display()
            );
        }
    }
    crate::apply::apply(admin, configs).await
}

/// The credential of `up`'s own gateway or worker: the one saved in the
/// data dir, or a fresh one (any earlier one of that name is revoked first).
async fn own_credential(
    admin: &bulkhead_control_plane::ControlPlaneClient,
    dir: &Path,
    role: &str,
    name: &str,
) -> anyhow::Result<bulkhead_proto::Credential> {
    let path = dir.join(format!("{role}.credential"));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credential) = bulkhead_proto::Credential::new(&text)
    {
        return Ok(credential);
    }
    // Gone from the data dir: the one of that name cannot be used any more.
    let _ = admin
        .admin()
        .send(
            bulkhead_proto::control::RevokeCredentialRequest {
                credential: name.to_owned(),
            },
            |mut c, r| async move { c.revoke_credential(r).await },
        )
        .await;
    let credential = admin
        .issue_credential(role, name)
        .await
        .with_context(|| format!("issuing the {role}'s credential"))?;
    write_private(&path, credential.expose())?;
    Ok(credential)
}

/// Adds the model files that tenant configs name by `model_path` to
/// `models`, under their file stem (the name the config gives the tenant).
/// A file already served (by `--model`, the demo model, or another config)
/// is served once: the tenant is pointed at the name it is served under.
fn serve_tenant_models(
    configs: &mut [LoadedConfig],
    models: &mut Vec<ModelSpec>,
) -> anyhow::Result<()> {
    for c in configs {
        let Some(path) = &c.model_path else {
            continue;
        };
        let source = &c.config.source;
        if !path.is_file() {
            anyhow::bail!(
                "{source}: model_path: {} does not exist (or is not a file)",
                path.display()
            );
        }
        let wanted = same_file_path(path)?;
        if let Some(served) = models
            .iter()
            .find(|m| same_file_path(&m.path).is_ok_and(|p| p == wanted))
        {
            if let Some(t) = c.config.tenant.as_mut()
                && t.model != served.name
            {
                eprintln!(
                    "{source}: model_path: {} is served as `{}`; tenant {} uses it",
                    path.display(),
                    served.name,
                    t.id
                );
                t.model = served.name.clone();
            }
            continue;
        }
        let name = c.model();
        if let Some(served) = models.iter().find(|m| m.name == name) {
            anyhow::bail!(
                "{source}: model_path: {} would be served as `{name}`, but `{name}` is already served from {}",
                path.display(),
                served.path.display()
            );
        }
        models.push(ModelSpec {
            name: name.to_owned(),
            path: path.clone(),
            chat_template: None,
        });
    }
    Ok(())
}

/// The LoRA adapter files that tenant configs name by `adapter_path`, for
/// the tenant's model (or the default model).
fn tenant_adapters(
    configs: &[LoadedConfig],
    default_model: &str,
) -> anyhow::Result<Vec<AdapterSpec>> {
    let mut adapters: Vec<AdapterSpec> = Vec::new();
    for c in configs {
        let (Some(path), Some(t)) = (&c.adapter_path, &c.config.tenant) else {
            continue;
        };
        let source = &c.config.source;
        if !path.is_file() {
            anyhow::bail!(
                "{source}: adapter_path: {} does not exist (or is not a file)",
                path.display()
            );
        }
        let model = if t.model.is_empty() {
            default_model
        } else {
            &t.model
        };
        match adapters
            .iter()
            .find(|a| a.model == model && a.name == t.adapter)
        {
            Some(a) if same_file_path(&a.path)? == same_file_path(path)? => {}
            Some(a) => anyhow::bail!(
                "{source}: adapter_path: {} would be served as `{model}:{}`, which another config serves from {}",
                path.display(),
                t.adapter,
                a.path.display()
            ),
            None => adapters.push(AdapterSpec {
                model: model.to_owned(),
                name: t.adapter.clone(),
                path: path.clone(),
            }),
        }
    }
    Ok(adapters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, model_path: &std::path::Path) -> LoadedConfig {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        LoadedConfig {
            config: bulkhead_proto::control::TenantConfig {
                source: format!("tenants/{id}/config.yaml"),
                tenant: Some(bulkhead_proto::control::Tenant {
                    id: id.into(),
                    model: stem.unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            model_path: Some(model_path.to_path_buf()),
            adapter_path: None,
        }
    }

    #[test]
    fn a_model_file_named_by_many_tenants_and_the_default_is_served_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        std::fs::write(&file, b"gguf").expect("write");
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, b"gguf").expect("write");
        let mut models = vec![ModelSpec {
            name: "smollm2".into(),
            path: file.clone(),
            chat_template: None,
        }];
        let mut configs = vec![
            config("sales", &file),
            config("hr", &file),
            config("legal", &other),
            config("ops", &other),
        ];
        serve_tenant_models(&mut configs, &mut models).expect("served");
        let served: Vec<(&str, &std::path::Path)> = models
            .iter()
            .map(|m| (m.name.as_str(), m.path.as_path()))
            .collect();
        assert_eq!(
            served,
            [("smollm2", file.as_path()), ("other", other.as_path())]
        );
        let named: Vec<&str> = configs.iter().map(LoadedConfig::model).collect();
        assert_eq!(named, ["smollm2", "smollm2", "other", "other"]);

        // One file named by another relative path is still one file.
        std::fs::create_dir_all(dir.path().join("sub")).expect("sub");
        let mut again = vec![config("finance", &dir.path().join("sub/../other.gguf"))];
        serve_tenant_models(&mut again, &mut models).expect("served");
        assert_eq!(models.len(), 2, "no second copy of other.gguf");
        assert_eq!(again[0].model(), "other");

        // Two different files under one name are still refused.
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let twin = elsewhere.path().join("other.gguf");
        std::fs::write(&twin, b"gguf").expect("write");
        let err = serve_tenant_models(&mut [config("x", &twin)], &mut models)
            .expect_err("two files named `other`");
        assert!(err.to_string().contains("already served from"), "{err}");
    }
}
