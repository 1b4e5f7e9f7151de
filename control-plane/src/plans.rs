//! Plan tiers: the default limits and features each gives a tenant. A
//! tenant's own value of a limit or feature overrides its plan's; the others
//! follow the plan, also when the plan changes.

use serde::{Deserialize, Serialize};

/// Per-request and per-day limits of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub daily_tokens: u64,
    pub max_concurrent: u32,
    pub max_request_tokens: u32,
    pub context_window: u32,
    pub context_turns: u32,
}

/// What a plan allows a tenant to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// May ask for burst quota.
    pub burst: bool,
    /// How much an approved burst raises that day's quota, in percent.
    pub burst_percent: u32,
    /// May publish snippets for other tenants.
    pub knowledge_sharing: bool,
    /// Most keys that are not revoked.
    pub max_keys: u32,
    /// Days of session turns kept.
    pub retention_days: u32,
    /// Server-side tools the gateway runs for the tenant.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Requests of different users reuse each other's KV prefixes (and see
    /// them as `cached_tokens`); off, a user's requests reuse only their own.
    #[serde(default)]
    pub kv_share_across_users: bool,
    /// MiB of uploaded files (`/v1/files`) kept at once; 0: no uploads.
    #[serde(default)]
    pub storage_mb: u32,
}

/// Default features of a plan, or `None` for an unknown plan.
pub fn default_features(plan: &str) -> Option<Features> {
    Some(match plan {
        "basic" => Features {
            burst: false,
            burst_percent: 50,
            knowledge_sharing: false,
            max_keys: 2,
            retention_days: 30,
            tools: Vec::new(),
            kv_share_across_users: false,
            storage_mb: 16,
        },
        "pro" => Features {
            burst: false,
            burst_percent: 50,
            knowledge_sharing: true,
            max_keys: 10,
            retention_days: 90,
            tools: Vec::new(),
            kv_share_across_users: false,
            storage_mb: 256,
        },
        "enterprise" => Features {
            burst: true,
            burst_percent: 50,
            knowledge_sharing: true,
            max_keys: 100,
            retention_days: 365,
            tools: ["code_run", "file_parse", "sql_query"]
                .map(str::to_owned)
                .to_vec(),
            kv_share_across_users: false,
            storage_mb: 1024,
        },
        _ => return None,
    })
}

/// Puts the plan's value into every limit and feature not in `overridden`.
pub fn follow_plan(
    plan: &str,
    overridden: &std::collections::BTreeSet<String>,
    limits: &mut Limits,
    features: &mut Features,
) {
    let (Some(l), Some(f)) = (default_limits(plan), default_features(plan)) else {
        return;
    };
    // A plan's request limit never exceeds the tenant's daily quota.
    let daily = if overridden.contains("daily_tokens") {
        limits.daily_tokens
    } else {
        l.daily_tokens
    };
    let request = u32::try_from(u64::from(l.max_request_tokens).min(daily.max(1)))
        .unwrap_or(l.max_request_tokens);
    let o = overridden;
    fill(o, "daily_tokens", &mut limits.daily_tokens, l.daily_tokens);
    fill(
        o,
        "max_concurrent",
        &mut limits.max_concurrent,
        l.max_concurrent,
    );
    fill(
        o,
        "max_request_tokens",
        &mut limits.max_request_tokens,
        request,
    );
    fill(
        o,
        "context_window",
        &mut limits.context_window,
        l.context_window,
    );
    fill(
        o,
        "context_turns",
        &mut limits.context_turns,
        l.context_turns,
    );
    fill(o, "burst", &mut features.burst, f.burst);
    fill(
        o,
        "burst_percent",
        &mut features.burst_percent,
        f.burst_percent,
    );
    fill(
        o,
        "knowledge_sharing",
        &mut features.knowledge_sharing,
        f.knowledge_sharing,
    );
    fill(o, "max_keys", &mut features.max_keys, f.max_keys);
    fill(
        o,
        "retention_days",
        &mut features.retention_days,
        f.retention_days,
    );
    fill(o, "tools", &mut features.tools, f.tools);
    fill(
        o,
        "kv_share_across_users",
        &mut features.kv_share_across_users,
        f.kv_share_across_users,
    );
    fill(o, "storage_mb", &mut features.storage_mb, f.storage_mb);
}

/// Sets `field` to the plan's value unless the tenant overrides `name`.
fn fill<T>(overridden: &std::collections::BTreeSet<String>, name: &str, field: &mut T, plan: T) {
    if !overridden.contains(name) {
        *field = plan;
    }
}

/// Checks features a tenant would end up with; the message names the feature.
pub fn validate_features(f: &Features) -> Result<(), String> {
    if f.burst_percent == 0 || f.burst_percent > 1_000 {
        return Err(format!(
            "burst_percent must be between 1 and 1000, got {}",
            f.burst_percent
        ));
    }
    if f.max_keys == 0 {
        return Err("max_keys must be at least 1".into());
    }
    if let Some(unknown) = f
        .tools
        .iter()
        .find(|t| !bulkhead_proto::tools::SERVER_TOOLS.contains(&t.as_str()))
    {
        return Err(format!(
            "tools: no server-side tool `{unknown}` (there is {})",
            bulkhead_proto::tools::SERVER_TOOLS.join(", ")
        ));
    }
    if f.retention_days == 0 || f.retention_days > 3_650 {
        return Err(format!(
            "retention_days must be between 1 and 3650, got {}",
            f.retention_days
        ));
    }
    Ok(())
}

/// The plans a tenant can be on.
pub const PLANS: [&str; 3] = ["basic", "pro", "enterprise"];

/// Default limits of a plan, or `None` for an unknown plan.
pub fn default_limits(plan: &str) -> Option<Limits> {
    Some(match plan {
        "basic" => Limits {
            daily_tokens: 100_000,
            max_concurrent: 2,
            max_request_tokens: 4_096,
            context_window: 4_096,
            context_turns: 10,
        },
        "pro" => Limits {
            daily_tokens: 1_000_000,
            max_concurrent: 8,
            max_request_tokens: 16_384,
            context_window: 8_192,
            context_turns: 20,
        },
        "enterprise" => Limits {
            daily_tokens: 10_000_000,
            max_concurrent: 32,
            max_request_tokens: 65_536,
            context_window: 32_768,
            context_turns: 50,
        },
        _ => return None,
    })
}

/// Checks limits a tenant would end up with; the message names the limit.
pub fn validate(limits: &Limits) -> Result<(), String> {
    if limits.daily_tokens == 0 {
        return Err("daily_tokens must be at least 1".into());
    }
    if limits.max_concurrent == 0 {
        return Err("max_concurrent must be at least 1".into());
    }
    if limits.max_request_tokens == 0 {
        return Err("max_request_tokens must be at least 1".into());
    }
    if u64::from(limits.max_request_tokens) > limits.daily_tokens {
        return Err(format!(
            "max_request_tokens ({}) cannot exceed daily_tokens ({})",
            limits.max_request_tokens, limits.daily_tokens
        ));
    }
    if limits.context_window < 64 {
        return Err("context_window must be at least 64 tokens".into());
    }
    if limits.context_turns > 1_000 {
        return Err("context_turns must be at most 1000".into());
    }
    Ok(())
}
