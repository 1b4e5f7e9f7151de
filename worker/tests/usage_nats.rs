//! Usage events reach JetStream exactly once per finished request, across a
//! NATS outage and a worker restart, with a real nats-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_proto::worker::UsageEvent;
use bulkhead_proto::{RequestId, USAGE_STREAM};
use common::{MODEL_NAME, Nats, Options, TestWorker};
use prost::Message;
use serde_json::json;

/// Asks tenant `acme` (as `user`, when given) for a 3-token greeting under
/// request id `id`.
async fn say_hi(w: &TestWorker, id: &str, user: Option<&str>) -> reqwest::Response {
    let mut req = w
        .client
        .post(format!("{}/v1/chat/completions", w.http))
        .header("X-Tenant-ID", "acme")
        .header("X-Request-ID", id)
        .json(&json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "temperature": 0}));
    if let Some(user) = user {
        req = req.header("X-User-ID", user);
    }
    req.send().await.unwrap()
}

/// A request by user `alice` that must be answered.
async fn request(w: &TestWorker, id: &str) {
    let resp = say_hi(w, id, Some("alice")).await;
    assert_eq!(resp.status(), 200);
}

/// `n` answered [`request`]s with ids `{prefix}-0`, `{prefix}-1`...,
/// added to `ids`.
async fn requests(w: &TestWorker, prefix: &str, n: usize, ids: &mut Vec<String>) {
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        request(w, &id).await;
        ids.push(id);
    }
}

/// All events in the stream, by event id; an error while the worker has not
/// created the stream yet or NATS is still coming up.
async fn stream_events(url: &str) -> Result<Vec<UsageEvent>, String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(USAGE_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut events = Vec::new();
    for seq in 1..=last {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            events.push(UsageEvent::decode(msg.payload.as_ref()).unwrap());
        }
    }
    Ok(events)
}

async fn wait_for_events(url: &str, n: usize) -> Vec<UsageEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), stream_events(url)).await {
            Ok(Ok(events)) if events.len() >= n => return events,
            Ok(Ok(events)) => format!("{} events", events.len()),
            Ok(Err(e)) => e,
            Err(_) => "timed out reading the stream".into(),
        };
        assert!(
            Instant::now() < deadline,
            "stream did not reach {n} events: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Events in the spool: a `.pbs` file holds a group, length-delimited.
fn spooled(dir: &Path) -> usize {
    let count = |path: std::path::PathBuf| -> usize {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut rest = bytes.as_slice();
        let mut n = 0;
        while !rest.is_empty() {
            match UsageEvent::decode_length_delimited(&mut rest) {
                Ok(_) => n += 1,
                Err(_) => break,
            }
        }
        n
    };
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pbs"))
                .map(count)
                .sum()
        })
        .unwrap_or(0)
}

/// Waits up to 10 s for the spool to hold at least `n` events (the caller
/// asserts what it then holds).
async fn spooled_reaches(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled(dir) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await; // polling interval
    }
}

#[tokio::test]
async fn every_finished_request_yields_exactly_one_event_across_outage_and_restart() {
    let store = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(store.path());
    // The port stays the same across nats-server restarts.
    let url = nats.url();
    let options = || Options {
        usage: bulkhead_worker::UsageSink::Nats(url.clone()),
        spool_dir: Some(spool.path().to_path_buf()),
        ..Options::default()
    };
    let w = TestWorker::start(options()).await;
    let mut ids = Vec::new();
    requests(&w, "before-outage", 3, &mut ids).await;
    wait_for_events(&nats.url(), 3).await;

    // NATS goes away: requests still succeed, their events wait in the spool.
    nats.stop();
    requests(&w, "during-outage", 3, &mut ids).await;
    // Each answered request's event is in the spool (the publisher cannot
    // reach NATS).
    spooled_reaches(spool.path(), 3).await;
    assert_eq!(spooled(spool.path()), 3);
    nats.restart();
    wait_for_events(&nats.url(), 6).await;

    // The worker restarts with events still spooled (NATS down at its stop).
    nats.stop();
    requests(&w, "before-restart", 2, &mut ids).await;
    w.stop().await;
    assert_eq!(spooled(spool.path()), 2);
    // A crash between JetStream's ack and the spool delete leaves a file for
    // an event that was already published: replaying it must not double it.
    let replay = UsageEvent {
        event_id: RequestId::new("before-outage-0")
            .unwrap()
            .event_id()
            .to_string(),
        tenant_id: "acme".into(),
        ..Default::default()
    };
    std::fs::write(
        spool.path().join("00000000000000000999-replayed.pb"),
        replay.encode_to_vec(),
    )
    .unwrap();
    nats.restart();
    let w = TestWorker::start(options()).await;
    let events = wait_for_events(&nats.url(), 8).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled(spool.path()) > 0 {
        assert!(Instant::now() < deadline, "spool not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = if events.len() == 8 {
        stream_events(&nats.url()).await.unwrap()
    } else {
        events
    };
    assert_eq!(events.len(), 8, "exactly one event per request: {events:?}");

    let by_id: HashMap<String, &UsageEvent> =
        events.iter().map(|e| (e.event_id.clone(), e)).collect();
    assert_eq!(by_id.len(), 8);
    for id in &ids {
        let event_id = RequestId::new(id.as_str()).unwrap().event_id().to_string();
        let e = by_id
            .get(&event_id)
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(e.request_id, *id);
        assert_eq!(e.tenant_id, "acme");
        assert_eq!(e.user_id, "alice");
        assert_eq!(e.model, MODEL_NAME);
        assert_eq!(e.completion_tokens, 3);
        assert!(e.prompt_tokens > 0 && !e.worker_id.is_empty() && e.finished_at_ms > 0);
    }
    w.stop().await;
}

/// The usage stream keeps only what the control plane has not acknowledged:
/// acknowledged events leave it, so it does not grow forever.
#[tokio::test]
async fn acknowledged_usage_leaves_the_stream() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use futures::StreamExt;

    let store = tempfile::tempdir().unwrap();
    let nats = Nats::start(store.path());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await
        .unwrap();
    for i in 0..3 {
        js.publish(format!("bulkhead.usage.acme{i}"), "event".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
    let consumer = stream
        .get_or_create_consumer(
            "control-plane",
            pull::Config {
                durable_name: Some("control-plane".into()),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(3).messages().await.unwrap();
    while let Some(message) = batch.next().await {
        message.unwrap().double_ack().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(
            Instant::now() < deadline,
            "acknowledged events stayed in the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = stream.info().await.unwrap().config.clone();
    assert!(
        limits.max_bytes > 0,
        "the stream has a size cap: {limits:?}"
    );
}

/// A full spool: with NATS away the spool reaches its cap, and the worker
/// answers new requests 503 `usage_spool_full` instead of piling up more
/// unbilled work; once NATS is back the backlog drains, requests are taken
/// again, and every answered request's event arrives exactly once.
#[tokio::test]
async fn a_full_spool_refuses_new_work_and_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(store.path());
    nats.stop();
    let w = TestWorker::start(Options {
        usage: bulkhead_worker::UsageSink::Nats(nats.url()),
        spool_dir: Some(spool.path().to_path_buf()),
        // Two small events' worth.
        spool_max_bytes: 400,
        ..Options::default()
    })
    .await;
    let ask = |id: String| {
        let w = &w;
        async move { say_hi(w, &id, None).await }
    };
    let mut answered = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let id = format!("spooled-{i}");
        let resp = ask(id.clone()).await;
        if resp.status() == 503 {
            refused = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
        assert_eq!(resp.status(), 200);
        answered.push(id);
        // The event is on disk before the next request is judged.
        spooled_reaches(spool.path(), answered.len()).await;
    }
    let refused = refused.expect("the spool never filled");
    assert_eq!(refused["error"]["code"], "usage_spool_full", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NATS")),
        "{refused}"
    );
    assert!(!answered.is_empty());
    assert_eq!(spooled(spool.path()), answered.len(), "nothing lost");
    // NATS back: the backlog goes out, and new work is taken again.
    nats.restart();
    let events = wait_for_events(&nats.url(), answered.len()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = ask("after-drain".into()).await;
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never took work again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = events.iter().map(|e| e.request_id.clone()).collect();
    for id in &answered {
        assert_eq!(ids.iter().filter(|x| *x == id).count(), 1, "{id}: {ids:?}");
    }
    w.stop().await;
}
