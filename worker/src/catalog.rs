//! The models and LoRA adapters this worker serves, loaded once at start-up,
//! and the turning of a chat request into prompt tokens (chat template,
//! tokenization, context checks).
//!
//! The catalog is shared read-only between the engine thread and the request
//! handlers, so validation and tokenization happen before a request reaches
//! the engine. It never holds a context or KV state: those belong to the
//! engine thread alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::error::WorkerError;
use crate::request::{ChatMessage, GenerateParams};

/// File name of the demo model, SmolLM2-135M-Instruct (Q4_1).
pub const DEMO_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where scripts/setup.sh caches the demo model: `$BULKHEAD_MODEL_DIR` or
/// `~/.cache/bulkhead/models/`. The file may not exist.
pub fn demo_model_path() -> PathBuf {
    std::env::var_os("BULKHEAD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/bulkhead/models")
        })
        .join(DEMO_MODEL_FILE)
}

/// How far each model has loaded (0.0 to 1.0), as llama.cpp reports it while
/// it reads the weights; the registration publishes it so that gateways can
/// tell a caller the model is coming rather than missing.
#[derive(Debug, Clone, Default)]
pub struct LoadProgress {
    models: Arc<Mutex<Vec<(String, f32)>>>,
    /// Set when the worker is told to stop: llama.cpp gives up the load.
    cancelled: Arc<AtomicBool>,
}

impl LoadProgress {
    /// Every model of `models` at 0.
    pub fn new(models: &[ModelSpec]) -> Self {
        Self {
            models: Arc::new(Mutex::new(
                models.iter().map(|m| (m.name.clone(), 0.0)).collect(),
            )),
            cancelled: Arc::default(),
        }
    }

    /// Makes the load in progress stop at llama.cpp's next progress report.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn set(&self, model: &str, progress: f32) {
        let mut all = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = all.iter_mut().find(|(name, _)| name == model) {
            entry.1 = progress.clamp(0.0, 1.0);
        }
    }

    /// Each model with its progress.
    pub fn snapshot(&self) -> Vec<(String, f32)> {
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `NAME=PATH` of a model to serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    /// A llama.cpp template name (`chatml`, `llama3`, ...) or template text
    /// that replaces the model's own.
    pub chat_template: Option<String>,
}

/// `MODEL:NAME=PATH` of a LoRA adapter (GGUF) for a served model.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub model: String,
    pub name: String,
    pub path: PathBuf,
}

fn parse_name_path(value: &str, what: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .ok_or_else(|| format!("{what} must look like NAME=PATH, got {value:?}"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("{what} must look like NAME=PATH, got {value:?}"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

impl std::str::FromStr for ModelSpec {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        let (name, path) = parse_name_path(value, "--model")?;
        Ok(Self {
            name,
            path,
            chat_template: None,
        })
    }
}

impl std::str::FromStr for AdapterSpec {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        let (target, path) = parse_name_path(value, "--lora")?;
        let (model, name) = target
            .split_once(':')
            .ok_or_else(|| format!("--lora must look like MODEL:NAME=PATH, got {value:?}"))?;
        Ok(Self {
            model: model.to_owned(),
            name: name.to_owned(),
            path,
        })
    }
}

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
    pub(crate) model: LlamaModel,
    template: LlamaChatTemplate,
    pub adapters: Vec<String>,
    /// The most tokens (prompt plus completion) one request may use.
    pub context_window: u32,
    /// Estimated KV bytes one cached token takes (K and V, f16, all layers).
    pub kv_bytes_per_token: u64,
}

/// A request whose prompt is rendered and tokenized, ready for the engine.
#[derive(Debug)]
pub struct Prepared {
    pub params: GenerateParams,
    pub model: usize,
    /// Index of the adapter within its model, and its scale.
    pub adapter: Option<(usize, f32)>,
    pub prompt: Vec<LlamaToken>,
    pub max_tokens: u32,
}

pub struct Catalog {
    models: Vec<CatalogModel>,
}

/// LoRA adapters, indexed like [`Catalog`] models and their `adapters`. They
/// are handed to the engine thread, which alone applies them to contexts.
pub type Adapters = Vec<Vec<LlamaLoraAdapter>>;

impl Catalog {
    /// Loads every model and adapter. `context_window` caps each model's
    /// per-request window (it never exceeds the model's training context).
    /// `progress` hears how far each model is.
    pub fn load(
        models: &[ModelSpec],
        adapters: &[AdapterSpec],
        context_window: u32,
        gpu_layers: u32,
        progress: &LoadProgress,
    ) -> Result<(Self, Adapters), WorkerError> {
        if models.is_empty() {
            return Err(WorkerError::invalid("at least one --model is needed", None));
        }
        let backend = backend()?;
        let mut loaded = Vec::new();
        let mut all_adapters = Vec::new();
        for spec in models {
            if loaded.iter().any(|m: &CatalogModel| m.name == spec.name) {
                return Err(WorkerError::invalid(
                    format!("model `{}` is given twice", spec.name),
                    None,
                ));
            }
            if !spec.path.is_file() {
                return Err(WorkerError::invalid(
                    format!("model file {} does not exist", spec.path.display()),
                    None,
                ));
            }
            let (report, name) = (progress.clone(), spec.name.clone());
            let params = LlamaModelParams::default()
                .with_n_gpu_layers(gpu_layers)
                .with_progress_callback(move |p| {
                    report.set(&name, p);
                    // false makes llama.cpp abandon the load.
                    !report.is_cancelled()
                });
            let mut model =
                LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|e| {
                    WorkerError::Engine(format!("loading {}: {e}", spec.path.display()))
                })?;
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
            let mut model_adapters = Vec::new();
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
                model_adapters.push(adapter);
            }
            let n_head = u64::from(model.n_head().max(1));
            let head_dim = u64::try_from(model.n_embd()).unwrap_or(0) / n_head;
            let kv_bytes_per_token =
                2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim * 2;
            progress.set(&spec.name, 1.0);
            loaded.push(CatalogModel {
                name: spec.name.clone(),
                context_window: context_window.min(model.n_ctx_train()),
                model,
                template,
                adapters: names,
                kv_bytes_per_token,
            });
            all_adapters.push(model_adapters);
        }
        for a in adapters {
            if !loaded.iter().any(|m| m.name == a.model) {
                return Err(WorkerError::invalid(
                    format!(
                        "adapter `{}` names model `{}`, which is not served",
                        a.name, a.model
                    ),
                    None,
                ));
            }
        }
        Ok((Self { models: loaded }, all_adapters))
    }

    pub fn models(&self) -> &[CatalogModel] {
        &self.models
    }

    pub(crate) fn model(&self, index: usize) -> &CatalogModel {
        &self.models[index]
    }

    fn find(&self, name: &str) -> Result<usize, WorkerError> {
        // An empty model name means the first (default) model.
        if name.is_empty() {
            return Ok(0);
        }
        self.models
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| WorkerError::UnknownModel(name.to_owned()))
    }

    /// Renders the messages with the model's chat template and tokenizes them.
    fn tokenize(
        &self,
        model: usize,
        messages: &[ChatMessage],
    ) -> Result<Vec<LlamaToken>, WorkerError> {
        let m = &self.models[model];
        let chat = messages
            .iter()
            .map(|msg| LlamaChatMessage::new(msg.role.as_str().to_owned(), msg.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WorkerError::invalid(format!("message: {e}"), Some("messages")))?;
        let text = m
            .model
            .apply_chat_template(&m.template, &chat, true)
            .map_err(|e| WorkerError::invalid(format!("chat template: {e}"), Some("messages")))?;
        Ok(m.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Prompt token count of `messages` and the context window of `model`.
    pub fn count_tokens(
        &self,
        model: &str,
        messages: &[ChatMessage],
    ) -> Result<(u32, u32), WorkerError> {
        crate::request::validate_messages(messages)?;
        let index = self.find(model)?;
        let tokens = self.tokenize(index, messages)?;
        Ok((
            saturating_u32(tokens.len()),
            self.models[index].context_window,
        ))
    }

    /// Resolves the model and adapter, renders and tokenizes the prompt, and
    /// checks it against the context window.
    pub fn prepare(&self, mut params: GenerateParams) -> Result<Prepared, WorkerError> {
        let model = self.find(&params.model)?;
        let m = &self.models[model];
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
        let prompt = self.tokenize(model, &params.messages)?;
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
            model,
            adapter,
            prompt,
            max_tokens,
        })
    }
}

pub(crate) fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Vec<ModelSpec> {
        let path = demo_model_path();
        assert!(
            path.is_file(),
            "the demo model is missing at {}; run scripts/setup.sh",
            path.display()
        );
        vec![ModelSpec {
            name: "smollm2".into(),
            path,
            chat_template: None,
        }]
    }

    #[test]
    fn loading_reports_progress_and_a_stop_abandons_it() {
        let models = demo();
        let progress = LoadProgress::new(&models);
        assert_eq!(progress.snapshot(), vec![("smollm2".to_owned(), 0.0)]);
        Catalog::load(&models, &[], 512, 0, &progress).expect("the demo model loads");
        assert_eq!(progress.snapshot(), vec![("smollm2".to_owned(), 1.0)]);

        // Cancelled before it starts: llama.cpp asks the callback at its
        // first report and gives up, so the callback is what llama.cpp calls.
        let stopped = LoadProgress::new(&models);
        stopped.cancel();
        let Err(e) = Catalog::load(&models, &[], 512, 0, &stopped) else {
            panic!("a cancelled load must fail");
        };
        assert!(e.to_string().contains("loading"), "{e}");
        assert!(stopped.snapshot()[0].1 < 1.0, "{:?}", stopped.snapshot());
    }
}
