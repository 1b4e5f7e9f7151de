//! Bursts, webhooks, knowledge sharing and the audit trail.

use axum::body::Bytes;
use bulkhead_proto::control as pb;

use super::*;

pub(super) async fn list_bursts(admin: Admin, QueryOf(q): QueryOf<BurstFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListBurstsRequest {
                tenant_id: q.tenant_id,
                status: q.status,
            },
            |mut c, r| async move { c.list_bursts(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn request_burst(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    JsonBody(b): JsonBody<BurstAsk>,
) -> Answer {
    let burst = admin
        .send(
            pb::BurstRequest {
                tenant_id,
                reason: b.reason,
            },
            |mut c, r| async move { c.request_burst(r).await },
        )
        .await?;
    created(burst)
}

pub(super) async fn decide_burst(
    admin: Admin,
    burst_id: String,
    approve: bool,
    note: String,
) -> Answer {
    let burst = admin
        .send(
            pb::BurstDecision {
                burst_id,
                approve,
                note,
            },
            |mut c, r| async move { c.decide_burst(r).await },
        )
        .await?;
    ok(burst)
}

pub(super) async fn approve_burst(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<BurstNote>,
) -> Answer {
    decide_burst(admin, id, true, b.note).await
}

pub(super) async fn deny_burst(
    admin: Admin,
    PathOf(id): PathOf<String>,
    JsonBody(b): JsonBody<BurstNote>,
) -> Answer {
    decide_burst(admin, id, false, b.note).await
}

pub(super) async fn list_webhooks(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListWebhooksRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_webhooks(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn create_webhook(admin: Admin, JsonBody(b): JsonBody<NewWebhook>) -> Answer {
    let w = admin
        .send(
            pb::CreateWebhookRequest {
                tenant_id: b.tenant_id,
                url: b.url,
                events: b.events,
                secret: b.secret,
            },
            |mut c, r| async move { c.create_webhook(r).await },
        )
        .await?;
    created(w)
}

pub(super) async fn delete_webhook(admin: Admin, PathOf(webhook_id): PathOf<String>) -> Answer {
    let w = admin
        .send(pb::WebhookRef { webhook_id }, |mut c, r| async move {
            c.delete_webhook(r).await
        })
        .await?;
    ok(w)
}

pub(super) async fn list_deliveries(admin: Admin, QueryOf(q): QueryOf<DeliveryFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListDeliveriesRequest {
                tenant_id: q.tenant_id,
                webhook_id: q.webhook_id,
                limit: q.limit,
            },
            |mut c, r| async move { c.list_deliveries(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn list_snippets(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListSnippetsRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_snippets(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn publish_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
    JsonBody(b): JsonBody<SnippetBody>,
) -> Answer {
    let s = admin
        .send(
            pb::Snippet {
                tenant_id,
                name,
                content: b.content,
                updated_at_ms: 0,
            },
            |mut c, r| async move { c.publish_snippet(r).await },
        )
        .await?;
    ok(s)
}

pub(super) async fn delete_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
) -> Answer {
    let s = admin
        .send(pb::SnippetRef { tenant_id, name }, |mut c, r| async move {
            c.delete_snippet(r).await
        })
        .await?;
    ok(s)
}

pub(super) async fn list_shares(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let l = admin
        .send(
            pb::ListSharesRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.list_shares(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn grant_share(admin: Admin, JsonBody(b): JsonBody<ShareBody>) -> Answer {
    let g = admin
        .send(
            pb::ShareGrant {
                owner_tenant_id: b.owner_tenant_id,
                snippet: b.snippet,
                grantee_tenant_id: b.grantee_tenant_id,
                created_at_ms: 0,
            },
            |mut c, r| async move { c.grant_share(r).await },
        )
        .await?;
    created(g)
}

/// The grant to revoke, named in the JSON body or else in the query string.
pub(super) async fn revoke_share(
    admin: Admin,
    QueryOf(q): QueryOf<ShareQuery>,
    body: Bytes,
) -> Answer {
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        match (q.owner_tenant_id, q.snippet, q.grantee_tenant_id) {
            (Some(owner_tenant_id), Some(snippet), Some(grantee_tenant_id)) => ShareBody {
                owner_tenant_id,
                snippet,
                grantee_tenant_id,
            },
            _ => {
                return Err(GatewayError::bad_request(
                    "name the grant to revoke: owner_tenant_id, snippet and grantee_tenant_id, in a JSON body or the query string",
                    None,
                ));
            }
        }
    } else {
        parse_json::<ShareBody>(&body)?
    };
    let g = admin
        .send(
            pb::ShareGrant {
                owner_tenant_id: b.owner_tenant_id,
                snippet: b.snippet,
                grantee_tenant_id: b.grantee_tenant_id,
                created_at_ms: 0,
            },
            |mut c, r| async move { c.revoke_share(r).await },
        )
        .await?;
    ok(g)
}

pub(super) async fn list_audit(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<AuditQuery>,
) -> Answer {
    let l = admin
        .send(
            pb::ListAuditRequest {
                tenant_id,
                limit: q.limit,
            },
            |mut c, r| async move { c.list_audit(r).await },
        )
        .await?;
    ok(l)
}

pub(super) async fn verify_audit(admin: Admin, QueryOf(q): QueryOf<TenantFilter>) -> Answer {
    let v = admin
        .send(
            pb::VerifyAuditRequest {
                tenant_id: q.tenant_id,
            },
            |mut c, r| async move { c.verify_audit(r).await },
        )
        .await?;
    ok(v)
}
