//! Admission of a chat request: the request-token limit, the tenant's quota
//! and concurrency, the `@shared:` snippets it may then read, and the worker
//! that takes it.

use super::*;
use crate::quota::Permit;

/// Enforces `max_request_tokens`: with the cheap upper bound when it fits,
/// else with the exact count from a worker. Returns the tokens to reserve.
pub(super) async fn fit_request(
    state: &AppState,
    p: &mut Prepared,
    ranked: &[cp::WorkerInfo],
) -> Result<u64, GatewayError> {
    let limit = u64::from(
        p.caller
            .tenant
            .limits
            .as_ref()
            .map_or(0, |l| l.max_request_tokens),
    );
    let max_tokens = u64::from(p.request.max_tokens);
    if limit == 0 || p.prompt_bound + max_tokens <= limit {
        return Ok(p.prompt_bound + max_tokens);
    }
    let counted = state
        .workers
        .count_tokens(
            ranked,
            &pb::CountTokensRequest {
                model: p.request.model.clone(),
                messages: p.request.messages.clone(),
            },
        )
        .await
        .map_err(|s| GatewayError::from_worker(&s))?;
    let prompt = u64::from(counted.prompt_tokens);
    p.prompt_bound = prompt;
    if prompt + max_tokens <= limit {
        return Ok(prompt + max_tokens);
    }
    if !p.explicit_max_tokens && prompt < limit {
        p.request.max_tokens = u32::try_from(limit - prompt).unwrap_or(u32::MAX);
        return Ok(limit);
    }
    Err(GatewayError::BadRequest {
        message: crate::i18n::Text::new("request-token-limit")
            .arg("need", prompt + max_tokens)
            .arg("prompt", prompt)
            .arg("max_tokens", max_tokens)
            .arg("limit", limit),
        param: Some("max_tokens".into()),
        code: Some("request_token_limit_exceeded"),
    })
}

/// Admits a request against the tenant's limits and starts it on the first
/// worker that takes it: the reservation and the worker's stream.
pub(super) async fn admit_and_start(
    state: &Arc<AppState>,
    p: &mut Prepared,
) -> Result<(Permit, tonic::Streaming<pb::GenerateResponse>), GatewayError> {
    let tenant = Arc::clone(&p.caller.tenant);
    let affinity = if p.request.session_id.is_empty() {
        p.request.user_id.clone()
    } else {
        p.request.session_id.clone()
    };
    let ranked = rank(
        &tenant.id,
        &affinity,
        state
            .directory
            .workers_for(&p.request.model, &p.request.adapter),
    );
    if ranked.is_empty() {
        let model = p.request.model.clone();
        return Err(match state.directory.loading(&model) {
            Some(progress) => GatewayError::ModelLoading { model, progress },
            None => GatewayError::Unavailable(format!(
                "no worker serves the model `{model}` right now; retry shortly"
            )),
        });
    }
    let need = fit_request(state, p, &ranked).await?;
    let mut permit = state.quotas.admit(&tenant, need).await?;
    if !p.shared.is_empty() {
        // `@shared:` is resolved (an audited Raft write) only for a request
        // the tenant's quota admits; with the snippets in, it is admitted
        // again for its new size.
        let names = std::mem::take(&mut p.shared);
        let snippets = match shared_knowledge(state, &p.caller, &p.request.user_id, names).await {
            Ok(snippets) => snippets,
            Err(e) => {
                permit.refund();
                return Err(e);
            }
        };
        p.prompt_bound += token_bound(&snippets);
        p.request
            .messages
            .splice(p.shared_at..p.shared_at, snippets);
        permit.refund();
        let need = fit_request(state, p, &ranked).await?;
        permit = state.quotas.admit(&tenant, need).await?;
    }
    // The usage is charged to the day the tokens were reserved from.
    p.request.quota_day = permit.day().to_owned();
    let (stream, worker, failovers) = match state.workers.generate(&ranked, &p.request).await {
        Ok(started) => started,
        Err(status) => {
            permit.refund();
            return Err(GatewayError::from_worker(&status));
        }
    };
    state.metrics.worker_failovers.inc_by(u64::from(failovers));
    tracing::debug!(worker = %worker, "routed");
    Ok((permit, stream))
}
