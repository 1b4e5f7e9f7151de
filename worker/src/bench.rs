//! `bulkhead bench worker`: the worker measured against a baseline in the
//! same run.
//!
//! 1. Aggregate decode throughput at 1, 4 and 8 concurrent sessions through
//!    the worker's gRPC API, against a raw llama-cpp-2 batched decode loop
//!    with the same model, threads, batch and context parameters.
//! 2. Time to first token of a returning session with a long history whose
//!    slot was evicted to host memory and restored, against the same request
//!    computed from scratch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulkhead_proto::auth::AttachSecret;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::{ClusterSecret, WorkerId, worker::generate_response::Kind};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::sampling::LlamaSampler;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::catalog::ModelSpec;
use crate::engine::EngineConfig;
use crate::error::WorkerError;
use crate::{WorkerConfig, run};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: PathBuf,
    pub engine: EngineConfig,
    pub sessions: Vec<u32>,
    pub max_tokens: u32,
    /// Approximate prompt tokens of the returning session's history.
    pub history_tokens: u32,
    pub repeats: u32,
}

#[derive(Debug, Clone)]
pub struct ThroughputRow {
    pub sessions: u32,
    pub raw_tokens_per_second: f64,
    pub worker_tokens_per_second: f64,
}

#[derive(Debug, Clone)]
pub struct RestoreRow {
    pub history_tokens: u32,
    pub restored_ttft: Duration,
    pub recompute_ttft: Duration,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub throughput: Vec<ThroughputRow>,
    pub restore: RestoreRow,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "decode throughput (tokens/s, aggregate)")?;
        writeln!(
            f,
            "{:>9} {:>12} {:>12} {:>8}",
            "sessions", "raw loop", "worker", "ratio"
        )?;
        for row in &self.throughput {
            writeln!(
                f,
                "{:>9} {:>12.1} {:>12.1} {:>8.3}",
                row.sessions,
                row.raw_tokens_per_second,
                row.worker_tokens_per_second,
                row.worker_tokens_per_second / row.raw_tokens_per_second
            )?;
        }
        let r = &self.restore;
        writeln!(
            f,
            "time to first token, returning session with {} prompt tokens",
            r.history_tokens
        )?;
        writeln!(
            f,
            "restored slot {:.1} ms, full recompute {:.1} ms, ratio {:.3}",
            r.restored_ttft.as_secs_f64() * 1e3,
            r.recompute_ttft.as_secs_f64() * 1e3,
            r.restored_ttft.as_secs_f64() / r.recompute_ttft.as_secs_f64()
        )
    }
}

const BENCH_PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";

fn engine_error(what: &str) -> impl Fn(String) -> WorkerError + '_ {
    move |e| WorkerError::Engine(format!("{what}: {e}"))
}

/// The baseline: a plain llama-cpp-2 batched greedy decode of `sessions`
/// sequences, `max_tokens` each, prompt prefill included (as in the worker).
fn raw_loop(config: &BenchConfig, sessions: u32) -> Result<f64, WorkerError> {
    let backend = crate::catalog::backend()?;
    let params = llama_cpp_2::model::params::LlamaModelParams::default();
    let model = llama_cpp_2::model::LlamaModel::load_from_file(backend, &config.model, &params)
        .map_err(|e| engine_error("loading model")(e.to_string()))?;
    let mut ctx = model
        .new_context(backend, config.engine.context_params())
        .map_err(|e| engine_error("context")(e.to_string()))?;
    let template = model
        .chat_template(None)
        .map_err(|e| engine_error("template")(e.to_string()))?;
    let chat = [LlamaChatMessage::new("user".into(), BENCH_PROMPT.into())
        .map_err(|e| engine_error("message")(e.to_string()))?];
    let text = model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| engine_error("template")(e.to_string()))?;
    let prompt = model.vocab().tokenize(text.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(config.engine.batch as usize, 1);
    let mut samplers: Vec<LlamaSampler> = (0..sessions).map(|_| LlamaSampler::greedy()).collect();
    let started = Instant::now();
    for s in 0..sessions {
        for (i, &t) in prompt.iter().enumerate() {
            batch
                .add(t, i as i32, &[s as i32], i + 1 == prompt.len())
                .map_err(|e| engine_error("batch")(e.to_string()))?;
        }
    }
    ctx.decode(&mut batch)
        .map_err(|e| engine_error("decode")(e.to_string()))?;
    let mut logits_at: Vec<i32> = (0..sessions as i32)
        .map(|s| (s + 1) * prompt.len() as i32 - 1)
        .collect();
    let mut generated = 0u64;
    for step in 0..config.max_tokens {
        let tokens: Vec<_> = samplers
            .iter_mut()
            .zip(&logits_at)
            .map(|(sampler, &at)| sampler.sample(&ctx, at))
            .collect();
        generated += u64::from(sessions);
        if step + 1 == config.max_tokens {
            break;
        }
        batch.clear();
        for (s, &t) in tokens.iter().enumerate() {
            batch
                .add(t, (prompt.len() as u32 + step) as i32, &[s as i32], true)
                .map_err(|e| engine_error("batch")(e.to_string()))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| engine_error("decode")(e.to_string()))?;
        logits_at = (0..sessions as i32).collect();
    }
    Ok(generated as f64 / started.elapsed().as_secs_f64())
}

fn request(
    tenant: &str,
    session: &str,
    messages: &[(&str, String)],
    max_tokens: u32,
    ignore_eos: bool,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        tenant_id: tenant.into(),
        session_id: session.into(),
        messages: messages
            .iter()
            .map(|(role, content)| pb::ChatMessage {
                role: (*role).into(),
                content: content.clone(),
            })
            .collect(),
        max_tokens,
        sampling: Some(pb::Sampling {
            temperature: Some(0.0),
            top_p: None,
            seed: None,
        }),
        ignore_eos,
        ..Default::default()
    }
}

/// Sends one request; returns (time to the first streamed message, completion tokens).
async fn generate(
    client: &mut WorkerClient<InterceptedService<tonic::transport::Channel, AttachSecret>>,
    req: pb::GenerateRequest,
) -> Result<(Duration, u32), WorkerError> {
    let started = Instant::now();
    let mut stream = client
        .generate(req)
        .await
        .map_err(|e| engine_error("generate")(e.to_string()))?
        .into_inner();
    let mut first = None;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|e| engine_error("stream")(e.to_string()))?
    {
        first.get_or_insert_with(|| started.elapsed());
        if let Some(Kind::Finished(f)) = msg.kind {
            let tokens = f.usage.map_or(0, |u| u.completion_tokens);
            return Ok((first.unwrap_or_default(), tokens));
        }
    }
    Err(WorkerError::Engine("stream ended without Finished".into()))
}

fn history(target_tokens: u32) -> Vec<(&'static str, String)> {
    let mut messages = vec![("system", "You are a helpful assistant.".to_owned())];
    // About 60 tokens per turn pair.
    for turn in 0..target_tokens / 60 {
        messages.push((
            "user",
            format!(
                "Tell me fact number {turn} about the history of lighthouses and ships at sea."
            ),
        ));
        messages.push(("assistant", format!("Fact {turn}: lighthouses guided ships along dangerous coasts for centuries, using fire, then oil lamps, then electric light.")));
    }
    messages
}

pub async fn run_bench(config: BenchConfig) -> Result<BenchReport, WorkerError> {
    let grpc = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| engine_error("bind")(e.to_string()))?;
    let addr = grpc
        .local_addr()
        .map_err(|e| engine_error("bind")(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let secret = ClusterSecret::generate();
    let worker_config = WorkerConfig {
        worker_id: WorkerId::new("bench").map_err(|e| engine_error("id")(e.to_string()))?,
        models: vec![ModelSpec {
            name: "bench".into(),
            path: config.model.clone(),
            chat_template: None,
        }],
        adapters: Vec::new(),
        engine: config.engine.clone(),
        gpu_layers: 0,
        usage: crate::UsageSink::None,
        spool_dir: std::env::temp_dir().join("bulkhead-bench-spool"),
        max_body_bytes: 1 << 20,
        cluster_secret: Some(secret.clone()),
        control_plane: None,
    };
    let server = tokio::spawn(run(worker_config, grpc, None, async move {
        let _ = stop_rx.await;
    }));
    let endpoint = format!("http://{addr}");
    let mut client = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| engine_error("endpoint")(e.to_string()))?
            .connect()
            .await
        {
            Ok(channel) => {
                break WorkerClient::with_interceptor(channel, AttachSecret(secret.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    client
        .health(pb::HealthRequest {})
        .await
        .map_err(|e| engine_error("health")(e.to_string()))?;

    let mut throughput = Vec::new();
    for &sessions in &config.sessions {
        let mut raw = 0.0f64;
        let mut worker = 0.0f64;
        for _ in 0..config.repeats {
            let c = config.clone();
            raw = raw.max(
                tokio::task::spawn_blocking(move || raw_loop(&c, sessions))
                    .await
                    .map_err(|e| engine_error("raw loop")(e.to_string()))??,
            );
            let started = Instant::now();
            let mut tasks = Vec::new();
            for s in 0..sessions {
                let mut client = client.clone();
                let req = request(
                    "bench",
                    &format!("tp-{sessions}-{s}-{}", uuid::Uuid::new_v4()),
                    &[("user", BENCH_PROMPT.into())],
                    config.max_tokens,
                    true,
                );
                tasks.push(tokio::spawn(
                    async move { generate(&mut client, req).await },
                ));
            }
            let mut tokens = 0u64;
            for t in tasks {
                tokens += u64::from(t.await.map_err(|e| engine_error("task")(e.to_string()))??.1);
            }
            worker = worker.max(tokens as f64 / started.elapsed().as_secs_f64());
        }
        throughput.push(ThroughputRow {
            sessions,
            raw_tokens_per_second: raw,
            worker_tokens_per_second: worker,
        });
    }

    // Returning session: prime its slot, push it to host memory by filling
    // every device slot with other sessions, then come back.
    let mut messages = history(config.history_tokens);
    let count = client
        .count_tokens(pb::CountTokensRequest {
            model: String::new(),
            messages: messages
                .iter()
                .map(|(r, c)| pb::ChatMessage {
                    role: (*r).into(),
                    content: c.clone(),
                })
                .collect(),
        })
        .await
        .map_err(|e| engine_error("count")(e.to_string()))?
        .into_inner();
    let mut restored = Vec::new();
    let mut recompute = Vec::new();
    for round in 0..config.repeats {
        let session = format!("returning-{round}");
        generate(&mut client, request("bench", &session, &messages, 1, false)).await?;
        for s in 0..config.engine.slots {
            generate(
                &mut client,
                request(
                    "bench",
                    &format!("filler-{round}-{s}"),
                    &[("user", format!("Say hi {s}"))],
                    1,
                    false,
                ),
            )
            .await?;
        }
        messages.push(("user", "And one more fact, please.".into()));
        restored.push(
            generate(&mut client, request("bench", &session, &messages, 1, false))
                .await?
                .0,
        );
        // Another tenant: no slot, no donor, so the whole prompt is computed.
        recompute.push(
            generate(
                &mut client,
                request(&format!("cold-{round}"), &session, &messages, 1, false),
            )
            .await?
            .0,
        );
        messages.pop();
    }
    restored.sort();
    recompute.sort();
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(BenchReport {
        throughput,
        restore: RestoreRow {
            history_tokens: count.prompt_tokens,
            restored_ttft: restored[restored.len() / 2],
            recompute_ttft: recompute[recompute.len() / 2],
        },
    })
}
