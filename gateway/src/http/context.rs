//! A chat request made ready for a worker: validated, with the tenant's
//! system prompt, the session's recent turns and (once admitted) the shared
//! snippets it names, and an upper bound of its prompt.

use super::*;

/// An uploaded body, or the error that describes why there is none.
pub(super) fn body_or_error(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    match body {
        Ok(body) => Ok(body),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(GatewayError::too_large(limit))
        }
        Err(r) => Err(GatewayError::bad_request(r.body_text(), None)),
    }
}

/// A chat request, validated and with its context assembled.
pub(super) struct Prepared {
    pub(super) caller: Caller,
    pub(super) request: pb::GenerateRequest,
    /// The request's own messages, to append to the session afterwards.
    pub(super) new_turns: Vec<cp::Turn>,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// Upper bound of the prompt's tokens (exact when it had to be).
    pub(super) prompt_bound: u64,
    /// Whether the caller set max_tokens (else it may be lowered to fit).
    pub(super) explicit_max_tokens: bool,
    /// The snippets the user's messages name (`@shared:<name>`), resolved
    /// once the request is admitted, and where in the messages they go.
    pub(super) shared: Vec<String>,
    pub(super) shared_at: usize,
    /// The server-side tools the request asks for (allowed to the tenant),
    /// whose calls the gateway runs ([`super::server_tools`]).
    pub(super) server_tools: Vec<String>,
    /// The files the messages attach (`{"type": "file"}` parts): the
    /// inputs of the server-side tools' runs.
    pub(super) files: Vec<cp::FileInfo>,
}

pub(super) fn turn_role(role: &str) -> Option<&'static str> {
    match role {
        "system" | "developer" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    }
}

pub(super) async fn prepare(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Prepared, GatewayError> {
    let body = body_or_error(body, state.max_body_bytes)?;
    let req = ChatRequest::parse(&body).map_err(|e| GatewayError::bad_request(e, None))?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::bad_request(
            crate::i18n::Text::new("only-n-1"),
            Some("n"),
        ));
    }
    let tenant = Arc::clone(&caller.tenant);
    let model = tenant_model(state, &tenant)?;
    if !req.model.is_empty() && req.model != model {
        return Err(GatewayError::NotFound {
            message: crate::i18n::Text::new("model-not-found")
                .arg("asked", &req.model)
                .arg("model", &model),
            code: "model_not_found",
        });
    }
    if let Some(adapter) = req.adapter.as_deref().filter(|a| !a.is_empty())
        && adapter != tenant.adapter
    {
        return Err(GatewayError::NotFound {
            message: crate::i18n::Text::new("adapter-not-found").arg("adapter", adapter),
            code: "adapter_not_found",
        });
    }
    let max_tokens = req.max_tokens();
    if max_tokens == Some(0) {
        return Err(GatewayError::bad_request(
            crate::i18n::Text::new("max-tokens-zero"),
            Some("max_tokens"),
        ));
    }
    let user = user_id(&caller, headers, req.user.as_deref())?;
    let session = match header_str(headers, SESSION_HEADER)?.or(req.session_id.as_deref()) {
        Some(raw) => Some(session_id(raw)?),
        None => None,
    };
    let offered = req
        .tools()
        .map_err(|(e, field)| GatewayError::bad_request(e, Some(field)))?;
    let allowed = tenant
        .features
        .as_ref()
        .map(|f| f.tools.as_slice())
        .unwrap_or_default();
    if let Some(tool) = offered.server.iter().find(|t| !allowed.contains(t)) {
        return Err(GatewayError::Denied {
            message: crate::i18n::Text::new("tool-not-allowed")
                .arg("tool", tool)
                .arg("plan", &tenant.plan),
            code: "tool_not_allowed",
            param: Some("tools".into()),
        });
    }
    let mut tools = offered.tools;
    tools.extend(
        offered
            .server
            .iter()
            .filter_map(|t| bulkhead_proto::tools::server_tool(t)),
    );
    let (tool_choice, tool_choice_name) = offered.choice.to_wire();
    let mut new_turns = Vec::with_capacity(req.messages.len());
    let mut messages = Vec::new();
    let mut files: Vec<cp::FileInfo> = Vec::new();
    for m in &req.messages {
        let mut text = m
            .text()
            .map_err(|e| GatewayError::bad_request(e, Some("messages")))?;
        for id in m.file_ids() {
            let file = match files.iter().find(|f| f.file_id == id) {
                Some(f) => f.clone(),
                None => {
                    let got = super::files::fetch(state, &caller, id, false).await?;
                    let f = got.file.unwrap_or_default();
                    files.push(f.clone());
                    f
                }
            };
            text = text.replace(
                &openai::file_mark(id),
                &format!("[file {id}: {}, {} bytes]", file.filename, file.bytes),
            );
        }
        let calls = m
            .calls()
            .map_err(|e| GatewayError::bad_request(e, Some("messages")))?;
        if let Some(role) = turn_role(&m.role) {
            new_turns.push(cp::Turn {
                role: role.into(),
                content: text.clone(),
                ..Default::default()
            });
        }
        messages.push(pb::ChatMessage {
            role: m.role.clone(),
            content: text,
            tool_calls: calls.iter().map(pb::ToolCall::from).collect(),
            tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
        });
    }
    let limits = tenant.limits.unwrap_or_default();
    let mut context = Vec::new();
    if !tenant.system_prompt.is_empty()
        && !messages
            .iter()
            .any(|m| m.role == "system" || m.role == "developer")
    {
        context.push(pb::ChatMessage {
            role: "system".into(),
            content: tenant.system_prompt.clone(),
            ..Default::default()
        });
    }
    if let Some(session) = session.as_ref().filter(|_| limits.context_turns > 0) {
        let msg = cp::GetTurnsRequest {
            tenant_id: tenant.id.clone(),
            session_id: session.to_string(),
            last: limits.context_turns,
            owner: caller.owner(),
        };
        let turns = state
            .turn_reads
            .call(msg)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => session_not_found(session.as_str()),
                _ => GatewayError::from_control_plane(&s),
            })?;
        // A tool step's turn is for the session's readers; the model has
        // the answer that followed it.
        context.extend(
            turns
                .turns
                .into_iter()
                .filter(|t| t.role != "tool")
                .map(|t| pb::ChatMessage {
                    role: t.role,
                    content: t.content,
                    ..Default::default()
                }),
        );
    }
    let shared = shared_names(&messages);
    let shared_at = context.len();
    context.extend(messages);
    let tools: Vec<pb::Tool> = tools.iter().map(pb::Tool::from).collect();
    let prompt_bound = token_bound(&context) + tools_bound(&tools) + 16;
    let sampling = pb::Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed32(),
    };
    let request = pb::GenerateRequest {
        request_id: RequestId::generate().to_string(),
        tenant_id: tenant.id.clone(),
        session_id: session.map(|s| s.to_string()).unwrap_or_default(),
        kv_scope: if tenant
            .features
            .as_ref()
            .is_some_and(|f| f.kv_share_across_users)
        {
            String::new()
        } else {
            user.as_ref().map(ToString::to_string).unwrap_or_default()
        },
        user_id: user.map(|u| u.to_string()).unwrap_or_default(),
        model,
        adapter: tenant.adapter.clone(),
        adapter_scale: (!tenant.adapter.is_empty() && tenant.adapter_scale > 0.0)
            .then_some(tenant.adapter_scale),
        messages: context,
        max_tokens: max_tokens.unwrap_or_else(|| default_max_tokens(&limits, prompt_bound)),
        sampling: Some(sampling),
        stop: req.stop_sequences(),
        gateway_id: state.gateway_id.to_string(),
        ignore_eos: req.ignore_eos,
        context_window: limits.context_window,
        // Set once admitted: the day of the allowance it is reserved from.
        quota_day: String::new(),
        tools,
        tool_choice,
        tool_choice_name,
    };
    Ok(Prepared {
        caller,
        request,
        new_turns,
        stream: req.stream,
        include_usage: req.include_usage(),
        prompt_bound,
        explicit_max_tokens: max_tokens.is_some(),
        shared,
        shared_at,
        server_tools: offered.server,
        files,
    })
}

/// An upper bound of the tokens of `messages`: byte-level BPE spends at
/// least one byte a token, plus a few template tokens per message.
pub(super) fn token_bound(messages: &[pb::ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| {
            let calls: u64 = m
                .tool_calls
                .iter()
                .map(|c| (c.name.len() + c.arguments.len()) as u64 + 32)
                .sum();
            m.content.len() as u64 + m.role.len() as u64 + 8 + calls
        })
        .sum()
}

/// An upper bound of the tokens that offering `tools` adds: their JSON and
/// the instructions around it.
fn tools_bound(tools: &[pb::Tool]) -> u64 {
    if tools.is_empty() {
        return 0;
    }
    let own: u64 = tools
        .iter()
        .map(|t| (t.name.len() + t.description.len() + t.parameters_json.len()) as u64 + 64)
        .sum();
    own + 512
}

/// The snippet names the user's messages refer to, in order, once each.
pub(super) fn shared_names(messages: &[pb::ChatMessage]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in messages.iter().filter(|m| m.role == "user") {
        for name in bulkhead_client::references(&m.content) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The snippets of other tenants named `names` (`@shared:<name>`), as
/// system messages to put before the user's. The control plane checks the
/// grants and records each use and refusal in the audit trail; a snippet the
/// tenant may not read refuses the whole request (403).
pub(super) async fn shared_knowledge(
    state: &AppState,
    caller: &Caller,
    user_id: &str,
    names: Vec<String>,
) -> Result<Vec<pb::ChatMessage>, GatewayError> {
    state.throttle.take(&caller.tenant.id, "shared-snippet")?;
    let msg = cp::ResolveSharedRequest {
        tenant_id: caller.tenant.id.clone(),
        names,
        user_id: user_id.to_owned(),
    };
    let found = super::member_call_as(state, caller, msg, |mut c, req| async move {
        c.resolve_shared(req).await
    })
    .await
    .map_err(|s| match s.code() {
        tonic::Code::PermissionDenied => GatewayError::Denied {
            message: format!(
                "{}; its owner's administrator can share it with `bulkhead share grant`",
                s.message()
            )
            .into(),
            code: "shared_snippet_not_available",
            param: Some("messages".into()),
        },
        _ => GatewayError::from_control_plane(&s),
    })?;
    Ok(found
        .snippets
        .into_iter()
        .map(|s| pb::ChatMessage {
            role: "system".into(),
            content: format!(
                "Shared knowledge `{}` (from {}):\n{}",
                s.name, s.tenant_id, s.content
            ),
            ..Default::default()
        })
        .collect())
}

/// The completion budget of a request that names none: [`DEFAULT_MAX_TOKENS`],
/// or less when the tenant's context window leaves less room after the
/// prompt's upper bound (a prompt that may not fit at all keeps the default,
/// and the worker's exact count decides).
pub(super) fn default_max_tokens(limits: &cp::Limits, prompt_bound: u64) -> u32 {
    let room = u64::from(limits.context_window).saturating_sub(prompt_bound);
    if limits.context_window == 0 || room == 0 {
        return DEFAULT_MAX_TOKENS;
    }
    u32::try_from(room.min(u64::from(DEFAULT_MAX_TOKENS))).unwrap_or(DEFAULT_MAX_TOKENS)
}
