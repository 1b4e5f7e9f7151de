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

use std::io;

use bulkhead_proto::TenantId;

use crate::audit;
use crate::bursts::{self, BURST_DAYS, BURSTS, BurstRecord};
use crate::credentials;
use crate::files;
use crate::ledger::{self, Allowance};
use crate::outbox::{self, WEBHOOKS, WebhookRecord};
use crate::plans::{self};
use crate::sessions::{SessionRecord, TenantScope};
use crate::sharing::{self, SHARES, SNIPPETS, ShareRecord, SnippetRecord};
use crate::store::Tables;

mod allowances;
mod command;
mod consequences;
mod ops;
mod queries;
mod records;
mod retention;
mod tables;
mod tenants;

pub(crate) use allowances::quota_on;
use allowances::*;
pub use command::*;
use consequences::*;
use ops::*;
pub use records::*;
pub(crate) use retention::reclaimable;
use retention::*;
pub use tables::*;
use tenants::*;

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
        Command::RotateAdmin { token_hash } => {
            t.put(META, ADMIN_HASH, &token_hash)?;
            Ok(Reply::AdminInitialized(true))
        }
        Command::CreateCredential { credential } => {
            Ok(credential_reply(credentials::create(t, credential)?))
        }
        Command::RevokeCredential { credential, now_ms } => Ok(credential_reply(
            credentials::revoke(t, &credential, now_ms)?,
        )),
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
        } => delete_tenant(t, id, archive, now_ms),
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
        Command::ApplyUsage { events, now_ms } => apply_usage(t, events, now_ms),
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
            owner,
        } => {
            let Some(scope) = scope(t, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            let session = match scope.session(&session_id)? {
                Some(s) if !s.belongs_to(&owner) => {
                    return Ok(Reply::Rejected(Rejection::UnknownSession(session_id)));
                }
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
                            owner: a.owner,
                        },
                    )
                })
                .collect::<io::Result<_>>()?,
        )),
        Command::DeleteSession {
            tenant_id,
            session_id,
            owner,
        } => {
            let Some(scope) = scope(t, &tenant_id)? else {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            };
            let Some(session) = scope.session(&session_id)?.filter(|s| s.belongs_to(&owner)) else {
                return Ok(Reply::Rejected(Rejection::UnknownSession(session_id)));
            };
            scope.delete_session(&session_id)?;
            Ok(Reply::Session(session))
        }
        Command::PruneTurns { now_ms, limit } => prune(t, now_ms, limit),
        Command::PruneAudit { run, now_ms } => match audit::prune_archived(t, &run, now_ms)? {
            Some(n) => Ok(Reply::Reclaimed(u32::try_from(n).unwrap_or(u32::MAX))),
            None => Ok(Reply::Rejected(Rejection::Conflict(format!(
                "audit chain `{}` no longer holds record {} as it was archived",
                run.chain, run.through_seq
            )))),
        },
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
        Command::RecordToolStep {
            tenant_id,
            actor,
            now_ms,
            detail,
        } => {
            if t.get::<TenantRecord>(TENANTS, &tenant_id)?.is_none() {
                return Ok(Reply::Rejected(Rejection::UnknownTenant(tenant_id)));
            }
            let record = audit::append(t, &tenant_id, now_ms, &actor, "tool.run", detail)?;
            Ok(Reply::Audit(record))
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
                match sharing::may_read(t, &tenant_id, &name, |owner| {
                    Ok(t.get::<TenantRecord>(TENANTS, owner)?
                        .is_some_and(|o| o.knowledge_share))
                })? {
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
                        // The same words whatever the reason, naming only
                        // what the caller wrote: a refusal must not tell
                        // whether a snippet exists or whose it is (the
                        // audit trail keeps the reason for operators).
                        refused = Some(format!(
                            "shared snippet `{name}` is not available to tenant `{tenant_id}`"
                        ));
                        break;
                    }
                }
            }
            if refused.is_some() {
                snippets.clear();
            }
            Ok(Reply::Shared { snippets, refused })
        }
        Command::Reclaim { now_ms } => reclaim(t, now_ms),
        Command::PutFile {
            file,
            content_base64,
        } => files::apply_put(t, file, &content_base64),
        Command::DeleteFile {
            tenant_id,
            file_id,
            owner,
        } => files::apply_delete(t, &tenant_id, &file_id, &owner),
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

fn credential_reply(r: Result<credentials::CredentialRecord, Rejection>) -> Reply {
    r.map_or_else(Reply::Rejected, Reply::Credential)
}

#[cfg(test)]
mod tests;
