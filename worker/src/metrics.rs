//! Prometheus metrics of the worker, named `bulkhead_worker_<what>_<unit>`.
//! The engine thread writes them; `/metrics` renders them. Per-tenant series
//! carry the tenant as a label and nothing else about the request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    pub finish_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    pub tenant: String,
    /// `device` or `host`.
    pub tier: String,
}

fn ttft_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Family<TenantLabel, Counter>,
    pub cached_tokens: Family<TenantLabel, Counter>,
    pub completion_tokens: Family<TenantLabel, Counter>,
    pub time_to_first_token: Family<TenantLabel, Histogram, fn() -> Histogram>,
    pub active_requests: Gauge,
    pub queued_requests: Gauge,
    pub device_slots_used: Gauge,
    pub device_slots_total: Gauge,
    pub host_slots: Gauge,
    pub kv_bytes: Family<KvLabels, Gauge>,
    pub decode_tokens_per_second: Gauge<f64, AtomicU64>,
    pub slot_evictions: Counter,
    pub slot_restores: Counter,
    /// Requests of a tenant generating now, and the most ever at once.
    pub tenant_active_requests: Family<TenantLabel, Gauge>,
    pub tenant_peak_active_requests: Family<TenantLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bulkhead_worker");
        let m = Self {
            requests: Family::default(),
            prompt_tokens: Family::default(),
            cached_tokens: Family::default(),
            completion_tokens: Family::default(),
            time_to_first_token: Family::new_with_constructor(ttft_histogram),
            active_requests: Gauge::default(),
            queued_requests: Gauge::default(),
            device_slots_used: Gauge::default(),
            device_slots_total: Gauge::default(),
            host_slots: Gauge::default(),
            kv_bytes: Family::default(),
            decode_tokens_per_second: Gauge::default(),
            slot_evictions: Counter::default(),
            slot_restores: Counter::default(),
            tenant_active_requests: Family::default(),
            tenant_peak_active_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Finished requests", m.requests.clone());
        registry.register(
            "prompt_tokens",
            "Prompt tokens, cached ones included",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "cached_tokens",
            "Prompt tokens served from a KV slot",
            m.cached_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Generated tokens",
            m.completion_tokens.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "active_requests",
            "Requests generating now",
            m.active_requests.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests waiting for a slot",
            m.queued_requests.clone(),
        );
        registry.register(
            "device_slots_used",
            "Device KV slots holding state",
            m.device_slots_used.clone(),
        );
        registry.register(
            "device_slots_total",
            "Device KV slots",
            m.device_slots_total.clone(),
        );
        registry.register(
            "host_slots",
            "Sessions parked in host memory",
            m.host_slots.clone(),
        );
        registry.register(
            "kv_bytes",
            "KV cache bytes per tenant and tier",
            m.kv_bytes.clone(),
        );
        registry.register(
            "decode_tokens_per_second",
            "Generated tokens per second over the last seconds",
            m.decode_tokens_per_second.clone(),
        );
        registry.register(
            "slot_evictions",
            "Slots moved from device to host memory",
            m.slot_evictions.clone(),
        );
        registry.register(
            "slot_restores",
            "Slots restored from host memory",
            m.slot_restores.clone(),
        );
        registry.register(
            "tenant_active_requests",
            "Requests of a tenant generating now",
            m.tenant_active_requests.clone(),
        );
        registry.register(
            "tenant_peak_active_requests",
            "The most requests of a tenant ever generating at once",
            m.tenant_peak_active_requests.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}
