//! A scripted engine, not llama.cpp: a stand-in `bulkhead.worker.v1.Worker`
//! gRPC service for `bulkhead bench gateway` only, so that the gateway path
//! is what is measured and not a model. For every `Generate` it streams
//! `max_tokens` fixed text deltas (" tok"), one every `token_interval` on a
//! fixed timetable (none when zero), then one `Finished` with exact usage:
//! prompt tokens are a simple count (words of every message plus four per
//! message), completion tokens the deltas sent.
//!
//! It checks the gateway's credential on every call, like the real worker, and
//! publishes no usage events (the benchmark's tenant has a quota that the
//! outstanding allowances never exhaust). It must never be used to answer a
//! real client: nothing here is generated.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulkhead_proto::RequestId;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_server::{Worker, WorkerServer};
use futures::Stream;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The model name the scripted engine serves.
pub const SCRIPTED_MODEL: &str = "scripted";
/// The text of every delta.
const DELTA: &str = " tok";
/// The context window it claims (the count is made up anyway).
const CONTEXT_WINDOW: u32 = 1 << 20;

/// The scripted stand-in for a worker. See the module documentation.
pub struct ScriptedEngine {
    worker_id: String,
    token_interval: Duration,
    generated: AtomicU64,
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

/// Words of every message plus four template tokens per message.
fn prompt_tokens(messages: &[pb::ChatMessage]) -> u32 {
    let words: usize = messages
        .iter()
        .map(|m| m.content.split_whitespace().count() + 4)
        .sum();
    u32::try_from(words).unwrap_or(u32::MAX)
}

fn delta() -> pb::GenerateResponse {
    pb::GenerateResponse {
        kind: Some(pb::generate_response::Kind::Delta(pb::TextDelta {
            text: DELTA.to_owned(),
        })),
    }
}

impl ScriptedEngine {
    pub fn new(worker_id: impl Into<String>, token_interval: Duration) -> Self {
        Self {
            worker_id: worker_id.into(),
            token_interval,
            generated: AtomicU64::new(0),
        }
    }

    /// Serves the engine on `listener` (with `TCP_NODELAY`, so that no
    /// frame of a stream waits for the peer's delayed ACK), refusing calls
    /// from gateways other than `gateways`, until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        gateways: bulkhead_worker::gateways::Gateways,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(WorkerServer::with_interceptor(ArcEngine(self), gateways))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

/// The service tonic owns: the engine behind an `Arc`.
struct ArcEngine(Arc<ScriptedEngine>);

#[tonic::async_trait]
impl Worker for ArcEngine {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        if req.max_tokens == 0 {
            return Err(Status::invalid_argument("max_tokens must be at least 1"));
        }
        let engine = &self.0;
        let n = req.max_tokens;
        let request_id = if req.request_id.is_empty() {
            RequestId::generate().to_string()
        } else {
            req.request_id
        };
        let finished = pb::GenerateResponse {
            kind: Some(pb::generate_response::Kind::Finished(pb::Finished {
                finish_reason: "length".into(),
                usage: Some(pb::Usage {
                    prompt_tokens: prompt_tokens(&req.messages),
                    completion_tokens: n,
                    cached_tokens: 0,
                }),
                event_id: format!("scripted-{request_id}"),
                request_id,
                time_to_first_token_ms: 0,
            })),
        };
        engine.generated.fetch_add(u64::from(n), Ordering::Relaxed);
        let interval = engine.token_interval;
        if interval.is_zero() {
            let items = (0..n)
                .map(|_| Ok(delta()))
                .chain(std::iter::once(Ok(finished)));
            return Ok(Response::new(Box::pin(futures::stream::iter(items))));
        }
        // A fixed timetable from the call's arrival: token i is due at
        // start + (i + 1) * interval (tokio's timer rounds up to 1 ms).
        let start = tokio::time::Instant::now();
        let stream =
            futures::stream::unfold((0u32, Some(finished)), move |(sent, finished)| async move {
                if sent < n {
                    tokio::time::sleep_until(start + interval * (sent + 1)).await;
                    Some((Ok(delta()), (sent + 1, finished)))
                } else {
                    finished.map(|f| (Ok(f), (sent, None)))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        Ok(Response::new(pb::CountTokensResponse {
            prompt_tokens: prompt_tokens(&request.into_inner().messages),
            context_window: CONTEXT_WINDOW,
        }))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            worker_id: self.0.worker_id.clone(),
            ready: true,
            models: vec![pb::ModelInfo {
                name: SCRIPTED_MODEL.into(),
                adapters: Vec::new(),
                context_window: CONTEXT_WINDOW,
            }],
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse {
            worker_id: self.0.worker_id.clone(),
            generated_tokens_total: self.0.generated.load(Ordering::Relaxed),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_count_is_words_plus_four_per_message() {
        let m = |c: &str| pb::ChatMessage {
            role: "user".into(),
            content: c.into(),
            ..Default::default()
        };
        assert_eq!(prompt_tokens(&[m("say something short"), m("")]), 11);
    }
}
