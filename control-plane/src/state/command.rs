//! [`Command`]: every change to the replicated state, as a Raft entry carries it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bursts::BurstRecord;
use crate::credentials::CredentialRecord;
use crate::outbox::{AttemptRecord, WebhookRecord};
use crate::sessions::SessionRecord;
use crate::sharing::{ShareRecord, SnippetRecord};

use super::*;

/// A change to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Sets the admin token's hash unless one is set already.
    InitAdmin {
        token_hash: String,
    },
    /// Replaces the admin token's hash.
    RotateAdmin {
        token_hash: String,
    },
    /// Stores a gateway's or worker's credential (hashed).
    CreateCredential {
        credential: CredentialRecord,
    },
    /// Revokes a credential in force, by id or name.
    RevokeCredential {
        credential: String,
        now_ms: i64,
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
    /// A server-side tool's run, for the tenant's audit trail (`tool.run`).
    RecordToolStep {
        tenant_id: String,
        actor: String,
        now_ms: i64,
        detail: serde_json::Value,
    },
    /// Stores an uploaded file if the tenant's storage has room
    /// ([`crate::files`]).
    PutFile {
        file: crate::files::FileRecord,
        content_base64: String,
    },
    /// Removes a file a caller limited to `owner` (empty: any) may reach.
    DeleteFile {
        tenant_id: String,
        file_id: String,
        owner: String,
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
        /// When the leader proposed it: events of a day past the dedup
        /// horizon are not counted (0: no such check, an older entry).
        #[serde(default)]
        now_ms: i64,
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
        /// Set: the session must be this user's (or new, and then it is).
        #[serde(default)]
        owner: String,
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
        /// Set: only a session of this user; another's is unknown.
        #[serde(default)]
        owner: String,
    },
    /// Drops turns past each tenant's retention (`retention_days`, from its
    /// plan unless overridden) and closed webhook deliveries past 30 days.
    PruneTurns {
        now_ms: i64,
        /// At most this many turns, sessions and event ids dropped (0, as in
        /// entries written before the limit: all).
        #[serde(default)]
        limit: u32,
    },
    /// Prunes a run of an audit chain the leader archived to a file; the
    /// chain keeps the run's last hash as its anchor (see `audit`).
    PruneAudit {
        run: crate::audit::ArchivedRun,
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

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitAdmin { .. } => write!(f, "init-admin"),
            Command::RotateAdmin { .. } => write!(f, "rotate-admin"),
            Command::CreateCredential { credential } => {
                write!(f, "create-credential {}", credential.name)
            }
            Command::RevokeCredential { credential, .. } => {
                write!(f, "revoke-credential {credential}")
            }
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
            Command::RecordToolStep { tenant_id, .. } => write!(f, "record-tool-step {tenant_id}"),
            Command::PutFile { file, .. } => write!(f, "put-file {}", file.file_id),
            Command::DeleteFile { file_id, .. } => write!(f, "delete-file {file_id}"),
            Command::CreateKey { key } => write!(f, "create-key {}", key.key_id),
            Command::RevokeKey { key_id, .. } => write!(f, "revoke-key {key_id}"),
            Command::Grant { tenant_id, .. } => write!(f, "grant {tenant_id}"),
            Command::Return { tenant_id, .. } => write!(f, "return {tenant_id}"),
            Command::ApplyUsage { events, .. } => write!(f, "apply-usage x{}", events.len()),
            Command::Reclaim { .. } => write!(f, "reclaim"),
            Command::RegisterWorker { worker } => write!(f, "register-worker {}", worker.worker_id),
            Command::CreateSession { tenant_id, .. } => write!(f, "create-session {tenant_id}"),
            Command::AppendTurns { tenant_id, .. } => write!(f, "append-turns {tenant_id}"),
            Command::AppendTurnsBatch { appends, .. } => {
                write!(f, "append-turns-batch of {}", appends.len())
            }
            Command::DeleteSession { tenant_id, .. } => write!(f, "delete-session {tenant_id}"),
            Command::PruneTurns { .. } => write!(f, "prune-turns"),
            Command::PruneAudit { run, .. } => {
                write!(f, "prune-audit {} through {}", run.chain, run.through_seq)
            }
            Command::TouchKey { key_id, .. } => write!(f, "touch-key {key_id}"),
            Command::SetExportKey { .. } => write!(f, "set-export-key"),
        }
    }
}
