//! Wire types shared by every bulkhead component: the generated gRPC code, the
//! usage event, and the id newtypes that keep tenants, sessions and workers apart.
//!
//! Nothing here holds state or does I/O; conversions between domain and wire
//! types live next to the wire type they convert.

pub mod auth;
pub mod ids;
pub mod openai;
pub mod usage;

/// Generated code, nested as the proto packages are (`bulkhead.worker.v1`,
/// `bulkhead.control.v1`) so that cross-package references resolve.
pub mod generated {
    pub mod bulkhead {
        pub mod worker {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic, missing_docs)]
                tonic::include_proto!("bulkhead.worker.v1");
            }
        }
        pub mod control {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic, missing_docs)]
                tonic::include_proto!("bulkhead.control.v1");
            }
        }
    }
}

/// The control plane's services (`proto/control.proto`).
pub use generated::bulkhead::control::v1 as control;
/// The worker's service and the usage event (`proto/worker.proto`).
pub use generated::bulkhead::worker::v1 as worker;

pub use auth::ClusterSecret;
pub use ids::{EventId, GatewayId, IdError, RequestId, SessionId, TenantId, UserId, WorkerId};

/// The JetStream stream that carries usage events.
pub const USAGE_STREAM: &str = "BULKHEAD_USAGE";
/// Subject prefix of usage events; the tenant id follows.
pub const USAGE_SUBJECT_PREFIX: &str = "bulkhead.usage";
