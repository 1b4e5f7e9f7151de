//! Randomized: three simulated gateways take, spend and return allowances of
//! two tenants against a three-node control plane, while usage events arrive
//! over a real NATS JetStream with duplicates and redeliveries, and the
//! leader is SIGKILLed in the middle. Afterwards, for every tenant:
//! Q1 `used <= quota` (and `used + outstanding <= quota`), Q2 `used` equals
//! the sum of the distinct events, and the slots held never exceeded
//! `max_concurrent` (Q3). The seed is printed; `BULKHEAD_TEST_SEED` replays it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulkhead_client::client::{Api, Service};
use bulkhead_proto::control as pb;
use bulkhead_proto::worker::UsageEvent;
use bulkhead_tests::cluster::ControlPlanes;
use bulkhead_tests::nats::Nats;
use bulkhead_tests::system::used_lately;
use prost::Message;
use tokio::sync::Mutex;

const TENANTS: [(&str, u64, u32); 2] = [("alpha", 12_000, 2), ("beta", 20_000, 3)];
const GATEWAYS: usize = 3;
const STEPS: usize = 70;

/// xorshift64*: small, seedable, good enough to shuffle test actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Retries a call whose transport broke mid-flight; safe because every call
/// here carries an op id or an event id.
async fn retrying<S, T, F, Fut>(api: Api<'_, S>, f: F) -> T
where
    S: Service,
    F: Fn(S) -> Fut + Clone,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match api.call(f.clone()).await {
            Ok(v) => return v,
            Err(s)
                if Instant::now() < deadline
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                            | tonic::Code::DeadlineExceeded
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("control plane call failed: {s}"),
        }
    }
}

#[derive(Default)]
struct Truth {
    /// Distinct events per tenant: id -> tokens.
    events: BTreeMap<String, BTreeMap<String, u64>>,
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_exactly_through_duplicates_and_a_leader_kill() -> anyhow::Result<()> {
    let seed = std::env::var("BULKHEAD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("seed: {seed} (BULKHEAD_TEST_SEED={seed} replays it)");

    let store = tempfile::tempdir()?;
    let nats = Nats::start(store.path());
    let mut cp = ControlPlanes::start(3, &["--nats", &nats.url()])?;
    for (id, quota, conc) in TENANTS {
        cp.cli(&[
            "tenant",
            "create",
            id,
            "--daily-tokens",
            &quota.to_string(),
            "--max-concurrent",
            &conc.to_string(),
        ])?;
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await?;

    let truth = Arc::new(Mutex::new(Truth::default()));
    let slots_held: Arc<Vec<AtomicI64>> =
        Arc::new(TENANTS.iter().map(|_| AtomicI64::new(0)).collect());
    let progress = Arc::new(AtomicUsize::new(0));
    // The gateways' calls with a gateway credential, the workers' with a worker's.
    let client = Arc::new(cp.member_client().await?);
    let fleet = Arc::new(cp.fleet_client().await?);
    let mut gateways = Vec::new();
    for g in 0..GATEWAYS {
        let (truth, slots_held, progress, client, fleet, js) = (
            truth.clone(),
            slots_held.clone(),
            progress.clone(),
            client.clone(),
            fleet.clone(),
            js.clone(),
        );
        let mut rng = Rng(seed.wrapping_add((g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        gateways.push(tokio::spawn(async move {
            let gateway_id = format!("gw-{g}");
            let mut held = [0u64; TENANTS.len()];
            let mut slots = [0u32; TENANTS.len()];
            let mut day: [String; TENANTS.len()] = Default::default();
            for step in 0..STEPS {
                let t = rng.below(TENANTS.len() as u64) as usize;
                let (tenant, _, max_conc) = TENANTS[t];
                match rng.below(10) {
                    0..=3 => {
                        let want_slot = u32::from(slots[t] == 0);
                        let req = pb::GrantRequest {
                            tenant_id: tenant.into(),
                            gateway_id: gateway_id.clone(),
                            tokens: 500 + rng.below(2500),
                            slots: want_slot,
                            ttl_ms: 60_000,
                            op_id: format!("grant-{g}-{step}"),
                        };
                        let a = retrying(client.member(), |mut c| {
                            let r = client.request(req.clone());
                            async move { c.grant(r).await }
                        })
                        .await;
                        held[t] += a.granted_tokens;
                        slots[t] += a.granted_slots;
                        day[t] = a.day.clone();
                        let now = slots_held[t]
                            .fetch_add(i64::from(a.granted_slots), Ordering::SeqCst)
                            + i64::from(a.granted_slots);
                        assert!(
                            now <= i64::from(max_conc),
                            "Q3: {now} slots of {tenant} held"
                        );
                    }
                    4..=7 if held[t] > 0 => {
                        let total = 1 + rng.below(held[t].min(900));
                        let prompt = total / 2;
                        let event = UsageEvent {
                            event_id: uuid::Uuid::new_v4().to_string(),
                            request_id: format!("req-{g}-{step}"),
                            tenant_id: tenant.into(),
                            user_id: format!("user-{}", rng.below(3)),
                            gateway_id: gateway_id.clone(),
                            prompt_tokens: prompt as u32,
                            completion_tokens: (total - prompt) as u32,
                            duration_ms: 10 + rng.below(500),
                            finished_at_ms: chrono_now(),
                            // The day of the allowance it was reserved from,
                            // as a gateway sends it: a run across midnight
                            // charges each day its own.
                            quota_day: day[t].clone(),
                            ..Default::default()
                        };
                        held[t] -= total;
                        truth
                            .lock()
                            .await
                            .events
                            .entry(tenant.into())
                            .or_default()
                            .insert(event.event_id.clone(), total);
                        let payload = event.encode_to_vec();
                        let copies = 1 + rng.below(3);
                        for copy in 0..copies {
                            if rng.below(4) == 0 {
                                // Straight to the control plane (the in-process path), repeated.
                                let batch = pb::UsageBatch {
                                    events: vec![event.clone()],
                                };
                                retrying(fleet.fleet(), |mut c| {
                                    let r = fleet.request(batch.clone());
                                    async move { c.report_usage(r).await }
                                })
                                .await;
                            } else {
                                // Over JetStream; later copies skip Nats-Msg-Id so
                                // JetStream keeps them and the ledger must drop them.
                                let mut headers = async_nats::HeaderMap::new();
                                if copy == 0 {
                                    headers.insert("Nats-Msg-Id", event.event_id.as_str());
                                }
                                js.publish_with_headers(
                                    event.subject(),
                                    headers,
                                    payload.clone().into(),
                                )
                                .await
                                .expect("publish")
                                .await
                                .expect("publish ack");
                            }
                        }
                    }
                    _ => {
                        let tokens = rng.below(held[t] + 1);
                        let give_slot = u32::from(slots[t] > 0 && rng.below(2) == 0);
                        // Release locally first: never count a slot as free before the
                        // control plane has it back.
                        held[t] -= tokens;
                        slots[t] -= give_slot;
                        slots_held[t].fetch_sub(i64::from(give_slot), Ordering::SeqCst);
                        let req = pb::ReturnRequest {
                            tenant_id: tenant.into(),
                            gateway_id: gateway_id.clone(),
                            tokens,
                            slots: give_slot,
                            op_id: format!("return-{g}-{step}"),
                        };
                        retrying(client.member(), |mut c| {
                            let r = client.request(req.clone());
                            async move { c.r#return(r).await }
                        })
                        .await;
                    }
                }
                progress.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Kill the leader half-way, bring it back a little later.
    while progress.load(Ordering::SeqCst) < GATEWAYS * STEPS / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cp.leader(Duration::from_secs(10)).await?;
    cp.kill(leader);
    println!("killed leader node {}", cp.nodes[leader].id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.restart(leader)?;
    for g in gateways {
        g.await?;
    }

    // Every distinct event is counted once, none lost: wait for the consumer.
    let truth = truth.lock().await;
    let admin = cp.client();
    for (tenant, quota, _) in TENANTS {
        let expected: u64 = truth.events.get(tenant).map_or(0, |e| e.values().sum());
        let deadline = Instant::now() + Duration::from_secs(45);
        // Today and yesterday: a run across midnight splits over two days.
        let used_of = |r: &pb::UsageReport| -> u64 {
            r.days
                .iter()
                .map(|d| d.prompt_tokens + d.completion_tokens)
                .sum()
        };
        let report = loop {
            let report = retrying(admin.admin(), |mut c| {
                let r = admin.request(pb::UsageRequest {
                    tenant_id: tenant.into(),
                    days: 2,
                });
                async move { c.usage(r).await }
            })
            .await;
            if used_of(&report) >= expected || Instant::now() > deadline {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let used = used_of(&report);
        let requests: u64 = report.days.iter().map(|d| d.requests).sum();
        println!("{tenant}: used {used} of {quota} a day, {requests} events");
        assert_eq!(
            used, expected,
            "Q2: {tenant} counted every distinct event once"
        );
        assert_eq!(
            requests,
            truth.events.get(tenant).map_or(0, |e| e.len() as u64),
            "Q2: one request per distinct event"
        );
        for d in &report.days {
            let day_used = d.prompt_tokens + d.completion_tokens;
            assert!(
                day_used + d.outstanding <= quota,
                "Q1: {tenant} on {} used {day_used} + outstanding {} > quota {quota}",
                d.day,
                d.outstanding
            );
        }
        let distinct = truth.events.get(tenant).map_or(0, BTreeMap::len);
        assert_eq!(
            report.recent.len(),
            distinct.min(100),
            "the recent-request record is bounded"
        );
        assert!(
            report
                .recent
                .iter()
                .all(|r| truth.events[tenant].contains_key(&r.event_id)),
            "recent requests are this tenant's own"
        );
    }
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// NATS with credentials: the control plane consumes usage as a user of
/// the server (`nats://user:password@host`), and a client without them
/// cannot publish usage at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_a_nats_that_demands_credentials() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start_with_user(&dir.path().join("nats"), "bulkhead", "s3cret-usage");
    let cp = ControlPlanes::start(1, &["--nats", &nats.url_with_credentials()])?;
    cp.cli(&["tenant", "create", "acme", "--daily-tokens", "1000"])?;
    // A stranger who reaches the port is refused.
    let stranger = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(
        stranger.is_err(),
        "NATS let a client in without credentials"
    );
    // A worker with the credentials publishes; the ledger counts it once.
    let (options, url) = bulkhead_proto::usage::nats_options(&nats.url_with_credentials())
        .map_err(anyhow::Error::msg)?;
    let js = async_nats::jetstream::new(options.connect(url.as_str()).await?);
    counted_once(&cp, &js).await
}

/// NATS with an NKey user: the control plane signs in with the seed in
/// `BULKHEAD_NATS_NKEY_FILE`; a client without a key, or with another
/// key's seed, cannot connect, and one with the seed publishes usage that
/// the ledger counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_a_nats_that_demands_an_nkey() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.path().join("usage.nk");
    std::fs::write(&seed_file, user.seed()?)?;
    let nats = Nats::start_with_nkey(&dir.path().join("nats"), &user.public_key());
    let seed_path = seed_file.display().to_string();
    let cp = ControlPlanes::start_on(
        1,
        &["--nats", &nats.url()],
        None,
        &[(bulkhead_proto::usage::NATS_NKEY_FILE_ENV, &seed_path)],
    )?;
    cp.cli(&["tenant", "create", "acme", "--daily-tokens", "1000"])?;
    let other = nkeys::KeyPair::new_user().seed()?;
    for (who, stranger) in [
        ("no key", async_nats::ConnectOptions::new()),
        ("another key", async_nats::ConnectOptions::with_nkey(other)),
    ] {
        let connected = stranger
            .connection_timeout(Duration::from_secs(2))
            .connect(nats.url())
            .await;
        assert!(connected.is_err(), "NATS let a client in with {who}");
    }
    let js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_nkey(user.seed()?)
            .connect(nats.url())
            .await?,
    );
    counted_once(&cp, &js).await
}

/// Publishes one usage event of tenant `acme` (42 tokens) and waits until
/// the ledger holds exactly it.
async fn counted_once(
    cp: &ControlPlanes,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<()> {
    js.get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await?;
    let event = UsageEvent {
        event_id: "ev-auth-1".into(),
        tenant_id: "acme".into(),
        prompt_tokens: 30,
        completion_tokens: 12,
        finished_at_ms: chrono_now(),
        ..Default::default()
    };
    js.publish(event.subject(), event.encode_to_vec().into())
        .await?
        .await?;
    let admin = cp.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let used = used_lately(&admin, "acme").await?;
        if used == 42 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event never reached the ledger: {used}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
