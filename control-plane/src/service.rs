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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bulkhead_proto::auth::CLUSTER_SECRET_METADATA;
use bulkhead_proto::control as pb;
use bulkhead_proto::control::raft_client::RaftClient;
use bulkhead_proto::{ClusterSecret, TenantId};
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::admin::{self as adm, build_tenant, validate_tenant};
use crate::error::ControlPlaneError;
use crate::ledger;
use crate::plans;
use crate::raft::{LogId, Node, NodeId, Raft, channel, decode};
use crate::sessions::{SessionRecord, TenantView};
use crate::state::{
    Change, Command, DeviceRecord, KeyRecord, Limits, LimitsMask, Reply, TenantPatch, TenantRecord,
    TurnAppend, UsageRecord, WorkerRecord,
};
use crate::store::{StateMachine, View};

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

/// Metadata an admin caller may add to say who it acts for.
pub const ACTOR_METADATA: &str = "x-bulkhead-actor";

/// SHA-256 of a secret, hex-encoded: how tokens and keys are stored.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random secret with a prefix (`bk_` for keys, `bka_` for admin).
pub fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
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
    let mut client = RaftClient::new(
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
        if hash_secret(token) != expected {
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

pub(crate) fn tenant_to_pb(t: TenantRecord) -> pb::Tenant {
    pb::Tenant {
        id: t.id,
        display_name: t.display_name,
        plan: t.plan,
        limits: Some(pb::Limits {
            daily_tokens: t.limits.daily_tokens,
            max_concurrent: t.limits.max_concurrent,
            max_request_tokens: t.limits.max_request_tokens,
            context_window: t.limits.context_window,
            context_turns: t.limits.context_turns,
        }),
        model: t.model,
        adapter: t.adapter,
        adapter_scale: t.adapter_scale,
        system_prompt: t.system_prompt,
        welcome_message: t.welcome_message,
        quick_prompts: t.quick_prompts,
        time_zone: t.time_zone,
        knowledge_share: t.knowledge_share,
        version: t.version,
        created_at_ms: t.created_at_ms,
        features: Some(adm::features_to_pb(&t.features)),
        feature_overrides: None,
        overridden: t.overridden.into_iter().collect(),
    }
}

fn key_to_pb(k: KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id,
        tenant_id: k.tenant_id,
        name: k.name,
        prefix: k.prefix,
        created_at_ms: k.created_at_ms,
        revoked_at_ms: k.revoked_at_ms,
        last_used_at_ms: k.last_used_at_ms,
    }
}

fn allowance_to_pb(a: crate::state::AllowanceView) -> pb::Allowance {
    pb::Allowance {
        tenant_id: a.tenant_id,
        gateway_id: a.gateway_id,
        tokens: a.allowance.tokens,
        slots: a.allowance.slots,
        expires_at_ms: a.allowance.expires_at_ms,
        day: a.day,
        quota: a.quota,
        used: a.used,
        outstanding: a.outstanding,
        max_concurrent: a.max_concurrent,
        resets_at_ms: a.resets_at_ms,
        granted_tokens: a.granted_tokens,
        granted_slots: a.granted_slots,
    }
}

/// A load fraction (0.0 to 1.0; anything else is clamped) in thousandths.
fn permille(progress: f32) -> u16 {
    // In 0..=1000 after the clamp, so the cast cannot truncate; a NaN casts to 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let p = (progress.clamp(0.0, 1.0) * 1000.0).round() as u16;
    p
}

/// A checked request to append turns: ids valid, turns there, roles known.
fn turn_append(r: pb::AppendTurnsRequest) -> Result<TurnAppend> {
    tenant_id(&r.tenant_id)?;
    session_id(&r.session_id)?;
    if r.turns.is_empty() {
        return Err(ControlPlaneError::InvalidArgument(
            "no turns to append".into(),
        ));
    }
    if let Some(bad) = r
        .turns
        .iter()
        .find(|t| !matches!(t.role.as_str(), "user" | "assistant" | "system"))
    {
        return Err(ControlPlaneError::InvalidArgument(format!(
            "turn role must be user, assistant or system, got {:?}",
            bad.role
        )));
    }
    Ok(TurnAppend {
        tenant_id: r.tenant_id,
        session_id: r.session_id,
        user_id: r.user_id,
        turns: r.turns.into_iter().map(|t| (t.role, t.content)).collect(),
    })
}

fn worker_to_pb(w: WorkerRecord) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.worker_id,
        addr: w.addr,
        models: w.models,
        adapters: w.adapters,
        slots: w.slots,
        expires_at_ms: w.expires_at_ms,
        loading: w
            .loading
            .into_iter()
            .map(|(model, permille)| pb::ModelLoad {
                model,
                progress: f32::from(permille) / 1000.0,
            })
            .collect(),
        context_windows: w.context_windows.into_iter().collect(),
        devices: w
            .devices
            .into_iter()
            .map(|d| bulkhead_proto::worker::Device {
                name: d.name,
                description: d.description,
                memory_total_bytes: d.memory_total_bytes,
                memory_free_bytes: d.memory_free_bytes,
            })
            .collect(),
    }
}

fn key_state(k: KeyRecord) -> pb::KeyState {
    let hash = k.hash.clone();
    pb::KeyState {
        key: Some(key_to_pb(k)),
        hash,
    }
}

fn change_to_pb(version: u64, change: Change) -> pb::WatchEvent {
    use pb::watch_event::Change as C;
    pb::WatchEvent {
        version,
        reset: false,
        change: Some(match change {
            Change::Tenant(t) => C::Tenant(tenant_to_pb(t)),
            Change::TenantDeleted(id) => C::TenantDeleted(id),
            Change::Key(k) => C::Key(key_state(k)),
            Change::Worker(w) => C::Worker(worker_to_pb(w)),
            Change::WorkerGone(id) => C::WorkerGone(id),
        }),
    }
}

/// Everything a watcher caches, as one resync: a `reset` marker first.
fn full_state(view: &View) -> Result<(u64, Vec<pb::WatchEvent>)> {
    use pb::watch_event::Change as C;
    let version = view.version()?;
    let mut events = vec![pb::WatchEvent {
        version,
        reset: true,
        change: None,
    }];
    let at = |change| pb::WatchEvent {
        version,
        reset: false,
        change: Some(change),
    };
    events.extend(
        view.tenants()?
            .into_iter()
            .map(|t| at(C::Tenant(tenant_to_pb(t)))),
    );
    events.extend(
        view.all_keys()?
            .into_iter()
            .map(|k| at(C::Key(key_state(k)))),
    );
    events.extend(
        view.workers()?
            .into_iter()
            .map(|w| at(C::Worker(worker_to_pb(w)))),
    );
    Ok((version, events))
}

/// Feeds one watcher until it goes away.
async fn watch_loop(
    sm: StateMachine,
    from: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let mut applied = sm.applied();
    let mut at = from;
    let mut first = true;
    loop {
        let batch = sm.view().map_err(ControlPlaneError::from).and_then(|view| {
            if first && at == 0 {
                return full_state(&view);
            }
            match view.changes_after(at)? {
                Some(changes) => {
                    let last = changes.last().map_or(at, |(v, _)| *v);
                    Ok((
                        last,
                        changes
                            .into_iter()
                            .map(|(v, c)| change_to_pb(v, c))
                            .collect(),
                    ))
                }
                None => full_state(&view),
            }
        });
        first = false;
        match batch {
            Ok((version, events)) => {
                for event in events {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                at = version;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

fn session_to_pb(tenant_id: &str, s: SessionRecord) -> pb::Session {
    pb::Session {
        tenant_id: tenant_id.to_owned(),
        session_id: s.session_id,
        title: s.title,
        user_id: s.user_id,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        turns: s.turns,
    }
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
        self.authorize_member(&req)?;
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        let id = if r.session_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            session_id(&r.session_id)?;
            r.session_id
        };
        let now = now_ms();
        let session = SessionRecord {
            session_id: id,
            title: r.title,
            user_id: r.user_id,
            created_at_ms: now,
            updated_at_ms: now,
            turns: 0,
        };
        match self
            .write(Command::CreateSession {
                tenant_id: r.tenant_id.clone(),
                session,
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&r.tenant_id, s))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_sessions(&self, req: Request<pb::TenantRef>) -> R<pb::SessionList> {
        self.authorize_member(&req)?;
        let id = tenant_id(&req.into_inner().id)?;
        let view = self.read().await?;
        if view.tenant(id.as_str())?.is_none() {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        }
        let sessions = TenantView::new(&view, &id).sessions()?;
        Ok(Response::new(pb::SessionList {
            sessions: sessions
                .into_iter()
                .map(|s| session_to_pb(id.as_str(), s))
                .collect(),
        }))
    }

    async fn get_turns(&self, req: Request<pb::GetTurnsRequest>) -> R<pb::TurnList> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        session_id(&r.session_id)?;
        let view = self.read().await?;
        if view.tenant(id.as_str())?.is_none() {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        }
        let scoped = TenantView::new(&view, &id);
        let Some(session) = scoped.session(&r.session_id)? else {
            return Err(
                ControlPlaneError::NotFound(format!("unknown session `{}`", r.session_id)).into(),
            );
        };
        let turns = scoped.turns_of(&session, r.last as usize)?;
        Ok(Response::new(pb::TurnList {
            turns: turns
                .into_iter()
                .map(|t| pb::Turn {
                    role: t.role,
                    content: t.content,
                    at_ms: t.at_ms,
                    seq: t.seq,
                })
                .collect(),
        }))
    }

    async fn append_turns(&self, req: Request<pb::AppendTurnsRequest>) -> R<pb::Session> {
        self.authorize_member(&req)?;
        let a = turn_append(req.into_inner())?;
        let tenant = a.tenant_id.clone();
        match self
            .write(Command::AppendTurns {
                tenant_id: a.tenant_id,
                session_id: a.session_id,
                user_id: a.user_id,
                turns: a.turns,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&tenant, s))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn append_turns_batch(
        &self,
        req: Request<pb::AppendTurnsBatchRequest>,
    ) -> R<pb::AppendTurnsBatchReply> {
        self.authorize_member(&req)?;
        // Invalid appends are answered here; the valid ones go in one entry.
        let checked: Vec<Result<TurnAppend>> = req
            .into_inner()
            .appends
            .into_iter()
            .map(turn_append)
            .collect();
        let valid: Vec<TurnAppend> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut replies = if valid.is_empty() {
            Vec::new()
        } else {
            match self
                .write(Command::AppendTurnsBatch {
                    appends: valid,
                    now_ms: now_ms(),
                })
                .await?
            {
                Reply::Batch(replies) => replies,
                other => return Err(unexpected(&other).into()),
            }
        }
        .into_iter();
        let results = checked
            .into_iter()
            .map(|c| {
                let outcome = c.and_then(|a| match replies.next() {
                    Some(Reply::Session(s)) => Ok(session_to_pb(&a.tenant_id, s)),
                    Some(Reply::Rejected(r)) => Err(r.into()),
                    other => Err(ControlPlaneError::Internal(format!(
                        "a batch of appends answered {other:?}"
                    ))),
                });
                match outcome {
                    Ok(session) => pb::AppendTurnsResult {
                        session: Some(session),
                        error: String::new(),
                    },
                    Err(e) => pb::AppendTurnsResult {
                        session: None,
                        error: e.to_string(),
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::AppendTurnsBatchReply { results }))
    }

    async fn delete_session(&self, req: Request<pb::SessionRef>) -> R<pb::Session> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        match self
            .write(Command::DeleteSession {
                tenant_id: r.tenant_id.clone(),
                session_id: r.session_id,
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&r.tenant_id, s))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn register_worker(&self, req: Request<pb::RegisterWorkerRequest>) -> R<pb::WorkerInfo> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        let w = r.worker.unwrap_or_default();
        bulkhead_proto::WorkerId::new(w.worker_id.as_str())
            .map_err(|e| ControlPlaneError::InvalidArgument(e.to_string()))?;
        if w.addr.is_empty() || (w.models.is_empty() && w.loading.is_empty()) {
            return Err(ControlPlaneError::InvalidArgument(
                "a worker registers with its address and at least one model, loaded or loading"
                    .into(),
            )
            .into());
        }
        let lease = i64::try_from(r.lease_ms.clamp(1_000, 60_000)).unwrap_or(10_000);
        let worker = WorkerRecord {
            worker_id: w.worker_id,
            addr: w.addr,
            models: w.models,
            adapters: w.adapters,
            slots: w.slots,
            expires_at_ms: now_ms() + lease,
            loading: w
                .loading
                .into_iter()
                .map(|l| (l.model, permille(l.progress)))
                .collect(),
            context_windows: w.context_windows.into_iter().collect(),
            devices: w
                .devices
                .into_iter()
                .map(|d| DeviceRecord {
                    name: d.name,
                    description: d.description,
                    memory_total_bytes: d.memory_total_bytes,
                    memory_free_bytes: d.memory_free_bytes,
                })
                .collect(),
        };
        match self.write(Command::RegisterWorker { worker }).await? {
            Reply::Worker(w) => Ok(Response::new(worker_to_pb(w))),
            other => Err(unexpected(&other).into()),
        }
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
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let mut t = req.into_inner();
        let features = t.feature_overrides.take();
        let record = build_tenant(t, features, now_ms())?;
        match self
            .audited(actor, Command::CreateTenant { tenant: record })
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(tenant_to_pb(*t))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn update_tenant(&self, req: Request<pb::TenantPatch>) -> R<pb::Tenant> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let p = req.into_inner();
        tenant_id(&p.id)?;
        let view = self.read().await?;
        let Some(current) = view.tenant(&p.id)? else {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{}`", p.id)).into());
        };
        if let Some(plan) = &p.plan {
            adm::validate_plan(plan)?;
        }
        if let Some(tz) = &p.time_zone {
            adm::validate_time_zone(tz)?;
        }
        if let Some(scale) = p.adapter_scale {
            adm::validate_scale(scale)?;
        }
        let f = p.features.unwrap_or_default();
        let patch = TenantPatch {
            display_name: p.display_name,
            plan: p.plan,
            limits: Limits {
                daily_tokens: p.daily_tokens.unwrap_or_default(),
                max_concurrent: p.max_concurrent.unwrap_or_default(),
                max_request_tokens: p.max_request_tokens.unwrap_or_default(),
                context_window: p.context_window.unwrap_or_default(),
                context_turns: p.context_turns.unwrap_or_default(),
            },
            set_limits: LimitsMask {
                daily_tokens: p.daily_tokens.is_some(),
                max_concurrent: p.max_concurrent.is_some(),
                max_request_tokens: p.max_request_tokens.is_some(),
                context_window: p.context_window.is_some(),
                context_turns: p.context_turns.is_some(),
            },
            model: p.model,
            adapter: p.adapter,
            adapter_scale: p.adapter_scale,
            system_prompt: p.system_prompt,
            welcome_message: p.welcome_message,
            quick_prompts: p.set_quick_prompts.then_some(p.quick_prompts),
            time_zone: p.time_zone,
            knowledge_share: p.knowledge_share,
            features: crate::state::FeaturePatch {
                burst: f.burst,
                burst_percent: f.burst_percent,
                knowledge_sharing: f.knowledge_sharing,
                max_keys: f.max_keys,
                retention_days: f.retention_days,
            },
        };
        // Check what the tenant would end up with before proposing.
        let mut preview = current;
        patch.apply_to(&mut preview);
        validate_tenant(&preview)?;
        match self
            .audited(
                actor,
                Command::UpdateTenant {
                    id: p.id,
                    patch: Box::new(patch),
                },
            )
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(tenant_to_pb(*t))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn get_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::Tenant> {
        self.authorize(&req)?;
        let id = req.into_inner().id;
        match self.read().await?.tenant(&id)? {
            Some(t) => Ok(Response::new(tenant_to_pb(t))),
            None => Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into()),
        }
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> R<pb::TenantList> {
        self.authorize(&req)?;
        let tenants = self.read().await?.tenants()?;
        Ok(Response::new(pb::TenantList {
            tenants: tenants.into_iter().map(tenant_to_pb).collect(),
        }))
    }

    async fn delete_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::DeletedTenant> {
        self.authorize(&req)?;
        self.require_leader()?;
        let actor = Self::actor(&req);
        let id = req.into_inner().id;
        let view = self.read().await?;
        let Some(tenant) = view.tenant(&id)? else {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        };
        let now = now_ms();
        // The archive is written (and fsynced) before anything is removed.
        let archive = adm::write_archive(&self.node.data_dir, &view, &tenant, now)?;
        let archive = archive.display().to_string();
        match self
            .audited(
                actor,
                Command::DeleteTenant {
                    id,
                    archive: archive.clone(),
                    now_ms: now,
                },
            )
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(pb::DeletedTenant {
                tenant: Some(tenant_to_pb(*t)),
                archive_path: archive,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::CreatedKey> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        let plaintext = new_secret("bk_");
        let key = KeyRecord {
            key_id: new_id("key_"),
            tenant_id: r.tenant_id,
            name: r.name,
            prefix: plaintext[..11].to_owned(),
            hash: hash_secret(&plaintext),
            created_at_ms: now_ms(),
            revoked_at_ms: 0,
            last_used_at_ms: 0,
        };
        match self.audited(actor, Command::CreateKey { key }).await? {
            Reply::Key(k) => Ok(Response::new(pb::CreatedKey {
                key: Some(key_to_pb(k)),
                plaintext,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> R<pb::ApiKey> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let key_id = req.into_inner().key_id;
        let view = self.read().await?;
        if let Some(k) = view.key(&key_id)?
            && k.revoked_at_ms != 0
        {
            // Revoking twice changes nothing and records nothing.
            return Ok(Response::new(key_to_pb(k)));
        }
        match self
            .audited(
                actor,
                Command::RevokeKey {
                    key_id,
                    now_ms: now_ms(),
                },
            )
            .await?
        {
            Reply::Key(k) => Ok(Response::new(key_to_pb(k))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_keys(&self, req: Request<pb::TenantRef>) -> R<pb::KeyList> {
        self.authorize(&req)?;
        let id = req.into_inner().id;
        let view = self.read().await?;
        if view.tenant(&id)?.is_none() {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        }
        Ok(Response::new(pb::KeyList {
            keys: view.keys_of(&id)?.into_iter().map(key_to_pb).collect(),
        }))
    }

    async fn authenticate(&self, req: Request<pb::AuthenticateRequest>) -> R<pb::Authenticated> {
        self.authorize_member(&req)?;
        let plaintext = req.into_inner().plaintext;
        let view = self.read().await?;
        let refused = || ControlPlaneError::Unauthenticated("invalid API key".into());
        let key = view
            .key_by_hash(&hash_secret(&plaintext))?
            .ok_or_else(refused)?;
        if key.revoked_at_ms != 0 {
            return Err(
                ControlPlaneError::Unauthenticated("this API key has been revoked".into()).into(),
            );
        }
        // Last-used time, at most one write per key and minute.
        let now = now_ms();
        if now - key.last_used_at_ms > 60_000
            && let Err(e) = self
                .write(Command::TouchKey {
                    key_id: key.key_id.clone(),
                    now_ms: now,
                })
                .await
        {
            tracing::debug!(key = %key.key_id, error = %e, "recording key use failed");
        }
        Ok(Response::new(pb::Authenticated {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
        }))
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::Allowance> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        bulkhead_proto::GatewayId::new(r.gateway_id.as_str())
            .map_err(|e| ControlPlaneError::InvalidArgument(e.to_string()))?;
        match self
            .write(Command::Grant {
                tenant_id: r.tenant_id,
                gateway_id: r.gateway_id,
                tokens: r.tokens,
                slots: r.slots,
                ttl_ms: if r.ttl_ms == 0 {
                    ledger::MAX_ALLOWANCE_TTL_MS
                } else {
                    r.ttl_ms
                },
                now_ms: now_ms(),
                op_id: r.op_id,
            })
            .await?
        {
            Reply::Allowance(a) => {
                self.node
                    .metrics
                    .allowance_changed(&a.tenant_id, true, a.granted_tokens);
                Ok(Response::new(allowance_to_pb(a)))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn r#return(&self, req: Request<pb::ReturnRequest>) -> R<pb::Allowance> {
        self.authorize_member(&req)?;
        let r = req.into_inner();
        let tokens = r.tokens;
        match self
            .write(Command::Return {
                tenant_id: r.tenant_id,
                gateway_id: r.gateway_id,
                tokens,
                slots: r.slots,
                now_ms: now_ms(),
                op_id: r.op_id,
            })
            .await?
        {
            Reply::Allowance(a) => {
                self.node
                    .metrics
                    .allowance_changed(&a.tenant_id, false, tokens);
                Ok(Response::new(allowance_to_pb(a)))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn report_usage(&self, req: Request<pb::UsageBatch>) -> R<pb::UsageApplied> {
        self.authorize_member(&req)?;
        let events: Vec<UsageRecord> = req.into_inner().events.iter().map(Into::into).collect();
        if let Some(bad) = events.iter().find(|e| e.event_id.is_empty()) {
            return Err(ControlPlaneError::InvalidArgument(format!(
                "a usage event of tenant `{}` has no event id",
                bad.tenant_id
            ))
            .into());
        }
        let (applied, duplicates) =
            crate::consumer::commit(&self.node.raft, events, &self.node.metrics, "report").await?;
        Ok(Response::new(pb::UsageApplied {
            applied,
            duplicates,
        }))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> R<pb::UsageReport> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        let days = r.days.clamp(1, 366);
        let now = now_ms();
        let mut day_names: Vec<String> = Vec::new();
        for i in 0..i64::from(days) {
            let (day, _) = ledger::day_of(now - i * 86_400_000, &tenant.time_zone);
            if !day_names.contains(&day) {
                day_names.push(day);
            }
        }
        Ok(Response::new(usage_report(&view, tenant, day_names)?))
    }

    async fn usage_range(&self, req: Request<pb::UsageRangeRequest>) -> R<pb::UsageReport> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let mut day_names = ledger::day_range(&r.from_day, &r.to_day)
            .map_err(ControlPlaneError::InvalidArgument)?;
        // Newest first, as `usage` answers.
        day_names.reverse();
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        Ok(Response::new(usage_report(&view, tenant, day_names)?))
    }

    async fn export_usage(&self, req: Request<pb::UsageExportRequest>) -> R<pb::UsageExport> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let day_names = ledger::day_range(&r.from_day, &r.to_day)
            .map_err(ControlPlaneError::InvalidArgument)?;
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        let key = match view.export_key()? {
            Some(k) => k,
            None => {
                // Made here (apply draws no randomness) and stored once: a
                // racing node's key loses to the first one committed.
                let proposed = crate::usage_export::new_export_key();
                match write(&self.node.raft, Command::SetExportKey { key_hex: proposed }).await? {
                    Reply::ExportKey(k) => k,
                    other => return Err(unexpected(&other).into()),
                }
            }
        };
        let mut rows = Vec::new();
        for day in day_names {
            let Some(l) = view.ledger_day(&tenant.id, &day)? else {
                continue;
            };
            let users = view.users(&tenant.id, std::slice::from_ref(&day))?;
            let (mut tokens, mut requests) = (0u64, 0u64);
            for (user_id, u) in users {
                tokens += u.tokens;
                requests += u.requests;
                rows.push(pb::UsageExportRow {
                    day: day.clone(),
                    user: crate::usage_export::pseudonym(&key, &user_id),
                    tokens: u.tokens,
                    requests: u.requests,
                });
            }
            let rest = (
                l.used.saturating_sub(tokens),
                l.requests.saturating_sub(requests),
            );
            if rest != (0, 0) {
                rows.push(pb::UsageExportRow {
                    day,
                    user: String::new(),
                    tokens: rest.0,
                    requests: rest.1,
                });
            }
        }
        Ok(Response::new(pb::UsageExport { rows }))
    }

    async fn apply_tenants(
        &self,
        req: Request<pb::ApplyTenantsRequest>,
    ) -> R<pb::ApplyTenantsReply> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let configs = req.into_inner().configs;
        if configs.is_empty() {
            return Err(
                ControlPlaneError::InvalidArgument("no tenant configs given".into()).into(),
            );
        }
        let view = self.read().await?;
        let now = now_ms();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut tenants = Vec::new();
        for c in configs {
            let source = if c.source.is_empty() {
                "config".to_owned()
            } else {
                c.source
            };
            let at = |e: ControlPlaneError| -> Status {
                let mut s: Status = e.into();
                s = Status::new(s.code(), format!("{source}: {}", s.message()));
                s
            };
            let mut t = c.tenant.unwrap_or_default();
            let features = t.feature_overrides.take();
            let mut record = build_tenant(t, features, now).map_err(at)?;
            if let Some(first) = seen.insert(record.id.clone(), source.clone()) {
                return Err(at(ControlPlaneError::InvalidArgument(format!(
                    "tenant_id: `{}` is also declared in {first}",
                    record.id
                ))));
            }
            let existing = view.tenant(&record.id)?;
            if let Some(e) = &existing {
                record.created_at_ms = e.created_at_ms;
            }
            let current: Vec<crate::outbox::WebhookRecord> =
                crate::outbox::webhooks(&view, &record.id)?
                    .into_iter()
                    .filter(|w| w.source == "config")
                    .collect();
            let mut webhooks = Vec::new();
            for spec in c.webhooks {
                adm::validate_webhook(&spec.url, &spec.events, &spec.secret)
                    .map_err(|e| at(prefix_field("webhooks", e)))?;
                if webhooks
                    .iter()
                    .any(|w: &crate::outbox::WebhookRecord| w.url == spec.url)
                {
                    return Err(at(ControlPlaneError::InvalidArgument(format!(
                        "webhooks: {} is listed twice",
                        spec.url
                    ))));
                }
                let same = current.iter().find(|w| w.url == spec.url);
                webhooks.push(crate::outbox::WebhookRecord {
                    webhook_id: same.map_or_else(|| new_id("wh_"), |w| w.webhook_id.clone()),
                    tenant_id: record.id.clone(),
                    url: spec.url,
                    events: spec.events,
                    secret: if !spec.secret.is_empty() {
                        spec.secret
                    } else {
                        same.map_or_else(adm::new_webhook_secret, |w| w.secret.clone())
                    },
                    created_at_ms: same.map_or(now, |w| w.created_at_ms),
                    source: "config".into(),
                });
            }
            tenants.push(crate::state::TenantApply {
                source,
                tenant: record,
                webhooks,
            });
        }
        match self
            .audited(actor, Command::ApplyTenants { tenants })
            .await?
        {
            Reply::Applied(outcomes) => Ok(Response::new(pb::ApplyTenantsReply {
                outcomes: outcomes
                    .into_iter()
                    .map(|o| pb::ApplyOutcome {
                        tenant_id: o.tenant_id,
                        source: o.source,
                        action: o.action,
                        changed: o.changed,
                        new_webhooks: o
                            .new_webhooks
                            .iter()
                            .map(|w| pb::CreatedWebhook {
                                webhook: Some(adm::webhook_to_pb(w)),
                                secret: w.secret.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> R<pb::PlanList> {
        self.authorize(&req)?;
        let plans = plans::PLANS
            .iter()
            .filter_map(|name| {
                let l = plans::default_limits(name)?;
                let f = plans::default_features(name)?;
                Some(pb::Plan {
                    name: (*name).to_owned(),
                    limits: Some(pb::Limits {
                        daily_tokens: l.daily_tokens,
                        max_concurrent: l.max_concurrent,
                        max_request_tokens: l.max_request_tokens,
                        context_window: l.context_window,
                        context_turns: l.context_turns,
                    }),
                    features: Some(adm::features_to_pb(&f)),
                })
            })
            .collect();
        Ok(Response::new(pb::PlanList { plans }))
    }

    async fn request_burst(&self, req: Request<pb::BurstRequest>) -> R<pb::Burst> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        let reason = r.reason.trim().to_owned();
        if reason.is_empty() || reason.len() > 2_000 {
            return Err(ControlPlaneError::InvalidArgument(
                "reason: say why the burst is needed (1 to 2000 characters)".into(),
            )
            .into());
        }
        let view = self.read().await?;
        let Some(tenant) = view.tenant(&r.tenant_id)? else {
            return Err(
                ControlPlaneError::NotFound(format!("unknown tenant `{}`", r.tenant_id)).into(),
            );
        };
        let now = now_ms();
        let burst = crate::bursts::BurstRecord {
            burst_id: new_id("burst_"),
            tenant_id: tenant.id.clone(),
            day: ledger::day_of(now, &tenant.time_zone).0,
            reason,
            status: "pending".into(),
            percent: tenant.features.burst_percent,
            extra_tokens: crate::bursts::extra_tokens(
                tenant.limits.daily_tokens,
                tenant.features.burst_percent,
            ),
            requested_at_ms: now,
            requested_by: actor.clone(),
            ..Default::default()
        };
        match self.audited(actor, Command::RequestBurst { burst }).await? {
            Reply::Burst(b) => Ok(Response::new(adm::burst_to_pb(b))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn decide_burst(&self, req: Request<pb::BurstDecision>) -> R<pb::Burst> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        let command = Command::DecideBurst {
            burst_id: r.burst_id,
            approve: r.approve,
            note: r.note,
            decided_by: actor.clone(),
            now_ms: now_ms(),
        };
        match self.audited(actor, command).await? {
            Reply::Burst(b) => Ok(Response::new(adm::burst_to_pb(b))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_bursts(&self, req: Request<pb::ListBurstsRequest>) -> R<pb::BurstList> {
        self.authorize(&req)?;
        let r = req.into_inner();
        if !matches!(r.status.as_str(), "" | "pending" | "approved" | "denied") {
            return Err(ControlPlaneError::InvalidArgument(format!(
                "status: {:?} is not pending, approved or denied",
                r.status
            ))
            .into());
        }
        let view = self.read().await?;
        Ok(Response::new(pb::BurstList {
            bursts: crate::bursts::list(&view, &r.tenant_id, &r.status)?
                .into_iter()
                .map(adm::burst_to_pb)
                .collect(),
        }))
    }

    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> R<pb::CreatedWebhook> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        if !r.tenant_id.is_empty() {
            tenant_id(&r.tenant_id)?;
        }
        adm::validate_webhook(&r.url, &r.events, &r.secret)?;
        let webhook = crate::outbox::WebhookRecord {
            webhook_id: new_id("wh_"),
            tenant_id: r.tenant_id,
            url: r.url,
            events: r.events,
            secret: if r.secret.is_empty() {
                adm::new_webhook_secret()
            } else {
                r.secret
            },
            created_at_ms: now_ms(),
            source: "admin".into(),
        };
        match self
            .audited(actor, Command::CreateWebhook { webhook })
            .await?
        {
            Reply::Webhook(w) => Ok(Response::new(pb::CreatedWebhook {
                webhook: Some(adm::webhook_to_pb(&w)),
                secret: w.secret,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn delete_webhook(&self, req: Request<pb::WebhookRef>) -> R<pb::Webhook> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let webhook_id = req.into_inner().webhook_id;
        match self
            .audited(actor, Command::DeleteWebhook { webhook_id })
            .await?
        {
            Reply::Webhook(w) => Ok(Response::new(adm::webhook_to_pb(&w))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_webhooks(&self, req: Request<pb::ListWebhooksRequest>) -> R<pb::WebhookList> {
        self.authorize(&req)?;
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(adm::webhooks_pb(&view, &tenant)?))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> R<pb::DeliveryList> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        };
        let view = self.read().await?;
        Ok(Response::new(pb::DeliveryList {
            deliveries: crate::outbox::deliveries(
                &view,
                &r.tenant_id,
                &r.webhook_id,
                limit as usize,
            )?
            .into_iter()
            .map(adm::delivery_to_pb)
            .collect(),
        }))
    }

    async fn publish_snippet(&self, req: Request<pb::Snippet>) -> R<pb::Snippet> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        crate::sharing::validate_name(&r.name)
            .map_err(|m| ControlPlaneError::InvalidArgument(format!("name: {m}")))?;
        if r.content.trim().is_empty() || r.content.len() > crate::sharing::MAX_SNIPPET_BYTES {
            return Err(ControlPlaneError::InvalidArgument(format!(
                "content: a snippet has 1 to {} bytes of text",
                crate::sharing::MAX_SNIPPET_BYTES
            ))
            .into());
        }
        let snippet = crate::sharing::SnippetRecord {
            tenant_id: r.tenant_id,
            name: r.name,
            content: r.content,
            updated_at_ms: now_ms(),
        };
        match self
            .audited(actor, Command::PublishSnippet { snippet })
            .await?
        {
            Reply::Snippet(s) => Ok(Response::new(adm::snippet_to_pb(s))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn delete_snippet(&self, req: Request<pb::SnippetRef>) -> R<pb::Snippet> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        match self
            .audited(
                actor,
                Command::DeleteSnippet {
                    tenant_id: r.tenant_id,
                    name: r.name,
                },
            )
            .await?
        {
            Reply::Snippet(s) => Ok(Response::new(adm::snippet_to_pb(s))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_snippets(&self, req: Request<pb::ListSnippetsRequest>) -> R<pb::SnippetList> {
        self.authorize(&req)?;
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(pb::SnippetList {
            snippets: crate::sharing::snippets(&view, &tenant)?
                .into_iter()
                .map(adm::snippet_to_pb)
                .collect(),
        }))
    }

    async fn grant_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.owner_tenant_id)?;
        tenant_id(&r.grantee_tenant_id)?;
        if r.owner_tenant_id == r.grantee_tenant_id {
            return Err(ControlPlaneError::InvalidArgument(
                "grantee: a tenant always reads its own snippets".into(),
            )
            .into());
        }
        if r.snippet != "*" {
            crate::sharing::validate_name(&r.snippet)
                .map_err(|m| ControlPlaneError::InvalidArgument(format!("snippet: {m}")))?;
        }
        let grant = crate::sharing::ShareRecord {
            owner_tenant_id: r.owner_tenant_id,
            snippet: r.snippet,
            grantee_tenant_id: r.grantee_tenant_id,
            created_at_ms: now_ms(),
        };
        match self.audited(actor, Command::GrantShare { grant }).await? {
            Reply::Share(g) => Ok(Response::new(adm::share_to_pb(g))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn revoke_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        self.authorize(&req)?;
        let actor = Self::actor(&req);
        let r = req.into_inner();
        let grant = crate::sharing::ShareRecord {
            owner_tenant_id: r.owner_tenant_id,
            snippet: r.snippet,
            grantee_tenant_id: r.grantee_tenant_id,
            created_at_ms: 0,
        };
        match self.audited(actor, Command::RevokeShare { grant }).await? {
            Reply::Share(g) => Ok(Response::new(adm::share_to_pb(g))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_shares(&self, req: Request<pb::ListSharesRequest>) -> R<pb::ShareList> {
        self.authorize(&req)?;
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(pb::ShareList {
            grants: crate::sharing::shares(&view, &tenant)?
                .into_iter()
                .map(adm::share_to_pb)
                .collect(),
        }))
    }

    async fn resolve_shared(&self, req: Request<pb::ResolveSharedRequest>) -> R<pb::SnippetList> {
        self.authorize_member(&req)?;
        let via = req
            .metadata()
            .get(ACTOR_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("gateway")
            .to_owned();
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        if r.names.is_empty() || r.names.len() > 16 {
            return Err(ControlPlaneError::InvalidArgument(
                "names: name 1 to 16 shared snippets".into(),
            )
            .into());
        }
        let actor = if r.user_id.is_empty() {
            via
        } else {
            format!(
                "{via} user {}",
                r.user_id.chars().take(128).collect::<String>()
            )
        };
        match self
            .write(Command::UseShared {
                tenant_id: r.tenant_id,
                names: r.names,
                actor,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Shared {
                refused: Some(why), ..
            } => Err(ControlPlaneError::PermissionDenied(why).into()),
            Reply::Shared { snippets, .. } => Ok(Response::new(pb::SnippetList {
                snippets: snippets.into_iter().map(adm::snippet_to_pb).collect(),
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> R<pb::AuditList> {
        self.authorize(&req)?;
        let r = req.into_inner();
        if r.tenant_id.is_empty() {
            return Err(ControlPlaneError::InvalidArgument(format!(
                "tenant_id: name a tenant (or {} for changes that belong to none)",
                crate::audit::CLUSTER_CHAIN
            ))
            .into());
        }
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let view = self.read().await?;
        let mut records = crate::audit::records(&view, &r.tenant_id)?;
        if records.is_empty() && view.tenant(&r.tenant_id)?.is_none() {
            return Err(
                ControlPlaneError::NotFound(format!("unknown tenant `{}`", r.tenant_id)).into(),
            );
        }
        let skip = records.len().saturating_sub(limit);
        records.drain(..skip);
        Ok(Response::new(pb::AuditList {
            records: records.into_iter().map(adm::audit_to_pb).collect(),
        }))
    }

    async fn verify_audit(&self, req: Request<pb::VerifyAuditRequest>) -> R<pb::AuditVerification> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let view = self.read().await?;
        let v = crate::audit::verify(
            &view,
            (!r.tenant_id.is_empty()).then_some(r.tenant_id.as_str()),
        )?;
        let (broken_tenant, broken_seq, reason) = v.broken.clone().unwrap_or_default();
        Ok(Response::new(pb::AuditVerification {
            ok: v.broken.is_none(),
            chains: v.chains,
            records: v.records,
            broken_tenant,
            broken_seq,
            reason,
        }))
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

/// How many prompts a usage report lists.
const TOP_PROMPTS: usize = 5;

/// A tenant's usage report over the given days, in the order given.
fn usage_report(
    view: &View,
    tenant: TenantRecord,
    day_names: Vec<String>,
) -> Result<pb::UsageReport> {
    let recorded: BTreeMap<String, ledger::LedgerDay> =
        view.ledger_days(&tenant.id)?.into_iter().collect();
    let today = ledger::day_of(now_ms(), &tenant.time_zone).0;
    let allowances = view.allowances(&tenant.id)?;
    let mut out = Vec::new();
    for day in &day_names {
        let l = recorded.get(day).cloned().unwrap_or_default();
        let outstanding = if *day == today {
            allowances.iter().map(|(_, a)| a.tokens_on(day)).sum()
        } else {
            0
        };
        out.push(pb::UsageDay {
            day: day.clone(),
            prompt_tokens: l.prompt_tokens,
            completion_tokens: l.completion_tokens,
            cached_tokens: l.cached_tokens,
            requests: l.requests,
            quota: crate::state::quota_on(view, &tenant, day)?,
            outstanding,
            total_latency_ms: l.total_latency_ms,
            max_latency_ms: l.max_latency_ms,
            p95_latency_ms: l.p95_latency_ms(),
            avg_latency_ms: l.avg_latency_ms(),
        });
    }
    let users = view
        .users(&tenant.id, &day_names)?
        .into_iter()
        .map(|(user_id, u)| pb::UserUsage {
            user_id,
            tokens: u.tokens,
            requests: u.requests,
        })
        .collect();
    let recent = view
        .recent(&tenant.id)?
        .into_iter()
        .map(|r| pb::RecentRequest {
            event_id: r.event_id,
            user_id: r.user_id,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            duration_ms: r.duration_ms,
            finished_at_ms: r.finished_at_ms,
        })
        .collect();
    let top_prompts = view
        .top_prompts(&tenant.id, &day_names, TOP_PROMPTS)?
        .into_iter()
        .map(|p| pb::PromptCount {
            text: p.text,
            count: p.count,
        })
        .collect();
    Ok(pb::UsageReport {
        tenant_id: tenant.id,
        days: out,
        users,
        recent,
        top_prompts,
    })
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
