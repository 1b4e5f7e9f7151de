//! `bulkhead tenant apply PATH` and `bulkhead up --tenants DIR`: tenant
//! config files read on this machine and sent to the control plane in one
//! `ApplyTenants` call, which creates, updates or leaves each tenant alone,
//! all or nothing. A file that cannot be read sends nothing.

use std::path::Path;

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_control_plane::tenant_config::{self, LoadedConfig};
use bulkhead_proto::control as pb;

/// Reads the configs of a file or directory; the error names the file, the
/// field and the reason.
pub fn load(path: &Path) -> anyhow::Result<Vec<LoadedConfig>> {
    Ok(tenant_config::load_files(path)?)
}

/// Sends the configs and prints one line per tenant: what happened, from
/// which file, what changed, and the secrets of webhook endpoints the apply
/// generated (shown once).
pub async fn apply(client: &ControlPlaneClient, loaded: Vec<LoadedConfig>) -> anyhow::Result<()> {
    let configs = loaded.into_iter().map(|l| l.config).collect();
    let reply = client
        .admin()
        .send(
            pb::ApplyTenantsRequest { configs },
            |mut c, req| async move { c.apply_tenants(req).await },
        )
        .await
        .map_err(crate::connect::status)?;
    let workers = workers(client).await?;
    for o in &reply.outcomes {
        println!("{}", outcome_line(o));
        let tenant = client
            .admin()
            .send(
                pb::TenantRef {
                    id: o.tenant_id.clone(),
                },
                |mut c, req| async move { c.get_tenant(req).await },
            )
            .await
            .map_err(crate::connect::status)?;
        for line in warnings(&tenant, &workers) {
            println!("{line}");
        }
        for w in &o.new_webhooks {
            let hook = w.webhook.clone().unwrap_or_default();
            println!(
                "  webhook {} {} secret (shown once): {}",
                hook.webhook_id, hook.url, w.secret
            );
        }
    }
    Ok(())
}

/// `created|updated|unchanged <id> (<source>)`, and for an update what changed.
fn outcome_line(o: &pb::ApplyOutcome) -> String {
    let mut line = format!("{} {} ({})", o.action, o.tenant_id, o.source);
    if o.action == "updated" && !o.changed.is_empty() {
        line.push_str(": ");
        line.push_str(&o.changed.join(", "));
    }
    line
}

/// What a user should know about `t` given the workers registered now: its
/// model not served (and whether a worker will load it), its window cut.
pub(crate) fn warnings(t: &pb::Tenant, workers: &[pb::WorkerInfo]) -> Vec<String> {
    model_warning(t, workers)
        .into_iter()
        .chain(window_warning(t, workers))
        .collect()
}

/// A line when no worker serves `t`'s model: a worker with its file will
/// load it (or is loading it), or nobody can.
fn model_warning(t: &pb::Tenant, workers: &[pb::WorkerInfo]) -> Option<String> {
    let model = t.model.as_str();
    if model.is_empty() || workers.iter().any(|w| w.models.iter().any(|m| m == model)) {
        return None;
    }
    if let Some(w) = workers
        .iter()
        .find(|w| w.loading.iter().any(|l| l.model == model))
    {
        return Some(format!(
            "note: model `{model}` of tenant `{}` is loading on worker {}; its requests get 503 model_loading until it is ready",
            t.id, w.worker_id
        ));
    }
    let holders: Vec<&str> = workers
        .iter()
        .filter(|w| w.files.contains_key(model))
        .map(|w| w.worker_id.as_str())
        .collect();
    Some(if holders.is_empty() {
        format!(
            "warning: no worker serves model `{model}` of tenant `{}`, and none has a file `{model}.gguf` in its --model-dir; its requests get 503 until one does",
            t.id
        )
    } else {
        format!(
            "note: model `{model}` of tenant `{}` is not loaded yet; a worker with its file ({}) loads it when it has room",
            t.id,
            holders.join(", ")
        )
    })
}

/// The window a tenant's requests really get when the workers serving its
/// model now give less than its `context_window`, as a warning line; none
/// when they give enough, or when no worker serves the model yet.
fn window_warning(t: &pb::Tenant, workers: &[pb::WorkerInfo]) -> Option<String> {
    let asked = t.limits.unwrap_or_default().context_window;
    // A tenant naming no model gets the gateways' default, one of each worker's models.
    let largest = workers
        .iter()
        .flat_map(|w| w.context_windows.iter())
        .filter(|(model, _)| t.model.is_empty() || **model == t.model)
        .map(|(_, &window)| window)
        .max()?;
    let model = if t.model.is_empty() {
        "the default model".to_owned()
    } else {
        format!("model `{}`", t.model)
    };
    (asked > largest).then(|| {
        format!(
            "warning: tenant `{}` has a context window of {asked} tokens, but the largest any worker serving {model} gives is {largest} tokens (its KV slot size, or the model's training context); its requests are limited to {largest} tokens",
            t.id
        )
    })
}

/// The workers registered now.
pub(crate) async fn workers(client: &ControlPlaneClient) -> anyhow::Result<Vec<pb::WorkerInfo>> {
    Ok(client
        .admin()
        .send(pb::ListWorkersRequest {}, |mut c, req| async move {
            c.list_workers(req).await
        })
        .await
        .map_err(crate::connect::status)?
        .workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_reads_as_one_line() {
        let mut o = pb::ApplyOutcome {
            tenant_id: "sales".into(),
            source: "tenants/sales/config.yaml".into(),
            action: "updated".into(),
            changed: vec!["daily_tokens".into(), "model".into()],
            new_webhooks: Vec::new(),
        };
        assert_eq!(
            outcome_line(&o),
            "updated sales (tenants/sales/config.yaml): daily_tokens, model"
        );
        o.action = "unchanged".into();
        o.changed.clear();
        assert_eq!(
            outcome_line(&o),
            "unchanged sales (tenants/sales/config.yaml)"
        );
    }
}
