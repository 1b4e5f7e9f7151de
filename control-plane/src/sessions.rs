//! Sessions and their turns, in per-tenant tables (`sessions.<tenant>`,
//! `turns.<tenant>`). The only way to reach them is a [`TenantScope`] (to
//! change) or a [`TenantView`] (to read), each made for one [`TenantId`] and
//! deriving its table names from that id alone: no call takes a tenant id
//! from one request and reads another tenant's tables.

use std::io;

use bulkhead_proto::TenantId;
use serde::{Deserialize, Serialize};

use crate::store::{Tables, View};

/// A conversation of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub title: String,
    pub user_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Turns appended so far (also the next turn's sequence number).
    pub turns: u64,
}

impl SessionRecord {
    /// Whether a caller limited to `owner`'s sessions may reach this one
    /// (an empty `owner`: a caller not limited to one user).
    pub fn belongs_to(&self, owner: &str) -> bool {
        owner.is_empty() || self.user_id == owner
    }
}

/// One message of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub seq: u64,
    pub role: String,
    pub content: String,
    pub at_ms: i64,
}

fn sessions_table(tenant: &TenantId) -> String {
    format!("sessions.{tenant}")
}

pub(crate) fn turns_table(tenant: &TenantId) -> String {
    format!("turns.{tenant}")
}

fn turn_key(session_id: &str, seq: u64) -> String {
    format!("{session_id}/{seq:012}")
}

/// Write access to one tenant's sessions inside a state-machine transaction.
pub struct TenantScope<'a, 't> {
    tables: &'a Tables<'t>,
    sessions: String,
    turns: String,
}

impl<'a, 't> TenantScope<'a, 't> {
    pub fn new(tables: &'a Tables<'t>, tenant: &TenantId) -> Self {
        Self {
            tables,
            sessions: sessions_table(tenant),
            turns: turns_table(tenant),
        }
    }

    pub fn session(&self, session_id: &str) -> io::Result<Option<SessionRecord>> {
        self.tables.get(&self.sessions, session_id)
    }

    pub fn put_session(&self, session: &SessionRecord) -> io::Result<()> {
        self.tables
            .put(&self.sessions, &session.session_id, session)
    }

    /// Appends turns to a session (which must exist) and returns it updated.
    pub fn append(
        &self,
        mut session: SessionRecord,
        turns: Vec<(String, String)>,
        now_ms: i64,
    ) -> io::Result<SessionRecord> {
        for (role, content) in turns {
            let turn = TurnRecord {
                seq: session.turns,
                role,
                content,
                at_ms: now_ms,
            };
            self.tables
                .put(&self.turns, &turn_key(&session.session_id, turn.seq), &turn)?;
            session.turns += 1;
        }
        session.updated_at_ms = now_ms;
        self.put_session(&session)?;
        Ok(session)
    }

    pub fn delete_session(&self, session_id: &str) -> io::Result<()> {
        self.tables.delete(&self.sessions, session_id)?;
        self.tables
            .delete_prefix(&self.turns, &format!("{session_id}/"))?;
        Ok(())
    }

    /// Drops turns older than `cutoff_ms`, and sessions idle since before
    /// it: at most `budget` rows, so that one command's work stays bounded.
    /// Returns the rows dropped.
    pub fn prune(&self, cutoff_ms: i64, budget: usize) -> io::Result<usize> {
        let mut old = Vec::new();
        self.tables
            .visit::<TurnRecord>(&self.turns, "", |key, turn| {
                if turn.at_ms < cutoff_ms {
                    old.push(key.to_owned());
                }
                Ok(old.len() < budget)
            })?;
        for key in &old {
            self.tables.delete(&self.turns, key)?;
        }
        let mut idle = Vec::new();
        if old.len() < budget {
            self.tables
                .visit::<SessionRecord>(&self.sessions, "", |id, session| {
                    if session.updated_at_ms < cutoff_ms {
                        idle.push(id.to_owned());
                    }
                    Ok(old.len() + idle.len() < budget)
                })?;
        }
        for id in &idle {
            self.tables.delete(&self.sessions, id)?;
        }
        Ok(old.len() + idle.len())
    }

    /// Drops every session and turn of the tenant.
    pub fn drop_all(&self) -> io::Result<()> {
        self.tables.drop_table(&self.sessions)?;
        self.tables.drop_table(&self.turns)
    }
}

/// Read access to one tenant's sessions.
pub struct TenantView<'a> {
    view: &'a View,
    sessions: String,
    turns: String,
}

impl<'a> TenantView<'a> {
    pub fn new(view: &'a View, tenant: &TenantId) -> Self {
        Self {
            view,
            sessions: sessions_table(tenant),
            turns: turns_table(tenant),
        }
    }

    pub fn session(&self, session_id: &str) -> io::Result<Option<SessionRecord>> {
        self.view.get(&self.sessions, session_id)
    }

    /// Sessions, most recently used first.
    pub fn sessions(&self) -> io::Result<Vec<SessionRecord>> {
        let mut all: Vec<SessionRecord> = self
            .view
            .scan::<SessionRecord>(&self.sessions, "")?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.updated_at_ms));
        Ok(all)
    }

    /// The last `last` turns of a session (all with 0), oldest first; none
    /// for a session that does not exist.
    pub fn turns(&self, session_id: &str, last: usize) -> io::Result<Vec<TurnRecord>> {
        match self.session(session_id)? {
            Some(session) => self.turns_of(&session, last),
            None => Ok(Vec::new()),
        }
    }

    /// [`Self::turns`] of a session already read. Reads only those turns:
    /// keys are in sequence order and the session knows its next sequence
    /// number, so a long session costs no more to read.
    pub fn turns_of(&self, session: &SessionRecord, last: usize) -> io::Result<Vec<TurnRecord>> {
        let session_id = session.session_id.as_str();
        let first = match last {
            0 => 0,
            n => session.turns.saturating_sub(n as u64),
        };
        let mut turns: Vec<TurnRecord> = self
            .view
            .scan_prefix_from::<TurnRecord>(
                &self.turns,
                &format!("{session_id}/"),
                &turn_key(session_id, first),
            )?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        if last > 0 && turns.len() > last {
            turns.drain(..turns.len() - last);
        }
        Ok(turns)
    }
}
