//! The web console in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver) against `bulkhead up` with the demo model.
//!
//! A tenant's user signs in with a key, sees the tenant's welcome and quick
//! prompts, chats with streamed answers, follows up in the same session,
//! opens a second session, and gets clear messages for a model that is still
//! loading, a spent quota and a revoked key. An operator signs in with the
//! admin token, creates and edits a tenant, creates a key, sees its usage
//! after chats, downloads the de-identified CSV, watches the live monitor,
//! revokes the key and deletes the tenant.
//!
//! Every screenshot the tests take is written to
//! `target/tmp/console-screenshots/` (the paths are printed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_proto::control as pb;
use bulkhead_tests::system::{MODEL, Up, eventually};
use fantoccini::{Client, ClientBuilder, Locator, wd::Capabilities};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// The longest a streamed answer of the demo model may take.
const ANSWER_WAIT: Duration = Duration::from_secs(240);

/// Kills chromedriver and the Chromium it started (one process group), even
/// when a test panics.
struct DriverGuard(std::process::Child);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.0.wait();
    }
}

struct Browser {
    c: Client,
    _driver: DriverGuard,
    name: &'static str,
    _profile: tempfile::TempDir,
}

fn chromium() -> anyhow::Result<&'static str> {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("Chromium is not installed; scripts/setup.sh installs it (apt: chromium chromium-driver)")
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

impl Browser {
    async fn start(name: &'static str, downloads: &Path) -> anyhow::Result<Self> {
        Self::start_in(name, downloads, "en-US").await
    }

    /// A browser whose language (and so its Accept-Language) is `lang`.
    async fn start_in(name: &'static str, downloads: &Path, lang: &str) -> anyhow::Result<Self> {
        let binary = chromium()?;
        let port = bulkhead_tests::free_port();
        let mut command = std::process::Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = DriverGuard(command.spawn().context(
            "chromedriver did not start; scripts/setup.sh installs it (apt: chromium-driver)",
        )?);
        let profile = tempfile::tempdir()?;
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.path().display()),
                         format!("--lang={lang}"), format!("--accept-lang={lang}")],
                "prefs": {"download.default_directory": downloads, "download.prompt_for_download": false,
                          "intl.accept_languages": lang},
            }),
        );
        let started = Instant::now();
        let c = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    bail!("no browser session from chromedriver: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Self {
            c,
            _driver: driver,
            name,
            _profile: profile,
        })
    }

    async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.c.execute(script, Vec::new()).await?)
    }

    /// Waits until `condition` (a JS expression) is truthy; returns its value.
    async fn until(&self, what: &str, condition: &str) -> anyhow::Result<Value> {
        self.until_within(what, condition, WAIT).await
    }

    /// [`Self::until`] with a time limit of its own.
    async fn until_within(
        &self,
        what: &str,
        condition: &str,
        wait: Duration,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        let script =
            format!("try {{ return ({condition}) || null; }} catch (e) {{ return null; }}");
        loop {
            let v = self.js(&script).await?;
            if !v.is_null() {
                return Ok(v);
            }
            if started.elapsed() > wait {
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let shot = self.shot(&format!("failed-{name}")).await;
                let page = self
                    .js("return document.querySelector('main')?.innerText")
                    .await
                    .unwrap_or_default();
                bail!(
                    "timed out waiting for {what} ({condition}); page: {page}; screenshot: {shot:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        let el = self.c.find(Locator::Css(css)).await?;
        Ok(el.text().await?)
    }

    /// Waits until the element exists and its text contains `needle`.
    async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let condition = format!(
            "(document.querySelector({css:?})?.innerText || '').includes({needle:?}) && document.querySelector({css:?}).innerText"
        );
        let v = self
            .until(&format!("{needle:?} in {css}"), &condition)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Waits until the element exists, then finds it.
    async fn element(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.until(
            &format!("{css} to exist"),
            &format!("document.querySelector({css:?})"),
        )
        .await?;
        Ok(self.c.find(Locator::Css(css)).await?)
    }

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.element(css).await?.click().await?;
        Ok(())
    }

    async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.element(css).await?;
        el.clear().await?;
        el.send_keys(text).await?;
        Ok(())
    }

    async fn count(&self, css: &str) -> anyhow::Result<u64> {
        let v = self
            .js(&format!("return document.querySelectorAll({css:?}).length"))
            .await?;
        Ok(v.as_u64().unwrap_or(0))
    }

    /// Saves a PNG of the page under `target/tmp/console-screenshots/`.
    async fn shot(&self, what: &str) -> anyhow::Result<PathBuf> {
        let dir = screenshots();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{what}.png", self.name));
        std::fs::write(&path, self.c.screenshot().await?)?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    /// Sends `text` from the composer and waits for the whole streamed
    /// answer; returns it and how many different lengths the answer's text
    /// had on screen while it arrived.
    async fn send(&self, text: &str) -> anyhow::Result<(String, u64)> {
        let before = self.count(".msg.assistant[data-done='1']").await?;
        self.js(
            "window.__lengths = new Set(); window.__observer?.disconnect();
             window.__observer = new MutationObserver(() => {
               const all = document.querySelectorAll('.msg.assistant');
               const n = all.length ? all[all.length - 1].textContent.length : 0;
               if (n) window.__lengths.add(n);
             });
             window.__observer.observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
             return true",
        )
        .await?;
        self.fill("#prompt", text).await?;
        self.click("#send").await?;
        // The console names no max_tokens, so the demo model may ramble up
        // to the default 512 tokens, on two cores shared with the other
        // browser tests of this file.
        self.until_within(
            "the streamed answer",
            &format!("document.querySelectorAll(\".msg.assistant[data-done='1']\").length > {before} || document.querySelector('#chat-error .alert')"),
            ANSWER_WAIT,
        )
        .await?;
        if self.count("#chat-error .alert").await? > 0 {
            bail!(
                "the chat showed an error: {}",
                self.text("#chat-error").await?
            );
        }
        let answer = self
            .js("const all = document.querySelectorAll('.msg.assistant'); return all[all.length - 1].innerText")
            .await?;
        let changes = self.js("return window.__lengths.size").await?;
        Ok((
            answer.as_str().unwrap_or_default().to_owned(),
            changes.as_u64().unwrap_or(0),
        ))
    }

    async fn sign_in_tenant(&self, console: &str, key: &str) -> anyhow::Result<()> {
        self.c.goto(&format!("{console}/")).await?;
        self.js("sessionStorage.clear(); return true").await?;
        self.c.goto(&format!("{console}/#/")).await?;
        self.c.refresh().await?;
        self.fill("#tenant-key", key).await?;
        self.click("#tenant-signin-button").await?;
        self.until("the chat page", "document.getElementById('tenant-name')")
            .await?;
        Ok(())
    }

    async fn close(self) -> anyhow::Result<()> {
        self.c.close().await?;
        Ok(())
    }
}

/// Registers a worker that says it is still loading `model` (to `progress`),
/// as a worker does while llama.cpp reads a large model's weights.
async fn register_loading_worker(up: &Up, model: &str, progress: f32) -> anyhow::Result<()> {
    up.client_as("worker")?
        .fleet()
        .send(
            pb::RegisterWorkerRequest {
                worker: Some(pb::WorkerInfo {
                    worker_id: "worker-big".into(),
                    addr: "127.0.0.1:9".into(),
                    slots: 4,
                    loading: vec![pb::ModelLoad {
                        model: model.into(),
                        progress,
                    }],
                    ..pb::WorkerInfo::default()
                }),
                lease_ms: 60_000,
            },
            |mut c, r| async move { c.register_worker(r).await },
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_chats_in_the_browser() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let key = up.tenant_with_key(
        "acme",
        &[
            "--name",
            "Acme Support",
            "--welcome-message",
            "Hello from Acme! Ask about your order.",
            "--quick-prompt",
            "Name three colors.",
            "--quick-prompt",
            "Say hello.",
        ],
    )?;
    let b = Browser::start("tenant", dir.path()).await?;

    // A wrong key is refused on the sign-in page, with a reason.
    b.c.goto(&format!("{}/", up.console)).await?;
    b.fill("#tenant-key", "bk_not_a_key").await?;
    b.click("#tenant-signin-button").await?;
    b.wait_text("#tenant-signin-error", "not valid").await?;

    // The tenant's name, welcome message and quick prompts.
    b.sign_in_tenant(&up.console, &key).await?;
    assert_eq!(b.text("#tenant-name").await?, "Acme Support");
    assert_eq!(
        b.text("#welcome-message").await?,
        "Hello from Acme! Ask about your order."
    );
    let quick = b
        .js("return [...document.querySelectorAll('.quick-prompt')].map(b => b.innerText)")
        .await?;
    assert_eq!(quick, json!(["Name three colors.", "Say hello."]));
    b.shot("welcome").await?;

    // A streamed answer: the text arrives in pieces, and the session is listed.
    let (answer, changes) = b.send("What is the capital of France?").await?;
    assert!(!answer.trim().is_empty(), "an answer was shown");
    assert!(
        changes >= 3,
        "the answer arrived token by token (seen at {changes} lengths)"
    );
    assert_eq!(b.count("#sessions li").await?, 1);
    assert_eq!(
        b.text("#sessions li button").await?,
        "What is the capital of France?"
    );
    assert_eq!(sessions_title(&b).await?, "All sessions");
    // A follow-up in the same session carries the history to the model.
    let (follow_up, _) = b.send("Repeat my previous question.").await?;
    assert!(!follow_up.trim().is_empty());
    assert_eq!(b.count("#messages .msg").await?, 4);
    let sessions = up.api.send(up.api.get("/v1/sessions", &key)).await?.body;
    let first = sessions["data"][0]["id"]
        .as_str()
        .context("a session")?
        .to_owned();
    let (turns, shown) = session_messages(&up, &key, &first).await?;
    assert_eq!(shown.len(), 4, "{turns}");
    assert_eq!(
        shown[3].trim(),
        follow_up.trim(),
        "the page shows what was stored"
    );
    let recent = two_recent_requests(&up, "acme").await?;
    // Newest first: the follow-up's prompt holds the first question and answer.
    let (second, first_req) = (&recent[0], &recent[1]);
    assert!(
        second["prompt_tokens"].as_u64() > first_req["prompt_tokens"].as_u64().map(|p| p + 5),
        "the follow-up was sent with the session's context: {recent:?}"
    );
    b.shot("conversation").await?;

    // A second session starts from the welcome, by a quick prompt.
    b.click("#new-session").await?;
    b.wait_text("#welcome-message", "Hello from Acme").await?;
    b.click(".quick-prompt").await?;
    // A streamed answer: as long as the demo model likes (see ANSWER_WAIT).
    b.until_within(
        "the quick prompt's answer",
        "document.querySelector(\".msg.assistant[data-done='1']\")",
        ANSWER_WAIT,
    )
    .await?;
    b.until(
        "two sessions listed",
        "document.querySelectorAll('#sessions li').length === 2",
    )
    .await?;
    assert_eq!(
        b.count("#messages .msg").await?,
        2,
        "only the new session's messages"
    );
    b.shot("second-session").await?;
    // The first session is still there, with its four messages.
    b.click(&format!("#sessions button[data-session='{first}']"))
        .await?;
    b.until(
        "the first session's messages",
        "document.querySelectorAll('#messages .msg').length === 4",
    )
    .await?;

    // A revoked key: the next message says so instead of failing silently.
    let key_id = up.key_id("acme")?;
    up.admin(&["key", "revoke", &key_id])?;
    refused(&up, &key).await?;
    b.fill("#prompt", "Are you there?").await?;
    b.click("#send").await?;
    // Back on the sign-in page, saying why.
    b.wait_text("#app", "no longer valid").await?;
    assert_eq!(b.count("#tenant-key").await?, 1);
    b.shot("revoked-key").await?;

    // A user's key: "My sessions", none of the tenant-wide key's, then its own.
    let alice = up.user_key("acme", "alice")?;
    eventually("alice's key to reach the gateway", WAIT, || async {
        let a = up.api.send(up.api.get("/v1/tenant", &alice)).await.ok()?;
        (a.status == 200).then_some(())
    })
    .await?;
    b.sign_in_tenant(&up.console, &alice).await?;
    assert_eq!(sessions_title(&b).await?, "My sessions (alice)");
    assert_eq!(b.count("#sessions li").await?, 0, "not the other sessions");
    b.send("Hello, I am Alice.").await?;
    b.until(
        "alice's own session listed",
        "document.querySelectorAll('#sessions li').length === 1",
    )
    .await?;
    b.shot("my-sessions").await?;
    let mine = up.api.send(up.api.get("/v1/sessions", &alice)).await?.body;
    assert_eq!(mine["data"][0]["user"], "alice", "{mine}");

    // A spent quota: the gateway's 429 text, with when it resets.
    let tiny = up.tenant_with_key(
        "tiny",
        &["--daily-tokens", "60", "--max-request-tokens", "60"],
    )?;
    // Spend the day's 60 tokens through the API.
    let mut spent = false;
    for _ in 0..5 {
        let a = up
            .api
            .chat(
                &tiny,
                json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .await?;
        if a.status == 429 {
            spent = true;
            break;
        }
    }
    assert!(spent, "tiny's quota is spent");
    b.sign_in_tenant(&up.console, &tiny).await?;
    b.fill("#prompt", "Hi again").await?;
    b.click("#send").await?;
    let refusal = b
        .wait_text("#chat-error", "daily token quota exceeded")
        .await?;
    assert!(refusal.contains("resets in"), "{refusal}");
    b.shot("quota-refused").await?;

    // A model that is still loading: progress, then the answer once it is.
    let slow = up.tenant_with_key("slow", &["--model", "big"])?;
    register_loading_worker(&up, "big", 0.4).await?;
    eventually("the gateway to see the model loading", WAIT, || {
        let (up, slow) = (&up, &slow);
        async move {
            let a = up.api.send(up.api.get("/v1/tenant", slow)).await.ok()?;
            (a.body["model_status"]["state"] == "loading").then_some(())
        }
    })
    .await?;
    b.sign_in_tenant(&up.console, &slow).await?;
    b.wait_text("#model-status", "40% done").await?;
    b.fill("#prompt", "Hello?").await?;
    b.click("#send").await?;
    register_loading_worker(&up, "big", 0.75).await?;
    b.wait_text("#model-status", "75% done").await?;
    assert_eq!(
        b.js("return document.getElementById('model-progress').value")
            .await?,
        json!(75)
    );
    assert_eq!(
        b.count("#chat-error .alert").await?,
        0,
        "loading is not an error"
    );
    b.shot("model-loading").await?;
    // The same over the API: 503 with the code and the progress.
    let loading = up
        .api
        .send(up.api.post("/v1/chat/completions", &slow).json(&json!({
            "model": "big", "messages": [{"role": "user", "content": "hi"}]})))
        .await?;
    assert_eq!(loading.status, 503);
    assert_eq!(loading.code(), "model_loading");
    assert_eq!(loading.headers["retry-after"], "2");
    // Stop ends the wait at once.
    b.click("#stop").await?;
    b.wait_text("#chat-error", "Stopped").await?;
    b.close().await?;

    // A browser set to Simplified Chinese: the chat's words, and the
    // gateway's refusal, in Chinese.
    let zh = Browser::start_in("tenant-zh", dir.path(), "zh-CN").await?;
    zh.sign_in_tenant(&up.console, &alice).await?;
    assert_eq!(sessions_title(&zh).await?, "我的会话（alice）");
    assert_eq!(zh.text("#send").await?, "发送");
    zh.sign_in_tenant(&up.console, &tiny).await?;
    zh.fill("#prompt", "你好").await?;
    zh.click("#send").await?;
    zh.wait_text("#chat-error", "已超出每日 token 配额").await?;
    zh.shot("quota-refused-zh").await?;
    zh.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_tenants_and_exports_usage_in_the_browser() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let b = Browser::start("operator", &downloads).await?;

    b.c.goto(&format!("{}/", up.console)).await?;
    b.fill("#admin-token", "bka_wrong").await?;
    b.click("#admin-signin-button").await?;
    b.wait_text("#admin-signin-error", "not valid").await?;
    b.fill("#admin-token", &up.admin_token).await?;
    b.click("#admin-signin-button").await?;
    b.until(
        "the tenants page",
        "document.getElementById('tenants-table')",
    )
    .await?;

    // Create a tenant from the form.
    b.click("#new-tenant").await?;
    b.fill("#tf-id", "globex").await?;
    b.fill("#tf-display_name", "Globex Corp").await?;
    b.fill("#tf-daily_tokens", "50000").await?;
    b.fill("#tf-max_request_tokens", "2000").await?;
    b.fill("#tf-welcome_message", "Welcome to Globex.").await?;
    b.fill("#tf-quick_prompts", "Count to three.").await?;
    b.click("#tf-save").await?;
    b.wait_text("#tenant-detail", "Saved globex").await?;
    assert!(b.text("#tenants-table").await?.contains("Globex Corp"));
    // The same id again is refused with the control plane's reason, and
    // nothing changes.
    b.click("#new-tenant").await?;
    b.fill("#tf-id", "globex").await?;
    b.fill("#tf-display_name", "Another").await?;
    b.click("#tf-save").await?;
    b.wait_text("#tenant-form-error", "already exists").await?;
    let t = up
        .api
        .send(up.api.get("/admin/v1/tenants/globex", &up.admin_token))
        .await?;
    assert_eq!(t.body["display_name"], "Globex Corp");
    b.shot("tenants").await?;

    // Edit: the new welcome message reaches the tenant's users.
    b.click("tr[data-tenant='globex'] button.edit").await?;
    b.fill("#tf-welcome_message", "Welcome back to Globex.")
        .await?;
    b.click("#tf-save").await?;
    b.wait_text("#tenant-detail", "Saved globex").await?;

    // A key, shown once.
    b.click("tr[data-tenant='globex'] button.keys").await?;
    b.fill("#key-name", "browser").await?;
    b.click("#create-key").await?;
    let key = b.wait_text("#new-key-secret", "bk_").await?;
    let profile = eventually("the new key accepted", WAIT, || {
        let (up, key) = (&up, key.trim().to_owned());
        async move {
            let a = up.api.send(up.api.get("/v1/tenant", &key)).await.ok()?;
            (a.status == 200).then_some(a)
        }
    })
    .await?;
    assert_eq!(profile.body["welcome_message"], "Welcome back to Globex.");
    b.shot("key-created").await?;

    // Two users chat through the API.
    for (user, question) in [
        ("alice", "Count to three."),
        ("bob", "Name a fruit."),
        ("alice", "Count to three."),
    ] {
        let a = up
            .api
            .send(
                up.api
                    .post("/v1/chat/completions", key.trim())
                    .header("x-user-id", user)
                    .json(&json!({"model": MODEL, "max_tokens": 8,
                                  "messages": [{"role": "user", "content": question}]})),
            )
            .await?;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }

    // Usage: today against the quota, per user, top prompts, the chart.
    let used = eventually("three requests in the ledger", WAIT, || {
        let up = &up;
        async move {
            let u = usage_report(up, "globex").await?;
            let today = u["days"].as_array()?.first()?.clone(); // newest first
            (today["requests"] == 3).then(|| {
                today["prompt_tokens"].as_u64().unwrap_or(0)
                    + today["completion_tokens"].as_u64().unwrap_or(0)
            })
        }
    })
    .await?;
    b.c.goto(&format!("{}/#/usage/globex", up.console)).await?;
    let today = b.wait_text("#today-used", "of 50,000").await?;
    assert!(
        today.starts_with(&format_number(used)),
        "today's tokens {today:?}, ledger {used}"
    );
    b.until("the chart", "document.querySelector('#usage-chart canvas')")
        .await?;
    let users = b.text("#user-totals tbody").await?;
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
    let top = b.text("#top-prompts tbody").await?;
    assert!(
        top.starts_with("Count to three.\t2") || top.starts_with("Count to three. 2"),
        "{top}"
    );
    assert!(b.text("#p95-latency").await?.ends_with("ms"));
    b.shot("usage-by-day").await?;
    b.click("#gran-week").await?;
    b.until("the weekly chart", "document.querySelector('#usage-chart canvas') && document.querySelector('h2').innerText !== ''")
        .await?;
    b.wait_text("#usage-body", "Tokens by week").await?;
    b.click("#gran-month").await?;
    b.wait_text("#usage-body", "Tokens by month").await?;

    // The CSV: one row per user and day, users as keyed hashes, no text.
    b.click("#export-csv").await?;
    let from = b
        .js("return document.getElementById('usage-from').value")
        .await?;
    let to = b
        .js("return document.getElementById('usage-to').value")
        .await?;
    let file = downloads.join(format!(
        "usage-globex-{}-to-{}.csv",
        from.as_str().unwrap_or_default(),
        to.as_str().unwrap_or_default()
    ));
    let csv = eventually("the downloaded CSV", WAIT, || {
        let file = file.clone();
        async move { std::fs::read_to_string(&file).ok() }
    })
    .await?;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("day,user,tokens,requests"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows.iter()
            .all(|r| r[1].starts_with("u_") && r[1].len() == 18),
        "{csv}"
    );
    assert!(!csv.contains("alice") && !csv.contains("bob") && !csv.contains("Count"));
    let requests: u64 = rows.iter().map(|r| r[3].parse::<u64>().unwrap_or(0)).sum();
    let tokens: u64 = rows.iter().map(|r| r[2].parse::<u64>().unwrap_or(0)).sum();
    assert_eq!((requests, tokens), (3, used), "{csv}");
    b.wait_text("#usage-error", "Exported 2 rows").await?;

    // The live monitor: the worker, its model, and the tenant.
    b.c.goto(&format!("{}/#/monitor", up.console)).await?;
    b.wait_text("#monitor-workers", "worker-1").await?;
    assert!(b.text("#monitor-workers").await?.contains(MODEL));
    // No GPU on a CPU build: the GPU memory column says where it runs.
    assert!(b.text("#monitor-workers").await?.contains("CPU"));
    b.wait_text("#monitor-tenants", "Globex Corp").await?;
    let tenants = b.text("#monitor-tenants").await?;
    assert!(tenants.contains("ready"), "{tenants}");
    // Today's tokens against the quota, as the ledger holds them.
    assert!(
        tenants.contains(&format!("{} of 50,000", format_number(used))),
        "{tenants}"
    );
    b.shot("monitor").await?;

    // Bursts, webhooks, audit: what the control plane has.
    b.c.goto(&format!("{}/#/bursts", up.console)).await?;
    b.until(
        "the bursts table",
        "document.getElementById('bursts-table')",
    )
    .await?;
    b.c.goto(&format!("{}/#/webhooks", up.console)).await?;
    b.fill("#wh-url", "ftp://nowhere").await?;
    b.click("#wh-add").await?;
    b.wait_text("#webhook-error", "url").await?;
    b.c.goto(&format!("{}/#/audit/globex", up.console)).await?;
    b.wait_text("#audit-table", "key").await?;
    b.click("#audit-verify").await?;
    b.wait_text("#audit-verdict", "chains hold").await?;
    b.shot("audit").await?;

    // Revoke the key, then delete the tenant (after the browser's confirm).
    b.c.goto(&format!("{}/#/tenants/globex/keys", up.console))
        .await?;
    b.click("#keys-table button.revoke").await?;
    b.wait_text("#keys-table", "revoked").await?;
    refused(&up, key.trim()).await?;
    b.click("tr[data-tenant='globex'] button.delete").await?;
    b.c.accept_alert().await?;
    b.wait_text("#tenant-detail", "archive written").await?;
    assert_eq!(b.count("tr[data-tenant='globex']").await?, 0);
    b.shot("deleted").await?;
    b.close().await?;
    Ok(())
}

/// The article's walkthrough (§4.3) in one browser: two tabs signed in as
/// two tenants, sales and HR, ask and follow up in turn. Each follow-up's
/// prompt carries its own session's history (its prompt grew by its own
/// turns) and none of the other's (each transcript holds only its own code
/// word); every request of each tab carried its own tenant's X-Tenant-ID.
/// The enterprise tab shows the burst-request box and files one; the basic
/// tab does not show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_of_one_browser_chat_as_two_tenants() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = Up::start(dir.path()).await?;
    let sales = up.tenant_with_key("sales", &["--plan", "enterprise"])?;
    let hr = up.tenant_with_key("hr", &["--plan", "basic"])?;
    let b = Browser::start("two-tabs", dir.path()).await?;
    // Records the X-Tenant-ID of every call the page makes.
    let record = "window.__calls = []; const f = window.fetch;
        window.fetch = (url, o = {}) => { window.__calls.push([String(url), (o.headers || {})['x-tenant-id'] || null]); return f(url, o); };
        return true";
    b.sign_in_tenant(&up.console, &sales).await?;
    b.js(record).await?;
    let tab1 = b.c.window().await?;
    let tab2 = b.c.new_window(true).await?.handle;
    b.c.switch_to_window(tab2.clone()).await?;
    b.sign_in_tenant(&up.console, &hr).await?;
    b.js(record).await?;

    let steps = [
        (&tab1, "Remember this code word: PINEAPPLE."),
        (&tab2, "Remember this code word: GIRAFFE."),
        (&tab1, "Repeat the code word."),
        (&tab2, "Repeat the code word."),
    ];
    for (tab, text) in steps {
        b.c.switch_to_window((*tab).clone()).await?;
        b.send(text).await?;
    }
    b.shot("hr-tab").await?;
    assert_eq!(b.count("#burst-form").await?, 0, "basic has no bursts");
    assert_eq!(b.count("#use-code-run").await?, 0, "basic has no code_run");
    b.c.switch_to_window(tab1.clone()).await?;
    b.shot("sales-tab").await?;

    for (tab, tenant, key, own, other) in [
        (&tab1, "sales", &sales, "PINEAPPLE", "GIRAFFE"),
        (&tab2, "hr", &hr, "GIRAFFE", "PINEAPPLE"),
    ] {
        b.c.switch_to_window(tab.clone()).await?;
        let calls = b.js("return window.__calls").await?;
        let calls = calls.as_array().context("calls")?;
        assert!(
            calls.iter().any(|c| c[0]
                .as_str()
                .is_some_and(|u| u.contains("/v1/chat/completions"))),
            "{calls:?}"
        );
        for c in calls {
            assert_eq!(c[1], tenant, "the {tenant} tab sent {c:?}");
        }
        let sessions = up.api.send(up.api.get("/v1/sessions", key)).await?.body;
        let listed = sessions["data"].as_array().context("sessions")?;
        assert_eq!(listed.len(), 1, "{sessions}");
        let id = listed[0]["id"].as_str().context("id")?;
        let (turns, words) = session_messages(&up, key, id).await?;
        assert_eq!(words.len(), 4, "{turns}");
        let all = words.join(" ");
        assert!(all.contains(own) && !all.contains(other), "{tenant}: {all}");
        let recent = two_recent_requests(&up, tenant).await?;
        // Newest first: the follow-up's prompt holds its own first exchange.
        let (follow, first) = (&recent[0], &recent[1]);
        assert!(
            follow["prompt_tokens"].as_u64() > first["prompt_tokens"].as_u64().map(|p| p + 5),
            "{tenant}'s follow-up was sent with its session's context: {recent:?}"
        );
    }

    // Sales (enterprise) asks for more quota from its tab.
    b.c.switch_to_window(tab1).await?;
    b.fill(
        "#burst-reason",
        "Quarter close: every rep is drafting offers.",
    )
    .await?;
    b.click("#burst-request").await?;
    b.wait_text("#burst-status", "pending").await?;
    let listed = up.admin(&["burst", "list", "--tenant", "sales"])?;
    assert!(listed.contains("pending"), "{listed}");
    b.shot("burst-requested").await?;

    // Enterprise has code_run: the model's code runs in the sandbox, and the
    // step shows in the chat above the answer. In a session of its own: the
    // first one's rambling answers and the tool's result may not fit the
    // demo model's 2,048-token context together.
    b.click("#new-session").await?;
    b.click("#use-code-run").await?;
    b.send("Run this Python code: open('report.csv', 'w').write('name,total')")
        .await?;
    let step = b.text(".msg.tool-step").await?;
    assert!(step.starts_with("code_run · "), "{step}");
    b.shot("tool-step").await?;
    b.close().await
}

/// Waits until the gateway refuses `key` (a revocation travels on the watch
/// stream), with the API's code for it.
/// The sidebar's heading over the session list, as written (not as styled).
async fn sessions_title(b: &Browser) -> anyhow::Result<String> {
    Ok(
        b.js("return document.getElementById('sessions-title').textContent")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn refused(up: &Up, key: &str) -> anyhow::Result<()> {
    let a = eventually("the revoked key refused", WAIT, || async move {
        let a = up.api.send(up.api.get("/v1/tenant", key)).await.ok()?;
        (a.status == 401).then_some(a)
    })
    .await?;
    assert_eq!(a.code(), "invalid_api_key");
    Ok(())
}

/// The admin API's usage report of `tenant` (the last 7 days).
async fn usage_report(up: &Up, tenant: &str) -> Option<Value> {
    let path = format!("/admin/v1/tenants/{tenant}/usage");
    let a = up.api.send(up.api.get(&path, &up.admin_token)).await.ok()?;
    (a.status == 200).then_some(a.body)
}

/// The stored messages of session `id`, read with `key`: the answer's body
/// and the messages' contents in order.
async fn session_messages(up: &Up, key: &str, id: &str) -> anyhow::Result<(Value, Vec<String>)> {
    let path = format!("/v1/sessions/{id}/messages");
    let turns = up.api.send(up.api.get(&path, key)).await?.body;
    let contents = turns["data"]
        .as_array()
        .context("turns")?
        .iter()
        .filter_map(|t| t["content"].as_str())
        .map(str::to_owned)
        .collect();
    Ok((turns, contents))
}

/// The recent requests of `tenant`'s usage report, newest first, once it
/// lists at least two.
async fn two_recent_requests(up: &Up, tenant: &str) -> anyhow::Result<Vec<Value>> {
    let usage = eventually("both requests in the usage report", WAIT, || async move {
        let u = usage_report(up, tenant).await?;
        (u["recent"].as_array()?.len() >= 2).then_some(u)
    })
    .await?;
    Ok(usage["recent"].as_array().context("recent")?.clone())
}

/// `n` as the console writes it (en-US grouping).
fn format_number(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
