//! What callers of the control plane need, without the control plane itself
//! (no openraft, no redb): gateways, workers and the admin commands depend on
//! this crate.
//!
//! Layout:
//! - [`client`]: [`ControlPlaneClient`], which follows the leader.
//! - [`tenant_config`]: the tenant config file format (YAML), read into the
//!   wire's `TenantConfig`s.
//! - The wire constants and the few pure rules callers share with the
//!   control plane: how a secret is hashed, how `@shared:` references are
//!   found, what is still grantable of a quota, and the answer to unknown
//!   paths on a gRPC port.
//!
//! Nothing here decides anything for the cluster; the control plane does.

pub mod client;
pub mod tenant_config;
pub mod tls;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

pub use client::ControlPlaneClient;

/// Metadata key a follower answers with: the leader's address.
pub const LEADER_METADATA: &str = "bulkhead-leader";

/// Metadata key an admin call's caller names itself in, for the audit trail.
pub const ACTOR_METADATA: &str = "x-bulkhead-actor";
/// The largest file a tenant uploads (`/v1/files`): the gateway refuses a
/// larger upload with 413, the control plane a larger `UploadFile`.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// The largest message of the gateways' service (an uploaded file travels
/// whole in one) and what every client accepts.
pub const MAX_MEMBER_MESSAGE_BYTES: usize = 2 * MAX_FILE_BYTES;

/// SHA-256 of a secret, hex: how keys and the admin token are stored and compared.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A lazily connected channel to a node's gRPC port (TLS when this
/// process has a CA, see [`tls`]).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect_lazy())
}

/// The endpoint of a component's gRPC address (`host:port`), with this
/// process's TLS settings.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("{}://{addr}", tls::scheme())
    };
    let endpoint = Endpoint::from_shared(url)?;
    match tls::client_config() {
        Some(config) => endpoint.tls_config(config),
        None => Ok(endpoint),
    }
}

/// The snippet names a text refers to as `@shared:NAME`, in order, once each.
pub fn references(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("@shared:") {
        let name: String = text[i + "@shared:".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .collect();
        // A trailing '.' ends a sentence, not a name.
        let name = name.trim_end_matches('.').to_owned();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Tokens that can still be granted today.
pub fn grantable(quota: u64, used: u64, outstanding: u64) -> u64 {
    quota.saturating_sub(used.saturating_add(outstanding))
}

/// For paths no route knows: gRPC callers get `Unimplemented`, others 404.
pub async fn fallback(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented(format!("no such method {}", request.uri().path()))
            .into_http();
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
