//! `bulkhead bench control-plane`: a three-node cluster of this binary plus a
//! nats-server, all on loopback, measured in one run:
//! - usage events/s from JetStream through Raft into redb, against a raw
//!   JetStream pull consumer reading the same events (the baseline);
//! - allowance grants/s (a Raft write each), against `ClusterStatus` calls/s
//!   (the same gRPC round trip without Raft);
//! - failover: SIGKILL of the leader to the first committed write on the new one.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use bulkhead_control_plane::ControlPlaneClient;
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

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` different free ports: all are bound at once before any is released,
/// so the system cannot hand out one of them twice.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub async fn run(args: BenchControlPlaneArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut children = Kill(Vec::new());

    let mut ports = free_ports(4)?;
    let nats_port = ports.pop().context("four ports")?;
    children.0.push(
        Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(dir.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (scripts/setup.sh installs it)")?,
    );
    wait_port(nats_port).await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let init = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let secret = bulkhead_proto::ClusterSecret::generate();
    let mut token_out = None;
    let mut node_index = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "control-plane",
                "--node-id",
                &(i + 1).to_string(),
                "--listen",
                addr,
            ])
            .arg("--data-dir")
            .arg(dir.path().join(format!("node{}", i + 1)))
            .args(["--init", &init, "--nats", &nats_url])
            .env("BULKHEAD_LOG", "warn")
            .env(crate::env::CLUSTER_SECRET, secret.expose())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if i == 0 {
            token_out = child.stdout.take();
        }
        node_index.push(children.0.len());
        children.0.push(child);
    }
    let token = {
        let out = token_out.context("node 1 stdout")?;
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("admin token: ").map(str::to_owned))
        })
        .await?
        .context("the cluster printed no admin token")?
    };
    let admin = ControlPlaneClient::new(addrs.clone(), Some(token));
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
    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    js.get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await?;
    let started = Instant::now();
    let mut acks = Vec::new();
    for i in 0..args.events {
        let event = UsageEvent {
            event_id: format!("bench-{i}"),
            tenant_id: "bench".into(),
            gateway_id: "bench-gw".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            finished_at_ms: chrono::Utc::now().timestamp_millis(),
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        acks.push(
            js.publish_with_headers(event.subject(), headers, event.encode_to_vec().into())
                .await?,
        );
        if acks.len() >= 2_000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await?;
    }
    let published = started.elapsed();
    loop {
        let report = admin
            .admin()
            .send(
                pb::UsageRequest {
                    tenant_id: "bench".into(),
                    days: 1,
                },
                |mut c, req| async move { c.usage(req).await },
            )
            .await?;
        if report.days.first().map_or(0, |d| d.requests) >= args.events {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the ledger did not count all events within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = started.elapsed();

    // Baseline: a raw pull consumer reading and acking the same events.
    let stream = js.get_stream(bulkhead_proto::USAGE_STREAM).await?;
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
    while seen < args.events {
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
    let raw = started.elapsed();
    let (cp_rate, raw_rate) = (rate(args.events, applied), rate(args.events, raw));
    println!(
        "usage events: {} events, published in {:.2}s, all in the ledger after {:.2}s: {:.0} events/s; raw JetStream consumer {:.0} events/s; ratio {:.2}",
        args.events,
        published.as_secs_f64(),
        applied.as_secs_f64(),
        cp_rate,
        raw_rate,
        cp_rate / raw_rate
    );

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
    let leader = usize::try_from(state.leader_id).unwrap_or(0);
    if leader == 0 {
        bail!("no leader to kill");
    }
    let killed = Instant::now();
    let child = &mut children.0[node_index[leader - 1]];
    child.kill()?;
    child.wait()?;
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
