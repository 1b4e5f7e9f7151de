//! OpenAI's chat-completion wire format, as far as bulkhead speaks it: the
//! request both the gateway and the worker's own HTTP API accept, and the
//! response, chunk, usage and error objects they answer with. Unknown OpenAI
//! fields are ignored, as OpenAI-compatible servers do, so the official SDKs
//! work unchanged.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::tools::{CallParser, Piece, ToolCall};

/// An OpenAI chat completion request, plus bulkhead's `adapter`,
/// `adapter_scale` and `session_id`, and `ignore_eos` (as vLLM and
/// llama-server take it: generate to `max_tokens` past end-of-sequence).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Vec<RawMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub n: Option<u32>,
    pub adapter: Option<String>,
    pub adapter_scale: Option<f32>,
    pub session_id: Option<String>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Functions the model may call: see [`crate::tools`].
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
}

impl ChatRequest {
    /// Parses a request body; the error is a message for the caller.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        std::str::from_utf8(body)
            .map_err(|e| format!("the request body is not valid UTF-8: {e}"))?;
        serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not a valid chat completion request: {e}"))
    }

    /// `max_completion_tokens`, or the older `max_tokens`.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    pub fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// The request's tools and tool choice, checked; the error names its
    /// field.
    pub fn tools(&self) -> Result<crate::tools::Offered, (String, &'static str)> {
        crate::tools::parse(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    /// The seed as llama.cpp takes it (OpenAI seeds are 64-bit).
    pub fn seed32(&self) -> Option<u32> {
        self.seed.map(|s| (s as u64 & u64::from(u32::MAX)) as u32)
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant message's calls, as the client got them.
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl RawMessage {
    /// The message's tool calls, checked.
    pub fn calls(&self) -> Result<Vec<ToolCall>, String> {
        self.tool_calls
            .iter()
            .flatten()
            .map(ToolCall::from_openai)
            .collect()
    }

    /// The message's text; text parts are supported, and file parts
    /// (`{"type": "file", "file": {"file_id": "file-…"}}`, a file uploaded
    /// with `POST /v1/files`), which stand in the text as [`file_mark`].
    pub fn text(&self) -> Result<String, String> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(text)) => Ok(text.clone()),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text, part.file_id()) {
                        ("text", Some(t), _) => text.push_str(t),
                        ("file", _, Some(id)) => text.push_str(&file_mark(id)),
                        ("file", _, None) => {
                            return Err(
                                "a file content part needs `file.file_id` (upload the file with POST /v1/files first)"
                                    .into(),
                            );
                        }
                        (kind, _, _) => {
                            return Err(format!(
                                "content part of type {kind:?} is not supported: only text and file parts are"
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }

    /// The ids of the files the message's content parts attach.
    pub fn file_ids(&self) -> Vec<&str> {
        match &self.content {
            Some(Content::Parts(parts)) => parts.iter().filter_map(ContentPart::file_id).collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub file: Option<FilePart>,
}

impl ContentPart {
    fn file_id(&self) -> Option<&str> {
        self.file
            .as_ref()
            .and_then(|f| f.file_id.as_deref())
            .filter(|_| self.kind == "file")
    }
}

/// A file content part's `file`.
#[derive(Debug, Deserialize)]
pub struct FilePart {
    pub file_id: Option<String>,
}

/// How an attached file stands in a message's text until the gateway
/// names it: `[file file-…]`.
pub fn file_mark(file_id: &str) -> String {
    format!("[file {file_id}]")
}

/// OpenAI's `finish_reason` for bulkhead's ("cancelled" reads as "stop").
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "length" => "length",
        "tool_calls" => "tool_calls",
        _ => "stop",
    }
}

/// The `usage` object.
pub fn usage(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

/// The error object: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    crate::clock::now_secs()
}

/// Builds the objects of one completion: the whole answer, or its stream of
/// chunks.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl Completion {
    pub fn new(request_id: &str, model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{request_id}"),
            model: model.to_owned(),
            created: unix_now(),
        }
    }

    /// The non-streamed answer.
    pub fn message(&self, text: &str, finish: &str, usage: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(finish),
            }],
            "usage": usage,
        })
    }

    pub fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish.map(finish_reason)}],
        })
    }

    /// The first chunk of a stream.
    pub fn role_chunk(&self) -> Value {
        self.chunk(json!({"role": "assistant", "content": ""}), None)
    }

    pub fn text_chunk(&self, text: &str) -> Value {
        self.chunk(json!({"content": text}), None)
    }

    /// The chunks that end a stream: the finish reason and, when asked for
    /// with `stream_options.include_usage`, OpenAI's usage-only chunk. So
    /// that every stream ends with the exact usage, the finish chunk carries
    /// it when the usage-only chunk is not sent (never both: a client that
    /// adds usage over chunks must not count it twice).
    pub fn final_chunks(&self, finish: &str, usage: Value, include_usage: bool) -> Vec<Value> {
        let mut last = self.chunk(json!({}), Some(finish));
        if !include_usage {
            last["usage"] = usage.clone();
        }
        let mut out = vec![last];
        if include_usage {
            let mut usage_chunk = self.chunk(json!({}), None);
            usage_chunk["choices"] = json!([]);
            usage_chunk["usage"] = usage;
            out.push(usage_chunk);
        }
        out
    }
}

/// One answer as it is given out, whole or streamed: the model's text, read
/// for tool calls when the request offered tools. Both front ends (the
/// gateway and the worker's own API) answer through it.
#[derive(Debug)]
pub struct Reply {
    completion: Completion,
    parser: Option<CallParser>,
    /// The text given out as content.
    content: String,
    calls: Vec<ToolCall>,
}

impl Reply {
    /// `tools`: whether the model's text is read for tool calls.
    pub fn new(completion: Completion, tools: bool) -> Self {
        let parser = tools.then(|| CallParser::new(completion.id.trim_start_matches("chatcmpl-")));
        Self {
            completion,
            parser,
            content: String::new(),
            calls: Vec::new(),
        }
    }

    /// The first chunk of a stream.
    pub fn role_chunk(&self) -> Value {
        self.completion.role_chunk()
    }

    /// The text given out as content so far (what a session keeps).
    pub fn content(&self) -> &str {
        &self.content
    }

    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    fn take(&mut self, pieces: Vec<Piece>) -> Vec<Value> {
        let mut chunks = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => {
                    self.content.push_str(&text);
                    chunks.push(self.completion.text_chunk(&text));
                }
                Piece::Call(call) => {
                    let index = self.calls.len();
                    // As OpenAI streams a call: id and name, then the arguments.
                    chunks.push(self.completion.chunk(
                        json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": ""}}]}),
                        None,
                    ));
                    chunks.push(self.completion.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}),
                        None,
                    ));
                    self.calls.push(call);
                }
            }
        }
        chunks
    }

    /// The chunks a piece of the model's text makes.
    pub fn delta(&mut self, text: &str) -> Vec<Value> {
        match self.parser.as_mut() {
            None => self.take(vec![Piece::Text(text.to_owned())]),
            Some(p) => {
                let pieces = p.feed(text);
                self.take(pieces)
            }
        }
    }

    /// Reads what the parser held back; the finish reason becomes
    /// `tool_calls` when the model called a tool.
    fn flush(&mut self, finish: &str) -> (Vec<Value>, &'static str) {
        let pieces = self
            .parser
            .as_mut()
            .map(CallParser::finish)
            .unwrap_or_default();
        let chunks = self.take(pieces);
        let finish = if !self.calls.is_empty() && finish != "length" {
            "tool_calls"
        } else {
            finish_reason(finish)
        };
        (chunks, finish)
    }

    /// The chunks that end a stream: what was held back, then
    /// [`Completion::final_chunks`].
    pub fn final_chunks(&mut self, finish: &str, usage: Value, include_usage: bool) -> Vec<Value> {
        let (mut chunks, finish) = self.flush(finish);
        chunks.extend(self.completion.final_chunks(finish, usage, include_usage));
        chunks
    }

    /// The whole answer, once the model's text has been given to
    /// [`Self::delta`].
    pub fn message(&mut self, finish: &str, usage: Value) -> Value {
        let (_, finish) = self.flush(finish);
        let mut body = self.completion.message(&self.content, finish, usage);
        if !self.calls.is_empty() {
            let message = &mut body["choices"][0]["message"];
            message["tool_calls"] = self.calls.iter().map(ToolCall::to_openai).collect();
            if self.content.trim().is_empty() {
                message["content"] = Value::Null;
            }
        }
        body
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn message() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            crate::fuzz::object_with(&["role", "content", "name", "tool_call_id"]),
            (".{0,12}", ".{0,40}")
                .prop_map(|(role, content)| json!({"role": role, "content": content})),
        ]
    }

    fn request() -> impl Strategy<Value = serde_json::Value> {
        (
            crate::fuzz::object_with(&[
                "model",
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "seed",
                "stop",
                "stream",
                "stream_options",
                "user",
                "n",
                "adapter",
                "adapter_scale",
                "session_id",
                "ignore_eos",
                "tools",
                "tool_choice",
            ]),
            prop::collection::vec(message(), 0..4),
        )
            .prop_map(|(mut object, messages)| {
                object["messages"] = serde_json::Value::Array(messages);
                object
            })
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any body: a request, or an error that says what is wrong; never a panic.
        #[test]
        fn fuzz_chat_request_parser(body in crate::fuzz::body(request())) {
            match ChatRequest::parse(&body) {
                Ok(req) => {
                    let _ = (req.max_tokens(), req.include_usage(), req.stop_sequences(), req.seed32());
                    if let Err((e, field)) = req.tools() {
                        prop_assert!(!e.is_empty() && field.starts_with("tool"));
                    }
                    for m in &req.messages {
                        if let Err(e) = m.calls() {
                            prop_assert!(!e.is_empty());
                        }
                        if let Err(e) = m.text() {
                            prop_assert!(!e.is_empty());
                        }
                    }
                }
                Err(e) => prop_assert!(e.starts_with("the request body"), "{e}"),
            }
        }
    }
}
