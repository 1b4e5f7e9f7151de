//! Extractors of the admin API: the operator's admin token, and JSON
//! bodies, queries and paths whose rejections answer as [`GatewayError`]s.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use bulkhead_client::ACTOR_METADATA;
use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::control::admin_client::AdminClient as Grpc;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

use super::*;

/// The caller: its token (forwarded, not checked here) and the actor the
/// audit trail records. Extracted first, so a request without a token is
/// refused before anything else about it is read.
pub(super) struct Admin {
    pub(super) client: ControlPlaneClient,
    pub(super) actor: AsciiMetadataValue,
}

impl FromRequestParts<Arc<AdminState>> for Admin {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, GatewayError> {
        let missing = || GatewayError::Unauthorized {
            message: "no admin token: send `Authorization: Bearer <admin token>`".into(),
            code: "missing_admin_token",
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(missing)?;
        let value = value.to_str().map_err(|_| GatewayError::Unauthorized {
            message: "the Authorization header is not ASCII; the admin token is wrong".into(),
            code: "invalid_admin_token",
        })?;
        let token = crate::http::bearer_token(value).ok_or_else(missing)?;
        let from = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "an unknown address".to_owned(), |c| c.0.ip().to_string());
        let actor = format!("gateway {} from {from}", state.gateway_id);
        let actor = MetadataValue::try_from(actor.as_str()).map_err(|_| {
            GatewayError::Upstream(format!("the actor {actor:?} is not valid metadata"))
        })?;
        Ok(Self {
            client: state.client.with_token(token.to_owned()),
            actor,
        })
    }
}

impl Admin {
    /// Sends `message` through `method` with the token and the actor.
    pub(super) async fn send<M, T, F, Fut>(&self, message: M, method: F) -> Result<T, GatewayError>
    where
        M: Clone,
        F: Fn(Grpc<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client
            .admin()
            .send(message, |c, mut req| {
                req.metadata_mut()
                    .insert(ACTOR_METADATA, self.actor.clone());
                method(c, req)
            })
            .await
            .map_err(|s| GatewayError::from_control_plane(&s))
    }
}

/// A JSON body; an empty body reads as `{}`. Any content type is accepted
/// (`curl -d` sends a form type); a body that does not parse is a 400 that
/// says what is wrong.
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<Arc<AdminState>> for JsonBody<T> {
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &Arc<AdminState>) -> Result<Self, GatewayError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| GatewayError::rejected(r.status(), "the request body", r.body_text()))?;
        parse_json(&bytes).map(Self)
    }
}

pub(super) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let param = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_owned());
        GatewayError::BadRequest {
            message: format!("the request body is not the JSON this route takes: {message}").into(),
            param,
            code: Some("invalid_json"),
        }
    })
}

/// A query string; unknown parameters are refused.
pub(super) struct QueryOf<T>(pub(super) T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<AdminState>> for QueryOf<T> {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, GatewayError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|r| GatewayError::rejected(r.status(), "the query string", r.body_text()))
    }
}

/// Path parameters.
pub(super) struct PathOf<T>(pub(super) T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<AdminState>> for PathOf<T> {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, GatewayError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|r| GatewayError::rejected(r.status(), "the path", r.body_text()))
    }
}

/// 200 with `body` as JSON (a proto message's derived serde, or a `Value`).
pub(super) fn ok(body: impl Serialize) -> Answer {
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

pub(super) fn created(body: impl Serialize) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}
