//! The worker's one error type at its service boundary, with its single mapping
//! to gRPC status codes and HTTP statuses (OpenAI-style error bodies).
//!
//! "The caller did something wrong" ([`WorkerError::InvalidRequest`] and
//! friends) is kept apart from "this worker is broken" ([`WorkerError::Engine`]).

use axum::http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// The request is malformed or asks for something impossible.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// The offending parameter, as OpenAI's `param` field.
        param: Option<&'static str>,
    },
    #[error("the model `{0}` does not exist on this worker")]
    UnknownModel(String),
    #[error("the adapter `{adapter}` does not exist for model `{model}` on this worker")]
    UnknownAdapter { model: String, adapter: String },
    #[error(
        "{}, but the request needs {requested} tokens ({prompt_tokens} in the messages, {max_tokens} for the completion); shorten the messages or lower max_tokens",
        window_words(context_window, tenant.as_deref())
    )]
    ContextExceeded {
        context_window: u32,
        requested: u64,
        prompt_tokens: u32,
        max_tokens: u32,
        /// The tenant whose own `context_window` is the limit, when it is
        /// smaller than the model's.
        tenant: Option<String>,
    },
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error(
        "this worker holds its most model variants (--max-contexts {0}: model, adapter and adapter scale), all of them busy; retry shortly"
    )]
    TooManyContexts(u32),
    /// The usage spool is at its cap: the sink (NATS, the control plane)
    /// has not taken the events for a while. No new request until it has;
    /// nothing is lost.
    #[error(
        "this worker's usage spool is full ({spooled_mib} MiB of usage not yet delivered to the control plane, cap {cap_mib} MiB): it takes no new requests until NATS accepts them; retry shortly or on another worker"
    )]
    UsageSpoolFull { spooled_mib: u64, cap_mib: u64 },
    /// A failure inside the engine; not the caller's fault.
    #[error("engine failure: {0}")]
    Engine(String),
}

/// Which window a request ran into, in words.
fn window_words(context_window: &u32, tenant: Option<&str>) -> String {
    match tenant {
        Some(tenant) => format!(
            "the context window of tenant `{tenant}` is {context_window} tokens (its maximum context length)"
        ),
        None => format!("this model's maximum context length is {context_window} tokens"),
    }
}

impl WorkerError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::ContextExceeded { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownModel(_) | Self::UnknownAdapter { .. } => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ShuttingDown | Self::TooManyContexts(_) | Self::UsageSpoolFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ContextExceeded { .. }
            | Self::UnknownModel(_)
            | Self::UnknownAdapter { .. }
            | Self::BodyTooLarge { .. } => "invalid_request_error",
            Self::ShuttingDown | Self::TooManyContexts(_) | Self::UsageSpoolFull { .. } => {
                "service_unavailable"
            }
            Self::Engine(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::UnknownModel(_) => Some("model_not_found"),
            Self::UnknownAdapter { .. } => Some("adapter_not_found"),
            Self::ContextExceeded { .. } => Some("context_length_exceeded"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::UsageSpoolFull { .. } => Some("usage_spool_full"),
            _ => None,
        }
    }

    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::UnknownModel(_) => Some("model"),
            Self::UnknownAdapter { .. } => Some("adapter"),
            Self::ContextExceeded { .. } => Some("messages"),
            _ => None,
        }
    }

    /// The OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        bulkhead_proto::openai::error(&self.to_string(), self.kind(), self.param(), self.code())
    }
}

impl From<WorkerError> for tonic::Status {
    fn from(err: WorkerError) -> Self {
        let message = err.to_string();
        let code = err.code();
        let mut status = match err {
            WorkerError::InvalidRequest { .. } | WorkerError::BodyTooLarge { .. } => {
                tonic::Status::invalid_argument(message)
            }
            // Its own code, so a gateway can tell it apart without reading the text.
            WorkerError::ContextExceeded { .. } => tonic::Status::out_of_range(message),
            WorkerError::UnknownModel(_) | WorkerError::UnknownAdapter { .. } => {
                tonic::Status::not_found(message)
            }
            WorkerError::ShuttingDown
            | WorkerError::TooManyContexts(_)
            | WorkerError::UsageSpoolFull { .. } => tonic::Status::unavailable(message),
            WorkerError::Engine(_) => tonic::Status::internal(message),
        };
        if let Some(code) = code {
            status.metadata_mut().insert(
                bulkhead_proto::ERROR_CODE_METADATA,
                tonic::metadata::MetadataValue::from_static(code),
            );
        }
        status
    }
}

impl axum::response::IntoResponse for WorkerError {
    fn into_response(self) -> axum::response::Response {
        (self.http_status(), axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_code_travels_in_metadata() {
        let status = tonic::Status::from(WorkerError::UnknownAdapter {
            model: "m".into(),
            adapter: "a".into(),
        });
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status
                .metadata()
                .get(bulkhead_proto::ERROR_CODE_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("adapter_not_found")
        );
    }
}
