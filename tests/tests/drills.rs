//! Drills: faults injected into a running cluster, each asserting what a
//! client sees, that nothing is billed twice or for nothing (Q2), and that
//! no limit stays held. In a file of their own, so that they do not run
//! beside the other cluster tests on a small machine.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bulkhead_tests::load::Load;
use bulkhead_tests::system::{Cluster, MODEL, eventually};
use serde_json::json;

/// The drills run one at a time: each starts a cluster with its own
/// workers, and two of them on a two-core machine slow each other past
/// their deadlines.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Drill: a worker SIGKILLed mid-stream. The client gets a clean stream
/// error, nothing of that request is billed, and its concurrency slot is
/// free at once (the tenant may run one request, and the next is taken by
/// the other worker).
#[tokio::test]
async fn a_worker_killed_mid_stream_bills_nothing_and_frees_the_slot() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::builder()
        .control_nodes(1)
        .workers(2)
        .gateways(1)
        .start()
        .await
        .unwrap();
    let key = cluster
        .tenant_with_key("k", &["--daily-tokens", "100000", "--max-concurrent", "1"])
        .await
        .unwrap();
    let busy = cluster.routed_to("k", "drill-user").await.unwrap();
    let api = cluster.apis[0].clone();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let streaming = {
        let (api, key) = (api.clone(), key.clone());
        tokio::spawn(async move {
            let req = api
                .post("/v1/chat/completions", &key)
                .header("X-User-ID", "drill-user")
                .json(&json!({
                    "model": MODEL, "stream": true, "max_tokens": 600, "temperature": 0,
                    "ignore_eos": true,
                    "messages": [{"role": "user", "content": "Tell a very long story."}],
                }));
            api.send_telling(req, Some(first_tx)).await.unwrap()
        })
    };
    tokio::time::timeout(Duration::from_secs(60), first_rx)
        .await
        .expect("the stream started")
        .expect("the stream started");
    let killed = Instant::now();
    cluster.workers[busy].kill();
    let answer = streaming.await.unwrap();
    assert_eq!(answer.status, 200, "the stream had started");
    assert!(
        answer.stream_error.is_some() && answer.usage.is_none(),
        "a clean stream error, no usage: {:?}",
        answer.stream_error
    );
    // The slot is free: the next request (max_concurrent 1) is taken by the
    // other worker.
    let next = eventually(
        "the next request to be admitted",
        Duration::from_secs(30),
        || {
            let (api, key) = (api.clone(), key.clone());
            async move {
                let a = api.ask(&key, "Say hi.", 4).await.ok()?;
                (a.status == 200).then_some(a)
            }
        },
    )
    .await
    .unwrap();
    println!(
        "drill: worker {busy} killed mid-stream; next request answered {:?} later",
        killed.elapsed()
    );
    // Nothing of the broken request is billed: the ledger holds exactly the
    // next request's usage.
    cluster.ledger_reaches("k", next.total_tokens()).await;
}

#[tokio::test]
async fn a_worker_and_the_leader_dying_under_load_give_clean_errors_and_an_exact_ledger() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::builder()
        .control_nodes(3)
        .workers(2)
        .gateways(2)
        .start()
        .await
        .unwrap();
    let key = cluster
        .tenant_with_key(
            "f",
            &["--daily-tokens", "1000000", "--max-concurrent", "32"],
        )
        .await
        .unwrap();
    let load = Load::start(&cluster.apis, &key, 6);
    // Each fault comes once answers are flowing, and the next once more
    // answers came after it (no fixed waits).
    load.grows(6, "before any fault").await;
    cluster.workers[0].kill();
    load.grows(6, "after a worker died").await;
    let leader = cluster
        .control
        .leader(Duration::from_secs(5))
        .await
        .unwrap();
    cluster.control.kill(leader);
    let leader_killed = Instant::now();
    load.grows(6, "after the leader died").await;
    let seen = load.stop().await;
    let (received, errors) = (seen.tokens(), seen.errors());
    let after = seen.answered_after(leader_killed);
    eprintln!(
        "{} requests: {errors} clean errors, {after} answered after the leader died, {received} tokens",
        seen.0.len()
    );
    assert!(
        after > 0,
        "nothing was answered after the leader died: {seen:?}"
    );
    // Q2 (and Q1 trivially, with a large quota): the new leader's ledger
    // holds exactly what clients were told, nothing of the broken requests.
    cluster.ledger_reaches("f", received).await;
}

/// Drill: NATS down for 30 s under load, then back. Gateways keep
/// admitting from the allowances they hold and workers keep answering,
/// spooling their usage; the quota runs out during the outage and is
/// refused with 429s, never overspent (Q1); once NATS is back every spooled
/// event reaches the ledger exactly once (Q2), so it holds what clients
/// were told, no more, no less.
#[tokio::test]
async fn nats_down_for_30_s_under_load_loses_nothing_and_overspends_nothing() {
    const QUOTA: u64 = 6_000;
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::builder()
        .control_nodes(1)
        .workers(1)
        .gateways(2)
        .start()
        .await
        .unwrap();
    let key = cluster
        .tenant_with_key(
            "n",
            &[
                "--daily-tokens",
                &QUOTA.to_string(),
                "--max-concurrent",
                "8",
            ],
        )
        .await
        .unwrap();
    let load = Load::start(&cluster.apis, &key, 4);
    load.grows(4, "before NATS goes down").await;
    cluster.nats.stop();
    let down = Instant::now();
    let before_outage = load.answered();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during_outage = load.answered() - before_outage;
    let used_during = cluster.used_today("n").await.unwrap();
    cluster.nats.restart();
    println!(
        "drill: NATS down for {:?}: {during_outage} requests answered meanwhile; the ledger held {used_during} tokens then",
        down.elapsed()
    );
    // The quota is spent before the clients stop, so Q1 is put to the test.
    eventually(
        "the quota to be spent",
        Duration::from_secs(120),
        || async {
            let used = cluster.used_today("n").await.ok()?;
            (used + 300 >= QUOTA).then_some(())
        },
    )
    .await
    .unwrap();
    let seen = load.stop().await;
    let (received, refused) = (seen.tokens(), seen.errors());
    println!(
        "drill: {} requests, {refused} refused or cut, {received} tokens answered against a quota of {QUOTA}",
        seen.0.len()
    );
    assert!(
        during_outage > 0,
        "nothing was answered while NATS was down"
    );
    // Q2: every answered request is billed once, nothing else is.
    let used = cluster.ledger_reaches("n", received).await;
    // Q1: never more than the quota.
    assert!(used <= QUOTA, "{used} tokens used of a quota of {QUOTA}");
}
