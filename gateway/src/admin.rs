//! The admin HTTP API, `/admin/v1/...`: every admin command of the control
//! plane's `ControlPlane` gRPC service as JSON over HTTP (and one route that
//! applies tenant config files, in YAML). `docs/admin-openapi.yaml` describes
//! it; a test holds that file's routes equal to [`ROUTES`], and the router is
//! built from the same table as [`ROUTES`].
//!
//! The gateway checks no admin token itself and keeps nothing between
//! requests: it forwards the caller's `Authorization: Bearer <token>` to the
//! control plane as the admin token (never with the cluster secret, so the
//! control plane judges the caller's token alone), with `x-bulkhead-actor:
//! gateway <id> from <client ip>` so that the audit trail says where a change
//! came from. A request without a token is answered 401 here.
//!
//! Bodies and answers use the field names of the proto messages
//! (snake_case). Errors have the shape of the rest of the gateway's errors,
//! `{"error":{"message","type","param","code"}}`. Control-plane statuses map
//! to HTTP once, in [`AdminError::from_control_plane`]: Unauthenticated 401,
//! PermissionDenied 403, InvalidArgument 400, NotFound 404, AlreadyExists 409
//! (`already_exists`), FailedPrecondition 409 (`failed_precondition`: the
//! request is well formed but the tenant's plan or the record's state does
//! not allow it; nothing changed), Unavailable 503, anything else 502.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_control_plane::service::ACTOR_METADATA;
use bulkhead_proto::GatewayId;
use bulkhead_proto::control as pb;
use bulkhead_proto::control::control_plane_client::ControlPlaneClient as Grpc;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

use crate::directory::Directory;
use crate::route::Workers;

/// What the admin routes need: who this gateway is, a client of the control
/// plane whose connections the per-request clients share, and (for the live
/// monitor) the gateway's view of the workers.
pub struct AdminState {
    pub gateway_id: GatewayId,
    pub client: Arc<ControlPlaneClient>,
    pub max_body_bytes: usize,
    /// Workers and tenants as this gateway follows them, for the monitor.
    pub directory: Arc<Directory>,
    pub workers: Arc<Workers>,
    /// The model of tenants that name none.
    pub default_model: Option<String>,
}

type Answer = Result<Response, AdminError>;

/// One table makes both [`ROUTES`] and the router, so they cannot drift.
macro_rules! admin_routes {
    ($( $method:ident $path:literal => $handler:ident; )*) => {
        /// Every admin route: (HTTP method, path template in OpenAPI form).
        pub const ROUTES: &[(&str, &str)] = &[$( (stringify!($method), $path) ),*];

        fn routes() -> Router<Arc<AdminState>> {
            Router::new()$( .route($path, on(MethodFilter::$method, $handler)) )*
        }
    };
}

admin_routes! {
    GET "/admin/v1/cluster" => cluster_status;
    POST "/admin/v1/cluster/nodes" => add_node;
    DELETE "/admin/v1/cluster/nodes/{id}" => remove_node;
    GET "/admin/v1/plans" => list_plans;
    GET "/admin/v1/tenants" => list_tenants;
    POST "/admin/v1/tenants" => create_tenant;
    GET "/admin/v1/tenants/{id}" => get_tenant;
    PATCH "/admin/v1/tenants/{id}" => update_tenant;
    DELETE "/admin/v1/tenants/{id}" => delete_tenant;
    POST "/admin/v1/tenant-configs" => apply_tenant_configs;
    GET "/admin/v1/tenants/{id}/keys" => list_keys;
    POST "/admin/v1/tenants/{id}/keys" => create_key;
    DELETE "/admin/v1/keys/{key_id}" => revoke_key;
    GET "/admin/v1/tenants/{id}/usage" => usage;
    GET "/admin/v1/tenants/{id}/usage/export" => export_usage;
    GET "/admin/v1/bursts" => list_bursts;
    POST "/admin/v1/tenants/{id}/bursts" => request_burst;
    POST "/admin/v1/bursts/{id}/approve" => approve_burst;
    POST "/admin/v1/bursts/{id}/deny" => deny_burst;
    GET "/admin/v1/webhooks" => list_webhooks;
    POST "/admin/v1/webhooks" => create_webhook;
    DELETE "/admin/v1/webhooks/{id}" => delete_webhook;
    GET "/admin/v1/webhooks/deliveries" => list_deliveries;
    GET "/admin/v1/snippets" => list_snippets;
    PUT "/admin/v1/tenants/{id}/snippets/{name}" => publish_snippet;
    DELETE "/admin/v1/tenants/{id}/snippets/{name}" => delete_snippet;
    GET "/admin/v1/shares" => list_shares;
    POST "/admin/v1/shares" => grant_share;
    DELETE "/admin/v1/shares" => revoke_share;
    GET "/admin/v1/tenants/{id}/audit" => list_audit;
    GET "/admin/v1/audit/verify" => verify_audit;
    GET "/admin/v1/monitor" => monitor;
}

/// The admin API's router, to merge with the OpenAI-style API's. The client
/// IP in the audit actor comes from `ConnectInfo<SocketAddr>` when the
/// server provides it.
pub fn router(state: AdminState) -> Router {
    let limit = state.max_body_bytes;
    routes()
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(state))
}

async fn method_not_allowed() -> Response {
    AdminError::MethodNotAllowed.into_response()
}

// ---------------------------------------------------------------------------
// Errors

/// Every way an admin request fails, each with one status and one body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// No token, or the control plane refused it.
    #[error("{message}")]
    Unauthorized { message: String, code: &'static str },
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    /// AlreadyExists or FailedPrecondition: valid, but the state says no.
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    #[error("this route does not take that method; see docs/admin-openapi.yaml")]
    MethodNotAllowed,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The control plane failed (not the caller's fault).
    #[error("{0}")]
    Upstream(String),
}

impl AdminError {
    fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: "invalid_request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::BadRequest { .. }
            | Self::NotFound(_)
            | Self::Conflict { .. }
            | Self::MethodNotAllowed
            | Self::TooLarge(_) => "invalid_request_error",
            Self::Unavailable(_) => "service_unavailable",
            Self::Upstream(_) => "server_error",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { code, .. }
            | Self::BadRequest { code, .. }
            | Self::Conflict { code, .. } => code,
            Self::Forbidden(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge(_) => "request_too_large",
            Self::Unavailable(_) => "control_plane_unavailable",
            Self::Upstream(_) => "control_plane_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The error body, in the gateway's OpenAI-style shape.
    pub fn body(&self) -> Value {
        bulkhead_proto::openai::error(
            &self.to_string(),
            self.kind(),
            self.param(),
            Some(self.code()),
        )
    }

    /// A control-plane status, as the admin API's caller reads it.
    pub fn from_control_plane(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthorized {
                message,
                code: "invalid_admin_token",
            },
            Code::PermissionDenied => Self::Forbidden(message),
            Code::InvalidArgument | Code::OutOfRange => Self::BadRequest {
                param: field_of(&message),
                message,
                code: "invalid_argument",
            },
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::Conflict {
                message,
                code: "already_exists",
            },
            Code::FailedPrecondition => Self::Conflict {
                message,
                code: "failed_precondition",
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                Self::Unavailable(format!(
                    "the control plane cannot answer now ({message}); retry shortly"
                ))
            }
            _ => Self::Upstream(format!("the control plane failed: {message}")),
        }
    }

    /// An extractor's refusal (body, query string, path), as JSON.
    fn rejected(status: StatusCode, what: &str, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::TooLarge(format!("the request body is too large: {text}"));
        }
        Self::BadRequest {
            message: format!("{what}: {text}"),
            param: None,
            code: "invalid_request",
        }
    }
}

/// The field a control-plane message starts with (`url: ...` names `url`).
fn field_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let ok = !head.is_empty()
        && head.len() <= 64
        && head
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    ok.then(|| head.to_owned())
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}

// ---------------------------------------------------------------------------
// Extractors

/// The caller: its token (forwarded, not checked here) and the actor the
/// audit trail records. Extracted first, so a request without a token is
/// refused before anything else about it is read.
struct Admin {
    client: ControlPlaneClient,
    actor: AsciiMetadataValue,
}

impl FromRequestParts<Arc<AdminState>> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, AdminError> {
        let missing = || AdminError::Unauthorized {
            message: "no admin token: send `Authorization: Bearer <admin token>`".into(),
            code: "missing_admin_token",
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(missing)?;
        let value = value.to_str().map_err(|_| AdminError::Unauthorized {
            message: "the Authorization header is not ASCII; the admin token is wrong".into(),
            code: "invalid_admin_token",
        })?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(missing)?;
        let from = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "an unknown address".to_owned(), |c| c.0.ip().to_string());
        let actor = format!("gateway {} from {from}", state.gateway_id);
        let actor = MetadataValue::try_from(actor.as_str()).map_err(|_| {
            AdminError::Upstream(format!("the actor {actor:?} is not valid metadata"))
        })?;
        Ok(Self {
            client: state.client.with_token(token.to_owned()),
            actor,
        })
    }
}

impl Admin {
    /// Sends `message` through `method` with the token and the actor.
    async fn send<M, T, F, Fut>(&self, message: M, method: F) -> Result<T, AdminError>
    where
        M: Clone,
        F: Fn(Grpc<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client
            .send(message, |c, mut req| {
                req.metadata_mut()
                    .insert(ACTOR_METADATA, self.actor.clone());
                method(c, req)
            })
            .await
            .map_err(|s| AdminError::from_control_plane(&s))
    }
}

/// A JSON body; an empty body reads as `{}`. Any content type is accepted
/// (`curl -d` sends a form type); a body that does not parse is a 400 that
/// says what is wrong.
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<Arc<AdminState>> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &Arc<AdminState>) -> Result<Self, AdminError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| AdminError::rejected(r.status(), "the request body", r.body_text()))?;
        parse_json(&bytes).map(Self)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let param = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_owned());
        AdminError::BadRequest {
            message: format!("the request body is not the JSON this route takes: {message}"),
            param,
            code: "invalid_json",
        }
    })
}

/// A query string; unknown parameters are refused.
struct QueryOf<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<AdminState>> for QueryOf<T> {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, AdminError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|r| AdminError::rejected(r.status(), "the query string", r.body_text()))
    }
}

/// Path parameters.
struct PathOf<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<AdminState>> for PathOf<T> {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, AdminError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|r| AdminError::rejected(r.status(), "the path", r.body_text()))
    }
}

fn ok(body: Value) -> Answer {
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

fn created(body: Value) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

// ---------------------------------------------------------------------------
// Request bodies and query strings (proto field names)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNode {
    id: u64,
    addr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsBody {
    daily_tokens: u64,
    max_concurrent: u32,
    max_request_tokens: u32,
    context_window: u32,
    context_turns: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FeatureOverridesBody {
    burst: Option<bool>,
    burst_percent: Option<u32>,
    knowledge_sharing: Option<bool>,
    max_keys: Option<u32>,
    retention_days: Option<u32>,
}

impl From<FeatureOverridesBody> for pb::FeatureOverrides {
    fn from(f: FeatureOverridesBody) -> Self {
        Self {
            burst: f.burst,
            burst_percent: f.burst_percent,
            knowledge_sharing: f.knowledge_sharing,
            max_keys: f.max_keys,
            retention_days: f.retention_days,
        }
    }
}

/// A new tenant: limits and features not given follow its plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    plan: String,
    limits: Option<LimitsBody>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    adapter: String,
    #[serde(default)]
    adapter_scale: f32,
    #[serde(default)]
    system_prompt: String,
    #[serde(default)]
    welcome_message: String,
    #[serde(default)]
    quick_prompts: Vec<String>,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    knowledge_share: bool,
    feature_overrides: Option<FeatureOverridesBody>,
}

/// A tenant patch: only the fields given change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PatchBody {
    id: Option<String>,
    display_name: Option<String>,
    plan: Option<String>,
    daily_tokens: Option<u64>,
    max_concurrent: Option<u32>,
    max_request_tokens: Option<u32>,
    context_window: Option<u32>,
    context_turns: Option<u32>,
    model: Option<String>,
    adapter: Option<String>,
    adapter_scale: Option<f32>,
    system_prompt: Option<String>,
    welcome_message: Option<String>,
    quick_prompts: Option<Vec<String>>,
    time_zone: Option<String>,
    knowledge_share: Option<bool>,
    features: Option<FeatureOverridesBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NewKey {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UsageQuery {
    days: Option<u32>,
    format: Option<String>,
    /// First day (YYYY-MM-DD); with `to`, replaces `days`.
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TenantFilter {
    tenant_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BurstFilter {
    tenant_id: String,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstAsk {
    reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BurstNote {
    note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    #[serde(default)]
    tenant_id: String,
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DeliveryFilter {
    tenant_id: String,
    webhook_id: String,
    limit: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnippetBody {
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    owner_tenant_id: String,
    snippet: String,
    grantee_tenant_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ShareQuery {
    owner_tenant_id: Option<String>,
    snippet: Option<String>,
    grantee_tenant_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuditQuery {
    limit: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigQuery {
    source: Option<String>,
}

// ---------------------------------------------------------------------------
// Handlers

/// `ClusterStatus` is open on the control plane; this route is not, so the
/// token is checked first with a cheap admin read.
async fn cluster_status(admin: Admin) -> Answer {
    admin
        .send(pb::ListPlansRequest {}, |mut c, r| async move {
            c.list_plans(r).await
        })
        .await?;
    let s = admin
        .send(pb::ClusterStatusRequest {}, |mut c, r| async move {
            c.cluster_status(r).await
        })
        .await?;
    ok(cluster_json(&s))
}

async fn add_node(admin: Admin, JsonBody(b): JsonBody<NewNode>) -> Answer {
    let s = admin
        .send(
            pb::AddNodeRequest {
                id: b.id,
                addr: b.addr,
            },
            |mut c, r| async move { c.add_node(r).await },
        )
        .await?;
    ok(cluster_json(&s))
}

async fn remove_node(admin: Admin, PathOf(id): PathOf<u64>) -> Answer {
    let s = admin
        .send(pb::RemoveNodeRequest { id }, |mut c, r| async move {
            c.remove_node(r).await
        })
        .await?;
    ok(cluster_json(&s))
}

async fn list_plans(admin: Admin) -> Answer {
    let l = admin
        .send(pb::ListPlansRequest {}, |mut c, r| async move {
            c.list_plans(r).await
        })
        .await?;
    let plans: Vec<Value> = l
        .plans
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "limits": limits_json(p.limits.as_ref()),
                "features": features_json(p.features.as_ref()),
            })
        })
        .collect();
    ok(json!({ "plans": plans }))
}

async fn list_tenants(admin: Admin) -> Answer {
    let l = admin
        .send(pb::ListTenantsRequest {}, |mut c, r| async move {
            c.list_tenants(r).await
        })
        .await?;
    let tenants: Vec<Value> = l.tenants.iter().map(tenant_json).collect();
    ok(json!({ "tenants": tenants }))
}

/// The live monitor: every worker's numbers as it reports them now, and per
/// tenant the sessions whose KV is held on workers, the requests generating,
/// their KV memory and whether the tenant's model is ready.
async fn monitor(admin: Admin, State(state): State<Arc<AdminState>>) -> Answer {
    let l = admin
        .send(pb::ListTenantsRequest {}, |mut c, r| async move {
            c.list_tenants(r).await
        })
        .await?;
    let registered = state.directory.workers();
    let stats = futures::future::join_all(registered.iter().map(|w| async {
        if w.models.is_empty() {
            return Err("loading its models".to_owned());
        }
        state
            .workers
            .stats(w)
            .await
            .map_err(|e| e.message().to_owned())
    }))
    .await;
    let mut per_tenant: std::collections::HashMap<&str, [u64; 4]> = Default::default();
    let mut workers = Vec::new();
    for (w, s) in registered.iter().zip(&stats) {
        let loading: Vec<Value> = w
            .loading
            .iter()
            .map(|l| json!({"model": l.model, "progress": l.progress}))
            .collect();
        let mut entry = json!({
            "worker_id": w.worker_id,
            "addr": w.addr,
            "models": w.models,
            "loading": loading,
            "slots": w.slots,
        });
        match s {
            Ok(s) => {
                for t in &s.tenants {
                    let sums = per_tenant.entry(t.tenant_id.as_str()).or_default();
                    sums[0] += u64::from(t.device_slots + t.host_slots);
                    sums[1] += u64::from(t.active);
                    sums[2] += t.device_bytes;
                    sums[3] += t.host_bytes;
                }
                entry["reachable"] = json!(true);
                entry["tokens_per_second"] = json!(s.decode_tokens_per_second);
                entry["generated_tokens_total"] = json!(s.generated_tokens_total);
                entry["active_requests"] = json!(s.active_requests);
                entry["queued_requests"] = json!(s.queued_requests);
                entry["device_slots_used"] = json!(s.device_slots_used);
                entry["device_slots_total"] = json!(s.device_slots_total);
                entry["host_slots"] = json!(s.host_slots);
                entry["host_bytes"] = json!(s.host_bytes);
                let devices: Vec<Value> = s
                    .devices
                    .iter()
                    .map(|d| {
                        json!({
                            "name": d.name,
                            "description": d.description,
                            "memory_total_bytes": d.memory_total_bytes,
                            "memory_used_bytes": d.memory_total_bytes.saturating_sub(d.memory_free_bytes),
                        })
                    })
                    .collect();
                entry["vram_total_bytes"] =
                    json!(s.devices.iter().map(|d| d.memory_total_bytes).sum::<u64>());
                entry["vram_used_bytes"] = json!(
                    s.devices
                        .iter()
                        .map(|d| d.memory_total_bytes.saturating_sub(d.memory_free_bytes))
                        .sum::<u64>()
                );
                entry["devices"] = json!(devices);
            }
            Err(e) => {
                entry["reachable"] = json!(false);
                entry["error"] = json!(e);
            }
        }
        workers.push(entry);
    }
    let tenants: Vec<Value> = l
        .tenants
        .iter()
        .map(|t| {
            let [sessions, in_flight, device, host] =
                per_tenant.get(t.id.as_str()).copied().unwrap_or_default();
            let model = state
                .directory
                .tenant_model(t, state.default_model.as_deref())
                .unwrap_or_default();
            json!({
                "tenant_id": t.id,
                "display_name": t.display_name,
                "model": model,
                "model_status": state.directory.model_status(&model, &t.adapter),
                "active_sessions": sessions,
                "in_flight": in_flight,
                "kv_device_bytes": device,
                "kv_host_bytes": host,
            })
        })
        .collect();
    ok(json!({
        "gateway_id": state.gateway_id.to_string(),
        "at_ms": crate::now_ms(),
        "tenants": tenants,
        "workers": workers,
    }))
}

async fn create_tenant(admin: Admin, JsonBody(b): JsonBody<NewTenant>) -> Answer {
    let limits = b.limits.unwrap_or_default();
    let tenant = pb::Tenant {
        id: b.id,
        display_name: b.display_name,
        plan: b.plan,
        limits: Some(pb::Limits {
            daily_tokens: limits.daily_tokens,
            max_concurrent: limits.max_concurrent,
            max_request_tokens: limits.max_request_tokens,
            context_window: limits.context_window,
            context_turns: limits.context_turns,
        }),
        model: b.model,
        adapter: b.adapter,
        adapter_scale: b.adapter_scale,
        system_prompt: b.system_prompt,
        welcome_message: b.welcome_message,
        quick_prompts: b.quick_prompts,
        time_zone: b.time_zone,
        knowledge_share: b.knowledge_share,
        feature_overrides: b.feature_overrides.map(Into::into),
        ..Default::default()
    };
    let t = admin
        .send(tenant, |mut c, r| async move { c.create_tenant(r).await })
        .await?;
    created(tenant_json(&t))
}

async fn get_tenant(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let t = admin
        .send(pb::TenantRef { id }, |mut c, r| async move {
            c.get_tenant(r).await
        })
        .await?;
    ok(tenant_json(&t))
}

async fn update_tenant(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> Answer {
    if let Some(other) = b.id.as_ref().filter(|other| **other != id) {
        return Err(AdminError::bad_request(
            format!("id: the body names tenant {other:?} but the path names {id:?}"),
            Some("id"),
        ));
    }
    let patch = pb::TenantPatch {
        id,
        display_name: b.display_name,
        plan: b.plan,
        daily_tokens: b.daily_tokens,
        max_concurrent: b.max_concurrent,
        max_request_tokens: b.max_request_tokens,
        context_window: b.context_window,
        context_turns: b.context_turns,
        model: b.model,
        adapter: b.adapter,
        adapter_scale: b.adapter_scale,
        system_prompt: b.system_prompt,
        welcome_message: b.welcome_message,
        set_quick_prompts: b.quick_prompts.is_some(),
        quick_prompts: b.quick_prompts.unwrap_or_default(),
        time_zone: b.time_zone,
        knowledge_share: b.knowledge_share,
        features: b.features.map(Into::into),
    };
    let t = admin
        .send(patch, |mut c, r| async move { c.update_tenant(r).await })
        .await?;
    ok(tenant_json(&t))
}

async fn delete_tenant(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let d = admin
        .send(pb::TenantRef { id }, |mut c, r| async move {
            c.delete_tenant(r).await
        })
        .await?;
    ok(json!({
        "tenant": d.tenant.as_ref().map_or(Value::Null, tenant_json),
        "archive_path": d.archive_path,
    }))
}

/// Tenant config files (YAML, one or more `---` documents), applied all or
/// nothing. `?source=` names them in error messages (default `request`).
async fn apply_tenant_configs(
    admin: Admin,
    QueryOf(q): QueryOf<ConfigQuery>,
    body: Bytes,
) -> Answer {
    let source = q.source.unwrap_or_else(|| "request".to_owned());
    let text = std::str::from_utf8(&body)
        .map_err(|_| AdminError::bad_request("the request body is not UTF-8 text", None))?;
    if text.trim().is_empty() {
        return Err(AdminError::bad_request(
            "the request body is empty; send one or more tenant configs in YAML",
            None,
        ));
    }
    let configs = bulkhead_control_plane::tenant_config::parse(&source, text).map_err(|e| {
        AdminError::BadRequest {
            message: e.to_string(),
            param: None,
            code: "invalid_config",
        }
    })?;
    let reply = admin
        .send(pb::ApplyTenantsRequest { configs }, |mut c, r| async move {
            c.apply_tenants(r).await
        })
        .await
        .map_err(|e| match e {
            // The message starts with the source, not a field of this body.
            AdminError::BadRequest { message, code, .. } => AdminError::BadRequest {
                message,
                param: None,
                code,
            },
            e => e,
        })?;
    let outcomes: Vec<Value> = reply
        .outcomes
        .iter()
        .map(|o| {
            json!({
                "tenant_id": o.tenant_id,
                "source": o.source,
                "action": o.action,
                "changed": o.changed,
                "new_webhooks": o.new_webhooks.iter().map(created_webhook_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    ok(json!({ "outcomes": outcomes }))
}

async fn list_keys(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let l = admin
        .send(pb::TenantRef { id }, |mut c, r| async move {
            c.list_keys(r).await
        })
        .await?;
    let keys: Vec<Value> = l.keys.iter().map(key_json).collect();
    ok(json!({ "keys": keys }))
}

async fn create_key(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    JsonBody(b): JsonBody<NewKey>,
) -> Answer {
    let k = admin
        .send(
            pb::CreateKeyRequest {
                tenant_id,
                name: b.name,
            },
            |mut c, r| async move { c.create_key(r).await },
        )
        .await?;
    created(json!({
        "key": k.key.as_ref().map_or(Value::Null, key_json),
        "plaintext": k.plaintext,
    }))
}

async fn revoke_key(admin: Admin, PathOf(key_id): PathOf<String>) -> Answer {
    let k = admin
        .send(pb::RevokeKeyRequest { key_id }, |mut c, r| async move {
            c.revoke_key(r).await
        })
        .await?;
    ok(key_json(&k))
}

/// The CSV columns of `GET .../usage?format=csv`, one row per day.
pub const USAGE_CSV_HEADER: &str =
    "day,prompt_tokens,completion_tokens,cached_tokens,requests,quota,avg_latency_ms";

/// Days of usage when `days` is not given.
const DEFAULT_USAGE_DAYS: u32 = 7;

async fn usage(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<UsageQuery>,
) -> Answer {
    let days = q.days.unwrap_or(DEFAULT_USAGE_DAYS);
    if !(1..=366).contains(&days) {
        return Err(AdminError::bad_request(
            format!("days: must be 1 to 366, got {days}"),
            Some("days"),
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(AdminError::bad_request(
                format!("format: {other:?} is not json or csv"),
                Some("format"),
            ));
        }
    };
    let u = match (q.from, q.to) {
        (None, None) => {
            admin
                .send(
                    pb::UsageRequest { tenant_id, days },
                    |mut c, r| async move { c.usage(r).await },
                )
                .await?
        }
        (from, to) => {
            let (from_day, to_day) = range_of(from, to);
            admin
                .send(
                    pb::UsageRangeRequest {
                        tenant_id,
                        from_day,
                        to_day,
                    },
                    |mut c, r| async move { c.usage_range(r).await },
                )
                .await
                .map_err(range_param)?
        }
    };
    if csv {
        let mut out = String::from(USAGE_CSV_HEADER);
        out.push('\n');
        for d in &u.days {
            let avg = d.total_latency_ms.checked_div(d.requests).unwrap_or(0);
            out.push_str(&format!(
                "{},{},{},{},{},{},{avg}\n",
                d.day, d.prompt_tokens, d.completion_tokens, d.cached_tokens, d.requests, d.quota
            ));
        }
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            out,
        )
            .into_response());
    }
    let days: Vec<Value> = u
        .days
        .iter()
        .map(|d| {
            json!({
                "day": d.day,
                "prompt_tokens": d.prompt_tokens,
                "completion_tokens": d.completion_tokens,
                "cached_tokens": d.cached_tokens,
                "requests": d.requests,
                "quota": d.quota,
                "outstanding": d.outstanding,
                "total_latency_ms": d.total_latency_ms,
                "max_latency_ms": d.max_latency_ms,
                "avg_latency_ms": d.avg_latency_ms,
                "p95_latency_ms": d.p95_latency_ms,
            })
        })
        .collect();
    let users: Vec<Value> = u
        .users
        .iter()
        .map(|x| json!({"user_id": x.user_id, "tokens": x.tokens, "requests": x.requests}))
        .collect();
    let recent: Vec<Value> = u
        .recent
        .iter()
        .map(|r| {
            json!({
                "event_id": r.event_id,
                "user_id": r.user_id,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cached_tokens": r.cached_tokens,
                "duration_ms": r.duration_ms,
                "finished_at_ms": r.finished_at_ms,
            })
        })
        .collect();
    let top_prompts: Vec<Value> = u
        .top_prompts
        .iter()
        .map(|p| json!({"text": p.text, "count": p.count}))
        .collect();
    ok(json!({
        "tenant_id": u.tenant_id,
        "days": days,
        "users": users,
        "recent": recent,
        "top_prompts": top_prompts,
    }))
}

/// Both ends of a day range; a missing one is empty, which the control
/// plane refuses (after checking the token) naming the field.
fn range_of(from: Option<String>, to: Option<String>) -> (String, String) {
    (from.unwrap_or_default(), to.unwrap_or_default())
}

/// The control plane names the range fields `from_day`/`to_day`; over HTTP
/// they are the `from`/`to` query parameters.
fn range_param(e: AdminError) -> AdminError {
    match e {
        AdminError::BadRequest {
            message,
            param,
            code,
        } => AdminError::BadRequest {
            param: match param.as_deref() {
                Some("from_day") => Some("from".into()),
                Some("to_day") => Some("to".into()),
                _ => param,
            },
            message,
            code,
        },
        other => other,
    }
}

/// The CSV columns of `GET .../usage/export`, one row per day and user.
pub const USAGE_EXPORT_CSV_HEADER: &str = "day,user,tokens,requests";

/// De-identified usage as CSV: users are keyed hashes, no text of any
/// prompt or answer.
async fn export_usage(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<ExportQuery>,
) -> Answer {
    let (from_day, to_day) = range_of(q.from, q.to);
    let filename = format!("usage-{tenant_id}-{from_day}-{to_day}.csv");
    let export = admin
        .send(
            pb::UsageExportRequest {
                tenant_id,
                from_day,
                to_day,
            },
            |mut c, r| async move { c.export_usage(r).await },
        )
        .await
        .map_err(range_param)?;
    let mut out = String::from(USAGE_EXPORT_CSV_HEADER);
    out.push('\n');
    for r in &export.rows {
        out.push_str(&format!(
            "{},{},{},{}\n",
            r.day, r.user, r.tokens, r.requests
        ));
    }
    let disposition = format!("attachment; filename=\"{filename}\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        out,
    )
        .into_response())
}

async fn list_bursts(admin: Admin, QueryOf(q): QueryOf<BurstFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListBurstsRequest {
                tenant_id: q.tenant_id,
                status: q.status,
            },
            |mut c, r| async move { c.list_bursts(r).await },
        )
        .await?;
    let bursts: Vec<Value> = l.bursts.iter().map(burst_json).collect();
    ok(json!({ "bursts": bursts }))
}

async fn request_burst(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    JsonBody(b): JsonBody<BurstAsk>,
) -> Answer {
    let burst = admin
        .send(
            pb::BurstRequest {
                tenant_id,
                reason: b.reason,
            },
            |mut c, r| async move { c.request_burst(r).await },
        )
        .await?;
    created(burst_json(&burst))
}

async fn decide_burst(admin: Admin, burst_id: String, approve: bool, note: String) -> Answer {
    let burst = admin
        .send(
            pb::BurstDecision {
                burst_id,
                approve,
                note,
            },
            |mut c, r| async move { c.decide_burst(r).await },
        )
        .await?;
    ok(burst_json(&burst))
}

async fn approve_burst(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<BurstNote>,
) -> Answer {
    decide_burst(admin, id, true, b.note).await
}

async fn deny_burst(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<BurstNote>,
) -> Answer {
    decide_burst(admin, id, false, b.note).await
}

async fn list_webhooks(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListWebhooksRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_webhooks(r).await },
        )
        .await?;
    let webhooks: Vec<Value> = l.webhooks.iter().map(webhook_json).collect();
    ok(json!({ "webhooks": webhooks }))
}

async fn create_webhook(admin: Admin, JsonBody(b): JsonBody<NewWebhook>) -> Answer {
    let w = admin
        .send(
            pb::CreateWebhookRequest {
                tenant_id: b.tenant_id,
                url: b.url,
                events: b.events,
                secret: b.secret,
            },
            |mut c, r| async move { c.create_webhook(r).await },
        )
        .await?;
    created(created_webhook_json(&w))
}

async fn delete_webhook(admin: Admin, PathOf(webhook_id): PathOf<String>) -> Answer {
    let w = admin
        .send(pb::WebhookRef { webhook_id }, |mut c, r| async move {
            c.delete_webhook(r).await
        })
        .await?;
    ok(webhook_json(&w))
}

async fn list_deliveries(admin: Admin, QueryOf(q): QueryOf<DeliveryFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListDeliveriesRequest {
                tenant_id: q.tenant_id,
                webhook_id: q.webhook_id,
                limit: q.limit,
            },
            |mut c, r| async move { c.list_deliveries(r).await },
        )
        .await?;
    let deliveries: Vec<Value> = l
        .deliveries
        .iter()
        .map(|d| {
            let attempts: Vec<Value> = d
                .attempts
                .iter()
                .map(|a| {
                    json!({
                        "at_ms": a.at_ms,
                        "status": a.status,
                        "latency_ms": a.latency_ms,
                        "error": a.error,
                    })
                })
                .collect();
            json!({
                "message_id": d.message_id,
                "webhook_id": d.webhook_id,
                "tenant_id": d.tenant_id,
                "event_type": d.event_type,
                "payload": d.payload,
                "created_at_ms": d.created_at_ms,
                "state": d.state,
                "next_attempt_at_ms": d.next_attempt_at_ms,
                "attempts": attempts,
                "url": d.url,
            })
        })
        .collect();
    ok(json!({ "deliveries": deliveries }))
}

async fn list_snippets(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListSnippetsRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_snippets(r).await },
        )
        .await?;
    let snippets: Vec<Value> = l.snippets.iter().map(snippet_json).collect();
    ok(json!({ "snippets": snippets }))
}

async fn publish_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
    JsonBody(b): JsonBody<SnippetBody>,
) -> Answer {
    let s = admin
        .send(
            pb::Snippet {
                tenant_id,
                name,
                content: b.content,
                updated_at_ms: 0,
            },
            |mut c, r| async move { c.publish_snippet(r).await },
        )
        .await?;
    ok(snippet_json(&s))
}

async fn delete_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
) -> Answer {
    let s = admin
        .send(pb::SnippetRef { tenant_id, name }, |mut c, r| async move {
            c.delete_snippet(r).await
        })
        .await?;
    ok(snippet_json(&s))
}

async fn list_shares(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListSharesRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_shares(r).await },
        )
        .await?;
    let grants: Vec<Value> = l.grants.iter().map(share_json).collect();
    ok(json!({ "grants": grants }))
}

async fn grant_share(admin: Admin, JsonBody(b): JsonBody<ShareBody>) -> Answer {
    let g = admin
        .send(
            pb::ShareGrant {
                owner_tenant_id: b.owner_tenant_id,
                snippet: b.snippet,
                grantee_tenant_id: b.grantee_tenant_id,
                created_at_ms: 0,
            },
            |mut c, r| async move { c.grant_share(r).await },
        )
        .await?;
    created(share_json(&g))
}

/// The grant to revoke, named in the JSON body or else in the query string.
async fn revoke_share(admin: Admin, QueryOf(q): QueryOf<ShareQuery>, body: Bytes) -> Answer {
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        match (q.owner_tenant_id, q.snippet, q.grantee_tenant_id) {
            (Some(owner_tenant_id), Some(snippet), Some(grantee_tenant_id)) => ShareBody {
                owner_tenant_id,
                snippet,
                grantee_tenant_id,
            },
            _ => {
                return Err(AdminError::bad_request(
                    "name the grant to revoke: owner_tenant_id, snippet and grantee_tenant_id, in a JSON body or the query string",
                    None,
                ));
            }
        }
    } else {
        parse_json::<ShareBody>(&body)?
    };
    let g = admin
        .send(
            pb::ShareGrant {
                owner_tenant_id: b.owner_tenant_id,
                snippet: b.snippet,
                grantee_tenant_id: b.grantee_tenant_id,
                created_at_ms: 0,
            },
            |mut c, r| async move { c.revoke_share(r).await },
        )
        .await?;
    ok(share_json(&g))
}

async fn list_audit(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<AuditQuery>,
) -> Answer {
    let l = admin
        .send(
            pb::ListAuditRequest {
                tenant_id,
                limit: q.limit,
            },
            |mut c, r| async move { c.list_audit(r).await },
        )
        .await?;
    let records: Vec<Value> = l
        .records
        .iter()
        .map(|a| {
            json!({
                "tenant_id": a.tenant_id,
                "seq": a.seq,
                "at_ms": a.at_ms,
                "actor": a.actor,
                "action": a.action,
                "detail": a.detail,
                "prev_hash": a.prev_hash,
                "hash": a.hash,
            })
        })
        .collect();
    ok(json!({ "records": records }))
}

async fn verify_audit(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let v = admin
        .send(
            pb::VerifyAuditRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.verify_audit(r).await },
        )
        .await?;
    ok(json!({
        "ok": v.ok,
        "chains": v.chains,
        "records": v.records,
        "broken_tenant": v.broken_tenant,
        "broken_seq": v.broken_seq,
        "reason": v.reason,
    }))
}

// ---------------------------------------------------------------------------
// Proto messages as JSON (prost types do not derive serde)

fn cluster_json(s: &pb::ClusterState) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| json!({"id": n.id, "addr": n.addr, "voter": n.voter}))
        .collect();
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "last_applied": s.last_applied,
        "last_log_index": s.last_log_index,
        "nodes": nodes,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "state": s.state,
    })
}

fn limits_json(l: Option<&pb::Limits>) -> Value {
    let l = l.cloned().unwrap_or_default();
    json!({
        "daily_tokens": l.daily_tokens,
        "max_concurrent": l.max_concurrent,
        "max_request_tokens": l.max_request_tokens,
        "context_window": l.context_window,
        "context_turns": l.context_turns,
    })
}

fn features_json(f: Option<&pb::Features>) -> Value {
    let f = f.cloned().unwrap_or_default();
    json!({
        "burst": f.burst,
        "burst_percent": f.burst_percent,
        "knowledge_sharing": f.knowledge_sharing,
        "max_keys": f.max_keys,
        "retention_days": f.retention_days,
    })
}

/// Only the overrides that are set.
fn feature_overrides_json(f: Option<&pb::FeatureOverrides>) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(f) = f {
        if let Some(v) = f.burst {
            out.insert("burst".into(), v.into());
        }
        if let Some(v) = f.burst_percent {
            out.insert("burst_percent".into(), v.into());
        }
        if let Some(v) = f.knowledge_sharing {
            out.insert("knowledge_sharing".into(), v.into());
        }
        if let Some(v) = f.max_keys {
            out.insert("max_keys".into(), v.into());
        }
        if let Some(v) = f.retention_days {
            out.insert("retention_days".into(), v.into());
        }
    }
    Value::Object(out)
}

/// An `f32` as the decimal it was written as (0.8, not 0.800000011920929).
fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn tenant_json(t: &pb::Tenant) -> Value {
    json!({
        "id": t.id,
        "display_name": t.display_name,
        "plan": t.plan,
        "limits": limits_json(t.limits.as_ref()),
        "model": t.model,
        "adapter": t.adapter,
        "adapter_scale": f32_json(t.adapter_scale),
        "system_prompt": t.system_prompt,
        "welcome_message": t.welcome_message,
        "quick_prompts": t.quick_prompts,
        "time_zone": t.time_zone,
        "knowledge_share": t.knowledge_share,
        "version": t.version,
        "created_at_ms": t.created_at_ms,
        "features": features_json(t.features.as_ref()),
        "feature_overrides": feature_overrides_json(t.feature_overrides.as_ref()),
        "overridden": t.overridden,
    })
}

fn key_json(k: &pb::ApiKey) -> Value {
    json!({
        "key_id": k.key_id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at_ms": k.created_at_ms,
        "revoked_at_ms": k.revoked_at_ms,
        "last_used_at_ms": k.last_used_at_ms,
    })
}

fn burst_json(b: &pb::Burst) -> Value {
    json!({
        "burst_id": b.burst_id,
        "tenant_id": b.tenant_id,
        "day": b.day,
        "reason": b.reason,
        "status": b.status,
        "percent": b.percent,
        "extra_tokens": b.extra_tokens,
        "requested_at_ms": b.requested_at_ms,
        "decided_at_ms": b.decided_at_ms,
        "requested_by": b.requested_by,
        "decided_by": b.decided_by,
        "note": b.note,
    })
}

fn webhook_json(w: &pb::Webhook) -> Value {
    json!({
        "webhook_id": w.webhook_id,
        "tenant_id": w.tenant_id,
        "url": w.url,
        "events": w.events,
        "secret_prefix": w.secret_prefix,
        "created_at_ms": w.created_at_ms,
        "source": w.source,
    })
}

fn created_webhook_json(w: &pb::CreatedWebhook) -> Value {
    json!({
        "webhook": w.webhook.as_ref().map_or(Value::Null, webhook_json),
        "secret": w.secret,
    })
}

fn snippet_json(s: &pb::Snippet) -> Value {
    json!({
        "tenant_id": s.tenant_id,
        "name": s.name,
        "content": s.content,
        "updated_at_ms": s.updated_at_ms,
    })
}

fn share_json(g: &pb::ShareGrant) -> Value {
    json!({
        "owner_tenant_id": g.owner_tenant_id,
        "snippet": g.snippet,
        "grantee_tenant_id": g.grantee_tenant_id,
        "created_at_ms": g.created_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one HTTP/1.1 request and returns the status and body.
    async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, Value) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn serve() -> SocketAddr {
        let state = AdminState {
            gateway_id: GatewayId::new("gw-test").unwrap(),
            // No control plane: only what the gateway answers itself is tested.
            client: Arc::new(ControlPlaneClient::new(Vec::new(), None)),
            max_body_bytes: 1 << 16,
            directory: Arc::new(Directory::default()),
            workers: Arc::new(Workers::new(bulkhead_proto::ClusterSecret::generate())),
            default_model: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// An OpenAPI path template as a concrete path.
    fn concrete(template: &str) -> String {
        template
            .replace("{id}", "1")
            .replace("{key_id}", "k")
            .replace("{name}", "n")
    }

    #[test]
    fn routes_are_unique_and_under_admin_v1() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, path) in ROUTES {
            assert!(path.starts_with("/admin/v1/"), "{path}");
            assert!(
                ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(method),
                "{method}"
            );
            assert!(seen.insert((method, path)), "{method} {path} listed twice");
        }
    }

    #[tokio::test]
    async fn every_listed_route_exists_and_wants_a_token() {
        let addr = serve().await;
        for (method, path) in ROUTES {
            let (status, body) = http(addr, method, &concrete(path), "").await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(
                body["error"]["code"], "missing_admin_token",
                "{method} {path}"
            );
            assert_eq!(body["error"]["type"], "authentication_error");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Bearer")
            );
            let (status, _) = http(
                addr,
                method,
                &concrete(path),
                "authorization: Basic abc\r\n",
            )
            .await;
            assert_eq!(status, 401, "{method} {path} with a Basic header");
        }
        // A method a path does not take is refused in the same shape.
        let (status, body) = http(addr, "PUT", "/admin/v1/plans", "").await;
        assert_eq!(status, 405);
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn control_plane_statuses_map_once() {
        let cases = [
            (
                tonic::Status::unauthenticated("the admin token is wrong"),
                401,
            ),
            (tonic::Status::permission_denied("no"), 403),
            (tonic::Status::invalid_argument("url: must be http"), 400),
            (tonic::Status::not_found("unknown tenant `x`"), 404),
            (tonic::Status::already_exists("tenant `x` exists"), 409),
            (tonic::Status::failed_precondition("plan basic"), 409),
            (tonic::Status::unavailable("no leader"), 503),
            (tonic::Status::internal("disk"), 502),
        ];
        for (status, http) in cases {
            let e = AdminError::from_control_plane(&status);
            assert_eq!(e.status().as_u16(), http, "{status:?}");
            assert!(e.body()["error"]["message"].as_str().unwrap().len() > 1);
        }
        let e = AdminError::from_control_plane(&tonic::Status::invalid_argument(
            "url: a webhook URL must be http:// or https://",
        ));
        assert_eq!(e.body()["error"]["param"], "url");
        let e = AdminError::from_control_plane(&tonic::Status::invalid_argument(
            "tenant `x` is wrong: no",
        ));
        assert_eq!(e.body()["error"]["param"], Value::Null);
    }

    #[test]
    fn bad_json_names_the_problem() {
        let e = parse_json::<NewTenant>(b"{\"id\": 3}").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = parse_json::<NewTenant>(b"{\"display_name\": \"x\"}").unwrap_err();
        assert_eq!(e.body()["error"]["param"], "id");
        let e = parse_json::<NewTenant>(b"{\"id\": \"a\", \"colour\": 1}").unwrap_err();
        assert_eq!(e.body()["error"]["param"], "colour");
        let e = parse_json::<NewTenant>(b"{not json").unwrap_err();
        assert_eq!(e.body()["error"]["code"], "invalid_json");
        // An empty body is an empty object.
        assert_eq!(parse_json::<BurstNote>(b"").unwrap().note, "");
    }

    #[test]
    fn f32_fields_read_as_written() {
        assert_eq!(f32_json(0.8), json!(0.8));
        assert_eq!(f32_json(1.0), json!(1.0));
    }
}
