//! The gateway's OpenAI-compatible API (DESIGN.md section 3): authenticate,
//! validate, assemble the session's context, admit against the tenant's
//! limits, route to the worker that holds the session's KV slot, stream the
//! answer, settle.
//!
//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/tenant`
//! (what a chat front end shows: name, welcome message, quick prompts,
//! limits, whether the model is ready), `POST|GET
//! /v1/sessions`, `GET /v1/sessions/{id}/messages`, `DELETE
//! /v1/sessions/{id}`, `GET /health`, `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::control as cp;
use bulkhead_proto::openai::{self, ChatRequest};
use bulkhead_proto::worker as pb;
use bulkhead_proto::{GatewayId, RequestId, SessionId, UserId};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::directory::{Caller, Directory};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::quota::Quotas;
use crate::route::{Workers, rank};

mod answer;
mod sessions;

use answer::{Outcome, stream_answer, whole_answer};
use sessions::{create_session, delete_session, list_sessions, session_messages};

pub const TENANT_HEADER: &str = "x-tenant-id";
pub const USER_HEADER: &str = "x-user-id";
pub const SESSION_HEADER: &str = "x-session-id";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// `max_tokens` when the request does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// How long a session read or write on the request path may wait.
pub(crate) const CONTROL_PLANE_DEADLINE: Duration = Duration::from_secs(3);

pub struct AppState {
    pub gateway_id: GatewayId,
    pub directory: Arc<Directory>,
    pub quotas: Arc<Quotas>,
    pub workers: Arc<Workers>,
    pub client: Arc<ControlPlaneClient>,
    /// Session turns, appended in batches (group commit).
    pub turns: crate::turns::TurnWriter,
    pub turn_reads: crate::turns::TurnReader,
    pub metrics: Arc<Metrics>,
    /// The model of tenants that name none.
    pub default_model: Option<String>,
    pub max_body_bytes: usize,
    /// See [`crate::GatewayConfig::request_deadline`].
    pub request_deadline: Duration,
    /// Per-tenant limits on session and sharing writes.
    pub throttle: crate::throttle::Throttle,
}

type S = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/tenant", get(tenant_profile))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", delete(delete_session))
        .route("/v1/sessions/{id}/messages", get(session_messages))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> Response {
    GatewayError::NotFound {
        message: "no such route".into(),
        code: "not_found",
    }
    .into_response()
}

async fn health(State(state): S) -> Response {
    let synced = state.directory.is_synced();
    let status = if synced {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if synced { "ok" } else { "starting" },
        "gateway_id": state.gateway_id.to_string(),
        "models": state.directory.models_served(),
    });
    (status, axum::Json(body)).into_response()
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme
/// in any case), if it has one.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
}

/// `GET /metrics`: per-tenant volumes, so only for the operator. The admin
/// token (`Authorization: Bearer`, as a Prometheus scrape config sends it)
/// is checked by the control plane on every scrape.
async fn metrics(State(state): S, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned);
    let Some(token) = token else {
        return GatewayError::Unauthorized(
            "metrics name every tenant: send the admin token as `Authorization: Bearer <admin token>`"
                .into(),
        )
        .into_response();
    };
    let checked = state
        .client
        .with_token(token)
        .admin()
        .send(cp::ListPlansRequest {}, |mut c, req| async move {
            c.list_plans(req).await
        })
        .await;
    match checked {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            return GatewayError::Unauthorized(format!(
                "{}: metrics need the admin token",
                status.message()
            ))
            .into_response();
        }
        Err(status) => return GatewayError::from_control_plane(&status).into_response(),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                GatewayError::bad_request(format!("header {name} must be ASCII"), None)
            })
        })
        .transpose()
}

/// Step 1: the key names the tenant; `X-Tenant-ID`, if sent, must agree.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    if !state.directory.is_synced() {
        return Err(GatewayError::Unavailable(
            "the gateway is still loading tenants and keys from the control plane; retry in a moment".into(),
        ));
    }
    let key = header_str(headers, header::AUTHORIZATION.as_str())?
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            GatewayError::Unauthorized(
                "no API key: send your tenant's key as `Authorization: Bearer <key>`".into(),
            )
        })?;
    let caller = state.directory.authenticate(key).ok_or_else(|| {
        GatewayError::Unauthorized("the API key is not valid (unknown or revoked)".into())
    })?;
    if let Some(claimed) = header_str(headers, TENANT_HEADER)?
        && claimed != caller.tenant.id
    {
        return Err(GatewayError::Forbidden(format!(
            "X-Tenant-ID names tenant {claimed:?} but the API key belongs to another tenant"
        )));
    }
    Ok(caller)
}

fn user_id(headers: &HeaderMap, body: Option<&str>) -> Result<Option<UserId>, GatewayError> {
    match header_str(headers, USER_HEADER)? {
        Some(u) => UserId::new(u)
            .map(Some)
            .map_err(|e| GatewayError::bad_request(format!("header X-User-ID: {e}"), None)),
        None => body
            .map(UserId::new)
            .transpose()
            .map_err(|e| GatewayError::bad_request(e.to_string(), Some("user"))),
    }
}

fn session_id(raw: &str) -> Result<SessionId, GatewayError> {
    SessionId::new(raw).map_err(|e| GatewayError::bad_request(e.to_string(), Some("session_id")))
}

/// The control plane's "not found" on a session call, as the caller reads it.
fn not_found_as_session(e: GatewayError, id: &str) -> GatewayError {
    match e {
        GatewayError::NotFound { .. } => session_not_found(id),
        e => e,
    }
}

fn session_not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("no session {id:?} in your tenant; create one with POST /v1/sessions"),
        code: "session_not_found",
    }
}

/// The model a tenant uses ([`Directory::tenant_model`] with the gateway's
/// default).
fn tenant_model(state: &AppState, tenant: &cp::Tenant) -> Result<String, GatewayError> {
    state
        .directory
        .tenant_model(tenant, state.default_model.as_deref())
        .ok_or_else(|| {
            GatewayError::Unavailable(format!(
                "tenant {} has no model set and this gateway has no default; ask your administrator to set one",
                tenant.id
            ))
        })
}

async fn models(State(state): S, headers: HeaderMap) -> Result<axum::Json<Value>, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let model = tenant_model(&state, &caller.tenant)?;
    Ok(axum::Json(json!({"object": "list", "data": [{
        "id": model, "object": "model", "created": caller.tenant.created_at_ms / 1000,
        "owned_by": "bulkhead", "adapter": caller.tenant.adapter,
    }]})))
}

/// The caller's tenant as its users see it.
async fn tenant_profile(
    State(state): S,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let t = &caller.tenant;
    let model = tenant_model(&state, t).unwrap_or_default();
    let limits = t.limits.unwrap_or_default();
    Ok(axum::Json(json!({
        "object": "tenant",
        "id": t.id,
        "display_name": if t.display_name.is_empty() { &t.id } else { &t.display_name },
        "plan": t.plan,
        "welcome_message": t.welcome_message,
        "quick_prompts": t.quick_prompts,
        "model": model,
        "model_status": state.directory.model_status(&model, &t.adapter),
        "limits": {
            "daily_tokens": limits.daily_tokens,
            "max_concurrent": limits.max_concurrent,
            "max_request_tokens": limits.max_request_tokens,
            "context_turns": limits.context_turns,
        },
    })))
}

/// An uploaded body, or the error that describes why there is none.
fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, GatewayError> {
    match body {
        Ok(body) => Ok(body),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(GatewayError::TooLarge(limit)),
        Err(r) => Err(GatewayError::bad_request(r.body_text(), None)),
    }
}

/// A chat request, validated and with its context assembled.
struct Prepared {
    caller: Caller,
    request: pb::GenerateRequest,
    /// The request's own messages, to append to the session afterwards.
    new_turns: Vec<cp::Turn>,
    stream: bool,
    include_usage: bool,
    /// Upper bound of the prompt's tokens (exact when it had to be).
    prompt_bound: u64,
    /// Whether the caller set max_tokens (else it may be lowered to fit).
    explicit_max_tokens: bool,
    /// The snippets the user's messages name (`@shared:<name>`), resolved
    /// once the request is admitted, and where in the messages they go.
    shared: Vec<String>,
    shared_at: usize,
}

fn turn_role(role: &str) -> Option<&'static str> {
    match role {
        "system" | "developer" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    }
}

async fn prepare(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Prepared, GatewayError> {
    let body = body_or_error(body, state.max_body_bytes)?;
    let req = ChatRequest::parse(&body).map_err(|e| GatewayError::bad_request(e, None))?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::bad_request(
            "only n = 1 is supported",
            Some("n"),
        ));
    }
    let tenant = Arc::clone(&caller.tenant);
    let model = tenant_model(state, &tenant)?;
    if !req.model.is_empty() && req.model != model {
        return Err(GatewayError::NotFound {
            message: format!(
                "the model `{}` is not available to your tenant; GET /v1/models lists yours (`{model}`)",
                req.model
            ),
            code: "model_not_found",
        });
    }
    if let Some(adapter) = req.adapter.as_deref().filter(|a| !a.is_empty())
        && adapter != tenant.adapter
    {
        return Err(GatewayError::NotFound {
            message: format!("the adapter `{adapter}` is not available to your tenant"),
            code: "adapter_not_found",
        });
    }
    let max_tokens = req.max_tokens();
    if max_tokens == Some(0) {
        return Err(GatewayError::bad_request(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    let user = user_id(headers, req.user.as_deref())?;
    let session = match header_str(headers, SESSION_HEADER)?.or(req.session_id.as_deref()) {
        Some(raw) => Some(session_id(raw)?),
        None => None,
    };
    let mut new_turns = Vec::with_capacity(req.messages.len());
    let mut messages = Vec::new();
    for m in &req.messages {
        let text = m
            .text()
            .map_err(|e| GatewayError::bad_request(e, Some("messages")))?;
        if let Some(role) = turn_role(&m.role) {
            new_turns.push(cp::Turn {
                role: role.into(),
                content: text.clone(),
                ..Default::default()
            });
        }
        messages.push(pb::ChatMessage {
            role: m.role.clone(),
            content: text,
        });
    }
    let limits = tenant.limits.unwrap_or_default();
    let mut context = Vec::new();
    if !tenant.system_prompt.is_empty()
        && !messages
            .iter()
            .any(|m| m.role == "system" || m.role == "developer")
    {
        context.push(pb::ChatMessage {
            role: "system".into(),
            content: tenant.system_prompt.clone(),
        });
    }
    if let Some(session) = session.as_ref().filter(|_| limits.context_turns > 0) {
        let msg = cp::GetTurnsRequest {
            tenant_id: tenant.id.clone(),
            session_id: session.to_string(),
            last: limits.context_turns,
        };
        let turns = state
            .turn_reads
            .call(msg)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => session_not_found(session.as_str()),
                _ => GatewayError::from_control_plane(&s),
            })?;
        context.extend(turns.turns.into_iter().map(|t| pb::ChatMessage {
            role: t.role,
            content: t.content,
        }));
    }
    let shared = shared_names(&messages);
    let shared_at = context.len();
    context.extend(messages);
    let prompt_bound = token_bound(&context) + 16;
    let sampling = pb::Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed32(),
    };
    let request = pb::GenerateRequest {
        request_id: RequestId::generate().to_string(),
        tenant_id: tenant.id.clone(),
        session_id: session.map(|s| s.to_string()).unwrap_or_default(),
        user_id: user.map(|u| u.to_string()).unwrap_or_default(),
        model,
        adapter: tenant.adapter.clone(),
        adapter_scale: (!tenant.adapter.is_empty() && tenant.adapter_scale > 0.0)
            .then_some(tenant.adapter_scale),
        messages: context,
        max_tokens: max_tokens.unwrap_or_else(|| default_max_tokens(&limits, prompt_bound)),
        sampling: Some(sampling),
        stop: req.stop_sequences(),
        gateway_id: state.gateway_id.to_string(),
        ignore_eos: req.ignore_eos,
        context_window: limits.context_window,
    };
    Ok(Prepared {
        caller,
        request,
        new_turns,
        stream: req.stream,
        include_usage: req.include_usage(),
        prompt_bound,
        explicit_max_tokens: max_tokens.is_some(),
        shared,
        shared_at,
    })
}

/// An upper bound of the tokens of `messages`: byte-level BPE spends at
/// least one byte a token, plus a few template tokens per message.
fn token_bound(messages: &[pb::ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| m.content.len() as u64 + m.role.len() as u64 + 8)
        .sum()
}

/// The snippet names the user's messages refer to, in order, once each.
fn shared_names(messages: &[pb::ChatMessage]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in messages.iter().filter(|m| m.role == "user") {
        for name in bulkhead_client::references(&m.content) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The snippets of other tenants named `names` (`@shared:<name>`), as
/// system messages to put before the user's. The control plane checks the
/// grants and records each use and refusal in the audit trail; a snippet the
/// tenant may not read refuses the whole request (403).
async fn shared_knowledge(
    state: &AppState,
    caller: &Caller,
    user_id: &str,
    names: Vec<String>,
) -> Result<Vec<pb::ChatMessage>, GatewayError> {
    state.throttle.take(&caller.tenant.id, "shared-snippet")?;
    let msg = cp::ResolveSharedRequest {
        tenant_id: caller.tenant.id.clone(),
        names,
        user_id: user_id.to_owned(),
    };
    let actor: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        format!("gateway {} key {}", state.gateway_id, caller.key_id)
            .parse()
            .ok();
    let found = state
        .client
        .member()
        .send_for(CONTROL_PLANE_DEADLINE, msg, move |mut c, mut req| {
            if let Some(a) = actor.clone() {
                req.metadata_mut()
                    .insert(bulkhead_client::ACTOR_METADATA, a);
            }
            async move { c.resolve_shared(req).await }
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => GatewayError::Denied {
                message: format!(
                    "{}; its owner's administrator can share it with `bulkhead share grant`",
                    s.message()
                ),
                code: "shared_snippet_not_available",
                param: Some("messages"),
            },
            _ => GatewayError::from_control_plane(&s),
        })?;
    Ok(found
        .snippets
        .into_iter()
        .map(|s| pb::ChatMessage {
            role: "system".into(),
            content: format!(
                "Shared knowledge `{}` (from {}):\n{}",
                s.name, s.tenant_id, s.content
            ),
        })
        .collect())
}

/// The completion budget of a request that names none: [`DEFAULT_MAX_TOKENS`],
/// or less when the tenant's context window leaves less room after the
/// prompt's upper bound (a prompt that may not fit at all keeps the default,
/// and the worker's exact count decides).
fn default_max_tokens(limits: &cp::Limits, prompt_bound: u64) -> u32 {
    let room = u64::from(limits.context_window).saturating_sub(prompt_bound);
    if limits.context_window == 0 || room == 0 {
        return DEFAULT_MAX_TOKENS;
    }
    u32::try_from(room.min(u64::from(DEFAULT_MAX_TOKENS))).unwrap_or(DEFAULT_MAX_TOKENS)
}

/// Enforces `max_request_tokens`: with the cheap upper bound when it fits,
/// else with the exact count from a worker. Returns the tokens to reserve.
async fn fit_request(
    state: &AppState,
    p: &mut Prepared,
    ranked: &[cp::WorkerInfo],
) -> Result<u64, GatewayError> {
    let limit = u64::from(
        p.caller
            .tenant
            .limits
            .as_ref()
            .map_or(0, |l| l.max_request_tokens),
    );
    let max_tokens = u64::from(p.request.max_tokens);
    if limit == 0 || p.prompt_bound + max_tokens <= limit {
        return Ok(p.prompt_bound + max_tokens);
    }
    let counted = state
        .workers
        .count_tokens(
            ranked,
            &pb::CountTokensRequest {
                model: p.request.model.clone(),
                messages: p.request.messages.clone(),
            },
        )
        .await
        .map_err(|s| GatewayError::from_worker(&s))?;
    let prompt = u64::from(counted.prompt_tokens);
    p.prompt_bound = prompt;
    if prompt + max_tokens <= limit {
        return Ok(prompt + max_tokens);
    }
    if !p.explicit_max_tokens && prompt < limit {
        p.request.max_tokens = u32::try_from(limit - prompt).unwrap_or(u32::MAX);
        return Ok(limit);
    }
    Err(GatewayError::BadRequest {
        message: format!(
            "this request needs up to {} tokens ({prompt} in the prompt and context, {max_tokens} for the completion), more than your tenant's limit of {limit} tokens per request; shorten the messages or lower max_tokens",
            prompt + max_tokens
        ),
        param: Some("max_tokens"),
        code: Some("request_token_limit_exceeded"),
    })
}

async fn chat_completions(
    State(state): S,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let prepared = match authenticate(&state, &headers) {
        Ok(caller) => {
            let tenant = caller.tenant.id.clone();
            prepare(&state, caller, &headers, body)
                .await
                .map_err(|e| (tenant, e))
        }
        Err(e) => Err((String::new(), e)),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err((tenant, e)) => {
            state.metrics.observe_request(
                &tenant,
                e.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            return e.into_response();
        }
    };
    let span = tracing::info_span!(
        "chat",
        tenant = %prepared.caller.tenant.id,
        user = %prepared.request.user_id,
        request_id = %prepared.request.request_id,
        session = %prepared.request.session_id,
    );
    let tenant = prepared.caller.tenant.id.clone();
    async move {
        match admit_and_generate(&state, prepared).await {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(status = e.status().as_u16(), error = %e, "request refused");
                state.metrics.observe_request(
                    &tenant,
                    e.status().as_u16(),
                    started.elapsed().as_secs_f64(),
                );
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn admit_and_generate(
    state: &Arc<AppState>,
    mut p: Prepared,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let tenant = Arc::clone(&p.caller.tenant);
    let affinity = if p.request.session_id.is_empty() {
        p.request.user_id.clone()
    } else {
        p.request.session_id.clone()
    };
    let ranked = rank(
        &tenant.id,
        &affinity,
        state
            .directory
            .workers_for(&p.request.model, &p.request.adapter),
    );
    if ranked.is_empty() {
        let model = p.request.model.clone();
        return Err(match state.directory.loading(&model) {
            Some(progress) => GatewayError::ModelLoading { model, progress },
            None => GatewayError::Unavailable(format!(
                "no worker serves the model `{model}` right now; retry shortly"
            )),
        });
    }
    let need = fit_request(state, &mut p, &ranked).await?;
    let mut permit = state.quotas.admit(&tenant, need).await?;
    if !p.shared.is_empty() {
        // `@shared:` is resolved (an audited Raft write) only for a request
        // the tenant's quota admits; with the snippets in, it is admitted
        // again for its new size.
        let names = std::mem::take(&mut p.shared);
        let snippets = match shared_knowledge(state, &p.caller, &p.request.user_id, names).await {
            Ok(snippets) => snippets,
            Err(e) => {
                permit.refund();
                return Err(e);
            }
        };
        p.prompt_bound += token_bound(&snippets);
        p.request
            .messages
            .splice(p.shared_at..p.shared_at, snippets);
        permit.refund();
        let need = fit_request(state, &mut p, &ranked).await?;
        permit = state.quotas.admit(&tenant, need).await?;
    }
    let (stream, worker, failovers) = match state.workers.generate(&ranked, &p.request).await {
        Ok(started) => started,
        Err(status) => {
            permit.refund();
            return Err(GatewayError::from_worker(&status));
        }
    };
    state.metrics.worker_failovers.inc_by(u64::from(failovers));
    tracing::debug!(worker = %worker, "routed");
    let outcome = Outcome {
        state: Arc::clone(state),
        tenant_id: tenant.id.clone(),
        session_id: p.request.session_id.clone(),
        user_id: p.request.user_id.clone(),
        new_turns: std::mem::take(&mut p.new_turns),
        started,
    };
    let completion = openai::Completion::new(&p.request.request_id, &p.request.model);
    if p.stream {
        Ok(stream_answer(
            outcome,
            permit,
            stream,
            completion,
            p.include_usage,
            &p.request.request_id,
        ))
    } else {
        Ok(whole_answer(outcome, permit, stream, completion, &p.request.request_id).await)
    }
}
