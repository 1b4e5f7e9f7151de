//! The one clock of every role: what decides a quota day, a lease's expiry
//! and a usage event's time. Drills move it: `BULKHEAD_CLOCK_AHEAD_MS` runs a
//! process's clock that many milliseconds ahead of the system's (read once),
//! so that a cluster whose processes all share an offset meets UTC midnight,
//! or a later day's retention, when a test wants it to. Unset, it is the
//! system clock.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that sets [`ahead_ms`].
pub const CLOCK_AHEAD_MS: &str = "BULKHEAD_CLOCK_AHEAD_MS";

/// How far this process's clock runs ahead of the system's.
pub fn ahead_ms() -> i64 {
    static AHEAD: OnceLock<i64> = OnceLock::new();
    *AHEAD.get_or_init(|| {
        std::env::var(CLOCK_AHEAD_MS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    system.saturating_add(ahead_ms())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}
