//! `bulkhead usage --tenant ID`: a tenant's daily usage from the ledger (a
//! table or CSV), with latency percentiles, the busiest users and the top
//! prompts.

use anyhow::bail;
use bulkhead_proto::control as pb;
use clap::Args;

use crate::connect::{Connect, admin_send};

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[arg(long)]
    tenant: String,
    /// Days back from today.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// CSV instead of a table.
    #[arg(long)]
    csv: bool,
}
pub async fn usage(connect: Connect, args: UsageArgs) -> anyhow::Result<()> {
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let client = connect.client();
    let report = admin_send(
        &client,
        pb::UsageRequest {
            tenant_id: args.tenant.clone(),
            days: args.days,
        },
        |mut c, req| async move { c.usage(req).await },
    )
    .await?;
    if args.csv {
        println!(
            "tenant,day,prompt_tokens,completion_tokens,total_tokens,cached_tokens,requests,quota,avg_latency_ms,max_latency_ms,p95_latency_ms"
        );
    } else {
        let titles = [
            "PROMPT",
            "COMPLETION",
            "TOTAL",
            "CACHED",
            "REQS",
            "QUOTA",
            "AVG MS",
        ];
        println!("{:<10}{} {:>8}", "DAY", columns(&titles), "P95 MS");
    }
    for d in &report.days {
        let avg = d.total_latency_ms.checked_div(d.requests).unwrap_or(0);
        let total = d.prompt_tokens + d.completion_tokens;
        // The counts both forms show, in this order; CSV adds the tenant and
        // the slowest request.
        let counts = [
            d.prompt_tokens,
            d.completion_tokens,
            total,
            d.cached_tokens,
            d.requests,
            d.quota,
            avg,
        ];
        if args.csv {
            let counts = counts.map(|n| n.to_string()).join(",");
            println!(
                "{},{},{counts},{},{}",
                report.tenant_id, d.day, d.max_latency_ms, d.p95_latency_ms
            );
        } else {
            println!("{:<10}{} {:>8}", d.day, columns(&counts), d.p95_latency_ms);
        }
    }
    if !args.csv && !report.users.is_empty() {
        println!();
        println!("{:<32} {:>10} {:>8}", "USER", "TOKENS", "REQS");
        for u in &report.users {
            println!("{:<32} {:>10} {:>8}", u.user_id, u.tokens, u.requests);
        }
    }
    if !args.csv && !report.top_prompts.is_empty() {
        println!();
        println!("{:>6}  TOP PROMPTS (first 80 characters)", "COUNT");
        for p in &report.top_prompts {
            println!("{:>6}  {}", p.count, p.text);
        }
    }
    Ok(())
}

/// The table's count columns, each after a space and right-aligned to its
/// width (the day before them, the 95th percentile after).
fn columns(cells: &[impl std::fmt::Display; 7]) -> String {
    const WIDTHS: [usize; 7] = [10, 10, 10, 8, 8, 12, 8];
    cells
        .iter()
        .zip(WIDTHS)
        .map(|(cell, width)| format!(" {cell:>width$}"))
        .collect()
}
