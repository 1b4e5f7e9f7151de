//! How far each model has loaded, as llama.cpp reports it while it reads the
//! weights, and the stop that makes it give up: what the registration
//! publishes while models load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::ModelSpec;

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

    pub(super) fn set(&self, model: &str, progress: f32) {
        let mut all = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = all.iter_mut().find(|(name, _)| name == model) {
            entry.1 = progress.clamp(0.0, 1.0);
        }
    }

    /// Starts reporting `model`, at 0.
    pub fn begin(&self, model: &str) {
        let mut all = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !all.iter().any(|(name, _)| name == model) {
            all.push((model.to_owned(), 0.0));
        }
    }

    /// Stops reporting `model`: it is loaded (and in the catalog) or failed.
    pub fn finish(&self, model: &str) {
        let mut all = self.models.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(name, _)| name != model);
    }

    /// Whether `model` is being loaded.
    pub fn contains(&self, model: &str) -> bool {
        let all = self.models.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().any(|(name, _)| name == model)
    }

    /// Each model with its progress.
    pub fn snapshot(&self) -> Vec<(String, f32)> {
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
