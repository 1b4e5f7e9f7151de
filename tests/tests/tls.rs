//! TLS on every listener and mTLS between roles, with certificates made by
//! `rcgen`: `bulkhead up` given a certificate, key and CA serves its API
//! over HTTPS only, its gRPC ports demand a client certificate the CA
//! signed, and its gateway reaches its control plane and worker over mTLS
//! (a chat answers).

use std::path::Path;
use std::time::Duration;

use bulkhead_tests::system::{MODEL, up_args};
use bulkhead_tests::{Process, demo_model, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Writes `NAME.pem` and `NAME.key`: a certificate for 127.0.0.1 signed by
/// `issuer`.
fn leaf(dir: &Path, name: &str, issuer: &CertifiedIssuer<'_, KeyPair>) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let cert = params.signed_by(&key, issuer)?;
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}

fn ca(dir: &Path, name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join(format!("{name}.pem")), issuer.pem())?;
    Ok(issuer)
}

/// `dir/pki` holding the cluster's CA (`ca.pem`) and a leaf it signed for
/// each of `leaves`.
fn cluster_pki(dir: &Path, leaves: &[&str]) -> anyhow::Result<std::path::PathBuf> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let cluster_ca = ca(&pki, "ca")?;
    for name in leaves {
        leaf(&pki, name, &cluster_ca)?;
    }
    Ok(pki)
}

/// `bulkhead up` with the demo model on free ports, `extra` arguments and
/// `env`, once its worker registered: (the process, the admin token, the
/// API port, the control plane's address).
fn start_up(
    dir: &Path,
    extra: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<(Process, String, u16, String)> {
    let (api_port, cp_port) = (free_port(), free_port());
    let mut args = up_args(
        dir,
        api_port,
        cp_port,
        &format!("{MODEL}={}", demo_model().display()),
    );
    args.extend_from_slice(extra);
    let mut up = Process::spawn_with_env(&args, env)?;
    let token = up.wait_for("admin token:", Duration::from_secs(60))?;
    up.wait_for(
        "registered with the control plane",
        Duration::from_secs(120),
    )?;
    Ok((up, token, api_port, format!("127.0.0.1:{cp_port}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_https_and_its_roles_speak_mtls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = cluster_pki(dir.path(), &["node", "operator"])?;
    // A certificate from a CA the cluster does not trust.
    let rogue_ca = ca(&pki, "rogue-ca")?;
    leaf(&pki, "rogue", &rogue_ca)?;
    let file = |name: &str| pki.join(name).display().to_string();

    let tls = [
        "--tls-cert".to_owned(),
        file("node.pem"),
        "--tls-key".to_owned(),
        file("node.key"),
        "--tls-ca".to_owned(),
        file("ca.pem"),
    ];
    let (_up, token, api_port, cp) = start_up(dir.path(), &tls, &[])?;

    // The API speaks HTTPS with the cluster's certificate, and not plain HTTP.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            pki.join("ca.pem"),
        )?)?)
        .build()?;
    let base = format!("https://127.0.0.1:{api_port}");
    let health = https.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), 200);
    let plain = reqwest::get(format!("http://127.0.0.1:{api_port}/health")).await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served: {plain:?}"
    );
    // A client that does not trust the cluster's CA cannot connect.
    assert!(reqwest::get(format!("{base}/health")).await.is_err());

    // The admin commands reach the control plane with the operator's
    // certificate (mTLS)...
    let bulkhead = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut cmd = std::process::Command::new(bulkhead_tests::bulkhead_bin()?);
        cmd.args(extra)
            .args(["--control-plane", &cp, "--admin-token", &token])
            .env_remove("BULKHEAD_TLS_CERT")
            .env_remove("BULKHEAD_TLS_KEY")
            .env_remove("BULKHEAD_TLS_CA");
        Ok(cmd.output()?)
    };
    let with_cert = |cert: &str, key: &str| {
        vec![
            "--tls-ca".to_owned(),
            file("ca.pem"),
            "--tls-cert".to_owned(),
            file(cert),
            "--tls-key".to_owned(),
            file(key),
        ]
    };
    let operator = with_cert("operator.pem", "operator.key");
    let operator: Vec<&str> = operator.iter().map(String::as_str).collect();
    let out = bulkhead(&[&["tenant", "create", "acme"][..], &operator].concat())?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bulkhead(&[&["key", "create", "--tenant", "acme"][..], &operator].concat())?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(key.starts_with("bk_"), "{key}");

    // ...and are refused without a client certificate and with one from
    // another CA (each after the client's 15 s of retries); nothing changes.
    let ca_only = ["--tls-ca", &file("ca.pem")];
    let rogue = with_cert("rogue.pem", "rogue.key");
    let rogue: Vec<&str> = rogue.iter().map(String::as_str).collect();
    for (what, tls) in [
        ("no client certificate", &ca_only[..]),
        ("a certificate of another CA", &rogue[..]),
    ] {
        let out = bulkhead(&[&["tenant", "create", "evil"][..], tls].concat())?;
        assert!(!out.status.success(), "{what}: the call went through");
    }
    let out = bulkhead(&[&["tenant", "list"][..], &operator].concat())?;
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("acme") && !list.contains("evil"), "{list}");

    // A chat: the gateway reaches the control plane and the worker over mTLS.
    let answer = https
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "max_tokens": 4,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]
        }))
        .send()
        .await?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    Ok(())
}

/// NATS over TLS: with `BULKHEAD_NATS_CA`, the worker publishes and the
/// control plane consumes usage over TLS (the server's certificate checked
/// against that CA), and a client speaking plain NATS is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_travels_over_a_nats_that_speaks_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = cluster_pki(dir.path(), &["nats"])?;
    let nats = bulkhead_tests::nats::Nats::start_with_tls(
        &dir.path().join("nats"),
        &pki.join("nats.pem"),
        &pki.join("nats.key"),
    );
    let plain = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(plain.is_err(), "a plain client got in");

    let ca_path = pki.join("ca.pem").display().to_string();
    let (_up, token, api_port, cp) = start_up(
        dir.path(),
        &["--nats".to_owned(), nats.url()],
        &[("BULKHEAD_NATS_CA", ca_path.as_str())],
    )?;
    let key = bulkhead_tests::system::tenant_with_key(&cp, &token, "acme", &[])?;
    let api = bulkhead_tests::system::Api::new(&format!("127.0.0.1:{api_port}"));
    let answer = api.ask(&key, "Say hi.", 4).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let billed = answer.total_tokens();
    // The event went worker -> NATS (TLS) -> control plane (TLS) -> ledger.
    let admin = bulkhead_client::ControlPlaneClient::new(vec![cp], Some(token));
    bulkhead_tests::system::eventually(
        "the usage to reach the ledger over TLS",
        Duration::from_secs(30),
        || async {
            let used = bulkhead_tests::system::used_lately(&admin, "acme")
                .await
                .ok()?;
            (used == billed).then_some(())
        },
    )
    .await?;
    Ok(())
}
