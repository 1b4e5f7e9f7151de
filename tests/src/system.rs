//! Whole-system fixtures: `bulkhead up` in one process, or a multi-process
//! cluster (control-plane nodes, NATS, workers, gateways), plus an HTTP
//! client for the gateway's API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cluster::ControlPlanes;
use crate::lan::Lan;
use crate::nats::Nats;
use crate::{Process, bulkhead_bin, demo_model, free_port};

/// The name the demo model is served under.
pub const MODEL: &str = "smollm2";

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `bulkhead ARGS` as an admin against `control_plane`.
pub fn admin(control_plane: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(bulkhead_bin()?)
        .args(args)
        .env("BULKHEAD_CONTROL_PLANE", control_plane)
        .env("BULKHEAD_ADMIN_TOKEN", token)
        .env("BULKHEAD_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()?;
    if !out.status.success() {
        bail!(
            "bulkhead {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bulkhead usage --csv --days 2` output as one row: the token and request
/// columns (prompt, completion, total, cached, requests) summed over the
/// days, the others as the newest day has them. A test that runs across
/// midnight splits its usage over two days; this sees all of it.
pub fn usage_csv_totals(csv: &str) -> Option<Vec<String>> {
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let mut total: Vec<String> = rows.first()?.iter().map(|c| (*c).to_owned()).collect();
    for column in 2..=6 {
        let sum: u64 = rows
            .iter()
            .filter_map(|r| r.get(column)?.parse::<u64>().ok())
            .sum();
        *total.get_mut(column)? = sum.to_string();
    }
    Some(total)
}

/// The ledger's tokens used by `tenant` today and yesterday, as the nodes
/// `client` calls answer it (an admin client).
pub async fn used_lately(
    client: &bulkhead_control_plane::ControlPlaneClient,
    tenant: &str,
) -> anyhow::Result<u64> {
    Ok(used_by_day(client, tenant).await?.values().sum())
}

/// The control plane's usage report of `tenant` for its last `days` days,
/// as the nodes `client` calls answer it (an admin client).
pub async fn usage_report(
    client: &bulkhead_control_plane::ControlPlaneClient,
    tenant: &str,
    days: u32,
) -> anyhow::Result<bulkhead_proto::control::UsageReport> {
    Ok(client
        .admin()
        .send(
            bulkhead_proto::control::UsageRequest {
                tenant_id: tenant.to_owned(),
                days,
            },
            |mut c, req| async move { c.usage(req).await },
        )
        .await?)
}

/// The ledger's tokens used by `tenant` on each of today and yesterday
/// (the control plane's days, YYYY-MM-DD).
pub async fn used_by_day(
    client: &bulkhead_control_plane::ControlPlaneClient,
    tenant: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let report = usage_report(client, tenant, 2).await?;
    Ok(report
        .days
        .iter()
        .map(|d| (d.day.clone(), d.prompt_tokens + d.completion_tokens))
        .collect())
}

/// Creates a tenant with `limits` (CLI flags) and returns a fresh key of it.
pub fn tenant_with_key(
    control_plane: &str,
    token: &str,
    id: &str,
    limits: &[&str],
) -> anyhow::Result<String> {
    let mut args = vec!["tenant", "create", id];
    args.extend_from_slice(limits);
    admin(control_plane, token, &args)?;
    created_key(&admin(
        control_plane,
        token,
        &["key", "create", "--tenant", id],
    )?)
}

/// The key `bulkhead key create` printed.
pub fn created_key(out: &str) -> anyhow::Result<String> {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("bk_"))
        .map(str::to_owned)
        .with_context(|| format!("no key in `key create` output: {out}"))
}

/// One answer of the API: its status, headers and JSON body (for a stream:
/// the parsed events, the usage of the last one, and whether an error event
/// arrived).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
    pub usage: Option<Value>,
    pub stream_error: Option<Value>,
}

impl Answer {
    pub fn total_tokens(&self) -> u64 {
        self.usage
            .as_ref()
            .and_then(|u| u["total_tokens"].as_u64())
            .unwrap_or(0)
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
        }
    }

    /// A client of a gateway that serves HTTPS with a certificate `ca` signed.
    pub fn https(addr: &str, ca: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            base: format!("https://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?)
                .build()?,
        })
    }

    pub fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    pub fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    /// Sends a request and reads the whole answer, streamed or not.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        self.send_telling(req, None).await
    }

    /// Like [`Self::send`], and says on `first` when the first bytes of a
    /// streamed answer arrived (the request is being generated).
    pub async fn send_telling(
        &self,
        req: reqwest::RequestBuilder,
        mut first: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> anyhow::Result<Answer> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let is_stream = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let text = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let usage = body.get("usage").cloned();
            return Ok(Answer {
                status,
                headers,
                body,
                text,
                usage,
                stream_error: None,
            });
        }
        let mut raw = String::new();
        let mut bytes = resp.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            raw.push_str(&String::from_utf8_lossy(&chunk?));
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
        let mut events = Vec::new();
        let (mut text, mut usage, mut stream_error) = (String::new(), None, None);
        for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                continue;
            }
            let event: Value =
                serde_json::from_str(data).with_context(|| format!("bad SSE data {data:?}"))?;
            if event.get("error").is_some() {
                stream_error = Some(event.clone());
            }
            if let Some(t) = event["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if event.get("usage").is_some_and(|u| !u.is_null()) {
                usage = event.get("usage").cloned();
            }
            events.push(event);
        }
        Ok(Answer {
            status,
            headers,
            body: Value::Array(events),
            text,
            usage,
            stream_error,
        })
    }

    /// A chat completion with `body` as the JSON body.
    pub async fn chat(&self, key: &str, body: Value) -> anyhow::Result<Answer> {
        self.send(self.post("/v1/chat/completions", key).json(&body))
            .await
    }

    /// Asks "Say hi." (4 tokens) until it is answered with 200, for up to
    /// `timeout` (`what` names the wait in the error); that answer.
    pub async fn until_answered(
        &self,
        key: &str,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        eventually(what, timeout, || async {
            let a = self.ask(key, "Say hi.", 4).await.ok()?;
            (a.status == 200).then_some(a)
        })
        .await
    }

    /// A short greedy question.
    pub async fn ask(&self, key: &str, question: &str, max_tokens: u32) -> anyhow::Result<Answer> {
        self.chat(
            key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0}),
        )
        .await
    }

    /// Waits until the gateway answers /health with a worker serving.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let http = self.http.clone();
        let url = format!("{}/health", self.base);
        eventually(
            "gateway ready with a worker",
            Duration::from_secs(60),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let resp = http.get(url).send().await.ok()?;
                    let body: Value = resp.json().await.ok()?;
                    (body["status"] == "ok"
                        && body["models"].as_array().is_some_and(|m| !m.is_empty()))
                    .then_some(())
                }
            },
        )
        .await
    }
}

/// `bulkhead up` on free loopback ports and its own data dir.
pub struct Up {
    pub process: Process,
    pub api: Api,
    pub control_plane: String,
    pub admin_token: String,
    pub dir: PathBuf,
    /// Base URL of the web console (`http://127.0.0.1:PORT`).
    pub console: String,
    ports: (u16, u16, u16, u16),
    extra: Vec<String>,
}

impl Up {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[]).await
    }

    /// Starts with more arguments for `bulkhead up` (such as `--tenants DIR`).
    pub async fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let ports = (free_port(), free_port(), free_port(), free_port());
        Self::start_on(dir, ports, extra).await
    }

    async fn start_on(
        dir: &Path,
        ports: (u16, u16, u16, u16),
        extra: Vec<String>,
    ) -> anyhow::Result<Self> {
        let model = format!("{MODEL}={}", demo_model().display());
        let mut args = vec![
            "up".to_owned(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--api".into(),
            format!("127.0.0.1:{}", ports.0),
            "--control-plane".into(),
            format!("127.0.0.1:{}", ports.1),
            "--worker".into(),
            format!("127.0.0.1:{}", ports.2),
            "--console".into(),
            format!("127.0.0.1:{}", ports.3),
            "--model".into(),
            model,
            "--slots".into(),
            "8".into(),
            "--context".into(),
            "2048".into(),
            "--threads".into(),
            decode_threads(test_threads()).to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut process = Process::spawn(&args)?;
        let admin_token = process.wait_for("admin token:", Duration::from_secs(60))?;
        // After a restart the control plane still holds the last run's
        // registration of the worker: wait for this run's, with its models
        // loaded, so that a gateway does not route to it while it loads.
        const REGISTERED: &str = "registered with the control plane";
        if !process.output().contains(REGISTERED) {
            process.wait_for(REGISTERED, Duration::from_secs(120))?;
        }
        let api = Api::new(&format!("127.0.0.1:{}", ports.0));
        api.ready().await?;
        Ok(Self {
            process,
            api,
            control_plane: format!("127.0.0.1:{}", ports.1),
            admin_token,
            dir: dir.to_path_buf(),
            console: format!("http://127.0.0.1:{}", ports.3),
            ports,
            extra,
        })
    }

    /// Stops with SIGTERM (which must exit cleanly) and starts again on the
    /// same data dir and ports.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        let status = self.process.terminate(Duration::from_secs(30))?;
        if !status.success() {
            bail!(
                "bulkhead up exited with {status} on SIGTERM:\n{}",
                self.process.output()
            );
        }
        let extra = std::mem::take(&mut self.extra);
        Self::start_on(&self.dir.clone(), self.ports, extra).await
    }

    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        admin(&self.control_plane, &self.admin_token, args)
    }

    pub fn tenant_with_key(&self, id: &str, limits: &[&str]) -> anyhow::Result<String> {
        tenant_with_key(&self.control_plane, &self.admin_token, id, limits)
    }

    /// A new key of `tenant` scoped to `user` (`key create --user`).
    pub fn user_key(&self, tenant: &str, user: &str) -> anyhow::Result<String> {
        created_key(&self.admin(&["key", "create", "--tenant", tenant, "--user", user])?)
    }

    /// The id of `tenant`'s first key, from `bulkhead key list`.
    pub fn key_id(&self, tenant: &str) -> anyhow::Result<String> {
        let out = self.admin(&["key", "list", "--tenant", tenant])?;
        out.split_whitespace()
            .find(|w| w.starts_with("key_"))
            .map(str::to_owned)
            .with_context(|| format!("no key id in `key list`: {out}"))
    }

    /// A client of the control plane with the credential `up` issued to its
    /// own `role` (`gateway` or `worker`), as that role calls.
    pub fn client_as(
        &self,
        role: &str,
    ) -> anyhow::Result<bulkhead_control_plane::ControlPlaneClient> {
        let path = self.dir.join(format!("{role}.credential"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let credential = bulkhead_proto::Credential::new(&text).map_err(anyhow::Error::msg)?;
        Ok(
            bulkhead_control_plane::ControlPlaneClient::new(vec![self.control_plane.clone()], None)
                .with_credential(credential),
        )
    }

    /// A client of the control plane with the admin token.
    pub fn admin_client(&self) -> bulkhead_control_plane::ControlPlaneClient {
        bulkhead_control_plane::ControlPlaneClient::new(
            vec![self.control_plane.clone()],
            Some(self.admin_token.clone()),
        )
    }
}

/// The arguments of a small `bulkhead up` on loopback ports (API
/// `api_port`, control plane `cp_port`, no console, two slots of 1024
/// tokens) serving `model` (`NAME=PATH`), for tests that start it
/// themselves (with an environment, or TLS).
pub fn up_args(dir: &Path, api_port: u16, cp_port: u16, model: &str) -> Vec<String> {
    [
        "up",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--api",
        &format!("127.0.0.1:{api_port}"),
        "--control-plane",
        &format!("127.0.0.1:{cp_port}"),
        "--worker",
        &format!("127.0.0.1:{}", free_port()),
        "--no-console",
        "--model",
        model,
        "--slots",
        "2",
        "--context",
        "1024",
        "--threads",
        &decode_threads(test_threads()).to_string(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// The llama.cpp threads of each of `workers` workers that may decode at
/// once on this machine's cores. llama.cpp's decode threads wait for each
/// other spinning, so more threads than cores slow every worker to a crawl (seen:
/// 4 tokens in 11 s with two workers of two threads each on two cores).
fn decode_threads(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers.max(1)).max(1)
}

/// How many tests of one test binary run at once (`RUST_TEST_THREADS`, else
/// one per core, as libtest does): each may run its own `bulkhead up`.
fn test_threads() -> usize {
    std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `(String, String)` pairs as the `&str` pairs a process is spawned with.
fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A multi-process cluster: NATS, control-plane nodes, workers, gateways.
pub struct Cluster {
    pub control: ControlPlanes,
    pub nats: Nats,
    pub workers: Vec<Process>,
    /// Each worker's HTTP address (for /metrics).
    pub worker_http: Vec<String>,
    pub gateways: Vec<Process>,
    pub apis: Vec<Api>,
    _dir: tempfile::TempDir,
}

/// How big a [`Cluster`] to start: `Cluster::builder().workers(2).start()`.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    control_nodes: u64,
    workers: usize,
    gateways: usize,
    lan: Option<std::sync::Arc<Lan>>,
    env: Vec<(String, String)>,
}

impl ClusterBuilder {
    /// Control-plane nodes (default 1).
    #[must_use]
    pub fn control_nodes(mut self, n: u64) -> Self {
        self.control_nodes = n;
        self
    }

    /// Workers (default 1).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Gateways (default 1).
    #[must_use]
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// `key=value` in the environment of every node, worker and gateway
    /// (not NATS): a drill's clock offset, say.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Each part on its own host of `lan` instead of loopback: NATS on
    /// `nats`, control-plane node `i` on `cp<i>`, worker `i` on `wk<i>`,
    /// gateway `i` on `gw<i>` (counting from 1).
    #[must_use]
    pub fn on(mut self, lan: std::sync::Arc<Lan>) -> Self {
        self.lan = Some(lan);
        self
    }

    /// Starts everything and returns once each part says it is ready on
    /// its readiness endpoint: every worker registered with its model (the
    /// control plane's worker list), every gateway routing to a worker (its
    /// `/health`).
    pub async fn start(self) -> anyhow::Result<Cluster> {
        Cluster::start(self).await
    }
}

impl Cluster {
    /// Starts a loopback cluster of `control_nodes` control-plane nodes,
    /// `workers` workers and `gateways` gateways (the builder's other
    /// defaults), ready as [`ClusterBuilder::start`] says.
    pub async fn start_sized(
        control_nodes: u64,
        workers: usize,
        gateways: usize,
    ) -> anyhow::Result<Cluster> {
        Cluster::builder()
            .control_nodes(control_nodes)
            .workers(workers)
            .gateways(gateways)
            .start()
            .await
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            control_nodes: 1,
            workers: 1,
            gateways: 1,
            lan: None,
            env: Vec::new(),
        }
    }

    async fn start(b: ClusterBuilder) -> anyhow::Result<Self> {
        let (workers, gateways, lan) = (b.workers, b.gateways, b.lan.as_deref());
        // Where the `i`th part of a role runs: its netns and address.
        // (With its host's TLS identity in its environment.)
        let place = |role: &str, i: usize| match lan {
            Some(lan) => {
                let name = format!("{role}{}", i + 1);
                let h = lan.host(&name);
                (Some(h.netns.clone()), h.ip.clone(), lan.tls_env(&name))
            }
            None => (None, "127.0.0.1".to_owned(), Vec::new()),
        };
        let with = |mut env: Vec<(String, String)>, credential: &str| {
            env.push(("BULKHEAD_CREDENTIAL".to_owned(), credential.to_owned()));
            env.extend(b.env.iter().cloned());
            env
        };
        let port = |fixed: u16| if lan.is_some() { fixed } else { free_port() };
        let dir = tempfile::tempdir()?;
        let nats = match lan {
            Some(lan) => {
                let h = lan.host("nats");
                Nats::start_on(
                    &dir.path().join("nats"),
                    &h.netns,
                    &h.ip,
                    Some(lan.cert_of("nats")),
                )
            }
            None => Nats::start(&dir.path().join("nats")),
        };
        let env: Vec<(&str, &str)> = b
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let control =
            ControlPlanes::start_on(b.control_nodes, &["--nats", &nats.url()], lan, &env)?;
        let model = format!("{MODEL}={}", demo_model().display());
        let mut cluster = Self {
            workers: Vec::new(),
            worker_http: Vec::new(),
            gateways: Vec::new(),
            apis: Vec::new(),
            control,
            nats,
            _dir: dir,
        };
        let threads = decode_threads(workers * test_threads()).to_string();
        for i in 0..workers {
            let (netns, ip, env) = place("wk", i);
            // Loopback of its host: that API trusts X-Tenant-ID.
            let http = format!("127.0.0.1:{}", port(8080));
            let spool = cluster._dir.path().join(format!("worker{i}"));
            let args = [
                "worker".to_owned(),
                "--listen".into(),
                format!("{ip}:{}", port(7200)),
                "--http".into(),
                http.clone(),
                "--model".into(),
                model.clone(),
                "--worker-id".into(),
                format!("worker-{i}"),
                "--control-plane".into(),
                cluster.control.addrs(),
                "--nats".into(),
                cluster.nats.url(),
                "--data-dir".into(),
                spool.display().to_string(),
                "--slots".into(),
                "8".into(),
                "--context".into(),
                "2048".into(),
                "--threads".into(),
                threads.clone(),
            ];
            let env = with(env, &cluster.control.credential("worker").await?);
            let process = Process::spawn_in(netns.as_deref(), &args, &pairs(&env))?;
            cluster.workers.push(process);
            cluster.worker_http.push(http);
        }
        // Ready: the control plane lists every worker with its model loaded.
        let admin = cluster.control.client();
        eventually(
            "every worker registered with its model",
            Duration::from_secs(120),
            || async {
                let list = admin
                    .admin()
                    .send(
                        bulkhead_proto::control::ListWorkersRequest {},
                        |mut c, r| async move { c.list_workers(r).await },
                    )
                    .await
                    .ok()?;
                let ready = (0..workers).all(|i| {
                    list.workers.iter().any(|w| {
                        w.worker_id == format!("worker-{i}") && w.models.iter().any(|m| m == MODEL)
                    })
                });
                ready.then_some(())
            },
        )
        .await
        .map_err(|e| {
            let said: Vec<String> = cluster
                .workers
                .iter_mut()
                .map(|w| {
                    let _ = w.wait_for("\u{0}never", Duration::from_millis(200));
                    w.output()
                })
                .collect();
            e.context(format!("the workers said:\n{}", said.join("\n---\n")))
        })?;
        for i in 0..gateways {
            let (netns, ip, env) = place("gw", i);
            let addr = format!("{ip}:{}", port(18789));
            let args = [
                "gateway".to_owned(),
                "--listen".into(),
                addr.clone(),
                "--control-plane".into(),
                cluster.control.addrs(),
                "--gateway-id".into(),
                format!("gateway-{i}"),
            ];
            let env = with(env, &cluster.control.credential("gateway").await?);
            let process = Process::spawn_in(netns.as_deref(), &args, &pairs(&env))?;
            let api = match lan {
                Some(lan) => Api::https(&addr, &lan.ca())?,
                None => Api::new(&addr),
            };
            api.ready().await?;
            cluster.gateways.push(process);
            cluster.apis.push(api);
        }
        Ok(cluster)
    }

    /// The index of the worker a gateway sends `tenant`'s requests with
    /// this affinity (session id, else user id) to: the first of the
    /// rendezvous order every gateway computes.
    pub async fn routed_to(&self, tenant: &str, affinity: &str) -> anyhow::Result<usize> {
        let workers = self
            .control
            .client()
            .admin()
            .send(
                bulkhead_proto::control::ListWorkersRequest {},
                |mut c, r| async move { c.list_workers(r).await },
            )
            .await?
            .workers;
        let first = bulkhead_gateway::route::rank(tenant, affinity, workers)
            .into_iter()
            .next()
            .context("no worker is registered")?;
        Ok(first.worker_id.trim_start_matches("worker-").parse()?)
    }

    /// Creates a tenant and a key of it, and waits until every gateway
    /// knows the key (it reaches them over their watch streams).
    pub async fn tenant_with_key(&self, id: &str, limits: &[&str]) -> anyhow::Result<String> {
        let key = tenant_with_key(&self.control.addrs(), &self.control.admin_token, id, limits)?;
        for api in &self.apis {
            eventually(
                "the new key to reach the gateway",
                Duration::from_secs(20),
                || async {
                    let a = api.send(api.get("/v1/models", &key)).await.ok()?;
                    (a.status == 200).then_some(())
                },
            )
            .await?;
        }
        Ok(key)
    }

    /// [`Cluster::tenant_with_key`] with a daily token quota and a cap on
    /// concurrent requests.
    pub async fn tenant_with_quota(
        &self,
        id: &str,
        daily_tokens: u64,
        max_concurrent: u32,
    ) -> anyhow::Result<String> {
        let (quota, concurrent) = (daily_tokens.to_string(), max_concurrent.to_string());
        let limits = ["--daily-tokens", &quota, "--max-concurrent", &concurrent];
        self.tenant_with_key(id, &limits).await
    }

    /// The ledger's tokens used by `tenant` today and yesterday (a test
    /// that runs across midnight splits its usage over two days).
    pub async fn used_today(&self, tenant: &str) -> anyhow::Result<u64> {
        used_lately(&self.control.client(), tenant).await
    }

    /// Waits until the ledger holds exactly `expected` tokens of `tenant`
    /// (today and yesterday), and answers it; panics with what it holds if
    /// it never does.
    pub async fn ledger_reaches(&self, tenant: &str, expected: u64) -> u64 {
        let result = eventually(
            "the ledger to apply every usage event",
            Duration::from_secs(20),
            || async {
                let used = self.used_today(tenant).await.ok()?;
                (used == expected).then_some(used)
            },
        )
        .await;
        match result {
            Ok(used) => used,
            Err(e) => panic!(
                "{e}: ledger says {:?}, clients received {expected}",
                self.used_today(tenant).await
            ),
        }
    }

    /// A worker's metric value for a tenant (0 when absent).
    pub async fn worker_metric(
        &self,
        worker: usize,
        name: &str,
        tenant: &str,
    ) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.worker_http[worker]))
            .await?
            .text()
            .await?;
        let prefix = format!("{name}{{tenant=\"{tenant}\"}}");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }
}
