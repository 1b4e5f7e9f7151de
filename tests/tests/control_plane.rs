//! The control plane as three real processes: failover, catch-up by
//! snapshot, follower reads, admin auth and bad input.

use std::time::{Duration, Instant};

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_tests::cluster::ControlPlanes;
use bulkhead_tests::system::{eventually, usage_report};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// GET over plain HTTP/1.1; anything but 200 is an error.
/// `GET path` with `Authorization: Bearer token` (when given).
async fn http_get(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    anyhow::ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
    Ok(resp.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_comes_back_by_snapshot() -> anyhow::Result<()> {
    let mut cp = ControlPlanes::start(3, &["--snapshot-logs", "20"])?;
    cp.cli(&["tenant", "create", "acme", "--plan", "pro"])?;
    cp.cli(&["tenant", "create", "globex", "--daily-tokens", "5000"])?;
    let key = cp.cli(&["key", "create", "--tenant", "acme"])?;
    let key = key.lines().last().unwrap_or_default().to_owned();
    assert!(
        key.starts_with("bk_"),
        "key create prints the key last: {key}"
    );

    let old = cp.leader(Duration::from_secs(10)).await?;
    let old_status = cp.status(old).await?;
    cp.kill(old);
    let started = Instant::now();
    let new = cp.leader(Duration::from_secs(10)).await?;
    assert_ne!(new, old, "a new leader is elected");
    println!("new leader after {:?}", started.elapsed());

    // The same data, and writes continue.
    let list = cp.cli(&["tenant", "list"])?;
    assert!(list.contains("acme") && list.contains("globex"), "{list}");
    let show = cp.cli(&["tenant", "show", "globex"])?;
    assert!(show.contains("daily_tokens:       5000"), "{show}");
    for i in 0..30 {
        cp.cli(&["tenant", "create", &format!("t{i}")])?;
    }
    // The live nodes snapshot and purge past what the killed node has
    // (snapshots are built and the log purged in the background: more
    // writes until that happened).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut extra = 0;
    let leader_status = loop {
        let leader_status = cp.status(new).await?;
        if leader_status.purged_index > old_status.last_log_index {
            break leader_status;
        }
        assert!(
            Instant::now() < deadline,
            "the log the killed node lacks was never purged: {leader_status:?}"
        );
        cp.cli(&["tenant", "create", &format!("more{extra}")])?;
        extra += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    cp.restart(old)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cp.status(old).await;
        if let Ok(s) = &s
            && s.last_applied >= leader_status.last_applied
            && s.snapshot_index > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "node did not catch up: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted node serves the data itself (linearizable read there).
    let only_old = cp.nodes[old].addr.clone();
    let out = cp.cli_at(&only_old, &["tenant", "show", "t29"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cp.cli_at(&only_old, &["key", "list", "--tenant", "acme"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&key[..11]),
        "the key survived"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_leader_is_seen_by_a_read_on_a_follower() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(3, &[])?;
    let leader = cp.leader(Duration::from_secs(10)).await?;
    let follower = (leader + 1) % 3;
    let (leader_addr, follower_addr) = (
        cp.nodes[leader].addr.clone(),
        cp.nodes[follower].addr.clone(),
    );
    for i in 0..5 {
        let id = format!("tenant-{i}");
        let out = cp.cli_at(
            &leader_addr,
            &["tenant", "create", &id, "--daily-tokens", "1234"],
        )?;
        assert!(out.status.success(), "{}", stderr(&out));
        // Served by the follower (no leader in the address list).
        let out = cp.cli_at(&follower_addr, &["tenant", "show", &id])?;
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("1234"));
    }
    // A write sent to a follower is redirected to the leader.
    let out = cp.cli_at(&follower_addr, &["tenant", "create", "via-follower"])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // The gRPC port also serves Prometheus metrics and health over plain
    // HTTP/1.1. The metrics name every tenant: a scraper needs a metrics
    // credential (or the admin token); other credentials are refused.
    let refused = reqwest::get(format!("http://{leader_addr}/metrics")).await?;
    assert_eq!(refused.status(), 401);
    let refused = refused.text().await?;
    assert!(!refused.contains("tenant-0"), "{refused}");
    let gateway = cp.credential("gateway").await?;
    assert!(
        http_get(&leader_addr, "/metrics", Some(&gateway))
            .await
            .is_err()
    );
    let scraper = cp.credential("metrics").await?;
    assert!(scraper.starts_with("bkm_"), "{scraper}");
    let metrics = http_get(&leader_addr, "/metrics", Some(&scraper)).await?;
    for series in [
        "bulkhead_control_plane_raft_leader 1\n",
        "bulkhead_control_plane_tenant_quota_tokens{tenant=\"tenant-0\"} 1234\n",
        "bulkhead_control_plane_tenant_used_tokens{tenant=\"tenant-0\"} 0\n",
        "bulkhead_control_plane_tenant_outstanding_tokens{tenant=\"tenant-0\"} 0\n",
        "bulkhead_control_plane_tenant_slots_held{tenant=\"tenant-0\"} 0\n",
        "bulkhead_control_plane_grpc_requests_total{service=\"Admin\",method=\"CreateTenant\",code=\"Ok\"}",
        "bulkhead_control_plane_grpc_request_duration_seconds_count{service=\"Admin\",method=\"CreateTenant\"}",
        "bulkhead_control_plane_raft_last_applied_index ",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    let metrics = http_get(&follower_addr, "/metrics", Some(&cp.admin_token)).await?;
    assert!(
        metrics.contains("bulkhead_control_plane_raft_leader 0\n"),
        "{metrics}"
    );
    let health: serde_json::Value =
        serde_json::from_str(&http_get(&leader_addr, "/health", None).await?)?;
    assert_eq!(health["state"], "leader", "{health}");
    assert_eq!(health["node_id"], cp.nodes[leader].id, "{health}");
    let resp = reqwest::get(format!("http://{leader_addr}/nonexistent")).await?;
    assert_eq!(resp.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_serves_reads_and_leaves_and_a_clashing_address_is_refused()
-> anyhow::Result<()> {
    let mut cp = ControlPlanes::start(3, &[])?;
    cp.cli(&["tenant", "create", "acme", "--daily-tokens", "4321"])?;
    let founders = cp.addrs();
    let joining = cp.start_joining(4)?;
    let (new_addr, taken) = (cp.nodes[joining].addr.clone(), cp.nodes[0].addr.clone());
    let members = |out: &str| out.lines().filter(|l| l.starts_with("member:")).count();

    // Another node's address is refused, and the membership stays as it was.
    let out = cp.cli_at(
        &founders,
        &["cluster", "add-node", "--id", "4", "--addr", &taken],
    )?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("node 1 already has the address {taken}")),
        "{}",
        stderr(&out)
    );
    let status = cp.cli_at(&founders, &["cluster", "status"])?;
    assert_eq!(members(&String::from_utf8_lossy(&status.stdout)), 3);

    // Added at its own address, it becomes a voter, has the data written
    // before it joined, and serves reads by itself.
    let out = cp.cli_at(
        &founders,
        &["cluster", "add-node", "--id", "4", "--addr", &new_addr],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("member:      4 {new_addr} voter")),
        "{shown}"
    );
    eventually(
        "node 4 to see itself join",
        Duration::from_secs(20),
        || async {
            let s = cp.status(joining).await.ok()?;
            (s.nodes.len() == 4 && s.leader_id != 0).then_some(())
        },
    )
    .await?;
    let out = cp.cli_at(&new_addr, &["tenant", "show", "acme"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4321"));

    // Removed, it is no longer a member; a node that never was is named.
    let out = cp.cli_at(&founders, &["cluster", "remove-node", "--id", "4"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(members(&String::from_utf8_lossy(&out.stdout)), 3);
    let out = cp.cli_at(&founders, &["cluster", "remove-node", "--id", "9"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node 9 is not a member"),
        "{}",
        stderr(&out)
    );
    let out = cp.cli_at(&founders, &["tenant", "create", "after-leave"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_and_bad_input_changes_nothing() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(1, &[])?;
    let addr = cp.addrs();
    cp.cli(&["tenant", "create", "acme", "--plan", "pro"])?;

    // No token, a wrong token.
    let bin = bulkhead_tests::bulkhead_bin()?;
    let out = std::process::Command::new(&bin)
        .args(["tenant", "list", "--control-plane", &addr])
        .env_remove("BULKHEAD_ADMIN_TOKEN")
        .output()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("admin token is required"),
        "{}",
        stderr(&out)
    );
    let out = std::process::Command::new(&bin)
        .args([
            "tenant",
            "create",
            "evil",
            "--control-plane",
            &addr,
            "--admin-token",
            "bka_nope",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("admin token is wrong"),
        "{}",
        stderr(&out)
    );

    // Each bad request names what is wrong.
    let cases: &[(&[&str], &str)] = &[
        (&["tenant", "create", "acme"], "already exists"),
        (
            &["tenant", "create", "bad id"],
            "tenant id may contain only",
        ),
        (
            &["tenant", "create", "x", "--plan", "gold"],
            "unknown plan \"gold\"",
        ),
        (
            &["tenant", "create", "x", "--daily-tokens", "0"],
            "daily_tokens must be at least 1",
        ),
        (
            &[
                "tenant",
                "create",
                "x",
                "--daily-tokens",
                "10",
                "--max-request-tokens",
                "100",
            ],
            "max_request_tokens (100) cannot exceed daily_tokens (10)",
        ),
        (
            &["tenant", "create", "x", "--time-zone", "Mars/Base"],
            "unknown time zone",
        ),
        (
            &["tenant", "update", "acme", "--max-concurrent", "0"],
            "max_concurrent must be at least 1",
        ),
        (
            &["tenant", "update", "nobody", "--max-concurrent", "3"],
            "unknown tenant `nobody`",
        ),
        (&["tenant", "show", "nobody"], "unknown tenant `nobody`"),
        (&["tenant", "delete", "nobody"], "unknown tenant `nobody`"),
        (
            &["key", "create", "--tenant", "nobody"],
            "unknown tenant `nobody`",
        ),
        (&["key", "revoke", "key_nope"], "unknown key `key_nope`"),
        (&["usage", "--tenant", "nobody"], "unknown tenant `nobody`"),
    ];
    for (args, message) in cases {
        let out = cp.cli_at(&addr, args)?;
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr(&out).contains(message),
            "{args:?}: {} lacks {message:?}",
            stderr(&out)
        );
    }
    // Nothing changed: one tenant, with its plan's limits.
    let list = cp.cli(&["tenant", "list"])?;
    assert_eq!(list.lines().count(), 2, "{list}");
    let show = cp.cli(&["tenant", "show", "acme"])?;
    assert!(show.contains("max_concurrent:     8"), "{show}");

    // A malformed gRPC call gets a clear status, and nothing changes.
    let client = cp.client();
    let err = cp
        .member_client()
        .await?
        .member()
        .send(
            pb::GrantRequest {
                tenant_id: "acme".into(),
                gateway_id: "gw/1".into(),
                tokens: 10,
                slots: 1,
                ttl_ms: 1000,
                op_id: String::new(),
            },
            |mut c, req| async move { c.grant(req).await },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let report = usage_report(&client, "acme", 1).await?;
    assert_eq!(report.days[0].outstanding, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_tenants_keys_and_workers_in_order_and_resume() -> anyhow::Result<()> {
    use pb::watch_event::Change;
    let cp = ControlPlanes::start(3, &[])?;
    let leader = cp.leader(Duration::from_secs(10)).await?;
    // Watch through a follower: changes arrive there in commit order too.
    let gateway = bulkhead_proto::Credential::new(&cp.credential("gateway").await?)
        .map_err(anyhow::Error::msg)?;
    let follower = ControlPlaneClient::new(vec![cp.nodes[(leader + 1) % 3].addr.clone()], None)
        .with_credential(gateway);
    let client = cp.client();
    let member = cp.member_client().await?;
    let fleet = cp.fleet_client().await?;
    cp.cli(&["tenant", "create", "acme"])?;
    let mut stream = follower
        .member()
        .send(
            pb::WatchRequest { from_version: 0 },
            |mut c, req| async move { c.watch(req).await },
        )
        .await?;
    let reset = next(&mut stream).await;
    assert!(reset.reset, "a fresh watcher starts with a resync");
    let Some(Change::Tenant(t)) = next(&mut stream).await.change else {
        panic!("the resync carries the existing tenant");
    };
    assert_eq!(t.id, "acme");

    let key = cp.cli(&["key", "create", "--tenant", "acme"])?;
    let plaintext = key.lines().last().unwrap_or_default().to_owned();
    let event = next(&mut stream).await;
    let Some(Change::Key(k)) = event.change else {
        panic!("key created: {event:?}");
    };
    let key_id = k.key.clone().unwrap_or_default().key_id;
    assert_eq!(
        k.hash,
        bulkhead_control_plane::service::hash_secret(&plaintext),
        "watchers get the key's hash, never the key"
    );
    // A gateway resolves the key to its tenant; the use is recorded.
    let auth = |plaintext: String| {
        let member = &member;
        async move {
            member
                .member()
                .send(
                    pb::AuthenticateRequest {
                        plaintext: plaintext.clone(),
                    },
                    |mut c, req| async move { c.authenticate(req).await },
                )
                .await
        }
    };
    assert_eq!(auth(plaintext.clone()).await?.tenant_id, "acme");
    let keys = client
        .admin()
        .send(
            pb::TenantRef { id: "acme".into() },
            |mut c, req| async move { c.list_keys(req).await },
        )
        .await?;
    assert!(keys.keys[0].last_used_at_ms > 0, "last use recorded");
    let err = auth("bk_not_a_key".into()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    cp.cli(&["key", "revoke", &key_id])?;
    let err = auth(plaintext.clone()).await.unwrap_err();
    assert!(err.message().contains("revoked"), "{err}");
    let Some(Change::Key(k)) = next(&mut stream).await.change else {
        panic!("key revoked");
    };
    assert!(k.key.unwrap_or_default().revoked_at_ms > 0);

    let worker = pb::WorkerInfo {
        worker_id: "w1".into(),
        addr: "127.0.0.1:7200".into(),
        models: vec!["smollm2".into()],
        slots: 8,
        ..Default::default()
    };
    let registered = fleet
        .fleet()
        .send(
            pb::RegisterWorkerRequest {
                worker: Some(worker.clone()),
                lease_ms: 1_000,
            },
            |mut c, req| async move { c.register_worker(req).await },
        )
        .await?;
    assert!(registered.worker.is_some_and(|w| w.expires_at_ms > 0));
    let Some(Change::Worker(w)) = next(&mut stream).await.change else {
        panic!("worker registered");
    };
    assert_eq!(w.models, ["smollm2"]);
    // No renewal: the lease lapses and the worker leaves the set.
    let gone = next(&mut stream).await;
    let last_seen = gone.version;
    assert_eq!(gone.change, Some(Change::WorkerGone("w1".into())));

    // A watcher that reconnects from its last version gets only what followed.
    drop(stream);
    cp.cli(&["tenant", "create", "globex"])?;
    let mut stream = follower
        .member()
        .send(
            pb::WatchRequest {
                from_version: last_seen,
            },
            |mut c, req| async move { c.watch(req).await },
        )
        .await?;
    let event = next(&mut stream).await;
    assert!(!event.reset);
    let Some(Change::Tenant(t)) = event.change else {
        panic!("resumed with the next change: {event:?}");
    };
    assert_eq!(t.id, "globex");
    assert!(event.version > last_seen);
    Ok(())
}

async fn next(s: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a watch event within 10 s")
        .expect("watch stream ok")
        .expect("watch stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_within_their_tenant_and_go_with_it() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(1, &[])?;
    cp.cli(&["tenant", "create", "acme"])?;
    cp.cli(&["tenant", "create", "globex"])?;
    let client = cp.member_client().await?;
    let append = |tenant: &str, texts: &[(&str, &str)]| {
        let req = pb::AppendTurnsRequest {
            tenant_id: tenant.into(),
            session_id: "s1".into(),
            user_id: "u1".into(),
            turns: texts
                .iter()
                .map(|(role, content)| pb::Turn {
                    role: (*role).into(),
                    content: (*content).into(),
                    ..Default::default()
                })
                .collect(),
            owner: String::new(),
        };
        let client = &client;
        async move {
            client
                .member()
                .send(req.clone(), |mut c, req| async move {
                    c.append_turns(req).await
                })
                .await
        }
    };
    let turns = |tenant: &str, last: u32| {
        let req = pb::GetTurnsRequest {
            tenant_id: tenant.into(),
            session_id: "s1".into(),
            last,
            owner: String::new(),
        };
        let client = &client;
        async move {
            client
                .member()
                .send(
                    req.clone(),
                    |mut c, req| async move { c.get_turns(req).await },
                )
                .await
        }
    };
    let s = append(
        "acme",
        &[("user", "acme secret plan"), ("assistant", "noted")],
    )
    .await?;
    assert_eq!((s.turns, s.title.as_str()), (2, "acme secret plan"));
    append(
        "acme",
        &[("user", "second question"), ("assistant", "second answer")],
    )
    .await?;
    append("globex", &[("user", "hello from globex")]).await?;

    // The same session id in two tenants: two conversations.
    let acme = turns("acme", 2).await?;
    let texts: Vec<&str> = acme.turns.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(
        texts,
        ["second question", "second answer"],
        "the last 2 turns, in order"
    );
    let globex = turns("globex", 0).await?;
    assert_eq!(globex.turns.len(), 1);
    assert!(globex.turns.iter().all(|t| !t.content.contains("acme")));

    // Bad input is refused and nothing is written.
    let err = append("acme", &[("robot", "x")]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = append("nobody", &[("user", "x")]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert_eq!(turns("acme", 0).await?.turns.len(), 4);

    // Deleting a tenant takes its sessions; a new tenant of that name starts empty.
    cp.cli(&["tenant", "delete", "acme"])?;
    let err = turns("acme", 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    cp.cli(&["tenant", "create", "acme"])?;
    let list = client
        .member()
        .send(
            pb::ListSessionsRequest {
                tenant_id: "acme".into(),
                owner: String::new(),
            },
            |mut c, req| async move { c.list_sessions(req).await },
        )
        .await?;
    assert!(list.sessions.is_empty(), "{list:?}");
    assert_eq!(
        turns("globex", 0).await?.turns.len(),
        1,
        "globex is untouched"
    );
    Ok(())
}

/// One AppendEntries can carry more than tonic's default 4 MiB (entries of
/// usage batches); a node must accept it, or replication stalls for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_over_four_mib_reaches_the_node() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(1, &[])?;
    let channel = bulkhead_client::channel(&cp.nodes[0].addr)?;
    let mut client = pb::raft_client::RaftClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    // 5 MiB that is no command: the node must read it all and refuse it as
    // a bad command, not refuse its size.
    let mut req = tonic::Request::new(pb::RaftPayload {
        data: vec![b'x'; 5 << 20],
    });
    cp.secret.attach(&mut req);
    let refused = client
        .propose(req)
        .await
        .expect_err("garbage is not a command");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("decoding"), "{refused:?}");
    Ok(())
}

/// A node cut off from the network (it accepts connections and answers
/// nothing) costs a client one call, not every call: the next call starts
/// at the next node. Seen before the fix in the multi-host drill: after
/// the leader's host was cut, every worker heartbeat and every gateway
/// grant waited on it to its deadline for over 90 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_costs_one_call_not_every_call() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(1, &[])?;
    cp.leader(Duration::from_secs(10)).await?;
    // Accepts and holds every connection, never answering.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_addr = silent.local_addr()?.to_string();
    let held = std::thread::spawn(move || silent.incoming().take(8).collect::<Vec<_>>());
    let client = ControlPlaneClient::new(
        vec![silent_addr, cp.nodes[0].addr.clone()],
        Some(cp.admin_token.clone()),
    );
    let client = &client;
    let list = |budget: Duration| async move {
        client
            .admin()
            .send_for(
                budget,
                pb::ListTenantsRequest::default(),
                |mut c, r| async move { c.list_tenants(r).await },
            )
            .await
    };
    // The first call spends its whole budget on the silent node.
    let first = list(Duration::from_secs(2)).await;
    assert!(first.is_err(), "the silent node answered: {first:?}");
    // Each later call goes straight to the node that answers.
    for _ in 0..3 {
        let started = Instant::now();
        list(Duration::from_secs(2)).await?;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a call took {:?}: it waited on the silent node again",
            started.elapsed()
        );
    }
    drop(held);
    Ok(())
}
