//! Shared set-up for the worker's tests: a worker on 127.0.0.1:0 with the
//! real demo model, a real nats-server, and small HTTP/gRPC helpers.
#![allow(dead_code)]

pub mod gguf;
#[path = "../../../tests/src/model.rs"]
mod model;
#[path = "../../../tests/src/nats.rs"]
mod nats;
pub use model::demo_model;
#[allow(unused_imports)]
pub use nats::Nats;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::{Duration, Instant};

use bulkhead_proto::auth::AttachSecret;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::{Credential, WorkerId};
use bulkhead_worker::{AdapterSpec, EngineConfig, ModelSpec, UsageSink, WorkerConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub const MODEL_NAME: &str = "smollm2";

pub struct Options {
    pub slots: u32,
    pub context: u32,
    pub host_cache_bytes: u64,
    pub models: Vec<ModelSpec>,
    pub adapters: Vec<AdapterSpec>,
    pub model_dirs: Vec<PathBuf>,
    pub memory_budget: Option<u64>,
    pub usage: UsageSink,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub max_body_bytes: usize,
    pub http_token: Option<String>,
    pub max_contexts: u32,
}

impl Options {
    /// The defaults with `slots` KV slots.
    pub fn with_slots(slots: u32) -> Self {
        Self {
            slots,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            slots: 4,
            context: 1024,
            host_cache_bytes: 256 << 20,
            models: vec![ModelSpec {
                name: MODEL_NAME.into(),
                path: demo_model(),
                chat_template: None,
            }],
            adapters: Vec::new(),
            model_dirs: Vec::new(),
            memory_budget: None,
            usage: UsageSink::None,
            spool_dir: None,
            spool_max_bytes: bulkhead_worker::usage::DEFAULT_SPOOL_MAX_BYTES,
            max_body_bytes: 64 * 1024,
            http_token: None,
            max_contexts: 8,
        }
    }
}

pub struct TestWorker {
    pub http: String,
    pub grpc: String,
    /// The gateway credential the worker's gRPC port accepts (this worker
    /// has no control plane to list gateways).
    pub secret: Credential,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), bulkhead_worker::WorkerError>>>,
    _spool: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

impl TestWorker {
    pub async fn start(options: Options) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr: SocketAddr = grpc.local_addr().unwrap();
        let http_addr: SocketAddr = http.local_addr().unwrap();
        let (spool_holder, spool_dir) = match options.spool_dir {
            Some(dir) => (None, dir),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let secret = Credential::generate_with("bkg_");
        let config = WorkerConfig {
            worker_id: WorkerId::new(format!("test-{}", grpc_addr.port())).unwrap(),
            models: options.models,
            adapters: options.adapters,
            model_dirs: options.model_dirs,
            memory_budget: options.memory_budget,
            engine: EngineConfig {
                slots: options.slots,
                context_window: options.context,
                batch: 256,
                prefill_chunk: 128,
                threads: 2,
                host_cache_bytes: options.host_cache_bytes,
                max_contexts: options.max_contexts,
                ..EngineConfig::default()
            },
            gpu_layers: 0,
            usage: options.usage,
            spool_dir,
            spool_max_bytes: options.spool_max_bytes,
            max_body_bytes: options.max_body_bytes,
            http_token: options.http_token,
            credential: None,
            gateway_credentials: vec![secret.clone()],
            control_plane: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bulkhead_worker::run(config, grpc, Some(http), async move {
            let _ = stop_rx.await;
        }));
        let worker = Self {
            http: format!("http://{http_addr}"),
            grpc: format!("http://{grpc_addr}"),
            secret,
            stop: Some(stop_tx),
            task: Some(task),
            _spool: spool_holder,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = worker
                .client
                .get(format!("{}/health", worker.http))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "worker did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
    }

    /// A gRPC client that sends the gateway credential.
    pub async fn grpc_client(
        &self,
    ) -> WorkerClient<InterceptedService<Channel, AttachSecret<bulkhead_proto::auth::Member>>> {
        let channel = Endpoint::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        WorkerClient::with_interceptor(channel, AttachSecret(self.secret.clone()))
    }

    /// A gRPC client without the secret (every call must be refused).
    pub async fn grpc_client_without_secret(&self) -> WorkerClient<Channel> {
        WorkerClient::connect(self.grpc.clone()).await.unwrap()
    }

    /// GETs `path` from the worker's HTTP port.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .unwrap()
    }

    /// GETs `path` from the worker's HTTP port and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    /// Opens a gRPC `Generate` stream (with the gateway credential).
    pub async fn generate(&self, req: pb::GenerateRequest) -> Streaming<pb::GenerateResponse> {
        self.grpc_client()
            .await
            .generate(req)
            .await
            .unwrap()
            .into_inner()
    }

    /// The worker's gRPC `Stats`.
    pub async fn stats(&self) -> pb::StatsResponse {
        self.grpc_client()
            .await
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// POSTs a chat completion; returns (status, JSON body).
    pub async fn chat(&self, tenant: &str, session: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/chat/completions", self.http))
            .header("X-Tenant-ID", tenant)
            .json(&body);
        if let Some(session) = session {
            req = req.header("X-Session-ID", session);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Graceful stop: in-flight work finishes, the usage spool gets a last flush.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Writes the demo LoRA adapter `noisy` (for [`MODEL_NAME`]) into `dir`.
pub fn noisy_adapter(dir: &std::path::Path) -> Vec<AdapterSpec> {
    let path = dir.join("noisy.gguf");
    gguf::demo_lora(&path, 4);
    vec![AdapterSpec {
        model: MODEL_NAME.into(),
        name: "noisy".into(),
        path,
    }]
}

/// The question every answer test asks: its answer names Paris.
pub fn capital_question() -> Value {
    json!([{"role": "user", "content": "What is the capital of France?"}])
}

/// A greedy chat request body.
pub fn greedy(messages: Value, max_tokens: u32) -> Value {
    json!({"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
}

pub fn content(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn usage(body: &Value, field: &str) -> u64 {
    if field == "cached_tokens" {
        return body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    }
    body["usage"][field].as_u64().unwrap()
}

pub fn grpc_request(
    tenant: &str,
    session: &str,
    user_text: &str,
    max_tokens: u32,
    ignore_eos: bool,
) -> pb::GenerateRequest {
    let messages = [("user", user_text.to_owned())];
    pb::GenerateRequest {
        model: MODEL_NAME.into(),
        ..bulkhead_worker::bench::request(tenant, session, &messages, max_tokens, ignore_eos)
    }
}

/// The value of a Prometheus sample line that starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
