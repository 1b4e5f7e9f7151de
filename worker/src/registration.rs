//! The worker's entry in the control plane's registry: while its models load
//! it registers their progress (nothing is routed to it yet); once they are
//! loaded, the worker registers its gRPC address, models, adapters and slots
//! with a lease, and renews it every third of the lease until it stops. The
//! model files it could load and its memory budget go with it, and each
//! reply says which models to load or may be freed (see [`crate::live`]).
//! Gateways route only to registered workers whose lease is live. This module
//! never decides anything about tenants; failures are logged and retried.

use std::future::Future;
use std::time::Duration;

use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_proto::{Credential, WorkerId};

use tokio::sync::watch;

use crate::catalog::{Catalog, LoadProgress, LoadSettings};

/// Default lease of a worker's registration.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// Where and how the worker registers.
#[derive(Debug, Clone)]
pub struct ControlPlaneRegistration {
    /// Control-plane node addresses (`host:port`; any node, the leader is followed).
    pub addrs: Vec<String>,
    /// The gRPC address gateways dial to reach this worker.
    pub advertise: String,
    /// How long a registration lives without renewal.
    pub lease: Duration,
}

impl ControlPlaneRegistration {
    pub fn new(addrs: Vec<String>, advertise: impl Into<String>) -> Self {
        Self {
            addrs,
            advertise: advertise.into(),
            lease: DEFAULT_LEASE,
        }
    }
}

/// What the worker registers: once it serves (`catalog` given), its loaded
/// models with their adapters (as `MODEL:ADAPTER`), windows and sizes; while
/// models load, each one's progress; always its device slots per model
/// variant, its accelerators (as found at start), the files it could load
/// and its memory budget.
pub fn worker_info(
    worker_id: &WorkerId,
    advertise: &str,
    slots: u32,
    devices: &[bulkhead_proto::worker::Device],
    settings: &LoadSettings,
    catalog: Option<&Catalog>,
    progress: &LoadProgress,
) -> pb::WorkerInfo {
    let models = catalog.map(Catalog::models).unwrap_or_default();
    pb::WorkerInfo {
        worker_id: worker_id.to_string(),
        addr: advertise.to_owned(),
        models: models.iter().map(|m| m.name.clone()).collect(),
        adapters: models
            .iter()
            .flat_map(|m| m.adapters.iter().map(move |a| format!("{}:{a}", m.name)))
            .collect(),
        slots,
        expires_at_ms: 0,
        // In steps of 5%: each change is a Raft write and news to every
        // gateway, so a slow load makes at most twenty per model.
        loading: progress
            .snapshot()
            .into_iter()
            .map(|(model, progress)| pb::ModelLoad {
                model,
                progress: (progress * 20.0).floor() / 20.0,
            })
            .collect(),
        context_windows: models
            .iter()
            .map(|m| (m.name.clone(), m.context_window))
            .collect(),
        devices: devices.to_vec(),
        files: crate::catalog::model_files(&settings.model_dirs)
            .into_iter()
            .map(|(name, (_, bytes))| (name, bytes))
            .collect(),
        model_bytes: models.iter().map(|m| (m.name.clone(), m.bytes)).collect(),
        pinned: models
            .iter()
            .filter(|m| m.pinned)
            .map(|m| m.name.clone())
            .collect(),
        memory_budget: settings.memory_budget,
    }
}

/// Registers what `info` holds, again whenever it changes, and renews it
/// every `lease / 3`, until `stop` resolves. Each reply goes to `replies`:
/// it says which models to load and which are unneeded; the gateways it
/// lists are the ones the gRPC port accepts from then on.
pub async fn register_loop(
    registration: ControlPlaneRegistration,
    credential: Credential,
    gateways: crate::gateways::Gateways,
    mut info: watch::Receiver<pb::WorkerInfo>,
    replies: watch::Sender<pb::RegisterWorkerReply>,
    stop: impl Future<Output = ()>,
) {
    let client =
        ControlPlaneClient::new(registration.addrs.clone(), None).with_credential(credential);
    let lease = registration.lease.max(Duration::from_secs(1));
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let every = lease / 3;
    let renew = async {
        // Whether the last registration that succeeded was of loading models:
        // each kind is logged once, and again after a failure.
        let mut logged: Option<bool> = None;
        loop {
            let current = info.borrow_and_update().clone();
            let result = client
                .fleet()
                .send_for(
                    every,
                    pb::RegisterWorkerRequest {
                        worker: Some(current.clone()),
                        lease_ms,
                    },
                    |mut c, req| async move { c.register_worker(req).await },
                )
                .await;
            let loading = current.models.is_empty();
            if let Ok(reply) = &result {
                gateways.set_listed(
                    reply.gateway_credentials.clone(),
                    reply.metrics_credentials.clone(),
                );
                replies.send_replace(reply.clone());
            }
            match result {
                Ok(_) if logged == Some(loading) => {}
                Ok(_) if loading => {
                    logged = Some(true);
                    tracing::info!(worker = %current.worker_id, addr = %current.addr, loading = ?current.loading, "announced to the control plane while the models load");
                }
                Ok(_) => {
                    logged = Some(false);
                    tracing::info!(worker = %current.worker_id, addr = %current.addr, models = ?current.models, "registered with the control plane");
                }
                Err(status) => {
                    logged = None;
                    tracing::warn!(worker = %current.worker_id, code = ?status.code(), error = %status.message(), "registration with the control plane failed; retrying");
                }
            }
            // A change is registered at once; once the sender is gone, only renewals.
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                Ok(()) = info.changed() => {}
                () = gateways.renewal_wanted() => {}
            }
        }
    };
    tokio::select! {
        () = renew => {}
        () = stop => {}
    }
}
