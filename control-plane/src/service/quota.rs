//! The quota ledger's calls: allowances granted to and returned by
//! gateways, usage reported, and usage reports and exports.

use std::collections::BTreeMap;

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use crate::error::ControlPlaneError;
use crate::ledger;
use crate::state::{AllowanceView, Command, Reply, TenantRecord, UsageRecord};
use crate::store::View;

use super::*;

impl ControlPlaneService {
    pub(super) async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::Allowance> {
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        bulkhead_proto::GatewayId::new(r.gateway_id.as_str())
            .map_err(|e| ControlPlaneError::bad_request(e.to_string()))?;
        let grant = Command::Grant {
            tenant_id: r.tenant_id,
            gateway_id: r.gateway_id,
            tokens: r.tokens,
            slots: r.slots,
            ttl_ms: if r.ttl_ms == 0 {
                ledger::MAX_ALLOWANCE_TTL_MS
            } else {
                r.ttl_ms
            },
            now_ms: now_ms(),
            op_id: r.op_id,
        };
        self.change_allowance(grant, true, |a| a.granted_tokens)
            .await
    }

    pub(super) async fn r#return(&self, req: Request<pb::ReturnRequest>) -> R<pb::Allowance> {
        let r = req.into_inner();
        let tokens = r.tokens;
        let r#return = Command::Return {
            tenant_id: r.tenant_id,
            gateway_id: r.gateway_id,
            tokens,
            slots: r.slots,
            now_ms: now_ms(),
            op_id: r.op_id,
        };
        self.change_allowance(r#return, false, |_| tokens).await
    }

    /// Writes a grant (`granted`) or a return, counts `tokens` of the
    /// allowance it leaves as granted or returned, and answers with that
    /// allowance.
    async fn change_allowance(
        &self,
        command: Command,
        granted: bool,
        tokens: impl FnOnce(&AllowanceView) -> u64,
    ) -> R<pb::Allowance> {
        match self.write(command).await? {
            Reply::Allowance(a) => {
                self.node
                    .metrics
                    .allowance_changed(&a.tenant_id, granted, tokens(&a));
                Ok(Response::new(allowance_to_pb(a)))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn report_usage(&self, req: Request<pb::UsageBatch>) -> R<pb::UsageApplied> {
        let events: Vec<UsageRecord> = req.into_inner().events.iter().map(Into::into).collect();
        if let Some(bad) = events.iter().find(|e| e.event_id.is_empty()) {
            return Err(ControlPlaneError::bad_request(format!(
                "a usage event of tenant `{}` has no event id",
                bad.tenant_id
            ))
            .into());
        }
        let (applied, duplicates) =
            crate::consumer::commit(&self.node.raft, events, &self.node.metrics, "report").await?;
        Ok(Response::new(pb::UsageApplied {
            applied,
            duplicates,
        }))
    }

    pub(super) async fn usage(&self, req: Request<pb::UsageRequest>) -> R<pb::UsageReport> {
        let r = req.into_inner();
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        let days = r.days.clamp(1, 366);
        let now = now_ms();
        let mut day_names: Vec<String> = Vec::new();
        for i in 0..i64::from(days) {
            let (day, _) = ledger::day_of(now - i * 86_400_000, &tenant.time_zone);
            if !day_names.contains(&day) {
                day_names.push(day);
            }
        }
        Ok(Response::new(usage_report(&view, tenant, day_names)?))
    }

    pub(super) async fn usage_range(
        &self,
        req: Request<pb::UsageRangeRequest>,
    ) -> R<pb::UsageReport> {
        let r = req.into_inner();
        let mut day_names = ledger::day_range(&r.from_day, &r.to_day)
            .map_err(|(field, message)| ControlPlaneError::invalid(field, message))?;
        // Newest first, as `usage` answers.
        day_names.reverse();
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        Ok(Response::new(usage_report(&view, tenant, day_names)?))
    }

    pub(super) async fn export_usage(
        &self,
        req: Request<pb::UsageExportRequest>,
    ) -> R<pb::UsageExport> {
        let r = req.into_inner();
        let day_names = ledger::day_range(&r.from_day, &r.to_day)
            .map_err(|(field, message)| ControlPlaneError::invalid(field, message))?;
        let view = self.read().await?;
        let tenant = known_tenant(&view, &r.tenant_id)?;
        let key = match view.export_key()? {
            Some(k) => k,
            None => {
                // Made here (apply draws no randomness) and stored once: a
                // racing node's key loses to the first one committed.
                let proposed = crate::usage_export::new_export_key();
                match write(&self.node.raft, Command::SetExportKey { key_hex: proposed }).await? {
                    Reply::ExportKey(k) => k,
                    other => return Err(unexpected(&other).into()),
                }
            }
        };
        let mut rows = Vec::new();
        for day in day_names {
            let Some(l) = view.ledger_day(&tenant.id, &day)? else {
                continue;
            };
            let users = view.users(&tenant.id, std::slice::from_ref(&day))?;
            let (mut tokens, mut requests) = (0u64, 0u64);
            for (user_id, u) in users {
                tokens += u.tokens;
                requests += u.requests;
                rows.push(pb::UsageExportRow {
                    day: day.clone(),
                    user: crate::usage_export::pseudonym(&key, &user_id),
                    tokens: u.tokens,
                    requests: u.requests,
                });
            }
            let rest = (
                l.used.saturating_sub(tokens),
                l.requests.saturating_sub(requests),
            );
            if rest != (0, 0) {
                rows.push(pb::UsageExportRow {
                    day,
                    user: String::new(),
                    tokens: rest.0,
                    requests: rest.1,
                });
            }
        }
        Ok(Response::new(pb::UsageExport { rows }))
    }
}

/// How many prompts a usage report lists.
pub(super) const TOP_PROMPTS: usize = 5;

/// A tenant's usage report over the given days, in the order given.
pub(super) fn usage_report(
    view: &View,
    tenant: TenantRecord,
    day_names: Vec<String>,
) -> Result<pb::UsageReport> {
    let recorded: BTreeMap<String, ledger::LedgerDay> =
        view.ledger_days(&tenant.id)?.into_iter().collect();
    let today = ledger::day_of(now_ms(), &tenant.time_zone).0;
    let allowances = view.allowances(&tenant.id)?;
    let mut out = Vec::new();
    for day in &day_names {
        let l = recorded.get(day).cloned().unwrap_or_default();
        let outstanding = if *day == today {
            allowances.iter().map(|(_, a)| a.tokens_on(day)).sum()
        } else {
            0
        };
        out.push(pb::UsageDay {
            day: day.clone(),
            prompt_tokens: l.prompt_tokens,
            completion_tokens: l.completion_tokens,
            cached_tokens: l.cached_tokens,
            requests: l.requests,
            quota: crate::state::quota_on(view, &tenant, day)?,
            outstanding,
            total_latency_ms: l.total_latency_ms,
            max_latency_ms: l.max_latency_ms,
            p95_latency_ms: l.p95_latency_ms(),
            avg_latency_ms: l.avg_latency_ms(),
        });
    }
    let users = view
        .users(&tenant.id, &day_names)?
        .into_iter()
        .map(|(user_id, u)| pb::UserUsage {
            user_id,
            tokens: u.tokens,
            requests: u.requests,
        })
        .collect();
    let recent = view
        .recent(&tenant.id)?
        .into_iter()
        .map(|r| pb::RecentRequest {
            event_id: r.event_id,
            user_id: r.user_id,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            duration_ms: r.duration_ms,
            finished_at_ms: r.finished_at_ms,
        })
        .collect();
    let top_prompts = view
        .top_prompts(&tenant.id, &day_names, TOP_PROMPTS)?
        .into_iter()
        .map(|p| pb::PromptCount {
            text: p.text,
            count: p.count,
        })
        .collect();
    Ok(pb::UsageReport {
        tenant_id: tenant.id,
        days: out,
        users,
        recent,
        top_prompts,
    })
}
