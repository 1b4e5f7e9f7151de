//! openraft's type configuration for bulkhead: commands in, replies out,
//! nodes by address, and the aliases of openraft's types under it.

use crate::state::{Command, Reply};

openraft::declare_raft_types!(
    /// bulkhead's Raft types: commands in, replies out, nodes by address.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// An open snapshot file (`snapshot.rs`).
pub type SnapshotData = std::fs::File;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
