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
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_proto::worker as pb;
use bulkhead_proto::{SessionId, TenantId, WorkerId};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use crate::catalog::{Catalog, Prepared, saturating_u32};
use crate::error::WorkerError;
use crate::metrics::{Metrics, RequestLabels, TenantLabel};
use crate::request::{Event, FinishReason, Finished, GenerateParams, Usage};
use crate::scheduler::split_prefill;
use crate::slots::{HostCache, Owner, SlotTable};
use crate::text::TextStream;

mod config;
mod context;
mod placement;
mod snapshot;

pub use config::EngineConfig;
use config::lower_priority;
use context::ModelContext;
pub use snapshot::{Snapshot, TenantKv};

struct Submission {
    prepared: Prepared,
    events: UnboundedSender<Event>,
    received: Instant,
}

/// Handle to the engine thread. Dropping every clone of it lets the thread
/// finish what is in flight and exit.
pub struct Engine {
    commands: Mutex<Option<mpsc::Sender<Submission>>>,
    /// The usage queue, for its spool's fill: no new request while it is full.
    spool: Option<UsageSender>,
    catalog: Arc<Catalog>,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where finished requests' usage events go.
pub use crate::usage::UsageSender;

impl Engine {
    pub fn start(
        catalog: Arc<Catalog>,
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
        let usage_handle = usage.clone();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let thread_catalog = Arc::clone(&catalog);
        let thread_snapshot = Arc::clone(&snapshot);
        let thread = std::thread::Builder::new()
            .name("bulkhead-engine".into())
            .spawn(move || {
                lower_priority(config.decode_nice);
                let mut engine = EngineLoop {
                    generation: thread_catalog.generation(),
                    catalog: thread_catalog,
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
            spool: usage_handle,
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
        if let Some((bytes, cap)) = self.spool.as_ref().and_then(UsageSender::spool_full) {
            return Err(WorkerError::UsageSpoolFull {
                spooled_mib: bytes >> 20,
                cap_mib: cap >> 20,
            });
        }
        let prepared = self.catalog.prepare(params)?;
        let summary = Prepared {
            params: prepared.params.clone(),
            model: Arc::clone(&prepared.model),
            adapter: prepared.adapter,
            prompt: Vec::new(),
            max_tokens: prepared.max_tokens,
            grammar: None,
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
    /// The model's load id (a model loaded again is another model).
    model: u64,
    /// Adapter index and scale in thousandths.
    adapter: Option<(usize, u32)>,
}

impl VariantKey {
    fn of(p: &Prepared) -> Self {
        Self {
            model: p.model.id,
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

struct Variant {
    key: VariantKey,
    /// When a request was last placed here: the least recent idle variant
    /// goes first when the context cap is reached.
    last_used: Instant,
    ctx: ModelContext,
    batch: LlamaBatch<'static>,
    table: SlotTable<LlamaToken>,
    active: Vec<Active>,
}

struct EngineLoop {
    catalog: Arc<Catalog>,
    /// The catalog's generation the variants were last checked against.
    generation: u64,
    config: EngineConfig,
    worker_id: WorkerId,
    usage: Option<UsageSender>,
    metrics: Arc<Metrics>,
    snapshot: Arc<Mutex<Snapshot>>,
    variants: Vec<Variant>,
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

impl EngineLoop {
    fn run(&mut self, rx: &mpsc::Receiver<Submission>) {
        let mut open = true;
        loop {
            self.drop_unloaded();
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

    /// The variant waiting request `pos` needs, its context created on first use.
    fn variant_index(&mut self, pos: usize) -> Result<usize, WorkerError> {
        let prepared = &self.waiting[pos].0.prepared;
        let key = VariantKey::of(prepared);
        if let Some(i) = self.variants.iter().position(|v| v.key == key) {
            return Ok(i);
        }
        let (model, adapter) = (Arc::clone(&prepared.model), prepared.adapter);
        if self.variants.len() >= self.config.max_contexts as usize {
            let idle = self
                .variants
                .iter()
                .enumerate()
                .filter(|(_, v)| v.active.is_empty())
                .min_by_key(|(_, v)| v.last_used)
                .map(|(i, _)| i)
                .ok_or(WorkerError::TooManyContexts(self.config.max_contexts))?;
            let dropped = self.variants.swap_remove(idle);
            self.host.retain(|(key, _, _)| *key != dropped.key);
            tracing::info!(model = %dropped.ctx.model().name, adapter = ?dropped.key.adapter, "least recently used context dropped for a new one");
        }
        let name = model.name.clone();
        let ctx = ModelContext::new(model, self.config.context_params(), adapter)?;
        let slots = self.config.slots as usize;
        self.variants.push(Variant {
            key,
            last_used: Instant::now(),
            ctx,
            batch: LlamaBatch::new(self.config.batch as usize, 1),
            table: SlotTable::new(slots),
            active: Vec::new(),
        });
        tracing::info!(model = %name, adapter = ?key.adapter, slots, "context created");
        Ok(self.variants.len() - 1)
    }

    /// Once a model has left the catalog, its idle contexts and the session
    /// states parked for them go: the model is freed with the last of them.
    fn drop_unloaded(&mut self) {
        let generation = self.catalog.generation();
        if generation == self.generation {
            return;
        }
        let loaded: Vec<u64> = self.catalog.models().iter().map(|m| m.id).collect();
        let gone = |key: &VariantKey| !loaded.contains(&key.model);
        let before = self.variants.len();
        self.variants
            .retain(|v| !gone(&v.key) || !v.active.is_empty());
        self.host.retain(|(key, _, _)| !gone(key));
        if self.variants.iter().all(|v| !gone(&v.key)) {
            self.generation = generation;
        }
        if self.variants.len() < before {
            tracing::info!(
                contexts = before - self.variants.len(),
                "contexts of unloaded models dropped"
            );
        }
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
        let vocab = variant.ctx.model().model.vocab();
        for (i, a) in variant.active.iter_mut().enumerate() {
            let Some(at) = a.logits_at else { continue };
            let token = variant.ctx.sample(&mut a.sampler, at);
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
                scope: params.kv_scope.clone(),
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
        variant.ctx.clear(slot_id(a.slot));
        let _ = a.events.send(Event::Failed(err));
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
            finished_at_ms: bulkhead_proto::clock::now_ms(),
            prompt_preview: crate::request::prompt_preview(&params.messages),
            quota_day: params.quota_day.clone(),
        };
        if !sink.send_blocking(event) {
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
