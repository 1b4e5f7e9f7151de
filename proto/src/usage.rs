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

/// The configuration of the usage stream; workers and the control plane
/// create it with exactly this, whoever comes first.
pub fn stream_config() -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: crate::USAGE_STREAM.to_owned(),
        subjects: vec![format!("{}.>", crate::USAGE_SUBJECT_PREFIX)],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}
