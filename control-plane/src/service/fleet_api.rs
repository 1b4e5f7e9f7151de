//! The `Fleet` gRPC service: what workers call, with a worker credential
//! (checked by the service's one interceptor, `callers::Caller::Worker`).

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use super::*;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for ControlPlaneService {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> R<pb::RegisterWorkerReply> {
        let r = req.into_inner();
        let w = r.worker.unwrap_or_default();
        bulkhead_proto::WorkerId::new(w.worker_id.as_str())
            .map_err(|e| ControlPlaneError::bad_request(e.to_string()))?;
        if w.addr.is_empty() || (w.models.is_empty() && w.loading.is_empty() && w.files.is_empty())
        {
            return Err(ControlPlaneError::bad_request(
                "a worker registers with its address and at least one model, loaded, loading or on file"
                    ,
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
            gateway_credentials: crate::credentials::hashes_of(
                &view,
                crate::credentials::Role::Gateway,
            )?,
            metrics_credentials: crate::credentials::hashes_of(
                &view,
                crate::credentials::Role::Metrics,
            )?,
        }))
    }

    async fn report_usage(&self, req: Request<pb::UsageBatch>) -> R<pb::UsageApplied> {
        ControlPlaneService::report_usage(self, req).await
    }
}
