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
        .send(
            pb::ApplyTenantsRequest { configs },
            |mut c, req| async move { c.apply_tenants(req).await },
        )
        .await
        .map_err(crate::admin::status)?;
    let workers = crate::admin::workers(client).await?;
    for o in &reply.outcomes {
        println!("{}", outcome_line(o));
        let tenant = client
            .send(
                pb::TenantRef {
                    id: o.tenant_id.clone(),
                },
                |mut c, req| async move { c.get_tenant(req).await },
            )
            .await
            .map_err(crate::admin::status)?;
        if let Some(line) = crate::admin::window_warning(&tenant, &workers) {
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
