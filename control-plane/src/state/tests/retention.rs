//! What the state lets go of: turns, prompt counts, per-user rows and
//! event ids past their keeping, and audit records past retention (archived).

use super::*;

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
                owner: String::new(),
                turns: vec![("user".into(), "hello".into())],
                now_ms: NOW - 2 * DAY_MS,
            },
        );
    }
    run(
        &sm,
        Command::PruneTurns {
            now_ms: NOW,
            limit: 0,
        },
    );
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
            limit: 0,
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

/// One prune entry drops at most its limit of turns, sessions and event
/// ids, whatever is due: the leader's entries stay small and a replica's
/// memory bounded; repeated, they drop everything due, and only that.
#[test]
fn a_prune_drops_at_most_its_limit_and_repeated_drops_all_that_is_due() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "basic", u64::MAX / 4),
        },
    );
    let append = |session: &str, now_ms: i64| Command::AppendTurns {
        tenant_id: "acme".into(),
        session_id: session.into(),
        user_id: String::new(),
        owner: String::new(),
        turns: vec![
            ("user".into(), "hello".into()),
            ("assistant".into(), "hi".into()),
        ],
        now_ms,
    };
    for s in 0..10 {
        run(&sm, append(&format!("old-{s}"), NOW - 40 * DAY_MS));
    }
    run(&sm, append("recent", NOW));
    let events = (0..25)
        .map(|i| UsageRecord {
            finished_at_ms: NOW - 9 * DAY_MS,
            ..usage(&format!("e{i}"), "acme", 1)
        })
        .collect();
    run(
        &sm,
        Command::ApplyUsage {
            events,
            now_ms: NOW - 9 * DAY_MS,
        },
    );
    let count = |table: &str| {
        with_tables(&sm, |t| Ok(t.scan::<serde_json::Value>(table, "")?.len())).expect("scan")
    };
    let turns_table = crate::sessions::turns_table(&TenantId::new("acme").expect("id"));
    let due = 10 * 2 + 10 + 25;
    let mut dropped = Vec::new();
    loop {
        let reply = run(
            &sm,
            Command::PruneTurns {
                now_ms: NOW,
                limit: 7,
            },
        );
        let Reply::Reclaimed(n) = reply else {
            panic!("{reply:?}")
        };
        assert!(n <= 7, "one entry dropped {n}, over its limit of 7");
        dropped.push(n);
        if n < 7 {
            break;
        }
    }
    assert_eq!(dropped.iter().sum::<u32>(), due, "{dropped:?}");
    assert_eq!(count(&turns_table), 2, "the recent session's turns stay");
    assert_eq!((count(EVENTS), count(EVENT_DAYS)), (0, 0));
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
