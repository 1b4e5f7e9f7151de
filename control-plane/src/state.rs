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

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use bulkhead_proto::TenantId;

use crate::ledger::{self, Allowance, LedgerDay};
use crate::sessions::{SessionRecord, TenantScope};
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
        }
    }
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
    DeleteTenant {
        id: String,
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
    DeleteSession {
        tenant_id: String,
        session_id: String,
    },
    /// Drops turns past each tenant's plan retention.
    PruneTurns {
        now_ms: i64,
    },
    /// Records when a key was last used.
    TouchKey {
        key_id: String,
        now_ms: i64,
    },
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
            Command::DeleteTenant { id } => write!(f, "delete-tenant {id}"),
            Command::CreateKey { key } => write!(f, "create-key {}", key.key_id),
            Command::RevokeKey { key_id, .. } => write!(f, "revoke-key {key_id}"),
            Command::Grant { tenant_id, .. } => write!(f, "grant {tenant_id}"),
            Command::Return { tenant_id, .. } => write!(f, "return {tenant_id}"),
            Command::ApplyUsage { events } => write!(f, "apply-usage x{}", events.len()),
            Command::Reclaim { .. } => write!(f, "reclaim"),
            Command::RegisterWorker { worker } => write!(f, "register-worker {}", worker.worker_id),
            Command::CreateSession { tenant_id, .. } => write!(f, "create-session {tenant_id}"),
            Command::AppendTurns { tenant_id, .. } => write!(f, "append-turns {tenant_id}"),
            Command::DeleteSession { tenant_id, .. } => write!(f, "delete-session {tenant_id}"),
            Command::PruneTurns { .. } => write!(f, "prune-turns"),
            Command::TouchKey { key_id, .. } => write!(f, "touch-key {key_id}"),
        }
    }
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
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    AdminInitialized(bool),
    Tenant(Box<TenantRecord>),
    Key(KeyRecord),
    Allowance(AllowanceView),
    UsageApplied { applied: u32, duplicates: u32 },
    Reclaimed(u32),
    Worker(WorkerRecord),
    Session(SessionRecord),
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
        Command::DeleteTenant { id } => {
            let Some(tenant) = t.get::<TenantRecord>(TENANTS, &id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(id)));
            };
            t.delete(TENANTS, &id)?;
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
            for table in [ALLOWANCES, LEDGER, USERS] {
                t.delete_prefix(table, &prefix)?;
            }
            record_change(t, Change::TenantDeleted(id))?;
            Ok(Reply::Tenant(Box::new(tenant)))
        }
        Command::CreateKey { key } => {
            if t.get::<TenantRecord>(TENANTS, &key.tenant_id)?.is_none() {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(key.tenant_id)));
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
            let mut n = 0;
            for (_, tenant) in t.scan::<TenantRecord>(TENANTS, "")? {
                if let Some(scope) = scope(t, &tenant.id)? {
                    let days = crate::plans::retention_days(&tenant.plan);
                    n += scope.prune(now_ms - days * 86_400_000)?;
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
        let (l, m) = (&self.limits, &self.set_limits);
        if m.daily_tokens {
            tenant.limits.daily_tokens = l.daily_tokens;
        }
        if m.max_concurrent {
            tenant.limits.max_concurrent = l.max_concurrent;
        }
        if m.max_request_tokens {
            tenant.limits.max_request_tokens = l.max_request_tokens;
        }
        if m.context_window {
            tenant.limits.context_window = l.context_window;
        }
        if m.context_turns {
            tenant.limits.context_turns = l.context_turns;
        }
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
    let used = t
        .get::<LedgerDay>(LEDGER, &key2(tenant_id, &day))?
        .unwrap_or_default()
        .used;
    let granted_tokens = tokens.min(ledger::grantable(
        tenant.limits.daily_tokens,
        used,
        others_tokens + mine.tokens,
    ));
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
        day,
        quota: tenant.limits.daily_tokens,
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
    let mut zones: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        if e.event_id.is_empty() || t.get::<String>(EVENTS, &e.event_id)?.is_some() {
            duplicates += 1;
            continue;
        }
        let zone = match zones.get(&e.tenant_id) {
            Some(z) => z.clone(),
            None => {
                let z = t
                    .get::<TenantRecord>(TENANTS, &e.tenant_id)?
                    .map(|r| r.time_zone)
                    .unwrap_or_default();
                zones.insert(e.tenant_id.clone(), z.clone());
                z
            }
        };
        let (day, _) = ledger::day_of(e.finished_at_ms, &zone);
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
        t.put(RECENT, &format!("{}/{seq:012}", e.tenant_id), &e)?;
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
