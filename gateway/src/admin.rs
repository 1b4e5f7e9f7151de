//! The admin HTTP API, `/admin/v1/...`: every call of the control plane's
//! `Admin` gRPC service as JSON over HTTP (and one route that
//! applies tenant config files, in YAML). `docs/admin-openapi.yaml` describes
//! it; a test holds that file's routes equal to [`ROUTES`], and the router is
//! built from the same table as [`ROUTES`].
//!
//! The gateway checks no admin token itself and keeps nothing between
//! requests: it forwards the caller's `Authorization: Bearer <token>` to the
//! control plane as the admin token (never with the gateway's credential, so the
//! control plane judges the caller's token alone), with `x-bulkhead-actor:
//! gateway <id> from <client ip>` so that the audit trail says where a change
//! came from. A request without a token is answered 401 here.
//!
//! Bodies and answers are the proto messages' derived serde (`proto/build.rs`),
//! with their field names (snake_case). Errors have the shape of the rest
//! of the gateway's errors, `{"error":{"message","type","param","code"}}`,
//! and control-plane statuses map to HTTP once, for both APIs, in
//! [`GatewayError::from_control_plane`]: Unauthenticated 401
//! (`invalid_admin_token`), PermissionDenied 403, InvalidArgument 400 (the
//! field at fault, from the status's metadata, as `param`), NotFound 404,
//! AlreadyExists and FailedPrecondition 409 (the control plane's code, such
//! as `tenant_exists` or `not_allowed`), Unavailable 503, anything else 502.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::GatewayId;

use crate::directory::Directory;
use crate::route::Workers;

mod bodies;
mod business;
mod extract;
mod monitor;
mod tenants;
mod usage;

use crate::error::GatewayError;
use bodies::*;
use business::*;
use extract::*;
use monitor::*;
use tenants::*;
use usage::*;

/// What the admin routes need: who this gateway is, a client of the control
/// plane whose connections the per-request clients share, and (for the live
/// monitor) the gateway's view of the workers.
pub struct AdminState {
    pub gateway_id: GatewayId,
    pub client: Arc<ControlPlaneClient>,
    pub max_body_bytes: usize,
    /// Workers and tenants as this gateway follows them, for the monitor.
    pub directory: Arc<Directory>,
    pub workers: Arc<Workers>,
    /// The model of tenants that name none.
    pub default_model: Option<String>,
}

type Answer = Result<Response, GatewayError>;

/// One table makes both [`ROUTES`] and the router, so they cannot drift.
macro_rules! admin_routes {
    ($( $method:ident $path:literal => $handler:ident; )*) => {
        /// Every admin route: (HTTP method, path template in OpenAPI form).
        pub const ROUTES: &[(&str, &str)] = &[$( (stringify!($method), $path) ),*];

        fn routes() -> Router<Arc<AdminState>> {
            Router::new()$( .route($path, on(MethodFilter::$method, $handler)) )*
        }
    };
}

admin_routes! {
    GET "/admin/v1/cluster" => cluster_status;
    POST "/admin/v1/cluster/nodes" => add_node;
    DELETE "/admin/v1/cluster/nodes/{id}" => remove_node;
    GET "/admin/v1/plans" => list_plans;
    GET "/admin/v1/tenants" => list_tenants;
    POST "/admin/v1/tenants" => create_tenant;
    GET "/admin/v1/tenants/{id}" => get_tenant;
    PATCH "/admin/v1/tenants/{id}" => update_tenant;
    DELETE "/admin/v1/tenants/{id}" => delete_tenant;
    POST "/admin/v1/tenant-configs" => apply_tenant_configs;
    GET "/admin/v1/tenants/{id}/keys" => list_keys;
    POST "/admin/v1/tenants/{id}/keys" => create_key;
    DELETE "/admin/v1/keys/{key_id}" => revoke_key;
    GET "/admin/v1/tenants/{id}/usage" => usage;
    GET "/admin/v1/tenants/{id}/usage/export" => export_usage;
    GET "/admin/v1/bursts" => list_bursts;
    POST "/admin/v1/tenants/{id}/bursts" => request_burst;
    POST "/admin/v1/bursts/{id}/approve" => approve_burst;
    POST "/admin/v1/bursts/{id}/deny" => deny_burst;
    GET "/admin/v1/webhooks" => list_webhooks;
    POST "/admin/v1/webhooks" => create_webhook;
    DELETE "/admin/v1/webhooks/{id}" => delete_webhook;
    GET "/admin/v1/webhooks/deliveries" => list_deliveries;
    GET "/admin/v1/snippets" => list_snippets;
    PUT "/admin/v1/tenants/{id}/snippets/{name}" => publish_snippet;
    DELETE "/admin/v1/tenants/{id}/snippets/{name}" => delete_snippet;
    GET "/admin/v1/shares" => list_shares;
    POST "/admin/v1/shares" => grant_share;
    DELETE "/admin/v1/shares" => revoke_share;
    GET "/admin/v1/tenants/{id}/audit" => list_audit;
    GET "/admin/v1/audit/verify" => verify_audit;
    GET "/admin/v1/monitor" => monitor;
}

/// The admin API's router, to merge with the OpenAI-style API's. The client
/// IP in the audit actor comes from `ConnectInfo<SocketAddr>` when the
/// server provides it.
pub fn router(state: AdminState) -> Router {
    let limit = state.max_body_bytes;
    routes()
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(state))
}

async fn method_not_allowed() -> Response {
    GatewayError::MethodNotAllowed.into_response()
}

/// The CSV columns of `GET .../usage?format=csv`, one row per day.
pub const USAGE_CSV_HEADER: &str =
    "day,prompt_tokens,completion_tokens,cached_tokens,requests,quota,avg_latency_ms";

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::http::StatusCode;

    use super::*;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one HTTP/1.1 request and returns the status and body.
    async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, Value) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn serve() -> SocketAddr {
        let state = AdminState {
            gateway_id: GatewayId::new("gw-test").unwrap(),
            // No control plane: only what the gateway answers itself is tested.
            client: Arc::new(ControlPlaneClient::new(Vec::new(), None)),
            max_body_bytes: 1 << 16,
            directory: Arc::new(Directory::default()),
            workers: Arc::new(Workers::new(bulkhead_proto::Credential::generate_with(
                "bkg_",
            ))),
            default_model: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// An OpenAPI path template as a concrete path.
    fn concrete(template: &str) -> String {
        template
            .replace("{id}", "1")
            .replace("{key_id}", "k")
            .replace("{name}", "n")
    }

    #[test]
    fn routes_are_unique_and_under_admin_v1() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, path) in ROUTES {
            assert!(path.starts_with("/admin/v1/"), "{path}");
            assert!(
                ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(method),
                "{method}"
            );
            assert!(seen.insert((method, path)), "{method} {path} listed twice");
        }
    }

    #[tokio::test]
    async fn every_listed_route_exists_and_wants_a_token() {
        let addr = serve().await;
        for (method, path) in ROUTES {
            let (status, body) = http(addr, method, &concrete(path), "").await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(
                body["error"]["code"], "missing_admin_token",
                "{method} {path}"
            );
            assert_eq!(body["error"]["type"], "authentication_error");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Bearer")
            );
            let (status, _) = http(
                addr,
                method,
                &concrete(path),
                "authorization: Basic abc\r\n",
            )
            .await;
            assert_eq!(status, 401, "{method} {path} with a Basic header");
        }
        // A method a path does not take is refused in the same shape.
        let (status, body) = http(addr, "PUT", "/admin/v1/plans", "").await;
        assert_eq!(status, 405);
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn bad_json_names_the_problem() {
        let e = parse_json::<NewTenant>(b"{\"id\": 3}").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = parse_json::<NewTenant>(b"{\"display_name\": \"x\"}").unwrap_err();
        assert_eq!(e.body()["error"]["param"], "id");
        let e = parse_json::<NewTenant>(b"{\"id\": \"a\", \"colour\": 1}").unwrap_err();
        assert_eq!(e.body()["error"]["param"], "colour");
        let e = parse_json::<NewTenant>(b"{not json").unwrap_err();
        assert_eq!(e.body()["error"]["code"], "invalid_json");
        // An empty body is an empty object.
        assert_eq!(parse_json::<BurstNote>(b"").unwrap().note, "");
    }
}
