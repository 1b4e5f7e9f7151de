//! Who may call which service (DESIGN.md section 12). Each service of the
//! control plane has one interceptor, made here, that accepts exactly one
//! kind of caller; no handler authorizes by hand. The Raft service's is the
//! node credential's own (`ClusterSecret::interceptor`), and `Cluster`
//! (status) is open.

use bulkhead_proto::auth::{
    CLUSTER_SECRET_METADATA, CREDENTIAL_METADATA, INVALID_ADMIN_TOKEN, INVALID_CREDENTIAL,
    WRONG_CALLER, constant_time_eq, refusal,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::credentials::{self, CredentialRecord, Role};
use crate::error::ControlPlaneError;
use crate::storage::StateMachine;
use bulkhead_client::hash_secret;

/// The one kind of caller a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator, with the admin token: the `Admin` service.
    Admin,
    /// A gateway, with its credential: the `Member` service.
    Gateway,
    /// A worker, with its credential: the `Fleet` service.
    Worker,
}

impl Caller {
    fn service(self) -> &'static str {
        match self {
            Caller::Admin => "the admin service, which takes the admin token",
            Caller::Gateway => "the member service, which is for gateways",
            Caller::Worker => "the fleet service, which is for workers",
        }
    }
}

/// The credential a member or fleet call was made with, in the request's
/// extensions after the interceptor passed it.
#[derive(Debug, Clone)]
pub struct Authenticated(pub CredentialRecord);

/// The interceptor of the service that `caller` (alone) may call.
#[derive(Clone)]
pub struct Guard {
    sm: StateMachine,
    caller: Caller,
}

impl Guard {
    pub fn new(sm: StateMachine, caller: Caller) -> Self {
        Self { sm, caller }
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match check(&self.sm, self.caller, req.metadata()) {
            Ok(Some(credential)) => {
                req.extensions_mut().insert(Authenticated(credential));
                Ok(req)
            }
            Ok(None) => Ok(req),
            Err(e) => {
                let code = match &e {
                    ControlPlaneError::Unauthenticated(_) if self.caller == Caller::Admin => {
                        Some(INVALID_ADMIN_TOKEN)
                    }
                    ControlPlaneError::Unauthenticated(_) => Some(INVALID_CREDENTIAL),
                    ControlPlaneError::PermissionDenied(_) => Some(WRONG_CALLER),
                    _ => None,
                };
                let status = Status::from(e);
                Err(match code {
                    Some(code) => refusal(status, code),
                    None => status,
                })
            }
        }
    }
}

/// Accepts a call's metadata for `caller`'s service, or says why not: a
/// missing or wrong secret is `Unauthenticated`, a valid secret of another
/// role `PermissionDenied`.
pub fn check(
    sm: &StateMachine,
    caller: Caller,
    metadata: &MetadataMap,
) -> Result<Option<CredentialRecord>, ControlPlaneError> {
    let bearer = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let credential = metadata
        .get(CREDENTIAL_METADATA)
        .and_then(|v| v.to_str().ok());
    let denied = |what: &str| {
        ControlPlaneError::PermissionDenied(format!("{what} may not call {}", caller.service()))
    };
    match caller {
        Caller::Admin => {
            let Some(token) = bearer else {
                if let Some(c) = credential {
                    return Err(denied(&describe(sm, c)));
                }
                if metadata.contains_key(CLUSTER_SECRET_METADATA) {
                    return Err(denied("the cluster secret"));
                }
                return Err(ControlPlaneError::Unauthenticated(
                    "an admin token is required (authorization: Bearer <token>)".into(),
                ));
            };
            let Some(expected) = sm.view()?.admin_hash()? else {
                return Err(ControlPlaneError::Unavailable(
                    "the cluster is not initialized yet (no admin token)".into(),
                ));
            };
            if !constant_time_eq(hash_secret(token).as_bytes(), expected.as_bytes()) {
                return Err(ControlPlaneError::Unauthenticated(
                    "the admin token is wrong".into(),
                ));
            }
            Ok(None)
        }
        Caller::Gateway | Caller::Worker => {
            let role = if caller == Caller::Gateway {
                Role::Gateway
            } else {
                Role::Worker
            };
            let Some(secret) = credential else {
                if bearer.is_some() {
                    return Err(denied("the admin token"));
                }
                if metadata.contains_key(CLUSTER_SECRET_METADATA) {
                    return Err(denied("the cluster secret"));
                }
                return Err(ControlPlaneError::Unauthenticated(format!(
                    "{} needs a {} credential ({CREDENTIAL_METADATA} metadata; `bulkhead credential create --role {}`)",
                    caller.service(),
                    role.as_str(),
                    role.as_str()
                )));
            };
            match credentials::by_hash(&sm.view()?, &hash_secret(secret))? {
                None => Err(ControlPlaneError::Unauthenticated(
                    "the credential is unknown or revoked".into(),
                )),
                Some(c) if c.role != role => Err(denied(&format!(
                    "a {} credential (`{}`)",
                    c.role.as_str(),
                    c.name
                ))),
                Some(c) => Ok(Some(c)),
            }
        }
    }
}

/// What a presented credential is, for a refusal.
fn describe(sm: &StateMachine, secret: &str) -> String {
    match sm.view().ok().and_then(|v| {
        credentials::by_hash(&v, &hash_secret(secret))
            .ok()
            .flatten()
    }) {
        Some(c) => format!("a {} credential (`{}`)", c.role.as_str(), c.name),
        None => "an unknown or revoked credential".into(),
    }
}

/// Whether an HTTP request may read the per-tenant metrics: it carries
/// `Authorization: Bearer` with the admin token or a metrics credential.
pub fn may_scrape(sm: &StateMachine, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let Ok(view) = sm.view() else {
        return false;
    };
    let hash = hash_secret(token.trim());
    let admin = view
        .admin_hash()
        .ok()
        .flatten()
        .is_some_and(|expected| constant_time_eq(hash.as_bytes(), expected.as_bytes()));
    admin
        || credentials::by_hash(&view, &hash)
            .ok()
            .flatten()
            .is_some_and(|c| c.role == Role::Metrics)
}
