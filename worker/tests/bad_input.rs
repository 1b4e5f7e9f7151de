//! Every kind of bad input gets a clear 4xx (or InvalidArgument) with an
//! OpenAI-style error body, and the worker keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use bulkhead_proto::worker as pb;
use common::{MODEL_NAME, Options, TestWorker, capital_question, content, greedy, grpc_request};
use serde_json::{Value, json};

async fn raw(w: &TestWorker, tenant: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = w
        .client
        .post(format!("{}/v1/chat/completions", w.http))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(tenant) = tenant {
        req = req.header("X-Tenant-ID", tenant);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn assert_error(status: u16, body: &Value, want_status: u16, message_part: &str) {
    assert_eq!(status, want_status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(message_part),
        "message {message:?} should mention {message_part:?}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_worker_keeps_serving() {
    let w = TestWorker::start(Options {
        context: 512,
        max_body_bytes: 16 * 1024,
        ..Options::default()
    })
    .await;
    let hello = json!([{"role": "user", "content": "Hello"}]);
    let body = |v: Value| serde_json::to_vec(&v).unwrap();

    let long = "word ".repeat(1000);
    let huge = "x".repeat(20 * 1024);
    let user = |content: &str| json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": content}]});
    let asking = |extra: Value| {
        let mut request = json!({"model": MODEL_NAME, "messages": hello});
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body(request)
    };
    let acme = Some("acme");
    // (tenant, body, status, part of the message, the error's code if it names one)
    let cases = [
        (acme, body(json!({"model": MODEL_NAME, "messages": []})), 400, "at least one message", None),
        (acme, b"{\"model\": \"smollm2\", \"messages\": [".to_vec(), 400, "not a valid chat completion request", None),
        (acme, body(json!({"model": MODEL_NAME, "messages": "hi"})), 400, "not a valid chat completion request", None),
        (acme, body(json!({"model": MODEL_NAME, "messages": [{"content": "no role"}]})), 400, "role", None),
        (acme, body(json!({"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]})), 400, "unknown message role", None),
        (acme, body(user("  ")), 400, "empty", None),
        (acme, body(json!({"model": "gpt-9", "messages": hello})), 404, "gpt-9", Some("model_not_found")),
        (acme, asking(json!({"adapter": "nope"})), 404, "adapter `nope`", None),
        (acme, asking(json!({"max_tokens": 0})), 400, "max_tokens must be at least 1", None),
        (acme, asking(json!({"max_tokens": 100000})), 400, "maximum context length is 512 tokens", Some("context_length_exceeded")),
        (acme, body(user(&long)), 400, "maximum context length is 512 tokens", None),
        (acme, b"{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}".to_vec(), 400, "not valid UTF-8", None),
        (acme, body(user(&huge)), 413, "larger than the limit", None),
        (None, asking(json!({})), 400, "X-Tenant-ID", None),
        (Some("a tenant with spaces"), asking(json!({})), 400, "tenant id", None),
        (acme, asking(json!({"temperature": 7})), 400, "temperature", None),
        (acme, body(user("a\u{0}b")), 400, "NUL", None),
    ];
    for (tenant, request, want_status, message_part, code) in cases {
        let (s, b) = raw(&w, tenant, request).await;
        assert_error(s, &b, want_status, message_part);
        if let Some(code) = code {
            assert_eq!(b["error"]["code"], code);
        }
    }

    // gRPC: the same rules, as status codes.
    let mut client = w.grpc_client().await;
    let mut empty = grpc_request("acme", "", "x", 4, false);
    empty.messages.clear();
    let err = client.generate(empty).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let mut unknown = grpc_request("acme", "", "x", 4, false);
    unknown.model = "gpt-9".into();
    assert_eq!(
        client.generate(unknown).await.err().unwrap().code(),
        tonic::Code::NotFound
    );
    // Past the context window: its own code, which gateways turn into
    // `context_length_exceeded`.
    let too_long = grpc_request("acme", "", "x", 100_000, false);
    assert_eq!(
        client.generate(too_long).await.err().unwrap().code(),
        tonic::Code::OutOfRange
    );
    // A tenant's own window, smaller than the model's, is the one that binds.
    let mut narrow = grpc_request("acme", "", "x", 40, false);
    narrow.context_window = 32;
    let err = client.generate(narrow.clone()).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(
        err.message()
            .starts_with("the context window of tenant `acme` is 32 tokens"),
        "{err}"
    );
    narrow.max_tokens = 4;
    assert!(client.generate(narrow).await.is_ok());
    let no_tenant = grpc_request("", "", "x", 4, false);
    assert_eq!(
        client.generate(no_tenant).await.err().unwrap().code(),
        tonic::Code::InvalidArgument
    );
    let count = client
        .count_tokens(pb::CountTokensRequest {
            model: MODEL_NAME.into(),
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Hello".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(count.prompt_tokens > 1 && count.context_window == 512);

    // Still serving.
    let (status, answer) = w.chat("acme", None, greedy(capital_question(), 16)).await;
    assert_eq!(status, 200);
    assert!(content(&answer).contains("Paris"));
    w.stop().await;
}

#[tokio::test]
async fn with_an_http_token_the_api_refuses_callers_without_it() {
    let w = TestWorker::start(Options {
        http_token: Some("s3cret-token".into()),
        ..Options::default()
    })
    .await;
    let body = greedy(json!([{"role": "user", "content": "Hi"}]), 2);
    let call = |token: Option<&str>| {
        let mut req = w
            .client
            .post(format!("{}/v1/chat/completions", w.http))
            .header("X-Tenant-ID", "acme")
            .json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    for token in [None, Some("wrong"), Some("s3cret-token-and-more")] {
        let resp = call(token).await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_error(status, &body, 401, "needs its token");
    }
    let resp = call(Some("s3cret-token")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Health stays open for probes.
    let health = w.get("/health").await;
    assert_eq!(health.status().as_u16(), 200);
    w.stop().await;
}
