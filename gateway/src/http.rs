//! The gateway's OpenAI-compatible API (DESIGN.md section 3): authenticate,
//! validate, assemble the session's context, admit against the tenant's
//! limits, route to the worker that holds the session's KV slot, stream the
//! answer, settle.
//!
//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/tenant`
//! (what a chat front end shows: name, welcome message, quick prompts,
//! limits, whether the model is ready), `POST|GET
//! /v1/sessions`, `GET /v1/sessions/{id}/messages`, `DELETE
//! /v1/sessions/{id}`, `POST|GET /v1/files`, `GET|DELETE /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `GET /health`, `GET /metrics`.

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

mod admission;
mod answer;
mod auth;
mod bursts;
mod chat;
mod context;
pub(crate) mod files;
pub mod server_tools;
mod sessions;

pub(crate) use auth::bearer_token;
use auth::*;
use chat::chat_completions;
use context::*;

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
    /// Where server-side tools run, or why they cannot on this machine.
    pub sandbox: Result<Arc<bulkhead_sandbox::Sandbox>, String>,
}

type S = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/tenant", get(tenant_profile))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route(
            "/v1/burst_requests",
            post(bursts::request_burst).get(bursts::list_bursts),
        )
        .route(
            "/v1/files",
            post(files::upload_file)
                .layer(DefaultBodyLimit::max(files::MAX_UPLOAD_BODY))
                .get(files::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(files::get_file).delete(files::delete_file),
        )
        .route("/v1/files/{id}/content", get(files::file_content))
        .route("/v1/sessions/{id}", delete(delete_session))
        .route("/v1/sessions/{id}/messages", get(session_messages))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        // Errors in the request's language (Accept-Language, else the tenant's).
        .layer(axum::middleware::from_fn(crate::i18n::layer))
        .with_state(state)
}

async fn not_found() -> Response {
    GatewayError::NotFound {
        message: crate::i18n::Text::new("no-route"),
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
        return GatewayError::invalid_api_key(
            "metrics name every tenant: send the admin token as `Authorization: Bearer <admin token>`",
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
            return GatewayError::invalid_api_key(format!(
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

/// A method of the control plane's Member client, as a call site writes it
/// (`|mut c, req| async move { c.list_sessions(req).await }`): one name for
/// the bound the calls below share.
pub(super) trait MemberMethod<M, T>:
    Fn(cp::member_client::MemberClient<tonic::transport::Channel>, tonic::Request<M>) -> Self::Call
{
    type Call: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>;
}

impl<M, T, F, Fut> MemberMethod<M, T> for F
where
    F: Fn(cp::member_client::MemberClient<tonic::transport::Channel>, tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    type Call = Fut;
}

/// A Member call on behalf of `caller`: this gateway and the caller's key
/// are named for the audit trail (`x-bulkhead-actor`).
async fn member_call_as<M: Clone, T>(
    state: &AppState,
    caller: &Caller,
    message: M,
    method: impl MemberMethod<M, T>,
) -> Result<T, tonic::Status> {
    member_call_within(state, caller, CONTROL_PLANE_DEADLINE, message, method).await
}

/// [`member_call_as`] with a deadline of its own (a file's upload or
/// download carries megabytes).
async fn member_call_within<M: Clone, T>(
    state: &AppState,
    caller: &Caller,
    deadline: Duration,
    message: M,
    method: impl MemberMethod<M, T>,
) -> Result<T, tonic::Status> {
    let actor: Option<tonic::metadata::AsciiMetadataValue> =
        format!("gateway {} key {}", state.gateway_id, caller.key_id)
            .parse()
            .ok();
    state
        .client
        .member()
        .send_for(deadline, message, move |c, mut req| {
            if let Some(a) = actor.clone() {
                req.metadata_mut()
                    .insert(bulkhead_client::ACTOR_METADATA, a);
            }
            method(c, req)
        })
        .await
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
        // The language this caller's messages come in (its Accept-Language,
        // else the tenant's `locale`), for the console to match.
        "locale": crate::i18n::current().tag(),
        // Set for a user's key: its requests act as this user, and it sees
        // this user's sessions only.
        "user": caller.user.as_ref().map(ToString::to_string),
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
        "features": {
            "burst": t.features.as_ref().is_some_and(|f| f.burst),
            "tools": t.features.as_ref().map(|f| f.tools.clone()).unwrap_or_default(),
            "kv_share_across_users": t.features.as_ref().is_some_and(|f| f.kv_share_across_users),
            "storage_mb": t.features.as_ref().map_or(0, |f| f.storage_mb),
        },
    })))
}
