//! Snapshots as files. A snapshot is JSON lines: its meta (last applied log
//! id and membership) first, then one `[table, key, value]` line per row of
//! every application table. It is built, sent, received and installed a row
//! or a chunk at a time, on blocking threads or as a byte stream, so a node's
//! memory during a snapshot does not grow with its database.
//!
//! `<data dir>/snapshots/current.jsonl` is the node's current snapshot; a
//! new one is written beside it and renamed over it, so a sender that opened
//! the old one keeps reading it to the end.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::raft_types::{LogId, SnapshotMeta, StoredMembership};
use crate::store::{app_table, dec, enc, io_err, is_app_table};

/// Where a node keeps its current snapshot and the ones in the making.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn json_line<T: serde::Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(invalid)?;
    out.write_all(b"\n")
}

/// Reads a snapshot's first line, its meta, and leaves `file` at its start.
fn read_meta(file: &mut File) -> io::Result<SnapshotMeta> {
    file.rewind()?;
    let mut first = String::new();
    BufReader::new(&mut *file).read_line(&mut first)?;
    file.rewind()?;
    serde_json::from_str(&first).map_err(|e| invalid(format!("snapshot meta: {e}")))
}

impl SnapshotDir {
    /// The snapshot directory beside a node's database file.
    pub fn beside(db_path: &Path) -> io::Result<Self> {
        let dir = db_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("snapshots");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("current.jsonl")
    }

    /// A fresh path in this directory for a snapshot being written.
    pub fn part(&self, what: &str) -> PathBuf {
        self.dir.join(format!(
            "{what}-{}.part",
            bulkhead_proto::auth::random_hex(8)
        ))
    }

    /// Makes the finished file at `part` the current snapshot.
    fn promote(&self, part: &Path) -> io::Result<File> {
        File::open(part)?.sync_all()?;
        std::fs::rename(part, self.current_path())?;
        File::open(&self.dir)?.sync_all()?;
        File::open(self.current_path())
    }

    /// The current snapshot, if the node has one.
    pub fn current(&self) -> io::Result<Option<(SnapshotMeta, File)>> {
        let mut file = match File::open(self.current_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((read_meta(&mut file)?, file)))
    }

    /// Writes a snapshot of the application tables as `db` holds them now
    /// (one read transaction, a row at a time) and makes it current.
    /// Blocking: call it off the async runtime.
    pub fn build(&self, db: &Database, meta_table: MetaTable) -> io::Result<(SnapshotMeta, File)> {
        let rtx = db.begin_read().map_err(io_err)?;
        let meta_t = rtx.open_table(meta_table).map_err(io_err)?;
        let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
            Ok(meta_t.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
        };
        let last_log_id: Option<LogId> = match get("last_applied")? {
            Some(v) => dec(&v)?,
            None => None,
        };
        let last_membership: StoredMembership = match get("last_membership")? {
            Some(v) => dec(&v)?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let part = self.part("build");
        let mut out = BufWriter::new(File::create(&part)?);
        json_line(&mut out, &meta)?;
        for handle in rtx.list_tables().map_err(io_err)? {
            let name = handle.name().to_owned();
            if !is_app_table(&name) {
                continue;
            }
            let t = rtx.open_table(app_table(&name)).map_err(io_err)?;
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                json_line(&mut out, &(&name, k.value(), v.value()))?;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok((meta, self.promote(&part)?))
    }

    /// Replaces every application table of `db` with the rows of the
    /// snapshot in `file`, records its meta as applied, and makes it the
    /// current snapshot. Blocking: call it off the async runtime.
    pub fn install(
        &self,
        db: &Database,
        meta_table: MetaTable,
        meta: &SnapshotMeta,
        mut file: File,
    ) -> io::Result<()> {
        // A copy of its own: the file given may be a received part that its
        // receiver deletes.
        let part = self.part("install");
        file.rewind()?;
        io::copy(&mut file, &mut File::create(&part)?)?;
        let mut rows = BufReader::new(File::open(&part)?).lines();
        rows.next()
            .ok_or_else(|| invalid("the snapshot is empty"))??;
        let wtx = db.begin_write().map_err(io_err)?;
        {
            let existing: Vec<String> = wtx
                .list_tables()
                .map_err(io_err)?
                .map(|h| h.name().to_owned())
                .filter(|n| is_app_table(n))
                .collect();
            for name in existing {
                wtx.delete_table(app_table(&name)).map_err(io_err)?;
            }
            let mut open: Option<(String, redb::Table<&str, &str>)> = None;
            for line in rows {
                let (name, key, value): (String, String, String) = serde_json::from_str(&line?)
                    .map_err(|e| invalid(format!("snapshot row: {e}")))?;
                if !is_app_table(&name) {
                    return Err(invalid(format!("snapshot row of table {name:?}")));
                }
                if open.as_ref().is_none_or(|(n, _)| *n != name) {
                    drop(open.take());
                    let t = wtx.open_table(app_table(&name)).map_err(io_err)?;
                    open = Some((name, t));
                }
                if let Some((_, t)) = open.as_mut() {
                    t.insert(key.as_str(), value.as_str()).map_err(io_err)?;
                }
            }
            drop(open);
            let mut m = wtx.open_table(meta_table).map_err(io_err)?;
            m.insert("last_applied", enc(&meta.last_log_id)?.as_slice())
                .map_err(io_err)?;
            m.insert("last_membership", enc(&meta.last_membership)?.as_slice())
                .map_err(io_err)?;
            // Snapshots were once kept inside the database.
            m.remove("snapshot").map_err(io_err)?;
        }
        wtx.commit().map_err(io_err)?;
        self.promote(&part)?;
        Ok(())
    }
}

/// The state machine's meta table (last applied, membership).
pub type MetaTable = TableDefinition<'static, &'static str, &'static [u8]>;
