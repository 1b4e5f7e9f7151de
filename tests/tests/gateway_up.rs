//! `bulkhead up` end to end: the real binary, the real model, the in-process
//! usage channel. Two tenants' sessions stay apart; every bad request gets its
//! documented status and error body while the system keeps serving; a
//! restart on the same data dir keeps tenants, keys, sessions and the ledger.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bulkhead_tests::system::{MODEL, Up, eventually, usage_csv_totals};
use serde_json::{Value, json};

async fn new_session(up: &Up, key: &str) -> String {
    let a = up
        .api
        .send(
            up.api
                .post("/v1/sessions", key)
                .json(&json!({"title": "tab"})),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

async fn say(up: &Up, key: &str, session: &str, text: &str) -> bulkhead_tests::system::Answer {
    let a = up
        .api
        .send(up.api.post("/v1/chat/completions", key).header("X-Session-ID", session).json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0}),
        ))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a
}

async fn transcript(up: &Up, key: &str, session: &str) -> (u16, Vec<Value>) {
    let a = up
        .api
        .send(up.api.get(&format!("/v1/sessions/{session}/messages"), key))
        .await
        .unwrap();
    (
        a.status,
        a.body["data"].as_array().cloned().unwrap_or_default(),
    )
}

/// A `bulkhead up` in a directory of its own (dropped after it), with a key
/// for each tenant created with its flags (`--daily-tokens 100`, ...).
async fn up_with_tenants<const N: usize>(
    tenants: [(&str, &[&str]); N],
) -> (tempfile::TempDir, Up, [String; N]) {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let keys = tenants.map(|(id, flags)| up.tenant_with_key(id, flags).unwrap());
    (dir, up, keys)
}

/// Sales' usage of today (and yesterday, should the test cross midnight),
/// as a CSV row.
fn ledger(up: &Up) -> String {
    let out = up
        .admin(&["usage", "--tenant", "sales", "--days", "2", "--csv"])
        .unwrap_or_default();
    usage_csv_totals(&out)
        .map(|row| row.join(","))
        .unwrap_or_default()
}

#[tokio::test]
async fn two_tenants_sessions_stay_apart_and_survive_a_restart() {
    let (_dir, up, [sales, hr]) = up_with_tenants([
        ("sales", &["--daily-tokens", "100000"]),
        ("hr", &["--daily-tokens", "100000"]),
    ])
    .await;
    let s_sales = new_session(&up, &sales).await;
    let s_hr = new_session(&up, &hr).await;

    // The two tabs, interleaved.
    let first_sales = say(&up, &sales, &s_sales, "Remember this code word: PINEAPPLE.").await;
    let first_hr = say(&up, &hr, &s_hr, "Remember this code word: GIRAFFE.").await;
    let follow_sales = say(&up, &sales, &s_sales, "Repeat the code word.").await;
    let follow_hr = say(&up, &hr, &s_hr, "Repeat the code word.").await;
    for (first, follow) in [(&first_sales, &follow_sales), (&first_hr, &follow_hr)] {
        let (p0, p1) = (
            first.usage.as_ref().unwrap()["prompt_tokens"]
                .as_u64()
                .unwrap(),
            follow.usage.as_ref().unwrap()["prompt_tokens"]
                .as_u64()
                .unwrap(),
        );
        // The follow-up carries its own history: both earlier turns are in front of it...
        assert!(p1 > p0 + 8, "follow-up prompt {p1} tokens, first {p0}");
        // ...and its KV slot (this session's, on this tenant's worker) served them.
        let cached = follow.usage.as_ref().unwrap()["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(
            cached >= p0,
            "only {cached} of {p1} prompt tokens came from the session's slot"
        );
    }
    assert!(
        !follow_sales.text.to_uppercase().contains("GIRAFFE"),
        "{}",
        follow_sales.text
    );
    assert!(
        !follow_hr.text.to_uppercase().contains("PINEAPPLE"),
        "{}",
        follow_hr.text
    );

    let (status, turns) = transcript(&up, &sales, &s_sales).await;
    assert_eq!(status, 200);
    let all = serde_json::to_string(&turns).unwrap();
    assert_eq!(turns.len(), 4, "{all}");
    assert!(
        all.contains("PINEAPPLE") && !all.contains("GIRAFFE"),
        "{all}"
    );
    let (_, turns) = transcript(&up, &hr, &s_hr).await;
    let all = serde_json::to_string(&turns).unwrap();
    assert!(
        all.contains("GIRAFFE") && !all.contains("PINEAPPLE"),
        "{all}"
    );

    // One tenant's key cannot see, use or delete the other's sessions.
    assert_eq!(transcript(&up, &hr, &s_sales).await.0, 404);
    let del = up
        .api
        .send(up.api.delete(&format!("/v1/sessions/{s_sales}"), &hr))
        .await
        .unwrap();
    assert_eq!(del.status, 404);
    let chat = up
        .api
        .chat(&hr, json!({"session_id": s_sales, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .await
        .unwrap();
    assert_eq!(chat.status, 404, "{:?}", chat.body);
    assert_eq!(chat.code(), "session_not_found");
    // A session id already taken is a conflict (409, as in the admin API),
    // and the existing session is untouched.
    let again = up
        .api
        .send(
            up.api
                .post("/v1/sessions", &sales)
                .json(&json!({"id": s_sales, "title": "a second one"})),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 409, "{:?}", again.body);
    assert_eq!(again.code(), "session_exists", "{:?}", again.body);
    let listed = up.api.send(up.api.get("/v1/sessions", &hr)).await.unwrap();
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![s_hr.as_str()]);
    // The sales transcript is untouched by the attempts.
    assert_eq!(transcript(&up, &sales, &s_sales).await.1.len(), 4);

    // Usage reached the ledger through the in-process channel, exactly once.
    let billed: u64 = [&first_sales, &follow_sales]
        .iter()
        .map(|a| a.total_tokens())
        .sum();
    eventually(
        "the ledger to show sales' usage",
        Duration::from_secs(10),
        || {
            let row = ledger(&up);
            async move { row.contains(&format!(",{billed},")).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", ledger(&up)));

    // Restarted on the same data dir: tenants, keys, sessions and ledger stay.
    let up = up.restart().await.unwrap();
    let (status, turns) = transcript(&up, &sales, &s_sales).await;
    assert_eq!((status, turns.len()), (200, 4));
    assert!(
        ledger(&up).contains(&format!(",{billed},")),
        "{}",
        ledger(&up)
    );
    say(&up, &hr, &s_hr, "Thanks.").await;
    assert_eq!(transcript(&up, &hr, &s_hr).await.1.len(), 6);
}

#[tokio::test]
async fn bad_requests_get_their_documented_status_and_nothing_is_lost() {
    let (_dir, up, [key, tiny]) = up_with_tenants([
        (
            "acme",
            &["--daily-tokens", "100000", "--max-request-tokens", "200"],
        ),
        ("tiny", &["--daily-tokens", "60"]),
    ])
    .await;
    let api = &up.api;
    let ok = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0});

    let check = |a: &bulkhead_tests::system::Answer, status: u16, code: &str| {
        assert_eq!(a.status, status, "{:?}", a.body);
        assert_eq!(a.code(), code, "{:?}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.len() > 20, "unhelpful message {message:?}");
    };

    // No key, an unknown key, a key with another tenant's X-Tenant-ID.
    let a = api
        .send(
            api.http
                .post(format!("{}/v1/chat/completions", api.base))
                .json(&ok),
        )
        .await
        .unwrap();
    check(&a, 401, "invalid_api_key");
    check(
        &api.chat("bk_not_a_key", ok.clone()).await.unwrap(),
        401,
        "invalid_api_key",
    );
    let a = api
        .send(
            api.post("/v1/chat/completions", &key)
                .header("X-Tenant-ID", "tiny")
                .json(&ok),
        )
        .await
        .unwrap();
    check(&a, 403, "tenant_mismatch");
    // Malformed JSON, an oversized body, an unknown model.
    let a = api
        .send(
            api.post("/v1/chat/completions", &key)
                .header("content-type", "application/json")
                .body("{\"messages\": ["),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["error"]["type"], "invalid_request_error");
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(2 << 20)}]});
    // Its own connection: the server closes it after refusing the upload.
    let fresh = bulkhead_tests::system::Api::new(api.base.trim_start_matches("http://"));
    let a = fresh
        .send(fresh.post("/v1/chat/completions", &key).json(&big))
        .await
        .unwrap();
    check(&a, 413, "request_too_large");
    let mut other = ok.clone();
    other["model"] = json!("gpt-4o");
    check(
        &api.chat(&key, other).await.unwrap(),
        404,
        "model_not_found",
    );
    // More than max_request_tokens: prompt plus max_tokens over 200.
    let mut long = ok.clone();
    long["max_tokens"] = json!(190);
    let a = api.chat(&key, long).await.unwrap();
    check(&a, 400, "request_token_limit_exceeded");
    assert!(a.body["error"]["message"].as_str().unwrap().contains("200"));

    // A daily quota too small for the request: 429 with what, how much, when.
    let first = api.ask(&tiny, "Say hi.", 4).await.unwrap();
    assert_eq!(first.status, 200, "{:?}", first.body);
    let a = api.ask(&tiny, "Write a poem.", 45).await.unwrap();
    check(&a, 429, "daily_quota_exceeded");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("resets") && message.contains("burst"),
        "{message}"
    );
    assert_eq!(a.headers["x-ratelimit-limit-tokens"], "60");
    assert!(a.headers.contains_key("retry-after"));
    assert!(a.headers.contains_key("x-ratelimit-reset-tokens"));
    assert!(
        a.headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );

    // After all that the same key is served, and its usage headers are set.
    let a = api.chat(&key, ok.clone()).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.total_tokens() > 0);
    assert_eq!(a.headers["x-ratelimit-limit-tokens"], "100000");
    let models = api.send(api.get("/v1/models", &key)).await.unwrap();
    assert_eq!(models.body["data"][0]["id"], MODEL);

    // A revoked key stops working within 2 seconds.
    let key_id = up.key_id("acme").unwrap();
    up.admin(&["key", "revoke", &key_id]).unwrap();
    let revoked_at = Instant::now();
    let api2 = api.clone();
    let (key2, ok2) = (key.clone(), ok.clone());
    eventually(
        "the revoked key to be refused",
        Duration::from_secs(2),
        move || {
            let (api, key, ok) = (api2.clone(), key2.clone(), ok2.clone());
            async move { (api.chat(&key, ok).await.ok()?.status == 401).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert!(revoked_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn gateway_metrics_name_tenants_only_to_the_admin_token() {
    let (_dir, up, [key]) = up_with_tenants([("secretive-sales", &[])]).await;
    let a = up.api.ask(&key, "Hi", 2).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let metrics = |token: Option<String>| {
        let mut req = up.api.http.get(format!("{}/metrics", up.api.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // Neither anonymous callers nor tenants' keys read other tenants' volumes.
    for token in [None, Some(key.clone()), Some("bka_wrong".to_owned())] {
        let (status, body) = metrics(token.clone()).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains("secretive-sales"), "{body}");
        assert!(body.contains("admin token"), "{body}");
    }
    let (status, body) = metrics(Some(up.admin_token.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tenant=\"secretive-sales\""), "{body}");
    // Health stays open for probes and balancers.
    let health = up
        .api
        .http
        .get(format!("{}/health", up.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_stopped_and_frees_its_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for a short answer on two cores loaded by the other tests
    // of this file (3 s was not, once they were nine), far too short for 1500
    // tokens.
    let up = Up::start_with(dir.path(), &["--request-deadline-s", "8"])
        .await
        .unwrap();
    let key = up
        .tenant_with_key("slowpoke", &["--max-concurrent", "1"])
        .unwrap();
    let long = |stream: bool| {
        json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count to ten thousand."}],
            "max_tokens": 1500,
            "ignore_eos": true,
            "temperature": 0,
            "stream": stream,
        })
    };
    let started = Instant::now();
    let a = up.api.chat(&key, long(false)).await.unwrap();
    assert_eq!(a.status, 504, "{:?}", a.body);
    assert_eq!(a.code(), "request_timeout", "{:?}", a.body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Streamed: the stream ends with an error event at the deadline.
    let a = up.api.chat(&key, long(true)).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(
        a.body.to_string().contains("request_timeout"),
        "{:?}",
        a.body
    );

    // The tenant's one concurrent request is free again at once.
    let a = up.api.ask(&key, "Hi", 2).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    // The worker stopped generating: neither long request made its 1500 tokens.
    let rows = eventually(
        "the three requests' usage",
        Duration::from_secs(20),
        || async {
            let out = up
                .admin(&["usage", "--tenant", "slowpoke", "--days", "1", "--csv"])
                .ok()?;
            let row: Vec<String> = out.lines().nth(1)?.split(',').map(str::to_owned).collect();
            (row.len() > 6 && row[6] == "3").then_some(row)
        },
    )
    .await
    .unwrap();
    let completion: u64 = rows[3].parse().unwrap();
    assert!(completion < 2 * 1500, "{rows:?}");
}

#[tokio::test]
async fn one_tenant_cannot_flood_the_control_plane_with_sessions() {
    let (_dir, up, [key, other]) = up_with_tenants([("flooder", &[]), ("neighbour", &[])]).await;
    let create = |key: String| {
        let api = up.api.clone();
        async move { api.send(api.post("/v1/sessions", &key)).await.unwrap() }
    };
    let answers = futures::future::join_all((0..80).map(|_| create(key.clone()))).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(created + refused.len(), 80);
    assert!(!refused.is_empty() && created >= 40, "{created} created");
    assert_eq!(
        refused[0].code(),
        "too_many_requests",
        "{:?}",
        refused[0].body
    );
    // The neighbour is not held back, and the flooder recovers within a second.
    assert_eq!(create(other).await.status, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create(key).await.status, 201);
}

/// The article's "request burst quota" button, from the tenant's side: an
/// enterprise tenant files a request with its own key, the operator sees who
/// asked and approves it, and the tenant sees the decision; the request
/// sends `burst.requested` to the tenant's webhook. A tenant whose plan has
/// no burst gets a clear 403, a bad body a 400 and a second request the same
/// day a 409, and none of those files anything.
#[tokio::test]
async fn a_tenant_requests_a_burst_and_sees_the_operators_decision() {
    let (_dir, up, [big, small]) = up_with_tenants([
        ("bigco", &["--plan", "enterprise", "--daily-tokens", "1000"]),
        ("smallco", &["--plan", "basic"]),
    ])
    .await;
    up.admin(&[
        "webhook",
        "create",
        "--tenant",
        "bigco",
        "--url",
        "http://127.0.0.1:9/hook",
        "--event",
        "burst.requested",
    ])
    .unwrap();
    let file = |key: &str, body: Value| {
        let (api, key) = (up.api.clone(), key.to_owned());
        async move {
            api.send(api.post("/v1/burst_requests", &key).json(&body))
                .await
                .unwrap()
        }
    };
    let mine = |key: &str| {
        let (api, key) = (up.api.clone(), key.to_owned());
        async move {
            let a = api.send(api.get("/v1/burst_requests", &key)).await.unwrap();
            assert_eq!(a.status, 200, "{:?}", a.body);
            a.body["data"].as_array().unwrap().clone()
        }
    };
    let refused = |a: &bulkhead_tests::system::Answer, status: u16, code: &str| {
        assert_eq!(a.status, status, "{:?}", a.body);
        assert_eq!(a.code(), code, "{:?}", a.body);
        a.body["error"]["message"].as_str().unwrap().to_owned()
    };

    let a = file(&small, json!({"reason": "quarter close"})).await;
    let message = refused(&a, 403, "burst_not_in_plan");
    assert!(
        message.contains("basic") && message.contains("enterprise"),
        "{message}"
    );
    for body in [json!({"why": "quarter close"}), json!({"reason": "   "})] {
        let a = file(&big, body).await;
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert_eq!(a.body["error"]["param"], "reason", "{:?}", a.body);
    }
    assert!(
        mine(&big).await.is_empty(),
        "a refused request filed nothing"
    );

    let a = file(&big, json!({"reason": "quarter close"})).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["status"], "pending");
    assert_eq!(a.body["extra_tokens"], 500, "enterprise bursts add 50%");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let again = file(&big, json!({"reason": "even more"})).await;
    refused(&again, 409, "conflict");

    // The operator sees which key asked, and approves.
    let listed = up.admin(&["burst", "list", "--tenant", "bigco"]).unwrap();
    assert!(listed.contains(&id), "{listed}");
    let audit = up.admin(&["audit", "list", "--tenant", "bigco"]).unwrap();
    let key_id = up.key_id("bigco").unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("burst.requested") && l.contains(&key_id)),
        "{audit}"
    );
    up.admin(&["burst", "approve", &id]).unwrap();
    let seen = mine(&big).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["id"], id.as_str());
    assert_eq!(seen[0]["status"], "approved");
    assert!(seen[0]["decided_at"].as_i64().is_some(), "{seen:?}");
    assert!(mine(&small).await.is_empty(), "a tenant sees only its own");

    let deliveries = up
        .admin(&["webhook", "deliveries", "--tenant", "bigco"])
        .unwrap();
    assert!(deliveries.contains("burst.requested"), "{deliveries}");
}

/// Server-side tools (issue 15): a tenant whose plan lacks `code_run` is
/// refused with 403 `tool_not_allowed` naming it, and one given it by an
/// override is not; for an enterprise tenant the gateway runs the loop with
/// the real model: the forced call's code runs in the sandbox, the model
/// answers with its result, both model calls are billed (the ledger holds
/// the answer's summed usage), and the audit trail shows the step with the
/// hash of its arguments and the key that asked. Streamed, the steps come as
/// a chunk of their own.
#[tokio::test]
async fn server_side_tools_run_for_allowed_tenants_only_and_are_audited() {
    let (_dir, up, [sales, hr, ops]) = up_with_tenants([
        ("sales", &["--plan", "enterprise"]),
        ("hr", &["--plan", "basic"]),
        ("ops", &["--plan", "basic", "--tools", "code_run"]),
    ])
    .await;
    let ask = |stream: bool| {
        json!({
            "model": MODEL, "stream": stream, "max_tokens": 60, "temperature": 0,
            "messages": [{"role": "user", "content": "Run this Python code: open('report.csv', 'w').write('name,total')"}],
            "tools": [{"type": "code_run"}],
            "tool_choice": {"type": "function", "function": {"name": "code_run"}},
        })
    };
    let refused = up.api.chat(&hr, ask(false)).await.unwrap();
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.code(), "tool_not_allowed");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`code_run`"), "{message}");
    assert_eq!(ledger_of(&up, "hr"), 0, "a refused request costs nothing");
    let unknown =
        json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]});
    let a = up.api.chat(&sales, unknown).await.unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["error"]["param"], "tools");

    let a = up.api.chat(&sales, ask(false)).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let steps = a.body["tool_steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{:?}", a.body);
    let step = &steps[0];
    assert_eq!(step["tool"], "code_run");
    let status = step["status"].as_str().unwrap();
    assert!(
        status.starts_with("exit ") || status.starts_with("limit "),
        "{step}"
    );
    assert!(step["duration_ms"].as_u64().is_some(), "{step}");
    let hash = step["arguments_sha256"].as_str().unwrap();
    assert_eq!(hash.len(), 64, "{step}");
    // Two model calls at least, each billed: the answer's usage is their sum.
    let total = a.body["usage"]["total_tokens"].as_u64().unwrap();
    let used = eventually(
        "the ledger to hold both steps",
        Duration::from_secs(20),
        || {
            let up = &up;
            async move {
                let used = ledger_of(up, "sales");
                (used == total).then_some(used)
            }
        },
    )
    .await
    .unwrap();
    assert!(used > 0);
    let audit = up.admin(&["audit", "list", "--tenant", "sales"]).unwrap();
    let key_id = up.key_id("sales").unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("tool.run") && l.contains(hash) && l.contains(&key_id)),
        "{audit}"
    );

    // A forced call cut at max_tokens ran nothing, and the answer says so.
    let mut cut = ask(false);
    cut["max_tokens"] = json!(3);
    let a = up.api.chat(&sales, cut).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let step = &a.body["tool_steps"][0];
    assert_eq!(step["status"], "error", "{:?}", a.body);
    assert!(
        step["error"].as_str().unwrap().contains("not finished"),
        "{step}"
    );

    // Allowed by an override of its plan.
    let a = up.api.chat(&ops, ask(true)).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let events = a.body.as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["tool_steps"][0]["tool"] == "code_run"),
        "{events:?}"
    );
    assert!(a.usage.is_some() && a.stream_error.is_none(), "{events:?}");
}

/// Tokens `tenant` used today and yesterday, from `bulkhead usage`.
fn ledger_of(up: &Up, tenant: &str) -> u64 {
    let out = up
        .admin(&["usage", "--tenant", tenant, "--days", "2", "--csv"])
        .unwrap_or_default();
    usage_csv_totals(&out)
        .and_then(|row| row.get(4)?.parse().ok())
        .unwrap_or(0)
}

/// Keys scoped to a user (`key create --user`): each sees, reads and deletes
/// only its own user's sessions and cannot act as another user, while a
/// tenant-wide key sees them all; and one user's prompt never reuses another
/// user's KV prefix (which `cached_tokens` would betray) until the tenant
/// opts in with `kv_share_across_users`.
#[tokio::test]
async fn a_users_key_reaches_only_that_users_sessions_and_kv_prefixes() {
    let (_dir, up, [tenant_key]) =
        up_with_tenants([("sales", &["--daily-tokens", "1000000", "--max-keys", "10"])]).await;
    let (alice, bob) = (
        up.user_key("sales", "alice").unwrap(),
        up.user_key("sales", "bob").unwrap(),
    );
    let keys = up.admin(&["key", "list", "--tenant", "sales"]).unwrap();
    assert!(keys.contains("alice") && keys.contains("(all)"), "{keys}");
    for key in [&tenant_key, &alice, &bob] {
        eventually(
            "the keys to reach the gateway",
            Duration::from_secs(20),
            || async {
                let a = up.api.send(up.api.get("/v1/tenant", key)).await.ok()?;
                (a.status == 200).then_some(a.body)
            },
        )
        .await
        .unwrap();
    }
    let me = up.api.send(up.api.get("/v1/tenant", &alice)).await.unwrap();
    assert_eq!(me.body["user"], "alice", "{:?}", me.body);

    let (mine, theirs) = (new_session(&up, &alice).await, new_session(&up, &bob).await);
    say(&up, &alice, &mine, "My secret is the word tangerine.").await;
    let listed = |key: String| {
        let up = &up;
        async move {
            let a = up.api.send(up.api.get("/v1/sessions", &key)).await.unwrap();
            assert_eq!(a.status, 200, "{:?}", a.body);
            let mut ids: Vec<String> = a.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["user"].as_str().unwrap_or(""),
                        s["id"].as_str().unwrap()
                    )
                })
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(listed(alice.clone()).await, [format!("alice:{mine}")]);
    assert_eq!(listed(bob.clone()).await, [format!("bob:{theirs}")]);
    let mut everyone = vec![format!("alice:{mine}"), format!("bob:{theirs}")];
    everyone.sort();
    assert_eq!(listed(tenant_key.clone()).await, everyone);

    // Bob reaches none of Alice's session: reading, writing into it and
    // deleting it all answer as if it did not exist.
    let (status, _) = transcript(&up, &bob, &mine).await;
    assert_eq!(status, 404);
    let write = up.api.post("/v1/chat/completions", &bob).header("X-Session-ID", &mine).json(
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "What is the secret?"}], "max_tokens": 4}),
    );
    let delete = up.api.delete(&format!("/v1/sessions/{mine}"), &bob);
    for (what, req) in [("write", write), ("delete", delete)] {
        let a = up.api.send(req).await.unwrap();
        assert_eq!(
            (a.status, a.code()),
            (404, "session_not_found"),
            "{what}: {:?}",
            a.body
        );
    }
    let (status, turns) = transcript(&up, &alice, &mine).await;
    assert_eq!((status, turns.len()), (200, 2), "{turns:?}");
    assert!(turns[0]["content"].as_str().unwrap().contains("tangerine"));

    // A user's key cannot act as another user, by header or by body.
    let a = up
        .api
        .send(up.api.post("/v1/chat/completions", &alice).header("X-User-ID", "bob").json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        ))
        .await
        .unwrap();
    assert_eq!((a.status, a.code()), (403, "user_mismatch"), "{:?}", a.body);
    let a = up
        .api
        .chat(
            &alice,
            json!({"model": MODEL, "user": "bob", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .await
        .unwrap();
    assert_eq!((a.status, a.code()), (403, "user_mismatch"), "{:?}", a.body);

    // The same long prompt from two users: the second user recomputes it.
    let cached = |key: String, text: String| {
        let up = &up;
        async move {
            let a = up
                .api
                .chat(
                    &key,
                    json!({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2, "temperature": 0}),
                )
                .await
                .unwrap();
            assert_eq!(a.status, 200, "{:?}", a.body);
            a.body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        }
    };
    let long = |topic: &str| {
        format!(
            "Here are the minutes of the {topic} meeting. {}",
            (1..=40)
                .map(|i| format!("Item {i}: the {topic} team reviewed account {}.", i * 37))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let prompt = long("pricing");
    let alice_first = cached(alice.clone(), prompt.clone()).await;
    let bob_first = cached(bob.clone(), prompt.clone()).await;
    let alice_again = cached(alice.clone(), prompt.clone()).await;
    println!(
        "cached_tokens, users apart: alice {alice_first}, bob {bob_first}, alice again {alice_again}"
    );
    assert!(
        alice_again > 300,
        "alice's own prefix is reused: {alice_again}"
    );
    assert!(
        bob_first < 50,
        "bob reused {bob_first} tokens of alice's prompt (alice herself: {alice_again})"
    );

    // Opted in, the tenant's users share prefixes.
    up.admin(&[
        "tenant",
        "update",
        "sales",
        "--kv-share-across-users",
        "true",
    ])
    .unwrap();
    eventually(
        "the opt-in to reach the gateway",
        Duration::from_secs(20),
        || async {
            let a = up.api.send(up.api.get("/v1/tenant", &bob)).await.ok()?;
            (a.body["features"]["kv_share_across_users"] == true).then_some(())
        },
    )
    .await
    .unwrap();
    let prompt = long("hiring");
    let alice_first = cached(alice.clone(), prompt.clone()).await;
    let bob_first = cached(bob.clone(), prompt).await;
    println!("cached_tokens, shared: alice {alice_first}, bob {bob_first}");
    assert!(
        bob_first > 300,
        "bob reuses alice's prefix once shared: {bob_first}"
    );
}

/// Refusals in the request's language: its `Accept-Language` when it names
/// one the catalogue has (English, Simplified Chinese), else the tenant's
/// `locale`, else English. The code, status and headers stay the same.
#[tokio::test]
async fn a_429_comes_in_english_or_chinese() {
    let (_dir, up, [key]) = up_with_tenants([(
        "tiny",
        &[
            "--daily-tokens",
            "60",
            "--max-request-tokens",
            "60",
            "--locale",
            "zh-CN",
        ],
    )])
    .await;
    let ask = |language: Option<&'static str>| {
        let (up, key) = (&up, key.clone());
        async move {
            let mut req = up
                .api
                .post("/v1/chat/completions", &key)
                .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}));
            if let Some(l) = language {
                req = req.header("Accept-Language", l);
            }
            up.api.send(req).await.unwrap()
        }
    };
    // Spend the day's 60 tokens.
    let refused = eventually("the quota spent", Duration::from_secs(60), || async {
        let a = ask(None).await;
        (a.status == 429).then_some(a)
    })
    .await
    .unwrap();
    let message = |a: &bulkhead_tests::system::Answer| {
        a.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // No Accept-Language: the tenant's locale.
    assert_eq!(refused.code(), "daily_quota_exceeded");
    let zh = message(&refused);
    println!("zh-CN (the tenant's locale): {zh}");
    // (Spent, or the rest reserved by a request still settling: both say
    // so in the tenant's language.)
    let chinese = |s: &str| s.contains("配额") && !s.contains("quota");
    assert!(chinese(&zh), "{zh}");
    // A browser that asks for English gets English, same code and headers.
    let a = ask(Some("en-US,en;q=0.9")).await;
    let en = message(&a);
    println!("en (Accept-Language): {en}");
    assert_eq!((a.status, a.code()), (429, "daily_quota_exceeded"));
    assert!(en.contains("quota") && en.is_ascii(), "{en}");
    assert!(a.headers.contains_key("retry-after"));
    // Asked for Chinese explicitly, too; and a language we lack falls back
    // to the tenant's.
    assert!(chinese(&message(&ask(Some("zh-CN,zh;q=0.9")).await)));
    assert!(chinese(&message(&ask(Some("fr-FR")).await)));
    // The tenant's locale back to English: no header, English.
    up.admin(&["tenant", "update", "tiny", "--locale", "en"])
        .unwrap();
    eventually(
        "the locale to reach the gateway",
        Duration::from_secs(20),
        || async {
            let m = message(&ask(None).await);
            (m.contains("quota") && m.is_ascii()).then_some(())
        },
    )
    .await
    .unwrap();
    // Before any key is known: the 401 in the language asked for.
    let a = up
        .api
        .send(
            up.api
                .get("/v1/models", "bk_not_a_key")
                .header("Accept-Language", "zh-CN"),
        )
        .await
        .unwrap();
    assert_eq!((a.status, a.code()), (401, "invalid_api_key"));
    assert!(message(&a).starts_with("API 密钥无效"), "{}", message(&a));
    // An unknown locale in a tenant's config is refused, naming the choices.
    let err = up
        .admin(&["tenant", "update", "tiny", "--locale", "fr"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("en, zh-CN"), "{err}");
}
