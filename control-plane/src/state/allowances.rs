//! The quota ledger inside the state: quotas per day, allowances granted to
//! gateways, and usage events applied exactly once.

use std::collections::BTreeMap;
use std::io;

use crate::bursts;
use crate::ledger::{self, Allowance, LedgerDay};
use crate::outbox;
use crate::store::Tables;

use super::*;

/// A tenant's quota on `day`: its daily tokens plus an approved burst's.
pub(crate) fn quota_on(
    t: &impl crate::store::Lookup,
    tenant: &TenantRecord,
    day: &str,
) -> io::Result<u64> {
    Ok(tenant
        .limits
        .daily_tokens
        .saturating_add(bursts::extra_on(t, &tenant.id, day)?))
}

/// Sends `quota.low` (under 10% left) and `quota.exhausted` once per tenant
/// and day; the flags live in the ledger day, so a new leader does not
/// send them again.
pub(super) fn quota_events(
    t: &Tables,
    tenant: &TenantRecord,
    (day, quota): (&str, u64),
    l: &mut LedgerDay,
    outstanding: u64,
    now_ms: i64,
) -> io::Result<()> {
    let committed = l.used.saturating_add(outstanding);
    let remaining = quota.saturating_sub(l.used);
    let data = || {
        serde_json::json!({
            "tenant_id": tenant.id, "day": day, "quota": quota, "used": l.used,
            "remaining": remaining,
        })
    };
    if !l.low_notified && remaining.saturating_mul(10) < quota {
        l.low_notified = true;
        outbox::emit(t, &tenant.id, "quota.low", data(), now_ms)?;
    }
    if !l.exhausted_notified && committed >= quota {
        l.exhausted_notified = true;
        outbox::emit(t, &tenant.id, "quota.exhausted", data(), now_ms)?;
    }
    Ok(())
}

/// Tokens outstanding for `day` and slots held, over every gateway of a tenant.
pub(super) fn outstanding(t: &Tables, tenant_id: &str, day: &str) -> io::Result<(u64, u32)> {
    let all = t.scan::<Allowance>(ALLOWANCES, &format!("{tenant_id}/"))?;
    Ok(all.iter().fold((0, 0), |(tok, sl), (_, a)| {
        (
            u64::saturating_add(tok, a.tokens_on(day)),
            u32::saturating_add(sl, a.slots),
        )
    }))
}

pub(super) fn grant(
    t: &Tables,
    tenant_id: &str,
    gateway_id: &str,
    tokens: u64,
    slots: u32,
    ttl_ms: u64,
    now_ms: i64,
) -> io::Result<Reply> {
    let Some(tenant) = t.get::<TenantRecord>(TENANTS, tenant_id)? else {
        return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id.into())));
    };
    let (day, _) = ledger::day_of(now_ms, &tenant.time_zone);
    let akey = key2(tenant_id, gateway_id);
    let stored = t.get::<Allowance>(ALLOWANCES, &akey)?.unwrap_or_default();
    let (total_tokens, total_slots) = outstanding(t, tenant_id, &day)?;
    let others_tokens = total_tokens.saturating_sub(stored.tokens_on(&day));
    let others_slots = total_slots.saturating_sub(stored.slots);
    let mut mine = stored;
    if mine.day != day {
        // Tokens granted for an earlier day are void; slots carry over.
        mine.tokens = 0;
        mine.applied = 0;
        mine.day = day.clone();
    }
    let lkey = key2(tenant_id, &day);
    let mut l = t.get::<LedgerDay>(LEDGER, &lkey)?.unwrap_or_default();
    let used = l.used;
    let quota = quota_on(t, &tenant, &day)?;
    let granted_tokens = tokens.min(ledger::grantable(
        quota,
        used,
        others_tokens.saturating_add(mine.tokens),
    ));
    if tokens > granted_tokens && !l.exhausted_notified {
        // Asked for more than is left: everything is used or promised.
        quota_events(
            t,
            &tenant,
            (&day, quota),
            &mut l,
            quota.saturating_sub(used),
            now_ms,
        )?;
        t.put(LEDGER, &lkey, &l)?;
    }
    let granted_slots = slots.min(ledger::grantable_slots(
        tenant.limits.max_concurrent,
        others_slots.saturating_add(mine.slots),
    ));
    mine.tokens += granted_tokens;
    mine.slots += granted_slots;
    let ttl = i64::try_from(ttl_ms.min(ledger::MAX_ALLOWANCE_TTL_MS)).unwrap_or(0);
    mine.expires_at_ms = now_ms + ttl;
    t.put(ALLOWANCES, &akey, &mine)?;
    Ok(Reply::Allowance(view_allowance(
        t,
        &tenant,
        gateway_id,
        mine,
        now_ms,
        granted_tokens,
        granted_slots,
    )?))
}

pub(super) fn view_allowance(
    t: &Tables,
    tenant: &TenantRecord,
    gateway_id: &str,
    allowance: Allowance,
    now_ms: i64,
    granted_tokens: u64,
    granted_slots: u32,
) -> io::Result<AllowanceView> {
    let (day, resets_at_ms) = ledger::day_of(now_ms, &tenant.time_zone);
    let used = t
        .get::<LedgerDay>(LEDGER, &key2(&tenant.id, &day))?
        .unwrap_or_default()
        .used;
    let (outstanding, _) = outstanding(t, &tenant.id, &day)?;
    Ok(AllowanceView {
        tenant_id: tenant.id.clone(),
        gateway_id: gateway_id.to_owned(),
        allowance,
        quota: quota_on(t, tenant, &day)?,
        day,
        used,
        outstanding,
        max_concurrent: tenant.limits.max_concurrent,
        resets_at_ms,
        granted_tokens,
        granted_slots,
    })
}

/// The rows of one table that a batch reads and changes: each read from the
/// table at its first use, kept here while the batch changes it, and all
/// written back once at the end (one read and one write a row, not an event).
struct Rows<T> {
    table: &'static str,
    rows: BTreeMap<String, Option<T>>,
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Rows<T> {
    fn new(table: &'static str) -> Self {
        Self {
            table,
            rows: BTreeMap::new(),
        }
    }

    /// The row at `key` as the batch sees it, read from the table the
    /// first time.
    fn slot(&mut self, t: &Tables, key: &str) -> io::Result<&mut Option<T>> {
        Ok(match self.rows.entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(t.get::<T>(self.table, key)?),
        })
    }

    /// The row at `key`, if the table (or the batch) has it.
    fn get_mut(&mut self, t: &Tables, key: &str) -> io::Result<Option<&mut T>> {
        Ok(self.slot(t, key)?.as_mut())
    }

    /// The row at `key`, made by `new` if there is none.
    fn entry(&mut self, t: &Tables, key: &str, new: impl FnOnce() -> T) -> io::Result<&mut T> {
        Ok(self.slot(t, key)?.get_or_insert_with(new))
    }

    fn write(self, t: &Tables) -> io::Result<()> {
        for (key, row) in self.rows {
            if let Some(row) = row {
                t.put(self.table, &key, &row)?;
            }
        }
        Ok(())
    }
}

pub(super) fn apply_usage(t: &Tables, events: Vec<UsageRecord>, now_ms: i64) -> io::Result<Reply> {
    let (mut applied, mut duplicates) = (0, 0);
    // Events of a day before this were possibly counted already, their ids
    // forgotten since (DEDUP_HORIZON_DAYS): not counted again.
    let horizon =
        (now_ms > 0).then(|| ledger::day_of(now_ms - (DEDUP_HORIZON_DAYS - 1) * 86_400_000, "").0);
    let mut tenants: BTreeMap<String, Option<TenantRecord>> = BTreeMap::new();
    // Each tenant's quota per day, read once per batch.
    let mut quotas: BTreeMap<(String, String), u64> = BTreeMap::new();
    // The rows many events of a batch change, read once and written once.
    let mut ledger_days = Rows::<LedgerDay>::new(LEDGER);
    let mut allowances = Rows::<Allowance>::new(ALLOWANCES);
    let mut seqs = Rows::<u64>::new(META);
    let mut prompts = Rows::<PromptCount>::new(PROMPTS);
    let mut users = Rows::<UserTotals>::new(USERS);
    for e in events {
        if e.event_id.is_empty() || t.get::<String>(EVENTS, &e.event_id)?.is_some() {
            duplicates += 1;
            continue;
        }
        if !tenants.contains_key(&e.tenant_id) {
            let r = t.get::<TenantRecord>(TENANTS, &e.tenant_id)?;
            tenants.insert(e.tenant_id.clone(), r);
        }
        let Some(tenant) = tenants.get(&e.tenant_id).and_then(Option::as_ref) else {
            // A deleted tenant's late usage: remembered, so it is not
            // counted if the id is created again, but charged to no one.
            t.put(EVENTS, &e.event_id, &String::new())?;
            duplicates += 1;
            continue;
        };
        // Charged to the day whose allowance the gateway reserved it from
        // (a request that ends after midnight belongs to the day it was
        // admitted on), else to the day it finished.
        let day = if ledger::is_day(&e.quota_day) {
            e.quota_day.clone()
        } else {
            ledger::day_of(e.finished_at_ms, &tenant.time_zone).0
        };
        if horizon.as_ref().is_some_and(|h| day < *h) {
            duplicates += 1;
            continue;
        }
        t.put(EVENTS, &e.event_id, &day)?;
        t.put(EVENT_DAYS, &key2(&day, &e.event_id), &String::new())?;
        // Every figure saturates: they come from workers, and `apply` must
        // never panic (it would on every replica at once).
        let total = e.prompt_tokens.saturating_add(e.completion_tokens);
        let l = ledger_days.entry(t, &key2(&e.tenant_id, &day), LedgerDay::default)?;
        l.used = l.used.saturating_add(total);
        l.prompt_tokens = l.prompt_tokens.saturating_add(e.prompt_tokens);
        l.completion_tokens = l.completion_tokens.saturating_add(e.completion_tokens);
        l.cached_tokens = l.cached_tokens.saturating_add(e.cached_tokens);
        l.requests += 1;
        l.total_latency_ms = l.total_latency_ms.saturating_add(e.duration_ms);
        l.max_latency_ms = l.max_latency_ms.max(e.duration_ms);
        l.record_latency(e.duration_ms);
        if !(l.low_notified && l.exhausted_notified) {
            let quota = match quotas.get(&(tenant.id.clone(), day.clone())) {
                Some(q) => *q,
                None => {
                    let q = quota_on(t, tenant, &day)?;
                    quotas.insert((tenant.id.clone(), day.clone()), q);
                    q
                }
            };
            quota_events(t, tenant, (&day, quota), l, 0, e.finished_at_ms)?;
        }
        if !e.gateway_id.is_empty() {
            // The tokens move from the admitting gateway's outstanding grant to used.
            let akey = key2(&e.tenant_id, &e.gateway_id);
            if let Some(a) = allowances.get_mut(t, &akey)?
                && a.day == day
            {
                a.tokens = a.tokens.saturating_sub(total);
                a.applied = a.applied.saturating_add(total);
            }
        }
        let seq = seqs.entry(t, &format!("recent_seq/{}", e.tenant_id), || 0)?;
        *seq += 1;
        let seq = *seq;
        if !e.prompt_preview.is_empty() {
            let pkey = format!(
                "{}/{day}/{}",
                e.tenant_id,
                bulkhead_client::hash_secret(&e.prompt_preview)
            );
            prompts
                .entry(t, &pkey, || PromptCount {
                    text: e.prompt_preview.clone(),
                    count: 0,
                })?
                .count += 1;
        }
        let kept = UsageRecord {
            prompt_preview: String::new(),
            ..e.clone()
        };
        t.put(RECENT, &format!("{}/{seq:012}", e.tenant_id), &kept)?;
        if seq > RECENT_KEPT {
            t.delete(
                RECENT,
                &format!("{}/{:012}", e.tenant_id, seq - RECENT_KEPT),
            )?;
        }
        if !e.user_id.is_empty() {
            let ukey = format!("{}/{day}/{}", e.tenant_id, e.user_id);
            let u = users.entry(t, &ukey, UserTotals::default)?;
            u.tokens = u.tokens.saturating_add(total);
            u.requests += 1;
        }
        applied += 1;
    }
    ledger_days.write(t)?;
    allowances.write(t)?;
    seqs.write(t)?;
    prompts.write(t)?;
    users.write(t)?;
    Ok(Reply::UsageApplied {
        applied,
        duplicates,
    })
}
