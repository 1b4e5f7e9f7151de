//! Burst quota: an approved burst raises one day's quota of one tenant by the
//! tenant's `burst_percent`, until that day resets. At most one burst is open
//! (pending or approved) per tenant and day.

use std::io;

use serde::{Deserialize, Serialize};

use crate::store::Lookup;

pub const BURSTS: &str = "bursts";
/// `tenant/day` -> the burst id open for that day.
pub const BURST_DAYS: &str = "burst_days";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstRecord {
    pub burst_id: String,
    pub tenant_id: String,
    pub day: String,
    pub reason: String,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    pub percent: u32,
    pub extra_tokens: u64,
    pub requested_at_ms: i64,
    pub decided_at_ms: i64,
    pub requested_by: String,
    pub decided_by: String,
    pub note: String,
}

/// What a burst of `percent` adds to a daily quota.
pub fn extra_tokens(daily_tokens: u64, percent: u32) -> u64 {
    // In u128: a huge quota times a percentage must not overflow in `apply`.
    u64::try_from(u128::from(daily_tokens) * u128::from(percent) / 100).unwrap_or(u64::MAX)
}

/// Tokens an approved burst adds to `day`'s quota of a tenant.
pub fn extra_on(db: &impl Lookup, tenant_id: &str, day: &str) -> io::Result<u64> {
    let Some(id) = db.get::<String>(BURST_DAYS, &format!("{tenant_id}/{day}"))? else {
        return Ok(0);
    };
    Ok(db
        .get::<BurstRecord>(BURSTS, &id)?
        .filter(|b| b.status == "approved")
        .map_or(0, |b| b.extra_tokens))
}

/// Bursts, newest first, filtered by tenant and status.
pub fn list(db: &impl Lookup, tenant_id: &str, status: &str) -> io::Result<Vec<BurstRecord>> {
    let mut all: Vec<BurstRecord> = db
        .scan::<BurstRecord>(BURSTS, "")?
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| tenant_id.is_empty() || b.tenant_id == tenant_id)
        .filter(|b| status.is_empty() || b.status == status)
        .collect();
    all.sort_by_key(|b| std::cmp::Reverse(b.requested_at_ms));
    Ok(all)
}
