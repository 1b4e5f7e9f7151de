//! What the state lets go of, and when: allowances and workers whose
//! holders stopped renewing (Reclaim), and rows past their keeping (turns,
//! prompt counts, per-user rows, event ids).

use std::io;

use crate::ledger::{self, Allowance};
use crate::store::Tables;

use super::*;

/// Forgets remembered gateway operations past their time, drops workers
/// whose lease lapsed, and takes back what gateways that stopped renewing
/// hold (see [`reclaimable`]).
pub(super) fn reclaim(t: &Tables, now_ms: i64) -> io::Result<Reply> {
    for (okey, op) in t.scan::<OpRecord>(OPS, "")? {
        if op.at_ms + OP_MEMORY_MS < now_ms {
            t.delete(OPS, &okey)?;
        }
    }
    for (id, w) in t.scan::<WorkerRecord>(WORKERS, "")? {
        if w.expires_at_ms < now_ms {
            t.delete(WORKERS, &id)?;
            record_change(t, Change::WorkerGone(id))?;
        }
    }
    let mut n = 0;
    for (akey, mut a) in t.scan::<Allowance>(ALLOWANCES, "")? {
        if !reclaimable(t, &akey, &a, now_ms)? {
            continue;
        }
        n += 1;
        if a.tokens == 0 || !allowance_day_is_today(t, &akey, &a, now_ms)? {
            t.delete(ALLOWANCES, &akey)?;
        } else {
            // The gateway stopped renewing: its concurrency slots
            // come back now, but its tokens stay outstanding until
            // the day ends, since usage of requests it admitted may
            // still arrive (a worker's spool, a NATS outage) and is
            // charged against them.
            a.slots = 0;
            t.put(ALLOWANCES, &akey, &a)?;
        }
    }
    Ok(Reply::Reclaimed(n))
}

/// Drops what is past its keeping: closed webhook deliveries, turns,
/// prompt counts and per-user rows past each tenant's retention, and event
/// ids past the dedup horizon. Turns, sessions and event ids: at most
/// `limit` (0: all), so that one entry's work and memory stay bounded; the
/// leader prunes again while a prune drops `limit` or more.
pub(super) fn prune(t: &Tables, now_ms: i64, limit: u32) -> io::Result<Reply> {
    let mut budget = match limit {
        0 => usize::MAX,
        l => usize::try_from(l).unwrap_or(usize::MAX),
    };
    let mut n = outbox::prune(t, now_ms)?;
    for (_, tenant) in t.scan::<TenantRecord>(TENANTS, "")? {
        let days = match tenant.features.retention_days {
            0 => plans::default_features(&tenant.plan).map_or(30, |f| f.retention_days),
            d => d,
        };
        let cutoff_ms = now_ms - i64::from(days) * 86_400_000;
        if let Some(scope) = scope(t, &tenant.id)?
            && budget > 0
        {
            let dropped = scope.prune(cutoff_ms, budget)?;
            budget -= dropped;
            n += dropped;
        }
        // Prompt counts and per-user rows past retention too.
        let (cutoff_day, _) = ledger::day_of(cutoff_ms, &tenant.time_zone);
        let (from, to) = (
            format!("{}/", tenant.id),
            format!("{}/{cutoff_day}", tenant.id),
        );
        n += t.delete_range(PROMPTS, &from, &to)?;
        n += t.delete_range(USERS, &from, &to)?;
    }
    n += forget_old_event_ids(t, now_ms, budget)?;
    Ok(Reply::Reclaimed(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Whether Reclaim has something to do with allowance `a`: its gateway
/// stopped renewing it more than the grace ago, and it still holds slots, or
/// tokens of a day that is over, or nothing at all.
pub(crate) fn reclaimable(
    db: &impl crate::store::Lookup,
    akey: &str,
    a: &Allowance,
    now_ms: i64,
) -> io::Result<bool> {
    if a.expires_at_ms + ledger::RECLAIM_GRACE_MS >= now_ms {
        return Ok(false);
    }
    Ok(a.slots > 0 || a.tokens == 0 || !allowance_day_is_today(db, akey, a, now_ms)?)
}

/// Whether allowance `a` (key `tenant/gateway`) belongs to its tenant's
/// current day (an unknown tenant has none).
fn allowance_day_is_today(
    db: &impl crate::store::Lookup,
    akey: &str,
    a: &Allowance,
    now_ms: i64,
) -> io::Result<bool> {
    let tenant_id = akey.split('/').next().unwrap_or_default();
    Ok(match db.get::<TenantRecord>(TENANTS, tenant_id)? {
        Some(tenant) => ledger::day_of(now_ms, &tenant.time_zone).0 == a.day,
        None => false,
    })
}

/// Drops the ids of events of days past the dedup horizon, oldest day
/// first (found by day, not by a scan of every id), at most `budget`;
/// returns how many.
fn forget_old_event_ids(t: &Tables, now_ms: i64, budget: usize) -> io::Result<usize> {
    let (horizon, _) = ledger::day_of(now_ms - DEDUP_HORIZON_DAYS * 86_400_000, "");
    let mut old = Vec::new();
    if budget > 0 {
        t.visit_range::<String>(EVENT_DAYS, "", &horizon, |key, _| {
            old.push(key.to_owned());
            Ok(old.len() < budget)
        })?;
    }
    for key in &old {
        if let Some((_, id)) = key.split_once('/') {
            t.delete(EVENTS, id)?;
        }
        t.delete(EVENT_DAYS, key)?;
    }
    Ok(old.len())
}
