//! Which gateways may call this worker's gRPC service: those whose
//! credential (`x-bulkhead-credential`) hashes to one the control plane
//! lists in its registration replies, renewed with every heartbeat, so a
//! revoked gateway is refused within one renewal. Credentials given in the
//! config are accepted too (a worker without a control plane: benches).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use bulkhead_proto::Credential;
use bulkhead_proto::auth::{CREDENTIAL_METADATA, INVALID_CREDENTIAL, refusal};
use tonic::{Request, Status};

/// The gateways accepted now; cloned into the gRPC service's interceptor.
#[derive(Debug, Clone, Default)]
pub struct Gateways {
    fixed: Arc<HashSet<String>>,
    listed: Arc<RwLock<HashSet<String>>>,
}

impl Gateways {
    /// Accepts `fixed` always, and what the control plane lists later.
    pub fn new(fixed: &[Credential]) -> Self {
        Self {
            fixed: Arc::new(
                fixed
                    .iter()
                    .map(|c| bulkhead_client::hash_secret(c.expose()))
                    .collect(),
            ),
            listed: Arc::default(),
        }
    }

    /// The control plane's current list (hex SHA-256 hashes).
    pub fn set_listed(&self, hashes: Vec<String>) {
        let hashes: HashSet<String> = hashes.into_iter().collect();
        match self.listed.write() {
            Ok(mut listed) => *listed = hashes,
            Err(p) => *p.into_inner() = hashes,
        }
    }

    fn accepts(&self, hash: &str) -> bool {
        self.fixed.contains(hash)
            || self
                .listed
                .read()
                .map(|l| l.contains(hash))
                .unwrap_or_else(|p| p.into_inner().contains(hash))
    }
}

impl tonic::service::Interceptor for Gateways {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(secret) = req
            .metadata()
            .get(CREDENTIAL_METADATA)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(refusal(
                Status::unauthenticated(format!(
                    "only gateways may call a worker ({CREDENTIAL_METADATA} metadata missing)"
                )),
                INVALID_CREDENTIAL,
            ));
        };
        if self.accepts(&bulkhead_client::hash_secret(secret)) {
            Ok(req)
        } else {
            Err(refusal(
                Status::unauthenticated("this credential is not a gateway credential in force"),
                INVALID_CREDENTIAL,
            ))
        }
    }
}
