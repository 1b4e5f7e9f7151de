//! Webhooks end to end: a three-node control plane delivers tenant, key,
//! burst and quota events to a real HTTP receiver that checks the Standard
//! Webhooks signature with each endpoint's secret and answers 500 to the
//! first two attempts of every message. The leader is SIGKILLed between the
//! tenant crossing 90% of its quota and crossing 100%. Every message arrives
//! exactly once after its failures (quota.low once per endpoint that wants
//! it), correctly signed, and ListDeliveries shows each attempt. Endpoints
//! with a bad URL or an unknown event type are refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_proto::worker::UsageEvent;
use bulkhead_tests::cluster::ControlPlanes;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How long the receiver takes to answer, so every attempt's latency is at
/// least this.
const ANSWER_DELAY: Duration = Duration::from_millis(20);
/// Attempts of a message the receiver fails before it accepts one.
const FAILURES: u32 = 2;

#[derive(Default)]
struct Seen {
    /// Endpoint name (the last path segment) -> its signing secret.
    secrets: HashMap<String, String>,
    /// Attempts per message id (`webhook-id`).
    attempts: HashMap<String, u32>,
    /// (endpoint, message id, body) of every request answered 2xx.
    accepted: Vec<(String, String, Value)>,
    /// Requests refused for a bad signature or bad headers.
    bad: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a Standard Webhooks signature the way a receiver would: the
/// timestamp within five minutes, and one of the `v1,` signatures equal to
/// the HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the secret.
fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &str,
) -> Result<(), String> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp:?} is not a number"))?;
    if (now_ms() / 1000 - ts).abs() > 300 {
        return Err(format!("webhook-timestamp {ts} is too far from now"));
    }
    if id.is_empty() {
        return Err("no webhook-id".into());
    }
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .ok_or_else(|| format!("secret {secret:?} is not whsec_<base64>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
    {
        Ok(())
    } else {
        Err(format!("webhook-signature {signatures:?} does not match"))
    }
}

async fn receive(
    State(seen): State<Shared>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    tokio::time::sleep(ANSWER_DELAY).await;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut seen = seen.lock().expect("receiver state");
    let Some(secret) = seen.secrets.get(&endpoint).cloned() else {
        seen.bad.push(format!("{endpoint} {id}: no such endpoint"));
        return (StatusCode::NOT_FOUND, "no such endpoint");
    };
    let checked = verify(
        &secret,
        &id,
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &body,
    )
    .and_then(|()| match header("content-type").as_str() {
        "application/json" => Ok(()),
        other => Err(format!("content-type {other:?}")),
    })
    .and_then(|()| match header("user-agent").as_str() {
        "bulkhead-webhooks" => Ok(()),
        other => Err(format!("user-agent {other:?}")),
    });
    if let Err(why) = checked {
        seen.bad.push(format!("{endpoint} {id}: {why}"));
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    let n = seen.attempts.entry(id.clone()).or_default();
    *n += 1;
    if *n <= FAILURES {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try again later");
    }
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    seen.accepted.push((endpoint, id, value));
    (StatusCode::OK, "ok")
}

/// Starts the receiver on 127.0.0.1:0; returns its state and base URL.
async fn start_receiver() -> anyhow::Result<(Shared, String)> {
    let seen = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/hook/{endpoint}", post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((seen, base))
}

/// Registers endpoint `name` and gives the receiver its secret.
async fn create_webhook(
    admin: &ControlPlaneClient,
    seen: &Shared,
    base: &str,
    name: &str,
    tenant_id: &str,
    events: &[&str],
) -> anyhow::Result<pb::Webhook> {
    let created = admin
        .admin()
        .send(
            pb::CreateWebhookRequest {
                tenant_id: tenant_id.into(),
                url: format!("{base}/hook/{name}"),
                events: events.iter().map(|e| (*e).to_owned()).collect(),
                secret: String::new(),
            },
            |mut c, req| async move { c.create_webhook(req).await },
        )
        .await?;
    let webhook = created.webhook.expect("a created webhook");
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    assert!(
        created.secret.starts_with(&webhook.secret_prefix)
            && webhook.secret_prefix.len() < created.secret.len(),
        "the listing shows only a prefix of the secret: {webhook:?}"
    );
    seen.lock()
        .expect("receiver state")
        .secrets
        .insert(name.to_owned(), created.secret);
    Ok(webhook)
}

async fn list_webhooks(admin: &ControlPlaneClient) -> anyhow::Result<Vec<pb::Webhook>> {
    Ok(admin
        .admin()
        .send(
            pb::ListWebhooksRequest::default(),
            |mut c, req| async move { c.list_webhooks(req).await },
        )
        .await?
        .webhooks)
}

async fn deliveries(admin: &ControlPlaneClient) -> anyhow::Result<Vec<pb::Delivery>> {
    Ok(admin
        .admin()
        .send(
            pb::ListDeliveriesRequest::default(),
            |mut c, req| async move { c.list_deliveries(req).await },
        )
        .await?
        .deliveries)
}

async fn create_tenant(
    admin: &ControlPlaneClient,
    id: &str,
    plan: &str,
    daily_tokens: u64,
) -> anyhow::Result<()> {
    admin
        .admin()
        .send(
            pb::Tenant {
                id: id.into(),
                plan: plan.into(),
                limits: Some(pb::Limits {
                    daily_tokens,
                    ..Default::default()
                }),
                ..Default::default()
            },
            |mut c, req| async move { c.create_tenant(req).await },
        )
        .await?;
    Ok(())
}

/// Reports one usage event as a gateway would (with the cluster secret).
async fn report(
    member: &ControlPlaneClient,
    tenant: &str,
    event_id: &str,
    tokens: u32,
) -> anyhow::Result<pb::UsageApplied> {
    let batch = pb::UsageBatch {
        events: vec![UsageEvent {
            event_id: event_id.into(),
            request_id: format!("req-{event_id}"),
            tenant_id: tenant.into(),
            prompt_tokens: tokens / 2,
            completion_tokens: tokens - tokens / 2,
            duration_ms: 5,
            finished_at_ms: now_ms(),
            ..Default::default()
        }],
    };
    Ok(member
        .fleet()
        .send(batch, |mut c, req| async move { c.report_usage(req).await })
        .await?)
}

/// Polls `check` every 50 ms until it holds.
async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// (endpoint, event type, tenant) of every accepted message, sorted.
fn accepted_events(seen: &Shared) -> Vec<(String, String, String)> {
    let seen = seen.lock().expect("receiver state");
    let mut out: Vec<(String, String, String)> = seen
        .accepted
        .iter()
        .map(|(endpoint, _, body)| {
            (
                endpoint.clone(),
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["data"]["tenant_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn accepted_count(seen: &Shared) -> usize {
    seen.lock().expect("receiver state").accepted.len()
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_once_signed_after_failures_across_a_leader_kill() -> anyhow::Result<()> {
    let (seen, base) = start_receiver().await?;
    let mut cp = ControlPlanes::start(3, &[])?;
    let admin = cp.client();
    let member = cp.fleet_client().await?;

    // A global endpoint for every event, and one of tenant acme for quota events only.
    create_webhook(&admin, &seen, &base, "global", "", &[]).await?;
    create_tenant(&admin, "acme", "", 1_000).await?;
    let tenant_hook = create_webhook(
        &admin,
        &seen,
        &base,
        "acme",
        "acme",
        &["quota.low", "quota.exhausted"],
    )
    .await?;
    assert_eq!(tenant_hook.tenant_id, "acme");

    // Bad endpoints are refused, naming what is wrong, and change nothing.
    let before = list_webhooks(&admin).await?;
    assert_eq!(before.len(), 2, "{before:?}");
    let unknown_event = format!("{base}/hook/other");
    for (url, events, names) in [
        ("ftp://x", vec![], "url"),
        ("not a url", vec![], "url"),
        (
            unknown_event.as_str(),
            vec!["quota.nope".to_owned()],
            "quota.nope",
        ),
    ] {
        let err = admin
            .admin()
            .send(
                pb::CreateWebhookRequest {
                    tenant_id: String::new(),
                    url: url.into(),
                    events,
                    secret: String::new(),
                },
                |mut c, req| async move { c.create_webhook(req).await },
            )
            .await
            .expect_err("a bad endpoint is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{url}: {err}");
        assert!(err.message().contains(names), "{url}: {err}");
    }
    assert_eq!(list_webhooks(&admin).await?, before);

    // Key and burst events, to the global endpoint only.
    let key = admin
        .admin()
        .send(
            pb::CreateKeyRequest {
                tenant_id: "acme".into(),
                name: "ci".into(),
                user_id: String::new(),
            },
            |mut c, req| async move { c.create_key(req).await },
        )
        .await?
        .key
        .expect("a created key");
    admin
        .admin()
        .send(
            pb::RevokeKeyRequest {
                key_id: key.key_id.clone(),
            },
            |mut c, req| async move { c.revoke_key(req).await },
        )
        .await?;
    create_tenant(&admin, "bigco", "enterprise", 100_000).await?;
    admin
        .admin()
        .send(
            pb::BurstRequest {
                tenant_id: "bigco".into(),
                reason: "launch day".into(),
            },
            |mut c, req| async move { c.request_burst(req).await },
        )
        .await?;
    // Each is accepted on its third attempt (after 1 s and 2 s of backoff);
    // waiting for them keeps the leader kill below away from their success.
    wait_for(
        "the first five messages accepted",
        Duration::from_secs(20),
        || accepted_count(&seen) == 5,
    )
    .await?;

    // Past 90%: quota.low to both endpoints. The leader dies once it has
    // made the first attempts (and perhaps before recording them).
    let applied = report(&member, "acme", "ev-1", 950).await?;
    assert_eq!((applied.applied, applied.duplicates), (1, 0));
    let low_ids: Vec<String> = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = deliveries(&admin)
                .await?
                .into_iter()
                .filter(|d| d.event_type == "quota.low")
                .map(|d| d.message_id)
                .collect();
            if ids.len() == 2 {
                break ids;
            }
            anyhow::ensure!(Instant::now() < deadline, "quota.low not written: {ids:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(
        "first attempts of quota.low",
        Duration::from_secs(10),
        || {
            let s = seen.lock().expect("receiver state");
            low_ids.iter().all(|id| s.attempts.contains_key(id))
        },
    )
    .await?;
    let leader = cp.leader(Duration::from_secs(10)).await?;
    cp.kill(leader);

    // The same event again changes nothing; past 100%: quota.exhausted.
    let again = report(&member, "acme", "ev-1", 950).await?;
    assert_eq!((again.applied, again.duplicates), (0, 1));
    report(&member, "acme", "ev-2", 100).await?;
    report(&member, "acme", "ev-3", 10).await?;

    wait_for(
        "all nine messages accepted",
        Duration::from_secs(30),
        || accepted_count(&seen) >= 9,
    )
    .await?;
    // Their records commit after the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = deliveries(&admin).await?;
        if listed.iter().all(|d| d.state == "delivered") || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every delivery is recorded as delivered, and a delivered one is never
    // attempted again: no duplicate can arrive after this point (the
    // receiver counts an event before it answers 2xx).

    let s = |e: &str, kind: &str, t: &str| (e.to_owned(), kind.to_owned(), t.to_owned());
    let mut expected = vec![
        s("global", "tenant.created", "acme"),
        s("global", "key.created", "acme"),
        s("global", "key.revoked", "acme"),
        s("global", "tenant.created", "bigco"),
        s("global", "burst.requested", "bigco"),
        s("global", "quota.low", "acme"),
        s("global", "quota.exhausted", "acme"),
        s("acme", "quota.low", "acme"),
        s("acme", "quota.exhausted", "acme"),
    ];
    expected.sort();
    assert_eq!(accepted_events(&seen), expected);
    {
        let seen = seen.lock().expect("receiver state");
        assert!(seen.bad.is_empty(), "badly signed requests: {:?}", seen.bad);
        let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, id, _) in &seen.accepted {
            *per_id.entry(id).or_default() += 1;
        }
        assert_eq!(per_id.len(), 9, "distinct webhook-ids: {per_id:?}");
        assert!(
            per_id.values().all(|n| *n == 1),
            "accepted more than once: {per_id:?}"
        );
        // quota.low for acme's day: once per endpoint.
        for endpoint in ["global", "acme"] {
            let lows: Vec<&Value> = seen
                .accepted
                .iter()
                .filter(|(e, _, b)| e == endpoint && b["type"] == "quota.low")
                .map(|(_, _, b)| b)
                .collect();
            assert_eq!(lows.len(), 1, "{endpoint}: {lows:?}");
            assert_eq!(lows[0]["data"]["tenant_id"], "acme");
            assert_eq!(lows[0]["data"]["used"], 950);
            assert_eq!(lows[0]["data"]["quota"], 1_000);
        }
    }

    // The recorded attempts: failures, then the success, with latencies.
    assert_eq!(listed.len(), 9, "{listed:#?}");
    for d in &listed {
        assert_eq!(d.state, "delivered", "{d:#?}");
        let statuses: Vec<u32> = d.attempts.iter().map(|a| a.status).collect();
        if d.event_type == "quota.low" {
            // Around the leader kill an attempt may have been sent and not
            // recorded; whatever was recorded failed until the last.
            assert!(
                matches!(statuses.as_slice(), [500, 200] | [500, 500, 200]),
                "{d:#?}"
            );
        } else {
            assert_eq!(statuses, [500, 500, 200], "{d:#?}");
            assert!(
                d.attempts[1].at_ms - d.attempts[0].at_ms >= 900
                    && d.attempts[2].at_ms - d.attempts[1].at_ms >= 1_900,
                "retries back off: {d:#?}"
            );
        }
        for a in &d.attempts {
            assert!(a.latency_ms >= 20, "latency recorded: {d:#?}");
            if a.status == 500 {
                assert_eq!(a.error, "HTTP 500: try again later", "{d:#?}");
            } else {
                assert!(a.error.is_empty(), "{d:#?}");
            }
        }
        let accepted_here = seen
            .lock()
            .expect("receiver state")
            .accepted
            .iter()
            .any(|(_, id, _)| *id == d.message_id);
        assert!(accepted_here, "{} was not accepted", d.message_id);
    }
    Ok(())
}
