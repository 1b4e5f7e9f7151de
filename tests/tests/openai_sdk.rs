//! The official `openai` Python package (pinned in scripts/setup.sh, installed
//! into `~/.cache/bulkhead/venv`) against `bulkhead up` with the real model:
//! model listing, a chat completion, a stream with its usage chunk, a
//! session's stream, the SDK's tool-calling example (a forced call, whole
//! and streamed, and the tool's result sent back), and the SDK's own
//! exception types for a bad key (401) and an unknown model (404). The checks live in tests/python/openai_sdk.py;
//! this test starts the system, runs the script and reads its verdict.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bulkhead_tests::system::Up;

/// The interpreter of the venv that scripts/setup.sh creates. A missing one
/// fails the test: SDK compatibility is not optional.
fn venv_python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    let python = PathBuf::from(home).join(".cache/bulkhead/venv/bin/python");
    assert!(
        python.is_file(),
        "no Python venv with the openai package at {}: run scripts/setup.sh",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_openai_python_sdk_talks_to_the_gateway() {
    let python = venv_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/openai_sdk.py");
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let key = up
        .tenant_with_key("acme", &["--daily-tokens", "100000"])
        .unwrap();

    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .env("BULKHEAD_BASE_URL", format!("{}/v1", up.api.base))
        .env("BULKHEAD_API_KEY", &key)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the SDK script did not finish within 180s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture.
    println!("{stdout}");
    if !out.status.success() {
        let log = up.process.output();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "openai_sdk.py exited with {}\n--- stdout\n{stdout}--- stderr\n{stderr}--- bulkhead up (last 40 lines)\n{tail}",
            out.status
        );
    }
    for line in [
        "ok models: smollm2",
        "ok chat: ",
        "ok stream: ",
        "ok session stream: ",
        "ok session transcript: 2 turns",
        "ok bad key: AuthenticationError 401",
        "ok unknown model: NotFoundError 404",
        "all checks passed",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no line starting {line:?} in the script's output:\n{stdout}"
        );
    }
}
