//! The control plane's gRPC API: admin calls, key checks, allowance grants,
//! usage reports and cluster membership, on any node.
//!
//! Writes go through Raft on the leader; a follower answers `Unavailable` with
//! the leader's address. Reads that decide anything are linearizable: the
//! leader confirms its leadership (ReadIndex) and waits for its state machine
//! to catch up; a follower asks the leader for that log id and waits until it
//! has applied it.
//!
//! One gRPC service per caller, each in its own file (`admin_api`,
//! `member_api`, `fleet_api`, `cluster_api`), each guarded by one
//! interceptor (`crate::callers`); the handlers behind them are grouped by
//! domain (`tenants`, `quota`, `sessions`, `business`).

use std::collections::BTreeSet;

use bulkhead_proto::TenantId;
use bulkhead_proto::control as pb;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status};

use crate::error::ControlPlaneError;
use crate::raft::{Node, NodeId};
use crate::state::{Command, Reply, TenantRecord, WorkerRecord};
use crate::store::View;

pub use crate::node::{Handles, new_secret};
pub(crate) use crate::node::{linearize, now_ms, raft_error, write};

mod admin_api;
mod business;
mod cluster_api;
mod convert;
mod files;
mod fleet_api;
mod member_api;
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

#[derive(Clone)]
pub struct ControlPlaneService {
    pub node: Handles,
}

impl ControlPlaneService {
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

    /// Whom a gateway's call is on behalf of, for the audit trail: what the
    /// gateway sent as `x-bulkhead-actor` ("gateway gw-1 key key_…").
    fn via<T>(req: &Request<T>) -> String {
        req.metadata()
            .get(ACTOR_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map_or_else(|| "gateway".to_owned(), |v| v.chars().take(200).collect())
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
    TenantId::new(id).map_err(|e| ControlPlaneError::bad_request(e.to_string()))
}

fn session_id(id: &str) -> Result<bulkhead_proto::SessionId> {
    bulkhead_proto::SessionId::new(id).map_err(|e| ControlPlaneError::bad_request(e.to_string()))
}

fn unexpected(reply: &Reply) -> ControlPlaneError {
    ControlPlaneError::Internal(format!("unexpected reply {reply:?}"))
}

type R<T> = std::result::Result<Response<T>, Status>;
type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvent, Status>>;

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
        ControlPlaneError::InvalidArgument { param, message } => match param {
            Some(p) => ControlPlaneError::invalid(format!("{field}.{p}"), message),
            None => ControlPlaneError::invalid(field, message),
        },
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
