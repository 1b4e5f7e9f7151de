//! The real `bulkhead worker` binary: flags, the OpenAI-compatible API, a
//! usage error for a bad flag, and a clean stop on SIGTERM.

use std::time::Duration;

use bulkhead_tests::{Process, bulkhead_bin, demo_model};
use serde_json::{Value, json};

#[tokio::test]
async fn worker_binary_serves_the_api_and_stops_on_sigterm() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let model = format!("smollm2={}", demo_model().display());
    let mut worker = Process::spawn([
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--model",
        &model,
        "--slots",
        "2",
        "--context",
        "1024",
        "--data-dir",
        data.path().to_str().unwrap(),
    ])?;
    let grpc = worker.wait_for("gRPC on", Duration::from_secs(60))?;
    assert!(grpc.starts_with("127.0.0.1:"), "gRPC address: {grpc}");
    let api = worker.wait_for("OpenAI-compatible API on", Duration::from_secs(60))?;
    let http = reqwest::Client::new();

    let models: Value = http
        .get(format!("{api}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["data"][0]["id"], "smollm2");

    let response = http
        .post(format!("{api}/v1/chat/completions"))
        .header("X-Tenant-ID", "acme")
        .json(&json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 12
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "answer: {answer}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 12);

    // A request without a tenant is refused and the process keeps serving.
    let refused = http
        .post(format!("{api}/v1/chat/completions"))
        .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let health = http.get(format!("{api}/health")).send().await?;
    assert_eq!(health.status(), 200);

    let status = worker.terminate(Duration::from_secs(20))?;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    Ok(())
}

#[test]
fn worker_binary_rejects_bad_flags_with_a_usage_error() -> anyhow::Result<()> {
    let output = std::process::Command::new(bulkhead_bin()?)
        .args(["worker", "--model", "no-equals-sign"])
        .output()?;
    assert_eq!(output.status.code(), Some(2), "clap usage errors exit 2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NAME=PATH"), "stderr: {stderr}");

    let output = std::process::Command::new(bulkhead_bin()?)
        .args(["worker", "--model", "m=/nonexistent/model.gguf"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/model.gguf"),
        "stderr: {stderr}"
    );

    // The HTTP API trusts X-Tenant-ID: off loopback it needs a token.
    let output = std::process::Command::new(bulkhead_bin()?)
        .args(["worker", "--model", "m=/nonexistent/model.gguf"])
        .args(["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"])
        .env_remove("BULKHEAD_WORKER_HTTP_TOKEN")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a loopback address") && stderr.contains("--http-token"),
        "stderr: {stderr}"
    );
    Ok(())
}
