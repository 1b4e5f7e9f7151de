//! The application tables of a node's redb file: typed reads and writes
//! inside one transaction ([`Tables`], for `state::apply`), read-only views
//! at one point in time ([`View`]), and what both can do ([`Lookup`]).
//!
//! Tables whose names start with `raft_` and `sm_meta` belong to openraft's
//! storage (`storage`); every other table is application state (tenants,
//! keys, ledger, ...), written only by the state machine's `apply`. Values
//! are JSON. Transactions never live across an `.await`.

use std::io;

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) fn app_table(name: &str) -> TableDefinition<'_, &'static str, &'static str> {
    TableDefinition::new(name)
}

/// Whether a table of the redb file is application state (not openraft's).
pub(crate) fn is_app_table(name: &str) -> bool {
    !name.starts_with("raft_") && name != "sm_meta"
}

pub(crate) fn io_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

type AppTable<'t> = redb::Table<'t, &'static str, &'static str>;

/// Typed access to the application tables inside one redb transaction.
/// Values are JSON; keys are strings whose parts are joined by `/` (ids never
/// contain `/`). A table is opened once per transaction and kept open until
/// the handle is dropped (opening one per read or write cost a quarter of
/// the usage throughput).
pub struct Tables<'t> {
    wtx: &'t redb::WriteTransaction,
    open: std::cell::RefCell<std::collections::HashMap<String, AppTable<'t>>>,
}

impl<'t> Tables<'t> {
    pub(crate) fn new(wtx: &'t redb::WriteTransaction) -> Self {
        Self {
            wtx,
            open: std::cell::RefCell::new(std::collections::HashMap::new()),
        }
    }

    /// Runs `f` on the open table `name`, opening it first if needed. `f`
    /// must not call back into this handle.
    fn with<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut AppTable<'t>) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut open = self.open.borrow_mut();
        let table = match open.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.wtx.open_table(app_table(name)).map_err(io_err)?)
            }
        };
        f(table)
    }

    pub fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> io::Result<Option<T>> {
        self.with(table, |t| {
            let value = t.get(key).map_err(io_err)?;
            value
                .map(|v| serde_json::from_str(v.value()).map_err(io_err))
                .transpose()
        })
    }

    pub fn put<T: Serialize>(&self, table: &str, key: &str, value: &T) -> io::Result<()> {
        let text = serde_json::to_string(value).map_err(io_err)?;
        self.with(table, |t| {
            t.insert(key, text.as_str()).map_err(io_err)?;
            Ok(())
        })
    }

    pub fn delete(&self, table: &str, key: &str) -> io::Result<bool> {
        self.with(table, |t| Ok(t.remove(key).map_err(io_err)?.is_some()))
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
    ) -> io::Result<Vec<(String, T)>> {
        self.with(table, |t| scan_table(t, prefix, prefix))
    }

    /// Hands the entries under `prefix` to `f`, one at a time in key order,
    /// until `f` answers false (nothing is collected). `f` must not call back
    /// into this handle.
    pub fn visit<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
        f: impl FnMut(&str, T) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.with(table, |t| visit_range(t, prefix.., prefix, f))
    }

    /// Like [`Self::visit`], for the keys from `start` (inclusive) to `end`
    /// (exclusive).
    pub fn visit_range<T: DeserializeOwned>(
        &self,
        table: &str,
        start: &str,
        end: &str,
        f: impl FnMut(&str, T) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.with(table, |t| visit_range(t, start..end, "", f))
    }

    /// Drops a whole table (no error if it does not exist).
    pub fn drop_table(&self, table: &str) -> io::Result<()> {
        // A table cannot be deleted while a handle to it is open.
        drop(self.open.borrow_mut().remove(table));
        self.wtx.delete_table(app_table(table)).map_err(io_err)?;
        Ok(())
    }

    /// Deletes every entry whose key starts with `prefix`; returns how many.
    pub fn delete_prefix(&self, table: &str, prefix: &str) -> io::Result<usize> {
        self.delete_range(table, prefix, &format!("{prefix}\u{10FFFF}"))
    }

    /// Deletes every entry with a key from `start` (inclusive) to `end`
    /// (exclusive), visiting only those; returns how many.
    pub fn delete_range(&self, table: &str, start: &str, end: &str) -> io::Result<usize> {
        self.with(table, |t| {
            let mut n = 0;
            t.retain_in::<&str, _>(start..end, |_, _| {
                n += 1;
                false
            })
            .map_err(io_err)?;
            Ok(n)
        })
    }
}

/// The entries whose key starts with `prefix`, from key `from` on (at or
/// after `prefix`), in key order.
fn scan_table<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static str>,
    prefix: &str,
    from: &str,
) -> io::Result<Vec<(String, T)>> {
    collect_range(t, from.max(prefix).., prefix)
}

/// The entries of `range` whose key starts with `prefix` (stopping at the
/// first that does not), decoded, in key order.
fn collect_range<'a, T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static str>,
    range: impl std::ops::RangeBounds<&'a str> + 'a,
    prefix: &str,
) -> io::Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    visit_range(t, range, prefix, |k, v| {
        out.push((k.to_owned(), v));
        Ok(true)
    })?;
    Ok(out)
}

/// Hands the entries of `range` whose key starts with `prefix` to `f`, one
/// at a time in key order, until one does not start with it or `f`
/// answers false.
fn visit_range<'a, T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static str>,
    range: impl std::ops::RangeBounds<&'a str> + 'a,
    prefix: &str,
    mut f: impl FnMut(&str, T) -> io::Result<bool>,
) -> io::Result<()> {
    for item in t.range::<&str>(range).map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        if !k.value().starts_with(prefix)
            || !f(k.value(), serde_json::from_str(v.value()).map_err(io_err)?)?
        {
            break;
        }
    }
    Ok(())
}

/// Reads that work the same inside a write ([`Tables`]) and on a [`View`],
/// for helpers that both `apply` and the queries use.
pub trait Lookup {
    fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> io::Result<Option<T>>;
    fn scan<T: DeserializeOwned>(&self, table: &str, prefix: &str) -> io::Result<Vec<(String, T)>>;
}

impl Lookup for Tables<'_> {
    fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> io::Result<Option<T>> {
        Tables::get(self, table, key)
    }
    fn scan<T: DeserializeOwned>(&self, table: &str, prefix: &str) -> io::Result<Vec<(String, T)>> {
        Tables::scan(self, table, prefix)
    }
}

impl Lookup for View {
    fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> io::Result<Option<T>> {
        View::get(self, table, key)
    }
    fn scan<T: DeserializeOwned>(&self, table: &str, prefix: &str) -> io::Result<Vec<(String, T)>> {
        View::scan(self, table, prefix)
    }
}

/// Read-only access to the application tables at one point in time.
pub struct View {
    rtx: redb::ReadTransaction,
}

impl View {
    pub(crate) fn new(rtx: redb::ReadTransaction) -> Self {
        Self { rtx }
    }

    pub fn get<T: DeserializeOwned>(&self, table: &str, key: &str) -> io::Result<Option<T>> {
        let t = match self.rtx.open_table(app_table(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let value = t.get(key).map_err(io_err)?;
        value
            .map(|v| serde_json::from_str(v.value()).map_err(io_err))
            .transpose()
    }

    /// Every entry from key `start` on, in key order.
    pub fn scan_from<T: DeserializeOwned>(
        &self,
        table: &str,
        start: &str,
    ) -> io::Result<Vec<(String, T)>> {
        let t = match self.rtx.open_table(app_table(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut out = Vec::new();
        for item in t.range::<&str>(start..).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            out.push((
                k.value().to_owned(),
                serde_json::from_str(v.value()).map_err(io_err)?,
            ));
        }
        Ok(out)
    }

    pub fn scan<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
    ) -> io::Result<Vec<(String, T)>> {
        self.scan_prefix_from(table, prefix, prefix)
    }

    /// Hands the entries under `prefix` from key `from` on to `f`, one at a
    /// time in key order, until `f` answers false (nothing is collected).
    pub fn visit<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
        from: &str,
        f: impl FnMut(&str, T) -> io::Result<bool>,
    ) -> io::Result<()> {
        match self.rtx.open_table(app_table(table)) {
            Ok(t) => visit_range(&t, from.max(prefix).., prefix, f),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// The entries under `prefix` from key `from` on, in key order.
    pub fn scan_prefix_from<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
        from: &str,
    ) -> io::Result<Vec<(String, T)>> {
        match self.rtx.open_table(app_table(table)) {
            Ok(t) => scan_table(&t, prefix, from),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// A value as the bytes of the Raft log and meta tables (JSON).
pub(crate) fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn dec<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
