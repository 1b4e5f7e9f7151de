//! `bulkhead bench control-plane`: a three-node cluster of this binary plus a
//! nats-server, all on loopback, measured in one run:
//! - usage events/s from JetStream through Raft into redb, against a raw
//!   JetStream pull consumer reading the same events (the baseline);
//! - allowance grants/s (a Raft write each), against `ClusterStatus` calls/s
//!   (the same gRPC round trip without Raft);
//! - failover: SIGKILL of the leader to the first committed write on the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream;
use bulkhead_proto::control as pb;
use bulkhead_proto::worker::UsageEvent;
use clap::Args;
use futures::StreamExt;
use prost::Message;

#[derive(Args, Debug)]
pub struct BenchControlPlaneArgs {
    /// Usage events to push through.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Seconds to measure grants and status calls for, each.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent callers for grants and status calls.
    #[arg(long, default_value_t = 32)]
    callers: u64,
}

pub(crate) fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Publishes `events` (subject, event) to JetStream as workers do, with the
/// event id as `Nats-Msg-Id`, acknowledged 2,000 at a time; waits whenever
/// `stream` holds more than `backlog` unconsumed events (its byte limit
/// refuses events beyond it). Returns how many it published.
pub(crate) async fn publish(
    js: &jetstream::Context,
    stream: &str,
    backlog: u64,
    events: impl Iterator<Item = (String, UsageEvent)>,
) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(stream).await?;
    let mut acks = Vec::new();
    let mut n = 0u64;
    for (subject, event) in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        acks.push(
            js.publish_with_headers(subject, headers, event.encode_to_vec().into())
                .await?,
        );
        n += 1;
        if acks.len() >= 2_000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
            if n.is_multiple_of(100_000) {
                while stream.info().await?.state.messages > backlog {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await?;
    }
    Ok(n)
}

/// Waits until the ledger counts `n` requests for `tenants` over the last
/// `days` days (for at most `within` after `started`).
pub(crate) async fn wait_for_ledger(
    admin: &bulkhead_control_plane::ControlPlaneClient,
    tenants: &[String],
    days: u32,
    n: u64,
    started: Instant,
    within: Duration,
) -> anyhow::Result<()> {
    loop {
        let mut counted = 0;
        for tenant_id in tenants {
            let report = admin
                .admin()
                .send(
                    pb::UsageRequest {
                        tenant_id: tenant_id.clone(),
                        days,
                    },
                    |mut c, req| async move { c.usage(req).await },
                )
                .await?;
            counted += report.days.iter().map(|d| d.requests).sum::<u64>();
        }
        if counted >= n {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("the ledger counted {counted} of {n} events within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The baseline for usage events: a raw JetStream pull consumer at its own
/// best, reading and acknowledging `n` events (at most a million, which fit
/// the stream's byte limit) from a stream of its own with the usage
/// stream's configuration, published beforehand. Returns events/s.
pub(crate) async fn raw_consumer_rate(js: &jetstream::Context, n: u64) -> anyhow::Result<f64> {
    let n = n.min(1_000_000);
    let mut config = bulkhead_proto::usage::stream_config();
    config.name = "BENCH_RAW".into();
    config.subjects = vec!["bench-raw.>".into()];
    let stream = js.get_or_create_stream(config).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    publish(
        js,
        "BENCH_RAW",
        u64::MAX,
        (0..n).map(|i| {
            let event = UsageEvent {
                event_id: format!("raw-{i}"),
                tenant_id: "bench".into(),
                prompt_tokens: 10,
                completion_tokens: 5,
                finished_at_ms: now_ms,
                ..Default::default()
            };
            ("bench-raw.bench".to_owned(), event)
        }),
    )
    .await?;
    let consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench-baseline".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        let mut batch = consumer
            .fetch()
            .max_messages(bulkhead_control_plane::consumer::MAX_BATCH)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            UsageEvent::decode(m.payload.as_ref())?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
    }
    let took = started.elapsed();
    js.delete_stream("BENCH_RAW").await?;
    Ok(rate(n, took))
}

/// Usage events/s through the cluster against the raw consumer's: publishes
/// events `0..n` made by `event`, times until the ledger counts them all
/// (for `tenants`, over the last `days` days), and prints both rates.
/// Returns the JetStream context it published with.
pub(crate) async fn usage_events(
    cluster: &crate::loopback::Loopback,
    tenants: &[String],
    days: u32,
    n: u64,
    event: impl Fn(u64) -> (String, UsageEvent),
) -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(async_nats::connect(&cluster.nats_url).await?);
    js.get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await?;
    let started = Instant::now();
    publish(
        &js,
        bulkhead_proto::USAGE_STREAM,
        500_000,
        (0..n).map(event),
    )
    .await?;
    let published = started.elapsed();
    let within = Duration::from_secs(3600);
    wait_for_ledger(&cluster.admin, tenants, days, n, started, within).await?;
    let applied = started.elapsed();
    let raw_rate = raw_consumer_rate(&js, n).await?;
    let cp_rate = rate(n, applied);
    println!(
        "usage events: {n} events, published in {:.2}s, all in the ledger after {:.2}s: {cp_rate:.0} events/s; raw JetStream consumer {raw_rate:.0} events/s; ratio {:.2}",
        published.as_secs_f64(),
        applied.as_secs_f64(),
        cp_rate / raw_rate
    );
    Ok(js)
}

pub async fn run(args: BenchControlPlaneArgs) -> anyhow::Result<()> {
    let mut cluster = crate::loopback::Loopback::start(3, &[]).await?;
    let admin = &cluster.admin;
    admin
        .admin()
        .send(
            pb::Tenant {
                id: "bench".into(),
                plan: "enterprise".into(),
                limits: Some(pb::Limits {
                    daily_tokens: u64::MAX / 4,
                    ..Default::default()
                }),
                ..Default::default()
            },
            |mut c, req| async move { c.create_tenant(req).await },
        )
        .await?;
    // Grants are a gateway's calls: the bench is one, with its own credential.
    let client = Arc::new(admin.as_caller(admin.issue_credential("gateway", "bench-cp").await?));
    println!("cluster: 3 control-plane nodes and nats-server on loopback");

    // Usage events: publish, and time until the ledger counted them all.
    let now_ms = chrono::Utc::now().timestamp_millis();
    usage_events(&cluster, &["bench".into()], 1, args.events, |i| {
        let event = UsageEvent {
            event_id: format!("bench-{i}"),
            tenant_id: "bench".into(),
            gateway_id: "bench-gw".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            finished_at_ms: now_ms,
            ..Default::default()
        };
        (event.subject(), event)
    })
    .await?;

    // Grants (Raft writes) against status calls (no Raft), same callers.
    let measure = |grant: bool| {
        let client = client.clone();
        let seconds = args.seconds;
        let callers = args.callers;
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for caller in 0..callers {
                let (client, done) = (client.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let ok = if grant {
                            client
                                .member()
                                .send(
                                    pb::GrantRequest {
                                        tenant_id: "bench".into(),
                                        gateway_id: format!("gw-{caller}"),
                                        tokens: 1,
                                        slots: 0,
                                        ttl_ms: 30_000,
                                        op_id: format!("{caller}-{n}"),
                                    },
                                    |mut c, req| async move { c.grant(req).await },
                                )
                                .await
                                .is_ok()
                        } else {
                            client
                                .cluster()
                                .call(|mut c| async move {
                                    c.cluster_status(pb::ClusterStatusRequest {}).await
                                })
                                .await
                                .is_ok()
                        };
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            rate(done.load(Ordering::Relaxed), Duration::from_secs(seconds))
        }
    };
    let grants = measure(true).await;
    let status = measure(false).await;
    println!(
        "allowance grants: {grants:.0}/s with {} callers; ClusterStatus calls {status:.0}/s; ratio {:.2}",
        args.callers,
        grants / status
    );

    // Failover: SIGKILL the leader, time the first committed write after it.
    let state = client
        .cluster()
        .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await?;
    let leader = state.leader_id;
    if leader == 0 {
        bail!("no leader to kill");
    }
    let killed = Instant::now();
    cluster.kill(state.leader_id)?;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let ok = client
            .member()
            .send(
                pb::GrantRequest {
                    tenant_id: "bench".into(),
                    gateway_id: "failover".into(),
                    tokens: 1,
                    slots: 0,
                    ttl_ms: 30_000,
                    op_id: format!("failover-{attempt}"),
                },
                |mut c, req| async move { c.grant(req).await },
            )
            .await
            .is_ok();
        if ok {
            break;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no write committed within 60 s of the leader's death");
        }
    }
    println!(
        "failover: SIGKILL of leader node {leader} to the first committed write: {:.0} ms (target < 2000 ms)",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
