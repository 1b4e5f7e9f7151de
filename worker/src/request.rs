//! What a caller asks the engine for, and what it gets back, as validated
//! domain types. Both front ends (gRPC and the OpenAI-compatible HTTP API)
//! convert into [`GenerateParams`] here, so validation is written once.

use bulkhead_proto::tools::{Tool, ToolCall, ToolChoice};
use bulkhead_proto::worker as pb;
use bulkhead_proto::{EventId, GatewayId, RequestId, SessionId, TenantId, UserId};

use crate::error::WorkerError;

/// Upper bound on stop sequences per request (OpenAI allows 4; we allow a few more).
pub const MAX_STOP_SEQUENCES: usize = 8;
/// Upper bound on the number of messages in one request.
pub const MAX_MESSAGES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn parse(role: &str) -> Result<Self, WorkerError> {
        match role {
            "system" | "developer" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            "tool" => Ok(Self::Tool),
            other => Err(WorkerError::invalid(
                format!(
                    "unknown message role {other:?}: expected one of system, developer, user, assistant, tool"
                ),
                Some("messages"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// An assistant message's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the call it answers.
    pub tool_call_id: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Result<Self, WorkerError> {
        let content = content.into();
        if content.contains('\0') {
            return Err(WorkerError::invalid(
                "message content must not contain NUL characters",
                Some("messages"),
            ));
        }
        Ok(Self {
            role: Role::parse(role)?,
            content,
            tool_calls: Vec::new(),
            tool_call_id: String::new(),
        })
    }

    /// The message with an assistant's tool calls, or a tool's answer to
    /// call `tool_call_id`.
    pub fn with_tools(mut self, calls: Vec<ToolCall>, tool_call_id: String) -> Self {
        self.tool_calls = calls;
        self.tool_call_id = tool_call_id;
        self
    }
}

impl TryFrom<pb::ChatMessage> for ChatMessage {
    type Error = WorkerError;

    fn try_from(m: pb::ChatMessage) -> Result<Self, WorkerError> {
        let calls = m.tool_calls.iter().map(ToolCall::from).collect();
        Ok(Self::new(&m.role, m.content)?.with_tools(calls, m.tool_call_id))
    }
}

/// Validates a message list: not empty, bounded, and with something to answer.
pub fn validate_messages(messages: &[ChatMessage]) -> Result<(), WorkerError> {
    if messages.is_empty() {
        return Err(WorkerError::invalid(
            "messages must contain at least one message",
            Some("messages"),
        ));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(WorkerError::invalid(
            format!("messages may hold at most {MAX_MESSAGES} entries"),
            Some("messages"),
        ));
    }
    if messages
        .iter()
        .all(|m| m.content.trim().is_empty() && m.tool_calls.is_empty())
    {
        return Err(WorkerError::invalid(
            "every message is empty: send at least one message with content",
            Some("messages"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    /// Keep generating past end-of-generation tokens (benchmarks only).
    pub ignore_eos: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            seed: rand_seed(),
            ignore_eos: false,
        }
    }
}

fn rand_seed() -> u32 {
    // The low bits of a v4 uuid are random; good enough for a sampling seed.
    uuid::Uuid::new_v4().as_u128() as u32
}

impl Sampling {
    pub fn new(
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: Option<u32>,
    ) -> Result<Self, WorkerError> {
        let defaults = Self::default();
        let temperature = temperature.unwrap_or(defaults.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(WorkerError::invalid(
                format!("temperature must be between 0 and 2, got {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = top_p.unwrap_or(defaults.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(WorkerError::invalid(
                format!("top_p must be greater than 0 and at most 1, got {top_p}"),
                Some("top_p"),
            ));
        }
        Ok(Self {
            temperature,
            top_p,
            seed: seed.unwrap_or(defaults.seed),
            ignore_eos: false,
        })
    }
}

/// Characters of the last user message that a usage event carries.
pub const PROMPT_PREVIEW_CHARS: usize = 80;

/// The text of the last user message, cut to [`PROMPT_PREVIEW_CHARS`]
/// characters (never inside a character); empty without a user message.
pub fn prompt_preview(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| {
            m.content
                .trim()
                .chars()
                .take(PROMPT_PREVIEW_CHARS)
                .collect()
        })
        .unwrap_or_default()
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub request_id: RequestId,
    pub tenant: TenantId,
    /// `None`: a one-off request; its slot is not kept for the session.
    pub session: Option<SessionId>,
    pub user: Option<UserId>,
    pub gateway: Option<GatewayId>,
    pub model: String,
    pub adapter: Option<String>,
    pub adapter_scale: f32,
    pub messages: Vec<ChatMessage>,
    /// `None`: up to the end of the context window.
    pub max_tokens: Option<u32>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// The tenant's own context window, when it has one; the request gets
    /// the smaller of it and the model's.
    pub context_window: Option<u32>,
    /// The quota day the gateway admitted the request under (empty: none),
    /// passed on in the usage event.
    pub quota_day: String,
    /// Functions the model may call, and which it must.
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// Whose KV prefixes the request may reuse within its tenant (see
    /// [`crate::slots::Owner::scope`]).
    pub kv_scope: String,
}

impl GenerateParams {
    /// Whether the model's text is read for tool calls: tools were offered.
    pub fn reads_tool_calls(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

/// The span every log line of a request's handling carries: tenant, user,
/// request id and session.
pub fn span(params: &GenerateParams) -> tracing::Span {
    tracing::info_span!(
        "generate",
        tenant = %params.tenant,
        user = params.user.as_ref().map_or("", |u| u.as_str()),
        request_id = %params.request_id,
        session = params.session.as_ref().map_or("", |s| s.as_str()),
    )
}

pub fn validate_stop(stop: &[String]) -> Result<(), WorkerError> {
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(WorkerError::invalid(
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
            Some("stop"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(WorkerError::invalid(
            "stop sequences must not be empty",
            Some("stop"),
        ));
    }
    Ok(())
}

/// A forced call needs a tool to call.
pub fn check_tool_choice(tools: &[Tool], choice: &ToolChoice) -> Result<(), WorkerError> {
    let missing = match choice {
        ToolChoice::Required => tools.is_empty(),
        ToolChoice::Function(name) => !tools.iter().any(|t| &t.name == name),
        ToolChoice::Auto | ToolChoice::None => false,
    };
    if missing {
        return Err(WorkerError::invalid(
            "tool_choice names a call of a tool the request does not give",
            Some("tool_choice"),
        ));
    }
    Ok(())
}

fn optional_id<T>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, bulkhead_proto::IdError>,
    param: &'static str,
) -> Result<Option<T>, WorkerError> {
    if value.is_empty() {
        return Ok(None);
    }
    parse(value)
        .map(Some)
        .map_err(|e| WorkerError::invalid(e.to_string(), Some(param)))
}

impl TryFrom<pb::GenerateRequest> for GenerateParams {
    type Error = WorkerError;

    fn try_from(req: pb::GenerateRequest) -> Result<Self, WorkerError> {
        let request_id = optional_id(&req.request_id, |s| RequestId::new(s), "request_id")?
            .unwrap_or_else(RequestId::generate);
        let tenant = TenantId::new(req.tenant_id)
            .map_err(|e| WorkerError::invalid(e.to_string(), Some("tenant_id")))?;
        let messages = req
            .messages
            .into_iter()
            .map(ChatMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let tools = req
            .tools
            .iter()
            .map(Tool::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WorkerError::invalid(e, Some("tools")))?;
        let tool_choice = ToolChoice::from_wire(&req.tool_choice, &req.tool_choice_name)
            .map_err(|e| WorkerError::invalid(e, Some("tool_choice")))?;
        check_tool_choice(&tools, &tool_choice)?;
        validate_messages(&messages)?;
        validate_stop(&req.stop)?;
        let sampling = req.sampling.unwrap_or_default();
        let mut sampling = Sampling::new(sampling.temperature, sampling.top_p, sampling.seed)?;
        sampling.ignore_eos = req.ignore_eos;
        let adapter_scale = req.adapter_scale.unwrap_or(1.0);
        if !adapter_scale.is_finite() || !(0.0..=4.0).contains(&adapter_scale) {
            return Err(WorkerError::invalid(
                format!("adapter_scale must be between 0 and 4, got {adapter_scale}"),
                Some("adapter_scale"),
            ));
        }
        Ok(Self {
            request_id,
            tenant,
            session: optional_id(&req.session_id, |s| SessionId::new(s), "session_id")?,
            user: optional_id(&req.user_id, |s| UserId::new(s), "user_id")?,
            gateway: optional_id(&req.gateway_id, |s| GatewayId::new(s), "gateway_id")?,
            model: req.model,
            adapter: (!req.adapter.is_empty()).then_some(req.adapter),
            adapter_scale,
            messages,
            max_tokens: (req.max_tokens != 0).then_some(req.max_tokens),
            sampling,
            stop: req.stop,
            context_window: (req.context_window != 0).then_some(req.context_window),
            quota_day: req.quota_day,
            tools,
            tool_choice,
            kv_scope: req.kv_scope,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation or a stop sequence.
    Stop,
    /// `max_tokens` or the end of the context window.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub request_id: RequestId,
    pub event_id: EventId,
    pub time_to_first_token_ms: u64,
}

/// What the engine streams back for one request.
#[derive(Debug, Clone)]
pub enum Event {
    Delta(String),
    Finished(Finished),
    /// The engine failed this request; nothing more follows.
    Failed(WorkerError),
}

impl From<Usage> for pb::Usage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
        }
    }
}

impl From<Finished> for pb::Finished {
    fn from(f: Finished) -> Self {
        Self {
            finish_reason: f.finish_reason.as_str().to_owned(),
            usage: Some(f.usage.into()),
            request_id: f.request_id.to_string(),
            event_id: f.event_id.to_string(),
            time_to_first_token_ms: f.time_to_first_token_ms,
        }
    }
}

#[cfg(test)]
mod preview_tests {
    use super::*;

    #[test]
    fn the_preview_is_the_last_user_message_cut_on_a_char_boundary() {
        let msg = |role: &str, text: &str| ChatMessage::new(role, text).unwrap();
        let messages = vec![
            msg("system", "be brief"),
            msg("user", "first question"),
            msg("assistant", "an answer"),
            msg("user", "  second question "),
            msg("assistant", "another"),
        ];
        assert_eq!(prompt_preview(&messages), "second question");
        assert_eq!(prompt_preview(&[msg("system", "only")]), "");
        let long = "é".repeat(100);
        let cut = prompt_preview(&[msg("user", &long)]);
        assert_eq!(cut.chars().count(), PROMPT_PREVIEW_CHARS);
        assert_eq!(cut, "é".repeat(PROMPT_PREVIEW_CHARS));
    }
}
