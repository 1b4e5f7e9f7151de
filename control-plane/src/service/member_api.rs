//! The `Member` gRPC service: what gateways call, with a gateway credential
//! (checked by the service's one interceptor, `callers::Caller::Gateway`).

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use super::*;

#[tonic::async_trait]
impl pb::member_server::Member for ControlPlaneService {
    type WatchStream = WatchStream;

    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> R<pb::Session> {
        ControlPlaneService::create_session(self, req).await
    }

    async fn list_sessions(&self, req: Request<pb::ListSessionsRequest>) -> R<pb::SessionList> {
        ControlPlaneService::list_sessions(self, req).await
    }

    async fn get_turns(&self, req: Request<pb::GetTurnsRequest>) -> R<pb::TurnList> {
        ControlPlaneService::get_turns(self, req).await
    }

    async fn get_turns_batch(
        &self,
        req: Request<pb::GetTurnsBatchRequest>,
    ) -> R<pb::GetTurnsBatchReply> {
        ControlPlaneService::get_turns_batch(self, req).await
    }

    async fn append_turns(&self, req: Request<pb::AppendTurnsRequest>) -> R<pb::Session> {
        ControlPlaneService::append_turns(self, req).await
    }

    async fn append_turns_batch(
        &self,
        req: Request<pb::AppendTurnsBatchRequest>,
    ) -> R<pb::AppendTurnsBatchReply> {
        ControlPlaneService::append_turns_batch(self, req).await
    }

    async fn delete_session(&self, req: Request<pb::SessionRef>) -> R<pb::Session> {
        ControlPlaneService::delete_session(self, req).await
    }

    async fn request_burst(&self, req: Request<pb::BurstRequest>) -> R<pb::Burst> {
        ControlPlaneService::request_burst(self, Self::via(&req), req.into_inner()).await
    }

    async fn record_tool_step(&self, req: Request<pb::ToolStep>) -> R<pb::AuditRecord> {
        ControlPlaneService::record_tool_step(self, Self::via(&req), req.into_inner()).await
    }

    async fn upload_file(&self, req: Request<pb::UploadFileRequest>) -> R<pb::FileInfo> {
        ControlPlaneService::upload_file(self, req.into_inner()).await
    }

    async fn list_files(&self, req: Request<pb::FileListRequest>) -> R<pb::FileList> {
        ControlPlaneService::list_files(self, req.into_inner()).await
    }

    async fn get_file(&self, req: Request<pb::FileRef>) -> R<pb::FileContent> {
        ControlPlaneService::get_file(self, req.into_inner()).await
    }

    async fn delete_file(&self, req: Request<pb::FileRef>) -> R<pb::FileInfo> {
        ControlPlaneService::delete_file(self, req.into_inner()).await
    }

    async fn list_bursts(&self, req: Request<pb::ListBurstsRequest>) -> R<pb::BurstList> {
        // A gateway reads one tenant's bursts, never every tenant's.
        tenant_id(&req.get_ref().tenant_id)?;
        ControlPlaneService::list_bursts(self, req).await
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> R<Self::WatchStream> {
        // The stream lasts as long as the credential that opened it.
        let holder = req
            .extensions()
            .get::<crate::callers::Authenticated>()
            .map(|a| a.0.hash.clone());
        let from = req.into_inner().from_version;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(watch_loop(self.node.sm.clone(), from, holder, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn authenticate(&self, req: Request<pb::AuthenticateRequest>) -> R<pb::Authenticated> {
        ControlPlaneService::authenticate(self, req).await
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::Allowance> {
        ControlPlaneService::grant(self, req).await
    }

    async fn r#return(&self, req: Request<pb::ReturnRequest>) -> R<pb::Allowance> {
        ControlPlaneService::r#return(self, req).await
    }

    async fn resolve_shared(&self, req: Request<pb::ResolveSharedRequest>) -> R<pb::SnippetList> {
        ControlPlaneService::resolve_shared(self, req).await
    }
}
