//! Server-side tools (DESIGN.md §13): for a request that asks for one
//! (`"tools": [{"type": "code_run"}]`) from a tenant allowed it, the
//! gateway runs the loop model → tool call → sandbox → result → model, up
//! to [`MAX_STEPS`] tool steps. Every tool runs in the sandbox:
//! `code_run` the model's Python, with the files the messages attach;
//! `file_parse` and `sql_query` the gateway's own programs (`tools/*.py`)
//! on one of the tenant's uploaded files ([`super::files`]), named by id or
//! name, read through the control plane with the caller's tenant and user.
//!
//! - Every model call is admitted and billed on its own, like any request:
//!   each step counts against the quota.
//! - Every tool run goes to the tenant's audit trail (`tool.run`): the tool,
//!   the SHA-256 of its arguments, its duration, how it ended, the bytes it
//!   gave out and the files it wrote, with the key that asked.
//! - The answer is the model's last one, with the usage of every step, and
//!   `tool_steps`: each run, with its output and its files (base64), so a
//!   client (the console) shows the steps and offers the files to download.
//!   A streamed request gets that answer as server-sent events once the
//!   loop is done.
//!
//! The model's calls of functions the client offered end the loop, as
//! `tool_calls` for the client to run, as without server-side tools.

use base64::Engine;
use bulkhead_proto::tools::ToolCall;

use super::answer::{Outcome, answer_headers, collect, usage_json};
use super::*;
use crate::quota::Permit;

/// Tool steps one request may take; past them the model answers.
pub const MAX_STEPS: usize = 4;
/// The most of a run's stdout and stderr given back to the model.
const RESULT_CHARS: usize = 4_000;

pub(super) async fn run(
    state: &Arc<AppState>,
    mut p: Prepared,
    mut outcome: Outcome,
    permit: Permit,
    stream: tonic::Streaming<pb::GenerateResponse>,
) -> Result<Response, GatewayError> {
    let sandbox = match &state.sandbox {
        Ok(s) => Arc::clone(s),
        Err(why) => {
            permit.refund();
            return Err(GatewayError::Unavailable(format!(
                "server-side tools cannot run on this gateway: {why}"
            )));
        }
    };
    let mut steps: Vec<Value> = Vec::new();
    let mut usage = [0u32; 3];
    // Each model call is a request of its own to the worker (its usage
    // event is billed once by its id); the answer keeps the first's id.
    let request_id = p.request.request_id.clone();
    // The server-side tool the request forces, if it does.
    let forced = (p.request.tool_choice == "function"
        && p.server_tools.contains(&p.request.tool_choice_name))
    .then(|| p.request.tool_choice_name.clone());
    let (mut permit, mut stream) = (permit, stream);
    loop {
        let completion = openai::Completion::new(&p.request.request_id, &p.request.model);
        let mut reply = openai::Reply::new(completion, true);
        let finished = match collect(&outcome, stream, &mut reply).await {
            Ok(f) => f,
            Err(e) => {
                outcome.observe(e.status().as_u16());
                return Err(e);
            }
        };
        let budget = permit.budget();
        outcome.settle_usage(permit, &finished);
        let u = finished.usage.unwrap_or_default();
        for (sum, n) in
            usage
                .iter_mut()
                .zip([u.prompt_tokens, u.completion_tokens, u.cached_tokens])
        {
            *sum = sum.saturating_add(n);
        }
        let mut body = reply.message(&finished.finish_reason, usage_json(&finished));
        let calls: Vec<ToolCall> = reply.calls().to_vec();
        let ours = !calls.is_empty() && calls.iter().all(|c| p.server_tools.contains(&c.name));
        if let Some(tool) = forced
            .as_ref()
            .filter(|_| steps.is_empty() && calls.is_empty())
        {
            // The model was made to call the tool but its call is not
            // whole (cut at max_tokens): say so rather than answer as if no
            // tool had been asked for.
            let why = format!(
                "the model's call of `{tool}` was not finished (finish_reason {}); nothing ran; raise max_tokens or ask again",
                finished.finish_reason
            );
            steps.push(
                json!({"tool": tool, "status": "error", "error": why, "code": reply.content()}),
            );
        }
        if !ours || steps.len() >= MAX_STEPS {
            body["id"] = json!(format!("chatcmpl-{request_id}"));
            body["usage"] = openai::usage(usage[0], usage[1], usage[2]);
            let kept = steps.iter().map(session_turn).collect();
            body["tool_steps"] = Value::Array(steps);
            outcome.save_turns(kept, reply.content()).await;
            outcome.observe(200);
            return Ok(answer(&p, &request_id, body, budget));
        }
        let asked = pb::ChatMessage {
            role: "assistant".into(),
            content: reply.content().to_owned(),
            tool_calls: calls.iter().map(pb::ToolCall::from).collect(),
            tool_call_id: String::new(),
        };
        p.prompt_bound += context::token_bound(std::slice::from_ref(&asked));
        p.request.messages.push(asked);
        for call in &calls {
            let (step, result) = run_call(state, &sandbox, &p, call).await;
            steps.push(step);
            let message = pb::ChatMessage {
                role: "tool".into(),
                content: result,
                tool_calls: Vec::new(),
                tool_call_id: call.id.clone(),
            };
            p.prompt_bound += context::token_bound(std::slice::from_ref(&message));
            p.request.messages.push(message);
        }
        // A forced call was made; the model now answers as it sees fit.
        p.request.tool_choice = "auto".into();
        p.request.tool_choice_name.clear();
        p.request.request_id = RequestId::generate().to_string();
        (permit, stream) = match admission::admit_and_start(state, &mut p).await {
            Ok(started) => started,
            Err(e) => {
                outcome.observe(e.status().as_u16());
                return Err(e);
            }
        };
    }
}

/// The file_parse tool's program, run in the sandbox.
const FILE_PARSE: &str = include_str!("../../tools/file_parse.py");
/// The sql_query tool's program, run in the sandbox.
const SQL_QUERY: &str = include_str!("../../tools/sql_query.py");
/// Where the tools' programs find their arguments.
const ARGS_FILE: &str = "bulkhead-args.json";
/// Rows sql_query gives back at most, and how long a query may run.
const SQL_MAX_ROWS: u32 = 200;
const SQL_TIMEOUT_S: u32 = 5;

/// Runs one call of a server-side tool in the sandbox.
async fn run_tool(
    state: &AppState,
    sandbox: &bulkhead_sandbox::Sandbox,
    p: &Prepared,
    call: &ToolCall,
    args: &Value,
) -> Result<bulkhead_sandbox::Outcome, String> {
    let text = |key: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the call gave no `{key}`"))
    };
    let (program, inputs) = match call.name.as_str() {
        "code_run" => {
            let code = text("code")?;
            let mut inputs = Vec::with_capacity(p.files.len());
            for f in &p.files {
                inputs.push(input(state, p, &f.file_id).await?);
            }
            return sandbox
                .run_python(code, &inputs)
                .await
                .map_err(|e| e.to_string());
        }
        "file_parse" => {
            let file = input(state, p, text("file")?).await?;
            let max_chars = args
                .get("max_chars")
                .and_then(Value::as_u64)
                .unwrap_or(20_000);
            let a = json!({"file": file.name, "max_chars": max_chars.clamp(100, 100_000)});
            (FILE_PARSE, vec![file, args_file(&a)])
        }
        "sql_query" => {
            let db = input(state, p, text("database")?).await?;
            let a = json!({
                "database": db.name,
                "query": text("query")?,
                "max_rows": SQL_MAX_ROWS,
                "timeout_s": SQL_TIMEOUT_S,
            });
            (SQL_QUERY, vec![db, args_file(&a)])
        }
        other => return Err(format!("`{other}` is not a server-side tool")),
    };
    sandbox
        .run_python(program, &inputs)
        .await
        .map_err(|e| e.to_string())
}

fn args_file(args: &Value) -> bulkhead_sandbox::File {
    bulkhead_sandbox::File {
        name: ARGS_FILE.into(),
        bytes: args.to_string().into_bytes(),
    }
}

/// One of the tenant's files as a run's input, by id (`file-…`) or by name
/// (the newest of that name), under its own name when that is a plain one.
async fn input(
    state: &AppState,
    p: &Prepared,
    id_or_name: &str,
) -> Result<bulkhead_sandbox::File, String> {
    let id = if id_or_name.starts_with("file-") {
        id_or_name.to_owned()
    } else {
        let msg = cp::FileListRequest {
            tenant_id: p.caller.tenant.id.clone(),
            owner: p.caller.owner(),
        };
        let list = super::member_call_as(state, &p.caller, msg, |mut c, req| async move {
            c.list_files(req).await
        })
        .await
        .map_err(|s| s.message().to_owned())?;
        list.files
            .iter()
            .rev()
            .find(|f| f.filename == id_or_name)
            .map(|f| f.file_id.clone())
            .ok_or_else(|| format!("no file named `{id_or_name}` was uploaded (POST /v1/files)"))?
    };
    let got = super::files::fetch(state, &p.caller, &id, true)
        .await
        .map_err(|e| e.to_string())?;
    let file = got.file.unwrap_or_default();
    let name = if bulkhead_sandbox::plain_name(&file.filename)
        && file.filename != "main.py"
        && file.filename != ARGS_FILE
    {
        file.filename
    } else {
        file.file_id
    };
    Ok(bulkhead_sandbox::File {
        name,
        bytes: got.content,
    })
}

/// Keeps a file a run wrote among the tenant's files (purpose
/// `tool_output`, the caller's user), so that it can be downloaded later
/// (`GET /v1/files/{id}/content`); its id, or why it was not kept (the
/// tenant's storage is full).
async fn keep_output(
    state: &AppState,
    p: &Prepared,
    file: &bulkhead_sandbox::File,
) -> Result<String, String> {
    let msg = cp::UploadFileRequest {
        tenant_id: p.caller.tenant.id.clone(),
        user_id: p.caller.owner(),
        filename: file.name.clone(),
        purpose: "tool_output".into(),
        content: file.bytes.clone(),
    };
    super::files::store(state, &p.caller, msg)
        .await
        .map(|f| f.file_id)
        .map_err(|e| e.to_string())
}

/// Runs one call in the sandbox and records it in the audit trail: the
/// step as the answer shows it, and the result the model reads.
async fn run_call(
    state: &AppState,
    sandbox: &bulkhead_sandbox::Sandbox,
    p: &Prepared,
    call: &ToolCall,
) -> (Value, String) {
    let args = call.arguments_value();
    let code = args.get("code").and_then(Value::as_str).unwrap_or_default();
    let hash = bulkhead_client::hash_secret(&call.arguments);
    let ran = run_tool(state, sandbox, p, call, &args).await;
    let (status, step, result, bytes_out, files, duration_ms) = match &ran {
        Ok(out) => {
            let status = match (out.limit, out.exit_code) {
                (Some(limit), _) => format!("limit {}", limit.as_str()),
                (None, Some(code)) => format!("exit {code}"),
                (None, None) => "killed".to_owned(),
            };
            let mut files: Vec<Value> = Vec::with_capacity(out.files.len());
            for f in &out.files {
                let mut file = json!({
                    "name": f.name,
                    "bytes": f.bytes.len(),
                    "content_base64": base64::engine::general_purpose::STANDARD.encode(&f.bytes),
                });
                match keep_output(state, p, f).await {
                    Ok(id) => file["file_id"] = json!(id),
                    Err(why) => file["not_kept"] = json!(why),
                }
                files.push(file);
            }
            let step = json!({
                "tool": call.name,
                "call_id": call.id,
                "arguments_sha256": hash,
                "arguments": args,
                "code": code,
                "status": status,
                "exit_code": out.exit_code,
                "limit": out.limit.map(|l| l.as_str()),
                "stdout": out.stdout,
                "stderr": out.stderr,
                "files": files,
                "duration_ms": out.duration.as_millis(),
            });
            let names: Vec<&str> = out.files.iter().map(|f| f.name.as_str()).collect();
            let result = json!({
                "status": status,
                "stdout": clip(&out.stdout),
                "stderr": clip(&out.stderr),
                "files_for_the_user": names,
            });
            let bytes_out = out.stdout.len()
                + out.stderr.len()
                + out.files.iter().map(|f| f.bytes.len()).sum::<usize>();
            (
                status,
                step,
                result.to_string(),
                bytes_out as u64,
                names.iter().map(|n| (*n).to_owned()).collect(),
                u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
            )
        }
        Err(why) => {
            let step = json!({"tool": call.name, "call_id": call.id, "arguments": args, "code": code, "status": "error", "error": why});
            let result = json!({"error": why}).to_string();
            ("error".to_owned(), step, result, 0, Vec::new(), 0)
        }
    };
    let record = cp::ToolStep {
        tenant_id: p.caller.tenant.id.clone(),
        user_id: p.request.user_id.clone(),
        tool: call.name.clone(),
        arguments_sha256: hash,
        duration_ms,
        status,
        bytes_out,
        files,
    };
    let recorded = super::member_call_as(state, &p.caller, record, |mut c, req| async move {
        c.record_tool_step(req).await
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, tool = %call.name, "a tool step could not be written to the audit trail");
    }
    (step, result)
}

/// The loop's last answer, whole or as server-sent events.
fn answer(p: &Prepared, request_id: &str, body: Value, budget: crate::quota::Budget) -> Response {
    let mut response = if p.stream {
        let completion = openai::Completion::new(request_id, &p.request.model);
        let message = &body["choices"][0]["message"];
        let mut events = vec![completion.role_chunk()];
        let mut steps = completion.chunk(json!({}), None);
        steps["choices"] = json!([]);
        steps["tool_steps"] = body["tool_steps"].clone();
        events.push(steps);
        if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
            events.push(completion.text_chunk(text));
        }
        if let Some(calls) = message["tool_calls"].as_array() {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.clone();
                    c["index"] = json!(i);
                    c
                })
                .collect();
            events.push(completion.chunk(json!({"tool_calls": indexed}), None));
        }
        let finish = body["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or("stop");
        events.extend(completion.final_chunks(finish, body["usage"].clone(), p.include_usage));
        let sse: Vec<Result<axum::response::sse::Event, std::convert::Infallible>> = events
            .into_iter()
            .map(|e| Ok(axum::response::sse::Event::default().data(e.to_string())))
            .chain(std::iter::once(Ok(
                axum::response::sse::Event::default().data("[DONE]")
            )))
            .collect();
        axum::response::sse::Sse::new(futures::stream::iter(sse)).into_response()
    } else {
        axum::Json(body).into_response()
    };
    answer_headers(response.headers_mut(), request_id, budget);
    response
}

/// A step as the session keeps it (a `tool` turn): what the console shows
/// after a reload, without the files' content, which stays in the tenant's
/// files under each file's `file_id`.
fn session_turn(step: &Value) -> cp::Turn {
    let mut kept = step.clone();
    if let Some(files) = kept.get_mut("files").and_then(Value::as_array_mut) {
        for f in files {
            if let Some(f) = f.as_object_mut() {
                f.remove("content_base64");
            }
        }
    }
    for key in ["stdout", "stderr"] {
        if let Some(text) = kept.get(key).and_then(Value::as_str) {
            kept[key] = json!(clip(text));
        }
    }
    cp::Turn {
        role: "tool".into(),
        content: kept.to_string(),
        ..Default::default()
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() <= RESULT_CHARS {
        return s.to_owned();
    }
    let cut: String = s.chars().take(RESULT_CHARS).collect();
    format!("{cut}… (cut at {RESULT_CHARS} characters)")
}
