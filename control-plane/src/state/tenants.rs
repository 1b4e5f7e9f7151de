//! Tenant changes: config files applied all or nothing, and patches that
//! set a tenant's own limits and features over its plan's.

use std::collections::BTreeSet;
use std::io;

use crate::outbox::{self, WEBHOOKS, WebhookRecord};
use crate::plans;
use crate::store::Tables;

use super::*;

/// Creates or updates the tenants of a config apply; refuses the whole apply
/// (changing nothing) when one of them cannot be applied.
pub(super) fn apply_tenants(t: &Tables, tenants: Vec<TenantApply>) -> io::Result<Reply> {
    for a in &tenants {
        let id = &a.tenant.id;
        if t.get::<TenantRecord>(TENANTS, id)?.is_none()
            && t.get::<serde_json::Value>(DELETED, id)?.is_some()
        {
            return Ok(Reply::Rejected(Rejection::NotAllowed(format!(
                "{}: tenant `{id}` was deleted; its id is reused only by an explicit `bulkhead tenant create {id}`",
                a.source
            ))));
        }
    }
    let mut outcomes = Vec::new();
    for a in tenants {
        let existing = t.get::<TenantRecord>(TENANTS, &a.tenant.id)?;
        let mut changed: Vec<String> = match &existing {
            Some(e) => e
                .differences(&a.tenant)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        };
        let tenant_changed = existing.is_none() || !changed.is_empty();
        // Endpoints this file manages, matched by URL.
        let current: Vec<WebhookRecord> = outbox::webhooks(t, &a.tenant.id)?
            .into_iter()
            .filter(|w| w.source == "config")
            .collect();
        let mut new_webhooks = Vec::new();
        for w in &current {
            if !a.webhooks.iter().any(|d| d.url == w.url) {
                t.delete(WEBHOOKS, &w.webhook_id)?;
                changed.push(format!("webhook {} removed", w.url));
            }
        }
        for d in &a.webhooks {
            match current.iter().find(|w| w.url == d.url) {
                Some(w) if w.events == d.events && w.secret == d.secret => {}
                Some(w) => {
                    let mut w = w.clone();
                    w.events = d.events.clone();
                    w.secret = d.secret.clone();
                    t.put(WEBHOOKS, &w.webhook_id, &w)?;
                    changed.push(format!("webhook {}", w.url));
                }
                None => {
                    t.put(WEBHOOKS, &d.webhook_id, d)?;
                    changed.push(format!("webhook {} added", d.url));
                    new_webhooks.push(d.clone());
                }
            }
        }
        let action = match &existing {
            None => "created",
            Some(_) if changed.is_empty() => "unchanged",
            Some(_) => "updated",
        };
        if tenant_changed {
            let mut record = a.tenant.clone();
            if let Some(e) = &existing {
                record.created_at_ms = e.created_at_ms;
            }
            t.delete(DELETED, &record.id)?;
            record.version = next_version(t)?;
            record_change(t, Change::Tenant(record.clone()))?;
            t.put(TENANTS, &record.id, &record)?;
        }
        outcomes.push(ApplyOutcome {
            tenant_id: a.tenant.id,
            source: a.source,
            action: action.to_owned(),
            changed,
            new_webhooks,
        });
    }
    Ok(Reply::Applied(outcomes))
}

impl TenantPatch {
    pub(crate) fn apply_to(&self, tenant: &mut TenantRecord) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut tenant.display_name, &self.display_name);
        set(&mut tenant.plan, &self.plan);
        set(&mut tenant.model, &self.model);
        set(&mut tenant.adapter, &self.adapter);
        set(&mut tenant.adapter_scale, &self.adapter_scale);
        set(&mut tenant.system_prompt, &self.system_prompt);
        set(&mut tenant.welcome_message, &self.welcome_message);
        set(&mut tenant.quick_prompts, &self.quick_prompts);
        set(&mut tenant.time_zone, &self.time_zone);
        set(&mut tenant.locale, &self.locale);
        set(&mut tenant.knowledge_share, &self.knowledge_share);
        // A value set here becomes the tenant's own (overridden).
        let (l, m, f) = (&self.limits, &self.set_limits, &self.features);
        let (limits, features, o) = (
            &mut tenant.limits,
            &mut tenant.features,
            &mut tenant.overridden,
        );
        // Each limit the patch marks as set, and each feature it gives.
        macro_rules! own {
            (limits: $($name:ident),+) => {
                $(own(o, stringify!($name), &mut limits.$name, m.$name.then_some(l.$name));)+
            };
            (features: $($name:ident),+) => {
                $(own(o, stringify!($name), &mut features.$name, f.$name.clone());)+
            };
        }
        own!(limits: daily_tokens, max_concurrent, max_request_tokens, context_window, context_turns);
        own!(
            features: burst, burst_percent, knowledge_sharing, max_keys, retention_days, tools,
            kv_share_across_users, storage_mb
        );
        // The limits and features not set for this tenant follow its plan.
        plans::follow_plan(
            &tenant.plan,
            &tenant.overridden,
            &mut tenant.limits,
            &mut tenant.features,
        );
    }
}

/// Sets a tenant's own value of `name`, when one is given.
pub(super) fn own<T>(
    overridden: &mut BTreeSet<String>,
    name: &str,
    field: &mut T,
    value: Option<T>,
) {
    if let Some(v) = value {
        *field = v;
        overridden.insert(name.to_owned());
    }
}

/// `Command::DeleteTenant`: removes the tenant and everything of its, after
/// the leader archived it (`archive` names the file).
pub(super) fn delete_tenant(
    t: &Tables,
    id: String,
    archive: String,
    now_ms: i64,
) -> io::Result<Reply> {
    let Some(tenant) = t.get::<TenantRecord>(TENANTS, &id)? else {
        return Ok(Reply::Rejected(Rejection::UnknownTenant(id)));
    };
    // The tenant's own endpoints hear of it before they go.
    outbox::emit(
        t,
        &id,
        "tenant.deleted",
        serde_json::json!({ "tenant_id": id, "archive": archive }),
        now_ms,
    )?;
    t.delete(TENANTS, &id)?;
    t.put(
        DELETED,
        &id,
        &serde_json::json!({ "deleted_at_ms": now_ms, "archive": archive }),
    )?;
    for w in outbox::webhooks(t, &id)? {
        t.delete(WEBHOOKS, &w.webhook_id)?;
    }
    for s in sharing::snippets(t, &id)? {
        t.delete(SNIPPETS, &s.name)?;
    }
    for g in sharing::shares(t, &id)? {
        t.delete(
            SHARES,
            &sharing::share_key(&g.owner_tenant_id, &g.snippet, &g.grantee_tenant_id),
        )?;
    }
    for b in bursts::list(t, &id, "")? {
        t.delete(BURSTS, &b.burst_id)?;
    }
    for (key_id, key) in t.scan::<KeyRecord>(KEYS, "")? {
        if key.tenant_id == id {
            t.delete(KEYS, &key_id)?;
            t.delete(KEY_HASHES, &key.hash)?;
        }
    }
    if let Ok(tenant_id) = TenantId::new(id.as_str()) {
        TenantScope::new(t, &tenant_id).drop_all()?;
    }
    files::drop_all(t, &id)?;
    let prefix = format!("{id}/");
    for table in [ALLOWANCES, LEDGER, USERS, RECENT, BURST_DAYS, PROMPTS] {
        t.delete_prefix(table, &prefix)?;
    }
    record_change(t, Change::TenantDeleted(id))?;
    Ok(Reply::Tenant(Box::new(tenant)))
}
