//! Wire types shared by every bulkhead component: the generated gRPC code, the
//! usage event, and the id newtypes that keep tenants, sessions and workers apart.
//!
//! Nothing here holds state or does I/O; conversions between domain and wire
//! types live next to the wire type they convert.

pub mod ids;
pub mod usage;

/// Generated code for `proto/worker.proto`.
pub mod worker {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("bulkhead.worker.v1");
}

pub use ids::{EventId, GatewayId, IdError, RequestId, SessionId, TenantId, UserId, WorkerId};

/// The JetStream stream that carries usage events.
pub const USAGE_STREAM: &str = "BULKHEAD_USAGE";
/// Subject prefix of usage events; the tenant id follows.
pub const USAGE_SUBJECT_PREFIX: &str = "bulkhead.usage";
