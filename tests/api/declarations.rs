use ects_gateway::schemas::Canonical;
use serde_json::Value;

use crate::helpers::{TestApp, assert_valid, fixture, fixture_json};
use crate::on_both_backends;

on_both_backends!(
    a_declaration_creates_a_trip,
    a_resent_declaration_gets_the_same_answer,
    a_changed_declaration_is_refused_and_changes_nothing,
    the_raw_message_is_kept_as_received,
);

async fn a_declaration_creates_a_trip(app: TestApp) {
    let reply = app
        .post_message(fixture("ects-json/declaration-gt-sv.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let body = reply.json();
    let trip_id = body["trips"][0].as_str().unwrap();
    assert_eq!(body["declaration"]["declaration_id"], "GT-2026-T-000123");
    assert_eq!(body["declaration"]["trip_id"], trip_id);
    assert!(body["message_id"].is_string());

    let trip = app.trip(trip_id).await;
    assert_eq!(trip["state"], "declared");
    assert_eq!(trip["custodian"], "GT");
    assert_eq!(trip["issuing_authority"], "GT");
    assert_eq!(trip["office_of_destination"], "SVSAL");
    assert_eq!(trip["equipment"].as_array().unwrap().len(), 2);
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "unknown");
    assert_eq!(trip["last_position"], Value::Null);
    assert_eq!(trip["open_alerts"], serde_json::json!([]));

    // A second, different declaration makes a second trip.
    let reply = app
        .post_message(fixture("ects-json/declaration-ke-ug.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_ne!(reply.json()["trips"][0], trip_id);
    assert_eq!(app.count("trips").await, 2);
}

async fn a_resent_declaration_gets_the_same_answer(app: TestApp) {
    let first = app
        .post_message(fixture("ects-json/declaration-gt-sv.json"))
        .await;
    assert_eq!(first.status, 202);
    assert!(first.headers.get("idempotent-replayed").is_none());

    // Byte for byte.
    let again = app
        .post_message(fixture("ects-json/declaration-gt-sv.json"))
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.text, first.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Same content, other bytes (compact, re-serialised).
    let compact = fixture_json("ects-json/declaration-gt-sv.json").to_string();
    let reformatted = app.post_message(compact).await;
    assert_eq!(reformatted.status, 202, "{}", reformatted.text);
    assert_eq!(reformatted.text, first.text);
    assert_eq!(reformatted.headers["idempotent-replayed"], "true");

    assert_eq!(app.count("trips").await, 1);
    assert_eq!(app.count("declarations").await, 1);
    // Every message is kept as evidence: one accepted, two duplicates.
    assert_eq!(app.count_where("messages", "outcome = 'accepted'").await, 1);
    assert_eq!(
        app.count_where("messages", "outcome = 'duplicate'").await,
        2
    );
}

async fn a_changed_declaration_is_refused_and_changes_nothing(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let before = app.trip(&trip_id).await;

    let mut changed = fixture_json("ects-json/declaration-gt-sv.json");
    changed["vehicle"]["plate"] = "C999ZZZ".into();
    let reply = app.post_message(changed.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert_eq!(
        reply.pointers(),
        vec!["/vehicle/plate"],
        "points at what differs"
    );

    assert_eq!(app.trip(&trip_id).await, before);
    assert_eq!(app.count("trips").await, 1);
    assert_eq!(app.count_where("messages", "outcome = 'rejected'").await, 1);
}

async fn the_raw_message_is_kept_as_received(app: TestApp) {
    use sqlx::Row;
    let raw = fixture("ects-json/declaration-gt-sv.json");
    let reply = app.post_message(raw.clone()).await;
    let message_id = reply.json()["message_id"].as_str().unwrap().to_owned();
    let row = sqlx::query(
        "select body, parsed, format, transport, outcome, content_type from messages where message_id = $1",
    )
    .bind(&message_id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(row.try_get::<Vec<u8>, _>("body").unwrap(), raw);
    assert_eq!(row.try_get::<String, _>("format").unwrap(), "ects-json");
    assert_eq!(row.try_get::<String, _>("transport").unwrap(), "http");
    assert_eq!(row.try_get::<String, _>("outcome").unwrap(), "accepted");
    assert_eq!(
        row.try_get::<String, _>("content_type").unwrap(),
        "application/json"
    );
    let parsed: Value = serde_json::from_str(&row.try_get::<String, _>("parsed").unwrap()).unwrap();
    assert_valid(Canonical::TransitDeclaration, &parsed);
    assert_eq!(parsed["declaration_id"], "GT-2026-T-000123");
}
