//! The cluster and plans, tenants, tenant config files and API keys.

use axum::body::Bytes;
use bulkhead_proto::control as pb;

use super::*;

/// `ClusterStatus` is open on the control plane; this route is not, so the
/// token is checked first with a cheap admin read.
pub(super) async fn cluster_status(admin: Admin) -> Answer {
    admin
        .send(pb::ListPlansRequest {}, |mut c, r| async move {
            c.list_plans(r).await
        })
        .await?;
    let s = admin
        .client
        .cluster()
        .send(pb::ClusterStatusRequest {}, |mut c, r| async move {
            c.cluster_status(r).await
        })
        .await
        .map_err(|s| GatewayError::from_control_plane(&s))?;
    ok(s)
}

pub(super) async fn add_node(admin: Admin, JsonBody(b): JsonBody<NewNode>) -> Answer {
    let s = admin
        .send(
            pb::AddNodeRequest {
                id: b.id,
                addr: b.addr,
            },
            |mut c, r| async move { c.add_node(r).await },
        )
        .await?;
    ok(s)
}

pub(super) async fn remove_node(admin: Admin, PathOf(id): PathOf<u64>) -> Answer {
    let ask = pb::RemoveNodeRequest { id };
    ok(admin
        .send(ask, |mut c, r| async move { c.remove_node(r).await })
        .await?)
}

pub(super) async fn list_plans(admin: Admin) -> Answer {
    let ask = pb::ListPlansRequest {};
    ok(admin
        .send(ask, |mut c, r| async move { c.list_plans(r).await })
        .await?)
}

pub(super) async fn list_tenants(admin: Admin) -> Answer {
    let ask = pb::ListTenantsRequest {};
    ok(admin
        .send(ask, |mut c, r| async move { c.list_tenants(r).await })
        .await?)
}

pub(super) async fn create_tenant(admin: Admin, JsonBody(b): JsonBody<NewTenant>) -> Answer {
    let tenant = pb::Tenant {
        id: b.id,
        display_name: b.display_name,
        plan: b.plan,
        limits: Some(b.limits.unwrap_or_default()),
        model: b.model,
        adapter: b.adapter,
        adapter_scale: b.adapter_scale,
        system_prompt: b.system_prompt,
        welcome_message: b.welcome_message,
        quick_prompts: b.quick_prompts,
        time_zone: b.time_zone,
        knowledge_share: b.knowledge_share,
        locale: b.locale,
        feature_overrides: b.feature_overrides,
        ..Default::default()
    };
    created(
        admin
            .send(tenant, |mut c, r| async move { c.create_tenant(r).await })
            .await?,
    )
}

pub(super) async fn get_tenant(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let ask = pb::TenantRef { id };
    ok(admin
        .send(ask, |mut c, r| async move { c.get_tenant(r).await })
        .await?)
}

pub(super) async fn update_tenant(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> Answer {
    if let Some(other) = b.id.as_ref().filter(|other| **other != id) {
        return Err(GatewayError::bad_request(
            format!("id: the body names tenant {other:?} but the path names {id:?}"),
            Some("id"),
        ));
    }
    let patch = pb::TenantPatch {
        id,
        display_name: b.display_name,
        plan: b.plan,
        daily_tokens: b.daily_tokens,
        max_concurrent: b.max_concurrent,
        max_request_tokens: b.max_request_tokens,
        context_window: b.context_window,
        context_turns: b.context_turns,
        model: b.model,
        adapter: b.adapter,
        adapter_scale: b.adapter_scale,
        system_prompt: b.system_prompt,
        welcome_message: b.welcome_message,
        set_quick_prompts: b.quick_prompts.is_some(),
        quick_prompts: b.quick_prompts.unwrap_or_default(),
        time_zone: b.time_zone,
        knowledge_share: b.knowledge_share,
        locale: b.locale,
        features: b.features,
    };
    ok(admin
        .send(patch, |mut c, r| async move { c.update_tenant(r).await })
        .await?)
}

pub(super) async fn delete_tenant(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let ask = pb::TenantRef { id };
    ok(admin
        .send(ask, |mut c, r| async move { c.delete_tenant(r).await })
        .await?)
}

/// Tenant config files (YAML, one or more `---` documents), applied all or
/// nothing. `?source=` names them in error messages (default `request`).
pub(super) async fn apply_tenant_configs(
    admin: Admin,
    QueryOf(q): QueryOf<ConfigQuery>,
    body: Bytes,
) -> Answer {
    let source = q.source.unwrap_or_else(|| "request".to_owned());
    let text = std::str::from_utf8(&body)
        .map_err(|_| GatewayError::bad_request("the request body is not UTF-8 text", None))?;
    if text.trim().is_empty() {
        return Err(GatewayError::bad_request(
            "the request body is empty; send one or more tenant configs in YAML",
            None,
        ));
    }
    let configs = bulkhead_client::tenant_config::parse(&source, text).map_err(|e| {
        GatewayError::BadRequest {
            message: e.to_string().into(),
            param: None,
            code: Some("invalid_config"),
        }
    })?;
    let reply = admin
        .send(pb::ApplyTenantsRequest { configs }, |mut c, r| async move {
            c.apply_tenants(r).await
        })
        .await
        .map_err(|e| match e {
            // The message starts with the source, not a field of this body.
            GatewayError::BadRequest { message, code, .. } => GatewayError::BadRequest {
                message,
                param: None,
                code,
            },
            e => e,
        })?;
    ok(reply)
}

pub(super) async fn list_keys(admin: Admin, PathOf(id): PathOf<String>) -> Answer {
    let ask = pb::TenantRef { id };
    ok(admin
        .send(ask, |mut c, r| async move { c.list_keys(r).await })
        .await?)
}

pub(super) async fn create_key(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    JsonBody(b): JsonBody<NewKey>,
) -> Answer {
    let k = admin
        .send(
            pb::CreateKeyRequest {
                tenant_id,
                name: b.name,
                user_id: b.user_id,
            },
            |mut c, r| async move { c.create_key(r).await },
        )
        .await?;
    created(k)
}

pub(super) async fn revoke_key(admin: Admin, PathOf(key_id): PathOf<String>) -> Answer {
    let ask = pb::RevokeKeyRequest { key_id };
    ok(admin
        .send(ask, |mut c, r| async move { c.revoke_key(r).await })
        .await?)
}
