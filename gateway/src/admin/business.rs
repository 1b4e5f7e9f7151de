//! Bursts, webhooks, knowledge sharing and the audit trail. A query string
//! that is a request message as it is (`proto/build.rs` derives its serde)
//! goes to the control plane unchanged.

use axum::body::Bytes;
use bulkhead_proto::control as pb;

use super::*;

pub(super) async fn list_bursts(
    admin: Admin,
    QueryOf(q): QueryOf<pb::ListBurstsRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.list_bursts(r).await })
        .await?)
}

pub(super) async fn request_burst(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    JsonBody(b): JsonBody<BurstAsk>,
) -> Answer {
    let ask = pb::BurstRequest {
        tenant_id,
        reason: b.reason,
    };
    created(
        admin
            .send(ask, |mut c, r| async move { c.request_burst(r).await })
            .await?,
    )
}

async fn decide_burst(admin: Admin, burst_id: String, approve: bool, note: String) -> Answer {
    let decision = pb::BurstDecision {
        burst_id,
        approve,
        note,
    };
    ok(admin
        .send(decision, |mut c, r| async move { c.decide_burst(r).await })
        .await?)
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

pub(super) async fn list_webhooks(
    admin: Admin,
    QueryOf(q): QueryOf<pb::ListWebhooksRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.list_webhooks(r).await })
        .await?)
}

pub(super) async fn create_webhook(admin: Admin, JsonBody(b): JsonBody<NewWebhook>) -> Answer {
    let new = pb::CreateWebhookRequest {
        tenant_id: b.tenant_id,
        url: b.url,
        events: b.events,
        secret: b.secret,
    };
    created(
        admin
            .send(new, |mut c, r| async move { c.create_webhook(r).await })
            .await?,
    )
}

pub(super) async fn delete_webhook(admin: Admin, PathOf(webhook_id): PathOf<String>) -> Answer {
    let id = pb::WebhookRef { webhook_id };
    ok(admin
        .send(id, |mut c, r| async move { c.delete_webhook(r).await })
        .await?)
}

pub(super) async fn list_deliveries(
    admin: Admin,
    QueryOf(q): QueryOf<pb::ListDeliveriesRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.list_deliveries(r).await })
        .await?)
}

pub(super) async fn list_snippets(
    admin: Admin,
    QueryOf(q): QueryOf<pb::ListSnippetsRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.list_snippets(r).await })
        .await?)
}

pub(super) async fn publish_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
    JsonBody(b): JsonBody<SnippetBody>,
) -> Answer {
    let snippet = pb::Snippet {
        tenant_id,
        name,
        content: b.content,
        updated_at_ms: 0,
    };
    ok(admin
        .send(
            snippet,
            |mut c, r| async move { c.publish_snippet(r).await },
        )
        .await?)
}

pub(super) async fn delete_snippet(
    admin: Admin,
    PathOf((tenant_id, name)): PathOf<(String, String)>,
) -> Answer {
    let id = pb::SnippetRef { tenant_id, name };
    ok(admin
        .send(id, |mut c, r| async move { c.delete_snippet(r).await })
        .await?)
}

pub(super) async fn list_shares(
    admin: Admin,
    QueryOf(q): QueryOf<pb::ListSharesRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.list_shares(r).await })
        .await?)
}

pub(super) async fn grant_share(admin: Admin, JsonBody(b): JsonBody<ShareBody>) -> Answer {
    let grant = pb::ShareGrant::from(b);
    created(
        admin
            .send(grant, |mut c, r| async move { c.grant_share(r).await })
            .await?,
    )
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
    let grant = pb::ShareGrant::from(b);
    ok(admin
        .send(grant, |mut c, r| async move { c.revoke_share(r).await })
        .await?)
}

pub(super) async fn list_audit(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<AuditQuery>,
) -> Answer {
    let ask = pb::ListAuditRequest {
        tenant_id,
        limit: q.limit,
    };
    ok(admin
        .send(ask, |mut c, r| async move { c.list_audit(r).await })
        .await?)
}

pub(super) async fn verify_audit(
    admin: Admin,
    QueryOf(q): QueryOf<pb::VerifyAuditRequest>,
) -> Answer {
    ok(admin
        .send(q, |mut c, r| async move { c.verify_audit(r).await })
        .await?)
}
