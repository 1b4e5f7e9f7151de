//! The allowance arithmetic and admission of `quota`.

use super::*;

#[tokio::test]
async fn a_queue_behind_a_failing_grant_fails_closed_as_fast_as_its_head() {
    // Nothing listens there: every grant fails after its deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let client = ControlPlaneClient::new(vec![format!("127.0.0.1:{port}")], None);
    let quotas = Arc::new(Quotas::new(
        GatewayId::new("gw-test").expect("an id"),
        Arc::new(client),
        Arc::new(Metrics::new()),
    ));
    let tenant = pb::Tenant {
        id: "acme".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let (quotas, tenant) = (Arc::clone(&quotas), tenant.clone());
            tokio::spawn(async move { quotas.admit(&tenant, 10).await.map(|_| ()) })
        })
        .collect();
    for w in waiting {
        let refused = w.await.expect("the task ran").expect_err("no allowance");
        assert_eq!(refused.status().as_u16(), 503, "{refused}");
    }
    // One grant's deadline (3 s) and some slack, not five of them.
    let took = started.elapsed();
    assert!(took < GRANT_DEADLINE * 2, "the fifth waited {took:?}");
}

/// Q1 across a lease lapse while usage lags: the control plane still
/// counts tokens this gateway settled (their events are on their way),
/// and taking its figure as it is would spend them twice.
#[test]
fn a_lapsed_allowance_is_taken_up_without_the_usage_still_in_transit() {
    let quotas = Quotas::new(
        GatewayId::new("gw-test").expect("an id"),
        Arc::new(ControlPlaneClient::new(Vec::new(), None)),
        Arc::new(Metrics::new()),
    );
    let quota = quotas.tenant("acme");
    let now = crate::now_ms();
    let grant = |tokens: u64, applied: u64, expires_at_ms: i64| pb::Allowance {
        tokens,
        slots: 1,
        expires_at_ms,
        day: "2026-11-26".into(),
        quota: 1_000,
        resets_at_ms: now + 3_600_000,
        granted_tokens: tokens,
        applied_tokens: applied,
        ..Default::default()
    };
    quotas.absorb("acme", &quota, &grant(1_000, 0, now + 30_000));
    let permit = quotas.try_reserve("acme", &quota, 600).expect("admitted");
    assert_eq!(permit.day(), "2026-11-26");
    permit.settle(600);
    assert_eq!(quota.lock().available(), 400);
    // The lease lapses; NATS is slow, so the ledger has applied none of
    // the 600 and the control plane still says this gateway holds 1000.
    quota.lock().expires_at_ms = now - 1;
    quotas.absorb("acme", &quota, &grant(1_000, 0, now + 30_000));
    assert_eq!(
        quota.lock().available(),
        400,
        "the 600 tokens in transit must not be spent again"
    );
    // Once the ledger applied them, the figures agree.
    quota.lock().expires_at_ms = now - 1;
    quotas.absorb("acme", &quota, &grant(400, 600, now + 30_000));
    assert_eq!(quota.lock().available(), 400);
}

#[test]
fn headroom_follows_demand_but_never_much_of_a_small_quota() {
    let mut held = Held::default();
    // Before any demand is measured: four requests' worth.
    assert_eq!(held.headroom(u64::MAX / 4, 100), 400);
    let t0 = Instant::now();
    for i in 0..=100u64 {
        held.note_demand(100, t0 + Duration::from_millis(10 * i));
    }
    // 101 reservations of 100 tokens in one second.
    assert_eq!(held.demand, 10_100);
    assert_eq!(held.headroom(u64::MAX / 4, 100), 10_100 * HEADROOM_SECS);
    // A small quota caps it at a twentieth.
    assert_eq!(held.headroom(10_000, 100), 500);
}
