//! What the engine shows of itself (requests, slots, KV bytes per tenant,
//! decode rate), refreshed every step for the worker's Stats, metrics and
//! the registration.

use super::EngineLoop;
use crate::catalog::saturating_u32;
use crate::metrics::{KvLabels, TenantLabel};
use bulkhead_proto::TenantId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the engine shows of itself, refreshed every step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub active_requests: u32,
    pub queued_requests: u32,
    pub device_slots_used: u32,
    pub device_slots_total: u32,
    pub host_slots: u32,
    pub host_bytes: u64,
    pub generated_tokens_total: u64,
    pub decode_tokens_per_second: f64,
    /// tenant -> (device bytes, host bytes, device slots, host slots)
    pub tenants: HashMap<TenantId, TenantKv>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TenantKv {
    pub device_bytes: u64,
    pub host_bytes: u64,
    pub device_slots: u32,
    pub host_slots: u32,
    /// Requests of the tenant generating now, and the most ever at once.
    pub active_requests: u32,
    pub peak_active_requests: u32,
}

const RATE_WINDOW: Duration = Duration::from_secs(2);

impl EngineLoop {
    pub(super) fn count_generated(&mut self, generated: u32) {
        let now = Instant::now();
        self.generated_total += u64::from(generated);
        if generated > 0 {
            self.recent.push_back((now, generated));
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    pub(super) fn publish_snapshot(&mut self) {
        let mut snap = Snapshot {
            queued_requests: saturating_u32(self.waiting.len()),
            host_slots: saturating_u32(self.host.len()),
            host_bytes: self.host.used_bytes(),
            generated_tokens_total: self.generated_total,
            ..Snapshot::default()
        };
        let tokens: u32 = self.recent.iter().map(|(_, n)| n).sum();
        if let Some((first, _)) = self.recent.front() {
            let span = Instant::now()
                .duration_since(*first)
                .max(Duration::from_millis(250));
            snap.decode_tokens_per_second = f64::from(tokens) / span.as_secs_f64();
        }
        for v in &self.variants {
            snap.active_requests += saturating_u32(v.active.len());
            snap.device_slots_total += saturating_u32(v.table.slots.len());
            for s in &v.table.slots {
                if let Some(owner) = &s.owner {
                    snap.device_slots_used += 1;
                    let t = snap.tenants.entry(owner.tenant.clone()).or_default();
                    t.device_slots += 1;
                    t.device_bytes += s.tokens.len() as u64 * v.ctx.model().kv_bytes_per_token;
                }
            }
        }
        for ((_, tenant, _), entry) in self.host.iter() {
            let t = snap.tenants.entry(tenant.clone()).or_default();
            t.host_slots += 1;
            t.host_bytes += entry.bytes;
        }
        for (tenant, &(now, peak)) in &self.generating {
            let t = snap.tenants.entry(tenant.clone()).or_default();
            t.active_requests = now;
            t.peak_active_requests = peak;
        }
        let m = &self.metrics;
        m.active_requests.set(i64::from(snap.active_requests));
        m.queued_requests.set(i64::from(snap.queued_requests));
        m.device_slots_used.set(i64::from(snap.device_slots_used));
        m.device_slots_total.set(i64::from(snap.device_slots_total));
        m.host_slots.set(i64::from(snap.host_slots));
        m.decode_tokens_per_second
            .set(snap.decode_tokens_per_second);
        m.kv_bytes.clear();
        for (tenant, kv) in &snap.tenants {
            for (tier, bytes) in [("device", kv.device_bytes), ("host", kv.host_bytes)] {
                let labels = KvLabels {
                    tenant: tenant.to_string(),
                    tier: tier.to_owned(),
                };
                m.kv_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        for (tenant, &(now, peak)) in &self.generating {
            let label = TenantLabel {
                tenant: tenant.to_string(),
            };
            m.tenant_active_requests
                .get_or_create(&label)
                .set(i64::from(now));
            m.tenant_peak_active_requests
                .get_or_create(&label)
                .set(i64::from(peak));
        }
        if let Ok(mut shared) = self.snapshot.lock() {
            *shared = snap;
        }
    }
}
