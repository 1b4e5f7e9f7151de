//! A tenant's files (`/v1/files`): what a tenant uploads for its tools to
//! read (`file_parse`, `sql_query`, `code_run`'s inputs). Kept in the
//! replicated state, so every gateway serves them and they survive a node;
//! counted against the tenant's `storage_mb` (its plan's, or its own),
//! decided inside the Raft apply so that two gateways cannot both fill the
//! last megabyte; written to the tenant's archive and removed with it.
//!
//! A file's record and its content are two rows (`files`, `file_data`,
//! both keyed `<tenant>/<file id>`), so that listing reads no content. A
//! caller limited to one user (`owner`) reaches only that user's files,
//! by the same rule as sessions.

use std::io;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::state::{Reply, TENANTS, TenantRecord};
use crate::store::{Lookup, Tables};

pub const FILES: &str = "files";
pub const FILE_DATA: &str = "file_data";
pub use bulkhead_client::MAX_FILE_BYTES;
/// The most files a tenant keeps at once, whatever their size.
pub const MAX_FILES: usize = 1_000;

/// One uploaded file, without its content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub file_id: String,
    pub tenant_id: String,
    /// The user whose key uploaded it; empty for a tenant-wide key.
    pub user_id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub sha256: String,
    pub created_at_ms: i64,
}

impl FileRecord {
    /// Whether a caller limited to `owner`'s files may reach this one (an
    /// empty `owner`: a caller not limited to one user).
    pub fn belongs_to(&self, owner: &str) -> bool {
        owner.is_empty() || self.user_id == owner
    }
}

fn key(tenant_id: &str, file_id: &str) -> String {
    format!("{tenant_id}/{file_id}")
}

/// The tenant's files a caller limited to `owner` may reach, oldest first.
pub fn list(db: &impl Lookup, tenant_id: &str, owner: &str) -> io::Result<Vec<FileRecord>> {
    let mut files: Vec<FileRecord> = db
        .scan::<FileRecord>(FILES, &format!("{tenant_id}/"))?
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| f.belongs_to(owner))
        .collect();
    files.sort_by(|a, b| (a.created_at_ms, &a.file_id).cmp(&(b.created_at_ms, &b.file_id)));
    Ok(files)
}

/// Bytes the tenant's files take, every user's.
pub fn used_bytes(db: &impl Lookup, tenant_id: &str) -> io::Result<u64> {
    Ok(list(db, tenant_id, "")?.iter().map(|f| f.bytes).sum())
}

/// One file a caller limited to `owner` may reach.
pub fn get(
    db: &impl Lookup,
    tenant_id: &str,
    file_id: &str,
    owner: &str,
) -> io::Result<Option<FileRecord>> {
    Ok(db
        .get::<FileRecord>(FILES, &key(tenant_id, file_id))?
        .filter(|f| f.belongs_to(owner)))
}

/// A file's content (stored as base64 in the state's JSON rows).
pub fn content(db: &impl Lookup, file: &FileRecord) -> io::Result<Vec<u8>> {
    use base64::Engine;
    let text: String = db
        .get(FILE_DATA, &key(&file.tenant_id, &file.file_id))?
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `Command::PutFile`: stores a file if its tenant exists and its storage
/// (`storage_mb`, the plan's or its own) has room for it.
pub fn apply_put(t: &Tables, file: FileRecord, content_base64: &str) -> io::Result<Reply> {
    let Some(tenant) = t.get::<TenantRecord>(TENANTS, &file.tenant_id)? else {
        return Ok(Reply::Rejected(Rejection::UnknownTenant(file.tenant_id)));
    };
    let limit = u64::from(tenant.features.storage_mb) << 20;
    Ok(put(t, file, content_base64, limit)?.map_or_else(Reply::Rejected, Reply::File))
}

/// `Command::DeleteFile`.
pub fn apply_delete(t: &Tables, tenant_id: &str, file_id: &str, owner: &str) -> io::Result<Reply> {
    Ok(match delete(t, tenant_id, file_id, owner)? {
        Some(file) => Reply::File(file),
        None => Reply::Rejected(Rejection::NotFound(format!("no file `{file_id}`"))),
    })
}

/// Stores a file if the tenant's storage (`limit_bytes`) has room for it.
fn put(
    t: &Tables,
    file: FileRecord,
    content_base64: &str,
    limit_bytes: u64,
) -> io::Result<Result<FileRecord, Rejection>> {
    let files = list(t, &file.tenant_id, "")?;
    let used: u64 = files.iter().map(|f| f.bytes).sum();
    if used.saturating_add(file.bytes) > limit_bytes {
        return Ok(Err(Rejection::StorageFull(format!(
            "the file ({} bytes) does not fit in tenant `{}`'s storage: {used} of {limit_bytes} bytes are used; delete files or ask your operator for more (storage_mb)",
            file.bytes, file.tenant_id
        ))));
    }
    if files.len() >= MAX_FILES {
        return Ok(Err(Rejection::StorageFull(format!(
            "tenant `{}` keeps {MAX_FILES} files already; delete some first",
            file.tenant_id
        ))));
    }
    if files.iter().any(|f| f.file_id == file.file_id) {
        return Ok(Err(Rejection::Conflict(format!(
            "file `{}` exists already",
            file.file_id
        ))));
    }
    let k = key(&file.tenant_id, &file.file_id);
    t.put(FILE_DATA, &k, &content_base64)?;
    t.put(FILES, &k, &file)?;
    Ok(Ok(file))
}

/// Removes one file a caller limited to `owner` may reach.
fn delete(
    t: &Tables,
    tenant_id: &str,
    file_id: &str,
    owner: &str,
) -> io::Result<Option<FileRecord>> {
    let Some(file) = get(t, tenant_id, file_id, owner)? else {
        return Ok(None);
    };
    let k = key(tenant_id, file_id);
    t.delete(FILES, &k)?;
    t.delete(FILE_DATA, &k)?;
    Ok(Some(file))
}

/// Removes every file of a deleted tenant.
pub fn drop_all(t: &Tables, tenant_id: &str) -> io::Result<()> {
    let prefix = format!("{tenant_id}/");
    t.delete_prefix(FILES, &prefix)?;
    t.delete_prefix(FILE_DATA, &prefix)?;
    Ok(())
}
