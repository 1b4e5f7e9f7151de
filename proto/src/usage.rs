//! The usage event a worker publishes once per finished request.

use crate::worker::UsageEvent;

impl UsageEvent {
    /// The NATS subject of this event: `bulkhead.usage.<tenant>`.
    pub fn subject(&self) -> String {
        format!("{}.{}", crate::USAGE_SUBJECT_PREFIX, self.tenant_id)
    }
}
