//! The worker's OpenAI-compatible HTTP API, for an operator's direct use:
//! `POST /v1/chat/completions` (with and without `stream`), `GET /v1/models`,
//! `GET /health`, `GET /metrics`. `X-Tenant-ID` names the tenant and
//! `X-Session-ID` the session. It trusts its caller's `X-Tenant-ID`:
//! authentication and quotas are the gateway's job, so this port listens on
//! loopback only, unless the worker has an HTTP token (`--http-token`), which
//! every `/v1` call must then carry as `Authorization: Bearer`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bulkhead_proto::openai::{self, ChatRequest};
use bulkhead_proto::{GatewayId, RequestId, SessionId, TenantId, UserId, WorkerId};
use futures::StreamExt;
use serde_json::json;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::Instrument;

use crate::engine::Engine;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::request::{
    ChatMessage, Event, Finished, GenerateParams, Sampling, validate_messages, validate_stop,
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

pub fn router(state: HttpState, max_body_bytes: usize, token: Option<String>) -> Router {
    // With a token, the metrics (they name tenants) need it too.
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics));
    let api = match token {
        Some(token) => {
            let token: Arc<str> = token.into();
            api.route_layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let token = Arc::clone(&token);
                    async move {
                        if bearer_is(req.headers(), &token) {
                            next.run(req).await
                        } else {
                            let body = json!({"error": {"message": "this worker's HTTP API needs its token: send `Authorization: Bearer <token>`", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
                            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
                        }
                    }
                },
            ))
        }
        None => api,
    };
    api.route("/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state((state, max_body_bytes))
}

/// `GET /health` (open) and `GET /metrics` on the gRPC port; the metrics
/// name tenants, so they need a metrics credential the control plane lists
/// (`bulkhead credential create --role metrics`), sent as a bearer token.
pub fn ops_router(state: HttpState, scrapers: crate::gateways::Gateways) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move |state: AppState, headers: HeaderMap| async move {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if token.is_some_and(|t| scrapers.may_scrape(t.trim())) {
                    metrics(state).await
                } else {
                    let body = json!({"error": {
                        "message": "the metrics name tenants: send `Authorization: Bearer` with a metrics credential (`bulkhead credential create --role metrics`)",
                        "type": "authentication_error",
                        "param": null,
                        "code": "metrics_credential_required",
                    }});
                    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
                }
            }),
        )
        .with_state((state, 0))
}

type AppState = State<(HttpState, usize)>;

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in
/// constant time.
fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, given)| {
            bulkhead_proto::auth::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
        })
}

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

fn parse_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(GenerateParams, bool, bool), WorkerError> {
    let req = ChatRequest::parse(body).map_err(|e| WorkerError::invalid(e, None))?;
    let seed = req.seed32();
    let include_usage = req.include_usage();
    let max_tokens = req.max_tokens();
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
        .iter()
        .map(|m| {
            let text = m
                .text()
                .map_err(|e| WorkerError::invalid(e, Some("messages")))?;
            let calls = m
                .calls()
                .map_err(|e| WorkerError::invalid(e, Some("messages")))?;
            Ok(ChatMessage::new(&m.role, text)?
                .with_tools(calls, m.tool_call_id.clone().unwrap_or_default()))
        })
        .collect::<Result<Vec<_>, WorkerError>>()?;
    validate_messages(&messages)?;
    let offered = req
        .tools()
        .map_err(|(e, field)| WorkerError::invalid(e, Some(field)))?;
    if let Some(tool) = offered.server.first() {
        return Err(WorkerError::invalid(
            format!("the server-side tool `{tool}` runs through a gateway, not a worker's own API"),
            Some("tools"),
        ));
    }
    let (tools, tool_choice) = (offered.tools, offered.choice);
    let stop = req.stop_sequences();
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
    if max_tokens == Some(0) {
        return Err(WorkerError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    // No tenant config here: each user's prefixes are their own.
    let kv_scope = user.as_ref().map(ToString::to_string).unwrap_or_default();
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
        sampling: Sampling {
            ignore_eos: req.ignore_eos,
            ..Sampling::new(req.temperature, req.top_p, seed)?
        },
        stop,
        // The worker's own API knows no tenant configs: the model's window applies.
        context_window: None,
        // No gateway admitted it: the day it finishes.
        quota_day: String::new(),
        tools,
        tool_choice,
        kv_scope,
    };
    Ok((params, req.stream, include_usage))
}

fn usage_json(f: &Finished) -> serde_json::Value {
    openai::usage(
        f.usage.prompt_tokens,
        f.usage.completion_tokens,
        f.usage.cached_tokens,
    )
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
    let span = crate::request::span(&params);
    respond(state, params, stream, include_usage, span.clone())
        .instrument(span)
        .await
}

/// Runs a parsed request inside its span (`span` also marks the events of a
/// stream that outlives this function).
async fn respond(
    state: HttpState,
    params: GenerateParams,
    stream: bool,
    include_usage: bool,
    span: tracing::Span,
) -> Response {
    let (prepared, events) = match state.engine.submit(params) {
        Ok(submitted) => submitted,
        Err(e) => {
            tracing::warn!(error = %e, "request refused");
            return e.into_response();
        }
    };
    let completion =
        openai::Completion::new(prepared.params.request_id.as_str(), &prepared.params.model);
    let first = completion.role_chunk();
    let mut reply = openai::Reply::new(completion, prepared.params.reads_tool_calls());
    let request_header = [(REQUEST_ID_HEADER, prepared.params.request_id.to_string())];
    if !stream {
        let mut events = events;
        while let Some(event) = events.recv().await {
            match event {
                Event::Delta(delta) => {
                    reply.delta(&delta);
                }
                Event::Failed(err) => {
                    tracing::warn!(error = %err, "request failed");
                    return err.into_response();
                }
                Event::Finished(f) => {
                    let body = reply.message(f.finish_reason.as_str(), usage_json(&f));
                    return (request_header, axum::Json(body)).into_response();
                }
            }
        }
        return WorkerError::Engine("the engine ended the request without an answer".into())
            .into_response();
    }
    let head = futures::stream::once(async move { SseEvent::default().json_data(first) });
    let body = UnboundedReceiverStream::new(events).flat_map(move |event| {
        let out: Vec<Result<SseEvent, axum::Error>> = match event {
            Event::Delta(text) => reply
                .delta(&text)
                .into_iter()
                .map(|c| SseEvent::default().json_data(c))
                .collect(),
            Event::Finished(f) => {
                let mut out: Vec<_> = reply
                    .final_chunks(f.finish_reason.as_str(), usage_json(&f), include_usage)
                    .into_iter()
                    .map(|c| SseEvent::default().json_data(c))
                    .collect();
                out.push(Ok(SseEvent::default().data("[DONE]")));
                out
            }
            Event::Failed(err) => {
                span.in_scope(|| tracing::warn!(error = %err, "request failed"));
                vec![SseEvent::default().json_data(err.body())]
            }
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
