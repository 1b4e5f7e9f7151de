//! The quota ledger's arithmetic (DESIGN.md section 4), free of storage so it
//! can be tested on its own.
//!
//! Per tenant and day the ledger keeps `used` (from usage events); per
//! gateway an [`Allowance`] keeps the tokens granted and not yet consumed or
//! returned, and the concurrency slots it holds. A grant never exceeds
//! `quota - used - sum(outstanding)` (invariant Q1) and the slots granted to
//! all gateways never exceed `max_concurrent` (Q3). Nothing here reads a
//! clock: the leader stamps each command with its time, so every node computes
//! the same result.

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Longest allowance lease a gateway can ask for.
pub const MAX_ALLOWANCE_TTL_MS: u64 = 60_000;
/// How long after its expiry an allowance is reclaimed: the longest a request
/// admitted under it can still be running, so its usage still finds it.
pub const RECLAIM_GRACE_MS: i64 = 10 * 60_000;

/// One tenant's counters for one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerDay {
    pub used: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub requests: u64,
    pub total_latency_ms: u64,
    pub max_latency_ms: u64,
    /// `quota.low` was sent for this day.
    #[serde(default)]
    pub low_notified: bool,
    /// `quota.exhausted` was sent for this day.
    #[serde(default)]
    pub exhausted_notified: bool,
}

/// What one gateway holds of one tenant's quota.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Granted tokens not yet consumed by usage events nor returned.
    pub tokens: u64,
    /// The day the tokens belong to; tokens of an earlier day are void.
    pub day: String,
    pub slots: u32,
    pub expires_at_ms: i64,
}

impl Allowance {
    /// Tokens that count against `day`.
    pub fn tokens_on(&self, day: &str) -> u64 {
        if self.day == day { self.tokens } else { 0 }
    }
}

/// The ledger day (`YYYY-MM-DD` in the tenant's time zone) that `at_ms` falls
/// in, and when that day ends (ms since the epoch). An unknown or empty time
/// zone means UTC.
pub fn day_of(at_ms: i64, time_zone: &str) -> (String, i64) {
    let utc = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default();
    match time_zone.parse::<chrono_tz::Tz>() {
        Ok(tz) if !time_zone.is_empty() => day_in(&utc.with_timezone(&tz), &tz),
        _ => day_in(&utc, &Utc),
    }
}

fn day_in<Z: TimeZone>(at: &DateTime<Z>, zone: &Z) -> (String, i64) {
    let date = at.date_naive();
    let next = date.succ_opt().unwrap_or(date).and_time(NaiveTime::MIN);
    let resets = zone
        .from_local_datetime(&next)
        .earliest()
        .map_or(at.timestamp_millis() + 86_400_000, |t| t.timestamp_millis());
    (
        format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
        resets,
    )
}

/// Tokens that can still be granted today.
pub fn grantable(quota: u64, used: u64, outstanding: u64) -> u64 {
    quota.saturating_sub(used.saturating_add(outstanding))
}

/// Slots that can still be granted.
pub fn grantable_slots(max_concurrent: u32, held: u32) -> u32 {
    max_concurrent.saturating_sub(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_never_exceed_what_is_left() {
        assert_eq!(grantable(1000, 300, 200), 500);
        assert_eq!(grantable(1000, 900, 200), 0);
        assert_eq!(grantable(1000, u64::MAX, 0), 0);
        assert_eq!(grantable_slots(4, 3), 1);
        assert_eq!(grantable_slots(4, 5), 0);
    }

    #[test]
    fn days_follow_the_tenant_time_zone() {
        // 2026-11-26T23:30:00Z
        let at = 1_795_735_800_000;
        let (day, resets) = day_of(at, "");
        assert_eq!(day, "2026-11-26");
        assert_eq!(resets, 1_795_737_600_000);
        // Already the 27th in Tokyo (UTC+9), which resets at 15:00 UTC.
        let (day, resets) = day_of(at, "Asia/Tokyo");
        assert_eq!(day, "2026-11-27");
        assert_eq!(resets, 1_795_737_600_000 + 15 * 3_600_000);
        // An unknown zone falls back to UTC.
        assert_eq!(day_of(at, "Mars/Olympus").0, "2026-11-26");
    }

    #[test]
    fn tokens_of_another_day_do_not_count() {
        let a = Allowance {
            tokens: 50,
            day: "2026-11-25".into(),
            slots: 1,
            expires_at_ms: 0,
        };
        assert_eq!(a.tokens_on("2026-11-26"), 0);
        assert_eq!(a.tokens_on("2026-11-25"), 50);
    }
}
