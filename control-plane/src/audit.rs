//! The audit trail: append-only, one hash chain per tenant (and one,
//! [`CLUSTER_CHAIN`], for changes that belong to no tenant).
//!
//! Each record carries the hash of the record before it in its chain and its
//! own hash over (previous hash, tenant, seq, time, actor, action, detail), so
//! editing, removing or reordering a stored record breaks the chain at that
//! record, and [`verify`] finds the first broken link. Records are written
//! only inside the state machine's `apply`, in the same transaction as the change
//! they describe. A deleted tenant's chain is kept (its deletion is the last
//! record); a tenant created again under the same id continues it.

use std::io;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Lookup, Tables};

pub const AUDIT: &str = "audit";
const HEADS: &str = "audit_heads";
/// The chain of changes that belong to no tenant (global webhooks).
pub const CLUSTER_CHAIN: &str = "_cluster";

/// One audit record as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tenant_id: String,
    pub seq: u64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    /// JSON text.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The last record of a chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

fn record_key(tenant_id: &str, seq: u64) -> String {
    format!("{tenant_id}/{seq:012}")
}

/// The hash a record must carry, computed from everything else in it.
pub fn hash_of(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    for part in [
        r.prev_hash.as_str(),
        r.tenant_id.as_str(),
        &r.seq.to_string(),
        &r.at_ms.to_string(),
        r.actor.as_str(),
        r.action.as_str(),
        r.detail.as_str(),
    ] {
        // Length-prefixed, so no two different records hash the same text.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends a record to `tenant_id`'s chain.
pub fn append(
    t: &Tables,
    tenant_id: &str,
    at_ms: i64,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> io::Result<AuditRecord> {
    let head = t.get::<Head>(HEADS, tenant_id)?.unwrap_or_default();
    let mut record = AuditRecord {
        tenant_id: tenant_id.to_owned(),
        seq: head.seq + 1,
        at_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        detail: detail.to_string(),
        prev_hash: head.hash,
        hash: String::new(),
    };
    record.hash = hash_of(&record);
    t.put(AUDIT, &record_key(tenant_id, record.seq), &record)?;
    t.put(
        HEADS,
        tenant_id,
        &Head {
            seq: record.seq,
            hash: record.hash.clone(),
        },
    )?;
    Ok(record)
}

/// A chain's records, oldest first.
pub fn records(db: &impl Lookup, tenant_id: &str) -> io::Result<Vec<AuditRecord>> {
    Ok(db
        .scan::<AuditRecord>(AUDIT, &format!("{tenant_id}/"))?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The result of recomputing chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub chains: u64,
    pub records: u64,
    /// The first broken link: chain, seq and what is wrong.
    pub broken: Option<(String, u64, String)>,
}

/// Recomputes `tenant_id`'s chain, or every chain when it is `None`.
pub fn verify(db: &impl Lookup, tenant_id: Option<&str>) -> io::Result<Verification> {
    let chains: Vec<String> = match tenant_id {
        Some(id) => vec![id.to_owned()],
        None => db
            .scan::<Head>(HEADS, "")?
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
    };
    let mut out = Verification::default();
    for chain in chains {
        out.chains += 1;
        let head = db.get::<Head>(HEADS, &chain)?.unwrap_or_default();
        let mut prev = String::new();
        let mut expected_seq = 1;
        let mut broken = None;
        // Raw rows: a record edited into invalid JSON is a broken link too.
        for (key, value) in db.scan::<serde_json::Value>(AUDIT, &format!("{chain}/"))? {
            out.records += 1;
            let r: AuditRecord = match serde_json::from_value(value) {
                Ok(r) => r,
                Err(e) => {
                    broken = Some((expected_seq, format!("record {key} is unreadable: {e}")));
                    break;
                }
            };
            let problem = if r.seq != expected_seq {
                Some(format!(
                    "expected record {expected_seq}, found {} (a record was removed or moved)",
                    r.seq
                ))
            } else if r.tenant_id != chain || key != record_key(&chain, r.seq) {
                Some("the record is filed under another chain or position".to_owned())
            } else if r.prev_hash != prev {
                Some("prev_hash does not match the hash of the record before it".to_owned())
            } else if hash_of(&r) != r.hash {
                Some("the record's content does not match its hash (it was edited)".to_owned())
            } else {
                None
            };
            if let Some(p) = problem {
                broken = Some((expected_seq, p));
                break;
            }
            prev = r.hash;
            expected_seq += 1;
        }
        if broken.is_none() && (head.seq != expected_seq - 1 || head.hash != prev) {
            broken = Some((
                expected_seq,
                format!(
                    "the chain ends at record {} but its head says {} (records were removed from the end)",
                    expected_seq - 1,
                    head.seq
                ),
            ));
        }
        if let Some((seq, reason)) = broken {
            out.broken = Some((chain, seq, reason));
            return Ok(out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str) -> AuditRecord {
        let mut r = AuditRecord {
            tenant_id: "acme".into(),
            seq,
            at_ms: 1_000 + i64::try_from(seq).unwrap_or(0),
            actor: "admin".into(),
            action: "tenant.updated".into(),
            detail: "{}".into(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        r.hash = hash_of(&r);
        r
    }

    #[test]
    fn any_edit_changes_the_hash() {
        let r = record(1, "");
        let mut edited = r.clone();
        edited.detail = "{\"x\":1}".into();
        assert_ne!(hash_of(&edited), r.hash);
        let mut moved = r.clone();
        moved.actor = "adminx".into();
        moved.action = "enant.updated".into();
        assert_ne!(hash_of(&moved), r.hash);
    }
}
