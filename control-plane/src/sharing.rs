//! Knowledge sharing: snippets a tenant with `knowledge_share` publishes,
//! and grants that let another tenant read one snippet or all of them.
//! A granted tenant's message names a snippet as `@shared:<name>`; nothing
//! else of the publishing tenant (sessions, turns, usage) is reachable.

use std::io;

use serde::{Deserialize, Serialize};

use crate::store::Lookup;

/// Snippets by name (names are unique over all tenants).
pub const SNIPPETS: &str = "snippets";
/// `owner/snippet/grantee` -> grant; snippet `*` grants every snippet.
pub const SHARES: &str = "shares";

/// Longest snippet, in bytes.
pub const MAX_SNIPPET_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnippetRecord {
    pub tenant_id: String,
    pub name: String,
    pub content: String,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    pub owner_tenant_id: String,
    pub snippet: String,
    pub grantee_tenant_id: String,
    pub created_at_ms: i64,
}

pub fn share_key(owner: &str, snippet: &str, grantee: &str) -> String {
    format!("{owner}/{snippet}/{grantee}")
}

/// Checks a snippet name: `[A-Za-z0-9_.-]`, 1 to 64 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "a snippet name must have 1 to 64 characters, got {}",
            name.len()
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "a snippet name may contain only ASCII letters, digits, '_', '.' and '-', got {name:?}"
        ));
    }
    Ok(())
}

pub use bulkhead_client::references;

/// Whether `grantee` may read `snippet`, and if not, why. `shares_now`
/// says whether a tenant shares knowledge now (its plan's feature).
pub fn may_read(
    db: &impl Lookup,
    grantee: &str,
    name: &str,
    shares_now: impl Fn(&str) -> io::Result<bool>,
) -> io::Result<Result<SnippetRecord, String>> {
    let Some(s) = db.get::<SnippetRecord>(SNIPPETS, name)? else {
        return Ok(Err(format!("there is no shared snippet `{name}`")));
    };
    if s.tenant_id == grantee {
        return Ok(Ok(s));
    }
    // A tenant that stopped sharing shares nothing, grants or not.
    if !shares_now(&s.tenant_id)? {
        return Ok(Err(format!(
            "tenant `{}` does not share knowledge now, so shared snippet `{name}` cannot be read",
            s.tenant_id
        )));
    }
    let granted = db
        .get::<ShareRecord>(SHARES, &share_key(&s.tenant_id, name, grantee))?
        .is_some()
        || db
            .get::<ShareRecord>(SHARES, &share_key(&s.tenant_id, "*", grantee))?
            .is_some();
    if granted {
        Ok(Ok(s))
    } else {
        Ok(Err(format!(
            "tenant `{grantee}` has no grant to read shared snippet `{name}`"
        )))
    }
}

/// Snippets published by a tenant (all when empty).
pub fn snippets(db: &impl Lookup, tenant_id: &str) -> io::Result<Vec<SnippetRecord>> {
    Ok(db
        .scan::<SnippetRecord>(SNIPPETS, "")?
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| tenant_id.is_empty() || s.tenant_id == tenant_id)
        .collect())
}

/// Grants given by or to a tenant (all when empty).
pub fn shares(db: &impl Lookup, tenant_id: &str) -> io::Result<Vec<ShareRecord>> {
    Ok(db
        .scan::<ShareRecord>(SHARES, "")?
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| {
            tenant_id.is_empty()
                || s.owner_tenant_id == tenant_id
                || s.grantee_tenant_id == tenant_id
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_reference_once() {
        assert_eq!(
            references("See @shared:policy_2026_q1. And @shared:faq-v2, @shared:policy_2026_q1"),
            vec!["policy_2026_q1".to_owned(), "faq-v2".to_owned()]
        );
        assert!(references("no refs @shared: here").is_empty());
    }
}
