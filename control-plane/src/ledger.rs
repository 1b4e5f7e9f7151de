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
    /// Requests per latency bucket: entry `i` counts requests that took at
    /// most [`LATENCY_BUCKETS_MS`]`[i]`, the last entry those that took
    /// longer than every bound. Empty for days recorded before it existed.
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds (ms) of the latency histogram's buckets, doubling from 25 ms
/// to about 100 s; one more bucket holds everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 13] = [
    25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400,
];

impl LedgerDay {
    /// Counts one request's latency in the histogram.
    pub fn record_latency(&mut self, ms: u64) {
        if self.latency_buckets.len() != LATENCY_BUCKETS_MS.len() + 1 {
            self.latency_buckets.resize(LATENCY_BUCKETS_MS.len() + 1, 0);
        }
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[i] += 1;
    }

    /// The 95th percentile latency: the upper bound of the bucket that holds
    /// it (the slowest request's latency when that is the overflow bucket);
    /// 0 without any recorded request.
    pub fn p95_latency_ms(&self) -> u64 {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        // The rank of the 95th percentile, rounded up: ceil(0.95 * total).
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BUCKETS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(self.max_latency_ms);
            }
        }
        self.max_latency_ms
    }

    /// Mean latency of the day's requests; 0 without any.
    pub fn avg_latency_ms(&self) -> u64 {
        self.total_latency_ms
            .checked_div(self.requests)
            .unwrap_or(0)
    }
}

/// The longest range of days a usage report or export covers.
pub const MAX_RANGE_DAYS: i64 = 366;

/// The days from `from` to `to` (`YYYY-MM-DD`, both inclusive), oldest first.
/// The error names the field at fault (`from_day` or `to_day`) and why.
pub fn day_range(from: &str, to: &str) -> Result<Vec<String>, (&'static str, String)> {
    let parse = |field: &'static str, s: &str| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .filter(|_| s.len() == 10)
            .ok_or_else(|| (field, format!("{s:?} is not a day in the form YYYY-MM-DD")))
    };
    let (start, end) = (parse("from_day", from)?, parse("to_day", to)?);
    if start > end {
        return Err(("to_day", format!("{to} is before from_day {from}")));
    }
    let len = (end - start).num_days() + 1;
    if len > MAX_RANGE_DAYS {
        return Err((
            "to_day",
            format!("the range covers {len} days, at most {MAX_RANGE_DAYS} are allowed"),
        ));
    }
    Ok(start
        .iter_days()
        .take_while(|d| *d <= end)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect())
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
    /// Tokens of usage events applied against this allowance on `day`.
    #[serde(default)]
    pub applied: u64,
}

impl Allowance {
    /// Tokens that count against `day`.
    pub fn tokens_on(&self, day: &str) -> u64 {
        if self.day == day { self.tokens } else { 0 }
    }
}

/// Whether `day` is a ledger day (`YYYY-MM-DD`).
pub fn is_day(day: &str) -> bool {
    day.len() == 10 && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok()
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

pub use bulkhead_client::grantable;

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
    fn p95_is_the_upper_bound_of_the_bucket_holding_it() {
        let mut l = LedgerDay::default();
        assert_eq!(l.p95_latency_ms(), 0);
        // 19 fast requests and one slow one: the 95th percentile (the 19th
        // of 20) is still fast.
        for _ in 0..19 {
            l.record_latency(30);
        }
        l.record_latency(5_000);
        assert_eq!(l.p95_latency_ms(), 50);
        // A second slow one moves it into the slow bucket.
        l.record_latency(5_000);
        assert_eq!(l.p95_latency_ms(), 6_400);
        // Bounds are inclusive.
        let mut l = LedgerDay::default();
        l.record_latency(25);
        assert_eq!(l.p95_latency_ms(), 25);
        l.record_latency(0);
        assert_eq!(l.latency_buckets[0], 2);
        // Slower than every bound: the slowest request's latency.
        let mut l = LedgerDay {
            max_latency_ms: 300_000,
            ..Default::default()
        };
        l.record_latency(300_000);
        assert_eq!(l.p95_latency_ms(), 300_000);
        assert_eq!(l.latency_buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
    }

    #[test]
    fn day_ranges_are_inclusive_and_bounded() {
        assert_eq!(
            day_range("2026-02-27", "2026-03-01").unwrap(),
            ["2026-02-27", "2026-02-28", "2026-03-01"]
        );
        assert_eq!(day_range("2026-11-26", "2026-11-26").unwrap().len(), 1);
        assert!(day_range("2026-1-5", "2026-11-26").unwrap_err().0 == "from_day");
        assert!(day_range("yesterday", "2026-11-26").unwrap_err().0 == "from_day");
        assert!(day_range("2026-11-26", "2026-13-01").unwrap_err().0 == "to_day");
        assert!(day_range("2026-11-27", "2026-11-26").unwrap_err().0 == "to_day");
        assert_eq!(day_range("2025-01-01", "2026-01-01").unwrap().len(), 366);
        assert!(day_range("2025-01-01", "2026-01-02").unwrap_err().0 == "to_day");
    }

    #[test]
    fn tokens_of_another_day_do_not_count() {
        let a = Allowance {
            tokens: 50,
            day: "2026-11-25".into(),
            slots: 1,
            expires_at_ms: 0,
            applied: 0,
        };
        assert_eq!(a.tokens_on("2026-11-26"), 0);
        assert_eq!(a.tokens_on("2026-11-25"), 50);
    }
}
