//! How an engine is sized and how its decode threads run: KV slots and
//! their context, batch and prefill sizes, threads, the host cache, and the
//! decode threads' priority.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Device KV slots (llama.cpp sequences) per model variant.
    pub slots: u32,
    /// Most tokens (prompt plus completion) of one request.
    pub context_window: u32,
    /// Most tokens decoded in one step.
    pub batch: u32,
    /// Most prompt tokens prefilled in one step, over all prompts.
    pub prefill_chunk: u32,
    pub threads: i32,
    /// Budget of host memory for sessions evicted from the device.
    pub host_cache_bytes: u64,
    /// How much lower than the rest of the process the decode threads run
    /// (a nice increment, Linux): see [`lower_priority`].
    pub decode_nice: i32,
    /// Most contexts (model variants) held at once: a variant is a new
    /// context with its own KV slots, and a caller of the worker's HTTP API
    /// picks its adapter scale, so without a cap memory would follow it.
    pub max_contexts: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            slots: 8,
            context_window: 4096,
            batch: 512,
            prefill_chunk: 256,
            threads: std::thread::available_parallelism()
                .map_or(2, |n| i32::try_from(n.get()).unwrap_or(2)),
            host_cache_bytes: 1 << 30,
            decode_nice: 10,
            max_contexts: 8,
        }
    }
}

impl EngineConfig {
    /// The llama.cpp context parameters for one variant: one KV stream per
    /// slot, each `context_window` tokens, so no tenant's requests can take
    /// cache room from another slot. (The benchmark's raw loop uses
    /// llama.cpp's own defaults instead.)
    pub fn context_params(&self) -> LlamaContextParams {
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.slots * self.context_window))
            .with_n_seq_max(self.slots)
            .with_n_batch(self.batch)
            .with_n_ubatch(self.batch)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_kv_unified(false)
    }
}

/// Lowers the calling thread's CPU priority by `nice`. llama.cpp's OpenMP
/// threads spin for a while after each step (libgomp's default: fast steps,
/// no sleep and wake between them), and on a machine whose cores the async
/// runtime shares, that spinning would delay the threads that stream tokens
/// and serve the gateway. Linux keeps a nice value per thread and new threads
/// inherit it: the OpenMP team this thread starts at its first decode runs
/// at the same lower priority, so a runtime thread with work gets the core
/// at once, and when it has none the decode threads keep full speed.
pub(super) fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        match rustix::process::setpriority_process(Some(tid), now.saturating_add(nice)) {
            Ok(()) => tracing::debug!(nice = now.saturating_add(nice), "decode threads lowered"),
            Err(e) => tracing::warn!(error = %e, "could not lower the decode threads' priority"),
        }
    }
}
