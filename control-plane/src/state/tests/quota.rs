//! The quota ledger: grants, usage, Reclaim and the day boundary keep Q1
//! exact, and the quota events fire once a day.

use super::*;

#[test]
fn quota_low_and_exhausted_fire_once_a_day_and_the_audit_chain_holds() {
    let (_dir, sm) = acme_with_webhook("wh_1", "", "whsec_x");
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
