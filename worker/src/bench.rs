//! `bulkhead bench worker`: the worker measured against a baseline in the
//! same run.
//!
//! 1. Aggregate decode throughput at 1, 4 and 8 concurrent sessions through
//!    the worker's gRPC API, against a raw llama-cpp-2 batched decode loop
//!    with the same model at llama.cpp's own defaults, run in a process of
//!    its own ([`raw_loop_report`]; the caller starts that process and hands
//!    its report in). Both configurations are printed beside the ratio.
//! 2. Time to first token of a returning session with a long history whose
//!    slot was evicted to host memory and restored, against the same request
//!    computed from scratch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulkhead_proto::auth::AttachSecret;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::{Credential, WorkerId, worker::generate_response::Kind};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::sampling::LlamaSampler;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::catalog::{ModelSpec, saturating_u32};
use crate::engine::EngineConfig;
use crate::error::WorkerError;
use crate::{WorkerConfig, run};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: PathBuf,
    pub engine: EngineConfig,
    pub gpu_layers: u32,
    pub sessions: Vec<u32>,
    pub max_tokens: u32,
    /// Approximate prompt tokens of the returning session's history.
    pub history_tokens: u32,
    pub repeats: u32,
}

#[derive(Debug, Clone)]
pub struct ThroughputRow {
    pub raw: RawLoopRow,
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
    pub baseline_configuration: String,
    pub worker_configuration: String,
    pub throughput: Vec<ThroughputRow>,
    pub restore: RestoreRow,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "raw loop (own process): {}", self.baseline_configuration)?;
        writeln!(f, "worker (this process):  {}", self.worker_configuration)?;
        writeln!(f, "decode throughput (tokens/s, aggregate)")?;
        writeln!(
            f,
            "{:>9} {:>12} {:>14} {:>12} {:>8}",
            "sessions", "raw loop", "raw KV layout", "worker", "ratio"
        )?;
        for row in &self.throughput {
            writeln!(
                f,
                "{:>9} {:>12.1} {:>14} {:>12.1} {:>8.3}",
                row.raw.sessions,
                row.raw.tokens_per_second,
                row.raw.kv_layout,
                row.worker_tokens_per_second,
                row.worker_tokens_per_second / row.raw.tokens_per_second
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

/// The baseline's figure at one number of sessions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RawLoopRow {
    pub sessions: u32,
    pub tokens_per_second: f64,
    /// The KV cache layout that gave it: "unified" or "per-sequence".
    pub kv_layout: String,
}

/// What the baseline measured and how it was set up. It is meant to run in
/// a process of its own (`bulkhead bench raw-loop`), with no environment of
/// ours, so that nothing the worker does to itself applies to it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RawLoopReport {
    pub configuration: String,
    pub rows: Vec<RawLoopRow>,
}

impl RawLoopReport {
    /// The figure at `sessions`; an error when the baseline did not measure it.
    pub fn row(&self, sessions: u32) -> Result<RawLoopRow, WorkerError> {
        self.rows
            .iter()
            .find(|r| r.sessions == sessions)
            .cloned()
            .ok_or_else(|| WorkerError::Engine(format!("the raw loop has no figure at {sessions}")))
    }
}

/// The baseline: a plain llama-cpp-2 batched greedy decode of `sessions`
/// sequences, `max_tokens` each, prompt prefill included (as in the worker),
/// at llama.cpp's own defaults (`llama_context_default_params`: n_batch
/// 2048, n_ubatch 512, flash attention auto, f16 KV), a context that fits
/// every sequence, and one thread per core (as llama.cpp's tools choose).
/// Both KV layouts llama.cpp offers are run, one unified cache (what
/// llama-server sets up for parallel sequences) and one stream per sequence
/// (`llama_context_default_params`), and the faster one counts: the best of
/// `repeats` runs of each.
pub fn raw_loop_report(
    model_path: &std::path::Path,
    sessions: &[u32],
    max_tokens: u32,
    repeats: u32,
) -> Result<RawLoopReport, WorkerError> {
    let backend = crate::catalog::backend()?;
    let params = llama_cpp_2::model::params::LlamaModelParams::default();
    let model = llama_cpp_2::model::LlamaModel::load_from_file(backend, model_path, &params)
        .map_err(|e| engine_error("loading model")(e.to_string()))?;
    let template = model
        .chat_template(None)
        .map_err(|e| engine_error("template")(e.to_string()))?;
    let chat = [LlamaChatMessage::new("user".into(), BENCH_PROMPT.into())
        .map_err(|e| engine_error("message")(e.to_string()))?];
    let text = model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| engine_error("template")(e.to_string()))?;
    let prompt = model.vocab().tokenize(text.as_bytes(), true, true);
    let threads =
        std::thread::available_parallelism().map_or(4, |n| i32::try_from(n.get()).unwrap_or(4));
    let defaults = llama_cpp_2::context::params::LlamaContextParams::default();
    let configuration = format!(
        "llama.cpp defaults: n_batch {}, n_ubatch {}, f16 KV, flash attention auto; \
         n_ctx = sessions x (prompt + max_tokens), {threads} threads (one per core), \
         the faster of a unified and a per-sequence KV cache; OpenMP environment: {}",
        defaults.n_batch(),
        defaults.n_ubatch(),
        openmp_environment()
    );
    let mut rows = Vec::new();
    for &n in sessions {
        let needed = n * (saturating_u32(prompt.len()) + max_tokens);
        let mut best = (0.0f64, "");
        for (unified, layout) in [(true, "unified"), (false, "per-sequence")] {
            for _ in 0..repeats.max(1) {
                let ctx_params = llama_cpp_2::context::params::LlamaContextParams::default()
                    .with_n_ctx(std::num::NonZeroU32::new(needed.max(512)))
                    .with_n_seq_max(n)
                    .with_n_threads(threads)
                    .with_n_threads_batch(threads)
                    .with_kv_unified(unified);
                let mut ctx = model
                    .new_context(backend, ctx_params)
                    .map_err(|e| engine_error("context")(e.to_string()))?;
                let rate = decode_loop(&mut ctx, &prompt, n, max_tokens)?;
                if rate > best.0 {
                    best = (rate, layout);
                }
            }
        }
        rows.push(RawLoopRow {
            sessions: n,
            tokens_per_second: best.0,
            kv_layout: best.1.into(),
        });
    }
    Ok(RawLoopReport {
        configuration,
        rows,
    })
}

/// The OpenMP variables this process runs under, or "none".
pub fn openmp_environment() -> String {
    let set: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OMP_") || k.starts_with("GOMP_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if set.is_empty() {
        "none set (libgomp defaults)".into()
    } else {
        set.join(" ")
    }
}

/// Tokens per second of one greedy batched decode in `ctx`.
fn decode_loop(
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
    prompt: &[llama_cpp_2::token::LlamaToken],
    sessions: u32,
    max_tokens: u32,
) -> Result<f64, WorkerError> {
    let mut batch = LlamaBatch::new((prompt.len() * sessions as usize).max(sessions as usize), 1);
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
    for step in 0..max_tokens {
        let tokens: Vec<_> = samplers
            .iter_mut()
            .zip(&logits_at)
            .map(|(sampler, &at)| sampler.sample(ctx, at))
            .collect();
        generated += u64::from(sessions);
        if step + 1 == max_tokens {
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

/// A greedy request (temperature 0) for the worker's default model, as the
/// benchmark sends it; the worker's tests send the same.
pub fn request(
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
                ..Default::default()
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
    client: &mut Client,
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

/// How the worker under measurement is set up, in words.
pub fn worker_configuration(engine: &EngineConfig) -> String {
    format!(
        "{} slots x {} tokens (kv_unified false), n_batch {}, n_ubatch {}, prefill chunk {}, {} threads; OpenMP environment: {}",
        engine.slots,
        engine.context_window,
        engine.batch,
        engine.batch,
        engine.prefill_chunk,
        engine.threads,
        openmp_environment()
    )
}

type Client = WorkerClient<
    InterceptedService<tonic::transport::Channel, AttachSecret<bulkhead_proto::auth::Member>>,
>;

/// A worker serving one model (named `bench`) on loopback in this process,
/// not registered anywhere, with a client of its gRPC API.
pub struct BenchWorker {
    pub client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl BenchWorker {
    pub async fn start(
        model: &std::path::Path,
        engine: EngineConfig,
        gpu_layers: u32,
    ) -> Result<Self, WorkerError> {
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| engine_error("bind")(e.to_string()))?;
        let addr = grpc
            .local_addr()
            .map_err(|e| engine_error("bind")(e.to_string()))?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // The bench stands in for a gateway: the worker accepts its credential.
        let secret = Credential::generate_with("bkg_");
        let worker_config = WorkerConfig {
            worker_id: WorkerId::new("bench").map_err(|e| engine_error("id")(e.to_string()))?,
            models: vec![ModelSpec {
                name: "bench".into(),
                path: model.to_path_buf(),
                chat_template: None,
            }],
            adapters: Vec::new(),
            model_dirs: Vec::new(),
            memory_budget: None,
            engine,
            gpu_layers,
            usage: crate::UsageSink::None,
            spool_dir: std::env::temp_dir().join("bulkhead-bench-spool"),
            spool_max_bytes: crate::usage::DEFAULT_SPOOL_MAX_BYTES,
            max_body_bytes: 1 << 20,
            http_token: None,
            credential: None,
            gateway_credentials: vec![secret.clone()],
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
        Ok(Self {
            client,
            stop,
            server,
        })
    }

    /// Starts `sessions` loops that each keep one request of `max_tokens`
    /// generating, one after another, until `stop` turns true; the returned
    /// future gives the completion tokens they made.
    pub fn keep_generating(
        &self,
        sessions: u32,
        max_tokens: u32,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = Result<u64, WorkerError>> + 'static {
        let tasks: Vec<_> = (0..sessions)
            .map(|s| {
                let (mut client, stop) = (self.client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut tokens = 0u64;
                    while !*stop.borrow() {
                        let req = request(
                            "load",
                            &format!("load-{s}"),
                            &[("user", BENCH_PROMPT.into())],
                            max_tokens,
                            true,
                        );
                        tokens += u64::from(generate(&mut client, req).await?.1);
                    }
                    Ok::<_, WorkerError>(tokens)
                })
            })
            .collect();
        async move {
            let mut tokens = 0;
            for t in tasks {
                tokens += t.await.map_err(|e| engine_error("task")(e.to_string()))??;
            }
            Ok(tokens)
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// Measures the worker; `baseline` is the raw loop's report from its own process.
pub async fn run_bench(
    config: BenchConfig,
    baseline: RawLoopReport,
) -> Result<BenchReport, WorkerError> {
    let worker =
        BenchWorker::start(&config.model, config.engine.clone(), config.gpu_layers).await?;
    let mut client = worker.client.clone();

    let mut throughput = Vec::new();
    for &sessions in &config.sessions {
        let raw = baseline.row(sessions)?;
        let mut worker = 0.0f64;
        for _ in 0..config.repeats {
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
            raw,
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
                    ..Default::default()
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
    worker.stop().await;
    Ok(BenchReport {
        baseline_configuration: baseline.configuration,
        worker_configuration: worker_configuration(&config.engine),
        throughput,
        restore: RestoreRow {
            history_tokens: count.prompt_tokens,
            restored_ttft: restored[restored.len() / 2],
            recompute_ttft: recompute[recompute.len() / 2],
        },
    })
}
