//! The bulkhead control plane: the Raft-replicated store (openraft + redb) of
//! tenants, API keys and the global quota ledger (DESIGN.md sections 1, 4, 5).
//!
//! Layout: `store` (redb log and state machine), `raft` (type config and the
//! gRPC transport), `state` (commands and how they change the tables),
//! `ledger` (quota arithmetic), `plans` (plan defaults), `service` (the
//! `ControlPlane` gRPC API), `consumer` (the leader's JetStream usage
//! consumer), `client` (a leader-following client for the CLI and gateways),
//! `metrics` (Prometheus metrics, served with `/health` over HTTP/1.1 on the
//! gRPC port).
//! This crate never reads a tenant's data on behalf of another tenant, and
//! never changes state except through a committed Raft entry.

pub mod admin;
pub mod audit;
pub mod bursts;
pub mod callers;
pub mod consumer;
pub mod credentials;
pub mod error;
pub mod files;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod placement;
pub mod plans;
pub mod raft;
pub mod raft_types;
pub mod service;
pub mod sessions;
pub mod sharing;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod store;
pub mod usage_export;
pub mod webhooks;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::ClusterSecret;
use bulkhead_proto::control as pb;
use bulkhead_proto::usage::LocalUsageReceiver;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

pub use bulkhead_client::{ControlPlaneClient, client, tenant_config};
pub use error::ControlPlaneError;

use crate::callers::{Caller, Guard};
use crate::raft::{Network, Node, NodeId, Raft, RaftService};
use crate::service::{ControlPlaneService, Handles};
use crate::state::{Command, Reply};

/// Callback that receives the admin token of a newly initialized cluster.
pub type OnAdminToken = Box<dyn FnOnce(String) + Send + Sync>;

/// How long audit records stay in the database before they are archived to
/// files and pruned, unless a node is told otherwise.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 365;

/// How often the leader prunes what is past its keeping, unless a node is
/// told otherwise.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What a control-plane node needs to run.
pub struct ControlPlaneConfig {
    pub node_id: NodeId,
    /// The address other nodes and clients reach this node at.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// Members of a new cluster to bootstrap (`id -> address`); ignored when
    /// the cluster already exists.
    pub init: Option<BTreeMap<NodeId, String>>,
    /// NATS server whose `BULKHEAD_USAGE` stream the leader consumes.
    pub nats: Option<String>,
    /// Take a snapshot after this many log entries (and purge the log behind it).
    pub snapshot_logs: u64,
    /// Audit records older than this many days are archived to files under
    /// `<data dir>/archives/audit/` and pruned (0: kept for ever).
    pub audit_retention_days: u32,
    /// How often the leader prunes what is past its keeping (turns, prompt
    /// counts, per-user rows, event ids, audit records).
    pub prune_every: Duration,
    /// Called once with the admin token when this node initializes the cluster.
    pub on_admin_token: Option<OnAdminToken>,
    /// The secret every member of the cluster sends: the Raft service refuses
    /// calls without it, and the gateways' and workers' calls of the
    /// `ControlPlane` service may carry it instead of the admin token.
    pub cluster_secret: ClusterSecret,
    /// In-process usage events (the all-in-one mode instead of NATS): batches
    /// are applied exactly once, like the JetStream consumer's, and answered
    /// on their `done` channel after the Raft entry committed.
    pub local_usage: Option<LocalUsageReceiver>,
}

impl std::fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise)
            .field("data_dir", &self.data_dir)
            .field("init", &self.init)
            .field(
                "nats",
                &self
                    .nats
                    .as_deref()
                    .map(bulkhead_proto::usage::redacted_nats_url),
            )
            .field("snapshot_logs", &self.snapshot_logs)
            .field("audit_retention_days", &self.audit_retention_days)
            .field("prune_every", &self.prune_every)
            .field("cluster_secret", &self.cluster_secret)
            .field("local_usage", &self.local_usage.is_some())
            .finish()
    }
}

/// Runs a node on `listener` until `shutdown` resolves.
pub async fn run(
    mut config: ControlPlaneConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ControlPlaneError::Internal(format!(
            "creating data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let db_path = config.data_dir.join("control-plane.redb");
    let (log, sm) = storage::open(&db_path)?;
    let raft_config = openraft::Config {
        cluster_name: "bulkhead".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: 0,
        max_payload_entries: raft::MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControlPlaneError::Internal(format!("raft config: {e}")))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network {
            secret: config.cluster_secret.clone(),
            append_splits: metrics.raft_append_splits.clone(),
        },
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| ControlPlaneError::Internal(format!("starting raft: {e}")))?;
    let handles = Handles {
        raft: raft.clone(),
        sm: sm.clone(),
        secret: config.cluster_secret.clone(),
        metrics: Arc::clone(&metrics),
        data_dir: config.data_dir.clone(),
    };

    // gRPC (HTTP/2) and `/metrics`, `/health` (HTTP/1.1 or 2) share the port.
    // One service per caller, each behind its one interceptor (`callers`).
    let api = ControlPlaneService {
        node: handles.clone(),
    };
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(tonic::service::interceptor::InterceptedService::new(
        pb::raft_server::RaftServer::new(RaftService {
            raft: raft.clone(),
            snapshots: snapshot::SnapshotDir::beside(&db_path)?,
        })
        .max_decoding_message_size(raft::MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(raft::MAX_RAFT_MESSAGE_BYTES),
        config.cluster_secret.interceptor(),
    ))
    .add_service(pb::cluster_server::ClusterServer::new(api.clone()))
    .add_service(pb::admin_server::AdminServer::with_interceptor(
        api.clone(),
        Guard::new(sm.clone(), Caller::Admin),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        // An uploaded file travels whole in one message.
        pb::member_server::MemberServer::new(api.clone())
            .max_decoding_message_size(bulkhead_client::MAX_MEMBER_MESSAGE_BYTES)
            .max_encoding_message_size(bulkhead_client::MAX_MEMBER_MESSAGE_BYTES),
        Guard::new(sm.clone(), Caller::Gateway),
    ))
    .add_service(pb::fleet_server::FleetServer::with_interceptor(
        api,
        Guard::new(sm.clone(), Caller::Worker),
    ));
    let app = grpc
        .routes()
        .into_axum_router()
        .merge(metrics::router(metrics::HttpState {
            metrics: Arc::clone(&metrics),
            raft: raft.clone(),
            sm: sm.clone(),
        }))
        .fallback(metrics::fallback)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&metrics),
            metrics::track_grpc,
        ));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = bulkhead_client::tls::grpc_server()
        .map_err(ControlPlaneError::Internal)?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = server_stopped.await;
            },
        );
    let server = tokio::spawn(server);

    if let Some(members) = config.init.take() {
        let on_admin_token = config.on_admin_token.take();
        bootstrap(&config, &raft, members, on_admin_token).await?;
    }
    let local_usage = config
        .local_usage
        .take()
        .map(|rx| tokio::spawn(consumer::run_local(raft.clone(), rx, Arc::clone(&metrics))));
    let leader_loops = tokio::spawn(leader_loops(
        raft.clone(),
        handles,
        config.nats.clone(),
        Keeping {
            audit_retention_days: config.audit_retention_days,
            prune_every: config.prune_every,
        },
    ));
    tracing::info!(node = config.node_id, addr = %config.advertise, "control-plane node running");

    shutdown.await;
    tracing::info!("control-plane node stopping");
    leader_loops.abort();
    if let Some(task) = local_usage {
        task.abort();
    }
    let _ = raft.shutdown().await;
    let _ = stop_server.send(());
    let _ = server.await;
    Ok(())
}

/// Initializes a new cluster (only the lowest id of the list does it;
/// repeating it is harmless) and creates the admin token once.
async fn bootstrap(
    config: &ControlPlaneConfig,
    raft: &Raft,
    members: BTreeMap<NodeId, String>,
    on_admin_token: Option<OnAdminToken>,
) -> Result<(), ControlPlaneError> {
    if !members.contains_key(&config.node_id) {
        return Err(ControlPlaneError::bad_request(format!(
            "--init does not name this node ({})",
            config.node_id
        )));
    }
    let first = members.keys().next().copied();
    if first != Some(config.node_id) {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ControlPlaneError::Internal(e.to_string()))?;
    if !initialized {
        let nodes: BTreeMap<NodeId, Node> = members
            .iter()
            .map(|(id, addr)| (*id, Node::new(addr.clone())))
            .collect();
        if let Err(e) = raft.initialize(nodes).await {
            tracing::info!(error = %e, "cluster already initialized");
        }
    }
    let raft = raft.clone();
    let secret = config.cluster_secret.clone();
    tokio::spawn(async move {
        let token = service::new_secret("bka_");
        let command = Command::InitAdmin {
            token_hash: service::hash_secret(&token),
        };
        let addrs: Vec<String> = members.values().cloned().collect();
        loop {
            match propose_anywhere(&raft, &secret, &addrs, command.clone()).await {
                Ok(Reply::AdminInitialized(true)) => {
                    if let Some(f) = on_admin_token {
                        f(token);
                    }
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "waiting for a leader to store the admin token");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok(())
}

/// Proposes on this node if it leads, else through the leader's `Propose`.
async fn propose_anywhere(
    raft: &Raft,
    secret: &ClusterSecret,
    addrs: &[String],
    command: Command,
) -> Result<Reply, ControlPlaneError> {
    match service::write(raft, command.clone()).await {
        Err(ControlPlaneError::NotLeader { leader }) => {
            let addr = leader
                .or_else(|| addrs.first().cloned())
                .ok_or_else(|| ControlPlaneError::Unavailable("no leader known".into()))?;
            let mut client = raft::raft_client(
                raft::channel(&addr).map_err(|e| ControlPlaneError::Unavailable(e.to_string()))?,
            );
            let mut req = tonic::Request::new(pb::RaftPayload {
                data: raft::encode(&command)?,
            });
            secret.attach(&mut req);
            let reply = client
                .propose(req)
                .await
                .map_err(|s| ControlPlaneError::Unavailable(s.message().to_owned()))?
                .into_inner();
            if !reply.error.is_empty() {
                return Err(ControlPlaneError::Unavailable(reply.error));
            }
            Ok(raft::decode(&reply.data)?)
        }
        other => other,
    }
}

/// Runs the leader's loops (usage consumer, allowance reclaim, webhook
/// delivery) while this node leads, and stops them as soon as it does not.
async fn leader_loops(raft: Raft, handles: Handles, nats: Option<String>, keeping: Keeping) {
    let mut metrics = raft.metrics();
    let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let leading = metrics.borrow_watched().state == ServerState::Leader;
        if leading && running.is_empty() {
            tracing::info!("this node leads: starting the leader's loops");
            if let Some(url) = &nats {
                running.push(tokio::spawn(consumer::run(
                    raft.clone(),
                    url.clone(),
                    Arc::clone(&handles.metrics),
                )));
            }
            running.push(tokio::spawn(reclaim_loop(handles.clone(), keeping)));
            running.push(tokio::spawn(webhooks::run(handles.clone())));
        } else if !leading && !running.is_empty() {
            tracing::info!("this node no longer leads: stopping the leader's loops");
            for task in running.drain(..) {
                task.abort();
            }
        }
        if metrics.changed().await.is_err() {
            break;
        }
    }
    for task in running {
        task.abort();
    }
}

/// How long the leader keeps what it prunes.
#[derive(Debug, Clone, Copy)]
struct Keeping {
    /// 0: audit records are kept for ever.
    audit_retention_days: u32,
    prune_every: Duration,
}

/// Reclaims allowances whose gateways stopped renewing them and drops
/// workers whose lease lapsed; every `prune_every`, prunes what is past its
/// keeping and archives audit records older than `audit_retention_days`
/// (0: never).
async fn reclaim_loop(handles: Handles, keeping: Keeping) {
    let Keeping {
        audit_retention_days,
        prune_every,
    } = keeping;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_prune = std::time::Instant::now();
    loop {
        tick.tick().await;
        let now = service::now_ms();
        if last_prune.elapsed() > prune_every {
            last_prune = std::time::Instant::now();
            if let Err(e) = prune(&handles, now).await {
                tracing::warn!(error = %e, "pruning what is past its keeping failed");
            }
            if audit_retention_days > 0 {
                let cutoff_ms = now - i64::from(audit_retention_days) * 86_400_000;
                if let Err(e) = archive_audit(&handles, cutoff_ms).await {
                    tracing::warn!(error = %e, "archiving old audit records failed");
                }
            }
        }
        let due = handles
            .sm
            .view()
            .and_then(|v| v.reclaimable(now))
            .unwrap_or(0);
        if due > 0
            && let Err(e) = service::write(&handles.raft, Command::Reclaim { now_ms: now }).await
        {
            tracing::warn!(error = %e, "reclaiming expired allowances failed");
        }
    }
}

/// Rows (turns, sessions, event ids) one prune entry drops at most.
const PRUNE_LIMIT: u32 = 50_000;

/// Prunes what is past its keeping at `now_ms`, in entries of at most
/// [`PRUNE_LIMIT`] rows, until one drops fewer: each entry's work and memory
/// stay bounded however much is due.
async fn prune(handles: &Handles, now_ms: i64) -> Result<(), ControlPlaneError> {
    let started = std::time::Instant::now();
    let mut total = 0u64;
    loop {
        let command = Command::PruneTurns {
            now_ms,
            limit: PRUNE_LIMIT,
        };
        match service::write(&handles.raft, command).await? {
            Reply::Reclaimed(n) if n >= PRUNE_LIMIT => total += u64::from(n),
            Reply::Reclaimed(n) => {
                total += u64::from(n);
                break;
            }
            _ => break,
        }
    }
    if total > 0 {
        tracing::info!(rows = total, took = ?started.elapsed(), "pruned what is past its keeping");
    }
    Ok(())
}

/// Writes audit records older than `cutoff_ms` to files under
/// `<data dir>/archives/audit/` (off the async runtime), then prunes each
/// archived run through Raft.
async fn archive_audit(handles: &Handles, cutoff_ms: i64) -> Result<(), ControlPlaneError> {
    let sm = handles.sm.clone();
    let dir = handles.data_dir.join("archives").join("audit");
    let runs = tokio::task::spawn_blocking(move || {
        crate::audit::archive_older_than(&sm.view()?, &dir, cutoff_ms)
    })
    .await
    .map_err(|e| ControlPlaneError::Internal(e.to_string()))??;
    for run in runs {
        tracing::info!(
            chain = %run.chain,
            records = run.records,
            archive = %run.archive,
            "archived old audit records"
        );
        service::write(
            &handles.raft,
            Command::PruneAudit {
                run,
                now_ms: service::now_ms(),
            },
        )
        .await?;
    }
    Ok(())
}
