//! The session routes: `POST|GET /v1/sessions`, `GET
//! /v1/sessions/{id}/messages`, `DELETE /v1/sessions/{id}`, each scoped to
//! the caller's tenant (and user) by the control plane.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_proto::control as cp;
use serde::Deserialize;
use serde_json::json;

use super::{
    AppState, CONTROL_PLANE_DEADLINE, MemberMethod, S, authenticate, body_or_error,
    not_found_as_session, session_id, user_id,
};
use crate::directory::Caller;
use crate::error::GatewayError;

#[derive(Debug, Default, Deserialize)]
struct NewSession {
    #[serde(default, alias = "session_id")]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

fn session_json(s: &cp::Session) -> serde_json::Value {
    json!({
        "id": s.session_id,
        "object": "session",
        "title": s.title,
        "user": s.user_id,
        "created_at": s.created_at_ms / 1000,
        "updated_at": s.updated_at_ms / 1000,
        "turns": s.turns,
    })
}

/// Sends a control-plane call made for the caller, with the request path's
/// deadline.
pub(super) async fn for_caller<M: Clone, T>(
    state: &AppState,
    message: M,
    method: impl MemberMethod<M, T>,
) -> Result<T, GatewayError> {
    state
        .client
        .member()
        .send_for(CONTROL_PLANE_DEADLINE, message, method)
        .await
        .map_err(|s| GatewayError::from_control_plane(&s))
}

/// The caller of a route on session `id`: authenticated first, then the id
/// checked.
fn session_caller(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Caller, GatewayError> {
    let caller = authenticate(state, headers)?;
    session_id(id)?;
    Ok(caller)
}

/// [`for_caller`] on session `id`: the control plane's "not found" is that
/// session's.
async fn session_call<M: Clone, T>(
    state: &AppState,
    id: &str,
    message: M,
    method: impl MemberMethod<M, T>,
) -> Result<T, GatewayError> {
    for_caller(state, message, method)
        .await
        .map_err(|e| not_found_as_session(e, id))
}

/// A list as OpenAI writes one: `{"object": "list", "data": [...]}`.
pub(super) fn list_json<T>(items: &[T], to_json: fn(&T) -> serde_json::Value) -> Response {
    let data: Vec<_> = items.iter().map(to_json).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub(super) async fn create_session(
    State(state): S,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    state.throttle.take(&caller.tenant.id, "session")?;
    let body = body_or_error(body, state.max_body_bytes)?;
    let new: NewSession = if body.iter().all(u8::is_ascii_whitespace) {
        NewSession::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            GatewayError::bad_request(
                crate::i18n::Text::new("invalid-session-body").arg("detail", e),
                None,
            )
        })?
    };
    if let Some(id) = &new.id {
        session_id(id)?;
    }
    let user = user_id(&caller, &headers, None)?;
    let msg = cp::CreateSessionRequest {
        tenant_id: caller.tenant.id.clone(),
        session_id: new.id.unwrap_or_default(),
        title: new.title.unwrap_or_default(),
        user_id: user.map(|u| u.to_string()).unwrap_or_default(),
    };
    let session = for_caller(&state, msg, |mut c, req| async move {
        c.create_session(req).await
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(session_json(&session))).into_response())
}

pub(super) async fn list_sessions(
    State(state): S,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    // A user's key sees that user's sessions only.
    let msg = cp::ListSessionsRequest {
        tenant_id: caller.tenant.id.clone(),
        owner: caller.owner(),
    };
    let list = for_caller(&state, msg, |mut c, req| async move {
        c.list_sessions(req).await
    })
    .await?;
    Ok(list_json(&list.sessions, session_json))
}

pub(super) async fn session_messages(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let caller = session_caller(&state, &headers, &id)?;
    let msg = cp::GetTurnsRequest {
        tenant_id: caller.tenant.id.clone(),
        session_id: id.clone(),
        last: 0,
        owner: caller.owner(),
    };
    let turns = session_call(&state, &id, msg, |mut c, req| async move {
        c.get_turns(req).await
    })
    .await?;
    let data: Vec<_> = turns
        .turns
        .iter()
        .map(|t| json!({"role": t.role, "content": t.content, "created_at": t.at_ms / 1000}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "session_id": id, "data": data})).into_response())
}

pub(super) async fn delete_session(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let caller = session_caller(&state, &headers, &id)?;
    state.throttle.take(&caller.tenant.id, "session")?;
    let msg = cp::SessionRef {
        tenant_id: caller.tenant.id.clone(),
        session_id: id.clone(),
        owner: caller.owner(),
    };
    session_call(&state, &id, msg, |mut c, req| async move {
        c.delete_session(req).await
    })
    .await?;
    Ok(axum::Json(json!({"id": id, "object": "session.deleted", "deleted": true})).into_response())
}
