//! The admin API's one error type and its mapping to HTTP statuses and
//! OpenAI-style error bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tonic::Code;

/// Every way an admin request fails, each with one status and one body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// No token, or the control plane refused it.
    #[error("{message}")]
    Unauthorized { message: String, code: &'static str },
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    /// AlreadyExists or FailedPrecondition: valid, but the state says no.
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    #[error("this route does not take that method; see docs/admin-openapi.yaml")]
    MethodNotAllowed,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The control plane failed (not the caller's fault).
    #[error("{0}")]
    Upstream(String),
}

impl AdminError {
    pub(super) fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: "invalid_request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::BadRequest { .. }
            | Self::NotFound(_)
            | Self::Conflict { .. }
            | Self::MethodNotAllowed
            | Self::TooLarge(_) => "invalid_request_error",
            Self::Unavailable(_) => "service_unavailable",
            Self::Upstream(_) => "server_error",
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { code, .. }
            | Self::BadRequest { code, .. }
            | Self::Conflict { code, .. } => code,
            Self::Forbidden(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge(_) => "request_too_large",
            Self::Unavailable(_) => "control_plane_unavailable",
            Self::Upstream(_) => "control_plane_error",
        }
    }

    pub(super) fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The error body, in the gateway's OpenAI-style shape.
    pub fn body(&self) -> Value {
        bulkhead_proto::openai::error(
            &self.to_string(),
            self.kind(),
            self.param(),
            Some(self.code()),
        )
    }

    /// A control-plane status, as the admin API's caller reads it.
    pub fn from_control_plane(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthorized {
                message,
                code: "invalid_admin_token",
            },
            Code::PermissionDenied => Self::Forbidden(message),
            Code::InvalidArgument | Code::OutOfRange => Self::BadRequest {
                param: field_of(&message),
                message,
                code: "invalid_argument",
            },
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::Conflict {
                message,
                code: crate::error::control_plane_code(status).unwrap_or("already_exists"),
            },
            Code::FailedPrecondition => Self::Conflict {
                message,
                code: crate::error::control_plane_code(status).unwrap_or("failed_precondition"),
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                Self::Unavailable(format!(
                    "the control plane cannot answer now ({message}); retry shortly"
                ))
            }
            _ => Self::Upstream(format!("the control plane failed: {message}")),
        }
    }

    /// An extractor's refusal (body, query string, path), as JSON.
    pub(super) fn rejected(status: StatusCode, what: &str, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::TooLarge(format!("the request body is too large: {text}"));
        }
        Self::BadRequest {
            message: format!("{what}: {text}"),
            param: None,
            code: "invalid_request",
        }
    }
}

/// The field a control-plane message starts with (`url: ...` names `url`).
pub(super) fn field_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let ok = !head.is_empty()
        && head.len() <= 64
        && head
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    ok.then(|| head.to_owned())
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}
