//! The `Admin` gRPC service: the operator's calls, with the admin token
//! (checked by the service's one interceptor, `callers::Caller::Admin`).

use bulkhead_proto::control as pb;
use std::time::Duration;

use tonic::{Request, Response};

use super::*;

#[tonic::async_trait]
impl pb::admin_server::Admin for ControlPlaneService {
    async fn list_workers(&self, _req: Request<pb::ListWorkersRequest>) -> R<pb::WorkerList> {
        let now = now_ms();
        let workers = self.read().await?.workers()?;
        Ok(Response::new(pb::WorkerList {
            workers: workers
                .into_iter()
                .filter(|w| w.expires_at_ms >= now)
                .map(worker_to_pb)
                .collect(),
        }))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> R<pb::ClusterState> {
        self.require_leader()?;
        let r = req.into_inner();
        if r.id == 0 || r.addr.is_empty() {
            return Err(ControlPlaneError::bad_request(
                "add-node needs a node id above 0 and an address",
            )
            .into());
        }
        if let Some(other) = self
            .status()
            .nodes
            .iter()
            .find(|n| n.addr == r.addr && n.id != r.id)
        {
            return Err(ControlPlaneError::AlreadyExists(format!(
                "node {} already has the address {}; each node needs its own",
                other.id, r.addr
            ))
            .into());
        }
        // A learner first, sent what it lacks without holding this call (a
        // big state goes by snapshot, for longer than a call may take); it
        // becomes a voter once it has caught up.
        let raft = &self.node.raft;
        raft.add_learner(r.id, Node::new(r.addr), false)
            .await
            .map_err(raft_error)?;
        let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        if caught_up(raft, r.id, target, Duration::from_secs(5)).await {
            promote(raft, r.id).await?;
        } else {
            tracing::info!(
                node = r.id,
                "node added as a learner; it becomes a voter once it has caught up"
            );
            let (raft, id) = (raft.clone(), r.id);
            tokio::spawn(async move {
                if !caught_up(&raft, id, target, Duration::from_secs(24 * 3600)).await {
                    return;
                }
                match promote(&raft, id).await {
                    Ok(()) => tracing::info!(node = id, "node caught up and is a voter"),
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "promoting the caught-up learner failed; run add-node again")
                    }
                }
            });
        }
        Ok(Response::new(self.status()))
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> R<pb::ClusterState> {
        self.require_leader()?;
        let id = req.into_inner().id;
        let membership = self.status();
        if !membership.nodes.iter().any(|n| n.id == id) {
            return Err(ControlPlaneError::NotFound(format!("node {id} is not a member")).into());
        }
        self.node
            .raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(raft_error)?;
        Ok(Response::new(self.status()))
    }

    async fn create_tenant(&self, req: Request<pb::Tenant>) -> R<pb::Tenant> {
        ControlPlaneService::create_tenant(self, req).await
    }

    async fn update_tenant(&self, req: Request<pb::TenantPatch>) -> R<pb::Tenant> {
        ControlPlaneService::update_tenant(self, req).await
    }

    async fn get_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::Tenant> {
        ControlPlaneService::get_tenant(self, req).await
    }

    async fn list_tenants(&self, req: Request<pb::ListTenantsRequest>) -> R<pb::TenantList> {
        ControlPlaneService::list_tenants(self, req).await
    }

    async fn delete_tenant(&self, req: Request<pb::TenantRef>) -> R<pb::DeletedTenant> {
        ControlPlaneService::delete_tenant(self, req).await
    }

    async fn create_credential(
        &self,
        req: Request<pb::CreateCredentialRequest>,
    ) -> R<pb::CreatedCredential> {
        let actor = Self::actor(&req);
        let r = req.into_inner();
        let role =
            crate::credentials::Role::parse(&r.role).map_err(ControlPlaneError::bad_request)?;
        let name = r.name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ControlPlaneError::bad_request(format!(
                "a credential's name is 1 to 64 letters, digits, `-`, `_` or `.` (got {name:?})"
            ))
            .into());
        }
        let secret = new_secret(role.prefix());
        let record = crate::credentials::CredentialRecord {
            credential_id: new_id("cred_"),
            role,
            name: name.to_owned(),
            hash: hash_secret(&secret),
            created_at_ms: now_ms(),
            revoked_at_ms: 0,
        };
        match self
            .audited(actor, Command::CreateCredential { credential: record })
            .await?
        {
            Reply::Credential(c) => Ok(Response::new(pb::CreatedCredential {
                credential: Some(credential_to_pb(c)),
                secret,
            })),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::RevokeCredentialRequest>,
    ) -> R<pb::Credential> {
        let actor = Self::actor(&req);
        let credential = req.into_inner().credential;
        match self
            .audited(
                actor,
                Command::RevokeCredential {
                    credential,
                    now_ms: now_ms(),
                },
            )
            .await?
        {
            Reply::Credential(c) => Ok(Response::new(credential_to_pb(c))),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_credentials(
        &self,
        req: Request<pb::ListCredentialsRequest>,
    ) -> R<pb::CredentialList> {
        let include_revoked = req.into_inner().include_revoked;
        let view = self.read().await?;
        Ok(Response::new(pb::CredentialList {
            credentials: crate::credentials::list(&view, include_revoked)?
                .into_iter()
                .map(credential_to_pb)
                .collect(),
        }))
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::CreatedKey> {
        ControlPlaneService::create_key(self, req).await
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> R<pb::ApiKey> {
        ControlPlaneService::revoke_key(self, req).await
    }

    async fn list_keys(&self, req: Request<pb::TenantRef>) -> R<pb::KeyList> {
        ControlPlaneService::list_keys(self, req).await
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> R<pb::UsageReport> {
        ControlPlaneService::usage(self, req).await
    }

    async fn usage_range(&self, req: Request<pb::UsageRangeRequest>) -> R<pb::UsageReport> {
        ControlPlaneService::usage_range(self, req).await
    }

    async fn export_usage(&self, req: Request<pb::UsageExportRequest>) -> R<pb::UsageExport> {
        ControlPlaneService::export_usage(self, req).await
    }

    async fn apply_tenants(
        &self,
        req: Request<pb::ApplyTenantsRequest>,
    ) -> R<pb::ApplyTenantsReply> {
        ControlPlaneService::apply_tenants(self, req).await
    }

    async fn rotate_admin_token(
        &self,
        req: Request<pb::RotateAdminTokenRequest>,
    ) -> R<pb::AdminToken> {
        let actor = Self::actor(&req);
        let token = new_secret("bka_");
        match self
            .write(Command::RotateAdmin {
                token_hash: hash_secret(&token),
            })
            .await?
        {
            Reply::AdminInitialized(true) => {
                tracing::warn!(actor = %actor, "the admin token was rotated; the old one is refused from now on");
                Ok(Response::new(pb::AdminToken { token }))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> R<pb::PlanList> {
        ControlPlaneService::list_plans(self, req).await
    }

    async fn request_burst(&self, req: Request<pb::BurstRequest>) -> R<pb::Burst> {
        ControlPlaneService::request_burst(self, Self::actor(&req), req.into_inner()).await
    }

    async fn decide_burst(&self, req: Request<pb::BurstDecision>) -> R<pb::Burst> {
        ControlPlaneService::decide_burst(self, req).await
    }

    async fn list_bursts(&self, req: Request<pb::ListBurstsRequest>) -> R<pb::BurstList> {
        ControlPlaneService::list_bursts(self, req).await
    }

    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> R<pb::CreatedWebhook> {
        ControlPlaneService::create_webhook(self, req).await
    }

    async fn delete_webhook(&self, req: Request<pb::WebhookRef>) -> R<pb::Webhook> {
        ControlPlaneService::delete_webhook(self, req).await
    }

    async fn list_webhooks(&self, req: Request<pb::ListWebhooksRequest>) -> R<pb::WebhookList> {
        ControlPlaneService::list_webhooks(self, req).await
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> R<pb::DeliveryList> {
        ControlPlaneService::list_deliveries(self, req).await
    }

    async fn publish_snippet(&self, req: Request<pb::Snippet>) -> R<pb::Snippet> {
        ControlPlaneService::publish_snippet(self, req).await
    }

    async fn delete_snippet(&self, req: Request<pb::SnippetRef>) -> R<pb::Snippet> {
        ControlPlaneService::delete_snippet(self, req).await
    }

    async fn list_snippets(&self, req: Request<pb::ListSnippetsRequest>) -> R<pb::SnippetList> {
        ControlPlaneService::list_snippets(self, req).await
    }

    async fn grant_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        ControlPlaneService::grant_share(self, req).await
    }

    async fn revoke_share(&self, req: Request<pb::ShareGrant>) -> R<pb::ShareGrant> {
        ControlPlaneService::revoke_share(self, req).await
    }

    async fn list_shares(&self, req: Request<pb::ListSharesRequest>) -> R<pb::ShareList> {
        ControlPlaneService::list_shares(self, req).await
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> R<pb::AuditList> {
        ControlPlaneService::list_audit(self, req).await
    }

    async fn verify_audit(&self, req: Request<pb::VerifyAuditRequest>) -> R<pb::AuditVerification> {
        ControlPlaneService::verify_audit(self, req).await
    }
}

fn credential_to_pb(c: crate::credentials::CredentialRecord) -> pb::Credential {
    pb::Credential {
        credential_id: c.credential_id,
        role: c.role.as_str().to_owned(),
        name: c.name,
        created_at_ms: c.created_at_ms,
        revoked_at_ms: c.revoked_at_ms,
    }
}

/// Waits (for at most `within`, while this node leads) until learner `id`
/// holds the log up to `target`.
async fn caught_up(raft: &crate::raft::Raft, id: NodeId, target: u64, within: Duration) -> bool {
    let started = std::time::Instant::now();
    loop {
        let matched = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                return false;
            }
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index())
        };
        if matched >= target {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes learner `id` a voter.
async fn promote(raft: &crate::raft::Raft, id: NodeId) -> Result<(), ControlPlaneError> {
    raft.change_membership(
        openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        false,
    )
    .await
    .map_err(raft_error)?;
    Ok(())
}
