//! The gateway's admin API, `/admin/v1/...`, against a real `bulkhead up`:
//! `docs/admin-openapi.yaml` lists exactly the routes the gateway serves;
//! every route refuses a request without a valid admin token in the
//! gateway's error shape; and an operator can run a tenant's life through
//! HTTP alone (create, plan change, keys, usage, bursts, webhooks, sharing,
//! config apply, audit, delete with archive), with bad input refused
//! clearly and nothing changed by a refusal.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead_gateway::admin::ROUTES;
use bulkhead_tests::system::{Up, eventually};
use serde_json::{Value, json};

/// The OpenAPI file's (METHOD, path) pairs.
fn openapi_routes() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for (key, _) in item.as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&key)
            {
                out.insert((key.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_openapi_file_lists_exactly_the_served_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-openapi.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"].as_str(),
        Some("bearer")
    );
    assert!(
        doc["security"][0]
            .as_mapping()
            .unwrap()
            .contains_key("bearerAuth"),
        "every operation needs the bearer token"
    );

    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "a route is listed twice");
    let documented = openapi_routes();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );

    // Every `{param}` of a path template is declared as a path parameter,
    // on the path or on each of its operations.
    let declared = |params: &serde_yaml::Value| -> BTreeSet<String> {
        params
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| match p.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => {
                    let name = r.rsplit('/').next().unwrap();
                    doc["components"]["parameters"][name].clone()
                }
                None => p.clone(),
            })
            .filter(|p| p["in"].as_str() == Some("path"))
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let wanted: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let on_path = declared(&item["parameters"]);
        for (method, op) in item.as_mapping().unwrap() {
            if method.as_str() == Some("parameters") {
                continue;
            }
            let mut all = on_path.clone();
            all.extend(declared(&op["parameters"]));
            assert_eq!(all, wanted, "{method:?} {path}: path parameters");
            assert!(
                op["responses"]["401"].is_mapping(),
                "{method:?} {path}: no 401 response documented"
            );
        }
    }
}

/// A client of the admin API of one gateway.
struct AdminApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// One answer: status, content type, JSON body (Null if not JSON), text.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

impl AdminApi {
    fn new(up: &Up) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: up.api.base.clone(),
            token: up.admin_token.clone(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.unwrap();
        Reply {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A call with the admin token and, if given, a JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.request(method, path, Some(&self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// A call that must succeed with `status`; returns the body.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let r = self.call(method, path, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        r.body
    }
}

/// Asserts the gateway's error shape and returns the error object.
fn error_of(r: &Reply) -> &Value {
    let e = &r.body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["type"].is_string()
            && e.get("code").is_some(),
        "not the gateway's error shape: {} {}",
        r.status,
        r.text
    );
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    e
}

/// A route template with values filled in.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "1")
        .replace("{key_id}", "key_0")
        .replace("{name}", "faq")
}

/// A body each route would accept, so that only the token is wrong.
fn plausible_body(method: &str, path: &str) -> Option<(&'static str, String)> {
    let json = |v: Value| Some(("application/json", v.to_string()));
    match (method, path) {
        ("POST", "/admin/v1/cluster/nodes") => json(json!({"id": 9, "addr": "127.0.0.1:1"})),
        ("POST", "/admin/v1/tenants") => json(json!({"id": "someone"})),
        ("PATCH", _) => json(json!({"plan": "pro"})),
        ("POST", "/admin/v1/tenant-configs") => {
            Some(("application/yaml", "tenant_id: someone\n".to_owned()))
        }
        ("POST", "/admin/v1/tenants/{id}/keys") => json(json!({"name": "ci"})),
        ("POST", "/admin/v1/tenants/{id}/bursts") => json(json!({"reason": "launch"})),
        ("POST", "/admin/v1/webhooks") => json(json!({"url": "https://example.com/hook"})),
        ("PUT", _) => json(json!({"content": "text"})),
        ("POST" | "DELETE", "/admin/v1/shares") => {
            json(json!({"owner_tenant_id": "a", "snippet": "faq", "grantee_tenant_id": "b"}))
        }
        _ => None,
    }
}

#[tokio::test]
async fn every_route_refuses_a_missing_or_wrong_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let api = AdminApi::new(&up);
    assert!(ROUTES.len() >= 28, "{} routes", ROUTES.len());
    for (method, template) in ROUTES {
        let path = concrete(template);

        let r = api.send(api.request(method, &path, None)).await;
        assert_eq!(
            r.status, 401,
            "{method} {template} without a token: {}",
            r.text
        );
        let e = error_of(&r);
        assert_eq!(e["type"], "authentication_error", "{method} {template}");
        assert_eq!(e["code"], "missing_admin_token", "{method} {template}");

        let mut req = api.request(method, &path, Some("bka_not_the_token"));
        if let Some((content_type, body)) = plausible_body(method, template) {
            req = req.header("content-type", content_type).body(body);
        }
        let r = api.send(req).await;
        assert_eq!(
            r.status, 401,
            "{method} {template} with a wrong token: {}",
            r.text
        );
        let e = error_of(&r);
        assert_eq!(e["code"], "invalid_admin_token", "{method} {template}");
        assert!(
            e["message"].as_str().unwrap().contains("token"),
            "{method} {template}: {}",
            r.text
        );
    }
    // Nothing was created by any of those.
    let tenants = api.ok("GET", "/admin/v1/tenants", None, 200).await;
    assert_eq!(tenants["tenants"], json!([]), "{tenants}");
    // The OpenAI-style API keeps its own 404 for unknown paths.
    let r = api.get("/admin/v1/nothing-here").await;
    assert_eq!(r.status, 404, "{}", r.text);
    error_of(&r);
}

/// The rows of a CSV, split at commas.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn a_tenant_lifecycle_over_http_only() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let api = AdminApi::new(&up);

    // The cluster and the plans.
    let cluster = api.ok("GET", "/admin/v1/cluster", None, 200).await;
    assert_eq!(cluster["leader_id"], cluster["node_id"], "{cluster}");
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 1, "{cluster}");
    let plans = api.ok("GET", "/admin/v1/plans", None, 200).await;
    let plan = |name: &str| {
        plans["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plan {name} in {plans}"))
    };
    let pro_daily = plan("pro")["limits"]["daily_tokens"].as_u64().unwrap();
    assert_ne!(
        pro_daily,
        plan("basic")["limits"]["daily_tokens"].as_u64().unwrap()
    );

    // Create, read, list.
    let created = api
        .ok(
            "POST",
            "/admin/v1/tenants",
            Some(json!({"id": "acme", "display_name": "Acme Corp", "plan": "basic"})),
            201,
        )
        .await;
    assert_eq!(created["id"], "acme");
    assert_eq!(created["plan"], "basic");
    let got = api.ok("GET", "/admin/v1/tenants/acme", None, 200).await;
    assert_eq!(got["display_name"], "Acme Corp");
    assert_eq!(got["limits"], created["limits"]);
    let again = api
        .call("POST", "/admin/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(error_of(&again)["code"], "tenant_exists");
    let r = api.get("/admin/v1/tenants/nobody").await;
    assert_eq!(r.status, 404, "{}", r.text);
    error_of(&r);

    // Bad JSON is a 400 that names the problem, and changes nothing.
    let r = api
        .send(
            api.request("POST", "/admin/v1/tenants", Some(&api.token))
                .header("content-type", "application/json")
                .body("{\"id\": \"x\",,}"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(error_of(&r)["code"], "invalid_json");
    let r = api
        .call("POST", "/admin/v1/tenants", Some(json!({"id": 42})))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        error_of(&r)["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{}",
        r.text
    );
    let r = api
        .call(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(json!({"plan": "pro", "colour": "red"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(error_of(&r)["param"], "colour", "{}", r.text);
    let r = api
        .call(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(json!({"plan": "platinum"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(error_of(&r)["param"], "plan", "{}", r.text);
    let listed = api.ok("GET", "/admin/v1/tenants", None, 200).await;
    assert_eq!(listed["tenants"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["tenants"][0]["plan"], "basic");
    assert_eq!(listed["tenants"][0]["version"], got["version"]);

    // A plan change moves the limits that follow the plan.
    let patched = api
        .ok(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(json!({"plan": "pro"})),
            200,
        )
        .await;
    assert_eq!(patched["plan"], "pro");
    assert_eq!(patched["limits"]["daily_tokens"], pro_daily, "{patched}");
    assert!(patched["version"].as_u64() > got["version"].as_u64());

    // A key: the plaintext is shown once, it works, revocation stops it.
    let key = api
        .ok(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(json!({"name": "ci"})),
            201,
        )
        .await;
    let plaintext = key["plaintext"].as_str().unwrap().to_owned();
    let key_id = key["key"]["key_id"].as_str().unwrap().to_owned();
    assert!(plaintext.starts_with("bk_"), "{key}");
    assert!(plaintext.starts_with(key["key"]["prefix"].as_str().unwrap()));
    let keys = api.get("/admin/v1/tenants/acme/keys").await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(keys.body["keys"][0]["key_id"], key_id.as_str());
    assert_eq!(keys.body["keys"][0]["revoked_at_ms"], 0);
    assert!(!keys.text.contains(&plaintext), "a key list shows a key");

    let answer = up.api.ask(&plaintext, "Say hi.", 4).await.unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // Usage: JSON and CSV agree, today first, the request counted.
    let usage = eventually("the request in the ledger", Duration::from_secs(30), || {
        let api = &api;
        async move {
            let u = api.get("/admin/v1/tenants/acme/usage?days=3").await;
            (u.status == 200 && u.body["days"][0]["requests"] == 1).then_some(u.body)
        }
    })
    .await
    .unwrap();
    assert_eq!(usage["tenant_id"], "acme");
    assert_eq!(usage["days"].as_array().unwrap().len(), 3, "{usage}");
    let today = usage["days"][0].clone();
    assert_eq!(today["quota"], pro_daily);
    assert!(today["completion_tokens"].as_u64().unwrap() >= 1, "{today}");
    let csv = api
        .get("/admin/v1/tenants/acme/usage?days=1&format=csv")
        .await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    assert!(csv.content_type.starts_with("text/csv"), "{csv:?}");
    let rows = csv_rows(&csv.text);
    assert_eq!(rows.len(), 2, "{}", csv.text);
    assert_eq!(
        rows[0],
        [
            "day",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "requests",
            "quota",
            "avg_latency_ms"
        ]
    );
    let field = |name: &str| today[name].as_u64().unwrap().to_string();
    assert_eq!(
        rows[1][..6],
        [
            today["day"].as_str().unwrap().to_owned(),
            field("prompt_tokens"),
            field("completion_tokens"),
            field("cached_tokens"),
            field("requests"),
            field("quota"),
        ]
    );
    let avg = today["total_latency_ms"].as_u64().unwrap() / today["requests"].as_u64().unwrap();
    assert_eq!(rows[1][6], avg.to_string());
    let r = api.get("/admin/v1/tenants/acme/usage?format=xml").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(error_of(&r)["param"], "format");

    let revoked = api
        .ok("DELETE", &format!("/admin/v1/keys/{key_id}"), None, 200)
        .await;
    assert!(revoked["revoked_at_ms"].as_i64().unwrap() > 0, "{revoked}");
    let keys = api
        .ok("GET", "/admin/v1/tenants/acme/keys", None, 200)
        .await;
    assert_eq!(keys["keys"][0]["revoked_at_ms"], revoked["revoked_at_ms"]);
    eventually("the revoked key refused", Duration::from_secs(10), || {
        let up = &up;
        let plaintext = &plaintext;
        async move {
            let a = up
                .api
                .send(up.api.get("/v1/models", plaintext))
                .await
                .ok()?;
            (a.status == 401).then_some(())
        }
    })
    .await
    .unwrap();

    // A basic tenant may not ask for a burst: a clear refusal, no burst.
    api.ok(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"id": "shop"})),
        201,
    )
    .await;
    let audit_before = api
        .ok("GET", "/admin/v1/tenants/shop/audit", None, 200)
        .await;
    let r = api
        .call(
            "POST",
            "/admin/v1/tenants/shop/bursts",
            Some(json!({"reason": "product launch"})),
        )
        .await;
    assert!(matches!(r.status, 409 | 422), "{}", r.text);
    let e = error_of(&r);
    assert_eq!(e["code"], "not_allowed");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("basic") && message.contains("burst"),
        "{message}"
    );
    let bursts = api
        .ok("GET", "/admin/v1/bursts?tenant_id=shop", None, 200)
        .await;
    assert_eq!(bursts["bursts"], json!([]));
    let audit_after = api
        .ok("GET", "/admin/v1/tenants/shop/audit", None, 200)
        .await;
    assert_eq!(audit_after, audit_before, "a refused burst left a trace");

    // An enterprise tenant asks; one request is denied, the next approved.
    api.ok(
        "POST",
        "/admin/v1/tenants",
        Some(json!({"id": "bigco", "plan": "enterprise"})),
        201,
    )
    .await;
    let burst = api
        .ok(
            "POST",
            "/admin/v1/tenants/bigco/bursts",
            Some(json!({"reason": "quarter end"})),
            201,
        )
        .await;
    assert_eq!(burst["status"], "pending");
    let pending = api
        .ok("GET", "/admin/v1/bursts?status=pending", None, 200)
        .await;
    assert_eq!(pending["bursts"].as_array().unwrap().len(), 1, "{pending}");
    let id = burst["burst_id"].as_str().unwrap();
    let denied = api
        .ok(
            "POST",
            &format!("/admin/v1/bursts/{id}/deny"),
            Some(json!({"note": "not now"})),
            200,
        )
        .await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["note"], "not now");
    assert!(
        denied["decided_by"].as_str().unwrap().contains("gateway"),
        "{denied}"
    );
    let r = api
        .call("POST", &format!("/admin/v1/bursts/{id}/approve"), None)
        .await;
    assert_eq!(r.status, 409, "deciding twice: {}", r.text);
    let burst = api
        .ok(
            "POST",
            "/admin/v1/tenants/bigco/bursts",
            Some(json!({"reason": "really quarter end"})),
            201,
        )
        .await;
    let id = burst["burst_id"].as_str().unwrap();
    let approved = api
        .ok("POST", &format!("/admin/v1/bursts/{id}/approve"), None, 200)
        .await;
    assert_eq!(approved["status"], "approved");
    let usage = api
        .ok("GET", "/admin/v1/tenants/bigco/usage?days=1", None, 200)
        .await;
    let daily = plan("enterprise")["limits"]["daily_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        usage["days"][0]["quota"].as_u64().unwrap(),
        daily + approved["extra_tokens"].as_u64().unwrap()
    );
    assert!(approved["extra_tokens"].as_u64().unwrap() > 0);

    // Webhooks: an ftp:// URL is refused by name, and the list stays as it was.
    let before = api
        .ok("GET", "/admin/v1/webhooks?tenant_id=acme", None, 200)
        .await;
    let r = api
        .call(
            "POST",
            "/admin/v1/webhooks",
            Some(json!({"tenant_id": "acme", "url": "ftp://example.com/hook"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let e = error_of(&r);
    assert_eq!(e["param"], "url", "{}", r.text);
    assert!(e["message"].as_str().unwrap().contains("url"), "{}", r.text);
    let after = api
        .ok("GET", "/admin/v1/webhooks?tenant_id=acme", None, 200)
        .await;
    assert_eq!(before, after);
    assert_eq!(after["webhooks"], json!([]));
    let hook = api
        .ok(
            "POST",
            "/admin/v1/webhooks",
            Some(json!({"tenant_id": "acme", "url": "http://127.0.0.1:9/hook", "events": ["key.created"]})),
            201,
        )
        .await;
    assert!(hook["secret"].as_str().unwrap().starts_with("whsec_"));
    let hook_id = hook["webhook"]["webhook_id"].as_str().unwrap().to_owned();
    let listed = api.get("/admin/v1/webhooks?tenant_id=acme").await;
    assert_eq!(listed.body["webhooks"].as_array().unwrap().len(), 1);
    assert!(!listed.text.contains(hook["secret"].as_str().unwrap()));
    // A key event is queued for the endpoint.
    api.ok("POST", "/admin/v1/tenants/acme/keys", None, 201)
        .await;
    let deliveries = eventually("a delivery queued", Duration::from_secs(10), || {
        let api = &api;
        let hook_id = &hook_id;
        async move {
            let d = api
                .get(&format!(
                    "/admin/v1/webhooks/deliveries?tenant_id=acme&webhook_id={hook_id}&limit=5"
                ))
                .await;
            (d.status == 200 && !d.body["deliveries"].as_array()?.is_empty()).then_some(d.body)
        }
    })
    .await
    .unwrap();
    assert_eq!(deliveries["deliveries"][0]["event_type"], "key.created");
    api.ok(
        "DELETE",
        &format!("/admin/v1/webhooks/{hook_id}"),
        None,
        200,
    )
    .await;
    let listed = api
        .ok("GET", "/admin/v1/webhooks?tenant_id=acme", None, 200)
        .await;
    assert_eq!(listed["webhooks"], json!([]));

    // Knowledge sharing: acme (pro) publishes, grants shop, revokes.
    let r = api
        .ok(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(json!({"knowledge_share": true})),
            200,
        )
        .await;
    assert_eq!(r["knowledge_share"], true);
    let snippet = api
        .ok(
            "PUT",
            "/admin/v1/tenants/acme/snippets/faq",
            Some(json!({"content": "Opening hours: 9 to 5."})),
            200,
        )
        .await;
    assert_eq!(snippet["name"], "faq");
    let r = api
        .call(
            "PUT",
            "/admin/v1/tenants/shop/snippets/prices",
            Some(json!({"content": "cheap"})),
        )
        .await;
    assert!(matches!(r.status, 409 | 403), "basic publishes: {}", r.text);
    let snippets = api
        .ok("GET", "/admin/v1/snippets?tenant_id=acme", None, 200)
        .await;
    assert_eq!(snippets["snippets"].as_array().unwrap().len(), 1);
    let grant = json!({"owner_tenant_id": "acme", "snippet": "faq", "grantee_tenant_id": "shop"});
    api.ok("POST", "/admin/v1/shares", Some(grant.clone()), 201)
        .await;
    let shares = api
        .ok("GET", "/admin/v1/shares?tenant_id=shop", None, 200)
        .await;
    assert_eq!(shares["grants"].as_array().unwrap().len(), 1, "{shares}");
    api.ok(
        "DELETE",
        "/admin/v1/shares?owner_tenant_id=acme&snippet=faq&grantee_tenant_id=shop",
        None,
        200,
    )
    .await;
    let shares = api
        .ok("GET", "/admin/v1/shares?tenant_id=shop", None, 200)
        .await;
    assert_eq!(shares["grants"], json!([]));
    api.ok("POST", "/admin/v1/shares", Some(grant.clone()), 201)
        .await;
    api.ok("DELETE", "/admin/v1/shares", Some(grant), 200).await;
    api.ok("DELETE", "/admin/v1/tenants/acme/snippets/faq", None, 200)
        .await;

    // Config apply: YAML documents, all or nothing, then unchanged.
    let yaml = "tenant_id: cfg-a\nplan: pro\nmax_concurrent: 3\n---\ntenant_id: cfg-b\n";
    let apply = |body: &'static str| {
        api.request(
            "POST",
            "/admin/v1/tenant-configs?source=ops.yaml",
            Some(&api.token),
        )
        .header("content-type", "application/yaml")
        .body(body)
    };
    let r = api.send(apply(yaml)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let actions: Vec<&str> = r.body["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["created", "created"], "{}", r.text);
    let r = api.send(apply(yaml)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["action"] == "unchanged"),
        "{}",
        r.text
    );
    let r = api
        .send(apply("tenant_id: cfg-c\nmax_concurent: 3\n"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let e = error_of(&r);
    assert!(
        e["message"].as_str().unwrap().contains("max_concurent"),
        "{}",
        r.text
    );
    let r = api
        .send(apply(
            "tenant_id: cfg-c\n---\ntenant_id: cfg-d\nplan: gold\n",
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        api.get("/admin/v1/tenants/cfg-c").await.status,
        404,
        "a refused apply created a tenant"
    );
    let cfg = api.ok("GET", "/admin/v1/tenants/cfg-a", None, 200).await;
    assert_eq!(cfg["limits"]["max_concurrent"], 3);

    // The audit trail: every change, made through this gateway.
    let audit = api
        .ok("GET", "/admin/v1/tenants/acme/audit?limit=100", None, 200)
        .await;
    let records = audit["records"].as_array().unwrap();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "tenant.created",
        "tenant.updated",
        "key.created",
        "key.revoked",
    ] {
        assert!(actions.contains(&wanted), "{wanted} not in {actions:?}");
    }
    for r in records {
        let actor = r["actor"].as_str().unwrap();
        assert!(
            actor.contains("gateway gateway-1 from 127.0.0.1"),
            "actor {actor:?}"
        );
    }
    let last = api
        .ok("GET", "/admin/v1/tenants/acme/audit?limit=2", None, 200)
        .await;
    assert_eq!(last["records"].as_array().unwrap().len(), 2);
    assert_eq!(last["records"][1], records[records.len() - 1]);
    let verified = api
        .ok("GET", "/admin/v1/audit/verify?tenant_id=acme", None, 200)
        .await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["records"], records.len());
    let all = api.ok("GET", "/admin/v1/audit/verify", None, 200).await;
    assert_eq!(all["ok"], true, "{all}");
    assert!(all["chains"].as_u64().unwrap() >= 3, "{all}");
    let r = api.get("/admin/v1/audit/verify?tenant=acme").await;
    assert_eq!(r.status, 400, "an unknown query parameter: {}", r.text);

    // Delete: the archive is written first, and then the tenant is gone.
    let deleted = api.ok("DELETE", "/admin/v1/tenants/acme", None, 200).await;
    assert_eq!(deleted["tenant"]["id"], "acme");
    let archive = std::path::PathBuf::from(deleted["archive_path"].as_str().unwrap());
    assert!(archive.is_file(), "no archive at {}", archive.display());
    let text = std::fs::read_to_string(&archive).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"kind\":\"tenant\"")),
        "{text}"
    );
    assert!(!text.contains(&plaintext), "the archive holds a key");
    let r = api.get("/admin/v1/tenants/acme").await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = api.call("DELETE", "/admin/v1/tenants/acme", None).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn a_rotated_admin_token_replaces_the_old_one_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let file = dir.path().join("admin.token");
    let out = up
        .admin(&["admin-token", "rotate", "--write", file.to_str().unwrap()])
        .unwrap();
    let new = out.lines().last().unwrap().trim().to_owned();
    assert!(new.starts_with("bka_") && new != up.admin_token, "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), new);
    // The old token is refused by the CLI's gRPC calls and by the admin HTTP API.
    let err = up.admin(&["tenant", "list"]).unwrap_err().to_string();
    assert!(err.contains("admin token is wrong"), "{err}");
    let old = up
        .api
        .send(up.api.get("/admin/v1/tenants", &up.admin_token))
        .await
        .unwrap();
    assert_eq!(old.status, 401, "{:?}", old.body);
    let metrics = up
        .api
        .http
        .get(format!("{}/metrics", up.api.base))
        .bearer_auth(&up.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 401);
    // The new one works at once.
    bulkhead_tests::system::admin(&up.control_plane, &new, &["tenant", "list"]).unwrap();
    let fresh = up
        .api
        .send(up.api.get("/admin/v1/tenants", &new))
        .await
        .unwrap();
    assert_eq!(fresh.status, 200, "{:?}", fresh.body);
}
