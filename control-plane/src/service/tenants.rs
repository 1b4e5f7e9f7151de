//! Tenants, their keys and plans: create, update, show, list, delete,
//! apply config files, and the key lookups gateways authenticate with.

use std::collections::BTreeMap;

use bulkhead_proto::control as pb;
use tonic::{Request, Response, Status};

use crate::admin::{self as adm, build_tenant, validate_tenant};
use crate::error::ControlPlaneError;
use crate::plans;
use crate::state::{Command, KeyRecord, Limits, LimitsMask, Reply, TenantPatch};

use super::*;

impl ControlPlaneService {
    pub(super) async fn create_tenant(&self, req: Request<pb::Tenant>) -> R<pb::Tenant> {
        let actor = Self::actor(&req);
        let mut t = req.into_inner();
        let features = t.feature_overrides.take();
        let record = build_tenant(t, features, now_ms())?;
        match self
            .audited(actor, Command::CreateTenant { tenant: record })
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(tenant_to_pb(*t))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn update_tenant(&self, req: Request<pb::TenantPatch>) -> R<pb::Tenant> {
        let actor = Self::actor(&req);
        let p = req.into_inner();
        tenant_id(&p.id)?;
        let view = self.read().await?;
        let Some(current) = view.tenant(&p.id)? else {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{}`", p.id)).into());
        };
        if let Some(plan) = &p.plan {
            adm::validate_plan(plan)?;
        }
        if let Some(tz) = &p.time_zone {
            adm::validate_time_zone(tz)?;
        }
        if let Some(locale) = &p.locale {
            adm::validate_locale(locale)?;
        }
        if let Some(scale) = p.adapter_scale {
            adm::validate_scale(scale)?;
        }
        let f = p.features.unwrap_or_default();
        let patch = TenantPatch {
            display_name: p.display_name,
            plan: p.plan,
            limits: Limits {
                daily_tokens: p.daily_tokens.unwrap_or_default(),
                max_concurrent: p.max_concurrent.unwrap_or_default(),
                max_request_tokens: p.max_request_tokens.unwrap_or_default(),
                context_window: p.context_window.unwrap_or_default(),
                context_turns: p.context_turns.unwrap_or_default(),
            },
            set_limits: LimitsMask {
                daily_tokens: p.daily_tokens.is_some(),
                max_concurrent: p.max_concurrent.is_some(),
                max_request_tokens: p.max_request_tokens.is_some(),
                context_window: p.context_window.is_some(),
                context_turns: p.context_turns.is_some(),
            },
            model: p.model,
            adapter: p.adapter,
            adapter_scale: p.adapter_scale,
            system_prompt: p.system_prompt,
            welcome_message: p.welcome_message,
            quick_prompts: p.set_quick_prompts.then_some(p.quick_prompts),
            time_zone: p.time_zone,
            knowledge_share: p.knowledge_share,
            locale: p.locale,
            features: crate::state::FeaturePatch {
                burst: f.burst,
                burst_percent: f.burst_percent,
                knowledge_sharing: f.knowledge_sharing,
                max_keys: f.max_keys,
                retention_days: f.retention_days,
                tools: f.tools.map(|t| t.names),
                kv_share_across_users: f.kv_share_across_users,
                storage_mb: f.storage_mb,
            },
        };
        // Check what the tenant would end up with before proposing.
        let mut preview = current;
        patch.apply_to(&mut preview);
        validate_tenant(&preview)?;
        match self
            .audited(
                actor,
                Command::UpdateTenant {
                    id: p.id,
                    patch: Box::new(patch),
                },
            )
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(tenant_to_pb(*t))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn get_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::Tenant> {
        let id = req.into_inner().id;
        match self.read().await?.tenant(&id)? {
            Some(t) => Ok(Response::new(tenant_to_pb(t))),
            None => Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into()),
        }
    }

    pub(super) async fn list_tenants(
        &self,
        _req: Request<pb::ListTenantsRequest>,
    ) -> R<pb::TenantList> {
        let tenants = self.read().await?.tenants()?;
        Ok(Response::new(pb::TenantList {
            tenants: tenants.into_iter().map(tenant_to_pb).collect(),
        }))
    }

    pub(super) async fn delete_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::DeletedTenant> {
        self.require_leader()?;
        let actor = Self::actor(&req);
        let id = req.into_inner().id;
        let view = self.read().await?;
        let Some(tenant) = view.tenant(&id)? else {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        };
        let now = now_ms();
        // The archive is written (and fsynced) before anything is removed.
        let archive = adm::write_archive(&self.node.data_dir, &view, &tenant, now)?;
        let archive = archive.display().to_string();
        match self
            .audited(
                actor,
                Command::DeleteTenant {
                    id,
                    archive: archive.clone(),
                    now_ms: now,
                },
            )
            .await?
        {
            Reply::Tenant(t) => Ok(Response::new(pb::DeletedTenant {
                tenant: Some(tenant_to_pb(*t)),
                archive_path: archive,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::CreatedKey> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        if !r.user_id.is_empty() {
            bulkhead_proto::UserId::new(&r.user_id)
                .map_err(|e| ControlPlaneError::bad_request(format!("user_id: {e}")))?;
        }
        let plaintext = new_secret("bk_");
        let key = KeyRecord {
            key_id: new_id("key_"),
            tenant_id: r.tenant_id,
            name: r.name,
            prefix: plaintext[..11].to_owned(),
            hash: hash_secret(&plaintext),
            created_at_ms: now_ms(),
            revoked_at_ms: 0,
            last_used_at_ms: 0,
            user_id: r.user_id,
        };
        match self.audited(actor, Command::CreateKey { key }).await? {
            Reply::Key(k) => Ok(Response::new(pb::CreatedKey {
                key: Some(key_to_pb(k)),
                plaintext,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> R<pb::ApiKey> {
        let actor = Self::actor(&req);
        let key_id = req.into_inner().key_id;
        let view = self.read().await?;
        if let Some(k) = view.key(&key_id)?
            && k.revoked_at_ms != 0
        {
            // Revoking twice changes nothing and records nothing.
            return Ok(Response::new(key_to_pb(k)));
        }
        match self
            .audited(
                actor,
                Command::RevokeKey {
                    key_id,
                    now_ms: now_ms(),
                },
            )
            .await?
        {
            Reply::Key(k) => Ok(Response::new(key_to_pb(k))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_keys(&self, req: Request<pb::TenantRef>) -> R<pb::KeyList> {
        let id = req.into_inner().id;
        let view = self.read().await?;
        if view.tenant(&id)?.is_none() {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        }
        Ok(Response::new(pb::KeyList {
            keys: view.keys_of(&id)?.into_iter().map(key_to_pb).collect(),
        }))
    }

    pub(super) async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> R<pb::Authenticated> {
        let plaintext = req.into_inner().plaintext;
        let view = self.read().await?;
        let refused = || ControlPlaneError::Unauthenticated("invalid API key".into());
        let key = view
            .key_by_hash(&hash_secret(&plaintext))?
            .ok_or_else(refused)?;
        if key.revoked_at_ms != 0 {
            return Err(
                ControlPlaneError::Unauthenticated("this API key has been revoked".into()).into(),
            );
        }
        // Last-used time, at most one write per key and minute.
        let now = now_ms();
        if now - key.last_used_at_ms > 60_000
            && let Err(e) = self
                .write(Command::TouchKey {
                    key_id: key.key_id.clone(),
                    now_ms: now,
                })
                .await
        {
            tracing::debug!(key = %key.key_id, error = %e, "recording key use failed");
        }
        Ok(Response::new(pb::Authenticated {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
        }))
    }

    pub(super) async fn apply_tenants(
        &self,
        req: Request<pb::ApplyTenantsRequest>,
    ) -> R<pb::ApplyTenantsReply> {
        let actor = Self::actor(&req);
        let configs = req.into_inner().configs;
        if configs.is_empty() {
            return Err(ControlPlaneError::bad_request("no tenant configs given").into());
        }
        let view = self.read().await?;
        let now = now_ms();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut tenants = Vec::new();
        for c in configs {
            let source = if c.source.is_empty() {
                "config".to_owned()
            } else {
                c.source
            };
            let at = |e: ControlPlaneError| -> Status {
                let mut s: Status = e.into();
                s = Status::new(s.code(), format!("{source}: {}", s.message()));
                s
            };
            let mut t = c.tenant.unwrap_or_default();
            let features = t.feature_overrides.take();
            let mut record = build_tenant(t, features, now).map_err(at)?;
            if let Some(first) = seen.insert(record.id.clone(), source.clone()) {
                return Err(at(ControlPlaneError::invalid(
                    "tenant_id",
                    format!("`{}` is also declared in {first}", record.id),
                )));
            }
            let existing = view.tenant(&record.id)?;
            if let Some(e) = &existing {
                record.created_at_ms = e.created_at_ms;
            }
            let current: Vec<crate::outbox::WebhookRecord> =
                crate::outbox::webhooks(&view, &record.id)?
                    .into_iter()
                    .filter(|w| w.source == "config")
                    .collect();
            let mut webhooks = Vec::new();
            for spec in c.webhooks {
                adm::validate_webhook(&spec.url, &spec.events, &spec.secret)
                    .map_err(|e| at(prefix_field("webhooks", e)))?;
                if webhooks
                    .iter()
                    .any(|w: &crate::outbox::WebhookRecord| w.url == spec.url)
                {
                    return Err(at(ControlPlaneError::invalid(
                        "webhooks",
                        format!("{} is listed twice", spec.url),
                    )));
                }
                let same = current.iter().find(|w| w.url == spec.url);
                webhooks.push(crate::outbox::WebhookRecord {
                    webhook_id: same.map_or_else(|| new_id("wh_"), |w| w.webhook_id.clone()),
                    tenant_id: record.id.clone(),
                    url: spec.url,
                    events: spec.events,
                    secret: if !spec.secret.is_empty() {
                        spec.secret
                    } else {
                        same.map_or_else(adm::new_webhook_secret, |w| w.secret.clone())
                    },
                    created_at_ms: same.map_or(now, |w| w.created_at_ms),
                    source: "config".into(),
                });
            }
            tenants.push(crate::state::TenantApply {
                source,
                tenant: record,
                webhooks,
            });
        }
        match self
            .audited(actor, Command::ApplyTenants { tenants })
            .await?
        {
            Reply::Applied(outcomes) => Ok(Response::new(pb::ApplyTenantsReply {
                outcomes: outcomes
                    .into_iter()
                    .map(|o| pb::ApplyOutcome {
                        tenant_id: o.tenant_id,
                        source: o.source,
                        action: o.action,
                        changed: o.changed,
                        new_webhooks: o
                            .new_webhooks
                            .iter()
                            .map(|w| pb::CreatedWebhook {
                                webhook: Some(adm::webhook_to_pb(w)),
                                secret: w.secret.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_plans(&self, _req: Request<pb::ListPlansRequest>) -> R<pb::PlanList> {
        let plans = plans::PLANS
            .iter()
            .filter_map(|name| {
                let l = plans::default_limits(name)?;
                let f = plans::default_features(name)?;
                Some(pb::Plan {
                    name: (*name).to_owned(),
                    limits: Some(pb::Limits {
                        daily_tokens: l.daily_tokens,
                        max_concurrent: l.max_concurrent,
                        max_request_tokens: l.max_request_tokens,
                        context_window: l.context_window,
                        context_turns: l.context_turns,
                    }),
                    features: Some(adm::features_to_pb(&f)),
                })
            })
            .collect();
        Ok(Response::new(pb::PlanList { plans }))
    }
}
