//! Drills: faults injected into a running cluster, each asserting what a
//! client sees, that nothing is billed twice or for nothing (Q2), and that
//! no limit stays held. In a file of their own, so that they do not run
//! beside the other cluster tests on a small machine.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulkhead_tests::system::{Answer, Api, Cluster, MODEL, eventually};
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
    // The worker the gateway routes this user to: the first of the
    // rendezvous order the gateway computes.
    let workers = cluster
        .control
        .client()
        .admin()
        .send(
            bulkhead_proto::control::ListWorkersRequest {},
            |mut c, r| async move { c.list_workers(r).await },
        )
        .await
        .unwrap()
        .workers;
    let first = bulkhead_gateway::route::rank("k", "drill-user", workers)[0]
        .worker_id
        .clone();
    let busy: usize = first.trim_start_matches("worker-").parse().unwrap();
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

#[derive(Debug)]
enum Seen {
    Answered { tokens: u64, at: Instant },
    CleanError,
}

/// Waits until `by` more requests were answered than now.
async fn answers_grow(answered: &AtomicUsize, by: usize, when: &str) {
    let target = answered.load(Ordering::SeqCst) + by;
    eventually(
        &format!("{by} answers {when}"),
        Duration::from_secs(90),
        || async { (answered.load(Ordering::SeqCst) >= target).then_some(()) },
    )
    .await
    .unwrap();
}

async fn stream_once(api: &Api, key: &str, user: &str) -> Seen {
    let req = api
        .post("/v1/chat/completions", key)
        .header("X-User-ID", user)
        .json(&json!({
            "model": MODEL, "stream": true, "max_tokens": 48, "temperature": 0,
            "messages": [{"role": "user", "content": "Write about rivers and mountains."}],
        }));
    let answer: Answer = tokio::time::timeout(Duration::from_secs(30), api.send(req))
        .await
        .expect("a request hung for 30 s")
        .expect("the connection broke without an HTTP answer");
    match (answer.status, &answer.stream_error, &answer.usage) {
        (200, None, Some(_)) => Seen::Answered {
            tokens: answer.total_tokens(),
            at: Instant::now(),
        },
        (200, Some(e), _) => {
            assert!(e["error"]["message"].as_str().is_some(), "{e:?}");
            Seen::CleanError
        }
        (429 | 502 | 503, _, _) => {
            assert!(
                answer.body["error"]["message"].as_str().is_some(),
                "{:?}",
                answer.body
            );
            Seen::CleanError
        }
        other => panic!("unexpected answer {other:?}: {:?}", answer.body),
    }
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
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..6 {
        let api = cluster.apis[i % 2].clone();
        let (key, stop, answered) = (key.clone(), Arc::clone(&stop), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = stream_once(&api, &key, &format!("user-{i}")).await;
                if matches!(s, Seen::Answered { .. }) {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                seen.push(s);
            }
            seen
        }));
    }
    // Each fault comes once answers are flowing, and the next once more
    // answers came after it (no fixed waits).
    answers_grow(&answered, 6, "before any fault").await;
    cluster.workers[0].kill();
    answers_grow(&answered, 6, "after a worker died").await;
    let leader = cluster
        .control
        .leader(Duration::from_secs(5))
        .await
        .unwrap();
    cluster.control.kill(leader);
    let leader_killed = Instant::now();
    answers_grow(&answered, 6, "after the leader died").await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let received: u64 = seen
        .iter()
        .map(|s| match s {
            Seen::Answered { tokens, .. } => *tokens,
            Seen::CleanError => 0,
        })
        .sum();
    let after = seen
        .iter()
        .filter(|s| matches!(s, Seen::Answered { at, .. } if *at > leader_killed))
        .count();
    let errors = seen
        .iter()
        .filter(|s| matches!(s, Seen::CleanError))
        .count();
    eprintln!(
        "{} requests: {errors} clean errors, {after} answered after the leader died, {received} tokens",
        seen.len()
    );
    assert!(
        after > 0,
        "nothing was answered after the leader died: {seen:?}"
    );
    // Q2 (and Q1 trivially, with a large quota): the new leader's ledger
    // holds exactly what clients were told, nothing of the broken requests.
    cluster.ledger_reaches("f", received).await;
}
