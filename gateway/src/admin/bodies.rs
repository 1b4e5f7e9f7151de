//! The request bodies and queries the admin API takes.

use bulkhead_proto::control as pb;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNode {
    pub(super) id: u64,
    pub(super) addr: String,
}

/// A new tenant: limits and features not given follow its plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    pub(super) id: String,
    #[serde(default)]
    pub(super) display_name: String,
    #[serde(default)]
    pub(super) plan: String,
    pub(super) limits: Option<pb::Limits>,
    #[serde(default)]
    pub(super) model: String,
    #[serde(default)]
    pub(super) adapter: String,
    #[serde(default)]
    pub(super) adapter_scale: f32,
    #[serde(default)]
    pub(super) system_prompt: String,
    #[serde(default)]
    pub(super) welcome_message: String,
    #[serde(default)]
    pub(super) quick_prompts: Vec<String>,
    #[serde(default)]
    pub(super) time_zone: String,
    #[serde(default)]
    pub(super) knowledge_share: bool,
    #[serde(default)]
    pub(super) locale: String,
    pub(super) feature_overrides: Option<pb::FeatureOverrides>,
}

/// A tenant patch: only the fields given change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct PatchBody {
    pub(super) id: Option<String>,
    pub(super) display_name: Option<String>,
    pub(super) plan: Option<String>,
    pub(super) daily_tokens: Option<u64>,
    pub(super) max_concurrent: Option<u32>,
    pub(super) max_request_tokens: Option<u32>,
    pub(super) context_window: Option<u32>,
    pub(super) context_turns: Option<u32>,
    pub(super) model: Option<String>,
    pub(super) adapter: Option<String>,
    pub(super) adapter_scale: Option<f32>,
    pub(super) system_prompt: Option<String>,
    pub(super) welcome_message: Option<String>,
    pub(super) quick_prompts: Option<Vec<String>>,
    pub(super) time_zone: Option<String>,
    pub(super) knowledge_share: Option<bool>,
    pub(super) locale: Option<String>,
    pub(super) features: Option<pb::FeatureOverrides>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct NewKey {
    pub(super) name: String,
    /// A user's key when set (see `key create --user`).
    #[serde(alias = "user")]
    pub(super) user_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct UsageQuery {
    pub(super) days: Option<u32>,
    pub(super) format: Option<String>,
    /// First day (YYYY-MM-DD); with `to`, replaces `days`.
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ExportQuery {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BurstAsk {
    pub(super) reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct BurstNote {
    pub(super) note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewWebhook {
    #[serde(default)]
    pub(super) tenant_id: String,
    pub(super) url: String,
    #[serde(default)]
    pub(super) events: Vec<String>,
    #[serde(default)]
    pub(super) secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SnippetBody {
    pub(super) content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShareBody {
    pub(super) owner_tenant_id: String,
    pub(super) snippet: String,
    pub(super) grantee_tenant_id: String,
}

impl From<ShareBody> for pb::ShareGrant {
    fn from(b: ShareBody) -> Self {
        Self {
            owner_tenant_id: b.owner_tenant_id,
            snippet: b.snippet,
            grantee_tenant_id: b.grantee_tenant_id,
            created_at_ms: 0,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ShareQuery {
    pub(super) owner_tenant_id: Option<String>,
    pub(super) snippet: Option<String>,
    pub(super) grantee_tenant_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuditQuery {
    pub(super) limit: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ConfigQuery {
    pub(super) source: Option<String>,
}

#[cfg(test)]
mod fuzz {
    use bulkhead_proto::fuzz;
    use proptest::prelude::*;

    use super::*;
    use crate::admin::extract::parse_json;

    const TENANT_FIELDS: &[&str] = &[
        "id",
        "display_name",
        "plan",
        "limits",
        "model",
        "adapter",
        "adapter_scale",
        "system_prompt",
        "welcome_message",
        "quick_prompts",
        "time_zone",
        "knowledge_share",
        "locale",
        "feature_overrides",
        "daily_tokens",
        "max_concurrent",
    ];

    /// A rejected body is a 400 that says what is wrong (`invalid_json`).
    fn rejected<T>(result: Result<T, crate::admin::GatewayError>) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            prop_assert_eq!(e.status().as_u16(), 400);
            prop_assert!(e.to_string().contains("JSON"), "{}", e);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(fuzz::config())]

        /// Any body for the admin routes that take JSON: parsed, or a 400
        /// naming the problem; never a panic.
        #[test]
        fn fuzz_admin_json_bodies(
            tenant in fuzz::body(fuzz::object_with(TENANT_FIELDS)),
            patch in fuzz::body(fuzz::object_with(TENANT_FIELDS)),
            other in fuzz::body(fuzz::json()),
        ) {
            rejected(parse_json::<NewTenant>(&tenant))?;
            rejected(parse_json::<PatchBody>(&patch))?;
            rejected(parse_json::<NewNode>(&other))?;
            rejected(parse_json::<NewKey>(&other))?;
            rejected(parse_json::<NewWebhook>(&other))?;
            rejected(parse_json::<SnippetBody>(&other))?;
            rejected(parse_json::<ShareBody>(&other))?;
            rejected(parse_json::<BurstAsk>(&other))?;
        }
    }
}
