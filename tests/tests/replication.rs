//! Replication under load: a follower stopped while the log grows by 100k
//! entries, some of them large session turns and full usage batches,
//! catches up by AppendEntries cut to the byte cap, and then holds exactly
//! the usage the leader holds.

use std::time::{Duration, Instant};

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_control_plane::raft::MAX_APPEND_BYTES;
use bulkhead_proto::control as pb;
use bulkhead_proto::worker::UsageEvent;
use bulkhead_tests::cluster::ControlPlanes;
use bulkhead_tests::system::{eventually, used_lately};

/// Entries written while the follower is down.
const ENTRIES: u64 = 100_000;
/// Of those, session turns of [`TURN_BYTES`] each, written back to back so
/// that a run of them is over the byte cap of one AppendEntries.
const LARGE_TURNS: u64 = 40;
const TURN_BYTES: usize = 1 << 20;
/// And usage batches as full as the leader's consumer makes them.
const BATCHES: u64 = 16;
const BATCH_EVENTS: u64 = 4_096;
/// Proposals in flight at once.
const WRITERS: u64 = 128;

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn event(n: u64) -> UsageEvent {
    UsageEvent {
        event_id: format!("ev-{n:08}"),
        tenant_id: "acme".into(),
        user_id: format!("user-{}", n % 7),
        gateway_id: "gw-test".into(),
        prompt_tokens: 3,
        completion_tokens: 2,
        finished_at_ms: now_ms(),
        ..Default::default()
    }
}

/// Tokens of usage written.
fn tokens_written() -> u64 {
    (BATCHES * BATCH_EVENTS + (ENTRIES - LARGE_TURNS - BATCHES)) * 5
}

/// Writes usage as a worker reports it: one Raft entry per batch.
async fn report(fleet: &ControlPlaneClient, events: Vec<UsageEvent>) -> anyhow::Result<()> {
    fleet
        .fleet()
        .send(pb::UsageBatch { events }, |mut c, r| async move {
            c.report_usage(r).await
        })
        .await?;
    Ok(())
}

/// Today's and yesterday's usage of `acme`, as node `i` alone answers it
/// (a linearizable read there: it waits until that node has applied all
/// the leader committed).
async fn used_at(cp: &ControlPlanes, i: usize) -> anyhow::Result<u64> {
    let only =
        ControlPlaneClient::new(vec![cp.nodes[i].addr.clone()], Some(cp.admin_token.clone()));
    used_lately(&only, "acme").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_for_100k_entries_catches_up_by_capped_appends() -> anyhow::Result<()> {
    // No snapshot while the follower is down: it must catch up from the log.
    let mut cp = ControlPlanes::start(3, &["--snapshot-logs", "1000000"])?;
    cp.cli(&["tenant", "create", "acme", "--plan", "pro"])?;
    let leader = cp.leader(Duration::from_secs(10)).await?;
    let follower = (0..cp.nodes.len()).find(|i| *i != leader).unwrap_or(0);
    let member = cp.member_client().await?;
    let fleet = std::sync::Arc::new(cp.fleet_client().await?);
    member
        .member()
        .send(
            pb::CreateSessionRequest {
                tenant_id: "acme".into(),
                session_id: "long".into(),
                ..Default::default()
            },
            |mut c, r| async move { c.create_session(r).await },
        )
        .await?;
    let at_stop = cp.status(leader).await?.last_log_index;
    cp.kill(follower);

    let started = Instant::now();
    // The large turns first, one after another, then full usage batches,
    // then single events from many writers at once (as workers report).
    for n in 0..LARGE_TURNS {
        let turn = pb::Turn {
            role: "user".into(),
            content: format!("{n:08}").repeat(TURN_BYTES / 8),
            ..Default::default()
        };
        member
            .member()
            .send(
                pb::AppendTurnsRequest {
                    tenant_id: "acme".into(),
                    session_id: "long".into(),
                    user_id: String::new(),
                    turns: vec![turn],
                },
                |mut c, r| async move { c.append_turns(r).await },
            )
            .await?;
    }
    for b in 0..BATCHES {
        let first = 1_000_000 + b * BATCH_EVENTS;
        report(&fleet, (first..first + BATCH_EVENTS).map(event).collect()).await?;
    }
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let fleet = std::sync::Arc::clone(&fleet);
        writers.spawn(async move {
            let mut n = LARGE_TURNS + BATCHES + w;
            while n < ENTRIES {
                report(&fleet, vec![event(n)]).await?;
                n += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let wrote = started.elapsed();
    // Under this load an election may have moved the leader.
    let leader = cp.leader(Duration::from_secs(10)).await?;
    let status = cp.status(leader).await?;
    let behind = status.last_log_index - at_stop;
    assert!(behind >= ENTRIES, "{behind} entries written");
    assert_eq!(status.snapshot_index, 0, "no snapshot: {status:?}");
    println!(
        "wrote {behind} entries while node {} was down in {wrote:.1?} ({:.0} entries/s)",
        cp.nodes[follower].id,
        behind as f64 / wrote.as_secs_f64()
    );

    cp.restart(follower)?;
    let started = Instant::now();
    let target = status.last_log_index;
    eventually(
        "the restarted follower applies every entry",
        Duration::from_secs(240),
        || async {
            let s = cp.status(follower).await.ok()?;
            (s.last_applied >= target).then_some(())
        },
    )
    .await?;
    println!(
        "node {} caught up {behind} entries in {:.1?}",
        cp.nodes[follower].id,
        started.elapsed()
    );

    let leader = cp.leader(Duration::from_secs(10)).await?;
    // It holds exactly the usage written: every event once.
    assert_eq!(used_at(&cp, follower).await?, tokens_written());
    assert_eq!(used_at(&cp, leader).await?, tokens_written());
    // The large turns went in messages cut to the cap, not in one message
    // over it.
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", cp.nodes[leader].addr))
        .bearer_auth(&cp.admin_token)
        .send()
        .await?
        .text()
        .await?;
    let splits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bulkhead_control_plane_raft_append_splits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let needed = (LARGE_TURNS as usize * TURN_BYTES).div_ceil(MAX_APPEND_BYTES) as u64;
    assert!(
        splits >= needed - 1,
        "{splits} AppendEntries cut short; {LARGE_TURNS} turns of {TURN_BYTES} bytes need {needed} messages"
    );
    Ok(())
}
