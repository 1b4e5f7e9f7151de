//! `bulkhead webhook`: endpoints that receive a tenant's events (or every
//! tenant's, for a global one), signed per the Standard Webhooks spec, and
//! the record of every delivery attempt.

use std::fmt::Display;

use bulkhead_proto::control as pb;
use clap::Subcommand;

use crate::admin::ms_to_text;
use crate::connect::{Connect, admin_send};
use crate::table::Col::{self, Left, Rest};
use crate::table::{or_placeholder, print_header, print_row};

/// The columns of `webhook list`.
const WEBHOOK_COLUMNS: [Col; 7] = [
    Left(20),
    Left(16),
    Left(7),
    Left(12),
    Left(21),
    Left(24),
    Rest,
];

/// The columns of `webhook deliveries`.
const DELIVERY_COLUMNS: [Col; 5] = [Left(38), Left(16), Left(10), Left(16), Rest];

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
            let created = admin_send(
                &client,
                pb::CreateWebhookRequest {
                    tenant_id: tenant,
                    url,
                    events,
                    secret,
                },
                |mut c, req| async move { c.create_webhook(req).await },
            )
            .await?;
            let w = created.webhook.unwrap_or_default();
            println!("webhook id: {}", w.webhook_id);
            println!(
                "tenant:     {}",
                or_placeholder(&w.tenant_id, "(every tenant)")
            );
            println!("url:        {}", w.url);
            println!("events:     {}", events_text(&w.events));
            println!("signing secret, shown once:");
            println!("{}", created.secret);
        }
        WebhookCommand::Delete { webhook_id } => {
            let w = admin_send(
                &client,
                pb::WebhookRef { webhook_id },
                |mut c, req| async move { c.delete_webhook(req).await },
            )
            .await?;
            println!("deleted webhook {} ({})", w.webhook_id, w.url);
        }
        WebhookCommand::List { tenant } => {
            let list = admin_send(
                &client,
                pb::ListWebhooksRequest { tenant_id: tenant },
                |mut c, req| async move { c.list_webhooks(req).await },
            )
            .await?;
            print_header(
                &WEBHOOK_COLUMNS,
                &[
                    "WEBHOOK ID",
                    "TENANT",
                    "SOURCE",
                    "SECRET",
                    "CREATED",
                    "EVENTS",
                    "URL",
                ],
            );
            for w in list.webhooks {
                let (created, events) = (ms_to_text(w.created_at_ms), events_text(&w.events));
                let cells: [&dyn Display; 7] = [
                    &w.webhook_id,
                    &or_placeholder(&w.tenant_id, "*"),
                    &w.source,
                    &w.secret_prefix,
                    &created,
                    &events,
                    &w.url,
                ];
                print_row(&WEBHOOK_COLUMNS, &cells);
            }
        }
        WebhookCommand::Deliveries {
            tenant,
            webhook,
            limit,
        } => {
            let list = admin_send(
                &client,
                pb::ListDeliveriesRequest {
                    tenant_id: tenant,
                    webhook_id: webhook,
                    limit,
                },
                |mut c, req| async move { c.list_deliveries(req).await },
            )
            .await?;
            print_header(
                &DELIVERY_COLUMNS,
                &["MESSAGE ID", "EVENT", "STATE", "TENANT", "ATTEMPTS"],
            );
            for d in list.deliveries {
                let attempts = attempts_text(&d.attempts);
                let cells: [&dyn Display; 5] = [
                    &d.message_id,
                    &d.event_type,
                    &d.state,
                    &d.tenant_id,
                    &attempts,
                ];
                print_row(&DELIVERY_COLUMNS, &cells);
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
