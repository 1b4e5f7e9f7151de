//! `bulkhead credential`: the gateways' and workers' own credentials, one
//! per instance (DESIGN.md section 12).

use bulkhead_proto::control as pb;
use clap::Subcommand;

use crate::admin::ms_to_text;
use crate::connect::{Connect, admin_send};

#[derive(Subcommand, Debug)]
pub enum CredentialCommand {
    /// Issue a credential for one gateway or worker; it is printed once, as the last line.
    /// Give it to that instance as --credential-file FILE (or BULKHEAD_CREDENTIAL).
    Create {
        /// `gateway` (the member service and the workers accept it) or `worker` (the fleet
        /// service accepts it).
        #[arg(long)]
        role: String,
        /// A name for the instance, unique among credentials in force, such as gw-1.
        #[arg(long)]
        name: String,
        /// Also write the credential to this file (readable by the owner only).
        #[arg(long)]
        write: Option<std::path::PathBuf>,
    },
    /// Revoke a credential by name or id: every node refuses it as soon as the change is
    /// replicated, and workers within one heartbeat.
    Revoke { credential: String },
    /// List the credentials (never the secrets).
    List {
        /// Revoked ones too.
        #[arg(long)]
        all: bool,
    },
}

pub async fn credential(connect: Connect, command: CredentialCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        CredentialCommand::Create { role, name, write } => {
            let created = admin_send(
                &client,
                pb::CreateCredentialRequest { role, name },
                |mut c, req| async move { c.create_credential(req).await },
            )
            .await?;
            let c = created.credential.unwrap_or_default();
            println!("credential {} ({}, {})", c.name, c.role, c.credential_id);
            if let Some(path) = write {
                crate::up::write_private(&path, &created.secret)?;
                println!("written to {}", path.display());
            }
            println!("shown once; only its hash is stored:");
            println!("{}", created.secret);
        }
        CredentialCommand::Revoke { credential } => {
            let c = admin_send(
                &client,
                pb::RevokeCredentialRequest { credential },
                |mut c, req| async move { c.revoke_credential(req).await },
            )
            .await?;
            println!(
                "revoked {} ({}, {}) at {}",
                c.name,
                c.role,
                c.credential_id,
                ms_to_text(c.revoked_at_ms)
            );
        }
        CredentialCommand::List { all } => {
            let list = admin_send(
                &client,
                pb::ListCredentialsRequest {
                    include_revoked: all,
                },
                |mut c, req| async move { c.list_credentials(req).await },
            )
            .await?;
            println!(
                "{:<22} {:<8} {:<20} {:<21} {:<21}",
                "ID", "ROLE", "NAME", "CREATED", "REVOKED"
            );
            for c in list.credentials {
                println!(
                    "{:<22} {:<8} {:<20} {:<21} {:<21}",
                    c.credential_id,
                    c.role,
                    c.name,
                    ms_to_text(c.created_at_ms),
                    ms_to_text(c.revoked_at_ms)
                );
            }
        }
    }
    Ok(())
}
