use super::*;
use crate::storage::{StateMachine, with_tables};

const DAY_MS: i64 = 86_400_000;
// 2026-11-26T12:00:00Z
const NOW: i64 = 1_795_694_400_000;

fn open() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, sm) = crate::storage::open(&dir.path().join("cp.redb")).expect("open");
    (dir, sm)
}

fn run(sm: &StateMachine, command: Command) -> Reply {
    with_tables(sm, |t| apply(t, command)).expect("apply")
}

fn admin(command: Command) -> Command {
    Command::Audited {
        actor: "admin".into(),
        now_ms: NOW,
        command: Box::new(command),
    }
}

fn tenant(id: &str, plan: &str, daily: u64) -> TenantRecord {
    let mut t = TenantRecord {
        id: id.into(),
        plan: plan.into(),
        ..Default::default()
    };
    t.limits.daily_tokens = daily;
    t.overridden.insert("daily_tokens".into());
    plans::follow_plan(plan, &t.overridden.clone(), &mut t.limits, &mut t.features);
    t
}

fn usage(id: &str, tenant: &str, tokens: u64) -> UsageRecord {
    UsageRecord {
        event_id: id.into(),
        tenant_id: tenant.into(),
        completion_tokens: tokens,
        finished_at_ms: NOW,
        ..Default::default()
    }
}

#[test]
fn a_batch_of_appends_answers_each_and_the_last_turns_read_back_in_order() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "basic", 1_000),
        },
    );
    let append = |tenant: &str, session: &str, text: &str| TurnAppend {
        tenant_id: tenant.into(),
        session_id: session.into(),
        user_id: String::new(),
        turns: vec![
            ("user".into(), format!("{text}?")),
            ("assistant".into(), format!("{text}!")),
        ],
    };
    let reply = run(
        &sm,
        Command::AppendTurnsBatch {
            appends: (0..30)
                .map(|i| append("acme", "long", &i.to_string()))
                .chain([append("nobody", "s", "x"), append("acme", "short", "only")])
                .collect(),
            now_ms: NOW,
        },
    );
    let Reply::Batch(replies) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(replies.len(), 32);
    assert!(matches!(&replies[29], Reply::Session(s) if s.turns == 60));
    assert_eq!(
        replies[30],
        Reply::Rejected(Rejection::UnknownTenant("nobody".into()))
    );
    assert!(matches!(&replies[31], Reply::Session(s) if s.turns == 2));
    let view = sm.view().expect("view");
    let acme = TenantId::new("acme").expect("id");
    let scoped = crate::sessions::TenantView::new(&view, &acme);
    let text = |turns: Vec<crate::sessions::TurnRecord>| -> Vec<String> {
        turns.into_iter().map(|t| t.content).collect()
    };
    assert_eq!(
        text(scoped.turns("long", 3).expect("turns")),
        ["28!", "29?", "29!"]
    );
    assert_eq!(scoped.turns("long", 0).expect("turns").len(), 60);
    assert_eq!(
        text(scoped.turns("short", 10).expect("turns")),
        ["only?", "only!"]
    );
    assert!(scoped.turns("missing", 4).expect("turns").is_empty());
}

#[test]
fn turns_are_kept_for_the_tenants_retention() {
    let (_dir, sm) = open();
    let mut short = tenant("short", "enterprise", 1_000);
    short.features.retention_days = 1;
    run(&sm, Command::CreateTenant { tenant: short });
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("long", "basic", 1_000),
        },
    );
    for id in ["short", "long"] {
        run(
            &sm,
            Command::AppendTurns {
                tenant_id: id.into(),
                session_id: "s1".into(),
                user_id: String::new(),
                turns: vec![("user".into(), "hello".into())],
                now_ms: NOW - 2 * DAY_MS,
            },
        );
    }
    run(&sm, Command::PruneTurns { now_ms: NOW });
    let view = sm.view().expect("view");
    let turns = |id: &str| {
        let tid = TenantId::new(id).expect("id");
        crate::sessions::TenantView::new(&view, &tid)
            .turns("s1", 0)
            .expect("turns")
            .len()
    };
    assert_eq!(
        turns("short"),
        0,
        "1 day of retention drops a 2-day-old turn"
    );
    assert_eq!(turns("long"), 1, "basic keeps 30 days");
}

#[test]
fn quota_low_and_exhausted_fire_once_a_day_and_the_audit_chain_holds() {
    let (_dir, sm) = open();
    run(
        &sm,
        admin(Command::CreateTenant {
            tenant: tenant("acme", "pro", 1_000),
        }),
    );
    run(
        &sm,
        admin(Command::CreateWebhook {
            webhook: WebhookRecord {
                webhook_id: "wh_1".into(),
                url: "http://127.0.0.1:9/hook".into(),
                secret: "whsec_x".into(),
                source: "admin".into(),
                ..Default::default()
            },
        }),
    );
    let batches = [
        vec![usage("e1", "acme", 500)],
        vec![usage("e2", "acme", 420), usage("e1", "acme", 500)],
        vec![usage("e3", "acme", 10)],
        vec![usage("e4", "acme", 200), usage("e5", "acme", 1)],
    ];
    for b in batches {
        run(
            &sm,
            Command::ApplyUsage {
                events: b,
                now_ms: NOW,
            },
        );
    }
    let view = sm.view().expect("view");
    let types: Vec<String> = outbox::deliveries(&view, "acme", "", 100)
        .expect("deliveries")
        .into_iter()
        .rev()
        .map(|d| d.event_type)
        .collect();
    // (tenant.created came before the endpoint existed.)
    assert_eq!(types, ["quota.low", "quota.exhausted"]);
    let v = audit::verify(&view, None).expect("verify");
    assert!(v.broken.is_none(), "{v:?}");
    assert_eq!(v.chains, 2, "acme and the cluster chain (global webhook)");
}

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
    let (_dir, sm) = open();
    run(
        &sm,
        admin(Command::CreateTenant {
            tenant: tenant("acme", "pro", 1_000),
        }),
    );
    run(
        &sm,
        admin(Command::CreateWebhook {
            webhook: WebhookRecord {
                webhook_id: "wh_acme".into(),
                tenant_id: "acme".into(),
                url: "http://127.0.0.1:9/hook".into(),
                secret: "whsec_acme".into(),
                source: "admin".into(),
                ..Default::default()
            },
        }),
    );
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

/// Values a worker or an operator sends must not make `apply` panic: it
/// runs on every replica, so one overflow would stop them all at once.
#[test]
fn huge_usage_and_quotas_saturate_instead_of_stopping_every_replica() {
    let (_dir, sm) = open();
    run(
        &sm,
        admin(Command::CreateTenant {
            tenant: tenant("acme", "enterprise", u64::MAX),
        }),
    );
    assert_eq!(bursts::extra_tokens(u64::MAX, 100), u64::MAX);
    let huge = |id: &str| UsageRecord {
        prompt_tokens: u64::MAX,
        duration_ms: u64::MAX,
        user_id: "alice".into(),
        gateway_id: "gw-1".into(),
        ..usage(id, "acme", u64::MAX)
    };
    run(
        &sm,
        Command::ApplyUsage {
            events: vec![huge("e1"), huge("e2")],
            now_ms: NOW,
        },
    );
    let l = sm
        .view()
        .expect("view")
        .ledger_day("acme", "2026-11-26")
        .expect("day")
        .expect("day");
    assert_eq!(
        (l.used, l.prompt_tokens, l.total_latency_ms, l.requests),
        (u64::MAX, u64::MAX, u64::MAX, 2)
    );
    let view = sm.view().expect("view");
    let users = view
        .users("acme", &["2026-11-26".to_owned()])
        .expect("users");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].1.tokens, u64::MAX);
}

/// The figures of `day` in the ledger: (used, outstanding over every gateway).
fn figures(sm: &StateMachine, day: &str) -> (u64, u64) {
    let used = sm
        .view()
        .expect("view")
        .ledger_day("acme", day)
        .expect("day")
        .map_or(0, |l| l.used);
    let (outstanding, _) = with_tables(sm, |t| outstanding(t, "acme", day)).expect("outstanding");
    (used, outstanding)
}

/// Q1 across Reclaim: a gateway that died holding an allowance may still
/// have requests whose usage arrives later (a worker's spool, a NATS
/// outage); its tokens stay outstanding until the day ends, so no other
/// gateway is granted them meanwhile.
#[test]
fn usage_arriving_after_reclaim_still_fits_the_quota() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "pro", 1_000),
        },
    );
    let granted = |r: Reply| match r {
        Reply::Allowance(a) => a,
        other => panic!("not an allowance: {other:?}"),
    };
    let dead = granted(run(&sm, grant_command("gw-1", 600, NOW, "g1")));
    assert_eq!(dead.granted_tokens, 600);
    let later = NOW + 30_000 + ledger::RECLAIM_GRACE_MS + 1;
    assert!(sm.view().expect("view").reclaimable(later).expect("count") > 0);
    run(&sm, Command::Reclaim { now_ms: later });
    let alive = granted(run(&sm, grant_command("gw-2", 1_000, later, "g2")));
    // The dead gateway's request, admitted before it died, reports late.
    let late = UsageRecord {
        gateway_id: "gw-1".into(),
        quota_day: "2026-11-26".into(),
        finished_at_ms: later,
        ..usage("late", "acme", 500)
    };
    let spent = UsageRecord {
        gateway_id: "gw-2".into(),
        quota_day: "2026-11-26".into(),
        finished_at_ms: later,
        ..usage("spent", "acme", alive.granted_tokens)
    };
    run(
        &sm,
        Command::ApplyUsage {
            events: vec![late, spent],
            now_ms: later,
        },
    );
    let (used, outstanding) = figures(&sm, "2026-11-26");
    assert_eq!(used, 500 + alive.granted_tokens, "Q2: every event once");
    assert!(
        used + outstanding <= 1_000,
        "Q1: used {used} + outstanding {outstanding} over the quota of 1000"
    );
    // The dead gateway's slot came back at once; its tokens go at midnight.
    assert_eq!(alive.allowance.slots, 1);
    assert!(
        sm.view()
            .expect("view")
            .reclaimable(later + 1)
            .expect("count")
            == 0
    );
    assert!(
        sm.view()
            .expect("view")
            .reclaimable(NOW + DAY_MS)
            .expect("count")
            > 0
    );
}

/// Q1 across UTC midnight: a request admitted at 23:59:59 under day 1's
/// allowance that finishes after midnight is charged to day 1, not to
/// day 2, whose quota the gateway has meanwhile taken in full.
#[test]
fn a_request_admitted_before_midnight_is_charged_to_its_day() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "pro", 1_000),
        },
    );
    let midnight = NOW + DAY_MS / 2;
    let before = midnight - 1_000;
    let after = midnight + 1_000;
    let day1 = match run(&sm, grant_command("gw-1", 1_000, before, "g1")) {
        Reply::Allowance(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (day1.day.as_str(), day1.granted_tokens),
        ("2026-11-26", 1_000)
    );
    let day2 = match run(&sm, grant_command("gw-1", 1_000, after, "g2")) {
        Reply::Allowance(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (day2.day.as_str(), day2.granted_tokens),
        ("2026-11-27", 1_000)
    );
    let spanning = UsageRecord {
        gateway_id: "gw-1".into(),
        quota_day: "2026-11-26".into(),
        finished_at_ms: after + 5_000,
        ..usage("spanning", "acme", 700)
    };
    let new_day = UsageRecord {
        gateway_id: "gw-1".into(),
        quota_day: "2026-11-27".into(),
        finished_at_ms: after + 6_000,
        ..usage("new-day", "acme", 1_000)
    };
    run(
        &sm,
        Command::ApplyUsage {
            events: vec![spanning, new_day],
            now_ms: after + 6_000,
        },
    );
    let (used1, _) = figures(&sm, "2026-11-26");
    let (used2, outstanding2) = figures(&sm, "2026-11-27");
    assert_eq!(used1, 700, "charged to the day it was admitted on");
    assert!(
        used2 + outstanding2 <= 1_000,
        "Q1 on day 2: {used2} + {outstanding2}"
    );
    assert_eq!(used2, 1_000);
}

fn grant_command(gateway: &str, tokens: u64, now_ms: i64, op: &str) -> Command {
    Command::Grant {
        tenant_id: "acme".into(),
        gateway_id: gateway.into(),
        tokens,
        slots: 1,
        ttl_ms: 30_000,
        now_ms,
        op_id: op.into(),
    }
}

/// Retention: prompt counts and per-user rows go with the plan's retention
/// days; event ids past the dedup horizon are forgotten, by day, and an
/// event that old is not counted again (Q1 before Q2).
#[test]
fn old_rows_and_event_ids_are_pruned_and_a_stale_repeat_is_not_counted() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "basic", 1_000_000),
        },
    );
    let asked = |id: &str, at: i64| UsageRecord {
        user_id: "alice".into(),
        prompt_preview: "hello".into(),
        finished_at_ms: at,
        ..usage(id, "acme", 10)
    };
    run(
        &sm,
        Command::ApplyUsage {
            events: vec![asked("old", NOW), asked("new", NOW + 31 * DAY_MS)],
            now_ms: NOW + 31 * DAY_MS,
        },
    );
    let count = |table: &str| {
        with_tables(&sm, |t| Ok(t.scan::<serde_json::Value>(table, "")?.len())).expect("scan")
    };
    assert_eq!(
        (count(PROMPTS), count(USERS), count(EVENTS)),
        (1, 1, 1),
        "the old event is stale already"
    );
    run(
        &sm,
        Command::ApplyUsage {
            events: vec![asked("old2", NOW + DAY_MS)],
            now_ms: NOW + DAY_MS,
        },
    );
    assert_eq!((count(PROMPTS), count(USERS), count(EVENTS)), (2, 2, 2));
    // 31 days on: basic keeps 30 days of rows; ids go after 8 days.
    run(
        &sm,
        Command::PruneTurns {
            now_ms: NOW + 32 * DAY_MS,
        },
    );
    assert_eq!(
        (count(PROMPTS), count(USERS)),
        (1, 1),
        "day 1 is past retention"
    );
    assert_eq!(count(EVENTS), 1, "only the recent event id is kept");
    assert_eq!(count(EVENT_DAYS), 1);
    // The forgotten event comes again (a spool replayed late): not counted.
    let before = sm
        .view()
        .expect("view")
        .ledger_day("acme", "2026-11-27")
        .expect("day")
        .map_or(0, |l| l.used);
    let reply = run(
        &sm,
        Command::ApplyUsage {
            events: vec![asked("old2", NOW + DAY_MS)],
            now_ms: NOW + 32 * DAY_MS,
        },
    );
    assert_eq!(
        reply,
        Reply::UsageApplied {
            applied: 0,
            duplicates: 1
        }
    );
    let after = sm
        .view()
        .expect("view")
        .ledger_day("acme", "2026-11-27")
        .expect("day")
        .map_or(0, |l| l.used);
    assert_eq!(before, after);
}

#[test]
fn old_audit_records_are_archived_and_the_chain_still_verifies() {
    let (dir, sm) = open();
    let at = |days_ago: i64, command: Command| Command::Audited {
        actor: "admin".into(),
        now_ms: NOW - days_ago * DAY_MS,
        command: Box::new(command),
    };
    let rename = |name: &str| Command::UpdateTenant {
        id: "acme".into(),
        patch: Box::new(TenantPatch {
            display_name: Some(name.into()),
            ..Default::default()
        }),
    };
    run(
        &sm,
        at(
            500,
            Command::CreateTenant {
                tenant: tenant("acme", "basic", 1_000),
            },
        ),
    );
    for (n, days_ago) in [400, 380, 10, 1].into_iter().enumerate() {
        run(&sm, at(days_ago, rename(&format!("ACME {n}"))));
    }
    let before = audit::records(&sm.view().expect("view"), "acme").expect("records");
    assert_eq!(before.len(), 5);

    let archives = dir.path().join("archives/audit");
    let cutoff = NOW - 365 * DAY_MS;
    let runs =
        audit::archive_older_than(&sm.view().expect("view"), &archives, cutoff).expect("archive");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run_ = runs[0].clone();
    assert_eq!(
        (run_.chain.as_str(), run_.through_seq, run_.records),
        ("acme", 3, 3)
    );

    // A run that does not match what the database holds changes nothing.
    let forged = audit::ArchivedRun {
        through_hash: "0".repeat(64),
        ..run_.clone()
    };
    let reply = run(
        &sm,
        Command::PruneAudit {
            run: forged,
            now_ms: NOW,
        },
    );
    assert!(
        matches!(reply, Reply::Rejected(Rejection::Conflict(_))),
        "{reply:?}"
    );
    assert_eq!(
        audit::records(&sm.view().expect("view"), "acme").expect("records"),
        before
    );

    let reply = run(
        &sm,
        Command::PruneAudit {
            run: run_.clone(),
            now_ms: NOW,
        },
    );
    assert!(matches!(reply, Reply::Reclaimed(3)), "{reply:?}");
    // Applied again (a replayed entry), it prunes nothing more.
    let again = run(
        &sm,
        Command::PruneAudit {
            run: run_.clone(),
            now_ms: NOW,
        },
    );
    assert!(matches!(again, Reply::Reclaimed(0)), "{again:?}");

    let view = sm.view().expect("view");
    let kept = audit::records(&view, "acme").expect("records");
    let actions: Vec<&str> = kept.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["tenant.updated", "tenant.updated", "audit.archived"]
    );
    assert_eq!(kept[0].seq, 4);
    let v = audit::verify(&view, Some("acme")).expect("verify");
    assert!(v.broken.is_none(), "{v:?}");

    // The archive holds the pruned records, and ends at the hash the kept
    // chain continues from.
    let archive = std::path::Path::new(&run_.archive);
    let summary = audit::verify_archive(archive)
        .expect("read")
        .expect("verifies");
    assert_eq!((summary.first_seq, summary.last_seq), (1, 3));
    assert_eq!(summary.prev_hash, "");
    assert_eq!(summary.last_hash, kept[0].prev_hash);
    assert_eq!(
        audit::archive_older_than(&view, &archives, cutoff).expect("archive"),
        [],
        "nothing more to archive"
    );

    // An edited archive does not verify.
    let text = std::fs::read_to_string(archive).expect("read");
    std::fs::write(archive, text.replacen("ACME 0", "ACME X", 1)).expect("write");
    let broken = audit::verify_archive(archive).expect("read");
    assert!(broken.is_err_and(|e| e.contains("edited")));
}
