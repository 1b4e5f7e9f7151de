//! Plan tiers and the default limits each gives a tenant created on it.

use crate::state::Limits;

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

/// Days a plan keeps session turns.
pub fn retention_days(plan: &str) -> i64 {
    match plan {
        "enterprise" => 365,
        "pro" => 90,
        _ => 30,
    }
}
