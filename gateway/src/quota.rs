//! Admission against a tenant's limits without a consensus round trip per
//! request (DESIGN.md section 4). The gateway leases an allowance per tenant
//! from the control plane (tokens of the day's quota and concurrency slots,
//! with an expiry) and admits a request only by reserving from it: the
//! prompt's upper bound plus `max_tokens`, and one slot. When the request
//! ends the unused part comes back to the allowance; idle allowance goes back
//! to the control plane; a held allowance is renewed before it expires.
//!
//! Locally `tokens` counts what was granted minus what settled requests used
//! (and minus whole reservations of requests whose outcome is unknown), so it
//! never exceeds what the control plane still counts as this gateway's: the
//! gateway can only under-spend, never over-spend (Q1). When the control
//! plane cannot be reached it spends what it holds and then answers 503 (Q4).
//!
//! Usage reaches the ledger later than a request settles here (through a
//! worker's spool and NATS). The gateway counts what it settled on the day,
//! the control plane what it applied against this allowance; when a lapsed
//! allowance is taken up again from the control plane's figure, the
//! difference (usage still on its way) is left out, or it would be spent
//! twice. Each request carries the day it was admitted under, so the
//! ledger charges it to that day even when it ends after midnight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::GatewayId;
use bulkhead_proto::control as pb;
use tonic::Code;

use crate::error::{GatewayError, Refusal};
use crate::i18n::Text;
use crate::metrics::Metrics;

/// Lease asked for; the control plane caps it.
const LEASE_MS: u64 = 30_000;
/// How long an admission waits for the control plane before answering 503.
const GRANT_DEADLINE: Duration = Duration::from_secs(3);
/// A tenant's allowance goes back after this long without requests.
const IDLE_RETURN: Duration = Duration::from_secs(2);
/// Demand is measured as tokens reserved per second over windows this long.
const DEMAND_WINDOW: Duration = Duration::from_secs(1);
/// A grant asks for this many seconds of the measured demand as headroom,
/// and the maintenance tick tops the allowance up in the background when
/// less than half of it is left, so that a busy tenant's requests do not
/// wait for a Raft write every few requests (`bulkhead bench gateway`).
const HEADROOM_SECS: u64 = 2;

#[derive(Debug, Default)]
struct Held {
    /// Granted tokens not yet spent by settled requests nor returned.
    tokens: u64,
    /// Part of `tokens` reserved by running requests.
    reserved: u64,
    slots: u32,
    slots_used: u32,
    expires_at_ms: i64,
    /// The ledger as the last grant reported it (for refusals and headers).
    quota: u64,
    used: u64,
    outstanding: u64,
    max_concurrent: u32,
    resets_at_ms: i64,
    /// The quota day of the allowance (`YYYY-MM-DD`), and the tokens
    /// settled on it here (usage the ledger may not have applied yet).
    day: String,
    settled: u64,
    last_active: Option<Instant>,
    /// Tokens reserved since `demand_since`.
    demand_reserved: u64,
    demand_since: Option<Instant>,
    /// Tokens reserved per second over the last full window.
    demand: u64,
}

impl Held {
    fn available(&self) -> u64 {
        self.tokens.saturating_sub(self.reserved)
    }

    fn valid(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms && now_ms < self.resets_at_ms
    }

    fn can_admit(&self, need: u64, now_ms: i64) -> bool {
        self.valid(now_ms) && self.available() >= need && self.slots_used < self.slots
    }

    /// Counts a reservation towards the demand estimate.
    fn note_demand(&mut self, need: u64, now: Instant) {
        let since = *self.demand_since.get_or_insert(now);
        self.demand_reserved = self.demand_reserved.saturating_add(need);
        let elapsed = now.duration_since(since);
        if elapsed >= DEMAND_WINDOW {
            self.demand = (self.demand_reserved as f64 / elapsed.as_secs_f64()) as u64;
            self.demand_reserved = 0;
            self.demand_since = Some(now);
        }
    }

    /// Tokens to hold beyond what a request needs: a few requests' worth, or
    /// [`HEADROOM_SECS`] of the measured demand, but never much of a small
    /// quota.
    fn headroom(&self, daily: u64, need: u64) -> u64 {
        (daily / 20)
            .min(
                need.saturating_mul(4)
                    .max(self.demand.saturating_mul(HEADROOM_SECS)),
            )
            .min(200_000)
    }

    /// Tokens of the day left to the whole tenant, as far as this gateway
    /// knows: not used, not promised to any gateway, plus what it holds free.
    fn remaining(&self) -> u64 {
        self.quota
            .saturating_sub(self.used + self.outstanding)
            .saturating_add(self.available())
            .min(self.quota)
    }
}

#[derive(Default)]
struct TenantQuota {
    held: Mutex<Held>,
    /// One grant in flight per tenant: the others wait for its result.
    granting: tokio::sync::Mutex<()>,
    /// The last grant that failed, and when: requests that were already
    /// waiting for it share its answer instead of each trying again, so the
    /// Nth of a queue fails closed as fast as the first.
    failed: Mutex<Option<(Instant, GatewayError)>>,
}

impl TenantQuota {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The allowances this gateway holds, per tenant.
pub struct Quotas {
    gateway_id: GatewayId,
    client: Arc<ControlPlaneClient>,
    tenants: Mutex<HashMap<String, Arc<TenantQuota>>>,
    metrics: Arc<Metrics>,
}

/// One admitted request's reservation. Settle it with the exact usage; if it
/// is dropped unsettled (the outcome is unknown) the whole reservation counts
/// as spent, which can only under-spend the quota.
pub struct Permit {
    tenant_id: String,
    quota: Arc<TenantQuota>,
    metrics: Arc<Metrics>,
    reserved: u64,
    /// The quota day the tokens were reserved from.
    day: String,
    done: bool,
}

/// What a successful response reports in its `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub limit: u64,
    pub remaining: u64,
    pub resets_at_ms: i64,
}

impl Permit {
    /// The quota day the request was admitted under: its usage is charged
    /// to it.
    pub fn day(&self) -> &str {
        &self.day
    }

    pub fn budget(&self) -> Budget {
        let held = self.quota.lock();
        Budget {
            limit: held.quota,
            remaining: held.remaining(),
            resets_at_ms: held.resets_at_ms,
        }
    }

    /// The request ended and used `tokens`: the rest of the reservation goes
    /// back to the allowance.
    pub fn settle(mut self, tokens: u64) {
        self.finish(tokens.min(self.reserved));
    }

    /// The request never reached a worker: nothing was used.
    pub fn refund(mut self) {
        self.finish(0);
    }

    fn finish(&mut self, spent: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let mut held = self.quota.lock();
        held.reserved = held.reserved.saturating_sub(self.reserved);
        held.tokens = held.tokens.saturating_sub(spent);
        if held.day == self.day {
            held.settled = held.settled.saturating_add(spent);
        }
        held.slots_used = held.slots_used.saturating_sub(1);
        held.last_active = Some(Instant::now());
        self.metrics.observe_allowance(
            &self.tenant_id,
            held.available(),
            held.slots,
            held.slots_used,
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let reserved = self.reserved;
        self.finish(reserved);
    }
}

impl Quotas {
    pub fn new(
        gateway_id: GatewayId,
        client: Arc<ControlPlaneClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            gateway_id,
            client,
            tenants: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn tenant(&self, id: &str) -> Arc<TenantQuota> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(tenants.entry(id.to_owned()).or_default())
    }

    fn try_reserve(&self, tenant_id: &str, quota: &Arc<TenantQuota>, need: u64) -> Option<Permit> {
        let now = crate::now_ms();
        let mut held = quota.lock();
        if !held.can_admit(need, now) {
            return None;
        }
        held.reserved += need;
        held.slots_used += 1;
        let now = Instant::now();
        held.last_active = Some(now);
        held.note_demand(need, now);
        self.metrics
            .observe_allowance(tenant_id, held.available(), held.slots, held.slots_used);
        Some(Permit {
            tenant_id: tenant_id.to_owned(),
            quota: Arc::clone(quota),
            metrics: Arc::clone(&self.metrics),
            reserved: need,
            day: held.day.clone(),
            done: false,
        })
    }

    /// Reserves `need` tokens and one concurrency slot of `tenant`'s limits.
    pub async fn admit(&self, tenant: &pb::Tenant, need: u64) -> Result<Permit, GatewayError> {
        let quota = self.tenant(&tenant.id);
        if let Some(permit) = self.try_reserve(&tenant.id, &quota, need) {
            return Ok(permit);
        }
        let arrived = Instant::now();
        let _granting = quota.granting.lock().await;
        if let Some(permit) = self.try_reserve(&tenant.id, &quota, need) {
            return Ok(permit);
        }
        // A grant failed while this request waited: that is its answer too.
        if let Some((at, error)) = quota
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *at >= arrived
        {
            return Err(error.clone());
        }
        let (want_tokens, want_slots) = {
            let held = quota.lock();
            let valid = held.valid(crate::now_ms());
            let available = if valid { held.available() } else { 0 };
            let daily = tenant.limits.as_ref().map_or(0, |l| l.daily_tokens);
            // Ask for some headroom so that the next requests need no round
            // trip, but never hoard much of a small quota.
            let headroom = held.headroom(daily, need);
            let shortfall = need.saturating_sub(available);
            let tokens = if shortfall == 0 {
                0
            } else {
                shortfall + headroom
            };
            // Slots likewise: a quarter more than are running, so that a
            // rising load does not take one Raft write per extra request
            // (the control plane caps the sum at max_concurrent; idle slots
            // go back with the idle allowance).
            let slots = if held.slots_used >= held.slots {
                1 + held.slots_used / 4
            } else {
                0
            };
            (tokens, slots)
        };
        let allowance = self.grant(&tenant.id, want_tokens, want_slots).await;
        let allowance = match allowance {
            Ok(a) => a,
            Err(status) => {
                let error = self.grant_failed(&tenant.id, &quota, &status);
                *quota.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), error.clone()));
                return Err(error);
            }
        };
        self.absorb(&tenant.id, &quota, &allowance);
        if let Some(permit) = self.try_reserve(&tenant.id, &quota, need) {
            return Ok(permit);
        }
        Err(self.refusal(&quota, need))
    }

    async fn grant(
        &self,
        tenant_id: &str,
        tokens: u64,
        slots: u32,
    ) -> Result<pb::Allowance, tonic::Status> {
        let op_id = uuid::Uuid::new_v4().to_string();
        let msg = pb::GrantRequest {
            tenant_id: tenant_id.to_owned(),
            gateway_id: self.gateway_id.to_string(),
            tokens,
            slots,
            ttl_ms: LEASE_MS,
            op_id,
        };
        let client = &self.client;
        client
            .member()
            .send_for(GRANT_DEADLINE, msg, |mut c, req| async move {
                c.grant(req).await
            })
            .await
    }

    /// Takes a grant (or renewal) into the local allowance.
    fn absorb(&self, tenant_id: &str, quota: &TenantQuota, a: &pb::Allowance) {
        let mut held = quota.lock();
        let now = crate::now_ms();
        if held.day != a.day {
            held.day.clone_from(&a.day);
            held.settled = 0;
        }
        if !held.valid(now) && held.reserved == 0 && held.slots_used == 0 {
            // A lapsed or earlier day's allowance: start from what the
            // control plane says this gateway holds now, less what it
            // settled here that the ledger has not applied yet.
            let in_transit = held.settled.saturating_sub(a.applied_tokens);
            held.tokens = a.tokens.saturating_sub(in_transit);
            held.slots = a.slots;
        } else {
            held.tokens = (held.tokens + a.granted_tokens).min(a.tokens.max(held.reserved));
            held.slots = (held.slots + a.granted_slots).min(a.slots.max(held.slots_used));
        }
        held.expires_at_ms = a.expires_at_ms;
        held.quota = a.quota;
        held.used = a.used;
        held.outstanding = a.outstanding;
        held.max_concurrent = a.max_concurrent;
        held.resets_at_ms = a.resets_at_ms;
        self.metrics
            .observe_allowance(tenant_id, held.available(), held.slots, held.slots_used);
    }

    fn grant_failed(
        &self,
        tenant_id: &str,
        quota: &TenantQuota,
        status: &tonic::Status,
    ) -> GatewayError {
        match status.code() {
            Code::NotFound => {
                GatewayError::invalid_api_key(Text::new("tenant-gone").arg("tenant", tenant_id))
            }
            _ => {
                let held = quota.lock();
                tracing::warn!(tenant = tenant_id, error = %status, "allowance grant failed");
                GatewayError::Unavailable(format!(
                    "the control plane cannot be reached, and this gateway holds only {} tokens and {} free concurrency slots of tenant {tenant_id}'s quota, not enough for this request; retry in a few seconds",
                    if held.valid(crate::now_ms()) {
                        held.available()
                    } else {
                        0
                    },
                    held.slots.saturating_sub(held.slots_used),
                ))
            }
        }
    }

    fn refusal(&self, quota: &TenantQuota, need: u64) -> GatewayError {
        let held = quota.lock();
        let now = crate::now_ms();
        let reset_s = u64::try_from((held.resets_at_ms - now).max(0) / 1000).unwrap_or(0);
        let remaining = held.remaining();
        let refusal = if held.slots_used >= held.slots {
            Refusal {
                limit: "max_concurrent",
                message: Text::new("concurrency-limit").arg("max", held.max_concurrent),
                limit_tokens: held.quota,
                remaining_tokens: remaining,
                resets_at_ms: held.resets_at_ms,
                retry_after_s: 1,
            }
        } else if remaining >= need {
            // The quota has room, but other gateways hold it for now.
            Refusal {
                limit: "daily_tokens",
                message: Text::new("quota-reserved").arg("need", need),
                limit_tokens: held.quota,
                remaining_tokens: remaining,
                resets_at_ms: held.resets_at_ms,
                retry_after_s: 2,
            }
        } else {
            Refusal {
                limit: "daily_tokens",
                message: Text::new("quota-exceeded")
                    .arg("need", need)
                    .arg("remaining", remaining)
                    .arg("quota", held.quota)
                    .arg("reset_in", crate::error::reset_duration(reset_s))
                    .arg("reset_at", chrono_like(held.resets_at_ms)),
                limit_tokens: held.quota,
                remaining_tokens: remaining,
                resets_at_ms: held.resets_at_ms,
                retry_after_s: reset_s.max(1),
            }
        };
        GatewayError::RateLimited(Box::new(refusal))
    }

    /// Renews held allowances before they expire and returns idle ones.
    /// Runs until `stop`; then gives everything back.
    pub async fn maintain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            self.tick(false).await;
        }
        self.tick(true).await;
    }

    async fn tick(&self, closing: bool) {
        let tenants: Vec<(String, Arc<TenantQuota>)> = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let now = crate::now_ms();
        for (tenant_id, quota) in tenants {
            let Ok(_granting) = quota.granting.try_lock() else {
                continue;
            };
            let (give_tokens, give_slots, renew, top_up) = {
                let held = quota.lock();
                let idle = closing || held.last_active.is_none_or(|t| t.elapsed() >= IDLE_RETURN);
                let free_slots = held.slots.saturating_sub(held.slots_used);
                let (tokens, slots) = if idle {
                    (held.available(), free_slots)
                } else {
                    (0, 0)
                };
                let keeps = held.tokens - tokens > 0 || held.slots - slots > 0;
                let renew = !closing
                    && keeps
                    && held.valid(now)
                    && held.expires_at_ms - now < i64::try_from(LEASE_MS / 2).unwrap_or(0);
                // A busy tenant's allowance is topped up here, off the
                // request path, while the ledger still has room.
                let target = held.headroom(held.quota, 0);
                let top_up = if !idle
                    && held.valid(now)
                    && held.available() < target / 2
                    && bulkhead_client::grantable(held.quota, held.used, held.outstanding) > 0
                {
                    target - held.available()
                } else {
                    0
                };
                (tokens, slots, renew, top_up)
            };
            if give_tokens > 0 || give_slots > 0 {
                // Taken out first: a failed return leaves the tokens with the
                // control plane until the lease lapses, which under-spends.
                {
                    let mut held = quota.lock();
                    held.tokens -= give_tokens;
                    held.slots -= give_slots;
                    self.metrics.observe_allowance(
                        &tenant_id,
                        held.available(),
                        held.slots,
                        held.slots_used,
                    );
                }
                let msg = pb::ReturnRequest {
                    tenant_id: tenant_id.clone(),
                    gateway_id: self.gateway_id.to_string(),
                    tokens: give_tokens,
                    slots: give_slots,
                    op_id: uuid::Uuid::new_v4().to_string(),
                };
                let client = &self.client;
                let returned = client
                    .member()
                    .send_for(GRANT_DEADLINE, msg, |mut c, req| async move {
                        c.r#return(req).await
                    })
                    .await;
                if let Err(e) = returned {
                    tracing::warn!(tenant = %tenant_id, error = %e, "returning an idle allowance failed; it lapses with its lease");
                }
            }
            if renew || top_up > 0 {
                match self.grant(&tenant_id, top_up, 0).await {
                    Ok(a) => self.absorb(&tenant_id, &quota, &a),
                    Err(e) => {
                        tracing::warn!(tenant = %tenant_id, error = %e, "renewing an allowance failed")
                    }
                }
            }
        }
    }
}

/// `HH:MM` of a time in ms since the epoch, UTC.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}", secs / 3600, secs / 60 % 60)
}

#[cfg(test)]
mod tests;
