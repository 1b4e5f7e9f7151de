//! Models loaded without a restart: a tenant moved to a model that no worker
//! serves, whose file is in a worker's `--model-dir`, gets it loaded live and
//! answered; when the worker's memory budget has room for one such model, the
//! model no tenant uses any more is unloaded to make room. A model nobody has
//! is refused with a clear 503, and `tenant update` warns about it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bulkhead_proto::control as pb;
use bulkhead_tests::demo_model;
use bulkhead_tests::system::{Answer, Up, eventually};
use serde_json::json;

/// The models the worker has loaded now.
async fn loaded(up: &Up) -> Vec<String> {
    let client = up.admin_client();
    let list = client
        .admin()
        .send(pb::ListWorkersRequest {}, |mut c, req| async move {
            c.list_workers(req).await
        })
        .await
        .unwrap();
    let mut models: Vec<String> = list.workers.into_iter().flat_map(|w| w.models).collect();
    models.sort();
    models
}

async fn ask(up: &Up, key: &str, model: &str) -> Answer {
    up.api
        .chat(
            key,
            json!({
                "model": model,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
                "temperature": 0,
            }),
        )
        .await
        .unwrap()
}

/// Asks until the answer is a 200 (the model is loading until then).
async fn answered(up: &Up, key: &str, model: &str) -> Answer {
    eventually(
        &format!("an answer from `{model}`"),
        Duration::from_secs(90),
        || async {
            let a = ask(up, key, model).await;
            (a.status == 200).then_some(a)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_moved_to_an_unserved_model_gets_it_loaded_and_the_unused_one_is_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    // Two "different" models: links to the demo model's file under other names.
    for name in ["alpha", "beta"] {
        std::os::unix::fs::symlink(demo_model(), models.path().join(format!("{name}.gguf")))
            .unwrap();
    }
    // Room for the pinned demo model and one more, not two.
    let file_mib = std::fs::metadata(demo_model()).unwrap().len() >> 20;
    let budget = (file_mib * 5 / 2).to_string();
    let mut up = Up::start_with(
        dir.path(),
        &[
            "--model-dir",
            models.path().to_str().unwrap(),
            "--model-memory-mib",
            &budget,
        ],
    )
    .await
    .unwrap();
    assert_eq!(loaded(&up).await, ["smollm2"]);

    let key = up.tenant_with_key("sales", &[]).unwrap();
    let out = up
        .admin(&["tenant", "update", "sales", "--model", "alpha"])
        .unwrap();
    assert!(
        out.contains("model `alpha` of tenant `sales` is not loaded yet")
            || out.contains("model `alpha` of tenant `sales` is loading"),
        "{out}"
    );
    let a = answered(&up, &key, "alpha").await;
    assert_eq!(a.body["model"], "alpha", "{:?}", a.body);
    assert!(a.body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(loaded(&up).await, ["alpha", "smollm2"]);

    // Moved on: beta needs alpha's room, and no tenant uses alpha any more.
    up.admin(&["tenant", "update", "sales", "--model", "beta"])
        .unwrap();
    let a = answered(&up, &key, "beta").await;
    assert_eq!(a.body["model"], "beta", "{:?}", a.body);
    let now = eventually("alpha to be unloaded", Duration::from_secs(20), || async {
        let now = loaded(&up).await;
        (now == ["beta", "smollm2"]).then_some(now)
    })
    .await
    .unwrap();
    assert_eq!(now, ["beta", "smollm2"]);
    let line = up
        .process
        .wait_for("unloading a model no tenant uses", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("alpha") && line.contains("beta"), "{line}");
    // The pinned demo model still answers another tenant.
    let other = up.tenant_with_key("hr", &[]).unwrap();
    assert_eq!(ask(&up, &other, "smollm2").await.status, 200);

    // A model no worker has: a warning now, a clear 503 on use.
    let out = up
        .admin(&["tenant", "update", "sales", "--model", "gamma"])
        .unwrap();
    assert!(
        out.contains(
            "no worker serves model `gamma` of tenant `sales`, and none has a file `gamma.gguf`"
        ),
        "{out}"
    );
    let a = eventually(
        "the tenant's new model to reach the gateway",
        Duration::from_secs(20),
        || async {
            let a = ask(&up, &key, "gamma").await;
            (a.status != 404).then_some(a)
        },
    )
    .await
    .unwrap();
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gamma"),
        "{:?}",
        a.body
    );
}
