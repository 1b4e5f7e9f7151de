//! Ollama model names: `ollama:qwen3:32b` names the GGUF blob that Ollama's
//! manifest for that tag points at, under `~/.ollama/models` (or
//! `$OLLAMA_MODELS`), so a model pulled with Ollama is served as it lies.
//!
//! A name is `[host/][namespace/]model[:tag]`: the host defaults to
//! `registry.ollama.ai`, the namespace to `library`, the tag to `latest`.
//! The manifest is `manifests/<host>/<namespace>/<model>/<tag>` (JSON); its
//! layer of media type `application/vnd.ollama.image.model` has the digest
//! `sha256:<hex>` of the blob `blobs/sha256-<hex>`.

use std::path::{Path, PathBuf};

/// How a model path names an Ollama model.
pub const PREFIX: &str = "ollama:";
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// Ollama's model directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("OLLAMA_MODELS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".ollama/models"),
    }
}

/// The GGUF file of Ollama model `name` (such as `qwen3:32b`) under `models`.
pub fn resolve(name: &str, models: &Path) -> Result<PathBuf, String> {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = repo.split('/').filter(|p| !p.is_empty()).collect();
    let (host, namespace, model) = match parts.as_slice() {
        [model] => ("registry.ollama.ai", "library", *model),
        [namespace, model] => ("registry.ollama.ai", *namespace, *model),
        [host, namespace, model] => (*host, *namespace, *model),
        _ => {
            return Err(format!(
                "`{name}` is not an Ollama model name ([host/][namespace/]model[:tag])"
            ));
        }
    };
    let safe = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains(['\\', '\0']);
    if ![host, namespace, model, tag].iter().all(|p| safe(p)) {
        return Err(format!("`{name}` is not an Ollama model name"));
    }
    let manifest = models
        .join("manifests")
        .join(host)
        .join(namespace)
        .join(model)
        .join(tag);
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "no Ollama model `{name}`: its manifest {} cannot be read ({e}); `ollama pull {name}` fetches it (models dir: {}, or set OLLAMA_MODELS)",
            manifest.display(),
            models.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the Ollama manifest {} is not JSON: {e}",
            manifest.display()
        )
    })?;
    let digest = json["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["mediaType"] == MODEL_LAYER)
        .and_then(|l| l["digest"].as_str())
        .ok_or_else(|| {
            format!(
                "the Ollama manifest of `{name}` ({}) has no model layer",
                manifest.display()
            )
        })?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("the Ollama model `{name}` has a bad digest {digest:?}"))?;
    let blob = models.join("blobs").join(format!("sha256-{hex}"));
    if !blob.is_file() {
        return Err(format!(
            "the Ollama model `{name}` is not complete: its blob {} is missing",
            blob.display()
        ));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest tree as `ollama pull` leaves it, around `blob`.
    fn tree(dir: &Path, name: &[&str], tag: &str, blob: &[u8]) {
        let hex = "ab".repeat(32);
        std::fs::create_dir_all(dir.join("blobs")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("blobs").join(format!("sha256-{hex}")), blob)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut manifest = dir.join("manifests");
        for part in name {
            manifest = manifest.join(part);
        }
        std::fs::create_dir_all(&manifest).unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::json!({"schemaVersion": 2, "layers": [
            {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "cd".repeat(32))},
            {"mediaType": MODEL_LAYER, "digest": format!("sha256:{hex}"), "size": blob.len()},
        ]});
        std::fs::write(manifest.join(tag), json.to_string()).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_tag_names_its_blob_and_a_missing_one_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        tree(
            dir.path(),
            &["registry.ollama.ai", "library", "qwen3"],
            "32b",
            b"GGUF",
        );
        let blob = resolve("qwen3:32b", dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(blob.ends_with(format!("sha256-{}", "ab".repeat(32))));
        let missing = resolve("qwen3:8b", dir.path()).expect_err("no such tag");
        assert!(
            missing.contains("qwen3:8b") && missing.contains("ollama pull"),
            "{missing}"
        );
        assert!(resolve("../../etc:passwd", dir.path()).is_err());
        tree(
            dir.path(),
            &["registry.ollama.ai", "acme", "tuned"],
            "latest",
            b"GGUF",
        );
        assert!(resolve("acme/tuned", dir.path()).is_ok());
    }
}
