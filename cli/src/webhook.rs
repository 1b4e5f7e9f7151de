//! `bulkhead webhook`: endpoints that receive a tenant's events (or every
//! tenant's, for a global one), signed per the Standard Webhooks spec, and
//! the record of every delivery attempt.

use bulkhead_proto::control as pb;
use clap::Subcommand;

use crate::admin::ms_to_text;
use crate::connect::{Connect, status};

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Add an endpoint; its signing secret is printed once.
    Create {
        /// The tenant whose events it receives; leave out for every tenant's.
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long)]
        url: String,
        /// An event type to send (repeat for more); none for all.
        #[arg(long = "event")]
        events: Vec<String>,
        /// The signing secret, whsec_<base64>; generated when left out.
        #[arg(long, default_value = "")]
        secret: String,
    },
    /// Remove an endpoint.
    Delete { webhook_id: String },
    /// List endpoints (a tenant's, or all).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Deliveries, newest first, with every attempt.
    Deliveries {
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        webhook: String,
        /// At most this many (default 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

fn events_text(events: &[String]) -> String {
    if events.is_empty() {
        "all".to_owned()
    } else {
        events.join(",")
    }
}

/// `500 12ms, 200 3ms`: each attempt's HTTP status (`-` when none came) and latency.
fn attempts_text(attempts: &[pb::DeliveryAttempt]) -> String {
    if attempts.is_empty() {
        return "no attempts yet".to_owned();
    }
    attempts
        .iter()
        .map(|a| {
            let status = if a.status == 0 {
                "-".to_owned()
            } else {
                a.status.to_string()
            };
            format!("{status} {}ms", a.latency_ms)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn webhook(connect: Connect, command: WebhookCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        WebhookCommand::Create {
            tenant,
            url,
            events,
            secret,
        } => {
            let created = client
                .admin()
                .send(
                    pb::CreateWebhookRequest {
                        tenant_id: tenant,
                        url,
                        events,
                        secret,
                    },
                    |mut c, req| async move { c.create_webhook(req).await },
                )
                .await
                .map_err(status)?;
            let w = created.webhook.unwrap_or_default();
            println!("webhook id: {}", w.webhook_id);
            println!(
                "tenant:     {}",
                if w.tenant_id.is_empty() {
                    "(every tenant)"
                } else {
                    &w.tenant_id
                }
            );
            println!("url:        {}", w.url);
            println!("events:     {}", events_text(&w.events));
            println!("signing secret, shown once:");
            println!("{}", created.secret);
        }
        WebhookCommand::Delete { webhook_id } => {
            let w = client
                .admin()
                .send(pb::WebhookRef { webhook_id }, |mut c, req| async move {
                    c.delete_webhook(req).await
                })
                .await
                .map_err(status)?;
            println!("deleted webhook {} ({})", w.webhook_id, w.url);
        }
        WebhookCommand::List { tenant } => {
            let list = client
                .admin()
                .send(
                    pb::ListWebhooksRequest { tenant_id: tenant },
                    |mut c, req| async move { c.list_webhooks(req).await },
                )
                .await
                .map_err(status)?;
            println!(
                "{:<20} {:<16} {:<7} {:<12} {:<21} {:<24} URL",
                "WEBHOOK ID", "TENANT", "SOURCE", "SECRET", "CREATED", "EVENTS"
            );
            for w in list.webhooks {
                println!(
                    "{:<20} {:<16} {:<7} {:<12} {:<21} {:<24} {}",
                    w.webhook_id,
                    if w.tenant_id.is_empty() {
                        "*"
                    } else {
                        &w.tenant_id
                    },
                    w.source,
                    w.secret_prefix,
                    ms_to_text(w.created_at_ms),
                    events_text(&w.events),
                    w.url
                );
            }
        }
        WebhookCommand::Deliveries {
            tenant,
            webhook,
            limit,
        } => {
            let list = client
                .admin()
                .send(
                    pb::ListDeliveriesRequest {
                        tenant_id: tenant,
                        webhook_id: webhook,
                        limit,
                    },
                    |mut c, req| async move { c.list_deliveries(req).await },
                )
                .await
                .map_err(status)?;
            println!(
                "{:<38} {:<16} {:<10} {:<16} ATTEMPTS",
                "MESSAGE ID", "EVENT", "STATE", "TENANT"
            );
            for d in list.deliveries {
                println!(
                    "{:<38} {:<16} {:<10} {:<16} {}",
                    d.message_id,
                    d.event_type,
                    d.state,
                    d.tenant_id,
                    attempts_text(&d.attempts)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_read_as_status_and_latency() {
        let a = |status, latency_ms| pb::DeliveryAttempt {
            status,
            latency_ms,
            ..Default::default()
        };
        assert_eq!(
            attempts_text(&[a(500, 12), a(0, 5000), a(200, 3)]),
            "500 12ms, - 5000ms, 200 3ms"
        );
        assert_eq!(attempts_text(&[]), "no attempts yet");
    }
}
