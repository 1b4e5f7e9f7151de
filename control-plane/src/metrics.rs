//! Prometheus metrics of a control-plane node, named
//! `bulkhead_control_plane_<what>_<unit>`, and the HTTP/1.1 routes that serve
//! them (`GET /metrics`, `GET /health`) on the gRPC port.
//!
//! Counters (gRPC calls, usage events, grants, returns) are bumped where the
//! work happens. Raft state and the per-tenant ledger (today's `used`,
//! `outstanding`, quota, slots held) are read at scrape time from this node's
//! Raft metrics and state machine, so a follower reports what it has applied.
//! Per-tenant series carry the tenant id and nothing else; these routes never
//! expose keys, tokens or a tenant's data, which is why they need no secret.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::ledger;
use crate::raft::Raft;
use crate::storage::StateMachine;

const PREFIX: &str = "bulkhead_control_plane";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `ControlPlane` or `Raft`.
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub service: String,
    pub method: String,
    /// The gRPC status code's name (`Ok`, `Unavailable`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `nats` (the leader's JetStream consumer), `local` (the all-in-one
    /// mode's channel) or `report` (the `ReportUsage` call).
    pub source: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The `(service, method)` pairs of `control.proto`: calls of anything else
/// are counted as method `unknown`, so a caller cannot mint label values.
fn known_methods() -> HashSet<(String, String)> {
    let proto = include_str!("../../proto/proto/control.proto");
    let mut service = String::new();
    let mut known = HashSet::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches('{').trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("rpc ")
            && let Some((method, _)) = rest.split_once('(')
        {
            known.insert((service.clone(), method.trim().to_owned()));
        }
    }
    known
}

pub struct Metrics {
    registry: Registry,
    known: HashSet<(String, String)>,
    pub grpc_requests: Family<CallLabels, Counter>,
    pub grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub usage_events_applied: Family<SourceLabel, Counter>,
    pub usage_events_duplicate: Family<SourceLabel, Counter>,
    pub grants: Family<TenantLabel, Counter>,
    pub granted_tokens: Family<TenantLabel, Counter>,
    pub returns: Family<TenantLabel, Counter>,
    pub returned_tokens: Family<TenantLabel, Counter>,
    /// AppendEntries this node (as leader) cut short to stay under
    /// `raft::MAX_APPEND_BYTES`; the rest follows in the next message.
    pub raft_append_splits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            known: known_methods(),
            grpc_requests: Family::default(),
            grpc_latency: Family::new_with_constructor(latency_histogram),
            usage_events_applied: Family::default(),
            usage_events_duplicate: Family::default(),
            grants: Family::default(),
            granted_tokens: Family::default(),
            returns: Family::default(),
            returned_tokens: Family::default(),
            raft_append_splits: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls by service, method and status code",
            m.grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a gRPC call's arrival to its response headers (a whole unary call)",
            m.grpc_latency.clone(),
        );
        registry.register(
            "usage_events_applied",
            "Usage events committed to the ledger, by where they came from",
            m.usage_events_applied.clone(),
        );
        registry.register(
            "usage_events_duplicate",
            "Usage events dropped because the ledger already had them",
            m.usage_events_duplicate.clone(),
        );
        registry.register("grants", "Allowance grants to gateways", m.grants.clone());
        registry.register(
            "raft_append_splits",
            "AppendEntries cut short to stay under the per-message byte cap",
            m.raft_append_splits.clone(),
        );
        registry.register(
            "granted_tokens",
            "Tokens granted to gateways",
            m.granted_tokens.clone(),
        );
        registry.register(
            "returns",
            "Allowance returns from gateways",
            m.returns.clone(),
        );
        registry.register(
            "returned_tokens",
            "Tokens gateways asked to return",
            m.returned_tokens.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a committed grant (`granted`) or return, and its tokens.
    pub fn allowance_changed(&self, tenant: &str, granted: bool, tokens: u64) {
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        let (calls, counted) = if granted {
            (&self.grants, &self.granted_tokens)
        } else {
            (&self.returns, &self.returned_tokens)
        };
        calls.get_or_create(&label).inc();
        counted.get_or_create(&label).inc_by(tokens);
    }

    pub fn usage_committed(&self, source: &'static str, applied: u32, duplicates: u32) {
        let label = SourceLabel { source };
        self.usage_events_applied
            .get_or_create(&label)
            .inc_by(u64::from(applied));
        self.usage_events_duplicate
            .get_or_create(&label)
            .inc_by(u64::from(duplicates));
    }

    /// Counts one finished gRPC call of `path` (`/package.Service/Method`).
    pub fn grpc_call(&self, path: &str, code: tonic::Code, seconds: f64) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .map(|(s, m)| (s.rsplit('.').next().unwrap_or(s), m))
            .unwrap_or(("", ""));
        let (service, method) = if self
            .known
            .contains(&(service.to_owned(), method.to_owned()))
        {
            (service.to_owned(), method.to_owned())
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        self.grpc_requests
            .get_or_create(&CallLabels {
                service: service.clone(),
                method: method.clone(),
                code: format!("{code:?}"),
            })
            .inc();
        self.grpc_latency
            .get_or_create(&MethodLabels { service, method })
            .observe(seconds);
    }

    /// The text exposition: the counters, then Raft state and the ledger as
    /// they are now on this node.
    pub fn render(&self, raft: &Raft, sm: &StateMachine) -> String {
        let mut now = Registry::with_prefix(PREFIX);
        register_raft(&mut now, raft);
        if let Err(e) = register_ledger(&mut now, sm) {
            tracing::warn!(error = %e, "reading the ledger for metrics failed");
        }
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &now))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if encoded.is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn register_raft(registry: &mut Registry, raft: &Raft) {
    let m = raft.metrics().borrow_watched().clone();
    let leader = u64::from(m.state == ServerState::Leader);
    gauge(registry, "raft_leader", "1 while this node leads", leader);
    gauge(registry, "raft_term", "Current Raft term", m.current_term);
    gauge(
        registry,
        "raft_last_log_index",
        "Index of the last entry in this node's log",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        registry,
        "raft_last_applied_index",
        "Index of the last entry applied to this node's state machine",
        m.last_applied.map_or(0, |l| l.index),
    );
    gauge(
        registry,
        "raft_snapshot_index",
        "Index of the last entry in this node's snapshot",
        m.snapshot.map_or(0, |l| l.index),
    );
    gauge(
        registry,
        "raft_current_leader",
        "Node id of the leader this node knows (0: none)",
        m.current_leader.unwrap_or(0),
    );
}

/// Per tenant: today's `used` and `outstanding`, the quota, slots held and
/// the concurrency limit, from this node's state machine.
fn register_ledger(registry: &mut Registry, sm: &StateMachine) -> std::io::Result<()> {
    let used = Family::<TenantLabel, Gauge>::default();
    let outstanding = Family::<TenantLabel, Gauge>::default();
    let quota = Family::<TenantLabel, Gauge>::default();
    let slots = Family::<TenantLabel, Gauge>::default();
    let max_concurrent = Family::<TenantLabel, Gauge>::default();
    let view = sm.view()?;
    let tenants = view.tenants()?;
    let now = bulkhead_proto::clock::now_ms();
    let set = |family: &Family<TenantLabel, Gauge>, tenant: &str, value: u64| {
        family
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    for tenant in &tenants {
        let day = ledger::day_of(now, &tenant.time_zone).0;
        let today = view.ledger_day(&tenant.id, &day)?.unwrap_or_default();
        let allowances = view.allowances(&tenant.id)?;
        set(&used, &tenant.id, today.used);
        set(
            &outstanding,
            &tenant.id,
            allowances.iter().map(|(_, a)| a.tokens_on(&day)).sum(),
        );
        set(&quota, &tenant.id, tenant.limits.daily_tokens);
        set(
            &slots,
            &tenant.id,
            allowances.iter().map(|(_, a)| u64::from(a.slots)).sum(),
        );
        set(
            &max_concurrent,
            &tenant.id,
            u64::from(tenant.limits.max_concurrent),
        );
    }
    gauge(
        registry,
        "tenants",
        "Tenants in the state machine",
        tenants.len() as u64,
    );
    gauge(
        registry,
        "workers",
        "Workers in the registry",
        view.workers()?.len() as u64,
    );
    registry.register(
        "tenant_used_tokens",
        "Tokens used today (the tenant's day) according to usage events",
        used,
    );
    registry.register(
        "tenant_outstanding_tokens",
        "Tokens granted to gateways for today and not yet used or returned",
        outstanding,
    );
    registry.register(
        "tenant_quota_tokens",
        "The tenant's daily token quota",
        quota,
    );
    registry.register(
        "tenant_slots_held",
        "Concurrency slots granted to gateways",
        slots,
    );
    registry.register(
        "tenant_max_concurrent",
        "The tenant's concurrency limit",
        max_concurrent,
    );
    Ok(())
}

/// What the HTTP routes read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub raft: Raft,
    pub sm: StateMachine,
}

/// `GET /metrics` and `GET /health`, merged with the gRPC services on the
/// node's one port.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state)
}

/// The per-tenant metrics: for the admin token or a metrics credential
/// (`bulkhead credential create --role metrics`), else 401.
async fn metrics(State(state): State<HttpState>, headers: axum::http::HeaderMap) -> Response {
    if !crate::callers::may_scrape(&state.sm, &headers) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": {
                "message": "the metrics name every tenant: send `Authorization: Bearer` with a metrics credential (`bulkhead credential create --role metrics`) or the admin token",
                "type": "authentication_error",
                "param": null,
                "code": "metrics_credential_required",
            }})),
        )
            .into_response();
    }
    let body = tokio::task::spawn_blocking(move || state.metrics.render(&state.raft, &state.sm))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn health(State(state): State<HttpState>) -> Response {
    let m = state.raft.metrics().borrow_watched().clone();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    axum::Json(json!({
        "status": "ok",
        "node_id": m.id,
        "state": role,
        "leader_id": m.current_leader,
        "term": m.current_term,
        "last_applied": m.last_applied.map_or(0, |l| l.index),
    }))
    .into_response()
}

/// Middleware: counts gRPC calls by method and status code and times them.
/// Other requests (the HTTP routes) pass through untouched.
pub async fn track_grpc(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    // A failed call is answered trailers-only, its status in the headers; a
    // successful one carries `grpc-status: 0` in the trailers.
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    metrics.grpc_call(&path, code, started.elapsed().as_secs_f64());
    response
}

pub use bulkhead_client::fallback;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_proto_and_strangers_are_unknown() {
        let m = Metrics::new();
        assert!(m.known.contains(&("Member".into(), "Grant".into())));
        assert!(m.known.contains(&("Raft".into(), "AppendEntries".into())));
        m.grpc_call("/bulkhead.control.v1.Member/Grant", tonic::Code::Ok, 0.01);
        m.grpc_call(
            "/bulkhead.control.v1.Raft/Nonsense",
            tonic::Code::Unauthenticated,
            0.01,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap_or_default();
        assert!(
            out.contains(
                "bulkhead_control_plane_grpc_requests_total{service=\"Member\",method=\"Grant\",code=\"Ok\"} 1"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "bulkhead_control_plane_grpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"Unauthenticated\"} 1"
            ),
            "{out}"
        );
    }
}
