//! Prometheus metrics of the gateway, named `bulkhead_gateway_<what>`. Every
//! per-tenant series carries the tenant as a label and nothing else about the
//! request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub tenant: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub tenant: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub latency: Family<TenantLabel, Histogram, fn() -> Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    pub allowance_tokens: Family<TenantLabel, Gauge>,
    pub allowance_slots: Family<TenantLabel, Gauge>,
    pub slots_in_use: Family<TenantLabel, Gauge>,
    pub worker_failovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bulkhead_gateway");
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            allowance_tokens: Family::default(),
            allowance_slots: Family::default(),
            slots_in_use: Family::default(),
            worker_failovers: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Chat requests by tenant and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from arrival to the last byte of the answer",
            m.latency.clone(),
        );
        registry.register(
            "tokens",
            "Tokens used by finished requests",
            m.tokens.clone(),
        );
        registry.register(
            "allowance_tokens",
            "Tokens of the tenant's quota this gateway holds and has not reserved",
            m.allowance_tokens.clone(),
        );
        registry.register(
            "allowance_slots",
            "Concurrency slots of the tenant this gateway holds",
            m.allowance_slots.clone(),
        );
        registry.register(
            "slots_in_use",
            "Concurrency slots of the tenant taken by running requests",
            m.slots_in_use.clone(),
        );
        registry.register(
            "worker_failovers",
            "Requests moved to the next worker because the first could not be reached",
            m.worker_failovers.clone(),
        );
        Self { registry, ..m }
    }

    fn tenant(tenant: &str) -> TenantLabel {
        TenantLabel {
            tenant: tenant.to_owned(),
        }
    }

    pub fn observe_allowance(&self, tenant: &str, available: u64, slots: u32, slots_used: u32) {
        let label = Self::tenant(tenant);
        self.allowance_tokens
            .get_or_create(&label)
            .set(i64::try_from(available).unwrap_or(i64::MAX));
        self.allowance_slots
            .get_or_create(&label)
            .set(i64::from(slots));
        self.slots_in_use
            .get_or_create(&label)
            .set(i64::from(slots_used));
    }

    pub fn observe_request(&self, tenant: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&StatusLabels {
                tenant: tenant.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Self::tenant(tenant))
            .observe(seconds);
    }

    pub fn observe_tokens(&self, tenant: &str, prompt: u32, completion: u32) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    tenant: tenant.to_owned(),
                    kind,
                })
                .inc_by(u64::from(n));
        }
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
