//! Placing waiting requests in KV slots: the fairest waiting request gets a
//! free slot of its variant (its own session's slot when it is resident), a
//! slot whose session must leave is saved to host memory, a returning
//! session is restored from there, and a new one may copy a cached prefix
//! from a slot of its own tenant only.

use super::{Active, EngineLoop, slot_id};
use crate::catalog::Prepared;
use crate::error::WorkerError;
use crate::request::Event;
use crate::scheduler::pick_next;
use crate::slots::{Owner, Placement, common_prefix};
use crate::text::TextStream;
use bulkhead_proto::{SessionId, TenantId};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::collections::HashMap;

impl EngineLoop {
    /// Gives free slots to waiting requests, fairest first.
    pub(super) fn admit(&mut self) {
        let mut skipped = Vec::new();
        loop {
            let mut active: HashMap<&TenantId, usize> = HashMap::new();
            for v in &self.variants {
                for a in &v.active {
                    *active.entry(&a.prepared.params.tenant).or_default() += 1;
                }
            }
            let candidates: Vec<(&TenantId, u64)> = self
                .waiting
                .iter()
                .filter(|(_, arrival)| !skipped.contains(arrival))
                .map(|(s, arrival)| (&s.prepared.params.tenant, *arrival))
                .collect();
            let Some(pick) = pick_next(&candidates, &active) else {
                break;
            };
            let arrival = candidates[pick].1;
            let Some(pos) = self.waiting.iter().position(|(_, a)| *a == arrival) else {
                break;
            };
            match self.try_place(pos) {
                Ok(true) => {}
                Ok(false) => skipped.push(arrival),
                Err(err) => {
                    if let Some((s, _)) = self.waiting.remove(pos) {
                        let p = &s.prepared.params;
                        tracing::error!(
                            tenant = %p.tenant,
                            user = p.user.as_ref().map_or("", |u| u.as_str()),
                            request_id = %p.request_id,
                            session = p.session.as_ref().map_or("", |s| s.as_str()),
                            error = %err,
                            "request failed before start"
                        );
                        let _ = s.events.send(Event::Failed(err));
                    }
                }
            }
        }
    }

    /// Binds waiting request `pos` to a slot of its variant. Ok(false): every
    /// slot is busy; it stays waiting.
    pub(super) fn try_place(&mut self, pos: usize) -> Result<bool, WorkerError> {
        let v = self.variant_index(pos)?;
        self.variants[v].last_used = std::time::Instant::now();
        // Made before the request leaves the queue, so that a failure fails it alone.
        let sampler = sampler(
            &self.waiting[pos].0.prepared,
            &self.variants[v].ctx.model().model,
        )?;
        let (tenant, session, scope) = {
            let p = &self.waiting[pos].0.prepared.params;
            (p.tenant.clone(), p.session.clone(), p.kv_scope.clone())
        };
        let Some(placement) = self.variants[v].table.place(&tenant, session.as_ref()) else {
            return Ok(false);
        };
        let Some((submission, _)) = self.waiting.remove(pos) else {
            return Ok(false);
        };
        let slot = match placement {
            Placement::Resident(slot) => slot,
            Placement::Fresh { slot, evict } => {
                if evict {
                    self.evict(v, slot);
                }
                self.fill(
                    v,
                    slot,
                    &tenant,
                    &scope,
                    session.as_ref(),
                    &submission.prepared.prompt,
                )?;
                slot
            }
        };
        let variant = &mut self.variants[v];
        let prompt = &submission.prepared.prompt;
        let held = &mut variant.table.slots[slot].tokens;
        // At least the last prompt token is decoded again: its logits start the answer.
        let cached = common_prefix(held, prompt).min(prompt.len().saturating_sub(1));
        let keep = u32::try_from(cached).unwrap_or(u32::MAX);
        variant
            .ctx
            .truncate(slot_id(slot), keep)
            .map_err(|e| WorkerError::Engine(format!("trimming slot: {e}")))?;
        held.truncate(cached);
        let s = &mut variant.table.slots[slot];
        s.busy = true;
        s.owner = Some(Owner {
            tenant: tenant.clone(),
            session,
            scope,
        });
        let p = &submission.prepared.params;
        tracing::debug!(
            tenant = %tenant,
            user = p.user.as_ref().map_or("", |u| u.as_str()),
            request_id = %p.request_id,
            session = p.session.as_ref().map_or("", |s| s.as_str()),
            slot,
            cached,
            prompt = prompt.len(),
            "request admitted"
        );
        let (now, peak) = self.generating.entry(tenant.clone()).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
        variant.active.push(Active {
            slot,
            text: TextStream::new(submission.prepared.params.stop.clone()),
            prepared: submission.prepared,
            events: submission.events,
            sampler,
            prefilled: cached,
            cached,
            next: None,
            logits_at: None,
            generated: 0,
            received: submission.received,
            first_token: None,
        });
        Ok(true)
    }

    /// Moves an idle slot's owner out: a session's state goes to host memory
    /// (within budget), a one-off leftover is dropped.
    pub(super) fn evict(&mut self, v: usize, slot: usize) {
        let variant = &mut self.variants[v];
        let s = &mut variant.table.slots[slot];
        if let Some(Owner {
            tenant,
            session: Some(session),
            ..
        }) = s.owner.take()
        {
            match variant.ctx.state_get(slot_id(slot)) {
                Ok(state) => {
                    let bytes = state.byte_len() as u64;
                    let tokens = std::mem::take(&mut s.tokens);
                    if self.host.insert(
                        (variant.key, tenant.clone(), session),
                        state,
                        tokens,
                        bytes,
                    ) {
                        self.metrics.slot_evictions.inc();
                        tracing::debug!(tenant = %tenant, slot, bytes, "slot moved to host memory");
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "saving slot state failed; it will be recomputed")
                }
            }
        }
        s.tokens.clear();
        variant.ctx.clear(slot_id(slot));
    }

    /// Fills an empty slot for a request: the session's state from host
    /// memory if parked there, else the longest prefix held by another idle
    /// slot of the same tenant and scope.
    pub(super) fn fill(
        &mut self,
        v: usize,
        slot: usize,
        tenant: &TenantId,
        scope: &str,
        session: Option<&SessionId>,
        prompt: &[LlamaToken],
    ) -> Result<(), WorkerError> {
        let variant = &mut self.variants[v];
        variant.table.slots[slot].owner = None;
        variant.table.slots[slot].tokens.clear();
        variant.ctx.clear(slot_id(slot));
        if let Some(session) = session
            && let Some(entry) = self
                .host
                .remove(&(variant.key, tenant.clone(), session.clone()))
        {
            match variant.ctx.state_set(&entry.state, slot_id(slot)) {
                Ok(()) => {
                    variant.table.slots[slot].tokens = entry.tokens;
                    self.metrics.slot_restores.inc();
                    tracing::debug!(tenant = %tenant, slot, "slot restored from host memory");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "restoring slot failed; recomputing");
                    variant.ctx.clear(slot_id(slot));
                }
            }
        }
        if let Some((donor, shared)) = variant.table.best_donor(tenant, scope, prompt, slot) {
            let state = variant
                .ctx
                .state_get(slot_id(donor))
                .map_err(|e| WorkerError::Engine(format!("reading donor slot: {e}")))?;
            variant
                .ctx
                .state_set(&state, slot_id(slot))
                .map_err(|e| WorkerError::Engine(format!("copying donor slot: {e}")))?;
            let tokens = variant.table.slots[donor].tokens[..shared].to_vec();
            variant.table.slots[slot].tokens = tokens;
            tracing::debug!(tenant = %tenant, slot, donor, shared, "prefix copied from the same tenant and scope");
        }
        Ok(())
    }
}

/// The request's sampler: its grammar first, when the answer must be a tool
/// call, then greedy or top-p sampling.
fn sampler(prepared: &Prepared, model: &LlamaModel) -> Result<LlamaSampler, WorkerError> {
    let sampling = &prepared.params.sampling;
    let mut chain = Vec::new();
    if let Some(grammar) = &prepared.grammar {
        chain.push(
            LlamaSampler::grammar(model, grammar, "root")
                .map_err(|e| WorkerError::Engine(format!("the tool call's grammar: {e}")))?,
        );
    }
    if sampling.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        chain.extend([
            LlamaSampler::top_p(sampling.top_p, 1),
            LlamaSampler::temp(sampling.temperature),
            LlamaSampler::dist(sampling.seed),
        ]);
    }
    Ok(if chain.len() == 1 {
        chain.remove(0)
    } else {
        LlamaSampler::chain_simple(chain)
    })
}
