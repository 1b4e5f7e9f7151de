//! Ollama model names: `--model NAME=ollama:TAG` serves the GGUF blob that
//! Ollama's manifest for TAG names, under `$OLLAMA_MODELS` (here a manifest
//! tree built around the demo model, as `ollama pull` leaves one).

use std::time::Duration;

use bulkhead_tests::system::{Api, tenant_with_key, up_args};
use bulkhead_tests::{Process, bulkhead_bin, demo_model, free_port};

/// `OLLAMA_MODELS` with the demo model as `smollm2:135m`.
fn ollama_tree(dir: &std::path::Path) -> anyhow::Result<()> {
    let hex = "5e".repeat(32);
    std::fs::create_dir_all(dir.join("blobs"))?;
    std::os::unix::fs::symlink(
        demo_model(),
        dir.join("blobs").join(format!("sha256-{hex}")),
    )?;
    let manifest = dir.join("manifests/registry.ollama.ai/library/smollm2");
    std::fs::create_dir_all(&manifest)?;
    let json = serde_json::json!({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}")},
        {"mediaType": "application/vnd.ollama.image.template", "digest": format!("sha256:{}", "00".repeat(32))},
    ]});
    std::fs::write(manifest.join("135m"), json.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_tag_is_served_and_a_missing_one_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("ollama");
    ollama_tree(&models)?;
    let models_env = models.display().to_string();

    // A tag Ollama does not have: a clear error naming it, nothing starts.
    let out = std::process::Command::new(bulkhead_bin()?)
        .args(["up", "--model", "qwen=ollama:qwen3:32b"])
        .env("OLLAMA_MODELS", &models_env)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("qwen3:32b") && stderr.contains("ollama pull"),
        "{stderr}"
    );

    let (api_port, cp_port) = (free_port(), free_port());
    let cp = format!("127.0.0.1:{cp_port}");
    let args = up_args(dir.path(), api_port, cp_port, "smollm2=ollama:smollm2:135m");
    let mut up = Process::spawn_with_env(&args, &[("OLLAMA_MODELS", models_env.as_str())])?;
    let token = up.wait_for("admin token:", Duration::from_secs(60))?;
    up.wait_for(
        "registered with the control plane",
        Duration::from_secs(120),
    )?;
    let key = tenant_with_key(&cp, &token, "acme", &[])?;
    let answer = Api::new(&format!("127.0.0.1:{api_port}"))
        .ask(&key, "Say hi.", 4)
        .await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["model"], "smollm2", "{:?}", answer.body);
    assert!(answer.total_tokens() > 0);
    Ok(())
}
