//! The control plane's messages as the admin API's JSON.

use bulkhead_proto::control as pb;
use serde_json::{Value, json};

pub(super) fn cluster_json(s: &pb::ClusterState) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| json!({"id": n.id, "addr": n.addr, "voter": n.voter}))
        .collect();
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "last_applied": s.last_applied,
        "last_log_index": s.last_log_index,
        "nodes": nodes,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "state": s.state,
    })
}

pub(super) fn limits_json(l: Option<&pb::Limits>) -> Value {
    let l = l.cloned().unwrap_or_default();
    json!({
        "daily_tokens": l.daily_tokens,
        "max_concurrent": l.max_concurrent,
        "max_request_tokens": l.max_request_tokens,
        "context_window": l.context_window,
        "context_turns": l.context_turns,
    })
}

pub(super) fn features_json(f: Option<&pb::Features>) -> Value {
    let f = f.cloned().unwrap_or_default();
    json!({
        "burst": f.burst,
        "burst_percent": f.burst_percent,
        "knowledge_sharing": f.knowledge_sharing,
        "max_keys": f.max_keys,
        "retention_days": f.retention_days,
    })
}

/// Only the overrides that are set.
pub(super) fn feature_overrides_json(f: Option<&pb::FeatureOverrides>) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(f) = f {
        if let Some(v) = f.burst {
            out.insert("burst".into(), v.into());
        }
        if let Some(v) = f.burst_percent {
            out.insert("burst_percent".into(), v.into());
        }
        if let Some(v) = f.knowledge_sharing {
            out.insert("knowledge_sharing".into(), v.into());
        }
        if let Some(v) = f.max_keys {
            out.insert("max_keys".into(), v.into());
        }
        if let Some(v) = f.retention_days {
            out.insert("retention_days".into(), v.into());
        }
    }
    Value::Object(out)
}

/// An `f32` as the decimal it was written as (0.8, not 0.800000011920929).
pub(super) fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

pub(super) fn tenant_json(t: &pb::Tenant) -> Value {
    json!({
        "id": t.id,
        "display_name": t.display_name,
        "plan": t.plan,
        "limits": limits_json(t.limits.as_ref()),
        "model": t.model,
        "adapter": t.adapter,
        "adapter_scale": f32_json(t.adapter_scale),
        "system_prompt": t.system_prompt,
        "welcome_message": t.welcome_message,
        "quick_prompts": t.quick_prompts,
        "time_zone": t.time_zone,
        "knowledge_share": t.knowledge_share,
        "version": t.version,
        "created_at_ms": t.created_at_ms,
        "features": features_json(t.features.as_ref()),
        "feature_overrides": feature_overrides_json(t.feature_overrides.as_ref()),
        "overridden": t.overridden,
    })
}

pub(super) fn key_json(k: &pb::ApiKey) -> Value {
    json!({
        "key_id": k.key_id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at_ms": k.created_at_ms,
        "revoked_at_ms": k.revoked_at_ms,
        "last_used_at_ms": k.last_used_at_ms,
    })
}

pub(super) fn burst_json(b: &pb::Burst) -> Value {
    json!({
        "burst_id": b.burst_id,
        "tenant_id": b.tenant_id,
        "day": b.day,
        "reason": b.reason,
        "status": b.status,
        "percent": b.percent,
        "extra_tokens": b.extra_tokens,
        "requested_at_ms": b.requested_at_ms,
        "decided_at_ms": b.decided_at_ms,
        "requested_by": b.requested_by,
        "decided_by": b.decided_by,
        "note": b.note,
    })
}

pub(super) fn webhook_json(w: &pb::Webhook) -> Value {
    json!({
        "webhook_id": w.webhook_id,
        "tenant_id": w.tenant_id,
        "url": w.url,
        "events": w.events,
        "secret_prefix": w.secret_prefix,
        "created_at_ms": w.created_at_ms,
        "source": w.source,
    })
}

pub(super) fn created_webhook_json(w: &pb::CreatedWebhook) -> Value {
    json!({
        "webhook": w.webhook.as_ref().map_or(Value::Null, webhook_json),
        "secret": w.secret,
    })
}

pub(super) fn snippet_json(s: &pb::Snippet) -> Value {
    json!({
        "tenant_id": s.tenant_id,
        "name": s.name,
        "content": s.content,
        "updated_at_ms": s.updated_at_ms,
    })
}

pub(super) fn share_json(g: &pb::ShareGrant) -> Value {
    json!({
        "owner_tenant_id": g.owner_tenant_id,
        "snippet": g.snippet,
        "grantee_tenant_id": g.grantee_tenant_id,
        "created_at_ms": g.created_at_ms,
    })
}
