//! `bulkhead audit`: a tenant's hash-chained audit trail, and a check that
//! every chain is intact (exit code 1 when one is not), and the same check
//! of archive files that old records were moved to.

use anyhow::bail;
use bulkhead_proto::control as pb;
use clap::Subcommand;

use crate::admin::ms_to_text;
use crate::connect::{Connect, admin_send};
use crate::table::Col::{self, Left, Rest, Right};
use crate::table::{or_placeholder, print_header, print_row};

/// The columns of `audit list`.
const AUDIT_COLUMNS: [Col; 5] = [Right(6), Left(21), Left(20), Left(18), Rest];

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// A tenant's records, oldest first.
    List {
        /// The tenant (`_cluster` for changes that belong to none).
        #[arg(long)]
        tenant: String,
        /// The last N records (default 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Also print each record's previous hash and hash.
        #[arg(long)]
        hashes: bool,
    },
    /// Recompute the chains (a tenant's, or every one); exit code 1 when one is broken.
    Verify {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Recompute archived records (files under <data dir>/archives/audit/, read here, not
    /// through the cluster): each file's chain, and that each file of a chain continues the
    /// one before. The last hash printed is the chain's anchor: the prev_hash of the oldest
    /// record `audit list --hashes` shows. Exit code 1 when one is broken.
    VerifyArchive {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

/// Checks archive files, in order of chain and first record.
fn verify_archives(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    use bulkhead_control_plane::audit::{ArchiveSummary, verify_archive};
    let mut checked: Vec<(ArchiveSummary, &std::path::Path)> = Vec::new();
    for file in files {
        match verify_archive(file)? {
            Ok(summary) => checked.push((summary, file)),
            Err(reason) => {
                println!("broken: {}: {reason}", file.display());
                bail!("the audit archive does not verify");
            }
        }
    }
    checked.sort_by(|(a, _), (b, _)| (&a.chain, a.first_seq).cmp(&(&b.chain, b.first_seq)));
    for pair in checked.windows(2) {
        let ((before, bf), (after, af)) = (&pair[0], &pair[1]);
        if before.chain == after.chain && after.prev_hash != before.last_hash {
            println!(
                "broken: {} does not continue {} (records {}..{} then {}..{})",
                af.display(),
                bf.display(),
                before.first_seq,
                before.last_seq,
                after.first_seq,
                after.last_seq
            );
            bail!("the audit archive does not verify");
        }
    }
    for (s, file) in &checked {
        println!(
            "ok: {} records {}..{} of {}, ending at hash {}",
            file.display(),
            s.first_seq,
            s.last_seq,
            s.chain,
            s.last_hash
        );
    }
    Ok(())
}

pub async fn audit(connect: Connect, command: AuditCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        AuditCommand::List {
            tenant,
            limit,
            hashes,
        } => {
            let list = admin_send(
                &client,
                pb::ListAuditRequest {
                    tenant_id: tenant,
                    limit,
                },
                |mut c, req| async move { c.list_audit(req).await },
            )
            .await?;
            print_header(
                &AUDIT_COLUMNS,
                &["SEQ", "TIME", "ACTOR", "ACTION", "DETAIL"],
            );
            for r in list.records {
                let at = ms_to_text(r.at_ms);
                print_row(
                    &AUDIT_COLUMNS,
                    &[&r.seq, &at, &r.actor, &r.action, &r.detail],
                );
                if hashes {
                    println!(
                        "{:>6} prev_hash {} hash {}",
                        "",
                        or_placeholder(&r.prev_hash, "-"),
                        r.hash
                    );
                }
            }
        }
        AuditCommand::Verify { tenant } => {
            let v = admin_send(
                &client,
                pb::VerifyAuditRequest { tenant_id: tenant },
                |mut c, req| async move { c.verify_audit(req).await },
            )
            .await?;
            if !v.ok {
                println!(
                    "broken: tenant {} record {}: {}",
                    v.broken_tenant, v.broken_seq, v.reason
                );
                bail!("the audit trail does not verify");
            }
            println!("ok: {} chains, {} records verified", v.chains, v.records);
        }
        AuditCommand::VerifyArchive { files } => verify_archives(&files)?,
    }
    Ok(())
}
