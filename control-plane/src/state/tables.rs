//! The tables of the state and what is kept in them: their names, how keys
//! are made, and the change log that watchers read in order.

use std::io;

use crate::store::Tables;

use super::Change;

pub const TENANTS: &str = "tenants";
pub const KEYS: &str = "keys";
pub const KEY_HASHES: &str = "key_hashes";
pub const LEDGER: &str = "ledger";
pub const ALLOWANCES: &str = "allowances";
pub const EVENTS: &str = "usage_events";
/// The same event ids by day (`day/event id`), so that those past the dedup
/// horizon are dropped by a range delete instead of a scan of every id.
pub const EVENT_DAYS: &str = "usage_event_days";
/// How long an applied event's id is remembered to drop a repeat: the
/// JetStream duplicate window (24 h) and a week for a worker's spool to
/// come back after an outage. Usage arriving later than this after its day
/// is not counted (it may have been, and its id forgotten): Q1 holds, and
/// such an event is counted as a duplicate.
pub const DEDUP_HORIZON_DAYS: i64 = 8;
pub const USERS: &str = "usage_users";
pub const META: &str = "meta";
pub const WORKERS: &str = "workers";
/// The last requests of each tenant, for the dashboard.
pub const RECENT: &str = "recent_requests";
/// How many recent requests are kept per tenant.
pub const RECENT_KEPT: u64 = 100;
/// What changed, by version, for the watch stream.
pub const CHANGES: &str = "changes";
/// How many changes are kept for watchers that reconnect.
pub(super) const CHANGES_KEPT: u64 = 10_000;
/// Replies of gateway calls by operation id, so a retried call applies once.
pub const OPS: &str = "gateway_ops";
/// How long an operation id is remembered.
pub(super) const OP_MEMORY_MS: i64 = 3_600_000;

/// Prompt counts per tenant and day, keyed `tenant/day/<sha256 of the
/// preview>`: operator-only, never shown to a tenant.
pub const PROMPTS: &str = "usage_prompts";
/// The longest prompt preview kept, in characters.
pub const PROMPT_PREVIEW_CHARS: usize = 80;
/// The export key (hex) under which user ids are hashed for usage exports.
pub(super) const EXPORT_KEY: &str = "usage_export_key";

/// Deleted tenant ids: their name is reused only by an explicit create.
pub const DELETED: &str = "deleted_tenants";

pub(super) const ADMIN_HASH: &str = "admin_token_hash";
pub(super) const VERSION: &str = "version";

pub(super) fn key2(a: &str, b: &str) -> String {
    format!("{a}/{b}")
}

pub(super) fn change_key(version: u64) -> String {
    format!("{version:020}")
}

/// The version the next recorded change gets.
pub(super) fn next_version(t: &Tables) -> io::Result<u64> {
    Ok(t.get::<u64>(META, VERSION)?.unwrap_or(0) + 1)
}

/// Records a change under the next version; watchers see changes in this order.
pub(super) fn record_change(t: &Tables, change: Change) -> io::Result<u64> {
    let v = next_version(t)?;
    t.put(META, VERSION, &v)?;
    t.put(CHANGES, &change_key(v), &(v, change))?;
    if v > CHANGES_KEPT {
        t.delete(CHANGES, &change_key(v - CHANGES_KEPT))?;
    }
    Ok(v)
}
