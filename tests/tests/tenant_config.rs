//! Tenant config files, as operators keep them (`tenants/<id>/config.yaml`):
//! `bulkhead tenant apply` creates, updates or leaves tenants alone, refuses a
//! bad file with its name, field and reason without changing anything, and
//! `bulkhead up --tenants DIR` starts with the tenants (and the model files)
//! the configs name.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use bulkhead_tests::cluster::ControlPlanes;
use bulkhead_tests::system::{MODEL, Up};
use bulkhead_tests::{bulkhead_bin, demo_model, free_port};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

async fn tenant(client: &ControlPlaneClient, id: &str) -> anyhow::Result<pb::Tenant> {
    Ok(client
        .admin()
        .send(pb::TenantRef { id: id.into() }, |mut c, req| async move {
            c.get_tenant(req).await
        })
        .await?)
}

async fn tenant_ids(client: &ControlPlaneClient) -> anyhow::Result<Vec<String>> {
    let list = client
        .admin()
        .send(pb::ListTenantsRequest {}, |mut c, req| async move {
            c.list_tenants(req).await
        })
        .await?;
    Ok(list.tenants.into_iter().map(|t| t.id).collect())
}

fn limits(t: &pb::Tenant) -> (u64, u32, u32, u32, u32) {
    let l = t.limits.unwrap_or_default();
    (
        l.daily_tokens,
        l.max_concurrent,
        l.max_request_tokens,
        l.context_window,
        l.context_turns,
    )
}

fn features(t: &pb::Tenant) -> (bool, u32, bool, u32, u32) {
    let f = t.features.clone().unwrap_or_default();
    (
        f.burst,
        f.burst_percent,
        f.knowledge_sharing,
        f.max_keys,
        f.retention_days,
    )
}

/// The operator's example, as given.
const SALES: &str = r#"tenant_id: "sales"
model_path: "/models/qwen3-32b-finance.Q4_K_M.gguf"
daily_quota: 600000
max_concurrent: 5
context_window: 65536
"#;

const SUPPORT: &str = "tenant_id: support
plan: enterprise
display_name: Support desk
max_keys: 3
quick_prompts: [Where is my order?]
webhooks:
  - url: http://127.0.0.1:9/hooks/support
    events: [burst.requested]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_applied_all_or_nothing_and_named_when_refused() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(1, &[])?;
    let client = cp.client();
    let work = tempfile::tempdir()?;
    let dir = work.path().join("tenants");
    let sales_file = dir.join("sales/config.yaml");
    let support_file = dir.join("support.yaml");
    write(&sales_file, SALES)?;
    write(&support_file, SUPPORT)?;
    write(&dir.join("README.md"), "not a config")?;
    let apply = |path: &Path| {
        cp.cli_at(
            &cp.addrs(),
            &["tenant", "apply", &path.display().to_string()],
        )
    };

    // Both created: the given limits, the rest from the plan.
    let out = apply(&dir)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("created sales ({})", sales_file.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("created support ({})", support_file.display())),
        "{text}"
    );
    assert!(
        text.contains("http://127.0.0.1:9/hooks/support secret (shown once): whsec_"),
        "a generated webhook secret is shown once: {text}"
    );
    let sales = tenant(&client, "sales").await?;
    assert_eq!(sales.plan, "basic");
    assert_eq!(sales.model, "qwen3-32b-finance.Q4_K_M");
    assert_eq!(
        limits(&sales),
        (600_000, 5, 4_096, 65_536, 10),
        "daily, concurrency and window from the file; request size and turns from basic"
    );
    assert_eq!(
        features(&sales),
        (false, 50, false, 2, 30),
        "basic's features"
    );
    let mut overridden = sales.overridden.clone();
    overridden.sort();
    assert_eq!(
        overridden,
        ["context_window", "daily_tokens", "max_concurrent"]
    );
    let support = tenant(&client, "support").await?;
    assert_eq!(support.display_name, "Support desk");
    assert_eq!(support.quick_prompts, ["Where is my order?"]);
    assert_eq!(limits(&support), (10_000_000, 32, 65_536, 32_768, 50));
    assert_eq!(
        features(&support),
        (true, 50, true, 3, 365),
        "enterprise's features, with max_keys from the file"
    );
    let hooks = cp.cli(&["webhook", "list", "--tenant", "support"])?;
    assert!(
        hooks.contains("http://127.0.0.1:9/hooks/support") && hooks.contains("config"),
        "{hooks}"
    );
    let show = cp.cli(&["tenant", "show", "sales"])?;
    assert!(
        show.contains("daily_tokens:       600000 (overridden)"),
        "{show}"
    );
    assert!(
        show.contains("max_request_tokens: 4096\n"),
        "a plan value is not marked: {show}"
    );
    assert!(show.contains("max_keys:          2\n"), "{show}");
    assert!(
        show.contains("overridden:         context_window, daily_tokens, max_concurrent"),
        "{show}"
    );

    // Again: nothing changes, not even the versions.
    let (v_sales, v_support) = (sales.version, support.version);
    let out = apply(&dir)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("unchanged ")).count(),
        2,
        "{text}"
    );
    assert!(
        !text.contains("whsec_"),
        "the secret is not shown again: {text}"
    );
    assert_eq!(tenant(&client, "sales").await?.version, v_sales);
    assert_eq!(tenant(&client, "support").await?.version, v_support);

    // A changed file: that tenant is updated, with what changed.
    write(
        &sales_file,
        &SALES.replace("max_concurrent: 5", "max_concurrent: 7"),
    )?;
    let out = apply(&dir)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "updated sales ({}): max_concurrent",
            sales_file.display()
        )),
        "{text}"
    );
    assert!(text.contains("unchanged support"), "{text}");
    let sales = tenant(&client, "sales").await?;
    assert_eq!(limits(&sales).1, 7);
    assert!(sales.version > v_sales);

    // Bad files, each next to a good change that must not be applied either.
    write(
        &sales_file,
        &SALES
            .replace("max_concurrent: 5", "max_concurrent: 7")
            .replace("daily_quota: 600000", "daily_quota: 700000"),
    )?;
    let bad = dir.join("zz-bad.yaml");
    let bad_name = bad.display().to_string();
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "invalid YAML",
            "tenant_id: bad\n  daily_quota: 5\n: :\n",
            &["invalid YAML", "line 2"],
        ),
        (
            "unknown field",
            "tenant_id: bad\ndaily_quotaa: 5\n",
            &["daily_quotaa: unknown field `daily_quotaa`", "line 2"],
        ),
        (
            "wrong type",
            "tenant_id: bad\ndaily_quota: lots\n",
            &[
                "daily_quota: invalid type: string \"lots\", expected u64",
                "line 2",
            ],
        ),
        (
            "impossible limit",
            "tenant_id: bad\ndaily_quota: 100\nmax_request_tokens: 5000\n",
            &["invalid limit", "max_request_tokens", "cannot exceed"],
        ),
        (
            "unknown plan",
            "tenant_id: bad\nplan: platinum\n",
            &["plan: unknown plan \"platinum\""],
        ),
        (
            "webhook URL",
            "tenant_id: bad\nwebhooks:\n  - url: ftp://example.com/hook\n",
            &["webhooks", "http:// or https://"],
        ),
    ];
    for (what, text, expected) in cases {
        write(&bad, text)?;
        let out = apply(&dir)?;
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: refused");
        assert!(
            err.contains(&format!("{bad_name}: ")),
            "{what}: the file is named: {err}"
        );
        for e in expected {
            assert!(err.contains(e), "{what}: {e:?} in {err}");
        }
        // Nothing changed: not the good file's tenant, no new tenant.
        let sales = tenant(&client, "sales").await?;
        assert_eq!(limits(&sales).0, 600_000, "{what}: sales unchanged");
        assert!(
            !tenant_ids(&client).await?.contains(&"bad".to_owned()),
            "{what}: no tenant from the bad file"
        );
        // The same file on its own is refused the same way.
        let out = apply(&bad)?;
        assert!(!out.status.success(), "{what}: alone");
        assert!(stderr(&out).contains(&format!("{bad_name}: ")), "{what}");
    }
    std::fs::remove_file(&bad)?;
    // A directory named after another tenant.
    write(&dir.join("other/config.yaml"), "tenant_id: sales\n")?;
    let out = apply(&dir)?;
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("config.yaml: tenant_id: `sales` does not match its directory `other`"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(dir.join("other"))?;
    // An empty directory.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let out = apply(&empty)?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no tenant configs"),
        "{}",
        stderr(&out)
    );

    // A deleted tenant's id is tombstoned: a config does not bring it back.
    cp.cli(&["tenant", "create", "gone"])?;
    cp.cli(&["tenant", "delete", "gone"])?;
    let gone = work.path().join("gone.yaml");
    write(&gone, "tenant_id: gone\nplan: pro\n")?;
    let out = apply(&gone)?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{}: tenant `gone` was deleted", gone.display())),
        "{}",
        stderr(&out)
    );
    assert!(!tenant_ids(&client).await?.contains(&"gone".to_owned()));
    cp.cli(&["tenant", "create", "gone"])?;
    let out = apply(&gone)?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("updated gone"), "{}", stdout(&out));
    assert_eq!(tenant(&client, "gone").await?.plan, "pro");

    // The good change applies now that the bad file is gone.
    let out = apply(&dir)?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("updated sales") && stdout(&out).contains("daily_tokens"),
        "{}",
        stdout(&out)
    );
    assert_eq!(limits(&tenant(&client, "sales").await?).0, 700_000);

    // A plan change moves what follows the plan at once and keeps what is
    // overridden.
    cp.cli(&["tenant", "update", "sales", "--plan", "pro"])?;
    let sales = tenant(&client, "sales").await?;
    assert_eq!(
        limits(&sales),
        (700_000, 7, 16_384, 65_536, 20),
        "request size and turns follow pro; the file's limits stay"
    );
    assert_eq!(
        features(&sales),
        (false, 50, true, 10, 90),
        "pro's features"
    );
    cp.cli(&["tenant", "update", "support", "--plan", "basic"])?;
    let support = tenant(&client, "support").await?;
    assert_eq!(
        limits(&support),
        (100_000, 2, 4_096, 4_096, 10),
        "basic's limits"
    );
    assert_eq!(
        features(&support),
        (false, 50, false, 3, 30),
        "basic's features, max_keys still overridden"
    );
    Ok(())
}

/// `bulkhead up` with the given arguments after the usual ones, run to its
/// exit (for starts that must fail).
fn up_fails(data: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    up_fails_where(data, extra, |_| {})
}

/// [`up_fails`], with the command set up further (its directory, its
/// environment) by `setup`.
fn up_fails_where(
    data: &Path,
    extra: &[&str],
    setup: impl FnOnce(&mut std::process::Command),
) -> anyhow::Result<Output> {
    let mut args = vec![
        "up".to_owned(),
        "--data-dir".into(),
        data.display().to_string(),
        "--api".into(),
        format!("127.0.0.1:{}", free_port()),
        "--control-plane".into(),
        format!("127.0.0.1:{}", free_port()),
        "--worker".into(),
        format!("127.0.0.1:{}", free_port()),
        "--model".into(),
        format!("{MODEL}={}", demo_model().display()),
        "--slots".into(),
        "2".into(),
        "--context".into(),
        "512".into(),
        "--no-console".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let mut command = std::process::Command::new(bulkhead_bin()?);
    command
        .args(&args)
        .env("BULKHEAD_LOG", "warn")
        .env_remove("BULKHEAD_ADMIN_TOKEN")
        .env_remove("BULKHEAD_CONTROL_PLANE")
        .env_remove("BULKHEAD_TENANTS_DIR")
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    setup(&mut command);
    let mut child = command.spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            anyhow::bail!("bulkhead up kept running: {}", stdout(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_with_the_tenants_and_models_its_configs_name() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let tenants = work.path().join("tenants");
    // A model file under another name: served as its stem.
    let models = work.path().join("models");
    std::fs::create_dir_all(&models)?;
    let tiny = models.join("tiny-chat.Q8_0.gguf");
    #[cfg(unix)]
    std::os::unix::fs::symlink(demo_model(), &tiny)?;
    #[cfg(not(unix))]
    std::fs::copy(demo_model(), &tiny)?;
    write(
        &tenants.join("acme/config.yaml"),
        "tenant_id: acme\nmodel_path: ../../models/tiny-chat.Q8_0.gguf\ndaily_quota: 50000\nmax_concurrent: 3\n",
    )?;
    write(
        &tenants.join("globex.yaml"),
        &format!("tenant_id: globex\nplan: pro\nmodel: {MODEL}\n"),
    )?;

    // Bad configs stop `up` before anything starts, naming the file.
    let bad = work.path().join("bad");
    let bad_file = bad.join("x.yaml").display().to_string();
    // `bad` holding only `yaml`: `up` must fail; its (stderr, stdout).
    let refused = |yaml: &str| -> anyhow::Result<(String, String)> {
        write(&bad.join("x.yaml"), yaml)?;
        let out = up_fails(
            &work.path().join("data-bad"),
            &["--tenants", &bad.display().to_string()],
        )?;
        assert!(!out.status.success());
        Ok((stderr(&out), stdout(&out)))
    };
    let (err, out) = refused("tenant_id: x\nmax_concurrent: many\n")?;
    assert!(
        err.contains(&format!("{bad_file}: max_concurrent: invalid type")),
        "{err}"
    );
    assert!(!out.contains("bulkhead is up"), "{out}");
    let (err, _) = refused("tenant_id: x\nmodel_path: /nowhere/missing.gguf\n")?;
    assert!(
        err.contains(&format!(
            "{bad_file}: model_path: /nowhere/missing.gguf does not exist"
        )),
        "{err}"
    );
    // A limit the control plane refuses stops it right after it started.
    let (err, out) = refused("tenant_id: x\ndaily_quota: 10\nmax_request_tokens: 20\n")?;
    assert!(err.contains(&format!("{bad_file}: invalid limit")), "{err}");
    assert!(!out.contains("bulkhead is up"), "{out}");
    // Without --tenants, `up` applies ./tenants, as the article keeps them,
    // or the directory BULKHEAD_TENANTS_DIR names: the refused config there
    // stops it too.
    let data = work.path().join("data-bad");
    let cwd = work.path().join("elsewhere");
    std::fs::create_dir_all(&cwd)?;
    std::fs::rename(&bad, cwd.join("tenants"))?;
    // `up` without --tenants, set up by `setup`: refused; its stderr.
    let refused_unnamed = |setup: &dyn Fn(&mut std::process::Command)| -> anyhow::Result<String> {
        let out = up_fails_where(&data, &[], setup)?;
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains("invalid limit"),
            "{err}"
        );
        Ok(err)
    };
    let err = refused_unnamed(&|c| {
        c.current_dir(&cwd);
    })?;
    assert!(
        err.contains("loading the tenant configs in ./tenants/"),
        "{err}"
    );
    std::fs::rename(cwd.join("tenants"), &bad)?;
    refused_unnamed(&|c| {
        c.env("BULKHEAD_TENANTS_DIR", &bad);
    })?;
    // So are flags that contradict each other (`up_fails` passes --no-console).
    let out = up_fails(&work.path().join("data-bad"), &["--console", "127.0.0.1:1"])?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("'--no-console' cannot be used with '--console"),
        "{err}"
    );

    // Good configs: up with both tenants, and the worker serves the file
    // acme names.
    let tenants_arg = tenants.display().to_string();
    let mut up = Up::start_with(&work.path().join("data"), &["--tenants", &tenants_arg]).await?;
    let output = up.process.output();
    assert!(output.contains("created acme ("), "{output}");
    assert!(output.contains("created globex ("), "{output}");
    let client =
        ControlPlaneClient::new(vec![up.control_plane.clone()], Some(up.admin_token.clone()));
    let acme = tenant(&client, "acme").await?;
    assert_eq!(acme.model, "tiny-chat.Q8_0");
    assert_eq!(limits(&acme).0, 50_000);
    assert_eq!(limits(&acme).1, 3);
    let globex = tenant(&client, "globex").await?;
    assert_eq!(
        (globex.plan.as_str(), globex.model.as_str()),
        ("pro", MODEL)
    );
    let workers = client
        .admin()
        .send(pb::ListWorkersRequest {}, |mut c, req| async move {
            c.list_workers(req).await
        })
        .await?;
    let served: Vec<&String> = workers.workers.iter().flat_map(|w| &w.models).collect();
    assert!(
        served.iter().any(|m| *m == "tiny-chat.Q8_0") && served.iter().any(|m| *m == MODEL),
        "{served:?}"
    );
    let list = up.admin(&["tenant", "list"])?;
    assert!(list.contains("acme") && list.contains("globex"), "{list}");
    // Applying the same directory again changes nothing.
    let again = up.admin(&["tenant", "apply", &tenants_arg])?;
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("unchanged "))
            .count(),
        2,
        "{again}"
    );
    let acme_again = tenant(&client, "acme").await?;
    assert_eq!(acme_again.version, acme.version);

    // Edits apply live, with a line naming what changed.
    write(
        &tenants.join("acme/config.yaml"),
        "tenant_id: acme\nmodel_path: ../../models/tiny-chat.Q8_0.gguf\ndaily_quota: 60000\nmax_concurrent: 3\n",
    )?;
    let client = &client;
    let edited = bulkhead_tests::system::eventually(
        "the edited quota applied",
        Duration::from_secs(30),
        || async move {
            let t = tenant(client, "acme").await.ok()?;
            (limits(&t).0 == 60_000).then_some(t)
        },
    )
    .await?;
    assert!(edited.version > acme.version);
    let line = up
        .process
        .wait_for("updated acme (", Duration::from_secs(10))?;
    assert!(line.contains("daily_tokens"), "{line}");
    // A refused edit is logged, and none of the change applies (all or
    // nothing): the running configs stay.
    write(
        &tenants.join("globex.yaml"),
        &format!("tenant_id: globex\nplan: pro\nmodel: {MODEL}\nmax_concurrent: many\n"),
    )?;
    write(
        &tenants.join("initech.yaml"),
        "tenant_id: initech\nmodel_path: ../models/tiny-chat.Q8_0.gguf\n",
    )?;
    let refusal = up
        .process
        .wait_for("were not applied", Duration::from_secs(30))?;
    assert!(
        refusal.contains("max_concurrent: invalid type"),
        "{refusal}"
    );
    assert_eq!(tenant(client, "globex").await?.version, globex.version);
    assert!(tenant(client, "initech").await.is_err(), "nothing applied");
    // Fixed: the new tenant is created.
    write(
        &tenants.join("globex.yaml"),
        &format!("tenant_id: globex\nplan: pro\nmodel: {MODEL}\n"),
    )?;
    bulkhead_tests::system::eventually("initech created", Duration::from_secs(30), || async move {
        tenant(client, "initech").await.ok()
    })
    .await?;
    drop(up);
    Ok(())
}
