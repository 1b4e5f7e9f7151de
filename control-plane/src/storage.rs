//! redb storage for openraft: the Raft log and vote, and the state machine.
//!
//! One redb file per node holds both. Tables whose names start with `raft_`
//! are the log and its metadata; `sm_meta` holds what openraft needs of the
//! state machine (last applied log id, membership, the current snapshot);
//! every other table is application state (`store`), written only by
//! [`state::apply`] through a [`Tables`] handle. A snapshot carries every
//! application table, so a node that fell behind a purged log catches up
//! completely. Every commit uses redb's default `Durability::Immediate`:
//! openraft is told a write is flushed only after the fsync. Transactions
//! never live across an `.await`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::raft_types::{
    Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};
use crate::snapshot::SnapshotDir;
use crate::state::{self, Reply};
use crate::store::{Tables, View, dec, enc, io_err};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// redb's page cache. Its default (1 GiB) lets a node's memory grow with its
/// database, a snapshot's install above all; the state the services read
/// is small and hot.
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) a node's redb file, creating the fixed tables.
pub fn open(path: &Path) -> io::Result<(LogStore, StateMachine)> {
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| {
            io::Error::other(format!(
                "opening control-plane database {}: {e}",
                path.display()
            ))
        })?;
    let wtx = db.begin_write().map_err(io_err)?;
    {
        wtx.open_table(LOGS).map_err(io_err)?;
        wtx.open_table(RAFT_META).map_err(io_err)?;
        wtx.open_table(SM_META).map_err(io_err)?;
    }
    wtx.commit().map_err(io_err)?;
    let db = Arc::new(db);
    let (applied_tx, _) = watch::channel(0);
    let sm = StateMachine {
        db: db.clone(),
        applied: Arc::new(applied_tx),
        snapshots: SnapshotDir::beside(path)?,
    };
    let applied = sm.read_applied()?.0.map_or(0, |l| l.index());
    sm.applied.send_replace(applied);
    Ok((LogStore { db }, sm))
}

// ------------------------------------------------------------------ log

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let rtx = self.db.begin_read().map_err(io_err)?;
        let t = rtx.open_table(RAFT_META).map_err(io_err)?;
        t.get(key)
            .map_err(io_err)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        let bytes = enc(value)?;
        let wtx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = wtx.open_table(RAFT_META).map_err(io_err)?;
            t.insert(key, bytes.as_slice()).map_err(io_err)?;
        }
        wtx.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let rtx = self.db.begin_read().map_err(io_err)?;
        let t = rtx.open_table(LOGS).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.range::<u64>(bounds).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(dec::<Entry>(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta("vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta("last_purged")?;
        let rtx = self.db.begin_read().map_err(io_err)?;
        let t = rtx.open_table(LOGS).map_err(io_err)?;
        let last = match t.last().map_err(io_err)? {
            Some((_, v)) => Some(dec::<Entry>(v.value())?.log_id()),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta("vote", vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let wtx = self.db.begin_write().map_err(io_err)?;
            {
                let mut t = wtx.open_table(LOGS).map_err(io_err)?;
                for entry in entries {
                    t.insert(entry.index(), enc(&entry)?.as_slice())
                        .map_err(io_err)?;
                }
            }
            // Durability::Immediate: the entries are on disk when commit returns.
            wtx.commit().map_err(io_err)
        })();
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |l| l.index() + 1);
        let wtx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = wtx.open_table(LOGS).map_err(io_err)?;
            t.retain_in::<u64, _>(start.., |_, _| false)
                .map_err(io_err)?;
        }
        wtx.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = enc(&log_id)?;
        let wtx = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = wtx.open_table(RAFT_META).map_err(io_err)?;
            m.insert("last_purged", bytes.as_slice()).map_err(io_err)?;
            let mut t = wtx.open_table(LOGS).map_err(io_err)?;
            t.retain_in::<u64, _>(..=log_id.index(), |_, _| false)
                .map_err(io_err)?;
        }
        wtx.commit().map_err(io_err)
    }
}

// ------------------------------------------------------------------ state machine

/// A cheap handle on the state machine: Raft owns one clone, the services keep
/// another to read. `applied` announces the last applied log index.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    applied: Arc<watch::Sender<u64>>,
    snapshots: SnapshotDir,
}

impl StateMachine {
    /// A consistent read of the application tables as applied on this node.
    pub fn view(&self) -> io::Result<View> {
        Ok(View::new(self.db.begin_read().map_err(io_err)?))
    }

    /// Writes a snapshot of the state as applied now and makes it this
    /// node's current one (what Raft's snapshot builder does). Blocking.
    pub fn build_snapshot_file(&self) -> io::Result<(SnapshotMeta, SnapshotData)> {
        self.snapshots.build(&self.db, SM_META)
    }

    /// Watches the last applied log index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn read_applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let rtx = self.db.begin_read().map_err(io_err)?;
        let t = rtx.open_table(SM_META).map_err(io_err)?;
        let applied = match t.get("last_applied").map_err(io_err)? {
            Some(v) => dec(v.value())?,
            None => None,
        };
        let membership = match t.get("last_membership").map_err(io_err)? {
            Some(v) => dec(v.value())?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let sm = self.clone();
        let (meta, snapshot) = blocking(move || sm.build_snapshot_file()).await?;
        Ok(Snapshot { meta, snapshot })
    }
}

/// Runs blocking storage work (a snapshot's rows) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("snapshot task: {e}")))?
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied()
    }

    async fn apply<S>(&mut self, entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let batch: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut responses = Vec::with_capacity(batch.len());
        let mut last_index = None;
        let wtx = self.db.begin_write().map_err(io_err)?;
        {
            let tables = Tables::new(&wtx);
            let mut last_applied = None;
            let mut membership = None;
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                let reply = match entry.payload {
                    EntryPayload::Blank => Reply::Done,
                    EntryPayload::Normal(command) => state::apply(&tables, command)?,
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(log_id), m));
                        Reply::Done
                    }
                };
                last_index = Some(log_id.index());
                last_applied = Some(log_id);
                if let Some(r) = responder {
                    responses.push((r, reply));
                }
            }
            let mut meta = wtx.open_table(SM_META).map_err(io_err)?;
            if let Some(m) = membership {
                meta.insert("last_membership", enc(&m)?.as_slice())
                    .map_err(io_err)?;
            }
            if last_applied.is_some() {
                meta.insert("last_applied", enc(&last_applied)?.as_slice())
                    .map_err(io_err)?;
            }
        }
        wtx.commit().map_err(io_err)?;
        if let Some(index) = last_index {
            self.applied.send_replace(index);
        }
        // Clients hear back only once the state is durable.
        for (r, reply) in responses {
            r.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (db, snapshots, m) = (self.db.clone(), self.snapshots.clone(), meta.clone());
        blocking(move || snapshots.install(&db, SM_META, &m, snapshot)).await?;
        if let Some(l) = meta.last_log_id {
            self.applied.send_replace(l.index());
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current()).await?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Runs `f` on the application tables in one committed write (for unit
/// tests of `state::apply`).
#[cfg(test)]
pub(crate) fn with_tables<R>(
    sm: &StateMachine,
    f: impl FnOnce(&Tables) -> io::Result<R>,
) -> io::Result<R> {
    let wtx = sm.db.begin_write().map_err(io_err)?;
    let out = f(&Tables::new(&wtx))?;
    wtx.commit().map_err(io_err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;
    use tempfile::TempDir;

    use super::*;

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
        async fn build(
            &self,
        ) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir =
                TempDir::new().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
            let (log, sm) = open(&dir.path().join("cp.redb"))
                .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
            Ok((dir, log, sm))
        }
    }

    /// A snapshot moves every row of every application table to another
    /// node, replacing what that node had, and becomes its current one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_file_carries_every_row_to_another_node() {
        let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let (_, mut from) = open(&a.path().join("cp.redb")).unwrap();
        let (_, mut to) = open(&b.path().join("cp.redb")).unwrap();
        with_tables(&from, |t| {
            for i in 0..5_000 {
                t.put(
                    "tenants",
                    &format!("t{i:05}"),
                    &format!("line one\nline {i}"),
                )?;
            }
            t.put("keys", "k", &"v")
        })
        .unwrap();
        with_tables(&to, |t| t.put("stale", "gone", &1)).unwrap();
        let built = from.build_snapshot().await.unwrap();
        let meta = built.meta.clone();
        to.install_snapshot(&meta, built.snapshot).await.unwrap();
        let view = to.view().unwrap();
        let rows: Vec<(String, String)> = view.scan("tenants", "").unwrap();
        assert_eq!(rows.len(), 5_000);
        assert_eq!(rows[42].1, "line one\nline 42");
        assert_eq!(
            view.get::<String>("keys", "k").unwrap().as_deref(),
            Some("v")
        );
        assert_eq!(view.get::<u64>("stale", "gone").unwrap(), None);
        // The installed snapshot is the receiver's current one, on disk.
        let current = to.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert!(b.path().join("snapshots/current.jsonl").is_file());
    }

    /// openraft's own storage conformance suite.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_store_passes_the_openraft_suite() {
        Suite::test_all(RedbBuilder).await.unwrap();
    }
}
