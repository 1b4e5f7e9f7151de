//! `ControlPlaneError`: every way a control-plane call fails, mapped once to a
//! gRPC status. "Not the leader" carries the leader's address in the
//! `bulkhead-leader` metadata entry, which every client follows.

use tonic::Status;

use serde::{Deserialize, Serialize};

/// Metadata key with the leader's address on an `Unavailable` status.
pub use bulkhead_client::LEADER_METADATA;

/// Why the state refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("tenant `{0}` already exists")]
    DuplicateTenant(String),
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("key `{0}` already exists")]
    DuplicateKey(String),
    #[error("unknown session `{0}`")]
    UnknownSession(String),
    #[error("session `{0}` already exists")]
    DuplicateSession(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The tenant's plan or state does not allow it.
    #[error("{0}")]
    NotAllowed(String),
    /// The tenant's storage (`storage_mb`) has no room for it.
    #[error("{0}")]
    StorageFull(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("this node is not the leader{}", .leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is malformed; `param` names the field at fault, when one
    /// does (it travels in the status's `x-bulkhead-error-param`).
    #[error("{}{message}", .param.as_deref().map(|p| format!("{p}: ")).unwrap_or_default())]
    InvalidArgument {
        param: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// This node is broken (storage, Raft fatal): not the caller's fault.
    #[error("control plane failure: {0}")]
    Internal(String),
    /// The state refused a command (its code travels in the status).
    #[error("{0}")]
    Rejected(Rejection),
}

impl ControlPlaneError {
    /// A malformed field: `param` names it.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ControlPlaneError::InvalidArgument {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// A malformed request that no single field is at fault for.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ControlPlaneError::InvalidArgument {
            param: None,
            message: message.into(),
        }
    }
}

impl Rejection {
    /// The machine-readable code of the refusal, sent in the status's
    /// `x-bulkhead-error-code` metadata (callers never read the message).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownTenant(_) => "tenant_not_found",
            Rejection::DuplicateTenant(_) => "tenant_exists",
            Rejection::UnknownKey(_) => "key_not_found",
            Rejection::DuplicateKey(_) => "key_exists",
            Rejection::UnknownSession(_) => "session_not_found",
            Rejection::DuplicateSession(_) => "session_exists",
            Rejection::NotFound(_) => "not_found",
            Rejection::Conflict(_) => "conflict",
            Rejection::NotAllowed(_) => "not_allowed",
            Rejection::StorageFull(_) => "storage_quota_exceeded",
        }
    }
}

impl From<Rejection> for ControlPlaneError {
    fn from(r: Rejection) -> Self {
        ControlPlaneError::Rejected(r)
    }
}

impl From<std::io::Error> for ControlPlaneError {
    fn from(e: std::io::Error) -> Self {
        ControlPlaneError::Internal(e.to_string())
    }
}

/// A status from another node's internal call (encoding, a forwarded
/// proposal) is this node's failure, not the caller's.
impl From<Status> for ControlPlaneError {
    fn from(s: Status) -> Self {
        ControlPlaneError::Internal(s.message().to_owned())
    }
}

impl From<ControlPlaneError> for Status {
    fn from(e: ControlPlaneError) -> Self {
        let message = e.to_string();
        match e {
            ControlPlaneError::NotLeader { leader } => {
                let mut status = Status::unavailable(message);
                if let Some(addr) = leader
                    && let Ok(value) = addr.parse()
                {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                status
            }
            ControlPlaneError::Unauthenticated(_) => Status::unauthenticated(message),
            ControlPlaneError::InvalidArgument { param, .. } => {
                let mut status = Status::invalid_argument(message);
                if let Some(value) = param.and_then(|p| p.parse().ok()) {
                    status
                        .metadata_mut()
                        .insert(bulkhead_proto::ERROR_PARAM_METADATA, value);
                }
                status
            }
            ControlPlaneError::NotFound(_) => Status::not_found(message),
            ControlPlaneError::AlreadyExists(_) => Status::already_exists(message),
            ControlPlaneError::FailedPrecondition(_) => Status::failed_precondition(message),
            ControlPlaneError::PermissionDenied(_) => Status::permission_denied(message),
            ControlPlaneError::Unavailable(_) => Status::unavailable(message),
            ControlPlaneError::Internal(_) => Status::internal(message),
            ControlPlaneError::Rejected(r) => {
                let mut status = match r {
                    Rejection::UnknownTenant(_)
                    | Rejection::UnknownKey(_)
                    | Rejection::UnknownSession(_)
                    | Rejection::NotFound(_) => Status::not_found(message),
                    Rejection::DuplicateTenant(_)
                    | Rejection::DuplicateKey(_)
                    | Rejection::DuplicateSession(_)
                    | Rejection::Conflict(_) => Status::already_exists(message),
                    Rejection::NotAllowed(_) => Status::failed_precondition(message),
                    Rejection::StorageFull(_) => Status::permission_denied(message),
                };
                status.metadata_mut().insert(
                    bulkhead_proto::ERROR_CODE_METADATA,
                    tonic::metadata::MetadataValue::from_static(r.code()),
                );
                status
            }
        }
    }
}
