//! The state's records as the wire's messages (one way: requests are
//! checked where they are handled).

use bulkhead_proto::control as pb;

use crate::admin::{self as adm};
use crate::sessions::SessionRecord;
use crate::state::{Change, DeviceRecord, KeyRecord, TenantRecord, WorkerRecord};

pub(crate) fn tenant_to_pb(t: TenantRecord) -> pb::Tenant {
    pb::Tenant {
        id: t.id,
        display_name: t.display_name,
        plan: t.plan,
        limits: Some(pb::Limits {
            daily_tokens: t.limits.daily_tokens,
            max_concurrent: t.limits.max_concurrent,
            max_request_tokens: t.limits.max_request_tokens,
            context_window: t.limits.context_window,
            context_turns: t.limits.context_turns,
        }),
        model: t.model,
        adapter: t.adapter,
        adapter_scale: t.adapter_scale,
        system_prompt: t.system_prompt,
        welcome_message: t.welcome_message,
        quick_prompts: t.quick_prompts,
        time_zone: t.time_zone,
        knowledge_share: t.knowledge_share,
        locale: t.locale,
        version: t.version,
        created_at_ms: t.created_at_ms,
        features: Some(adm::features_to_pb(&t.features)),
        feature_overrides: None,
        overridden: t.overridden.into_iter().collect(),
    }
}

pub(super) fn key_to_pb(k: KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id,
        tenant_id: k.tenant_id,
        name: k.name,
        prefix: k.prefix,
        created_at_ms: k.created_at_ms,
        revoked_at_ms: k.revoked_at_ms,
        last_used_at_ms: k.last_used_at_ms,
        user_id: k.user_id,
    }
}

pub(super) fn allowance_to_pb(a: crate::state::AllowanceView) -> pb::Allowance {
    let applied_tokens = if a.allowance.day == a.day {
        a.allowance.applied
    } else {
        0
    };
    pb::Allowance {
        tenant_id: a.tenant_id,
        gateway_id: a.gateway_id,
        tokens: a.allowance.tokens,
        slots: a.allowance.slots,
        expires_at_ms: a.allowance.expires_at_ms,
        day: a.day,
        quota: a.quota,
        used: a.used,
        outstanding: a.outstanding,
        max_concurrent: a.max_concurrent,
        resets_at_ms: a.resets_at_ms,
        granted_tokens: a.granted_tokens,
        granted_slots: a.granted_slots,
        applied_tokens,
    }
}

/// A load fraction (0.0 to 1.0; anything else is clamped) in thousandths.
pub(super) fn permille(progress: f32) -> u16 {
    // In 0..=1000 after the clamp, so the cast cannot truncate; a NaN casts to 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let p = (progress.clamp(0.0, 1.0) * 1000.0).round() as u16;
    p
}

/// A worker's registration as `$to` (the record or the message): the fields
/// both spell alike, moved or collected, with `$device` for each device; the
/// caller gives the load and the lease, which the two spell differently.
macro_rules! worker_as {
    ($w:ident => $($to:ident)::+, $($device:ident)::+ { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        $($to)::+ {
            worker_id: $w.worker_id,
            addr: $w.addr,
            models: $w.models,
            adapters: $w.adapters,
            slots: $w.slots,
            context_windows: $w.context_windows.into_iter().collect(),
            devices: $w
                .devices
                .into_iter()
                .map(|d| $($device)::+ {
                    name: d.name,
                    description: d.description,
                    memory_total_bytes: d.memory_total_bytes,
                    memory_free_bytes: d.memory_free_bytes,
                })
                .collect(),
            files: $w.files.into_iter().collect(),
            model_bytes: $w.model_bytes.into_iter().collect(),
            pinned: $w.pinned,
            memory_budget: $w.memory_budget,
            $($field $(: $value)?,)*
        }
    };
}

pub(super) fn worker_to_pb(w: WorkerRecord) -> pb::WorkerInfo {
    worker_as!(w => pb::WorkerInfo, bulkhead_proto::worker::Device {
        expires_at_ms: w.expires_at_ms,
        loading: w
            .loading
            .into_iter()
            .map(|(model, permille)| pb::ModelLoad {
                model,
                progress: f32::from(permille) / 1000.0,
            })
            .collect(),
    })
}

/// A registration as the registry keeps it, its lease ending at `expires_at_ms`.
pub(super) fn worker_from_pb(w: pb::WorkerInfo, expires_at_ms: i64) -> WorkerRecord {
    worker_as!(w => WorkerRecord, DeviceRecord {
        expires_at_ms,
        loading: w
            .loading
            .into_iter()
            .map(|l| (l.model, permille(l.progress)))
            .collect(),
    })
}

pub(super) fn key_state(k: KeyRecord) -> pb::KeyState {
    let hash = k.hash.clone();
    pb::KeyState {
        key: Some(key_to_pb(k)),
        hash,
    }
}

pub(super) fn change_to_pb(version: u64, change: Change) -> pb::WatchEvent {
    use pb::watch_event::Change as C;
    pb::WatchEvent {
        version,
        reset: false,
        change: Some(match change {
            Change::Tenant(t) => C::Tenant(tenant_to_pb(t)),
            Change::TenantDeleted(id) => C::TenantDeleted(id),
            Change::Key(k) => C::Key(key_state(k)),
            Change::Worker(w) => C::Worker(worker_to_pb(w)),
            Change::WorkerGone(id) => C::WorkerGone(id),
        }),
    }
}

pub(super) fn session_to_pb(tenant_id: &str, s: SessionRecord) -> pb::Session {
    pb::Session {
        tenant_id: tenant_id.to_owned(),
        session_id: s.session_id,
        title: s.title,
        user_id: s.user_id,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        turns: s.turns,
    }
}
