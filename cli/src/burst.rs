//! `bulkhead burst`: a tenant whose plan allows it asks for more of today's
//! quota; an administrator approves or denies. An approved burst lasts until
//! the tenant's day resets.

use std::fmt::Display;

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use clap::Subcommand;

use crate::admin::ms_to_text;
use crate::connect::{Connect, admin_send};
use crate::table::Col::{self, Left, Rest, Right};
use crate::table::{or_placeholder, print_header, print_row};

/// The columns of `burst list`.
const BURST_COLUMNS: [Col; 8] = [
    Left(22),
    Left(16),
    Left(10),
    Left(9),
    Right(12),
    Left(21),
    Left(12),
    Rest,
];

#[derive(Subcommand, Debug)]
pub enum BurstCommand {
    /// Ask for burst quota for today (the tenant's plan must allow it).
    Request {
        #[arg(long)]
        tenant: String,
        /// Why the burst is needed.
        #[arg(long)]
        reason: String,
    },
    /// Approve a pending burst: the tenant's quota for that day rises.
    Approve {
        burst_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Deny a pending burst.
    Deny {
        burst_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List bursts, newest first.
    List {
        /// Only this tenant's.
        #[arg(long, default_value = "")]
        tenant: String,
        /// pending, approved or denied.
        #[arg(long, default_value = "")]
        status: String,
    },
}

fn print_burst(b: &pb::Burst) {
    println!("burst:        {}", b.burst_id);
    println!("tenant:       {}", b.tenant_id);
    println!("day:          {}", b.day);
    println!("status:       {}", b.status);
    println!("extra tokens: {} ({}%)", b.extra_tokens, b.percent);
    println!("reason:       {}", b.reason);
    println!(
        "requested:    {} by {}",
        ms_to_text(b.requested_at_ms),
        b.requested_by
    );
    if b.decided_at_ms != 0 {
        println!(
            "decided:      {} by {}",
            ms_to_text(b.decided_at_ms),
            b.decided_by
        );
    }
    if !b.note.is_empty() {
        println!("note:         {}", b.note);
    }
}

async fn decide(
    client: &ControlPlaneClient,
    burst_id: String,
    approve: bool,
    note: String,
) -> anyhow::Result<()> {
    let b = admin_send(
        client,
        pb::BurstDecision {
            burst_id,
            approve,
            note,
        },
        |mut c, req| async move { c.decide_burst(req).await },
    )
    .await?;
    print_burst(&b);
    Ok(())
}

pub async fn burst(connect: Connect, command: BurstCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        BurstCommand::Request { tenant, reason } => {
            let b = admin_send(
                &client,
                pb::BurstRequest {
                    tenant_id: tenant,
                    reason,
                },
                |mut c, req| async move { c.request_burst(req).await },
            )
            .await?;
            print_burst(&b);
        }
        BurstCommand::Approve { burst_id, note } => decide(&client, burst_id, true, note).await?,
        BurstCommand::Deny { burst_id, note } => decide(&client, burst_id, false, note).await?,
        BurstCommand::List { tenant, status: s } => {
            let list = admin_send(
                &client,
                pb::ListBurstsRequest {
                    tenant_id: tenant,
                    status: s,
                },
                |mut c, req| async move { c.list_bursts(req).await },
            )
            .await?;
            print_header(
                &BURST_COLUMNS,
                &[
                    "BURST ID",
                    "TENANT",
                    "DAY",
                    "STATUS",
                    "EXTRA",
                    "REQUESTED",
                    "DECIDED BY",
                    "REASON",
                ],
            );
            for b in list.bursts {
                let requested = ms_to_text(b.requested_at_ms);
                let cells: [&dyn Display; 8] = [
                    &b.burst_id,
                    &b.tenant_id,
                    &b.day,
                    &b.status,
                    &b.extra_tokens,
                    &requested,
                    &or_placeholder(&b.decided_by, "-"),
                    &b.reason,
                ];
                print_row(&BURST_COLUMNS, &cells);
            }
        }
    }
    Ok(())
}
