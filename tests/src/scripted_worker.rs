//! A scripted worker, not llama.cpp, for the tests of the gateway's
//! server-side tool loop only: the loop's steps need a model that calls a
//! given tool with given arguments, which the 135M demo model cannot be
//! made to do. It registers with a control plane like a real worker (a
//! worker credential, checked gateway credentials) and serves the model
//! [`SCRIPTED_MODEL`]. For each `Generate`:
//!
//! - when the last message is a tool result, it answers
//!   `"Done. The tool said: <the result>"`;
//! - else, when the request offers tools and the last user message is a
//!   script, `{"call": "<tool>", "arguments": {...}}`, it writes that call
//!   the way Hermes-style models do (`<tool_call>{...}</tool_call>`);
//! - else it answers `"Nothing to do."`.
//!
//! Usage is a word count; it publishes no usage events, so it says nothing
//! about billing. Nothing it says is generated.

use std::pin::Pin;
use std::sync::Arc;

use bulkhead_proto::control as cp;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_server::{Worker, WorkerServer};
use futures::Stream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The model the scripted worker serves.
pub const SCRIPTED_MODEL: &str = "scripted-tools";

/// A running scripted worker; it stops when dropped.
pub struct ScriptedWorker {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ScriptedWorker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ScriptedWorker {
    /// Starts serving on a loopback port and registers with the control
    /// plane at `control_plane` with a worker credential made by `admin`.
    pub async fn start(
        control_plane: &str,
        admin: &bulkhead_client::ControlPlaneClient,
        name: &str,
    ) -> anyhow::Result<Self> {
        let credential = admin.issue_credential("worker", name).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let gateways = bulkhead_worker::gateways::Gateways::new(&[]);
        let service = WorkerServer::with_interceptor(Scripted(Arc::from(name)), gateways.clone());
        let serve = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        let info = cp::WorkerInfo {
            worker_id: name.into(),
            addr: addr.clone(),
            models: vec![SCRIPTED_MODEL.into()],
            slots: 8,
            ..cp::WorkerInfo::default()
        };
        let register = tokio::spawn(bulkhead_worker::registration::register_loop(
            bulkhead_worker::registration::ControlPlaneRegistration::new(
                vec![control_plane.to_owned()],
                addr,
            ),
            credential,
            gateways,
            tokio::sync::watch::channel(info).1,
            tokio::sync::watch::channel(cp::RegisterWorkerReply::default()).0,
            std::future::pending(),
        ));
        Ok(Self {
            tasks: vec![serve, register],
        })
    }
}

struct Scripted(Arc<str>);

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

fn words(messages: &[pb::ChatMessage]) -> u32 {
    let n: usize = messages
        .iter()
        .map(|m| m.content.split_whitespace().count() + 4)
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the script says to answer to `req`.
fn answer(req: &pb::GenerateRequest) -> String {
    let Some(last) = req.messages.last() else {
        return "Nothing to do.".into();
    };
    if last.role == "tool" {
        return format!("Done. The tool said: {}", last.content);
    }
    let script: Option<Value> = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| serde_json::from_str(&m.content).ok());
    match script {
        Some(s) if !req.tools.is_empty() && s.get("call").is_some() => format!(
            "{}\n{}\n{}",
            bulkhead_proto::tools::CALL_OPEN,
            json!({"name": s["call"], "arguments": s["arguments"]}),
            bulkhead_proto::tools::CALL_CLOSE
        ),
        _ => "Nothing to do.".into(),
    }
}

#[tonic::async_trait]
impl Worker for Scripted {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        let text = answer(&req);
        let delta = pb::GenerateResponse {
            kind: Some(pb::generate_response::Kind::Delta(pb::TextDelta {
                text: text.clone(),
            })),
        };
        let finished = pb::GenerateResponse {
            kind: Some(pb::generate_response::Kind::Finished(pb::Finished {
                finish_reason: "stop".into(),
                usage: Some(pb::Usage {
                    prompt_tokens: words(&req.messages),
                    completion_tokens: u32::try_from(text.split_whitespace().count())
                        .unwrap_or(u32::MAX),
                    cached_tokens: 0,
                }),
                event_id: format!("scripted-{}", req.request_id),
                request_id: req.request_id,
                time_to_first_token_ms: 0,
            })),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([
            Ok(delta),
            Ok(finished),
        ]))))
    }

    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        Ok(Response::new(pb::CountTokensResponse {
            prompt_tokens: words(&request.into_inner().messages),
            context_window: 1 << 16,
        }))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            worker_id: self.0.to_string(),
            ready: true,
            models: vec![pb::ModelInfo {
                name: SCRIPTED_MODEL.into(),
                adapters: Vec::new(),
                context_window: 1 << 16,
            }],
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse {
            worker_id: self.0.to_string(),
            ..Default::default()
        }))
    }
}
