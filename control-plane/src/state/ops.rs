//! Gateway operations applied once: a retried grant or return with the same
//! op id answers the first reply instead of applying again.

use std::io;

use serde::{Deserialize, Serialize};

use crate::store::Tables;

use super::{OPS, Reply, key2};

/// A remembered gateway operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OpRecord {
    pub(super) at_ms: i64,
    pub(super) reply: Reply,
}

/// Applies `f` once per (gateway, op id); a repeat answers the first reply.
pub(super) fn once(
    t: &Tables,
    gateway_id: &str,
    op_id: &str,
    now_ms: i64,
    f: impl FnOnce(&Tables) -> io::Result<Reply>,
) -> io::Result<Reply> {
    if op_id.is_empty() {
        return f(t);
    }
    let okey = key2(gateway_id, op_id);
    if let Some(op) = t.get::<OpRecord>(OPS, &okey)? {
        return Ok(op.reply);
    }
    let reply = f(t)?;
    t.put(
        OPS,
        &okey,
        &OpRecord {
            at_ms: now_ms,
            reply: reply.clone(),
        },
    )?;
    Ok(reply)
}
