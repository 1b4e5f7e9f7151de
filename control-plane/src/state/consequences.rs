//! What a command's outcome sets off besides itself: the audit records
//! and webhook events it owes.

use crate::audit;

use super::*;

/// What an audited change leaves behind: an audit record, and maybe a
/// webhook event with the same detail.
pub(super) struct Consequence {
    /// The tenant the event is about.
    pub(super) tenant_id: String,
    /// The chain the audit record goes to (`None`: no record).
    pub(super) audit_in: Option<String>,
    pub(super) action: String,
    pub(super) detail: serde_json::Value,
    pub(super) event: Option<&'static str>,
}

pub(super) fn tenant_detail(t: &TenantRecord) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": t.id,
        "plan": t.plan,
        "daily_tokens": t.limits.daily_tokens,
        "max_concurrent": t.limits.max_concurrent,
        "version": t.version,
    })
}

/// The audit records and webhook events of a successful admin change.
pub(super) fn consequences(command: &Command, reply: &Reply) -> Vec<Consequence> {
    let one = |tenant: &str, action: &str, detail: serde_json::Value, event| Consequence {
        tenant_id: tenant.to_owned(),
        audit_in: Some(if tenant.is_empty() {
            audit::CLUSTER_CHAIN.to_owned()
        } else {
            tenant.to_owned()
        }),
        action: action.to_owned(),
        detail,
        event,
    };
    match (command, reply) {
        (Command::CreateCredential { .. }, Reply::Credential(c))
        | (Command::RevokeCredential { .. }, Reply::Credential(c)) => {
            let created = matches!(command, Command::CreateCredential { .. });
            vec![one(
                "",
                if created {
                    "credential.created"
                } else {
                    "credential.revoked"
                },
                serde_json::json!({
                    "credential_id": c.credential_id,
                    "role": c.role.as_str(),
                    "name": c.name,
                }),
                None,
            )]
        }
        (Command::CreateTenant { .. }, Reply::Tenant(t)) => {
            vec![one(
                &t.id,
                "tenant.created",
                tenant_detail(t),
                Some("tenant.created"),
            )]
        }
        (Command::UpdateTenant { patch, .. }, Reply::Tenant(t)) => {
            let mut d = tenant_detail(t);
            d["patch"] = serde_json::to_value(patch).unwrap_or_default();
            vec![one(&t.id, "tenant.updated", d, Some("tenant.updated"))]
        }
        (Command::DeleteTenant { archive, .. }, Reply::Tenant(t)) => {
            // The webhook event went out before the tenant's endpoints did.
            let mut d = tenant_detail(t);
            d["archive"] = archive.clone().into();
            vec![one(&t.id, "tenant.deleted", d, None)]
        }
        (Command::CreateKey { .. }, Reply::Key(k)) | (Command::RevokeKey { .. }, Reply::Key(k)) => {
            let created = matches!(command, Command::CreateKey { .. });
            let action = if created {
                "key.created"
            } else {
                "key.revoked"
            };
            let d = serde_json::json!({
                "tenant_id": k.tenant_id, "key_id": k.key_id, "name": k.name, "prefix": k.prefix,
            });
            vec![one(&k.tenant_id, action, d, Some(action))]
        }
        (Command::ApplyTenants { .. }, Reply::Applied(outcomes)) => outcomes
            .iter()
            .filter(|o| o.action != "unchanged")
            .map(|o| {
                let action = if o.action == "created" {
                    "tenant.created"
                } else {
                    "tenant.updated"
                };
                let d = serde_json::json!({
                    "tenant_id": o.tenant_id, "source": o.source, "changed": o.changed,
                });
                one(&o.tenant_id, action, d, Some(action))
            })
            .collect(),
        (Command::RequestBurst { .. }, Reply::Burst(b))
        | (Command::DecideBurst { .. }, Reply::Burst(b)) => {
            let action = match b.status.as_str() {
                "approved" => "burst.approved",
                "denied" => "burst.denied",
                _ => "burst.requested",
            };
            let d = serde_json::to_value(b).unwrap_or_default();
            vec![one(&b.tenant_id, action, d, Some(action))]
        }
        (Command::CreateWebhook { .. }, Reply::Webhook(w))
        | (Command::DeleteWebhook { .. }, Reply::Webhook(w)) => {
            let action = if matches!(command, Command::CreateWebhook { .. }) {
                "webhook.created"
            } else {
                "webhook.deleted"
            };
            let d = serde_json::json!({
                "webhook_id": w.webhook_id, "url": w.url, "events": w.events,
            });
            vec![one(&w.tenant_id, action, d, None)]
        }
        (Command::PublishSnippet { .. }, Reply::Snippet(s))
        | (Command::DeleteSnippet { .. }, Reply::Snippet(s)) => {
            let action = if matches!(command, Command::PublishSnippet { .. }) {
                "snippet.published"
            } else {
                "snippet.deleted"
            };
            let d = serde_json::json!({ "snippet": s.name, "bytes": s.content.len() });
            vec![one(&s.tenant_id, action, d, None)]
        }
        (Command::GrantShare { .. }, Reply::Share(g))
        | (Command::RevokeShare { .. }, Reply::Share(g)) => {
            let action = if matches!(command, Command::GrantShare { .. }) {
                "share.granted"
            } else {
                "share.revoked"
            };
            let d = serde_json::to_value(g).unwrap_or_default();
            vec![
                one(&g.owner_tenant_id, action, d.clone(), None),
                one(&g.grantee_tenant_id, action, d, None),
            ]
        }
        _ => Vec::new(),
    }
}
