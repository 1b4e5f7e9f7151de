//! Every environment variable bulkhead reads, in one place.

/// Log filter (tracing `EnvFilter` syntax).
pub const LOG: &str = "BULKHEAD_LOG";
/// NATS server URL for usage events.
pub const NATS_URL: &str = "BULKHEAD_NATS_URL";
/// Directory for a role's local state (the worker's usage spool).
pub const DATA_DIR: &str = "BULKHEAD_DATA_DIR";
/// This worker's id.
pub const WORKER_ID: &str = "BULKHEAD_WORKER_ID";
/// The token a worker's HTTP API demands.
pub const WORKER_HTTP_TOKEN: &str = "BULKHEAD_WORKER_HTTP_TOKEN";
/// Directories of model files a worker loads on demand, comma-separated.
pub const MODEL_DIRS: &str = "BULKHEAD_MODEL_DIRS";
/// Control-plane addresses for admin commands, gateways and workers.
pub const CONTROL_PLANE: &str = "BULKHEAD_CONTROL_PLANE";
/// The admin token for admin commands.
pub const ADMIN_TOKEN: &str = "BULKHEAD_ADMIN_TOKEN";
/// The cluster secret itself (or use `--cluster-secret-file`).
pub const CLUSTER_SECRET: &str = "BULKHEAD_CLUSTER_SECRET";

/// How to make a cluster secret, for error messages.
pub const CLUSTER_SECRET_HELP: &str = "make one with `openssl rand -hex 32 > cluster.secret` and pass \
     --cluster-secret-file cluster.secret (or set BULKHEAD_CLUSTER_SECRET) on every control-plane \
     node, gateway and worker";

/// The cluster secret from `--cluster-secret-file` or, without it, from
/// `BULKHEAD_CLUSTER_SECRET`; `None` when neither is given.
pub fn cluster_secret(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<bulkhead_proto::ClusterSecret>> {
    use anyhow::Context;
    let (text, source) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --cluster-secret-file {}", path.display()))?,
            format!("--cluster-secret-file {}", path.display()),
        ),
        None => match std::env::var(CLUSTER_SECRET) {
            Ok(text) if !text.trim().is_empty() => (text, CLUSTER_SECRET.to_owned()),
            _ => return Ok(None),
        },
    };
    bulkhead_proto::ClusterSecret::new(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{source}: {e}; {CLUSTER_SECRET_HELP}"))
}

/// Like [`cluster_secret`], for roles that cannot run without one.
pub fn require_cluster_secret(
    file: Option<&std::path::Path>,
) -> anyhow::Result<bulkhead_proto::ClusterSecret> {
    cluster_secret(file)?
        .ok_or_else(|| anyhow::anyhow!("no cluster secret given; {CLUSTER_SECRET_HELP}"))
}
/// This gateway's id.
pub const GATEWAY_ID: &str = "BULKHEAD_GATEWAY_ID";
