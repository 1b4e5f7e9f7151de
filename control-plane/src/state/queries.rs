//! Reads of the replicated state through a [`View`]: tenants, keys,
//! usage reports, workers and changes for the watch stream.

use std::collections::BTreeMap;
use std::io;

use crate::ledger::{Allowance, LedgerDay};
use crate::store::View;

use super::*;

/// Read-side queries on a [`View`].
impl View {
    pub fn admin_hash(&self) -> io::Result<Option<String>> {
        self.get(META, ADMIN_HASH)
    }

    pub fn tenant(&self, id: &str) -> io::Result<Option<TenantRecord>> {
        self.get(TENANTS, id)
    }

    pub fn tenants(&self) -> io::Result<Vec<TenantRecord>> {
        Ok(self
            .scan::<TenantRecord>(TENANTS, "")?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub fn keys_of(&self, tenant_id: &str) -> io::Result<Vec<KeyRecord>> {
        Ok(self
            .scan::<KeyRecord>(KEYS, "")?
            .into_iter()
            .map(|(_, k)| k)
            .filter(|k| k.tenant_id == tenant_id)
            .collect())
    }

    pub fn key_by_hash(&self, hash: &str) -> io::Result<Option<KeyRecord>> {
        match self.get::<String>(KEY_HASHES, hash)? {
            Some(key_id) => self.get(KEYS, &key_id),
            None => Ok(None),
        }
    }

    pub fn key(&self, key_id: &str) -> io::Result<Option<KeyRecord>> {
        self.get(KEYS, key_id)
    }

    /// The ledger days of a tenant, newest first.
    pub fn ledger_days(&self, tenant_id: &str) -> io::Result<Vec<(String, LedgerDay)>> {
        let prefix = format!("{tenant_id}/");
        let mut days: Vec<(String, LedgerDay)> = self
            .scan::<LedgerDay>(LEDGER, &prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect();
        days.reverse();
        Ok(days)
    }

    /// One ledger day of a tenant.
    pub fn ledger_day(&self, tenant_id: &str, day: &str) -> io::Result<Option<LedgerDay>> {
        self.get(LEDGER, &key2(tenant_id, day))
    }

    /// A tenant's most recent requests, newest first.
    pub fn recent(&self, tenant_id: &str) -> io::Result<Vec<UsageRecord>> {
        let mut all: Vec<UsageRecord> = self
            .scan::<UsageRecord>(RECENT, &format!("{tenant_id}/"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        all.reverse();
        Ok(all)
    }

    /// Allowances of a tenant by gateway.
    pub fn allowances(&self, tenant_id: &str) -> io::Result<Vec<(String, Allowance)>> {
        let prefix = format!("{tenant_id}/");
        Ok(self
            .scan::<Allowance>(ALLOWANCES, &prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect())
    }

    /// Per-user totals of a tenant over the given days.
    pub fn users(&self, tenant_id: &str, days: &[String]) -> io::Result<Vec<(String, UserTotals)>> {
        let mut totals: BTreeMap<String, UserTotals> = BTreeMap::new();
        for day in days {
            let prefix = format!("{tenant_id}/{day}/");
            for (k, u) in self.scan::<UserTotals>(USERS, &prefix)? {
                let e = totals.entry(k[prefix.len()..].to_owned()).or_default();
                e.tokens += u.tokens;
                e.requests += u.requests;
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// The `limit` most frequent prompts of a tenant over the given days,
    /// most frequent first (ties by text). Operator-only.
    pub fn top_prompts(
        &self,
        tenant_id: &str,
        days: &[String],
        limit: usize,
    ) -> io::Result<Vec<PromptCount>> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for day in days {
            for (_, p) in self.scan::<PromptCount>(PROMPTS, &format!("{tenant_id}/{day}/"))? {
                *counts.entry(p.text).or_default() += p.count;
            }
        }
        let mut all: Vec<PromptCount> = counts
            .into_iter()
            .map(|(text, count)| PromptCount { text, count })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
        all.truncate(limit);
        Ok(all)
    }

    /// The usage export key (hex), once one is stored.
    pub fn export_key(&self) -> io::Result<Option<String>> {
        self.get(META, EXPORT_KEY)
    }

    /// The version of the last change.
    pub fn version(&self) -> io::Result<u64> {
        Ok(self.get::<u64>(META, VERSION)?.unwrap_or(0))
    }

    /// Changes after `version`, oldest first, or `None` when some of them
    /// are no longer kept (the watcher must resync).
    pub fn changes_after(&self, version: u64) -> io::Result<Option<Vec<(u64, Change)>>> {
        let current = self.version()?;
        if version >= current {
            return Ok(Some(Vec::new()));
        }
        if self
            .get::<(u64, Change)>(CHANGES, &change_key(version + 1))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(
            self.scan_from::<(u64, Change)>(CHANGES, &change_key(version + 1))?
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        ))
    }

    pub fn all_keys(&self) -> io::Result<Vec<KeyRecord>> {
        Ok(self
            .scan::<KeyRecord>(KEYS, "")?
            .into_iter()
            .map(|(_, k)| k)
            .collect())
    }

    pub fn workers(&self) -> io::Result<Vec<WorkerRecord>> {
        Ok(self
            .scan::<WorkerRecord>(WORKERS, "")?
            .into_iter()
            .map(|(_, w)| w)
            .collect())
    }

    /// Allowances past their reclaim time.
    pub fn reclaimable(&self, now_ms: i64) -> io::Result<usize> {
        Ok(self
            .scan::<Allowance>(ALLOWANCES, "")?
            .iter()
            .map(|(akey, a)| super::reclaimable(self, akey, a, now_ms))
            .collect::<io::Result<Vec<bool>>>()?
            .into_iter()
            .filter(|due| *due)
            .count()
            + self
                .workers()?
                .iter()
                .filter(|w| w.expires_at_ms < now_ms)
                .count())
    }
}
