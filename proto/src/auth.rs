//! The cluster credential: a shared secret that every gateway, worker and
//! control-plane node sends in gRPC metadata, and that every gRPC service of
//! the cluster checks before it does anything. Admin calls carry the admin
//! token instead (see the control plane).

use std::sync::Arc;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

/// The metadata key the secret travels in.
pub const CLUSTER_SECRET_METADATA: &str = "x-bulkhead-cluster-secret";
/// Shortest secret accepted: guessing it must be out of reach.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster secret. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Accepts a secret of at least [`MIN_SECRET_LEN`] printable ASCII
    /// characters (it must fit in gRPC metadata).
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret must be at least {MIN_SECRET_LEN} characters long"
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the cluster secret must be printable ASCII without spaces".into());
        }
        Ok(Self(secret.into()))
    }

    /// A fresh random secret (256 bits).
    pub fn generate() -> Self {
        Self(format!("bkc_{}", random_hex(32)).into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Adds the secret to an outgoing request.
    pub fn attach<T>(&self, req: &mut Request<T>) {
        if let Ok(value) = MetadataValue::try_from(self.expose()) {
            req.metadata_mut().insert(CLUSTER_SECRET_METADATA, value);
        }
    }

    /// Whether `metadata` carries this secret (compared in constant time).
    pub fn matches(&self, metadata: &MetadataMap) -> bool {
        metadata
            .get(CLUSTER_SECRET_METADATA)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), self.0.as_bytes()))
    }

    /// Refuses a call that does not carry the secret.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.matches(metadata) {
            Ok(())
        } else if metadata.contains_key(CLUSTER_SECRET_METADATA) {
            Err(Status::unauthenticated("the cluster secret is wrong"))
        } else {
            Err(Status::unauthenticated(format!(
                "only members of the cluster may call this service ({CLUSTER_SECRET_METADATA} metadata missing)"
            )))
        }
    }

    /// A tonic interceptor that checks every call of a service.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let secret = self.clone();
        move |req: Request<()>| {
            secret.check(req.metadata())?;
            Ok(req)
        }
    }
}

/// A client-side tonic interceptor that adds the secret to every call:
/// `WorkerClient::with_interceptor(channel, AttachSecret(secret))`. Named, so
/// a client can be stored in a struct field.
#[derive(Debug, Clone)]
pub struct AttachSecret(pub ClusterSecret);

impl tonic::service::Interceptor for AttachSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.0.attach(&mut req);
        Ok(req)
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their
/// lengths (so a secret compared with it cannot be guessed byte by byte).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` bytes from the operating system's cryptographic random generator:
/// what every secret is made of.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect(
        "the operating system's random generator is available (no secret can be made without it)",
    );
    bytes
}

/// [`random_bytes`] in lowercase hex.
pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_needs_the_exact_secret() {
        let secret = ClusterSecret::generate();
        let mut req = Request::new(());
        assert!(secret.check(req.metadata()).is_err());
        ClusterSecret::new("another-secret-of-enough-length")
            .unwrap_or_else(|e| panic!("{e}"))
            .attach(&mut req);
        let err = secret.check(req.metadata()).err();
        assert_eq!(err.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        secret.attach(&mut req);
        assert!(secret.check(req.metadata()).is_ok());
        assert!(ClusterSecret::new("short").is_err());
    }
}
