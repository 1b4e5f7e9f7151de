//! `bulkhead bench soak`: millions of usage events (through NATS, as workers
//! send them) and session turns (through the gateways' member API) into a
//! three-node cluster on loopback, then what bounds its state:
//! - each node's memory and files after the load;
//! - a snapshot of a node's database: build time, size, and the memory it
//!   took;
//! - a follower that lost its disk, replaced by an empty node: its catch-up
//!   time and memory;
//! - the cluster restarted some days later (its clock moved ahead), once
//!   retention has pruned, and again after 10% more load, to show freed
//!   space is reused rather than the files growing.
//!
//! The usage events/s are reported against a raw JetStream consumer's, as
//! in `bench control-plane`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_proto::worker::UsageEvent;
use clap::Args;

use crate::bench_cp::{publish, rate, usage_events, wait_for_ledger};
use crate::loopback::Loopback;

#[derive(Args, Debug)]
pub struct BenchSoakArgs {
    /// Usage events to push through NATS.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Session turns to append.
    #[arg(long, default_value_t = 1_000_000)]
    turns: u64,
    /// Tenants the load is spread over.
    #[arg(long, default_value_t = 10)]
    tenants: u64,
    /// Characters of text in each turn.
    #[arg(long, default_value_t = 200)]
    turn_chars: usize,
}

/// The tenants' retention (their plan's, overridden): turns, prompt counts
/// and per-user rows older than this are pruned.
const RETENTION_DAYS: u32 = 7;
/// How far the restarted cluster's clock is moved ahead: past the retention
/// and past the event ids' dedup horizon (8 days).
const AHEAD_DAYS: i64 = 10;
/// Users per tenant, and days back, the events are spread over.
const USERS: u64 = 100;
const DAYS: u64 = 7;
const TURNS_PER_SESSION: u64 = 100;
/// Appends (of a user and an assistant turn) in one batch, and batches in
/// flight at once, like gateways' group commits.
const APPENDS_PER_BATCH: u64 = 64;
const WRITERS: u64 = 8;
const DAY_MS: i64 = 86_400_000;

/// Event `i` of a run (`run` keeps ids apart), finished `i % DAYS` days
/// before `now_ms`.
fn event(run: &str, i: u64, tenants: u64, now_ms: i64) -> (String, UsageEvent) {
    let tenant = i % tenants;
    let user = (i / tenants) % USERS;
    let event = UsageEvent {
        event_id: format!("{run}-{i}"),
        request_id: format!("{run}-{i}"),
        tenant_id: format!("soak-{tenant}"),
        user_id: format!("user-{user}"),
        model: "smollm2".into(),
        prompt_tokens: 120,
        completion_tokens: 40,
        duration_ms: 900 + i % 300,
        worker_id: "soak-worker".into(),
        finish_reason: "stop".into(),
        finished_at_ms: now_ms - i64::try_from(i % DAYS).unwrap_or(0) * DAY_MS,
        prompt_preview: format!("question {} about the quarterly numbers", i % 50),
        ..Default::default()
    };
    (event.subject(), event)
}

/// Appends `turns` turns (pairs of user and assistant turns, 100 a session)
/// spread over the tenants, through `gateway`'s member API.
async fn write_turns(
    gateway: &Arc<ControlPlaneClient>,
    run: &str,
    tenants: u64,
    turns: u64,
    chars: usize,
) -> anyhow::Result<()> {
    let appends = turns / 2;
    let batches = appends.div_ceil(APPENDS_PER_BATCH);
    let text = "x".repeat(chars);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (gateway, text, run) = (Arc::clone(gateway), text.clone(), run.to_owned());
        writers.spawn(async move {
            let mut b = w;
            while b < batches {
                let from = b * APPENDS_PER_BATCH;
                let to = (from + APPENDS_PER_BATCH).min(appends);
                let req = pb::AppendTurnsBatchRequest {
                    appends: (from..to)
                        .map(|a| {
                            let session = a * 2 / TURNS_PER_SESSION;
                            let turn = |role: &str| pb::Turn {
                                role: role.into(),
                                content: text.clone(),
                                ..Default::default()
                            };
                            pb::AppendTurnsRequest {
                                tenant_id: format!("soak-{}", session % tenants),
                                session_id: format!("{run}-{session}"),
                                user_id: format!("user-{}", session % USERS),
                                turns: vec![turn("user"), turn("assistant")],
                                owner: String::new(),
                            }
                        })
                        .collect(),
                };
                let reply = gateway
                    .member()
                    .send(
                        req,
                        |mut c, req| async move { c.append_turns_batch(req).await },
                    )
                    .await?;
                if let Some(e) = reply.results.iter().find(|r| !r.error.is_empty()) {
                    bail!("an append was refused: {}", e.error);
                }
                b += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(())
}

/// A process's resident and peak resident memory, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of all files below `path`.
fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| disk_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Prints each running node's memory and files.
fn report(cluster: &Loopback, when: &str) {
    println!("{when}:");
    for (id, node) in &cluster.nodes {
        let Some(pid) = cluster.pid(*id) else {
            continue;
        };
        let (rss, peak) = memory_mib(pid);
        println!(
            "  node {id}: RSS {rss} MiB (peak {peak} MiB); redb file {:.0} MiB; snapshot {:.0} MiB; data dir {:.0} MiB",
            mib(disk_bytes(&node.data_dir.join("control-plane.redb"))),
            mib(disk_bytes(&node.data_dir.join("snapshots"))),
            mib(disk_bytes(&node.data_dir)),
        );
    }
}

/// Waits until every running node has applied what the leader had when
/// asked; returns the leader's id.
async fn settled(cluster: &Loopback, within: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    let running: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| cluster.pid(*id).is_some())
        .collect();
    let mut target = None;
    loop {
        if started.elapsed() > within {
            bail!("the nodes did not settle within {within:?}");
        }
        if target.is_none() {
            for id in &running {
                if let Ok(s) = cluster.status(*id).await
                    && s.leader_id == *id
                {
                    target = Some((s.leader_id, s.last_log_index));
                }
            }
        }
        if let Some((leader, index)) = target {
            let mut behind = false;
            for id in &running {
                behind |= cluster
                    .status(*id)
                    .await
                    .map_or(true, |s| s.last_applied < index);
            }
            if !behind {
                return Ok(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: BenchSoakArgs) -> anyhow::Result<()> {
    if args.tenants == 0 {
        bail!("--tenants must be at least 1");
    }
    let mut cluster = Loopback::start(3, &[]).await?;
    let tenants: Vec<String> = (0..args.tenants).map(|t| format!("soak-{t}")).collect();
    for id in &tenants {
        cluster
            .admin
            .admin()
            .send(
                pb::Tenant {
                    id: id.clone(),
                    plan: "pro".into(),
                    limits: Some(pb::Limits {
                        daily_tokens: u64::MAX / 4,
                        ..Default::default()
                    }),
                    feature_overrides: Some(pb::FeatureOverrides {
                        retention_days: Some(RETENTION_DAYS),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                |mut c, req| async move { c.create_tenant(req).await },
            )
            .await?;
    }
    let gateway = Arc::new(
        cluster
            .admin
            .as_caller(cluster.admin.issue_credential("gateway", "soak").await?),
    );
    println!(
        "soak: 3 control-plane nodes and nats-server on loopback; {} usage events and {} turns of {} characters over {} tenants ({USERS} users each, events over the last {DAYS} days); retention {RETENTION_DAYS} days",
        args.events, args.turns, args.turn_chars, args.tenants
    );
    let hour = Duration::from_secs(3600);

    // The load: usage events through NATS, then turns.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let js = usage_events(&cluster, &tenants, 8, args.events, |i| {
        event("soak", i, args.tenants, now_ms)
    })
    .await?;
    let started = Instant::now();
    write_turns(&gateway, "soak", args.tenants, args.turns, args.turn_chars).await?;
    println!(
        "turns: {} appended in {:.1} s: {:.0} turns/s",
        args.turns,
        started.elapsed().as_secs_f64(),
        rate(args.turns, started.elapsed())
    );
    settled(&cluster, hour).await?;
    report(&cluster, "after the load");

    // A snapshot of a node's database, built here (the code the nodes run)
    // from a stopped follower's file.
    let leader = settled(&cluster, hour).await?;
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .context("a follower")?;
    cluster.stop(follower)?;
    let lost_dir = cluster.nodes[&follower].data_dir.clone();
    let db = lost_dir.join("control-plane.redb");
    let (before_peak, _) = memory_mib(std::process::id());
    let (took, bytes) = tokio::task::spawn_blocking(move || {
        let (_log, sm) = bulkhead_control_plane::storage::open(&db)?;
        let started = Instant::now();
        let (_, file) = sm.build_snapshot_file()?;
        anyhow::Ok((started.elapsed(), file.metadata()?.len()))
    })
    .await??;
    let (_, after_peak) = memory_mib(std::process::id());
    println!(
        "snapshot: {:.0} MiB built in {:.1} s; this process's peak memory {after_peak} MiB (before: {before_peak} MiB)",
        mib(bytes),
        took.as_secs_f64(),
    );

    // The follower lost its disk: an empty node replaces it.
    std::fs::remove_dir_all(&lost_dir)?;
    cluster.remove(follower).await?;
    let target = cluster.status(leader).await?.last_applied;
    let fresh = cluster.nodes.keys().max().copied().unwrap_or(0) + 1;
    let started = Instant::now();
    cluster.add(fresh).await?;
    let by_snapshot = loop {
        if let Ok(s) = cluster.status(fresh).await
            && s.last_applied >= target
        {
            break s.snapshot_index > 0;
        }
        if started.elapsed() > hour {
            bail!("node {fresh} did not catch up within an hour");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, fresh_peak) = memory_mib(cluster.pid(fresh).context("the new node")?);
    println!(
        "wiped follower: node {follower}'s disk lost; node {fresh}, empty, caught up in {:.1} s {}; its peak memory {fresh_peak} MiB",
        started.elapsed().as_secs_f64(),
        if by_snapshot {
            "by snapshot"
        } else {
            "from the log (not yet purged)"
        }
    );
    cluster.nodes.remove(&follower);
    settled(&cluster, hour).await?;

    // Some days later: every node restarted with its clock ahead; the
    // leader prunes every 5 s.
    let ahead = (AHEAD_DAYS * DAY_MS).to_string();
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.stop(*id)?;
    }
    for id in &ids {
        let addr = cluster.nodes[id].addr.clone();
        cluster.spawn(
            *id,
            &addr,
            &["--prune-every", "5"],
            &[(bulkhead_proto::clock::CLOCK_AHEAD_MS, &ahead)],
        )?;
    }
    let started = Instant::now();
    loop {
        let sessions = gateway
            .member()
            .send(
                pb::ListSessionsRequest {
                    tenant_id: tenants[0].clone(),
                    owner: String::new(),
                },
                |mut c, req| async move { c.list_sessions(req).await },
            )
            .await
            .map(|l| l.sessions.len());
        if matches!(sessions, Ok(0)) {
            break;
        }
        if started.elapsed() > hour {
            bail!("retention pruned nothing within an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settled(&cluster, hour).await?;
    println!(
        "retention: restarted {AHEAD_DAYS} days later, everything past {RETENTION_DAYS} days (turns, prompt counts, per-user rows) and event ids past the dedup horizon pruned {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
    report(&cluster, "after retention");

    // 10% more load at the new clock: the files reuse what was freed.
    let (events, turns) = (args.events / 10, args.turns / 10);
    let now_ms = chrono::Utc::now().timestamp_millis() + AHEAD_DAYS * DAY_MS;
    let started = Instant::now();
    publish(
        &js,
        bulkhead_proto::USAGE_STREAM,
        500_000,
        (0..events).map(|i| event("later", i, args.tenants, now_ms)),
    )
    .await?;
    wait_for_ledger(&cluster.admin, &tenants, 8, events, started, hour).await?;
    write_turns(&gateway, "later", args.tenants, turns, args.turn_chars).await?;
    settled(&cluster, hour).await?;
    report(
        &cluster,
        &format!("after {events} events and {turns} turns more"),
    );
    Ok(())
}
