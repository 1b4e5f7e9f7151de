//! The pieces of the admin calls that are not Raft: building a tenant record
//! from what an admin or a config file gives, checking webhook endpoints,
//! writing a deleted tenant's archive, and the protobuf shapes of the
//! business records (bursts, webhooks, deliveries, snippets, audit).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use bulkhead_proto::TenantId;
use bulkhead_proto::control as pb;

use crate::audit::{self, AuditRecord};
use crate::bursts::{self, BurstRecord};
use crate::error::ControlPlaneError;
use crate::outbox::{self, DeliveryRecord, EVENT_TYPES, WebhookRecord};
use crate::plans::{self, Features};
use crate::sessions::TenantView;
use crate::sharing::{self, ShareRecord, SnippetRecord};
use crate::state::{Limits, TenantRecord, USERS};
use crate::store::View;

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

fn invalid(message: String) -> ControlPlaneError {
    ControlPlaneError::bad_request(message)
}

/// Checks a tenant id for a new tenant.
pub fn new_tenant_id(id: &str) -> Result<TenantId> {
    let tid =
        TenantId::new(id).map_err(|e| ControlPlaneError::invalid("tenant_id", format!("{e}")))?;
    if id.starts_with('_') {
        return Err(ControlPlaneError::invalid(
            "tenant_id",
            format!("ids starting with '_' are reserved, got {id:?}"),
        ));
    }
    Ok(tid)
}

/// The languages of user-facing messages (the gateway's catalogue).
pub const LOCALES: &[&str] = &["en", "zh-CN"];

pub fn validate_locale(locale: &str) -> Result<()> {
    if !locale.is_empty() && !LOCALES.contains(&locale) {
        return Err(ControlPlaneError::invalid(
            "locale",
            format!(
                "unknown locale {locale:?} (use one of {})",
                LOCALES.join(", ")
            ),
        ));
    }
    Ok(())
}

pub fn validate_time_zone(tz: &str) -> Result<()> {
    if !tz.is_empty() && tz.parse::<chrono_tz::Tz>().is_err() {
        return Err(ControlPlaneError::invalid(
            "time_zone",
            format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"),
        ));
    }
    Ok(())
}

pub fn validate_plan(plan: &str) -> Result<()> {
    if plans::default_limits(plan).is_none() {
        return Err(ControlPlaneError::invalid(
            "plan",
            format!(
                "unknown plan {plan:?}; plans are {}",
                plans::PLANS.join(", ")
            ),
        ));
    }
    Ok(())
}

pub fn validate_scale(scale: f32) -> Result<()> {
    if !(0.0..=4.0).contains(&scale) {
        return Err(ControlPlaneError::invalid(
            "adapter_scale",
            format!("must be between 0 and 4, got {scale}"),
        ));
    }
    Ok(())
}

/// Checks a tenant's limits, features and sharing flag together.
pub fn validate_tenant(t: &TenantRecord) -> Result<()> {
    plans::validate(&t.limits).map_err(|m| invalid(format!("invalid limit: {m}")))?;
    plans::validate_features(&t.features).map_err(|m| invalid(format!("invalid feature: {m}")))?;
    if t.knowledge_share && !t.features.knowledge_sharing {
        return Err(ControlPlaneError::FailedPrecondition(format!(
            "knowledge_share: tenant `{}` is on plan `{}`, which does not include knowledge sharing (pro and enterprise do)",
            t.id, t.plan
        )));
    }
    Ok(())
}

/// The record a new tenant (or a config file's tenant) ends up as: the
/// plan's limits and features, with the ones given here as overrides.
pub fn build_tenant(
    t: pb::Tenant,
    features: Option<pb::FeatureOverrides>,
    now_ms: i64,
) -> Result<TenantRecord> {
    new_tenant_id(&t.id)?;
    let plan = if t.plan.is_empty() {
        "basic".to_owned()
    } else {
        t.plan
    };
    validate_plan(&plan)?;
    validate_time_zone(&t.time_zone)?;
    validate_locale(&t.locale)?;
    let given = t.limits.unwrap_or_default();
    // A limit counts as set when it is not 0, or when the caller names it in
    // `overridden` (a config file's `context_turns: 0`).
    let named: BTreeSet<String> = t.overridden.into_iter().collect();
    let mut overridden = BTreeSet::new();
    let mut mark = |name: &str, set: bool| {
        if set || named.contains(name) {
            overridden.insert(name.to_owned());
        }
    };
    mark("daily_tokens", given.daily_tokens != 0);
    mark("max_concurrent", given.max_concurrent != 0);
    mark("max_request_tokens", given.max_request_tokens != 0);
    mark("context_window", given.context_window != 0);
    mark("context_turns", given.context_turns != 0);
    let f = features.unwrap_or_default();
    mark("burst", f.burst.is_some());
    mark("burst_percent", f.burst_percent.is_some());
    mark("knowledge_sharing", f.knowledge_sharing.is_some());
    mark("max_keys", f.max_keys.is_some());
    mark("retention_days", f.retention_days.is_some());
    mark("tools", f.tools.is_some());
    mark("kv_share_across_users", f.kv_share_across_users.is_some());
    mark("storage_mb", f.storage_mb.is_some());
    let mut limits = Limits {
        daily_tokens: given.daily_tokens,
        max_concurrent: given.max_concurrent,
        max_request_tokens: given.max_request_tokens,
        context_window: given.context_window,
        context_turns: given.context_turns,
    };
    let mut feats = Features {
        burst: f.burst.unwrap_or_default(),
        burst_percent: f.burst_percent.unwrap_or_default(),
        knowledge_sharing: f.knowledge_sharing.unwrap_or_default(),
        max_keys: f.max_keys.unwrap_or_default(),
        retention_days: f.retention_days.unwrap_or_default(),
        tools: f.tools.map(|t| t.names).unwrap_or_default(),
        kv_share_across_users: f.kv_share_across_users.unwrap_or_default(),
        storage_mb: f.storage_mb.unwrap_or_default(),
    };
    plans::follow_plan(&plan, &overridden, &mut limits, &mut feats);
    let adapter_scale = if t.adapter.is_empty() {
        0.0
    } else if t.adapter_scale == 0.0 {
        1.0
    } else {
        t.adapter_scale
    };
    validate_scale(adapter_scale)?;
    let record = TenantRecord {
        display_name: if t.display_name.is_empty() {
            t.id.clone()
        } else {
            t.display_name
        },
        id: t.id,
        plan,
        limits,
        model: t.model,
        adapter: t.adapter,
        adapter_scale,
        system_prompt: t.system_prompt,
        welcome_message: t.welcome_message,
        quick_prompts: t.quick_prompts,
        time_zone: t.time_zone,
        knowledge_share: t.knowledge_share,
        locale: t.locale,
        version: 0,
        created_at_ms: now_ms,
        features: feats,
        overridden,
    };
    validate_tenant(&record)?;
    Ok(record)
}

/// A fresh webhook signing secret, `whsec_` and 32 random bytes in base64.
pub fn new_webhook_secret() -> String {
    let bytes = bulkhead_proto::auth::random_bytes(32);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Checks an endpoint's URL, events and secret.
pub fn validate_webhook(url: &str, events: &[String], secret: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ControlPlaneError::invalid("url", format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(ControlPlaneError::invalid(
            "url",
            format!("a webhook URL must be http:// or https:// with a host, got {url:?}"),
        ));
    }
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ControlPlaneError::invalid(
                "events",
                format!(
                    "unknown event type {e:?}; event types are {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    if !secret.is_empty() {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        match key {
            Some(k) if (24..=64).contains(&k.len()) => {}
            _ => {
                return Err(ControlPlaneError::invalid(
                    "secret",
                    "a webhook secret is whsec_ followed by 24 to 64 bytes in base64",
                ));
            }
        }
    }
    Ok(())
}

/// Writes everything of a tenant to one JSON Lines file under
/// `<data_dir>/archives/`, fsynced, and returns its path.
pub fn write_archive(
    data_dir: &Path,
    view: &View,
    tenant: &TenantRecord,
    now_ms: i64,
) -> Result<PathBuf> {
    let dir = data_dir.join("archives");
    std::fs::create_dir_all(&dir)?;
    let stamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%S%.3fZ");
    let path = dir.join(format!("{}-{stamp}.jsonl", tenant.id));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut line = |kind: &str, value: serde_json::Value| -> std::io::Result<()> {
        let v = serde_json::json!({ "kind": kind, "record": value });
        writeln!(out, "{v}")
    };
    line("tenant", json(tenant))?;
    for k in view.keys_of(&tenant.id)? {
        // The hash stays behind: an archive is no way to use a key.
        line(
            "key",
            serde_json::json!({
                "key_id": k.key_id, "name": k.name, "prefix": k.prefix,
                "created_at_ms": k.created_at_ms, "revoked_at_ms": k.revoked_at_ms,
                "last_used_at_ms": k.last_used_at_ms,
            }),
        )?;
    }
    let id = TenantId::new(tenant.id.as_str()).map_err(|e| invalid(e.to_string()))?;
    let scoped = TenantView::new(view, &id);
    for s in scoped.sessions()? {
        let turns = scoped.turns_of(&s, 0)?;
        line("session", json(&s))?;
        for t in turns {
            let mut v = json(&t);
            v["session_id"] = s.session_id.clone().into();
            line("turn", v)?;
        }
    }
    for (day, l) in view.ledger_days(&tenant.id)? {
        let mut v = json(&l);
        v["day"] = day.into();
        line("usage_day", v)?;
    }
    for (key, u) in view.scan::<crate::state::UserTotals>(USERS, &format!("{}/", tenant.id))? {
        let mut v = json(&u);
        v["key"] = key.into();
        line("usage_user", v)?;
    }
    for r in view.recent(&tenant.id)? {
        line("request", json(&r))?;
    }
    for b in bursts::list(view, &tenant.id, "")? {
        line("burst", json(&b))?;
    }
    for s in sharing::snippets(view, &tenant.id)? {
        line("snippet", json(&s))?;
    }
    for g in sharing::shares(view, &tenant.id)? {
        line("share", json(&g))?;
    }
    for r in audit::records(view, &tenant.id)? {
        line("audit", json(&r))?;
    }
    for f in crate::files::list(view, &tenant.id, "")? {
        use base64::Engine;
        let mut v = json(&f);
        v["content_base64"] = base64::engine::general_purpose::STANDARD
            .encode(crate::files::content(view, &f)?)
            .into();
        line("file", v)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(path)
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

pub fn features_to_pb(f: &Features) -> pb::Features {
    pb::Features {
        burst: f.burst,
        burst_percent: f.burst_percent,
        knowledge_sharing: f.knowledge_sharing,
        max_keys: f.max_keys,
        retention_days: f.retention_days,
        tools: f.tools.clone(),
        kv_share_across_users: f.kv_share_across_users,
        storage_mb: f.storage_mb,
    }
}

pub fn burst_to_pb(b: BurstRecord) -> pb::Burst {
    pb::Burst {
        burst_id: b.burst_id,
        tenant_id: b.tenant_id,
        day: b.day,
        reason: b.reason,
        status: b.status,
        percent: b.percent,
        extra_tokens: b.extra_tokens,
        requested_at_ms: b.requested_at_ms,
        decided_at_ms: b.decided_at_ms,
        requested_by: b.requested_by,
        decided_by: b.decided_by,
        note: b.note,
    }
}

pub fn webhook_to_pb(w: &WebhookRecord) -> pb::Webhook {
    pb::Webhook {
        webhook_id: w.webhook_id.clone(),
        tenant_id: w.tenant_id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        secret_prefix: w.secret_prefix(),
        created_at_ms: w.created_at_ms,
        source: w.source.clone(),
    }
}

pub fn delivery_to_pb(d: DeliveryRecord) -> pb::Delivery {
    pb::Delivery {
        message_id: d.message_id,
        webhook_id: d.webhook_id,
        tenant_id: d.tenant_id,
        event_type: d.event_type,
        payload: d.payload,
        created_at_ms: d.created_at_ms,
        state: d.state,
        next_attempt_at_ms: d.next_attempt_at_ms,
        attempts: d
            .attempts
            .into_iter()
            .map(|a| pb::DeliveryAttempt {
                at_ms: a.at_ms,
                status: u32::from(a.status),
                latency_ms: a.latency_ms,
                error: a.error,
            })
            .collect(),
        url: d.url,
    }
}

pub fn snippet_to_pb(s: SnippetRecord) -> pb::Snippet {
    pb::Snippet {
        tenant_id: s.tenant_id,
        name: s.name,
        content: s.content,
        updated_at_ms: s.updated_at_ms,
    }
}

pub fn share_to_pb(g: ShareRecord) -> pb::ShareGrant {
    pb::ShareGrant {
        owner_tenant_id: g.owner_tenant_id,
        snippet: g.snippet,
        grantee_tenant_id: g.grantee_tenant_id,
        created_at_ms: g.created_at_ms,
    }
}

pub fn audit_to_pb(r: AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        tenant_id: r.tenant_id,
        seq: r.seq,
        at_ms: r.at_ms,
        actor: r.actor,
        action: r.action,
        detail: r.detail,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// Everything one endpoint list shows, and the delivery-side view.
pub fn webhooks_pb(view: &View, tenant_id: &str) -> Result<pb::WebhookList> {
    Ok(pb::WebhookList {
        webhooks: outbox::webhooks(view, tenant_id)?
            .iter()
            .map(webhook_to_pb)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_config_asking_for_no_history_builds_a_tenant_with_none() {
        let c = crate::tenant_config::parse("t.yaml", "tenant_id: a\ncontext_turns: 0\n")
            .expect("the config parses");
        let tenant = c[0].tenant.clone().expect("a parsed config has a tenant");
        let record = super::build_tenant(tenant, None, 0).expect("the tenant builds");
        assert_eq!(record.limits.context_turns, 0);
        assert!(record.overridden.contains("context_turns"));
    }
}
