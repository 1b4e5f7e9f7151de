//! Webhook endpoints and the outbox of messages to them, as replicated state.
//!
//! An event (quota low, burst approved, ...) becomes one message per matching
//! endpoint, written in the same transaction as the change that caused it.
//! The leader delivers pending messages (the `webhooks` module) and records
//! every attempt through Raft; the next attempt's time follows from the
//! number of attempts (exponential backoff), so a new leader continues where
//! the old one stopped.

use std::io;

use serde::{Deserialize, Serialize};

use crate::store::{Lookup, Tables};

pub const WEBHOOKS: &str = "webhooks";
pub const DELIVERIES: &str = "webhook_deliveries";
/// Message ids of deliveries still to attempt.
pub const PENDING: &str = "webhook_pending";
const SEQ: &str = "webhook_seq";
const META: &str = "meta";

/// Every event type an endpoint can ask for.
pub const EVENT_TYPES: [&str; 10] = [
    "quota.low",
    "quota.exhausted",
    "burst.requested",
    "burst.approved",
    "burst.denied",
    "tenant.created",
    "tenant.updated",
    "tenant.deleted",
    "key.created",
    "key.revoked",
];

/// First retry after this long; each later one waits twice as long.
pub const FIRST_RETRY_MS: i64 = 1_000;
/// The longest wait between attempts.
pub const MAX_RETRY_MS: i64 = 3_600_000;
/// After this many failed attempts a message is given up (`failed`).
pub const MAX_ATTEMPTS: usize = 15;

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub webhook_id: String,
    /// Empty for a global endpoint.
    pub tenant_id: String,
    pub url: String,
    /// Empty for every event type.
    pub events: Vec<String>,
    /// `whsec_<base64>`.
    pub secret: String,
    pub created_at_ms: i64,
    /// `admin`, or `config` when a tenant config file manages it.
    pub source: String,
}

impl WebhookRecord {
    pub fn wants(&self, tenant_id: &str, event_type: &str) -> bool {
        (self.tenant_id.is_empty() || self.tenant_id == tenant_id)
            && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }

    /// What a listing shows of the secret.
    pub fn secret_prefix(&self) -> String {
        self.secret.chars().take(10).collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at_ms: i64,
    /// HTTP status; 0 when no answer came.
    pub status: u16,
    pub latency_ms: u64,
    pub error: String,
}

impl AttemptRecord {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `webhook-id` header, the same on every attempt.
    pub message_id: String,
    pub webhook_id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub url: String,
    /// The JSON body, exactly as signed and sent.
    pub payload: String,
    pub created_at_ms: i64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub next_attempt_at_ms: i64,
    pub attempts: Vec<AttemptRecord>,
    /// The endpoint's secret when the message was written, so a message
    /// outlives its endpoint (a deleted tenant's `tenant.deleted`). Never
    /// shown.
    #[serde(default)]
    pub secret: String,
}

// The secret prints as <redacted>.
impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("webhook_id", &self.webhook_id)
            .field("tenant_id", &self.tenant_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("source", &self.source)
            .finish()
    }
}

impl std::fmt::Debug for DeliveryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryRecord")
            .field("message_id", &self.message_id)
            .field("webhook_id", &self.webhook_id)
            .field("tenant_id", &self.tenant_id)
            .field("event_type", &self.event_type)
            .field("url", &self.url)
            .field("state", &self.state)
            .field("next_attempt_at_ms", &self.next_attempt_at_ms)
            .field("attempts", &self.attempts)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How long to wait after `failures` failed attempts.
pub fn backoff_ms(failures: usize) -> i64 {
    let exp = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    FIRST_RETRY_MS
        .saturating_mul(1_i64 << exp)
        .min(MAX_RETRY_MS)
}

/// Writes one message per endpoint that wants this event.
pub fn emit(
    t: &Tables,
    tenant_id: &str,
    event_type: &str,
    data: serde_json::Value,
    now_ms: i64,
) -> io::Result<usize> {
    let endpoints: Vec<WebhookRecord> = t
        .scan::<WebhookRecord>(WEBHOOKS, "")?
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| w.wants(tenant_id, event_type))
        .collect();
    if endpoints.is_empty() {
        return Ok(0);
    }
    let timestamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let payload = serde_json::json!({
        "type": event_type,
        "timestamp": timestamp,
        "data": data,
    })
    .to_string();
    let mut seq = t.get::<u64>(META, SEQ)?.unwrap_or(0);
    for w in &endpoints {
        seq += 1;
        let message_id = format!("msg_{seq:012}");
        let d = DeliveryRecord {
            message_id: message_id.clone(),
            webhook_id: w.webhook_id.clone(),
            tenant_id: tenant_id.to_owned(),
            event_type: event_type.to_owned(),
            url: w.url.clone(),
            payload: payload.clone(),
            created_at_ms: now_ms,
            state: "pending".into(),
            next_attempt_at_ms: now_ms,
            attempts: Vec::new(),
            secret: w.secret.clone(),
        };
        t.put(DELIVERIES, &message_id, &d)?;
        t.put(PENDING, &message_id, &now_ms)?;
    }
    t.put(META, SEQ, &seq)?;
    Ok(endpoints.len())
}

/// Records one attempt and schedules the next, or closes the message.
/// Returns `None` for an unknown or already closed message.
pub fn record_attempt(
    t: &Tables,
    message_id: &str,
    attempt: AttemptRecord,
) -> io::Result<Option<DeliveryRecord>> {
    let Some(mut d) = t.get::<DeliveryRecord>(DELIVERIES, message_id)? else {
        return Ok(None);
    };
    if d.state != "pending" {
        return Ok(Some(d));
    }
    let at = attempt.at_ms;
    let ok = attempt.succeeded();
    d.attempts.push(attempt);
    if ok {
        d.state = "delivered".into();
    } else if d.attempts.len() >= MAX_ATTEMPTS {
        d.state = "failed".into();
    } else {
        d.next_attempt_at_ms = at + backoff_ms(d.attempts.len());
    }
    if d.state == "pending" {
        t.put(PENDING, message_id, &d.next_attempt_at_ms)?;
    } else {
        t.delete(PENDING, message_id)?;
    }
    t.put(DELIVERIES, message_id, &d)?;
    Ok(Some(d))
}

/// How long delivered and failed messages stay listable.
pub const KEEP_CLOSED_MS: i64 = 30 * 86_400_000;

/// Drops delivered and failed messages older than [`KEEP_CLOSED_MS`].
pub fn prune(t: &Tables, now_ms: i64) -> io::Result<usize> {
    let mut n = 0;
    for (id, d) in t.scan::<DeliveryRecord>(DELIVERIES, "")? {
        if d.state != "pending" && d.created_at_ms + KEEP_CLOSED_MS < now_ms {
            t.delete(DELIVERIES, &id)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Pending messages due at `now_ms`.
pub fn due(db: &impl Lookup, now_ms: i64) -> io::Result<Vec<DeliveryRecord>> {
    let mut out = Vec::new();
    for (id, at) in db.scan::<i64>(PENDING, "")? {
        if at <= now_ms
            && let Some(d) = db.get::<DeliveryRecord>(DELIVERIES, &id)?
        {
            out.push(d);
        }
    }
    Ok(out)
}

/// Endpoints, of one tenant (and the global ones) or all.
pub fn webhooks(db: &impl Lookup, tenant_id: &str) -> io::Result<Vec<WebhookRecord>> {
    Ok(db
        .scan::<WebhookRecord>(WEBHOOKS, "")?
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| tenant_id.is_empty() || w.tenant_id == tenant_id)
        .collect())
}

/// Deliveries, newest first, filtered by tenant and endpoint.
pub fn deliveries(
    db: &impl Lookup,
    tenant_id: &str,
    webhook_id: &str,
    limit: usize,
) -> io::Result<Vec<DeliveryRecord>> {
    let mut all: Vec<DeliveryRecord> = db
        .scan::<DeliveryRecord>(DELIVERIES, "")?
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| tenant_id.is_empty() || d.tenant_id == tenant_id)
        .filter(|d| webhook_id.is_empty() || d.webhook_id == webhook_id)
        .collect();
    all.reverse();
    all.truncate(limit);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(3), 4_000);
        assert_eq!(backoff_ms(40), MAX_RETRY_MS);
    }
}
