//! Every environment variable bulkhead reads, in one place.

/// Log filter (tracing `EnvFilter` syntax).
pub const LOG: &str = "BULKHEAD_LOG";
// `BULKHEAD_NATS_CA`, the CA (PEM) a NATS server's certificate must chain
// to (NATS over TLS), and `BULKHEAD_NATS_NKEY_FILE`, a file with the NKey
// seed to sign in with, are read where NATS is dialled:
// `bulkhead_proto::usage::{NATS_CA_ENV, NATS_NKEY_FILE_ENV}`.
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
/// This process's TLS certificate, key and the cluster's CA (PEM files).
pub const TLS_CERT: &str = "BULKHEAD_TLS_CERT";
pub const TLS_KEY: &str = "BULKHEAD_TLS_KEY";
pub const TLS_CA: &str = "BULKHEAD_TLS_CA";
/// A gateway's or worker's own credential (or use `--credential-file`).
pub const CREDENTIAL: &str = "BULKHEAD_CREDENTIAL";

/// How to make a cluster secret, for error messages.
pub const CLUSTER_SECRET_HELP: &str = "make one with `openssl rand -hex 32 > cluster.secret` and pass \
     --cluster-secret-file cluster.secret (or set BULKHEAD_CLUSTER_SECRET) on every control-plane \
     node, and on no other host";

/// How to get a credential, for error messages.
pub const CREDENTIAL_HELP: &str = "an operator makes one with `bulkhead credential create --role \
     gateway|worker --name NAME`; pass it as --credential-file FILE (or set BULKHEAD_CREDENTIAL)";

/// A secret from the file `file` names or, without it, from the variable
/// `var`; `None` when neither is given.
fn read_secret<K: bulkhead_proto::auth::SecretKind>(
    file: Option<&std::path::Path>,
    flag: &str,
    var: &str,
    help: &str,
) -> anyhow::Result<Option<bulkhead_proto::auth::Secret<K>>> {
    use anyhow::Context;
    let (text, source) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {flag} {}", path.display()))?,
            format!("{flag} {}", path.display()),
        ),
        None => match std::env::var(var) {
            Ok(text) if !text.trim().is_empty() => (text, var.to_owned()),
            _ => return Ok(None),
        },
    };
    bulkhead_proto::auth::Secret::new(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{source}: {e}; {help}"))
}

/// The cluster secret (a control-plane node's) from `--cluster-secret-file`
/// or `BULKHEAD_CLUSTER_SECRET`.
pub fn require_cluster_secret(
    file: Option<&std::path::Path>,
) -> anyhow::Result<bulkhead_proto::ClusterSecret> {
    read_secret(
        file,
        "--cluster-secret-file",
        CLUSTER_SECRET,
        CLUSTER_SECRET_HELP,
    )?
    .ok_or_else(|| anyhow::anyhow!("no cluster secret given; {CLUSTER_SECRET_HELP}"))
}

/// A gateway's or worker's credential from `--credential-file` or
/// `BULKHEAD_CREDENTIAL`; `None` when neither is given.
pub fn credential(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<bulkhead_proto::Credential>> {
    read_secret(file, "--credential-file", CREDENTIAL, CREDENTIAL_HELP)
}

/// Like [`credential`], for roles that cannot run without one.
pub fn require_credential(
    file: Option<&std::path::Path>,
) -> anyhow::Result<bulkhead_proto::Credential> {
    credential(file)?.ok_or_else(|| anyhow::anyhow!("no credential given; {CREDENTIAL_HELP}"))
}
/// This gateway's id.
pub const GATEWAY_ID: &str = "BULKHEAD_GATEWAY_ID";
/// The tenant configs `bulkhead up` applies (default: ./tenants when present).
pub const TENANTS_DIR: &str = "BULKHEAD_TENANTS_DIR";
