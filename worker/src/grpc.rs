//! The worker's gRPC service (`bulkhead.worker.v1.Worker`): what gateways call.

use std::pin::Pin;
use std::sync::Arc;

use bulkhead_proto::WorkerId;
use bulkhead_proto::worker as pb;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::request::{ChatMessage, Event, GenerateParams};

pub struct WorkerService {
    pub(crate) engine: Arc<Engine>,
    pub(crate) worker_id: WorkerId,
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

pub(crate) fn model_infos(engine: &Engine) -> Vec<pb::ModelInfo> {
    engine
        .catalog()
        .models()
        .iter()
        .map(|m| pb::ModelInfo {
            name: m.name.clone(),
            adapters: m.adapters.clone(),
            context_window: m.context_window,
        })
        .collect()
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let params = GenerateParams::try_from(request.into_inner()).inspect_err(|e| {
            tracing::debug!(error = %e, "generate request rejected");
        })?;
        let span = crate::request::span(&params);
        let (_, events) = span.in_scope(|| {
            self.engine.submit(params).inspect_err(|e| {
                tracing::warn!(error = %e, "request refused");
            })
        })?;
        let stream = UnboundedReceiverStream::new(events).map(move |event| match event {
            Event::Delta(text) => Ok(pb::GenerateResponse {
                kind: Some(pb::generate_response::Kind::Delta(pb::TextDelta { text })),
            }),
            Event::Finished(finished) => Ok(pb::GenerateResponse {
                kind: Some(pb::generate_response::Kind::Finished(finished.into())),
            }),
            Event::Failed(err) => {
                span.in_scope(|| tracing::warn!(error = %err, "request failed"));
                Err(Status::from(err))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        let req = request.into_inner();
        let messages = req
            .messages
            .into_iter()
            .map(ChatMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let (prompt_tokens, context_window) =
            self.engine.catalog().count_tokens(&req.model, &messages)?;
        Ok(Response::new(pb::CountTokensResponse {
            prompt_tokens,
            context_window,
        }))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            worker_id: self.worker_id.to_string(),
            ready: true,
            models: model_infos(&self.engine),
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.engine.snapshot();
        let mut tenants: Vec<pb::TenantKv> = s
            .tenants
            .iter()
            .map(|(tenant, kv)| pb::TenantKv {
                tenant_id: tenant.to_string(),
                device_bytes: kv.device_bytes,
                host_bytes: kv.host_bytes,
                device_slots: kv.device_slots,
                host_slots: kv.host_slots,
                active: kv.active_requests,
                peak_active: kv.peak_active_requests,
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(Response::new(pb::StatsResponse {
            worker_id: self.worker_id.to_string(),
            active_requests: s.active_requests,
            queued_requests: s.queued_requests,
            device_slots_used: s.device_slots_used,
            device_slots_total: s.device_slots_total,
            host_slots: s.host_slots,
            host_bytes: s.host_bytes,
            generated_tokens_total: s.generated_tokens_total,
            decode_tokens_per_second: s.decode_tokens_per_second,
            tenants,
            devices: crate::catalog::devices(),
        }))
    }
}
