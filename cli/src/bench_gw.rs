//! `bulkhead bench gateway`: the latency the gateway path adds (auth,
//! context, admission, routing) and the highest request rate it sustains,
//! against calling the worker directly, in one run and one process: a
//! one-node control plane in a temporary directory, a scripted engine (not
//! llama.cpp, see [`crate::scripted_engine`]) registered as a worker, and a
//! gateway.
//!
//! Both paths are driven open-loop: requests leave on a fixed timetable
//! whatever the answers do, so queueing shows in the latencies instead of
//! slowing the generator down (no coordinated omission). A request's latency
//! runs from its send to the last byte: the `Finished` message of the gRPC
//! stream (direct) or the whole JSON body (gateway). The generator shares
//! the machine's cores with everything it measures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_control_plane::{ControlPlaneClient, ControlPlaneConfig};
use bulkhead_gateway::GatewayConfig;
use bulkhead_proto::auth::AttachSecret;
use bulkhead_proto::control as cp;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::{ClusterSecret, GatewayId, RequestId};
use bulkhead_worker::ControlPlaneRegistration;
use bulkhead_worker::gateways::Gateways;
use clap::Args;
use futures::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::scripted_engine::{SCRIPTED_MODEL, ScriptedEngine};

mod load;
use load::*;

#[derive(Args, Debug)]
pub struct BenchGatewayArgs {
    /// Requests per second of the comparison (both paths, open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds each path is measured at --rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Completion tokens per request: the scripted engine's text deltas.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Microseconds between the scripted engine's tokens; 0 sends them at
    /// once (tokio's timer rounds a pause up to 1 ms).
    #[arg(long, default_value_t = 0)]
    token_interval_us: u64,
    /// Most requests in flight per path (also the tenant's max_concurrent);
    /// a request due while this many are in flight is counted as missed.
    #[arg(long, default_value_t = 512)]
    concurrency_max: usize,
    /// Seconds per step of the highest-rate search; 0 skips the search.
    #[arg(long, default_value_t = 3)]
    step_seconds: u64,
    /// A step is sustained when nothing failed or was missed, at least 95%
    /// of its rate completed, and its p99 stayed under this.
    #[arg(long, default_value_t = 50)]
    max_p99_ms: u64,
    /// Rounds of the highest-rate searches, interleaved (direct, gateway,
    /// sessions, then again); the figures reported are each path's median.
    /// Two shared cores vary by 1.25x steps from run to run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also run a real llama.cpp worker in this process with this GGUF model, keeping
    /// --alongside-sessions requests generating while the comparison runs (not during the
    /// highest-rate search): what the engine's threads cost the gateway on shared cores.
    #[arg(long)]
    generate_alongside: Option<std::path::PathBuf>,
    /// Also find the highest sustained rate of requests that each name one of this many
    /// sessions (context read, turns appended), beside the stateless rate.
    #[arg(long)]
    sessions: Option<usize>,
    /// Sessions the real engine keeps generating with --generate-alongside.
    #[arg(long, default_value_t = 8)]
    alongside_sessions: u32,
    /// The engine alongside (--generate-alongside).
    #[command(flatten)]
    engine: crate::worker::EngineArgs,
}

const TENANT: &str = "bench";
const PROMPT: &str = "Say something short about bulkheads.";
/// One of the two ways to the scripted engine.
enum Target {
    Direct {
        worker:
            WorkerClient<InterceptedService<Channel, AttachSecret<bulkhead_proto::auth::Member>>>,
        tokens: u32,
    },
    Gateway {
        http: reqwest::Client,
        url: String,
        authorization: String,
        body: Vec<u8>,
        /// With sessions: each request names one of these sessions, in
        /// turn, so its context is read and its turns appended.
        sessions: Option<(Vec<String>, AtomicUsize)>,
        tokens: u32,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct { .. } => "direct",
            Target::Gateway { sessions: None, .. } => "gateway",
            Target::Gateway { .. } => "sessions",
        }
    }

    /// One request; returns when its last byte arrived.
    async fn call(&self) -> Result<Instant, String> {
        match self {
            Target::Direct { worker, tokens } => {
                let request = pb::GenerateRequest {
                    request_id: RequestId::generate().to_string(),
                    tenant_id: TENANT.into(),
                    model: SCRIPTED_MODEL.into(),
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: PROMPT.into(),
                        ..Default::default()
                    }],
                    max_tokens: *tokens,
                    gateway_id: "bench-direct".into(),
                    ..Default::default()
                };
                let mut stream = worker
                    .clone()
                    .generate(request)
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                let mut finished = None;
                while let Some(item) = stream.next().await {
                    if let pb::GenerateResponse {
                        kind: Some(pb::generate_response::Kind::Finished(_)),
                    } = item.map_err(|s| s.to_string())?
                    {
                        finished = Some(Instant::now());
                    }
                }
                // Read to the trailers, as the gateway does: a stream dropped
                // before them is reset, and h2 closes a connection after
                // 1024 such resets.
                finished.ok_or_else(|| "the stream ended without Finished".into())
            }
            Target::Gateway {
                http,
                url,
                authorization,
                body,
                sessions,
                tokens,
            } => {
                let body = match sessions {
                    None => body.clone(),
                    Some((ids, next)) => {
                        let session = &ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
                        chat_body(*tokens, Some(session))
                    }
                };
                let response = http
                    .post(url.as_str())
                    .header("authorization", authorization.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
                if body.is_empty() {
                    return Err("an empty body".into());
                }
                Ok(Instant::now())
            }
        }
    }
}

/// Waits until a request through the gateway succeeds (the gateway has
/// loaded the key and the worker from the watch stream).
async fn wait_ready(target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match target.call().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("the {} path did not answer within 30 s: {e}", target.name())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn run(args: BenchGatewayArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.seconds == 0 || args.tokens == 0 || args.concurrency_max == 0 {
        bail!("--rate, --seconds, --tokens and --concurrency-max must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let secret = ClusterSecret::generate();
    let cp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let worker_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cp_addr = cp_listener.local_addr()?.to_string();
    let worker_addr = worker_listener.local_addr()?.to_string();
    let api_addr = api_listener.local_addr()?;

    // Stopped in order: the gateway (it returns its allowances), the worker,
    // the control plane.
    let (stop_gateway, gateway_stop) = tokio::sync::oneshot::channel::<()>();
    let (stop_worker, worker_stop) = tokio::sync::watch::channel(false);
    let (stop_cp, cp_stop) = tokio::sync::oneshot::channel::<()>();
    let worker_stopped = move || {
        let mut rx = worker_stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (token_tx, token_rx) = tokio::sync::oneshot::channel();
    let control_plane = tokio::spawn(bulkhead_control_plane::run(
        ControlPlaneConfig {
            node_id: 1,
            advertise: cp_addr.clone(),
            data_dir: dir.path().join("control-plane"),
            init: Some(BTreeMap::from([(1, cp_addr.clone())])),
            nats: None,
            snapshot_logs: 10_000,
            prune_every: bulkhead_control_plane::DEFAULT_PRUNE_EVERY,
            audit_retention_days: 0,
            cluster_secret: secret.clone(),
            local_usage: None,
            on_admin_token: Some(Box::new(move |token| {
                let _ = token_tx.send(token);
            })),
        },
        cp_listener,
        async {
            let _ = cp_stop.await;
        },
    ));
    let token = tokio::time::timeout(Duration::from_secs(30), token_rx)
        .await
        .context("the control plane did not initialize within 30 s")?
        .context("the control plane stopped before it initialized")?;
    let admin = ControlPlaneClient::new(vec![cp_addr.clone()], Some(token));
    // Each role with its own credential, as in a real cluster.
    let gateway_credential = admin.issue_credential("gateway", "bench-gateway").await?;
    let worker_credential = admin.issue_credential("worker", "scripted-1").await?;
    let interval = Duration::from_micros(args.token_interval_us);
    let engine = Arc::new(ScriptedEngine::new("scripted-1", interval));
    let gateways = Gateways::new(&[]);
    let worker = tokio::spawn(engine.serve(worker_listener, gateways.clone(), worker_stopped()));
    let registration = tokio::spawn(bulkhead_worker::registration::register_loop(
        ControlPlaneRegistration::new(vec![cp_addr.clone()], worker_addr.clone()),
        worker_credential,
        gateways,
        tokio::sync::watch::channel(cp::WorkerInfo {
            worker_id: "scripted-1".into(),
            addr: worker_addr.clone(),
            models: vec![SCRIPTED_MODEL.into()],
            slots: 1024,
            ..cp::WorkerInfo::default()
        })
        .1,
        tokio::sync::watch::channel(cp::RegisterWorkerReply::default()).0,
        worker_stopped(),
    ));
    let gateway = tokio::spawn(bulkhead_gateway::run(
        GatewayConfig {
            gateway_id: GatewayId::new("bench-gateway")?,
            control_plane: vec![cp_addr.clone()],
            credential: gateway_credential.clone(),
            default_model: Some(SCRIPTED_MODEL.into()),
            max_body_bytes: bulkhead_gateway::DEFAULT_MAX_BODY_BYTES,
            sandbox_dir: None,
            request_deadline: bulkhead_gateway::DEFAULT_REQUEST_DEADLINE,
        },
        api_listener,
        None,
        async {
            let _ = gateway_stop.await;
        },
    ));

    let concurrency = u32::try_from(args.concurrency_max).unwrap_or(u32::MAX);
    let key = bench_tenant(&admin, TENANT, SCRIPTED_MODEL, concurrency).await?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{worker_addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let direct = Arc::new(Target::Direct {
        worker: WorkerClient::with_interceptor(channel, AttachSecret(gateway_credential)),
        tokens: args.tokens,
    });
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency_max)
        .build()?;
    let gateway_target = |sessions: Option<Vec<String>>| Target::Gateway {
        http: http.clone(),
        url: format!("http://{api_addr}/v1/chat/completions"),
        authorization: format!("Bearer {key}"),
        body: chat_body(args.tokens, None),
        sessions: sessions.map(|ids| (ids, AtomicUsize::new(0))),
        tokens: args.tokens,
    };
    let through_gateway = Arc::new(gateway_target(None));
    let with_sessions = match args.sessions {
        None => None,
        Some(n) => {
            wait_ready(&through_gateway).await?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n.max(1) {
                ids.push(open_session(&http, &format!("http://{api_addr}/v1"), &key).await?);
            }
            Some(Arc::new(gateway_target(Some(ids))))
        }
    };
    wait_ready(&direct).await?;
    wait_ready(&through_gateway).await?;

    let pace = if interval.is_zero() {
        "all at once".to_owned()
    } else {
        format!("one every {} us", args.token_interval_us)
    };
    println!(
        "bulkhead bench gateway: scripted engine, not llama.cpp ({} tokens per request, {pace})",
        args.tokens
    );
    println!(
        "one process: control plane (1 node), scripted worker and gateway on loopback; {} cores shared with the load generator",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );

    // Each path is warmed at the rate right before it is measured: its
    // connections, and for the gateway its allowance and concurrency slots
    // (it gives them back after 2 s idle, and takes slots back one grant,
    // a Raft write, at a time).
    let rate = f64::from(args.rate);
    let warm = Duration::from_secs(2);
    let measured = Duration::from_secs(args.seconds);
    println!(
        "open loop at {} requests/s for {} s per path, each after {} s of warm-up (latency: send to last byte):",
        args.rate,
        args.seconds,
        warm.as_secs()
    );
    let alongside = match &args.generate_alongside {
        None => None,
        Some(model) => {
            let engine = args.engine.config();
            println!(
                "alongside, in this process: a real llama.cpp worker ({}) keeping {} sessions generating; OpenMP environment: {}",
                bulkhead_worker::bench::worker_configuration(&engine),
                args.alongside_sessions,
                bulkhead_worker::bench::openmp_environment()
            );
            let worker =
                bulkhead_worker::bench::BenchWorker::start(model, engine, args.engine.gpu_layers())
                    .await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let load = worker.keep_generating(args.alongside_sessions, 64, stopped);
            // Let every session reach the decode loop.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some((worker, stop, load, Instant::now()))
        }
    };
    print_header();
    open_loop(&direct, rate, warm, args.concurrency_max).await;
    let base = open_loop(&direct, rate, measured, args.concurrency_max).await;
    print_run("direct", &base);
    open_loop(&through_gateway, rate, warm, args.concurrency_max).await;
    let gw = open_loop(&through_gateway, rate, measured, args.concurrency_max).await;
    print_run("gateway", &gw);
    let added = |p: f64| ms(gw.p(p)) - ms(base.p(p));
    println!(
        "added by the gateway: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms; gateway/direct p99 ratio {:.2}",
        added(50.0),
        added(90.0),
        added(99.0),
        ms(gw.p(99.0)) / ms(base.p(99.0)).max(1e-9),
    );
    let clean = gw.errors == 0 && gw.missed == 0 && base.errors == 0 && base.missed == 0;
    let met = clean && added(99.0) < 1.0 && gw.achieved() >= 0.95 * rate;
    println!(
        "target (p99 added < 1 ms at 1,000 requests/s, no errors): {} at {} requests/s",
        if met { "met" } else { "NOT met" },
        args.rate
    );

    if let Some((worker, stop, load, started)) = alongside {
        let _ = stop.send(true);
        let tokens = load.await?;
        println!(
            "the real engine alongside generated {:.1} tokens/s meanwhile",
            tokens as f64 / started.elapsed().as_secs_f64()
        );
        worker.stop().await;
    }

    if args.step_seconds > 0 {
        let max_p99 = Duration::from_millis(args.max_p99_ms);
        println!(
            "highest sustained rate (open-loop steps from {SEARCH_FROM:.0}/s, x{SEARCH_STEP} each; sustained: no errors or misses, >= 95% completed, p99 < {} ms):",
            args.max_p99_ms
        );
        let show = |r: Option<f64>| r.map_or_else(|| "none".to_owned(), |r| format!("{r:.0}/s"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "n/a".into(),
        };
        if let Some(target) = &with_sessions {
            wait_ready(target).await?;
        }
        let (mut direct_all, mut gateway_all, mut sessions_all) =
            (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=args.rounds.max(1) {
            let direct_best = highest_rate(&direct, &args, max_p99).await;
            let gateway_best = highest_rate(&through_gateway, &args, max_p99).await;
            let sessions_best = match &with_sessions {
                Some(target) => highest_rate(target, &args, max_p99).await,
                None => None,
            };
            if args.rounds > 1 {
                println!(
                    "round {round}: direct {}, gateway {}, sessions {}",
                    show(direct_best),
                    show(gateway_best),
                    show(sessions_best)
                );
            }
            direct_all.push(direct_best);
            gateway_all.push(gateway_best);
            sessions_all.push(sessions_best);
        }
        let (direct_best, gateway_best, sessions_best) = (
            median(&direct_all),
            median(&gateway_all),
            median(&sessions_all),
        );
        let of = if args.rounds > 1 {
            format!(" (medians of {} rounds)", args.rounds)
        } else {
            String::new()
        };
        println!(
            "highest sustained{of}: direct {}, gateway {}; ratio {}",
            show(direct_best),
            show(gateway_best),
            ratio(gateway_best, direct_best)
        );
        if with_sessions.is_some() {
            println!(
                "highest sustained with sessions{of} ({} sessions, context read and turns appended): {}; ratio to stateless {} (target >= 0.5)",
                args.sessions.unwrap_or_default(),
                show(sessions_best),
                ratio(sessions_best, gateway_best)
            );
        }
    }

    let _ = stop_gateway.send(());
    gateway.await??;
    let _ = stop_worker.send(true);
    registration.await?;
    worker.await??;
    let _ = stop_cp.send(());
    control_plane.await??;
    Ok(())
}

/// Creates `tenant` on `model` with no limit a benchmark would reach, and
/// returns a new API key of it.
pub(crate) async fn bench_tenant(
    admin: &ControlPlaneClient,
    tenant: &str,
    model: &str,
    max_concurrent: u32,
) -> anyhow::Result<String> {
    admin
        .admin()
        .send(
            cp::Tenant {
                id: tenant.into(),
                plan: "enterprise".into(),
                limits: Some(cp::Limits {
                    daily_tokens: u64::MAX / 4,
                    max_concurrent,
                    max_request_tokens: 1_000_000,
                    ..Default::default()
                }),
                model: model.into(),
                ..Default::default()
            },
            |mut c, req| async move { c.create_tenant(req).await },
        )
        .await?;
    Ok(admin
        .admin()
        .send(
            cp::CreateKeyRequest {
                tenant_id: tenant.into(),
                name: "bench".into(),
                user_id: String::new(),
            },
            |mut c, req| async move { c.create_key(req).await },
        )
        .await?
        .plaintext)
}

/// Opens a session through the API at `api` (`http://HOST:PORT/v1`); returns its id.
pub(crate) async fn open_session(
    http: &reqwest::Client,
    api: &str,
    key: &str,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{api}/sessions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"title": "bench"}))
        .send()
        .await?;
    let status = response.status();
    let created: serde_json::Value = response.json().await?;
    if !status.is_success() {
        bail!("{status}: {created}");
    }
    created["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no session id in {created}"))
}

/// The chat request the gateway path sends: one short user message, in a
/// session when one is named.
fn chat_body(tokens: u32, session: Option<&str>) -> Vec<u8> {
    let session = session.map_or_else(String::new, |s| format!(r#","session_id":"{s}""#));
    format!(
        r#"{{"model":"{SCRIPTED_MODEL}","messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":{tokens}{session}}}"#
    )
    .into_bytes()
}
