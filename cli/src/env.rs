//! Every environment variable bulkhead reads, in one place.

/// Log filter (tracing `EnvFilter` syntax).
pub const LOG: &str = "BULKHEAD_LOG";
/// NATS server URL for usage events.
pub const NATS_URL: &str = "BULKHEAD_NATS_URL";
/// Directory for a role's local state (the worker's usage spool).
pub const DATA_DIR: &str = "BULKHEAD_DATA_DIR";
/// This worker's id.
pub const WORKER_ID: &str = "BULKHEAD_WORKER_ID";
/// Control-plane addresses for admin commands, gateways and workers.
pub const CONTROL_PLANE: &str = "BULKHEAD_CONTROL_PLANE";
/// The admin token for admin commands.
pub const ADMIN_TOKEN: &str = "BULKHEAD_ADMIN_TOKEN";
