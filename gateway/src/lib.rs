//! The bulkhead gateway: stateless, OpenAI-compatible, tenant-authenticated,
//! quota-admitting and KV-affine (DESIGN.md section 3).
//!
//! Layout: [`directory`] (tenants, keys and workers from the control plane's
//! watch stream), [`quota`] (allowances leased from the control plane and
//! the reservations made from them), [`route`] (rendezvous hashing over
//! workers and the worker connections), [`http`] (the API), [`admin`] (the
//! admin API, `/admin/v1/...`, forwarded to the control plane), [`metrics`],
//! [`error`] (statuses and OpenAI error bodies).
//!
//! A gateway keeps nothing that cannot be rebuilt: if it dies, its clients
//! retry on another and its allowance returns to the pool after its lease.

pub mod admin;
pub mod console;
pub mod directory;
pub mod error;
pub mod http;
pub mod i18n;
pub mod metrics;
pub mod quota;
pub mod route;
pub mod throttle;
pub mod turns;

use std::future::Future;
use std::sync::Arc;

use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::{Credential, GatewayId};
use tokio::net::TcpListener;

pub use error::GatewayError;

/// Default body limit of the API (bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Everything `bulkhead gateway` is configured with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub gateway_id: GatewayId,
    /// Control-plane node addresses (any subset; the client follows the leader).
    pub control_plane: Vec<String>,
    /// This gateway's own credential (role `gateway`): the control plane's
    /// member service and the workers accept it, and nothing else.
    pub credential: Credential,
    /// The model of tenants that name none.
    pub default_model: Option<String>,
    pub max_body_bytes: usize,
    /// Where server-side tools' runs get their scratch directories (the
    /// system's temporary directory when not given).
    pub sandbox_dir: Option<std::path::PathBuf>,
    /// The longest a chat request may take, from admission to its last byte:
    /// past it the worker is told to stop, and its slot and the tenant's
    /// concurrency are freed.
    pub request_deadline: std::time::Duration,
}

/// The default [`GatewayConfig::request_deadline`]: generous, for long answers.
pub const DEFAULT_REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) fn now_ms() -> i64 {
    bulkhead_proto::clock::now_ms()
}

/// The sandbox of server-side tools, or why there is none here (tenants
/// that ask for a tool then get a 503 that says so).
fn sandbox(config: &GatewayConfig) -> Result<Arc<bulkhead_sandbox::Sandbox>, String> {
    let dir = config.sandbox_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bulkhead-sandbox-{}", config.gateway_id))
    });
    match bulkhead_sandbox::Sandbox::new(&dir, bulkhead_sandbox::Limits::default()) {
        Ok(s) => {
            tracing::debug!(dir = %dir.display(), "server-side tools run in a sandbox under this directory");
            Ok(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!(error = %e, "server-side tools are off on this gateway");
            Err(e.to_string())
        }
    }
}

/// Serves the API on `listener` (and the web console, with the same API, on
/// `console` when given) until `shutdown` resolves, then drains: it stops
/// accepting, lets running requests and streams finish, and returns its
/// allowances to the control plane.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    console: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let client = Arc::new(
        ControlPlaneClient::new(config.control_plane.clone(), None)
            .with_credential(config.credential.clone()),
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let directory = Arc::new(directory::Directory::default());
    let quotas = Arc::new(quota::Quotas::new(
        config.gateway_id.clone(),
        Arc::clone(&client),
        Arc::clone(&metrics),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follow = tokio::spawn(Arc::clone(&directory).follow(Arc::clone(&client), stop_rx.clone()));
    let maintain = tokio::spawn(Arc::clone(&quotas).maintain(stop_rx.clone()));
    let state = Arc::new(http::AppState {
        gateway_id: config.gateway_id.clone(),
        directory,
        quotas,
        workers: Arc::new(route::Workers::new(config.credential.clone())),
        turns: turns::writer(Arc::clone(&client), http::CONTROL_PLANE_DEADLINE),
        turn_reads: turns::reader(Arc::clone(&client), http::CONTROL_PLANE_DEADLINE),
        client,
        metrics,
        default_model: config.default_model.clone(),
        max_body_bytes: config.max_body_bytes,
        request_deadline: config.request_deadline,
        throttle: throttle::Throttle::default(),
        sandbox: sandbox(&config),
    });
    tracing::info!(
        gateway = %config.gateway_id,
        listen = ?listener.local_addr().ok(),
        control_plane = ?config.control_plane,
        "gateway serving"
    );
    let admin = admin::AdminState {
        gateway_id: config.gateway_id.clone(),
        client: Arc::clone(&state.client),
        max_body_bytes: config.max_body_bytes,
        directory: Arc::clone(&state.directory),
        workers: Arc::clone(&state.workers),
        default_model: config.default_model.clone(),
    };
    let app = http::router(state).merge(admin::router(admin));
    let shutdown = futures::FutureExt::shared(shutdown);
    let console_app = console::router().merge(app.clone());
    let api = serve(listener, app, shutdown.clone());
    let console = async {
        match console {
            Some(listener) => {
                tracing::info!(listen = ?listener.local_addr().ok(), "console serving");
                serve(listener, console_app, shutdown).await
            }
            None => Ok(()),
        }
    };
    let (served, console_served) = tokio::join!(api, console);
    // Streams have finished: give the allowances back, stop following.
    let _ = stop_tx.send(true);
    let _ = maintain.await;
    follow.abort();
    tracing::info!("gateway stopped");
    served.map_err(|e| GatewayError::Unavailable(format!("the API server failed: {e}")))?;
    console_served.map_err(|e| GatewayError::Unavailable(format!("the console server failed: {e}")))
}

/// Serves `app` on `listener` until `shutdown`, with the client's address
/// available to handlers (the admin API's audit actor uses it).
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // TLS when this process has a certificate (`bulkhead_client::tls`);
    // `tap_io` gives handlers the client's address (`ConnectInfo`).
    axum::serve(
        axum::serve::ListenerExt::tap_io(
            bulkhead_client::tls::HttpListener::new(listener)?,
            |_| {},
        ),
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
