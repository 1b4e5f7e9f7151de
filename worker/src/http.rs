//! The worker's OpenAI-compatible HTTP API, for an operator's direct use:
//! `POST /v1/chat/completions` (with and without `stream`), `GET /v1/models`,
//! `GET /health`, `GET /metrics`. `X-Tenant-ID` names the tenant and
//! `X-Session-ID` the session. It trusts its caller: authentication and quotas
//! are the gateway's job, so this port belongs on an operator network.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bulkhead_proto::{GatewayId, RequestId, SessionId, TenantId, UserId, WorkerId};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::Engine;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::request::{
    ChatMessage, Event, FinishReason, Finished, GenerateParams, Sampling, validate_messages,
    validate_stop,
};

pub const TENANT_HEADER: &str = "x-tenant-id";
pub const SESSION_HEADER: &str = "x-session-id";
pub const USER_HEADER: &str = "x-user-id";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const GATEWAY_HEADER: &str = "x-gateway-id";

#[derive(Clone)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub worker_id: WorkerId,
}

pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state((state, max_body_bytes))
}

type AppState = State<(HttpState, usize)>;

async fn not_found() -> Response {
    let body = json!({"error": {"message": "no such route", "type": "invalid_request_error", "param": null, "code": "not_found"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn health(State((state, _)): AppState) -> Response {
    axum::Json(json!({
        "status": "ok",
        "worker_id": state.worker_id.to_string(),
        "models": crate::grpc::model_infos(&state.engine).iter().map(|m| json!({
            "name": m.name, "adapters": m.adapters, "context_window": m.context_window,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn models(State((state, _)): AppState) -> Response {
    let data: Vec<_> = crate::grpc::model_infos(&state.engine)
        .into_iter()
        .map(|m| {
            json!({
                "id": m.name, "object": "model", "created": 0, "owned_by": "bulkhead",
                "adapters": m.adapters, "context_window": m.context_window,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State((state, _)): AppState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// An OpenAI chat completion request, plus bulkhead's `adapter`,
/// `adapter_scale` and `session_id`. Unknown OpenAI fields are ignored, as
/// OpenAI-compatible servers do, so the official SDKs work unchanged.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    messages: Vec<RawMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    user: Option<String>,
    n: Option<u32>,
    adapter: Option<String>,
    adapter_scale: Option<f32>,
    session_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

fn header_id<T>(
    headers: &HeaderMap,
    name: &'static str,
    parse: impl Fn(&str) -> Result<T, bulkhead_proto::IdError>,
) -> Result<Option<T>, WorkerError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| WorkerError::invalid(format!("header {name} must be ASCII"), None))?;
    parse(value)
        .map(Some)
        .map_err(|e| WorkerError::invalid(format!("header {name}: {e}"), None))
}

fn content_text(content: Option<Content>) -> Result<String, WorkerError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(WorkerError::invalid(
                            format!(
                                "content part of type {kind:?} is not supported: only text parts are"
                            ),
                            Some("messages"),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

fn parse_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(GenerateParams, bool, bool), WorkerError> {
    std::str::from_utf8(body).map_err(|e| {
        WorkerError::invalid(format!("the request body is not valid UTF-8: {e}"), None)
    })?;
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        WorkerError::invalid(
            format!("the request body is not a valid chat completion request: {e}"),
            None,
        )
    })?;
    let tenant = header_id(headers, TENANT_HEADER, |s| TenantId::new(s))?.ok_or_else(|| {
        WorkerError::invalid(
            "the X-Tenant-ID header is required: it names the tenant the request is for",
            None,
        )
    })?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(WorkerError::invalid("only n = 1 is supported", Some("n")));
    }
    let messages = req
        .messages
        .into_iter()
        .map(|m| ChatMessage::new(&m.role, content_text(m.content)?))
        .collect::<Result<Vec<_>, _>>()?;
    validate_messages(&messages)?;
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    validate_stop(&stop)?;
    let session = match header_id(headers, SESSION_HEADER, |s| SessionId::new(s))? {
        Some(s) => Some(s),
        None => req
            .session_id
            .map(SessionId::new)
            .transpose()
            .map_err(|e| WorkerError::invalid(e.to_string(), Some("session_id")))?,
    };
    let user = match header_id(headers, USER_HEADER, |s| UserId::new(s))? {
        Some(u) => Some(u),
        None => req
            .user
            .map(UserId::new)
            .transpose()
            .map_err(|e| WorkerError::invalid(e.to_string(), Some("user")))?,
    };
    let adapter_scale = req.adapter_scale.unwrap_or(1.0);
    if !adapter_scale.is_finite() || !(0.0..=4.0).contains(&adapter_scale) {
        return Err(WorkerError::invalid(
            format!("adapter_scale must be between 0 and 4, got {adapter_scale}"),
            Some("adapter_scale"),
        ));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if max_tokens == Some(0) {
        return Err(WorkerError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    // OpenAI seeds are 64-bit; llama.cpp takes 32.
    let seed = req.seed.map(|s| (s as u64 & u64::from(u32::MAX)) as u32);
    let params = GenerateParams {
        request_id: header_id(headers, REQUEST_ID_HEADER, |s| RequestId::new(s))?
            .unwrap_or_else(RequestId::generate),
        tenant,
        session,
        user,
        gateway: header_id(headers, GATEWAY_HEADER, |s| GatewayId::new(s))?,
        model: req.model,
        adapter: req.adapter.filter(|a| !a.is_empty()),
        adapter_scale,
        messages,
        max_tokens,
        sampling: Sampling::new(req.temperature, req.top_p, seed)?,
        stop,
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok((params, req.stream, include_usage))
}

fn openai_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

fn usage_json(f: &Finished) -> serde_json::Value {
    json!({
        "prompt_tokens": f.usage.prompt_tokens,
        "completion_tokens": f.usage.completion_tokens,
        "total_tokens": f.usage.prompt_tokens + f.usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.usage.cached_tokens},
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn chat_completions(
    State((state, limit)): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return WorkerError::BodyTooLarge { limit }.into_response();
        }
        Err(rejection) => return WorkerError::invalid(rejection.body_text(), None).into_response(),
    };
    let (params, stream, include_usage) = match parse_request(&headers, &body) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let (prepared, events) = match state.engine.submit(params) {
        Ok(submitted) => submitted,
        Err(e) => return e.into_response(),
    };
    let id = format!("chatcmpl-{}", prepared.params.request_id);
    let model = prepared.params.model.clone();
    let created = unix_now();
    let request_header = [(REQUEST_ID_HEADER, prepared.params.request_id.to_string())];
    if !stream {
        let mut events = events;
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Delta(delta) => text.push_str(&delta),
                Event::Failed(err) => return err.into_response(),
                Event::Finished(f) => {
                    let body = json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": openai_finish_reason(f.finish_reason),
                        }],
                        "usage": usage_json(&f),
                    });
                    return (request_header, axum::Json(body)).into_response();
                }
            }
        }
        return WorkerError::Engine("the engine ended the request without an answer".into())
            .into_response();
    }
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let head = futures::stream::once(async move { SseEvent::default().json_data(first) });
    let body = UnboundedReceiverStream::new(events).flat_map(move |event| {
        let out: Vec<Result<SseEvent, axum::Error>> = match event {
            Event::Delta(text) => {
                vec![SseEvent::default().json_data(chunk(json!({"content": text}), None))]
            }
            Event::Finished(f) => {
                let mut last = chunk(json!({}), Some(openai_finish_reason(f.finish_reason)));
                // The last message of every stream carries the exact usage.
                last["usage"] = usage_json(&f);
                let mut out = vec![SseEvent::default().json_data(last)];
                if include_usage {
                    let mut usage_chunk = chunk(json!({}), None);
                    usage_chunk["choices"] = json!([]);
                    usage_chunk["usage"] = usage_json(&f);
                    out.push(SseEvent::default().json_data(usage_chunk));
                }
                out.push(Ok(SseEvent::default().data("[DONE]")));
                out
            }
            Event::Failed(err) => vec![SseEvent::default().json_data(err.body())],
        };
        futures::stream::iter(out)
    });
    let stream = head
        .chain(body)
        .map(|e| Ok::<_, Infallible>(e.unwrap_or_else(|_| SseEvent::default().data("{}"))));
    (
        request_header,
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response()
}
