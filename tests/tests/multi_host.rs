//! The fleet across hosts. Each host is its own network namespace on a
//! private network (`bulkhead_tests::lan`): three control-plane nodes, NATS,
//! two gateways, two workers and the client, which is this test itself, run
//! again inside the `client` namespace. All traffic is TLS (mTLS between
//! the roles, HTTPS to the gateways, TLS to NATS) with certificates of the
//! network's own CA, and every process uses its role's own credential. The test shows, with Q1 (never more than the quota) and Q2
//! (every answer billed once, nothing else) checked after each fault:
//!
//! - chat with a session through both gateways, the follow-up served from
//!   the KV slot on the worker host that holds the session (`cached_tokens`);
//! - the leader's host cut off: another node leads and answers go on;
//! - a gateway partitioned from the control plane: it spends the allowance
//!   it holds, then answers 503, then serves again once the partition heals;
//! - a worker host cut off mid-stream: a clean stream error, the session's
//!   next turn served by the other worker, and nothing billed for the
//!   broken answer (the host never comes back).
//!
//! Where network namespaces are unavailable (not root, no iproute2) it says
//! so and passes without running.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_tests::lan::Lan;
use bulkhead_tests::load::Load;
use bulkhead_tests::system::{Answer, Api, Cluster, MODEL, eventually};
use serde_json::json;

const TEST: &str = "a_fleet_across_hosts_survives_cuts_and_partitions";
const HOSTS: [&str; 9] = [
    "cp1", "cp2", "cp3", "nats", "gw1", "gw2", "wk1", "wk2", "client",
];
const TENANT: &str = "fleet";
const QUOTA: u64 = 400_000;

#[test]
fn a_fleet_across_hosts_survives_cuts_and_partitions() {
    if let Some(lan) = Lan::from_env() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(across_hosts(Arc::new(lan)));
        return;
    }
    let lan = match Lan::create(&HOSTS) {
        Ok(lan) => lan,
        Err(why) => {
            println!("SKIPPED: the multi-host test needs network namespaces: {why}");
            return;
        }
    };
    // Built here, not by each host.
    bulkhead_tests::bulkhead_bin().unwrap();
    lan.run_inside("client", TEST).unwrap();
}

async fn across_hosts(lan: Arc<Lan>) {
    lan.use_tls_as("client").unwrap();
    let mut cluster = Cluster::builder()
        .control_nodes(3)
        .workers(2)
        .gateways(2)
        .on(Arc::clone(&lan))
        .start()
        .await
        .unwrap();
    let key = cluster.tenant_with_quota(TENANT, QUOTA, 16).await.unwrap();
    let (gw1, gw2) = (cluster.apis[0].clone(), cluster.apis[1].clone());
    // The gateways speak HTTPS only: plain HTTP gets no answer.
    let plain = reqwest::get(format!("http://{}:18789/health", lan.host("gw1").ip)).await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
    // Tokens clients were answered with: what the ledger must hold (Q2).
    let mut told = 0;

    // 1. A session through both gateways: the follow-up reaches the worker
    // host that holds the session's KV slot.
    let session = new_session(&gw1, &key).await;
    let first = in_session(&gw1, &key, &session, "My name is Ada. Say hello.", 8).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let follow = in_session(&gw2, &key, &session, "What is my name?", 8).await;
    assert_eq!(follow.status, 200, "{:?}", follow.body);
    let first_prompt = first.usage.as_ref().unwrap()["prompt_tokens"]
        .as_u64()
        .unwrap();
    let cached = follow.usage.as_ref().unwrap()["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first_prompt,
        "the follow-up through the other gateway reused {cached} tokens of the session's slot, not its first {first_prompt}"
    );
    told += first.total_tokens() + follow.total_tokens();
    println!(
        "hosts: a session's follow-up through gw2 reused {cached} cached tokens on {}",
        worker_host(&cluster, &session).await
    );
    cluster.ledger_reaches(TENANT, told).await;

    // 2. The leader's host cut off under load.
    let leader = cluster
        .control
        .leader(Duration::from_secs(10))
        .await
        .unwrap();
    let leader_host = format!("cp{}", leader + 1);
    let load = Load::start(&cluster.apis, &key, 4);
    load.grows(4, "before the leader's host is cut").await;
    lan.cut(&leader_host).unwrap();
    let cut_at = Instant::now();
    let new_leader = eventually("another node to lead", Duration::from_secs(30), || {
        let control = &cluster.control;
        async move {
            for i in (0..3).filter(|i| *i != leader) {
                let status = tokio::time::timeout(Duration::from_secs(1), control.status(i)).await;
                if let Ok(Ok(s)) = status
                    && s.state == "leader"
                {
                    return Some(i);
                }
            }
            None
        }
    })
    .await
    .unwrap();
    let elected = cut_at.elapsed();
    load.grows(4, "after the leader's host was cut").await;
    lan.heal(&leader_host).unwrap();
    let seen = load.stop().await;
    let (answered, errors) = (seen.answered_after(cut_at), seen.errors());
    told += seen.tokens();
    println!(
        "hosts: {leader_host} cut off; node {} led after {elected:.1?}; {answered} answers after the cut, {errors} clean errors",
        new_leader + 1
    );
    let used = cluster.ledger_reaches(TENANT, told).await;
    assert!(used <= QUOTA, "Q1: {used} used of {QUOTA}");

    // 3. A gateway partitioned from the control plane: it spends what it
    // holds, then answers 503, then serves again once healed.
    let warm = gw1.ask(&key, "Say hi.", 4).await.unwrap();
    assert_eq!(warm.status, 200, "{:?}", warm.body);
    told += warm.total_tokens();
    let control_plane = lan.ips("cp");
    lan.partition("gw1", &control_plane).unwrap();
    let parted = Instant::now();
    let (mut served, mut refused) = (0, None);
    while refused.is_none() {
        assert!(
            parted.elapsed() < Duration::from_secs(120),
            "gw1 never refused while cut off from the control plane"
        );
        let a = gw1.ask(&key, "Say hi.", 4).await.unwrap();
        match a.status {
            200 => {
                served += 1;
                told += a.total_tokens();
            }
            503 => refused = Some((parted.elapsed(), a.body["error"].to_string())),
            other => panic!("gw1 answered {other} while partitioned: {:?}", a.body),
        }
    }
    let (after, code) = refused.unwrap();
    lan.mend("gw1", &control_plane).unwrap();
    let back = gw1
        .until_answered(&key, "gw1 to serve again", Duration::from_secs(60))
        .await
        .unwrap();
    told += back.total_tokens();
    println!(
        "hosts: gw1 partitioned from the control plane served {served} answers from its allowance, then 503 {code} after {after:.1?}; healed, it serves again"
    );
    assert!(served > 0, "gw1 spent nothing of the allowance it held");
    cluster.ledger_reaches(TENANT, told).await;

    // 4. A worker host cut off mid-stream, for good.
    let session = new_session(&gw2, &key).await;
    let placed = in_session(&gw2, &key, &session, "Hello.", 4).await;
    assert_eq!(placed.status, 200, "{:?}", placed.body);
    told += placed.total_tokens();
    cluster.ledger_reaches(TENANT, told).await;
    let host = worker_host(&cluster, &session).await;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let streaming = {
        let (api, key, session) = (gw2.clone(), key.clone(), session.clone());
        tokio::spawn(async move {
            let req = api.post("/v1/chat/completions", &key).json(&json!({
                "model": MODEL, "stream": true, "max_tokens": 600, "temperature": 0,
                "ignore_eos": true, "session_id": session,
                "messages": [{"role": "user", "content": "Tell a very long story."}],
            }));
            api.send_telling(req, Some(first_tx)).await.unwrap()
        })
    };
    tokio::time::timeout(Duration::from_secs(60), first_rx)
        .await
        .unwrap()
        .unwrap();
    lan.cut(&host).unwrap();
    let cut_at = Instant::now();
    let broken = tokio::time::timeout(Duration::from_secs(60), streaming)
        .await
        .expect("the stream from the cut-off worker never ended")
        .unwrap();
    let noticed = cut_at.elapsed();
    assert_eq!(broken.status, 200, "the stream had started");
    assert!(
        broken.stream_error.is_some() && broken.usage.is_none(),
        "a clean stream error, no usage: {:?}",
        broken.stream_error
    );
    // The host is lost: its worker never delivers what it spooled.
    let lost: usize = host.trim_start_matches("wk").parse().unwrap();
    cluster.workers[lost - 1].kill();
    let rerouted = eventually(
        "the session's next turn on the other worker",
        Duration::from_secs(60),
        || {
            let (gw2, key, session) = (gw2.clone(), key.clone(), session.clone());
            async move {
                let a = in_session(&gw2, &key, &session, "Go on.", 4).await;
                (a.status == 200).then_some(a)
            }
        },
    )
    .await
    .unwrap();
    told += rerouted.total_tokens();
    println!(
        "hosts: {host} cut off mid-stream; the client saw a clean error {noticed:.1?} later; the session went on elsewhere"
    );
    // Q2: nothing of the broken answer is billed; Q1 holds.
    let used = cluster.ledger_reaches(TENANT, told).await;
    assert!(used <= QUOTA, "Q1: {used} used of {QUOTA}");
}

async fn new_session(api: &Api, key: &str) -> String {
    let a = api
        .send(
            api.post("/v1/sessions", key)
                .json(&json!({"title": "hosts"})),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

async fn in_session(api: &Api, key: &str, session: &str, text: &str, max_tokens: u32) -> Answer {
    api.chat(
        key,
        json!({
            "model": MODEL, "session_id": session, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text}],
        }),
    )
    .await
    .unwrap()
}

/// The host of the worker a session's requests go to.
async fn worker_host(cluster: &Cluster, session: &str) -> String {
    format!(
        "wk{}",
        cluster.routed_to(TENANT, session).await.unwrap() + 1
    )
}
