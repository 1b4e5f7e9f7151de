//! What a control-plane node's parts share: its Raft and state machine
//! handles, and how they write (a proposal through Raft) and read
//! linearizably. Used by the gRPC services and by the leader's loops (usage
//! consumer, reclaim, webhook delivery).

use std::time::Duration;

use bulkhead_proto::ClusterSecret;
use bulkhead_proto::control as pb;
use openraft::ReadPolicy;
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use tonic::Request;

use crate::error::ControlPlaneError;
use crate::raft::{LogId, Raft, channel, decode};
use crate::state::{Command, Reply};
use crate::storage::StateMachine;

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

/// A fresh random secret with a prefix (`bk_` for keys, `bka_` for admin).
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", bulkhead_proto::auth::random_hex(32))
}

/// The node's time, in milliseconds since the Unix epoch: what the leader
/// stamps its commands with ([`bulkhead_proto::clock`], which drills and
/// `bulkhead bench soak` move ahead).
pub(crate) fn now_ms() -> i64 {
    bulkhead_proto::clock::now_ms()
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
    crate::raft::check_entry_size(&command)?;
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            Reply::Rejected(r) => Err(r.into()),
            reply => Ok(reply),
        },
        Err(e) => Err(raft_error(e)),
    }
}

pub(crate) fn raft_error<E>(
    e: openraft::errors::RaftError<crate::raft::TypeConfig, E>,
) -> ControlPlaneError
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
