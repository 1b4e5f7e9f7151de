//! Tenants: config applies, deletion, per-day prompt counts and latency,
//! and the usage export key.

use super::*;

#[test]
fn prompts_and_latency_are_counted_per_day_and_go_with_the_tenant() {
    let (_dir, sm) = open();
    for id in ["acme", "beta"] {
        run(
            &sm,
            admin(Command::CreateTenant {
                tenant: tenant(id, "pro", 100_000),
            }),
        );
    }
    let asked = |id: &str, tenant: &str, prompt: &str, ms: u64| UsageRecord {
        prompt_preview: prompt.into(),
        duration_ms: ms,
        ..usage(id, tenant, 10)
    };
    let events = vec![
        asked("e1", "acme", "hello", 30),
        asked("e2", "acme", "hello", 40),
        asked("e3", "acme", "other", 3_000),
        asked("e4", "beta", "hello", 30),
        // A replay counts nothing.
        asked("e1", "acme", "hello", 30),
    ];
    run(
        &sm,
        Command::ApplyUsage {
            events,
            now_ms: NOW,
        },
    );
    let view = sm.view().expect("view");
    let days = ["2026-11-26".to_owned()];
    let top = view.top_prompts("acme", &days, 5).expect("top");
    let top: Vec<(&str, u64)> = top.iter().map(|p| (p.text.as_str(), p.count)).collect();
    assert_eq!(top, [("hello", 2), ("other", 1)]);
    assert_eq!(view.top_prompts("acme", &days, 1).expect("top").len(), 1);
    let l = view
        .ledger_day("acme", &days[0])
        .expect("day")
        .expect("day");
    assert_eq!(l.p95_latency_ms(), 3_200);
    // Recent requests do not keep the prompt.
    assert!(
        view.recent("acme")
            .expect("recent")
            .iter()
            .all(|r| r.prompt_preview.is_empty())
    );
    run(
        &sm,
        admin(Command::DeleteTenant {
            id: "acme".into(),
            archive: String::new(),
            now_ms: NOW,
        }),
    );
    let view = sm.view().expect("view");
    assert!(view.top_prompts("acme", &days, 5).expect("top").is_empty());
    assert_eq!(view.top_prompts("beta", &days, 5).expect("top").len(), 1);
}

#[test]
fn the_export_key_is_stored_once() {
    let (_dir, sm) = open();
    let first = run(
        &sm,
        Command::SetExportKey {
            key_hex: "aa".repeat(32),
        },
    );
    let second = run(
        &sm,
        Command::SetExportKey {
            key_hex: "bb".repeat(32),
        },
    );
    assert!(matches!(first, Reply::ExportKey(ref k) if *k == "aa".repeat(32)));
    assert!(matches!(second, Reply::ExportKey(ref k) if *k == "aa".repeat(32)));
    let view = sm.view().expect("view");
    assert_eq!(view.export_key().expect("key"), Some("aa".repeat(32)));
}

#[test]
fn a_deleted_tenants_own_endpoint_still_hears_of_the_deletion() {
    let (_dir, sm) = acme_with_webhook("wh_acme", "acme", "whsec_acme");
    run(
        &sm,
        admin(Command::DeleteTenant {
            id: "acme".into(),
            archive: "/data/archives/acme.jsonl".into(),
            now_ms: NOW,
        }),
    );
    let view = sm.view().expect("view");
    assert!(
        outbox::webhooks(&view, "acme")
            .expect("webhooks")
            .is_empty()
    );
    let sent = outbox::deliveries(&view, "acme", "", 10).expect("deliveries");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].event_type, "tenant.deleted");
    assert_eq!(
        sent[0].secret, "whsec_acme",
        "signed with the endpoint's secret"
    );
    let trail = audit::records(&view, "acme").expect("trail");
    let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["tenant.created", "webhook.created", "tenant.deleted"]
    );
}

#[test]
fn a_config_apply_twice_changes_nothing_the_second_time() {
    let (_dir, sm) = open();
    let apply = |daily| Command::ApplyTenants {
        tenants: vec![TenantApply {
            source: "tenants/acme/config.yaml".into(),
            tenant: tenant("acme", "pro", daily),
            webhooks: Vec::new(),
        }],
    };
    let first = run(&sm, apply(5_000));
    let second = run(&sm, apply(5_000));
    let third = run(&sm, apply(6_000));
    let actions = |r: Reply| match r {
        Reply::Applied(o) => (o[0].action.clone(), o[0].changed.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(actions(first).0, "created");
    assert_eq!(actions(second), ("unchanged".to_owned(), Vec::new()));
    // The plan's request limit (16,384) is capped by the daily quota, so it follows it.
    assert_eq!(
        actions(third),
        (
            "updated".to_owned(),
            vec!["daily_tokens".to_owned(), "max_request_tokens".to_owned()]
        )
    );
}
