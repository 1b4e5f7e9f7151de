//! `bulkhead snippet` and `bulkhead share`: knowledge sharing. A tenant whose
//! plan includes it publishes named snippets; a grant lets another tenant
//! put one (or every one of the owner's) into its messages as
//! `@shared:<name>`. Every grant, use and refusal goes to the audit trail.

use std::fmt::Display;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_proto::control as pb;
use clap::{ArgGroup, Args, Subcommand};

use crate::admin::ms_to_text;
use crate::connect::{Connect, admin_send};
use crate::table::Col::{self, Left, Rest, Right};
use crate::table::{print_header, print_row};

/// The columns of `snippet list`.
const SNIPPET_COLUMNS: [Col; 5] = [Left(16), Left(24), Right(7), Left(21), Rest];

/// The columns of `share list`.
const SHARE_COLUMNS: [Col; 4] = [Left(16), Left(24), Left(16), Rest];

#[derive(Subcommand, Debug)]
pub enum SnippetCommand {
    /// Publish (or replace) a snippet of a tenant.
    #[command(group(ArgGroup::new("content").required(true).args(["text", "file"])))]
    Publish {
        #[arg(long)]
        tenant: String,
        /// Unique over all tenants: letters, digits, `_`, `.`, `-`; at most 64.
        #[arg(long)]
        name: String,
        #[arg(long)]
        text: Option<String>,
        /// Read the text from this file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a snippet.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
    /// List snippets (a tenant's, or all).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

/// Who shares what with whom.
#[derive(Args, Debug)]
pub struct ShareArgs {
    /// The tenant whose snippets are shared.
    #[arg(long = "from")]
    owner: String,
    /// The tenant that may read them.
    #[arg(long = "to")]
    grantee: String,
    /// One snippet's name, or `*` for every snippet of the owner.
    #[arg(long, default_value = "*")]
    snippet: String,
}

impl ShareArgs {
    fn grant(self) -> pb::ShareGrant {
        pb::ShareGrant {
            owner_tenant_id: self.owner,
            snippet: self.snippet,
            grantee_tenant_id: self.grantee,
            created_at_ms: 0,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ShareCommand {
    /// Let one tenant read another's snippets.
    Grant(ShareArgs),
    /// Take a grant back.
    Revoke(ShareArgs),
    /// List grants (those a tenant gave or got, or all).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

fn snippet_preview(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let mut preview: String = first.chars().take(48).collect();
    if preview.len() < text.len() {
        preview.push_str("...");
    }
    preview
}

pub async fn snippet(connect: Connect, command: SnippetCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        SnippetCommand::Publish {
            tenant,
            name,
            text,
            file,
        } => {
            let content = match (text, file) {
                (Some(text), _) => text,
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
                (None, None) => anyhow::bail!("give --text or --file"),
            };
            let s = admin_send(
                &client,
                pb::Snippet {
                    tenant_id: tenant,
                    name,
                    content,
                    updated_at_ms: 0,
                },
                |mut c, req| async move { c.publish_snippet(req).await },
            )
            .await?;
            println!(
                "published snippet {} of {} ({} bytes); other tenants with a grant write @shared:{}",
                s.name,
                s.tenant_id,
                s.content.len(),
                s.name
            );
        }
        SnippetCommand::Delete { tenant, name } => {
            let s = admin_send(
                &client,
                pb::SnippetRef {
                    tenant_id: tenant,
                    name,
                },
                |mut c, req| async move { c.delete_snippet(req).await },
            )
            .await?;
            println!("deleted snippet {} of {}", s.name, s.tenant_id);
        }
        SnippetCommand::List { tenant } => {
            let list = admin_send(
                &client,
                pb::ListSnippetsRequest { tenant_id: tenant },
                |mut c, req| async move { c.list_snippets(req).await },
            )
            .await?;
            print_header(
                &SNIPPET_COLUMNS,
                &["TENANT", "NAME", "BYTES", "UPDATED", "TEXT"],
            );
            for s in list.snippets {
                let (updated, preview) = (ms_to_text(s.updated_at_ms), snippet_preview(&s.content));
                let cells: [&dyn Display; 5] =
                    [&s.tenant_id, &s.name, &s.content.len(), &updated, &preview];
                print_row(&SNIPPET_COLUMNS, &cells);
            }
        }
    }
    Ok(())
}

pub async fn share(connect: Connect, command: ShareCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        ShareCommand::Grant(args) => {
            let g = admin_send(&client, args.grant(), |mut c, req| async move {
                c.grant_share(req).await
            })
            .await?;
            println!(
                "granted: {} may read {} of {}",
                g.grantee_tenant_id,
                snippet_text(&g.snippet),
                g.owner_tenant_id
            );
        }
        ShareCommand::Revoke(args) => {
            let g = admin_send(&client, args.grant(), |mut c, req| async move {
                c.revoke_share(req).await
            })
            .await?;
            println!(
                "revoked: {} may no longer read {} of {}",
                g.grantee_tenant_id,
                snippet_text(&g.snippet),
                g.owner_tenant_id
            );
        }
        ShareCommand::List { tenant } => {
            let list = admin_send(
                &client,
                pb::ListSharesRequest { tenant_id: tenant },
                |mut c, req| async move { c.list_shares(req).await },
            )
            .await?;
            print_header(&SHARE_COLUMNS, &["OWNER", "SNIPPET", "GRANTEE", "CREATED"]);
            for g in list.grants {
                let created = ms_to_text(g.created_at_ms);
                let cells: [&dyn Display; 4] = [
                    &g.owner_tenant_id,
                    &g.snippet,
                    &g.grantee_tenant_id,
                    &created,
                ];
                print_row(&SHARE_COLUMNS, &cells);
            }
        }
    }
    Ok(())
}

fn snippet_text(snippet: &str) -> String {
    if snippet == "*" {
        "every snippet".to_owned()
    } else {
        format!("snippet {snippet}")
    }
}
