//! The files routes, OpenAI's form: `POST /v1/files` (multipart, with a
//! `file` and a `purpose`), `GET /v1/files`, `GET /v1/files/{id}`, `GET
//! /v1/files/{id}/content`, `DELETE /v1/files/{id}`. Files are kept by the
//! control plane ([`cp::member_client`]'s `UploadFile`...), counted against
//! the tenant's storage there; a user's key reaches only its own files.
//! Server-side tools read them ([`super::server_tools`]).

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bulkhead_client::MAX_FILE_BYTES;
use bulkhead_proto::control as cp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, S, authenticate, member_call_as, member_call_within};
use crate::directory::Caller;
use crate::error::GatewayError;
use crate::i18n::Text;

/// The body limit of an upload: the file and the form around it.
pub const MAX_UPLOAD_BODY: usize = MAX_FILE_BYTES + (64 << 10);
/// How long storing or reading a file's content may take: a Raft entry or
/// a read of up to 16 MiB.
const CONTENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// OpenAI's file object.
pub(super) fn file_json(f: &cp::FileInfo) -> Value {
    json!({
        "id": f.file_id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at_ms / 1000,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "user": f.user_id,
        "sha256": f.sha256,
    })
}

fn file_not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: Text::new("file-not-found").arg("id", id),
        code: "file_not_found",
    }
}

fn mapped(status: &tonic::Status, id: &str) -> GatewayError {
    match status.code() {
        tonic::Code::NotFound => file_not_found(id),
        _ => GatewayError::from_control_plane(status),
    }
}

pub(super) async fn upload_file(
    State(state): S,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    state.throttle.take(&caller.tenant.id, "file")?;
    let mut form = multipart.map_err(|_| missing())?;
    let (mut file, mut purpose) = (None, String::new());
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.body_text()))? {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.map_err(|e| {
                    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        bad(e.body_text())
                    }
                })?;
                file = Some((name, bytes));
            }
            Some("purpose") => {
                purpose = field.text().await.map_err(|e| bad(e.body_text()))?;
            }
            _ => {}
        }
    }
    let Some((filename, bytes)) = file else {
        return Err(missing());
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let purpose = purpose.trim();
    if purpose.is_empty() || purpose.len() > 64 {
        return Err(GatewayError::bad_request(
            "`purpose` is required (1 to 64 characters), e.g. \"user_data\"",
            Some("purpose"),
        ));
    }
    let msg = cp::UploadFileRequest {
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.owner(),
        filename,
        purpose: purpose.to_owned(),
        content: bytes.to_vec(),
    };
    let f = store(&state, &caller, msg).await?;
    Ok(axum::Json(file_json(&f)).into_response())
}

fn missing() -> GatewayError {
    GatewayError::bad_request(Text::new("file-missing"), Some("file"))
}

fn too_large() -> GatewayError {
    GatewayError::TooLarge(Text::new("file-too-large").arg("limit", MAX_FILE_BYTES >> 20))
}

fn bad(detail: String) -> GatewayError {
    GatewayError::bad_request(
        format!("the upload is not a valid form: {detail}"),
        Some("file"),
    )
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    purpose: Option<String>,
}

pub(super) async fn list_files(
    State(state): S,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let msg = cp::FileListRequest {
        tenant_id: caller.tenant.id.clone(),
        owner: caller.owner(),
    };
    let list = member_call_as(&state, &caller, msg, |mut c, req| async move {
        c.list_files(req).await
    })
    .await
    .map_err(|s| GatewayError::from_control_plane(&s))?;
    let data: Vec<Value> = list
        .files
        .iter()
        .filter(|f| q.purpose.as_ref().is_none_or(|p| *p == f.purpose))
        .map(file_json)
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "storage": {"used_bytes": list.used_bytes, "limit_bytes": list.limit_bytes},
    }))
    .into_response())
}

/// Stores a file for the caller.
pub(crate) async fn store(
    state: &AppState,
    caller: &Caller,
    msg: cp::UploadFileRequest,
) -> Result<cp::FileInfo, GatewayError> {
    member_call_within(
        state,
        caller,
        CONTENT_DEADLINE,
        msg,
        |mut c, req| async move { c.upload_file(req).await },
    )
    .await
    .map_err(|s| GatewayError::from_control_plane(&s))
}

/// A file of the caller's, with its content when `content`.
pub(crate) async fn fetch(
    state: &AppState,
    caller: &Caller,
    id: &str,
    content: bool,
) -> Result<cp::FileContent, GatewayError> {
    let msg = cp::FileRef {
        tenant_id: caller.tenant.id.clone(),
        file_id: id.to_owned(),
        owner: caller.owner(),
        content,
    };
    member_call_within(
        state,
        caller,
        CONTENT_DEADLINE,
        msg,
        |mut c, req| async move { c.get_file(req).await },
    )
    .await
    .map_err(|s| mapped(&s, id))
}

pub(super) async fn get_file(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let got = fetch(&state, &caller, &id, false).await?;
    let file = got.file.unwrap_or_default();
    Ok(axum::Json(file_json(&file)).into_response())
}

pub(super) async fn file_content(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    let got = fetch(&state, &caller, &id, true).await?;
    let file = got.file.unwrap_or_default();
    Ok(download(&file.filename, got.content))
}

/// A file as a download: its type from its name, and its name.
pub(crate) fn download(filename: &str, content: Vec<u8>) -> Response {
    let kind = content_type(filename);
    let mut response = content.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

fn content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv") => "text/csv",
        Some("txt" | "md" | "log") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("db" | "sqlite" | "sqlite3") => "application/vnd.sqlite3",
        _ => "application/octet-stream",
    }
}

pub(super) async fn delete_file(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let caller = authenticate(&state, &headers)?;
    state.throttle.take(&caller.tenant.id, "file")?;
    let msg = cp::FileRef {
        tenant_id: caller.tenant.id.clone(),
        file_id: id.clone(),
        owner: caller.owner(),
        content: false,
    };
    member_call_as(&state, &caller, msg, |mut c, req| async move {
        c.delete_file(req).await
    })
    .await
    .map_err(|s| mapped(&s, &id))?;
    Ok(axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
}
