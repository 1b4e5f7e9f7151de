//! A llama.cpp context held together with the model it borrows.
//!
//! llama.cpp contexts borrow their model. Models come and go while the worker
//! serves (see [`crate::live`]), so a context keeps its model alive itself: a
//! model taken out of the catalog is freed when its last context is dropped,
//! never before. Only the calls the engine makes are offered.

use std::sync::Arc;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::catalog::CatalogModel;
use crate::error::WorkerError;

self_cell::self_cell!(
    struct Cell {
        owner: Arc<CatalogModel>,
        #[covariant]
        dependent: LlamaContext,
    }
);

pub(super) struct ModelContext(Cell);

impl ModelContext {
    /// A new context of `model`, with the adapter at `adapter` (index and
    /// scale) applied.
    pub(super) fn new(
        model: Arc<CatalogModel>,
        params: LlamaContextParams,
        adapter: Option<(usize, f32)>,
    ) -> Result<Self, WorkerError> {
        let backend = crate::catalog::backend()?;
        let mut cell = Cell::try_new(model, |m| {
            m.model
                .new_context(backend, params)
                .map_err(|e| WorkerError::Engine(format!("creating a context for {}: {e}", m.name)))
        })?;
        if let Some((index, scale)) = adapter {
            cell.with_dependent_mut(|m, ctx| {
                let mut loras = m.loras.lock().unwrap_or_else(|p| p.into_inner());
                let lora = loras.get_mut(index).ok_or_else(|| {
                    WorkerError::Engine(format!("{} has no adapter {index}", m.name))
                })?;
                ctx.lora_adapter_set(lora, scale)
                    .map_err(|e| WorkerError::Engine(format!("applying adapter: {e}")))
            })?;
        }
        Ok(Self(cell))
    }

    pub(super) fn model(&self) -> &CatalogModel {
        self.0.borrow_owner()
    }

    pub(super) fn decode(&mut self, batch: &mut LlamaBatch) -> Result<(), String> {
        self.0
            .with_dependent_mut(|_, ctx| ctx.decode(batch).map_err(|e| e.to_string()))
    }

    pub(super) fn sample(&self, sampler: &mut LlamaSampler, at: i32) -> LlamaToken {
        sampler.sample(self.0.borrow_dependent(), at)
    }

    /// Drops positions `from..` of sequence `seq`.
    pub(super) fn truncate(&mut self, seq: i32, from: u32) -> Result<(), String> {
        self.0.with_dependent_mut(|_, ctx| {
            ctx.kv_cache_seq_rm(seq, Some(from), None)
                .map_err(|e| e.to_string())
        })
    }

    /// Empties sequence `seq`.
    pub(super) fn clear(&mut self, seq: i32) {
        self.0.with_dependent_mut(|_, ctx| {
            let _ = u32::try_from(seq).map(|s| ctx.clear_kv_cache_seq(Some(s), None, None));
        });
    }

    pub(super) fn state_get(&self, seq: i32) -> Result<SeqState, String> {
        self.0
            .borrow_dependent()
            .state_seq_get(seq, LlamaStateSeqFlags::empty())
            .map_err(|e| e.to_string())
    }

    pub(super) fn state_set(&mut self, state: &SeqState, seq: i32) -> Result<(), String> {
        self.0
            .with_dependent_mut(|_, ctx| ctx.state_seq_set(state, seq).map_err(|e| e.to_string()))
    }
}
