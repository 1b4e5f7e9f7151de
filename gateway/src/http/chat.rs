//! A chat request from start to end (DESIGN.md section 3): authenticated
//! and made ready ([`super::context`]), admitted and started on a worker
//! ([`super::admission`]), then answered streamed or whole
//! ([`super::answer`]), or, when it asks for server-side tools, through the
//! tool loop ([`super::server_tools`]).

use super::admission::admit_and_start;
use super::*;

pub(super) async fn chat_completions(
    State(state): S,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let prepared = match authenticate(&state, &headers) {
        Ok(caller) => {
            let tenant = caller.tenant.id.clone();
            prepare(&state, caller, &headers, body)
                .await
                .map_err(|e| (tenant, e))
        }
        Err(e) => Err((String::new(), e)),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err((tenant, e)) => {
            state.metrics.observe_request(
                &tenant,
                e.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            return e.into_response();
        }
    };
    let span = tracing::info_span!(
        "chat",
        tenant = %prepared.caller.tenant.id,
        user = %prepared.request.user_id,
        request_id = %prepared.request.request_id,
        session = %prepared.request.session_id,
    );
    let tenant = prepared.caller.tenant.id.clone();
    async move {
        match admit_and_generate(&state, prepared).await {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(status = e.status().as_u16(), error = %e, "request refused");
                state.metrics.observe_request(
                    &tenant,
                    e.status().as_u16(),
                    started.elapsed().as_secs_f64(),
                );
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

pub(super) async fn admit_and_generate(
    state: &Arc<AppState>,
    mut p: Prepared,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let (permit, stream) = admit_and_start(state, &mut p).await?;
    let outcome = Outcome {
        state: Arc::clone(state),
        tenant_id: p.caller.tenant.id.clone(),
        session_id: p.request.session_id.clone(),
        user_id: p.request.user_id.clone(),
        owner: p.caller.owner(),
        new_turns: std::mem::take(&mut p.new_turns),
        started,
    };
    if !p.server_tools.is_empty() {
        return super::server_tools::run(state, p, outcome, permit, stream).await;
    }
    let completion = openai::Completion::new(&p.request.request_id, &p.request.model);
    let reads_calls = !p.request.tools.is_empty() && p.request.tool_choice != "none";
    let reply = openai::Reply::new(completion, reads_calls);
    if p.stream {
        Ok(stream_answer(
            outcome,
            permit,
            stream,
            reply,
            p.include_usage,
            &p.request.request_id,
        ))
    } else {
        Ok(whole_answer(outcome, permit, stream, reply, &p.request.request_id).await)
    }
}
