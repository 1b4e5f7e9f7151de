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

async fn request(w: &TestWorker, id: &str) {
    let resp = w
        .client
        .post(format!("{}/v1/chat/completions", w.http))
        .header("X-Tenant-ID", "acme")
        .header("X-User-ID", "alice")
        .header("X-Request-ID", id)
        .json(&json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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
    for i in 0..3 {
        let id = format!("before-outage-{i}");
        request(&w, &id).await;
        ids.push(id);
    }
    wait_for_events(&nats.url(), 3).await;

    // NATS goes away: requests still succeed, their events wait in the spool.
    nats.stop();
    for i in 0..3 {
        let id = format!("during-outage-{i}");
        request(&w, &id).await;
        ids.push(id);
    }
    // Each answered request's event is in the spool (the publisher cannot
    // reach NATS).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while spooled(spool.path()) < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await; // polling interval
    }
    assert_eq!(spooled(spool.path()), 3);
    nats.restart();
    wait_for_events(&nats.url(), 6).await;

    // The worker restarts with events still spooled (NATS down at its stop).
    nats.stop();
    for i in 0..2 {
        let id = format!("before-restart-{i}");
        request(&w, &id).await;
        ids.push(id);
    }
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
        async move {
            w.client
                .post(format!("{}/v1/chat/completions", w.http))
                .header("X-Tenant-ID", "acme")
                .header("X-Request-ID", id)
                .json(&json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "temperature": 0}))
                .send()
                .await
                .unwrap()
        }
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while spooled(spool.path()) < answered.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await; // polling interval
        }
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
