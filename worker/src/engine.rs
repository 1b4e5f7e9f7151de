//! The engine thread: it alone owns the llama.cpp contexts (one per model
//! variant, that is per model and adapter) and runs the decode loop.
//!
//! Every step, every active request of a context advances in one batch:
//! generating requests add one token each, and prompts being prefilled share
//! the rest of the batch in chunks, so a long prompt never stalls the others.
//! Requests arrive over a channel and join at the next step. The engine never
//! blocks on a client: output goes into unbounded channels, and a request
//! whose receiver is gone is cancelled at the next step.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_proto::worker as pb;
use bulkhead_proto::{SessionId, TenantId, WorkerId};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use crate::catalog::{Adapters, Catalog, CatalogModel, Prepared, saturating_u32};
use crate::error::WorkerError;
use crate::metrics::{KvLabels, Metrics, RequestLabels, TenantLabel};
use crate::request::{Event, FinishReason, Finished, GenerateParams, Usage};
use crate::scheduler::{pick_next, split_prefill};
use crate::slots::{HostCache, Owner, Placement, SlotTable, common_prefix};
use crate::text::TextStream;

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
fn lower_priority(nice: i32) {
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

/// What the engine shows of itself, refreshed every step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub active_requests: u32,
    pub queued_requests: u32,
    pub device_slots_used: u32,
    pub device_slots_total: u32,
    pub host_slots: u32,
    pub host_bytes: u64,
    pub generated_tokens_total: u64,
    pub decode_tokens_per_second: f64,
    /// tenant -> (device bytes, host bytes, device slots, host slots)
    pub tenants: HashMap<TenantId, TenantKv>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TenantKv {
    pub device_bytes: u64,
    pub host_bytes: u64,
    pub device_slots: u32,
    pub host_slots: u32,
    /// Requests of the tenant generating now, and the most ever at once.
    pub active_requests: u32,
    pub peak_active_requests: u32,
}

struct Submission {
    prepared: Prepared,
    events: UnboundedSender<Event>,
    received: Instant,
}

/// Handle to the engine thread. Dropping every clone of it lets the thread
/// finish what is in flight and exit.
pub struct Engine {
    commands: Mutex<Option<mpsc::Sender<Submission>>>,
    catalog: Arc<Catalog>,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where finished requests' usage events go.
pub type UsageSender = UnboundedSender<pb::UsageEvent>;

impl Engine {
    pub fn start(
        catalog: Arc<Catalog>,
        adapters: Adapters,
        config: EngineConfig,
        worker_id: WorkerId,
        usage: Option<UsageSender>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        if config.slots == 0 || config.batch < config.slots || config.prefill_chunk == 0 {
            return Err(WorkerError::invalid(
                "slots must be at least 1, batch at least slots, prefill chunk at least 1",
                None,
            ));
        }
        let (tx, rx) = mpsc::channel();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let thread_catalog = Arc::clone(&catalog);
        let thread_snapshot = Arc::clone(&snapshot);
        let thread = std::thread::Builder::new()
            .name("bulkhead-engine".into())
            .spawn(move || {
                lower_priority(config.decode_nice);
                let mut engine = EngineLoop {
                    catalog: &thread_catalog,
                    adapters,
                    config,
                    worker_id,
                    usage,
                    metrics,
                    snapshot: thread_snapshot,
                    variants: Vec::new(),
                    host: HostCache::new(0),
                    waiting: VecDeque::new(),
                    arrivals: 0,
                    generated_total: 0,
                    recent: VecDeque::new(),
                    generating: HashMap::new(),
                };
                engine.host = HostCache::new(engine.config.host_cache_bytes);
                engine.run(&rx);
            })
            .map_err(|e| WorkerError::Engine(format!("spawning the engine thread: {e}")))?;
        Ok(Self {
            commands: Mutex::new(Some(tx)),
            catalog,
            snapshot,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Validates and tokenizes `params`, then queues it. The receiver yields
    /// text deltas and ends with exactly one `Finished` (or `Failed`).
    pub fn submit(
        &self,
        params: GenerateParams,
    ) -> Result<(Prepared, tokio::sync::mpsc::UnboundedReceiver<Event>), WorkerError> {
        let prepared = self.catalog.prepare(params)?;
        let summary = Prepared {
            params: prepared.params.clone(),
            model: prepared.model,
            adapter: prepared.adapter,
            prompt: Vec::new(),
            max_tokens: prepared.max_tokens,
        };
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let commands = self
            .commands
            .lock()
            .map_err(|_| WorkerError::Engine("engine handle poisoned".into()))?;
        let sender = commands.as_ref().ok_or(WorkerError::ShuttingDown)?;
        sender
            .send(Submission {
                prepared,
                events,
                received: Instant::now(),
            })
            .map_err(|_| WorkerError::Engine("the engine thread has stopped".into()))?;
        Ok((summary, rx))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops taking requests, lets the engine finish what it has, and joins it.
    pub fn shutdown(&self) {
        if let Ok(mut commands) = self.commands.lock() {
            commands.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("engine thread panicked");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A model variant: a model with at most one adapter at one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct VariantKey {
    model: usize,
    /// Adapter index and scale in thousandths.
    adapter: Option<(usize, u32)>,
}

impl VariantKey {
    fn of(p: &Prepared) -> Self {
        Self {
            model: p.model,
            // Scales are validated to 0..=4, so this cannot overflow.
            adapter: p
                .adapter
                .map(|(a, scale)| (a, (scale * 1000.0).round() as u32)),
        }
    }
}

type HostKey = (VariantKey, TenantId, SessionId);

struct Active {
    slot: usize,
    prepared: Prepared,
    events: UnboundedSender<Event>,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache (cached ones included).
    prefilled: usize,
    cached: usize,
    /// The last sampled token, to be decoded next step.
    next: Option<LlamaToken>,
    /// Batch index whose logits this request samples from after the step.
    logits_at: Option<i32>,
    generated: u32,
    text: TextStream,
    received: Instant,
    first_token: Option<Instant>,
}

struct Variant<'m> {
    key: VariantKey,
    model: &'m CatalogModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    table: SlotTable<LlamaToken>,
    active: Vec<Active>,
}

struct EngineLoop<'m> {
    catalog: &'m Catalog,
    adapters: Adapters,
    config: EngineConfig,
    worker_id: WorkerId,
    usage: Option<UsageSender>,
    metrics: Arc<Metrics>,
    snapshot: Arc<Mutex<Snapshot>>,
    variants: Vec<Variant<'m>>,
    host: HostCache<HostKey, llama_cpp_2::context::session::SeqState, LlamaToken>,
    waiting: VecDeque<(Submission, u64)>,
    arrivals: u64,
    generated_total: u64,
    /// (when, tokens generated in that step) over the last seconds.
    recent: VecDeque<(Instant, u32)>,
    /// Per tenant: (requests generating now, the most ever at once), counted
    /// from admission to finish, cancel or failure (DESIGN.md Q3).
    generating: HashMap<TenantId, (u32, u32)>,
}

const RATE_WINDOW: Duration = Duration::from_secs(2);

impl<'m> EngineLoop<'m> {
    fn run(&mut self, rx: &mpsc::Receiver<Submission>) {
        let mut open = true;
        loop {
            let busy =
                !self.waiting.is_empty() || self.variants.iter().any(|v| !v.active.is_empty());
            if !busy {
                if !open {
                    break;
                }
                self.publish_snapshot();
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(s) => self.enqueue(s),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(s) => self.enqueue(s),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_cancelled();
            self.admit();
            let mut generated = 0;
            for v in 0..self.variants.len() {
                generated += self.step(v);
            }
            self.count_generated(generated);
            self.publish_snapshot();
        }
        tracing::info!("engine stopped");
    }

    fn enqueue(&mut self, submission: Submission) {
        self.arrivals += 1;
        self.waiting.push_back((submission, self.arrivals));
    }

    fn variant_index(&mut self, key: VariantKey) -> Result<usize, WorkerError> {
        if let Some(i) = self.variants.iter().position(|v| v.key == key) {
            return Ok(i);
        }
        let model = self.catalog.model(key.model);
        let backend = crate::catalog::backend()?;
        let mut ctx = model
            .model
            .new_context(backend, self.config.context_params())
            .map_err(|e| {
                WorkerError::Engine(format!("creating a context for {}: {e}", model.name))
            })?;
        if let Some((adapter, scale)) = key.adapter {
            let lora = &mut self.adapters[key.model][adapter];
            ctx.lora_adapter_set(lora, scale as f32 / 1000.0)
                .map_err(|e| WorkerError::Engine(format!("applying adapter: {e}")))?;
        }
        let slots = self.config.slots as usize;
        self.variants.push(Variant {
            key,
            model,
            ctx,
            batch: LlamaBatch::new(self.config.batch as usize, 1),
            table: SlotTable::new(slots),
            active: Vec::new(),
        });
        tracing::info!(model = %model.name, adapter = ?key.adapter, slots, "context created");
        Ok(self.variants.len() - 1)
    }

    /// Requests whose client went away: waiting ones are dropped, active ones
    /// finish at once with their partial usage, freeing their slot.
    fn drop_cancelled(&mut self) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for (s, arrival) in self.waiting.drain(..) {
            if s.events.is_closed() {
                let usage = Usage::default();
                emit_usage(
                    &self.usage,
                    &self.metrics,
                    &self.worker_id,
                    &s.prepared,
                    usage,
                    FinishReason::Cancelled,
                    s.received,
                    None,
                );
            } else {
                kept.push_back((s, arrival));
            }
        }
        self.waiting = kept;
        for v in 0..self.variants.len() {
            let mut i = 0;
            while i < self.variants[v].active.len() {
                if self.variants[v].active[i].events.is_closed() {
                    self.finish(v, i, FinishReason::Cancelled);
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Gives free slots to waiting requests, fairest first.
    fn admit(&mut self) {
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
    fn try_place(&mut self, pos: usize) -> Result<bool, WorkerError> {
        let key = VariantKey::of(&self.waiting[pos].0.prepared);
        let v = self.variant_index(key)?;
        let (tenant, session) = {
            let p = &self.waiting[pos].0.prepared.params;
            (p.tenant.clone(), p.session.clone())
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
            .kv_cache_seq_rm(slot_id(slot), Some(keep), None)
            .map_err(|e| WorkerError::Engine(format!("trimming slot: {e}")))?;
        held.truncate(cached);
        let s = &mut variant.table.slots[slot];
        s.busy = true;
        s.owner = Some(Owner {
            tenant: tenant.clone(),
            session,
        });
        let sampling = &submission.prepared.params.sampling;
        let sampler = if sampling.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(sampling.top_p, 1),
                LlamaSampler::temp(sampling.temperature),
                LlamaSampler::dist(sampling.seed),
            ])
        };
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
    fn evict(&mut self, v: usize, slot: usize) {
        let variant = &mut self.variants[v];
        let s = &mut variant.table.slots[slot];
        if let Some(Owner {
            tenant,
            session: Some(session),
        }) = s.owner.take()
        {
            match variant
                .ctx
                .state_seq_get(slot_id(slot), LlamaStateSeqFlags::empty())
            {
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
        let _ = variant
            .ctx
            .clear_kv_cache_seq(Some(slot as u32), None, None);
    }

    /// Fills an empty slot for a request: the session's state from host
    /// memory if parked there, else the longest prefix held by another idle
    /// slot of the same tenant.
    fn fill(
        &mut self,
        v: usize,
        slot: usize,
        tenant: &TenantId,
        session: Option<&SessionId>,
        prompt: &[LlamaToken],
    ) -> Result<(), WorkerError> {
        let variant = &mut self.variants[v];
        variant.table.slots[slot].owner = None;
        variant.table.slots[slot].tokens.clear();
        let _ = variant
            .ctx
            .clear_kv_cache_seq(Some(slot as u32), None, None);
        if let Some(session) = session
            && let Some(entry) = self
                .host
                .remove(&(variant.key, tenant.clone(), session.clone()))
        {
            match variant.ctx.state_seq_set(&entry.state, slot_id(slot)) {
                Ok(()) => {
                    variant.table.slots[slot].tokens = entry.tokens;
                    self.metrics.slot_restores.inc();
                    tracing::debug!(tenant = %tenant, slot, "slot restored from host memory");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "restoring slot failed; recomputing");
                    let _ = variant
                        .ctx
                        .clear_kv_cache_seq(Some(slot as u32), None, None);
                }
            }
        }
        if let Some((donor, shared)) = variant.table.best_donor(tenant, prompt, slot) {
            let state = variant
                .ctx
                .state_seq_get(slot_id(donor), LlamaStateSeqFlags::empty())
                .map_err(|e| WorkerError::Engine(format!("reading donor slot: {e}")))?;
            variant
                .ctx
                .state_seq_set(&state, slot_id(slot))
                .map_err(|e| WorkerError::Engine(format!("copying donor slot: {e}")))?;
            let tokens = variant.table.slots[donor].tokens[..shared].to_vec();
            variant.table.slots[slot].tokens = tokens;
            tracing::debug!(tenant = %tenant, slot, donor, shared, "prefix copied from the same tenant");
        }
        Ok(())
    }

    /// One decode step of variant `v`; returns the tokens generated.
    fn step(&mut self, v: usize) -> u32 {
        let variant = &mut self.variants[v];
        if variant.active.is_empty() {
            return 0;
        }
        variant.batch.clear();
        // llama.cpp splits a batch over per-sequence KV streams into ubatches
        // of consecutive sequence ids in batch order, so tokens go in slot
        // order: out of order, one step became several graph computations.
        let mut order: Vec<usize> = (0..variant.active.len()).collect();
        order.sort_by_key(|&i| variant.active[i].slot);
        let decoding = variant.active.iter().filter(|a| a.next.is_some()).count();
        let budget = (self.config.batch as usize)
            .saturating_sub(decoding)
            .min(self.config.prefill_chunk as usize);
        let prefilling: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| variant.active[i].next.is_none())
            .collect();
        let remaining: Vec<usize> = prefilling
            .iter()
            .map(|&i| variant.active[i].prepared.prompt.len() - variant.active[i].prefilled)
            .collect();
        let shares = split_prefill(budget, &remaining);
        let mut share_of = vec![0usize; variant.active.len()];
        for (k, &i) in prefilling.iter().enumerate() {
            share_of[i] = shares[k];
        }
        let mut added: Vec<(usize, usize)> = Vec::new(); // (active index, prompt tokens added)
        for &i in &order {
            let a = &mut variant.active[i];
            a.logits_at = None;
            if let Some(token) = a.next {
                let pos = variant.table.slots[a.slot].tokens.len();
                if variant
                    .batch
                    .add(token, pos_of(pos), &[slot_id(a.slot)], true)
                    .is_err()
                {
                    continue;
                }
                a.logits_at = Some(variant.batch.n_tokens() - 1);
                added.push((i, 0));
                continue;
            }
            let n = share_of[i];
            if n == 0 {
                continue;
            }
            let start = a.prefilled;
            let end = start + n;
            let last = end == a.prepared.prompt.len();
            for (j, &token) in a.prepared.prompt[start..end].iter().enumerate() {
                let logits = last && start + j + 1 == end;
                // The batch holds `batch` tokens and shares never exceed it.
                let _ = variant
                    .batch
                    .add(token, pos_of(start + j), &[slot_id(a.slot)], logits);
            }
            if last {
                a.logits_at = Some(variant.batch.n_tokens() - 1);
            }
            added.push((i, n));
        }
        if added.is_empty() {
            return 0;
        }
        if let Err(e) = variant.ctx.decode(&mut variant.batch) {
            tracing::error!(error = %e, "decode failed; failing the variant's requests");
            while !self.variants[v].active.is_empty() {
                self.fail(v, 0, WorkerError::Engine(format!("decode failed: {e}")));
            }
            return 0;
        }
        // The batch is in the KV cache now: record what each slot holds.
        for &(i, n) in &added {
            let a = &mut variant.active[i];
            let held = &mut variant.table.slots[a.slot].tokens;
            if n == 0 {
                if let Some(token) = a.next.take() {
                    held.push(token);
                }
            } else {
                held.extend_from_slice(&a.prepared.prompt[a.prefilled..a.prefilled + n]);
                a.prefilled += n;
            }
        }
        let mut generated = 0;
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        let vocab = variant.model.model.vocab();
        for (i, a) in variant.active.iter_mut().enumerate() {
            let Some(at) = a.logits_at else { continue };
            let token = a.sampler.sample(&variant.ctx, at);
            generated += 1;
            a.generated += 1;
            if a.first_token.is_none() {
                a.first_token = Some(Instant::now());
            }
            if vocab.is_eog(token) && !a.prepared.params.sampling.ignore_eos {
                done.push((i, FinishReason::Stop));
                continue;
            }
            let piece = vocab.token_to_piece(token, false, None);
            let fed = a.text.feed(&piece);
            if !fed.text.is_empty() {
                let _ = a.events.send(Event::Delta(fed.text));
            }
            if fed.stopped {
                done.push((i, FinishReason::Stop));
            } else if a.generated >= a.prepared.max_tokens
                || variant.table.slots[a.slot].tokens.len() + 1
                    >= self.config.context_window as usize
            {
                done.push((i, FinishReason::Length));
            } else {
                a.next = Some(token);
            }
        }
        for (i, reason) in done.into_iter().rev() {
            self.finish(v, i, reason);
        }
        generated
    }

    /// Ends active request `i` of variant `v`: last text, the `Finished`
    /// message with exact usage, the usage event, and the slot released.
    fn finish(&mut self, v: usize, i: usize, reason: FinishReason) {
        let variant = &mut self.variants[v];
        let mut a = variant.active.swap_remove(i);
        stop_generating(&mut self.generating, &a.prepared.params.tenant);
        if reason != FinishReason::Cancelled {
            let rest = a.text.finish();
            if !rest.is_empty() {
                let _ = a.events.send(Event::Delta(rest));
            }
        }
        let params = &a.prepared.params;
        variant.table.release(
            a.slot,
            Owner {
                tenant: params.tenant.clone(),
                session: params.session.clone(),
            },
        );
        let usage = Usage {
            prompt_tokens: saturating_u32(a.prefilled),
            completion_tokens: a.generated,
            cached_tokens: saturating_u32(a.cached),
        };
        let ttft = a.first_token.map(|t| t.duration_since(a.received));
        let finished = emit_usage(
            &self.usage,
            &self.metrics,
            &self.worker_id,
            &a.prepared,
            usage,
            reason,
            a.received,
            ttft,
        );
        let _ = a.events.send(Event::Finished(finished));
    }

    /// Ends active request `i` with an engine error: no usage is billed and
    /// the slot's state is dropped.
    fn fail(&mut self, v: usize, i: usize, err: WorkerError) {
        let variant = &mut self.variants[v];
        let a = variant.active.swap_remove(i);
        stop_generating(&mut self.generating, &a.prepared.params.tenant);
        let s = &mut variant.table.slots[a.slot];
        s.busy = false;
        s.owner = None;
        s.tokens.clear();
        let _ = variant
            .ctx
            .clear_kv_cache_seq(Some(a.slot as u32), None, None);
        let _ = a.events.send(Event::Failed(err));
    }

    fn count_generated(&mut self, generated: u32) {
        let now = Instant::now();
        self.generated_total += u64::from(generated);
        if generated > 0 {
            self.recent.push_back((now, generated));
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    fn publish_snapshot(&mut self) {
        let mut snap = Snapshot {
            queued_requests: saturating_u32(self.waiting.len()),
            host_slots: saturating_u32(self.host.len()),
            host_bytes: self.host.used_bytes(),
            generated_tokens_total: self.generated_total,
            ..Snapshot::default()
        };
        let tokens: u32 = self.recent.iter().map(|(_, n)| n).sum();
        if let Some((first, _)) = self.recent.front() {
            let span = Instant::now()
                .duration_since(*first)
                .max(Duration::from_millis(250));
            snap.decode_tokens_per_second = f64::from(tokens) / span.as_secs_f64();
        }
        for v in &self.variants {
            snap.active_requests += saturating_u32(v.active.len());
            snap.device_slots_total += saturating_u32(v.table.slots.len());
            for s in &v.table.slots {
                if let Some(owner) = &s.owner {
                    snap.device_slots_used += 1;
                    let t = snap.tenants.entry(owner.tenant.clone()).or_default();
                    t.device_slots += 1;
                    t.device_bytes += s.tokens.len() as u64 * v.model.kv_bytes_per_token;
                }
            }
        }
        for ((_, tenant, _), entry) in self.host.iter() {
            let t = snap.tenants.entry(tenant.clone()).or_default();
            t.host_slots += 1;
            t.host_bytes += entry.bytes;
        }
        for (tenant, &(now, peak)) in &self.generating {
            let t = snap.tenants.entry(tenant.clone()).or_default();
            t.active_requests = now;
            t.peak_active_requests = peak;
        }
        let m = &self.metrics;
        m.active_requests.set(i64::from(snap.active_requests));
        m.queued_requests.set(i64::from(snap.queued_requests));
        m.device_slots_used.set(i64::from(snap.device_slots_used));
        m.device_slots_total.set(i64::from(snap.device_slots_total));
        m.host_slots.set(i64::from(snap.host_slots));
        m.decode_tokens_per_second
            .set(snap.decode_tokens_per_second);
        m.kv_bytes.clear();
        for (tenant, kv) in &snap.tenants {
            for (tier, bytes) in [("device", kv.device_bytes), ("host", kv.host_bytes)] {
                let labels = KvLabels {
                    tenant: tenant.to_string(),
                    tier: tier.to_owned(),
                };
                m.kv_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        for (tenant, &(now, peak)) in &self.generating {
            let label = TenantLabel {
                tenant: tenant.to_string(),
            };
            m.tenant_active_requests
                .get_or_create(&label)
                .set(i64::from(now));
            m.tenant_peak_active_requests
                .get_or_create(&label)
                .set(i64::from(peak));
        }
        if let Ok(mut shared) = self.snapshot.lock() {
            *shared = snap;
        }
    }
}

/// One request of `tenant` stopped generating.
fn stop_generating(generating: &mut HashMap<TenantId, (u32, u32)>, tenant: &TenantId) {
    if let Some((now, _)) = generating.get_mut(tenant) {
        *now = now.saturating_sub(1);
    }
}

fn slot_id(slot: usize) -> i32 {
    // Slots number at most `EngineConfig::slots`, a u32.
    i32::try_from(slot).unwrap_or(i32::MAX)
}

fn pos_of(pos: usize) -> i32 {
    // Positions stay below the context window, a u32.
    i32::try_from(pos).unwrap_or(i32::MAX)
}

/// Records a finished request: metrics, the usage event, and the `Finished`
/// message for the client.
#[allow(clippy::too_many_arguments)]
fn emit_usage(
    sink: &Option<UsageSender>,
    metrics: &Metrics,
    worker_id: &WorkerId,
    prepared: &Prepared,
    usage: Usage,
    reason: FinishReason,
    received: Instant,
    ttft: Option<Duration>,
) -> Finished {
    let params = &prepared.params;
    let tenant = TenantLabel {
        tenant: params.tenant.to_string(),
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            tenant: tenant.tenant.clone(),
            finish_reason: reason.as_str().to_owned(),
        })
        .inc();
    metrics
        .prompt_tokens
        .get_or_create(&tenant)
        .inc_by(u64::from(usage.prompt_tokens));
    metrics
        .cached_tokens
        .get_or_create(&tenant)
        .inc_by(u64::from(usage.cached_tokens));
    metrics
        .completion_tokens
        .get_or_create(&tenant)
        .inc_by(u64::from(usage.completion_tokens));
    if let Some(ttft) = ttft {
        metrics
            .time_to_first_token
            .get_or_create(&tenant)
            .observe(ttft.as_secs_f64());
    }
    let event_id = params.request_id.event_id();
    let ttft_ms = ttft.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Some(sink) = sink {
        let adapter = params.adapter.clone().unwrap_or_default();
        let event = pb::UsageEvent {
            event_id: event_id.to_string(),
            request_id: params.request_id.to_string(),
            tenant_id: params.tenant.to_string(),
            user_id: params
                .user
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            session_id: params
                .session
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            model: params.model.clone(),
            adapter,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
            time_to_first_token_ms: ttft_ms,
            duration_ms: u64::try_from(received.elapsed().as_millis()).unwrap_or(u64::MAX),
            worker_id: worker_id.to_string(),
            gateway_id: params
                .gateway
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            finish_reason: reason.as_str().to_owned(),
            finished_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            prompt_preview: crate::request::prompt_preview(&params.messages),
        };
        if sink.send(event).is_err() {
            tracing::error!(
                tenant = %params.tenant,
                user = params.user.as_ref().map_or("", |u| u.as_str()),
                request_id = %params.request_id,
                "usage publisher is gone; event lost"
            );
        }
    }
    tracing::info!(
        tenant = %params.tenant,
        user = params.user.as_ref().map_or("", |u| u.as_str()),
        request_id = %params.request_id,
        session = params.session.as_ref().map_or("", |s| s.as_str()),
        prompt_tokens = usage.prompt_tokens,
        cached_tokens = usage.cached_tokens,
        completion_tokens = usage.completion_tokens,
        finish_reason = reason.as_str(),
        "request finished"
    );
    Finished {
        finish_reason: reason,
        usage,
        request_id: params.request_id.clone(),
        event_id,
        time_to_first_token_ms: ttft_ms,
    }
}
