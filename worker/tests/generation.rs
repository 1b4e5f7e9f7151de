//! The worker with the real demo model: answers, KV slot reuse and isolation,
//! host-memory eviction, continuous batching, fairness, limits, cancellation,
//! adapters and several models.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bulkhead_proto::worker::generate_response::Kind;
use bulkhead_worker::ModelSpec;
use common::{
    Options, TestWorker, capital_question, content, demo_model, greedy, grpc_request, metric,
    noisy_adapter, usage,
};
use serde_json::json;

#[tokio::test]
async fn a_factual_question_is_answered() {
    let w = TestWorker::start(Options::default()).await;
    let (status, body) = w.chat("acme", None, greedy(capital_question(), 24)).await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).contains("Paris"), "answer: {body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(usage(&body, "prompt_tokens") > 5);
    assert!(usage(&body, "completion_tokens") <= 24);
    assert_eq!(
        usage(&body, "total_tokens"),
        usage(&body, "prompt_tokens") + usage(&body, "completion_tokens")
    );
    w.stop().await;
}

#[tokio::test]
async fn a_returning_session_reuses_its_slot_and_another_tenant_never_does() {
    let w = TestWorker::start(Options::default()).await;
    let first = capital_question();
    let (status, turn1) = w.chat("acme", Some("s1"), greedy(first, 16)).await;
    assert_eq!(status, 200, "{turn1}");
    assert_eq!(usage(&turn1, "cached_tokens"), 0);
    let answer = content(&turn1);
    let second = json!([
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And what is the capital of Italy?"}
    ]);
    let (status, turn2) = w.chat("acme", Some("s1"), greedy(second.clone(), 16)).await;
    assert_eq!(status, 200, "{turn2}");
    let cached = usage(&turn2, "cached_tokens");
    // Everything of turn 1 (its prompt at least) comes from the slot; only the new part is prefilled.
    assert!(
        cached >= usage(&turn1, "prompt_tokens"),
        "turn 2: {turn2}, turn 1: {turn1}"
    );
    assert!(cached < usage(&turn2, "prompt_tokens"));

    // The same prompt from another tenant shares nothing.
    let (status, other) = w
        .chat("globex", Some("s1"), greedy(second.clone(), 16))
        .await;
    assert_eq!(status, 200);
    assert_eq!(usage(&other, "cached_tokens"), 0, "{other}");
    let (_, other_new_session) = w.chat("globex", None, greedy(second, 16)).await;
    // ...but within globex, its own earlier prompt is a prefix donor.
    assert!(
        usage(&other_new_session, "cached_tokens") > 0,
        "{other_new_session}"
    );

    // Per-tenant KV memory and slot gauges are exposed.
    let metrics = w.metrics().await;
    assert!(
        metric(
            &metrics,
            "bulkhead_worker_kv_bytes{tenant=\"acme\",tier=\"device\"}"
        )
        .unwrap()
            > 0.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "bulkhead_worker_device_slots_used ").unwrap() >= 2.0);
    assert!(metrics.contains("bulkhead_worker_decode_tokens_per_second"));
    assert!(metrics.contains("bulkhead_worker_queued_requests"));
    assert!(
        metrics.contains("bulkhead_worker_time_to_first_token_seconds_count{tenant=\"acme\"} 2")
    );
    w.stop().await;
}

#[tokio::test]
async fn a_slot_evicted_to_host_memory_comes_back_with_the_same_greedy_output() {
    let w = TestWorker::start(Options::with_slots(2)).await;
    let turn1 = json!([{"role": "user", "content": "Name three colours of the rainbow."}]);
    let follow_up = |answer: String| {
        json!([
            {"role": "user", "content": "Name three colours of the rainbow."},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Which of them is the warmest?"}
        ])
    };
    // Without eviction.
    let (_, a1) = w.chat("t1", Some("s"), greedy(turn1.clone(), 24)).await;
    let (_, a2) = w
        .chat("t1", Some("s"), greedy(follow_up(content(&a1)), 24))
        .await;
    // With eviction: two other sessions take both device slots in between.
    let (_, b1) = w.chat("t2", Some("s"), greedy(turn1, 24)).await;
    assert_eq!(content(&a1), content(&b1));
    for filler in ["f1", "f2"] {
        let (status, _) = w
            .chat(
                "t3",
                Some(filler),
                greedy(
                    json!([{"role": "user", "content": format!("Say {filler}")}]),
                    4,
                ),
            )
            .await;
        assert_eq!(status, 200);
    }
    let metrics = w.metrics().await;
    assert!(
        metric(&metrics, "bulkhead_worker_host_slots ").unwrap() >= 2.0,
        "{metrics}"
    );
    let (_, b2) = w
        .chat("t2", Some("s"), greedy(follow_up(content(&b1)), 24))
        .await;
    assert_eq!(
        metric(&w.metrics().await, "bulkhead_worker_slot_restores_total ").unwrap(),
        1.0
    );
    assert!(
        usage(&b2, "cached_tokens") >= usage(&b1, "prompt_tokens"),
        "restored, not recomputed: {b2}"
    );
    assert_eq!(usage(&a2, "cached_tokens"), usage(&b2, "cached_tokens"));
    assert_eq!(content(&a2), content(&b2));
    w.stop().await;
}

#[tokio::test]
async fn eight_concurrent_sessions_all_progress_together() {
    let w = TestWorker::start(Options::with_slots(8)).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut stream = w
            .generate(grpc_request(
                "acme",
                &format!("c{i}"),
                &format!("Count slowly from {i} to 100."),
                32,
                true,
            ))
            .await;
        tasks.push(tokio::spawn(async move {
            let mut first = None;
            while let Some(msg) = stream.message().await.unwrap() {
                first.get_or_insert(started.elapsed());
                if let Some(Kind::Finished(f)) = msg.kind {
                    return (
                        first.unwrap(),
                        started.elapsed(),
                        f.usage.unwrap().completion_tokens,
                    );
                }
            }
            panic!("stream ended without Finished");
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let last_first_token = results.iter().map(|r| r.0).max().unwrap();
    let first_finish = results.iter().map(|r| r.1).min().unwrap();
    // No session waited for another to finish: all had tokens before any was done.
    assert!(last_first_token < first_finish, "{results:?}");
    assert!(results.iter().all(|r| r.2 == 32), "{results:?}");
    w.stop().await;
}

/// Waits until the worker holds `n` requests, running or queued (its `Stats`).
async fn submitted(w: &TestWorker, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = w.stats().await;
        if stats.active_requests + stats.queued_requests >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never held {n} requests: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await; // polling interval
    }
}

#[tokio::test]
async fn a_tenant_with_many_requests_cannot_starve_a_tenant_with_one() {
    let w = TestWorker::start(Options::with_slots(2)).await;
    let started = Instant::now();
    let mut busy = Vec::new();
    for i in 0..6 {
        let mut stream = w
            .generate(grpc_request(
                "busy",
                &format!("b{i}"),
                "Write a poem about the sea.",
                24,
                true,
            ))
            .await;
        busy.push(tokio::spawn(async move {
            let msg = stream.message().await.unwrap();
            let first = started.elapsed();
            assert!(msg.is_some());
            while stream.message().await.unwrap().is_some() {}
            first
        }));
        // In order: each is in the worker (running or queued) before the next.
        submitted(&w, i + 1).await;
    }
    let mut stream = w
        .generate(grpc_request(
            "quiet",
            "q",
            "Write a poem about the sea.",
            4,
            true,
        ))
        .await;
    stream.message().await.unwrap();
    let quiet_first = started.elapsed();
    let mut busy_firsts = Vec::new();
    for b in busy {
        busy_firsts.push(b.await.unwrap());
    }
    // First come first served would put `quiet` after all six; tenant
    // fairness gives it the first slot that frees up.
    let started_after_quiet = busy_firsts.iter().filter(|&&t| t > quiet_first).count();
    assert!(
        started_after_quiet >= 3,
        "quiet at {quiet_first:?}, busy at {busy_firsts:?}"
    );
    while stream.message().await.unwrap().is_some() {}

    // The worker counted each tenant's concurrency (DESIGN.md Q3): `busy`
    // filled both slots at once, `quiet` never had more than one, and
    // nothing is generating any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tenants = loop {
        let stats = w.stats().await;
        if stats.tenants.iter().all(|t| t.active == 0) || Instant::now() > deadline {
            break stats.tenants;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of = |id: &str| {
        tenants
            .iter()
            .find(|t| t.tenant_id == id)
            .map(|t| (t.active, t.peak_active))
    };
    assert_eq!(of("busy"), Some((0, 2)), "{tenants:?}");
    assert_eq!(of("quiet"), Some((0, 1)), "{tenants:?}");
    let metrics = w.metrics().await;
    for line in [
        "bulkhead_worker_tenant_peak_active_requests{tenant=\"busy\"} 2",
        "bulkhead_worker_tenant_peak_active_requests{tenant=\"quiet\"} 1",
        "bulkhead_worker_tenant_active_requests{tenant=\"busy\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // Without a gateway credential, the gRPC port answers nothing.
    let mut stranger = w.grpc_client_without_secret().await;
    let err = stranger
        .stats(bulkhead_proto::worker::StatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // ...but it serves /health over plain HTTP/1.1, and /metrics, which
    // name tenants, only to a metrics credential the control plane lists
    // (this worker has none), so a worker without --http can be scraped.
    let get = |path: &str| {
        let url = format!("{}{path}", w.grpc);
        async move {
            let resp = reqwest::get(&url).await.unwrap();
            assert_eq!(resp.status(), 200, "GET {url}");
            resp.text().await.unwrap()
        }
    };
    let refused = reqwest::get(format!("{}/metrics", w.grpc)).await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = refused.text().await.unwrap();
    assert!(!refused.contains("busy"), "{refused}");
    let on_http_port = reqwest::get(format!("{}/metrics", w.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        on_http_port.contains("bulkhead_worker_tenant_peak_active_requests{tenant=\"busy\"} 2"),
        "{on_http_port}"
    );
    let health: serde_json::Value = serde_json::from_str(&get("/health").await).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let resp = reqwest::get(format!("{}/nonexistent", w.grpc))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    w.stop().await;
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_end_generation() {
    let w = TestWorker::start(Options::default()).await;
    let question = capital_question();
    let (_, capped) = w.chat("acme", None, greedy(question.clone(), 3)).await;
    assert_eq!(usage(&capped, "completion_tokens"), 3);
    assert_eq!(capped["choices"][0]["finish_reason"], "length");

    let (_, full) = w.chat("acme", None, greedy(question.clone(), 24)).await;
    assert!(content(&full).contains("Paris"));
    let mut body = greedy(question, 24);
    body["stop"] = json!(["Paris"]);
    let (_, stopped) = w.chat("acme", None, body).await;
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let text = content(&stopped);
    assert!(!text.contains("Paris") && !text.is_empty(), "{stopped}");
    assert!(content(&full).starts_with(&text));

    // Streaming: deltas, then a last chunk carrying the usage, then [DONE].
    let mut body = greedy(capital_question(), 5);
    body["stream"] = json!(true);
    let sse = w
        .client
        .post(format!("{}/v1/chat/completions", w.http))
        .header("X-Tenant-ID", "acme")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let last: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 5, "{sse}");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        content(&full).starts_with(&streamed) && !streamed.is_empty(),
        "{streamed:?}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_cancelled_request_frees_its_slot_at_once_and_reports_partial_usage() {
    let w = TestWorker::start(Options::with_slots(1)).await;
    let mut stream = w
        .generate(grpc_request(
            "acme",
            "long",
            "Write a very long story.",
            900,
            true,
        ))
        .await;
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    drop(stream);
    // The only slot must be free now: 900 tokens would take several seconds.
    let started = Instant::now();
    let (status, body) = w
        .chat(
            "acme",
            None,
            greedy(json!([{"role": "user", "content": "Say hello."}]), 4),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        started.elapsed()
    );
    let metrics = w.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "bulkhead_worker_requests_total{tenant=\"acme\",finish_reason=\"cancelled\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let completion = metric(
        &metrics,
        "bulkhead_worker_completion_tokens_total{tenant=\"acme\"}",
    )
    .unwrap();
    assert!(
        (7.0..100.0).contains(&completion),
        "partial usage counted: {completion}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_lora_adapter_changes_the_output_and_each_variant_keeps_its_own_context() {
    let dir = tempfile::tempdir().unwrap();
    let w = TestWorker::start(Options {
        adapters: noisy_adapter(dir.path()),
        ..Options::default()
    })
    .await;
    let question = capital_question();
    let (_, base) = w.chat("acme", None, greedy(question.clone(), 16)).await;
    let mut with_adapter = greedy(question.clone(), 16);
    with_adapter["adapter"] = json!("noisy");
    let (status, adapted) = w.chat("acme", None, with_adapter.clone()).await;
    assert_eq!(status, 200, "{adapted}");
    assert_ne!(
        content(&base),
        content(&adapted),
        "the adapter must change greedy output"
    );
    // A KV slot of the base model is never reused by the adapter's context.
    assert_eq!(usage(&adapted, "cached_tokens"), 0);
    with_adapter["adapter_scale"] = json!(0.0);
    let (_, zero) = w.chat("acme", None, with_adapter).await;
    assert_eq!(content(&base), content(&zero), "scale 0 is the base model");

    let models = w.get_json("/v1/models").await;
    assert_eq!(models["data"][0]["adapters"], json!(["noisy"]));
    w.stop().await;
}

#[tokio::test]
async fn adapter_scales_past_the_context_cap_reuse_the_least_recent_context() {
    let dir = tempfile::tempdir().unwrap();
    let w = TestWorker::start(Options {
        adapters: noisy_adapter(dir.path()),
        max_contexts: 2,
        ..Options::default()
    })
    .await;
    let question = json!([{"role": "user", "content": "Name a colour."}]);
    // Each scale is its own context (4 slots each); a caller choosing new
    // scales must not grow the worker's memory past two contexts.
    for scale in [0.25, 0.5, 0.75, 1.0, 1.25] {
        let mut body = greedy(question.clone(), 2);
        body["adapter"] = json!("noisy");
        body["adapter_scale"] = json!(scale);
        let (status, answer) = w.chat("acme", None, body).await;
        assert_eq!(status, 200, "scale {scale}: {answer}");
    }
    let metrics = w.metrics().await;
    assert_eq!(
        metric(&metrics, "bulkhead_worker_device_slots_total "),
        Some(8.0),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn several_models_are_served_side_by_side() {
    let w = TestWorker::start(Options {
        models: vec![
            ModelSpec {
                name: "small".into(),
                path: demo_model(),
                chat_template: None,
            },
            ModelSpec {
                name: "small-chatml".into(),
                path: demo_model(),
                chat_template: Some("chatml".into()),
            },
        ],
        ..Options::default()
    })
    .await;
    let models = w.get_json("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["small", "small-chatml"]);
    for model in ids {
        let mut body = greedy(capital_question(), 16);
        body["model"] = json!(model);
        let (status, answer) = w.chat("acme", None, body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], model);
        assert!(content(&answer).contains("Paris"), "{answer}");
    }
    w.stop().await;
}
