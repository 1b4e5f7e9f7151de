//! The openraft type configuration and Raft's network over tonic.
//!
//! Raft messages are openraft's own types, serde-encoded inside the `Raft`
//! gRPC service of `control.proto`; snapshots travel as a client stream. The
//! same service answers `ReadIndex` (a follower's linearizable read asks the
//! leader for the log id to wait for) and `Propose` (a node forwards a
//! command to the leader). Every call carries the cluster secret and the
//! service refuses any call without it.

use std::future::Future;

use bulkhead_proto::ClusterSecret;
use bulkhead_proto::control as pb;
use bulkhead_proto::control::raft_client::RaftClient;
use futures::StreamExt;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, ReadPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::state::Command;
use crate::storage::StateMachine;

pub use crate::raft_types::*;
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

type RpcErr = RPCError<TypeConfig>;

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(format!("encoding: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(b).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

fn status_to_rpc(s: Status) -> RpcErr {
    if s.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::new(&s))
    } else {
        RPCError::Network(NetworkError::new(&s))
    }
}

fn reply_data<T: DeserializeOwned>(reply: pb::RaftReply) -> Result<T, NetworkError<TypeConfig>> {
    if !reply.error.is_empty() {
        return Err(NetworkError::from_string(reply.error));
    }
    serde_json::from_slice(&reply.data).map_err(|e| NetworkError::new(&e))
}

pub(crate) use bulkhead_client::channel;

/// The largest Raft message a node sends or accepts. tonic's default of
/// 4 MiB is less than one AppendEntries can carry (entries of usage
/// batches), and a message over it failed as a network error that openraft
/// retried forever: replication stalled for good. With at most
/// [`MAX_PAYLOAD_ENTRIES`] entries per message this leaves ample room.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Most log entries in one AppendEntries (openraft's default is 300).
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// A Raft client whose message limits match the server's.
pub(crate) fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// Creates Raft connections to other nodes; every call carries the cluster
/// secret.
pub struct Network {
    pub secret: ClusterSecret,
}

pub struct Connection {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    secret: ClusterSecret,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            target,
            client: channel(&node.addr).ok().map(raft_client),
            secret: self.secret.clone(),
        }
    }
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            Unreachable::from_string(format!("node {} has an unusable address", self.target))
        })
    }

    /// A request carrying the cluster secret.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        self.secret.attach(&mut req);
        req
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let data = encode(&rpc).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let mut req = self.request(pb::RaftPayload { data });
        req.set_timeout(option.hard_ttl());
        let reply = c
            .append_entries(req)
            .await
            .map_err(status_to_rpc)?
            .into_inner();
        Ok(reply_data(reply)?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let mut c = self.client()?;
        let data = encode(&rpc).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let mut req = self.request(pb::RaftPayload { data });
        req.set_timeout(option.hard_ttl());
        let reply = c.vote(req).await.map_err(status_to_rpc)?.into_inner();
        Ok(reply_data(reply)?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut c = self.client()?;
        let head = encode(&(vote, snapshot.meta))
            .map_err(|s| StreamingError::Network(NetworkError::new(&s)))?;
        let mut chunks = vec![pb::RaftPayload { data: head }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(1 << 20)
                .map(|c| pb::RaftPayload { data: c.to_vec() }),
        );
        let reply = c
            .snapshot(self.request(futures::stream::iter(chunks)))
            .await
            .map_err(|s| StreamingError::Network(NetworkError::new(&s)))?
            .into_inner();
        Ok(reply_data(reply)?)
    }
}

/// The server side of Raft's traffic. Served behind the cluster secret's
/// interceptor (see the node's `run`).
pub struct RaftService {
    pub raft: Raft,
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<pb::RaftReply, Status> {
    Ok(match r {
        Ok(v) => pb::RaftReply {
            data: encode(&v)?,
            error: String::new(),
        },
        Err(e) => pb::RaftReply {
            data: Vec::new(),
            error: e.to_string(),
        },
    })
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().data)?;
        Ok(Response::new(reply(self.raft.append_entries(rpc).await)?))
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftReply>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&req.into_inner().data)?;
        Ok(Response::new(reply(self.raft.vote(rpc).await)?))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<pb::RaftPayload>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let mut stream = req.into_inner();
        let head = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&head.data)?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        Ok(Response::new(reply(
            self.raft.install_full_snapshot(vote, snapshot).await,
        )?))
    }

    async fn read_index(
        &self,
        _req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let result = self
            .raft
            .get_read_linearizer(ReadPolicy::ReadIndex)
            .await
            .map(|lin| *lin.read_log_id().log_id());
        Ok(Response::new(reply(result)?))
    }

    async fn propose(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let command: Command = decode(&req.into_inner().data)?;
        let result = self.raft.client_write(command).await.map(|r| r.data);
        Ok(Response::new(reply(result)?))
    }
}

#[cfg(test)]
mod fuzz {
    use bulkhead_proto::fuzz;
    use proptest::prelude::*;

    use crate::state::Command;

    /// Variant names of `Command`, so that inputs reach past the tag.
    const VARIANTS: &[&str] = &[
        "InitAdmin",
        "RotateAdmin",
        "CreateCredential",
        "RevokeCredential",
        "CreateTenant",
        "UpdateTenant",
        "DeleteTenant",
        "Audited",
        "ApplyTenants",
        "RequestBurst",
        "DecideBurst",
        "CreateWebhook",
        "DeleteWebhook",
        "RecordAttempt",
        "PublishSnippet",
        "DeleteSnippet",
        "GrantShare",
        "RevokeShare",
        "UseShared",
        "CreateKey",
        "RevokeKey",
        "Grant",
        "Return",
        "ApplyUsage",
        "Reclaim",
        "RegisterWorker",
        "CreateSession",
        "AppendTurns",
        "AppendTurnsBatch",
        "DeleteSession",
        "PruneTurns",
        "SetExportKey",
        "TouchKey",
    ];

    fn command() -> impl Strategy<Value = serde_json::Value> {
        (prop::sample::select(VARIANTS), fuzz::json()).prop_map(|(tag, body)| {
            let mut object = serde_json::Map::new();
            object.insert(tag.to_owned(), body);
            serde_json::Value::Object(object)
        })
    }

    proptest! {
        #![proptest_config(fuzz::config())]

        /// A Raft payload from the network: a command, or a clear
        /// InvalidArgument; never a panic.
        #[test]
        fn fuzz_raft_command_decoder(bytes in fuzz::body(command())) {
            match super::decode::<Command>(&bytes) {
                Ok(command) => {
                    let _ = command.to_string();
                }
                Err(status) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    prop_assert!(status.message().starts_with("decoding"));
                }
            }
        }
    }
}
