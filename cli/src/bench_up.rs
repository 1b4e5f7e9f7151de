//! `bulkhead bench up`: tokens per second end to end, through the gateway
//! of a `bulkhead up` running in a process of its own with a real model,
//! against the plain llama.cpp decode loop (`bench raw-loop`, in a process
//! of its own too, at llama.cpp's defaults) in the same run.
//!
//! Each client is one chat session: it opens one (`POST /v1/sessions`),
//! then sends `--turns` requests in it (`session_id`) one after another,
//! each a new user message, so every turn after the first reads the session's history from the control plane, reuses the
//! session's KV slot, and appends its turns. Every answer is generated to
//! `max_tokens` (`ignore_eos`), as the raw loop does; tokens per second is
//! the completion tokens the answers' `usage` reports over the wall time of
//! all clients, so the gateway's work, the session reads and appends and the
//! prompt prefills of later turns all count against bulkhead. The raw loop
//! generates all turns' tokens per sequence in one go: as many tokens, at
//! the same context depths (decoding slows as the context grows).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_control_plane::ControlPlaneClient;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::bench_gw::{bench_tenant, open_session};

#[derive(Args, Debug)]
pub struct BenchUpArgs {
    /// GGUF model to serve and measure (default: the demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients (sessions) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<u32>,
    /// Completion tokens per answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Requests each client sends in its session.
    #[arg(long, default_value_t = 3)]
    turns: u32,
    /// Repeats per measurement (the best is kept, on both sides).
    #[arg(long, default_value_t = 2)]
    repeats: u32,
    /// Rounds of the whole comparison (raw loop, then a fresh `up`); each
    /// round's ratio is printed and the median reported. Two shared cores
    /// vary by 10-20% from run to run, on both sides.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

const TENANT: &str = "bench";
const MODEL: &str = "bench";
const PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";

/// A `bulkhead up` child process, killed when dropped.
struct Up {
    _child: tokio::process::Child,
    api: String,
    control_plane: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Up {
    async fn start(model: &std::path::Path, slots: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("up.log"))?;
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--api", "127.0.0.1:0", "--control-plane", "127.0.0.1:0"])
            .args(["--worker", "127.0.0.1:0", "--no-console"])
            .args(["--slots", &slots.to_string()])
            .arg("--model")
            .arg(format!("{MODEL}={}", model.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting bulkhead up")?;
        let stdout = child.stdout.take().context("up's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut control_plane) = (None, None);
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(v) = line.strip_prefix("API: ") {
                    api = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("control plane: ") {
                    control_plane = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("admin token: ") {
                    return anyhow::Ok(v.trim().to_owned());
                }
            }
            bail!("bulkhead up stopped before it was up")
        };
        let token = tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .context("bulkhead up was not up within 120 s")?
            .with_context(|| format!("see {}", dir.path().join("up.log").display()))?;
        // Up's later lines are read and dropped: a closed pipe would fail its prints.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            _child: child,
            api: api.context("up printed no API address")?,
            control_plane: control_plane.context("up printed no control-plane address")?,
            token,
            _dir: dir,
        })
    }
}

/// One client: opens a session (none without `turns`), then asks `turns`
/// times in it (once without); returns the completion tokens the answers'
/// usage reports.
async fn client(
    http: reqwest::Client,
    api: String,
    key: String,
    turns: Option<u32>,
    max_tokens: u32,
) -> anyhow::Result<u64> {
    let session = match turns {
        None => None,
        Some(_) => Some(open_session(&http, &api, &key).await?),
    };
    let url = format!("{api}/chat/completions");
    let mut tokens = 0;
    let turns = turns.unwrap_or(1);
    for turn in 0..turns {
        let content = if turn == 0 {
            PROMPT.to_owned()
        } else {
            format!("Go on with part {} of the story.", turn + 1)
        };
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "session_id": session,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
        });
        let response = http.post(&url).bearer_auth(&key).json(&body).send().await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("{status}: {answer}");
        }
        tokens += answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    }
    Ok(tokens)
}

pub async fn run(args: BenchUpArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(bulkhead_worker::demo_model_path);
    if !model.is_file() {
        bail!(
            "no model at {}; run scripts/setup.sh or pass --model",
            model.display()
        );
    }
    if args.clients.is_empty() || args.clients.contains(&0) || args.turns == 0 {
        bail!("--clients must each be at least 1, and --turns at least 1");
    }
    let rounds = args.rounds.max(1);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); args.clients.len()];
    for round in 1..=rounds {
        if rounds > 1 {
            println!("round {round} of {rounds}:");
        }
        for (i, ratio) in one_round(&args, &model).await?.into_iter().enumerate() {
            ratios[i].push(ratio);
        }
    }
    if rounds > 1 {
        for (clients, mut r) in args.clients.iter().zip(ratios) {
            r.sort_by(f64::total_cmp);
            let shown: Vec<String> = r.iter().map(|x| format!("{x:.3}")).collect();
            println!(
                "{clients} client(s): median ratio {:.3} over {rounds} rounds ({})",
                r[r.len() / 2],
                shown.join(", ")
            );
        }
    }
    Ok(())
}

/// One comparison: the raw loop in its own process, then a fresh `up`
/// measured the same way; returns the ratio for each `--clients` entry.
async fn one_round(args: &BenchUpArgs, model: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    let repeats = args.repeats.max(1);
    // The raw loop decodes every turn's tokens in one go, so its sequences
    // reach the same context depth as the sessions' (a deeper context
    // decodes slower) and it makes the same number of tokens.
    let baseline =
        crate::worker::baseline(model, &args.clients, args.max_tokens * args.turns, repeats)
            .await?;

    let slots = args.clients.iter().copied().max().unwrap_or(1).max(8);
    let up = Up::start(model, slots).await?;
    let admin = ControlPlaneClient::new(vec![up.control_plane.clone()], Some(up.token.clone()));
    let key = bench_tenant(&admin, TENANT, MODEL, slots).await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    // The gateway learns the key and the worker from its watch stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = client(http.clone(), up.api.clone(), key.clone(), None, 4).await {
        if Instant::now() > deadline {
            bail!("the gateway did not answer within 60 s: {e:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "raw loop (own process): {} completion tokens per sequence in one go (all turns' worth); {}",
        args.max_tokens * args.turns,
        baseline.configuration
    );
    println!(
        "bulkhead up (own process): gateway -> worker ({slots} slots, engine defaults), one-node control plane; \
         OpenMP environment: {}",
        bulkhead_worker::bench::openmp_environment()
    );
    println!(
        "each client: one session, {} turns of {} completion tokens (ignore_eos), answers read whole",
        args.turns, args.max_tokens
    );
    println!(
        "{:>8} {:>12} {:>14} {:>12} {:>8}",
        "clients", "raw loop", "raw KV layout", "through up", "ratio"
    );
    let mut ratios = Vec::new();
    for &clients in &args.clients {
        let mut best = 0.0f64;
        for _ in 0..repeats {
            let started = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    tokio::spawn(client(
                        http.clone(),
                        up.api.clone(),
                        key.clone(),
                        Some(args.turns),
                        args.max_tokens,
                    ))
                })
                .collect();
            let mut tokens = 0;
            for t in tasks {
                tokens += t.await??;
            }
            best = best.max(tokens as f64 / started.elapsed().as_secs_f64());
        }
        let raw = baseline.row(clients)?;
        println!(
            "{:>8} {:>12.1} {:>14} {:>12.1} {:>8.3}",
            clients,
            raw.tokens_per_second,
            raw.kv_layout,
            best,
            best / raw.tokens_per_second
        );
        ratios.push(best / raw.tokens_per_second);
    }
    drop(up);
    Ok(ratios)
}
