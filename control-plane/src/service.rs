//! The `ControlPlane` gRPC service: admin calls, key checks, allowance grants,
//! usage reports and cluster membership, on any node.
//!
//! Writes go through Raft on the leader; a follower answers `Unavailable` with
//! the leader's address. Reads that decide anything are linearizable: the
//! leader confirms its leadership (ReadIndex) and waits for its state machine
//! to catch up; a follower asks the leader for that log id and waits until it
//! has applied it.
//!
//! Two levels of trust: admin calls (membership, tenants, keys, usage
//! reports) need the admin token; the calls gateways and workers make (key
//! checks, grants, usage, workers, watch, sessions) need the cluster secret
//! or the admin token. `ClusterStatus` is open.

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead_proto::auth::CLUSTER_SECRET_METADATA;
use bulkhead_proto::control as pb;
use bulkhead_proto::{ClusterSecret, TenantId};
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use tonic::{Request, Response, Status};

use crate::error::ControlPlaneError;
use crate::raft::{LogId, Node, NodeId, Raft, channel, decode};
use crate::state::{Command, Reply, TenantRecord, WorkerRecord};
use crate::store::{StateMachine, View};

mod business;
mod convert;
mod quota;
mod sessions;
mod tenants;
mod watch;

pub(crate) use convert::tenant_to_pb;
use convert::*;
use watch::*;

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

pub use bulkhead_client::ACTOR_METADATA;

pub use bulkhead_client::hash_secret;

/// A fresh random secret with a prefix (`bk_` for keys, `bka_` for admin).
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", bulkhead_proto::auth::random_hex(32))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Handles shared by the gRPC service and the leader's loops.
#[derive(Clone)]
pub struct Handles {
    pub raft: Raft,
    pub sm: StateMachine,
    /// Sent with this node's own calls to the leader's Raft service.
    pub secret: ClusterSecret,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Where deleted tenants' archives go (`archives/`).
    pub data_dir: std::path::PathBuf,
}

/// Proposes a command on this node; a follower answers with the leader.
pub(crate) async fn write(raft: &Raft, command: Command) -> Result<Reply> {
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            Reply::Rejected(r) => Err(r.into()),
            reply => Ok(reply),
        },
        Err(e) => Err(raft_error(e)),
    }
}

fn raft_error<E>(e: openraft::errors::RaftError<crate::raft::TypeConfig, E>) -> ControlPlaneError
where
    E: std::fmt::Display
        + std::fmt::Debug
        + openraft::TryAsRef<openraft::errors::ForwardToLeader<crate::raft::TypeConfig>>,
{
    if let Some(fwd) = e.forward_to_leader() {
        return ControlPlaneError::NotLeader {
            leader: fwd.leader_node.as_ref().map(|n| n.addr.clone()),
        };
    }
    match e {
        openraft::errors::RaftError::Fatal(f) => ControlPlaneError::Internal(f.to_string()),
        other => ControlPlaneError::Unavailable(other.to_string()),
    }
}

/// Waits until this node's state machine reflects every write committed
/// before the call (ReadIndex), on the leader or on a follower.
pub(crate) async fn linearize(raft: &Raft, secret: &ClusterSecret) -> Result<()> {
    let e = match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let Some(fwd) = e.forward_to_leader() else {
        return Err(ControlPlaneError::Unavailable(format!(
            "cannot confirm a linearizable read: {e}"
        )));
    };
    let (Some(leader_id), Some(leader)) = (fwd.leader_id, fwd.leader_node.clone()) else {
        return Err(ControlPlaneError::Unavailable(
            "no leader is known yet; retry shortly".into(),
        ));
    };
    let unavailable = |what: String| ControlPlaneError::Unavailable(what);
    let mut client = crate::raft::raft_client(
        channel(&leader.addr).map_err(|e| unavailable(format!("leader address: {e}")))?,
    );
    let mut req = Request::new(pb::RaftPayload::default());
    secret.attach(&mut req);
    let reply = client
        .read_index(req)
        .await
        .map_err(|s| {
            unavailable(format!(
                "asking the leader for a read index: {}",
                s.message()
            ))
        })?
        .into_inner();
    if !reply.error.is_empty() {
        return Err(ControlPlaneError::NotLeader {
            leader: Some(leader.addr),
        });
    }
    let log_id: LogId =
        decode(&reply.data).map_err(|s| ControlPlaneError::Internal(s.message().to_owned()))?;
    let linearizer = Linearizer::new(leader_id, ReadLogId::from_log_id(log_id), None);
    match linearizer
        .try_await_ready(raft, Some(Duration::from_secs(5)))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(unavailable(
            "this node did not catch up with the leader in time".into(),
        )),
        Err(fatal) => Err(ControlPlaneError::Internal(fatal.to_string())),
    }
}

pub struct ControlPlaneService {
    pub node: Handles,
}

impl ControlPlaneService {
    /// For the calls gateways and workers make: the cluster secret or the
    /// admin token.
    fn authorize_member<T>(&self, req: &Request<T>) -> Result<()> {
        let metadata = req.metadata();
        if self.node.secret.matches(metadata) {
            return Ok(());
        }
        if metadata.contains_key("authorization") {
            return self.authorize(req);
        }
        if metadata.contains_key(CLUSTER_SECRET_METADATA) {
            return Err(ControlPlaneError::Unauthenticated(
                "the cluster secret is wrong".into(),
            ));
        }
        Err(ControlPlaneError::Unauthenticated(format!(
            "this call needs the cluster secret ({CLUSTER_SECRET_METADATA} metadata) or an admin token (authorization: Bearer <token>)"
        )))
    }

    /// For admin calls: the admin token only.
    fn authorize<T>(&self, req: &Request<T>) -> Result<()> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ControlPlaneError::Unauthenticated(
                    "an admin token is required (authorization: Bearer <token>)".into(),
                )
            })?;
        let Some(expected) = self.node.sm.view()?.admin_hash()? else {
            return Err(ControlPlaneError::Unavailable(
                "the cluster is not initialized yet (no admin token)".into(),
            ));
        };
        if !bulkhead_proto::auth::constant_time_eq(
            hash_secret(token).as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(ControlPlaneError::Unauthenticated(
                "the admin token is wrong".into(),
            ));
        }
        Ok(())
    }

    /// Who makes an admin call, for the audit trail: `admin`, with what the
    /// caller adds in `x-bulkhead-actor` (the gateway's admin API names
    /// itself and the client's address).
    fn actor<T>(req: &Request<T>) -> String {
        match req
            .metadata()
            .get(ACTOR_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some(via) if !via.is_empty() => {
                format!("admin ({})", via.chars().take(200).collect::<String>())
            }
            _ => "admin".to_owned(),
        }
    }

    /// Proposes an admin change that goes to the audit trail.
    async fn audited(&self, actor: String, command: Command) -> Result<Reply> {
        self.write(Command::Audited {
            actor,
            now_ms: now_ms(),
            command: Box::new(command),
        })
        .await
    }

    async fn read(&self) -> Result<View> {
        linearize(&self.node.raft, &self.node.secret).await?;
        Ok(self.node.sm.view()?)
    }

    async fn write(&self, command: Command) -> Result<Reply> {
        write(&self.node.raft, command).await
    }

    fn status(&self) -> pb::ClusterState {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: Vec<pb::ClusterNode> = membership
            .nodes()
            .map(|(id, node): (&NodeId, &Node)| pb::ClusterNode {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        pb::ClusterState {
            node_id: m.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            nodes,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
        }
    }

    fn require_leader(&self) -> Result<()> {
        let m = self.node.raft.metrics().borrow_watched().clone();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        Err(ControlPlaneError::NotLeader { leader })
    }
}

fn tenant_id(id: &str) -> Result<TenantId> {
    TenantId::new(id).map_err(|e| ControlPlaneError::InvalidArgument(e.to_string()))
}

fn session_id(id: &str) -> Result<bulkhead_proto::SessionId> {
    bulkhead_proto::SessionId::new(id)
        .map_err(|e| ControlPlaneError::InvalidArgument(e.to_string()))
}

fn unexpected(reply: &Reply) -> ControlPlaneError {
    ControlPlaneError::Internal(format!("unexpected reply {reply:?}"))
}

type R<T> = std::result::Result<Response<T>, Status>;
type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvent, Status>>;

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for ControlPlaneService {
    type WatchStream = WatchStream;

    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> R<pb::Session> {
        ControlPlaneService::create_session(self, req).await
    }

    async fn list_sessions(&self, req: Request<pb::TenantRef>) -> R<pb::SessionList> {
        ControlPlaneService::list_sessions(self, req).await
    }

    async fn get_turns(&self, req: Request<pb::GetTurnsRequest>) -> R<pb::TurnList> {
        ControlPlaneService::get_turns(self, req).await
    }

    async fn get_turns_batch(
        &self,
        req: Request<pb::GetTurnsBatchRequest>,
    ) -> R<pb::GetTurnsBatchReply> {
        ControlPlaneService::get_turns_batch(self, req).await
    }

    async fn append_turns(&self, req: Request<pb::AppendTurnsRequest>) -> R<pb::Session> {
        ControlPlaneService::append_turns(self, req).await
    }

    async fn append_turns_batch(
        &self,
        req: Request<pb::AppendTurnsBatchRequest>,
    ) -> R<pb::AppendTurnsBatchReply> {
        ControlPlaneService::append_turns_batch(self, req).await
    }

    async fn delete_session(&self, req: Request<pb::SessionRef>) -> R<pb::Session> {
        ControlPlaneService::delete_session(self, req).await
    }

    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> R<pb::RegisterWorkerReply> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        let w = r.worker.unwrap_or_default();
        bulkhead_proto::WorkerId::new(w.worker_id.as_str())
            .map_err(|e| ControlPlaneError::InvalidArgument(e.to_string()))?;
        if w.addr.is_empty() || (w.models.is_empty() && w.loading.is_empty() && w.files.is_empty())
        {
            return Err(ControlPlaneError::InvalidArgument(
                "a worker registers with its address and at least one model, loaded, loading or on file"
                    .into(),
            )
            .into());
        }
        let lease = i64::try_from(r.lease_ms.clamp(1_000, 60_000)).unwrap_or(10_000);
        let worker = worker_from_pb(w, now_ms() + lease);
        let worker = match self.write(Command::RegisterWorker { worker }).await? {
            Reply::Worker(w) => w,
            other => return Err(unexpected(&other).into()),
        };
        // The write is applied here, so this node's state has it.
        let view = self.node.sm.view()?;
        let now = now_ms();
        let live: Vec<WorkerRecord> = view
            .workers()?
            .into_iter()
            .filter(|w| w.expires_at_ms >= now)
            .collect();
        let placement = crate::placement::place(&worker.worker_id, &live, &view.tenants()?);
        Ok(Response::new(pb::RegisterWorkerReply {
            worker: Some(worker_to_pb(worker)),
            load: placement.load,
            unneeded: placement.unneeded,
        }))
    }

    async fn list_workers(&self, req: Request<pb::ListWorkersRequest>) -> R<pb::WorkerList> {
        self.authorize_member(&req)?;
        let now = now_ms();
        let workers = self.read().await?.workers()?;
        Ok(Response::new(pb::WorkerList {
            workers: workers
                .into_iter()
                .filter(|w| w.expires_at_ms >= now)
                .map(worker_to_pb)
                .collect(),
        }))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> R<Self::WatchStream> {
        self.authorize_member(&req)?;
        let from = req.into_inner().from_version;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(watch_loop(self.node.sm.clone(), from, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn cluster_status(&self, _req: Request<pb::ClusterStatusRequest>) -> R<pb::ClusterState> {
        Ok(Response::new(self.status()))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> R<pb::ClusterState> {
        self.authorize(&req)?;
        self.require_leader()?;
        let r = req.into_inner();
        if r.id == 0 || r.addr.is_empty() {
            return Err(ControlPlaneError::InvalidArgument(
                "add-node needs a node id above 0 and an address".into(),
            )
            .into());
        }
        if let Some(other) = self
            .status()
            .nodes
            .iter()
            .find(|n| n.addr == r.addr && n.id != r.id)
        {
            return Err(ControlPlaneError::AlreadyExists(format!(
                "node {} already has the address {}; each node needs its own",
                other.id, r.addr
            ))
            .into());
        }
        let raft = &self.node.raft;
        raft.add_learner(r.id, Node::new(r.addr), true)
            .await
            .map_err(raft_error)?;
        raft.change_membership(
            openraft::ChangeMembers::AddVoterIds(BTreeSet::from([r.id])),
            false,
        )
        .await
        .map_err(raft_error)?;
        Ok(Response::new(self.status()))
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> R<pb::ClusterState> {
        self.authorize(&req)?;
        self.require_leader()?;
        let id = req.into_inner().id;
        let membership = self.status();
        if !membership.nodes.iter().any(|n| n.id == id) {
            return Err(ControlPlaneError::NotFound(format!("node {id} is not a member")).into());
        }
        self.node
            .raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(raft_error)?;
        Ok(Response::new(self.status()))
    }

    async fn create_tenant(&self, req: Request<pb::Tenant>) -> R<pb::Tenant> {
        ControlPlaneService::create_tenant(self, req).await
    }

    async fn update_tenant(&self, req: Request<pb::TenantPatch>) -> R<pb::Tenant> {
        ControlPlaneService::update_tenant(self, req).await
    }

    async fn get_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::Tenant> {
        ControlPlaneService::get_tenant(self, req).await
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> R<pb::TenantList> {
        ControlPlaneService::list_tenants(self, req).await
    }

    async fn delete_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::DeletedTenant> {
        ControlPlaneService::delete_tenant(self, req).await
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::CreatedKey> {
        ControlPlaneService::create_key(self, req).await
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> R<pb::ApiKey> {
        ControlPlaneService::revoke_key(self, req).await
    }

    async fn list_keys(&self, req: Request<pb::TenantRef>) -> R<pb::KeyList> {
        ControlPlaneService::list_keys(self, req).await
    }

    async fn authenticate(&self, req: Request<pb::AuthenticateRequest>) -> R<pb::Authenticated> {
        ControlPlaneService::authenticate(self, req).await
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::Allowance> {
        ControlPlaneService::grant(self, req).await
    }

    async fn r#return(&self, req: Request<pb::ReturnRequest>) -> R<pb::Allowance> {
        ControlPlaneService::r#return(self, req).await
    }

    async fn report_usage(&self, req: Request<pb::UsageBatch>) -> R<pb::UsageApplied> {
        ControlPlaneService::report_usage(self, req).await
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> R<pb::UsageReport> {
        ControlPlaneService::usage(self, req).await
    }

    async fn usage_range(&self, req: Request<pb::UsageRangeRequest>) -> R<pb::UsageReport> {
        ControlPlaneService::usage_range(self, req).await
    }

    async fn export_usage(&self, req: Request<pb::UsageExportRequest>) -> R<pb::UsageExport> {
        ControlPlaneService::export_usage(self, req).await
    }

    async fn apply_tenants(
        &self,
        req: Request<pb::ApplyTenantsRequest>,
    ) -> R<pb::ApplyTenantsReply> {
        ControlPlaneService::apply_tenants(self, req).await
    }

    async fn rotate_admin_token(
        &self,
        req: Request<pb::RotateAdminTokenRequest>,
    ) -> R<pb::AdminToken> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let token = new_secret("bka_");
        match self
            .write(Command::RotateAdmin {
                token_hash: hash_secret(&token),
            })
            .await?
        {
            Reply::AdminInitialized(true) => {
                tracing::warn!(actor = %actor, "the admin token was rotated; the old one is refused from now on");
                Ok(Response::new(pb::AdminToken { token }))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> R<pb::PlanList> {
        ControlPlaneService::list_plans(self, req).await
    }

    async fn request_burst(&self, req: Request<pb::BurstRequest>) -> R<pb::Burst> {
        ControlPlaneService::request_burst(self, req).await
    }

    async fn decide_burst(&self, req: Request<pb::BurstDecision>) -> R<pb::Burst> {
        ControlPlaneService::decide_burst(self, req).await
    }

    async fn list_bursts(&self, req: Request<pb::ListBurstsRequest>) -> R<pb::BurstList> {
        ControlPlaneService::list_bursts(self, req).await
    }

    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> R<pb::CreatedWebhook> {
        ControlPlaneService::create_webhook(self, req).await
    }

    async fn delete_webhook(&self, req: Request<pb::WebhookRef>) -> R<pb::Webhook> {
        ControlPlaneService::delete_webhook(self, req).await
    }

    async fn list_webhooks(&self, req: Request<pb::ListWebhooksRequest>) -> R<pb::WebhookList> {
        ControlPlaneService::list_webhooks(self, req).await
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> R<pb::DeliveryList> {
        ControlPlaneService::list_deliveries(self, req).await
    }

    async fn publish_snippet(&self, req: Request<pb::Snippet>) -> R<pb::Snippet> {
        ControlPlaneService::publish_snippet(self, req).await
    }

    async fn delete_snippet(&self, req: Request<pb::SnippetRef>) -> R<pb::Snippet> {
        ControlPlaneService::delete_snippet(self, req).await
    }

    async fn list_snippets(&self, req: Request<pb::ListSnippetsRequest>) -> R<pb::SnippetList> {
        ControlPlaneService::list_snippets(self, req).await
    }

    async fn grant_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        ControlPlaneService::grant_share(self, req).await
    }

    async fn revoke_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        ControlPlaneService::revoke_share(self, req).await
    }

    async fn list_shares(&self, req: Request<pb::ListSharesRequest>) -> R<pb::ShareList> {
        ControlPlaneService::list_shares(self, req).await
    }

    async fn resolve_shared(&self, req: Request<pb::ResolveSharedRequest>) -> R<pb::SnippetList> {
        ControlPlaneService::resolve_shared(self, req).await
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> R<pb::AuditList> {
        ControlPlaneService::list_audit(self, req).await
    }

    async fn verify_audit(&self, req: Request<pb::VerifyAuditRequest>) -> R<pb::AuditVerification> {
        ControlPlaneService::verify_audit(self, req).await
    }
}

/// A fresh record id: a prefix (`key_`, `burst_`, `wh_`) and 16 hex digits.
fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

/// Names the config field an error is about.
fn prefix_field(field: &str, e: ControlPlaneError) -> ControlPlaneError {
    match e {
        ControlPlaneError::InvalidArgument(m) => {
            ControlPlaneError::InvalidArgument(format!("{field}.{m}"))
        }
        other => other,
    }
}

/// A tenant that exists, or NotFound.
fn known_tenant(view: &View, tenant_id: &str) -> Result<TenantRecord> {
    view.tenant(tenant_id)?
        .ok_or_else(|| ControlPlaneError::NotFound(format!("unknown tenant `{tenant_id}`")))
}

#[cfg(test)]
mod tests {
    use super::permille;

    #[test]
    fn load_progress_is_kept_in_thousandths_within_bounds() {
        assert_eq!(permille(0.4), 400);
        assert_eq!(permille(1.5), 1000);
        assert_eq!(permille(-0.2), 0);
        assert_eq!(permille(f32::NAN), 0);
    }
}
