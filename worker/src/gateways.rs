//! Which gateways may call this worker's gRPC service: those whose
//! credential (`x-bulkhead-credential`) hashes to one the control plane
//! lists in its registration replies, renewed with every heartbeat, so a
//! revoked gateway is refused within one renewal. A credential it does not
//! know asks for a renewal at once (at most one a second), so a new
//! gateway's retry gets through. Credentials given in the config are
//! accepted too (a worker without a control plane: benches).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bulkhead_proto::Credential;
use bulkhead_proto::auth::{CREDENTIAL_METADATA, INVALID_CREDENTIAL, refusal};
use tonic::{Request, Status};

/// The gateways accepted now; cloned into the gRPC service's interceptor.
#[derive(Debug, Clone, Default)]
pub struct Gateways {
    fixed: Arc<HashSet<String>>,
    listed: Arc<RwLock<HashSet<String>>>,
    /// The metrics credentials in force, for `GET /metrics` on the gRPC port.
    scrapers: Arc<RwLock<HashSet<String>>>,
    /// Woken when a call brought an unknown credential.
    renew: Arc<tokio::sync::Notify>,
    last_renewal_asked: Arc<Mutex<Option<Instant>>>,
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
            scrapers: Arc::default(),
            renew: Arc::default(),
            last_renewal_asked: Arc::default(),
        }
    }

    /// Resolves when a caller brought a credential this worker does not
    /// know: the registration loop renews then instead of waiting.
    pub async fn renewal_wanted(&self) {
        self.renew.notified().await;
    }

    fn ask_renewal(&self) {
        let mut last = self
            .last_renewal_asked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            self.renew.notify_one();
        }
    }

    /// The control plane's current lists (hex SHA-256 hashes) of gateway
    /// and metrics credentials.
    pub fn set_listed(&self, gateways: Vec<String>, scrapers: Vec<String>) {
        for (set, hashes) in [(&self.listed, gateways), (&self.scrapers, scrapers)] {
            let hashes: HashSet<String> = hashes.into_iter().collect();
            match set.write() {
                Ok(mut set) => *set = hashes,
                Err(p) => *p.into_inner() = hashes,
            }
        }
    }

    /// Whether `token` (a bearer token) is a metrics credential in force.
    pub fn may_scrape(&self, token: &str) -> bool {
        let hash = bulkhead_client::hash_secret(token);
        self.scrapers
            .read()
            .map(|s| s.contains(&hash))
            .unwrap_or_else(|p| p.into_inner().contains(&hash))
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
            self.ask_renewal();
            Err(refusal(
                Status::unauthenticated("this credential is not a gateway credential in force"),
                INVALID_CREDENTIAL,
            ))
        }
    }
}
