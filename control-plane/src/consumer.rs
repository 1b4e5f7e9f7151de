//! The usage consumer: on the leader only, a durable JetStream pull consumer
//! on `BULKHEAD_USAGE` turns batches of usage events into one Raft entry each
//! and acknowledges the messages only after that entry is committed and
//! applied. A message that is never acknowledged (the leader died, lost its
//! leadership, or the write failed) is redelivered to whoever leads next; the
//! state machine drops events it has already applied, so nothing is lost or
//! counted twice.
//!
//! [`run_local`] is the all-in-one mode's counterpart: batches arrive over an
//! in-process channel instead of JetStream and are answered on their `done`
//! channel only after the same `ApplyUsage` entry committed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use bulkhead_proto::usage::{LocalUsageBatch, LocalUsageReceiver};
use bulkhead_proto::worker::UsageEvent;
use futures::StreamExt;
use prost::Message;

use crate::error::ControlPlaneError;
use crate::metrics::Metrics;
use crate::node::write;
use crate::raft::Raft;
use crate::state::{Command, Reply, UsageRecord};

/// Durable consumer name shared by every control-plane node.
pub const CONSUMER: &str = "bulkhead-control-plane";
/// Most events per Raft entry.
pub const MAX_BATCH: usize = 4_096;

/// Runs until aborted (the node lost its leadership or stops).
pub async fn run(raft: Raft, nats_url: String, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match consume(&raft, &nats_url, &metrics).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "usage consumer stopped; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies in-process usage batches until the channel closes or the node
/// stops. Only the leader can commit them: elsewhere a batch is answered with
/// an error and its sender retries.
pub async fn run_local(raft: Raft, mut batches: LocalUsageReceiver, metrics: Arc<Metrics>) {
    while let Some(LocalUsageBatch { events, done }) = batches.recv().await {
        let _ = done.send(apply_local(&raft, &events, &metrics).await);
    }
}

/// The tenants of a batch, for its log line (`acme,globex`).
fn tenants_of(events: &[UsageRecord]) -> String {
    let tenants: BTreeSet<&str> = events.iter().map(|e| e.tenant_id.as_str()).collect();
    tenants.into_iter().collect::<Vec<_>>().join(",")
}

/// Commits a batch of usage events as one `ApplyUsage` entry (each event id
/// counts once) and counts it under `source`: the one path of every usage
/// event, whether it came from JetStream, the in-process channel or
/// `ReportUsage`. Returns (applied, duplicates).
pub(crate) async fn commit(
    raft: &Raft,
    events: Vec<UsageRecord>,
    metrics: &Metrics,
    source: &'static str,
) -> Result<(u32, u32), ControlPlaneError> {
    let tenants = tenants_of(&events);
    let now_ms = crate::node::now_ms();
    match write(raft, Command::ApplyUsage { events, now_ms }).await? {
        Reply::UsageApplied {
            applied,
            duplicates,
        } => {
            metrics.usage_committed(source, applied, duplicates);
            tracing::debug!(tenant = %tenants, source, applied, duplicates, "usage batch committed");
            Ok((applied, duplicates))
        }
        other => Err(ControlPlaneError::Internal(format!(
            "unexpected reply to a usage batch of tenants {tenants}: {other:?}"
        ))),
    }
}

async fn apply_local(raft: &Raft, events: &[UsageEvent], metrics: &Metrics) -> Result<(), String> {
    if events.is_empty() {
        return Ok(());
    }
    let events: Vec<UsageRecord> = events.iter().map(UsageRecord::from).collect();
    commit(raft, events, metrics, "local")
        .await
        .map(|_| ())
        .map_err(|e| format!("committing usage: {e}"))
}

async fn consume(raft: &Raft, nats_url: &str, metrics: &Metrics) -> Result<(), String> {
    let (options, url) = bulkhead_proto::usage::nats_options(nats_url)?;
    let client = options.connect(url.as_str()).await.map_err(|e| {
        format!(
            "connecting to NATS at {}: {e}",
            bulkhead_proto::usage::redacted_nats_url(nats_url)
        )
    })?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await
        .map_err(|e| format!("usage stream: {e}"))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("usage consumer: {e}"))?;
    tracing::info!("usage consumer running on the leader");
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(MAX_BATCH)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| format!("fetching usage events: {e}"))?;
        let mut messages = Vec::new();
        let mut events = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| format!("receiving usage events: {e}"))?;
            match UsageEvent::decode(message.payload.as_ref()) {
                Ok(event) => events.push(UsageRecord::from(&event)),
                Err(e) => {
                    tracing::error!(subject = %message.subject, error = %e, "undecodable usage event dropped");
                }
            }
            messages.push(message);
        }
        if messages.is_empty() {
            continue;
        }
        if !events.is_empty() {
            commit(raft, events, metrics, "nats")
                .await
                .map_err(|e| format!("committing usage: {e}"))?;
        }
        for message in messages {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "usage ack failed; the event will be redelivered and deduplicated");
            }
        }
    }
}
