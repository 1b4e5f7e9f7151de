//! Which model files a worker can serve: the `--model` and `--lora`
//! specifications, the files of the model directories, the demo model's
//! place, and the default weight budget.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
        // `NAME=ollama:TAG`: the blob Ollama's manifest for TAG names.
        let path = match path
            .to_str()
            .and_then(|p| p.strip_prefix(super::ollama::PREFIX))
        {
            Some(tag) => super::ollama::resolve(tag, &super::ollama::models_dir())?,
            None => path,
        };
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

/// The `*.gguf` files of `dirs`, by name (file stem): path and size. A name
/// in two directories is the first directory's. Links are followed, so a
/// model directory may link to files kept elsewhere.
pub fn model_files(dirs: &[PathBuf]) -> BTreeMap<String, (PathBuf, u64)> {
    let mut files = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(stem), Some("gguf")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.is_file()
            {
                files
                    .entry(stem.to_owned())
                    .or_insert((path.clone(), meta.len()));
            }
        }
    }
    files
}

/// The weights a worker holds at once unless told otherwise: nine tenths of
/// its accelerators' (`devices`) memory, or on a CPU build three quarters of
/// the RAM.
pub fn default_memory_budget(devices: &[bulkhead_proto::worker::Device]) -> u64 {
    let on_devices: u64 = devices.iter().map(|d| d.memory_total_bytes).sum();
    if on_devices > 0 {
        return on_devices / 10 * 9;
    }
    let ram_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    ram_kib.saturating_mul(1024) / 4 * 3
}
