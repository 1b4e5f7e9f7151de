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

/// One test at a time: each drives a three-node cluster as hard as two
/// cores allow, and side by side they only slow each other down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Reports the events numbered `range`, one entry each, from [`WRITERS`]
/// concurrent writers.
async fn report_one_by_one(
    fleet: &std::sync::Arc<ControlPlaneClient>,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let fleet = std::sync::Arc::clone(fleet);
        let (mut n, end) = (range.start + w, range.end);
        writers.spawn(async move {
            while n < end {
                report(&fleet, vec![event(n)]).await?;
                n += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(())
}

/// Appends turn `n`, [`TURN_BYTES`] long, to `acme`'s session `long`.
async fn append_turn(member: &ControlPlaneClient, n: u64) -> anyhow::Result<()> {
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
                owner: String::new(),
            },
            |mut c, r| async move { c.append_turns(r).await },
        )
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

/// A three-node cluster's tenant `acme` with the session `long`, a
/// gateway's and a worker's client, and which node leads and which other.
struct Setup {
    leader: usize,
    other: usize,
    member: ControlPlaneClient,
    fleet: std::sync::Arc<ControlPlaneClient>,
}

impl Setup {
    async fn of(cp: &ControlPlanes) -> anyhow::Result<Self> {
        cp.cli(&["tenant", "create", "acme", "--plan", "pro"])?;
        let leader = cp.leader(Duration::from_secs(10)).await?;
        let other = (0..cp.nodes.len()).find(|i| *i != leader).unwrap_or(0);
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
        Ok(Self {
            leader,
            other,
            member,
            fleet,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_for_100k_entries_catches_up_by_capped_appends() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    // No snapshot while the follower is down: it must catch up from the log.
    let mut cp = ControlPlanes::start(3, &["--snapshot-logs", "1000000"])?;
    let Setup {
        leader,
        other: follower,
        member,
        fleet,
    } = Setup::of(&cp).await?;
    let at_stop = cp.status(leader).await?.last_log_index;
    cp.kill(follower);

    let started = Instant::now();
    // The large turns first, one after another, then full usage batches,
    // then single events from many writers at once (as workers report).
    for n in 0..LARGE_TURNS {
        append_turn(&member, n).await?;
    }
    for b in 0..BATCHES {
        let first = 1_000_000 + b * BATCH_EVENTS;
        report(&fleet, (first..first + BATCH_EVENTS).map(event).collect()).await?;
    }
    report_one_by_one(&fleet, LARGE_TURNS + BATCHES..ENTRIES).await?;
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

/// Drill: a follower loses its disk. As with etcd, the node comes back
/// under a new id (a node that forgot its log also forgot its votes, so it
/// may not rejoin as itself): the operator removes the lost node and adds
/// the new one, which catches up by a snapshot streamed to a file (96 MiB
/// of it, without holding it in memory) and then serves the same usage as
/// the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_disk_is_replaced_and_catches_up_by_snapshot() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    const TURNS: u64 = 96;
    const EVENTS: u64 = 2_000;
    let mut cp = ControlPlanes::start(3, &["--snapshot-logs", "200"])?;
    let Setup {
        other: lost,
        member,
        fleet,
        ..
    } = Setup::of(&cp).await?;
    cp.wipe(lost)?;
    for n in 0..TURNS {
        append_turn(&member, n).await?;
    }
    report_one_by_one(&fleet, 0..EVENTS).await?;
    let leader = cp.leader(Duration::from_secs(10)).await?;
    let purged = eventually(
        "the leader purges its log",
        Duration::from_secs(60),
        || async {
            let s = cp.status(leader).await.ok()?;
            (s.purged_index > 0).then_some(s)
        },
    )
    .await?;

    let lost_id = cp.nodes[lost].id.to_string();
    cp.cli(&["cluster", "remove-node", "--id", &lost_id])?;
    let fresh = cp.start_joining(9)?;
    let fresh_addr = cp.nodes[fresh].addr.clone();
    let started = Instant::now();
    cp.cli(&["cluster", "add-node", "--id", "9", "--addr", &fresh_addr])?;
    eventually(
        "the new node catches up",
        Duration::from_secs(120),
        || async {
            let s = cp.status(fresh).await.ok()?;
            (s.last_applied >= purged.last_applied && s.snapshot_index > 0).then_some(())
        },
    )
    .await?;
    let took = started.elapsed();
    assert_eq!(used_at(&cp, fresh).await?, EVENTS * 5);
    assert_eq!(used_at(&cp, leader).await?, EVENTS * 5);
    let snapshot_kib = std::fs::metadata(cp.snapshot_path(fresh))?.len() / 1024;
    let peak_kib = cp.peak_rss_kib(fresh).unwrap_or(0);
    println!(
        "node 9 caught up by a {snapshot_kib} KiB snapshot in {took:.1?}; its peak memory {peak_kib} KiB"
    );
    assert!(
        snapshot_kib > (TURNS * TURN_BYTES as u64) / 1024,
        "{snapshot_kib} KiB"
    );
    // Streamed to a file and installed row by row: the node never holds the
    // snapshot whole (received into memory and installed from there, it
    // would hold it at least twice; measured: about 112 MiB at peak for
    // snapshots of 8 and of 96 MiB alike).
    assert!(
        peak_kib < 2 * snapshot_kib,
        "node 9 peaked at {peak_kib} KiB taking a {snapshot_kib} KiB snapshot"
    );
    Ok(())
}

/// Drill: a backup restored into a new node. A follower is stopped, its
/// data dir copied (the backup) and the node started again; the cluster
/// moves on; the copy is then started as node 9, added, and catches up
/// from where the backup ends: it holds exactly the usage the leader holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_node_restores_into_a_new_node() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cp = ControlPlanes::start(3, &[])?;
    let Setup {
        other,
        fleet,
        leader,
        ..
    } = Setup::of(&cp).await?;
    let (before, after) = (300, 500);
    for first in (0..before).step_by(100) {
        report(&fleet, (first..first + 100).map(event).collect()).await?;
    }
    let backup = tempfile::tempdir()?;
    let backup = backup.path().join("node-backup");
    cp.back_up(other, &backup)?;
    for first in (before..after).step_by(100) {
        report(&fleet, (first..first + 100).map(event).collect()).await?;
    }
    let now = cp.status(leader).await?.last_applied;
    let fresh = cp.start_joining_from(9, Some(&backup))?;
    // It starts from the backup's state, not from nothing.
    let loaded = cp.status(fresh).await?.last_applied;
    assert!(
        loaded >= 5 && loaded < now,
        "node 9 started at entry {loaded} (the leader is at {now})"
    );
    let started = Instant::now();
    let addr = cp.nodes[fresh].addr.clone();
    cp.cli(&["cluster", "add-node", "--id", "9", "--addr", &addr])?;
    let held = eventually(
        "the restored node catches up",
        Duration::from_secs(60),
        || async { (used_at(&cp, fresh).await.ok()? == after * 5).then_some(()) },
    )
    .await;
    held?;
    let status = cp.status(fresh).await?;
    println!(
        "node 9, restored from a backup at entry {loaded}, caught up {} more events in {:.1?} (applied {}, snapshot {})",
        after - before,
        started.elapsed(),
        status.last_applied,
        status.snapshot_index
    );
    assert_eq!(used_at(&cp, leader).await?, after * 5);
    Ok(())
}
