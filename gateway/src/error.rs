//! The gateway's one error type at its HTTP boundary: each variant maps to one
//! status and one OpenAI-style error body. A refusal by quota carries what
//! the caller needs to act on it (which limit, what is left, when it resets).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_proto::auth::INVALID_ADMIN_TOKEN;
use tonic::Code;

use crate::i18n::{self, Text};

/// Why a request was refused by a tenant limit (HTTP 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `daily_tokens` or `max_concurrent`.
    pub limit: &'static str,
    pub message: Text,
    /// The day's quota (tokens).
    pub limit_tokens: u64,
    /// Tokens of the day's quota not used nor promised to running requests.
    pub remaining_tokens: u64,
    /// When the day's quota resets (ms since the epoch).
    pub resets_at_ms: i64,
    /// Seconds until a retry can succeed.
    pub retry_after_s: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No credential, or a wrong one: `invalid_api_key`, or on the admin API
    /// `missing_admin_token` / `invalid_admin_token`.
    #[error("{message}")]
    Unauthorized { message: Text, code: &'static str },
    /// The key is valid but names another tenant than the request does.
    #[error("{0}")]
    Forbidden(Text),
    /// The caller may not do this (a shared snippet it has no grant for, an
    /// admin call the control plane refused).
    #[error("{message}")]
    Denied {
        message: Text,
        code: &'static str,
        param: Option<String>,
    },
    #[error("{message}")]
    BadRequest {
        message: Text,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{message}")]
    NotFound { message: Text, code: &'static str },
    /// Valid, but the state says no (AlreadyExists, FailedPrecondition).
    #[error("{message}")]
    Conflict { message: Text, code: &'static str },
    #[error("this route does not take that method; see docs/admin-openapi.yaml")]
    MethodNotAllowed,
    #[error("{0}")]
    TooLarge(Text),
    #[error("{}", .0.message)]
    RateLimited(Box<Refusal>),
    #[error("{0}")]
    Unavailable(String),
    /// No worker serves the model yet, but one is loading it.
    #[error(
        "the model `{model}` is loading on a worker ({:.0}% done); retry in a few seconds",
        progress * 100.0
    )]
    ModelLoading { model: String, progress: f32 },
    /// A worker or the control plane failed while serving the request.
    #[error("{0}")]
    Upstream(String),
    /// Too many session or sharing calls of one tenant in a short time.
    #[error("{0}")]
    Throttled(Text),
    /// The request ran past its deadline; the worker was told to stop.
    #[error("{0}")]
    DeadlineExceeded(String),
}

impl GatewayError {
    pub fn bad_request(message: impl Into<Text>, param: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// A request without a valid API key.
    pub fn invalid_api_key(message: impl Into<Text>) -> Self {
        Self::Unauthorized {
            message: message.into(),
            code: "invalid_api_key",
        }
    }

    /// A body over the limit of `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::TooLarge(Text::new("request-too-large").arg("limit", limit))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) | Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::ModelLoading { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } | Self::Forbidden(_) => "authentication_error",
            Self::BadRequest { .. }
            | Self::NotFound { .. }
            | Self::Conflict { .. }
            | Self::MethodNotAllowed
            | Self::TooLarge(_) => "invalid_request_error",
            Self::RateLimited(_) | Self::Throttled(_) => "rate_limit_error",
            Self::Denied { .. } => "permission_error",
            Self::Unavailable(_) | Self::ModelLoading { .. } => "service_unavailable",
            Self::Upstream(_) | Self::DeadlineExceeded(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::Unauthorized { code, .. }
            | Self::Denied { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. } => Some(code),
            Self::Forbidden(_) => Some("tenant_mismatch"),
            Self::BadRequest { code, .. } => *code,
            Self::MethodNotAllowed => Some("method_not_allowed"),
            Self::TooLarge(_) => Some("request_too_large"),
            Self::RateLimited(r) if r.limit == "max_concurrent" => {
                Some("concurrency_limit_exceeded")
            }
            Self::RateLimited(_) => Some("daily_quota_exceeded"),
            Self::Throttled(_) => Some("too_many_requests"),
            Self::ModelLoading { .. } => Some("model_loading"),
            Self::DeadlineExceeded(_) => Some("request_timeout"),
            Self::Unavailable(_) | Self::Upstream(_) => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { param, .. } | Self::Denied { param, .. } => param.as_deref(),
            Self::NotFound { code, .. } if *code == "model_not_found" => Some("model"),
            _ => None,
        }
    }

    /// The message in `locale`: the catalogued ones in that language, the
    /// others as they are.
    pub fn message(&self, locale: i18n::Locale) -> String {
        match self {
            Self::Unauthorized { message, .. }
            | Self::Denied { message, .. }
            | Self::BadRequest { message, .. }
            | Self::NotFound { message, .. }
            | Self::Conflict { message, .. } => message.render(locale),
            Self::Forbidden(t) | Self::TooLarge(t) | Self::Throttled(t) => t.render(locale),
            Self::RateLimited(r) => r.message.render(locale),
            other => other.to_string(),
        }
    }

    /// The OpenAI-style error body, in the language of the request being
    /// handled ([`i18n::current`]).
    pub fn body(&self) -> serde_json::Value {
        let mut body = bulkhead_proto::openai::error(
            &self.message(i18n::current()),
            self.kind(),
            self.param(),
            self.code(),
        );
        if let Self::ModelLoading { progress, .. } = self {
            body["error"]["progress"] = serde_json::json!(progress);
        }
        body
    }

    /// A worker's gRPC error, as the caller should see it.
    pub fn from_worker(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::OutOfRange => Self::BadRequest {
                code: Some("context_length_exceeded"),
                message: message.into(),
                param: Some("messages".into()),
            },
            Code::InvalidArgument => Self::bad_request(message, None),
            Code::NotFound => Self::NotFound {
                // The worker says which in metadata; never read from the text.
                code: match metadata(status, bulkhead_proto::ERROR_CODE_METADATA) {
                    Some("adapter_not_found") => "adapter_not_found",
                    _ => "model_not_found",
                },
                message: message.into(),
            },
            Code::Unavailable | Code::ResourceExhausted => Self::Unavailable(format!(
                "the worker cannot take the request now ({message}); retry shortly"
            )),
            _ => Self::Upstream(format!(
                "the worker failed while serving the request ({message}); nothing was billed, retry"
            )),
        }
    }

    /// A control plane's gRPC error, for the OpenAI-style API and the admin
    /// API alike: the one mapping of control-plane statuses to HTTP.
    /// Unauthenticated is the caller's fault (401) only when the control
    /// plane says the caller's admin token is wrong; otherwise it refused
    /// this gateway's own credential (503, not the caller's fault). Codes
    /// and the field at fault come from the status's metadata, never from
    /// its message.
    pub fn from_control_plane(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        let code = control_plane_code(status);
        match status.code() {
            Code::Unauthenticated if code == Some(INVALID_ADMIN_TOKEN) => Self::Unauthorized {
                message: message.into(),
                code: INVALID_ADMIN_TOKEN,
            },
            Code::NotFound => Self::NotFound {
                message: message.into(),
                code: code.unwrap_or("not_found"),
            },
            Code::InvalidArgument | Code::OutOfRange => Self::BadRequest {
                message: message.into(),
                param: metadata(status, bulkhead_proto::ERROR_PARAM_METADATA).map(str::to_owned),
                code: Some(code.unwrap_or("invalid_argument")),
            },
            Code::AlreadyExists => Self::Conflict {
                message: message.into(),
                code: code.unwrap_or("already_exists"),
            },
            Code::FailedPrecondition => Self::Conflict {
                message: message.into(),
                code: code.unwrap_or("failed_precondition"),
            },
            Code::PermissionDenied => Self::Denied {
                message: message.into(),
                code: code.unwrap_or("permission_denied"),
                param: None,
            },
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::Cancelled => Self::Unavailable(format!(
                "the control plane cannot answer now ({message}); retry shortly"
            )),
            _ => Self::Upstream(format!("the control plane failed: {message}")),
        }
    }

    /// An extractor's refusal (body, query string, path) as JSON.
    pub fn rejected(status: StatusCode, what: &str, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::TooLarge(format!("the request body is too large: {text}").into());
        }
        Self::BadRequest {
            message: format!("{what}: {text}").into(),
            param: None,
            code: Some("invalid_request"),
        }
    }
}

fn metadata<'a>(status: &'a tonic::Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key)?.to_str().ok()
}

/// The control plane's code for a refusal (`x-bulkhead-error-code`), when
/// it is one of those it sends: the gateway answers with it as the error's
/// `code`, and never reads the message to tell refusals apart.
fn control_plane_code(status: &tonic::Status) -> Option<&'static str> {
    const SENT: [&str; 11] = [
        "tenant_not_found",
        "tenant_exists",
        "key_not_found",
        "key_exists",
        "session_not_found",
        "session_exists",
        "not_found",
        "conflict",
        "not_allowed",
        "storage_quota_exceeded",
        INVALID_ADMIN_TOKEN,
    ];
    let code = metadata(status, bulkhead_proto::ERROR_CODE_METADATA)?;
    SENT.iter().copied().find(|known| *known == code)
}

/// OpenAI's duration format for `x-ratelimit-reset-tokens`: `1h2m3s`.
pub fn reset_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The `x-ratelimit-*` headers (and `Retry-After` on a refusal).
pub fn rate_limit_headers(
    headers: &mut HeaderMap,
    limit: u64,
    remaining: u64,
    reset_s: u64,
    retry_after: Option<u64>,
) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("x-ratelimit-limit-tokens", limit.to_string());
    put("x-ratelimit-remaining-tokens", remaining.to_string());
    put("x-ratelimit-reset-tokens", reset_duration(reset_s));
    if let Some(retry) = retry_after {
        put("retry-after", retry.to_string());
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Self::ModelLoading { .. } | Self::Throttled(_) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        if let Self::RateLimited(r) = &self {
            let reset_s =
                u64::try_from((r.resets_at_ms - crate::now_ms()).max(0) / 1000).unwrap_or(0);
            rate_limit_headers(
                response.headers_mut(),
                r.limit_tokens,
                r.remaining_tokens,
                reset_s,
                Some(r.retry_after_s.max(1)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_error_code_is_read_from_metadata_never_from_the_text() {
        let mut status = tonic::Status::not_found("no such thing on this worker");
        status.metadata_mut().insert(
            bulkhead_proto::ERROR_CODE_METADATA,
            tonic::metadata::MetadataValue::from_static("adapter_not_found"),
        );
        assert_eq!(
            GatewayError::from_worker(&status).code(),
            Some("adapter_not_found")
        );
        // A message that merely mentions an adapter is still a missing model.
        let plain = tonic::Status::not_found("the model `adapter-v2` does not exist");
        assert_eq!(
            GatewayError::from_worker(&plain).code(),
            Some("model_not_found")
        );
    }

    fn with(mut status: tonic::Status, key: &'static str, value: &'static str) -> tonic::Status {
        status
            .metadata_mut()
            .insert(key, tonic::metadata::MetadataValue::from_static(value));
        status
    }

    /// One mapping serves the OpenAI-style API and the admin API; what tells
    /// refusals apart travels in metadata, never in the message.
    #[test]
    fn control_plane_statuses_map_once() {
        let code = bulkhead_proto::ERROR_CODE_METADATA;
        let cases = [
            (
                with(
                    tonic::Status::unauthenticated("the admin token is wrong"),
                    code,
                    INVALID_ADMIN_TOKEN,
                ),
                401,
                Some(INVALID_ADMIN_TOKEN),
            ),
            // This gateway's own credential refused: not the caller's fault.
            (
                with(
                    tonic::Status::unauthenticated("unknown credential"),
                    code,
                    "invalid_credential",
                ),
                503,
                None,
            ),
            (
                tonic::Status::permission_denied("no"),
                403,
                Some("permission_denied"),
            ),
            (
                tonic::Status::invalid_argument("url: must be http"),
                400,
                Some("invalid_argument"),
            ),
            (
                with(
                    tonic::Status::not_found("unknown tenant `x`"),
                    code,
                    "tenant_not_found",
                ),
                404,
                Some("tenant_not_found"),
            ),
            (
                tonic::Status::already_exists("tenant `x` exists"),
                409,
                Some("already_exists"),
            ),
            (
                with(
                    tonic::Status::failed_precondition("plan basic"),
                    code,
                    "not_allowed",
                ),
                409,
                Some("not_allowed"),
            ),
            (tonic::Status::unavailable("no leader"), 503, None),
            (tonic::Status::internal("disk"), 502, None),
        ];
        for (status, http, expected) in cases {
            let e = GatewayError::from_control_plane(&status);
            assert_eq!(e.status().as_u16(), http, "{status:?}");
            assert_eq!(e.code(), expected, "{status:?}");
            assert!(e.body()["error"]["message"].as_str().unwrap().len() > 1);
        }
        // The field at fault comes from metadata; a message that merely
        // starts like a field names none.
        let e = GatewayError::from_control_plane(&with(
            tonic::Status::invalid_argument("url: a webhook URL must be http:// or https://"),
            bulkhead_proto::ERROR_PARAM_METADATA,
            "url",
        ));
        assert_eq!(e.body()["error"]["param"], "url");
        let e = GatewayError::from_control_plane(&tonic::Status::invalid_argument(
            "url: a webhook URL must be http:// or https://",
        ));
        assert!(e.body()["error"]["param"].is_null());
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(reset_duration(5), "5s");
        assert_eq!(reset_duration(65), "1m5s");
        assert_eq!(reset_duration(3 * 3600 + 61), "3h1m1s");
    }

    #[test]
    fn a_loading_model_says_how_far_and_when_to_retry() {
        let e = GatewayError::ModelLoading {
            model: "big".into(),
            progress: 0.4,
        };
        let response = e.clone().into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = e.body();
        assert_eq!(body["error"]["code"], "model_loading");
        assert_eq!(body["error"]["progress"], serde_json::json!(0.4_f32));
        assert_eq!(
            body["error"]["message"],
            "the model `big` is loading on a worker (40% done); retry in a few seconds"
        );
    }

    #[test]
    fn a_worker_context_error_keeps_its_code() {
        let e = GatewayError::from_worker(&tonic::Status::out_of_range(
            "this model's maximum context length is 8 tokens",
        ));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["code"], "context_length_exceeded");
        // Another bad request from a worker carries no such code, whatever its words.
        let e = GatewayError::from_worker(&tonic::Status::invalid_argument(
            "max_tokens exceeds the maximum context length",
        ));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.body()["error"]["code"].is_null());
    }
}
