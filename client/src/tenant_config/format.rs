//! The file format itself: the YAML fields a tenant config may have (unknown
//! ones refused), and their conversion into the `TenantConfig` message,
//! with model and adapter files resolved against the file's directory.

use std::fmt;
use std::path::{Path, PathBuf};

use bulkhead_proto::control as pb;
use serde::Deserialize;

use super::{ConfigError, LoadedConfig};

/// One tenant as its file writes it. `daily_quota` is the tenant's
/// `daily_tokens` and `plan_tier` its `plan` (either name is accepted: the
/// article bulkhead follows writes `plan_tier`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenantConfig {
    tenant_id: String,
    display_name: Option<String>,
    #[serde(alias = "plan_tier")]
    plan: Option<String>,
    #[serde(alias = "daily_tokens")]
    daily_quota: Option<u64>,
    max_concurrent: Option<u32>,
    max_request_tokens: Option<u32>,
    context_window: Option<u32>,
    context_turns: Option<u32>,
    /// A model a worker serves, by name.
    model: Option<String>,
    /// A GGUF file; its file stem is the model's name.
    model_path: Option<PathBuf>,
    adapter: Option<String>,
    adapter_path: Option<PathBuf>,
    adapter_scale: Option<f32>,
    system_prompt: Option<String>,
    welcome_message: Option<String>,
    #[serde(default)]
    quick_prompts: Vec<String>,
    time_zone: Option<String>,
    knowledge_share: Option<bool>,
    /// `en` or `zh-CN`: the language of the tenant's messages and console.
    locale: Option<String>,
    // Overrides of the plan's features.
    burst: Option<bool>,
    burst_percent: Option<u32>,
    knowledge_sharing: Option<bool>,
    max_keys: Option<u32>,
    retention_days: Option<u32>,
    /// Server-side tools (`[code_run]`); given, even empty, it overrides the plan's.
    tools: Option<Vec<String>>,
    /// Users of the tenant reuse each other's KV prefixes (off by default).
    kv_share_across_users: Option<bool>,
    /// MiB of uploaded files the tenant may keep.
    storage_mb: Option<u32>,
    #[serde(default)]
    webhooks: Vec<RawWebhookConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookConfig {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    secret: String,
}

impl fmt::Debug for RawWebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawWebhookConfig")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A config as read from a file: the message for `ApplyTenants`, and the
/// files it names (resolved against the file's directory), for `bulkhead up`
/// The name a model or adapter file is served under: its file stem.
pub(super) fn stem(source: &str, field: &str, path: &Path) -> Result<String, ConfigError> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ConfigError::invalid(source, field, format!("{} names no file", path.display()))
        })
}

pub(super) fn convert(
    source: &str,
    raw: RawTenantConfig,
    base: Option<&Path>,
) -> Result<LoadedConfig, ConfigError> {
    let resolve = |p: PathBuf| match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    if raw.tenant_id.trim().is_empty() {
        return Err(ConfigError::invalid(
            source,
            "tenant_id",
            "must not be empty",
        ));
    }
    // An explicit 0 in a file is a limit that cannot work, not a request for
    // the plan's default (context_turns: 0, no history, is a real value).
    for (field, value) in [
        ("daily_quota", raw.daily_quota),
        ("max_concurrent", raw.max_concurrent.map(u64::from)),
        ("max_request_tokens", raw.max_request_tokens.map(u64::from)),
        ("context_window", raw.context_window.map(u64::from)),
    ] {
        if value == Some(0) {
            return Err(ConfigError::invalid(
                source,
                field,
                "invalid limit: must be at least 1 (leave it out for the plan's default)",
            ));
        }
    }
    let (model, model_path) = match (raw.model, raw.model_path) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                source,
                "model_path",
                "give model (a served model's name) or model_path (a GGUF file), not both",
            ));
        }
        (Some(m), None) => (m, None),
        (None, Some(p)) => (stem(source, "model_path", &p)?, Some(resolve(p))),
        (None, None) => (String::new(), None),
    };
    let (adapter, adapter_path) = match (raw.adapter, raw.adapter_path) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                source,
                "adapter_path",
                "give adapter (a served adapter's name) or adapter_path (a GGUF file), not both",
            ));
        }
        (Some(a), None) => (a, None),
        (None, Some(p)) => (stem(source, "adapter_path", &p)?, Some(resolve(p))),
        (None, None) => (String::new(), None),
    };
    // The limits the file sets, so that a set 0 is not read as "the plan's".
    let overridden = [
        ("daily_tokens", raw.daily_quota.is_some()),
        ("max_concurrent", raw.max_concurrent.is_some()),
        ("max_request_tokens", raw.max_request_tokens.is_some()),
        ("context_window", raw.context_window.is_some()),
        ("context_turns", raw.context_turns.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| name.to_owned())
    .collect();
    let tenant = pb::Tenant {
        id: raw.tenant_id,
        overridden,
        display_name: raw.display_name.unwrap_or_default(),
        plan: raw.plan.unwrap_or_default(),
        limits: Some(pb::Limits {
            daily_tokens: raw.daily_quota.unwrap_or_default(),
            max_concurrent: raw.max_concurrent.unwrap_or_default(),
            max_request_tokens: raw.max_request_tokens.unwrap_or_default(),
            context_window: raw.context_window.unwrap_or_default(),
            context_turns: raw.context_turns.unwrap_or_default(),
        }),
        model,
        adapter,
        adapter_scale: raw.adapter_scale.unwrap_or_default(),
        system_prompt: raw.system_prompt.unwrap_or_default(),
        welcome_message: raw.welcome_message.unwrap_or_default(),
        quick_prompts: raw.quick_prompts,
        time_zone: raw.time_zone.unwrap_or_default(),
        knowledge_share: raw.knowledge_share.unwrap_or_default(),
        locale: raw.locale.unwrap_or_default(),
        feature_overrides: Some(pb::FeatureOverrides {
            burst: raw.burst,
            burst_percent: raw.burst_percent,
            knowledge_sharing: raw.knowledge_sharing,
            max_keys: raw.max_keys,
            retention_days: raw.retention_days,
            tools: raw.tools.map(|names| pb::ToolNames { names }),
            kv_share_across_users: raw.kv_share_across_users,
            storage_mb: raw.storage_mb,
        }),
        ..Default::default()
    };
    let webhooks = raw
        .webhooks
        .into_iter()
        .map(|w| pb::WebhookSpec {
            url: w.url,
            events: w.events,
            secret: w.secret,
        })
        .collect();
    Ok(LoadedConfig {
        config: pb::TenantConfig {
            source: source.to_owned(),
            tenant: Some(tenant),
            webhooks,
        },
        model_path,
        adapter_path,
    })
}
