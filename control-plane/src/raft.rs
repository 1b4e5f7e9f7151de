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
/// retried forever: replication stalled for good. Every message is kept far
/// below it: AppendEntries by [`MAX_APPEND_BYTES`], one entry by
/// [`MAX_ENTRY_BYTES`], snapshots by streaming them in chunks.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Most log entries in one AppendEntries (openraft's default is 300).
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// The bytes of entries one AppendEntries carries: a longer run of entries
/// is sent as its longest prefix under this (at least one entry), and
/// openraft sends the rest next ([`AppendEntriesResponse::PartialSuccess`]).
pub const MAX_APPEND_BYTES: usize = 4 << 20;

/// How long an AppendEntries may take: openraft's TTL (the heartbeat
/// interval, 100 ms) at least a second, plus a second per 8 MiB it carries.
/// A follower catching up on large entries writes each message to disk
/// before it answers; under openraft's bare 100 ms every large message timed
/// out and was sent again, forever, and the follower never caught up.
fn append_timeout(ttl: std::time::Duration, bytes: usize) -> std::time::Duration {
    let nanos = bytes as u128 * 1_000_000_000 / (8u128 << 20);
    let carry = u64::try_from(nanos).unwrap_or(u64::MAX);
    ttl.max(std::time::Duration::from_secs(1)) + std::time::Duration::from_nanos(carry)
}

/// The largest command the log takes. A bigger one is refused when it is
/// proposed, with a clear error, instead of being written and then never
/// replicating.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// The bytes `value` takes as JSON, counted no further than `limit + 1`.
pub(crate) fn json_size_up_to<T: Serialize>(value: &T, limit: usize) -> usize {
    struct Counter {
        bytes: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.bytes += b.len();
            if self.bytes > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { bytes: 0, limit };
    // An error here is the counter's own stop at the limit.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.bytes
}

/// Refuses a command over [`MAX_ENTRY_BYTES`] before it reaches the log.
pub(crate) fn check_entry_size(command: &Command) -> Result<(), crate::error::ControlPlaneError> {
    let bytes = json_size_up_to(command, MAX_ENTRY_BYTES);
    if bytes > MAX_ENTRY_BYTES {
        return Err(crate::error::ControlPlaneError::bad_request(format!(
            "the change ({command}) is over {} MiB, the most one Raft log entry holds; send it in parts",
            MAX_ENTRY_BYTES >> 20
        )));
    }
    Ok(())
}

/// `rpc` encoded under [`MAX_APPEND_BYTES`]: as it is, or, when its entries
/// take more, its longest prefix of entries that fits (at least one), with
/// the log id of the last entry sent.
fn encode_capped(
    mut rpc: AppendEntriesRequest<TypeConfig>,
) -> Result<(Vec<u8>, Option<LogId>), Status> {
    let data = encode(&rpc)?;
    if data.len() <= MAX_APPEND_BYTES || rpc.entries.len() <= 1 {
        return Ok((data, None));
    }
    let mut bytes = 0;
    let mut keep = 0;
    for entry in &rpc.entries {
        bytes += json_size_up_to(entry, MAX_APPEND_BYTES);
        if bytes > MAX_APPEND_BYTES && keep > 0 {
            break;
        }
        keep += 1;
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    Ok((encode(&rpc)?, last))
}

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
    /// Counts AppendEntries cut short by `MAX_APPEND_BYTES` (a metric).
    pub append_splits: prometheus_client::metrics::counter::Counter,
}

pub struct Connection {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    secret: ClusterSecret,
    append_splits: prometheus_client::metrics::counter::Counter,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            target,
            client: channel(&node.addr).ok().map(raft_client),
            secret: self.secret.clone(),
            append_splits: self.append_splits.clone(),
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
        let (data, cut_at) =
            encode_capped(rpc).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        if data.len() > MAX_RAFT_MESSAGE_BYTES {
            // Cannot happen for entries under MAX_ENTRY_BYTES; say so plainly
            // rather than as an opaque transport error.
            let e = format!(
                "one log entry to node {} is {} bytes, over the {} MiB a Raft message may carry",
                self.target,
                data.len(),
                MAX_RAFT_MESSAGE_BYTES >> 20
            );
            tracing::error!("{e}");
            return Err(RPCError::Network(NetworkError::from_string(e)));
        }
        if cut_at.is_some() {
            self.append_splits.inc();
        }
        let timeout = append_timeout(option.hard_ttl(), data.len());
        let mut req = self.request(pb::RaftPayload { data });
        req.set_timeout(timeout);
        let reply = c
            .append_entries(req)
            .await
            .map_err(status_to_rpc)?
            .into_inner();
        let response: AppendEntriesResponse<TypeConfig> = reply_data(reply)?;
        Ok(match (response, cut_at) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
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
        let file = snapshot.snapshot;
        let bytes = file
            .metadata()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .len();
        let head = encode(&(vote, snapshot.meta, bytes))
            .map_err(|s| StreamingError::Network(NetworkError::new(&s)))?;
        // The head, then the file in chunks as they are read: the receiver
        // checks it got `bytes` of them, so a read that fails here cannot
        // install a cut-off snapshot there.
        let chunks =
            futures::stream::unfold(Some(tokio::fs::File::from_std(file)), |file| async move {
                use tokio::io::AsyncReadExt;
                let mut file = file?;
                let mut data = vec![0; SNAPSHOT_CHUNK_BYTES];
                match file.read(&mut data).await {
                    Ok(0) => None,
                    Ok(n) => {
                        data.truncate(n);
                        Some((pb::RaftPayload { data }, Some(file)))
                    }
                    Err(e) => {
                        tracing::warn!("reading the snapshot to send: {e}");
                        None
                    }
                }
            });
        let stream = futures::stream::iter([pb::RaftPayload { data: head }]).chain(chunks);
        let reply = c
            .snapshot(self.request(stream))
            .await
            .map_err(|s| StreamingError::Network(NetworkError::new(&s)))?
            .into_inner();
        Ok(reply_data(reply)?)
    }
}

/// Writes a snapshot stream's chunks to `part` and answers their bytes.
async fn receive(
    stream: &mut Streaming<pb::RaftPayload>,
    part: &std::path::Path,
) -> std::io::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(part).await?;
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        file.write_all(&chunk.data).await?;
        n += chunk.data.len() as u64;
    }
    file.sync_all().await?;
    Ok(n)
}

/// The server side of Raft's traffic. Served behind the cluster secret's
/// interceptor (see the node's `run`).
pub struct RaftService {
    pub raft: Raft,
    /// Where a snapshot being received is written.
    pub snapshots: crate::snapshot::SnapshotDir,
}

/// The bytes of one message of a snapshot stream.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

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
        let (vote, meta, bytes): (Vote, SnapshotMeta, u64) = decode(&head.data)?;
        // To a file as it arrives, not into memory.
        let part = self.snapshots.part("received");
        let received = receive(&mut stream, &part).await;
        let file = match received {
            Ok(n) if n == bytes => std::fs::File::open(&part),
            Ok(n) => Err(std::io::Error::other(format!(
                "the snapshot stream ended after {n} of {bytes} bytes"
            ))),
            Err(e) => Err(e),
        };
        let file = file.map_err(|e| {
            let _ = std::fs::remove_file(&part);
            Status::internal(format!("receiving a snapshot: {e}"))
        })?;
        let snapshot = Snapshot {
            meta,
            snapshot: file,
        };
        // Installing copies it; this part is no longer needed either way.
        let result = self.raft.install_full_snapshot(vote, snapshot).await;
        let _ = std::fs::remove_file(&part);
        Ok(Response::new(reply(result)?))
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
        check_entry_size(&command)?;
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
        "RecordToolStep",
        "PutFile",
        "DeleteFile",
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
        "PruneAudit",
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

#[cfg(test)]
mod cap {
    use openraft::entry::RaftEntry;

    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(1, 1, index),
            Command::AppendTurns {
                tenant_id: "t".into(),
                session_id: "s".into(),
                user_id: String::new(),
                owner: String::new(),
                turns: vec![("user".into(), "x".repeat(bytes))],
                now_ms: 0,
            },
        )
    }

    fn rpc(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    fn sent(data: &[u8]) -> Vec<u64> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(data).unwrap();
        rpc.entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn append_entries_are_cut_to_the_byte_cap_and_never_below_one_entry() {
        // Small entries go as they are, in one message.
        let (data, cut) = encode_capped(rpc((1..=64).map(|i| entry(i, 1_000)).collect())).unwrap();
        assert_eq!((sent(&data).len(), cut), (64, None));
        // 1.5 MiB entries: two fit in 4 MiB, the rest follow.
        let big = 3 << 19;
        let (data, cut) = encode_capped(rpc((1..=5).map(|i| entry(i, big)).collect())).unwrap();
        assert!(data.len() <= MAX_APPEND_BYTES, "{}", data.len());
        assert_eq!(sent(&data), vec![1, 2]);
        assert_eq!(cut.map(|l| l.index), Some(2));
        // One entry over the cap still goes, alone (it is under MAX_ENTRY_BYTES).
        let (data, cut) = encode_capped(rpc(vec![entry(7, 5 << 20), entry(8, 10)])).unwrap();
        assert_eq!(sent(&data), vec![7]);
        assert_eq!(cut.map(|l| l.index), Some(7));
    }

    #[test]
    fn a_large_append_has_the_time_to_be_written() {
        let ttl = std::time::Duration::from_millis(100);
        assert_eq!(append_timeout(ttl, 0), std::time::Duration::from_secs(1));
        assert_eq!(
            append_timeout(ttl, 8 << 20),
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn a_command_over_the_entry_limit_is_refused_before_the_log() {
        let Entry { payload, .. } = entry(1, MAX_ENTRY_BYTES + 1);
        let openraft::EntryPayload::Normal(command) = payload else {
            unreachable!()
        };
        let e = check_entry_size(&command).unwrap_err();
        assert!(e.to_string().contains("64 MiB"), "{e}");
        let Entry { payload, .. } = entry(1, 1_000);
        let openraft::EntryPayload::Normal(command) = payload else {
            unreachable!()
        };
        assert!(check_entry_size(&command).is_ok());
    }
}
