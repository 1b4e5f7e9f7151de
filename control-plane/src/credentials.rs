//! Gateway and worker credentials: one per instance, issued by an admin
//! command, stored as a hash, listed, and revoked. A credential's role
//! decides the one service it may call (`callers`).

use std::io;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::store::{Lookup, Tables};

/// Credential id -> [`CredentialRecord`], revoked ones included.
pub const CREDENTIALS: &str = "credentials";
/// Hash of a credential in force -> its id (a revoked one is removed).
pub const CREDENTIAL_HASHES: &str = "credential_hashes";

/// Who holds a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Gateway,
    Worker,
    /// A metrics scraper (Prometheus): `GET /metrics` on the control plane's
    /// and the workers' ports, and nothing else.
    Metrics,
}

impl Role {
    pub fn parse(role: &str) -> Result<Self, String> {
        match role {
            "gateway" => Ok(Self::Gateway),
            "worker" => Ok(Self::Worker),
            "metrics" => Ok(Self::Metrics),
            other => Err(format!(
                "unknown role `{other}`: a credential is for a `gateway`, a `worker` or `metrics`"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Worker => "worker",
            Self::Metrics => "metrics",
        }
    }

    /// How the role's secrets begin, so a leaked one is recognisable.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Gateway => "bkg_",
            Self::Worker => "bkw_",
            Self::Metrics => "bkm_",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub credential_id: String,
    pub role: Role,
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_at_ms: i64,
    /// 0 while in force.
    pub revoked_at_ms: i64,
}

/// Stores a new credential; a name in use by one in force is refused.
pub fn create(
    t: &Tables,
    record: CredentialRecord,
) -> io::Result<Result<CredentialRecord, Rejection>> {
    if list(t, false)?.iter().any(|c| c.name == record.name) {
        return Ok(Err(Rejection::Conflict(format!(
            "a credential named `{}` is already in force; revoke it first or choose another name",
            record.name
        ))));
    }
    t.put(CREDENTIAL_HASHES, &record.hash, &record.credential_id)?;
    t.put(CREDENTIALS, &record.credential_id, &record)?;
    Ok(Ok(record))
}

/// Revokes the credential in force with id or name `which`.
pub fn revoke(
    t: &Tables,
    which: &str,
    now_ms: i64,
) -> io::Result<Result<CredentialRecord, Rejection>> {
    let Some(mut record) = list(t, false)?
        .into_iter()
        .find(|c| c.credential_id == which || c.name == which)
    else {
        return Ok(Err(Rejection::NotFound(format!(
            "no credential in force is named `{which}`"
        ))));
    };
    record.revoked_at_ms = now_ms.max(1);
    t.delete(CREDENTIAL_HASHES, &record.hash)?;
    t.put(CREDENTIALS, &record.credential_id, &record)?;
    Ok(Ok(record))
}

/// Credentials, oldest first; revoked ones only when asked.
pub fn list(db: &impl Lookup, include_revoked: bool) -> io::Result<Vec<CredentialRecord>> {
    let mut all: Vec<CredentialRecord> = db
        .scan::<CredentialRecord>(CREDENTIALS, "")?
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| include_revoked || c.revoked_at_ms == 0)
        .collect();
    all.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
    Ok(all)
}

/// The credential in force whose secret hashes to `hash`.
pub fn by_hash(db: &impl Lookup, hash: &str) -> io::Result<Option<CredentialRecord>> {
    let Some(id) = db.get::<String>(CREDENTIAL_HASHES, hash)? else {
        return Ok(None);
    };
    Ok(db
        .get::<CredentialRecord>(CREDENTIALS, &id)?
        .filter(|c| c.revoked_at_ms == 0))
}

/// The hashes of the credentials of `role` in force (workers accept the
/// gateways' calls and the scrapers' `GET /metrics`).
pub fn hashes_of(db: &impl Lookup, role: Role) -> io::Result<Vec<String>> {
    Ok(list(db, false)?
        .into_iter()
        .filter(|c| c.role == role)
        .map(|c| c.hash)
        .collect())
}
