//! Decoding runs on a bounded pool (`[http] decode_workers`): with one place, concurrent
//! messages of every ingest route still each get their own, right answer.

use serde_json::json;

use crate::helpers::{Backend, mappings_dir, spawn_app_with};

async fn one_decode_place_serves_concurrent_messages(backend: Backend) {
    let Some(app) = spawn_app_with(backend, mappings_dir(), |s| s.http.decode_workers = 1).await
    else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let mut jobs = Vec::new();
    for i in 0..6u64 {
        let app = app.clone();
        jobs.push(tokio::spawn(async move {
            let event = json!({
                "device_id": format!("86000000000010{i}"), "seq": i, "kind": "position",
                "time": "2026-03-14T10:00:00Z",
                "position": {"lat": 13.9, "lon": -90.5, "fix": "gps"}
            });
            let by_route = app.post_events(json!([event]).to_string()).await;
            let detected = app.post("/v1/messages", json!([event]).to_string()).await;
            let malformed = app.post_events(format!("[{{\"seq\": {i},")).await;
            let unknown = app
                .post("/v1/messages", format!("not a document {i}"))
                .await;
            (by_route, detected, malformed, unknown)
        }));
    }
    for job in jobs {
        let (by_route, detected, malformed, unknown) = job.await.unwrap();
        assert_eq!(by_route.status, 202, "{}", by_route.text);
        assert_eq!(
            by_route.json()["events"]["unmatched"],
            1,
            "{}",
            by_route.text
        );
        // The same event again, its format detected: a duplicate, the first answer.
        assert_eq!(detected.status, 202, "{}", detected.text);
        assert_eq!(detected.json(), by_route.json());
        assert_eq!(malformed.status, 400, "{}", malformed.text);
        assert!(
            malformed.json()["errors"][0]["line"].is_number(),
            "{}",
            malformed.text
        );
        assert_eq!(unknown.status, 422, "{}", unknown.text);
        assert!(
            unknown.json()["detail"]
                .as_str()
                .unwrap()
                .contains("no registered format recognises this document"),
            "{}",
            unknown.text
        );
    }
    // Every message kept: 6 accepted, 6 duplicates, 12 rejected (6 of them `unknown`).
    assert_eq!(app.count_where("messages", "outcome = 'accepted'").await, 6);
    assert_eq!(
        app.count_where("messages", "outcome = 'duplicate'").await,
        6
    );
    assert_eq!(
        app.count_where("messages", "outcome = 'rejected'").await,
        12
    );
    assert_eq!(
        app.count_where("messages", "outcome = 'rejected' and format = 'unknown'")
            .await,
        6
    );
    // Translation runs on the pool too.
    let reply = app
        .post(
            "/v1/translate?from=ects-json&to=ects-json",
            json!({"device_id": "860000000000200", "seq": 1, "kind": "locked",
                   "time": "2026-03-14T10:00:00Z"})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    app.stopper.stop().await;
}

mod one_decode_place {
    #[tokio::test]
    async fn sqlite() {
        super::one_decode_place_serves_concurrent_messages(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::one_decode_place_serves_concurrent_messages(super::Backend::Postgres).await;
    }
}
