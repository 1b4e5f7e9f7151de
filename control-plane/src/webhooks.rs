//! Delivery of the webhook outbox ([`crate::outbox`]) by the leader, signed
//! as the Standard Webhooks spec says (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! [`run`] is one of the leader's loops: it sends every pending message that
//! is due, at most once at a time per message, and records each attempt
//! through Raft, so the schedule of retries (and whether a message is still
//! pending) lives in the replicated state and a new leader continues it.
//! Delivery is at least once: a leader that dies between an endpoint's answer
//! and the commit of its record leaves the message to be sent again.
//! This module never changes state except by proposing `RecordAttempt`, and
//! never shows a secret.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinSet;

use crate::node::{self as service, Handles};
use crate::outbox::{self, AttemptRecord, DeliveryRecord};
use crate::raft::Raft;
use crate::state::Command;

/// How long one attempt may take, connection and answer together.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is read when nothing new was applied.
const POLL: Duration = Duration::from_millis(200);
/// Most attempts under way at once.
const MAX_IN_FLIGHT: usize = 64;
/// How much of a failed answer's body is kept in the attempt's error.
const ERROR_BODY_CHARS: usize = 200;
pub const USER_AGENT: &str = "bulkhead-webhooks";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the webhook secret is not whsec_ followed by base64")]
    Secret,
}

/// The `webhook-signature` header value of one attempt: `v1,` and the base64
/// HMAC-SHA256, keyed with the secret's bytes, of `{msg_id}.{timestamp}.{body}`.
pub fn sign(secret: &str, msg_id: &str, timestamp_s: i64, body: &str) -> Result<String, SignError> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .filter(|k| !k.is_empty())
        .ok_or(SignError::Secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SignError::Secret)?;
    mac.update(format!("{msg_id}.{timestamp_s}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The leader's delivery loop: runs until aborted (when this node stops
/// leading), which also aborts the attempts under way.
pub async fn run(handles: Handles) {
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook http client; webhooks are not delivered");
            return;
        }
    };
    // A new leader may not have applied every committed entry yet; reading
    // the outbox before it has could send a message again whose delivery the
    // previous leader already recorded.
    while let Err(e) = service::linearize(&handles.raft, &handles.secret).await {
        tracing::debug!(error = %e, "webhooks wait for the leader to catch up");
        tokio::time::sleep(POLL).await;
    }
    tracing::info!("delivering webhooks");
    let mut applied = handles.sm.applied();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Message ids of the attempts under way, by task.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let now = service::now_ms();
        match handles.sm.view().and_then(|v| outbox::due(&v, now)) {
            Ok(due) => {
                for d in due {
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    if in_flight.values().any(|m| *m == d.message_id) {
                        continue;
                    }
                    let id = d.message_id.clone();
                    let task = tasks.spawn(deliver(client.clone(), handles.raft.clone(), d));
                    in_flight.insert(task.id(), id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the webhook outbox failed"),
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = applied.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::warn!(error = %e, "a webhook attempt did not finish");
                        e.id()
                    }
                };
                in_flight.remove(&id);
            }
        }
    }
}

/// Sends one message and records the attempt.
async fn deliver(client: reqwest::Client, raft: Raft, d: DeliveryRecord) {
    let attempt = attempt(&client, &d).await;
    if attempt.succeeded() {
        tracing::debug!(message_id = %d.message_id, webhook = %d.webhook_id, event = %d.event_type, status = attempt.status, latency_ms = attempt.latency_ms, "webhook delivered");
    } else {
        tracing::info!(message_id = %d.message_id, webhook = %d.webhook_id, event = %d.event_type, status = attempt.status, error = %attempt.error, attempt = d.attempts.len() + 1, "webhook attempt failed");
    }
    let command = Command::RecordAttempt {
        message_id: d.message_id.clone(),
        attempt,
    };
    if let Err(e) = service::write(&raft, command).await {
        tracing::warn!(message_id = %d.message_id, error = %e, "recording a webhook attempt failed");
        // Not again at once: the message is still due.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One POST of a message; never fails, the outcome is in the record.
pub async fn attempt(client: &reqwest::Client, d: &DeliveryRecord) -> AttemptRecord {
    let at_ms = service::now_ms();
    let mut record = AttemptRecord {
        at_ms,
        ..AttemptRecord::default()
    };
    let signature = match sign(&d.secret, &d.message_id, at_ms.div_euclid(1000), &d.payload) {
        Ok(s) => s,
        Err(e) => {
            record.error = e.to_string();
            return record;
        }
    };
    let started = Instant::now();
    let sent = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &d.message_id)
        .header("webhook-timestamp", at_ms.div_euclid(1000).to_string())
        .header("webhook-signature", signature)
        .body(d.payload.clone())
        .send()
        .await;
    record.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match sent {
        Ok(response) => {
            let status = response.status();
            record.status = status.as_u16();
            if !status.is_success() {
                record.error = format!("HTTP {}: {}", status.as_u16(), body_start(response).await);
            }
        }
        Err(e) => record.error = describe(&e),
    }
    record
}

/// The first characters of an answer's body, reading no more than needed.
async fn body_start(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes)
        .chars()
        .take(ERROR_BODY_CHARS)
        .collect()
}

/// Why no answer came, briefly: "connection refused", "timed out after 10s",
/// or the chain of causes.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("timed out after {}s", TIMEOUT.as_secs());
    }
    let mut causes = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        let text = s.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    causes.join(": ").chars().take(ERROR_BODY_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        // The spec's own vector (standard-webhooks libraries test against it).
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn refuses_a_secret_that_is_not_whsec_base64() {
        assert!(sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "m", 1, "{}").is_err());
        assert!(sign("whsec_not base64!", "m", 1, "{}").is_err());
        assert!(sign("", "m", 1, "{}").is_err());
    }

    #[tokio::test]
    async fn an_attempt_without_a_listener_records_no_status_and_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let d = DeliveryRecord {
            message_id: "msg_1".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            payload: "{}".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            ..DeliveryRecord::default()
        };
        let a = attempt(&reqwest::Client::new(), &d).await;
        assert_eq!(a.status, 0);
        assert_eq!(a.error, "connection refused");
        assert!(!a.succeeded());
    }
}
