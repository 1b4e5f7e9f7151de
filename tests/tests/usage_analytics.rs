//! Usage analytics through the admin HTTP API of a real `bulkhead up` with
//! the demo model: per-day p95 latency, the most frequent prompts, reports
//! over a date range, and the de-identified CSV export (hashed user ids, no
//! prompt text, token sums equal to the report's).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bulkhead_tests::system::{MODEL, Up, eventually};
use serde_json::{Value, json};

const REPEATED: &str = "What is the capital of France?";
const ONCE: &str = "Name one primary color.";
const ALICE: &str = "alice.raw.user";
const BOB: &str = "bob.raw.user";

/// A GET on the admin API: status, headers and body text.
async fn admin_get(up: &Up, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = up
        .api
        .http
        .get(format!("{}{path}", up.api.base))
        .bearer_auth(&up.admin_token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

async fn admin_json(up: &Up, path: &str) -> Value {
    let (status, _, text) = admin_get(up, path).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn usage_reports_latency_top_prompts_and_a_deidentified_export() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let key = up
        .tenant_with_key("analytics", &["--daily-tokens", "100000"])
        .unwrap();

    for (user, prompt) in [(ALICE, REPEATED), (BOB, ONCE), (BOB, REPEATED)] {
        let a = up
            .api
            .chat(
                &key,
                json!({
                    "model": MODEL,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 8,
                    "temperature": 0,
                    "user": user,
                }),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
    }

    let report = eventually(
        "three requests in the ledger",
        Duration::from_secs(30),
        || {
            let up = &up;
            async move {
                // Today and yesterday: a run across midnight splits them.
                let r = admin_json(up, "/admin/v1/tenants/analytics/usage?days=2").await;
                let requests: u64 = r["days"]
                    .as_array()?
                    .iter()
                    .filter_map(|d| d["requests"].as_u64())
                    .sum();
                (requests == 3).then_some(r)
            }
        },
    )
    .await
    .unwrap();
    // The day that holds the requests (both, if split: the busier one).
    let today = report["days"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|d| d["requests"].as_u64().unwrap_or(0))
        .unwrap()
        .clone();
    let day = today["day"].as_str().unwrap().to_owned();
    let (p95, avg) = (
        today["p95_latency_ms"].as_u64().unwrap(),
        today["avg_latency_ms"].as_u64().unwrap(),
    );
    assert!(p95 > 0 && p95 >= avg, "{today}");
    assert!(p95 >= today["max_latency_ms"].as_u64().unwrap(), "{today}");

    let top = report["top_prompts"].as_array().unwrap();
    assert_eq!(top[0], json!({"text": REPEATED, "count": 2}), "{report}");
    assert_eq!(top[1], json!({"text": ONCE, "count": 1}), "{report}");
    assert_eq!(top.len(), 2, "{report}");
    // The operator's CLI shows the same, and the p95 column.
    let shown = up
        .admin(&["usage", "--tenant", "analytics", "--days", "2"])
        .unwrap();
    assert!(
        shown.contains("P95 MS") && shown.contains(&p95.to_string()),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with('2') && l.ends_with(REPEATED)),
        "{shown}"
    );

    // The same day as a range answers the same counts.
    let ranged = admin_json(
        &up,
        &format!("/admin/v1/tenants/analytics/usage?from={day}&to={day}"),
    )
    .await;
    assert_eq!(ranged["days"].as_array().unwrap().len(), 1, "{ranged}");
    assert_eq!(ranged["days"][0]["requests"], today["requests"]);
    assert_eq!(ranged["top_prompts"], report["top_prompts"]);

    // The export: one row per user, hashed, no raw ids or prompt text.
    let path = format!("/admin/v1/tenants/analytics/usage/export?from={day}&to={day}");
    let (status, headers, body) = admin_get(&up, &path).await;
    assert_eq!(status, 200, "{body}");
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert!(header("content-type").starts_with("text/csv"));
    assert_eq!(
        header("content-disposition"),
        format!("attachment; filename=\"usage-analytics-{day}-{day}.csv\"")
    );
    for secret in [
        ALICE, BOB, "alice", "bob", REPEATED, ONCE, "France", "color",
    ] {
        assert!(!body.contains(secret), "{secret:?} in the export:\n{body}");
    }
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("day,user,tokens,requests"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{body}");
    let mut users = Vec::new();
    let (mut tokens, mut requests) = (0, 0);
    for row in &rows {
        assert_eq!(row.len(), 4, "{body}");
        assert_eq!(row[0], day);
        let hex = row[1].strip_prefix("u_").unwrap();
        assert!(
            hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{body}"
        );
        users.push(row[1]);
        tokens += row[2].parse::<u64>().unwrap();
        requests += row[3].parse::<u64>().unwrap();
    }
    assert_ne!(users[0], users[1], "{body}");
    assert_eq!(requests, 3);
    let reported =
        today["prompt_tokens"].as_u64().unwrap() + today["completion_tokens"].as_u64().unwrap();
    assert_eq!(tokens, reported, "{body}\n{today}");
    let by_user: u64 = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens, by_user);
    // The hashes are stable: a second export names the users the same way.
    let (_, _, again) = admin_get(&up, &path).await;
    assert_eq!(again, body);

    // A bad range is refused naming the parameter.
    for path in [
        format!("/admin/v1/tenants/analytics/usage?from=2026-13-01&to={day}"),
        format!("/admin/v1/tenants/analytics/usage/export?from=yesterday&to={day}"),
        "/admin/v1/tenants/analytics/usage/export".to_owned(),
    ] {
        let (status, _, text) = admin_get(&up, &path).await;
        assert_eq!(status, 400, "{path}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["param"], "from", "{path}: {text}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("from_day:"),
            "{text}"
        );
    }
    let (status, _, text) = admin_get(
        &up,
        "/admin/v1/tenants/analytics/usage/export?from=2026-11-02&to=2026-11-01",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("to_day"), "{text}");
}
