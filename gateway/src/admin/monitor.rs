//! `GET /admin/v1/monitor`: the live view of tenants and workers (KV per
//! tenant, slots, GPU memory, decode rate), from the workers' own stats,
//! and each tenant's tokens today against its quota, from the ledger.

use axum::extract::State;
use bulkhead_proto::control as pb;
use serde_json::{Value, json};
use std::sync::Arc;

use super::*;

/// The live monitor: every worker's numbers as it reports them now, and per
/// tenant the sessions whose KV is held on workers, the requests generating,
/// their KV memory, whether the tenant's model is ready, and today's tokens
/// against the daily quota.
pub(super) async fn monitor(admin: Admin, State(state): State<Arc<AdminState>>) -> Answer {
    let l = admin
        .send(pb::ListTenantsRequest {}, |mut c, r| async move {
            c.list_tenants(r).await
        })
        .await?;
    let registered = state.directory.workers();
    let stats = futures::future::join_all(registered.iter().map(|w| async {
        if w.models.is_empty() {
            return Err("loading its models".to_owned());
        }
        state
            .workers
            .stats(w)
            .await
            .map_err(|e| e.message().to_owned())
    }))
    .await;
    let mut per_tenant: std::collections::HashMap<&str, [u64; 4]> = Default::default();
    let mut workers = Vec::new();
    for (w, s) in registered.iter().zip(&stats) {
        let loading: Vec<Value> = w
            .loading
            .iter()
            .map(|l| json!({"model": l.model, "progress": l.progress}))
            .collect();
        let mut entry = json!({
            "worker_id": w.worker_id,
            "addr": w.addr,
            "models": w.models,
            "loading": loading,
            "slots": w.slots,
        });
        match s {
            Ok(s) => {
                for t in &s.tenants {
                    let sums = per_tenant.entry(t.tenant_id.as_str()).or_default();
                    sums[0] += u64::from(t.device_slots + t.host_slots);
                    sums[1] += u64::from(t.active);
                    sums[2] += t.device_bytes;
                    sums[3] += t.host_bytes;
                }
                entry["reachable"] = json!(true);
                entry["tokens_per_second"] = json!(s.decode_tokens_per_second);
                entry["generated_tokens_total"] = json!(s.generated_tokens_total);
                entry["active_requests"] = json!(s.active_requests);
                entry["queued_requests"] = json!(s.queued_requests);
                entry["device_slots_used"] = json!(s.device_slots_used);
                entry["device_slots_total"] = json!(s.device_slots_total);
                entry["host_slots"] = json!(s.host_slots);
                entry["host_bytes"] = json!(s.host_bytes);
                let devices: Vec<Value> = s
                    .devices
                    .iter()
                    .map(|d| {
                        json!({
                            "name": d.name,
                            "description": d.description,
                            "memory_total_bytes": d.memory_total_bytes,
                            "memory_used_bytes": d.memory_total_bytes.saturating_sub(d.memory_free_bytes),
                        })
                    })
                    .collect();
                entry["vram_total_bytes"] =
                    json!(s.devices.iter().map(|d| d.memory_total_bytes).sum::<u64>());
                entry["vram_used_bytes"] = json!(
                    s.devices
                        .iter()
                        .map(|d| d.memory_total_bytes.saturating_sub(d.memory_free_bytes))
                        .sum::<u64>()
                );
                entry["devices"] = json!(devices);
            }
            Err(e) => {
                entry["reachable"] = json!(false);
                entry["error"] = json!(e);
            }
        }
        workers.push(entry);
    }
    // Today's tokens against the quota, from each tenant's ledger.
    let today = futures::future::join_all(l.tenants.iter().map(|t| {
        let tenant_id = t.id.clone();
        let admin = &admin;
        async move {
            let report = admin
                .send(
                    pb::UsageRequest { tenant_id, days: 1 },
                    |mut c, r| async move { c.usage(r).await },
                )
                .await
                .ok()?;
            let day = report.days.into_iter().next()?;
            Some((day.prompt_tokens + day.completion_tokens, day.quota))
        }
    }))
    .await;
    let tenants: Vec<Value> = l
        .tenants
        .iter()
        .zip(today)
        .map(|(t, today)| {
            let [sessions, in_flight, device, host] =
                per_tenant.get(t.id.as_str()).copied().unwrap_or_default();
            let model = state
                .directory
                .tenant_model(t, state.default_model.as_deref())
                .unwrap_or_default();
            json!({
                "tenant_id": t.id,
                "display_name": t.display_name,
                "model": model,
                "model_status": state.directory.model_status(&model, &t.adapter),
                "active_sessions": sessions,
                "in_flight": in_flight,
                "kv_device_bytes": device,
                "kv_host_bytes": host,
                "tokens_today": today.map(|(used, _)| used),
                "daily_quota": today.map(|(_, quota)| quota),
            })
        })
        .collect();
    ok(json!({
        "gateway_id": state.gateway_id.to_string(),
        "at_ms": crate::now_ms(),
        "tenants": tenants,
        "workers": workers,
    }))
}
