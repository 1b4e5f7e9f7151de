//! The `Cluster` gRPC service: the cluster's status, open to anyone who
//! reaches the port (like `/health`).

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use super::*;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ControlPlaneService {
    async fn cluster_status(&self, _req: Request<pb::ClusterStatusRequest>) -> R<pb::ClusterState> {
        Ok(Response::new(self.status()))
    }
}
