//! A tenant's files, for gateways (`/v1/files`): upload, list, read (with
//! or without the content), delete. The storage limit is decided in the
//! Raft apply ([`crate::files`]); this checks the request's shape.

use base64::Engine;
use bulkhead_proto::control as pb;
use sha2::Digest;
use tonic::Response;

use crate::error::ControlPlaneError;
use crate::files::{self, FileRecord, MAX_FILE_BYTES};
use crate::state::{Command, Reply};

use super::*;

impl ControlPlaneService {
    pub(super) async fn upload_file(&self, r: pb::UploadFileRequest) -> R<pb::FileInfo> {
        tenant_id(&r.tenant_id)?;
        let name_ok = !r.filename.is_empty()
            && r.filename.chars().count() <= 255
            && !r.filename.contains(['/', '\\', '\0'])
            && !r.filename.starts_with('.');
        if !name_ok {
            return Err(ControlPlaneError::invalid(
                "file",
                "the file needs a plain name: 1 to 255 characters, no `/`, `\\` or leading `.`",
            )
            .into());
        }
        if r.content.len() > MAX_FILE_BYTES {
            return Err(ControlPlaneError::invalid(
                "file",
                format!("a file holds at most {} MiB", MAX_FILE_BYTES >> 20),
            )
            .into());
        }
        let file = FileRecord {
            file_id: new_id("file-"),
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            filename: r.filename,
            purpose: r.purpose,
            bytes: r.content.len() as u64,
            sha256: format!("{:x}", sha2::Sha256::digest(&r.content)),
            created_at_ms: now_ms(),
        };
        let content_base64 = base64::engine::general_purpose::STANDARD.encode(&r.content);
        match self
            .write(Command::PutFile {
                file,
                content_base64,
            })
            .await?
        {
            Reply::File(f) => Ok(Response::new(file_to_pb(f))),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn list_files(&self, r: pb::FileListRequest) -> R<pb::FileList> {
        let id = tenant_id(&r.tenant_id)?;
        let view = self.read().await?;
        let Some(tenant) = view.tenant(id.as_str())? else {
            return Err(ControlPlaneError::NotFound(format!("unknown tenant `{id}`")).into());
        };
        Ok(Response::new(pb::FileList {
            files: files::list(&view, id.as_str(), &r.owner)?
                .into_iter()
                .map(file_to_pb)
                .collect(),
            used_bytes: files::used_bytes(&view, id.as_str())?,
            limit_bytes: u64::from(tenant.features.storage_mb) << 20,
        }))
    }

    pub(super) async fn get_file(&self, r: pb::FileRef) -> R<pb::FileContent> {
        let id = tenant_id(&r.tenant_id)?;
        let view = self.read().await?;
        let Some(file) = files::get(&view, id.as_str(), &r.file_id, &r.owner)? else {
            return Err(no_file(&r.file_id).into());
        };
        let content = if r.content {
            files::content(&view, &file)?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::FileContent {
            file: Some(file_to_pb(file)),
            content,
        }))
    }

    pub(super) async fn delete_file(&self, r: pb::FileRef) -> R<pb::FileInfo> {
        tenant_id(&r.tenant_id)?;
        match self
            .write(Command::DeleteFile {
                tenant_id: r.tenant_id,
                file_id: r.file_id,
                owner: r.owner,
            })
            .await?
        {
            Reply::File(f) => Ok(Response::new(file_to_pb(f))),
            other => Err(unexpected(&other).into()),
        }
    }
}

fn no_file(file_id: &str) -> ControlPlaneError {
    crate::error::Rejection::NotFound(format!("no file `{file_id}`")).into()
}

fn file_to_pb(f: FileRecord) -> pb::FileInfo {
    pb::FileInfo {
        file_id: f.file_id,
        tenant_id: f.tenant_id,
        user_id: f.user_id,
        filename: f.filename,
        purpose: f.purpose,
        bytes: f.bytes,
        sha256: f.sha256,
        created_at_ms: f.created_at_ms,
    }
}
