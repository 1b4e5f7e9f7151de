//! The models and LoRA adapters this worker serves, and the turning of a chat
//! request into prompt tokens (chat template, tokenization, context checks).
//!
//! Models given at start-up (`--model`) are pinned; models from the model
//! directories (`--model-dir`) come and go while the worker serves, as the
//! control plane places them (see [`crate::live`]). The catalog is shared
//! between the engine thread and the request handlers, so validation and
//! tokenization happen before a request reaches the engine; a prepared
//! request holds its model, so a model removed from the catalog is freed only
//! when the last request and context using it are gone. The catalog never
//! holds a context or KV state: those belong to the engine thread alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::error::WorkerError;
use crate::request::{ChatMessage, GenerateParams, Role};
use bulkhead_proto::tools::{Tool, ToolChoice};

mod files;
pub mod ollama;
mod progress;
mod tools;

pub use files::{
    AdapterSpec, DEMO_MODEL_FILE, ModelSpec, default_memory_budget, demo_model_path, model_files,
};
pub use progress::LoadProgress;

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
static BACKEND_INIT: Mutex<()> = Mutex::new(());

/// The process-wide llama.cpp backend, initialised once.
pub fn backend() -> Result<&'static LlamaBackend, WorkerError> {
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    let _guard = BACKEND_INIT
        .lock()
        .map_err(|_| WorkerError::Engine("backend init lock poisoned".into()))?;
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    let backend =
        LlamaBackend::init().map_err(|e| WorkerError::Engine(format!("llama.cpp backend: {e}")))?;
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    Ok(BACKEND.get_or_init(|| backend))
}

/// The accelerators llama.cpp sees (GPUs and the like, not the CPU), with
/// their memory now.
pub fn devices() -> Vec<bulkhead_proto::worker::Device> {
    use llama_cpp_2::LlamaBackendDeviceType as Kind;
    if backend().is_err() {
        return Vec::new();
    }
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.device_type,
                Kind::Gpu | Kind::IntegratedGpu | Kind::Accelerator
            )
        })
        .map(|d| bulkhead_proto::worker::Device {
            name: d.name,
            description: d.description,
            memory_total_bytes: d.memory_total as u64,
            memory_free_bytes: d.memory_free as u64,
        })
        .collect()
}

pub struct CatalogModel {
    pub name: String,
    /// Unique per load: a model loaded again is a new model to the engine.
    pub(crate) id: u64,
    pub(crate) model: LlamaModel,
    template: LlamaChatTemplate,
    /// The template's text when it knows tools: requests with tools are
    /// rendered from it (see [`tools`]).
    tool_template: Option<String>,
    pub adapters: Vec<String>,
    /// The adapters' handles, in the order of `adapters`. llama.cpp frees
    /// them with the model; the engine thread alone applies them.
    pub(crate) loras: Mutex<Vec<LlamaLoraAdapter>>,
    /// The most tokens (prompt plus completion) one request may use.
    pub context_window: u32,
    /// Estimated KV bytes one cached token takes (K and V, f16, all layers).
    pub kv_bytes_per_token: u64,
    /// Bytes of the model file: what its weights take.
    pub bytes: u64,
    /// Given at start-up: kept whatever tenants use.
    pub pinned: bool,
}

/// A request whose prompt is rendered and tokenized, ready for the engine.
pub struct Prepared {
    pub params: GenerateParams,
    pub model: Arc<CatalogModel>,
    /// Index of the adapter within its model, and its scale.
    pub adapter: Option<(usize, f32)>,
    pub prompt: Vec<LlamaToken>,
    pub max_tokens: u32,
    /// GBNF the answer must follow (a forced tool call).
    pub grammar: Option<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("params", &self.params)
            .field("model", &self.model.name)
            .field("adapter", &self.adapter)
            .field("prompt", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("grammar", &self.grammar.is_some())
            .finish()
    }
}

/// How the worker loads models: the same for start-up and live loads.
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    /// Caps each model's per-request window (never beyond its training context).
    pub context_window: u32,
    /// Layers offloaded to a GPU.
    pub gpu_layers: u32,
    /// Directories whose `*.gguf` files may be loaded on demand, named by
    /// their file stem.
    pub model_dirs: Vec<PathBuf>,
    /// The most bytes of model weights held at once.
    pub memory_budget: u64,
}

pub struct Catalog {
    models: RwLock<Vec<Arc<CatalogModel>>>,
    settings: LoadSettings,
    /// Bumped at every change, so the engine notices removed models.
    generation: AtomicU64,
    next_id: AtomicU64,
}

/// Stands for message `i`'s content while the template renders: private-use
/// characters no template adds, around its index.
fn marker(i: usize) -> String {
    format!("\u{F8FF}bulkhead-message-{i}\u{F8FF}")
}

/// Loads one model file with its adapters.
fn load_model(
    spec: &ModelSpec,
    adapters: &[AdapterSpec],
    settings: &LoadSettings,
    progress: &LoadProgress,
) -> Result<CatalogModel, WorkerError> {
    let backend = backend()?;
    let bytes = std::fs::metadata(&spec.path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .ok_or_else(|| {
            WorkerError::invalid(
                format!("model file {} does not exist", spec.path.display()),
                None,
            )
        })?
        .len();
    let (report, name) = (progress.clone(), spec.name.clone());
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(settings.gpu_layers)
        .with_progress_callback(move |p| {
            report.set(&name, p);
            // false makes llama.cpp abandon the load.
            !report.is_cancelled()
        });
    let mut model = LlamaModel::load_from_file(backend, &spec.path, &params)
        .map_err(|e| WorkerError::Engine(format!("loading {}: {e}", spec.path.display())))?;
    let template = match &spec.chat_template {
        Some(t) => LlamaChatTemplate::new(t)
            .map_err(|e| WorkerError::invalid(format!("chat template: {e}"), None))?,
        None => model.chat_template(None).map_err(|e| {
            WorkerError::Engine(format!(
                "{} has no chat template ({e}); give one with --chat-template",
                spec.path.display()
            ))
        })?,
    };
    let mut names = Vec::new();
    let mut loras = Vec::new();
    for a in adapters.iter().filter(|a| a.model == spec.name) {
        if names.contains(&a.name) {
            return Err(WorkerError::invalid(
                format!("adapter `{}` of model `{}` is given twice", a.name, a.model),
                None,
            ));
        }
        if !a.path.is_file() {
            return Err(WorkerError::invalid(
                format!("adapter file {} does not exist", a.path.display()),
                None,
            ));
        }
        let adapter = model.lora_adapter_init(&a.path).map_err(|e| {
            WorkerError::Engine(format!("loading adapter {}: {e}", a.path.display()))
        })?;
        names.push(a.name.clone());
        loras.push(adapter);
    }
    let n_head = u64::from(model.n_head().max(1));
    let head_dim = u64::try_from(model.n_embd()).unwrap_or(0) / n_head;
    let kv_bytes_per_token =
        2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim * 2;
    progress.set(&spec.name, 1.0);
    let tool_template = template
        .to_str()
        .ok()
        .filter(|t| t.contains("tools"))
        .map(str::to_owned);
    Ok(CatalogModel {
        name: spec.name.clone(),
        id: 0,
        context_window: settings.context_window.min(model.n_ctx_train()),
        model,
        template,
        tool_template,
        adapters: names,
        loras: Mutex::new(loras),
        kv_bytes_per_token,
        bytes,
        pinned: false,
    })
}

impl Catalog {
    /// An empty catalog.
    pub fn new(settings: LoadSettings) -> Self {
        Self {
            models: RwLock::default(),
            settings,
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    /// Loads the start-up models and their adapters, pinned. `progress`
    /// hears how far each model is.
    pub fn load(
        models: &[ModelSpec],
        adapters: &[AdapterSpec],
        settings: LoadSettings,
        progress: &LoadProgress,
    ) -> Result<Self, WorkerError> {
        if models.is_empty() && settings.model_dirs.is_empty() {
            return Err(WorkerError::invalid(
                "at least one --model or --model-dir is needed",
                None,
            ));
        }
        for a in adapters {
            if !models.iter().any(|m| m.name == a.model) {
                return Err(WorkerError::invalid(
                    format!(
                        "adapter `{}` names model `{}`, which is not served",
                        a.name, a.model
                    ),
                    None,
                ));
            }
        }
        let catalog = Self::new(settings);
        for spec in models {
            if catalog.get(&spec.name).is_some() {
                return Err(WorkerError::invalid(
                    format!("model `{}` is given twice", spec.name),
                    None,
                ));
            }
            let mut model = load_model(spec, adapters, &catalog.settings, progress)?;
            model.pinned = true;
            catalog.insert(model);
        }
        Ok(catalog)
    }

    /// Loads `name` from the model directories (blocking: call it off the
    /// async runtime) and adds it to the catalog.
    pub fn load_file(&self, name: &str, progress: &LoadProgress) -> Result<(), WorkerError> {
        let path = self
            .files()
            .remove(name)
            .map(|(path, _)| path)
            .ok_or_else(|| WorkerError::UnknownModel(name.to_owned()))?;
        let spec = ModelSpec {
            name: name.to_owned(),
            path,
            chat_template: None,
        };
        let model = load_model(&spec, &[], &self.settings, progress)?;
        self.insert(model);
        Ok(())
    }

    fn insert(&self, mut model: CatalogModel) {
        model.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        models.retain(|m| m.name != model.name);
        models.push(Arc::new(model));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Takes `name` out of the catalog: no new request gets it. The returned
    /// handle dies once the last request and context using it are gone.
    pub fn remove(&self, name: &str) -> Option<Weak<CatalogModel>> {
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let at = models.iter().position(|m| m.name == name)?;
        let model = models.remove(at);
        self.generation.fetch_add(1, Ordering::Release);
        Some(Arc::downgrade(&model))
    }

    /// Changes so far: it moves whenever a model comes or goes.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The loaded models, start-up ones first.
    pub fn models(&self) -> Vec<Arc<CatalogModel>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CatalogModel>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    pub fn settings(&self) -> &LoadSettings {
        &self.settings
    }

    /// The model files of the model directories: see [`model_files`].
    pub fn files(&self) -> BTreeMap<String, (PathBuf, u64)> {
        model_files(&self.settings.model_dirs)
    }

    /// Bytes of the weights loaded now.
    pub fn bytes(&self) -> u64 {
        self.models().iter().map(|m| m.bytes).sum()
    }

    fn find(&self, name: &str) -> Result<Arc<CatalogModel>, WorkerError> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        // An empty model name means the first (default) model.
        if name.is_empty() {
            return models
                .first()
                .cloned()
                .ok_or_else(|| WorkerError::UnknownModel(name.to_owned()));
        }
        models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| WorkerError::UnknownModel(name.to_owned()))
    }

    /// Renders the messages (and the tools offered, unless `tool_choice` is
    /// `none`) with the model's chat template and tokenizes them. Only the
    /// template's own text may hold special tokens: each message's content
    /// is rendered as a marker, and tokenized in its place with
    /// special-token parsing off, so a user who types `<|im_start|>` gets
    /// those characters, never the control token.
    fn tokenize(
        m: &CatalogModel,
        messages: &[ChatMessage],
        tools: &[Tool],
        choice: &ToolChoice,
    ) -> Result<Vec<LlamaToken>, WorkerError> {
        let tools = if *choice == ToolChoice::None {
            &[]
        } else {
            tools
        };
        let with_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| !m.tool_calls.is_empty() || m.role == Role::Tool);
        let written;
        let (text, messages) = match (&m.tool_template, with_tools) {
            (Some(source), true) => {
                let vocab = m.model.vocab();
                let piece = |t: LlamaToken| {
                    String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
                };
                let bos = piece(vocab.bos());
                let text =
                    tools::render(source, messages, tools, marker, &bos, &piece(vocab.eos()))?;
                // The tokenizer adds the BOS token itself, where the model has one.
                let text = match text.strip_prefix(bos.as_str()) {
                    Some(rest) if !bos.is_empty() => rest.to_owned(),
                    _ => text,
                };
                (text, messages)
            }
            _ => {
                written = if with_tools {
                    tools::written_in(messages, tools)
                } else {
                    messages.to_vec()
                };
                let chat = written
                    .iter()
                    .enumerate()
                    .map(|(i, msg)| LlamaChatMessage::new(msg.role.as_str().to_owned(), marker(i)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| WorkerError::invalid(format!("message: {e}"), Some("messages")))?;
                let text = m
                    .model
                    .apply_chat_template(&m.template, &chat, true)
                    .map_err(|e| {
                        WorkerError::invalid(format!("chat template: {e}"), Some("messages"))
                    })?;
                (text, written.as_slice())
            }
        };
        let vocab = m.model.vocab();
        let mut tokens = Vec::new();
        let mut rest = text.as_str();
        let mut first = true;
        let mut template = |piece: &str, tokens: &mut Vec<LlamaToken>| {
            // The beginning-of-sequence token, if the model has one, goes first.
            tokens.extend(vocab.tokenize(piece.as_bytes(), first, true));
            first = false;
        };
        for (i, msg) in messages.iter().enumerate() {
            let mark = marker(i);
            // A template may leave a message out; it is left out.
            let Some(at) = rest.find(&mark) else { continue };
            template(&rest[..at], &mut tokens);
            tokens.extend(vocab.tokenize(msg.content.as_bytes(), false, false));
            rest = &rest[at + mark.len()..];
        }
        template(rest, &mut tokens);
        Ok(tokens)
    }

    /// Prompt token count of `messages` and the context window of `model`.
    pub fn count_tokens(
        &self,
        model: &str,
        messages: &[ChatMessage],
    ) -> Result<(u32, u32), WorkerError> {
        crate::request::validate_messages(messages)?;
        let m = self.find(model)?;
        let tokens = Self::tokenize(&m, messages, &[], &ToolChoice::Auto)?;
        Ok((saturating_u32(tokens.len()), m.context_window))
    }

    /// Resolves the model and adapter, renders and tokenizes the prompt, and
    /// checks it against the context window.
    pub fn prepare(&self, mut params: GenerateParams) -> Result<Prepared, WorkerError> {
        let m = self.find(&params.model)?;
        params.model.clone_from(&m.name);
        let adapter = match &params.adapter {
            None => None,
            Some(name) => {
                let index = m.adapters.iter().position(|a| a == name).ok_or_else(|| {
                    WorkerError::UnknownAdapter {
                        model: m.name.clone(),
                        adapter: name.clone(),
                    }
                })?;
                Some((index, params.adapter_scale))
            }
        };
        let prompt = Self::tokenize(&m, &params.messages, &params.tools, &params.tool_choice)?;
        let grammar = tools::grammar(&params.tools, &params.tool_choice);
        let prompt_tokens = saturating_u32(prompt.len());
        // The tenant's own window binds when it is the smaller one.
        let tenant_window = params.context_window.filter(|&w| w < m.context_window);
        let window = tenant_window.unwrap_or(m.context_window);
        if let Some(0) = params.max_tokens {
            return Err(WorkerError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        // One position stays free: the last sampled token is never decoded.
        let available = window.saturating_sub(prompt_tokens);
        let max_tokens = params.max_tokens.unwrap_or(available);
        if prompt_tokens >= window || max_tokens > available || max_tokens == 0 {
            return Err(WorkerError::ContextExceeded {
                context_window: window,
                requested: u64::from(prompt_tokens) + u64::from(max_tokens.max(1)),
                prompt_tokens,
                max_tokens: max_tokens.max(1),
                tenant: tenant_window.map(|_| params.tenant.to_string()),
            });
        }
        Ok(Prepared {
            params,
            model: m,
            adapter,
            prompt,
            max_tokens,
            grammar,
        })
    }
}

pub(crate) fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
