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
//!
//! Old records leave the database without breaking the chain: the leader
//! writes a chain's oldest run to an archive file ([`archive_older_than`]),
//! and a Raft command prunes exactly that run ([`prune_archived`]), keeping
//! its last hash as the chain's [`Anchor`] and recording `audit.archived` in
//! the chain. [`verify`] checks the kept records from the anchor on, and
//! [`verify_archive`] checks an archive file and answers the hash it ends
//! at, which is the anchor the next file or the live chain continues from.

use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Lookup, Tables, View};

pub const AUDIT: &str = "audit";
const HEADS: &str = "audit_heads";
const ANCHORS: &str = "audit_anchors";
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

/// Where a chain's kept records begin: its last record that was archived
/// and pruned (none: the chain is whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// The archive file that holds the records up to `seq`.
    pub archive: String,
}

/// A chain's oldest records, written to an archive file and ready to be
/// pruned from the database by the command that carries this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedRun {
    pub chain: String,
    pub through_seq: u64,
    /// The hash of record `through_seq`: pruning checks the database still
    /// holds exactly that record.
    pub through_hash: String,
    pub archive: String,
    pub records: u64,
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

/// Writes each chain's records older than `cutoff_ms` (those an earlier
/// archive has not taken) to `<dir>/<chain>-<first seq>-<last seq>.jsonl`,
/// a record per line, fsynced, and answers the runs to prune. Reads a
/// record at a time; the records stay in the database until the answered
/// runs are applied. Blocking.
pub fn archive_older_than(view: &View, dir: &Path, cutoff_ms: i64) -> io::Result<Vec<ArchivedRun>> {
    std::fs::create_dir_all(dir)?;
    let mut runs = Vec::new();
    for (chain, _) in view.scan::<Head>(HEADS, "")? {
        let anchor = view.get::<Anchor>(ANCHORS, &chain)?.unwrap_or_default();
        let part = dir.join(format!("{chain}.part"));
        let mut out: Option<io::BufWriter<std::fs::File>> = None;
        let (mut first, mut last) = (None, None::<AuditRecord>);
        view.visit::<AuditRecord>(
            AUDIT,
            &format!("{chain}/"),
            &record_key(&chain, anchor.seq + 1),
            |_, r| {
                if r.at_ms >= cutoff_ms {
                    return Ok(false);
                }
                let w = match out.as_mut() {
                    Some(w) => w,
                    None => out.insert(io::BufWriter::new(std::fs::File::create(&part)?)),
                };
                serde_json::to_writer(&mut *w, &r).map_err(io::Error::other)?;
                w.write_all(b"\n")?;
                first.get_or_insert(r.seq);
                last = Some(r);
                Ok(true)
            },
        )?;
        let (Some(w), Some(first), Some(last)) = (out, first, last) else {
            continue;
        };
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let path = dir.join(format!("{chain}-{first:012}-{:012}.jsonl", last.seq));
        std::fs::rename(&part, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        runs.push(ArchivedRun {
            chain,
            through_seq: last.seq,
            through_hash: last.hash,
            archive: path.display().to_string(),
            records: last.seq - first + 1,
        });
    }
    Ok(runs)
}

/// Prunes an archived run from its chain: its records leave the database,
/// its last record becomes the chain's anchor, and `audit.archived` is
/// appended to the chain. Answers how many records went, 0 when the run
/// was pruned already; `None` when the database does not hold the run's
/// last record with its hash (nothing changes then).
pub fn prune_archived(t: &Tables, run: &ArchivedRun, at_ms: i64) -> io::Result<Option<usize>> {
    let anchor = t.get::<Anchor>(ANCHORS, &run.chain)?.unwrap_or_default();
    if run.through_seq <= anchor.seq {
        return Ok(Some(0));
    }
    let last = t.get::<AuditRecord>(AUDIT, &record_key(&run.chain, run.through_seq))?;
    if last.is_none_or(|r| r.hash != run.through_hash) {
        return Ok(None);
    }
    let n = t.delete_range(
        AUDIT,
        &record_key(&run.chain, anchor.seq + 1),
        &record_key(&run.chain, run.through_seq + 1),
    )?;
    t.put(
        ANCHORS,
        &run.chain,
        &Anchor {
            seq: run.through_seq,
            hash: run.through_hash.clone(),
            archive: run.archive.clone(),
        },
    )?;
    append(
        t,
        &run.chain,
        at_ms,
        "system",
        "audit.archived",
        serde_json::json!({
            "through_seq": run.through_seq,
            "through_hash": run.through_hash,
            "archive": run.archive,
            "records": n,
        }),
    )?;
    Ok(Some(n))
}

/// What an archive file holds, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub chain: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash the first record links to (`""` for a chain's first record).
    pub prev_hash: String,
    /// The hash of the last record: the anchor the chain continues from.
    pub last_hash: String,
}

/// Recomputes the chain in an archive file: every record in order, linked
/// to the one before and matching its own hash. Answers what it holds, or
/// the first broken link.
pub fn verify_archive(path: &Path) -> io::Result<Result<ArchiveSummary, String>> {
    let file = std::fs::File::open(path)?;
    let mut summary: Option<ArchiveSummary> = None;
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let r: AuditRecord = match serde_json::from_str(&line?) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("line {} is unreadable: {e}", n + 1))),
        };
        if hash_of(&r) != r.hash {
            return Ok(Err(format!(
                "record {} does not match its hash (it was edited)",
                r.seq
            )));
        }
        match summary.as_mut() {
            None => {
                summary = Some(ArchiveSummary {
                    chain: r.tenant_id.clone(),
                    first_seq: r.seq,
                    last_seq: r.seq,
                    prev_hash: r.prev_hash.clone(),
                    last_hash: r.hash,
                })
            }
            Some(s) => {
                if r.tenant_id != s.chain || r.seq != s.last_seq + 1 || r.prev_hash != s.last_hash {
                    return Ok(Err(format!(
                        "record {} does not follow record {} (a record was removed, moved or edited)",
                        r.seq, s.last_seq
                    )));
                }
                s.last_seq = r.seq;
                s.last_hash = r.hash;
            }
        }
    }
    Ok(summary.ok_or_else(|| "the archive holds no records".to_owned()))
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
        // Records up to the anchor were archived (see `verify_archive`).
        let anchor = db.get::<Anchor>(ANCHORS, &chain)?.unwrap_or_default();
        let mut prev = anchor.hash;
        let mut expected_seq = anchor.seq + 1;
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
