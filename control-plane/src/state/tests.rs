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

/// A state with tenant `acme` (pro, 1,000 tokens a day) and one webhook an
/// admin made: `acme`'s own, or the operator's where `tenant_id` is empty.
fn acme_with_webhook(
    webhook_id: &str,
    tenant_id: &str,
    secret: &str,
) -> (tempfile::TempDir, StateMachine) {
    let (dir, sm) = open();
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
                webhook_id: webhook_id.into(),
                tenant_id: tenant_id.into(),
                url: "http://127.0.0.1:9/hook".into(),
                secret: secret.into(),
                source: "admin".into(),
                ..Default::default()
            },
        }),
    );
    (dir, sm)
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

mod quota;
mod retention;
mod sessions;
mod tenants;
