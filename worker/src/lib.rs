//! The bulkhead worker: serves LLM generation for many tenants from one
//! process.
//!
//! Layout:
//! - [`catalog`]: models and LoRA adapters, chat templates, tokenization.
//! - [`engine`]: the engine thread that owns the llama.cpp contexts and runs
//!   continuous batching; [`scheduler`] and [`slots`] hold its decisions
//!   (tenant-fair admission, prefill chunking, per-(tenant, session) KV slots
//!   and their host-memory tier); [`text`] turns tokens into streamed text.
//! - [`grpc`] and [`http`]: the two front ends (gateways use gRPC; operators
//!   may use the OpenAI-compatible HTTP API directly).
//! - [`usage`]: the on-disk spool and publisher of usage events (JetStream,
//!   or the control plane in the same process).
//! - [`registration`]: the worker's entry in the control plane's registry;
//!   [`live`]: models loaded and unloaded while serving, as it places them.
//! - [`bench`]: the `bulkhead bench worker` measurement.
//!
//! The worker never decides quotas or authenticates tenants: the gateway does.
//! It must never let one tenant's KV state serve another tenant.

pub mod bench;
pub mod catalog;
pub mod engine;
pub mod error;
pub mod gateways;
pub mod grpc;
pub mod http;
pub mod live;
pub mod metrics;
pub mod registration;
pub mod request;
pub mod scheduler;
pub mod slots;
pub mod text;
pub mod usage;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bulkhead_proto::worker::worker_server::WorkerServer;
use bulkhead_proto::{Credential, WorkerId};
use tokio::net::TcpListener;

pub use catalog::{AdapterSpec, ModelSpec, demo_model_path};
pub use engine::EngineConfig;
pub use error::WorkerError;
pub use registration::ControlPlaneRegistration;
pub use usage::UsageSink;

/// Everything `bulkhead worker` is configured with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: WorkerId,
    /// Models loaded at start-up and kept (pinned).
    pub models: Vec<ModelSpec>,
    pub adapters: Vec<AdapterSpec>,
    /// Directories of model files loaded on demand, when a tenant uses one
    /// that no worker serves (see [`live`]).
    pub model_dirs: Vec<PathBuf>,
    /// The most bytes of model weights held at once; `None`: see
    /// [`catalog::default_memory_budget`].
    pub memory_budget: Option<u64>,
    pub engine: EngineConfig,
    /// Layers offloaded to a GPU (0 on a CPU-only build).
    pub gpu_layers: u32,
    /// Where usage events go: NATS, the in-process control plane, or nowhere
    /// (logged only).
    pub usage: UsageSink,
    /// Directory of the usage spool.
    pub spool_dir: PathBuf,
    /// The spool's size cap: past it the worker takes no new requests (503
    /// `usage_spool_full`) until the sink has caught up.
    pub spool_max_bytes: u64,
    pub max_body_bytes: usize,
    /// The token every call of the HTTP API must carry; `None` trusts every
    /// caller (only for a loopback listener: the CLI refuses otherwise).
    pub http_token: Option<String>,
    /// This worker's own credential (role `worker`), sent when it registers
    /// with the control plane.
    pub credential: Option<Credential>,
    /// Gateway credentials the gRPC port accepts besides those the control
    /// plane lists (a worker with no control plane: benches). With neither,
    /// the port refuses every call.
    pub gateway_credentials: Vec<Credential>,
    /// Register with the control plane (and renew the lease) once the models
    /// are loaded; needs `credential`.
    pub control_plane: Option<ControlPlaneRegistration>,
}

/// Runs the worker on already-bound listeners until `shutdown` resolves,
/// then drains: in-flight requests finish, spooled usage gets a last chance
/// to reach NATS.
pub async fn run(
    config: WorkerConfig,
    grpc: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let metrics = Arc::new(metrics::Metrics::new());
    let (usage_tx, publisher) = match &config.usage {
        UsageSink::None => {
            tracing::warn!("no --nats given: usage events are logged, not published");
            (None, None)
        }
        sink => {
            let gauge = Arc::new(usage::SpoolGauge::new(config.spool_max_bytes));
            let spool = usage::Spool::open(&config.spool_dir, Arc::clone(&gauge))?;
            let (tx, rx) = usage::queue(gauge);
            (
                Some(tx),
                Some(tokio::spawn(usage::publish_loop(spool, sink.clone(), rx))),
            )
        }
    };
    let credential = match (&config.control_plane, &config.credential) {
        (Some(_), None) => {
            return Err(WorkerError::Engine(
                "registering with the control plane needs this worker's credential (BULKHEAD_CREDENTIAL; `bulkhead credential create --role worker`)"
                    .into(),
            ));
        }
        (_, credential) => credential.clone(),
    };
    let gateways = gateways::Gateways::new(&config.gateway_credentials);
    if config.control_plane.is_none() && config.gateway_credentials.is_empty() {
        tracing::warn!(
            "no control plane and no gateway credentials: the gRPC port refuses every call"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Registered (as loading, with progress) before the models load, so a
    // caller hears that its model is coming instead of that nobody serves it.
    // The accelerators are asked once: the registration is rebuilt four
    // times a second.
    let devices = catalog::devices();
    let settings = catalog::LoadSettings {
        context_window: config.engine.context_window,
        gpu_layers: config.gpu_layers,
        model_dirs: config.model_dirs.clone(),
        memory_budget: config
            .memory_budget
            .unwrap_or_else(|| catalog::default_memory_budget(&devices)),
    };
    let progress = catalog::LoadProgress::new(&config.models);
    let advertise = config
        .control_plane
        .as_ref()
        .map_or_else(String::new, |cp| cp.advertise.clone());
    let info = |catalog: Option<&catalog::Catalog>| {
        registration::worker_info(
            &config.worker_id,
            &advertise,
            config.engine.slots,
            &devices,
            &settings,
            catalog,
            &progress,
        )
    };
    let (info_tx, info_rx) = tokio::sync::watch::channel(info(None));
    let (replies_tx, replies_rx) = tokio::sync::watch::channel(Default::default());
    let registration = config.control_plane.clone().map(|cp| {
        tokio::spawn(registration::register_loop(
            cp,
            credential
                .clone()
                .unwrap_or_else(|| Credential::generate_with("bkw_")),
            gateways.clone(),
            info_rx,
            replies_tx,
            stopped(stop_rx.clone()),
        ))
    });
    // Each change of what the worker holds is registered at once; progress
    // at most four times a second (and in 5% steps, see `worker_info`).
    let publish = |catalog: Option<&catalog::Catalog>| {
        let now = info(catalog);
        info_tx.send_if_modified(|info| {
            let changed = *info != now;
            *info = now;
            changed
        });
    };
    let models = config.models.clone();
    let adapters = config.adapters.clone();
    let loader_progress = progress.clone();
    let loader_settings = settings.clone();
    let mut loading = tokio::task::spawn_blocking(move || {
        catalog::Catalog::load(&models, &adapters, loader_settings, &loader_progress)
    });
    let mut stop_loading = std::pin::pin!(stopped(stop_rx.clone()));
    let loaded = loop {
        tokio::select! {
            done = &mut loading => break done,
            () = &mut stop_loading, if !progress.is_cancelled() => progress.cancel(),
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => publish(None),
        }
    };
    let started = loaded
        .map_err(|e| WorkerError::Engine(format!("model loading panicked: {e}")))
        .and_then(|r| r)
        .map(Arc::new)
        .and_then(|catalog| {
            engine::Engine::start(
                Arc::clone(&catalog),
                config.engine.clone(),
                config.worker_id.clone(),
                usage_tx,
                Arc::clone(&metrics),
            )
            .map(|engine| (catalog, engine))
        });
    let (catalog, engine) = match started {
        Ok((catalog, engine)) => (catalog, Arc::new(engine)),
        Err(e) => {
            // Not "loading" any more: stop saying so (the entry lapses with its lease).
            if let Some(task) = registration {
                task.abort();
            }
            if progress.is_cancelled() {
                tracing::info!("stopped while loading the models");
                return Ok(());
            }
            return Err(e);
        }
    };
    for m in &config.models {
        progress.finish(&m.name);
    }
    let held = catalog.bytes();
    if held > settings.memory_budget {
        tracing::warn!(
            held,
            budget = settings.memory_budget,
            "the start-up models exceed the memory budget: no model will be loaded on demand"
        );
    }
    tracing::info!(
        worker = %config.worker_id,
        grpc = ?grpc.local_addr().ok(),
        http = ?http.as_ref().and_then(|l| l.local_addr().ok()),
        files = catalog.files().len(),
        "worker serving"
    );
    publish(Some(&catalog));
    let live = tokio::spawn(live::follow(
        Arc::clone(&catalog),
        progress.clone(),
        replies_rx,
        stopped(stop_rx.clone()),
    ));
    let publisher_stop = stopped(stop_rx.clone());
    let info_catalog = Arc::clone(&catalog);
    let info_loop = async move {
        let ticks = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                publish(Some(&info_catalog));
            }
        };
        tokio::select! {
            () = ticks => {}
            () = publisher_stop => {}
        }
    };
    let service = grpc::WorkerService {
        engine: Arc::clone(&engine),
        worker_id: config.worker_id.clone(),
    };
    // The gRPC port also answers `GET /health` (open) and `GET /metrics`
    // (with a metrics credential), over HTTP/1.1 or 2, so a worker without
    // `--http` can be scraped.
    let ops = http::ops_router(
        http::HttpState {
            engine: Arc::clone(&engine),
            metrics: Arc::clone(&metrics),
            worker_id: config.worker_id.clone(),
        },
        gateways.clone(),
    );
    let app = tonic::service::Routes::new(WorkerServer::with_interceptor(service, gateways))
        .into_axum_router()
        .merge(ops)
        // The same answer as the control plane's port for unknown paths.
        .fallback(bulkhead_client::fallback);
    let grpc_server = bulkhead_client::tls::grpc_server()
        .map_err(WorkerError::Engine)?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let http_server = async {
        if let Some(listener) = http {
            let state = http::HttpState {
                engine: Arc::clone(&engine),
                metrics: Arc::clone(&metrics),
                worker_id: config.worker_id.clone(),
            };
            axum::serve(
                bulkhead_client::tls::HttpListener::new(listener)
                    .map_err(|e| WorkerError::Engine(format!("http listener: {e}")))?,
                http::router(state, config.max_body_bytes, config.http_token.clone()),
            )
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .await
            .map_err(|e| WorkerError::Engine(format!("http server: {e}")))
        } else {
            Ok(())
        }
    };
    let (grpc_result, http_result, ()) = tokio::join!(grpc_server, http_server, info_loop);
    if let Some(task) = registration {
        let _ = task.await;
    }
    let _ = live.await;
    let engine_for_shutdown = Arc::clone(&engine);
    drop(engine);
    // Finishes in-flight work and drops the engine's usage sender.
    tokio::task::spawn_blocking(move || engine_for_shutdown.shutdown())
        .await
        .map_err(|e| WorkerError::Engine(format!("engine shutdown: {e}")))?;
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    grpc_result.map_err(|e| WorkerError::Engine(format!("grpc server: {e}")))?;
    http_result?;
    tracing::info!("worker stopped");
    Ok(())
}
