//! Knowledge sharing between tenants and a tenant's deletion, through the
//! real `bulkhead up` (gateway, control plane, worker with the demo model).

use std::time::Duration;

use anyhow::Context;
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_tests::system::{Up, created_key, usage_report};
use serde_json::json;

const POLICY: &str = "Travel policy 2026 Q1: every trip abroad needs approval from the finance director, and hotel nights are capped at 180 euros.";

fn admin_client(up: &Up) -> ControlPlaneClient {
    ControlPlaneClient::new(vec![up.control_plane.clone()], Some(up.admin_token.clone()))
}

async fn audit_actions(client: &ControlPlaneClient, tenant: &str) -> anyhow::Result<Vec<String>> {
    let list = client
        .admin()
        .send(
            pb::ListAuditRequest {
                tenant_id: tenant.into(),
                limit: 0,
            },
            |mut c, req| async move { c.list_audit(req).await },
        )
        .await?;
    Ok(list.records.into_iter().map(|r| r.action).collect())
}

/// Asserts that `tenant`'s audit trail holds each of `actions`.
async fn assert_in_trail(
    client: &ControlPlaneClient,
    tenant: &str,
    actions: &[&str],
) -> anyhow::Result<()> {
    let trail = audit_actions(client, tenant).await?;
    for action in actions {
        assert!(trail.contains(&(*action).to_owned()), "{trail:?}");
    }
    Ok(())
}

async fn shares(client: &ControlPlaneClient) -> anyhow::Result<usize> {
    Ok(client
        .admin()
        .send(
            pb::ListSharesRequest {
                tenant_id: String::new(),
            },
            |mut c, req| async move { c.list_shares(req).await },
        )
        .await?
        .grants
        .len())
}

async fn prompt_tokens(up: &Up, key: &str, question: &str) -> anyhow::Result<(u16, u64, String)> {
    let a = up.api.ask(key, question, 4).await?;
    let tokens = a
        .usage
        .as_ref()
        .and_then(|u| u["prompt_tokens"].as_u64())
        .unwrap_or(0);
    Ok((a.status, tokens, a.code().to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_tenant_reads_a_shared_snippet_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let client = admin_client(&up);
    // acme publishes; beta is granted; gamma is not; basic cannot publish.
    up.admin(&[
        "tenant",
        "create",
        "acme",
        "--plan",
        "pro",
        "--knowledge-share",
        "true",
    ])?;
    let acme_key = created_key(&up.admin(&["key", "create", "--tenant", "acme"])?)?;
    let beta = up.tenant_with_key("beta", &["--plan", "pro"])?;
    let gamma = up.tenant_with_key("gamma", &["--plan", "pro"])?;

    // Publishing needs knowledge_share on a plan that has it.
    let refused = client
        .admin()
        .send(
            pb::Snippet {
                tenant_id: "gamma".into(),
                name: "gamma_notes".into(),
                content: "x".into(),
                updated_at_ms: 0,
            },
            |mut c, req| async move { c.publish_snippet(req).await },
        )
        .await
        .expect_err("gamma does not share knowledge");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("knowledge_share"), "{refused:?}");
    let on_basic = up.admin(&["tenant", "create", "delta", "--knowledge-share", "true"]);
    assert!(
        on_basic
            .as_ref()
            .is_err_and(|e| e.to_string().contains("knowledge sharing")),
        "a basic tenant cannot share: {on_basic:?}"
    );

    client
        .admin()
        .send(
            pb::Snippet {
                tenant_id: "acme".into(),
                name: "policy_2026_q1".into(),
                content: POLICY.into(),
                updated_at_ms: 0,
            },
            |mut c, req| async move { c.publish_snippet(req).await },
        )
        .await?;
    // A grant to a tenant that does not exist is refused and changes nothing.
    let grant = |grantee: &str| pb::ShareGrant {
        owner_tenant_id: "acme".into(),
        snippet: "policy_2026_q1".into(),
        grantee_tenant_id: grantee.into(),
        created_at_ms: 0,
    };
    let missing = client
        .admin()
        .send(grant("nobody"), |mut c, req| async move {
            c.grant_share(req).await
        })
        .await
        .expect_err("no such tenant");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("nobody"), "{missing:?}");
    assert_eq!(shares(&client).await?, 0);
    client
        .admin()
        .send(grant("beta"), |mut c, req| async move {
            c.grant_share(req).await
        })
        .await?;
    assert_eq!(shares(&client).await?, 1);

    // acme keeps a session of its own, which beta must never reach.
    let acme_session = up
        .api
        .send(
            up.api
                .post("/v1/sessions", &acme_key)
                .json(&json!({"title": "acme secrets"})),
        )
        .await?;
    assert_eq!(acme_session.status, 201, "{:?}", acme_session.body);
    let acme_session_id = acme_session.body["id"]
        .as_str()
        .context("session id")?
        .to_owned();

    // beta names the snippet: it goes into the prompt (more prompt tokens
    // than the same question without it), and the answer succeeds.
    let (status, plain, _) = prompt_tokens(&up, &beta, "What does the travel policy say?").await?;
    assert_eq!(status, 200);
    let (status, with_snippet, _) = prompt_tokens(
        &up,
        &beta,
        "What does the travel policy say? @shared:policy_2026_q1",
    )
    .await?;
    assert_eq!(status, 200);
    assert!(
        with_snippet > plain + 20,
        "the snippet ({} bytes) should be in the prompt: {with_snippet} vs {plain} prompt tokens",
        POLICY.len()
    );

    // gamma has no grant: refused before any worker runs, with a clear error.
    let a = up
        .api
        .ask(&gamma, "Summarize @shared:policy_2026_q1 please", 4)
        .await?;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.code(), "shared_snippet_not_available");
    let message = a.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("gamma") && message.contains("policy_2026_q1"),
        "{message}"
    );
    assert!(
        !message.contains("acme"),
        "the owner is not named: {message}"
    );
    // A name nobody publishes is refused in the same words: a refusal does
    // not tell whether a snippet exists.
    let a = up.api.ask(&beta, "Use @shared:no_such_thing", 4).await?;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.code(), "shared_snippet_not_available");
    let other = a.body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        other
            .replace("no_such_thing", "policy_2026_q1")
            .replace("beta", "gamma"),
        message,
        "the two refusals differ only in what the callers wrote and who they are"
    );

    // Nothing else of acme is reachable by beta.
    let sessions = up.api.send(up.api.get("/v1/sessions", &beta)).await?;
    assert!(
        !sessions.body.to_string().contains(&acme_session_id),
        "beta lists acme's session: {:?}",
        sessions.body
    );
    let peek = up
        .api
        .send(
            up.api
                .get(&format!("/v1/sessions/{acme_session_id}/messages"), &beta),
        )
        .await?;
    assert_eq!(peek.status, 404, "{:?}", peek.body);

    // The grant, the uses and the refusals are in the audit trails.
    assert_in_trail(&client, "acme", &["share.granted", "share.read_by"]).await?;
    assert_in_trail(&client, "beta", &["share.used", "share.refused"]).await?;
    assert_in_trail(&client, "gamma", &["share.refused"]).await?;

    // A tenant with no quota left is refused before its `@shared:` is
    // resolved: no Raft write, nothing in its audit trail.
    let broke = up.tenant_with_key("broke", &["--plan", "pro", "--daily-tokens", "300"])?;
    client
        .admin()
        .send(grant("broke"), |mut c, req| async move {
            c.grant_share(req).await
        })
        .await?;
    let mut spent = false;
    for _ in 0..40 {
        let a = up.api.ask(&broke, "Count to three.", 24).await?;
        if a.status == 429 {
            spent = true;
            break;
        }
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    assert!(spent, "the quota of 300 tokens never ran out");
    let a = up
        .api
        .ask(
            &broke,
            "Count the policy's rules. @shared:policy_2026_q1",
            24,
        )
        .await?;
    assert_eq!(a.status, 429, "{:?}", a.body);
    let trail = audit_actions(&client, "broke").await?;
    assert!(
        !trail
            .iter()
            .any(|a| a == "share.used" || a == "share.refused"),
        "nothing was resolved for a request the quota refused: {trail:?}"
    );

    // When acme stops sharing, its grants no longer open anything.
    up.admin(&["tenant", "update", "acme", "--knowledge-share", "false"])?;
    let a = up
        .api
        .ask(
            &beta,
            "What does the travel policy say? @shared:policy_2026_q1",
            4,
        )
        .await?;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.code(), "shared_snippet_not_available", "{:?}", a.body);
    // Refused in the same words as a snippet that never existed: the reason
    // (and the owner's name) is only in the audit trail.
    let message = a.body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("acme"), "{message}");
    let beta_trail = audit_actions(&client, "beta").await?;
    assert!(
        beta_trail.iter().filter(|a| *a == "share.refused").count() >= 2,
        "{beta_trail:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_tenant_archives_it_first_and_frees_its_name_only_for_a_new_create()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let client = std::sync::Arc::new(admin_client(&up));
    let key = up.tenant_with_key("sales", &["--plan", "pro"])?;
    let session = up
        .api
        .send(
            up.api
                .post("/v1/sessions", &key)
                .json(&json!({"title": "q1 numbers"})),
        )
        .await?;
    let session_id = session.body["id"]
        .as_str()
        .context("session id")?
        .to_owned();
    let a = up
        .api
        .chat(
            &key,
            json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
                   "temperature": 0, "session_id": session_id, "user": "ann"}),
        )
        .await?;
    assert_eq!(a.status, 200, "{:?}", a.body);
    // The usage reaches the ledger.
    bulkhead_tests::system::eventually("usage recorded", Duration::from_secs(20), || {
        let client = std::sync::Arc::clone(&client);
        async move {
            // Today and yesterday: the test may cross midnight.
            let r = usage_report(&client, "sales", 2).await.ok()?;
            r.days.iter().any(|d| d.requests > 0).then_some(())
        }
    })
    .await?;

    let out = up.admin(&["tenant", "delete", "sales"])?;
    let archive = out
        .split("archived to ")
        .nth(1)
        .context("archive path in output")?
        .trim()
        .trim_end_matches(')')
        .to_owned();
    assert!(
        archive.starts_with(&dir.path().display().to_string()),
        "the archive is under the data dir: {archive}"
    );
    let text = std::fs::read_to_string(&archive)?;
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["kind"].to_string()))
        .collect::<Result<_, _>>()?;
    for kind in [
        "tenant",
        "key",
        "session",
        "turn",
        "usage_day",
        "usage_user",
        "audit",
    ] {
        assert!(
            kinds.contains(&format!("\"{kind}\"")),
            "the archive has no {kind} line: {kinds:?}"
        );
    }
    assert!(text.contains("Say hi."), "the archive keeps the turns");
    assert!(!text.contains(&key), "the archive never holds a key");

    // The key stops working, and the tenant is gone.
    bulkhead_tests::system::eventually("key refused", Duration::from_secs(10), || {
        let up_api = up.api.clone();
        let key = key.clone();
        async move {
            let a = up_api.ask(&key, "hi", 2).await.ok()?;
            (a.status == 401).then_some(())
        }
    })
    .await?;
    assert!(up.admin(&["tenant", "show", "sales"]).is_err());

    // A config apply does not bring it back; an explicit create does, and
    // its audit trail continues the old chain.
    let config = dir.path().join("sales.yaml");
    std::fs::write(&config, "tenant_id: sales\nplan: pro\n")?;
    let applied = client
        .admin()
        .send(
            pb::ApplyTenantsRequest {
                configs: vec![pb::TenantConfig {
                    source: config.display().to_string(),
                    tenant: Some(pb::Tenant {
                        id: "sales".into(),
                        plan: "pro".into(),
                        ..Default::default()
                    }),
                    webhooks: Vec::new(),
                }],
            },
            |mut c, req| async move { c.apply_tenants(req).await },
        )
        .await
        .expect_err("a deleted tenant is not re-created by a config apply");
    assert_eq!(applied.code(), tonic::Code::FailedPrecondition);
    assert!(applied.message().contains("tenant create"), "{applied:?}");
    up.admin(&["tenant", "create", "sales", "--plan", "pro"])?;
    let trail = audit_actions(&client, "sales").await?;
    let deleted_at = trail
        .iter()
        .position(|a| a == "tenant.deleted")
        .context("deletion in the trail")?;
    assert_eq!(trail.first().map(String::as_str), Some("tenant.created"));
    assert_eq!(trail.last().map(String::as_str), Some("tenant.created"));
    assert!(deleted_at > 0 && deleted_at < trail.len() - 1, "{trail:?}");
    let verified = client
        .admin()
        .send(
            pb::VerifyAuditRequest {
                tenant_id: "sales".into(),
            },
            |mut c, req| async move { c.verify_audit(req).await },
        )
        .await?;
    assert!(verified.ok, "{verified:?}");
    // The new tenant starts empty: no sessions, no usage.
    let new_key = created_key(&up.admin(&["key", "create", "--tenant", "sales"])?)?;
    let sessions = up.api.send(up.api.get("/v1/sessions", &new_key)).await?;
    assert_eq!(
        sessions.body["data"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        sessions.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_burst_lifts_the_quota_at_the_gateway_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let client = admin_client(&up);
    let key = up.tenant_with_key("bigco", &["--plan", "enterprise", "--daily-tokens", "400"])?;
    // Spend the day's quota until the gateway refuses.
    let mut refused = None;
    for _ in 0..40 {
        let a = up.api.ask(&key, "Count to three.", 24).await?;
        if a.status == 429 {
            refused = Some(a);
            break;
        }
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let refused = refused.context("the quota of 400 tokens never ran out")?;
    assert_eq!(refused.code(), "daily_quota_exceeded", "{:?}", refused.body);

    let burst = client
        .admin()
        .send(
            pb::BurstRequest {
                tenant_id: "bigco".into(),
                reason: "quarter close".into(),
            },
            |mut c, req| async move { c.request_burst(req).await },
        )
        .await?;
    assert_eq!(burst.status, "pending");
    assert_eq!(burst.percent, 50);
    // Still refused while pending.
    let a = up.api.ask(&key, "Count to three.", 24).await?;
    assert_eq!(a.status, 429, "{:?}", a.body);
    let approved = client
        .admin()
        .send(
            pb::BurstDecision {
                burst_id: burst.burst_id.clone(),
                approve: true,
                note: "ok".into(),
            },
            |mut c, req| async move { c.decide_burst(req).await },
        )
        .await?;
    assert_eq!(approved.status, "approved");
    assert_eq!(approved.extra_tokens, 200);
    // The next request is admitted: no restart, no wait for a lease.
    let a = up.api.ask(&key, "Count to three.", 24).await?;
    assert_eq!(a.status, 200, "after approval: {:?}", a.body);
    let limit = a
        .headers
        .get("x-ratelimit-limit-tokens")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(limit, "600", "the gateway reports the day's new quota");
    // A second burst the same day is refused.
    let again = client
        .admin()
        .send(
            pb::BurstRequest {
                tenant_id: "bigco".into(),
                reason: "more".into(),
            },
            |mut c, req| async move { c.request_burst(req).await },
        )
        .await
        .expect_err("one burst per day");
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    Ok(())
}
