//! Burst requests, webhooks, knowledge sharing and the audit trail.

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use crate::admin::{self as adm};
use crate::error::ControlPlaneError;
use crate::ledger;
use crate::state::{Command, Reply};

use super::*;

impl ControlPlaneService {
    /// Files a burst request for the tenant's today, by `actor` (an
    /// operator, or a tenant's key through a gateway).
    pub(super) async fn request_burst(&self, actor: String, r: pb::BurstRequest) -> R<pb::Burst> {
        tenant_id(&r.tenant_id)?;
        let reason = r.reason.trim().to_owned();
        if reason.is_empty() || reason.len() > 2_000 {
            return Err(ControlPlaneError::invalid(
                "reason",
                "say why the burst is needed (1 to 2000 characters)",
            )
            .into());
        }
        let view = self.read().await?;
        let Some(tenant) = view.tenant(&r.tenant_id)? else {
            return Err(
                ControlPlaneError::NotFound(format!("unknown tenant `{}`", r.tenant_id)).into(),
            );
        };
        let now = now_ms();
        let burst = crate::bursts::BurstRecord {
            burst_id: new_id("burst_"),
            tenant_id: tenant.id.clone(),
            day: ledger::day_of(now, &tenant.time_zone).0,
            reason,
            status: "pending".into(),
            percent: tenant.features.burst_percent,
            extra_tokens: crate::bursts::extra_tokens(
                tenant.limits.daily_tokens,
                tenant.features.burst_percent,
            ),
            requested_at_ms: now,
            requested_by: actor.clone(),
            ..Default::default()
        };
        match self.audited(actor, Command::RequestBurst { burst }).await? {
            Reply::Burst(b) => Ok(Response::new(adm::burst_to_pb(b))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn decide_burst(&self, req: Request<pb::BurstDecision>) -> R<pb::Burst> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        let command = Command::DecideBurst {
            burst_id: r.burst_id,
            approve: r.approve,
            note: r.note,
            decided_by: actor.clone(),
            now_ms: now_ms(),
        };
        match self.audited(actor, command).await? {
            Reply::Burst(b) => Ok(Response::new(adm::burst_to_pb(b))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_bursts(
        &self,
        req: Request<pb::ListBurstsRequest>,
    ) -> R<pb::BurstList> {
        let r = req.into_inner();
        if !matches!(r.status.as_str(), "" | "pending" | "approved" | "denied") {
            return Err(ControlPlaneError::invalid(
                "status",
                format!("{:?} is not pending, approved or denied", r.status),
            )
            .into());
        }
        let view = self.read().await?;
        Ok(Response::new(pb::BurstList {
            bursts: crate::bursts::list(&view, &r.tenant_id, &r.status)?
                .into_iter()
                .map(adm::burst_to_pb)
                .collect(),
        }))
    }

    pub(super) async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> R<pb::CreatedWebhook> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        if !r.tenant_id.is_empty() {
            tenant_id(&r.tenant_id)?;
        }
        adm::validate_webhook(&r.url, &r.events, &r.secret)?;
        let webhook = crate::outbox::WebhookRecord {
            webhook_id: new_id("wh_"),
            tenant_id: r.tenant_id,
            url: r.url,
            events: r.events,
            secret: if r.secret.is_empty() {
                adm::new_webhook_secret()
            } else {
                r.secret
            },
            created_at_ms: now_ms(),
            source: "admin".into(),
        };
        match self
            .audited(actor, Command::CreateWebhook { webhook })
            .await?
        {
            Reply::Webhook(w) => Ok(Response::new(pb::CreatedWebhook {
                webhook: Some(adm::webhook_to_pb(&w)),
                secret: w.secret,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn delete_webhook(&self, req: Request<pb::WebhookRef>) -> R<pb::Webhook> {
        let actor = Self::actor(&req);
        let webhook_id = req.into_inner().webhook_id;
        match self
            .audited(actor, Command::DeleteWebhook { webhook_id })
            .await?
        {
            Reply::Webhook(w) => Ok(Response::new(adm::webhook_to_pb(&w))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> R<pb::WebhookList> {
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(adm::webhooks_pb(&view, &tenant)?))
    }

    pub(super) async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> R<pb::DeliveryList> {
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        };
        let view = self.read().await?;
        Ok(Response::new(pb::DeliveryList {
            deliveries: crate::outbox::deliveries(
                &view,
                &r.tenant_id,
                &r.webhook_id,
                limit as usize,
            )?
            .into_iter()
            .map(adm::delivery_to_pb)
            .collect(),
        }))
    }

    pub(super) async fn publish_snippet(&self, req: Request<pb::Snippet>) -> R<pb::Snippet> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        crate::sharing::validate_name(&r.name)
            .map_err(|m| ControlPlaneError::invalid("name", m))?;
        if r.content.trim().is_empty() || r.content.len() > crate::sharing::MAX_SNIPPET_BYTES {
            return Err(ControlPlaneError::invalid(
                "content",
                format!(
                    "a snippet has 1 to {} bytes of text",
                    crate::sharing::MAX_SNIPPET_BYTES
                ),
            )
            .into());
        }
        let snippet = crate::sharing::SnippetRecord {
            tenant_id: r.tenant_id,
            name: r.name,
            content: r.content,
            updated_at_ms: now_ms(),
        };
        match self
            .audited(actor, Command::PublishSnippet { snippet })
            .await?
        {
            Reply::Snippet(s) => Ok(Response::new(adm::snippet_to_pb(s))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn delete_snippet(&self, req: Request<pb::SnippetRef>) -> R<pb::Snippet> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        match self
            .audited(
                actor,
                Command::DeleteSnippet {
                    tenant_id: r.tenant_id,
                    name: r.name,
                },
            )
            .await?
        {
            Reply::Snippet(s) => Ok(Response::new(adm::snippet_to_pb(s))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_snippets(
        &self,
        req: Request<pb::ListSnippetsRequest>,
    ) -> R<pb::SnippetList> {
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(pb::SnippetList {
            snippets: crate::sharing::snippets(&view, &tenant)?
                .into_iter()
                .map(adm::snippet_to_pb)
                .collect(),
        }))
    }

    pub(super) async fn grant_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.owner_tenant_id)?;
        tenant_id(&r.grantee_tenant_id)?;
        if r.owner_tenant_id == r.grantee_tenant_id {
            return Err(ControlPlaneError::invalid(
                "grantee",
                "a tenant always reads its own snippets",
            )
            .into());
        }
        if r.snippet != "*" {
            crate::sharing::validate_name(&r.snippet)
                .map_err(|m| ControlPlaneError::invalid("snippet", m))?;
        }
        let grant = crate::sharing::ShareRecord {
            owner_tenant_id: r.owner_tenant_id,
            snippet: r.snippet,
            grantee_tenant_id: r.grantee_tenant_id,
            created_at_ms: now_ms(),
        };
        match self.audited(actor, Command::GrantShare { grant }).await? {
            Reply::Share(g) => Ok(Response::new(adm::share_to_pb(g))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn revoke_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        let grant = crate::sharing::ShareRecord {
            owner_tenant_id: r.owner_tenant_id,
            snippet: r.snippet,
            grantee_tenant_id: r.grantee_tenant_id,
            created_at_ms: 0,
        };
        match self.audited(actor, Command::RevokeShare { grant }).await? {
            Reply::Share(g) => Ok(Response::new(adm::share_to_pb(g))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_shares(
        &self,
        req: Request<pb::ListSharesRequest>,
    ) -> R<pb::ShareList> {
        let tenant = req.into_inner().tenant_id;
        let view = self.read().await?;
        Ok(Response::new(pb::ShareList {
            grants: crate::sharing::shares(&view, &tenant)?
                .into_iter()
                .map(adm::share_to_pb)
                .collect(),
        }))
    }

    pub(super) async fn record_tool_step(
        &self,
        actor: String,
        r: pb::ToolStep,
    ) -> R<pb::AuditRecord> {
        tenant_id(&r.tenant_id)?;
        if r.tool.is_empty() || r.tool.len() > 64 {
            return Err(
                ControlPlaneError::invalid("tool", "name the tool (1 to 64 characters)").into(),
            );
        }
        let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        let actor = if r.user_id.is_empty() {
            actor
        } else {
            format!("{actor} user {}", short(&r.user_id, 128))
        };
        let detail = serde_json::json!({
            "tool": short(&r.tool, 64),
            "arguments_sha256": short(&r.arguments_sha256, 64),
            "duration_ms": r.duration_ms,
            "status": short(&r.status, 64),
            "bytes_out": r.bytes_out,
            "files": r.files.iter().take(16).map(|f| short(f, 128)).collect::<Vec<_>>(),
        });
        match self
            .write(Command::RecordToolStep {
                tenant_id: r.tenant_id,
                actor,
                now_ms: now_ms(),
                detail,
            })
            .await?
        {
            Reply::Audit(record) => Ok(Response::new(adm::audit_to_pb(record))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn resolve_shared(
        &self,
        req: Request<pb::ResolveSharedRequest>,
    ) -> R<pb::SnippetList> {
        let via = Self::via(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        if r.names.is_empty() || r.names.len() > 16 {
            return Err(ControlPlaneError::invalid("names", "name 1 to 16 shared snippets").into());
        }
        let actor = if r.user_id.is_empty() {
            via
        } else {
            format!(
                "{via} user {}",
                r.user_id.chars().take(128).collect::<String>()
            )
        };
        match self
            .write(Command::UseShared {
                tenant_id: r.tenant_id,
                names: r.names,
                actor,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Shared {
                refused: Some(why), ..
            } => Err(ControlPlaneError::PermissionDenied(why).into()),
            Reply::Shared { snippets, .. } => Ok(Response::new(pb::SnippetList {
                snippets: snippets.into_iter().map(adm::snippet_to_pb).collect(),
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> R<pb::AuditList> {
        let r = req.into_inner();
        if r.tenant_id.is_empty() {
            return Err(ControlPlaneError::invalid(
                "tenant_id",
                format!(
                    "name a tenant (or {} for changes that belong to none)",
                    crate::audit::CLUSTER_CHAIN
                ),
            )
            .into());
        }
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let view = self.read().await?;
        let mut records = crate::audit::records(&view, &r.tenant_id)?;
        if records.is_empty() && view.tenant(&r.tenant_id)?.is_none() {
            return Err(
                ControlPlaneError::NotFound(format!("unknown tenant `{}`", r.tenant_id)).into(),
            );
        }
        let skip = records.len().saturating_sub(limit);
        records.drain(..skip);
        Ok(Response::new(pb::AuditList {
            records: records.into_iter().map(adm::audit_to_pb).collect(),
        }))
    }

    pub(super) async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> R<pb::AuditVerification> {
        let r = req.into_inner();
        let view = self.read().await?;
        let v = crate::audit::verify(
            &view,
            (!r.tenant_id.is_empty()).then_some(r.tenant_id.as_str()),
        )?;
        let (broken_tenant, broken_seq, reason) = v.broken.clone().unwrap_or_default();
        Ok(Response::new(pb::AuditVerification {
            ok: v.broken.is_none(),
            chains: v.chains,
            records: v.records,
            broken_tenant,
            broken_seq,
            reason,
        }))
    }
}
