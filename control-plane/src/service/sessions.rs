//! Sessions and their turns, for gateways: create, list, read the last
//! turns, append (one or a batch), delete.

use bulkhead_proto::control as pb;
use tonic::{Request, Response};

use crate::error::ControlPlaneError;
use crate::sessions::{SessionRecord, TenantView};
use crate::state::{Command, Reply, TurnAppend};

use super::*;

impl ControlPlaneService {
    pub(super) async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> R<pb::Session> {
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        let id = if r.session_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            session_id(&r.session_id)?;
            r.session_id
        };
        let now = now_ms();
        let session = SessionRecord {
            session_id: id,
            title: r.title,
            user_id: r.user_id,
            created_at_ms: now,
            updated_at_ms: now,
            turns: 0,
        };
        match self
            .write(Command::CreateSession {
                tenant_id: r.tenant_id.clone(),
                session,
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&r.tenant_id, s))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> R<pb::SessionList> {
        let r = req.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        let view = self.read().await?;
        if view.tenant(id.as_str())?.is_none() {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        }
        let sessions = TenantView::new(&view, &id).sessions()?;
        Ok(Response::new(pb::SessionList {
            sessions: sessions
                .into_iter()
                .filter(|s| s.belongs_to(&r.owner))
                .map(|s| session_to_pb(id.as_str(), s))
                .collect(),
        }))
    }

    pub(super) async fn get_turns(&self, req: Request<pb::GetTurnsRequest>) -> R<pb::TurnList> {
        let view = self.read().await?;
        Ok(Response::new(turns(&view, req.into_inner())?))
    }

    pub(super) async fn get_turns_batch(
        &self,
        req: Request<pb::GetTurnsBatchRequest>,
    ) -> R<pb::GetTurnsBatchReply> {
        // One linearizable read serves every read of the batch.
        let view = self.read().await?;
        let results = req
            .into_inner()
            .reads
            .into_iter()
            .map(|r| match turns(&view, r) {
                Ok(turns) => pb::GetTurnsResult {
                    turns: Some(turns),
                    ..Default::default()
                },
                Err(e) => {
                    let status = Status::from(e);
                    pb::GetTurnsResult {
                        turns: None,
                        code: status.code() as i32,
                        error: status.message().to_owned(),
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::GetTurnsBatchReply { results }))
    }

    pub(super) async fn append_turns(
        &self,
        req: Request<pb::AppendTurnsRequest>,
    ) -> R<pb::Session> {
        let a = turn_append(req.into_inner())?;
        let tenant = a.tenant_id.clone();
        match self
            .write(Command::AppendTurns {
                tenant_id: a.tenant_id,
                session_id: a.session_id,
                user_id: a.user_id,
                turns: a.turns,
                now_ms: now_ms(),
                owner: a.owner,
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&tenant, s))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn append_turns_batch(
        &self,
        req: Request<pb::AppendTurnsBatchRequest>,
    ) -> R<pb::AppendTurnsBatchReply> {
        // Invalid appends are answered here; the valid ones go in one entry.
        let checked: Vec<Result<TurnAppend>> = req
            .into_inner()
            .appends
            .into_iter()
            .map(turn_append)
            .collect();
        let valid: Vec<TurnAppend> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut replies = if valid.is_empty() {
            Vec::new()
        } else {
            match self
                .write(Command::AppendTurnsBatch {
                    appends: valid,
                    now_ms: now_ms(),
                })
                .await?
            {
                Reply::Batch(replies) => replies,
                other => return Err(unexpected(&other).into()),
            }
        }
        .into_iter();
        let results = checked
            .into_iter()
            .map(|c| {
                let outcome = c.and_then(|a| match replies.next() {
                    Some(Reply::Session(s)) => Ok(session_to_pb(&a.tenant_id, s)),
                    Some(Reply::Rejected(r)) => Err(r.into()),
                    other => Err(ControlPlaneError::Internal(format!(
                        "a batch of appends answered {other:?}"
                    ))),
                });
                match outcome {
                    Ok(session) => pb::AppendTurnsResult {
                        session: Some(session),
                        error: String::new(),
                    },
                    Err(e) => pb::AppendTurnsResult {
                        session: None,
                        error: e.to_string(),
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::AppendTurnsBatchReply { results }))
    }

    pub(super) async fn delete_session(&self, req: Request<pb::SessionRef>) -> R<pb::Session> {
        let r = req.into_inner();
        tenant_id(&r.tenant_id)?;
        match self
            .write(Command::DeleteSession {
                tenant_id: r.tenant_id.clone(),
                session_id: r.session_id,
                owner: r.owner,
            })
            .await?
        {
            Reply::Session(s) => Ok(Response::new(session_to_pb(&r.tenant_id, s))),
            other => Err(unexpected(&other).into()),
        }
    }
}

/// A checked request to append turns: ids valid, turns there, roles known.
pub(super) fn turn_append(r: pb::AppendTurnsRequest) -> Result<TurnAppend> {
    tenant_id(&r.tenant_id)?;
    session_id(&r.session_id)?;
    if r.turns.is_empty() {
        return Err(ControlPlaneError::bad_request("no turns to append"));
    }
    if let Some(bad) = r
        .turns
        .iter()
        // `tool`: a server-side tool's step, kept for the session's readers.
        .find(|t| !matches!(t.role.as_str(), "user" | "assistant" | "system" | "tool"))
    {
        return Err(ControlPlaneError::bad_request(format!(
            "turn role must be user, assistant, system or tool, got {:?}",
            bad.role
        )));
    }
    Ok(TurnAppend {
        tenant_id: r.tenant_id,
        session_id: r.session_id,
        user_id: r.user_id,
        turns: r.turns.into_iter().map(|t| (t.role, t.content)).collect(),
        owner: r.owner,
    })
}

/// The last turns `r` asks for, as of `view`.
fn turns(view: &View, r: pb::GetTurnsRequest) -> Result<pb::TurnList> {
    let id = tenant_id(&r.tenant_id)?;
    session_id(&r.session_id)?;
    if view.tenant(id.as_str())?.is_none() {
        return Err(ControlPlaneError::NotFound(format!(
            "unknown tenant `{id}`"
        )));
    }
    let scoped = TenantView::new(view, &id);
    let Some(session) = scoped
        .session(&r.session_id)?
        .filter(|s| s.belongs_to(&r.owner))
    else {
        return Err(ControlPlaneError::NotFound(format!(
            "unknown session `{}`",
            r.session_id
        )));
    };
    let turns = scoped.turns_of(&session, r.last as usize)?;
    Ok(pb::TurnList {
        turns: turns
            .into_iter()
            .map(|t| pb::Turn {
                role: t.role,
                content: t.content,
                at_ms: t.at_ms,
                seq: t.seq,
            })
            .collect(),
    })
}
