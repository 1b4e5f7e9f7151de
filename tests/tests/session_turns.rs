//! Session turns across gateways: turns are committed before the answer
//! leaves the gateway (in batches: group commit), so a gateway killed the
//! moment its answers are out loses none of them. Its own test binary: test
//! binaries run one after another, so its cluster does not load the
//! timing-sensitive tests of `gateway_cluster`.
#![allow(clippy::unwrap_used)]

use bulkhead_tests::system::{Cluster, MODEL};
use serde_json::json;

/// Six answers at once through one gateway, the gateway killed at once:
/// another gateway shows every session whole.
#[tokio::test]
async fn turns_survive_a_gateway_killed_right_after_its_answers() {
    let mut cluster = Cluster::start_sized(1, 1, 2).await.unwrap();
    let key = cluster
        .tenant_with_quota("memo", 1_000_000, 8)
        .await
        .unwrap();
    let (first, second) = (cluster.apis[0].clone(), cluster.apis[1].clone());
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let a = first
            .send(
                first
                    .post("/v1/sessions", &key)
                    .json(&json!({"title": "memo"})),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 201, "{:?}", a.body);
        sessions.push(a.body["id"].as_str().unwrap().to_owned());
    }
    // Six answers at once, so their appends share Raft entries.
    let asks = sessions.iter().enumerate().map(|(i, session)| {
        let (api, key) = (first.clone(), key.clone());
        let body = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": format!("Remember the number {i}.")}],
            "session_id": session,
            "max_tokens": 6,
            "temperature": 0,
        });
        async move { api.chat(&key, body).await.unwrap() }
    });
    let answers = futures::future::join_all(asks).await;
    cluster.gateways[0].kill();
    for (i, (session, answer)) in sessions.iter().zip(&answers).enumerate() {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let said = answer.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        let a = second
            .send(second.get(&format!("/v1/sessions/{session}/messages"), &key))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let turns: Vec<(String, String)> = a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["role"].as_str().unwrap().to_owned(),
                    t["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            turns,
            [
                ("user".to_owned(), format!("Remember the number {i}.")),
                ("assistant".to_owned(), said.to_owned()),
            ],
            "session {session}"
        );
    }
}
