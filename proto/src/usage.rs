//! The usage event a worker publishes once per finished request.

use crate::worker::UsageEvent;

impl UsageEvent {
    /// The NATS subject of this event: `bulkhead.usage.<tenant>`.
    pub fn subject(&self) -> String {
        format!("{}.{}", crate::USAGE_SUBJECT_PREFIX, self.tenant_id)
    }
}

/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished event.
pub const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The most bytes of unacknowledged usage the stream holds. Past it NATS
/// refuses new events, and workers keep them in their spools until there is
/// room: nothing is dropped.
pub const STREAM_MAX_BYTES: i64 = 1 << 30;

/// The configuration of the usage stream; workers and the control plane
/// create it with exactly this, whoever comes first. A work queue: an event
/// leaves the stream once the control plane acknowledges it, so the stream
/// holds only the backlog, never the history. (A stream made before this
/// keeps its old retention; NATS cannot change a stream's retention, so
/// delete it while no event is pending to get this one.)
pub fn stream_config() -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
    async_nats::jetstream::stream::Config {
        name: crate::USAGE_STREAM.to_owned(),
        subjects: vec![format!("{}.>", crate::USAGE_SUBJECT_PREFIX)],
        storage: StorageType::File,
        retention: RetentionPolicy::WorkQueue,
        max_bytes: STREAM_MAX_BYTES,
        discard: DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The all-in-one mode's replacement for JetStream: a worker sends a batch of
/// usage events to the control plane in the same process and waits for
/// `done` before it deletes them from its spool, exactly as it waits for a
/// JetStream ack. The control plane applies the batch with the same
/// exactly-once dedup as events from NATS.
#[derive(Debug)]
pub struct LocalUsageBatch {
    pub events: Vec<crate::worker::UsageEvent>,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The sending end of the in-process usage channel.
pub type LocalUsageSender = tokio::sync::mpsc::Sender<LocalUsageBatch>;
/// The receiving end, owned by the control plane.
pub type LocalUsageReceiver = tokio::sync::mpsc::Receiver<LocalUsageBatch>;
