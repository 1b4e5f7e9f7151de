//! Sessions and turns as the state applies them.

use super::*;

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
        owner: String::new(),
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
fn a_caller_limited_to_one_user_cannot_append_to_or_delete_another_users_session() {
    let (_dir, sm) = open();
    run(
        &sm,
        Command::CreateTenant {
            tenant: tenant("acme", "basic", 1_000),
        },
    );
    let append = |owner: &str, text: &str| Command::AppendTurns {
        tenant_id: "acme".into(),
        session_id: "s1".into(),
        user_id: owner.into(),
        owner: owner.into(),
        turns: vec![("user".into(), text.into())],
        now_ms: NOW,
    };
    // A new session is its creator's.
    let reply = run(&sm, append("alice", "mine"));
    assert!(
        matches!(&reply, Reply::Session(s) if s.user_id == "alice"),
        "{reply:?}"
    );
    assert_eq!(
        run(&sm, append("bob", "not mine")),
        Reply::Rejected(Rejection::UnknownSession("s1".into()))
    );
    let delete = |owner: &str| Command::DeleteSession {
        tenant_id: "acme".into(),
        session_id: "s1".into(),
        owner: owner.into(),
    };
    assert_eq!(
        run(&sm, delete("bob")),
        Reply::Rejected(Rejection::UnknownSession("s1".into()))
    );
    // Nothing of bob's reached alice's session; a caller not limited to one
    // user (a tenant-wide key) may still delete it.
    let view = sm.view().expect("view");
    let acme = TenantId::new("acme").expect("id");
    let turns = crate::sessions::TenantView::new(&view, &acme)
        .turns("s1", 0)
        .expect("turns");
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].content, "mine");
    drop(view);
    assert!(matches!(run(&sm, delete("")), Reply::Session(_)));
}
