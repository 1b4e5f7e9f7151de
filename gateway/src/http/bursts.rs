//! A tenant's burst requests: `POST /v1/burst_requests` files one for the
//! tenant's today with a reason, and `GET /v1/burst_requests` lists the
//! tenant's own with the operators' decisions. Operators approve or deny
//! them (`bulkhead burst approve|deny`, the admin API); each request sends
//! the `burst.requested` webhook event.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_proto::control as cp;
use serde::Deserialize;
use serde_json::json;

use super::sessions::{for_caller, list_json};
use super::{S, authenticate, body_or_error};
use crate::error::GatewayError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBurst {
    reason: String,
}

fn burst_json(b: &cp::Burst) -> serde_json::Value {
    let at = |ms: i64| (ms > 0).then_some(ms / 1000);
    json!({
        "id": b.burst_id,
        "object": "burst_request",
        "status": b.status,
        "day": b.day,
        "reason": b.reason,
        "percent": b.percent,
        "extra_tokens": b.extra_tokens,
        "created_at": at(b.requested_at_ms),
        "decided_at": at(b.decided_at_ms),
        "note": b.note,
    })
}

pub(super) async fn request_burst(
    State(state): S,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    if !caller.tenant.features.as_ref().is_some_and(|f| f.burst) {
        return Err(GatewayError::Denied {
            message: crate::i18n::Text::new("burst-not-in-plan").arg("plan", &caller.tenant.plan),
            code: "burst_not_in_plan",
            param: None,
        });
    }
    state.throttle.take(&caller.tenant.id, "burst request")?;
    let body = body_or_error(body, state.max_body_bytes)?;
    let new: NewBurst = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(
            crate::i18n::Text::new("invalid-burst-body").arg("detail", e),
            Some("reason"),
        )
    })?;
    let msg = cp::BurstRequest {
        tenant_id: caller.tenant.id.clone(),
        reason: new.reason,
    };
    let burst = super::member_call_as(&state, &caller, msg, |mut c, req| async move {
        c.request_burst(req).await
    })
    .await
    .map_err(|s| GatewayError::from_control_plane(&s))?;
    Ok((StatusCode::CREATED, axum::Json(burst_json(&burst))).into_response())
}

pub(super) async fn list_bursts(
    State(state): S,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let msg = cp::ListBurstsRequest {
        tenant_id: caller.tenant.id.clone(),
        status: String::new(),
    };
    let list = for_caller(
        &state,
        msg,
        |mut c, req| async move { c.list_bursts(req).await },
    )
    .await?;
    Ok(list_json(&list.bursts, burst_json))
}
