//! The replicated state: what a [`Command`] does to the tables, and what it
//! answers. Every change to tenants, keys, the ledger and allowances is a
//! command in a Raft entry, applied here on every node in log order.
//!
//! `apply` must be deterministic: it reads no clock (the leader stamps
//! commands with `now_ms`), no randomness, nothing outside the tables. A
//! command that the state refuses (unknown tenant, duplicate id) is answered
//! with a [`Rejection`] and changes nothing; only storage failures are errors.
//! Usage events are applied exactly once: the event id is recorded in the same
//! transaction that moves the counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use bulkhead_proto::TenantId;

use crate::audit;
use crate::bursts::{self, BURST_DAYS, BURSTS, BurstRecord};
use crate::ledger::{self, Allowance, LedgerDay};
use crate::outbox::{self, AttemptRecord, DeliveryRecord, WEBHOOKS, WebhookRecord};
use crate::plans::{self, Features};
use crate::sessions::{SessionRecord, TenantScope};
use crate::sharing::{self, SHARES, SNIPPETS, ShareRecord, SnippetRecord};
use crate::store::{Tables, View};

pub const TENANTS: &str = "tenants";
pub const KEYS: &str = "keys";
pub const KEY_HASHES: &str = "key_hashes";
pub const LEDGER: &str = "ledger";
pub const ALLOWANCES: &str = "allowances";
pub const EVENTS: &str = "usage_events";
pub const USERS: &str = "usage_users";
pub const META: &str = "meta";
pub const WORKERS: &str = "workers";
/// The last requests of each tenant, for the dashboard.
pub const RECENT: &str = "recent_requests";
/// How many recent requests are kept per tenant.
pub const RECENT_KEPT: u64 = 100;
/// What changed, by version, for the watch stream.
pub const CHANGES: &str = "changes";
/// How many changes are kept for watchers that reconnect.
const CHANGES_KEPT: u64 = 10_000;
/// Replies of gateway calls by operation id, so a retried call applies once.
pub const OPS: &str = "gateway_ops";
/// How long an operation id is remembered.
const OP_MEMORY_MS: i64 = 3_600_000;

/// Prompt counts per tenant and day, keyed `tenant/day/<sha256 of the
/// preview>`: operator-only, never shown to a tenant.
pub const PROMPTS: &str = "usage_prompts";
/// The longest prompt preview kept, in characters.
pub const PROMPT_PREVIEW_CHARS: usize = 80;
/// The export key (hex) under which user ids are hashed for usage exports.
const EXPORT_KEY: &str = "usage_export_key";

/// Deleted tenant ids: their name is reused only by an explicit create.
pub const DELETED: &str = "deleted_tenants";

const ADMIN_HASH: &str = "admin_token_hash";
const VERSION: &str = "version";

/// Per-request and per-day limits of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub daily_tokens: u64,
    pub max_concurrent: u32,
    pub max_request_tokens: u32,
    pub context_window: u32,
    pub context_turns: u32,
}

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
        let mut check = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("display_name", self.display_name == other.display_name);
        check("plan", self.plan == other.plan);
        check(
            "daily_tokens",
            self.limits.daily_tokens == other.limits.daily_tokens,
        );
        check(
            "max_concurrent",
            self.limits.max_concurrent == other.limits.max_concurrent,
        );
        check(
            "max_request_tokens",
            self.limits.max_request_tokens == other.limits.max_request_tokens,
        );
        check(
            "context_window",
            self.limits.context_window == other.limits.context_window,
        );
        check(
            "context_turns",
            self.limits.context_turns == other.limits.context_turns,
        );
        check("model", self.model == other.model);
        check("adapter", self.adapter == other.adapter);
        check("adapter_scale", self.adapter_scale == other.adapter_scale);
        check("system_prompt", self.system_prompt == other.system_prompt);
        check(
            "welcome_message",
            self.welcome_message == other.welcome_message,
        );
        check("quick_prompts", self.quick_prompts == other.quick_prompts);
        check("time_zone", self.time_zone == other.time_zone);
        check(
            "knowledge_share",
            self.knowledge_share == other.knowledge_share,
        );
        check("features", self.features == other.features);
        check("overridden", self.overridden == other.overridden);
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

/// A change to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Sets the admin token's hash unless one is set already.
    InitAdmin {
        token_hash: String,
    },
    CreateTenant {
        tenant: TenantRecord,
    },
    UpdateTenant {
        id: String,
        patch: Box<TenantPatch>,
    },
    /// Removes a tenant after the leader archived it (`archive` names the file).
    DeleteTenant {
        id: String,
        #[serde(default)]
        archive: String,
        #[serde(default)]
        now_ms: i64,
    },
    /// An admin or tenant change, recorded in the audit trail (and sent to
    /// webhooks) with who made it, when it succeeds.
    Audited {
        actor: String,
        now_ms: i64,
        command: Box<Command>,
    },
    /// Creates or updates tenants from config files, all or nothing.
    ApplyTenants {
        tenants: Vec<TenantApply>,
    },
    RequestBurst {
        burst: BurstRecord,
    },
    DecideBurst {
        burst_id: String,
        approve: bool,
        note: String,
        decided_by: String,
        now_ms: i64,
    },
    CreateWebhook {
        webhook: WebhookRecord,
    },
    DeleteWebhook {
        webhook_id: String,
    },
    /// The leader's record of one delivery attempt.
    RecordAttempt {
        message_id: String,
        attempt: AttemptRecord,
    },
    PublishSnippet {
        snippet: SnippetRecord,
    },
    DeleteSnippet {
        tenant_id: String,
        name: String,
    },
    GrantShare {
        grant: ShareRecord,
    },
    RevokeShare {
        grant: ShareRecord,
    },
    /// A tenant's message names shared snippets: answers those it may read,
    /// or the first refusal, and records each use and refusal.
    UseShared {
        tenant_id: String,
        names: Vec<String>,
        actor: String,
        now_ms: i64,
    },
    CreateKey {
        key: KeyRecord,
    },
    RevokeKey {
        key_id: String,
        now_ms: i64,
    },
    Grant {
        tenant_id: String,
        gateway_id: String,
        tokens: u64,
        slots: u32,
        ttl_ms: u64,
        now_ms: i64,
        op_id: String,
    },
    Return {
        tenant_id: String,
        gateway_id: String,
        tokens: u64,
        slots: u32,
        now_ms: i64,
        op_id: String,
    },
    ApplyUsage {
        events: Vec<UsageRecord>,
    },
    /// Drops allowances that expired more than the reclaim grace ago, and
    /// workers whose lease lapsed.
    Reclaim {
        now_ms: i64,
    },
    /// Registers a worker or renews its lease.
    RegisterWorker {
        worker: WorkerRecord,
    },
    CreateSession {
        tenant_id: String,
        session: SessionRecord,
    },
    /// Appends turns, creating the session if it does not exist.
    AppendTurns {
        tenant_id: String,
        session_id: String,
        user_id: String,
        turns: Vec<(String, String)>,
        now_ms: i64,
    },
    /// Many `AppendTurns` in one entry (a gateway's group commit); each
    /// answers on its own, in order, in a `Reply::Batch`.
    AppendTurnsBatch {
        appends: Vec<TurnAppend>,
        now_ms: i64,
    },
    DeleteSession {
        tenant_id: String,
        session_id: String,
    },
    /// Drops turns past each tenant's retention (`retention_days`, from its
    /// plan unless overridden) and closed webhook deliveries past 30 days.
    PruneTurns {
        now_ms: i64,
    },
    /// Records when a key was last used.
    /// Stores the usage export key unless one is stored already; answers
    /// the stored key.
    SetExportKey {
        key_hex: String,
    },
    TouchKey {
        key_id: String,
        now_ms: i64,
    },
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

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitAdmin { .. } => write!(f, "init-admin"),
            Command::CreateTenant { tenant } => write!(f, "create-tenant {}", tenant.id),
            Command::UpdateTenant { id, .. } => write!(f, "update-tenant {id}"),
            Command::DeleteTenant { id, .. } => write!(f, "delete-tenant {id}"),
            Command::Audited { actor, command, .. } => write!(f, "{command} by {actor}"),
            Command::ApplyTenants { tenants } => write!(f, "apply-tenants x{}", tenants.len()),
            Command::RequestBurst { burst } => write!(f, "request-burst {}", burst.tenant_id),
            Command::DecideBurst { burst_id, .. } => write!(f, "decide-burst {burst_id}"),
            Command::CreateWebhook { webhook } => {
                write!(f, "create-webhook {}", webhook.webhook_id)
            }
            Command::DeleteWebhook { webhook_id } => write!(f, "delete-webhook {webhook_id}"),
            Command::RecordAttempt { message_id, .. } => write!(f, "record-attempt {message_id}"),
            Command::PublishSnippet { snippet } => write!(f, "publish-snippet {}", snippet.name),
            Command::DeleteSnippet { name, .. } => write!(f, "delete-snippet {name}"),
            Command::GrantShare { grant } => write!(f, "grant-share {}", grant.snippet),
            Command::RevokeShare { grant } => write!(f, "revoke-share {}", grant.snippet),
            Command::UseShared { tenant_id, .. } => write!(f, "use-shared {tenant_id}"),
            Command::CreateKey { key } => write!(f, "create-key {}", key.key_id),
            Command::RevokeKey { key_id, .. } => write!(f, "revoke-key {key_id}"),
            Command::Grant { tenant_id, .. } => write!(f, "grant {tenant_id}"),
            Command::Return { tenant_id, .. } => write!(f, "return {tenant_id}"),
            Command::ApplyUsage { events } => write!(f, "apply-usage x{}", events.len()),
            Command::Reclaim { .. } => write!(f, "reclaim"),
            Command::RegisterWorker { worker } => write!(f, "register-worker {}", worker.worker_id),
            Command::CreateSession { tenant_id, .. } => write!(f, "create-session {tenant_id}"),
            Command::AppendTurns { tenant_id, .. } => write!(f, "append-turns {tenant_id}"),
            Command::AppendTurnsBatch { appends, .. } => {
                write!(f, "append-turns-batch of {}", appends.len())
            }
            Command::DeleteSession { tenant_id, .. } => write!(f, "delete-session {tenant_id}"),
            Command::PruneTurns { .. } => write!(f, "prune-turns"),
            Command::TouchKey { key_id, .. } => write!(f, "touch-key {key_id}"),
            Command::SetExportKey { .. } => write!(f, "set-export-key"),
        }
    }
}

/// One session's turns in a [`Command::AppendTurnsBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAppend {
    pub tenant_id: String,
    pub session_id: String,
    pub user_id: String,
    pub turns: Vec<(String, String)>,
}

/// Why the state refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("tenant `{0}` already exists")]
    DuplicateTenant(String),
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("key `{0}` already exists")]
    DuplicateKey(String),
    #[error("unknown session `{0}`")]
    UnknownSession(String),
    #[error("session `{0}` already exists")]
    DuplicateSession(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The tenant's plan or state does not allow it.
    #[error("{0}")]
    NotAllowed(String),
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
    Webhook(WebhookRecord),
    Delivery(Option<DeliveryRecord>),
    Snippet(SnippetRecord),
    Share(ShareRecord),
    Shared {
        snippets: Vec<SnippetRecord>,
        refused: Option<String>,
    },
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

fn key2(a: &str, b: &str) -> String {
    format!("{a}/{b}")
}

fn change_key(version: u64) -> String {
    format!("{version:020}")
}

/// The version the next recorded change gets.
fn next_version(t: &Tables) -> io::Result<u64> {
    Ok(t.get::<u64>(META, VERSION)?.unwrap_or(0) + 1)
}

/// Records a change under the next version; watchers see changes in this order.
fn record_change(t: &Tables, change: Change) -> io::Result<u64> {
    let v = next_version(t)?;
    t.put(META, VERSION, &v)?;
    t.put(CHANGES, &change_key(v), &(v, change))?;
    if v > CHANGES_KEPT {
        t.delete(CHANGES, &change_key(v - CHANGES_KEPT))?;
    }
    Ok(v)
}

/// Applies one command. Only storage failures are errors.
pub fn apply(t: &Tables, command: Command) -> io::Result<Reply> {
    match command {
        Command::InitAdmin { token_hash } => {
            if t.get::<String>(META, ADMIN_HASH)?.is_some() {
                return Ok(Reply::AdminInitialized(false));
            }
            t.put(META, ADMIN_HASH, &token_hash)?;
            Ok(Reply::AdminInitialized(true))
        }
        Command::CreateTenant { mut tenant } => {
            if t.get::<TenantRecord>(TENANTS, &tenant.id)?.is_some() {
                return Ok(Reply::Rejected(Rejection::DuplicateTenant(tenant.id)));
            }
            t.delete(DELETED, &tenant.id)?;
            tenant.version = next_version(t)?;
            record_change(t, Change::Tenant(tenant.clone()))?;
            t.put(TENANTS, &tenant.id, &tenant)?;
            Ok(Reply::Tenant(Box::new(tenant)))
        }
        Command::UpdateTenant { id, patch } => {
            let Some(mut tenant) = t.get::<TenantRecord>(TENANTS, &id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(id)));
            };
            patch.apply_to(&mut tenant);
            tenant.version = next_version(t)?;
            record_change(t, Change::Tenant(tenant.clone()))?;
            t.put(TENANTS, &id, &tenant)?;
            Ok(Reply::Tenant(Box::new(tenant)))
        }
        Command::DeleteTenant {
            id,
            archive,
            now_ms,
        } => {
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
            let prefix = format!("{id}/");
            for table in [ALLOWANCES, LEDGER, USERS, RECENT, BURST_DAYS, PROMPTS] {
                t.delete_prefix(table, &prefix)?;
            }
            record_change(t, Change::TenantDeleted(id))?;
            Ok(Reply::Tenant(Box::new(tenant)))
        }
        Command::CreateKey { key } => {
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &key.tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(key.tenant_id)));
            };
            let max = tenant.features.max_keys;
            let active = t
                .scan::<KeyRecord>(KEYS, "")?
                .iter()
                .filter(|(_, k)| k.tenant_id == key.tenant_id && k.revoked_at_ms == 0)
                .count();
            if max > 0 && active >= max as usize {
                return Ok(Reply::Rejected(Rejection::NotAllowed(format!(
                    "tenant `{}` already has {active} active keys, the most its plan `{}` allows (max_keys {max}); revoke one first",
                    key.tenant_id, tenant.plan
                ))));
            }
            if t.get::<KeyRecord>(KEYS, &key.key_id)?.is_some()
                || t.get::<String>(KEY_HASHES, &key.hash)?.is_some()
            {
                return Ok(Reply::Rejected(Rejection::DuplicateKey(key.key_id)));
            }
            t.put(KEYS, &key.key_id, &key)?;
            t.put(KEY_HASHES, &key.hash, &key.key_id)?;
            record_change(t, Change::Key(key.clone()))?;
            Ok(Reply::Key(key))
        }
        Command::RevokeKey { key_id, now_ms } => {
            let Some(mut key) = t.get::<KeyRecord>(KEYS, &key_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownKey(key_id)));
            };
            if key.revoked_at_ms == 0 {
                key.revoked_at_ms = now_ms;
                t.put(KEYS, &key_id, &key)?;
                record_change(t, Change::Key(key.clone()))?;
            }
            Ok(Reply::Key(key))
        }
        Command::Grant {
            tenant_id,
            gateway_id,
            tokens,
            slots,
            ttl_ms,
            now_ms,
            op_id,
        } => once(t, &gateway_id, &op_id, now_ms, |t| {
            grant(t, &tenant_id, &gateway_id, tokens, slots, ttl_ms, now_ms)
        }),
        Command::Return {
            tenant_id,
            gateway_id,
            tokens,
            slots,
            now_ms,
            op_id,
        } => once(t, &gateway_id, &op_id, now_ms, |t| {
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            let akey = key2(&tenant_id, &gateway_id);
            let mut mine = t.get::<Allowance>(ALLOWANCES, &akey)?.unwrap_or_default();
            mine.tokens = mine.tokens.saturating_sub(tokens);
            mine.slots = mine.slots.saturating_sub(slots);
            if mine.tokens == 0 && mine.slots == 0 {
                t.delete(ALLOWANCES, &akey)?;
            } else {
                t.put(ALLOWANCES, &akey, &mine)?;
            }
            Ok(Reply::Allowance(view_allowance(
                t,
                &tenant,
                &gateway_id,
                mine,
                now_ms,
                0,
                0,
            )?))
        }),
        Command::ApplyUsage { events } => apply_usage(t, events),
        Command::SetExportKey { key_hex } => {
            if let Some(stored) = t.get::<String>(META, EXPORT_KEY)? {
                return Ok(Reply::ExportKey(stored));
            }
            t.put(META, EXPORT_KEY, &key_hex)?;
            Ok(Reply::ExportKey(key_hex))
        }
        Command::CreateSession { tenant_id, session } => {
            let Some(scope) = scope(t, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            if scope.session(&session.session_id)?.is_some() {
                return Ok(Reply::Rejected(Rejection::DuplicateSession(
                    session.session_id,
                )));
            }
            scope.put_session(&session)?;
            Ok(Reply::Session(session))
        }
        Command::AppendTurns {
            tenant_id,
            session_id,
            user_id,
            turns,
            now_ms,
        } => {
            let Some(scope) = scope(t, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            let session = match scope.session(&session_id)? {
                Some(s) => s,
                None => SessionRecord {
                    title: turns
                        .iter()
                        .find(|(role, _)| role == "user")
                        .map(|(_, c)| c.chars().take(60).collect())
                        .unwrap_or_default(),
                    session_id,
                    user_id,
                    created_at_ms: now_ms,
                    updated_at_ms: now_ms,
                    turns: 0,
                },
            };
            Ok(Reply::Session(scope.append(session, turns, now_ms)?))
        }
        Command::AppendTurnsBatch { appends, now_ms } => Ok(Reply::Batch(
            appends
                .into_iter()
                .map(|a| {
                    apply(
                        t,
                        Command::AppendTurns {
                            tenant_id: a.tenant_id,
                            session_id: a.session_id,
                            user_id: a.user_id,
                            turns: a.turns,
                            now_ms,
                        },
                    )
                })
                .collect::<io::Result<_>>()?,
        )),
        Command::DeleteSession {
            tenant_id,
            session_id,
        } => {
            let Some(scope) = scope(t, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            let Some(session) = scope.session(&session_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownSession(session_id)));
            };
            scope.delete_session(&session_id)?;
            Ok(Reply::Session(session))
        }
        Command::PruneTurns { now_ms } => {
            let mut n = outbox::prune(t, now_ms)?;
            for (_, tenant) in t.scan::<TenantRecord>(TENANTS, "")? {
                if let Some(scope) = scope(t, &tenant.id)? {
                    let days = match tenant.features.retention_days {
                        0 => plans::default_features(&tenant.plan).map_or(30, |f| f.retention_days),
                        d => d,
                    };
                    n += scope.prune(now_ms - i64::from(days) * 86_400_000)?;
                }
            }
            Ok(Reply::Reclaimed(u32::try_from(n).unwrap_or(u32::MAX)))
        }
        Command::TouchKey { key_id, now_ms } => {
            let Some(mut key) = t.get::<KeyRecord>(KEYS, &key_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownKey(key_id)));
            };
            // Not a change watchers need: only the dashboard shows it.
            key.last_used_at_ms = key.last_used_at_ms.max(now_ms);
            t.put(KEYS, &key_id, &key)?;
            Ok(Reply::Key(key))
        }
        Command::RegisterWorker { worker } => {
            let before = t.get::<WorkerRecord>(WORKERS, &worker.worker_id)?;
            t.put(WORKERS, &worker.worker_id, &worker)?;
            // A renewal that changes nothing but the lease is not news to watchers.
            let same = before.is_some_and(|b| {
                WorkerRecord {
                    expires_at_ms: worker.expires_at_ms,
                    ..b
                } == worker
            });
            if !same {
                record_change(t, Change::Worker(worker.clone()))?;
            }
            Ok(Reply::Worker(worker))
        }
        Command::Audited {
            actor,
            now_ms,
            command,
        } => {
            let reply = apply(t, (*command).clone())?;
            if !matches!(reply, Reply::Rejected(_)) {
                for c in consequences(&command, &reply) {
                    if let Some(tenant) = &c.audit_in {
                        audit::append(t, tenant, now_ms, &actor, &c.action, c.detail.clone())?;
                    }
                    if let Some(event) = c.event {
                        outbox::emit(t, &c.tenant_id, event, c.detail, now_ms)?;
                    }
                }
            }
            Ok(reply)
        }
        Command::ApplyTenants { tenants } => apply_tenants(t, tenants),
        Command::RequestBurst { burst } => {
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &burst.tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(burst.tenant_id)));
            };
            if !tenant.features.burst {
                return Ok(Reply::Rejected(Rejection::NotAllowed(format!(
                    "tenant `{}` is on plan `{}`, which does not include burst requests (enterprise does)",
                    tenant.id, tenant.plan
                ))));
            }
            let day_key = key2(&burst.tenant_id, &burst.day);
            if let Some(open) = t.get::<String>(BURST_DAYS, &day_key)? {
                return Ok(Reply::Rejected(Rejection::Conflict(format!(
                    "tenant `{}` already has burst `{open}` for {}; one burst per day",
                    tenant.id, burst.day
                ))));
            }
            t.put(BURST_DAYS, &day_key, &burst.burst_id)?;
            t.put(BURSTS, &burst.burst_id, &burst)?;
            Ok(Reply::Burst(burst))
        }
        Command::DecideBurst {
            burst_id,
            approve,
            note,
            decided_by,
            now_ms,
        } => {
            let Some(mut b) = t.get::<BurstRecord>(BURSTS, &burst_id)? else {
                return Ok(Reply::Rejected(Rejection::NotFound(format!(
                    "unknown burst `{burst_id}`"
                ))));
            };
            if b.status != "pending" {
                return Ok(Reply::Rejected(Rejection::Conflict(format!(
                    "burst `{burst_id}` was already {}",
                    b.status
                ))));
            }
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &b.tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(b.tenant_id)));
            };
            let (today, _) = ledger::day_of(now_ms, &tenant.time_zone);
            if approve && today != b.day {
                return Ok(Reply::Rejected(Rejection::NotAllowed(format!(
                    "burst `{burst_id}` was for {}, which has ended; the tenant can ask again today",
                    b.day
                ))));
            }
            b.status = if approve { "approved" } else { "denied" }.into();
            b.decided_at_ms = now_ms;
            b.decided_by = decided_by;
            b.note = note;
            if approve {
                b.extra_tokens = bursts::extra_tokens(tenant.limits.daily_tokens, b.percent);
            } else {
                // A denied burst does not hold the day: the tenant may ask again.
                t.delete(BURST_DAYS, &key2(&b.tenant_id, &b.day))?;
            }
            t.put(BURSTS, &burst_id, &b)?;
            if approve {
                // Gateways refetch the tenant and see the new quota at once.
                let mut tenant = tenant;
                tenant.version = next_version(t)?;
                record_change(t, Change::Tenant(tenant.clone()))?;
                t.put(TENANTS, &tenant.id, &tenant)?;
            }
            Ok(Reply::Burst(b))
        }
        Command::CreateWebhook { webhook } => {
            if !webhook.tenant_id.is_empty()
                && t.get::<TenantRecord>(TENANTS, &webhook.tenant_id)?
                    .is_none()
            {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(webhook.tenant_id)));
            }
            if t.get::<WebhookRecord>(WEBHOOKS, &webhook.webhook_id)?
                .is_some()
            {
                return Ok(Reply::Rejected(Rejection::Conflict(format!(
                    "webhook `{}` already exists",
                    webhook.webhook_id
                ))));
            }
            t.put(WEBHOOKS, &webhook.webhook_id, &webhook)?;
            Ok(Reply::Webhook(webhook))
        }
        Command::DeleteWebhook { webhook_id } => {
            let Some(w) = t.get::<WebhookRecord>(WEBHOOKS, &webhook_id)? else {
                return Ok(Reply::Rejected(Rejection::NotFound(format!(
                    "unknown webhook `{webhook_id}`"
                ))));
            };
            t.delete(WEBHOOKS, &webhook_id)?;
            Ok(Reply::Webhook(w))
        }
        Command::RecordAttempt {
            message_id,
            attempt,
        } => Ok(Reply::Delivery(outbox::record_attempt(
            t,
            &message_id,
            attempt,
        )?)),
        Command::PublishSnippet { snippet } => {
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &snippet.tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(snippet.tenant_id)));
            };
            if !tenant.knowledge_share {
                return Ok(Reply::Rejected(Rejection::NotAllowed(format!(
                    "tenant `{}` does not share knowledge (set knowledge_share: true first)",
                    tenant.id
                ))));
            }
            if let Some(other) = t.get::<SnippetRecord>(SNIPPETS, &snippet.name)?
                && other.tenant_id != snippet.tenant_id
            {
                return Ok(Reply::Rejected(Rejection::Conflict(format!(
                    "another tenant already publishes a snippet named `{}`",
                    snippet.name
                ))));
            }
            t.put(SNIPPETS, &snippet.name, &snippet)?;
            Ok(Reply::Snippet(snippet))
        }
        Command::DeleteSnippet { tenant_id, name } => {
            match t.get::<SnippetRecord>(SNIPPETS, &name)? {
                Some(s) if s.tenant_id == tenant_id => {
                    t.delete(SNIPPETS, &name)?;
                    Ok(Reply::Snippet(s))
                }
                _ => Ok(Reply::Rejected(Rejection::NotFound(format!(
                    "tenant `{tenant_id}` has no snippet `{name}`"
                )))),
            }
        }
        Command::GrantShare { grant } => {
            for id in [&grant.owner_tenant_id, &grant.grantee_tenant_id] {
                if t.get::<TenantRecord>(TENANTS, id)?.is_none() {
                    return Ok(Reply::Rejected(Rejection::UnknownTenant(id.clone())));
                }
            }
            if grant.snippet != "*" {
                match t.get::<SnippetRecord>(SNIPPETS, &grant.snippet)? {
                    Some(s) if s.tenant_id == grant.owner_tenant_id => {}
                    _ => {
                        return Ok(Reply::Rejected(Rejection::NotFound(format!(
                            "tenant `{}` has no snippet `{}`",
                            grant.owner_tenant_id, grant.snippet
                        ))));
                    }
                }
            }
            t.put(
                SHARES,
                &sharing::share_key(
                    &grant.owner_tenant_id,
                    &grant.snippet,
                    &grant.grantee_tenant_id,
                ),
                &grant,
            )?;
            Ok(Reply::Share(grant))
        }
        Command::RevokeShare { grant } => {
            let key = sharing::share_key(
                &grant.owner_tenant_id,
                &grant.snippet,
                &grant.grantee_tenant_id,
            );
            match t.get::<ShareRecord>(SHARES, &key)? {
                Some(g) => {
                    t.delete(SHARES, &key)?;
                    Ok(Reply::Share(g))
                }
                None => Ok(Reply::Rejected(Rejection::NotFound(format!(
                    "no grant of `{}` from `{}` to `{}`",
                    grant.snippet, grant.owner_tenant_id, grant.grantee_tenant_id
                )))),
            }
        }
        Command::UseShared {
            tenant_id,
            names,
            actor,
            now_ms,
        } => {
            if t.get::<TenantRecord>(TENANTS, &tenant_id)?.is_none() {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            }
            let mut snippets = Vec::new();
            let mut refused = None;
            for name in names {
                match sharing::may_read(t, &tenant_id, &name)? {
                    Ok(s) => {
                        let detail = serde_json::json!({
                            "snippet": name, "owner": s.tenant_id, "reader": tenant_id,
                        });
                        audit::append(t, &tenant_id, now_ms, &actor, "share.used", detail.clone())?;
                        if s.tenant_id != tenant_id {
                            audit::append(
                                t,
                                &s.tenant_id,
                                now_ms,
                                &actor,
                                "share.read_by",
                                detail,
                            )?;
                        }
                        snippets.push(s);
                    }
                    Err(why) => {
                        audit::append(
                            t,
                            &tenant_id,
                            now_ms,
                            &actor,
                            "share.refused",
                            serde_json::json!({ "snippet": name, "reason": why }),
                        )?;
                        refused = Some(why);
                        break;
                    }
                }
            }
            if refused.is_some() {
                snippets.clear();
            }
            Ok(Reply::Shared { snippets, refused })
        }
        Command::Reclaim { now_ms } => {
            for (okey, op) in t.scan::<OpRecord>(OPS, "")? {
                if op.at_ms + OP_MEMORY_MS < now_ms {
                    t.delete(OPS, &okey)?;
                }
            }
            for (id, w) in t.scan::<WorkerRecord>(WORKERS, "")? {
                if w.expires_at_ms < now_ms {
                    t.delete(WORKERS, &id)?;
                    record_change(t, Change::WorkerGone(id))?;
                }
            }
            let mut n = 0;
            for (akey, a) in t.scan::<Allowance>(ALLOWANCES, "")? {
                if a.expires_at_ms + ledger::RECLAIM_GRACE_MS < now_ms {
                    t.delete(ALLOWANCES, &akey)?;
                    n += 1;
                }
            }
            Ok(Reply::Reclaimed(n))
        }
    }
}

/// What an audited change leaves behind: an audit record, and maybe a
/// webhook event with the same detail.
struct Consequence {
    /// The tenant the event is about.
    tenant_id: String,
    /// The chain the audit record goes to (`None`: no record).
    audit_in: Option<String>,
    action: String,
    detail: serde_json::Value,
    event: Option<&'static str>,
}

fn tenant_detail(t: &TenantRecord) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": t.id,
        "plan": t.plan,
        "daily_tokens": t.limits.daily_tokens,
        "max_concurrent": t.limits.max_concurrent,
        "version": t.version,
    })
}

/// The audit records and webhook events of a successful admin change.
fn consequences(command: &Command, reply: &Reply) -> Vec<Consequence> {
    let one = |tenant: &str, action: &str, detail: serde_json::Value, event| Consequence {
        tenant_id: tenant.to_owned(),
        audit_in: Some(if tenant.is_empty() {
            audit::CLUSTER_CHAIN.to_owned()
        } else {
            tenant.to_owned()
        }),
        action: action.to_owned(),
        detail,
        event,
    };
    match (command, reply) {
        (Command::CreateTenant { .. }, Reply::Tenant(t)) => {
            vec![one(
                &t.id,
                "tenant.created",
                tenant_detail(t),
                Some("tenant.created"),
            )]
        }
        (Command::UpdateTenant { patch, .. }, Reply::Tenant(t)) => {
            let mut d = tenant_detail(t);
            d["patch"] = serde_json::to_value(patch).unwrap_or_default();
            vec![one(&t.id, "tenant.updated", d, Some("tenant.updated"))]
        }
        (Command::DeleteTenant { archive, .. }, Reply::Tenant(t)) => {
            // The webhook event went out before the tenant's endpoints did.
            let mut d = tenant_detail(t);
            d["archive"] = archive.clone().into();
            vec![one(&t.id, "tenant.deleted", d, None)]
        }
        (Command::CreateKey { .. }, Reply::Key(k)) | (Command::RevokeKey { .. }, Reply::Key(k)) => {
            let created = matches!(command, Command::CreateKey { .. });
            let action = if created {
                "key.created"
            } else {
                "key.revoked"
            };
            let d = serde_json::json!({
                "tenant_id": k.tenant_id, "key_id": k.key_id, "name": k.name, "prefix": k.prefix,
            });
            vec![one(&k.tenant_id, action, d, Some(action))]
        }
        (Command::ApplyTenants { .. }, Reply::Applied(outcomes)) => outcomes
            .iter()
            .filter(|o| o.action != "unchanged")
            .map(|o| {
                let action = if o.action == "created" {
                    "tenant.created"
                } else {
                    "tenant.updated"
                };
                let d = serde_json::json!({
                    "tenant_id": o.tenant_id, "source": o.source, "changed": o.changed,
                });
                one(&o.tenant_id, action, d, Some(action))
            })
            .collect(),
        (Command::RequestBurst { .. }, Reply::Burst(b))
        | (Command::DecideBurst { .. }, Reply::Burst(b)) => {
            let action = match b.status.as_str() {
                "approved" => "burst.approved",
                "denied" => "burst.denied",
                _ => "burst.requested",
            };
            let d = serde_json::to_value(b).unwrap_or_default();
            vec![one(&b.tenant_id, action, d, Some(action))]
        }
        (Command::CreateWebhook { .. }, Reply::Webhook(w))
        | (Command::DeleteWebhook { .. }, Reply::Webhook(w)) => {
            let action = if matches!(command, Command::CreateWebhook { .. }) {
                "webhook.created"
            } else {
                "webhook.deleted"
            };
            let d = serde_json::json!({
                "webhook_id": w.webhook_id, "url": w.url, "events": w.events,
            });
            vec![one(&w.tenant_id, action, d, None)]
        }
        (Command::PublishSnippet { .. }, Reply::Snippet(s))
        | (Command::DeleteSnippet { .. }, Reply::Snippet(s)) => {
            let action = if matches!(command, Command::PublishSnippet { .. }) {
                "snippet.published"
            } else {
                "snippet.deleted"
            };
            let d = serde_json::json!({ "snippet": s.name, "bytes": s.content.len() });
            vec![one(&s.tenant_id, action, d, None)]
        }
        (Command::GrantShare { .. }, Reply::Share(g))
        | (Command::RevokeShare { .. }, Reply::Share(g)) => {
            let action = if matches!(command, Command::GrantShare { .. }) {
                "share.granted"
            } else {
                "share.revoked"
            };
            let d = serde_json::to_value(g).unwrap_or_default();
            vec![
                one(&g.owner_tenant_id, action, d.clone(), None),
                one(&g.grantee_tenant_id, action, d, None),
            ]
        }
        _ => Vec::new(),
    }
}

/// Creates or updates the tenants of a config apply; refuses the whole apply
/// (changing nothing) when one of them cannot be applied.
fn apply_tenants(t: &Tables, tenants: Vec<TenantApply>) -> io::Result<Reply> {
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

/// A tenant's quota on `day`: its daily tokens plus an approved burst's.
pub(crate) fn quota_on(
    t: &impl crate::store::Lookup,
    tenant: &TenantRecord,
    day: &str,
) -> io::Result<u64> {
    Ok(tenant.limits.daily_tokens + bursts::extra_on(t, &tenant.id, day)?)
}

/// Sends `quota.low` (under 10% left) and `quota.exhausted` once per tenant
/// and day; the flags live in the ledger day, so a new leader does not
/// send them again.
fn quota_events(
    t: &Tables,
    tenant: &TenantRecord,
    (day, quota): (&str, u64),
    l: &mut LedgerDay,
    outstanding: u64,
    now_ms: i64,
) -> io::Result<()> {
    let committed = l.used.saturating_add(outstanding);
    let remaining = quota.saturating_sub(l.used);
    let data = || {
        serde_json::json!({
            "tenant_id": tenant.id, "day": day, "quota": quota, "used": l.used,
            "remaining": remaining,
        })
    };
    if !l.low_notified && remaining.saturating_mul(10) < quota {
        l.low_notified = true;
        outbox::emit(t, &tenant.id, "quota.low", data(), now_ms)?;
    }
    if !l.exhausted_notified && committed >= quota {
        l.exhausted_notified = true;
        outbox::emit(t, &tenant.id, "quota.exhausted", data(), now_ms)?;
    }
    Ok(())
}

/// The session handle of an existing tenant, or `None`.
fn scope<'a, 't>(t: &'a Tables<'t>, tenant_id: &str) -> io::Result<Option<TenantScope<'a, 't>>> {
    if t.get::<TenantRecord>(TENANTS, tenant_id)?.is_none() {
        return Ok(None);
    }
    Ok(TenantId::new(tenant_id)
        .ok()
        .map(|id| TenantScope::new(t, &id)))
}

/// A remembered gateway operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpRecord {
    at_ms: i64,
    reply: Reply,
}

/// Applies `f` once per (gateway, op id); a repeat answers the first reply.
fn once(
    t: &Tables,
    gateway_id: &str,
    op_id: &str,
    now_ms: i64,
    f: impl FnOnce(&Tables) -> io::Result<Reply>,
) -> io::Result<Reply> {
    if op_id.is_empty() {
        return f(t);
    }
    let okey = key2(gateway_id, op_id);
    if let Some(op) = t.get::<OpRecord>(OPS, &okey)? {
        return Ok(op.reply);
    }
    let reply = f(t)?;
    t.put(
        OPS,
        &okey,
        &OpRecord {
            at_ms: now_ms,
            reply: reply.clone(),
        },
    )?;
    Ok(reply)
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
        set(&mut tenant.knowledge_share, &self.knowledge_share);
        // A value set here becomes the tenant's own (overridden).
        let (l, m, f) = (&self.limits, &self.set_limits, &self.features);
        let (limits, features, o) = (
            &mut tenant.limits,
            &mut tenant.features,
            &mut tenant.overridden,
        );
        own(
            o,
            "daily_tokens",
            &mut limits.daily_tokens,
            m.daily_tokens.then_some(l.daily_tokens),
        );
        own(
            o,
            "max_concurrent",
            &mut limits.max_concurrent,
            m.max_concurrent.then_some(l.max_concurrent),
        );
        own(
            o,
            "max_request_tokens",
            &mut limits.max_request_tokens,
            m.max_request_tokens.then_some(l.max_request_tokens),
        );
        own(
            o,
            "context_window",
            &mut limits.context_window,
            m.context_window.then_some(l.context_window),
        );
        own(
            o,
            "context_turns",
            &mut limits.context_turns,
            m.context_turns.then_some(l.context_turns),
        );
        own(o, "burst", &mut features.burst, f.burst);
        own(
            o,
            "burst_percent",
            &mut features.burst_percent,
            f.burst_percent,
        );
        own(
            o,
            "knowledge_sharing",
            &mut features.knowledge_sharing,
            f.knowledge_sharing,
        );
        own(o, "max_keys", &mut features.max_keys, f.max_keys);
        own(
            o,
            "retention_days",
            &mut features.retention_days,
            f.retention_days,
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
fn own<T>(overridden: &mut BTreeSet<String>, name: &str, field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
        overridden.insert(name.to_owned());
    }
}

/// Tokens outstanding for `day` and slots held, over every gateway of a tenant.
fn outstanding(t: &Tables, tenant_id: &str, day: &str) -> io::Result<(u64, u32)> {
    let all = t.scan::<Allowance>(ALLOWANCES, &format!("{tenant_id}/"))?;
    Ok(all.iter().fold((0, 0), |(tok, sl), (_, a)| {
        (tok + a.tokens_on(day), sl + a.slots)
    }))
}

fn grant(
    t: &Tables,
    tenant_id: &str,
    gateway_id: &str,
    tokens: u64,
    slots: u32,
    ttl_ms: u64,
    now_ms: i64,
) -> io::Result<Reply> {
    let Some(tenant) = t.get::<TenantRecord>(TENANTS, tenant_id)? else {
        return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id.into())));
    };
    let (day, _) = ledger::day_of(now_ms, &tenant.time_zone);
    let akey = key2(tenant_id, gateway_id);
    let stored = t.get::<Allowance>(ALLOWANCES, &akey)?.unwrap_or_default();
    let (total_tokens, total_slots) = outstanding(t, tenant_id, &day)?;
    let others_tokens = total_tokens - stored.tokens_on(&day);
    let others_slots = total_slots.saturating_sub(stored.slots);
    let mut mine = stored;
    if mine.day != day {
        // Tokens granted for an earlier day are void; slots carry over.
        mine.tokens = 0;
        mine.day = day.clone();
    }
    let lkey = key2(tenant_id, &day);
    let mut l = t.get::<LedgerDay>(LEDGER, &lkey)?.unwrap_or_default();
    let used = l.used;
    let quota = quota_on(t, &tenant, &day)?;
    let granted_tokens = tokens.min(ledger::grantable(quota, used, others_tokens + mine.tokens));
    if tokens > granted_tokens && !l.exhausted_notified {
        // Asked for more than is left: everything is used or promised.
        quota_events(
            t,
            &tenant,
            (&day, quota),
            &mut l,
            quota.saturating_sub(used),
            now_ms,
        )?;
        t.put(LEDGER, &lkey, &l)?;
    }
    let granted_slots = slots.min(ledger::grantable_slots(
        tenant.limits.max_concurrent,
        others_slots + mine.slots,
    ));
    mine.tokens += granted_tokens;
    mine.slots += granted_slots;
    let ttl = i64::try_from(ttl_ms.min(ledger::MAX_ALLOWANCE_TTL_MS)).unwrap_or(0);
    mine.expires_at_ms = now_ms + ttl;
    t.put(ALLOWANCES, &akey, &mine)?;
    Ok(Reply::Allowance(view_allowance(
        t,
        &tenant,
        gateway_id,
        mine,
        now_ms,
        granted_tokens,
        granted_slots,
    )?))
}

fn view_allowance(
    t: &Tables,
    tenant: &TenantRecord,
    gateway_id: &str,
    allowance: Allowance,
    now_ms: i64,
    granted_tokens: u64,
    granted_slots: u32,
) -> io::Result<AllowanceView> {
    let (day, resets_at_ms) = ledger::day_of(now_ms, &tenant.time_zone);
    let used = t
        .get::<LedgerDay>(LEDGER, &key2(&tenant.id, &day))?
        .unwrap_or_default()
        .used;
    let (outstanding, _) = outstanding(t, &tenant.id, &day)?;
    Ok(AllowanceView {
        tenant_id: tenant.id.clone(),
        gateway_id: gateway_id.to_owned(),
        allowance,
        quota: quota_on(t, tenant, &day)?,
        day,
        used,
        outstanding,
        max_concurrent: tenant.limits.max_concurrent,
        resets_at_ms,
        granted_tokens,
        granted_slots,
    })
}

fn apply_usage(t: &Tables, events: Vec<UsageRecord>) -> io::Result<Reply> {
    let (mut applied, mut duplicates) = (0, 0);
    let mut tenants: BTreeMap<String, Option<TenantRecord>> = BTreeMap::new();
    // Each tenant's quota per day, read once per batch.
    let mut quotas: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in events {
        if e.event_id.is_empty() || t.get::<String>(EVENTS, &e.event_id)?.is_some() {
            duplicates += 1;
            continue;
        }
        if !tenants.contains_key(&e.tenant_id) {
            let r = t.get::<TenantRecord>(TENANTS, &e.tenant_id)?;
            tenants.insert(e.tenant_id.clone(), r);
        }
        let Some(tenant) = tenants.get(&e.tenant_id).and_then(Option::as_ref) else {
            // A deleted tenant's late usage: remembered, so it is not
            // counted if the id is created again, but charged to no one.
            t.put(EVENTS, &e.event_id, &String::new())?;
            duplicates += 1;
            continue;
        };
        let (day, _) = ledger::day_of(e.finished_at_ms, &tenant.time_zone);
        t.put(EVENTS, &e.event_id, &day)?;
        let total = e.prompt_tokens + e.completion_tokens;
        let lkey = key2(&e.tenant_id, &day);
        let mut l = t.get::<LedgerDay>(LEDGER, &lkey)?.unwrap_or_default();
        l.used += total;
        l.prompt_tokens += e.prompt_tokens;
        l.completion_tokens += e.completion_tokens;
        l.cached_tokens += e.cached_tokens;
        l.requests += 1;
        l.total_latency_ms += e.duration_ms;
        l.max_latency_ms = l.max_latency_ms.max(e.duration_ms);
        l.record_latency(e.duration_ms);
        if !(l.low_notified && l.exhausted_notified) {
            let quota = match quotas.get(&(tenant.id.clone(), day.clone())) {
                Some(q) => *q,
                None => {
                    let q = quota_on(t, tenant, &day)?;
                    quotas.insert((tenant.id.clone(), day.clone()), q);
                    q
                }
            };
            quota_events(t, tenant, (&day, quota), &mut l, 0, e.finished_at_ms)?;
        }
        t.put(LEDGER, &lkey, &l)?;
        if !e.gateway_id.is_empty() {
            // The tokens move from the admitting gateway's outstanding grant to used.
            let akey = key2(&e.tenant_id, &e.gateway_id);
            if let Some(mut a) = t.get::<Allowance>(ALLOWANCES, &akey)?
                && a.day == day
            {
                a.tokens = a.tokens.saturating_sub(total);
                t.put(ALLOWANCES, &akey, &a)?;
            }
        }
        let seq_key = format!("recent_seq/{}", e.tenant_id);
        let seq = t.get::<u64>(META, &seq_key)?.unwrap_or(0) + 1;
        t.put(META, &seq_key, &seq)?;
        if !e.prompt_preview.is_empty() {
            let pkey = format!(
                "{}/{day}/{}",
                e.tenant_id,
                crate::service::hash_secret(&e.prompt_preview)
            );
            let mut p = t
                .get::<PromptCount>(PROMPTS, &pkey)?
                .unwrap_or_else(|| PromptCount {
                    text: e.prompt_preview.clone(),
                    count: 0,
                });
            p.count += 1;
            t.put(PROMPTS, &pkey, &p)?;
        }
        let kept = UsageRecord {
            prompt_preview: String::new(),
            ..e.clone()
        };
        t.put(RECENT, &format!("{}/{seq:012}", e.tenant_id), &kept)?;
        if seq > RECENT_KEPT {
            t.delete(
                RECENT,
                &format!("{}/{:012}", e.tenant_id, seq - RECENT_KEPT),
            )?;
        }
        if !e.user_id.is_empty() {
            let ukey = format!("{}/{day}/{}", e.tenant_id, e.user_id);
            let mut u = t.get::<UserTotals>(USERS, &ukey)?.unwrap_or_default();
            u.tokens += total;
            u.requests += 1;
            t.put(USERS, &ukey, &u)?;
        }
        applied += 1;
    }
    Ok(Reply::UsageApplied {
        applied,
        duplicates,
    })
}

// ------------------------------------------------------------------ queries

/// Read-side queries on a [`View`].
impl View {
    pub fn admin_hash(&self) -> io::Result<Option<String>> {
        self.get(META, ADMIN_HASH)
    }

    pub fn tenant(&self, id: &str) -> io::Result<Option<TenantRecord>> {
        self.get(TENANTS, id)
    }

    pub fn tenants(&self) -> io::Result<Vec<TenantRecord>> {
        Ok(self
            .scan::<TenantRecord>(TENANTS, "")?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub fn keys_of(&self, tenant_id: &str) -> io::Result<Vec<KeyRecord>> {
        Ok(self
            .scan::<KeyRecord>(KEYS, "")?
            .into_iter()
            .map(|(_, k)| k)
            .filter(|k| k.tenant_id == tenant_id)
            .collect())
    }

    pub fn key_by_hash(&self, hash: &str) -> io::Result<Option<KeyRecord>> {
        match self.get::<String>(KEY_HASHES, hash)? {
            Some(key_id) => self.get(KEYS, &key_id),
            None => Ok(None),
        }
    }

    pub fn key(&self, key_id: &str) -> io::Result<Option<KeyRecord>> {
        self.get(KEYS, key_id)
    }

    /// The ledger days of a tenant, newest first.
    pub fn ledger_days(&self, tenant_id: &str) -> io::Result<Vec<(String, LedgerDay)>> {
        let prefix = format!("{tenant_id}/");
        let mut days: Vec<(String, LedgerDay)> = self
            .scan::<LedgerDay>(LEDGER, &prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect();
        days.reverse();
        Ok(days)
    }

    /// One ledger day of a tenant.
    pub fn ledger_day(&self, tenant_id: &str, day: &str) -> io::Result<Option<LedgerDay>> {
        self.get(LEDGER, &key2(tenant_id, day))
    }

    /// A tenant's most recent requests, newest first.
    pub fn recent(&self, tenant_id: &str) -> io::Result<Vec<UsageRecord>> {
        let mut all: Vec<UsageRecord> = self
            .scan::<UsageRecord>(RECENT, &format!("{tenant_id}/"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        all.reverse();
        Ok(all)
    }

    /// Allowances of a tenant by gateway.
    pub fn allowances(&self, tenant_id: &str) -> io::Result<Vec<(String, Allowance)>> {
        let prefix = format!("{tenant_id}/");
        Ok(self
            .scan::<Allowance>(ALLOWANCES, &prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect())
    }

    /// Per-user totals of a tenant over the given days.
    pub fn users(&self, tenant_id: &str, days: &[String]) -> io::Result<Vec<(String, UserTotals)>> {
        let mut totals: BTreeMap<String, UserTotals> = BTreeMap::new();
        for day in days {
            let prefix = format!("{tenant_id}/{day}/");
            for (k, u) in self.scan::<UserTotals>(USERS, &prefix)? {
                let e = totals.entry(k[prefix.len()..].to_owned()).or_default();
                e.tokens += u.tokens;
                e.requests += u.requests;
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// The `limit` most frequent prompts of a tenant over the given days,
    /// most frequent first (ties by text). Operator-only.
    pub fn top_prompts(
        &self,
        tenant_id: &str,
        days: &[String],
        limit: usize,
    ) -> io::Result<Vec<PromptCount>> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for day in days {
            for (_, p) in self.scan::<PromptCount>(PROMPTS, &format!("{tenant_id}/{day}/"))? {
                *counts.entry(p.text).or_default() += p.count;
            }
        }
        let mut all: Vec<PromptCount> = counts
            .into_iter()
            .map(|(text, count)| PromptCount { text, count })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
        all.truncate(limit);
        Ok(all)
    }

    /// The usage export key (hex), once one is stored.
    pub fn export_key(&self) -> io::Result<Option<String>> {
        self.get(META, EXPORT_KEY)
    }

    /// The version of the last change.
    pub fn version(&self) -> io::Result<u64> {
        Ok(self.get::<u64>(META, VERSION)?.unwrap_or(0))
    }

    /// Changes after `version`, oldest first, or `None` when some of them
    /// are no longer kept (the watcher must resync).
    pub fn changes_after(&self, version: u64) -> io::Result<Option<Vec<(u64, Change)>>> {
        let current = self.version()?;
        if version >= current {
            return Ok(Some(Vec::new()));
        }
        if self
            .get::<(u64, Change)>(CHANGES, &change_key(version + 1))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(
            self.scan_from::<(u64, Change)>(CHANGES, &change_key(version + 1))?
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        ))
    }

    pub fn all_keys(&self) -> io::Result<Vec<KeyRecord>> {
        Ok(self
            .scan::<KeyRecord>(KEYS, "")?
            .into_iter()
            .map(|(_, k)| k)
            .collect())
    }

    pub fn workers(&self) -> io::Result<Vec<WorkerRecord>> {
        Ok(self
            .scan::<WorkerRecord>(WORKERS, "")?
            .into_iter()
            .map(|(_, w)| w)
            .collect())
    }

    /// Allowances past their reclaim time.
    pub fn reclaimable(&self, now_ms: i64) -> io::Result<usize> {
        Ok(self
            .scan::<Allowance>(ALLOWANCES, "")?
            .iter()
            .filter(|(_, a)| a.expires_at_ms + ledger::RECLAIM_GRACE_MS < now_ms)
            .count()
            + self
                .workers()?
                .iter()
                .filter(|w| w.expires_at_ms < now_ms)
                .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StateMachine, with_tables};

    const DAY_MS: i64 = 86_400_000;
    // 2026-11-26T12:00:00Z
    const NOW: i64 = 1_795_694_400_000;

    fn open() -> (tempfile::TempDir, StateMachine) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, sm) = crate::store::open(&dir.path().join("cp.redb")).expect("open");
        (dir, sm)
    }

    fn run(sm: &StateMachine, command: Command) -> Reply {
        with_tables(sm, |t| apply(t, command)).expect("apply")
    }

    fn admin(command: Command) -> Command {
        Command::Audited {
            actor: "admin".into(),
            now_ms: NOW,
            command: Box::new(command),
        }
    }

    fn tenant(id: &str, plan: &str, daily: u64) -> TenantRecord {
        let mut t = TenantRecord {
            id: id.into(),
            plan: plan.into(),
            ..Default::default()
        };
        t.limits.daily_tokens = daily;
        t.overridden.insert("daily_tokens".into());
        plans::follow_plan(plan, &t.overridden.clone(), &mut t.limits, &mut t.features);
        t
    }

    fn usage(id: &str, tenant: &str, tokens: u64) -> UsageRecord {
        UsageRecord {
            event_id: id.into(),
            tenant_id: tenant.into(),
            completion_tokens: tokens,
            finished_at_ms: NOW,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_of_appends_answers_each_and_the_last_turns_read_back_in_order() {
        let (_dir, sm) = open();
        run(
            &sm,
            Command::CreateTenant {
                tenant: tenant("acme", "basic", 1_000),
            },
        );
        let append = |tenant: &str, session: &str, text: &str| TurnAppend {
            tenant_id: tenant.into(),
            session_id: session.into(),
            user_id: String::new(),
            turns: vec![
                ("user".into(), format!("{text}?")),
                ("assistant".into(), format!("{text}!")),
            ],
        };
        let reply = run(
            &sm,
            Command::AppendTurnsBatch {
                appends: (0..30)
                    .map(|i| append("acme", "long", &i.to_string()))
                    .chain([append("nobody", "s", "x"), append("acme", "short", "only")])
                    .collect(),
                now_ms: NOW,
            },
        );
        let Reply::Batch(replies) = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(replies.len(), 32);
        assert!(matches!(&replies[29], Reply::Session(s) if s.turns == 60));
        assert_eq!(
            replies[30],
            Reply::Rejected(Rejection::UnknownTenant("nobody".into()))
        );
        assert!(matches!(&replies[31], Reply::Session(s) if s.turns == 2));
        let view = sm.view().expect("view");
        let acme = TenantId::new("acme").expect("id");
        let scoped = crate::sessions::TenantView::new(&view, &acme);
        let text = |turns: Vec<crate::sessions::TurnRecord>| -> Vec<String> {
            turns.into_iter().map(|t| t.content).collect()
        };
        assert_eq!(
            text(scoped.turns("long", 3).expect("turns")),
            ["28!", "29?", "29!"]
        );
        assert_eq!(scoped.turns("long", 0).expect("turns").len(), 60);
        assert_eq!(
            text(scoped.turns("short", 10).expect("turns")),
            ["only?", "only!"]
        );
        assert!(scoped.turns("missing", 4).expect("turns").is_empty());
    }

    #[test]
    fn turns_are_kept_for_the_tenants_retention() {
        let (_dir, sm) = open();
        let mut short = tenant("short", "enterprise", 1_000);
        short.features.retention_days = 1;
        run(&sm, Command::CreateTenant { tenant: short });
        run(
            &sm,
            Command::CreateTenant {
                tenant: tenant("long", "basic", 1_000),
            },
        );
        for id in ["short", "long"] {
            run(
                &sm,
                Command::AppendTurns {
                    tenant_id: id.into(),
                    session_id: "s1".into(),
                    user_id: String::new(),
                    turns: vec![("user".into(), "hello".into())],
                    now_ms: NOW - 2 * DAY_MS,
                },
            );
        }
        run(&sm, Command::PruneTurns { now_ms: NOW });
        let view = sm.view().expect("view");
        let turns = |id: &str| {
            let tid = TenantId::new(id).expect("id");
            crate::sessions::TenantView::new(&view, &tid)
                .turns("s1", 0)
                .expect("turns")
                .len()
        };
        assert_eq!(
            turns("short"),
            0,
            "1 day of retention drops a 2-day-old turn"
        );
        assert_eq!(turns("long"), 1, "basic keeps 30 days");
    }

    #[test]
    fn quota_low_and_exhausted_fire_once_a_day_and_the_audit_chain_holds() {
        let (_dir, sm) = open();
        run(
            &sm,
            admin(Command::CreateTenant {
                tenant: tenant("acme", "pro", 1_000),
            }),
        );
        run(
            &sm,
            admin(Command::CreateWebhook {
                webhook: WebhookRecord {
                    webhook_id: "wh_1".into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "whsec_x".into(),
                    source: "admin".into(),
                    ..Default::default()
                },
            }),
        );
        let batches = [
            vec![usage("e1", "acme", 500)],
            vec![usage("e2", "acme", 420), usage("e1", "acme", 500)],
            vec![usage("e3", "acme", 10)],
            vec![usage("e4", "acme", 200), usage("e5", "acme", 1)],
        ];
        for b in batches {
            run(&sm, Command::ApplyUsage { events: b });
        }
        let view = sm.view().expect("view");
        let types: Vec<String> = outbox::deliveries(&view, "acme", "", 100)
            .expect("deliveries")
            .into_iter()
            .rev()
            .map(|d| d.event_type)
            .collect();
        // (tenant.created came before the endpoint existed.)
        assert_eq!(types, ["quota.low", "quota.exhausted"]);
        let v = audit::verify(&view, None).expect("verify");
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(v.chains, 2, "acme and the cluster chain (global webhook)");
    }

    #[test]
    fn prompts_and_latency_are_counted_per_day_and_go_with_the_tenant() {
        let (_dir, sm) = open();
        for id in ["acme", "beta"] {
            run(
                &sm,
                admin(Command::CreateTenant {
                    tenant: tenant(id, "pro", 100_000),
                }),
            );
        }
        let asked = |id: &str, tenant: &str, prompt: &str, ms: u64| UsageRecord {
            prompt_preview: prompt.into(),
            duration_ms: ms,
            ..usage(id, tenant, 10)
        };
        let events = vec![
            asked("e1", "acme", "hello", 30),
            asked("e2", "acme", "hello", 40),
            asked("e3", "acme", "other", 3_000),
            asked("e4", "beta", "hello", 30),
            // A replay counts nothing.
            asked("e1", "acme", "hello", 30),
        ];
        run(&sm, Command::ApplyUsage { events });
        let view = sm.view().expect("view");
        let days = ["2026-11-26".to_owned()];
        let top = view.top_prompts("acme", &days, 5).expect("top");
        let top: Vec<(&str, u64)> = top.iter().map(|p| (p.text.as_str(), p.count)).collect();
        assert_eq!(top, [("hello", 2), ("other", 1)]);
        assert_eq!(view.top_prompts("acme", &days, 1).expect("top").len(), 1);
        let l = view
            .ledger_day("acme", &days[0])
            .expect("day")
            .expect("day");
        assert_eq!(l.p95_latency_ms(), 3_200);
        // Recent requests do not keep the prompt.
        assert!(
            view.recent("acme")
                .expect("recent")
                .iter()
                .all(|r| r.prompt_preview.is_empty())
        );
        run(
            &sm,
            admin(Command::DeleteTenant {
                id: "acme".into(),
                archive: String::new(),
                now_ms: NOW,
            }),
        );
        let view = sm.view().expect("view");
        assert!(view.top_prompts("acme", &days, 5).expect("top").is_empty());
        assert_eq!(view.top_prompts("beta", &days, 5).expect("top").len(), 1);
    }

    #[test]
    fn the_export_key_is_stored_once() {
        let (_dir, sm) = open();
        let first = run(
            &sm,
            Command::SetExportKey {
                key_hex: "aa".repeat(32),
            },
        );
        let second = run(
            &sm,
            Command::SetExportKey {
                key_hex: "bb".repeat(32),
            },
        );
        assert!(matches!(first, Reply::ExportKey(ref k) if *k == "aa".repeat(32)));
        assert!(matches!(second, Reply::ExportKey(ref k) if *k == "aa".repeat(32)));
        let view = sm.view().expect("view");
        assert_eq!(view.export_key().expect("key"), Some("aa".repeat(32)));
    }

    #[test]
    fn a_deleted_tenants_own_endpoint_still_hears_of_the_deletion() {
        let (_dir, sm) = open();
        run(
            &sm,
            admin(Command::CreateTenant {
                tenant: tenant("acme", "pro", 1_000),
            }),
        );
        run(
            &sm,
            admin(Command::CreateWebhook {
                webhook: WebhookRecord {
                    webhook_id: "wh_acme".into(),
                    tenant_id: "acme".into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "whsec_acme".into(),
                    source: "admin".into(),
                    ..Default::default()
                },
            }),
        );
        run(
            &sm,
            admin(Command::DeleteTenant {
                id: "acme".into(),
                archive: "/data/archives/acme.jsonl".into(),
                now_ms: NOW,
            }),
        );
        let view = sm.view().expect("view");
        assert!(
            outbox::webhooks(&view, "acme")
                .expect("webhooks")
                .is_empty()
        );
        let sent = outbox::deliveries(&view, "acme", "", 10).expect("deliveries");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].event_type, "tenant.deleted");
        assert_eq!(
            sent[0].secret, "whsec_acme",
            "signed with the endpoint's secret"
        );
        let trail = audit::records(&view, "acme").expect("trail");
        let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            ["tenant.created", "webhook.created", "tenant.deleted"]
        );
    }

    #[test]
    fn a_config_apply_twice_changes_nothing_the_second_time() {
        let (_dir, sm) = open();
        let apply = |daily| Command::ApplyTenants {
            tenants: vec![TenantApply {
                source: "tenants/acme/config.yaml".into(),
                tenant: tenant("acme", "pro", daily),
                webhooks: Vec::new(),
            }],
        };
        let first = run(&sm, apply(5_000));
        let second = run(&sm, apply(5_000));
        let third = run(&sm, apply(6_000));
        let actions = |r: Reply| match r {
            Reply::Applied(o) => (o[0].action.clone(), o[0].changed.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(actions(first).0, "created");
        assert_eq!(actions(second), ("unchanged".to_owned(), Vec::new()));
        // The plan's request limit (16,384) is capped by the daily quota, so it follows it.
        assert_eq!(
            actions(third),
            (
                "updated".to_owned(),
                vec!["daily_tokens".to_owned(), "max_request_tokens".to_owned()]
            )
        );
    }
}
