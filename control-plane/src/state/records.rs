//! The records the replicated state keeps (tenants, keys, usage, workers),
//! what a change to them looks like on the watch stream, and what a command
//! answers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::bursts::BurstRecord;
pub use crate::error::Rejection;
use crate::ledger::Allowance;
use crate::outbox::{DeliveryRecord, WebhookRecord};
use crate::plans::Features;
pub use crate::plans::Limits;
use crate::sessions::SessionRecord;
use crate::sharing::{ShareRecord, SnippetRecord};

use super::*;

/// A tenant as the control plane stores it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub display_name: String,
    pub plan: String,
    pub limits: Limits,
    pub model: String,
    pub adapter: String,
    pub adapter_scale: f32,
    pub system_prompt: String,
    pub welcome_message: String,
    pub quick_prompts: Vec<String>,
    pub time_zone: String,
    pub knowledge_share: bool,
    /// `en` or `zh-CN`; empty: English.
    #[serde(default)]
    pub locale: String,
    pub version: u64,
    pub created_at_ms: i64,
    /// What the plan gives, with this tenant's overrides.
    #[serde(default)]
    pub features: Features,
    /// Limits and features set for this tenant rather than taken from the plan.
    #[serde(default)]
    pub overridden: BTreeSet<String>,
}

impl TenantRecord {
    /// The fields an operator sets (everything but version and creation
    /// time) that differ between two records.
    pub fn differences(&self, other: &TenantRecord) -> Vec<&'static str> {
        let mut out = Vec::new();
        // Each field, named as it is spelled, in the order an operator reads them.
        macro_rules! check {
            ($a:expr, $b:expr; $($field:ident),+) => {
                $(if $a.$field != $b.$field {
                    out.push(stringify!($field));
                })+
            };
        }
        check!(self, other; display_name, plan);
        check!(
            self.limits, other.limits;
            daily_tokens, max_concurrent, max_request_tokens, context_window, context_turns
        );
        check!(
            self, other;
            model, adapter, adapter_scale, system_prompt, welcome_message, quick_prompts,
            time_zone, locale, knowledge_share, features, overridden
        );
        out
    }
}

/// An API key; the plaintext is never stored, only its SHA-256.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: i64,
    pub last_used_at_ms: i64,
    /// The user a user's key acts as; empty for a tenant-wide key.
    #[serde(default)]
    pub user_id: String,
}

/// One finished request's usage, as the worker reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub event_id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub gateway_id: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub duration_ms: u64,
    pub finished_at_ms: i64,
    /// The quota day the gateway admitted the request under; its usage is
    /// charged to that day (empty: the day it finished).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quota_day: String,
    /// The request's last user message, cut to [`PROMPT_PREVIEW_CHARS`];
    /// counted in [`PROMPTS`], not kept with the recent requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt_preview: String,
}

impl From<&bulkhead_proto::worker::UsageEvent> for UsageRecord {
    fn from(e: &bulkhead_proto::worker::UsageEvent) -> Self {
        Self {
            event_id: e.event_id.clone(),
            tenant_id: e.tenant_id.clone(),
            user_id: e.user_id.clone(),
            gateway_id: e.gateway_id.clone(),
            prompt_tokens: e.prompt_tokens.into(),
            completion_tokens: e.completion_tokens.into(),
            cached_tokens: e.cached_tokens.into(),
            duration_ms: e.duration_ms,
            finished_at_ms: e.finished_at_ms,
            quota_day: e.quota_day.clone(),
            prompt_preview: e
                .prompt_preview
                .chars()
                .take(PROMPT_PREVIEW_CHARS)
                .collect(),
        }
    }
}

/// How often one prompt (preview) was asked on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptCount {
    pub text: String,
    pub count: u64,
}

/// Per user and day totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTotals {
    pub tokens: u64,
    pub requests: u64,
}

/// Fields of a tenant to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantPatch {
    pub display_name: Option<String>,
    pub plan: Option<String>,
    pub limits: Limits,
    pub set_limits: LimitsMask,
    pub model: Option<String>,
    pub adapter: Option<String>,
    pub adapter_scale: Option<f32>,
    pub system_prompt: Option<String>,
    pub welcome_message: Option<String>,
    pub quick_prompts: Option<Vec<String>>,
    pub time_zone: Option<String>,
    pub knowledge_share: Option<bool>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub features: FeaturePatch,
}

/// Features of a tenant to override; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeaturePatch {
    pub burst: Option<bool>,
    pub burst_percent: Option<u32>,
    pub knowledge_sharing: Option<bool>,
    pub max_keys: Option<u32>,
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub kv_share_across_users: Option<bool>,
    #[serde(default)]
    pub storage_mb: Option<u32>,
}

/// Which fields of [`TenantPatch::limits`] are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsMask {
    pub daily_tokens: bool,
    pub max_concurrent: bool,
    pub max_request_tokens: bool,
    pub context_window: bool,
    pub context_turns: bool,
}

/// One tenant of a config apply: the record it should end up as, and the
/// webhook endpoints its file declares (ids and secrets filled in already).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantApply {
    pub source: String,
    pub tenant: TenantRecord,
    pub webhooks: Vec<WebhookRecord>,
}

/// What a config apply did to one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub tenant_id: String,
    pub source: String,
    /// `created`, `updated` or `unchanged`.
    pub action: String,
    pub changed: Vec<String>,
    pub new_webhooks: Vec<WebhookRecord>,
}

/// A worker that serves models, with its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub addr: String,
    pub models: Vec<String>,
    pub adapters: Vec<String>,
    pub slots: u32,
    pub expires_at_ms: i64,
    /// Models still loading, with their progress in thousandths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loading: Vec<(String, u16)>,
    /// Per loaded model, the most tokens one request may use there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_windows: BTreeMap<String, u32>,
    /// Accelerators, with their memory at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRecord>,
    /// Model files the worker may load on demand, with their bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, u64>,
    /// Per loaded model, the bytes of its weights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_bytes: BTreeMap<String, u64>,
    /// Loaded models kept whatever tenants use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
    /// The most bytes of weights the worker holds at once (0: no files to load).
    #[serde(default)]
    pub memory_budget: u64,
}

/// One accelerator of a worker, as `bulkhead.worker.v1.Device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub name: String,
    pub description: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// One entry of the watch stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    Tenant(TenantRecord),
    TenantDeleted(String),
    /// A created or revoked key (with its hash, for gateways to match).
    Key(KeyRecord),
    Worker(WorkerRecord),
    WorkerGone(String),
}

/// One session's turns in a [`Command::AppendTurnsBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAppend {
    pub tenant_id: String,
    pub session_id: String,
    pub user_id: String,
    pub turns: Vec<(String, String)>,
    /// Set: the session must be this user's (or new, and then it is).
    #[serde(default)]
    pub owner: String,
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    AdminInitialized(bool),
    Tenant(Box<TenantRecord>),
    Key(KeyRecord),
    Allowance(AllowanceView),
    UsageApplied {
        applied: u32,
        duplicates: u32,
    },
    Reclaimed(u32),
    /// The stored usage export key (hex).
    ExportKey(String),
    Worker(WorkerRecord),
    Session(SessionRecord),
    /// One reply per command of a batch, in order.
    Batch(Vec<Reply>),
    Applied(Vec<ApplyOutcome>),
    Burst(BurstRecord),
    Credential(crate::credentials::CredentialRecord),
    Webhook(WebhookRecord),
    Delivery(Option<DeliveryRecord>),
    Snippet(SnippetRecord),
    Share(ShareRecord),
    Shared {
        snippets: Vec<SnippetRecord>,
        refused: Option<String>,
    },
    Audit(crate::audit::AuditRecord),
    File(crate::files::FileRecord),
    Rejected(Rejection),
}

/// A gateway's allowance for a tenant, with the tenant's day around it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceView {
    pub tenant_id: String,
    pub gateway_id: String,
    pub allowance: Allowance,
    pub day: String,
    pub quota: u64,
    pub used: u64,
    pub outstanding: u64,
    pub max_concurrent: u32,
    pub resets_at_ms: i64,
    pub granted_tokens: u64,
    pub granted_slots: u32,
}
