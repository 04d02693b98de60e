use serde_json::json;

use crate::helpers::{TestApp, fixture};
use crate::on_both_backends;

on_both_backends!(
    trips_are_found_by_reference_and_state,
    unknown_and_malformed_trip_ids_are_told_apart,
    bad_query_parameters_are_refused,
);

async fn trips_are_found_by_reference_and_state(app: TestApp) {
    let gt = app.declare_gt_sv().await;
    let reply = app
        .post_message(fixture("ects-json/declaration-ke-ug.json"))
        .await;
    let ke = reply.json()["trips"][0].as_str().unwrap().to_owned();

    let found = app.get("/v1/trips?reference=GT-2026-T-000123").await;
    assert_eq!(found.status, 200);
    let found = found.json();
    assert_eq!(found["trips"].as_array().unwrap().len(), 1);
    assert_eq!(found["trips"][0]["trip_id"], gt);

    let other_authority = app
        .get("/v1/trips?reference=GT-2026-T-000123&authority=SV")
        .await
        .json();
    assert_eq!(other_authority["trips"], json!([]));
    let none = app.get("/v1/trips?reference=NOPE-1").await.json();
    assert_eq!(none["trips"], json!([]));

    let all = app.get("/v1/trips").await.json();
    assert_eq!(all["trips"].as_array().unwrap().len(), 2);
    let one = app.get("/v1/trips?limit=1").await.json();
    assert_eq!(one["trips"].as_array().unwrap().len(), 1);

    app.post_events(fixture("ects-json/events-gt-sv.json"))
        .await;
    let armed = app.get("/v1/trips?state=in_transit").await.json();
    assert_eq!(armed["trips"].as_array().unwrap().len(), 1);
    assert_eq!(armed["trips"][0]["trip_id"], gt);
    let declared = app.get("/v1/trips?state=declared").await.json();
    assert_eq!(declared["trips"][0]["trip_id"], ke);
}

async fn unknown_and_malformed_trip_ids_are_told_apart(app: TestApp) {
    let missing = app
        .get("/v1/trips/01a1fdea-56ce-7428-ace2-433c7aa63ea3")
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type(), "application/problem+json");
    let events = app
        .get("/v1/trips/01a1fdea-56ce-7428-ace2-433c7aa63ea3/events")
        .await;
    assert_eq!(events.status, 404);
    let malformed = app.get("/v1/trips/not-a-uuid").await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.json()["detail"].as_str().unwrap().contains("id"));
}

async fn bad_query_parameters_are_refused(app: TestApp) {
    for path in [
        "/v1/trips?limit=0",
        "/v1/trips?limit=100000",
        "/v1/trips?limit=ten",
        "/v1/trips?state=lost",
        "/v1/trips?colour=red",
        "/v1/alerts?status=maybe",
        "/v1/alerts?trip=123",
        "/v1/alerts?kind=meteor",
    ] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json", "{path}");
    }
}
