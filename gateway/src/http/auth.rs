//! Who is calling: the tenant's API key (and `X-Tenant-ID`, which must agree),
//! the user and session headers, and the errors that name them.

use super::*;
use crate::i18n::Text;

/// The token of an `Authorization: Bearer <token>` header value (the scheme
/// in any case), if it has one.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
}

pub(super) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                GatewayError::bad_request(Text::new("header-not-ascii").arg("name", name), None)
            })
        })
        .transpose()
}

/// Step 1: the key names the tenant; `X-Tenant-ID`, if sent, must agree.
pub(super) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    if !state.directory.is_synced() {
        return Err(GatewayError::Unavailable(
            "the gateway is still loading tenants and keys from the control plane; retry in a moment".into(),
        ));
    }
    let key = header_str(headers, header::AUTHORIZATION.as_str())?
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| GatewayError::invalid_api_key(Text::new("no-api-key")))?;
    let caller = state
        .directory
        .authenticate(key)
        .ok_or_else(|| GatewayError::invalid_api_key(Text::new("invalid-api-key")))?;
    crate::i18n::set_tenant_locale(&caller.tenant.locale);
    if let Some(claimed) = header_str(headers, TENANT_HEADER)?
        && claimed != caller.tenant.id
    {
        return Err(GatewayError::Forbidden(
            Text::new("tenant-mismatch").arg("claimed", claimed),
        ));
    }
    Ok(caller)
}

/// The user a request acts as: a user's key's own user (a request naming
/// another gets 403 `user_mismatch`), else the one `X-User-ID` or the body's
/// `user` names, if any.
pub(super) fn user_id(
    caller: &Caller,
    headers: &HeaderMap,
    body: Option<&str>,
) -> Result<Option<UserId>, GatewayError> {
    let named = named_user(headers, body)?;
    match (&caller.user, named) {
        (Some(own), Some(other)) if *own != other => Err(GatewayError::Denied {
            message: Text::new("user-mismatch")
                .arg("own", own.as_str())
                .arg("other", other.as_str()),
            code: "user_mismatch",
            param: Some("user".into()),
        }),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, named) => Ok(named),
    }
}

fn named_user(headers: &HeaderMap, body: Option<&str>) -> Result<Option<UserId>, GatewayError> {
    match header_str(headers, USER_HEADER)? {
        Some(u) => UserId::new(u)
            .map(Some)
            .map_err(|e| GatewayError::bad_request(format!("header X-User-ID: {e}"), None)),
        None => body
            .map(UserId::new)
            .transpose()
            .map_err(|e| GatewayError::bad_request(e.to_string(), Some("user"))),
    }
}

pub(super) fn session_id(raw: &str) -> Result<SessionId, GatewayError> {
    SessionId::new(raw).map_err(|e| GatewayError::bad_request(e.to_string(), Some("session_id")))
}

/// The control plane's "not found" on a session call, as the caller reads it.
pub(super) fn not_found_as_session(e: GatewayError, id: &str) -> GatewayError {
    match e {
        GatewayError::NotFound { .. } => session_not_found(id),
        e => e,
    }
}

pub(super) fn session_not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: Text::new("session-not-found").arg("id", id),
        code: "session_not_found",
    }
}
