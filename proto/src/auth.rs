//! The secrets cluster members send in gRPC metadata: the node credential
//! ([`ClusterSecret`]), held by control-plane nodes alone and checked by the
//! Raft service, and a gateway's or worker's own [`Credential`], issued by an
//! admin command and checked by the control plane's member and fleet
//! services (and, for gateways, by workers). Admin calls carry the admin
//! token instead (see the control plane).

use std::marker::PhantomData;
use std::sync::Arc;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

/// What distinguishes one kind of secret: the metadata key it travels in,
/// and how it is named to a user.
pub trait SecretKind: Send + Sync + 'static {
    /// The gRPC metadata key.
    const METADATA: &'static str;
    /// What it is, in messages ("the cluster secret").
    const WHAT: &'static str;
}

/// The node credential: the cluster secret the control-plane nodes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {}
impl SecretKind for Node {
    const METADATA: &'static str = CLUSTER_SECRET_METADATA;
    const WHAT: &'static str = "the cluster secret";
}

/// A gateway's or a worker's own credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {}
impl SecretKind for Member {
    const METADATA: &'static str = CREDENTIAL_METADATA;
    const WHAT: &'static str = "a credential";
}

/// The metadata key the node credential travels in.
pub const CLUSTER_SECRET_METADATA: &str = "x-bulkhead-cluster-secret";
/// The metadata key a gateway's or worker's credential travels in.
pub const CREDENTIAL_METADATA: &str = "x-bulkhead-credential";
/// The error code (`x-bulkhead-error-code`) of a call a service's guard
/// turned away for no or a wrong secret (Unauthenticated).
pub const INVALID_CREDENTIAL: &str = "invalid_credential";
/// The refusal code of the admin service when the caller's admin token is
/// missing or wrong (the caller's fault, unlike a refused credential).
pub const INVALID_ADMIN_TOKEN: &str = "invalid_admin_token";
/// The error code of a call made with a valid secret of another caller
/// (PermissionDenied).
pub const WRONG_CALLER: &str = "wrong_caller";

/// `status` with the guard's error `code` in its metadata.
pub fn refusal(mut status: Status, code: &'static str) -> Status {
    status
        .metadata_mut()
        .insert(crate::ERROR_CODE_METADATA, MetadataValue::from_static(code));
    status
}

/// Shortest secret accepted: guessing it must be out of reach.
pub const MIN_SECRET_LEN: usize = 16;

/// A secret of kind `K`. Its `Debug` never prints it.
pub struct Secret<K>(Arc<str>, PhantomData<K>);

/// The node credential (the Raft service's).
pub type ClusterSecret = Secret<Node>;
/// A gateway's or worker's credential.
pub type Credential = Secret<Member>;

impl<K> Clone for Secret<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0), PhantomData)
    }
}

impl<K> PartialEq for Secret<K> {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}
impl<K> Eq for Secret<K> {}

impl<K: SecretKind> std::fmt::Debug for Secret<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}: <redacted>)", K::METADATA)
    }
}

impl<K: SecretKind> Secret<K> {
    /// Accepts a secret of at least [`MIN_SECRET_LEN`] printable ASCII
    /// characters (it must fit in gRPC metadata).
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "{} must be at least {MIN_SECRET_LEN} characters long",
                K::WHAT
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{} must be printable ASCII without spaces",
                K::WHAT
            ));
        }
        Ok(Self(secret.into(), PhantomData))
    }

    /// A fresh random secret (256 bits) after `prefix`.
    pub fn generate_with(prefix: &str) -> Self {
        Self(format!("{prefix}{}", random_hex(32)).into(), PhantomData)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Adds the secret to an outgoing request.
    pub fn attach<T>(&self, req: &mut Request<T>) {
        if let Ok(value) = MetadataValue::try_from(self.expose()) {
            req.metadata_mut().insert(K::METADATA, value);
        }
    }

    /// Whether `metadata` carries this secret (compared in constant time).
    pub fn matches(&self, metadata: &MetadataMap) -> bool {
        metadata
            .get(K::METADATA)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), self.0.as_bytes()))
    }

    /// Refuses a call that does not carry the secret.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.matches(metadata) {
            Ok(())
        } else if metadata.contains_key(K::METADATA) {
            Err(refusal(
                Status::unauthenticated(format!("{} is wrong", K::WHAT)),
                INVALID_CREDENTIAL,
            ))
        } else {
            Err(refusal(
                Status::unauthenticated(format!(
                    "only members of the cluster may call this service ({} metadata missing)",
                    K::METADATA
                )),
                INVALID_CREDENTIAL,
            ))
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

impl ClusterSecret {
    /// A fresh random node credential (256 bits).
    pub fn generate() -> Self {
        Self::generate_with("bkc_")
    }
}

/// A client-side tonic interceptor that adds a secret to every call:
/// `WorkerClient::with_interceptor(channel, AttachSecret(credential))`.
/// Named, so a client can be stored in a struct field.
#[derive(Debug, Clone)]
pub struct AttachSecret<K: SecretKind>(pub Secret<K>);

impl<K: SecretKind> tonic::service::Interceptor for AttachSecret<K> {
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
