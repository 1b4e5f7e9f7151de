//! A tenant's `context_window` on the request path: its requests get at
//! most min(its window, the model's training context, the worker's slot
//! size). A prompt beyond the tenant's window is refused with 400
//! `context_length_exceeded` naming that window, and costs nothing; a
//! window larger than any worker gives is accepted with a warning naming the
//! real limit, at apply time and in `tenant show`.

use std::time::Duration;

use bulkhead_tests::system::{MODEL, Up, eventually, usage_csv_totals};
use serde_json::json;

/// About `words` tokens of user text.
fn words(n: usize) -> String {
    (0..n).map(|i| format!("word{i} ")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_window_refuses_long_prompts_and_a_window_beyond_the_workers_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's worker has 2048-token slots.
    let up = Up::start(dir.path()).await.unwrap();
    let narrow = up
        .tenant_with_key("narrow", &["--context-window", "128"])
        .unwrap();
    let roomy = up.tenant_with_key("roomy", &[]).unwrap();
    let api = &up.api;
    let long = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": words(150)}],
        "max_tokens": 4,
        "temperature": 0,
    });

    // Over the narrow tenant's window: refused, naming its window.
    let a = api.chat(&narrow, long.clone()).await.unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.code(), "context_length_exceeded", "{:?}", a.body);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("context window of tenant `narrow` is 128 tokens"),
        "{message}"
    );
    // The same request fits the model's 2048 tokens for another tenant.
    let a = api.chat(&roomy, long).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.body["usage"]["prompt_tokens"].as_u64().unwrap() > 128);

    // A short prompt with no max_tokens fits: the default completion budget
    // shrinks to the window instead of failing.
    let a = api
        .chat(
            &narrow,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0}),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.total_tokens() <= 128, "{:?}", a.body);
    // The refusal cost nothing: the day's usage is the one answer's tokens.
    let spent = a.total_tokens();
    let row: Vec<String> = eventually("usage of the answer", Duration::from_secs(20), || async {
        let out = up
            .admin(&["usage", "--tenant", "narrow", "--days", "2", "--csv"])
            .ok()?;
        let row = usage_csv_totals(&out)?;
        (row.len() > 6 && row[6] != "0").then_some(row)
    })
    .await
    .unwrap();
    assert_eq!(
        (row[4].as_str(), row[6].as_str()),
        (spent.to_string().as_str(), "1"),
        "{row:?}"
    );

    // Beyond what any worker gives: accepted, with a warning naming the limit.
    let out = up
        .admin(&["tenant", "create", "wide", "--context-window", "65536"])
        .unwrap();
    assert!(
        out.contains(
            "warning: tenant `wide` has a context window of 65536 tokens, but the largest any worker serving the default model gives is 2048 tokens"
        ),
        "{out}"
    );
    let show = up.admin(&["tenant", "show", "wide"]).unwrap();
    assert!(show.contains("context_window:     65536"), "{show}");
    assert!(
        show.contains("its requests are limited to 2048 tokens"),
        "{show}"
    );
    let quiet = up.admin(&["tenant", "show", "narrow"]).unwrap();
    assert!(!quiet.contains("warning"), "{quiet}");

    // The same at apply time, from a config file.
    let file = dir.path().join("analytics.yaml");
    std::fs::write(
        &file,
        "tenant_id: analytics\nplan: pro\ncontext_window: 65536\n",
    )
    .unwrap();
    let out = up
        .admin(&["tenant", "apply", file.to_str().unwrap()])
        .unwrap();
    assert!(out.contains("created analytics"), "{out}");
    assert!(
        out.contains("tenant `analytics` has a context window of 65536 tokens")
            && out.contains("limited to 2048 tokens"),
        "{out}"
    );
}
